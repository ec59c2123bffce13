"""DHCP and DNS on the lan bridge, with real packets: guests that ask (busybox udhcpc) get
exactly their address, the gateway and the DNS server; resolve names through dnsmasq;
reach the internet and are reached through their forwards. On both NIC layouts."""

import os
import signal
import subprocess
import threading
import time

import pytest

from lab import (DNS_ANSWER, GATEWAY6, NETPROBE, PEER_IP, PREFIX6, PUBLIC_IP, lab_fixture, ok,
                 sh)

MACS = {vmid: f"BC:24:11:00:01:{vmid - 100:02X}" for vmid in (101, 102, 103, 104, 105)}


def guests(firewall: bool):
    fw = ",firewall=1" if firewall else ""
    return {
        # a VM installed from an ISO: its address is in the pvenat block, it asks by DHCP
        101: {"kind": "qemu", "address": "dhcp", "serve": ["tcp:22"], "config": {
            "description": "```pvenat\nip: 172.22.161.170\nforwards: [12222:22]\n```",
            "net0": f"virtio={MACS[101]},bridge=vmbr1{fw}"}},
        # a container with no address at all: pvenat attach gives it one
        102: {"kind": "lxc", "address": "dhcp", "serve": ["tcp:80"], "config": {
            "net0": f"name=eth0,bridge=vmbr1,hwaddr={MACS[102]},type=veth{fw}"}},
        # not pvenat's: no lease
        103: {"kind": "qemu", "address": "dhcp", "config": {
            "net0": f"virtio={MACS[103]},bridge=vmbr1{fw}"}},
        104: {"kind": "qemu", "config": {"net0": f"virtio={MACS[104]},bridge=vmbr1{fw}"}},
        105: {"kind": "qemu", "config": {"net0": f"virtio={MACS[105]},bridge=vmbr1{fw}"}},
    }


@pytest.fixture(scope="module", params=[False, True],
                ids=["on lan bridge", "behind firewall bridges"])
def lab(request):
    for lab in lab_fixture(guests(request.param), firewall="iptables" if request.param
                           else None, prefix=f"pvd{os.getpid() % 100000}"):
        # the host's own DNS services, there first: systemd-resolved's stub on 127.0.0.53,
        # and a resolver on the public address
        for address in ("127.0.0.53", PUBLIC_IP):
            lab.spawn(lab.host, [lab.python, NETPROBE, "dns-serve", f"@{address}",
                                 f"host.example.test={address}"])
        start_sdn_zone(lab)
        lab.start_dhcp_server()
        yield lab


SDN_MAC, SDN_CLIENT = "BC:24:11:00:02:01", "10.250.0.50"


def start_sdn_zone(lab):
    """A PVE SDN Simple zone with DHCP on its vnet, there first: dnsmasq with the options
    pve-network writes (src/PVE/Network/SDN/Dhcp/Dnsmasq.pm: 00-default.conf and
    10-VNET.conf), and a client on the vnet."""
    zone = os.path.join(lab.dir, "sdn")
    os.makedirs(zone)
    with open(os.path.join(zone, "ethers"), "w") as f:
        f.write(f"{SDN_MAC},{SDN_CLIENT}\n")
    client = f"{lab.prefix}-sdn"
    lab.netns(client)
    for cmd in (["link", "add", "vnet0", "type", "bridge"],
                ["addr", "add", "10.250.0.1/24", "dev", "vnet0"],
                ["link", "add", "veth-sdn", "type", "veth", "peer", "name", "eth0",
                 "netns", client],
                ["link", "set", "veth-sdn", "master", "vnet0", "up"],
                ["link", "set", "vnet0", "up"]):
        sh("ip", "-n", lab.host, *cmd)
    sh("ip", "-n", client, "link", "set", "eth0", "address", SDN_MAC, "up")
    os.chmod(lab.dir, 0o755)  # dnsmasq reads the ethers file as nobody
    lab.procs.append(subprocess.Popen(
        ["ip", "netns", "exec", lab.host, "dnsmasq", "--keep-in-foreground",
         "--conf-file=/dev/null", "--except-interface=lo", "--bind-dynamic", "--no-hosts",
         f"--pid-file={zone}/pid", f"--dhcp-leasefile={zone}/leases",
         f"--dhcp-hostsfile={zone}/ethers", "--dhcp-ignore=tag:!known",
         "--dhcp-range=set:zone,10.250.0.0,static,255.255.255.0,infinite",
         "--dhcp-option=tag:zone,option:router,10.250.0.1", "--interface=vnet0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    for _ in range(100):
        if "%vnet0:67" in sh("ip", "netns", "exec", lab.host, "ss", "-H", "-lnu").stdout:
            return
        time.sleep(0.05)
    raise RuntimeError("the SDN zone's dnsmasq did not start")


def test_the_server_is_on_the_lan_bridge_alone_beside_the_hosts_own(lab):
    ours = open(os.path.join(lab.state, "dnsmasq.pid")).read().strip()
    sockets = sh("ip", "netns", "exec", lab.host, "ss", "-H", "-lnup").stdout
    theirs = [line.split()[3] for line in sockets.splitlines() if f"pid={ours}," in line]
    # and once the kernel gives vmbr1 its IPv6 link-local address, DNS there too
    link_local = [a for a in theirs if a.startswith("[fe80:") and a.endswith("]%vmbr1:53")]
    assert sorted(set(theirs) - set(link_local)) == ["0.0.0.0%vmbr1:67", "172.22.161.254:53"]
    assert len(link_local) <= 1
    for address in ("127.0.0.53", PUBLIC_IP):  # the host's own still answer
        assert sh("ip", "netns", "exec", lab.host, lab.python, NETPROBE, "resolve", address,
                  "host.example.test").stdout.strip() == address
    # the SDN zone's DHCP still serves its vnet, and its DNS answers there
    assert "10.250.0.1:53" in sockets
    lease = lab.dhcp_client(None, namespace=f"{lab.prefix}-sdn")
    assert (lease["ip"], lease["router"]) == (SDN_CLIENT, "10.250.0.1")


def test_guests_get_their_address_gateway_and_dns(lab):
    running = "; it is running: restart it, or run 'pvenat sync' to apply now"
    assert ok(lab.pvenat("attach", "101")) == \
        "pvenat: 101: hookscript set to local:snippets/pvenat.py" + running
    assert ok(lab.pvenat("attach", "102")) == ("pvenat: 102: hookscript set to "
                                               "local:snippets/pvenat.py; address "
                                               "172.22.161.1 (net0)" + running)
    assert "ip=172.22.161.1/24,gw=172.22.161.254" in lab.fixture_config(102)["net0"]
    assert ok(lab.hook(101, "pre-start")) == \
        "pvenat: 101 -> 172.22.161.170 via 203.0.113.10: tcp 12222->22"
    assert ok(lab.hook(102, "pre-start")) == \
        f"pvenat: 102: DHCP lease 172.22.161.1 for {MACS[102]}"
    for vmid in (101, 102):
        ok(lab.hook(vmid, "post-start"))

    lease = lab.dhcp_client(101)
    assert lease == {"ip": "172.22.161.170", "subnet": "255.255.255.0",
                     "router": "172.22.161.254", "dns": "172.22.161.254"}
    lab.configure(101, lease["ip"], lease["router"], 24)
    assert lab.dhcp_client(102)["ip"] == "172.22.161.1"
    lab.configure(102, "172.22.161.1", "172.22.161.254", 24)
    assert lab.dhcp_client(103) == {}  # a MAC pvenat does not know gets nothing

    # names through dnsmasq, which asks the host's upstream (here the internet's server)
    probe = ["ip", "netns", "exec", lab.ns(101), lab.python, NETPROBE, "resolve",
             "172.22.161.254"]
    assert sh(*probe, "www.example.test").stdout.strip() == DNS_ANSWER
    assert sh(*probe, "nothing.example.test").stdout.strip() == "nxdomain"
    # out through SNAT, in through the forward, and to each other
    assert lab.probe(lab.ns(101), "tcp", PEER_IP, 80) == f"inet {PUBLIC_IP}"
    assert lab.probe(lab.inet, "tcp", PUBLIC_IP, 12222) == f"g101 {PEER_IP}"
    assert lab.probe(lab.ns(101), "tcp", "172.22.161.1", 80) == "g102 172.22.161.170"

    # the list and status say so
    listing = ok(lab.pvenat("list")).splitlines()
    assert any(line.split()[:7] == ["102", "guest102", "lxc", "running", "172.22.161.1",
                                    MACS[102], "yes"] for line in listing)
    status = lab.pvenat("status").stdout
    assert "ok   dhcp: dnsmasq " in status and "2 leases" in status


def test_two_guests_never_get_one_address(lab):
    result = lab.pvenat("attach", "--ip", "172.22.161.170", "104")
    assert result.returncode == 1 and result.stderr == (
        "pvenat: error: guest 104: address 172.22.161.170 is guest 101's already; pick "
        "another (or leave out --ip)\n")
    assert "hookscript" in lab.fixture_config(104)  # attached, without an address
    # 105's config is given 102's address by hand: its start is refused, naming both
    lab.set_config(105, hookscript="local:snippets/pvenat.py", ipconfig0="ip=172.22.161.1/24")
    result = lab.hook(105, "pre-start")
    assert result.returncode == 1 and "guest 105: address 172.22.161.1 is already guest " \
        "102's (its DHCP lease)" in result.stderr


def test_leases_stay_when_a_guest_stops_and_sync_keeps_them(lab):
    ok(lab.hook(102, "post-stop"))
    assert lab.dhcp_client(102)["ip"] == "172.22.161.1"
    before = open(os.path.join(lab.state, "dhcp-hosts")).read()
    assert MACS[102] in before
    sync = lab.pvenat("sync")  # 105's conflict is reported, nothing else changes
    assert "guest 105 left as it was: guest 105: address 172.22.161.1 is already guest " \
        "102's" in sync.stdout
    assert open(os.path.join(lab.state, "dhcp-hosts")).read() == before


def test_no_request_is_lost_while_the_leases_are_reloaded(lab):
    """100 reloads (SIGHUP, as every lease change sends) while a guest asks 100 times,
    one DISCOVER each: every one is answered."""
    pid = int(open(os.path.join(lab.state, "dnsmasq.pid")).read())
    reloads, done = [0], threading.Event()

    def reload():
        while not done.is_set() or reloads[0] < 100:
            os.kill(pid, signal.SIGHUP)
            reloads[0] += 1
            done.wait(0.01)

    thread = threading.Thread(target=reload)
    thread.start()
    try:
        answers = [lab.dhcp_client(102, attempts=1).get("ip") for _ in range(100)]
    finally:
        done.set()
        thread.join()
    assert reloads[0] >= 100
    assert answers == ["172.22.161.1"] * 100


@pytest.mark.parametrize("firewall", [False, True],
                         ids=["on lan bridge", "behind firewall bridges"])
def test_dhcp_and_dns_through_the_pve_host_firewall(firewall):
    """The datacenter firewall on: pve-firewall's host chain (input policy DROP) has no
    exception for DHCP or DNS on a bridge (tests/lab/pvenode.py host_rules). pvenat's own
    acceptance, first in INPUT, lets both through, also after pve-firewall re-applies its
    rules and after it restarts; without it the guest gets no lease and no answer."""
    mine = {101: dict(guests(firewall)[101])}
    mine[101]["config"] = dict(mine[101]["config"], hookscript="local:snippets/pvenat.py")
    for lab in lab_fixture(mine, firewall="iptables", host_firewall=True,
                           prefix=f"pvh{os.getpid() % 100000}"):
        lab.start_dhcp_server()
        ok(lab.pvenat("sync"))  # as pvenat.service does at boot: base rules, leases
        want = {"ip": "172.22.161.170", "subnet": "255.255.255.0",
                "router": "172.22.161.254", "dns": "172.22.161.254"}
        resolve = ["ip", "netns", "exec", lab.ns(101), lab.python, NETPROBE, "resolve",
                   "172.22.161.254", "www.example.test"]

        def served():
            return lab.dhcp_client(101, attempts=2), sh(*resolve).stdout.strip()

        def input_chain():
            return [line for line in lab.iptables_save("-t", "filter").splitlines()
                    if line.startswith("-A INPUT ")]

        def rules_status():
            return next(line for line in lab.pvenat("status").stdout.splitlines()
                        if line[5:].startswith("rules:"))

        assert lab.dhcp_client(101) == want
        assert input_chain() == ["-A INPUT -i vmbr1 -j PVENAT-INPUT",
                                 "-A INPUT -j PVEFW-INPUT"]
        lab.configure(101, want["ip"], want["router"], 24)
        assert served() == (want, DNS_ANSWER)
        # pve-firewall re-applies (every 10 s); then it restarts: its INPUT jump is
        # deleted and appended again, behind pvenat's
        lab.load_pve_firewall()
        assert served() == (want, DNS_ANSWER)
        lab.stop_pve_firewall()
        lab.load_pve_firewall()
        assert input_chain() == ["-A INPUT -i vmbr1 -j PVENAT-INPUT",
                                 "-A INPUT -j PVEFW-INPUT"]
        assert served() == (want, DNS_ANSWER)
        assert rules_status().startswith("ok   rules:")

        # without pvenat's acceptance the host firewall drops both; status says so, and
        # sync puts it back first
        lab.iptables("-D", "INPUT", "-i", "vmbr1", "-j", "PVENAT-INPUT")
        assert served() == ({}, "timeout")
        assert rules_status() == (
            "FIX  rules: base rules missing or changed (filter INPUT jump PVENAT-INPUT); "
            "run 'pvenat sync' (or 'pvenat install')")
        lab.iptables("-A", "INPUT", "-i", "vmbr1", "-j", "PVENAT-INPUT")  # behind PVEFW
        assert served() == ({}, "timeout")
        assert "(not first)" in rules_status()
        assert "base rules repaired" in ok(lab.pvenat("sync"))
        assert input_chain()[0] == "-A INPUT -i vmbr1 -j PVENAT-INPUT"
        assert served() == (want, DNS_ANSWER)


# Leases that follow PVE: a changed MAC or address, a removed lease, addresses the
# dynamic pool must leave alone. Real clients: one-shot udhcpc (lab.dhcp_client) and a
# udhcpc left running, which holds its lease and renews it when told.

class Holder:
    """busybox udhcpc running in a namespace as a guest's DHCP client does: it sets the
    address it gets on eth0, renews on SIGUSR1 (a unicast DHCPREQUEST, as at half the
    lease time) and logs each event of its script: 'bound ADDR', 'renew ADDR', 'nak',
    'deconfig', 'leasefail'."""

    SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$subnet" dev "$interface"
               echo "$1 $ip" >>"$LOG" ;;
  deconfig) ip addr flush dev "$interface"; echo deconfig >>"$LOG" ;;
  *) echo "$1" >>"$LOG" ;;
esac
exit 0
"""

    def __init__(self, lab, namespace, timeout=1):
        self.log = os.path.join(lab.dir, f"holder-{namespace}.log")
        script = os.path.join(lab.dir, "holder.script")
        with open(script, "w") as f:
            f.write(self.SCRIPT)
        os.chmod(script, 0o755)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "env", f"LOG={self.log}", "busybox", "udhcpc",
             "-i", "eth0", "-f", "-t", "3", "-T", str(timeout), "-A", "1", "-s", script],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        lab.procs.append(self.proc)

    def events(self) -> list[str]:
        try:
            with open(self.log) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def wait(self, event: str, timeout=15.0) -> list[str]:
        """The events up to the first one starting with ``event`` after those seen."""
        seen = len(self.events())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = self.events()[seen:]
            for i, line in enumerate(new):
                if line.startswith(event):
                    return new[:i + 1]
            time.sleep(0.1)
        raise AssertionError(f"no {event!r} in {self.events()}")

    def renew(self, until: str) -> list[str]:
        seen = len(self.events())
        os.kill(self.proc.pid, signal.SIGUSR1)  # ip netns exec execs: the pid is udhcpc's
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            new = self.events()[seen:]
            if any(line.startswith(until) for line in new):
                return new
            time.sleep(0.1)
        raise AssertionError(f"no {until!r} after the renewal: {self.events()}")


def lease_database(lab) -> str:
    with open(os.path.join(lab.state, "dnsmasq.leases")) as f:
        return f.read()


FOLLOW = {106: "BC:24:11:00:06:06", 107: "BC:24:11:00:06:07", 108: "BC:24:11:00:06:08",
          109: "BC:24:11:00:06:09"}
NEW_MAC, NEW_MAC_107 = "BC:24:11:00:06:66", "BC:24:11:00:06:77"


@pytest.fixture(scope="module", params=[False, True],
                ids=["on lan bridge", "behind firewall bridges"])
def follow(request):
    fw = ",firewall=1" if request.param else ""
    hook = {"hookscript": "local:snippets/pvenat.py"}
    guests = {
        # VMs installed from an ISO, their address in the pvenat block
        106: {"kind": "qemu", "address": "dhcp", "config": {
            **hook, "description": "```pvenat\nip: 172.22.161.180\n```",
            "net0": f"virtio={FOLLOW[106]},bridge=vmbr1{fw}"}},
        107: {"kind": "qemu", "address": "dhcp", "config": {
            **hook, "description": "```pvenat\nip: 172.22.161.181\n```",
            "net0": f"virtio={FOLLOW[107]},bridge=vmbr1{fw}"}},
        108: {"kind": "qemu", "address": "dhcp", "config": {
            **hook, "description": "```pvenat\nip: 172.22.161.183\n```",
            "net0": f"virtio={FOLLOW[108]},bridge=vmbr1{fw}"}},
        109: {"kind": "qemu", "address": "dhcp", "config": {
            "net0": f"virtio={FOLLOW[109]},bridge=vmbr1{fw}"}},
    }
    for lab in lab_fixture(guests, firewall="iptables" if request.param else None,
                           prefix=f"pvf{os.getpid() % 100000}"):
        lab.start_dhcp_server()
        for vmid in (106, 107, 108):
            ok(lab.hook(vmid, "pre-start"))
        yield lab


def test_a_new_mac_gets_the_guests_address_at_once(follow):
    lab = follow
    assert lab.dhcp_client(106).get("ip") == "172.22.161.180"
    assert FOLLOW[106].lower() in lease_database(lab)
    # qm set 106 --net0 virtio=NEW,...: a new NIC, and the guest starts with it
    lab.set_config(106, net0=lab.guests[106]["config"]["net0"].replace(FOLLOW[106], NEW_MAC))
    lab.replug(106)
    if lab.node.firewall == "iptables":
        lab.load_pve_firewall()  # pve-firewall follows the new MAC within 10 s
    assert ok(lab.hook(106, "pre-start")) == f"pvenat: 106: DHCP lease 172.22.161.180 for " \
        f"{NEW_MAC}"
    assert lab.dhcp_client(106).get("ip") == "172.22.161.180"  # not in 12 h: now
    assert FOLLOW[106].lower() not in lease_database(lab)
    assert f"DHCPRELEASE(vmbr1) 172.22.161.180 {FOLLOW[106].lower()}" in open(
        os.path.join(lab.dir, "dnsmasq.log")).read()


def test_a_client_holding_an_old_address_is_refused_at_renewal(follow):
    lab = follow
    holder = Holder(lab, lab.ns(107))
    assert holder.wait("bound") == ["deconfig", "bound 172.22.161.181"]
    # its address changed in its config: the sync every minute moves the lease
    lab.set_config(107, description="```pvenat\nip: 172.22.161.182\n```")
    assert "DHCP leases rewritten (3)" in ok(lab.pvenat("sync"))
    events = holder.renew(until="bound")
    assert events[0] == "nak" and events[-1] == "bound 172.22.161.182", events
    assert "172.22.161.181" not in lease_database(lab)
    lab.holder_107 = holder


def test_a_removed_lease_frees_its_address_for_the_next_guest(follow):
    lab = follow
    holder = Holder(lab, lab.ns(108))
    assert holder.wait("bound")[-1] == "bound 172.22.161.183"
    # pvenat is taken off 108, address and all: its lease goes with the next sync
    ok(lab.pvenat("detach", "108"))
    lab.set_config(108, description="")
    sync = ok(lab.pvenat("sync"))
    # its address is given to 109, which gets it at its start
    ok(lab.pvenat("attach", "--ip", "172.22.161.183", "109"))
    assert ok(lab.hook(109, "pre-start")) == \
        f"pvenat: 109: DHCP lease 172.22.161.183 for {FOLLOW[109]}"
    assert lab.dhcp_client(109).get("ip") == "172.22.161.183"
    assert f"stale DHCP leases released: {FOLLOW[108]} 172.22.161.183" in sync
    assert FOLLOW[108].lower() not in lease_database(lab)
    # and 108, which still holds it, is refused at its renewal and gets nothing
    events = holder.renew(until="leasefail")
    assert events[:2] == ["nak", "deconfig"] and "bound" not in " ".join(events), events


def restart_dhcp_server(lab, between):
    """pvenat-dhcp.service stopped, ``between()`` run, started again."""
    proc = next(p for p in lab.procs if "dhcp-server" in p.args)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait()
    lab.procs.remove(proc)
    between()
    pid_file = os.path.join(lab.state, "dnsmasq.pid")
    old = open(pid_file).read()
    with open(os.path.join(lab.dir, "dnsmasq.log"), "a") as log:
        lab.procs.append(subprocess.Popen(lab.pvenat_argv("dhcp-server"), stdout=log,
                                          stderr=log, start_new_session=True))
    for _ in range(100):
        if open(pid_file).read() not in ("", old):
            return
        time.sleep(0.05)
    raise AssertionError("pvenat dhcp-server did not start again")


def test_the_server_starts_without_leases_changed_while_it_was_stopped(follow):
    lab = follow
    holder = lab.holder_107  # 107 holds 172.22.161.182 from the test before
    os.killpg(holder.proc.pid, signal.SIGKILL)
    holder.proc.wait()

    def nic_changes():  # 107's NIC is made anew while no DHCP server runs (an upgrade)
        lab.set_config(107, net0=lab.guests[107]["config"]["net0"].replace(FOLLOW[107],
                                                                           NEW_MAC_107))
        lab.replug(107)
        if lab.node.firewall == "iptables":
            lab.load_pve_firewall()
        ok(lab.hook(107, "pre-start"))
        assert f"{FOLLOW[107].lower()} 172.22.161.182" in lease_database(lab)  # nobody to tell

    restart_dhcp_server(lab, nic_changes)
    assert lab.dhcp_client(107).get("ip") == "172.22.161.182"
    assert FOLLOW[107].lower() not in lease_database(lab)


def ask(lab, vmid) -> dict:
    """A one-shot client that waits 3 s for an offer, as real ones do: from the pool,
    dnsmasq pings an address before it offers it (a second or so)."""
    script = os.path.join(lab.dir, "ask.script")
    with open(script, "w") as f:
        f.write('#!/bin/sh\n[ "$1" = bound ] && echo "ip=$ip"\nexit 0\n')
    os.chmod(script, 0o755)
    out = sh("ip", "netns", "exec", lab.ns(vmid), "busybox", "udhcpc", "-i", "eth0", "-f",
             "-q", "-n", "-t", "3", "-T", "3", "-A", "1", "-s", script, check=False).stdout
    line = next((x for x in out.splitlines() if x.startswith("ip=")), "")
    return dict(part.split("=", 1) for part in line.split())


POOL_MACS = {vmid: f"BC:24:11:00:07:{vmid - 300:02X}" for vmid in range(301, 307)}


@pytest.fixture(scope="module")
def pool():
    """dhcp_range 172.22.161.200-203 for guests pvenat does not know. Of the cluster's
    guests, 301 (on node pve2) has .200, 302 (here, a container with a static address,
    no hookscript) has .201; 303 sits on pve2 with no address yet; 304-306 are guests
    here that pvenat does not know, asking by DHCP."""
    hook = {"hookscript": "local:snippets/pvenat.py"}
    guests = {
        301: {"kind": "qemu", "node": "pve2", "config": {
            **hook, "net0": f"virtio={POOL_MACS[301]},bridge=vmbr1",
            "ide2": "local-lvm:vm-301-cloudinit,media=cdrom",
            "ipconfig0": "ip=172.22.161.200/24,gw=172.22.161.254"}},
        302: {"kind": "lxc", "address": "172.22.161.201", "config": {
            "net0": f"name=eth0,bridge=vmbr1,hwaddr={POOL_MACS[302]},"
                    "ip=172.22.161.201/24,gw=172.22.161.254,type=veth"}},
        303: {"kind": "qemu", "node": "pve2", "config": {
            **hook, "net0": f"virtio={POOL_MACS[303]},bridge=vmbr1"}},
        **{vmid: {"kind": "qemu", "address": "dhcp", "config": {
            "net0": f"virtio={POOL_MACS[vmid]},bridge=vmbr1"}} for vmid in (304, 305, 306)},
    }
    for lab in lab_fixture(guests, prefix=f"pvp{os.getpid() % 100000}"):
        lab.write_config("dhcp_range: 172.22.161.200-172.22.161.203\n")
        lab.start_dhcp_server()
        yield lab


def test_the_pool_never_gives_an_address_a_guest_of_the_cluster_has(pool):
    lab = pool
    sync = ok(lab.pvenat("sync"))
    holder = Holder(lab, lab.ns(304), timeout=3)
    first = holder.wait("bound")[-1].split()[1]
    second = ask(lab, 305).get("ip")
    assert sorted([first, second]) == ["172.22.161.202", "172.22.161.203"]
    assert ask(lab, 306) == {}  # the rest of the pool is the guests'
    assert "DHCP leases rewritten (0, 2 reserved)" in sync
    assert open(os.path.join(lab.state, "dhcp-hosts")).read() == (
        "# reserved for guest 301\n172.22.161.200\n# reserved for guest 302\n172.22.161.201\n")
    assert "ok   dhcp: dnsmasq " in lab.pvenat("status").stdout
    assert "0 leases, 2 addresses of dhcp_range reserved" in lab.pvenat("status").stdout
    lab.pool_holder = holder


def test_a_guest_that_takes_a_pool_address_finds_it_free_when_it_migrates_here(pool):
    lab = pool
    holder = lab.pool_holder
    taken = holder.events()[-1].split()[1]
    # on pve2, 303 is given the address an unknown guest here has from the pool
    lab.set_config(303, ide2="local-lvm:vm-303-cloudinit,media=cdrom",
                   ipconfig0=f"ip={taken}/24,gw=172.22.161.254")
    sync = ok(lab.pvenat("sync"))
    # the unknown guest is refused at its renewal, and the pool has nothing left for it
    events = holder.renew(until="leasefail")
    assert events[:2] == ["nak", "deconfig"] and "bound" not in " ".join(events), events
    # 303 migrates here (live: its config still on pve2) and gets its address
    lab.guests[303]["address"] = "dhcp"
    lab.add_guest(303)
    assert ok(lab.hook(303, "pre-start", {"PVE_MIGRATED_FROM": "pve2"})) == \
        f"pvenat: 303: DHCP lease {taken} for {POOL_MACS[303]}"
    assert lab.dhcp_client(303).get("ip") == taken
    assert "DHCP leases rewritten (0, 3 reserved)" in sync  # 303's address with the others
    assert f"stale DHCP leases released: {POOL_MACS[304]} {taken}" in sync
    hosts = open(os.path.join(lab.state, "dhcp-hosts")).read()
    assert f"{POOL_MACS[303]},{taken}" in hosts and "reserved for guest 303" not in hosts


# IPv6 (ipv6 on): DHCPv6 and router advertisements from the same dnsmasq, to a real
# dhcpcd client in the guest (lab.dhcp6_client), on the prefix routed to the host.

V6_MACS = {vmid: f"BC:24:11:00:06:{vmid - 100:02X}" for vmid in (101, 102, 103)}
OWN6 = "2001:db8:1:2::cafe"  # 102's static ip6 of its own


@pytest.fixture(scope="module", params=[False, True],
                ids=["on lan bridge", "behind firewall bridges"])
def lab6(request):
    fw = ",firewall=1" if request.param else ""
    guests6 = {
        # a VM installed from an ISO: attach writes its IPv6 address into the pvenat block
        101: {"kind": "qemu", "address": "dhcp", "config": {
            "description": "```pvenat\nip: 172.22.161.170\nforwards: [12222:22]\n```",
            "net0": f"virtio={V6_MACS[101]},bridge=vmbr1{fw}"}},
        # a container with an IPv6 address of its own: it keeps it
        102: {"kind": "lxc", "address": "dhcp", "config": {
            "net0": f"name=eth0,bridge=vmbr1,hwaddr={V6_MACS[102]},ip=172.22.161.171/24,"
                    f"gw=172.22.161.254,ip6={OWN6}/64,type=veth{fw}"}},
        # not pvenat's: no lease
        103: {"kind": "qemu", "address": "dhcp", "config": {
            "net0": f"virtio={V6_MACS[103]},bridge=vmbr1{fw}"}},
    }
    for lab in lab_fixture(guests6, ipv6="routed", prefix=f"pv6{os.getpid() % 100000}",
                           firewall="iptables" if request.param else None):
        lab.write_config(f"ipv6: {{prefix: '{PREFIX6}', upstream: routed, "
                         f"lan_address: '{GATEWAY6}'}}\n")
        lab.start_dhcp_server()
        yield lab


def resolve6(lab, vmid, server, name) -> str:
    """An A query for ``name`` to ``server`` over IPv6, from the guest: the address, or
    what went wrong."""
    script = (
        "import socket, struct, sys\n"
        "q = struct.pack('!HHHHHH', 0x5a5a, 0x0100, 1, 0, 0, 0) + b''.join(bytes([len(p)])"
        " + p.encode() for p in sys.argv[2].split('.')) + b'\\0' + struct.pack('!HH', 1, 1)\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.settimeout(3)\n"
        "s.sendto(q, (sys.argv[1], 53))\n"
        "try:\n    r = s.recv(512)\nexcept OSError as e:\n    print('error', e); sys.exit()\n"
        "print('nxdomain' if r[3] & 15 == 3 else socket.inet_ntoa(r[-4:]))\n")
    return sh("ip", "netns", "exec", lab.ns(vmid), lab.python, "-c", script, server,
              name).stdout.strip()


def test_guests_get_their_ipv6_address_router_and_dns_by_ra_and_dhcpv6(lab6):
    lab = lab6
    with open("/etc/resolv.conf") as f:
        resolv = f.read()  # dhcpcd runs isolated from the machine's files: checked after
    running = "; it is running: restart it, or run 'pvenat sync' to apply now"
    assert ok(lab.pvenat("attach", "101", "102")).splitlines() == [
        "pvenat: 101: hookscript set to local:snippets/pvenat.py; IPv6 address "
        "2001:db8:1:2::101 (description)" + running,
        "pvenat: 102: hookscript set to local:snippets/pvenat.py" + running]
    assert lab.fixture_config(101)["description"] == \
        "```pvenat\nip: 172.22.161.170\nip6: 2001:db8:1:2::101\nforwards: [12222:22]\n```"
    assert f"ip6={OWN6}/64" in lab.fixture_config(102)["net0"]  # its own, kept
    for vmid in (101, 102):
        ok(lab.hook(vmid, "pre-start"))
        ok(lab.hook(vmid, "post-start"))
    assert open(os.path.join(lab.state, "dhcp-hosts")).read() == (
        f"# guest 101\n{V6_MACS[101]},172.22.161.170,[2001:db8:1:2::101],guest101\n"
        f"# guest 102\n{V6_MACS[102]},172.22.161.171,[{OWN6}],guest102\n")

    # the address by DHCPv6 (matched by MAC), the router by RA, the DNS server by both
    router = lab.link_local(lab.host, "vmbr1")
    assert lab.dhcp6_client(101) == {"addresses": ["2001:db8:1:2::101/128"],
                                     "routes": [router], "dns": [GATEWAY6]}
    assert lab.dhcp6_client(102)["addresses"] == [f"{OWN6}/128"]
    assert lab.dhcp6_client(103, timeout=4)["addresses"] == []  # a MAC pvenat does not know
    # names over IPv6 through dnsmasq, which asks the host's upstream
    assert resolve6(lab, 101, GATEWAY6, "www.example.test") == DNS_ANSWER
    assert resolve6(lab, 101, GATEWAY6, "nothing.example.test") == "nxdomain"
    # the list says so
    listing = ok(lab.pvenat("list")).splitlines()
    assert listing[0].split()[4:6] == ["ADDRESS", "ADDRESS6"]
    assert any(line.split()[:8] == ["101", "guest101", "qemu", "running", "172.22.161.170",
                                    "2001:db8:1:2::101", V6_MACS[101], "yes"]
               for line in listing), listing
    with open("/etc/resolv.conf") as f:
        assert f.read() == resolv

"""pvenat install / uninstall in a network namespace, on files under a temporary root.

ifupdown2 brings the bridge up inside the lab's host namespace from the root's
interfaces file; nothing of the machine's own network is touched.
"""

import json
import os
import re
import shutil
import subprocess
import time

import pytest

from shared import FAKEPVE

from lab import IFUPDOWN2, INSTALLED, PEER_IP, PUBLIC_IP, REPO, ROUTER_LL, Lab, pve_root, sh
from lab import PVE_INTERFACES as INTERFACES

STANZA = ("\nauto vmbr1\niface vmbr1 inet static\n\taddress 172.22.161.254/24\n"
          "\tbridge-ports none\n\tbridge-stp off\n\tbridge-fd 0\n")


def ifquery(lab) -> str:
    """The ifquery pvenat runs in the lab (the lab's own ifupdown2, or the package root's),
    never one that happens to come first on the test runner's PATH."""
    return shutil.which("ifquery", path=lab.env()["PATH"])


def guests():
    return {101: {"kind": "qemu", "address": "172.22.161.170", "serve": ["tcp:22"],
                  "config": {"description": "```pvenat\nforwards: [12222:22]\n```",
                             "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1",
                             "ipconfig0": "ip=172.22.161.170/24"}}}


@pytest.fixture
def lab(tmp_path):
    yield from install_lab(tmp_path)


@pytest.fixture
def https_lab(tmp_path):
    """Hooks read configs through the HTTPS API with a token."""
    yield from install_lab(tmp_path, backend="https", config_source="api")


def install_lab(tmp_path, **options):
    if os.geteuid() != 0:
        pytest.fail("the namespace lab needs root (network namespaces, iptables)")
    if not os.access(os.path.join(IFUPDOWN2, "ifquery"), os.X_OK) and not INSTALLED:
        pytest.fail(f"no {IFUPDOWN2}: run make deps (tests/lab/private-ifupdown2)")
    lab = Lab(guests(), lan_bridge=False, **options)
    lab.root = pve_root(str(tmp_path / "root"))
    with open(lab.fixture) as f:  # the node's file system, for the fake PVE, is the root
        data = json.load(f)
    data["runtime"] = dict(data.get("runtime", {}), root=lab.root)
    with open(lab.fixture, "w") as f:
        json.dump(data, f)
    lab.sysctl(lab.host, "net.ipv4.ip_forward", 0)
    # someone else's rules, which must come through byte for byte
    lab.iptables("-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8080", "-j",
                 "REDIRECT", "--to-ports", "80")
    lab.iptables("-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    try:
        yield lab
    finally:
        lab.close()


def run(lab, *args, rc=0):
    result = lab.pvenat(*args, "--root", lab.root)
    assert result.returncode == rc, result.stdout + result.stderr
    return result.stdout


def off_the_bridge(lab):
    """Guest 101's NIC moved to vmbr0: uninstall may take vmbr1 away."""
    lab.set_config(101, net0="virtio=BC:24:11:00:00:01,bridge=vmbr0")


def saved(lab):
    """iptables-save, less tables that hold nothing but empty built-in chains: a table
    pvenat's rules loaded into the kernel stays loaded after uninstall."""
    blocks = re.split(r"(?m)^(?=\*)", lab.iptables_save())
    return "".join(b for b in blocks if re.search(r"(?m)^(-A |:(?![A-Z]+ ACCEPT$))", b))


def link(lab, name):
    out = sh("ip", "-n", lab.host, "-j", "-d", "addr", "show", "dev", name, check=False).stdout
    return json.loads(out)[0] if out.strip() else None


def files(lab):
    out = {}
    for folder, _, names in os.walk(lab.root):
        for name in names:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, lab.root)] = os.readlink(path) if os.path.islink(path) \
                else open(path, "rb").read()
    return out


def test_install_then_uninstall_leaves_the_host_as_it_was(lab):
    rules_before, files_before = saved(lab), files(lab)

    dry = run(lab, "install", "--dry-run")
    assert "would add bridge vmbr1 (172.22.161.254/24)" in dry
    assert "+auto vmbr1" in dry and "+\taddress 172.22.161.254/24" in dry
    assert "would add pvenat's base rules" in dry and "-A PVENAT-POSTROUTING" in dry
    assert "would enable IPv4 forwarding" in dry
    assert "pvesh set /storage/local --content iso,vztmpl,backup,snippets" in dry
    assert (saved(lab), files(lab), link(lab, "vmbr1")) == \
        (rules_before, files_before, None)  # a dry run changes nothing

    out = run(lab, "install")
    assert out.splitlines() == [
        f"add bridge vmbr1 (172.22.161.254/24) to {lab.root}/etc/network/interfaces",
        f"enable IPv4 forwarding ({lab.root}/etc/sysctl.d/80-pvenat.conf, now 0)",
        "add pvenat's base rules: outbound SNAT, hairpin, NAT boundary, DHCP and DNS in, "
        "jumps (iptables)",
        f"install the hookscript as {lab.root}/var/lib/vz/snippets/pvenat.py",
        "let storage 'local' hold snippets (keeping its other content types)",
        "enable pvenat.service, pvenat-sync.timer, pvenat-dhcp.service"]
    with open(os.path.join(lab.root, "etc/network/interfaces")) as f:
        assert f.read() == INTERFACES + STANZA  # everything else byte for byte
    bridge = link(lab, "vmbr1")
    assert bridge["linkinfo"]["info_kind"] == "bridge"
    assert [a["local"] for a in bridge["addr_info"] if a["family"] == "inet"] == \
        ["172.22.161.254"]
    sh("ip", "netns", "exec", lab.host, ifquery(lab), "-c", "-i",
       os.path.join(lab.root, "etc/network/interfaces"), "vmbr1")  # running == configured
    assert lab.sh_host("cat", "/proc/sys/net/ipv4/ip_forward") == "1"
    assert os.path.islink(os.path.join(lab.root,
                                       "etc/systemd/system/timers.target.wants/pvenat-sync.timer"))
    with open(lab.fixture) as f:
        assert json.load(f)["storage"]["local"]["content"] == "iso,vztmpl,backup,snippets"
    assert run(lab, "install") == "pvenat: nothing to change\n"

    # a guest on the new bridge reaches the internet through SNAT, and its forward works
    lab.add_guest(101)
    assert lab.probe(lab.ns(101), "tcp", PEER_IP, 80) == f"inet {PUBLIC_IP}"
    assert lab.hook(101, "pre-start").returncode == 0
    assert os.path.exists(os.path.join(lab.state, "dhcp-hosts"))  # 101's lease
    assert lab.probe(lab.inet, "tcp", PUBLIC_IP, 12222) == f"g101 {PEER_IP}"
    assert lab.hook(101, "post-stop").returncode == 0

    # guest 101 still has a NIC on vmbr1: uninstall keeps the bridge and says why; it
    # takes pvenat's hookscript off the guest (PVE refuses to start a guest whose
    # hookscript is missing) before it removes the snippet
    assert lab.pvenat("attach", "101").returncode == 0
    out = run(lab, "uninstall", rc=1)
    assert "pvenat: kept vmbr1: guests 101 have a NIC on it" in out
    assert out.index("detach the hookscript from guests 101") < \
        out.index("remove the hookscript")
    assert "hookscript" not in lab.fixture_config(101)
    assert link(lab, "vmbr1") is not None
    off_the_bridge(lab)
    run(lab, "uninstall")
    assert link(lab, "vmbr1") is None
    assert not os.path.exists(os.path.join(lab.state, "dhcp-hosts"))
    assert saved(lab) == rules_before
    assert lab.sh_host("cat", "/proc/sys/net/ipv4/ip_forward") == "0"
    with open(lab.fixture) as f:
        assert json.load(f)["storage"]["local"]["content"] == "iso,vztmpl,backup"
    after = {k: v for k, v in files(lab).items() if not k.endswith(".pvenat-backup")}
    assert after == files_before


def test_the_hookscript_without_pvenat_lets_the_guest_start(tmp_path):
    """A guest that still names the snippet after the package went must still start."""
    snippet = tmp_path / "pvenat.py"
    shutil.copy(os.path.join(REPO, "hookscripts", "pvenat.py"), snippet)
    result = subprocess.run(["/usr/bin/python3", "-I", str(snippet), "101", "pre-start"],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "pvenat: not installed; guest 101 runs without its forwards " \
        "(remove 'hookscript' from its options, or install pvenat)\n"


def test_status_on_a_host_where_install_never_ran_is_a_checklist(lab):
    result = lab.pvenat("status", "--root", lab.root)
    assert result.returncode == 1 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "ok   version", "ok   config", "FIX  hookscript", "FIX  bridge", "FIX  forwarding",
        "FIX  rules", "FIX  units", "FIX  dhcp", "FIX  guests without the hookscript",
        "ok   managed guests without an address"]
    assert "FIX  bridge: vmbr1 missing or down; run 'pvenat install'" in lines
    run(lab, "install")
    assert lab.pvenat("attach", "101").returncode == 0
    assert lab.pvenat("status", "--root", lab.root).stdout.startswith("ok ")
    # all set up; the DHCP server is a unit that systemd would start: here nobody does
    assert [line for line in lab.pvenat("status", "--root", lab.root).stdout.splitlines()
            if line.startswith("FIX")] == [
        "FIX  dhcp: dnsmasq is not running (0 leases waiting); systemctl start pvenat-dhcp, "
        "or see journalctl -u pvenat-dhcp"]


def test_existing_bridge_with_another_address_is_refused(lab):
    path = os.path.join(lab.root, "etc/network/interfaces")
    text = INTERFACES + "\nauto vmbr1\niface vmbr1 inet static\n\taddress 10.9.0.1/24\n"
    with open(path, "w") as f:
        f.write(text)
    rules = saved(lab)
    result = lab.pvenat("install", "--root", lab.root)
    assert result.returncode == 1
    assert "vmbr1 already exists in" in result.stderr and "with address 10.9.0.1/24; set " \
        "lan_address: 10.9.0.1/24 in the pvenat config" in result.stderr
    assert open(path).read() == text and saved(lab) == rules


def test_failed_bridge_is_rolled_back(lab):
    # something that is not a bridge already holds the name: ifupdown2 cannot bring it up
    sh("ip", "-n", lab.host, "link", "add", "vmbr1", "type", "veth", "peer", "name", "vmbr1p")
    path = os.path.join(lab.root, "etc/network/interfaces")
    result = lab.pvenat("install", "--root", lab.root)
    assert result.returncode == 1, result.stdout
    assert "bringing up vmbr1 failed, so" in result.stderr and "was restored" in result.stderr
    assert open(path).read() == INTERFACES
    assert not os.path.exists(os.path.join(lab.root, "etc/pvenat/installed.json"))
    theirs = link(lab, "vmbr1")  # left as it was: not a bridge, down, no address
    assert theirs["linkinfo"]["info_kind"] == "veth"
    assert "UP" not in theirs["flags"] and theirs["addr_info"] == []


def test_pending_gui_edits_keep_the_bridge(lab):
    """The GUI keeps network edits in interfaces.new until "Apply Configuration" renames
    it over interfaces (pve-manager PVE/API2/Network.pm): the stanza goes into both, so
    applying them keeps vmbr1; uninstall takes it out of both."""
    path = os.path.join(lab.root, "etc/network/interfaces")
    pending = INTERFACES.replace("#uplink to the provider", "#uplink, edited in the GUI")
    with open(path + ".new", "w") as f:
        f.write(pending)
    out = run(lab, "install")
    assert f"add bridge vmbr1 (172.22.161.254/24) to {path} and to the GUI's pending " \
        "edits" in out
    assert open(path).read() == INTERFACES + STANZA
    assert open(path + ".new").read() == pending + STANZA
    os.replace(path + ".new", path)  # Apply Configuration
    sh("ip", "netns", "exec", lab.host, ifquery(lab), "-c", "-i", path, "vmbr1")
    assert run(lab, "install") == "pvenat: nothing to change\n"
    off_the_bridge(lab)
    run(lab, "uninstall")
    assert open(path).read() == pending and link(lab, "vmbr1") is None


@pytest.mark.parametrize("ending", ["", "\n\n"], ids=["no newline at the end", "blank line"])
def test_uninstall_restores_any_file_ending_byte_for_byte(lab, ending):
    path = os.path.join(lab.root, "etc/network/interfaces")
    text = INTERFACES.rstrip("\n") + ending
    with open(path, "w") as f:
        f.write(text)
    run(lab, "install")
    assert open(path).read().endswith(STANZA)
    off_the_bridge(lab)
    run(lab, "uninstall")
    assert open(path).read() == text


def test_refuses_on_a_host_that_is_not_pve(lab):
    env = dict(lab.env(), PATH=FAKEPVE)  # no pveversion anywhere on this PATH
    result = subprocess.run(["ip", "netns", "exec", lab.host, "env", "-i",
                             *[f"{k}={v}" for k, v in env.items()], lab.python, "-m",
                             "pvehook", "install"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "this is not a Proxmox VE host (no pveversion)" in result.stderr


def test_token_for_the_https_backend(https_lab):
    lab = https_lab
    token_file = os.path.join(lab.dir, "token")
    os.remove(token_file)
    assert lab.hook(101, "pre-start").returncode == 1  # no token, no API
    out = run(lab, "install", "--token")
    assert "create the read-only API token pvenat@pve!hook for the https backend" in out
    assert os.stat(token_file).st_mode & 0o777 == 0o600
    with open(lab.fixture) as f:
        fixture = json.load(f)
    with open(token_file) as f:
        assert fixture["tokens"] == {"pvenat@pve!hook": f.read().strip()}
    assert fixture["acl"] == [{"path": "/vms", "tokens": "pvenat@pve!hook",
                               "roles": "PVEAuditor"}]
    lab.add_guest(101)
    result = lab.hook(101, "pre-start")  # through the fake HTTPS API, with the new token
    assert result.returncode == 0, result.stderr
    assert lab.hook(101, "post-stop").returncode == 0
    lab.guests[101]["config"]["net0"] = "virtio=BC:24:11:00:00:01,bridge=vmbr0"
    lab.write_fixture()
    out = run(lab, "uninstall")
    assert "remove the API token pvenat@pve!hook" in out and "remove the PVE user" in out
    with open(lab.fixture) as f:
        fixture = json.load(f)
    assert fixture["tokens"] == {} and fixture["users"] == {}
    assert not os.path.exists(token_file)


def test_uninstall_keeps_what_guests_of_the_cluster_still_need(lab):
    """A two-node cluster: guest 201 on pve2 and a snapshot of guest 102 here name the
    hookscript and have a NIC on vmbr1. PVE refuses to start a guest whose hookscript is
    missing (pve-guest-common GuestHelpers.pm check_hookscript: at an HA recovery or a
    migration to this node, after a rollback) and one whose bridge is missing (pve-common
    Network.pm read_bridge_mtu): uninstall keeps both, and says which guests; once none
    is left, it removes them."""
    run(lab, "install")
    snippet = os.path.join(lab.root, "var/lib/vz/snippets/pvenat.py")
    off_the_bridge(lab)
    lab.guests[201] = {"kind": "qemu", "node": "pve2", "config": {
        "hookscript": "local:snippets/pvenat.py", "net0": "virtio=BC:24:11:00:02:01,bridge=vmbr1"}}
    lab.guests[102] = {"kind": "lxc", "config": {"net0": "name=eth0,bridge=vmbr0"},
                       "snapshots": {"s1": {"hookscript": "local:snippets/pvenat.py",
                                            "net0": "name=eth0,bridge=vmbr1"}}}
    lab.write_fixture()
    out = run(lab, "uninstall", rc=1)
    assert "pvenat: kept vmbr1: guests 102 (snapshot s1), 201 (on pve2) have a NIC on it" in out
    assert f"pvenat: kept the hookscript {snippet}: guests 102 (snapshot s1), 201 (on pve2) " \
        "still name it" in out
    assert os.path.exists(snippet) and link(lab, "vmbr1") is not None
    del lab.guests[201], lab.guests[102]["snapshots"]
    lab.write_fixture()
    out = run(lab, "uninstall")
    assert f"remove the hookscript ({snippet})" in out and "remove bridge vmbr1" in out
    assert not os.path.exists(snippet) and link(lab, "vmbr1") is None
    assert not os.path.exists(os.path.join(lab.root, "etc/pvenat/installed.json"))


def test_uninstall_keeps_both_while_the_cluster_filesystem_shows_nothing(lab):
    """pve-cluster down: /etc/pve is an empty folder, and a guest not found there may well
    exist: absence of evidence keeps the snippet and the bridge."""
    run(lab, "install")
    off_the_bridge(lab)
    shutil.rmtree(os.path.join(lab.etc_pve, "nodes"))
    out = run(lab, "uninstall", rc=1)
    assert f"pvenat: kept vmbr1: the cluster filesystem ({lab.etc_pve}) shows no node" in out
    assert "pvenat: kept the hookscript" in out
    assert os.path.exists(os.path.join(lab.root, "var/lib/vz/snippets/pvenat.py"))
    lab.write_fixture()  # pmxcfs back
    run(lab, "uninstall")
    assert not os.path.exists(os.path.join(lab.root, "var/lib/vz/snippets/pvenat.py"))


def test_the_snippet_goes_where_storage_local_keeps_snippets(lab):
    """Storage local's content-dirs may move its snippets folder (pve-storage
    PVE/Storage/Plugin.pm get_subdir): the snippet goes there, PVE finds it, status and
    uninstall look there."""
    with open(lab.fixture) as f:
        data = json.load(f)
    data["storage"]["local"]["content-dirs"] = {"snippets": "hooks"}
    with open(lab.fixture, "w") as f:
        json.dump(data, f)
    out = run(lab, "install")
    snippet = os.path.join(lab.root, "var/lib/vz/hooks/pvenat.py")
    assert f"install the hookscript as {snippet}" in out and os.access(snippet, os.X_OK)
    assert not os.path.exists(os.path.join(lab.root, "var/lib/vz/snippets"))
    result = lab.pvenat("attach", "101")  # PVE checks that the script is there
    assert result.returncode == 0, result.stderr
    assert f"ok   hookscript: {snippet}" in lab.pvenat("status", "--root", lab.root).stdout
    with open(os.path.join(lab.root, "etc/pvenat/installed.json")) as f:
        assert json.load(f)["snippet"] == "/var/lib/vz/hooks/pvenat.py"
    off_the_bridge(lab)
    run(lab, "uninstall")
    assert not os.path.exists(snippet)


@pytest.fixture
def ra_lab(tmp_path):
    """The hoster puts the /64 on vmbr0's link and the host learns its IPv6 default route
    (via fe80::1) and its address (SLAAC) from the router's advertisements, every 10 s."""
    yield from install_lab(tmp_path, ipv6="on-link", ipv6_ra=True)


def ipv6_sysctls(lab) -> dict:
    return {key: lab.sh_host("sysctl", "-n", key) for key in (
        "net.ipv6.conf.all.forwarding", "net.ipv6.conf.vmbr0.forwarding",
        "net.ipv6.conf.vmbr0.accept_ra", "net.ipv6.conf.vmbr0.proxy_ndp")}


def ra_route(lab) -> list:
    """The host's IPv6 default routes, as (gateway, device, protocol)."""
    return [(r.get("gateway"), r.get("dev"), r.get("protocol")) for r in lab.default_routes6()]


def route_comes_back(lab, timeout=30):
    """The default route deleted, then learned again from the next advertisement: the
    host still takes them."""
    sh("ip", "-n", lab.host, "-6", "route", "del", "default", "via", ROUTER_LL, "dev", "vmbr0")
    assert ra_route(lab) == []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ra_route(lab):
            return ra_route(lab) == [(ROUTER_LL, "vmbr0", "ra")]
        time.sleep(0.2)
    return False


def test_install_with_ipv6_keeps_the_default_route_from_router_advertisements(ra_lab):
    """Forwarding on purges a default route learned from advertisements on an interface
    whose accept_ra is not 2 (net/ipv6/route.c __rt6_purge_dflt_routers): install sets
    accept_ra=2 first, and the route stays and keeps being refreshed; uninstall puts
    every value back."""
    lab = ra_lab
    before = ipv6_sysctls(lab)
    assert before == {"net.ipv6.conf.all.forwarding": "0", "net.ipv6.conf.vmbr0.forwarding": "0",
                      "net.ipv6.conf.vmbr0.accept_ra": "1", "net.ipv6.conf.vmbr0.proxy_ndp": "0"}
    assert ra_route(lab) == [(ROUTER_LL, "vmbr0", "ra")]
    slaac = [f"{a['local']}/{a['prefixlen']}" for i in json.loads(lab.sh_host(
        "ip", "-j", "-6", "addr", "show", "dev", "vmbr0", "scope", "global"))
        for a in i["addr_info"] if "local" in a]
    assert len(slaac) == 1 and slaac[0].startswith("2001:db8:1:2:")

    # ipv6 off (the default): install proposes it, and changes nothing of IPv6
    out = run(lab, "install", "--dry-run")
    assert f"pvenat: vmbr0 has {slaac[0]}: add 'ipv6: true' to {lab.config} to give guests " \
        f"IPv6 (prefix 2001:db8:1:2::/64: the /64 of {slaac[0]} on vmbr0; on-link: " in out
    assert "IPv6 forwarding" not in out

    lab.write_config("ipv6: true\n")
    dry = run(lab, "install", "--dry-run")
    sysctl_file = os.path.join(lab.root, "etc/sysctl.d/80-pvenat-ipv6.conf")
    assert f"would enable IPv6 forwarding ({sysctl_file}, now 0); accept_ra=2 on vmbr0; " \
        "proxy_ndp=1 on vmbr0" in dry
    assert dry.index("sysctl -w net.ipv6.conf.vmbr0.accept_ra=2") < \
        dry.index("sysctl -w net.ipv6.conf.all.forwarding=1")
    assert "pvenat: vmbr0 has" not in dry  # on: no proposal
    assert ipv6_sysctls(lab) == before

    out = run(lab, "install")
    assert f"enable IPv6 forwarding ({sysctl_file}, now 0); accept_ra=2 on vmbr0; " \
        "proxy_ndp=1 on vmbr0\n" in out
    assert ipv6_sysctls(lab) == {
        "net.ipv6.conf.all.forwarding": "1", "net.ipv6.conf.vmbr0.forwarding": "1",
        "net.ipv6.conf.vmbr0.accept_ra": "2", "net.ipv6.conf.vmbr0.proxy_ndp": "1"}
    assert ra_route(lab) == [(ROUTER_LL, "vmbr0", "ra")]
    with open(sysctl_file) as f:
        assert [line for line in f.read().splitlines() if not line.startswith("#")] == [
            "net.ipv6.conf.vmbr0.accept_ra = 2", "net.ipv6.conf.vmbr0.proxy_ndp = 1",
            "net.ipv6.conf.all.forwarding = 1"]
    assert run(lab, "install") == "pvenat: nothing to change\n"
    assert route_comes_back(lab)  # advertisements still count with forwarding on
    assert lab.pvenat("sync").returncode == 0  # as the boot unit: the IPv6 lan address
    assert "inet6 2001:db8:1:2::1/64" in lab.sh_host("ip", "-6", "addr", "show", "dev", "vmbr1")

    off_the_bridge(lab)
    out = run(lab, "uninstall")
    assert "the guests' IPv6 routes and neighbour answers, the host's IPv6 address on the " \
        "lan bridge" in out
    assert lab.sh_host("ip", "-6", "route", "show", "proto", "220") == ""
    assert "2001:db8:1:2::1/64" not in lab.sh_host("ip", "-6", "addr", "show")
    assert f"remove the IPv6 forwarding settings ({sysctl_file}); put back forwarding=0, " \
        "accept_ra=1 on vmbr0, proxy_ndp=0 on vmbr0" in out
    assert ipv6_sysctls(lab) == before and not os.path.exists(sysctl_file)
    assert ra_route(lab) == [(ROUTER_LL, "vmbr0", "ra")]
    assert not os.path.exists(os.path.join(lab.root, "etc/pvenat/installed.json"))


def test_install_with_ipv6_rolls_back_when_the_host_loses_its_default_route(ra_lab):
    """accept_ra=2 does not reach the kernel (pvenat's run sees a plain file bind-mounted
    over vmbr0's accept_ra, in its own mount namespace): forwarding on purges the route.
    Install puts forwarding, accept_ra and proxy_ndp back, writes no sysctl file, says
    why and stops before any other step; the next advertisement brings the route back."""
    lab = ra_lab
    before = ipv6_sysctls(lab)
    lab.write_config("ipv6: true\n")
    stand_in = os.path.join(lab.dir, "accept_ra")
    with open(stand_in, "w") as f:
        f.write("1\n")
    argv = lab.pvenat_argv("install", "--root", lab.root)
    at = argv.index("env")  # ip netns exec HOST | env -i ... python -m pvehook ...
    argv[at:at] = ["sh", "-c", 'mount --bind "$0" /proc/sys/net/ipv6/conf/vmbr0/accept_ra '
                   '&& exec "$@"', stand_in]
    result = subprocess.run(argv, capture_output=True, text=True, cwd="/")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "turning on IPv6 forwarding lost the host's IPv6 default route via fe80::1 dev " \
        "vmbr0 (from router advertisements), so every IPv6 setting is back as it was " \
        "(net.ipv6.conf.vmbr0.accept_ra=1, net.ipv6.conf.vmbr0.proxy_ndp=0, " \
        "net.ipv6.conf.all.forwarding=0)" in result.stderr
    assert ipv6_sysctls(lab) == before
    assert open(stand_in).read().strip() == "1"  # what pvenat saw, put back too
    assert not os.path.exists(os.path.join(lab.root, "etc/sysctl.d/80-pvenat-ipv6.conf"))
    # the first step: nothing else was done, nothing is recorded
    assert not os.path.exists(os.path.join(lab.root, "etc/pvenat/installed.json"))
    assert link(lab, "vmbr1") is None
    end = time.monotonic() + 30
    while not ra_route(lab) and time.monotonic() < end:
        time.sleep(0.2)
    assert ra_route(lab) == [(ROUTER_LL, "vmbr0", "ra")]


def test_install_without_ipv6_says_that_the_bridge_dropped_the_route(ra_lab):
    """ifupdown2 turns IPv6 forwarding on for vmbr1 (a bridge with an address), and the
    kernel drops the default route vmbr0 learned from advertisements (accept_ra 1): with
    ipv6 off install leaves accept_ra alone, says so, and the route comes back with the
    next advertisement."""
    lab = ra_lab
    out = run(lab, "install")
    assert "pvenat: bringing up vmbr1 (ifupdown2 turns IPv6 forwarding on for a bridge with " \
        "an address) made the kernel drop the host's IPv6 default route via fe80::1 dev " \
        "vmbr0 (from router advertisements); it comes back with the router's next " \
        "advertisement" in out
    assert lab.sh_host("sysctl", "-n", "net.ipv6.conf.vmbr1.forwarding") == "1"
    assert lab.sh_host("sysctl", "-n", "net.ipv6.conf.vmbr0.accept_ra") == "1"
    end = time.monotonic() + 30
    while not ra_route(lab) and time.monotonic() < end:
        time.sleep(0.2)
    assert ra_route(lab) == [(ROUTER_LL, "vmbr0", "ra")]

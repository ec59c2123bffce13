"""What a real PVE node does beyond a plain bridge: pve-firewall keeps deciding what
reaches a guest, a container rebooted from inside gets new devices without any hook
phase, and a NIC with a VLAN tag ends up on another bridge."""

import os

import pytest

from lab import PEER_IP, PUBLIC_IP, lab_fixture, ok

HOOKSCRIPT = "local:snippets/pvenat.py"

GUESTS = {
    101: {"kind": "qemu", "address": "172.22.161.170", "serve": ["tcp:22", "tcp:80"],
          "vm_firewall": ["-p tcp -m tcp --dport 22 -j ACCEPT"],
          "config": {"description": "```pvenat\nforwards: [12222:22]\n```",
                     "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1,firewall=1",
                     "ipconfig0": "ip=172.22.161.170/24", "hookscript": HOOKSCRIPT}},
    102: {"kind": "lxc", "address": "172.22.161.171", "serve": ["tcp:11000"],
          "config": {"tags": "pvenat-11000", "hookscript": HOOKSCRIPT, "net0": "name=eth0,"
                     "bridge=vmbr1,hwaddr=BC:24:11:00:00:02,ip=172.22.161.171/24,firewall=1,"
                     "type=veth"}},
}


@pytest.fixture(scope="module")
def lab():
    yield from lab_fixture(GUESTS, firewall="iptables", config_source="files")


def start(lab, *vmids):
    for vmid in vmids:
        ok(lab.hook(vmid, "pre-start"))
        ok(lab.hook(vmid, "post-start"))


@pytest.mark.parametrize("order", ["pve-firewall's jump first", "pvenat's jump first"])
def test_a_vm_level_drop_still_drops_forwarded_traffic(lab, order):
    """pve-firewall appends its FORWARD jump only when it is missing, so pvenat's may come
    first. Either way the guest's own firewall decides: pvenat's ACCEPT matches in the
    host's routed pass, the guest's chains in the firewall bridge's, a zone of its own."""
    start(lab, 101)
    if order == "pvenat's jump first":
        lab.iptables("-D", "FORWARD", "-j", "PVENAT-FORWARD")
        lab.iptables("-I", "FORWARD", "1", "-j", "PVENAT-FORWARD")
    jumps = [line for line in lab.iptables_save("-t", "filter").splitlines()
             if line.startswith("-A FORWARD")]
    assert jumps == (["-A FORWARD -j PVEFW-FORWARD", "-A FORWARD -j PVENAT-FORWARD"][::(
        1 if order == "pve-firewall's jump first" else -1)])
    assert lab.flow(lab.inet, "tcp", PUBLIC_IP, 12222) == f"g101 {PEER_IP}"
    lab.iptables("-I", "tap101i0-IN", "1", "-p", "tcp", "--dport", "22", "-j", "DROP")
    try:
        assert lab.flow(lab.inet, "tcp", PUBLIC_IP, 12222) == "timeout"
        # the policy drops what no VM rule accepts: port 80 is served, but not let in
        lab.iptables("-t", "nat", "-A", "PVENAT-101", "-p", "tcp", "-m", "multiport",
                     "--dports", "12280", "-j", "DNAT", "--to-destination", "172.22.161.170:80")
        lab.iptables("-t", "nat", "-I", "PVENAT-TCP", "-p", "tcp", "-m", "multiport",
                     "--dports", "12280", "-j", "PVENAT-101")
        assert lab.flow(lab.inet, "tcp", PUBLIC_IP, 12280) == "timeout"
    finally:
        lab.iptables("-D", "tap101i0-IN", "-p", "tcp", "--dport", "22", "-j", "DROP")
        ok(lab.pvenat("sync"))  # takes back the hand-made rules
    assert lab.flow(lab.inet, "tcp", PUBLIC_IP, 12222) == f"g101 {PEER_IP}"
    assert "12280" not in lab.iptables_save("-t", "nat")


def test_a_container_rebooted_from_inside_is_set_up_again_by_sync(lab):
    """PVE restarts a container rebooted from inside without the post-stop and pre-start
    phases, with a new veth and firewall bridge: their settings come back with sync."""
    start(lab, 102)
    assert lab.flow(lab.ns(102), "tcp", PUBLIC_IP, 11000) == "g102 172.22.161.254"
    lab.replug(102)
    assert lab.sh_host("cat", "/sys/class/net/vmbr1/brif/fwpr102p0/hairpin_mode") == "0"
    assert lab.sh_host("cat", "/proc/sys/net/ipv4/conf/fwbr102i0/arp_ignore") == "0"
    out = ok(lab.pvenat("sync"))
    assert out.endswith("hairpin turned on for fwpr102p0")
    assert lab.sh_host("cat", "/proc/sys/net/ipv4/conf/fwbr102i0/arp_ignore") == "1"
    assert lab.sh_host("cat", "/sys/class/net/fwbr102i0/brif/fwln102i0/learning") == "0"
    assert lab.flow(lab.ns(102), "tcp", PUBLIC_IP, 11000) == "g102 172.22.161.254"
    assert lab.flow(lab.inet, "tcp", PUBLIC_IP, 11000) == f"g102 {PEER_IP}"
    assert lab.flow(lab.ns(102), "tcp", PEER_IP, 80) == f"inet {PUBLIC_IP}"


HELPER_GUESTS = {
    101: {"kind": "qemu", "address": "172.22.161.170", "serve": ["tcp:21"],
          "config": {"description": "```pvenat\nforwards: [12221:21]\n```",
                     "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1,firewall=1",
                     "ipconfig0": "ip=172.22.161.170/24", "hookscript": HOOKSCRIPT}},
    102: GUESTS[102],
}


def test_the_zone_jump_stays_ahead_of_pve_firewalls_conntrack_helpers():
    """With the host option nf_conntrack_helpers, pve-firewall's raw PVEFW-PREROUTING
    holds '-j CT --helper ftp' for tcp port 21, loaded before any guest starts (its
    service comes before pve-guests). xt_CT ignores a second CT target on a packet, so
    behind a jump to it the firewall bridges' zone would be lost for traffic to port 21:
    pvenat inserts its jump first, and sync puts it back there."""
    for lab in lab_fixture(HELPER_GUESTS, firewall="iptables", conntrack_helpers=["ftp"],
                           config_source="files", prefix=f"pvz{os.getpid() % 100000}"):
        def prerouting():
            return [line for line in lab.iptables_save("-t", "raw").splitlines()
                    if line.startswith("-A PREROUTING ")]

        def flows():
            return [lab.flow(lab.inet, "tcp", PUBLIC_IP, 12221),
                    lab.flow(lab.ns(102), "tcp", PUBLIC_IP, 12221),
                    lab.flow(lab.ns(101), "tcp", PUBLIC_IP, 12221)]

        working = [f"g101 {PEER_IP}", "g101 172.22.161.254", "g101 172.22.161.254"]
        ours, theirs = "-A PREROUTING -i fwbr+ -j PVENAT-ZONE", \
            "-A PREROUTING -j PVEFW-PREROUTING"
        assert prerouting() == [theirs]
        start(lab, 101, 102)
        assert flows() == working
        assert prerouting() == [ours, theirs]
        lab.stop_pve_firewall()  # a restart: its jump goes, and is appended again
        lab.load_pve_firewall()
        assert prerouting() == [ours, theirs]
        assert flows() == working

        # pvenat's jump behind the helper, as an append would leave it: traffic to port 21
        # behind a firewall bridge stays in zone 0; status says so, sync puts it first
        lab.iptables("-t", "raw", "-D", "PREROUTING", "-i", "fwbr+", "-j", "PVENAT-ZONE")
        lab.iptables("-t", "raw", "-A", "PREROUTING", "-i", "fwbr+", "-j", "PVENAT-ZONE")
        assert prerouting() == [theirs, ours]
        assert flows() != working
        assert "FIX  rules: base rules missing or changed (raw PREROUTING jump PVENAT-ZONE " \
            "(not first))" in lab.pvenat("status").stdout
        assert "base rules repaired" in ok(lab.pvenat("sync"))
        assert prerouting() == [ours, theirs]
        assert flows() == working


VLAN_GUESTS = {
    101: {"kind": "qemu", "address": "172.22.161.170", "serve": ["tcp:12222"],
          "config": {"tags": "pvenat-12222", "ipconfig0": "ip=172.22.161.170/24",
                     "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1,tag=5,firewall=1"}},
    102: {"kind": "lxc", "address": "172.22.161.171", "serve": ["tcp:11000"],
          "config": {"tags": "pvenat-11000", "net0": "name=eth0,bridge=vmbr1,tag=5,"
                     "hwaddr=BC:24:11:00:00:02,ip=172.22.161.171/24,type=veth"}},
}


@pytest.mark.parametrize("br_netfilter", [True, False], ids=["br_netfilter on", "off"])
def test_guests_with_a_vlan_tag_on_a_bridge_that_is_not_vlan_aware(br_netfilter):
    """bridge=vmbr1,tag=5 puts the port on vmbr1v5 (pve-common activate_bridge_vlan); with
    the guests' network there, lan_bridge: vmbr1v5."""
    for lab in lab_fixture(VLAN_GUESTS, firewall="iptables", vlan=5, config_source="files",
                           br_netfilter=br_netfilter, prefix=f"pvv{os.getpid() % 100000}"):
        assert lab.sh_host("ls", "/sys/class/net/vmbr1v5/brif").split() == \
            ["eno2.5", "fwpr101p0", "veth102i0"]
        start(lab, 101, 102)
        assert lab.flow(lab.inet, "tcp", PUBLIC_IP, 12222) == f"g101 {PEER_IP}"
        assert lab.flow(lab.ns(101), "tcp", PUBLIC_IP, 12222) == "g101 172.22.161.254"
        assert lab.flow(lab.ns(102), "tcp", PUBLIC_IP, 12222) == "g101 172.22.161.254"
        assert lab.flow(lab.ns(101), "tcp", PUBLIC_IP, 11000) == "g102 172.22.161.254"
        assert lab.flow(lab.ns(102), "tcp", PEER_IP, 80) == f"inet {PUBLIC_IP}"
        assert lab.flow(lab.host, "tcp", PUBLIC_IP, 11000) == f"g102 {PUBLIC_IP}"

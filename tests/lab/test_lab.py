"""Guest forwards end to end in a namespace lab: real hook phases, real packets.

Runs the hookscript as PVE does (inside the simulated host, PVE's PATH, the fake API)
and checks every flow with real TCP and UDP traffic, three connections in a row (a flow
that works two times out of three is broken), on both layouts a PVE node has: guests
straight on the lan bridge (firewall off, or the nftables proxmox-firewall), and guests
behind PVE's firewall bridges with pve-firewall's rules loaded; br_netfilter on and off.
"""

import json
import os
import re

import pytest
from shared import flow_guests

from lab import LISTED_IP, NEIGHBOUR_IP, PEER_IP, PUBLIC_IP, lab_fixture, ok

# How a hook reads the guest's config: files (the default: /etc/pve), or the API through
# proxmoxer, on pvesh (backend local, the default; Debian's proxmoxer 1.2 too) or HTTPS
# with a token.
SETUPS = [("on lan bridge", True, "api", "https"), ("on lan bridge", False, "files", "local"),
          ("behind firewall bridges", True, "api", "local"),
          ("behind firewall bridges", False, "files", "local")]
# What guest 101's own firewall lets in, when it is on (policy_in DROP): its served ports.
VM_FIREWALL = [f"-p {proto} -m {proto} --dport {port} -j ACCEPT" for proto, port in (
    ("tcp", 22), ("tcp", 10000), ("tcp", 10099), ("udp", 10000), ("tcp", 9005),
    ("tcp", 3389), ("udp", 3389), ("tcp", 80))]


def layout(guests, firewall: bool):
    """The guests' NICs as the GUI makes them (firewall=1), guest 101 with its own VM
    firewall on and 102 with it off; or as they are (no firewall bridge)."""
    if firewall:
        for guest in guests.values():
            if "net0" in guest["config"]:
                guest["config"]["net0"] += ",firewall=1"
        guests[101]["vm_firewall"] = VM_FIREWALL
    return guests


@pytest.fixture(scope="module", params=SETUPS, ids=[
    f"{s[0]}, br_netfilter {'on' if s[1] else 'off'}, {s[2]}" + (
        f" ({s[3]})" if s[2] == "api" else "") for s in SETUPS])
def lab(request):
    where, bnf, source, backend = request.param
    firewall = where == "behind firewall bridges"
    yield from lab_fixture(layout(flow_guests(), firewall), br_netfilter=bnf, backend=backend,
                           config_source=source, firewall="iptables" if firewall else None)


def port(lab, vmid):
    """The guest's port on the lan bridge: its tap or veth, or fwpr behind a firewall
    bridge."""
    name = "tap" if lab.guests[vmid]["kind"] == "qemu" else "veth"
    return f"fwpr{vmid}p0" if lab.node.firewall else f"{name}{vmid}i0"


def test_forwards_end_to_end(lab):
    I, H, A, B = lab.inet, lab.host, lab.ns(101), lab.ns(102)
    empty = lab.iptables_save()
    assert ok(lab.hook(102, "pre-start")) == \
        "pvenat: 102 -> 172.22.161.171 via 203.0.113.10: tcp+udp 11000"
    assert ok(lab.hook(102, "post-start")) == f"pvenat: 102: hairpin on {port(lab, 102)}"
    before = lab.iptables_save()
    assert before != empty

    assert ok(lab.hook(101, "pre-start")) == (
        "pvenat: 101 -> 172.22.161.170 via 203.0.113.10: tcp+udp 10000-10099, "
        "tcp 12222->22, tcp+udp 13389->3389 from 198.51.100.0/24,192.0.2.7, "
        "tcp 18000-18009->9000-9009")
    assert ok(lab.hook(101, "post-start")) == f"pvenat: 101: hairpin on {port(lab, 101)}"
    hairpin = lab.sh_host("cat", f"/sys/class/net/vmbr1/brif/{port(lab, 101)}/hairpin_mode")
    assert hairpin == "1"
    started = lab.iptables_save()
    assert ok(lab.hook(101, "pre-start"))  # a second run changes nothing
    assert lab.iptables_save() == started
    assert ok(lab.hook(101, "pre-stop")) == ""

    # outside -> public:port reaches the guest, with the client's own address
    assert lab.flow(I, "tcp", PUBLIC_IP, 12222) == f"g101 {PEER_IP}"
    assert lab.flow(I, "tcp", PUBLIC_IP, 10099) == f"g101 {PEER_IP}"
    assert lab.flow(I, "udp", PUBLIC_IP, 10000) == f"g101 {PEER_IP}"
    assert lab.flow(I, "tcp", PUBLIC_IP, 18005) == f"g101 {PEER_IP}"  # shifted to 9005
    assert lab.flow(I, "udp", PUBLIC_IP, 11000) == f"g102 {PEER_IP}"
    # guest B -> public:port -> guest A, and guest A -> its own public port
    assert lab.flow(B, "tcp", PUBLIC_IP, 12222) == "g101 172.22.161.254"
    assert lab.flow(B, "udp", PUBLIC_IP, 10000) == "g101 172.22.161.254"
    assert lab.flow(A, "tcp", PUBLIC_IP, 12222) == "g101 172.22.161.254"
    assert lab.flow(A, "udp", PUBLIC_IP, 10000) == "g101 172.22.161.254"
    assert lab.flow(A, "tcp", PUBLIC_IP, 11000) == "g102 172.22.161.254"
    # host -> public:port
    assert lab.flow(H, "tcp", PUBLIC_IP, 12222) == f"g101 {PUBLIC_IP}"
    assert lab.flow(H, "udp", PUBLIC_IP, 11000) == f"g102 {PUBLIC_IP}"
    # guest -> outside is SNATed; outbound to a forwarded port number is not hijacked
    assert lab.flow(A, "tcp", PEER_IP, 10000) == f"inet {PUBLIC_IP}"
    assert lab.flow(A, "udp", PEER_IP, 10000) == f"inet {PUBLIC_IP}"
    assert lab.flow(B, "tcp", PEER_IP, 80) == f"inet {PUBLIC_IP}"
    # guests reach each other directly
    assert lab.flow(A, "tcp", "172.22.161.171", 11000) == "g102 172.22.161.170"
    assert lab.flow(B, "tcp", "172.22.161.170", 22) == "g101 172.22.161.171"
    # the allow-list passes a listed source and refuses another
    assert lab.flow(I, "tcp", PUBLIC_IP, 13389, LISTED_IP) == f"g101 {LISTED_IP}"
    assert lab.flow(I, "udp", PUBLIC_IP, 13389, LISTED_IP) == f"g101 {LISTED_IP}"
    assert lab.flow(I, "tcp", PUBLIC_IP, 13389) == "refused"
    # a port nobody forwards goes nowhere
    assert lab.flow(I, "tcp", PUBLIC_IP, 12223) == "refused"

    assert lab.sh_host("conntrack", "-L", "--reply-src", "172.22.161.170")  # flows were tracked
    assert ok(lab.hook(101, "post-stop")) == "pvenat: 101: forwards removed"
    assert lab.iptables_save() == before
    # its tracked connections are gone too: no UDP flow keeps going to its address
    assert lab.sh_host("conntrack", "-L", "--reply-src", "172.22.161.170",
                       "--orig-dst", PUBLIC_IP) == ""
    assert lab.flow(I, "tcp", PUBLIC_IP, 12222) == "refused"
    assert lab.flow(B, "tcp", PUBLIC_IP, 10000) == "refused"
    assert lab.flow(I, "udp", PUBLIC_IP, 11000) == f"g102 {PEER_IP}"  # B unaffected
    assert ok(lab.hook(101, "post-stop")) == ""  # nothing left to remove

    assert ok(lab.hook(102, "post-stop")) == "pvenat: 102: forwards removed"
    assert lab.flow(I, "udp", PUBLIC_IP, 11000) == "timeout"


def test_the_nat_boundary_holds_against_a_neighbour_that_routes_the_guest_subnet(lab):
    """A machine on vmbr0's segment with a route to 172.22.161.0/24 via the public
    address reaches the guests through their forwards, as anyone does, and through
    nothing else: not a port nobody forwards, not a forwarded guest port its allow-list
    keeps it from, not a guest port straight past its public one. allow_routed lets it
    in on purpose."""
    N, A, B = lab.neighbour(), lab.ns(101), lab.ns(102)
    for vmid in (101, 102):
        ok(lab.hook(vmid, "pre-start"))
        ok(lab.hook(vmid, "post-start"))
    try:
        assert lab.flow(N, "tcp", PUBLIC_IP, 12222) == f"g101 {NEIGHBOUR_IP}"
        assert lab.flow(N, "udp", PUBLIC_IP, 11000) == f"g102 {NEIGHBOUR_IP}"
        assert lab.flow(N, "tcp", PUBLIC_IP, 13389) == "refused"  # not on the allow-list
        assert lab.flow(N, "tcp", "172.22.161.170", 80) == "timeout"  # not forwarded
        assert lab.flow(N, "tcp", "172.22.161.170", 3389) == "timeout"  # allow-list
        assert lab.flow(N, "udp", "172.22.161.170", 3389) == "timeout"
        assert lab.flow(N, "tcp", "172.22.161.170", 22) == "timeout"  # only as 12222
        assert lab.flow(N, "udp", "172.22.161.171", 11000) == "timeout"
        # the guests still reach the neighbour (SNATed), and each other
        assert lab.flow(A, "tcp", NEIGHBOUR_IP, 80) == f"nb {PUBLIC_IP}"
        assert lab.flow(B, "tcp", NEIGHBOUR_IP, 80) == f"nb {PUBLIC_IP}"
        assert lab.flow(A, "tcp", "172.22.161.171", 11000) == "g102 172.22.161.170"
        assert lab.flow(B, "tcp", PUBLIC_IP, 12222) == "g101 172.22.161.254"

        lab.write_config(f"allow_routed: [{NEIGHBOUR_IP}/32]\n")
        assert "base rules repaired" in ok(lab.pvenat("sync"))
        assert lab.flow(N, "tcp", "172.22.161.170", 80) == f"g101 {NEIGHBOUR_IP}"
        assert lab.flow(N, "tcp", "172.22.161.170", 3389) == f"g101 {NEIGHBOUR_IP}"
        assert lab.flow(N, "udp", "172.22.161.171", 11000) == f"g102 {NEIGHBOUR_IP}"
        assert lab.flow(N, "tcp", PUBLIC_IP, 12222) == f"g101 {NEIGHBOUR_IP}"
    finally:
        lab.write_config()
        lab.pvenat("sync")
        for vmid in (101, 102):
            ok(lab.hook(vmid, "post-stop"))
    assert lab.flow(N, "tcp", "172.22.161.170", 80) == "timeout"


@pytest.mark.parametrize("vmid,message", [
    (103, "guest 103, Notes line 2: public port 2222 is outside the port pool"),
    (104, "guest 104, tag pvenat-11000: tcp public port 11000 is already forwarded to "
          "guest 102"),
    (105, "guest 105: address 172.22.161.170 is already forwarded to guest 101"),
])
def test_refused_start_changes_nothing(lab, vmid, message):
    ok(lab.hook(101, "pre-start"))
    ok(lab.hook(102, "pre-start"))
    before = lab.iptables_save()
    result = lab.hook(vmid, "pre-start")
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stderr.count("\n") == 1  # one line, no traceback
    assert lab.iptables_save() == before
    ok(lab.hook(101, "post-stop"))
    ok(lab.hook(102, "post-stop"))


def test_unmanaged_guest_is_left_alone(lab):
    before = lab.iptables_save()
    for phase in ("pre-start", "post-start", "pre-stop", "post-stop"):
        assert ok(lab.hook(107, phase)) == ""
    assert lab.iptables_save() == before
    # nor does it load PyYAML: the host config comes from the cache of its last parse
    imports = lab.hook(107, "pre-start", {"PYTHONPROFILEIMPORTTIME": "1"}).stderr
    assert "| pvehook.hook" in imports
    assert not re.search(r"\| +yaml$", imports, re.M)


def test_live_migration_reads_config_from_source_node(lab):
    result = lab.hook(106, "pre-start")
    assert result.returncode == 1 and "no QEMU or LXC config on node pve1" in result.stderr
    assert "via 203.0.113.10: tcp+udp 20000" in ok(
        lab.hook(106, "pre-start", {"PVE_MIGRATED_FROM": "pve2"}))
    assert ok(lab.hook(106, "post-stop")) == "pvenat: 106: forwards removed"


def test_post_stop_needs_no_api(lab):
    ok(lab.hook(102, "pre-start"))
    lab.write_fixture(fault="garbage")
    try:
        result = lab.hook(101, "pre-start")
        if lab.config_source == "api":  # files: a start needs no API either
            assert result.returncode == 1 and "guest 101" in result.stderr
        assert ok(lab.hook(102, "post-stop")) == "pvenat: 102: forwards removed"
    finally:
        lab.write_fixture()
    assert lab.probe(lab.inet, "udp", PUBLIC_IP, 11000) == "timeout"


def test_post_stop_never_fails_the_stop(lab):
    """Not even when pvenat cannot write its state (here: /proc)."""
    ok(lab.hook(102, "pre-start"))
    result = lab.hook(102, "post-stop", {"PVENAT_STATE_DIR": "/proc/pvenat"})
    assert result.returncode == 0
    assert result.stdout.startswith("pvenat: 102: WARNING: ")
    assert ok(lab.hook(102, "post-stop")) == "pvenat: 102: forwards removed"


def test_events_go_to_the_log_as_json_lines(lab):
    """structlog is imported in the background while iptables-restore works; the events
    must still be written, whole, one JSON object a line."""
    with open(lab.log, "a"):
        pass
    start = os.path.getsize(lab.log)
    ok(lab.hook(102, "pre-start"))
    ok(lab.hook(102, "post-stop"))
    with open(lab.log) as f:
        f.seek(start)
        events = [json.loads(line) for line in f]
    assert [(e["event"], e["vmid"], e["level"]) for e in events] == [
        ("guest.started", 102, "info"), ("guest.stopped", 102, "info")]
    assert events[0]["forwards"] == ["tcp 11000", "udp 11000"]
    assert all(e["timestamp"].endswith("Z") for e in events)

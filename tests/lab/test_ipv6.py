"""IPv6 for the guests end to end in the namespace lab: real hook phases, real packets.

Each guest has a public address of its own from the host's /64 (no NAT). On all four
layouts a node has (guests straight on the lan bridge, or behind PVE's firewall bridges
with pve-firewall's iptables and ip6tables rules loaded; br_netfilter on and off), with
the hoster's router routing the /64 to the host or putting it on the link (then it
solicits each address, and the host answers for running guests alone): the internet
reaches a forward's guest-side port and nothing else, allow-lists hold per family,
guests reach the internet and each other, and after post-stop nothing reaches the guest
and ip6tables-save is what it was.
"""

import pytest
from shared import flow_guests

from lab import LINK6, LISTED6, PEER6, PREFIX6, address6, lab_fixture, ok

A6, B6 = address6(101), address6(102)
# Guest 101's Notes with an allow-list of both families: IPv6 traffic takes its IPv6
# source, IPv4 its IPv4 ones.
NOTES_101 = """```pvenat
forwards:
  - 10000-10099/both
  - 12222:22
  - 18000-18009:9000-9009
  - ports: 13389:3389
    proto: both
    allow: [198.51.100.0/24, 2001:db8:fe::7]
  - ports: 18080:80
    allow: [192.0.2.7]
```"""
# (firewall bridges, br_netfilter, upstream): each layout once, each upstream twice
LAYOUTS = [(False, True, "routed"), (False, False, "on-link"),
           (True, True, "on-link"), (True, False, "routed")]
VM_FIREWALL = [f"-p {proto} -m {proto} --dport {port} -j ACCEPT" for proto, port in (
    ("tcp", 22), ("tcp", 10000), ("tcp", 10099), ("udp", 10000), ("tcp", 9005),
    ("tcp", 3389), ("udp", 3389), ("tcp", 80), ("tcp", 11000), ("udp", 11000))]


def guests(firewall):
    g = {v: guest for v, guest in flow_guests().items() if v in (101, 102)}
    g[101]["config"]["description"] = NOTES_101
    for vmid, guest in g.items():
        guest["address6"] = address6(vmid)  # as cloud-init's ip6= / LXC's ip6= set it
        guest["config"]["hookscript"] = "local:snippets/pvenat.py"  # as attach sets it
        if firewall:
            guest["config"]["net0"] += ",firewall=1"
            guest["vm_firewall"] = VM_FIREWALL
    return g


@pytest.fixture(scope="module", params=LAYOUTS, ids=[
    f"{'behind firewall bridges' if f else 'on lan bridge'}, br_netfilter "
    f"{'on' if b else 'off'}, {u}" for f, b, u in LAYOUTS])
def lab(request):
    firewall, bnf, upstream = request.param
    for lab in lab_fixture(guests(firewall), br_netfilter=bnf, ipv6=upstream,
                           firewall="iptables" if firewall else None):
        # what pvenat install does for IPv6 (tests/lab/test_install.py)
        lab.sysctl(lab.host, "net.ipv6.conf.all.forwarding", 1)
        if upstream == "on-link":
            lab.sysctl(lab.host, "net.ipv6.conf.vmbr0.proxy_ndp", 1)
        # on-link, prefix auto finds the /64 on vmbr0; routed, vmbr0 has none of it
        lab.write_config("ipv6: {upstream: auto}\n" if upstream == "on-link" else
                         f"ipv6: {{prefix: '{PREFIX6}'}}\n")
        if firewall:
            lab.load_pve_firewall()
        yield lab


def closed(lab, ns, proto, host, port, src=None):
    """One attempt: a drop is a drop (each costs the probe's timeout)."""
    return lab.probe(ns, proto, host, port, src) == "timeout"


def unreached(lab, ns, proto, host, port):
    """Nothing answers: dropped (a timeout), or, for an address no guest running here has,
    refused at once by the routed prefix's unreachable route; on-link nobody answers the
    router's solicitation."""
    return lab.probe(ns, proto, host, port) in (
        "timeout", "error No route to host", "error Network is unreachable")


def routes(lab):
    return lab.sh_host("ip", "-6", "route", "show", "proto", "220")


def proxies(lab):
    return lab.sh_host("ip", "-6", "neigh", "show", "proxy", "dev", "vmbr0")


def test_ipv6_end_to_end(lab):
    I, A, B = lab.inet, lab.ns(101), lab.ns(102)
    on_link = lab.ipv6 == "on-link"
    ok(lab.pvenat("sync"))  # the base rules, as install leaves them (and both guests,
    for vmid in (101, 102):  # whose NICs exist: stopped again)
        ok(lab.hook(vmid, "post-stop"))
    empty = lab.iptables_save(version=6)
    assert "PVENAT-INBOUND" in empty
    assert ok(lab.hook(102, "pre-start")) == (
        f"pvenat: 102 -> 172.22.161.171 via 203.0.113.10: tcp+udp 11000; IPv6 {B6}: "
        "tcp+udp 11000")
    ok(lab.hook(102, "post-start"))
    before = lab.iptables_save(version=6)
    assert before != empty
    line = ok(lab.hook(101, "pre-start"))
    assert line.endswith(f"; IPv6 {A6}: tcp+udp 10000-10099, tcp 22, tcp+udp 3389 from "
                         "2001:db8:fe::7, tcp 9000-9009"), line
    ok(lab.hook(101, "post-start"))
    started = lab.iptables_save(version=6)
    assert ok(lab.hook(101, "pre-start"))  # a second run changes nothing
    assert lab.iptables_save(version=6) == started
    assert f"{A6} dev vmbr1" in routes(lab) and f"{B6} dev vmbr1" in routes(lab)
    assert (A6 in proxies(lab)) == on_link and (B6 in proxies(lab)) == on_link
    assert ("unreachable 2001:db8:1:2::/64" in routes(lab)) == (not on_link)

    # the internet reaches the forwards' guest-side ports, with its own address
    assert lab.flow(I, "tcp", A6, 22) == f"g101 {PEER6}"
    assert lab.flow(I, "tcp", A6, 10099) == f"g101 {PEER6}"
    assert lab.flow(I, "udp", A6, 10000) == f"g101 {PEER6}"
    assert lab.flow(I, "tcp", A6, 9005) == f"g101 {PEER6}"
    assert lab.flow(I, "udp", B6, 11000) == f"g102 {PEER6}"
    assert lab.flow(I, "tcp", B6, 11000) == f"g102 {PEER6}"
    # the allow-list's IPv6 source passes, another does not; an IPv4-only list is closed
    assert lab.flow(I, "tcp", A6, 3389, LISTED6) == f"g101 {LISTED6}"
    assert lab.flow(I, "udp", A6, 3389, LISTED6) == f"g101 {LISTED6}"
    assert closed(lab, I, "tcp", A6, 3389)
    assert closed(lab, I, "tcp", A6, 80)
    # nothing else: not the public side of a forward, not an unopened port, not an
    # address no guest has
    assert closed(lab, I, "tcp", A6, 12222)
    assert closed(lab, I, "tcp", A6, 18005)
    assert unreached(lab, I, "tcp", address6(103), 22)
    # guests reach the internet with their own address, and each other
    assert lab.flow(A, "tcp", PEER6, 80) == f"inet {A6}"
    assert lab.flow(B, "udp", PEER6, 10000) == f"inet {B6}"
    assert lab.flow(A, "tcp", B6, 11000) == f"g102 {A6}"
    assert lab.flow(B, "tcp", A6, 80) == f"g101 {B6}"  # closed from outside only
    # the host: its lan address (the guests' DNS server), and on-link its own address of
    # the /64 on vmbr0, which is on the guests' link too (a reset: nothing listens there)
    assert lab.flow(A, "tcp", "2001:db8:1:2::1", 9) == "refused"
    assert lab.flow(B, "tcp", "2001:db8:1:2::1", 9) == "refused"
    if on_link:
        assert lab.flow(A, "tcp", LINK6["on-link"][1], 9) == "refused"

    # status says what auto chose, and that both guests are routed
    status = lab.pvenat("status").stdout
    assert (f"ok   ipv6: 2001:db8:1:2::/64, {lab.ipv6}, host 2001:db8:1:2::1 on vmbr1"
            in status), status
    assert "ok   ipv6 forwarding: on" in status and "ok   ipv6 routes: 2 guests routed" in status

    # sync finds it all in place, and puts back a route someone removed
    assert "nothing to change" in ok(lab.pvenat("sync"))
    lab.sh_host("ip", "-6", "route", "del", f"{A6}/128", "dev", "vmbr1")
    if on_link:
        lab.sh_host("ip", "-6", "neigh", "del", "proxy", A6, "dev", "vmbr0")
    assert "FIX  ipv6 routes: guests 101 lack their route or neighbour answer; run 'pvenat " \
        "sync'" in lab.pvenat("status").stdout
    assert "IPv6 routes changed" in ok(lab.pvenat("sync"))
    assert lab.flow(I, "tcp", A6, 22) == f"g101 {PEER6}"

    assert ok(lab.hook(101, "post-stop")) == \
        "pvenat: 101: forwards removed and IPv6 route removed"
    assert lab.iptables_save(version=6) == before
    assert A6 not in routes(lab) and A6 not in proxies(lab)
    assert unreached(lab, I, "tcp", A6, 22)
    assert lab.flow(I, "udp", B6, 11000) == f"g102 {PEER6}"  # 102 unaffected
    assert ok(lab.hook(101, "post-stop")) == ""  # nothing left to remove
    ok(lab.hook(102, "post-stop"))
    assert lab.iptables_save(version=6) == empty
    assert B6 not in routes(lab) and B6 not in proxies(lab)
    assert unreached(lab, I, "udp", B6, 11000)

"""The lab's IPv6 internet itself, with the host set up by hand (ip commands in its
namespace, as pvenat is to set it up; none of pvenat's code): the /64 routed to the host's
link-local address or on-link with proxy NDP, a default route learned from router
advertisements, a guest's DHCPv6 client against a dnsmasq started by hand, and
pve-firewall's ip6tables rules."""

import contextlib
import os
import subprocess
import time

import pytest

from lab import (GATEWAY6, LISTED6, PEER6, PREFIX6, ROUTER_LL, address6, lab_fixture,
                 sh)

MAC = "BC:24:11:00:00:65"
G101 = address6(101)
DNS6 = "2001:db8:ff::53"


def guests(address6="auto", firewall=False):
    net0 = f"virtio={MAC},bridge=vmbr1" + (",firewall=1" if firewall else "")
    guest = {"kind": "qemu", "address": "172.22.161.170", "serve": ["tcp:80", "udp:10000"],
             "config": {"net0": net0}}
    if address6:
        guest["address6"] = G101 if address6 == "auto" else address6
    if firewall:
        guest["vm_firewall"] = ["-p tcp -m tcp --dport 80 -j ACCEPT"]
    return {101: guest}


@pytest.fixture(autouse=True)
def machine_untouched():
    """The machine's own resolv.conf is what it was (a DHCP client in a namespace once
    rewrote it): put back, and the test failed, if not."""
    with open("/etc/resolv.conf") as f:
        before = f.read()
    yield
    with open("/etc/resolv.conf") as f:
        after = f.read()
    if after != before:
        with open("/etc/resolv.conf", "w") as f:
            f.write(before)
        pytest.fail(f"/etc/resolv.conf was changed to {after!r}; put back")


@contextlib.contextmanager
def one_lab(name, guests, **options):
    """A lab for one test, beside the module's (a namespace prefix of its own)."""
    yield from lab_fixture(guests, prefix=f"{name}{os.getpid() % 100000}", **options)


def by_hand(lab, vmid, proxy=True):
    """What pvenat is to do for a running guest: forwarding, PREFIX::1 on vmbr1 without
    its prefix route, the guest's /128 there, and on-link its proxy NDP entry on vmbr0."""
    h = ["ip", "-n", lab.host]
    lab.sysctl(lab.host, "net.ipv6.conf.all.forwarding", 1)
    sh(*h, "addr", "replace", f"{GATEWAY6}/64", "dev", "vmbr1", "noprefixroute")
    sh(*h, "-6", "route", "replace", f"{address6(vmid)}/128", "dev", "vmbr1", "proto", "220")
    if lab.ipv6 == "on-link" and proxy:
        lab.sysctl(lab.host, "net.ipv6.conf.vmbr0.proxy_ndp", 1)
        sh(*h, "-6", "neigh", "replace", "proxy", address6(vmid), "dev", "vmbr0")


def undo(lab, vmid):
    h = ["ip", "-n", lab.host]
    sh(*h, "-6", "neigh", "del", "proxy", address6(vmid), "dev", "vmbr0", check=False)
    sh(*h, "-6", "route", "del", f"{address6(vmid)}/128", check=False)
    sh("ip", "-n", lab.inet, "-6", "neigh", "flush", "dev", "eth0")


@pytest.fixture(scope="module", params=["routed", "on-link"])
def lab(request):
    yield from lab_fixture(guests(), ipv6=request.param)


def test_the_internet_reaches_a_guest_address_and_back(lab):
    by_hand(lab, 101)
    try:
        for proto, port in (("tcp", 80), ("udp", 10000)):
            assert lab.flow(lab.inet, proto, G101, port) == f"g101 {PEER6}"
            assert lab.flow(lab.inet, proto, G101, port, LISTED6) == f"g101 {LISTED6}"
        assert lab.flow(lab.ns(101), "tcp", PEER6, 80) == f"inet {G101}"
        # the host's own traffic leaves by its default route, via the router's fe80::1
        assert [(r["gateway"], r["dev"]) for r in lab.default_routes6()] == \
            [(ROUTER_LL, "vmbr0")]
    finally:
        undo(lab, 101)


def test_on_link_the_router_delivers_only_to_an_address_someone_answers_for():
    """On-link, the router asks for the guest's address on vmbr0's segment: without the
    host's proxy entry nobody answers (its neighbour entry fails, nothing arrives); with
    it the host answers with vmbr0's MAC."""
    with one_lab("nd", guests(), ipv6="on-link") as lab:
        neigh = ["ip", "-n", lab.inet, "-6", "neigh", "show", G101, "dev", "eth0"]
        by_hand(lab, 101, proxy=False)
        assert lab.probe(lab.inet, "udp", G101, 10000) == "timeout"
        for _ in range(40):  # its last solicitation goes unanswered too
            if "INCOMPLETE" not in sh(*neigh).stdout:
                break
            time.sleep(0.05)
        assert sh(*neigh).stdout.split()[1:] == ["FAILED"]
        by_hand(lab, 101)
        assert lab.flow(lab.inet, "udp", G101, 10000) == f"g101 {PEER6}"
        mac = lab.node.read("/sys/class/net/vmbr0/address")
        assert f"lladdr {mac}" in sh(*neigh).stdout


@pytest.mark.parametrize("accept_ra", [1, 2])
def test_router_advertisements_give_the_host_its_default_route(accept_ra):
    """ipv6_ra: the host learns fe80::1 as its default router (and SLAAC an address on the
    link). Turning forwarding on purges such a route unless the interface has accept_ra=2
    (the kernel's rt6_purge_dflt_routers; it skips a table after one pass, hence a lab
    each): what pvenat install has to keep in mind."""
    with one_lab("ra", {}, ipv6="routed", ipv6_ra=True) as lab:
        [route] = lab.default_routes6()
        assert (route["gateway"], route["dev"], route["protocol"]) == \
            (ROUTER_LL, "vmbr0", "ra")
        assert "2001:db8:0:1:" in lab.sh_host("ip", "-6", "addr", "show", "dev", "vmbr0",
                                              "scope", "global")
        lab.sysctl(lab.host, "net.ipv6.conf.vmbr0.accept_ra", accept_ra)
        lab.sysctl(lab.host, "net.ipv6.conf.all.forwarding", 1)
        assert [r["gateway"] for r in lab.default_routes6()] == \
            ([ROUTER_LL] if accept_ra == 2 else [])


def start_dnsmasq(lab):
    """DHCPv6 (the guest's address by its MAC) and RA on vmbr1, started by hand in the
    host namespace; DNS off, a DNS server named in DHCPv6 instead."""
    hosts = os.path.join(lab.dir, "hosts6")
    with open(hosts, "w") as f:
        f.write(f"{MAC},[{G101}]\n")
    os.chmod(lab.dir, 0o755)  # dnsmasq reads the hosts file as nobody
    os.chmod(hosts, 0o644)
    pid = os.path.join(lab.dir, "dnsmasq6.pid")
    lab.procs.append(subprocess.Popen(
        ["ip", "netns", "exec", lab.host, "dnsmasq", "--keep-in-foreground",
         "--log-facility=-", "--conf-file=/dev/null", f"--pid-file={pid}", "--port=0",
         "--interface=vmbr1", "--bind-interfaces", "--enable-ra",
         "--dhcp-range=::,constructor:vmbr1,static,64,1h", f"--dhcp-hostsfile={hosts}",
         f"--dhcp-leasefile={os.path.join(lab.dir, 'leases6')}",
         f"--dhcp-option=option6:dns-server,[{DNS6}]"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    for _ in range(100):
        if os.path.exists(pid) and open(pid).read().strip():
            return
        time.sleep(0.05)
    raise RuntimeError("dnsmasq did not start")


def test_a_dhcpv6_guest_gets_its_address_route_and_dns():
    with one_lab("d6", guests(address6="dhcp"), ipv6="routed") as lab:
        by_hand(lab, 101)
        start_dnsmasq(lab)
        got = lab.dhcp6_client(101)
        assert got == {"addresses": [f"{G101}/128"],
                       "routes": [lab.link_local(lab.host, "vmbr1")], "dns": [DNS6]}
        assert lab.flow(lab.ns(101), "tcp", PEER6, 80) == f"inet {G101}"
        assert lab.flow(lab.inet, "tcp", G101, 80) == f"g101 {PEER6}"


def test_pve_firewall_ip6tables_rules():
    """pve-firewall's ip6tables chains, loaded as it loads them: the guest's own firewall
    lets in what its rules accept and drops the rest; the host's chain lets the guest's
    router solicitation through (the advertisement's prefix reaches the guest) but drops
    its DHCPv6 Solicit, a multicast (PVEFW-DropBroadcast); stopped, all of it is gone."""
    with one_lab("fw", guests(address6="dhcp", firewall=True), ipv6="routed",
                 firewall="iptables", host_firewall=True) as lab:
        saved = lab.iptables_save(version=6)
        for line in ("-A FORWARD -j PVEFW-FORWARD", "-A INPUT -j PVEFW-INPUT",
                     "-A tap101i0-IN -p udp -m udp --sport 547 --dport 546 -j ACCEPT",
                     "-A PVEFW-DropBroadcast -d ff00::/8 -j DROP"):
            assert line in saved.splitlines()
        by_hand(lab, 101)
        start_dnsmasq(lab)
        got = lab.dhcp6_client(101, timeout=2)
        assert (got["addresses"], got["dns"]) == ([], [])
        assert "proto ra" in sh("ip", "-n", lab.ns(101), "-6", "route", "show",
                                PREFIX6).stdout  # the router advertisement came
        lab.configure6(101)
        assert lab.flow(lab.inet, "tcp", G101, 80) == f"g101 {PEER6}"
        assert lab.probe(lab.inet, "udp", G101, 10000) == "timeout"  # not accepted
        lab.stop_pve_firewall()
        assert "PVEFW" not in lab.iptables_save(version=6)
        assert lab.flow(lab.inet, "udp", G101, 10000) == f"g101 {PEER6}"


def test_prefix():
    assert PREFIX6 == "2001:db8:1:2::/64" and G101 == "2001:db8:1:2::101"
    assert address6(12345) == "2001:db8:1:2::1:2345"

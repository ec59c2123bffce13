"""pvenat's IPv6 rules: the address tree walked as the kernel walks it, and the backend's
IPv6 side on the in-memory kernel (the real kernel's tests are in tests/lab)."""

import ipaddress
import random

import pytest

from memkernel import MemKernel
from pvehook.config import HostConfig, Ipv6Settings
from pvehook.errors import PvenatError
from pvehook.iptables import index, render6
from pvehook.iptables.backend import Ip6
from pvehook.ipv6 import Net, derived
from pvehook.plan import GuestPlan
from pvehook.spec import Forward

NET = Net("2001:db8:1:2::/64", "routed", "2001:db8:1:2::1")
HOST = HostConfig(ipv6=Ipv6Settings(NET.prefix, NET.upstream, NET.lan_address))


def plan(vmid, address=None, allow=()):
    return GuestPlan(vmid, "172.22.161.170", (
        Forward("tcp", (12222, 12222), (22, 22), allow),
        Forward("udp", (10000, 10009), (20000, 20009))), address or derived(NET, vmid))


def walk(tables, address):
    """Where a new connection to ``address`` ends in mangle: the guest chain it reaches
    (by -g), or 'DROP'; each chain's rules matched in order, as ip6tables does."""
    chains = tables["mangle"].chains
    chain, hops = render6.INBOUND, 0
    ip = ipaddress.IPv6Address(address)
    while True:
        hops += 1
        for rule in chains[chain]:
            words = rule.split()
            if words[:2] == ["-j", "DROP"]:
                return "DROP", hops
            if words[0] == "-d" and ip in ipaddress.IPv6Network(words[1]):
                chain = words[3]
                if not render6.is_node(chain):
                    return chain, hops
                break
        else:
            raise AssertionError(f"{chain} ended without a verdict")


@pytest.mark.parametrize("seed", range(5))
def test_every_guest_is_reached_and_nothing_else(seed):
    rnd = random.Random(seed)
    vmids = rnd.sample(range(100, 999999999), 300) + list(range(100, 1100))
    guests = {v: (derived(NET, v), render6.guest_rules(plan(v))) for v in vmids}
    tables = render6.desired(HOST, NET, guests)
    for v in vmids:
        reached, hops = walk(tables, derived(NET, v))
        assert reached == f"PVENAT-{v}" and hops <= 10
    for other in (99, 1100, 1234567890 % 999999999 + 1):
        if other not in vmids:
            assert walk(tables, derived(NET, other))[0] == "DROP"
    # a node holds at most 16 entries and its DROP: a walk costs a few rules a level
    assert all(len(rules) <= 17 for c, rules in tables["mangle"].chains.items()
               if render6.is_node(c))


def test_a_forward_opens_its_guest_side_port_from_ipv6_sources_only():
    rules = render6.guest_rules(plan(101, allow=("198.51.100.0/24", "2001:db8:ff::/48")))
    assert rules == ("-s 2001:db8:ff::/48 -p tcp -m multiport --dports 22 -j RETURN",
                     "-p udp -m multiport --dports 20000:20009 -j RETURN", "-j DROP")
    closed = render6.guest_rules(plan(101, allow=("198.51.100.0/24",)))
    assert closed == ("-p udp -m multiport --dports 20000:20009 -j RETURN", "-j DROP")


def test_start_stop_reconcile_uninstall_on_the_memory_kernel(tmp_path):
    kernel = MemKernel().six
    six = Ip6(HOST, kernel, str(tmp_path))
    six.change(101, plan(101), NET)
    six.change(102, plan(102), NET)
    assert set(render6.read_guests(kernel.read())) == {101, 102}
    with pytest.raises(PvenatError) as e:
        six.change(103, plan(103, address=derived(NET, 101)), NET)
    assert e.value.code == "conflict" and "guest 101" in e.value.message
    assert set(render6.read_guests(kernel.read())) == {101, 102}
    six.change(101, None, None)  # a stop: no prefix needed
    assert set(render6.read_guests(kernel.read())) == {102}
    same = kernel.read()
    six.change(102, plan(102), NET)  # from the index: its chain rewritten as it was
    assert kernel.read()["mangle"].chains == same["mangle"].chains
    assert six.base_missing(NET) == []
    six.whole(None, False)
    assert all(not t.chains and not t.jumps for t in kernel.read().values())


def test_a_hook_builds_on_the_index_and_falls_back_to_the_kernel(tmp_path):
    """From the index, a start writes its guest's chain and the tree's changed chains
    only; an index the kernel contradicts makes the change fail there, and the hook
    reads the kernel instead: the result is the same."""
    kernel = MemKernel().six
    six = Ip6(HOST, kernel, str(tmp_path))
    for vmid in range(100, 140):
        six.change(vmid, plan(vmid), NET)
    wanted = kernel.read()
    assert index.load6(str(tmp_path)).guests[139] == derived(NET, 139)
    script = six.change(140, plan(140), NET)
    assert "PVENAT-139" not in script and ":PVENAT-140 - [0:0]" in script
    six.change(140, None, None)
    assert kernel.read()["mangle"].chains == wanted["mangle"].chains
    # a stop killed after its change, before the index forgot the guest
    stale = index.load6(str(tmp_path))
    six.change(120, None, None)
    index.save6(str(tmp_path), stale)
    assert six.change(120, None, None) == ""  # refused from the index, nothing to do
    assert set(render6.read_guests(kernel.read())) == set(range(100, 140)) - {120}
    assert index.load6(str(tmp_path)) is None  # the next hook reads the kernel, and
    six.change(141, plan(141), NET)  # writes the index anew
    assert set(index.load6(str(tmp_path)).guests) == set(range(100, 140)) - {120} | {141}
    assert walk(kernel.read(), derived(NET, 121))[0] == "PVENAT-121"

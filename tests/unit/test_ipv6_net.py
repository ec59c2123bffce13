"""The guests' IPv6 network resolved from the config and wan_bridge's addresses, and each
guest's address: pure, no kernel."""

import ipaddress

import pytest

from pvehook.config import Ipv6Settings
from pvehook.errors import PvenatError
from pvehook.ipv6 import Net, address, derived, resolve

NET = Net("2001:db8:1:2::/64", "routed", "2001:db8:1:2::1")


def wan(*texts):
    return [ipaddress.IPv6Interface(t) for t in texts]


def test_auto_takes_the_64_on_vmbr0_and_answers_on_its_link():
    net, why = resolve(Ipv6Settings(), "vmbr0", wan("2001:db8:1:2::1/64"))
    # the host's own ::1 is taken on vmbr0: its lan address is the next one
    assert net == Net("2001:db8:1:2::/64", "on-link", "2001:db8:1:2::2")
    assert "prefix 2001:db8:1:2::/64: the /64 of 2001:db8:1:2::1/64 on vmbr0" in why
    assert "on-link: 2001:db8:1:2::1/64 on vmbr0 puts the /64 on the upstream router's link" \
        in why


def test_a_given_prefix_with_no_address_of_it_on_vmbr0_is_routed():
    net, why = resolve(Ipv6Settings(prefix="2001:db8:9::/64"), "vmbr0",
                       wan("2001:db8:0:1::2/64"))
    assert net == Net("2001:db8:9::/64", "routed", "2001:db8:9::1")
    assert why.startswith("routed: vmbr0 has no address in 2001:db8:9::/64")


def test_auto_without_an_address_says_what_to_write():
    with pytest.raises(PvenatError) as e:
        resolve(Ipv6Settings(), "vmbr0", wan("2001:db8:5::9/128"))
    assert "ipv6: prefix: auto, but vmbr0 has no global IPv6 address with a /64" in \
        e.value.message and "ipv6: {prefix: 2001:db8:1:2::/64}" in e.value.message


def test_a_lan_address_outside_the_prefix_is_refused():
    with pytest.raises(PvenatError) as e:
        resolve(Ipv6Settings("2001:db8:1:2::/64", "routed", "2001:db8:7::1"), "vmbr0", [])
    assert e.value.code == "config" and "not in the prefix 2001:db8:1:2::/64" in e.value.message


@pytest.mark.parametrize("vmid,want", [(100, "2001:db8:1:2::100"), (101, "2001:db8:1:2::101"),
                                       (999999999, "2001:db8:1:2:0:9:9999:9999"),
                                       (123456789, "2001:db8:1:2:0:1:2345:6789")])
def test_a_guest_address_is_its_vmid_read_as_hex(vmid, want):
    assert derived(NET, vmid) == want


def test_a_static_address_of_the_guests_own_is_kept_inside_the_prefix_only():
    lxc = {"net0": "name=eth0,bridge=vmbr1,ip6=2001:db8:1:2::abc/64,gw6=2001:db8:1:2::1"}
    assert address(101, "lxc", lxc, None, NET, "vmbr1") == "2001:db8:1:2::abc"
    assert address(101, "lxc", lxc, "2001:db8:1:2::77", NET, "vmbr1") == "2001:db8:1:2::77"
    dhcp = {"net0": "name=eth0,bridge=vmbr1,ip6=dhcp"}
    assert address(101, "lxc", dhcp, None, NET, "vmbr1") == "2001:db8:1:2::101"
    for bad in ("2001:db8:7::5", "2001:db8:1:2::1", "2001:db8:1:2::"):
        with pytest.raises(PvenatError) as e:
            address(101, "qemu", {}, bad, NET, "vmbr1")
        assert f"guest 101: IPv6 address {bad} is not a guest address of the prefix" in \
            e.value.message and "such as 2001:db8:1:2::101" in e.value.message

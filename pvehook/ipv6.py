"""IPv6 for the guests: a public address each from the host's /64, no NAT.

Pure: the host's IPv6 settings and wan_bridge's addresses in (resolve()), a Net out;
and each guest's address (address(), derived()). How packets reach the guests, and
the kernel's side of it, is neighbours.py.
"""

import ipaddress
from typing import NamedTuple

from .errors import PvenatError
from .spec import nic_address6, parse


class Net(NamedTuple):
    """The guests' IPv6 network as this host serves it (text, so that it goes into the
    rules index and a sync's inputs as it is)."""

    prefix: str  # a /64
    upstream: str  # "routed": the prefix is routed to the host; "on-link": proxy NDP
    lan_address: str  # the host's address on lan_bridge: the guests' router and DNS

    @property
    def network(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network(self.prefix)


def resolve(settings, wan_bridge: str, wan: list) -> tuple[Net, str]:
    """``settings`` (config.Ipv6Settings) made concrete with ``wan``, the global addresses
    on wan_bridge; and how each 'auto' was decided, for install and status to say."""
    why = []
    if settings.prefix == "auto":
        mine = [a for a in wan if a.network.prefixlen <= 64]
        if not mine:
            raise PvenatError("host", f"ipv6: prefix: auto, but {wan_bridge} has no global "
                              "IPv6 address with a /64 (or shorter) prefix; give the /64 "
                              "your hoster assigned, as 'ipv6: {prefix: 2001:db8:1:2::/64}' "
                              "in the pvenat config")
        prefix = ipaddress.IPv6Network(f"{mine[0].ip}/64", strict=False)
        why.append(f"prefix {prefix}: the /64 of {mine[0]} on {wan_bridge}")
    else:
        prefix = ipaddress.IPv6Network(settings.prefix)
    on_link = [a for a in wan if a.ip in prefix and a.network.prefixlen == 64]
    upstream = settings.upstream
    if upstream == "auto":
        upstream = "on-link" if on_link else "routed"
        why.append(f"on-link: {on_link[0]} on {wan_bridge} puts the /64 on the upstream "
                   "router's link, so the host answers its neighbour solicitations for "
                   "running guests" if on_link else
                   f"routed: {wan_bridge} has no address in {prefix} with a /64, so the "
                   "upstream router is taken to route the prefix to the host")
    taken = {a.ip for a in wan}
    if settings.lan_address == "auto":
        lan = next(prefix[n] for n in range(1, 100) if prefix[n] not in taken)
    else:
        lan = ipaddress.IPv6Address(settings.lan_address)
        if lan not in prefix:
            raise PvenatError("config", f"ipv6: lan_address {lan} is not in the prefix "
                              f"{prefix}; use an address of it, or auto")
    return Net(str(prefix), upstream, str(lan)), "; ".join(why)


def derived(net: Net, vmid: int) -> str:
    """The address a guest gets unless it has one: the prefix and the VMID's digits read
    as hex, so that in 2001:db8:1:2::/64 guest 101 is 2001:db8:1:2::101 and 123456789 is
    2001:db8:1:2:0:1:2345:6789. Stable, readable, and unique in the cluster as VMIDs are
    (PVE's start at 100, clear of the host's PREFIX::1)."""
    return str(net.network[int(str(vmid), 16)])


def address(vmid: int, kind: str, config: dict, spec_ip6: str | None, net: Net,
            bridge: str) -> str:
    """The guest's IPv6 address: its pvenat block's ip6:, else its NIC's static ip6 (LXC
    ip6=, cloud-init ip6=: a guest with an address of its own keeps it), else derived();
    refused when outside the prefix, where no route or rule of pvenat's would reach it."""
    given = spec_ip6 or nic_address6(kind, config, bridge)
    if given is None:
        return derived(net, vmid)
    ip = ipaddress.IPv6Address(given)
    if ip not in net.network or ip in (net.network[0], ipaddress.IPv6Address(
            net.lan_address)):
        raise PvenatError("spec", f"guest {vmid}: IPv6 address {ip} is not a guest "
                          f"address of the prefix {net.prefix} (the host is "
                          f"{net.lan_address}); use one there, such as "
                          f"{derived(net, vmid)}, or remove it for that one")
    return str(ip)


def of_guest(guest, plan, net: Net, bridge: str) -> str:
    """A guest's address: its plan's (plan_for with ``net``), else (no plan: no pvenat
    block, or one that does not plan) as address() finds it, its block's ip6: included
    when the block parses."""
    if plan is not None and plan.address6:
        return plan.address6
    try:
        notes = parse(guest.vmid, guest.config.get("description", ""), "")
    except PvenatError:
        notes = None
    return address(guest.vmid, guest.kind, guest.config, notes and notes.ip6, net, bridge)

"""Planning: a guest's spec and config plus the host config give a checked GuestPlan.

Pure: no kernel, no API. Everything a guest's Notes could claim is checked here against
what the host allows and what other guests already hold.
"""

import bisect
import ipaddress
from typing import NamedTuple

from .config import HostConfig
from .errors import PvenatError
from .ports import format_range
from .spec import Forward, GuestSpec, nic_address, nics, parse


# The host settings a plan depends on: a cached plan is valid while these are unchanged.
PLAN_INPUTS = ("lan_bridge", "lan_address", "port_pool", "reserved_ports", "max_forwards")


class Claim(NamedTuple):
    """A public port range that a guest holds, as recorded in the kernel.

    A tuple, so that sorting and bisecting thousands of them stays in C.
    """

    proto: str
    lo: int
    hi: int
    vmid: int


class GuestPlan(NamedTuple):
    vmid: int
    address: str | None  # None only from plan_guest(need_address=False)
    forwards: tuple[Forward, ...]
    address6: str | None = None  # its public IPv6 address; None with ipv6 off

    def claims(self) -> list[Claim]:
        """The public ports this guest holds while it runs."""
        return [Claim(f.proto, *f.public, self.vmid) for f in self.forwards]


def plan_guest(spec: GuestSpec, kind: str, config: dict, host: HostConfig,
               need_address: bool = True, net6=None) -> GuestPlan:
    """The guest's checked plan. ``need_address=False`` (pvenat check --notes: Notes
    checked before the guest has an address, which attach gives it) lets a guest with no
    address at all through with ``address`` None; everything else is checked the same.
    ``net6``: the guests' IPv6 network (ipv6.Net; hostnet.ipv6_net), None with ipv6 off."""
    vmid, who = spec.vmid, spec.who
    address = spec.ip or nic_address(kind, config, host.lan_bridge)
    if address is None:
        tagged = next((n for n in nics(kind, config) if n.tagged_on == host.lan_bridge), None)
        if tagged:
            tag = tagged.bridge[len(tagged.tagged_on) + 1:]
            raise PvenatError("spec", f"{who}: net{tagged.index} has tag={tag} on "
                              f"{host.lan_bridge}, which puts it in VLAN {tag}, not on "
                              f"{host.lan_bridge}'s own network where the gateway "
                              f"{host.lan_address.ip} is; remove the tag, or make "
                              f"{tagged.bridge} the lan_bridge")
        if need_address:
            raise PvenatError("no-address", f"{who}: no address to forward to: its NIC on "
                              f"{host.lan_bridge} has no static IPv4; add 'ip: ADDRESS' to "
                              "its pvenat block or set a static address on the NIC")
    else:
        _check_address(who, address, host)
    if spec.entries > host.max_forwards:
        raise PvenatError("spec", f"{who}: {spec.entries} forwards, more than the "
                          f"{host.max_forwards} allowed per guest (max_forwards); merge "
                          "ports into ranges")
    for fwd in spec.forwards:
        lo, hi = fwd.public
        bad = host.reserved_ports.first_inside(lo, hi)
        if bad is not None:
            raise PvenatError("spec", f"{who}, {fwd.origin}: public port {bad} is "
                              f"reserved on this host ({host.reserved_ports}); pick another")
        bad = host.port_pool.first_outside(lo, hi)
        if bad is not None:
            raise PvenatError("spec", f"{who}, {fwd.origin}: public port {bad} is "
                              f"outside the port pool ({host.port_pool}); pick ports there")
    for a, b in zip(spec.forwards, spec.forwards[1:]):
        if a.proto == b.proto and b.public[0] <= a.public[1]:
            raise PvenatError("spec", f"{who}: {a.proto} port {b.public[0]} is "
                              f"forwarded twice ({a.origin} and {b.origin}); keep one")
    address6 = None
    if net6 is not None:
        from .ipv6 import address as ipv6_address  # with ipv6 on alone

        address6 = ipv6_address(vmid, kind, config, spec.ip6, net6, host.lan_bridge)
    return GuestPlan(vmid, address, spec.forwards, address6)


def plan_for(guest, host: HostConfig, source: str = "", need_address: bool = True,
             net6=None):
    """A guest's checked plan from its config, or None when pvenat does not manage it.
    ``source``: the file its Notes came from, for messages (spec.parse)."""
    parsed = parse(guest.vmid, guest.config.get("description", ""), guest.config.get("tags", ""),
                   source)
    return None if parsed is None else plan_guest(parsed, guest.kind, guest.config, host,
                                                  need_address, net6)


def guest_address(guest, plan, host) -> str | None:
    """The address pvenat uses for a guest on lan_bridge: its plan's, else (a guest with no
    plan) its NIC's static one."""
    return plan.address if plan else nic_address(guest.kind, guest.config, host.lan_bridge)


def _check_address(who, address, host):
    net = host.lan_network
    ip = ipaddress.IPv4Address(address)
    if ip not in net:
        raise PvenatError("spec", f"{who}: address {ip} is not in the guest subnet "
                          f"{net} of {host.lan_bridge}; use an address there")
    if ip in (net.network_address, net.broadcast_address, host.lan_address.ip):
        raise PvenatError("spec", f"{who}: address {ip} is the subnet's network, "
                          "broadcast or host address; give the guest its own address")


class Held:
    """What running guests hold: ports per protocol, sorted, and addresses.

    Claims of different guests never overlap, so the one claim that could overlap a
    range is found by bisection: a check costs O(log n), not a walk over every guest.
    """

    def __init__(self, claims=(), addresses=None):
        self.claims = {"tcp": [], "udp": []}
        self.addresses = dict(addresses or {})
        for c in sorted(claims):
            self.claims[c.proto].append(c)

    def add(self, plan: GuestPlan):
        self.keep(plan.claims(), {plan.address: plan.vmid})

    def keep(self, claims, addresses: dict):
        for c in claims:
            bisect.insort(self.claims[c.proto], c)
        self.addresses.update(addresses)

    def all_claims(self) -> list[Claim]:
        return self.claims["tcp"] + self.claims["udp"]

    def overlapping(self, proto: str, lo: int, hi: int, vmid: int):
        """A claim of another guest that shares a port with lo..hi, or None."""
        claims = self.claims[proto]
        i = bisect.bisect_right(claims, Claim(proto, hi, 65536, 0))
        # Walk left past this guest's own claims, which may overlap its new ones.
        while i > 0 and claims[i - 1].hi >= lo:
            if claims[i - 1].vmid != vmid:
                return claims[i - 1]
            i -= 1
        return None

    def check(self, plan: GuestPlan, who: str = ""):
        """Refuse a plan whose ports or address another guest already holds. ``who``
        names the guest in messages (default "guest VMID")."""
        who = who or f"guest {plan.vmid}"
        owner = self.addresses.get(plan.address)
        if owner is not None and owner != plan.vmid:
            raise PvenatError("conflict", f"{who}: address {plan.address} is "
                              f"already forwarded to guest {owner}, which is running on this "
                              f"node; give one of them another address (or run 'pvenat "
                              f"sync' if {owner} is no longer running here)")
        for fwd in plan.forwards:
            c = self.overlapping(fwd.proto, *fwd.public, plan.vmid)
            if c is not None:
                raise PvenatError(
                    "conflict", f"{who}, {fwd.origin}: {fwd.proto} public port "
                    f"{max(c.lo, fwd.public[0])} is already forwarded to guest {c.vmid} "
                    f"({c.proto} {format_range(c.lo, c.hi)}), which is running on this node; "
                    f"pick other ports (or run 'pvenat sync' if {c.vmid} is no longer running "
                    "here)")


def summary(plan: GuestPlan, public_ip: str, who: str = "") -> str:
    """One line for the task log: protocols merged where tcp and udp match."""
    merged: dict[tuple, list[str]] = {}
    for f in plan.forwards:
        merged.setdefault((f.public, f.guest, f.allow), []).append(f.proto)
    parts = []
    for f in plan.forwards:
        protos = merged.pop((f.public, f.guest, f.allow), None)
        if protos:
            parts.append(f"{'+'.join(protos)} {f.describe()}")
    address = plan.address or "(no address yet)"
    line = f"pvenat: {who or plan.vmid} -> {address} via {public_ip}: {', '.join(parts)}"
    if plan.address6:
        line += f"; IPv6 {plan.address6}: {opened6(plan) or 'nothing open'}"
    return line


def opened6(plan: GuestPlan) -> str:
    """What the guest's forwards open on its IPv6 address (open6()), protocols merged as
    summary() merges them."""
    merged: dict[str, list[str]] = {}
    for f in plan.forwards:
        text = open6(f)
        if text is not None:
            merged.setdefault(text, []).append(f.proto)
    return ", ".join(f"{'+'.join(protos)} {text}" for text, protos in merged.items())


def open6(forward: Forward) -> str | None:
    """What one forward opens on the guest's IPv6 address, where there is no NAT: its
    guest-side ports (12222:22 opens 22), from the allow-list's IPv6 sources; None when
    the allow-list names IPv4 sources only."""
    sources = forward.allow_family(6)
    if sources is None:
        return None
    return format_range(*forward.guest) + (
        " from " + ",".join(s.removesuffix("/128") for s in sources) if sources else "")

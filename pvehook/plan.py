"""Planning: a guest's spec and config plus the host config give a checked GuestPlan.

Pure: no kernel, no API. Everything a guest's Notes could claim is checked here against
what the host allows and what other guests already hold.
"""

import ipaddress
from dataclasses import dataclass

from .config import HostConfig
from .errors import PvenatError
from .ports import format_range
from .spec import Forward, GuestSpec, nic_address


@dataclass(frozen=True)
class GuestPlan:
    vmid: int
    address: str
    forwards: tuple[Forward, ...]


@dataclass(frozen=True, order=True)
class Claim:
    """A public port range that a guest holds, as recorded in the kernel."""

    proto: str
    lo: int
    hi: int
    vmid: int


def plan_guest(spec: GuestSpec, kind: str, config: dict, host: HostConfig) -> GuestPlan:
    vmid = spec.vmid
    address = spec.ip or nic_address(kind, config, host.lan_bridge)
    if address is None:
        raise PvenatError("spec", f"guest {vmid}: no address to forward to: its NIC on "
                          f"{host.lan_bridge} has no static IPv4; add 'ip: ADDRESS' to its "
                          "pvenat block or set a static address on the NIC")
    _check_address(vmid, address, host)
    if spec.entries > host.max_forwards:
        raise PvenatError("spec", f"guest {vmid}: {spec.entries} forwards, more than the "
                          f"{host.max_forwards} allowed per guest (max_forwards); merge "
                          "ports into ranges")
    for fwd in spec.forwards:
        lo, hi = fwd.public
        bad = host.reserved_ports.first_inside(lo, hi)
        if bad is not None:
            raise PvenatError("spec", f"guest {vmid}, {fwd.origin}: public port {bad} is "
                              f"reserved on this host ({host.reserved_ports}); pick another")
        bad = host.port_pool.first_outside(lo, hi)
        if bad is not None:
            raise PvenatError("spec", f"guest {vmid}, {fwd.origin}: public port {bad} is "
                              f"outside the port pool ({host.port_pool}); pick ports there")
    for a, b in zip(spec.forwards, spec.forwards[1:]):
        if a.proto == b.proto and b.public[0] <= a.public[1]:
            raise PvenatError("spec", f"guest {vmid}: {a.proto} port {b.public[0]} is "
                              f"forwarded twice ({a.origin} and {b.origin}); keep one")
    return GuestPlan(vmid, address, spec.forwards)


def _check_address(vmid, address, host):
    net = host.lan_network
    ip = ipaddress.IPv4Address(address)
    if ip not in net:
        raise PvenatError("spec", f"guest {vmid}: address {ip} is not in the guest subnet "
                          f"{net} of {host.lan_bridge}; use an address there")
    if ip in (net.network_address, net.broadcast_address, host.lan_address.ip):
        raise PvenatError("spec", f"guest {vmid}: address {ip} is the subnet's network, "
                          "broadcast or host address; give the guest its own address")


def claims(plan: GuestPlan) -> list[Claim]:
    return [Claim(f.proto, *f.public, plan.vmid) for f in plan.forwards]


def check_conflicts(plan: GuestPlan, held: list[Claim], addresses: dict[str, int]):
    """Refuse a plan whose ports or address another guest already holds."""
    owner = addresses.get(plan.address)
    if owner is not None and owner != plan.vmid:
        raise PvenatError("conflict", f"guest {plan.vmid}: address {plan.address} is already "
                          f"forwarded to guest {owner}, which is running on this node; give "
                          f"one of them another address (or run 'pvenat sync' if {owner} "
                          "is no longer running here)")
    for fwd in plan.forwards:
        for c in held:
            if c.vmid != plan.vmid and c.proto == fwd.proto and c.lo <= fwd.public[1] \
                    and fwd.public[0] <= c.hi:
                raise PvenatError(
                    "conflict", f"guest {plan.vmid}, {fwd.origin}: {fwd.proto} public port "
                    f"{max(c.lo, fwd.public[0])} is already forwarded to guest {c.vmid} "
                    f"({c.proto} {format_range(c.lo, c.hi)}), which is running on this node; "
                    f"pick other ports (or run 'pvenat sync' if {c.vmid} is no longer running "
                    "here)")


def summary(plan: GuestPlan, public_ip: str) -> str:
    """One line for the task log: protocols merged where tcp and udp match."""
    merged: dict[tuple, list[str]] = {}
    for f in plan.forwards:
        merged.setdefault((f.public, f.guest, f.allow), []).append(f.proto)
    parts = []
    for f in plan.forwards:
        protos = merged.pop((f.public, f.guest, f.allow), None)
        if protos:
            parts.append(f"{'+'.join(protos)} {f.describe()}")
    return f"pvenat: {plan.vmid} -> {plan.address} via {public_ip}: {', '.join(parts)}"

"""DHCP leases as data: which MAC gets which address on lan_bridge.

Pure: a guest's config gives its leases, a set of leases gives dnsmasq's hosts file
(--dhcp-hostsfile), and the file gives the set back. A lease is fixed: a guest keeps its
address when it stops, and PVE's config, where the address is written, stays the one
source of truth.

Beside the leases, the file reserves the addresses inside dhcp_range that other guests of
the cluster have (a bare address line: dnsmasq's pool skips it, no client gets it), and
what dnsmasq's lease database holds is checked against both: a lease there that they
contradict is stale (dnsmasq would keep the address from its new owner for 12 h).
"""

import re
from typing import NamedTuple

from . import spec
from .errors import PvenatError
from .plan import guest_address
from .spec import nics

_LINE = re.compile(r"([0-9A-F:]{17}),([0-9.]+)(?:,\[([0-9a-f:]+)\])?(?:,([a-z0-9-]+))?")
_OWNER = re.compile(r"# guest ([0-9]+)")
_RESERVED = re.compile(r"# reserved for guest ([0-9]+)")
_ADDRESS = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class Lease(NamedTuple):
    vmid: int
    mac: str  # upper case, as pvenat reads it from netN
    ip: str
    name: str  # the guest's name as a DNS label, or ""
    ip6: str = ""  # its IPv6 address (DHCPv6, by MAC), "" with ipv6 off


def leases_for(guest, plan, host, net6=None) -> list[Lease]:
    """The guest's leases: its NICs on lan_bridge that have a MAC, at its address (its
    plan's, else its NIC's static one); none with dhcp off or without an address.
    ``net6``: the guests' IPv6 network (ipv6.Net, hostnet.ipv6_net; None with ipv6 off):
    each lease then carries the guest's IPv6 address too (address6())."""
    if not host.dhcp:
        return []
    return guest_leases(guest, guest_address(guest, plan, host), host.lan_bridge,
                        address6(guest, plan, host, net6))


def address6(guest, plan, host, net6) -> str:
    """The guest's IPv6 address for its lease (ipv6.of_guest): "" with ipv6 off, or when
    that address is refused (the start says why; its IPv4 lease stays)."""
    if net6 is None:
        return ""
    from .ipv6 import of_guest  # with ipv6 on alone

    try:
        return of_guest(guest, plan, net6, host.lan_bridge)
    except PvenatError:
        return ""


def guest_leases(guest, address: str | None, bridge: str, address6: str = "") -> list[Lease]:
    """The leases of a guest whose NICs on ``bridge`` have a MAC: all at its ``address``
    (pvenat gives a guest one address on the lan bridge), and at ``address6`` too."""
    if address is None:
        return []
    name = (guest.config.get("name") or guest.config.get("hostname") or "").lower()
    name = name if _LABEL.fullmatch(name) else ""
    return [Lease(guest.vmid, nic.mac, address, name, address6)
            for nic in nics(guest.kind, guest.config) if nic.bridge == bridge and nic.mac]


class Reserved(NamedTuple):
    vmid: int  # the guest of the cluster that has the address
    ip: str


def render(leases, reserved=()) -> str:
    """dnsmasq's hosts file, in VMID order: '# guest VMID' (for pvenat), then
    MAC,IP[,[IP6]][,NAME] (the IPv6 address for DHCPv6, by the same MAC; a name lets
    dnsmasq answer DNS for the guest); then the reserved addresses, each '# reserved for
    guest VMID' and the address alone. Not a set:TAG field: dnsmasq 2.90 crashes on
    SIGHUP once a lease from such a line is given."""
    return "".join(f"# guest {lease.vmid}\n{lease.mac},{lease.ip}"
                   + (f",[{lease.ip6}]" if lease.ip6 else "")
                   + (f",{lease.name}" if lease.name else "") + "\n"
                   for lease in sorted(leases, key=lambda lease: (lease.vmid, lease.mac))) + \
        "".join(f"# reserved for guest {r.vmid}\n{r.ip}\n"
                for r in sorted(reserved, key=lambda r: _number(r.ip)))


def parse(text: str) -> list[Lease]:
    out = []
    for owner, line in _owned(text, _OWNER):
        m = _LINE.fullmatch(line)
        if m:
            out.append(Lease(owner, m.group(1), m.group(2), m.group(4) or "",
                             m.group(3) or ""))
    return out


def parse_reserved(text: str) -> list[Reserved]:
    if "# reserved" not in text:
        return []
    return [Reserved(owner, line) for owner, line in _owned(text, _RESERVED)
            if _ADDRESS.fullmatch(line)]


def _owned(text: str, head) -> list:
    """(VMID, line) for each line right after a comment ``head`` names its guest in."""
    out, owner = [], None
    for line in text.splitlines():
        line = line.strip()
        m = head.fullmatch(line)
        if m:
            owner = int(m.group(1))
            continue
        if owner is not None:
            out.append((owner, line))
        owner = None
    return out


def address_in_config(guest, host) -> str | None:
    """The address the guest's config names on lan_bridge: its pvenat block's ip:, else
    its NIC's static one (as plan.plan_guest takes it), also when the rest of its Notes
    would refuse a start: a port outside the pool must not cost a guest its address."""
    try:
        notes = spec.parse(guest.vmid, guest.config.get("description", ""), "")
    except PvenatError:
        notes = None
    return (notes and notes.ip) or spec.nic_address(guest.kind, guest.config, host.lan_bridge)


def in_pool(ip: str, host) -> bool:
    """Whether dnsmasq may give ``ip`` to a guest it does not know (dhcp_range)."""
    pool = _pool(host)
    return pool is not None and pool[0] <= _number(ip) <= pool[1]


def _number(ip: str) -> int:
    """A dotted quad as a number (-1 for anything else): a thousand leases are checked on
    every change, and ipaddress would take most of that time."""
    parts = ip.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
        return -1
    a, b, c, d = map(int, parts)
    return a << 24 | b << 16 | c << 8 | d


def _pool(host):
    return tuple(_number(a) for a in host.dhcp_range) if host.dhcp_range else None


def reservations(held: dict, leases, host) -> list[Reserved]:
    """The addresses inside dhcp_range that a guest of the cluster has (``held``: address
    -> VMID) and no lease here gives: dnsmasq's pool must not hand them to another MAC
    (the guest may migrate here, or sits on this bridge with a static address)."""
    leased = {lease.ip for lease in leases}
    return [Reserved(vmid, ip) for ip, vmid in held.items()
            if ip not in leased and in_pool(ip, host)]


def stale(database, leases, reserved, host) -> list[tuple[str, str]]:
    """The (MAC, address) pairs of dnsmasq's lease database that the hosts file
    contradicts: an address leased to another MAC now, a MAC whose lease moved to another
    address, a reserved address, an address of the static range that no lease names any
    more. A dynamic lease of an unknown guest inside dhcp_range stays."""
    macs_at, at_mac = {}, {}
    for lease in leases:
        macs_at.setdefault(lease.ip, set()).add(lease.mac.upper())
        at_mac.setdefault(lease.mac.upper(), set()).add(lease.ip)
    taken = {r.ip for r in reserved}
    net = host.lan_network
    first, last = int(net.network_address), int(net.broadcast_address)
    pool = _pool(host)
    out = []
    for mac, ip in database:
        mac = mac.upper()
        if mac in macs_at.get(ip, ()):
            continue  # as the hosts file says: the common case, checked first
        number = _number(ip)
        if not first <= number <= last:
            continue  # not dnsmasq's to release here (no DHCP range of it)
        if ip in macs_at or mac in at_mac or ip in taken or \
                not (pool and pool[0] <= number <= pool[1]):
            out.append((mac, ip))
    return out


class Holders:
    """Who holds which address and which MAC, so that a lease another guest holds is
    refused: two guests never share one. Looked up by key, as sync checks 1,000 guests."""

    def __init__(self, held=()):
        self.ip, self.mac, self.ip6 = {}, {}, {}
        self.add(held)

    def add(self, held) -> None:
        for lease in held:
            self.ip.setdefault(lease.ip, lease.vmid)
            self.mac.setdefault(lease.mac, lease.vmid)
            if lease.ip6:
                self.ip6.setdefault(lease.ip6, lease.vmid)

    def check(self, mine: list[Lease]) -> None:
        for lease in mine:
            other = self.ip.get(lease.ip, lease.vmid)
            if other != lease.vmid:
                raise PvenatError("conflict", f"guest {lease.vmid}: address {lease.ip} is "
                                  f"already guest {other}'s (its DHCP lease); give one "
                                  "of them another address ('pvenat attach --ip ADDRESS')")
            other = self.ip6.get(lease.ip6, lease.vmid) if lease.ip6 else lease.vmid
            if other != lease.vmid:
                raise PvenatError("conflict", f"guest {lease.vmid}: IPv6 address {lease.ip6} "
                                  f"is already guest {other}'s (its DHCP lease); give one of "
                                  "them another ('ip6:' in its pvenat block, or its NIC's "
                                  "ip6=)")
            other = self.mac.get(lease.mac, lease.vmid)
            if other != lease.vmid:
                raise PvenatError("conflict", f"guest {lease.vmid}: MAC {lease.mac} is also "
                                  f"guest {other}'s; give one of them another MAC "
                                  "(PVE makes a new one when the NIC's address is left empty)")

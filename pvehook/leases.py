"""DHCP leases as data: which MAC gets which address on lan_bridge.

Pure: a guest's config gives its leases, a set of leases gives dnsmasq's hosts file
(--dhcp-hostsfile), and the file gives the set back. A lease is fixed: a guest keeps its
address when it stops, and PVE's config, where the address is written, stays the one
source of truth.
"""

import re
from typing import NamedTuple

from .errors import PvenatError
from .plan import guest_address
from .spec import nics

_LINE = re.compile(r"([0-9A-F:]{17}),([0-9.]+)(?:,([a-z0-9-]+))?")
_OWNER = re.compile(r"# guest ([0-9]+)")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class Lease(NamedTuple):
    vmid: int
    mac: str  # upper case, as pvenat reads it from netN
    ip: str
    name: str  # the guest's name as a DNS label, or ""


def leases_for(guest, plan, host) -> list[Lease]:
    """The guest's leases: its NICs on lan_bridge that have a MAC, at its address (its
    plan's, else its NIC's static one); none with dhcp off or without an address."""
    if not host.dhcp:
        return []
    return guest_leases(guest, guest_address(guest, plan, host), host.lan_bridge)


def guest_leases(guest, address: str | None, bridge: str) -> list[Lease]:
    """The leases of a guest whose NICs on ``bridge`` have a MAC: all at its ``address``
    (pvenat gives a guest one address on the lan bridge)."""
    if address is None:
        return []
    name = (guest.config.get("name") or guest.config.get("hostname") or "").lower()
    name = name if _LABEL.fullmatch(name) else ""
    return [Lease(guest.vmid, nic.mac, address, name)
            for nic in nics(guest.kind, guest.config) if nic.bridge == bridge and nic.mac]


def render(leases) -> str:
    """dnsmasq's hosts file, in VMID order: '# guest VMID' (for pvenat), then MAC,IP[,NAME]
    (a name lets dnsmasq answer DNS for the guest). Not a set:TAG field: dnsmasq 2.90
    crashes on SIGHUP once a lease from such a line is given."""
    return "".join(f"# guest {lease.vmid}\n{lease.mac},{lease.ip}"
                   + (f",{lease.name}" if lease.name else "") + "\n"
                   for lease in sorted(leases, key=lambda lease: (lease.vmid, lease.mac)))


def parse(text: str) -> list[Lease]:
    out, owner = [], None
    for line in text.splitlines():
        m = _OWNER.fullmatch(line.strip())
        if m:
            owner = int(m.group(1))
            continue
        m = _LINE.fullmatch(line.strip())
        if m and owner is not None:
            out.append(Lease(owner, m.group(1), m.group(2), m.group(3) or ""))
        owner = None
    return out


class Holders:
    """Who holds which address and which MAC, so that a lease another guest holds is
    refused: two guests never share one. Looked up by key, as sync checks 1,000 guests."""

    def __init__(self, held=()):
        self.ip, self.mac = {}, {}
        self.add(held)

    def add(self, held) -> None:
        for lease in held:
            self.ip.setdefault(lease.ip, lease.vmid)
            self.mac.setdefault(lease.mac, lease.vmid)

    def check(self, mine: list[Lease]) -> None:
        for lease in mine:
            other = self.ip.get(lease.ip, lease.vmid)
            if other != lease.vmid:
                raise PvenatError("conflict", f"guest {lease.vmid}: address {lease.ip} is "
                                  f"already guest {other}'s (its DHCP lease); give one "
                                  "of them another address ('pvenat attach --ip ADDRESS')")
            other = self.mac.get(lease.mac, lease.vmid)
            if other != lease.vmid:
                raise PvenatError("conflict", f"guest {lease.vmid}: MAC {lease.mac} is also "
                                  f"guest {other}'s; give one of them another MAC "
                                  "(PVE makes a new one when the NIC's address is left empty)")

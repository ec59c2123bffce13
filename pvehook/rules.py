"""The seam between pvenat's commands and the kernel's rules: intent in, decisions out.

Commands say what they want (start this guest's plan, stop this guest, reconcile these
plans, put the host's base in place, take everything out) and ask what is there (what
running guests hold, what is live per forward, what of the base is missing). They get
back data, never rule text to read: ``Applied.text`` is what was written, in the
backend's own syntax, to show a person. Refusals are PvenatErrors with a code
('conflict' when another running guest holds a plan's ports or address).

Rendering, reading the kernel back, the port tree, the index of what was written and
the restore live in one backend (pvehook/iptables/: iptables-legacy for IPv4 and
ip6tables-legacy for IPv6, both families behind each verb). Another backend (nftables)
is one more implementation of ``Backend``, given by ``backend()``; nothing else
changes.

Every verb that writes expects the caller to hold pvenat's lock (files.locked on
Places.lock_path): a hook's rules and DHCP lease change under one lock.
"""

from typing import Callable, NamedTuple, Protocol

from .plan import GuestPlan, Held


class Public(NamedTuple):
    """The public side, per family. IPv4: the address forwards are reached on, and how
    guests leave through it (SNAT to it when the admin named it, MASQUERADE when it is
    whatever wan_bridge has). IPv6: the guests' network (ipv6.Net), None when off."""

    ip: str
    snat: bool = False
    net6: tuple | None = None  # ipv6.Net


class Applied(NamedTuple):
    """What a change wrote: empty ``text`` when the kernel had it all already."""

    text: str = ""


class GuestHeld(NamedTuple):
    """What the rules hold of a guest: its address there (None when not known)."""

    address: str | None


class Wanted(NamedTuple):
    """A sync's decision, made by the command from the guests the kernel has rules for:
    the plans of guests running here, the guests kept as they are, and the inputs that
    decision came from (a string that changes when any of them does)."""

    plans: dict  # VMID -> GuestPlan
    keep: set  # VMIDs
    inputs: str


class Reconciled(NamedTuple):
    """What a reconcile decided and wrote."""

    text: str  # written (or, dry run, to be written); empty when nothing differs
    forwarded: list  # VMIDs with rules afterwards
    added: list
    updated: list
    removed: list
    refused: dict  # VMID -> message: a plan left out (its guest keeps what it had)
    record: str | None  # remember it, give it back as ``last``: the same inputs and the
    # same kernel then decide nothing; None when nothing was decided (``same``)
    same: bool = False  # the kernel and the inputs are as ``last`` recorded


class ForwardLive(NamedTuple):
    live: bool  # every rule of the forward is in the kernel
    packets: int


class GuestLive(NamedTuple):
    """One guest's forwards as the kernel has them: one entry a planned forward, in its
    order, and what the kernel has that no forward describes ((text, packets))."""

    forwards: list
    stale: list


class Live(Protocol):
    def has(self, vmid: int) -> bool:
        """Whether the kernel has rules (a chain) for the guest."""

    def guest(self, vmid: int, plan: GuestPlan | None) -> GuestLive: ...


class Backend(Protocol):
    def start(self, plan: GuestPlan, public: Public) -> Applied:
        """The guest's rules as its plan says; refused ('conflict') when a running guest
        holds its ports or address, and then nothing is written."""

    def stop(self, vmid: int) -> Applied:
        """Every rule of the guest's gone."""

    def guest(self, vmid: int) -> GuestHeld | None:
        """What the rules hold of a guest, cheaply; None when certainly nothing."""

    def forget(self, public: Public, address: str):
        """Drop tracked connections forwarded to a guest that stopped (best effort)."""

    def reconcile(self, public: Public, decide: Callable[[set], Wanted],
                  last: str | None = None, dry_run: bool = False) -> Reconciled:
        """Everything of pvenat's as ``decide(guests the kernel has rules for)`` wants:
        guests there first keep their ports, a refused plan keeps its guest's rules,
        guests neither planned nor kept go, the base is put in place."""

    def install(self, public: Public, dry_run: bool = False) -> Applied:
        """The host's base in place; guests' rules kept."""

    def uninstall(self, dry_run: bool = False) -> Applied:
        """Everything of pvenat's out of the kernel."""

    def held(self) -> Held:
        """What the guests running here hold (ports, addresses), as the kernel says."""

    def live(self) -> Live: ...

    def base_missing(self, public: Public) -> list[str]:
        """What of the base is not in place, each as a short name; empty when all is."""

    def preview(self, plan: GuestPlan, public: Public) -> Applied:
        """What a start would write, nothing written (refused as start refuses)."""

    def rule_text(self, plan: GuestPlan) -> list[str]:
        """The guest's own rules, to show."""


def backend(host, places, kernel=None) -> Backend:
    """The configured backend: iptables (IPv4 and IPv6). ``kernel`` stands in for the
    backend's own access to the kernel (the unit tests' in-memory kernel). Imported when
    asked: a hook pays only for what it uses."""
    from .iptables.backend import IptablesBackend

    return IptablesBackend(host, places.state_dir, kernel)

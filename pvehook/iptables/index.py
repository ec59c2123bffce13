"""What pvenat last wrote to the kernel, so that a hook need not read every rule back.

On a host with a thousand guests, reading the nat table (iptables-save) costs a hook as
much as writing it. The kernel stays the truth: sync reads it and rewrites this file,
install and uninstall drop it, and a hook whose change, built on this file, is refused
by the kernel falls back to reading the kernel. The file errs on the safe side when a
hook dies at any moment: a start records its claims before applying them, a stop
forgets them only after removing them. A stale claim blocks a port until the next sync
(every minute); it never lets two guests share one.
"""

import json
import os
from typing import NamedTuple

from .. import files
from ..ipv6 import Net
from ..plan import Claim
from ..rules import Public
from . import parse, render

NAME = "index.json"
NAME6 = "index6.json"
UNKNOWN = ("(rules not read from the kernel)",)


class Index(NamedTuple):
    public: Public | None  # the base rules are in place for this (None: unknown)
    claims: list[Claim]
    addresses: dict[str, int]  # guest address -> VMID

    def without(self, vmid: int) -> "Index":
        return Index(self.public, [c for c in self.claims if c.vmid != vmid],
                     {a: v for a, v in self.addresses.items() if v != vmid})

    def with_plan(self, plan, public: Public) -> "Index":
        out = self.without(plan.vmid)
        return Index(public, out.claims + plan.claims(),
                     {**out.addresses, plan.address: plan.vmid})

    def tables(self, host, vmid: int, touched_claims) -> render.Tables:
        """The kernel as this file says it is, for the chains a hook of ``vmid`` touches:
        the base rules, PVENAT-DNAT and the tree nodes on the paths of ``touched_claims``,
        and the guest's own chain. The rules of those chains are not known (a hook killed
        between recording and applying leaves this file ahead of the kernel), so they are
        marked unknown and always rewritten; a chain that is not there after all makes
        the kernel refuse the change, and the hook reads the kernel instead."""
        tables = render.with_base({t: render.Table() for t in render.TABLES}, host,
                                  self.public, self.claims)
        touched = set().union(set(), *map(render.claim_path, touched_claims))
        nat = tables["nat"]
        nat.chains.update({chain: UNKNOWN for chain in render.dispatch(self.claims, touched)})
        if any(c.vmid == vmid for c in self.claims):
            nat.chains[render.guest_chain(vmid)] = UNKNOWN
        return tables


def from_tables(tables: render.Tables, public) -> Index:
    return Index(public, parse.held_claims(tables), parse.guest_addresses(tables))


def load(state_dir: str):
    """The index, or None when there is none or it cannot be read."""
    try:
        with open(os.path.join(state_dir, NAME), encoding="utf-8") as f:
            raw = json.load(f)
        return Index(raw["public"] and public_from(raw["public"]),
                     [Claim(*c) for c in raw["claims"]],
                     {a: int(v) for a, v in raw["addresses"].items()})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def public_from(raw) -> Public:
    """A Public as json.dumps wrote it: lists for tuples."""
    ip, snat, *net6 = raw
    return Public(ip, snat, Net(*net6[0]) if net6 and net6[0] else None)


def save(state_dir: str, index: Index):
    """Atomically: a reader sees the old file or the new one."""
    files.write_atomic(os.path.join(state_dir, NAME), json.dumps(
        {"public": index.public, "claims": index.claims, "addresses": index.addresses},
        separators=(",", ":")))


def drop(state_dir: str):
    """After a change not made by a hook: the next hook reads the kernel."""
    try:
        os.remove(os.path.join(state_dir, NAME))
    except FileNotFoundError:
        pass


class Index6(NamedTuple):
    """What pvenat last wrote to ip6tables: the guests' network the base rules are for,
    and the guests with rules there ({vmid: address}); their rules are not kept, a
    hook rewrites its guest's chain whole."""

    net6: Net
    guests: dict


def load6(state_dir: str):
    try:
        with open(os.path.join(state_dir, NAME6), encoding="utf-8") as f:
            raw = json.load(f)
        return Index6(Net(*raw["net6"]), {int(v): a for v, a in raw["guests"].items()})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save6(state_dir: str, known: Index6):
    files.write_atomic(os.path.join(state_dir, NAME6), json.dumps(
        {"net6": known.net6, "guests": known.guests}, separators=(",", ":")))


def drop6(state_dir: str):
    try:
        os.remove(os.path.join(state_dir, NAME6))
    except FileNotFoundError:
        pass

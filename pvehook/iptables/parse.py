"""What the kernel has of pvenat's: its chains and jumps out of iptables-save, and the
claims, addresses and guests read back from them (the kernel is pvenat's index)."""

import re

from ..plan import Claim
from .render import PREFIX, Kept, Table, Tables, guest_chain, is_guest_chain, is_tree_chain

_CLAIM = re.compile(
    r"-p (tcp|udp) -m multiport --dports ([0-9]+)(?::([0-9]+))? -j PVENAT-([0-9]+)")
_TO = re.compile(r"--to-destination ([0-9.]+)")


def parse_save(text: str) -> Table:
    """pvenat's chains and jumps out of ``iptables-save -t TABLE`` output."""
    table = Table()
    seen = set()  # built-in chains whose first rule has gone by
    first = set()
    for line in text.splitlines():
        if line.startswith(":" + PREFIX):
            table.chains[line[1:].split(" ", 1)[0]] = []
        elif line.startswith("-A "):
            _, chain, spec = line.split(" ", 2)
            if chain.startswith(PREFIX):
                table.chains[chain].append(spec)
                continue
            if f"-j {PREFIX}" in spec or f"-g {PREFIX}" in spec:
                table.jumps.append((chain, spec))
                if chain not in seen:
                    first.add((chain, spec))
            seen.add(chain)
    table.chains = {k: tuple(v) for k, v in table.chains.items()}
    table.first = frozenset(first)
    return table


def held_claims(tables: Tables) -> list[Claim]:
    """The claims recorded in the port trees: the kernel is pvenat's index."""
    out = []
    for chain, rules in tables["nat"].chains.items():
        if is_tree_chain(chain):
            for rule in rules:
                m = _CLAIM.fullmatch(rule)
                if m:
                    lo = int(m.group(2))
                    out.append(Claim(m.group(1), lo, int(m.group(3) or lo), int(m.group(4))))
    return out


def guest_addresses(tables: Tables) -> dict[str, int]:
    out = {}
    for chain, rules in tables["nat"].chains.items():
        if is_guest_chain(chain) and rules:  # all of a guest's rules go to one address
            m = _TO.search(rules[0])
            if m:
                out[m.group(1)] = int(chain[len(PREFIX):])
    return out


def managed_guests(tables: Tables) -> set[int]:
    return {int(c[len(PREFIX):]) for c in tables["nat"].chains if is_guest_chain(c)}


def guest_state(tables: Tables, vmid: int, claims=None) -> tuple[Kept, dict]:
    """A guest's chain as the kernel has it, and its addresses ({address: vmid}).
    ``claims`` are held_claims(tables), when the caller has them already."""
    claims = held_claims(tables) if claims is None else claims
    rules = tables["nat"].chains.get(guest_chain(vmid), ())
    m = _TO.search(rules[0]) if rules else None
    return Kept(rules, [c for c in claims if c.vmid == vmid]), ({m.group(1): vmid} if m else {})

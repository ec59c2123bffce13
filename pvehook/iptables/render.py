"""pvenat's rules as iptables data: render them, diff them (parse.py reads them back).

Everything pvenat owns lives in chains named PVENAT-*, reached by a few jumps from the
built-in chains. Per table that is a ``Tables`` entry: {chain: rules} plus the jumps.
Rules are written exactly as iptables-save prints them, so "what the kernel has" and
"what we want" compare as plain data, and an unchanged chain is never rewritten.

Layout of the nat table (the data path of every new inbound connection):

  PREROUTING -d PUB -i WAN ─┐
  PREROUTING -d PUB -i LAN ─┼─> PVENAT-DNAT ─ -p tcp ─> PVENAT-TCP ─> PVENAT-TCP-2 ─> ...
  OUTPUT     -d PUB ────────┘               └ -p udp ─> PVENAT-UDP ─> ...
                                  ... ─ --dports 10000:10099 ─> PVENAT-101 (DNAT rules)

PVENAT-TCP/UDP form a fixed 16-ary tree over the port space, keyed by the hex digits
of the port: a claimed range sits in the deepest node whose prefix its first and last
port share (at most three digits). Claims on one protocol never overlap, so a node
holds at most 16 claims plus 16 child jumps, and a packet walks at most four nodes
whatever the number of guests. Nodes exist only where claims are.
"""

import bisect
from typing import NamedTuple

from ..plan import Claim, GuestPlan
from ..ports import format_range
from ..rules import Public

PREFIX = "PVENAT-"
ZONE = "PVENAT-ZONE"
DNAT = "PVENAT-DNAT"
POSTROUTING = "PVENAT-POSTROUTING"
FORWARD = "PVENAT-FORWARD"
INBOUND = "PVENAT-INBOUND"  # mangle: the NAT boundary, wan_bridge -> the guest subnet
INPUT = "PVENAT-INPUT"  # filter: DHCP and DNS from the guests to the host
TABLES = ("raw", "mangle", "nat", "filter")
# The conntrack zone of packets bridged through PVE's firewall bridges: the one PVE's
# own docs (pve-network.adoc) and SDN zones with SNAT use, so that both agree.
FIREWALL_BRIDGE_ZONE = 1


def guest_chain(vmid: int) -> str:
    return f"{PREFIX}{vmid}"


def is_guest_chain(chain: str) -> bool:
    return chain[len(PREFIX):].isdigit() and chain.startswith(PREFIX)


def is_tree_chain(chain: str) -> bool:
    return chain.startswith((PREFIX + "TCP", PREFIX + "UDP"))


class Table:
    """pvenat's part of one table.

    ``first``: jumps that sit at the head of their built-in chain. Read from the kernel,
    the jumps that are its first rule; wanted, the jumps that must be (at most one per
    chain), which are inserted there and put back there when another rule came before.
    """

    def __init__(self, chains=None, jumps=None, first=None):
        self.chains = {} if chains is None else chains  # chain -> tuple of rule specs
        self.jumps = [] if jumps is None else jumps  # (built-in chain, rule spec), in order
        self.first = frozenset() if first is None else frozenset(first)  # of jumps

    def copy(self) -> "Table":
        return Table(dict(self.chains), list(self.jumps), self.first)


Tables = dict  # "nat"/"filter" -> Table


# --- rendering -------------------------------------------------------------------------

def base(host, public: Public) -> Tables:
    """The host-wide part: the firewall bridges' conntrack zone, the NAT boundary, jumps,
    hairpin MASQUERADE, outbound SNAT, FORWARD accept, and with DHCP on the guests'
    DHCP and DNS to the host."""
    public_ip = public.ip
    pub = f"{public_ip}/32"
    lan = str(host.lan_network)
    snat = f"-j SNAT --to-source {public_ip}" if public.snat else "-j MASQUERADE"
    nat = Table(
        chains={
            DNAT: (),
            POSTROUTING: (
                # LAN -> public IP -> LAN: the reply must come back through the host.
                f"-s {lan} -d {lan} -o {host.lan_bridge} -m conntrack --ctstate DNAT "
                "-j MASQUERADE",
                f"-s {lan} -o {host.wan_bridge} {snat}",
            ),
        },
        jumps=[
            ("PREROUTING", f"-d {pub} -i {host.wan_bridge} -j {DNAT}"),
            ("PREROUTING", f"-d {pub} -i {host.lan_bridge} -j {DNAT}"),
            ("OUTPUT", f"-d {pub} -j {DNAT}"),
            ("POSTROUTING", f"-j {POSTROUTING}"),
        ])
    filt = Table(
        chains={FORWARD: (f"-m conntrack --ctstate DNAT --ctorigdst {public_ip} -j ACCEPT",)},
        jumps=[("FORWARD", f"-j {FORWARD}")])
    if host.dhcp:
        # pve-firewall's host chain (datacenter firewall on, input policy DROP) lets
        # neither DHCP nor DNS from a bridge through (Firewall.pm enable_host_firewall;
        # PVEFW-DropBroadcast drops the DISCOVER). This jump sits first in INPUT: ahead
        # of PVEFW-INPUT, which pve-firewall appends when missing, and of an admin's own
        # drops. It lets through only what dnsmasq serves, on lan_bridge alone.
        dns_to = f"-s {lan} -d {host.lan_address.ip}/32"
        filt.chains[INPUT] = (
            f"{port_match('udp', 67, 67)} -j ACCEPT",  # from 0.0.0.0 too: no -s
            f"{dns_to} {port_match('udp', 53, 53)} -j ACCEPT",
            f"{dns_to} {port_match('tcp', 53, 53)} -j ACCEPT")
        input_jump = ("INPUT", f"-i {host.lan_bridge} -j {INPUT}")
        filt.jumps.append(input_jump)
        filt.first = frozenset({input_jump})
    # The NAT boundary. A neighbour on wan_bridge's segment can route the guest subnet
    # via the host's public address and reach any guest port, past "only forwarded
    # ports" and allow-lists: FORWARD's policy is ACCEPT on a stock node. In the host's
    # routed pass from wan_bridge, a packet for the guest subnet passes only as part of
    # a connection something DNATed (pvenat's forwards, or a DNAT rule of the admin's),
    # as a reply (ESTABLISHED, RELATED), or from a network the admin allows
    # (allow_routed); the rest is dropped. In mangle FORWARD because filter FORWARD is
    # pve-firewall's too: its PVEFW-FORWARD may come first and ACCEPT there
    # (RELATED,ESTABLISHED; an admin's rules), and it writes filter and raw only, never
    # mangle. mangle FORWARD runs before filter FORWARD, after DNAT (nat PREROUTING),
    # so the drop comes before any ACCEPT and sees the DNAT state; a drop takes nothing
    # from pve-firewall, which decides everything that passes here, as before. The
    # firewall bridges' bridged pass (-i fwbrN) and guests' own traffic (-i lan_bridge)
    # never match the jump.
    mangle = Table(
        chains={INBOUND: (
            "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            "-m conntrack --ctstate DNAT -j RETURN",
            *(f"-s {net} -j RETURN" for net in host.allow_routed if ":" not in net),
            "-j DROP")},
        jumps=[("FORWARD", f"-d {lan} -i {host.wan_bridge} -j {INBOUND}")])
    # With br_netfilter, a packet bridged through a guest's firewall bridge meets
    # conntrack there and again on the lan bridge, where the host routes and NATs it. In
    # one zone the first pass would decide "no NAT" for the second, or see its NATed
    # packet as new; so the firewall bridges get a zone of their own (README, "Guests
    # behind the PVE firewall"). The jump sits first in raw PREROUTING: xt_CT ignores a
    # second CT target on a packet, and pve-firewall's PVEFW-PREROUTING (appended when
    # missing) holds "-j CT --helper X" with nf_conntrack_helpers; pve-network's SDN
    # zones insert their zone rule (-I) for the same reason.
    zone_jump = ("PREROUTING", f"-i fwbr+ -j {ZONE}")
    raw = Table(chains={ZONE: (f"-j CT --zone {FIREWALL_BRIDGE_ZONE}",)},
                jumps=[zone_jump], first={zone_jump})
    return {"raw": raw, "mangle": mangle, "nat": nat, "filter": filt}


def guest_rules(plan: GuestPlan) -> tuple:
    """The guest's chain: its forwards' DNAT rules, in order."""
    return tuple(rule for f in plan.forwards for rule in forward_rules(plan.address, f))


def forward_rules(address: str, f) -> list[str]:
    """The DNAT rules of one forward: one rule, or one per allowed IPv4 source."""
    if f.guest == f.public:
        to = address
    elif f.guest[0] == f.guest[1]:
        to = f"{address}:{f.guest[0]}"
    else:  # shifted port map: public lo..hi to guest lo..hi, port by port
        to = f"{address}:{f.guest[0]}-{f.guest[1]}/{f.public[0]}"
    match = f"{port_match(f.proto, *f.public)} -j DNAT --to-destination {to}"
    sources = f.allow_family(4)  # None: IPv6 sources only, closed on IPv4
    return [] if sources is None else [f"-s {src} {match}" for src in sources] or [match]


def dispatch(claims, touched=None) -> dict:
    """PVENAT-DNAT and the port trees for a set of non-overlapping claims.

    With ``touched``, a set of (proto, hex prefix), only those tree nodes are rendered:
    a hook changes one guest's claims, and only the nodes on their paths change. Then
    only the claims under those nodes are looked at, and the root's few facts are
    taken from the rest with integer arithmetic.
    """
    chains = {DNAT: dnat_rules(claims)}
    for proto in ("tcp", "udp"):
        mine = sorted(c for c in claims if c.proto == proto)
        if not mine:
            continue
        root = PREFIX + proto.upper()
        nodes: dict[str, tuple[list, set]] = {}  # hex prefix -> (claims, child prefixes)
        if touched is not None:
            if (proto, "") in touched:  # the root: claims across its 16 parts, and the parts
                nodes[""] = ([c for c in mine if c.lo >> 12 != c.hi >> 12],
                             {f"{c.lo >> 12:X}" for c in mine if c.lo >> 12 == c.hi >> 12})
            spans = [(int(p.ljust(4, "0"), 16), int(p.ljust(4, "F"), 16))
                     for pr, p in touched if pr == proto and p]
            mine = _within(mine, spans)
        linked = set()  # prefixes whose path up to the root is in place
        for c in mine:
            prefix = _node_prefix(c.lo, c.hi)
            if touched is None or (proto, prefix) in touched:
                nodes.setdefault(prefix, ([], set()))[0].append(c)
            if prefix in linked:
                continue
            linked.add(prefix)
            for k in range(len(prefix), 1 if touched is not None else 0, -1):
                if touched is None or (proto, prefix[:k - 1]) in touched:
                    nodes.setdefault(prefix[:k - 1], ([], set()))[1].add(prefix[:k])
        for prefix, (held, children) in nodes.items():
            rules = [f"{port_match(proto, c.lo, c.hi)} -j {guest_chain(c.vmid)}" for c in held]
            for child in sorted(children):
                lo, hi = int(child.ljust(4, "0"), 16), int(child.ljust(4, "F"), 16)
                rules.append(f"{port_match(proto, lo, hi)} -j {_node(root, child)}")
            chains[_node(root, prefix)] = rules
    return {k: tuple(v) for k, v in chains.items()}


def port_match(proto: str, lo: int, hi: int) -> str:
    """A destination port match. multiport, not ``-m udp --dport``: iptables 1.8.9 parses
    udp ports through getaddrinfo(), which dumps every address of every interface over
    netlink, so loading many guests' rules on a host with many devices took seconds (the
    README's performance section has the figures)."""
    return f"-p {proto} -m multiport --dports {format_range(lo, hi, ':')}"


def _within(claims: list, spans) -> list:
    """The sorted, non-overlapping ``claims`` that lie wholly inside one of ``spans``,
    found by bisection: a hook looks at its few nodes, not at every guest's claims."""
    los = [c.lo for c in claims]
    out = set()
    for a, b in spans:
        i = bisect.bisect_left(los, a)
        while i < len(claims) and claims[i].lo <= b:
            if claims[i].hi <= b:
                out.add(claims[i])
            i += 1
    return sorted(out)


def dnat_rules(claims) -> list:
    """PVENAT-DNAT: one jump a protocol that has claims."""
    protos = {c.proto for c in claims}
    return [f"-p {p} -j {PREFIX}{p.upper()}" for p in ("tcp", "udp") if p in protos]


def claim_path(claim) -> set:
    """The tree nodes from the root down to the claim's node, as (proto, prefix)."""
    prefix = _node_prefix(claim.lo, claim.hi)
    return {(claim.proto, prefix[:k]) for k in range(len(prefix) + 1)}


def _node_prefix(lo: int, hi: int) -> str:
    for shift, width in ((4, 3), (8, 2), (12, 1)):
        if lo >> shift == hi >> shift:
            return f"{lo >> shift:0{width}X}"
    return ""


def _node(root: str, prefix: str) -> str:
    return f"{root}-{prefix}" if prefix else root


class Kept(NamedTuple):
    """A guest's rules taken over as the kernel has them, with the ports they claim."""

    rules: tuple
    claims: list[Claim]


def desired(host, public: Public, plans, kept: dict) -> Tables:
    """Everything pvenat wants in the kernel: the base rules, each plan's chain, each
    ``kept`` guest's chain as it is ({vmid: Kept}), and the port tree over all claims."""
    tables = base(host, public)
    nat = tables["nat"]
    all_claims = []
    for vmid, guest in kept.items():
        nat.chains[guest_chain(vmid)] = guest.rules
        all_claims += guest.claims
    for plan in plans:
        nat.chains[guest_chain(plan.vmid)] = guest_rules(plan)
        all_claims += plan.claims()
    nat.chains.update(dispatch(all_claims))
    return tables


def with_guest(current: Tables, host, public: Public, vmid: int, plan, claims=None) -> Tables:
    """``current`` with one guest's rules replaced by ``plan`` (None: removed).

    A plan also brings the base rules into shape; a removal leaves them as they are.
    ``claims`` are held_claims(current), when the caller has them already.
    """
    claims = _held(current) if claims is None else claims
    tables = with_base(current, host, public, claims) if plan else {
        t: current[t].copy() for t in TABLES}
    nat = tables["nat"]
    changed = [c for c in claims if c.vmid == vmid]
    held = [c for c in claims if c.vmid != vmid]
    nat.chains.pop(guest_chain(vmid), None)
    if plan is not None:
        nat.chains[guest_chain(vmid)] = guest_rules(plan)
        mine = plan.claims()
        held += mine
        changed += mine
    if not (held or DNAT in nat.chains):
        return tables
    touched = set().union(set(), *map(claim_path, changed))
    rendered = dispatch(held, touched)
    for proto, prefix in touched:  # nodes left without claims go
        name = _node(PREFIX + proto.upper(), prefix)
        if name not in rendered:
            nat.chains.pop(name, None)
    nat.chains.update(rendered)
    return tables


def with_base(current: Tables, host, public: Public, claims=None) -> Tables:
    """``current`` with the host-wide rules in shape; guests' rules are kept."""
    claims = _held(current) if claims is None else claims
    tables = {t: current[t].copy() for t in TABLES}
    for table, wanted in base(host, public).items():
        tables[table].chains.update(wanted.chains)
        tables[table].jumps = merge_jumps(tables[table].jumps, wanted.jumps)
        tables[table].first = wanted.first
    tables["nat"].chains[DNAT] = tuple(dnat_rules(claims))
    return tables


def base_missing(current: Tables, host, public: Public) -> list[str]:
    """What of the host-wide rules is not there as it should be (PVENAT-DNAT aside: it
    follows the guests): chains, jumps, and jumps that are not first in their chain,
    each named as ``table chain``."""
    return missing(current, base(host, public), skip=lambda chain: chain == DNAT)


def missing(current: Tables, wanted: Tables, skip, label: str = "") -> list[str]:
    """What of ``wanted`` (chains but those ``skip`` names, jumps, jumps that must be
    first) ``current`` lacks or has otherwise, each as ``label table chain``."""
    out = []
    for t, want in wanted.items():
        have = current[t]
        out += [f"{label}{t} {c}" for c, rules in want.chains.items()
                if not skip(c) and have.chains.get(c) != rules]
        out += [f"{label}{t} {chain} jump {spec.rsplit(' ', 1)[-1]}"
                for chain, spec in want.jumps if (chain, spec) not in have.jumps]
        out += [f"{label}{t} {chain} jump {spec.rsplit(' ', 1)[-1]} (not first)"
                for chain, spec in want.first
                if (chain, spec) in have.jumps and (chain, spec) not in have.first]
    return out


def keep_jumps(wanted: Tables, current: Tables) -> Tables:
    """``wanted`` with the jumps already in the kernel left where they are (those that
    must be first are put back there)."""
    for table in wanted:
        wanted[table].jumps = merge_jumps(current[table].jumps, wanted[table].jumps)
    return wanted


def merge_jumps(have, want):
    """The wanted jumps, keeping the position of those already there."""
    kept = [j for j in have if j in want]
    return kept + [j for j in want if j not in kept]


# --- the difference as one iptables-restore --noflush script ---------------------------

def _held(current: Tables) -> list[Claim]:
    from .parse import held_claims  # parse reads these names; imported when first needed
    return held_claims(current)


def restore_script(current: Tables, wanted: Tables, tables=TABLES) -> str:
    """The iptables-restore --noflush input that turns ``current`` into ``wanted``.

    Only chains whose rules differ are rewritten (a declared chain is flushed first);
    chains no longer wanted are flushed and deleted after every reference is gone. A
    jump that must be first is inserted at the head of its chain, and one that is
    there but not first is taken out and inserted again. Empty when nothing differs.
    Each table is one atomic commit.
    """
    out = []
    for t in tables:
        have, want = current[t], wanted[t]
        changed = [c for c in want.chains if have.chains.get(c) != want.chains[c]]
        gone = [c for c in have.chains if c not in want.chains]
        drop = [j for j in have.jumps if j not in want.jumps]
        move = [j for j in want.jumps if j in want.first and j in have.jumps
                and j not in have.first]
        add = [j for j in want.jumps if j not in have.jumps]
        if not (changed or gone or drop or move or add):
            continue
        out.append(f"*{t}")
        out += [f":{c} - [0:0]" for c in changed]
        out += [f"-D {chain} {spec}" for chain, spec in drop + move]
        out += [f"-F {c}" for c in gone]
        for c in changed:
            out += [f"-A {c} {rule}" for rule in want.chains[c]]
        out += [f"-I {chain} 1 {spec}" if (chain, spec) in want.first else
                f"-A {chain} {spec}" for chain, spec in move + add]
        out += [f"-X {c}" for c in gone]
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""

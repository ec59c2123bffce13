"""pvenat's IPv6 rules as ip6tables data (render.Table, written as ip6tables-save prints).

There is no NAT on IPv6: a guest has a public address of its own (ipv6.py), and a
forward opens its guest-side ports there. Inbound is closed by default, in mangle
FORWARD for the same reason as IPv4's boundary (render.base): it runs before
pve-firewall's filter FORWARD, which may ACCEPT first, and pve-firewall never writes
mangle.

  FORWARD -d PREFIX/64 -i WAN -j PVENAT-INBOUND
  PVENAT-INBOUND: replies (RETURN), allow_routed IPv6 sources (RETURN),
                  the address tree (-g), DROP
  PVENAT-V6-<hex>: a node of the tree: up to 16 entries, -g a guest or a node; DROP
  PVENAT-<vmid>: the guest's opened ports (RETURN), DROP

and, as for IPv4, the firewall bridges' conntrack zone (raw) and the guests' DHCPv6 and
DNS to the host (filter INPUT).

The tree keys on the hex digits of the address after the prefix, compressed: a node
exists only where two or more guests share digits, so a new connection walks a few
rules per node whatever the number of guests. -g (goto), not -j: a RETURN in a guest's
chain goes back to FORWARD, past every DROP on the way down.
"""

import ipaddress

from . import render
from .render import PREFIX, Table, Tables, guest_chain, port_match

TABLES = ("raw", "mangle", "filter")
INBOUND = render.INBOUND
INPUT = render.INPUT
NODE = PREFIX + "V6-"
_NIBBLES = 16  # the address's digits after the /64 prefix


def is_node(chain: str) -> bool:
    return chain.startswith(NODE)


def base(host, net6, addresses: dict) -> Tables:
    """The host-wide part, with the tree over ``addresses`` ({address: vmid})."""
    head = ["-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            *(f"-s {n} -j RETURN" for n in host.allow_routed if ":" in n)]
    root, nodes = tree(addresses)
    mangle = Table(chains={INBOUND: (*head, *root, "-j DROP"), **nodes},
                   jumps=[("FORWARD", f"-d {net6.prefix} -i {host.wan_bridge} -j {INBOUND}")])
    # The firewall bridges' conntrack zone, as for IPv4 (render.base): with br_netfilter
    # a guest's packet to the host meets conntrack bridged through fwbrN and again on
    # the lan bridge, and in one zone the host's answer was INVALID in pve-firewall's
    # bridged pass (measured: every TCP connection from such a guest to the host failed).
    zone_jump = ("PREROUTING", f"-i fwbr+ -j {render.ZONE}")
    raw = Table(chains={render.ZONE: (f"-j CT --zone {render.FIREWALL_BRIDGE_ZONE}",)},
                jumps=[zone_jump], first={zone_jump})
    filt = Table()
    if host.dhcp:
        # What dnsmasq serves the guests over IPv6 (dhcp.py): router solicitations,
        # neighbour solicitations and advertisements for the host's address, DHCPv6,
        # DNS; first in INPUT, as for IPv4 (render.base).
        dns_to = f"-s {net6.prefix} -d {net6.lan_address}/128"
        filt.chains[INPUT] = (
            *(f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in (133, 135, 136)),
            f"{port_match('udp', 547, 547)} -j ACCEPT",
            f"{dns_to} {port_match('udp', 53, 53)} -j ACCEPT",
            f"{dns_to} {port_match('tcp', 53, 53)} -j ACCEPT")
        jump = ("INPUT", f"-i {host.lan_bridge} -j {INPUT}")
        filt.jumps.append(jump)
        filt.first = frozenset({jump})
    return {"raw": raw, "mangle": mangle, "filter": filt}


def guest_rules(plan) -> tuple:
    """The guest's chain: each forward's guest-side ports, from its allow-list's IPv6
    sources (a forward whose list names IPv4 sources only stays closed), then DROP."""
    out = []
    for f in plan.forwards:
        sources = f.allow_family(6)
        if sources is None:
            continue
        match = f"{port_match(f.proto, *f.guest)} -j RETURN"
        out += [f"-s {s} {match}" for s in sources] if sources else [match]
    return (*out, "-j DROP")


def tree(addresses: dict) -> tuple[list, dict]:
    """PVENAT-INBOUND's entries and the node chains over ``addresses``."""
    keyed = sorted((_digits(a), a, v) for a, v in addresses.items())
    nodes = {}

    def node(items, depth) -> list:
        groups = {}
        for item in items:
            groups.setdefault(item[0][depth], []).append(item)
        rules = []
        for group in groups.values():
            if len(group) == 1:
                _, address, vmid = group[0]
                rules.append(f"-d {address}/128 -g {guest_chain(vmid)}")
                continue
            shared = depth + 1
            while shared < _NIBBLES and len({g[0][shared] for g in group}) == 1:
                shared += 1
            digits = group[0][0][:shared]
            name = NODE + digits
            nodes[name] = (*node(group, shared), "-j DROP")
            rules.append(f"-d {_network(group[0][1], shared)} -g {name}")
        return rules

    return node(keyed, 0), nodes


def _digits(address: str) -> str:
    return f"{int(ipaddress.IPv6Address(address)) & (1 << 64) - 1:016x}"


def _network(address: str, digits: int) -> str:
    return str(ipaddress.IPv6Network(f"{address}/{64 + 4 * digits}", strict=False))


def desired(host, net6, guests: dict) -> Tables:
    """Everything: ``guests`` is {vmid: (address, rules of its chain)}."""
    tables = base(host, net6, {a: v for v, (a, _) in guests.items()})
    for vmid, (_, rules) in guests.items():
        tables["mangle"].chains[guest_chain(vmid)] = rules
    return tables


def with_guests(current: Tables, guests: dict) -> Tables:
    """``current`` with its guests' chains and the tree made ``guests`` ({vmid: (address,
    rules)}), the base as it is: a stop needs neither the config's prefix nor the host's
    addresses."""
    tables = {t: current[t].copy() for t in TABLES}
    chains = tables["mangle"].chains
    if INBOUND not in chains:
        return tables
    head = [r for r in chains[INBOUND] if " -g " not in r and r != "-j DROP"]
    for chain in [c for c in chains if is_node(c) or render.is_guest_chain(c)]:
        del chains[chain]
    root, nodes = tree({a: v for v, (a, _) in guests.items()})
    chains.update({INBOUND: (*head, *root, "-j DROP"), **nodes})
    chains.update({guest_chain(v): rules for v, (_, rules) in guests.items()})
    return tables


def read_guests(tables: Tables) -> dict:
    """{vmid: (address, rules)} of the guests the kernel has IPv6 rules for, read back
    from the tree's entries (the kernel is the index)."""
    chains = tables["mangle"].chains
    out = {}
    for chain, rules in chains.items():
        if chain == INBOUND or is_node(chain):
            for rule in rules:
                parts = rule.split()
                if len(parts) == 4 and parts[0] == "-d" and parts[1].endswith("/128") \
                        and render.is_guest_chain(parts[3]):
                    out[int(parts[3][len(PREFIX):])] = (parts[1][:-4],
                                                        chains.get(parts[3], ()))
    return out

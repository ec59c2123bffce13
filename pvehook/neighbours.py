"""The kernel's side of IPv6 for the guests: routes and neighbour answers.

A guest's packets reach it through the host: a /128 route on lan_bridge for each
managed guest running here and, where the upstream router expects the guests'
addresses on its link ("on-link"), a proxy neighbour entry on wan_bridge that answers
its solicitations for exactly those addresses (Linux net/ipv6/ndisc.c ndisc_recv_ns:
proxy_ndp=1 and one entry an address; there is no prefix-wide proxy, and none is
wanted: hosters block a server that claims addresses it does not use). Where the
prefix is routed to the host, the rest of it ends at the host (an unreachable route),
so a packet for an unused address is not sent back upstream until its hop limit runs
out. The host's own address on lan_bridge has no prefix route (noprefixroute): the
/128 routes say which guests are here.

Added at pre-start, removed at post-stop, reconciled by sync, like the rules; only the
difference is changed, in one ``ip -batch``.
"""

import ipaddress
import json
import os
import subprocess
from typing import NamedTuple

from . import files
from .errors import PvenatError
from .ipv6 import Net

# The route protocol that marks pvenat's routes (iproute2's rt_protos leaves it free):
# reading back "ours" never looks at anything else.
ROUTE_PROTO = 220
STATE = "ipv6.json"  # VMID -> address of the guests whose entries are in the kernel


class Entries(NamedTuple):
    """What the kernel holds for the guests running here: their /128 routes on
    lan_bridge and, on-link, their proxy entries on wan_bridge."""

    routes: frozenset  # addresses (text)
    proxies: frozenset
    unreachable: frozenset = frozenset()  # the routed prefix


NONE = Entries(frozenset(), frozenset())


def entries(net: Net, addresses) -> Entries:
    mine = frozenset(addresses)
    if net.upstream == "on-link":
        return Entries(mine, mine)
    return Entries(mine, frozenset(), frozenset({net.prefix}))


def batch(have: Entries, want: Entries, lan_bridge: str, wan_bridge: str) -> str:
    """The ip -batch input that turns ``have`` into ``want``; '' when nothing differs."""
    lines = [f"-6 route del {a}/128 dev {lan_bridge} proto {ROUTE_PROTO}"
             for a in sorted(have.routes - want.routes)]
    lines += [f"-6 neigh del proxy {a} dev {wan_bridge}"
              for a in sorted(have.proxies - want.proxies)]
    lines += [f"-6 route del unreachable {p} proto {ROUTE_PROTO}"
              for p in sorted(have.unreachable - want.unreachable)]
    lines += [f"-6 route replace unreachable {p} proto {ROUTE_PROTO}"
              for p in sorted(want.unreachable - have.unreachable)]
    lines += [f"-6 route replace {a}/128 dev {lan_bridge} proto {ROUTE_PROTO}"
              for a in sorted(want.routes - have.routes)]
    lines += [f"-6 neigh replace proxy {a} dev {wan_bridge}"
              for a in sorted(want.proxies - have.proxies)]
    return "".join(line + "\n" for line in lines)


class Neighbours:
    """The kernel's side: the host's address on lan_bridge, pvenat's /128 routes (its
    route protocol), the proxy entries inside the prefix, and in the routed case the
    prefix's unreachable route; which guest has which address is kept in STATE, so that
    a post-stop needs neither PVE nor the prefix."""

    def __init__(self, host, net: Net | None, state_dir: str):
        self.host, self.net, self.state_dir = host, net, state_dir

    def held(self) -> dict[int, str]:
        try:
            with open(os.path.join(self.state_dir, STATE), encoding="utf-8") as f:
                return {int(v): a for v, a in json.load(f).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def start(self, vmid: int, address: str) -> str:
        held = self.held()
        other = next((v for v, a in held.items() if a == address and v != vmid), None)
        if other is not None:
            raise PvenatError("conflict", f"guest {vmid}: IPv6 address {address} is "
                              f"already routed to guest {other}, which is running on this "
                              "node; give one of them another address (or run 'pvenat "
                              f"sync' if {other} is no longer running here)")
        return self.update({**held, vmid: address})

    def stop(self, vmid: int) -> str:
        held = self.held()
        if vmid not in held:
            return ""
        del held[vmid]
        return self.update(held)

    def update(self, wanted: dict[int, str]) -> str:
        """The kernel's entries as ``wanted`` ({VMID: address}) needs them, the host's
        own parts included; returns what was changed ('' when nothing)."""
        host, net = self.host, self.net
        have = self.read()
        want = entries(net, wanted.values()) if net else NONE
        script = self._lan() + batch(have, want, host.lan_bridge, host.wan_bridge)
        if wanted != self.held():
            files.write_atomic(os.path.join(self.state_dir, STATE), json.dumps(
                {str(v): a for v, a in sorted(wanted.items())}))
        if script:
            run_batch(script)
        return script

    def _lan(self) -> str:
        """The host's address on lan_bridge, when it is not there: the guests' router,
        DNS server, and the address dnsmasq builds its DHCPv6 range and router
        advertisements from (--dhcp-range=::,constructor:BRIDGE)."""
        if self.net is None:
            return ""
        lan = f"{self.net.lan_address}/64"
        if lan in self._lan_addresses():
            return ""
        return f"-6 address replace {lan} dev {self.host.lan_bridge} noprefixroute nodad\n"

    def read(self):
        routes = _ip_json("-6", "route", "show", "proto", str(ROUTE_PROTO))
        mine = frozenset(r["dst"].split("/")[0] for r in routes
                         if r.get("dev") == self.host.lan_bridge)
        proxies = frozenset()
        if self.net is not None:
            prefix = self.net.network
            proxies = frozenset(p["dst"] for p in _ip_json(
                "-6", "neigh", "show", "proxy", "dev", self.host.wan_bridge)
                if ipaddress.IPv6Address(p["dst"]) in prefix)
        return Entries(mine, proxies, frozenset(
            r["dst"] for r in routes if r.get("type") == "unreachable"))

    def _lan_addresses(self) -> set:
        return {f"{a['local']}/{a['prefixlen']}" for iface in _ip_json(
            "-6", "addr", "show", "dev", self.host.lan_bridge)
            for a in iface.get("addr_info", [])}


def run_batch(script: str):
    try:
        proc = subprocess.run(["ip", "-force", "-batch", "-"], input=script,
                              capture_output=True, text=True)
    except OSError as e:
        raise PvenatError("host", f"ip could not be run: {e.strerror}") from None
    if proc.returncode != 0:
        raise PvenatError("host", f"ip -batch failed: {proc.stderr.strip()[:300]}")


def _ip_json(*args) -> list:
    try:
        proc = subprocess.run(["ip", "-j", *args], capture_output=True, text=True)
    except OSError as e:
        raise PvenatError("host", f"ip could not be run: {e.strerror}") from None
    if proc.returncode != 0:
        raise PvenatError("host", f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout or "[]")

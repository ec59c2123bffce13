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

On-link, the guests have the whole /64 on their link, and would look for the host's
own addresses of it (on wan_bridge) by neighbour solicitation on lan_bridge, where Linux
answers only for lan_bridge's own addresses: so the host answers there for those, by
proxy entries on lan_bridge (pvenat's bridge).

Added at pre-start, removed at post-stop, reconciled by sync, like the rules; only the
difference is changed, in one ``ip -batch``.
"""

import json
import os
import subprocess
from typing import NamedTuple

from . import files
from .hostnet import wan_addresses6
from .errors import PvenatError
from .ipv6 import Net

# The route protocol that marks pvenat's routes (iproute2's rt_protos leaves it free):
# reading back "ours" never looks at anything else.
ROUTE_PROTO = 220
# What pvenat put in the kernel besides its marked routes: which guest has which address
# (a post-stop needs neither PVE nor the prefix) and the host's lan address. A proxy
# entry or an address pvenat did not record is never taken out: it is the admin's.
STATE = "ipv6.json"


class Entries(NamedTuple):
    """What the kernel holds for the guests running here: their /128 routes on
    lan_bridge and, on-link, their proxy entries on wan_bridge."""

    routes: frozenset  # addresses (text)
    proxies: frozenset
    unreachable: frozenset = frozenset()  # the routed prefix
    host: frozenset = frozenset()  # on-link: the host's wan addresses, answered on lan


NONE = Entries(frozenset(), frozenset())


def entries(net: Net, addresses, host=()) -> Entries:
    """``host``: the host's own addresses on wan_bridge inside the prefix."""
    mine = frozenset(addresses)
    if net.upstream == "on-link":
        return Entries(mine, mine, frozenset(), frozenset(host))
    return Entries(mine, frozenset(), frozenset({net.prefix}))


def batch(have: Entries, want: Entries, lan_bridge: str, wan_bridge: str) -> str:
    """The ip -batch input that turns ``have`` into ``want``; '' when nothing differs."""
    lines = [f"route del {a}/128 dev {lan_bridge} proto {ROUTE_PROTO}"
             for a in sorted(have.routes - want.routes)]
    lines += [f"neigh del proxy {a} dev {wan_bridge}"
              for a in sorted(have.proxies - want.proxies)]
    lines += [f"neigh del proxy {a} dev {lan_bridge}" for a in sorted(have.host - want.host)]
    lines += [f"route del unreachable {p} proto {ROUTE_PROTO}"
              for p in sorted(have.unreachable - want.unreachable)]
    lines += [f"route replace unreachable {p} proto {ROUTE_PROTO}"
              for p in sorted(want.unreachable - have.unreachable)]
    lines += [f"route replace {a}/128 dev {lan_bridge} proto {ROUTE_PROTO}"
              for a in sorted(want.routes - have.routes)]
    lines += [f"neigh replace proxy {a} dev {wan_bridge}"
              for a in sorted(want.proxies - have.proxies)]
    lines += [f"neigh replace proxy {a} dev {lan_bridge}"
              for a in sorted(want.host - have.host)]
    return "".join(line + "\n" for line in lines)


class State(NamedTuple):
    guests: dict  # VMID -> address
    lan: str | None  # the host's address on lan_bridge (ADDRESS/64), as pvenat added it


class Neighbours:
    """Start, stop and reconcile the kernel's entries for the guests (ipv6.Net ``net``;
    None with ipv6 off: then sync takes out what pvenat had put there)."""

    def __init__(self, host, net: Net | None, state_dir: str):
        self.host, self.net = host, net
        self.path = os.path.join(state_dir, STATE)

    def state(self) -> State:
        try:
            with open(self.path, encoding="utf-8") as f:
                raw = json.load(f)
            return State({int(v): a for v, a in raw["guests"].items()}, raw["lan"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return State({}, None)

    def check(self, vmid: int, address: str):
        """Refused ('conflict') when a guest running here has the address."""
        held = self.state().guests
        other = next((v for v, a in held.items() if a == address and v != vmid), None)
        if other is not None:
            raise PvenatError("conflict", f"guest {vmid}: IPv6 address {address} is "
                              f"already routed to guest {other}, which is running on this "
                              "node; give one of them another address (or run 'pvenat "
                              f"sync' if {other} is no longer running here)")

    def start(self, vmid: int, address: str) -> str:
        """The guest's route (and proxy entry), after check(). Written without reading
        the kernel's (replace is idempotent): on a host with 1,000 guests, listing every
        route and proxy entry cost a hook more than the rest of its IPv6 part."""
        state = self.state()
        old = state.guests.get(vmid)
        script = _deletes(old, self.host) if old and old != address else ""
        script += f"route replace {address}/128 dev {self.host.lan_bridge} " \
            f"proto {ROUTE_PROTO}\n"
        if self.net.upstream == "on-link":
            script += f"neigh replace proxy {address} dev {self.host.wan_bridge}\n"
        lan = f"{self.net.lan_address}/64"
        script = (self._lan(state.lan, lan) if state.lan != lan else "") + script
        self._save(State({**state.guests, vmid: address}, lan))
        run_batch(script)
        return script

    def stop(self, vmid: int) -> str:
        """The guest's entries gone, whatever the upstream (no prefix needed); the rest
        as it is."""
        state = self.state()
        address = state.guests.pop(vmid, None)
        if address is None:
            return ""
        script = _deletes(address, self.host)
        run_batch(script, missing_ok=True)
        self._save(state)
        return script

    def update(self, wanted: dict[int, str], dry_run: bool = False) -> str:
        """The kernel's entries as ``wanted`` ({VMID: address}) needs them, the host's
        lan address included; returns the ip -batch applied (or, dry run, to apply; ''
        when nothing differs)."""
        state = self.state()
        if self.net is None and not state.guests and state.lan is None:
            return ""  # ipv6 off, and nothing of pvenat's to take out
        have = self.read(set(state.guests.values()) | set(wanted.values()))
        want = entries(self.net, wanted.values(), self._own()) if self.net else NONE
        if want.host and not dry_run:
            self._answer_on_lan()
        lan = f"{self.net.lan_address}/64" if self.net else None
        script = self._lan(state.lan, lan) + batch(have, want, self.host.lan_bridge,
                                                   self.host.wan_bridge)
        new = State(dict(sorted(wanted.items())), lan)
        if dry_run:
            return script
        if new != state:  # recorded first: a run killed halfway leaves more, not less
            self._save(new)
        if script:
            run_batch(script)
        return script

    def _lan(self, was: str | None, lan: str | None) -> str:
        """The host's address on lan_bridge: the guests' router, DNS server, and what
        dnsmasq builds its DHCPv6 range and router advertisements from
        (--dhcp-range=::,constructor:BRIDGE)."""
        have = {f"{a['local']}/{a['prefixlen']}" for iface in _ip_json(
            "-6", "addr", "show", "dev", self.host.lan_bridge)
            for a in iface.get("addr_info", [])}
        out = ""
        if was and was != lan and was in have:
            out += f"address del {was} dev {self.host.lan_bridge}\n"
        if lan and lan not in have:
            out += f"address replace {lan} dev {self.host.lan_bridge} noprefixroute " \
                "nodad\n"
        return out

    def read(self, known: set) -> Entries:
        """pvenat's entries in the kernel: its marked routes, the proxy entries on
        wan_bridge for ``known`` addresses (the only ones it may take out there), and
        those on lan_bridge, pvenat's own bridge."""
        routes = _ip_json("-6", "route", "show", "proto", str(ROUTE_PROTO))
        proxies = {p["dst"] for p in _ip_json("-6", "neigh", "show", "proxy", "dev",
                                              self.host.wan_bridge)}
        on_lan = {p["dst"] for p in _ip_json("-6", "neigh", "show", "proxy", "dev",
                                             self.host.lan_bridge)}
        return Entries(
            frozenset(r["dst"].split("/")[0] for r in routes
                      if r.get("dev") == self.host.lan_bridge),
            frozenset(proxies & known),
            frozenset(r["dst"] for r in routes if r.get("type") == "unreachable"),
            frozenset(on_lan))

    def _own(self) -> list:
        """On-link, the host's own addresses on wan_bridge inside the prefix."""
        if self.net.upstream != "on-link":
            return []
        prefix = self.net.network
        return [str(a.ip) for a in wan_addresses6(self.host.wan_bridge) if a.ip in prefix]

    def _answer_on_lan(self):
        """proxy_ndp on lan_bridge, pvenat's bridge, for the proxy entries there."""
        path = f"/proc/sys/net/ipv6/conf/{self.host.lan_bridge}/proxy_ndp"
        try:
            with open(path, "r+", encoding="ascii") as f:
                if f.read().strip() != "1":
                    f.seek(0)
                    f.write("1")
        except OSError as e:
            raise PvenatError("host", f"{path}: {e.strerror}") from None

    def _save(self, state: State):
        files.write_atomic(self.path, json.dumps(
            {"guests": {str(v): a for v, a in state.guests.items()}, "lan": state.lan}))


def _deletes(address: str, host) -> str:
    return (f"route del {address}/128 dev {host.lan_bridge} proto {ROUTE_PROTO}\n"
            f"neigh del proxy {address} dev {host.wan_bridge}\n")


# What ip prints for a route or proxy entry that is not there (ESRCH, ENOENT)
_MISSING = ("No such process", "No such file or directory")


def run_batch(script: str, missing_ok: bool = False):
    """``missing_ok``: an entry to delete that is not there is no error."""
    try:
        # -6 for every line: iproute2's batch takes no per-line family option
        proc = subprocess.run(["ip", "-6", "-force", "-batch", "-"], input=script,
                              capture_output=True, text=True)
    except OSError as e:
        raise PvenatError("host", f"ip could not be run: {e.strerror}") from None
    errors = [line for line in proc.stderr.splitlines()
              if not line.startswith("Command failed")
              and not (missing_ok and line.endswith(_MISSING))]
    if proc.returncode != 0 and (errors or not missing_ok):
        raise PvenatError("host", f"ip -batch failed: {proc.stderr.strip()[:300]}")


def _ip_json(*args) -> list:
    try:
        proc = subprocess.run(["ip", "-j", *args], capture_output=True, text=True)
    except OSError as e:
        raise PvenatError("host", f"ip could not be run: {e.strerror}") from None
    if proc.returncode != 0:
        raise PvenatError("host", f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout or "[]")

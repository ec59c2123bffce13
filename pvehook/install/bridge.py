"""Install step: the lan bridge, a stanza in /etc/network/interfaces applied with ifupdown2.

The GUI keeps network edits in interfaces.new until "Apply Configuration" renames it
over interfaces (pve-manager PVE/API2/Network.pm; pvenetcommit.service does the same
at boot), so when that file exists the stanza goes into it too: applying or rebooting
then keeps the bridge. ifupdown2 must parse every changed file before it is written; a
failed apply, or a host that lost its default route or public address afterwards, puts
the files and every device it touched back as they were.
"""

import json
import re

from .. import hostnet, logs
from ..errors import PvenatError
from . import forwarding6, interfaces
from .actions import Action, Do, diff
from .system import INTERFACES

log = logs.get_logger("pvenat.install")
PENDING = INTERFACES + ".new"  # the GUI's pending edits


def install(env):
    host, system = env.host, env.system
    path = system.path(INTERFACES)
    old = system.read(path)
    if old is None:
        raise PvenatError("host", f"{path} does not exist; pvenat edits the file PVE "
                          "writes, so check the host's network setup first")
    span = interfaces.find(old, host.lan_bridge)
    if span is not None:
        have = interfaces.address(old, span)
        if have != str(host.lan_address):
            raise PvenatError("host", f"{host.lan_bridge} already exists in {path} with "
                              f"address {have}; set lan_address: {have} in the pvenat "
                              "config to use it, or pick another lan_bridge")
        return None
    edits = {}  # path -> (old, new, separator)
    for rel in (INTERFACES, PENDING):
        text = system.read(system.path(rel))
        if text is not None and interfaces.find(text, host.lan_bridge) is None:
            edits[system.path(rel)] = (text, interfaces.with_stanza(
                text, host.lan_bridge, host.lan_address), interfaces.separator(text))

    def apply():
        for p, (_, new, _) in edits.items():
            check(system, p, new)  # before anything is written
        device = link_state(system, host.lan_bridge)
        try:
            routes6 = forwarding6.default_routes(system)
        except PvenatError:
            routes6 = []  # no IPv6 here
        for p, (_, new, _) in edits.items():
            system.write(p, new)
        try:
            system.run(*system.ifupdown("ifup", host.lan_bridge))
            healthy(system, host)
        except PvenatError as e:
            rollback(system, host.lan_bridge, {p: old for p, (old, _, _) in edits.items()},
                     device)
            raise PvenatError("host", f"bringing up {host.lan_bridge} failed, so "
                              f"{path} was restored and reapplied: {e.message}") from None
        env.record.update(system, bridge={p: sep for p, (_, _, sep) in edits.items()})
        lost6(env, routes6)

    return Action(f"add bridge {host.lan_bridge} ({host.lan_address}) to {path}"
                  + (" and to the GUI's pending edits" if len(edits) > 1 else ""),
                  Do("\n".join(diff(p, old, new) for p, (old, new, _) in edits.items()),
                     apply))


def uninstall(env):
    """Keeps the bridge while a guest of the cluster may start on it, and says which."""
    host, system = env.host, env.system
    if not env.record.bridge:
        return None
    users = bridge_users(env)
    if users:
        env.notes.append(f"kept {host.lan_bridge}: {users} have a NIC on it, and PVE refuses "
                         "to start a guest here whose bridge is missing; move them, then run "
                         "pvenat uninstall again")
        return None
    edits = {}
    for p, sep in env.record.bridge.items():
        text = system.read(p)
        if text is not None:
            edits[p] = (text, interfaces.without_stanza(text, host.lan_bridge, sep))

    def apply():
        system.run(*system.ifupdown("ifdown", host.lan_bridge))
        for p, (_, new) in edits.items():
            system.write(p, new)
        system.reload_network()
        env.record.update(system, bridge={})

    return Action(f"remove bridge {host.lan_bridge} from "
                  f"{' and '.join(edits) or system.path(INTERFACES)}",
                  Do("\n".join(diff(p, old, new) for p, (old, new) in edits.items()), apply))


def bridge_users(env) -> str:
    """The guests of the cluster with a NIC on lan_bridge, in words ("" for none): any
    node's (a migration or HA recovery brings it here), current config, pending change
    or snapshot (a rollback brings it back); PVE reads the bridge's MTU as it plugs a
    NIC and fails the start without it (pve-common PVE/Network.pm read_bridge_mtu). A
    cluster filesystem that shows no guest (pve-cluster down) proves nothing: that
    keeps the bridge too."""
    if not env.pve.cluster_readable():
        return (f"the cluster filesystem ({env.host.pve.config_dir}) shows no node, so "
                "guests that may")
    node, users = env.pve.node, []
    for gf in env.pve.cluster():
        where = [w for w, config in gf.configs() if any(
            f"bridge={env.host.lan_bridge}" in str(v).split(",")
            for k, v in config.items() if re.fullmatch(r"net[0-9]+", k))]
        if where:
            detail = ([] if gf.node == node else [f"on {gf.node}"]) + [
                w for w in where if w != "current"]
            users.append(f"{gf.vmid}" + (f" ({', '.join(detail)})" if detail else ""))
    return f"guests {', '.join(users)}" if users else ""


def lost6(env, before: list):
    """ifupdown2 turns IPv6 forwarding on for a bridge with an address, and the kernel
    then drops the default routes learned from router advertisements wherever accept_ra
    is not 2 (net/ipv6/route.c __rt6_purge_dflt_routers). With ipv6 on, install set
    accept_ra=2 first (forwarding6.py); otherwise such a route comes back with the next
    advertisement, while the host's IPv4 is unaffected: a warning, not a rollback."""
    now = {forwarding6.route_key(r) for r in forwarding6.default_routes(env.system)}
    gone = [r for r in before if forwarding6.route_key(r) not in now]
    if gone:
        env.warnings.append(
            f"bringing up {env.host.lan_bridge} (ifupdown2 turns IPv6 forwarding on for a "
            f"bridge with an address) made the kernel drop the host's IPv6 "
            f"{forwarding6.routes_text(gone)}; it comes back with the router's next "
            "advertisement. 'ipv6: true' in the pvenat config keeps it (accept_ra=2)")


def check(system, path: str, text: str):
    """ifupdown2 parses the new text, from a scratch file beside the real one. (Not
    "ifup -s": Debian's own ifupdown2 warns about the "bridge-ports none" that PVE's
    accepts and writes.)"""
    scratch = path + ".pvenat-check"
    with open(scratch, "w", encoding="utf-8") as f:
        f.write(text)
    try:
        system.run("ifquery", "-a", "-i", scratch)
    finally:
        system.remove(scratch)


def healthy(system, host):
    """After a network change: the default route and the public address are there."""
    if not system.run("ip", "-j", "route", "show", "default").strip("[]\n "):
        raise PvenatError("host", "the host lost its default route")
    hostnet.public(host)


def link_state(system, name: str):
    """The device's IPv4 addresses and whether it is up, or None when there is none."""
    if not system.link_exists(name):
        return None
    info = json.loads(system.run("ip", "-j", "addr", "show", "dev", name))[0]
    return {"up": "UP" in info.get("flags", []),
            "addresses": [f"{a['local']}/{a['prefixlen']}" for a in info.get("addr_info", [])
                          if a.get("family") == "inet"]}


def rollback(system, bridge: str, old_texts: dict, device):
    """The old files back, and the device as it was: a bridge pvenat made is taken down;
    a device that was there already loses what ifup added and keeps its up/down state."""
    if device is None:
        try:
            system.run(*system.ifupdown("ifdown", bridge))
        except PvenatError:
            pass  # it may never have come up
    elif system.link_exists(bridge):
        now = link_state(system, bridge)
        for addr in set(now["addresses"]) - set(device["addresses"]):
            system.run("ip", "addr", "del", addr, "dev", bridge)
        if now["up"] != device["up"]:
            system.run("ip", "link", "set", bridge, "up" if device["up"] else "down")
    for p, text in old_texts.items():
        system.write(p, text)
    system.reload_network()
    log.error("install.rolled_back", files=sorted(old_texts))

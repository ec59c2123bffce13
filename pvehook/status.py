"""pvenat status: is this host set up, and which guests need attention.

Every check gives a line, whatever the others found: on a host where pvenat install never
ran, the checklist says what is missing instead of stopping at the first error.
"""

import os
import shutil
import subprocess

from . import __version__, dhcp, hostnet
from .context import HOOKSCRIPT, SNIPPET, snippet, units
from .errors import PvenatError
from .plan import plan_for
from .spec import nics

SYSTEMD = "/run/systemd/system"  # present when systemd runs this host (sd_booted)


def checks(ctx, config_path: str, root: str = "/") -> list[tuple[str, bool, str]]:
    """(what, ok, detail) for each check, in the order an admin would fix them. ``root``:
    where install put its files (pvenat install --root)."""
    out = [("version", True, f"pvenat {__version__}")]
    for what, check in (("config", _config), ("hookscript", _snippet), ("bridge", _bridge),
                        ("forwarding", _forwarding), ("ipv6", _ipv6), ("rules", _rules),
                        ("units", _units),
                        ("dhcp", _dhcp), ("guests", _guests)):
        try:
            out += check(ctx, config_path, root)
        except (PvenatError, OSError) as e:
            out.append((what, False, e.message if isinstance(e, PvenatError) else str(e)))
    return out


def _config(ctx, config_path, root):
    if os.path.exists(config_path):
        return [("config", True, config_path)]
    return [("config", False, f"{config_path} missing (defaults in use); run 'pvenat "
             "install'")]


def _snippet(ctx, config_path, root):
    """The file PVE runs for pvenat's hookscript, where storage local keeps snippets;
    where PVE keeps them by default when the storage cannot be read."""
    try:
        path = snippet(ctx.pve, root)
    except PvenatError:
        path = os.path.join(root, SNIPPET.lstrip("/"))
    return [("hookscript", os.path.exists(path),
             path + ("" if os.path.exists(path) else " missing; run 'pvenat install'"))]


def _bridge(ctx, config_path, root):
    bridge = ctx.host.lan_bridge
    try:
        with open(f"{ctx.places.sysfs}/{bridge}/flags") as f:
            up = int(f.read(), 16) & 1 == 1
    except FileNotFoundError:
        up = False
    return [("bridge", up, f"{bridge} up" if up else
             f"{bridge} missing or down; run 'pvenat install'")]


def _forwarding(ctx, config_path, root):
    with open(f"{ctx.places.proc}/sys/net/ipv4/ip_forward") as f:
        on = f.read().strip() == "1"
    return [("forwarding", on, "net.ipv4.ip_forward=1" if on else
             "net.ipv4.ip_forward=0; run 'pvenat install'")]


def _ipv6(ctx, config_path, root):
    """The guests' IPv6 network as resolved, forwarding, and each running guest's route
    and neighbour answer as pvenat recorded them."""
    if ctx.host.ipv6 is None:
        return []
    from . import ipv6
    from .neighbours import Neighbours, entries

    net, why = ipv6.resolve(ctx.host.ipv6, ctx.host.wan_bridge,
                            hostnet.wan_addresses6(ctx.host.wan_bridge))
    out = [("ipv6", True, f"{net.prefix}, {net.upstream}, host {net.lan_address} on "
            f"{ctx.host.lan_bridge}" + (f" ({why})" if why else ""))]
    with open(f"{ctx.places.proc}/sys/net/ipv6/conf/all/forwarding") as f:
        on = f.read().strip() == "1"
    out.append(("ipv6 forwarding", on, "on" if on else "off; run 'pvenat install'"))
    routes = Neighbours(ctx.host, net, ctx.places.state_dir)
    held = routes.state().guests
    want = entries(net, held.values())
    have = routes.read(set(held.values()))
    missing = sorted(str(v) for v, a in held.items()
                     if a not in have.routes or (a in want.proxies and a not in have.proxies))
    out.append(("ipv6 routes", not missing, f"{len(held)} guests routed" if not missing else
                f"guests {', '.join(missing)} lack their route or neighbour answer; run "
                "'pvenat sync'"))
    return out


def _rules(ctx, config_path, root):
    """The base rules, the NAT boundary and (with DHCP on) the guests' DHCP and DNS to
    the host included; jumps that must be first are checked to be first."""
    missing = ctx.rules.base_missing(hostnet.public(ctx.host))
    return [("rules", not missing, "SNAT, hairpin and jumps in place" if not missing else
             f"base rules missing or changed ({', '.join(missing)}); run 'pvenat sync' "
             "(or 'pvenat install')")]


def _units(ctx, config_path, root):
    wanted = units(ctx.host)
    if root != "/":  # installed into a tree (a lab): enabled there, never started
        missing = [unit for unit, target in wanted.items() if not os.path.lexists(
            os.path.join(root, "etc/systemd/system", f"{target}.wants", unit))]
        return [("units", not missing, f"enabled under {root}" if not missing else
                 f"{', '.join(missing)} not enabled under {root}; run 'pvenat install'")]
    if not shutil.which("systemctl") or not os.path.isdir(SYSTEMD):
        return [("units", True, "systemd is not running here; not checked")]
    active = _unit_states("is-active", wanted)
    detail = ", ".join(f"{unit} {state}" for unit, state in active.items())
    down = [unit for unit, state in active.items() if state != "active"]
    if not down:
        return [("units", True, detail)]
    disabled = [unit for unit, state in _unit_states("is-enabled", down).items()
                if state != "enabled"]
    fix = "run 'pvenat install'" if disabled else f"systemctl start {' '.join(down)}"
    return [("units", False, f"{detail}; {fix}")]


def _unit_states(verb: str, names) -> dict:
    """Each unit's own state, as ``systemctl VERB`` prints it, one line a unit. Its exit
    code says nothing about each: is-active exits 0 when any one of them is active."""
    proc = subprocess.run(["systemctl", verb, *names], capture_output=True, text=True)
    states = proc.stdout.split()
    return {unit: states[i] if i < len(states) else "unknown"
            for i, unit in enumerate(names)}


def _dhcp(ctx, config_path, root):
    if not ctx.host.dhcp:
        return [("dhcp", True, "off (dhcp: false)")]
    pid = dhcp.server_pid(ctx.places)
    held = dhcp.read(ctx.places)
    if pid is None:
        return [("dhcp", False, f"dnsmasq is not running ({len(held)} leases waiting); "
                 "systemctl start pvenat-dhcp, or see journalctl -u pvenat-dhcp")]
    reserved = dhcp.read_reserved(ctx.places)
    return [("dhcp", True, f"dnsmasq {pid} on {ctx.host.lan_bridge}, {len(held)} leases" + (
        f", {len(reserved)} addresses of dhcp_range reserved" if reserved else ""))]


def _guests(ctx, config_path, root):
    unhooked, no_address = [], []
    for info in ctx.pve.guests():
        try:
            guest = ctx.pve.guest(info.vmid, info.kind)
        except PvenatError:
            continue
        on_lan = any(n.bridge == ctx.host.lan_bridge for n in nics(guest.kind, guest.config))
        if on_lan and guest.config.get("hookscript") != HOOKSCRIPT:
            unhooked.append(str(info.vmid))
        try:
            plan_for(guest, ctx.host)
        except PvenatError as e:
            if e.code == "no-address":
                no_address.append(str(info.vmid))
    return [("guests without the hookscript", not unhooked,
             ", ".join(unhooked) + " (run 'pvenat attach VMID')" if unhooked else "none"),
            ("managed guests without an address", not no_address,
             ", ".join(no_address) + " (add 'ip:' to their pvenat block)" if no_address
             else "none")]

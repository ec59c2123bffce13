"""pvenat status: is this host set up, and which guests need attention."""

import os
import shutil
import subprocess

from . import __version__, hostnet, ruleset
from .context import HOOKSCRIPT, SNIPPET, UNITS
from .errors import PvenatError
from .plan import plan_for


def checks(ctx, config_path: str, root: str = "/") -> list[tuple[str, bool, str]]:
    """(what, ok, detail) for each check, in the order an admin would fix them."""
    host = ctx.host
    out = [("version", True, f"pvenat {__version__}"),
           ("config", os.path.exists(config_path),
            config_path if os.path.exists(config_path) else
            f"{config_path} missing (defaults in use); run 'pvenat install'"),
           ("hookscript", os.path.exists(os.path.join(root, SNIPPET)),
            f"/{SNIPPET}" + ("" if os.path.exists(os.path.join(root, SNIPPET)) else
                             " missing; run 'pvenat install'"))]
    up = _flag_up(host.lan_bridge, ctx.places.sysfs)
    out.append(("bridge", up, f"{host.lan_bridge} {'up' if up else 'missing or down'}"))
    with open(f"{ctx.places.proc}/sys/net/ipv4/ip_forward") as f:
        fwd = f.read().strip() == "1"
    out.append(("forwarding", fwd, "net.ipv4.ip_forward=" + ("1" if fwd else "0")))
    try:
        ok = ruleset.base_in_place(ctx.kernel.read(), host, hostnet.public(host))
        out.append(("rules", ok, "SNAT, hairpin and jumps in place" if ok else
                    "base rules missing or changed; run 'pvenat sync'"))
    except PvenatError as e:
        out.append(("rules", False, e.message))
    out.append(_units())
    out += _guests(ctx)
    return out


def _flag_up(bridge, sysfs) -> bool:
    try:
        with open(f"{sysfs}/{bridge}/flags") as f:
            return int(f.read(), 16) & 1 == 1
    except FileNotFoundError:
        return False


def _units():
    if not shutil.which("systemctl"):
        return ("units", True, "no systemd here; not checked")
    proc = subprocess.run(["systemctl", "is-active", *UNITS], capture_output=True, text=True)
    states = proc.stdout.split()
    ok = proc.returncode == 0
    return ("units", ok, ", ".join(f"{u} {s}" for u, s in zip(UNITS, states)))


def _guests(ctx):
    node = ctx.host.pve.node_name()
    unhooked, no_address = [], []
    for info in ctx.configs.guests(node):
        try:
            guest = ctx.configs.guest(node, info.vmid, info.kind)
        except PvenatError:
            continue
        on_lan = any(f"bridge={ctx.host.lan_bridge}" in str(v).split(",")
                     for k, v in guest.config.items() if k.startswith("net"))
        if on_lan and guest.config.get("hookscript") != HOOKSCRIPT:
            unhooked.append(str(info.vmid))
        try:
            plan_for(guest, ctx.host)
        except PvenatError as e:
            if "no address to forward to" in e.message:
                no_address.append(str(info.vmid))
    return [("guests without the hookscript", not unhooked,
             ", ".join(unhooked) + " (run 'pvenat attach VMID')" if unhooked else "none"),
            ("managed guests without an address", not no_address,
             ", ".join(no_address) + " (add 'ip:' to their pvenat block)" if no_address
             else "none")]

"""pvenat install / uninstall: turn a stock PVE host into the NAT layout, and back.

One module per resource, each with its install and its uninstall side by side; install
runs them in STEPS order, uninstall in reverse. A step plans Actions (install/actions.py)
from what the host has now, so --dry-run prints exactly what a run would do. What pvenat
created is recorded (install/record.py), so uninstall removes that and nothing else.
"""

from .. import logs
from ..errors import PvenatError
from . import bridge, dhcp, forwarding, forwarding6, hookscript, rules, token, units
from .record import Record
from .system import System

log = logs.get_logger("pvenat.install")
# IPv6 forwarding (with accept_ra=2 where the host's default route came from router
# advertisements) before the bridge: ifupdown2 turns IPv6 forwarding on for a bridge with
# an address, and any such write makes the kernel drop those routes where accept_ra is
# not 2 (forwarding6.py)
STEPS = (token, forwarding6, bridge, forwarding, rules, hookscript, dhcp, units)


class Env:
    """What the steps work with."""

    def __init__(self, ctx, system: System, config_path: str, token: bool = False):
        self.host = ctx.host
        self.pve = ctx.pve  # reads configs, writes as root through pvesh (pve.Pve)
        self.rules = ctx.rules  # the kernel's rules (rules.Backend)
        self.places = ctx.places
        self.system = system
        self.config_path = config_path
        self.token = token  # --token: make an API token for the https backend
        self.record = Record.load(system)
        self.notes = []  # what uninstall kept, and why: the run did not finish the job
        self.warnings = []  # what a run left undone that does not matter to the guests


def install_actions(env: Env) -> list:
    if env.system.root == "/" and not env.system.is_pve():
        raise PvenatError("host", "this is not a Proxmox VE host (no pveversion); pvenat "
                          "install changes nothing here")
    actions = []
    for step in STEPS:
        actions += _listed(step.install(env))
    return actions


def uninstall_actions(env: Env) -> list:
    actions = []
    for step in reversed(STEPS):
        actions += _listed(step.uninstall(env))
    return actions


def _listed(planned) -> list:
    if planned is None:
        return []
    return [a for a in planned if a is not None] if isinstance(planned, list) else [planned]


def run_actions(env: Env, actions: list, dry_run: bool, out):
    """Print each action; apply it unless dry_run."""
    if not actions:
        print("pvenat: nothing to change", file=out)
    for action in actions:
        print(f"{'would ' if dry_run else ''}{action.what}", file=out)
        detail = action.detail()
        if dry_run and detail:
            print("  " + detail.rstrip("\n").replace("\n", "\n  "), file=out)
        if not dry_run:
            action.apply(env.system, env.record)
            log.info("install.step", step=action.what)

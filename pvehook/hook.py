"""The guest hookscript's phases: what PVE runs as ``pvenat.py VMID PHASE``.

pre-start   read Notes and tags, check, add the guest's rules; a non-zero exit refuses
            the start, and then nothing was applied.
post-start  turn on hairpin for the guest's bridge ports (they exist only now).
pre-stop    nothing (it does not run when a guest shuts down from inside).
post-stop   remove the guest's rules and its tracked connections; never fails the stop,
            needs no API.
"""

import os
import sys

from . import config, hostnet, index, logs, netfilter, ruleset
from .errors import PvenatError
from .plan import Claim, Held, plan_for, summary
from .pve import PveApi
from .pveconf import ConfigFiles

log = logs.get_logger("pvenat.hook")
PHASES = ("pre-start", "post-start", "pre-stop", "post-stop")
HOOKSCRIPT = "local:snippets/pvenat.py"  # how a guest's config names this script


class Context:
    """What a phase works with; tests and the lab pass their own parts."""

    def __init__(self, host, api, configs, backend, lock_path=netfilter.LOCK_PATH,
                 sysfs="/sys/class/net"):
        self.host = host
        self.api = api  # the PVE API: guest lists, config changes
        self.configs = configs  # guest configs and sync's guest list: API or /etc/pve files
        self.backend = backend
        self.lock_path = lock_path
        self.sysfs = sysfs


def context(host) -> Context:
    api = PveApi(host.pve)
    configs = ConfigFiles(host.pve.config_dir) if host.pve.config_source == "files" else api
    return Context(host, api, configs, netfilter.Iptables())


def main(vmid: int, phase: str, config_path=None) -> int:
    """The hookscript and ``pvenat hook``: one line for the task log, PVE's exit code.

    Kept apart from the CLI so that a hook imports only what a hook needs.
    """
    try:
        host = config.load(config.config_path(config_path))
        logs.configure(host.log_file)
        line = run(context(host), vmid, phase)
    except PvenatError as e:
        if phase == "post-stop":  # a failing post-stop would only be a warning anyway
            print(f"pvenat: {vmid}: WARNING: {e.message}", flush=True)
            return 0
        print(f"pvenat: error: {e.message}", file=sys.stderr)
        return 1
    if line:
        print(line, flush=True)
    return 0


def run(ctx: Context, vmid: int, phase: str) -> str:
    """Run one phase; returns the line for the task log ('' when there is nothing to say)."""
    if phase == "pre-start":
        return pre_start(ctx, vmid)
    if phase == "post-start":
        return post_start(ctx, vmid)
    if phase == "post-stop":
        return post_stop(ctx, vmid)
    return ""


def load_plan(ctx, vmid):
    """The guest's checked plan, or None when pvenat does not manage it."""
    # During a live migration the config still sits on the source node.
    node = os.environ.get("PVE_MIGRATED_FROM") or ctx.host.pve.node_name()
    return plan_for(ctx.configs.guest(node, vmid), ctx.host)


def start_change(ctx, plan, public_ip):
    """The change a start makes: refused when another guest holds the ports or address."""
    def change(current):
        claims = ruleset.held_claims(current)
        Held(claims, ruleset.guest_addresses(current)).check(plan)
        return ruleset.with_guest(current, ctx.host, public_ip, plan.vmid, plan, claims)
    return change


def change_guest(ctx, vmid, plan, public_ip) -> str:
    """Apply one guest's start (plan) or stop (None); returns the script applied.

    Built on pvenat's index when it can be trusted, without reading the kernel; when
    there is none, or the kernel refuses a change built on it, read the kernel.
    The caller holds the lock.
    """
    state = ctx.host.state_dir
    known = index.load(state)
    if known is not None and (plan is None or known.public_ip == public_ip):
        if plan is not None:
            Held(known.claims, known.addresses).check(plan)
        old = [c for c in known.claims if c.vmid == vmid]
        new = [] if plan is None else [Claim(f.proto, *f.public, vmid) for f in plan.forwards]
        if not old and not new:
            return ""
        current = known.tables(ctx.host, vmid, old + new)
        script = ruleset.restore_script(current, ruleset.with_guest(
            current, ctx.host, known.public_ip, vmid, plan, known.claims))
        after = known.without(vmid) if plan is None else known.with_plan(plan, public_ip)
        recorded = None
        if plan is not None:  # claims are recorded before they exist, and kept until gone
            recorded = index.Index(public_ip, sorted(set(known.claims + after.claims)),
                                   {**known.addresses, **after.addresses})
            index.save(state, recorded)
        try:
            if script:
                ctx.backend.apply(script)
            if recorded != after._replace(claims=sorted(after.claims)):  # else saved already
                index.save(state, after)
            return script
        except netfilter.KernelRefused as e:
            log.warning("index.stale", vmid=vmid, error=e.stderr)
    wanted = {}

    def change(current):
        if plan is None:
            wanted["tables"] = ruleset.with_guest(current, ctx.host, None, vmid, None)
        else:
            wanted["tables"] = start_change(ctx, plan, public_ip)(current)
        return wanted["tables"]

    index.drop(state)  # while the kernel changes under a recorded index, trust neither
    script = netfilter.update(ctx.backend, change)
    index.save(state, index.from_tables(wanted["tables"], public_ip or ""))
    return script


def pre_start(ctx, vmid):
    plan = load_plan(ctx, vmid)
    if plan is None:
        return ""
    pub = hostnet.public_ip(ctx.host)
    with netfilter.locked(ctx.lock_path):
        script = change_guest(ctx, vmid, plan, pub)
    log.info("guest.started", vmid=vmid, address=plan.address, changed=bool(script),
             forwards=[f"{f.proto} {f.describe()}" for f in plan.forwards])
    return summary(plan, pub)


def post_start(ctx, vmid):
    if not ctx.backend.has_chain("nat", ruleset.guest_chain(vmid)):
        return ""
    ports = hostnet.guest_ports(ctx.host.lan_bridge, ctx.sysfs).get(vmid, [])
    for port in ports:
        if not hostnet.hairpin_on(ctx.host.lan_bridge, port, ctx.sysfs):
            hostnet.set_hairpin(ctx.host.lan_bridge, port, ctx.sysfs)
    log.info("guest.hairpin", vmid=vmid, ports=ports)
    return f"pvenat: {vmid}: hairpin on {', '.join(ports)}" if ports else ""


def post_stop(ctx, vmid):
    """Remove the guest's rules. Errors are reported, never raised: the guest is down."""
    try:
        known = index.load(ctx.host.state_dir)
        if known is None:
            if not ctx.backend.has_chain("nat", ruleset.guest_chain(vmid)):
                return ""
            addresses = ruleset.guest_addresses(ctx.backend.read())
        else:
            addresses = known.addresses
        with netfilter.locked(ctx.lock_path):
            script = change_guest(ctx, vmid, None, None)
        address = next((a for a, v in addresses.items() if v == vmid), None)
        if script and address:
            try:
                hostnet.forget_connections(hostnet.public_ip(ctx.host), address)
            except PvenatError:
                pass  # the rules are gone; its tracked flows expire on their own
    except PvenatError as e:
        log.error("guest.stop_failed", vmid=vmid, error=e.message)
        return f"pvenat: {vmid}: WARNING: rules not removed: {e.message}; run 'pvenat sync'"
    if not script:
        return ""
    log.info("guest.stopped", vmid=vmid)
    return f"pvenat: {vmid}: forwards removed"

"""The guest hookscript's phases: what PVE runs as ``pvenat.py VMID PHASE``.

pre-start   read Notes and tags, check, add the guest's rules; a non-zero exit refuses
            the start, and then nothing was applied.
post-start  turn on hairpin for the guest's bridge ports (they exist only now).
pre-stop    nothing (it does not run when a guest shuts down from inside).
post-stop   remove the guest's rules and its tracked connections; never fails the stop,
            needs no API.
"""

import sys

from . import config, dhcp, hostnet, index, leases, logs, netfilter, ruleset
from .context import Places, context
from .errors import PvenatError
from .plan import Held, plan_for, summary

log = logs.get_logger("pvenat.hook")
PHASES = ("pre-start", "post-start", "pre-stop", "post-stop")


def main(vmid: int, phase: str, config_path=None) -> int:
    """The hookscript and ``pvenat hook``: one line for the task log, PVE's exit code.

    Kept apart from the CLI so that a hook imports only what a hook needs.
    """
    try:
        places = Places.from_env()
        host = config.load(config.config_path(config_path), places.state_dir)
        logs.configure(host.log_file)
        line = run(context(host, places), vmid, phase)
    except (PvenatError, OSError) as e:
        message = error_text(e)
        if phase == "post-stop":  # never fail the stop: PVE would only warn anyway
            print(f"pvenat: {vmid}: WARNING: {message}", flush=True)
            return 0
        print(f"pvenat: error: {message}", file=sys.stderr)
        return 1
    if line:
        print(line, flush=True)
    return 0


def error_text(e) -> str:
    """A PvenatError's message, or an OSError's file and reason."""
    if isinstance(e, PvenatError):
        return e.message
    return f"{e.filename}: {e.strerror}" if e.filename else str(e)


def run(ctx, vmid: int, phase: str) -> str:
    """Run one phase; returns the line for the task log ('' when there is nothing to say)."""
    if phase == "pre-start":
        return pre_start(ctx, vmid)
    if phase == "post-start":
        return post_start(ctx, vmid)
    if phase == "post-stop":
        return post_stop(ctx, vmid)
    return ""


def load_guest(ctx, vmid):
    # During a live migration the config still sits on the source node.
    return ctx.pve.guest(vmid, node=ctx.pve.migrated_from())


def load_plan(ctx, vmid):
    """The guest's checked plan, or None when pvenat does not manage it."""
    return plan_for(load_guest(ctx, vmid), ctx.host)


def running_here(current) -> Held:
    """What the guests running on this node hold, as the kernel's tables record it."""
    return Held(ruleset.held_claims(current), ruleset.guest_addresses(current))


def start_change(ctx, plan, public):
    """The change a start makes, for netfilter.update: refused when another guest holds
    the ports or the address."""
    def change(current):
        held = running_here(current)
        held.check(plan)
        wanted = ruleset.with_guest(current, ctx.host, public, plan.vmid, plan,
                                    held.all_claims())
        return wanted, wanted
    return change


def refusals(ctx, guest, plan, who: str = "") -> list[PvenatError]:
    """What a start of the guest would refuse beyond its own plan (plan_for's; None when
    pvenat does not manage it), found by pre-start's own checks with nothing changed:
    no public address, another guest's address or MAC in the DHCP leases, ports or an
    address a guest running here holds. One entry per failed check.

    For attach and check: an admin hears of a problem when making it, not at the next
    start. No lock: nothing is written, and a start checks again under it."""
    forwards = plan is not None and bool(plan.forwards)
    mine = leases.leases_for(guest, plan, ctx.host)
    checks = []
    if forwards:
        checks.append(lambda: hostnet.public(ctx.host))
    if mine:
        checks.append(lambda: leases.Holders(dhcp.read(ctx.places)).check(mine))
    if forwards:
        checks.append(lambda: running_here(ctx.kernel.read()).check(plan, who))
    out = []
    for check in checks:
        try:
            check()
        except PvenatError as e:
            out.append(e)
    return out


def stop_change(ctx, vmid):
    def change(current):
        wanted = ruleset.with_guest(current, ctx.host, None, vmid, None)
        return wanted, wanted
    return change


def change_guest(ctx, vmid, plan, public) -> str:
    """Apply one guest's start (plan) or stop (None); returns the script applied.

    Built on pvenat's index when there is one for this public address; when there is
    none, or the kernel refuses a change built on it, from the kernel. The caller holds
    the lock.
    """
    known = index.load(ctx.places.state_dir)
    if known is not None and (plan is None or known.public == public):
        try:
            return _change_from_index(ctx, known, vmid, plan, public)
        except netfilter.KernelRefused as e:
            log.warning("index.stale", vmid=vmid, error=e.stderr)
    return _change_from_kernel(ctx, vmid, plan, public)


def _change_from_index(ctx, known, vmid, plan, public) -> str:
    """The change computed from the index alone, without reading the kernel: the touched
    chains are always rewritten whole (index.Index.tables)."""
    state = ctx.places.state_dir
    if plan is not None:
        Held(known.claims, known.addresses).check(plan)
    old = [c for c in known.claims if c.vmid == vmid]
    new = [] if plan is None else plan.claims()
    if not old and not new:
        return ""
    current = known.tables(ctx.host, vmid, old + new)
    script = ruleset.restore_script(current, ruleset.with_guest(
        current, ctx.host, known.public, vmid, plan, known.claims))
    after = known.without(vmid) if plan is None else known.with_plan(plan, public)
    recorded = None
    if plan is not None:  # claims are recorded before they exist, and kept until gone
        recorded = index.Index(public, sorted(set(known.claims + after.claims)),
                               {**known.addresses, **after.addresses})
        index.save(state, recorded)
    if script:
        ctx.kernel.apply(script)
    if recorded != after._replace(claims=sorted(after.claims)):  # else saved already
        index.save(state, after)
    return script


def _change_from_kernel(ctx, vmid, plan, public) -> str:
    state = ctx.places.state_dir
    change = stop_change(ctx, vmid) if plan is None else start_change(ctx, plan, public)
    index.drop(state)  # while the kernel changes under a recorded index, trust neither
    script, wanted = netfilter.update(ctx.kernel, change)
    index.save(state, index.from_tables(wanted, public))
    return script


def pre_start(ctx, vmid):
    """The guest's rules and its DHCP lease, both checked before either is changed."""
    guest = load_guest(ctx, vmid)
    plan = plan_for(guest, ctx.host)
    mine = leases.leases_for(guest, plan, ctx.host)
    if plan is None and not mine:
        return ""
    forwards = plan is not None and bool(plan.forwards)
    public = hostnet.public(ctx.host) if forwards else None
    with netfilter.locked(ctx.places.lock_path):
        held = dhcp.read(ctx.places) if mine else []
        leases.Holders(held).check(mine)
        script = change_guest(ctx, vmid, plan if forwards else None, public)
        released = []
        if mine:
            dhcp.write(ctx.places, [lease for lease in held if lease.vmid != vmid] + mine)
            # the old lease of a MAC or an address that changed: the guest gets its
            # address at once, not in 12 h. Not a reason to refuse the start: the guest
            # gets its address once the old lease expires.
            try:
                released = dhcp.settle(ctx.host, ctx.places)
            except PvenatError as e:
                log.warning("dhcp.release_failed", vmid=vmid, error=e.message)
    log.info("guest.started", vmid=vmid, address=mine[0].ip if mine else plan.address,
             changed=bool(script), leases=[lease.mac for lease in mine],
             released=[f"{mac} {ip}" for mac, ip in released],
             forwards=[f"{f.proto} {f.describe()}" for f in plan.forwards] if plan else [])
    if forwards:
        return summary(plan, public.ip)
    return f"pvenat: {vmid}: DHCP lease {mine[0].ip} for {', '.join(m.mac for m in mine)}"


def post_start(ctx, vmid):
    """The guest's ports on lan_bridge exist only now: set them up (hostnet.ensure_ports),
    whether or not the guest has forwards (its outbound traffic needs them too)."""
    ports = hostnet.guest_ports(ctx.host.lan_bridge, ctx.places.sysfs).get(vmid, [])
    if not ports:
        return ""
    hostnet.ensure_ports(ctx.host.lan_bridge, [vmid], ctx.places)
    log.info("guest.hairpin", vmid=vmid, ports=ports)
    return f"pvenat: {vmid}: hairpin on {', '.join(ports)}"


def post_stop(ctx, vmid):
    """Remove the guest's rules. Errors are reported, never raised: the guest is down."""
    try:
        known = index.load(ctx.places.state_dir)
        if known is None:
            if not ctx.kernel.has_chain("nat", ruleset.guest_chain(vmid)):
                return ""
            addresses = ruleset.guest_addresses(ctx.kernel.read())
        else:
            addresses = known.addresses
        with netfilter.locked(ctx.places.lock_path):
            script = change_guest(ctx, vmid, None, None)
        address = next((a for a, v in addresses.items() if v == vmid), None)
        if script and address:
            try:
                ctx.kernel.forget_connections(hostnet.public(ctx.host).ip, address)
            except PvenatError:
                pass  # the rules are gone; its tracked flows expire on their own
    except (PvenatError, OSError) as e:
        message = error_text(e)
        log.error("guest.stop_failed", vmid=vmid, error=message)
        return f"pvenat: {vmid}: WARNING: rules not removed: {message}; run 'pvenat sync'"
    if not script:
        return ""
    log.info("guest.stopped", vmid=vmid)
    return f"pvenat: {vmid}: forwards removed"

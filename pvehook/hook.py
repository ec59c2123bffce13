"""The guest hookscript's phases: what PVE runs as ``pvenat.py VMID PHASE``.

pre-start   read Notes and tags, check, add the guest's rules; a non-zero exit refuses
            the start, and then nothing was applied.
post-start  turn on hairpin for the guest's bridge ports (they exist only now).
pre-stop    nothing (it does not run when a guest shuts down from inside).
post-stop   remove the guest's rules and its tracked connections; never fails the stop,
            needs no API.
"""

import sys

from . import config, dhcp, files, hostnet, leases, logs
from .context import HOOKSCRIPT, Places, context
from .errors import PvenatError
from .plan import plan_for, summary
from .spec import nics

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


def refusals(ctx, guest, plan, who: str = "") -> list[PvenatError]:
    """What a start of the guest would refuse beyond its own plan (plan_for's; None when
    pvenat does not manage it), found by pre-start's own checks with nothing changed:
    no public address, another guest's address or MAC in the DHCP leases, ports or an
    address a guest running here holds. One entry per failed check.

    For attach and check: an admin hears of a problem when making it, not at the next
    start. No lock: nothing is written, and a start checks again under it."""
    forwards = plan is not None and bool(plan.forwards)
    mine = leases.leases_for(guest, plan, ctx.host, net6=hostnet.ipv6_net(ctx.host))
    checks = []
    if forwards:
        checks.append(lambda: hostnet.public(ctx.host))
    if mine:
        checks.append(lambda: leases.Holders(dhcp.read(ctx.places)).check(mine))
    if forwards:
        checks.append(lambda: ctx.rules.held().check(plan, who))
    out = []
    for check in checks:
        try:
            check()
        except PvenatError as e:
            out.append(e)
    return out


def address6(guest, plan, net6, bridge: str) -> str | None:
    """A managed guest's IPv6 address (its plan's; a guest with pvenat's hookscript and
    a NIC on lan_bridge gets one too), None with ipv6 off or for a guest pvenat does not
    manage."""
    if net6 is None:
        return None
    if plan is None and (guest.config.get("hookscript") != HOOKSCRIPT or not any(
            n.bridge == bridge for n in nics(guest.kind, guest.config))):
        return None
    from .ipv6 import of_guest

    return of_guest(guest, plan, net6, bridge)


def pre_start(ctx, vmid):
    """The guest's rules, its DHCP lease and its IPv6 route, all checked before any is
    changed."""
    guest = load_guest(ctx, vmid)
    net6 = hostnet.ipv6_net(ctx.host)
    plan = plan_for(guest, ctx.host, net6=net6)
    mine = leases.leases_for(guest, plan, ctx.host, net6=net6)
    ip6 = address6(guest, plan, net6, ctx.host.lan_bridge)
    if plan is None and not mine and ip6 is None:
        return ""
    forwards = plan is not None and bool(plan.forwards)
    public = hostnet.public(ctx.host, net6) if forwards else None
    with files.locked(ctx.places.lock_path):
        held = dhcp.read(ctx.places) if mine else []
        leases.Holders(held).check(mine)
        routes = neighbours(ctx, net6) if ip6 else None
        if routes:
            routes.check(vmid, ip6)
        rules = ctx.rules
        script = (rules.start(plan, public) if forwards else rules.stop(vmid)).text
        if routes:
            routes.start(vmid, ip6)
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
    log.info("guest.started", vmid=vmid,
             address=mine[0].ip if mine else plan.address if plan else None,
             address6=ip6, changed=bool(script), leases=[lease.mac for lease in mine],
             released=[f"{mac} {ip}" for mac, ip in released],
             forwards=[f"{f.proto} {f.describe()}" for f in plan.forwards] if plan else [])
    if forwards:
        return summary(plan, public.ip)
    if mine:
        line = f"pvenat: {vmid}: DHCP lease {mine[0].ip} for {', '.join(m.mac for m in mine)}"
    else:
        return f"pvenat: {vmid}: IPv6 {ip6}"
    return f"{line}; IPv6 {ip6}" if ip6 else line


def neighbours(ctx, net6):
    from .neighbours import Neighbours  # with ipv6 on alone

    return Neighbours(ctx.host, net6, ctx.places.state_dir)


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
    """Remove the guest's rules and IPv6 route. Errors are reported, never raised: the
    guest is down."""
    try:
        rules = ctx.rules
        had = rules.guest(vmid)
        routes = neighbours(ctx, None) if ctx.host.ipv6 else None
        routed = routes is not None and vmid in routes.state().guests
        if had is None and not routed:
            return ""
        with files.locked(ctx.places.lock_path):
            script = rules.stop(vmid).text if had is not None else ""
            if routed:
                routes.stop(vmid)
        if script and had.address:
            try:
                rules.forget(hostnet.public(ctx.host, None), had.address)  # IPv4's
            except PvenatError:
                pass  # the rules are gone; its tracked flows expire on their own
    except (PvenatError, OSError) as e:
        message = error_text(e)
        log.error("guest.stop_failed", vmid=vmid, error=message)
        return f"pvenat: {vmid}: WARNING: rules not removed: {message}; run 'pvenat sync'"
    if not script and not routed:
        return ""
    log.info("guest.stopped", vmid=vmid)
    done = ["forwards removed"] if script else []
    return f"pvenat: {vmid}: {' and '.join(done + (['IPv6 route removed'] if routed else []))}"

"""pvenat sync: make this node's kernel match what PVE says, for every guest at once.

Run at boot, by a timer every minute and by hand. It catches what hooks alone miss:
Notes edited while a guest runs, a live migration's source (which gets no post-stop),
chains someone flushed, bridge ports that PVE plugged anew without the hooks (a container
rebooted from inside).

Three steps: plan (read every running guest's config, outside the lock), apply (under
pvenat's lock: decide which guests are in, render, write the difference), ports (the
bridge ports, as post-start sets them up).
"""

import json
import os

from . import __version__, dhcp, files, hook, hostnet, leases, logs, plancache
from .rules import Wanted
from .context import HOOKSCRIPT
from .errors import PvenatError
from .plan import plan_for

log = logs.get_logger("pvenat.sync")


class SyncResult:
    """What a sync did. A plain class: the timer runs every minute, and importing
    dataclasses would cost each run more than this class saves."""

    def __init__(self):
        self.script = ""
        self.forwarded = []  # VMIDs with rules after the sync
        self.added, self.updated, self.removed = [], [], []
        self.problems = {}  # VMID -> message
        self.hairpin = []  # ports turned on
        self.leases = None  # the DHCP leases after the sync, when they changed
        self.reserved = []  # and the addresses reserved in dhcp_range then
        self.released = []  # (MAC, address) of stale leases the DHCP server was told to drop
        self.dhcp_problem = ""  # why it could not be told
        self.routes = ""  # the IPv6 routes and neighbour answers changed (ip -batch)

    def lines(self, node: str, dry_run: bool) -> list[str]:
        would = "would be " if dry_run else ""
        out = []
        for vmid, message in sorted(self.problems.items()):
            out.append(f"pvenat sync: guest {vmid} left as it was: {message}")
        if self.dhcp_problem:
            out.append(f"pvenat sync: {self.dhcp_problem}")
        changes = [f"{what} {', '.join(map(str, vmids))}" for what, vmids in (
            (f"{would}added", self.added), (f"{would}updated", self.updated),
            (f"{would}removed (not running on {node})", self.removed)) if vmids]
        if self.script and not changes:
            changes = [f"base rules {would}repaired"]
        if self.routes:
            changes.append(f"IPv6 routes {would}changed ({self.routes.count(chr(10))})")
        if self.hairpin:
            changes.append(f"hairpin {would}turned on for {', '.join(self.hairpin)}")
        if self.leases is not None:
            reserved = f", {len(self.reserved)} reserved" if self.reserved else ""
            changes.append(f"DHCP leases {would}rewritten ({len(self.leases)}{reserved})")
        if self.released:
            changes.append(f"stale DHCP leases {would}released: "
                           + ", ".join(f"{mac} {ip}" for mac, ip in self.released))
        count = f"{len(self.forwarded)} guests forwarded"
        out.append(f"pvenat sync: {count}; {'; '.join(changes)}" if changes
                   else f"pvenat sync: nothing to change ({count})")
        return out


class Planned:
    """The guests this node runs, as read before taking the lock."""

    def __init__(self, running: dict, seen: set):
        self.running = running  # VMID -> kind, as the guest listing says
        self.seen = seen  # VMIDs whose NICs existed just before the listing
        self.plans = {}  # VMID -> GuestPlan
        self.broken = set()  # VMIDs whose config could not be read or planned
        self.leases = []  # the leases of the guests here that have the hookscript
        self.net6 = None  # the guests' IPv6 network (ipv6.Net), None with ipv6 off
        self.addresses6 = {}  # VMID -> IPv6 address of the managed guests running here


def plan(ctx, result: SyncResult, dry_run: bool) -> Planned:
    """Every running guest's plan, from the plan cache where its config is unchanged; and
    with DHCP on, the leases of every guest here that has pvenat's hookscript, running or
    not (a guest keeps its address when it stops)."""
    host = ctx.host
    net6 = hostnet.ipv6_net(host)
    cache_path = os.path.join(ctx.places.state_dir, "plans.json")
    cached, fresh = plancache.load(cache_path), {}
    host_key = plancache.host_key(host, net6)
    seen = ctx.pve.running()
    # Running here means PVE's devices for it are here: the API's status comes from
    # pvestatd, seconds late, and would bring back a guest whose post-stop just ran.
    listed = ctx.pve.guests()
    out = Planned({i.vmid: i.kind for i in listed if i.vmid in seen}, seen)
    out.net6 = net6
    for info in listed:
        running = info.vmid in out.running
        if not running and not host.dhcp:
            continue
        guest = plan = None
        try:
            guest = ctx.pve.guest(info.vmid, info.kind)
            key = plancache.fingerprint(host_key, guest)
            fresh[key] = plan = cached[key] if key in cached else plan_for(guest, host,
                                                                           net6=net6)
            if plan is not None and running:
                out.plans[info.vmid] = plan
            if running and net6 is not None:
                address = hook.address6(guest, plan, net6, host.lan_bridge)
                if address:
                    out.addresses6[info.vmid] = address
        except PvenatError as e:
            if running:
                result.problems[info.vmid] = e.message
                out.broken.add(info.vmid)
        if guest is not None and guest.config.get("hookscript") == HOOKSCRIPT:
            out.leases += leases.leases_for(guest, plan, host, net6=net6)
    if fresh.keys() != cached.keys() and not dry_run:
        plancache.save(cache_path, fresh)
    return out


def apply(ctx, planned: Planned, result: SyncResult, dry_run: bool):
    """Under pvenat's lock: decide which guests are in, and have the rules backend write
    the difference (rules.Backend.reconcile)."""
    host, places = ctx.host, ctx.places
    public = hostnet.public(host, planned.net6)
    last = None if dry_run else LastSync.load(places.state_dir)

    def decide(live: set) -> Wanted:
        """``live``: the guests the kernel has rules for."""
        here = ctx.pve.running()
        # NICs gone since the listing: the guest stopped meanwhile, and its post-stop may
        # have cleaned up already; it is not running, whatever the listing said.
        stopped = planned.seen - here
        result.problems = {v: m for v, m in result.problems.items()
                           if v in planned.broken and v not in stopped}
        # Not listed as running here, yet its NICs are (a live migration's target while
        # the config still sits on the source), or PVE holds its config lock (a start
        # between pre-start and its NICs, a stop before post-stop): its own hooks have
        # it in hand.
        gone = live - (planned.running.keys() - stopped)
        busy = (gone & here) | ctx.pve.locked(gone - here)
        plans = {v: p for v, p in planned.plans.items() if v not in stopped}
        keep = (planned.broken - stopped) | busy
        return Wanted(plans, keep, LastSync.inputs(host, public, plans, keep))

    done = ctx.rules.reconcile(public, decide, last and last.digest, dry_run)
    result.script, result.forwarded = done.text, done.forwarded
    if done.same:  # it would decide the same again
        result.problems.update(last.problems)
    else:
        result.added, result.updated, result.removed = done.added, done.updated, done.removed
        result.problems.update(done.refused)
        if not dry_run:
            LastSync(done.record, done.refused).save(places.state_dir)
    if host.dhcp:
        apply_leases(ctx, planned.leases, result, dry_run)
    apply_routes(ctx, planned, result, dry_run)


def apply_routes(ctx, planned: Planned, result: SyncResult, dry_run: bool):
    """The IPv6 routes and neighbour answers of the managed guests running here (none
    with ipv6 off). A guest whose address another has already is left out, and
    reported; a guest running here that the listing does not show (a live migration's
    target) or whose config cannot be read keeps what its pre-start gave it."""
    from .neighbours import Neighbours

    routes = Neighbours(ctx.host, planned.net6, ctx.places.state_dir)
    held = routes.state().guests
    here = ctx.pve.running()
    want = {v: a for v, a in held.items()
            if v in here and (v not in planned.running or v in planned.broken)}
    owners = {a: v for v, a in want.items()}
    for vmid in sorted(planned.addresses6, key=lambda v: (v not in held, v)):
        address = planned.addresses6[vmid]
        if vmid not in here:
            continue
        if address in owners:
            result.problems[vmid] = (f"IPv6 address {address} is routed to guest "
                                     f"{owners[address]} already; give one of them "
                                     "another address")
            continue
        owners[address], want[vmid] = vmid, address
    result.routes = routes.update(want, dry_run)


class LastSync:
    """What the last sync decided from, hashed with the kernel's state by the rules
    backend (Reconciled.record), and the problems it found. A sync whose inputs and
    kernel hash the same needs no reconcile: on a host with 1,000 guests that is a third
    of the sync the timer runs every minute. The backend trusts it only while its index,
    which the record vouches for, is there."""

    NAME = "sync.json"

    def __init__(self, digest: str, problems: dict):
        self.digest, self.problems = digest, problems

    @staticmethod
    def inputs(host, public, plans: dict, keep: set) -> str:
        return repr((__version__, host, public, sorted(plans.items()), sorted(keep)))

    @classmethod
    def load(cls, state_dir: str):
        try:
            with open(os.path.join(state_dir, cls.NAME), encoding="utf-8") as f:
                raw = json.load(f)
            return cls(raw["digest"], {int(v): m for v, m in raw["problems"].items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def save(self, state_dir: str):
        files.write_atomic(os.path.join(state_dir, self.NAME),
                           json.dumps({"digest": self.digest, "problems": self.problems}))


def apply_leases(ctx, wanted, result: SyncResult, dry_run: bool):
    """The hosts file holds exactly the wanted leases. A guest holding an address keeps it;
    a second guest wanting the same address or MAC is left out, and reported. With
    dhcp_range, it reserves the pool's addresses that guests of the cluster have and no
    lease here gives. Then the DHCP server drops the leases that contradict the file."""
    held = dhcp.read(ctx.places)
    holders = {lease.vmid for lease in held}
    kept, taken = [], leases.Holders()
    by_vmid = {}
    for lease in wanted:
        by_vmid.setdefault(lease.vmid, []).append(lease)
    for vmid in sorted(by_vmid, key=lambda v: (v not in holders, v)):
        try:
            taken.check(by_vmid[vmid])
        except PvenatError as e:
            result.problems[vmid] = e.message
            continue
        taken.add(by_vmid[vmid])
        kept += by_vmid[vmid]
    reserved = leases.reservations(dhcp.cluster_addresses(ctx.host, ctx.pve), kept,
                                   ctx.host) if ctx.host.dhcp_range else []
    if sorted(kept) != sorted(held) or sorted(reserved) != sorted(dhcp.read_reserved(
            ctx.places)):
        result.leases, result.reserved = kept, reserved
        if not dry_run:
            dhcp.write(ctx.places, kept, reserved)
    try:
        result.released = dhcp.settle(ctx.host, ctx.places, dry_run)
    except PvenatError as e:
        result.dhcp_problem = e.message


def sync(ctx, dry_run: bool = False) -> SyncResult:
    result = SyncResult()
    planned = plan(ctx, result, dry_run)
    with files.locked(ctx.places.lock_path):
        apply(ctx, planned, result, dry_run)
        result.hairpin = hostnet.ensure_ports(ctx.host.lan_bridge, None, ctx.places,
                                              dry_run)
    if result.script or result.problems or result.hairpin or result.leases is not None \
            or result.released or result.dhcp_problem or result.routes:
        log.info("sync.done", dry_run=dry_run, added=result.added, updated=result.updated,
                 removed=result.removed, problems=sorted(result.problems),
                 changed=bool(result.script),
                 released=[f"{mac} {ip}" for mac, ip in result.released],
                 dhcp_problem=result.dhcp_problem or None)
    return result

"""pvenat sync: make this node's kernel match what PVE says, for every guest at once.

Run at boot, by a timer every minute and by hand. It catches what hooks alone miss:
Notes edited while a guest runs, a live migration's source (which gets no post-stop),
chains someone flushed, bridge ports that lost their hairpin flag.
"""

import bisect
import os

from . import hostnet, index, logs, netfilter, plancache, pveconf, ruleset
from .errors import PvenatError
from .plan import Held, plan_for

log = logs.get_logger("pvenat.sync")


class SyncResult:
    """What a sync did. A plain class: importing dataclasses costs the timer 13 ms."""

    def __init__(self):
        self.script = ""
        self.forwarded = []  # VMIDs with rules after the sync
        self.added, self.updated, self.removed = [], [], []
        self.problems = {}  # VMID -> message
        self.hairpin = []  # ports turned on

    def lines(self, node: str, dry_run: bool) -> list[str]:
        would = "would be " if dry_run else ""
        out = []
        for vmid, message in sorted(self.problems.items()):
            out.append(f"pvenat sync: guest {vmid} left as it was: {message}")
        changes = [f"{what} {', '.join(map(str, vmids))}" for what, vmids in (
            (f"{would}added", self.added), (f"{would}updated", self.updated),
            (f"{would}removed (not running on {node})", self.removed)) if vmids]
        if self.script and not changes:
            changes = [f"base rules {would}repaired"]
        if self.hairpin:
            changes.append(f"hairpin {would}turned on for {', '.join(self.hairpin)}")
        count = f"{len(self.forwarded)} guests forwarded"
        out.append(f"pvenat sync: {count}; {'; '.join(changes)}" if changes
                   else f"pvenat sync: nothing to change ({count})")
        return out


def reconcile(current, host, public_ip, plans: dict, keep: set, result: SyncResult):
    """The wanted tables, and what they hold: ``plans`` for guests running here, ``keep``
    guests as they are.

    Guests already in the kernel keep their ports first, so a guest edited into a
    conflict loses, not the one that was there. A guest whose plan is refused keeps its
    current rules. Anything else of pvenat's (guests not running here) goes.
    """
    wanted = ruleset.base(host, public_ip)
    nat = wanted["nat"]
    live = ruleset.managed_guests(current)
    held = Held()

    def keep_current(vmid):
        if vmid in live:
            nat.chains[ruleset.guest_chain(vmid)] = current["nat"].chains[
                ruleset.guest_chain(vmid)]
            for c in ruleset.held_claims(current):
                if c.vmid == vmid:
                    bisect.insort(held.claims[c.proto], c)
            held.addresses.update({a: v for a, v in ruleset.guest_addresses(current).items()
                                   if v == vmid})

    for vmid in sorted(keep):
        keep_current(vmid)
    for vmid in sorted(plans, key=lambda v: (v not in live, v)):
        plan = plans[vmid]
        try:
            held.check(plan)
        except PvenatError as e:
            result.problems[vmid] = e.message
            keep_current(vmid)
            continue
        nat.chains[ruleset.guest_chain(vmid)] = ruleset.guest_rules(plan)
        held.add(plan)
    nat.chains.update(ruleset.dispatch(held.claims["tcp"] + held.claims["udp"]))
    for table in ruleset.TABLES:  # keep jumps that are already right where they are
        wanted[table].jumps = ruleset.merge_jumps(current[table].jumps, wanted[table].jumps)

    now = ruleset.managed_guests(wanted)
    result.forwarded = sorted(now)
    result.added = sorted(now - live)
    result.removed = sorted(live - now)
    result.updated = sorted(v for v in now & live if nat.chains[ruleset.guest_chain(v)]
                            != current["nat"].chains[ruleset.guest_chain(v)])
    return wanted, held


def sync(ctx, dry_run: bool = False) -> SyncResult:
    host = ctx.host
    node = host.pve.node_name()
    result = SyncResult()
    plans, keep = {}, set()
    cache_path = os.path.join(host.state_dir, "plans.json")
    cached, fresh, host_key = plancache.load(cache_path), {}, repr(host)
    seen = hostnet.guests_here(ctx.sysfs)
    running = {i.vmid: i.kind for i in ctx.configs.guests(node) if i.status == "running"}
    for vmid, kind in sorted(running.items()):
        try:
            guest = ctx.configs.guest(node, vmid, kind)
            key = plancache.fingerprint(host_key, guest)
            if key in cached:
                plan = cached[key]
            else:
                plan = plan_for(guest, host)
            fresh[key] = plan
            if plan is not None:
                plans[vmid] = plan
        except PvenatError as e:
            result.problems[vmid] = e.message
            keep.add(vmid)
    if fresh.keys() != cached.keys() and not dry_run:
        plancache.save(cache_path, fresh)
    pub = hostnet.public_ip(host)

    def change(current):  # under pvenat's lock
        here = hostnet.guests_here(ctx.sysfs)
        # NICs gone since the listing: the guest stopped meanwhile, and its post-stop may
        # have cleaned up already; it is not running, whatever the listing said.
        stopped = seen - here
        result.problems = {v: m for v, m in result.problems.items()
                           if v in keep and v not in stopped}
        # Not listed as running here, yet its NICs are (a live migration's target while
        # the config still sits on the source), or PVE holds its config lock (a start
        # between pre-start and its NICs, a stop before post-stop): its own hooks have
        # it in hand.
        gone = ruleset.managed_guests(current) - (running.keys() - stopped)
        busy = (gone & here) | pveconf.config_locked(gone - here, host.pve.lock_dir)
        return reconcile(current, host, pub,
                         {v: p for v, p in plans.items() if v not in stopped},
                         (keep - stopped) | busy, result)

    with netfilter.locked(ctx.lock_path):
        if dry_run:
            current = ctx.backend.read()
            result.script = ruleset.restore_script(current, change(current)[0])
        else:
            wanted = {}
            index.drop(host.state_dir)  # while the kernel changes, hooks read the kernel

            def remember(current):
                tables, wanted["held"] = change(current)
                return tables

            result.script = netfilter.update(ctx.backend, remember)
            held = wanted["held"]
            index.save(host.state_dir, index.Index(
                pub, held.claims["tcp"] + held.claims["udp"], held.addresses))
        ports = hostnet.guest_ports(host.lan_bridge, ctx.sysfs)
        for vmid in result.forwarded:
            for port in ports.get(vmid, []):
                if not hostnet.hairpin_on(host.lan_bridge, port, ctx.sysfs):
                    if not dry_run:
                        hostnet.set_hairpin(host.lan_bridge, port, ctx.sysfs)
                    result.hairpin.append(port)
    if result.script or result.problems or result.hairpin:  # a quiet minute logs nothing
        log.info("sync.done", dry_run=dry_run, added=result.added, updated=result.updated,
                 removed=result.removed, problems=sorted(result.problems),
                 changed=bool(result.script))
    return result

"""The iptables backend (iptables-legacy and ip6tables-legacy): rules.Backend's verbs on
render, parse, the index and the kernel. The only module that knows all four.

IPv4: a hook's change is built on the index (index.py) when there is one for its public
address, and from the kernel when there is none or the kernel refuses a change built on
it; sync and install read the kernel and drop the index while they change it.

IPv6 (Ip6, render6.py): the same, with an index of its own (index.Index6: the prefix and
which guest has which address), over ip6tables' raw, mangle and filter. A guest's IPv6
rules are written before its IPv4 ones and taken out again when IPv4 refuses, so a
refused start leaves nothing behind. With ipv6 off, hooks leave IPv6 alone; sync,
install and uninstall take out what an earlier ipv6 setting left (when the host has
ip6tables at all).
"""

import os

from .. import logs
from ..errors import PvenatError
from ..plan import Held
from ..rules import Applied, ForwardLive, GuestHeld, GuestLive, Reconciled
from . import index, kernel as kernels, parse, render, render6

log = logs.get_logger("pvenat.hook")


class IptablesBackend:
    def __init__(self, host, state_dir: str, kernel=None):
        self.host = host
        self.state_dir = state_dir
        # read() / apply() / has_chain() / counters() / forget_connections(), and .six,
        # the same for ip6tables (read() / apply())
        self.kernel = kernels.Iptables() if kernel is None else kernel
        self.six = Ip6(host, kernels.Iptables.ipv6() if kernel is None else kernel.six,
                       state_dir)

    # --- one guest: the hooks ----------------------------------------------------------

    def start(self, plan, public) -> Applied:
        if self.host.ipv6 is None:
            return Applied(self._change_guest(plan.vmid, plan, public))
        six = self.six.change(plan.vmid, plan, public.net6)
        try:
            text = self._change_guest(plan.vmid, plan, public)
        except PvenatError:
            if six:
                self.six.change(plan.vmid, None, public.net6)
            raise
        return Applied(joined(text, six))

    def stop(self, vmid) -> Applied:
        text = self._change_guest(vmid, None, None)
        six = self.six.change(vmid, None, None) if self.host.ipv6 else ""
        return Applied(joined(text, six))

    def guest(self, vmid):
        known = index.load(self.state_dir)
        if known is None:
            if not self.kernel.has_chain("nat", render.guest_chain(vmid)):
                return None
            addresses = parse.guest_addresses(self.kernel.read())
        else:
            addresses = known.addresses
        return GuestHeld(next((a for a, v in addresses.items() if v == vmid), None))

    def forget(self, public, address):
        self.kernel.forget_connections(public.ip, address)

    def held(self) -> Held:
        return running_here(self.kernel.read())

    def preview(self, plan, public) -> Applied:
        current = self.kernel.read()
        six = self.six.change(plan.vmid, plan, public.net6, dry_run=True) \
            if self.host.ipv6 else ""
        return Applied(joined(render.restore_script(
            current, self._start_change(plan, public)(current)[0]), six))

    def rule_text(self, plan) -> list[str]:
        six = render6.guest_rules(plan) if plan.address6 and plan.forwards else ()
        return [*render.guest_rules(plan), *(f"(IPv6) {rule}" for rule in six)]

    def _start_change(self, plan, public):
        """The change a start makes, for kernel.update: refused when another guest holds
        the ports or the address."""
        def change(current):
            held = running_here(current)
            held.check(plan)
            wanted = render.with_guest(current, self.host, public, plan.vmid, plan,
                                       held.all_claims())
            return wanted, wanted
        return change

    def _stop_change(self, vmid):
        def change(current):
            wanted = render.with_guest(current, self.host, None, vmid, None)
            return wanted, wanted
        return change

    def _change_guest(self, vmid, plan, public) -> str:
        """Apply one guest's start (plan) or stop (None); returns the script applied.

        Built on pvenat's index when there is one for this public address; when there is
        none, or the kernel refuses a change built on it, from the kernel. The caller holds
        the lock.
        """
        known = index.load(self.state_dir)
        if known is not None and (plan is None or known.public == public):
            try:
                return self._change_from_index(known, vmid, plan, public)
            except kernels.KernelRefused as e:
                log.warning("index.stale", vmid=vmid, error=e.stderr)
        return self._change_from_kernel(vmid, plan, public)

    def _change_from_index(self, known, vmid, plan, public) -> str:
        """The change computed from the index alone, without reading the kernel: the
        touched chains are always rewritten whole (index.Index.tables)."""
        state = self.state_dir
        if plan is not None:
            Held(known.claims, known.addresses).check(plan)
        old = [c for c in known.claims if c.vmid == vmid]
        new = [] if plan is None else plan.claims()
        if not old and not new:
            return ""
        current = known.tables(self.host, vmid, old + new)
        script = render.restore_script(current, render.with_guest(
            current, self.host, known.public, vmid, plan, known.claims))
        after = known.without(vmid) if plan is None else known.with_plan(plan, public)
        recorded = None
        if plan is not None:  # claims are recorded before they exist, and kept until gone
            recorded = index.Index(public, sorted(set(known.claims + after.claims)),
                                   {**known.addresses, **after.addresses})
            index.save(state, recorded)
        if script:
            self.kernel.apply(script)
        if recorded != after._replace(claims=sorted(after.claims)):  # else saved already
            index.save(state, after)
        return script

    def _change_from_kernel(self, vmid, plan, public) -> str:
        state = self.state_dir
        change = self._stop_change(vmid) if plan is None else self._start_change(plan, public)
        index.drop(state)  # while the kernel changes under a recorded index, trust neither
        script, wanted = kernels.update(self.kernel, change)
        index.save(state, index.from_tables(wanted, public))
        return script

    # --- every guest: sync -------------------------------------------------------------

    def reconcile(self, public, decide, last=None, dry_run=False) -> Reconciled:
        """``last``: the record of the last reconcile, trusted while the index it vouches
        for is there (sync.LastSync keeps it beside the index)."""
        host = self.host
        heads = {t: table.first for t, table in render.base(host, public).items()}
        if last is not None and not os.path.exists(os.path.join(self.state_dir, index.NAME)):
            last = None
        out = {}

        def change(current):
            wanted = out["wanted"] = decide(parse.managed_guests(current))
            if last and last == digest(wanted.inputs, current, heads):
                # The kernel is as the last sync left it, and nothing that sync decided
                # from has changed: it would decide the same again.
                out["result"] = Reconciled("", sorted(parse.managed_guests(current)),
                                           [], [], [], {}, None, same=True)
                return current, None
            if not dry_run:
                index.drop(self.state_dir)  # while the kernel changes, hooks read the kernel
            tables, held, result = reconcile(current, host, public, wanted.plans, wanted.keep)
            out["result"] = result._replace(record=digest(wanted.inputs, tables, heads))
            return tables, held

        if dry_run:
            current = self.kernel.read()
            script = render.restore_script(current, change(current)[0])
        else:
            script, held = kernels.update(self.kernel, change)
            if held:
                index.save(self.state_dir,
                           index.Index(public, held.all_claims(), held.addresses))
        result = out["result"]
        refused = dict(result.refused)
        six = self.six.reconcile(public.net6, out["wanted"], result.forwarded, refused,
                                 dry_run)
        return result._replace(text=joined(script, six), refused=refused)

    # --- the host: install, uninstall, status -----------------------------------------

    def install(self, public, dry_run=False) -> Applied:
        text = self._whole(lambda current: render.with_base(current, self.host, public),
                           dry_run)
        return Applied(joined(text, self.six.whole(public.net6, dry_run)))

    def uninstall(self, dry_run=False) -> Applied:
        empty = {t: render.Table() for t in render.TABLES}
        return Applied(joined(self._whole(lambda current: empty, dry_run),
                              self.six.whole(None, dry_run)))

    def _whole(self, wanted, dry_run) -> str:
        if dry_run:
            current = self.kernel.read()
            return render.restore_script(current, wanted(current))
        index.drop(self.state_dir)
        return kernels.update(self.kernel, lambda current: (wanted(current), None))[0]

    def base_missing(self, public) -> list[str]:
        missing = render.base_missing(self.kernel.read(), self.host, public)
        if public.net6 is not None:
            missing += self.six.base_missing(public.net6)
        return missing

    def live(self) -> "LiveRules":
        return LiveRules(self.kernel.read(), self.kernel.counters())


class LiveRules:
    """The kernel's guest chains and their rules' packet counters, read once."""

    def __init__(self, current, counters):
        self.chains = current["nat"].chains
        self.counters = counters

    def has(self, vmid) -> bool:
        return self.chains.get(render.guest_chain(vmid)) is not None

    def guest(self, vmid, plan) -> GuestLive:
        chain = render.guest_chain(vmid)
        live = self.chains.get(chain)
        planned, forwards = set(), []
        for f in plan.forwards if plan else ():
            rules = render.forward_rules(plan.address, f)
            planned.update(rules)
            forwards.append(ForwardLive(bool(live) and all(r in live for r in rules),
                                        sum(self.counters.get((chain, r), 0) for r in rules)))
        stale = [(rule, self.counters.get((chain, rule), 0)) for rule in live or ()
                 if rule not in planned]
        return GuestLive(forwards, stale)


def joined(text: str, six: str) -> str:
    """Both families' scripts, to show: IPv6's marked, for ip6tables-restore."""
    return text + (f"# IPv6 (ip6tables-restore)\n{six}" if six else "")


class Ip6:
    """pvenat's ip6tables rules (render6.py). A hook's change is built on the IPv6 index
    (index.Index6: the prefix and which guest has which address) when there is one, as
    IPv4's is, and from the kernel when there is none or the kernel refuses a change
    built on it; sync, install and uninstall read the kernel and write the index anew."""

    def __init__(self, host, kernel, state_dir):
        self.host, self.kernel, self.state_dir = host, kernel, state_dir

    def change(self, vmid, plan, net6, dry_run=False) -> str:
        """One guest's rules as ``plan`` says (None: gone); refused ('conflict') when a
        running guest has the plan's address. Returns the script applied."""
        entry = None
        if plan is not None and plan.address6 and plan.forwards:
            entry = (plan.address6, render6.guest_rules(plan))
        known = None if dry_run else index.load6(self.state_dir)
        if known is not None and (net6 is None or known.net6 == net6):
            try:
                return self._change_from_index(known, vmid, entry)
            except kernels.KernelRefused as e:
                log.warning("index6.stale", vmid=vmid, error=e.stderr)

        def change(current):
            guests = render6.read_guests(current)
            guests.pop(vmid, None)
            if entry:
                _check6(vmid, entry[0], guests)
                guests[vmid] = entry
            return self._wanted(current, net6, guests, keep_base=plan is None), guests
        return self._update(change, dry_run, net6)

    def _change_from_index(self, known, vmid, entry) -> str:
        """The change computed from the index alone: the guest's chain is always
        rewritten, the tree's chains where they differ; the base is taken as the index
        says it is (sync puts it back when it is not)."""
        others = {v: (a, index.UNKNOWN) for v, a in known.guests.items() if v != vmid}
        before, after = dict(others), dict(others)
        if vmid in known.guests:
            before[vmid] = (known.guests[vmid], index.UNKNOWN)  # so: always rewritten
        if entry:
            _check6(vmid, entry[0], others)
            after[vmid] = entry
        if before == after:
            return ""
        script = render.restore_script(render6.desired(self.host, known.net6, before),
                                       render6.desired(self.host, known.net6, after),
                                       render6.TABLES)
        recorded = index.Index6(known.net6, {v: a for v, (a, _) in after.items()})
        if entry:  # recorded before it exists, forgotten once gone
            index.save6(self.state_dir, recorded)
        self.kernel.apply(script)
        if not entry:
            index.save6(self.state_dir, recorded)
        return script

    def reconcile(self, net6, wanted, forwarded, refused: dict, dry_run) -> str:
        """After IPv4's reconcile: the IPv6 rules of the guests it forwards, planned
        (``wanted.plans``) or kept as the kernel has them; a guest whose IPv6 address
        another guest has already is left out, and added to ``refused``."""
        if net6 is None and self.host.ipv6 is None and not self._present():
            return ""

        def change(current):
            have = render6.read_guests(current)
            guests, owners = {}, {}
            for vmid in sorted(forwarded, key=lambda v: (v not in have, v)):
                plan = wanted.plans.get(vmid)
                if plan is None or vmid in refused:
                    entry = have.get(vmid)
                elif plan.address6 and plan.forwards and net6 is not None:
                    entry = (plan.address6, render6.guest_rules(plan))
                else:
                    entry = None
                if entry is None:
                    continue
                if entry[0] in owners:
                    refused[vmid] = (f"IPv6 address {entry[0]} is already opened to guest "
                                     f"{owners[entry[0]]}; give one of them another address")
                    continue
                owners[entry[0]] = vmid
                guests[vmid] = entry
            return self._wanted(current, net6, guests), guests
        return self._update(change, dry_run, net6)

    def whole(self, net6, dry_run) -> str:
        """install (the base, guests kept) and uninstall (net6 None: all gone)."""
        if net6 is None and not self._present():
            return ""

        def change(current):
            guests = render6.read_guests(current)
            return self._wanted(current, net6, guests), guests
        return self._update(change, dry_run, net6)

    def base_missing(self, net6) -> list[str]:
        current = self.kernel.read()
        wanted = render6.desired(self.host, net6, render6.read_guests(current))
        return render.missing(current, wanted, render.is_guest_chain, "ip6 ")

    def _wanted(self, current, net6, guests, keep_base=False):
        """What ``guests`` need: with ``net6``, the base as it says; without, the base
        as the kernel has it (``keep_base``: a stop) or nothing."""
        if net6 is None:
            return render6.with_guests(current, guests) if keep_base else {
                t: render.Table() for t in render6.TABLES}
        return render.keep_jumps(render6.desired(self.host, net6, guests), current)

    def _update(self, change, dry_run, net6) -> str:
        """Read the kernel, write what ``change`` wants, and the index anew (none when
        ``net6`` is not known: a stop's, or ipv6 off)."""
        if dry_run:
            current = self.kernel.read()
            return render.restore_script(current, change(current)[0], render6.TABLES)
        index.drop6(self.state_dir)  # while the kernel changes, trust the kernel alone
        script, guests = kernels.update(self.kernel, change, render6.TABLES)
        if net6 is not None:
            index.save6(self.state_dir, index.Index6(
                net6, {v: a for v, (a, _) in guests.items()}))
        return script

    def _present(self) -> bool:
        """Whether the kernel has any of pvenat's IPv6 rules: with ipv6 off, a host
        without ip6tables (or IPv6) has none to take out."""
        try:
            current = self.kernel.read()
        except PvenatError:
            return False
        return any(current[t].chains or current[t].jumps for t in render6.TABLES)


def _check6(vmid, address, guests):
    owner = next((v for v, (a, _) in guests.items() if a == address), None)
    if owner is not None:
        raise PvenatError("conflict", f"guest {vmid}: IPv6 address {address} is already "
                          f"opened to guest {owner}, which is running on this node; give "
                          "one of them another address (or run 'pvenat sync' if "
                          f"{owner} is no longer running here)")


def running_here(current) -> Held:
    """What the guests running on this node hold, as the kernel's tables record it."""
    return Held(parse.held_claims(current), parse.guest_addresses(current))


def reconcile(current, host, public, plans: dict, keep: set):
    """The wanted tables, what they hold, and what was decided: ``plans`` for guests
    running here, ``keep`` guests as they are.

    Guests already in the kernel keep their ports first, so a guest edited into a
    conflict loses, not the one that was there. A guest whose plan is refused keeps its
    current rules. Anything else of pvenat's (guests not running here) goes.
    """
    live = parse.managed_guests(current)
    claims = parse.held_claims(current)
    held, accepted, kept, refused = Held(), [], {}, {}

    def keep_current(vmid):
        if vmid in live:
            kept[vmid], addresses = parse.guest_state(current, vmid, claims)
            held.keep(kept[vmid].claims, addresses)

    for vmid in sorted(keep):
        keep_current(vmid)
    for vmid in sorted(plans, key=lambda v: (v not in live, v)):
        try:
            held.check(plans[vmid])
        except PvenatError as e:
            refused[vmid] = e.message
            keep_current(vmid)
            continue
        accepted.append(plans[vmid])
        held.add(plans[vmid])
    wanted = render.keep_jumps(render.desired(host, public, accepted, kept), current)

    now = parse.managed_guests(wanted)
    updated = sorted(v for v in now & live if wanted["nat"].chains[
        render.guest_chain(v)] != current["nat"].chains[render.guest_chain(v)])
    return wanted, held, Reconciled("", sorted(now), sorted(now - live), updated,
                                    sorted(live - now), refused, None)


def digest(inputs: str, tables: render.Tables, heads: dict) -> str:
    """The kernel's state and what a sync decided it from, hashed. ``heads``: {table: the
    jumps that must be first}; whether those are is part of the kernel's state (whichever
    others happen to be first is not)."""
    import hashlib  # a sync's alone: a hook does not pay for it

    kernel = repr(sorted((name, sorted(t.chains.items()), t.jumps,
                          sorted(t.first & heads[name])) for name, t in tables.items()))
    return hashlib.sha1((inputs + kernel).encode()).hexdigest()

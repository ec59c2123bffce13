"""pvenat list: every managed guest's forwards and DHCP lease, and whether the kernel and
the DHCP server have them."""

from . import dhcp, leases
from .context import HOOKSCRIPT
from .errors import PvenatError
from .plan import plan_for

COLUMNS = ("VMID", "NAME", "TYPE", "STATUS", "ADDRESS", "MAC", "LEASE", "FORWARD", "PROTO",
           "ALLOW", "LIVE", "PACKETS")
HEAD = 7  # the guest's own columns


def collect(ctx) -> list[dict]:
    """One entry per guest that has a pvenat spec, pvenat rules or (with pvenat's
    hookscript) a DHCP lease to have, in VMID order.

    A forward is live "yes" when all its rules are in the kernel, "missing" when a
    running guest lacks them; a rule in the kernel that the spec no longer describes is
    listed as "stale" (``pvenat sync`` fixes both). A lease is "yes" when the DHCP
    server's hosts file has it.
    """
    rules = ctx.rules.live()
    here = ctx.pve.running()  # the API's status lags (pvestatd)
    held = set(dhcp.read(ctx.places))
    out = []
    for info in ctx.pve.guests():
        live = rules.has(info.vmid)
        status = "running" if info.vmid in here else "stopped"
        entry = {"vmid": info.vmid, "name": info.name, "type": info.kind,
                 "status": status, "address": None, "mac": None, "lease": None,
                 "forwards": [], "error": None}
        try:
            guest = ctx.pve.guest(info.vmid, info.kind)
            entry["name"] = guest.config.get("name") or guest.config.get("hostname") \
                or info.name
            plan = plan_for(guest, ctx.host)
            mine = leases.leases_for(guest, plan, ctx.host) \
                if guest.config.get("hookscript") == HOOKSCRIPT else []
            if plan is None and not live and not mine:
                continue
            if mine:
                entry["address"] = mine[0].ip
                entry["mac"] = ",".join(lease.mac for lease in mine)
                entry["lease"] = "yes" if set(mine) <= held else "no"
        except PvenatError as e:
            entry["error"] = e.message
            plan = None
        kernel = rules.guest(info.vmid, plan)
        if plan:
            entry["address"] = plan.address
            for f, has in zip(plan.forwards, kernel.forwards):
                state = "yes" if has.live else ("missing" if status == "running" else "-")
                entry["forwards"].append({
                    "forward": f.ports(), "proto": f.proto, "allow": f.sources(), "live": state,
                    "packets": has.packets})
        for text, packets in kernel.stale:
            entry["forwards"].append({"forward": text, "proto": "", "allow": [],
                                      "live": "stale", "packets": packets})
        out.append(entry)
    return out


def table(entries) -> str:
    """Columns in the style of qm list; an error runs on past the columns."""
    rows, errors = [COLUMNS], {}
    for e in entries:
        head = (str(e["vmid"]), e["name"], e["type"], e["status"], e["address"] or "-",
                e["mac"] or "-", e["lease"] or "-")
        if e["error"]:
            errors[len(rows)] = f"ERROR: {e['error']}"
            rows.append(head + ("",) * 5)
        for f in e["forwards"]:
            rows.append(head + (f["forward"], f["proto"] or "-",
                                ",".join(f["allow"]) or "-", f["live"], str(f["packets"])))
        if not e["forwards"] and not e["error"]:  # a lease alone
            rows.append(head + ("-",) * 5)
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        cells = row[:HEAD] + (errors[n],) if n in errors else row
        lines.append(" ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(lines)

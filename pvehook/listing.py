"""pvenat list: every managed guest's forwards and DHCP lease, and whether the kernel and
the DHCP server have them; with ipv6 on, each guest's IPv6 address and what is open on it
(no NAT on IPv6: a forward opens its guest-side ports on the guest's own address)."""

from . import dhcp, hostnet, leases
from .context import HOOKSCRIPT
from .errors import PvenatError
from .plan import open6, plan_for

COLUMNS = ("VMID", "NAME", "TYPE", "STATUS", "ADDRESS", "MAC", "LEASE", "FORWARD", "PROTO",
           "ALLOW", "LIVE", "PACKETS")
HEAD = 7  # the guest's own columns
# with ipv6 on: the guest's IPv6 address after its IPv4 one, and each forward's IPv6 side
COLUMNS6 = COLUMNS[:5] + ("ADDRESS6",) + COLUMNS[5:] + ("IPV6",)


def collect(ctx) -> list[dict]:
    """One entry per guest that has a pvenat spec, pvenat rules or (with pvenat's
    hookscript) a DHCP lease to have, in VMID order.

    A forward is live "yes" when all its rules are in the kernel, "missing" when a
    running guest lacks them; a rule in the kernel that the spec no longer describes is
    listed as "stale" (``pvenat sync`` fixes both). A lease is "yes" when the DHCP
    server's hosts file has it.

    With ipv6 on, an entry has "address6", and each forward "open6": the guest ports it
    opens on that address and from where ("22 from 2001:db8:7::/48"), or "closed" when
    its allow-list names IPv4 sources only (Forward.allow_family).
    """
    net6 = hostnet.ipv6_net(ctx.host)  # None with ipv6 off
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
        if net6 is not None:
            entry["address6"] = None
        try:
            guest = ctx.pve.guest(info.vmid, info.kind)
            entry["name"] = guest.config.get("name") or guest.config.get("hostname") \
                or info.name
            plan = plan_for(guest, ctx.host, net6=net6)
            mine = leases.leases_for(guest, plan, ctx.host, net6=net6) \
                if guest.config.get("hookscript") == HOOKSCRIPT else []
            if plan is None and not live and not mine:
                continue
            if mine:
                entry["address"] = mine[0].ip
                entry["mac"] = ",".join(lease.mac for lease in mine)
                entry["lease"] = "yes" if set(mine) <= held else "no"
                if net6 is not None:
                    entry["address6"] = mine[0].ip6 or None
        except PvenatError as e:
            entry["error"] = e.message
            plan = None
        kernel = rules.guest(info.vmid, plan)
        if plan:
            entry["address"] = plan.address
            if net6 is not None:
                entry["address6"] = plan.address6
            for f, has in zip(plan.forwards, kernel.forwards):
                state = "yes" if has.live else ("missing" if status == "running" else "-")
                entry["forwards"].append({
                    "forward": f.ports(), "proto": f.proto, "allow": f.sources(), "live": state,
                    "packets": has.packets, **({"open6": open6(f) or "closed"} if net6 else {})})
        for text, packets in kernel.stale:
            entry["forwards"].append({"forward": text, "proto": "", "allow": [],
                                      "live": "stale", "packets": packets,
                                      **({"open6": ""} if net6 else {})})
        out.append(entry)
    return out


def table(entries) -> str:
    """Columns in the style of qm list; an error runs on past the columns. With ipv6 on
    (entries with "address6"), ADDRESS6 and IPV6 (open6()) too."""
    six = any("address6" in e for e in entries)
    columns = COLUMNS6 if six else COLUMNS
    head_width = HEAD + six
    rows, errors = [columns], {}
    for e in entries:
        head = (str(e["vmid"]), e["name"], e["type"], e["status"], e["address"] or "-") + (
            (e.get("address6") or "-",) if six else ()) + (e["mac"] or "-", e["lease"] or "-")
        tail = ("",) * six
        if e["error"]:
            errors[len(rows)] = f"ERROR: {e['error']}"
            rows.append(head + ("",) * 5 + tail)
        for f in e["forwards"]:
            rows.append(head + (f["forward"], f["proto"] or "-",
                                ",".join(f["allow"]) or "-", f["live"], str(f["packets"]))
                        + ((f.get("open6") or "-",) if six else ()))
        if not e["forwards"] and not e["error"]:  # a lease alone
            rows.append(head + ("-",) * (5 + six))
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = []
    for n, row in enumerate(rows):
        cells = row[:head_width] + (errors[n],) if n in errors else row
        lines.append(" ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(lines)

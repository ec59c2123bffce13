"""pvenat attach / detach: the guests' hookscript option, and an address on lan_bridge for a
guest that has none, written into the guest's config, so that PVE's config stays the one
source of truth (and its DHCP lease follows from it).

Both write as root through pvesh (only root@pam may set a hookscript: qemu-server
PVE/API2/Qemu.pm, pve-container PVE/LXC.pm), one change a guest, with the digest of the
config it was computed from: PVE refuses it when the config changed meanwhile (a GUI
edit), and attach reads the guest again and decides again. Addresses are taken from every
node's guest configs (a guest takes its address along when it migrates), under a
cluster-wide lock (pveconf.cfs_lock), so that two nodes attaching at once never pick one
address.

With ipv6 on, attach also writes the guest's IPv6 address (ipv6.derived: no pick, so no
lock) where PVE keeps it, unless the guest has one or its NIC asks for DHCPv6 or SLAAC
(address_option6()).
"""

import ipaddress
from contextlib import nullcontext

from . import dhcp, hostnet, spec
from .context import HOOKSCRIPT
from .errors import PvenatError
from .hook import refusals
from .leases import address_in_config
from .plan import plan_for

ADDRESS_LOCK = "pvenat-addresses"  # /etc/pve/priv/lock/pvenat-addresses while one picks
TRIES = 3  # reads and writes of a guest whose config keeps changing under attach


def attach(ctx, vmids, force: bool, ip: str | None = None):
    """Attach each guest; returns (one line per guest, [(vmid, what a start of it would
    refuse)]).

    A problem a start would refuse does not stop the attach: the hookscript is what makes
    a guest managed at all, and without it the guest would start anyway, silently without
    its forwards and lease, while with it the start refuses and says why. So the guest is
    attached, each problem is reported with its fix, and the command exits 1 (cli)."""
    out, problems = [], []
    running = ctx.pve.running()
    net6 = hostnet.ipv6_net(ctx.host)  # None with ipv6 off
    for vmid in vmids:
        guest, lines = _attach(ctx, vmid, force, ip, net6)
        problems += [(vmid, e) for e in start_problems(ctx, guest, net6)]
        if not lines:
            out.append(f"pvenat: {vmid}: already attached")
            continue
        out.append(f"pvenat: {vmid}: {'; '.join(lines)}" + (
            "; it is running: restart it, or run 'pvenat sync' to apply now"
            if vmid in running else ""))
    return out, problems


def _attach(ctx, vmid, force, ip, net6=None):
    """The guest's hookscript and addresses, in one change; returns (the guest as its next
    start reads it, what changed in words)."""
    for attempt in range(TRIES):
        guest = ctx.pve.guest(vmid)
        _check_other_hookscript(guest, force)
        picks = bool(ctx.host.dhcp or ip) and needs_address(guest, ctx.host, ip)
        with ctx.pve.cluster_lock(ADDRESS_LOCK) if picks else nullcontext():
            if picks:  # what the cluster has now, this guest included
                guest = ctx.pve.guest(vmid)
            changes, lines = {}, []
            if guest.config.get("hookscript") != HOOKSCRIPT:
                changes["hookscript"] = HOOKSCRIPT
                lines.append(f"hookscript set to {HOOKSCRIPT}")
            if picks:
                try:
                    address, change = give_address(ctx, guest, ip)
                except PvenatError:
                    if changes:  # attached all the same, without an address
                        ctx.pve.set_config(guest, **changes)
                    raise
                if change:
                    changes.update(change)
                    lines.append(f"address {address} ({next(iter(change))})")
            if net6 is not None and needs_address6(guest, ctx.host):
                address6, change = give_address6(ctx, guest._replace(
                    config={**guest.config, **changes}), net6)
                if change:
                    changes.update(change)
                    lines.append(f"IPv6 address {address6} ({next(iter(change))})")
            if not changes:
                return guest, lines
            try:
                ctx.pve.set_config(guest, **changes)
            except PvenatError as e:
                if e.code == "changed" and attempt + 1 < TRIES:
                    continue  # read again, decide again: the edit in between stays
                raise
        return guest._replace(config={**guest.config, **changes}), lines
    raise AssertionError("unreachable")


def start_problems(ctx, guest, net6=None) -> list[PvenatError]:
    """What a start of the guest, as its config now is, would refuse: the checks
    pre-start makes (plan_for, then hook.refusals)."""
    try:
        plan = plan_for(guest, ctx.host, net6=net6)
    except PvenatError as e:
        return [e]
    return refusals(ctx, guest, plan)


def detach(ctx, vmids, force: bool) -> list[str]:
    out = []
    for vmid in vmids:
        guest = ctx.pve.guest(vmid)
        _check_other_hookscript(guest, force)
        if guest.config.get("hookscript") is None:
            out.append(f"pvenat: {vmid}: already detached")
            continue
        ctx.pve.set_config(guest, delete="hookscript")
        out.append(f"pvenat: {vmid}: hookscript cleared")
    return out


def _check_other_hookscript(guest, force):
    have = guest.config.get("hookscript")
    if have not in (None, HOOKSCRIPT) and not force:
        raise PvenatError("conflict", f"guest {guest.vmid} has another hookscript ({have}); "
                          "pvenat leaves it alone unless you add --force")


def needs_address(guest, host, wanted: str | None) -> bool:
    """Whether attach picks or checks an address for the guest: it has a NIC on
    lan_bridge, and no address there yet or another than ``wanted``."""
    if not any(n.bridge == host.lan_bridge for n in spec.nics(guest.kind, guest.config)):
        if wanted:
            raise PvenatError("spec", f"guest {guest.vmid}: no NIC on {host.lan_bridge}; "
                              f"give it one (bridge={host.lan_bridge}) first")
        return False
    have = address_in_config(guest, host)
    return not have or bool(wanted and wanted != have)


def give_address(ctx, guest, wanted: str | None) -> tuple[str, dict]:
    """The guest's address on lan_bridge: ``wanted``, or the first free one, and the
    option that writes it into its config ("", {} when nothing changes). The caller holds
    the cluster lock and writes it."""
    host = ctx.host
    used = {ip: vmid for ip, vmid in used_addresses(ctx).items() if vmid != guest.vmid}
    if wanted:
        ip = _check_wanted(guest.vmid, wanted, host, used)
    else:
        ip = first_free(host, used)
    option, value = address_option(guest, ip, host)
    if option == "description":  # into the pvenat block: only when pvenat can read it
        problem = _notes_error(guest)
        if problem and wanted:
            raise problem
        if problem:
            return "", {}  # the 'ip:' they may name is unknown; the warning says what to fix
    return ip, {option: value}


def _notes_error(guest) -> PvenatError | None:
    """Why the guest's Notes cannot be read at all (None when they can)."""
    try:
        spec.parse(guest.vmid, guest.config.get("description", ""), "")
    except PvenatError as e:
        return e
    return None


def used_addresses(ctx) -> dict[str, int]:
    """Every address on the lan subnet that a guest of the cluster has: address -> VMID."""
    return dhcp.cluster_addresses(ctx.host, ctx.pve)


def first_free(host, used) -> str:
    net = host.lan_network
    first, last = (ipaddress.IPv4Address(a) for a in host.dhcp_range) if host.dhcp_range \
        else (None, None)
    for ip in net.hosts():
        if ip == host.lan_address.ip or str(ip) in used or (first and first <= ip <= last):
            continue
        return str(ip)
    raise PvenatError("spec", f"no free address left in {net}; give a guest one that another "
                      "does not use with 'pvenat attach --ip ADDRESS', or make the subnet "
                      "larger (lan_address)")


def _check_wanted(vmid, wanted, host, used) -> str:
    try:
        ip = ipaddress.IPv4Address(wanted)
    except ValueError:
        raise PvenatError("usage", f"--ip {wanted!r} is not an IPv4 address") from None
    net = host.lan_network
    if ip not in net or ip in (net.network_address, net.broadcast_address,
                               host.lan_address.ip):
        raise PvenatError("spec", f"guest {vmid}: address {ip} is not a guest address of "
                          f"{net} (not its network, broadcast or host address)")
    if str(ip) in used:
        raise PvenatError("conflict", f"guest {vmid}: address {ip} is guest "
                          f"{used[str(ip)]}'s already; pick another (or leave out --ip)")
    return str(ip)


def address_option(guest, ip: str, host) -> tuple[str, str]:
    """Where the address goes in the guest's config: an LXC NIC's ip= (PVE sets it inside
    the container), a QEMU guest's cloud-init ipconfigN when it has cloud-init, else the
    pvenat block's ip: (and the guest takes it by DHCP). The option's other fields (an
    LXC NIC's, ipconfigN's ip6= and gw6=) stay as they are."""
    prefix, gateway = host.lan_network.prefixlen, host.lan_address.ip
    nic = next(n for n in spec.nics(guest.kind, guest.config) if n.bridge == host.lan_bridge)
    key = f"net{nic.index}"
    if guest.kind == "lxc":
        return key, _with_fields(guest.config[key], {"ip": f"{ip}/{prefix}",
                                                     "gw": str(gateway)}, first=False)
    if _has_cloudinit(guest.config) or f"ipconfig{nic.index}" in guest.config:
        key = f"ipconfig{nic.index}"
        return key, _with_fields(guest.config.get(key, ""), {"ip": f"{ip}/{prefix}",
                                                             "gw": str(gateway)})
    return "description", spec.with_ip(guest.config.get("description", ""), ip)


def _with_fields(value: str, fields: dict, first: bool = True) -> str:
    """A property string (``a=1,b=2``) with ``fields`` set, ahead of its other fields (as
    the GUI writes ipconfigN: ip, gw, ip6, gw6) or after them (PVE prints an LXC NIC
    anew anyway); the other fields as they were."""
    rest = [p for p in value.split(",") if p and p.split("=", 1)[0] not in fields]
    mine = [f"{k}={v}" for k, v in fields.items()]
    return ",".join(mine + rest if first else rest + mine)


def _has_cloudinit(config) -> bool:
    return any("cloudinit" in str(v) for k, v in config.items()
               if k.startswith(("ide", "scsi", "sata")))


# IPv6 (ipv6 on): the guest's address from the prefix, written where PVE keeps it.

def needs_address6(guest, host) -> bool:
    """Whether attach writes an IPv6 address for the guest: it has a NIC on lan_bridge,
    and neither its pvenat block (ip6:) nor that NIC (ip6=) says anything of IPv6. A
    static ip6= is the guest's own and stays (ipv6.address takes it); ip6=dhcp stays too
    (DHCPv6 gives the guest its address from the hosts file all the same), and so do
    auto (SLAAC: the guest asks DHCPv6 when its stack follows the RAs' managed flag, and
    else has no global address, as its admin chose) and manual (set up inside)."""
    nic = _lan_nic(guest, host)
    if nic is None:
        return False
    notes = _notes(guest)
    if notes is not None and notes.ip6:
        return False
    return not _field(_address_value(guest, nic), "ip6")


def give_address6(ctx, guest, net6) -> tuple[str, dict]:
    """The guest's IPv6 address (the prefix's derived one, ipv6.derived) and the option
    that writes it ("", {} when its Notes cannot be read and it would go there). Refused
    when another guest of the cluster has that address as its own (a static ip6= or
    ip6:)."""
    from .ipv6 import derived

    ip6 = derived(net6, guest.vmid)
    other = used_addresses6(ctx, net6).get(ip6)
    if other is not None and other != guest.vmid:
        raise PvenatError("conflict", f"guest {guest.vmid}: its IPv6 address {ip6} is guest "
                          f"{other}'s own (a static ip6); give guest {other} another, or "
                          f"guest {guest.vmid} one of its own ('ip6:' in its pvenat block)")
    option, value = address_option6(guest, ip6, ctx.host, net6)
    if option == "description" and _notes_error(guest):
        return "", {}
    return ip6, {option: value}


def used_addresses6(ctx, net6) -> dict[str, int]:
    """The IPv6 addresses the guests of the cluster give themselves (their block's ip6:,
    their NIC's static ip6=): address -> VMID. Derived ones differ by VMID."""
    out = {}
    for gf in ctx.pve.cluster():
        config = gf.sections.get("", {})
        notes = _notes_of(gf.vmid, config)
        own = (notes and notes.ip6) or spec.nic_address6(gf.kind, config, ctx.host.lan_bridge)
        if own:
            out.setdefault(str(ipaddress.IPv6Address(own)), gf.vmid)
    return out


def address_option6(guest, ip6: str, host, net6) -> tuple[str, str]:
    """Where the IPv6 address goes in the guest's config, as for the IPv4 one
    (address_option): an LXC NIC's ip6=ADDR/64,gw6=LAN (pve-container
    src/PVE/LXC/Config.pm $netconf_desc: ip6 'pve-ipv6-config', gw6 'ipv6'), cloud-init
    ipconfigN's ip6=ADDR/64,gw6=LAN (qemu-server src/PVE/QemuServer/Network.pm
    $ipconfig_fmt, where gw6 requires ip6 and no gw6 goes with ip6=dhcp or auto), else
    the pvenat block's ip6:. The router is the host's lan address on the /64 (a gw6 on
    the NIC's own link, so PVE and cloud-init need no extra route). Other fields stay."""
    nic = _lan_nic(guest, host)
    fields = {"ip6": f"{ip6}/64", "gw6": net6.lan_address}
    key = f"net{nic.index}"
    if guest.kind == "lxc":
        return key, _with_fields(guest.config[key], fields, first=False)
    if _has_cloudinit(guest.config) or f"ipconfig{nic.index}" in guest.config:
        key = f"ipconfig{nic.index}"
        return key, _ipconfig(guest.config.get(key, ""), fields)
    return "description", spec.with_ip6(guest.config.get("description", ""), ip6)


def _lan_nic(guest, host):
    return next((n for n in spec.nics(guest.kind, guest.config) if n.bridge == host.lan_bridge),
                None)


def _address_value(guest, nic) -> str:
    """The property string that holds the NIC's addresses: the LXC NIC, or ipconfigN."""
    return guest.config.get(f"net{nic.index}" if guest.kind == "lxc" else
                            f"ipconfig{nic.index}", "")


def _field(value: str, name: str) -> str:
    return next((p.split("=", 1)[1] for p in str(value).split(",")
                 if p.split("=", 1)[0] == name and "=" in p), "")


def _notes(guest):
    return _notes_of(guest.vmid, guest.config)


def _notes_of(vmid, config):
    """The guest's pvenat spec, None when there is none or it cannot be read."""
    try:
        return spec.parse(vmid, config.get("description", ""), "")
    except PvenatError:
        return None


def _ipconfig(value: str, fields: dict) -> str:
    """ipconfigN with ``fields`` set, in the order the GUI writes it (ip, gw, ip6, gw6),
    its other fields after them as they were."""
    parts = dict(p.split("=", 1) for p in value.split(",") if "=" in p)
    parts.update(fields)
    order = [k for k in ("ip", "gw", "ip6", "gw6") if k in parts]
    return ",".join(f"{k}={parts[k]}" for k in order + [k for k in parts if k not in order])

"""The host's own network facts: its public address and the bridge ports of guests."""

import ipaddress
import json
import os
import re
import subprocess

from .errors import PvenatError
from .rules import Public


_RESOLVE = object()


def public(host, net6=_RESOLVE) -> Public:
    """The configured public IP (SNAT to it), or for 'auto' the first IPv4 on wan_bridge
    (MASQUERADE, which follows the address); and the guests' IPv6 network: ``net6`` when
    the caller has resolved it (ipv6_net()) or needs none, else resolved here."""
    if net6 is _RESOLVE:
        net6 = ipv6_net(host)
    if host.public_ip != "auto":
        return Public(host.public_ip, True, net6)
    try:
        out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", host.wan_bridge],
                             capture_output=True, text=True, check=True).stdout
        for iface in json.loads(out):
            for addr in iface.get("addr_info", []):
                if addr.get("family") == "inet" and addr.get("scope") == "global":
                    return Public(str(ipaddress.IPv4Address(addr["local"])), False, net6)
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError):
        pass  # no such bridge, or no ip command (not a PVE node): no address either way
    raise PvenatError("host", f"no IPv4 address on {host.wan_bridge} (public_ip: auto); "
                      "bring it up or set public_ip in the pvenat config")


def ipv6_net(host):
    """The guests' IPv6 network (ipv6.Net), None with ipv6 off. Its 'auto' settings are
    read from wan_bridge's addresses, asked of the kernel only when one is auto."""
    if host.ipv6 is None:
        return None
    from . import ipv6

    settings = host.ipv6
    auto = "auto" in (settings.prefix, settings.upstream, settings.lan_address)
    return ipv6.resolve(settings, host.wan_bridge,
                        wan_addresses6(host.wan_bridge) if auto else [])[0]


def wan_addresses6(wan_bridge: str) -> list:
    """The global IPv6 addresses on wan_bridge, as interfaces (address/prefixlen)."""
    try:
        out = subprocess.run(["ip", "-j", "-6", "addr", "show", "dev", wan_bridge,
                              "scope", "global"], capture_output=True, text=True,
                             check=True).stdout
        return [ipaddress.IPv6Interface(f"{a['local']}/{a['prefixlen']}")
                for iface in json.loads(out or "[]") for a in iface.get("addr_info", [])
                if a.get("family") == "inet6"]
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError):
        return []  # no such bridge, or no ip command: no address either way


# The network devices PVE makes for a running guest's NICs: tap<vmid>i<n> (QEMU),
# veth<vmid>i<n> (LXC), fwpr<vmid>p<n> (behind the PVE firewall).
_GUEST_DEVICE = re.compile(r"(?:tap|veth)([0-9]+)i[0-9]+|fwpr([0-9]+)p[0-9]+")


def guests_here(sysfs: str = "/sys/class/net") -> set[int]:
    """VMIDs whose NICs exist on this host. PVE creates them when a guest starts here
    (a live migration's target included) and removes them when it stops, crashes or
    has migrated away."""
    return {int(m.group(1) or m.group(2))
            for m in map(_GUEST_DEVICE.fullmatch, os.listdir(sysfs)) if m}


def guest_ports(bridge: str, sysfs: str = "/sys/class/net") -> dict[int, list[str]]:
    """Guests' ports on the bridge by VMID: tapNiN, vethNiN, or fwprNpN (PVE firewall)."""
    try:
        names = sorted(os.listdir(f"{sysfs}/{bridge}/brif"))
    except FileNotFoundError:
        return {}
    out: dict[int, list[str]] = {}
    for name in names:
        m = _GUEST_DEVICE.fullmatch(name)
        if m:
            out.setdefault(int(m.group(1) or m.group(2)), []).append(name)
    return out


def ensure_ports(bridge: str, vmids, places, dry_run: bool = False) -> list[str]:
    """Set up the guests' ports on the bridge so that every flow works (README, "Guests
    behind the PVE firewall"), as PVE plugs them anew at each start:

    - hairpin on the port: with br_netfilter on, a guest reaching its own forward is
      bridged back out of the port it came in on;
    - behind a firewall bridge (fwpr<vmid>p<n> on the bridge, pve-common PVE/Network.pm):
      fwbr<vmid>i<n> answers no ARP (else a guest may take it for its gateway, and its
      routed traffic meets conntrack in the firewall bridges' zone), and does not learn
      from its link fwln<vmid>i<n> (else the hairpin's reflected broadcasts teach it that
      the guest sits behind the link, and frames to the guest are dropped).

    ``vmids``: the guests to set up, None for every guest on the bridge. Returns the ports
    that were (or would be) changed."""
    ports = guest_ports(bridge, places.sysfs)
    changed = []
    for vmid in sorted(ports) if vmids is None else vmids:
        for port in ports.get(vmid, []):
            wanted = [(f"{places.sysfs}/{bridge}/brif/{port}/hairpin_mode", "1")]
            m = _FIREWALL_PORT.fullmatch(port)
            if m:
                nic = f"{m.group(1)}i{m.group(2)}"
                wanted += [(f"{places.sysfs}/fwbr{nic}/brif/fwln{nic}/learning", "0"),
                           (f"{places.proc}/sys/net/ipv4/conf/fwbr{nic}/arp_ignore", "1")]
            if _ensure(wanted, dry_run):
                changed.append(port)
    return changed


_FIREWALL_PORT = re.compile(r"fwpr([0-9]+)p([0-9]+)")


def _ensure(settings, dry_run: bool) -> bool:
    """Write each (file, value) that differs; whether any did. A device that went away
    meanwhile (the guest stopped) is skipped."""
    changed = False
    for path, value in settings:
        try:
            with open(path) as f:
                if f.read().strip() == value:
                    continue
            if not dry_run:
                with open(path, "w") as f:
                    f.write(value)
        except FileNotFoundError:
            continue
        changed = True
    return changed

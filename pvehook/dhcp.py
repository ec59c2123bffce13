"""DHCP and DNS for the guests on lan_bridge: dnsmasq (Debian's dnsmasq-base), run by the
pvenat-dhcp unit, its static leases in a hosts file pvenat keeps.

dnsmasq binds lan_bridge alone (--interface with --bind-dynamic: its DNS listens on the
bridge's own addresses, its DHCP socket is bound to the bridge, and a bridge that comes
up after it is picked up), so it never takes port 53 or 67 from another service on the
host, nor answers on the public side. It re-reads the hosts file on SIGHUP, without
dropping a lease or pausing.

What SIGHUP does not do is forget a lease it gave: its lease database keeps an address
leased to the MAC that had it (12 h), and the new owner of that address gets nothing
("not using configured address ... because it is leased to ..."). So after every change
pvenat releases the leases the hosts file contradicts (settle()), and the server starts
from a database without them (prune()).
"""

import ipaddress
import os
import re
import signal
import socket
import struct

from . import files, leases
from .errors import PvenatError
from .leases import Lease, Reserved

HOSTS = "dhcp-hosts"
PID = "dnsmasq.pid"
LEASE_DB = "dnsmasq.leases"


def argv(host, places, net6=None) -> list[str]:
    """dnsmasq's command line for this host config (pvenat dhcp-server runs it). With
    ipv6 on, ``net6`` is the guests' IPv6 network (ipv6.Net; found with
    hostnet.ipv6_net when not given): see ipv6_argv()."""
    net, ip = host.lan_network, str(host.lan_address.ip)
    # its log to stderr: the journal, under pvenat-dhcp.service
    out = ["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null",
           f"--pid-file={path(places, PID)}", f"--interface={host.lan_bridge}",
           "--except-interface=lo",  # else it takes 127.0.0.1:53 and [::1]:53 as well
           "--bind-dynamic", "--dhcp-authoritative", "--domain-needed", "--bogus-priv",
           "--no-hosts",
           f"--dhcp-range={net.network_address},static,{net.netmask},12h",
           f"--dhcp-hostsfile={path(places, HOSTS)}",
           f"--dhcp-leasefile={path(places, LEASE_DB)}",
           f"--dhcp-option=option:router,{ip}", f"--dhcp-option=option:dns-server,{ip}"]
    if host.ipv6 is not None:
        if net6 is None:
            from .hostnet import ipv6_net

            net6 = ipv6_net(host)
        out += ipv6_argv(host, net6)
    if host.dhcp_range:
        out.append(f"--dhcp-range={host.dhcp_range[0]},{host.dhcp_range[1]},{net.netmask},12h")
    if host.dns_servers:
        out += ["--no-resolv", *[f"--server={server}" for server in host.dns_servers]]
    return out


def ipv6_argv(host, net6) -> list[str]:
    """DHCPv6 and router advertisements on lan_bridge, from the same dnsmasq. The range is
    constructed from the bridge's /64 (the host's lan address, which neighbours.py puts
    there as PREFIX::1/64 noprefixroute; dnsmasq serves no bridge with a /128 alone) and
    is static: a guest gets the address its hosts-file line names ([IP6], matched by its
    MAC), no other client gets any. The RAs carry the managed flag without the autonomous
    one (no SLAAC address that no route or neighbour answer of pvenat's would reach), the
    host's link-local as the router, and the DNS server (RDNSS, RFC 6106) that DHCPv6's
    dns-server option names: lan_address, where dnsmasq's DNS listens too (--interface
    with --bind-dynamic takes every address of the bridge)."""
    return [f"--dhcp-range=::,constructor:{host.lan_bridge},static,64,1h", "--enable-ra",
            f"--dhcp-option=option6:dns-server,[{net6.lan_address}]"]


def path(places, name: str) -> str:
    return os.path.join(places.state_dir, name)


def _hosts_text(places) -> str | None:
    try:
        with open(path(places, HOSTS), encoding="ascii", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read(places) -> list[Lease]:
    return leases.parse(_hosts_text(places) or "")


def read_reserved(places) -> list[Reserved]:
    return leases.parse_reserved(_hosts_text(places) or "")


def write(places, wanted, reserved=None) -> bool:
    """The hosts file with exactly the leases ``wanted`` and the addresses ``reserved``
    (None: those it reserves now, but for an address a lease takes), and dnsmasq told;
    False when it was so. settle() after it releases what the change made stale."""
    if reserved is None:
        leased = {lease.ip for lease in wanted}
        reserved = [r for r in read_reserved(places) if r.ip not in leased]
    text = leases.render(wanted, reserved)
    if _hosts_text(places) == text:
        return False
    files.write_atomic(path(places, HOSTS), text)
    os.chmod(path(places, HOSTS), 0o644)  # dnsmasq reads it after dropping to nobody
    reload(places)
    return True


def server_pid(places) -> int | None:
    """dnsmasq's process, when it runs (its pid file, checked against /proc)."""
    try:
        with open(path(places, PID)) as f:
            pid = int(f.read().strip())
        with open(f"{places.proc}/{pid}/comm") as f:
            return pid if f.read().strip() == "dnsmasq" else None
    except (OSError, ValueError):
        return None


def reload(places):
    """dnsmasq re-reads the hosts file; none running is fine: it reads it when it starts."""
    pid = server_pid(places)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            pass


def lease_database(places) -> list[tuple[str, str]]:
    """(MAC, address) of each IPv4 lease in dnsmasq's lease file, as it last wrote it
    ('EXPIRY MAC ADDRESS NAME CLIENT-ID' a line; MACs of other hardware types, with a
    'TYPE-' prefix, and the DHCPv6 lines are not pvenat's)."""
    try:
        with open(path(places, LEASE_DB), encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    return [pair for pair in map(_pair, lines) if pair]


_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def _pair(line: str):
    fields = line.split()
    if len(fields) >= 3 and _MAC.fullmatch(fields[1]) and fields[2].count(".") == 3:
        return fields[1].upper(), fields[2]
    return None


def stale(host, places) -> list[tuple[str, str]]:
    """The leases in dnsmasq's database that the hosts file contradicts."""
    text = _hosts_text(places) or ""
    return leases.stale(lease_database(places), leases.parse(text),
                        leases.parse_reserved(text), host)


def settle(host, places, dry_run: bool = False) -> list[tuple[str, str]]:
    """Release the stale leases from the running server; returns them. Call it after
    write(): the SIGHUP is queued first, and dnsmasq's loop handles signals before DHCP
    packets, so it has the new hosts file when the release comes. Nothing to do while no
    server runs: it starts from a pruned database."""
    if server_pid(places) is None:
        return []
    pairs = stale(host, places)
    if pairs and not dry_run:
        try:
            release(host, pairs)
        except OSError as e:
            raise PvenatError("dhcp", "cannot tell the DHCP server to drop the stale leases "
                              f"of {', '.join(f'{mac} ({ip})' for mac, ip in pairs)} on "
                              f"{host.lan_bridge}: {e.strerror or e}; their addresses stay "
                              "taken until those leases expire (12 h) or pvenat-dhcp "
                              "restarts") from None
    return pairs


def release(host, pairs) -> None:
    """A DHCPRELEASE for each (MAC, address), as dnsmasq's own dhcp_release sends it
    (contrib/lease-tools/dhcp_release.c; Debian's dnsmasq-utils, which pvenat does not
    depend on): from this host, bound to lan_bridge so that dnsmasq takes it as coming in
    there, to lan_address:67, with the lease's MAC as chaddr, its address as ciaddr and
    lan_address as the server identifier. dnsmasq (rfc2131.c, DHCPRELEASE) finds the lease
    by MAC, checks the address and the server identifier, and deletes it from memory and
    from its lease file. A client still holding the address is refused at its next renewal
    (DHCPNAK: the address is no longer one it may have) and asks anew.

    Why a release and not an edit of the lease file: dnsmasq keeps its leases in memory
    and rewrites the file from there, so an edit needs it stopped, and guests starting
    meanwhile get no answer. The release changes nothing else and needs no restart."""
    server = host.lan_address.ip.packed
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, host.lan_bridge.encode())
        for mac, ip in pairs:
            s.sendto(release_packet(mac, ip, server), (str(host.lan_address.ip), 67))


def release_packet(mac: str, ip: str, server: bytes) -> bytes:
    """dhcp_release.c's packet: BOOTREQUEST, Ethernet, ciaddr and chaddr of the lease, the
    magic cookie, options 53 (DHCPRELEASE) and 54 (server identifier), end, 548 bytes."""
    fixed = struct.pack("!BBBBIHH4s4s4s4s16s64s128sI", 1, 1, 6, 0, 0, 0, 0,
                        ipaddress.IPv4Address(ip).packed, bytes(4), bytes(4), bytes(4),
                        bytes.fromhex(mac.replace(":", "")), b"", b"", 0x63825363)
    options = bytes([53, 1, 7, 54, 4]) + server + bytes([255])
    return fixed + options.ljust(308, b"\0")


def prune(host, places) -> list[tuple[str, str]]:
    """Before the server starts (pvenat dhcp-server): its lease file without the stale
    leases, so that it starts from what the hosts file says. dnsmasq is not running then:
    the file is safe to replace. Returns what went."""
    pairs = set(stale(host, places))
    if not pairs:
        return []
    with open(path(places, LEASE_DB), encoding="ascii", errors="replace") as f:
        lines = f.read().splitlines(keepends=True)
    files.write_atomic(path(places, LEASE_DB),
                       "".join(line for line in lines if _pair(line) not in pairs))
    return sorted(pairs)


def cluster_addresses(host, pve) -> dict[str, int]:
    """Every address on the lan subnet that a guest of the cluster has or gets at its next
    start: address -> VMID. From every node's .conf files (pve.Pve.cluster), whatever
    config_source says: one pvesh per guest of the cluster would take minutes. A running
    VM whose ipconfigN changed has the address its cloud-init drive holds
    ([special:cloudinit]) and gets the new one when it starts: both are its."""
    from .pve import Guest
    from .pveconf import CLOUDINIT, as_the_guest_has_it
    out = {}
    for gf in pve.cluster():
        current = gf.sections.get("", {})
        for config in (as_the_guest_has_it(gf.kind, current, gf.sections.get(CLOUDINIT, {})),
                       current):
            ip = leases.address_in_config(Guest(gf.vmid, gf.kind, config), host)
            if ip:
                out.setdefault(ip, gf.vmid)
    return out

"""DHCP and DNS for the guests on lan_bridge: dnsmasq (Debian's dnsmasq-base), run by the
pvenat-dhcp unit, its static leases in a hosts file pvenat keeps.

dnsmasq binds lan_bridge alone (--interface with --bind-dynamic: its DNS listens on the
bridge's own addresses, its DHCP socket is bound to the bridge, and a bridge that comes
up after it is picked up), so it never takes port 53 or 67 from another service on the
host, nor answers on the public side. It re-reads the hosts file on SIGHUP, without
dropping a lease or pausing.
"""

import os
import signal

from . import files, leases
from .leases import Lease

HOSTS = "dhcp-hosts"
PID = "dnsmasq.pid"
LEASE_DB = "dnsmasq.leases"


def argv(host, places) -> list[str]:
    """dnsmasq's command line for this host config (pvenat dhcp-server runs it)."""
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
    if host.dhcp_range:
        out.append(f"--dhcp-range={host.dhcp_range[0]},{host.dhcp_range[1]},{net.netmask},12h")
    if host.dns_servers:
        out += ["--no-resolv", *[f"--server={server}" for server in host.dns_servers]]
    return out


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


def write(places, wanted) -> bool:
    """The hosts file with exactly ``wanted``, and dnsmasq told; False when it was so."""
    text = leases.render(wanted)
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

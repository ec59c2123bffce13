"""Guest configs read straight from the cluster filesystem, /etc/pve/nodes/NODE/....

Same data as GET .../config, without a pvesh process (hundreds of milliseconds each):
what makes reading a thousand guests' configs in a sync possible. Reading needs no
lock; pmxcfs serves whole files.
"""

import os
import re

from .errors import PvenatError
from .hostnet import guests_here
from .pve import Guest, GuestInfo

_FOLDERS = (("qemu", "qemu-server"), ("lxc", "lxc"))
_KEY = re.compile(r"([a-z][a-z0-9_-]*):\s?(.*)")
_ESCAPE = re.compile(rb"%([0-9a-fA-F]{2})")


def parse_conf(text: str) -> dict:
    """The current config of a guest .conf: snapshot and [PENDING] sections are skipped.

    The Notes are the ``#`` lines, percent-encoded, as PVE writes them
    (PVE::QemuServer::parse_vm_config and PVE::LXC::Config do the same).
    """
    config, notes = {}, []
    for line in text.splitlines():
        if line.startswith("["):
            break
        if line.startswith("#"):
            notes.append(_decode(line[1:]))
            continue
        m = _KEY.fullmatch(line.rstrip())
        if m and m.group(1) == "description":  # the older form, one line
            notes.append(_decode(m.group(2)))
        elif m:
            config[m.group(1)] = m.group(2)
    if notes:
        config["description"] = "\n".join(notes).rstrip()
    return config


def _decode(text: str) -> str:
    if "%" not in text:
        return text
    raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), text.encode("utf-8"))
    return raw.decode("utf-8", errors="replace")


def config_locked(vmids, lock_dir: str, proc: str = "/proc") -> set[int]:
    """The guests whose config lock PVE holds right now: a start, stop or migration is
    under way, and the guest's own hooks run under that lock. Read from /proc/locks, so
    that looking never makes PVE wait for the lock."""
    files = {}
    for vmid in vmids:
        for path in (f"{lock_dir}/qemu-server/lock-{vmid}.conf",  # PVE::QemuConfig
                     f"{lock_dir}/lxc/pve-config-{vmid}.lock"):  # PVE::LXC::Config
            try:
                st = os.stat(path)
            except OSError:
                continue
            files[f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"] = vmid
    if not files:
        return set()
    held = set()
    with open(f"{proc}/locks", encoding="ascii", errors="replace") as f:
        for line in f:  # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2146470 0 EOF"
            fields = line.split()
            if len(fields) > 5 and fields[1] != "->" and fields[5] in files:
                held.add(files[fields[5]])
    return held


def _read(path: str) -> str:
    """The whole file through os.read: half the time of open().read() for small files,
    which counts when a sync reads a thousand of them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", errors="replace")


class ConfigFiles:
    def __init__(self, root: str = "/etc/pve", sysfs: str = "/sys/class/net"):
        self.root = root
        self.sysfs = sysfs

    def guests(self, node: str) -> list[GuestInfo]:
        """The guests whose configs sit in the node's folders; running when their NICs
        exist here. No API request: a sync of 1,000 guests needs no pvesh process and
        keeps working when the API does not answer."""
        running = guests_here(self.sysfs)
        out = []
        for kind, folder in _FOLDERS:
            try:
                names = os.listdir(f"{self.root}/nodes/{node}/{folder}")
            except FileNotFoundError:
                continue
            for name in names:
                if name.endswith(".conf") and name[:-5].isdigit():
                    vmid = int(name[:-5])
                    out.append(GuestInfo(vmid, kind, "",
                                         "running" if vmid in running else "stopped"))
        return sorted(out, key=lambda g: g.vmid)

    def cluster(self) -> list[tuple[str, GuestInfo]]:
        """(node, guest) for every guest of the cluster, from every node's folders."""
        try:
            nodes = sorted(os.listdir(f"{self.root}/nodes"))
        except FileNotFoundError:
            return []
        return [(node, info) for node in nodes for info in self.guests(node)]

    def guest(self, node: str, vmid: int, kind: str = "") -> Guest:
        """The guest's config; ``kind`` (qemu or lxc), when known, saves looking for it."""
        for found, folder in [f for f in _FOLDERS if f[0] == kind] or _FOLDERS:
            path = f"{self.root}/nodes/{node}/{folder}/{vmid}.conf"
            try:
                return Guest(vmid, found, parse_conf(_read(path)))
            except FileNotFoundError:
                continue
            except OSError as e:
                raise PvenatError("pve", f"guest {vmid}: cannot read {path}: {e.strerror}") \
                    from None
        raise PvenatError("pve", f"guest {vmid}: no QEMU or LXC config on node {node} under "
                          f"{self.root}/nodes/{node}; is the VMID right, and does pve.node "
                          "name this node?")

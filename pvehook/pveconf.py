"""The cluster filesystem, /etc/pve as pmxcfs shows it: guest configs, every node's, every
section of them, and the cluster-wide lock.

Same data as GET .../config, without a pvesh process (hundreds of milliseconds each):
what makes reading a thousand guests' configs in a sync possible. Reading needs no
lock; pmxcfs serves whole files.
"""

import errno
import hashlib
import os
import re
import time
from contextlib import contextmanager
from typing import NamedTuple

from .errors import PvenatError
from .hostnet import guests_here
from .pve import Guest, GuestInfo

_FOLDERS = (("qemu", "qemu-server"), ("lxc", "lxc"))
_KEY = re.compile(r"([a-z][a-z0-9_-]*):\s?(.*)")
_SECTION = re.compile(r"\[([^\]]*)\]\s*")  # qemu-server parse_vm_config: ^\[([^\]]*)\]\s*$
_ESCAPE = re.compile(rb"%([0-9a-fA-F]{2})")
PENDING = ("PENDING", "pve:pending")  # QEMU's and LXC's pending section
CLOUDINIT = "special:cloudinit"
LOCK_TIMEOUT = 10  # seconds: pve-cluster PVE/Cluster.pm cfs_lock's default


class GuestFile(NamedTuple):
    """A guest's whole .conf: the current config and every other section of it."""

    node: str
    vmid: int
    kind: str
    sections: dict  # "" (the current config), "PENDING", "special:cloudinit", snapshots

    def configs(self):
        """(where, config) for every config the guest has or may get back: its current
        one, its pending changes, and each snapshot's (a rollback restores it)."""
        for name, config in self.sections.items():
            if not name.startswith("special:"):
                yield ("current" if name == "" else "pending" if name in PENDING
                       else f"snapshot {name}"), config


def parse_conf(text: str) -> dict:
    """The current config of a guest .conf: the sections after it are skipped.

    The Notes are the ``#`` lines, percent-encoded, as PVE writes them
    (PVE::QemuServer::parse_vm_config and PVE::LXC::Config do the same).
    """
    config, notes = {}, []
    for line in text.splitlines():
        if line.startswith("["):
            break
        _line(line, config, notes)
    if notes:
        config["description"] = "\n".join(notes).rstrip()
    return config


def parse_sections(text: str) -> dict:
    """Every section of a .conf by name: "" is the current config; then "PENDING" (QEMU)
    or "pve:pending" (LXC), "special:cloudinit" and the like (QEMU), and one per snapshot
    (qemu-server PVE/QemuServer.pm parse_vm_config, pve-container PVE/LXC/Config.pm)."""
    sections, name, config, notes = {}, "", {}, []
    for line in text.splitlines() + ["[]"]:
        m = _SECTION.fullmatch(line)
        if not m:
            _line(line, config, notes)
            continue
        if notes:
            config["description"] = "\n".join(notes).rstrip()
        sections[name], name, config, notes = config, m.group(1), {}, []
    return sections


def _line(line, config, notes):
    if line.startswith("#"):
        notes.append(_decode(line[1:]))
        return
    m = _KEY.fullmatch(line.rstrip())
    if m and m.group(1) == "description":  # the older form, one line
        notes.append(_decode(m.group(2)))
    elif m:
        config[m.group(1)] = m.group(2)


def as_the_guest_has_it(kind: str, config: dict, cloudinit: dict) -> dict:
    """A QEMU guest's config with the addresses its cloud-init drive holds.

    ipconfigN changed on a running VM lands in the current config at once, while
    [special:cloudinit] keeps the value the guest's drive has (its key; ``added`` lists
    keys the drive does not have) until the next start regenerates the drive
    (qemu-server PVE/QemuServer.pm vmconfig_hotplug_pending, cloudinit_record_changed;
    PVE/QemuServer/Cloudinit.pm apply_cloudinit_config). A start does that before
    pre-start, so a guest being started sees the current config."""
    if kind != "qemu" or not cloudinit:
        return config
    out = dict(config)
    for key in filter(None, cloudinit.get("added", "").split(",")):
        if key.startswith("ipconfig"):
            out.pop(key, None)
    for key, value in cloudinit.items():
        if key.startswith("ipconfig"):
            out[key] = value
    return out


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


@contextmanager
def cfs_lock(root: str, lockid: str, timeout: int = LOCK_TIMEOUT):
    """A cluster-wide lock, taken as PVE takes its own (pve-cluster PVE/Cluster.pm cfs_lock,
    under cfs_lock_file, cfs_lock_storage, ...): a directory ``priv/lock/<lockid>`` that
    mkdir creates on one node of the cluster at a time. While another holds it, each try
    also sends pmxcfs an unlock request (utime 0), which frees a lock held longer than
    120 s (pmxcfs memdb.c CFS_LOCK_TIMEOUT: its holder died); given up after ``timeout``."""
    lockdir = os.path.join(root, "priv", "lock")
    path = os.path.join(lockdir, lockid)
    try:
        os.mkdir(lockdir)
    except OSError:
        pass
    if not os.path.isdir(lockdir):
        raise PvenatError("pve", f"cannot take the cluster lock {path}: the PVE cluster "
                          f"filesystem is not online ({root}); check 'systemctl status "
                          "pve-cluster'")
    start = time.monotonic()
    while True:
        try:
            os.mkdir(path)
            break
        except OSError as e:
            if e.errno != errno.EEXIST:  # pmxcfs refuses writes without quorum
                raise PvenatError("pve", f"cannot take the cluster lock {path}: {e.strerror}; "
                                  "is the cluster quorate ('pvecm status')?") from None
        waited = time.monotonic() - start
        if waited >= timeout:
            raise PvenatError("pve", f"cannot take the cluster lock {path}: another pvenat "
                              f"held it for {timeout} s; try again (pmxcfs frees a lock its "
                              "holder left behind after 120 s)")
        try:
            os.utime(path, (0, 0))  # the unlock request
        except OSError:
            pass
        time.sleep(min(max(timeout - waited, 1), 10) / 10)  # as cfs_lock sleeps
    try:
        yield
    finally:
        try:
            os.rmdir(path)
        except OSError:
            pass


def _read(path: str) -> bytes:
    """The whole file through os.read: half the time of open().read() for small files,
    which counts when a sync reads a thousand of them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def digest(raw: bytes) -> str:
    """PVE's digest of a config: sha1 of the raw .conf (parse_vm_config, LXC parse_pct_config);
    a config PUT given another refuses the change."""
    return hashlib.sha1(raw).hexdigest()


class ConfigFiles:
    """Guest configs from the cluster filesystem: ``guests`` and ``guest`` read like the
    API (pveapi.PveApi); ``guest_files`` and ``readable`` see what only the files show."""

    def __init__(self, root: str = "/etc/pve", sysfs: str | None = None):
        self.root = root
        self.sysfs = sysfs  # with it, guests() says which run here (their NICs exist)

    def guests(self, node: str) -> list[GuestInfo]:
        """The guests whose configs sit in the node's folders. No API request: a sync of
        1,000 guests needs no pvesh process and keeps working when the API does not
        answer."""
        running = guests_here(self.sysfs) if self.sysfs else set()
        return [GuestInfo(vmid, kind, "", "running" if vmid in running else "stopped")
                for vmid, kind in self._listed(node)]

    def _listed(self, node: str) -> list[tuple[int, str]]:
        out = []
        for kind, folder in _FOLDERS:
            try:
                names = os.listdir(f"{self.root}/nodes/{node}/{folder}")
            except FileNotFoundError:
                continue
            for name in names:
                if name.endswith(".conf") and name[:-5].isdigit():
                    out.append((int(name[:-5]), kind))
        return sorted(out)

    def nodes(self) -> list[str]:
        try:
            return sorted(os.listdir(f"{self.root}/nodes"))
        except FileNotFoundError:
            return []

    def readable(self) -> bool:
        """Whether pmxcfs shows the cluster: its nodes/ folder lists a node at least. When
        pve-cluster is down /etc/pve is an empty folder: no guest found there means
        nothing then."""
        return bool(self.nodes())

    def cluster(self) -> list[tuple[str, GuestInfo]]:
        """(node, guest) for every guest of the cluster, from every node's folders."""
        return [(node, info) for node in self.nodes() for info in self.guests(node)]

    def kind_of(self, node: str, vmid: int) -> str:
        """qemu or lxc, from where its config sits; "" when it is not on the node."""
        for kind, folder in _FOLDERS:
            if os.path.exists(f"{self.root}/nodes/{node}/{folder}/{vmid}.conf"):
                return kind
        return ""

    def raw(self, node: str, vmid: int, kind: str = "") -> tuple[str, bytes]:
        """(kind, the .conf's bytes); ``kind``, when known, saves looking for it."""
        for found, folder in [f for f in _FOLDERS if f[0] == kind] or _FOLDERS:
            path = f"{self.root}/nodes/{node}/{folder}/{vmid}.conf"
            try:
                return found, _read(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise PvenatError("pve", f"guest {vmid}: cannot read {path}: {e.strerror}") \
                    from None
        raise PvenatError("pve", f"guest {vmid}: no QEMU or LXC config on node {node} under "
                          f"{self.root}/nodes/{node}; is the VMID right, and does pve.node "
                          "name this node?")

    def guest(self, node: str, vmid: int, kind: str = "") -> Guest:
        """The guest's config as the guest has it (as_the_guest_has_it), with the digest
        of its .conf."""
        kind, raw = self.raw(node, vmid, kind)
        text = raw.decode("utf-8", errors="replace")
        return Guest(vmid, kind, as_the_guest_has_it(kind, parse_conf(text),
                                                     self._cloudinit(text)), node, digest(raw))

    def cloudinit(self, node: str, vmid: int) -> dict:
        """The [special:cloudinit] section of a QEMU guest's config ({} for none)."""
        try:
            return self._cloudinit(self.raw(node, vmid, "qemu")[1].decode(
                "utf-8", errors="replace"))
        except PvenatError:
            return {}

    @staticmethod
    def _cloudinit(text: str) -> dict:
        start = text.find(f"\n[{CLOUDINIT}]")
        if start < 0:
            return {}
        return parse_sections(text[start + 1:]).get(CLOUDINIT, {})

    def guest_files(self) -> list[GuestFile]:
        """Every guest of the cluster, every section of its config, from every node's
        folders."""
        out = []
        for node in self.nodes():
            for vmid, kind in self._listed(node):
                try:
                    raw = self.raw(node, vmid, kind)[1]
                except PvenatError:
                    continue  # gone meanwhile (a migration moves the file)
                out.append(GuestFile(node, vmid, kind, parse_sections(
                    raw.decode("utf-8", errors="replace"))))
        return out

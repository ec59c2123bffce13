"""PVE, as every command sees it: one interface that reads guest configs, writes changes,
and tells the node's runtime facts. A command asks ``ctx.pve`` and never learns which
backend answered.

  reader   the guests of this node and their configs: the .conf files under config_dir
           (pveconf.ConfigFiles, config_source: files) or the API (pveapi.PveApi over
           pvesh or HTTPS, config_source: api); both give the config as the guest has
           it (cloud-init as its drive holds it) with PVE's digest of it
  writer   every change, as root through pvesh (only root@pam may set a hookscript):
           guest configs, always with the digest they were read with, and storage
  cluster  what only the cluster filesystem shows: every node's guests and every section
           of their configs (snapshots, pending changes), and the cluster-wide lock
  runtime  facts of this node, read here and never asked of PVE's daemons (the API's
           status lags by up to ten seconds): which guests run here (their NICs exist),
           whose config lock PVE holds, the node a migrating guest comes from

Refusals carry codes (errors.PvenatError.code) that callers test: ``pve`` for an API or
file that does not answer, ``changed`` for a write refused because the config changed
since it was read. Tests pass their own reader and writer.
"""

import os
from typing import NamedTuple

from .config import PveSettings
from .errors import PvenatError

KINDS = ("qemu", "lxc")


class Guest(NamedTuple):
    vmid: int
    kind: str  # qemu or lxc
    config: dict  # as the guest has it
    node: str = ""  # the node whose folder holds its config
    digest: str = ""  # PVE's digest of the config it was read from ("" when not known)


class GuestInfo(NamedTuple):
    vmid: int
    kind: str
    name: str
    status: str  # running (its NICs exist on this node) or stopped


class Pve:
    def __init__(self, settings: PveSettings, reader=None, writer=None, files=None,
                 sysfs: str = "/sys/class/net", proc: str = "/proc", environ=None):
        """``reader`` and ``writer`` default to what ``settings`` say, made when first
        used, so that a hook pays only for what it asks."""
        self.settings = settings
        self._reader, self._writer, self._files = reader, writer, files
        self.sysfs, self.proc = sysfs, proc
        self.environ = os.environ if environ is None else environ

    @property
    def node(self) -> str:
        return self.settings.node_name()

    @property
    def files(self):
        if self._files is None:
            from .pveconf import ConfigFiles
            self._files = ConfigFiles(self.settings.config_dir)
        return self._files

    @property
    def reader(self):
        if self._reader is None:
            if self.settings.config_source == "files":
                self._reader = self.files
            else:
                from .pveapi import PveApi
                self._reader = PveApi(self.settings) if self.settings.backend != "local" \
                    else self.writer
        return self._reader

    @property
    def writer(self):
        if self._writer is None:
            from .pveapi import PveApi
            self._writer = PveApi(self.settings._replace(backend="local"))
        return self._writer

    # reading

    def guests(self) -> list[GuestInfo]:
        """Every guest whose config sits on this node, running or not."""
        running = self.running()
        return [info._replace(status="running" if info.vmid in running else "stopped")
                for info in self.reader.guests(self.node)]

    def guest(self, vmid: int, kind: str = "", node: str = "") -> Guest:
        """The guest's config as the guest has it, from this node or ``node`` (a live
        migration's source, where the config still is)."""
        node = node or self.node
        if not kind and self.reader is not self.files:
            kind = self.files.kind_of(node, vmid)  # a stat, not a request
        guest = self.reader.guest(node, vmid, kind)
        if guest.kind == "qemu" and self.reader is not self.files:
            # GET .../config has no [special:cloudinit] (json_config_properties): the file has
            from .pveconf import as_the_guest_has_it
            guest = guest._replace(config=as_the_guest_has_it(
                guest.kind, guest.config, self.files.cloudinit(node, vmid)))
        return guest

    def cluster(self):
        """Every guest of the cluster with every section of its config
        (pveconf.GuestFile), from the cluster filesystem whatever config_source says: one
        API request per guest and snapshot would take minutes, and pmxcfs has them all."""
        return self.files.guest_files()

    def cluster_readable(self) -> bool:
        """Whether the cluster filesystem shows the cluster. When pve-cluster is down
        /etc/pve is an empty folder, and a guest not found there may well exist."""
        return self.files.readable()

    def on_node(self) -> bool:
        """A PVE node: its cluster filesystem is mounted at config_dir."""
        return os.path.isdir(self.settings.config_dir)

    # writing

    def set_config(self, guest: Guest, **options):
        """Change the guest's config as root, refused by PVE when it changed since
        ``guest`` was read (its digest; qemu-server update_vm, pve-container
        API2/LXC/Config.pm: a GUI edit in between is never lost). A refusal for that
        reason has code ``changed``: read the guest again and decide again."""
        digest = {"digest": guest.digest} if guest.digest else {}
        try:
            self.writer.set_config(guest.node or self.node, guest, **options, **digest)
        except PvenatError as e:
            if guest.digest and self._changed(guest):
                raise PvenatError("changed", f"guest {guest.vmid}: its config changed while "
                                  f"pvenat worked on it ({e.message})") from None
            raise

    def _changed(self, guest: Guest) -> bool:
        try:
            return self.guest(guest.vmid, guest.kind, guest.node).digest != guest.digest
        except PvenatError:
            return False

    def storage(self, storage: str) -> dict:
        return self.writer.storage(storage)

    def set_storage_content(self, storage: str, content: list):
        self.writer.set_storage(storage, content=",".join(content))

    def volume_path(self, volid: str) -> str:
        """Where PVE finds a volume of a directory storage, such as a hookscript
        (local:snippets/pvenat.py): the storage's path, then its content-dirs override for
        the content type or the type's default folder (pve-storage PVE/Storage/Plugin.pm
        get_subdir, filesystem_path)."""
        storage, _, volname = volid.partition(":")
        vtype, _, name = volname.partition("/")
        config = self.storage(storage)
        path = config.get("path")
        if not path:
            raise PvenatError("pve", f"storage '{storage}' has no path; pvenat's hookscript "
                              "needs a directory storage")
        dirs = config.get("content-dirs") or {}
        if isinstance(dirs, str):  # as storage.cfg writes it: "snippets=x,iso=y"
            dirs = dict(p.split("=", 1) for p in dirs.split(",") if "=" in p)
        return os.path.join(path, dirs.get(vtype, vtype), name)

    # runtime

    def running(self) -> set[int]:
        """Guests running on this node: PVE's devices for them exist here."""
        from .hostnet import guests_here
        return guests_here(self.sysfs)

    def locked(self, vmids) -> set[int]:
        """Guests whose config lock PVE holds now (a start, stop or migration)."""
        from .pveconf import config_locked
        return config_locked(vmids, self.settings.lock_dir, self.proc)

    def migrated_from(self) -> str:
        """During a live migration's start hooks, the source node ("" otherwise)."""
        return self.environ.get("PVE_MIGRATED_FROM", "")

    def cluster_lock(self, name: str):
        """A lock no other pvenat of the cluster holds at the same time (pveconf.cfs_lock)."""
        from .pveconf import cfs_lock
        return cfs_lock(self.settings.config_dir, name)

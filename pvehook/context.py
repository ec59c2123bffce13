"""What every command works with: the host config, PVE (pve.Pve), the kernel, and the
places pvenat keeps its runtime files. Tests and labs pass their own parts."""

import os
from typing import NamedTuple

STATE_DIR = "/run/pvenat"  # caches and the lock, safe to delete; PVENAT_STATE_DIR moves it
HOOKSCRIPT = "local:snippets/pvenat.py"  # how a guest's config names the hookscript
# The file PVE resolves it to with storage local as PVE sets it up; where local's path or
# content-dirs say otherwise, there (snippet()).
SNIPPET = "/var/lib/vz/snippets/pvenat.py"
# What pvenat install enables (unit -> the target that wants it); the DHCP server only
# with dhcp on.
UNITS = {"pvenat.service": "multi-user.target", "pvenat-sync.timer": "timers.target"}
DHCP_UNIT = {"pvenat-dhcp.service": "multi-user.target"}


def units(host) -> dict:
    return {**UNITS, **(DHCP_UNIT if host.dhcp else {})}


def snippet(pve, root: str = "/") -> str:
    """The hookscript's file: where PVE finds HOOKSCRIPT (pve.Pve.volume_path), under
    ``root`` (pvenat install --root)."""
    return os.path.join(root, pve.volume_path(HOOKSCRIPT).lstrip("/"))


class Places(NamedTuple):
    """Where pvenat reads and writes on this host; a lab moves them."""

    state_dir: str = STATE_DIR
    sysfs: str = "/sys/class/net"
    proc: str = "/proc"

    @property
    def lock_path(self) -> str:
        """pvenat's own processes serialise their read-compute-write cycles on it."""
        return os.path.join(self.state_dir, "lock")

    @classmethod
    def from_env(cls) -> "Places":
        return cls(state_dir=os.environ.get("PVENAT_STATE_DIR") or STATE_DIR)


class Context:
    def __init__(self, host, pve, kernel, places: Places = Places()):
        self.host = host
        self.pve = pve  # PVE: configs read, changes written, this node's facts (pve.Pve)
        self.kernel = kernel  # the rules backend's own kernel access; None: the real one
        self.places = places

    @property
    def rules(self):
        """The kernel's rules (rules.Backend), as configured; made when asked, for the
        host and places the context has then."""
        from .rules import backend

        return backend(self.host, self.places, self.kernel)


def context(host, places: Places) -> Context:
    """The live host's parts. Imported lazily: a hook pays only for what it uses (pve.Pve
    makes its backends when first asked)."""
    from .pve import Pve

    return Context(host, Pve(host.pve, sysfs=places.sysfs, proc=places.proc), None, places)

"""What every command works with: the host config, PVE access, the kernel, and the places
pvenat keeps its runtime files. Tests and labs pass their own parts."""

import os
from typing import NamedTuple

STATE_DIR = "/run/pvenat"  # caches and the lock, safe to delete; PVENAT_STATE_DIR moves it
HOOKSCRIPT = "local:snippets/pvenat.py"  # how a guest's config names the hookscript
SNIPPET = "var/lib/vz/snippets/pvenat.py"  # the file PVE resolves it to, under /
# What pvenat install enables (unit -> the target that wants it); the DHCP server only
# with dhcp on.
UNITS = {"pvenat.service": "multi-user.target", "pvenat-sync.timer": "timers.target"}
DHCP_UNIT = {"pvenat-dhcp.service": "multi-user.target"}


def units(host) -> dict:
    return {**UNITS, **(DHCP_UNIT if host.dhcp else {})}


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
    def __init__(self, host, api, configs, kernel, places: Places = Places()):
        self.host = host
        self.api = api  # the PVE API as root: config changes (a hookscript, storage content)
        self.configs = configs  # guest lists and configs: /etc/pve files, or the API
        self.kernel = kernel  # read() / apply() / has_chain(): netfilter.Iptables
        self.places = places


def context(host, places: Places) -> Context:
    """The live host's parts. Imported lazily: a hook pays only for what it uses.

    Changes go through pvesh, as root@pam: only root may set a guest's hookscript
    (qemu-server PVE/API2/Qemu.pm, pve-container PVE/LXC.pm), which no API token is.
    Reads go where pve.config_source says, through pve.backend for the API.
    """
    from .netfilter import Iptables
    from .pve import PveApi
    from .pveconf import ConfigFiles

    root = PveApi(host.pve._replace(backend="local"))
    reader = root if host.pve.backend == "local" else PveApi(host.pve)
    configs = ConfigFiles(host.pve.config_dir, places.sysfs) \
        if host.pve.config_source == "files" else reader
    return Context(host, root, configs, Iptables(), places)

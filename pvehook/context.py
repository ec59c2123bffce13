"""What every command works with: the host config, PVE access, the kernel, and the places
pvenat keeps its runtime files. Tests and labs pass their own parts."""

import os
from typing import NamedTuple

STATE_DIR = "/run/pvenat"  # caches and the lock, safe to delete; PVENAT_STATE_DIR moves it
HOOKSCRIPT = "local:snippets/pvenat.py"  # how a guest's config names the hookscript
SNIPPET = "var/lib/vz/snippets/pvenat.py"  # the file PVE resolves it to, under /
UNITS = ("pvenat.service", "pvenat-sync.timer")  # what pvenat install enables


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
        self.api = api  # the PVE API: guest lists, config changes
        self.configs = configs  # guest configs and sync's guest list: API or /etc/pve files
        self.kernel = kernel  # read() / apply() / has_chain(): netfilter.Iptables
        self.places = places


def context(host, places: Places) -> Context:
    """The live host's parts. Imported lazily: a hook pays only for what it uses."""
    from .netfilter import Iptables
    from .pve import PveApi
    from .pveconf import ConfigFiles

    api = PveApi(host.pve)
    configs = ConfigFiles(host.pve.config_dir, places.sysfs) \
        if host.pve.config_source == "files" else api
    return Context(host, api, configs, Iptables(), places)

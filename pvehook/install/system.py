"""The live host's side effects for install and uninstall, and the only place they happen.

With a root other than "/", files live under it, ifupdown2 is pointed at that root's
interfaces file (the tests run it in a network namespace) and systemctl works on the
root offline. /proc and /sys are the Places' (a namespace's own, in the lab).
"""

import os
import shutil
import subprocess

from .. import files
from ..context import Places
from ..errors import PvenatError

INTERFACES = "etc/network/interfaces"


class System:
    def __init__(self, root: str = "/", places: Places = Places()):
        self.root = root
        self.places = places

    def path(self, rel: str) -> str:
        """A file of the host: under the root unless ``rel`` is absolute."""
        return os.path.join(self.root, rel)

    def read(self, path: str):
        """The file's text, or None when it does not exist."""
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def write(self, path: str, text: str, mode=None):
        """Atomically, the old file kept as PATH.pvenat-backup."""
        files.write_atomic(path, text, backup=True)
        if mode is not None:
            os.chmod(path, mode)

    def write_secret(self, path: str, text: str):
        """Created root-only before anything is written into it."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def remove(self, path: str):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    def sysctl(self, key: str) -> str:
        with open(self._sysctl_path(key)) as f:
            return f.read().strip()

    def set_sysctl(self, key: str, value: str):
        with open(self._sysctl_path(key), "w") as f:
            f.write(value)

    def _sysctl_path(self, key: str) -> str:
        """``key`` with dots, or with slashes where a device's name has a dot
        (net/ipv6/conf/vmbr0.5/accept_ra), as sysctl.d takes both."""
        return os.path.join(self.places.proc, "sys", *key.split("/" if "/" in key else "."))

    def sysctl_names(self, folder: str) -> list[str]:
        """The entries of a sysctl folder (net.ipv6.conf: all, default and each device)."""
        return sorted(os.listdir(self._sysctl_path(folder)))

    def link_exists(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.places.sysfs, name))

    def run(self, *argv) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True)
        except FileNotFoundError:
            raise PvenatError("host", f"{argv[0]} not found on PATH ({os.environ.get('PATH')});"
                              " is this a PVE host?") from None
        except OSError as e:  # found but not runnable: permissions, a bad interpreter
            raise PvenatError("host", f"{argv[0]} could not be run: {e.strerror}; check "
                              f"{shutil.which(argv[0]) or argv[0]} and PATH") from None
        if proc.returncode != 0:
            raise PvenatError("host", f"{' '.join(argv)} failed: "
                              f"{(proc.stderr or proc.stdout).strip()[:500]}")
        return proc.stdout

    def is_pve(self) -> bool:
        return shutil.which("pveversion") is not None

    def ifupdown(self, action: str, bridge: str) -> list[str]:
        """The ifupdown2 command: ifreload -a on the host, ifup/ifdown -i FILE BRIDGE under
        another root (ifreload takes no -i)."""
        if self.root == "/":
            return ["ifreload", "-a"]
        return [action, "-i", self.path(INTERFACES), bridge]

    def reload_network(self):
        """After the interfaces file changed back: ifreload on the host; under another
        root the caller already took the bridge down."""
        if self.root == "/":
            self.run("ifreload", "-a")

    def systemctl(self, *args) -> list[str]:
        root = [] if self.root == "/" else [f"--root={self.root}"]
        return ["systemctl", *root, *args]

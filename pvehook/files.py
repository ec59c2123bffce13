"""Writing files so that a crash leaves the old content or the new, never half of it."""

import fcntl
import os
import shutil
from contextlib import contextmanager


def write_atomic(path: str, text: str, backup: bool = False):
    """Temp file in the same folder, fsync, replace; with ``backup``, the old file is kept
    beside it as PATH.pvenat-backup."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    exists = os.path.exists(path)
    if exists and backup:
        shutil.copy2(path, path + ".pvenat-backup")
    tmp = f"{path}.{os.getpid()}.pvenat-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if exists:
        shutil.copymode(path, tmp)
    os.replace(tmp, path)


@contextmanager
def locked(path: str):
    """Serialise pvenat's own read-diff-apply cycles, of the rules and the DHCP leases
    alike (path: Places.lock_path)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

"""The kernel side: read pvenat's chains, change them in one atomic commit per table.

The writer is iptables-restore --noflush from the legacy backend, the one PVE uses: it
takes /run/xtables.lock, reads the live table, applies our lines and commits the table
in one replace, so rules of other tools written in between are kept. pvenat's own
processes (hooks, sync) are serialised by a second lock around read-diff-apply, so two
of them never compute a change from the same stale state.
"""

import fcntl
import os
import subprocess
import time
from contextlib import contextmanager

from . import logs, ruleset
from .errors import PvenatError

log = logs.get_logger("pvenat.netfilter")
LOCK_PATH = "/run/lock/pvenat.lock"
_RETRIES = 5  # a commit can fail with EAGAIN when a tool that takes no lock raced us


class Iptables:
    """iptables-legacy-save / -restore. Swap in another object with read() and apply()."""

    def __init__(self, save="iptables-legacy-save", restore="iptables-legacy-restore",
                 iptables="iptables-legacy", wait_seconds=30):
        self.save = save
        self.restore = restore
        self.iptables = iptables
        self.wait_seconds = wait_seconds

    def read(self) -> ruleset.Tables:
        """pvenat's part of nat and filter, from one iptables-save of all tables."""
        text = self._run([self.save])
        tables = {}
        for block in text.split("\n*")[1:]:
            name, _, body = block.partition("\n")
            if name in ruleset.TABLES:
                tables[name] = ruleset.parse_save(body)
        return {t: tables.get(t) or ruleset.Table() for t in ruleset.TABLES}

    def has_chain(self, table: str, chain: str) -> bool:
        """Whether the chain exists, without listing every rule of the table (a hook for
        a guest pvenat does not manage must stay cheap on a host with thousands)."""
        try:
            self._run([self.iptables, "-w", str(self.wait_seconds), "-t", table, "-S", chain])
        except KernelRefused as e:
            if "No chain" in e.stderr or "does not exist" in e.stderr:
                return False
            raise
        return True

    def counters(self) -> dict:
        """Packets matched by each of pvenat's nat rules: {(chain, rule spec): packets}."""
        out = {}
        for line in self._run([self.save, "-c", "-t", "nat"]).splitlines():
            if line.startswith("[") and " -A " + ruleset.PREFIX in line:
                count, _, chain, spec = line.split(" ", 3)
                out[(chain, spec)] = int(count[1:].split(":")[0])
        return out

    def apply(self, script: str):
        logs.warm()  # the change is logged once applied
        self._run([self.restore, "--noflush", "--wait", str(self.wait_seconds)], script)

    def _run(self, argv, stdin=None) -> str:
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
        except FileNotFoundError:
            raise PvenatError("netfilter", f"{argv[0]} not found; install the iptables "
                              "package") from None
        if proc.returncode != 0:
            raise KernelRefused(argv[0], proc.stderr.strip(), stdin)
        return proc.stdout


class KernelRefused(PvenatError):
    def __init__(self, tool, stderr, script):
        super().__init__("netfilter", f"{tool} failed: {stderr or 'no message'}")
        self.stderr = stderr
        self.script = script

    @property
    def transient(self) -> bool:
        return "temporarily unavailable" in self.stderr or "holding the xtables lock" \
            in self.stderr


@contextmanager
def locked(path: str = LOCK_PATH):
    """Serialise pvenat's own read-diff-apply cycles."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def update(backend, change) -> str:
    """Read the kernel, let ``change(current)`` return the wanted tables, apply the diff.

    ``change`` may raise to refuse (nothing is applied then). Returns the script applied,
    empty when the kernel already matched. The caller holds ``locked()``.
    """
    for attempt in range(_RETRIES):
        current = backend.read()
        script = ruleset.restore_script(current, change(current))
        if not script:
            return ""
        try:
            backend.apply(script)
            return script
        except KernelRefused as e:
            if not e.transient or attempt == _RETRIES - 1:
                raise
            log.warning("netfilter.retry", attempt=attempt + 1, error=e.stderr)
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")

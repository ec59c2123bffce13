"""The kernel side: read pvenat's chains, change them in one atomic commit per table.

The writer is iptables-restore --noflush from the legacy backend, the one PVE uses: it
takes /run/xtables.lock, reads the live table, applies our lines and commits the table
in one replace, so rules of other tools written in between are kept. pvenat's own
processes (hooks, sync) are serialised by a second lock around read-diff-apply, so two
of them never compute a change from the same stale state.
"""

import subprocess
import time

from .. import logs
from ..errors import PvenatError
from . import render
from .parse import parse_save

log = logs.get_logger("pvenat.netfilter")
_RETRIES = 5  # a commit can fail with EAGAIN when a tool that takes no lock raced us


class Iptables:
    """iptables-legacy-save / -restore. Another object with read(), apply(), has_chain()
    and counters() can stand in (the unit tests' in-memory kernel)."""

    def __init__(self, save="iptables-legacy-save", restore="iptables-legacy-restore",
                 iptables="iptables-legacy", wait_seconds=30, tables=render.TABLES):
        self.save = save
        self.restore = restore
        self.iptables = iptables
        self.wait_seconds = wait_seconds
        self.tables = tables

    @classmethod
    def ipv6(cls) -> "Iptables":
        from . import render6

        return cls("ip6tables-legacy-save", "ip6tables-legacy-restore", "ip6tables-legacy",
                   tables=render6.TABLES)

    def read(self) -> render.Tables:
        """pvenat's part of its tables, from one iptables-save of all tables."""
        text = self._run([self.save])
        tables = {}
        for block in text.split("\n*")[1:]:
            name, _, body = block.partition("\n")
            if name in self.tables:
                tables[name] = parse_save(body)
        return {t: tables.get(t) or render.Table() for t in self.tables}

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
            if line.startswith("[") and " -A " + render.PREFIX in line:
                count, _, chain, spec = line.split(" ", 3)
                out[(chain, spec)] = int(count[1:].split(":")[0])
        return out

    def forget_connections(self, public_ip: str, address: str):
        """Drop the kernel's tracked connections DNATed from the public address to a guest
        that stopped: else a UDP flow keeps going to its address for minutes, and to the
        next guest given it. Best effort: no conntrack tool, or nothing to drop, is fine."""
        try:
            subprocess.run(["conntrack", "-D", "--orig-dst", public_ip, "--reply-src",
                            address], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def apply(self, script: str):
        logs.warm()  # the change is logged once applied
        self._run([self.restore, "--noflush", "--wait", str(self.wait_seconds)], script)

    def _run(self, argv, stdin=None) -> str:
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True)
        except FileNotFoundError:
            raise PvenatError("netfilter", f"{argv[0]} not found; install the iptables "
                              "package") from None
        except OSError as e:
            raise PvenatError("netfilter", f"{argv[0]} could not be run: {e.strerror}") from None
        if proc.returncode != 0:
            raise KernelRefused(argv[0], proc.stderr.strip())
        return proc.stdout


class KernelRefused(PvenatError):
    def __init__(self, tool, stderr):
        super().__init__("netfilter", f"{tool} failed: {stderr or 'no message'}")
        self.stderr = stderr

    @property
    def transient(self) -> bool:
        return "temporarily unavailable" in self.stderr or "holding the xtables lock" \
            in self.stderr


def update(kernel, change, tables=render.TABLES):
    """Read the kernel, let ``change(current)`` return (wanted tables, what it decided),
    apply the difference. Returns (the script applied, what it decided); the script is
    empty when the kernel already matched.

    ``change`` may raise to refuse (nothing is applied then). The caller holds pvenat's lock
    (files.locked).
    """
    for attempt in range(_RETRIES):
        current = kernel.read()
        wanted, decided = change(current)
        script = render.restore_script(current, wanted, tables)
        if not script:
            return "", decided
        try:
            kernel.apply(script)
            return script, decided
        except KernelRefused as e:
            if not e.transient or attempt == _RETRIES - 1:
                raise
            log.warning("netfilter.retry", attempt=attempt + 1, error=e.stderr)
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")

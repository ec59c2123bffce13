"""An in-memory kernel for the unit tests: pvenat's tables as data, changed by the same
iptables-restore --noflush scripts the real one gets. Stands in for
iptables.kernel.Iptables (read, apply, has_chain, counters) behind the rules seam, so
that hooks and sync run in process, without root."""

from pvehook.iptables import render, render6
from pvehook.iptables.kernel import KernelRefused


class MemKernel:
    def __init__(self, tables=render.TABLES):
        self.tables = {t: render.Table() for t in tables}
        self.applied = []  # every script, in order
        self.forgotten = []  # guest addresses whose tracked connections were dropped
        # ip6tables, as the backend's IPv6 side reads and writes it
        self.six = MemKernel(render6.TABLES) if tables == render.TABLES else None

    def read(self):
        """As the real kernel reads back: a jump is first when no rule comes before it
        in its chain (no other tool's rules here)."""
        out = {}
        for t, v in self.tables.items():
            heads = {}
            for chain, spec in v.jumps:
                heads.setdefault(chain, (chain, spec))
            out[t] = render.Table(dict(v.chains), list(v.jumps), heads.values())
        return out

    def has_chain(self, table, chain):
        return chain in self.tables[table].chains

    def counters(self):
        return {}

    def forget_connections(self, public_ip, address):
        self.forgotten.append(address)

    def apply(self, script: str):
        """All or nothing per table, as iptables-restore commits; refuses what the real
        one refuses: a rule for a chain that does not exist, deleting a missing rule,
        a chain still referenced."""
        work = self.read()
        table = None
        for line in script.splitlines():
            words = line.split(" ", 2)
            if line.startswith("*"):
                table = work[line[1:]]
            elif line == "COMMIT":
                table = None
            elif line.startswith(":"):
                table.chains[line[1:].split()[0]] = ()
            elif words[0] == "-A":
                self._need(table, words[1], line)
                if words[1].startswith(render.PREFIX):
                    table.chains[words[1]] += (words[2],)
                else:
                    table.jumps.append((words[1], words[2]))
            elif words[0] == "-I":  # -I CHAIN 1 SPEC: a jump at the head of its chain
                position, spec = words[2].split(" ", 1)
                assert position == "1" and not words[1].startswith(render.PREFIX), line
                table.jumps.insert(0, (words[1], spec))
            elif words[0] == "-D":
                if (words[1], words[2]) not in table.jumps:
                    raise KernelRefused("iptables-restore", f"no such rule: {line}")
                table.jumps.remove((words[1], words[2]))
            elif words[0] == "-F":
                self._need(table, words[1], line)
                table.chains[words[1]] = ()
            elif words[0] == "-X":
                self._need(table, words[1], line)
                targets = (f"-j {words[1]}", f"-g {words[1]}")
                if any(r.endswith(targets) for rules in table.chains.values() for r in rules) \
                        or any(spec.endswith(targets) for _, spec in table.jumps):
                    raise KernelRefused("iptables-restore", f"chain in use: {line}")
                del table.chains[words[1]]
            else:
                raise AssertionError(f"unexpected line {line!r}")
        self.tables = work
        self.applied.append(script)

    @staticmethod
    def _need(table, chain, line):
        if chain.startswith(render.PREFIX) and chain not in table.chains:
            raise KernelRefused("iptables-restore", f"chain does not exist: {line}")

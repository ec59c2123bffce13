"""Port numbers and port sets, as written in the host config and in guest specs."""

import re
from typing import NamedTuple

# ASCII digits only: int() would also take Unicode digits such as "１２".
_RANGE = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")
_PORT = re.compile(r"[0-9]{1,5}")


def parse_port(text: str) -> int:
    """One port, 1-65535, from ASCII digits; ValueError says why not."""
    if not _PORT.fullmatch(text):
        raise ValueError(f"{text!r} is not a port number (1-65535)")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    return port


def parse_range(text: str) -> tuple[int, int]:
    """``N`` or ``N-M`` with N <= M; ValueError says why not."""
    m = _RANGE.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a port or a range like 10000-10099")
    lo = parse_port(m.group(1))
    hi = parse_port(m.group(2)) if m.group(2) else lo
    if hi < lo:
        raise ValueError(f"range {text} is reversed; write {hi}-{lo}")
    return lo, hi


def format_range(lo: int, hi: int, sep: str = "-") -> str:
    return str(lo) if lo == hi else f"{lo}{sep}{hi}"


class PortSet(NamedTuple):
    """A union of inclusive port ranges."""

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, items) -> "PortSet":
        return cls(tuple(sorted(parse_range(str(i)) for i in items)))

    def first_inside(self, lo: int, hi: int):
        """The lowest port of lo..hi that is in this set, or None."""
        hits = [max(lo, a) for a, b in self.ranges if a <= hi and lo <= b]
        return min(hits) if hits else None

    def first_outside(self, lo: int, hi: int):
        """The lowest port of lo..hi that is not in this set, or None."""
        port = lo
        for a, b in self.ranges:  # sorted by start
            if a > port:
                break
            port = max(port, b + 1)
        return port if port <= hi else None

    def __str__(self) -> str:
        return ", ".join(format_range(a, b) for a, b in self.ranges)

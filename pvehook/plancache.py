"""A cache of checked plans, keyed by a hash of everything a plan is made from.

A sync every minute re-reads every running guest's config; parsing a thousand Notes
blocks costs more than the rest of the sync. A guest whose config and the host config
are unchanged gets its plan from here. The kernel stays the truth for what is applied:
the sync still compares every chain. Lives in /run, so a reboot starts it afresh.
"""

import hashlib
import json

from . import __version__, files
from .plan import PLAN_INPUTS, GuestPlan
from .spec import Forward


def host_key(host, net6=None) -> str:
    """What a plan depends on besides the guest: the host settings a plan reads
    (PLAN_INPUTS), the guests' IPv6 network, and pvenat's version (an upgrade may plan
    differently)."""
    return repr((__version__, [str(getattr(host, name)) for name in PLAN_INPUTS], net6))


def fingerprint(host_key: str, guest) -> str:
    """What a plan depends on: the guest's Notes, tags and NICs, and ``host_key``."""
    relevant = sorted(item for item in guest.config.items()
                      if item[0] in ("description", "tags")
                      or item[0].startswith(("net", "ipconfig")))
    return hashlib.sha1(repr((host_key, guest.kind, guest.vmid, relevant)).encode()).hexdigest()


def load(path: str) -> dict:
    """{fingerprint: GuestPlan or None (unmanaged)}; empty when missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return {}
    return {key: None if p is None else GuestPlan(
        p[0], p[1], tuple(Forward(f[0], tuple(f[1]), tuple(f[2]), tuple(f[3]), f[4])
                          for f in p[2]), p[3]) for key, p in raw.items()}


def save(path: str, plans: dict):
    """Write atomically: a hook or sync killed halfway leaves the old file or none."""
    raw = {key: None if p is None else [p.vmid, p.address, [
        [f.proto, f.public, f.guest, f.allow, f.origin] for f in p.forwards], p.address6]
        for key, p in plans.items()}
    files.write_atomic(path, json.dumps(raw, separators=(",", ":")))

"""pvenat status on a host that systemd runs: each wanted unit's own state counts, read
from a stand-in systemctl that answers as the real one does (one state a line, exit 0 when
any one unit is active or enabled)."""

import json
import os
import stat

import pytest

from pvehook import status
from pvehook.config import HostConfig
from pvehook.context import Context, Places

SYSTEMCTL = """#!/usr/bin/python3
import json, os, sys
verb, units = sys.argv[1], sys.argv[2:]
table = json.load(open(os.environ["UNIT_STATES"]))[verb]
states = [table.get(unit, "inactive" if verb == "is-active" else "disabled") for unit in units]
print("\\n".join(states))
sys.exit(0 if any(s == ("active" if verb == "is-active" else "enabled") for s in states) else
         (3 if verb == "is-active" else 1))
"""


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    """A host where systemd runs: its /run/systemd/system, and systemctl answering from
    the states the test writes."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/systemctl").write_text(SYSTEMCTL)
    os.chmod(tmp_path / "bin/systemctl", stat.S_IRWXU)
    (tmp_path / "run-systemd").mkdir()
    monkeypatch.setattr(status, "SYSTEMD", str(tmp_path / "run-systemd"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("UNIT_STATES", str(tmp_path / "states.json"))

    def states(active, enabled):
        table = {"is-active": active, "is-enabled": enabled}
        (tmp_path / "states.json").write_text(json.dumps(table))
    return states


CTX = Context(HostConfig(), None, None, Places())
ALL = ("pvenat.service", "pvenat-sync.timer", "pvenat-dhcp.service")


def test_units_ok_only_when_each_is_active(systemd):
    systemd({u: "active" for u in ALL}, {u: "enabled" for u in ALL})
    assert status._units(CTX, "", "/") == [("units", True, "pvenat.service active, "
                                            "pvenat-sync.timer active, pvenat-dhcp.service "
                                            "active")]


def test_one_active_unit_does_not_vouch_for_the_others(systemd):
    # after an upgrade that stopped them: systemctl is-active exits 0 for the one
    systemd({"pvenat-dhcp.service": "active"}, {u: "enabled" for u in ALL})
    assert status._units(CTX, "", "/") == [("units", False, (
        "pvenat.service inactive, pvenat-sync.timer inactive, pvenat-dhcp.service active; "
        "systemctl start pvenat.service pvenat-sync.timer"))]


def test_all_inactive_and_not_enabled_says_install(systemd):
    systemd({"pvenat.service": "failed"}, {"pvenat.service": "enabled"})
    ok, detail = status._units(CTX, "", "/")[0][1:]
    assert not ok and detail == ("pvenat.service failed, pvenat-sync.timer inactive, "
                                 "pvenat-dhcp.service inactive; run 'pvenat install'")


def test_without_dhcp_the_dhcp_unit_is_not_wanted(systemd):
    systemd({"pvenat.service": "active", "pvenat-sync.timer": "active"}, {})
    ctx = Context(HostConfig(dhcp=False), None, None, Places())
    assert status._units(ctx, "", "/")[0][1] is True

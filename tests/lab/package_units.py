"""The package's unit actions through its life, under systemd: install -> enable (what
'pvenat install' runs) -> upgrade -> an upgrade after an older package stopped them ->
remove -> install again -> remove -> purge.

Run by tests/package-test in its own Debian root, as root (not named test_*). The root has
no systemd running, so /run/systemd/system is made (the maintainer scripts then act as
under systemd) and stand-ins on PATH record every call: deb-systemd-invoke and
deb-systemd-helper are Debian's own, behind a line in the log; systemctl is Debian's for
the enable state (offline, --root=/: the symlinks in /etc/systemd/system) and a recording
stand-in for what needs a running manager (start, stop, restart, try-restart, is-active,
daemon-reload), keeping each unit's state and how often it was started."""

import glob
import json
import os
import shutil
import stat
import subprocess

import pytest

from lab import INSTALLED

UNITS = ["pvenat.service", "pvenat-sync.service", "pvenat-sync.timer", "pvenat-dhcp.service"]
ENABLED = ["pvenat.service", "pvenat-sync.timer", "pvenat-dhcp.service"]  # pvenat install's
RUN_SYSTEMD = "/run/systemd/system"

SYSTEMCTL = """#!/usr/bin/python3
import json, os, subprocess, sys
LOG, STATE = {log!r}, {state!r}
args = sys.argv[1:]
with open(LOG, "a") as f:
    f.write("systemctl " + " ".join(args) + "\\n")
flags = [a for a in args if a.startswith("-")]
words = [a for a in args if not a.startswith("-")]
verb, units = words[0], words[1:]
if verb in ("is-enabled", "enable", "disable", "mask", "unmask", "preset", "reenable"):
    # the enable state is files: Debian's systemctl keeps it, offline
    real = subprocess.run(["/usr/bin/systemctl", "--root=/",
                           *[a for a in args if a not in ("--now", "--system")]])
    if real.returncode or "--now" not in flags:
        sys.exit(real.returncode)
    verb = "start" if verb == "enable" else "stop"
state = json.load(open(STATE)) if os.path.exists(STATE) else {{}}


def known(unit):
    return any(os.path.exists(f"{{d}}/{{unit}}") for d in (
        "/usr/lib/systemd/system", "/lib/systemd/system", "/etc/systemd/system"))


def masked(unit):
    return os.path.realpath(f"/etc/systemd/system/{{unit}}") == "/dev/null"


rc = 0
for unit in units:
    s = state.setdefault(unit, {{"active": False, "starts": 0}})
    if verb == "is-active":
        print("active" if s["active"] else "inactive")
    elif verb in ("start", "restart") or (verb == "try-restart" and s["active"]):
        if masked(unit) or not known(unit):
            print(f"Failed to {{verb}} {{unit}}: Unit {{unit}} is "
                  f"{{'masked' if masked(unit) else 'not found'}}.", file=sys.stderr)
            rc = 1 if masked(unit) else 5
        elif not (verb == "start" and s["active"]):
            s["active"], s["starts"] = True, s["starts"] + 1
    elif verb == "stop":
        s["active"] = False
with open(STATE, "w") as f:
    json.dump(state, f)
if verb == "is-active":
    rc = 0 if any(state[u]["active"] for u in units) else 3
sys.exit(rc)
"""

RECORDED = """#!/bin/sh
echo "{name} $*" >>{log}
exec /usr/bin/{name} "$@"
"""


@pytest.fixture(scope="module")
def systemd(tmp_path_factory):
    if not (INSTALLED and os.environ.get("PVENAT_NEXT_DEB")):
        pytest.fail("run by tests/package-test, in a Debian root of its own: it installs, "
                    "upgrades and removes the package")
    if os.path.exists(RUN_SYSTEMD):
        pytest.fail(f"{RUN_SYSTEMD} exists: this root runs systemd, and the test would "
                    "start and stop its units")
    here = tmp_path_factory.mktemp("systemd")
    log, state = str(here / "calls.log"), str(here / "units.json")
    (here / "bin").mkdir()
    scripts = {"systemctl": SYSTEMCTL.format(log=log, state=state),
               **{name: RECORDED.format(name=name, log=log)
                  for name in ("deb-systemd-invoke", "deb-systemd-helper")}}
    for name, text in scripts.items():
        (here / "bin" / name).write_text(text)
        os.chmod(here / "bin" / name, stat.S_IRWXU)
    subprocess.run(["dpkg", "--purge", "pvenat"], capture_output=True)
    os.makedirs(RUN_SYSTEMD)
    try:
        yield Systemd(str(here / "bin"), log, state)
    finally:
        shutil.rmtree("/run/systemd")
        subprocess.run(["dpkg", "--purge", "pvenat"], capture_output=True)


class Systemd:
    def __init__(self, bin_dir, log, state):
        self.bin, self.log, self.state, self.seen = bin_dir, log, state, 0
        self.env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}",
                        DEBIAN_FRONTEND="noninteractive")

    def run(self, *argv):
        result = subprocess.run(argv, capture_output=True, text=True, env=self.env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def apt(self, *args):
        # apt runs dpkg, and so the maintainer scripts, with its own PATH (DPkg::Path)
        self.run("apt-get", "-y", "-qq", "-o",
                 f"DPkg::Path={self.bin}:/usr/sbin:/usr/bin:/sbin:/bin", *args)

    def actions(self) -> list[str]:
        """The unit actions since the last call: every call of systemctl that needs the
        manager, and of deb-systemd-invoke and deb-systemd-helper, as they were made."""
        try:
            with open(self.log) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        new, self.seen = lines[self.seen:], len(lines)
        out = []
        for line in new:
            words = [w for w in line.split() if w not in ("--system", "--quiet", "-q", "--")]
            if words[0] == "systemctl" and words[1] in ("is-active", "is-enabled"):
                continue  # questions, not actions
            out.append(" ".join(words))
        return out

    def states(self) -> dict:
        """unit -> (active?, times started, enabled state) for the four units."""
        try:
            with open(self.state) as f:
                kept = json.load(f)
        except FileNotFoundError:
            kept = {}
        enabled = subprocess.run(["/usr/bin/systemctl", "--root=/", "is-enabled", *UNITS],
                                 capture_output=True, text=True).stdout.split()
        return {u: (kept.get(u, {}).get("active", False), kept.get(u, {}).get("starts", 0),
                    enabled[i] if i < len(enabled) else "?") for i, u in enumerate(UNITS)}


def debs():
    first = [d for d in glob.glob("/build/pvenat_*_all.deb") if "+upgrade" not in d]
    return first[0], glob.glob(os.environ["PVENAT_NEXT_DEB"])[0]


def test_units_through_install_upgrade_remove_purge(systemd):
    first, nxt = debs()
    # installed: nothing enabled, nothing started (installing changes no network setting)
    systemd.apt("install", first)
    assert [a for a in systemd.actions() if not a.startswith("deb-systemd-helper")] == []
    assert systemd.states() == {
        "pvenat.service": (False, 0, "disabled"), "pvenat-sync.service": (False, 0, "static"),
        "pvenat-sync.timer": (False, 0, "disabled"),
        "pvenat-dhcp.service": (False, 0, "disabled")}

    # pvenat install: systemctl enable --now (pvehook/install/units.py); the timer starts
    # the sync service now and then
    systemd.run("systemctl", "enable", "--now", *ENABLED)
    systemd.run("systemctl", "start", "pvenat-sync.service")
    systemd.actions()
    running = {"pvenat.service": (True, 1, "enabled"),
               "pvenat-sync.service": (True, 1, "static"),
               "pvenat-sync.timer": (True, 1, "enabled"),
               "pvenat-dhcp.service": (True, 1, "enabled")}
    assert systemd.states() == running

    # upgrade: the timer pauses while the files change, the DHCP server keeps serving and
    # restarts on the new version, pvenat.service is left as it is
    systemd.apt("install", nxt)
    actions = systemd.actions()
    assert [a for a in actions if a.startswith("deb-systemd-invoke")] == [
        "deb-systemd-invoke stop pvenat-sync.timer pvenat-sync.service",  # old prerm
        "deb-systemd-invoke try-restart pvenat-dhcp.service",  # new postinst
        "deb-systemd-invoke start pvenat.service",
        "deb-systemd-invoke start pvenat-dhcp.service",
        "deb-systemd-invoke start pvenat-sync.timer"]
    manager = [a for a in actions if a.startswith("systemctl")]
    assert manager == ["systemctl stop pvenat-sync.timer pvenat-sync.service",
                       "systemctl daemon-reload",
                       "systemctl try-restart pvenat-dhcp.service",
                       "systemctl start pvenat.service",
                       "systemctl start pvenat-dhcp.service",
                       "systemctl start pvenat-sync.timer"]
    assert systemd.states() == {**running, "pvenat-sync.service": (False, 1, "static"),
                                "pvenat-dhcp.service": (True, 2, "enabled"),
                                "pvenat-sync.timer": (True, 2, "enabled")}
    assert not [a for a in actions if a.startswith("systemctl stop") and (
        "pvenat.service" in a or "pvenat-dhcp.service" in a)]

    # an upgrade from a package that stopped them all (its preinst, debhelper's
    # preinst-systemd-stop): the new postinst starts what is enabled
    systemd.run("systemctl", "stop", *UNITS)
    systemd.actions()
    systemd.apt("install", "--reinstall", nxt)
    systemd.actions()
    assert {u: s[0] for u, s in systemd.states().items()} == {
        "pvenat.service": True, "pvenat-sync.service": False, "pvenat-sync.timer": True,
        "pvenat-dhcp.service": True}

    # removed: every unit stops (the rules stay in the kernel); what pvenat install enabled
    # stays enabled, for a reinstall
    systemd.apt("remove", "pvenat")
    assert "deb-systemd-invoke stop pvenat-sync.timer pvenat-sync.service pvenat.service " \
        "pvenat-dhcp.service" in systemd.actions()
    assert {u: s[0] for u, s in systemd.states().items()} == dict.fromkeys(UNITS, False)

    # installed again: what was enabled runs again
    systemd.apt("install", nxt)
    systemd.actions()
    assert {u: s[0] for u, s in systemd.states().items()} == {
        "pvenat.service": True, "pvenat-sync.service": False, "pvenat-sync.timer": True,
        "pvenat-dhcp.service": True}

    # removed and purged: stopped, and nothing of the enable state is left
    systemd.apt("remove", "pvenat")
    systemd.apt("purge", "pvenat")
    assert "deb-systemd-helper purge pvenat.service" in " ".join(systemd.actions())
    assert {u: s[0] for u, s in systemd.states().items()} == dict.fromkeys(UNITS, False)
    left = [p for p in glob.glob("/etc/systemd/system/**/pvenat*", recursive=True)] + \
        glob.glob("/var/lib/systemd/deb-systemd-helper-*/**/pvenat*", recursive=True)
    assert left == []

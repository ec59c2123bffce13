"""Hardening in the namespace lab: hooks racing each other and other writers, hooks
killed at random moments, the PVE API failing. Foreign rules must come through intact."""

import os
import random
import signal
import statistics
import subprocess
import time
from collections import Counter

import pytest

from lab import lab_fixture, sh
from pvehook.config import HostConfig
from pvehook.iptables import render
from pvehook.iptables.parse import held_claims, managed_guests, parse_save
from pvehook.plan import Claim, plan_guest
from pvehook.spec import parse

GUESTS = range(200, 250)


def guests():
    out = {}
    for i, vmid in enumerate(GUESTS):
        base = 30000 + 10 * i
        out[vmid] = {"kind": "qemu" if i % 2 else "lxc", "config": {
            "description": f"```pvenat\nip: 172.22.161.{10 + i}\nforwards:\n"
                           f"  - {base}-{base + 4}/both\n  - {base + 5}:22\n```"}}
    return out


def expected(vmid, config):
    return plan_guest(parse(vmid, config["description"], ""), "qemu", {}, HostConfig())


@pytest.fixture(scope="module")
def lab():
    for lab in lab_fixture(guests(), config_source="files"):
        lab.set_ports(GUESTS)  # their NICs exist: the guests run here, as sync sees it
        yield lab


@pytest.fixture(autouse=True)
def clean(lab):
    """Whatever a test did or left when it failed, the next one starts with no guest in
    the kernel, the fixture's config and no foreign writer's chains."""
    yield
    lab.config_source = "files"
    lab.write_config()
    lab.write_fixture()
    tables = {t: parse_save(sh("ip", "netns", "exec", lab.host, "iptables-legacy-save",
                               "-t", t).stdout) for t in render.TABLES}
    for vmid in managed_guests(tables):
        assert lab.hook(vmid, "post-stop").returncode == 0
    ForeignWriters.clear(lab)


class ForeignWriters:
    """What else writes iptables on a PVE host: pve-firewall reloading filter with
    iptables-restore -n (here every 100 ms), and an admin appending rules to nat."""

    FILTER = ("*filter\n:PVEFW-FORWARD - [0:0]\n"
              "-A PVEFW-FORWARD -m conntrack --ctstate INVALID -j DROP\n"
              "-A PVEFW-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
              "COMMIT\n")

    def __init__(self, lab):
        self.lab = lab
        lab.iptables("-t", "filter", "-N", "PVEFW-FORWARD", check=False)
        lab.iptables("-t", "filter", "-I", "FORWARD", "-j", "PVEFW-FORWARD")
        lab.iptables("-t", "nat", "-N", "ADMIN", check=False)
        lab.iptables("-t", "nat", "-A", "PREROUTING", "-j", "ADMIN")
        self.stop_file = os.path.join(lab.dir, "stop-writers")
        script = (f"i=0; while [ ! -e {self.stop_file} ]; do "
                  "iptables-legacy-restore -n -w 30 <<'EOF'\n"
                  f"{self.FILTER}EOF\n"
                  "iptables-legacy -w 30 -t nat -A ADMIN -p tcp --dport $((1000 + i)) -j RETURN"
                  " && i=$((i + 1)) && echo $i; sleep 0.1; done")
        self.proc = subprocess.Popen(["ip", "netns", "exec", lab.host, "sh", "-c", script],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)

    def stop(self) -> int:
        """Stop after the current round; returns how many rules the admin appended."""
        open(self.stop_file, "w").close()
        try:
            out = self.proc.communicate(timeout=30)[0].split()
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        return int(out[-1]) if out else 0

    def check_intact(self, appended):
        save = self.lab.iptables_save()
        admin = [line for line in save.splitlines() if line.startswith("-A ADMIN ")]
        assert admin == [f"-A ADMIN -p tcp -m tcp --dport {1000 + i} -j RETURN"
                         for i in range(appended)]
        assert "-A PREROUTING -j ADMIN" in save
        assert "-A FORWARD -j PVEFW-FORWARD" in save
        fw = [line for line in save.splitlines() if line.startswith("-A PVEFW-FORWARD")]
        assert fw == [line for line in self.FILTER.splitlines() if line.startswith("-A")]

    @staticmethod
    def clear(lab):
        """Their chains and jumps gone, if there."""
        for args in (["-t", "nat", "-D", "PREROUTING", "-j", "ADMIN"], ["-t", "nat", "-F", "ADMIN"],
                     ["-t", "nat", "-X", "ADMIN"], ["-t", "filter", "-D", "FORWARD", "-j",
                                                    "PVEFW-FORWARD"],
                     ["-t", "filter", "-F", "PVEFW-FORWARD"],
                     ["-t", "filter", "-X", "PVEFW-FORWARD"]):
            lab.iptables(*args, check=False)


def consistent(lab, running):
    """Every guest is either fully in the kernel or not at all, and the running ones are
    in exactly once; returns the VMIDs found."""
    tables = {t: parse_save(sh("ip", "netns", "exec", lab.host, "iptables-legacy-save",
                               "-t", t).stdout) for t in render.TABLES}
    claims = Counter(held_claims(tables))
    assert all(n == 1 for n in claims.values()), "a port is claimed twice"
    found = managed_guests(tables)
    for vmid in found:
        plan = expected(vmid, lab.guests[vmid]["config"])
        assert tables["nat"].chains[render.guest_chain(vmid)] == render.guest_rules(plan)
        mine = sorted(c for c in claims if c.vmid == vmid)
        assert mine == sorted(Claim(f.proto, *f.public, vmid) for f in plan.forwards)
    assert {c.vmid for c in claims} <= found, "a claim points at a missing guest chain"
    assert running <= found
    return found


def storm(lab, argvs):
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd="/") for a in argvs]
    results = [(p.wait(), *p.communicate()) for p in procs]
    for rc, out, err in results:
        assert rc == 0, out + err


def test_fifty_hooks_at_once_with_other_writers(lab):
    writers = ForeignWriters(lab)
    try:
        storm(lab, [lab.hook_argv(v, "pre-start") for v in GUESTS])
        assert consistent(lab, set(GUESTS)) == set(GUESTS)
        storm(lab, [lab.hook_argv(v, "post-stop") for v in GUESTS])
        assert consistent(lab, set()) == set()
        # a sync racing a storm of starts: the fixture says all of them run
        storm(lab, [lab.hook_argv(v, "pre-start") for v in GUESTS] +
              [lab.pvenat_argv("sync") for _ in range(3)])
        assert consistent(lab, set(GUESTS)) == set(GUESTS)
        storm(lab, [lab.hook_argv(v, "post-stop") for v in GUESTS])
    finally:
        appended = writers.stop()
    assert appended > 10
    writers.check_intact(appended)


def duration(lab, vmid, phase, runs=5) -> float:
    """The median time of a hook phase run to its end here, start-up included."""
    times = []
    for _ in range(runs):
        start = time.monotonic()
        assert lab.hook(vmid, phase).returncode == 0
        times.append(time.monotonic() - start)
    return statistics.median(times)


def test_hooks_killed_at_random_moments(lab):
    rng = random.Random(8)
    pool = list(GUESTS)[:10]
    # the base rules exist before we start; the kills land within each phase's own time
    # on this machine, however fast or slow it is
    took = {phase: duration(lab, pool[0], phase) for phase in ("pre-start", "post-stop")}
    before = [line for line in lab.iptables_save().splitlines() if "PVENAT" not in line]
    kills = 0
    for _ in range(150):
        vmid = rng.choice(pool)
        phase = rng.choice(["pre-start", "post-stop"])
        proc = subprocess.Popen(lab.hook_argv(vmid, phase), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")
        time.sleep(rng.uniform(0.05, 0.95) * took[phase])
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        consistent(lab, set())
    assert kills >= 100, f"only {kills} of 150 runs killed mid-run ({took})"
    # whatever was left, the next run of each guest's hook makes it whole
    for vmid in pool:
        assert lab.hook(vmid, "pre-start").returncode == 0
    assert consistent(lab, set(pool)) == set(pool)
    for vmid in pool:
        assert lab.hook(vmid, "post-stop").returncode == 0
    assert consistent(lab, set()) == set()
    after = [line for line in lab.iptables_save().splitlines() if "PVENAT" not in line]
    assert after == before


def test_api_timeout_refuses_start_but_stop_still_cleans(lab):
    assert lab.hook(200, "pre-start").returncode == 0
    lab.config_source = "api"
    lab.write_config()
    lab.write_fixture(fault="timeout")
    try:
        start = time.monotonic()
        result = lab.hook(201, "pre-start")
        assert result.returncode == 1
        assert "guest 201: cannot read /nodes/pve1/qemu/201/config: " in result.stderr
        assert "no answer within 3 s (pve.timeout)" in result.stderr
        assert time.monotonic() - start < 10
        result = lab.hook(200, "post-stop")
        assert result.returncode == 0 and "forwards removed" in result.stdout
    finally:
        lab.config_source = "files"
        lab.write_config()
        lab.write_fixture()
    assert consistent(lab, set()) == set()

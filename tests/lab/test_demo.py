"""make demo end to end: the flow table it prints, nothing left behind, and nothing of the
machine's changed (its packages and /etc)."""

import hashlib
import os
import subprocess

import pytest

from lab import IFUPDOWN2, REPO, sh


def machine():
    """The installed packages and every file under /etc, with its content."""
    packages = sh("dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\\n"
                  ).stdout
    files = {}
    for folder, _, names in os.walk("/etc"):
        for name in names:
            path = os.path.join(folder, name)
            try:
                files[path] = os.readlink(path) if os.path.islink(path) else \
                    hashlib.sha1(open(path, "rb").read()).hexdigest()
            except OSError as e:
                files[path] = e.strerror
    return packages, files


def test_make_demo_prints_the_flow_table_and_changes_nothing():
    if os.geteuid() != 0:
        pytest.fail("the demo needs root (network namespaces, iptables)")
    before = machine()
    result = subprocess.run(["make", "-s", "-C", REPO, "demo"], capture_output=True,
                            text=True, env=dict(os.environ, KEEP="0"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout[result.stdout.index("flow "):].splitlines()
    head = lines[0]
    pvenat, plain = head.index("pvenat"), head.index("plain")
    assert head[plain:] == "plain iptables recipe, same forwards"
    rows = {line[:pvenat].strip(): (line[pvenat:plain].strip(), line[plain:].strip())
            for line in lines[1:] if line.strip() and not line.startswith("(")}
    assert len(rows) == 9
    assert not [name for name, (ours, _) in rows.items() if ours.startswith("!")]
    assert rows["VM 101 -> public:12222 -> itself"] == ("reached VM 101", "! no answer")
    assert rows["host -> public:11000 -> CT 102"] == ("reached CT 102", "! refused")
    assert rows["allow-list: other source -> public:13389"] == ("refused", "refused")
    assert not [n for n in sh("ip", "netns", "list").stdout.split() if n.startswith("pvndemo")]
    after = machine()
    assert after[0] == before[0]  # no package installed, removed or changed
    assert {p: h for p, h in after[1].items() if before[1].get(p) != h} == {}
    assert set(before[1]) - set(after[1]) == set()


def test_a_kept_demo_tells_the_truth():
    """What pvenat list and status say in a kept demo (the commands it prints) agrees with
    what it showed: both guests attached, leased and forwarded, the host set up."""
    result = subprocess.run(["make", "-s", "-C", REPO, "demo"], capture_output=True,
                            text=True, env=dict(os.environ, KEEP="1"))
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        tries = {line.split("-m pvehook ")[1].split()[0]: line.strip()
                 for line in result.stdout.splitlines() if "python3 -m pvehook" in line}
        listed = subprocess.run(tries["list"], shell=True, capture_output=True, text=True)
        rows = [line.split() for line in listed.stdout.splitlines()[1:]]
        assert {(r[0], r[3], r[6], r[-2]) for r in rows} == {
            ("101", "running", "yes", "yes"), ("102", "running", "yes", "yes")}
        status = subprocess.run(tries["status"], shell=True, capture_output=True, text=True)
        assert status.returncode == 0, status.stdout
        assert "guests without the hookscript: none" in status.stdout
    finally:
        down = subprocess.run(["make", "-s", "-C", REPO, "demo-down"], capture_output=True,
                              text=True)
    assert down.returncode == 0
    assert not [n for n in sh("ip", "netns", "list").stdout.split() if n.startswith("pvndemo")]


def test_a_failing_step_stops_the_demo_with_one_line():
    """ifup failing in pvenat install: the demo says so in one line, with no traceback and
    no second error that follows from the first, and leaves nothing behind."""
    ifup = os.path.join(IFUPDOWN2, "ifup")
    target = os.readlink(ifup)
    os.replace(ifup, ifup + ".real")
    with open(ifup, "w") as f:
        f.write("#!/bin/sh\necho 'error: vmbr1: a simulated failure' >&2\nexit 1\n")
    os.chmod(ifup, 0o755)
    try:
        result = subprocess.run(["/usr/bin/python3", os.path.join(REPO, "tests/lab/demo.py")],
                                capture_output=True, text=True)
    finally:
        os.replace(ifup + ".real", ifup)
    assert os.readlink(ifup) == target
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("demo: ")]
    assert len(errors) == 2, result.stderr
    assert errors[0].startswith("demo: pvenat install failed: pvenat: error: ")
    assert errors[0].endswith("a simulated failure")
    assert "Traceback" not in result.stdout + result.stderr
    assert "two guests" not in result.stdout  # nothing ran after it
    assert not [n for n in sh("ip", "netns", "list").stdout.split() if n.startswith("pvndemo")]

"""make demo end to end: the flow table it prints, nothing left behind, and nothing of the
machine's changed (its packages and /etc)."""

import hashlib
import os
import subprocess

import pytest

from lab import REPO, sh


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

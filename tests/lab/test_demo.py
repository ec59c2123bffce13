"""make demo end to end: the flow table it prints, and nothing left behind."""

import os
import subprocess
import sys

import pytest

from lab import REPO, sh


def test_demo_prints_the_flow_table_and_cleans_up():
    if os.geteuid() != 0:
        pytest.fail("the demo needs root (network namespaces, iptables)")
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "lab", "demo.py")],
                            capture_output=True, text=True, env=dict(os.environ, KEEP="0"))
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout[result.stdout.index("flow "):].splitlines()
    assert table[0].split() == ["flow", "pvenat", "plain", "iptables", "recipe"]
    rows = {line[:46].strip(): line[46:].split(None, 1) for line in table[1:] if line.strip()}
    assert len(rows) == 9 and all(pvenat == "works" for pvenat, _ in rows.values())
    assert rows["VM 101 -> public:12222 -> itself"][0] == "works"
    assert rows["VM 101 -> public:12222 -> itself"][1].startswith("FAILS")
    assert rows["host -> public:11000 -> CT 102"][1].startswith("FAILS")
    assert not [n for n in sh("ip", "netns", "list").stdout.split() if n.startswith("pvndemo")]

"""Shared by the unit tests (no root, no kernel) and the lab tests (root, namespaces)."""

import os
import shutil
import socket
import subprocess
import sys

import pytest

try:  # pvenat's own libraries: a python3 without them fails 17 tests for no reason of ours
    import proxmoxer, requests, structlog, yaml  # noqa: F401, E401
except ImportError as e:
    pytest.exit(f"{sys.executable} lacks {e.name}, which pvenat needs: run the tests with "
                "Debian's /usr/bin/python3 (make deps installs its packages) or the "
                ".venv's python (make deps)", returncode=4)

TESTS = os.path.dirname(os.path.abspath(__file__))
for folder in ("", "fakepve", "lab"):
    sys.path.insert(0, os.path.join(TESTS, folder))

import certs  # noqa: E402
from shared import FAKEPVE, TOKEN  # noqa: E402


@pytest.fixture(scope="session")
def cluster_pki(tmp_path_factory):
    """One cluster's CA and node certificate, made once (RSA keys take a while)."""
    config_dir = str(tmp_path_factory.mktemp("pki") / "pve")
    certs.make(config_dir, "pve1")
    return config_dir


@pytest.fixture
def fake_api(tmp_path, cluster_pki):
    """The fake HTTPS API on a free loopback port, its certificate signed by the CA of a
    PVE cluster whose /etc/pve is tmp_path/pve: (port, config_dir, fixture path)."""
    config_dir = str(tmp_path / "pve")
    shutil.copytree(cluster_pki, config_dir)
    cert, key = (f"{config_dir}/nodes/pve1/pve-ssl.{ext}" for ext in ("pem", "key"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fixture = tmp_path / "pve.json"
    fixture.write_text('{"guests": []}')
    proc = subprocess.Popen([sys.executable, os.path.join(FAKEPVE, "server.py"), str(cert),
                             str(key), str(port), TOKEN], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PVENAT_FAKE_PVE=str(fixture)))
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield port, config_dir, fixture
    finally:
        proc.kill()
        proc.wait()

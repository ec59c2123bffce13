"""Shared by the unit tests (no root, no kernel) and the lab tests (root, namespaces)."""

import os
import socket
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
for folder in ("", "fakepve", "lab"):
    sys.path.insert(0, os.path.join(TESTS, folder))

from shared import FAKEPVE, TOKEN  # noqa: E402


@pytest.fixture
def fake_api(tmp_path):
    """The fake HTTPS API on a free loopback port: (port, CA file, fixture path)."""
    cert, key = tmp_path / "api.pem", tmp_path / "api.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
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
        yield port, str(cert), fixture
    finally:
        proc.kill()
        proc.wait()

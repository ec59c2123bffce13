import os
import socket
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from lab import FAKEPVE, TOKEN, Lab  # noqa: E402


def lab_fixture(guests, **options):
    """A namespace lab for a fixture to yield from; removed whatever the tests did."""
    if os.geteuid() != 0:
        pytest.fail("the namespace lab needs root (network namespaces, iptables)")
    lab = Lab(guests, **options)
    try:
        yield lab
    finally:
        lab.close()


def proxmoxer_has_local() -> bool:
    import proxmoxer
    return "local" in proxmoxer.core.SERVICES["PVE"]["supported_backends"]


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

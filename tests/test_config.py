"""The host config: defaults, every key checked."""

import ipaddress

import pytest

from pvehook import config
from pvehook.errors import PvenatError


def test_missing_file_means_defaults(tmp_path):
    cfg = config.load(str(tmp_path / "none.yaml"))
    assert cfg == config.HostConfig()
    assert cfg.lan_network == ipaddress.IPv4Network("172.22.161.0/24")
    assert cfg.port_pool.first_outside(10000, 60999) is None
    assert cfg.reserved_ports.first_inside(5000, 5410) == 5405


def test_full_config():
    cfg = config.parse("wan_bridge: vmbr0\npublic_ip: 203.0.113.10\nlan_bridge: vmbr2\n"
                       "lan_address: 10.10.0.1/16\nport_pool: [20000-20099, 30000]\n"
                       "reserved_ports: []\nmax_forwards: 8\n"
                       "pve:\n  backend: https\n  node: pve7\n  verify_ssl: false\n", "x.yaml")
    assert cfg.public_ip == "203.0.113.10" and cfg.lan_bridge == "vmbr2"
    assert str(cfg.port_pool) == "20000-20099, 30000"
    assert cfg.max_forwards == 8 and cfg.pve.backend == "https" and cfg.pve.node_name() == "pve7"


@pytest.mark.parametrize("text,message", [
    ("wan_brige: vmbr0", "x.yaml, line 1: wan_brige: unknown key"),
    ("public_ip: 203.0.113", "public_ip:"),
    ("lan_address: 172.22.161.254", "needs a prefix length"),
    ("lan_address: 172.22.161.0/24", "network or broadcast address"),
    ("port_pool: [60000-10000]", "reversed"),
    ("max_forwards: lots", "not a positive whole number"),
    ("pve: {backend: ssh}", "'ssh' is not a backend"),
    ("pve: {tokn: x}", "pve.tokn: unknown key"),
    ("lan_bridge: vmbr0", "must differ"),
    ("wan_bridge: [a, b]", "expected a single value"),
    ("a: &x 1\nb: *x", "aliases"),
])
def test_bad_config_names_the_key(text, message):
    with pytest.raises(PvenatError) as e:
        config.parse(text, "x.yaml")
    assert message in e.value.message and e.value.code == "config"

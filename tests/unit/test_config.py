"""The host config: defaults, every key checked."""

import ipaddress
import os
import subprocess
import sys

import pytest

from pvehook import config
from pvehook.errors import PvenatError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse(text, tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return config.load(str(path), str(tmp_path / "state"))


def test_missing_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "none.yaml"))
    cfg = config.load(str(tmp_path / "none.yaml"), str(tmp_path))
    assert cfg == config.HostConfig()
    assert cfg.lan_network == ipaddress.IPv4Network("172.22.161.0/24")
    assert cfg.port_pool.first_outside(10000, 60999) is None
    assert cfg.reserved_ports.first_inside(5000, 5410) == 5405


def test_a_named_file_that_is_missing_is_an_error(tmp_path):
    """--config or $PVENAT_CONFIG naming a file that is not there must not mean defaults."""
    with pytest.raises(PvenatError, match=r"none.yaml: no such file \(named by --config or "
                       r"\$PVENAT_CONFIG\)"):
        config.load(str(tmp_path / "none.yaml"), str(tmp_path))


def test_full_config(tmp_path):
    cfg = parse("wan_bridge: vmbr0\npublic_ip: 203.0.113.10\nlan_bridge: vmbr2\n"
                "lan_address: 10.10.0.1/16\nport_pool: [20000-20099, 30000]\n"
                "reserved_ports: []\nmax_forwards: 8\n"
                "pve:\n  backend: https\n  node: pve7\n  verify_ssl: false\n", tmp_path)
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
    ("allow_routed: [198.51.100.1/24]", "'198.51.100.1/24' has host bits set; write the "
     "network, 198.51.100.0/24"),
    ("allow_routed: [lan]", "'lan' is not a network"),
    ("ipv6: {prefix: '2001:db8::/48'}", "is a /48; give one /64 of it"),
    ("ipv6: {upstream: nd}", "use auto or routed or on-link"),
    ("ipv6: maybe", "use true or false"),
])
def test_bad_config_names_the_key(text, message, tmp_path):
    with pytest.raises(PvenatError) as e:
        parse(text, tmp_path)
    assert message in e.value.message and e.value.code == "config"


def test_allow_routed(tmp_path):
    assert config.HostConfig().allow_routed == ()  # nothing routed gets in by default
    cfg = parse("allow_routed: [198.51.100.0/24, 203.0.113.2]\n", tmp_path)
    assert cfg.allow_routed == ("198.51.100.0/24", "203.0.113.2/32")
    assert parse("allow_routed: []\n", tmp_path).allow_routed == ()


def test_load_keeps_the_parse_and_checks_it_again(tmp_path, monkeypatch):
    """The cache spares hooks PyYAML; it never spares a check or hides an edit."""
    state = str(tmp_path / "state")
    path = tmp_path / "pvenat.yaml"
    path.write_text("lan_bridge: vmbr2\nport_pool: [20000-20099]\n")
    assert config.load(str(path), state).lan_bridge == "vmbr2"
    cache = tmp_path / "state" / config.CACHE
    assert cache.exists()
    probe = ("import sys; from pvehook import config; c = config.load(*sys.argv[1:]); "
             "print(c.lan_bridge, c.port_pool, 'yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, str(path), state], capture_output=True,
                         text=True, check=True, cwd=REPO, env=dict(os.environ)).stdout
    assert out == "vmbr2 20000-20099 False\n"
    path.write_text("lan_bridge: vmbr3\n")  # an edit is read at once
    assert config.load(str(path), state).lan_bridge == "vmbr3"
    path.write_text("lan_bridge: vmbr0\n")  # a broken config is refused each time
    for _ in range(2):
        with pytest.raises(PvenatError, match="both vmbr0; they must differ"):
            config.load(str(path), state)
    cache.write_text("{not json")  # a damaged cache is only a slower start
    path.write_text("lan_bridge: vmbr4\n")
    assert config.load(str(path), state).lan_bridge == "vmbr4"
    assert config.load(str(path), state).lan_bridge == "vmbr4"

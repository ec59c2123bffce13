"""Host config: /etc/pvenat/pvenat.yaml, every key checked, every default explicit.

Each key has its default in the NamedTuples below and its converter in the FIELDS
tables; a key in neither is refused with the keys that exist.
"""

import hashlib
import ipaddress
import json
import os
import re
from typing import NamedTuple

from . import files, yamlstrict
from .errors import PvenatError
from .ports import PortSet

DEFAULT_PATH = "/etc/pvenat/pvenat.yaml"
CACHE = "config.json"  # the config file's last parse, so that a hook need not import PyYAML


class PveSettings(NamedTuple):
    backend: str = "local"  # local: pvesh on this node; https: API token
    node: str = "auto"  # auto: this host's short hostname, as PVE names nodes
    host: str = "127.0.0.1"
    port: int = 8006
    user: str = "pvenat@pve"
    token_name: str = "hook"
    token_file: str = "/etc/pvenat/token"
    verify_ssl: str = "pve"  # pve (the cluster's own CA), true (the system's), false, a path
    timeout: int = 10
    config_source: str = "files"  # files: the .conf files under config_dir; or api
    config_dir: str = "/etc/pve"
    lock_dir: str = "/run/lock"  # where PVE keeps guest config locks

    def node_name(self) -> str:
        return os.uname().nodename.split(".")[0] if self.node == "auto" else self.node

    def ca_file(self) -> str:
        """The CA that signs every node's pve-ssl.pem, not in the system's trust store
        (pve-cluster src/PVE/Cluster/Setup.pm)."""
        return os.path.join(self.config_dir, "pve-root-ca.pem")


class Ipv6Settings(NamedTuple):
    """IPv6 for the guests (ipv6.py): each 'auto' or given."""

    prefix: str = "auto"  # auto: the /64 of wan_bridge's global address; or a /64
    upstream: str = "auto"  # routed (the prefix is routed to the host), on-link, auto
    lan_address: str = "auto"  # the host's address on lan_bridge; auto: PREFIX::1 or next


class HostConfig(NamedTuple):
    wan_bridge: str = "vmbr0"
    public_ip: str = "auto"  # or an IPv4 address
    lan_bridge: str = "vmbr1"
    lan_address: ipaddress.IPv4Interface = ipaddress.IPv4Interface("172.22.161.254/24")
    port_pool: PortSet = PortSet.parse(["10000-60999"])
    reserved_ports: PortSet = PortSet.parse(
        [22, 85, 111, 3128, "5405-5412", "5900-5999", 8006, "60000-60050"])
    max_forwards: int = 64
    log_file: str = "/var/log/pvenat.log"
    dhcp: bool = True  # DHCP and DNS on lan_bridge (dnsmasq): static leases for guests
    dhcp_range: tuple = ()  # (first, last) addresses for guests pvenat does not know
    dns_servers: tuple = ()  # where the guests' DNS goes; () = the host's resolv.conf
    # wan-side networks that may reach guests directly, routing the guest subnet via the
    # host (no NAT, every port); anything else from wan_bridge that pvenat's forwards
    # did not DNAT is dropped
    allow_routed: tuple = ()
    ipv6: Ipv6Settings | None = None  # None: off (the default)
    pve: PveSettings = PveSettings()

    @property
    def lan_network(self) -> ipaddress.IPv4Network:
        return self.lan_address.network


def config_path(explicit=None) -> str:
    return explicit or os.environ.get("PVENAT_CONFIG") or DEFAULT_PATH


def load(path: str, state_dir: str) -> HostConfig:
    """Read and check the config; a missing default file means all defaults, a missing file
    that --config or $PVENAT_CONFIG named is an error. The parse is cached in
    ``state_dir``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if path != DEFAULT_PATH:
            raise PvenatError("config", f"{path}: no such file (named by --config or "
                              "$PVENAT_CONFIG); give the path of a pvenat config, or "
                              f"leave both out for {DEFAULT_PATH}") from None
        return HostConfig()
    except OSError as e:
        raise PvenatError("config", f"{path}: cannot read: {e.strerror}") from None
    return _build(_parse_cached(text, path, state_dir), path)


def _build(root, path: str) -> HostConfig:
    if root is None:
        return HostConfig()
    if not isinstance(root, yamlstrict.Map):
        raise PvenatError("config", f"{path}: expected keys such as 'wan_bridge: vmbr0'")
    cfg = HostConfig(**_fields(root, FIELDS, path, ""))
    if cfg.lan_address.ip in (cfg.lan_network.network_address,
                              cfg.lan_network.broadcast_address):
        raise PvenatError("config", f"{path}: lan_address {cfg.lan_address} is the subnet's "
                          "network or broadcast address; use a host address such as "
                          f"{cfg.lan_network.broadcast_address - 1}/{cfg.lan_network.prefixlen}")
    if cfg.wan_bridge == cfg.lan_bridge:
        raise PvenatError("config", f"{path}: wan_bridge and lan_bridge are both "
                          f"{cfg.wan_bridge}; they must differ")
    for address in cfg.dhcp_range:
        if ipaddress.IPv4Address(address) not in cfg.lan_network:
            raise PvenatError("config", f"{path}: dhcp_range {'-'.join(cfg.dhcp_range)} is "
                              f"not inside the guest subnet {cfg.lan_network}")
    return cfg


def _parse_cached(text: str, path: str, state_dir: str):
    """The YAML tree of the config, from the cache when the file is unchanged. The cache
    holds the tree, not the result: every key is checked again on every load."""
    cache = os.path.join(state_dir, CACHE)
    key = hashlib.sha1(f"{path}\0{text}".encode()).hexdigest()
    try:
        with open(cache, encoding="utf-8") as f:
            cached = json.load(f)
        if cached["key"] == key:
            return yamlstrict.from_plain(cached["tree"]) if cached["tree"] else None
    except (OSError, ValueError, LookupError, TypeError):
        pass
    root = yamlstrict.load(text, _at(path), "config")
    try:
        files.write_atomic(cache, json.dumps(
            {"key": key, "tree": root and yamlstrict.to_plain(root)}))
    except OSError:
        pass  # no cache then, only a slower start
    return root


def _at(path: str):
    return lambda line: path if line is None else f"{path}, line {line}"


def _fields(node, table: dict, path: str, prefix: str) -> dict:
    out = {}
    for key, value in node.items.items():
        where = f"{path}, line {node.keys[key]}: {prefix}{key}"
        if key not in table:
            raise PvenatError("config", f"{where}: unknown key; known keys are "
                              f"{', '.join(prefix + k for k in table)}")
        try:
            out[key] = table[key](value, path, prefix + key)
        except (ValueError, TypeError) as e:
            raise PvenatError("config", f"{where}: {e}") from None
    return out


# --- converters: a YAML node (with the file and key, for a section) -> a value ---------

def _scalar(value) -> str:
    if not isinstance(value, yamlstrict.Scalar):
        raise TypeError("expected a single value, not a list or mapping")
    return value.value


def _text(value, *_):
    return _scalar(value)


def _ifname(value, *_):
    text = _scalar(value)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", text):
        raise ValueError(f"{text!r} is not an interface name")
    return text


def _public_ip(value, *_):
    text = _scalar(value)
    return text if text == "auto" else str(ipaddress.IPv4Address(text))


def _interface(value, *_):
    text = _scalar(value)
    iface = ipaddress.IPv4Interface(text)
    if "/" not in text:
        raise ValueError(f"{text!r} needs a prefix length, such as {text}/24")
    return iface


def _ports(value, *_):
    items = value.items if isinstance(value, yamlstrict.Seq) else (value,)
    return PortSet.parse(_scalar(i) for i in items)


def _count(value, *_):
    text = _scalar(value)
    if not re.fullmatch(r"[0-9]{1,6}", text) or int(text) < 1:
        raise ValueError(f"{text!r} is not a positive whole number")
    return int(text)


def _one_of(*allowed, noun=""):
    def convert(value, *_):
        text = _scalar(value)
        if text not in allowed:
            what = f"{text!r} is not a {noun};" if noun else f"{text!r}:"
            raise ValueError(f"{what} use {' or '.join(allowed)}")
        return text
    return convert


def _flag(value, *_):
    text = _scalar(value)
    if text not in ("true", "false"):
        raise ValueError(f"{text!r}: use true or false")
    return text == "true"


def _address_range(value, *_):
    text = _scalar(value)
    first, sep, last = text.partition("-")
    try:
        first, last = ipaddress.IPv4Address(first.strip()), ipaddress.IPv4Address(last.strip())
    except ValueError:
        raise ValueError(f"{text!r}: write FIRST-LAST, such as 172.22.161.100-172.22.161.199"
                         ) from None
    if not sep or last < first:
        raise ValueError(f"{text!r}: write FIRST-LAST, the first address before the last")
    return str(first), str(last)


def _addresses(value, *_):
    items = value.items if isinstance(value, yamlstrict.Seq) else (value,)
    texts = [_scalar(i) for i in items]
    if texts == ["auto"]:
        return ()
    return tuple(str(ipaddress.IPv4Address(t)) for t in texts)


def _networks(value, *_):
    items = value.items if isinstance(value, yamlstrict.Seq) else (value,)
    out = []
    for text in (_scalar(i) for i in items):
        try:
            net = ipaddress.ip_network(text)
        except ValueError:
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(f"{text!r} is not a network; write one such as "
                                 "198.51.100.0/24, 198.51.100.7 or 2001:db8:5::/48") from None
            raise ValueError(f"{text!r} has host bits set; write the network, "
                             f"{net}") from None
        out.append(str(net))
    return tuple(out)


def _verify(value, *_):
    text = _scalar(value)
    if text not in ("pve", "true", "false") and not text.startswith("/"):
        raise ValueError(f"{text!r}: use pve (the cluster's CA), true (the system's), false "
                         "or the path of a CA bundle")
    return text


def _ipv6(value, path, key):
    """``ipv6: true`` (every setting auto), ``false``, or its settings."""
    if isinstance(value, yamlstrict.Scalar):
        return Ipv6Settings() if _flag(value) else None
    if not isinstance(value, yamlstrict.Map):
        raise TypeError("use true, false, or keys such as 'prefix: auto'")
    return Ipv6Settings(**_fields(value, IPV6_FIELDS, path, key + "."))


def _prefix(value, *_):
    text = _scalar(value)
    if text == "auto":
        return text
    try:
        net = ipaddress.IPv6Network(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv6 network; write the /64 your hoster "
                         "gave, such as 2001:db8:1:2::/64, or auto") from None
    if net.prefixlen != 64:
        raise ValueError(f"{text!r} is a /{net.prefixlen}; give one /64 of it, such as "
                         f"{next(net.subnets(new_prefix=64)) if net.prefixlen < 64 else ''}"
                         " (router advertisements and DHCPv6 serve a /64)")
    return str(net)


def _address6(value, *_):
    text = _scalar(value)
    return text if text == "auto" else str(ipaddress.IPv6Address(text))


def _pve(value, path, key):
    if not isinstance(value, yamlstrict.Map):
        raise PvenatError("config", f"{path}, line {value.line}: '{key}' takes keys such as "
                          "'backend: local'")
    return PveSettings(**_fields(value, PVE_FIELDS, path, key + "."))


PVE_FIELDS = {
    "backend": _one_of("local", "https", noun="backend"), "node": _text, "host": _text,
    "port": _count, "user": _text, "token_name": _text, "token_file": _text, "verify_ssl": _verify,
    "timeout": _count, "config_source": _one_of("api", "files"), "config_dir": _text,
    "lock_dir": _text,
}
IPV6_FIELDS = {
    "prefix": _prefix, "upstream": _one_of("auto", "routed", "on-link", noun="upstream"),
    "lan_address": _address6,
}
FIELDS = {
    "wan_bridge": _ifname, "public_ip": _public_ip, "lan_bridge": _ifname,
    "lan_address": _interface, "port_pool": _ports, "reserved_ports": _ports,
    "max_forwards": _count, "log_file": _text, "dhcp": _flag, "dhcp_range": _address_range,
    "dns_servers": _addresses, "allow_routed": _networks, "ipv6": _ipv6, "pve": _pve,
}

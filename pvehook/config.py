"""Host config: /etc/pvenat/pvenat.yaml, every key checked, every default explicit."""

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
STATE_DIR = "/run/pvenat"  # caches only, safe to delete; PVENAT_STATE_DIR moves it (labs)
CACHE = "config.json"  # the config file's last parse, so that a hook need not import PyYAML
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")


class PveSettings(NamedTuple):
    backend: str = "local"  # local: pvesh on this node; https: API token
    node: str = "auto"  # auto: this host's short hostname, as PVE names nodes
    host: str = "127.0.0.1"
    port: int = 8006
    user: str = "pvenat@pve"
    token_name: str = "hook"
    token_file: str = "/etc/pvenat/token"
    verify_ssl: str = "true"  # true, false, or a CA bundle path
    timeout: int = 10
    config_source: str = "api"  # api, or files: read the .conf files under config_dir
    config_dir: str = "/etc/pve"
    lock_dir: str = "/run/lock"  # where PVE keeps guest config locks

    def node_name(self) -> str:
        return os.uname().nodename.split(".")[0] if self.node == "auto" else self.node


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
    pve: PveSettings = PveSettings()
    state_dir: str = STATE_DIR  # not a config key: set from PVENAT_STATE_DIR

    @property
    def lan_network(self) -> ipaddress.IPv4Network:
        return self.lan_address.network


def config_path(explicit=None) -> str:
    return explicit or os.environ.get("PVENAT_CONFIG") or DEFAULT_PATH


def load(path: str) -> HostConfig:
    """Read and check the config; a missing file means all defaults."""
    state_dir = os.environ.get("PVENAT_STATE_DIR") or STATE_DIR
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return HostConfig(state_dir=state_dir)
    except OSError as e:
        raise PvenatError("config", f"{path}: cannot read: {e.strerror}") from None
    return _build(_parse_cached(text, path, state_dir), path, state_dir)


def parse(text: str, path: str) -> HostConfig:
    """Check config text, without the cache."""
    return _build(yamlstrict.load(text, path, "config"), path, STATE_DIR)


def _build(root, path: str, state_dir: str) -> HostConfig:
    if root is None:
        return HostConfig(state_dir=state_dir)
    if not isinstance(root, yamlstrict.Map):
        raise PvenatError("config", f"{path}: expected keys such as 'wan_bridge: vmbr0'")
    values = _fields(root, HostConfig, path, "")
    values["state_dir"] = state_dir
    if "pve" in values:
        pve = root.items["pve"]
        if not isinstance(pve, yamlstrict.Map):
            raise PvenatError("config", f"{path}, line {pve.line}: 'pve' takes keys such as "
                              "'backend: local'")
        values["pve"] = PveSettings(**_fields(pve, PveSettings, path, "pve."))
    cfg = HostConfig(**values)
    if cfg.lan_address.ip in (cfg.lan_network.network_address,
                              cfg.lan_network.broadcast_address):
        raise PvenatError("config", f"{path}: lan_address {cfg.lan_address} is the subnet's "
                          "network or broadcast address; use a host address such as "
                          f"{cfg.lan_network.broadcast_address - 1}/{cfg.lan_network.prefixlen}")
    if cfg.wan_bridge == cfg.lan_bridge:
        raise PvenatError("config", f"{path}: wan_bridge and lan_bridge are both "
                          f"{cfg.wan_bridge}; they must differ")
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
    root = yamlstrict.load(text, path, "config")
    try:
        files.write_atomic(cache, json.dumps(
            {"key": key, "tree": root and yamlstrict.to_plain(root)}))
    except OSError:
        pass  # no cache then, only a slower start
    return root


def _fields(node, cls, path, prefix) -> dict:
    known = [k for k in cls._fields if k != "state_dir"]
    out = {}
    for key, value in node.items.items():
        where = f"{path}, line {node.keys[key]}: {prefix}{key}"
        if key not in known:
            raise PvenatError("config", f"{where}: unknown key; known keys are "
                              f"{', '.join(prefix + k for k in known)}")
        if key == "pve":
            out[key] = value  # checked by the caller
            continue
        try:
            out[key] = _convert(key, value)
        except (ValueError, TypeError) as e:
            raise PvenatError("config", f"{where}: {e}") from None
    return out


def _scalar(value) -> str:
    if not isinstance(value, yamlstrict.Scalar):
        raise TypeError("expected a single value, not a list or mapping")
    return value.value


def _convert(key, value):
    if key in ("port_pool", "reserved_ports"):
        items = value.items if isinstance(value, yamlstrict.Seq) else (value,)
        return PortSet.parse(_scalar(i) for i in items)
    text = _scalar(value)
    if key in ("wan_bridge", "lan_bridge"):
        if not _IFNAME.fullmatch(text):
            raise ValueError(f"{text!r} is not an interface name")
        return text
    if key == "public_ip":
        if text == "auto":
            return text
        return str(ipaddress.IPv4Address(text))
    if key == "lan_address":
        iface = ipaddress.IPv4Interface(text)
        if "/" not in text:
            raise ValueError(f"{text!r} needs a prefix length, such as {text}/24")
        return iface
    if key in ("max_forwards", "port", "timeout"):
        if not re.fullmatch(r"[0-9]{1,6}", text) or int(text) < 1:
            raise ValueError(f"{text!r} is not a positive whole number")
        return int(text)
    if key == "backend" and text not in ("local", "https"):
        raise ValueError(f"{text!r} is not a backend; use local or https")
    if key == "config_source" and text not in ("api", "files"):
        raise ValueError(f"{text!r}: use api or files")
    if key == "verify_ssl" and text not in ("true", "false") and not text.startswith("/"):
        raise ValueError(f"{text!r}: use true, false or the path of a CA bundle")
    return text

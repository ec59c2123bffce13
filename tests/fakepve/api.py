"""A fake PVE API over a JSON fixture: the real paths, the real JSON shapes.

Both fronts use it: the ``pvesh`` executable (proxmoxer's local backend) and server.py
(the https backend with an API token). The fixture, named by $PVENAT_FAKE_PVE, is
{"guests": [{"vmid", "type", "node", "status", "name", "config": {...}}],
 "fault": null | "timeout" | "garbage"}; PUT requests write it back.
"""

import fcntl
import json
import os
import re
import time
from contextlib import contextmanager


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


@contextmanager
def fixture(path, write=False):
    with open(path, "r+" if write else "r") as f:
        fcntl.flock(f, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
        data = json.load(f)
        yield data
        if write:
            f.seek(0)
            f.truncate()
            json.dump(data, f, indent=1)


def conf_path(guest):
    """Where pmxcfs keeps the guest's config, under /etc/pve."""
    folder = "qemu-server" if guest["type"] == "qemu" else "lxc"
    return f"nodes/{guest['node']}/{folder}/{guest['vmid']}.conf"


def render_conf(config: dict, snapshot: dict | None = None) -> str:
    """A .conf as PVE writes it: Notes as percent-encoded # lines, then keys, then
    snapshot sections (which hold older configs and must not be read as current)."""
    def encode(text):
        plain = " -_.,/=+*!?()[]{}<>'\"`~^|;@&$"
        return "".join(c if c.isascii() and (c.isalnum() or c in plain) else
                       "".join(f"%{b:02X}" for b in c.encode()) for c in text)

    lines = [f"#{encode(line)}" for line in config.get("description", "").split("\n")] \
        if config.get("description") else []
    lines += [f"{k}: {v}" for k, v in sorted(config.items()) if k != "description"]
    if snapshot:
        lines += ["", "[before-upgrade]"] + [f"{k}: {v}" for k, v in snapshot.items()]
    return "\n".join(lines) + "\n"


def _find(data, node, kind, vmid):
    for g in data["guests"]:
        if g["vmid"] == vmid and g["type"] == kind and g["node"] == node:
            return g
    folder = "qemu-server" if kind == "qemu" else "lxc"
    raise ApiError(500, f"Configuration file 'nodes/{node}/{folder}/{vmid}.conf' does not exist")


def _summary(g):
    out = {"vmid": g["vmid"], "name": g.get("name", f"guest{g['vmid']}"),
           "status": g.get("status", "stopped")}
    if g["config"].get("tags"):
        out["tags"] = g["config"]["tags"]
    if g["type"] == "lxc":
        out["type"] = "lxc"
    return out


def handle(path, method="GET", params=None):
    """(data) for one request, or ApiError. ``params`` are the request's options."""
    params = params or {}
    fixture_path = os.environ["PVENAT_FAKE_PVE"]
    with fixture(fixture_path) as data:
        fault = data.get("fault")
    if fault == "timeout":
        time.sleep(15)  # longer than any client timeout in the tests; then it exits
    if fault == "garbage":
        return "<html>502 Bad Gateway</html>"
    path = "/" + path.strip("/")
    if method == "GET" and path == "/version":
        return {"version": "8.2.4", "release": "8.2", "repoid": "faa83925"}
    if method == "GET" and path == "/cluster/resources":
        with fixture(fixture_path) as data:
            return [dict(_summary(g), id=f"{g['type']}/{g['vmid']}", type=g["type"],
                         node=g["node"]) for g in data["guests"]]
    m = re.fullmatch(r"/storage/([\w.-]+)", path)
    if m and method == "GET":
        with fixture(fixture_path) as data:
            if m.group(1) not in data.get("storage", {}):
                raise ApiError(500, f"storage '{m.group(1)}' does not exist")
            return dict(data["storage"][m.group(1)], storage=m.group(1))
    if m and method == "PUT":
        with fixture(fixture_path, write=True) as data:
            data["storage"][m.group(1)].update(params)
        return None
    m = re.fullmatch(r"/nodes/([\w.-]+)/(qemu|lxc)(?:/([0-9]+)(/config|/status/current)?)?",
                     path)
    if not m:
        raise ApiError(501, f"Method '{method} {path}' not implemented")
    node, kind, vmid, rest = m.group(1), m.group(2), m.group(3), m.group(4)
    if vmid is None and method == "GET":
        with fixture(fixture_path) as data:
            return [_summary(g) for g in data["guests"] if g["node"] == node
                    and g["type"] == kind]
    vmid = int(vmid)
    if rest == "/status/current" and method == "GET":
        with fixture(fixture_path) as data:
            return _summary(_find(data, node, kind, vmid))
    if rest == "/config" and method == "GET":
        with fixture(fixture_path) as data:
            config = dict(_find(data, node, kind, vmid)["config"], digest="0" * 40)
            if "description" in config:  # PVE drops trailing white space when it parses
                config["description"] = config["description"].rstrip()
            return config
    if rest == "/config" and method == "PUT":
        with fixture(fixture_path, write=True) as data:
            config = _find(data, node, kind, vmid)["config"]
            for key in filter(None, str(params.pop("delete", "")).split(",")):
                config.pop(key, None)
            params.pop("digest", None)
            config.update(params)
        return None
    raise ApiError(501, f"Method '{method} {path}' not implemented")

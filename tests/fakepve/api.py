"""A fake PVE API over a JSON fixture: the real paths, JSON shapes, errors and permissions.

Both fronts use it: the ``pvesh`` executable (root@pam on the node) and server.py (the
HTTPS API, with an API token). The fixture, named by $PVENAT_FAKE_PVE, is
{"guests": [{"vmid", "type", "node", "status", "name", "config": {...},
             "pending": {...}?}],
 "storage": {...}, "fault": null | "timeout" | "garbage" | "warning", "etc_pve": DIR};
changes are written back, and each guest's config to DIR/nodes/NODE/... as pmxcfs
holds it (write_confs). What it models, from PVE's source:

- GET .../config merges pending changes unless current=1 (qemu-server PVE/API2/Qemu.pm
  vm_config, pve-container PVE/API2/LXC/Config.pm; AbstractConfig load_current_config);
- only root@pam may set or delete a guest's hookscript: a token gets qemu-server's
  "only root can set 'hookscript' config" (500) or pve-container's permission error
  (403); GET and PUT /storage/{id} need Datastore.Allocate, which PVEAuditor lacks;
- a missing guest: "Configuration file 'nodes/N/qemu-server/V.conf' does not exist".
"""

import fcntl
import json
import os
import re
import time
from contextlib import contextmanager

ROOT = "root@pam"


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


def conf_path(node, kind, vmid):
    """Where pmxcfs keeps the guest's config, under /etc/pve."""
    folder = "qemu-server" if kind == "qemu" else "lxc"
    return f"nodes/{node}/{folder}/{vmid}.conf"


def render_conf(config: dict, snapshot: dict | None = None, pending: dict | None = None,
                kind: str = "qemu") -> str:
    """A .conf as PVE writes it: Notes as percent-encoded # lines, then keys, then
    pending changes ([PENDING] for QEMU, [pve:pending] for LXC) and snapshot sections,
    which hold configs that are not current."""
    def encode(text):
        plain = " -_.,/=+*!?()[]{}<>'\"`~^|;@&$"
        return "".join(c if c.isascii() and (c.isalnum() or c in plain) else
                       "".join(f"%{b:02X}" for b in c.encode()) for c in text)

    lines = [f"#{encode(line)}" for line in config.get("description", "").split("\n")] \
        if config.get("description") else []
    lines += [f"{k}: {v}" for k, v in sorted(config.items()) if k != "description"]
    if pending:
        lines += ["", "[PENDING]" if kind == "qemu" else "[pve:pending]"]
        lines += [f"{k}: {v}" for k, v in sorted(pending.items())]
    if snapshot:
        lines += ["", "[before-upgrade]"] + [f"{k}: {v}" for k, v in snapshot.items()]
    return "\n".join(lines) + "\n"


def write_confs(data):
    """Every guest's .conf under data["etc_pve"], as pmxcfs shows them; configs of guests
    no longer in the fixture go. The snapshot section is there to be skipped."""
    root = data.get("etc_pve")
    if not root:
        return
    for folder, _, names in os.walk(os.path.join(root, "nodes")):
        for name in names:
            if name.endswith(".conf") and folder.endswith(("/qemu-server", "/lxc")):
                os.remove(os.path.join(folder, name))
    for g in data["guests"]:
        path = os.path.join(root, conf_path(g["node"], g["type"], g["vmid"]))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(render_conf(g["config"], {"description": "old%0Anotes",
                                              "tags": "pvenat-10001"},
                                g.get("pending"), g["type"]))


def _find(data, node, kind, vmid):
    for g in data["guests"]:
        if g["vmid"] == vmid and g["type"] == kind and g["node"] == node:
            return g
    raise ApiError(500, f"Configuration file '{conf_path(node, kind, vmid)}' does not exist")


def _summary(g):
    """An entry of /cluster/resources: the name is the config's (QEMU name, LXC hostname)."""
    name = g["config"].get("name" if g["type"] == "qemu" else "hostname")
    out = {"vmid": g["vmid"], "status": g.get("status", "stopped"), **(
        {"name": name} if name else {})}
    if g["config"].get("tags"):
        out["tags"] = g["config"]["tags"]
    if g["type"] == "lxc":
        out["type"] = "lxc"
    return out


def _config(g, current: bool) -> dict:
    config = dict(g["config"])
    if not current:
        pending = dict(g.get("pending", {}))
        for key in filter(None, pending.pop("delete", "").split(",")):
            config.pop(key.lstrip("!"), None)
        config.update(pending)
    config["digest"] = "0" * 40
    if "description" in config:  # PVE drops trailing white space when it parses
        config["description"] = config["description"].rstrip()
    return config


def handle(path, method="GET", params=None, user=ROOT):
    """(data) for one request, or ApiError. ``params`` are the request's options."""
    params = dict(params or {})
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
    if m:
        if user != ROOT:  # pve-storage PVE/API2/Storage/Config.pm
            raise ApiError(403, f"Permission check failed (/storage/{m.group(1)}, "
                           "Datastore.Allocate)")
        with fixture(fixture_path, write=method == "PUT") as data:
            if m.group(1) not in data.get("storage", {}):
                raise ApiError(500, f"storage '{m.group(1)}' does not exist")
            if method == "PUT":
                data["storage"][m.group(1)].update(params)
                return None
            return dict(data["storage"][m.group(1)], storage=m.group(1))
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
            return _config(_find(data, node, kind, vmid), params.get("current") == "1")
    if rest == "/config" and method == "PUT":
        deleted = [k for k in str(params.pop("delete", "")).split(",") if k]
        if user != ROOT and ("hookscript" in params or "hookscript" in deleted):
            if kind == "qemu":  # qemu-server PVE/API2/Qemu.pm check_vm_modify_config_perm
                raise ApiError(500, "only root can set 'hookscript' config")
            raise ApiError(403, "Permission check failed (changing the hookscript is only "
                           "allowed for root@pam)")  # pve-container PVE/LXC.pm
        with fixture(fixture_path, write=True) as data:
            config = _find(data, node, kind, vmid)["config"]
            for key in deleted:
                config.pop(key, None)
            params.pop("digest", None)
            config.update(params)
            write_confs(data)
        return None
    raise ApiError(501, f"Method '{method} {path}' not implemented")

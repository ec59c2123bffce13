"""A fake PVE API over a JSON fixture: the real paths, JSON shapes, errors and permissions.

Both fronts use it: the ``pvesh`` executable (root@pam on the node) and server.py (the
HTTPS API, with an API token). The fixture, named by $PVENAT_FAKE_PVE, is
{"guests": [{"vmid", "type", "node", "status", "name", "config": {...},
             "pending": {...}?, "snapshots": {NAME: {...}}?, "cloudinit": {...}?}],
 "storage": {...}, "fault": null | "timeout" | "garbage" | "warning", "etc_pve": DIR,
 "pvesh_load": SECONDS?};
changes are written back, and each guest's config to DIR/nodes/NODE/... as pmxcfs
holds it (write_confs). What it models, from PVE's source:

- GET .../config merges pending changes unless current=1 (qemu-server PVE/API2/Qemu.pm
  vm_config, pve-container PVE/API2/LXC/Config.pm; AbstractConfig load_current_config),
  with ``digest``, the sha1 of the .conf (QemuServer.pm parse_vm_config, LXC/Config.pm
  parse_pct_config), and without the [special:cloudinit] section (the answer holds
  config properties alone: json_config_properties);
- PUT .../config with a ``digest`` that is not the .conf's is refused, QEMU's words
  "checksum mismatch (file change by other user?)" (update_vm), LXC's "detected modified
  configuration - file changed by other user? Try again." (pve-common PVE/Tools.pm
  assert_if_modified);
- a cloud-init option (ipconfigN, nameserver, ...) changed on a running VM goes into the
  current config at once, and [special:cloudinit] records what the guest's drive still
  has (QemuServer.pm vmconfig_hotplug_pending, cloudinit_record_changed); the section is
  written only while the VM has a cloud-init drive (write_vm_config: has_cloudinit), and
  a start drops it (qmpct.py);
- GET /storage/{id} gives content as a comma list and content-dirs as an object
  (pve-storage PVE/API2/Storage/Config.pm api_storage_config);
- a hookscript set is checked as check_hookscript does: QEMU refuses a missing one with
  a parameter error, "400 Parameter verification failed." and the reason on the next line
  (update_vm's raise_param_exc, pve-common PVE/Exception.pm), LXC with the reason alone
  (pve-container PVE/LXC/Config.pm update_pct_config); the script is looked for under
  the fixture's runtime "root", the node's file system (/ by default);
- only root@pam may set or delete a guest's hookscript: a token gets qemu-server's
  "only root can set 'hookscript' config" (500) or pve-container's permission error
  (403); GET and PUT /storage/{id} need Datastore.Allocate, which PVEAuditor lacks;
- a missing guest: "Configuration file 'nodes/N/qemu-server/V.conf' does not exist";
- POST /nodes/N/qemu and /lxc create a guest (stopped): new_config below.
"""

import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from contextlib import contextmanager

ROOT = "root@pam"
# datacenter.cfg mac_prefix's default, the IEEE OUI of Proxmox (pve-cluster
# src/PVE/DataCenterConfig.pm $PROXMOX_OUI)
MAC_PREFIX = "BC:24:11"


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
                kind: str = "qemu", snapshots: dict | None = None,
                cloudinit: dict | None = None) -> str:
    """A .conf as PVE writes it (qemu-server PVE/QemuServer.pm write_vm_config): Notes as
    percent-encoded # lines, then keys; then pending changes ([PENDING] for QEMU,
    [pve:pending] for LXC), [special:cloudinit] while the VM has a cloud-init drive, and
    the snapshot sections by name (``snapshot``: one called before-upgrade), which hold
    configs that are not current."""
    def section(conf):
        lines = [f"#{_encode(line)}" for line in conf.get("description", "").split("\n")] \
            if conf.get("description") else []
        return lines + [f"{k}: {v}" for k, v in sorted(conf.items()) if k != "description"]

    lines = section(config)
    if pending:
        lines += ["", "[PENDING]" if kind == "qemu" else "[pve:pending]"]
        lines += [f"{k}: {v}" for k, v in sorted(pending.items())]
    if cloudinit and kind == "qemu" and has_cloudinit(config):
        lines += ["", "[special:cloudinit]"] + section(cloudinit)
    snapshots = dict(snapshots or {}, **({"before-upgrade": snapshot} if snapshot else {}))
    for name, conf in sorted(snapshots.items()):
        lines += ["", f"[{name}]"] + [f"{k}: {v}" for k, v in conf.items()]
    return "\n".join(lines) + "\n"


def _encode(text):
    plain = " -_.,/=+*!?()[]{}<>'\"`~^|;@&$"
    return "".join(c if c.isascii() and (c.isalnum() or c in plain) else
                   "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def has_cloudinit(config: dict) -> bool:
    """A cloud-init drive among the VM's disks (QemuConfig.pm has_cloudinit)."""
    return any(re.fullmatch(r"(ide|sata|scsi|virtio)[0-9]+", k) and
               re.search(r"vm-[0-9]+-cloudinit", str(v)) for k, v in config.items())


# A snapshot every guest of the fixture has unless it names its own: there to be skipped.
OLD_SNAPSHOT = {"before-upgrade": {"description": "old%0Anotes", "tags": "pvenat-10001"}}


def conf_text(g) -> str:
    """The guest's .conf as pmxcfs holds it."""
    return render_conf(g["config"], None, g.get("pending"), g["type"],
                       g.get("snapshots", OLD_SNAPSHOT), g.get("cloudinit"))


def digest(g) -> str:
    return hashlib.sha1(conf_text(g).encode()).hexdigest()


def write_confs(data):
    """Every guest's .conf under data["etc_pve"], as pmxcfs shows them; configs of guests
    no longer in the fixture go. pmxcfs's priv/ is there (cluster-wide locks go into
    priv/lock: pve-cluster PVE/Cluster.pm cfs_lock)."""
    root = data.get("etc_pve")
    if not root:
        return
    os.makedirs(os.path.join(root, "priv"), mode=0o700, exist_ok=True)
    for folder, _, names in os.walk(os.path.join(root, "nodes")):
        for name in names:
            if name.endswith(".conf") and folder.endswith(("/qemu-server", "/lxc")):
                os.remove(os.path.join(folder, name))
    for g in data["guests"]:
        path = os.path.join(root, conf_path(g["node"], g["type"], g["vmid"]))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(conf_text(g))


class HookscriptError(Exception):
    pass


def check_hookscript(volid: str, storage: dict, root: str = "/") -> str:
    """pve-guest-common GuestHelpers.pm check_hookscript: the script's path on its storage
    (PVE::Storage::path: a dir storage's path, then its content-dirs folder for snippets,
    by default snippets/: pve-storage PVE/Storage/Plugin.pm get_subdir), a file,
    executable. ``root``: where the node's file system is (the fixture's runtime)."""
    m = re.fullmatch(r"([\w.-]+):(.+)", volid)
    if not m:
        raise HookscriptError(f"unable to parse volume ID '{volid}'")
    store, name = m.groups()
    if store not in storage:
        raise HookscriptError(f"storage '{store}' does not exist")
    if not re.fullmatch(r"snippets/[^/]+", name):
        raise HookscriptError(f"'{volid}' is not in the snippets directory")
    folder = storage[store].get("content-dirs", {}).get("snippets", "snippets")
    path = os.path.join(root, storage[store]["path"].lstrip("/"), folder,
                        name[len("snippets/"):])
    if not os.path.isfile(path):
        raise HookscriptError(f"script '{volid}' does not exist")
    if not os.access(path, os.X_OK):
        raise HookscriptError(f"script '{volid}' is not executable")
    return path


def find(data, node, kind, vmid):
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
    config["digest"] = digest(g)
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
                if "content-dirs" in params:  # kept parsed, as PVE::Storage::Plugin does
                    params["content-dirs"] = dict(
                        p.split("=", 1) for p in params["content-dirs"].split(",") if p)
                data["storage"][m.group(1)].update(params)
                return None
            return dict(data["storage"][m.group(1)], storage=m.group(1))
    m = re.fullmatch(r"/nodes/([\w.-]+)/(qemu|lxc)(?:/([0-9]+)(/config|/status/current)?)?",
                     path)
    if not m:
        raise ApiError(501, f"Method '{method} {path}' not implemented")
    node, kind, vmid, rest = m.group(1), m.group(2), m.group(3), m.group(4)
    if vmid is None and method == "POST":
        return create(fixture_path, node, kind, params)
    if vmid is None and method == "GET":
        with fixture(fixture_path) as data:
            return [_summary(g) for g in data["guests"] if g["node"] == node
                    and g["type"] == kind]
    vmid = int(vmid)
    if rest == "/status/current" and method == "GET":
        with fixture(fixture_path) as data:
            return _summary(find(data, node, kind, vmid))
    if rest == "/config" and method == "GET":
        with fixture(fixture_path) as data:
            return _config(find(data, node, kind, vmid), params.get("current") == "1")
    if rest == "/config" and method == "PUT":
        deleted = [k for k in str(params.pop("delete", "")).split(",") if k]
        if "hookscript" in params:  # update_vm checks parameters before permissions
            with fixture(fixture_path) as data:
                storage, root = data.get("storage", {}), data.get("runtime", {}).get("root", "/")
            try:
                check_hookscript(params["hookscript"], storage, root)
            except HookscriptError as e:
                if kind == "qemu":  # update_vm: raise_param_exc({hookscript => $@})
                    raise ApiError(400, f"Parameter verification failed.\nhookscript: {e}") \
                        from None
                raise ApiError(500, str(e)) from None  # LXC/Config.pm: a plain die
        if user != ROOT and ("hookscript" in params or "hookscript" in deleted):
            if kind == "qemu":  # qemu-server PVE/API2/Qemu.pm check_vm_modify_config_perm
                raise ApiError(500, "only root can set 'hookscript' config")
            raise ApiError(403, "Permission check failed (changing the hookscript is only "
                           "allowed for root@pam)")  # pve-container PVE/LXC.pm
        with fixture(fixture_path, write=True) as data:
            guest = find(data, node, kind, vmid)
            given = params.pop("digest", None)
            if given and given != digest(guest):
                raise ApiError(500, "checksum mismatch (file change by other user?)"
                               if kind == "qemu" else "detected modified configuration - "
                               "file changed by other user? Try again.")
            config = guest["config"]
            for key in deleted + list(params):
                if kind == "qemu" and guest.get("status") == "running":
                    record_cloudinit(guest, key, config.get(key), params.get(key))
            for key in deleted:
                config.pop(key, None)
            config.update(params)
            write_confs(data)
        return None
    raise ApiError(501, f"Method '{method} {path}' not implemented")


CLOUDINIT_OPTIONS = re.compile(r"ipconfig[0-9]+|cicustom|cipassword|citype|ciupgrade|ciuser|"
                               r"nameserver|searchdomain|sshkeys|name")


def record_cloudinit(guest, opt, old, new):
    """qemu-server PVE/QemuServer.pm vmconfig_hotplug_pending's cloudinit_record_changed,
    for the cloud-init options a running VM takes at once (fast_plug_option): what the
    guest's drive has stays in [special:cloudinit] (the old value, or ``added`` for a
    key it does not have) until a start regenerates the drive. (A hot-plugged netN is
    recorded too; the fake plugs no NIC into a running guest.)"""
    if not CLOUDINIT_OPTIONS.fullmatch(opt):
        return
    ci = guest.setdefault("cloudinit", {})
    recorded = ci.get(opt)
    added = set(filter(None, ci.pop("added", "").split(",")))
    if new is not None:
        if recorded is not None or opt in added:
            if new == recorded:  # back to what the drive has
                ci.pop(opt, None)
                added.discard(opt)
        elif old is not None:
            ci[opt] = old
        else:
            added.add(opt)
    elif old is not None:
        if recorded is None and opt in added:
            added.discard(opt)
        elif recorded is None:
            ci[opt] = old
    if added:
        ci["added"] = ",".join(sorted(added))
    if not ci:
        guest.pop("cloudinit")


def random_ether_addr(prefix: str = MAC_PREFIX) -> str:
    """pve-common src/PVE/Tools.pm random_ether_addr: six random bytes, the first with the
    multicast bit cleared and the local bit set, then the prefix written over the start."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 2
    addr = ":".join(f"{b:02X}" for b in octets)
    return prefix.upper() + addr[len(prefix):]


def new_config(kind: str, vmid: int, params: dict) -> dict:
    """The config create_vm writes for these options.

    QEMU (qemu-server src/PVE/API2/Qemu.pm create_vm): each netN gets a MAC when it has
    none (src/PVE/QemuServer/Network.pm parse_net, print_net: model=MAC first); a new
    disk STORAGE:SIZE becomes STORAGE:vm-VMID-disk-N,size=SIZEG (create_disks); boot
    order first disk, first CD-ROM, first NIC (get_default_bootdevices); smbios1 and
    vmgenid get UUIDs; meta records the creation.
    LXC (pve-container src/PVE/API2/LXC.pm create_vm): netN gets hwaddr and type=veth
    (src/PVE/LXC/Config.pm parse_lxc_network; printed with name first, the rest sorted,
    as print_property_string does); rootfs defaults to 4 GB on storage 'local'; arch
    and ostype come from the template (here from its name: it is not unpacked).
    """
    config = {k: v for k, v in params.items() if k not in ("ostemplate", "storage")}
    for key in sorted(k for k in params if re.fullmatch(r"net[0-9]+", k)):
        opts = [p for p in params[key].split(",") if p]
        if kind == "qemu":
            model, _, mac = opts[0].partition("=")
            config[key] = ",".join([f"{model}={mac or random_ether_addr()}",
                                    *sorted(opts[1:])])
        else:
            fields = dict(p.partition("=")[::2] for p in opts)
            fields.setdefault("hwaddr", random_ether_addr())
            fields["type"] = "veth"
            name = fields.pop("name")
            config[key] = ",".join([f"name={name}",
                                    *[f"{k}={v}" for k, v in sorted(fields.items())]])
    if kind == "qemu":
        disks = 0
        for key in sorted(params):
            m = re.fullmatch(r"(ide|sata|scsi|virtio)[0-9]+", key)
            size = re.fullmatch(r"(?:([^/:\s]+):)?([0-9]+)", params[key].split(",")[0])
            if m and size:  # qemu-server src/PVE/QemuServer/Drive.pm $NEW_DISK_RE
                volume = f"{size.group(1) or 'local'}:vm-{vmid}-disk-{disks}"
                config[key] = ",".join([volume, *params[key].split(",")[1:],
                                        f"size={size.group(2)}G"])
                disks += 1
        order = ["ide", "scsi", "virtio", "sata"]  # Drive.pm valid_drive_names
        drives = sorted((k for k in config if re.fullmatch(r"(ide|sata|scsi|virtio)[0-9]+", k)),
                        key=lambda k: (order.index(re.match(r"[a-z]+", k).group()),
                                       int(re.search(r"[0-9]+", k).group())))
        cdrom = [k for k in drives if "media=cdrom" in config[k]]
        boot = [k for k in drives if k not in cdrom][:1] + cdrom[:1] + sorted(
            (k for k in config if re.fullmatch(r"net[0-9]+", k)), key=lambda k: int(k[3:]))[:1]
        if boot:
            config["boot"] = "order=" + ";".join(boot)
        config["smbios1"] = f"uuid={uuid.uuid4()}"
        config["vmgenid"] = str(uuid.uuid4())
        config["meta"] = f"creation-qemu=9.0.2,ctime={int(time.time())}"  # PVE 8.3's QEMU
    else:
        template = os.path.basename(params.get("ostemplate", ""))
        config.setdefault("rootfs", f"{params.get('storage', 'local')}:{vmid}/"
                          f"vm-{vmid}-disk-0.raw,size=4G")
        config.setdefault("arch", "amd64")
        config.setdefault("ostype", template.split("-")[0] or "unmanaged")
    return config


def create(fixture_path, node, kind, params):
    """POST /nodes/{node}/qemu|lxc: a new stopped guest, unless the VMID is taken anywhere in
    the cluster (pve-cluster src/PVE/Cluster.pm check_vmid_unused)."""
    params = dict(params)
    vmid = int(params.pop("vmid"))
    with fixture(fixture_path, write=True) as data:
        for g in data["guests"]:
            if g["vmid"] == vmid:
                raise ApiError(500, f"unable to create {'VM' if kind == 'qemu' else 'CT'} "
                               f"{vmid} - {'VM' if g['type'] == 'qemu' else 'CT'} {vmid} "
                               f"already exists on node '{g['node']}'")
        data["guests"].append({"vmid": vmid, "type": kind, "node": node, "status": "stopped",
                               "config": new_config(kind, vmid, params)})
        write_confs(data)
    return None

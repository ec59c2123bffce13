"""What the fake ``qm`` and ``pct`` do: create, set and start a guest on the fixture, as
qemu-server's ``qm`` (src/PVE/CLI/qm.pm) and pve-container's ``pct`` (src/PVE/CLI/pct.pm)
do through their API handlers, for the options pvenat's README uses.

- ``create``: the config as qemu-server's create_vm (src/PVE/API2/Qemu.pm) and
  pve-container's create_vm (src/PVE/API2/LXC.pm) write it, through api.py's
  ``POST /nodes/NODE/qemu|lxc``: a NIC without a MAC gets one of PVE's, see api.py.
  Nothing is allocated or unpacked: no disk, no ISO, no template is read.
- ``set``: ``PUT .../config`` (update_vm, src/PVE/API2/Qemu.pm; src/PVE/API2/LXC/Config.pm).
  ``description``, ``hookscript`` and ``tags`` take effect at once, running or not (they
  are not pending options). Tags are made unique, lowercased and sorted, as
  pve-guest-common PVE/GuestHelpers.pm get_unique_tags does by default. A hookscript is
  checked as check_hookscript does (below). QEMU prints ``update VM N: -key value``.
- ``start``: under the guest's config lock (PVE::QemuConfig / PVE::LXC::Config
  lock_config, a flock on the lock file pvenat's sync looks for), pending changes applied,
  a VM's cloud-init drive made anew from its config ([special:cloudinit] dropped:
  PVE/QemuServer/Cloudinit.pm apply_cloudinit_config), then the hookscript's
  ``pre-start``, the guest's NICs, its ``post-start``
  (qemu-server src/PVE/QemuServer.pm vm_start_nolock; pve-container src/PVE/LXC.pm
  vm_start). The phases run as pve-guest-common src/PVE/GuestHelpers.pm exec_hookscript
  runs them: check_hookscript first, then ``SCRIPT VMID PHASE``; a failing pre-start
  aborts the start ("hookscript error for VMID on pre-start: ..."), a failing post-start
  is a warning. Output as the CLI prints a task it runs in the foreground (pve-common
  src/PVE/RESTEnvironment.pm fork_worker): the task's stdout and stderr together on
  stdout, a task error on stderr, exit status 255.

The NICs are plugged as pve-common src/PVE/Network.pm tap_plug does (the lab's
pvenode.Node), in the host namespace the fixture's ``runtime`` names:
{"node": "pve1", "netns": HOST, "guest_netns": "NAME-g{vmid}",
 "firewall": null | "iptables", "lock_dir": DIR, "root": DIR}; a hookscript volume is found
through the fixture's ``storage`` (``local``'s ``path`` and ``content-dirs``), in the node's
file system under ``root`` (/ by default). The guest's side of each NIC (a veth:
the VM's virtio NIC, the container's eth0) goes into the namespace ``guest_netns`` names
when it exists, with the config's MAC; there a container's static ``ip=``/``gw=`` is
applied, as its OS does from the network config PVE writes into it (pve-container
src/PVE/LXC/Setup/Debian.pm setup_network). A VM's OS decides its address itself.
Without such a namespace the guest's side stays in the host, down: a guest whose OS
never brings its NIC up.
"""

import fcntl
import os
import re
import subprocess
import sys
import time

import api

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(
    __file__))), "lab"))
import pvenode  # noqa: E402

# The options each command models; others are refused, so that nothing passes unmodelled.
DEVICE = r"net[0-9]+|ipconfig[0-9]+|(?:ide|sata|scsi|virtio)[0-9]+"
OPTIONS = {
    "qemu": re.compile(rf"name|memory|cores|ostype|onboot|description|hookscript|tags|"
                       rf"{DEVICE}"),
    "lxc": re.compile(r"hostname|memory|swap|cores|ostype|onboot|unprivileged|description|"
                      r"hookscript|tags|rootfs|storage|net[0-9]+"),
}
LOCK_TIMEOUT = 10  # seconds, PVE::AbstractConfig lock_config's default


class Failed(Exception):
    """A command that fails as PVE's CLI reports it: message on stderr, exit 255."""


def main(kind: str, argv: list[str]) -> int:
    prog = "qm" if kind == "qemu" else "pct"
    try:
        command, vmid, args, params = _parse(prog, kind, argv)
        node = _node()
        if command == "create":
            if kind == "lxc":
                if not args:
                    raise Failed("400 not enough arguments\npct create <vmid> <ostemplate> "
                                 "[OPTIONS]")
                params["ostemplate"] = args[0]
            if "tags" in params:
                params["tags"] = unique_tags(params["tags"])
            api.handle(f"/nodes/{node}/{kind}", "POST", dict(params, vmid=str(vmid)))
        elif command == "set":
            set_config(prog, kind, node, vmid, params)
        elif command == "start":
            start(kind, node, vmid)
        return 0
    except api.ApiError as e:
        print(e.message, file=sys.stderr)
        return 255
    except Failed as e:
        print(str(e), file=sys.stderr)
        return 255


def _parse(prog, kind, argv):
    """``prog COMMAND VMID [ARG] [--key value ...]`` as PVE's CLIHandler takes it."""
    if len(argv) < 2 or argv[0] not in ("create", "set", "start"):
        raise Failed(f"fake {prog}: only create, set and start are modelled: {argv}")
    command, vmid, rest = argv[0], argv[1], argv[2:]
    if not vmid.isdigit():
        raise Failed(f"400 Parameter verification failed.\nvmid: type check ('integer') "
                     f"failed - got '{vmid}'")
    args, params, i = [], {}, 0
    while i < len(rest):
        word = rest[i]
        if not word.startswith("-"):
            args.append(word)
            i += 1
            continue
        key = word.lstrip("-")
        if i + 1 >= len(rest):
            raise Failed(f"400 Parameter verification failed.\n{key}: missing value")
        if command == "start" or not OPTIONS[kind].fullmatch(key):
            raise Failed(f"fake {prog} {command}: option --{key} is not modelled")
        params[key] = rest[i + 1]
        i += 2
    if args and not (kind == "lxc" and command == "create" and len(args) == 1):
        raise Failed(f"400 too many arguments\n{prog} {command}: {' '.join(args)}")
    return command, int(vmid), args, params


def _node() -> str:
    with api.fixture(os.environ["PVENAT_FAKE_PVE"]) as data:
        return data.get("runtime", {}).get("node", "pve1")


def _runtime() -> dict:
    with api.fixture(os.environ["PVENAT_FAKE_PVE"]) as data:
        return dict(data.get("runtime", {}), storage=data.get("storage", {}))


def unique_tags(tags: str) -> str:
    """pve-guest-common GuestHelpers.pm get_unique_tags: split on ';', ',' or space,
    lowercased (tag-style case-sensitive=0), duplicates dropped, sorted."""
    return ";".join(sorted({t.lower() for t in re.split(r"[;, ]", tags) if t}))


def set_config(prog, kind, node, vmid, params):
    if "hookscript" in params:  # update_vm: raise_param_exc on check_hookscript's error
        try:
            runtime = _runtime()
            check_hookscript(params["hookscript"], runtime["storage"], runtime.get("root", "/"))
        except Failed as e:
            raise Failed(f"400 Parameter verification failed.\nhookscript: {e}") from None
    if "tags" in params:
        params["tags"] = unique_tags(params["tags"])
    with config_lock(kind, vmid):
        api.handle(f"/nodes/{node}/{kind}/{vmid}/config", "PUT", dict(params))
        if kind == "qemu":  # update_vm prints the change (src/PVE/API2/Qemu.pm)
            print(f"update VM {vmid}: " + " ".join(f"-{k} {v}" for k, v in params.items()))


def check_hookscript(volid: str, storage: dict, root: str = "/") -> str:
    """api.check_hookscript, failing as the CLI reports it."""
    try:
        return api.check_hookscript(volid, storage, root)
    except api.HookscriptError as e:
        raise Failed(str(e)) from None


class config_lock:
    """PVE's config lock around a change or a start: flock on the file PVE uses
    (PVE::QemuConfig: qemu-server/lock-VMID.conf; PVE::LXC::Config: lxc/pve-config-VMID.lock
    under /run/lock), given up after 10 s."""

    def __init__(self, kind, vmid):
        lock_dir = _runtime().get("lock_dir", "/run/lock")
        self.path = os.path.join(lock_dir, f"qemu-server/lock-{vmid}.conf" if kind == "qemu"
                                 else f"lxc/pve-config-{vmid}.lock")

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.file = open(self.path, "a")
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.file.close()
                    raise Failed(f"can't lock file '{self.path}' - got timeout") from None
                time.sleep(0.1)

    def __exit__(self, *exc):
        self.file.close()


def start(kind, node, vmid):
    what = "VM" if kind == "qemu" else "CT"
    with config_lock(kind, vmid):
        with api.fixture(os.environ["PVENAT_FAKE_PVE"], write=True) as data:
            guest = api.find(data, node, kind, vmid)
            if guest.get("status") == "running":
                raise Failed(f"{what} {vmid} already running")
            pending = guest.pop("pending", {})  # vmconfig_apply_pending, before pre-start
            for key in filter(None, pending.pop("delete", "").split(",")):
                guest["config"].pop(key.lstrip("!"), None)
            guest["config"].update(pending)
            guest.pop("cloudinit", None)  # the drive holds the current config now
            api.write_confs(data)
            config = dict(guest["config"])
        runtime = _runtime()
        hookscript(config, vmid, "pre-start", runtime["storage"], stop_on_error=True)
        plug(runtime, kind, vmid, config)
        with api.fixture(os.environ["PVENAT_FAKE_PVE"], write=True) as data:
            api.find(data, node, kind, vmid)["status"] = "running"
        hookscript(config, vmid, "post-start", runtime["storage"], stop_on_error=False)


def hookscript(config, vmid, phase, storage, stop_on_error):
    """exec_hookscript: nothing without a hookscript; else run it, its output in the
    task's; an error aborts the start for pre-start, is a warning otherwise."""
    if not config.get("hookscript"):
        return
    try:
        path = check_hookscript(config["hookscript"], storage, _runtime().get("root", "/"))
        sys.stdout.flush()
        rc = subprocess.run([path, str(vmid), phase], stdout=sys.stdout,
                            stderr=subprocess.STDOUT).returncode
        if rc < 0:
            raise Failed(f"command '{path} {vmid} {phase}' failed: got signal {-rc}")
        if rc:
            raise Failed(f"command '{path} {vmid} {phase}' failed: exit code {rc}")
    except Failed as e:
        message = f"hookscript error for {vmid} on {phase}: {e}"
        if stop_on_error:
            raise Failed(message) from None
        print(message, flush=True)  # warn, inside the task: on its output


def plug(runtime, kind, vmid, config):
    """Each netN: the host side under PVE's name on its bridge (tap_plug), the guest's side
    in the guest's namespace, with the config's MAC."""
    if "netns" not in runtime:
        return
    host = runtime["netns"]
    guest_ns = runtime.get("guest_netns", "").format(vmid=vmid)
    inside = bool(guest_ns) and os.path.exists(f"/run/netns/{guest_ns}")
    node = pvenode.Node(host, runtime.get("firewall"))
    for key in sorted((k for k in config if re.fullmatch(r"net[0-9]+", k)),
                      key=lambda k: int(k[3:])):
        index = int(key[3:])
        opts = pvenode.nic_options(config[key])
        port = pvenode.port_name(vmid, kind, index)
        name = opts.get("name", f"eth{index}") if inside else f"x{port}"
        where = ["netns", guest_ns] if inside else []
        _ip("-n", host, "link", "add", port, "type", "veth", "peer", "name", name,
            "address", opts["macaddr"], *where)
        node.plug(port, opts)
        if not inside:
            continue
        _ip("-n", guest_ns, "link", "set", name, "up")
        address = opts.get("ip", "")
        if kind == "lxc" and "/" in address:  # the container's OS: a static ip= and gw=
            _ip("-n", guest_ns, "addr", "add", address, "dev", name)
            if opts.get("gw"):
                _ip("-n", guest_ns, "route", "add", "default", "via", opts["gw"])


def _ip(*args):
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode:
        raise Failed(f"ip {' '.join(args)}: {proc.stderr.strip()}")

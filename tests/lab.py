"""A simulated PVE host in network namespaces, with real bridges, veths and iptables.

  inet (203.0.113.1, 192.0.2.7) ── eno1 ── vmbr0 203.0.113.10   [host]
                                           vmbr1 172.22.161.254 ── tap101i0 ── g101 .170
                                                                 └─ veth102i0 ── g102 .171

Guests' host-side ports carry PVE's names. Nothing outside the lab's namespaces is
touched, and close() removes them all, also after a failure.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakepve"))
import api  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKEPVE = os.path.join(REPO, "tests", "fakepve")
PUBLIC_IP = "203.0.113.10"
PEER_IP = "203.0.113.1"
LISTED_IP = "192.0.2.7"  # a second address of the outside peer, for allow-lists
HOOK_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"  # what PVE gives a hookscript
# With PVENAT_INSTALLED=1 the lab runs the installed package (/usr/sbin/pvenat, the
# hookscript under /usr/share/pvenat) on Debian's python3, not this work tree.
INSTALLED = os.environ.get("PVENAT_INSTALLED") == "1"
TOKEN = "pvenat@pve!hook=5e1c3a0e-7d2b-4c8e-9f00-1a2b3c4d5e6f"


def sh(*argv, check=True, input=None):
    proc = subprocess.run(argv, capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc


class Lab:
    def __init__(self, guests, br_netfilter=True, backend="https", config_source="api",
                 lan="172.22.161.254/24", lan_bridge=True, python=sys.executable):
        """``guests``: {vmid: {kind, config, node?, address?, serve?}}.

        A guest with an address gets a namespace on vmbr1 answering on ``serve``
        ("tcp:22", ...); one without exists only in the fake API.
        """
        self.prefix = f"pvn{os.getpid() % 100000}"
        self.host = f"{self.prefix}-host"
        self.inet = f"{self.prefix}-inet"
        self.guests = guests
        self.python = python
        self.backend = backend
        self.config_source = config_source
        self.lan = lan
        self.lan_bridge = lan_bridge  # False: pvenat install creates vmbr1
        self.gateway, self.prefixlen = lan.split("/")
        self.namespaces = []
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix="pvenat-lab-")
        self.fixture = os.path.join(self.dir, "pve.json")
        self.config = os.path.join(self.dir, "pvenat.yaml")
        self.log = os.path.join(self.dir, "pvenat.log")
        self.etc_pve = os.path.join(self.dir, "etc-pve")
        try:
            self._build(br_netfilter)
        except BaseException:
            self.close()
            raise

    def ns(self, vmid):
        return f"{self.prefix}-g{vmid}"

    def _netns(self, name):
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _build(self, br_netfilter):
        h = self.host
        self._netns(h)
        self._netns(self.inet)
        lan = [["link", "add", "vmbr1", "type", "bridge"], ["addr", "add", self.lan, "dev", "vmbr1"],
               ["link", "set", "vmbr1", "up"]] if self.lan_bridge else []
        for cmd in (["link", "add", "vmbr0", "type", "bridge"],
                    ["link", "add", "eno1", "type", "veth", "peer", "name", "eth0",
                     "netns", self.inet],
                    ["link", "set", "eno1", "master", "vmbr0", "up"],
                    ["addr", "add", f"{PUBLIC_IP}/24", "dev", "vmbr0"],
                    ["link", "set", "vmbr0", "up"],
                    ["route", "add", "default", "via", PEER_IP], *lan):
            sh("ip", "-n", h, *cmd)
        for cmd in (["addr", "add", f"{PEER_IP}/24", "dev", "eth0"],
                    ["addr", "add", f"{LISTED_IP}/32", "dev", "lo"],
                    ["link", "set", "eth0", "up"]):
            sh("ip", "-n", self.inet, *cmd)
        self.sysctl(h, "net.ipv4.ip_forward", 1)
        self.sysctl(h, "net.bridge.bridge-nf-call-iptables", int(br_netfilter))
        for vmid, guest in self.guests.items():
            if guest.get("address") and self.lan_bridge:
                self.add_guest(vmid)
        self.serve(self.inet, "inet", ["tcp:10000", "udp:10000", "tcp:80"])
        self.write_fixture()
        self.write_config()
        if self.backend == "https":
            self._start_api()

    def add_guest(self, vmid):
        """The guest's namespace, its NIC on vmbr1 under PVE's port name, its servers."""
        h, guest = self.host, self.guests[vmid]
        kind, address, g = guest["kind"], guest["address"], self.ns(vmid)
        self._netns(g)
        port = f"tap{vmid}i0" if kind == "qemu" else f"veth{vmid}i0"
        sh("ip", "-n", h, "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", g)
        sh("ip", "-n", h, "link", "set", port, "master", "vmbr1", "up")
        sh("ip", "-n", g, "addr", "add", f"{address}/{self.prefixlen}", "dev", "eth0")
        sh("ip", "-n", g, "link", "set", "eth0", "up")
        sh("ip", "-n", g, "route", "add", "default", "via", self.gateway)
        self.serve(g, f"g{vmid}", guest.get("serve", []))

    def sysctl(self, ns, key, value):
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")

    def serve(self, ns, name, ports):
        self.spawn(ns, [self.python, os.path.join(REPO, "tests", "netprobe.py"), "serve",
                        name, *ports])

    def spawn(self, ns, argv):
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.procs.append(proc)
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"{argv} did not start: {line} {proc.stderr.read()}")
        return proc

    def _start_api(self):
        cert, key = os.path.join(self.dir, "api.pem"), os.path.join(self.dir, "api.key")
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
           "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
           "-keyout", key, "-out", cert)
        self.cert = cert
        self.spawn(self.host, ["env", f"PVENAT_FAKE_PVE={self.fixture}", self.python,
                               os.path.join(FAKEPVE, "server.py"), cert, key, "8006", TOKEN])

    def write_fixture(self, fault=None):
        kept = {"storage": {"local": {"content": "iso,vztmpl,backup", "type": "dir",
                                      "path": "/var/lib/vz"}}}
        if os.path.exists(self.fixture):  # keep what PUTs and pveum changed
            with open(self.fixture) as f:
                kept = {k: v for k, v in json.load(f).items() if k not in ("guests", "fault")}
        guests = [{"vmid": vmid, "type": g["kind"], "node": g.get("node", "pve1"),
                   "status": g.get("status", "running"), "name": f"guest{vmid}",
                   "config": g["config"]} for vmid, g in self.guests.items()]
        with open(self.fixture, "w") as f:
            json.dump(dict(kept, guests=guests, fault=fault), f)
        shutil.rmtree(self.etc_pve, ignore_errors=True)
        for g in guests:
            path = os.path.join(self.etc_pve, api.conf_path(g))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(api.render_conf(g["config"], snapshot={"description": "old%0Anotes",
                                                                "tags": "pvenat-10001"}))

    def fixture_config(self, vmid):
        """The guest's config as the fake API holds it now (after PUTs)."""
        with open(self.fixture) as f:
            return next(g["config"] for g in json.load(f)["guests"] if g["vmid"] == vmid)

    def set_config(self, vmid, **changes):
        self.guests[vmid]["config"].update(changes)
        self.write_fixture()

    def write_config(self, extra=""):
        with open(os.path.join(self.dir, "token"), "w") as f:
            f.write(TOKEN.split("=", 1)[1])
        pve = ("{backend: local, node: pve1" if self.backend == "local" else
               f"{{backend: https, node: pve1, host: 127.0.0.1, port: 8006, "
               f"token_file: {self.dir}/token, verify_ssl: {self.dir}/api.pem") + \
            f", config_source: {self.config_source}, config_dir: {self.etc_pve}, timeout: 3}}"
        with open(self.config, "w") as f:
            f.write(f"wan_bridge: vmbr0\npublic_ip: auto\nlan_bridge: vmbr1\n"
                    f"lan_address: {self.lan}\nlog_file: {self.log}\nstate_dir: {self.dir}/state\n"
                    f"pve: {pve}\n"
                    + extra)

    def env(self):
        env = {"PATH": f"{FAKEPVE}:{HOOK_PATH}", "LC_ALL": "C",
               "PVENAT_CONFIG": self.config, "PVENAT_FAKE_PVE": self.fixture}
        return env if INSTALLED else dict(env, PYTHONPATH=REPO)

    def hook_argv(self, vmid, phase, extra_env=None):
        """The hookscript as PVE runs it, inside the host namespace."""
        env = dict(self.env(), **(extra_env or {}))
        script = ["/usr/share/pvenat/pvenat.py"] if INSTALLED else [
            self.python, os.path.join(REPO, "hookscripts", "pvenat.py")]
        return ["ip", "netns", "exec", self.host, "env", "-i",
                *[f"{k}={v}" for k, v in env.items()], *script, str(vmid), phase]

    def pvenat_argv(self, *args):
        command = ["/usr/sbin/pvenat"] if INSTALLED else [self.python, "-m", "pvehook"]
        return ["ip", "netns", "exec", self.host, "env", "-i",
                *[f"{k}={v}" for k, v in self.env().items()], *command, *args]

    def hook(self, vmid, phase, extra_env=None):
        return subprocess.run(self.hook_argv(vmid, phase, extra_env), capture_output=True,
                              text=True, cwd="/")

    def pvenat(self, *args):
        return subprocess.run(self.pvenat_argv(*args), capture_output=True, text=True, cwd="/")

    def probe(self, ns, proto, host, port, src=None):
        argv = [self.python, os.path.join(REPO, "tests", "netprobe.py"), proto, host,
                str(port)] + ([src] if src else [])
        return sh("ip", "netns", "exec", ns, *argv).stdout.strip()

    def sh_host(self, *argv):
        return sh("ip", "netns", "exec", self.host, *argv).stdout.strip()

    def iptables_save(self, *args):
        """The host's rules without counters and timestamps."""
        out = sh("ip", "netns", "exec", self.host, "iptables-legacy-save", *args).stdout
        return "\n".join(line.split(" [")[0] if line.startswith(":") else line
                         for line in out.splitlines() if not line.startswith("#"))

    def iptables(self, *args, check=True):
        return sh("ip", "netns", "exec", self.host, "iptables-legacy", "-w", *args, check=check)

    def close(self):
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        for name in reversed(self.namespaces):
            sh("ip", "netns", "pids", name, check=False)
            sh("ip", "netns", "del", name, check=False)
        self.namespaces = []
        shutil.rmtree(self.dir, ignore_errors=True)

"""pvenat install / uninstall: turn a stock PVE host into the NAT layout, and back.

Every step is planned first as an Action (what changes, shown as a diff or a command),
so --dry-run prints exactly what a run would do. Files are written atomically with a
backup beside them. The network change is syntax-checked before it is applied, and
rolled back when applying fails or the host loses its default route or public address.
What pvenat created is recorded in /etc/pvenat/installed.json, so uninstall removes
that and nothing else.
"""

import difflib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from . import files, hostnet, index, logs, netfilter, ruleset
from .errors import PvenatError

log = logs.get_logger("pvenat.install")
INTERFACES = "etc/network/interfaces"
SYSCTL = "etc/sysctl.d/80-pvenat.conf"
SNIPPET = "var/lib/vz/snippets/pvenat.py"
RECORD = "etc/pvenat/installed.json"
UNITS = ("pvenat.service", "pvenat-sync.timer")
HOOKSCRIPT_SOURCES = ("/usr/share/pvenat/pvenat.py",
                      os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   "hookscripts", "pvenat.py"))


class System:
    """The live host's side effects. With a root other than "/", files live under it and
    ifupdown2 is pointed at that root's interfaces file (the tests run it in a network
    namespace); systemctl works on the root offline."""

    def __init__(self, root: str = "/"):
        self.root = root

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def run(self, *argv) -> str:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True)
        except FileNotFoundError:
            raise PvenatError("host", f"{argv[0]} not found; is this a PVE host?") from None
        if proc.returncode != 0:
            raise PvenatError("host", f"{' '.join(argv)} failed: "
                              f"{(proc.stderr or proc.stdout).strip()[:500]}")
        return proc.stdout

    def is_pve(self) -> bool:
        return shutil.which("pveversion") is not None

    def ifupdown(self, action: str, bridge: str) -> list[str]:
        """The ifupdown2 command: ifreload -a on the host, ifup/ifdown -i FILE BRIDGE under
        another root (ifreload takes no -i)."""
        if self.root == "/":
            return ["ifreload", "-a"]
        return [action, "-i", self.path(INTERFACES), bridge]

    def systemctl(self, *args) -> list[str]:
        root = [] if self.root == "/" else [f"--root={self.root}"]
        return ["systemctl", *root, *args]


@dataclass
class Action:
    what: str  # one line: what changes
    detail: str = ""  # a unified diff or the command
    apply: object = None  # callable doing it


@dataclass
class Record:
    """What pvenat created, so that uninstall takes back that and no more."""

    bridge: bool = False
    snippets_content: bool = False
    ip_forward_before: str = ""
    units: list = field(default_factory=list)
    token: str = ""  # the API token pvenat created, USER!NAME
    user: str = ""  # the PVE user pvenat created for it

    @classmethod
    def load(cls, system):
        try:
            with open(system.path(RECORD), encoding="utf-8") as f:
                return cls(**json.load(f))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, TypeError) as e:
            raise PvenatError("host", f"{system.path(RECORD)}: unreadable ({e}); restore it "
                              "from its .pvenat-backup or remove it") from None

    def text(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True) + "\n"


def write_atomic(path: str, text: str):
    files.write_atomic(path, text, backup=True)


def read(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def diff(path: str, old, new) -> str:
    return "".join(difflib.unified_diff((old or "").splitlines(True), (new or "").splitlines(True),
                                        f"{path} (now)", f"{path} (after)"))


def stanza(host) -> str:
    """The lan bridge as the PVE GUI writes a Linux Bridge, so it shows up there."""
    return (f"auto {host.lan_bridge}\niface {host.lan_bridge} inet static\n"
            f"\taddress {host.lan_address}\n\tbridge-ports none\n\tbridge-stp off\n"
            "\tbridge-fd 0\n")


def find_stanza(text: str, bridge: str):
    """(start, end) line indexes of the bridge's 'auto' + 'iface' block, or None."""
    lines = text.splitlines(True)
    start = next((i for i, line in enumerate(lines)
                  if re.fullmatch(rf"iface\s+{re.escape(bridge)}\s.*", line.strip())), None)
    if start is None:
        return None
    end = start + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t")) and lines[end].strip()):
        end += 1
    if start > 0 and re.fullmatch(rf"(auto|allow-hotplug)\s+{re.escape(bridge)}",
                                  lines[start - 1].strip()):
        start -= 1
    return start, end


def stanza_address(text: str, span) -> str | None:
    lines = text.splitlines(True)[span[0]:span[1]]
    for line in lines:
        m = re.fullmatch(r"address\s+(\S+)", line.strip())
        if m:
            return m.group(1)
    return None


class Installer:
    def __init__(self, host, system: System, api, backend, config_path: str,
                 lock_path=netfilter.LOCK_PATH):
        self.host = host
        self.config_path = config_path
        self.system = system
        self.api = api
        self.backend = backend
        self.lock_path = lock_path

    # --- install ---------------------------------------------------------------------

    def install_actions(self, token: bool = False) -> list[Action]:
        if self.system.root == "/" and not self.system.is_pve():
            raise PvenatError("host", "this is not a Proxmox VE host (no pveversion); pvenat "
                              "install changes nothing here")
        self.record = Record.load(self.system)
        # The token first: the storage step talks to the API with it.
        token_action = self._token() if token else None
        actions = [token_action, self._bridge(), self._sysctl(), self._rules(),
                   self._snippet(), self._snippets_content(token_action is not None),
                   self._units()]
        return [a for a in actions if a is not None]

    def _remember(self, **facts):
        """Record what pvenat created as soon as it exists: a failure later on must not
        leave something uninstall does not know about."""
        for key, value in facts.items():
            setattr(self.record, key, value)
        write_atomic(self.system.path(RECORD), self.record.text())

    def _bridge(self):
        path = self.system.path(INTERFACES)
        old = read(path)
        if old is None:
            raise PvenatError("host", f"{path} does not exist; pvenat edits the file PVE "
                              "writes, so check the host's network setup first")
        span = find_stanza(old, self.host.lan_bridge)
        if span is not None:
            have = stanza_address(old, span)
            if have != str(self.host.lan_address):
                raise PvenatError("host", f"{self.host.lan_bridge} already exists in {path} with "
                                  f"address {have}; set lan_address: {have} in the pvenat "
                                  "config to use it, or pick another lan_bridge")
            return None
        new = old + ("" if old.endswith("\n\n") else "\n" if old.endswith("\n") else "\n\n") \
            + stanza(self.host)

        def apply():
            # ifupdown2 must parse the whole new file. (Not "ifup -s": Debian's own
            # ifupdown2 warns about the "bridge-ports none" that PVE's accepts and writes.)
            self._check(new)
            existed = os.path.exists(f"/sys/class/net/{self.host.lan_bridge}")
            write_atomic(path, new)
            try:
                self.system.run(*self.system.ifupdown("ifup", self.host.lan_bridge))
                self._healthy()
            except PvenatError as e:
                self._rollback(path, old, existed)
                raise PvenatError("host", f"bringing up {self.host.lan_bridge} failed, so "
                                  f"{path} was restored and reapplied: {e.message}") from None
            self._remember(bridge=True)

        return Action(f"add bridge {self.host.lan_bridge} ({self.host.lan_address}) to {path}",
                      diff(path, old, new), apply)

    def _check(self, text):
        """ifupdown2 parses the new text, from a scratch file beside the real one."""
        check = self.system.path(INTERFACES) + ".pvenat-check"
        with open(check, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            self.system.run("ifquery", "-a", "-i", check)
        finally:
            os.remove(check)

    def _healthy(self):
        """After a network change: the default route and the public address are there."""
        if not self.system.run("ip", "-j", "route", "show", "default").strip("[]\n "):
            raise PvenatError("host", "the host lost its default route")
        hostnet.public_ip(self.host)

    def _rollback(self, path, old, existed):
        """The old file back, and the bridge down unless something else had that name."""
        if not existed:
            try:
                self.system.run(*self.system.ifupdown("ifdown", self.host.lan_bridge))
            except PvenatError:
                pass  # it may never have come up
        write_atomic(path, old)
        if self.system.root == "/":
            self.system.run("ifreload", "-a")
        log.error("install.rolled_back", file=path)

    def _sysctl(self):
        path = self.system.path(SYSCTL)
        new = "# pvenat: guests on the internal bridge reach the internet through the host\n" \
              "net.ipv4.ip_forward = 1\n"
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            live = f.read().strip()
        if read(path) == new and live == "1":
            return None

        def apply():
            if not self.record.ip_forward_before:
                self._remember(ip_forward_before=live)
            write_atomic(path, new)
            _write("/proc/sys/net/ipv4/ip_forward", "1")

        return Action(f"enable IPv4 forwarding ({path}, now {live})", diff(path, read(path), new),
                      apply)

    def _rules(self):
        pub = hostnet.public_ip(self.host)
        current = self.backend.read()
        script = ruleset.restore_script(current, ruleset.with_base(current, self.host, pub))
        if not script:
            return None

        def apply():
            with netfilter.locked(self.lock_path):
                index.drop(self.host.state_dir)
                netfilter.update(self.backend,
                                 lambda cur: ruleset.with_base(cur, self.host, pub))

        return Action("add pvenat's base rules: outbound SNAT, hairpin, jumps (iptables)",
                      script, apply)

    def _snippet(self):
        source = next((p for p in HOOKSCRIPT_SOURCES if os.path.exists(p)), None)
        if source is None:
            raise PvenatError("host", "the hookscript is missing from /usr/share/pvenat; "
                              "reinstall the pvenat package")
        path = self.system.path(SNIPPET)
        new = read(source)
        if read(path) == new:
            return None

        def apply():
            write_atomic(path, new)
            os.chmod(path, 0o755)

        return Action(f"install the hookscript as {path}", diff(path, read(path), new), apply)

    def _snippets_content(self, token_pending: bool):
        """Storage 'local' must hold snippets for local:snippets/pvenat.py to resolve.
        Before a token exists the API cannot be asked, so it is asked when applying."""
        what = "let storage 'local' hold snippets (keeping its other content types)"
        if token_pending:
            return Action(what + ", once the token exists", "pvesh set /storage/local "
                          "--content <its content types>,snippets", self._add_snippets)
        content = self.api.storage_content("local")
        if "snippets" in content:
            return None
        return Action(what, f"pvesh set /storage/local --content "
                      f"{','.join(content + ['snippets'])}", self._add_snippets)

    def _add_snippets(self):
        content = self.api.storage_content("local")
        if "snippets" not in content:
            self.api.set_storage_content("local", ",".join(content + ["snippets"]))
            self._remember(snippets_content=True)

    def _units(self):
        argv = self.system.systemctl("enable", "--now", *UNITS) if self.system.root == "/" \
            else self.system.systemctl("enable", *UNITS)
        enabled = all(os.path.lexists(self.system.path(f"etc/systemd/system/{target}/{unit}"))
                      for unit, target in zip(UNITS, ("multi-user.target.wants",
                                                       "timers.target.wants")))
        if enabled:
            return None

        def apply():
            self.system.run(*argv)
            self._remember(units=list(UNITS))

        return Action("enable the boot unit and the sync timer", " ".join(argv), apply)

    def _token(self):
        """A read-only API token for the https backend (PVE 8's proxmoxer has no local
        one): made with pveum, as root on the node, stored root-only."""
        s = self.host.pve
        tokenid = f"{s.user}!{s.token_name}"
        have_file = os.path.exists(s.token_file)
        if have_file and s.backend == "https":
            return None
        config = read(self.config_path) or ""
        if re.search(r"(?m)^pve:", config) and s.backend != "https":
            raise PvenatError("config", f"{self.config_path} has a 'pve:' section with backend "
                              f"{s.backend}; set 'backend: https' there, then run pvenat "
                              "install --token again")
        steps = [f"pveum user add {s.user}", f"pveum user token add {s.user} {s.token_name} "
                 f"--privsep 1 > {s.token_file}",
                 f"pveum acl modify /vms --tokens '{tokenid}' --roles PVEAuditor"]
        if s.backend != "https":
            steps.append(f"append 'pve: {{backend: https}}' to {self.config_path}")

        def apply():
            users = json.loads(self.system.run("pveum", "user", "list", "--output-format",
                                               "json"))
            if s.user not in {u.get("userid") for u in users}:
                self.system.run("pveum", "user", "add", s.user, "--comment",
                                "pvenat hookscript, read-only")
                self._remember(user=s.user)
            if not have_file:
                # A token's secret cannot be read back: a lost file means a new token.
                try:
                    self.system.run("pveum", "user", "token", "remove", s.user, s.token_name)
                except PvenatError:
                    pass  # there was none
                out = self.system.run("pveum", "user", "token", "add", s.user, s.token_name,
                                      "--privsep", "1", "--output-format", "json")
                secret = json.loads(out)["value"]
                os.makedirs(os.path.dirname(s.token_file), exist_ok=True)
                fd = os.open(s.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secret + "\n")
                self._remember(token=tokenid)
            self.system.run("pveum", "acl", "modify", "/vms", "--tokens", tokenid, "--roles",
                            "PVEAuditor")
            if s.backend != "https":
                write_atomic(self.config_path, config + ("" if config.endswith("\n") or not
                                                         config else "\n") +
                             "# added by pvenat install --token\npve:\n  backend: https\n"
                             f"  token_file: {s.token_file}\n")

        return Action(f"create the read-only API token {tokenid} for the https backend",
                      "\n".join(steps), apply)

    # --- uninstall -------------------------------------------------------------------

    def uninstall_actions(self) -> tuple[list[Action], list[str]]:
        """The actions, and notes on what is kept and why."""
        record = Record.load(self.system)
        actions, notes = [], []
        current = self.backend.read()
        empty = {t: ruleset.Table() for t in ruleset.TABLES}
        script = ruleset.restore_script(current, empty)
        if script:
            def drop_rules():
                with netfilter.locked(self.lock_path):
                    index.drop(self.host.state_dir)
                    netfilter.update(self.backend, lambda cur: empty)
            actions.append(Action("remove every pvenat chain and jump (iptables)", script,
                                  drop_rules))
        if record.units:
            actions.append(Action("disable the boot unit and the sync timer",
                                  " ".join(self.system.systemctl("disable", *UNITS)),
                                  lambda: self.system.run(*self.system.systemctl(
                                      "disable", *UNITS))))
        for rel, what in ((SYSCTL, "the IPv4 forwarding setting"), (SNIPPET, "the hookscript")):
            if os.path.exists(self.system.path(rel)):
                actions.append(Action(f"remove {what} ({self.system.path(rel)})", "",
                                      lambda p=self.system.path(rel): os.remove(p)))
        if record.ip_forward_before == "0":
            actions.append(Action("turn IPv4 forwarding back off", "",
                                  lambda: _write("/proc/sys/net/ipv4/ip_forward", "0")))
        if record.snippets_content:
            content = [c for c in self.api.storage_content("local") if c != "snippets"]
            actions.append(Action("stop storage 'local' holding snippets",
                                  f"pvesh set /storage/local --content {','.join(content)}",
                                  lambda: self.api.set_storage_content("local",
                                                                       ",".join(content))))
        users = self._bridge_users() if record.bridge else []
        if users:
            notes.append(f"kept {self.host.lan_bridge}: guests {', '.join(users)} have a "
                         "NIC on it; move them, then run pvenat uninstall again")
            kept = Record(bridge=True, token=record.token, user=record.user)
            actions.append(Action("remember what pvenat still has to take back", RECORD,
                                  lambda: write_atomic(self.system.path(RECORD), kept.text())))
            return actions, notes
        if record.bridge:
            actions.append(self._drop_bridge())
        # The token last: the steps before still talk to the API with it.
        if record.token:
            user, name = record.token.split("!")
            actions.append(Action(f"remove the API token {record.token}",
                                  f"pveum user token remove {user} {name}",
                                  lambda: self.system.run("pveum", "user", "token", "remove",
                                                          user, name)))
            if os.path.exists(self.host.pve.token_file):
                actions.append(Action(f"remove {self.host.pve.token_file}", "",
                                      lambda: os.remove(self.host.pve.token_file)))
        if record.user:
            actions.append(Action(f"remove the PVE user {record.user}",
                                  f"pveum user delete {record.user}",
                                  lambda: self.system.run("pveum", "user", "delete",
                                                          record.user)))
        if os.path.exists(self.system.path(RECORD)):
            actions.append(Action("forget the install record", RECORD,
                                  lambda: os.remove(self.system.path(RECORD))))
        return actions, notes

    def _bridge_users(self) -> list[str]:
        node = self.host.pve.node_name()
        users = []
        for info in self.api.guests(node):
            config = self.api.guest(node, info.vmid, info.kind).config
            if any(f"bridge={self.host.lan_bridge}" in str(v).split(",")
                   for k, v in config.items() if re.fullmatch(r"net[0-9]+", k)):
                users.append(str(info.vmid))
        return users

    def _drop_bridge(self):
        path = self.system.path(INTERFACES)
        old = read(path)
        span = find_stanza(old, self.host.lan_bridge)
        lines = old.splitlines(True)
        start, end = span
        if start > 0 and lines[start - 1] == "\n" and (end == len(lines)):
            start -= 1  # the blank line install added before it
        new = "".join(lines[:start] + lines[end:])

        def apply():
            self.system.run(*self.system.ifupdown("ifdown", self.host.lan_bridge))
            write_atomic(path, new)
            if self.system.root == "/":
                self.system.run("ifreload", "-a")

        return Action(f"remove bridge {self.host.lan_bridge} from {path}", diff(path, old, new),
                      apply)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def run_actions(actions: list[Action], dry_run: bool, out) -> int:
    """Print each action; apply it unless dry_run. Returns how many were applied."""
    if not actions:
        print("pvenat: nothing to change", file=out)
        return 0
    for action in actions:
        print(f"{'would ' if dry_run else ''}{action.what}", file=out)
        if dry_run and action.detail:
            print("  " + action.detail.rstrip("\n").replace("\n", "\n  "), file=out)
        if not dry_run:
            action.apply()
            log.info("install.step", step=action.what)
    return 0 if dry_run else len(actions)

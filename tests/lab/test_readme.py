"""The README's examples work as written: every block a user would copy out of README.md,
read from the file itself, is run.

- Notes (```pvenat blocks, also inside ```` fences, and those a command builds with
  printf) and ``pvenat-N`` tags: planned under the default host config, for a guest with
  an address on lan_bridge; each must be accepted unless the paragraph that introduces
  it says it is refused.
- ```yaml host configs: loaded by pvenat's loader, over the defaults.
- ```sh blocks with qm, pct and pvenat commands: run line by line, as written, in the
  lab's host after ``pvenat install``, on the fake PVE (tests/fakepve: qm, pct, pvesh).
  Starting a guest boots "its OS": a namespace that answers on each port its forwards
  lead to. A comment that quotes pvenat's output (``# pvenat: ...``, ``...`` for the
  rest) must match what the line printed; "gets ADDRESS by DHCP" is the guest's lease;
  ``ssh -p PORT USER@HOST`` is a TCP connection from the lab's internet to that port,
  which must reach the guest's port the comment names.
- The qm, pct and pvenat commands written inline in the prose of those sections, and
  the transcripts of "Day-2 commands": run in the same labs, their output compared.

What is not run here, and why: NOT_RUN. test_every_block_is_run_or_listed fails on a
block this file does not know, so a new example cannot go untested unnoticed.
"""

import ipaddress
import os
import re
import shlex
import subprocess
from typing import NamedTuple

import pytest

import api
import pvenode
from lab import (IFUPDOWN2, INSTALLED, LISTED_IP, PEER_IP, PUBLIC_IP, REPO, Lab, lab_fixture,
                 pve_root, sh)
from pvehook import config, spec
from pvehook.errors import PvenatError
from pvehook.plan import plan_guest
from pvehook.ports import format_range

README = os.path.join(REPO, "README.md")
FIRST_GUEST = "A first guest, from nothing"
FORWARDS = "Give a guest forwards"
DAY2 = "Day-2 commands"
# The state "pvenat attach" leaves a guest in: an address on lan_bridge.
ATTACHED = {"net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1",
            "ipconfig0": "ip=172.22.161.1/24,gw=172.22.161.254"}

# Blocks not run here, by (section, info string); the reason is the value. A section
# matches by the start of its heading.
NOT_RUN = {
    ("Try it", "sh"): "tests/fresh-root (part of make test) runs these commands literally "
                      "in fresh Debian roots; make test and make demo are not run from tests",
    ("Try it", ""): "the output of make demo, which tests/lab/demo.py measures each time",
    ("Install on a PVE host", "sh"):
        "builds and installs the Debian package (tests/package-test does, in Debian roots of "
        "its own); tests/lab/test_install.py runs pvenat install --dry-run and pvenat "
        "install, tests/lab/test_dhcp.py pvenat attach; the labs here start after pvenat "
        "install",
    ("pvenat", ""): "the diagram of a host",
    ("Day-2 commands", "text"): "pvenat list with ipv6 on: tests/unit/test_ipv6_guests.py "
                                "checks its columns and rows; the first guest's lab has ipv6 "
                                "off",
}
# Inline commands of the sections run here that are not run, and why.
NOT_RUN_INLINE = {
    "pvenat install": "the state the section starts from: the labs here run pvenat install "
                      "--root on the lab's PVE root",
    "pvenat attach": "the command's name, no guest named",
    "pvenat check": "the command's name, no guest named",
    "pct set": "the container's counterpart of the qm set line, named, not written out",
}
# Commands that cannot run here, replaced by what they test.
REPLACED = {"ssh": "a TCP connection from the lab's internet to the public port, which "
                   "must reach the guest's port the comment names"}


def not_run(section: str, info: str) -> str | None:
    return next((why for (name, kind), why in NOT_RUN.items()
                 if section.startswith(name) and info == kind), None)


# --- reading README.md -----------------------------------------------------------------

class Block(NamedTuple):
    section: str  # the "## " heading it is under
    info: str  # the fence's info string: "sh", "yaml", "pvenat", ""
    text: str
    line: int  # of the opening fence in README.md
    intro: str  # the paragraph just before it


_FENCE = re.compile(r"( *)(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*")


def read_blocks(lines=None, first=1, section="", outer=False) -> list[Block]:
    """Every fenced block, and those inside a longer fence's text, in README order."""
    lines = lines if lines is not None else open(README, encoding="utf-8").read().split("\n")
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if not outer and re.match(r"##? ", line):
            section = line.split(" ", 1)[1].strip()
        m = _FENCE.fullmatch(line)
        if not m:
            i += 1
            continue
        indent, fence, info = len(m.group(1)), m.group(2), m.group(3)
        end = next((j for j in range(i + 1, len(lines))
                    if re.fullmatch(rf" *{fence[0]}{{{len(fence)},}}\s*", lines[j])), len(lines))
        body = [x[min(indent, len(x) - len(x.lstrip(" "))):] for x in lines[i + 1:end]]
        start = i
        while start > 0 and not lines[start - 1].strip():
            start -= 1
        stop = start
        while start > 0 and lines[start - 1].strip() and not _FENCE.fullmatch(lines[start - 1]):
            start -= 1
        intro = " ".join(x.strip() for x in lines[start:stop])
        out.append(Block(section, info, "\n".join(body) + "\n", first + i, intro))
        out += read_blocks(body, first + i + 1, section, outer=True)
        i = end + 1
    return out


def section_text(name: str) -> str:
    text = open(README, encoding="utf-8").read()
    m = re.search(rf"^## {re.escape(name)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"README.md has no section '{name}'"
    return m.group(1)


def inline_commands(name: str) -> list[str]:
    """The qm, pct and pvenat commands in the prose of a section (not in its blocks)."""
    prose = re.sub(r"(?ms)^( *)(`{3,}).*?^\1\2`*$", "", section_text(name))
    return [c for c in re.findall(r"`([^`\n]+)`", prose) if re.match(r"(qm|pct|pvenat) ", c)]


class Command(NamedTuple):
    text: str  # the command as the shell gets it (continuation lines joined)
    comments: list  # its trailing comment, and comment lines aligned below it
    line: int

    @property
    def words(self):
        return shlex.split(self.text)


def commands(block: Block) -> list[Command]:
    out, pending = [], ""
    for n, raw in enumerate(block.text.rstrip("\n").split("\n"), block.line + 1):
        if not pending and raw.lstrip().startswith("#"):
            if raw.startswith(" ") and out:  # a comment aligned under the last one
                out[-1].comments.append(raw.strip()[1:].strip())
            continue
        if not raw.strip():
            continue
        text, comment = _split_comment(raw)
        if text.endswith("\\"):
            pending += text[:-1]
            continue
        out.append(Command((pending + text).strip(), [comment] if comment else [], n))
        pending = ""
    return out


def _split_comment(line: str) -> tuple[str, str]:
    """(command, comment): the comment starts at the first '#' after white space outside
    quotes, where the shell would see it."""
    for m in re.finditer(r"\s#", line):
        head = line[:m.start()]
        try:
            if shlex.split(head) == shlex.split(line, comments=True):
                return head.rstrip(), line[m.end():].strip()
        except ValueError:
            continue
    return line.rstrip(), ""


def printf_notes(block: Block) -> list[str]:
    """Notes a command builds with "$(printf '...')", as the shell builds them."""
    out = []
    for cmd in commands(block):
        for fmt in re.findall(r"\$\(printf '([^']*)'\)", cmd.text):
            out.append(sh("printf", fmt).stdout)
    return out


def expected_refused(block: Block) -> bool:
    return bool(re.search(r"\brefused\b", block.intro))


BLOCKS = read_blocks()


def notes_cases():
    """Every Notes text: a ```pvenat block as the Notes hold it, and what a command's
    printf builds."""
    cases = []
    for b in BLOCKS:
        if b.info == "pvenat":
            cases.append(pytest.param(f"```pvenat\n{b.text}```\n", expected_refused(b),
                                      id=f"{b.section}, line {b.line}"))
        elif b.info == "sh":
            cases += [pytest.param(text, expected_refused(b),
                                   id=f"{b.section}, line {b.line}, printf")
                      for text in printf_notes(b)]
    return cases


def tag_cases():
    cases, seen, section = [], set(), ""
    for line in open(README, encoding="utf-8"):
        section = line.split(" ", 1)[1].strip() if re.match(r"##? ", line) else section
        for tag in re.findall(r"(?<![\w-])pvenat-[0-9]+(?:-[0-9]+)?(?![\w-])", line):
            if tag not in seen:
                seen.add(tag)
                cases.append(pytest.param(tag, id=f"{section}: {tag}"))
    return cases


def yaml_cases():
    return [pytest.param(b, id=f"{b.section}, line {b.line}") for b in BLOCKS
            if b.info == "yaml"]


def is_forwards_notes(b: Block) -> bool:
    return (b.section, b.info) == (FORWARDS, "") and "```pvenat" in b.text


# --- what is run, and what is not -------------------------------------------------------

def test_every_block_is_run_or_listed():
    """A block this file neither runs nor lists in NOT_RUN fails here; so does a command
    in a block run here that is neither run nor replaced."""
    run = [b for b in BLOCKS if b.info in ("pvenat", "yaml") or is_forwards_notes(b)
           or (b.section, b.info) in ((FIRST_GUEST, "sh"), (DAY2, ""))]
    unknown = [f"README.md line {b.line}: ```{b.info} in '{b.section}'" for b in BLOCKS
               if b not in run and not not_run(b.section, b.info)]
    assert not unknown, "neither run nor listed in NOT_RUN: " + "; ".join(unknown)
    for b in run:
        if b.info == "sh":
            for cmd in commands(b):
                assert cmd.words[0] in ("qm", "pct", "pvenat", *REPLACED), \
                    f"README.md line {cmd.line}: '{cmd.words[0]}' is neither run nor replaced"


# --- Notes, tags and host configs: the parser and planner, no root ----------------------

@pytest.mark.parametrize("notes,refused", notes_cases())
def test_notes_block(notes, refused):
    """Under the default host config, for a guest with an address on lan_bridge."""
    try:
        plan = plan_guest(spec.parse(101, notes, ""), "qemu", ATTACHED, config.HostConfig())
    except PvenatError as e:
        assert refused, f"refused: {e.message}"
        return
    assert not refused, "the README says this example is refused; pvenat accepts it"
    assert plan.forwards or plan.address


@pytest.mark.parametrize("tag", tag_cases())
def test_tag(tag):
    """On a container with an address on lan_bridge, under the default host config."""
    plan = plan_guest(spec.parse(102, "", tag), "lxc",
                      {"net0": "name=eth0,bridge=vmbr1,ip=172.22.161.2/24"},
                      config.HostConfig())
    assert plan.forwards, tag


@pytest.mark.parametrize("block", yaml_cases())
def test_host_config_snippet(block, tmp_path):
    """Loaded by pvenat's loader: keys it leaves out keep their defaults. The host config
    block is the defaults ("A missing or all-comment file means these defaults"); a
    port_pool that adds ports lets a guest's block forward them ("add them to the pool
    ... and write - 80 and - 443 in one guest's block"), which the default pool refuses."""
    path = tmp_path / "pvenat.yaml"
    path.write_text(block.text)
    loaded = config.load(str(path), str(tmp_path))
    default = config.HostConfig()
    if block.section == "Host config":
        assert loaded == default
    opened = [format_range(a, b) for a, b in loaded.port_pool.ranges
              if default.port_pool.first_outside(a, b) is not None]
    if opened:
        notes = "```pvenat\nforwards: [" + ", ".join(opened) + "]\n```\n"
        plan = plan_guest(spec.parse(101, notes, ""), "qemu", ATTACHED, loaded)
        assert [f.ports() for f in plan.forwards] == opened
        with pytest.raises(PvenatError, match="outside the port pool"):
            plan_guest(spec.parse(101, notes, ""), "qemu", ATTACHED, default)


# --- the lab: a PVE node after pvenat install -------------------------------------------

class Node:
    """The lab's host as a node where a user types the README's commands: pvenat installed
    (pvenat install --root on the lab's PVE root), its DHCP server running as
    pvenat-dhcp.service runs it, the fake PVE's qm, pct and pvesh on PATH."""

    def __init__(self, lab: Lab, root: str):
        self.lab = lab
        self.bin = os.path.join(lab.dir, "bin")
        os.makedirs(self.bin)
        if not INSTALLED:  # the work tree's pvenat, as /usr/sbin/pvenat runs the package's
            with open(os.path.join(self.bin, "pvenat"), "w") as f:
                f.write(f'#!/bin/sh\nexec {lab.python} -m pvehook "$@"\n')
            os.chmod(os.path.join(self.bin, "pvenat"), 0o755)
        for folder in ("qemu-server", "lxc"):  # /etc/pve as pmxcfs shows a node's
            os.makedirs(os.path.join(lab.etc_pve, "nodes", "pve1", folder), exist_ok=True)
        with api.fixture(lab.fixture, write=True) as data:
            # what the fake qm and pct start needs of the node (tests/fakepve/qmpct.py): its
            # file system is the lab's PVE root, where install puts the snippet
            data["runtime"] = {"node": "pve1", "netns": lab.host, "firewall": lab.node.firewall,
                               "guest_netns": lab.ns("{vmid}"), "root": root,
                               "lock_dir": os.path.join(lab.dir, "lock")}
        install = lab.pvenat("install", "--root", root)
        assert install.returncode == 0, install.stdout + install.stderr
        lab.start_dhcp_server()

    def run(self, line: str, input=None) -> subprocess.CompletedProcess:
        """One command line as written, by sh in the host (a root shell on the node)."""
        env = self.lab.env()
        env["PATH"] = f"{self.bin}:{env['PATH']}"
        return subprocess.run(["ip", "netns", "exec", self.lab.host, "env", "-i",
                               *[f"{k}={v}" for k, v in env.items()], "sh", "-c", line],
                              capture_output=True, text=True, cwd="/", input=input)

    def ok(self, line: str, input=None) -> str:
        result = self.run(line, input)
        assert result.returncode == 0, f"{line}\n{result.stdout}{result.stderr}"
        return result.stdout

    def config(self, vmid: int) -> dict:
        with api.fixture(self.lab.fixture) as data:
            return next(g for g in data["guests"] if g["vmid"] == vmid)["config"]

    def exists(self, vmid: int) -> bool:
        with api.fixture(self.lab.fixture) as data:
            return any(g["vmid"] == vmid for g in data["guests"])

    def tool(self, vmid: int) -> str:
        with api.fixture(self.lab.fixture) as data:
            kind = next(g for g in data["guests"] if g["vmid"] == vmid)["type"]
        return "qm" if kind == "qemu" else "pct"

    def running(self) -> set[int]:
        """Guests whose NICs exist in the host, as pvenat tells them."""
        return {int(m) for m in re.findall(r"^(?:tap|veth)([0-9]+)i[0-9]+",
                                           self.lab.sh_host("ls", "/sys/class/net"), re.M)}

    def spec(self, vmid: int):
        config = self.config(vmid)
        return spec.parse(vmid, config.get("description", ""), config.get("tags", ""))

    def boot(self, vmid: int):
        """The guest's OS, there when PVE plugs its NIC: a namespace answering on the
        first and last guest port of each forward, each port saying which it is."""
        ns = self.lab.ns(vmid)
        self.lab.netns(ns)
        for proto, port in sorted({(f.proto, p) for f in self.spec(vmid).forwards
                                   for p in f.guest}):
            self.lab.serve(ns, f"{vmid}:{proto}/{port}", [f"{proto}:{port}"])

    def reaches(self, vmid: int) -> list[tuple[str, str, str]]:
        """(what, answer, wanted) for each forward's first and last public port, from the
        internet: from a source it lets in, and from one its allow-list keeps out."""
        out = []
        for f in self.spec(vmid).forwards:
            inside = [ip for ip in (PEER_IP, LISTED_IP) if not f.allow or any(
                ipaddress.ip_address(ip) in ipaddress.ip_network(a) for a in f.allow)]
            assert inside, f"no source of the lab's internet is in {f.allow}"
            for public, guest in sorted({(f.public[0], f.guest[0]), (f.public[1], f.guest[1])}):
                answer = self.lab.probe(self.lab.inet, f.proto, PUBLIC_IP, public, inside[0])
                out.append((f"{f.proto} {public} from {inside[0]}", answer,
                            f"{vmid}:{f.proto}/{guest} {inside[0]}"))
                for source in {PEER_IP, LISTED_IP} - set(inside):
                    answer = self.lab.probe(self.lab.inet, f.proto, PUBLIC_IP, public, source)
                    out.append((f"{f.proto} {public} from {source}",
                                "reached" if answer.startswith(f"{vmid}:") else "kept out",
                                "kept out"))
        return out

    def dhcp(self, vmid: int) -> str:
        """The VM's OS asks for its address by DHCP, and takes it."""
        lease = self.lab.dhcp_client(vmid)
        assert lease, f"guest {vmid}: no DHCP answer"
        self.lab.configure(vmid, lease["ip"], lease["router"], 24)
        return lease["ip"]


def node_fixture(tmp_path_factory, name):
    if not os.path.exists(IFUPDOWN2) and not INSTALLED:
        pytest.fail(f"no {IFUPDOWN2}: run make deps (tests/lab/private-ifupdown2)")
    for lab in lab_fixture({}, lan_bridge=False, firewall="iptables",
                           prefix=f"pvr{name}{os.getpid() % 10000}"):
        yield Node(lab, pve_root(str(tmp_path_factory.mktemp(f"root-{name}"))))


@pytest.fixture(scope="module")
def first_node(tmp_path_factory):
    """The lab of "A first guest, from nothing", and of the Day-2 transcripts after it."""
    yield from node_fixture(tmp_path_factory, "a")


@pytest.fixture(scope="module")
def forwards_node(tmp_path_factory):
    """The lab of "Give a guest forwards"."""
    yield from node_fixture(tmp_path_factory, "b")


def output_matches(comment: str, output: str) -> bool:
    """A comment quoting pvenat's output ('...' for the rest) against the lines printed."""
    pattern = ".*".join(map(re.escape, comment.split("...")))
    return any(re.fullmatch(pattern, line) for line in output.splitlines())


def run_block(node: Node, block: Block):
    """Each command of a ```sh block as written, a start booting the guest's OS first;
    then what its comments claim, and every forward of a started guest from the
    internet."""
    for cmd in commands(block):
        where = f"README.md line {cmd.line}: {cmd.text}"
        words = cmd.words
        said = " ".join(cmd.comments)
        if words[0] == "ssh":  # ssh -p PORT USER@HOST
            port, host = words[words.index("-p") + 1], words[-1].split("@")[-1]
            answer = node.lab.probe(node.lab.inet, "tcp", host, port)
            guest_port = re.search(r"\bport (\d+)", said)
            assert guest_port, f"{where}: the comment names no guest port"
            assert re.fullmatch(rf"\d+:tcp/{guest_port.group(1)} {re.escape(PEER_IP)}",
                                answer), f"{where}: {answer}"
            continue
        vmid = int(words[2]) if words[1] == "start" else None
        if vmid:
            node.boot(vmid)
        output = node.ok(cmd.text)
        for comment in cmd.comments:
            if comment.startswith("pvenat:"):
                assert output_matches(comment, output), f"{where}\nprinted:\n{output}"
            m = re.match(r"address (\S+) \((\w+)\): (\S+)", comment)
            if m:  # attach's address, and the option it went into
                assert f"address {m.group(1)} ({m.group(2)})" in output, f"{where}: {output}"
                assert m.group(3) in node.config(int(words[2]))[m.group(2)], where
        if vmid and words[0] == "qm":  # the VM's OS (its installer) asks by DHCP
            address = node.dhcp(vmid)
            assert address == node.spec(vmid).ip, f"{where}: DHCP gave {address}"
            claim = re.search(r"gets (\S+) by DHCP", said)
            assert not claim or address == claim.group(1), f"{where}: DHCP gave {address}"
        if vmid:
            for what, answer, wanted in node.reaches(vmid):
                assert answer == wanted, f"{where}: internet -> public {what}: {answer}"


@pytest.mark.parametrize("block", [pytest.param(b, id=f"{FIRST_GUEST}, line {b.line}")
                                   for b in BLOCKS if (b.section, b.info) == (FIRST_GUEST, "sh")])
def test_a_first_guest(first_node, block):
    run_block(first_node, block)


def test_a_first_guest_inline_commands(first_node):
    """The commands the section's prose names, after its blocks: `pvenat attach --ip
    ADDRESS VMID` on a guest with a NIC on lan_bridge and no address, `pvenat list`,
    `pvenat check VMID`."""
    node = first_node
    assert node.running() >= {101, 102}, "runs after test_a_first_guest"
    for text in inline_commands(FIRST_GUEST):
        if text in NOT_RUN_INLINE:
            continue
        words = text.split()
        if "--ip" in words:
            node.ok(f"qm create {words[-1]} --net0 virtio,bridge=vmbr1")
        output = node.ok(text)
        if "--ip" in words:
            assert f"address {words[words.index('--ip') + 1]} " in output, output
        elif words[1] == "check":
            assert re.match(rf"pvenat: {words[2]} -> \S+ via {PUBLIC_IP}: ", output), output
            assert "rules: all in place" in output, output
        elif words[1] == "list":  # the guests started above: address, MAC, lease, forwards
            for vmid in (101, 102):
                row = next(x.split() for x in output.splitlines() if x.startswith(f"{vmid} "))
                mac = pvenode.nic_options(node.config(vmid)["net0"])["macaddr"]
                assert row[3:7] == ["running", node.spec(vmid).ip or row[4], mac, "yes"] \
                    and row[-2] == "yes", row
        else:
            pytest.fail(f"'{text}': this test does not know what it should do")


def test_give_a_guest_forwards(forwards_node):
    """Its Notes tried first with `pvenat check --notes -`; then on a VM 101 with a NIC on
    vmbr1: step 1's commands, the Notes block as its Notes (the GUI's Notes editor), its
    start, whose task log line is the one step 3 shows; its address by DHCP; every forward
    reaches the guest, the allow-list keeps other sources out; `pvenat sync` after."""
    node, ran = forwards_node, set()
    blocks = [b for b in BLOCKS if is_forwards_notes(b)]
    assert len(blocks) == 1, "one Notes example in the section"
    notes = blocks[0].text
    example = re.search(r"for this block\s+`(pvenat: [^`]+)`", section_text(FORWARDS))
    assert example, "step 3 shows no task log line ('for this block `pvenat: ...`')"
    example = " ".join(example.group(1).split())  # a code span's line break is a space
    commands_ = inline_commands(FORWARDS)
    for text in commands_:  # "pvenat check --notes FILE (or - for standard input)"
        if text.startswith("pvenat check --notes"):
            output = node.ok(text.replace(" FILE", " -"), input=notes)
            assert example.split(": ", 2)[2] in output, output
            ran.add(text)
    node.ok("qm create 101 --name web --net0 virtio,bridge=vmbr1")
    for text in commands_:
        if text not in NOT_RUN_INLINE and text.split()[1] in ("attach", "set"):
            node.ok(text)
            ran.add(text)
    assert node.config(101)["hookscript"] == "local:snippets/pvenat.py"
    node.ok(f"qm set 101 --description {shlex.quote(notes)}")
    node.boot(101)
    output = node.ok("qm start 101")
    assert example in output.splitlines(), f"step 3 says {example}\nprinted:\n{output}"
    assert node.dhcp(101) == node.spec(101).ip
    for what, answer, wanted in node.reaches(101):
        assert answer == wanted, f"internet -> public {what}: {answer}"
    for text in commands_:  # "take effect at the next `pvenat sync`"
        if text == "pvenat sync":
            node.ok(text)
            ran.add(text)
    assert ran | set(NOT_RUN_INLINE) >= set(commands_), \
        f"commands this test does not run: {set(commands_) - ran - set(NOT_RUN_INLINE)}"


def transcripts():
    """The Day-2 blocks: a '# COMMAND' line and what it prints; or the output alone of the
    command their bullet names (`pvenat list [--json]`: pvenat list). pvenat sync's last:
    it changes the lab."""
    out = []
    for b in BLOCKS:
        if (b.section, b.info) == (DAY2, ""):
            lines = b.text.rstrip("\n").split("\n")
            if lines[0].startswith("# "):
                command, lines = lines[0][2:], lines[1:]
            else:
                command = re.sub(r"\s*\[[^]]*\]", "", re.search(r"`([^`]+)`", b.intro).group(1))
            out.append(pytest.param(command, lines, id=f"{DAY2}, line {b.line}: {command}"))
    return sorted(out, key=lambda p: p.values[0].startswith("pvenat sync"))


@pytest.mark.parametrize("command,printed", transcripts())
def test_day2_transcript(first_node, command, printed):
    """In the first guest's lab (VM 101 and CT 102 running):
    - `pvenat list` prints the README's columns, and its rows as written (MAC and packet
      count aside);
    - `pvenat attach VMID` on a guest not attached yet that carries the tag its warning
      names prints what the README shows, exactly;
    - `pvenat sync` (after a first one, as the timer runs it) once 101's tags changed
      while it ran and 102 went away without a hook (crashed) prints what the README
      shows, the count of guests aside (the README's node has more)."""
    node, words = first_node, command.split()
    assert node.running() >= {101, 102}, "runs after test_a_first_guest"
    if command == "pvenat list":
        output = node.ok(command).splitlines()
        assert printed[0].split() == output[0].split(), output[0]
        mac = re.compile(r"\bBC:24:11(:[0-9A-F]{2}){3}\b")

        def cells(line):
            cells = mac.sub("MAC", line).split()
            return cells[:-1] if cells[-1].isdigit() else cells

        for line in printed[1:]:
            assert cells(line) in [cells(x) for x in output[1:]], \
                f"README: {line}\npvenat list:\n" + "\n".join(output)
    elif words[:2] == ["pvenat", "attach"] and len(words) == 3:
        vmid = int(words[2])
        if node.exists(vmid):
            node.ok(f"pvenat detach {vmid}")
        else:
            node.ok(f"qm create {vmid} --net0 virtio,bridge=vmbr1")
        tag = re.search(r"\btag (pvenat-[0-9-]+)", "\n".join(printed))
        if tag:
            node.ok(f"{node.tool(vmid)} set {vmid} --tags {tag.group(1)}")
        result = node.run(command)
        assert result.stdout.splitlines() + result.stderr.splitlines() == printed, \
            result.stdout + result.stderr
        assert result.returncode == (1 if result.stderr else 0)
    elif command == "pvenat sync":
        node.ok(command)  # the timer's last run
        node.ok("qm set 101 --tags pvenat-20000")
        node.lab.sh_host("ip", "link", "del", "veth102i0")
        output = node.ok(command).splitlines()

        def count_aside(line):
            return re.sub(r"^pvenat sync: [0-9]+ guests", "pvenat sync: N guests", line)

        assert [count_aside(x) for x in output] == [count_aside(x) for x in printed], output
    else:
        pytest.fail(f"a transcript of '{command}': this test does not know how to run it")

"""Hooks and sync in process, on the in-memory kernel: the index path, its fallback to
the kernel, post-stop, and what sync writes, without root or a network namespace."""

import argparse
import json
import os
import shutil

import pytest
from memkernel import MemKernel

from pvehook import attach, cli, hook, sync
from pvehook.iptables import backend, index, parse, render
from pvehook.config import HostConfig
from pvehook.context import HOOKSCRIPT, Context, Places
from pvehook.errors import PvenatError
from pvehook.pve import Pve
from pvehook.pveconf import ConfigFiles, digest, parse_conf
from pvehook.rules import Public, Wanted

from api import render_conf

PUBLIC = Public("203.0.113.10", snat=True)
HOST = HostConfig(public_ip=PUBLIC.ip)._replace(
    pve=HostConfig().pve._replace(node="pve1", config_source="files"))
GUESTS = {
    101: ("qemu", {"description": "```pvenat\nforwards: [12222:22, 10000-10009/both]\n```",
                   "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1",
                   "ipconfig0": "ip=172.22.161.170/24"}),
    102: ("lxc", {"tags": "pvenat-11000", "net0": "name=eth0,bridge=vmbr1,"
                  "ip=172.22.161.171/24"}),
    103: ("qemu", {"tags": "pvenat-11000", "net0": "virtio=X,bridge=vmbr1",
                   "ipconfig0": "ip=172.22.161.173/24"}),
}


@pytest.fixture
def ctx(tmp_path):
    places = Places(str(tmp_path / "state"), str(tmp_path / "sys"), str(tmp_path / "proc"))
    for vmid, (kind, config) in GUESTS.items():
        folder = tmp_path / "pve/nodes/pve1" / ("qemu-server" if kind == "qemu" else "lxc")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{vmid}.conf").write_text(render_conf(config))
    (tmp_path / "pve/priv").mkdir()  # pmxcfs's, where cluster-wide locks go
    (tmp_path / "sys/vmbr1/brif").mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/locks").write_text("")
    host = HOST._replace(pve=HOST.pve._replace(config_dir=str(tmp_path / "pve"),
                                               lock_dir=str(tmp_path / "lock")))
    pve = Pve(host.pve, ConfigFiles(host.pve.config_dir), ConfApi(host.pve.config_dir),
              sysfs=places.sysfs, proc=places.proc, environ={})
    return Context(host, pve, MemKernel(), places)


def start(ctx, vmid):
    """The guest's NIC appears (as PVE plugs it) and its hooks run."""
    kind = GUESTS[vmid][0]
    port = os.path.join(ctx.places.sysfs, "vmbr1/brif", f"{'tap' if kind == 'qemu' else 'veth'}"
                        f"{vmid}i0")
    os.makedirs(port)
    with open(os.path.join(port, "hairpin_mode"), "w") as f:
        f.write("0")
    os.symlink(port, os.path.join(ctx.places.sysfs, os.path.basename(port)))
    try:
        return hook.run(ctx, vmid, "pre-start"), hook.run(ctx, vmid, "post-start")
    except PvenatError:
        return None


def stop(ctx, vmid):
    """The guest's NIC goes (as PVE unplugs it) and post-stop runs."""
    for name in os.listdir(ctx.places.sysfs):
        if name.endswith(f"{vmid}i0"):
            os.unlink(os.path.join(ctx.places.sysfs, name))
            shutil.rmtree(os.path.join(ctx.places.sysfs, "vmbr1/brif", name))
    return hook.run(ctx, vmid, "post-stop")


def test_hooks_on_the_index_match_a_full_render(ctx):
    assert start(ctx, 101) == (
        "pvenat: 101 -> 172.22.161.170 via 203.0.113.10: tcp+udp 10000-10009, tcp 12222->22",
        "pvenat: 101: hairpin on tap101i0")
    start(ctx, 102)
    plans = {v: hook.load_plan(ctx, v) for v in (101, 102)}
    assert ctx.kernel.read()["nat"].chains == render.desired(
        ctx.host, PUBLIC, plans.values(), {})["nat"].chains
    with open(os.path.join(ctx.places.sysfs, "vmbr1/brif/tap101i0/hairpin_mode")) as f:
        assert f.read() == "1"
    before = ctx.kernel.read()
    assert hook.run(ctx, 101, "pre-start")  # again: the touched chains are rewritten as they were
    assert ctx.kernel.read()["nat"].chains == before["nat"].chains
    assert stop(ctx, 101) == "pvenat: 101: forwards removed"
    assert ctx.kernel.forgotten == ["172.22.161.170"]
    assert ctx.kernel.read()["nat"].chains == render.with_base(
        render.desired(ctx.host, PUBLIC, [plans[102]], {}), ctx.host, PUBLIC)["nat"].chains
    assert stop(ctx, 101) == ""  # nothing left to remove
    known = index.load(ctx.places.state_dir)
    assert known.addresses == {"172.22.161.171": 102} and known.public == PUBLIC


def test_a_conflict_is_refused_and_changes_nothing(ctx):
    start(ctx, 102)
    before, applied = ctx.kernel.read(), len(ctx.kernel.applied)
    with pytest.raises(PvenatError, match="tcp public port 11000 is already forwarded to "
                       "guest 102"):
        hook.run(ctx, 103, "pre-start")
    assert ctx.kernel.read()["nat"].chains == before["nat"].chains
    assert len(ctx.kernel.applied) == applied


def test_the_rules_seam_speaks_intent_and_answers_with_data(ctx):
    """What commands use: verbs on plans and VMIDs, refusals by code, decisions as data."""
    rules = ctx.rules
    plans = {v: hook.load_plan(ctx, v) for v in (101, 102, 103)}
    assert rules.install(PUBLIC, dry_run=True).text and not ctx.kernel.applied
    assert rules.start(plans[102], PUBLIC).text
    assert rules.preview(plans[102], PUBLIC).text == ""  # all in place
    with pytest.raises(PvenatError) as refused:
        rules.start(plans[103], PUBLIC)
    assert refused.value.code == "conflict"
    assert rules.preview(plans[101], PUBLIC).text and rules.held().addresses == {
        "172.22.161.171": 102}
    assert rules.guest(102) == (plans[102].address,) and rules.guest(101) == (None,)
    seen = []

    def decide(live):
        seen.append(live)
        return Wanted({v: plans[v] for v in (101, 103)}, set(), "inputs")
    done = rules.reconcile(PUBLIC, decide)
    assert seen == [{102}]
    assert (done.forwarded, done.added, done.updated, done.removed) == ([101, 103], [101, 103],
                                                                        [], [102])
    assert done.refused == {} and done.record and not done.same
    again = rules.reconcile(PUBLIC, decide, last=done.record)
    assert again.same and again.text == "" and again.forwarded == [101, 103]
    live = rules.live()
    assert live.has(101) and not live.has(102)
    assert [f.live for f in live.guest(101, plans[101]).forwards] == [True] * len(
        plans[101].forwards)
    assert live.guest(101, None).stale and rules.base_missing(PUBLIC) == []
    assert rules.stop(101).text and rules.uninstall().text and rules.held().addresses == {}


def test_an_index_ahead_of_the_kernel_falls_back_to_the_kernel(ctx):
    """A hook killed between recording its claims and applying them leaves the index
    ahead of the kernel: the next change built on it is refused, and the hook reads the
    kernel instead."""
    start(ctx, 101)
    start(ctx, 102)
    ctx.kernel.tables = {t: render.Table() for t in render.TABLES}  # someone flushed
    assert stop(ctx, 102) == ""  # refused on the index; the kernel has nothing of 102
    assert index.load(ctx.places.state_dir).claims == []  # rebuilt from the kernel
    assert start(ctx, 102)[0].startswith("pvenat: 102 -> 172.22.161.171")
    assert parse.managed_guests(ctx.kernel.read()) == {102}


def test_post_stop_without_index_or_rules_does_nothing(ctx):
    assert hook.run(ctx, 101, "post-stop") == ""
    assert ctx.kernel.applied == []


def test_sync_writes_what_desired_renders(ctx):
    for vmid in (101, 102):
        start(ctx, vmid)
    ctx.kernel.tables = {t: render.Table() for t in render.TABLES}
    os.remove(os.path.join(ctx.places.state_dir, "index.json"))
    result = sync.sync(ctx)
    assert (result.added, result.removed, result.problems) == ([101, 102], [], {})
    plans = [hook.load_plan(ctx, v) for v in (101, 102)]
    assert ctx.kernel.read()["nat"].chains == render.desired(
        ctx.host, PUBLIC, plans, {})["nat"].chains
    assert sync.sync(ctx).lines("pve1", False) == [
        "pvenat sync: nothing to change (2 guests forwarded)"]
    with open(os.path.join(ctx.places.state_dir, "index.json")) as f:
        assert json.load(f)["addresses"] == {"172.22.161.170": 101, "172.22.161.171": 102}


def test_a_sync_with_nothing_new_since_the_last_decides_nothing_again(ctx, monkeypatch):
    start(ctx, 102)
    start(ctx, 103)  # refused: a problem the record must carry
    first = sync.sync(ctx).lines("pve1", False)
    reconciled = []
    real = backend.reconcile
    monkeypatch.setattr(backend, "reconcile", lambda *a: reconciled.append(1) or real(*a))
    assert "guest 103 left as it was" in first[0]
    assert sync.sync(ctx).lines("pve1", False) == [
        first[0], "pvenat sync: nothing to change (1 guests forwarded)"] and reconciled == []
    # whatever it decided from changes: the kernel (a hook), the index, a guest's config
    start(ctx, 101)
    assert sync.sync(ctx).forwarded == [101, 102] and len(reconciled) == 1
    os.remove(os.path.join(ctx.places.state_dir, "index.json"))
    sync.sync(ctx)
    assert len(reconciled) == 2
    chain = render.guest_chain(101)  # someone flushes a chain of pvenat's
    ctx.kernel.apply(f"*nat\n:{chain} - [0:0]\nCOMMIT\n")
    assert sync.sync(ctx).updated == [101] and len(reconciled) == 3
    conf = os.path.join(ctx.host.pve.config_dir, "nodes/pve1/lxc/102.conf")
    with open(conf, "a") as f:
        f.write("tags: pvenat-11001\n")  # 102 moves off 11000, which 103 then gets
    result = sync.sync(ctx)
    assert (result.updated, result.added, len(reconciled)) == ([102], [103], 4)
    assert sync.sync(ctx).lines("pve1", False) == [
        "pvenat sync: nothing to change (3 guests forwarded)"] and len(reconciled) == 4


def test_sync_keeps_the_guest_that_was_there_first(ctx):
    start(ctx, 102)
    start(ctx, 103)  # refused at pre-start; its NIC exists anyway (started by hand)
    result = sync.sync(ctx)
    assert result.forwarded == [102]
    assert "guest 103" in result.problems[103] and "guest 102" in result.problems[103]
    assert parse.managed_guests(ctx.kernel.read()) == {102}


def test_post_stop_never_fails_the_stop(ctx, tmp_path):
    """An unwritable state directory (here: a file where it should be) is a warning."""
    start(ctx, 102)
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    ctx.places = ctx.places._replace(state_dir=str(blocked / "state"))
    line = hook.run(ctx, 102, "post-stop")
    assert line.startswith("pvenat: 102: WARNING: rules not removed: ") and \
        line.endswith("Not a directory; run 'pvenat sync'")


class ConfApi:
    """pvesh set as PVE carries it out, for attach: the guest's .conf changes, the options
    given and no other; refused when ``digest`` is not the .conf's (qemu-server update_vm,
    pve-container API2/LXC/Config.pm)."""

    def __init__(self, config_dir):
        self.config_dir = config_dir

    def set_config(self, node, guest, **options):
        folder = "qemu-server" if guest.kind == "qemu" else "lxc"
        with open(os.path.join(self.config_dir, "nodes", node, folder, f"{guest.vmid}.conf"),
                  "rb") as f:
            raw = f.read()
        if options.get("digest", digest(raw)) != digest(raw):
            raise PvenatError("pve", "checksum mismatch (file change by other user?)")
        options.pop("digest", None)
        config = parse_conf(raw.decode())
        for key in filter(None, options.pop("delete", "").split(",")):
            config.pop(key, None)
        write_conf(self.config_dir, guest.vmid, guest.kind, dict(config, **options), node)


def write_conf(config_dir, vmid, kind, config, node="pve1"):
    folder = "qemu-server" if kind == "qemu" else "lxc"
    with open(os.path.join(config_dir, "nodes", node, folder, f"{vmid}.conf"), "w") as f:
        f.write(render_conf(config))


def refusal(ctx, vmid) -> str:
    """What the guest's pre-start refuses its start with."""
    with pytest.raises(PvenatError) as e:
        hook.run(ctx, vmid, "pre-start")
    return e.value.message


NIC_103 = {"net0": "virtio=BC:24:11:00:00:03,bridge=vmbr1", "ipconfig0": "ip=172.22.161.173/24"}


@pytest.mark.parametrize("config", [
    {"description": "```pvenat\nforwards: [8080]\n```"},  # outside port_pool
    {"description": "```pvenat\nforwards: [10000-10010, 8006]\n```"},  # reserved
    {"description": "```pvenat\nforwards:\n  - ports: 12222:22\n    allow: [192.0.2.1/24]\n"
                    "```"},  # a bad allow-list
    {"description": "```pvenat\nforwards:\n  - 12222 : 22\n```"},  # malformed Notes
    {"tags": "pvenat-11000"},  # a port that a guest running here holds
    {"description": "```pvenat\nip: 172.22.161.171\nforwards: [12000]\n```"},  # its address
], ids=["outside the pool", "reserved", "allow-list", "malformed", "port held", "address held"])
def test_attach_attaches_and_reports_what_a_start_would_refuse(ctx, config):
    """The same refusal, word for word, as the start's: attach runs pre-start's checks."""
    start(ctx, 102)  # running here: 172.22.161.171, tcp and udp 11000
    write_conf(ctx.host.pve.config_dir, 103, "qemu", dict(NIC_103, **config))
    lines, problems = attach.attach(ctx, [103], False)
    assert lines == [f"pvenat: 103: hookscript set to {HOOKSCRIPT}"]
    assert ctx.pve.guest(103).config["hookscript"] == HOOKSCRIPT
    assert [(vmid, e.message) for vmid, e in problems] == [(103, refusal(ctx, 103))]


def test_attach_reports_each_problem_of_the_guest_as_its_next_start_reads_it(ctx):
    start(ctx, 101)  # its DHCP lease has MAC BC:24:11:00:00:01
    start(ctx, 102)
    # 101's MAC, 102's port, and no address yet: attach gives it one, in its pvenat block
    write_conf(ctx.host.pve.config_dir, 103, "qemu", {
        "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1",
        "description": "```pvenat\nforwards: [11000]\n```"})
    lines, problems = attach.attach(ctx, [103], False)
    assert lines == [f"pvenat: 103: hookscript set to {HOOKSCRIPT}; address 172.22.161.1 "
                     "(description)"]
    assert [e.code for _, e in problems] == ["conflict", "conflict"]
    first, second = (e.message for _, e in problems)
    assert first == refusal(ctx, 103)  # the lease check comes first at pre-start
    assert first.startswith("guest 103: MAC BC:24:11:00:00:01 is also guest 101's")
    write_conf(ctx.host.pve.config_dir, 103, "qemu", dict(
        ctx.pve.guest(103).config, net0="virtio=BC:24:11:00:00:03,bridge=vmbr1"))
    assert second == refusal(ctx, 103)  # line 3: attach wrote "ip:" above it
    assert second.startswith("guest 103, Notes line 3: tcp public port 11000 is already "
                             "forwarded to guest 102")


def test_the_attach_command_warns_and_exits_1(ctx, capsys):
    start(ctx, 102)
    args = argparse.Namespace(command="attach", vmids=[101, 103], force=False, ip=None)
    assert cli.cmd_attach(args, ctx) == 1  # 103's tag pvenat-11000 is 102's port
    out, err = capsys.readouterr()
    assert out == (f"pvenat: 101: hookscript set to {HOOKSCRIPT}\n"
                   f"pvenat: 103: hookscript set to {HOOKSCRIPT}\n")
    assert err == ("pvenat: 103: warning: a start would refuse: guest 103, tag pvenat-11000: "
                   "tcp public port 11000 is already forwarded to guest 102 (tcp 11000), which "
                   "is running on this node; pick other ports (or run 'pvenat sync' if 102 is "
                   "no longer running here)\n")
    assert cli.cmd_attach(argparse.Namespace(command="attach", vmids=[101], force=False,
                                             ip=None), ctx) == 0
    assert capsys.readouterr() == ("pvenat: 101: already attached\n", "")


def test_attach_keeps_the_address_of_notes_a_start_would_refuse(ctx):
    """A port outside the pool must not cost the guest the address its block names; and
    into Notes pvenat cannot read at all, it writes no address."""
    for forwards in ("8080", "12222 : 22"):
        notes = f"```pvenat\nip: 172.22.161.173\nforwards: [{forwards}]\n```"
        write_conf(ctx.host.pve.config_dir, 103, "qemu", {
            "net0": "virtio=BC:24:11:00:00:03,bridge=vmbr1", "description": notes})
        lines, problems = attach.attach(ctx, [103], False)
        assert lines == [f"pvenat: 103: hookscript set to {HOOKSCRIPT}"]
        assert ctx.pve.guest(103).config["description"] == notes
        assert [e.message for _, e in problems] == [refusal(ctx, 103)]
    with pytest.raises(PvenatError, match="'12222 : 22' reads as a YAML mapping"):
        attach.attach(ctx, [103], False, "172.22.161.50")

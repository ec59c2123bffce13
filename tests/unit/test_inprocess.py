"""Hooks and sync in process, on the in-memory kernel: the index path, its fallback to
the kernel, post-stop, and what sync writes, without root or a network namespace."""

import json
import os
import shutil

import pytest
from memkernel import MemKernel

from pvehook import hook, index, ruleset, sync
from pvehook.config import HostConfig
from pvehook.context import Context, Places
from pvehook.errors import PvenatError
from pvehook.pveconf import ConfigFiles

from api import render_conf

PUBLIC = ruleset.Public("203.0.113.10", snat=True)
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
    (tmp_path / "sys/vmbr1/brif").mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/locks").write_text("")
    configs = ConfigFiles(str(tmp_path / "pve"), places.sysfs)
    return Context(HOST._replace(pve=HOST.pve._replace(config_dir=str(tmp_path / "pve"),
                                                       lock_dir=str(tmp_path / "lock"))),
                   None, configs, MemKernel(), places)


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
    assert ctx.kernel.read()["nat"].chains == ruleset.desired(
        ctx.host, PUBLIC, plans.values(), {})["nat"].chains
    with open(os.path.join(ctx.places.sysfs, "vmbr1/brif/tap101i0/hairpin_mode")) as f:
        assert f.read() == "1"
    before = ctx.kernel.read()
    assert hook.run(ctx, 101, "pre-start")  # again: the touched chains are rewritten as they were
    assert ctx.kernel.read()["nat"].chains == before["nat"].chains
    assert stop(ctx, 101) == "pvenat: 101: forwards removed"
    assert ctx.kernel.forgotten == ["172.22.161.170"]
    assert ctx.kernel.read()["nat"].chains == ruleset.with_base(
        ruleset.desired(ctx.host, PUBLIC, [plans[102]], {}), ctx.host, PUBLIC)["nat"].chains
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


def test_an_index_ahead_of_the_kernel_falls_back_to_the_kernel(ctx):
    """A hook killed between recording its claims and applying them leaves the index
    ahead of the kernel: the next change built on it is refused, and the hook reads the
    kernel instead."""
    start(ctx, 101)
    start(ctx, 102)
    ctx.kernel.tables = {t: ruleset.Table() for t in ruleset.TABLES}  # someone flushed
    assert stop(ctx, 102) == ""  # refused on the index; the kernel has nothing of 102
    assert index.load(ctx.places.state_dir).claims == []  # rebuilt from the kernel
    assert start(ctx, 102)[0].startswith("pvenat: 102 -> 172.22.161.171")
    assert ruleset.managed_guests(ctx.kernel.read()) == {102}


def test_post_stop_without_index_or_rules_does_nothing(ctx):
    assert hook.run(ctx, 101, "post-stop") == ""
    assert ctx.kernel.applied == []


def test_sync_writes_what_desired_renders(ctx):
    for vmid in (101, 102):
        start(ctx, vmid)
    ctx.kernel.tables = {t: ruleset.Table() for t in ruleset.TABLES}
    os.remove(os.path.join(ctx.places.state_dir, "index.json"))
    result = sync.sync(ctx)
    assert (result.added, result.removed, result.problems) == ([101, 102], [], {})
    plans = [hook.load_plan(ctx, v) for v in (101, 102)]
    assert ctx.kernel.read()["nat"].chains == ruleset.desired(
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
    real = sync.reconcile
    monkeypatch.setattr(sync, "reconcile", lambda *a: reconciled.append(1) or real(*a))
    assert "guest 103 left as it was" in first[0]
    assert sync.sync(ctx).lines("pve1", False) == [
        first[0], "pvenat sync: nothing to change (1 guests forwarded)"] and reconciled == []
    # whatever it decided from changes: the kernel (a hook), the index, a guest's config
    start(ctx, 101)
    assert sync.sync(ctx).forwarded == [101, 102] and len(reconciled) == 1
    os.remove(os.path.join(ctx.places.state_dir, "index.json"))
    sync.sync(ctx)
    assert len(reconciled) == 2
    chain = ruleset.guest_chain(101)  # someone flushes a chain of pvenat's
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
    assert ruleset.managed_guests(ctx.kernel.read()) == {102}


def test_post_stop_never_fails_the_stop(ctx, tmp_path):
    """An unwritable state directory (here: a file where it should be) is a warning."""
    start(ctx, 102)
    blocked = tmp_path / "blocked"
    blocked.write_text("")
    ctx.places = ctx.places._replace(state_dir=str(blocked / "state"))
    line = hook.run(ctx, 102, "post-stop")
    assert line.startswith("pvenat: 102: WARNING: rules not removed: ") and \
        line.endswith("Not a directory; run 'pvenat sync'")

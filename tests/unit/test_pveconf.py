"""Guest configs read from /etc/pve files: the same data as the API, real file format."""

import fcntl

import pytest

from pvehook.errors import PvenatError
from pvehook.pveconf import ConfigFiles, config_locked, parse_conf

REAL = """#Shop web server%3A %C3%BCber alles
#
#```pvenat
#forwards%3A
#  - 12222%3A22
#```
boot: order=scsi0;net0
cores: 2
ipconfig0: ip=172.22.161.170/24,gw=172.22.161.254
net0: virtio=BC:24:11:5E:7A:01,bridge=vmbr1,firewall=1
parent: before-upgrade
tags: pvenat-10000;web

[before-upgrade]
#old notes
net0: virtio=BC:24:11:5E:7A:01,bridge=vmbr0
snaptime: 1732000000
tags: pvenat-9999

[PENDING]
tags: pvenat-11111
"""


def test_real_format():
    config = parse_conf(REAL)
    assert config["description"] == (
        "Shop web server: über alles\n\n```pvenat\nforwards:\n  - 12222:22\n```")
    assert config["tags"] == "pvenat-10000;web"
    assert config["net0"] == "virtio=BC:24:11:5E:7A:01,bridge=vmbr1,firewall=1"
    assert "snaptime" not in config


def test_old_single_line_description():
    assert parse_conf("description: a%0Ab\nname: x\n")["description"] == "a\nb"


def test_finds_qemu_then_lxc(tmp_path):
    (tmp_path / "nodes/pve1/qemu-server").mkdir(parents=True)
    (tmp_path / "nodes/pve1/lxc").mkdir(parents=True)
    (tmp_path / "nodes/pve1/qemu-server/101.conf").write_text(REAL)
    (tmp_path / "nodes/pve1/lxc/102.conf").write_text("net0: name=eth0,bridge=vmbr1\n")
    files = ConfigFiles(str(tmp_path))
    assert files.guest("pve1", 101).kind == "qemu"
    assert files.guest("pve1", 102).config == {"net0": "name=eth0,bridge=vmbr1"}
    with pytest.raises(PvenatError, match="guest 103: no QEMU or LXC config on node pve1"):
        files.guest("pve1", 103)


def test_files_and_api_give_the_same_config():
    from shared import flow_guests

    from api import render_conf
    for g in flow_guests().values():
        want = dict(g["config"])
        if "description" in want:  # PVE drops trailing white space when it parses
            want["description"] = want["description"].rstrip()
        assert parse_conf(render_conf(g["config"], snapshot={"tags": "x"})) == want


def test_guests_run_here_when_their_devices_exist(tmp_path):
    for folder, vmids in (("qemu-server", [101, 103, 105]), ("lxc", [102, 104])):
        (tmp_path / f"etc/nodes/pve1/{folder}").mkdir(parents=True)
        for vmid in vmids:
            (tmp_path / f"etc/nodes/pve1/{folder}/{vmid}.conf").write_text("cores: 1\n")
    (tmp_path / "etc/nodes/pve2/qemu-server").mkdir(parents=True)
    (tmp_path / "etc/nodes/pve2/qemu-server/106.conf").write_text("cores: 1\n")
    sysfs = tmp_path / "sys"
    sysfs.mkdir()
    for name in ("lo", "vmbr1", "tap101i0", "veth102i1", "fwpr105p0", "xtap103i0", "tap106i0"):
        (sysfs / name).mkdir()
    files = ConfigFiles(str(tmp_path / "etc"), str(sysfs))
    assert [(g.vmid, g.kind, g.status) for g in files.guests("pve1")] == [
        (101, "qemu", "running"), (102, "lxc", "running"), (103, "qemu", "stopped"),
        (104, "lxc", "stopped"), (105, "qemu", "running")]


def test_config_locks_held_are_seen_without_taking_them(tmp_path):
    (tmp_path / "qemu-server").mkdir()
    (tmp_path / "lxc").mkdir()
    files = [tmp_path / "qemu-server/lock-101.conf", tmp_path / "lxc/pve-config-102.lock",
             tmp_path / "qemu-server/lock-103.conf"]
    handles = [open(f, "a") for f in files]
    try:
        fcntl.flock(handles[0], fcntl.LOCK_EX)
        fcntl.flock(handles[1], fcntl.LOCK_SH)
        assert config_locked([101, 102, 103, 104], str(tmp_path)) == {101, 102}
        fcntl.flock(handles[0], fcntl.LOCK_UN)
        assert config_locked([101, 102, 103, 104], str(tmp_path)) == {102}
    finally:
        for h in handles:
            h.close()
    assert config_locked([101, 102, 103, 104], str(tmp_path)) == set()

"""The PVE seam (pvehook/pve.py) and the cluster filesystem behind it (pveconf.py): whole
.conf files with their sections, what a running VM's cloud-init drive has, PVE's digest,
the cluster-wide lock, and refusals told by code."""

import hashlib
import os
import threading
import time

import pytest

from pvehook import attach
from pvehook.config import HostConfig, PveSettings
from pvehook.errors import PvenatError
from pvehook.pve import Guest, GuestInfo, Pve
from pvehook.pveconf import (ConfigFiles, as_the_guest_has_it, cfs_lock, parse_conf,
                             parse_sections)

from api import render_conf

# A running VM whose ipconfig0 was changed from .170 to .180 and whose ipconfig1 was
# added while it ran (qemu-server vmconfig_hotplug_pending, cloudinit_record_changed), as
# write_vm_config writes it: current, [PENDING], [special:cloudinit], snapshots.
RUNNING_VM = """#Web
ide2: local-lvm:vm-101-cloudinit,media=cdrom
ipconfig0: ip=172.22.161.180/24,gw=172.22.161.254
ipconfig1: ip=172.22.162.5/24
net0: virtio=BC:24:11:00:00:01,bridge=vmbr1
net1: virtio=BC:24:11:00:00:11,bridge=vmbr2
parent: s1

[PENDING]
memory: 4096

[special:cloudinit]
added: ipconfig1
ipconfig0: ip=172.22.161.170/24,gw=172.22.161.254

[s1]
#old notes
hookscript: local:snippets/pvenat.py
net0: virtio=BC:24:11:00:00:01,bridge=vmbr1
snaptime: 1732000000
"""


def conf(root, node, kind, vmid, text):
    folder = root / "nodes" / node / ("qemu-server" if kind == "qemu" else "lxc")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{vmid}.conf").write_text(text)


def test_every_section_of_a_conf():
    sections = parse_sections(RUNNING_VM)
    assert list(sections) == ["", "PENDING", "special:cloudinit", "s1"]
    assert sections[""]["description"] == "Web"
    assert sections["s1"] == {"description": "old notes", "net0": sections[""]["net0"],
                              "hookscript": "local:snippets/pvenat.py",
                              "snaptime": "1732000000"}
    assert sections[""] == parse_conf(RUNNING_VM)  # the current config, as before


def test_a_running_vm_has_what_its_cloudinit_drive_has(tmp_path):
    """ipconfig0 as the drive has it (.170), not the .180 that comes with the next start;
    ipconfig1, added while it ran, not at all."""
    conf(tmp_path, "pve1", "qemu", 101, RUNNING_VM)
    guest = ConfigFiles(str(tmp_path)).guest("pve1", 101)
    assert guest.config["ipconfig0"] == "ip=172.22.161.170/24,gw=172.22.161.254"
    assert "ipconfig1" not in guest.config
    assert guest.digest == hashlib.sha1(RUNNING_VM.encode()).hexdigest()
    assert guest.node == "pve1"
    # once started, PVE has made the drive anew and dropped the section: the current one
    started = RUNNING_VM.replace("[special:cloudinit]\nadded: ipconfig1\n"
                                 "ipconfig0: ip=172.22.161.170/24,gw=172.22.161.254\n\n", "")
    conf(tmp_path, "pve1", "qemu", 101, started)
    assert ConfigFiles(str(tmp_path)).guest("pve1", 101).config["ipconfig0"] == \
        "ip=172.22.161.180/24,gw=172.22.161.254"
    # containers have no cloud-init: nothing to overlay
    assert as_the_guest_has_it("lxc", {"net0": "x"}, {"net0": "y"}) == {"net0": "x"}


def test_the_fakes_conf_is_what_the_reader_reads():
    """tests/fakepve/api.py writes the section as PVE does, and only with a cloud-init
    drive (write_vm_config: has_cloudinit)."""
    config = {"net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1", "ipconfig0": "ip=172.22.161.180/24",
              "ide2": "local-lvm:vm-101-cloudinit,media=cdrom"}
    text = render_conf(config, cloudinit={"ipconfig0": "ip=172.22.161.170/24"},
                       snapshots={"s1": {"tags": "x"}})
    assert parse_sections(text)["special:cloudinit"] == {"ipconfig0": "ip=172.22.161.170/24"}
    no_drive = {k: v for k, v in config.items() if k != "ide2"}
    assert "[special:cloudinit]" not in render_conf(
        no_drive, cloudinit={"ipconfig0": "ip=172.22.161.170/24"})


def test_the_cluster_with_every_section(tmp_path):
    conf(tmp_path, "pve1", "qemu", 101, RUNNING_VM)
    conf(tmp_path, "pve2", "lxc", 201, "hookscript: local:snippets/pvenat.py\n")
    files = ConfigFiles(str(tmp_path))
    where = {(gf.node, gf.vmid): [w for w, _ in gf.configs()] for gf in files.guest_files()}
    assert where == {("pve1", 101): ["current", "pending", "snapshot s1"],
                     ("pve2", 201): ["current"]}
    assert files.readable()
    assert not ConfigFiles(str(tmp_path / "empty")).readable()  # pve-cluster down


class Reader:
    """An API reader: what GET .../config?current=1 answers (no [special:cloudinit])."""

    def __init__(self, config):
        self.config = config

    def guests(self, node):
        return [GuestInfo(101, "qemu", "web", "stopped")]  # pvestatd's late view

    def guest(self, node, vmid, kind=""):
        return Guest(vmid, kind or "qemu", dict(self.config), node, "d1")


def test_the_seam_answers_alike_whichever_backend(tmp_path):
    """A command never learns which backend answered: the API's config gets the cloud-init
    drive's addresses from the file too, and a guest's status is always its NICs'."""
    conf(tmp_path, "pve1", "qemu", 101, RUNNING_VM)
    sysfs = tmp_path / "sys"
    (sysfs / "tap101i0").mkdir(parents=True)
    settings = PveSettings(node="pve1", config_dir=str(tmp_path), config_source="api")
    api = Pve(settings, reader=Reader(parse_conf(RUNNING_VM)), sysfs=str(sysfs))
    files = Pve(settings._replace(config_source="files"), sysfs=str(sysfs))
    for pve in (api, files):
        assert pve.guest(101).config["ipconfig0"] == "ip=172.22.161.170/24,gw=172.22.161.254"
        assert [(g.vmid, g.status) for g in pve.guests()] == [(101, "running")]
    assert Pve(settings, environ={"PVE_MIGRATED_FROM": "pve2"}).migrated_from() == "pve2"


class Writer:
    def __init__(self, pve_dir, refuse=True):
        self.pve_dir, self.refuse, self.calls = pve_dir, refuse, []

    def set_config(self, node, guest, **options):
        self.calls.append(options)
        if self.refuse:
            raise PvenatError("pve", "guest 101: cannot change ...: checksum mismatch (file "
                              "change by other user?)")


def test_a_write_refused_because_the_config_changed_has_its_own_code(tmp_path):
    """Told by the digest, read again: not by the words of PVE's refusal."""
    conf(tmp_path, "pve1", "qemu", 101, RUNNING_VM)
    writer = Writer(tmp_path)
    pve = Pve(PveSettings(node="pve1", config_dir=str(tmp_path)), writer=writer)
    guest = pve.guest(101)
    with pytest.raises(PvenatError) as e:
        pve.set_config(guest, hookscript="local:snippets/pvenat.py")
    assert e.value.code == "pve"  # refused, the config as it was: some other reason
    assert writer.calls == [{"hookscript": "local:snippets/pvenat.py",
                             "digest": guest.digest}]
    conf(tmp_path, "pve1", "qemu", 101, RUNNING_VM.replace("#Web", "#Web shop"))  # the GUI
    with pytest.raises(PvenatError) as e:
        pve.set_config(guest, hookscript="local:snippets/pvenat.py")
    assert e.value.code == "changed"


def test_the_snippet_path_follows_the_storage(tmp_path):
    """pve-storage Plugin.pm get_subdir: path, then content-dirs' folder or the default."""
    class Storage:
        def __init__(self, config):
            self.config = config

        def storage(self, name):
            return self.config

    def path(config):
        return Pve(PveSettings(), writer=Storage(config)).volume_path(
            "local:snippets/pvenat.py")

    assert path({"path": "/var/lib/vz"}) == "/var/lib/vz/snippets/pvenat.py"
    assert path({"path": "/var/lib/vz", "content-dirs": {"snippets": "hooks"}}) == \
        "/var/lib/vz/hooks/pvenat.py"
    assert path({"path": "/srv/pve", "content-dirs": "iso=isos,snippets=a/b"}) == \
        "/srv/pve/a/b/pvenat.py"
    with pytest.raises(PvenatError, match="storage 'local' has no path"):
        path({"type": "lvmthin"})


def test_the_cluster_lock_is_held_by_one_at_a_time(tmp_path):
    """pve-cluster cfs_lock: mkdir of priv/lock/<id>; another waits, and gives up after its
    timeout; the directory goes with the holder."""
    (tmp_path / "priv").mkdir()
    lock = tmp_path / "priv/lock/pvenat-addresses"
    order = []
    with cfs_lock(str(tmp_path), "pvenat-addresses"):
        assert lock.is_dir()
        with pytest.raises(PvenatError) as e:
            with cfs_lock(str(tmp_path), "pvenat-addresses", timeout=1):
                pass
        assert e.value.code == "pve" and "another pvenat held it for 1 s" in e.value.message

        def second():
            with cfs_lock(str(tmp_path), "pvenat-addresses", timeout=5):
                order.append("second")
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.3)
        order.append("first done")
    waiter.join()
    assert order == ["first done", "second"] and not lock.exists()
    with pytest.raises(PvenatError, match="the PVE cluster filesystem is not online"):
        with cfs_lock(str(tmp_path / "no-pmxcfs"), "pvenat-addresses"):
            pass


HOST = HostConfig()


@pytest.mark.parametrize("kind,option,have,written", [
    ("qemu", "ipconfig0", "ip=dhcp,ip6=2001:db8::5/64,gw6=2001:db8::1",
     "ip=172.22.161.9/24,gw=172.22.161.254,ip6=2001:db8::5/64,gw6=2001:db8::1"),
    ("qemu", "ipconfig0", "ip6=auto", "ip=172.22.161.9/24,gw=172.22.161.254,ip6=auto"),
    ("lxc", "net0", "name=eth0,bridge=vmbr1,ip=dhcp,ip6=auto,gw6=fe80::1,type=veth",
     "name=eth0,bridge=vmbr1,ip6=auto,gw6=fe80::1,type=veth,ip=172.22.161.9/24,"
     "gw=172.22.161.254"),
])
def test_attach_keeps_the_other_fields_of_the_option(kind, option, have, written):
    """ipconfigN has ip, gw, ip6, gw6 (qemu-server); attach sets ip and gw alone."""
    net = "name=eth0,bridge=vmbr1" if kind == "lxc" else "virtio=BC:24:11:00:00:05,bridge=vmbr1"
    config = {"net0": net, option: have}
    assert attach.address_option(Guest(105, kind, config), "172.22.161.9", HOST) == \
        (option, written)


def test_status_finds_guests_without_an_address_by_code(tmp_path):
    """A check reads the error's code, whatever its words say."""
    from pvehook import status
    from pvehook.context import Context, Places
    conf(tmp_path, "pve1", "qemu", 104, "description: ```pvenat%0Aforwards: [14000]%0A```\n"
         "hookscript: local:snippets/pvenat.py\nnet0: virtio=BC:24:11:00:00:04,bridge=vmbr1\n")
    host = HostConfig()._replace(pve=PveSettings(node="pve1", config_dir=str(tmp_path)))
    (tmp_path / "sys").mkdir()
    ctx = Context(host, Pve(host.pve, sysfs=str(tmp_path / "sys")), None,
                  Places(sysfs=str(tmp_path / "sys")))
    assert status._guests(ctx, "", "/")[1] == (
        "managed guests without an address", False, "104 (add 'ip:' to their pvenat block)")
    assert os.path.exists(tmp_path / "nodes/pve1/qemu-server/104.conf")


def test_an_address_a_running_vm_has_or_gets_at_its_next_start_is_taken(tmp_path):
    """attach picks among the addresses no guest of the cluster has: a VM on pve2 whose
    ipconfig0 changed while it ran has .170 (its drive) and gets .180 (its config), so
    neither is free."""
    from pvehook.context import Context, Places
    conf(tmp_path, "pve2", "qemu", 101, RUNNING_VM.replace("172.22.161.170", "172.22.161.1")
         .replace("172.22.161.180", "172.22.161.2"))
    host = HostConfig()._replace(pve=PveSettings(node="pve1", config_dir=str(tmp_path)))
    ctx = Context(host, Pve(host.pve), None, Places())
    used = attach.used_addresses(ctx)
    assert used == {"172.22.161.1": 101, "172.22.161.2": 101}
    assert attach.first_free(host, used) == "172.22.161.3"

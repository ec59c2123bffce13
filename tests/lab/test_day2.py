"""Day-2 commands in the namespace lab: sync, list, check, attach, detach, status."""

import fcntl
import hashlib
import json
import os
import re
import subprocess
import time

import pytest

from lab import PEER_IP, PUBLIC_IP, lab_fixture

NOTES = "```pvenat\nforwards:\n  - 12222:22\n  - 10000-10009/both\n```\n"


def guests():
    return {
        101: {"kind": "qemu", "address": "172.22.161.170",
              "serve": ["tcp:22", "tcp:10000", "udp:10000"],
              "config": {"description": NOTES, "hookscript": "local:snippets/pvenat.py",
                         "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1",
                         "ipconfig0": "ip=172.22.161.170/24,gw=172.22.161.254"}},
        102: {"kind": "lxc", "address": "172.22.161.171", "serve": ["tcp:11000"],
              "config": {"tags": "pvenat-11000", "hookscript": "local:snippets/pvenat.py",
                         "net0": "name=eth0,bridge=vmbr1,ip=172.22.161.171/24"}},
        103: {"kind": "qemu", "status": "stopped",
              "config": {"net0": "virtio=X,bridge=vmbr1", "tags": "pvenat-13000"}},
        104: {"kind": "qemu", "address": "172.22.161.174",
              "config": {"net0": "virtio=X,bridge=vmbr1",
                                         "description": "```pvenat\nforwards: [14000]\n```"}},
    }


@pytest.fixture(scope="module")
def lab():
    for lab in lab_fixture(guests(), config_source="files"):
        # someone else's rules, which pvenat must never touch
        lab.iptables("-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8080", "-j",
                     "REDIRECT", "--to-ports", "80")
        lab.iptables("-t", "filter", "-N", "ADMIN")
        lab.iptables("-t", "filter", "-A", "FORWARD", "-j", "ADMIN")
        yield lab


def settle(lab):
    """The state the scenario reaches in its first test, for tests run on their own."""
    lab.set_config(101, description=NOTES.replace("12222:22", "12223:22"))
    lab.set_config(104, description="```pvenat\nip: 172.22.161.174\nforwards: [14000]\n```")
    run(lab, "sync")


def run(lab, *args, rc=0):
    result = lab.pvenat(*args)
    assert result.returncode == rc, result.stdout + result.stderr
    return result.stdout


def foreign(lab):
    """Everyone else's rules and chains (a table pvenat loaded first, such as raw, lists
    its built-in chains only once it is loaded)."""
    return [line for line in lab.iptables_save().splitlines() if "PVENAT" not in line
            and line.startswith(("-A", ":")) and not re.fullmatch(r":[A-Z]+ ACCEPT", line)]


def test_sync_reconciles_edits_migrations_and_flushes(lab):
    theirs = foreign(lab)
    # 104 runs but has no address: it is reported and left alone, the others go live
    out = run(lab, "sync", rc=1)
    assert "guest 104 left as it was: guest 104: no address to forward to" in out
    # every guest on the lan bridge gets its port set up, forwards or not
    assert "pvenat sync: 2 guests forwarded; added 101, 102; hairpin turned on for " \
        "tap101i0, veth102i0, tap104i0" in out
    assert lab.probe(lab.inet, "tcp", PUBLIC_IP, 12222) == f"g101 {PEER_IP}"
    lab.set_config(104, description="```pvenat\nip: 172.22.161.174\nforwards: [14000]\n```")
    assert run(lab, "sync") == "pvenat sync: 3 guests forwarded; added 104\n"
    settled = lab.iptables_save()
    assert run(lab, "sync") == "pvenat sync: nothing to change (3 guests forwarded)\n"
    assert lab.iptables_save() == settled

    # Notes edited while the guest runs: the new forward works, the old one is gone
    lab.set_config(101, description=NOTES.replace("12222:22", "12223:22"))
    assert "would be updated 101" in run(lab, "sync", "--dry-run")
    assert lab.iptables_save() == settled  # a dry run changes nothing
    assert run(lab, "sync") == "pvenat sync: 3 guests forwarded; updated 101\n"
    assert lab.probe(lab.inet, "tcp", PUBLIC_IP, 12223) == f"g101 {PEER_IP}"
    assert lab.probe(lab.inet, "tcp", PUBLIC_IP, 12222) == "refused"

    # PVE lists 102 on pve2 while its NIC is still here: a live migration's target before
    # the config moves over (or a source before the guest leaves). Its rules stay.
    lab.guests[102]["node"] = "pve2"
    lab.write_fixture()
    assert run(lab, "sync") == "pvenat sync: nothing to change (3 guests forwarded)\n"
    # the migration is over and 102 left this node, which got no post-stop
    lab.sh_host("ip", "link", "set", "veth102i0", "down", "name", "gone102")
    assert run(lab, "sync") == \
        "pvenat sync: 2 guests forwarded; removed (not running on pve1) 102\n"
    assert "PVENAT-102" not in lab.iptables_save()
    assert lab.probe(lab.inet, "tcp", PUBLIC_IP, 11000) == "refused"
    lab.sh_host("ip", "link", "set", "gone102", "name", "veth102i0", "up")
    lab.guests[102]["node"] = "pve1"
    lab.write_fixture()
    run(lab, "sync")

    # someone flushed pvenat's chains and a hairpin flag
    lab.iptables("-t", "nat", "-F", "PVENAT-DNAT")
    lab.iptables("-t", "nat", "-F", "PVENAT-101")
    lab.sh_host("sh", "-c", "echo 0 > /sys/class/net/vmbr1/brif/tap101i0/hairpin_mode")
    assert lab.probe(lab.inet, "tcp", PUBLIC_IP, 12223) == "refused"
    assert run(lab, "sync") == ("pvenat sync: 3 guests forwarded; updated 101; "
                                "hairpin turned on for tap101i0\n")
    assert lab.probe(lab.inet, "tcp", PUBLIC_IP, 12223) == f"g101 {PEER_IP}"
    assert lab.probe(lab.inet, "udp", PUBLIC_IP, 10005) in ("timeout", f"g101 {PEER_IP}")
    assert lab.probe(lab.inet, "tcp", PUBLIC_IP, 11000) == f"g102 {PEER_IP}"
    assert lab.probe(lab.ns(101), "tcp", PUBLIC_IP, 12223) == "g101 172.22.161.254"
    assert foreign(lab) == theirs


def test_sync_leaves_a_guest_alone_while_pve_holds_its_config_lock(lab):
    """Between pre-start and the guest's NICs, PVE lists it as stopped; the lock it holds
    around the start tells sync that the guest's hooks have it in hand."""
    settle(lab)
    lab.set_config(103, ipconfig0="ip=172.22.161.173/24")
    path = os.path.join(lab.dir, "lock", "qemu-server", "lock-103.conf")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # as PVE's lock_config does around a start
            assert "13000" in lab.hook(103, "pre-start").stdout
            assert run(lab, "sync") == "pvenat sync: nothing to change (4 guests forwarded)\n"
            assert "PVENAT-103" in lab.iptables_save()
            fcntl.flock(lock, fcntl.LOCK_UN)  # the start failed: no NICs, no lock
        assert run(lab, "sync") == \
            "pvenat sync: 3 guests forwarded; removed (not running on pve1) 103\n"
    finally:
        del lab.guests[103]["config"]["ipconfig0"]
        lab.write_fixture()


def test_a_guest_that_stops_while_sync_waits_for_the_lock_is_not_running(lab):
    """sync lists the guests, then waits for pvenat's lock (a hook holds it). A guest
    whose NICs vanish meanwhile has stopped: its rules must not stay, or come back after
    its post-stop removed them."""
    settle(lab)
    with open(os.path.join(lab.state, "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sync = subprocess.Popen(lab.pvenat_argv("sync"), stdout=subprocess.PIPE, text=True)
        inode = f":{os.fstat(lock.fileno()).st_ino} "
        deadline = time.monotonic() + 10
        while not any("->" in line and inode in line for line in open("/proc/locks")):
            assert time.monotonic() < deadline, "sync never waited for the lock"
            time.sleep(0.02)
        lab.sh_host("ip", "link", "set", "veth102i0", "down", "name", "gone102")
        fcntl.flock(lock, fcntl.LOCK_UN)
    try:
        assert sync.communicate(timeout=30)[0] == \
            "pvenat sync: 2 guests forwarded; removed (not running on pve1) 102\n"
        post_stop = lab.hook(102, "post-stop")
        assert post_stop.returncode == 0 and post_stop.stdout == ""  # nothing left to do
    finally:
        lab.sh_host("ip", "link", "set", "gone102", "name", "veth102i0", "up")
    assert run(lab, "sync").startswith("pvenat sync: 3 guests forwarded; added 102")


def test_sync_keeps_a_guest_whose_notes_broke(lab):
    settle(lab)
    before = lab.iptables_save()
    lab.set_config(102, tags="pvenat-11000-10000")
    try:
        out = run(lab, "sync", rc=1)
        assert "guest 102 left as it was: guest 102: tag 'pvenat-11000-10000': range " \
            "11000-10000 is reversed; write 10000-11000" in out
        assert lab.iptables_save() == before
    finally:
        lab.set_config(102, tags="pvenat-11000")


def test_sync_and_list_start_no_pvesh(lab):
    """Each pvesh loads all of PVE's API (hundreds of ms on a node): sync and list read
    the node's own files, and attach starts one for each guest it changes, with the
    digest of the config it read."""
    settle(lab)
    calls = os.path.join(lab.dir, "pvesh-calls")
    env = {"PVENAT_FAKE_PVE_CALLS": calls}
    for args in (("sync",), ("list",), ("list", "--json"), ("check", "101")):
        assert subprocess.run(lab.pvenat_argv(*args, env=env), capture_output=True).returncode \
            in (0, 1)
    assert not os.path.exists(calls)
    # 103 has no address: attach gives it the first free one, in its pvenat block
    with open(os.path.join(lab.etc_pve, "nodes/pve1/qemu-server/103.conf"), "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()
    assert subprocess.run(lab.pvenat_argv("attach", "103", env=env)).returncode == 0
    assert open(calls).read() == (
        "pvesh set /nodes/pve1/qemu/103/config -hookscript local:snippets/pvenat.py "
        "-description ```pvenat\nip: 172.22.161.1\n``` "
        f"-digest {digest} --output-format json\n")
    assert lab.fixture_config(103)["description"] == "```pvenat\nip: 172.22.161.1\n```"
    run(lab, "detach", "103")
    lab.set_config(103, description="")


def node(lab, *argv):
    """A command on the node, as root in a shell there: the fake qm, pct and pvesh."""
    return subprocess.run(["ip", "netns", "exec", lab.host, "env", "-i",
                           *[f"{k}={v}" for k, v in lab.env().items()], *argv],
                          capture_output=True, text=True, cwd="/")


def test_a_running_vm_keeps_the_address_its_cloud_init_drive_has(lab):
    """ipconfig0 changed while the VM runs goes into its config at once, but the guest
    keeps the address its cloud-init drive has until its next start, which PVE records in
    [special:cloudinit] (qemu-server vmconfig_hotplug_pending, cloudinit_record_changed):
    forwards and lease stay with that address; the start brings the new one."""
    settle(lab)
    conf = os.path.join(lab.etc_pve, "nodes/pve1/qemu-server/101.conf")
    original = dict(lab.guests[101]["config"])
    try:
        lab.set_config(101, ide2="local-lvm:vm-101-cloudinit,media=cdrom")
        assert node(lab, "qm", "set", "101", "--ipconfig0",
                    "ip=172.22.161.180/24,gw=172.22.161.254").returncode == 0
        assert "\n[special:cloudinit]\nipconfig0: ip=172.22.161.170/24,gw=172.22.161.254\n" \
            in open(conf).read()
        assert run(lab, "sync") == "pvenat sync: nothing to change (3 guests forwarded)\n"
        assert lab.probe(lab.inet, "tcp", PUBLIC_IP, 12223) == f"g101 {PEER_IP}"
        assert json.loads(run(lab, "list", "--json"))[0]["address"] == "172.22.161.170"
        with open(os.path.join(lab.state, "dhcp-hosts")) as f:
            assert "BC:24:11:00:00:01,172.22.161.170," in f.read()

        # its next start: PVE makes the drive anew (the section goes) before pre-start
        assert lab.hook(101, "post-stop").returncode == 0
        with open(lab.fixture) as f:
            data = json.load(f)
        next(g for g in data["guests"] if g["vmid"] == 101)["status"] = "stopped"
        with open(lab.fixture, "w") as f:
            json.dump(data, f)
        started = node(lab, "qm", "start", "101")
        assert started.returncode == 0, started.stdout + started.stderr
        assert "[special:cloudinit]" not in open(conf).read()
        assert "pvenat: 101 -> 172.22.161.180 via" in started.stdout
        assert "-j DNAT --to-destination 172.22.161.180:22" in lab.iptables_save("-t", "nat")
    finally:
        lab.guests[101]["config"] = original
        lab.guests[101].pop("cloudinit", None)
        lab.write_fixture()
        run(lab, "sync")
    assert lab.probe(lab.inet, "tcp", PUBLIC_IP, 12223) == f"g101 {PEER_IP}"


def test_list(lab):
    settle(lab)
    lab.iptables("-t", "nat", "-Z")
    lab.probe(lab.inet, "tcp", PUBLIC_IP, 12223)
    lab.probe(lab.inet, "tcp", PUBLIC_IP, 12223)
    lab.iptables("-t", "nat", "-A", "PVENAT-104", "-p", "tcp", "-m", "tcp", "--dport",
                 "14001", "-j", "DNAT", "--to-destination", "172.22.161.174")
    assert run(lab, "list") == """\
VMID NAME     TYPE STATUS  ADDRESS        MAC               LEASE FORWARD                                                             PROTO ALLOW LIVE  PACKETS
101  guest101 qemu running 172.22.161.170 BC:24:11:00:00:01 yes   10000-10009                                                         tcp   -     yes   0
101  guest101 qemu running 172.22.161.170 BC:24:11:00:00:01 yes   12223->22                                                           tcp   -     yes   2
101  guest101 qemu running 172.22.161.170 BC:24:11:00:00:01 yes   10000-10009                                                         udp   -     yes   0
102  guest102 lxc  running 172.22.161.171 -                 -     11000                                                               tcp   -     yes   0
102  guest102 lxc  running 172.22.161.171 -                 -     11000                                                               udp   -     yes   0
103  guest103 qemu stopped -              -                 -     ERROR: guest 103: no address to forward to: its NIC on vmbr1 has no static IPv4; add 'ip: ADDRESS' to its pvenat block or set a static address on the NIC
104  guest104 qemu running 172.22.161.174 -                 -     14000                                                               tcp   -     yes   0
104  guest104 qemu running 172.22.161.174 -                 -     -p tcp -m tcp --dport 14001 -j DNAT --to-destination 172.22.161.174 -     -     stale 0
"""
    entries = json.loads(run(lab, "list", "--json"))
    assert entries[0]["forwards"][1] == {"forward": "12223->22", "proto": "tcp", "allow": [],
                                         "live": "yes", "packets": 2}
    assert run(lab, "sync") == "pvenat sync: 3 guests forwarded; updated 104\n"
    assert "PVENAT-104 -p tcp -m tcp --dport 14001" not in lab.iptables_save()


def test_check(lab):
    settle(lab)
    out = run(lab, "check", "101")
    assert out == ("pvenat: 101 -> 172.22.161.170 via 203.0.113.10: tcp+udp 10000-10009, "
                   "tcp 12223->22\nrules: all in place\n")
    lab.set_config(103, description="```pvenat\nip: 172.22.161.173\nforwards: [13001]\n```")
    out = run(lab, "check", "103")
    assert out.splitlines()[0] == ("pvenat: 103 -> 172.22.161.173 via 203.0.113.10: "
                                   "tcp+udp 13000, tcp 13001")
    assert "-A PVENAT-103 -p tcp -m multiport --dports 13001 -j DNAT --to-destination " \
        "172.22.161.173" in out
    assert "PVENAT-103" not in lab.iptables_save()  # check applies nothing
    lab.set_config(103, tags="pvenat-11000")
    result = lab.pvenat("check", "103")
    assert result.returncode == 1
    assert "tcp public port 11000 is already forwarded to guest 102" in result.stderr
    notes = os.path.join(lab.dir, "notes.md")
    with open(notes, "w") as f:
        f.write("```pvenat\nip: 172.22.161.180\nforwards: [15000-15009/udp]\n```\n")
    assert run(lab, "check", "--notes", notes) == (
        f"pvenat: {notes} -> 172.22.161.180 via 203.0.113.10: udp 15000-15009\n"
        "rules of its chain:\n"
        "-p udp -m multiport --dports 15000:15009 -j DNAT --to-destination 172.22.161.180\n")
    # as if they were guest 104's Notes: its NIC, and the guests running beside it
    out = run(lab, "check", "--notes", notes, "104")
    assert out.startswith("pvenat: 104 -> 172.22.161.180 via 203.0.113.10: udp 15000-15009\n")
    assert "-A PVENAT-104 -p udp -m multiport --dports 15000:15009 -j DNAT " \
        "--to-destination 172.22.161.180" in out

    # standard input, and Notes that name no address: checked all the same, against the
    # host config and the guests running here
    def stdin(notes):
        return subprocess.run(lab.pvenat_argv("check", "--notes", "-"), capture_output=True,
                              text=True, input=f"```pvenat\n{notes}\n```\n")
    result = stdin("forwards: [15000-15009/udp]")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "pvenat: standard input -> (no address yet) via 203.0.113.10: udp 15000-15009\n"
        "not checked: its address: no 'ip:' in the Notes, and no guest's NIC to take it "
        "from; 'pvenat attach VMID' gives a guest one\n")
    result = stdin("forwards: [8080]")
    assert (result.returncode, result.stderr) == (1, (
        "pvenat: error: standard input, Notes line 2: public port 8080 is outside the port "
        "pool (10000-60999); pick ports there\n"))
    result = stdin("forwards: [11000, 12223]")
    assert (result.returncode, result.stderr) == (1, (
        "pvenat: error: standard input, Notes line 2: tcp public port 11000 is already "
        "forwarded to guest 102 (tcp 11000), which is running on this node; pick other ports "
        "(or run 'pvenat sync' if 102 is no longer running here)\n"))
    with open(notes, "wb") as f:
        f.write(b"```pvenat\nforwards: [15000]\n# caf\xe9\n```\n")
    assert lab.pvenat("check", "--notes", notes).stderr == (
        f"pvenat: error: {notes}: not UTF-8 text (byte 33); PVE keeps Notes as UTF-8: save "
        "the file as UTF-8\n")
    assert lab.pvenat("check", "--notes", notes + "x").stderr == \
        f"pvenat: error: {notes}x: No such file or directory\n"
    result = lab.pvenat("check")  # a bad command line
    assert result.returncode == 2 and "check what? give a VMID, or --notes FILE" in \
        result.stderr


def reset_103(lab, **config):
    """Guest 103, stopped and without the hookscript, with this config besides its NIC."""
    lab.set_config(103)
    lab.guests[103]["config"] = dict({"net0": "virtio=X,bridge=vmbr1", "name": "guest103"},
                                     **config)
    lab.write_fixture()


def test_attach_and_detach_through_the_api(lab):
    settle(lab)
    reset_103(lab, description="```pvenat\nip: 172.22.161.173\n```", tags="pvenat-13000")
    assert run(lab, "attach", "103") == "pvenat: 103: hookscript set to local:snippets/pvenat.py\n"
    assert lab.fixture_config(103)["hookscript"] == "local:snippets/pvenat.py"
    assert run(lab, "attach", "103") == "pvenat: 103: already attached\n"
    assert run(lab, "detach", "103") == "pvenat: 103: hookscript cleared\n"
    assert "hookscript" not in lab.fixture_config(103)
    lab.set_config(104, hookscript="local:snippets/backup.sh")
    result = lab.pvenat("attach", "104")
    assert result.returncode == 1 and "another hookscript (local:snippets/backup.sh)" in \
        result.stderr
    assert run(lab, "attach", "--force", "104") == (
        "pvenat: 104: hookscript set to local:snippets/pvenat.py; it is running: restart "
        "it, or run 'pvenat sync' to apply now\n")


def test_attach_warns_of_what_a_start_would_refuse(lab):
    """attach runs pre-start's own checks on the guest: it still attaches it (the
    hookscript is what makes it managed), prints each refusal a start would meet, with
    its fix, and exits 1."""
    settle(lab)  # running here: 101 (its lease), 102 on 172.22.161.171 with 11000, 104
    refused = ("guest 103, tag pvenat-11000: tcp public port 11000 is already forwarded to "
               "guest 102 (tcp 11000), which is running on this node; pick other ports (or "
               "run 'pvenat sync' if 102 is no longer running here)")
    try:
        reset_103(lab, description="```pvenat\nip: 172.22.161.173\n```", tags="pvenat-11000")
        result = lab.pvenat("attach", "103")
        assert (result.returncode, result.stdout, result.stderr) == (
            1, "pvenat: 103: hookscript set to local:snippets/pvenat.py\n",
            f"pvenat: 103: warning: a start would refuse: {refused}\n")
        assert lab.fixture_config(103)["hookscript"] == "local:snippets/pvenat.py"
        start = lab.hook(103, "pre-start")  # the start says the same
        assert (start.returncode, start.stderr) == (1, f"pvenat: error: {refused}\n")

        # every problem at once: 101's MAC, 102's address
        lab.set_config(103, net0="virtio=BC:24:11:00:00:01,bridge=vmbr1", tags="",
                       description="```pvenat\nip: 172.22.161.171\nforwards: [13000]\n```")
        result = lab.pvenat("attach", "103")
        assert (result.returncode, result.stdout) == (1, "pvenat: 103: already attached\n")
        assert result.stderr.splitlines() == [
            "pvenat: 103: warning: a start would refuse: guest 103: MAC BC:24:11:00:00:01 is "
            "also guest 101's; give one of them another MAC (PVE makes a new one when the "
            "NIC's address is left empty)",
            "pvenat: 103: warning: a start would refuse: guest 103: address 172.22.161.171 is "
            "already forwarded to guest 102, which is running on this node; give one of them "
            "another address (or run 'pvenat sync' if 102 is no longer running here)"]
        # Notes a start would refuse, on a guest without an address: it gets one all the same
        reset_103(lab, description="```pvenat\nforwards: [8080]\n```",
                  hookscript="local:snippets/pvenat.py")
        result = lab.pvenat("attach", "103")
        assert (result.returncode, result.stdout, result.stderr) == (
            1, "pvenat: 103: address 172.22.161.1 (description)\n",
            "pvenat: 103: warning: a start would refuse: guest 103, Notes line 3: public port "
            "8080 is outside the port pool (10000-60999); pick ports there\n")
        lab.set_config(103, description="```pvenat\nip: 172.22.161.1\nforwards: [18080]\n```")
        assert lab.pvenat("attach", "103").returncode == 0  # fixed: nothing to say
    finally:
        reset_103(lab, tags="pvenat-13000")


def test_status(lab):
    settle(lab)
    result = lab.pvenat("status")
    assert result.returncode == 1  # the hookscript snippet is not installed in the lab
    lines = result.stdout.splitlines()
    assert lines[0] == "ok   version: pvenat 0.1.0"
    assert lines[1] == f"ok   config: {lab.config}"
    assert lines[2] == "FIX  hookscript: /var/lib/vz/snippets/pvenat.py missing; run " \
        "'pvenat install'"
    assert "ok   bridge: vmbr1 up" in lines
    assert "ok   forwarding: net.ipv4.ip_forward=1" in lines
    assert "ok   rules: SNAT, hairpin and jumps in place" in lines
    lab.iptables("-t", "nat", "-F", "PVENAT-POSTROUTING")
    checks = {c["check"]: c for c in json.loads(lab.pvenat("status", "--json").stdout)}
    assert checks["rules"]["ok"] is False
    run(lab, "sync")
    assert checks["guests without the hookscript"]["detail"].startswith("103")

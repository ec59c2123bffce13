"""pvenat attach against the fake PVE (pvesh, the cluster filesystem), as commands run on a
node: what PVE's digest and its cluster-wide locks are for. No root, no namespaces."""

import json
import os
import subprocess
import sys
import time

from shared import FAKEPVE

import api

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NIC = "virtio=BC:24:11:00:01:{:02X},bridge=vmbr1"


def cluster(tmp_path, guests, pvesh_load=0.0):
    """A two-node cluster's /etc/pve (tmp_path/pve) and the fake API over it; guests are
    (vmid, node, config). Each pvesh takes ``pvesh_load`` seconds to answer, as the real
    one takes to load PVE's API. Returns the fixture's path."""
    root = tmp_path / "node"  # the node's file system: storage local with the snippet
    snippet = root / "var/lib/vz/snippets/pvenat.py"
    snippet.parent.mkdir(parents=True)
    snippet.write_text("#!/bin/sh\n")
    snippet.chmod(0o755)
    data = {"guests": [{"vmid": vmid, "type": "qemu", "node": node, "status": "stopped",
                        "config": config, "snapshots": {}} for vmid, node, config in guests],
            "storage": {"local": {"type": "dir", "path": "/var/lib/vz",
                                  "content": "iso,snippets"}},
            "runtime": {"root": str(root)}, "etc_pve": str(tmp_path / "pve"),
            "pvesh_load": pvesh_load}
    fixture = tmp_path / "pve.json"
    fixture.write_text(json.dumps(data))
    api.write_confs(data)
    return fixture


def pvenat(tmp_path, fixture, node, *args):
    """pvenat on ``node``, started (a Popen)."""
    config = tmp_path / f"pvenat-{node}.yaml"
    config.write_text(f"public_ip: 203.0.113.10\nlog_file: {tmp_path}/pvenat.log\n"
                      f"pve: {{node: {node}, config_dir: {tmp_path}/pve, "
                      f"lock_dir: {tmp_path}/lock, timeout: 10}}\n")
    env = {"PATH": f"{FAKEPVE}:/usr/bin:/bin", "LC_ALL": "C", "PYTHONPATH": REPO,
           "PVENAT_CONFIG": str(config), "PVENAT_STATE_DIR": str(tmp_path / f"state-{node}"),
           "PVENAT_FAKE_PVE": str(fixture)}
    return subprocess.Popen([sys.executable, "-m", "pvehook", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def config(fixture, vmid):
    with open(fixture) as f:
        return next(g["config"] for g in json.load(f)["guests"] if g["vmid"] == vmid)


def test_two_nodes_attaching_at_once_never_pick_one_address(tmp_path):
    """Guest 103 on pve1 and 203 on pve2, neither with an address: pvenat attach on each
    node at the same moment. Each reads what the cluster's configs hold and writes its
    pick through pvesh; the cluster-wide lock (/etc/pve/priv/lock, as pve-cluster's
    cfs_lock) keeps the second from reading before the first has written."""
    fixture = cluster(tmp_path, [(103, "pve1", {"net0": NIC.format(3)}),
                                 (203, "pve2", {"net0": NIC.format(0x23)})], pvesh_load=0.5)
    procs = [pvenat(tmp_path, fixture, "pve1", "attach", "103"),
             pvenat(tmp_path, fixture, "pve2", "attach", "203")]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    notes = {config(fixture, vmid)["description"] for vmid in (103, 203)}
    assert notes == {"```pvenat\nip: 172.22.161.1\n```", "```pvenat\nip: 172.22.161.2\n```"}
    assert not os.path.exists(tmp_path / "pve/priv/lock/pvenat-addresses")


def test_an_edit_made_while_attach_works_is_kept(tmp_path):
    """attach computes the Notes with the address from the config it read; a GUI edit of
    the Notes lands before its write. PVE refuses a write with the old digest (qemu-server
    update_vm), so attach reads again and writes the address into the edited Notes."""
    fixture = cluster(tmp_path, [(103, "pve1", {"net0": NIC.format(3),
                                                "description": "Web shop."})], pvesh_load=1.5)
    proc = pvenat(tmp_path, fixture, "pve1", "attach", "103")
    time.sleep(0.8)  # attach has read the config and waits for its pvesh
    os.environ["PVENAT_FAKE_PVE"], before = str(fixture), os.environ.get("PVENAT_FAKE_PVE")
    try:  # the GUI: PUT .../config without a digest
        api.handle("/nodes/pve1/qemu/103/config", "PUT",
                   {"description": "Web shop.\n\nOwner: anna"})
    finally:
        if before is None:
            del os.environ["PVENAT_FAKE_PVE"]
        else:
            os.environ["PVENAT_FAKE_PVE"] = before
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (0, "")
    assert out == "pvenat: 103: hookscript set to local:snippets/pvenat.py; address " \
        "172.22.161.1 (description)\n"
    assert config(fixture, 103)["description"] == \
        "Web shop.\n\nOwner: anna\n\n```pvenat\nip: 172.22.161.1\n```"

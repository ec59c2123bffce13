"""debian/postrm purge, run by sh on a root of its own ($DPKG_ROOT, as dpkg --root sets
it): what it removes of pvenat's, and the snippet it keeps while a guest of the cluster
may need it."""

import json
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SNIPPET = "var/lib/vz/snippets/pvenat.py"


def write(root, rel, text=""):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.fixture
def node(tmp_path):
    """A node after 'pvenat uninstall' left the snippet (guests elsewhere named it): the
    install record's backup and the snippet stay, the cluster filesystem is up."""
    root = str(tmp_path)
    write(root, SNIPPET, "#!/usr/bin/python3\n")
    write(root, "etc/pvenat/installed.json.pvenat-backup", "{}\n")
    write(root, "etc/pve/nodes/pve1/qemu-server/101.conf", "net0: virtio=X,bridge=vmbr0\n")
    os.makedirs(os.path.join(root, "etc/pve/nodes/pve2/lxc"))
    return root


def purge(root):
    result = subprocess.run(["sh", os.path.join(REPO, "debian/postrm"), "purge"],
                            env={"DPKG_ROOT": root, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return result.stdout


def test_purge_removes_etc_pvenat_also_after_a_complete_uninstall(node):
    """uninstall removed installed.json; its .pvenat-backup stayed, and rmdir failed."""
    write(node, "etc/pvenat/token", "secret\n")
    assert purge(node) == ""
    assert not os.path.exists(os.path.join(node, "etc/pvenat"))
    assert not os.path.exists(os.path.join(node, SNIPPET))  # no guest names it


def test_purge_keeps_the_snippet_while_the_cluster_filesystem_shows_nothing(node):
    """pve-cluster down: /etc/pve is an empty folder; a guest may name the snippet all the
    same."""
    shutil.rmtree(os.path.join(node, "etc/pve/nodes"))
    out = purge(node)
    assert os.path.exists(os.path.join(node, SNIPPET))
    assert out.startswith("pvenat: kept /var/lib/vz/snippets/pvenat.py: a guest of the "
                          "cluster names it, or /etc/pve shows no node")
    assert not os.path.exists(os.path.join(node, "etc/pvenat"))


@pytest.mark.parametrize("conf", [
    "nodes/pve2/lxc/201.conf",  # a guest of another node
    "nodes/pve1/qemu-server/101.conf",  # a snapshot of a guest here
])
def test_purge_keeps_the_snippet_while_a_guest_of_the_cluster_names_it(node, conf):
    path = os.path.join(node, "etc/pve", conf)
    text = open(path).read() if os.path.exists(path) else "net0: name=eth0,bridge=vmbr1\n"
    write(node, os.path.join("etc/pve", conf),
          text + "\n[s1]\nhookscript: local:snippets/pvenat.py\n")
    purge(node)
    assert os.path.exists(os.path.join(node, SNIPPET))


def test_purge_finds_the_snippet_where_install_put_it(node):
    """Storage local's content-dirs moved its snippets folder: the record says where."""
    hooks = write(node, "var/lib/vz/hooks/pvenat.py", "#!/usr/bin/python3\n")
    write(node, "etc/pvenat/installed.json", json.dumps(
        {"bridge": {}, "snippet": "/var/lib/vz/hooks/pvenat.py", "units": []},
        indent=1, sort_keys=True) + "\n")
    purge(node)
    assert not os.path.exists(hooks) and not os.path.exists(os.path.join(node, "etc/pvenat"))


def test_purge_says_what_stays_in_etc_pvenat(node):
    write(node, "etc/pvenat/notes.txt", "the admin's own\n")
    assert "pvenat: kept /etc/pvenat: it holds files pvenat did not write: notes.txt" in \
        purge(node)
    assert os.listdir(os.path.join(node, "etc/pvenat")) == ["notes.txt"]

"""The installed package's life on a node: install -> attach -> upgrade -> remove ->
start. Run by tests/package-test in its own Debian root, as root (not named test_*: a
plain test run does not collect it): it installs, upgrades and removes the package there,
and links that root's /etc/pve and /var/lib/vz to the lab's."""

import glob
import os
import subprocess

import pytest

from lab import INSTALLED, PEER_IP, PUBLIC_IP, lab_fixture, pve_root

GUESTS = {101: {"kind": "qemu", "address": "172.22.161.170", "serve": ["tcp:22"],
                "config": {"description": "```pvenat\nforwards: [12222:22]\n```",
                           "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1",
                           "ipconfig0": "ip=172.22.161.170/24"}}}
SNIPPET = "/var/lib/vz/snippets/pvenat.py"


def apt(*args):
    subprocess.run(["apt-get", "-y", "-qq", *args], check=True, capture_output=True,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def version():
    return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "pvenat"],
                          capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    if not (INSTALLED and os.environ.get("PVENAT_NEXT_DEB")):
        pytest.fail("run by tests/package-test, in a Debian root of its own: it installs, "
                    "upgrades and removes the package")
    for lab in lab_fixture(GUESTS, lan_bridge=False):
        root = pve_root(str(tmp_path_factory.mktemp("pve") / "root"))
        # the root's own /etc/pve and /var/lib/vz are the lab's (the package's scripts
        # look there), and every run keeps its state where the package's scripts look
        for path, target in (("/etc/pve", lab.etc_pve), ("/var/lib/vz", f"{root}/var/lib/vz")):
            os.makedirs(target, exist_ok=True)
            os.symlink(target, path)
        lab.state = "/run/pvenat"
        yield lab, root


def run(lab, *args):
    result = lab.pvenat(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_install_attach_upgrade_remove_start(node):
    lab, root = node
    old = version()
    run(lab, "install", "--root", root)
    assert os.path.exists(SNIPPET)
    lab.start_dhcp_server()  # what enabling pvenat-dhcp.service starts (no systemd here)
    run(lab, "attach", "101")
    lab.add_guest(101)
    assert lab.hook(101, "pre-start").returncode == 0
    assert lab.probe(lab.inet, "tcp", PUBLIC_IP, 12222) == f"g101 {PEER_IP}"
    assert os.path.exists("/run/pvenat/index.json")
    rules = lab.iptables_save()
    with open(SNIPPET, "a") as f:
        f.write("# the snippet of an older release\n")

    # upgrade: the snippet follows the package, the old caches go, the rules stay
    apt("install", glob.glob(os.environ["PVENAT_NEXT_DEB"])[0])
    assert version() == old + "+upgrade1"
    assert open(SNIPPET).read() == open("/usr/share/pvenat/pvenat.py").read()
    assert not os.path.exists("/run/pvenat/index.json")
    assert lab.iptables_save() == rules
    assert f"version: pvenat {old}" in run(lab, "status")  # the Python package's own
    assert lab.hook(101, "post-stop").returncode == 0
    assert lab.hook(101, "pre-start").returncode == 0
    assert lab.probe(lab.inet, "tcp", PUBLIC_IP, 12222) == f"g101 {PEER_IP}"

    # removed while the guest still names the hookscript: the guest still starts
    apt("remove", "pvenat")
    result = subprocess.run(["/usr/bin/python3", SNIPPET, "101", "pre-start"],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert (result.returncode, result.stdout) == (0, (
        "pvenat: not installed; guest 101 runs without its forwards (remove 'hookscript' "
        "from its options, or install pvenat)\n"))
    # purged: the snippet stays while a guest of the cluster names it
    apt("purge", "pvenat")
    assert os.path.exists(SNIPPET)

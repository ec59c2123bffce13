"""pvenat check --notes off a PVE node: no pvesh on PATH, no /etc/pve, as any user. What
the text and the host config tell is checked; the rest is named as not checked."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOT_CHECKED = ("not checked: ports and addresses of the guests running on the node, DHCP "
               "leases, its public address: not a PVE node (no {dir})\n")


@pytest.fixture
def check(tmp_path):
    """pvenat check with a host config whose PVE config_dir does not exist, and a PATH of
    /usr/bin:/bin alone (no pvesh, no iptables)."""
    def run(*args, notes="", config="public_ip: 203.0.113.10\n", pve="no-such-dir",
            path="/usr/bin:/bin"):
        conf = tmp_path / "pvenat.yaml"
        conf.write_text(config + f"log_file: {tmp_path}/pvenat.log\n"
                        f"pve: {{config_dir: {tmp_path}/{pve}, node: pve1}}\n")
        env = {"PATH": path, "LC_ALL": "C", "PYTHONPATH": REPO,
               "PVENAT_CONFIG": str(conf), "PVENAT_STATE_DIR": str(tmp_path / "state")}
        return subprocess.run([sys.executable, "-m", "pvehook", "check", *args], input=notes,
                              capture_output=True, text=True, env=env, cwd=str(tmp_path))
    run.dir = f"{tmp_path}/no-such-dir"
    return run


@pytest.mark.parametrize("forwards,error", [
    ("[8080]", "standard input, Notes line 2: public port 8080 is outside the port pool "
     "(10000-60999); pick ports there"),
    ("[10000-10010, 8006]", "standard input, Notes line 2: public port 8006 is reserved on "
     "this host (22, 85, 111, 3128, 5405-5412, 5900-5999, 8006, 60000-60050); pick another"),
])
def test_notes_without_an_address_are_checked_all_the_same(check, forwards, error):
    result = check("--notes", "-", notes=f"```pvenat\nforwards: {forwards}\n```\n")
    assert (result.returncode, result.stderr) == (1, f"pvenat: error: {error}\n")


def test_what_could_not_be_checked_is_named(check):
    result = check("--notes", "-", notes="```pvenat\nforwards: [18080, 12222:22]\n```\n")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "pvenat: standard input -> (no address yet) via 203.0.113.10: tcp 12222->22, "
        "tcp 18080\n"
        "not checked: its address: no 'ip:' in the Notes, and no guest's NIC to take it "
        "from; 'pvenat attach VMID' gives a guest one\n" + NOT_CHECKED.format(dir=check.dir))


def test_notes_with_an_address_and_a_vmid_elsewhere(check, tmp_path):
    notes = tmp_path / "notes.md"
    notes.write_text("Web.\n\n```pvenat\nip: 172.22.161.180\nforwards: [15000-15009/udp]\n```\n")
    result = check("--notes", str(notes), "104", config="wan_bridge: pvnx0\n")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "pvenat: 104 -> 172.22.161.180 via pvnx0's address: udp 15000-15009\n"
        "rules of its chain:\n"
        "-p udp -m multiport --dports 15000:15009 -j DNAT --to-destination 172.22.161.180\n"
        f"not checked: guest 104's NICs and tags: not a PVE node (no {check.dir})\n"
        + NOT_CHECKED.format(dir=check.dir))
    result = check("104")  # a guest's own config is on its node alone
    assert (result.returncode, result.stderr) == (1, (
        f"pvenat: error: not a PVE node (no {check.dir}), so guest 104's config is not here; "
        "check its Notes with --notes FILE\n"))


def test_on_a_node_whose_kernel_cannot_be_read(check, tmp_path):
    """No iptables to run (or not root): the guests running here are not checked, and
    it says so; the rest is."""
    os.makedirs(tmp_path / "pve/nodes/pve1")
    os.makedirs(tmp_path / "empty")
    notes = "```pvenat\nip: 172.22.161.180\nforwards: [15000]\n```\n"
    result = check("--notes", "-", notes=notes, pve="pve", path=str(tmp_path / "empty"))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "pvenat: standard input -> 172.22.161.180 via 203.0.113.10: tcp 15000\n"
        "rules of its chain:\n"
        "-p tcp -m multiport --dports 15000 -j DNAT --to-destination 172.22.161.180\n"
        "not checked: ports and addresses of the guests running here: iptables-legacy-save "
        "not found; install the iptables package\n")
    result = check("--notes", "-", notes=notes.replace("15000", "60000"), pve="pve",
                   path=str(tmp_path / "empty"))
    assert (result.returncode, result.stderr) == (1, (
        "pvenat: error: standard input, Notes line 3: public port 60000 is reserved on this "
        "host (22, 85, 111, 3128, 5405-5412, 5900-5999, 8006, 60000-60050); pick another\n"))

"""PVE access through proxmoxer against the fake API: pvesh (local) and HTTPS token."""

import json
import os

import pytest
from shared import FAKEPVE, TOKEN
from pvehook.config import PveSettings
from pvehook.errors import PvenatError
from pvehook.pveapi import PveApi

GUESTS = [
    {"vmid": 101, "type": "qemu", "node": "pve1", "status": "running", "name": "web",
     "config": {"description": "```pvenat\nforwards: [12222:22]\n```", "tags": "web"}},
    {"vmid": 102, "type": "lxc", "node": "pve1", "status": "running", "name": "db",
     "config": {"net0": "name=eth0,bridge=vmbr1,ip=172.22.161.171/24"}},
    {"vmid": 103, "type": "qemu", "node": "pve2", "status": "running", "name": "moved",
     "config": {"tags": "pvenat-10000"}},
]


def write(fixture, fault=None):
    """The fixture, and the node's file system beside it with storage local's snippet
    x.py (PVE refuses to set a hookscript that is not there)."""
    root = fixture.parent / "node"
    (root / "var/lib/vz/snippets").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/vz/snippets/x.py").write_text("#!/bin/sh\n")
    (root / "var/lib/vz/snippets/x.py").chmod(0o755)
    fixture.write_text(json.dumps({
        "guests": GUESTS, "fault": fault, "runtime": {"root": str(root)},
        "storage": {"local": {"type": "dir", "path": "/var/lib/vz", "content": "snippets"}}}))


BACKENDS = ["https", "local"]


@pytest.fixture(params=BACKENDS)
def api(request, tmp_path, monkeypatch):
    fixture = tmp_path / "pve.json"
    write(fixture)
    monkeypatch.setenv("PVENAT_FAKE_PVE", str(fixture))
    if request.param == "local":
        monkeypatch.setenv("PATH", f"{FAKEPVE}:{os.environ['PATH']}")
        yield PveApi(PveSettings(backend="local", node="pve1", timeout=2)), fixture
        return
    port, config_dir, _ = request.getfixturevalue("fake_api")
    write(fixture)  # fake_api starts from an empty fixture at the same path
    token = tmp_path / "token"
    token.write_text(TOKEN.split("=", 1)[1] + "\n")
    # the default verify_ssl: the cluster's CA under config_dir
    yield PveApi(PveSettings(backend="https", node="pve1", port=port, token_file=str(token),
                             config_dir=config_dir, timeout=2)), fixture


def test_pvesh_works_with_any_proxmoxer_and_ignores_perl_warnings(tmp_path, monkeypatch):
    """pvesh on the node, whatever proxmoxer is installed (1.2 has no local backend);
    Perl warnings on stderr beside valid JSON are not errors (proxmoxer's own command
    backend makes them HTTP 500)."""
    fixture = tmp_path / "pve.json"
    write(fixture, fault="warning")
    monkeypatch.setenv("PVENAT_FAKE_PVE", str(fixture))
    monkeypatch.setenv("PATH", f"{FAKEPVE}:{os.environ['PATH']}")
    client = PveApi(PveSettings(backend="local", node="pve1", timeout=2))
    assert client.guest("pve1", 101).kind == "qemu"
    client.set_config("pve1", client.guest("pve1", 102), hookscript="local:snippets/x.py")
    assert json.loads(fixture.read_text())["guests"][1]["config"]["hookscript"] == \
        "local:snippets/x.py"
    with pytest.raises(PvenatError, match="no QEMU or LXC config on node pve1"):
        client.guest("pve1", 999)


def test_pvesh_missing_says_where_pvenat_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    client = PveApi(PveSettings(backend="local", node="pve1", timeout=2))
    with pytest.raises(PvenatError, match="pvesh not found: .* run it on a Proxmox VE node"):
        client.guest("pve1", 101)


def test_a_token_may_not_set_a_hookscript_and_says_why(fake_api, tmp_path):
    """Only root@pam may (qemu-server, pve-container): pvenat sets it through pvesh."""
    port, config_dir, fixture = fake_api
    write(fixture)
    token = tmp_path / "token"
    token.write_text(TOKEN.split("=", 1)[1] + "\n")
    client = PveApi(PveSettings(backend="https", node="pve1", port=port, token_file=str(token),
                                config_dir=config_dir, timeout=2))
    for vmid, message in ((101, "only root can set 'hookscript' config"),
                          (102, "changing the hookscript is only allowed for root@pam")):
        with pytest.raises(PvenatError, match=message):
            client.set_config("pve1", client.guest("pve1", vmid),
                              hookscript="local:snippets/x.py")


def test_pves_reason_is_kept(tmp_path, monkeypatch):
    """PVE::Exception puts the summary on the first line and the reason after it
    (pve-common PVE/Exception.pm): "400 Parameter verification failed." then
    "hookscript: script '...' does not exist" (qemu-server update_vm); pvesh prints both.
    (Every change pvenat makes goes through pvesh. Over HTTPS the reason is in the
    body's errors, which proxmoxer 2.x reports and 1.2 drops.)"""
    fixture = tmp_path / "pve.json"
    write(fixture)
    monkeypatch.setenv("PVENAT_FAKE_PVE", str(fixture))
    monkeypatch.setenv("PATH", f"{FAKEPVE}:{os.environ['PATH']}")
    client = PveApi(PveSettings(backend="local", node="pve1", timeout=2))
    with pytest.raises(PvenatError) as e:
        client.set_config("pve1", client.guest("pve1", 101),
                          hookscript="local:snippets/missing.py")
    assert "400 Parameter verification failed. / hookscript: script " \
        "'local:snippets/missing.py' does not exist" in e.value.message


def test_reads_qemu_and_lxc_configs(api):
    client, _ = api
    g = client.guest("pve1", 101)
    assert (g.kind, g.config["tags"]) == ("qemu", "web")
    assert g.config["description"].startswith("```pvenat\n")
    assert client.guest("pve1", 102).kind == "lxc"
    assert client.guest("pve2", 103).config["tags"] == "pvenat-10000"  # migration source
    with pytest.raises(PvenatError, match="guest 999: no QEMU or LXC config on node pve1"):
        client.guest("pve1", 999)


def test_reads_the_current_config_not_pending_changes(api):
    """A sync forwards what runs: GET .../config merges pending changes unless current=1."""
    client, fixture = api
    data = json.loads(fixture.read_text())
    data["guests"][0]["pending"] = {"tags": "pvenat-10001", "delete": "description"}
    fixture.write_text(json.dumps(data))
    config = client.guest("pve1", 101).config
    assert config["tags"] == "web" and config["description"].startswith("```pvenat")


def test_garbage_answer_is_a_clear_error(api):
    client, fixture = api
    write(fixture, fault="garbage")
    with pytest.raises(PvenatError) as e:
        client.guest("pve1", 101)
    assert e.value.code == "pve" and "guest 101" in e.value.message


def test_timeout_is_a_clear_error(api):
    client, fixture = api
    client = PveApi(client.settings._replace(timeout=1))  # the shortest a config can say
    write(fixture, fault="timeout")
    with pytest.raises(PvenatError) as e:
        client.guest("pve1", 101)
    # the first request finds its kind; as a hook asks (through pve.Pve), a stat does
    assert "guest 101: cannot list the guests of node pve1: ApiTimeout: no answer within " \
        "1 s" in e.value.message
    with pytest.raises(PvenatError) as e:
        client.guest("pve1", 101, "qemu")
    assert "guest 101: cannot read /nodes/pve1/qemu/101/config: ApiTimeout" in e.value.message


def test_wrong_token_is_refused(fake_api, tmp_path):
    port, config_dir, fixture = fake_api
    token = tmp_path / "token"
    token.write_text("wrong")
    client = PveApi(PveSettings(backend="https", node="pve1", port=port,
                                token_file=str(token), config_dir=config_dir))
    with pytest.raises(PvenatError, match="401"):
        client.guest("pve1", 101)


def test_the_system_trust_store_does_not_know_the_clusters_ca(fake_api, tmp_path):
    """verify_ssl: true checks against the system's CAs, which never signed a PVE node's
    certificate: the default (pve, the cluster's CA) is what makes https work."""
    port, config_dir, fixture = fake_api
    token = tmp_path / "token"
    token.write_text(TOKEN.split("=", 1)[1] + "\n")
    client = PveApi(PveSettings(backend="https", node="pve1", port=port, verify_ssl="true",
                                token_file=str(token), config_dir=config_dir))
    with pytest.raises(PvenatError, match="CERTIFICATE_VERIFY_FAILED"):
        client.guest("pve1", 101)


def test_missing_token_file_says_how_to_create_it(tmp_path):
    client = PveApi(PveSettings(backend="https", token_file=str(tmp_path / "none")))
    with pytest.raises(PvenatError, match="create it with 'pvenat install --token'"):
        client.guest("pve1", 101)

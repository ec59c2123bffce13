"""Parsing a guest's Notes and tags: pure, no root."""

import re

import pytest

from pvehook.config import HostConfig
from pvehook.errors import PvenatError
from pvehook.plan import plan_guest
from pvehook.spec import Forward, nic_address, parse


def block(body, before="Notes for humans\n\n", fence="```"):
    return f"{before}{fence}pvenat\n{body}\n{fence}\nmore notes\n"


def test_full_example_from_readme():
    spec = parse(101, block("ip: 172.22.161.170\nforwards:\n  - 10000-10099\n  - 12222:22\n"
                            "  - 10000-10099/udp\n  - 18000-18009:9000-9009\n  - ports: 13389\n"
                            "    proto: both\n    allow: [198.51.100.0/24, 192.0.2.7]"), "")
    assert spec.ip == "172.22.161.170"
    assert spec.entries == 5
    assert spec.forwards == (
        Forward("tcp", (10000, 10099), (10000, 10099), (), "Notes line 6"),
        Forward("tcp", (12222, 12222), (22, 22), (), "Notes line 7"),
        Forward("tcp", (13389, 13389), (13389, 13389), ("198.51.100.0/24", "192.0.2.7/32"),
                "Notes line 10"),
        Forward("tcp", (18000, 18009), (9000, 9009), (), "Notes line 9"),
        Forward("udp", (10000, 10099), (10000, 10099), (), "Notes line 8"),
        Forward("udp", (13389, 13389), (13389, 13389), ("198.51.100.0/24", "192.0.2.7/32"),
                "Notes line 10"),
    )


def test_unmanaged_guest_is_none():
    assert parse(101, "just notes\n```bash\necho hi\n```\n", "web;prod") is None
    assert parse(101, "", "") is None


def test_tags_forward_tcp_and_udp():
    spec = parse(102, "", "prod;pvenat-11000;pvenat-12000-12010")
    assert [(f.proto, f.public, f.guest) for f in spec.forwards] == [
        ("tcp", (11000, 11000), (11000, 11000)), ("tcp", (12000, 12010), (12000, 12010)),
        ("udp", (11000, 11000), (11000, 11000)), ("udp", (12000, 12010), (12000, 12010))]
    assert spec.entries == 2


def test_tags_in_any_case():
    """PVE keeps a tag's case with tag-style case-sensitive=1."""
    upper = parse(102, "", "PVENAT-8080;Pvenat-9000-9001").forwards
    lower = parse(102, "", "pvenat-8080;pvenat-9000-9001").forwards
    assert [f[:4] for f in upper] == [f[:4] for f in lower]
    assert upper[0].origin == "tag PVENAT-8080"  # messages quote what the admin wrote
    with pytest.raises(PvenatError, match="tag 'PVENAT-x' looks like a pvenat tag"):
        parse(102, "", "PVENAT-x")


def test_sexagesimal_trap_is_a_mapping_not_a_number():
    # YAML 1.1 reads 2222:22 as 133342; pvenat reads every scalar as text.
    spec = parse(101, block("forwards: [12222:22]"), "")
    assert spec.forwards[0].public == (12222, 12222) and spec.forwards[0].guest == (22, 22)


def test_tilde_fence_and_other_blocks_left_alone():
    notes = "```\n```pvenat\nnot this one\n```\n" + block("forwards: [10000]", fence="~~~~")
    assert parse(101, notes, "").forwards[0].public == (10000, 10000)


@pytest.mark.parametrize("notes,tags,message", [
    (block("forwards:\n  - 10099-10000"), "",
     "guest 101, Notes line 5: range 10099-10000 is reversed"),
    (block("forwards:\n  - 18000-18009:9000-9008"), "",
     "maps 10 public ports to 9 guest ports"),
    (block("forwards:\n  - 0"), "", "port 0 is out of range"),
    (block("forwards:\n  - 70000"), "", "port 70000 is out of range"),
    (block("forwards: [10000"), "", "line 5: invalid YAML: while parsing a flow sequence that "
     "starts on line 4: did not find expected ',' or ']'"),
    (block("forwards:\n  - ports: 10000\n    allow: [10.0.0.1/8]"), "",
     "allow: '10.0.0.1/8' is not an IPv4 or IPv6 address or network (did you mean 10.0.0.0/8?)"),
    (block("forwards:\n  - 10000/sctp"), "", "'10000/sctp' is not a forward"),
    (block("forwards: [1]\nforwards: [2]"), "", "key 'forwards' appears twice"),
    (block("forwarding: [10000]"), "", "unknown key 'forwarding'"),
    (block("ip: 300.1.1.1\nforwards: [10000]"), "", "ip: '300.1.1.1' is not an IPv4"),
    ("```pvenat\nforwards: [10000]\n", "",
     "guest 101, Notes line 1: the pvenat block is not closed"),
    (block("forwards: [10000]") + block("forwards: [10001]"), "", "a second pvenat block"),
    (block(""), "", "the pvenat block is empty"),
    (block("forwards: []"), "", "lists no forwards"),
    ("", "pvenat-80x", "tag 'pvenat-80x' looks like a pvenat tag"),
    ("", "pvenat-12010-12000", "tag 'pvenat-12010-12000': range 12010-12000 is reversed; "
     "write 12000-12010"),
])
def test_bad_specs_say_where_and_what(notes, tags, message):
    with pytest.raises(PvenatError) as e:
        parse(101, notes, tags)
    assert message in e.value.message
    assert e.value.code == "spec"


def test_nic_address_lxc_and_qemu_cloudinit():
    lxc = {"net0": "name=eth0,bridge=vmbr0,ip=203.0.113.5/24",
           "net1": "name=eth1,hwaddr=BC:24:11:00:00:02,ip=172.22.161.171/24,bridge=vmbr1,type=veth"}
    assert nic_address("lxc", lxc, "vmbr1") == "172.22.161.171"
    qemu = {"net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1,firewall=1",
            "ipconfig0": "ip=172.22.161.170/24,gw=172.22.161.254"}
    assert nic_address("qemu", qemu, "vmbr1") == "172.22.161.170"
    assert nic_address("qemu", dict(qemu, ipconfig0="ip=dhcp"), "vmbr1") is None
    assert nic_address("qemu", qemu, "vmbr2") is None


def test_nics_as_pve_plugs_them():
    """A tag on a bridge moves the NIC off that bridge's own network (onto vmbrXv<tag>,
    when the bridge is not VLAN-aware)."""
    from pvehook.spec import nics
    qemu = {"net0": "virtio=bc:24:11:00:00:01,bridge=vmbr1,firewall=1",
            "ipconfig0": "ip=172.22.161.170/24", "net1": "e1000=BC:24:11:00:00:02,bridge=vmbr1,"
            "tag=5", "ipconfig1": "ip=dhcp", "net10": "virtio=BC:24:11:00:00:0A,bridge=vmbr0"}
    assert [(n.index, n.bridge, n.tagged_on, n.mac, n.ip) for n in nics("qemu", qemu)] == [
        (0, "vmbr1", "", "BC:24:11:00:00:01", "172.22.161.170"),
        (1, "vmbr1v5", "vmbr1", "BC:24:11:00:00:02", ""),
        (10, "vmbr0", "", "BC:24:11:00:00:0A", "")]
    lxc = {"net0": "name=eth0,bridge=vmbr1,hwaddr=BC:24:11:00:00:03,ip=172.22.161.171/24,"
           "tag=7,type=veth"}
    assert nic_address("lxc", lxc, "vmbr1") is None
    assert nic_address("lxc", lxc, "vmbr1v7") == "172.22.161.171"


@pytest.mark.parametrize("notes,tags", [
    (block(""), ""),  # an empty block
    (block("{}"), ""),  # keys, but no forwards
    (block("forwards: []"), ""),  # no entries
    (block("forwards: [[10000]]"), ""),  # an entry that is a list
    ("", "pvenat-x"),  # a tag that is not pvenat's
], ids=["empty block", "no forwards key", "no entries", "a list as an entry", "bad tag"])
def test_the_examples_messages_suggest_work_under_the_default_host_config(notes, tags):
    """Following a message's advice must not lead to the next refusal: every forward and
    tag it offers as an example plans under the defaults (port_pool 10000-60999)."""
    with pytest.raises(PvenatError) as e:
        parse(101, notes, tags)
    entries = re.findall(r"'- ([^']+)'", e.value.message)
    found = re.findall(r"\bpvenat-[0-9]+(?:-[0-9]+)?\b", e.value.message)
    assert entries or found, e.value.message
    nic = {"net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1", "ipconfig0": "ip=172.22.161.170/24"}
    for entry in entries:
        plan_guest(parse(101, block(f"forwards:\n  - {entry}"), ""), "qemu", nic, HostConfig())
    for tag in found:
        plan_guest(parse(101, "", tag), "qemu", nic, HostConfig())

"""Planning: what the host allows, and what other guests hold."""

import pytest

from pvehook.config import HostConfig
from pvehook.errors import PvenatError
from pvehook.plan import Claim, Held, plan_guest, summary
from pvehook.spec import parse

HOST = HostConfig()
QEMU = {"net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1",
        "ipconfig0": "ip=172.22.161.170/24,gw=172.22.161.254"}


def plan(body, vmid=101, config=QEMU, host=HOST):
    return plan_guest(parse(vmid, f"```pvenat\n{body}\n```", ""), "qemu", config, host)


def test_address_from_cloudinit_and_summary():
    p = plan("forwards: [12222:22, 10000-10099/both]")
    assert p.address == "172.22.161.170"
    assert summary(p, "203.0.113.10") == (
        "pvenat: 101 -> 172.22.161.170 via 203.0.113.10: tcp+udp 10000-10099, tcp 12222->22")


@pytest.mark.parametrize("body,config,message", [
    ("forwards: [10000]", {}, "no address to forward to: its NIC on vmbr1 has no static IPv4; "
     "add 'ip: ADDRESS'"),
    ("ip: 10.0.0.5\nforwards: [10000]", QEMU, "address 10.0.0.5 is not in the guest subnet"),
    ("ip: 172.22.161.254\nforwards: [10000]", QEMU, "network, broadcast or host address"),
    ("ip: 172.22.161.255\nforwards: [10000]", QEMU, "network, broadcast or host address"),
    ("forwards: [2222:22]", QEMU, "Notes line 2: public port 2222 is outside the port pool"),
    ("forwards: [8006]", QEMU, "public port 8006 is reserved"),
    ("forwards: [59990-60010]", QEMU, "public port 60000 is reserved"),
    ("forwards: [1000-61000]", QEMU, "public port 3128 is reserved"),
    ("forwards: [10000-10010, 10005/both]", QEMU, "tcp port 10005 is forwarded twice"),
])
def test_refusals(body, config, message):
    with pytest.raises(PvenatError) as e:
        plan(body, config=config)
    assert message in e.value.message


def test_cap_on_forwards():
    body = "forwards: [" + ", ".join(str(10000 + i) for i in range(65)) + "]"
    with pytest.raises(PvenatError, match="65 forwards, more than the 64 allowed"):
        plan(body)
    assert len(plan(body, host=HostConfig(max_forwards=65)).forwards) == 65


def test_conflicts_name_the_other_guest():
    p = plan("forwards: [10050-10060/udp]")
    held = [Claim("tcp", 10000, 10099, 102), Claim("udp", 10055, 10055, 103)]
    with pytest.raises(PvenatError) as e:
        Held(held).check(p)
    assert e.value.code == "conflict"
    assert "udp public port 10055 is already forwarded to guest 103" in e.value.message
    with pytest.raises(PvenatError, match="address 172.22.161.170 is already forwarded to "
                       "guest 104"):
        Held([], {"172.22.161.170": 104}).check(p)
    Held([Claim("udp", 10050, 10060, 101)], {"172.22.161.170": 101}).check(p)  # its own
    near = [Claim("udp", 10000, 10049, 105), Claim("udp", 10061, 10070, 106)]
    Held(near).check(p)  # neighbours on both sides, no overlap
    with pytest.raises(PvenatError, match="udp public port 10060 is already forwarded to "
                       "guest 106"):
        Held([Claim("udp", 10060, 10070, 106)]).check(p)


def test_a_tagged_nic_on_the_lan_bridge_is_named():
    config = {"net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1,tag=5",
              "ipconfig0": "ip=172.22.161.170/24"}
    with pytest.raises(PvenatError, match="guest 101: net0 has tag=5 on vmbr1, which puts it "
                       "in VLAN 5, not on vmbr1's own network where the gateway "
                       "172.22.161.254 is; remove the tag, or make vmbr1v5 the lan_bridge"):
        plan("forwards: [10000]", config=config)
    p = plan("forwards: [10000]", config=config, host=HOST._replace(lan_bridge="vmbr1v5"))
    assert p.address == "172.22.161.170"

"""IPv6 for the guests (ipv6 on): DHCPv6 and router advertisements from pvenat's dnsmasq,
each guest's IPv6 address in its DHCP hosts-file line, where attach writes it in the
guest's config, and what pvenat list shows of it."""

import ipaddress
import re

import pytest
from memkernel import MemKernel
from test_inprocess import ConfApi, write_conf

from pvehook import attach, dhcp, leases, listing
from pvehook.config import HostConfig, Ipv6Settings
from pvehook.context import HOOKSCRIPT, Context, Places
from pvehook.errors import PvenatError
from pvehook.ipv6 import Net
from pvehook.plan import plan_for
from pvehook.pve import Guest, Pve
from pvehook.pveconf import ConfigFiles
from pvehook.spec import parse, with_ip6

NET6 = Net("2001:db8:1:2::/64", "routed", "2001:db8:1:2::1")
HOST = HostConfig(public_ip="203.0.113.10", ipv6=Ipv6Settings(*NET6))
QEMU = Guest(101, "qemu", {"name": "Web-1", "net0": "virtio=bc:24:11:00:00:01,bridge=vmbr1",
                           "description": "```pvenat\nip: 172.22.161.170\n"
                                          "forwards: [12222:22]\n```"})
LXC = Guest(102, "lxc", {"hostname": "db", "net0": "name=eth0,bridge=vmbr1,hwaddr=BC:24:11:"
                         "00:00:03,ip=172.22.161.171/24,ip6=2001:db8:1:2::cafe/64,type=veth"})


def test_dnsmasq_gives_dhcpv6_router_advertisements_and_dns_on_the_lan_bridge():
    places = Places(state_dir="/run/pvenat")
    off = dhcp.argv(HOST._replace(ipv6=None), places)
    assert dhcp.argv(HOST, places, NET6) == off + [
        "--dhcp-range=::,constructor:vmbr1,static,64,1h", "--enable-ra",
        "--dhcp-option=option6:dns-server,[2001:db8:1:2::1]"]
    assert not [a for a in off if "::" in a or a == "--enable-ra"]  # IPv4 as it was
    # the settings given (no 'auto'): the Net comes from them, no kernel asked
    assert dhcp.argv(HOST, places) == dhcp.argv(HOST, places, NET6)
    # the upstream DNS servers stay last, as without IPv6
    assert dhcp.argv(HOST._replace(dns_servers=("2001:4860:4860::8888",)), places)[-2:] == [
        "--no-resolv", "--server=2001:4860:4860::8888"]


def test_each_lease_carries_the_guests_ipv6_address():
    assert leases.leases_for(QEMU, plan_for(QEMU, HOST, net6=NET6), HOST, net6=NET6) == [
        leases.Lease(101, "BC:24:11:00:00:01", "172.22.161.170", "web-1", "2001:db8:1:2::101")]
    # no plan (no pvenat block): its own static ip6 kept, as ipv6.address says
    assert leases.leases_for(LXC, None, HOST, net6=NET6) == [
        leases.Lease(102, "BC:24:11:00:00:03", "172.22.161.171", "db", "2001:db8:1:2::cafe")]
    # a plan made without net6 (a caller that has not passed it yet): found all the same
    assert leases.leases_for(QEMU, plan_for(QEMU, HOST), HOST, net6=NET6)[0].ip6 == \
        "2001:db8:1:2::101"
    # ipv6 off (no net6, the callers' default): the leases as before
    assert leases.leases_for(QEMU, plan_for(QEMU, HOST), HOST) == [
        leases.Lease(101, "BC:24:11:00:00:01", "172.22.161.170", "web-1")]
    # an IPv6 address outside the prefix is refused at start; the IPv4 lease stays
    outside = LXC._replace(config={**LXC.config, "net0": LXC.config["net0"].replace(
        "2001:db8:1:2::cafe", "2001:db8:9::5")})
    assert leases.leases_for(outside, None, HOST, net6=NET6)[0].ip6 == ""


def test_hosts_file_lines_with_ipv6_round_trip():
    held = leases.leases_for(QEMU, plan_for(QEMU, HOST, net6=NET6), HOST, net6=NET6) + \
        leases.leases_for(LXC, None, HOST, net6=NET6) + \
        [leases.Lease(103, "BC:24:11:00:00:05", "172.22.161.5", "", "2001:db8:1:2::103")]
    text = leases.render(held)
    assert text == ("# guest 101\nBC:24:11:00:00:01,172.22.161.170,[2001:db8:1:2::101],web-1\n"
                    "# guest 102\nBC:24:11:00:00:03,172.22.161.171,[2001:db8:1:2::cafe],db\n"
                    "# guest 103\nBC:24:11:00:00:05,172.22.161.5,[2001:db8:1:2::103]\n")
    assert leases.parse(text) == held
    # IPv4 lines as they were: a file written before ipv6 was on reads the same
    assert leases.parse("# guest 101\nBC:24:11:00:00:01,172.22.161.170,web\n") == [
        leases.Lease(101, "BC:24:11:00:00:01", "172.22.161.170", "web")]


def test_two_guests_never_share_an_ipv6_address():
    held = [leases.Lease(101, "BC:24:11:00:00:01", "172.22.161.170", "", "2001:db8:1:2::101")]
    mine = [leases.Lease(104, "BC:24:11:00:00:04", "172.22.161.4", "", "2001:db8:1:2::101")]
    with pytest.raises(PvenatError, match="guest 104: IPv6 address 2001:db8:1:2::101 is "
                       "already guest 101's"):
        leases.Holders(held).check(mine)
    leases.Holders(held).check([mine[0]._replace(ip6="2001:db8:1:2::104")])
    leases.Holders(held).check([mine[0]._replace(ip6="")])


@pytest.mark.parametrize("notes,want", [
    ("", "```pvenat\nip6: 2001:db8:1:2::5\n```"),
    ("Web.\n", "Web.\n\n```pvenat\nip6: 2001:db8:1:2::5\n```"),
    ("```pvenat\nip: 172.22.161.5\nforwards: [443]\n```",
     "```pvenat\nip: 172.22.161.5\nip6: 2001:db8:1:2::5\nforwards: [443]\n```"),
    ("x\n```pvenat\nforwards: [443]\n```\ny", "x\n```pvenat\nip6: 2001:db8:1:2::5\n"
     "forwards: [443]\n```\ny"),
    ("```pvenat\nip6: 2001:db8:1:2::9\nforwards: [443]\n```",
     "```pvenat\nip6: 2001:db8:1:2::5\nforwards: [443]\n```"),
])
def test_an_ipv6_address_into_the_pvenat_block(notes, want):
    assert with_ip6(notes, "2001:db8:1:2::5") == want
    assert parse(101, want, "").ip6 == "2001:db8:1:2::5"


def pve_accepts(kind, key, value):
    """What PVE's schema says of a written option's IPv6 fields: ip6 is pve-ipv6-config
    (CIDR, auto, dhcp, manual), gw6 an IPv6 address, which for cloud-init requires ip6 and
    does not go with dhcp or auto (pve-container src/PVE/LXC/Config.pm $netconf_desc;
    qemu-server src/PVE/QemuServer/Network.pm $ipconfig_fmt, parse_ipconfig)."""
    fields = dict(p.split("=", 1) for p in value.split(","))
    ip6, gw6 = fields.get("ip6"), fields.get("gw6")
    if ip6 not in (None, "auto", "dhcp", "manual"):
        ipaddress.IPv6Interface(ip6)
        assert "/" in ip6
    if gw6 is not None:
        ipaddress.IPv6Address(gw6)
        assert kind == "lxc" or ip6 not in (None, "auto", "dhcp")
    return True


CLOUDINIT = Guest(105, "qemu", {"net0": "virtio=BC:24:11:00:00:05,bridge=vmbr1",
                                "ide2": "local-lvm:vm-105-cloudinit,media=cdrom",
                                "ipconfig0": "ip=172.22.161.9/24,gw=172.22.161.254"})
ISO = Guest(106, "qemu", {"net0": "virtio=BC:24:11:00:00:06,bridge=vmbr1",
                          "description": "```pvenat\nip: 172.22.161.6\n```"})


def test_where_attach_writes_an_ipv6_address():
    lxc = LXC._replace(config={**LXC.config, "net0": "name=eth0,bridge=vmbr1,hwaddr=BC:24:11:"
                               "00:00:03,ip=172.22.161.171/24,gw=172.22.161.254,type=veth"})
    written = [
        attach.address_option6(lxc, "2001:db8:1:2::102", HOST, NET6),
        attach.address_option6(CLOUDINIT, "2001:db8:1:2::105", HOST, NET6),
        attach.address_option6(ISO, "2001:db8:1:2::106", HOST, NET6)]
    assert written == [
        ("net0", "name=eth0,bridge=vmbr1,hwaddr=BC:24:11:00:00:03,ip=172.22.161.171/24,"
                 "gw=172.22.161.254,type=veth,ip6=2001:db8:1:2::102/64,gw6=2001:db8:1:2::1"),
        ("ipconfig0", "ip=172.22.161.9/24,gw=172.22.161.254,ip6=2001:db8:1:2::105/64,"
                      "gw6=2001:db8:1:2::1"),
        ("description", "```pvenat\nip: 172.22.161.6\nip6: 2001:db8:1:2::106\n```")]
    assert all(pve_accepts(g.kind, *w) for g, w in zip((lxc, CLOUDINIT), written))
    # cloud-init's other fields stay, in the GUI's order
    other = CLOUDINIT._replace(config={**CLOUDINIT.config, "ipconfig0": "ip=dhcp,gw6=x"})
    assert attach.address_option6(other, "2001:db8:1:2::105", HOST, NET6)[1] == \
        "ip=dhcp,ip6=2001:db8:1:2::105/64,gw6=2001:db8:1:2::1"


@pytest.mark.parametrize("guest,needs", [
    (LXC, False),  # a static ip6 of its own: kept
    (LXC._replace(config={"net0": "name=eth0,bridge=vmbr1,ip6=dhcp"}), False),  # DHCPv6
    (LXC._replace(config={"net0": "name=eth0,bridge=vmbr1,ip6=auto"}), False),  # SLAAC
    (LXC._replace(config={"net0": "name=eth0,bridge=vmbr1,ip6=manual"}), False),
    (LXC._replace(config={"net0": "name=eth0,bridge=vmbr1,ip=dhcp"}), True),
    (CLOUDINIT, True),
    (CLOUDINIT._replace(config={**CLOUDINIT.config, "ipconfig0": "ip6=dhcp"}), False),
    (ISO, True),
    (ISO._replace(config={**ISO.config, "description": "```pvenat\nip6: 2001:db8:1:2::6\n"
                          "```"}), False),  # its block names one
    (ISO._replace(config={"net0": "virtio=BC:24:11:00:00:06,bridge=vmbr0"}), False),  # no NIC
])
def test_which_guests_attach_gives_an_ipv6_address(guest, needs):
    assert attach.needs_address6(guest, HOST) is needs


@pytest.fixture
def ctx(tmp_path):
    """A node with guests 101 (VM, cloud-init), 102 (CT) and 106 (VM, no cloud-init), none
    attached yet, on the in-memory kernel; ipv6 on with its settings given."""
    places = Places(str(tmp_path / "state"), str(tmp_path / "sys"), str(tmp_path / "proc"))
    for folder in ("qemu-server", "lxc"):
        (tmp_path / "pve/nodes/pve1" / folder).mkdir(parents=True)
    (tmp_path / "pve/priv").mkdir()
    (tmp_path / "sys/vmbr1/brif").mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/locks").write_text("")
    host = HOST._replace(pve=HOST.pve._replace(node="pve1", config_source="files",
                                               config_dir=str(tmp_path / "pve"),
                                               lock_dir=str(tmp_path / "lock")))
    guests = {101: ("qemu", {**CLOUDINIT.config, "name": "web", "description":
                             "```pvenat\nforwards:\n  - 12222:22\n  - ports: 13389\n"
                             "    allow: [192.0.2.7]\n  - ports: 18443:443\n    proto: both\n"
                             "    allow: [192.0.2.0/24, 2001:db8:7::/48, 2001:db8:8::9]\n```"}),
              102: ("lxc", {"hostname": "db", "tags": "pvenat-11000", "net0": "name=eth0,"
                            "bridge=vmbr1,hwaddr=BC:24:11:00:00:03,ip=172.22.161.171/24,"
                            "gw=172.22.161.254,type=veth"}),
              106: ("qemu", ISO.config)}
    for vmid, (kind, config) in guests.items():
        write_conf(str(tmp_path / "pve"), vmid, kind, config)
    pve = Pve(host.pve, ConfigFiles(host.pve.config_dir), ConfApi(host.pve.config_dir),
              sysfs=places.sysfs, proc=places.proc, environ={})
    return Context(host, pve, MemKernel(), places)


def test_attach_writes_each_guests_ipv6_address_where_pve_keeps_it(ctx):
    lines, problems = attach.attach(ctx, [101, 102, 106], False)
    assert lines == [
        f"pvenat: 101: hookscript set to {HOOKSCRIPT}; IPv6 address 2001:db8:1:2::101 "
        "(ipconfig0)",
        f"pvenat: 102: hookscript set to {HOOKSCRIPT}; IPv6 address 2001:db8:1:2::102 (net0)",
        f"pvenat: 106: hookscript set to {HOOKSCRIPT}; IPv6 address 2001:db8:1:2::106 "
        "(description)"]
    assert problems == []
    configs = {vmid: ctx.pve.guest(vmid).config for vmid in (101, 102, 106)}
    assert configs[101]["ipconfig0"] == ("ip=172.22.161.9/24,gw=172.22.161.254,"
                                         "ip6=2001:db8:1:2::101/64,gw6=2001:db8:1:2::1")
    assert configs[102]["net0"].endswith(",ip6=2001:db8:1:2::102/64,gw6=2001:db8:1:2::1")
    assert configs[106]["description"] == ("```pvenat\nip: 172.22.161.6\n"
                                           "ip6: 2001:db8:1:2::106\n```")
    # a second attach changes nothing: each has its address now
    assert attach.attach(ctx, [101, 102, 106], False)[0] == [
        f"pvenat: {vmid}: already attached" for vmid in (101, 102, 106)]


def test_attach_writes_an_ipv4_and_an_ipv6_address_in_one_change(ctx):
    write_conf(ctx.host.pve.config_dir, 107, "lxc", {
        "hostname": "new", "net0": "name=eth0,bridge=vmbr1,hwaddr=BC:24:11:00:00:07,type=veth"})
    write_conf(ctx.host.pve.config_dir, 108, "qemu", {
        "net0": "virtio=BC:24:11:00:00:08,bridge=vmbr1"})
    lines, _ = attach.attach(ctx, [107, 108], False)
    assert lines == [
        f"pvenat: 107: hookscript set to {HOOKSCRIPT}; address 172.22.161.1 (net0); "
        "IPv6 address 2001:db8:1:2::107 (net0)",
        f"pvenat: 108: hookscript set to {HOOKSCRIPT}; address 172.22.161.2 (description); "
        "IPv6 address 2001:db8:1:2::108 (description)"]
    assert ctx.pve.guest(107).config["net0"] == (
        "name=eth0,bridge=vmbr1,hwaddr=BC:24:11:00:00:07,type=veth,ip=172.22.161.1/24,"
        "gw=172.22.161.254,ip6=2001:db8:1:2::107/64,gw6=2001:db8:1:2::1")
    assert ctx.pve.guest(108).config["description"] == \
        "```pvenat\nip: 172.22.161.2\nip6: 2001:db8:1:2::108\n```"


def test_attach_refuses_an_ipv6_address_another_guest_has_as_its_own(ctx):
    write_conf(ctx.host.pve.config_dir, 109, "lxc", {
        "net0": "name=eth0,bridge=vmbr1,ip=172.22.161.19/24,ip6=2001:db8:1:2::102/64"})
    with pytest.raises(PvenatError, match=re.escape(
            "guest 102: its IPv6 address 2001:db8:1:2::102 is guest 109's own")):
        attach.attach(ctx, [102], False)


def test_list_shows_each_guests_ipv6_address_and_what_is_open_on_it(ctx):
    attach.attach(ctx, [101, 102, 106], False)
    entries = listing.collect(ctx)
    assert [(e["vmid"], e["address"], e["address6"]) for e in entries] == [
        (101, "172.22.161.9", "2001:db8:1:2::101"), (102, "172.22.161.171", "2001:db8:1:2::102"),
        (106, "172.22.161.6", "2001:db8:1:2::106")]
    assert [(f["forward"], f["proto"], f["open6"]) for f in entries[0]["forwards"]] == [
        ("12222->22", "tcp", "22"),  # no NAT on IPv6: the guest's own port 22
        ("13389", "tcp", "closed"),  # its allow-list names IPv4 sources only
        ("18443->443", "tcp", "443 from 2001:db8:7::/48,2001:db8:8::9"),
        ("18443->443", "udp", "443 from 2001:db8:7::/48,2001:db8:8::9")]
    table = listing.table(entries).splitlines()
    assert table[0].split() == ["VMID", "NAME", "TYPE", "STATUS", "ADDRESS", "ADDRESS6", "MAC",
                                "LEASE", "FORWARD", "PROTO", "ALLOW", "LIVE", "PACKETS", "IPV6"]
    assert table[1].split() == ["101", "web", "qemu", "stopped", "172.22.161.9",
                                "2001:db8:1:2::101", "BC:24:11:00:00:05", "no", "12222->22",
                                "tcp", "-", "-", "0", "22"]
    assert table[-1].split() == ["106", "qemu", "stopped", "172.22.161.6",
                                 "2001:db8:1:2::106", "BC:24:11:00:00:06", "no"] + ["-"] * 6


def test_list_without_ipv6_is_as_before(ctx):
    ctx.host = ctx.host._replace(ipv6=None)
    entries = listing.collect(ctx)
    assert all("address6" not in e and all("open6" not in f for f in e["forwards"])
               for e in entries)
    assert listing.table(entries).splitlines()[0].split() == list(listing.COLUMNS)

"""DHCP as data: leases from guest configs, dnsmasq's hosts file and command line, and
where attach writes an address."""

import pytest

from pvehook import attach, dhcp, leases
from pvehook.config import HostConfig
from pvehook.context import Places
from pvehook.errors import PvenatError
from pvehook.plan import plan_for
from pvehook.pve import Guest
from pvehook.spec import parse, with_ip

HOST = HostConfig()
QEMU = Guest(101, "qemu", {"name": "Web-1", "net0": "virtio=bc:24:11:00:00:01,bridge=vmbr1",
                           "net1": "virtio=BC:24:11:00:00:02,bridge=vmbr0",
                           "description": "```pvenat\nip: 172.22.161.170\n```"})
LXC = Guest(102, "lxc", {"hostname": "db", "net0": "name=eth0,bridge=vmbr1,"
                         "hwaddr=BC:24:11:00:00:03,ip=172.22.161.171/24,type=veth"})


def test_leases_of_the_nics_on_the_lan_bridge_at_the_guests_address():
    assert leases.leases_for(QEMU, plan_for(QEMU, HOST), HOST) == [
        leases.Lease(101, "BC:24:11:00:00:01", "172.22.161.170", "web-1")]
    assert leases.leases_for(LXC, None, HOST) == [
        leases.Lease(102, "BC:24:11:00:00:03", "172.22.161.171", "db")]
    assert leases.leases_for(LXC, None, HOST._replace(dhcp=False)) == []
    no_address = Guest(103, "qemu", {"net0": "virtio=BC:24:11:00:00:04,bridge=vmbr1"})
    assert leases.leases_for(no_address, None, HOST) == []


def test_hosts_file_round_trip():
    held = leases.leases_for(QEMU, plan_for(QEMU, HOST), HOST) + \
        leases.leases_for(LXC, None, HOST)
    text = leases.render(held)
    assert text == ("# guest 101\nBC:24:11:00:00:01,172.22.161.170,web-1\n"
                    "# guest 102\nBC:24:11:00:00:03,172.22.161.171,db\n")
    assert leases.parse(text + "garbage\n") == held


def test_two_guests_never_share_an_address_or_a_mac():
    mine = [leases.Lease(104, "BC:24:11:00:00:09", "172.22.161.170", "")]
    held = [leases.Lease(101, "BC:24:11:00:00:01", "172.22.161.170", "web")]
    with pytest.raises(PvenatError, match="guest 104: address 172.22.161.170 is already "
                       "guest 101's"):
        leases.Holders(held).check(mine)
    with pytest.raises(PvenatError, match="guest 104: MAC BC:24:11:00:00:01 is also guest "
                       "101's"):
        leases.Holders(held).check([mine[0]._replace(mac="BC:24:11:00:00:01", ip="172.22.161.9")])
    leases.Holders([held[0]._replace(vmid=104)]).check(mine)  # its own old lease is no conflict


def test_dnsmasq_binds_the_lan_bridge_alone():
    argv = dhcp.argv(HOST._replace(dns_servers=("203.0.113.1",),
                                   dhcp_range=("172.22.161.100", "172.22.161.199")),
                     Places(state_dir="/run/pvenat"))
    assert "--interface=vmbr1" in argv and "--bind-dynamic" in argv
    assert "--dhcp-range=172.22.161.0,static,255.255.255.0,12h" in argv
    assert "--dhcp-range=172.22.161.100,172.22.161.199,255.255.255.0,12h" in argv
    assert "--dhcp-option=option:router,172.22.161.254" in argv
    assert argv[-2:] == ["--no-resolv", "--server=203.0.113.1"]
    assert not [a for a in argv if "vmbr0" in a or "203.0.113.10" in a]


@pytest.mark.parametrize("notes,ip,want", [
    ("", "172.22.161.5", "```pvenat\nip: 172.22.161.5\n```"),
    ("Web server.\n", "172.22.161.5", "Web server.\n\n```pvenat\nip: 172.22.161.5\n```"),
    ("x\n```pvenat\nforwards: [443]\n```\ny", "172.22.161.5",
     "x\n```pvenat\nip: 172.22.161.5\nforwards: [443]\n```\ny"),
    ("```pvenat\nip: 172.22.161.9  # old\nforwards: [443]\n```", "172.22.161.5",
     "```pvenat\nip: 172.22.161.5\nforwards: [443]\n```"),
])
def test_an_address_into_the_pvenat_block(notes, ip, want):
    assert with_ip(notes, ip) == want
    assert parse(101, want, "").ip == ip


def test_where_attach_writes_an_address():
    assert attach.address_option(LXC, "172.22.161.9", HOST) == (
        "net0", "name=eth0,bridge=vmbr1,hwaddr=BC:24:11:00:00:03,type=veth,"
        "ip=172.22.161.9/24,gw=172.22.161.254")
    cloudinit = Guest(105, "qemu", {"net0": "virtio=BC:24:11:00:00:05,bridge=vmbr1",
                                    "ide2": "local-lvm:vm-105-cloudinit,media=cdrom"})
    assert attach.address_option(cloudinit, "172.22.161.9", HOST) == (
        "ipconfig0", "ip=172.22.161.9/24,gw=172.22.161.254")
    iso = Guest(106, "qemu", {"net0": "virtio=BC:24:11:00:00:06,bridge=vmbr1"})
    assert attach.address_option(iso, "172.22.161.9", HOST) == (
        "description", "```pvenat\nip: 172.22.161.9\n```")


def test_the_first_free_address_skips_the_host_the_range_and_the_taken():
    host = HOST._replace(dhcp_range=("172.22.161.3", "172.22.161.100"))
    assert attach.first_free(host, {"172.22.161.1": 101}) == "172.22.161.2"
    assert attach.first_free(host, {"172.22.161.1": 101, "172.22.161.2": 102}) == \
        "172.22.161.101"
    full = {f"172.22.161.{i}": i for i in range(1, 254)}
    with pytest.raises(PvenatError, match="no free address left in 172.22.161.0/24"):
        attach.first_free(HOST, full)


POOL = HOST._replace(dhcp_range=("172.22.161.200", "172.22.161.210"))
L101 = leases.Lease(101, "BC:24:11:00:00:01", "172.22.161.170", "web")


def test_reserved_addresses_round_trip_beside_the_leases():
    reserved = [leases.Reserved(205, "172.22.161.205"), leases.Reserved(107, "172.22.161.9")]
    text = leases.render([L101], reserved)
    assert text == ("# guest 101\nBC:24:11:00:00:01,172.22.161.170,web\n"
                    "# reserved for guest 107\n172.22.161.9\n"
                    "# reserved for guest 205\n172.22.161.205\n")
    assert leases.parse(text) == [L101]  # a reservation is no lease
    assert leases.parse_reserved(text) == [reserved[1], reserved[0]]  # address order


def test_the_pool_reserves_what_guests_of_the_cluster_have_and_no_lease_gives():
    held = {"172.22.161.170": 101, "172.22.161.200": 301, "172.22.161.205": 104,
            "172.22.161.211": 302, "172.22.161.209": 103}
    mine = [L101, leases.Lease(103, "BC:24:11:00:00:03", "172.22.161.209", "")]
    assert leases.reservations(held, mine, POOL) == [
        leases.Reserved(301, "172.22.161.200"), leases.Reserved(104, "172.22.161.205")]
    assert leases.reservations(held, mine, HOST) == []  # no pool, nothing to keep from it


def test_stale_leases_are_those_the_hosts_file_contradicts():
    mine = [L101._replace(mac="BC:24:11:00:00:99"),  # 101's NIC is new
            leases.Lease(102, "BC:24:11:00:00:02", "172.22.161.172", ""),  # moved
            leases.Lease(103, "BC:24:11:00:00:03", "172.22.161.173", ""),  # as it was
            leases.Lease(103, "BC:24:11:00:00:13", "172.22.161.173", "")]  # its second NIC
    reserved = [leases.Reserved(301, "172.22.161.201")]
    database = [("BC:24:11:00:00:01", "172.22.161.170"),  # the old NIC: its address is taken
                ("BC:24:11:00:00:02", "172.22.161.171"),  # 102's old address
                ("BC:24:11:00:00:03", "172.22.161.173"),
                ("BC:24:11:00:00:13", "172.22.161.173"),
                ("BC:24:11:00:00:04", "172.22.161.174"),  # a guest whose lease went
                ("02:00:00:00:00:01", "172.22.161.201"),  # the pool gave a reserved address
                ("02:00:00:00:00:02", "172.22.161.202"),  # an unknown guest in the pool
                ("02:00:00:00:00:03", "10.0.0.3")]  # not of this subnet: not ours
    assert leases.stale(database, mine, reserved, POOL) == [
        ("BC:24:11:00:00:01", "172.22.161.170"), ("BC:24:11:00:00:02", "172.22.161.171"),
        ("BC:24:11:00:00:04", "172.22.161.174"), ("02:00:00:00:00:01", "172.22.161.201")]
    # without a pool there are no dynamic leases to keep
    assert ("02:00:00:00:00:02", "172.22.161.202") in leases.stale(database, mine, [], HOST)


def test_a_release_is_the_packet_dhcp_release_sends():
    """contrib/lease-tools/dhcp_release.c: struct dhcp_packet with 308 bytes of options."""
    packet = dhcp.release_packet("bc:24:11:00:00:01", "172.22.161.170",
                                 bytes([172, 22, 161, 254]))
    assert len(packet) == 236 + 4 + 308
    assert packet[:4] == bytes([1, 1, 6, 0])  # BOOTREQUEST, Ethernet, 6-byte MAC, no hops
    assert packet[12:16] == bytes([172, 22, 161, 170])  # ciaddr: the lease's address
    assert packet[16:28] == bytes(12)  # yiaddr, siaddr, giaddr
    assert packet[28:44] == bytes.fromhex("bc2411000001") + bytes(10)  # chaddr
    assert packet[236:240] == bytes([0x63, 0x82, 0x53, 0x63])  # the magic cookie
    assert packet[240:250] == bytes([53, 1, 7, 54, 4, 172, 22, 161, 254, 255])
    assert packet[250:] == bytes(298)


def test_the_lease_database_is_pruned_of_stale_leases_before_the_server_starts(tmp_path):
    places = Places(state_dir=str(tmp_path))
    (tmp_path / dhcp.HOSTS).write_text(leases.render([L101._replace(mac="BC:24:11:00:00:99")]))
    lines = ["1796562951 bc:24:11:00:00:01 172.22.161.170 web 01:bc:24:11:00:00:01\n",
             "1796562951 bc:24:11:00:00:99 172.22.161.170 web *\n",
             "duid 00:01:00:01:2c:aa:bb:cc:dd:ee:ff:00:11:22\n"]
    (tmp_path / dhcp.LEASE_DB).write_text("".join(lines))
    assert dhcp.lease_database(places) == [("BC:24:11:00:00:01", "172.22.161.170"),
                                           ("BC:24:11:00:00:99", "172.22.161.170")]
    assert dhcp.prune(HOST, places) == [("BC:24:11:00:00:01", "172.22.161.170")]
    assert (tmp_path / dhcp.LEASE_DB).read_text() == lines[1] + lines[2]
    assert dhcp.prune(HOST, places) == []
    assert dhcp.settle(HOST, places) == []  # no server running: nothing to tell


def test_a_release_that_cannot_be_sent_is_an_error_that_names_the_leases(tmp_path):
    places = Places(state_dir=str(tmp_path / "state"), proc=str(tmp_path / "proc"))
    (tmp_path / "state").mkdir()
    (tmp_path / "proc/4242").mkdir(parents=True)
    (tmp_path / "proc/4242/comm").write_text("dnsmasq\n")  # the server runs
    (tmp_path / "state" / dhcp.PID).write_text("4242\n")
    (tmp_path / "state" / dhcp.HOSTS).write_text(
        leases.render([L101._replace(mac="BC:24:11:00:00:99")]))
    (tmp_path / "state" / dhcp.LEASE_DB).write_text(
        "1796562951 bc:24:11:00:00:01 172.22.161.170 web *\n")
    host = HOST._replace(lan_bridge="pvenat-none0")  # no such bridge
    assert dhcp.settle(host, places, dry_run=True) == [("BC:24:11:00:00:01", "172.22.161.170")]
    with pytest.raises(PvenatError) as e:
        dhcp.settle(host, places)
    assert e.value.code == "dhcp"
    assert e.value.message.startswith("cannot tell the DHCP server to drop the stale leases "
                                      "of BC:24:11:00:00:01 (172.22.161.170) on pvenat-none0: ")

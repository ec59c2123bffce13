"""What a PVE node does to its network when guests start and stop, as PVE's own source does
it, for the lab: the commands run inside the lab's host namespace.

- plug(): a guest NIC onto its bridge, pve-common src/PVE/Network.pm tap_plug: the VLAN
  bridge vmbrXv<tag> (activate_bridge_vlan) for a tag on a bridge that is not
  VLAN-aware, the firewall bridge (create_firewall_bridge_linux) for firewall=1 under
  the iptables pve-firewall (pve-firewall src/PVE/Firewall/Helpers.pm needs_fwbr).
- unplug(): the guest's devices gone, as qemu-server's pve-bridgedown (tap_unplug) and
  the LXC poststop hook (veth_delete) leave them.
- firewall_rules(): pve-firewall's filter table for those guests (src/PVE/Firewall.pm
  compile_iptables_filter), as its compile() prints it for the cluster firewall on; with
  host=True the host's own chains too (enable_host_firewall), input policy DROP.
- raw_rules(): its raw table with nf_conntrack_helpers set (compile_iptables_raw).
- firewall_rules6(), host_rules6(), raw_rules(..., version=6): the same for ip6tables,
  which pve-firewall fills from the same compile_iptables_filter/_raw with $ipversion 6
  (compile(); apply_ruleset restores both with -n).
- missing_jumps(), removal_script(): how it hooks its chains into the built-in ones and
  takes them out when stopped (get_ruleset_cmdlist, remove_pvefw_chains_iptables).

Line numbers below are of src/PVE/Firewall.pm at pve-firewall commit 6f1311f.
"""

import re
import subprocess


def nic_options(value: str) -> dict:
    """netN of a guest config: 'virtio=BC:24:..,bridge=vmbr1,firewall=1,tag=5'."""
    out = {}
    for part in value.split(","):
        key, _, val = part.partition("=")
        if re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", val) and key not in ("hwaddr",):
            out["macaddr"] = val  # QEMU: model=MAC
        out[key] = val
    if "hwaddr" in out:
        out["macaddr"] = out["hwaddr"]
    return out


def port_name(vmid: int, kind: str, index: int = 0) -> str:
    return f"{'tap' if kind == 'qemu' else 'veth'}{vmid}i{index}"


class Node:
    """The host namespace's network as PVE would change it."""

    def __init__(self, ns: str, firewall="iptables"):
        self.ns = ns
        self.firewall = firewall  # "iptables": pve-firewall; None or "nftables": no fwbr

    def _exec(self, *argv, check=True):
        proc = subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True,
                              text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
        return proc

    def run(self, *args):
        self._exec("ip", *args)

    def bridge(self, *args):
        self._exec("bridge", *args)

    def read(self, path: str) -> str:
        """A file of the namespace's /sys or /proc; '' when there is none."""
        return self._exec("cat", path, check=False).stdout.strip()

    def ls(self, path: str) -> list[str]:
        return self._exec("ls", path, check=False).stdout.split()

    def write(self, path: str, value: str):
        self._exec("sh", "-c", f"echo {value} > {path}")

    def disable_ipv6(self, iface: str):
        self.write(f"/proc/sys/net/ipv6/conf/{iface}/disable_ipv6", "1")

    def vlan_aware(self, bridge: str) -> bool:
        return self.read(f"/sys/class/net/{bridge}/bridge/vlan_filtering") == "1"

    def plug(self, port: str, opts: dict) -> str:
        """Put the guest's host-side port on its bridge (tap_plug); returns the bridge
        it ends up on."""
        bridge, tag = opts["bridge"], opts.get("tag")
        mtu = self.read(f"/sys/class/net/{bridge}/mtu")
        # tap_create (qemu-server) / the veth LXC made: no IPv6, up, promiscuous
        self.disable_ipv6(port)
        self.run("link", "set", port, "up", "promisc", "on", "mtu", mtu)
        if tag and not self.vlan_aware(bridge):
            bridge, tag = self.activate_bridge_vlan(bridge, tag), None
        if opts.get("firewall") == "1" and self.firewall == "iptables":
            self.create_firewall_bridge(port, bridge, tag)
        else:
            self.bridge_add_interface(bridge, port, tag)
        return bridge

    def create_firewall_bridge(self, port: str, bridge: str, tag):
        """create_firewall_bridge_linux: tap - [fwbrNiM] - fwlnNiM <veth> fwprNpM - bridge."""
        m = re.fullmatch(r"(?:tap|veth)([0-9]+)i([0-9]+)", port)
        vmid, index = m.groups()
        fwbr, fwln, fwpr = f"fwbr{vmid}i{index}", f"fwln{vmid}i{index}", f"fwpr{vmid}p{index}"
        mtu = self.read(f"/sys/class/net/{bridge}/mtu")
        self.run("link", "add", fwbr, "type", "bridge")
        self.disable_ipv6(fwbr)
        self.run("link", "set", fwbr, "up", "mtu", mtu)
        self.copy_bridge_config(bridge, fwbr)
        self.run("link", "add", "name", fwln, "mtu", mtu, "type", "veth", "peer", "name",
                 fwpr, "mtu", mtu)
        for dev in (fwln, fwpr):
            self.disable_ipv6(dev)
            self.run("link", "set", dev, "up", "mtu", mtu)
        self.bridge_add_interface(bridge, fwpr, tag)
        self.bridge_add_interface(fwbr, fwln)
        self.bridge_add_interface(fwbr, port)

    def bridge_add_interface(self, bridge: str, iface: str, tag=None):
        mtu = self.read(f"/sys/class/net/{bridge}/mtu")
        self.run("link", "set", iface, "mtu", mtu)
        self.disable_ipv6(iface)
        self.run("link", "set", iface, "master", bridge)
        if self.vlan_aware(bridge):
            self.bridge("vlan", "del", "dev", iface, "vid", "1-4094")
            if not tag:
                self.bridge("vlan", "add", "dev", iface, "vid", "2-4094")
            self.bridge("vlan", "add", "dev", iface, "vid", tag or "1", "pvid", "untagged")

    def activate_bridge_vlan(self, bridge: str, tag: str) -> str:
        """A tag on a bridge that is not VLAN-aware: the port goes onto vmbrXv<tag>, which
        bridges <physical port>.<tag> of each physical port of vmbrX."""
        physical = [p for p in self.ls(f"/sys/class/net/{bridge}/brif")
                    if not re.match(r"(tap|veth|fwpr|fwln)", p)]
        if not physical:
            raise RuntimeError(f"no physical interface on bridge '{bridge}'")
        vlan_bridge = f"{bridge}v{tag}"
        if not self.read(f"/sys/class/net/{vlan_bridge}/mtu"):
            self.run("link", "add", vlan_bridge, "type", "bridge")
        self.run("link", "set", vlan_bridge, "mtu", self.read(f"/sys/class/net/{bridge}/mtu"))
        for port in physical:
            sub = f"{port}.{tag}"
            if not self.read(f"/sys/class/net/{sub}/mtu"):
                self.add_vlan(port, sub, tag)
            self.disable_ipv6(sub)
            self.run("link", "set", sub, "up")
            self.bridge_add_interface(vlan_bridge, sub)
        self.disable_ipv6(vlan_bridge)
        self.run("link", "set", vlan_bridge, "up")
        self.copy_bridge_config(bridge, vlan_bridge)
        return vlan_bridge

    def add_vlan(self, port: str, name: str, tag: str):
        """<port>.<tag>, a VLAN device; on a kernel without 802.1Q (CONFIG_VLAN_8021Q, not in
        every test machine's) a veth of the same name stands in: pvenat never looks past
        the bridge, and the guests' traffic is the same."""
        try:
            self.run("link", "add", "link", port, "name", name, "type", "vlan", "id", tag)
        except RuntimeError as e:
            if "Unknown device type" not in str(e):
                raise
            self.run("link", "add", name, "type", "veth", "peer", "name", f"{port}v{tag}-wire")
            self.run("link", "set", f"{port}v{tag}-wire", "up")

    def copy_bridge_config(self, source: str, target: str):
        for key in ("ageing_time", "stp_state", "priority", "forward_delay", "hello_time",
                    "max_age", "multicast_snooping", "multicast_querier"):
            value = self.read(f"/sys/class/net/{source}/bridge/{key}")
            if value and value != self.read(f"/sys/class/net/{target}/bridge/{key}"):
                self.write(f"/sys/class/net/{target}/bridge/{key}", value)

    def unplug(self, port: str):
        """The guest stopped: its port, and a firewall bridge's devices, are gone."""
        m = re.fullmatch(r"(?:tap|veth)([0-9]+)i([0-9]+)", port)
        nic = f"{m.group(1)}i{m.group(2)}"
        for dev in (f"fwln{nic}", f"fwbr{nic}", port):  # fwpr goes with its peer fwln
            if self.read(f"/sys/class/net/{dev}/mtu"):
                self.run("link", "del", dev)


def firewall_rules(nics: dict, vm_firewall: dict, host: bool = False) -> str:
    """pve-firewall's filter table (iptables-restore -n input) for guest NICs behind
    firewall bridges. ``nics``: {port: mac}; ``vm_firewall``: {port: [IN rules]} for
    the NICs whose guest has its firewall enabled (policy_in DROP, policy_out ACCEPT);
    the others have no chains of their own (pve-firewall returns early for a guest with
    'enable: 0', Firewall.pm generate_tap_rules_direction). Real output of pve-firewall's
    compile(), PVE 8 (PVE 9 adds a CONNMARK rule to each guest chain). ``host``: the
    datacenter firewall is on, and with it the host's own chains (host_rules())."""
    chains = ["PVEFW-FORWARD", "PVEFW-FWBR-IN", "PVEFW-FWBR-OUT", "PVEFW-SET-ACCEPT-MARK",
              "PVEFW-smurfs", "PVEFW-smurflog", "PVEFW-Drop", "PVEFW-DropBroadcast"]
    chains += [f"{port}-{d}" for port in vm_firewall for d in ("IN", "OUT")]
    vm_firewall = {port: [r for r in accept if ipversion(r) in (None, 4)]
                   for port, accept in vm_firewall.items()}
    rules = [
        "-A PVEFW-FORWARD -m conntrack --ctstate INVALID -j DROP",
        "-A PVEFW-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A PVEFW-FORWARD -m physdev --physdev-in fwln+ --physdev-is-bridged -j PVEFW-FWBR-IN",
        "-A PVEFW-FORWARD -m physdev --physdev-out fwln+ --physdev-is-bridged "
        "-j PVEFW-FWBR-OUT",
        "-A PVEFW-FWBR-IN -m conntrack --ctstate INVALID,NEW -j PVEFW-smurfs",
        "-A PVEFW-SET-ACCEPT-MARK -j MARK --set-xmark 0x80000000/0x80000000",
        "-A PVEFW-smurflog -j DROP",
        "-A PVEFW-smurfs -s 0.0.0.0/32 -j RETURN",
        "-A PVEFW-smurfs -m addrtype --src-type BROADCAST -g PVEFW-smurflog",
        "-A PVEFW-smurfs -s 224.0.0.0/4 -g PVEFW-smurflog",
        "-A PVEFW-Drop -j PVEFW-DropBroadcast",
        "-A PVEFW-Drop -p icmp -m icmp --icmp-type 3/4 -j ACCEPT",
        "-A PVEFW-Drop -p icmp -m icmp --icmp-type 11 -j ACCEPT",
        "-A PVEFW-Drop -m conntrack --ctstate INVALID -j DROP",
        "-A PVEFW-Drop -p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -j DROP",
        "-A PVEFW-DropBroadcast -m addrtype --dst-type BROADCAST -j DROP",
        "-A PVEFW-DropBroadcast -m addrtype --dst-type MULTICAST -j DROP",
        "-A PVEFW-DropBroadcast -d 224.0.0.0/4 -j DROP",
    ]
    for port, accept in vm_firewall.items():
        rules += [
            f"-A PVEFW-FWBR-IN -m physdev --physdev-out {port} --physdev-is-bridged "
            f"-j {port}-IN",
            f"-A PVEFW-FWBR-OUT -m physdev --physdev-in {port} --physdev-is-bridged "
            f"-j {port}-OUT",
            f"-A {port}-IN -p udp -m udp --sport 67 --dport 68 -j ACCEPT",
            *[f"-A {port}-IN {rule}" for rule in accept],
            f"-A {port}-IN -j PVEFW-Drop",
            f"-A {port}-IN -j DROP",
            f"-A {port}-OUT -p udp -m udp --sport 68 --dport 67 -g PVEFW-SET-ACCEPT-MARK",
            f"-A {port}-OUT -m mac ! --mac-source {nics[port]} -j DROP",
            f"-A {port}-OUT -j MARK --set-xmark 0x0/0x80000000",
            f"-A {port}-OUT -g PVEFW-SET-ACCEPT-MARK",
        ]
    if host:
        host_chains, host_lines = host_rules()
        chains += host_chains
        rules += host_lines
    return "\n".join(["*filter", *[f":{c} - [0:0]" for c in chains], *rules, "COMMIT", ""])


def host_rules() -> tuple[list, list]:
    """The host's chains with the datacenter firewall on and a host.fw with no rules of
    its own, single node (no corosync peers), default options: enable_host_firewall
    (lines 2868-3096) as compile_iptables_filter calls it (4365-4373).

    PVEFW-HOST-IN accepts loopback and established traffic, sends new traffic through
    PVEFW-smurfs (ruleset_chain_add_input_filters, 2522: it RETURNs for 0.0.0.0, so a
    DHCP DISCOVER goes on), lets IGMP and the management ports through, and ends in the
    input policy, DROP by default (2988-2990; ruleset_add_chain_policy, 2469: PVEFW-Drop,
    whose PVEFW-DropBroadcast drops every broadcast, then DROP). There is nothing for
    DHCP or DNS from a bridge. The management rules (2949-2957: tcp 8006, 5900:5999,
    3128, 22, 60000:60050 from the ipset PVEFW-0-management-v4) are left out: they need
    an ipset, the lab has no ipset tool, and they let none of DHCP or DNS in either.
    Accepting rules there are RETURN ("we need to check also tap rules"): PVEFW-INPUT
    returns, and INPUT's own policy (ACCEPT) decides. PVEFW-HOST-OUT: policy_out ACCEPT
    (3090-3092), so it ends in RETURN."""
    chains = ["PVEFW-INPUT", "PVEFW-OUTPUT", "PVEFW-HOST-IN", "PVEFW-HOST-OUT"]
    rules = [
        "-A PVEFW-HOST-IN -i lo -j ACCEPT",
        "-A PVEFW-HOST-IN -m conntrack --ctstate INVALID -j DROP",
        "-A PVEFW-HOST-IN -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A PVEFW-HOST-IN -m conntrack --ctstate INVALID,NEW -j PVEFW-smurfs",
        "-A PVEFW-HOST-IN -p igmp -j RETURN",
        "-A PVEFW-HOST-IN -j PVEFW-Drop",
        "-A PVEFW-HOST-IN -j DROP",
        "-A PVEFW-HOST-OUT -o lo -j ACCEPT",
        "-A PVEFW-HOST-OUT -m conntrack --ctstate INVALID -j DROP",
        "-A PVEFW-HOST-OUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A PVEFW-HOST-OUT -p igmp -j RETURN",
        "-A PVEFW-HOST-OUT -j RETURN",
        "-A PVEFW-OUTPUT -j PVEFW-HOST-OUT",  # 3094
        "-A PVEFW-INPUT -j PVEFW-HOST-IN",  # 3095
    ]
    return chains, rules


def raw_rules(helpers, version: int = 4) -> str:
    """The raw table with the host option nf_conntrack_helpers (compile_iptables_raw,
    4271-4323): PVEFW-PREROUTING, one CT --helper rule a helper, for the ports of
    $pve_fw_helpers (571-581); for ip6tables (``version=6``) only the helpers marked v6
    there, the chain made all the same."""
    ports = {"amanda": ("udp", 10080), "ftp": ("tcp", 21), "irc": ("tcp", 6667),
             "netbios-ns": ("udp", 137), "pptp": ("tcp", 1723), "sane": ("tcp", 6566),
             "sip": ("udp", 5060), "snmp": ("udp", 161), "tftp": ("udp", 69)}
    v6 = {"amanda", "ftp", "sane", "sip", "tftp"}
    rules = [f"-A PVEFW-PREROUTING -p {ports[h][0]} -m {ports[h][0]} --dport {ports[h][1]} "
             f"-j CT --helper {h}" for h in helpers if version == 4 or h in v6]
    return "\n".join(["*raw", ":PVEFW-PREROUTING - [0:0]", *rules, "COMMIT", ""])


def ipversion(rule: str):
    """4 or 6 for a rule that names an address or ICMP of one family, else None (both):
    pve-firewall skips a rule of the other family (verify_rule sets its ipversion,
    1740-1918; the chain builders 'next if $rule->{ipversion} != $ipversion')."""
    if re.search(r"(^|\s)(-p (icmpv6|ipv6-icmp)\b|-[sd]\s+(!\s*)?[0-9a-fA-F]*:)", rule):
        return 6
    if re.search(r"(^|\s)(-p icmp\b|-[sd]\s+(!\s*)?\d+\.)", rule):
        return 4
    return None


# pve-firewall's standard chains for ip6tables ($pve_std_chains_conf->{6}, 693-783), as
# generate_std_chains writes them (ipt_rule_to_cmds: a port list goes through multiport,
# an ICMPv6 type by name). IPv6 has no PVEFW-smurfs: ruleset_chain_add_input_filters adds
# its jump for IPv4 alone (2539-2547), and PVEFW-DropBroadcast drops ff00::/8 only.
STD_CHAINS6 = {
    "PVEFW-SET-ACCEPT-MARK": ["-j MARK --set-mark 0x80000000/0x80000000"],
    "PVEFW-DropBroadcast": ["-d ff00::/8 -j DROP"],
    "PVEFW-reject": [
        "-p icmpv6 -j DROP",
        "-p tcp -j REJECT --reject-with tcp-reset",
        "-p udp -j REJECT --reject-with icmp6-port-unreachable",
        "-j REJECT --reject-with icmp6-adm-prohibited"],
    "PVEFW-Drop": [
        "-p tcp --dport 43 -j PVEFW-reject",
        "-j PVEFW-DropBroadcast",
        *[f"-p icmpv6 -m icmpv6 --icmpv6-type {t} -j ACCEPT"
          for t in ("destination-unreachable", "time-exceeded", "packet-too-big")],
        "-m conntrack --ctstate INVALID -j DROP",
        "-p udp --match multiport --dports 135,445 -j DROP",
        "-p udp --dport 137:139 -j DROP",
        "-p udp --sport 137 --dport 1024:65535 -j DROP",
        "-p tcp --match multiport --dports 135,139,445 -j DROP",
        "-p udp --dport 1900 -j DROP",
        "-p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -j DROP",
        "-p udp --sport 53 -j DROP"],
    "PVEFW-Reject": [
        "-p tcp --dport 43 -j PVEFW-reject",
        "-j PVEFW-DropBroadcast",
        *[f"-p icmpv6 -m icmpv6 --icmpv6-type {t} -j ACCEPT"
          for t in ("destination-unreachable", "time-exceeded", "packet-too-big")],
        "-m conntrack --ctstate INVALID -j DROP",
        "-p udp --match multiport --dports 135,445 -j PVEFW-reject",
        "-p udp --dport 137:139 -j PVEFW-reject",
        "-p udp --sport 137 --dport 1024:65535 -j PVEFW-reject",
        "-p tcp --match multiport --dports 135,139,445 -j PVEFW-reject",
        "-p udp --dport 1900 -j DROP",
        "-p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -j DROP",
        "-p udp --sport 53 -j DROP"],
    "PVEFW-tcpflags": [
        f"-p tcp -m tcp {m} -g PVEFW-logflags" for m in (
            "--tcp-flags FIN,SYN,RST,PSH,ACK,URG FIN,PSH,URG",
            "--tcp-flags FIN,SYN,RST,PSH,ACK,URG NONE", "--tcp-flags SYN,RST SYN,RST",
            "--tcp-flags FIN,SYN FIN,SYN", "--sport 0 --tcp-flags FIN,SYN,RST,ACK SYN")],
    "PVEFW-logflags": ["-j DROP"],
}


def ndp(chain: str, accept: str, direction: str) -> list:
    """ruleset_chain_add_ndp (2501-2511), option ndp at its default (on): router
    solicitations, neighbour solicitations and advertisements, and router advertisements
    except outbound (unless radv)."""
    types = ["router-solicitation", "router-advertisement", "neighbor-solicitation",
             "neighbor-advertisement"]
    return [f"-A {chain} -p icmpv6 --icmpv6-type {t} {accept}" for t in types
            if direction == "IN" or t != "router-advertisement"]


def firewall_rules6(nics: dict, vm_firewall: dict, host: bool = False) -> str:
    """pve-firewall's ip6tables filter table, as firewall_rules() for iptables: the same
    compile_iptables_filter with $ipversion 6 (4325-4475). PVEFW-FORWARD is the same:
    INVALID dropped, established accepted, the firewall bridges' traffic to PVEFW-FWBR-IN
    and -OUT, nothing else (routed traffic returns to FORWARD's own policy). A guest with
    its firewall on (ruleset_create_vm_chain, 2555-2642): IN accepts DHCPv6 from a server
    (udp 547 -> 546) and NDP including router advertisements; OUT lets DHCPv6 requests
    (546 -> 547) out, drops foreign MACs, drops router advertisements (option radv off),
    and lets NDP but router advertisements out. ``vm_firewall`` rules of IPv4 alone are
    left out (ipversion())."""
    chains = ["PVEFW-FORWARD", "PVEFW-FWBR-IN", "PVEFW-FWBR-OUT", *STD_CHAINS6]
    chains += [f"{port}-{d}" for port in vm_firewall for d in ("IN", "OUT")]
    rules = [
        "-A PVEFW-FORWARD -m conntrack --ctstate INVALID -j DROP",
        "-A PVEFW-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A PVEFW-FORWARD -m physdev --physdev-is-bridged --physdev-in fwln+ "
        "-j PVEFW-FWBR-IN",
        "-A PVEFW-FORWARD -m physdev --physdev-is-bridged --physdev-out fwln+ "
        "-j PVEFW-FWBR-OUT",
        *[f"-A {chain} {rule}" for chain, lines in STD_CHAINS6.items() for rule in lines],
    ]
    for port, accept in vm_firewall.items():
        rules += [
            f"-A PVEFW-FWBR-IN -m physdev --physdev-is-bridged --physdev-out {port} "
            f"-j {port}-IN",
            f"-A PVEFW-FWBR-OUT -m physdev --physdev-is-bridged --physdev-in {port} "
            f"-j {port}-OUT",
            f"-A {port}-IN -p udp --sport 547 --dport 546 -j ACCEPT",
            *ndp(f"{port}-IN", "-j ACCEPT", "IN"),
            *[f"-A {port}-IN {rule}" for rule in accept if ipversion(rule) in (None, 6)],
            f"-A {port}-IN -j PVEFW-Drop",
            f"-A {port}-IN -j DROP",
            f"-A {port}-OUT -p udp --sport 546 --dport 547 -g PVEFW-SET-ACCEPT-MARK",
            f"-A {port}-OUT -m mac ! --mac-source {nics[port]} -j DROP",
            f"-A {port}-OUT -p icmpv6 --icmpv6-type router-advertisement -j DROP",
            f"-A {port}-OUT -j MARK --set-mark 0x00000000/0x80000000",
            *ndp(f"{port}-OUT", "-g PVEFW-SET-ACCEPT-MARK", "OUT"),
            f"-A {port}-OUT -g PVEFW-SET-ACCEPT-MARK",
        ]
    if host:
        host_chains, host_lines = host_rules6()
        chains += host_chains
        rules += host_lines
    return "\n".join(["*filter", *[f":{c} - [0:0]" for c in chains], *rules, "COMMIT", ""])


def host_rules6() -> tuple[list, list]:
    """The host's ip6tables chains, as host_rules() (enable_host_firewall, 2868-3096,
    $ipversion 6). PVEFW-HOST-IN RETURNs (so INPUT's policy decides) router and
    neighbour solicitations and advertisements (ruleset_chain_add_ndp, before anything
    else new), then goes on as for IPv4 minus PVEFW-smurfs; the input policy's PVEFW-Drop
    drops all multicast (PVEFW-DropBroadcast: ff00::/8), so a DHCPv6 Solicit (to
    ff02::1:2) dies there, and DNS or any other new unicast traffic in the final DROP.
    The management ipset rules are left out as for IPv4. PVEFW-HOST-OUT lets NDP out but
    router advertisements (radv off), and ends in RETURN (policy_out ACCEPT)."""
    chains = ["PVEFW-INPUT", "PVEFW-OUTPUT", "PVEFW-HOST-IN", "PVEFW-HOST-OUT"]
    rules = [
        "-A PVEFW-HOST-IN -i lo -j ACCEPT",
        "-A PVEFW-HOST-IN -m conntrack --ctstate INVALID -j DROP",
        "-A PVEFW-HOST-IN -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        *ndp("PVEFW-HOST-IN", "-j RETURN", "IN"),
        "-A PVEFW-HOST-IN -p igmp -j RETURN",
        "-A PVEFW-HOST-IN -j PVEFW-Drop",
        "-A PVEFW-HOST-IN -j DROP",
        "-A PVEFW-HOST-OUT -o lo -j ACCEPT",
        "-A PVEFW-HOST-OUT -m conntrack --ctstate INVALID -j DROP",
        "-A PVEFW-HOST-OUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        *ndp("PVEFW-HOST-OUT", "-j RETURN", "OUT"),
        "-A PVEFW-HOST-OUT -p igmp -j RETURN",
        "-A PVEFW-HOST-OUT -j RETURN",
        "-A PVEFW-OUTPUT -j PVEFW-HOST-OUT",
        "-A PVEFW-INPUT -j PVEFW-HOST-IN",
    ]
    return chains, rules


def missing_jumps(save_output: str, table: str) -> str:
    """pve-firewall appends its jump to PVEFW-<hook> for each of its hook chains that
    exists and has no such jump yet, wherever that puts it (get_ruleset_cmdlist,
    4832-4837; iptables_get_chains, 2101). ``save_output``: iptables-save -t TABLE."""
    lines = [f"-A {h} -j PVEFW-{h}" for h in ("INPUT", "OUTPUT", "FORWARD", "PREROUTING")
             if re.search(rf"^:PVEFW-{h} ", save_output, re.M)
             and not re.search(rf"^-A {h} -j PVEFW-{h}$", save_output, re.M)]
    return f"*{table}\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n" \
        if lines else ""


def removal_script(save_output: str, table: str) -> str:
    """pve-firewall stopped: its jumps deleted, its chains flushed and deleted
    (remove_pvefw_chains_iptables, 5224-5252)."""
    chains = re.findall(r"^:((?:PVEFW-|GROUP-)\S+|(?:tap|veth)\d+i\d+-(?:IN|OUT)) ",
                        save_output, re.M)
    hooks = [h for h in ("INPUT", "OUTPUT", "FORWARD", "PREROUTING")
             if re.search(rf"^-A {h} -j PVEFW-{h}$", save_output, re.M)]
    return "\n".join([f"*{table}", *[f"-D {h} -j PVEFW-{h}" for h in hooks],
                      *[f"-F {c}" for c in chains], *[f"-X {c}" for c in chains],
                      "COMMIT", ""])


def forward_jump(save_output: str) -> str:
    """pve-firewall appends its FORWARD jump only when it is missing (Firewall.pm
    get_ruleset_cmdlist), wherever that puts it."""
    if re.search(r"^-A FORWARD -j PVEFW-FORWARD$", save_output, re.M):
        return ""
    return "*filter\n-A FORWARD -j PVEFW-FORWARD\nCOMMIT\n"

"""A guest's forwards, read from its Notes (a ```pvenat block) and its tags.

Pure parsing: text in, a GuestSpec or a PvenatError out. Checks that need the host
config (pool, reserved ports, subnet) live in plan.py.
"""

import ipaddress
import re
from typing import NamedTuple

from . import yamlstrict
from .errors import PvenatError
from .ports import format_range, parse_range

MAX_BLOCK = 16 * 1024  # PVE itself caps Notes at 8 KiB; anything larger is not ours
_FENCE = re.compile(r"( {0,3})(`{3,}|~{3,})[ \t]*([^`\s]*)[^`]*")
_TAG = re.compile(r"pvenat-([0-9]{1,5}(?:-[0-9]{1,5})?)")
# 10000-10099 | 12222:22 | 12222->22 (as pvenat prints it) | 18000-18009:19000-19009, then
# /tcp /udp /both in any case
_RANGE = r"[0-9]{1,5}(?:-[0-9]{1,5})?"
_ENTRY = re.compile(rf"({_RANGE})(?:(?::|->)({_RANGE}))?(?:/(tcp|udp|both))?", re.I)
_TAG_SPLIT = re.compile(r"[;, ]")
_NET_KEY = re.compile(r"net([0-9]+)")
_PROTOS = {"tcp": ("tcp",), "udp": ("udp",), "both": ("tcp", "udp")}


class Forward(NamedTuple):
    """One protocol's public port range to the same-length guest range."""

    proto: str
    public: tuple[int, int]
    guest: tuple[int, int]
    allow: tuple[str, ...] = ()  # source networks; empty means anyone
    origin: str = ""  # where it was written, for messages: "Notes line 4", "tag pvenat-18080"

    def ports(self) -> str:
        pub = format_range(*self.public)
        return pub if self.guest == self.public else f"{pub}->{format_range(*self.guest)}"

    def sources(self) -> list[str]:
        return [a.removesuffix("/32").removesuffix("/128") for a in self.allow]

    def allow_family(self, version: int) -> tuple[str, ...] | None:
        """The sources of one IP version: () for anyone, None when the allow-list names
        sources of the other version only (then this version lets nobody in)."""
        if not self.allow:
            return ()
        mine = tuple(a for a in self.allow if (":" in a) == (version == 6))
        return mine or None

    def describe(self) -> str:
        return self.ports() + (f" from {','.join(self.sources())}" if self.allow else "")


class GuestSpec(NamedTuple):
    vmid: int
    ip: str | None  # from "ip:", else found in the NIC config by plan.py
    forwards: tuple[Forward, ...]
    entries: int  # entries as written (a tcp+udp entry counts once), for the cap
    who: str  # for messages: "guest 101", or the file that `pvenat check --notes` read
    ip6: str | None = None  # from "ip6:", else the NIC's static one or the prefix's (plan.py)


def parse(vmid: int, description: str, tags: str, source: str = "") -> GuestSpec | None:
    """The guest's spec, or None when neither Notes nor tags mention pvenat. Messages say
    "guest 101, Notes line 6: ..."; with ``source`` (a file's name) "FILE, line 6: ..."."""
    who = source or f"guest {vmid}"

    def at(line):
        return f"{source}, line {line}" if source else f"{who}, Notes line {line}"

    block = _find_block(at, description or "")
    tagged = _parse_tags(who, tags or "")
    if block is None and not tagged:
        return None
    ip = ip6 = None
    forwards, entries = [], len(tagged)
    if block is not None:
        ip, ip6, written = _parse_block(at, *block)
        forwards += written[0]
        entries += written[1]
    for tag in tagged:
        forwards += tag
    if not forwards and ip is None and ip6 is None:
        raise PvenatError("spec", f"{who}: its pvenat block lists no forwards; add "
                          "'forwards:' with entries such as '- 12222:22', or remove the block")
    return GuestSpec(vmid, ip, tuple(sorted(forwards)), entries, who, ip6)


def _find_block(at, text):
    """(body, first line number of body) of the one ```pvenat block, or None."""
    lines = text.split("\n")
    found, i = None, 0
    while i < len(lines):
        m = _FENCE.fullmatch(lines[i].rstrip("\r"))
        if not m:
            i += 1
            continue
        fence, start = m.group(2), i
        end = next((j for j in range(i + 1, len(lines)) if _closes(lines[j], fence)), None)
        if m.group(3) == "pvenat":
            if end is None:
                raise PvenatError("spec", f"{at(start + 1)}: the pvenat "
                                  f"block is not closed; add a line {fence} after it")
            if found is not None:
                raise PvenatError("spec", f"{at(start + 1)}: a second "
                                  f"pvenat block (the first is on line {found[1] - 1}); "
                                  "merge them into one")
            body = "\n".join(lines[start + 1:end])
            if len(body.encode()) > MAX_BLOCK:
                raise PvenatError("spec", f"{at(start + 1)}: the pvenat "
                                  f"block is larger than {MAX_BLOCK // 1024} KiB; shorten it")
            found = (body, start + 2)
        i = len(lines) if end is None else end + 1
    return found


def with_ip(description: str, ip: str) -> str:
    """The Notes with the pvenat block's 'ip:' set to ``ip``: the line replaced, or added as
    the block's first line, or a block of its own appended; the rest as it was."""
    return _with_key(description, "ip", ip)


def with_ip6(description: str, ip6: str) -> str:
    """The Notes with the pvenat block's 'ip6:' set to ``ip6``, as with_ip does for 'ip:',
    a new line going after the block's 'ip:' when it has one."""
    return _with_key(description, "ip6", ip6, after="ip")


def _with_key(description: str, key: str, value: str, after: str = "") -> str:
    lines = (description or "").split("\n")
    for i, line in enumerate(lines):
        m = _FENCE.fullmatch(line.rstrip("\r"))
        if m and m.group(3) == "pvenat":
            end = next((j for j in range(i + 1, len(lines)) if _closes(lines[j], m.group(2))),
                       len(lines))
            at = i + 1
            for j in range(i + 1, end):
                if re.match(rf"{key}\s*:", lines[j]):
                    lines[j] = f"{key}: {value}"
                    return "\n".join(lines)
                if after and re.match(rf"{after}\s*:", lines[j]):
                    at = j + 1
            return "\n".join(lines[:at] + [f"{key}: {value}"] + lines[at:])
    text = (description or "").rstrip("\n")
    return (text + "\n\n" if text else "") + f"```pvenat\n{key}: {value}\n```"


def _closes(line: str, fence: str) -> bool:
    """A closing fence: up to 3 spaces, at least as many of the same fence characters."""
    text = line.rstrip()
    body = text.lstrip(" ")
    return len(text) - len(body) <= 3 and len(body) >= len(fence) and \
        body == fence[0] * len(body)


def _parse_block(at, body, first_line):
    root = yamlstrict.load(body, at, "spec", first_line)
    if root is None:
        raise PvenatError("spec", f"{at(first_line)}: the pvenat block is empty; "
                          "add 'forwards:' with entries such as '- 12222:22'")
    if not isinstance(root, yamlstrict.Map):
        raise PvenatError("spec", f"{at(root.line)}: the pvenat block needs keys "
                          "'forwards:' (and optionally 'ip:' and 'ip6:')")
    for key in root.items:
        if key not in ("ip", "ip6", "forwards"):
            raise PvenatError("spec", f"{at(root.keys[key])}: unknown key {key!r}; "
                              "the block takes 'ip', 'ip6' and 'forwards'")
    ip = ip6 = None
    if "ip" in root.items:
        node = root.items["ip"]
        try:
            ip = str(ipaddress.IPv4Address(_text(node)))
        except ValueError:
            raise PvenatError("spec", f"{at(node.line)}: ip: {_show(node)} is not "
                              "an IPv4 address; write it like 'ip: 172.22.161.170'") from None
    if "ip6" in root.items:
        node = root.items["ip6"]
        try:
            ip6 = str(ipaddress.IPv6Address(_text(node) or ""))
        except ValueError:
            raise PvenatError("spec", f"{at(node.line)}: ip6: {_show(node)} is not an IPv6 "
                              "address; write it like 'ip6: 2001:db8:1:2::101'") from None
    node = root.items.get("forwards")
    if node is None and (ip or ip6):  # an address for DHCP alone, no forwards
        return ip, ip6, ([], 0)
    if node is None:
        raise PvenatError("spec", f"{at(root.line)}: no 'forwards:' key; add one "
                          "with entries such as '- 12222:22'")
    if not isinstance(node, yamlstrict.Seq):
        raise PvenatError("spec", f"{at(node.line)}: 'forwards' must be a list, "
                          "one '- entry' per line")
    forwards = []
    for item in node.items:
        forwards += _parse_entry(at, item)
    return ip, ip6, (forwards, len(node.items))


def _text(node) -> str | None:
    return node.value if isinstance(node, yamlstrict.Scalar) else None


def _show(node) -> str:
    text = _text(node)
    return "a list or mapping" if text is None else _clip(text)


def _clip(text: str) -> str:
    """Quote what the user wrote, cut short: it goes into one line of a task log."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _parse_entry(at, node):
    origin = f"Notes line {node.line}"
    where = at(node.line)
    allow = ()
    if isinstance(node, yamlstrict.Map):
        key, value = next(iter(node.items.items()), ("", None))  # {} has none
        if len(node.items) == 1 and re.fullmatch(_RANGE, key) and isinstance(
                value, yamlstrict.Scalar) and re.fullmatch(_RANGE, value.value):
            raise PvenatError("spec", f"{where}: '{key} : {value.value}' reads as a YAML "
                              "mapping because of the space before ':'; write "
                              f"'{key}:{value.value}'")
        for key in node.items:
            if key not in ("ports", "proto", "allow"):
                raise PvenatError("spec", f"{at(node.keys[key])}: unknown key "
                                  f"{key!r} in a forward; use ports, proto and allow")
        if "ports" not in node.items:
            raise PvenatError("spec", f"{where}: this forward has no 'ports:'")
        ports = _text(node.items["ports"])
        proto = _text(node.items["proto"]) if "proto" in node.items else "tcp"
        proto = proto and proto.lower()
        if proto not in _PROTOS:
            raise PvenatError("spec", f"{at(node.items['proto'].line)}: proto: "
                              f"{_show(node.items['proto'])}; use tcp, udp or both")
        if "allow" in node.items:
            allow = _parse_allow(at, node.items["allow"])
        if ports is None or "/" in ports:
            raise PvenatError("spec", f"{at(node.items['ports'].line)}: ports: "
                              f"{_show(node.items['ports'])}; write a port, a range or "
                              "'public:guest', with the protocol under 'proto:'")
        text = f"{ports}/{proto}"
    else:
        text = _text(node)
        if text is None:
            raise PvenatError("spec", f"{where}: a forward is a line such as '- 12222:22' or "
                              "a mapping with ports, proto and allow")
    return _expand(text, allow, origin, where)


def _expand(text, allow, origin, where):
    m = _ENTRY.fullmatch(text.strip())
    if not m:
        raise PvenatError("spec", f"{where}: {_clip(text)} is not a forward; write PORT, "
                          "FIRST-LAST, PUBLIC:GUEST or a range to a range, optionally "
                          "followed by /tcp, /udp or /both")
    try:
        public = parse_range(m.group(1))
        guest = parse_range(m.group(2)) if m.group(2) else public
    except ValueError as e:
        raise PvenatError("spec", f"{where}: {e}") from None
    if public[1] - public[0] != guest[1] - guest[0]:
        raise PvenatError("spec", f"{where}: {_clip(text)} maps {public[1] - public[0] + 1} "
                          f"public ports to {guest[1] - guest[0] + 1} guest ports; both sides must "
                          "be the same length")
    return [Forward(p, public, guest, allow, origin)
            for p in _PROTOS[(m.group(3) or "tcp").lower()]]


def _parse_allow(at, node):
    """Source networks, IPv4 or IPv6: each family's rules take that family's sources."""
    items = node.items if isinstance(node, yamlstrict.Seq) else (node,)
    out = []
    for item in items:
        text = _text(item)
        try:
            net = ipaddress.ip_network(text or "", strict=True)
        except ValueError as e:
            hint = ""
            try:
                hint = f" (did you mean {ipaddress.ip_network(text, strict=False)}?)"
            except (ValueError, TypeError):
                pass
            raise PvenatError("spec", f"{at(item.line)}: allow: {_show(item)} is "
                              f"not an IPv4 or IPv6 address or network{hint}: "
                              f"{str(e)[:80]}") from None
        out.append(str(net))
    if not out:
        raise PvenatError("spec", f"{at(node.line)}: 'allow' is empty, which would "
                          "let nobody in; list sources or remove the key")
    return tuple(out)


def _parse_tags(who, tags):
    """pvenat-PORT and pvenat-FIRST-LAST tags: that port or range, TCP and UDP. In any
    case: PVE's tag pattern ignores case, and the datacenter option tag-style
    case-sensitive=1 keeps it (pve-common PVE/JSONSchema.pm, pve-guest-common
    PVE/GuestHelpers.pm get_unique_tags)."""
    out = []
    for tag in filter(None, _TAG_SPLIT.split(tags)):
        if not tag.lower().startswith("pvenat"):
            continue
        m = _TAG.fullmatch(tag.lower())
        if not m:
            raise PvenatError("spec", f"{who}: tag {_clip(tag)} looks like a pvenat tag "
                              "but is not one; use pvenat-PORT or pvenat-FIRST-LAST, such as "
                              "pvenat-18080 or pvenat-10000-10099")
        try:
            lo, hi = parse_range(m.group(1))
        except ValueError as e:
            raise PvenatError("spec", f"{who}: tag {tag!r}: {e}") from None
        out.append([Forward(p, (lo, hi), (lo, hi), (), f"tag {tag}") for p in ("tcp", "udp")])
    return out


class Nic(NamedTuple):
    """A guest NIC (netN) as its config describes it."""

    index: int
    bridge: str  # the bridge its port ends up on
    tagged_on: str  # the bridge named with a tag= that moved it elsewhere ("" if none)
    mac: str  # "" when the config names none
    ip: str  # its static IPv4 (LXC ip=, QEMU cloud-init ipconfigN), "" if none
    ip6: str = ""  # its static IPv6 (LXC ip6=, cloud-init ipconfigN ip6=), "" if none


_MAC = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")


def nics(kind: str, config: dict) -> list[Nic]:
    """The guest's NICs in index order. A tag= on a bridge that is not VLAN-aware puts the
    port on vmbrXv<tag> (pve-common PVE/Network.pm activate_bridge_vlan); on a VLAN-aware
    one the port stays but carries only that VLAN: either way it is not on vmbrX's own
    network."""
    out = []
    for key in sorted(config, key=lambda k: (len(k), k)):
        m = _NET_KEY.fullmatch(key)
        if not m:
            continue
        opts = _options(config[key])
        bridge, tag = opts.get("bridge", ""), opts.get("tag", "")
        mac = opts.get("hwaddr", "") if kind == "lxc" else next(
            (v for k, v in opts.items() if _MAC.fullmatch(v)), "")
        addresses = opts if kind == "lxc" else _options(config.get(f"ipconfig{m.group(1)}", ""))
        ip, ip6 = (_static(addresses.get(key)) for key in ("ip", "ip6"))
        out.append(Nic(int(m.group(1)), f"{bridge}v{tag}" if tag else bridge,
                       bridge if tag else "", mac.upper(), ip, ip6))
    return out


def _static(value) -> str:
    """An address as PVE writes it (ADDRESS/LEN), without its length; "" for dhcp, auto
    (SLAAC), manual or none (pve-container's and qemu-server's ip=/ip6= formats)."""
    return value.split("/")[0] if value and value not in ("dhcp", "auto", "manual") else ""


def nic_address(kind: str, config: dict, bridge: str) -> str | None:
    """The static IPv4 of the guest's NIC on ``bridge``: LXC ip=, QEMU cloud-init ipconfigN."""
    return next((n.ip for n in nics(kind, config) if n.bridge == bridge and n.ip), None)


def nic_address6(kind: str, config: dict, bridge: str) -> str | None:
    """The static IPv6 of the guest's NIC on ``bridge``: LXC ip6=, cloud-init ip6=."""
    return next((n.ip6 for n in nics(kind, config) if n.bridge == bridge and n.ip6), None)


def _options(value) -> dict:
    return dict(part.split("=", 1) for part in str(value).split(",") if "=" in part)

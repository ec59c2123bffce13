"""Install step, with ipv6 on: IPv6 forwarding, now and at every boot (/etc/sysctl.d),
without the host losing its own IPv6 route. With ipv6 off: a proposal, when wan_bridge
has a global IPv6 address.

Turning forwarding on purges, at once, every default route learned from router
advertisements on an interface whose accept_ra is not 2 (Linux net/ipv6/route.c
__rt6_purge_dflt_routers), and a forwarding interface with accept_ra=1 ignores the next
advertisements. So, in this order: accept_ra=2 on each interface that has such a route
and on wan_bridge when its accept_ra is 1; proxy_ndp=1 on wan_bridge when the prefix is
on the upstream router's link (on-link: the host answers its neighbour solicitations
for the guests); forwarding last. At boot systemd-sysctl applies the forwarding line,
and each device's lines as the device appears (systemd's udev rule 99-systemd.rules
runs it for every new network device), so the user's vmbr0 stanza stays as it is.

Afterwards, the host must still have every IPv6 default route and every global address
of wan_bridge it had before; if not, each value goes back as it was and install fails.
What was changed is recorded (ipv6_before), and uninstall puts it back.
"""

import ipaddress
import json

from .. import ipv6
from ..config import Ipv6Settings
from ..errors import PvenatError
from .actions import Action, Do, RemoveFile, diff

SYSCTL = "etc/sysctl.d/80-pvenat-ipv6.conf"
FORWARDING = "net.ipv6.conf.all.forwarding"
SET = {"accept_ra": "2", "proxy_ndp": "1", "forwarding": "1"}  # what pvenat sets, by name
WHY = {
    "accept_ra": "{dev} keeps taking router advertisements (its default route) with "
                 "forwarding on",
    "proxy_ndp": "{dev} answers the upstream router's neighbour solicitations for the "
                 "guests' addresses (on-link)",
}


def conf(dev: str, name: str) -> str:
    """The sysctl key of a device's IPv6 setting; with slashes when the name has a dot
    (a VLAN device such as vmbr0.5), as sysctl.d reads it."""
    if "." in dev:
        return f"net/ipv6/conf/{dev}/{name}"
    return f"net.ipv6.conf.{dev}.{name}"


def name_of(key: str) -> str:
    return key.replace("/", ".").rsplit(".", 1)[-1]


def dev_of(key: str) -> str:
    parts = key.split("/") if "/" in key else key.split(".")
    return "/".join(parts[3:-1]) if "/" in key else ".".join(parts[3:-1])


def install(env):
    host, system = env.host, env.system
    if host.ipv6 is None:
        _propose(env)
        if env.record.ipv6_before or system.exists(system.path(SYSCTL)):
            return uninstall(env, "ipv6 is off in the pvenat config: ")
        return None
    wan = host.wan_bridge
    addresses = wan_addresses(system, wan)
    net, why = ipv6.resolve(host.ipv6, wan, addresses)
    routes = default_routes(system)
    wanted = _wanted(system, wan, net, routes, env.record.ipv6_before)
    path = system.path(SYSCTL)
    text, old = render(wanted), system.read(path)
    live = {key: _read(system, key) for key in wanted}
    if old == text and all(live[key] == value for key, value in wanted.items()):
        return None
    changed = [key for key, value in wanted.items() if live[key] != value]
    check = (f"then check that the host still has {routes_text(routes) or 'no IPv6 default route'}"
             f" and {wan}'s {', '.join(map(str, addresses)) or 'no global address'}; "
             "else every value goes back")
    detail = "\n".join(filter(None, [
        f"# ipv6: {why}" if why else "",
        diff(path, old, text) if old != text else "",
        *[f"sysctl -w {key}={wanted[key]}" for key in changed], check if changed else ""]))
    return Action(_what(path, wanted, live),
                  Do(detail, lambda: _apply(env, wanted, path, text, old)))


def _what(path, wanted, live) -> str:
    what = f"enable IPv6 forwarding ({path}, now {live[FORWARDING]})"
    for key, value in wanted.items():
        if key != FORWARDING and live[key] != value:
            what += f"; {name_of(key)}={value} on {dev_of(key)}"
    return what


def _wanted(system, wan: str, net, routes, recorded) -> dict:
    """Key -> value, in the order they are set: accept_ra=2 where a default route came
    from router advertisements and on wan_bridge when it takes them (accept_ra 1);
    proxy_ndp=1 on wan_bridge when on-link; forwarding last. What an earlier run set
    stays wanted until uninstall."""
    devs = [dev for route in routes if route.get("protocol") == "ra"
            for dev in _devices(route)]
    if _read(system, conf(wan, "accept_ra")) == "1":
        devs.append(wan)
    devs += [dev_of(key) for key in recorded if name_of(key) == "accept_ra"]
    wanted = {conf(dev, "accept_ra"): "2" for dev in dict.fromkeys(devs)}
    proxy = [conf(wan, "proxy_ndp")] if net.upstream == "on-link" else []
    proxy += [key for key in recorded if name_of(key) == "proxy_ndp"]
    wanted.update({key: "1" for key in proxy})
    wanted = {key: value for key, value in wanted.items()
              if _read(system, key) is not None}  # a device that is gone: nothing to set
    wanted[FORWARDING] = "1"
    return wanted


def render(wanted: dict) -> str:
    lines = ["# pvenat: IPv6 for the guests (ipv6: in the pvenat config). At boot the",
             "# forwarding line applies at once, each device's line as the device appears."]
    for key, value in wanted.items():
        if key != FORWARDING:
            lines.append("# " + WHY[name_of(key)].format(dev=dev_of(key)))
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _apply(env, wanted: dict, path: str, text: str, old):
    system, wan = env.system, env.host.wan_bridge
    recorded = dict(env.record.ipv6_before)
    before = {key: _read(system, key) for key in wanted}
    forwarding = _forwarding(system)  # every device's, as 'all' sets them all
    routes, addresses = default_routes(system), _ips(wan_addresses(system, wan))
    env.record.update(system, ipv6_before=dict(
        {k: v for k, v in before.items() if v is not None}, **recorded))
    try:
        for key, value in wanted.items():
            if before[key] != value:
                system.set_sysctl(key, value)
        lost = losses(system, wan, routes, addresses)
    except (OSError, PvenatError) as e:
        lost = f"failed ({getattr(e, 'message', None) or e})"
    if lost:
        _restore(system, before, forwarding)
        env.record.update(system, ipv6_before=recorded)
        back = ", ".join(f"{k}={v}" for k, v in before.items() if v is not None and
                         v != wanted[k])
        raise PvenatError("host", f"turning on IPv6 forwarding {lost}, so every IPv6 "
                          f"setting is back as it was ({back or 'nothing had changed'}); "
                          "a route learned from router advertisements returns with the next "
                          "one. Check 'ip -6 route show default' and the accept_ra of its "
                          "interface (2 keeps it with forwarding on), or set 'ipv6: false' "
                          "in the pvenat config") from None
    if old != text:
        system.write(path, text)


def losses(system, wan: str, routes: list, addresses: set) -> str:
    """What the host lost of its IPv6 default routes and wan_bridge's global addresses,
    in words ("" for nothing)."""
    now = {route_key(r) for r in default_routes(system)}
    gone = [r for r in routes if route_key(r) not in now]
    gone_addresses = sorted(addresses - _ips(wan_addresses(system, wan)), key=str)
    out = []
    if gone:
        out.append(f"lost the host's IPv6 {routes_text(gone)}")
    if gone_addresses:
        out.append(f"took {', '.join(map(str, gone_addresses))} off {wan}")
    return " and ".join(out)


def _restore(system, before: dict, forwarding: dict):
    """Forwarding first (setting 'all' sets every device's), each device's own
    forwarding as it was, then the rest."""
    if before.get(FORWARDING) is not None and _read(system, FORWARDING) != before[FORWARDING]:
        system.set_sysctl(FORWARDING, before[FORWARDING])
    for dev, value in forwarding.items():
        key = conf(dev, "forwarding")
        if _read(system, key) not in (None, value):
            system.set_sysctl(key, value)
    for key, value in before.items():
        if key != FORWARDING and value is not None and _read(system, key) != value:
            system.set_sysctl(key, value)


def uninstall(env, lead: str = ""):
    """The sysctl file goes, and each value install changed is put back, forwarding
    first (then no accept_ra of 1 meets forwarding on)."""
    system = env.system
    path = system.path(SYSCTL)
    changes, what = [], []
    if system.exists(path):
        changes.append(RemoveFile(path))
        what.append(f"remove the IPv6 forwarding settings ({path})")
    before = env.record.ipv6_before
    back = {key: before[key] for key in sorted(before, key=lambda k: k != FORWARDING)
            if _read(system, key) not in (None, before[key])}
    if back:
        def put_back():
            for key, value in back.items():
                system.set_sysctl(key, value)
        changes.append(Do("\n".join(f"sysctl -w {k}={v}" for k, v in back.items()), put_back))
        what.append("put back " + ", ".join(f"{name_of(k)}={v}" + (
            "" if k == FORWARDING else f" on {dev_of(k)}") for k, v in back.items()))
    if not changes and not before:
        return None
    if not changes:
        what.append("the IPv6 settings are as they were before install")
    return Action(lead + "; ".join(what), *changes, remember={"ipv6_before": {}})


def _propose(env):
    """ipv6 off and wan_bridge with a global address: say how to turn it on (install
    writes no config of the user's), unless the config says ipv6: already."""
    system, wan = env.system, env.host.wan_bridge
    addresses = wan_addresses(system, wan)
    config = system.read(env.config_path) or ""
    if not addresses or any(line.startswith("ipv6:") for line in config.splitlines()):
        return
    try:
        _, why = ipv6.resolve(Ipv6Settings(), wan, addresses)
    except PvenatError:  # no /64 to take the prefix from
        env.warnings.append(
            f"{wan} has {addresses[0]}: add 'ipv6: {{prefix: YOUR/64}}' to "
            f"{env.config_path}, with the /64 your hoster assigned, to give guests IPv6")
        return
    shown = next(a for a in addresses if a.network.prefixlen <= 64)
    env.warnings.append(f"{wan} has {shown}: add 'ipv6: true' to {env.config_path} to give "
                        f"guests IPv6 ({why})")


def wan_addresses(system, wan: str) -> list:
    """wan_bridge's global IPv6 addresses, as interfaces; none when it does not exist."""
    try:
        out = system.run("ip", "-j", "-6", "addr", "show", "dev", wan, "scope", "global")
    except PvenatError:
        return []
    return [ipaddress.IPv6Interface(f"{a['local']}/{a['prefixlen']}")
            for link in json.loads(out or "[]") for a in link.get("addr_info", [])
            if a.get("family") == "inet6"]


def default_routes(system) -> list:
    return json.loads(system.run("ip", "-j", "-6", "route", "show", "default") or "[]")


def _devices(route) -> list:
    return [route["dev"]] if route.get("dev") else [
        hop["dev"] for hop in route.get("nexthops", []) if hop.get("dev")]


def route_key(route) -> tuple:
    return (route.get("gateway"), tuple(_devices(route)))


def routes_text(routes) -> str:
    return ", ".join(
        f"default route via {r.get('gateway', '?')} dev {'/'.join(_devices(r))}"
        + (" (from router advertisements)" if r.get("protocol") == "ra" else "")
        for r in routes)


def _ips(addresses) -> set:
    return {a.ip for a in addresses}


def _read(system, key: str):
    try:
        return system.sysctl(key)
    except FileNotFoundError:
        return None


def _forwarding(system) -> dict:
    out = {}
    for dev in system.sysctl_names("net.ipv6.conf"):
        value = _read(system, conf(dev, "forwarding"))
        if value is not None:
            out[dev] = value
    return out

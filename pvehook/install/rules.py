"""Install step: pvenat's base rules (outbound SNAT, hairpin MASQUERADE, the NAT boundary,
DHCP and DNS to the host, the jumps); on uninstall every rule of pvenat's, guests'
included, in every table pvenat writes (rules.Backend.install, .uninstall), and the
guests' IPv6 routes, neighbour answers and the host's IPv6 lan address
(neighbours.Neighbours)."""

from .. import files, hostnet
from ..neighbours import Neighbours
from .actions import Action, Do


def install(env):
    public = hostnet.public(env.host)
    script = env.rules.install(public, dry_run=True).text
    if not script:
        return None
    return Action("add pvenat's base rules: outbound SNAT, hairpin, NAT boundary, "
                  f"DHCP and DNS in, jumps ({families(env.host)})",
                  Do(script, lambda: _locked(env, lambda: env.rules.install(public))))


def uninstall(env):
    script = env.rules.uninstall(dry_run=True).text
    routes = Neighbours(env.host, None, env.places.state_dir)
    routed = routes.update({}, dry_run=True)
    if not script and not routed:
        return None
    what = f"remove every pvenat chain and jump ({families(env.host)})" if script else ""
    if routed:
        what += (" and " if what else "remove ") + "the guests' IPv6 routes and neighbour " \
            "answers, the host's IPv6 address on the lan bridge"

    def undo():
        env.rules.uninstall()
        routes.update({})
    return Action(what, Do(script + (f"# ip -6 -batch\n{routed}" if routed else ""),
                           lambda: _locked(env, undo)))


def families(host) -> str:
    return "iptables, ip6tables" if host.ipv6 else "iptables"


def _locked(env, change):
    with files.locked(env.places.lock_path):
        change()

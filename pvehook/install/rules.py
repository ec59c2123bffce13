"""Install step: pvenat's base rules (outbound SNAT, hairpin MASQUERADE, the NAT boundary,
DHCP and DNS to the host, the jumps); on uninstall every rule of pvenat's, guests'
included, in every table pvenat writes (rules.Backend.install, .uninstall)."""

from .. import files, hostnet
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
    if not script:
        return None
    return Action(f"remove every pvenat chain and jump ({families(env.host)})",
                  Do(script, lambda: _locked(env, env.rules.uninstall)))


def families(host) -> str:
    return "iptables, ip6tables" if host.ipv6 else "iptables"


def _locked(env, change):
    with files.locked(env.places.lock_path):
        change()

"""Install step: pvenat's base rules (outbound SNAT, hairpin MASQUERADE, the NAT boundary,
DHCP and DNS to the host, the jumps); on uninstall every pvenat chain and jump, guests'
included, in every table pvenat writes (ruleset.TABLES)."""

from .. import hostnet, index, netfilter, ruleset
from .actions import Action, Do


def install(env):
    public = hostnet.public(env.host)
    current = env.kernel.read()
    script = ruleset.restore_script(current, ruleset.with_base(current, env.host, public))
    if not script:
        return None
    return Action("add pvenat's base rules: outbound SNAT, hairpin, NAT boundary, "
                  "DHCP and DNS in, jumps (iptables)",
                  Do(script, lambda: _change(env, lambda cur: ruleset.with_base(
                      cur, env.host, public))))


def uninstall(env):
    empty = {t: ruleset.Table() for t in ruleset.TABLES}
    script = ruleset.restore_script(env.kernel.read(), empty)
    if not script:
        return None
    return Action("remove every pvenat chain and jump (iptables)",
                  Do(script, lambda: _change(env, lambda cur: empty)))


def _change(env, wanted):
    with netfilter.locked(env.places.lock_path):
        index.drop(env.places.state_dir)
        netfilter.update(env.kernel, lambda current: (wanted(current), None))

"""Install step: the boot unit (pvenat sync before guests start), the sync timer and, with
dhcp on, the DHCP server (pvenat-dhcp.service)."""

from ..context import units
from .actions import Action, Run


def install(env):
    system = env.system
    wanted = units(env.host)
    missing = [unit for unit, target in wanted.items()
               if not system.exists(system.path(f"etc/systemd/system/{target}.wants/{unit}"))]
    if not missing:
        return None
    now = ["--now"] if system.root == "/" else []  # offline under another root
    return Action(f"enable {', '.join(missing)}", Run(*system.systemctl("enable", *now, *missing)),
                  remember={"units": sorted(set(env.record.units) | set(wanted))})


def uninstall(env):
    if not env.record.units:
        return None
    now = ["--now"] if env.system.root == "/" else []
    return Action(f"disable and stop {', '.join(env.record.units)}",
                  Run(*env.system.systemctl("disable", *now, *env.record.units)),
                  remember={"units": []})

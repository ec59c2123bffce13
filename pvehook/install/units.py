"""Install step: the boot unit (pvenat sync before guests start) and the sync timer."""

from ..context import UNITS
from .actions import Action, Run

WANTED_BY = ("multi-user.target.wants", "timers.target.wants")


def install(env):
    system = env.system
    if all(system.exists(system.path(f"etc/systemd/system/{target}/{unit}"))
           for unit, target in zip(UNITS, WANTED_BY)):
        return None
    now = ["--now"] if system.root == "/" else []  # offline under another root
    return Action("enable the boot unit and the sync timer",
                  Run(*system.systemctl("enable", *now, *UNITS)), remember={"units": list(UNITS)})


def uninstall(env):
    if not env.record.units:
        return None
    return Action("disable the boot unit and the sync timer",
                  Run(*env.system.systemctl("disable", *UNITS)), remember={"units": []})

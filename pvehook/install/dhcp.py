"""Install step: on uninstall, the DHCP server's files (its hosts file and lease database);
the server itself is a unit (install/units.py), its leases come from sync and the hooks."""

from .. import dhcp
from .actions import Action, RemoveFile


def install(env):
    return None


def uninstall(env):
    present = [dhcp.path(env.places, name) for name in (dhcp.HOSTS, dhcp.LEASE_DB)
               if env.system.exists(dhcp.path(env.places, name))]
    if not present:
        return None
    return Action("remove the DHCP leases", *[RemoveFile(p) for p in present])

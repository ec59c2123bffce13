"""Install step: IPv4 forwarding, on now and at every boot (/etc/sysctl.d)."""

from .actions import Action, Do, RemoveFile, WriteFile

SYSCTL = "etc/sysctl.d/80-pvenat.conf"
KEY = "net.ipv4.ip_forward"
TEXT = ("# pvenat: guests on the internal bridge reach the internet through the host\n"
        f"{KEY} = 1\n")


def install(env):
    system = env.system
    path = system.path(SYSCTL)
    old, live = system.read(path), system.sysctl(KEY)
    if old == TEXT and live == "1":
        return None
    before = env.record.ip_forward_before or live
    return Action(f"enable IPv4 forwarding ({path}, now {live})",
                  WriteFile(path, TEXT, old), Do("", lambda: system.set_sysctl(KEY, "1")),
                  remember={"ip_forward_before": before})


def uninstall(env):
    system = env.system
    path = system.path(SYSCTL)
    changes, what = [], []
    if system.exists(path):
        changes.append(RemoveFile(path))
        what.append(f"remove the IPv4 forwarding setting ({path})")
    if env.record.ip_forward_before == "0":
        changes.append(Do(f"sysctl {KEY}=0", lambda: system.set_sysctl(KEY, "0")))
        what.append("turn IPv4 forwarding back off")
    if not changes:
        return None
    return Action("; ".join(what), *changes, remember={"ip_forward_before": ""})

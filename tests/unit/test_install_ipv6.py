"""install's IPv6 step planned and applied against a small model of the kernel: a /proc
tree under a temporary folder, and 'ip' answered from the model, where turning forwarding
on purges default routes learned from router advertisements on interfaces whose
accept_ra is not 2 (Linux net/ipv6/route.c __rt6_purge_dflt_routers)."""

import io
import json
import os

import pytest

from pvehook.config import HostConfig, Ipv6Settings
from pvehook.context import Places
from pvehook.errors import PvenatError
from pvehook.install import Env, forwarding6, run_actions
from pvehook.install.record import Record
from pvehook.install.system import System

RA_ROUTE = {"dst": "default", "gateway": "fe80::1", "dev": "vmbr0", "protocol": "ra",
            "metric": 1024, "flags": [], "pref": "medium"}
STATIC_ROUTE = dict(RA_ROUTE, protocol="boot")


class Kernel(System):
    """A host: sysctls as files under root/proc, wan_bridge vmbr0 with ``addresses``, and
    ``routes``; ``honest=False`` makes a write to accept_ra land beside the kernel (what
    the lab's rollback test does with a bind mount)."""

    def __init__(self, root, addresses=("2001:db8:1:2::2/64",), routes=(RA_ROUTE,),
                 accept_ra="1", devices=("vmbr0", "vmbr1", "eno1")):
        proc = os.path.join(root, "proc")
        super().__init__(root, Places(state_dir=os.path.join(root, "state"),
                                      sysfs=os.path.join(root, "sys"), proc=proc))
        self.addresses = list(addresses)
        self.routes = [dict(r) for r in routes]
        self.honest = True
        self.commands = []
        for dev in ("all", "default", *devices):
            for name, value in (("forwarding", "0"), ("accept_ra", accept_ra),
                                ("proxy_ndp", "0")):
                path = self._sysctl_path(forwarding6.conf(dev, name))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(value + "\n")
        self.kernel_accept_ra = {}

    def set_sysctl(self, key, value):
        self.commands.append(f"{key}={value}")
        dev, name = forwarding6.dev_of(key), forwarding6.name_of(key)
        if name == "accept_ra" and not self.honest:
            self.kernel_accept_ra[dev] = self.sysctl(key)  # the kernel keeps its value
        super().set_sysctl(key, value)
        if name == "forwarding" and dev == "all":
            for d in self.sysctl_names("net.ipv6.conf"):
                super().set_sysctl(forwarding6.conf(d, "forwarding"), value)
        if name == "forwarding" and value == "1":
            self.routes = [r for r in self.routes if r["protocol"] != "ra" or self.kernel_ra(
                r["dev"]) == "2"]

    def kernel_ra(self, dev):
        return self.kernel_accept_ra.get(dev) or self.sysctl(forwarding6.conf(dev, "accept_ra"))

    def run(self, *argv):
        if argv[:4] == ("ip", "-j", "-6", "route"):
            return json.dumps(self.routes)
        if argv[:4] == ("ip", "-j", "-6", "addr"):
            return json.dumps([{"ifname": "vmbr0", "addr_info": [
                {"family": "inet6", "local": a.split("/")[0], "prefixlen": int(a.split("/")[1]),
                 "scope": "global"} for a in self.addresses]}])
        raise AssertionError(argv)


class Ctx:
    def __init__(self, host, places):
        self.host, self.places, self.pve, self.rules = host, places, None, None


def env_for(system, ipv6=Ipv6Settings(), config="wan_bridge: vmbr0\n"):
    path = os.path.join(system.root, "pvenat.yaml")
    with open(path, "w") as f:
        f.write(config)
    return Env(Ctx(HostConfig(ipv6=ipv6), system.places), system, path)


def plan(env):
    return forwarding6.install(env)


def apply(env, action):
    out = io.StringIO()
    run_actions(env, [action], False, out)
    return out.getvalue()


def sysctl_file(system):
    return system.read(system.path(forwarding6.SYSCTL))


def test_on_link_host_with_a_route_from_router_advertisements(tmp_path):
    system = Kernel(str(tmp_path))
    env = env_for(system)
    action = plan(env)
    assert action.what == (f"enable IPv6 forwarding ({system.path(forwarding6.SYSCTL)}, now 0)"
                           "; accept_ra=2 on vmbr0; proxy_ndp=1 on vmbr0")
    detail = action.detail()
    assert "# ipv6: prefix 2001:db8:1:2::/64: the /64 of 2001:db8:1:2::2/64 on vmbr0; " \
        "on-link: " in detail
    # accept_ra before forwarding, in the file as on the kernel
    assert detail.index("sysctl -w net.ipv6.conf.vmbr0.accept_ra=2") < \
        detail.index("sysctl -w net.ipv6.conf.vmbr0.proxy_ndp=1") < \
        detail.index("sysctl -w net.ipv6.conf.all.forwarding=1")
    assert "then check that the host still has default route via fe80::1 dev vmbr0 (from " \
        "router advertisements) and vmbr0's 2001:db8:1:2::2/64" in detail
    assert not os.path.exists(system.path(forwarding6.SYSCTL))  # planning changes nothing
    assert system.commands == []

    apply(env, action)
    assert system.commands == ["net.ipv6.conf.vmbr0.accept_ra=2",
                               "net.ipv6.conf.vmbr0.proxy_ndp=1",
                               "net.ipv6.conf.all.forwarding=1"]
    assert system.routes == [RA_ROUTE]  # kept
    assert [line for line in sysctl_file(system).splitlines()
            if not line.startswith("#")] == [
        "net.ipv6.conf.vmbr0.accept_ra = 2", "net.ipv6.conf.vmbr0.proxy_ndp = 1",
        "net.ipv6.conf.all.forwarding = 1"]
    assert Record.load(system).ipv6_before == {
        "net.ipv6.conf.vmbr0.accept_ra": "1", "net.ipv6.conf.vmbr0.proxy_ndp": "0",
        "net.ipv6.conf.all.forwarding": "0"}
    assert plan(Env(env_ctx(env), system, env.config_path)) is None  # nothing to change


def env_ctx(env):
    return Ctx(env.host, env.places)


def test_routed_prefix_with_a_static_gateway_needs_forwarding_alone(tmp_path):
    """A /128 on vmbr0 and the prefix given: routed; accept_ra 0 and a static route: no
    accept_ra, no proxy_ndp."""
    system = Kernel(str(tmp_path), addresses=("2001:db8:ffff::2/128",),
                    routes=(STATIC_ROUTE,), accept_ra="0")
    env = env_for(system, Ipv6Settings(prefix="2001:db8:1:2::/64"))
    action = plan(env)
    assert action.what.endswith(", now 0)")
    apply(env, action)
    assert system.commands == ["net.ipv6.conf.all.forwarding=1"]
    assert system.routes == [STATIC_ROUTE]


def test_accept_ra_1_on_wan_bridge_without_a_route_yet_still_becomes_2(tmp_path):
    system = Kernel(str(tmp_path), routes=(STATIC_ROUTE,))
    action = plan(env_for(system, Ipv6Settings(upstream="routed")))
    assert "accept_ra=2 on vmbr0" in action.what and "proxy_ndp" not in action.what


def test_a_route_from_router_advertisements_on_another_interface_is_kept_too(tmp_path):
    system = Kernel(str(tmp_path), routes=(STATIC_ROUTE, dict(RA_ROUTE, dev="eno1")),
                    accept_ra="0")
    system.set_sysctl("net.ipv6.conf.eno1.accept_ra", "1")
    system.commands.clear()
    env = env_for(system)
    apply(env, plan(env))
    assert system.commands[0] == "net.ipv6.conf.eno1.accept_ra=2"
    assert len(system.routes) == 2


def test_a_lost_route_puts_every_value_back(tmp_path):
    """accept_ra=2 does not reach the kernel: forwarding purges the route, install puts
    forwarding, accept_ra and proxy_ndp back, writes no file and records nothing."""
    system = Kernel(str(tmp_path))
    system.honest = False
    env = env_for(system)
    action = plan(env)
    with pytest.raises(PvenatError) as e:
        apply(env, action)
    assert e.value.code == "host"
    assert e.value.message.startswith(
        "turning on IPv6 forwarding lost the host's IPv6 default route via fe80::1 dev vmbr0 "
        "(from router advertisements), so every IPv6 setting is back as it was "
        "(net.ipv6.conf.vmbr0.accept_ra=1, net.ipv6.conf.vmbr0.proxy_ndp=0, "
        "net.ipv6.conf.all.forwarding=0)")
    for dev in ("all", "default", "vmbr0", "vmbr1", "eno1"):
        assert system.sysctl(forwarding6.conf(dev, "forwarding")) == "0"
    assert system.sysctl("net.ipv6.conf.vmbr0.proxy_ndp") == "0"
    assert system.sysctl("net.ipv6.conf.vmbr0.accept_ra") == "1"
    assert sysctl_file(system) is None
    assert not os.path.exists(system.path("etc/pvenat/installed.json"))


def test_a_lost_address_puts_every_value_back(tmp_path):
    system = Kernel(str(tmp_path), routes=(STATIC_ROUTE,), accept_ra="0")
    env = env_for(system)
    action = plan(env)
    real = system.set_sysctl

    def dropping(key, value):
        real(key, value)
        if key == forwarding6.FORWARDING and value == "1":
            system.addresses = []
    system.set_sysctl = dropping
    with pytest.raises(PvenatError, match="took 2001:db8:1:2::2 off vmbr0, so every IPv6 "
                       "setting is back"):
        apply(env, action)
    assert system.sysctl(forwarding6.FORWARDING) == "0"


def test_a_device_forwarding_of_its_own_comes_back_after_a_rollback(tmp_path):
    system = Kernel(str(tmp_path), routes=(dict(RA_ROUTE, dev="vmbr1"),))
    system.set_sysctl("net.ipv6.conf.vmbr1.accept_ra", "2")
    system.set_sysctl("net.ipv6.conf.eno1.forwarding", "1")  # keeps vmbr1's route
    system.set_sysctl("net.ipv6.conf.vmbr1.accept_ra", "1")
    system.honest = False
    env = env_for(system)
    with pytest.raises(PvenatError):
        apply(env, plan(env))
    assert system.sysctl("net.ipv6.conf.eno1.forwarding") == "1"
    assert system.sysctl("net.ipv6.conf.vmbr0.forwarding") == "0"


def test_uninstall_puts_back_forwarding_first(tmp_path):
    system = Kernel(str(tmp_path))
    env = env_for(system)
    apply(env, plan(env))
    system.commands.clear()
    env = Env(env_ctx(env), system, env.config_path)
    action = forwarding6.uninstall(env)
    assert action.what == (f"remove the IPv6 forwarding settings ("
                           f"{system.path(forwarding6.SYSCTL)}); put back forwarding=0, "
                           "accept_ra=1 on vmbr0, proxy_ndp=0 on vmbr0")
    apply(env, action)
    assert system.commands == ["net.ipv6.conf.all.forwarding=0",
                               "net.ipv6.conf.vmbr0.accept_ra=1",
                               "net.ipv6.conf.vmbr0.proxy_ndp=0"]
    assert sysctl_file(system) is None
    assert not os.path.exists(system.path("etc/pvenat/installed.json"))
    assert forwarding6.uninstall(Env(env_ctx(env), system, env.config_path)) is None


def test_a_second_install_keeps_the_first_values_before(tmp_path):
    """A value an earlier run changed is restored to what it was before that run."""
    system = Kernel(str(tmp_path))
    env = env_for(system)
    apply(env, plan(env))
    os.remove(system.path(forwarding6.SYSCTL))
    env = Env(env_ctx(env), system, env.config_path)
    action = plan(env)
    assert action.what.endswith("now 1)")
    apply(env, action)
    assert Record.load(system).ipv6_before["net.ipv6.conf.all.forwarding"] == "0"


def test_ipv6_turned_off_in_the_config_takes_it_back(tmp_path):
    system = Kernel(str(tmp_path))
    env = env_for(system)
    apply(env, plan(env))
    env = env_for(system, ipv6=None, config="ipv6: false\n")
    action = plan(env)
    assert action.what.startswith("ipv6 is off in the pvenat config: remove the IPv6 "
                                  "forwarding settings")
    apply(env, action)
    assert system.sysctl(forwarding6.FORWARDING) == "0"
    assert env.warnings == []  # ipv6: is in the config: no proposal


def test_ipv6_off_proposes_it_when_wan_bridge_has_a_global_address(tmp_path):
    system = Kernel(str(tmp_path))
    env = env_for(system, ipv6=None)
    assert plan(env) is None
    assert env.warnings == [
        f"vmbr0 has 2001:db8:1:2::2/64: add 'ipv6: true' to {env.config_path} to give "
        "guests IPv6 (prefix 2001:db8:1:2::/64: the /64 of 2001:db8:1:2::2/64 on vmbr0; "
        "on-link: 2001:db8:1:2::2/64 on vmbr0 puts the /64 on the upstream router's link, "
        "so the host answers its neighbour solicitations for running guests)"]
    assert system.commands == []


def test_ipv6_off_and_only_a_128_proposes_a_prefix(tmp_path):
    env = env_for(Kernel(str(tmp_path), addresses=("2001:db8::2/128",)), ipv6=None)
    assert plan(env) is None
    assert env.warnings == [f"vmbr0 has 2001:db8::2/128: add 'ipv6: {{prefix: YOUR/64}}' to "
                            f"{env.config_path}, with the /64 your hoster assigned, to give "
                            "guests IPv6"]


def test_ipv6_off_and_no_global_address_says_nothing(tmp_path):
    env = env_for(Kernel(str(tmp_path), addresses=()), ipv6=None)
    assert plan(env) is None and env.warnings == []


def test_a_vlan_device_key_has_slashes(tmp_path):
    system = Kernel(str(tmp_path), devices=("vmbr0.5",), routes=(dict(RA_ROUTE, dev="vmbr0.5"),),
                    accept_ra="0")
    system.set_sysctl("net/ipv6/conf/vmbr0.5/accept_ra", "1")
    env = env_for(system, Ipv6Settings(prefix="2001:db8:1:2::/64", upstream="routed"))
    action = plan(env)
    assert "accept_ra=2 on vmbr0.5" in action.what
    assert "net/ipv6/conf/vmbr0.5/accept_ra = 2" in action.detail()

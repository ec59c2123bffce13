"""pvenat demo: a simulated PVE host in network namespaces, measured with real traffic.

  make demo          bring it up, install pvenat, start two guests, print the flow table
                     (pvenat beside the plain iptables recipe), tear it all down
  make demo KEEP=1   leave it running and print what to try
  make demo-down     remove a kept demo

Needs root; touches nothing outside its own namespaces (named pvndemo-*).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lab import IFUPDOWN2, LISTED_IP, PEER_IP, PUBLIC_IP, REPO, Lab, pve_root, sh  # noqa: E402

PREFIX = "pvndemo"
STATE = "/run/pvenat-demo.json"
NOTES_101 = """Web server (a QEMU VM).

```pvenat
forwards:
  - 12222:22                 # ssh on public port 12222
  - 10000-10009/both         # a TCP and UDP range
  - ports: 13389:3389
    allow: [192.0.2.7]       # only this source may connect
```
"""
GUESTS = {
    101: {"kind": "qemu", "address": "172.22.161.170",
          "serve": ["tcp:22", "tcp:10000", "udp:10000", "tcp:3389"],
          "config": {"description": NOTES_101, "net0": "virtio=BC:24:11:00:00:01,bridge=vmbr1",
                     "ipconfig0": "ip=172.22.161.170/24,gw=172.22.161.254"}},
    102: {"kind": "lxc", "address": "172.22.161.171", "serve": ["tcp:11000", "udp:11000"],
          "config": {"tags": "pvenat-11000", "net0": "name=eth0,bridge=vmbr1,"
                     "hwaddr=BC:24:11:00:00:02,ip=172.22.161.171/24,gw=172.22.161.254,"
                     "type=veth"}},
}
# The recipe people copy by hand, for the same forwards: MASQUERADE out, DNAT in on both
# bridges with -d, the allow-list as -s.
PLAIN = [["-t", "nat", "-A", "POSTROUTING", "-s", "172.22.161.0/24", "-o", "vmbr0", "-j",
          "MASQUERADE"]] + [
    ["-t", "nat", "-A", "PREROUTING", "-i", bridge, "-d", PUBLIC_IP, *source, "-p", proto,
     "--dport", port, "-j", "DNAT", "--to-destination", to]
    for bridge in ("vmbr0", "vmbr1") for source, proto, port, to in (
        ((), "tcp", "12222", "172.22.161.170:22"), ((), "tcp", "10000:10009", "172.22.161.170"),
        ((), "udp", "10000:10009", "172.22.161.170"),
        (("-s", LISTED_IP), "tcp", "13389", "172.22.161.170:3389"),
        ((), "tcp", "11000", "172.22.161.171"), ((), "udp", "11000", "172.22.161.171"))]
NAMES = {"g101": "VM 101", "g102": "CT 102", "inet": "the internet"}


def flows(lab):
    """(flow, expected answer, what came back) for every flow worth knowing. An answer is
    "GUEST SOURCE-IT-SAW"; a source of None means any source will do."""
    a, b = lab.ns(101), lab.ns(102)
    return [(name, want, lab.probe(ns, proto, host, port, *src)) for name, ns, proto, host,
            port, src, want in (
        ("internet -> public:12222 -> VM 101 (tcp)", lab.inet, "tcp", PUBLIC_IP, 12222, (),
         f"g101 {PEER_IP}"),
        ("internet -> public:10000 -> VM 101 (udp)", lab.inet, "udp", PUBLIC_IP, 10000, (),
         f"g101 {PEER_IP}"),
        ("CT 102 -> public:12222 -> VM 101 (hairpin)", b, "tcp", PUBLIC_IP, 12222, (),
         "g101 None"),
        ("VM 101 -> public:12222 -> itself", a, "tcp", PUBLIC_IP, 12222, (), "g101 None"),
        ("host -> public:11000 -> CT 102", lab.host, "tcp", PUBLIC_IP, 11000, (),
         f"g102 {PUBLIC_IP}"),
        ("VM 101 -> internet (SNAT)", a, "tcp", PEER_IP, 80, (), f"inet {PUBLIC_IP}"),
        ("VM 101 -> internet:10000, a forwarded number", a, "tcp", PEER_IP, 10000, (),
         f"inet {PUBLIC_IP}"),
        ("allow-list: listed 192.0.2.7 -> public:13389", lab.inet, "tcp", PUBLIC_IP, 13389,
         (LISTED_IP,), f"g101 {LISTED_IP}"),
        ("allow-list: other source -> public:13389", lab.inet, "tcp", PUBLIC_IP, 13389, (),
         "refused"))]


def works(want, got) -> bool:
    if len(want.split()) == 1:  # "refused", "timeout"
        return got == want
    who, source = want.split()
    return got.split()[0] == who and source in ("None", got.split()[-1])


def verdict(want, got):
    """What happened, in words; '!' marks what the flow should not do."""
    if got in ("refused", "timeout"):
        said = "refused" if got == "refused" else "no answer"
    elif got.split()[0] in NAMES:
        said = f"reached {NAMES[got.split()[0]]}"
        if not works(want, got) and works(f"{got.split()[0]} None", got):
            said += f" as {got.split()[-1]}"
    else:
        said = got
    return said if works(want, got) else f"! {said}"


class Failed(Exception):
    """A step of the demo failed: one line says which and what to do; nothing runs after."""


def must(proc, what, codes=(0,)):
    """A pvenat run that must succeed; its output, indented."""
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode not in codes:
        last = out.splitlines()[-1] if out else f"exit {proc.returncode}"
        raise Failed(f"{what} failed: {last}")
    return "   " + out.replace("\n", "\n   ")


def main():
    if os.geteuid() != 0:
        sys.exit("demo: run as root (network namespaces, iptables)")
    keep = os.environ.get("KEEP") == "1"
    if not os.access(os.path.join(IFUPDOWN2, "ifquery"), os.X_OK):
        sys.exit("demo: the lab's own ifupdown2 is missing; run make deps-demo")
    if os.path.exists(STATE) or any(n.startswith(PREFIX + "-")
                                    for n in sh("ip", "netns", "list").stdout.split()):
        sys.exit("demo: a demo is still up (make demo KEEP=1); run make demo-down first")
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    lab = root = None
    try:
        print("== a PVE host in namespaces: vmbr0 203.0.113.10 with an internet peer; "
              "a fake PVE API")
        lab = Lab(GUESTS, lan_bridge=False, prefix=PREFIX)
        root = pve_root(tempfile.mkdtemp(prefix="pvenat-demo-root-"))
        return run(lab, root, keep)
    except (Failed, RuntimeError, OSError) as e:  # RuntimeError: a lab command (lab.sh)
        keep = False
        print(f"demo: {e}\ndemo: stopped there; nothing of it is left. Run 'make deps-demo' "
              "if a tool is missing, or report this line with 'make demo' output",
              file=sys.stderr)
        return 1
    finally:
        if not keep:  # a kept demo is for make demo-down to remove
            if lab:
                lab.close()
            if root:
                shutil.rmtree(root, ignore_errors=True)


def start(lab, vmid):
    """The guest's start as PVE runs it: pre-start, its NIC plugged, post-start."""
    lines = [must(lab.hook(vmid, "pre-start"), f"the pre-start hook of {vmid}")]
    if not os.path.exists(f"/run/netns/{lab.ns(vmid)}"):
        lab.add_guest(vmid)
    lines.append(must(lab.hook(vmid, "post-start"), f"the post-start hook of {vmid}"))
    return lines


def run(lab, root, keep):
    print("== pvenat install (creates vmbr1 172.22.161.254/24 with ifupdown2, SNAT, ...)")
    print(must(lab.pvenat("install", "--root", root), "pvenat install"))
    lab.start_dhcp_server()  # what the pvenat-dhcp.service it enabled runs
    print("== two guests on vmbr1 (tap101i0: a QEMU VM, veth102i0: an LXC container), "
          "their hook phases")
    for vmid in GUESTS:
        print(must(lab.pvenat("attach", str(vmid)), f"pvenat attach {vmid}"))
        print(*start(lab, vmid), sep="\n")
    lab.sysctl(lab.host, "net.bridge.bridge-nf-call-iptables", 1)  # as pve-firewall does
    measured = flows(lab)
    print("== the same flows with the plain recipe (pvenat's rules removed)")
    for vmid in GUESTS:
        must(lab.hook(vmid, "post-stop"), f"the post-stop hook of {vmid}")
    # exit 1: it keeps vmbr1, which the guests are on; every rule of pvenat's must be gone
    must(lab.pvenat("uninstall", "--root", root), "pvenat uninstall", codes=(0, 1))
    if "PVENAT" in lab.iptables_save():
        raise Failed("pvenat uninstall left rules of pvenat's (ip netns exec "
                     f"{lab.host} iptables-legacy-save)")
    for rule in PLAIN:
        lab.iptables(*rule)
    plain = flows(lab)
    width = max(len(f[0]) for f in measured) + 2
    cell = max(len(verdict(want, got)) for _, want, got in measured) + 2
    print(f"\n{'flow':{width}}{'pvenat':{cell}}plain iptables recipe, same forwards")
    for (name, want, got), (_, _, plain_got) in zip(measured, plain):
        print(f"{name:{width}}{verdict(want, got):{cell}}{verdict(want, plain_got)}")
    print("(! marks what the flow should not do)\n")
    if keep:  # back to pvenat, as it was before the plain recipe
        for rule in PLAIN:
            lab.iptables(*[a if a != "-A" else "-D" for a in rule])
        must(lab.pvenat("install", "--root", root), "pvenat install")
        for vmid in GUESTS:  # uninstall took the hookscript off the guests
            must(lab.pvenat("attach", str(vmid)), f"pvenat attach {vmid}")
            start(lab, vmid)
        with open(STATE, "w") as f:
            json.dump({"namespaces": lab.namespaces, "dirs": [lab.dir, root],
                       "pids": [p.pid for p in lab.procs]}, f)
        env = " ".join(f"{k}={v}" for k, v in lab.env().items())
        print(f"""The demo stays up (make demo-down removes it). Things to try:
  ip netns exec {lab.inet} python3 {REPO}/tests/lab/netprobe.py tcp {PUBLIC_IP} 12222
  ip netns exec {lab.ns(102)} python3 {REPO}/tests/lab/netprobe.py tcp {PUBLIC_IP} 12222
  ip netns exec {lab.host} iptables-legacy-save -t nat
  ip netns exec {lab.host} env -i {env} python3 -m pvehook list
  ip netns exec {lab.host} env -i {env} python3 -m pvehook status --root {root}""")
    return 0 if all(works(want, got) for _, want, got in measured) else 1


def down():
    try:
        with open(STATE) as f:
            state = json.load(f)
    except FileNotFoundError:
        state = {"namespaces": [], "dirs": [], "pids": []}
    for pid in state["pids"]:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    names = sh("ip", "netns", "list").stdout.split()
    for name in set(state["namespaces"]) | {n for n in names if n.startswith(PREFIX + "-")}:
        for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
            subprocess.run(["kill", "-9", pid])
        sh("ip", "netns", "del", name, check=False)
    for folder in state["dirs"]:
        shutil.rmtree(folder, ignore_errors=True)
    if os.path.exists(STATE):
        os.remove(STATE)
    print("demo: removed")


if __name__ == "__main__":
    sys.exit(down() if sys.argv[1:] == ["down"] else main())

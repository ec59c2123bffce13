"""pvenat benchmarks in the namespace lab. Prints figures; run as root: ``make bench``.

1. hook cost: pre-start and post-stop of one guest with 1, 100 and 1,000 others forwarded,
   and hooks of an unmanaged guest;
2. sync: creating 1,000 guests' rules from nothing, and finding nothing to change, beside
   iptables-restore loading the identical rule set;
3. DHCP: the lease step of a pre-start and of a full sync at 1,000 leases, dnsmasq
   running;
4. data path: new TCP connections per second through a forward with 1 and with 1,000
   guests forwarded, alternating the two setups, over IPv4 (to the public port) and over
   IPv6 (to the guest's own address);
5. memory: peak RSS of a hook and of a full sync at 1,000 guests;
6. IPv6 neighbours: one sync putting back the /128 routes and proxy NDP entries of
   1,000 guests after they were all taken out.

The whole bench runs with IPv6 on, upstream on-link (the hoster's router asks for each
guest address by neighbour solicitation, the host answers by proxy NDP): every guest has
a public IPv6 address, every hook and sync does IPv6's rules, routes and proxy entries
beside IPv4's, and the IPv4 bars hold with IPv6 on.

Guest configs are .conf files and a guest runs when its NIC exists
(pve.config_source: files), as on a node with /etc/pve: each running guest without a
namespace of its own gets a PVE-named veth in the lab host, so a run at 1,000 guests
has 2,000 more network devices, like a real host. The fake PVE API answers from a file.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "tests", "lab")]
from lab import PREFIX6, PUBLIC_IP, Lab, address6, sh  # noqa: E402

OTHERS = 1000
RUNS = int(os.environ.get("BENCH_RUNS", "7"))
TARGET, UNMANAGED = 101, 107
PORT = 15000  # public port of the data-path forward, to port 80 in guest 101
# IPv6 for the guests, on-link: the host answers the router's solicitations by proxy NDP
IPV6 = f"ipv6: {{prefix: '{PREFIX6}', upstream: on-link}}\n"


def other_guests():
    out = {}
    for i in range(OTHERS):
        vmid, base = 1000 + i, 20000 + 10 * i
        address = f"172.22.{4 + i // 250}.{i % 250 + 1}"
        notes = (f"```pvenat\nforwards:\n  - {base}-{base + 4}\n  - {base}-{base + 4}/udp\n"
                 f"  - {base + 5}:22\n```")
        mac = f"BC:24:11:10:{i // 256:02X}:{i % 256:02X}"
        net = (f"name=eth0,bridge=vmbr1,hwaddr={mac},ip={address}/16" if i % 2 else
               f"virtio={mac},bridge=vmbr1")
        # every guest has pvenat's hookscript, so every one has a DHCP lease
        config = {"description": notes, "net0": net, "hookscript": "local:snippets/pvenat.py"}
        if not i % 2:
            config["ipconfig0"] = f"ip={address}/16"
        out[vmid] = {"kind": "lxc" if i % 2 else "qemu", "status": "stopped", "config": config}
    return out


def guests():
    g = other_guests()
    # behind a PVE firewall bridge, as the GUI's firewall=1 puts it, its own VM firewall on
    # (port 80 open: IPv4 and IPv6); its IPv6 address is the one pvenat derives
    g[TARGET] = {"kind": "qemu", "address": "172.22.1.10", "address6": address6(TARGET),
                 "config": {
                     "description": f"```pvenat\nforwards: [{PORT}:80, 16000-16009/both]\n```",
                     "net0": "virtio=BC:24:11:00:01:01,bridge=vmbr1,firewall=1",
                     "ipconfig0": "ip=172.22.1.10/16",
                     "hookscript": "local:snippets/pvenat.py"},
                 "vm_firewall": ["-p tcp -m tcp --dport 80 -j ACCEPT"]}
    g[UNMANAGED] = {"kind": "qemu", "config": {"description": "not managed", "tags": "web"}}
    return g


def timed(argv):
    """Wall seconds and peak RSS (MiB) of one command; fails loudly if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd="/")
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv[-3:])} failed")
    return seconds, usage.ru_maxrss / 1024


def running(lab, count):
    """Make the first ``count`` other guests run (their NICs exist) and sync them in."""
    for i, vmid in enumerate(range(1000, 1000 + OTHERS)):
        lab.guests[vmid]["status"] = "running" if i < count else "stopped"
    lab.write_fixture()
    lab.set_ports(range(1000, 1000 + count))
    result = lab.pvenat("sync")
    assert result.returncode == 0, result.stdout + result.stderr


def median(values):
    return statistics.median(values)


def paired(numerators, denominators):
    """Round-by-round ratios: each round measures both setups back to back, so a
    round's ratio is free of the machine's drift between rounds."""
    return [n / d for n, d in zip(numerators, denominators)]


def bench_hooks(lab, report):
    counts = (1, 100, OTHERS)
    start, stop, rss = ({c: [] for c in counts} for _ in range(3))
    # The setups take turns, so that the machine's drift hits each of them alike.
    for _ in range(RUNS):
        for count in counts:
            running(lab, count)  # the target runs too: sync forwards it, so stop it first
            stop[count].append(timed(lab.hook_argv(TARGET, "post-stop"))[0])
            s, m = timed(lab.hook_argv(TARGET, "pre-start"))
            start[count].append(s)
            rss[count].append(m)
    rows = {}
    for count in counts:
        rows[count] = (median(start[count]), median(stop[count]))
        report(f"hook, {count:>4} others forwarded: pre-start {rows[count][0]:.3f} s, "
               f"post-stop {rows[count][1]:.3f} s, peak RSS {max(rss[count]):.1f} MiB")
    unmanaged = [timed(lab.hook_argv(UNMANAGED, phase))[0]
                 for _ in range(RUNS) for phase in ("pre-start", "post-stop")]
    report(f"hook, unmanaged guest: {median(unmanaged):.3f} s (median of pre-start and "
           "post-stop)")
    bars = []
    for phase, times in (("pre-start", start), ("post-stop", stop)):
        ratios = paired(times[OTHERS], times[1])
        report(f"hook, {phase} at {OTHERS} / at 1, round by round: "
               f"{', '.join(f'{r:.2f}x' for r in ratios)}")
        bars.append((f"{phase} at 1,000 <= 1.5x at 1", median(ratios) <= 1.5,
                     f"{median(ratios):.2f}x (median of the rounds' ratios)"))
    many = rows[OTHERS]
    return bars + [("pre-start <= 0.35 s", many[0] <= 0.35, f"{many[0]:.3f} s"),
                   ("unmanaged hook <= 0.1 s", median(unmanaged) <= 0.1,
                    f"{median(unmanaged):.3f} s")]


def saved_rules(lab) -> dict:
    """What the kernel holds now, by family: iptables-legacy-save's and
    ip6tables-legacy-save's text."""
    return {v: sh("ip", "netns", "exec", lab.host,
                  f"ip{'6' * (v == 6)}tables-legacy-save").stdout for v in (4, 6)}


def empty_tables(lab, saved: dict):
    """Every table the saves hold flushed and its chains deleted, in both families (for
    IPv4 raw, nat and filter; for IPv6 mangle and filter, what pvenat writes)."""
    for v, text in saved.items():
        command = lab.ip6tables if v == 6 else lab.iptables
        for table in (line[1:].strip() for line in text.splitlines() if line.startswith("*")):
            command("-t", table, "-F")
            command("-t", table, "-X")


def restore(lab, saved: dict) -> float:
    """Seconds for iptables-legacy-restore and ip6tables-legacy-restore of ``saved``."""
    start = time.perf_counter()
    for v, text in saved.items():
        sh("ip", "netns", "exec", lab.host, f"ip{'6' * (v == 6)}tables-legacy-restore",
           input=text)
    return time.perf_counter() - start


def bench_sync(lab, report):
    running(lab, OTHERS)
    saved = saved_rules(lab)
    full, none, restored, rss = [], [], [], 0
    # Each round loads the same rules into the same empty tables twice, by
    # iptables-restore and ip6tables-restore and by a sync, so the machine's drift hits
    # both alike.
    for _ in range(RUNS):
        empty_tables(lab, saved)
        restored.append(restore(lab, saved))
        empty_tables(lab, saved)
        s, m = timed(lab.pvenat_argv("sync"))
        full.append(s)
        rss = max(rss, m)
        none.append(timed(lab.pvenat_argv("sync"))[0])
    rules = {v: pvenat_rules(text) for v, text in saved.items()}
    if {v: pvenat_rules(text) for v, text in saved_rules(lab).items()} != rules:
        raise RuntimeError("a sync from nothing wrote other rules than the first sync")
    # pve-firewall's rules, which a sync does not write, back as they were
    empty_tables(lab, saved)
    restore(lab, saved)
    ratios = paired(full, restored)
    report(f"sync, {OTHERS} guests from nothing: {median(full):.3f} s "
           f"({rules[4]} IPv4 rules, {rules[6]} IPv6 rules), peak RSS {rss:.1f} MiB")
    report(f"sync, nothing to change: {median(none):.3f} s")
    report(f"iptables-restore + ip6tables-restore of the identical rule sets: "
           f"{median(restored):.3f} s; full sync / the two restores, round by round: "
           f"{', '.join(f'{r:.1f}x' for r in ratios)}")
    return [("full sync <= 1 s", median(full) <= 1, f"{median(full):.3f} s"),
            ("full sync <= 5x iptables-restore + ip6tables-restore", median(ratios) <= 5,
             f"{median(ratios):.2f}x (median of the rounds' ratios)"),
            ("no-change sync <= 0.3 s", median(none) <= 0.3, f"{median(none):.3f} s")]


def pvenat_rules(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith("-A PVENAT"))


def neighbour_entries(lab) -> tuple:
    """The addresses of pvenat's /128 routes on vmbr1 and of the proxy entries on vmbr0,
    in the host namespace."""
    routes = json.loads(sh("ip", "-j", "-n", lab.host, "-6", "route", "show", "proto", "220",
                           "dev", "vmbr1").stdout or "[]")
    proxies = json.loads(sh("ip", "-j", "-n", lab.host, "-6", "neigh", "show", "proxy",
                            "dev", "vmbr0").stdout or "[]")
    return ({r["dst"].split("/")[0] for r in routes}, {p["dst"] for p in proxies})


def bench_neighbours(lab, report):
    """One sync from nothing puts back every guest's IPv6 route and proxy entry: the
    routes (protocol 220) and proxy entries taken out of the kernel, and pvenat's record
    of them (ipv6.json) removed, then one pvenat sync. Beside it, in each round, a sync
    with nothing to change."""
    running(lab, OTHERS)
    want = {address6(v) for v in range(1000, 1000 + OTHERS)} | {address6(TARGET)}
    state = os.path.join(lab.state, "ipv6.json")
    full, none, missing = [], [], []
    for _ in range(RUNS):
        sh("ip", "-n", lab.host, "-6", "route", "flush", "proto", "220")
        sh("ip", "-n", lab.host, "-6", "neigh", "flush", "proxy", "dev", "vmbr0")
        os.remove(state)
        assert neighbour_entries(lab) == (set(), set()), "routes or proxies left"
        full.append(timed(lab.pvenat_argv("sync"))[0])
        routes, proxies = neighbour_entries(lab)
        missing.append(len(want - routes) + len(want - proxies))
        if routes - want or proxies - want:
            raise RuntimeError(f"entries for no guest: {sorted((routes | proxies) - want)}")
        none.append(timed(lab.pvenat_argv("sync"))[0])
    report(f"IPv6 neighbours, {len(want)} guests: one sync from nothing put back "
           f"{len(routes)} /128 routes on vmbr1 and {len(proxies)} proxy NDP entries on "
           f"vmbr0 in {median(full):.3f} s (a sync with nothing to change: "
           f"{median(none):.3f} s); entries missing after it, round by round: "
           f"{', '.join(str(m) for m in missing)}")
    return [(f"all {len(want)} guests' routes and proxy entries in place after one sync",
             not any(missing), f"{max(missing)} missing at most, sync {median(full):.3f} s")]


def bench_pvesh(lab, report):
    """Every pvesh loads all of PVE's API: sync and list must start none."""
    running(lab, OTHERS)
    calls = os.path.join(lab.dir, "pvesh-calls")
    listed = []
    for args in (("sync",), ("list",)):
        start = time.perf_counter()
        result = subprocess.run(lab.pvenat_argv(*args, env={"PVENAT_FAKE_PVE_CALLS": calls}),
                                capture_output=True, text=True)
        listed.append(time.perf_counter() - start)
        assert result.returncode == 0, result.stderr
    count = len(open(calls).readlines()) if os.path.exists(calls) else 0
    report(f"pvesh processes started by a sync and a list at {OTHERS} guests: {count} "
           f"(sync {listed[0]:.3f} s, list {listed[1]:.3f} s)")
    return [("no pvesh process in a sync or a list", count == 0, str(count))]


def bench_leases(lab, report):
    """The DHCP side at 1,000 leases, with dnsmasq running: the lease step of a pre-start
    (read the hosts file, check, write it with one more lease, SIGHUP, check dnsmasq's
    lease database for leases to release) and of a full sync (the whole lease set written
    from nothing, and the same check), each timed in this process."""
    from pvehook import config, dhcp, leases, sync
    from pvehook.context import Places, context
    running(lab, OTHERS)
    places = Places(state_dir=os.path.join(lab.dir, "state"))
    host = config.load(lab.config, places.state_dir)
    ctx = context(host, places)
    everyone = dhcp.read(places)
    mine = [lease for lease in everyone if lease.vmid == TARGET]
    others = [lease for lease in everyone if lease.vmid != TARGET]
    assert len(everyone) > OTHERS and mine, "sync made no leases"
    step, full = [], []
    for _ in range(RUNS * 3):
        dhcp.write(places, others)
        start = time.perf_counter()
        held = dhcp.read(places)
        leases.Holders(held).check(mine)
        dhcp.write(places, [lease for lease in held if lease.vmid != TARGET] + mine)
        dhcp.settle(host, places)
        step.append(time.perf_counter() - start)
        os.remove(dhcp.path(places, dhcp.HOSTS))
        result = sync.SyncResult()
        start = time.perf_counter()
        sync.apply_leases(ctx, everyone, result, dry_run=False)
        full.append(time.perf_counter() - start)
        assert len(result.leases) == len(everyone)
    assert dhcp.server_pid(places), "dnsmasq is not running"
    report(f"DHCP, {len(everyone)} leases: a pre-start's lease step {median(step) * 1000:.1f} "
           f"ms; a full sync's lease set {median(full) * 1000:.1f} ms (dnsmasq told by SIGHUP)")
    return [("pre-start lease step <= 50 ms", median(step) <= 0.05,
             f"{median(step) * 1000:.1f} ms"),
            ("full sync lease set <= 0.2 s", median(full) <= 0.2,
             f"{median(full) * 1000:.1f} ms")]


def bench_datapath(lab, report, binary):
    """New TCP connections per second from the internet to guest 101's port 80: over IPv4
    through the forward's public port, over IPv6 to the guest's own address (the forward
    opens its guest-side port there), with 1 and with 1,000 guests forwarded; each
    round measures both families in both setups."""
    seconds, rounds = 4, 5
    sh("ip", "netns", "exec", lab.host, "sysctl", "-qw",
       "net.netfilter.nf_conntrack_tcp_timeout_close=1")
    targets = {4: (PUBLIC_IP, PORT), 6: (address6(TARGET), 80)}
    rates = {(v, n): [] for v in targets for n in (1, OTHERS)}
    for _ in range(rounds):
        for count in (0, OTHERS):
            running(lab, count)
            for v, (address, port) in targets.items():
                sh("ip", "netns", "exec", lab.host, "conntrack", "-F", check=False)
                # client and server each on a core of their own; the first second warms up
                client = ["ip", "netns", "exec", lab.inet, "taskset", "-c", "1", binary,
                          "rate", address, str(port)]
                # the flow goes through before it is measured (a dropped SYN would make
                # connect wait for minutes: bounded)
                probe = sh("timeout", "10", *client, "0.2", check=False)
                if probe.returncode or probe.stdout.split()[1:] != ["0"] or \
                        float(probe.stdout.split()[0]) == 0:
                    raise RuntimeError(f"IPv{v}: guest {TARGET} not reached at [{address}]:"
                                       f"{port} from the internet ({probe.stdout.strip()})")
                sh(*client, "1")
                out = sh(*client, str(seconds)).stdout.split()
                rate, failed = float(out[0]), int(out[1])
                if failed:
                    raise RuntimeError(f"IPv{v}: {failed} connections failed")
                rates[v, max(count, 1)].append(rate)
    bars = []
    for v in targets:
        for count in (1, OTHERS):
            values = rates[v, count]
            spread = (max(values) - min(values)) / median(values)
            report(f"data path, IPv{v}, {count:>4} guests forwarded: {median(values):,.0f} "
                   f"new TCP connections/s (runs: {', '.join(f'{x:,.0f}' for x in values)}; "
                   f"spread {spread:.0%})")
        ratios = paired(rates[v, OTHERS], rates[v, 1])
        report(f"data path, IPv{v}, rate at {OTHERS} / rate at 1, round by round: "
               f"{', '.join(f'{r:.0%}' for r in ratios)}")
        ratio = median(ratios)
        bars.append((f"new IPv{v} connection rate at 1,000 >= 90% of 1", ratio >= 0.9,
                     f"{ratio:.0%} (median of the rounds' ratios)"))
    return bars


def main():
    if os.geteuid() != 0:
        sys.exit("bench: run as root (network namespaces, iptables)")
    scratch = tempfile.mkdtemp(prefix="pvenat-bench-")
    binary = os.path.join(scratch, "connrate")
    subprocess.run(["cc", "-O2", "-o", binary, os.path.join(HERE, "connrate.c")], check=True)
    # the default config: configs from /etc/pve, pvesh for the API
    lab = Lab(guests(), lan="172.22.0.254/16", firewall="iptables", ipv6="on-link")
    bars = []
    try:
        # IPv6 on, as pvenat install leaves a host with it: forwarding, and on-link the
        # proxy NDP that answers the router's solicitations for the guests
        lab.write_config(IPV6)
        lab.sysctl(lab.host, "net.ipv6.conf.all.forwarding", 1)
        lab.sysctl(lab.host, "net.ipv6.conf.vmbr0.proxy_ndp", 1)
        lab.start_dhcp_server()
        lab.spawn(lab.ns(TARGET), ["taskset", "-c", "0", binary, "sink", "80"])
        from importlib.metadata import version
        print(f"pvenat bench: {OTHERS} other guests, median of {RUNS} runs, python "
              f"{sys.version.split()[0]} ({sys.executable}), proxmoxer "
              f"{version('proxmoxer')}, the default config (configs from files, pvesh), "
              f"the target guest behind a PVE firewall bridge, IPv6 on (on-link, "
              f"{PREFIX6}), {os.cpu_count()} cores",
              flush=True)

        def report(line):
            print("  " + line, flush=True)

        parts = sys.argv[1:] or ["hooks", "sync", "neighbours", "dhcp", "datapath"]
        if "hooks" in parts:
            bars += bench_hooks(lab, report)
        if "sync" in parts:
            bars += bench_sync(lab, report)
            bars += bench_pvesh(lab, report)
        if "neighbours" in parts:
            bars += bench_neighbours(lab, report)
        if "dhcp" in parts:
            bars += bench_leases(lab, report)
        if "datapath" in parts:
            bars += bench_datapath(lab, report, binary)
    finally:
        lab.close()
        shutil.rmtree(scratch)
    print("bars:")
    for name, ok, figure in bars:
        print(f"  {'PASS' if ok else 'MISS'} {name}: {figure}")
    return 0 if all(ok for _, ok, _ in bars) else 1


if __name__ == "__main__":
    sys.exit(main())

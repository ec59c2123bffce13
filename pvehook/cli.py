"""The ``pvenat`` command. Configures logging once, catches PvenatError at the top.

Each command imports the modules it needs when it runs: the sync timer fires every
minute, and should not pay for the installer's imports.
"""

import argparse
import json
import os
import sys

from . import __version__, config, hook, logs
from .context import HOOKSCRIPT, Places, context
from .errors import PvenatError


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "hook":
        return hook.main(args.vmid, args.phase, args.config)
    try:
        places = Places.from_env()
        host = config.load(config.config_path(args.config), places.state_dir)
        logs.configure(host.log_file)
        return args.func(args, context(host, places))
    except PvenatError as e:
        print(f"pvenat: error: {e.message}", file=sys.stderr)
        return 2 if e.code == "usage" else 1


def _parser():
    p = argparse.ArgumentParser(prog="pvenat", description="Port forwards and NAT for "
                                "Proxmox VE guests behind one public IPv4 address.",
                                epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"pvenat {__version__}")
    p.add_argument("--config", metavar="PATH", help="host config (default: $PVENAT_CONFIG "
                   f"or {config.DEFAULT_PATH})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help, example):
        c = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        c.set_defaults(func=func)
        return c

    c = command("hook", None, "run one guest hook phase, exactly as the hookscript does",
                "pvenat hook 101 pre-start")
    c.add_argument("vmid", type=int)
    c.add_argument("phase", choices=hook.PHASES)
    c.set_defaults(func=None)
    c = command("sync", cmd_sync, "make this node's rules match every running guest's Notes "
                "and tags; remove rules of guests not running here", "pvenat sync --dry-run")
    c.add_argument("--dry-run", action="store_true", help="print what would change")
    c = command("list", cmd_list, "list managed guests, their forwards, and whether the "
                "kernel has them", "pvenat list --json")
    c.add_argument("--json", action="store_true", help="one JSON object per guest: vmid, "
                   "name, type, status, address, error, and forwards (forward, proto, allow, "
                   "live, packets)")
    c = command("check", cmd_check, "validate a guest's Notes and tags, or Notes in a file, "
                "with the checks a start runs, without applying; print the plan and the "
                "iptables-restore lines a start would apply. Notes in a file are checked "
                "before the guest has an address too, and off a PVE node against the host "
                "config alone; what could not be checked is named",
                "pvenat check 101\n  pvenat check --notes notes.md 101  # as if they were "
                "101's Notes\n  pvenat check --notes - < notes.md")
    c.add_argument("vmid", type=int, nargs="?", help="the guest; with --notes, the guest "
                   "whose NICs and running neighbours the file is checked against")
    c.add_argument("--notes", metavar="FILE", help="check this Notes text ('-': standard "
                   "input) instead of the guest's own")
    for name, verb, detail in (
            ("attach", "set", "so that its forwards and its DHCP lease follow its starts "
             "and stops, and give a guest without an address on lan_bridge the first free "
             "one (into its config: an LXC NIC's ip=, cloud-init's ipconfigN, or the pvenat "
             "block's ip:); another hookscript is left alone unless --force. Then it runs "
             "the checks a start runs and warns of each refusal a start would meet (exit 1): "
             "the guest is attached all the same"),
            ("detach", "clear", "(pvenat's only, unless --force); its rules go at its next "
             "stop, or now with pvenat sync")):
        c = command(name, cmd_attach, f"{verb} the guests' hookscript option to "
                    f"{HOOKSCRIPT}, as root through pvesh, {detail}",
                    f"pvenat {name} 101 102" + ("\n  pvenat attach --ip 172.22.161.50 103"
                                                if name == "attach" else ""))
        c.add_argument("vmids", type=int, nargs="+", metavar="VMID")
        c.add_argument("--force", action="store_true",
                       help="replace or clear a hookscript that is not pvenat's")
        if name == "attach":
            c.add_argument("--ip", metavar="ADDRESS", help="this address on lan_bridge, for "
                           "one guest (refused when another guest of the cluster has it)")
    c = command("install", cmd_install, "set this host up for NAT guests: the lan bridge, "
                "forwarding, SNAT, the boot unit and sync timer, the hookscript snippet",
                "pvenat install --dry-run")
    c.add_argument("--dry-run", action="store_true", help="print every change, make none")
    c.add_argument("--root", metavar="DIR", default="/", help="files under DIR, commands "
                   "aimed at it (for tests and labs; implies no PVE check)")
    c.add_argument("--token", action="store_true", help="also create a read-only API token "
                   "and use the https backend (only for pve.config_source: api over HTTPS)")
    c = command("uninstall", cmd_install, "take back everything pvenat install and its hooks "
                "added; other rules and files stay as they are", "pvenat uninstall --dry-run")
    c.add_argument("--dry-run", action="store_true", help="print every change, make none")
    c.add_argument("--root", metavar="DIR", default="/", help=argparse.SUPPRESS)
    command("dhcp-server", cmd_dhcp_server, "run dnsmasq on lan_bridge as the host config "
            "says: DHCP with the guests' leases, DNS (what pvenat-dhcp.service runs)",
            "pvenat dhcp-server")
    c = command("status", cmd_status, "check the host setup and list guests that need "
                "attention", "pvenat status --json")
    c.add_argument("--json", action="store_true", help="a JSON list of the checks: check, "
                   "ok, detail")
    c.add_argument("--root", metavar="DIR", default="/", help=argparse.SUPPRESS)
    return p


EXIT_CODES = """exit codes: 0 done, or all is well; 1 refused, failed, or (status, sync)
something needs attention; 2 bad command line."""


def cmd_sync(args, ctx) -> int:
    from . import sync
    result = sync.sync(ctx, dry_run=args.dry_run)
    for line in result.lines(ctx.host.pve.node_name(), args.dry_run):
        print(line)
    if args.dry_run and result.script:
        print(result.script, end="")
    return 1 if result.problems or result.dhcp_problem else 0


def cmd_list(args, ctx) -> int:
    from . import listing
    entries = listing.collect(ctx)
    print(json.dumps(entries, indent=1) if args.json else listing.table(entries))
    return 0


def cmd_check(args, ctx) -> int:
    """What a start would refuse, by pre-start's own checks (plan_for, hook.refusals), or
    the plan and the rules it would apply. Notes from a file are checked before the guest
    has an address, and off a PVE node against the host config alone: what needs the
    node is named as not checked."""
    from . import hostnet
    from .plan import plan_for, summary
    from .pve import Guest
    from .rules import Public
    host, vmid = ctx.host, args.vmid
    if vmid is None and args.notes is None:
        raise PvenatError("usage", "check what? give a VMID, or --notes FILE (see pvenat "
                          "check --help)")
    on_node = ctx.pve.on_node()  # every PVE node has pmxcfs mounted
    elsewhere = f"not a PVE node (no {host.pve.config_dir})"
    known = vmid is not None and on_node  # a guest whose config pvenat reads
    unchecked = []
    if args.notes is None:
        if not on_node:
            raise PvenatError("pve", f"{elsewhere}, so guest {vmid}'s config is not here; "
                              "check its Notes with --notes FILE")
        guest = hook.load_guest(ctx, vmid)
        plan = plan_for(guest, host, net6=hostnet.ipv6_net(host))
        who = ""
    else:
        source = "standard input" if args.notes == "-" else args.notes
        notes = read_notes(args.notes)
        guest = ctx.pve.guest(vmid) if known else \
            Guest(vmid or 0, "qemu", {})
        if vmid is not None and not known:
            unchecked.append(f"guest {vmid}'s NICs and tags: {elsewhere}")
        guest = guest._replace(config=dict(guest.config, description=notes))
        who = "" if vmid is not None else source
        net6 = None
        try:
            net6 = hostnet.ipv6_net(host)
        except PvenatError as e:
            unchecked.append(f"its IPv6 address: {e.message}")
        plan = plan_for(guest, host, who, need_address=False, net6=net6)
        if plan is None and vmid is None:
            raise PvenatError("spec", f"{source}: no ```pvenat block")
    if plan is None:
        print(f"pvenat: {vmid}: not managed (no pvenat block in its Notes, no pvenat- tag)")
        return 0
    if plan.address is None:
        unchecked.append("its address: no 'ip:' in the Notes, and " + (
            f"guest {vmid} has no static address on {host.lan_bridge}" if known
            else "no guest's NIC to take it from") + "; 'pvenat attach VMID' gives a guest one")
    blind = []  # the kernel could not be read (not root, no iptables)
    if on_node:
        problems = hook.refusals(ctx, guest, plan, who)
        blind = [e for e in problems if e.code == "netfilter"]
        unchecked += [f"ports and addresses of the guests running here: {e.message}"
                      for e in blind]
        problems = [e for e in problems if e.code != "netfilter"]
        for e in problems:
            print(f"pvenat: error: {e.message}", file=sys.stderr)
        if problems:
            return 1
    else:
        unchecked.append("ports and addresses of the guests running on the node, DHCP "
                         f"leases, its public address: {elsewhere}")
    try:
        public = hostnet.public(host)
    except PvenatError:
        if on_node:
            raise
        public = Public(f"{host.wan_bridge}'s address")
    print(summary(plan, public.ip, who))
    if plan.address is not None and known and not blind:  # what a start would change
        script = ctx.rules.preview(plan, public).text
        print(script, end="" if script else "rules: all in place\n")
    elif plan.address is not None:
        print("rules of its chain:")
        print("\n".join(ctx.rules.rule_text(plan)))
    for what in unchecked:
        print(f"not checked: {what}")
    return 0


def read_notes(path: str) -> str:
    """Notes text from a file, or standard input for '-'."""
    try:
        if path == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        with open(path, "rb") as f:
            return f.read().decode("utf-8")
    except OSError as e:
        raise PvenatError("spec", f"{path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise PvenatError("spec", f"{path}: not UTF-8 text (byte {e.start}); PVE keeps Notes "
                          "as UTF-8: save the file as UTF-8") from None


def cmd_attach(args, ctx) -> int:
    from . import attach
    problems = []
    if args.command == "detach":
        lines = attach.detach(ctx, args.vmids, args.force)
    elif args.ip and len(args.vmids) > 1:
        raise PvenatError("usage", "--ip gives one guest its address; name one VMID")
    else:
        lines, problems = attach.attach(ctx, args.vmids, args.force, args.ip)
    print("\n".join(lines), flush=True)
    for vmid, e in problems:
        print(f"pvenat: {vmid}: warning: a start would refuse: {e.message}", file=sys.stderr)
    return 1 if problems else 0


def cmd_install(args, ctx) -> int:
    from . import install
    env = install.Env(ctx, install.System(args.root, ctx.places),
                      config.config_path(args.config), getattr(args, "token", False))
    if args.command == "install":
        actions = install.install_actions(env)
    else:
        actions = install.uninstall_actions(env)
    install.run_actions(env, actions, args.dry_run, sys.stdout)
    for note in env.notes + env.warnings:
        print(f"pvenat: {note}")
    return 1 if env.notes else 0


def cmd_dhcp_server(args, ctx) -> int:
    from . import dhcp
    if not ctx.host.dhcp:
        print("pvenat: dhcp: false in the host config; no DHCP server")
        return 0
    os.makedirs(ctx.places.state_dir, mode=0o755, exist_ok=True)
    # leases the hosts file changed while no server ran: gone before it reads them
    for mac, ip in dhcp.prune(ctx.host, ctx.places):
        print(f"pvenat: stale DHCP lease of {mac} ({ip}) dropped", flush=True)
    argv = dhcp.argv(ctx.host, ctx.places)
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        raise PvenatError("host", "dnsmasq not found; install dnsmasq-base") from None


def cmd_status(args, ctx) -> int:
    from . import status
    path = config.config_path(args.config)
    results = status.checks(ctx, path, args.root)
    if args.json:
        print(json.dumps([{"check": w, "ok": ok, "detail": d} for w, ok, d in results],
                         indent=1))
    else:
        for what, ok, detail in results:
            print(f"{'ok  ' if ok else 'FIX '} {what}: {detail}")
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The ``pvenat`` command. Configures logging once, catches PvenatError at the top."""

import argparse
import sys

import structlog

from . import __version__, config, hook, netfilter
from .errors import PvenatError
from .pve import PveApi

EPILOG_HOOK = """example (what PVE runs for 'hookscript: local:snippets/pvenat.py'):
  pvenat hook 101 pre-start"""


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        host = config.load(config.config_path(args.config))
        _configure_logging(host.log_file)
        return args.func(args, host)
    except PvenatError as e:
        print(f"pvenat: error: {e.message}", file=sys.stderr)
        return 1


def _parser():
    p = argparse.ArgumentParser(prog="pvenat", description="Port forwards and NAT for "
                                "Proxmox VE guests behind one public IPv4 address.")
    p.add_argument("--version", action="version", version=f"pvenat {__version__}")
    p.add_argument("--config", metavar="PATH", help="host config (default: $PVENAT_CONFIG "
                   f"or {config.DEFAULT_PATH})")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    h = sub.add_parser("hook", help="run one guest hook phase, as the hookscript does",
                       epilog=EPILOG_HOOK, formatter_class=argparse.RawDescriptionHelpFormatter)
    h.add_argument("vmid", type=int)
    h.add_argument("phase", choices=hook.PHASES)
    h.set_defaults(func=cmd_hook)
    return p


def context(host) -> hook.Context:
    return hook.Context(host, PveApi(host.pve), netfilter.Iptables())


def cmd_hook(args, host) -> int:
    try:
        line = hook.run(context(host), args.vmid, args.phase)
    except PvenatError as e:
        if args.phase == "post-stop":  # a failing post-stop would only be a warning anyway
            print(f"pvenat: {args.vmid}: WARNING: {e.message}")
            return 0
        raise
    if line:
        print(line, flush=True)
    return 0


def _configure_logging(path: str):
    """JSON lines to the log file: one event per change, for the admin and for tools."""
    try:
        out = open(path, "a", encoding="utf-8")
    except OSError:
        out = sys.stderr
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True)


if __name__ == "__main__":
    sys.exit(main())

"""The `vpnd` command line: a thin dispatcher.

Each subcommand lives in the module of the system it talks to; this file only parses
arguments and imports lazily, so `vpnd check` starts fast and never needs pyroute2.
`vpnd lab ...` exists only where the development package vpnd_lab is installed (a checkout's
scripts/bootstrap installs it from lab/); it parses its own arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from vpnd.config.model import DEFAULT_CONFIG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpnd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate a configuration file (like nginx -t)")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)

    p = sub.add_parser("doctor", help="check this machine against the troubleshooting list "
                                      "(ip_forward, XFRM, charon, firewall, routes, FRR)")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    p.add_argument("--json", action="store_true", help="machine-readable results")

    p = sub.add_parser("render", help="show what vpnd will apply: swanctl, frr, nft (MSS clamp), or the cloud-side sheet")
    p.add_argument("what", choices=["swanctl", "frr", "peer", "nft"])
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    p.add_argument("--show-secrets", action="store_true", help="print pre-shared keys in clear")

    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG)

    _control_commands(sub)

    from vpnd.cloud.command import add_parser as import_parser   # no SDK: it is lazy there
    import_parser(sub)

    if lab_installed():
        # Listed for --help only: main() hands `vpnd lab ...` to vpnd_lab.cli before parsing.
        sub.add_parser("lab", help="a real dual-tunnel lab in network namespaces on this machine "
                                   "(development package vpnd_lab)", add_help=False)
    return parser


def lab_installed() -> bool:
    """Whether the lab package is importable, without importing it (nor anything heavy)."""
    return importlib.util.find_spec("vpnd_lab") is not None


def _control_commands(sub) -> None:
    """The commands that talk to a running daemon over its control socket."""
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=None,
                       help=f"the daemon's config, for its control socket's path (default {DEFAULT_CONFIG})")
        p.add_argument("--socket", default=None, help="the control socket (overrides the config)")
        p.add_argument("--json", action="store_true", help="print the daemon's reply as JSON")

    p = sub.add_parser("status", help="what the running daemon sees: tunnels, SAs, probes, BGP")
    common(p)
    p = sub.add_parser("failover", help="move traffic to a tunnel now and prefer it (until undrain)")
    p.add_argument("--to", required=True, metavar="TUNNEL")
    p.add_argument("--connection", default=None, help="needed when there are several")
    common(p)
    for name, text in (("drain", "keep traffic off a tunnel (maintenance)"),
                       ("undrain", "let a drained tunnel carry traffic again; clears a failover pin")):
        p = sub.add_parser(name, help=text)
        p.add_argument("tunnel", metavar="TUNNEL")
        p.add_argument("--connection", default=None, help="needed when there are several")
        common(p)
    p = sub.add_parser("psk", help="pre-shared keys: rotate them without an outage")
    psk = p.add_subparsers(dest="psk_command", required=True)
    p = psk.add_parser("rotate", help="load the configured (already updated) key, one tunnel "
                       "at a time, traffic moved off each tunnel until it is proven")
    p.add_argument("tunnel", metavar="TUNNEL", nargs="?", default=None,
                   help="only this tunnel (default: every tunnel whose configured key changed)")
    p.add_argument("--connection", default=None, help="needed when there are several")
    p.add_argument("--abort", action="store_true", help="stop the rotation in progress; the "
                   "tunnel being rotated gets its old key back")
    p.add_argument("--no-wait", action="store_true", help="return once started (default: "
                   "follow it until done, waiting for the cloud, failed or aborted)")
    common(p)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lab"]:
        if not lab_installed():
            print("vpnd: `vpnd lab` needs the development package vpnd_lab (in a checkout: "
                  "scripts/bootstrap, or pip install -e lab/)", file=sys.stderr)
            return 2
        from vpnd_lab.cli import main as lab_main
        try:
            return lab_main(argv[1:])
        except KeyboardInterrupt:
            return 130
    args = build_parser().parse_args(argv)
    if args.command == "check":
        from vpnd.config.check import main as run
    elif args.command == "doctor":
        from vpnd.doctor import main as run
    elif args.command == "render":
        from vpnd.render.command import main as run
    elif args.command == "run":
        from vpnd.run.main import main as run
    elif args.command in ("status", "failover", "drain", "undrain", "psk"):
        from vpnd.control.cli import main as run
    elif args.command == "import":
        from vpnd.cloud.command import main as run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

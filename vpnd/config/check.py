"""`vpnd check -c FILE`: validate a config like `nginx -t` and say exactly what is wrong.

Exit 0 when vpnd would accept the file (warnings allowed), 1 otherwise. File trust
(vpnd.config.trust) is refused here exactly as `vpnd run` and a reload refuse it.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, TextIO

from vpnd.config.load import load_file_with_warnings
from vpnd.config.model import Config, ConfigError, Problem


def main(args: Any, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    path = args.config
    try:
        config, warnings = load_file_with_warnings(path, strict_permissions=True)
        warnings = warnings + _environment_warnings(config, path)
    except ConfigError as exc:
        _print(err, "warning", exc.warnings)
        _print(err, "error", exc.errors)
        n = len(exc.errors)
        print(f"vpnd: {path}: {n} error{'s' if n != 1 else ''}, configuration rejected", file=err)
        return 1
    except Exception as exc:        # a bug in vpnd, not the user's fault: no traceback, no PSK
        print(f"error: {path}: internal error while checking ({type(exc).__name__}); "
              "please report it", file=err)
        return 1
    problems = _environment_errors(config)
    _print(err, "warning", warnings)
    if problems:
        _print(err, "error", problems)
        n = len(problems)
        print(f"vpnd: {path}: {n} error{'s' if n != 1 else ''}, configuration rejected", file=err)
        return 1
    print(f"vpnd: {path} OK: {summary(config)}", file=out)
    return 0


def _environment_errors(config: Config) -> list[Problem]:
    """What would fail at start on this machine and can be known without starting: a
    metrics host that does not resolve (vpnd would run without its endpoint). A port already
    taken is not checked: during a reload it is vpnd's own."""
    listen = config.daemon.metrics_listen
    if not listen:
        return []
    host = listen.rpartition(":")[0].strip("[]")
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        return [Problem("daemon.metrics_listen", f"host {host!r} does not resolve ({reason}): "
                        "use an IP address such as 127.0.0.1")]
    return []


def summary(config: Config) -> str:
    conns = config.connections
    tunnels = sum(len(c.tunnels) for c in conns)
    modes = sorted({c.routing for c in conns})
    mode = f"{modes[0]} mode" if len(modes) == 1 else "modes: " + ", ".join(modes)
    return (f"{len(conns)} connection{'s' if len(conns) != 1 else ''}, "
            f"{tunnels} tunnel{'s' if tunnels != 1 else ''} ({mode})")


def _print(stream: TextIO, kind: str, problems: list[Problem]) -> None:
    for p in problems:
        print(f"{kind}: {p.path}: {p.message}" if p.path else f"{kind}: {p.message}", file=stream)


def _environment_warnings(config: Config, path: str) -> list[Problem]:
    """Things that depend on this machine, so only `check` looks at them."""
    found = []
    if any(c.routing == "bgp" for c in config.connections):
        vtysh = config.daemon.vtysh_path
        if not os.access(vtysh, os.X_OK):
            found.append(Problem("daemon.vtysh_path", f"{vtysh} is not an executable here; "
                                 "routing = \"bgp\" needs FRR's vtysh"))
    return found

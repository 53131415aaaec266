"""`vpnd status`, `vpnd failover`, `vpnd drain`, `vpnd undrain`: the operator's side of the
control socket.

Exit codes are distinct so scripts can tell what happened: 0 done, 1 the daemon refused (an
unknown name, a tunnel that is not usable), 3 vpnd is not running (no socket, nobody
answering), 4 permission denied (not root), 5 vpnd did not answer (hung, or not a vpnd
socket). Argument errors exit 2, as argparse does.
"""

from __future__ import annotations

import json
import sys
import tomllib
from typing import Any, TextIO

from vpnd.config.model import DEFAULT_CONFIG, DaemonConfig
from vpnd.control.server import Unreachable, request

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_PERMISSION, EXIT_NO_ANSWER = 0, 1, 2, 3, 4, 5
EXIT_WAITING = 6        # `vpnd psk rotate`: the cloud still has the old key; the daemon retries
_EXIT_BY_KIND = {"not_running": EXIT_NOT_RUNNING, "permission": EXIT_PERMISSION,
                 "no_answer": EXIT_NO_ANSWER}


class UsageError(Exception):
    pass


def socket_path(socket: str | None, config: str | None, err: TextIO) -> str:
    """--socket wins; else `[daemon] control_socket` of the config file (only that key is
    read: no PSK files needed); else the default. A missing default config is no error."""
    if socket:
        return socket
    path = config or DEFAULT_CONFIG
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        if config is not None:
            raise UsageError(f"{path}: no such file (give the daemon's config with -c, "
                             "or its socket with --socket)") from None
        return DaemonConfig.control_socket
    except PermissionError:
        print(f"warning: cannot read {path} (permission denied); trying the default socket "
              f"{DaemonConfig.control_socket}", file=err)
        return DaemonConfig.control_socket
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the control socket's path: {exc}") from None
    daemon = doc.get("daemon", {})
    value = daemon.get("control_socket", DaemonConfig.control_socket) \
        if isinstance(daemon, dict) else DaemonConfig.control_socket
    if not isinstance(value, str) or not value:
        raise UsageError(f"{path}: daemon.control_socket must be a path")
    return value


def payload(args: Any) -> dict[str, Any]:
    cmd = args.command
    if cmd == "status":
        return {"command": "status"}
    if cmd == "psk":
        out = {"command": "psk_rotate"}
        for k in ("connection", "tunnel"):
            if getattr(args, k, None):
                out[k] = getattr(args, k)
        if getattr(args, "abort", False):
            out["abort"] = "yes"
        return out
    out: dict[str, Any] = {"command": cmd}
    if args.connection:
        out["connection"] = args.connection
    out["to" if cmd == "failover" else "tunnel"] = args.to if cmd == "failover" else args.tunnel
    return out


def main(args: Any, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    cmd = args.command
    try:
        path = socket_path(args.socket, args.config, err)
    except UsageError as exc:
        print(f"vpnd {cmd}: {exc}", file=err)
        return EXIT_USAGE
    try:
        reply = request(path, payload(args))
    except Unreachable as exc:
        print(f"vpnd {cmd}: {exc}", file=err)
        return _EXIT_BY_KIND[exc.kind]
    if getattr(args, "json", False):
        print(json.dumps(reply["status"] if cmd == "status" and reply.get("ok") else reply,
                         indent=2), file=out)
    if not reply.get("ok"):
        if not getattr(args, "json", False):
            print(f"vpnd {cmd}: {reply.get('error', 'refused')}", file=err)
        return EXIT_PERMISSION if reply.get("code") == "not_permitted" else EXIT_REFUSED
    if getattr(args, "json", False):
        return EXIT_OK
    if cmd == "status":
        out.write(render(reply["status"]))
        return EXIT_OK
    if cmd == "psk":
        return _follow_rotation(path, reply, args, out, err)
    what = {"drain": "drained", "undrain": "undrained"}.get(cmd, "forced active")
    print(f"{reply['connection']}: {reply['tunnel']} {what}; active tunnel: "
          f"{reply['active'] or 'none'} ({reply['reason']})", file=out)
    if reply.get("warning"):
        print(f"warning: {reply['warning']}", file=err)
    return EXIT_OK


def _rotation_line(r: dict[str, Any]) -> str:
    done = ", ".join(f"{x['tunnel']} in {x['seconds']:.1f} s" for x in r.get("rotated", []))
    where = f" {r['tunnel']}" if r.get("tunnel") else ""
    return (f"{r['connection']}:{where} {r['phase']}: {r['reason']}"
            + (f" (rotated: {done})" if done else ""))


def _follow_rotation(path: str, reply: dict, args: Any, out: TextIO, err: TextIO,
                     poll: float = 0.5) -> int:
    """Print each phase change until the rotation ends or waits for the cloud. Exit 0 done,
    1 failed or aborted, 6 waiting for the cloud (it goes on retrying in the daemon)."""
    import time

    r = reply["rotation"]
    print(_rotation_line(r), file=out)
    if getattr(args, "no_wait", False) or getattr(args, "abort", False):
        return EXIT_OK
    last = (r["phase"], r.get("tunnel"))
    while r["phase"] not in ("done", "failed", "aborted", "waiting_for_cloud"):
        time.sleep(poll)
        try:
            st = request(path, {"command": "status"})
        except Unreachable as exc:
            print(f"vpnd psk: {exc}", file=err)
            return _EXIT_BY_KIND[exc.kind]
        now = st.get("status", {}).get("psk_rotation", {}).get(reply["connection"])
        if now is None:     # vpnd restarted (a rotation is not kept across a restart)
            print(f"vpnd psk: {reply['connection']}: the rotation's state is gone (vpnd "
                  "restarted?); `vpnd status` shows the tunnels, run the rotation again", file=err)
            return EXIT_REFUSED
        r = now
        if (r["phase"], r.get("tunnel")) != last:
            last = (r["phase"], r.get("tunnel"))
            print(_rotation_line(r), file=out)
    return {"done": EXIT_OK, "waiting_for_cloud": EXIT_WAITING}.get(r["phase"], EXIT_REFUSED)


# --- the table ---------------------------------------------------------------------------

_COLUMNS = ("TUNNEL", "IKE", "CHILD", "ACTIVE", "RTT", "LOSS", "BGP", "SINCE", "REASON")


def render(status: dict[str, Any]) -> str:
    """One block per connection: a headline, then one row per tunnel."""
    d = status.get("daemon", {})
    lines = [f"vpnd pid {d.get('pid')}, up {_duration(d.get('uptime_seconds'))}, "
             f"config {d.get('config')}"]
    ch = status.get("charon") or {}
    if ch.get("reachable") is False:
        since = f" since {ch['since']} ({_duration(ch.get('for_seconds'))})" if ch.get("since") else ""
        lines.append(f"CHARON UNREACHABLE{since}: {ch.get('last_error') or 'not connected yet'}; "
                     f"{'retrying' if ch.get('retrying') else 'not retrying'}. "
                     "IKE/CHILD states below are last known, not current.")
    for name, c in status.get("connections", {}).items():
        lines += ["", f"{name} ({c['routing']} mode): {_headline(c)} -- {c['reason']}"]
        rp = c.get("return_path")
        if rp and rp.get("tunnel"):
            how = (f"more-specifics {', '.join(rp['more_specifics'])}" if rp["by"] == "more-specific"
                   else "AS-path prepend on the others")
            lines.append(f"  cloud steered to {rp['tunnel']} ({how})")
        elif rp:
            lines.append(f"  cloud steered by its own choice ({rp['by']})")
        if c.get("next_decision"):
            lines.append(f"  next decision due {c['next_decision']} (preempt delay, hold-down or damping)")
        if c.get("cloud_health_check"):
            lines.append(f"  cloud health check: {c['cloud_health_check']['note']}")
        rows = [_COLUMNS] + [_row(tname, t) for tname, t in c["tunnels"].items()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS) - 1)]
        for r in rows:
            lines.append("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
        dp = [f"{n} mtu {t['data_path']['mtu']} ({t['data_path']['mtu_from']}), path mtu "
              f"{t['data_path']['path_mtu'] or 'not measured'}, mss clamp {t['data_path']['mss_clamp']}"
              for n, t in c["tunnels"].items() if t.get("data_path")]
        if dp:
            lines.append("  data path: " + "; ".join(dp))
        lines += _cloud_lines(c.get("cloud_view"))
    return "\n".join(lines) + "\n"


def _cloud_lines(view: dict[str, Any] | None) -> list[str]:
    """The cloud's own view ([connection.cloud_api]) under vpnd's, and each setting that differs."""
    if not view:
        return []
    out = []
    if view.get("tunnels") or view.get("health_check"):
        bits = [f"{t} {v.get('status') or '?'} ({v.get('state') or '?'})"
                for t, v in view.get("tunnels", {}).items()]
        hc = view.get("health_check")
        if hc:
            bits.append(f"health check {hc.get('status') or '?'}" if hc.get("enabled")
                        else "health check disabled")
        out.append(f"  cloud ({view.get('asked_at') or 'not asked yet'}): " + ", ".join(bits))
    for m in view.get("mismatches", []):
        where = f"{m['tunnel']}: " if m.get("tunnel") else ""
        out.append(f"  MISMATCH {where}{m['key']}: cloud says {m['cloud']} / vpnd has {m['vpnd']}")
    if view.get("error"):
        out.append(f"  cloud: last call failed: {view['error']}")
    return out


def _headline(c: dict[str, Any]) -> str:
    pinned = " (pinned by operator)" if c.get("pinned") else ""
    if c["state"] == "active":
        return f"traffic on {c['active']}{pinned}"
    if c["state"] == "both_down":
        return f"NO TUNNEL USABLE, traffic kept on {c['active']}"
    if c["state"] == "withdrawn":
        return "NO TUNNEL USABLE, routes withdrawn"
    return "no tunnel active yet"


def _row(name: str, t: dict[str, Any]) -> tuple[str, ...]:
    ike = t["ike"] + (f" #{t['ike_id']}" if t.get("ike_id") is not None else "")
    child = t["child"] + (f" #{t['child_id']}" if t.get("child_id") is not None else "")
    if t.get("sa_state") == "last_known":
        ike, child = f"{ike} (last known)", f"{child} (last known)"
    flags = ["yes"] if t["active"] else []
    if t.get("drained"):
        flags.append("drained")
    rtt = loss = "-"
    p = t.get("probe")
    if p:
        if p["last_ok"] is False:
            rtt = "lost"
        elif p["last_rtt_ms"] is not None:
            rtt = f"{p['last_rtt_ms']:.1f} ms"
        if p["loss_percent"] is not None:
            loss = f"{p['loss_percent']:g}%"
    bgp = "-"
    if t.get("bgp"):
        bgp = t["bgp"]["state"] + (f" bfd {t['bgp']['bfd']}" if t["bgp"].get("bfd") else "")
    since = f"{_duration(t['for_seconds'])} ago" if t.get("for_seconds") is not None else "-"
    reason = t["reason"]
    if t.get("why_not_usable") and t["state"] == "established":
        reason += f"; not usable: {t['why_not_usable']}"
    if t.get("blinded"):
        reason += f"; blinded: {t['blinded']}"
    elif t.get("replies_via") not in (None, name):
        reason += f"; replies return through {t['replies_via']}"
    return (name, ike, child, ",".join(flags) or "-", rtt, loss, bgp, since, reason)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"

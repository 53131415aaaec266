"""What `vpnd status` shows: the core's picture plus what only the shell hears.

The core knows tunnel states, the active tunnel and why; it keeps no RTT history and no
notion of "BGP state not known yet". The board watches the events the supervisor dispatches
(ProbeResult, BgpSessionChanged, BfdChanged) and keeps a small summary per tunnel, so the
status is computed from the same facts the core decided on, never by asking charon or FRR
again. It holds no config secrets: only names, modes and interface names go out.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from vpnd.config.model import Config, ConnectionConfig
from vpnd.core.events import BfdChanged, BgpSessionChanged, ProbeResult, TunnelKey

STATUS_VERSION = 1
PROBE_WINDOW = 10       # the loss ratio shown is over the last PROBE_WINDOW probes

_IKE_BY_STATE = {"connecting": "CONNECTING", "phase1_failed": "FAILED"}
_CHILD_BY_STATE = {"phase2_failed": "FAILED", "ike_up": "CONNECTING", "connecting": "CONNECTING",
                   "parked": "PARKED"}


@dataclass
class ProbeSummary:
    sent: int = 0
    lost: int = 0
    last_ok: bool | None = None
    last_rtt: float | None = None           # seconds, of the last answered probe
    window: deque = field(default_factory=lambda: deque(maxlen=PROBE_WINDOW))

    def add(self, ok: bool, rtt: float | None) -> None:
        self.sent += 1
        self.lost += not ok
        self.last_ok = ok
        if ok and rtt is not None:
            self.last_rtt = rtt
        self.window.append((ok, rtt if ok else None))

    def to_json(self) -> dict[str, Any]:
        rtts = [r for ok, r in self.window if ok and r is not None]
        n = len(self.window)
        return {
            "sent": self.sent, "lost": self.lost, "last_ok": self.last_ok,
            "last_rtt_ms": _ms(self.last_rtt),
            "avg_rtt_ms": _ms(sum(rtts) / len(rtts)) if rtts else None,
            "loss_percent": round(100.0 * sum(1 for ok, _ in self.window if not ok) / n, 1)
            if n else None,
            "window": n,
        }


def evidence(summary: ProbeSummary | None) -> dict[str, Any] | None:
    """The probe facts a failover log line carries: the last results oldest first
    ('+' answered, '-' lost), the mean RTT and the loss over the window."""
    if summary is None or not summary.window:
        return None
    j = summary.to_json()
    return {"recent": "".join("+" if ok else "-" for ok, _ in summary.window),
            "avg_rtt_ms": j["avg_rtt_ms"], "loss_percent": j["loss_percent"]}


# What the cloud's console allows at its fastest and the vendor's default count (the vendor's health-check documentation):
# the smallest interval x retries that still tolerates two lost checks.
FAST_INTERVAL, FAST_RETRIES = 1, 3


def cloud_check(conn: ConnectionConfig) -> dict[str, Any] | None:
    """What the cloud's own health check means for this connection's return path, and what
    to set in the console. In route mode the cloud chooses its sending tunnel by this check
    alone (or its DPD, 30 s): vpnd moves its direction in its probes' budget, the return
    direction waits for interval x retries. None in policy mode without the table."""
    chc = conn.cloud_health_check
    route = conn.kernel_routes
    fast = f"{FAST_INTERVAL} s x {FAST_RETRIES}"
    if chc is None:
        if not route:
            return None
        return {"configured": False, "bounds_return_path": True,
                "note": "the cloud's health check is not declared ([connection.cloud_health_check]): "
                        "the cloud moves its sending tunnel only on its health check, when "
                        "tunnel 1's SAs are gone (its DPD, 30 s) or on its own; enable it in the "
                        f"console at {fast} and declare it here"}
    budget = chc.budget
    out: dict[str, Any] = {
        "configured": True, "source_ip": str(chc.source_ip),
        "destination_ip": str(chc.destination_ip), "interval_seconds": chc.interval,
        "retries": chc.retries, "switch_route": chc.switch_route, "budget_seconds": budget,
        "bounds_return_path": route,
    }
    figure = f"interval {chc.interval} s x retries {chc.retries} = {budget} s"
    if route:
        note = f"the cloud's health check bounds the return path: {figure} before the cloud moves"
    else:
        note = (f"{figure} of failed checks before the cloud withdraws a route; in {conn.routing} "
                "mode its sending tunnel follows " + ("its BGP best path" if conn.has_bgp
                                                      else "its SAs"))
    advice = []
    if route and not chc.switch_route:
        advice.append("Switch Route is off, so the cloud never moves on a failed check: set it "
                      "to Yes in the console")
    if route and budget > FAST_INTERVAL * FAST_RETRIES:
        advice.append(f"set {fast} in the console for faster return-path failover")
    out["advice"] = "; ".join(advice) or None
    out["note"] = note + ("; " + out["advice"] if out["advice"] else "")
    return out


class StatusBoard:
    """Observer of dispatched events + composer of the status the control socket serves."""

    def __init__(self, config: Callable[[], Config], engine_status: Callable[[], dict],
                 clock: Callable[[], float] = time.monotonic,
                 charon: Callable[[], dict | None] | None = None) -> None:
        self._config = config
        self._charon = charon       # CharonAdapter.unreachable: None while VICI is up
        self._engine_status = engine_status
        self._clock = clock
        self._started = clock()
        self._started_wall = time.time()
        self.probes: dict[TunnelKey, ProbeSummary] = {}
        self.bgp: dict[TunnelKey, bool] = {}
        self.bfd: dict[TunnelKey, bool] = {}
        self.cloud: dict[str, dict] = {}        # connection -> the cloud's view (vpnd.cloud.view)
        self.data_path: dict[TunnelKey, dict] = {}  # MTU, path MTU, MSS clamp (vpnd.steering.data_path)

    def observe(self, event: object) -> None:
        """Called by the supervisor with every event before the core sees it."""
        typ = type(event)
        if typ is ProbeResult:
            self.probes.setdefault(event.tunnel, ProbeSummary()).add(event.ok, event.rtt)
        elif typ is BgpSessionChanged:
            self.bgp[event.tunnel] = event.established
        elif typ is BfdChanged:
            self.bfd[event.tunnel] = event.up

    def status(self) -> dict[str, Any]:
        config = self._config()
        core = self._engine_status()
        now, wall = self._clock(), time.time()
        gone = self._charon() if self._charon is not None else None
        connections: dict[str, Any] = {}
        for conn in config.connections:
            c = core.get(conn.name)
            if c is None:
                continue
            tunnels = {}
            for t in conn.tunnels:
                s = c["tunnels"].get(t.name)
                if s is None:
                    continue
                key = TunnelKey(conn.name, t.name)
                since = s["since"] if s["reason"] != "not seen yet" else None
                probe = self.probes.get(key)
                tunnels[t.name] = {
                    "state": s["state"],
                    "ike": "ESTABLISHED" if s["ike_id"] is not None
                    else _IKE_BY_STATE.get(s["state"], "DOWN"),
                    "ike_id": s["ike_id"],
                    "child": "INSTALLED" if s["child_id"] is not None
                    else _CHILD_BY_STATE.get(s["state"], "DOWN"),
                    "child_id": s["child_id"],
                    "active": c["active"] == t.name,
                    "usable": s["usable"],
                    "why_not_usable": s["why_not_usable"] or None,
                    # the tunnel its probes' answers last came back through (the cloud picks
                    # it), and why its losses are that tunnel's, not its own ("blinded")
                    "replies_via": s.get("replies_via"),
                    "blinded": s.get("blinded") or None,
                    # vpnd tore its CHILD SA down (IKE alive, data dead) so the cloud moves
                    "parked": s.get("parked") or None,
                    "parked_until": _iso(wall - (now - s["parked_until"]))
                    if s.get("parked_until") is not None else None,
                    "drained": s["drained"],
                    "interface": t.interface,
                    "since": _iso(wall - (now - since)) if since is not None else None,
                    "for_seconds": round(now - since, 1) if since is not None else None,
                    "reason": s["reason"],
                    "probe": (probe or ProbeSummary()).to_json()
                    if conn.health_check is not None else None,
                    "bgp": self._bgp(conn.has_bgp, key),
                    # charon unreachable: ike/child are what it said last, not the present
                    "sa_state": "last_known" if gone is not None else "current",
                    "data_path": self.data_path.get(key),
                }
            connections[conn.name] = {
                "routing": conn.routing, "state": c["state"], "active": c["active"],
                "reason": c["reason"], "pinned": c["pinned"],
                # a pending preempt/failback (preempt delay, hold-down, damping) is due then
                "next_decision": _iso(wall + (c["next_decision_at"] - now))
                if c.get("next_decision_at") is not None else None,
                "tunnels": tunnels,
                "cloud_health_check": cloud_check(conn),
            }
            if conn.has_bgp:
                connections[conn.name]["return_path"] = _return_path(conn, c["active"])
        self._add_cloud_view(connections)
        return {
            "version": STATUS_VERSION,
            "daemon": {"pid": os.getpid(), "started": _iso(self._started_wall),
                       "uptime_seconds": round(now - self._started, 1),
                       "config": config.source},
            "charon": _charon_json(gone, wall),
            "connections": connections,
        }

    def _add_cloud_view(self, connections: dict[str, Any]) -> None:
        """The cloud's own view ([connection.cloud_api]) beside vpnd's: its tunnel status, its
        health check, the settings where it and vpnd differ. None when not configured."""
        for name, c in connections.items():
            c["cloud_view"] = self.cloud.get(name)

    def _bgp(self, has_bgp: bool, key: TunnelKey) -> dict[str, Any] | None:
        if not has_bgp and key not in self.bgp:
            return None
        up = self.bgp.get(key)
        bfd = self.bfd.get(key)
        return {"state": "unknown" if up is None else "Established" if up else "down",
                "bfd": None if bfd is None else "up" if bfd else "down"}


def _charon_json(gone: dict | None, wall: float) -> dict[str, Any]:
    if gone is None:
        return {"reachable": True}
    since = gone.get("since")
    return {"reachable": False, "since": _iso(since) if since else None,
            "for_seconds": round(wall - since, 1) if since else None,
            "last_error": gone.get("last_error"), "retrying": gone.get("retrying", True),
            "failed_attempts": gone.get("failed_attempts")}


def _return_path(conn: ConnectionConfig, active: str | None) -> dict[str, Any]:
    """Which tunnel vpnd's announcements steer the cloud's traffic to, and with what (the
    core's assignment as vpnd.render.frr renders it; FRR carries it out in the background)."""
    from vpnd.render.frr import active_tunnel, more_specifics, returns, steered

    if not steered(conn):
        return {"tunnel": None, "by": "ecmp" if len(conn.tunnels) > 1 else "single tunnel",
                "more_specifics": []}
    tunnel = active_tunnel(conn, {conn.name: active})
    halves = more_specifics(conn) if returns(conn) and tunnel != conn.tunnels[0].name else []
    if halves:
        return {"tunnel": tunnel, "by": "more-specific", "more_specifics": halves}
    return {"tunnel": tunnel, "by": "as-path prepend", "more_specifics": []}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

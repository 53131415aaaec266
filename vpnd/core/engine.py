"""The core's one entry point: every tunnel machine and failover policy of a Config.

The supervisor feeds it each event with the time it happened and carries out the actions it
returns, in order; it calls again with a Tick at the returned deadline (None: no timer is
pending, wait for events). Events for tunnels or connections it does not know are ignored,
so a reload racing with in-flight events is harmless. No I/O, no clock.
"""

from __future__ import annotations

from typing import Any

from vpnd.config.model import Config
from vpnd.core import failover, tunnel
from vpnd.core.actions import Action, RepairInterface, RepairRoutes, ReportTransition
from vpnd.core.events import (
    Adopted, BfdChanged, BgpSessionChanged, CharonAlert, CharonConnected, CharonDisconnected, ChildDown,
    ChildRekeyed, ChildUp, Drain, ForceFailover, IkeDown, IkeRekeyed, IkeUp, InterfaceLost,
    NegotiationFailed, OwnedRouteLost, ProbeResult, SaSnapshot, Tick, TunnelKey, Undrain,
    XfrmInTmplMismatch,
)
from vpnd.core.failover import Connection, TunnelChanged
from vpnd.core.tunnel import DEFAULT_TIMERS, Timers, Tunnel

_SA_EVENTS = (IkeUp, IkeDown, ChildUp, ChildDown, IkeRekeyed, ChildRekeyed, NegotiationFailed)
_POLICY_EVENTS = (ProbeResult, CharonAlert, BgpSessionChanged, BfdChanged, Drain, Undrain,
                  Adopted)


class Engine:
    def __init__(self, config: Config, timers: Timers = DEFAULT_TIMERS) -> None:
        self.timers = timers
        self.tunnels: dict[TunnelKey, Tunnel] = {}
        self.connections: dict[str, Connection] = {}
        self._cfg: dict[str, Any] = {}
        self._deadlines: dict[object, float] = {}
        self.next_deadline: float | None = None
        self.reload(config)
        dispatch: dict[type, Any] = {t: self._sa_event for t in _SA_EVENTS}
        dispatch.update({t: self._policy_event for t in _POLICY_EVENTS})
        dispatch.update({
            SaSnapshot: self._snapshot, CharonConnected: self._charon, Tick: self._tick,
            CharonDisconnected: self._charon, ForceFailover: self._force,
            OwnedRouteLost: self._route_lost, InterfaceLost: self._interface_lost,
            XfrmInTmplMismatch: self._xfrm_mismatch,
        })
        self._dispatch = dispatch

    def reload(self, config: Config, fresh: frozenset[str] = frozenset()) -> None:
        """Adopt a new config: state is kept for tunnels and connections that still exist
        (a connection whose tunnel list changed, or named in `fresh`, starts afresh); the
        rest is forgotten.
        New tunnels wait for charon's truth: feed a SaSnapshot after loading the new
        config into charon, and they are initiated then."""
        self.config = config
        cfgs = {c.name: c for c in config.connections}
        tunnels: dict[TunnelKey, Tunnel] = {}
        connections: dict[str, Connection] = {}
        for name, cfg in cfgs.items():
            for t in cfg.tunnels:
                key = TunnelKey(name, t.name)
                tunnels[key] = self.tunnels.get(key) or tunnel.Tunnel(key)
            old = self.connections.get(name)
            names = tuple(t.name for t in cfg.tunnels)
            connections[name] = old if old is not None and old.tunnels == names \
                and name not in fresh else failover.initial(cfg)
        self._cfg, self.tunnels, self.connections = cfgs, tunnels, connections
        self._deadlines = {}
        for key, t in tunnels.items():
            self._note(key, t.deadline(self.timers))
        for name, c in connections.items():
            self._note(name, c.deadline)
        self._recompute()

    def restart(self, keys: list[TunnelKey], now: float, reason: str) -> list[Action]:
        """Tunnels whose charon config changed (their SAs were just terminated): forget their
        SA ids, so the terminations' down events are stale, report the drop, let failover
        react as to any lost CHILD SA, and initiate at once (the next Tick is due now)."""
        out: list[Action] = []
        changes: list[TunnelChanged] = []
        for key in keys:
            old = self.tunnels.get(key)
            if old is None:
                continue
            fresh = tunnel.Tunnel(key, state=tunnel.DOWN, synced=old.synced, since=now,
                                  reason=reason, retry_at=now if old.synced else None)
            self.tunnels[key] = fresh
            if old.state != tunnel.DOWN:
                out.append(ReportTransition(key, old.state, tunnel.DOWN, reason))
            if old.established:
                changes.append(TunnelChanged(key, False, reason))
            self._note(key, fresh.deadline(self.timers))
        self._run_batch(changes, now, out)
        self._recompute()
        return out

    # --- the entry point ---------------------------------------------------------------

    def handle(self, event: object, now: float) -> tuple[list[Action], float | None]:
        handler = self._dispatch.get(type(event))
        if handler is None:
            return [], self.next_deadline
        out: list[Action] = []
        if handler(event, now, out):
            self._recompute()
        return out, self.next_deadline

    # --- routing -----------------------------------------------------------------------

    def _note(self, key: object, deadline: float | None) -> bool:
        if deadline is None:
            return self._deadlines.pop(key, None) is not None
        if self._deadlines.get(key) == deadline:
            return False
        self._deadlines[key] = deadline
        return True

    def _recompute(self) -> None:
        self.next_deadline = min(self._deadlines.values()) if self._deadlines else None

    def _run_tunnel(self, key: TunnelKey, t: Tunnel, event: object, now: float,
                    out: list[Action], changes: list[TunnelChanged] | None = None) -> bool:
        """One tunnel's step. A change of its CHILD SA state goes to failover at once, or
        into `changes` when the caller batches several tunnels (snapshot, charon events)."""
        new, actions = tunnel.decide(t, event, now, self.timers)
        self.tunnels[key] = new
        out.extend(actions)
        changed = self._note(key, new.deadline(self.timers))
        if new.established != t.established:
            why = new.reason if new.state != t.state else "CHILD SA state changed"
            change = TunnelChanged(key, new.established, why)
            if changes is None:
                changed |= self._run_policy(key.connection, (change,), now, out)
            else:
                changes.append(change)
        return changed

    def _run_policy(self, name: str, events: tuple, now: float, out: list[Action]) -> bool:
        c = self.connections.get(name)
        if c is None:
            return False
        new, actions = failover.decide_all(c, self._cfg[name], events, now)
        self.connections[name] = new
        changed = self._note(name, new.deadline)
        for a in actions:       # parking is carried out by the tunnel machine
            if type(a) is tunnel.Park or type(a) is tunnel.Unpark:
                t = self.tunnels.get(a.tunnel)
                if t is not None:
                    changed |= self._run_tunnel(a.tunnel, t, a, now, out, [])
            else:
                out.append(a)
        return changed

    def _run_batch(self, changes: list[TunnelChanged], now: float, out: list[Action]) -> bool:
        by_connection: dict[str, list[TunnelChanged]] = {}
        for change in changes:
            by_connection.setdefault(change.tunnel.connection, []).append(change)
        changed = False
        for name, events in by_connection.items():
            changed |= self._run_policy(name, tuple(events), now, out)
        return changed

    def _sa_event(self, event: Any, now: float, out: list[Action]) -> bool:
        t = self.tunnels.get(event.tunnel)
        return False if t is None else self._run_tunnel(event.tunnel, t, event, now, out)

    def _policy_event(self, event: Any, now: float, out: list[Action]) -> bool:
        return self._run_policy(event.tunnel.connection, (event,), now, out)

    def _force(self, event: ForceFailover, now: float, out: list[Action]) -> bool:
        return self._run_policy(event.to.connection, (event,), now, out)

    def _snapshot(self, event: SaSnapshot, now: float, out: list[Action]) -> bool:
        mine: dict[TunnelKey, list] = {key: [] for key in self.tunnels}
        for sa in event.sas:
            if sa.tunnel in mine:
                mine[sa.tunnel].append(sa)
        changed, changes = False, []
        for key, sas in mine.items():
            changed |= self._run_tunnel(key, self.tunnels[key], SaSnapshot(tuple(sas)), now, out,
                                        changes)
        return self._run_batch(changes, now, out) or changed

    def _charon(self, event: object, now: float, out: list[Action]) -> bool:
        changed, changes = False, []
        for key, t in list(self.tunnels.items()):
            changed |= self._run_tunnel(key, t, event, now, out, changes)
        changed |= self._run_batch(changes, now, out)
        reach = failover.CharonReach(type(event) is CharonConnected)
        for name in list(self.connections):
            changed |= self._run_policy(name, (reach,), now, out)
        return changed

    def _tick(self, event: Tick, now: float, out: list[Action]) -> bool:
        due = [k for k, d in self._deadlines.items() if d <= now]
        changed, changes = False, []
        for key in due:
            if isinstance(key, TunnelKey):
                changed |= self._run_tunnel(key, self.tunnels[key], event, now, out, changes)
        changed |= self._run_batch(changes, now, out)
        for key in due:
            if not isinstance(key, TunnelKey):
                changed |= self._run_policy(key, (event,), now, out)
        return changed

    def _xfrm_mismatch(self, event: XfrmInTmplMismatch, now: float, out: list[Action]) -> bool:
        """The counter is host-wide: it can name the connection only when exactly one runs in
        policy mode with two or more tunnels; otherwise nobody follows (a wrong guess would
        move a healthy connection)."""
        policy = [n for n, cfg in self._cfg.items()
                  if cfg.selects_by_sa and len(cfg.tunnels) > 1]
        if len(policy) != 1:
            return False
        return self._run_policy(policy[0], (event,), now, out)

    def _route_lost(self, event: OwnedRouteLost, now: float, out: list[Action]) -> bool:
        if event.connection in self.connections:
            out.append(RepairRoutes(event.connection, f"route {event.prefix} changed or lost"))
        return False

    def _interface_lost(self, event: InterfaceLost, now: float, out: list[Action]) -> bool:
        if event.tunnel in self.tunnels:
            out.append(RepairInterface(event.tunnel))
        return False

    # --- queries (status, metrics, control socket) --------------------------------------

    def usable(self, key: TunnelKey) -> bool:
        c = self.connections.get(key.connection)
        return c is not None and key.tunnel in c.tunnels and c.of(key.tunnel).usable

    def status(self) -> dict[str, Any]:
        """A JSON-ready picture: per connection the active tunnel and why, per tunnel its state."""
        out: dict[str, Any] = {}
        for name, c in self.connections.items():
            tunnels = {}
            for tname, h in zip(c.tunnels, c.health):
                t = self.tunnels[TunnelKey(name, tname)]
                tunnels[tname] = {
                    "state": t.state, "since": t.since, "reason": t.reason,
                    "ike_id": t.ike_id, "child_id": t.child_id, "usable": h.usable,
                    "why_not_usable": h.why, "probe_losses": h.losses, "drained": h.drained,
                    "replies_via": h.via, "blinded": h.blinded, "parked": h.parked,
                    "parked_until": h.park_until if h.parked else None,
                    "next_initiate": t.retry_at if not t.established else None,
                }
            out[name] = {"state": c.state, "active": c.active, "reason": c.reason,
                         "pinned": c.pinned, "next_decision_at": c.deadline, "tunnels": tunnels}
        return out

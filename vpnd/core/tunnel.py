"""One tunnel's state machine: what charon says about its SAs, and when vpnd re-initiates it.

Pure: `decide(tunnel, event, now)` returns the new `Tunnel` and the actions; nothing here
reads a clock or talks to charon.

The tunnel remembers the *set* of live SA ids (IKE SAs, and CHILD SAs with their IKE SA), not
just one id. That makes rekeys and stale events harmless by construction: a rekey swaps an id
in place, and the down event of an SA that is no longer in the set (the old SA after a
make-before-break rekey or reauthentication) changes nothing. The visible state is derived
from the sets plus the negotiation bookkeeping, and every (state, event) pair must appear in
`TRANSITIONS` with the states it may lead to: an unlisted pair or an unlisted outcome raises
`TransitionError` (the table is enforced, not decorative).

vpnd is the only party that re-initiates (swanctl is rendered with start_action=none,
dpd_action=clear, close_action=none, keyingtries=1): a tunnel without a CHILD SA is
re-initiated after a capped exponential backoff (1 s, 2, 4, 8, 12, 12 ...; the cloud retries
every 12 s), and never while a negotiation is outstanding, so SAs are not stacked.

While charon is away (VICI socket lost) the tunnel keeps its last known state and reports
nothing: charon's kernel SAs may well still carry traffic, and the probes, not the socket,
decide about traffic. Nothing is initiated and no timer runs until the full `SaSnapshot` that
follows the reconnect has been applied; that snapshot is the truth and the tunnel converges
to it, reporting only real differences.

Parking (failover decides, see "Parking" in vpnd/core/failover.py; this machine carries it
out): `Park(key, until, reason)` tears the tunnel's CHILD SAs down (Terminate with child_id,
the IKE SA stays) and holds the tunnel in PARKED: no re-initiation before `until`, whatever the
usual backoff says. At `until` the CHILD SA is initiated again over the live IKE SA (a test);
the tunnel stays PARKED with its CHILD SA installed until failover, having proven it, sends
`Unpark` (-> ESTABLISHED), or parks it again with a later `until`. `Unpark` of a tunnel held
without a CHILD SA initiates at once (the other tunnel failed: never hold the last one). The
IKE SA going away ends the parking (the tunnel is simply down, and retried as usual).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from vpnd.core.actions import Action, Initiate, ReportTransition, Terminate
from vpnd.core.events import (
    CharonConnected, CharonDisconnected, ChildDown, ChildRekeyed, ChildUp, IkeDown, IkeRekeyed,
    IkeUp, NegotiationFailed, SaSnapshot, Tick, TunnelKey,
)

DOWN = "down"
CONNECTING = "connecting"
PHASE1_FAILED = "phase1_failed"
IKE_UP = "ike_up"
PHASE2_FAILED = "phase2_failed"
ESTABLISHED = "established"
PARKED = "parked"       # vpnd tore its CHILD SA down on purpose (failover's "Parking")
STATES = (DOWN, CONNECTING, PHASE1_FAILED, IKE_UP, PHASE2_FAILED, ESTABLISHED, PARKED)

# charon's IKE_SA / CHILD_SA state names, as list-sas reports them
IKE_LIVE = frozenset({"ESTABLISHED", "REKEYING"})
IKE_NEGOTIATING = frozenset({"CREATED", "CONNECTING"})
CHILD_LIVE = frozenset({"INSTALLED", "UPDATING", "REKEYING"})
CHILD_NEGOTIATING = frozenset({"CREATED", "INSTALLING", "RETRYING"})


@dataclass(frozen=True, slots=True)
class Park:
    """Core-internal (failover -> engine -> tunnel): tear the CHILD SAs down, hold until `until`."""

    tunnel: TunnelKey
    until: float
    reason: str


@dataclass(frozen=True, slots=True)
class Unpark:
    """Core-internal: the parking is over (proven, or the other tunnel failed)."""

    tunnel: TunnelKey
    reason: str


class TransitionError(Exception):
    """A (state, event) pair or an outcome the transition table does not allow: a bug."""


@dataclass(frozen=True, slots=True)
class Timers:
    """Retry policy. Not user configuration: the cloud's own 12 s retry is the cap."""

    backoff_base: float = 1.0
    backoff_cap: float = 12.0
    negotiation_timeout: float = 30.0   # an outstanding negotiation is abandoned after this

    def backoff(self, failures: int) -> float:
        return min(self.backoff_cap, self.backoff_base * (1 << min(failures, 30)))


DEFAULT_TIMERS = Timers()


class Tunnel(NamedTuple):
    key: TunnelKey
    state: str = DOWN
    ikes: tuple[int, ...] = ()                    # live IKE SA ids, oldest first
    children: tuple[tuple[int, int], ...] = ()    # live (child_id, ike_id), oldest first
    synced: bool = False            # charon connected and its snapshot applied since
    pending_since: float | None = None   # a negotiation (ours, charon's or the peer's) is under way
    retry_at: float | None = None        # when vpnd initiates next; None: nothing planned
    failures: int = 0                    # consecutive failed negotiations, for the backoff
    failed_phase: int = 0                # 1 or 2: how the last negotiation failed; 0: it did not
    since: float = 0.0                   # when `state` was entered
    reason: str = "not seen yet"         # why it is in `state`
    park_until: float | None = None      # parked: no CHILD SA initiated before then
    parked: str = ""                     # parked: why ("" when not parked)

    @property
    def ike_id(self) -> int | None:
        """The current (newest) IKE SA."""
        return self.ikes[-1] if self.ikes else None

    @property
    def child_id(self) -> int | None:
        """The current (newest) CHILD SA."""
        return self.children[-1][0] if self.children else None

    @property
    def established(self) -> bool:
        return bool(self.children)

    def deadline(self, timers: Timers = DEFAULT_TIMERS) -> float | None:
        """When the shell must call again with a Tick; None: only events matter."""
        if not self.synced:
            return None
        if self.pending_since is not None:
            return self.pending_since + timers.negotiation_timeout
        if self.retry_at is not None and not self.children:
            return self.retry_at
        return None


def _derive(t: Tunnel) -> str:
    if t.parked and t.ikes:
        return PARKED
    if t.children:
        return ESTABLISHED
    if t.ikes:
        return PHASE2_FAILED if t.failed_phase == 2 else IKE_UP
    if t.failed_phase == 1:
        return PHASE1_FAILED
    if t.failed_phase == 2:
        return PHASE2_FAILED
    return CONNECTING if t.pending_since is not None else DOWN


# --- event kinds and the transition table ------------------------------------------------

def event_kind(event: object) -> str:
    if type(event) is NegotiationFailed:
        return "Phase1Failed" if event.phase == 1 else "Phase2Failed"
    return type(event).__name__


EVENT_KINDS = (
    "IkeUp", "IkeDown", "ChildUp", "ChildDown", "IkeRekeyed", "ChildRekeyed", "Phase1Failed",
    "Phase2Failed", "SaSnapshot", "CharonConnected", "CharonDisconnected", "Tick", "Park",
    "Unpark",
)



def _same(state: str) -> frozenset[str]:
    return frozenset({state})


def _table() -> dict[tuple[str, str], frozenset[str]]:
    d, c, p1, iu, p2, e = DOWN, CONNECTING, PHASE1_FAILED, IKE_UP, PHASE2_FAILED, ESTABLISHED
    pk = PARKED
    t: dict[tuple[str, str], frozenset[str]] = {}

    def row(kind: str, **targets: set[str]) -> None:
        for state in STATES:
            t[(state, kind)] = frozenset(targets[state])

    # phase 1 done: a child is expected; an extra IKE SA beside a live child changes nothing
    row("IkeUp", down={iu}, connecting={iu}, phase1_failed={iu}, ike_up={iu},
        phase2_failed={iu}, established={e}, parked={pk})
    # stale ids (not in the set) leave every state alone
    row("IkeDown", down={d}, connecting={c}, phase1_failed={p1}, ike_up={iu, d},
        phase2_failed={p2}, established={e, iu, d}, parked={pk, d})
    # parked: the CHILD SA coming back is the test; only Unpark ends the parking
    row("ChildUp", down={e}, connecting={e}, phase1_failed={e}, ike_up={e},
        phase2_failed={e}, established={e}, parked={pk})
    row("ChildDown", down={d}, connecting={c}, phase1_failed={p1}, ike_up={iu},
        phase2_failed={p2}, established={e, iu}, parked={pk})
    # a rekey never changes the state
    for kind in ("IkeRekeyed", "ChildRekeyed", "CharonConnected", "CharonDisconnected"):
        row(kind, **{s: {s} for s in STATES})
    # failures while a CHILD SA is installed concern extra SAs (a failed rekey): ignored
    row("Phase1Failed", down={p1}, connecting={p1}, phase1_failed={p1}, ike_up={iu},
        phase2_failed={p2, p1}, established={e}, parked={pk})
    row("Phase2Failed", down={p2}, connecting={p2}, phase1_failed={p2}, ike_up={p2},
        phase2_failed={p2}, established={e}, parked={pk})
    # the snapshot is the truth: anything may follow
    row("SaSnapshot", **{s: set(STATES) for s in STATES})
    # timers: a retry starts (down -> connecting), or an outstanding negotiation times out
    row("Tick", down={d, c}, connecting={c, p1}, phase1_failed={p1}, ike_up={iu, p2},
        phase2_failed={p2, p1}, established={e}, parked={pk})
    # only a tunnel with a live IKE SA is parked (else nothing changes); Unpark ends it
    row("Park", down={d}, connecting={c}, phase1_failed={p1}, ike_up={pk},
        phase2_failed={pk, p2}, established={pk}, parked={pk})
    row("Unpark", down={d}, connecting={c}, phase1_failed={p1}, ike_up={iu},
        phase2_failed={p2}, established={e}, parked={e, iu, p2})
    return t


TRANSITIONS: dict[tuple[str, str], frozenset[str]] = _table()


# --- handlers: (tunnel, event, now, timers) -> (tunnel, reason, actions) ---------------------

def _retry_later(t: Tunnel, now: float, timers: Timers) -> Tunnel:
    if t.parked and t.park_until is not None:
        return t._replace(retry_at=max(t.park_until, now + timers.backoff(t.failures)))
    return t._replace(retry_at=now + timers.backoff(t.failures))


def _ike_up(t: Tunnel, ev: IkeUp, now: float, timers: Timers):
    if ev.ike_id in t.ikes:
        return t, "", []
    # a new IKE SA is a new attempt: its CHILD SA is on its way (IKE_AUTH carries it)
    pending = t.pending_since if t.pending_since is not None or t.children else now
    return (t._replace(ikes=t.ikes + (ev.ike_id,), failed_phase=0, pending_since=pending),
            f"IKE SA {ev.ike_id} established", [])


def _ike_down(t: Tunnel, ev: IkeDown, now: float, timers: Timers):
    if ev.ike_id not in t.ikes:
        return t, "", []
    ikes = tuple(i for i in t.ikes if i != ev.ike_id)
    children = tuple(c for c in t.children if c[1] != ev.ike_id)
    new = t._replace(ikes=ikes, children=children)
    if not ikes and t.parked:       # nothing left to park: simply down, retried as usual
        new = new._replace(parked="", park_until=None)
    if not ikes and t.pending_since is not None:     # the negotiation in flight died with it
        new = new._replace(pending_since=None, failures=t.failures + 1)
    if not children and (t.children or not ikes):
        new = _retry_later(new, now, timers)
    return new, f"IKE SA {ev.ike_id} down: {ev.reason}", []


def _child_up(t: Tunnel, ev: ChildUp, now: float, timers: Timers):
    if any(c[0] == ev.child_id for c in t.children):
        return t, "", []
    ikes = t.ikes if ev.ike_id in t.ikes else t.ikes + (ev.ike_id,)
    return (t._replace(ikes=ikes, children=t.children + ((ev.child_id, ev.ike_id),),
                    pending_since=None, retry_at=None, failures=0, failed_phase=0),
            f"CHILD SA {ev.child_id} installed", [])


def _child_down(t: Tunnel, ev: ChildDown, now: float, timers: Timers):
    if not any(c[0] == ev.child_id for c in t.children):
        return t, "", []
    children = tuple(c for c in t.children if c[0] != ev.child_id)
    new = t._replace(children=children)
    if not children:
        new = _retry_later(new, now, timers)
    return new, f"CHILD SA {ev.child_id} down: {ev.reason}", []


def _ike_rekeyed(t: Tunnel, ev: IkeRekeyed, now: float, timers: Timers):
    old, new_id = ev.old_ike_id, ev.new_ike_id
    if old not in t.ikes or old == new_id:
        return t, "", []
    if new_id in t.ikes:
        ikes = tuple(i for i in t.ikes if i != old)
    else:
        ikes = tuple(new_id if i == old else i for i in t.ikes)
    children = tuple((c, new_id if i == old else i) for c, i in t.children)
    return t._replace(ikes=ikes, children=children), "", []


def _child_rekeyed(t: Tunnel, ev: ChildRekeyed, now: float, timers: Timers):
    old, new_id = ev.old_child_id, ev.new_child_id
    if old == new_id or not any(c[0] == old for c in t.children):
        return t, "", []
    if any(c[0] == new_id for c in t.children):
        children = tuple(c for c in t.children if c[0] != old)
    else:
        children = tuple((new_id if c == old else c, i) for c, i in t.children)
    return t._replace(children=children), "", []


def _failed(t: Tunnel, ev: NegotiationFailed, now: float, timers: Timers):
    if t.children:
        return t, "", []        # an extra SA or a rekey failed; the installed one still works
    # phase 1 failing beside a live IKE SA concerns another attempt: that IKE SA still stands
    phase = t.failed_phase if ev.phase == 1 and t.ikes else ev.phase
    new = _retry_later(t._replace(pending_since=None, failures=t.failures + 1,
                                  failed_phase=phase), now, timers)
    return new, f"phase {ev.phase} failed: {ev.reason}", []


def _charon_connected(t: Tunnel, ev: CharonConnected, now: float, timers: Timers):
    return t, "", []


def _charon_disconnected(t: Tunnel, ev: CharonDisconnected, now: float, timers: Timers):
    return t._replace(synced=False), "", []


def _snapshot(t: Tunnel, ev: SaSnapshot, now: float, timers: Timers):
    mine = [sa for sa in ev.sas if sa.tunnel == t.key and sa.ike_id is not None]
    live = [sa for sa in mine if sa.ike_state in IKE_LIVE]
    negotiating = any(sa.ike_state in IKE_NEGOTIATING for sa in mine) or any(
        sa.ike_state in IKE_LIVE and sa.child_state in CHILD_NEGOTIATING for sa in mine)
    actions: list[Action] = []

    # duplicates: keep the newest IKE SA holding an installed child (else the newest one);
    # only ESTABLISHED extras are terminated, never one in the middle of a rekey
    live_ikes = sorted({sa.ike_id for sa in live})
    with_child = sorted({sa.ike_id for sa in live
                         if sa.child_id is not None and sa.child_state in CHILD_LIVE})
    keep = (with_child or live_ikes or [None])[-1]
    for ike in live_ikes:
        if ike != keep and any(sa.ike_id == ike and sa.ike_state == "ESTABLISHED" for sa in live):
            actions.append(Terminate(t.key, ike))
    dropped = {a.ike_id for a in actions}
    ikes = tuple(i for i in live_ikes if i not in dropped)
    children = tuple(sorted({(sa.child_id, sa.ike_id) for sa in live
                             if sa.ike_id in ikes and sa.child_id is not None
                             and sa.child_state in CHILD_LIVE}))
    # ids we already had keep their order (oldest first), new ones follow: current ids stay
    ikes = tuple([i for i in t.ikes if i in ikes] + [i for i in ikes if i not in t.ikes])
    children = tuple([c for c in t.children if c in children]
                     + [c for c in children if c not in t.children])

    if children:
        pending = None
    elif negotiating:
        pending = t.pending_since if t.pending_since is not None else now
    elif t.synced:
        pending = t.pending_since       # our own initiate may simply not be listed yet
    else:
        pending = None                  # after a reconnect: an initiate sent before is lost
    new = t._replace(ikes=ikes, children=children, pending_since=pending, synced=True)
    if children:
        new = new._replace(retry_at=None, failures=0, failed_phase=0)
    elif new.retry_at is None:
        new = new._replace(retry_at=now if not t.synced else now + timers.backoff(t.failures))
    if ikes and new.failed_phase == 1:
        new = new._replace(failed_phase=0)
    if new.parked and not ikes:
        new = new._replace(parked="", park_until=None)
    elif new.parked and not children and new.park_until is not None:
        new = new._replace(retry_at=max(new.park_until, new.retry_at or now))
    if children:
        what = f"CHILD SA {children[-1][0]} installed"
    elif ikes:
        what = f"IKE SA {ikes[-1]} established without a CHILD SA"
    elif pending is not None:
        what = "negotiating"
    else:
        what = "no SA"
    return new, f"resync: charon lists {what}", actions


def _tick(t: Tunnel, ev: Tick, now: float, timers: Timers):
    if not t.synced:
        return t, "", []
    if t.pending_since is not None:
        if now < t.pending_since + timers.negotiation_timeout:
            return t, "", []
        waited = now - t.pending_since
        if t.ikes:      # IKE SA up, CHILD SA never came: retry the child over the same IKE SA
            new = t._replace(pending_since=None, failures=t.failures + 1, failed_phase=2,
                          retry_at=now + timers.backoff(t.failures + 1))
            return new, f"phase 2 failed: no CHILD SA after {waited:.0f} s", []
        new = t._replace(pending_since=None, failures=t.failures + 1, failed_phase=1,
                      retry_at=now + timers.backoff(t.failures + 1))
        return new, f"phase 1 failed: no IKE SA after {waited:.0f} s", [Terminate(t.key)]
    if t.children or t.retry_at is None or now < t.retry_at:
        return t, "", []
    attempt = t.failures + 1
    new = t._replace(pending_since=now, retry_at=None)
    return new, f"initiating (attempt {attempt})", [Initiate(t.key)]


def _park(t: Tunnel, ev: Park, now: float, timers: Timers):
    if not t.ikes:
        return t, "", []            # nothing to park: the IKE SA is gone already
    actions: list[Action] = [Terminate(t.key, child_id=c) for c, _ in t.children]
    new = t._replace(parked=ev.reason, park_until=ev.until,
                     retry_at=ev.until if not t.children else t.retry_at)
    return new, f"parked: {ev.reason}", actions


def _unpark(t: Tunnel, ev: Unpark, now: float, timers: Timers):
    if not t.parked:
        return t, "", []
    new = t._replace(parked="", park_until=None)
    if not t.children and t.pending_since is None:
        new = new._replace(retry_at=now)        # held without a CHILD SA: test it now
    return new, f"unparked: {ev.reason}", []


_HANDLERS = {
    IkeUp: _ike_up, IkeDown: _ike_down, ChildUp: _child_up, ChildDown: _child_down,
    IkeRekeyed: _ike_rekeyed, ChildRekeyed: _child_rekeyed, NegotiationFailed: _failed,
    SaSnapshot: _snapshot, CharonConnected: _charon_connected,
    CharonDisconnected: _charon_disconnected, Tick: _tick, Park: _park, Unpark: _unpark,
}

_TICK = Tick()


def _step(t: Tunnel, event: object, kind: str, now: float, timers: Timers,
          out: list[Action]) -> Tunnel:
    allowed = TRANSITIONS.get((t.state, kind))
    if allowed is None:
        raise TransitionError(f"{t.key}: no transition for event {kind} in state {t.state}")
    new, reason, actions = _HANDLERS[type(event)](t, event, now, timers)
    out.extend(actions)
    if new is t:
        return t
    state = _derive(new)
    if state not in allowed:
        raise TransitionError(f"{t.key}: {kind} may not lead from {t.state} to {state}")
    if state != t.state:
        out.append(ReportTransition(t.key, t.state, state, reason))
        return new._replace(state=state, since=now, reason=reason)
    return new


def decide(t: Tunnel, event: object, now: float,
           timers: Timers = DEFAULT_TIMERS) -> tuple[Tunnel, list[Action]]:
    """Apply one event, then any timer that is due (so a due retry is never lost)."""
    out: list[Action] = []
    kind = event_kind(event)
    t = _step(t, event, kind, now, timers, out)
    if kind != "Tick":
        t = _step(t, _TICK, "Tick", now, timers, out)
    return t, out

"""Failover policy: which tunnel of a connection carries traffic, and why.

Pure: `decide(connection, config, event, now)` returns the new `Connection` and actions.

A tunnel is *usable* when its CHILD SA is installed, its probes pass (only when a health check
is configured with switch_route=true), and in bgp mode its BGP session is established and BFD
(when known) is not down. Probes pass once one probe has been answered and until `retries`
consecutive probes are lost (the cloud's semantics), the mean RTT of the last `retries`
answers exceeds max_rtt_ms, or the loss over the last WINDOW probes exceeds max_loss_percent.

Switches come in three kinds, and only the last one is ever delayed:

* forced: the active tunnel is unusable, or drained while another tunnel is usable, or no
  tunnel is active. Always done at once, to the best usable tunnel: traffic must survive, and
  damping must never hold it on a dead tunnel.
* operator: ForceFailover(to) onto a usable tunnel. Done at once.
* discretionary: moving from a usable tunnel to a preferred one (preempt back to tunnel 1,
  only when preempt=true, or back to the pinned tunnel). Needs the target usable continuously
  for preempt_delay, hold_down since the last switch of any kind, and fewer than
  max_switches_per_minute switches of any kind in the last 60 s.

The damping bound that follows: in any 60 s window at most max_switches_per_minute switches
happen up to and including the last discretionary one, so discretionary switches never
exceed the limit, and every further switch in the window is forced or operator-made, each one
caused by the active tunnel failing (or being drained/forced away).

When no tunnel is usable ("both down"), nothing moves to a tunnel that is no better:
both_down=keep leaves traffic on the last active tunnel (no clear-text leak: the routes keep
pointing into the tunnel), withdraw emits SetActive(None, withdraw=True). The first tunnel
that becomes usable again is taken at once.

Operators: Drain(t) keeps traffic off t whenever another tunnel is usable. ForceFailover(to)
moves traffic to `to` if it is usable (undraining it) and pins it: the pinned tunnel is
preferred over the configured order, with preemption back to it even when preempt=false, and
if it fails traffic escapes as usual. Undrain of any tunnel of the connection clears the pin:
"undrain" means "back to automatic". ForceFailover onto an unusable tunnel changes nothing.

switch_route=false: probes are report-only (the cloud's "do not withdraw routes when health
checks fail"): they never make a tunnel unusable, so they never move traffic; CHILD SA state
still does, as it does without a health check.

bgp mode: the same decision, plus SetBgpNeighbor per tunnel: a neighbor is enabled while its
tunnel is healthy (CHILD SA installed and probes passing; never depending on BGP/BFD state,
which would deadlock) and not excluded (drained, or not the pinned tunnel) while another
tunnel is usable. SetActive is emitted for reporting.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vpnd.config.model import ConnectionConfig
from vpnd.core.actions import Action, SetActive, SetBgpNeighbor
from vpnd.core.events import (
    BfdChanged, BgpSessionChanged, CharonAlert, Drain, ForceFailover, ProbeResult, Tick,
    TunnelKey, Undrain,
)

WINDOW = 10              # probes kept for the loss-percentage threshold
DAMPING_PERIOD = 60.0    # max_switches_per_minute counts switches over this sliding window

FORCED = "forced"
OPERATOR = "operator"
DISCRETIONARY = "discretionary"


@dataclass(frozen=True, slots=True)
class TunnelChanged:
    """Core-internal event: the tunnel machine's CHILD SA state changed (engine -> failover)."""

    tunnel: TunnelKey
    established: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Health:
    """What failover knows about one tunnel."""

    established: bool = False
    answered: bool = False          # a probe has been answered at least once
    losses: int = 0                 # consecutive lost probes
    fail_at: int | None = None      # budget shortened by a CharonAlert; None: `retries`
    window: tuple[tuple[bool, float | None], ...] = ()
    bgp: bool = False
    bfd: bool | None = None
    drained: bool = False
    healthy: bool = False           # CHILD SA + probes (drives the BGP neighbor)
    usable: bool = False            # healthy + BGP/BFD in bgp mode (may carry traffic)
    since: float | None = None      # usable continuously since
    why: str = "CHILD SA not installed"   # why not usable; "" when usable
    neighbor: bool | None = None    # the last SetBgpNeighbor sent; None: none yet


@dataclass(frozen=True, slots=True)
class Connection:
    name: str
    tunnels: tuple[str, ...]
    health: tuple[Health, ...]
    active: str | None = None
    both_down: bool = False
    pinned: str | None = None
    last_switch: float | None = None
    switches: tuple[tuple[float, str], ...] = ()    # (time, kind) of the last 60 s
    deadline: float | None = None   # a discretionary switch becomes possible then
    reason: str = "no tunnel usable yet"

    def of(self, tunnel: str) -> Health:
        return self.health[self.tunnels.index(tunnel)]

    @property
    def state(self) -> str:
        if self.active is None:
            return "withdrawn" if self.both_down else "waiting"
        return "both_down" if self.both_down else "active"


def initial(cfg: ConnectionConfig) -> Connection:
    names = tuple(t.name for t in cfg.tunnels)
    return Connection(cfg.name, names, tuple(Health() for _ in names))


# --- health ----------------------------------------------------------------------------

def _probe_problem(h: Health, cfg: ConnectionConfig) -> str:
    hc = cfg.health_check
    if not h.answered:
        return "no probe answered yet"
    retries = max(1, hc.retries)
    budget = retries if h.fail_at is None else min(retries, h.fail_at)
    if h.losses >= budget:
        return f"{h.losses} probes lost in a row"
    if hc.max_rtt_ms is not None:
        rtts = [r for ok, r in h.window if ok and r is not None][-retries:]
        if len(rtts) >= retries:
            mean_ms = 1000.0 * sum(rtts) / len(rtts)
            if mean_ms > hc.max_rtt_ms:
                return f"probe RTT {mean_ms:.0f} ms > max_rtt_ms {hc.max_rtt_ms:g}"
    if hc.max_loss_percent is not None and len(h.window) >= WINDOW:
        loss = 100.0 * sum(1 for ok, _ in h.window if not ok) / len(h.window)
        if loss > hc.max_loss_percent:
            return f"probe loss {loss:.0f}% > max_loss_percent {hc.max_loss_percent:g}"
    return ""


def _assess(h: Health, cfg: ConnectionConfig, now: float) -> Health:
    if not h.established:
        healthy, usable, why = False, False, "CHILD SA not installed"
    else:
        hc = cfg.health_check
        why = _probe_problem(h, cfg) if hc is not None and hc.switch_route else ""
        healthy = not why
        usable = healthy
        if healthy and cfg.routing == "bgp":
            if h.bfd is False:
                usable, why = False, "BFD down"
            elif not h.bgp:
                usable, why = False, "BGP session not established"
    since = (h.since if h.since is not None else now) if usable else None
    if (healthy, usable, why, since) == (h.healthy, h.usable, h.why, h.since):
        return h
    return replace(h, healthy=healthy, usable=usable, why=why, since=since)


def _probe(h: Health, ev: ProbeResult) -> Health:
    window = (h.window + ((ev.ok, ev.rtt),))[-WINDOW:]
    if ev.ok:
        return replace(h, answered=True, losses=0, fail_at=None, window=window)
    return replace(h, losses=h.losses + 1, window=window)


# --- the decision --------------------------------------------------------------------------

def _index(c: Connection, key: TunnelKey) -> int | None:
    if key.connection != c.name:
        return None
    try:
        return c.tunnels.index(key.tunnel)
    except ValueError:
        return None


def decide(c: Connection, cfg: ConnectionConfig, event: object,
           now: float) -> tuple[Connection, list[Action]]:
    typ = type(event)
    operator_to: str | None = None
    health = list(c.health)
    if typ is Tick:
        pass
    elif typ is ForceFailover:
        i = _index(c, event.to)
        if i is None:
            return c, []
        operator_to = event.to.tunnel
    else:
        i = _index(c, event.tunnel)
        if i is None:
            return c, []
        h = health[i]
        if typ is ProbeResult:
            h = _probe(h, event)
        elif typ is TunnelChanged:
            h = replace(h, established=event.established)
        elif typ is CharonAlert:
            fail_at = h.losses + 1
            h = replace(h, fail_at=fail_at if h.fail_at is None else min(h.fail_at, fail_at))
        elif typ is BgpSessionChanged:
            h = replace(h, bgp=event.established)
        elif typ is BfdChanged:
            h = replace(h, bfd=event.up)
        elif typ is Drain:
            h = replace(h, drained=True)
        elif typ is Undrain:
            h = replace(h, drained=False)
            c = replace(c, pinned=None)
        else:
            return c, []
        health[i] = h
    health = [_assess(h, cfg, now) for h in health]
    c = replace(c, health=tuple(health))
    return _choose(c, cfg, now, operator_to)


def _switch(c: Connection, to: str, kind: str, reason: str, now: float,
            out: list[Action]) -> Connection:
    switches = tuple(s for s in c.switches if s[0] > now - DAMPING_PERIOD) + ((now, kind),)
    out.append(SetActive(c.name, to, reason))
    return replace(c, active=to, both_down=False, last_switch=now, switches=switches,
                   reason=reason, deadline=None)


def _damping_release(c: Connection, limit: int, now: float) -> float | None:
    """When fewer than `limit` switches are left in the window (now if already); None: never."""
    if limit <= 0:
        return None
    recent = [s[0] for s in c.switches if s[0] > now - DAMPING_PERIOD]
    if len(recent) < limit:
        return now
    return recent[-limit] + DAMPING_PERIOD


def _choose(c: Connection, cfg: ConnectionConfig, now: float,
            operator_to: str | None) -> tuple[Connection, list[Action]]:
    fo = cfg.failover
    out: list[Action] = []
    by_name = dict(zip(c.tunnels, c.health))
    cur = c.active

    if operator_to is not None:
        target = by_name[operator_to]
        if target.usable:
            if target.drained:
                i = c.tunnels.index(operator_to)
                health = list(c.health)
                health[i] = replace(target, drained=False)
                c = replace(c, health=tuple(health))
                by_name[operator_to] = health[i]
            c = replace(c, pinned=operator_to)
            if cur != operator_to:
                c = _switch(c, operator_to, OPERATOR,
                            f"operator: force failover to {operator_to}", now, out)
                cur = operator_to

    usable = [t for t in c.tunnels if by_name[t].usable]
    best = min(usable, key=lambda t: (by_name[t].drained, t != c.pinned,
                                      c.tunnels.index(t))) if usable else None

    if best is None:
        c = replace(c, deadline=None)
        if cur is not None and not c.both_down:
            why = by_name[cur].why
            if fo.both_down == "withdraw":
                reason = f"no tunnel usable ({cur}: {why}): withdrawing routes"
                out.append(SetActive(c.name, None, reason, withdraw=True))
                c = replace(c, active=None, both_down=True, reason=reason)
            else:
                reason = f"no tunnel usable ({cur}: {why}): keeping traffic on {cur}"
                out.append(SetActive(c.name, cur, reason))
                c = replace(c, both_down=True, reason=reason)
    elif cur is None:
        reason = (f"{best} recovered, routes restored" if c.both_down else f"{best} usable")
        c = _switch(c, best, FORCED, reason, now, out)
    elif not by_name[cur].usable:
        c = _switch(c, best, FORCED, f"{cur}: {by_name[cur].why}: switched to {best}", now, out)
    elif by_name[cur].drained and not by_name[best].drained:
        c = _switch(c, best, FORCED, f"{cur} drained: switched to {best}", now, out)
    else:
        if c.both_down:
            reason = f"{cur} recovered"
            out.append(SetActive(c.name, cur, reason))
            c = replace(c, both_down=False, reason=reason)
        deadline = None
        if best != cur and (fo.preempt or best == c.pinned):
            release = _damping_release(c, fo.max_switches_per_minute, now)
            if release is not None:
                since = by_name[best].since
                hold = c.last_switch + fo.hold_down if c.last_switch is not None else now
                due = max(since + fo.preempt_delay, hold, release)
                if now >= due:
                    what = "pinned" if best == c.pinned else "preferred"
                    c = _switch(c, best, DISCRETIONARY,
                                f"{what} {best} healthy for {now - since:.1f} s: switched back",
                                now, out)
                else:
                    deadline = due
        if c.deadline != deadline:
            c = replace(c, deadline=deadline)

    if cfg.routing == "bgp":
        c = _neighbors(c, out)
    return c, out


def _neighbors(c: Connection, out: list[Action]) -> Connection:
    health = list(c.health)
    any_usable = [h.usable for h in health]
    for i, h in enumerate(health):
        excluded = h.drained or (c.pinned is not None and c.pinned != c.tunnels[i])
        other_usable = any(u for j, u in enumerate(any_usable) if j != i)
        enabled = h.healthy and not (excluded and other_usable)
        if enabled != h.neighbor:
            if enabled:
                reason = "healthy"
            elif not h.healthy:
                reason = h.why
            else:
                reason = "drained" if h.drained else f"pinned to {c.pinned}"
            out.append(SetBgpNeighbor(TunnelKey(c.name, c.tunnels[i]), enabled, reason))
            health[i] = replace(h, neighbor=enabled)
    if health != list(c.health):
        c = replace(c, health=tuple(health))
    return c

"""Failover policy: which tunnel of a connection carries traffic, and why.

Pure: `decide(connection, config, event, now)` returns the new `Connection` and actions.

A tunnel is *usable* when its CHILD SA is installed, its probes pass (only when a health check
is configured with switch_route=true), and in bgp mode its BGP session is established and BFD
(when known) is not down. Probes pass once one probe has been answered and until `retries`
consecutive probes are lost (the cloud's semantics), the mean RTT of the last `retries`
answers exceeds max_rtt_ms, or the loss over the last WINDOW probes exceeds max_loss_percent.
A CharonAlert (charon retransmitting on a tunnel) cuts that tunnel's budget to one more lost
probe until the next answer; by itself it changes no tunnel's usability, so it never switches
(without a health check it does nothing). A tunnel's CHILD SA going down makes it unusable at
once: no waiting for probe retries.

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

A restart keeps what it finds: Adopted(t) (vpnd's own routes, or FRR's route-maps, already
steer traffic onto t at start) makes t the first choice in tunnel 1's place, with the same
start-up grace; moving back to tunnel 1 later is an ordinary discretionary switch. So a vpnd
restarted while traffic is on tunnel 2 (preempt_delay pending, preempt=false) moves nothing.

Policy mode, the cloud's move (XfrmInTmplMismatch rising, the seed's signal that the cloud
sends on the standby): once it rose MISMATCH_RISES times within MISMATCH_WINDOW seconds, and
not within hold_down of the last switch (packets still in flight from our own switch), vpnd
follows at once to the best other usable, undrained tunnel and pins it ("the cloud's
choice": no preemption away from it; if it fails traffic escapes as usual). Traffic arriving
on the other tunnel is being dropped meanwhile, so this is never damped beyond hold_down.
With no other usable tunnel nothing moves. The counter rising again later means the cloud
moved once more, and vpnd follows again.

switch_route=false: probes are report-only (the cloud's "do not withdraw routes when health
checks fail"): they never make a tunnel unusable, so they never move traffic; CHILD SA state
still does, as it does without a health check.

bgp mode: the same decision. With standby = "prepend" SetActive is what moves traffic: the
BGP adapter gives the active tunnel's neighbor the allow-all route-maps and every other one the
standby ones (AS-path prepend out, lower local-preference in), with a soft refresh, so
preempt_delay, hold_down, damping, preempt=false, drain and pinning govern traffic as in route
mode (before the first SetActive the rendering prefers tunnel 1). With "ecmp" SetActive only
reports. Plus SetBgpNeighbor per tunnel, the fast path out of a failing tunnel: a neighbor is
enabled while its tunnel is not failing (its CHILD SA went down, or its probes failed; never
BGP/BFD state, which would deadlock, and never "not known yet", which would shut sessions
whenever vpnd restarts) and, in ecmp mode only, not excluded (drained, or not the pinned tunnel
while the pinned one is active) while another tunnel is usable; with prepend the route-maps
keep traffic off an excluded tunnel and its session stays up, ready. "Its probes failed"
needs evidence in bgp mode (a cloud that learns the LAN only over BGP cannot answer before
the session is up): only losses while the tunnel's own session is Established count, and
only once the path has worked (an answer since the neighbor was last enabled) or the session
has been up for bgp_grace; with no session of the connection up at all, lost probes prove
nothing and a neighbor shut for them is enabled again with a fresh trial. So the health check
withdraws a working path and never blocks bring-up. The active tunnel's
neighbor stays up while it fails if no other tunnel is usable and both_down=keep (shutting it
would withdraw everything: that is "keep" in BGP terms). Neighbors start as rendered (enabled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from vpnd.config.model import ConnectionConfig
from vpnd.core.actions import Action, SetActive, SetBgpNeighbor
from vpnd.core.events import (
    Adopted, BfdChanged, BgpSessionChanged, CharonAlert, Drain, ForceFailover, ProbeResult, Tick,
    TunnelKey, Undrain, XfrmInTmplMismatch,
)

NO_ANSWER = "no probe answered yet"
WINDOW = 10              # probes kept for the loss-percentage threshold
DAMPING_PERIOD = 60.0    # max_switches_per_minute counts switches over this sliding window

FORCED = "forced"
OPERATOR = "operator"
DISCRETIONARY = "discretionary"
CLOUD = "cloud"
MISMATCH_RISES = 2       # rises of XfrmInTmplMismatch that confirm the cloud's move...
MISMATCH_WINDOW = 2.0    # ...within this many seconds (one stray packet is no move)


@dataclass(frozen=True, slots=True)
class TunnelChanged:
    """Core-internal event: the tunnel machine's CHILD SA state changed (engine -> failover)."""

    tunnel: TunnelKey
    established: bool
    reason: str


class Health(NamedTuple):
    """What failover knows about one tunnel."""

    established: bool = False
    seen_up: bool = False           # the CHILD SA has been installed at least once
    answered: bool = False          # a probe has been answered at least once
    losses: int = 0                 # consecutive lost probes
    fail_at: int | None = None      # budget shortened by a CharonAlert; None: `retries`
    window: tuple[tuple[bool, float | None], ...] = ()
    bgp: bool = False
    bfd: bool | None = None
    drained: bool = False
    failing: bool = False           # a positive failure (drives the BGP neighbor)
    usable: bool = False            # may carry traffic (see the module docstring)
    since: float | None = None      # usable continuously since
    why: str = "CHILD SA not installed"   # why not usable; "" when usable
    neighbor: bool = True           # the last SetBgpNeighbor sent (rendered: enabled)
    lost_up: int = 0                # consecutive losses while its CHILD SA was installed
    lost_bgp: int = 0               # consecutive losses while its BGP session was Established
    proven: bool = False            # answered since its neighbor was last (re-)enabled
    bgp_since: float | None = None  # its BGP session Established since


class Connection(NamedTuple):
    name: str
    tunnels: tuple[str, ...]
    health: tuple[Health, ...]
    active: str | None = None
    both_down: bool = False
    pinned: str | None = None
    last_switch: float | None = None
    last_kind: str | None = None        # forced / operator / discretionary (for metrics)
    switches: tuple[float, ...] = ()    # times of the switches of the last 60 s
    deadline: float | None = None   # a discretionary switch becomes possible then
    reason: str = "no tunnel usable yet"
    mismatches: tuple[float, ...] = ()  # recent XfrmInTmplMismatch rises (policy mode)
    adopted: str | None = None          # traffic found on this tunnel at start (Adopted)

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
    if not h.answered and h.losses < max(1, hc.retries):
        return NO_ANSWER
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
    hc = cfg.health_check
    probe = _probe_problem(h, cfg) if hc is not None and hc.switch_route else ""
    # bgp: a probe lost while the tunnel's own session was not Established is no evidence (a
    # cloud that learns the LAN only over BGP cannot answer before it is up): only losses
    # with the session up count against the neighbor, so bring-up is never blocked
    # and only once the path has worked (an answer) or the session has had bgp_grace to
    # carry the routes both ways (UPDATEs, the cloud's route install)
    evidence = probe
    if probe and cfg.routing == "bgp":
        trial_over = h.proven or (h.bgp_since is not None and now - h.bgp_since >= bgp_grace(cfg))
        evidence = _probe_problem(h._replace(losses=h.lost_bgp if trial_over else 0), cfg)
    # "no answer yet" is no failure: it must not shut a BGP session when vpnd (re)starts,
    # nor must a CHILD SA that was never seen since then
    failing = (h.seen_up and not h.established) or (bool(evidence) and evidence != NO_ANSWER)
    if not h.established:
        usable, why = False, "CHILD SA not installed"
    else:
        usable, why = not probe, probe
        if usable and cfg.routing == "bgp":
            if h.bfd is False:
                usable, why = False, "BFD down"
            elif not h.bgp:
                usable, why = False, "BGP session not established"
    since = (h.since if h.since is not None else now) if usable else None
    if (failing, usable, why, since) == (h.failing, h.usable, h.why, h.since):
        return h
    return h._replace(failing=failing, usable=usable, why=why, since=since)


def bgp_grace(cfg: ConnectionConfig) -> float:
    """bgp: how long a new session may go without an answered probe before losses count
    (routes must cross both ways first); an answer ends the trial at once."""
    hc = cfg.health_check
    return max(10.0, hc.interval * (hc.retries + 1)) if hc is not None else 0.0


def _probe(h: Health, ev: ProbeResult) -> Health:
    window = (h.window + ((ev.ok, ev.rtt),))[-WINDOW:]
    if ev.ok:
        return h._replace(answered=True, losses=0, fail_at=None, window=window, lost_up=0,
                          lost_bgp=0, proven=True)
    return h._replace(losses=h.losses + 1, window=window, lost_up=h.lost_up + h.established,
                      lost_bgp=h.lost_bgp + h.bgp)


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
    return decide_all(c, cfg, (event,), now)


def decide_all(c: Connection, cfg: ConnectionConfig, events: Sequence[object],
               now: float) -> tuple[Connection, list[Action]]:
    """Several simultaneous facts (one snapshot's tunnel changes) -> one decision, so a
    resync never produces intermediate switches."""
    operator_to: str | None = None
    cloud_moved = False
    health = list(c.health)
    touched = set()
    for event in events:
        typ = type(event)
        if typ is Tick:
            continue
        if typ is XfrmInTmplMismatch:
            c, cloud_moved = _mismatch(c, cfg, now)
            continue
        if typ is ForceFailover:
            if _index(c, event.to) is not None:
                operator_to = event.to.tunnel
            continue
        if typ is Adopted:
            if _index(c, event.tunnel) is not None and c.active is None and c.last_switch is None:
                c = c._replace(adopted=event.tunnel.tunnel)
            continue
        i = _index(c, event.tunnel)
        if i is None:
            continue
        h = health[i]
        if typ is ProbeResult:
            h = _probe(h, event)
        elif typ is TunnelChanged:
            h = h._replace(established=event.established,
                           seen_up=h.seen_up or event.established)
        elif typ is CharonAlert:
            fail_at = h.losses + 1
            h = h._replace(fail_at=fail_at if h.fail_at is None else min(h.fail_at, fail_at))
        elif typ is BgpSessionChanged:
            since = (h.bgp_since if h.bgp_since is not None else now) if event.established else None
            h = h._replace(bgp=event.established, bgp_since=since)
        elif typ is BfdChanged:
            h = h._replace(bfd=event.up)
        elif typ is Drain:
            h = h._replace(drained=True)
        elif typ is Undrain:
            h = h._replace(drained=False)
            c = c._replace(pinned=None)
        health[i] = h
        touched.add(i)
    if touched:         # usability depends on a tunnel's own facts only
        for i in touched:
            health[i] = _assess(health[i], cfg, now)
        c = c._replace(health=tuple(health))
    return _choose(c, cfg, now, operator_to, cloud_moved)


def _mismatch(c: Connection, cfg: ConnectionConfig, now: float) -> tuple[Connection, bool]:
    """Record one rise; True when it confirms the cloud's move (see the module docstring)."""
    if cfg.routing != "policy" or c.active is None:
        return c, False
    if c.last_switch is not None and now < c.last_switch + cfg.failover.hold_down:
        return c, False         # our own switch's packets in flight, or too soon to move again
    rises = tuple(t for t in c.mismatches if t + MISMATCH_WINDOW > now) + (now,)
    return c._replace(mismatches=rises), len(rises) >= MISMATCH_RISES


def _switch(c: Connection, to: str, kind: str, reason: str, now: float,
            out: list[Action]) -> Connection:
    switches = tuple(s for s in c.switches if s + DAMPING_PERIOD > now) + (now,)
    out.append(SetActive(c.name, to, reason))
    return c._replace(active=to, both_down=False, last_switch=now, last_kind=kind,
                      switches=switches, reason=reason, deadline=None)


def _probes_apply(cfg: ConnectionConfig) -> bool:
    return cfg.health_check is not None and cfg.health_check.switch_route


def _retries(cfg: ConnectionConfig) -> int:
    return cfg.health_check.retries if cfg.health_check is not None else 1


def _startup_grace(cfg: ConnectionConfig) -> float:
    """The longest the first choice waits for the preferred tunnel's first verdict."""
    hc = cfg.health_check
    if hc is None:
        return 0.0
    return min(10.0, max(2.0, hc.interval * (hc.retries + 1)))


def _no_verdict(h: Health, cfg: ConnectionConfig) -> bool:
    """Nothing known against the tunnel yet: neither an answer nor `retries` losses while its
    CHILD SA is installed (the very first probe may race the SA's route), or, in bgp mode,
    answered but its session not up yet (sessions come up after the SAs)."""
    if not h.answered:
        return h.lost_up < _retries(cfg)
    return cfg.routing == "bgp" and not h.failing and h.why == "BGP session not established"


def _damping_release(c: Connection, limit: int, now: float) -> float | None:
    """When fewer than `limit` switches are left in the window (now if already); None: never."""
    if limit <= 0:
        return None
    recent = [s for s in c.switches if s + DAMPING_PERIOD > now]   # a switch counts 60 s
    if len(recent) < limit:
        return now
    return recent[-limit] + DAMPING_PERIOD


def _choose(c: Connection, cfg: ConnectionConfig, now: float, operator_to: str | None,
            cloud_moved: bool = False) -> tuple[Connection, list[Action]]:
    fo = cfg.failover
    out: list[Action] = []
    by_name = dict(zip(c.tunnels, c.health))
    cur = c.active

    if cloud_moved and cur is not None and operator_to is None:
        others = [t for t in c.tunnels if t != cur and by_name[t].usable and not by_name[t].drained]
        if others:
            to = others[0]
            c = _switch(c._replace(pinned=to, mismatches=()), to, CLOUD,
                        f"cloud moved traffic to {to}, following", now, out)
            cur = to

    if operator_to is not None:
        target = by_name[operator_to]
        if target.usable:
            if target.drained:
                i = c.tunnels.index(operator_to)
                health = list(c.health)
                health[i] = target._replace(drained=False)
                c = c._replace(health=tuple(health))
                by_name[operator_to] = health[i]
            c = c._replace(pinned=operator_to)
            if cur != operator_to:
                c = _switch(c, operator_to, OPERATOR,
                            f"operator: force failover to {operator_to}", now, out)
                cur = operator_to

    usable = [t for t in c.tunnels if by_name[t].usable]
    def rank(t: str) -> tuple:
        return (by_name[t].drained, t != c.pinned, c.tunnels.index(t))

    best = min(usable, key=rank) if usable else None

    if best is None:
        c = c._replace(deadline=None)
        if cur is not None and not c.both_down:
            why = by_name[cur].why
            if fo.both_down == "withdraw":
                reason = f"no tunnel usable ({cur}: {why}): withdrawing routes"
                out.append(SetActive(c.name, None, reason, withdraw=True))
                c = c._replace(active=None, both_down=True, reason=reason)
            else:
                reason = f"no tunnel usable ({cur}: {why}): keeping traffic on {cur}"
                out.append(SetActive(c.name, cur, reason))
                c = c._replace(both_down=True, reason=reason)
    elif cur is None:
        first = c.last_switch is None and not c.both_down
        preferred = c.tunnels[0]
        if first and c.adopted is not None and not by_name[c.adopted].drained:
            # vpnd restarted with traffic on `adopted`: that is the first choice while it is
            # usable, and going back to tunnel 1 is a discretionary switch like any other
            # (preempt, preempt_delay, hold_down), never a side effect of the restart.
            preferred = c.adopted
            if by_name[preferred].usable:
                best = preferred
        p = by_name[preferred]
        grace_until = by_name[best].since + _startup_grace(cfg)
        if (first and best != preferred and not p.drained and _no_verdict(p, cfg)
                and now < grace_until):
            # Start-up: the preferred tunnel (tunnel 1, or the adopted one) has no verdict
            # yet (its SA, first answer or BGP session is on its way). Taking another now
            # would only mean a switch back later, and after a vpnd restart a route flap.
            # Bounded by _startup_grace.
            c = c._replace(deadline=grace_until,
                           reason=f"{best} usable; waiting for preferred {preferred} to answer")
        else:
            if c.both_down:
                reason = f"{best} recovered, routes restored"
            elif first and best == c.adopted:
                reason = f"{best} usable; kept: traffic was on it when vpnd started"
            else:
                reason = f"{best} usable"
            c = _switch(c, best, FORCED, reason, now, out)
    elif not by_name[cur].usable:
        # "No better": while the active tunnel still has its CHILD SA, leave it only for a
        # tunnel whose last probe was answered; one that is losing probes too (both dying,
        # e.g. charon or the uplink gone, detected a few probes apart) would be a false
        # failover followed by a switch back. The next probe result decides again.
        clean = [t for t in usable if by_name[t].losses == 0]
        if clean or not by_name[cur].established or not _probes_apply(cfg):
            target = min(clean, key=rank) if clean else best
            c = _switch(c, target, FORCED, f"{cur}: {by_name[cur].why}: switched to {target}",
                        now, out)
        else:
            reason = (f"{cur}: {by_name[cur].why}; {best} no better "
                      f"({by_name[best].losses} probes lost in a row): holding")
            c = c._replace(reason=reason, deadline=None)
    elif by_name[cur].drained and not by_name[best].drained:
        c = _switch(c, best, FORCED, f"{cur} drained: switched to {best}", now, out)
    else:
        if c.both_down:
            reason = f"{cur} recovered"
            out.append(SetActive(c.name, cur, reason))
            c = c._replace(both_down=False, reason=reason)
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
            c = c._replace(deadline=deadline)

    if cfg.routing == "bgp":
        c = _neighbors(c, cfg, out)
    return c, out


def _neighbors(c: Connection, cfg: ConnectionConfig, out: list[Action]) -> Connection:
    health = list(c.health)
    usable = [h.usable for h in health]
    withdraw = cfg.failover.both_down == "withdraw"
    # prepend: SetActive's route-maps keep traffic off drained / unpinned tunnels
    steered = cfg.bgp is not None and cfg.bgp.standby == "prepend" and len(c.tunnels) > 1
    # no session up anywhere: the cloud has no route back to the LAN, so lost probes prove
    # nothing against any tunnel: they are forgotten and a neighbor shut for them is tried
    # again (else "withdraw" could hold every neighbor shut for good)
    void = not any(h.bgp for h in health)
    for i, h in enumerate(health):
        alternative = any(u for j, u in enumerate(usable) if j != i)
        if void and h.failing and h.established:
            h = health[i] = h._replace(failing=False, lost_bgp=0, proven=False)
        # the pin excludes the others once traffic is back on it (not while a return waits)
        excluded = not steered and (h.drained or (c.pinned is not None and c.pinned != c.tunnels[i]
                                                  and c.active == c.pinned))
        if h.failing:       # with nowhere better to go, "keep" keeps the active session
            enabled = not alternative and not withdraw and c.active == c.tunnels[i]
        else:
            enabled = not (excluded and alternative)
        if enabled != h.neighbor:
            if enabled:
                reason = "healthy" if not h.failing else f"{h.why}, but no tunnel is better"
            elif h.failing:
                reason = h.why
            else:
                reason = "drained" if h.drained else f"pinned to {c.pinned}"
            out.append(SetBgpNeighbor(TunnelKey(c.name, c.tunnels[i]), enabled, reason))
            # re-enabled: its next session gets a fresh trial (answer, or bgp_grace)
            health[i] = (h._replace(neighbor=enabled, proven=False, lost_bgp=0) if enabled
                         else h._replace(neighbor=enabled))
    if health != list(c.health):
        c = c._replace(health=tuple(health))
    return c

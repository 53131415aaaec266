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
exceed the limit, and every further switch in the window is forced, operator-made or
following the cloud (below), each one caused by the active tunnel failing (or being
drained/forced away), or by the cloud moving, at most once per hold_down.

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

Policy mode, the cloud's move (XfrmInTmplMismatch rising, the vendor's signal that the cloud
sends on the standby): once it rose MISMATCH_RISES times within MISMATCH_WINDOW seconds, and
not within hold_down of the last switch (packets still in flight from our own switch), vpnd
follows at once to the best other usable, undrained tunnel and pins it ("the cloud's
choice": no preemption away from it; if it fails traffic escapes as usual). Traffic arriving
on the other tunnel is being dropped meanwhile, so this is never damped beyond hold_down.
With no other usable tunnel nothing moves. The counter rising again later means the cloud
moved once more, and vpnd follows again.

The return path (route and bgp modes). The cloud, not vpnd, picks the tunnel its traffic,
and so every probe's answer, comes back through: the vendor's cloud sends on tunnel 1 until
its own health check, DPD or BGP moves it. The prober says which tunnel each answer arrived
on (ProbeResult.via; None when unknown: policy mode, TCP probes). So when tunnel 1 dies, the
standby's probes go unanswered too, and that is no evidence against the standby. The rule:
a tunnel S is *blinded* (its current run of losses is explained by its return tunnel R) when
S's latest answer came back through R != S, S has been answered before and has no
CharonAlert since, R's own answers came back through R itself (no chain of excuses), and R
had trouble when S's losses began: R's losses (runs less than one skew apart count as one)
began no later than one skew after S's did, and R is still losing or recovered at most one
skew before S's run began; skew = interval + timeout (two tunnels' probes see one failure
at different phases). A blinded S is judged only by the losses it has seen more than one
skew after R answered again (its own evidence: the return path works again), and the
explained losses leave its loss window when it answers; it is shown with the reason ("replies
return through tunnel1, which is failing"), never as unusable for that, its BGP neighbor is
not shut for it, and for "no better" it counts as clean, so vpnd escapes from a dead tunnel 1
at its own detection time instead of after the cloud's. When the cloud moves, S's probes are
answered again. Two independently dead tunnels stay "both down": losses on S that began more
than one skew before R's are S's own. Both tunnels dying at once (the uplink) is
indistinguishable from tunnel 1 black-holed both ways: vpnd then moves to the standby, and
DPD (the CHILD SAs going down) bounds that benefit of the doubt. Nothing is excused while
charon is unreachable (CharonReach), nor are losses that began before it came back: no CHILD
SA state vouches for the standby then, and with charon's userspace data path (libipsec) every
tunnel's probes die with charon itself.

Following the cloud (route and bgp modes, not bgp with standby="ecmp", where the cloud
spreads flows over both tunnels, and not with switch_route=false): an answer to tunnel Y's
probe that came back through X != Y says the cloud sends on X (one through Y itself says
nothing: the lab's per-flow cloud answers every tunnel through itself). Through the active
tunnel it means no move; through another tunnel it is a sign of the cloud's move to X,
confirmed like XfrmInTmplMismatch above (MISMATCH_RISES signs for the same X within
MISMATCH_WINDOW, none within hold_down of the last switch). Then vpnd pins X ("the cloud's
choice") and follows at once if X has been usable for preempt_delay; a tunnel that recovered
more recently is proven first: the pin makes the return to it an ordinary discretionary one
after preempt_delay (the cloud's traffic arriving on X is accepted meanwhile, unlike in
policy mode). And no discretionary switch goes onto a tunnel whose own answers come back
through another tunnel: the directions would split, and the cloud's move would pull vpnd
straight back; the cloud's failback (answers through the target) comes first. So after a
repair vpnd goes back once, when both the preempt_delay and the cloud's failback allow.

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

Parking (failover.park_dead_tunnel, default on; route and bgp modes, not policy mode, where
the CHILD SA itself selects the carrier and the cloud's move is XfrmInTmplMismatch's). A tunnel whose IKE SA answers but whose data
path is dead keeps its SAs, so the cloud keeps sending on it: its DPD sees IKE alive and never
fires, and with its health check off it never moves. Tearing that tunnel's CHILD SA down
(Park; the IKE SA stays, so the test later is one CREATE_CHILD_SA) makes the cloud see the SAs
gone and move at once. vpnd parks a tunnel only when all of these hold:
* a health check with switch_route = true judges the tunnel: its CHILD SA is installed, it has
  been answered before, and it is unusable by its *own* probe evidence (after the blinded-standby
  excuse of "The return path"; never for BGP/BFD state or "no answer yet");
* charon answers and the losses began after it came back (with charon away, or libipsec's data
  path dying with charon, the evidence is not about this tunnel);
* another tunnel is usable and not parked, and traffic has already moved off this one (the
  last tunnel is never parked: a dead-looking path beats none);
* not in a loop: the hold before the test doubles from PARK_HOLD to PARK_HOLD_CAP with each
  parking that follows the last un-parking within PARK_STABLE.
While parked the tunnel is unusable ("parked: ...") and its BGP neighbor counts as failing. At
the hold's end the tunnel machine initiates the CHILD SA again (the test): the tunnel is
proven by max(PROVE, retries) answered probes in a row, and only then un-parked and usable
again; `retries` losses in a row during the test park it again with the next hold. If no other
tunnel is usable any more the parking ends at once (Unpark: its CHILD SA comes back now).
The cloud's automatic failback: once the test's SAs exist the vendor's cloud (health check off)
sends on tunnel 1 again at once. vpnd follows rather than fights: during the test the return
path moves to tunnel 1 (the standby's answers arrive through it, and a still-dead tunnel 1
excuses the standby's losses as the return path's), and after the proof vpnd returns to tunnel
1 the usual way, following the cloud's move once the tunnel has been usable for
preempt_delay. A test of a tunnel that is still broken costs the return direction about
retries x interval; the backoff bounds how often that is paid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from vpnd.config.model import ConnectionConfig
from vpnd.core.actions import Action, SetActive, SetBgpNeighbor
from vpnd.core.tunnel import Park, Unpark    # failover decides them, the tunnel machine does them
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
PARK_HOLD = 10.0         # a parked tunnel is tested again after this...
PARK_HOLD_CAP = 300.0    # ...doubling with each parking that follows an un-parking closely,
PARK_STABLE = 60.0       # within this many seconds
PROVE = 3                # answered probes in a row that prove a tested tunnel (at least)


@dataclass(frozen=True, slots=True)
class CharonReach:
    """Core-internal event: charon answers again (up) or has gone away (engine -> failover)."""

    up: bool


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
    via: str | None = None          # the tunnel its latest answer came back through (None: unknown)
    lost_since: float | None = None # when its latest run of lost probes began (kept after it)
    trouble_since: float | None = None  # the same, but runs less than the skew apart are one
    lost_until: float | None = None # when that run ended (its next answer); None while it lasts
    own: int = 0                    # losses of the current run seen after the return path recovered
    blinded: str = ""               # why its current losses are the return tunnel's, not its own
    lost_bgp: int = 0               # consecutive losses while its BGP session was Established
    proven: bool = False            # answered since its neighbor was last (re-)enabled
    bgp_since: float | None = None  # its BGP session Established since
    parked: str = ""                # why vpnd tore its CHILD SA down ("" when not parked)
    park_until: float | None = None # parked: when it is tested again
    parks: int = 0                  # parkings in a row (each one following an un-parking closely)
    unparked_at: float | None = None
    proving: int = 0                # parked and tested: answered probes in a row
    testing: bool = False           # parked, and its CHILD SA came back since: the test runs
    up_at: float | None = None      # when its CHILD SA was last installed (it was down before)


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
    mismatches: tuple[float, ...] = ()  # recent signs of the cloud's move (see _mismatch)
    adopted: str | None = None          # traffic found on this tunnel at start (Adopted)
    cloud_on: str | None = None         # route/bgp: the tunnel those signs say the cloud sends on
    cloud_pin: bool = False             # the pin is the cloud's choice, not an operator's
    charon_up: bool = True              # charon answers: only then does a CHILD SA vouch for a
                                        # blinded tunnel (see "The return path")...
    charon_since: float | None = None   # ...and only for losses that began after it came back

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


def _skew(cfg: ConnectionConfig) -> float:
    """How far apart two tunnels' probes see the same failure: they run at different phases."""
    hc = cfg.health_check
    return 0.0 if hc is None else hc.interval + (hc.timeout or hc.interval)


def _return_path(h: Health, name: str, by_name: dict[str, Health],
                 cfg: ConnectionConfig) -> str:
    """Why `h`'s current run of losses is explained by the tunnel its replies return through
    ("" when it is its own evidence). See "The return path" in the module docstring."""
    r = h.via
    if cfg.health_check is None:
        return ""                   # no probes judge anything (an answer without a check)
    if h.losses == 0 or r is None or r == name or r not in by_name or not h.answered \
            or h.fail_at is not None or h.lost_since is None:
        return ""
    rh = by_name[r]
    if rh.trouble_since is None or (rh.losses and rh.via != r):
        return ""                   # r is not known to carry its own replies: no chain of excuses
    skew = _skew(cfg)
    if h.lost_since < rh.trouble_since - skew:
        return ""                   # losing since well before the return tunnel: its own
    if rh.losses == 0 and (rh.lost_until is None or rh.lost_until + skew < h.lost_since):
        return ""                   # the return tunnel had recovered before these began
    if rh.losses == 0:
        return f"replies return through {r}, which was failing"
    problem = _probe_problem(rh, cfg)
    if problem and problem != NO_ANSWER:
        return f"replies return through {r}, which is failing"
    return f"replies return through {r}, which is losing probes too"


def _excused(h: Health) -> Health:
    """`h` as judged by its own evidence: only the losses seen after the return path
    recovered, and the explained ones out of the loss window."""
    drop = h.losses - h.own
    return h._replace(losses=h.own, window=_drop_losses(h.window, drop, h.losses))


def _drop_losses(window: tuple, drop: int, run: int) -> tuple:
    """The window without `drop` of the `run` losses at its end."""
    k = min(run, len(window))
    if drop <= 0 or k == 0:
        return window
    return window[:len(window) - k] + window[len(window) - k + min(drop, k):]


def _assess(h: Health, cfg: ConnectionConfig, now: float, excuse: str = "") -> Health:
    hc = cfg.health_check
    probe = _probe_problem(h, cfg) if hc is not None and hc.switch_route else ""
    if probe and excuse:
        probe = _probe_problem(_excused(h), cfg)
    # bgp: a probe lost while the tunnel's own session was not Established is no evidence (a
    # cloud that learns the LAN only over BGP cannot answer before it is up): only losses
    # with the session up count against the neighbor, so bring-up is never blocked
    # and only once the path has worked (an answer) or the session has had bgp_grace to
    # carry the routes both ways (UPDATEs, the cloud's route install)
    evidence = probe
    if probe and cfg.has_bgp:
        trial_over = h.proven or (h.bgp_since is not None and now - h.bgp_since >= bgp_grace(cfg))
        evidence = _probe_problem(h._replace(losses=h.lost_bgp if trial_over else 0), cfg)
    # "no answer yet" is no failure: it must not shut a BGP session when vpnd (re)starts,
    # nor must a CHILD SA that was never seen since then
    failing = (h.seen_up and not h.established) or (bool(evidence) and evidence != NO_ANSWER)
    if not h.established:
        usable, why = False, "CHILD SA not installed"
    else:
        usable, why = not probe, probe
        if usable and cfg.has_bgp:
            if h.bfd is False:
                usable, why = False, "BFD down"
            elif not h.bgp:
                usable, why = False, "BGP session not established"
    if h.parked:
        failing, usable = True, False
        why = (f"parked ({h.parked}): proving, {h.proving}/{_prove(cfg)} answered"
               if h.testing else f"parked ({h.parked})")
    since = (h.since if h.since is not None else now) if usable else None
    if (failing, usable, why, since, excuse) == (h.failing, h.usable, h.why, h.since, h.blinded):
        return h
    return h._replace(failing=failing, usable=usable, why=why, since=since, blinded=excuse)


def bgp_grace(cfg: ConnectionConfig) -> float:
    """bgp: how long a new session may go without an answered probe before losses count
    (routes must cross both ways first); an answer ends the trial at once."""
    hc = cfg.health_check
    return max(10.0, hc.interval * (hc.retries + 1)) if hc is not None else 0.0


def _probe(h: Health, ev: ProbeResult, now: float, returned: Health | None,
           cfg: ConnectionConfig) -> Health:
    """One probe's result. `returned`: the health of the tunnel h's replies return through."""
    if ev.ok:
        window = h.window
        if h.blinded:               # the run was the return path's: not this tunnel's loss
            window = _drop_losses(window, h.losses - h.own, h.losses)
        return h._replace(answered=True, losses=0, fail_at=None, lost_up=0, via=ev.via, own=0,
                          lost_bgp=0, proven=True,
                          window=(window + ((True, ev.rtt),))[-WINDOW:],
                          lost_until=now if h.losses else h.lost_until)
    window = (h.window + ((False, None),))[-WINDOW:]
    trouble = h.trouble_since
    if not h.losses and (h.lost_until is None or now > h.lost_until + _skew(cfg)):
        trouble = now   # a new run; one within the skew of the last one continues its trouble
    own = h.own
    if returned is not None and returned.losses == 0 and returned.lost_until is not None \
            and now > returned.lost_until + _skew(cfg):
        own += 1                    # lost although its return path works again
    return h._replace(losses=h.losses + 1, window=window, lost_up=h.lost_up + h.established,
                      lost_bgp=h.lost_bgp + h.bgp,
                      lost_since=h.lost_since if h.losses else now, trouble_since=trouble,
                      lost_until=h.lost_until if h.losses else None, own=own)


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
    sent_on: list[str] = []         # tunnels answers came back through, other than their own
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
        if typ is CharonReach:
            if event.up != c.charon_up or c.charon_since is None:
                c = c._replace(charon_up=event.up,
                               charon_since=now if event.up else c.charon_since)
                touched.update(range(len(health)))
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
            r = c.tunnels.index(h.via) if h.via in c.tunnels else None
            h = _probe(h, event, now, health[r] if r is not None else None, cfg)
            if h.parked:
                h = h._replace(proving=h.proving + 1 if event.ok and h.testing else 0)
            if event.ok and event.via is not None and event.via != event.tunnel.tunnel \
                    and event.via in c.tunnels:
                sent_on.append(event.via)
        elif typ is TunnelChanged:
            up_at = now if event.established and not h.established else h.up_at
            h = h._replace(established=event.established,
                           seen_up=h.seen_up or event.established, proving=0, up_at=up_at)
            if h.parked and event.established:      # the test begins: judged afresh
                h = h._replace(losses=0, lost_up=0, lost_bgp=0, fail_at=None, testing=True)
            elif h.parked:      # the teardown is done; its losses still explain the standby's
                h = h._replace(testing=False)
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
            c = c._replace(pinned=None, cloud_pin=False)
        health[i] = h
        touched.add(i)
    if touched:         # a tunnel's own facts, and the tunnel its replies return through
        by_name = dict(zip(c.tunnels, health))
        for i, name in enumerate(c.tunnels):
            h = health[i]
            vouched = c.charon_up and (c.charon_since is None or
                                       (h.lost_since is not None and h.lost_since >= c.charon_since))
            excuse = _return_path(h, name, by_name, cfg) if vouched else ""
            health[i] = _assess(health[i], cfg, now, excuse)
        c = c._replace(health=tuple(health))
    for to in sent_on:
        c, moved = _mismatch(c, cfg, now, to)
        cloud_moved = cloud_moved or moved
    parking: list[Action] = []
    c = _release(c, cfg, now, parking)
    c, out = _choose(c, cfg, now, operator_to, cloud_moved)
    c = _park(c, cfg, now, out)
    return c, parking + out


# --- parking (see "Parking" in the module docstring) ---------------------------------------

def _prove(cfg: ConnectionConfig) -> int:
    return max(PROVE, _retries(cfg))


def _park_hold(parks: int) -> float:
    return min(PARK_HOLD_CAP, PARK_HOLD * (1 << min(parks, 16)))


def _set(c: Connection, i: int, h: Health, cfg: ConnectionConfig, now: float) -> Connection:
    health = list(c.health)
    health[i] = _assess(h, cfg, now, h.blinded)
    return c._replace(health=tuple(health))


def _others_usable(c: Connection, name: str) -> bool:
    return any(h.usable and not h.parked for t, h in zip(c.tunnels, c.health) if t != name)


def _release(c: Connection, cfg: ConnectionConfig, now: float, out: list[Action]) -> Connection:
    """Parked tunnels: un-park when proven or when no other tunnel is usable; a failed test
    parks again with the next hold."""
    for i, (name, h) in enumerate(zip(c.tunnels, c.health)):
        if not h.parked:
            continue
        key = TunnelKey(c.name, name)
        if not _others_usable(c, name) or not _parking_on(cfg):
            why = "no other tunnel usable" if _parking_on(cfg) else "parking switched off"
            out.append(Unpark(key, why))
            # judged by its evidence as before: usable again only once it is answered
            c = _set(c, i, h._replace(parked="", park_until=None, proving=0, unparked_at=now,
                                      testing=False), cfg, now)
        elif h.testing and h.established and h.proving >= _prove(cfg):
            out.append(Unpark(key, f"proven: {h.proving} probes answered in a row"))
            c = _set(c, i, h._replace(parked="", park_until=None, proving=0, unparked_at=now,
                                      testing=False), cfg, now)
        elif h.testing and h.established and h.losses >= _retries(cfg):
            until = now + _park_hold(h.parks + 1)
            reason = f"test failed, {h.losses} probes lost in a row"
            out.append(Park(key, until, reason))
            c = _set(c, i, h._replace(parked=reason, park_until=until, parks=h.parks + 1,
                                      proving=0, testing=False), cfg, now)
    return c


def _parking_on(cfg: ConnectionConfig) -> bool:
    """Route and bgp modes only: in policy mode the CHILD SA *is* the carrier choice (on
    libipsec the newest one wins), so a test's CHILD SA would take the traffic itself."""
    return (cfg.failover.park_dead_tunnel and _probes_apply(cfg) and len(cfg.tunnels) > 1
            and not cfg.selects_by_sa)


def _park(c: Connection, cfg: ConnectionConfig, now: float, out: list[Action]) -> Connection:
    """Park a tunnel whose data path is dead by its own evidence (module docstring)."""
    if not _parking_on(cfg) or c.active is None or not c.charon_up:
        return c
    parked = False
    for i, (name, h) in enumerate(zip(c.tunnels, c.health)):
        if h.parked or name == c.active or not h.established or not h.answered or h.usable:
            continue
        if h.why == NO_ANSWER or h.why.startswith(("BGP", "BFD", "CHILD SA")):
            continue                # not its data path's evidence
        if c.charon_since is not None and (h.lost_since is None or h.lost_since < c.charon_since):
            continue                # losses from while charon was away prove nothing here
        if not _others_usable(c, name):
            continue                # never the last tunnel
        if h.up_at is not None and (h.lost_since is None or h.lost_since < h.up_at):
            continue                # losses from before this CHILD SA came up say nothing of it
        close = h.unparked_at is not None and now - h.unparked_at < PARK_STABLE
        parks = h.parks + 1 if close else 0
        until = now + _park_hold(parks)
        reason = f"IKE alive, data path dead: {h.why}"
        out.append(Park(TunnelKey(c.name, name), until, reason))
        c = _set(c, i, h._replace(parked=reason, park_until=until, parks=parks, proving=0,
                                  testing=False), cfg, now)
        parked = True
    if parked and cfg.has_bgp:
        c = _neighbors(c, cfg, out)
    return c


def _follows_replies(cfg: ConnectionConfig) -> bool:
    """Whether answers coming back through another tunnel say where the cloud sends: route
    mode, and bgp mode unless the cloud spreads flows over both (standby = "ecmp"); never
    when probes only report (switch_route = false: probes move no traffic)."""
    if cfg.selects_by_sa or not _probes_apply(cfg):
        return False
    return not (cfg.has_bgp and cfg.bgp is not None and cfg.bgp.standby == "ecmp")


def _steers_cloud(cfg: ConnectionConfig) -> bool:
    """BGP mode, active/standby by prepend: the cloud's best path is what vpnd announces (the
    prepend, the standby's more-specifics), so it sends on whichever tunnel vpnd makes active.
    A repaired tunnel 1's answers keep coming back through tunnel 2 until vpnd switches back
    (the more-specifics hold the cloud there): waiting for the cloud first would never end.
    Only with tunnel 1's session Established (the cloud has its paths again); signs of the
    cloud's move within hold_down of that switch are ignored as for any switch."""
    return cfg.has_bgp and (cfg.bgp is None or cfg.bgp.standby == "prepend")


def _mismatch(c: Connection, cfg: ConnectionConfig, now: float,
              to: str | None = None) -> tuple[Connection, bool]:
    """Record one sign of the cloud's move; True when it confirms it (module docstring).
    to=None: an XfrmInTmplMismatch rise (policy mode; it names no tunnel). Otherwise an answer
    that came back through `to`, not through the tunnel it probed (route and bgp modes)."""
    if c.active is None:
        return c, False
    if to is None:
        if not cfg.selects_by_sa:
            return c, False
    else:
        if not _follows_replies(cfg):
            return c, False
        if to == c.active:          # the cloud sends on our tunnel: no move under way
            if c.mismatches or c.cloud_on is not None:
                c = c._replace(mismatches=(), cloud_on=None)
            return c, False
        if to != c.cloud_on:        # signs for another tunnel start the count again
            c = c._replace(mismatches=(), cloud_on=to)
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
    return cfg.has_bgp and not h.failing and h.why == "BGP session not established"


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
        to = c.cloud_on if c.cloud_on is not None else (others[0] if others else None)
        if to in others:
            # policy mode: traffic on the other SA is being dropped, follow at once. Route
            # and bgp: the cloud's traffic arrives fine meanwhile, so a tunnel that has only
            # just recovered is proven first (preempt_delay, as any return to it)
            proven = cfg.selects_by_sa or by_name[to].since + fo.preempt_delay <= now
            c = c._replace(pinned=to, cloud_pin=True, mismatches=(), cloud_on=None)
            if proven:
                c = _switch(c, to, CLOUD, f"cloud moved traffic to {to}, following", now, out)
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
            c = c._replace(pinned=operator_to, cloud_pin=False)
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
        # A tunnel whose losses are the return path's ("blinded") is as good as a clean one.
        clean = [t for t in usable if by_name[t].losses == 0 or by_name[t].blinded]
        if clean or not by_name[cur].established or not _probes_apply(cfg):
            target = min(clean, key=rank) if clean else best
            blinded = by_name[target].blinded
            c = _switch(c, target, FORCED, f"{cur}: {by_name[cur].why}: switched to {target}"
                        + (f" (its probes are blinded: {blinded})" if blinded else ""), now, out)
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
        # never back onto a tunnel whose own replies the cloud sends through another one: the
        # directions would split, and following the cloud would move straight back; unless
        # vpnd's own announcements decide the cloud's path, so switching back moves it too
        if best != cur and (fo.preempt or best == c.pinned) and \
                (by_name[best].via in (None, best) or (_steers_cloud(cfg) and by_name[best].bgp)):
            release = _damping_release(c, fo.max_switches_per_minute, now)
            if release is not None:
                since = by_name[best].since
                hold = c.last_switch + fo.hold_down if c.last_switch is not None else now
                due = max(since + fo.preempt_delay, hold, release)
                if now >= due:
                    what = ("pinned" if not c.cloud_pin else "the cloud's choice") \
                        if best == c.pinned else "preferred"
                    c = _switch(c, best, DISCRETIONARY,
                                f"{what} {best} healthy for {now - since:.1f} s: switched back",
                                now, out)
                else:
                    deadline = due
        if c.deadline != deadline:
            c = c._replace(deadline=deadline)

    if cfg.has_bgp:
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

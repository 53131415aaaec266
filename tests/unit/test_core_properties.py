"""Properties of the engine over random event sequences with random monotonic times."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpnd_testing.core_helpers import config, connection, key
from vpnd.core.actions import Terminate, Initiate, ReportTransition, SetActive, SetBgpNeighbor
from vpnd.core.engine import Engine
from vpnd.core.events import (
    Adopted, BfdChanged, BgpSessionChanged, CharonAlert, CharonConnected, CharonDisconnected, ChildDown,
    ChildRekeyed, ChildUp, Drain, ForceFailover, IkeDown, IkeRekeyed, IkeUp, InterfaceLost,
    NegotiationFailed, OwnedRouteLost, ProbeResult, SaSnapshot, Tick, TunnelKey, TunnelSa,
    Undrain, XfrmInTmplMismatch,
)
from vpnd.core.failover import DAMPING_PERIOD

TUNNELS = st.sampled_from([key("t1"), key("t2"), key("t1"), key("t2"), TunnelKey("c", "t9"),
                           TunnelKey("x", "t1")])
IDS = st.integers(1, 4)
IKE_STATES = st.sampled_from([None, "ESTABLISHED", "CONNECTING", "REKEYING", "DELETING"])
CHILD_STATES = st.sampled_from([None, "INSTALLED", "INSTALLING", "REKEYED"])

EVENTS = st.one_of(
    st.builds(IkeUp, TUNNELS, IDS),
    st.builds(IkeDown, TUNNELS, IDS, st.just("x")),
    st.builds(ChildUp, TUNNELS, IDS, IDS),
    st.builds(ChildUp, TUNNELS, IDS, IDS),
    st.builds(ChildDown, TUNNELS, IDS, IDS, st.just("x")),
    st.builds(IkeRekeyed, TUNNELS, IDS, IDS),
    st.builds(ChildRekeyed, TUNNELS, IDS, IDS),
    st.builds(NegotiationFailed, TUNNELS, st.sampled_from([1, 2]), st.just("x")),
    st.builds(CharonAlert, TUNNELS, st.sampled_from(["retransmit", "retransmit_timeout"]),
              st.just("x")),
    st.builds(SaSnapshot, st.lists(st.builds(TunnelSa, TUNNELS, st.none() | IDS, IKE_STATES,
                                             st.none() | IDS, CHILD_STATES),
                                   max_size=3).map(tuple)),
    st.just(CharonConnected()), st.just(CharonDisconnected("x")),
    st.builds(ProbeResult, TUNNELS, st.booleans(), st.none() | st.sampled_from([0.01, 0.3])),
    st.builds(ProbeResult, TUNNELS, st.just(True), st.just(0.01)),
    # answers that came back through a tunnel (the cloud picks it), possibly another one
    st.builds(ProbeResult, TUNNELS, st.booleans(), st.just(0.01),
              st.sampled_from(["t1", "t2", "t1", "t9", None])),
    st.builds(BgpSessionChanged, TUNNELS, st.booleans()),
    st.builds(BfdChanged, TUNNELS, st.booleans()),
    st.builds(Drain, TUNNELS), st.builds(Undrain, TUNNELS), st.builds(ForceFailover, TUNNELS),
    st.builds(Adopted, TUNNELS),
    st.just(Tick()), st.just(Tick()),
    st.builds(OwnedRouteLost, st.sampled_from(["c", "x"]), st.just("10.0.0.0/16")),
    st.builds(InterfaceLost, TUNNELS, st.just("ipsec0")),
    st.builds(XfrmInTmplMismatch, st.integers(1, 1000), st.integers(1, 9)),
    st.builds(XfrmInTmplMismatch, st.integers(1, 1000), st.integers(1, 9)),
)
STEPS = st.lists(st.tuples(st.sampled_from([0.0, 0.01, 0.5, 1.0, 3.0, 7.0, 20.0, 61.0]), EVENTS),
                 max_size=60)

CONFIGS = st.builds(
    connection,
    routing=st.sampled_from(["route", "policy", "bgp"]),
    health=st.booleans(), switch_route=st.booleans(), retries=st.integers(1, 3),
    max_rtt_ms=st.none() | st.just(100.0), max_loss_percent=st.none() | st.just(20.0),
    preempt=st.booleans(), preempt_delay=st.sampled_from([0.0, 1.0, 10.0]),
    hold_down=st.sampled_from([0.0, 5.0, 30.0]),
    max_switches_per_minute=st.sampled_from([0, 1, 2, 4]),
    both_down=st.sampled_from(["keep", "withdraw"]),
    park_dead_tunnel=st.booleans(),
    standby=st.sampled_from([None, "prepend", "ecmp"]),
)


class Checker:
    """Feeds events and checks the invariants after every one of them."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.engine = Engine(config(cfg))
        self.now = 0.0
        self.switches: list[tuple[float, str]] = []     # (time, kind)

    def usable(self, tunnel: str) -> bool:
        return self.engine.usable(key(tunnel))

    def feed(self, event, now):
        e = self.engine
        # As the supervisor does: time never passes a deadline without its Tick.
        while not isinstance(event, Tick) and e.next_deadline is not None and e.next_deadline < now:
            self.feed(Tick(), max(e.next_deadline, self.now))
        assert now >= self.now
        self.now = now
        before_tunnels = dict(e.tunnels)
        before = e.connections["c"]
        actions, deadline = e.handle(event, now)
        after = e.connections["c"]
        assert deadline == e.next_deadline
        if isinstance(event, Tick):         # a tick consumes everything due: no busy loop
            assert deadline is None or deadline > now

        # tunnels: reports are real changes; Initiate only when nothing is outstanding
        initiated = [a.tunnel for a in actions if isinstance(a, Initiate)]
        assert len(initiated) == len(set(initiated))
        for k in initiated:
            t = e.tunnels[k]
            assert t.synced and not t.established and t.pending_since == now
        seen = set()
        for a in actions:
            if isinstance(a, ReportTransition):
                assert a.old != a.new and a.reason
                if a.tunnel not in seen:
                    assert a.old == before_tunnels[a.tunnel].state
                    seen.add(a.tunnel)

        # one active tunnel, usable unless none is
        names = after.tunnels
        assert after.active is None or after.active in names
        any_usable = any(self.usable(n) for n in names)
        if after.active is not None and not self.usable(after.active):
            # "no better": every usable tunnel is losing probes too (and not only because
            # its replies return through a failing tunnel), the active one still has its SA
            held = [n for n in names if self.usable(n)]
            assert not held or (after.of(after.active).established and all(
                after.of(n).losses > 0 and not after.of(n).blinded for n in held)), held
            if not held:
                assert self.cfg.failover.both_down == "keep"
        if any_usable and after.active is None:
            # the one exception: the start-up grace, a bounded wait for the preferred tunnel
            assert after.last_switch is None and after.deadline is not None and after.deadline >= now
            assert "waiting for preferred" in after.reason
        elif any_usable and self.usable(after.active):
            h = after.of(after.active)
            if h.drained:       # drained only while no undrained tunnel is usable
                assert not any(self.usable(n) and not after.of(n).drained for n in names)
        sets = [a for a in actions if isinstance(a, SetActive)]
        if sets:
            assert sets[-1].tunnel == after.active
            assert sets[-1].withdraw == (after.active is None)

        # bgp: neighbors only in bgp mode; "keep" never shuts the active's only session
        neighbors = [a for a in actions if isinstance(a, SetBgpNeighbor)]
        if self.cfg.routing != "bgp":
            assert not neighbors
        elif self.cfg.failover.both_down == "keep" and after.active is not None and \
                not any(self.usable(n) for n in names if n != after.active):
            assert after.of(after.active).neighbor
        if self.cfg.routing == "bgp" and after.active is not None and self.usable(after.active):
            assert after.of(after.active).neighbor        # reporting agrees with BGP

        # parking: only with the switch on, never the active or the last usable tunnel, and
        # a parked tunnel is never usable
        for a in actions:
            if isinstance(a, Terminate) and a.child_id is not None:
                t = a.tunnel.tunnel
                assert self.cfg.failover.park_dead_tunnel and after.active != t
                assert any(self.usable(n) for n in names if n != t)
        for n in names:
            if e.tunnels[key(n)].state == "parked":
                assert not self.usable(n) and after.of(n).parked

        # switches: classify and check the damping bound
        if after.active is not None and after.active != before.active:
            if before.active is None or not self.usable(before.active) or \
                    after.of(before.active).drained:
                kind = "forced"
            elif isinstance(event, ForceFailover):
                kind = "operator"
            elif isinstance(event, XfrmInTmplMismatch):
                kind = "cloud"      # following the cloud: policy mode only, pinned, hold_down
                assert self.cfg.routing == "policy" and after.pinned == after.active
                assert not after.of(after.active).drained
                if self.switches:
                    assert self.switches[-1][0] + self.cfg.failover.hold_down <= now
            elif isinstance(event, ProbeResult) and after.last_kind == "cloud":
                # following the cloud's return tunnel: route/bgp, an answer that came back
                # through another tunnel than the probed one, onto a proven tunnel, pinned
                kind = "cloud"
                assert self.cfg.routing != "policy" and self.cfg.health_check is not None
                assert event.ok and event.via == after.active != event.tunnel.tunnel
                assert after.pinned == after.active and not after.of(after.active).drained
                assert self.cfg.health_check.switch_route
                assert not (self.cfg.routing == "bgp" and self.cfg.bgp is not None
                            and self.cfg.bgp.standby == "ecmp")
                fo = self.cfg.failover
                assert after.of(after.active).since + fo.preempt_delay <= now
                if self.switches:
                    assert self.switches[-1][0] + fo.hold_down <= now
            else:
                kind = "discretionary"
                fo = self.cfg.failover
                assert fo.preempt or after.pinned == after.active
                # a switch counts in the damping window while now < its time + 60 s
                window = [s for s in self.switches if s[0] + DAMPING_PERIOD > now]
                assert len(window) + 1 <= fo.max_switches_per_minute
                if self.switches:
                    assert self.switches[-1][0] + fo.hold_down <= now
                assert after.of(after.active).since + fo.preempt_delay <= now
            self.switches.append((now, kind))
        return actions


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONFIGS, STEPS)
def test_invariants_hold_on_any_event_sequence(cfg, steps):
    check = Checker(cfg)
    now = 0.0
    for dt, event in steps:
        now += dt
        check.feed(event, now)
        if check.engine.next_deadline is not None and check.engine.next_deadline <= now:
            check.feed(Tick(), now)     # the shell ticks at once when a deadline passed
    # discretionary switches in any 60 s window never exceed the limit
    disc = [t for t, k in check.switches if k == "discretionary"]
    for t in disc:
        assert sum(1 for u in disc if t < u + DAMPING_PERIOD and u <= t) <= \
            cfg.failover.max_switches_per_minute


def heal(check: Checker, now: float):
    """Everything recovers at `now`: both tunnels established, probed, BGP/BFD up, no pin."""
    for event in [CharonConnected(),
                  SaSnapshot((TunnelSa(key("t1"), 50, "ESTABLISHED", 60, "INSTALLED"),
                              TunnelSa(key("t2"), 51, "ESTABLISHED", 61, "INSTALLED"))),
                  Undrain(key("t1")), Undrain(key("t2"))]:
        check.feed(event, now)
    for t in ("t1", "t2"):
        for event in [BgpSessionChanged(key(t), True), BfdChanged(key(t), True)] + \
                [ProbeResult(key(t), True, 0.01)] * 10:
            check.feed(event, now)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONFIGS, STEPS, st.sampled_from([0.0, 0.5, 30.0]))
def test_a_healthy_preferred_tunnel_becomes_active_in_bounded_time(cfg, steps, gap):
    check = Checker(cfg)
    now = 0.0
    for dt, event in steps:
        now += dt
        check.feed(event, now)
    now += gap
    heal(check, now)
    healed_at = now
    e = check.engine
    c = e.connections["c"]
    assert e.usable(key("t1")) and c.active is not None
    fo = cfg.failover
    switches_at_heal = len(check.switches)
    # drive the engine only at the deadlines it asks for (no polling)
    limit = healed_at + fo.preempt_delay + fo.hold_down + DAMPING_PERIOD + 1
    while e.next_deadline is not None and e.next_deadline <= limit:
        check.feed(Tick(), e.next_deadline)
    c = e.connections["c"]
    if not fo.preempt or fo.max_switches_per_minute == 0:
        assert len(check.switches) == switches_at_heal       # nothing moves by itself
        return
    assert c.active == "t1"
    if check.switches and check.switches[-1][0] > healed_at:
        when = check.switches[-1][0]
        assert when <= healed_at + fo.preempt_delay + fo.hold_down + DAMPING_PERIOD
        # the latest it may come: preempt_delay after healing, hold_down after the last
        # switch (at or before healing), and a free slot in the damping window
        times = [t for t, _ in check.switches[:-1]]
        due = max(healed_at + fo.preempt_delay, times[-1] + fo.hold_down if times else 0.0)
        recent = [t for t in times if t + DAMPING_PERIOD > due]
        if len(recent) >= fo.max_switches_per_minute:
            due = max(due, recent[-fo.max_switches_per_minute] + DAMPING_PERIOD)
        assert when <= due


@settings(max_examples=100, deadline=None)
@given(STEPS)
def test_reload_keeps_state_and_never_raises(steps):
    e = Engine(config(connection()))
    now = 0.0
    for i, (dt, event) in enumerate(steps):
        now += dt
        e.handle(event, now)
        if i == len(steps) // 2:
            before = dict(e.tunnels)
            e.reload(config(connection(), connection("d")))
            assert all(e.tunnels[k] is v for k, v in before.items())

"""The return path: the cloud, not vpnd, picks the tunnel replies come back through.

Under the vendor's cloud every probe's answer comes back through the cloud's sending tunnel
(tunnel 1 until the cloud moves), so when tunnel 1 dies both tunnels' probes go unanswered.
These scenarios (engine, explicit times, no sleeps) check that the standby is never judged
dead by that, that vpnd escapes at its own detection time, follows the cloud's move, and
goes back without oscillating. Probes every 1 s (t1 at n.0, t2 at n.5), timeout = interval:
the skew allowed between two tunnels' views of one failure is 2 s.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpnd_testing.core_helpers import config, connection, key
from test_core_failover import ANY, START, act, loss, run
from test_core_properties import CONFIGS, STEPS
from vpnd.core.actions import SetActive, SetBgpNeighbor
from vpnd.core.engine import Engine
from vpnd.core.events import ProbeResult, Tick


def cfg(**kw):
    base = dict(preempt_delay=3.0, hold_down=1.0)
    base.update(kw)
    c = connection(**base)
    return dataclasses.replace(c, health_check=dataclasses.replace(c.health_check, interval=1.0))


def ok(t, via, rtt=0.010):
    return ProbeResult(key(t), True, rtt, via)


# the vendor's cloud sends on t1: both tunnels' answers come back through t1
VENDOR = START + [(0.4, ok("t1", "t1"), []), (0.5, ok("t2", "t1"), [])]


def black_hole_t1(start=10.0, until=15.0):
    """t1 black-holed both ways at `start`: every probe of either tunnel is lost."""
    steps = []
    n = start
    while n < until:
        steps += [(n, loss("t1"), ANY), (n + 0.5, loss("t2"), ANY)]
        n += 1.0
    return steps


def health(engine, t):
    return engine.status()["c"]["tunnels"][t]


def actions(engine, steps):
    """Feed steps, return the SetActive actions they produced."""
    out = []
    for now, event in steps:
        got, _ = engine.handle(event, now)
        out += [(now, a.tunnel, a.reason) for a in got if isinstance(a, SetActive)]
    return out


def test_tunnel1_black_holed_both_ways_escapes_at_vpnds_own_detection():
    e = run(cfg(), [
        (10.0, loss("t1"), []), (10.5, loss("t2"), []),
        (11.0, loss("t1"), []), (11.5, loss("t2"), []),
        # t1's third loss: t2 has lost 2 too, but its answers return through t1
        (12.0, loss("t1"), [act("t2", "t1: 3 probes lost in a row: switched to t2 (its probes "
                                 "are blinded: replies return through t1, which is failing)")]),
        (12.5, loss("t2"), []), (13.0, loss("t1"), []), (13.5, loss("t2"), []),
    ], start=VENDOR)
    t2 = health(e, "t2")
    assert t2["usable"] and t2["why_not_usable"] == "" and t2["probe_losses"] == 4
    assert t2["blinded"] == "replies return through t1, which is failing"
    assert t2["replies_via"] == "t1"
    assert not health(e, "t1")["usable"]


def test_before_the_fix_the_standby_looked_dead_too():
    """The same losses without knowing the return path (via unknown): today's rule, kept for
    policy mode and TCP probes: 'no better', then both down."""
    run(cfg(), [
        (10.0, loss("t1"), []), (10.5, loss("t2"), []),
        (11.0, loss("t1"), []), (11.5, loss("t2"), []),
        (12.0, loss("t1"), []),
        (12.5, loss("t2"), [act("t1", "no tunnel usable (t1: 3 probes lost in a row): keeping")]),
    ])


def test_the_cloud_moves_and_the_standby_answers_and_stays_active():
    e = run(cfg(), black_hole_t1(10.0, 15.0) + [
        # the cloud's health check failed t1: it sends on t2 now, t1 stays black-holed
        (15.5, ok("t2", "t2"), []), (16.0, loss("t1"), []), (16.5, ok("t2", "t2"), []),
        (30.0, Tick(), []),
    ], start=VENDOR)
    c = e.connections["c"]
    assert c.active == "t2"
    t2 = health(e, "t2")
    assert t2["usable"] and t2["blinded"] == "" and t2["replies_via"] == "t2"


def test_repaired_tunnel1_and_the_clouds_failback_preempt_once_after_preempt_delay():
    moved = black_hole_t1(10.0, 15.0) + [(15.5, ok("t2", "t2"), []), (16.0, loss("t1"), [])]
    e = run(cfg(), moved + [
        (20.0, ok("t1", "t2"), []),          # t1 repaired; the cloud still sends on t2
        (20.5, ok("t2", "t2"), []),
        (21.0, ok("t1", "t2"), []),
        (21.5, ok("t2", "t1"), []),          # the cloud failed back: a sign of its move to t1
        (22.0, ok("t1", "t1"), []),
        (22.5, ok("t2", "t1"), []),          # confirmed, but t1 is usable only since 20.0
        (22.9, Tick(), []),
        (23.0, Tick(), [act("t1", "the cloud's choice t1 healthy for 3.0 s: switched back")]),
    ] + [(23.0 + n, ok("t1", "t1"), []) for n in range(1, 10)]
      + [(23.5 + n, ok("t2", "t1"), []) for n in range(1, 10)] + [(60.0, Tick(), [])],
        start=VENDOR)
    assert e.connections["c"].active == "t1"


def test_no_preempt_while_the_cloud_still_returns_through_the_standby():
    """preempt_delay passes, but t1's own answers still come back through t2: moving would
    split the directions and the cloud's move would pull vpnd straight back. vpnd waits for
    the cloud's failback and then follows at once (t1 long proven)."""
    moved = black_hole_t1(10.0, 15.0) + [(15.5, ok("t2", "t2"), []), (16.0, loss("t1"), [])]
    steps = []
    for n in range(20, 40):
        steps += [(float(n), ok("t1", "t2"), []), (n + 0.5, ok("t2", "t2"), [])]
    e = run(cfg(), moved + steps + [
        (40.0, ok("t1", "t1"), ANY),         # no sign (its own tunnel), hold released:
        (40.5, ok("t2", "t1"), ANY),
        (41.5, ok("t2", "t1"), ANY),
    ], start=VENDOR)
    assert e.connections["c"].active == "t1"
    assert sum(1 for s in e.connections["c"].switches if s > 20) == 1


def test_the_standby_dead_first_then_the_active_is_both_down():
    e = run(cfg(), [
        (3.5, loss("t2"), []), (4.5, loss("t2"), []), (5.5, loss("t2"), []),
        (6.5, loss("t2"), []), (7.5, loss("t2"), []), (8.5, loss("t2"), []),
        (9.5, loss("t2"), []),
        (10.0, loss("t1"), []), (10.5, loss("t2"), []), (11.0, loss("t1"), []),
        (12.0, loss("t1"), [act("t1", "no tunnel usable (t1: 3 probes lost in a row): keeping")]),
    ], start=VENDOR)
    t2 = health(e, "t2")
    assert not t2["usable"] and t2["blinded"] == "" and "probes lost" in t2["why_not_usable"]


def test_lan_to_vpc_dead_on_tunnel1_is_an_ordinary_switch():
    """Only t1's outbound is dead: t1's probes are lost, t2's still come back through t1."""
    e = run(cfg(), [
        (10.0, loss("t1"), []), (10.5, ok("t2", "t1"), []),
        (11.0, loss("t1"), []), (11.5, ok("t2", "t1"), []),
        (12.0, loss("t1"), [act("t2", "t1: 3 probes lost in a row: switched to t2")]),
    ] + [(12.5 + n, ok("t2", "t1"), []) for n in range(10)]      # signs for t1: unusable
      + [(13.0 + n, loss("t1"), []) for n in range(10)] + [(30.0, Tick(), [])], start=VENDOR)
    assert e.connections["c"].active == "t2"
    assert "blinded" not in e.connections["c"].reason


def test_vpc_to_lan_dead_on_tunnel1_is_blinded_then_held():
    """Only t1's inbound is dead: every answer is lost (they all return through t1) -> the
    blinded rule escapes to t2; when the cloud moves, t1's probes are answered through t2
    (its outbound works): usable, but vpnd does not preempt onto it while its own answers
    return through t2."""
    e = run(cfg(), black_hole_t1(10.0, 15.0)
            + [(15.0 + n, ok("t1", "t2"), []) for n in range(20)]
            + [(15.5 + n, ok("t2", "t2"), []) for n in range(20)] + [(40.0, Tick(), [])],
            start=VENDOR)
    c = e.connections["c"]
    assert c.active == "t2" and len([s for s in c.switches if s > 1]) == 1
    t1 = health(e, "t1")
    assert t1["usable"] and t1["replies_via"] == "t2"


def test_the_cloud_moving_on_its_own_is_followed_and_pinned():
    e = run(cfg(), [
        (10.0, ok("t1", "t2"), []),                     # t1's answer came back through t2
        (10.5, ok("t2", "t2"), []),                     # (its own tunnel: no sign)
        (11.0, ok("t1", "t2"), [act("t2", "cloud moved traffic to t2, following")]),
        (11.5, ok("t2", "t2"), []), (30.0, Tick(), []),
        (30.5, ok("t2", "t1"), []),                     # the cloud back on t1
        (31.5, ok("t2", "t1"), [act("t1", "cloud moved traffic to t1, following")]),
    ], start=VENDOR)
    c = e.connections["c"]
    assert c.active == "t1" and c.pinned == "t1"


def test_signs_within_hold_down_of_vpnds_own_switch_are_ignored():
    run(cfg(hold_down=5.0), [
        (5.0, dataclasses.replace(loss("t1")), []), (6.0, loss("t1"), []),
        (7.0, loss("t1"), [act("t2", "switched to t2")]),
        (7.5, ok("t2", "t1"), []), (8.0, ok("t1", "t1"), []),     # t1 back: usable at 8.0
        (8.5, ok("t2", "t1"), []), (9.0, ok("t1", "t1"), []),     # 2 signs, within hold_down
    ], start=VENDOR)


def test_two_signs_far_apart_and_contradicting_signs_confirm_nothing():
    run(cfg(), [(10.0, ok("t1", "t2"), []), (13.0, ok("t1", "t2"), []),
                (16.0, ok("t1", "t2"), []),
                (16.5, ok("t2", "t1"), []),                        # the cloud sends on t1
                (17.0, ok("t1", "t2"), [])], start=VENDOR)


def test_bgp_prepend_preempts_back_although_the_cloud_returns_through_the_standby():
    """BGP mode: the standby's more-specifics keep the cloud on t2 for as long as t2 is active,
    so t1's answers come back through t2 however healthy t1 is. vpnd's switch back (the
    more-specifics withdrawn, the prepend moved) is what moves the cloud: it must not wait for
    the cloud (found on the vm tier: tunnel 1 repaired, no failback in 180 s)."""
    from test_core_failover import BGP_START
    c = connection(routing="bgp", preempt_delay=3.0, hold_down=1.0)
    c = dataclasses.replace(c, health_check=dataclasses.replace(c.health_check, interval=1.0))
    moved = black_hole_t1(10.0, 15.0) + [(15.5, ok("t2", "t2"), ANY), (16.0, loss("t1"), ANY)]
    steps = []
    for n in range(20, 23):         # t1 repaired; the more-specifics keep the cloud on t2
        steps += [(float(n), ok("t1", "t2"), ANY), (n + 0.5, ok("t2", "t2"), ANY)]
    steps += [(23.0, Tick(), [act("t1", "preferred t1 healthy for 3.0 s: switched back")])]
    for n in range(24, 40):         # withdrawn: the cloud's best path is t1 again
        steps += [(float(n), ok("t1", "t1"), ANY), (n + 0.5, ok("t2", "t1"), ANY)]
    e = run(c, [(0.6, ok("t1", "t1"), ANY), (0.7, ok("t2", "t1"), ANY)] + moved + steps
            + [(60.0, Tick(), ANY)], start=BGP_START)
    conn = e.connections["c"]
    assert conn.active == "t1"
    assert sum(1 for s in conn.switches if s > 20) == 1


def test_bgp_ecmp_does_not_follow_per_flow_hashing():
    c = dataclasses.replace(connection(routing="bgp", standby="ecmp", preempt_delay=3.0,
                                       hold_down=1.0))
    from test_core_failover import BGP_START
    e = run(c, [(10.0, ok("t1", "t2"), ANY), (11.0, ok("t1", "t2"), ANY)], start=BGP_START)
    assert e.connections["c"].active == "t1"


# --- properties ----------------------------------------------------------------------------

def _own(event):
    """The same event, answered through its own tunnel (the per-flow cloud)."""
    if isinstance(event, ProbeResult) and event.ok:
        return dataclasses.replace(event, via=event.tunnel.tunnel)
    return event


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONFIGS, STEPS)
def test_answers_through_their_own_tunnel_change_no_decision(cfg_, steps):
    """Under the lab's per-flow cloud every answer comes back through its own tunnel: the
    decisions must be exactly those made without knowing the return path."""
    a, b = Engine(config(cfg_)), Engine(config(cfg_))
    now = 0.0
    for dt, event in steps:
        now += dt
        for ev in ([Tick()] if a.next_deadline is not None and a.next_deadline < now else []) \
                + [event]:
            got_a, _ = a.handle(ev, now)
            got_b, _ = b.handle(_own(ev), now)
            pick = (SetActive, SetBgpNeighbor)
            assert [x for x in got_a if isinstance(x, pick)] == \
                [x for x in got_b if isinstance(x, pick)]
        assert a.next_deadline == b.next_deadline


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=60))
def test_a_standby_losing_only_with_its_return_tunnel_is_never_unusable(rounds):
    """The vendor's cloud sends on t1 throughout; each round t1 is probed at n.0 and t2 at
    n.5, answered or not at random. t2's answers come back through t1. A loss of t2 is its
    own once t1 has answered for the last 3 rounds (t1 back for more than the 2 s skew);
    until t2 has such a loss in its current run it must never be reported unusable."""
    e = Engine(config(cfg(max_switches_per_minute=60)))
    for t, event, _ in VENDOR:
        e.handle(event, t)
    t1_answers = [True, True, True]         # t1 answered before the rounds began
    own = False
    for n, (a1, a2) in enumerate(rounds):
        now = 10.0 + n
        e.handle(ok("t1", "t1") if a1 else loss("t1"), now)
        t1_answers.append(a1)
        if a2:
            own = False
        elif len(t1_answers) >= 3 and all(t1_answers[-3:]):
            own = True
        e.handle(ok("t2", "t1") if a2 else loss("t2"), now + 0.5)
        if not own:
            assert e.usable(key("t2")), (n, e.status()["c"]["tunnels"]["t2"])


ROUND = st.tuples(st.sampled_from([0.3, 1.0, 1.0, 4.0]),       # time to the next round
                  st.sampled_from(["t1", "t1", "t2"]),         # the tunnel the cloud sends on
                  st.booleans(), st.booleans(),                # t1's, t2's probe answered?
                  st.sampled_from([None] * 8 + ["down t1", "up t1", "down t2", "up t2"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CONFIGS.filter(lambda c: c.health_check is not None and c.routing != "policy"),
       st.lists(ROUND, max_size=60))
def test_return_path_evidence_keeps_every_invariant(cfg_, rounds):
    """The engine's invariants and the damping bound (test_core_properties' Checker) under a
    vendor-like cloud: each round every answer comes back through the tunnel the cloud sends
    on, probes are lost at random, SAs come and go. Following the cloud is only ever onto a
    proven, pinned tunnel, outside hold_down (the Checker's "cloud" kind)."""
    from test_core_failover import down, up
    from test_core_properties import Checker

    check = Checker(cfg_)
    now = 0.0
    for t, event, _ in START:
        check.feed(event, t)
        now = t
    for dt, cloud, a1, a2, sa in rounds:
        now += dt
        events = [ok("t1", cloud) if a1 else loss("t1"), ok("t2", cloud) if a2 else loss("t2")]
        if sa is not None:
            what, t = sa.split()
            events.insert(0, (down if what == "down" else up)(t, 0))
        for i, event in enumerate(events):
            check.feed(event, now + 0.1 * i)
            if check.engine.next_deadline is not None and check.engine.next_deadline <= now:
                check.feed(Tick(), now + 0.1 * i)
    disc = [t for t, k in check.switches if k == "discretionary"]
    for t in disc:
        assert sum(1 for u in disc if t < u + 60.0 and u <= t) <= \
            cfg_.failover.max_switches_per_minute


def test_nothing_is_excused_while_charon_is_unreachable():
    """charon gone (with libipsec its data path goes with it): every tunnel's probes die
    together, as under a dead return tunnel, but no CHILD SA state vouches for the standby:
    no escape to it, and so no switch back when charon returns."""
    from vpnd.core.events import CharonDisconnected

    e = run(cfg(), [(9.9, CharonDisconnected("charon gone"), [])] + [
        (10.0, loss("t1"), []), (10.5, loss("t2"), []),
        (11.0, loss("t1"), []), (11.5, loss("t2"), []),
        (12.0, loss("t1"), ANY), (12.5, loss("t2"), ANY),
    ], start=VENDOR)
    assert health(e, "t2")["blinded"] in ("", None)
    assert e.status()["c"]["active"] == "t1"


def test_losses_from_before_charon_came_back_are_not_excused():
    """charon back (CharonConnected) while both tunnels are still losing: those losses began
    while it was away, so they excuse nothing, and traffic stays where it was."""
    from vpnd.core.events import CharonConnected, CharonDisconnected

    e = run(cfg(), [(9.9, CharonDisconnected("charon gone"), [])] + [
        (10.0, loss("t1"), []), (10.5, loss("t2"), []),
        (11.0, loss("t1"), []), (11.5, loss("t2"), []),
        (12.0, loss("t1"), ANY), (12.2, CharonConnected(), ANY),
        (12.5, loss("t2"), ANY), (13.0, loss("t1"), ANY), (13.5, loss("t2"), ANY),
    ], start=VENDOR)
    assert health(e, "t2")["blinded"] in ("", None)
    assert e.status()["c"]["active"] == "t1"

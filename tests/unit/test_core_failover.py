"""Failover policy scenarios, driven through the engine with explicit times (no sleeps).

Each scenario is a list of steps `(time, event, expected)`; `expected` lists the SetActive and
SetBgpNeighbor actions that step must produce (other actions are not compared), or ANY to not
look. Every scenario starts from the same place: charon synced at t=0, both tunnels' CHILD SAs
installed at 0.1, t1 then t2 answering a probe at 0.2/0.3 -> t1 active.
"""

from __future__ import annotations

import pytest

from vpnd_testing.core_helpers import config, connection, key
from vpnd.core.actions import SetActive, SetBgpNeighbor
from vpnd.core.engine import Engine
from vpnd.core.events import (
    Adopted, BfdChanged, BgpSessionChanged, CharonAlert, CharonConnected, CharonDisconnected, ChildDown,
    ChildUp, Drain, ForceFailover, IkeDown, ProbeResult, SaSnapshot, Tick, Undrain,
)

ANY = object()
T1, T2 = key("t1"), key("t2")
IDS = {"t1": (1, 11), "t2": (2, 12)}


def up(t, n=0):
    ike, child = IDS[t]
    return ChildUp(key(t), ike, child + 100 * n)


def down(t, n=0):
    ike, child = IDS[t]
    return ChildDown(key(t), ike, child + 100 * n, "DPD timeout")


def ok(t, rtt=0.010):
    return ProbeResult(key(t), True, rtt)


def loss(t):
    return ProbeResult(key(t), False)


def act(tunnel, reason="", withdraw=False):
    return ("SetActive", tunnel, reason, withdraw)


def nb(tunnel, enabled):
    return ("SetBgpNeighbor", tunnel, enabled)


START = [
    (0.0, CharonConnected(), ANY),
    (0.0, SaSnapshot(()), ANY),
    (0.1, up("t1"), []),
    (0.1, up("t2"), []),
    (0.2, ok("t1"), [act("t1", "t1 usable")]),
    (0.3, ok("t2"), []),
]


def losses(t, *times):
    return [(x, loss(t), []) for x in times]


def run(cfg, steps, start=START):
    """Play the steps; return the engine. Each step's policy actions must match."""
    engine = Engine(config(cfg))
    for i, (now, event, expected) in enumerate(start + steps):
        actions, deadline = engine.handle(event, now)
        got = []
        for a in actions:
            if isinstance(a, SetActive):
                got.append(("SetActive", a.tunnel, a.reason, a.withdraw))
            elif isinstance(a, SetBgpNeighbor):
                got.append(("SetBgpNeighbor", a.tunnel.tunnel, a.enabled))
        if expected is ANY:
            continue
        assert len(got) == len(expected), f"step {i} at {now} ({event}): got {got}"
        for g, e in zip(got, expected):
            if g[0] == "SetActive":
                assert g[1] == e[1] and g[3] == e[3], f"step {i} at {now}: got {g}, want {e}"
                assert e[2] in g[2], f"step {i} at {now}: reason {g[2]!r} lacks {e[2]!r}"
            else:
                assert g == e, f"step {i} at {now}: got {g}, want {e}"
    return engine


FAST = dict(preempt_delay=10.0, hold_down=5.0)


def test_failover_after_retries_consecutive_losses():
    run(connection(**FAST), losses("t1", 3, 6) + [
        (6.5, ok("t1"), []),                                   # a success resets the count
    ] + losses("t1", 9, 12) + [
        (15, loss("t1"), [act("t2", "t1: 3 probes lost in a row: switched to t2")]),
    ])


def test_retries_one_fails_on_the_first_loss():
    run(connection(retries=1), [(3, loss("t1"), [act("t2", "1 probes lost")])])


def test_immediate_switch_when_the_active_child_sa_goes_down():
    run(connection(), [(5, down("t1"), [act("t2", "t1: CHILD SA not installed")])])


def test_immediate_switch_when_the_active_ike_sa_goes_down():
    run(connection(), [(5, IkeDown(T1, 1, "DPD"), [act("t2", "CHILD SA not installed")])])


def test_standby_failing_changes_nothing():
    run(connection(), losses("t2", 3, 6, 9) + [(10, down("t2"), [])])


def test_preempt_back_after_preempt_delay():
    e = run(connection(**FAST), [(5, down("t1"), [act("t2")]),
                                 (6, up("t1", 1), []),
                                 (7, ok("t1"), [])])
    # no probe was lost while it was down, so it counts as healthy from its CHILD SA at 6
    assert e.next_deadline == 16.0
    run(connection(**FAST), [(5, down("t1"), [act("t2")])] + losses("t1", 5.2, 5.4, 5.6) + [
                             (6, up("t1", 1), []),
                             (7, ok("t1"), []), (16.9, Tick(), []),
                             (17, Tick(), [act("t1", "preferred t1 healthy for 10.0 s")])])


def test_preempt_clock_restarts_when_the_preferred_tunnel_fails_again():
    e = run(connection(**FAST), [(5, down("t1"), [act("t2")]), (6, up("t1", 1), []),
                                 (7, ok("t1"), []), (12, down("t1", 1), []),
                                 (13, up("t1", 2), []), (13.5, ok("t1"), [])])
    assert e.next_deadline == 23.0


def test_no_preempt_when_preempt_is_false():
    e = run(connection(preempt=False), [(5, down("t1"), [act("t2")]), (6, up("t1", 1), []),
                                        (7, ok("t1"), []), (100, Tick(), [])])
    assert e.next_deadline is None and e.connections["c"].active == "t2"


def test_hold_down_delays_failback():
    e = run(connection(preempt_delay=0.0, hold_down=30.0),
            [(5, down("t1"), [act("t2")]), (6, up("t1", 1), []), (7, ok("t1"), [])])
    assert e.next_deadline == 35.0                     # last switch at 5 + 30


def test_damping_blocks_failback_but_never_an_escape():
    cfg = connection(preempt_delay=0.0, hold_down=0.0, max_switches_per_minute=2)
    e = run(cfg, [
        (5, down("t1"), [act("t2")]),                  # switch 2 in the window (0.2, 5)
        (6, up("t1", 1), []),
        (7, ok("t1"), []),                             # failback wanted: damped until 60.2
    ])
    assert e.next_deadline == pytest.approx(60.2)
    run(cfg, [
        (5, down("t1"), [act("t2")]), (6, up("t1", 1), []), (7, ok("t1"), []),
        (20, down("t2"), [act("t1", "t2: CHILD SA not installed")]),   # escape: 3rd switch
        (21, up("t2", 1), []), (22, ok("t2"), []),
        (40, down("t1", 1), [act("t2")]),              # 4th switch in 60 s: still allowed
    ])


def test_damping_release_then_failback():
    cfg = connection(preempt_delay=0.0, hold_down=0.0, max_switches_per_minute=2)
    run(cfg, [(5, down("t1"), [act("t2")]), (6, up("t1", 1), []), (7, ok("t1"), []),
              (60.1, Tick(), []),
              (60.2, Tick(), [act("t1", "preferred t1")])])


def test_zero_switches_per_minute_disables_failback_only():
    e = run(connection(max_switches_per_minute=0), [
        (5, down("t1"), [act("t2")]), (6, up("t1", 1), []), (7, ok("t1"), [])])
    assert e.next_deadline is None


def test_both_down_keep_leaves_traffic_on_the_last_active_tunnel():
    run(connection(), losses("t2", 3, 6, 9) + losses("t1", 4, 7) + [
        (10, loss("t1"), [act("t1", "no tunnel usable (t1: 3 probes lost in a row): keeping")]),
        (11, loss("t1"), []),
        (12, ok("t2"), [act("t2", "t1: 4 probes lost in a row: switched to t2")]),
    ])


def test_both_down_keep_and_the_same_tunnel_recovers():
    run(connection(), [(5, down("t2"), []), (6, down("t1"), [act("t1", "keeping traffic")]),
                       (7, up("t1", 1), [act("t1", "t1 recovered")])])


def test_no_switch_to_a_tunnel_that_is_no_better():
    # t2 fails its probes first; when t1 fails too, traffic stays on t1
    run(connection(), losses("t2", 1, 2, 3) + losses("t1", 4, 5) + [
        (6, loss("t1"), [act("t1", "keeping traffic on t1")])])


def test_no_switch_to_a_tunnel_losing_probes_too():
    # both die together (charon gone, uplink down), detected a probe apart: t1 reaches its
    # budget while t2 has lost 2 of 3 -- t2 is no better, so nothing moves, then both down
    engine = run(connection(), losses("t2", 3.5, 6.5) + losses("t1", 3, 6) + [
        (9, loss("t1"), []),
        (9.5, loss("t2"), [act("t1", "no tunnel usable (t1: 3 probes lost in a row): keeping")]),
    ])
    assert engine.connections["c"].active == "t1"


def test_a_tunnel_losing_probes_becomes_a_target_after_its_next_answer():
    run(connection(), losses("t2", 3.5) + losses("t1", 3, 6) + [
        (9, loss("t1"), []),                                   # t2: 1 lost, no better yet
        (9.5, ok("t2"), [act("t2", "t1: 3 probes lost in a row: switched to t2")]),
    ])


def test_a_lost_child_sa_still_moves_to_a_tunnel_with_losses():
    # the active tunnel has no SA at all: anything installed is better
    run(connection(), losses("t2", 3.5) + [
        (4, down("t1"), [act("t2", "t1: CHILD SA not installed: switched to t2")]),
    ])


def test_both_down_withdraw_and_recovery():
    run(connection(both_down="withdraw"), [
        (5, down("t1"), [act("t2")]),
        (6, down("t2"), [act(None, "withdrawing routes", withdraw=True)]),
        (6.5, loss("t2"), []), (6.6, loss("t2"), []), (6.7, loss("t2"), []),
        (7, up("t2", 1), []),                       # CHILD SA alone: probes must pass too
        (8, ok("t2"), [act("t2", "t2 recovered, routes restored")]),
    ])


def test_alert_shortens_the_probe_budget_but_never_switches():
    run(connection(), [
        (1, CharonAlert(T1, "retransmit", "retransmit 1 of request"), []),
        (2, CharonAlert(T1, "retransmit_timeout", "giving up"), []),
        (3, loss("t1"), [act("t2", "1 probes lost")]),   # 1 more loss instead of 3
    ])
    run(connection(), [
        (1, loss("t1"), []),
        (2, CharonAlert(T1, "retransmit", "x"), []),
        (3, loss("t1"), [act("t2", "2 probes lost")]),
    ])


def test_alert_is_forgotten_after_an_answered_probe():
    run(connection(), [(1, CharonAlert(T1, "retransmit", "x"), []), (2, ok("t1"), []),
                       (3, loss("t1"), []), (4, loss("t1"), []),
                       (5, loss("t1"), [act("t2")])])


def test_alerts_without_health_checks_change_nothing():
    run(connection(health=False), [(1, CharonAlert(T1, "retransmit", "x"), []),
                                   (2, CharonAlert(T1, "retransmit_timeout", "x"), [])],
        start=START[:2] + [(0.1, up("t1"), [act("t1", "t1 usable")]), (0.1, up("t2"), [])])


def test_without_health_checks_an_installed_child_suffices():
    run(connection(health=False), [(5, down("t1"), [act("t2")])],
        start=START[:2] + [(0.1, up("t1"), [act("t1", "t1 usable")]), (0.1, up("t2"), [])])


def test_max_rtt_threshold():
    cfg = connection(max_rtt_ms=120.0)
    run(cfg, [(1, ok("t1", 0.150), []), (2, ok("t1", 0.150), []),       # mean 103 ms
              (3, ok("t1", 0.150), [act("t2", "probe RTT 150 ms > max_rtt_ms 120")]),
              (4, ok("t1", 0.010), []), (5, ok("t1", 0.010), [])])


def test_max_loss_percent_over_the_window():
    cfg = connection(max_loss_percent=20.0, retries=5)
    # the window after START: ok(0.2), then 1..9 with losses at 3, 6, 9: 3 of 10 lost
    steps = [(i, loss("t1") if i in (3, 6) else ok("t1"), []) for i in range(1, 9)]
    run(cfg, steps + [(9, loss("t1"), [act("t2", "probe loss 30% > max_loss_percent 20")])])


def test_drain_moves_traffic_and_keeps_it_off_while_another_is_usable():
    run(connection(**FAST), [
        (5, Drain(T1), [act("t2", "t1 drained")]),
        (50, Tick(), []),                                    # no preempt back onto it
        (51, down("t2"), [act("t1", "t2: CHILD SA not installed")]),   # only one left
        (52, up("t2", 1), [act("t2", "t1 drained")]),        # off it again at once
        (54, Undrain(T1), []),                               # back to automatic: t1 has
        # been healthy all along, hold_down ends at 57, but 4 switches (0.2, 5, 51, 52) fill
        # the damping window until the first one leaves it at 60.2
        (60.1, Tick(), []),
        (60.2, Tick(), [act("t1", "preferred t1")]),
    ])


def test_drain_of_the_standby_changes_nothing_now():
    run(connection(), [(5, Drain(T2), []), (6, down("t1"), [act("t2")])])


def test_force_failover_pins_until_undrain():
    run(connection(**FAST), [
        (5, ForceFailover(T2), [act("t2", "operator: force failover to t2")]),
        (100, Tick(), []),                                   # pinned: no preempt to t1
        (101, down("t2"), [act("t1")]),                      # but a dead pin is escaped
        (102, up("t2", 1), []), (103, ok("t2"), []),
        (113, Tick(), [act("t2", "pinned t2")]),             # back to the pin after 10 s
        (120, Undrain(T2), [act("t1", "preferred t1")]),     # clears the pin: preempt
    ])


def test_force_failover_onto_an_unusable_tunnel_does_nothing():
    e = run(connection(), [(5, down("t2"), []), (6, ForceFailover(T2), [])])
    assert e.connections["c"].pinned is None


def test_force_failover_undrains_its_target():
    e = run(connection(), [(5, Drain(T2), []), (6, ForceFailover(T2), [act("t2", "operator")])])
    assert not e.connections["c"].of("t2").drained


def test_force_failover_pins_even_when_preempt_is_false():
    run(connection(preempt=False, **{"preempt_delay": 1.0}), [
        (5, ForceFailover(T2), [act("t2")]), (6, down("t2"), [act("t1")]),
        (7, up("t2", 1), []), (8, ok("t2"), []), (15, Tick(), [act("t2", "pinned")])])


def test_switch_route_false_probes_are_report_only():
    e = run(connection(switch_route=False), losses("t1", 3, 6, 9, 12) + [
        (13, down("t1"), [act("t2")]),       # CHILD SA state still moves traffic
    ], start=START[:2] + [(0.1, up("t1"), [act("t1", "t1 usable")]), (0.1, up("t2"), [])])
    assert e.connections["c"].of("t1").losses == 4


def test_charon_disconnect_moves_nothing():
    run(connection(), [(5, CharonDisconnected("socket closed"), []), (6, Tick(), []),
                       (7, CharonConnected(), [])])


def test_single_tunnel_connection():
    run(connection(tunnels=1), [(5, down("t1"), [act("t1", "keeping")]),
                                (6, up("t1", 1), [act("t1", "recovered")])],
        start=START[:3] + [(0.2, ok("t1"), [act("t1", "t1 usable")])])


# --- bgp mode ---------------------------------------------------------------------------

BGP_START = START[:4] + [
    (0.2, ok("t1"), []), (0.3, ok("t2"), []),             # no BGP session yet: not usable
    (0.4, BgpSessionChanged(T1, True), [act("t1", "t1 usable")]),
    (0.5, BgpSessionChanged(T2, True), []),
]


def test_bgp_probe_failure_shuts_the_neighbor_and_restores_it():
    run(connection(routing="bgp"), losses("t1", 3, 6) + [
        (9, loss("t1"), [act("t2", "3 probes lost"), nb("t1", False)]),
        (10, BgpSessionChanged(T1, False), []),
        (12, ok("t1"), [nb("t1", True)]),                 # healthy again: neighbor back
        (15, BgpSessionChanged(T1, True), []),
        (25, Tick(), [act("t1", "preferred t1")]),        # reporting follows BGP's choice
    ], start=BGP_START)


def test_bgp_nothing_is_shut_before_the_first_answer():
    run(connection(routing="bgp"), [], start=BGP_START)


def test_bgp_child_down_shuts_the_neighbor():
    run(connection(routing="bgp"), [
        (5, down("t1"), [act("t2"), nb("t1", False)]),
        (6, up("t1", 1), [nb("t1", True)]),
    ], start=BGP_START)


def test_bgp_bfd_down_moves_the_active_but_not_the_neighbor():
    run(connection(routing="bgp"), [
        (5, BfdChanged(T1, False), [act("t2", "BFD down")]),
        (6, BfdChanged(T1, True), []),
    ], start=BGP_START)


def test_bgp_ecmp_drain_shuts_the_drained_neighbor_only_while_another_is_usable():
    run(connection(routing="bgp", standby="ecmp"), [
        (5, Drain(T1), [act("t2", "t1 drained"), nb("t1", False)]),
        (6, down("t2"), [act("t1"), nb("t1", True), nb("t2", False)]),
        (7, Undrain(T1), []),
    ], start=BGP_START)


PREPEND = dict(routing="bgp", standby="prepend")


def test_bgp_prepend_return_waits_for_preempt_delay():
    # SetActive moves the route-maps: the return to t1 waits 10 s after its session is back
    run(connection(**PREPEND, **FAST), losses("t1", 3, 6) + [
        (9, loss("t1"), [act("t2", "3 probes lost"), nb("t1", False)]),
        (10, BgpSessionChanged(T1, False), []),
        (12, ok("t1"), [nb("t1", True)]),
        (15, BgpSessionChanged(T1, True), []),            # session back: traffic stays on t2
        (24.9, Tick(), []),
        (25, Tick(), [act("t1", "preferred t1 healthy for 10.0 s")]),
    ], start=BGP_START)


def test_bgp_prepend_without_preempt_stays_on_the_standby():
    run(connection(**PREPEND, preempt=False), [
        (5, down("t1"), [act("t2"), nb("t1", False)]),
        (6, up("t1", 1), [nb("t1", True)]),
        (7, BgpSessionChanged(T1, True), []),
        (100, Tick(), []),
    ], start=BGP_START)


def test_bgp_prepend_drain_and_pin_move_route_maps_not_sessions():
    # the route-maps keep traffic off the drained / unpinned tunnel; its session stays up
    run(connection(**PREPEND), [
        (5, Drain(T1), [act("t2", "t1 drained")]),
        (6, down("t2"), [act("t1"), nb("t2", False)]),
        (7, Undrain(T1), []),
    ], start=BGP_START)
    run(connection(**PREPEND), [
        (5, ForceFailover(T2), [act("t2", "operator: force failover to t2")]),
        (100, Tick(), []),
        (101, Undrain(T2), [act("t1", "preferred t1")]),
    ], start=BGP_START)


def test_bgp_switch_route_false_never_shuts_on_probes():
    run(connection(routing="bgp", switch_route=False), losses("t1", 3, 6, 9, 12),
        start=START[:4] + [(0.4, BgpSessionChanged(T1, True), [act("t1")]),
                           (0.5, BgpSessionChanged(T2, True), [])])


def test_bgp_both_failing_keep_leaves_the_last_session_up():
    run(connection(routing="bgp"), losses("t2", 1, 2) + [
        (3, loss("t2"), [nb("t2", False)]),
    ] + losses("t1", 4, 5) + [
        (6, loss("t1"), [act("t1", "keeping traffic on t1")]),     # no neighbor shut
        (7, ok("t2"), [act("t2"), nb("t1", False), nb("t2", True)]),
    ], start=BGP_START)


def test_bgp_both_failing_withdraw_shuts_every_failing_session():
    run(connection(routing="bgp", both_down="withdraw"), [
        (5, down("t2"), [nb("t2", False)]),
        (6, down("t1"), [act(None, "withdrawing", withdraw=True), nb("t1", False)]),
    ], start=BGP_START)


# --- start-up: the preferred tunnel gets a moment to answer ------------------------------

BOTH_UP = [(0.0, CharonConnected(), ANY), (0.0, SaSnapshot(()), ANY),
           (0.1, up("t1"), []), (0.1, up("t2"), [])]


def test_startup_waits_briefly_for_the_preferred_tunnel():
    # Default interval 3 s x (3 retries + 1) is capped at 10 s of grace.
    run(connection(**FAST), [
        (0.2, ok("t2"), []),                                   # t2 answers first: wait
        (0.4, ok("t1"), [act("t1", "t1 usable")]),             # t1 answers: it wins at once
    ], start=BOTH_UP)


def test_startup_takes_the_other_tunnel_when_the_grace_runs_out():
    engine = run(connection(**FAST), [(0.2, ok("t2"), [])], start=BOTH_UP)
    assert engine.next_deadline == pytest.approx(10.2)
    actions, _ = engine.handle(Tick(), 10.2)
    assert [(a.tunnel, a.reason) for a in actions if isinstance(a, SetActive)] == [("t2", "t2 usable")]


def test_startup_stops_waiting_at_the_preferred_tunnels_first_verdict():
    start = [(0.0, CharonConnected(), ANY), (0.0, SaSnapshot(()), ANY), (0.1, up("t2"), [])]
    run(connection(**FAST), [(0.2, ok("t2"), []),              # t1 not even up: wait briefly
                             (0.3, loss("t1"), []),            # lost before its SA: no verdict
                             (0.4, up("t1"), []),
                             (0.6, loss("t1"), []),            # one loss may race the SA
                             (0.7, loss("t1"), []),
                             (0.8, loss("t1"), [act("t2", "t2 usable")])], start=start)


# --- restart: traffic found on a tunnel stays there ----------------------------------------

ADOPTED_T2 = [(0.0, Adopted(T2), [])] + BOTH_UP


def test_restart_keeps_traffic_on_the_adopted_tunnel_until_preempt_delay():
    # vpnd restarted while traffic was on t2: t1 answering first does not pull it back at once
    engine = run(connection(**FAST), [
        (0.2, ok("t1"), []),                                   # t1 answers first: wait for t2
        (0.3, ok("t2"), [act("t2", "kept: traffic was on it when vpnd started")]),
        (0.5, ok("t1"), []),
    ], start=ADOPTED_T2)
    # the way back is an ordinary preempt: t1 usable since 0.2, preempt_delay 10 s
    assert engine.next_deadline == pytest.approx(10.2)
    actions, _ = engine.handle(Tick(), 10.2)
    assert [(a.tunnel, a.reason) for a in actions if isinstance(a, SetActive)] == [
        ("t1", "preferred t1 healthy for 10.0 s: switched back")]


def test_restart_with_preempt_false_stays_on_the_adopted_tunnel():
    engine = run(connection(preempt=False, **FAST), [
        (0.2, ok("t2"), [act("t2", "kept")]),
        (0.3, ok("t1"), []),
    ], start=ADOPTED_T2)
    assert engine.next_deadline is None
    assert engine.connections["c"].active == "t2"


def test_an_adopted_tunnel_that_fails_is_not_kept():
    run(connection(**FAST), [
        (0.2, ok("t1"), []),                                   # wait for t2's verdict...
        (0.3, loss("t2"), []), (0.6, loss("t2"), []),
        (0.9, loss("t2"), [act("t1", "t1 usable")]),          # ...which is a failure
    ], start=ADOPTED_T2)


def test_an_adopted_tunnel_without_its_sa_is_waited_for_only_briefly():
    start = [(0.0, Adopted(T2), []), (0.0, CharonConnected(), ANY), (0.0, SaSnapshot(()), ANY),
             (0.1, up("t1"), [])]
    engine = run(connection(**FAST), [(0.2, ok("t1"), [])], start=start)
    assert engine.next_deadline == pytest.approx(10.2)          # the start-up grace
    actions, _ = engine.handle(Tick(), 10.2)
    assert [a.tunnel for a in actions if isinstance(a, SetActive)] == ["t1"]


def test_adoption_after_the_first_choice_changes_nothing():
    engine = run(connection(**FAST), [(1.0, Adopted(T2), [])])
    assert engine.connections["c"].active == "t1"


def test_bgp_startup_waits_for_the_preferred_tunnels_session():
    # both answer; t2's session comes up first: t1's is on its way, so no detour via t2
    run(connection(**PREPEND, **FAST), [
        (0.2, ok("t1"), []), (0.3, ok("t2"), []),
        (0.4, BgpSessionChanged(T2, True), []),
        (0.5, BgpSessionChanged(T1, True), [act("t1", "t1 usable")]),
    ], start=BOTH_UP)


def test_bgp_restart_keeps_the_adopted_tunnel_whose_session_comes_second():
    run(connection(**PREPEND, **FAST), [
        (0.2, ok("t1"), []), (0.3, ok("t2"), []),
        (0.4, BgpSessionChanged(T1, True), []),
        (0.5, BgpSessionChanged(T2, True), [act("t2", "kept")]),
    ], start=ADOPTED_T2)


def test_a_drained_adopted_tunnel_is_not_preferred():
    run(connection(**FAST), [
        (0.15, Drain(T2), []),
        (0.2, ok("t2"), []),
        (0.3, ok("t1"), [act("t1", "t1 usable")]),
    ], start=ADOPTED_T2)


# --- policy mode: following the cloud's move (XfrmInTmplMismatch rising) ---------------------

def rise(total=1):
    from vpnd.core.events import XfrmInTmplMismatch
    return XfrmInTmplMismatch(total, 1)


POLICY = dict(routing="policy", preempt_delay=10.0, hold_down=5.0)


def test_policy_follows_the_cloud_after_two_rises_and_stays_there():
    engine = run(connection(**POLICY), [
        (6.0, rise(3), []),                                     # one rise: a stray packet?
        (6.5, rise(9), [act("t2", "cloud moved traffic to t2, following")]),
        (30.0, Tick(), []),                                     # no preempt: the cloud's choice
        (31.0, ok("t1"), []),
    ])
    c = engine.connections["c"]
    assert c.active == "t2" and c.pinned == "t2"


def test_policy_follows_the_cloud_back_when_it_moves_again():
    run(connection(**POLICY), [
        (6.0, rise(3), []),
        (6.5, rise(9), [act("t2", "following")]),
        (7.0, rise(12), []),                                    # within hold_down: our own switch
        (8.0, rise(15), []),
        (20.0, rise(30), []),
        (20.5, rise(40), [act("t1", "cloud moved traffic to t1, following")]),
    ])


def test_rises_far_apart_do_not_confirm_a_move():
    run(connection(**POLICY), [(6.0, rise(1), []), (9.0, rise(2), []), (12.0, rise(3), [])])


def test_no_follow_onto_an_unusable_or_drained_standby():
    run(connection(**POLICY), [(1.0, down("t2"), []), (6.0, rise(1), []), (6.5, rise(2), [])])
    run(connection(**POLICY), [(1.0, Drain(T2), []), (6.0, rise(1), []), (6.5, rise(2), [])])


def test_the_pinned_cloud_choice_fails_over_as_usual():
    run(connection(**POLICY), [
        (6.0, rise(3), []),
        (6.5, rise(9), [act("t2", "following")]),
        (12.0, down("t2"), [act("t1", "t2: CHILD SA not installed")]),
    ])


def test_the_counter_means_nothing_in_route_mode():
    run(connection(preempt_delay=10.0, hold_down=5.0),
        [(6.0, rise(1), []), (6.5, rise(2), []), (6.0, rise(3), [])])


def test_two_policy_connections_make_the_counter_ambiguous():
    from vpnd.core.events import XfrmInTmplMismatch
    engine = Engine(config(connection(**POLICY), connection("d", **POLICY)))
    for now, event in [(0.0, CharonConnected()), (0.0, SaSnapshot(())), (0.1, up("t1")),
                       (0.1, up("t2")), (0.2, ok("t1")), (0.3, ok("t2"))]:
        engine.handle(event, now)
    assert engine.connections["c"].active == "t1"
    for now in (6.0, 6.5, 7.0):
        actions, _ = engine.handle(XfrmInTmplMismatch(int(now), 1), now)
        assert not [a for a in actions if isinstance(a, SetActive)]

"""The tunnel machine, table-driven over every (state, event kind) pair of its transition table."""

from __future__ import annotations

import pytest

from vpnd.core.actions import Initiate, ReportTransition, Terminate
from vpnd.core.events import (
    CharonConnected, CharonDisconnected, ChildDown, ChildRekeyed, ChildUp, IkeDown, IkeRekeyed,
    IkeUp, NegotiationFailed, SaSnapshot, Tick, TunnelKey, TunnelSa,
)
from vpnd.core.tunnel import (
    EVENT_KINDS, STATES, TRANSITIONS, Park, Timers, TransitionError, Tunnel, Unpark, _derive,
    decide, event_kind,
)

K = TunnelKey("c", "t1")
OTHER = TunnelKey("c", "t2")
NOW = 100.0

# One tunnel per state, all synced with charon. Retries are planned at 102/105, outstanding
# negotiations started at 99 (time out at 129).
FIXTURES = {
    "down": Tunnel(K, "down", synced=True, retry_at=105.0),
    "connecting": Tunnel(K, "connecting", synced=True, pending_since=99.0),
    "phase1_failed": Tunnel(K, "phase1_failed", synced=True, failures=1, failed_phase=1,
                            retry_at=102.0),
    "ike_up": Tunnel(K, "ike_up", ikes=(1,), synced=True, pending_since=99.0),
    "phase2_failed": Tunnel(K, "phase2_failed", ikes=(1,), synced=True, failures=1,
                            failed_phase=2, retry_at=102.0),
    "established": Tunnel(K, "established", ikes=(1,), children=((11, 1),), synced=True),
    # variants
    "phase2_failed_no_ike": Tunnel(K, "phase2_failed", synced=True, failures=1, failed_phase=2,
                                   retry_at=102.0),
    "phase2_failed_retrying": Tunnel(K, "phase2_failed", synced=True, failures=1,
                                     failed_phase=2, pending_since=99.0),
    "established_two_ikes": Tunnel(K, "established", ikes=(1, 2), children=((11, 1),),
                                   synced=True),
    # parked: held without a CHILD SA until 110; "testing": its CHILD SA is back, being proven
    "parked": Tunnel(K, "parked", ikes=(1,), synced=True, parked="dead", park_until=110.0,
                     retry_at=110.0),
    "parked_testing": Tunnel(K, "parked", ikes=(1,), children=((11, 1),), synced=True,
                             parked="dead", park_until=110.0),
    "parked_failed2": Tunnel(K, "parked", ikes=(1,), synced=True, parked="dead",
                             park_until=110.0, retry_at=110.0, failures=1, failed_phase=2),
}
PARK = Park(K, 110.0, "data path dead")
UNPARK = Unpark(K, "proven")


def sa(ike=None, ike_state=None, child=None, child_state=None, key=K):
    return TunnelSa(key, ike, ike_state, child, child_state)


SNAP_EMPTY = SaSnapshot((sa(),))
SNAP_UP = SaSnapshot((sa(1, "ESTABLISHED", 11, "INSTALLED"),))
SNAP_UP_NEW_IDS = SaSnapshot((sa(3, "ESTABLISHED", 13, "INSTALLED"),))
SNAP_IKE_ONLY = SaSnapshot((sa(1, "ESTABLISHED"),))
SNAP_CONNECTING = SaSnapshot((sa(5, "CONNECTING"),))
SNAP_OTHER = SaSnapshot((sa(7, "ESTABLISHED", 17, "INSTALLED", key=OTHER),))


def rep(old, new):
    """Expect a ReportTransition old -> new (reason not compared)."""
    return ("report", old, new)


INIT = Initiate(K)
TERM = Terminate(K)
F1 = NegotiationFailed(K, 1, "pre-shared key mismatch")
F2 = NegotiationFailed(K, 2, "traffic selectors unacceptable")

# (fixture, event, now, expected state, expected actions, extra checks on the new tunnel)
ROWS = [
    # --- down
    ("down", IkeUp(K, 2), NOW, "ike_up", [rep("down", "ike_up")], dict(ike_id=2)),
    ("down", IkeDown(K, 9, "x"), NOW, "down", [], {}),
    ("down", ChildUp(K, 2, 12), NOW, "established", [rep("down", "established")],
     dict(ike_id=2, child_id=12, retry_at=None)),
    ("down", ChildDown(K, 9, 19, "x"), NOW, "down", [], {}),
    ("down", IkeRekeyed(K, 9, 10), NOW, "down", [], dict(ikes=())),
    ("down", ChildRekeyed(K, 19, 20), NOW, "down", [], dict(children=())),
    ("down", F1, NOW, "phase1_failed", [rep("down", "phase1_failed")],
     dict(retry_at=102.0, failures=1)),
    ("down", F2, NOW, "phase2_failed", [rep("down", "phase2_failed")], dict(retry_at=102.0)),
    ("down", SNAP_EMPTY, NOW, "down", [], dict(retry_at=105.0)),
    ("down", SNAP_UP, NOW, "established", [rep("down", "established")], dict(child_id=11)),
    ("down", CharonConnected(), NOW, "down", [], {}),
    ("down", CharonDisconnected("gone"), NOW, "down", [], dict(synced=False)),
    ("down", Tick(), NOW, "down", [], {}),
    ("down", Tick(), 105.0, "connecting", [INIT, rep("down", "connecting")],
     dict(pending_since=105.0, retry_at=None)),
    # --- connecting
    ("connecting", IkeUp(K, 2), NOW, "ike_up", [rep("connecting", "ike_up")],
     dict(pending_since=99.0)),
    ("connecting", IkeDown(K, 9, "x"), NOW, "connecting", [], {}),
    ("connecting", ChildUp(K, 2, 12), NOW, "established", [rep("connecting", "established")],
     dict(pending_since=None, failures=0)),
    ("connecting", ChildDown(K, 9, 19, "x"), NOW, "connecting", [], {}),
    ("connecting", IkeRekeyed(K, 9, 10), NOW, "connecting", [], {}),
    ("connecting", ChildRekeyed(K, 19, 20), NOW, "connecting", [], {}),
    ("connecting", F1, NOW, "phase1_failed", [rep("connecting", "phase1_failed")],
     dict(pending_since=None, retry_at=102.0)),
    ("connecting", F2, NOW, "phase2_failed", [rep("connecting", "phase2_failed")], {}),
    ("connecting", SNAP_CONNECTING, NOW, "connecting", [], dict(pending_since=99.0)),
    ("connecting", SNAP_EMPTY, NOW, "connecting", [], dict(pending_since=99.0)),
    ("connecting", CharonConnected(), NOW, "connecting", [], {}),
    ("connecting", CharonDisconnected("gone"), NOW, "connecting", [], dict(synced=False)),
    ("connecting", Tick(), NOW, "connecting", [], {}),
    ("connecting", Tick(), 129.0, "phase1_failed", [TERM, rep("connecting", "phase1_failed")],
     dict(pending_since=None, retry_at=131.0, failures=1)),
    # --- phase1_failed (a retry is due at 102; the state stays visible while retrying)
    ("phase1_failed", IkeUp(K, 2), NOW, "ike_up", [rep("phase1_failed", "ike_up")],
     dict(failed_phase=0)),
    ("phase1_failed", IkeDown(K, 9, "x"), NOW, "phase1_failed", [], {}),
    ("phase1_failed", ChildUp(K, 2, 12), NOW, "established",
     [rep("phase1_failed", "established")], dict(failures=0, retry_at=None)),
    ("phase1_failed", ChildDown(K, 9, 19, "x"), NOW, "phase1_failed", [], {}),
    ("phase1_failed", IkeRekeyed(K, 9, 10), NOW, "phase1_failed", [], {}),
    ("phase1_failed", ChildRekeyed(K, 19, 20), NOW, "phase1_failed", [], {}),
    ("phase1_failed", F1, NOW, "phase1_failed", [], dict(failures=2, retry_at=104.0)),
    ("phase1_failed", F2, NOW, "phase2_failed", [rep("phase1_failed", "phase2_failed")], {}),
    ("phase1_failed", SNAP_EMPTY, NOW, "phase1_failed", [], dict(retry_at=102.0)),
    ("phase1_failed", SNAP_UP, NOW, "established", [rep("phase1_failed", "established")], {}),
    ("phase1_failed", CharonConnected(), NOW, "phase1_failed", [], {}),
    ("phase1_failed", CharonDisconnected("gone"), NOW, "phase1_failed", [], {}),
    ("phase1_failed", Tick(), 102.0, "phase1_failed", [INIT], dict(pending_since=102.0)),
    # --- ike_up (IKE SA 1 up, its CHILD SA being negotiated since 99)
    ("ike_up", IkeUp(K, 1), NOW, "ike_up", [], dict(ikes=(1,))),
    ("ike_up", IkeUp(K, 2), NOW, "ike_up", [], dict(ikes=(1, 2), pending_since=99.0)),
    ("ike_up", IkeDown(K, 1, "dpd"), NOW, "down", [rep("ike_up", "down")],
     dict(ikes=(), pending_since=None, failures=1, retry_at=102.0)),
    ("ike_up", IkeDown(K, 9, "x"), NOW, "ike_up", [], {}),
    ("ike_up", ChildUp(K, 1, 11), NOW, "established", [rep("ike_up", "established")],
     dict(pending_since=None)),
    ("ike_up", ChildDown(K, 1, 19, "x"), NOW, "ike_up", [], {}),
    ("ike_up", IkeRekeyed(K, 1, 2), NOW, "ike_up", [], dict(ikes=(2,))),
    ("ike_up", ChildRekeyed(K, 19, 20), NOW, "ike_up", [], {}),
    ("ike_up", F1, NOW, "ike_up", [], dict(failed_phase=0, pending_since=None, retry_at=102.0)),
    ("ike_up", F2, NOW, "phase2_failed", [rep("ike_up", "phase2_failed")], {}),
    ("ike_up", SNAP_IKE_ONLY, NOW, "ike_up", [], {}),
    ("ike_up", SNAP_EMPTY, NOW, "connecting", [rep("ike_up", "connecting")], dict(ikes=())),
    ("ike_up", CharonConnected(), NOW, "ike_up", [], {}),
    ("ike_up", CharonDisconnected("gone"), NOW, "ike_up", [], {}),
    ("ike_up", Tick(), NOW, "ike_up", [], {}),
    ("ike_up", Tick(), 129.0, "phase2_failed", [rep("ike_up", "phase2_failed")],
     dict(ikes=(1,), retry_at=131.0)),        # no Terminate: the IKE SA is fine
    # --- phase2_failed (IKE SA 1 up, the CHILD SA failed; a retry is due at 102)
    ("phase2_failed", IkeUp(K, 2), NOW, "ike_up", [rep("phase2_failed", "ike_up")], {}),
    ("phase2_failed", IkeDown(K, 1, "x"), NOW, "phase2_failed", [], dict(ikes=())),
    ("phase2_failed", IkeDown(K, 9, "x"), NOW, "phase2_failed", [], {}),
    ("phase2_failed", ChildUp(K, 1, 11), NOW, "established",
     [rep("phase2_failed", "established")], {}),
    ("phase2_failed", ChildDown(K, 1, 19, "x"), NOW, "phase2_failed", [], {}),
    ("phase2_failed", IkeRekeyed(K, 1, 2), NOW, "phase2_failed", [], dict(ikes=(2,))),
    ("phase2_failed", ChildRekeyed(K, 19, 20), NOW, "phase2_failed", [], {}),
    ("phase2_failed", F1, NOW, "phase2_failed", [], dict(failures=2)),
    ("phase2_failed_no_ike", F1, NOW, "phase1_failed", [rep("phase2_failed", "phase1_failed")],
     {}),
    ("phase2_failed", F2, NOW, "phase2_failed", [], dict(failures=2, retry_at=104.0)),
    ("phase2_failed", SNAP_UP, NOW, "established", [rep("phase2_failed", "established")], {}),
    ("phase2_failed", SNAP_IKE_ONLY, NOW, "phase2_failed", [], {}),
    ("phase2_failed", CharonConnected(), NOW, "phase2_failed", [], {}),
    ("phase2_failed", CharonDisconnected("gone"), NOW, "phase2_failed", [], {}),
    ("phase2_failed", Tick(), 102.0, "phase2_failed", [INIT], dict(pending_since=102.0)),
    ("phase2_failed_retrying", Tick(), 129.0, "phase1_failed",
     [TERM, rep("phase2_failed", "phase1_failed")], {}),
    # --- established (IKE SA 1, CHILD SA 11)
    ("established", IkeUp(K, 2), NOW, "established", [], dict(ikes=(1, 2), child_id=11)),
    ("established", IkeDown(K, 1, "dpd"), NOW, "down", [rep("established", "down")],
     dict(children=(), retry_at=101.0)),
    ("established_two_ikes", IkeDown(K, 1, "x"), NOW, "ike_up",
     [rep("established", "ike_up")], dict(ikes=(2,), retry_at=101.0)),
    ("established_two_ikes", IkeDown(K, 2, "x"), NOW, "established", [], dict(ikes=(1,))),
    ("established", IkeDown(K, 9, "x"), NOW, "established", [], {}),
    ("established", ChildUp(K, 1, 12), NOW, "established", [], dict(child_id=12)),
    ("established", ChildDown(K, 1, 11, "deleted"), NOW, "ike_up",
     [rep("established", "ike_up")], dict(retry_at=101.0)),
    ("established", ChildDown(K, 1, 10, "stale"), NOW, "established", [], {}),
    ("established", IkeRekeyed(K, 1, 2), NOW, "established", [],
     dict(ikes=(2,), children=((11, 2),))),
    ("established", ChildRekeyed(K, 11, 12), NOW, "established", [], dict(child_id=12)),
    ("established", ChildRekeyed(K, 11, 11), NOW, "established", [], dict(children=((11, 1),))),
    ("established", IkeRekeyed(K, 1, 1), NOW, "established", [], dict(ikes=(1,))),
    ("established", F1, NOW, "established", [], dict(failures=0)),
    ("established", F2, NOW, "established", [], dict(failures=0)),
    ("established", SNAP_UP, NOW, "established", [], dict(child_id=11)),
    ("established", SNAP_UP_NEW_IDS, NOW, "established", [], dict(ike_id=3, child_id=13)),
    ("established", SNAP_OTHER, NOW, "down", [rep("established", "down")],
     dict(retry_at=101.0)),
    ("established", SNAP_EMPTY, NOW, "down", [rep("established", "down")], {}),
    ("established", CharonConnected(), NOW, "established", [], {}),
    ("established", CharonDisconnected("gone"), NOW, "established", [], dict(synced=False)),
    ("established", Tick(), 1000.0, "established", [], {}),
    # --- parking: Park tears the CHILD SA down, keeps the IKE SA, holds until 110
    ("down", PARK, NOW, "down", [], dict(parked="")),
    ("connecting", PARK, NOW, "connecting", [], dict(parked="")),
    ("phase1_failed", PARK, NOW, "phase1_failed", [], dict(parked="")),
    ("ike_up", PARK, NOW, "parked", [rep("ike_up", "parked")], dict(park_until=110.0)),
    ("phase2_failed", PARK, NOW, "parked", [rep("phase2_failed", "parked")],
     dict(retry_at=110.0)),
    ("phase2_failed_no_ike", PARK, NOW, "phase2_failed", [], dict(parked="")),
    ("established", PARK, NOW, "parked", [Terminate(K, child_id=11), rep("established", "parked")],
     dict(ikes=(1,), children=((11, 1),))),
    ("parked_testing", PARK, NOW, "parked", [Terminate(K, child_id=11)], {}),
    ("down", UNPARK, NOW, "down", [], {}),
    ("connecting", UNPARK, NOW, "connecting", [], {}),
    ("phase1_failed", UNPARK, NOW, "phase1_failed", [], {}),
    ("ike_up", UNPARK, NOW, "ike_up", [], {}),
    ("phase2_failed", UNPARK, NOW, "phase2_failed", [], {}),
    ("established", UNPARK, NOW, "established", [], {}),
    ("parked_testing", UNPARK, NOW, "established", [rep("parked", "established")],
     dict(parked="", park_until=None)),
    # held without a CHILD SA: the other tunnel failed, so it is initiated at once
    ("parked", UNPARK, NOW, "ike_up", [rep("parked", "ike_up"), INIT],
     dict(parked="", pending_since=NOW)),
    ("parked_failed2", UNPARK, NOW, "phase2_failed", [rep("parked", "phase2_failed"), INIT], {}),
    # --- parked (IKE SA 1 alive, no CHILD SA, held until 110)
    ("parked", IkeUp(K, 2), NOW, "parked", [], dict(ikes=(1, 2))),
    ("parked", IkeDown(K, 1, "dpd"), NOW, "down", [rep("parked", "down")],
     dict(parked="", park_until=None)),
    ("parked", IkeDown(K, 9, "x"), NOW, "parked", [], {}),
    ("parked", ChildUp(K, 1, 12), NOW, "parked", [], dict(child_id=12)),
    ("parked_testing", ChildDown(K, 1, 11, "deleted"), NOW, "parked", [],
     dict(children=(), retry_at=110.0)),     # the hold, not the 1 s backoff
    ("parked", IkeRekeyed(K, 1, 2), NOW, "parked", [], dict(ikes=(2,))),
    ("parked", ChildRekeyed(K, 19, 20), NOW, "parked", [], {}),
    ("parked", F1, NOW, "parked", [], dict(retry_at=110.0)),
    ("parked", F2, NOW, "parked", [], dict(retry_at=110.0, failed_phase=2)),
    ("parked", SNAP_IKE_ONLY, NOW, "parked", [], dict(retry_at=110.0)),
    ("parked", SNAP_EMPTY, NOW, "down", [rep("parked", "down")], dict(parked="")),
    ("parked", CharonConnected(), NOW, "parked", [], {}),
    ("parked", CharonDisconnected("gone"), NOW, "parked", [], dict(synced=False)),
    ("parked", Tick(), NOW, "parked", [], {}),
    ("parked", Tick(), 110.0, "parked", [INIT], dict(pending_since=110.0)),   # the test
]


def _check(fixture, event, now, state, actions, extra):
    before = FIXTURES[fixture]
    after, out = decide(before, event, now)
    assert after.state == state
    assert after.state == _derive(after)
    assert len(out) == len(actions), out
    for got, want in zip(out, actions):
        if isinstance(want, tuple):
            assert isinstance(got, ReportTransition) and (got.old, got.new) == want[1:], got
            assert got.reason and got.tunnel == K
        else:
            assert got == want
    if after.state != before.state:
        assert any(isinstance(a, ReportTransition) for a in out) or (
            after.since, after.reason) == (now, out[-1].reason)
    for name, value in extra.items():
        assert getattr(after, name) == value, name


@pytest.mark.parametrize("fixture,event,now,state,actions,extra", ROWS,
                         ids=[f"{r[0]}-{event_kind(r[1])}-{r[3]}" for r in ROWS])
def test_transition(fixture, event, now, state, actions, extra):
    _check(fixture, event, now, state, actions, extra)


def test_fixtures_are_in_their_state():
    for name, t in FIXTURES.items():
        assert _derive(t) == t.state, name


def test_table_covers_every_pair_and_rows_cover_the_table():
    assert set(TRANSITIONS) == {(s, k) for s in STATES for k in EVENT_KINDS}
    covered = {(FIXTURES[r[0]].state, event_kind(r[1])) for r in ROWS}
    assert covered == set(TRANSITIONS)
    outcomes = {(FIXTURES[r[0]].state, event_kind(r[1]), r[3]) for r in ROWS}
    # every allowed outcome except the snapshot's "anything" is exercised by some row
    for (state, kind), targets in TRANSITIONS.items():
        if kind != "SaSnapshot":
            for target in targets:
                assert (state, kind, target) in outcomes, (state, kind, target)


def test_table_is_enforced():
    broken = dict(TRANSITIONS)
    from vpnd.core import tunnel as mod
    saved = mod.TRANSITIONS
    try:
        mod.TRANSITIONS = {k: v for k, v in broken.items() if k != ("down", "IkeUp")}
        with pytest.raises(TransitionError, match="no transition"):
            decide(FIXTURES["down"], IkeUp(K, 2), NOW)
        mod.TRANSITIONS = {**broken, ("established", "ChildDown"): frozenset({"established"})}
        with pytest.raises(TransitionError, match="may not lead"):
            decide(FIXTURES["established"], ChildDown(K, 1, 11, "x"), NOW)
    finally:
        mod.TRANSITIONS = saved


# --- sequences -----------------------------------------------------------------------------

def run(t, steps):
    """Apply (event, now) steps; return the tunnel and every action."""
    out = []
    for event, now in steps:
        t, actions = decide(t, event, now)
        out.extend(actions)
    return t, out


def reports(actions):
    return [(a.old, a.new) for a in actions if isinstance(a, ReportTransition)]


def test_startup_initiates_once_after_the_snapshot():
    t = Tunnel(K)
    t, out = run(t, [(CharonConnected(), 0.0), (Tick(), 0.0)])
    assert out == [] and t.deadline() is None            # nothing before the snapshot
    t, out = run(t, [(SNAP_EMPTY, 0.0)])
    assert out[0] == INIT and reports(out) == [("down", "connecting")]
    t, out = run(t, [(Tick(), 0.5), (SNAP_EMPTY, 1.0), (Tick(), 10.0)])
    assert out == []                                     # outstanding: no second Initiate
    t, out = run(t, [(IkeUp(K, 1), 10.1), (ChildUp(K, 1, 1), 10.2)])
    assert reports(out) == [("connecting", "ike_up"), ("ike_up", "established")]
    assert t.deadline() is None


def test_child_rekey_make_before_break_reports_nothing():
    t = FIXTURES["established"]
    t, out = run(t, [(ChildUp(K, 1, 12), 1.0), (ChildRekeyed(K, 11, 12), 1.0),
                     (ChildDown(K, 1, 11, "expired"), 1.1)])
    assert out == [] and t.children == ((12, 1),) and t.child_id == 12


def test_child_rekey_event_before_the_new_up_and_old_down():
    t = FIXTURES["established"]
    t, out = run(t, [(ChildRekeyed(K, 11, 12), 1.0), (ChildUp(K, 1, 12), 1.0),
                     (ChildDown(K, 1, 11, "rekeyed"), 1.1)])
    assert out == [] and t.child_id == 12


def test_ike_rekey_then_stale_ike_down_changes_nothing():
    t = FIXTURES["established"]
    t, out = run(t, [(IkeUp(K, 2), 1.0), (IkeRekeyed(K, 1, 2), 1.0),
                     (IkeDown(K, 1, "rekeyed"), 1.1)])
    assert out == [] and t.ikes == (2,) and t.children == ((11, 2),)


def test_reauthentication_make_before_break():
    t = FIXTURES["established"]
    t, out = run(t, [(IkeUp(K, 2), 1.0), (ChildUp(K, 2, 12), 1.0),
                     (ChildDown(K, 1, 11, "reauth"), 1.1), (IkeDown(K, 1, "reauth"), 1.1)])
    assert out == [] and (t.ike_id, t.child_id) == (2, 12)


def test_duplicate_ike_sa_that_goes_away_does_not_take_the_tunnel_down():
    t = FIXTURES["established"]
    t, out = run(t, [(IkeUp(K, 5), 1.0), (IkeDown(K, 5, "duplicate deleted"), 1.1)])
    assert out == [] and t.state == "established" and t.ikes == (1,)


def test_backoff_doubles_to_the_cloud_cap_of_12_s():
    t = FIXTURES["established"]
    t, _ = run(t, [(ChildDown(K, 1, 11, "x"), 0.0), (IkeDown(K, 1, "x"), 0.0)])
    delays, now = [], 0.0
    for _ in range(7):
        due = t.deadline()
        delays.append(due - now)
        t, out = decide(t, Tick(), due)
        assert out[0] == INIT
        now = due + 0.1
        t, _ = decide(t, F1, now)
    assert delays == pytest.approx([1.0, 2.0, 4.0, 8.0, 12.0, 12.0, 12.0])
    assert t.state == "phase1_failed"


def test_no_initiate_while_an_ike_sa_negotiates_its_child():
    t = FIXTURES["ike_up"]
    for now in (100.0, 110.0, 128.9):
        t, out = decide(t, Tick(), now)
        assert out == []
    t, out = decide(t, Tick(), 129.0)
    assert out == [ReportTransition(K, "ike_up", "phase2_failed", out[0].reason)]
    t, out = decide(t, Tick(), t.deadline())
    assert out == [INIT]                 # the CHILD SA is retried over the same IKE SA


def test_charon_away_keeps_state_and_timers_until_the_snapshot():
    t = FIXTURES["established"]
    t, out = run(t, [(CharonDisconnected("socket closed"), 0.0), (Tick(), 50.0),
                     (CharonConnected(), 60.0)])
    assert out == [] and t.state == "established" and t.deadline() is None
    t, out = run(t, [(SNAP_UP, 61.0)])
    assert out == [] and t.synced                         # same ids: nothing to report


def test_charon_restart_snapshot_converges_and_reinitiates_at_once():
    t = FIXTURES["established"]
    t, out = run(t, [(CharonDisconnected("charon restarted"), 0.0), (CharonConnected(), 5.0),
                     (SNAP_EMPTY, 5.0)])
    assert reports(out) == [("established", "down"), ("down", "connecting")]
    assert INIT in out


def test_pending_initiate_before_a_disconnect_is_forgotten_after_the_reconnect():
    t = FIXTURES["connecting"]
    t, out = run(t, [(CharonDisconnected("x"), 100.0), (CharonConnected(), 101.0),
                     (SNAP_EMPTY, 101.0)])
    assert INIT in out                   # charon lost it: initiate again, once


def test_snapshot_terminates_duplicate_established_ike_sas_keeping_the_newest_with_a_child():
    snap = SaSnapshot((sa(1, "ESTABLISHED", 11, "INSTALLED"), sa(4, "ESTABLISHED", 14,
                                                                  "INSTALLED"),
                       sa(6, "ESTABLISHED"), sa(8, "REKEYING", 18, "INSTALLED")))
    t, out = decide(FIXTURES["established"], snap, 1.0)
    assert [a for a in out if isinstance(a, Terminate)] == [Terminate(K, 1), Terminate(K, 4),
                                                             Terminate(K, 6)]
    assert t.ikes == (8,) and t.state == "established"


def test_snapshot_ignores_other_tunnels_and_dead_states():
    snap = SaSnapshot((sa(1, "DELETING", 11, "INSTALLED"), sa(7, "ESTABLISHED", 17, "INSTALLED",
                                                              key=OTHER)))
    t, out = decide(FIXTURES["established"], snap, 1.0)
    assert t.state == "down"


def test_custom_timers():
    timers = Timers(backoff_base=0.5, backoff_cap=2.0, negotiation_timeout=5.0)
    t = FIXTURES["connecting"]
    assert t.deadline(timers) == 104.0
    t, out = decide(t, Tick(), 104.0, timers)
    assert out[0] == TERM and t.retry_at == 105.0   # 0.5 * 2 after the first failure
    assert [timers.backoff(n) for n in range(4)] == [0.5, 1.0, 2.0, 2.0]

"""Defect 14 of issue 14 in the pure core: BGP mode must come up against a cloud that learns
the LAN only over BGP, with the health check of config.toml.example (a VPC destination, a
LAN source). Those probes cannot be answered before the sessions are up, so lost probes are
evidence against a tunnel only while its own BGP session is Established: a neighbor is
never shut for lack of evidence, only when its working session stops carrying probes (what a
health check does for FRR/VyOS users: it withdraws a working path, it does not block bring-up).
No sleeps: explicit times through the engine."""

from __future__ import annotations

from vpnd_testing.core_helpers import connection
from test_core_failover import (
    START, T1, T2, act, loss, losses, nb, ok, run, up, down,
)
from vpnd.core.events import BgpSessionChanged
from vpnd.core.failover import bgp_grace

SAS_UP = START[:4]          # charon synced, both CHILD SAs installed, no probe answered yet


def test_probes_lost_before_any_session_is_up_shut_nothing():
    """The deadlock: before the fix the third loss shut both neighbors (Idle (Admin) forever)."""
    run(connection(routing="bgp", standby="prepend"), [
        *[(0.2 + i, loss(t), []) for i in range(10) for t in ("t1", "t2")],
        (11.0, BgpSessionChanged(T1, True), []),
        (11.1, BgpSessionChanged(T2, True), []),
        (11.5, ok("t1"), [act("t1", "t1 usable")]),
        (11.6, ok("t2"), []),
    ], start=SAS_UP)


def test_losses_while_the_session_is_up_shut_it_and_an_answer_restores_it():
    engine = run(connection(routing="bgp", standby="prepend"), [
        (1.0, BgpSessionChanged(T1, True), []), (1.1, BgpSessionChanged(T2, True), []),
        (1.2, ok("t1"), [act("t1", "t1 usable")]), (1.3, ok("t2"), []),
        (2.0, loss("t1"), []), (3.0, loss("t1"), []),
        (4.0, loss("t1"), [act("t2", "3 probes lost"), nb("t1", False)]),
        (4.5, BgpSessionChanged(T1, False), []),       # our shutdown took effect
        *losses("t1", 5.0, 6.0, 7.0),                  # still lost: stays shut
        (8.0, ok("t1"), [nb("t1", True)]),             # answered (via tunnel 2's route back)
    ], start=SAS_UP)
    assert engine.connections["c"].active == "t2"


def test_a_session_that_comes_up_late_gets_its_full_trial():
    """Losses before tunnel 2's session was up do not count; with it up but never answered,
    losses count once bgp_grace (12 s here) has passed: the routes had time to cross."""
    cfg = connection(routing="bgp", standby="prepend")
    assert bgp_grace(cfg) == 12.0          # interval 3 s x (retries 3 + 1)
    run(cfg, [
        (1.0, BgpSessionChanged(T1, True), []), (1.2, ok("t1"), [act("t1", "t1 usable")]),
        *losses("t2", 1.3, 2.3, 3.3, 4.3),
        (5.0, BgpSessionChanged(T2, True), []),
        *losses("t2", *[5.3 + i for i in range(11)]),     # up to 15.3: within the grace
        (17.3, loss("t2"), [nb("t2", False)]),
    ], start=SAS_UP)


def test_an_answer_with_the_session_up_ends_the_trial():
    run(connection(routing="bgp", standby="prepend"), [
        (1.0, BgpSessionChanged(T1, True), []), (1.1, BgpSessionChanged(T2, True), []),
        (1.2, ok("t1"), [act("t1", "t1 usable")]), (1.3, ok("t2"), []),
        *losses("t2", 2.3, 3.3),
        (4.3, loss("t2"), [nb("t2", False)]),
    ], start=SAS_UP)


def test_withdraw_never_leaves_every_neighbor_shut_for_lost_probes():
    """both_down = "withdraw": both sessions lose their probes and are shut; once no session
    is up anywhere the cloud has no route back to the LAN, so lost probes prove nothing and
    the neighbors are tried again (a new session gets a fresh `retries` trial)."""
    run(connection(routing="bgp", standby="ecmp", both_down="withdraw"), [
        (1.0, BgpSessionChanged(T1, True), []), (1.1, BgpSessionChanged(T2, True), []),
        (1.2, ok("t1"), [act("t1", "t1 usable")]), (1.3, ok("t2"), []),
        *[(2.0 + i, loss(t), []) for i in range(2) for t in ("t1", "t2")],
        (4.0, loss("t1"), [nb("t1", False)]),           # t2 losing too: holding on t1
        (4.1, loss("t2"), [act(None, "withdrawing", withdraw=True), nb("t2", False)]),
        (4.5, BgpSessionChanged(T1, False), []),
        (4.6, BgpSessionChanged(T2, False), [nb("t1", True), nb("t2", True)]),
        (6.0, BgpSessionChanged(T1, True), []),         # fresh trials: nothing shut again
        *losses("t2", 6.1, 6.2, 6.3),                   # t2's session still down: no evidence
        (6.5, ok("t1"), [act("t1", "recovered")]),
        (7.0, BgpSessionChanged(T2, True), []),
        (7.05, ok("t2"), []),
        *losses("t2", 7.1, 7.2),
        (7.3, loss("t2"), [nb("t2", False)]),           # evidence again, with its session up
    ], start=SAS_UP)


def test_child_sa_down_still_shuts_at_once():
    run(connection(routing="bgp", standby="prepend"), [
        (1.0, BgpSessionChanged(T1, True), []), (1.1, BgpSessionChanged(T2, True), []),
        (1.2, ok("t1"), [act("t1", "t1 usable")]), (1.3, ok("t2"), []),
        (2.0, down("t1"), [act("t2"), nb("t1", False)]),
        (3.0, up("t1", 1), [nb("t1", True)]),
    ], start=SAS_UP)

"""The engine facade: routing, deadlines, batching, queries, reload."""

from __future__ import annotations

from vpnd_testing.core_helpers import config, connection, key
from vpnd.core.actions import (
    Initiate, RepairInterface, RepairRoutes, ReportTransition, SetActive,
)
from vpnd.core.engine import Engine
from vpnd.core.events import (
    CharonConnected, ChildUp, InterfaceLost, OwnedRouteLost, ProbeResult, SaSnapshot, Tick,
    TunnelKey, TunnelSa,
)

T1, T2 = key("t1"), key("t2")


def started(cfg=None):
    e = Engine(config(cfg or connection()))
    e.handle(CharonConnected(), 0.0)
    return e


def test_startup_initiates_every_tunnel_once_and_asks_for_the_negotiation_deadline():
    e = Engine(config(connection(), connection("d")))
    actions, deadline = e.handle(CharonConnected(), 0.0)
    assert actions == [] and deadline is None
    actions, deadline = e.handle(SaSnapshot(()), 0.0)
    assert [a for a in actions if isinstance(a, Initiate)] == [
        Initiate(TunnelKey(c, t)) for c in ("c", "d") for t in ("t1", "t2")]
    assert deadline == 30.0


def test_a_snapshot_that_changes_both_tunnels_makes_one_decision():
    e = started(connection(health=False))
    snap = SaSnapshot((TunnelSa(T1, 1, "ESTABLISHED", 11, "INSTALLED"),
                       TunnelSa(T2, 2, "ESTABLISHED", 12, "INSTALLED")))
    actions, deadline = e.handle(snap, 0.0)
    assert [a for a in actions if isinstance(a, SetActive)] == [SetActive("c", "t1", "t1 usable")]
    assert deadline is None
    # t1 vanishes, t2 stays: one switch, no intermediate "both down"
    actions, _ = e.handle(SaSnapshot((TunnelSa(T2, 2, "ESTABLISHED", 12, "INSTALLED"),)), 5.0)
    sets = [a for a in actions if isinstance(a, SetActive)]
    assert len(sets) == 1 and sets[0].tunnel == "t2"
    assert any(isinstance(a, ReportTransition) and a.new == "down" for a in actions)


def test_unknown_tunnels_connections_and_event_types_are_ignored():
    e = started()
    for event in [ChildUp(TunnelKey("x", "t1"), 1, 1), ProbeResult(TunnelKey("c", "t9"), True),
                  OwnedRouteLost("x", "10.0.0.0/8"), InterfaceLost(TunnelKey("x", "t1"), "i"),
                  object(), Tick()]:
        assert e.handle(event, 1.0)[0] == []


def test_repairs_are_passed_through():
    e = started()
    assert e.handle(OwnedRouteLost("c", "10.0.0.0/16"), 1.0)[0] == [
        RepairRoutes("c", "route 10.0.0.0/16 changed or lost")]
    assert e.handle(InterfaceLost(T1, "ipsec0"), 1.0)[0] == [RepairInterface(T1)]


def test_ticks_run_only_what_is_due():
    e = started()
    e.handle(SaSnapshot(()), 0.0)
    assert e.handle(Tick(), 29.9) == ([], 30.0)
    actions, deadline = e.handle(Tick(), 30.0)
    assert len([a for a in actions if type(a).__name__ == "Terminate"]) == 2
    assert deadline == 32.0                 # retry after 2 s


def test_status_is_json_ready():
    import json
    e = started(connection(health=False))
    e.handle(SaSnapshot((TunnelSa(T1, 1, "ESTABLISHED", 11, "INSTALLED"),)), 0.0)
    status = e.status()
    json.dumps(status)
    assert status["c"]["active"] == "t1" and status["c"]["state"] == "active"
    assert status["c"]["tunnels"]["t1"]["state"] == "established"
    assert status["c"]["tunnels"]["t2"]["why_not_usable"] == "CHILD SA not installed"


def test_status_tells_when_a_pending_preempt_is_due():
    e = started(connection(health=False, preempt_delay=10.0, hold_down=0.0))
    sas = (TunnelSa(T2, 2, "ESTABLISHED", 12, "INSTALLED"),)
    e.handle(SaSnapshot(sas), 0.0)
    assert e.status()["c"]["active"] == "t2"
    e.handle(SaSnapshot(sas + (TunnelSa(T1, 1, "ESTABLISHED", 11, "INSTALLED"),)), 1.0)
    assert e.status()["c"]["next_decision_at"] == 11.0     # t1 healthy since 1.0 + 10 s


def test_reload_keeps_unchanged_state_and_drops_removed_connections():
    e = started(connection(health=False))
    e.handle(SaSnapshot((TunnelSa(T1, 1, "ESTABLISHED", 11, "INSTALLED"),)), 0.0)
    e.reload(config(connection(health=False, preempt=False), connection("d")))
    assert e.connections["c"].active == "t1" and e.tunnels[T1].established
    assert "d" in e.connections
    e.reload(config(connection("d")))
    assert set(e.connections) == {"d"} and T1 not in e.tunnels
    assert e.handle(ChildUp(T1, 1, 1), 1.0)[0] == []


def test_new_tunnels_after_reload_initiate_on_the_next_snapshot():
    e = started(connection(health=False))
    e.handle(SaSnapshot((TunnelSa(T1, 1, "ESTABLISHED", 11, "INSTALLED"),
                         TunnelSa(T2, 2, "ESTABLISHED", 12, "INSTALLED"))), 0.0)
    e.reload(config(connection(health=False), connection("d", health=False)))
    assert e.handle(Tick(), 1.0)[0] == []
    actions, _ = e.handle(SaSnapshot((TunnelSa(T1, 1, "ESTABLISHED", 11, "INSTALLED"),
                                      TunnelSa(T2, 2, "ESTABLISHED", 12, "INSTALLED"))), 2.0)
    assert [a for a in actions if isinstance(a, Initiate)] == [
        Initiate(TunnelKey("d", "t1")), Initiate(TunnelKey("d", "t2"))]
    assert not [a for a in actions
                if isinstance(a, ReportTransition) and a.tunnel.connection == "c"]

"""The pure parts of reload by difference: the plan, the core's restart, SA figures, metrics."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from vpnd_testing.core_helpers import config, connection, key
from vpnd.run import reload_plan as reload
from vpnd.charon.adapter import SaStats, sa_stats
from vpnd.config.model import Secret
from vpnd.core import actions as A
from vpnd.core import events as E
from vpnd.core.engine import Engine
from vpnd.metrics import Metrics


def with_tunnel(conn, name, **changes):
    return replace(conn, tunnels=tuple(replace(t, **changes) if t.name == name else t
                                       for t in conn.tunnels))


def tunnels(p: reload.ReloadPlan) -> dict[str, reload.TunnelPlan]:
    return {f"{t.key.connection}/{t.key.tunnel}": t for c in p.connections for t in c.tunnels}


def test_identical_configs_change_nothing():
    p = reload.plan(config(), config())
    assert p.unchanged and not p.tunnels("changed", "added", "removed")
    assert p.summary() == {"c": {"action": "unchanged", "tunnels": {
        "t1": {"action": "unchanged"}, "t2": {"action": "unchanged"}}}}


def test_probe_interval_restarts_probes_and_spares_charon():
    c = connection()
    new = replace(c, health_check=replace(c.health_check, interval=1.0))
    p = reload.plan(config(c), config(new))
    t = tunnels(p)
    assert all(x.probe and not x.charon and not x.link for x in t.values())
    assert p.summary()["c"]["fields"] == ["health_check.interval"]
    assert not p.connections[0].routes


def test_probe_kind_restarts_probes():
    c = connection()
    new = replace(c, health_check=replace(c.health_check, kind="tcp", port=443))
    t = tunnels(reload.plan(config(c), config(new)))
    assert all(x.probe and not x.charon and not x.link for x in t.values())


def test_a_tunnels_own_probe_path_restarts_only_its_probe():
    c = connection()
    new = with_tunnel(c, "t2", probe_destination=ipaddress.IPv4Address("10.0.0.2"))
    t = tunnels(reload.plan(config(c), config(new)))
    assert t["c/t2"].probe and not t["c/t1"].probe


def test_failover_timer_touches_nothing_but_the_core():
    c = connection()
    new = replace(c, failover=replace(c.failover, preempt_delay=30.0))
    p = reload.plan(config(c), config(new))
    assert p.connections[0].action == "changed"
    assert all(not (x.probe or x.charon or x.link) for x in tunnels(p).values())


def test_one_tunnels_identity_reloads_only_that_tunnel():
    c = connection()
    p = reload.plan(config(c), config(with_tunnel(c, "t2", local_id="gw.example")))
    t = tunnels(p)
    assert t["c/t2"].charon and t["c/t2"].fields == ("tunnel.t2.local_id",)
    assert t["c/t1"].action == "unchanged"


def test_a_rotated_key_is_named_never_shown():
    c = connection()
    p = reload.plan(config(c), config(with_tunnel(c, "t1", psk=Secret("another-key"))))
    t1 = tunnels(p)["c/t1"]
    assert t1.charon and t1.fields == ("tunnel.t1.psk",)
    assert "another-key" not in repr(p.summary())


def test_connection_proposal_reloads_both_tunnels():
    c = connection()
    new = replace(c, ipsec=replace(c.ipsec, encryption="aes256"))
    p = reload.plan(config(c), config(new))
    assert {n for n, t in tunnels(p).items() if t.charon} == {"c/t1", "c/t2"}


def test_remote_networks_change_routes_only():
    c = connection()
    new = replace(c, remote_networks=(ipaddress.IPv4Network("10.9.0.0/16"),))
    p = reload.plan(config(c), config(new))
    assert p.connections[0].routes and not p.connections[0].links
    assert not any(t.charon for t in tunnels(p).values())


def test_added_removed_and_rebuilt_connections():
    a, b = connection("a"), connection("b")
    p = reload.plan(config(a, b), config(a, connection("n")))
    actions = {c.name: c.action for c in p.connections}
    assert actions == {"a": "unchanged", "b": "removed", "n": "added"}
    p = reload.plan(config(a), config(replace(a, routing="policy")))
    assert p.connections[0].rebuild
    assert {t.action for t in p.connections[0].tunnels} == {"removed", "added"}


def test_daemon_settings_are_reported_as_needing_a_restart():
    old = config()
    new = replace(old, daemon=replace(old.daemon, metrics_listen="127.0.0.1:9999"))
    assert reload.plan(old, new).daemon_fields == ("metrics_listen",)


# --- Engine.restart -----------------------------------------------------------------------

def established(engine: Engine, now: float = 0.0) -> None:
    engine.handle(E.SaSnapshot(tuple(
        E.TunnelSa(key(t), i, "ESTABLISHED", i, "INSTALLED") for i, t in ((1, "t1"), (2, "t2")))),
        now)
    engine.handle(E.ProbeResult(key("t1"), True, 0.01), now)
    engine.handle(E.ProbeResult(key("t2"), True, 0.01), now)


def test_restart_reports_the_drop_fails_over_and_initiates_at_once():
    cfg = config(connection(preempt_delay=0.0, hold_down=0.0))
    engine = Engine(cfg)
    established(engine)
    assert engine.connections["c"].active == "t1"
    out = engine.restart([key("t1")], 10.0, "configuration changed: t1 (tunnel.t1.local_id)")
    assert out[0] == A.ReportTransition(key("t1"), "established", "down",
                                        "configuration changed: t1 (tunnel.t1.local_id)")
    assert any(isinstance(a, A.SetActive) and a.tunnel == "t2" for a in out)
    assert engine.next_deadline == 10.0
    out, _ = engine.handle(E.Tick(), 10.0)
    assert out[-1] == A.Initiate(key("t1")) or A.Initiate(key("t1")) in out
    # the old SA's down events (from the termination) are stale now
    out, _ = engine.handle(E.IkeDown(key("t1"), 1, "terminated"), 10.01)
    assert not [a for a in out if isinstance(a, A.ReportTransition)]
    assert engine.tunnels[key("t2")].ikes == (2,), "the other tunnel is untouched"


def test_engine_reload_keeps_state_of_unchanged_tunnels():
    c = connection()
    engine = Engine(config(c))
    established(engine)
    before = dict(engine.tunnels)
    engine.reload(config(replace(c, health_check=replace(c.health_check, interval=0.5))))
    assert engine.tunnels == before and engine.connections["c"].active == "t1"


# --- SA figures from list-sas -------------------------------------------------------------

def listed(ike_id: int, child_id: int, established_ago: int, installed_ago: int,
           bytes_in: int = 100) -> dict:
    return {"vpnd-c-t1": {"uniqueid": str(ike_id), "state": "ESTABLISHED",
                          "established": str(established_ago), "child-sas": {
                              f"vpnd-c-t1-{child_id}": {
                                  "uniqueid": str(child_id), "state": "INSTALLED",
                                  "install-time": str(installed_ago), "bytes-in": str(bytes_in),
                                  "bytes-out": "50", "packets-in": "2", "packets-out": "1"}}}}


def test_sa_stats_timestamps_are_stable_while_the_sa_lives():
    names = {"vpnd-c-t1": key("t1"), "vpnd-c-t2": key("t2")}
    first = sa_stats([listed(1, 1, 10, 5)], names, 1000.0)
    assert first[key("t1")] == SaStats(100, 50, 2, 1, 990.0, 995.0, 1, 1)
    assert first[key("t2")] == SaStats()
    # one second later charon says 11 s ago (or still 10: whole seconds): same timestamps
    again = sa_stats([listed(1, 1, 10, 5, bytes_in=300)], names, 1001.4, first)
    assert again[key("t1")].ike_established == 990.0 and again[key("t1")].bytes_in == 300
    rekeyed = sa_stats([listed(1, 2, 20, 0)], names, 1010.0, again)
    assert rekeyed[key("t1")].child_installed == 1010.0


# --- metrics ------------------------------------------------------------------------------

def test_forget_removes_only_that_tunnels_series():
    m = Metrics()
    m.declare(config())
    m.forget("c", "t2")
    text = m.render().decode()
    assert 'tunnel="t2"' not in text and 'tunnel="t1"' in text
    m.declare(config(), only={key("t2")})
    assert 'vpnd_tunnel_up{connection="c",tunnel="t2"} 0.0' in m.render().decode()


def test_reload_result_metrics():
    m = Metrics()
    m.declare(config())
    m.reload_result(False)
    m.reload_result(True, now=123.0)
    text = m.render().decode()
    assert 'vpnd_config_reloads_total{result="failure"} 1.0' in text
    assert 'vpnd_config_reloads_total{result="success"} 1.0' in text
    assert "vpnd_config_last_reload_successful 1.0" in text
    assert "vpnd_config_last_reload_success_timestamp_seconds 123.0" in text


# --- the supervisor's side: validation, systemd notifications, the metric hook -------------

async def test_invalid_file_keeps_the_running_config_and_notifies_systemd(tmp_path):
    import structlog
    from vpnd_testing.config_toml import dumps, route_config
    from vpnd.config.load import load_file

    path = tmp_path / "vpnd.toml"
    path.write_text(dumps(route_config()))
    path.chmod(0o600)
    running = load_file(path)
    try:
        await _reload_checks(tmp_path, path, running)
    finally:
        structlog.reset_defaults()


async def _reload_checks(tmp_path, path, running):
    import io
    import json
    import socket

    from vpnd_testing.config_toml import dumps, mutate, route_config
    from vpnd import logs
    from vpnd.run.supervisor import Supervisor
    from vpnd.systemd import Notifier

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    out = io.StringIO()
    logs.configure("json", "info", stream=out)
    sup = Supervisor(running, notifier=Notifier(str(tmp_path / "notify")))
    results: list[bool] = []
    sup.on_reload_result = results.append
    bad = mutate(mutate(route_config(), "connection.0.routing", "sideways"),
                 "connection.0.health_check.interval", -1)
    path.write_text(dumps(bad))
    await sup._reload()
    assert sup.config is running and results == [False]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    rejected = [e for e in lines if e["event"] == "config.reload_rejected"]
    assert {e["path"] for e in rejected} >= {"connection[0].routing",
                                             "connection[0].health_check.interval"}, rejected
    assert all(e["rule"] for e in rejected)
    notes = [sock.recv(4096).decode() for _ in range(2)]
    assert notes[0].startswith("RELOADING=1") and "READY=1" in notes[1]
    assert "running configuration kept" in notes[1]

    path.write_text(dumps(mutate(route_config(), "connection.0.health_check.interval", 2)))
    await sup._reload()
    assert results == [False, True] and sup.config.connections[0].health_check.interval == 2
    done = [json.loads(line) for line in out.getvalue().splitlines()][-1]
    assert done["event"] == "config.reloaded"
    sock.close()

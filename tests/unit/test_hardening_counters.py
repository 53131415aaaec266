"""Issue 14 #12: every labelled counter series that can be known from the config exists at 0
from the first scrape, so increase()-based alerts fire on a real Prometheus (a series born at
its first increment reads increase() = 0 there). The rule side (series absent, then 1) is in
docs/monitoring/alerts_test.yml, run by tests/unit/test_monitoring.py."""

from __future__ import annotations

from prometheus_client import Counter

from vpnd_testing.config_toml import bgp_config, dumps, mutate, route_config
from vpnd.config.load import load_text
from vpnd.metrics import FAILOVER_REASONS, TUNNEL_STATES, Metrics


def _samples(m: Metrics, name: str) -> dict[tuple, float]:
    out = {}
    for metric in m.registry.collect():
        for s in metric.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def _value(m, name, **labels):
    return _samples(m, name).get(tuple(sorted(labels.items())))


def test_every_labelled_counter_has_series_before_its_first_increment():
    m = Metrics()
    m.declare(load_text(dumps(bgp_config())))
    counters = [v for v in vars(m).values() if isinstance(v, Counter) and v._labelnames]
    names = {c._name for c in counters}
    # the counters checked (a new labelled counter must be pre-created too)
    assert names == {"vpnd_tunnel_transitions", "vpnd_failovers", "vpnd_probes_sent",
                     "vpnd_probes_lost", "vpnd_route_repairs", "vpnd_config_reloads"}
    for c in counters:
        assert _samples(m, c._name + "_total"), f"{c._name}_total has no series at start"


def test_failover_series_for_every_pair_and_possible_reason():
    m = Metrics()
    m.declare(load_text(dumps(route_config())))
    for a, b in (("tunnel1", "tunnel2"), ("tunnel2", "tunnel1")):
        for reason in ("operator", "drained", "preempt", "probe_lost", "sa_down", "other"):
            assert _value(m, "vpnd_failovers_total", connection="vpc1", **{"from": a, "to": b},
                          reason=reason) == 0, (a, b, reason)
    # route mode, no thresholds: BGP/BFD and RTT/loss switches cannot happen
    assert _value(m, "vpnd_failovers_total", connection="vpc1", **{"from": "tunnel1",
                  "to": "tunnel2"}, reason="bgp_down") is None
    m2 = Metrics()
    doc = mutate(bgp_config(), "connection.0.health_check.max_rtt_ms", 200)
    m2.declare(load_text(dumps(mutate(doc, "connection.0.health_check.max_loss_percent", 20))))
    got = {dict(k)["reason"] for k in _samples(m2, "vpnd_failovers_total")}
    assert got == set(FAILOVER_REASONS)


def test_transitions_for_every_pair_of_states():
    m = Metrics()
    m.declare(load_text(dumps(route_config())))
    got = _samples(m, "vpnd_tunnel_transitions_total")
    assert len(got) == 2 * len(TUNNEL_STATES) * (len(TUNNEL_STATES) - 1)
    assert _value(m, "vpnd_tunnel_transitions_total", connection="vpc1", tunnel="tunnel1",
                  **{"from": "ike_up", "to": "established"}) == 0


def test_a_switch_counts_on_the_declared_series_and_a_reload_keeps_it():
    m = Metrics()
    config = load_text(dumps(route_config()))
    m.declare(config)
    m.failover("vpc1", "tunnel1", "tunnel2", "probes lost on tunnel1")
    m.declare(config, only=set())           # a reload declares again: nothing is reset
    assert _value(m, "vpnd_failovers_total", connection="vpc1",
                  **{"from": "tunnel1", "to": "tunnel2"}, reason="probe_lost") == 1


def test_a_removed_tunnel_takes_its_failover_series_along():
    m = Metrics()
    m.declare(load_text(dumps(route_config())))
    m.forget("vpc1", "tunnel2")
    assert not [k for k in _samples(m, "vpnd_failovers_total") if "tunnel2" in dict(k).values()]

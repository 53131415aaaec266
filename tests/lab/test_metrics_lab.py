"""The metrics endpoint scraped during a lab run: the issue's names, with sane values."""

from __future__ import annotations

import time

import pytest

from test_reload import sample, scrape, up
from vpnd_lab.cli import wait_until

pytestmark = pytest.mark.lab

PER_TUNNEL = (
    "vpnd_tunnel_state", "vpnd_tunnel_up", "vpnd_tunnel_active", "vpnd_probe_rtt_seconds_count",
    "vpnd_probe_loss_ratio", "vpnd_probes_sent_total", "vpnd_probes_lost_total", "vpnd_sa_bytes",
    "vpnd_sa_packets", "vpnd_ike_sa_established_timestamp_seconds",
    "vpnd_child_sa_established_timestamp_seconds",
)


def test_scrape_during_a_lab_run(make_lab):
    lab = make_lab()
    up(lab)
    before = sample(scrape(lab), "vpnd_sa_packets", tunnel="tunnel1", direction="out")
    ping = lab.lab.exec("lan", "ping", "-c", "20", "-i", "0.02", "-W", "1", lab.lab.plan.vpc_host,
                        check=False)
    assert ping.returncode == 0, ping.stdout

    def traffic_counted() -> bool:     # list-sas runs every 5 s: the ping shows up by then
        return sample(scrape(lab), "vpnd_sa_packets", tunnel="tunnel1", direction="out") >= before + 20
    wait_until("the ping in the SA counters", traffic_counted, 12, interval=0.25)
    t0 = time.perf_counter()
    text = scrape(lab)
    took = time.perf_counter() - t0
    now = time.time()
    for t in ("tunnel1", "tunnel2"):
        for name in PER_TUNNEL:
            assert sample(text, name, connection="vpc1", tunnel=t) is not None, (name, t)
        assert sample(text, "vpnd_tunnel_up", tunnel=t) == 1
        assert sample(text, "vpnd_tunnel_state", tunnel=t, state="established") == 1
        assert sum(sample(text, "vpnd_tunnel_state", tunnel=t, state=s) for s in (
            "down", "connecting", "phase1_failed", "ike_up", "phase2_failed", "established")) == 1
        assert sample(text, "vpnd_probe_rtt_seconds_count", tunnel=t) > 0
        assert 0 <= sample(text, "vpnd_probe_loss_ratio", tunnel=t) < 0.5
        for series in ("vpnd_ike_sa_established_timestamp_seconds",
                       "vpnd_child_sa_established_timestamp_seconds"):
            assert now - 120 < sample(text, series, tunnel=t) <= now + 1, series
    assert sample(text, "vpnd_tunnel_active", tunnel="tunnel1") == 1
    assert sample(text, "vpnd_tunnel_active", tunnel="tunnel2") == 0
    for direction in ("in", "out"):
        assert sample(text, "vpnd_sa_bytes", tunnel="tunnel1", direction=direction) > 0
        assert sample(text, "vpnd_sa_packets", tunnel="tunnel1", direction=direction) >= 20
    assert sample(text, "vpnd_vici_connected") == 1
    assert 0 <= sample(text, "vpnd_event_loop_lag_seconds") < 1
    assert sample(text, "vpnd_config_last_reload_successful") == 1
    assert sample(text, "vpnd_config_reloads_total", result="failure") == 0
    assert sample(text, "vpnd_route_repairs_total", connection="vpc1") == 0
    assert "vpnd_failovers_total" in text and "vpnd_tunnel_transitions_total" in text
    print(f"\nscrape: {len(text.encode())} bytes, {took * 1000:.1f} ms (curl in cgw, incl. exec)")

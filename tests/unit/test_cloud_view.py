"""The cloud's own view ([connection.cloud_api]): its tunnel status and health check next to
vpnd's, a setting that differs shown as "cloud says ... / vpnd has ...", at most one API call
a minute per connection, a failed call shown without losing the last view, and the metrics."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import replace

import pytest

from vpnd.cli import build_parser
from vpnd.cloud import alibaba, command
from vpnd.cloud.view import CloudWatch
from vpnd.config.load import load_file, load_text
from vpnd.config.model import ConfigError
from vpnd.control.cli import render
from vpnd.metrics import Metrics
from vpnd_testing import alibaba_responses as r

OURS = ["--local-address", "198.18.0.2", "--local-network", "172.16.0.0/16",
        "--remote-network", "192.168.0.0/16"]


def imported(tmp_path, response=None):
    src = tmp_path / "resp.json"
    src.write_text(json.dumps(response or r.dual_tunnel()))
    args = build_parser().parse_args(["import", "alibaba", "--response", str(src),
                                      "-o", str(tmp_path / "vpnd.toml"), *OURS])
    assert command.main(args, io.StringIO(), io.StringIO()) == 0
    return load_file(tmp_path / "vpnd.toml")


def both(body, **changes):
    return r.with_tunnel(r.with_tunnel(body, 0, **changes), 1, **changes)


def test_the_same_values_show_no_mismatch(tmp_path):
    conn = imported(tmp_path).connections[0]
    view = alibaba.cloud_view(r.dual_tunnel(), conn)
    assert view["mismatches"] == []
    assert view["tunnels"]["tunnel1"] == {"state": "active", "status": "ipsec_sa_established",
                                          "role": "master", "bgp_status": None}
    assert view["health_check"] == {"enabled": True, "status": "success"}


def test_the_cloud_changed_its_dh_group(tmp_path):
    conn = imported(tmp_path).connections[0]
    changed = both(r.dual_tunnel(), TunnelIkeConfig={"IkePfs": "group5"},
                   Status="ike_sa_not_established")
    view = alibaba.cloud_view(changed, conn)
    texts = [alibaba.mismatch_text(m) for m in view["mismatches"]]
    assert texts == ["tunnel1: ike.dh_group: cloud says group5 / vpnd has group14",
                     "tunnel2: ike.dh_group: cloud says group5 / vpnd has group14"]
    shown = render({"daemon": {}, "connections": {conn.name: {
        "routing": "route", "state": "active", "active": "tunnel1", "reason": "r",
        "pinned": False, "tunnels": {}, "cloud_view": {**view, "asked_at": "2026-12-03T07:00:00Z"}}}})
    assert "MISMATCH tunnel1: ike.dh_group: cloud says group5 / vpnd has group14" in shown
    assert "cloud (2026-12-03T07:00:00Z): tunnel1 ike_sa_not_established (active)" in shown
    assert "health check success" in shown


def test_a_different_key_is_a_mismatch_that_never_shows_either_key(tmp_path):
    conn = imported(tmp_path).connections[0]
    changed = r.with_tunnel(r.dual_tunnel(), 1, TunnelIkeConfig={"Psk": "Rotated-On-The-Cloud-1"})
    view = alibaba.cloud_view(changed, conn)
    assert view["mismatches"] == [{"tunnel": "tunnel2", "key": "psk", "cloud": "differs",
                                   "vpnd": "differs"}]
    dumped = json.dumps(view)
    assert "Rotated-On-The-Cloud-1" not in dumped and r.PSK_2 not in dumped


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def watch(tmp_path, fetch, clock):
    config = imported(tmp_path)
    conn = replace(config.connections[0], cloud_api=load_text(CLOUD_TOML).connections[0].cloud_api)
    config = replace(config, connections=(conn,))
    got = []
    w = CloudWatch(lambda: config, lambda name, view: got.append((name, view)), fetch=fetch,
                   clock=clock)
    return w, got


def test_the_api_is_asked_at_most_once_a_minute(tmp_path):
    calls = []
    clock = Clock()
    w, got = watch(tmp_path, lambda conn: calls.append(conn.name) or r.dual_tunnel(), clock)
    assert asyncio.run(w.poll_once()) == 60.0
    asyncio.run(w.poll_once())
    clock.t += 59.0
    asyncio.run(w.poll_once())
    assert len(calls) == 1
    clock.t += 1.0
    asyncio.run(w.poll_once())
    assert len(calls) == 2
    assert got[-1][1]["error"] is None and got[-1][1]["mismatches"] == []


def test_a_failed_call_is_shown_and_keeps_the_last_view(tmp_path):
    answers = [r.dual_tunnel()]

    def fetch(conn):
        if answers:
            return answers.pop()
        raise alibaba.CloudImportError("DescribeVpnConnection vco-x failed: Throttling.User")

    clock = Clock()
    w, got = watch(tmp_path, fetch, clock)
    asyncio.run(w.poll_once())
    clock.t += 60.0
    asyncio.run(w.poll_once())
    view = got[-1][1]
    assert view["error"].endswith("Throttling.User")
    assert view["tunnels"]["tunnel1"]["status"] == "ipsec_sa_established"


def test_metrics_carry_the_clouds_view(tmp_path):
    conn = imported(tmp_path).connections[0]
    m = Metrics()
    view = alibaba.cloud_view(both(r.dual_tunnel(), TunnelIkeConfig={"IkePfs": "group5"},
                                   Status="ike_sa_not_established"), conn)
    m.cloud_view(conn.name, {**view, "error": None}, now=1234.0)
    text = m.render().decode()
    assert f'vpnd_cloud_mismatches{{connection="{conn.name}"}} 2.0' in text
    assert f'vpnd_cloud_tunnel_established{{connection="{conn.name}",tunnel="tunnel1"}} 0.0' in text
    assert f'vpnd_cloud_health_check_ok{{connection="{conn.name}"}} 1.0' in text
    assert f'vpnd_cloud_last_success_timestamp_seconds{{connection="{conn.name}"}} 1234.0' in text


CLOUD_TOML = """
[[connection]]
name = "vpc1"
local_networks = ["172.16.0.0/16"]
remote_networks = ["192.168.0.0/16"]
[connection.cloud_api]
connection_id = "vco-bp1bbi27hojx80nck"
region = "cn-hangzhou"
interval = %s
[[connection.tunnel]]
local_address = "198.18.0.2"
remote_address = "198.19.0.1"
psk = "Sup3r-Secret-Key-One"
[[connection.tunnel]]
local_address = "198.18.0.2"
remote_address = "198.19.0.2"
psk = "Sup3r-Secret-Key-Two"
"""
CLOUD_TOML, _CLOUD_TMPL = CLOUD_TOML % "60", CLOUD_TOML


def test_cloud_table_is_read_and_limited_to_once_a_minute():
    c = load_text(CLOUD_TOML).connections[0].cloud_api
    assert (c.provider, c.connection_id, c.region, c.interval, c.endpoint) == \
        ("alibaba", "vco-bp1bbi27hojx80nck", "cn-hangzhou", 60.0, None)
    with pytest.raises(ConfigError) as e:
        load_text(_CLOUD_TMPL % "30")
    assert "connection[0].cloud_api.interval: 30 out of range: must be at least 60" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_text(CLOUD_TOML.replace('region = "cn-hangzhou"', 'region = "cn hangzhou/x"'))
    assert "connection[0].cloud_api.region" in str(e.value)


def test_status_carries_the_view_per_connection(tmp_path):
    from vpnd.control.status import StatusBoard

    config = imported(tmp_path)
    name = config.connections[0].name
    tun = {"state": "established", "reason": "CHILD SA installed", "since": 0.0, "ike_id": 1,
           "child_id": 2, "usable": True, "why_not_usable": "", "drained": False}
    engine = {name: {"tunnels": {"tunnel1": tun, "tunnel2": tun}, "active": "tunnel1",
                     "state": "active", "reason": "tunnel1 usable", "pinned": None}}
    board = StatusBoard(lambda: config, lambda: engine, clock=lambda: 10.0)
    assert board.status()["connections"][name]["cloud_view"] is None
    board.cloud[name] = {**alibaba.cloud_view(r.dual_tunnel(), config.connections[0]),
                         "error": None, "asked_at": "2026-12-03T07:00:00Z"}
    status = board.status()
    assert status["connections"][name]["cloud_view"]["tunnels"]["tunnel2"]["role"] == "slave"
    assert "cloud (2026-12-03T07:00:00Z): tunnel1 ipsec_sa_established (active)" in render(status)
    assert r.PSK_1 not in json.dumps(status)


def test_plain_http_endpoint_only_to_loopback():
    ok = load_text(CLOUD_TOML.replace('interval = 60', 'interval = 60\nendpoint = "http://127.0.0.1:8080"'))
    assert ok.connections[0].cloud_api.endpoint == "http://127.0.0.1:8080"
    with pytest.raises(ConfigError) as e:
        load_text(CLOUD_TOML.replace('interval = 60', 'interval = 60\nendpoint = "http://198.18.0.9"'))
    assert "plain http:// is allowed only to a loopback address" in str(e.value)

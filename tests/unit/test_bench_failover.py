"""bench/failover.py's pure parts: the vendor procedure it loads, and its last JSON line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from vpnd.config.load import load_file
from vpnd_lab import scenario, topology

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_failover", ROOT / "bench" / "failover.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_failover"] = module
    spec.loader.exec_module(module)
    return module


def test_vendor_procedure_is_the_strongswan_guide_with_updown_routes(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(topology, "LAB_ROOT", tmp_path)
    lab = topology.Lab(prefix="vbtest")
    lab.dir.mkdir(parents=True)
    opts = scenario.Options(backend="native", dpd_delay=10)
    config = load_file(scenario.write_config(lab, opts))
    text = bench.vendor_swanctl(lab, config, "native")
    for line in ("dpd_delay = 10s", "dpd_action = restart", "start_action = start", "close_action = start",
                 "if_id_in = 42", "if_id_out = 43"):
        assert line in text, line
    assert "keyingtries" not in text        # the vendor's guide leaves charon's default
    assert f'updown = "/bin/sh {lab.dir}/updown.sh ipsec0 100 192.168.0.0/16' in text
    assert f'updown = "/bin/sh {lab.dir}/updown.sh ipsec1 101 192.168.0.0/16' in text
    script = (lab.dir / "updown.sh").read_text()
    assert "up-client" in script and "down-client" in script and 'ip route del "$3"' in script


def test_last_line_has_the_figures_and_the_baseline(bench):
    args = bench.parse_args(["--baseline", "--runs", "2"])
    opts = bench.options(args, "libipsec")
    runs = [{"outage_ms": 300.0, "detection_ms": 310.0, "reaction_ms": 2.0, "baseline_outage_ms": 175000.0,
             "baseline_detection_ms": 174990.0, "baseline_capped": False, "baseline_resumed": True},
            {"outage_ms": 400.0, "detection_ms": 390.0, "reaction_ms": 1.0}]
    out = bench.summarize(runs, args, opts)
    assert out["backend"] == "libipsec" and out["outage_ms"] == 350.0 and out["reaction_ms"] == 1.5
    assert out["probe_interval_s"] == 0.1 and out["probe_retries"] == 3
    assert out["baseline_outage_ms"] == 175000.0 and out["baseline_capped"] is False
    assert out["baseline_fault"] == "unreachable" and out["baseline_cap_s"] == 240.0
    assert out["outage_ratio_to_baseline"] == 0.002


def test_backend_choice_can_be_forced(bench):
    assert bench.choose_backend("libipsec") == "libipsec"
    assert bench.choose_backend("vm") == "vm"


def test_policy_mode_is_a_mode_of_its_own(bench):
    args = bench.parse_args(["--mode", "policy", "--runs", "1"])
    opts = bench.options(args, "libipsec")
    assert opts.routing == "policy"
    out = bench.summarize([{"outage_ms": 350.0, "detection_ms": 330.0, "reaction_ms": 11.0}], args, opts)
    assert out["mode"] == "policy" and out["reaction_ms"] == 11.0
    with pytest.raises(SystemExit):
        bench.parse_args(["--mode", "policy", "--baseline"])


def test_last_line_has_round_trip_per_direction_and_the_clouds_budget(bench):
    """issue 13: outage_ms is the round trip; each direction and the cloud's budget beside it."""
    args = bench.parse_args(["--runs", "2", "--cloud-check", "1,3"])
    opts = bench.options(args, "libipsec")
    assert opts.cloud_model == "vendor" and opts.cloud_check == (1.0, 3)
    runs = [{"outage_ms": 3400.0, "detection_ms": 3300.0, "reaction_ms": 2.0, "outage_lan_to_vpc_ms": 3300.0,
             "outage_vpc_to_lan_ms": 3200.0, "cloud_moved_ms": 3100.0},
            {"outage_ms": 3600.0, "detection_ms": 3500.0, "reaction_ms": 1.0, "outage_lan_to_vpc_ms": 3500.0,
             "outage_vpc_to_lan_ms": 3400.0, "cloud_moved_ms": None}]
    out = bench.summarize(runs, args, opts)
    assert out["outage_ms"] == 3500.0 and out["outage_lan_to_vpc_ms"] == 3400.0
    assert out["outage_vpc_to_lan_ms"] == 3300.0 and out["cloud_moved_ms"] == 3100.0
    assert out["cloud_budget_ms"] == 3000.0 and out["cloud_model"] == "vendor"
    bgp = bench.parse_args(["--mode", "bgp", "--timers", "10,30"])
    assert bench.summarize(runs, bgp, bench.options(bgp, "libipsec"))["cloud_budget_ms"] == 30000.0
    flow = bench.parse_args(["--cloud-model", "per-flow"])
    assert bench.summarize(runs, flow, bench.options(flow, "libipsec"))["cloud_budget_ms"] == 0.0
    with pytest.raises(SystemExit):
        bench.parse_args(["--cloud-check", "fast"])

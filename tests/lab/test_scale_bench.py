"""Smoke test of bench/scale.py: the harness builds its namespaces, runs a real vpnd against
the fake charon, measures it and cleans up. The real run (1/10/50 connections, 60 s each) is
by hand: docs/scale.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vpnd_testing.netns_helpers import skip_reason

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]


def test_scale_harness_smoke():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--connections", "2", "--seconds", "0.5",
         "--storm-seconds", "1", "--flap-period", "0.5", "--warmup", "0.2", "--interval", "0.2", "--quiet"],
        capture_output=True, text=True, timeout=90, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    run = result["runs"][0]
    assert run["tunnels"] == 4 and run["log_errors"] == 0
    assert run["steady"]["probes_answered_per_s"] > 0          # real probes over the veths
    assert run["steady"]["hwm_mb"] > 0 and run["steady"]["cpu_percent"] >= 0
    # Two flaps of four tunnels: each CHILD SA down and up twice, and vpnd saw every one.
    assert run["storm"]["charon_events"] == 16
    assert run["storm"]["transitions"] == 16
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert not {n for n in after - before if n.startswith("scl")}, "namespaces left behind"

"""The chaos soak (bench/soak.py) for about 30 s in the fault tier: the script runs, injects
faults, checks its invariants and prints its JSON summary last. RSS is not judged over such
a short run (lazy imports on the first reload would dominate): the real figure comes from
the 5-30 minute runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vpnd_testing.lab_fixtures import lab_skip_reason

pytestmark = [pytest.mark.faults, pytest.mark.lab]

ROOT = Path(__file__).resolve().parents[2]


def test_short_soak_has_no_violation():
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    p = subprocess.run([sys.executable, str(ROOT / "bench/soak.py"), "--minutes", "0.5",
                        "--warmup", "5", "--rss-limit", "1000", "--seed", "14"],
                       capture_output=True, text=True, timeout=300)
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    print(p.stdout[-3000:])
    assert summary["faults_injected"] >= 2, summary
    assert summary["violations"] == 0, summary["violation_details"]
    assert p.returncode == 0

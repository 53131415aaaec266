"""The kernel tier (CI runs it with `-m vm`): the route-based scenario of the vendor's strongSwan guide on a real
kernel: vpnd creates XFRM interfaces ipsec0/ipsec1 (if_id 42/43), charon installs kernel ESP
SAs, vpnd's routes carry metrics 100/101, traffic fails over and back, and an interface deleted
under vpnd is re-created with its route."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[2]


def test_demo_on_a_real_kernel():
    if os.geteuid() != 0:
        pytest.skip("the vm backend needs root")
    r = subprocess.run(
        [sys.executable, "-m", "vpnd", "lab", "demo", "--backend", "vm", "--prefix", f"vm{uuid.uuid4().hex[:4]}"],
        capture_output=True, text=True, timeout=1200, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "native backend" in out
    assert "dev ipsec0 scope link metric 100" in out and "dev ipsec1 scope link metric 101" in out
    assert "vpnd moved the route to tunnel 2" in out and "back on tunnel 1" in out
    assert "ipsec1 re-created (if_id 43) and its metric-101 route restored" in out
    figures = json.loads(out.split("== done in", 1)[1].split(":", 1)[1].splitlines()[0])
    assert figures["backend"] == "native" and figures["received"] > 0
    print(json.dumps(figures))


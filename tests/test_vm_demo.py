"""The kernel tier (CI runs it with `-m vm`): the route-based scenario of seed 003 on a real
kernel: vpnd creates XFRM interfaces ipsec0/ipsec1 (if_id 42/43), charon installs kernel ESP
SAs, vpnd's routes carry metrics 100/101, and traffic fails over and back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm
ROOT = Path(__file__).resolve().parents[1]


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
    figures = json.loads(out.split("== done in", 1)[1].split(":", 1)[1].splitlines()[0])
    assert figures["backend"] == "native" and figures["received"] > 0
    print(json.dumps(figures))


GUEST_RECREATE = r"""
export VPND_LAB_ROOT=/dev/shm/vpnd-lab VPND_LAB_EMULATED=1
python -m vpnd lab up --backend native --prefix {p} >/dev/null || exit 2
log=/dev/shm/vpnd-lab/{p}/vpnd.log
ip -n {p}-cgw -d link show ipsec1 | grep -q "if_id 0x2b" || exit 3
ip -n {p}-cgw link del ipsec1
# bounded polls: vpnd re-creates the interface, then its routes come back
for i in $(seq 1 300); do ip -n {p}-cgw -d link show ipsec1 2>/dev/null | grep -q "if_id 0x2b" && break; sleep 0.1; done
ip -n {p}-cgw -d link show ipsec1 | grep -q "if_id 0x2b" || {{ tail -5 $log; exit 4; }}
for i in $(seq 1 300); do ip -n {p}-cgw route show proto 249 | grep -q "dev ipsec1" && break; sleep 0.1; done
ip -n {p}-cgw route show proto 249
ip -n {p}-cgw route show proto 249 | grep -q "dev ipsec1 .*metric 101" || {{ tail -5 $log; exit 5; }}
grep -q links.repaired $log || exit 6
echo RECREATED-OK
python -m vpnd lab down --prefix {p} >/dev/null
"""


def test_vpnd_recreates_a_deleted_xfrm_interface():
    if os.geteuid() != 0:
        pytest.skip("the vm backend needs root")
    from vpnd.lab import vm

    vm.ensure_guest_kernel()
    prefix = f"r{uuid.uuid4().hex[:4]}"
    result = vm.run_in_guest(GUEST_RECREATE.format(p=prefix), timeout=900, env=vm.project_env(),
                             cwd=vm.PROJECT_ROOT, stream=None)
    assert result.returncode == 0 and "RECREATED-OK" in result.output, result.output[-3000:]

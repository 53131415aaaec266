"""The kernel tier's failover scenarios (issue 5, route-based mode): one guest boot runs
tests/guest_route_failover.py on Debian's kernel, where vpnd owns real XFRM interfaces.

Scenarios (each reported as its own test here, from the guest's junit XML): tunnel 1's data
path black-holed with IKE up -> LAN->VPC moves to tunnel 2 and back after the preempt delay;
tunnel 1's IKE SA killed by the cloud -> immediate switch; vpnd's route deleted by someone
else -> restored within milliseconds (log + counter); vpnd SIGKILLed and restarted -> no route
change at all (`ip monitor route` in cgw). One boot for all: a boot costs 10-15 s under TCG.
"""

from __future__ import annotations

import json
import os
import shlex
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vpnd.lab import vm

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[1]
GUEST_FILE = "tests/guest_route_failover.py"


@pytest.fixture(scope="module")
def guest_run(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the vm backend needs root")
    kernel = vm.ensure_guest_kernel()
    out = tmp_path_factory.mktemp("failover")
    # The command travels on the guest kernel's command line (2048 bytes on x86, silently
    # truncated: the guest then hangs at boot), so the long part goes in a script on the rwdir.
    # Unbuffered and verbose, with faulthandler's stack dump for a stuck test: if the guest
    # times out, its partial output says how far it got.
    env = {"VPND_LAB_ROOT": "/dev/shm/vpnd-lab", "VPND_LAB_EMULATED": "1", "PYTHONUNBUFFERED": "1",
           "VPND_TEST_LOGS": str(out / "logs"), "VPND_GUEST_FIGURES": str(out / "figures.json")}
    script = out / "guest.sh"
    script.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()) + "echo GUEST-UP\n" + shlex.join([
        "exec", "python", "-m", "pytest", "-p", "no:cacheprovider", "-v", "-m", "lab", "-o", "addopts=",
        "-o", "faulthandler_timeout=240", "--durations=0", GUEST_FILE, f"--junitxml={out}/junit.xml"]) + "\n")
    started = time.monotonic()
    result = vm.run_in_guest(f"sh {script}", timeout=480, env=vm.project_env(ROOT), rwdirs=[out], cwd=ROOT,
                             kernel=kernel)
    print(f"\nfailover scenarios in one guest: {time.monotonic() - started:.1f} s wall")
    if "slowest durations" in result.output:
        table = result.output.split("slowest durations", 1)[1].split("\n", 1)[-1]
        print("guest durations:\n" + table.split("\n\n", 1)[0].split("=====", 1)[0].rstrip())
    cases = {}
    junit = out / "junit.xml"
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            problem = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
            cases[case.get("name")] = (problem.tag if problem is not None else "passed",
                                       (problem.get("message", "") + "\n" + (problem.text or ""))
                                       if problem is not None else "")
    figures = json.loads((out / "figures.json").read_text()) if (out / "figures.json").exists() else {}
    print("guest figures: " + json.dumps(figures, sort_keys=True))
    return result, cases, figures


def outcome(guest_run, name: str) -> None:
    result, cases, _ = guest_run
    assert not result.timed_out, "the guest did not finish in time:\n" + result.output[-4000:]
    assert name in cases, f"{name} did not run in the guest:\n" + result.output[-4000:]
    status, detail = cases[name]
    assert status == "passed", f"{status} in the guest: {detail[-4000:]}"


def test_black_hole_moves_traffic_and_preempt_brings_it_back(guest_run):
    outcome(guest_run, "test_black_hole_moves_traffic_to_tunnel2_and_preempt_brings_it_back")


def test_ike_sa_killed_switches_at_once(guest_run):
    outcome(guest_run, "test_ike_sa_killed_by_the_cloud_switches_at_once")


def test_deleted_route_is_restored(guest_run):
    outcome(guest_run, "test_a_deleted_route_is_restored_within_milliseconds")


def test_vpnd_sigkill_and_restart_change_no_route(guest_run):
    outcome(guest_run, "test_vpnd_sigkilled_and_restarted_changes_no_route")


def test_guest_session_passed(guest_run):
    """Nothing else failed in the guest (fixture errors, collection)."""
    result, _, _ = guest_run
    assert result.returncode == 0, result.output[-4000:]

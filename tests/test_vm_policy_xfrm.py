"""Policy mode on kernel XFRM (the real gateway's charon kernel-netlink), in the kernel tier:
one guest boot runs tests/guest_policy_xfrm.py on Debian's kernel.

Scenarios (each reported as its own test here, from the guest's junit XML): which CHILD SA
carries LAN -> VPC with priorities 1/2 (kernel policy template + charon's counters); a rekey
of the standby does not take the traffic; tunnel 1's ESP black-holed with IKE up -> traffic on
tunnel 2, back after the preempt delay; the cloud sending on tunnel 2 -> XfrmInTmplMismatch
rises and vpnd follows; vpnd SIGKILLed and restarted -> it adopts what the kernel uses, no
CHILD SA replaced; on a priority tie the newest CHILD SA takes the kernel policy. One boot for
all: a boot costs 10-15 s under TCG.
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
GUEST_FILE = "tests/guest_policy_xfrm.py"


@pytest.fixture(scope="module")
def guest_run(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the vm backend needs root")
    kernel = vm.ensure_guest_kernel()
    out = tmp_path_factory.mktemp("policy-xfrm")
    # As tests/test_vm_failover.py: the long command goes in a script on the rwdir (the guest
    # kernel's command line truncates at 2048 bytes), pytest unbuffered and verbose.
    env = {"VPND_LAB_ROOT": "/dev/shm/vpnd-lab", "VPND_LAB_EMULATED": "1", "PYTHONUNBUFFERED": "1",
           "VPND_TEST_LOGS": str(out / "logs"), "VPND_GUEST_FIGURES": str(out / "figures.json")}
    script = out / "guest.sh"
    script.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()) + "echo GUEST-UP\n" + shlex.join([
        "exec", "python", "-m", "pytest", "-p", "no:cacheprovider", "-v", "-m", "lab", "-o", "addopts=",
        "-o", "faulthandler_timeout=240", "--durations=0", GUEST_FILE, f"--junitxml={out}/junit.xml"]) + "\n")
    started = time.monotonic()
    result = vm.run_in_guest(f"sh {script}", timeout=420, env=vm.project_env(ROOT), rwdirs=[out], cwd=ROOT,
                             kernel=kernel)
    print(f"\npolicy-mode scenarios in one guest: {time.monotonic() - started:.1f} s wall")
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


def test_priority_1_child_carries(guest_run):
    outcome(guest_run, "test_both_children_share_one_kernel_policy_and_priority_1_carries")


def test_standby_rekey_keeps_traffic(guest_run):
    outcome(guest_run, "test_a_rekey_of_the_standby_does_not_take_the_traffic")


def test_black_hole_failover_and_preempt(guest_run):
    outcome(guest_run, "test_black_hole_moves_traffic_to_tunnel2_and_preempt_brings_it_back")


def test_cloud_move_counts_in_tmpl_mismatch_and_is_followed(guest_run):
    outcome(guest_run, "test_the_cloud_sending_on_tunnel2_counts_in_tmpl_mismatch_and_vpnd_follows")


def test_restart_adopts_what_the_kernel_uses(guest_run):
    outcome(guest_run, "test_vpnd_sigkilled_and_restarted_adopts_what_the_kernel_uses")


def test_on_a_priority_tie_the_newest_child_sa_wins(guest_run):
    outcome(guest_run, "test_on_a_priority_tie_the_newest_child_sa_takes_the_policy")


def test_guest_session_passed(guest_run):
    """Nothing else failed in the guest (fixture errors, collection)."""
    result, _, _ = guest_run
    assert result.returncode == 0, result.output[-4000:]

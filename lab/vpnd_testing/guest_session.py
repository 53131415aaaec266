"""One guest boot runs one tests/guest_*.py module with pytest on Debian's kernel; the host
side reports each guest test as a test of its own, from the guest's junit XML.

Shared by the vm tier's scenario modules (tests/vm/test_vm_failover.py, test_vm_policy_xfrm.py):
a boot costs 10-15 s under TCG, so one boot carries a whole module."""

from __future__ import annotations

import json
import os
import shlex
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vpnd_lab import vm

ROOT = Path(__file__).resolve().parents[2]


def run_module(tmp_path_factory, guest_file: str, label: str, timeout: float):
    """Boot, run `guest_file`'s lab tests, return (result, {test name: (status, detail)},
    the figures the guest recorded)."""
    if os.geteuid() != 0:
        pytest.skip("the vm backend needs root")
    kernel = vm.ensure_guest_kernel()
    out = tmp_path_factory.mktemp(label.split()[0])
    # The command travels on the guest kernel's command line (2048 bytes on x86, silently
    # truncated: the guest then hangs at boot), so the long part goes in a script on the rwdir.
    # Unbuffered and verbose, with faulthandler's stack dump for a stuck test: if the guest
    # times out, its partial output says how far it got.
    env = {"VPND_LAB_ROOT": "/dev/shm/vpnd-lab", "VPND_LAB_EMULATED": "1", "PYTHONUNBUFFERED": "1",
           "VPND_TEST_LOGS": str(out / "logs"), "VPND_GUEST_FIGURES": str(out / "figures.json")}
    script = out / "guest.sh"
    script.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()) + "echo GUEST-UP\n" + shlex.join([
        "exec", "python", "-m", "pytest", "-p", "no:cacheprovider", "-v", "-m", "lab", "-o", "addopts=",
        "-o", "faulthandler_timeout=240", "--durations=0", guest_file, f"--junitxml={out}/junit.xml"]) + "\n")
    started = time.monotonic()
    result = vm.run_in_guest(f"sh {script}", timeout=timeout, env=vm.project_env(ROOT), rwdirs=[out],
                             cwd=ROOT, kernel=kernel)
    print(f"\n{label} in one guest: {time.monotonic() - started:.1f} s wall")
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


def session_passed(guest_run) -> None:
    """Nothing else failed in the guest (fixture errors, collection)."""
    result, _, _ = guest_run
    assert result.returncode == 0, result.output[-4000:]

"""The Debian package on a gateway under a real systemd PID 1 (issue 15; issue 14 defect 13).

scripts/build-deb builds revision 1 and a rebuilt revision 2 of this checkout; one `vng
--systemd` guest runs lab/vpnd_lab/guests/deb.py: apt installs the package on a machine without
FRR's group, `vpnd check`, `vpnd doctor`, `systemctl start`, both tunnels up in route mode,
reload, an upgrade that keeps the SAs, `systemd-analyze security`, BGP mode through vtysh with
the shipped unit, removal. Every assertion reads the guest's `DEB-RESULT {json}` line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vpnd_lab import vm

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
MAX_EXPOSURE = 2.0


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> list[Path]:
    # Not under pytest's /tmp/pytest-of-root: the guest reads the host's /tmp, but keep it short.
    out = tmp_path_factory.mktemp("debs")
    built = []
    for rev in ("1", "2"):
        t0 = time.monotonic()
        r = subprocess.run([str(ROOT / "scripts" / "build-deb"), "--revision", rev, "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        built.append(Path(r.stdout.strip().splitlines()[-1]).resolve())
        print(f"\nbuild-deb --revision {rev}: {time.monotonic() - t0:.1f} s, {built[-1].stat().st_size} bytes")
    return built


@pytest.fixture(scope="module")
def guest(debs, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the vm backend needs root")
    kernel = vm.ensure_guest_kernel()
    env = {**vm.project_env(ROOT), "VPND_LAB_ROOT": "/dev/shm/vpnd-lab", "VPND_LAB_EMULATED": "1",
           "PYTHONUNBUFFERED": "1", "VPND_DEBS": ":".join(str(d) for d in debs)}
    started = time.monotonic()
    result = vm.run_in_guest("echo GUEST-UP; exec python -m vpnd_lab.guests.deb", timeout=1500,
                             env=env, cwd=ROOT, kernel=kernel, systemd=True, stream=sys.stdout)
    wall = time.monotonic() - started
    lines = [l for l in result.output.splitlines() if l.startswith("DEB-RESULT ")]
    assert not result.timed_out, "the guest did not finish in time:\n" + result.output[-6000:]
    assert lines, "no DEB-RESULT line from the guest:\n" + result.output[-6000:]
    report = json.loads(lines[-1].split(" ", 1)[1])
    saved = ROOT / ".lab" / "deb-guest-result.json"       # .lab/ is git-ignored
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps(report, indent=1, sort_keys=True))
    print(f"\nthe guest's whole report: {saved}")
    print(f"\ndeb guest: {wall:.1f} s wall; steps (s): " + json.dumps(report.get("seconds"))
          + "; " + json.dumps({k: report.get(k) for k in (
              "uptime_at_script", "install_apt_seconds", "route_start_seconds", "upgrade_apt_seconds",
              "upgrade_to_ready_seconds", "bgp_start_seconds", "exposure",
              "exposure_offline_installed")}))
    return result, report


def test_every_step_ran(guest):
    result, r = guest
    assert r["pid1"] == "systemd"
    assert r["errors"] == [], r["errors"]
    assert result.returncode == 0, result.output[-4000:]


def test_apt_installs_the_package_and_the_group(guest):
    _, r = guest
    # without FRR's group, what the shipped unit hit before the package created it
    assert r["no_group_rc"] != 0 and "ExecMainStatus=216" in r["no_group_output"], r["no_group_output"]
    assert r["install_rc"] == 0, r["install_output"]
    assert r["installed_version"].endswith("-1")
    assert r["group_after_install"].startswith("frrvty:")
    assert r["with_group_rc"] == 0, r["with_group_output"]
    assert r["etc_vpnd_mode"] == "0o700"
    assert r["launcher"] == "#!/usr/bin/python3 -I"
    # installed, not started: it needs /etc/vpnd/config.toml first
    assert r["unit_active_after_install"] == "inactive"


def test_check_doctor_and_start_in_route_mode(guest):
    _, r = guest
    assert r["check_rc"] == 0, r["check_output"]
    checks = {c["check"]: c["status"] for c in r["doctor"]["checks"]} if "doctor" in r else {}
    assert checks.get("firewall") == "PASS", r.get("doctor") or r.get("doctor_output")
    assert checks.get("config") in ("PASS", "WARN")     # the lab's proposals draw weak-crypto warnings
    assert "FAIL" not in checks.values(), r["doctor"]
    assert checks.get("unit_group") == "PASS"             # the group the package created
    assert r["route_start_rc"] == 0
    assert r["route_after_start"]["StatusText"] == "1 connection(s), 2 tunnel(s) supervised"
    assert r["route_ready_logged"] and r["route_routes"]
    assert all(ike == "ESTABLISHED" and child == "INSTALLED" for ike, _, child, _ in r["route_sas"].values())
    assert r["reload_rc"] == 0 and r["reload_same_pid"]


def test_upgrade_restarts_vpnd_and_keeps_the_tunnels(guest):
    _, r = guest
    assert r["upgrade_rc"] == 0, r["upgrade_output"]
    assert r["upgraded_version"].endswith("-2")
    before, after = r["upgrade_before"], r["upgrade_after"]
    assert after["pid"] != before["pid"], "postinst did not restart vpnd"
    assert after["sas"] == before["sas"], "the upgrade replaced an IKE or CHILD SA"
    assert after["routes"] == before["routes"]
    assert not [l for l in r["upgrade_route_events"] if l.startswith("Deleted")], r["upgrade_route_events"]
    assert after["config"] == before["config"] and "config.toml" in r["etc_vpnd_after_upgrade"]
    assert r["upgrade_state"]["ActiveState"] == "active"


def test_security_exposure_of_the_installed_unit(guest):
    _, r = guest
    assert r["exposure"] is not None and r["exposure"] <= MAX_EXPOSURE, r.get("security_output")
    assert r["exposure_offline_installed"] <= MAX_EXPOSURE


def test_bgp_mode_under_the_shipped_unit(guest):
    _, r = guest
    assert r["bgp_start_rc"] == 0, r.get("bgp_status")
    assert len(r["bgp_established"]) == 2
    assert "router bgp 65530" in r["bgp_running_config"]
    assert "proto bgp" in r["bgp_route"] or r["bgp_route"], r["bgp_route"]
    assert r["bgp_reload_rc"] == 0
    assert r["bgp_doctor"]["frr"][0] == "PASS" and r["bgp_doctor"]["unit_group"][0] == "PASS", r["bgp_doctor"]
    # vpnd and the vtysh it drives: root without CAP_DAC_OVERRIDE, in group frrvty
    for who in (r["bgp_vpnd_identity"], r["bgp_vtysh_identity"]):
        assert who and who["cap_dac_override"] == "False", who
        assert r["frrvty_gid"] in who["Groups"].split(), who
    assert r["bgp_vtysh_identity"]["Name"] == "vtysh"


def test_without_the_group_vtysh_cannot_reach_frr(guest):
    """Why the unit joins frrvty: the same unit with an empty SupplementaryGroups= loses FRR."""
    _, r = guest
    assert r["frrvty_gid"] not in r["nogroup_vpnd_identity"]["Groups"].split()
    assert "failed to connect to any daemons" in (r["nogroup_unreachable"]["error"] or ""), r["nogroup_unreachable"]
    assert len(r["group_back_established"]) == 2


def test_remove_stops_vpnd_and_leaves_the_sas(guest):
    _, r = guest
    assert r["remove_rc"] == 0
    assert r["remove_state"] in ("inactive", "unknown")
    assert r["remove_sas_after"] == r["remove_sas_before"]
    assert "config.toml" in r["remove_left_in_etc"]

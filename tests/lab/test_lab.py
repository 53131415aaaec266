"""The lab itself: up, status, down, stale runs, and traffic through a real tunnel."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from vpnd_testing.lab_fixtures import lab_skip_reason
from vpnd_lab import daemons, faults
from vpnd_lab.cli import active_interface, both_established, list_sas, wait_until
from vpnd_lab.topology import Lab

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]


def vpnd_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "vpnd", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line}


def test_lab_up_status_down_leaves_nothing():
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    prefix = f"vc{uuid.uuid4().hex[:6]}"
    try:
        up = vpnd_cli("lab", "up", "--backend", "libipsec", "--prefix", prefix)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "backend libipsec" in up.stdout
        pids = [r["pid"] for r in Lab(prefix).recorded().values()]
        assert len(pids) == 3, "two charons and vpnd"
        status = vpnd_cli("lab", "status", "--prefix", prefix)
        assert status.returncode == 0
        rows = [l for l in status.stdout.splitlines() if l.startswith("vpnd-")]
        assert len(rows) == 2 and all("ESTABLISHED" in r and "INSTALLED" in r for r in rows), status.stdout
    finally:
        down = vpnd_cli("lab", "down", "--prefix", prefix)
    assert down.returncode == 0
    assert not {n for n in namespaces() if n.startswith(prefix)}
    assert not [p for p in pids if alive(p)], "lab processes left behind"


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for an init that does not reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_crashed_run_is_cleaned_up_by_the_next(make_lab):
    first = make_lab()
    old = [r["pid"] for r in first.lab.recorded().values()]
    again = Lab(first.lab.prefix)
    again.build()                       # what a new run does first
    try:
        assert not [p for p in old if alive(p)]
        assert {first.lab.ns(r) for r in ("cgw", "cloud", "lan", "vpc")} <= namespaces()
    finally:
        again.destroy()


def test_lan_reaches_vpc_through_the_encrypted_tunnel(make_lab):
    lab = make_lab()
    lab.start_vpnd()
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    wait_until("vpnd's route on tunnel 1", lambda: active_interface(lab.lab) == "vxlan1", 20)
    ping = lab.lab.exec("lan", "ping", "-c", "5", "-i", "0.05", "-W", "1", lab.lab.plan.vpc_host, check=False)
    assert ping.returncode == 0, ping.stdout
    # The packets really crossed tunnel 1's CHILD SA (charon counts them).
    import socket
    import vici
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(daemons.vici_path(lab.lab, "cgw")))
    counts = {}
    for sa in vici.Session(s).list_sas():
        for name, ike in sa.items():
            for child in ike.get("child-sas", {}).values():
                counts[name] = int(child["packets-out"])
    s.close()
    assert counts["vpnd-vpc1-tunnel1"] > counts["vpnd-vpc1-tunnel2"]


def test_black_hole_stops_only_its_own_tunnel(make_lab):
    lab = make_lab()
    lab.start_vpnd()
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    faults.blackhole(lab.lab, 0, "libipsec")
    p1 = lab.lab.exec("cgw", "ping", "-c", "2", "-W", "1", "-I", "vxlan1", "169.254.10.1", check=False)
    p2 = lab.lab.exec("cgw", "ping", "-c", "2", "-W", "1", "-I", "vxlan2", "169.254.20.1", check=False)
    assert p1.returncode != 0 and p2.returncode == 0
    assert all(s["ike"] == "ESTABLISHED" for s in list_sas(lab.lab)), "IKE stays up"
    faults.repair(lab.lab)
    wait_until("tunnel 1 carries again", lambda: lab.lab.exec(
        "cgw", "ping", "-c", "1", "-W", "1", "-I", "vxlan1", "169.254.10.1", check=False).returncode == 0, 10)


def test_bgp_over_both_tunnels(make_lab):
    from vpnd_lab import frr
    if not frr.available():
        pytest.skip("FRR is not installed")
    lab = make_lab(routing="bgp")
    lab.start_vpnd()
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    wait_until("both BGP sessions Established over the tunnels",
               lambda: frr.established_peers(lab.lab, "cgw") == {"169.254.10.1", "169.254.20.1"}, 45,
               interval=0.2)
    wait_until("the VPC prefix learned and installed by zebra",
               lambda: "192.168.0.0/16" in lab.lab.ip("cgw", "route", "show", "proto", "bgp").stdout, 20,
               interval=0.2)


def test_destroy_ends_what_still_runs_in_the_namespaces():
    """A test that fails before stopping its pinger (or a tcpdump) must not leak it: deleting a
    namespace's name leaves its processes running, unreachable."""
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab(prefix=f"vd{uuid.uuid4().hex[:6]}")
    lab.build()
    try:
        stray = subprocess.Popen(["ip", "netns", "exec", lab.ns("lan"), "sleep", "300"],
                                 start_new_session=True)
        wait_until("the stray process inside", lambda: str(stray.pid) in subprocess.run(
            ["ip", "netns", "pids", lab.ns("lan")], capture_output=True, text=True).stdout.split(), 5)
    finally:
        lab.destroy()
    assert stray.wait(timeout=5) == -9

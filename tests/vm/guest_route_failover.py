"""Route-based failover on a real kernel: runs INSIDE the vm backend's guest.

tests/vm/test_vm_failover.py boots one guest and runs this file there (`pytest -m lab
tests/vm/guest_route_failover.py`); it is not collected by ordinary runs (its name does not start
with test_). vpnd creates the XFRM interfaces ipsec0/ipsec1 (if_id 42/43) itself, charon
installs kernel ESP SAs, vpnd's routes carry metrics 100/101: the native backend, the vendor's strongSwan guide.

Python start-up and a lab cost many seconds under TCG, so the four scenarios share one lab and
one vpnd, in file order; each starts by waiting until traffic is back on tunnel 1 (the IKE SA
kill comes last: tunnel 1's re-negotiation and preempt delay would cost the next one time). Timing
under emulation is slow and noisy: assertions are on causes (log reasons, route events seen by
`ip monitor`) and on ratios to the configured probe budget and preempt delay, with generous
bounds. Figures go to $VPND_GUEST_FIGURES (JSON) for the host to print.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
from vpnd_testing.lab_fixtures import RunningLab, lab_skip_reason
from vpnd_testing.route_watch import RouteMonitor, metric

from vpnd_lab import faults, scenario
from vpnd_lab.cli import active_interface, both_established, native_supported, vpnd_routes, wait_until
from vpnd_lab.pinger import Pinger
from vpnd_lab.topology import Lab

pytestmark = pytest.mark.lab

PREEMPT_DELAY = 5.0
OPTS = scenario.Options(backend="native", interval=0.25, timeout=1.0, retries=3, preempt_delay=PREEMPT_DELAY)
# The slowest a probe-based failover may legitimately take: `retries` intervals plus one timeout.
PROBE_BUDGET = OPTS.retries * OPTS.interval + (OPTS.timeout or OPTS.interval)
VPC_NET = RouteMonitor.VPC_NET
FIGURES: dict[str, float] = {}


def record(**figures: float) -> None:
    FIGURES.update({k: round(v, 3) for k, v in figures.items()})
    path = os.environ.get("VPND_GUEST_FIGURES")
    if path:
        Path(path).write_text(json.dumps(FIGURES, indent=1, sort_keys=True))


def tx_packets(lab: Lab, dev: str) -> int:
    out = json.loads(lab.ip("cgw", "-s", "-j", "link", "show", dev).stdout)
    return int(out[0]["stats64"]["tx"]["packets"])


def on_tunnel1(rl: RunningLab, timeout: float = 120.0) -> None:
    """Both tunnels up and traffic on tunnel 1: where every scenario starts."""
    wait_until("both tunnels up", lambda: both_established(rl.lab), timeout)
    wait_until("route on tunnel 1 (ipsec0)", lambda: active_interface(rl.lab) == "ipsec0", timeout)


@pytest.fixture(scope="module")
def rl():
    reason = lab_skip_reason()
    if reason is None and not native_supported():
        reason = "this kernel has no XFRM interfaces: run through tests/vm/test_vm_failover.py (vm tier)"
    if reason:
        pytest.skip(reason)
    lab = Lab(prefix=f"vf{uuid.uuid4().hex[:6]}")
    running = RunningLab(lab, OPTS)
    try:
        running.config = scenario.up(lab, OPTS)
        running.start_vpnd()
        on_tunnel1(running)
        yield running
    finally:
        keep = Path(os.environ.get("VPND_TEST_LOGS", "/tmp/vpnd-test-logs"))
        if running.log.exists():
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(running.log, keep / f"{lab.prefix}.log")
        lab.destroy()


def test_black_hole_moves_traffic_to_tunnel2_and_preempt_brings_it_back(rl):
    on_tunnel1(rl)
    lab = rl.lab
    pinger = Pinger(lab, duration=60)
    time.sleep(1.0)
    seen = len(rl.events("connection.active_changed", active="tunnel2"))
    faults.blackhole(lab, 0, "native")
    switch_s = wait_until("failover to tunnel 2 (ipsec1)", lambda: active_interface(lab) == "ipsec1", 60,
                          interval=0.005)
    time.sleep(1.0)
    report = pinger.stop()
    e = rl.wait_event("connection.active_changed", after=seen, active="tunnel2", timeout=10)
    assert "probes lost" in e["reason"], e
    # LAN->VPC flows again, and through tunnel 2's XFRM interface.
    before = tx_packets(lab, "ipsec1")
    ping = lab.exec("lan", "ping", "-n", "-c", "20", "-i", "0.05", "-W", "2", lab.plan.vpc_host, check=False)
    received = int(ping.stdout.split(" received")[0].rsplit(" ", 1)[1])
    assert received >= 16, ping.stdout
    assert tx_packets(lab, "ipsec1") - before >= received, "the pings did not leave through ipsec1"
    # The outage the LAN saw ends with the switch (plus slack for TCG), not later.
    assert report.outage_ms / 1000 < switch_s + 3.0, (report, switch_s)

    pinger2 = Pinger(lab, duration=120)
    faults.repair(lab)
    back_s = wait_until("back on tunnel 1", lambda: active_interface(lab) == "ipsec0", PREEMPT_DELAY + 60,
                        interval=0.01)
    time.sleep(0.5)
    report2 = pinger2.stop()
    record(blackhole_switch_s=switch_s, blackhole_outage_ms=report.outage_ms, failback_s=back_s,
           failback_outage_ms=report2.outage_ms, probe_budget_s=PROBE_BUDGET, preempt_delay_s=PREEMPT_DELAY)
    assert back_s >= PREEMPT_DELAY, "moved back before the preempt delay"
    assert back_s < PREEMPT_DELAY + 30, back_s
    # Moving back is make-before-break: the LAN barely notices.
    assert report2.received >= 0.8 * report2.sent, report2


def test_a_deleted_route_is_restored_within_milliseconds(rl):
    on_tunnel1(rl)
    lab = rl.lab
    repairs_before = metric(lab, "vpnd_route_repairs_total")
    restored_before = len(rl.events("routes.restored"))
    mon = RouteMonitor(lab)
    lab.ip("cgw", "route", "del", VPC_NET, "metric", "100")
    wait_until("route restored", lambda: active_interface(lab) == "ipsec0", 10, interval=0.002)
    time.sleep(0.3)
    lines = mon.stop()
    deleted = next(l for l in lines if "Deleted" in l and "metric 100" in l)
    readded = next(l for l in lines[lines.index(deleted) + 1:] if "Deleted" not in l and "metric 100" in l)
    assert "dev ipsec0" in readded and "proto 249" in readded, readded
    restore_ms = (RouteMonitor.stamp(readded) - RouteMonitor.stamp(deleted)) * 1000
    record(route_restore_ms=restore_ms)
    # Milliseconds on real hardware; TCG is one to two orders slower, hence the bound.
    assert restore_ms < 1000, lines
    e = rl.wait_event("routes.restored", after=restored_before)
    assert "192.168.0.0/16 metric 100 dev ipsec0" in e["cause"], e
    assert metric(lab, "vpnd_route_repairs_total") == repairs_before + 1
    ping = lab.exec("lan", "ping", "-n", "-c", "3", "-i", "0.1", "-W", "2", lab.plan.vpc_host, check=False)
    assert ping.returncode == 0, ping.stdout


def test_vpnd_sigkilled_and_restarted_changes_no_route(rl):
    on_tunnel1(rl)
    lab = rl.lab
    before = vpnd_routes(lab)
    switched_before = len(rl.events("routes.switched"))
    adopted_before = len(rl.events("routes.adopted"))
    mon = RouteMonitor(lab)
    rl.stop_vpnd(sig=signal.SIGKILL)
    time.sleep(2.0)
    assert vpnd_routes(lab) == before, "routes stay while vpnd is away"
    t0 = time.monotonic()
    rl.start_vpnd()
    adopted = rl.wait_event("routes.adopted", timeout=120, after=adopted_before)
    record(restart_to_adopted_s=time.monotonic() - t0)
    assert adopted["active"] == "tunnel1" and adopted["routes"] == 2, adopted
    # Let the new vpnd see both tunnels and run several probe budgets: nothing may move.
    time.sleep(2 * PROBE_BUDGET)
    changes = mon.stop()
    assert changes == [], f"route changes while vpnd was away or after it came back: {changes}"
    assert vpnd_routes(lab) == before
    assert len(rl.events("routes.switched")) == switched_before
    ping = lab.exec("lan", "ping", "-n", "-c", "3", "-i", "0.1", "-W", "2", lab.plan.vpc_host, check=False)
    assert ping.returncode == 0, ping.stdout


def test_ike_sa_killed_by_the_cloud_switches_at_once(rl):
    on_tunnel1(rl)
    lab = rl.lab
    seen = len(rl.events("connection.active_changed", active="tunnel2"))
    t0 = time.monotonic()
    faults.terminate_ike(lab, "vpc1", "tunnel1")
    switch_s = wait_until("failover to tunnel 2", lambda: active_interface(lab) == "ipsec1", 60, interval=0.005)
    e = rl.wait_event("connection.active_changed", after=seen, active="tunnel2", timeout=10)
    record(ike_kill_switch_s=switch_s)
    # Immediate: driven by the CHILD SA going away (VICI), not by probes running out.
    assert "probes lost" not in e["reason"], e
    blackhole = FIGURES.get("blackhole_switch_s")
    if blackhole is not None:
        record(ike_kill_to_blackhole_ratio=switch_s / blackhole)
    assert time.monotonic() - t0 < 60

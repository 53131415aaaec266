"""Failover on the lab (route mode, libipsec backend): what users see from the LAN."""

from __future__ import annotations

import signal
import time

import pytest
from vpnd_testing.route_watch import RouteMonitor, metric

from vpnd_lab import faults
from vpnd_lab.cli import active_interface, both_established, vpnd_routes, wait_until
from vpnd_lab.pinger import Pinger

pytestmark = pytest.mark.lab


def ready(lab):
    lab.start_vpnd()
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    wait_until("route on tunnel 1", lambda: active_interface(lab.lab) == "vxlan1",
               lab.opts.preempt_delay + 20)


def test_black_hole_moves_traffic_and_preempt_brings_it_back(make_lab):
    lab = make_lab(preempt_delay=2.0)
    ready(lab)
    pinger = Pinger(lab.lab, duration=30)
    time.sleep(0.5)
    seen = len(lab.events("connection.active_changed", active="tunnel2"))
    faults.blackhole(lab.lab, 0, "libipsec")
    wait_until("failover to tunnel 2", lambda: active_interface(lab.lab) == "vxlan2", 15, interval=0.005)
    time.sleep(0.5)
    report = pinger.stop()
    # Speed is bench/failover.py's business; here: traffic flows again after the switch.
    # the outage includes any gap still open at stop(): bounded means traffic flows again
    assert report.received > 0 and report.outage_ms < 2000, report
    # routes move before the event is logged: wait for it rather than read the log at once
    e = lab.wait_event("connection.active_changed", after=seen, active="tunnel2", timeout=5)
    assert "probes lost" in e["reason"], e
    # one event with from/to and the evidence: tunnel 1's last probes lost, tunnel 2's answered
    assert (e["from"], e["to"]) == ("tunnel1", "tunnel2"), e
    assert e["probes"]["tunnel1"]["recent"].endswith("---"), e
    assert e["probes"]["tunnel2"]["recent"].endswith("+"), e
    faults.repair(lab.lab)
    t0 = time.monotonic()
    wait_until("back on tunnel 1", lambda: active_interface(lab.lab) == "vxlan1", 15)
    assert time.monotonic() - t0 >= 1.9, "not before the preempt delay"


def test_ike_sa_killed_switches_at_once(make_lab):
    lab = make_lab(preempt_delay=5.0)
    ready(lab)
    seen = len(lab.events("connection.active_changed", active="tunnel2"))
    faults.terminate_ike(lab.lab, "vpc1", "tunnel1")
    wait_until("failover to tunnel 2", lambda: active_interface(lab.lab) == "vxlan2", 15, interval=0.005)
    e = lab.wait_event("connection.active_changed", after=seen, active="tunnel2", timeout=5)
    assert "probes lost" not in e["reason"], "a lost CHILD SA switches without waiting for probes"


def test_a_deleted_route_is_restored_and_counted(make_lab):
    lab = make_lab()
    ready(lab)
    mon = RouteMonitor(lab.lab)
    lab.lab.ip("cgw", "route", "del", "192.168.0.0/16", "metric", "100")
    wait_until("route restored", lambda: active_interface(lab.lab) == "vxlan1", 5, interval=0.002)
    lab.wait_event("routes.restored")
    lines = mon.stop()
    deleted = next(l for l in lines if "Deleted" in l and "metric 100" in l)
    readded = next(l for l in lines[lines.index(deleted) + 1:] if "Deleted" not in l and "metric 100" in l)
    # The kernel's own timestamps: back within milliseconds (the fault matrix prints the figure;
    # the bound here is generous for a loaded CI box).
    assert RouteMonitor.stamp(readded) - RouteMonitor.stamp(deleted) < 1.0, lines
    assert metric(lab.lab, "vpnd_route_repairs_total") == 1
    ping = lab.lab.exec("lan", "ping", "-c", "3", "-i", "0.05", "-W", "1", lab.lab.plan.vpc_host, check=False)
    assert ping.returncode == 0


def test_vpnd_sigkilled_and_restarted_changes_no_route(make_lab):
    lab = make_lab()
    ready(lab)
    before = vpnd_routes(lab.lab)
    writes_before = len(lab.events("routes.switched"))
    mon = RouteMonitor(lab.lab)
    lab.stop_vpnd(sig=signal.SIGKILL)
    assert vpnd_routes(lab.lab) == before, "routes stay while vpnd is away"
    lab.start_vpnd()
    lab.wait_event("routes.adopted", after=1)
    adopted = lab.events("routes.adopted")[1]
    assert adopted["active"] == "tunnel1" and adopted["routes"] == 2
    time.sleep(1.5)     # let the restarted vpnd probe and decide; nothing may move
    assert mon.stop() == [], "the kernel saw no change to the remote network's routes"
    assert vpnd_routes(lab.lab) == before
    assert len(lab.events("routes.switched")) == writes_before, (
        "no route write after the restart", lab.events("connection.active_changed"))


def test_restarted_on_tunnel2_keeps_traffic_there_until_the_preempt_delay(make_lab):
    """vpnd restarted while traffic is on tunnel 2 and tunnel 1 is healthy again (preempt
    pending): the restart moves nothing; the way back is the ordinary preempt, preempt_delay
    after the restarted vpnd saw tunnel 1 healthy."""
    lab = make_lab(preempt_delay=3.0)
    ready(lab)
    faults.blackhole(lab.lab, 0, "libipsec")
    wait_until("failover to tunnel 2", lambda: active_interface(lab.lab) == "vxlan2", 15, interval=0.005)
    faults.repair(lab.lab)
    before = vpnd_routes(lab.lab)
    lab.stop_vpnd(sig=signal.SIGKILL)          # before the 3 s preempt delay ran out
    mon = RouteMonitor(lab.lab)
    kept = len(lab.events("connection.active_changed", active="tunnel2"))
    t0 = time.monotonic()
    lab.start_vpnd()
    e = lab.wait_event("connection.active_changed", after=kept, active="tunnel2", timeout=20)
    assert "traffic was on it when vpnd started" in e["reason"], e
    assert [a["active"] for a in lab.events("routes.adopted")][-1] == "tunnel2"
    time.sleep(0.5)
    assert mon.stop() == [], "the restart changed no route"
    assert active_interface(lab.lab) == "vxlan2" and vpnd_routes(lab.lab) == before
    wait_until("preempt back to tunnel 1", lambda: active_interface(lab.lab) == "vxlan1", 20,
               interval=0.01)
    assert time.monotonic() - t0 >= 3.0, "the way back waits for preempt_delay"
    back = lab.wait_event("connection.active_changed", active="tunnel1",
                          after=len(lab.events("connection.active_changed", active="tunnel1")) - 1)
    assert "switched back" in back["reason"], back

"""Parking against the vendor's cloud left at its defaults (health check off, DPD 30 s; route
mode, libipsec, real charons): tunnel 1's data path dies while IKE still answers (faults.
blackhole drops the VXLAN inside the tunnel), so the cloud would keep sending into it for
good. vpnd leaves tunnel 1 on its probes, tears tunnel 1's CHILD SA down ("parked"), and the
cloud moves because the SAs went away; the standby is never shown unusable. After repair the
hold ends, the CHILD SA is tested and proven, the cloud fails back by itself and vpnd follows
once (switches counted). Speed is bench/failover.py's business (--fault esp_dead)."""

from __future__ import annotations

import time

import pytest

from test_return_path_lab import StatusWatch, cloud_moved_after, round_trip_works
from vpnd.control.server import request
from vpnd_lab import cloud_model, faults
from vpnd_lab.cli import active_interface, both_established, wait_until

pytestmark = pytest.mark.lab


def tunnels(lab) -> dict:
    return request(str(lab.lab.dir / "control.sock"), {"command": "status"})["status"][
        "connections"]["vpc1"]["tunnels"]


def test_esp_dead_tunnel1_is_parked_the_cloud_moves_and_the_repair_is_proven(make_lab):
    lab = make_lab(cloud_model="vendor", preempt_delay=2.0)     # the cloud's check: off
    lab.start_vpnd()
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    wait_until("route on tunnel 1", lambda: active_interface(lab.lab) == "vxlan1", 25)
    wait_until("answers come back through tunnel 1",
               lambda: tunnels(lab)["tunnel2"]["replies_via"] == "tunnel1", 10)
    watch = StatusWatch(lab)
    to2 = len(lab.events("connection.active_changed", active="tunnel2"))
    t0 = time.time()
    faults.esp_dead(lab.lab, 0, "libipsec")
    try:
        lab.wait_event("tunnel.state_changed", tunnel="tunnel1", to="parked", timeout=10)
        wait_until("route on tunnel 2", lambda: active_interface(lab.lab) == "vxlan2", 2)
        wait_until("the cloud moves to tunnel 2", lambda: cloud_moved_after(lab, t0) is not None, 10)
        moved = [e for e in cloud_model.events(lab.lab, "cloud.sending") if e["t"] >= t0][-1]
        assert "SAs gone" in moved["reason"], moved
        wait_until("traffic flows both ways", lambda: round_trip_works(lab), 10, interval=0.2)
        t1 = tunnels(lab)["tunnel1"]
        assert t1["state"] == "parked" and t1["parked"].startswith("IKE alive, data path dead")
        assert t1["child"] in ("PARKED", "DOWN") and t1["ike"] == "ESTABLISHED"
        time.sleep(1.5)             # the standby watched while tunnel 1 is held
        assert tunnels(lab)["tunnel1"]["state"] == "parked"
    finally:
        watch.stop()
    assert watch.samples > 20 and not watch.bad, watch.bad[:3]
    # repaired: tested after the hold (10 s), proven, the cloud fails back, vpnd follows once
    to1 = len(lab.events("connection.active_changed", active="tunnel1"))
    faults.repair(lab.lab)
    lab.wait_event("tunnel.state_changed", tunnel="tunnel1", to="established", timeout=25,
                   **{"from": "parked"})
    lab.wait_event("connection.active_changed", after=to1, active="tunnel1", timeout=15)
    time.sleep(3.0)
    story = [(e.get("timestamp", "")[14:23], e.get("event"), e.get("tunnel") or e.get("active"),
              e.get("to"), e.get("reason")) for e in lab.events()
             if e.get("event") in ("connection.active_changed", "tunnel.state_changed")]
    assert len(lab.events("connection.active_changed", active="tunnel2")) == to2 + 1, \
        f"no oscillation after the failback: {story}"
    assert len(lab.events("connection.active_changed", active="tunnel1")) == to1 + 1
    assert active_interface(lab.lab) == "vxlan1" and cloud_model.sending(lab.lab) == 0
    assert round_trip_works(lab)


def test_bgp_esp_dead_tunnel1_is_parked_and_proven_before_its_neighbor_returns(make_lab):
    """BGP mode, timers 10/30, the vendor cloud (its BGP best path): the more-specifics on
    tunnel 2 move the cloud's return path; parking adds that tunnel 1 carries nothing while
    its data path is dead, and its neighbor comes back only after the proof."""
    from vpnd_testing.lab_fixtures import bgp_lab

    lab = bgp_lab(make_lab, bgp_timers=(10, 30), cloud_model="vendor", probe_peer=True,
                  preempt_delay=2.0)
    wait_until("LAN->VPC answers", lambda: round_trip_works(lab), 15, interval=0.2)
    to2 = len(lab.events("connection.active_changed", active="tunnel2"))
    faults.esp_dead(lab.lab, 0, "libipsec", "bgp")
    lab.wait_event("tunnel.state_changed", tunnel="tunnel1", to="parked", timeout=10)
    wait_until("traffic flows both ways", lambda: round_trip_works(lab), 15, interval=0.2)
    t = tunnels(lab)
    assert t["tunnel1"]["state"] == "parked" and t["tunnel2"]["usable"]
    to1 = len(lab.events("connection.active_changed", active="tunnel1"))
    faults.repair(lab.lab)
    proven = lab.wait_event("tunnel.state_changed", tunnel="tunnel1", to="established", timeout=25,
                            **{"from": "parked"})
    assert "proven" in proven["reason"], proven
    lab.wait_event("connection.active_changed", after=to1, active="tunnel1", timeout=40)
    time.sleep(3.0)
    assert len(lab.events("connection.active_changed", active="tunnel2")) == to2 + 1
    assert round_trip_works(lab)

"""Failover against the vendor's cloud (route mode, libipsec backend, real charons): the cloud
sends on tunnel 1 until its own health check (1 s x 3) fails, so the answers to BOTH
tunnels' probes come back through tunnel 1 (issue 13).

Per fault on tunnel 1 (both ways; only LAN->VPC; only VPC->LAN): traffic flows both ways
again, and the standby is never reported unusable because of tunnel 1's failure (vpnd's
status polled every 50 ms throughout). Both ways and VPC->LAN only, vpnd leaves tunnel 1 on
its own detection, before the cloud's move (the "blinded" rule, vpnd/core/failover.py);
LAN->VPC only is an ordinary switch and the cloud stays on tunnel 1. Speed is
bench/failover.py's business; here the order of events.
"""

from __future__ import annotations

import threading
import time

import pytest

from vpnd.control.server import request
from vpnd_lab import cloud_model, faults
from vpnd_lab.cli import active_interface, both_established, wait_until

pytestmark = pytest.mark.lab

CHECK = (1.0, 3)


class StatusWatch:
    """Polls vpnd's status over the control socket; remembers every time tunnel2 was shown
    unusable (with why) while its CHILD SA was installed."""

    def __init__(self, lab) -> None:
        self.path = str(lab.lab.dir / "control.sock")
        self.bad: list[dict] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                t2 = request(self.path, {"command": "status"})["status"]["connections"]["vpc1"][
                    "tunnels"]["tunnel2"]
            except Exception:           # noqa: BLE001 - a busy moment: try again
                time.sleep(0.05)
                continue
            self.samples += 1
            if t2["child"] == "INSTALLED" and not t2["usable"]:
                self.bad.append(t2)
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def vendor_lab(make_lab):
    lab = make_lab(cloud_model="vendor", cloud_check=CHECK, preempt_delay=2.0)
    lab.start_vpnd()
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    wait_until("route on tunnel 1", lambda: active_interface(lab.lab) == "vxlan1", 25)
    path = str(lab.lab.dir / "control.sock")

    def returns_via_tunnel1() -> bool:
        t = request(path, {"command": "status"})["status"]["connections"]["vpc1"]["tunnels"]
        return t["tunnel1"]["replies_via"] == "tunnel1" and t["tunnel2"]["replies_via"] == "tunnel1"
    wait_until("both tunnels' answers come back through tunnel 1", returns_via_tunnel1, 10)
    time.sleep(1.5 * CHECK[0])       # the cloud's check has seen both tunnels answer
    return lab


def one_way(lab, direction: str) -> None:
    """Tunnel 1's data path dropped in one direction only (the cloud's nft, as
    faults.blackhole does both): "out" = LAN->VPC (cgw's VXLAN into the cloud), "in" =
    VPC->LAN."""
    ours = lab.lab.plan.endpoints[0][0]
    rule = (f"ip saddr {ours} udp dport 4789 drop" if direction == "out"
            else f"ip daddr {ours} udp dport 4789 drop")
    faults._drop(lab.lab, [rule])


def round_trip_works(lab) -> bool:
    r = lab.lab.exec("lan", "ping", "-c", "2", "-i", "0.2", "-W", "1", lab.lab.plan.vpc_host,
                     check=False)
    v = lab.lab.exec("vpc", "ping", "-c", "2", "-i", "0.2", "-W", "1", lab.lab.plan.lan_host,
                     check=False)
    return r.returncode == 0 and v.returncode == 0


def cloud_moved_after(lab, t0: float) -> float | None:
    moves = [e for e in cloud_model.events(lab.lab, "cloud.sending")
             if e["t"] >= t0 and e["tunnel"] == 1]
    return moves[0]["t"] if moves else None


def switched_at(lab, seen: int) -> dict:
    return lab.wait_event("connection.active_changed", after=seen, active="tunnel2", timeout=10)


def _wall(e: dict) -> float:
    from datetime import datetime
    return datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("fault", ["both", "in"])
def test_tunnel1_dead_inbound_escapes_before_the_cloud_moves(make_lab, fault):
    lab = vendor_lab(make_lab)
    watch = StatusWatch(lab)
    seen = len(lab.events("connection.active_changed", active="tunnel2"))
    t0 = time.time()
    if fault == "both":
        faults.blackhole(lab.lab, 0, "libipsec")
    else:
        one_way(lab, "in")
    try:
        e = switched_at(lab, seen)
        assert "blinded: replies return through tunnel1" in e["reason"], e
        wait_until("the cloud moves to tunnel 2", lambda: cloud_moved_after(lab, t0) is not None,
                   6 * CHECK[0] * CHECK[1])
        assert _wall(e) < cloud_moved_after(lab, t0), "vpnd waited for the cloud's move"
        wait_until("traffic flows both ways", lambda: round_trip_works(lab), 15, interval=0.2)
        def t2_answered_itself() -> bool:
            t = request(str(lab.lab.dir / "control.sock"), {"command": "status"})["status"]
            t2 = t["connections"]["vpc1"]["tunnels"]["tunnel2"]
            return t2["replies_via"] == "tunnel2" and not t2["blinded"] and t2["usable"]
        wait_until("tunnel 2's probes answered through tunnel 2", t2_answered_itself, 5)
        time.sleep(2.5)             # past preempt_delay: tunnel 1 must not be preempted onto
        assert active_interface(lab.lab) == "vxlan2"
    finally:
        watch.stop()
    assert watch.samples > 20 and not watch.bad, watch.bad[:3]
    # tunnel 1 repaired: the cloud fails back, and vpnd follows once, after preempt_delay
    seen1 = len(lab.events("connection.active_changed", active="tunnel1"))
    faults.repair(lab.lab)
    back = lab.wait_event("connection.active_changed", after=seen1, active="tunnel1", timeout=20)
    time.sleep(3.0)
    assert len(lab.events("connection.active_changed", active="tunnel2")) == seen + 1, \
        "no oscillation after the failback"
    assert active_interface(lab.lab) == "vxlan1", back
    assert round_trip_works(lab)


def test_tunnel1_dead_outbound_only_is_an_ordinary_switch(make_lab):
    lab = vendor_lab(make_lab)
    watch = StatusWatch(lab)
    seen = len(lab.events("connection.active_changed", active="tunnel2"))
    t0 = time.time()
    one_way(lab, "out")
    try:
        e = switched_at(lab, seen)
        assert "probes lost in a row" in e["reason"] and "blinded" not in e["reason"], e
        wait_until("traffic flows both ways", lambda: round_trip_works(lab), 15, interval=0.2)
        # the cloud's check still passes (its probe comes in on tunnel 1, cgw answers on 2):
        # it moves only because vpnd parked tunnel 1 (its own probes fail: failover.py
        # "Parking"), when the SAs go away, so both directions share tunnel 2
        time.sleep(CHECK[0] * (CHECK[1] + 1))
        moves = [e for e in cloud_model.events(lab.lab, "cloud.sending") if e["t"] >= t0]
        assert all("SAs gone" in e["reason"] for e in moves), moves
        assert lab.events("tunnel.state_changed", tunnel="tunnel1", to="parked")
        assert active_interface(lab.lab) == "vxlan2" and round_trip_works(lab)
    finally:
        watch.stop()
    assert watch.samples > 20 and not watch.bad, watch.bad[:3]


def test_route_mode_follows_the_clouds_own_move_and_back(make_lab):
    """The cloud moves on its own (the vendor's strongSwan guide: "may proactively switch traffic to the standby
    tunnel"): tunnel 1's probes are answered through tunnel 2 now, and vpnd follows, so both
    directions use one tunnel; when the cloud goes back, vpnd follows again."""
    lab = vendor_lab(make_lab)
    time.sleep(lab.opts.preempt_delay)  # tunnel 2 usable for preempt_delay: proven, followed at once
    seen2 = len(lab.events("connection.active_changed", active="tunnel2"))
    cloud_model.switch_proactively(lab.lab, 1)
    e = switched_at(lab, seen2)
    assert e["reason"] == "cloud moved traffic to tunnel2, following", e
    assert active_interface(lab.lab) == "vxlan2" and round_trip_works(lab)
    status = request(str(lab.lab.dir / "control.sock"), {"command": "status"})["status"]
    assert status["connections"]["vpc1"]["pinned"] == "tunnel2"
    time.sleep(2.5)                 # past preempt_delay: the cloud's choice holds
    assert active_interface(lab.lab) == "vxlan2"
    seen1 = len(lab.events("connection.active_changed", active="tunnel1"))
    cloud_model.switch_proactively(lab.lab, 0)
    back = lab.wait_event("connection.active_changed", after=seen1, active="tunnel1", timeout=10)
    assert back["reason"] == "cloud moved traffic to tunnel1, following", back
    assert round_trip_works(lab)

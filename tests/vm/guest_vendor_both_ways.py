"""Both directions against the vendor's cloud on a real kernel: runs INSIDE the vm backend's guest.

tests/vm/test_vm_vendor.py boots one guest and runs this file there (`pytest -m lab
tests/vm/guest_vendor_both_ways.py`); ordinary runs skip it (its name does not start with
test_, and on a host kernel without XFRM interfaces the fixture skips). Issue 13's scenarios
on kernel XFRM (vpnd's ipsec0/ipsec1, the cloud's own XFRM interfaces cloud0/cloud1 and
kernel ESP on both sides), the cloud being the vendor model (lab/vpnd_lab/cloud_model.py):
it sends everything for the LAN on tunnel 1 until ITS health check fails there.

Route mode (the cloud's health check 1 s x 3, switch route), faults on tunnel 1: black-holed
both ways, LAN->VPC dropped only, VPC->LAN dropped only, IKE alive / ESP dead (ESP dropped,
IKE passes). BGP mode (timers 10/30, no BFD, `return_path = "more-specific"`): black-holed
both ways. Each: traffic flows both ways again (a LAN ping and both UDP streams), tunnel 2 is
never shown unusable while its CHILD SA is installed (vpnd's status polled throughout), and
after the repair vpnd and the cloud are back on tunnel 1. One lab per mode, one guest for all.

Timing under TCG is slow and noisy: the figures (round trip, each direction, vpnd's switch,
the cloud's move) go to $VPND_GUEST_FIGURES as ratios to vpnd's probe budget (interval x
retries) measured in this run; the asserts are on outcomes, with generous bounds.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from vpnd_testing.lab_fixtures import RunningLab, lab_skip_reason

from vpnd.control.server import request
from vpnd_lab import cloud_model, faults, scenario
from vpnd_lab.cli import active_interface, both_established, native_supported, wait_until
from vpnd_lab.pinger import Pinger
from vpnd_lab.streams import Streams
from vpnd_lab.topology import Lab

pytestmark = pytest.mark.lab

CHECK = (1.0, 3)                    # the cloud's health check (issue 13's measurement)
ROUTE = scenario.Options(backend="native", interval=0.25, timeout=1.0, retries=3, preempt_delay=3.0,
                         cloud_model="vendor", cloud_check=CHECK)
# BGP: each tunnel probes the cloud's own BGP address, which answers over that tunnel, as on the
# host tier (tests/lab/test_bgp_return_lab.py, bench --probe-peer). With probes to the VPC host
# the first guest run failed over at once but never preempted back to tunnel 1 after the repair
# (180 s): the cloud's best path then was tunnel 2's more-specifics, so tunnel 1's probe replies
# came back through tunnel 2.
BGP = replace(ROUTE, routing="bgp", frr_by_vpnd=True, bgp_timers=(10, 30), bfd_ms=None, cloud_check=None,
              probe_peer=True)
PROBE_BUDGET = ROUTE.interval * ROUTE.retries      # the figures' unit: vpnd's interval x retries
FIGURES: dict[str, float | str | None] = {"probe_budget_s": PROBE_BUDGET,
                                           "cloud_check": f"{CHECK[0]:g} s x {CHECK[1]}"}


def record(name: str, **figures: float | None) -> None:
    for k, v in figures.items():
        FIGURES[f"{name}_{k}"] = None if v is None else round(v, 3)
    path = os.environ.get("VPND_GUEST_FIGURES")
    if path:
        Path(path).write_text(json.dumps(FIGURES, indent=1, sort_keys=True))


class StatusWatch:
    """vpnd's status every 100 ms: every moment tunnel 2 was shown unusable with its CHILD SA
    installed (what issue 13 saw: the standby judged dead by the active tunnel's failure)."""

    def __init__(self, rl: RunningLab) -> None:
        self.path = str(rl.lab.dir / "control.sock")
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
            except Exception:           # noqa: BLE001 - a busy moment under TCG: try again
                time.sleep(0.1)
                continue
            self.samples += 1
            if t2["child"] == "INSTALLED" and not t2["usable"]:
                self.bad.append(t2)
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def vpc_device(lab: Lab) -> str | None:
    out = lab.exec("cgw", "ip", "route", "get", lab.plan.vpc_host, check=False).stdout.split()
    return out[out.index("dev") + 1] if "dev" in out else None


def cloud_device(lab: Lab) -> str | None:
    out = lab.exec("cloud", "ip", "route", "get", lab.plan.lan_host, check=False).stdout.split()
    return out[out.index("dev") + 1] if "dev" in out else None


def fault_rules(lab: Lab, fault: str) -> list[str]:
    """Tunnel 1's fault, in the cloud's nft (one transaction, as faults.blackhole): through
    its XFRM interface cloud0 (decrypted traffic) or on its ESP (IKE untouched)."""
    if fault == "both":
        return ['iifname "cloud0" drop', 'oifname "cloud0" drop']
    if fault == "lan_to_vpc":
        return ['iifname "cloud0" drop']
    if fault == "vpc_to_lan":
        return ['oifname "cloud0" drop']
    if fault == "esp":          # ESP of tunnel 1 only, in UDP (non-zero SPI where IKE has its marker) or plain
        cloud = lab.plan.cloud_wan[0]
        return [f"ip daddr {cloud} udp dport 4500 @th,64,32 != 0 drop",
                f"ip saddr {cloud} udp sport 4500 @th,64,32 != 0 drop",
                f"ip daddr {cloud} meta l4proto esp drop", f"ip saddr {cloud} meta l4proto esp drop"]
    raise ValueError(fault)


def round_trip_works(lab: Lab) -> bool:
    r = lab.exec("lan", "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", lab.plan.vpc_host, check=False)
    v = lab.exec("vpc", "ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", lab.plan.lan_host, check=False)
    return r.returncode == 0 and v.returncode == 0


def cloud_moved_s(lab: Lab, t0: float) -> float | None:
    for e in cloud_model.events(lab, "cloud.sending"):
        if e["t"] >= t0 and e["tunnel"] in (1, [1]):
            return e["t"] - t0
    return None


class Labs:
    """One lab at a time (route, then BGP): the guest has room for one."""

    def __init__(self) -> None:
        self.current: tuple[str, RunningLab] | None = None

    def get(self, mode: str) -> RunningLab:
        if self.current and self.current[0] == mode:
            return self.current[1]
        self.close()
        opts = ROUTE if mode == "route" else BGP
        lab = Lab(prefix=f"vv{uuid.uuid4().hex[:6]}")
        rl = RunningLab(lab, opts)
        self.current = (mode, rl)
        rl.config = scenario.up(lab, opts)
        rl.start_vpnd()
        return rl

    def close(self) -> None:
        if self.current is None:
            return
        _, rl = self.current
        self.current = None
        keep = Path(os.environ.get("VPND_TEST_LOGS", "/tmp/vpnd-test-logs"))
        keep.mkdir(parents=True, exist_ok=True)
        for f in ("vpnd.log", "cloud-model.log"):
            if (rl.lab.dir / f).exists():
                shutil.copy(rl.lab.dir / f, keep / f"{rl.lab.prefix}-{f}")
        rl.lab.destroy()


@pytest.fixture(scope="module")
def labs():
    reason = lab_skip_reason()
    if reason is None and not native_supported():
        reason = "this kernel has no XFRM interfaces: run through tests/vm/test_vm_vendor.py (vm tier)"
    if reason:
        pytest.skip(reason)
    got = Labs()
    try:
        yield got
    finally:
        got.close()


def on_tunnel1(rl: RunningLab, mode: str) -> None:
    """Where every scenario starts: both tunnels up, vpnd and the cloud on tunnel 1, the
    cloud's check (route mode) has seen both tunnels answer."""
    lab = rl.lab
    wait_until("both tunnels up", lambda: both_established(lab), 180)
    if mode == "bgp":
        from vpnd_lab import frr
        wait_until("both BGP sessions", lambda: len(frr.established_peers(lab, "cgw")) == 2, 300, interval=0.5)
    wait_until("vpnd's route on tunnel 1 (ipsec0)", lambda: vpc_device(lab) == "ipsec0", 120, interval=0.1)
    wait_until("the cloud sends on tunnel 1 (cloud0)", lambda: cloud_device(lab) == "cloud0", 120, interval=0.1)
    wait_until("round trip works", lambda: round_trip_works(lab), 60, interval=0.5)
    if mode == "route":
        time.sleep(1.5 * CHECK[0] * CHECK[1])      # the cloud's check passes on both again


def scenario_run(labs: Labs, mode: str, fault: str) -> None:
    rl = labs.get(mode)
    on_tunnel1(rl, mode)
    lab = rl.lab
    name = f"{mode}_{fault}"
    watch = StatusWatch(rl)
    pinger = Pinger(lab, duration=300)
    streams = Streams(lab, duration=300)
    seen = len(rl.events("connection.active_changed", active="tunnel2"))
    # Python starts in seconds under TCG: the fault only once all three measure (the first
    # run injected it while the streams were still starting: their one-way gaps came out short)
    wait_until("pings and both streams flowing", lambda: (pinger.last_answer() or 0) > time.time() - 0.5
               and streams.flowing_since(time.time() - 0.5), 120, interval=0.1)
    time.sleep(1.0)
    faults.random_phase(ROUTE.interval)
    faults._drop(lab, fault_rules(lab, fault))
    t0 = time.time()
    m0 = time.monotonic()
    try:
        switch_s = wait_until("vpnd moves to tunnel 2 (ipsec1)", lambda: vpc_device(lab) == "ipsec1", 120,
                              interval=0.01)
        wait_until("traffic both ways again", lambda: (pinger.last_answer() or 0) > t0 + switch_s
                   and streams.flowing_since(t0 + switch_s), 120, interval=0.05)
        back_s = time.monotonic() - m0
        time.sleep(1.0)
        report = pinger.stop()
        one_way = streams.stop()
        assert round_trip_works(lab), "LAN <-> VPC after the failover"
        moved = cloud_moved_s(lab, t0)
        e = rl.wait_event("connection.active_changed", after=seen, active="tunnel2", timeout=30)
        FIGURES[f"{name}_reason"] = e["reason"]
        b = PROBE_BUDGET
        record(name, switch_s=switch_s, flowing_s=back_s, cloud_moved_s=moved,
               outage_ms=report.outage_ms, outage_lan_to_vpc_ms=one_way.lan_to_vpc.outage_ms,
               outage_vpc_to_lan_ms=one_way.vpc_to_lan.outage_ms,
               switch_x_budget=switch_s / b, outage_x_budget=report.outage_ms / 1000 / b,
               lan_to_vpc_x_budget=one_way.lan_to_vpc.outage_ms / 1000 / b,
               vpc_to_lan_x_budget=one_way.vpc_to_lan.outage_ms / 1000 / b,
               cloud_moved_x_budget=None if moved is None else moved / b)
        # Stays on tunnel 2 past the preempt delay: the broken tunnel 1 is not preempted onto.
        time.sleep(ROUTE.preempt_delay + 1.0)
        assert vpc_device(lab) == "ipsec1", "moved back onto the broken tunnel 1"
    finally:
        watch.stop()
        pinger.stop()
        streams.stop()
        faults.repair(lab)
    assert watch.samples > 10, watch.samples
    assert not watch.bad, f"tunnel 2 shown unusable because of tunnel 1's failure: {watch.bad[:3]}"
    # repaired: vpnd back on tunnel 1 after its preempt delay, the cloud fails back itself
    wait_until("vpnd back on tunnel 1", lambda: vpc_device(lab) == "ipsec0", 180, interval=0.1)
    wait_until("the cloud back on tunnel 1", lambda: cloud_device(lab) == "cloud0", 180, interval=0.1)
    wait_until("round trip works after the repair", lambda: round_trip_works(lab), 60, interval=0.5)


def test_route_tunnel1_black_holed_both_ways(labs):
    scenario_run(labs, "route", "both")


def test_route_lan_to_vpc_dropped_only(labs):
    scenario_run(labs, "route", "lan_to_vpc")


def test_route_vpc_to_lan_dropped_only(labs):
    scenario_run(labs, "route", "vpc_to_lan")


def test_route_ike_alive_esp_dead(labs):
    # Today the cloud leaves tunnel 1 here only by its health check (ON: 1 s x 3), its SAs
    # stay up (DPD passes). Once vpnd tears the failing CHILD SA down (branch `parked`), the
    # cloud's move no longer needs its check: run this one with cloud_check=None then.
    scenario_run(labs, "route", "esp")


def test_bgp_tunnel1_black_holed_both_ways(labs):
    scenario_run(labs, "bgp", "both")

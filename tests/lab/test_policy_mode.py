"""Policy mode on the lab (libipsec backend): both tunnels carry LAN <-> VPC, vpnd picks the
CHILD SA that carries it. Which tunnel does is read from charon's own per-SA counters while
LAN -> VPC pings run, never from vpnd's word."""

from __future__ import annotations

import signal
import time

import pytest

from vpnd_testing.lab_metrics import scrape
from vpnd_lab import daemons, faults
from vpnd_lab.cli import both_established, list_sas, policy_carrier, wait_until
from vpnd_lab.pinger import Pinger

pytestmark = pytest.mark.lab


def carrier_is(lab, tunnel: str) -> bool:
    return policy_carrier(lab.lab) == tunnel


def ready(lab, pinger_s: float = 60):
    """vpnd up, tunnel 1 chosen and carrying the pings (which run from here on)."""
    if lab.vpnd_pid is None:
        lab.start_vpnd()
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    lab.wait_event("policy.switched", active="tunnel1", timeout=lab.opts.preempt_delay + 20)
    pinger = Pinger(lab.lab, duration=pinger_s)
    wait_until("LAN -> VPC on tunnel 1", lambda: carrier_is(lab, "tunnel1"), 10)
    return pinger


def test_black_hole_moves_traffic_and_preempt_brings_it_back(make_lab):
    lab = make_lab(routing="policy", preempt_delay=2.0)
    pinger = ready(lab)
    states = len(lab.events("tunnel.state_changed"))
    seen = len(lab.events("connection.active_changed", active="tunnel2"))
    switched = len(lab.events("policy.switched", active="tunnel2"))
    faults.blackhole(lab.lab, 0, "libipsec", "policy")
    wait_until("traffic on tunnel 2", lambda: carrier_is(lab, "tunnel2"), 15, interval=0)
    time.sleep(0.3)
    report = pinger.stop()
    assert report.received > 0, report
    assert report.outage_ms < 2000, report      # bench/failover.py measures; here: bounded
    e = lab.wait_event("connection.active_changed", after=seen, active="tunnel2", timeout=5)
    assert "probes lost" in e["reason"], e
    assert lab.wait_event("policy.switched", after=switched, active="tunnel2", timeout=5)["op"] == "replace_child"

    pinger = Pinger(lab.lab, duration=30)
    faults.repair(lab.lab)
    t0 = time.monotonic()
    wait_until("back on tunnel 1", lambda: carrier_is(lab, "tunnel1"), 15, interval=0)
    assert time.monotonic() - t0 >= 1.9, "not before the preempt delay"
    time.sleep(0.3)
    back = pinger.stop()
    assert back.outage_ms < 1000, f"moving back to a healthy tunnel loses (almost) nothing: {back}"
    # IKE stayed up and vpnd's CHILD SA replacements are rekeys to the core: no tunnel changed
    assert lab.events("tunnel.state_changed")[states:] == []


def test_ike_sa_killed_switches_at_once(make_lab):
    lab = make_lab(routing="policy", preempt_delay=5.0)
    pinger = ready(lab)
    faults.terminate_ike(lab.lab, "vpc1", "tunnel1")
    e = lab.wait_event("connection.active_changed", active="tunnel2", timeout=10)
    assert "probes lost" not in e["reason"], "a lost CHILD SA switches without waiting for probes"
    wait_until("traffic on tunnel 2", lambda: carrier_is(lab, "tunnel2"), 10)
    # vpnd re-initiates tunnel 1; on libipsec its new CHILD SA would take the traffic back
    # (newest wins) before the preempt delay: vpnd re-asserts tunnel 2
    lab.wait_event("tunnel.state_changed", tunnel="tunnel1", to="established", after=1, timeout=10)
    lab.wait_event("policy.reasserted", active="tunnel2", timeout=5)
    assert carrier_is(lab, "tunnel2")
    report = pinger.stop()
    # the outage includes any gap still open at stop(): bounded means traffic flows on tunnel 2
    assert report.received > 0 and report.outage_ms < 2000, report


def test_vpnd_sigkilled_and_restarted_switches_nothing(make_lab):
    lab = make_lab(routing="policy")
    pinger = ready(lab)
    before = list_sas(lab.lab)
    switched = len(lab.events("policy.switched"))
    lab.stop_vpnd(sig=signal.SIGKILL)
    assert carrier_is(lab, "tunnel1"), "traffic stays while vpnd is away"
    lab.start_vpnd()
    adopted = lab.wait_event("policy.switched", after=switched, timeout=20)
    assert adopted["active"] == "tunnel1" and adopted["op"] == "adopted", adopted
    time.sleep(1.5)     # let the restarted vpnd probe and decide; nothing may move
    assert carrier_is(lab, "tunnel1")
    assert list_sas(lab.lab) == before, "no CHILD SA replaced, none re-negotiated"
    assert len(lab.events("policy.switched")) == switched + 1
    report = pinger.stop()
    assert report.outage_ms < 500, report      # no outage (a loaded CI box may delay a few pings)


def test_restarted_on_tunnel2_keeps_traffic_there(make_lab):
    """Traffic on tunnel 2 (tunnel 1 black-holed, then repaired: preempt pending), vpnd
    SIGKILLed and restarted: it reads charon's CHILD SAs, adopts tunnel 2 and replaces no
    CHILD SA."""
    lab = make_lab(routing="policy", preempt_delay=30.0)
    ready(lab).stop()
    faults.blackhole(lab.lab, 0, "libipsec", "policy")
    wait_until("traffic on tunnel 2", lambda: carrier_is(lab, "tunnel2"), 15)
    faults.repair(lab.lab)
    lab.wait_event("policy.switched", active="tunnel2", timeout=5)
    pinger = Pinger(lab.lab, duration=30)
    before = list_sas(lab.lab)
    switched = len(lab.events("policy.switched"))
    kept = len(lab.events("connection.active_changed", active="tunnel2"))
    lab.stop_vpnd(sig=signal.SIGKILL)
    lab.start_vpnd()
    assert lab.wait_event("policy.adopted", timeout=20)["active"] == "tunnel2"
    e = lab.wait_event("connection.active_changed", after=kept, active="tunnel2", timeout=20)
    assert "traffic was on it when vpnd started" in e["reason"], e
    adopted = lab.wait_event("policy.switched", after=switched, timeout=5)
    assert adopted["active"] == "tunnel2" and adopted["op"] == "adopted", adopted
    time.sleep(1.0)
    assert carrier_is(lab, "tunnel2")
    assert list_sas(lab.lab) == before, "no CHILD SA replaced, none re-negotiated"
    report = pinger.stop()
    assert report.outage_ms < 500, report      # no outage (a loaded CI box may delay a few pings)


def test_the_cloud_moving_traffic_is_followed(make_lab, tmp_path):
    """XfrmInTmplMismatch rising (the vendor's signal; libipsec never counts, so the test
    writes the counter vpnd reads): vpnd follows to tunnel 2, says so, and stays there."""
    lab = make_lab(routing="policy", preempt_delay=1.0)
    stat = tmp_path / "xfrm_stat"
    stat.write_text("XfrmInTmplMismatch      \t0\n")
    lab.vpnd_pid = daemons.start_vpnd(lab.lab, lab.lab.dir / "vpnd.toml",
                                      extra_env={"VPND_XFRM_STAT": str(stat)})
    pinger = ready(lab)
    time.sleep(1.0)                                     # past hold_down since the first choice
    for n in (5, 17, 30):
        stat.write_text(f"XfrmInTmplMismatch      \t{n}\n")
        time.sleep(0.25)
    e = lab.wait_event("connection.active_changed", active="tunnel2", timeout=5)
    assert e["reason"] == "cloud moved traffic to tunnel2, following", e
    assert lab.events("xfrm.in_tmpl_mismatch")
    assert "vpnd_xfrm_in_tmpl_mismatch 30.0" in scrape(lab.lab)
    wait_until("traffic on tunnel 2", lambda: carrier_is(lab, "tunnel2"), 10)
    time.sleep(2.0)                                     # > preempt_delay: the cloud's choice stays
    assert carrier_is(lab, "tunnel2")
    assert not lab.events("connection.active_changed", active="tunnel1", reason="preferred")
    report = pinger.stop()
    assert report.outage_ms < 500, report      # no outage (a loaded CI box may delay a few pings)

"""Policy mode on kernel XFRM (charon's kernel-netlink): runs INSIDE the vm backend's guest.

tests/vm/test_vm_policy_xfrm.py boots one guest and runs this file there (`pytest -m lab
tests/vm/guest_policy_xfrm.py`); it is not collected by ordinary runs (its name does not start
with test_). The native backend with `routing = "policy"`: in cgw no XFRM interface, both
tunnels' CHILD SAs carry 172.16.0.0/16 <-> 192.168.0.0/16 and the kernel's one policy per
selector picks the SA; the cloud is route-based and answers on the tunnel a flow arrived on,
or on the one `faults.cloud_sends_on` names (docs/lab.md).

Evidence is the kernel's and charon's, never vpnd's word: the outbound policy's template
(`ip xfrm policy`: which tunnel's endpoints, which SPI), charon's per-CHILD SA counters
around a LAN -> VPC burst (`policy_carrier`), /proc/net/xfrm_stat, CHILD SA unique ids.
One lab and one vpnd for all scenarios, in file order (Python start-up and a lab cost many
seconds under TCG); each starts from traffic on tunnel 1 except where it says. Figures go to
$VPND_GUEST_FIGURES (JSON) for the host to print.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest
from vpnd_testing.lab_fixtures import RunningLab, lab_skip_reason

from vpnd_lab import daemons, faults, scenario
from vpnd_lab.cli import both_established, native_supported, policy_carrier, wait_until
from vpnd_lab.pinger import Pinger
from vpnd_lab.topology import Lab, sh

pytestmark = pytest.mark.lab

PREEMPT_DELAY = 5.0
OPTS = scenario.Options(backend="native", routing="policy", interval=0.25, timeout=1.0, retries=3,
                        preempt_delay=PREEMPT_DELAY)
PROBE_BUDGET = OPTS.retries * OPTS.interval + (OPTS.timeout or OPTS.interval)
LAN, VPC = "172.16.0.0/16", "192.168.0.0/16"
CLOUD = {"tunnel1": "198.18.0.1", "tunnel2": "198.18.0.11"}
FIGURES: dict[str, object] = {}


def record(**figures: object) -> None:
    FIGURES.update({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()})
    path = os.environ.get("VPND_GUEST_FIGURES")
    if path:
        Path(path).write_text(json.dumps(FIGURES, indent=1, sort_keys=True))


# --- the kernel's and charon's view ----------------------------------------------------------

def policies(lab: Lab, src: str = LAN, dst: str = VPC) -> dict[str, dict]:
    """`ip xfrm policy` in cgw for one selector: per direction, its priority and template."""
    out: dict[str, dict] = {}
    text = lab.ip("cgw", "xfrm", "policy", "list", "src", src, "dst", dst).stdout
    text += lab.ip("cgw", "xfrm", "policy", "list", "src", dst, "dst", src).stdout
    for block in text.split("\nsrc ")[0:]:
        w = block.split()
        if "dir" not in w or "tmpl" not in w:
            continue
        d = w[w.index("dir") + 1]
        t = w.index("tmpl")
        out.setdefault(d, {"count": 0})
        out[d]["count"] += 1
        out[d].update(priority=int(w[w.index("priority") + 1]), src=w[t + 2], dst=w[t + 4],
                      spi=int(w[w.index("spi") + 1], 16) if "spi" in w else None)
    return out


def kernel_names(lab: Lab) -> str | None:
    """The tunnel whose endpoints the outbound LAN -> VPC policy's template carries."""
    out = policies(lab).get("out")
    return next((t for t, addr in CLOUD.items() if out and out["dst"] == addr), None)


def children(lab: Lab) -> dict[str, list[dict]]:
    """cgw's installed CHILD SAs per tunnel: unique id, outbound SPI, packets."""
    import vici

    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(daemons.vici_path(lab, "cgw")))
    try:
        out: dict[str, list[dict]] = {}
        for sa in vici.Session(s).list_sas():
            for name, ike in sa.items():
                for child in ike.get("child-sas", {}).values():
                    if child.get("state") == b"INSTALLED":
                        out.setdefault(name.rsplit("-", 1)[-1], []).append({
                            "id": int(child["uniqueid"]), "spi_out": int(child["spi-out"], 16),
                            "packets_out": int(child.get("packets-out", b"0"))})
        return out
    finally:
        s.close()


def child_ids(lab: Lab) -> dict[str, list[int]]:
    return {t: sorted(c["id"] for c in cs) for t, cs in children(lab).items()}


def xfrm_stat(lab: Lab) -> dict[str, int]:
    text = lab.exec("cgw", "cat", "/proc/net/xfrm_stat").stdout
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if line.strip())}


def stat_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def since(event: dict, t_wall: float) -> float:
    """Seconds from `t_wall` (time.time()) to a vpnd log event's timestamp."""
    from datetime import datetime
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp() - t_wall


def carried_by(rl: RunningLab, tunnel: str) -> bool:
    return kernel_names(rl.lab) == tunnel and policy_carrier(rl.lab) == tunnel


def on_tunnel1(rl: RunningLab, timeout: float = 120.0) -> None:
    wait_until("both tunnels up", lambda: both_established(rl.lab), timeout)
    wait_until("LAN -> VPC on tunnel 1", lambda: carried_by(rl, "tunnel1"), timeout, interval=0.2)


def switched(rl: RunningLab, after: int, active: str, timeout: float = 30.0) -> dict:
    return rl.wait_event("policy.switched", after=after, active=active, timeout=timeout)


@pytest.fixture(scope="module")
def rl():
    reason = lab_skip_reason()
    if reason is None and not native_supported():
        reason = "this kernel has no ESP/XFRM interfaces: run through tests/vm/test_vm_policy_xfrm.py (vm tier)"
    if reason:
        pytest.skip(reason)
    lab = Lab(prefix=f"px{uuid.uuid4().hex[:6]}")
    running = RunningLab(lab, OPTS)
    try:
        t0 = time.monotonic()
        running.config = scenario.up(lab, OPTS)
        running.start_vpnd()
        running.wait_event("policy.switched", active="tunnel1", timeout=180)
        on_tunnel1(running)
        record(lab_and_vpnd_up_s=time.monotonic() - t0)
        yield running
    finally:
        keep = Path(os.environ.get("VPND_TEST_LOGS", "/tmp/vpnd-test-logs"))
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("vpnd.log", "charon-cgw.log"):
            if (lab.dir / name).exists():
                shutil.copy(lab.dir / name, keep / f"{lab.prefix}-{name}")
        lab.destroy()


def test_both_children_share_one_kernel_policy_and_priority_1_carries(rl):
    """(a) Both CHILD SAs installed with priorities 1/2: one kernel policy per direction for
    LAN <-> VPC, its template tunnel 1's endpoints and outbound SPI, and charon's counters
    put a LAN -> VPC burst on tunnel 1's CHILD SA only."""
    on_tunnel1(rl)
    lab = rl.lab
    pol = policies(lab)
    record(kernel_policies_lan_vpc={d: p["count"] for d, p in pol.items()})
    assert {d: p["count"] for d, p in pol.items()} == {"out": 1, "in": 1, "fwd": 1}, pol
    assert pol["out"]["priority"] == 1 and pol["out"]["dst"] == CLOUD["tunnel1"], pol
    assert pol["in"]["src"] == pol["fwd"]["src"] == CLOUD["tunnel1"], pol
    kids = children(lab)
    assert len(kids["tunnel1"]) == len(kids["tunnel2"]) == 1, kids
    assert pol["out"]["spi"] == kids["tunnel1"][0]["spi_out"], (pol, kids)
    assert policy_carrier(lab, count=50) == "tunnel1"


def test_a_rekey_of_the_standby_does_not_take_the_traffic(rl):
    """(c) swanctl --rekey of tunnel 2's CHILD SA (priority 2): a new CHILD SA on tunnel 2,
    the kernel policy and the traffic stay on tunnel 1, vpnd re-asserts nothing."""
    on_tunnel1(rl)
    lab = rl.lab
    before = child_ids(lab)
    reasserted = len(rl.events("policy.reasserted"))
    pinger = Pinger(lab, duration=60)
    r = sh("swanctl", "--rekey", "--child", "vpnd-vpc1-tunnel2", "--uri",
           f"unix://{daemons.vici_path(lab, 'cgw')}", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until("tunnel 2's CHILD SA rekeyed", lambda: child_ids(lab).get("tunnel2", before["tunnel2"])
               not in ([], before["tunnel2"]) and len(child_ids(lab)["tunnel2"]) == 1, 30, interval=0.1)
    time.sleep(1.0)         # vpnd's kernel check after the install runs meanwhile
    report = pinger.stop()
    after = child_ids(lab)
    assert after["tunnel1"] == before["tunnel1"], (before, after)
    assert kernel_names(lab) == "tunnel1" and policy_carrier(lab) == "tunnel1"
    assert len(rl.events("policy.reasserted")) == reasserted
    record(standby_rekey_outage_ms=report.outage_ms, standby_rekey_children=[before, after])
    assert report.outage_ms < 1000, report


def test_black_hole_moves_traffic_to_tunnel2_and_preempt_brings_it_back(rl):
    """(b) tunnel 1's ESP dropped in the cloud, IKE up: vpnd's probes fail, it switches in
    policy mode (priorities reloaded, tunnel 2 gets a fresh CHILD SA at priority 1), the
    kernel policy and the traffic move; after the repair back to tunnel 1, not before the
    preempt delay."""
    on_tunnel1(rl)
    lab = rl.lab
    seen = len(rl.events("connection.active_changed", active="tunnel2"))
    sw = len(rl.events("policy.switched", active="tunnel2"))
    pinger = Pinger(lab, duration=60)
    time.sleep(1.0)
    t_fault = time.time()
    faults.blackhole(lab, 0, "native", "policy")
    moved_s = wait_until("the kernel policy names tunnel 2", lambda: kernel_names(lab) == "tunnel2", 60,
                         interval=0.005)
    time.sleep(1.0)
    report = pinger.stop()
    e = rl.wait_event("connection.active_changed", after=seen, active="tunnel2", timeout=10)
    assert "probes lost" in e["reason"], e
    done = switched(rl, sw, "tunnel2")
    assert done["op"] == "replace_child", done
    assert policy_carrier(lab) == "tunnel2"
    assert policies(lab)["out"]["priority"] == 1
    assert report.received > 0 and report.outage_ms / 1000 < moved_s + 3.0, (report, moved_s)
    record(blackhole_decision_s=since(e, t_fault), blackhole_switched_s=since(done, t_fault),
           blackhole_kernel_moved_s=moved_s, blackhole_outage_ms=report.outage_ms,
           blackhole_switch_vici_ms=done["vici_ms"], blackhole_switch_total_ms=done["total_ms"],
           probe_budget_s=PROBE_BUDGET)

    pinger = Pinger(lab, duration=120)
    faults.repair(lab)
    back_s = wait_until("back on tunnel 1", lambda: kernel_names(lab) == "tunnel1", PREEMPT_DELAY + 60,
                        interval=0.01)
    time.sleep(0.5)
    back = pinger.stop()
    record(failback_s=back_s, failback_outage_ms=back.outage_ms, preempt_delay_s=PREEMPT_DELAY)
    assert back_s >= PREEMPT_DELAY, "moved back before the preempt delay"
    assert policy_carrier(lab) == "tunnel1"
    assert back.outage_ms < 1000, f"moving back to a healthy tunnel loses (almost) nothing: {back}"


def test_the_cloud_sending_on_tunnel2_counts_in_tmpl_mismatch_and_vpnd_follows(rl):
    """(d) The cloud sends to the LAN on tunnel 2 while our inbound policies name tunnel 1.
    First with vpnd stopped (SIGSTOP), a counted burst: every answer is dropped and counted
    by the kernel; which /proc/net/xfrm_stat counters rose, and by how much, is recorded.
    Then vpnd runs again: it logs xfrm.in_tmpl_mismatch, follows ("cloud moved traffic"), and
    the kernel policy then names tunnel 2."""
    on_tunnel1(rl)
    lab = rl.lab
    time.sleep(OPTS.hold_down)
    seen = len(rl.events("connection.active_changed", active="tunnel2"))
    mism = len(rl.events("xfrm.in_tmpl_mismatch"))
    os.kill(rl.vpnd_pid, signal.SIGSTOP)
    try:
        stat0 = xfrm_stat(lab)
        faults.cloud_sends_on(lab, 1)
        burst = 20
        ping = lab.exec("lan", "ping", "-n", "-q", "-c", str(burst), "-i", "0.05", "-W", "1", lab.plan.vpc_host,
                        check=False)
        time.sleep(0.5)
        delta = stat_delta(stat0, xfrm_stat(lab))
        answered = int(ping.stdout.split(" received")[0].rsplit(" ", 1)[1])
        record(cloud_on_tunnel2_burst=burst, cloud_on_tunnel2_answered=answered,
               cloud_on_tunnel2_xfrm_stat_delta=delta)
        assert answered == 0, ping.stdout
        assert delta.get("XfrmInTmplMismatch") == burst, delta
        assert kernel_names(lab) == "tunnel1"
        pinger = Pinger(lab, duration=60)
        t0, t_cont = time.monotonic(), time.time()
    finally:
        os.kill(rl.vpnd_pid, signal.SIGCONT)
    try:
        e = rl.wait_event("connection.active_changed", after=seen, active="tunnel2", timeout=30)
        moved_s = wait_until("the kernel policy names tunnel 2", lambda: kernel_names(lab) == "tunnel2", 30,
                             interval=0.005) + time.monotonic() - t0
        time.sleep(1.0)
        report = pinger.stop()
        first = rl.events("xfrm.in_tmpl_mismatch")[mism]
        done = rl.wait_event("policy.switched", active="tunnel2", after=len(rl.events("policy.switched",
                             active="tunnel2")) - 1, timeout=5)
        record(cloud_move_first_mismatch_event_s=since(first, t_cont), cloud_move_decision_s=since(e, t_cont),
               cloud_move_switched_s=since(done, t_cont), cloud_move_kernel_moved_s=moved_s,
               cloud_move_outage_ms=report.outage_ms)
        assert e["reason"] == "cloud moved traffic to tunnel2, following", e
        assert len(rl.events("xfrm.in_tmpl_mismatch")) > mism
        assert policy_carrier(lab) == "tunnel2"
        assert report.received > 0, report
    finally:
        faults.cloud_sends_on(lab, None)     # the cloud answers where traffic arrives again


def test_vpnd_sigkilled_and_restarted_adopts_what_the_kernel_uses(rl):
    """(e) Traffic on tunnel 2 (the cloud's choice, followed above; the cloud now answers where
    traffic arrives). vpnd SIGKILLed and restarted: it reads the kernel's outbound policy,
    adopts tunnel 2 and replaces no CHILD SA; tunnel 1 comes back by the ordinary preempt."""
    lab = rl.lab
    wait_until("LAN -> VPC on tunnel 2", lambda: carried_by(rl, "tunnel2"), 30, interval=0.2)
    before = child_ids(lab)
    adopted = len(rl.events("policy.adopted"))
    sw = len(rl.events("policy.switched"))
    sw1 = len(rl.events("policy.switched", active="tunnel1"))
    pinger = Pinger(lab, duration=120)
    rl.stop_vpnd(sig=signal.SIGKILL)
    time.sleep(1.0)
    assert kernel_names(lab) == "tunnel2", "traffic stays while vpnd is away"
    t0 = time.monotonic()
    rl.start_vpnd()
    a = rl.wait_event("policy.adopted", after=adopted, timeout=120)
    first = rl.wait_event("policy.switched", after=sw, timeout=30)
    restart_s = time.monotonic() - t0
    assert a["active"] == "tunnel2", a
    assert first["active"] == "tunnel2" and first["op"] == "adopted", first
    assert child_ids(lab) == before, "no CHILD SA replaced, none re-negotiated"
    assert kernel_names(lab) == "tunnel2"
    # then the preempt: tunnel 1 is preferred and healthy
    back = switched(rl, sw1, "tunnel1", timeout=PREEMPT_DELAY + 60)
    back_s = time.monotonic() - t0
    time.sleep(0.5)
    report = pinger.stop()
    record(restart_to_adopted_s=restart_s, restart_preempt_s=back_s, restart_outage_ms=report.outage_ms)
    assert back["op"] == "replace_child", back
    assert policy_carrier(lab) == "tunnel1"
    assert report.outage_ms < 1000, report
    # every switch and demotion above replaced CHILD SAs: the core never saw one missing
    gaps = [e for e in rl.events("tunnel.state_changed") if "without a CHILD SA" in e.get("reason", "")]
    assert gaps == [], gaps


def test_on_a_priority_tie_the_newest_child_sa_takes_the_policy(rl):
    """What vpnd's switch relies on: the chosen tunnel's fresh CHILD SA at priority 1 takes
    the kernel policy from the old carrier's CHILD SA, also at priority 1 until its demotion.
    With vpnd stopped (last: it would correct this): tunnel 2's conn reloaded at priority 1
    (a tie with tunnel 1's CHILD SA) and initiated without terminating its priority-2 CHILD
    SA first (charon accepts: the config differs, it is no duplicate). The newest wins."""
    lab = rl.lab
    wait_until("LAN -> VPC on tunnel 1", lambda: carried_by(rl, "tunnel1"), 60, interval=0.2)
    rl.stop_vpnd(sig=signal.SIGKILL)
    import copy

    import vici

    from vpnd.charon.adapter import desired_from_config
    name = "vpnd-vpc1-tunnel2"
    body = copy.deepcopy(desired_from_config(rl.config, {"vpc1": "tunnel1"}).conns[name])
    assert body["children"][name]["priority"] == "2"
    body["children"][name]["priority"] = "1"
    before = child_ids(lab)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(str(daemons.vici_path(lab, "cgw")))
    try:
        session = vici.Session(s)
        session.load_conn({name: body})
        list(session.initiate({"child": name, "ike": name, "timeout": 20000}))
    finally:
        s.close()
    after = child_ids(lab)
    record(tie_children=[before, after])
    assert len(after["tunnel2"]) == 2 and after["tunnel1"] == before["tunnel1"], (before, after)
    assert policies(lab)["out"]["priority"] == 1
    wait_until("the kernel policy names tunnel 2", lambda: kernel_names(lab) == "tunnel2", 10, interval=0.05)
    assert policy_carrier(lab) == "tunnel2"

"""BGP mode on the lab: vpnd configures cgw's (empty) FRR itself, both sessions come up over
the two tunnels, zebra installs the VPC prefix, standby = "prepend" keeps traffic on tunnel 1,
and a black-holed tunnel 1 makes vpnd shut that neighbor so LAN->VPC traffic moves to tunnel 2
within the probe budget (not BGP's hold time). The way back, drain and failover --to are the
core's decisions (SetActive moves the standby route-maps): traffic returns after
preempt_delay, and drain moves it without shutting tunnel 1's session. A killed and restarted
FRR is re-configured."""

from __future__ import annotations

import time

import pytest

from vpnd_testing.lab_fixtures import BGP_PEERS, bgp_lab
from vpnd_lab import faults, frr
from vpnd_lab.cli import wait_until
from vpnd_lab.pinger import Pinger

pytestmark = pytest.mark.lab

PEERS = BGP_PEERS


def cloud_best(lab) -> str | None:
    """The peer of the cloud's best BGP path to the LAN prefix (our announcement): the other
    direction of standby = "prepend"."""
    import json

    out = frr.vtysh(lab.lab, "cloud", "-c", f"show bgp ipv4 unicast {lab.lab.plan.lan_net} json")
    for path in json.loads(out or "{}").get("paths", []):
        if path.get("bestpath", {}).get("overall"):
            return path.get("peer", {}).get("peerId")
    return None


def vpc_device(lab) -> str | None:
    out = lab.lab.exec("cgw", "ip", "route", "get", lab.lab.plan.vpc_host, check=False).stdout.split()
    return out[out.index("dev") + 1] if "dev" in out else None


def test_bgp_failover_moves_traffic_within_the_probe_budget(make_lab):
    lab = bgp_lab(make_lab)
    assert vpc_device(lab) == "vxlan1", "standby = prepend: tunnel 1 carries the traffic"
    lab.wait_event("bgp.session_changed", tunnel="tunnel1", established=True, timeout=5)
    pinger = Pinger(lab.lab, duration=30)
    wait_until("LAN->VPC answers", lambda: lab.lab.exec(
        "lan", "ping", "-c", "1", "-W", "1", lab.lab.plan.vpc_host, check=False).returncode == 0, 10)
    faults.blackhole(lab.lab, 0, "libipsec")
    took = wait_until("traffic on tunnel 2", lambda: vpc_device(lab) == "vxlan2", 10, interval=0.005)
    shut = lab.wait_event("bgp.neighbor_set", tunnel="tunnel1", enabled=False, timeout=5)
    time.sleep(0.5)         # answers through tunnel 2, so the outage has an end
    report = pinger.stop()
    print(f"bgp failover: route moved {took * 1000:.0f} ms after the fault, LAN->VPC outage "
          f"{report.outage_ms:.0f} ms ({report.line()}), neighbor shutdown took {shut['reaction_ms']} ms")
    assert took < 2.0, "within the probe budget (0.1 s x 3), far below the 3 s hold time"
    assert report.outage_ms < 2000 and report.received > 0
    assert "169.254.10.1" not in frr.established_peers(lab.lab, "cgw")
    # tunnel 1 heals: vpnd re-enables its neighbor; its session comes back with the standby
    # route-maps, so traffic stays on tunnel 2 until preempt_delay has passed
    faults.repair(lab.lab)
    lab.wait_event("bgp.neighbor_set", tunnel="tunnel1", enabled=True, timeout=10)
    lab.wait_event("bgp.session_changed", tunnel="tunnel1", established=True, after=1, timeout=15)
    back = time.monotonic()
    time.sleep(1.0)
    assert "169.254.10.1" in frr.established_peers(lab.lab, "cgw")
    assert vpc_device(lab) == "vxlan2", "tunnel 1's session is back, but preempt_delay has not passed"
    wait_until("tunnel 1 carries again", lambda: vpc_device(lab) == "vxlan1", 10, interval=0.02)
    returned = time.monotonic() - back
    print(f"bgp preempt: traffic back on tunnel 1 {returned:.2f} s after its session came back "
          f"(preempt_delay {lab.opts.preempt_delay} s)")
    assert returned >= lab.opts.preempt_delay - 0.3
    moved = lab.wait_event("bgp.standby_moved", active="tunnel1", after=0, timeout=1)
    assert moved["commands"] == 4


def test_restarted_frr_is_reconfigured(make_lab):
    lab = bgp_lab(make_lab)
    applied = len(lab.events("frr.applied"))
    frr.restart(lab.lab, "cgw", sig=9)
    lab.wait_event("frr.applied", after=applied, timeout=20)
    wait_until("both BGP sessions back", lambda: frr.established_peers(lab.lab, "cgw") == PEERS, 30,
               interval=0.1)
    assert "router bgp 65530" in frr.vtysh(lab.lab, "cgw", "-c", "show running-config bgpd")
    assert not lab.events("frr.watch_error")


def test_ecmp_keeps_both_tunnels_active(make_lab):
    """standby = "ecmp" (the vendor's transit-router case): zebra installs the VPC prefix
    over both tunnels; a black-holed tunnel 1 leaves tunnel 2 alone in the route."""
    lab = bgp_lab(make_lab, standby="ecmp")

    def nexthops() -> set[str]:
        out = lab.lab.ip("cgw", "route", "show", lab.lab.plan.vpc_net, "proto", "bgp").stdout.split()
        return {out[i + 1] for i, w in enumerate(out) if w == "dev"}

    wait_until("both tunnels in the multipath route", lambda: nexthops() == {"vxlan1", "vxlan2"}, 20,
               interval=0.1)
    faults.blackhole(lab.lab, 0, "libipsec")
    wait_until("tunnel 1 leaves the route", lambda: nexthops() == {"vxlan2"}, 10, interval=0.01)
    lab.wait_event("bgp.neighbor_set", tunnel="tunnel1", enabled=False, timeout=5)


def test_drain_and_failover_move_traffic_without_shutting_sessions(make_lab):
    """standby = "prepend": drain / failover --to swap the route-maps (allow-all follows the
    active tunnel); both BGP sessions stay Established and LAN->VPC keeps answering."""
    from test_control_lab import vpnd as vpnd_cli

    lab = bgp_lab(make_lab)
    sock = str(lab.lab.dir / "control.sock")
    lab.wait_event("connection.active_changed", to="tunnel1", timeout=10)
    assert vpc_device(lab) == "vxlan1"
    # both directions: the cloud prefers our announcement over tunnel 1 (tunnel 2's prepended)
    wait_until("cloud's best path to the LAN via tunnel 1",
               lambda: cloud_best(lab) == "169.254.10.2", 10, interval=0.05)
    pinger = Pinger(lab.lab, duration=30)
    wait_until("LAN->VPC answers", lambda: lab.lab.exec(
        "lan", "ping", "-c", "1", "-W", "1", lab.lab.plan.vpc_host, check=False).returncode == 0, 10)
    t0 = time.monotonic()
    p = vpnd_cli("drain", "tunnel1", "--socket", sock)
    replied = time.monotonic() - t0
    assert p.returncode == 0 and "active tunnel: tunnel2" in p.stdout, p
    wait_until("LAN->VPC on tunnel 2", lambda: vpc_device(lab) == "vxlan2", 5, interval=0.002)
    moved = time.monotonic() - t0
    swap = lab.wait_event("bgp.standby_moved", active="tunnel2", timeout=2)
    print(f"bgp drain: reply after {replied * 1000:.0f} ms, LAN->VPC route on tunnel 2 "
          f"{moved * 1000:.0f} ms after the command (route-map swap + soft clear "
          f"{swap['reaction_ms']} ms)")
    assert moved < 2.0
    wait_until("cloud's best path to the LAN via tunnel 2",
               lambda: cloud_best(lab) == "169.254.20.2", 10, interval=0.05)
    assert frr.established_peers(lab.lab, "cgw") == PEERS, "tunnel 1's session stays up"
    assert not lab.events("bgp.neighbor_set", enabled=False)

    p = vpnd_cli("undrain", "tunnel1", "--socket", sock)      # back after hold_down
    assert p.returncode == 0, p
    wait_until("back on tunnel 1", lambda: vpc_device(lab) == "vxlan1", 10, interval=0.02)
    p = vpnd_cli("failover", "--to", "tunnel2", "--socket", sock)
    assert p.returncode == 0 and "active tunnel: tunnel2" in p.stdout, p
    wait_until("pinned on tunnel 2", lambda: vpc_device(lab) == "vxlan2", 5, interval=0.01)
    time.sleep(0.3)
    report = pinger.stop()
    print(f"bgp drain/undrain/failover: LAN->VPC {report.line()}")
    assert frr.established_peers(lab.lab, "cgw") == PEERS
    assert not lab.events("bgp.neighbor_set", enabled=False)
    assert report.outage_ms < 1000 and report.received > 0


def test_restarted_vpnd_keeps_bgp_traffic_where_it_found_it(make_lab):
    """standby = "prepend", traffic on tunnel 2 (failover --to), vpnd SIGKILLed and restarted:
    it reads the route-map attachments FRR runs, adopts tunnel 2 and pushes no route-map
    change, so the restart moves no traffic (the pin itself is runtime state: the way back is
    then the ordinary preempt)."""
    import signal

    from test_control_lab import vpnd as vpnd_cli

    lab = bgp_lab(make_lab, preempt_delay=30.0)
    sock = str(lab.lab.dir / "control.sock")
    lab.wait_event("connection.active_changed", to="tunnel1", timeout=40)
    p = vpnd_cli("failover", "--to", "tunnel2", "--socket", sock)
    assert p.returncode == 0, p
    wait_until("on tunnel 2", lambda: vpc_device(lab) == "vxlan2", 5, interval=0.01)
    applied = len(lab.events("frr.applied"))
    kept = len(lab.events("connection.active_changed", active="tunnel2"))
    lab.stop_vpnd(sig=signal.SIGKILL)
    lab.start_vpnd()
    assert lab.wait_event("bgp.adopted", timeout=20)["active"] == "tunnel2"
    e = lab.wait_event("connection.active_changed", after=kept, active="tunnel2", timeout=20)
    assert "traffic was on it when vpnd started" in e["reason"], e
    time.sleep(0.5)
    assert vpc_device(lab) == "vxlan2"
    moved = [c for ev in lab.events("frr.applied")[applied:] for c in ev["changes"] if "route-map" in c]
    assert moved == [], f"the restart pushed route-map changes: {moved}"
    assert frr.established_peers(lab.lab, "cgw") == PEERS

"""BGP mode's return path, seen from the cloud's own FRR (real FRR both sides, libipsec):
timers 10/30 as in the vendor's procedure, tunnel 1 black-holed both ways. vpnd fails over
within its probe budget and announces the LAN's halves on tunnel 2 only; the cloud selects
them via tunnel 2 at once, while its session over the dead tunnel 1 is still Established
(its hold timer has 30 s to run), so its return traffic no longer waits for it. After repair
and failback the halves are gone from the cloud; with tunnel 1 alive (drain) they never
arrive over it."""

from __future__ import annotations

import json
import time

import pytest

from vpnd_testing.lab_fixtures import bgp_lab
from vpnd_lab import faults, frr
from vpnd_lab.cli import wait_until
from vpnd_lab.pinger import Pinger

pytestmark = pytest.mark.lab

OURS_T1, OURS_T2 = "169.254.10.2", "169.254.20.2"       # our side, as the cloud sees us
HALVES = ("172.16.0.0/17", "172.16.128.0/17")


def cloud_json(lab, command: str) -> dict:
    return json.loads(frr.vtysh(lab.lab, "cloud", "-c", command) or "{}")


def cloud_selected(lab, prefix: str) -> set[str]:
    """Next hops of the cloud's selected route for exactly `prefix` (zebra's view)."""
    hops: set[str] = set()
    for route in cloud_json(lab, f"show ip route {prefix} json").get(prefix, []):
        if route.get("selected") and route.get("prefix") == prefix:
            hops |= {h.get("ip") for h in route.get("nexthops", []) if h.get("active")}
    return hops


def cloud_paths(lab, prefix: str) -> set[str]:
    """Every BGP path the cloud holds for `prefix`: the peers it came from."""
    out = cloud_json(lab, f"show bgp ipv4 unicast {prefix} json")
    return {p.get("peer", {}).get("peerId") for p in out.get("paths", [])}


def cloud_established(lab) -> set[str]:
    return frr.established_peers(lab.lab, "cloud")


@pytest.mark.parametrize("cloud", ["per-flow", "vendor"])
def test_cloud_returns_via_tunnel_2_before_its_hold_timer(make_lab, cloud):
    """per-flow: the lab's original cloud; vendor: the cloud sends by its BGP best path
    (lab/vpnd_lab/cloud_model.py), so the LAN's round trip shows the return path too. There each
    tunnel probes the cloud's own BGP address (it answers over that tunnel), or the standby's
    probe replies would follow the cloud's best path into the dead tunnel 1."""
    vendor = cloud == "vendor"
    lab = bgp_lab(make_lab, bgp_timers=(10, 30), cloud_model=cloud, probe_peer=vendor)
    wait_until("the cloud has both our sessions", lambda: cloud_established(lab) == {OURS_T1, OURS_T2},
               40, interval=0.1)
    lan = lab.lab.plan.lan_net
    assert all(cloud_paths(lab, h) == set() for h in HALVES), "steady state: no more-specific anywhere"
    assert cloud_selected(lab, lan) == {OURS_T1}, "tunnel 2's announcement is prepended"

    pinger = None
    if vendor:
        pinger = Pinger(lab.lab, duration=60)
        wait_until("LAN->VPC answers", lambda: lab.lab.exec(
            "lan", "ping", "-c", "1", "-W", "1", lab.lab.plan.vpc_host, check=False).returncode == 0, 10)
    t0 = time.monotonic()
    faults.blackhole(lab.lab, 0, "libipsec")
    moved = lab.wait_event("bgp.return_path", timeout=10)
    assert list(moved["announced"]) == list(HALVES) and moved["active"] == {"vpc1": "tunnel2"}
    t_switch = time.monotonic()
    wait_until("the cloud routes the LAN's halves via tunnel 2",
               lambda: all(cloud_selected(lab, h) == {OURS_T2} for h in HALVES), 10, interval=0.02)
    t_cloud = time.monotonic()
    # the point: tunnel 1's session is still up at the cloud (hold 30 s), its stale path to
    # the whole LAN too, yet the halves win by longest match
    assert OURS_T1 in cloud_established(lab), "the cloud's hold timer has not expired"
    assert OURS_T1 in cloud_paths(lab, lan), "the cloud still holds tunnel 1's stale path"
    assert all(cloud_paths(lab, h) == {OURS_T2} for h in HALVES), "tunnel 1 never carries a half"
    if pinger is not None:
        time.sleep(1.0)         # answers again, so the outage has an end
        report = pinger.stop()
        print(f"bgp return path, vendor cloud: LAN round trip {report.line()}")
        assert report.received > 0 and report.outage_ms < 10_000, "not the hold timer's 30 s"
        assert OURS_T1 in cloud_established(lab), "still before the cloud's hold timer"
    print(f"bgp return path ({cloud} cloud): vpnd switched {(t_switch - t0) * 1000:.0f} ms after the fault, the "
          f"cloud selected tunnel 2 for the halves {(t_cloud - t_switch) * 1000:.0f} ms later "
          f"(push {moved['reaction_ms']} ms), tunnel 1 still Established at the cloud")

    # repair: the cloud's old session ends with its hold timer, a new one comes up, vpnd
    # preempts back after preempt_delay and withdraws the halves first
    faults.repair(lab.lab)
    lab.wait_event("bgp.neighbor_set", tunnel="tunnel1", enabled=True, timeout=15)
    back = lab.wait_event("bgp.return_path", after=1, timeout=90)
    assert list(back["withdrawn"]) == list(HALVES) and back["active"] == {"vpc1": "tunnel1"}
    wait_until("the halves gone from the cloud",
               lambda: all(cloud_paths(lab, h) == set() for h in HALVES), 10, interval=0.05)
    wait_until("the cloud returns via tunnel 1 again", lambda: cloud_selected(lab, lan) == {OURS_T1},
               20, interval=0.05)


def test_drain_keeps_the_halves_off_a_live_tunnel_1(make_lab):
    """Tunnel 1 alive and Established, traffic drained to tunnel 2: the cloud gets the halves
    from tunnel 2 only (tunnel 1's out route-map denies them); undrain withdraws them."""
    from test_control_lab import vpnd as vpnd_cli

    lab = bgp_lab(make_lab)
    sock = str(lab.lab.dir / "control.sock")
    lab.wait_event("connection.active_changed", to="tunnel1", timeout=10)
    wait_until("the cloud has both our sessions", lambda: cloud_established(lab) == {OURS_T1, OURS_T2},
               20, interval=0.1)
    p = vpnd_cli("drain", "tunnel1", "--socket", sock)
    assert p.returncode == 0, p
    lab.wait_event("bgp.return_path", timeout=5)
    wait_until("the cloud routes the halves via tunnel 2",
               lambda: all(cloud_selected(lab, h) == {OURS_T2} for h in HALVES), 10, interval=0.02)
    time.sleep(1.0)         # room for a leak over tunnel 1 to show
    assert all(cloud_paths(lab, h) == {OURS_T2} for h in HALVES)
    assert cloud_established(lab) == {OURS_T1, OURS_T2}
    st = vpnd_cli("status", "--socket", sock)
    assert "cloud steered to tunnel2 (more-specifics 172.16.0.0/17, 172.16.128.0/17)" in st.stdout, st.stdout
    p = vpnd_cli("undrain", "tunnel1", "--socket", sock)
    assert p.returncode == 0, p
    wait_until("the halves withdrawn", lambda: all(cloud_paths(lab, h) == set() for h in HALVES), 15,
               interval=0.05)
    assert "cloud steered to tunnel1 (AS-path prepend on the others)" in vpnd_cli(
        "status", "--socket", sock).stdout

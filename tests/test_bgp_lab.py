"""BGP mode on the lab: vpnd configures cgw's (empty) FRR itself, both sessions come up over
the two tunnels, zebra installs the VPC prefix, standby = "prepend" keeps traffic on tunnel 1,
and a black-holed tunnel 1 makes vpnd shut that neighbor so LAN->VPC traffic moves to tunnel 2
within the probe budget (not BGP's hold time). A killed and restarted FRR is re-configured."""

from __future__ import annotations

import time

import pytest

from lab_fixtures import BGP_PEERS, bgp_lab
from vpnd.lab import faults, frr
from vpnd.lab.cli import wait_until
from vpnd.lab.pinger import Pinger

pytestmark = pytest.mark.lab

PEERS = BGP_PEERS


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
    # tunnel 1 heals: vpnd re-enables its neighbor and (preempt) traffic returns to it
    faults.repair(lab.lab)
    lab.wait_event("bgp.neighbor_set", tunnel="tunnel1", enabled=True, timeout=10)
    wait_until("tunnel 1 carries again", lambda: vpc_device(lab) == "vxlan1", 20, interval=0.05)


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

"""Defects 14 and 15 of issue 14 on the lab: a cloud that learns the LAN only over BGP (its
static routes back to the LAN removed), the lab's health check shaped like
config.toml.example's (a VPC destination, a LAN source), cgw's FRR fresh and empty. Both
sessions must reach Established (before: vpnd shut both neighbors after `retries` lost
probes, Idle (Admin) forever), LAN->VPC must answer, and vpnd must never have sent FRR a
command it refused ("% Specify remote-as or peer-group commands first")."""

from __future__ import annotations

import pytest

from vpnd_testing.lab_fixtures import BGP_PEERS
from vpnd_lab import frr
from vpnd_lab.cli import both_established, wait_until

pytestmark = pytest.mark.lab


def cloud_learns_lan_only_over_bgp(lab) -> None:
    p = lab.lab.plan
    for table in ("main", "101", "102"):
        lab.lab.exec("cloud", "ip", "route", "flush", p.lan_net, "table", table, check=False)
    out = lab.lab.ip("cloud", "route", "show", "table", "all").stdout
    assert p.lan_net not in out, out


def test_bgp_comes_up_when_the_cloud_learns_the_lan_only_over_bgp(make_lab):
    if not frr.available():
        pytest.skip("FRR is not installed")
    lab = make_lab(routing="bgp", frr_by_vpnd=True)
    cloud_learns_lan_only_over_bgp(lab)
    p = lab.lab.plan
    assert lab.lab.exec("lan", "ping", "-c", "1", "-W", "1", p.vpc_host, check=False).returncode != 0
    lab.start_vpnd()
    lab.wait_event("frr.applied", timeout=20)
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    took = wait_until("both BGP sessions Established over the tunnels",
                      lambda: frr.established_peers(lab.lab, "cgw") == BGP_PEERS, 40, interval=0.1)
    wait_until("the cloud learned the LAN over BGP", lambda: p.lan_net in lab.lab.ip(
        "cloud", "route", "show", "proto", "bgp").stdout, 20, interval=0.1)
    wait_until("LAN->VPC answers", lambda: lab.lab.exec(
        "lan", "ping", "-c", "1", "-W", "1", p.vpc_host, check=False).returncode == 0, 20)
    lab.wait_event("connection.active_changed", to="tunnel1", timeout=20)
    print(f"bgp-only cloud: both sessions Established {took:.1f} s after the tunnels")
    assert not lab.events("bgp.neighbor_wanted", enabled=False), "a neighbor was shut for lack of evidence"
    refused = lab.events("frr.command_failed")
    assert not refused, f"FRR refused vpnd's commands: {refused}"
    assert not [line for line in lab.log.read_text().splitlines() if '"% ' in line or "% Specify" in line]

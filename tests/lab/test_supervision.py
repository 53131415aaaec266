"""Tunnel supervision with real charons (libipsec lab): vpnd run against the simulated cloud."""

from __future__ import annotations

import signal

import pytest

from vpnd_lab import daemons, faults
from vpnd_lab.cli import both_established, list_sas, wait_until

pytestmark = pytest.mark.lab


def transitions(lab, tunnel: str) -> list[tuple[str, str]]:
    return [(e["from"], e["to"]) for e in lab.events("tunnel.state_changed", tunnel=tunnel)]


def test_cold_start_reaches_established_on_both_tunnels(make_lab):
    lab = make_lab()
    lab.start_vpnd()
    for t in ("tunnel1", "tunnel2"):
        lab.wait_event("tunnel.state_changed", tunnel=t, to="established")
    assert both_established(lab.lab)
    assert lab.events("charon.config_applied")[0]["loaded"] == ["vpnd-vpc1-tunnel1", "vpnd-vpc1-tunnel2"]


def test_cloud_deletes_ike_sa_and_vpnd_brings_it_back(make_lab):
    lab = make_lab()
    lab.start_vpnd()
    lab.wait_event("tunnel.state_changed", tunnel="tunnel1", to="established")
    lab.wait_event("tunnel.state_changed", tunnel="tunnel2", to="established")
    before = {s["name"]: s["ike_id"] for s in list_sas(lab.lab)}
    faults.terminate_ike(lab.lab, "vpc1", "tunnel1")
    down = lab.wait_event("tunnel.state_changed", tunnel="tunnel1", **{"from": "established"})
    assert down["reason"]
    lab.wait_event("tunnel.state_changed", tunnel="tunnel1", to="established", after=1)
    wait_until("both up again", lambda: both_established(lab.lab), 20)
    after = {s["name"]: s["ike_id"] for s in list_sas(lab.lab)}
    assert after["vpnd-vpc1-tunnel1"] != before["vpnd-vpc1-tunnel1"], "a new IKE SA"
    assert after["vpnd-vpc1-tunnel2"] == before["vpnd-vpc1-tunnel2"], "tunnel 2 untouched"
    assert transitions(lab, "tunnel2") == [("down", "connecting"), ("connecting", "ike_up"),
                                           ("ike_up", "established")], "no false transition on tunnel 2"


def test_charon_killed_and_restarted(make_lab):
    lab = make_lab()
    lab.start_vpnd()
    lab.wait_event("tunnel.state_changed", tunnel="tunnel2", to="established")
    lab.wait_event("tunnel.state_changed", tunnel="tunnel1", to="established")
    daemons.stop(lab.lab, "charon-cgw", sig=signal.SIGKILL)
    lab.wait_event("vici.connection_closed", timeout=30)
    daemons.start_charon(lab.lab, "cgw", libipsec=True)
    lab.wait_event("vici.connected", after=1, timeout=30)
    lab.wait_event("charon.config_applied", after=1)
    wait_until("both tunnels re-established", lambda: both_established(lab.lab), 30)
    for t in ("tunnel1", "tunnel2"):
        lab.wait_event("tunnel.state_changed", tunnel=t, to="established", after=1)
        ups = [x for x in transitions(lab, t) if x[1] == "established"]
        assert len(ups) == 2, f"{t}: exactly one real down and up, got {transitions(lab, t)}"


def test_wrong_psk_on_the_cloud_is_phase1_failed(make_lab):
    lab = make_lab(cloud_psk=("not-the-right-key-1", "not-the-right-key-2"))
    lab.start_vpnd()
    e = lab.wait_event("tunnel.state_changed", tunnel="tunnel1", to="phase1_failed", timeout=30)
    assert "auth" in e["reason"].lower() or "phase 1" in e["reason"].lower(), e
    assert not lab.events("tunnel.state_changed", to="established")


def test_mismatched_esp_proposal_is_phase2_failed(make_lab):
    lab = make_lab(cloud_esp="aes256")
    lab.start_vpnd()
    e = lab.wait_event("tunnel.state_changed", tunnel="tunnel1", to="phase2_failed", timeout=30)
    assert e["reason"], e
    assert not lab.events("tunnel.state_changed", to="established")

"""SIGHUP reload by difference, on the libipsec lab with real charons.

Unchanged tunnels must keep their IKE and CHILD SAs (same charon unique ids) and their
routes; a changed tunnel is reloaded and re-initiated alone; a removed one is torn down; an
invalid file changes nothing but the reload metric.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from vpnd_testing.lab_metrics import sample
from vpnd_testing.lab_metrics import scrape as _scrape
from vpnd_lab import daemons
from vpnd_lab.cli import both_established, list_sas, vpnd_routes, wait_until

pytestmark = pytest.mark.lab


def sas(lab) -> dict[str, tuple[int, int]]:
    return {s["name"]: (s["ike_id"], s["child_id"]) for s in list_sas(lab.lab)}


def up(lab):
    lab.start_vpnd()
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    lab.wait_event("connection.active_changed", active="tunnel1", timeout=30)
    wait_until("routes on both tunnels", lambda: len(vpnd_routes(lab.lab)) == 2, 10)


def reload(lab, edit) -> tuple[dict, float]:
    """Edit vpnd.toml, SIGHUP vpnd, return the reload's outcome event and its wall time."""
    path = lab.lab.dir / "vpnd.toml"
    path.write_text(edit(path.read_text()))
    done = len(lab.events("config.reloaded")) + len(lab.events("config.reload_failed"))
    t0 = time.monotonic()
    os.kill(lab.vpnd_pid, signal.SIGHUP)
    wait_until("the reload's outcome", lambda: len(lab.events("config.reloaded"))
               + len(lab.events("config.reload_failed")) > done, 20, interval=0.005)
    took = time.monotonic() - t0
    events = lab.events("config.reloaded") + lab.events("config.reload_failed")
    return max(events, key=lambda e: e["timestamp"]), took


def shared_keys(lab) -> list[str]:
    import socket

    import vici
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(daemons.vici_path(lab.lab, "cgw")))
    try:
        return sorted(k.decode() for k in vici.Session(s).get_shared()["keys"])
    finally:
        s.close()


def scrape(lab) -> str:
    return _scrape(lab.lab)


def test_probe_interval_change_keeps_both_tunnels_sas_and_routes(make_lab):
    lab = make_lab()
    up(lab)
    before, routes = sas(lab), sorted(vpnd_routes(lab.lab))
    event, took = reload(lab, lambda t: t.replace("interval = 0.1", "interval = 0.2"))
    assert event["event"] == "config.reloaded", event
    vpc1 = event["changes"]["vpc1"]
    assert vpc1["action"] == "changed" and "health_check.interval" in vpc1["fields"]
    for t in ("tunnel1", "tunnel2"):
        assert vpc1["tunnels"][t] == {"action": "changed", "charon": "untouched",
                                      "probe": "restarted"}, vpc1
    time.sleep(1.0)     # anything a reload disturbed would show by now
    assert sas(lab) == before, "same IKE and CHILD SA unique ids"
    assert sorted(vpnd_routes(lab.lab)) == routes
    assert not lab.events("tunnel.state_changed", to="down")
    assert not lab.events("charon.config_updated")[-1]["loaded"], "charon got no load-conn"
    m = scrape(lab)
    assert sample(m, "vpnd_config_last_reload_successful") == 1
    assert sample(m, "vpnd_config_reloads_total", result="success") == 1
    assert sample(m, "vpnd_config_last_reload_success_timestamp_seconds") > time.time() - 60
    print(f"\nreload, probe interval only: {took * 1000:.1f} ms wall, "
          f"{event['duration_ms']:.1f} ms in vpnd")


def test_unchanged_reload_sends_nothing_to_charon(make_lab):
    lab = make_lab()
    up(lab)
    before = sas(lab)
    event, took = reload(lab, lambda t: t)
    assert event["event"] == "config.reloaded"
    assert event["changes"]["vpc1"]["action"] == "unchanged"
    upd = lab.events("charon.config_updated")[-1]
    assert upd["loaded"] == [] and upd["unloaded"] == []
    assert sas(lab) == before
    print(f"\nreload, nothing changed: {took * 1000:.1f} ms wall, "
          f"{event['duration_ms']:.1f} ms in vpnd")


def _with_local_id(text: str, tunnel: str, ident: str) -> str:
    return text.replace(f'name = "{tunnel}"\n', f'name = "{tunnel}"\nlocal_id = "{ident}"\n')


def test_changed_identity_reloads_only_that_tunnel(make_lab):
    from vpnd.config.load import load_file
    from vpnd_lab import scenario

    lab = make_lab()
    up(lab)
    before = sas(lab)
    # the cloud learns the new identity first (its old SA stays up on the old config)
    path = lab.lab.dir / "vpnd.toml"
    new_text = _with_local_id(path.read_text(), "tunnel2", "cgw-t2.example.net")
    probe = lab.lab.dir / "next.toml"
    probe.write_text(new_text)
    scenario.load_cloud(lab.lab, load_file(probe), lab.opts)
    t0 = time.monotonic()
    event, took = reload(lab, lambda t: new_text)
    assert event["event"] == "config.reloaded", event
    t2 = event["changes"]["vpc1"]["tunnels"]["tunnel2"]
    assert t2["action"] == "changed" and t2["charon"] == "reloaded", t2
    assert t2["fields"] == ["tunnel.tunnel2.local_id"]
    assert event["changes"]["vpc1"]["tunnels"]["tunnel1"] == {"action": "unchanged"}
    lab.wait_event("tunnel.state_changed", tunnel="tunnel2", to="established", after=1)
    wait_until("tunnel 2 back", lambda: both_established(lab.lab), 20)
    back = time.monotonic() - t0
    after = sas(lab)
    assert after["vpnd-vpc1-tunnel1"] == before["vpnd-vpc1-tunnel1"], "tunnel 1 untouched"
    assert after["vpnd-vpc1-tunnel2"][0] != before["vpnd-vpc1-tunnel2"][0], "a new IKE SA"
    assert len([s for s in list_sas(lab.lab) if s["name"] == "vpnd-vpc1-tunnel2"]) == 1
    assert not lab.events("tunnel.state_changed", tunnel="tunnel1", to="down")
    assert lab.events("charon.config_updated")[-1]["loaded"] == ["vpnd-vpc1-tunnel2"]
    down = lab.events("tunnel.state_changed", tunnel="tunnel2", to="down")[-1]
    assert "local_id" in down["reason"]
    print(f"\nreload, one tunnel's identity: {took * 1000:.1f} ms to the reloaded event, "
          f"{back * 1000:.0f} ms until tunnel 2 is established again")


def test_removed_tunnel_is_torn_down_and_an_added_one_set_up(make_lab):
    lab = make_lab()
    up(lab)
    before = sas(lab)
    original = (lab.lab.dir / "vpnd.toml").read_text()

    def drop_tunnel2(text: str) -> str:
        head, sep, _ = text.partition('[[connection.tunnel]]\nname = "tunnel2"')
        return head
    event, _ = reload(lab, drop_tunnel2)
    assert event["event"] == "config.reloaded", event
    assert event["changes"]["vpc1"]["tunnels"]["tunnel2"] == {"action": "removed"}
    wait_until("tunnel 2's SAs gone", lambda: set(sas(lab)) == {"vpnd-vpc1-tunnel1"}, 10)
    assert sas(lab)["vpnd-vpc1-tunnel1"] == before["vpnd-vpc1-tunnel1"]
    conns = lab.lab.exec("cgw", "swanctl", "--list-conns", "--uri",
                         f"unix://{daemons.vici_path(lab.lab, 'cgw')}").stdout
    assert "vpnd-vpc1-tunnel2" not in conns and "vpnd-vpc1-tunnel1" in conns
    assert shared_keys(lab) == ["vpnd-vpc1-tunnel1"]
    assert "vxlan2" not in " ".join(vpnd_routes(lab.lab))
    assert len(vpnd_routes(lab.lab)) == 1
    m = scrape(lab)
    assert sample(m, "vpnd_tunnel_up", tunnel="tunnel2") is None, "series removed"
    assert sample(m, "vpnd_tunnel_up", tunnel="tunnel1") == 1
    # and back: tunnel 2 is added again
    event, _ = reload(lab, lambda t: original)
    assert event["changes"]["vpc1"]["tunnels"]["tunnel2"] == {"action": "added"}
    wait_until("tunnel 2 set up again", lambda: both_established(lab.lab), 20)
    wait_until("its standby route", lambda: len(vpnd_routes(lab.lab)) == 2, 10)
    assert sas(lab)["vpnd-vpc1-tunnel1"] == before["vpnd-vpc1-tunnel1"]
    assert shared_keys(lab) == ["vpnd-vpc1-tunnel1", "vpnd-vpc1-tunnel2"]
    wait_until("tunnel 2's series back", lambda: sample(scrape(lab), "vpnd_tunnel_up",
                                                        tunnel="tunnel2") == 1, 10)


def test_invalid_reload_keeps_everything_and_flips_the_metric(make_lab):
    lab = make_lab()
    up(lab)
    before, routes = sas(lab), sorted(vpnd_routes(lab.lab))
    event, _ = reload(lab, lambda t: t.replace("interval = 0.1", "interval = -1")
                      .replace('routing = "route"', 'routing = "sideways"'))
    assert event["event"] == "config.reload_failed"
    rejected = lab.events("config.reload_rejected")
    keys = {e["path"] for e in rejected}
    assert any("interval" in k for k in keys) and any("routing" in k for k in keys), rejected
    assert all(e["rule"] for e in rejected)
    m = scrape(lab)
    assert sample(m, "vpnd_config_last_reload_successful") == 0
    assert sample(m, "vpnd_config_reloads_total", result="failure") == 1
    time.sleep(0.5)
    assert sas(lab) == before and sorted(vpnd_routes(lab.lab)) == routes
    assert sample(m, "vpnd_tunnel_up", tunnel="tunnel1") == 1


def test_remote_networks_change_writes_only_their_routes(make_lab):
    lab = make_lab()
    up(lab)
    before, routes = sas(lab), set(vpnd_routes(lab.lab))
    more = '["192.168.0.0/16", "10.77.0.0/16"]'
    event, _ = reload(lab, lambda t: t.replace('remote_networks = ["192.168.0.0/16"]',
                                               f"remote_networks = {more}"))
    assert event["changes"]["vpc1"]["routes"] == "reconfigured", event
    assert lab.events("routes.reconfigured")[-1]["writes"] == 2, "only the new prefix's two"
    now = set(vpnd_routes(lab.lab))
    assert routes < now and len(now) == 4
    assert sas(lab) == before
    event, _ = reload(lab, lambda t: t.replace(f"remote_networks = {more}",
                                               'remote_networks = ["192.168.0.0/16"]'))
    assert set(vpnd_routes(lab.lab)) == routes
    assert lab.events("routes.reconfigured")[-1]["writes"] == 2
    assert sas(lab) == before

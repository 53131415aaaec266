"""The lab's vendor cloud model itself (vpnd/lab/cloud_model.py, issue 13), without vpnd.

The pure decision first (which tunnel the cloud sends on, when a health-check probe fails
the tunnel), then the model in a real lab whose customer gateway is charon loaded from
vpnd's rendering plus two static metric routes (vpnd is not running, so nothing here
depends on what vpnd does): the cloud keeps tunnel 1 until its own health check has failed
`retries` times, fails back when tunnel 1 answers again, moves at once when tunnel 1's SAs
are gone (deleted, or by its DPD, set short here: the vendor's 30 s is too slow for a
test), moves on its own when told; and the per-flow model still answers on the tunnel a
flow arrived on.
"""

from __future__ import annotations

import time

import pytest

from vpnd.lab import cloud_model, daemons, faults
from vpnd.lab.cloud_model import CloudCheck, TunnelView, budget_ms, choose, observe

H, SICK, NOSA = TunnelView(), TunnelView(lost_in_row=3, healthy=False), TunnelView(sa_up=False)


# --- the pure decision ------------------------------------------------------------------------

def test_tunnel_1_while_it_passes_the_check():
    assert choose((H, H))[0] == 0
    assert choose((H, SICK))[0] == 0


def test_tunnel_2_when_tunnel_1_fails_the_check_or_loses_its_sas():
    assert choose((SICK, H)) == (1, "tunnel 1: failed the health check")
    assert choose((NOSA, H)) == (1, "tunnel 1: SAs gone")


def test_the_standby_keeps_the_last_route_when_both_fail_the_check():
    # cgw routes the VPC into dead tunnel 1: tunnel 2's replies die there too
    pick, why = choose((SICK, SICK))
    assert pick == 1 and "keeps the last route" in why


def test_without_switch_route_only_the_sas_move_it():
    assert choose((SICK, H), switch_route=False)[0] == 0
    assert choose((NOSA, H), switch_route=False)[0] == 1


def test_a_proactive_move_holds_while_that_tunnel_has_sas():
    assert choose((H, H), forced=1) == (1, "the cloud switched proactively")
    assert choose((H, NOSA), forced=1)[0] == 0
    assert choose((NOSA, NOSA))[0] is None


def test_retries_lost_in_a_row_fail_a_tunnel_one_answer_passes_it():
    v = H
    for _ in range(2):
        v = observe(v, False, 3)
        assert v.healthy
    v = observe(v, False, 3)
    assert not v.healthy and v.lost_in_row == 3
    assert observe(observe(v, False, 3), True, 3) == H       # automatic failback


def test_budget_per_mode():
    check = CloudCheck("192.168.0.1", "172.16.0.1", interval=1.0, retries=3)
    assert budget_ms("route", "vendor", check) == 3000.0
    assert budget_ms("route", "vendor", CloudCheck("a", "b")) == 9000.0     # console defaults 3 s x 3
    assert budget_ms("route", "vendor", None) is None                       # never moves on a black hole
    assert budget_ms("route", "vendor", None, fault="unreachable", dpd_delay=10) == 40000.0
    assert budget_ms("bgp", "vendor", None, hold=30) == 30000.0
    assert budget_ms("route", "per-flow", check) == 0.0


def test_settings_round_trip_through_json():
    s = cloud_model.Settings(check=CloudCheck("192.168.0.1", "172.16.0.1", 0.5, 2, False), conns=("a", "b"))
    assert cloud_model.Settings.from_json(s.to_json()) == s


# --- in a lab, without vpnd -------------------------------------------------------------------

def static_cgw(running) -> None:
    """cgw without vpnd: charon loaded from vpnd's rendering (initiating at load), and the
    route-based tunnels' metric routes 100/101 to the VPC."""
    from vpnd.lab.cli import both_established, wait_until
    from vpnd.render import swanctl

    lab, conn = running.lab, running.config.connections[0]
    conns, secrets = {}, []
    for t in conn.tunnels:
        body = swanctl.vici_conn(conn, t)
        next(iter(body["children"].values()))["start_action"] = "start"
        conns[swanctl.conn_name(conn.name, t.name)] = body
        secrets.append(swanctl.vici_secret(conn, t))
    path = lab.dir / "static-swanctl.conf"
    path.write_text(swanctl.conf_text(conns, secrets, show_secrets=True))
    path.chmod(0o600)
    lab.exec("cgw", "swanctl", "--load-all", "--noprompt", "--file", str(path), "--uri",
             f"unix://{daemons.vici_path(lab, 'cgw')}")
    wait_until("both tunnels up", lambda: both_established(lab), 30)
    for i in range(2):
        lab.ip("cgw", "route", "add", lab.plan.vpc_net, "dev", f"vxlan{i + 1}", "metric", str(100 + i))


def cloud_route_dev(lab) -> str:
    w = lab.exec("cloud", "ip", "route", "get", lab.plan.lan_host).stdout.split()
    return w[w.index("dev") + 1]


def wait_sending(lab, tunnel: int, timeout: float, after: float = 0.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        moves = [e for e in cloud_model.events(lab.lab, "cloud.sending") if e["t"] >= after]
        if moves and moves[-1]["tunnel"] == tunnel:
            return moves[-1]
        time.sleep(0.02)
    raise AssertionError(f"the cloud did not move to tunnel {tunnel + 1}: {cloud_model.events(lab.lab)}")



@pytest.mark.lab
def test_the_cloud_moves_only_after_its_check_fails_retries_times_and_fails_back(make_lab):
    interval, retries = 0.3, 3
    lab = make_lab(cloud_model="vendor", cloud_check=(interval, retries))
    static_cgw(lab)
    wait_sending(lab, 0, 5)
    time.sleep(1.5 * interval)          # the check has seen both tunnels answer
    t0 = time.time()
    faults.blackhole(lab.lab, 0, "libipsec")
    # within the budget the cloud still sends on tunnel 1
    time.sleep((retries - 1) * interval * 0.9)
    assert cloud_model.sending(lab.lab) == 0 and cloud_route_dev(lab.lab) == "vxlan1"
    moved = wait_sending(lab, 1, 10 * interval * retries, after=t0)
    took = moved["t"] - t0
    assert took >= (retries - 1) * interval, f"moved after {took:.2f} s, before the check's budget"
    assert "tunnel 1: failed the health check" in moved["reason"], moved
    assert cloud_route_dev(lab.lab) == "vxlan2"
    failed = [e for e in cloud_model.events(lab.lab, "cloud.check") if e["t"] >= t0 and not e["healthy"]]
    assert failed and failed[0]["tunnel"] == 0 and failed[0]["lost"] == retries
    # what cgw sees: the VPC's traffic now arrives on tunnel 2
    before = int(lab.lab.exec("cgw", "cat", "/sys/class/net/vxlan2/statistics/rx_packets").stdout)
    lab.lab.exec("vpc", "ping", "-c", "5", "-i", "0.05", "-W", "1", lab.lab.plan.lan_host, check=False)
    after = int(lab.lab.exec("cgw", "cat", "/sys/class/net/vxlan2/statistics/rx_packets").stdout)
    assert after - before >= 5
    # tunnel 1 repaired: it passes the check again and the cloud goes back by itself
    t1 = time.time()
    faults.repair(lab.lab)
    back = wait_sending(lab, 0, 4 * interval + 2, after=t1)
    assert back["t"] - t1 <= 2 * interval + 0.5 and cloud_route_dev(lab.lab) == "vxlan1"


@pytest.mark.lab
def test_the_cloud_moves_at_once_when_tunnel_1s_sas_are_deleted(make_lab):
    lab = make_lab(cloud_model="vendor")          # no health check: only the SAs move it
    static_cgw(lab)
    wait_sending(lab, 0, 5)
    t0 = time.time()
    lab.lab.exec("cgw", "swanctl", "--terminate", "--ike", "vpnd-vpc1-tunnel1", "--timeout", "5", "--uri",
                 f"unix://{daemons.vici_path(lab.lab, 'cgw')}", check=False)
    moved = wait_sending(lab, 1, 5, after=t0)
    assert moved["t"] - t0 < 1.0 and "SAs gone" in moved["reason"], moved
    lab.lab.exec("cgw", "swanctl", "--initiate", "--child", "vpnd-vpc1-tunnel1", "--timeout", "10", "--uri",
                 f"unix://{daemons.vici_path(lab.lab, 'cgw')}", check=False)
    wait_sending(lab, 0, 10, after=t0)        # tunnel 1 back: preferred again


@pytest.mark.lab
def test_the_clouds_dpd_moves_it_when_tunnel_1s_peer_is_unreachable(make_lab):
    # the vendor's DPD gives up after 30 s; the lab's is settable: 1 s delay, 1.5 s timeout
    lab = make_lab(cloud_model="vendor", cloud_dpd_delay=1, cloud_dpd_timeout=1.5)
    static_cgw(lab)
    wait_sending(lab, 0, 5)
    t0 = time.time()
    faults.peer_unreachable(lab.lab, 0)
    moved = wait_sending(lab, 1, 15, after=t0)
    assert "SAs gone" in moved["reason"], moved
    assert 1.0 <= moved["t"] - t0 <= 8.0, f"DPD moved it after {moved['t'] - t0:.1f} s"


@pytest.mark.lab
def test_the_cloud_switches_proactively_and_back(make_lab):
    lab = make_lab(cloud_model="vendor", cloud_check=(0.3, 3))
    static_cgw(lab)
    wait_sending(lab, 0, 5)
    t0 = time.time()
    cloud_model.switch_proactively(lab.lab, 1)
    assert wait_sending(lab, 1, 3, after=t0)["reason"] == "the cloud switched proactively"
    assert cloud_route_dev(lab.lab) == "vxlan2"
    cloud_model.switch_proactively(lab.lab, None)
    wait_sending(lab, 0, 3, after=t0)


@pytest.mark.lab
@pytest.mark.parametrize("model", ["per-flow", "vendor"])
def test_replies_follow_the_flow_only_in_the_per_flow_model(make_lab, model):
    """LAN->VPC pinned to tunnel 2 (a source rule in cgw), tunnel 1 black-holed and the
    cloud's health check off: the per-flow cloud answers on tunnel 2, the vendor's keeps
    sending into tunnel 1 and nothing comes back."""
    lab = make_lab(cloud_model=model)
    static_cgw(lab)
    p = lab.lab.plan
    lab.lab.ip("cgw", "route", "add", p.vpc_net, "dev", "vxlan2", "table", "200")
    lab.lab.ip("cgw", "rule", "add", "from", p.lan_net, "lookup", "200", "priority", "50")
    ok = lab.lab.exec("lan", "ping", "-c", "3", "-i", "0.1", "-W", "1", p.vpc_host, check=False)
    assert ok.returncode == 0, "both models answer while tunnel 1 is healthy"
    faults.blackhole(lab.lab, 0, "libipsec")
    r = lab.lab.exec("lan", "ping", "-c", "5", "-i", "0.1", "-W", "1", p.vpc_host, check=False)
    if model == "per-flow":
        assert r.returncode == 0, r.stdout
        assert cloud_model.events(lab.lab) == [], "no controller in the per-flow model"
    else:
        assert r.returncode != 0, r.stdout
        assert cloud_model.sending(lab.lab) == 0

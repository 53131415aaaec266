"""The cloud's health check on the lab (route mode, libipsec backend, one VXLAN per tunnel):
its probes, sent by the cloud from its own source IP through one chosen tunnel, are answered
back through THAT tunnel whichever tunnel vpnd's routes prefer, and vpnd keeps the /32 route
for the source IP and the reply marking (restored when deleted).

The cloud side here is the lab's per-flow cloud: a ping from the cloud namespace with
SO_MARK 1 or 2 leaves by tunnel 1 or 2 (its fwmark rules and per-tunnel tables), and nft
counters in the cloud say which tunnel each echo reply came back on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vpnd.control.server import request
from vpnd_lab.cli import active_interface, both_established, wait_until
from vpnd_lab.scenario import nft

pytestmark = pytest.mark.lab

SOURCE_IP = "100.100.0.1"       # the cloud's check source: outside remote_networks (CEN style)
VPND = str(Path(sys.executable).with_name("vpnd"))


def cloud_check_lab(make_lab, destination: str, interval: int = 1):
    lab = make_lab()
    cfg = lab.lab.dir / "vpnd.toml"
    text = cfg.read_text()
    cfg.write_text(text.replace("[connection.failover]", f"""[connection.cloud_health_check]
source_ip = "{SOURCE_IP}"
destination_ip = "{destination}"
interval = {interval}
retries = 3

[connection.failover]"""))
    lab.lab.ip("cloud", "addr", "add", f"{SOURCE_IP}/32", "dev", "lo")
    # which tunnel each echo reply to the check's source comes back on, counted in the cloud
    nft(lab.lab, "cloud", f"""table ip hccount {{
 chain pre {{
  type filter hook prerouting priority -300; policy accept;
  iifname "vxlan1" ip saddr {destination} ip daddr {SOURCE_IP} icmp type echo-reply counter
  iifname "vxlan2" ip saddr {destination} ip daddr {SOURCE_IP} icmp type echo-reply counter
 }}
}}
""")
    lab.start_vpnd()
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    wait_until("route on tunnel 1", lambda: active_interface(lab.lab) == "vxlan1", 20)
    wait_until("the return path set", lambda: lab.events("return_path.set"), 10)
    return lab


def replies(lab) -> dict[str, int]:
    out = json.loads(lab.lab.exec("cloud", "nft", "-j", "list", "table", "ip", "hccount").stdout)
    counts = {}
    for item in out["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        ifname = next(e["match"]["right"] for e in rule["expr"]
                      if "match" in e and e["match"]["left"].get("meta", {}).get("key") == "iifname")
        counts[ifname] = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    return counts


def cloud_probe(lab, destination: str, tunnel: int, count: int = 5) -> dict[str, int]:
    """The cloud's check through tunnel `tunnel` (1 or 2): how many replies came back on each
    tunnel's interface."""
    before = replies(lab)
    r = lab.lab.exec("cloud", "ping", "-n", "-c", str(count), "-i", "0.05", "-W", "1",
                     "-m", str(tunnel), "-I", SOURCE_IP, destination, check=False)
    after = replies(lab)
    got = {k: after[k] - before.get(k, 0) for k in after}
    assert r.returncode == 0, (r.stdout, r.stderr, got)
    return got


def failover(lab, to: str) -> None:
    reply = request(str(lab.lab.dir / "control.sock"),
                    {"command": "failover", "connection": "vpc1", "to": to})
    assert reply.get("ok"), reply


@pytest.mark.parametrize("where", ["gateway", "lan_host"])
def test_replies_leave_by_the_tunnel_the_probe_arrived_on(make_lab, where):
    """destination_ip on the gateway itself (the reply is generated locally: the output
    chain) or on a LAN host (forwarded: prerouting), with vpnd's routes on either tunnel."""
    plan_dest = {"gateway": "172.16.0.1", "lan_host": "172.16.0.10"}[where]
    lab = cloud_check_lab(make_lab, plan_dest)
    p = lab.lab.plan
    assert plan_dest in (p.cgw_lan, p.lan_host)
    # vpnd's routes prefer tunnel 1: a probe on tunnel 2 is still answered on tunnel 2
    assert cloud_probe(lab, plan_dest, 2) == {"vxlan1": 0, "vxlan2": 5}
    assert cloud_probe(lab, plan_dest, 1) == {"vxlan1": 5, "vxlan2": 0}
    # ... and with vpnd's routes on tunnel 2, a probe on tunnel 1 is answered on tunnel 1
    failover(lab, "tunnel2")
    wait_until("routes on tunnel 2", lambda: active_interface(lab.lab) == "vxlan2", 10)
    assert f"{SOURCE_IP} dev vxlan2" in lab.lab.ip("cgw", "route", "show", f"{SOURCE_IP}/32",
                                                   "metric", "100").stdout
    assert cloud_probe(lab, plan_dest, 1) == {"vxlan1": 5, "vxlan2": 0}
    assert cloud_probe(lab, plan_dest, 2) == {"vxlan1": 0, "vxlan2": 5}


def test_traffic_the_check_does_not_own_follows_vpnds_routes(make_lab):
    """Only the check's ICMP is marked: a LAN host's own ping to the check's source IP (not
    a reply) takes vpnd's route, the active tunnel."""
    lab = cloud_check_lab(make_lab, "172.16.0.1")
    before = replies(lab)
    nft(lab.lab, "cloud", f"""table ip hcreq {{
 chain pre {{
  type filter hook prerouting priority -300; policy accept;
  iifname "vxlan1" ip saddr 172.16.0.10 ip daddr {SOURCE_IP} icmp type echo-request counter
  iifname "vxlan2" ip saddr 172.16.0.10 ip daddr {SOURCE_IP} icmp type echo-request counter
 }}
}}
""")
    failover(lab, "tunnel2")
    wait_until("routes on tunnel 2", lambda: active_interface(lab.lab) == "vxlan2", 10)
    r = lab.lab.exec("lan", "ping", "-n", "-c", "3", "-i", "0.05", "-W", "1", SOURCE_IP, check=False)
    assert r.returncode == 0, r.stdout
    out = json.loads(lab.lab.exec("cloud", "nft", "-j", "list", "table", "ip", "hcreq").stdout)
    counts = [next(e["counter"]["packets"] for e in i["rule"]["expr"] if "counter" in e)
              for i in out["nftables"] if "rule" in i]
    assert counts == [0, 3], counts
    assert replies(lab) == before


def test_the_32_route_and_the_marking_are_restored(make_lab):
    lab = cloud_check_lab(make_lab, "172.16.0.1")
    lab.lab.ip("cgw", "route", "del", f"{SOURCE_IP}/32", "metric", "100")
    wait_until("the /32 back", lambda: "vxlan1" in lab.lab.ip(
        "cgw", "route", "show", f"{SOURCE_IP}/32", "metric", "100").stdout, 5, interval=0.01)
    lab.wait_event("routes.restored")
    # someone flushes vpnd's rule and nft table: vpnd's keeper puts them back
    lab.lab.ip("cgw", "rule", "del", "priority", "200", "fwmark", "43", "lookup", "43")
    lab.lab.exec("cgw", "nft", "delete", "table", "inet", "vpnd")
    wait_until("the rule and the nft table back", lambda: "fwmark 0x2b lookup 43" in lab.lab.ip(
        "cgw", "rule", "show").stdout and lab.lab.exec("cgw", "nft", "list", "table", "inet", "vpnd",
                                                       check=False).returncode == 0, 15)
    assert lab.events("return_path.restored")
    assert cloud_probe(lab, "172.16.0.1", 2) == {"vxlan1": 0, "vxlan2": 5}


def test_doctor_sees_it_in_place_and_missing(make_lab):
    lab = cloud_check_lab(make_lab, "172.16.0.1")
    cfg = str(lab.lab.dir / "vpnd.toml")
    r = subprocess.run(["ip", "netns", "exec", lab.lab.ns("cgw"), VPND, "doctor", "-c", cfg,
                        "--json"], capture_output=True, text=True, timeout=60)
    checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["return_path:vpc1"]["status"] == "PASS", checks["return_path:vpc1"]
    assert checks["cloud_health_check:vpc1"]["status"] == "PASS"
    assert "1 s x retries 3 = 3 s" in checks["cloud_health_check:vpc1"]["detail"]
    lab.lab.ip("cgw", "rule", "del", "priority", "200", "fwmark", "42", "lookup", "42")
    r = subprocess.run(["ip", "netns", "exec", lab.lab.ns("cgw"), VPND, "doctor", "-c", cfg,
                        "--json"], capture_output=True, text=True, timeout=60)
    checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["return_path:vpc1"]["status"] == "FAIL"
    assert "fwmark 42 lookup 42" in checks["return_path:vpc1"]["detail"]


def _reload(lab, edit) -> dict:
    import os
    import signal
    import time
    path = lab.lab.dir / "vpnd.toml"
    path.write_text(edit(path.read_text()))
    done = len(lab.events("config.reloaded")) + len(lab.events("config.reload_failed"))
    os.kill(lab.vpnd_pid, signal.SIGHUP)
    wait_until("the reload's outcome", lambda: len(lab.events("config.reloaded"))
               + len(lab.events("config.reload_failed")) > done, 20, interval=0.01)
    time.sleep(0.2)
    return (lab.events("config.reloaded") + lab.events("config.reload_failed"))[-1]


def test_a_reload_of_the_check_touches_no_tunnel_and_removing_it_cleans_up(make_lab):
    from vpnd_lab.cli import list_sas
    lab = cloud_check_lab(make_lab, "172.16.0.1")
    before = {s["name"]: (s["ike_id"], s["child_id"]) for s in list_sas(lab.lab)}
    e = _reload(lab, lambda t: t.replace("interval = 1\nretries = 3", "interval = 3\nretries = 5"))
    assert e["event"] == "config.reloaded", e
    assert e["changes"]["vpc1"]["tunnels"] == {"tunnel1": {"action": "unchanged"},
                                               "tunnel2": {"action": "unchanged"}}, e
    assert {s["name"]: (s["ike_id"], s["child_id"]) for s in list_sas(lab.lab)} == before
    # the table goes: so do the /32, the rules, the per-tunnel tables and the check's nft
    # chains (table inet vpnd stays: the MSS clamp's chain lives there too)
    e = _reload(lab, lambda t: t.split("[connection.cloud_health_check]")[0] + "[connection.failover]"
                + t.split("[connection.failover]")[1])
    assert e["event"] == "config.reloaded", e
    assert SOURCE_IP not in lab.lab.ip("cgw", "route", "show", "proto", "249").stdout
    assert "lookup 42" not in lab.lab.ip("cgw", "rule", "show").stdout
    assert lab.lab.ip("cgw", "route", "show", "table", "43").stdout.strip() == ""
    table = lab.lab.exec("cgw", "nft", "list", "table", "inet", "vpnd", check=False).stdout
    assert "hc-in-" not in table and "hc-out-" not in table, table
    assert {s["name"]: (s["ike_id"], s["child_id"]) for s in list_sas(lab.lab)} == before


def test_bgp_mode_answers_on_the_arrival_tunnel_too(make_lab):
    """BGP mode: FRR owns the routes (vpnd adds no /32 there), the reply marking is the same.
    A reply the gateway itself generates needs SOME route to the source IP first (the kernel
    drops an ICMP reply it cannot route before the output hook could re-route it): learned
    by BGP, or static as here, through tunnel 1; the marking still sends it by tunnel 2."""
    from vpnd_lab import frr
    from vpnd_testing.lab_fixtures import BGP_PEERS

    if not frr.available():
        pytest.skip("FRR is not installed")
    lab = make_lab(routing="bgp", frr_by_vpnd=True)
    cfg = lab.lab.dir / "vpnd.toml"
    cfg.write_text(cfg.read_text().replace("[connection.failover]", f"""[connection.cloud_health_check]
source_ip = "{SOURCE_IP}"
destination_ip = "172.16.0.10"

[connection.failover]"""))
    lab.lab.ip("cloud", "addr", "add", f"{SOURCE_IP}/32", "dev", "lo")
    counters = "\n".join(
        f'  iifname "vxlan{i}" ip saddr {d} ip daddr {SOURCE_IP} icmp type echo-reply counter'
        for i in (1, 2) for d in ("172.16.0.10",))
    nft(lab.lab, "cloud", f"""table ip hccount {{
 chain pre {{
  type filter hook prerouting priority -300; policy accept;
{counters}
 }}
}}
""")
    lab.start_vpnd()
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    wait_until("both BGP sessions Established over the tunnels",
               lambda: frr.established_peers(lab.lab, "cgw") == BGP_PEERS, 40, interval=0.1)
    wait_until("the return path set", lambda: lab.events("return_path.set"), 10)
    assert SOURCE_IP not in lab.lab.ip("cgw", "route", "show", "proto", "249").stdout
    # a LAN host answers: forwarded, marked at prerouting, no route to the source needed
    assert cloud_probe(lab, "172.16.0.10", 2) == {"vxlan1": 0, "vxlan2": 5}
    assert cloud_probe(lab, "172.16.0.10", 1) == {"vxlan1": 5, "vxlan2": 0}


def test_the_gateway_answers_in_bgp_mode_once_the_source_is_routed(make_lab):
    from vpnd_lab import frr
    from vpnd_testing.lab_fixtures import BGP_PEERS

    if not frr.available():
        pytest.skip("FRR is not installed")
    lab = make_lab(routing="bgp", frr_by_vpnd=True)
    cfg = lab.lab.dir / "vpnd.toml"
    cfg.write_text(cfg.read_text().replace("[connection.failover]", f"""[connection.cloud_health_check]
source_ip = "{SOURCE_IP}"
destination_ip = "172.16.0.1"

[connection.failover]"""))
    lab.lab.ip("cloud", "addr", "add", f"{SOURCE_IP}/32", "dev", "lo")
    nft(lab.lab, "cloud", f"""table ip hccount {{
 chain pre {{
  type filter hook prerouting priority -300; policy accept;
  iifname "vxlan1" ip saddr 172.16.0.1 ip daddr {SOURCE_IP} icmp type echo-reply counter
  iifname "vxlan2" ip saddr 172.16.0.1 ip daddr {SOURCE_IP} icmp type echo-reply counter
 }}
}}
""")
    lab.start_vpnd()
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    wait_until("both BGP sessions Established over the tunnels",
               lambda: frr.established_peers(lab.lab, "cgw") == BGP_PEERS, 40, interval=0.1)
    wait_until("the return path set", lambda: lab.events("return_path.set"), 10)
    lab.lab.ip("cgw", "route", "add", f"{SOURCE_IP}/32", "dev", "vxlan1")   # as if learned
    assert cloud_probe(lab, "172.16.0.1", 2) == {"vxlan1": 0, "vxlan2": 5}
    assert cloud_probe(lab, "172.16.0.1", 1) == {"vxlan1": 5, "vxlan2": 0}


def test_a_withdrawing_stop_removes_it_a_plain_stop_leaves_it(make_lab):
    lab = cloud_check_lab(make_lab, "172.16.0.1")
    lab.stop_vpnd()
    assert "lookup 42" in lab.lab.ip("cgw", "rule", "show").stdout, "a plain stop leaves it"
    assert cloud_probe(lab, "172.16.0.1", 2) == {"vxlan1": 0, "vxlan2": 5}
    cfg = lab.lab.dir / "vpnd.toml"
    cfg.write_text(cfg.read_text().replace("[daemon]\n", "[daemon]\nwithdraw_on_stop = true\n", 1))
    lab.start_vpnd()
    lab.wait_event("routes.adopted", after=1)
    wait_until("both tunnels up again", lambda: both_established(lab.lab), 30)
    lab.stop_vpnd()
    assert "lookup 42" not in lab.lab.ip("cgw", "rule", "show").stdout
    assert lab.lab.ip("cgw", "route", "show", "table", "42").stdout.strip() == ""
    assert lab.lab.exec("cgw", "nft", "list", "table", "inet", "vpnd", check=False).returncode != 0


def test_vpnds_own_probes_are_left_alone_on_the_reversed_path(make_lab):
    """The worst overlap: the cloud's check is vpnd's own probe path reversed (the cloud pings
    vpnd's probe source from vpnd's probe destination). vpnd's echo requests are the original
    direction of their own conntrack entries, the cloud's replies to them the reply
    direction: neither is marked, so each tunnel's probes still leave by that tunnel (IP_PKTINFO)
    and are all answered, while the cloud's check is answered on its arrival tunnel."""
    import time
    lab = make_lab()
    p = lab.lab.plan
    cfg = lab.lab.dir / "vpnd.toml"
    cfg.write_text(cfg.read_text().replace(f'destination = "{p.vpc_host}"',
                                           f'destination = "{p.cloud_vpc}"').replace(
        "[connection.failover]", f"""[connection.cloud_health_check]
source_ip = "{p.cloud_vpc}"
destination_ip = "{p.cgw_lan}"

[connection.failover]"""))
    nft(lab.lab, "cloud", f"""table ip hccount {{
 chain pre {{
  type filter hook prerouting priority -300; policy accept;
  iifname "vxlan1" ip saddr {p.cgw_lan} ip daddr {p.cloud_vpc} icmp type echo-reply counter
  iifname "vxlan2" ip saddr {p.cgw_lan} ip daddr {p.cloud_vpc} icmp type echo-reply counter
  iifname "vxlan1" ip saddr {p.cgw_lan} ip daddr {p.cloud_vpc} icmp type echo-request counter
  iifname "vxlan2" ip saddr {p.cgw_lan} ip daddr {p.cloud_vpc} icmp type echo-request counter
 }}
}}
""")
    lab.start_vpnd()
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    wait_until("route on tunnel 1", lambda: active_interface(lab.lab) == "vxlan1", 20)
    wait_until("the return path set", lambda: lab.events("return_path.set"), 10)

    def counters() -> list[int]:
        out = json.loads(lab.lab.exec("cloud", "nft", "-j", "list", "table", "ip", "hccount").stdout)
        return [next(e["counter"]["packets"] for e in i["rule"]["expr"] if "counter" in e)
                for i in out["nftables"] if "rule" in i]

    def probes() -> dict[str, dict]:
        status = request(str(lab.lab.dir / "control.sock"), {"command": "status"})["status"]
        return {t: v["probe"] for t, v in status["connections"]["vpc1"]["tunnels"].items()}

    before, sent = counters(), {t: (v["sent"], v["lost"]) for t, v in probes().items()}
    before_replies = sum(before[:2])
    for tunnel in (2, 1, 2):
        r = lab.lab.exec("cloud", "ping", "-n", "-c", "5", "-i", "0.05", "-W", "1", "-m",
                         str(tunnel), "-I", p.cloud_vpc, p.cgw_lan, check=False)
        assert r.returncode == 0, r.stdout
    time.sleep(1.0)                     # ten more of vpnd's probes per tunnel
    after, now = counters(), probes()
    assert after[0] - before[0] == 5 and after[1] - before[1] == 10, (before, after)
    assert sum(after[:2]) - before_replies == 15
    # vpnd's own probes: every one answered, each tunnel's leaving by its own interface
    for t, (s0, l0) in sent.items():
        assert now[t]["sent"] - s0 >= 5 and now[t]["lost"] == l0, (t, sent, now)
    assert after[2] - before[2] >= 5 and after[3] - before[3] >= 5, (before, after)

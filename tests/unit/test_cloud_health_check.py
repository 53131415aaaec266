"""The cloud's own health check ([connection.cloud_health_check]): its config as entered in the
console, the sheet `render peer` prints, a reload that touches no tunnel, the /32 among
vpnd's routes, the reply marking's rules, and what `status` and `doctor` say about it."""

from __future__ import annotations

import io
import json

import pytest
from vpnd_testing.config_toml import DELETE, dumps, mutate, route_config

from vpnd import doctor
from vpnd.config.load import load_text, load_text_with_warnings
from vpnd.config.model import ConfigError, CloudHealthCheckConfig
from vpnd.control import cli as control_cli
from vpnd.control.status import cloud_check
from vpnd.kernel import return_path as rp
from vpnd.kernel.routes import Route, desired_routes
from vpnd.render import peer
from vpnd.run import reload_plan

P = "connection.0.cloud_health_check"
CHECK = {"source_ip": "192.168.50.1", "destination_ip": "172.16.20.80", "interval": 1,
         "retries": 3}


def doc(**keys):
    d = route_config()
    d["connection"][0]["cloud_health_check"] = {**CHECK, **keys}
    return d


def load(d):
    return load_text(dumps(d))


def problems(d) -> tuple[list[str], list[str]]:
    """(errors, warnings) as `vpnd check` prints them."""
    try:
        _, warnings = load_text_with_warnings(dumps(d))
        return [], [str(w) for w in warnings]
    except ConfigError as exc:
        return [str(e) for e in exc.errors], [str(w) for w in exc.warnings]


# --- config ------------------------------------------------------------------------------

def test_the_consoles_defaults():
    d = route_config()
    d["connection"][0]["cloud_health_check"] = {"source_ip": "192.168.50.1",
                                                "destination_ip": "172.16.20.80"}
    chc = load(d).connections[0].cloud_health_check
    assert chc == CloudHealthCheckConfig(
        source_ip=chc.source_ip, destination_ip=chc.destination_ip, interval=3, retries=3,
        switch_route=True)
    assert chc.budget == 9


def test_absent_by_default():
    assert load(route_config()).connections[0].cloud_health_check is None


@pytest.mark.parametrize("key,value,needle", [
    ("interval", 0, "cloud_health_check.interval"),
    ("interval", 61, "cloud_health_check.interval"),
    ("interval", 1.5, "cloud_health_check.interval"),
    ("retries", 0, "cloud_health_check.retries"),
    ("retries", 101, "cloud_health_check.retries"),
    ("switch_route", "yes", "cloud_health_check.switch_route"),
    ("source_ip", "192.168.50.300", "cloud_health_check.source_ip"),
])
def test_the_consoles_limits(key, value, needle):
    errors, _ = problems(doc(**{key: value}))
    assert any(needle in e for e in errors), errors


def test_required_addresses():
    d = mutate(doc(), f"{P}.source_ip", DELETE)
    errors, _ = problems(d)
    assert any("cloud_health_check.source_ip" in e for e in errors), errors


def test_an_unknown_key_names_the_table():
    errors, _ = problems(doc(retry=3))
    assert any("cloud_health_check.retry" in e for e in errors), errors


def test_source_ip_is_the_clouds_side():
    errors, _ = problems(doc(source_ip="172.16.5.5"))
    assert any("source_ip" in e and "local_networks" in e for e in errors), errors


def test_same_addresses_and_endpoints_are_errors():
    errors, _ = problems(doc(source_ip="172.16.20.80"))
    assert any("same address" in e for e in errors), errors
    errors, _ = problems(doc(source_ip="198.19.0.1"))
    assert any("tunnel endpoint" in e for e in errors), errors


def test_destination_outside_the_data_centre_warns():
    errors, warnings = problems(doc(destination_ip="10.9.9.9"))
    assert not errors
    assert any("destination_ip" in w and "local_networks" in w for w in warnings), warnings


def test_the_example_files_commented_table_is_valid():
    """Uncommenting the example's table gives the console's defaults."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    head, rest = (root / "config.toml.example").read_text().split("# [connection.cloud_health_check]")
    table, tail = rest.split("[connection.failover]")
    table = "\n".join(line[2:] if line.startswith("# ") else line for line in table.splitlines())
    cfg = load_text(head + "[connection.cloud_health_check]" + table + "\n[connection.failover]"
                    + tail, base_dir=str(root))
    chc = cfg.connections[0].cloud_health_check
    assert (str(chc.source_ip), chc.interval, chc.retries, chc.switch_route) == (
        "192.168.10.20", 3, 3, True)


# --- render peer -------------------------------------------------------------------------

def test_render_peer_prints_it_in_the_consoles_field_names():
    sheet = peer.peer_text(load(doc(switch_route=False)))
    block = sheet.split("Health Check:")[1].split("Tunnel 1")[0]
    fields = dict(line.strip().split(":", 1) for line in block.splitlines()[1:] if ":" in line)
    fields = {k: v.strip() for k, v in fields.items()}
    assert sheet.split("Health Check:")[1].splitlines()[0].strip() == "enabled"
    assert fields == {"Destination IP": "172.16.20.80", "Source IP": "192.168.50.1",
                      "Retry Interval (seconds)": "1", "Number of Retries": "3",
                      "Switch Route": "no",
                      "On-premises route": "192.168.50.1/32 via the active tunnel (vpnd adds it)"}


# --- reload ------------------------------------------------------------------------------

def test_a_reload_of_its_timers_touches_no_tunnel():
    old, new = load(doc()), load(doc(interval=3, retries=5, switch_route=False))
    p = reload_plan.plan(old, new)
    c = p.connections[0]
    assert c.action == "changed" and not c.routes and not c.links and not c.rebuild
    assert sorted(c.fields) == ["cloud_health_check.interval", "cloud_health_check.retries",
                                "cloud_health_check.switch_route"]
    assert all(t.action == "unchanged" and not t.charon and not t.probe for t in c.tunnels)
    assert "charon" not in json.dumps(p.summary())


def test_a_new_source_ip_moves_routes_not_tunnels():
    p = reload_plan.plan(load(doc()), load(doc(source_ip="192.168.60.1")))
    c = p.connections[0]
    assert c.routes and not c.links
    assert all(t.action == "unchanged" for t in c.tunnels)
    p = reload_plan.plan(load(route_config()), load(doc()))
    assert p.connections[0].routes and all(t.action == "unchanged" for t in p.connections[0].tunnels)


# --- the /32 route and the reply marking ---------------------------------------------------

def test_the_32_route_follows_the_active_tunnel():
    conn = load(doc()).connections[0]
    on1 = desired_routes(conn, "tunnel1")
    assert Route("192.168.50.1/32", 100, "ipsec0") in on1
    assert Route("192.168.50.1/32", 101, "ipsec1") in on1
    on2 = desired_routes(conn, "tunnel2")
    assert Route("192.168.50.1/32", 100, "ipsec1") in on2
    assert Route("192.168.0.0/16", 100, "ipsec1") in on2
    assert desired_routes(conn, None) == set()


def test_no_32_without_the_table_and_none_twice():
    assert all(r.prefix == "192.168.0.0/16"
               for r in desired_routes(load(route_config()).connections[0], "tunnel1"))
    d = doc(source_ip="10.1.1.1")
    d["connection"][0]["remote_networks"] = ["192.168.0.0/16", "10.1.1.1/32"]
    assert len(desired_routes(load(d).connections[0], "tunnel1")) == 4


def test_marking_is_by_ingress_tunnel_and_only_the_checks_icmp():
    conn = load(doc()).connections[0]
    rules = rp.nft_rules(conn)
    cin, cout = rp.chains(conn)
    assert rules[cin][:2] == [
        'iifname "ipsec0" ip saddr 192.168.50.1 ip daddr 172.16.20.80 meta l4proto icmp '
        "ct direction original ct mark set 42",
        'iifname "ipsec1" ip saddr 192.168.50.1 ip daddr 172.16.20.80 meta l4proto icmp '
        "ct direction original ct mark set 43"]
    restore = ("ip saddr 172.16.20.80 ip daddr 192.168.50.1 meta l4proto icmp ct direction "
               "reply ct mark { 42, 43 } meta mark set ct mark")
    assert rules[cin][2] == restore and rules[cout] == [restore]
    script = rp.nft_script(conn)
    assert "type route hook output" in script and "type filter hook prerouting" in script
    assert script.index(f"flush chain inet vpnd {cin}") < script.index(f"add rule inet vpnd {cin}")
    assert rp.marks(conn) == [("ipsec0", 42), ("ipsec1", 43)]


def test_policy_mode_has_no_interfaces_to_mark_by():
    d = doc()
    d["connection"][0]["routing"] = "policy"
    assert not rp.wanted(load(d).connections[0])
    assert rp.wanted(load(doc()).connections[0])


def test_nft_problems_reads_nft_json():
    conn = load(doc()).connections[0]
    cin, cout = rp.chains(conn)
    assert rp.nft_problems(None, conn) == ["nft table inet vpnd is missing"]
    full = {"nftables": [{"chain": {"table": "vpnd", "name": cin}},
                         {"chain": {"table": "vpnd", "name": cout}}]
            + [{"rule": {"table": "vpnd", "chain": cin}}] * 3
            + [{"rule": {"table": "vpnd", "chain": cout}}]}
    assert rp.nft_problems(full, conn) == []
    short = {"nftables": full["nftables"][:-1]}
    assert rp.nft_problems(short, conn) == [f"nft chain {cout} has 0 rules, not 1"]


def test_rule_key():
    assert rp.rule_key({"family": 2, "priority": 200, "FRA_FWMARK": 42, "FRA_TABLE": 42}) == (42, 42)
    assert rp.rule_key({"family": 10, "priority": 200, "FRA_FWMARK": 42, "FRA_TABLE": 42}) is None
    assert rp.rule_key({"family": 2, "priority": 32766, "FRA_TABLE": 254}) is None


# --- status and doctor ---------------------------------------------------------------------

def test_status_says_it_bounds_the_return_path_in_route_mode():
    fast = cloud_check(load(doc()).connections[0])
    assert fast["bounds_return_path"] and fast["budget_seconds"] == 3
    assert fast["note"] == ("the cloud's health check bounds the return path: interval 1 s x "
                            "retries 3 = 3 s before the cloud moves")
    assert fast["advice"] is None
    slow = cloud_check(load(doc(interval=3)).connections[0])
    assert slow["budget_seconds"] == 9
    assert "interval 3 s x retries 3 = 9 s" in slow["note"]
    assert slow["advice"] == "set 1 s x 3 in the console for faster return-path failover"
    off = cloud_check(load(doc(switch_route=False)).connections[0])
    assert "Switch Route is off" in off["advice"]


def test_status_without_the_table():
    missing = cloud_check(load(route_config()).connections[0])
    assert missing["configured"] is False and "1 s x 3" in missing["note"]
    d = route_config()
    d["connection"][0]["routing"] = "policy"
    assert cloud_check(load(d).connections[0]) is None


def test_status_table_prints_the_line():
    status = {"daemon": {"pid": 1, "uptime_seconds": 5, "config": "x"}, "connections": {
        "vpc1": {"routing": "route", "state": "active", "active": "tunnel1", "reason": "r",
                 "pinned": None, "tunnels": {},
                 "cloud_health_check": cloud_check(load(doc(interval=2)).connections[0])}}}
    text = control_cli.render(status)
    assert ("  cloud health check: the cloud's health check bounds the return path: interval "
            "2 s x retries 3 = 6 s before the cloud moves; set 1 s x 3 in the console for "
            "faster return-path failover") in text


def test_the_status_board_carries_it():
    from vpnd.control.status import StatusBoard
    cfg = load(doc(interval=5))
    core = {"vpc1": {"state": "active", "active": "tunnel1", "reason": "r", "pinned": None,
                     "tunnels": {}}}
    out = StatusBoard(lambda: cfg, lambda: core).status()
    assert out["connections"]["vpc1"]["cloud_health_check"]["budget_seconds"] == 15


def test_doctor_says_what_to_set():
    results = doctor.check_cloud_health_check(load(doc(interval=3)))
    assert [(r.check, r.status) for r in results] == [("cloud_health_check:vpc1", doctor.WARN)]
    assert "9 s" in results[0].detail and "1 s x 3" in results[0].fix
    assert doctor.check_cloud_health_check(load(doc()))[0].status == doctor.PASS
    missing = doctor.check_cloud_health_check(load(route_config()))[0]
    assert missing.status == doctor.WARN and "Retry Interval 1, Retries 3" in missing.fix


def test_doctor_checks_the_return_path_only_when_vpnd_runs():
    cfg = load(doc())
    skipped = doctor.check_return_path(cfg, running=lambda c: False)
    assert [(r.check, r.status) for r in skipped] == [("return_path:vpc1", doctor.SKIP)]
    assert doctor.check_return_path(load(route_config()), running=lambda c: True) == []


def test_doctor_text_output_shows_the_fix():
    out = io.StringIO()
    doctor.render_text(doctor.check_cloud_health_check(load(doc(interval=3))), out)
    assert "fix: set 1 s x 3 in the console" in out.getvalue()

"""vpnd render: swanctl/FRR output of the vendor's strongSwan guide's dual-egress BGP example against golden files,
the VICI bodies behind it, policy mode, the cloud-side sheet, and secrets never leaking.
(The lab's simulated cloud, vpnd_lab.cloud, has its own goldens: tests/unit/test_lab_cloud.py.)

Regenerate the golden files after an intended change: VPND_UPDATE_GOLDEN=1 pytest this file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from vpnd.config.load import load_file, load_text
from vpnd.render.command import render
from vpnd.render import frr as frr_mod
from vpnd.render import peer, swanctl
from vpnd.render.swanctl import RenderError

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = GOLDEN / "vendor_guide.toml"
PSKS = ("golden-psk-tunnel-1", "golden-psk-tunnel-2")


def seed_config():
    """Loaded from text with a relative source name, so golden files hold no checkout path."""
    return load_text(EXAMPLE.read_text(), source="tests/golden/vendor_guide.toml", base_dir=str(GOLDEN))


def test_vendor_example_loads_the_same():
    assert replace(load_file(EXAMPLE), source="x") == replace(seed_config(), source="x")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("VPND_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; VPND_UPDATE_GOLDEN=1 regenerates it"


def policy_config():
    text = EXAMPLE.read_text()
    head, _, _ = text.partition("[connection.bgp]")
    tunnels = text[text.index("[[connection.tunnel]]"):]
    tunnels = "\n".join(
        line for line in tunnels.splitlines()
        if not line.startswith(("local_ts", "remote_ts", "tunnel_cidr", "local_ip", "peer_ip",
                                "[connection.tunnel.bgp]")))
    head = head.replace('routing = "bgp"', 'routing = "policy"')
    return load_text(head + tunnels, base_dir=str(GOLDEN))


# --- golden files ------------------------------------------------------------------------

def test_swanctl_matches_golden():
    check_golden("vendor_guide.swanctl.conf", swanctl.swanctl_text(seed_config()))


def test_frr_matches_golden():
    check_golden("vendor_guide.frr.conf", frr_mod.frr_config(seed_config()).text())


def test_peer_matches_golden():
    check_golden("vendor_guide.peer.txt", peer.peer_text(seed_config()))


# --- the VICI bodies (what charon gets) ---------------------------------------------------

def test_vici_conn_vendor_guide_semantics():
    config = seed_config()
    conn = config.connections[0]
    names = [swanctl.conn_name(conn.name, t.name) for t in conn.tunnels]
    assert names == ["vpnd-vco-tunnel1", "vpnd-vco-tunnel2"]
    for t, if_id, cloud in zip(conn.tunnels, ("42", "43"), ("198.18.0.1", "198.18.0.11")):
        body = swanctl.vici_conn(conn, t)
        assert body["version"] == "2"
        assert body["proposals"] == ["aes128-sha1-modp1024"]
        assert body["local_addrs"] == ["198.18.0.2"] and body["remote_addrs"] == [cloud]
        assert body["dpd_delay"] == "10s"
        assert (body["rekey_time"], body["over_time"]) == ("84600s", "1800s")
        assert body["keyingtries"] == "1" and body["encap"] == "yes"
        assert body["local"] == {"auth": "psk", "id": "198.18.0.2"}
        assert body["remote"] == {"auth": "psk", "id": cloud}
        (child_name, child), = body["children"].items()
        assert child_name == swanctl.conn_name(conn.name, t.name)
        assert child["esp_proposals"] == ["aes128-sha1-modp1024"]
        assert child["if_id_in"] == child["if_id_out"] == if_id
        assert child["local_ts"] == child["remote_ts"] == ["0.0.0.0/0"]
        assert (child["rekey_time"], child["life_time"]) == ("85500s", "86400s")
        # vpnd is charon's only re-initiator
        assert (child["start_action"], child["close_action"], child["dpd_action"]) == ("none", "none", "clear")
        assert "priority" not in child
        # VICI wants strings or lists of strings everywhere
        assert all_strings(body)


def all_strings(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and all_strings(v) for k, v in value.items())
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    return isinstance(value, str)


def test_vici_secret_has_real_key_and_both_ids():
    conn = seed_config().connections[0]
    s = swanctl.vici_secret(conn, conn.tunnels[0])
    assert s == {"id": "vpnd-vco-tunnel1", "type": "IKE", "data": PSKS[0],
                 "owners": ["198.18.0.1", "198.18.0.2"]}


def test_conn_name_round_trip():
    assert swanctl.parse_conn_name("vpnd-vpc1-tunnel2") == ("vpc1", "tunnel2")
    assert swanctl.parse_conn_name("vpnd-my-vpc-tunnel1") == ("my-vpc", "tunnel1")
    assert swanctl.parse_conn_name("other-vpc1-tunnel1") is None
    assert swanctl.parse_conn_name("vpnd-x") is None
    config = seed_config()
    assert swanctl.parse_conn_name("vpnd-vco-tunnel1", config) == ("vco", "tunnel1")
    assert swanctl.parse_conn_name("vpnd-vco-tunnel9", config) is None


# --- rules: proposals, lifetimes, modes ------------------------------------------------------

def test_proposal_mapping_and_pfs_disabled():
    conn = seed_config().connections[0]
    conn = replace(conn, ike=replace(conn.ike, encryption="aes256", integrity="sha256", dh_group="group14"),
                   ipsec=replace(conn.ipsec, encryption="3des", integrity="md5", pfs_group="disabled"))
    body = swanctl.vici_conn(conn, conn.tunnels[0])
    assert body["proposals"] == ["aes256-sha256-modp2048"]
    assert body["children"]["vpnd-vco-tunnel1"]["esp_proposals"] == ["3des-md5"]
    conn = replace(conn, ike=replace(conn.ike, dh_group="group5"), ipsec=replace(conn.ipsec, pfs_group="group1"))
    body = swanctl.vici_conn(conn, conn.tunnels[0])
    assert body["proposals"] == ["aes256-sha256-modp1536"]
    assert body["children"]["vpnd-vco-tunnel1"]["esp_proposals"] == ["3des-md5-modp768"]


def test_ikev1_aggressive():
    conn = seed_config().connections[0]
    body = swanctl.vici_conn(conn, conn.tunnels[0])
    assert "aggressive" not in body
    conn = replace(conn, ike=replace(conn.ike, version=1, mode="aggressive"))
    body = swanctl.vici_conn(conn, conn.tunnels[0])
    assert body["version"] == "1" and body["aggressive"] == "yes"
    conn = replace(conn, ike=replace(conn.ike, mode="main"))
    assert swanctl.vici_conn(conn, conn.tunnels[0])["aggressive"] == "no"


@pytest.mark.parametrize("lifetime, ike, child", [
    (86400, {"rekey_time": "84600s", "over_time": "1800s"}, {"rekey_time": "85500s", "life_time": "86400s"}),
    (3600, {"rekey_time": "3240s", "over_time": "360s"}, {"rekey_time": "3240s", "life_time": "3600s"}),
    (0, {"rekey_time": "0s"}, {"rekey_time": "0s", "life_time": "0s"}),
])
def test_lifetime_rule(lifetime, ike, child):
    assert swanctl.ike_times(lifetime) == ike
    assert swanctl.child_times(lifetime) == child
    if lifetime:    # the hard end is the cloud's lifetime, never later
        assert int(ike["rekey_time"][:-1]) + int(ike["over_time"][:-1]) == lifetime


def test_dpd_zero_and_no_nat_traversal():
    conn = replace(seed_config().connections[0], dpd_delay=0, nat_traversal=False)
    body = swanctl.vici_conn(conn, conn.tunnels[0])
    assert body["dpd_delay"] == "0s" and body["encap"] == "no"


def test_policy_mode_priorities_networks_no_if_id():
    config = policy_config()
    conn = config.connections[0]
    for t, prio in zip(conn.tunnels, ("1", "2")):
        child = swanctl.vici_conn(conn, t)["children"][swanctl.conn_name(conn.name, t.name)]
        assert child["local_ts"] == ["172.16.20.0/24", "172.16.21.0/24"]
        assert child["remote_ts"] == ["192.168.0.0/16"]
        assert child["priority"] == prio
        assert "if_id_in" not in child and "if_id_out" not in child
    text = swanctl.swanctl_text(config)
    assert "local_ts = 172.16.20.0/24, 172.16.21.0/24" in text
    assert "priority = 2" in text
    with pytest.raises(RenderError, match="bgp"):
        frr_mod.frr_config(config)


def test_existing_interface_has_no_if_id():
    conn = seed_config().connections[0]
    t = replace(conn.tunnels[0], interface_kind="existing")
    assert "if_id_in" not in swanctl.vici_conn(conn, t)["children"]["vpnd-vco-tunnel1"]


def test_tunnel_ts_override_in_route_mode():
    conn = replace(seed_config().connections[0], routing="route")
    t = replace(conn.tunnels[0], local_ts=(), remote_ts=())
    assert swanctl.traffic_selectors(conn, t) == (["0.0.0.0/0"], ["0.0.0.0/0"])
    import ipaddress
    t = replace(t, local_ts=(ipaddress.ip_network("10.255.1.2/32"),))
    assert swanctl.traffic_selectors(conn, t) == (["10.255.1.2/32"], ["0.0.0.0/0"])


def test_quoting():
    assert swanctl.quote("198.18.0.2") == "198.18.0.2"
    assert swanctl.quote("vpn.example.com") == "vpn.example.com"
    assert swanctl.quote('a b"c\\') == '"a b\\"c\\\\"'


# --- FRR -------------------------------------------------------------------------------------

def test_frr_vendor_guide_semantics():
    cfg = frr_mod.frr_config(seed_config())
    keys = [c.keys for c in cfg.contexts]
    router = keys.index(("router bgp 65530",))
    # route-maps before router bgp, delay timer first
    assert keys[0] == ("bgp route-map delay-timer 0",)
    assert all(i < router for i, k in enumerate(keys) if k[0].startswith("route-map"))
    top = cfg.contexts[router].lines
    assert top[0] == "bgp router-id 169.254.10.2"
    for peer_ip in ("169.254.10.1", "169.254.20.1"):
        assert f"neighbor {peer_ip} remote-as 65535" in top
        assert f"neighbor {peer_ip} timers 10 30" in top
    af = cfg.contexts[router + 1]
    assert af.keys == ("router bgp 65530", "address-family ipv4 unicast")
    assert af.lines[:2] == ("network 172.16.20.0/24", "network 172.16.21.0/24")
    assert af.lines[-1] == "maximum-paths 32"
    assert "neighbor 169.254.10.1 route-map allow-all out" in af.lines
    assert "neighbor 169.254.20.1 route-map vpnd-vco-standby-out out" in af.lines
    rm = next(c for c in cfg.contexts if c.keys == ("route-map vpnd-vco-standby-out permit 1",))
    # the return path: the standby announces no more-specific (tests/unit/test_bgp_return_path.py)
    assert rm.lines == ("match ip address prefix-list vpnd-vco-standby-out",
                        "set as-path prepend 65530 65530 65530")


def test_frr_ecmp_bfd_networks_router_id():
    import ipaddress
    config = seed_config()
    conn = config.connections[0]
    bgp = replace(conn.bgp, standby="ecmp", networks=(ipaddress.ip_network("10.0.0.0/8"),),
                  router_id=ipaddress.ip_address("1.2.3.4"),
                  bfd=replace(conn.bgp.bfd, enabled=True, receive_interval_ms=100))
    config = replace(config, connections=(replace(conn, bgp=bgp),))
    text = frr_mod.frr_config(config).text()
    assert "standby" not in text
    assert "network 10.0.0.0/8" in text and "172.16.20.0" not in text
    assert "bgp router-id 1.2.3.4" in text
    assert " neighbor 169.254.20.1 bfd profile vpnd-vco\n" in text
    assert "bfd\n profile vpnd-vco\n  receive-interval 100\n  transmit-interval 300\n" \
           "  detect-multiplier 3\n exit\nexit\n" in text
    assert text.index("bfd\n") < text.index("router bgp")


def test_frr_text_nesting():
    cfg = frr_mod.FrrConfig((
        frr_mod.Context(("bgp route-map delay-timer 0",)),
        frr_mod.Context(("route-map a permit 1",)),
        frr_mod.Context(("router bgp 1",), ("bgp router-id 1.1.1.1",)),
        frr_mod.Context(("router bgp 1", "address-family ipv4 unicast"), ("maximum-paths 2",)),
    ))
    assert cfg.text() == (
        "bgp route-map delay-timer 0\nroute-map a permit 1\nexit\nrouter bgp 1\n"
        " bgp router-id 1.1.1.1\n address-family ipv4 unicast\n  maximum-paths 2\n"
        " exit-address-family\nexit\n")


# --- the cloud-side sheet ----------------------------------------------------------------------

def test_peer_sheet_fields():
    sheet = peer.peer_text(seed_config())
    assert "Gateway IP Address:         198.18.0.11" in sheet
    assert "LocalId:                    198.18.0.1\n" in sheet
    assert "RemoteId:                   198.18.0.2\n" in sheet
    assert "Local ASN:                  65535" in sheet
    assert "Customer Gateway ASN:       65530" in sheet
    assert "Local BGP IP Address:       169.254.20.1" in sheet


# --- secrets ------------------------------------------------------------------------------------

def test_secrets_masked_unless_asked():
    config = seed_config()
    for what in ("swanctl", "frr", "peer"):
        text = render(what, config)
        assert not any(p in text for p in PSKS), what
    assert "secret = ********" in render("swanctl", config)
    assert "Pre-shared Key:             ********" in render("peer", config)
    shown = render("swanctl", config, show_secrets=True)
    assert all(f"secret = {p}" in shown for p in PSKS)
    assert all(p in render("peer", config, show_secrets=True) for p in PSKS)
    assert not any(p in render("frr", config, show_secrets=True) for p in PSKS)


# --- CLI ------------------------------------------------------------------------------------------

def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "vpnd", "render", *args], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=30)


def test_cli_example_renders_without_psk():
    psks = [p.read_text().strip() for p in (ROOT / "examples").glob("*.psk")]
    r = run_cli("swanctl", "-c", "config.toml.example")
    assert r.returncode == 0, r.stderr
    assert "vpnd-vpc1-tunnel1 {" in r.stdout
    assert psks and not any(p in r.stdout + r.stderr for p in psks)
    r = run_cli("peer", "-c", "config.toml.example")
    assert r.returncode == 0 and not any(p in r.stdout for p in psks)


def test_cli_errors(tmp_path):
    r = run_cli("frr", "-c", "config.toml.example")
    assert r.returncode == 1 and r.stderr.startswith("error: no connection uses routing")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[connection]]\nname = 'x'\n")
    r = run_cli("swanctl", "-c", str(bad))
    assert r.returncode == 1 and "error: " in r.stderr and "Traceback" not in r.stderr


def test_frr_several_bgp_connections():
    import ipaddress
    config = seed_config()
    conn = config.connections[0]
    other = replace(
        conn, name="b", local_networks=(ipaddress.ip_network("10.1.0.0/16"),),
        tunnels=tuple(replace(t, bgp=replace(t.bgp, peer_ip=ipaddress.ip_address(f"169.254.{30 + i}.1")))
                      for i, t in enumerate(conn.tunnels)))
    route_only = replace(conn, name="r", routing="route", bgp=None)
    cfg = frr_mod.frr_config(replace(config, connections=(conn, other, route_only)))
    routers = [c for c in cfg.contexts if c.keys[0].startswith("router bgp")]
    assert {c.keys[0] for c in routers} == {"router bgp 65530"}
    assert "neighbor 169.254.31.1 remote-as 65535" in routers[0].lines
    assert "network 10.1.0.0/16" in routers[1].lines
    assert ("route-map vpnd-b-standby-out permit 1",) in [c.keys for c in cfg.contexts]
    entries = cfg.entries()
    assert (("router bgp 65530",), "bgp router-id 169.254.10.2") in entries
    assert entries[0] == (("bgp route-map delay-timer 0",), None)
    other = replace(other, bgp=replace(other.bgp, local_asn=65001))
    with pytest.raises(RenderError, match="local_asn"):
        frr_mod.frr_config(replace(config, connections=(conn, other)))

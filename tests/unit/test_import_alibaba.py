"""`vpnd import alibaba`: documented-shape DescribeVpnConnection responses become configs that
`vpnd check` accepts (route, policy, BGP, single tunnel; with and without the cloud's health
check); what the cloud cannot know stays a placeholder check refuses by saying what to fill
in; nothing is overwritten without --force; keys only in their 0600 files; and the SDK path
against a local HTTP endpoint answering as the API documents (no network, no credentials
from the environment)."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest

from vpnd.cli import build_parser
from vpnd.cloud import alibaba, command
from vpnd.config import check
from vpnd.config.load import load_file
from vpnd_testing import alibaba_responses as r

OURS = ["--local-address", "198.18.0.2", "--local-network", "172.16.0.0/16",
        "--remote-network", "192.168.0.0/16"]


def run_import(tmp_path, response, *flags, name="resp.json", **kw):
    src = tmp_path / name
    src.write_text(json.dumps(response))
    out, err = io.StringIO(), io.StringIO()
    args = build_parser().parse_args(["import", "alibaba", "--response", str(src),
                                      "-o", str(tmp_path / "etc" / "vpnd.toml"), *flags])
    rc = command.main(args, out, err, **kw)
    return rc, out.getvalue(), err.getvalue()


def run_check(path):
    out, err = io.StringIO(), io.StringIO()
    rc = check.main(SimpleNamespace(config=str(path)), out, err)
    return rc, out.getvalue() + err.getvalue()


def conf(tmp_path):
    return tmp_path / "etc" / "vpnd.toml"


def test_route_mode_with_health_check_is_accepted_and_maps_every_field(tmp_path):
    rc, out, err = run_import(tmp_path, r.dual_tunnel(), *OURS)
    assert rc == 0, err
    rc, text = run_check(conf(tmp_path))
    assert rc == 0, text
    assert "OK: 1 connection, 2 tunnels (route mode)" in text
    c = load_file(conf(tmp_path)).connections[0]
    assert c.name == "vpc1-to-office"               # the cloud's Name, as a vpnd name
    assert [str(n) for n in c.local_networks] == ["172.16.0.0/16"]
    assert [str(n) for n in c.remote_networks] == ["192.168.0.0/16"]
    # IKE: "aes" is aes128, "ikev2" is 2, the string lifetime an integer; IPsec likewise
    assert (c.ike.version, c.ike.mode, c.ike.encryption, c.ike.integrity, c.ike.dh_group,
            c.ike.lifetime) == (2, "main", "aes128", "sha256", "group14", 86400)
    assert (c.ipsec.encryption, c.ipsec.integrity, c.ipsec.pfs_group, c.ipsec.lifetime) == \
        ("aes256", "sha256", "group14", 3600)
    assert c.dpd_delay == 10 and c.nat_traversal is True
    # the master tunnel first although the response lists it second; ids swapped sides
    t1, t2 = c.tunnels
    assert (str(t1.remote_address), str(t2.remote_address)) == ("198.19.0.1", "198.19.0.2")
    assert (t1.local_id, t1.remote_id) == ("198.18.0.2", "198.19.0.1")
    assert t1.psk.reveal() == r.PSK_1 and t2.psk.reveal() == r.PSK_2
    # the cloud probes Sip -> Dip; vpnd probes Dip -> Sip; revoke_route moves traffic
    hc = c.health_check
    assert (str(hc.destination), str(hc.source), hc.interval, hc.retries, hc.switch_route) == \
        ("192.168.10.10", "172.16.20.80", 3.0, 3, True)
    # and the cloud's own check, as its console shows it
    cc = c.cloud_health_check
    assert (str(cc.source_ip), str(cc.destination_ip), cc.interval, cc.retries, cc.switch_route) == \
        ("192.168.10.10", "172.16.20.80", 3, 3, True)
    assert "Role master" in out and "ipsec_sa_established" in out


def test_bgp_mode_is_accepted_with_both_tunnels_bgp(tmp_path):
    rc, out, err = run_import(tmp_path, r.dual_tunnel(bgp=True, health_check=False), *OURS,
                              "--probe-source", "172.16.20.80",
                              "--probe-destination", "192.168.10.10")
    assert rc == 0, err
    rc, text = run_check(conf(tmp_path))
    assert rc == 0, text
    c = load_file(conf(tmp_path)).connections[0]
    assert c.routing == "bgp"
    assert (c.bgp.local_asn, c.bgp.peer_asn) == (65530, 45104)     # the cloud's Peer is us
    b1, b2 = c.tunnels[0].bgp, c.tunnels[1].bgp
    assert (str(b1.tunnel_cidr), str(b1.local_ip), str(b1.peer_ip)) == \
        ("169.254.10.0/30", "169.254.10.2", "169.254.10.1")
    assert str(b2.tunnel_cidr) == "169.254.20.0/30"
    assert str(c.health_check.source) == "172.16.20.80"


def test_protected_data_flows_become_policy_mode_with_the_clouds_subnets(tmp_path):
    resp = r.dual_tunnel(local_subnet="192.168.0.0/16", remote_subnet="172.16.0.0/16")
    rc, out, err = run_import(tmp_path, resp, "--local-address", "198.18.0.2")
    assert rc == 0, err
    rc, text = run_check(conf(tmp_path))
    assert rc == 0, text
    c = load_file(conf(tmp_path)).connections[0]
    assert c.routing == "policy"
    assert [str(n) for n in c.local_networks] == ["172.16.0.0/16"]     # RemoteSubnet is ours
    assert [str(n) for n in c.remote_networks] == ["192.168.0.0/16"]


def test_a_flag_contradicting_the_clouds_subnets_is_refused_and_nothing_written(tmp_path):
    resp = r.dual_tunnel(local_subnet="192.168.0.0/16", remote_subnet="172.16.0.0/16")
    rc, out, err = run_import(tmp_path, resp, "--local-network", "10.0.0.0/8")
    assert rc == 1
    assert "--local-network 10.0.0.0/8 contradicts the cloud's RemoteSubnet 172.16.0.0/16" in err
    assert not (tmp_path / "etc").exists()


def test_single_tunnel_connection_is_accepted(tmp_path):
    rc, out, err = run_import(tmp_path, r.single_tunnel(), "--local-address", "198.18.0.2",
                              "--probe-source", "172.16.20.80",
                              "--probe-destination", "192.168.10.10")
    assert rc == 0, err
    rc, text = run_check(conf(tmp_path))
    assert rc == 0, text
    c = load_file(conf(tmp_path)).connections[0]
    assert c.routing == "policy" and len(c.tunnels) == 1
    assert (c.ike.version, c.ike.encryption) == (1, "aes128")


def test_placeholders_are_refused_by_check_saying_what_to_fill_in(tmp_path):
    rc, out, err = run_import(tmp_path, r.dual_tunnel(health_check=False))
    assert rc == 0, err
    assert "6 values to fill in" in out
    text = conf(tmp_path).read_text()
    assert text.count("# FILL IN") == 6
    rc, msgs = run_check(conf(tmp_path))
    assert rc == 1
    lines = [m for m in msgs.splitlines() if m.startswith("error:")]
    assert len(lines) == 6, msgs
    assert all("placeholder left by `vpnd import`: fill in" in m for m in lines)
    for path, what in (("connection[0].local_networks", "the on-premises CIDRs (--local-network"),
                       ("connection[0].remote_networks", "the VPC CIDRs (--remote-network"),
                       ("connection[0].tunnel[0].local_address", "our IKE address for tunnel1"),
                       ("connection[0].tunnel[1].local_address", "our IKE address for tunnel2"),
                       ("connection[0].health_check.destination", "a VPC address that answers"),
                       ("connection[0].health_check.source", "our address inside local_networks")):
        assert any(m.startswith(f"error: {path}: ") and what in m for m in lines), (path, msgs)


def test_placeholders_filled_in_by_hand_pass(tmp_path):
    run_import(tmp_path, r.dual_tunnel())
    path = conf(tmp_path)
    text = path.read_text()
    import re
    text = re.sub(r'local_networks = \["<fill in[^"]*"\]', 'local_networks = ["172.16.0.0/16"]', text)
    text = re.sub(r'remote_networks = \["<fill in[^"]*"\]', 'remote_networks = ["192.168.0.0/16"]', text)
    text = re.sub(r'local_address = "<fill in[^"]*"', 'local_address = "198.18.0.2"', text)
    path.write_text(text)
    rc, msgs = run_check(path)
    assert rc == 0, msgs


def test_existing_files_are_not_overwritten_without_force(tmp_path):
    assert run_import(tmp_path, r.dual_tunnel(), *OURS)[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "etc").rglob("*") if p.is_file()}
    changed = r.with_tunnel(r.dual_tunnel(), 0, TunnelIkeConfig={"Psk": "Another-Key-1234567"})
    rc, out, err = run_import(tmp_path, changed, *OURS)
    assert rc == 1 and "exist; nothing written (--force overwrites)" in err
    assert {p: p.read_bytes() for p in before} == before
    rc, out, err = run_import(tmp_path, changed, *OURS, "--force")
    assert rc == 0, err
    assert load_file(conf(tmp_path)).connections[0].tunnels[0].psk.reveal() == "Another-Key-1234567"


def test_file_modes_and_keys_only_in_their_files(tmp_path):
    rc, out, err = run_import(tmp_path, r.dual_tunnel(), *OURS)
    assert rc == 0, err
    psk_dir = tmp_path / "etc" / "psk"
    assert stat.S_IMODE(psk_dir.stat().st_mode) == 0o700
    files = sorted(psk_dir.iterdir())
    assert [f.name for f in files] == ["vpc1-to-office-tunnel1.psk", "vpc1-to-office-tunnel2.psk"]
    for f, key in zip(files, (r.PSK_1, r.PSK_2)):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert f.read_text() == key + "\n"
    assert stat.S_IMODE(conf(tmp_path).stat().st_mode) == 0o600
    for text in (out, err, conf(tmp_path).read_text()):
        assert r.PSK_1 not in text and r.PSK_2 not in text
    assert "psk ********" in out
    assert not [p for p in psk_dir.iterdir() if p.name.startswith(".vpnd-import-")]


def test_psk_dir_elsewhere_is_created_0700_and_named_absolutely(tmp_path):
    keys = tmp_path / "keys" / "vpnd"
    rc, out, err = run_import(tmp_path, r.dual_tunnel(), *OURS, "--psk-dir", str(keys))
    assert rc == 0, err
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert f'psk_file = "{keys}/vpc1-to-office-tunnel1.psk"' in conf(tmp_path).read_text()
    assert run_check(conf(tmp_path))[0] == 0


def test_tunnels_differing_in_a_per_connection_setting_are_refused(tmp_path):
    resp = r.with_tunnel(r.dual_tunnel(), 1, TunnelIkeConfig={"IkePfs": "group5"})
    rc, out, err = run_import(tmp_path, resp, *OURS)
    assert rc == 1
    assert "the cloud's tunnels differ in IkePfs (tunnel 1 'group14', tunnel 2 'group5')" in err
    assert not (tmp_path / "etc").exists()


def test_a_value_vpnd_does_not_support_is_written_and_refused_by_check(tmp_path):
    resp = r.with_tunnel(r.with_tunnel(r.dual_tunnel(), 0, TunnelIkeConfig={"IkeEncAlg": "sm4"}),
                         1, TunnelIkeConfig={"IkeEncAlg": "sm4"})
    rc, out, err = run_import(tmp_path, resp, *OURS)
    assert rc == 0, err
    rc, msgs = run_check(conf(tmp_path))
    assert rc == 1 and "connection[0].ike.encryption: 'sm4' is not one of aes128" in msgs


def test_not_a_response_is_a_clear_error(tmp_path):
    rc, out, err = run_import(tmp_path, {"Code": "Forbidden", "Message": "no"})
    assert rc == 1 and "not a DescribeVpnConnection response" in err
    (tmp_path / "bad.json").write_text("{")
    args = build_parser().parse_args(["import", "alibaba", "--response", str(tmp_path / "bad.json"),
                                      "-o", str(tmp_path / "x.toml")])
    e = io.StringIO()
    assert command.main(args, io.StringIO(), e) == 1 and "not JSON" in e.getvalue()


def test_the_sdk_output_shape_with_a_body_key_is_read(tmp_path):
    rc, out, err = run_import(tmp_path, {"headers": {}, "statusCode": 200,
                                         "body": r.dual_tunnel()}, *OURS)
    assert rc == 0, err


# --- the SDK path, against a local endpoint ----------------------------------------------------

class Endpoint:
    """A local HTTP server answering the VPC API's actions (x-acs-action) as documented."""

    def __init__(self, answers):
        self.requests = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                form = parse_qs(self.rfile.read(n).decode())
                query = {k: v[0] for k, v in {**parse_qs(urlparse(self.path).query), **form}.items()}
                action = self.headers.get("x-acs-action")
                seen.append({"action": action, "query": query,
                             "authorization": self.headers.get("Authorization", "")})
                status, body = answers(action, query)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.server.server_port}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sdk(monkeypatch):
    pytest.importorskip("alibabacloud_vpc20160428")
    pytest.importorskip("alibabacloud_credentials")
    for var in list(os.environ):
        if var.startswith(("ALIBABA_CLOUD", "ALICLOUD")):
            monkeypatch.delenv(var)
    from alibabacloud_credentials.client import Client
    from alibabacloud_credentials.models import Config
    return Client(Config(type="access_key", access_key_id="LTAI-test-key-id",
                         access_key_secret="test-secret"))


def test_sdk_path_against_a_local_endpoint(tmp_path, sdk):
    def answers(action, query):
        if action == "DescribeVpnConnection":
            return 200, r.dual_tunnel()
        return 200, {"CustomerGatewayId": query["CustomerGatewayId"], "IpAddress": "198.18.0.2",
                     "Name": "office", "RequestId": "C1"}

    ep = Endpoint(answers)
    try:
        out, err = io.StringIO(), io.StringIO()
        args = build_parser().parse_args([
            "import", "alibaba", "--connection-id", "vco-bp1bbi27hojx80nck****",
            "--region", "cn-hangzhou", "--endpoint", ep.address, "-o", str(conf(tmp_path)),
            "--local-network", "172.16.0.0/16", "--remote-network", "192.168.0.0/16"])
        rc = command.main(args, out, err, credential=sdk, protocol="http")
    finally:
        ep.close()
    assert rc == 0, err.getvalue()
    actions = [q["action"] for q in ep.requests]
    assert actions[0] == "DescribeVpnConnection"
    assert sorted(actions[1:]) == ["DescribeCustomerGateway"] * 2
    assert ep.requests[0]["query"] == {"RegionId": "cn-hangzhou",
                                       "VpnConnectionId": "vco-bp1bbi27hojx80nck****"}
    assert all("Credential=LTAI-test-key-id" in q["authorization"] for q in ep.requests)
    # the customer gateways' addresses fill in our IKE address: nothing left to fill in
    rc, msgs = run_check(conf(tmp_path))
    assert rc == 0, msgs
    assert str(load_file(conf(tmp_path)).connections[0].tunnels[1].local_address) == "198.18.0.2"
    assert "test-secret" not in out.getvalue() + err.getvalue()


def test_sdk_error_is_reported_with_the_apis_code(tmp_path, sdk):
    ep = Endpoint(lambda action, q: (403, {"Code": "Forbidden.RAM", "RequestId": "E1",
                                           "Message": "User not authorized to operate"}))
    try:
        err = io.StringIO()
        args = build_parser().parse_args([
            "import", "alibaba", "--connection-id", "vco-x", "--region", "cn-hangzhou",
            "--endpoint", ep.address, "-o", str(conf(tmp_path))])
        rc = command.main(args, io.StringIO(), err, credential=sdk, protocol="http")
    finally:
        ep.close()
    assert rc == 1
    assert "DescribeVpnConnection vco-x in cn-hangzhou failed: Forbidden.RAM" in err.getvalue()
    assert "Traceback" not in err.getvalue() and not (tmp_path / "etc").exists()


def test_without_the_sdk_the_api_path_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "alibabacloud_vpc20160428", None)
    err = io.StringIO()
    args = build_parser().parse_args(["import", "alibaba", "--connection-id", "vco-x",
                                      "--region", "cn-hangzhou", "-o", str(conf(tmp_path))])
    assert command.main(args, io.StringIO(), err) == 1
    assert "pip install 'vpnd[alibaba]'" in err.getvalue() and "--response" in err.getvalue()


def test_mapping_is_pure_data():
    imp = alibaba.from_response(r.dual_tunnel(bgp=True))
    assert imp.doc["routing"] == "bgp" and len(imp.psks) == 2
    assert [c["Role"] for c in imp.cloud] == ["master", "slave"]


def test_the_views_call_skips_the_customer_gateways(sdk):
    ep = Endpoint(lambda action, q: (200, r.dual_tunnel()))
    try:
        body, gateways = alibaba.fetch("vco-x", "cn-hangzhou", endpoint=ep.address,
                                       credential=sdk, protocol="http", gateways=False)
    finally:
        ep.close()
    assert [q["action"] for q in ep.requests] == ["DescribeVpnConnection"] and gateways == {}
    assert body["TunnelOptionsSpecification"]["TunnelOptions"][0]["TunnelIkeConfig"]["IkePfs"] == "group14"


def test_the_written_config_offers_the_clouds_view_commented_out(tmp_path):
    rc, out, err = run_import(tmp_path, r.dual_tunnel(), *OURS)
    text = conf(tmp_path).read_text()
    assert '# [connection.cloud_api]\n# connection_id = "vco-bp1bbi27hojx80nck****"' in text

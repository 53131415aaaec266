"""An import from a documented-shape DescribeVpnConnection response brings both tunnels up
against the lab's cloud configured with the same values (route mode, libipsec backend); with
[connection.cloud_api] the running daemon's `vpnd status` shows the cloud's own view and a
setting the cloud changed since ("cloud says group5 / vpnd has group2")."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from vpnd_testing import alibaba_responses

from vpnd.cli import build_parser
from vpnd.cloud import command
from vpnd.config.load import load_file
from vpnd.control import cli as control_cli
from vpnd_lab import daemons
from vpnd_lab.cli import active_interface, both_established, wait_until

pytestmark = pytest.mark.lab


SERVER = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
body = open(sys.argv[2], "rb").read()
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def import_for_lab(lab, response_body: dict) -> Path:
    """`vpnd import alibaba` of a saved response, plus what the lab's backend needs on our side
    and no cloud knows: its [daemon] (sockets in the lab's directory) and, on libipsec,
    existing VXLAN links with /32 selectors."""
    conn = lab.config.connections[0]
    response = lab.lab.dir / "describe-vpn-connection.json"
    response.write_text(json.dumps(response_body))
    imported = lab.lab.dir / "imported" / "vpnd.toml"
    p = lab.lab.plan
    args = build_parser().parse_args([
        "import", "alibaba", "--response", str(response), "-o", str(imported), "--force",
        "--local-address", str(p.cgw_wan), "--local-network", str(p.lan_net),
        "--remote-network", str(p.vpc_net), "--interface", "vxlan1", "--interface", "vxlan2"])
    out, err = io.StringIO(), io.StringIO()
    assert command.main(args, out, err) == 0, err.getvalue()
    assert "to fill in" not in out.getvalue()
    lab_text = (lab.lab.dir / "vpnd.toml").read_text()
    daemon = lab_text[lab_text.index("[daemon]"):lab_text.index("[[connection]]")]
    text = imported.read_text()
    for t in conn.tunnels:
        extra = (f'interface_kind = "existing"\nlocal_ts = ["{t.local_ts[0]}"]\n'
                 f'remote_ts = ["{t.remote_ts[0]}"]\n')
        text = re.sub(rf'(psk_file = "psk/vpc1-{t.name}.psk"\n)', rf"\g<1>{extra}", text)
    imported.write_text(daemon + "\n" + text)
    return imported


def test_imported_config_brings_both_tunnels_up(make_lab):
    lab = make_lab()
    conn = lab.config.connections[0]            # the lab's cloud is loaded from these values
    imported = import_for_lab(lab, alibaba_responses.from_config(conn))
    mine = load_file(imported).connections[0]
    # every value the cloud holds came from the response, equal to what the cloud runs
    assert (mine.ike, mine.ipsec, mine.dpd_delay > 0, mine.nat_traversal) == \
        (conn.ike, conn.ipsec, conn.dpd_delay > 0, conn.nat_traversal)
    for a, b in zip(mine.tunnels, conn.tunnels):
        assert (a.remote_address, a.local_id, a.remote_id, a.psk) == \
            (b.remote_address, b.local_id, b.remote_id, b.psk)

    lab.vpnd_pid = daemons.start_vpnd(lab.lab, imported)   # vpnd on the imported config
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    wait_until("route on tunnel 1", lambda: active_interface(lab.lab) == "vxlan1", 30)


def test_status_shows_the_cloud_changed_its_dh_group(make_lab):
    """The cloud's API (a documented-shape answer served in cgw's namespace) says group5 after
    the import wrote group2: `vpnd status` shows both ends and the difference."""
    pytest.importorskip("alibabacloud_vpc20160428")
    lab = make_lab()
    conn = lab.config.connections[0]
    body = alibaba_responses.from_config(conn)
    imported = import_for_lab(lab, body)
    changed = alibaba_responses.with_tunnel(alibaba_responses.with_tunnel(
        body, 0, TunnelIkeConfig={"IkePfs": "group5"}, Status="ike_sa_not_established"),
        1, TunnelIkeConfig={"IkePfs": "group5"})
    (lab.lab.dir / "cloud-answer.json").write_text(json.dumps(changed))
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen(["ip", "netns", "exec", lab.lab.ns("cgw"), sys.executable, "-c",
                               SERVER, str(port), str(lab.lab.dir / "cloud-answer.json")])
    try:
        with open(imported, "a") as f:
            f.write(f'\n[connection.cloud_api]\nconnection_id = "vco-lab"\nregion = "cn-hangzhou"\n'
                    f'endpoint = "http://127.0.0.1:{port}"\n')
        lab.vpnd_pid = daemons.start_vpnd(lab.lab, imported, extra_env={
            "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI-lab", "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "lab"})
        wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
        sock = str(lab.lab.dir / "control.sock")

        def status() -> str:
            out, err = io.StringIO(), io.StringIO()
            control_cli.main(build_parser().parse_args(["status", "--socket", sock]), out, err)
            return out.getvalue()

        wait_until("the cloud's view in status", lambda: "MISMATCH" in status(), 30, interval=0.5)
        text = status()
        print(text)
        assert "MISMATCH tunnel1: ike.dh_group: cloud says group5 / vpnd has group2" in text
        assert "MISMATCH tunnel2: ike.dh_group: cloud says group5 / vpnd has group2" in text
        assert "tunnel1 ike_sa_not_established (active)" in text
        assert conn.tunnels[0].psk.reveal() not in text
    finally:
        server.kill()
        server.wait()

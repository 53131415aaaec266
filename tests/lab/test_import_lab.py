"""An import from a documented-shape DescribeVpnConnection response brings both tunnels up
against the lab's cloud configured with the same values (route mode, libipsec backend)."""

from __future__ import annotations

import io
import json
import re

import pytest
from vpnd_testing import alibaba_responses

from vpnd.cli import build_parser
from vpnd.cloud import command
from vpnd.config.load import load_file
from vpnd_lab import daemons
from vpnd_lab.cli import active_interface, both_established, wait_until

pytestmark = pytest.mark.lab


def test_imported_config_brings_both_tunnels_up(make_lab):
    lab = make_lab()
    lab_config = lab.lab.dir / "vpnd.toml"
    conn = lab.config.connections[0]            # the lab's cloud is loaded from these values
    response = lab.lab.dir / "describe-vpn-connection.json"
    response.write_text(json.dumps(alibaba_responses.from_config(conn)))
    imported = lab.lab.dir / "imported" / "vpnd.toml"
    p = lab.lab.plan
    args = build_parser().parse_args([
        "import", "alibaba", "--response", str(response), "-o", str(imported),
        "--local-address", str(p.cgw_wan), "--local-network", str(p.lan_net),
        "--remote-network", str(p.vpc_net), "--interface", "vxlan1", "--interface", "vxlan2"])
    out, err = io.StringIO(), io.StringIO()
    assert command.main(args, out, err) == 0, err.getvalue()
    assert "to fill in" not in out.getvalue()

    # What the lab's backend needs on our side and no cloud knows: its [daemon] (sockets in
    # the lab's directory) and, on libipsec, existing VXLAN links with /32 selectors.
    lab_text = lab_config.read_text()
    daemon = lab_text[lab_text.index("[daemon]"):lab_text.index("[[connection]]")]
    text = imported.read_text()
    for t in conn.tunnels:
        extra = (f'interface_kind = "existing"\nlocal_ts = ["{t.local_ts[0]}"]\n'
                 f'remote_ts = ["{t.remote_ts[0]}"]\n')
        text = re.sub(rf'(psk_file = "psk/vpc1-{t.name}.psk"\n)', rf"\g<1>{extra}", text)
    imported.write_text(daemon + "\n" + text)
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

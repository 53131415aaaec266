"""The lab's simulated cloud (vpnd_lab.cloud): the mirror of vpnd's own rendering, from the vendor
strongSwan guide's example, against its golden files; its FRR only in BGP mode; its keys only when asked.
(Moved out of test_render_golden.py with the code it tests, out of vpnd.render.peer.)"""

from __future__ import annotations

import pytest

from test_render_golden import PSKS, check_golden, policy_config, seed_config
from vpnd.render import swanctl
from vpnd.render.swanctl import RenderError
from vpnd_lab import cloud


def test_cloud_matches_golden():
    conn = seed_config().connections[0]
    check_golden("vendor_guide.cloud.swanctl.conf", cloud.peer_swanctl_text(conn))
    check_golden("vendor_guide.cloud.frr.conf", cloud.peer_frr(conn).text())


def test_cloud_frr_needs_bgp_routing():
    with pytest.raises(RenderError, match="bgp"):
        cloud.peer_frr(policy_config().connections[0])


@pytest.mark.parametrize("make", [seed_config, policy_config])
def test_cloud_mirror_symmetry(make):
    conn = make().connections[0]
    mirrored = cloud.peer_vici_conns(conn)
    for t in conn.tunnels:
        ours = swanctl.vici_conn(conn, t)
        theirs = mirrored[cloud.peer_conn_name(conn.name, t.name)]
        assert theirs["local_addrs"] == ours["remote_addrs"]
        assert theirs["remote_addrs"] == ours["local_addrs"]
        assert theirs["local"]["id"] == ours["remote"]["id"]
        assert theirs["remote"]["id"] == ours["local"]["id"]
        for k in ("version", "proposals", "dpd_delay", "rekey_time", "encap"):
            assert theirs[k] == ours[k]
        (oc,), (tc,) = ours["children"].values(), theirs["children"].values()
        assert tc["local_ts"] == oc["remote_ts"] and tc["remote_ts"] == oc["local_ts"]
        assert tc["esp_proposals"] == oc["esp_proposals"]
        assert tc["start_action"] == "none" and tc["dpd_action"] == "clear"
        assert "if_id_in" not in tc
    secrets = cloud.peer_vici_secrets(conn)
    assert [s["data"] for s in secrets] == list(PSKS)
    assert set(secrets[0]["owners"]) == set(swanctl.vici_secret(conn, conn.tunnels[0])["owners"])


def test_cloud_if_ids_and_frr_mirror():
    conn = seed_config().connections[0]
    conns = cloud.peer_vici_conns(conn, if_ids={"tunnel1": 7, "tunnel2": 8})
    assert conns["cloud-vco-tunnel2"]["children"]["cloud-vco-tunnel2"]["if_id_in"] == "8"
    text = cloud.peer_frr(conn).text()
    assert "router bgp 65535\n bgp router-id 169.254.10.1\n" in text
    assert " neighbor 169.254.10.2 remote-as 65530\n neighbor 169.254.10.2 timers 10 30\n" in text
    assert "  network 192.168.0.0/16\n" in text and "172.16.20.0" not in text


def test_cloud_keys_only_when_asked():
    conn = seed_config().connections[0]
    assert not any(p in cloud.peer_swanctl_text(conn) for p in PSKS)
    assert all(p in cloud.peer_swanctl_text(conn, show_secrets=True) for p in PSKS)

"""Issue 14 #10 against a real charon: the swanctl text of keys beginning 0x/0s, loaded by
`swanctl --load-all`, holds the same bytes as the cloud mirror loaded over VICI (raw bytes):
both tunnels establish only if the two charons agree on the key."""

from __future__ import annotations

import ipaddress
import subprocess
import uuid
from dataclasses import replace

import pytest

from test_hardening_render_psk import TRICKY, _with_psks
from test_render_charon import _established, _lab_missing, _load, _session, netns, run_charon
from vpnd.render import swanctl
from vpnd_lab import cloud as peer


@pytest.mark.lab
def test_a_real_charon_reads_the_text_as_the_mirror_reads_vici(tmp_path):
    """Ours loads the swanctl text, the cloud mirror the raw bytes over VICI: both tunnels
    establish only if both charons hold the same key."""
    reason = _lab_missing()
    if reason:
        pytest.skip(reason)
    config = _with_psks(TRICKY[:2])
    conn = config.connections[0]
    tunnels = tuple(
        replace(t, interface_kind="existing",
                local_ts=(ipaddress.ip_network(f"10.255.{i}.2/32"),),
                remote_ts=(ipaddress.ip_network(f"10.255.{i}.1/32"),))
        for i, t in enumerate(conn.tunnels, 1))
    conn = replace(conn, routing="route", bgp=None, tunnels=tunnels)

    def sh(ns, *cmd):
        subprocess.run(["ip", "-n", ns, *cmd], check=True)

    with netns() as cgw, netns() as cloud:
        veth_a, veth_b = f"vr{uuid.uuid4().hex[:8]}", f"vr{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "link", "add", veth_a, "netns", cgw, "type", "veth",
                        "peer", "name", veth_b, "netns", cloud], check=True)
        sh(cgw, "addr", "add", "198.18.0.2/24", "dev", veth_a)
        sh(cloud, "addr", "add", "198.18.0.1/24", "dev", veth_b)
        sh(cloud, "addr", "add", "198.18.0.11/24", "dev", veth_b)
        for i in (1, 2):
            sh(cgw, "addr", "add", f"10.255.{i}.2/32", "dev", "lo")
            sh(cloud, "addr", "add", f"10.255.{i}.1/32", "dev", "lo")
        sh(cgw, "link", "set", veth_a, "up")
        sh(cloud, "link", "set", veth_b, "up")
        with run_charon(cgw) as ours, run_charon(cloud) as theirs:
            path = tmp_path / "swanctl.conf"
            path.write_text(swanctl.swanctl_text(replace(config, connections=(conn,)),
                                                 show_secrets=True))
            r = subprocess.run(["swanctl", "--load-all", "--file", str(path), "--uri",
                                f"unix://{ours}"], capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stdout + r.stderr
            _load(theirs, peer.peer_vici_conns(conn), peer.peer_vici_secrets(conn))
            session, s = _session(ours)
            try:
                for t in conn.tunnels:
                    name = swanctl.conn_name(conn.name, t.name)
                    for _ in session.initiate({"child": name, "ike": name, "timeout": "10000"}):
                        pass
            except Exception:       # an initiate that fails is asserted on below
                pass
            finally:
                s.close()
            assert _established(ours) == {swanctl.conn_name(conn.name, t.name):
                                          "ESTABLISHED/INSTALLED" for t in conn.tunnels}

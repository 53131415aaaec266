"""Tunnel interfaces against the real kernel. This machine's kernel has no XFRM interfaces:
the clear error is tested here for real; creation itself runs in the vm tier."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from vpnd_testing.netns_helpers import scratch_netns, sh
from vpnd.config.load import load_text
from vpnd.core.events import InterfaceLost
from vpnd.kernel.links import LinkError, LinkKeeper, XfrmUnsupported, rp_filter_warnings

pytestmark = pytest.mark.lab

CONFIG = """
[[connection]]
name = "c1"
local_networks = ["172.16.0.0/16"]
remote_networks = ["192.168.0.0/16"]
[[connection.tunnel]]
local_address = "198.18.0.2"
remote_address = "198.18.0.1"
psk = "ChangeMe-tunnel-1"
[[connection.tunnel]]
local_address = "198.18.0.2"
remote_address = "198.18.0.11"
psk = "ChangeMe-tunnel-2"
"""


def kernel_has_xfrm_interfaces() -> bool:
    with scratch_netns() as ns:
        return sh("ip", "-n", ns, "link", "add", "x0", "type", "xfrm", "if_id", "1", check=False).returncode == 0


async def test_xfrm_interfaces_are_created_or_the_missing_feature_is_named():
    conn = load_text(CONFIG).connections[0]
    with scratch_netns() as ns:
        keeper = LinkKeeper(conn, netns=ns)
        await keeper.start()
        try:
            if kernel_has_xfrm_interfaces():
                assert keeper.created == 2
                assert "ipsec0" in sh("ip", "-n", ns, "link", "show", "ipsec0").stdout
            else:
                with pytest.raises(XfrmUnsupported, match="CONFIG_XFRM_INTERFACE"):
                    await keeper.ensure(conn.tunnels[0])
        finally:
            await keeper.stop()


async def test_an_existing_interface_is_brought_up_and_its_loss_reported():
    conn = load_text(CONFIG).connections[0]
    conn = replace(conn, tunnels=tuple(replace(t, interface_kind="existing", interface=f"tun{i}")
                                       for i, t in enumerate(conn.tunnels)))
    lost = []
    with scratch_netns() as ns:
        sh("ip", "-n", ns, "link", "add", "tun0", "type", "veth", "peer", "name", "tun1")
        keeper = LinkKeeper(conn, netns=ns, on_event=lost.append)
        await keeper.start()
        try:
            assert "UP" in sh("ip", "-n", ns, "link", "show", "tun0").stdout
            sh("ip", "-n", ns, "link", "del", "tun0")      # takes its veth peer tun1 along
            deadline = time.monotonic() + 5
            while len(lost) < 2:
                assert time.monotonic() < deadline, lost
                await asyncio.sleep(0.01)
            assert {e.interface for e in lost} == {"tun0", "tun1"}
            assert all(isinstance(e, InterfaceLost) for e in lost)
            with pytest.raises(LinkError, match="does not exist"):
                await keeper.ensure(conn.tunnels[0])
        finally:
            await keeper.stop()


def test_rp_filter_warnings(tmp_path):
    for name, value in (("all", "0"), ("ipsec0", "1"), ("ipsec1", "2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rp_filter").write_text(value)
    warnings = rp_filter_warnings(["ipsec0", "ipsec1"], proc=tmp_path)
    assert len(warnings) == 1 and "ipsec0" in warnings[0] and "strict" in warnings[0]


async def test_configured_mtu_is_set_and_someone_elses_link_kept_otherwise():
    conn = load_text(CONFIG).connections[0]
    conn = replace(conn, tunnels=(
        replace(conn.tunnels[0], interface_kind="existing", interface="tun0", mtu=1300),
        replace(conn.tunnels[1], interface_kind="existing", interface="tun1")))
    with scratch_netns() as ns:
        sh("ip", "-n", ns, "link", "add", "tun0", "type", "veth", "peer", "name", "tun1")
        keeper = LinkKeeper(conn, netns=ns)
        await keeper.start()
        try:
            assert await keeper.mtu("tun0") == 1300
            assert await keeper.mtu("tun1") == 1500          # not vpnd's, no `mtu`: as it was
            sh("ip", "-n", ns, "link", "set", "tun0", "mtu", "1500")
            await keeper.ensure(conn.tunnels[0])             # the repair puts it back
            assert await keeper.mtu("tun0") == 1300
        finally:
            await keeper.stop()

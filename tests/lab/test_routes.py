"""Route control against the real kernel in a scratch namespace: install, switch, adopt with
zero writes, put back what someone else removed, never touch other protocols' routes."""

from __future__ import annotations

import asyncio
import time

import pytest

from vpnd_testing.netns_helpers import scratch_netns, sh
from vpnd.config.load import load_text
from vpnd.kernel.routes import Route, RouteController, desired_routes

pytestmark = pytest.mark.lab

CONFIG = """
[[connection]]
name = "c1"
routing = "route"
local_networks = ["172.16.0.0/16"]
remote_networks = ["192.168.0.0/16", "10.20.0.0/16"]
[[connection.tunnel]]
local_address = "198.18.0.2"
remote_address = "198.18.0.1"
psk = "ChangeMe-tunnel-1"
interface = "tun1"
interface_kind = "existing"
[[connection.tunnel]]
local_address = "198.18.0.2"
remote_address = "198.18.0.11"
psk = "ChangeMe-tunnel-2"
interface = "tun2"
interface_kind = "existing"
"""


@pytest.fixture
def conn():
    return load_text(CONFIG).connections[0]


@pytest.fixture
def ns():
    with scratch_netns() as ns:
        for a, b in (("tun1", "peer1"), ("tun2", "peer2")):
            sh("ip", "-n", ns, "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "-n", ns, "link", "set", a, "up")
            sh("ip", "-n", ns, "link", "set", b, "up")
        yield ns


def kernel(ns: str) -> set[tuple[str, str, str]]:
    out = set()
    for line in sh("ip", "-n", ns, "route", "show", "proto", "249").stdout.splitlines():
        w = line.split()
        out.add((w[0], w[w.index("dev") + 1], w[w.index("metric") + 1]))
    return out


async def until(pred, timeout=20.0):
    """A bounded poll: the kernel applies netlink writes at once, events arrive soon after."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_desired_routes_put_the_active_tunnel_first(conn):
    assert desired_routes(conn, "tunnel2") == {
        Route("192.168.0.0/16", 100, "tun2"), Route("192.168.0.0/16", 101, "tun1"),
        Route("10.20.0.0/16", 100, "tun2"), Route("10.20.0.0/16", 101, "tun1")}
    assert desired_routes(conn, None) == set()


async def test_install_switch_and_withdraw(conn, ns):
    rc = RouteController(conn, protocol=249, netns=ns)
    await rc.start()
    try:
        assert rc.active is None and rc.writes == 0
        await rc.set_active("tunnel1")
        assert kernel(ns) == {("192.168.0.0/16", "tun1", "100"), ("192.168.0.0/16", "tun2", "101"),
                              ("10.20.0.0/16", "tun1", "100"), ("10.20.0.0/16", "tun2", "101")}
        before = rc.writes
        await rc.set_active("tunnel2")
        assert rc.writes - before == 4, "one replace per prefix and metric"
        assert ("192.168.0.0/16", "tun2", "100") in kernel(ns)
        await rc.set_active(None, withdraw=True)
        assert kernel(ns) == set()
    finally:
        await rc.stop()


async def test_a_restarted_controller_adopts_with_zero_writes(conn, ns):
    first = RouteController(conn, protocol=249, netns=ns)
    await first.start()
    await first.set_active("tunnel2")
    await first.stop()
    second = RouteController(conn, protocol=249, netns=ns)
    await second.start()
    try:
        assert second.active == "tunnel2"
        assert second.writes == 0
        await second.set_active("tunnel2")   # the core's first decision after a restart
        assert second.writes == 0
    finally:
        await second.stop()


async def test_confirming_the_active_tunnel_reads_nothing_from_the_kernel(conn, ns):
    """The core re-announces its choice (both tunnels down, "keep"): no dump, no write. A
    route dump per connection each time saturated a core at 50 connections (bench/scale.py)."""
    rc = RouteController(conn, protocol=249, netns=ns)
    await rc.start()
    try:
        await rc.set_active("tunnel1")
        dumps = []
        real = rc.kernel_routes
        rc.kernel_routes = lambda: dumps.append(1) or real()
        writes = rc.writes
        assert await rc.set_active("tunnel1") == 0
        assert dumps == [] and rc.writes == writes
        assert kernel(ns) == {("192.168.0.0/16", "tun1", "100"), ("192.168.0.0/16", "tun2", "101"),
                              ("10.20.0.0/16", "tun1", "100"), ("10.20.0.0/16", "tun2", "101")}
    finally:
        await rc.stop()


async def test_a_deleted_route_is_put_back_and_reported(conn, ns):
    lost = []
    rc = RouteController(conn, protocol=249, netns=ns, on_event=lost.append)
    await rc.start()
    try:
        await rc.set_active("tunnel1")
        sh("ip", "-n", ns, "route", "del", "192.168.0.0/16", "metric", "100")
        await until(lambda: ("192.168.0.0/16", "tun1", "100") in kernel(ns))
        await until(lambda: lost)
        assert lost[0].connection == "c1"
        sh("ip", "-n", ns, "route", "replace", "10.20.0.0/16", "dev", "tun2", "metric", "100",
           "proto", "249")
        await until(lambda: ("10.20.0.0/16", "tun1", "100") in kernel(ns))
        await until(lambda: rc.repairs >= 2)    # counted after the kernel has the route back
    finally:
        await rc.stop()


async def test_a_route_replaced_by_another_protocol_is_put_back(conn, ns):
    rc = RouteController(conn, protocol=249, netns=ns)
    await rc.start()
    try:
        await rc.set_active("tunnel1")
        # the kernel announces only the newcomer (proto boot) at vpnd's own key
        sh("ip", "-n", ns, "route", "replace", "192.168.0.0/16", "dev", "tun2", "metric", "100")
        await until(lambda: ("192.168.0.0/16", "tun1", "100") in kernel(ns))
        await until(lambda: rc.repairs >= 1)
    finally:
        await rc.stop()


async def test_other_protocols_routes_are_never_touched(conn, ns):
    sh("ip", "-n", ns, "route", "add", "192.168.0.0/16", "dev", "tun2", "metric", "50", "proto", "static")
    rc = RouteController(conn, protocol=249, netns=ns)
    await rc.start()
    try:
        await rc.set_active("tunnel1")
        await rc.set_active(None, withdraw=True)
        out = sh("ip", "-n", ns, "route", "show", "192.168.0.0/16").stdout
        assert "proto static" in out and "metric 50" in out
    finally:
        await rc.stop()

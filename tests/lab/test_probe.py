"""ICMP probes against the real kernel: two namespaces joined by two veth "tunnels"."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from vpnd_testing.netns_helpers import scratch_netns, sh
from vpnd.core.events import TunnelKey
from vpnd.probe import Prober, checksum, echo_request, parse_reply

T1, T2 = TunnelKey("c1", "tunnel1"), TunnelKey("c1", "tunnel2")


def test_codec_round_trip():
    pkt = echo_request(0x1234, 7)
    assert checksum(pkt) == 0
    ip = bytes([0x45, 0, 0, 28 + len(pkt) - 8, 0, 0, 0, 0, 64, 1, 0, 0]) + bytes([192, 168, 0, 10]) + bytes(4)
    reply = bytes([0]) + pkt[1:]
    assert parse_reply(ip + reply) == ("192.168.0.10", 0x1234, 7)
    assert parse_reply(b"\x45" + bytes(10)) is None
    assert parse_reply(ip + pkt) is None          # a request, not a reply


@pytest.fixture
def pair():
    """gw (probes from 172.16.0.1) and far (answers as 192.168.0.10) over tun1/tun2."""
    with scratch_netns("vpndp") as gw, scratch_netns("vpndq") as far:
        sh("ip", "-n", gw, "addr", "add", "172.16.0.1/32", "dev", "lo")
        sh("ip", "-n", far, "addr", "add", "192.168.0.10/32", "dev", "lo")
        for i in (1, 2):
            sh("ip", "-n", gw, "link", "add", f"tun{i}", "type", "veth", "peer", "name", f"far{i}",
               "netns", far)
            sh("ip", "-n", gw, "link", "set", f"tun{i}", "up")
            sh("ip", "-n", far, "link", "set", f"far{i}", "up")
        # The far side answers only through tun1: replies to tunnel 2's probes come back
        # on the other tunnel, as with a cloud that routes by its own active tunnel.
        sh("ip", "-n", far, "route", "add", "172.16.0.1/32", "dev", "far1")
        yield gw, far


@contextlib.contextmanager
def inside(ns):
    from pyroute2 import netns
    netns.pushns(ns)
    try:
        yield
    finally:
        netns.popns()


async def collect(probers, results, n, timeout=10.0):
    deadline = time.monotonic() + timeout
    while len(results) < n:
        assert time.monotonic() < deadline, f"only {len(results)} results"
        await asyncio.sleep(0.01)


@pytest.mark.lab
async def test_replies_rtt_and_replies_on_the_other_tunnel(pair):
    gw, _ = pair
    results = []
    with inside(gw):
        probers = [Prober(k, destination="192.168.0.10", source="172.16.0.1", interface=i,
                          interval=0.05, timeout=0.5, on_result=results.append)
                   for k, i in ((T1, "tun1"), (T2, "tun2"))]
        for p in probers:
            p.start()
        try:
            await collect(probers, results, 20)
        finally:
            for p in probers:
                await p.stop()
    by = {k: [r for r in results if r.tunnel == k] for k in (T1, T2)}
    assert by[T1] and by[T2]
    assert all(r.ok and 0 < r.rtt < 0.5 for r in results), results
    assert probers[0].loss_ratio == 0 and probers[0].rtt is not None


@pytest.mark.lab
async def test_loss_is_detected_and_recovers(pair):
    gw, far = pair
    results = []
    with inside(gw):
        p = Prober(T1, destination="192.168.0.10", source="172.16.0.1", interface="tun1",
                   interval=0.05, timeout=0.2, on_result=results.append)
        p.start()
        try:
            await collect([p], results, 3)
            sh("ip", "-n", far, "route", "del", "172.16.0.1/32")        # replies black-holed
            start = len(results)
            await collect([p], results, start + 6)
            assert not any(r.ok for r in results[start + 2:start + 6])
            sh("ip", "-n", far, "route", "add", "172.16.0.1/32", "dev", "far1")
            deadline = time.monotonic() + 5
            while not (results[-1].ok and len(results) > start + 6):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert p.lost >= 4
        finally:
            await p.stop()


@pytest.mark.lab
async def test_interface_deleted_and_recreated(pair):
    gw, far = pair
    results = []
    with inside(gw):
        p = Prober(T2, destination="192.168.0.10", source="172.16.0.1", interface="tun2",
                   interval=0.05, timeout=0.2, on_result=results.append)
        p.start()
        try:
            await collect([p], results, 3)
            sh("ip", "-n", gw, "link", "del", "tun2")
            start = len(results)
            await collect([p], results, start + 5)
            assert not any(r.ok for r in results[start + 1:start + 5])
            sh("ip", "-n", gw, "link", "add", "tun2", "type", "veth", "peer", "name", "far2",
               "netns", far)
            sh("ip", "-n", gw, "link", "set", "tun2", "up")
            sh("ip", "-n", far, "link", "set", "far2", "up")
            deadline = time.monotonic() + 5
            while not results[-1].ok:
                assert time.monotonic() < deadline, "probe did not recover"
                await asyncio.sleep(0.01)
        finally:
            await p.stop()

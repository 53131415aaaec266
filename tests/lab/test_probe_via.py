"""Which tunnel an ICMP probe's answer came back through (ProbeResult.via), on the real
kernel: the far side answers through one "tunnel" only, as the vendor's cloud does."""

from __future__ import annotations

import asyncio
import time

import pytest

from vpnd_testing.netns_helpers import sh
from test_probe import T1, T2, collect, inside, pair  # noqa: F401  (pair is a fixture)
from vpnd.probe import Prober

RETURNS = {"tun1": "tunnel1", "tun2": "tunnel2"}


@pytest.mark.lab
async def test_answers_name_the_tunnel_they_came_back_through(pair):  # noqa: F811
    gw, far = pair
    results = []
    with inside(gw):
        probers = [Prober(k, destination="192.168.0.10", source="172.16.0.1", interface=i,
                          interval=0.02, timeout=0.5, on_result=results.append, returns=RETURNS)
                   for k, i in ((T1, "tun1"), (T2, "tun2"))]
        for p in probers:
            p.start()
        try:
            await collect(probers, results, 20)
            # both tunnels' probes are answered, and both answers come back through tunnel 1
            assert all(r.ok and r.via == "tunnel1" for r in results), results
            assert {r.tunnel for r in results} == {T1, T2}
            # the far side moves its return path to tunnel 2: every answer says so
            sh("ip", "-n", far, "route", "replace", "172.16.0.1/32", "dev", "far2")
            start = len(results)
            deadline = time.monotonic() + 5
            while True:
                later = [r for r in results[start:] if r.ok]
                if len(later) >= 10 and all(r.via == "tunnel2" for r in later[-6:]):
                    break
                assert time.monotonic() < deadline, results[start:]
                await asyncio.sleep(0.01)
        finally:
            for p in probers:
                await p.stop()


@pytest.mark.lab
async def test_without_a_map_or_on_another_interface_via_is_unknown(pair):  # noqa: F811
    gw, _ = pair
    results = []
    with inside(gw):
        probers = [Prober(T1, destination="192.168.0.10", source="172.16.0.1", interface="tun1",
                          interval=0.02, timeout=0.5, on_result=results.append),
                   Prober(T2, destination="192.168.0.10", source="172.16.0.1", interface="tun2",
                          interval=0.02, timeout=0.5, on_result=results.append,
                          returns={"tun2": "tunnel2"})]     # tun1 is no tunnel of its own
        for p in probers:
            p.start()
        try:
            await collect(probers, results, 10)
        finally:
            for p in probers:
                await p.stop()
    assert all(r.ok and r.via is None for r in results), results

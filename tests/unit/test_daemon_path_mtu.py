"""The daemon's path-MTU wiring over the fake charon: one path-MTU prober per probed tunnel of
a route-mode connection, usable only while that tunnel's last health probe was answered,
re-run after a switch, its result handed to the connection's DataPath, stopped with the
tunnel's probe."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import deque

import pytest

from test_daemon_reload import RecordingProber, RecordingSteering, at
from vpnd_testing.core_helpers import config, connection
from vpnd_testing.fake_charon import FakeCharon
from vpnd.core import actions as A
from vpnd.core.events import TunnelKey
from vpnd.run.daemon import Daemon


class FakePathMtu:
    def __init__(self, key, spec, interval, on_result, usable, taken, calls) -> None:
        self.key, self.interval, self.on_result, self.usable, self.taken = \
            key, interval, on_result, usable, taken
        self.calls = calls

    def start(self) -> None:
        self.calls.append(("pmtu_start", self.key.tunnel, self.interval))

    def trigger(self) -> None:
        self.calls.append(("pmtu_trigger", self.key.tunnel))

    async def stop(self) -> None:
        self.calls.append(("pmtu_stop", self.key.tunnel))


class DataPathStub:
    def __init__(self) -> None:
        self.set: list = []

    def set_path_mtu(self, tunnel, pmtu) -> None:
        self.set.append((tunnel, pmtu))


@pytest.fixture
async def charon():
    d = tempfile.mkdtemp(prefix="vici-", dir="/tmp")
    fake = await FakeCharon(f"{d}/charon.vici").start()
    yield fake
    await fake.stop()
    shutil.rmtree(d, ignore_errors=True)


async def test_one_prober_per_tunnel_usable_switch_and_result(charon):
    calls: list = []
    pmtus: dict = {}

    def make_pmtu(key, spec, interval, on_result, usable, taken):
        pmtus[key] = FakePathMtu(key, spec, interval, on_result, usable, taken, calls)
        return pmtus[key]

    cfg = at(config(connection("a")), charon.path)
    d = Daemon(cfg, steering=lambda c, s: RecordingSteering(c, s, calls),
               prober=lambda k, spec, cb: RecordingProber(k, spec, cb, calls),
               path_mtu_prober=make_pmtu)
    await d.start()
    try:
        names = [t.name for t in cfg.connections[0].tunnels]
        assert [c for c in calls if c[0] == "pmtu_start"] == [("pmtu_start", n, 600.0) for n in names]
        key = TunnelKey("a", names[0])
        p = pmtus[key]
        d.probes[key].window = deque()
        assert not p.usable()                   # no probe yet
        d.probes[key].window = deque([0.01, None])
        assert not p.usable()                   # the last one lost
        d.probes[key].window = deque([None, 0.01])
        assert p.usable()
        d.probes[key].ident = 4242
        assert 4242 in p.taken()                # never a health prober's identifier
        stub = DataPathStub()
        d.steering["a"].data_path = stub
        p.on_result(key, 1200, 19, 1.2)
        assert stub.set == [(names[0], 1200)]
        calls.clear()
        await d._set_active(A.SetActive("a", names[0], "start"))
        assert not [c for c in calls if c[0] == "pmtu_trigger"]     # no switch yet
        await d._set_active(A.SetActive("a", names[1], "failover"))
        assert sorted(c for c in calls if c[0] == "pmtu_trigger") == \
            sorted(("pmtu_trigger", n) for n in names)
        await d.stop_probe(key)
        assert ("pmtu_stop", names[0]) in calls and key not in d.path_mtu_probes
    finally:
        await d.stop(withdraw=False)

"""A real Daemon (vpnd/run/daemon.py) over the fake charon, with recording steering objects and
probers: what a reload's apply leaves untouched, restarts, adds and removes. No root, no
netlink, no FRR: the steering seam is where the modes' I/O would be."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import shutil
import tempfile

import pytest

from vpnd_testing.core_helpers import config, connection
from vpnd_testing.fake_charon import FakeCharon
from vpnd.config.model import Config, ConnectionConfig
from vpnd.run.daemon import Daemon
from vpnd.steering.base import Services, Steering


class RecordingSteering(Steering):
    def __init__(self, conn: ConnectionConfig, services: Services, calls: list) -> None:
        super().__init__(conn, services)
        self.calls = calls

    async def start(self) -> None:
        self.calls.append(("start", self.conn.name, self.conn.routing))

    async def set_active(self, tunnel, *, withdraw, reason):
        self.calls.append(("set_active", self.conn.name, tunnel))

    async def reconfigure(self, conn, *, links, routes) -> None:
        self.conn = conn
        self.calls.append(("reconfigure", conn.name, links, routes))

    async def remove(self) -> None:
        self.calls.append(("remove", self.conn.name, self.conn.routing))

    async def stop(self, *, withdraw) -> None:
        self.calls.append(("stop", self.conn.name))


class RecordingProber:
    loss_ratio = None

    def __init__(self, key, spec, on_result, calls) -> None:
        self.key, self.spec, self.calls = key, spec, calls

    def start(self) -> None:
        self.calls.append(("probe_start", self.key.connection, self.key.tunnel, self.spec.interval))

    async def stop(self) -> None:
        self.calls.append(("probe_stop", self.key.connection, self.key.tunnel))


@pytest.fixture
async def charon():
    d = tempfile.mkdtemp(prefix="vici-", dir="/tmp")
    fake = await FakeCharon(f"{d}/charon.vici").start()
    yield fake
    await fake.stop()
    shutil.rmtree(d, ignore_errors=True)


def at(cfg: Config, socket: str) -> Config:
    return dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, vici_socket=socket))


async def started(cfg: Config, calls: list) -> Daemon:
    d = Daemon(cfg, steering=lambda c, s: RecordingSteering(c, s, calls),
               prober=lambda k, spec, cb: RecordingProber(k, spec, cb, calls))
    await d.start()
    async with asyncio.timeout(5):
        await d._synced.wait()
    calls.clear()
    return d


def requests(fake: FakeCharon, *names: str) -> list[tuple[str, str]]:
    """(command, conn or secret) of the configuration requests vpnd sent."""
    out = []
    for cmd, body in fake.requests:
        if cmd in names:
            target = body.get("name") or body.get("id") or next(iter(body), b"")
            out.append((cmd, target.decode() if isinstance(target, bytes) else str(target)))
    return out


def slower(conn: ConnectionConfig, interval: float) -> ConnectionConfig:
    return dataclasses.replace(conn, health_check=dataclasses.replace(conn.health_check,
                                                                      interval=interval))


async def test_an_unchanged_reload_touches_nothing(charon):
    calls: list = []
    cfg = at(config(connection("a"), connection("b", routing="bgp", standby="prepend")), charon.path)
    d = await started(cfg, calls)
    try:
        charon.requests.clear()
        fields = await d.reload(cfg)
        assert calls == []
        assert requests(charon, "load-conn", "unload-conn", "load-shared", "unload-shared",
                        "terminate", "initiate") == []
        assert {c: v["action"] for c, v in fields["changes"].items()} == {"a": "unchanged",
                                                                        "b": "unchanged"}
    finally:
        await d.stop(withdraw=False)


async def test_reload_applies_each_connection_by_difference(charon):
    """a unchanged; b: probe interval and remote networks changed (charon untouched);
    c removed; d added; e moved from route to policy mode (rebuilt)."""
    calls: list = []
    a, b, c, e = (connection(n) for n in "abce")
    old = at(config(a, b, c, e), charon.path)
    new_b = dataclasses.replace(slower(b, 2.0),
                                remote_networks=(ipaddress.IPv4Network("10.9.0.0/16"),))
    new = at(config(a, new_b, connection("d"), dataclasses.replace(e, routing="policy")), charon.path)
    d = await started(old, calls)
    try:
        charon.requests.clear()
        await d.reload(new)
        by_conn: dict[str, list] = {}
        for call in calls:
            by_conn.setdefault(call[1], []).append(call)

        assert "a" not in by_conn                                   # untouched
        assert ("reconfigure", "b", False, True) in by_conn["b"]   # routes, not links
        assert {x for x in by_conn["b"] if x[0].startswith("probe")} == {
            ("probe_stop", "b", "t1"), ("probe_stop", "b", "t2"),
            ("probe_start", "b", "t1", 2.0), ("probe_start", "b", "t2", 2.0)}
        assert ("remove", "c", "route") in by_conn["c"]
        assert ("probe_stop", "c", "t1") in by_conn["c"] and "c" not in d.steering
        assert ("start", "d", "route") in by_conn["d"] and ("probe_start", "d", "t1", 3.0) in by_conn["d"]  # the default interval
        # a new mode: the old steering removed before the new one starts
        steps = [x[:3] for x in by_conn["e"] if x[0] in ("remove", "start")]
        assert steps == [("remove", "e", "route"), ("start", "e", "policy")]

        sent = requests(charon, "load-conn", "unload-conn")
        loaded = {n for cmd, n in sent if cmd == "load-conn"}
        unloaded = {n for cmd, n in sent if cmd == "unload-conn"}
        assert {"vpnd-d-t1", "vpnd-d-t2", "vpnd-e-t1", "vpnd-e-t2"} <= loaded
        assert not loaded & {"vpnd-a-t1", "vpnd-a-t2", "vpnd-b-t1", "vpnd-b-t2"}
        # e (rebuilt) is unloaded and loaded again; c only unloaded
        assert unloaded == {"vpnd-c-t1", "vpnd-c-t2", "vpnd-e-t1", "vpnd-e-t2"}
        assert d.config is new and d.sup.config is new
    finally:
        await d.stop(withdraw=False)

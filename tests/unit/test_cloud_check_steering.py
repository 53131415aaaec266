"""The steering side of the cloud check's return path: when it is made, kept, changed and
undone (the kernel side is faked here; tests/lab/test_cloud_check_return.py runs the real one)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from vpnd_testing.config_toml import dumps, route_config

from vpnd.config.load import load_text
from vpnd.steering import cloud_check


class FakeKernel:
    def __init__(self, conn, *, protocol, netns=None):
        self.conn, self.protocol, self.calls = conn, protocol, []
        self.fail: str | None = None
        made.append(self)

    async def ensure(self):
        self.calls.append("ensure")
        if self.fail:
            raise cloud_check.ReturnPathError(self.fail)
        return 0

    async def reconfigure(self, conn):
        self.calls.append("reconfigure")
        self.conn = conn
        return 1

    async def remove(self):
        self.calls.append("remove")
        return 1

    def close(self):
        self.calls.append("close")


made: list[FakeKernel] = []


def conn(with_check: bool = True, **keys):
    d = route_config()
    if with_check:
        d["connection"][0]["cloud_health_check"] = {"source_ip": "192.168.50.1",
                                                    "destination_ip": "172.16.20.80", **keys}
    return load_text(dumps(d))


def services(cfg, deferred):
    return SimpleNamespace(config=lambda: cfg, netns=None,
                           defer=lambda what, run: deferred.append((what, run)))


def run(coro):
    return asyncio.run(coro)


def test_made_at_start_kept_on_a_timer_in_the_reconcilers_turn(monkeypatch):
    made.clear()
    monkeypatch.setattr(cloud_check, "ReturnPath", FakeKernel)
    monkeypatch.setattr(cloud_check.CloudCheckReturn, "KEEP_INTERVAL", 0.01)
    cfg, deferred = conn(), []

    async def go():
        s = cloud_check.CloudCheckReturn(cfg.connections[0], services(cfg, deferred))
        await s.start()
        await asyncio.sleep(0.05)
        assert deferred and deferred[0][0] == "return path vpc1"
        assert made[0].calls == ["ensure"], "the timer only queues; the reconciler runs it"
        await deferred[0][1]()
        assert made[0].calls == ["ensure", "ensure"]
        await s.stop(withdraw=False)
        assert made[0].calls[-1] == "close" and "remove" not in made[0].calls
    run(go())
    assert made[0].protocol == 249


def test_nothing_without_the_table(monkeypatch):
    made.clear()
    monkeypatch.setattr(cloud_check, "ReturnPath", FakeKernel)
    cfg = conn(with_check=False)

    async def go():
        s = cloud_check.CloudCheckReturn(cfg.connections[0], services(cfg, []))
        await s.start()
        await s.keep()
        await s.stop(withdraw=True)
    run(go())
    assert made == []


def test_a_reload_adds_and_removes_it(monkeypatch):
    made.clear()
    monkeypatch.setattr(cloud_check, "ReturnPath", FakeKernel)
    without, with_ = conn(with_check=False), conn()

    async def go():
        s = cloud_check.CloudCheckReturn(without.connections[0], services(with_, []))
        await s.start()
        await s.reconfigure(with_.connections[0])          # added by a reload
        assert len(made) == 1 and made[0].calls == ["ensure"]
        await s.reconfigure(without.connections[0])        # removed by a reload
        assert made[0].calls == ["ensure", "reconfigure", "close"] and s.kernel is None
        assert s._timer is None
    run(go())


def test_a_withdrawing_stop_and_a_removed_connection_undo_it(monkeypatch):
    made.clear()
    monkeypatch.setattr(cloud_check, "ReturnPath", FakeKernel)
    cfg = conn()

    async def go():
        for how in ("stop", "remove"):
            s = cloud_check.CloudCheckReturn(cfg.connections[0], services(cfg, []))
            await s.start()
            await (s.stop(withdraw=True) if how == "stop" else s.remove())
    run(go())
    assert [k.calls for k in made] == [["ensure", "remove", "close"]] * 2


def test_a_lasting_failure_is_logged_once(monkeypatch):
    made.clear()
    monkeypatch.setattr(cloud_check, "ReturnPath", FakeKernel)
    lines = []
    monkeypatch.setattr(cloud_check.log, "error", lambda event, **kw: lines.append((event, kw)))
    monkeypatch.setattr(cloud_check.log, "info", lambda event, **kw: lines.append((event, kw)))
    cfg = conn()

    async def go():
        s = cloud_check.CloudCheckReturn(cfg.connections[0], services(cfg, []))
        await s.start()
        made[0].fail = "cannot run nft: No such file or directory"
        for _ in range(3):
            await s.keep()
        made[0].fail = None
        await s.keep()
        await s.stop(withdraw=False)
    run(go())
    assert [e for e, _ in lines] == ["return_path.failed", "return_path.recovered"]

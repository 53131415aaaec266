"""Issue 14 #1: READY=1 reaches systemd whether charon answers at once, late, or never.

Under Type=notify a READY that never comes makes systemd kill vpnd after TimeoutStartSec (and
Restart= loops it) exactly when charon is slow at boot. vpnd is ready once it supervises; the
STATUS line says it is waiting for charon, and changes when charon syncs."""

from __future__ import annotations

import asyncio

from vpnd.config.load import load_text
from vpnd.run.daemon import Daemon
from vpnd.steering.base import Steering
from vpnd_testing.config_toml import dumps, route_config
from vpnd_testing.fake_charon import FakeCharon


class FakeNotifier:
    enabled = True

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    def _note(self, kind: str, text: str = "") -> bool:
        self.sent.append((kind, text))
        self.changed.set()
        return True

    def ready(self, status: str) -> bool:
        return self._note("READY", status)

    def status(self, status: str) -> bool:
        return self._note("STATUS", status)

    def stopping(self) -> bool:
        return self._note("STOPPING")

    def reloading(self) -> bool:
        return self._note("RELOADING")

    def watchdog(self) -> bool:
        return True


class NoKernelDaemon(Daemon):
    """The daemon's start-up path without the kernel and probe adapters (needs no root):
    steering that steers nothing, probers that never probe."""

    ready_grace = 0.3

    def __init__(self, config) -> None:
        super().__init__(config, steering=Steering, prober=_NoProber)


class _NoProber:
    loss_ratio = None

    def __init__(self, *args) -> None:
        pass

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


def _daemon(tmp_path) -> tuple[NoKernelDaemon, FakeNotifier]:
    doc = route_config()
    doc["daemon"].update(metrics_listen="", vici_socket=str(tmp_path / "charon.vici"),
                         control_socket=str(tmp_path / "control.sock"))
    d = NoKernelDaemon(load_text(dumps(doc)))
    n = FakeNotifier()
    d.sup.notifier = n
    return d, n


async def _until(n: FakeNotifier, pred, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not pred(n.sent):
            n.changed.clear()
            await n.changed.wait()


def _stop(d, task):
    d.sup.request_stop()
    return asyncio.wait_for(task, 10)


async def test_ready_when_charon_never_answers(tmp_path):
    d, n = _daemon(tmp_path)
    task = asyncio.create_task(d.run())
    try:
        await _until(n, lambda s: any(k == "READY" for k, _ in s), 5)
        status = next(t for k, t in n.sent if k == "READY")
        assert status.startswith("waiting for charon at ") and "charon.vici" in status
    finally:
        assert await _stop(d, task) == 0
    assert n.sent[-1] == ("STOPPING", "")


async def test_ready_then_status_when_charon_answers_late(tmp_path):
    d, n = _daemon(tmp_path)
    task = asyncio.create_task(d.run())
    charon = None
    try:
        await _until(n, lambda s: any(k == "READY" for k, _ in s), 5)
        charon = await FakeCharon(str(tmp_path / "charon.vici")).start()
        await _until(n, lambda s: any(k == "STATUS" for k, _ in s), 15)
        assert ("STATUS", "1 connection(s), 2 tunnel(s) supervised") in n.sent
        assert [k for k, _ in n.sent].count("READY") == 1
    finally:
        assert await _stop(d, task) == 0
        if charon is not None:
            await charon.stop()


async def test_ready_once_with_the_summary_when_charon_is_there(tmp_path):
    charon = await FakeCharon(str(tmp_path / "charon.vici")).start()
    d, n = _daemon(tmp_path)
    d.ready_grace = 10
    task = asyncio.create_task(d.run())
    try:
        await _until(n, lambda s: any(k == "READY" for k, _ in s), 10)
        assert n.sent[0] == ("READY", "1 connection(s), 2 tunnel(s) supervised")
    finally:
        assert await _stop(d, task) == 0
        await charon.stop()

"""A supervisor with the real core, its status board and a control server on a loop in a
thread, so tests talk to it with plain blocking sockets and the real CLI."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

from vpnd_testing.core_helpers import connection
from vpnd.config.model import Config, DaemonConfig, Secret
from vpnd.control.server import ControlServer
from vpnd.core import events as E
from vpnd.control.status import StatusBoard
from vpnd.run.supervisor import Supervisor

PSKS = ("psk-for-tunnel-one-7f3a9c", "psk-for-tunnel-two-c41e08")


def config(*names: str, path: str = "/nonexistent") -> Config:
    """Connections named `names`, each with tunnels t1/t2 and PSKs from PSKS; failover with
    no delays so a preempt happens within the command that allows it."""
    conns = []
    for name in names or ("c",):
        c = connection(name, preempt_delay=0.0, hold_down=0.0, max_switches_per_minute=100)
        tunnels = tuple(replace(t, psk=Secret(PSKS[i])) for i, t in enumerate(c.tunnels))
        conns.append(replace(c, tunnels=tunnels))
    return Config(daemon=DaemonConfig(control_socket=path), connections=tuple(conns))


class Harness:
    def __init__(self, path: str, cfg: Config, **server_options) -> None:
        self.path = path
        self._sas: dict = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sup = Supervisor(cfg)
        self.board = StatusBoard(lambda: self.sup.config, self.sup.engine.status, self.sup.clock)
        self.sup.observers.append(self.board.observe)
        self.server = ControlServer(path, status=self.board.status, apply=self.sup.apply,
                                    **server_options)
        self.call(self._start())

    async def _start(self) -> None:
        self.reconciler = asyncio.create_task(self.sup.reconcile())
        await self.server.start()

    def call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def feed(self, *events) -> None:
        """Events through the queue, returning once the reconciler handled them."""
        async def go():
            for e in events[:-1]:
                self.sup.post(e)
            await self.sup.apply(events[-1])
        self.call(go())

    def up(self, connection: str = "c", tunnels=("t1", "t2"), rtt: float = 0.0012) -> None:
        """These tunnels established and answering probes (t1, when among them, carries
        traffic); the SAs of other connections stay as they were."""
        self._sas = {k: v for k, v in self._sas.items() if k.connection != connection}
        for t in tunnels:
            key = E.TunnelKey(connection, t)
            n = len(self._sas) + 1
            self._sas[key] = E.TunnelSa(key, n, "ESTABLISHED", 100 + n, "INSTALLED")
        probes = [E.ProbeResult(E.TunnelKey(connection, t), True, rtt) for t in tunnels]
        self.feed(E.SaSnapshot(tuple(self._sas.values())), *probes)

    def status(self) -> dict:
        return self.board.status()

    def core(self) -> dict:
        return self.sup.engine.status()

    def close(self) -> None:
        async def stop():
            await self.server.stop()
            self.sup.request_stop()
            await asyncio.gather(self.reconciler, return_exceptions=True)
        self.call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()



"""The replies to the cloud's health check, kept on the tunnel their probe arrived on: shared
by route and BGP modes (both have one interface per tunnel); the kernel side is
vpnd.kernel.return_path."""

from __future__ import annotations

import asyncio

from vpnd import logs
from vpnd.config.model import ConnectionConfig
from vpnd.kernel.return_path import ReturnPath, ReturnPathError, wanted
from vpnd.steering.base import Services

log = logs.get("vpnd.steering")
class CloudCheckReturn:
    """The replies to the cloud's health check, kept by the tunnel their probe arrived on.

    Made at start, re-checked every KEEP_INTERVAL seconds and after any route or interface
    repair (nft changes and rules in other tables raise no event vpnd listens to), changed by
    a reload, removed with the connection or on a withdrawing stop; a plain stop leaves it,
    like the routes. The checks run in the reconciler's turn (`Services.defer`). Route and
    BGP modes share it: both have one interface per tunnel."""

    KEEP_INTERVAL = 5.0

    def __init__(self, conn: ConnectionConfig, services: Services) -> None:
        self.conn = conn
        self.services = services
        self.kernel: ReturnPath | None = None
        self._timer: asyncio.Task | None = None
        self._failing: str | None = None        # the last ensure's error, while it lasts

    async def start(self) -> None:
        if not wanted(self.conn):
            return
        self.kernel = ReturnPath(self.conn, protocol=self.services.config().daemon.route_protocol,
                                 netns=self.services.netns)
        await self._ensure("start")
        if self._timer is None:
            self._timer = asyncio.create_task(self._tick(), name=f"return-path-{self.conn.name}")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.KEEP_INTERVAL)
            self.services.defer(f"return path {self.conn.name}", self.keep)

    async def keep(self) -> None:
        """Put back whatever someone removed (no write when all is in place)."""
        if self.kernel is not None:
            await self._ensure("kept")

    async def _ensure(self, why: str) -> None:
        try:
            writes = await self.kernel.ensure()
        except ReturnPathError as err:
            if str(err) != self._failing:       # once per distinct failure, not every tick
                log.error("return_path.failed", connection=self.conn.name, error=str(err))
            self._failing = str(err)
            return
        if self._failing is not None:
            log.info("return_path.recovered", connection=self.conn.name)
            self._failing = None
        if writes and why == "kept":
            log.warning("return_path.restored", connection=self.conn.name, writes=writes)
        elif writes:
            log.info("return_path.set", connection=self.conn.name, writes=writes, why=why)

    async def reconfigure(self, conn: ConnectionConfig) -> None:
        self.conn = conn
        if self.kernel is None:
            await self.start()
            return
        try:
            writes = await self.kernel.reconfigure(conn)
        except ReturnPathError as err:
            log.error("return_path.failed", connection=conn.name, error=str(err))
            return
        if writes:
            log.info("return_path.reconfigured", connection=conn.name, writes=writes)
        if not wanted(conn):
            await self._stop_timer()
            self.kernel.close()
            self.kernel = None

    async def remove(self) -> None:
        await self._stop_timer()
        if self.kernel is not None:
            try:
                await self.kernel.remove()
            except ReturnPathError as err:
                log.error("return_path.failed", connection=self.conn.name, error=str(err))
            self.kernel.close()
            self.kernel = None

    async def stop(self, *, withdraw: bool) -> None:
        if withdraw:
            await self.remove()
            return
        await self._stop_timer()
        if self.kernel is not None:
            self.kernel.close()

    async def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
            self._timer = None

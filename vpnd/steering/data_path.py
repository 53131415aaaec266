"""The data path of route and BGP modes: each tunnel interface's MTU (set by vpnd.kernel.links)
and the TCP MSS clamp through it (vpnd.kernel.mss_clamp), shown in status and metrics.

Kept like the cloud check's return path: made at start, re-checked every KEEP_INTERVAL
seconds in the reconciler's turn (an `nft flush ruleset` raises no event vpnd hears) and
after an interface repair, changed by a reload, removed with the connection or on a
withdrawing stop; a plain stop leaves it, like the routes. The clamp is
vpnd.core.mtu.clamp_mss(interface MTU, path MTU), the path MTU coming from `path_mtu()`
(set by the path-MTU prober when it has measured one)."""

from __future__ import annotations

import asyncio
from typing import Any

from vpnd import logs
from vpnd.config.model import ConnectionConfig
from vpnd.core.events import TunnelKey
from vpnd.core.mtu import clamp_mss
from vpnd.kernel.mss_clamp import MssClamp, wanted
from vpnd.kernel.return_path import ReturnPathError
from vpnd.steering.base import Services

log = logs.get("vpnd.steering")


class DataPath:
    KEEP_INTERVAL = 5.0

    def __init__(self, conn: ConnectionConfig, services: Services, interfaces: Any) -> None:
        self.conn = conn
        self.services = services
        self.interfaces = interfaces          # vpnd.steering.interfaces.TunnelInterfaces
        self.clamp: MssClamp | None = None
        self.path_mtu: dict[str, int] = {}    # tunnel -> measured path MTU
        self._timer: asyncio.Task | None = None
        self._failing: str | None = None

    async def start(self) -> None:
        if not wanted(self.conn):
            return
        self.clamp = MssClamp(self.conn, netns=self.services.netns)
        await self.keep("start")
        if self._timer is None:
            self._timer = asyncio.create_task(self._tick(), name=f"mss-clamp-{self.conn.name}")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.KEEP_INTERVAL)
            self.services.defer(f"mss clamp {self.conn.name}", self.keep)

    def set_path_mtu(self, tunnel: str, pmtu: int | None) -> None:
        """From the path-MTU prober; the clamp follows at the next keep."""
        if pmtu is None:
            self.path_mtu.pop(tunnel, None)
        else:
            self.path_mtu[tunnel] = pmtu
        self.services.defer(f"mss clamp {self.conn.name}", self.keep)

    async def keep(self, why: str = "kept") -> None:
        """Read each interface's MTU, compute the clamp, make nft match (no write when all is
        in place), publish the figures."""
        if self.clamp is None:
            return
        keeper = getattr(self.interfaces, "keeper", None)
        mss: dict[str, int] = {}
        for t in self.conn.tunnels:
            mtu = await keeper.mtu(t.interface) if keeper is not None else None
            pmtu = self.path_mtu.get(t.name)
            row: dict[str, Any] = {"interface": t.interface, "mtu": mtu,
                                   "mtu_from": "config" if t.mtu is not None else
                                   ("underlay - ESP" if t.interface_kind == "xfrm" else "interface"),
                                   "path_mtu": pmtu, "mss_clamp": None}
            if mtu is not None:
                mss[t.interface] = row["mss_clamp"] = clamp_mss(mtu, pmtu)
                self.services.metrics.tunnel_mtu.labels(self.conn.name, t.name).set(mtu)
                self.services.metrics.mss_clamp.labels(self.conn.name, t.name).set(row["mss_clamp"])
            if pmtu is not None:
                self.services.metrics.path_mtu.labels(self.conn.name, t.name).set(pmtu)
            self.services.data_path[TunnelKey(self.conn.name, t.name)] = row
        self.clamp.mss = mss
        try:
            writes = await self.clamp.ensure()
        except ReturnPathError as err:
            if str(err) != self._failing:
                log.error("mss_clamp.failed", connection=self.conn.name, error=str(err))
            self._failing = str(err)
            return
        if self._failing is not None:
            log.info("mss_clamp.recovered", connection=self.conn.name)
            self._failing = None
        if writes:
            (log.warning if why == "kept" else log.info)(
                "mss_clamp.restored" if why == "kept" else "mss_clamp.set",
                connection=self.conn.name, mss=mss, why=why)

    async def reconfigure(self, conn: ConnectionConfig) -> None:
        self.conn = conn
        if self.clamp is None:
            await self.start()
            return
        self.clamp.conn = conn
        await self.keep("reconfigured")

    async def remove(self) -> None:
        await self._stop_timer()
        for t in self.conn.tunnels:
            self.services.data_path.pop(TunnelKey(self.conn.name, t.name), None)
        if self.clamp is not None:
            try:
                await self.clamp.remove()
            except ReturnPathError as err:
                log.error("mss_clamp.failed", connection=self.conn.name, error=str(err))
            self.clamp.close()
            self.clamp = None

    async def stop(self, *, withdraw: bool) -> None:
        if withdraw:
            await self.remove()
            return
        await self._stop_timer()
        if self.clamp is not None:
            self.clamp.close()

    async def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
            self._timer = None

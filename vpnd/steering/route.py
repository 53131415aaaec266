"""Route mode: the remote networks' kernel routes point at the active tunnel's interface
(metric 100 for it, 101 for the standby, as the vendor's updown scripts set them). With a
`[connection.cloud_health_check]` the /32 of the cloud check's source IP is one of those
routes, and the replies to the cloud's check leave by the tunnel each probe arrived on
(vpnd.kernel.return_path)."""

from __future__ import annotations

import time
from vpnd import logs
from vpnd.config.model import ConnectionConfig
from vpnd.core.events import Adopted, TunnelKey
from vpnd.kernel.routes import RouteController
from vpnd.steering.base import Services, Steering
from vpnd.steering.cloud_check import CloudCheckReturn
from vpnd.steering.data_path import DataPath
from vpnd.steering.interfaces import TunnelInterfaces

log = logs.get("vpnd.steering")


class RouteSteering(Steering):
    def __init__(self, conn: ConnectionConfig, services: Services) -> None:
        super().__init__(conn, services)
        self.interfaces = TunnelInterfaces(conn, services)
        self.routes: RouteController | None = None
        self.cloud_check = CloudCheckReturn(conn, services)
        self.data_path = DataPath(conn, services, self.interfaces)

    async def start(self) -> None:
        """Interfaces first, then the routes: adopted as found, never flapped at start; the
        core hears which tunnel they point to, so a restart keeps traffic where it was."""
        await self.interfaces.start()
        await self._start_routes()
        await self.cloud_check.start()
        await self.data_path.start()

    async def _start_routes(self) -> None:
        self.routes = RouteController(self.conn,
                                      protocol=self.services.config().daemon.route_protocol,
                                      netns=self.services.netns, on_event=self.services.post)
        await self.routes.start()
        if self.routes.active is not None:
            self.services.post(Adopted(TunnelKey(self.conn.name, self.routes.active)))

    async def set_active(self, tunnel: str | None, *, withdraw: bool, reason: str) -> None:
        t0 = time.perf_counter()
        writes = await self.routes.set_active(tunnel, withdraw=withdraw)
        if writes:
            log.info("routes.switched", connection=self.conn.name, active=tunnel, writes=writes,
                     reaction_ms=round((time.perf_counter() - t0) * 1000, 3))

    async def repair(self, reason: str) -> None:
        self.services.metrics.route_repairs.labels(self.conn.name).inc()
        await self.routes.repair()
        log.warning("routes.repaired", connection=self.conn.name, reason=reason)
        await self.cloud_check.keep()

    async def repair_interface(self, tunnel: str) -> None:
        await self.interfaces.repair(tunnel)
        await self.cloud_check.keep()
        await self.data_path.keep()

    async def reconfigure(self, conn: ConnectionConfig, *, links: bool, routes: bool) -> None:
        self.conn = conn
        if links:
            await self.interfaces.reconfigure(conn)
        if routes:
            writes = await self.routes.reconfigure(conn)
            log.info("routes.reconfigured", connection=conn.name, writes=writes)
        await self.cloud_check.reconfigure(conn)
        await self.data_path.reconfigure(conn)

    async def remove(self) -> None:
        await self.cloud_check.remove()
        await self.data_path.remove()
        await self.routes.remove()
        await self.interfaces.remove()

    async def stop(self, *, withdraw: bool) -> None:
        await self.cloud_check.stop(withdraw=withdraw)
        await self.data_path.stop(withdraw=withdraw)
        if withdraw:
            await self.routes.set_active(None, withdraw=True)
        await self.routes.stop()
        await self.interfaces.stop()


"""BGP mode: routes come from FRR's bgpd over each tunnel's session; vpnd steers by shutting a
failing neighbor and, with standby = "prepend", by which tunnel's route-maps prefer it
(vpnd.frr.bgp carries both out). The tunnels' interfaces are vpnd's, as in route mode."""

from __future__ import annotations

from vpnd import logs
from vpnd.config.model import Config, ConnectionConfig
from vpnd.core.events import TunnelKey
from vpnd.frr.bgp import BgpAdapter
from vpnd.frr.vtysh import FrrError
from vpnd.render.swanctl import RenderError
from vpnd.steering.base import Backend, Services, Steering
from vpnd.steering.cloud_check import CloudCheckReturn
from vpnd.steering.data_path import DataPath
from vpnd.steering.interfaces import TunnelInterfaces

log = logs.get("vpnd.steering")


class BgpBackend(Backend):
    """One FRR adapter for every BGP-mode connection: they share one `router bgp`. It polls
    about as often as the fastest health check probes, 0.1-0.5 s."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.adapter: BgpAdapter | None = None
        self._start(services.config())

    @classmethod
    def of(cls, services: Services) -> "BgpBackend":
        if "bgp" not in services.shared:
            services.shared["bgp"] = cls(services)
        return services.shared["bgp"]

    def _start(self, config: Config) -> None:
        conns = _bgp_connections(config)
        if not conns:
            return
        intervals = [c.health_check.interval for c in conns if c.health_check is not None]
        try:
            self.adapter = BgpAdapter(config, on_event=self.services.post,
                                      metrics=self.services.metrics,
                                      poll_interval=max(0.1, min([0.5, *intervals])))
        except RenderError as err:      # e.g. two connections with different local_asn
            log.error("bgp.not_started", problem=str(err))
            return
        self.adapter.start()

    async def reconfigure(self, config: Config) -> None:
        """FRR gets the new rendering by difference (an unchanged one: no command). FRR's
        errors are logged and counted, never fatal. With no BGP connection left, the adapter
        stops and FRR keeps what it has, as at a stop."""
        if self.adapter is None:
            self._start(config)
            return
        if not _bgp_connections(config):
            await self.stop()
            return
        try:
            changes = await self.adapter.reconfigure(config)
            log.info("bgp.reconfigured", commands=len(changes))
        except (FrrError, RenderError) as err:
            log.error("bgp.reconfigure_failed", error=str(err))

    async def stop(self) -> None:
        """FRR keeps its config and sessions, like the routes."""
        if self.adapter is not None:
            await self.adapter.stop()
            self.adapter = None


class BgpSteering(Steering):
    def __init__(self, conn: ConnectionConfig, services: Services) -> None:
        super().__init__(conn, services)
        self.interfaces = TunnelInterfaces(conn, services)
        self.backend: BgpBackend | None = None
        self.cloud_check = CloudCheckReturn(conn, services)
        self.data_path = DataPath(conn, services, self.interfaces)

    async def start(self) -> None:
        await self.interfaces.start()
        self.backend = BgpBackend.of(self.services)
        await self.cloud_check.start()
        await self.data_path.start()

    @property
    def _adapter(self) -> BgpAdapter | None:
        return self.backend.adapter if self.backend is not None else None

    async def set_active(self, tunnel: str | None, *, withdraw: bool, reason: str) -> None:
        # standby = "prepend": the route-maps follow (pushed in the background)
        if self._adapter is not None:
            await self._adapter.set_active(self.conn.name, tunnel, reason)

    async def set_neighbor(self, tunnel: str, enabled: bool, reason: str) -> None:
        if self._adapter is not None:   # records and pushes in the background: never stalls
            await self._adapter.set_neighbor(TunnelKey(self.conn.name, tunnel), enabled, reason)

    async def repair_interface(self, tunnel: str) -> None:
        await self.interfaces.repair(tunnel)
        await self.cloud_check.keep()
        await self.data_path.keep()

    async def reconfigure(self, conn: ConnectionConfig, *, links: bool, routes: bool) -> None:
        self.conn = conn
        if links:
            await self.interfaces.reconfigure(conn)
        await self.cloud_check.reconfigure(conn)
        await self.data_path.reconfigure(conn)

    async def remove(self) -> None:
        await self.cloud_check.remove()
        await self.data_path.remove()
        await self.interfaces.remove()

    async def stop(self, *, withdraw: bool) -> None:
        await self.cloud_check.stop(withdraw=withdraw)
        await self.data_path.stop(withdraw=withdraw)
        # the return path's more-specifics follow withdraw_on_stop as the routes do (kept by
        # default: the next vpnd adopts them); sessions and route-maps stay either way
        if withdraw and self._adapter is not None:
            try:
                await self._adapter.withdraw_return_path(self.conn.name)
            except FrrError as err:
                log.error("bgp.return_path_not_withdrawn", connection=self.conn.name, error=str(err))
        await self.interfaces.stop()


def _bgp_connections(config: Config) -> list[ConnectionConfig]:
    return [c for c in config.connections if c.bgp is not None]    # bgp is set in BGP mode only

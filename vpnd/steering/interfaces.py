"""The tunnel interfaces route and BGP modes steer through: kept by vpnd.kernel.links, shared
here by both modes' steering so creating, repairing and rebuilding them is written once."""

from __future__ import annotations

from vpnd import logs
from vpnd.config.model import ConnectionConfig
from vpnd.kernel.links import LinkError, LinkKeeper, rp_filter_warnings
from vpnd.steering.base import Services
from vpnd.steering.spec import link_spec

log = logs.get("vpnd.steering")


class TunnelInterfaces:
    def __init__(self, conn: ConnectionConfig, services: Services) -> None:
        self.conn = conn
        self.services = services
        self.keeper: LinkKeeper | None = None

    async def start(self) -> None:
        self.keeper = LinkKeeper(self.conn, netns=self.services.netns, on_event=self.services.post)
        await self.keeper.start()
        for warning in rp_filter_warnings([t.interface for t in self.conn.tunnels]):
            log.warning("links.rp_filter", connection=self.conn.name, problem=warning)

    async def repair(self, tunnel: str) -> None:
        t = self.keeper.tunnel(tunnel) if self.keeper else None
        if t is None:
            return
        try:
            await self.keeper.ensure(t)
            log.warning("links.repaired", connection=self.conn.name, tunnel=t.name,
                        interface=t.interface)
        except LinkError as err:
            log.error("links.repair_failed", connection=self.conn.name, tunnel=t.name,
                      error=str(err))

    async def reconfigure(self, conn: ConnectionConfig) -> None:
        """Interfaces whose spec is unchanged stay as they are (no flap); the rest are made
        afresh."""
        old, self.conn = self.conn, conn
        if self.keeper is not None:
            same = {link_spec(conn, t) for t in conn.tunnels}
            keep = {t.interface for t in old.tunnels if link_spec(old, t) in same}
            await self.keeper.remove(keep=keep)
        await self.start()

    async def remove(self) -> None:
        if self.keeper is not None:
            await self.keeper.remove()
            self.keeper = None

    async def stop(self) -> None:
        if self.keeper is not None:
            await self.keeper.stop()

"""Policy mode: both tunnels' CHILD SAs carry the same flows and charon's choice between them
is steered by CHILD SA priority and freshness (vpnd.charon.selector says how, per kernel).
No interfaces, no routes: the cloud's own switch shows as XfrmInTmplMismatch."""

from __future__ import annotations

import os
from typing import Any

from vpnd import logs
from vpnd.charon.selector import PolicySelector
from vpnd.config.model import Config, ConnectionConfig
from vpnd.core import events as E
from vpnd.kernel.xfrm_stat import PATH, XfrmStatWatcher
from vpnd.steering.base import Backend, Services, Steering

log = logs.get("vpnd.steering")


class PolicyBackend(Backend):
    """One selector for every policy-mode connection (one lock: one CHILD SA replacement at a
    time) and one XfrmInTmplMismatch watcher (the counter is the namespace's, not a tunnel's)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.selector = PolicySelector(services.config(), services.charon, services.defer)
        # the lab's libipsec never counts: its tests substitute a file of their own
        self.xfrm_stat: XfrmStatWatcher | None = XfrmStatWatcher(
            self._mismatch, path=os.environ.get("VPND_XFRM_STAT", str(PATH)),
            on_sample=services.metrics.xfrm_tmpl_mismatch.set)
        if not self.xfrm_stat.start():
            self.xfrm_stat = None

    @classmethod
    def of(cls, services: Services) -> "PolicyBackend":
        if "policy" not in services.shared:
            services.shared["policy"] = cls(services)
        return services.shared["policy"]

    def _mismatch(self, event: E.XfrmInTmplMismatch) -> None:
        log.warning("xfrm.in_tmpl_mismatch", total=event.total, delta=event.delta,
                    note="IPsec packets arrived on a tunnel our policy does not name: "
                         "the cloud may have moved traffic")
        self.services.post(event)

    async def reconfigure(self, config: Config) -> None:
        self.selector.config = config       # priorities follow the chosen tunnel

    async def stop(self) -> None:
        if self.xfrm_stat is not None:
            await self.xfrm_stat.stop()


class PolicySteering(Steering):
    def __init__(self, conn: ConnectionConfig, services: Services) -> None:
        super().__init__(conn, services)
        self.selector = PolicyBackend.of(services).selector

    def charon_synced(self, snapshot: E.SaSnapshot) -> None:
        """"A restart keeps traffic where it finds it": the carrier a predecessor left is told
        to the core before the snapshot that makes the tunnels usable."""
        self.selector.found_at_start(snapshot)
        tunnel = self.selector.carrier_in(snapshot, self.conn)
        if tunnel is not None:
            log.info("policy.adopted", connection=self.conn.name, active=tunnel)
            self.services.post(E.Adopted(E.TunnelKey(self.conn.name, tunnel)))

    def observe(self, event: Any) -> None:
        if isinstance(event, E.SaSnapshot):
            self.selector.retry(self.conn.name)
        elif type(event) in (E.ChildUp, E.ChildRekeyed) and event.tunnel.connection == self.conn.name:
            self.selector.child_installed(event.tunnel)

    def charon_choice(self) -> str | None:
        return self.selector.active.get(self.conn.name)

    async def set_active(self, tunnel: str | None, *, withdraw: bool, reason: str) -> None:
        done = await self.selector.set_active(self.conn.name, tunnel)
        if done:
            log.info("policy.switched", connection=self.conn.name, active=tunnel, **done)

    async def remove(self) -> None:
        self.selector.active.pop(self.conn.name, None)
        self.selector.failed.pop(self.conn.name, None)

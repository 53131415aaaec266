"""The composition root of `vpnd run`: builds each adapter and connects it to the supervisor.

Start order follows "subscribe, then snapshot, then apply deltas": charon's adapter registers
for events before its first `list-sas`; the route controller subscribes to netlink before it
dumps and adopts existing vpnd routes (so a restart changes nothing in the kernel); probes
start last. READY=1 goes to systemd after the first full charon sync.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from vpnd import logs
from vpnd.config.model import Config
from vpnd.core import actions as A
from vpnd.core import events as E
from vpnd.metrics import Metrics
from vpnd.supervisor import Supervisor, install_signal_handlers

log = logs.get("vpnd.daemon")


class Daemon:
    def __init__(self, config: Config, *, netns: str | None = None) -> None:
        from vpnd.charon import CharonAdapter
        from vpnd.policy import PolicySelector

        self.config = config
        self.netns = netns
        self.sup = Supervisor(config)
        self.metrics = Metrics()
        self.metrics.declare(config)
        self.charon = CharonAdapter(config.daemon.vici_socket, self._from_charon,
                                    on_stats=self.metrics.sa_stats)
        self.policy = PolicySelector(config, self.charon)     # routing = "policy" connections
        self.xfrm_stat: Any = None
        self.routes: dict[str, Any] = {}       # connection -> route controller
        self.links: dict[str, Any] = {}        # connection -> link keeper
        self.probes: dict[E.TunnelKey, Any] = {}   # tunnel -> its prober
        self.bgp: Any = None                   # BgpAdapter when a connection uses routing = "bgp"
        self._synced = asyncio.Event()
        self._wire()
        self.board = self._status_board()
        self.sup.reloader = self._reload
        self.sup.on_reload_result = self.metrics.reload_result
        self.sup.status = self._summary

    # --- events in -----------------------------------------------------------------------

    def _from_charon(self, event: Any) -> None:
        if isinstance(event, E.CharonConnected):
            self.metrics.charon_up.set(1)
        elif isinstance(event, E.CharonDisconnected):
            self.metrics.charon_up.set(0)
        elif isinstance(event, E.SaSnapshot):
            if not self._synced.is_set():
                self.policy.found_at_start(event)
                # policy mode's part of "a restart keeps traffic where it finds it": told to
                # the core before the snapshot that makes the tunnels usable
                for conn in self.config.connections:
                    tunnel = self.policy.carrier_in(event, conn) if conn.routing == "policy" else None
                    if tunnel is not None:
                        log.info("policy.adopted", connection=conn.name, active=tunnel)
                        self.sup.post(E.Adopted(E.TunnelKey(conn.name, tunnel)))
            self._synced.set()
            self.policy.retry()
        elif type(event) in (E.ChildUp, E.ChildRekeyed):
            self.policy.child_installed(event.tunnel)
        self.sup.post(event)

    def _from_xfrm_stat(self, event: E.XfrmInTmplMismatch) -> None:
        log.warning("xfrm.in_tmpl_mismatch", total=event.total, delta=event.delta,
                    note="IPsec packets arrived on a tunnel our policy does not name: "
                         "the cloud may have moved traffic")
        self.sup.post(event)

    def _from_probe(self, result: E.ProbeResult) -> None:
        prober = self.probes.get(result.tunnel)
        self.metrics.probe(result.tunnel.connection, result.tunnel.tunnel, result.ok, result.rtt,
                           prober.loss_ratio if prober is not None else None)
        self.sup.post(result)

    # --- actions out ---------------------------------------------------------------------

    def _wire(self) -> None:
        sup = self.sup
        sup.on(A.Initiate, self._initiate)
        sup.on(A.Terminate, self._terminate)
        sup.on(A.ReportTransition, self._report)
        sup.on(A.SetActive, self._set_active)
        sup.on(A.RepairRoutes, self._repair_routes)
        sup.on(A.RepairInterface, self._repair_interface)
        sup.on(A.SetBgpNeighbor, self._set_bgp_neighbor)

    async def _initiate(self, a: A.Initiate) -> None:
        # Outcomes arrive as VICI events: fire and forget, never block the reconciler.
        await self.charon.initiate(a.tunnel, timeout=0)

    async def _terminate(self, a: A.Terminate) -> None:
        await self.charon.terminate(a.tunnel, a.ike_id, timeout=0)

    async def _report(self, a: A.ReportTransition) -> None:
        log.info("tunnel.state_changed", connection=a.tunnel.connection, tunnel=a.tunnel.tunnel,
                 **{"from": a.old}, to=a.new, reason=a.reason)
        self.metrics.set_state(a.tunnel.connection, a.tunnel.tunnel, a.new)
        self.metrics.transitions.labels(a.tunnel.connection, a.tunnel.tunnel, a.old, a.new).inc()

    async def _set_active(self, a: A.SetActive) -> None:
        conn = next(c for c in self.config.connections if c.name == a.connection)
        previous = self._active.get(a.connection)
        self._active[a.connection] = a.tunnel
        # traffic first: the kernel routes move before anything is logged or counted
        routes = self.routes.get(a.connection)
        writes, reaction_ms = 0, 0.0
        if routes is not None:
            t0 = time.perf_counter()
            writes = await routes.set_active(a.tunnel, withdraw=a.withdraw)
            reaction_ms = round((time.perf_counter() - t0) * 1000, 3)
        self.metrics.set_active(a.connection, tuple(t.name for t in conn.tunnels), a.tunnel)
        if previous is not None and a.tunnel is not None and previous != a.tunnel:
            self.metrics.failover(a.connection, previous, a.tunnel, a.reason)
        from vpnd.status import evidence

        # one event per change, with from/to and the probe evidence the decision rested on
        log.info("connection.active_changed", connection=a.connection, active=a.tunnel,
                 previous=previous, **{"from": previous}, to=a.tunnel, reason=a.reason,
                 withdraw=a.withdraw,
                 probes={t.name: evidence(self.board.probes.get(E.TunnelKey(a.connection, t.name)))
                         for t in conn.tunnels} if conn.health_check is not None else None)
        if writes:
            log.info("routes.switched", connection=a.connection, active=a.tunnel, writes=writes,
                     reaction_ms=reaction_ms)
        if conn.routing == "policy":
            done = await self.policy.set_active(a.connection, a.tunnel)
            if done:
                log.info("policy.switched", connection=a.connection, active=a.tunnel, **done)
        if conn.routing == "bgp" and self.bgp is not None:
            # standby = "prepend": the route-maps follow (pushed in the background)
            await self.bgp.set_active(a.connection, a.tunnel, a.reason)

    async def _repair_routes(self, a: A.RepairRoutes) -> None:
        routes = self.routes.get(a.connection)
        if routes is not None:
            self.metrics.route_repairs.labels(a.connection).inc()
            await routes.repair()
            log.warning("routes.repaired", connection=a.connection, reason=a.reason)

    async def _repair_interface(self, a: A.RepairInterface) -> None:
        keeper = self.links.get(a.tunnel.connection)
        t = keeper.tunnel(a.tunnel.tunnel) if keeper else None
        if t is None:
            return
        from vpnd.links import LinkError
        try:
            await keeper.ensure(t)
            log.warning("links.repaired", connection=a.tunnel.connection, tunnel=t.name,
                        interface=t.interface)
        except LinkError as err:
            log.error("links.repair_failed", connection=a.tunnel.connection, tunnel=t.name,
                      error=str(err))

    async def _set_bgp_neighbor(self, a: A.SetBgpNeighbor) -> None:
        if self.bgp is not None:        # records and pushes in the background: never stalls
            await self.bgp.set_neighbor(a.tunnel, a.enabled, a.reason)

    _active: dict[str, str | None] = {}

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        from vpnd.charon import desired_from_config

        self._active = {}
        install_signal_handlers(self.sup)
        self.metrics.serve(self.config.daemon.metrics_listen)
        await self._start_routes()
        self._start_bgp()
        self.charon.desire(desired_from_config(self.config))
        await self.charon.start()
        reconciler = asyncio.create_task(self.sup.reconcile(), name="reconciler")
        watchdog = asyncio.create_task(self.sup.watchdog(), name="watchdog")
        control = await self._start_control()
        lag = asyncio.create_task(self._loop_lag(), name="loop-lag")
        await self._start_probes()
        self._start_xfrm_stat()
        try:
            await asyncio.wait_for(self._synced.wait(), 30)
            self.sup.notifier.ready(self._summary())
            log.info("vpnd.ready", connections=len(self.config.connections))
        except TimeoutError:
            log.warning("vpnd.charon_unreachable", socket=self.config.daemon.vici_socket,
                        note="still retrying with backoff")
        await self.sup.stopping.wait()
        self.sup.notifier.stopping()
        log.info("vpnd.stopping", withdraw=self.config.daemon.withdraw_on_stop)
        if control is not None:
            await control.stop()
        for p in self.probes.values():
            await p.stop()
        if self.xfrm_stat is not None:
            await self.xfrm_stat.stop()
        await self.policy.stop()
        if self.config.daemon.withdraw_on_stop:
            for r in self.routes.values():
                await r.set_active(None, withdraw=True)
        for r in self.routes.values():
            await r.stop()
        if self.bgp is not None:        # FRR keeps its config and sessions, like the routes
            await self.bgp.stop()
        for k in self.links.values():
            await k.stop()
        await self.charon.stop()
        for task in (reconciler, watchdog, lag):
            task.cancel()
        await asyncio.gather(reconciler, watchdog, lag, return_exceptions=True)
        return 0

    # --- the control socket (vpnd status / failover / drain / undrain) ---------------------

    def _status_board(self) -> Any:
        from vpnd.status import StatusBoard

        # late-bound: a reload may replace the config (and the engine)
        board = StatusBoard(lambda: self.sup.config, lambda: self.sup.engine.status(),
                            self.sup.clock, charon=self.charon.unreachable)
        self.sup.observers.append(board.observe)
        return board

    async def _start_control(self) -> Any:
        """Serve the control socket; without it vpnd still supervises (logged, not fatal)."""
        from vpnd.control import ControlError, ControlServer

        path = self.config.daemon.control_socket
        server = ControlServer(path, status=self.board.status, apply=self.sup.apply)
        try:
            await server.start()
        except ControlError as err:
            log.error("control.unavailable", socket=path, error=str(err))
            return None
        log.info("control.listening", socket=path)
        return server

    async def _loop_lag(self, interval: float = 0.5) -> None:
        """How late the loop wakes a timer: a busy or blocked loop delays probes and switches."""
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(interval)
            self.metrics.loop_lag.set(max(0.0, loop.time() - t0 - interval))

    def _summary(self) -> str:
        n = sum(len(c.tunnels) for c in self.config.connections)
        return f"{len(self.config.connections)} connection(s), {n} tunnel(s) supervised"

    async def _start_routes(self) -> None:
        """Tunnel interfaces first (route and bgp modes), then, in route mode, the routes:
        vpnd owns the remote networks' routes (adopted, never flapped at start)."""
        from vpnd.links import LinkKeeper, rp_filter_warnings

        for conn in self.config.connections:
            if conn.routing == "policy":
                continue
            keeper = LinkKeeper(conn, netns=self.netns, on_event=self.sup.post)
            await keeper.start()
            self.links[conn.name] = keeper
            for warning in rp_filter_warnings([t.interface for t in conn.tunnels]):
                log.warning("links.rp_filter", connection=conn.name, problem=warning)
        for conn in self.config.connections:
            if conn.routing == "route":
                await self._start_route_controller(conn)

    async def _start_route_controller(self, conn: Any) -> None:
        """It adopts the routes it finds; the core hears which tunnel they point to, so a
        restart keeps traffic where it found it."""
        from vpnd.routes import RouteController

        rc = RouteController(conn, protocol=self.config.daemon.route_protocol,
                             netns=self.netns, on_event=self.sup.post)
        await rc.start()
        self.routes[conn.name] = rc
        if rc.active is not None:
            self.sup.post(E.Adopted(E.TunnelKey(conn.name, rc.active)))

    def _start_bgp(self) -> None:
        """One FRR adapter for every routing = "bgp" connection (they share one router bgp);
        it polls about as often as the fastest health check probes, 0.1-0.5 s."""
        conns = [c for c in self.config.connections if c.routing == "bgp" and c.bgp is not None]
        if not conns:
            return
        from vpnd.bgp import BgpAdapter
        from vpnd.render.swanctl import RenderError

        intervals = [c.health_check.interval for c in conns if c.health_check is not None]
        poll = max(0.1, min([0.5, *intervals]))
        try:
            self.bgp = BgpAdapter(self.config, on_event=self.sup.post, metrics=self.metrics,
                                  poll_interval=poll)
        except RenderError as err:      # e.g. two connections with different local_asn
            log.error("bgp.not_started", problem=str(err))
            return
        self.bgp.start()

    async def reconfigure_bgp(self) -> None:
        """After a reload: FRR gets the new rendering by difference; a first bgp connection
        starts the adapter. FRR's errors are logged and counted, never fatal."""
        if self.bgp is None:
            self._start_bgp()
            return
        from vpnd.frr import FrrError
        from vpnd.render.swanctl import RenderError

        try:
            changes = await self.bgp.reconfigure(self.config)
            log.info("bgp.reconfigured", commands=len(changes))
        except (FrrError, RenderError) as err:
            log.error("bgp.reconfigure_failed", error=str(err))

    async def _start_probes(self) -> None:
        """One prober per tunnel of every connection with a health check."""
        for conn in self.config.connections:
            for t in conn.tunnels:
                self.start_probe(E.TunnelKey(conn.name, t.name))

    def start_probe(self, key: E.TunnelKey) -> None:
        from vpnd.probe import Prober, TcpProber

        conn = next((c for c in self.config.connections if c.name == key.connection), None)
        t = next((t for t in conn.tunnels if t.name == key.tunnel), None) if conn else None
        if conn is None or t is None or conn.health_check is None or key in self.probes:
            return
        hc = conn.health_check
        # policy mode: each tunnel's own probe path (both carry the same flows)
        target: dict[str, Any] = dict(
            destination=str(t.probe_destination or hc.destination),
            source=str(t.probe_source or hc.source),
            interface=t.interface if conn.routing != "policy" else None,
            interval=hc.interval, timeout=hc.timeout or hc.interval, on_result=self._from_probe)
        p: Prober | TcpProber = (TcpProber(key, port=hc.port, **target) if hc.kind == "tcp"
                                 else Prober(key, **target))
        p.start()
        self.probes[key] = p

    async def stop_probe(self, key: E.TunnelKey) -> None:
        p = self.probes.pop(key, None)
        if p is not None:
            await p.stop()

    # --- reload by difference (vpnd.reload) ------------------------------------------------

    async def _reload(self, new: Config) -> dict[str, Any]:
        from vpnd import reload

        p = reload.plan(self.config, new)
        await reload.apply(self, new, p)
        fields: dict[str, Any] = {"changes": p.summary()}
        if p.daemon_fields:
            fields["restart_needed"] = [f"daemon.{f}" for f in p.daemon_fields]
            log.warning("config.restart_needed", keys=fields["restart_needed"],
                        note="[daemon] settings take effect at the next start")
        return fields

    async def remove_plumbing(self, name: str) -> None:
        """A connection removed (or rebuilt): its routes withdrawn, its interfaces deleted."""
        rc = self.routes.pop(name, None)
        if rc is not None:
            await rc.remove()
        keeper = self.links.pop(name, None)
        if keeper is not None:
            await keeper.remove()
        self._active.pop(name, None)

    async def reconfigure_plumbing(self, conn: Any, *, links: bool, routes: bool) -> None:
        from vpnd.links import LinkKeeper

        if links and conn.routing != "policy":
            old = self.links.pop(conn.name, None)
            if old is not None:
                same = {(t.interface, t.interface_kind, t.if_id, t.underlay) for t in conn.tunnels}
                keep = {t.interface for t in old.conn.tunnels
                        if (t.interface, t.interface_kind, t.if_id, t.underlay) in same}
                await old.remove(keep=keep)
            keeper = LinkKeeper(conn, netns=self.netns, on_event=self.sup.post)
            await keeper.start()
            self.links[conn.name] = keeper
        if routes and conn.routing == "route":
            rc = self.routes.get(conn.name)
            if rc is None:
                await self._start_route_controller(conn)
            else:
                writes = await rc.reconfigure(conn)
                log.info("routes.reconfigured", connection=conn.name, writes=writes)

    def _start_xfrm_stat(self) -> None:
        """Policy mode: the cloud's own switch shows as XfrmInTmplMismatch (vpnd/xfrm_stat.py)."""
        import os

        from vpnd.xfrm_stat import PATH, XfrmStatWatcher

        if any(c.routing == "policy" for c in self.config.connections):
            # the lab's libipsec never counts: its tests substitute a file of their own
            path = os.environ.get("VPND_XFRM_STAT", str(PATH))
            self.xfrm_stat = XfrmStatWatcher(self._from_xfrm_stat, path=path,
                                             on_sample=self.metrics.xfrm_tmpl_mismatch.set)
            if not self.xfrm_stat.start():
                self.xfrm_stat = None


async def run_daemon(config: Config) -> int:
    return await Daemon(config).run()

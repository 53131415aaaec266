"""The composition root of `vpnd run`: builds each adapter and connects it to the supervisor.

Start order follows "subscribe, then snapshot, then apply deltas": each connection's steering
starts first (route mode subscribes to netlink before it dumps and adopts existing vpnd
routes, so a restart changes nothing in the kernel); charon's adapter registers for events
before its first `list-sas`; probes start last. READY=1 goes to systemd after the first full
charon sync, or after a grace without one (STATUS then says vpnd waits for charon).

What differs between routing modes is behind vpnd.steering: the daemon holds one steering
object per connection and carries out the core's actions through it. A SIGHUP's reload is
the daemon's own method (`reload`), by difference (vpnd.run.reload_plan says what differs).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from vpnd import logs
from vpnd.config.model import Config, ConnectionConfig
from vpnd.core import actions as A
from vpnd.core import events as E
from vpnd.metrics import Metrics
from vpnd.run import reload_plan
from vpnd.run.rotation import Rotator
from vpnd.run.supervisor import Supervisor, install_signal_handlers
from vpnd.steering.base import Services, Steering
from vpnd.steering.spec import ProbeSpec, probe_spec

log = logs.get("vpnd.daemon")


def build_prober(key: E.TunnelKey, spec: ProbeSpec, on_result: Callable[[E.ProbeResult], None]) -> Any:
    """A tunnel's prober, as its spec says (ICMP or TCP)."""
    from vpnd.probe import Prober, TcpProber

    target: dict[str, Any] = dict(destination=spec.destination, source=spec.source,
                                  interface=spec.interface, interval=spec.interval,
                                  timeout=spec.timeout, on_result=on_result)
    return (TcpProber(key, port=spec.port, **target) if spec.kind == "tcp"
            else Prober(key, returns=dict(spec.returns), **target))


def build_path_mtu_prober(key: E.TunnelKey, spec: ProbeSpec, interval: float,
                          on_result: Callable[..., None], usable: Callable[[], bool],
                          taken: Callable[[], set[int]]) -> Any:
    """A tunnel's path-MTU prober: DF echoes to the probe's destination from its source."""
    from vpnd.pmtu_probe import PathMtuProber

    assert spec.interface is not None
    return PathMtuProber(key, destination=spec.destination, source=spec.source,
                         interface=spec.interface, timeout=min(spec.timeout, 1.0),
                         interval=interval, on_result=on_result, usable=usable, taken=taken)


def _steering_for(conn: ConnectionConfig, services: Services) -> Steering:
    from vpnd.steering.modes import steering_for     # pyroute2, pexpect: only for `vpnd run`
    return steering_for(conn, services)


class Daemon:
    """`steering` and `prober` build the per-connection and per-tunnel I/O; tests pass fakes."""

    def __init__(self, config: Config, *, netns: str | None = None,
                 steering: Callable[[ConnectionConfig, Services], Steering] = _steering_for,
                 prober: Callable[..., Any] = build_prober, notifier: Any = None,
                 path_mtu_prober: Callable[..., Any] | None = build_path_mtu_prober) -> None:
        from vpnd.charon.adapter import CharonAdapter

        self.config = config
        self.sup = Supervisor(config, notifier=notifier)
        self.metrics = Metrics()
        self.metrics.declare(config)
        self.charon = CharonAdapter(config.daemon.vici_socket, self._from_charon,
                                    on_stats=self.metrics.sa_stats)
        self.services = Services(charon=self.charon, metrics=self.metrics, post=self.sup.post,
                                 defer=self.sup.defer, config=lambda: self.config, netns=netns)
        self._new_steering = steering
        self._new_prober = prober
        self.steering: dict[str, Steering] = {}        # connection -> how its traffic is steered
        self.probes: dict[E.TunnelKey, Any] = {}       # tunnel -> its prober
        self._new_path_mtu_prober = path_mtu_prober
        self.path_mtu_probes: dict[E.TunnelKey, Any] = {}   # tunnel -> its path-MTU prober
        self.active: dict[str, str | None] = {}        # connection -> the core's last SetActive
        self._synced = asyncio.Event()
        self._wire()
        self.board = self._status_board()
        self.board.data_path = self.services.data_path
        self.rotator = Rotator(self)                   # `vpnd psk rotate` (vpnd.run.rotation)
        self.sup.reloader = self.reload
        self.sup.on_reload_result = self.metrics.reload_result
        self.sup.status = self._summary

    # --- events in -----------------------------------------------------------------------

    def _from_charon(self, event: Any) -> None:
        if isinstance(event, E.CharonConnected):
            self.metrics.charon_up.set(1)
        elif isinstance(event, E.CharonDisconnected):
            self.metrics.charon_up.set(0)
        elif isinstance(event, E.SaSnapshot) and not self._synced.is_set():
            for steering in self.steering.values():
                steering.charon_synced(event)
            self._synced.set()
        for steering in self.steering.values():
            steering.observe(event)
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
        await self.charon.terminate(a.tunnel, a.ike_id, child_id=a.child_id, timeout=0)

    async def _report(self, a: A.ReportTransition) -> None:
        log.info("tunnel.state_changed", connection=a.tunnel.connection, tunnel=a.tunnel.tunnel,
                 **{"from": a.old}, to=a.new, reason=a.reason)
        self.metrics.set_state(a.tunnel.connection, a.tunnel.tunnel, a.new)
        self.metrics.transitions.labels(a.tunnel.connection, a.tunnel.tunnel, a.old, a.new).inc()

    async def _set_active(self, a: A.SetActive) -> None:
        conn = self._connection(a.connection)
        steering = self.steering.get(a.connection)
        if conn is None or steering is None:
            return
        previous = self.active.get(a.connection)
        self.active[a.connection] = a.tunnel
        # traffic first: it moves before anything else is logged or counted
        await steering.set_active(a.tunnel, withdraw=a.withdraw, reason=a.reason)
        self.metrics.set_active(a.connection, tuple(t.name for t in conn.tunnels), a.tunnel)
        if previous is not None and a.tunnel is not None and previous != a.tunnel:
            self.metrics.failover(a.connection, previous, a.tunnel, a.reason)
            for key, p in self.path_mtu_probes.items():   # the path may differ now
                if key.connection == a.connection:
                    p.trigger()
        from vpnd.control.status import evidence

        # one event per change, with from/to and the probe evidence the decision rested on
        log.info("connection.active_changed", connection=a.connection, active=a.tunnel,
                 previous=previous, **{"from": previous}, to=a.tunnel, reason=a.reason,
                 withdraw=a.withdraw,
                 probes={t.name: evidence(self.board.probes.get(E.TunnelKey(a.connection, t.name)))
                         for t in conn.tunnels} if conn.health_check is not None else None)

    async def _repair_routes(self, a: A.RepairRoutes) -> None:
        steering = self.steering.get(a.connection)
        if steering is not None:
            await steering.repair(a.reason)

    async def _repair_interface(self, a: A.RepairInterface) -> None:
        steering = self.steering.get(a.tunnel.connection)
        if steering is not None:
            await steering.repair_interface(a.tunnel.tunnel)

    async def _set_bgp_neighbor(self, a: A.SetBgpNeighbor) -> None:
        steering = self.steering.get(a.tunnel.connection)
        if steering is not None:
            await steering.set_neighbor(a.tunnel.tunnel, a.enabled, a.reason)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """What supervises, in start order: each connection's steering, charon, the probes.
        Their events queue up until the reconciler runs."""
        for conn in self.config.connections:
            await self._start_connection(conn)
        self.charon.desire(self._desired(self.config))
        await self.charon.start()
        for conn in self.config.connections:
            for t in conn.tunnels:
                self.start_probe(E.TunnelKey(conn.name, t.name))

    async def run(self) -> int:
        install_signal_handlers(self.sup)
        metrics = await self._start_metrics()
        await self.start()
        reconciler = asyncio.create_task(self.sup.reconcile(), name="reconciler")
        watchdog = asyncio.create_task(self.sup.watchdog(), name="watchdog")
        control = await self._start_control()
        lag = asyncio.create_task(self._loop_lag(), name="loop-lag")
        ready = asyncio.create_task(self._announce_ready(), name="ready")
        cloud = asyncio.create_task(self._cloud_view(), name="cloud-view")
        await self.sup.stopping.wait()
        self.sup.notifier.stopping()
        log.info("vpnd.stopping", withdraw=self.config.daemon.withdraw_on_stop)
        if control is not None:
            await control.stop()
        if metrics is not None:
            await metrics.stop()
        await self.stop(withdraw=self.config.daemon.withdraw_on_stop)
        for task in (reconciler, watchdog, lag, ready, cloud):
            task.cancel()
        await asyncio.gather(reconciler, watchdog, lag, ready, cloud, return_exceptions=True)
        return 0

    ready_grace = 10.0      # seconds; well under systemd's TimeoutStartSec (90 s by default)

    async def _announce_ready(self) -> None:
        """READY=1 once vpnd supervises, with charon or without: a READY that waited for
        charon would let systemd kill vpnd at boot when charon is slow (Type=notify). Within
        `ready_grace` the first sync comes first, so READY usually means "synced"; otherwise
        STATUS says what vpnd waits for, and changes when charon answers, however late."""
        try:
            await asyncio.wait_for(self._synced.wait(), self.ready_grace)
        except TimeoutError:
            sock = self.config.daemon.vici_socket
            log.warning("vpnd.charon_unreachable", socket=sock, note="still retrying with backoff")
            self.sup.notifier.ready(f"waiting for charon at {sock}; {self._summary()}")
            log.info("vpnd.ready", connections=len(self.config.connections), charon="waiting")
            await self._synced.wait()
            self.sup.notifier.status(self._summary())
            log.info("vpnd.charon_synced", socket=sock)
            return
        self.sup.notifier.ready(self._summary())
        log.info("vpnd.ready", connections=len(self.config.connections))

    _metrics_problem = ""

    async def _start_metrics(self) -> Any:
        """Serve /metrics; a listen address that cannot be bound is logged and shown in the
        status, never fatal: supervision matters more than its dashboard."""
        listen = self.config.daemon.metrics_listen
        if not listen:
            return None
        try:
            server = await self.metrics.start_server(listen)
        except OSError as err:
            reason = err.strerror or str(err)
            log.error("metrics.unavailable", listen=listen, error=reason,
                      note="vpnd keeps supervising without its metrics endpoint")
            self._metrics_problem = f"; metrics endpoint {listen} unavailable: {reason}"
            return None
        log.info("metrics.listening", listen=listen)
        return server

    async def stop(self, *, withdraw: bool) -> None:
        """Probes, then each connection's steering (routes and FRR stay unless `withdraw`),
        then the modes' shared backends, then charon."""
        await self.rotator.stop()
        for p in [*self.path_mtu_probes.values(), *self.probes.values()]:
            await p.stop()
        for steering in self.steering.values():
            await steering.stop(withdraw=withdraw)
        for backend in self.services.shared.values():
            await backend.stop()
        await self.charon.stop()

    async def _start_connection(self, conn: ConnectionConfig) -> None:
        steering = self._new_steering(conn, self.services)
        self.steering[conn.name] = steering
        await steering.start()

    def _connection(self, name: str) -> ConnectionConfig | None:
        return next((c for c in self.config.connections if c.name == name), None)

    def _desired(self, config: Config) -> Any:
        """What charon should hold: every tunnel's conn and secret; where charon chooses the
        carrier (policy mode), with the priorities of the tunnel chosen last."""
        from vpnd.charon.adapter import desired_from_config

        choices = {name: s.charon_choice() for name, s in self.steering.items()}
        return desired_from_config(config, {n: t for n, t in choices.items() if t is not None})

    # --- probes --------------------------------------------------------------------------

    def start_probe(self, key: E.TunnelKey) -> None:
        conn = self._connection(key.connection)
        t = next((t for t in conn.tunnels if t.name == key.tunnel), None) if conn else None
        spec = probe_spec(conn, t) if t is not None else None
        if spec is None or key in self.probes:
            return
        prober = self._new_prober(key, spec, self._from_probe)
        prober.start()
        self.probes[key] = prober
        if spec.interface is not None and self._new_path_mtu_prober is not None \
                and conn.health_check is not None:
            pm = self._new_path_mtu_prober(key, spec, conn.health_check.path_mtu_interval,
                                           self._from_path_mtu, lambda: self._usable(key),
                                           self._health_idents)
            pm.start()
            self.path_mtu_probes[key] = pm

    def _usable(self, key: E.TunnelKey) -> bool:
        """A path-MTU search runs only while the tunnel's last health probe was answered."""
        window = getattr(self.probes.get(key), "window", None)
        return bool(window) and window[-1] is not None

    def _health_idents(self) -> set[int]:
        return {i for p in self.probes.values() if (i := getattr(p, "ident", None)) is not None}

    def _from_path_mtu(self, key: E.TunnelKey, pmtu: int, probes: int, seconds: float) -> None:
        data_path = getattr(self.steering.get(key.connection), "data_path", None)
        if data_path is not None:
            data_path.set_path_mtu(key.tunnel, pmtu)

    async def stop_probe(self, key: E.TunnelKey) -> None:
        for probes in (self.path_mtu_probes, self.probes):
            p = probes.pop(key, None)
            if p is not None:
                await p.stop()

    # --- reload by difference ------------------------------------------------------------

    async def reload(self, new: Config) -> dict[str, Any]:
        """Apply a validated config by difference; returns what changed, for the log. A tunnel
        whose only change is its key is not restarted: it goes through a PSK rotation
        (vpnd.run.rotation), one tunnel at a time, traffic moved off it first."""
        from vpnd.run.rotation import psk_of, psk_only_changes, with_psk

        busy = {n for n, r in self.rotator.rotations.items() if not r.final}
        keys: dict[str, dict] = {}
        for c, t in psk_only_changes(self.config, new):
            if c not in busy:               # a rotation in progress owns its keys already
                keys.setdefault(c, {})[t] = psk_of(new, c, t)
            new = with_psk(new, c, t, psk_of(self.config, c, t))   # applied with the running key
        p = reload_plan.plan(self.config, new)
        await self._apply(new, p)
        fields: dict[str, Any] = {"changes": p.summary()}
        for c, ks in keys.items():
            try:
                self.rotator.begin(c, ks)
                fields.setdefault("psk_rotation", []).extend(f"{c}.{t}" for t in ks)
            except Exception as exc:            # RotationRefused: said, the old key kept
                log.warning("psk.rotation_refused", connection=c, error=str(exc))
        if p.daemon_fields:
            fields["restart_needed"] = [f"daemon.{f}" for f in p.daemon_fields]
            log.warning("config.restart_needed", keys=fields["restart_needed"],
                        note="[daemon] settings take effect at the next start")
        return fields

    async def _apply(self, new: Config, p: reload_plan.ReloadPlan) -> None:
        """Facts about charon that shape the order: vpnd.run.reload_plan's docstring.

        Removed things go first (their probes, steering, SAs, series), then charon learns the
        added and changed tunnels and the modes' backends the new config, then the core adopts
        it and restarts the changed tunnels (traffic fails over meanwhile if one of them was
        active), then the steering of added and changed connections and the probes follow,
        and a fresh snapshot lets the core initiate added tunnels. Runs inside the reconciler:
        nothing else carries out core actions meanwhile."""
        removed = p.tunnels("removed")
        reloaded = p.tunnels("changed", charon=True)
        added = p.tunnels("added")
        restart_probes = sorted({t.key for t in p.tunnels("changed", "unchanged") if t.probe})
        known = set(self.sup.engine.tunnels)

        # 1. what goes away; charon and the modes' backends learn the new config
        for key in [t.key for t in removed] + restart_probes:
            await self.stop_probe(key)
        for c in p.connections:
            if c.action == "removed" or c.rebuild:
                steering = self.steering.pop(c.name, None)
                if steering is not None:
                    await steering.remove()
                self.active.pop(c.name, None)
        await self.charon.update(self._desired(new),
                                 load=[_charon_name(t.key) for t in added + reloaded],
                                 remove=[_charon_name(t.key) for t in removed])
        gone = {c.name for c in p.connections if c.action == "removed"}
        for t in removed:
            self.metrics.forget(t.key.connection, t.key.tunnel,
                                connection_gone=t.key.connection in gone)
        self.config = new
        for backend in list(self.services.shared.values()):
            await backend.reconfigure(new)     # FRR by difference: unchanged, no command

        # 2. the core: state kept for the rest; changed (and rebuilt) tunnels start over
        rebuilt = frozenset(c.name for c in p.connections if c.rebuild)
        self.sup.engine.reload(new, fresh=rebuilt)
        self.sup.config = new
        self.metrics.declare(new, only={t.key for t in added})
        restart = [t.key for t in reloaded] + [t.key for t in added if t.key in known]
        for t in reloaded:
            await self.charon.terminate(t.key, timeout=2.0)
        if restart:
            why = "configuration changed: " + ", ".join(
                f"{t.key.tunnel} ({', '.join(t.fields) or 'rendering'})" for t in reloaded) \
                if reloaded else "configuration changed: routing mode"
            await self.sup.execute(self.sup.engine.restart(restart, self.sup.clock(), why))

        # 3. steering (interfaces, routes), then probes
        for c in p.connections:
            conn = self._connection(c.name)
            if conn is None:
                continue
            if c.action == "added" or c.rebuild:
                await self._start_connection(conn)
            elif c.action == "changed":
                await self.steering[c.name].reconfigure(conn, links=c.links, routes=c.routes)
        for t in added:
            self.start_probe(t.key)
        for key in restart_probes:
            self.start_probe(key)
        if added:
            await self.charon.resync()

    # --- the control socket (vpnd status / failover / drain / undrain) ---------------------

    def _status_board(self) -> Any:
        from vpnd.control.status import StatusBoard

        # late-bound: a reload may replace the config (and the engine)
        board = StatusBoard(lambda: self.sup.config, lambda: self.sup.engine.status(),
                            self.sup.clock, charon=self.charon.unreachable)
        self.sup.observers.append(board.observe)
        return board

    async def _cloud_view(self) -> None:
        """The cloud's own view ([connection.cloud_api]) into status and metrics, at most once a
        minute per connection; idle without one (a reload may add it)."""
        from vpnd.cloud.view import CloudWatch

        def sink(name: str, view: dict | None) -> None:
            if view is None:
                self.board.cloud.pop(name, None)
                return
            self.board.cloud[name] = view
            self.metrics.cloud_view(name, view)

        await CloudWatch(lambda: self.sup.config, sink).run()

    async def _start_control(self) -> Any:
        """Serve the control socket; without it vpnd still supervises (logged, not fatal)."""
        from vpnd.control.server import ControlError, ControlServer

        path = self.config.daemon.control_socket
        server = ControlServer(path, status=self._control_status, apply=self.sup.apply,
                               rotate=self._rotate)
        try:
            await server.start()
        except ControlError as err:
            log.error("control.unavailable", socket=path, error=str(err))
            return None
        log.info("control.listening", socket=path)
        return server

    def _control_status(self) -> dict[str, Any]:
        status = self.board.status()
        if self.rotator.rotations:
            status["psk_rotation"] = self.rotator.status()
        return status

    async def _rotate(self, connection: str, tunnel: str | None, abort: bool) -> dict[str, Any]:
        """`vpnd psk rotate`: the new keys are the configured ones (re-read and validated like
        a reload); only keys are taken from the file, everything else waits for a reload."""
        from vpnd.config.load import load_file_with_warnings
        from vpnd.run.rotation import RotationRefused

        if abort:
            return self.rotator.abort(connection)
        try:
            new = load_file_with_warnings(self.config.source, strict_permissions=True)[0]
        except Exception as exc:
            errors = getattr(exc, "errors", None)
            where = "; ".join(f"{e.path}: {e.message}" for e in errors) if errors else type(exc).__name__
            raise RotationRefused(f"the configuration does not load ({where}): nothing changed") from None
        logs.register_secrets(t.psk.reveal() for c in new.connections for t in c.tunnels)
        conn = self._connection(connection)
        fresh = next((c for c in new.connections if c.name == connection), None)
        if conn is None or fresh is None:
            raise RotationRefused(f"{connection}: not in both the running and the configured config")
        running = {t.name: t.psk.reveal() for t in conn.tunnels}
        keys = {t.name: t.psk for t in fresh.tunnels
                if t.name in running and t.psk.reveal() != running[t.name]
                and (tunnel is None or t.name == tunnel)}
        return self.rotator.begin(connection, keys)

    async def _loop_lag(self, interval: float = 0.5) -> None:
        """How late the loop wakes a timer: a busy or blocked loop delays probes and switches."""
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(interval)
            self.metrics.loop_lag.set(max(0.0, loop.time() - t0 - interval))

    def _summary(self) -> str:
        n = sum(len(c.tunnels) for c in self.config.connections)
        return (f"{len(self.config.connections)} connection(s), {n} tunnel(s) supervised"
                f"{self._metrics_problem}")


def _charon_name(key: E.TunnelKey) -> str:
    from vpnd.render.swanctl import conn_name
    return conn_name(key.connection, key.tunnel)

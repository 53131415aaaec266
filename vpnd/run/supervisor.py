"""`vpnd run`: wires the adapters to the pure core through one event queue.

Every source (charon over VICI, netlink, probes, operators, timers) only posts typed events
to one `asyncio.Queue`; one reconciler task feeds them to the core and carries out the
actions it returns, one at a time. Nothing else touches routes, charon or vtysh, so there is
no ordering question between two writers.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any, Awaitable, Callable

from vpnd import logs
from vpnd.config.model import Config, ConfigError
from vpnd.core import actions as A
from vpnd.core import events as E
from vpnd.systemd import Notifier, watchdog_interval

log = logs.get("vpnd.supervisor")


class Supervisor:
    """Owns the queue, the core engine and the adapters' tasks; nothing else holds state."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from vpnd.core.engine import Engine

        self.config = config
        self.engine = Engine(config)
        self.notifier = notifier or Notifier()
        self.clock = clock
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.stopping = asyncio.Event()
        self.reload_requested = False
        self.executors: dict[type, Callable[[Any], Awaitable[None]]] = {}
        self.ready = asyncio.Event()
        # read-only watchers of every event before the core sees it (status board, ...)
        self.observers: list[Callable[[Any], None]] = []
        # Set by the daemon: applies a validated config by difference (vpnd.run.reload_plan) and
        # returns what changed; `on_reload_result(ok)` feeds the reload metrics.
        self.reloader: Callable[[Config], Awaitable[dict[str, Any]]] | None = None
        self.on_reload_result: Callable[[bool], None] = lambda ok: None
        self.status: Callable[[], str] = lambda: "running"

    # --- inputs -----------------------------------------------------------------------------

    def post(self, event: Any) -> None:
        """The only way an adapter talks to the core (thread-unsafe by design: one loop)."""
        self.queue.put_nowait(event)

    async def apply(self, event: Any) -> None:
        """Post an event and return once the reconciler has handled it and carried out its
        actions (an operator's command replies with the outcome, not a guess)."""
        done = asyncio.get_running_loop().create_future()
        self.post(event)
        self.queue.put_nowait(_Fence(done))
        await done

    def defer(self, what: str, run: Callable[[], Awaitable[None]]) -> None:
        """Work an adapter needs done in turn (a policy re-assert, a retry): the reconciler
        runs it between two events, never beside a core action."""
        self.queue.put_nowait(_Job(what, run))

    def request_stop(self) -> None:
        self.stopping.set()
        self.queue.put_nowait(None)  # wake the reconciler

    def request_reload(self) -> None:
        if not self.reload_requested:  # repeated SIGHUPs merge into one reload
            self.reload_requested = True
            self.queue.put_nowait(None)

    # --- the reconciler -------------------------------------------------------------------

    def on(self, action_type: type, run: Callable[[Any], Awaitable[None]]) -> None:
        self.executors[action_type] = run

    async def reconcile(self) -> None:
        while not self.stopping.is_set():
            deadline = self.engine.next_deadline
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            try:
                event = await asyncio.wait_for(self.queue.get(), timeout)
            except TimeoutError:
                event = E.Tick()
            if type(event) is _Fence:
                if not event.done.done():
                    event.done.set_result(None)
                continue
            if type(event) is _Job:
                await self._run_job(event)
                continue
            if event is None:
                if self.reload_requested:
                    self.reload_requested = False
                    await self._reload()
                continue
            await self.dispatch(event)

    async def dispatch(self, event: Any) -> None:
        for observe in self.observers:
            try:
                observe(event)
            except Exception:
                log.exception("observer.error", event=type(event).__name__)
        try:
            actions, _deadline = self.engine.handle(event, self.clock())
        except Exception:  # a core bug must not kill the gateway's supervision
            log.exception("core.error", event=type(event).__name__)
            return
        await self.execute(actions)

    async def _run_job(self, job: "_Job") -> None:
        try:
            await job.run()
        except Exception as exc:    # like a failed action: said, and the next one runs
            log.error("job.failed", job=job.what, error=f"{type(exc).__name__}: {exc}")

    async def execute(self, actions: list[Any]) -> None:
        """Carry out the core's actions in order; one failing never stops the next."""
        for action in actions:
            run = self.executors.get(type(action))
            if run is None:
                if isinstance(action, A.ReportTransition):
                    log.info("tunnel.state_changed", connection=action.tunnel.connection,
                             tunnel=action.tunnel.tunnel, **{"from": action.old},
                             to=action.new, reason=action.reason)
                else:
                    log.debug("action.unhandled", action=repr(action))
                continue
            try:
                await run(action)
            except Exception as exc:
                log.error("action.failed", action=type(action).__name__, error=str(exc))

    async def _reload(self) -> None:
        """Re-read and validate; an invalid file changes nothing (every problem is logged with
        its key and rule), a valid one is applied by difference (vpnd.run.reload_plan)."""
        t0 = time.perf_counter()
        log.info("config.reload_requested", source=self.config.source)
        self.notifier.reloading()
        try:
            from vpnd.config.load import load_file_with_warnings

            # trusted files only (vpnd.config.trust), as at start and in `vpnd check`
            new = load_file_with_warnings(self.config.source, strict_permissions=True)[0]
            logs.register_secrets(t.psk.reveal() for c in new.connections for t in c.tunnels)
        except ConfigError as err:
            for p in err.errors:
                # `path`, not `key`: the log redactor masks any field named key
                log.error("config.reload_rejected", source=self.config.source, path=p.path,
                          rule=p.message)
            log.error("config.reload_failed", source=self.config.source, errors=len(err.errors),
                      note="running configuration kept")
            self.on_reload_result(False)
            self.notifier.ready(f"reload rejected ({len(err.errors)} error(s)); running "
                                f"configuration kept; {self.status()}")
            return
        try:
            if self.reloader is not None:
                fields = await self.reloader(new)
            else:
                self.engine.reload(new)
                self.config = new
                fields = {}
        except Exception as exc:    # an adapter failed half-way: say so, keep supervising
            log.exception("config.reload_failed", source=self.config.source, error=str(exc))
            self.on_reload_result(False)
            self.notifier.ready(f"reload failed: {exc}; {self.status()}")
            return
        log.info("config.reloaded", source=new.source, **fields,
                 duration_ms=round((time.perf_counter() - t0) * 1000, 3))
        self.on_reload_result(True)
        self.notifier.ready(self.status())

    # --- the loop's own health ------------------------------------------------------------

    async def watchdog(self) -> None:
        """Pings systemd from the loop itself: a stalled loop stops the pings."""
        interval = watchdog_interval()
        if interval is None:
            return
        while not self.stopping.is_set():
            self.notifier.watchdog()
            try:
                await asyncio.wait_for(self.stopping.wait(), interval)
            except TimeoutError:
                pass


class _Job:
    """Deferred work in the queue (Supervisor.defer)."""

    __slots__ = ("what", "run")

    def __init__(self, what: str, run: Callable[[], Awaitable[None]]) -> None:
        self.what = what
        self.run = run


class _Fence:
    """A mark in the queue: everything posted before it has been handled when it is reached."""

    __slots__ = ("done",)

    def __init__(self, done: asyncio.Future) -> None:
        self.done = done


def install_signal_handlers(sup: Supervisor) -> None:
    """Handlers only record intent; the reconciler acts on it."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, sup.request_stop)
    loop.add_signal_handler(signal.SIGINT, sup.request_stop)
    loop.add_signal_handler(signal.SIGHUP, sup.request_reload)

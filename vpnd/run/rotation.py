"""`vpnd psk rotate`: carries out vpnd.core.rotation's steps with the daemon's adapters.

One task per connection being rotated. Traffic moves through the core (Drain/Undrain, via
`Supervisor.apply`, so the engine's failover rules still hold); every charon call is queued
with `Supervisor.defer` so the reconciler stays charon's one writer. Waiting (for the new IKE
SA, for probe answers, for a retry) happens in the task, never in the reconciler.

The new key is the one the operator has already put in the configuration (psk / psk_file):
it is read from the trusted config file, like a reload, so it survives a restart and never
travels on argv or the control socket. Charon gets the new key only for the tunnel being
rotated; the other tunnel keeps the old one until its turn.

Make-before-break: the new IKE SA is a reauthentication (VICI `rekey` with `reauth`) of the
old one. With `charon.make_before_break = yes` (strongSwan 6's default; set it on 5.x) the
old SA keeps carrying what the cloud still sends on this tunnel until the new one is up; the
cloud's responder replaces the old SA by its uniqueness policy. A phase 1 refused with the
new key (AUTHENTICATION_FAILED: the cloud has not been changed yet) leaves the old SA alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Awaitable, Callable

from vpnd import logs
from vpnd.config.model import Config, Secret
from vpnd.core import events as E
from vpnd.core import rotation as R

log = logs.get("vpnd.rotation")

REAUTH_TIMEOUT = 10.0       # seconds for the new IKE SA and its CHILD SA to come up
PROVE_TIMEOUT = 20.0        # seconds for the probes to answer through the new SA
PROOF = 3                   # probe answers in a row after the new SA that prove the tunnel


class RotationRefused(Exception):
    """The rotation cannot start; the message says why (no key material in it)."""


def with_psk(config: Config, connection: str, tunnel: str, psk: Secret) -> Config:
    """`config` with one tunnel's key replaced."""
    conns = []
    for c in config.connections:
        if c.name == connection:
            c = dataclasses.replace(c, tunnels=tuple(
                dataclasses.replace(t, psk=psk) if t.name == tunnel else t for t in c.tunnels))
        conns.append(c)
    return dataclasses.replace(config, connections=tuple(conns))


def psk_of(config: Config, connection: str, tunnel: str) -> Secret:
    return next(t.psk for c in config.connections if c.name == connection
                for t in c.tunnels if t.name == tunnel)


def psk_only_changes(old: Config, new: Config) -> list[tuple[str, str]]:
    """(connection, tunnel) pairs whose only difference between the configs is the key."""
    out = []
    olds = {c.name: c for c in old.connections}
    for c in new.connections:
        o = olds.get(c.name)
        if o is None:
            continue
        ot = {t.name: t for t in o.tunnels}
        for t in c.tunnels:
            p = ot.get(t.name)
            if p is not None and p.psk.reveal() != t.psk.reveal() and \
                    dataclasses.replace(t, psk=p.psk, psk_file=p.psk_file) == p:
                out.append((c.name, t.name))
    return out


class Rotator:
    """Holds the rotations in progress and the keys they need (old and new per tunnel)."""

    def __init__(self, daemon: Any, clock: Callable[[], float] | None = None) -> None:
        self.d = daemon
        self.clock = clock or daemon.sup.clock
        self.rotations: dict[str, R.Rotation] = {}
        self._keys: dict[E.TunnelKey, tuple[Secret, Secret]] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._abort: dict[str, asyncio.Event] = {}
        self._watch: list[Callable[[Any], None]] = []
        daemon.sup.observers.append(self._observe)

    # --- the control socket's side ----------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.clock()
        return {name: r.status(now) for name, r in self.rotations.items()}

    def begin(self, connection: str, keys: dict[str, Secret], *, order: tuple[str, ...] | None = None
              ) -> dict[str, Any]:
        """Start rotating `keys` (tunnel -> new key) of `connection`, one tunnel at a time."""
        if connection in self._tasks and not self._tasks[connection].done():
            raise RotationRefused(f"{connection}: a rotation is already in progress "
                                  f"({self.rotations[connection].phase}); wait or abort it")
        conn = self.d._connection(connection)
        if conn is None:
            raise RotationRefused(f"no connection named {connection!r}")
        if not keys:
            raise RotationRefused(f"{connection}: the configured keys equal the running ones: "
                                  "put the new key in the tunnel's psk_file (or psk) first")
        running = {t.name: t.psk for t in conn.tunnels}
        tunnels = order or tuple(t.name for t in conn.tunnels if t.name in keys)
        # the standby first: the active tunnel keeps traffic while the first one is proven
        active = self.d.active.get(connection)
        tunnels = tuple(sorted(tunnels, key=lambda t: t == active))
        # each tunnel's traffic goes to another one meanwhile: that one must be usable (the
        # tunnel itself may be down: a cloud that reset it when its key changed)
        state = self.d.sup.engine.status().get(connection, {}).get("tunnels", {})
        for t in tunnels:
            if not any(v.get("usable") for o, v in state.items() if o != t):
                raise RotationRefused(f"{connection}: no tunnel but {t} is usable now: rotating "
                                      f"{t} would cut traffic (nothing changed)")
        for t in tunnels:
            self._keys[E.TunnelKey(connection, t)] = (running[t], keys[t])
        r, steps = R.start(connection, tunnels, self.clock(), already_drained=self._drained(connection))
        self.rotations[connection] = r
        self._abort[connection] = asyncio.Event()
        self._tasks[connection] = asyncio.create_task(self._run(connection, steps),
                                                      name=f"psk-rotation-{connection}")
        log.info("psk.rotation_started", connection=connection, tunnels=list(tunnels))
        return r.status(self.clock())

    def abort(self, connection: str) -> dict[str, Any]:
        r = self.rotations.get(connection)
        if r is None or r.final:
            raise RotationRefused(f"{connection}: no rotation in progress")
        self._abort[connection].set()
        return r.status(self.clock())

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # --- the task ---------------------------------------------------------------------

    async def _run(self, name: str, steps: list[R.Step]) -> None:
        """Each batch of steps in order; the core hears the outcome of the batch's last step,
        or of the first that failed, and answers with the next batch."""
        abort = self._abort[name]
        try:
            while steps:
                outcome: R.Outcome = R.Done()
                for i, s in enumerate(steps):
                    outcome = R.Abort() if abort.is_set() else await self._carry_out(name, s, abort)
                    if not isinstance(outcome, R.Done):
                        break
                if isinstance(outcome, R.Abort):
                    abort.clear()
                before = self.rotations[name]
                r, steps = R.step(before, outcome, self.clock(), already_drained=self._drained(name))
                if r.phase != before.phase:
                    log.info("psk.rotation_phase", connection=name, tunnel=before.tunnel,
                             **{"from": before.phase}, to=r.phase, reason=r.reason)
                self.rotations[name] = r
        except asyncio.CancelledError:
            raise
        except Exception as exc:     # said, never a traceback on the operator's screen
            log.error("psk.rotation_error", connection=name, error=type(exc).__name__)
            r = self.rotations[name]
            self.rotations[name] = dataclasses.replace(r, phase="failed", since=self.clock(),
                                                       reason=f"internal error ({type(exc).__name__})")
        r = self.rotations[name]
        log.info("psk.rotation_ended", connection=name, phase=r.phase, reason=r.reason,
                 rotated=[dataclasses.asdict(x) for x in r.results])

    async def _carry_out(self, name: str, s: R.Step, abort: asyncio.Event) -> R.Outcome:
        if isinstance(s, R.WaitUntil):
            try:
                await asyncio.wait_for(abort.wait(), max(0.0, s.at - self.clock()))
                return R.Abort()
            except TimeoutError:
                return R.Tick()
        key = E.TunnelKey(name, s.tunnel)
        if isinstance(s, R.Drain):
            await self.d.sup.apply(E.Drain(key))
            return R.Done()
        if isinstance(s, R.Undrain):
            await self.d.sup.apply(E.Undrain(key))
            return R.Done()
        if isinstance(s, R.LoadKey):
            old, new = self._keys[key]
            return await self._in_turn(f"psk load {key}", lambda: self._load(key, new if s.which == "new" else old))
        if isinstance(s, R.Commit):
            self._commit(key)
            return R.Done()
        if isinstance(s, R.Reauthenticate):
            return await self._reauthenticate(key)
        if isinstance(s, R.Prove):
            return await self._prove(key)
        return R.Failed(f"unknown step {type(s).__name__}")

    async def _in_turn(self, what: str, run: Callable[[], Awaitable[Any]]) -> Any:
        """Run charon work as a reconciler job and wait for its result (R.Failed if it raised)."""
        done: asyncio.Future = asyncio.get_running_loop().create_future()

        async def job() -> None:
            try:
                done.set_result(await run())
            except Exception as exc:
                done.set_result(R.Failed(_why(exc)))

        self.d.sup.defer(what, job)
        return await done

    async def _load(self, key: E.TunnelKey, psk: Secret) -> R.Outcome:
        from vpnd.render import swanctl

        conn = self.d._connection(key.connection)
        t = next(t for t in conn.tunnels if t.name == key.tunnel)
        await self.d.charon.client.load_shared(swanctl.vici_secret(conn, dataclasses.replace(t, psk=psk)))
        return R.Done()

    def _commit(self, key: E.TunnelKey) -> None:
        _, new = self._keys[key]
        config = with_psk(self.d.config, key.connection, key.tunnel, new)
        self.d.config = config
        self.d.sup.config = config
        self.d.charon.desire(self.d._desired(config))     # what a reconnect loads
        log.info("psk.committed", connection=key.connection, tunnel=key.tunnel)

    async def _ike_ids(self, key: E.TunnelKey) -> dict[int, bool]:
        """The tunnel's IKE SAs: id -> established with an installed CHILD SA."""
        name = self.d.charon.name_of(key)
        out: dict[int, bool] = {}
        for entry in await self.d.charon.client.list_sas(name):
            for _, sa in entry.items():
                if not isinstance(sa, dict):
                    continue
                ok = sa.get("state") == "ESTABLISHED" and any(
                    c.get("state") == "INSTALLED" for c in sa.get("child-sas", {}).values())
                out[int(sa.get("uniqueid", 0))] = ok
        return out

    async def _reauthenticate(self, key: E.TunnelKey) -> R.Outcome:
        failures: list[str] = []

        def watch(ev: Any) -> None:
            if isinstance(ev, E.NegotiationFailed) and ev.tunnel == key and ev.phase == 1:
                failures.append(ev.reason)

        async def kick() -> set[int]:
            before = await self._ike_ids(key)
            established = [i for i, ok in before.items() if ok]
            if established:
                await self.d.charon.client.request(
                    "rekey", {"ike-id": str(max(established)), "reauth": "yes"})
            else:
                await self.d.charon.initiate(key, timeout=0)
            return set(before)

        self._watch.append(watch)
        try:
            before = await self._in_turn(f"psk reauth {key}", kick)
            if isinstance(before, R.Failed):
                return before
            deadline = self.clock() + REAUTH_TIMEOUT
            while self.clock() < deadline:
                if failures:
                    return R.Failed(failures[-1], auth_failed=True)
                now = await self._ike_ids(key)
                if any(ok for i, ok in now.items() if i not in before):
                    return R.Done()
                await asyncio.sleep(0.05)
            return R.Failed(f"no new IKE SA within {REAUTH_TIMEOUT:g} s")
        finally:
            self._watch.remove(watch)

    async def _prove(self, key: E.TunnelKey) -> R.Outcome:
        conn = self.d._connection(key.connection)
        if conn is None or conn.health_check is None or key not in self.d.probes:
            return R.Done()         # no probe configured: the new SA up is the proof
        answers: list[bool] = []

        def watch(ev: Any) -> None:
            if isinstance(ev, E.ProbeResult) and ev.tunnel == key:
                answers.append(ev.ok)

        self._watch.append(watch)
        try:
            deadline = self.clock() + PROVE_TIMEOUT
            while self.clock() < deadline:
                if len(answers) >= PROOF and all(answers[-PROOF:]):
                    return R.Done()
                await asyncio.sleep(0.05)
            lost = answers.count(False)
            return R.Failed(f"probes through the new SA: {len(answers) - lost} answered, "
                            f"{lost} lost within {PROVE_TIMEOUT:g} s")
        finally:
            self._watch.remove(watch)

    def _observe(self, ev: Any) -> None:
        for w in list(self._watch):
            w(ev)

    def _drained(self, connection: str) -> frozenset[str]:
        c = self.d.sup.engine.status().get(connection, {})
        return frozenset(t for t, v in c.get("tunnels", {}).items() if v.get("drained"))


def _why(exc: Exception) -> str:
    """An error's text for status: VICI's errmsg, never a request body."""
    return getattr(exc, "errmsg", None) or type(exc).__name__

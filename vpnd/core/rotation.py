"""PSK rotation of one connection, one tunnel at a time: the decisions, without I/O.

Per tunnel: draining (traffic moved to the other tunnel) -> rekeying (the new key loaded in
charon, a new IKE SA authenticated with it while the old SA still carries whatever the cloud
sends) -> proving (the new SA up and the tunnel's probes answered) -> restoring (traffic
allowed back) -> the next tunnel. The second tunnel is never touched while the first is
unproven: a tunnel that cannot be proven stops the rotation where it is.

Phase 1 failing with the new key means the cloud side still has the old one: the tunnel goes
to `waiting_for_cloud`, charon gets the OLD key back (the old SA, or a re-established one,
keeps working), traffic stays on the other tunnel, and the new key is tried again with
backoff. `abort` puts the old key back and lets traffic return. The key itself never passes
through here: steps name the tunnel and which key ("new"/"old"), the shell holds the values.

`start` and `step` return (state, steps); the shell carries the steps out in order and feeds
each outcome back with `step`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Phase = Literal["draining", "rekeying", "proving", "restoring", "done", "waiting_for_cloud",
                "aborted", "failed"]
FINAL = ("done", "aborted", "failed")

RETRY_FIRST = 10.0          # seconds before the new key is tried again after AUTH_FAILED
RETRY_MAX = 300.0


# --- steps for the shell ------------------------------------------------------------------

@dataclass(frozen=True)
class Drain:
    tunnel: str


@dataclass(frozen=True)
class Undrain:
    tunnel: str


@dataclass(frozen=True)
class LoadKey:
    tunnel: str
    which: Literal["new", "old"]


@dataclass(frozen=True)
class Reauthenticate:
    """A new IKE SA with the key charon holds now; the old SA stays until the new one is up."""
    tunnel: str


@dataclass(frozen=True)
class Prove:
    tunnel: str


@dataclass(frozen=True)
class Commit:
    """The tunnel's new key is proven: the running config takes it."""
    tunnel: str


@dataclass(frozen=True)
class WaitUntil:
    at: float


Step = Drain | Undrain | LoadKey | Reauthenticate | Prove | Commit | WaitUntil


# --- outcomes from the shell --------------------------------------------------------------

@dataclass(frozen=True)
class Done:
    """The last step succeeded."""


@dataclass(frozen=True)
class Failed:
    reason: str
    auth_failed: bool = False       # phase 1 refused (the cloud still has the old key)


@dataclass(frozen=True)
class Tick:
    """The WaitUntil time has come."""


@dataclass(frozen=True)
class Abort:
    reason: str = "aborted by the operator"


Outcome = Done | Failed | Tick | Abort


# --- the state ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TunnelResult:
    tunnel: str
    seconds: float
    attempts: int


@dataclass(frozen=True)
class Rotation:
    connection: str
    tunnels: tuple[str, ...]          # in rotation order
    index: int = 0                    # the tunnel being rotated
    phase: Phase = "draining"
    since: float = 0.0                # when the phase began
    started: float = 0.0              # when this tunnel's rotation began
    attempts: int = 1                 # tries of the new key on this tunnel
    retry_at: float | None = None
    reason: str = ""
    drained_by_us: bool = True        # False: the operator had drained it; we leave it drained
    results: tuple[TunnelResult, ...] = field(default_factory=tuple)

    @property
    def tunnel(self) -> str:
        return self.tunnels[min(self.index, len(self.tunnels) - 1)]

    @property
    def final(self) -> bool:
        return self.phase in FINAL

    def status(self, now: float) -> dict:
        """JSON-ready; no key material exists here to leak."""
        return {"connection": self.connection, "tunnel": None if self.final else self.tunnel,
                "phase": self.phase, "for_s": round(now - self.since, 3), "attempts": self.attempts,
                "retry_at": self.retry_at, "reason": self.reason,
                "rotated": [{"tunnel": r.tunnel, "seconds": round(r.seconds, 3),
                             "attempts": r.attempts} for r in self.results],
                "pending": list(self.tunnels[len(self.results):]) if not self.final or
                self.phase != "done" else []}


def backoff(attempts: int) -> float:
    return min(RETRY_MAX, RETRY_FIRST * 2 ** max(0, attempts - 1))


def start(connection: str, tunnels: tuple[str, ...], now: float, *,
          already_drained: frozenset[str] = frozenset()) -> tuple[Rotation, list[Step]]:
    if not tunnels:
        raise ValueError("nothing to rotate")
    r = Rotation(connection, tunnels, since=now, started=now,
                 drained_by_us=tunnels[0] not in already_drained,
                 reason="moving traffic to the other tunnel")
    return r, [Drain(tunnels[0])]


def step(r: Rotation, outcome: Outcome, now: float, *,
         already_drained: frozenset[str] = frozenset()) -> tuple[Rotation, list[Step]]:
    """The next state and steps after `outcome` of the last step (or a Tick, an Abort)."""
    if r.final:
        return r, []
    t = r.tunnel
    if isinstance(outcome, Abort):
        back: list[Step] = [] if r.phase in ("draining", "restoring") else [LoadKey(t, "old")]
        if r.drained_by_us:
            back.append(Undrain(t))
        return _to(r, "aborted", now, outcome.reason), back
    if r.phase == "waiting_for_cloud":
        if isinstance(outcome, Tick) and r.retry_at is not None and now >= r.retry_at:
            r = replace(_to(r, "rekeying", now, "trying the new key again"),
                        attempts=r.attempts + 1, retry_at=None)
            return r, [LoadKey(t, "new"), Reauthenticate(t)]
        return r, [WaitUntil(r.retry_at)] if r.retry_at is not None else []
    if isinstance(outcome, Tick):
        return r, []
    if isinstance(outcome, Failed):
        if r.phase == "rekeying" and outcome.auth_failed:
            at = now + backoff(r.attempts)
            r = replace(_to(r, "waiting_for_cloud", now,
                            f"phase 1 refused with the new key ({outcome.reason}): the cloud "
                            f"side still has the old one; old key kept, traffic on the other "
                            f"tunnel, retry in {at - now:.0f} s"), retry_at=at)
            return r, [LoadKey(t, "old"), WaitUntil(at)]
        if r.phase in ("rekeying", "proving"):
            # unproven: the old key back, traffic stays off it, the next tunnel untouched
            again = f"; `vpnd undrain {t}` gives it traffic again" if r.drained_by_us else ""
            return _to(r, "failed", now, f"{r.phase} {t} failed: {outcome.reason}; old key "
                       f"restored, traffic kept on the other tunnel{again}"), [LoadKey(t, "old")]
        return _to(r, "failed", now, f"{r.phase} {t} failed: {outcome.reason}"), []
    # Done
    if r.phase == "draining":
        return _to(r, "rekeying", now, "new key loaded; re-authenticating"), \
            [LoadKey(t, "new"), Reauthenticate(t)]
    if r.phase == "rekeying":
        return _to(r, "proving", now, "new IKE SA up; proving the tunnel"), [Prove(t)]
    if r.phase == "proving":
        steps: list[Step] = [Commit(t)] + ([Undrain(t)] if r.drained_by_us else [])
        return _to(r, "restoring", now, "proven; traffic may come back"), steps
    if r.phase == "restoring":
        results = r.results + (TunnelResult(t, now - r.started, r.attempts),)
        if r.index + 1 >= len(r.tunnels):
            return replace(_to(r, "done", now, "every tunnel rotated"), results=results,
                           index=r.index + 1), []
        nxt = r.tunnels[r.index + 1]
        r = replace(_to(r, "draining", now, "moving traffic to the other tunnel"),
                    index=r.index + 1, started=now, attempts=1, results=results,
                    drained_by_us=nxt not in already_drained)
        return r, [Drain(nxt)]
    return r, []


def _to(r: Rotation, phase: Phase, now: float, reason: str) -> Rotation:
    return replace(r, phase=phase, since=now, reason=reason)

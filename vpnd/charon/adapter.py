"""The charon adapter: loads vpnd's connections into charon and turns what charon says into
core events.

Everything that interprets charon's messages is a pure function here (`translate`,
`classify_log`, `snapshot_from_sas`), tested with tables of real messages; `CharonAdapter`
only wires them to the VICI client.

Facts this relies on (measured against charon 5.9.8 on this project's machines):
- a down event is marked only by the absence of the `up` key; after a DPD timeout the IKE
  state in the down event still reads ESTABLISHED and the child INSTALLED;
- 5.9.8's VICI has no `alert` event: retransmits and negotiation failures are read from the
  `log` event stream (and from `initiate`'s control-log when it fails).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import structlog

from vpnd.core.events import (
    CharonAlert,
    CharonConnected,
    CharonDisconnected,
    ChildDown,
    ChildRekeyed,
    ChildUp,
    Event,
    IkeDown,
    IkeRekeyed,
    IkeUp,
    NegotiationFailed,
    SaSnapshot,
    TunnelKey,
    TunnelSa,
)
from vpnd.charon.vici import (
    Backoff, ViciClient, ViciError, ViciException, ViciTimeout, ViciUnavailable,
)

log = structlog.get_logger("vpnd.charon.adapter")

PREFIX = "vpnd-"        # every connection and secret vpnd loads is named vpnd-...; never touch others


# --- VICI events -> core events ------------------------------------------------------------

def _sas(msg: Mapping) -> Iterable[tuple[str, dict]]:
    """The per-SA sections of an event: every dict-valued key (`up` is a plain value)."""
    return ((name, sa) for name, sa in msg.items() if isinstance(sa, dict))


def _uid(d: Mapping, key: str = "uniqueid") -> int:
    return int(d.get(key, 0))


def translate(kind: str, msg: Mapping, tunnels: Mapping[str, TunnelKey]) -> list[Event]:
    """One decoded VICI event -> core events. SAs of connections vpnd does not own are ignored."""
    out: list[Event] = []
    if kind == "log":
        return []           # stateful de-duplication lives in LogClassifier
    up = "up" in msg        # the ONLY up/down marker; states in down events may still look alive
    for name, sa in _sas(msg):
        tunnel = tunnels.get(name)
        if tunnel is None:
            continue
        if kind == "ike-updown":
            if up:
                out.append(IkeUp(tunnel, _uid(sa)))
            else:
                out.append(IkeDown(tunnel, _uid(sa), f"IKE SA down (state {sa.get('state', '?')})"))
        elif kind == "child-updown":
            for child in sa.get("child-sas", {}).values():
                if up:
                    out.append(ChildUp(tunnel, _uid(sa), _uid(child)))
                else:
                    out.append(ChildDown(tunnel, _uid(sa), _uid(child),
                                         f"CHILD SA down (state {child.get('state', '?')})"))
        elif kind == "ike-rekey":
            out.append(IkeRekeyed(tunnel, _uid(sa.get("old", {})), _uid(sa.get("new", {}))))
        elif kind == "child-rekey":
            for child in sa.get("child-sas", {}).values():
                out.append(ChildRekeyed(tunnel, _uid(child.get("old", {})), _uid(child.get("new", {}))))
    return out


# --- charon's log lines -> failures and alerts -----------------------------------------------

Kind = Literal["phase1", "phase2", "retransmit", "retransmit_timeout"]


@dataclass(frozen=True)
class Finding:
    kind: Kind
    reason: str


# (pattern, kind, reason). First match wins; specific lines come before the generic ones.
# `reason` may use the pattern's groups ({0}). Lines marked (observed) were captured from
# charon 5.9.8 in this repo's lab (initiator and responder side); the others are format
# strings found in this machine's 5.9.8 libcharon / libstrongswan for the same failures.
LOG_RULES: tuple[tuple[re.Pattern, Kind | None, str], ...] = tuple(
    (re.compile(p), k, r) for p, k, r in (
        # phase 1: the IKE SA
        (r"^received AUTHENTICATION_FAILED notify error", "phase1",
         "authentication failed at the peer (pre-shared key or identity)"),             # observed
        (r"^tried \d+ shared keys? for '.*' - '.*', but MAC mismatched", "phase1",
         "pre-shared key mismatch"),                                                      # observed
        (r"^no shared key found for", "phase1", "no pre-shared key for this peer"),
        (r"^received NO_PROPOSAL_CHOSEN notify error", "phase1",
         "no IKE proposal chosen by the peer (IKE_SA_INIT)"),                            # observed
        (r"^received proposals unacceptable", "phase1",
         "peer's IKE proposals unacceptable"),                                            # observed
        (r"^no IKE config found for", "phase1", "no IKE config for the peer's addresses"),
        (r"^establishing IKE_SA failed, peer not responding", "phase1",
         "peer not responding"),                                                          # observed
        (r"^rekeying IKE_SA failed, peer not responding", "phase1",
         "peer not responding (IKE rekey)"),
        (r"^no matching peer config found", "phase1", "identity mismatch: no matching peer config"),  # observed
        (r"^constraint check failed: (?:\S+ )?identity '.*' required", "phase1",
         "identity mismatch: peer's ID is not the configured remote id"),
        (r"^IDir '.*' does not match to '.*'", "phase1",
         "identity mismatch: peer answered with another ID"),
        (r"^received INVALID_KE_PAYLOAD notify", None, ""),                               # renegotiates by itself
        (r"^received (\S+) notify error", "phase1", "peer refused the IKE SA: {0}"),
        # phase 2: the CHILD SA, with the IKE SA up
        (r"^received NO_PROPOSAL_CHOSEN notify, no CHILD_SA built", "phase2",
         "no ESP proposal chosen by the peer"),                                           # observed
        (r"^received TS_UNACCEPTABLE notify, no CHILD_SA built", "phase2",
         "traffic selectors unacceptable to the peer"),                                   # observed
        (r"^no acceptable proposal found", "phase2", "peer's ESP proposals unacceptable"),  # observed
        (r"^traffic selectors .* unacceptable", "phase2", "peer's traffic selectors unacceptable"),  # observed
        (r"^no matching CHILD_SA config found", "phase2", "no CHILD SA config for the peer's traffic selectors"),
        (r"^unable to install .*IPsec (?:policies|SA)", "phase2",
         "installing the CHILD SA in the kernel failed"),
        (r"^received (\S+) notify, no CHILD_SA built", "phase2", "peer refused the CHILD SA: {0}"),
        (r"^failed to establish CHILD_SA, keeping IKE_SA", "phase2", "CHILD SA not established"),  # observed
        # alerts: our own retransmits (not the peer's: "received retransmit of request ...")
        (r"^retransmit \d+ of request with message ID \d+", "retransmit", ""),           # observed
        (r"^giving up after \d+ retransmits", "retransmit_timeout", ""),                 # observed
    )
)


def classify_log(msg: str) -> Finding | None:
    """A charon log line -> what it means for the tunnel, or None for the other 99%."""
    for pattern, kind, reason in LOG_RULES:
        m = pattern.match(msg)
        if m:
            return None if kind is None else Finding(kind, reason.format(*m.groups()) or msg)
    return None


class LogClassifier:
    """Turns `log` events (and initiate's control-log) into NegotiationFailed / CharonAlert.

    The same line can arrive twice (event stream and control-log) and one failure is logged
    as a specific line then a generic one: only the first finding per IKE SA and phase is
    reported, each retransmit line once.
    """

    def __init__(self, tunnels: Mapping[str, TunnelKey], memory: int = 1024) -> None:
        self.tunnels = tunnels
        self._seen: OrderedDict[tuple, None] = OrderedDict()
        self._memory = memory

    def __call__(self, entry: Mapping) -> list[Event]:
        tunnel = self.tunnels.get(entry.get("ikesa-name", ""))
        if tunnel is None:
            return []
        finding = classify_log(entry.get("msg", ""))
        if finding is None:
            return []
        uid = entry.get("ikesa-uniqueid", "")
        key = (uid, finding.kind) if finding.kind.startswith("phase") else (uid, entry.get("msg"))
        if key in self._seen:
            return []
        self._seen[key] = None
        if len(self._seen) > self._memory:
            self._seen.popitem(last=False)
        if finding.kind == "phase1":
            return [NegotiationFailed(tunnel, 1, finding.reason)]
        if finding.kind == "phase2":
            return [NegotiationFailed(tunnel, 2, finding.reason)]
        return [CharonAlert(tunnel, finding.kind, entry.get("msg", ""))]


# --- list-sas -> SaSnapshot ---------------------------------------------------------------

_NUMERIC = ("established", "install-time", "bytes-in", "bytes-out", "packets-in", "packets-out")


def _is_int(v: object) -> bool:
    try:
        int(v)          # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _numbers(d: Mapping, where: str, odd: list[str]) -> dict:
    """`d` without its counters/ages that are not numbers (each one noted in `odd`)."""
    out = {}
    for k, v in d.items():
        if k in _NUMERIC and not _is_int(v):
            odd.append(f"{where}: {k} {v!r} is not a number")
            continue
        out[k] = v
    return out


def sanitize_sas(sas: Iterable[object]) -> tuple[list[dict], list[str]]:
    """`list-sas` entries as charon should send them, plus what was odd ("name: problem").

    One odd reply must not end the poll (and with it the resync and the SA metrics): an SA
    or CHILD SA without a numeric unique id is dropped, a `child-sas` that is not a section
    counts as none, a counter or age that is not a number is dropped (read as 0). The rest
    of the reply is used as is."""
    clean: list[dict] = []
    odd: list[str] = []
    for entry in sas:
        if not isinstance(entry, Mapping):
            odd.append(f"?: list-sas entry is a {type(entry).__name__}, not a section")
            continue
        out: dict = {}
        for name, sa in entry.items():
            if not isinstance(sa, Mapping):
                if name != "up":
                    odd.append(f"{name}: SA is a {type(sa).__name__}, not a section")
                continue
            if not _is_int(sa.get("uniqueid", 0)):
                odd.append(f"{name}: uniqueid {sa.get('uniqueid')!r} is not a number (SA skipped)")
                continue
            sa = _numbers(sa, name, odd)
            children = sa.get("child-sas", {})
            if not isinstance(children, Mapping):
                odd.append(f"{name}: child-sas is a {type(children).__name__}, not a section")
                children = {}
            kids = {}
            for cname, c in children.items():
                if not isinstance(c, Mapping) or not _is_int(c.get("uniqueid", 0)):
                    odd.append(f"{name}/{cname}: CHILD SA without a numeric uniqueid (skipped)")
                    continue
                kids[cname] = _numbers(c, f"{name}/{cname}", odd)
            sa["child-sas"] = kids
            out[name] = sa
        clean.append(out)
    return clean, odd


def _best(items: Iterable[dict], good: str) -> dict | None:
    """Prefer the SA in the `good` state, then the newest (highest unique id)."""
    items = list(items)
    if not items:
        return None
    return max(items, key=lambda d: (d.get("state") == good, _uid(d)))


def snapshot_from_sas(sas: Iterable[Mapping], tunnels: Mapping[str, TunnelKey]) -> SaSnapshot:
    """`list-sas` output -> one TunnelSa per configured tunnel (all None when it has no SA)."""
    by_name: dict[str, list[dict]] = {}
    for entry in sanitize_sas(sas)[0]:
        for name, sa in _sas(entry):
            by_name.setdefault(name, []).append(sa)
    out = []
    for name, tunnel in tunnels.items():
        ike = _best(by_name.get(name, []), "ESTABLISHED")
        child = _best(ike.get("child-sas", {}).values(), "INSTALLED") if ike else None
        out.append(TunnelSa(
            tunnel,
            _uid(ike) if ike else None, ike.get("state") if ike else None,
            _uid(child) if child else None, child.get("state") if child else None,
        ))
    return SaSnapshot(tuple(out))


@dataclass(frozen=True)
class SaStats:
    """What the metrics read from `list-sas` for one tunnel (all 0 without an SA)."""

    bytes_in: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    packets_out: int = 0
    ike_established: float = 0.0        # wall-clock time (s) the IKE SA came up; 0: none
    child_installed: float = 0.0        # wall-clock time the CHILD SA was installed; 0: none
    ike_id: int | None = None
    child_id: int | None = None


def sa_stats(sas: Iterable[Mapping], tunnels: Mapping[str, TunnelKey], now: float,
             previous: Mapping[TunnelKey, SaStats] | None = None) -> dict[TunnelKey, SaStats]:
    """`list-sas` -> per configured tunnel: traffic of its CHILD SAs and since-when.

    Counters are summed over the tunnel's installed CHILD SAs (during a rekey both exist).
    charon reports `established`/`install-time` as whole seconds ago; the timestamp computed
    from them is kept while the SA's unique id stays the same, so it does not jitter by a
    second between polls.
    """
    previous = previous or {}
    by_name: dict[str, list[dict]] = {}
    for entry in sanitize_sas(sas)[0]:
        for name, sa in _sas(entry):
            by_name.setdefault(name, []).append(sa)
    out: dict[TunnelKey, SaStats] = {}
    for name, key in tunnels.items():
        ikes = by_name.get(name, [])
        ike = _best(ikes, "ESTABLISHED")
        if ike is None:
            out[key] = SaStats()
            continue
        children = [c for i in ikes for c in i.get("child-sas", {}).values()
                    if c.get("state") in ("INSTALLED", "REKEYING", "REKEYED", "UPDATING")]
        child = _best(ike.get("child-sas", {}).values(), "INSTALLED")
        prev = previous.get(key, SaStats())
        ike_id, child_id = _uid(ike), (_uid(child) if child else None)
        if ike.get("state") != "ESTABLISHED" and ike.get("state") != "REKEYING":
            ike_ts = 0.0
        elif prev.ike_id == ike_id and prev.ike_established:
            ike_ts = prev.ike_established
        else:
            ike_ts = now - int(ike.get("established", 0))
        if child is None or child.get("state") != "INSTALLED":
            child_ts = 0.0
        elif prev.child_id == child_id and prev.child_installed:
            child_ts = prev.child_installed
        else:
            child_ts = now - int(child.get("install-time", 0))

        def total(field: str) -> int:
            return sum(int(c.get(field, 0)) for c in children)

        out[key] = SaStats(total("bytes-in"), total("bytes-out"), total("packets-in"),
                           total("packets-out"), ike_ts, child_ts, ike_id, child_id)
    return out


# --- loading the configuration ---------------------------------------------------------

@dataclass(frozen=True)
class Desired:
    """What charon should hold for vpnd: VICI-shaped dicts, as the render module builds them."""

    conns: Mapping[str, dict]               # conn name -> load-conn body (without the name level)
    secrets: tuple[dict, ...]               # load-shared bodies, each with an `id` starting vpnd-
    tunnels: Mapping[str, TunnelKey]        # conn name -> the tunnel it carries


@dataclass(frozen=True)
class ApplyReport:
    loaded: tuple[str, ...]
    unloaded: tuple[str, ...]
    secrets_loaded: int
    secrets_unloaded: tuple[str, ...]
    failed: tuple[tuple[str, str], ...] = ()    # (conn or secret id, charon's errmsg)


def desired_from_config(config, active: Mapping[str, str | None] | None = None) -> Desired:
    """Every tunnel's VICI dicts, as the render module builds them (vpnd/render/swanctl.py).

    `active` (connection -> tunnel) gives policy-mode connections their CHILD SA
    priorities (vpnd/charon/selector.py); without it tunnel 1 is preferred.
    """
    from vpnd.render import swanctl     # imported late: `vpnd check` never needs it

    conns: dict[str, dict] = {}
    secrets: list[dict] = []
    tunnels: dict[str, TunnelKey] = {}
    for c in config.connections:
        for t in c.tunnels:
            name = swanctl.conn_name(c.name, t.name)
            conns[name] = swanctl.vici_conn(c, t, (active or {}).get(c.name))
            secrets.append(swanctl.vici_secret(c, t))
            tunnels[name] = TunnelKey(c.name, t.name)
    return Desired(conns, tuple(secrets), tunnels)


def stale(present: Iterable[str], wanted: Iterable[str]) -> list[str]:
    """vpnd-owned names charon holds that the config no longer wants. Foreign names never."""
    wanted = set(wanted)
    return sorted(n for n in present if n.startswith(PREFIX) and n not in wanted)


class CharonAdapter:
    """charon for the rest of vpnd: `apply()` a Desired, `initiate`/`terminate` tunnels, and
    core events pushed to `emit` (CharonConnected then a SaSnapshot after every connect)."""

    def __init__(
        self,
        socket_path: str,
        emit: Callable[[Event], None],
        *,
        request_timeout: float = 10.0,
        backoff: Backoff = Backoff(),
        poll_interval: float = 5.0,
        on_stats: Callable[[dict[TunnelKey, SaStats]], None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._emit = emit
        self.poll_interval = poll_interval
        self._on_stats = on_stats
        self._wall = wall
        self.stats: dict[TunnelKey, SaStats] = {}
        self.loaded_plugins: tuple[str, ...] | None = None    # VICI `stats`, read at connect
        self._poller: asyncio.Task | None = None
        self.odd_sas = 0                # odd SAs/fields list-sas returned (skipped, logged)
        self.poll_errors = 0            # poll rounds that failed on something other than VICI
        self._poke = asyncio.Event()
        self._desired: Desired | None = None
        self.tunnels: dict[str, TunnelKey] = {}
        self._names: dict[TunnelKey, str] = {}
        self._classify = LogClassifier(self.tunnels)
        self._replacing: set[int] = set()     # CHILD SAs replace_child is deleting on purpose
        self.client = ViciClient(
            socket_path, on_event=self._on_event, on_connect=self._on_connect,
            on_disconnect=self._on_disconnect, request_timeout=request_timeout, backoff=backoff,
        )

    async def start(self) -> None:
        self.client.start()
        if self.poll_interval > 0 and self._poller is None:
            self._poller = asyncio.create_task(self._poll(), name="charon-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        await self.client.stop()

    async def _poll(self) -> None:
        """`list-sas` every poll_interval: SA counters for the metrics, a resync for the core
        (a missed event is corrected within one interval), and VICI liveness: an answer that
        does not come within the request timeout closes the session, which reconnects."""
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that
            # races with the event being set, and stop() would then wait forever
            try:
                async with asyncio.timeout(self.poll_interval):
                    await self._poke.wait()
                await asyncio.sleep(0.2)        # an SA changed: let its siblings settle
            except TimeoutError:
                pass
            self._poke.clear()
            if not self.client.connected:
                continue
            if self._replacing:
                # replace_child between its terminate and its initiate: charon would list the
                # tunnel without a CHILD SA; it pokes again when done
                continue
            try:
                await self.resync()
            except ViciException as e:
                log.warning("charon.poll_failed", error=str(e))
            except Exception as e:  # noqa: BLE001 - a dead poller means frozen SAs, no resync
                self.poll_errors += 1
                log.error("charon.poll_error", error=f"{type(e).__name__}: {e}",
                          errors=self.poll_errors, exc_info=True, note="polling goes on")
                await asyncio.sleep(self.poll_interval)     # never a hot loop on a bug

    # events in --------------------------------------------------------------------------

    def _on_event(self, kind: str, msg: dict) -> None:
        if kind == "log":
            events = self._classify(msg)
        else:
            events = translate(kind, msg, self.tunnels)
            if events:
                self._poke.set()    # SA timestamps in the metrics follow within ~0.2 s
        for event in events:
            if type(event) is ChildDown and event.child_id in self._replacing:
                continue        # replace_child reports it as a ChildRekeyed once the new one is up
            self._emit(event)

    async def _on_connect(self) -> None:
        """Subscribed already; now reload what charon may have lost, then the full snapshot."""
        self._emit(CharonConnected())
        if self._desired is not None:
            try:
                await self.apply(self._desired)
            except ViciError as e:
                log.error("charon.reload_failed", error=str(e))
        try:        # before the snapshot: policy mode reads it at start (libipsec or kernel)
            self.loaded_plugins = await self.plugins()
        except ViciError as e:
            log.warning("charon.stats_failed", error=str(e))
        await self.resync()

    def unreachable(self) -> dict | None:
        """None while the VICI session is up; else since when (wall clock), the last error
        and that the client keeps retrying: what `vpnd status` shows about charon."""
        c = self.client
        if c.connected:
            return None
        return {"since": c.down_since, "last_error": c.last_error,
                "retrying": not c._stopping.is_set(), "failed_attempts": c.failed_attempts}

    def _on_disconnect(self, reason: str) -> None:
        self._emit(CharonDisconnected(reason))

    async def resync(self) -> SaSnapshot:
        sas, odd = sanitize_sas(await self.client.list_sas())
        if odd:
            self.odd_sas += len(odd)
            log.warning("charon.odd_sas", problems=odd[:10], count=len(odd), total=self.odd_sas,
                        note="skipped; the rest of list-sas is used")
        snap = snapshot_from_sas(sas, self.tunnels)
        self.stats = sa_stats(sas, self.tunnels, self._wall(), self.stats)
        log.debug("charon.sas_listed", sas={f"{k.connection}/{k.tunnel}": (st.ike_id, st.child_id)
                                            for k, st in self.stats.items()})
        self._emit(snap)
        if self._on_stats is not None:
            self._on_stats(self.stats)
        return snap

    # config -----------------------------------------------------------------------------

    def _set_tunnels(self, tunnels: Mapping[str, TunnelKey]) -> None:
        self.tunnels.clear()                # shared with the classifier: update in place
        self.tunnels.update(tunnels)
        self._names = {key: name for name, key in tunnels.items()}

    def desire(self, desired: Desired) -> None:
        """Set what charon must hold before the first connect: the connect hook then loads it
        before the first `list-sas`, so the core never sees a snapshot of an unloaded config."""
        self._desired = desired
        self._set_tunnels(desired.tunnels)

    async def apply(self, desired: Desired) -> ApplyReport:
        """Secrets first (a conn may start negotiating as soon as it is loaded), then conns,
        then remove vpnd-owned conns and secrets the config dropped."""
        self._desired = desired
        self._set_tunnels(desired.tunnels)
        failed: list[tuple[str, str]] = []
        secrets_loaded = 0
        for secret in desired.secrets:
            try:
                await self.client.load_shared(secret)
                secrets_loaded += 1
            except ViciError as e:          # one tunnel's problem must not block the other
                failed.append((secret["id"], e.errmsg))
        loaded = []
        for name, body in desired.conns.items():
            try:
                await self.client.load_conn({name: body})
                loaded.append(name)
            except ViciError as e:
                failed.append((name, e.errmsg))
        gone = stale(await self.client.get_conns(), desired.conns)
        for name in gone:
            await self._remove_conn(name)
        gone_keys = stale(await self.client.get_shared(), (s["id"] for s in desired.secrets))
        for ident in gone_keys:
            await self.client.unload_shared(ident)
        report = ApplyReport(tuple(loaded), tuple(gone), secrets_loaded, tuple(gone_keys), tuple(failed))
        log.info("charon.config_applied", loaded=list(report.loaded), unloaded=list(report.unloaded),
                 secrets=report.secrets_loaded, secrets_unloaded=list(report.secrets_unloaded))
        for what, errmsg in failed:
            log.error("charon.load_failed", name=what, error=errmsg)
        return report

    async def _remove_conn(self, name: str) -> None:
        """charon 5.9.8 keeps a conn's SAs up after `unload-conn` (orphans nobody supervises):
        terminate them first, then unload."""
        try:
            await self.client.terminate(ike=name, force=True, timeout=2.0)
        except ViciError:
            pass                            # no SA: nothing to terminate
        await self.client.unload_conn(name)

    async def update(self, desired: Desired, *, load: Iterable[str], remove: Iterable[str]
                     ) -> ApplyReport:
        """A reload by difference: remove the `remove` conns (SAs terminated, conn and secret
        unloaded), then load only the `load` conns and their secrets. Everything else gets no
        VICI message at all, so its SAs are not disturbed. `desired` becomes what a reconnect
        reloads."""
        remove, load = list(remove), list(load)
        self._desired = desired             # a reconnect loads this whole, stale conns removed
        self._set_tunnels(desired.tunnels)  # events of removed tunnels are ignored from now
        try:
            return await self._update(desired, load, remove)
        except (ViciUnavailable, ViciTimeout) as e:
            log.warning("charon.update_deferred", error=str(e),
                        note="applied in full when the VICI session is back")
            return ApplyReport((), (), 0, ())

    async def _update(self, desired: Desired, load: list[str], remove: list[str]) -> ApplyReport:
        present_conns = set(await self.client.get_conns()) if remove else set()
        present_keys = set(await self.client.get_shared()) if remove else set()
        unloaded, keys_unloaded = [], []
        for name in remove:
            if name in present_conns:
                await self._remove_conn(name)
                unloaded.append(name)
            if name in present_keys and name not in load:
                await self.client.unload_shared(name)
                keys_unloaded.append(name)
        failed: list[tuple[str, str]] = []
        secrets = 0
        for secret in desired.secrets:
            if secret["id"] in load:
                try:
                    await self.client.load_shared(secret)
                    secrets += 1
                except ViciError as e:
                    failed.append((secret["id"], e.errmsg))
        loaded = []
        for name in load:
            try:
                await self.client.load_conn({name: desired.conns[name]})
                loaded.append(name)
            except ViciError as e:
                failed.append((name, e.errmsg))
        report = ApplyReport(tuple(loaded), tuple(unloaded), secrets, tuple(keys_unloaded),
                             tuple(failed))
        log.info("charon.config_updated", loaded=loaded, unloaded=unloaded, secrets=secrets,
                 secrets_unloaded=keys_unloaded)
        for what, errmsg in failed:
            log.error("charon.load_failed", name=what, error=errmsg)
        return report

    # actions out ---------------------------------------------------------------------------

    async def initiate(self, tunnel: TunnelKey, *, timeout: float = 0.0) -> bool:
        """Bring a tunnel up. timeout 0: fire and forget, outcome via events. Otherwise wait;
        a failure becomes NegotiationFailed from charon's own lines. True when it came up."""
        name = self._names[tunnel]
        try:
            logs = await self.client.initiate(name, ike=name, timeout=timeout)
        except ViciError as e:
            events = [ev for entry in e.logs for ev in self._classify(entry)]
            for ev in events:
                self._emit(ev)
            log.warning("charon.initiate_failed", tunnel=str(tunnel), error=e.errmsg,
                        limited=e.limited, classified=len(events))
            return False
        except ViciException as e:
            log.warning("charon.initiate_failed", tunnel=str(tunnel), error=str(e))
            return False
        for entry in logs:      # retransmits seen on the way up are still worth reporting
            for ev in self._classify(entry):
                self._emit(ev)
        return True

    async def terminate(self, tunnel: TunnelKey, ike_id: int | None = None, *,
                        child_id: int | None = None, timeout: float = 0.0) -> bool:
        """Tear a tunnel's IKE SA down (one by id, else all of the tunnel's), or with
        child_id only that CHILD SA (parking: the IKE SA stays). True if sent."""
        try:
            if child_id is not None:
                await self.client.terminate(child_id=child_id, timeout=timeout)
            elif ike_id is not None:
                await self.client.terminate(ike_id=ike_id, force=True, timeout=timeout)
            else:
                await self.client.terminate(ike=self._names[tunnel], force=True, timeout=timeout)
        except ViciError as e:      # "no matching SAs": already gone, which is what we wanted
            log.info("charon.terminate_noop", tunnel=str(tunnel), error=e.errmsg)
        except ViciException as e:
            log.warning("charon.terminate_failed", tunnel=str(tunnel), error=str(e))
            return False
        return True

    # policy mode (vpnd/charon/selector.py) ------------------------------------------------------------

    def name_of(self, tunnel: TunnelKey) -> str:
        """charon's connection (and child) name of a tunnel."""
        return self._names[tunnel]

    async def plugins(self) -> tuple[str, ...]:
        """charon's loaded plugins (VICI `stats`): tells libipsec from kernel-netlink."""
        stats, _ = await self.client.request("stats")
        return tuple(stats.get("plugins", ()))

    async def children(self, tunnel: TunnelKey) -> list[tuple[int, int]]:
        """The tunnel's installed CHILD SAs as (child id, IKE SA id), oldest first."""
        name = self._names[tunnel]
        out = []
        for entry in await self.client.list_sas(name):
            for _, sa in _sas(entry):
                for child in sa.get("child-sas", {}).values():
                    if child.get("state") == "INSTALLED" and child.get("name") == name:
                        out.append((_uid(child), _uid(sa)))
        return sorted(out)

    async def replace_child(self, tunnel: TunnelKey, *, timeout: float = 5.0) -> int | None:
        """Give the tunnel a fresh CHILD SA: it becomes the most recently installed one and
        carries the priority of the config loaded now. Returns its id (None: failed).

        The old one goes first, because charon refuses to initiate a CHILD SA equal to an
        installed one ("existing duplicate"). So this is meant for a tunnel that does not
        carry traffic: its short gap only costs its own probes. The core sees a rekey
        (ChildRekeyed old -> new), not a CHILD SA that went down and came back."""
        name = self._names[tunnel]
        old = await self.children(tunnel)
        ids = [c for c, _ in old]
        self._replacing.update(ids)
        try:
            for child_id in ids:
                await self.client.terminate(child_id=child_id, timeout=timeout)
            await self.client.initiate(name, ike=name, timeout=timeout)
            new = [c for c, _ in await self.children(tunnel) if c not in ids]
        except (ViciError, ViciException) as e:
            log.warning("charon.replace_child_failed", tunnel=str(tunnel), error=str(e))
            new = []
        finally:
            self._replacing.difference_update(ids)
            self._poke.set()        # the resync the replacement held back
        if not new:
            for child_id, ike_id in old:     # what we swallowed: the core must know the truth
                self._emit(ChildDown(tunnel, ike_id, child_id, "replaced, and the new one failed"))
            return None
        for child_id, _ in old:
            self._emit(ChildRekeyed(tunnel, child_id, new[-1]))
        return new[-1]

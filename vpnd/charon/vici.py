"""An asyncio client for charon's VICI socket.

The wire codec is strongSwan's own (`vici.protocol.Packet` / `Message`); this module adds
what that package lacks for a daemon: asyncio streams, a packet size limit, timeouts, one
request in flight per connection, events kept apart from command responses, and a
supervisor that reconnects with capped, jittered backoff and tells the caller to resync.

Two sockets, as charon's Python session cannot mix them (measured on this project's machines): one only listens for
events, the other only carries commands (and their streamed `list-sa` / `control-log`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from vici.exception import DeserializationException
from vici.protocol import FiniteStream, Message, Packet, Transport

log = structlog.get_logger("vpnd.vici")

MAX_PACKET = Transport.MAX_SEGMENT      # declared by the codec, enforced here
HEADER = struct.Struct("!I")

EVENTS = ("ike-updown", "child-updown", "ike-rekey", "child-rekey", "log")
STREAMS = ("list-sa", "control-log")    # only ever sent to the connection that asked

_RESPONSES = {Packet.CMD_RESPONSE, Packet.CMD_UNKNOWN}
_CONFIRMS = {Packet.EVENT_CONFIRM, Packet.EVENT_UNKNOWN}
_MALFORMED = (struct.error, DeserializationException, UnicodeDecodeError, ValueError, IndexError)


class ViciException(Exception):
    """Base of the three things a VICI call can raise."""


class ViciError(ViciException):
    """charon answered, and said no (`success = no` with its errmsg, or an unknown command)."""

    def __init__(self, command: str, errmsg: str, logs: tuple[dict, ...] = ()) -> None:
        self.command = command
        self.errmsg = errmsg
        self.logs = logs                # control-log lines charon streamed before failing
        super().__init__(f"{command}: {errmsg}")

    @property
    def limited(self) -> bool:
        """initiate refused because of charon's init limits (`init-limits = yes`): retry later."""
        return "due to limits" in self.errmsg


class ViciTimeout(ViciException):
    """No answer in time. The connection is dropped: a late answer would confuse the next call."""


class ViciUnavailable(ViciException):
    """No usable connection to charon (not running, restarting, or the stream broke)."""


class StrictStream(FiniteStream):
    """The codec's stream, but a short read is an error: the codec itself would silently
    return a truncated value for a truncated message."""

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        if size is not None and size >= 0 and len(data) != size:
            raise DeserializationException(f"truncated message: wanted {size} bytes, got {len(data)}")
        return data


def parse_packet(raw: bytes):
    """Packet.parse, made strict: the payload stream raises on truncation."""
    parsed = Packet.parse(raw)
    payload = StrictStream(raw)
    payload.seek(parsed.payload.tell())
    if parsed.response_type == Packet.EVENT:
        if len(parsed.event_type) != raw[1]:
            raise DeserializationException("truncated event name")
    return parsed._replace(payload=payload)


class FramingLost(Exception):
    """The byte stream can no longer be split into packets; only a new connection helps."""


def decode(value: Any) -> Any:
    """bytes -> str, recursively: the one place VICI values are decoded."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def encode(value: Any) -> Any:
    """Python values -> what the codec serialises: charon spells booleans yes/no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return {k: encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    return value


def backoff_delay(attempt: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Capped exponential backoff with equal jitter: in [d/2, d], d = min(cap, base * 2**n)."""
    d = min(cap, base * (2 ** min(attempt, 30)))
    return d / 2 + rand() * d / 2


async def read_packet(reader: asyncio.StreamReader, max_size: int = MAX_PACKET) -> bytes:
    """One length-prefixed packet. EOF between packets -> EOFError; anything else -> FramingLost."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise EOFError("charon closed the connection") from None
        raise FramingLost("connection closed inside a packet header") from None
    (length,) = HEADER.unpack(header)
    if length > max_size:
        raise FramingLost(f"packet length {length} exceeds the limit of {max_size} bytes")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as e:
        raise FramingLost(f"connection closed after {len(e.partial)} of {length} bytes") from None


def frame(packet: bytes) -> bytes:
    return HEADER.pack(len(packet)) + packet


@dataclass
class _Pending:
    command: str
    expect: set[int]
    stream: str | None
    future: asyncio.Future
    collected: list[dict] = field(default_factory=list)


class ViciConnection:
    """One socket to charon: one request in flight, packets routed as they arrive.

    Events go to `on_event(name, message)` (called in the reader task, must not block);
    streamed events of the running command are collected for it.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        role: str,
        on_event: Callable[[str, dict], None] | None = None,
        max_packet: int = MAX_PACKET,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._role = role
        self._on_event = on_event
        self._max_packet = max_packet
        self._lock = asyncio.Lock()
        self._pending: _Pending | None = None
        self._registered: set[str] = set()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._read_loop(), name=f"vici-{role}-reader")

    @classmethod
    async def open(cls, path: str, *, timeout: float, role: str, **kw: Any) -> "ViciConnection":
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path, limit=2**16)
        except (OSError, TimeoutError) as e:
            raise ViciUnavailable(f"cannot connect to {path}: {e or 'timeout'}") from None
        return cls(reader, writer, role=role, **kw)

    @property
    def is_closed(self) -> bool:
        return self.closed.done()

    async def request(
        self, command: str, message: dict | None = None, *, timeout: float, stream: str | None = None
    ) -> tuple[dict, list[dict]]:
        """Send one command; return (response, streamed events). Raises ViciError on `success=no`."""
        payload = Message.serialize(encode(message)) if message else None
        ptype, body, collected = await self._exchange(
            Packet.request(command, payload), command, _RESPONSES, stream, timeout
        )
        if ptype == Packet.CMD_UNKNOWN:
            raise ViciError(command, "unknown command")
        if body.get("success", "yes") != "yes":
            raise ViciError(command, body.get("errmsg", "failed without a message"), tuple(collected))
        return body, collected

    async def register(self, event: str, *, timeout: float) -> None:
        ptype, _, _ = await self._exchange(
            Packet.register_event(event), f"register {event}", _CONFIRMS, None, timeout
        )
        if ptype == Packet.EVENT_UNKNOWN:
            raise ViciError(f"register {event}", "unknown event")
        self._registered.add(event)

    async def _exchange(self, packet, command, expect, stream, timeout):
        async with self._lock:
            if self.is_closed:
                raise ViciUnavailable(f"connection closed: {self.closed.result()}")
            fut = asyncio.get_running_loop().create_future()
            self._pending = _Pending(command, expect, stream, fut)
            try:
                self._writer.write(frame(packet))
                async with asyncio.timeout(timeout):
                    await self._writer.drain()
                    ptype, body = await fut
                return ptype, body, self._pending.collected
            except TimeoutError:
                self.close(f"{command} timed out after {timeout:g}s")
                raise ViciTimeout(f"{command}: no answer from charon within {timeout:g}s") from None
            except (ConnectionError, OSError) as e:
                self.close(f"write failed: {e}")
                raise ViciUnavailable(f"{command}: {e}") from None
            finally:
                self._pending = None

    def close(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
            log.info("vici.connection_closed", role=self._role, reason=reason)
        pending = self._pending
        if pending and not pending.future.done():
            pending.future.set_exception(ViciUnavailable(f"{pending.command}: {reason}"))
        self._writer.close()
        if self._task is not asyncio.current_task():
            self._task.cancel()

    async def _read_loop(self) -> None:
        reason = "reader stopped"
        try:
            while True:
                self._dispatch(await read_packet(self._reader, self._max_packet))
        except EOFError as e:
            reason = str(e)
        except FramingLost as e:
            reason = f"framing lost: {e}"
            log.warning("vici.framing_lost", role=self._role, error=str(e))
        except (ConnectionError, OSError) as e:
            reason = f"read failed: {e}"
        except asyncio.CancelledError:
            reason = "closed"
        finally:
            self.close(reason)

    def _dispatch(self, raw: bytes) -> None:
        """Route one packet. Bad ones are logged and dropped; only a broken response to a
        pending request closes the connection (its state is then unknown)."""
        try:
            parsed = parse_packet(raw)
        except _MALFORMED:
            log.warning("vici.malformed_packet", role=self._role, size=len(raw))
            return
        ptype = parsed.response_type
        pending = self._pending
        if ptype == Packet.EVENT:
            self._dispatch_event(parsed, pending)
        elif ptype in _RESPONSES or ptype in _CONFIRMS:
            if pending is None or pending.future.done() or ptype not in pending.expect:
                log.warning("vici.unexpected_response", role=self._role, type=ptype,
                            pending=pending.command if pending else None)
                return
            try:
                body = decode(dict(Message.deserialize(parsed.payload))) if ptype == Packet.CMD_RESPONSE else {}
            except _MALFORMED as e:
                log.warning("vici.malformed_response", role=self._role, command=pending.command)
                self.close(f"malformed response to {pending.command}: {e}")
                return
            pending.future.set_result((ptype, body))
        else:
            log.warning("vici.unknown_packet_type", role=self._role, type=ptype)

    def _dispatch_event(self, parsed, pending: _Pending | None) -> None:
        try:
            name = parsed.event_type.decode("utf-8")
            if not name:
                raise ValueError("empty event name")
            streamed = pending is not None and pending.stream == name
            if not streamed and name not in self._registered:
                log.warning("vici.unexpected_event", role=self._role, event_name=name)
                return
            message = decode(dict(Message.deserialize(parsed.payload)))
        except _MALFORMED:
            log.warning("vici.malformed_event", role=self._role)
            return
        if streamed:
            pending.collected.append(message)
        elif self._on_event is not None:
            try:
                self._on_event(name, message)
            except Exception:           # a bug in a consumer must not kill the socket reader
                log.exception("vici.event_handler_failed", event_name=name)


CONNECT_FAILED_LOG_EVERY = 30.0     # seconds between warnings while charon stays unreachable


@dataclass(frozen=True)
class Backoff:
    base: float = 0.05
    cap: float = 5.0


class ViciClient:
    """A long-lived link to charon: two connections, reopened whenever charon goes away.

    After every (re)connect - events registered first, then `on_connect()` is awaited: the
    caller's full resync (`list-sas`), so no change between snapshot and events is lost.
    """

    def __init__(
        self,
        socket_path: str,
        *,
        on_event: Callable[[str, dict], None],
        on_connect: Callable[[], Awaitable[None]] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        events: Iterable[str] = EVENTS,
        request_timeout: float = 10.0,
        connect_timeout: float = 2.0,
        backoff: Backoff = Backoff(),
        max_packet: int = MAX_PACKET,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.socket_path = socket_path
        self._on_event = on_event
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._events = tuple(events)
        self.request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._backoff = backoff
        self._max_packet = max_packet
        self._rand = rand
        self._cmd: ViciConnection | None = None
        self._evt: ViciConnection | None = None
        self._connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.connects = 0               # successful (re)connects, for metrics and tests
        self.failed_attempts = 0
        self.down_since: float | None = None    # wall clock of the first failed attempt of an outage
        self.last_error: str | None = None      # of the last failed attempt or lost connection
        self._logged_failure: float | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name="vici-supervisor")

    async def stop(self) -> None:
        self._stopping.set()
        self._drop("stopping")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> "ViciClient":
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def connected(self) -> bool:
        """Both connections open now: a connection that just broke counts at once, not only
        once the supervisor has noticed (a request in between fails with ViciUnavailable)."""
        return (self._connected.is_set() and self._cmd is not None and not self._cmd.is_closed
                and self._evt is not None and not self._evt.is_closed)

    async def wait_connected(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            raise ViciUnavailable(f"not connected to {self.socket_path} within {timeout:g}s") from None

    async def _open(self) -> tuple[ViciConnection, ViciConnection]:
        evt = await ViciConnection.open(self.socket_path, timeout=self._connect_timeout, role="events",
                                        on_event=self._on_event, max_packet=self._max_packet)
        try:
            cmd = await ViciConnection.open(self.socket_path, timeout=self._connect_timeout,
                                            role="commands", max_packet=self._max_packet)
            try:
                for name in self._events:
                    await evt.register(name, timeout=self._connect_timeout)
                for name in STREAMS:
                    await cmd.register(name, timeout=self._connect_timeout)
            except BaseException:
                cmd.close("setup failed")
                raise
        except BaseException:
            evt.close("setup failed")
            raise
        return evt, cmd

    async def _supervise(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                self._evt, self._cmd = await self._open()
            except Exception as e:  # whatever went wrong, retry: a dead supervisor is a silent stall
                self.failed_attempts += 1
                delay = backoff_delay(attempt, self._backoff.base, self._backoff.cap, self._rand)
                attempt += 1
                self.last_error = str(e) or type(e).__name__
                if self.down_since is None:
                    self.down_since = time.time()
                now = time.monotonic()
                # a warning at the first failure, then one per CONNECT_FAILED_LOG_EVERY
                # seconds with the count: an outage is visible, a long one does not flood
                if self._logged_failure is None or now - self._logged_failure >= CONNECT_FAILED_LOG_EVERY:
                    self._logged_failure = now
                    log.warning("vici.connect_failed", socket=self.socket_path, error=self.last_error,
                                attempt=attempt, retry_in=round(delay, 3),
                                down_since=round(self.down_since, 3),
                                note="charon unreachable, retrying with backoff")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
                continue
            if self.down_since is not None:
                log.info("vici.reconnected", socket=self.socket_path, attempts=attempt,
                         down_s=round(time.time() - self.down_since, 3))
            attempt = 0
            self.down_since = None
            self._logged_failure = None
            self.connects += 1
            self._connected.set()
            log.info("vici.connected", socket=self.socket_path, connects=self.connects)
            if self._on_connect is not None:
                try:
                    await self._on_connect()
                except ViciException as e:      # charon went away during the resync
                    log.warning("vici.resync_failed", error=str(e))
                except Exception:
                    log.exception("vici.resync_failed")
            done, _ = await asyncio.wait(
                [self._evt.closed, self._cmd.closed], return_when=asyncio.FIRST_COMPLETED
            )
            reason = next(iter(done)).result()
            self._drop(reason)

    def _drop(self, reason: str) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._stopping.is_set():
            self.down_since, self.last_error = time.time(), reason
        for conn in (self._evt, self._cmd):
            if conn is not None:
                conn.close(reason)
        self._evt = self._cmd = None
        if was and self._on_disconnect is not None:
            try:
                self._on_disconnect(reason)
            except Exception:
                log.exception("vici.disconnect_handler_failed")

    # --- commands --------------------------------------------------------------------------

    async def request(
        self, command: str, message: dict | None = None, *, timeout: float | None = None,
        stream: str | None = None,
    ) -> tuple[dict, list[dict]]:
        conn = self._cmd
        if conn is None or conn.is_closed:
            raise ViciUnavailable(f"{command}: not connected to charon at {self.socket_path}")
        log.debug("vici.request", command=command)      # the name only: bodies carry keys
        return await conn.request(command, message, timeout=timeout or self.request_timeout,
                                  stream=stream)

    async def version(self) -> dict:
        return (await self.request("version"))[0]

    async def load_conn(self, conns: dict) -> None:
        """`conns`: {name: VICI connection dict}, one or more connections."""
        await self.request("load-conn", conns)

    async def unload_conn(self, name: str) -> None:
        await self.request("unload-conn", {"name": name})

    async def load_shared(self, secret: dict) -> None:
        """`secret`: {id, type, data, owners}; `data` is the clear key (never logged here)."""
        await self.request("load-shared", secret)

    async def unload_shared(self, ident: str) -> None:
        await self.request("unload-shared", {"id": ident})

    async def get_conns(self) -> list[str]:
        return list((await self.request("get-conns"))[0].get("conns", []))

    async def get_shared(self) -> list[str]:
        return list((await self.request("get-shared"))[0].get("keys", []))

    async def list_sas(self, ike: str | None = None, *, timeout: float | None = None) -> list[dict]:
        """All IKE SAs, each {name: sa}, from the `list-sa` events streamed before the response."""
        _, sas = await self.request("list-sas", {"ike": ike} if ike else None,
                                    timeout=timeout, stream="list-sa")
        return sas

    async def initiate(
        self, child: str, *, ike: str | None = None, timeout: float = 10.0, init_limits: bool = False
    ) -> list[dict]:
        """Bring a CHILD SA (and its IKE SA) up.

        timeout > 0: charon waits that long and answers; we wait one second more. Returns the
        control-log lines; failure raises ViciError carrying them (`.logs`), and `.limited`
        when charon's init limits refused it. timeout == 0: charon starts it and answers at
        once; the outcome arrives later as up/down and log events.
        """
        msg: dict[str, Any] = {"child": child, "init-limits": init_limits}
        if ike:
            msg["ike"] = ike
        if timeout <= 0:
            msg["timeout"] = -1
            await self.request("initiate", msg)
            return []
        msg["timeout"] = int(timeout * 1000)
        _, logs = await self.request("initiate", msg, timeout=timeout + 1.0, stream="control-log")
        return logs

    async def terminate(
        self, *, ike: str | None = None, ike_id: int | None = None, child: str | None = None,
        child_id: int | None = None, force: bool = False, timeout: float = 5.0,
    ) -> dict:
        """Tear SAs down. timeout == 0: do not wait for the peer's answer."""
        msg: dict[str, Any] = {k: v for k, v in (("ike", ike), ("ike-id", ike_id), ("child", child),
                                                 ("child-id", child_id)) if v is not None}
        msg["force"] = force
        if timeout <= 0:
            msg["timeout"] = -1
            return (await self.request("terminate", msg))[0]
        msg["timeout"] = int(timeout * 1000)
        return (await self.request("terminate", msg, timeout=timeout + 1.0, stream="control-log"))[0]

    async def rekey(self, *, ike: str | None = None, ike_id: int | None = None,
                    child: str | None = None, child_id: int | None = None) -> int:
        """Queue a rekey in charon; returns how many SAs matched."""
        msg = {k: v for k, v in (("ike", ike), ("ike-id", ike_id), ("child", child),
                                 ("child-id", child_id)) if v is not None}
        return int((await self.request("rekey", msg))[0].get("matches", 0))

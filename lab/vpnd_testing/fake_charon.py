"""A fake charon VICI server over a unix socket, built from strongSwan's own codec.

Test-only. It answers the commands vpnd uses, streams `list-sa` / `control-log` to the asking
connection only (as charon does), raises events to registered connections, and has a fault
injector: raw bytes before the next response, delays, dropped connections.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from vici.protocol import FiniteStream, Message, Packet

KNOWN_EVENTS = {"ike-updown", "child-updown", "ike-rekey", "child-rekey", "log", "list-sa",
                "control-log", "list-conn"}


def event_packet(name: str, msg: dict) -> bytes:
    return Packet._named_request(Packet.EVENT, name, Message.serialize(msg))


def response_packet(msg: dict | None = None, ptype: int = Packet.CMD_RESPONSE) -> bytes:
    return struct.pack("!B", ptype) + (Message.serialize(msg) if msg is not None else b"")


def frame(packet: bytes) -> bytes:
    return struct.pack("!I", len(packet)) + packet


def parse_request(packet: bytes) -> tuple[int, str, dict]:
    stream = FiniteStream(packet)
    (ptype,) = struct.unpack("!B", stream.read(1))
    (length,) = struct.unpack("!B", stream.read(1))
    name = stream.read(length).decode()
    body = Message.deserialize(stream) if stream.has_more() else {}
    return ptype, name, dict(body)


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    registered: set[str] = field(default_factory=set)
    requests: list[tuple[str, dict]] = field(default_factory=list)

    def send(self, packet: bytes) -> None:
        self.writer.write(frame(packet))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)


class FakeCharon:
    def __init__(self, path: str) -> None:
        self.path = path
        self.conns: list[Conn] = []
        self.conn_configs: dict[str, dict] = {}
        self.shared: dict[str, dict] = {}
        self.sas: list[dict] = []                       # list-sa events to stream
        self.initiate_logs: list[dict] = []
        self.initiate_result: dict = {"success": "yes"}
        self.delays: dict[str, float] = {}              # command -> seconds before answering
        self.inject_before_response: list[bytes] = []   # raw bytes written before the next answer
        self.handlers: dict[str, Callable[[Conn, dict], dict | None]] = {}
        self.requests: list[tuple[str, dict]] = []
        self.accepted = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self.connected = asyncio.Condition()

    async def start(self) -> "FakeCharon":
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        return self

    async def stop(self) -> None:
        """Charon goes away: stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.drop_all()             # the serving tasks see EOF and end by themselves
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for t in list(self._tasks):
            t.cancel()

    def drop_all(self) -> None:
        for c in self.conns:
            c.writer.close()
        self.conns.clear()

    async def wait_registered(self, event: str, count: int = 1, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            async with self.connected:
                await self.connected.wait_for(
                    lambda: sum(event in c.registered for c in self.conns) >= count)

    def emit(self, name: str, msg: dict) -> int:
        n = 0
        for c in self.conns:
            if name in c.registered:
                c.send(event_packet(name, msg))
                n += 1
        return n

    def emit_raw(self, data: bytes, event: str = "ike-updown") -> None:
        """Write raw bytes to every connection registered for `event` (the event socket)."""
        for c in self.conns:
            if event in c.registered:
                c.send_raw(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(reader, writer)
        self.conns.append(conn)
        self.accepted += 1
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            while True:
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                packet = await reader.readexactly(length)
                ptype, name, body = parse_request(packet)
                if ptype == Packet.EVENT_REGISTER:
                    if name in KNOWN_EVENTS:
                        conn.registered.add(name)
                        conn.send(response_packet(None, Packet.EVENT_CONFIRM))
                    else:
                        conn.send(response_packet(None, Packet.EVENT_UNKNOWN))
                    async with self.connected:
                        self.connected.notify_all()
                elif ptype == Packet.EVENT_UNREGISTER:
                    conn.registered.discard(name)
                    conn.send(response_packet(None, Packet.EVENT_CONFIRM))
                elif ptype == Packet.CMD_REQUEST:
                    await self._command(conn, name, body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            if conn in self.conns:
                self.conns.remove(conn)
            writer.close()

    async def _command(self, conn: Conn, name: str, body: dict) -> None:
        decoded = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in body.items()}
        self.requests.append((name, decoded))
        if name in self.delays:
            await asyncio.sleep(self.delays[name])
        while self.inject_before_response:
            conn.send_raw(self.inject_before_response.pop(0))
        if name in self.handlers:
            reply = self.handlers[name](conn, body)
            if reply is not None:
                conn.send(response_packet(reply))
            return
        handler = getattr(self, "_cmd_" + name.replace("-", "_"), None)
        if handler is None:
            conn.send(response_packet(None, Packet.CMD_UNKNOWN))
            return
        conn.send(response_packet(handler(conn, body)))

    # --- the commands ------------------------------------------------------------------------

    def _cmd_version(self, conn, body):
        return {"daemon": "charon", "version": "5.9.8", "sysname": "Linux",
                "release": "fake", "machine": "x86_64"}

    def _cmd_load_conn(self, conn, body):
        for name, cfg in body.items():
            self.conn_configs[name] = cfg
        return {"success": "yes"}

    def _cmd_unload_conn(self, conn, body):
        name = body.get("name", b"").decode()
        if self.conn_configs.pop(name, None) is None:
            return {"success": "no", "errmsg": f"unload: connection '{name}' not found"}
        return {"success": "yes"}

    def _cmd_get_conns(self, conn, body):
        return {"conns": list(self.conn_configs)}

    def _cmd_load_shared(self, conn, body):
        self.shared[body["id"].decode()] = body
        return {"success": "yes"}

    def _cmd_unload_shared(self, conn, body):
        ident = body.get("id", b"").decode()
        if self.shared.pop(ident, None) is None:
            return {"success": "no", "errmsg": f"credential '{ident}' not found"}
        return {"success": "yes"}

    def _cmd_get_shared(self, conn, body):
        return {"keys": list(self.shared)}

    def _cmd_list_sas(self, conn, body):
        if "list-sa" in conn.registered:
            for sa in self.sas:
                conn.send(event_packet("list-sa", sa))
        return {}

    def _cmd_initiate(self, conn, body):
        if "control-log" in conn.registered and int(body.get("timeout", b"0")) >= 0:
            for line in self.initiate_logs:
                conn.send(event_packet("control-log", line))
        return self.initiate_result

    def _cmd_terminate(self, conn, body):
        return {"success": "yes", "matches": "1", "terminated": "1"}

    def _cmd_rekey(self, conn, body):
        return {"success": "yes", "matches": "1"}

"""The /metrics endpoint, served by the event loop itself.

prometheus_client's own server spends a thread per connection and waits for a request
forever, so idle or slow clients pile up threads. Here every connection is a task of the
loop, with a bound on how many may be open and a deadline for the request to arrive: when
the bound is reached the oldest connection still reading its request is closed for the new
one, so a crowd of slow clients cannot keep a scrape out. One request per connection
(`Connection: close`), which is all Prometheus needs.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from prometheus_client.exposition import CONTENT_TYPE_LATEST

MAX_REQUEST = 8192


class MetricsServer:
    def __init__(self, render: Callable[[], bytes], *, max_clients: int = 16,
                 read_timeout: float = 5.0, write_timeout: float = 10.0) -> None:
        self.render = render
        self.max_clients = max_clients
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self._server: asyncio.AbstractServer | None = None
        self._reading: dict[asyncio.Task, asyncio.StreamWriter] = {}   # oldest first
        self._tasks: set[asyncio.Task] = set()

    @property
    def clients(self) -> int:
        return len(self._tasks)

    async def start(self, host: str, port: int) -> None:
        """Bind; raises OSError (with the host in the message when it does not resolve)."""
        try:
            self._server = await asyncio.start_server(self._serve, host, port,
                                                      limit=MAX_REQUEST, backlog=64)
        except socket.gaierror as err:
            raise OSError(f"host {host!r} does not resolve: {err.strerror}") from None

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if len(self._tasks) > self.max_clients and self._reading:
            oldest = next(iter(self._reading))
            del self._reading[oldest]
            oldest.cancel()             # it has had its chance; a new client gets the slot
        elif len(self._tasks) > self.max_clients:
            self._tasks.discard(task)   # every slot is busy writing: this one waits outside
            writer.close()
            return
        self._reading[task] = writer
        try:
            try:
                async with asyncio.timeout(self.read_timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
                head = None
            finally:
                self._reading.pop(task, None)
            status, body, is_head = self._answer(head)
            async with asyncio.timeout(self.write_timeout):
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " +
                             (CONTENT_TYPE_LATEST.encode() if status.startswith(b"200")
                              else b"text/plain; charset=utf-8") +
                             b"\r\nContent-Length: " + str(len(body)).encode() +
                             b"\r\nConnection: close\r\n\r\n" + (b"" if is_head else body))
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._reading.pop(task, None)
            self._tasks.discard(task)
            writer.close()

    def _answer(self, head: bytes | None) -> tuple[bytes, bytes, bool]:
        if head is None:
            return b"400 Bad Request", b"bad request\n", False
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        if method not in (b"GET", b"HEAD"):
            return b"405 Method Not Allowed", b"only GET\n", False
        if target not in (b"/metrics", b"/"):
            return b"404 Not Found", b"see /metrics\n", method == b"HEAD"
        return b"200 OK", self.render(), method == b"HEAD"

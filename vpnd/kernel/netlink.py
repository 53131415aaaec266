"""rtnetlink for the kernel-facing adapters (routes, links): open, subscribe, listen.

Subscribe before dumping (a change between dump and subscription would be lost), always
`flags=0` with a namespace (pyroute2 otherwise creates a namespace a typo named), and an
overrun (ENOBUFS: the kernel dropped events) reopens the subscription and asks every owner
for a full resync instead of trusting a stream with holes in it.

One subscription per namespace is shared by every listener (`listen`): decoding a netlink
message in pyroute2 costs far more than handing it on, and with a socket per connection
every route write was decoded once per connection - O(n^2) at 50 connections, a saturated
core during a flap storm (bench/scale.py). Each listener keeps its own queue and task, so a
slow one (a route repair waiting on the kernel) never holds up another.

The subscription carries a classic BPF socket filter that drops route messages of tables
other than main in the kernel: vpnd owns main-table routes only, and a gateway whose other
tables churn (a full BGP feed in a VRF, the fault matrix's 100,000-route flood) would
otherwise make it decode every one of them in Python, lag its event loop and overrun.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import socket
import struct
import sys
from typing import Any, Awaitable, Callable

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_LINK

from vpnd import logs

log = logs.get("vpnd.netlink")

# Which group a message type belongs to: a listener only gets the kinds it subscribed to.
_GROUP_OF = {
    "RTM_NEWLINK": RTMGRP_LINK, "RTM_DELLINK": RTMGRP_LINK,
    "RTM_NEWROUTE": RTMGRP_IPV4_ROUTE, "RTM_DELROUTE": RTMGRP_IPV4_ROUTE,
}
_OVERRUN = object()
BACKLOG = 10_000            # messages queued per listener before it is told to resync instead


SO_ATTACH_FILTER = 26       # <asm-generic/socket.h>; not in Python's socket module
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RT_TABLE_MAIN = 254


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def main_table_filter() -> bytes:
    """The BPF program: pass everything except RTM_NEWROUTE/DELROUTE whose rtm_table is not
    main. Offsets: nlmsg_type at 4 (host order; BPF half-word loads are big-endian, hence the
    byte swap of the constants), rtm_table at 16 + 4. One message per multicast skb."""
    def be(v: int) -> int:
        return int.from_bytes(v.to_bytes(2, sys.byteorder), "big")

    ldh, ldb, jeq, ret = 0x28, 0x30, 0x15, 0x06     # BPF_LD|H|ABS, LD|B|ABS, JMP|JEQ|K, RET|K
    return b"".join([
        _bpf(ldh, 0, 0, 4),                         # 0: A = nlmsg_type
        _bpf(jeq, 1, 0, be(RTM_NEWROUTE)),          # 1: route message -> 3
        _bpf(jeq, 0, 3, be(RTM_DELROUTE)),          # 2: route message -> 3, else accept (6)
        _bpf(ldb, 0, 0, 20),                        # 3: A = rtm_table
        _bpf(jeq, 1, 0, RT_TABLE_MAIN),             # 4: main -> accept (6)
        _bpf(ret, 0, 0, 0),                         # 5: drop
        _bpf(ret, 0, 0, 0xFFFFFFFF),                # 6: accept
    ])


def attach_main_table_filter(sock: Any) -> None:
    program = main_table_filter()
    insns = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(insns))   # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)   # the kernel copies it


async def open_rtnl(netns: str | None) -> AsyncIPRoute:
    ipr = AsyncIPRoute(netns=netns, flags=0) if netns else AsyncIPRoute()
    await ipr.setup_endpoint()
    return ipr


async def subscribe(netns: str | None, groups: int) -> AsyncIPRoute:
    events = await open_rtnl(netns)
    await events.bind(groups=groups)
    return events


async def watch(events: AsyncIPRoute, netns: str | None, groups: int,
                on_message: Callable[[Any], Awaitable[None]],
                on_overrun: Callable[[], Awaitable[None]]) -> None:
    """Feed every message of one's own subscription to `on_message` until cancelled;
    resubscribe after an overrun. vpnd's adapters use the shared `listen` instead."""
    while True:
        try:
            async for m in events.get():
                await on_message(m)
        except asyncio.CancelledError:
            events.close()
            raise
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            events.close()
            events = await subscribe(netns, groups)
            await on_overrun()


class Listener:
    """One owner's view of the shared subscription: its messages, in order, on its own task."""

    def __init__(self, hub: "_Hub", groups: int, on_message: Callable[[Any], Awaitable[None]],
                 on_overrun: Callable[[], Awaitable[None]], name: str) -> None:
        self._hub = hub
        self.groups = groups
        self._on_message = on_message
        self._on_overrun = on_overrun
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=name)

    def put(self, m: Any) -> None:
        """Queue a message; a backlog past BACKLOG (a netlink flood the owner cannot keep up
        with) is dropped for one overrun, as the kernel does with a full socket buffer: the
        owner resyncs from a dump instead of working through stale history."""
        if self._queue.qsize() >= BACKLOG:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(_OVERRUN)
        self._queue.put_nowait(m)

    async def _run(self) -> None:
        while True:
            m = await self._queue.get()
            try:
                if m is _OVERRUN:
                    await self._on_overrun()
                else:
                    await self._on_message(m)
            except asyncio.CancelledError:
                raise
            except Exception:       # one bad message must not end the owner's watch
                log.exception("netlink.listener_failed", listener=self._task.get_name())

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._hub.remove(self)


class _Hub:
    """The namespace's one subscription (all groups any listener wants) and its reader."""

    GROUPS = RTMGRP_LINK | RTMGRP_IPV4_ROUTE

    def __init__(self, netns: str | None, loop: asyncio.AbstractEventLoop) -> None:
        self.netns = netns
        self.loop = loop
        self.ready: asyncio.Task | None = None
        self.listeners: list[Listener] = []
        self._events: AsyncIPRoute | None = None
        self._task: asyncio.Task | None = None

    async def _subscribe(self) -> AsyncIPRoute:
        events = await subscribe(self.netns, self.GROUPS)
        try:
            attach_main_table_filter(events.transport.get_extra_info("socket"))
        except (OSError, AttributeError) as exc:   # still correct without it, only slower
            log.warning("netlink.filter_not_attached", netns=self.netns, error=repr(exc))
        return events

    async def start(self) -> None:
        self._events = await self._subscribe()
        self._task = asyncio.create_task(self._read(), name=f"netlink-{self.netns or 'host'}")

    async def _read(self) -> None:
        while True:
            assert self._events is not None
            try:
                async for m in self._events.get():
                    group = _GROUP_OF.get(m.get("event"))
                    if group is None:
                        continue
                    for listener in self.listeners:
                        if listener.groups & group:
                            listener.put(m)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # ENOBUFS: the kernel dropped events. Anything else would end the reader and
                # starve every listener without a word: resubscribe the same way, say so.
                if getattr(exc, "errno", None) != errno.ENOBUFS:
                    log.error("netlink.subscription_failed", netns=self.netns, error=repr(exc))
                    await asyncio.sleep(0.1)
                self._events.close()
                self._events = await self._resubscribe()
                for listener in self.listeners:
                    listener.put(_OVERRUN)

    async def _resubscribe(self) -> AsyncIPRoute:
        delay = 0.1
        while True:
            try:
                return await self._subscribe()
            except Exception as exc:    # e.g. out of sockets: keep trying, say so
                log.error("netlink.resubscribe_failed", netns=self.netns, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def remove(self, listener: Listener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)
        if not self.listeners:
            if _hubs.get((id(self.loop), self.netns)) is self:
                del _hubs[(id(self.loop), self.netns)]
            if self._task is not None:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            if self._events is not None:
                self._events.close()


_hubs: dict[tuple[int, str | None], _Hub] = {}      # per event loop and namespace


async def listen(netns: str | None, groups: int, on_message: Callable[[Any], Awaitable[None]],
                 on_overrun: Callable[[], Awaitable[None]], *, name: str) -> Listener:
    """Subscribed when this returns: dump after it, and no change in between is lost."""
    loop = asyncio.get_running_loop()
    key = (id(loop), netns)
    hub = _hubs.get(key)
    if hub is None or hub.loop is not loop:     # none yet, or left over from a closed loop
        hub = _hubs[key] = _Hub(netns, loop)
        hub.ready = loop.create_task(hub.start())
    try:
        await asyncio.shield(hub.ready)
    except BaseException:
        if _hubs.get(key) is hub and hub.ready.done():
            del _hubs[key]
        raise
    listener = Listener(hub, groups, on_message, on_overrun, name)
    hub.listeners.append(listener)
    return listener

"""rtnetlink for the kernel-facing adapters (routes, links): open, subscribe, watch.

Subscribe before dumping (a change between dump and subscription would be lost), always
`flags=0` with a namespace (pyroute2 otherwise creates a namespace a typo named), and an
overrun (ENOBUFS: the kernel dropped events) reopens the subscription and asks the owner for a
full resync instead of trusting a stream with holes in it.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any, Awaitable, Callable

from pyroute2 import AsyncIPRoute


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
    """Feed every message to `on_message` until cancelled; resubscribe after an overrun."""
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

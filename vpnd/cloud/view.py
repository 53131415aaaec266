"""The cloud's own view of each connection ([connection.cloud_api]), asked of its API at most once a
minute and handed to `vpnd status` and the metrics: the cloud's tunnel status, its health
check, and every setting where it and vpnd differ ("cloud says ... / vpnd has ...").

Why a poller of its own: the SDK is synchronous and slow (seconds), so each call runs in a
worker thread; nothing the cloud says changes what vpnd does (it is evidence for the
operator, not for failover), and a failed call is shown, then retried at the next interval.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any, Callable

from vpnd.cloud import alibaba
from vpnd.config.model import CLOUD_POLL_MIN, Config, ConnectionConfig

Fetch = Callable[[ConnectionConfig], dict]


def fetch_alibaba(conn: ConnectionConfig) -> dict:
    """One DescribeVpnConnection for `conn` (the customer gateways are not asked)."""
    c = conn.cloud_api
    endpoint, protocol = c.endpoint, "https"
    if endpoint and endpoint.startswith("http://"):     # loopback only (the loader says so)
        endpoint, protocol = endpoint[len("http://"):], "http"
    return alibaba.fetch(c.connection_id, c.region, endpoint=endpoint, protocol=protocol,
                         gateways=False)[0]


class CloudWatch:
    """Polls every connection that has [connection.cloud_api]; `sink(name, view)` receives each
    result (the view, or the last view with `error` set; None once the table is gone)."""

    def __init__(self, config: Callable[[], Config], sink: Callable[[str, dict | None], None],
                 fetch: Fetch = fetch_alibaba, clock: Callable[[], float] = time.monotonic,
                 min_interval: float = CLOUD_POLL_MIN) -> None:
        self._config = config
        self._sink = sink
        self._fetch = fetch
        self._clock = clock
        self._min = min_interval
        self._due: dict[str, float] = {}
        self.last: dict[str, dict] = {}

    async def poll_once(self) -> float:
        """Ask every connection that is due; returns the seconds until the next is."""
        now = self._clock()
        conns = [c for c in self._config().connections if c.cloud_api is not None]
        for conn in conns:
            if self._due.get(conn.name, now) > now:
                continue
            self._due[conn.name] = now + max(self._min, conn.cloud_api.interval)
            view = dict(self.last.get(conn.name, {}))
            try:
                body = await asyncio.to_thread(self._fetch, conn)
                view = alibaba.cloud_view(body, conn)
                view["error"] = None
                view["asked_at"] = _iso(time.time())
            except alibaba.CloudImportError as exc:
                view["error"] = str(exc)
            except Exception as exc:        # never fatal: the dashboard, not the tunnels
                view["error"] = f"{type(exc).__name__}: {exc}"
            self.last[conn.name] = view
            self._sink(conn.name, view)
        names = {c.name for c in conns}
        for gone in set(self._due) - names:         # a reload took [connection.cloud_api] away
            del self._due[gone]
            self.last.pop(gone, None)
            self._sink(gone, None)
        pending = [d for n, d in self._due.items() if n in names]
        return max(1.0, min(pending) - self._clock()) if pending else self._min

    async def run(self) -> None:
        while True:
            await asyncio.sleep(await self.poll_once())


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

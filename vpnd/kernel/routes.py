"""Route control for `routing = "route"`: the remote networks through the active tunnel.

Every remote prefix has two routes, both stamped with vpnd's route protocol number: the
preferred metric (tunnel 1's `route_metric`, 100) on the ACTIVE tunnel's interface and the
higher metric (101) on the standby's. A switch is `route replace` of the preferred route
(one atomic netlink op per prefix: the kernel swaps the nexthop in place, so there is no
moment without a route), then the standby route is pointed at the old tunnel; if the second
op failed, traffic still flows. Routes of other protocols and other tables are never
touched. At start the controller adopts what the kernel has: a restarted vpnd whose routes
are already right issues zero writes. Netlink route events are watched; a vpnd route that
someone deletes or changes is put back at once and reported as `OwnedRouteLost`.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass
from typing import Any, Callable

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_LINK

from vpnd import logs

from vpnd.kernel import netlink
from vpnd.config.model import ConnectionConfig
from vpnd.core.events import OwnedRouteLost

log = logs.get("vpnd.routes")

MAIN_TABLE = 254
SCOPE_LINK = 253


class RouteError(Exception):
    """The kernel refused a route write (the message says which and why)."""


@dataclass(frozen=True, order=True)
class Route:
    prefix: str          # "192.168.0.0/16"
    metric: int
    ifname: str


def owned_prefixes(conn: ConnectionConfig) -> list[str]:
    """The prefixes whose routes vpnd keeps for `conn`: the remote networks, and the /32 of
    the cloud health check's source IP (the vendor's health-check documentation: the on-premises route "Destination CIDR:
    the source IP address of the health check ... Next hop: the IPsec-VPN connection")."""
    out = [str(n) for n in conn.remote_networks]
    chc = conn.cloud_health_check
    if chc is not None and f"{chc.source_ip}/32" not in out:
        out.append(f"{chc.source_ip}/32")
    return out


def desired_routes(conn: ConnectionConfig, active: str | None) -> set[Route]:
    """What the kernel should hold for `conn` with `active` carrying traffic (None: nothing).

    The active tunnel takes the lowest configured metric, the others keep theirs in order.
    """
    if active is None:
        return set()
    metrics = sorted(t.route_metric for t in conn.tunnels)
    order = [t for t in conn.tunnels if t.name == active] + [t for t in conn.tunnels if t.name != active]
    out = set()
    for net in owned_prefixes(conn):
        for metric, t in zip(metrics, order):
            out.add(Route(net, metric, t.interface))
    return out


class RouteController:
    def __init__(self, conn: ConnectionConfig, *, protocol: int, netns: str | None = None,
                 on_event: Callable[[Any], None] = lambda e: None) -> None:
        self.conn = conn
        self.protocol = protocol
        self.netns = netns
        self.on_event = on_event
        self.active: str | None = None
        self.withdrawn = False
        self.writes = 0                 # netlink writes issued: adoption must leave it at 0
        self.repairs = 0
        self._prefixes = set(owned_prefixes(conn))
        self._ipr: AsyncIPRoute | None = None
        self._watch: netlink.Listener | None = None
        self._ifindex: dict[str, int] = {}
        self._lock = asyncio.Lock()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe first, then read the kernel's state and adopt it."""
        self._ipr = await netlink.open_rtnl(self.netns)
        groups = RTMGRP_IPV4_ROUTE | RTMGRP_LINK
        self._watch = await netlink.listen(self.netns, groups, self._on_message, self._overrun,
                                           name=f"routes-{self.conn.name}")
        await self._refresh_links()
        present = await self.kernel_routes()
        self.active = self._infer_active(present)
        log.info("routes.adopted", connection=self.conn.name, routes=len(present), active=self.active)
        if self.active is not None:
            await self.repair()

    async def stop(self) -> None:
        """Leaves the routes in place: a restart or upgrade must not drop traffic."""
        if self._watch is not None:
            await self._watch.close()
            self._watch = None
        if self._ipr is not None:
            self._ipr.close()

    async def reconfigure(self, conn: ConnectionConfig) -> int:
        """A reload changed the remote networks, metrics or interfaces: routes of prefixes no
        longer configured go, the rest converge. Unchanged routes see no write at all."""
        async with self._lock:
            new = set(owned_prefixes(conn))
            self._prefixes = self._prefixes | new
            await self._refresh_links()
            have = await self.kernel_routes()
            self.conn, self._prefixes = conn, new
            if self.active not in {t.name for t in conn.tunnels}:
                self.active = None
            n = 0
            for r in sorted(have):
                if r.prefix not in new:
                    n += await self._write("del", r)
            return n + await self._converge()

    async def remove(self) -> int:
        """The connection was removed by a reload: its routes go with it."""
        writes = await self.set_active(None, withdraw=True)
        await self.stop()
        return writes

    # --- the kernel's view -----------------------------------------------------------------

    async def _refresh_links(self) -> None:
        """Indexes of this connection's own tunnel interfaces, asked for by name: a full link
        dump decodes every link on the box, and with 50 connections (100 tunnels) that made
        each switch and each start-up step cost O(all links) (bench/scale.py)."""
        assert self._ipr is not None
        found = {}
        for t in self.conn.tunnels:
            try:
                reply = await self._ipr.link("get", ifname=t.interface)
            except Exception:          # ENODEV: not there (yet); a write to it is skipped
                continue
            links = [l async for l in reply] if hasattr(reply, "__aiter__") else list(reply)
            if links:
                found[t.interface] = links[0]["index"]
        self._ifindex = found

    async def kernel_routes(self) -> set[Route]:
        assert self._ipr is not None
        names = {i: n for n, i in self._ifindex.items()}
        out = set()
        async for m in await self._ipr.route("dump", table=MAIN_TABLE, proto=self.protocol):
            r = self._parse(m, names)
            if r is not None:
                out.add(r)
        return out

    def _parse(self, m: Any, names: dict[int, str]) -> Route | None:
        # Cheapest and most selective checks first: every listener sees every route event,
        # and with 50 connections 49 of them only need to see that the prefix is not theirs.
        if m.get("proto") != self.protocol or m.get("family") != 2:
            return None
        prefix = f"{m.get('dst') or m.get('RTA_DST') or '0.0.0.0'}/{m['dst_len']}"
        if prefix not in self._prefixes:
            return None
        if (m.get("table") or m.get("RTA_TABLE")) not in (MAIN_TABLE, None):
            return None
        oif = m.get("oif") or m.get("RTA_OIF")
        return Route(prefix, m.get("priority") or m.get("RTA_PRIORITY") or 0, names.get(oif, f"if{oif}"))

    def _key(self, m: Any) -> tuple[str, int] | None:
        """(prefix, metric) of a main-table IPv4 route of any protocol, if it is one of ours."""
        if m.get("family") != 2 or (m.get("table") or m.get("RTA_TABLE")) not in (MAIN_TABLE, None):
            return None
        prefix = f"{m.get('dst') or m.get('RTA_DST') or '0.0.0.0'}/{m['dst_len']}"
        if prefix not in self._prefixes:
            return None
        return prefix, m.get("priority") or m.get("RTA_PRIORITY") or 0

    def _infer_active(self, present: set[Route]) -> str | None:
        if not present:
            return None
        best = min(present, key=lambda r: r.metric)
        return next((t.name for t in self.conn.tunnels if t.interface == best.ifname), None)

    # --- writes ----------------------------------------------------------------------------

    async def set_active(self, tunnel: str | None, *, withdraw: bool = False) -> int:
        """Returns the netlink writes it took (0 when the kernel was already right)."""
        async with self._lock:
            if withdraw or tunnel is None:
                self.active, self.withdrawn = None, True
                return sum([await self._write("del", r) for r in await self.kernel_routes()])
            self.withdrawn = False
            old = self.active
            self.active = tunnel
            if old == tunnel:
                # Nothing to move: the kernel already matched at start (adoption converges)
                # and every change since was watched and repaired. Dumping here cost a
                # route dump per connection each time the core re-announced its choice (both
                # tunnels down, "keep"), O(all routes) each: a saturated core at 50
                # connections in a flap storm (bench/scale.py).
                return 0
            # Preferred metric first (traffic moves), then the standby metric.
            return sum([await self._write("replace", r)
                        for r in sorted(desired_routes(self.conn, tunnel), key=lambda r: r.metric)])

    async def repair(self) -> int:
        """Make the kernel match the desired routes; returns how many writes that took."""
        async with self._lock:
            return await self._converge()

    async def _converge(self) -> int:
        await self._refresh_links()
        want = desired_routes(self.conn, self.active)
        have = await self.kernel_routes()
        n = 0
        for r in sorted(want - have, key=lambda r: r.metric):
            n += await self._write("replace", r)
        wanted_keys = {(r.prefix, r.metric) for r in want}
        for r in have - want:
            if (r.prefix, r.metric) not in wanted_keys:
                n += await self._write("del", r)
        return n

    async def _write(self, op: str, r: Route) -> int:
        assert self._ipr is not None
        oif = self._ifindex.get(r.ifname)
        if oif is None and op != "del":
            log.warning("routes.interface_missing", connection=self.conn.name, interface=r.ifname,
                        prefix=r.prefix)
            return 0
        kw: dict[str, Any] = dict(dst=r.prefix, priority=r.metric, proto=self.protocol,
                                  table=MAIN_TABLE, scope=SCOPE_LINK)
        if op != "del":
            kw["oif"] = oif
        try:
            await self._ipr.route(op, **kw)
        except Exception as exc:  # NetlinkError: the kernel's errno and text
            if op == "del" and getattr(exc, "code", None) == errno.ESRCH:
                return 0
            raise RouteError(f"route {op} {r.prefix} metric {r.metric} dev {r.ifname}: {exc}") from exc
        self.writes += 1
        return 1

    # --- watching --------------------------------------------------------------------------

    async def _overrun(self) -> None:
        log.warning("routes.netlink_overrun", connection=self.conn.name)
        await self._check("netlink overrun")

    async def _on_message(self, m: Any) -> None:
        kind = m.get("event")
        if kind in ("RTM_NEWLINK", "RTM_DELLINK"):
            if m.get("ifname") in {t.interface for t in self.conn.tunnels}:
                await self._check(f"interface {m.get('ifname')} {kind[4:].lower()}")
            return
        if kind not in ("RTM_DELROUTE", "RTM_NEWROUTE"):
            return
        if m.get("proto") != self.protocol:
            # `ip route replace` of one of vpnd's routes by another protocol: the kernel
            # announces only the newcomer, at vpnd's own (prefix, metric) key
            if kind == "RTM_NEWROUTE" and self.active is not None and not self._lock.locked():
                key = self._key(m)
                if key is not None and key in {(r.prefix, r.metric)
                                               for r in desired_routes(self.conn, self.active)}:
                    await self._check(f"replaced {key[0]} metric {key[1]} "
                                      f"(now protocol {m.get('proto')})")
            return
        names = {i: n for n, i in self._ifindex.items()}
        r = self._parse(m, names)
        if r is None or self.active is None or self._lock.locked():
            return
        want = desired_routes(self.conn, self.active)
        if (kind == "RTM_DELROUTE" and r in want) or (kind == "RTM_NEWROUTE" and r not in want):
            await self._check(f"{kind[4:].lower()} {r.prefix} metric {r.metric} dev {r.ifname}")

    async def _check(self, why: str) -> None:
        if self.active is None:
            return
        try:
            fixed = await self.repair()
        except RouteError as err:   # e.g. a re-created interface not up yet: its link-up retries
            log.warning("routes.repair_deferred", connection=self.conn.name, cause=why, error=str(err))
            return
        if fixed:
            self.repairs += 1
            log.warning("routes.restored", connection=self.conn.name, cause=why, writes=fixed)
            for prefix in sorted(self._prefixes):
                self.on_event(OwnedRouteLost(self.conn.name, prefix))
                break

"""The steering seam: how one connection's traffic is put on the tunnel the core chose.

The core decides *which* tunnel carries a connection (SetActive, SetBgpNeighbor, repairs);
how that is made true differs by routing mode: kernel routes over the tunnels' interfaces
(route), CHILD SA priorities in charon (policy), FRR's neighbors and route-maps (bgp). One
implementation per mode, one object per connection: the daemon holds them and never asks
which mode a connection is in. Every method runs inside the reconciler; work that must wait
its turn (a policy re-assert, a retry) is queued with `Services.defer`, never started as a
task of its own, so charon, vtysh and the kernel tables have one writer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from vpnd.config.model import Config, ConnectionConfig

if TYPE_CHECKING:
    from vpnd.core.events import SaSnapshot


@dataclass
class Services:
    """What the daemon lends every steering object.

    `shared` holds the backends several connections of one mode use together (one FRR
    `router bgp`, one policy selector); the mode's module creates its own on first use and
    the daemon reconfigures and stops whatever is there, without knowing what it is."""

    charon: Any                                     # vpnd.charon.adapter.CharonAdapter
    metrics: Any                                    # vpnd.metrics.Metrics
    post: Callable[[Any], None]                     # an event for the core
    defer: Callable[[str, Callable[[], Awaitable[None]]], None]   # work for the reconciler
    config: Callable[[], Config]                    # the running config (a reload replaces it)
    netns: str | None = None
    shared: dict[str, "Backend"] = field(default_factory=dict)
    # per tunnel (TunnelKey): its MTU, path MTU and MSS clamp (vpnd.steering.data_path), for status
    data_path: dict[Any, dict] = field(default_factory=dict)


class Backend:
    """A mode's state shared by its connections; told of every applied reload."""

    async def reconfigure(self, config: Config) -> None:
        pass

    async def stop(self) -> None:
        pass


class Steering:
    """No-op defaults: a mode implements what it steers with."""

    def __init__(self, conn: ConnectionConfig, services: Services) -> None:
        self.conn = conn
        self.services = services

    async def start(self) -> None:
        """Take over what a predecessor left (interfaces, routes, FRR's assignment) without
        changing it, and tell the core where traffic already flows (Adopted)."""

    def charon_synced(self, snapshot: "SaSnapshot") -> None:
        """charon's first full picture since vpnd started: what a predecessor left there."""

    def observe(self, event: Any) -> None:
        """Every event from charon, before the core sees it."""

    def charon_choice(self) -> str | None:
        """The tunnel whose CHILD SA charon should prefer, when charon decides (policy mode)."""
        return None

    async def set_active(self, tunnel: str | None, *, withdraw: bool, reason: str) -> None:
        """Move the connection's traffic to `tunnel` (None: no tunnel usable; `withdraw`
        says whether to take the routes away), and log what it took when it took anything."""

    async def set_neighbor(self, tunnel: str, enabled: bool, reason: str) -> None:
        """BGP's session on `tunnel` wanted up or administratively shut."""

    async def repair(self, reason: str) -> None:
        """Someone changed what vpnd owns for this connection: put it back."""

    async def repair_interface(self, tunnel: str) -> None:
        """The tunnel's interface went away: bring it back."""

    async def reconfigure(self, conn: ConnectionConfig, *, links: bool, routes: bool) -> None:
        """A reload changed this connection (same mode): `links` when some tunnel's
        interface changed, `routes` when remote networks, metrics or interfaces did."""
        self.conn = conn

    async def remove(self) -> None:
        """The connection is gone (or rebuilt in another mode): undo what vpnd made for it."""

    async def stop(self, *, withdraw: bool) -> None:
        """vpnd stops: leave traffic flowing, unless `withdraw` (daemon.withdraw_on_stop)."""

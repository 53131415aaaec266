"""What the pure core asks the shell to do. Frozen, comparable: tests assert exact lists."""

from __future__ import annotations

from dataclasses import dataclass

from vpnd.core.events import TunnelKey


@dataclass(frozen=True)
class Initiate:
    """Ask charon to bring the tunnel's CHILD SA (and IKE SA) up."""

    tunnel: TunnelKey


@dataclass(frozen=True)
class Terminate:
    """Tear SAs down: one IKE SA by id, all of the tunnel's, or (child_id) only one CHILD SA."""

    tunnel: TunnelKey
    ike_id: int | None = None
    child_id: int | None = None


@dataclass(frozen=True)
class ReportTransition:
    """A tunnel changed state: one log event and one metric update."""

    tunnel: TunnelKey
    old: str
    new: str
    reason: str


@dataclass(frozen=True)
class SetActive:
    """Which tunnel of a connection carries traffic (None: none does).

    The route adapter turns it into routes (route mode), CHILD SA priorities (policy
    mode) or, in bgp mode with standby = "prepend", route-maps (allow-all for this tunnel's
    neighbor, prepend / lower local-preference for the others).
    """

    connection: str
    tunnel: str | None
    reason: str
    withdraw: bool = False          # both down with both_down = "withdraw"


@dataclass(frozen=True)
class RepairRoutes:
    connection: str
    reason: str


@dataclass(frozen=True)
class RepairInterface:
    tunnel: TunnelKey


@dataclass(frozen=True)
class SetBgpNeighbor:
    """Shut (enabled=False) or restore a tunnel's BGP neighbor in bgp mode."""

    tunnel: TunnelKey
    enabled: bool
    reason: str


Action = (
    Initiate | Terminate | ReportTransition | SetActive | RepairRoutes | RepairInterface
    | SetBgpNeighbor
)

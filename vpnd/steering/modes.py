"""Which steering a connection gets: the one place that maps a routing mode to its code."""

from __future__ import annotations

from vpnd.config.model import ConnectionConfig
from vpnd.steering.base import Services, Steering
from vpnd.steering.bgp import BgpSteering
from vpnd.steering.policy import PolicySteering
from vpnd.steering.route import RouteSteering

STEERING: dict[str, type[Steering]] = {
    "route": RouteSteering,
    "policy": PolicySteering,
    "bgp": BgpSteering,
}


def steering_for(conn: ConnectionConfig, services: Services) -> Steering:
    return STEERING[conn.routing](conn, services)

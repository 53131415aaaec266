"""Config builders for the core tests: a small dual-tunnel connection with overridable knobs."""

from __future__ import annotations

import ipaddress

from vpnd.config.model import (
    BgpConnectionConfig, Config, ConnectionConfig, DaemonConfig, FailoverConfig, HealthCheckConfig, Secret,
    TunnelConfig,
)
from vpnd.core.events import TunnelKey


def tunnel_cfg(i: int) -> TunnelConfig:
    return TunnelConfig(
        name=f"t{i}", local_address=ipaddress.IPv4Address("198.18.0.2"),
        remote_address=ipaddress.IPv4Address(f"198.18.0.{i}"), local_id="198.18.0.2",
        remote_id=f"198.18.0.{i}", psk=Secret("x"), interface=f"ipsec{i - 1}",
        if_id=41 + i, route_metric=99 + i,
    )


def connection(name: str = "c", *, routing: str = "route", tunnels: int = 2,
               health: bool = True, switch_route: bool = True, retries: int = 3,
               max_rtt_ms: float | None = None, max_loss_percent: float | None = None,
               standby: str | None = None, **failover: object) -> ConnectionConfig:
    """standby (bgp mode): the [connection.bgp] table's standby; None: no table at all.
    Parking (failover.park_dead_tunnel) is off unless asked for: the older scenarios judge
    the failover rules alone, the parking ones turn it on."""
    failover.setdefault("park_dead_tunnel", False)
    hc = HealthCheckConfig(
        destination=ipaddress.IPv4Address("10.0.0.1"), source=ipaddress.IPv4Address("10.1.0.1"),
        retries=retries, switch_route=switch_route, max_rtt_ms=max_rtt_ms,
        max_loss_percent=max_loss_percent,
    ) if health else None
    return ConnectionConfig(
        name=name, routing=routing,  # type: ignore[arg-type]
        local_networks=(ipaddress.IPv4Network("10.1.0.0/16"),),
        remote_networks=(ipaddress.IPv4Network("10.0.0.0/16"),),
        tunnels=tuple(tunnel_cfg(i) for i in range(1, tunnels + 1)),
        health_check=hc, failover=FailoverConfig(**failover),  # type: ignore[arg-type]
        bgp=BgpConnectionConfig(standby=standby) if standby else None,  # type: ignore[arg-type]
    )


def config(*connections: ConnectionConfig) -> Config:
    return Config(daemon=DaemonConfig(), connections=connections or (connection(),))


def key(tunnel: str = "t1", conn: str = "c") -> TunnelKey:
    return TunnelKey(conn, tunnel)

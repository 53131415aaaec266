"""What a tunnel's prober and interface are made from: one definition for the daemon that
builds them and for the reload plan that decides whether a change must rebuild them."""

from __future__ import annotations

from dataclasses import dataclass

from vpnd.config.model import ConnectionConfig, HealthKind, InterfaceKind, TunnelBgpConfig, TunnelConfig


@dataclass(frozen=True)
class ProbeSpec:
    kind: HealthKind
    destination: str
    source: str
    interface: str | None       # the tunnel's own interface; None in policy mode (no interfaces)
    interval: float
    timeout: float
    port: int | None
    # (interface, tunnel) of the connection's tunnels: which tunnel an answer came back
    # through (the cloud picks the return tunnel); () in policy mode (no interfaces)
    returns: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LinkSpec:
    interface: str
    kind: InterfaceKind
    if_id: int
    underlay: str | None
    bgp: TunnelBgpConfig | None  # its address goes on the interface


def probe_spec(conn: ConnectionConfig, t: TunnelConfig) -> ProbeSpec | None:
    """None when the connection has no health check. Per-tunnel probe paths win over the
    connection's (a probe target that only answers on its own tunnel)."""
    hc = conn.health_check
    if hc is None:
        return None
    returns = tuple((x.interface, x.name) for x in conn.tunnels) if conn.tunnel_interfaces else ()
    return ProbeSpec(hc.kind, str(t.probe_destination or hc.destination),
                     str(t.probe_source or hc.source),
                     t.interface if conn.tunnel_interfaces else None,
                     hc.interval, hc.timeout or hc.interval, hc.port, returns)


def link_spec(conn: ConnectionConfig, t: TunnelConfig) -> LinkSpec | None:
    """None when the connection's mode has no tunnel interfaces."""
    if not conn.tunnel_interfaces:
        return None
    return LinkSpec(t.interface, t.interface_kind, t.if_id, t.underlay, t.bgp)

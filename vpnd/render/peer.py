"""The cloud side of each connection: the mirror image of what vpnd configures.

Two forms from the same TOML:
- `peer_text`: the parameter sheet in the cloud console's field names (what "Download
  configuration" shows), to enter or check on the cloud side. The cloud's Local* fields are
  our remote ones and vice versa.
- `peer_vici_conns`/`peer_vici_secrets`/`peer_swanctl_text`/`peer_frr`: a simulated cloud
  gateway for the lab (a second charon and FRR configured as the responder), so the lab's
  cloud is derived from the config under test, never written by hand.
"""

from __future__ import annotations

from vpnd.config.model import Config, ConnectionConfig, TunnelConfig
from vpnd.render.frr import (
    ALLOW_ALL,
    Context,
    FrrConfig,
    Neighbor,
    bfd_context,
    bfd_profile_name,
    router_contexts,
)
from vpnd.render.swanctl import (
    MASK,
    RenderError,
    build_conn,
    conf_text,
    traffic_selectors,
    tunnel_index,
)

ROUTING_MODE = {
    "route": "Destination Routing Mode",
    "policy": "Protected Data Flows",
    "bgp": "Destination Routing Mode + BGP",
}


def peer_conn_name(connection_name: str, tunnel_name: str) -> str:
    """The simulated cloud's connection/child/secret name for one tunnel."""
    return f"cloud-{connection_name}-{tunnel_name}"


# --- the simulated cloud gateway (lab) -----------------------------------------------------

def peer_vici_conn(conn: ConnectionConfig, tunnel: TunnelConfig, if_id: int | None = None) -> dict:
    """One mirrored load-conn body: addresses, ids and traffic selectors swapped; a responder
    that never initiates (start_action none) and clears on DPD (dpd_action clear)."""
    local_ts, remote_ts = traffic_selectors(conn, tunnel)
    body = build_conn(
        conn, peer_conn_name(conn.name, tunnel.name),
        local_addr=str(tunnel.remote_address), remote_addr=str(tunnel.local_address),
        local_id=tunnel.remote_id, remote_id=tunnel.local_id,
        local_ts=remote_ts, remote_ts=local_ts,
        if_id=if_id,
        priority=tunnel_index(conn, tunnel) + 1 if conn.routing == "policy" else None,
    )
    # The cloud keeps one SA pair per tunnel: a new IKE SA from the same customer replaces
    # the old one (a retry that raced a slow answer must not leave a stale SA carrying the
    # replies). Safe only while each tunnel's identity pair is its own.
    pairs = [(t.local_id, t.remote_id) for t in conn.tunnels]
    if len(set(pairs)) == len(pairs):
        body["unique"] = "replace"
    return body


def peer_vici_conns(conn: ConnectionConfig, *, if_ids: dict[str, int] | None = None) -> dict[str, dict]:
    """Every tunnel's mirrored load-conn body by name; `if_ids` (tunnel name -> XFRM if_id on
    the cloud side) binds the cloud's SAs to its own interfaces, else none."""
    if_ids = if_ids or {}
    return {
        peer_conn_name(conn.name, t.name): peer_vici_conn(conn, t, if_ids.get(t.name))
        for t in conn.tunnels
    }


def peer_vici_secrets(conn: ConnectionConfig) -> list[dict]:
    """load-shared bodies for the cloud side (real keys: they go to the lab's charon)."""
    return [
        {
            "id": peer_conn_name(conn.name, t.name),
            "type": "IKE",
            "data": t.psk.reveal(),
            "owners": list(dict.fromkeys((t.local_id, t.remote_id))),
        }
        for t in conn.tunnels
    ]


def peer_swanctl_text(conn: ConnectionConfig, *, if_ids: dict[str, int] | None = None,
                      show_secrets: bool = False) -> str:
    """The cloud side as swanctl.conf (`swanctl --load-all --file` loads it with show_secrets)."""
    return conf_text(peer_vici_conns(conn, if_ids=if_ids), peer_vici_secrets(conn), show_secrets)


def peer_frr(conn: ConnectionConfig) -> FrrConfig:
    """The cloud's BGP: router bgp <peer_asn>, our tunnel addresses as neighbors, the VPC
    (remote_networks) announced. `no bgp network import-check`: the simulated VPC's prefixes
    need not be in the lab namespace's routing table to be announced."""
    if conn.routing != "bgp" or conn.bgp is None:
        raise RenderError(f"connection {conn.name}: routing = {conn.routing!r}; the cloud side "
                          "runs BGP only with routing = \"bgp\"")
    bgp = conn.bgp
    tunnels = [t for t in conn.tunnels if t.bgp is not None]
    if not tunnels:
        raise RenderError(f"connection {conn.name}: no tunnel has a [connection.tunnel.bgp] table")
    contexts = [Context(("bgp route-map delay-timer 0",)), Context((f"route-map {ALLOW_ALL} permit 1",))]
    if bgp.bfd.enabled:
        contexts.append(bfd_context(conn))
    neighbors = [
        Neighbor(str(t.bgp.local_ip), bgp.local_asn, bgp.keepalive, bgp.hold,
                 bfd_profile=bfd_profile_name(conn) if bgp.bfd.enabled else None)
        for t in tunnels
    ]
    contexts += router_contexts(
        bgp.peer_asn, str(tunnels[0].bgp.peer_ip), neighbors,
        [str(n) for n in conn.remote_networks], bgp.maximum_paths,
        extra=("no bgp network import-check",))
    return FrrConfig(tuple(contexts))


# --- the console sheet ------------------------------------------------------------------------

def _nets(nets) -> str:
    return ", ".join(str(n) for n in nets)


def _field(lines: list[str], indent: int, name: str, value) -> None:
    lines.append(f"{'  ' * indent}{name + ':':<28}{value}")


def connection_sheet(conn: ConnectionConfig, show_secrets: bool = False) -> str:
    """One connection's cloud-side parameters, in the console's field names."""
    lines = [f"IPsec-VPN connection {conn.name!r} (cloud side; must match vpnd's exactly)"]
    _field(lines, 1, "Routing Mode", ROUTING_MODE[conn.routing])
    _field(lines, 1, "Local Network", _nets(conn.remote_networks))
    _field(lines, 1, "Remote Network", _nets(conn.local_networks))
    _field(lines, 1, "Enable BGP", "yes" if conn.routing == "bgp" else "no")
    if conn.bgp is not None and conn.routing == "bgp":
        _field(lines, 1, "Local ASN", conn.bgp.peer_asn)
        _field(lines, 1, "Customer Gateway ASN", conn.bgp.local_asn)
        _field(lines, 1, "BFD", "enabled" if conn.bgp.bfd.enabled else "disabled")
    hc = conn.health_check
    if hc is None:
        _field(lines, 1, "Health Check", "disabled")
    else:
        _field(lines, 1, "Health Check", "enabled")
        _field(lines, 2, "Source IP", hc.destination)
        _field(lines, 2, "Destination IP", hc.source)
        _field(lines, 2, "Retry Interval (seconds)", f"{hc.interval:g}")
        _field(lines, 2, "Number of Retries", hc.retries)
        _field(lines, 2, "Switch Route", "yes" if hc.switch_route else "no")
    for i, t in enumerate(conn.tunnels):
        role = "active" if i == 0 else "standby"
        lines.append("")
        lines.append(f"  Tunnel {i + 1} ({t.name}, {role})")
        _field(lines, 2, "Gateway IP Address", t.remote_address)
        _field(lines, 2, "Customer Gateway IP", t.local_address)
        _field(lines, 2, "Pre-shared Key", t.psk.reveal() if show_secrets else MASK)
        lines.append("    IKE Configurations")
        ike = conn.ike
        _field(lines, 3, "Version", f"ikev{ike.version}")
        _field(lines, 3, "Negotiation Mode", ike.mode)
        _field(lines, 3, "Encryption Algorithm", ike.encryption)
        _field(lines, 3, "Authentication Algorithm", ike.integrity)
        _field(lines, 3, "DH Group", ike.dh_group)
        _field(lines, 3, "SA Life Cycle (seconds)", ike.lifetime)
        _field(lines, 3, "LocalId", t.remote_id)
        _field(lines, 3, "RemoteId", t.local_id)
        lines.append("    IPsec Configurations")
        ipsec = conn.ipsec
        _field(lines, 3, "Encryption Algorithm", ipsec.encryption)
        _field(lines, 3, "Authentication Algorithm", ipsec.integrity)
        _field(lines, 3, "DH Group", ipsec.pfs_group)
        _field(lines, 3, "SA Life Cycle (seconds)", ipsec.lifetime)
        _field(lines, 2, "DPD", "enabled" if conn.dpd_delay > 0 else "disabled")
        _field(lines, 2, "NAT Traversal", "enabled" if conn.nat_traversal else "disabled")
        if conn.routing == "bgp" and t.bgp is not None:
            lines.append("    BGP Configuration")
            _field(lines, 3, "Tunnel CIDR Block", t.bgp.tunnel_cidr)
            _field(lines, 3, "Local BGP IP Address", t.bgp.peer_ip)
            _field(lines, 3, "Peer BGP IP Address", t.bgp.local_ip)
    return "\n".join(lines) + "\n"


def peer_text(config: Config, show_secrets: bool = False) -> str:
    """Every connection's cloud-side sheet."""
    return "\n".join(connection_sheet(c, show_secrets) for c in config.connections)

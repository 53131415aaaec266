"""The cloud side of each connection, as the operator enters it: `peer_text` is the parameter
sheet in the cloud console's field names (what "Download configuration" shows), to enter or
check on the cloud side. The cloud's Local* fields are our remote ones and vice versa.

(The lab's simulated cloud, a responder charon and FRR derived from the same TOML, is rendered
by the development package vpnd_lab, module vpnd_lab.cloud.)
"""

from __future__ import annotations

from vpnd.config.model import Config, ConnectionConfig
from vpnd.render.swanctl import MASK

ROUTING_MODE = {
    "route": "Destination Routing Mode",
    "policy": "Protected Data Flows",
    "bgp": "Destination Routing Mode + BGP",
}


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
    chc = conn.cloud_health_check
    if chc is not None:             # as the operator entered it: [connection.cloud_health_check]
        _field(lines, 1, "Health Check", "enabled")
        _field(lines, 2, "Destination IP", chc.destination_ip)
        _field(lines, 2, "Source IP", chc.source_ip)
        _field(lines, 2, "Retry Interval (seconds)", chc.interval)
        _field(lines, 2, "Number of Retries", chc.retries)
        _field(lines, 2, "Switch Route", "yes" if chc.switch_route else "no")
        note = (f"{chc.source_ip}/32 via the active tunnel (vpnd adds it)"
                if conn.routing == "route" else f"{chc.source_ip}/32 via the connection")
        _field(lines, 2, "On-premises route", note)
    elif hc is None:
        _field(lines, 1, "Health Check", "disabled")
    else:
        # not declared: suggest the mirror of vpnd's own probes, within what the console takes
        # (whole seconds, 1..60: vpnd probes far faster than the cloud can)
        _field(lines, 1, "Health Check", "enabled (suggested; not declared in "
               "[connection.cloud_health_check])")
        _field(lines, 2, "Source IP", hc.destination)
        _field(lines, 2, "Destination IP", hc.source)
        _field(lines, 2, "Retry Interval (seconds)", min(60, max(1, round(hc.interval))))
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

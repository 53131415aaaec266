"""The lab's simulated cloud gateway: the mirror image of what vpnd configures, from the same
TOML, so the lab's cloud is derived from the config under test, never written by hand.

`peer_vici_conns`/`peer_vici_secrets`/`peer_swanctl_text` configure a second charon as the
responder; `peer_frr` the cloud's FRR (BGP mode). What an operator types into the real cloud
console is `vpnd render peer` (vpnd.render.peer), which stays in the product.
"""

from __future__ import annotations

from vpnd.config.model import ConnectionConfig, TunnelConfig
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
    RenderError,
    build_conn,
    conf_text,
    traffic_selectors,
    tunnel_index,
)


def peer_conn_name(connection_name: str, tunnel_name: str) -> str:
    """The simulated cloud's connection/child/secret name for one tunnel."""
    return f"cloud-{connection_name}-{tunnel_name}"


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

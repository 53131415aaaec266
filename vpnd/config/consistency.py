"""The rules between keys: a value that is fine alone but not with another one.

Why a module of its own: these rules read the already-typed model (or the values a section
reader has just read), never raw TOML, and only report; they are the part of validation that
knows what the cloud's dual-tunnel mode and charon need of a whole connection or of all of
them (two tunnels that differ, disjoint protected networks, several CIDRs only with IKEv2,
unique interfaces and identities). Single values are `vpnd.config.rules`'s.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from vpnd.config import rules
from vpnd.config.model import (
    BgpConnectionConfig,
    ConnectionConfig,
    HealthCheckConfig,
    IkeConfig,
    Secret,
    TunnelBgpConfig,
)
from vpnd.config.reader import Reader

# --- within one table: called by the section reader right after it read the table ---------


def ike_rules(run: Reader, ike: IkeConfig, p: str) -> None:
    if ike.mode == "aggressive" and ike.version == 2:
        run.warn(f"{p}.mode", "aggressive mode only exists in IKEv1; ignored with version = 2")


def health_check_rules(run: Reader, hc: HealthCheckConfig, port_given: bool, p: str) -> None:
    """Probe kind and port, timeout against interval and RTT limit, distinct addresses."""
    if hc.kind is not None and (hc.port is not None or not port_given):
        problem = rules.health_port_problem(hc.kind, hc.port)
        if problem:
            run.error(f"{p}.port", problem)
    if hc.timeout is not None and hc.interval is not None and hc.timeout > hc.interval:
        run.warn(f"{p}.timeout", f"timeout {hc.timeout:g} s is longer than interval "
                 f"{hc.interval:g} s: probes overlap and a failure is seen late")
    if (hc.max_rtt_ms is not None and hc.timeout is not None
            and hc.max_rtt_ms > hc.timeout * 1000):
        run.warn(f"{p}.max_rtt_ms", "max_rtt_ms is above the probe timeout: it never trips")
    if hc.destination is not None and hc.destination == hc.source:
        run.error(f"{p}.destination", "destination and source are the same address")


def bgp_rules(run: Reader, bgp: BgpConnectionConfig, p: str) -> None:
    """Timers (RFC 4271), eBGP's two ASNs, ECMP that has paths to use."""
    if bgp.hold is not None and bgp.hold != 0:
        if bgp.hold < rules.HOLD_MIN_NONZERO:
            run.error(f"{p}.hold", f"hold {bgp.hold} must be 0 (no keepalives) or at least "
                      f"{rules.HOLD_MIN_NONZERO} seconds (RFC 4271)")
        elif bgp.keepalive is not None and bgp.hold <= bgp.keepalive:
            run.error(f"{p}.hold", f"hold {bgp.hold} must be greater than keepalive "
                      f"{bgp.keepalive}")
    if bgp.local_asn is not None and bgp.local_asn == bgp.peer_asn:
        run.error(f"{p}.local_asn", f"local_asn equals peer_asn ({bgp.local_asn}): the "
                  "cloud peers over eBGP, use your own ASN")
    if bgp.standby == "ecmp" and bgp.maximum_paths == 1:
        run.warn(f"{p}.maximum_paths", "standby = \"ecmp\" with maximum_paths = 1 uses "
                 "one tunnel only")


def tunnel_bgp_rules(run: Reader, tb: TunnelBgpConfig, p: str) -> None:
    """Both BGP addresses are distinct hosts of the tunnel's CIDR."""
    if tb.tunnel_cidr is not None:
        for key, ip in (("local_ip", tb.local_ip), ("peer_ip", tb.peer_ip)):
            if ip is not None:
                problem = rules.tunnel_host_problem(ip, tb.tunnel_cidr)
                if problem:
                    run.error(f"{p}.{key}", problem)
    if tb.local_ip is not None and tb.local_ip == tb.peer_ip:
        run.error(f"{p}.peer_ip", "local_ip and peer_ip must be different addresses")


def tunnel_endpoint_rules(run: Reader, local: Any, remote: Any, p: str) -> None:
    if local is not None and local == remote:
        run.error(f"{p}.remote_address", "remote_address equals local_address")


# --- a whole connection, and all connections together -----------------------------------


def connection_rules(run: Reader, c: ConnectionConfig, p: str) -> None:
    tunnel_pair_rules(run, c, p)
    network_rules(run, c, p)
    per_tunnel_rules(run, c, p)
    health_rules(run, c, p)
    cloud_health_rules(run, c, p)


def tunnel_pair_rules(run: Reader, c: ConnectionConfig, p: str) -> None:
    """The cloud's dual-tunnel mode: two tunnels that differ where it matters."""
    tunnels = c.tunnels
    if not tunnels:
        run.error(f"{p}.tunnel", "no tunnels: a connection needs two (tunnel 1 active, "
                  "tunnel 2 standby)")
    elif len(tunnels) == 1:
        run.warn(f"{p}.tunnel", "legacy single-tunnel connection: no redundancy; the "
                 "cloud's dual-tunnel mode uses two tunnels")
    elif len(tunnels) > 2:
        run.error(f"{p}.tunnel", f"{len(tunnels)} tunnels: a connection has exactly two "
                  "(tunnel 1 active, tunnel 2 standby)")
    if len(tunnels) != 2:
        return
    t1, t2 = tunnels
    q = f"{p}.tunnel[1]"
    if t1.remote_address is not None and t1.remote_address == t2.remote_address:
        run.error(f"{q}.remote_address", f"both tunnels go to {t1.remote_address}; the "
                  "cloud gives each tunnel its own IPsec address")
    if t1.name is not None and t1.name == t2.name:
        run.error(f"{q}.name", f"tunnel name {t1.name!r} used twice in {c.name!r}")
    if t1.route_metric is not None and t1.route_metric == t2.route_metric:
        run.error(f"{q}.route_metric", f"both tunnels use metric {t1.route_metric}: the "
                  "standby route must have a different (higher) metric")
    elif (t1.route_metric is not None and t2.route_metric is not None
          and t2.route_metric < t1.route_metric):
        run.warn(f"{q}.route_metric", "tunnel 2 has the lower metric, so it is preferred "
                 "when both are up")
    if (t1.bgp is not None and t2.bgp is not None and t1.bgp.tunnel_cidr is not None
            and t1.bgp.tunnel_cidr == t2.bgp.tunnel_cidr):
        run.error(f"{q}.bgp.tunnel_cidr", f"both tunnels use {t1.bgp.tunnel_cidr}; the "
                  "two tunnels must use different tunnel CIDR blocks")


def network_rules(run: Reader, c: ConnectionConfig, p: str) -> None:
    """Protected networks: present, disjoint, few enough, one per side with IKEv1."""
    local, remote = c.local_networks, c.remote_networks
    for key, nets in (("local_networks", local), ("remote_networks", remote)):
        if nets is not None and not nets:
            run.error(f"{p}.{key}", "needs at least one CIDR")
        for i, a in enumerate(nets or ()):
            for b in nets[i + 1:]:
                if a.overlaps(b):
                    run.warn(f"{p}.{key}", f"{a} and {b} overlap")
        if c.ike.version == 1 and nets and len(nets) > 1:
            run.error(f"{p}.ike.version", f"{key} has {len(nets)} CIDRs; more than one "
                      "network per side requires version = 2 (IKEv2)")
    if remote is not None and len(remote) > rules.MAX_REMOTE_NETWORKS:
        run.error(f"{p}.remote_networks", f"{len(remote)} CIDRs; the cloud accepts at most "
                  f"{rules.MAX_REMOTE_NETWORKS}")
    for r in remote or ():
        for lo in local or ():
            if r.overlaps(lo):
                run.error(f"{p}.remote_networks", f"{r} overlaps local network {lo}")


def per_tunnel_rules(run: Reader, c: ConnectionConfig, p: str) -> None:
    for i, t in enumerate(c.tunnels):
        q = f"{p}.tunnel[{i}]"
        if c.ike.version == 1:
            for key in ("local_ts", "remote_ts"):
                ts = getattr(t, key)
                if ts and len(ts) > 1:
                    run.error(f"{q}.{key}", "more than one traffic selector requires "
                              "ike.version = 2")
        for r in c.remote_networks or ():
            if t.remote_address is not None and t.remote_address in r:
                run.warn(f"{p}.remote_networks", f"{r} contains {q}.remote_address "
                         f"{t.remote_address}: its IKE/ESP packets would be routed into "
                         "the tunnel unless a more specific route exists")
        if c.ike.version == 1 and c.ike.mode == "main":
            for key in ("local_id", "remote_id"):
                ident = getattr(t, key)
                if isinstance(ident, str) and rules.is_fqdn_identity(ident):
                    run.warn(f"{q}.{key}", "an FQDN identity with IKEv1 main mode: the cloud "
                             "recommends mode = \"aggressive\"")
        if (c.nat_traversal is False and t.local_address is not None
                and t.remote_address is not None and rules.is_nat_private(t.local_address)
                and not rules.is_nat_private(t.remote_address)):
            run.warn(f"{p}.nat_traversal", f"{q}.local_address {t.local_address} is private "
                     "and the peer public: behind NAT the tunnel needs nat_traversal = true")


def health_rules(run: Reader, c: ConnectionConfig, p: str) -> None:
    """Probes must cross the tunnel: not to an endpoint, between the protected networks."""
    hc, tunnels = c.health_check, c.tunnels
    if hc is None:
        if c.routing in ("route", "policy") and len(tunnels) == 2:
            run.warn(f"{p}.health_check", "no health check: failover then waits for "
                     "IKE/DPD to notice a dead tunnel (tens of seconds)")
        return
    hp = f"{p}.health_check"
    if hc.destination is not None:
        endpoints = {a for t in tunnels for a in (t.local_address, t.remote_address)}
        if hc.destination in endpoints:
            run.error(f"{hp}.destination", f"{hc.destination} is a tunnel endpoint: "
                      "probes would test the underlay, not the tunnel")
        inside = list(c.remote_networks or ()) + [
            t.bgp.tunnel_cidr for t in tunnels if t.bgp and t.bgp.tunnel_cidr]
        if c.remote_networks is not None and not any(hc.destination in n for n in inside):
            run.warn(f"{hp}.destination", f"{hc.destination} is not inside "
                     "remote_networks: probes may not go through the tunnel")
    local = c.local_networks
    if hc.source is not None and local and not any(hc.source in n for n in local):
        run.warn(f"{hp}.source", f"{hc.source} is not inside local_networks: replies "
                 "may not come back through the tunnel")
    if hc.kind == "tcp" and c.routing != "policy":
        run.warn(f"{hp}.kind", "tcp probes are bound to each tunnel's interface, so the "
                 "answer must come back through the same tunnel; a cloud that returns "
                 "traffic through its active tunnel makes the standby look dead "
                 "(use kind = \"icmp\" then)")
    if c.routing == "policy" and len(tunnels) > 1:
        policy_probe_rules(run, c, p)


def cloud_health_rules(run: Reader, c: ConnectionConfig, p: str) -> None:
    """The cloud's check pings from its side (source_ip) to ours (destination_ip) through the
    connection; which side each address is on is what the console field names say."""
    chc = c.cloud_health_check
    if chc is None:
        return
    cp = f"{p}.cloud_health_check"
    src, dst = chc.source_ip, chc.destination_ip
    if src is not None and src == dst:
        run.error(f"{cp}.source_ip", "source_ip and destination_ip are the same address")
    endpoints = {a for t in c.tunnels for a in (t.local_address, t.remote_address)}
    for key, ip in (("source_ip", src), ("destination_ip", dst)):
        if ip is not None and ip in endpoints:
            run.error(f"{cp}.{key}", f"{ip} is a tunnel endpoint: the cloud's check must "
                      "cross the tunnel")
        if ip is not None and (ip.is_unspecified or ip.is_multicast or ip.is_loopback
                               or ip == ipaddress.IPv4Address("255.255.255.255")):
            run.error(f"{cp}.{key}", f"{ip} cannot be a health-check address")
    local = c.local_networks or ()
    if src is not None and any(src in n for n in local):
        run.error(f"{cp}.source_ip", f"{src} is inside local_networks: source_ip is the "
                  "cloud-side address the cloud's check comes from (the console's Source IP)")
    if dst is not None and local and not any(dst in n for n in local):
        run.warn(f"{cp}.destination_ip", f"{dst} is not inside local_networks: the cloud's "
                 "check may not reach it through the tunnel")
    if c.routing == "policy" and src is not None and c.remote_networks is not None \
            and not any(src in n for n in c.remote_networks):
        run.warn(f"{cp}.source_ip", f"{src} is not inside remote_networks: in policy mode "
                 "the traffic selectors must cover it (vpnd adds no route there)")


def policy_probe_rules(run: Reader, c: ConnectionConfig, p: str) -> None:
    """Policy mode: both tunnels carry the same flows, so a probe path shared by the
    tunnels crosses only the one carrying traffic (docs/policy-mode.md)."""
    hc = c.health_check
    paths = [(t.probe_source or hc.source, t.probe_destination or hc.destination)
             for t in c.tunnels]
    if len(set(paths)) < len(paths):
        run.warn(f"{p}.health_check", "routing = \"policy\": the tunnels share one probe "
                 "path, so probes test only the tunnel carrying traffic and the standby's "
                 "failure or recovery goes unseen; give each tunnel probe_source and "
                 "probe_destination inside its own local_ts / remote_ts")
    for ti, t in enumerate(c.tunnels):
        q = f"{p}.tunnel[{ti}]"
        for key, addr, nets in (("probe_source", t.probe_source, t.local_ts),
                                ("probe_destination", t.probe_destination, t.remote_ts)):
            if addr is not None and nets and not any(addr in n for n in nets):
                side = "local_ts" if key == "probe_source" else "remote_ts"
                run.warn(f"{q}.{key}", f"{addr} is not inside {q}.{side}: the probe "
                         "would not cross this tunnel's CHILD SA")


def across_connections(run: Reader, conns: tuple[ConnectionConfig, ...]) -> None:
    names: dict[str, int] = {}
    interfaces: dict[str, str] = {}
    if_ids: dict[int, str] = {}
    endpoints: dict[tuple[Any, Any], str] = {}
    cidrs: dict[Any, str] = {}
    for ci, c in enumerate(conns):
        if c.name is not None:
            if c.name in names:
                run.error(f"connection[{ci}].name", f"{c.name!r} is already the name of "
                          f"connection[{names[c.name]}]")
            else:
                names[c.name] = ci
        for ti, t in enumerate(c.tunnels):
            q = f"connection[{ci}].tunnel[{ti}]"
            if t.interface is not None:
                if t.interface in interfaces:
                    run.error(f"{q}.interface", f"{t.interface!r} is already used by "
                              f"{interfaces[t.interface]}")
                else:
                    interfaces[t.interface] = q
            if t.if_id is not None:
                if t.if_id in if_ids:
                    run.error(f"{q}.if_id", f"{t.if_id} is already used by {if_ids[t.if_id]}")
                else:
                    if_ids[t.if_id] = q
            if t.local_address is not None and t.remote_address is not None:
                key = (t.local_address, t.remote_address)
                if key in endpoints and not endpoints[key].startswith(f"connection[{ci}]."):
                    run.error(f"{q}.remote_address", f"{t.local_address} -> "
                              f"{t.remote_address} is already {endpoints[key]}: charon "
                              "could not tell the two IKE SAs apart")
                endpoints.setdefault(key, q)
            if t.bgp is not None and t.bgp.tunnel_cidr is not None:
                cidr = t.bgp.tunnel_cidr
                if cidr in cidrs and not cidrs[cidr].startswith(f"connection[{ci}]."):
                    run.error(f"{q}.bgp.tunnel_cidr", f"{cidr} is already used by "
                              f"{cidrs[cidr]}")
                cidrs.setdefault(cidr, q)
    id_pairs: dict[tuple[str, str], tuple[str, Secret]] = {}
    for ci, c in enumerate(conns):
        for ti, t in enumerate(c.tunnels):
            q = f"connection[{ci}].tunnel[{ti}]"
            if t.local_id and t.remote_id and t.psk is not None:
                seen = id_pairs.setdefault((t.local_id, t.remote_id), (q, t.psk))
                if seen[1] != t.psk:
                    run.error(f"{q}.remote_id", f"{seen[0]} has the same local_id and "
                              "remote_id but another key: charon picks the key by these "
                              "identities, so set distinct ids")
            if t.underlay is not None and t.underlay in interfaces:
                run.error(f"{q}.underlay",
                          f"{t.underlay!r} is a tunnel interface, not an underlay")

"""The FRR configuration vpnd applies in BGP mode, as ordered contexts FRR's reload tool knows.

The value is a list of `Context(keys, lines)` shaped like FRR's tools/frr-reload.py (keys: the
context's header lines, outermost first; lines: the commands inside), so the FRR adapter can
apply it by difference and `vpnd render frr` prints it with `.text()`.

Compared with the vendor's procedure (the vendor's strongSwan guide) it adds:
- `bgp route-map delay-timer 0`, and route-maps before `router bgp`: otherwise FRR holds the
  first updates for 5 s (lab notes).
- standby = "prepend": every tunnel but the active one gets an outbound route-map that
  prepends our ASN `prepend_count` times (the cloud prefers the active tunnel for return
  traffic) and an inbound one with local-preference 50 (we prefer it too); the active tunnel
  gets allow-all. Which tunnel is active is the failover core's SetActive (`active`); the
  rendering without one (`vpnd render frr`, vpnd's start) makes tunnel 1 active.
  "ecmp" keeps both equal (allow-all) whatever is active.
- return_path = "more-specific" (with "prepend", the default): the cloud's way back moves at
  once. Without it, a failover away from a dead tunnel 1 changes nothing the cloud can hear:
  tunnel 1's withdraw (the neighbor shutdown, its prepend) cannot cross the dead tunnel, so
  the cloud keeps tunnel 1's path, equal to tunnel 2's now un-prepended one, and with the
  vendor's `maximum-paths 32` hashes part of the return traffic into tunnel 1 until its hold
  timer expires (30 s with timers 10/30). So while a tunnel other than tunnel 1 is active,
  `network` lines announce each configured network's two halves (`more_specifics`: a /n as
  two /n+1; a half that is itself a configured network is split in its own turn; a /32 has
  none and keeps waiting for the hold timer). They reach the active tunnel's neighbor only:
  its out route-map is allow-all, and the standby out route-map of every other neighbor
  matches the prefix-list `vpnd-<connection>-standby-out`, which denies exactly those halves
  and permits the rest (`seq 4294967295 permit any`, so the list's last entry is always the
  catch-all). The cloud routes the halves by longest match over the active tunnel, whatever
  tunnel 1's stale paths say. Tunnel 1 never gets them: in steady state they do not exist
  (nothing stale for a dead tunnel 1 to hold at the cloud), and while it is standby its
  route-map denies them. Failback to tunnel 1 withdraws them (over the live active tunnel)
  before the route-maps swap back; the order of both moves is vpnd.frr.bgp's. A failure of
  the tunnel carrying them (both tunnels failing in turn) leaves the cloud on the stale
  halves until that session's hold timer: BFD bounds it. With several BGP connections the
  halves of one, like its networks, are announced to the others' active neighbors too (one
  `router bgp`).
- BFD when enabled: one profile per connection with its intervals, `neighbor X bfd profile P`
  (a profile applies to whatever session bgpd asks bfdd for; no peer keys to match).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from vpnd.config.model import Config, ConnectionConfig
from vpnd.render.swanctl import RenderError

ALLOW_ALL = "allow-all"
STANDBY_LOCAL_PREFERENCE = 50

_BLOCKS = ("router ", "route-map ", "bfd", "profile ", "peer ", "address-family ", "interface ")


@dataclass(frozen=True)
class Context:
    """One FRR context: header lines (outermost first) and the commands inside it.

    A single global command is a context with no lines that is not a block
    (`bgp route-map delay-timer 0`), as in frr-reload.py.
    """

    keys: tuple[str, ...]
    lines: tuple[str, ...] = ()

    @property
    def block(self) -> bool:
        return self.keys[-1].startswith(_BLOCKS)


@dataclass(frozen=True)
class FrrConfig:
    contexts: tuple[Context, ...]

    def entries(self) -> list[tuple[tuple[str, ...], str | None]]:
        """Every (context keys, line) in order, (keys, None) for a context itself: the unit
        an adapter diffs (as frr-reload.py does) to add and remove only what changed."""
        out: list[tuple[tuple[str, ...], str | None]] = []
        for ctx in self.contexts:
            out.append((ctx.keys, None))
            out += [(ctx.keys, line) for line in ctx.lines]
        return out

    def text(self) -> str:
        """frr.conf / vtysh text: nested contexts indented, each block closed by exit."""
        out: list[str] = []
        open_top: str | None = None
        for ctx in self.contexts:
            if len(ctx.keys) == 1:
                if open_top is not None:
                    out.append("exit")
                    open_top = None
                out.append(ctx.keys[0])
                out += [f" {line}" for line in ctx.lines]
                if ctx.block:
                    open_top = ctx.keys[0]
            else:
                if open_top != ctx.keys[0]:
                    if open_top is not None:
                        out.append("exit")
                    out.append(ctx.keys[0])
                    open_top = ctx.keys[0]
                out.append(f" {ctx.keys[1]}")
                out += [f"  {line}" for line in ctx.lines]
                end = "exit-address-family" if ctx.keys[1].startswith("address-family") else "exit"
                out.append(f" {end}")
        if open_top is not None:
            out.append("exit")
        return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Neighbor:
    """One BGP session as the router block needs it."""

    peer: str
    remote_asn: int
    keepalive: int
    hold: int
    route_map_in: str = ALLOW_ALL
    route_map_out: str = ALLOW_ALL
    bfd_profile: str | None = None


def bfd_profile_name(conn: ConnectionConfig) -> str:
    return f"vpnd-{conn.name}"


def standby_route_maps(conn: ConnectionConfig) -> tuple[str, str]:
    """(in, out) route-map names for the tunnels that are not active, in prepend mode."""
    return f"vpnd-{conn.name}-standby-in", f"vpnd-{conn.name}-standby-out"


def bfd_context(conn: ConnectionConfig) -> Context:
    bfd = conn.bgp.bfd
    return Context(("bfd", f"profile {bfd_profile_name(conn)}"), (
        f"receive-interval {bfd.receive_interval_ms}",
        f"transmit-interval {bfd.transmit_interval_ms}",
        f"detect-multiplier {bfd.detect_multiplier}",
    ))


def router_contexts(
    asn: int, router_id: str, neighbors: list[Neighbor], networks: list[str],
    maximum_paths: int, extra: tuple[str, ...] = (),
) -> list[Context]:
    """`router bgp` and its IPv4 unicast address family, in the vendor's order."""
    top: list[str] = [f"bgp router-id {router_id}", *extra]
    af: list[str] = [f"network {n}" for n in networks]
    for n in neighbors:
        top.append(f"neighbor {n.peer} remote-as {n.remote_asn}")
        top.append(f"neighbor {n.peer} timers {n.keepalive} {n.hold}")
        if n.bfd_profile:
            top.append(f"neighbor {n.peer} bfd profile {n.bfd_profile}")
    for n in neighbors:
        af += [
            f"neighbor {n.peer} soft-reconfiguration inbound",
            f"neighbor {n.peer} route-map {n.route_map_in} in",
            f"neighbor {n.peer} route-map {n.route_map_out} out",
        ]
    af.append(f"maximum-paths {maximum_paths}")
    head = f"router bgp {asn}"
    return [Context((head,), tuple(top)), Context((head, "address-family ipv4 unicast"), tuple(af))]


def bgp_connections(config: Config) -> list[ConnectionConfig]:
    conns = [c for c in config.connections if c.routing == "bgp" and c.bgp is not None]
    if not conns:
        modes = ", ".join(f"{c.name}: routing = {c.routing!r}" for c in config.connections)
        raise RenderError(
            f"no connection uses routing = \"bgp\" ({modes}); vpnd only drives FRR in BGP mode")
    return conns


def more_specifics(conn: ConnectionConfig) -> list[str]:
    """The halves of the connection's announced networks (a /n as two /n+1) that are not
    configured networks themselves: what the return path is steered with. A /32 has none."""
    nets = list(dict.fromkeys(conn.bgp.networks or conn.local_networks))
    out: list[str] = []
    for n in nets:
        if n.prefixlen >= 32:
            continue
        for half in n.subnets(prefixlen_diff=1):
            if half not in nets and str(half) not in out:
                out.append(str(half))
    return out


def returns(conn: ConnectionConfig) -> bool:
    """True when vpnd steers the cloud's return path with more-specifics."""
    return steered(conn) and conn.bgp.return_path == "more-specific"


def return_networks(config: Config, active: Mapping[str, str | None] | None) -> list[str]:
    """The more-specifics announced for an assignment: those of every steering connection
    whose active tunnel is not tunnel 1 (none in steady state)."""
    out: list[str] = []
    for c in bgp_connections(config):
        if returns(c) and active_tunnel(c, active) != c.tunnels[0].name:
            out += [n for n in more_specifics(c) if n not in out]
    return out


def return_path_notes(config: Config) -> str:
    """`!` comment lines for `vpnd render frr`: what a failover adds (the halves are not in
    the steady-state rendering), so the printed config says all vpnd will do."""
    out: list[str] = []
    for c in bgp_connections(config):
        if not returns(c):
            continue
        others = ", ".join(t.name for t in c.tunnels[1:])
        out.append(f"! {c.name}: return_path = \"more-specific\": while {others} is active, vpnd adds "
                   "to address-family ipv4 unicast")
        out.append("! (announced to that tunnel's neighbor only; withdrawn on failback):")
        halves = more_specifics(c)
        out += [f"!  network {n}" for n in halves] or ["!  nothing: every network is a /32"]
    return "".join(line + "\n" for line in out)


def standby_prefix_list(conn: ConnectionConfig) -> list[str]:
    """`ip prefix-list` lines the standby out route-map matches: deny the more-specifics,
    permit the rest (the catch-all at the highest sequence number, so it is always last)."""
    name = standby_route_maps(conn)[1]
    lines = [f"ip prefix-list {name} seq {5 * (i + 1)} deny {n}"
             for i, n in enumerate(more_specifics(conn))]
    return lines + [f"ip prefix-list {name} seq 4294967295 permit any"]


def steered(conn: ConnectionConfig) -> bool:
    """True when route-maps decide which tunnel carries traffic (standby = "prepend")."""
    return conn.bgp is not None and conn.bgp.standby == "prepend" and len(conn.tunnels) > 1


def active_tunnel(conn: ConnectionConfig, active: Mapping[str, str | None] | None) -> str:
    """The tunnel that gets allow-all: the core's choice when it names one of ours, else
    tunnel 1 (the rendered default, so a vpnd restart changes nothing)."""
    names = [t.name for t in conn.tunnels]
    chosen = (active or {}).get(conn.name)
    return chosen if chosen in names else names[0]


def neighbor_route_maps(conn: ConnectionConfig,
                        active: Mapping[str, str | None] | None = None) -> dict[str, tuple[str, str]]:
    """Peer IP -> (in, out) route-map names for the connection's neighbors."""
    current = active_tunnel(conn, active)
    out: dict[str, tuple[str, str]] = {}
    for t in conn.tunnels:
        if t.bgp is None:
            continue
        standby = steered(conn) and t.name != current
        out[str(t.bgp.peer_ip)] = standby_route_maps(conn) if standby else (ALLOW_ALL, ALLOW_ALL)
    return out


def frr_config(config: Config, active: Mapping[str, str | None] | None = None) -> FrrConfig:
    """Our side: one `router bgp <local_asn>` with both tunnels' cloud peers as neighbors.

    `active`: connection name -> the tunnel carrying traffic (the core's SetActive); a
    connection missing from it has tunnel 1 active."""
    conns = bgp_connections(config)
    asns = {c.bgp.local_asn for c in conns}
    if len(asns) > 1:
        raise RenderError(
            f"connections use different bgp.local_asn values {sorted(asns)}; FRR runs one "
            "BGP instance per VRF, so every BGP connection must share local_asn")
    first = conns[0]
    contexts = [Context(("bgp route-map delay-timer 0",)), Context((f"route-map {ALLOW_ALL} permit 1",))]
    neighbors: list[Neighbor] = []
    networks: list[str] = []
    for c in conns:
        bgp = c.bgp
        if steered(c):
            rm_in, rm_out = standby_route_maps(c)
            contexts.append(Context((f"route-map {rm_in} permit 1",),
                                    (f"set local-preference {STANDBY_LOCAL_PREFERENCE}",)))
            match: tuple[str, ...] = ()
            if returns(c):
                contexts += [Context((line,)) for line in standby_prefix_list(c)]
                match = (f"match ip address prefix-list {rm_out}",)
            contexts.append(Context((f"route-map {rm_out} permit 1",), match + (
                "set as-path prepend " + " ".join([str(bgp.local_asn)] * bgp.prepend_count),)))
        if bgp.bfd.enabled:
            contexts.append(bfd_context(c))
        for peer, (rm_in, rm_out) in neighbor_route_maps(c, active).items():
            neighbors.append(Neighbor(
                peer, bgp.peer_asn, bgp.keepalive, bgp.hold, rm_in, rm_out,
                bfd_profile_name(c) if bgp.bfd.enabled else None))
        for n in bgp.networks or c.local_networks:
            if str(n) not in networks:
                networks.append(str(n))
    networks += [n for n in return_networks(config, active) if n not in networks]
    # `no bgp network import-check`: announce the configured networks as configured. With
    # FRR's default a `network` needs an exact route in the RIB, so a summary such as a
    # data centre's /16 behind a gateway with a /24 on its LAN port is silently never
    # announced and the cloud never routes back (found in the lab). The static mode routes
    # local_networks to the tunnel regardless; so does this.
    contexts += router_contexts(
        first.bgp.local_asn, router_id(first), neighbors, networks, first.bgp.maximum_paths,
        extra=("no bgp network import-check",))
    return FrrConfig(tuple(contexts))


def router_id(conn: ConnectionConfig) -> str:
    """bgp.router_id, else tunnel 1's local BGP address (as the vendor's guide does)."""
    if conn.bgp.router_id is not None:
        return str(conn.bgp.router_id)
    for t in conn.tunnels:
        if t.bgp is not None:
            return str(t.bgp.local_ip)
    raise RenderError(f"connection {conn.name}: no tunnel has a [connection.tunnel.bgp] table")

"""The validated, immutable configuration every other module reads.

Nothing here parses or validates: `vpnd.config.load` builds these objects only from input
that passed every rule, so adapters can trust each value (it may go into a VICI message or a
vtysh command as it is). Defaults mirror the cloud's defaults (the vendor's IPsec-VPN documentation) and the vendor's
strongSwan/FRR procedure (the vendor's strongSwan guide); each is written here once, and the section readers
(`vpnd.config.sections`) take them from these dataclasses' fields.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

IPv4Network = ipaddress.IPv4Network
IPv4Address = ipaddress.IPv4Address

Routing = Literal["route", "policy", "bgp"]
Standby = Literal["prepend", "ecmp"]
ReturnPath = Literal["more-specific", "none"]
BothDown = Literal["keep", "withdraw"]
InterfaceKind = Literal["xfrm", "existing"]
HealthKind = Literal["icmp", "tcp"]

# The route protocol number vpnd stamps on the routes it owns (ip route ... proto 249), so it
# recognises them after a restart and never touches anyone else's.
DEFAULT_ROUTE_PROTOCOL = 249

# Where every command looks for the configuration unless told otherwise (-c).
DEFAULT_CONFIG = "/etc/vpnd/config.toml"


class Secret:
    """A pre-shared key. Its str/repr never show the value; only `reveal()` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class DaemonConfig:
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    metrics_listen: str = "127.0.0.1:9456"      # "" disables the endpoint
    control_socket: str = "/run/vpnd/control.sock"
    vici_socket: str = "/var/run/charon.vici"
    vtysh_path: str = "/usr/bin/vtysh"
    frr_pathspace: str | None = None            # vtysh -N NAME
    frr_vty_socket: str | None = None           # vtysh --vty_socket DIR
    route_protocol: int = DEFAULT_ROUTE_PROTOCOL
    withdraw_on_stop: bool = False              # SIGTERM leaves routes and SAs by default


@dataclass(frozen=True)
class IkeConfig:
    version: Literal[1, 2] = 2
    mode: Literal["main", "aggressive"] = "main"
    encryption: str = "aes128"                  # aes128 aes192 aes256 des 3des
    integrity: str = "sha1"                     # sha1 md5 sha256 sha384 sha512
    dh_group: str = "group2"                    # group1 group2 group5 group14
    lifetime: int = 86400                       # 0..86400 seconds


@dataclass(frozen=True)
class IpsecConfig:
    encryption: str = "aes128"
    integrity: str = "sha1"
    pfs_group: str = "group2"                   # "disabled" or a DH group
    lifetime: int = 86400


@dataclass(frozen=True)
class HealthCheckConfig:
    """ICMP (or TCP-connect) probes through each tunnel, with the cloud's semantics."""

    destination: IPv4Address
    source: IPv4Address
    interval: float = 3.0                       # seconds, >= 0.02
    retries: int = 3                            # consecutive losses before a tunnel fails
    switch_route: bool = True                   # False: report only, never move traffic
    timeout: float | None = None                # per probe; None means `interval`
    max_rtt_ms: float | None = None             # optional latency threshold
    max_loss_percent: float | None = None       # optional loss threshold over the window
    kind: HealthKind = "icmp"                   # "tcp": a connect to `port`, keepalived-style
    port: int | None = None                     # required for tcp, rejected for icmp
    path_mtu_interval: float = 600.0            # seconds between path-MTU searches (vpnd.pmtu_probe)


@dataclass(frozen=True)
class CloudHealthCheckConfig:
    """The CLOUD's own health check of the connection, as entered in its console (the vendor's health-check documentation):
    it pings `destination_ip` (here) from `source_ip` (the cloud's) through each tunnel and
    moves its sending tunnel after `retries` failed checks `interval` seconds apart. vpnd
    does not run it: it adds the on-premises /32 route for `source_ip` the vendor asks for,
    sends each reply back by the tunnel its probe arrived on, and reports the budget."""

    source_ip: IPv4Address                      # console: Source IP (on the cloud side)
    destination_ip: IPv4Address                 # console: Destination IP (in the data centre)
    interval: int = 3                           # console: Retry Interval, seconds
    retries: int = 3                            # console: Retries
    switch_route: bool = True                   # console: Switch Route

    @property
    def budget(self) -> int:
        """Seconds of failed checks before the cloud moves its sending tunnel."""
        return self.interval * self.retries


@dataclass(frozen=True)
class FailoverConfig:
    preempt: bool = True                        # move back to tunnel 1 once it is healthy
    preempt_delay: float = 10.0                 # seconds tunnel 1 must stay healthy first
    hold_down: float = 5.0                      # minimum seconds between two switches
    max_switches_per_minute: int = 4            # flap damping
    both_down: BothDown = "keep"                # keep routes (no clear-text leak) or withdraw
    park_dead_tunnel: bool = True               # tear down the CHILD SA of a tunnel whose data
                                                # path is dead but IKE alive (the cloud moves)


@dataclass(frozen=True)
class BfdConfig:
    enabled: bool = False
    receive_interval_ms: int = 300
    transmit_interval_ms: int = 300
    detect_multiplier: int = 3


@dataclass(frozen=True)
class BgpConnectionConfig:
    local_asn: int = 65530                      # asdot "123.456" is normalised on load
    peer_asn: int = 45104                       # the cloud's default ASN
    keepalive: int = 10
    hold: int = 30
    networks: tuple[IPv4Network, ...] = ()      # empty: the connection's local_networks
    maximum_paths: int = 32
    standby: Standby = "prepend"
    prepend_count: int = 3
    return_path: ReturnPath = "more-specific"   # vpnd.render.frr: the cloud's way back
    router_id: IPv4Address | None = None        # None: tunnel 1's local BGP IP
    bfd: BfdConfig = field(default_factory=BfdConfig)


@dataclass(frozen=True)
class TunnelBgpConfig:
    tunnel_cidr: IPv4Network                    # a /30 in 169.254.0.0/16, not reserved
    local_ip: IPv4Address                       # ours, inside tunnel_cidr
    peer_ip: IPv4Address                        # the cloud's, inside tunnel_cidr


CLOUD_POLL_MIN = 60.0                          # the cloud's API is asked at most once a minute


@dataclass(frozen=True)
class CloudViewConfig:
    """The cloud's own view of this connection, shown next to vpnd's (`vpnd status`,
    metrics): asked of the cloud's API (vpnd[alibaba]) every `interval` seconds, never
    more often than once a minute; credentials from the vendor's default chain."""

    connection_id: str                          # the cloud's id (Alibaba: vco-...)
    region: str                                 # e.g. cn-hangzhou
    provider: Literal["alibaba"] = "alibaba"
    interval: float = 300.0                     # seconds between two calls, >= 60
    endpoint: str | None = None                 # None: the provider's public endpoint


# Tunnel N (index N - 1) defaults to interface ipsec{N-1}, XFRM if_id 42+{N-1} and route
# metric 100+{N-1}: the two tunnels must differ in all three, and tunnel 1 is preferred.
TUNNEL_IF_ID_BASE = 42
TUNNEL_METRIC_BASE = 100


@dataclass(frozen=True)
class TunnelConfig:
    name: str
    local_address: IPv4Address                  # our IKE address
    remote_address: IPv4Address                 # the cloud's IPsec address for this tunnel
    local_id: str                               # defaults to local_address
    remote_id: str                              # defaults to remote_address
    psk: Secret                                 # from `psk` or `psk_file`
    interface: str                              # ipsec0 / ipsec1 by default
    if_id: int                                  # 42 / 43 by default
    interface_kind: InterfaceKind = "xfrm"      # "existing": use a link someone else made
    underlay: str | None = None                 # dev of `type xfrm dev eth0`
    mtu: int | None = None                      # None: from the underlay and ESP overhead
    route_metric: int = TUNNEL_METRIC_BASE      # 100 for tunnel 1, 101 for tunnel 2
    local_ts: tuple[IPv4Network, ...] = ()      # empty: by routing mode (0.0.0.0/0 or networks)
    remote_ts: tuple[IPv4Network, ...] = ()
    # policy mode: both tunnels carry the same flows, so a probe between the connection's
    # health-check addresses crosses only the active tunnel; per-tunnel addresses inside
    # this tunnel's own traffic selectors let the standby be probed too
    probe_source: IPv4Address | None = None     # None: health_check.source
    probe_destination: IPv4Address | None = None    # None: health_check.destination
    bgp: TunnelBgpConfig | None = None
    psk_file: str | None = None                 # where the key came from, for messages


def tunnel_defaults(index: int) -> dict[str, str | int]:
    """The defaults that depend on a tunnel's place (index 0 is tunnel 1, the active one)."""
    return {
        "name": f"tunnel{index + 1}",
        "interface": f"ipsec{index}",
        "if_id": TUNNEL_IF_ID_BASE + index,
        "route_metric": TUNNEL_METRIC_BASE + index,
    }


# What a connection without `routing` does: route-based, one route per tunnel interface.
DEFAULT_ROUTING: Routing = "route"


@dataclass(frozen=True)
class ConnectionConfig:
    name: str
    routing: Routing
    local_networks: tuple[IPv4Network, ...]
    remote_networks: tuple[IPv4Network, ...]
    tunnels: tuple[TunnelConfig, ...]           # two (tunnel 1 active, tunnel 2 standby)
    ike: IkeConfig = field(default_factory=IkeConfig)
    ipsec: IpsecConfig = field(default_factory=IpsecConfig)
    dpd_delay: int = 10                         # seconds; 0 disables charon's DPD
    nat_traversal: bool = True
    health_check: HealthCheckConfig | None = None
    cloud_health_check: CloudHealthCheckConfig | None = None    # the cloud console's
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    bgp: BgpConnectionConfig | None = None      # present iff routing == "bgp"
    cloud_api: CloudViewConfig | None = None    # the cloud's view in status (optional)

    @property
    def legacy_single_tunnel(self) -> bool:
        return len(self.tunnels) == 1

    @property
    def selects_by_sa(self) -> bool:
        """Policy mode: both tunnels' CHILD SAs carry the same flows and charon's preferred SA
        carries them; the cloud's own move shows as XfrmInTmplMismatch."""
        return self.routing == "policy"

    @property
    def tunnel_interfaces(self) -> bool:
        """Route and BGP modes steer through one interface per tunnel that vpnd keeps (probes
        leave through it); policy mode has none."""
        return not self.selects_by_sa

    @property
    def kernel_routes(self) -> bool:
        """Route mode: vpnd keeps the routes (the remote networks, the cloud check's /32) and
        the cloud picks its sending tunnel by its own health check, not by BGP."""
        return self.routing == "route"

    @property
    def has_bgp(self) -> bool:
        """BGP mode: each tunnel's BGP session (and BFD) is evidence, and FRR is driven."""
        return self.routing == "bgp"


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig
    connections: tuple[ConnectionConfig, ...]
    source: str = "<memory>"                    # the file it was read from


@dataclass(frozen=True)
class Problem:
    """One broken rule: the key path (`connection[0].tunnel[1].bgp.tunnel_cidr`) and why."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found at once; the running config is never touched."""

    def __init__(self, errors: list[Problem], warnings: list[Problem] | None = None) -> None:
        self.errors = list(errors)
        self.warnings = list(warnings or [])
        super().__init__("; ".join(str(e) for e in self.errors))

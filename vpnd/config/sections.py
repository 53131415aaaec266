"""The section readers: one method per TOML table, turning it into the model's dataclass.

Why a module of its own: this is the one place that says which keys a table has, their types
and limits (from `vpnd.config.rules`); the wording of problems is the getter engine's
(`vpnd.config.reader`) and the rules between keys are `vpnd.config.consistency`'s. Defaults
are read from the model's dataclasses, so each is written once, in `vpnd.config.model`.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from types import SimpleNamespace
from typing import Any

from vpnd.config import consistency, rules
from vpnd.config.model import (
    DEFAULT_ROUTING,
    BfdConfig,
    CLOUD_POLL_MIN,
    BgpConnectionConfig,
    CloudHealthCheckConfig,
    CloudViewConfig,
    Config,
    ConnectionConfig,
    DaemonConfig,
    FailoverConfig,
    HealthCheckConfig,
    IkeConfig,
    IpsecConfig,
    Secret,
    TunnelBgpConfig,
    TunnelConfig,
    tunnel_defaults,
)
from vpnd.config.reader import REQUIRED, Reader, os_reason, type_name

# The keys each TOML table accepts (the loader reads exactly these; a test checks that they
# cover every field of the model).
TOP_KEYS = ("daemon", "connection")
DAEMON_KEYS = (
    "log_format", "log_level", "metrics_listen", "control_socket", "vici_socket", "vtysh_path",
    "frr_pathspace", "frr_vty_socket", "route_protocol", "withdraw_on_stop",
)
CONNECTION_KEYS = (
    "name", "routing", "local_networks", "remote_networks", "dpd_delay", "nat_traversal",
    "ike", "ipsec", "health_check", "cloud_health_check", "failover", "bgp", "tunnel",
    "cloud_api",
)
IKE_KEYS = (
    "version", "mode", "encryption", "integrity", "dh_group", "lifetime", "local_id", "remote_id",
)
IPSEC_KEYS = ("encryption", "integrity", "pfs_group", "lifetime")
HEALTH_KEYS = (
    "destination", "source", "interval", "retries", "switch_route", "timeout", "max_rtt_ms",
    "max_loss_percent", "kind", "port", "path_mtu_interval",
)
CLOUD_HEALTH_KEYS = ("source_ip", "destination_ip", "interval", "retries", "switch_route")
FAILOVER_KEYS = ("preempt", "preempt_delay", "hold_down", "max_switches_per_minute", "both_down",
                 "park_dead_tunnel")
BGP_KEYS = (
    "local_asn", "peer_asn", "keepalive", "hold", "networks", "maximum_paths", "standby",
    "prepend_count", "return_path", "router_id", "bfd",
)
BFD_KEYS = ("enabled", "receive_interval_ms", "transmit_interval_ms", "detect_multiplier")
TUNNEL_KEYS = (
    "name", "local_address", "remote_address", "local_id", "remote_id", "psk", "psk_file",
    "interface", "if_id", "interface_kind", "underlay", "mtu", "route_metric", "local_ts", "remote_ts",
    "probe_source", "probe_destination", "bgp",
)
TUNNEL_BGP_KEYS = ("tunnel_cidr", "local_ip", "peer_ip")
CLOUD_KEYS = ("provider", "connection_id", "region", "interval", "endpoint")

# Where each key belongs, to say "this key goes in [connection.ike]" for a misplaced key.
SECTIONS = {
    "": TOP_KEYS, "[daemon]": DAEMON_KEYS, "[[connection]]": CONNECTION_KEYS,
    "[connection.ike]": IKE_KEYS, "[connection.ipsec]": IPSEC_KEYS,
    "[connection.health_check]": HEALTH_KEYS, "[connection.failover]": FAILOVER_KEYS,
    "[connection.cloud_health_check]": CLOUD_HEALTH_KEYS,
    "[connection.bgp]": BGP_KEYS, "[connection.bgp.bfd]": BFD_KEYS,
    "[[connection.tunnel]]": TUNNEL_KEYS, "[connection.tunnel.bgp]": TUNNEL_BGP_KEYS,
    "[connection.cloud_api]": CLOUD_KEYS,
}

PSK_FILE_MAX_BYTES = 4096


def defaults(cls: type, **overrides: Any) -> SimpleNamespace:
    """A model class's field defaults by name (REQUIRED where the model has none)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
        else:
            values[f.name] = REQUIRED
    values.update(overrides)
    return SimpleNamespace(**values)


class SectionReader(Reader):
    """One validation run over a whole document: builds the model from whatever was valid."""

    def __init__(self, source: str, base_dir: str | None) -> None:
        super().__init__(source, SECTIONS)
        self.base_dir = base_dir
        self.secrets: set[str] = set()          # every key read, valid or not (vpnd.config.redact)

    def config(self, data: dict[str, Any]) -> Config:
        self.check_keys(data, "", TOP_KEYS)
        daemon = self.daemon(self.table(data, "daemon", "daemon"))
        conns_raw = self.array_of_tables(data, "connection", "connection", "[[connection]]")
        if conns_raw is not None and not conns_raw:
            self.error("connection", "no [[connection]] defined: nothing for vpnd to do")
        conns = tuple(
            self.connection(c, f"connection[{i}]") for i, c in enumerate(conns_raw or ())
        )
        consistency.across_connections(self, conns)
        return Config(daemon=daemon, connections=conns, source=self.source)

    def daemon(self, d: dict[str, Any] | None) -> DaemonConfig:
        d = d or {}
        p = "daemon"
        self.check_keys(d, p, DAEMON_KEYS)
        df = defaults(DaemonConfig)

        def listen(v: str) -> str | None:
            return None if v == "" else rules.listen_problem(v)

        return DaemonConfig(
            log_format=self.string(d, "log_format", f"{p}.log_format", df.log_format,
                                   rules.LOG_FORMATS),
            log_level=self.string(d, "log_level", f"{p}.log_level", df.log_level,
                                  rules.LOG_LEVELS),
            metrics_listen=self.string(d, "metrics_listen", f"{p}.metrics_listen",
                                       df.metrics_listen, check=listen),
            control_socket=self.string(d, "control_socket", f"{p}.control_socket",
                                       df.control_socket, check=rules.socket_path_problem),
            vici_socket=self.string(d, "vici_socket", f"{p}.vici_socket", df.vici_socket,
                                    check=rules.socket_path_problem),
            vtysh_path=self.string(d, "vtysh_path", f"{p}.vtysh_path", df.vtysh_path,
                                   check=rules.absolute_path_problem),
            frr_pathspace=self.string(d, "frr_pathspace", f"{p}.frr_pathspace", df.frr_pathspace,
                                      check=rules.pathspace_problem),
            frr_vty_socket=self.string(d, "frr_vty_socket", f"{p}.frr_vty_socket",
                                       df.frr_vty_socket, check=rules.absolute_path_problem),
            route_protocol=self.integer(d, "route_protocol", f"{p}.route_protocol",
                                        df.route_protocol, None, None,
                                        check=rules.route_protocol_problem),
            withdraw_on_stop=self.boolean(d, "withdraw_on_stop", f"{p}.withdraw_on_stop",
                                          df.withdraw_on_stop),
        )

    def ike(self, d: dict[str, Any] | None, p: str) -> tuple[IkeConfig, Any, Any]:
        d = d or {}
        self.check_keys(d, p, IKE_KEYS)
        df = defaults(IkeConfig)
        version = self.raw(d, "version", f"{p}.version", df.version)[1]
        if "version" in d and (type(version) is not int or version not in rules.IKE_VERSIONS):
            hint = ""
            if isinstance(version, str) and version.lower() in ("ikev1", "ikev2", "1", "2"):
                hint = f"; write version = {version[-1]}"
            self.error(f"{p}.version", f"must be 1 or 2 (an integer){hint}")
            version = None
        ike = IkeConfig(
            version=version,
            mode=self.string(d, "mode", f"{p}.mode", df.mode, rules.IKE_MODES),
            encryption=self.string(d, "encryption", f"{p}.encryption", df.encryption,
                                   rules.ENCRYPTION),
            integrity=self.string(d, "integrity", f"{p}.integrity", df.integrity, rules.INTEGRITY),
            dh_group=self.string(d, "dh_group", f"{p}.dh_group", df.dh_group, rules.DH_GROUPS),
            lifetime=self.integer(d, "lifetime", f"{p}.lifetime", df.lifetime,
                                  rules.LIFETIME_MIN, rules.LIFETIME_MAX),
        )
        local_id = self.string(d, "local_id", f"{p}.local_id", None, check=rules.identity_problem)
        remote_id = self.string(d, "remote_id", f"{p}.remote_id", None,
                                check=rules.identity_problem)
        for key in ("encryption", "integrity", "dh_group"):
            self.weak(getattr(ike, key), f"{p}.{key}")
        consistency.ike_rules(self, ike, p)
        return ike, local_id, remote_id

    def ipsec(self, d: dict[str, Any] | None, p: str) -> IpsecConfig:
        d = d or {}
        self.check_keys(d, p, IPSEC_KEYS)
        df = defaults(IpsecConfig)
        ipsec = IpsecConfig(
            encryption=self.string(d, "encryption", f"{p}.encryption", df.encryption,
                                   rules.ENCRYPTION),
            integrity=self.string(d, "integrity", f"{p}.integrity", df.integrity, rules.INTEGRITY),
            pfs_group=self.string(d, "pfs_group", f"{p}.pfs_group", df.pfs_group,
                                  rules.PFS_GROUPS),
            lifetime=self.integer(d, "lifetime", f"{p}.lifetime", df.lifetime,
                                  rules.LIFETIME_MIN, rules.LIFETIME_MAX),
        )
        for key in ("encryption", "integrity", "pfs_group"):
            self.weak(getattr(ipsec, key), f"{p}.{key}")
        return ipsec

    def weak(self, value: Any, path: str) -> None:
        if value in rules.WEAK_CHOICES:
            self.warn(path, rules.WEAK_CHOICES[value])

    def health_check(self, d: dict[str, Any], p: str) -> HealthCheckConfig:
        self.check_keys(d, p, HEALTH_KEYS)
        df = defaults(HealthCheckConfig)
        hc = HealthCheckConfig(
            destination=self.ipv4(d, "destination", f"{p}.destination", df.destination),
            source=self.ipv4(d, "source", f"{p}.source", df.source),
            interval=self.number(d, "interval", f"{p}.interval", df.interval,
                                 rules.HEALTH_INTERVAL_MIN, rules.HEALTH_INTERVAL_MAX),
            retries=self.integer(d, "retries", f"{p}.retries", df.retries,
                                 rules.HEALTH_RETRIES_MIN, rules.HEALTH_RETRIES_MAX),
            switch_route=self.boolean(d, "switch_route", f"{p}.switch_route", df.switch_route),
            timeout=self.number(d, "timeout", f"{p}.timeout", df.timeout, 0.0,
                                rules.HEALTH_INTERVAL_MAX, lo_open=True),
            max_rtt_ms=self.number(d, "max_rtt_ms", f"{p}.max_rtt_ms", df.max_rtt_ms, 0.0,
                                   60000.0, lo_open=True),
            max_loss_percent=self.number(d, "max_loss_percent", f"{p}.max_loss_percent",
                                         df.max_loss_percent, 0.0, 100.0),
            kind=self.string(d, "kind", f"{p}.kind", df.kind, rules.HEALTH_KINDS),
            port=self.integer(d, "port", f"{p}.port", df.port, rules.PORT_MIN, rules.PORT_MAX),
            path_mtu_interval=self.number(d, "path_mtu_interval", f"{p}.path_mtu_interval",
                                          df.path_mtu_interval, rules.PATH_MTU_INTERVAL_MIN,
                                          rules.PATH_MTU_INTERVAL_MAX),
        )
        consistency.health_check_rules(self, hc, "port" in d, p)
        return hc

    def cloud_health_check(self, d: dict[str, Any], p: str) -> CloudHealthCheckConfig:
        """The cloud console's health check: whole seconds and counts, as the console takes."""
        self.check_keys(d, p, CLOUD_HEALTH_KEYS)
        df = defaults(CloudHealthCheckConfig)
        return CloudHealthCheckConfig(
            source_ip=self.ipv4(d, "source_ip", f"{p}.source_ip", df.source_ip),
            destination_ip=self.ipv4(d, "destination_ip", f"{p}.destination_ip",
                                     df.destination_ip),
            interval=self.integer(d, "interval", f"{p}.interval", df.interval,
                                  rules.CLOUD_HC_INTERVAL_MIN, rules.CLOUD_HC_INTERVAL_MAX),
            retries=self.integer(d, "retries", f"{p}.retries", df.retries,
                                 rules.CLOUD_HC_RETRIES_MIN, rules.CLOUD_HC_RETRIES_MAX),
            switch_route=self.boolean(d, "switch_route", f"{p}.switch_route", df.switch_route),
        )

    def failover(self, d: dict[str, Any] | None, p: str) -> FailoverConfig:
        d = d or {}
        self.check_keys(d, p, FAILOVER_KEYS)
        df = defaults(FailoverConfig)
        return FailoverConfig(
            preempt=self.boolean(d, "preempt", f"{p}.preempt", df.preempt),
            preempt_delay=self.number(d, "preempt_delay", f"{p}.preempt_delay",
                                      df.preempt_delay, 0.0, 86400.0),
            hold_down=self.number(d, "hold_down", f"{p}.hold_down", df.hold_down, 0.0, 86400.0),
            max_switches_per_minute=self.integer(d, "max_switches_per_minute",
                                                 f"{p}.max_switches_per_minute",
                                                 df.max_switches_per_minute, 1, 600),
            both_down=self.string(d, "both_down", f"{p}.both_down", df.both_down,
                                  rules.BOTH_DOWN),
            park_dead_tunnel=self.boolean(d, "park_dead_tunnel", f"{p}.park_dead_tunnel",
                                          df.park_dead_tunnel),
        )

    def asn(self, d: dict[str, Any], key: str, path: str, default: int) -> int | None:
        if key not in d:
            return default
        present, raw = self.raw(d, key, path, default)
        if not present:
            return None                 # a placeholder (raw said so)
        value, problem = rules.parse_asn(raw)
        if problem:
            self.error(path, problem)
            return None
        warning = rules.asn_warning(value)
        if warning:
            self.warn(path, warning)
        return value

    def bgp(self, d: dict[str, Any], p: str) -> BgpConnectionConfig:
        self.check_keys(d, p, BGP_KEYS)
        df = defaults(BgpConnectionConfig)
        bfd_raw = self.table(d, "bfd", f"{p}.bfd") or {}
        self.check_keys(bfd_raw, f"{p}.bfd", BFD_KEYS)
        b = f"{p}.bfd"
        bdf = defaults(BfdConfig)
        bfd = BfdConfig(
            enabled=self.boolean(bfd_raw, "enabled", f"{b}.enabled", bdf.enabled),
            receive_interval_ms=self.integer(bfd_raw, "receive_interval_ms",
                                             f"{b}.receive_interval_ms", bdf.receive_interval_ms,
                                             rules.BFD_INTERVAL_MIN, rules.BFD_INTERVAL_MAX),
            transmit_interval_ms=self.integer(bfd_raw, "transmit_interval_ms",
                                              f"{b}.transmit_interval_ms",
                                              bdf.transmit_interval_ms,
                                              rules.BFD_INTERVAL_MIN, rules.BFD_INTERVAL_MAX),
            detect_multiplier=self.integer(bfd_raw, "detect_multiplier", f"{b}.detect_multiplier",
                                           bdf.detect_multiplier, rules.BFD_MULTIPLIER_MIN,
                                           rules.BFD_MULTIPLIER_MAX),
        )
        bgp = BgpConnectionConfig(
            local_asn=self.asn(d, "local_asn", f"{p}.local_asn", df.local_asn),
            peer_asn=self.asn(d, "peer_asn", f"{p}.peer_asn", df.peer_asn),
            keepalive=self.integer(d, "keepalive", f"{p}.keepalive", df.keepalive,
                                   rules.KEEPALIVE_MIN, rules.KEEPALIVE_MAX),
            hold=self.integer(d, "hold", f"{p}.hold", df.hold, 0, rules.HOLD_MAX),
            networks=self.networks(d, "networks", f"{p}.networks", df.networks),
            maximum_paths=self.integer(d, "maximum_paths", f"{p}.maximum_paths",
                                       df.maximum_paths, rules.MAXIMUM_PATHS_MIN,
                                       rules.MAXIMUM_PATHS_MAX),
            standby=self.string(d, "standby", f"{p}.standby", df.standby, rules.STANDBY),
            prepend_count=self.integer(d, "prepend_count", f"{p}.prepend_count",
                                       df.prepend_count, rules.PREPEND_MIN, rules.PREPEND_MAX),
            return_path=self.string(d, "return_path", f"{p}.return_path", df.return_path,
                                    rules.RETURN_PATH),
            router_id=self.ipv4(d, "router_id", f"{p}.router_id", df.router_id),
            bfd=bfd,
        )
        consistency.bgp_rules(self, bgp, p)
        rid = bgp.router_id
        if rid is not None and (rid.is_unspecified or rid.is_multicast):
            self.error(f"{p}.router_id", f"{bgp.router_id} cannot be a router id")
        return bgp

    def cloud_api(self, d: dict[str, Any], p: str) -> CloudViewConfig:
        self.check_keys(d, p, CLOUD_KEYS)
        df = defaults(CloudViewConfig)
        return CloudViewConfig(
            provider=self.string(d, "provider", f"{p}.provider", df.provider, ("alibaba",)),
            connection_id=self.string(d, "connection_id", f"{p}.connection_id",
                                      df.connection_id, check=rules.cloud_id_problem),
            region=self.string(d, "region", f"{p}.region", df.region,
                               check=rules.cloud_id_problem),
            interval=self.number(d, "interval", f"{p}.interval", df.interval, CLOUD_POLL_MIN,
                                 86400.0),
            endpoint=self.string(d, "endpoint", f"{p}.endpoint", df.endpoint,
                                 check=rules.cloud_endpoint_problem),
        )

    def tunnel_bgp(self, d: dict[str, Any], p: str) -> TunnelBgpConfig:
        self.check_keys(d, p, TUNNEL_BGP_KEYS)
        df = defaults(TunnelBgpConfig)
        cidr = None
        present, raw = self.raw(d, "tunnel_cidr", f"{p}.tunnel_cidr", df.tunnel_cidr)
        if present:
            cidr = self.network(raw, f"{p}.tunnel_cidr")
            if cidr is not None:
                problem = rules.tunnel_cidr_problem(cidr)
                if problem:
                    self.error(f"{p}.tunnel_cidr", problem)
                    cidr = None
        tb = TunnelBgpConfig(
            tunnel_cidr=cidr,
            local_ip=self.ipv4(d, "local_ip", f"{p}.local_ip", df.local_ip),
            peer_ip=self.ipv4(d, "peer_ip", f"{p}.peer_ip", df.peer_ip),
        )
        consistency.tunnel_bgp_rules(self, tb, p)
        return tb

    def psk(self, d: dict[str, Any], p: str) -> tuple[Secret | None, str | None]:
        has_psk, has_file = "psk" in d, "psk_file" in d
        if has_psk and has_file:
            self.error(f"{p}.psk", "set either psk or psk_file, not both")
            return None, None
        if not has_psk and not has_file:
            self.error(f"{p}.psk_file", "missing: set psk_file (recommended) or psk")
            return None, None
        if has_psk:
            value = d["psk"]
            if not isinstance(value, str):
                self.error(f"{p}.psk", f"expected a string (put it in quotes), got "
                           f"{type_name(value)}")
                return None, None
            self.secrets.add(value)
            problem = rules.psk_problem(value)
            if problem:
                self.error(f"{p}.psk", problem)
                return None, None
            self.short_psk(value, f"{p}.psk")
            return Secret(value), None
        return self.psk_file(d["psk_file"], f"{p}.psk_file")

    def psk_file(self, value: object, path: str) -> tuple[Secret | None, str | None]:
        if not isinstance(value, str):
            self.error(path, f"expected a string (a file name), got {type_name(value)}")
            return None, None
        if not value or "\0" in value:
            self.error(path, "expected a file name")
            return None, None
        base = self.base_dir or os.getcwd()
        full = value if os.path.isabs(value) else os.path.join(base, value)
        try:
            st = os.stat(full)
            if not stat.S_ISREG(st.st_mode):
                self.error(path, f"{value!r} is not a regular file")
                return None, None
            if st.st_size > PSK_FILE_MAX_BYTES:
                self.error(path, f"{value!r} is too large to hold a key ({st.st_size} bytes)")
                return None, None
            with open(full, "rb") as f:
                raw = f.read(PSK_FILE_MAX_BYTES + 1)
        except FileNotFoundError:
            # Not quoted: a key pasted into psk_file by mistake must not be printed.
            where = "" if os.path.isabs(value) else f" (relative paths start at {base})"
            self.error(path, f"no such file{where}; psk_file names a file holding the key")
            return None, None
        except (OSError, ValueError) as exc:
            self.error(path, f"cannot read {value!r}: {os_reason(exc)}")
            return None, None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.error(path, f"the key in {value!r} is not UTF-8 text")
            return None, None
        self.secrets.update((text, text.rstrip("\r\n")))
        if text.endswith("\r\n"):
            text = text[:-2]
        elif text.endswith("\n"):
            text = text[:-1]
        problem = rules.psk_problem(text)
        if problem:
            self.error(path, f"{value!r}: {problem}")
            return None, None
        self.short_psk(text, path)
        return Secret(text), full

    def short_psk(self, value: str, path: str) -> None:
        if len(value) < rules.PSK_SHORT:
            self.warn(path, f"the key has {len(value)} characters; use at least "
                      f"{rules.PSK_SHORT} random ones")

    def tunnel(
        self, d: dict[str, Any], p: str, i: int, ike_ids: tuple[Any, Any], routing: Any
    ) -> TunnelConfig:
        self.check_keys(d, p, TUNNEL_KEYS)
        df = defaults(TunnelConfig, **tunnel_defaults(i))
        local = self.ipv4(d, "local_address", f"{p}.local_address", df.local_address)
        remote = self.ipv4(d, "remote_address", f"{p}.remote_address", df.remote_address)
        for key, ip in (("local_address", local), ("remote_address", remote)):
            if ip is not None:
                problem = rules.endpoint_problem(ip)
                if problem:
                    self.error(f"{p}.{key}", problem)
        consistency.tunnel_endpoint_rules(self, local, remote, p)
        ike_local_id, ike_remote_id = ike_ids
        local_id = self.string(d, "local_id", f"{p}.local_id", None, check=rules.identity_problem)
        remote_id = self.string(d, "remote_id", f"{p}.remote_id", None,
                                check=rules.identity_problem)
        psk, psk_file = self.psk(d, p)
        kind = self.string(d, "interface_kind", f"{p}.interface_kind", df.interface_kind,
                           rules.INTERFACE_KINDS)
        underlay = self.string(d, "underlay", f"{p}.underlay", df.underlay,
                               check=rules.ifname_problem)
        if underlay is not None and kind == "existing":
            self.warn(f"{p}.underlay", "ignored with interface_kind = \"existing\"")
        bgp_raw = self.table(d, "bgp", f"{p}.bgp")
        bgp = None
        if bgp_raw is not None:
            bgp = self.tunnel_bgp(bgp_raw, f"{p}.bgp")
            if routing != "bgp" and routing is not None:
                self.warn(f"{p}.bgp", f"ignored: routing is {routing!r}, not \"bgp\"")
                bgp = None
        elif routing == "bgp":
            self.error(f"{p}.bgp", "routing = \"bgp\" needs [connection.tunnel.bgp] with "
                       "tunnel_cidr, local_ip and peer_ip")
        return TunnelConfig(
            name=self.string(d, "name", f"{p}.name", df.name, check=rules.name_problem),
            local_address=local,
            remote_address=remote,
            local_id=local_id or ike_local_id or (str(local) if local is not None else None),
            remote_id=remote_id or ike_remote_id or (str(remote) if remote is not None else None),
            psk=psk,
            interface=self.string(d, "interface", f"{p}.interface", df.interface,
                                  check=rules.ifname_problem),
            if_id=self.integer(d, "if_id", f"{p}.if_id", df.if_id, rules.IF_ID_MIN,
                               rules.IF_ID_MAX),
            interface_kind=kind,
            underlay=underlay,
            mtu=self.integer(d, "mtu", f"{p}.mtu", df.mtu, rules.MTU_MIN, rules.MTU_MAX),
            route_metric=self.integer(d, "route_metric", f"{p}.route_metric", df.route_metric,
                                      rules.METRIC_MIN, rules.METRIC_MAX),
            local_ts=self.networks(d, "local_ts", f"{p}.local_ts", df.local_ts),
            remote_ts=self.networks(d, "remote_ts", f"{p}.remote_ts", df.remote_ts),
            probe_source=self.ipv4(d, "probe_source", f"{p}.probe_source", df.probe_source),
            probe_destination=self.ipv4(d, "probe_destination", f"{p}.probe_destination",
                                        df.probe_destination),
            bgp=bgp,
            psk_file=psk_file,
        )

    def connection(self, d: dict[str, Any], p: str) -> ConnectionConfig:
        self.check_keys(d, p, CONNECTION_KEYS)
        df = defaults(ConnectionConfig, routing=DEFAULT_ROUTING)
        name = self.string(d, "name", f"{p}.name", df.name, check=rules.name_problem)
        routing = self.string(d, "routing", f"{p}.routing", df.routing, rules.ROUTING)
        local_networks = self.networks(d, "local_networks", f"{p}.local_networks",
                                       df.local_networks)
        remote_networks = self.networks(d, "remote_networks", f"{p}.remote_networks",
                                        df.remote_networks)
        dpd_delay = self.integer(d, "dpd_delay", f"{p}.dpd_delay", df.dpd_delay, rules.DPD_MIN,
                                 rules.DPD_MAX)
        nat_traversal = self.boolean(d, "nat_traversal", f"{p}.nat_traversal", df.nat_traversal)
        ike, *ike_ids = self.ike(self.table(d, "ike", f"{p}.ike"), f"{p}.ike")
        ipsec = self.ipsec(self.table(d, "ipsec", f"{p}.ipsec"), f"{p}.ipsec")
        health_raw = self.table(d, "health_check", f"{p}.health_check")
        health = None
        if health_raw is not None:
            health = self.health_check(health_raw, f"{p}.health_check")
        cloud_raw = self.table(d, "cloud_health_check", f"{p}.cloud_health_check")
        cloud_hc = None
        if cloud_raw is not None:
            cloud_hc = self.cloud_health_check(cloud_raw, f"{p}.cloud_health_check")
        failover = self.failover(self.table(d, "failover", f"{p}.failover"), f"{p}.failover")
        bgp_raw = self.table(d, "bgp", f"{p}.bgp")
        bgp = None
        if bgp_raw is not None:
            bgp = self.bgp(bgp_raw, f"{p}.bgp")
            if routing not in ("bgp", None):
                self.warn(f"{p}.bgp", f"ignored: routing is {routing!r}, not \"bgp\"")
                bgp = None
        elif routing == "bgp":
            self.error(f"{p}.bgp", "routing = \"bgp\" needs a [connection.bgp] table")
        api_raw = self.table(d, "cloud_api", f"{p}.cloud_api")
        cloud_api = self.cloud_api(api_raw, f"{p}.cloud_api") if api_raw is not None else None
        tunnels_raw = self.array_of_tables(d, "tunnel", f"{p}.tunnel", "[[connection.tunnel]]")
        tunnels = tuple(
            self.tunnel(t, f"{p}.tunnel[{i}]", i, tuple(ike_ids), routing)
            for i, t in enumerate(tunnels_raw or ())
        )
        conn = ConnectionConfig(
            name=name, routing=routing, local_networks=local_networks,
            remote_networks=remote_networks, tunnels=tunnels, ike=ike, ipsec=ipsec,
            dpd_delay=dpd_delay, nat_traversal=nat_traversal, health_check=health,
            cloud_health_check=cloud_hc, failover=failover, bgp=bgp, cloud_api=cloud_api,
        )
        if tunnels_raw is not None:
            consistency.connection_rules(self, conn, p)
        return conn

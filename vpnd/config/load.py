"""Read a TOML file into the typed, frozen `Config`, or report every problem at once.

The loader never raises anything but `ConfigError` (never a traceback for bad input): each
problem carries its key path (`connection[0].tunnel[1].bgp.tunnel_cidr`) so a user can find it.
Values are checked against the cloud's own limits (`vpnd.config.rules`) because a config the
cloud would refuse only fails later, as a tunnel that never comes up.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
import tomllib
from typing import Any

from vpnd.config import rules
from vpnd.config.redact import mask_problems
from vpnd.config.model import (
    BfdConfig,
    BgpConnectionConfig,
    Config,
    ConfigError,
    ConnectionConfig,
    DaemonConfig,
    FailoverConfig,
    HealthCheckConfig,
    IkeConfig,
    IpsecConfig,
    Problem,
    Secret,
    TunnelBgpConfig,
    TunnelConfig,
)

# The keys each TOML table accepts (the loader reads exactly these; a test checks that they
# cover every field of the model).
TOP_KEYS = ("daemon", "connection")
DAEMON_KEYS = (
    "log_format", "log_level", "metrics_listen", "control_socket", "vici_socket", "vtysh_path",
    "frr_pathspace", "frr_vty_socket", "route_protocol", "withdraw_on_stop",
)
CONNECTION_KEYS = (
    "name", "routing", "local_networks", "remote_networks", "dpd_delay", "nat_traversal",
    "ike", "ipsec", "health_check", "failover", "bgp", "tunnel",
)
IKE_KEYS = (
    "version", "mode", "encryption", "integrity", "dh_group", "lifetime", "local_id", "remote_id",
)
IPSEC_KEYS = ("encryption", "integrity", "pfs_group", "lifetime")
HEALTH_KEYS = (
    "destination", "source", "interval", "retries", "switch_route", "timeout", "max_rtt_ms",
    "max_loss_percent", "kind", "port",
)
FAILOVER_KEYS = ("preempt", "preempt_delay", "hold_down", "max_switches_per_minute", "both_down")
BGP_KEYS = (
    "local_asn", "peer_asn", "keepalive", "hold", "networks", "maximum_paths", "standby",
    "prepend_count", "router_id", "bfd",
)
BFD_KEYS = ("enabled", "receive_interval_ms", "transmit_interval_ms", "detect_multiplier")
TUNNEL_KEYS = (
    "name", "local_address", "remote_address", "local_id", "remote_id", "psk", "psk_file",
    "interface", "if_id", "interface_kind", "underlay", "route_metric", "local_ts", "remote_ts",
    "probe_source", "probe_destination", "bgp",
)
TUNNEL_BGP_KEYS = ("tunnel_cidr", "local_ip", "peer_ip")

# Where each key belongs, to say "this key goes in [connection.ike]" for a misplaced key.
_SECTIONS = {
    "": TOP_KEYS, "[daemon]": DAEMON_KEYS, "[[connection]]": CONNECTION_KEYS,
    "[connection.ike]": IKE_KEYS, "[connection.ipsec]": IPSEC_KEYS,
    "[connection.health_check]": HEALTH_KEYS, "[connection.failover]": FAILOVER_KEYS,
    "[connection.bgp]": BGP_KEYS, "[connection.bgp.bfd]": BFD_KEYS,
    "[[connection.tunnel]]": TUNNEL_KEYS, "[connection.tunnel.bgp]": TUNNEL_BGP_KEYS,
}

PSK_FILE_MAX_BYTES = 4096
CONFIG_MAX_BYTES = 1 << 20
REQUIRED: Any = object()            # a getter's default meaning "the key must be present"

_TYPE_NAMES = {
    bool: "a boolean", int: "an integer", float: "a float", str: "a string",
    list: "an array", dict: "a table",
}


def load_file(path: str | os.PathLike[str]) -> Config:
    """Load and validate a config file; raises ConfigError listing every problem."""
    return load_file_with_warnings(path)[0]


def load_text(text: str, source: str = "<memory>", base_dir: str | None = None) -> Config:
    """Validate TOML text; `psk_file` paths are relative to `base_dir` (default: the cwd)."""
    return load_text_with_warnings(text, source, base_dir)[0]


def load_file_with_warnings(
    path: str | os.PathLike[str], *, strict_permissions: bool = False
) -> tuple[Config, list[Problem]]:
    """Like `load_file`, also returning the warnings.

    With `strict_permissions` the files must be trustworthy (vpnd.config.trust: owner, not
    writable by others, keys not readable by others): what check, run and reload enforce.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read(CONFIG_MAX_BYTES + 1)
            st = os.fstat(f.fileno())
    except (OSError, ValueError) as exc:
        raise ConfigError([Problem(source, f"cannot read the file: {_os_reason(exc)}")]) from None
    if len(raw) > CONFIG_MAX_BYTES:
        raise ConfigError([Problem(source, f"larger than {CONFIG_MAX_BYTES} bytes: not a "
                                           "vpnd configuration")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(source, f"not UTF-8 text (byte {exc.start})")]) from None
    base_dir = os.path.dirname(os.path.abspath(source))
    loader = _Loader(source, base_dir)
    config, warnings = loader.run(text)
    if strict_permissions:
        from vpnd.config import trust

        refused = mask_problems(trust.problems(config, st), loader.secrets)
        if refused:
            raise ConfigError(refused, warnings)
    return config, warnings


def load_text_with_warnings(
    text: str, source: str = "<memory>", base_dir: str | None = None
) -> tuple[Config, list[Problem]]:
    """Like `load_text`, also returning the warnings."""
    return _Loader(source, base_dir).run(text)


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _type_name(value: object) -> str:
    for t, name in _TYPE_NAMES.items():
        if isinstance(value, t):
            return name
    return "a date/time" if value is not None else "nothing"


def _show(value: object) -> str:
    """A value for a message: short, quoted, never multi-line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Loader:
    """One validation run: collects problems, builds the model from whatever was valid."""

    def __init__(self, source: str, base_dir: str | None) -> None:
        self.source = source
        self.base_dir = base_dir
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []
        self.secrets: set[str] = set()          # every key read, valid or not

    def error(self, path: str, message: str) -> None:
        self.errors.append(Problem(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(Problem(path, message))

    # --- entry ---------------------------------------------------------------------------

    def run(self, text: str) -> tuple[Config, list[Problem]]:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
            where = f"{self.source}:{m[1]}:{m[2]}" if m else self.source
            raise ConfigError([Problem(where, f"TOML syntax error: {msg}")]) from None
        except RecursionError:
            raise ConfigError([Problem(self.source, "TOML nested too deeply")]) from None
        config = self.config(data)
        # never quote a key back (one pasted into another field): vpnd.config.redact
        self.errors = mask_problems(self.errors, self.secrets)
        self.warnings = mask_problems(self.warnings, self.secrets)
        if self.errors:
            raise ConfigError(self.errors, self.warnings)
        return config, self.warnings

    def config(self, data: dict[str, Any]) -> Config:
        self.check_keys(data, "", TOP_KEYS)
        daemon = self.daemon(self.table(data, "daemon", "daemon"))
        conns_raw = self.array_of_tables(data, "connection", "connection", "[[connection]]")
        if conns_raw is not None and not conns_raw:
            self.error("connection", "no [[connection]] defined: nothing for vpnd to do")
        conns = tuple(
            self.connection(c, f"connection[{i}]") for i, c in enumerate(conns_raw or ())
        )
        self.across_connections(conns)
        return Config(daemon=daemon, connections=conns, source=self.source)

    # --- typed getters: each records its own problem and returns None when invalid ---------

    def check_keys(self, data: dict[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        for key in data:
            if key in allowed:
                continue
            where = f"{path}.{key}" if path else key
            hint = _suggest(key, allowed)
            if not hint:
                homes = [s for s, keys in _SECTIONS.items() if key in keys and s]
                if homes:
                    hint = f"; it belongs in {' or '.join(homes)}"
            self.error(where, f"unknown key{hint}")

    def raw(self, data: dict[str, Any], key: str, path: str, default: Any) -> tuple[bool, Any]:
        if key in data:
            return True, data[key]
        if default is REQUIRED:
            self.error(path, "required key is missing")
            return False, None
        return False, default

    def table(self, data: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
        if key not in data:
            return None
        value = data[key]
        if not isinstance(value, dict):
            self.error(path, f"expected a table ([{path}]), got {_type_name(value)}")
            return None
        return value

    def array_of_tables(
        self, data: dict[str, Any], key: str, path: str, header: str, required: bool = True
    ) -> list[dict[str, Any]] | None:
        if key not in data:
            if required:
                self.error(path, f"missing: add at least one {header} table")
            return None
        value = data[key]
        if isinstance(value, dict):
            self.error(path, f"expected an array of tables ({header}), got a table")
            return None
        if not isinstance(value, list):
            self.error(path, f"expected an array of tables ({header}), got {_type_name(value)}")
            return None
        good = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                good.append(item)
            else:
                self.error(f"{path}[{i}]", f"expected a table ({header}), got {_type_name(item)}")
        return good if len(good) == len(value) else None

    def string(
        self, data: dict[str, Any], key: str, path: str, default: Any = REQUIRED,
        choices: tuple[str, ...] | None = None, check: Any = None,
    ) -> Any:
        present, value = self.raw(data, key, path, default)
        if not present:
            return value
        if not isinstance(value, str):
            quote = " (put it in quotes)" if isinstance(value, (int, float)) else ""
            self.error(path, f"expected a string{quote}, got {_type_name(value)}")
            return None
        if choices is not None and value not in choices:
            hint = _suggest(value, choices)
            self.error(path, f"{_show(value)} is not one of {', '.join(choices)}{hint}")
            return None
        if check is not None:
            problem = check(value)
            if problem:
                self.error(path, problem)
                return None
        return value

    def integer(
        self, data: dict[str, Any], key: str, path: str, default: Any,
        lo: int | None, hi: int | None, check: Any = None,
    ) -> Any:
        present, value = self.raw(data, key, path, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"expected an integer, got {_type_name(value)}")
            return None
        if lo is not None and hi is not None and not lo <= value <= hi:
            self.error(path, f"{value} out of range {lo} to {hi}")
            return None
        problem = check(value) if check is not None else None
        if problem:
            self.error(path, problem)
            return None
        return value

    def number(
        self, data: dict[str, Any], key: str, path: str, default: Any,
        lo: float, hi: float | None = None, lo_open: bool = False,
    ) -> Any:
        present, value = self.raw(data, key, path, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(path, f"expected a number, got {_type_name(value)}")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.error(path, f"{value} is not a finite number")
            return None
        too_low = value <= lo if lo_open else value < lo
        if too_low or (hi is not None and value > hi):
            low = f"more than {lo:g}" if lo_open else f"at least {lo:g}"
            rng = f"{low}" + (f" and at most {hi:g}" if hi is not None else "")
            self.error(path, f"{value:g} out of range: must be {rng}")
            return None
        return float(value)

    def boolean(self, data: dict[str, Any], key: str, path: str, default: bool) -> Any:
        present, value = self.raw(data, key, path, default)
        if present and not isinstance(value, bool):
            self.error(path, f"expected a boolean (true or false), got {_type_name(value)}")
            return None
        return value

    def ipv4(self, data: dict[str, Any], key: str, path: str, default: Any = REQUIRED) -> Any:
        value = self.string(data, key, path, default)
        if not isinstance(value, str):
            return value
        try:
            return ipaddress.IPv4Address(value)
        except ValueError:
            self.error(path, f"{_show(value)} is not an IPv4 address")
            return None

    def network(self, value: object, path: str) -> ipaddress.IPv4Network | None:
        if not isinstance(value, str):
            self.error(path, f"expected a CIDR string like \"10.0.0.0/8\", got {_type_name(value)}")
            return None
        if "/" not in value:
            self.error(path, f"{_show(value)} needs a prefix length (e.g. \"{value}/32\")")
            return None
        try:
            return ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            if "host bits set" in str(exc):
                fixed = ipaddress.IPv4Network(value, strict=False)
                self.error(path, f"{_show(value)} has host bits set; did you mean \"{fixed}\"?")
            else:
                self.error(path, f"{_show(value)} is not an IPv4 CIDR")
            return None

    def networks(
        self, data: dict[str, Any], key: str, path: str, default: Any = REQUIRED
    ) -> Any:
        present, value = self.raw(data, key, path, default)
        if not present:
            return value
        if isinstance(value, str):
            value = [value]     # a single CIDR given without brackets
        if not isinstance(value, list):
            self.error(path, f"expected an array of CIDR strings, got {_type_name(value)}")
            return None
        nets = [self.network(v, path) for v in value]
        if any(n is None for n in nets):
            return None
        seen: set[ipaddress.IPv4Network] = set()
        for n in nets:
            if n in seen:
                self.error(path, f"{n} is listed twice")
                return None
            seen.add(n)
        return tuple(nets)

    # --- sections ------------------------------------------------------------------------

    def daemon(self, d: dict[str, Any] | None) -> DaemonConfig:
        d = d or {}
        p = "daemon"
        self.check_keys(d, p, DAEMON_KEYS)
        defaults = DaemonConfig()

        def listen(v: str) -> str | None:
            return None if v == "" else rules.listen_problem(v)

        return DaemonConfig(
            log_format=self.string(d, "log_format", f"{p}.log_format", defaults.log_format,
                                   rules.LOG_FORMATS),
            log_level=self.string(d, "log_level", f"{p}.log_level", defaults.log_level,
                                  rules.LOG_LEVELS),
            metrics_listen=self.string(d, "metrics_listen", f"{p}.metrics_listen",
                                       defaults.metrics_listen, check=listen),
            control_socket=self.string(d, "control_socket", f"{p}.control_socket",
                                       defaults.control_socket, check=rules.socket_path_problem),
            vici_socket=self.string(d, "vici_socket", f"{p}.vici_socket", defaults.vici_socket,
                                    check=rules.socket_path_problem),
            vtysh_path=self.string(d, "vtysh_path", f"{p}.vtysh_path", defaults.vtysh_path,
                                   check=_absolute_path_problem),
            frr_pathspace=self.string(d, "frr_pathspace", f"{p}.frr_pathspace", None,
                                      check=rules.pathspace_problem),
            frr_vty_socket=self.string(d, "frr_vty_socket", f"{p}.frr_vty_socket", None,
                                       check=_absolute_path_problem),
            route_protocol=self.integer(d, "route_protocol", f"{p}.route_protocol",
                                        defaults.route_protocol, None, None,
                                        check=rules.route_protocol_problem),
            withdraw_on_stop=self.boolean(d, "withdraw_on_stop", f"{p}.withdraw_on_stop",
                                          defaults.withdraw_on_stop),
        )

    def ike(self, d: dict[str, Any] | None, p: str) -> tuple[IkeConfig, Any, Any]:
        d = d or {}
        self.check_keys(d, p, IKE_KEYS)
        df = IkeConfig()
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
        if ike.mode == "aggressive" and ike.version == 2:
            self.warn(f"{p}.mode", "aggressive mode only exists in IKEv1; ignored with version = 2")
        return ike, local_id, remote_id

    def ipsec(self, d: dict[str, Any] | None, p: str) -> IpsecConfig:
        d = d or {}
        self.check_keys(d, p, IPSEC_KEYS)
        df = IpsecConfig()
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
        hc = HealthCheckConfig(
            destination=self.ipv4(d, "destination", f"{p}.destination"),
            source=self.ipv4(d, "source", f"{p}.source"),
            interval=self.number(d, "interval", f"{p}.interval", 3.0,
                                 rules.HEALTH_INTERVAL_MIN, rules.HEALTH_INTERVAL_MAX),
            retries=self.integer(d, "retries", f"{p}.retries", 3, rules.HEALTH_RETRIES_MIN,
                                 rules.HEALTH_RETRIES_MAX),
            switch_route=self.boolean(d, "switch_route", f"{p}.switch_route", True),
            timeout=self.number(d, "timeout", f"{p}.timeout", None, 0.0,
                                rules.HEALTH_INTERVAL_MAX, lo_open=True),
            max_rtt_ms=self.number(d, "max_rtt_ms", f"{p}.max_rtt_ms", None, 0.0, 60000.0,
                                   lo_open=True),
            max_loss_percent=self.number(d, "max_loss_percent", f"{p}.max_loss_percent", None,
                                         0.0, 100.0),
            kind=self.string(d, "kind", f"{p}.kind", "icmp", rules.HEALTH_KINDS),
            port=self.integer(d, "port", f"{p}.port", None, rules.PORT_MIN, rules.PORT_MAX),
        )
        if hc.kind is not None and (hc.port is not None or "port" not in d):
            problem = rules.health_port_problem(hc.kind, hc.port)
            if problem:
                self.error(f"{p}.port", problem)
        if hc.timeout is not None and hc.interval is not None and hc.timeout > hc.interval:
            self.warn(f"{p}.timeout", f"timeout {hc.timeout:g} s is longer than interval "
                      f"{hc.interval:g} s: probes overlap and a failure is seen late")
        if (hc.max_rtt_ms is not None and hc.timeout is not None
                and hc.max_rtt_ms > hc.timeout * 1000):
            self.warn(f"{p}.max_rtt_ms", "max_rtt_ms is above the probe timeout: it never trips")
        if hc.destination is not None and hc.destination == hc.source:
            self.error(f"{p}.destination", "destination and source are the same address")
        return hc

    def failover(self, d: dict[str, Any] | None, p: str) -> FailoverConfig:
        d = d or {}
        self.check_keys(d, p, FAILOVER_KEYS)
        df = FailoverConfig()
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
        )

    def asn(self, d: dict[str, Any], key: str, path: str, default: int) -> int | None:
        if key not in d:
            return default
        value, problem = rules.parse_asn(d[key])
        if problem:
            self.error(path, problem)
            return None
        warning = rules.asn_warning(value)
        if warning:
            self.warn(path, warning)
        return value

    def bgp(self, d: dict[str, Any], p: str) -> BgpConnectionConfig:
        self.check_keys(d, p, BGP_KEYS)
        df = BgpConnectionConfig()
        bfd_raw = self.table(d, "bfd", f"{p}.bfd") or {}
        self.check_keys(bfd_raw, f"{p}.bfd", BFD_KEYS)
        b = f"{p}.bfd"
        bdf = BfdConfig()
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
            networks=self.networks(d, "networks", f"{p}.networks", ()),
            maximum_paths=self.integer(d, "maximum_paths", f"{p}.maximum_paths",
                                       df.maximum_paths, rules.MAXIMUM_PATHS_MIN,
                                       rules.MAXIMUM_PATHS_MAX),
            standby=self.string(d, "standby", f"{p}.standby", df.standby, rules.STANDBY),
            prepend_count=self.integer(d, "prepend_count", f"{p}.prepend_count",
                                       df.prepend_count, rules.PREPEND_MIN, rules.PREPEND_MAX),
            router_id=self.ipv4(d, "router_id", f"{p}.router_id", None),
            bfd=bfd,
        )
        if bgp.hold is not None and bgp.hold != 0:
            if bgp.hold < rules.HOLD_MIN_NONZERO:
                self.error(f"{p}.hold", f"hold {bgp.hold} must be 0 (no keepalives) or at least "
                           f"{rules.HOLD_MIN_NONZERO} seconds (RFC 4271)")
            elif bgp.keepalive is not None and bgp.hold <= bgp.keepalive:
                self.error(f"{p}.hold", f"hold {bgp.hold} must be greater than keepalive "
                           f"{bgp.keepalive}")
        if bgp.local_asn is not None and bgp.local_asn == bgp.peer_asn:
            self.error(f"{p}.local_asn", f"local_asn equals peer_asn ({bgp.local_asn}): the "
                       "cloud peers over eBGP, use your own ASN")
        rid = bgp.router_id
        if rid is not None and (rid.is_unspecified or rid.is_multicast):
            self.error(f"{p}.router_id", f"{bgp.router_id} cannot be a router id")
        if bgp.standby == "ecmp" and bgp.maximum_paths == 1:
            self.warn(f"{p}.maximum_paths", "standby = \"ecmp\" with maximum_paths = 1 uses "
                      "one tunnel only")
        return bgp

    def tunnel_bgp(self, d: dict[str, Any], p: str) -> TunnelBgpConfig:
        self.check_keys(d, p, TUNNEL_BGP_KEYS)
        cidr = None
        present, raw = self.raw(d, "tunnel_cidr", f"{p}.tunnel_cidr", REQUIRED)
        if present:
            cidr = self.network(raw, f"{p}.tunnel_cidr")
            if cidr is not None:
                problem = rules.tunnel_cidr_problem(cidr)
                if problem:
                    self.error(f"{p}.tunnel_cidr", problem)
                    cidr = None
        local_ip = self.ipv4(d, "local_ip", f"{p}.local_ip")
        peer_ip = self.ipv4(d, "peer_ip", f"{p}.peer_ip")
        if cidr is not None:
            for key, ip in (("local_ip", local_ip), ("peer_ip", peer_ip)):
                if ip is not None:
                    problem = rules.tunnel_host_problem(ip, cidr)
                    if problem:
                        self.error(f"{p}.{key}", problem)
        if local_ip is not None and local_ip == peer_ip:
            self.error(f"{p}.peer_ip", "local_ip and peer_ip must be different addresses")
        return TunnelBgpConfig(tunnel_cidr=cidr, local_ip=local_ip, peer_ip=peer_ip)

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
                           f"{_type_name(value)}")
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
            self.error(path, f"expected a string (a file name), got {_type_name(value)}")
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
            self.error(path, f"cannot read {value!r}: {_os_reason(exc)}")
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
        local = self.ipv4(d, "local_address", f"{p}.local_address")
        remote = self.ipv4(d, "remote_address", f"{p}.remote_address")
        for key, ip in (("local_address", local), ("remote_address", remote)):
            if ip is not None:
                problem = rules.endpoint_problem(ip)
                if problem:
                    self.error(f"{p}.{key}", problem)
        if local is not None and local == remote:
            self.error(f"{p}.remote_address", "remote_address equals local_address")
        ike_local_id, ike_remote_id = ike_ids
        local_id = self.string(d, "local_id", f"{p}.local_id", None, check=rules.identity_problem)
        remote_id = self.string(d, "remote_id", f"{p}.remote_id", None,
                                check=rules.identity_problem)
        psk, psk_file = self.psk(d, p)
        kind = self.string(d, "interface_kind", f"{p}.interface_kind", "xfrm",
                           rules.INTERFACE_KINDS)
        underlay = self.string(d, "underlay", f"{p}.underlay", None, check=rules.ifname_problem)
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
            name=self.string(d, "name", f"{p}.name", f"tunnel{i + 1}", check=rules.name_problem),
            local_address=local,
            remote_address=remote,
            local_id=local_id or ike_local_id or (str(local) if local is not None else None),
            remote_id=remote_id or ike_remote_id or (str(remote) if remote is not None else None),
            psk=psk,
            interface=self.string(d, "interface", f"{p}.interface", f"ipsec{i}",
                                  check=rules.ifname_problem),
            if_id=self.integer(d, "if_id", f"{p}.if_id", 42 + i, rules.IF_ID_MIN, rules.IF_ID_MAX),
            interface_kind=kind,
            underlay=underlay,
            route_metric=self.integer(d, "route_metric", f"{p}.route_metric", 100 + i,
                                      rules.METRIC_MIN, rules.METRIC_MAX),
            local_ts=self.networks(d, "local_ts", f"{p}.local_ts", ()),
            remote_ts=self.networks(d, "remote_ts", f"{p}.remote_ts", ()),
            probe_source=self.ipv4(d, "probe_source", f"{p}.probe_source", None),
            probe_destination=self.ipv4(d, "probe_destination", f"{p}.probe_destination", None),
            bgp=bgp,
            psk_file=psk_file,
        )

    def connection(self, d: dict[str, Any], p: str) -> ConnectionConfig:
        self.check_keys(d, p, CONNECTION_KEYS)
        name = self.string(d, "name", f"{p}.name", check=rules.name_problem)
        routing = self.string(d, "routing", f"{p}.routing", "route", rules.ROUTING)
        local_networks = self.networks(d, "local_networks", f"{p}.local_networks")
        remote_networks = self.networks(d, "remote_networks", f"{p}.remote_networks")
        dpd_delay = self.integer(d, "dpd_delay", f"{p}.dpd_delay", 10, rules.DPD_MIN,
                                 rules.DPD_MAX)
        nat_traversal = self.boolean(d, "nat_traversal", f"{p}.nat_traversal", True)
        ike, *ike_ids = self.ike(self.table(d, "ike", f"{p}.ike"), f"{p}.ike")
        ipsec = self.ipsec(self.table(d, "ipsec", f"{p}.ipsec"), f"{p}.ipsec")
        health_raw = self.table(d, "health_check", f"{p}.health_check")
        health = None
        if health_raw is not None:
            health = self.health_check(health_raw, f"{p}.health_check")
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
        tunnels_raw = self.array_of_tables(d, "tunnel", f"{p}.tunnel", "[[connection.tunnel]]")
        tunnels = tuple(
            self.tunnel(t, f"{p}.tunnel[{i}]", i, tuple(ike_ids), routing)
            for i, t in enumerate(tunnels_raw or ())
        )
        conn = ConnectionConfig(
            name=name, routing=routing, local_networks=local_networks,
            remote_networks=remote_networks, tunnels=tunnels, ike=ike, ipsec=ipsec,
            dpd_delay=dpd_delay, nat_traversal=nat_traversal, health_check=health,
            failover=failover, bgp=bgp,
        )
        if tunnels_raw is not None:
            self.connection_rules(conn, p)
        return conn

    # --- rules that span several keys --------------------------------------------------------

    def connection_rules(self, c: ConnectionConfig, p: str) -> None:
        self.tunnel_pair_rules(c, p)
        self.network_rules(c, p)
        self.per_tunnel_rules(c, p)
        self.health_rules(c, p)

    def tunnel_pair_rules(self, c: ConnectionConfig, p: str) -> None:
        """The cloud's dual-tunnel mode: two tunnels that differ where it matters."""
        tunnels = c.tunnels
        if not tunnels:
            self.error(f"{p}.tunnel", "no tunnels: a connection needs two (tunnel 1 active, "
                       "tunnel 2 standby)")
        elif len(tunnels) == 1:
            self.warn(f"{p}.tunnel", "legacy single-tunnel connection: no redundancy; the "
                      "cloud's dual-tunnel mode uses two tunnels")
        elif len(tunnels) > 2:
            self.error(f"{p}.tunnel", f"{len(tunnels)} tunnels: a connection has exactly two "
                       "(tunnel 1 active, tunnel 2 standby)")
        if len(tunnels) != 2:
            return
        t1, t2 = tunnels
        q = f"{p}.tunnel[1]"
        if t1.remote_address is not None and t1.remote_address == t2.remote_address:
            self.error(f"{q}.remote_address", f"both tunnels go to {t1.remote_address}; the "
                       "cloud gives each tunnel its own IPsec address")
        if t1.name is not None and t1.name == t2.name:
            self.error(f"{q}.name", f"tunnel name {t1.name!r} used twice in {c.name!r}")
        if t1.route_metric is not None and t1.route_metric == t2.route_metric:
            self.error(f"{q}.route_metric", f"both tunnels use metric {t1.route_metric}: the "
                       "standby route must have a different (higher) metric")
        elif (t1.route_metric is not None and t2.route_metric is not None
              and t2.route_metric < t1.route_metric):
            self.warn(f"{q}.route_metric", "tunnel 2 has the lower metric, so it is preferred "
                      "when both are up")
        if (t1.bgp is not None and t2.bgp is not None and t1.bgp.tunnel_cidr is not None
                and t1.bgp.tunnel_cidr == t2.bgp.tunnel_cidr):
            self.error(f"{q}.bgp.tunnel_cidr", f"both tunnels use {t1.bgp.tunnel_cidr}; the "
                       "two tunnels must use different tunnel CIDR blocks")

    def network_rules(self, c: ConnectionConfig, p: str) -> None:
        """Protected networks: present, disjoint, few enough, one per side with IKEv1."""
        local, remote = c.local_networks, c.remote_networks
        for key, nets in (("local_networks", local), ("remote_networks", remote)):
            if nets is not None and not nets:
                self.error(f"{p}.{key}", "needs at least one CIDR")
            for i, a in enumerate(nets or ()):
                for b in nets[i + 1:]:
                    if a.overlaps(b):
                        self.warn(f"{p}.{key}", f"{a} and {b} overlap")
            if c.ike.version == 1 and nets and len(nets) > 1:
                self.error(f"{p}.ike.version", f"{key} has {len(nets)} CIDRs; more than one "
                           "network per side requires version = 2 (IKEv2)")
        if remote is not None and len(remote) > rules.MAX_REMOTE_NETWORKS:
            self.error(f"{p}.remote_networks", f"{len(remote)} CIDRs; the cloud accepts at most "
                       f"{rules.MAX_REMOTE_NETWORKS}")
        for r in remote or ():
            for lo in local or ():
                if r.overlaps(lo):
                    self.error(f"{p}.remote_networks", f"{r} overlaps local network {lo}")

    def per_tunnel_rules(self, c: ConnectionConfig, p: str) -> None:
        for i, t in enumerate(c.tunnels):
            q = f"{p}.tunnel[{i}]"
            if c.ike.version == 1:
                for key in ("local_ts", "remote_ts"):
                    ts = getattr(t, key)
                    if ts and len(ts) > 1:
                        self.error(f"{q}.{key}", "more than one traffic selector requires "
                                   "ike.version = 2")
            for r in c.remote_networks or ():
                if t.remote_address is not None and t.remote_address in r:
                    self.warn(f"{p}.remote_networks", f"{r} contains {q}.remote_address "
                              f"{t.remote_address}: its IKE/ESP packets would be routed into "
                              "the tunnel unless a more specific route exists")
            if c.ike.version == 1 and c.ike.mode == "main":
                for key in ("local_id", "remote_id"):
                    ident = getattr(t, key)
                    if isinstance(ident, str) and rules.is_fqdn_identity(ident):
                        self.warn(f"{q}.{key}", "an FQDN identity with IKEv1 main mode: the cloud "
                                  "recommends mode = \"aggressive\"")
            if (c.nat_traversal is False and t.local_address is not None
                    and t.remote_address is not None and rules.is_nat_private(t.local_address)
                    and not rules.is_nat_private(t.remote_address)):
                self.warn(f"{p}.nat_traversal", f"{q}.local_address {t.local_address} is private "
                          "and the peer public: behind NAT the tunnel needs nat_traversal = true")

    def health_rules(self, c: ConnectionConfig, p: str) -> None:
        """Probes must cross the tunnel: not to an endpoint, between the protected networks."""
        hc, tunnels = c.health_check, c.tunnels
        if hc is None:
            if c.routing in ("route", "policy") and len(tunnels) == 2:
                self.warn(f"{p}.health_check", "no health check: failover then waits for "
                          "IKE/DPD to notice a dead tunnel (tens of seconds)")
            return
        hp = f"{p}.health_check"
        if hc.destination is not None:
            endpoints = {a for t in tunnels for a in (t.local_address, t.remote_address)}
            if hc.destination in endpoints:
                self.error(f"{hp}.destination", f"{hc.destination} is a tunnel endpoint: "
                           "probes would test the underlay, not the tunnel")
            inside = list(c.remote_networks or ()) + [
                t.bgp.tunnel_cidr for t in tunnels if t.bgp and t.bgp.tunnel_cidr]
            if c.remote_networks is not None and not any(hc.destination in n for n in inside):
                self.warn(f"{hp}.destination", f"{hc.destination} is not inside "
                          "remote_networks: probes may not go through the tunnel")
        local = c.local_networks
        if hc.source is not None and local and not any(hc.source in n for n in local):
            self.warn(f"{hp}.source", f"{hc.source} is not inside local_networks: replies "
                      "may not come back through the tunnel")
        if hc.kind == "tcp" and c.routing != "policy":
            self.warn(f"{hp}.kind", "tcp probes are bound to each tunnel's interface, so the "
                      "answer must come back through the same tunnel; a cloud that returns "
                      "traffic through its active tunnel makes the standby look dead "
                      "(use kind = \"icmp\" then)")
        if c.routing == "policy" and len(tunnels) > 1:
            self.policy_probe_rules(c, p)

    def policy_probe_rules(self, c: ConnectionConfig, p: str) -> None:
        """Policy mode: both tunnels carry the same flows, so a probe path shared by the
        tunnels crosses only the one carrying traffic (docs/policy-mode.md)."""
        hc = c.health_check
        paths = [(t.probe_source or hc.source, t.probe_destination or hc.destination)
                 for t in c.tunnels]
        if len(set(paths)) < len(paths):
            self.warn(f"{p}.health_check", "routing = \"policy\": the tunnels share one probe "
                      "path, so probes test only the tunnel carrying traffic and the standby's "
                      "failure or recovery goes unseen; give each tunnel probe_source and "
                      "probe_destination inside its own local_ts / remote_ts")
        for ti, t in enumerate(c.tunnels):
            q = f"{p}.tunnel[{ti}]"
            for key, addr, nets in (("probe_source", t.probe_source, t.local_ts),
                                    ("probe_destination", t.probe_destination, t.remote_ts)):
                if addr is not None and nets and not any(addr in n for n in nets):
                    side = "local_ts" if key == "probe_source" else "remote_ts"
                    self.warn(f"{q}.{key}", f"{addr} is not inside {q}.{side}: the probe "
                              "would not cross this tunnel's CHILD SA")

    def across_connections(self, conns: tuple[ConnectionConfig, ...]) -> None:
        names: dict[str, int] = {}
        interfaces: dict[str, str] = {}
        if_ids: dict[int, str] = {}
        endpoints: dict[tuple[Any, Any], str] = {}
        cidrs: dict[Any, str] = {}
        for ci, c in enumerate(conns):
            if c.name is not None:
                if c.name in names:
                    self.error(f"connection[{ci}].name", f"{c.name!r} is already the name of "
                               f"connection[{names[c.name]}]")
                else:
                    names[c.name] = ci
            for ti, t in enumerate(c.tunnels):
                q = f"connection[{ci}].tunnel[{ti}]"
                if t.interface is not None:
                    if t.interface in interfaces:
                        self.error(f"{q}.interface", f"{t.interface!r} is already used by "
                                   f"{interfaces[t.interface]}")
                    else:
                        interfaces[t.interface] = q
                if t.if_id is not None:
                    if t.if_id in if_ids:
                        self.error(f"{q}.if_id", f"{t.if_id} is already used by {if_ids[t.if_id]}")
                    else:
                        if_ids[t.if_id] = q
                if t.local_address is not None and t.remote_address is not None:
                    key = (t.local_address, t.remote_address)
                    if key in endpoints and not endpoints[key].startswith(f"connection[{ci}]."):
                        self.error(f"{q}.remote_address", f"{t.local_address} -> "
                                   f"{t.remote_address} is already {endpoints[key]}: charon "
                                   "could not tell the two IKE SAs apart")
                    endpoints.setdefault(key, q)
                if t.bgp is not None and t.bgp.tunnel_cidr is not None:
                    cidr = t.bgp.tunnel_cidr
                    if cidr in cidrs and not cidrs[cidr].startswith(f"connection[{ci}]."):
                        self.error(f"{q}.bgp.tunnel_cidr", f"{cidr} is already used by "
                                   f"{cidrs[cidr]}")
                    cidrs.setdefault(cidr, q)
        id_pairs: dict[tuple[str, str], tuple[str, Secret]] = {}
        for ci, c in enumerate(conns):
            for ti, t in enumerate(c.tunnels):
                q = f"connection[{ci}].tunnel[{ti}]"
                if t.local_id and t.remote_id and t.psk is not None:
                    seen = id_pairs.setdefault((t.local_id, t.remote_id), (q, t.psk))
                    if seen[1] != t.psk:
                        self.error(f"{q}.remote_id", f"{seen[0]} has the same local_id and "
                                   "remote_id but another key: charon picks the key by these "
                                   "identities, so set distinct ids")
                if t.underlay is not None and t.underlay in interfaces:
                    self.error(f"{q}.underlay",
                               f"{t.underlay!r} is a tunnel interface, not an underlay")


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    """'; did you mean X?' for a typo, preferring a choice the word starts (aes -> aes128)."""
    close = [c for c in choices if c == word.lower()]
    close = close or [c for c in choices if word and c.startswith(word)]
    close = close or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _absolute_path_problem(value: str) -> str | None:
    if not value.startswith("/") or "\0" in value:
        return "must be an absolute path"
    return None

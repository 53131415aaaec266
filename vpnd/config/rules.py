"""The cloud's limits and the kernel's, as data plus small pure checks.

Each check returns an error message (a string) or None, so the loader can attach the key
path. Limits come from the cloud's IPsec-VPN documentation (the vendor's IPsec-VPN documentation), its health checks
(the vendor's health-check documentation) and the vendor's strongSwan/FRR procedure (the vendor's strongSwan guide). Messages never quote a
pre-shared key.
"""

from __future__ import annotations

import ipaddress
import re

# --- IKE / IPsec algorithms (the vendor's IPsec-VPN documentation, "Encryption Configuration") --------------------------

# A tunnel interface's `mtu`: IPv4's minimum datagram (RFC 791) to jumbo frames.
MTU_MIN, MTU_MAX = 576, 9000

ENCRYPTION = ("aes128", "aes192", "aes256", "des", "3des")
INTEGRITY = ("sha1", "md5", "sha256", "sha384", "sha512")
DH_GROUPS = ("group1", "group2", "group5", "group14")
PFS_GROUPS = ("disabled",) + DH_GROUPS
IKE_VERSIONS = (1, 2)
IKE_MODES = ("main", "aggressive")
LIFETIME_MIN, LIFETIME_MAX = 0, 86400           # SA life cycle, seconds, both phases

# Choices the cloud accepts but advises against ("Do not use the des or 3des algorithms"),
# and the ones that are broken or short of today's minimums (MD5, SHA-1, MODP <= 1536).
WEAK_CHOICES = {
    "des": "des is broken; use aes128, aes192 or aes256",
    "3des": "3des is weak and slow; use aes128, aes192 or aes256",
    "md5": "md5 is broken; use sha256 or stronger",
    "sha1": "sha1 is deprecated; use sha256 or stronger (both sides must match)",
    "group1": "group1 (modp768) is broken; use group14",
    "group2": "group2 (modp1024) is weak; use group14 (both sides must match)",
    "group5": "group5 (modp1536) is weak; use group14",
}

# --- Pre-shared key (the vendor's IPsec-VPN documentation, "Pre-shared Key") ---------------------------------------------

PSK_MIN_LEN, PSK_MAX_LEN = 1, 100
PSK_SPECIALS = "~`!@#$%^&*()_-+={}[]\\|;:',.<>/?"
PSK_ALLOWED = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + PSK_SPECIALS
)
PSK_SHORT = 16          # the cloud generates 16 characters when it picks the key itself


def psk_problem(value: str) -> str | None:
    """Why the cloud would refuse this key, without ever quoting it."""
    if not PSK_MIN_LEN <= len(value) <= PSK_MAX_LEN:
        return (f"the key must be {PSK_MIN_LEN} to {PSK_MAX_LEN} characters long "
                f"(it has {len(value)})")
    for i, ch in enumerate(value, 1):
        if ch.isspace():
            return f"the key must not contain spaces (character {i} is whitespace)"
        if ch not in PSK_ALLOWED:
            return (
                f"character {i} of the key is not allowed; use letters, digits and "
                f"{PSK_SPECIALS}"
            )
    return None


# --- Names -----------------------------------------------------------------------------------

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Linux accepts almost any byte in an interface name (dev_valid_name: < 16 bytes, no '/', ':'
# or whitespace, not "." or ".."). We also refuse '%' (a kernel name template) and anything
# outside this set, because the name goes unquoted into vtysh commands and FRR configs.
IFNAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")
IFNAMSIZ = 16


def name_problem(value: str) -> str | None:
    if NAME_RE.fullmatch(value):
        return None
    return "must be 1 to 32 characters of letters, digits, '_' and '-'"


def ifname_problem(value: str) -> str | None:
    if value in (".", ".."):
        return f"{value!r} is not a valid interface name"
    if len(value.encode()) >= IFNAMSIZ:
        return f"interface names are at most {IFNAMSIZ - 1} characters (Linux IFNAMSIZ)"
    if not IFNAME_RE.fullmatch(value):
        return "interface names use letters, digits, '_', '.' and '-' only (no '/', ':', spaces)"
    return None


# --- The cloud's API (connection.cloud_api) ----------------------------------------------------

_CLOUD_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


# Plain HTTP only to loopback (a local proxy, or a test's endpoint): credentials and the
# answer (it carries the keys) never cross a network unencrypted.
_LOOPBACK_HTTP_RE = re.compile(r"http://127\.\d{1,3}\.\d{1,3}\.\d{1,3}(:\d{1,5})?")


def cloud_endpoint_problem(value: str) -> str | None:
    """host[:port] (HTTPS), or http://127.x.x.x[:port] (loopback only)."""
    if value.startswith("http://"):
        if _LOOPBACK_HTTP_RE.fullmatch(value):
            return None
        return "plain http:// is allowed only to a loopback address (http://127.0.0.1:PORT)"
    return cloud_id_problem(value)


def cloud_id_problem(value: str) -> str | None:
    """A cloud resource id, region or endpoint host[:port]: letters, digits, '.', '_', ':'
    and '-' (it goes into an API request, so nothing else)."""
    if _CLOUD_ID_RE.fullmatch(value):
        return None
    return "must be 1 to 128 letters, digits, '.', '_', ':' or '-' (an id, region or host:port)"


# --- IKE identities (the vendor's IPsec-VPN documentation, LocalId / RemoteId) -------------------------------------------

FQDN_MAX = 253
_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def identity_problem(value: str) -> str | None:
    """An IKE identity: an IPv4 address or an FQDN (no spaces), as the cloud accepts."""
    if not value:
        return "must not be empty"
    if any(ch.isspace() for ch in value):
        return "must not contain spaces"
    if re.fullmatch(r"[0-9.]+", value):
        return None if _is_ipv4(value) else f"{value!r} is not a valid IPv4 address"
    if len(value) > FQDN_MAX:
        return f"an FQDN is at most {FQDN_MAX} characters"
    labels = value.split(".")
    for label in labels:
        if not _LABEL_RE.fullmatch(label):
            return (
                f"{value!r} is neither an IPv4 address nor a valid FQDN (label {label!r}: "
                "1 to 63 letters, digits or '-', not starting or ending with '-')"
            )
    if labels[-1].isdigit():
        return f"{value!r} is neither an IPv4 address nor a valid FQDN (numeric top-level label)"
    return None


def is_fqdn_identity(value: str) -> bool:
    return not _is_ipv4(value)


def _is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


# --- BGP (the vendor's IPsec-VPN documentation, "BGP Configuration"; the vendor's strongSwan guide FRR) ---------------------------------------

ASN_MIN, ASN_MAX = 1, 4294967295
AS_TRANS = 23456                                # RFC 6793: never a real peer's ASN
ASN_RESERVED = (65535, 4294967295)              # RFC 7300 (the cloud still accepts them)

BGP_LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")
# The cloud refuses these tunnel CIDRs. Our team brief said 169.254.0.0/30 .. 169.254.5.0/30,
# but the vendor document (the vendor's IPsec-VPN documentation) lists 169.254.0.0/30 through 169.254.6.0/30 - seven
# blocks - plus 169.254.169.252/30. We follow the vendor document.
BGP_RESERVED_CIDRS = tuple(
    ipaddress.IPv4Network(c)
    for c in (
        "169.254.0.0/30",
        "169.254.1.0/30",
        "169.254.2.0/30",
        "169.254.3.0/30",
        "169.254.4.0/30",
        "169.254.5.0/30",
        "169.254.6.0/30",
        "169.254.169.252/30",
    )
)

KEEPALIVE_MIN, KEEPALIVE_MAX = 0, 65535          # FRR: timers bgp <0-65535> <0-65535>
HOLD_MIN_NONZERO, HOLD_MAX = 3, 65535            # RFC 4271: hold 0 or at least 3 seconds
MAXIMUM_PATHS_MIN, MAXIMUM_PATHS_MAX = 1, 64     # FRR's limit is a build option; 64 on Debian
STANDBY = ("prepend", "ecmp")
PREPEND_MIN, PREPEND_MAX = 1, 10
RETURN_PATH = ("more-specific", "none")
BFD_INTERVAL_MIN, BFD_INTERVAL_MAX = 10, 60000   # milliseconds (FRR bfdd)
BFD_MULTIPLIER_MIN, BFD_MULTIPLIER_MAX = 2, 255


def parse_asn(value: object) -> tuple[int | None, str | None]:
    """An ASN as an integer, "65000" (asplain) or "1.10" (asdot, = 1*65536+10)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None, "expected an integer or an asdot string like \"1.10\""
    if isinstance(value, str):
        m = re.fullmatch(r"([0-9]{1,5})\.([0-9]{1,5})", value.strip())
        if m:
            high, low = int(m[1]), int(m[2])
            if high > 65535 or low > 65535:
                return None, f"asdot {value!r}: each half must be 0 to 65535"
            value = high * 65536 + low
        elif re.fullmatch(r"[0-9]{1,10}", value.strip()):
            value = int(value.strip())
        else:
            return None, f"{value!r} is not an ASN (an integer or asdot \"X.Y\")"
    if not ASN_MIN <= value <= ASN_MAX:
        return None, f"ASN {value} out of range {ASN_MIN} to {ASN_MAX}"
    return value, None


def asn_warning(asn: int) -> str | None:
    if asn == AS_TRANS:
        return "23456 is AS_TRANS (RFC 6793), not a usable ASN"
    if asn in ASN_RESERVED:
        return f"{asn} is a reserved ASN (RFC 7300)"
    return None


def tunnel_cidr_problem(net: ipaddress.IPv4Network) -> str | None:
    if net.prefixlen != 30:
        return f"{net} must be a /30"
    if not net.subnet_of(BGP_LINK_LOCAL):
        return f"{net} must be inside {BGP_LINK_LOCAL}"
    if net in BGP_RESERVED_CIDRS:
        return f"{net} is reserved by the cloud (not allowed: " + ", ".join(
            str(c) for c in BGP_RESERVED_CIDRS
        ) + ")"
    return None


def tunnel_host_problem(ip: ipaddress.IPv4Address, net: ipaddress.IPv4Network) -> str | None:
    if ip not in net:
        return f"{ip} is not inside the tunnel CIDR {net}"
    if ip in (net.network_address, net.broadcast_address):
        hosts = ", ".join(str(h) for h in net.hosts())
        return f"{ip} is the network or broadcast address of {net} (usable: {hosts})"
    return None


# --- Health checks and failover (the vendor's health-check documentation) ---------------------------------------------------

HEALTH_INTERVAL_MIN = 0.02          # seconds (20 ms x 3: a 60 ms budget); faster floods the tunnel
HEALTH_INTERVAL_MAX = 3600.0
PATH_MTU_INTERVAL_MIN = 60.0       # seconds: a search is up to ~30 probes, not a flood
PATH_MTU_INTERVAL_MAX = 86400.0
HEALTH_RETRIES_MIN, HEALTH_RETRIES_MAX = 1, 100
# The cloud's own health check (the vendor's health-check documentation: "Retry Interval ... Default value: 3", "Retries ...
# Default value: 3"). The vendor's documentation gives no ranges; these are the console's limits as the vendor's
# API reference states them (whole seconds 1..60, 1..100 retries).
CLOUD_HC_INTERVAL_MIN, CLOUD_HC_INTERVAL_MAX = 1, 60
CLOUD_HC_RETRIES_MIN, CLOUD_HC_RETRIES_MAX = 1, 100
HEALTH_KINDS = ("icmp", "tcp")      # echo request, or a TCP connect like keepalived's TCP_CHECK
PORT_MIN, PORT_MAX = 1, 65535


def health_port_problem(kind: str, port: int | None) -> str | None:
    """A TCP probe connects to a port; an ICMP probe has none, so a port there is a mistake."""
    if kind == "tcp" and port is None:
        return "required when kind = \"tcp\" (the port the probe connects to)"
    if kind == "icmp" and port is not None:
        return "only for kind = \"tcp\"; ICMP probes have no port (remove it or set kind)"
    return None
BOTH_DOWN = ("keep", "withdraw")

# --- Connection ------------------------------------------------------------------------------

ROUTING = ("route", "policy", "bgp")
MAX_REMOTE_NETWORKS = 20
DPD_MIN, DPD_MAX = 0, 3600
INTERFACE_KINDS = ("xfrm", "existing")
IF_ID_MIN, IF_ID_MAX = 1, 4294967295
METRIC_MIN, METRIC_MAX = 0, 4294967295

# --- Daemon ----------------------------------------------------------------------------------

LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
ROUTE_PROTOCOL_MIN, ROUTE_PROTOCOL_MAX = 1, 255
# 0-4 belong to the kernel (unspec, redirect, kernel, boot, static). The numbers below are
# named in linux/rtnetlink.h for other routing daemons: stamping our routes with one of them
# would make vpnd treat FRR's or bird's routes as its own after a restart.
ROUTE_PROTOCOL_RESERVED = {
    0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static",
}
ROUTE_PROTOCOL_TAKEN = {
    8: "gated", 9: "ra", 10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp",
    15: "ntk", 16: "dhcp", 17: "mrouted", 18: "keepalived", 42: "babel", 99: "openr",
    186: "bgp", 187: "isis", 188: "ospf", 189: "rip", 192: "eigrp",
}
UNIX_PATH_MAX = 107                 # sizeof(sun_path) - 1


def route_protocol_problem(value: int) -> str | None:
    if not ROUTE_PROTOCOL_MIN <= value <= ROUTE_PROTOCOL_MAX:
        return f"{value} out of range {ROUTE_PROTOCOL_MIN} to {ROUTE_PROTOCOL_MAX}"
    if value in ROUTE_PROTOCOL_RESERVED:
        return f"{value} ({ROUTE_PROTOCOL_RESERVED[value]}) is reserved by the kernel; use 5 to 255"
    if value in ROUTE_PROTOCOL_TAKEN:
        return (
            f"{value} is the kernel's number for {ROUTE_PROTOCOL_TAKEN[value]!r}; vpnd would "
            "take that daemon's routes for its own (default 249)"
        )
    return None


def listen_problem(value: str) -> str | None:
    """ "host:port" for the metrics endpoint; host an IPv4 address, [IPv6] or a hostname."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        return f"{value!r} must be \"host:port\" (e.g. \"127.0.0.1:9456\") or \"\" to disable"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port {port!r} must be 1 to 65535"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address"
        return None
    if re.fullmatch(r"[0-9.]+", host):
        return None if _is_ipv4(host) else f"{host!r} is not a valid IPv4 address"
    if all(_LABEL_RE.fullmatch(lab) for lab in host.split(".")):
        return None
    return f"{host!r} is not an IPv4 address, [IPv6] address or hostname"


def socket_path_problem(value: str) -> str | None:
    if not value.startswith("/"):
        return "must be an absolute path"
    if "\0" in value:
        return "must not contain NUL"
    if len(value.encode()) > UNIX_PATH_MAX:
        return f"a unix socket path is at most {UNIX_PATH_MAX} bytes"
    return None


def absolute_path_problem(value: str) -> str | None:
    if not value.startswith("/") or "\0" in value:
        return "must be an absolute path"
    return None


def pathspace_problem(value: str) -> str | None:
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value) and value not in (".", ".."):
        return None
    return "an FRR pathspace name uses letters, digits, '_', '.' and '-' (no '/')"


# --- Addresses -------------------------------------------------------------------------------

# RFC 1918 private ranges and RFC 6598 carrier-grade NAT: an address here is behind NAT.
NAT_PRIVATE = tuple(
    ipaddress.IPv4Network(c)
    for c in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)


def endpoint_problem(ip: ipaddress.IPv4Address) -> str | None:
    """Addresses that can never be an IKE endpoint."""
    if ip.is_unspecified:
        return "0.0.0.0 is not an address"
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if ip == ipaddress.IPv4Address("255.255.255.255") or ip.is_reserved:
        return f"{ip} is a reserved/broadcast address"
    return None


def is_nat_private(ip: ipaddress.IPv4Address) -> bool:
    return any(ip in net for net in NAT_PRIVATE)

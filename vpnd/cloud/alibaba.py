"""Alibaba Cloud VPN Gateway: one IPsec-VPN connection's `DescribeVpnConnection` response
mapped onto vpnd's configuration (`vpnd import alibaba`), and the SDK call that fetches it.

The mapping only maps: it never judges a value (the config loader does, when `vpnd check`
reads what was written), so a value vpnd does not support (a ShangMi "sm4") is written as the
cloud said and refused by check with the loader's own message. It refuses only what vpnd's
model cannot hold (the two tunnels differing in a setting vpnd keeps once per connection).
The cloud's Local* fields are our remote ones and vice versa (as in `vpnd render peer`);
docs/import.md has the table of every documented field and where it goes.

The SDK (`alibabacloud-vpc20160428`, the extra `vpnd[alibaba]`) and the credential chain
(`alibabacloud_credentials`) are imported only by `fetch`, never at import time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from vpnd.config.reader import placeholder, placeholder_problem

SDK_HINT = ("the Alibaba Cloud SDK is not installed: pip install 'vpnd[alibaba]' "
            "(alibabacloud-vpc20160428, alibabacloud-credentials), or import a saved "
            "response with --response FILE")

# The API's algorithm names that differ from vpnd's ("aes" is AES-128). DH groups (group1,
# group2, group5, group14, and "disabled" for PFS), the integrity names and the IKE modes are
# the same words on both sides.
ENCRYPTION = {"aes": "aes128"}
IKE_VERSION = {"ikev1": 1, "ikev2": 2}
# VcoHealthCheck.Policy: withdraw the routes when the check fails, or keep them.
SWITCH_ROUTE = {"revoke_route": True, "reserve_route": False}
ANY = "0.0.0.0/0"               # both subnets 0.0.0.0/0: the cloud's destination routing mode
_NAME_BAD = re.compile(r"[^A-Za-z0-9_-]+")


class CloudImportError(Exception):
    """The response cannot be mapped (vpnd's model cannot hold it); the message says why."""


@dataclass(frozen=True)
class CustomerSide:
    """The values only the operator knows (flags); empty ones become placeholders."""

    name: str | None = None
    local_addresses: tuple[str, ...] = ()      # one for both tunnels, or one per tunnel
    local_networks: tuple[str, ...] = ()
    remote_networks: tuple[str, ...] = ()
    interfaces: tuple[str, ...] = ()
    underlay: str | None = None
    probe_source: str | None = None
    probe_destination: str | None = None
    # customer gateway id -> its IP address (DescribeCustomerGateway, on the SDK path)
    gateway_addresses: dict[str, str] = field(default_factory=dict)


@dataclass
class Tunnel:
    """One tunnel as read from the response, before it becomes a [[connection.tunnel]]."""

    index: int
    opts: dict[str, Any]
    ike: dict[str, Any]
    ipsec: dict[str, Any]
    bgp: dict[str, Any]


@dataclass
class Imported:
    """What `vpnd import` writes: the config (PSK file names in it) and the keys by file."""

    name: str
    doc: dict[str, Any]                         # the [[connection]] table, as TOML data
    comments: dict[str, list[str]]              # comment lines by table header
    psks: list[str]                             # per tunnel, in order (never printed)
    notes: list[str] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)
    cloud: list[dict[str, Any]] = field(default_factory=list)    # per tunnel: State, Status...
    connection_id: str | None = None


# --- reading the documented shape ---------------------------------------------------------------

def _body(response: dict[str, Any]) -> dict[str, Any]:
    """The response body: a saved CLI/OpenAPI-explorer answer, or the SDK's {"body": ...}."""
    if not isinstance(response, dict):
        raise CloudImportError("not a DescribeVpnConnection response (expected a JSON object)")
    body = response.get("body", response)
    if not isinstance(body, dict) or not ("VpnConnectionId" in body
                                          or "TunnelOptionsSpecification" in body
                                          or "IkeConfig" in body):
        raise CloudImportError("not a DescribeVpnConnection response (no VpnConnectionId, "
                               "TunnelOptionsSpecification or IkeConfig)")
    return body


def _table(d: dict[str, Any], key: str) -> dict[str, Any]:
    v = d.get(key)
    return v if isinstance(v, dict) else {}


def _bool(v: Any) -> Any:
    """The API writes booleans as JSON booleans or as "true"/"false" (tunnel options)."""
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v


def _int(v: Any) -> Any:
    """Lifetimes and ASNs come as numbers or decimal strings ("86400"); other text is
    written as it is, for the loader to refuse."""
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    return v


def _subnets(v: Any) -> list[str]:
    if not isinstance(v, str):
        return []
    return [s.strip() for s in v.split(",") if s.strip()]


def tunnels(body: dict[str, Any]) -> list[Tunnel]:
    """The tunnels, the active one (Role "master") first; a single-tunnel connection's one
    tunnel from the connection-level fields."""
    spec = _table(body, "TunnelOptionsSpecification")
    raw = spec.get("TunnelOptions") if spec else None
    if isinstance(raw, list) and raw:
        found = [Tunnel(i, t, _table(t, "TunnelIkeConfig"), _table(t, "TunnelIpsecConfig"),
                        _table(t, "TunnelBgpConfig"))
                 for i, t in enumerate(raw) if isinstance(t, dict)]

        def order(t: Tunnel) -> tuple[int, int, int]:
            role = {"master": 0, "slave": 1}.get(str(t.opts.get("Role", "")).lower(), 2)
            idx = t.opts.get("TunnelIndex")
            return role, idx if isinstance(idx, int) else 99, t.index
        return sorted(found, key=order)
    opts = {k: body.get(k) for k in ("InternetIp", "CustomerGatewayId", "EnableDpd",
                                     "EnableNatTraversal", "Status", "State", "ZoneNo")}
    opts["TunnelId"] = None
    return [Tunnel(0, opts, _table(body, "IkeConfig"), _table(body, "IpsecConfig"),
                   _table(body, "VpnBgpConfig"))]


def _same(tuns: list[Tunnel], what: str, values: list[Any], notes: list[str]) -> Any:
    """A setting vpnd keeps once per connection: the tunnels must agree."""
    present = [v for v in values if v is not None]
    if len(set(map(repr, present))) > 1:
        shown = ", ".join(f"tunnel {i + 1} {v!r}" for i, v in enumerate(values))
        raise CloudImportError(f"the cloud's tunnels differ in {what} ({shown}); vpnd keeps it "
                               "once per connection: make them equal in the console first")
    return present[0] if present else None


# --- the mapping --------------------------------------------------------------------------------

def connection_name(body: dict[str, Any], side: CustomerSide) -> str:
    """--name, else the cloud's Name, else its VpnConnectionId, as a vpnd name (letters,
    digits, '_' and '-', at most 32)."""
    if side.name is not None:
        return side.name                # the operator's own: the loader judges it
    for candidate in (body.get("Name"), body.get("VpnConnectionId")):
        if isinstance(candidate, str):
            name = _NAME_BAD.sub("-", candidate).strip("-")[:32]
            if name:
                return name
    return "vpc1"


def from_response(response: dict[str, Any], side: CustomerSide | None = None) -> Imported:
    """Map one DescribeVpnConnection response (the body, as JSON data) onto a [[connection]]."""
    side = side or CustomerSide()
    body = _body(response)
    tuns = tunnels(body)
    if len(tuns) > 2:
        raise CloudImportError(f"the response has {len(tuns)} tunnels; vpnd runs one or two")
    notes: list[str] = []
    holes: list[str] = []

    def hole(what: str) -> str:
        holes.append(what)
        return placeholder(what)

    name = connection_name(body, side)
    bgp_on = _bool(body.get("EnableTunnelsBgp"))
    if bgp_on is None and not body.get("TunnelOptionsSpecification"):
        bgp_on = _bool(_table(body, "VpnBgpConfig").get("EnableBgp"))
    cloud_local, cloud_remote = _subnets(body.get("LocalSubnet")), _subnets(body.get("RemoteSubnet"))
    any_any = cloud_local in ([], [ANY]) and cloud_remote in ([], [ANY])
    routing = "bgp" if bgp_on is True else ("route" if any_any else "policy")

    conn: dict[str, Any] = {"name": name, "routing": routing}
    # The cloud's LocalSubnet is the VPC side (our remote networks), RemoteSubnet ours.
    conn["local_networks"] = _networks(cloud_remote, side.local_networks, "local", hole)
    conn["remote_networks"] = _networks(cloud_local, side.remote_networks, "remote", hole)

    dpd = _same(tuns, "EnableDpd", [_bool(t.opts.get("EnableDpd")) for t in tuns], notes)
    if dpd is False:
        conn["dpd_delay"] = 0
    elif dpd is not None and dpd is not True:
        conn["dpd_delay"] = dpd         # not a boolean: the loader says what is wrong
    natt = _same(tuns, "EnableNatTraversal",
                 [_bool(t.opts.get("EnableNatTraversal")) for t in tuns], notes)
    if natt is not None:
        conn["nat_traversal"] = natt

    conn["ike"] = _phase(tuns, notes, "ike", {
        "version": ("IkeVersion", lambda v: IKE_VERSION.get(str(v).lower(), v)),
        "mode": ("IkeMode", lambda v: str(v).lower() if isinstance(v, str) else v),
        "encryption": ("IkeEncAlg", _enc),
        "integrity": ("IkeAuthAlg", _lower),
        "dh_group": ("IkePfs", _lower),
        "lifetime": ("IkeLifetime", _int),
    })
    conn["ipsec"] = _phase(tuns, notes, "ipsec", {
        "encryption": ("IpsecEncAlg", _enc),
        "integrity": ("IpsecAuthAlg", _lower),
        "pfs_group": ("IpsecPfs", _lower),
        "lifetime": ("IpsecLifetime", _int),
    })

    conn["health_check"] = _health(body, side, notes, hole)
    cloud_check = _cloud_health(body)
    if cloud_check:
        conn["cloud_health_check"] = cloud_check
    if bgp_on is True:             # the cloud's EnableTunnelsBgp: BGP tables
        conn["bgp"] = _bgp(tuns, notes, hole)

    out_tunnels = []
    psks = []
    cloud = []
    for i, t in enumerate(tuns):
        tname = f"tunnel{i + 1}"
        td: dict[str, Any] = {"name": tname}
        td["local_address"] = _local_address(i, t, side, hole)
        remote = t.opts.get("InternetIp")
        td["remote_address"] = remote if remote else hole(f"the cloud's IPsec address for {tname}")
        if t.ike.get("RemoteId"):
            td["local_id"] = t.ike["RemoteId"]          # the cloud's RemoteId is us
        if t.ike.get("LocalId"):
            td["remote_id"] = t.ike["LocalId"]          # its LocalId is the cloud
        td["psk_file"] = ""                             # the command fills in the path
        psk = t.ike.get("Psk")
        if not isinstance(psk, str) or not psk:
            raise CloudImportError(f"{tname}: the response has no pre-shared key (Psk); the "
                                   "API returns it to an account allowed to read it")
        psks.append(psk)
        if i < len(side.interfaces):
            td["interface"] = side.interfaces[i]
        if side.underlay:
            td["underlay"] = side.underlay
        if bgp_on is True:
            td["bgp"] = _tunnel_bgp(t, tname, hole)
            if not any_any:
                # BGP over protected data flows: the cloud's selectors are these subnets
                td["local_ts"], td["remote_ts"] = cloud_remote, cloud_local
        out_tunnels.append(td)
        cloud.append({"tunnel": tname, "TunnelId": t.opts.get("TunnelId"),
                      "Role": t.opts.get("Role"), "ZoneNo": t.opts.get("ZoneNo"),
                      "CustomerGatewayId": t.opts.get("CustomerGatewayId")
                      or body.get("CustomerGatewayId"),
                      "State": t.opts.get("State"), "Status": t.opts.get("Status"),
                      "BgpStatus": t.bgp.get("BgpStatus") or t.bgp.get("Status")})
    conn["tunnel"] = out_tunnels

    comments = _comments(body, cloud)
    if body.get("RemoteCaCertificate") or any(t.opts.get("RemoteCaCertificate") for t in tuns):
        notes.append("the cloud has a peer CA certificate (a ShangMi gateway): vpnd "
                     "authenticates with the pre-shared keys only")
    if _table(body, "VpnBgpConfig").get("AuthKey"):
        notes.append("the cloud's BGP has an authentication key (AuthKey); vpnd sets no BGP "
                     "password, so the session needs it cleared on the cloud side")
    cid = body.get("VpnConnectionId")
    return Imported(name=name, doc=conn, comments=comments, psks=psks, notes=notes,
                    placeholders=holes, cloud=cloud,
                    connection_id=cid if isinstance(cid, str) and cid else None)


def _lower(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


def _enc(v: Any) -> Any:
    v = _lower(v)
    return ENCRYPTION.get(v, v) if isinstance(v, str) else v


def _phase(tuns: list[Tunnel], notes: list[str], phase: str,
           keys: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """[connection.ike] or [connection.ipsec]: one table for both tunnels (they must agree)."""
    out: dict[str, Any] = {}
    for key, (field_name, convert) in keys.items():
        values = [getattr(t, phase).get(field_name) for t in tuns]
        values = [None if v in (None, "") else convert(v) for v in values]
        value = _same(tuns, field_name, values, notes)
        if value is not None:
            out[key] = value
    return out


def _networks(cloud: list[str], flag: tuple[str, ...], side: str, hole) -> list[str]:
    """A side's networks: the cloud's when it names them (protected data flows), else the
    flag's, else a placeholder. A flag contradicting the cloud is refused."""
    named = cloud not in ([], [ANY])
    which = "on-premises" if side == "local" else "VPC"
    if named:
        if flag and sorted(flag) != sorted(cloud):
            raise CloudImportError(f"--{side}-network {', '.join(flag)} contradicts the cloud's "
                                   f"{'RemoteSubnet' if side == 'local' else 'LocalSubnet'} "
                                   f"{', '.join(cloud)} (the traffic selectors must match)")
        return list(cloud)
    if flag:
        return list(flag)
    return [hole(f"the {which} CIDRs (--{side}-network; the cloud routes by destination, "
                 f"so it does not know them)")]


def _local_address(i: int, t: Tunnel, side: CustomerSide, hole) -> str:
    if side.local_addresses:
        return side.local_addresses[min(i, len(side.local_addresses) - 1)]
    cgw = t.opts.get("CustomerGatewayId")
    if cgw and cgw in side.gateway_addresses:
        return side.gateway_addresses[cgw]
    of = f" (customer gateway {cgw})" if cgw else ""
    return hole(f"our IKE address for tunnel{i + 1}, the public IPv4 of this gateway{of} "
                "(--local-address)")


def _health(body: dict[str, Any], side: CustomerSide, notes: list[str], hole) -> dict[str, Any]:
    """[connection.health_check]. The cloud probes from its Sip (a VPC address) to its Dip
    (ours); vpnd probes the other way, between the same two addresses."""
    hc = _table(body, "VcoHealthCheck")
    out: dict[str, Any] = {}
    if hc and _bool(hc.get("Enable")) is True:
        if hc.get("Sip"):
            out["destination"] = hc["Sip"]
        if hc.get("Dip"):
            out["source"] = hc["Dip"]
        if hc.get("Interval") not in (None, ""):
            out["interval"] = _int(hc["Interval"])
        if hc.get("Retry") not in (None, ""):
            out["retries"] = _int(hc["Retry"])
        policy = hc.get("Policy")
        if policy:
            out["switch_route"] = SWITCH_ROUTE.get(policy, policy)
    if side.probe_destination:
        out["destination"] = side.probe_destination
    if side.probe_source:
        out["source"] = side.probe_source
    if "destination" not in out:
        out["destination"] = hole("a VPC address that answers ping (--probe-destination), "
                                  "or delete [connection.health_check] to run without probes")
    if "source" not in out:
        out["source"] = hole("our address inside local_networks to probe from "
                             "(--probe-source)")
    return dict(sorted(out.items(), key=lambda kv: ["destination", "source"].index(kv[0])
                       if kv[0] in ("destination", "source") else 2))


def _cloud_health(body: dict[str, Any]) -> dict[str, Any]:
    """[connection.cloud_health_check]: the cloud's own check as its console shows it (Sip the
    cloud-side source, Dip ours), so vpnd adds the route for its source and `status` and
    `doctor` say how long it leaves the return path on a dead tunnel. Empty when it is off."""
    hc = _table(body, "VcoHealthCheck")
    if not hc or _bool(hc.get("Enable")) is not True or not hc.get("Sip") or not hc.get("Dip"):
        return {}
    out: dict[str, Any] = {"source_ip": hc["Sip"], "destination_ip": hc["Dip"]}
    if hc.get("Interval") not in (None, ""):
        out["interval"] = _int(hc["Interval"])
    if hc.get("Retry") not in (None, ""):
        out["retries"] = _int(hc["Retry"])
    if hc.get("Policy"):
        out["switch_route"] = SWITCH_ROUTE.get(hc["Policy"], hc["Policy"])
    return out


def _bgp(tuns: list[Tunnel], notes: list[str], hole) -> dict[str, Any]:
    """[connection.bgp]: the cloud's LocalAsn is our peer's, its PeerAsn ours."""
    out: dict[str, Any] = {}
    ours = _same(tuns, "PeerAsn", [_int(t.bgp.get("PeerAsn")) or None for t in tuns], notes)
    theirs = _same(tuns, "LocalAsn", [_int(t.bgp.get("LocalAsn")) or None for t in tuns], notes)
    out["local_asn"] = ours if ours is not None else hole("our ASN (the customer gateway's)")
    if theirs is not None:
        out["peer_asn"] = theirs
    return out


def _tunnel_bgp(t: Tunnel, tname: str, hole) -> dict[str, Any]:
    """[connection.tunnel.bgp]: the cloud's LocalBgpIp is the peer's, its PeerBgpIp ours."""
    b = t.bgp
    return {
        "tunnel_cidr": b.get("TunnelCidr") or hole(f"{tname}'s BGP tunnel CIDR"),
        "local_ip": b.get("PeerBgpIp") or hole(f"our BGP address in {tname}'s tunnel CIDR"),
        "peer_ip": b.get("LocalBgpIp") or hole(f"the cloud's BGP address in {tname}'s tunnel "
                                               "CIDR"),
    }


def _comments(body: dict[str, Any], cloud: list[dict[str, Any]]) -> dict[str, list[str]]:
    """What the cloud said that is not configuration, kept beside the tables it concerns."""
    head = [f"cloud: VpnConnectionId {body.get('VpnConnectionId')}, VpnGatewayId "
            f"{body.get('VpnGatewayId')}, Name {body.get('Name')!r}"]
    for key in ("Status", "State", "NetworkType", "Spec", "TunnelBandwidth"):
        if body.get(key) not in (None, ""):
            head.append(f"cloud: {key} {body[key]} (at import)")
    hc = _table(body, "VcoHealthCheck")
    out = {"[[connection]]": head}
    if hc:
        out["[connection.health_check]"] = [
            f"cloud: VcoHealthCheck Enable {hc.get('Enable')}, Status {hc.get('Status')} "
            "(at import); its Sip is our destination, its Dip our source"]
    for c in cloud:
        bits = ", ".join(f"{k} {c[k]}" for k in ("TunnelId", "Role", "ZoneNo",
                                                 "CustomerGatewayId", "State", "Status",
                                                 "BgpStatus") if c.get(k))
        out[f"tunnel:{c['tunnel']}"] = [f"cloud: {bits} (at import)"] if bits else []
    return out


# --- the TOML ----------------------------------------------------------------------------------

def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out) + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return _toml_str(str(v))            # anything else the cloud sent: text, for the loader


def _lines(d: dict[str, Any]) -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            continue
        if k == "tunnel":
            continue
        mark = "    # FILL IN" if placeholder_in(v) else ""
        out.append(f"{k} = {_value(v)}{mark}")
    return out


def placeholder_in(v: Any) -> bool:
    return placeholder_problem(list(v) if isinstance(v, tuple) else v) is not None


def render(imp: Imported, header: list[str], region: str | None = None) -> str:
    """The config file's text: the [[connection]] with its tables, the cloud's comments, and
    a commented-out [connection.cloud] for the cloud's view in `vpnd status`."""
    conn = imp.doc
    lines = [f"# {h}" if h else "#" for h in header] + [""]
    lines += [f"# {c}" for c in imp.comments.get("[[connection]]", [])]
    lines.append("[[connection]]")
    lines += _lines(conn)
    for key in ("ike", "ipsec", "health_check", "cloud_health_check", "bgp"):
        if key not in conn:
            continue
        lines.append("")
        lines += [f"# {c}" for c in imp.comments.get(f"[connection.{key}]", [])]
        lines.append(f"[connection.{key}]")
        lines += _lines(conn[key])
    if imp.connection_id:
        lines += ["", "# The cloud's own view next to vpnd's in `vpnd status` and the metrics "
                  "(needs vpnd[alibaba]", "# and credentials in the vendor's chain for the "
                  "daemon): uncomment to use.", "# [connection.cloud_api]",
                  f"# connection_id = {_toml_str(imp.connection_id)}",
                  f"# region = {_toml_str(region or 'REGION')}", "# interval = 300"]
    for t in conn["tunnel"]:
        lines.append("")
        lines += [f"# {c}" for c in imp.comments.get(f"tunnel:{t['name']}", [])]
        lines.append("[[connection.tunnel]]")
        lines += _lines(t)
        if "bgp" in t:
            lines.append("[connection.tunnel.bgp]")
            lines += _lines(t["bgp"])
    return "\n".join(lines) + "\n"


# --- the SDK -----------------------------------------------------------------------------------

def fetch(connection_id: str, region: str, *, endpoint: str | None = None,
          credential: Any = None, protocol: str = "https", gateways: bool = True,
          timeout_ms: int = 10000) -> tuple[dict[str, Any], dict[str, str]]:
    """DescribeVpnConnection through the SDK, and each tunnel's customer gateway address
    (DescribeCustomerGateway). Credentials: the vendor's default chain (environment,
    ~/.alibabacloud/credentials, an instance RAM role, ...) unless a credential object is
    given (tests). Raises CloudImportError with the SDK's own message, never a traceback."""
    try:
        from alibabacloud_credentials.client import Client as CredentialClient
        from alibabacloud_tea_openapi import models as openapi
        from alibabacloud_vpc20160428 import models as vpc
        from alibabacloud_vpc20160428.client import Client as VpcClient
    except ImportError:
        raise CloudImportError(SDK_HINT) from None
    try:
        cred = credential if credential is not None else CredentialClient()
        config = openapi.Config(credential=cred, region_id=region, protocol=protocol,
                                endpoint=endpoint or f"vpc.{region}.aliyuncs.com",
                                read_timeout=timeout_ms, connect_timeout=timeout_ms)
        client = VpcClient(config)
        resp = client.describe_vpn_connection(vpc.DescribeVpnConnectionRequest(
            region_id=region, vpn_connection_id=connection_id))
        body = resp.body.to_map()
        addresses: dict[str, str] = {}
        ids = {t.opts.get("CustomerGatewayId") for t in tunnels(_body(body))} if gateways else set()
        ids.add(body.get("CustomerGatewayId") if gateways else None)
        for cgw in sorted(i for i in ids if isinstance(i, str) and i):
            g = client.describe_customer_gateway(vpc.DescribeCustomerGatewayRequest(
                region_id=region, customer_gateway_id=cgw)).body
            if getattr(g, "ip_address", None):
                addresses[cgw] = g.ip_address
        return body, addresses
    except CloudImportError:
        raise
    except Exception as exc:        # the SDK's errors carry code and message; keys never
        code = getattr(exc, "code", None)
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        raise CloudImportError(f"DescribeVpnConnection {connection_id} in {region} failed: "
                               f"{code + ': ' if code else ''}{message}") from None


# --- the cloud's view, next to vpnd's (status) --------------------------------------------------

# The settings both ends must agree on, as vpnd keys: (label, from the import's mapping, from
# vpnd's config). A difference is the vendor's commonest failure ("phase 1 failed").
def _ours(conn: Any) -> dict[str, Any]:
    ike, ipsec = conn.ike, conn.ipsec
    return {"ike.version": ike.version, "ike.mode": ike.mode, "ike.encryption": ike.encryption,
            "ike.integrity": ike.integrity, "ike.dh_group": ike.dh_group,
            "ike.lifetime": ike.lifetime, "ipsec.encryption": ipsec.encryption,
            "ipsec.integrity": ipsec.integrity, "ipsec.pfs_group": ipsec.pfs_group,
            "ipsec.lifetime": ipsec.lifetime, "dpd": conn.dpd_delay > 0,
            "nat_traversal": conn.nat_traversal}


def _per_tunnel_theirs(t: Tunnel) -> dict[str, Any]:
    conv = {"ike.version": ("ike", "IkeVersion", lambda v: IKE_VERSION.get(str(v).lower(), v)),
            "ike.mode": ("ike", "IkeMode", _lower), "ike.encryption": ("ike", "IkeEncAlg", _enc),
            "ike.integrity": ("ike", "IkeAuthAlg", _lower),
            "ike.dh_group": ("ike", "IkePfs", _lower), "ike.lifetime": ("ike", "IkeLifetime", _int),
            "ipsec.encryption": ("ipsec", "IpsecEncAlg", _enc),
            "ipsec.integrity": ("ipsec", "IpsecAuthAlg", _lower),
            "ipsec.pfs_group": ("ipsec", "IpsecPfs", _lower),
            "ipsec.lifetime": ("ipsec", "IpsecLifetime", _int),
            "dpd": ("opts", "EnableDpd", _bool), "nat_traversal": ("opts", "EnableNatTraversal", _bool)}
    out = {}
    for key, (where, name, f) in conv.items():
        v = getattr(t, where).get(name)
        if v not in (None, ""):
            out[key] = f(v)
    return out


def cloud_view(response: dict[str, Any], conn: Any) -> dict[str, Any]:
    """What the cloud says about `conn` (a ConnectionConfig): each tunnel's State/Status
    (matched to ours by the cloud's InternetIp = our remote_address), the health check's
    status, and every setting where the cloud and vpnd differ. Never a key: the PSKs are
    compared, not shown ("differs")."""
    body = _body(response)
    ours = _ours(conn)
    by_ip = {str(t.remote_address): t for t in conn.tunnels}
    tunnels_out: dict[str, Any] = {}
    mismatches: list[dict[str, Any]] = []
    for t in tunnels(body):
        mine = by_ip.get(str(t.opts.get("InternetIp")))
        if mine is None:
            mismatches.append({"tunnel": None, "key": "remote_address",
                               "cloud": t.opts.get("InternetIp"), "vpnd": "no such tunnel"})
            continue
        tunnels_out[mine.name] = {"state": t.opts.get("State"), "status": t.opts.get("Status"),
                                  "role": t.opts.get("Role"),
                                  "bgp_status": t.bgp.get("BgpStatus") or t.bgp.get("Status")}
        for key, theirs in _per_tunnel_theirs(t).items():
            if theirs != ours[key]:
                mismatches.append({"tunnel": mine.name, "key": key, "cloud": theirs,
                                   "vpnd": ours[key]})
        for key, theirs, vpnd_has in (("local_id", t.ike.get("RemoteId"), mine.local_id),
                                      ("remote_id", t.ike.get("LocalId"), mine.remote_id)):
            if theirs and theirs != vpnd_has:
                mismatches.append({"tunnel": mine.name, "key": key, "cloud": theirs,
                                   "vpnd": vpnd_has})
        psk = t.ike.get("Psk")
        if isinstance(psk, str) and psk and psk != mine.psk.reveal():
            mismatches.append({"tunnel": mine.name, "key": "psk", "cloud": "differs",
                               "vpnd": "differs"})
    hc = _table(body, "VcoHealthCheck")
    health = None
    if hc:
        health = {"enabled": _bool(hc.get("Enable")), "status": hc.get("Status")}
    return {"status": body.get("Status"), "state": body.get("State"), "tunnels": tunnels_out,
            "health_check": health, "mismatches": mismatches}


def mismatch_text(m: dict[str, Any]) -> str:
    """One difference, as `vpnd status` prints it."""
    where = f"{m['tunnel']}: " if m.get("tunnel") else ""
    return f"{where}{m['key']}: cloud says {m['cloud']} / vpnd has {m['vpnd']}"

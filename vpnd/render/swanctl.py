"""What vpnd loads into charon, as VICI messages and as the equivalent swanctl.conf text.

One builder, two outputs: `vici_conn`/`vici_secret` are the exact load-conn / load-shared
bodies the VICI adapter (vpnd/charon/adapter.py) sends, and `swanctl_text` serialises the very same
dicts, so what `vpnd render swanctl` prints is what charon gets (only the key is masked).

Decisions that differ from the vendor's hand-written swanctl.conf (the vendor's strongSwan guide):

- vpnd is charon's only re-initiator: `start_action = none`, `close_action = none`,
  `dpd_action = clear`, `keyingtries = 1`. vpnd supervises every tunnel and re-initiates with
  backoff; if charon retried as well (start/restart/keyingtries 0) both would race and stack
  duplicate IKE/CHILD SAs for one tunnel.
- Lifetimes (the cloud has one "SA lifetime" L per phase; strongSwan wants rekey + hard limit):
  IKE `rekey_time = L - M`, `over_time = M` with M = min(1800, L // 10), so the hard end is
  exactly L (seed: 86400 -> 84600 + 1800); CHILD `rekey_time = L - min(900, L // 10)`,
  `life_time = L` (seed: 85500 / 86400). We rekey before the cloud's lifetime ends, never
  after. L = 0 renders "0s": strongSwan's 0 disables rekeying and the hard limit (no expiry).
- NAT traversal: strongSwan always detects NAT by itself (it cannot be switched off);
  `nat_traversal = true` renders `encap = yes` as the vendor's guide does, forcing ESP-in-UDP 4500 so
  ESP also crosses middleboxes that drop protocol 50; `false` renders `encap = no`.
- `dpd_delay = 0` renders "0s": charon's "no DPD".
- `unique = no` (charon's default): both tunnels may share the same identities (one egress
  address, `ike.remote_id` set once), and `replace` would then kill the other tunnel's SA.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from vpnd.config.model import Config, ConnectionConfig, TunnelConfig

PREFIX = "vpnd-"
MASK = "********"

DH_GROUPS = {"group1": "modp768", "group2": "modp1024", "group5": "modp1536", "group14": "modp2048"}
ENCRYPTION = {"aes128": "aes128", "aes192": "aes192", "aes256": "aes256", "3des": "3des", "des": "des"}
INTEGRITY = {"sha1": "sha1", "md5": "md5", "sha256": "sha256", "sha384": "sha384", "sha512": "sha512"}

ANY = "0.0.0.0/0"


class RenderError(Exception):
    """The configuration cannot be expressed in this output (e.g. FRR without BGP)."""


# --- names ------------------------------------------------------------------------------

def conn_name(connection_name: str, tunnel_name: str) -> str:
    """Connection and child name in charon: `vpnd-<connection>-<tunnel>`."""
    return f"{PREFIX}{connection_name}-{tunnel_name}"


def parse_conn_name(name: str, config: Config | None = None) -> tuple[str, str] | None:
    """The inverse of `conn_name`, or None for a name vpnd does not own.

    Connection names may contain '-', so without `config` the split is at the LAST '-'
    (tunnel names default to tunnel1/tunnel2); with `config` the known names decide.
    """
    if not name.startswith(PREFIX):
        return None
    rest = name[len(PREFIX):]
    if config is not None:
        for c in config.connections:
            for t in c.tunnels:
                if rest == f"{c.name}-{t.name}":
                    return c.name, t.name
        return None
    connection, sep, tunnel = rest.rpartition("-")
    if not sep or not connection or not tunnel:
        return None
    return connection, tunnel


# --- proposals and lifetimes -------------------------------------------------------------

def ike_proposal(conn: ConnectionConfig) -> str:
    ike = conn.ike
    return f"{ENCRYPTION[ike.encryption]}-{INTEGRITY[ike.integrity]}-{DH_GROUPS[ike.dh_group]}"


def esp_proposal(conn: ConnectionConfig) -> str:
    """Phase 2 proposal; without a DH group when PFS is disabled."""
    ipsec = conn.ipsec
    parts = [ENCRYPTION[ipsec.encryption], INTEGRITY[ipsec.integrity]]
    if ipsec.pfs_group != "disabled":
        parts.append(DH_GROUPS[ipsec.pfs_group])
    return "-".join(parts)


def ike_times(lifetime: int) -> dict[str, str]:
    """IKE rekey_time/over_time whose sum is the cloud's lifetime (see module docstring)."""
    if lifetime == 0:
        return {"rekey_time": "0s"}
    margin = min(1800, lifetime // 10)
    return {"rekey_time": f"{lifetime - margin}s", "over_time": f"{margin}s"}


def child_times(lifetime: int) -> dict[str, str]:
    """CHILD rekey_time before the cloud's lifetime, life_time (hard) equal to it."""
    if lifetime == 0:
        return {"rekey_time": "0s", "life_time": "0s"}
    return {"rekey_time": f"{lifetime - min(900, lifetime // 10)}s", "life_time": f"{lifetime}s"}


def _nets(nets) -> list[str]:
    return [str(n) for n in nets]


def traffic_selectors(conn: ConnectionConfig, tunnel: TunnelConfig) -> tuple[list[str], list[str]]:
    """(local_ts, remote_ts): the tunnel's own if set, else by routing mode.

    Route/BGP mode: 0.0.0.0/0 both sides (the cloud's destination routing; the route decides).
    Policy mode: the protected data flows, local_networks <-> remote_networks.
    """
    if conn.routing == "policy":
        local, remote = _nets(conn.local_networks), _nets(conn.remote_networks)
    else:
        local, remote = [ANY], [ANY]
    return (_nets(tunnel.local_ts) or local, _nets(tunnel.remote_ts) or remote)


def tunnel_index(conn: ConnectionConfig, tunnel: TunnelConfig) -> int:
    """0 for tunnel 1 (active), 1 for tunnel 2 (standby)."""
    return next(i for i, t in enumerate(conn.tunnels) if t.name == tunnel.name)


def uses_if_id(conn: ConnectionConfig, tunnel: TunnelConfig) -> bool:
    """Route/BGP mode over an XFRM interface vpnd owns: the SA is bound to it by if_id."""
    return conn.routing != "policy" and tunnel.interface_kind == "xfrm"


# --- VICI bodies ---------------------------------------------------------------------------

def build_conn(
    conn: ConnectionConfig, child: str, *,
    local_addr: str, remote_addr: str, local_id: str, remote_id: str,
    local_ts: list[str], remote_ts: list[str],
    if_id: int | None, priority: int | None,
) -> dict:
    """A load-conn body (without the outer name level); shared by our side and the mirror."""
    body: dict = {
        "version": str(conn.ike.version),
        "local_addrs": [local_addr],
        "remote_addrs": [remote_addr],
        "proposals": [ike_proposal(conn)],
        "dpd_delay": f"{conn.dpd_delay}s",
        **ike_times(conn.ike.lifetime),
        "encap": "yes" if conn.nat_traversal else "no",
        "keyingtries": "1",
        "unique": "no",
    }
    if conn.ike.version == 1:
        body["aggressive"] = "yes" if conn.ike.mode == "aggressive" else "no"
    # VICI load-conn: authentication rounds are subsections whose names start with
    # "local"/"remote" (swanctl sends its `local {}`/`remote {}` sections under these names).
    body["local"] = {"auth": "psk", "id": local_id}
    body["remote"] = {"auth": "psk", "id": remote_id}
    c: dict = {
        "local_ts": list(local_ts),
        "remote_ts": list(remote_ts),
        "esp_proposals": [esp_proposal(conn)],
        "mode": "tunnel",
        **child_times(conn.ipsec.lifetime),
        "start_action": "none",
        "close_action": "none",
        "dpd_action": "clear",
    }
    if if_id is not None:
        c["if_id_in"] = str(if_id)
        c["if_id_out"] = str(if_id)
    if priority is not None:
        c["priority"] = str(priority)
    body["children"] = {child: c}
    return body


def policy_priority(conn: ConnectionConfig, tunnel: TunnelConfig, active: str | None = None) -> int:
    """Policy mode's CHILD SA priority (lower = preferred, the vendor's 1 / 2): 1 for the
    tunnel that should carry traffic (`active`, by default tunnel 1), 2 for the others."""
    preferred = active if active is not None else conn.tunnels[0].name
    return 1 if tunnel.name == preferred else 2


def vici_conn(conn: ConnectionConfig, tunnel: TunnelConfig, active: str | None = None) -> dict:
    """The load-conn body for one tunnel (child named like the connection). `active` (policy
    mode): the tunnel vpnd has chosen, which gets the better CHILD SA priority."""
    local_ts, remote_ts = traffic_selectors(conn, tunnel)
    return build_conn(
        conn, conn_name(conn.name, tunnel.name),
        local_addr=str(tunnel.local_address), remote_addr=str(tunnel.remote_address),
        local_id=tunnel.local_id, remote_id=tunnel.remote_id,
        local_ts=local_ts, remote_ts=remote_ts,
        if_id=tunnel.if_id if uses_if_id(conn, tunnel) else None,
        # Single-egress policy mode (the vendor's strongSwan guide): both children cover the same flows; the
        # active tunnel's policies win by priority (lower value = preferred).
        priority=policy_priority(conn, tunnel, active) if conn.routing == "policy" else None,
    )


def vici_secret(conn: ConnectionConfig, tunnel: TunnelConfig) -> dict:
    """The load-shared body: the REAL key (VICI needs it); only printed text masks it."""
    return {
        "id": conn_name(conn.name, tunnel.name),
        "type": "IKE",
        "data": tunnel.psk.reveal(),
        "owners": _owners(tunnel.remote_id, tunnel.local_id),
    }


def _owners(*ids: str) -> list[str]:
    return list(dict.fromkeys(ids))     # both ids, once each (they may be equal)


# --- swanctl.conf text ----------------------------------------------------------------------

_BARE = re.compile(r"^[A-Za-z0-9_.:/@*+-]+$")


def quote(value: str) -> str:
    """A swanctl.conf value: bare if safe, else double-quoted with \\ and \" escaped."""
    if _BARE.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def section_lines(name: str, body: Mapping, indent: int = 0) -> list[str]:
    """A VICI dict as a swanctl.conf section: lists comma-separated, dicts as subsections."""
    pad = "   " * indent
    lines = [f"{pad}{name} {{"]
    for key, value in body.items():
        if isinstance(value, Mapping):
            lines += section_lines(key, value, indent + 1)
        elif isinstance(value, list):
            lines.append(f"{pad}   {key} = {', '.join(quote(v) for v in value)}")
        else:
            lines.append(f"{pad}   {key} = {quote(value)}")
    lines.append(f"{pad}}}")
    return lines


def secret_section(secret: Mapping, show_secrets: bool) -> dict:
    """A load-shared body in swanctl.conf's `secrets { ike-<name> { id-N; secret } }` form."""
    body: dict = {f"id-{i}": owner for i, owner in enumerate(secret["owners"], 1)}
    body["secret"] = literal_secret(secret["data"]) if show_secrets else MASK
    return body


def literal_secret(key: str) -> str:
    """A key as swanctl.conf must spell it to mean these bytes: swanctl decodes a secret that
    begins with 0x (hex) or 0s (base64), quoted or not, while VICI gets the raw bytes. Such a
    key is written as 0x<hex of its UTF-8 bytes> (also 0X/0S, in case a version folds case)."""
    if key[:2].lower() in ("0x", "0s"):
        return "0x" + key.encode().hex()
    return key


def conf_text(conns: Mapping[str, dict], secrets: list[dict], show_secrets: bool) -> str:
    lines = section_lines("connections", conns)
    lines.append("")
    lines += section_lines(
        "secrets", {f"ike-{s['id']}": secret_section(s, show_secrets) for s in secrets})
    return "\n".join(lines) + "\n"


def swanctl_text(config: Config, show_secrets: bool = False) -> str:
    """Every tunnel of every connection as swanctl.conf (keys masked unless asked)."""
    conns = {}
    secrets = []
    for c in config.connections:
        for t in c.tunnels:
            conns[conn_name(c.name, t.name)] = vici_conn(c, t)
            secrets.append(vici_secret(c, t))
    header = (f"# swanctl.conf rendered by vpnd from {config.source}; vpnd loads the same over "
              "VICI\n")
    return header + conf_text(conns, secrets, show_secrets)

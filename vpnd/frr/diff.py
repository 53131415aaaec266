"""Pure: what FRR runs vs what vpnd renders -> the few vtysh commands that close the gap.

The running config is parsed into the same (context keys, lines) shape as
`vpnd.render.frr.FrrConfig` (FRR's tools/frr-reload.py model). Then, per context vpnd owns:

- a wanted line that is missing is issued; when it replaces a running line with the same
  setting (`neighbor P timers 10 30` -> `neighbor P timers 1 3`) only the new line is sent, so
  a changed timer is one command;
- a running line nobody wants any more gets `no <line>`; a removed neighbor is one
  `no neighbor P remote-as N` (FRR drops the rest with it);
- `router bgp` is never wiped: only a different local ASN replaces it (FRR runs one default
  instance; that change cannot keep the sessions anyway).

vpnd owns the `router bgp` of its ASN (with its IPv4 unicast family), the route-maps it renders
(`allow-all`, `vpnd-*`), its prefix-lists (`vpnd-*`), BFD profiles `vpnd-*` and the global
lines it renders. Everything else in FRR (other daemons, the operator's prefix-lists) is left
alone.

Order, where it matters (the return path, vpnd.render.frr): the address family's `no network`
lines come first and its new `network` lines last, so a more-specific is withdrawn before the
route-maps and prefix-lists that keep it off a neighbor change, and announced only after; a
prefix-list entry replaced at the same sequence number is removed before it is re-added
(FRR's `no ip prefix-list N seq S ...` deletes sequence S whatever it now holds).

FRR hides some values it considers defaults (BFD intervals 300 ms, multiplier 3) and adds
implied lines (`neighbor P bfd` next to `neighbor P bfd profile X`); both are modelled so that
re-applying an unchanged config yields no command at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Keys = tuple[str, ...]

_SUB_HEADS = ("address-family ", "profile ", "peer ", "vni ")
_SUB_ENDS = ("exit-address-family", "exit")
_SKIP = ("Building configuration", "Current configuration", "frr version", "frr defaults", "end")

# a setting and its value: the key says which lines replace each other
_SETTINGS = [re.compile(p) for p in (
    r"^(neighbor \S+ timers) ",
    r"^(neighbor \S+ remote-as) ",
    r"^(neighbor \S+ bfd profile) ",
    r"^(neighbor \S+ route-map) \S+ (in|out)$",
    r"^(bgp router-id) ",
    r"^(maximum-paths) ",
    r"^(set local-preference) ",
    r"^(set as-path prepend) ",
    r"^(receive-interval) ",
    r"^(transmit-interval) ",
    r"^(detect-multiplier) ",
)]
# lines FRR does not show when the value is its default, per context kind
_HIDDEN_DEFAULTS = {"profile": {"receive-interval 300", "transmit-interval 300", "detect-multiplier 3"}}


def setting(line: str) -> str | None:
    for pat in _SETTINGS:
        m = pat.match(line)
        if m:
            return " ".join(m.groups())
    return None


@dataclass(frozen=True)
class Running:
    """FRR's running config as ordered contexts: keys -> lines (a dict keeps FRR's order)."""

    contexts: dict[Keys, list[str]]

    def has(self, keys: Keys) -> bool:
        return keys in self.contexts


def parse_running(text: str) -> Running:
    """`show running-config` -> contexts. Tolerant: unknown lines become their own context."""
    contexts: dict[Keys, list[str]] = {}
    top: str | None = None
    sub: str | None = None
    lines = text.replace("\r", "").split("\n")
    for i, raw in enumerate(lines):
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped == "!" or stripped.startswith(_SKIP):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            sub = None
            if stripped == "exit":
                top = None
                continue
            nxt = next((x for x in lines[i + 1:] if x.strip() and x.strip() != "!"), "")
            is_block = nxt.startswith(" ") or stripped.startswith(("router ", "route-map ", "bfd"))
            top = stripped if is_block else None
            contexts.setdefault((stripped,), [])
            continue
        if top is None:
            continue
        if indent == 1:
            if stripped in _SUB_ENDS and sub is not None:
                sub = None
                continue
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if stripped.startswith(_SUB_HEADS) or nxt.startswith("  "):
                sub = stripped
                contexts.setdefault((top, sub), [])
                continue
            sub = None
            contexts[(top,)].append(stripped)
        else:
            if sub is None:
                contexts[(top,)].append(stripped)
            else:
                contexts[(top, sub)].append(stripped)
    return Running(contexts)


@dataclass(frozen=True)
class Change:
    """One configuration command, issued inside context `keys` (() = top level)."""

    keys: Keys
    command: str


def owned(keys: Keys) -> bool:
    """Contexts vpnd may remove lines from (and remove entirely when no longer wanted)."""
    head = keys[0]
    if head.startswith("route-map "):
        name = head.split()[1]
        return name == "allow-all" or name.startswith("vpnd-")
    if head == "bfd":
        return len(keys) == 2 and keys[1].startswith("profile vpnd-")
    if head.startswith("ip prefix-list "):
        return head.split()[2].startswith("vpnd-")
    return head.startswith("router bgp")


def _wanted_as_running(keys: Keys, lines: list[str]) -> set[str]:
    """The lines FRR will show for `lines`: plus implied ones."""
    out = set(lines)
    for line in lines:
        m = re.match(r"^neighbor (\S+) bfd profile ", line)
        if m:
            out.add(f"neighbor {m.group(1)} bfd")
    return out


def diff(wanted: list[tuple[Keys, list[str]]], running: Running) -> list[Change]:
    """The commands that turn `running` into `wanted` (ordered contexts), owned lines only."""
    changes: list[Change] = []
    want_keys = {k for k, _ in wanted}
    routers = [k for k, _ in wanted if len(k) == 1 and k[0].startswith("router bgp ")]
    for k in list(running.contexts):
        if len(k) == 1 and k[0].startswith("router bgp ") and " vrf " not in k[0] \
                and routers and k not in want_keys:
            changes.append(Change((), f"no {k[0]}"))     # another local ASN: replace the instance
    dead_peers: set[str] = set()
    for keys, lines in wanted:
        have = running.contexts.get(keys)
        if have is None:
            if len(keys) == 1 and not lines and not keys[0].startswith(("router ", "route-map ", "bfd")):
                changes.append(Change((), keys[0]))       # a global one-line command
                continue
            if not lines:
                changes.append(Change(keys, ""))           # just create the context
            changes += [Change(keys, line) for line in lines]
            continue
        kind = keys[-1].split()[0]
        hidden = _HIDDEN_DEFAULTS.get(kind, set())
        have_set = set(have)
        have_settings = {setting(h): h for h in have if setting(h)}
        for line in lines:
            if line in have_set:
                continue
            if line in hidden and setting(line) not in have_settings:
                continue
            changes.append(Change(keys, line))
        if not owned(keys):
            continue
        want_set = _wanted_as_running(keys, lines)
        want_settings = {setting(w) for w in lines if setting(w)}
        for h in have:
            if h in want_set or (setting(h) is not None and setting(h) in want_settings):
                continue
            m = re.match(r"^neighbor (\S+) remote-as ", h)
            if m:
                dead_peers.add(m.group(1))
            # a negated default (`no bgp network import-check`) is undone by the positive form
            changes.append(Change(keys, h[3:] if h.startswith("no ") else f"no {h}"))
    # lines of a removed neighbor go with its `no neighbor P remote-as`
    changes = [c for c in changes if not _of_dead_peer(c.command, dead_peers)]
    # `no neighbor P bfd` takes its profile with it
    no_bfd = {c.command.split()[2] for c in changes if re.match(r"^no neighbor \S+ bfd$", c.command)}
    changes = [c for c in changes
               if not (re.match(r"^no neighbor \S+ bfd profile ", c.command) and c.command.split()[2] in no_bfd)]
    # owned contexts nobody wants any more
    for keys in running.contexts:
        if keys in want_keys or not owned(keys):
            continue
        if keys[0].startswith("router bgp"):
            continue        # handled above (another ASN) or left alone (another family)
        if len(keys) == 1:
            changes.append(Change((), f"no {keys[0]}"))
        else:
            changes.append(Change(keys[:-1], f"no {keys[-1]}"))
    return _ordered(changes)


_PREFIX_SEQ = re.compile(r"^(?:no )?(ip prefix-list \S+ seq \d+) ")


def _ordered(changes: list[Change]) -> list[Change]:
    """The safe order (module docstring), stable otherwise: replaced prefix-list entries'
    `no` and the address family's `no network` lines first, its new `network` lines last."""
    readded = {m.group(1) for c in changes if not c.command.startswith("no ")
               for m in [_PREFIX_SEQ.match(c.command)] if m}

    def rank(c: Change) -> int:
        m = _PREFIX_SEQ.match(c.command)
        if m and c.command.startswith("no ") and m.group(1) in readded:
            return 0
        if len(c.keys) == 2 and c.keys[1].startswith("address-family "):
            if c.command.startswith("no network "):
                return 1
            if c.command.startswith("network "):
                return 3
        return 2
    return sorted(changes, key=rank)


def _of_dead_peer(command: str, dead: set[str]) -> bool:
    if not dead or not command.startswith("no neighbor "):
        return False
    parts = command.split()
    return parts[2] in dead and parts[3] != "remote-as"


def script(changes: list[Change]) -> list[str]:
    """Changes -> the vtysh lines in config mode, entering and leaving contexts as needed."""
    out: list[str] = []
    where: Keys = ()
    for c in changes:
        if where != c.keys:
            common = 0
            while common < min(len(where), len(c.keys)) and where[common] == c.keys[common]:
                common += 1
            for level in range(len(where) - 1, common - 1, -1):
                out.append("exit-address-family" if where[level].startswith("address-family")
                           else "exit")
            out += list(c.keys[common:])
            where = c.keys
        if c.command:
            out.append(c.command)
    for level in range(len(where) - 1, -1, -1):
        out.append("exit-address-family" if where[level].startswith("address-family") else "exit")
    return out


# --- what FRR reports, as JSON ---------------------------------------------------------------

@dataclass(frozen=True)
class PeerState:
    established: bool
    state: str
    uptime_ms: int
    prefixes_received: int
    prefixes_sent: int


@dataclass(frozen=True)
class BgpSummary:
    router: bool                    # a BGP instance answered (False: bgpd has no config)
    asn: int | None
    peers: dict[str, PeerState]


def _int(v: object) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v == v and abs(v) < 2**63:
        return int(v)
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    return 0


def parse_bgp_summary(data: object) -> BgpSummary:
    """`show bgp summary json` (FRR 8.x: ipv4Unicast.peers[IP]). Missing or odd fields read
    as "not established / 0", never as an exception."""
    if not isinstance(data, dict):
        return BgpSummary(False, None, {})
    af = data.get("ipv4Unicast")
    if not isinstance(af, dict):
        return BgpSummary(False, None, {})
    asn = af.get("as")
    peers: dict[str, PeerState] = {}
    raw = af.get("peers")
    if isinstance(raw, dict):
        for ip, p in raw.items():
            if not isinstance(ip, str) or not isinstance(p, dict):
                continue
            state = p.get("state")
            state = state if isinstance(state, str) else "unknown"
            peers[ip] = PeerState(state == "Established", state, _int(p.get("peerUptimeMsec")),
                                  _int(p.get("pfxRcd")), _int(p.get("pfxSnt")))
    return BgpSummary(True, asn if isinstance(asn, int) and not isinstance(asn, bool) else None, peers)


def parse_bfd_peers(data: object) -> dict[str, bool]:
    """`show bfd peers json`: a list of {"peer": IP, "status": "up"|"down"|...} -> IP -> up."""
    out: dict[str, bool] = {}
    if not isinstance(data, list):
        return out
    for p in data:
        if not isinstance(p, dict):
            continue
        ip = p.get("peer")
        if isinstance(ip, str):
            out[ip] = out.get(ip, False) or p.get("status") == "up"
    return out

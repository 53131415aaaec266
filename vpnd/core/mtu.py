"""Tunnel MTU, TCP MSS clamp and the path-MTU search: pure arithmetic, tested without sleeps.

Why: an XFRM interface left at the default 1500 sends packets that no longer fit once ESP is
added; TCP then relies on ICMP "fragmentation needed", which many Internet paths filter, and
large transfers stall. So vpnd sets each tunnel interface's MTU from its underlay and the
proposal's ESP overhead, clamps TCP's MSS to it, and lowers the clamp to the path MTU its
DF probes measure.

The formula (tunnel mode, IPv4, what `tunnel_mtu` returns for an underlay MTU U):

    room  = U - outer IPv4 20 - UDP 8 (NAT-T, `encap = yes`) - ESP header 8 - IV - ICV
    MTU   = floor(room / block) * block - 2        (pad-length + next-header bytes)

IV: AES-CBC 16, AES-GCM 8, (3)DES 8. Block (padding): AES-CBC 16, DES 8, GCM 4. ICV: sha1 12
(HMAC-SHA1-96), md5 12, sha256 16, sha384 24, sha512 32, GCM 16. Example: U = 1500,
aes128/sha1 with NAT-T: room 1436 -> 1424 - 2 = 1422; without NAT-T 1438.
MSS clamp = min(tunnel MTU, measured path MTU) - 40 (IPv4 20 + TCP 20).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vpnd.config.rules import MTU_MAX, MTU_MIN

if TYPE_CHECKING:
    from vpnd.config.model import ConnectionConfig, TunnelConfig

OUTER_IPV4, NAT_T_UDP, ESP_HEADER, ESP_TRAILER = 20, 8, 8, 2
TCP_IPV4_HEADERS = 40

# cipher -> (IV bytes, padding block bytes)
_CIPHERS = {
    "aes128": (16, 16), "aes192": (16, 16), "aes256": (16, 16),
    "des": (8, 8), "3des": (8, 8),
    "aes128gcm16": (8, 4), "aes192gcm16": (8, 4), "aes256gcm16": (8, 4),
}
# integrity -> ICV bytes (truncated HMACs as strongSwan and the cloud negotiate them)
_ICV = {"sha1": 12, "md5": 12, "sha256": 16, "sha384": 24, "sha512": 32}
_GCM_ICV = 16


def cipher(encryption: str) -> tuple[int, int]:
    """(IV, block) of an ESP cipher; AEAD (GCM) names carry their own ICV."""
    if encryption not in _CIPHERS:
        raise ValueError(f"unknown ESP cipher {encryption!r}")
    return _CIPHERS[encryption]


def icv(encryption: str, integrity: str) -> int:
    if "gcm" in encryption:
        return _GCM_ICV
    if integrity not in _ICV:
        raise ValueError(f"unknown ESP integrity algorithm {integrity!r}")
    return _ICV[integrity]


def tunnel_mtu(underlay_mtu: int, encryption: str, integrity: str, nat_t: bool = True) -> int:
    """The largest inner IPv4 packet whose ESP(-in-UDP) packet fits in `underlay_mtu`."""
    iv, block = cipher(encryption)
    room = (underlay_mtu - OUTER_IPV4 - (NAT_T_UDP if nat_t else 0) - ESP_HEADER - iv
            - icv(encryption, integrity))
    return room // block * block - ESP_TRAILER


def esp_overhead(underlay_mtu: int, encryption: str, integrity: str, nat_t: bool = True) -> int:
    """Bytes ESP adds at this MTU (padding included), for status and render."""
    return underlay_mtu - tunnel_mtu(underlay_mtu, encryption, integrity, nat_t)


def mtu_problem(value: int) -> str | None:
    """The config rule for `mtu` (IPv4 tunnels)."""
    if not MTU_MIN <= value <= MTU_MAX:
        return f"{value} out of range {MTU_MIN} to {MTU_MAX} (IPv4 minimum datagram to jumbo frames)"
    return None


def clamp_mss(mtu: int, path_mtu: int | None = None) -> int:
    """The MSS vpnd writes into SYNs through a tunnel: the narrower of the interface MTU and
    the measured path MTU, minus the IPv4 and TCP headers."""
    narrowest = mtu if path_mtu is None else min(mtu, path_mtu)
    return narrowest - TCP_IPV4_HEADERS


@dataclass
class PmtuSearch:
    """A bounded binary search for the largest IPv4 packet (total length) that crosses a
    tunnel with DF set and is answered.

    The adapter asks `next_size()`, sends one DF echo of that total size, and reports
    `record(size, answered)`. A size fails only after `tries` unanswered probes (one loss is
    not a narrow path); one answer proves it. `high` (the interface MTU) is tried first: a
    path as wide as the interface, the usual case, costs one probe. If `low` fails too, the
    search ends with `result = None` (the destination does not answer: nothing measured).
    At most about log2(high - low) + 2 sizes are tried."""

    low: int
    high: int
    tries: int = 3
    good: int | None = None             # largest size answered
    bad: int | None = None              # smallest size that failed `tries` times
    probes: int = 0
    _losses: dict[int, int] = field(default_factory=dict)
    _done: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise ValueError(f"bounds {self.low}..{self.high}")

    @property
    def done(self) -> bool:
        return self._done

    @property
    def result(self) -> int | None:
        return self.good if self._done else None

    def next_size(self) -> int | None:
        if self._done:
            return None
        if self.good is None and self.bad is None:
            return self.high
        if self.good is None:
            return self.low            # high failed: is the destination there at all?
        hi = self.bad if self.bad is not None else self.high + 1
        if hi - self.good <= 1:
            self._done = True
            return None
        return (self.good + hi) // 2

    def record(self, size: int, answered: bool) -> None:
        self.probes += 1
        if answered:
            if self.good is None or size > self.good:
                self.good = size
            if size >= self.high:
                self._done = True
            return
        self._losses[size] = self._losses.get(size, 0) + 1
        if self._losses[size] < self.tries:
            return
        if self.bad is None or size < self.bad:
            self.bad = size
        if size <= self.low:
            self._done = True               # nothing answers: no result
        self.next_size()                    # closes the search when the gap is 1


def interface_mtu(conn: "ConnectionConfig", t: "TunnelConfig", underlay_mtu: int | None) -> int | None:
    """What vpnd sets on a tunnel's interface: `mtu` when configured; for the XFRM interfaces
    vpnd creates, the underlay's MTU (1500 when unknown) minus the ESP overhead of the
    connection's ESP proposal; None for someone else's link without `mtu` (left as it is)."""
    if t.mtu is not None:
        return t.mtu
    if t.interface_kind != "xfrm":
        return None
    return tunnel_mtu(underlay_mtu or 1500, conn.ipsec.encryption, conn.ipsec.integrity,
                      conn.nat_traversal)

"""The kernel's IPsec policies (XFRM netlink dump): which tunnel kernel XFRM sends through.

Policy mode on kernel XFRM (charon's kernel-netlink): both tunnels' CHILD SAs share one kernel
policy per selector and direction, and its template carries the endpoints of the CHILD SA
charon put first (lowest `priority` value, on a tie the newest: measured in the vm tier,
docs/policy-mode.md). The outbound policy of `local_network -> remote_network` therefore
names the tunnel that carries the traffic: its template's destination is that tunnel's
`remote_address`. charon's VICI does not say it (no per-CHILD SA priority, no "installed in
the kernel" flag), so vpnd reads it from the kernel of its own network namespace.

Read-only: one `XFRM_MSG_GETPOLICY` dump over NETLINK_XFRM (needs CAP_NET_ADMIN, as vpnd
has). No iproute2 needed.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_XFRM = 6
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_GETPOLICY = 0x15
XFRMA_TMPL = 5
DIRS = {0: "in", 1: "out", 2: "fwd"}

_NLMSGHDR = struct.Struct("=IHHII")
# struct xfrm_selector (56 bytes): daddr, saddr, dport, dport_mask, sport, sport_mask, family,
# prefixlen_d, prefixlen_s, proto, (pad), ifindex, user
_SELECTOR = struct.Struct("=16s16sHHHHHBBB3xiI")
# struct xfrm_userpolicy_info (168 bytes, 8-aligned): selector, lft (64), curlft (32),
# priority, index, dir, action, flags, share
_POLICY_INFO = 168
_PRIO_OFFSET = 56 + 64 + 32
# struct xfrm_user_tmpl (64 bytes): id{daddr 16, spi be32, proto, pad 3}, family, (pad),
# saddr 16, reqid, mode, share, optional, (pad), aalgos, ealgos, calgos
_TMPL = struct.Struct("=16s4sB3xH2x16sIBBBxIII")
_USERPOLICY_ID = 64      # struct xfrm_userpolicy_id: the (ignored) body of the dump request


@dataclass(frozen=True)
class Template:
    src: str
    dst: str
    spi: int
    reqid: int


@dataclass(frozen=True)
class Policy:
    src: ipaddress.IPv4Network | ipaddress.IPv6Network
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    dir: str                    # in | out | fwd (socket policies are left out)
    priority: int
    templates: tuple[Template, ...]


def _addr(raw: bytes, family: int) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    return socket.inet_ntop(socket.AF_INET6, raw[:16])


def parse_policy(payload: bytes) -> Policy | None:
    """One XFRM_MSG_NEWPOLICY payload (xfrm_userpolicy_info and attributes)."""
    if len(payload) < _POLICY_INFO:
        return None
    daddr, saddr, _, _, _, _, family, plen_d, plen_s, _, _, _ = _SELECTOR.unpack_from(payload, 0)
    priority, _index, direction = struct.unpack_from("=IIB", payload, _PRIO_OFFSET)
    if direction not in DIRS or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    templates = []
    off = _POLICY_INFO
    while off + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, off)
        if length < 4:
            break
        if kind & 0x3fff == XFRMA_TMPL:
            for t in range(off + 4, off + length - _TMPL.size + 1, _TMPL.size):
                tdaddr, spi, _proto, tfamily, tsaddr, reqid, *_ = _TMPL.unpack_from(payload, t)
                tfamily = tfamily or family
                templates.append(Template(_addr(tsaddr, tfamily), _addr(tdaddr, tfamily),
                                          int.from_bytes(spi, "big"), reqid))
        off += (length + 3) & ~3
    return Policy(ipaddress.ip_network(f"{_addr(saddr, family)}/{plen_s}", strict=False),
                  ipaddress.ip_network(f"{_addr(daddr, family)}/{plen_d}", strict=False),
                  DIRS[direction], priority, tuple(templates))


def dump(timeout: float = 2.0) -> list[Policy]:
    """Every IPsec policy of this network namespace (OSError when netlink refuses)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM) as s:
        s.settimeout(timeout)
        s.bind((0, 0))
        seq = int.from_bytes(os.urandom(4), "little") or 1
        s.send(_NLMSGHDR.pack(_NLMSGHDR.size + _USERPOLICY_ID, XFRM_MSG_GETPOLICY,
                              NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + bytes(_USERPOLICY_ID))
        out: list[Policy] = []
        while True:
            data = s.recv(1 << 16)
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, kind, _flags, mseq, _pid = _NLMSGHDR.unpack_from(data, off)
                if length < _NLMSGHDR.size:
                    return out
                body = data[off + _NLMSGHDR.size:off + length]
                off += (length + 3) & ~3
                if mseq != seq:
                    continue
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", body, 0)[0]
                    if err:
                        raise OSError(err, os.strerror(err))
                    return out
                if kind == XFRM_MSG_NEWPOLICY:
                    p = parse_policy(body)
                    if p is not None:
                        out.append(p)


def outbound_template(src: str, dst: str, policies: list[Policy] | None = None) -> Template | None:
    """The template of the outbound policy for exactly `src -> dst` (networks), the one with
    the best (lowest) priority if several; None when the kernel has none."""
    s, d = ipaddress.ip_network(src, strict=False), ipaddress.ip_network(dst, strict=False)
    found = [p for p in (dump() if policies is None else policies)
             if p.dir == "out" and p.src == s and p.dst == d and p.templates]
    if not found:
        return None
    return min(found, key=lambda p: p.priority).templates[0]

"""Health probes through each tunnel, with the cloud's semantics (interval, retries): ICMP
echo (`Prober`) or a TCP connect (`TcpProber`).

Why it is built this way:
- One raw ICMP socket per process, shared by every prober and dispatched by identifier: a
  socket per tunnel would wake every prober for every reply (100 tunnels x 100 replies/s).
- Probes leave through the tunnel's interface by IP_PKTINFO on each send, not SO_BINDTODEVICE:
  the cloud picks the return path, so the reply to tunnel 2's probe may come back on tunnel 1;
  a device-bound socket would drop it and tunnel 2 would always look dead.
- No subprocesses, no threads, no polling: `loop.add_reader` for replies, `loop.call_at` for
  sends and timeouts. The codec is 20 lines (echo request, checksum, reply parse): smaller
  than a dependency (icmplib builds the same packets but owns its sockets and loop).
- A missing interface (deleted, not yet re-created) is a lost probe, never an exception: the
  prober keeps its schedule and recovers when the interface returns.
- Each answer says which tunnel it came back through (`ProbeResult.via`): the receive side
  asks for IP_PKTINFO, whose ifindex is the interface the reply arrived on, and the prober
  maps that interface to its connection's tunnel (`returns`). The core needs it to tell a
  dead standby from one whose replies return through the dead active tunnel. No cache of
  ifindex -> name: an interface re-created under the same name gets a new ifindex, and one
  lookup per reply costs microseconds (bench/probe_cpu.py).
- Accepting replies from any interface must not let an off-path sender fake a healthy
  tunnel: each prober has a random identifier and starts at a random sequence, each probe
  carries a fresh random nonce, and a reply counts only from the probe's destination with
  that probe's nonce (anything else is counted in `rejected` and ignored).

`TcpProber` (health_check.kind = "tcp") is keepalived's TCP_CHECK on the same schedule and
figures; its docstring says how it differs.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import os
import secrets
import socket
import struct
from collections import deque
from typing import Callable, Mapping

from vpnd import logs
from vpnd.core.events import ProbeResult, TunnelKey

log = logs.get("vpnd.probe")

ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
WINDOW = 20                                   # probes kept for loss/RTT/jitter figures


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = b"vpnd-probe") -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, checksum(header + payload), ident, seq) + payload


NONCE_PREFIX = b"vpnd"
NONCE_BYTES = 12


def new_payload() -> bytes:
    """A probe's payload: a fixed tag (for packet captures) and a fresh random nonce."""
    return NONCE_PREFIX + secrets.token_bytes(NONCE_BYTES)


def reply_payload(packet: bytes) -> bytes:
    """The echo data of an IPv4 echo reply that parse_reply accepted."""
    ihl = (packet[0] & 0x0F) * 4
    return packet[ihl + 8:]


def parse_reply(packet: bytes) -> tuple[str, int, int] | None:
    """(source address, identifier, sequence) of an IPv4 echo reply, else None."""
    if len(packet) < 28 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8 or packet[ihl] != ICMP_ECHO_REPLY:
        return None
    ident, seq = struct.unpack_from("!HH", packet, ihl + 4)
    return socket.inet_ntoa(packet[12:16]), ident, seq


class _IcmpSocket:
    """The process's one raw ICMP socket (needs CAP_NET_RAW: vpnd's unit grants it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)     # the arrival interface
        self.probers: dict[int, "Prober"] = {}
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        now = self.loop.time()
        while True:
            try:
                packet, ancillary, _, _ = self.sock.recvmsg(2048, _PKTINFO_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("probe.receive_failed", error=str(exc))
                return
            parsed = parse_reply(packet)
            if parsed is not None:
                prober = self.probers.get(parsed[1])
                if prober is not None:
                    prober._reply(parsed[0], parsed[2], now, reply_payload(packet),
                                  _arrival(ancillary))

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


_PKTINFO_SPACE = socket.CMSG_SPACE(12)       # struct in_pktinfo


def _arrival(ancillary: list) -> int | None:
    """The ifindex an IP_PKTINFO control message names, else None."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 4:
            return struct.unpack_from("=i", data)[0]
    return None


_shared: dict[int, _IcmpSocket] = {}           # per event loop


def _socket_for(loop: asyncio.AbstractEventLoop) -> _IcmpSocket:
    s = _shared.get(id(loop))
    if s is None or s.loop is not loop:
        s = _shared[id(loop)] = _IcmpSocket(loop)
    return s


class _Figures:
    """What both probe kinds share: the target, the counters, the window and its figures, and
    one result per probe, so the core and the metrics never know which kind ran."""

    def __init__(self, tunnel: TunnelKey, *, destination: str, source: str | None,
                 interface: str | None, interval: float, timeout: float,
                 on_result: Callable[[ProbeResult], None]) -> None:
        self.tunnel = tunnel
        self.destination = destination
        self.source = source
        self.interface = interface
        self.interval = interval
        self.timeout = timeout
        self.on_result = on_result
        self.sent = 0
        self.lost = 0
        self.window: deque[float | None] = deque(maxlen=WINDOW)   # rtt, or None for a loss
        self._next: asyncio.TimerHandle | None = None
        self._send_error: str | None = None

    def _answered(self, rtt: float, via: str | None = None) -> None:
        self.window.append(rtt)
        self.on_result(ProbeResult(self.tunnel, True, rtt, via))

    def _lost(self) -> None:
        self.lost += 1
        self.window.append(None)
        self.on_result(ProbeResult(self.tunnel, False, None))

    def _problem(self, error: str | None, what: str = "send") -> None:
        """Log a problem once when it starts or changes and once when it clears: at 20 probes
        a second a dead interface must not write 20 lines a second."""
        if error == self._send_error:
            return
        if error is None:
            log.info(f"probe.{what}_recovered", tunnel=str(self.tunnel), interface=self.interface)
        else:
            log.warning(f"probe.{what}_failed", tunnel=str(self.tunnel), interface=self.interface,
                        error=error)
        self._send_error = error

    # --- figures for status and metrics ----------------------------------------------------

    @property
    def loss_ratio(self) -> float:
        return sum(1 for r in self.window if r is None) / len(self.window) if self.window else 0.0

    @property
    def rtt(self) -> float | None:
        rtts = [r for r in self.window if r is not None]
        return sum(rtts) / len(rtts) if rtts else None

    @property
    def jitter(self) -> float | None:
        rtts = [r for r in self.window if r is not None]
        if len(rtts) < 2:
            return None
        return sum(abs(a - b) for a, b in zip(rtts, rtts[1:])) / (len(rtts) - 1)


class Prober(_Figures):
    """Probes one tunnel with ICMP echo every `interval` seconds; each answer or timeout is a
    ProbeResult. `returns` maps the connection's tunnel interfaces to their tunnels, so an
    answer says which tunnel it came back through (empty: `via` stays None)."""

    def __init__(self, tunnel: TunnelKey, *, destination: str, source: str | None,
                 interface: str | None, interval: float, timeout: float,
                 on_result: Callable[[ProbeResult], None],
                 returns: Mapping[str, str] | None = None) -> None:
        super().__init__(tunnel, destination=destination, source=source, interface=interface,
                         interval=interval, timeout=timeout, on_result=on_result)
        self.returns = dict(returns or {})
        self.ident = secrets.randbits(16)      # random: not guessable from the pid or order
        self.seq = secrets.randbits(16)        # the first probe's sequence follows it
        self.rejected = 0                      # replies with a wrong nonce or source
        self._outstanding: dict[int, tuple[float, bytes]] = {}    # seq -> (sent, payload)
        self._handles: dict[int, asyncio.TimerHandle] = {}
        self._icmp: _IcmpSocket | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._icmp = _socket_for(loop)
        while self.ident in self._icmp.probers:
            self.ident = secrets.randbits(16)
        self._icmp.probers[self.ident] = self
        self._next = loop.call_soon(self._send)

    async def stop(self) -> None:
        if self._next is not None:
            self._next.cancel()
        for h in self._handles.values():
            h.cancel()
        self._handles.clear()
        if self._icmp is not None:
            self._icmp.probers.pop(self.ident, None)
            if not self._icmp.probers:
                _shared.pop(id(self._icmp.loop), None)
                self._icmp.close()
            self._icmp = None

    # --- the schedule ----------------------------------------------------------------------

    def _send(self) -> None:
        assert self._icmp is not None
        loop = self._icmp.loop
        now = loop.time()
        self._next = loop.call_at(now + self.interval, self._send)
        self.seq = (self.seq + 1) & 0xFFFF
        seq = self.seq
        self.sent += 1
        payload = new_payload()
        self._outstanding[seq] = (now, payload)
        self._handles[seq] = loop.call_at(now + self.timeout, self._expire, seq)
        try:
            ancillary = []
            if self.interface or self.source:
                ifindex = socket.if_nametoindex(self.interface) if self.interface else 0
                spec = socket.inet_aton(self.source or "0.0.0.0")
                ancillary = [(socket.IPPROTO_IP, IP_PKTINFO,
                              struct.pack("=I4s4s", ifindex, spec, b"\0\0\0\0"))]
            self._icmp.sock.sendmsg([echo_request(self.ident, seq, payload)], ancillary, 0,
                                   (self.destination, 0))
            self._problem(None)
        except OSError as exc:  # interface gone, no route, source not (yet) configured
            self._problem(str(exc))

    def _reply(self, source: str, seq: int, now: float, payload: bytes = b"",
               ifindex: int | None = None) -> None:
        probe = self._outstanding.get(seq)
        if probe is None:                # a late reply (already counted as lost) or a guess
            return
        sent, nonce = probe
        if source != self.destination or not hmac.compare_digest(payload, nonce):
            # not our probe's answer: ignored, and the genuine one may still come
            self.rejected += 1
            if self.rejected == 1 or self.rejected % 1000 == 0:
                log.warning("probe.reply_rejected", tunnel=str(self.tunnel), source=source,
                            destination=self.destination, rejected=self.rejected,
                            note="wrong source or nonce: forged or stray, ignored")
            return
        del self._outstanding[seq]
        handle = self._handles.pop(seq, None)
        if handle is not None:
            handle.cancel()
        self._answered(now - sent, self._via(ifindex))

    def _via(self, ifindex: int | None) -> str | None:
        """The tunnel whose interface the reply arrived on; None when it is none of them."""
        if not self.returns or not ifindex:
            return None
        try:
            return self.returns.get(socket.if_indextoname(ifindex))
        except OSError:                  # the interface is already gone
            return None

    def _expire(self, seq: int) -> None:
        self._handles.pop(seq, None)
        if self._outstanding.pop(seq, None) is None:
            return
        self._lost()


class _Attempt:
    """One TCP probe in flight: its own socket, when it was sent, its timeout."""

    __slots__ = ("sock", "sent", "timer")

    def __init__(self, sock: socket.socket, sent: float) -> None:
        self.sock = sock
        self.sent = sent
        self.timer: asyncio.TimerHandle | None = None


class TcpProber(_Figures):
    """Probes one tunnel with a TCP connect to destination:port, like keepalived's TCP_CHECK:
    answered when the connection is established (RTT = time to establish it), lost at once on
    a refusal (RST or ICMP unreachable: the path works but the service is not there, and the
    operator asked for the service), lost after `timeout` on silence.

    Why it is built this way:
    - A socket per attempt: a non-blocking connect watched with `loop.add_writer`, aborted with
      an RST (SO_LINGER 0) the moment it is established. Nothing is sent on the connection and
      nothing lingers in TIME_WAIT (probes every 50 ms would hold ~1200 sockets per tunnel).
      A fresh socket per attempt also makes interface deletion a plain lost probe (ENODEV).
    - IP_BIND_ADDRESS_NO_PORT with the source bind: the port is chosen at connect for the
      4-tuple, so fast probes do not use up the ephemeral ports bind() would reserve.
    - Egress through the tunnel by SO_BINDTODEVICE, the one way to steer a TCP connect: there
      is no per-packet IP_PKTINFO for TCP and connect ignores IP_UNICAST_IF (measured: it
      routes as if unset). It is *not* free of the problem that made the ICMP prober avoid it:
      the kernel matches a SYN-ACK only to a socket bound to the interface it arrived on, so
      the answer must come back through the same tunnel (measured on veth: bound to tun2 with
      the far side answering via tun1, every probe timed out). Unbinding right after connect()
      would race the SYN-ACK (on veth it is processed before connect() returns). So in route
      and bgp modes the loader warns that a tcp probe needs a symmetric return path; a probe
      without an interface (policy mode) accepts the answer from anywhere. The way out of
      the limit would be SO_MARK plus a per-tunnel `ip rule fwmark ... lookup <table>` whose
      table routes via the tunnel: vpnd would then own policy-routing rules, not done here.
    - With a timeout above 1 s the kernel resends the SYN (at 1 s, 3 s, 7 s, ...), still
      through the bound interface; the probe then measures the resent SYN, as keepalived's.
    """

    def __init__(self, tunnel: TunnelKey, *, destination: str, port: int, source: str | None,
                 interface: str | None, interval: float, timeout: float,
                 on_result: Callable[[ProbeResult], None]) -> None:
        super().__init__(tunnel, destination=destination, source=source, interface=interface,
                         interval=interval, timeout=timeout, on_result=on_result)
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._attempts: set[_Attempt] = set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._next = self._loop.call_soon(self._send)

    async def stop(self) -> None:
        if self._next is not None:
            self._next.cancel()
        for attempt in list(self._attempts):
            self._finish(attempt)
        self._loop = None

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET,
                             socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if self.interface:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE,
                                self.interface.encode())
            if self.source:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.source, 0))
        except OSError:
            sock.close()
            raise
        return sock

    def _send(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        self._next = loop.call_at(now + self.interval, self._send)
        self.sent += 1
        try:
            sock = self._open()     # interface gone (ENODEV), source not configured, EMFILE
        except OSError as exc:
            self._problem(str(exc), "connect")
            self._lost()
            return
        err = sock.connect_ex((self.destination, self.port))
        if err != errno.EINPROGRESS:            # at once: no route, refused locally, ...
            sock.close()
            if err:
                self._problem(f"[Errno {err}] {os.strerror(err)}", "connect")
                self._lost()
            else:
                self._problem(None, "connect")
                self._answered(loop.time() - now)
            return
        attempt = _Attempt(sock, now)
        attempt.timer = loop.call_at(now + self.timeout, self._expire, attempt)
        loop.add_writer(sock.fileno(), self._connected, attempt)
        self._attempts.add(attempt)

    def _finish(self, attempt: _Attempt) -> None:
        """Forget and close an attempt (the writer goes before the fd can be reused)."""
        assert self._loop is not None
        self._attempts.discard(attempt)
        self._loop.remove_writer(attempt.sock.fileno())
        if attempt.timer is not None:
            attempt.timer.cancel()
        attempt.sock.close()               # SO_LINGER 0: an RST, no FIN handshake

    def _connected(self, attempt: _Attempt) -> None:
        assert self._loop is not None
        now = self._loop.time()
        err = attempt.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self._finish(attempt)
        if err == 0:
            self._problem(None, "connect")
            self._answered(now - attempt.sent)
        else:
            self._problem(f"[Errno {err}] {os.strerror(err)}", "connect")
            self._lost()

    def _expire(self, attempt: _Attempt) -> None:
        if attempt not in self._attempts:
            return
        attempt.timer = None
        self._finish(attempt)
        self._lost()

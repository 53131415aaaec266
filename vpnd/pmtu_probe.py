"""The path-MTU prober: DF ICMP echoes of growing size through one tunnel, driving the pure
search (vpnd.core.mtu.PmtuSearch); the result lowers the tunnel's MSS clamp (vpnd.steering.
data_path.DataPath.set_path_mtu).

Why it is built this way:
- Its own raw ICMP socket, open only while a search runs (a few seconds every
  `health_check.path_mtu_interval`), with IP_MTU_DISCOVER = IP_PMTUDISC_PROBE: DF set, and
  the kernel neither fragments nor trusts its cached path MTU, so each probe tests the path
  as it is now. The health probes' socket (vpnd.probe) is not touched: a big probe that is
  lost never counts as a health-probe loss, and its identifier is one no health prober has.
- Source and interface per send by IP_PKTINFO, as vpnd.probe: the answer may come back by
  the other tunnel (the cloud picks the return path) and still counts.
- A reply counts only from the destination, with this search's identifier and the probe's
  fresh nonce (an off-path sender cannot fake a wide path).
- Skipped while the tunnel is not usable (`usable()` false: the health probe's last probe
  was lost): a dead tunnel would read as a 576-byte path. Retried every RETRY seconds until
  it is, then every `interval`; `trigger()` (after a switch) runs it at once.
"""

from __future__ import annotations

import asyncio
import fcntl
import secrets
import socket
import struct
import time
from typing import Callable

from vpnd import logs
from vpnd.core.events import TunnelKey
from vpnd.core.mtu import PmtuSearch
from vpnd.probe import IP_PKTINFO, echo_request, parse_reply, reply_payload

log = logs.get("vpnd.pmtu_probe")

IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_PROBE = getattr(socket, "IP_PMTUDISC_PROBE", 3)
SIOCGIFMTU = 0x8921
IP_MAX = 65535                  # an IPv4 packet's largest total length
LOW = 576                       # the IPv4 minimum every path carries
HEADERS = 20 + 8                # IPv4 + ICMP echo header
NONCE = b"vpnd-pmtu"
RETRY = 5.0                     # seconds between "is the tunnel usable yet?" checks


def interface_mtu(name: str) -> int | None:
    """The interface's MTU (SIOCGIFMTU), None when it does not exist."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            req = fcntl.ioctl(s.fileno(), SIOCGIFMTU, struct.pack("16si", name.encode()[:15], 0))
        except OSError:
            return None
    return struct.unpack("16si", req)[1]


class PathMtuProber:
    """Measures one tunnel's path MTU now and then; `on_result(tunnel, pmtu, probes, seconds)`
    gets each search that found a size (a search nothing answered changes nothing)."""

    def __init__(self, tunnel: TunnelKey, *, destination: str, source: str | None,
                 interface: str, timeout: float, interval: float,
                 on_result: Callable[[TunnelKey, int, int, float], None],
                 usable: Callable[[], bool] = lambda: True, tries: int = 3,
                 taken: Callable[[], set[int]] = set) -> None:
        self.tunnel = tunnel
        self.destination = destination
        self.source = source
        self.interface = interface
        self.timeout = timeout
        self.interval = interval
        self.on_result = on_result
        self.usable = usable
        self.tries = tries
        self.taken = taken                  # identifiers the health probers use
        self.result: int | None = None
        self.last_search: float | None = None   # seconds the last search took
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._failing: str | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"pmtu-{self.tunnel}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def trigger(self) -> None:
        """Measure again soon (after a switch: the path may have changed)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            if self.usable():
                found, probes, took = await self.measure()
                # a search the tunnel's death spoiled is tried again once it answers
                wait = self.interval if found is not None or self.usable() else RETRY
                if found is not None:
                    self.on_result(self.tunnel, found, probes, took)
            else:
                wait = RETRY
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def measure(self) -> tuple[int | None, int, float]:
        """One search: (path MTU or None, probes sent, seconds)."""
        t0 = time.monotonic()
        high = interface_mtu(self.interface)
        if high is None:
            self._problem(f"interface {self.interface} not found")
            return None, 0, 0.0
        high = min(high, IP_MAX)            # loopback's 65536 is one more than IPv4 carries
        search = PmtuSearch(low=min(LOW, high), high=high, tries=self.tries)
        try:
            sock = self._open()
        except OSError as exc:
            self._problem(str(exc))
            return None, 0, 0.0
        loop = asyncio.get_running_loop()
        waiting: dict[int, tuple[bytes, asyncio.Future]] = {}
        ident = secrets.randbits(16)
        while ident in self.taken():
            ident = secrets.randbits(16)

        def readable() -> None:
            while True:
                try:
                    packet = sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return
                parsed = parse_reply(packet)
                if parsed is None or parsed[1] != ident or parsed[0] != self.destination:
                    continue
                entry = waiting.get(parsed[2])
                if entry is not None and reply_payload(packet) == entry[0] \
                        and not entry[1].done():
                    entry[1].set_result(True)

        loop.add_reader(sock.fileno(), readable)
        seq = secrets.randbits(16)
        try:
            while (size := search.next_size()) is not None:
                seq = (seq + 1) & 0xFFFF
                payload = NONCE + secrets.token_bytes(8)
                payload += b"\0" * max(0, size - HEADERS - len(payload))
                fut = loop.create_future()
                waiting[seq] = (payload, fut)
                answered = False
                try:
                    sock.sendmsg([echo_request(ident, seq, payload)], self._pktinfo(), 0,
                                 (self.destination, 0))
                    answered = await asyncio.wait_for(fut, self.timeout)
                    self._problem(None)
                except asyncio.TimeoutError:
                    pass
                except OSError as exc:        # EMSGSIZE, interface gone, no route
                    self._problem(str(exc))
                waiting.pop(seq, None)
                search.record(size, answered)
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()
        took = time.monotonic() - t0
        self.last_search = took
        if search.result is not None and not self.usable():
            # the tunnel died during the search: its losses say nothing about the path's size
            # (a clamp near 536 for ten minutes otherwise); the next search measures again
            log.info("path_mtu.discarded", tunnel=str(self.tunnel), interface=self.interface,
                     reason="the tunnel stopped answering its health probes during the search")
            return None, search.probes, took
        if search.result is not None:
            self.result = search.result
        log.info("path_mtu.measured", tunnel=str(self.tunnel), interface=self.interface,
                 path_mtu=search.result, interface_mtu=high, probes=search.probes,
                 seconds=round(took, 3))
        return search.result, search.probes, took

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_PROBE)
        except OSError:
            sock.close()
            raise
        return sock

    def _pktinfo(self) -> list:
        ifindex = socket.if_nametoindex(self.interface)
        spec = socket.inet_aton(self.source or "0.0.0.0")
        return [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", ifindex, spec, b"\0" * 4))]

    def _problem(self, error: str | None) -> None:
        if error == self._failing:
            return
        if error is None:
            log.info("path_mtu.recovered", tunnel=str(self.tunnel))
        else:
            log.warning("path_mtu.failed", tunnel=str(self.tunnel), interface=self.interface,
                        error=error)
        self._failing = error

"""Defect 11 of issue 14: an ICMP probe reply must be unforgeable by an off-path sender.
Replies are still accepted from any interface (the cloud picks the return path: probe.py's
docstring), but each prober has a random identifier and a random starting sequence, each
probe carries a random nonce checked on receipt, and the source must be the probe's
destination.

The forger is a raw socket in the far namespace, which does not answer pings itself: it
sees each echo request and sends back an echo reply with the right identifier and sequence
(the worst an off-path sender could guess) but a wrong nonce, or the right nonce from the
wrong source. Both must count as lost; the control (right nonce, right source) as answered."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import pytest

from vpnd_testing.netns_helpers import sh
from test_probe import inside, pair  # noqa: F401  (the fixture)
from vpnd.core.events import TunnelKey
from vpnd.probe import ICMP_ECHO_REPLY, Prober, checksum

T1 = TunnelKey("c1", "tunnel1")


def reply_packet(ident: int, seq: int, payload: bytes) -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REPLY, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO_REPLY, 0, checksum(header + payload), ident, seq) + payload


class Forger(threading.Thread):
    """Answers every echo request it sees with `mode`: 'nonce' (wrong payload), 'source'
    (right payload, sent from 192.168.0.11) or 'genuine' (right payload and source)."""

    def __init__(self, far: str) -> None:
        super().__init__(daemon=True)
        self.mode = "nonce"
        self.sent = {"nonce": 0, "source": 0, "genuine": 0}
        self.seen: list[tuple[int, int]] = []
        self.stop = threading.Event()
        with inside(far):
            self.rx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self.good = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self.good.bind(("192.168.0.10", 0))
            self.bad = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            self.bad.bind(("192.168.0.11", 0))
        self.rx.settimeout(0.1)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                pkt = self.rx.recv(2048)
            except socket.timeout:
                continue
            ihl = (pkt[0] & 0x0F) * 4
            if pkt[ihl] != 8:       # only echo requests
                continue
            ident, seq = struct.unpack_from("!HH", pkt, ihl + 4)
            payload = pkt[ihl + 8:]
            self.seen.append((ident, seq))
            mode = self.mode
            if mode == "nonce":
                forged = bytes(len(payload)) if payload else b"x"
                self.good.sendto(reply_packet(ident, seq, forged), ("172.16.0.1", 0))
                # and the payload an older vpnd always sent
                self.good.sendto(reply_packet(ident, seq, b"vpnd-probe"), ("172.16.0.1", 0))
            elif mode == "source":
                self.bad.sendto(reply_packet(ident, seq, payload), ("172.16.0.1", 0))
            else:
                self.good.sendto(reply_packet(ident, seq, payload), ("172.16.0.1", 0))
            self.sent[mode] += 1

    def close(self) -> None:
        self.stop.set()
        self.join(2)
        for s in (self.rx, self.good, self.bad):
            s.close()


async def results_for(results: list, forger: Forger, mode: str, n: int) -> list:
    forger.mode = mode
    await asyncio.sleep(0.35)           # let the probes of the previous mode settle
    start = len(results)
    for _ in range(400):
        if len(results) >= start + n:
            break
        await asyncio.sleep(0.01)
    return results[start:start + n]


@pytest.mark.lab
async def test_forged_replies_are_ignored(pair):  # noqa: F811
    gw, far = pair
    sh("ip", "netns", "exec", far, "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1")
    sh("ip", "-n", far, "addr", "add", "192.168.0.11/32", "dev", "lo")
    forger = Forger(far)
    forger.start()
    results = []
    with inside(gw):        # the whole test: the prober resolves its interface at each send
        p = Prober(T1, destination="192.168.0.10", source="172.16.0.1", interface="tun1",
                   interval=0.05, timeout=0.25, on_result=results.append)
        p.start()
        await _phases(p, results, forger)


async def _phases(p, results, forger) -> None:
    try:
        control = await results_for(results, forger, "genuine", 5)
        assert control and all(r.ok for r in control), f"the forger's genuine replies: {control}"
        wrong_nonce = await results_for(results, forger, "nonce", 6)
        assert forger.sent["nonce"] >= 3
        assert wrong_nonce and not any(r.ok for r in wrong_nonce), \
            "a reply with the right id/seq but a wrong nonce was accepted"
        wrong_source = await results_for(results, forger, "source", 6)
        assert forger.sent["source"] >= 3
        assert wrong_source and not any(r.ok for r in wrong_source), \
            "a reply with the right nonce from the wrong source was accepted"
        assert p.rejected >= forger.sent["nonce"]
    finally:
        await p.stop()
        forger.close()


def test_identifiers_and_sequences_are_not_predictable():
    """Two probers made back to back: random identifiers, random starting sequences."""
    ps = [Prober(TunnelKey("c", f"t{i}"), destination="10.0.0.1", source=None, interface=None,
                 interval=1.0, timeout=1.0, on_result=lambda r: None) for i in range(8)]
    idents = [p.ident for p in ps]
    seqs = [p.seq for p in ps]
    steps = {b - a for a, b in zip(idents, idents[1:])}
    assert len(steps) > 1, f"identifiers in a fixed stride: {idents}"
    assert len(set(seqs)) > 1, f"every prober starts at the same sequence: {seqs}"

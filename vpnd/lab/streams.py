"""One-way outages: a UDP stream each way between the LAN host and the VPC host.

Each end sends a datagram with a sequence number every 10 ms to the other and counts what
arrives; the longest gap between arrivals (less one interval) is that direction's outage:
LAN->VPC is counted at the VPC host, VPC->LAN at the LAN host. Both ends use the same port,
so the two directions are one flow (one conntrack entry), like a real conversation. The
round trip is the pinger's (vpnd/lab/pinger.py); a cloud that keeps sending into a dead
tunnel shows here as a VPC->LAN outage longer than LAN->VPC.

An end is a process in its namespace (`python -m vpnd.lab.streams ...`), started and ended
by pid like the pinger; it writes its figures as JSON when told to stop (SIGTERM) or at the
end of its duration, and its latest arrival time to a small status file as it goes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vpnd.lab.topology import Lab

PORT = 47123
_PACKET = struct.Struct("!Qd")          # sequence, sender's wall clock


@dataclass(frozen=True)
class OneWay:
    sent: int                 # by the far end
    received: int
    outage_ms: float          # the longest time without a datagram


@dataclass(frozen=True)
class StreamReport:
    lan_to_vpc: OneWay
    vpc_to_lan: OneWay

    def line(self) -> str:
        return (f"LAN->VPC {self.lan_to_vpc.outage_ms:.0f} ms, VPC->LAN {self.vpc_to_lan.outage_ms:.0f} ms "
                f"(longest one-way gaps)")


def longest_gap(arrivals: list[float], interval: float, start: float, stop: float) -> float:
    """ms without an arrival: between two arrivals their distance less one interval; before
    the first and after the last, from `start` / until `stop` (an outage still running)."""
    if not arrivals:
        return round(max(0.0, stop - start) * 1000, 1)
    edges = [arrivals[0] - start, stop - arrivals[-1]]
    inner = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return round(max(0.0, max(inner + edges) - interval) * 1000, 1)


def run_end(bind: str, peer: str, interval: float, duration: float, out: Path, settle: float) -> int:
    """One end: send to `peer` every `interval`, record arrivals, write figures on stop.
    Gaps are counted from `settle` s after the start (both ends running by then)."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind, PORT))
    s.settimeout(interval / 4)
    t0 = time.time()
    end = t0 + duration
    arrivals: list[float] = []
    seqs: set[int] = set()
    seq = 0
    next_send = time.monotonic()
    status = out.with_suffix(".last")
    last_status = 0.0
    while not stop and time.time() < end:
        now = time.monotonic()
        if now >= next_send:
            seq += 1
            try:
                s.sendto(_PACKET.pack(seq, time.time()), (peer, PORT))
            except OSError:
                pass                        # no route for a moment: a lost datagram
            next_send += interval
            if next_send < now:             # a stall (a loaded box): no burst to catch up
                next_send = now + interval
        try:
            data, _ = s.recvfrom(64)
            if len(data) >= _PACKET.size:
                n, _sent = _PACKET.unpack_from(data)
                if n not in seqs:
                    seqs.add(n)
                    arrivals.append(time.time())
        except (socket.timeout, BlockingIOError):
            pass
        if arrivals and arrivals[-1] - last_status > 0.05:
            last_status = arrivals[-1]
            status.write_text(f"{last_status:.4f}\n")
    stopped = time.time()
    counted = [a for a in arrivals if a >= t0 + settle]
    figures = {"sent": seq, "received": len(seqs), "peer_sent_max": max(seqs, default=0),
               "outage_ms": longest_gap(counted, interval, t0 + settle, stopped),
               "first": arrivals[0] if arrivals else None, "stopped": stopped}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(figures))
    tmp.replace(out)
    return 0


class Streams:
    """Both ends, LAN host <-> VPC host. `stop()` returns the two one-way outages."""

    def __init__(self, lab: Lab, *, interval: float = 0.01, duration: float = 120.0, settle: float = 0.5) -> None:
        self.lab = lab
        p = lab.plan
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.files = {"lan": lab.dir / "stream-at-lan.json", "vpc": lab.dir / "stream-at-vpc.json"}
        for f in self.files.values():
            f.unlink(missing_ok=True)
            f.with_suffix(".last").unlink(missing_ok=True)
        self.procs = {}
        for role, bind, peer in (("vpc", p.vpc_host, p.lan_host), ("lan", p.lan_host, p.vpc_host)):
            self.procs[role] = subprocess.Popen(
                ["ip", "netns", "exec", lab.ns(role), sys.executable, "-m", "vpnd.lab.streams", bind, peer,
                 str(interval), str(duration), str(self.files[role]), str(settle)],
                stdout=subprocess.DEVNULL, stderr=open(lab.dir / f"stream-{role}.err", "ab"),
                stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def last_arrival(self, role: str) -> float | None:
        """Wall time of the latest datagram received at `role` (lan or vpc), as it goes."""
        try:
            return float(self.files[role].with_suffix(".last").read_text())
        except (OSError, ValueError):
            return None

    def flowing_since(self, t: float) -> bool:
        """Both directions have delivered a datagram after wall time `t`."""
        return all((self.last_arrival(r) or 0) > t for r in ("lan", "vpc"))

    def stop(self) -> StreamReport:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        got = {}
        for role, f in self.files.items():
            try:
                d = json.loads(f.read_text())
                got[role] = OneWay(d["peer_sent_max"], d["received"], d["outage_ms"])
            except (OSError, ValueError, KeyError):
                got[role] = OneWay(0, 0, float("nan"))
        return StreamReport(lan_to_vpc=got["vpc"], vpc_to_lan=got["lan"])


if __name__ == "__main__":
    bind, peer, interval, duration, out, settle = sys.argv[1:7]
    raise SystemExit(run_end(bind, peer, float(interval), float(duration), Path(out), float(settle)))

"""LAN -> VPC pings every 10 ms; the longest gap between answers is the outage users felt."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

from vpnd_lab.topology import Lab

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")


@dataclass(frozen=True)
class PingReport:
    sent: int
    received: int
    outage_ms: float          # the longest time without an answer

    def line(self) -> str:
        return f"{self.received}/{self.sent} answered, longest gap {self.outage_ms:.0f} ms"


class Pinger:
    """ping runs in the background; its output is drained as it comes (a full pipe would
    stall ping on long runs), and the stop time closes an outage still running then."""

    def __init__(self, lab: Lab, *, interval: float = 0.01, duration: float = 60.0) -> None:
        # No `-w`: with a deadline iputils ping exits at its first error (an ICMP unreachable
        # or a failed send while a tunnel is down), which ends the measurement mid-outage. The
        # duration is enforced here instead; `-c` only bounds a ping whose test was killed
        # (ping slows down while unanswered, so the count outlasts the duration).
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns("lan"), "ping", "-n", "-D", "-i", str(interval),
             "-W", "1", "-c", str(max(1, int(duration / interval))), lab.plan.vpc_host],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.interval = interval
        self._deadline = threading.Timer(duration, self._interrupt)
        self._deadline.daemon = True
        self._deadline.start()
        self._chunks: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._chunks.append(line)

    def last_answer(self) -> float | None:
        """Wall-clock time of the latest answer so far (None before the first)."""
        for line in reversed(self._chunks[-50:]):
            m = _REPLY.match(line)
            if m:
                return float(m.group(1))
        return None

    def _interrupt(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)     # ping prints its summary on SIGINT

    def stop(self) -> PingReport:
        stopped = time.time()
        self._deadline.cancel()
        self._interrupt()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        return parse("".join(self._chunks), self.interval, stopped=stopped)


def parse(output: str, interval: float, stopped: float | None = None) -> PingReport:
    """The outage is the longest time without an answer. Between two answers it is their
    timestamps' distance less one send interval: iputils ping slows down while its packets go
    unanswered (about 60/s instead of 100/s at -i 0.01), so counting lost sequence numbers
    would under-state long outages. An outage still running at the end lasts until `stopped`
    (wall clock, as ping -D); without it, and before the first answer, lost sequence numbers
    are counted at the rate ping sent."""
    got: dict[int, float] = {}
    for line in output.splitlines():
        m = _REPLY.match(line)
        if m:
            got[int(m.group(2))] = float(m.group(1))
    m = re.search(r"(\d+) packets transmitted", output)
    sent = int(m.group(1)) if m else (max(got) if got else 0)
    if not got:
        return PingReport(sent, 0, round(sent * interval * 1000, 1))
    seqs = sorted(got)
    first, last = seqs[0], seqs[-1]
    period = (got[last] - got[first]) / (last - first) if last > first else interval
    longest = max([0.0] + [got[b] - got[a] - interval for a, b in zip(seqs, seqs[1:]) if b - a > 1])
    trailing = (stopped - got[last] - interval) if stopped is not None and sent > last else (sent - last) * period
    edges = max((first - 1) * period, trailing)
    return PingReport(sent, len(got), round(max(longest, edges, 0.0) * 1000, 1))

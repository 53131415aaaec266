"""LAN -> VPC pings every 10 ms; the longest gap between answers is the outage users felt."""

from __future__ import annotations

import re
import signal
import subprocess
from dataclasses import dataclass

from vpnd.lab.topology import Lab

_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)")


@dataclass(frozen=True)
class PingReport:
    sent: int
    received: int
    outage_ms: float          # the longest time without an answer

    def line(self) -> str:
        return f"{self.received}/{self.sent} answered, longest gap {self.outage_ms:.0f} ms"


class Pinger:
    def __init__(self, lab: Lab, *, interval: float = 0.01, duration: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns("lan"), "ping", "-n", "-D", "-i", str(interval),
             "-W", "1", "-w", str(int(duration)), lab.plan.vpc_host],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.interval = interval

    def stop(self) -> PingReport:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        return parse(out, self.interval)


def parse(output: str, interval: float) -> PingReport:
    """The outage is the longest time without an answer. Between two answers it is their
    timestamps' distance less one send interval: iputils ping slows down while its packets go
    unanswered (about 60/s instead of 100/s at -i 0.01), so counting lost sequence numbers
    would under-state long outages. An unanswered run before the first or after the last
    answer has no closing timestamp: it is counted in sequence numbers at the rate ping sent."""
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
    edges = max(first - 1, sent - last) * period
    return PingReport(sent, len(got), round(max(longest, edges, 0.0) * 1000, 1))

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
    """The outage is the longest run of unanswered sequence numbers (including a trailing
    one), converted to time at the rate ping really sent at."""
    got: dict[int, float] = {}
    for line in output.splitlines():
        m = _REPLY.match(line)
        if m:
            got[int(m.group(2))] = float(m.group(1))
    m = re.search(r"(\d+) packets transmitted", output)
    sent = int(m.group(1)) if m else (max(got) if got else 0)
    if len(got) >= 2:
        first, last = min(got), max(got)
        period = (got[last] - got[first]) / (last - first) if last > first else interval
    else:
        period = interval
    longest, run = 0, 0
    for seq in range(1, sent + 1):
        run = 0 if seq in got else run + 1
        longest = max(longest, run)
    return PingReport(sent, len(got), round(longest * period * 1000, 1))

"""Watching what happens to routes in a lab namespace, for the failover tests (host and guest).

`RouteMonitor` runs `ip -ts monitor route`: the kernel's own account of every route change,
with timestamps, so "no route changed" and "restored after N ms" are measured, not polled.
"""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import datetime

from vpnd_lab.cli import wait_until
from vpnd_lab.topology import Lab


class RouteMonitor:
    """`ip -ts monitor route` in a namespace: every route change the kernel announces, with
    its timestamp. A sentinel route proves the monitor is listening before the test acts."""

    SENTINEL = "203.0.113.77/32"
    VPC_NET = "192.168.0.0/16"

    def __init__(self, lab: Lab, role: str = "cgw") -> None:
        self.lab, self.role = lab, role
        self.lines: list[str] = []
        self.proc = subprocess.Popen(["ip", "-n", lab.ns(role), "-ts", "monitor", "route"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_until("ip monitor listening", self._sentinel_seen, 30, interval=0.2)

    def _sentinel_seen(self) -> bool:
        """Add and delete the sentinel until the monitor reports it (it may not listen yet)."""
        self.lab.ip(self.role, "route", "add", self.SENTINEL, "dev", "lo", check=False)
        self.lab.ip(self.role, "route", "del", self.SENTINEL, "dev", "lo", check=False)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            if any(self.SENTINEL.split("/")[0] in line for line in self.lines):
                return True
            time.sleep(0.01)
        return False

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> list[str]:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        return self.vpc_lines()

    def vpc_lines(self) -> list[str]:
        """The events about the remote network (the sentinel and others are ignored)."""
        return [l for l in self.lines if self.VPC_NET in l]

    @staticmethod
    def stamp(line: str) -> float:
        """`[2026-11-23T12:34:56.123456] Deleted ...` -> seconds since the epoch."""
        return datetime.fromisoformat(line[1:line.index("]")]).timestamp()


def metric(lab: Lab, name: str) -> float:
    """A series' value from vpnd's Prometheus endpoint (it listens inside cgw)."""
    from vpnd_testing.lab_metrics import sample, scrape

    value = sample(scrape(lab), name)
    if value is None:
        raise AssertionError(f"{name} not in vpnd's metrics")
    return value

"""XfrmInTmplMismatch from /proc/net/xfrm_stat: the cloud's own switch, seen from here.

In policy mode both tunnels' inbound policies match the same flows and the kernel checks a
decrypted packet against the one policy it selects: when the cloud sends on the tunnel vpnd
does not use, the packets fail that check, are dropped and counted as XfrmInTmplMismatch
(measured on Debian 12's kernel 6.1 in the vm tier: exactly one count per such packet, no
other counter moves; tests/vm/guest_policy_xfrm.py).
The vendor's strongSwan guide says: if the counter keeps increasing, the cloud has switched; move to the
standby. The watcher reads the counter of vpnd's network namespace on a timer (procfs has
no notification), sets the metric on every read and reports each rise to the core, which
decides (vpnd/core/failover.py: two rises within 2 s, then follow).

charon's libipsec (the lab on kernels without ESP) decrypts in userspace and never touches
this counter: there it stays 0, and tests drive the watcher from a file of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from vpnd import logs
from vpnd.core.events import XfrmInTmplMismatch

log = logs.get("vpnd.xfrm_stat")

PATH = Path("/proc/net/xfrm_stat")
COUNTER = "XfrmInTmplMismatch"


def parse(text: str) -> dict[str, int]:
    """`Name<whitespace>value` lines -> {name: value}; anything else is skipped."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read(path: Path = PATH) -> int | None:
    """The counter now; None when the file or the line is missing (no CONFIG_XFRM_STATISTICS)."""
    try:
        return parse(path.read_text()).get(COUNTER)
    except OSError:
        return None


class XfrmStatWatcher:
    """Polls the counter every `interval` s; `on_sample(total)` on each read, `on_rise(event)`
    when it grew. The first read is the baseline: what rose before vpnd started is history."""

    def __init__(self, on_rise: Callable[[XfrmInTmplMismatch], None], *,
                 on_sample: Callable[[int], None] | None = None, path: Path = PATH,
                 interval: float = 0.1) -> None:
        self.on_rise = on_rise
        self.on_sample = on_sample
        self.path = Path(path)
        self.interval = interval
        self.last: int | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> bool:
        """False (and a log line) when this kernel has no such counter: nothing to watch."""
        first = read(self.path)
        if first is None:
            log.warning("xfrm_stat.unavailable", path=str(self.path),
                        note="the cloud's switch cannot be detected (CONFIG_XFRM_STATISTICS?)")
            return False
        self.last = first
        if self.on_sample:
            self.on_sample(first)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="xfrm-stat")
        return True

    def sample(self) -> XfrmInTmplMismatch | None:
        """One read: the rise since the last read, if any (a counter reset is a new baseline)."""
        value = read(self.path)
        if value is None:
            return None
        if self.on_sample:
            self.on_sample(value)
        previous, self.last = self.last, value
        if previous is None or value <= previous:
            return None
        return XfrmInTmplMismatch(value, value - previous)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            event = self.sample()
            if event is not None:
                self.on_rise(event)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

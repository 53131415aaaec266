"""CPU cost of vpnd's ICMP prober at fast intervals: N tunnels probed every `interval` s
through one raw socket, answers arriving through one "tunnel" (as from the vendor's cloud),
each answer's arrival interface looked up (ProbeResult.via).

Two scratch namespaces joined by veth pairs tun1..tunN stand in for the tunnels (root
needed). The prober runs in this process for `--seconds`; the figure is this process's CPU
time (user + system) over the wall time, plus the lost-probe count (none expected).

    PYTHONPATH=. python bench/probe_cpu.py [--interval 0.02] [--tunnels 2] [--seconds 20]

The last line is JSON. Measured (2-core machine, 2 tunnels, 20 ms, 15 s): 1458 probes, 0
lost, CPU 2.33% of one core, 240 us per probe.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid

from vpnd.core.events import ProbeResult, TunnelKey
from vpnd.probe import Prober


def sh(*args: str, check: bool = True) -> None:
    subprocess.run(args, check=check, capture_output=True, timeout=30)


def build(gw: str, far: str, n: int) -> None:
    for ns in (gw, far):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", gw, "addr", "add", "172.16.0.1/32", "dev", "lo")
    sh("ip", "-n", far, "addr", "add", "192.168.0.10/32", "dev", "lo")
    for i in range(1, n + 1):
        sh("ip", "-n", gw, "link", "add", f"tun{i}", "type", "veth", "peer", "name", f"far{i}",
           "netns", far)
        sh("ip", "-n", gw, "link", "set", f"tun{i}", "up")
        sh("ip", "-n", far, "link", "set", f"far{i}", "up")
    sh("ip", "-n", far, "route", "add", "172.16.0.1/32", "dev", "far1")   # one return tunnel


async def measure(n: int, interval: float, seconds: float) -> dict:
    results: list[ProbeResult] = []
    returns = {f"tun{i}": f"tunnel{i}" for i in range(1, n + 1)}
    probers = [Prober(TunnelKey("c", f"tunnel{i}"), destination="192.168.0.10",
                      source="172.16.0.1", interface=f"tun{i}", interval=interval,
                      timeout=max(interval, 0.05), on_result=results.append, returns=returns)
               for i in range(1, n + 1)]
    await asyncio.sleep(0.2)
    t0, c0 = time.monotonic(), os.times()
    for p in probers:
        p.start()
    await asyncio.sleep(seconds)
    for p in probers:
        await p.stop()
    t1, c1 = time.monotonic(), os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    wall = t1 - t0
    ok = [r for r in results if r.ok]
    return {"tunnels": n, "interval_s": interval, "seconds": round(wall, 2),
            "probes": len(results), "lost": len(results) - len(ok),
            "via_tunnel1": sum(1 for r in ok if r.via == "tunnel1"),
            "cpu_percent": round(100.0 * cpu / wall, 2),
            "cpu_us_per_probe": round(1e6 * cpu / max(1, len(results)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--tunnels", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    tag = uuid.uuid4().hex[:6]
    gw, far = f"vpndcpu-g-{tag}", f"vpndcpu-f-{tag}"
    try:
        build(gw, far, args.tunnels)
        from pyroute2 import netns
        netns.pushns(gw)
        try:
            figures = asyncio.run(measure(args.tunnels, args.interval, args.seconds))
        finally:
            netns.popns()
    finally:
        for ns in (gw, far):
            sh("ip", "netns", "del", ns, check=False)
    print(f"{figures['tunnels']} tunnels every {figures['interval_s'] * 1000:g} ms for "
          f"{figures['seconds']} s: {figures['probes']} probes, {figures['lost']} lost, "
          f"{figures['via_tunnel1']} answers via tunnel1; CPU {figures['cpu_percent']}% of one "
          f"core ({figures['cpu_us_per_probe']} us per probe)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

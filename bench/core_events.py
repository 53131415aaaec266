"""Microbenchmark: events per second through the core engine (target >= 50,000/s).

A realistic mix for dual-tunnel connections: mostly probe results, with CHILD SA flaps,
rekeys, alerts, BGP changes, snapshots and ticks at the deadlines the engine asks for.
Prints a human line per run and a final JSON line.

    PYTHONPATH=. python bench/core_events.py [--events 200000] [--connections 1,10,50]

Each size is run separately (the engine's cost per event may grow with the connections it
holds); the target holds for every size and both routing modes.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import sys
import time


from vpnd.config.model import (
    Config, ConnectionConfig, DaemonConfig, FailoverConfig, HealthCheckConfig, Secret,
    TunnelConfig,
)
from vpnd.core.engine import Engine
from vpnd.core.events import (
    BgpSessionChanged, CharonAlert, CharonConnected, ChildDown, ChildRekeyed, ChildUp, IkeUp,
    ProbeResult, SaSnapshot, Tick, TunnelKey, TunnelSa,
)


def make_config(n: int, routing: str) -> Config:
    def tunnel(i: int) -> TunnelConfig:
        return TunnelConfig(f"t{i}", ipaddress.IPv4Address("198.18.0.2"),
                            ipaddress.IPv4Address(f"198.18.0.{i}"), "a", "b", Secret("x"),
                            f"ipsec{i}", 41 + i)
    hc = HealthCheckConfig(ipaddress.IPv4Address("10.0.0.1"), ipaddress.IPv4Address("10.1.0.1"),
                           interval=0.1, max_rtt_ms=200.0, max_loss_percent=50.0)
    conns = tuple(ConnectionConfig(
        f"c{j}", routing, (ipaddress.IPv4Network("10.1.0.0/16"),),  # type: ignore[arg-type]
        (ipaddress.IPv4Network("10.0.0.0/16"),), (tunnel(1), tunnel(2)), health_check=hc,
        failover=FailoverConfig(preempt_delay=1.0, hold_down=0.5)) for j in range(n))
    return Config(DaemonConfig(), conns)


def make_events(n: int, conns: int, seed: int) -> list[tuple[object, float]]:
    rng = random.Random(seed)
    keys = [TunnelKey(f"c{j}", f"t{i}") for j in range(conns) for i in (1, 2)]
    child = {k: 100 + i for i, k in enumerate(keys)}
    now, out = 0.0, [(CharonConnected(), 0.0), (SaSnapshot(()), 0.0)]
    for k in keys:
        out += [(IkeUp(k, child[k]), 0.0), (ChildUp(k, child[k], child[k]), 0.0)]
    while len(out) < n:
        now += rng.expovariate(100.0)     # 8 tunnels probed 10x a second, plus news
        k = rng.choice(keys)
        r = rng.random()
        if r < 0.80:
            ev = ProbeResult(k, rng.random() > 0.2, rng.choice((0.005, 0.02, 0.3)))
        elif r < 0.84:
            ev = ChildDown(k, child[k], child[k], "DPD")
        elif r < 0.88:
            child[k] += 1000
            ev = ChildUp(k, child[k], child[k])
        elif r < 0.91:
            old, child[k] = child[k], child[k] + 1
            ev = ChildRekeyed(k, old, child[k])
        elif r < 0.94:
            ev = CharonAlert(k, "retransmit", "retransmit 1 of request")
        elif r < 0.96:
            ev = BgpSessionChanged(k, rng.random() > 0.3)
        elif r < 0.965:
            ev = SaSnapshot(tuple(TunnelSa(x, child[x], "ESTABLISHED", child[x], "INSTALLED")
                                  for x in keys))
        else:
            ev = Tick()
        out.append((ev, now))
    return out


def run(engine: Engine, events: list[tuple[object, float]]) -> tuple[float, int]:
    handle = engine.handle
    actions = 0
    start = time.perf_counter()
    for event, now in events:
        acts, deadline = handle(event, now)
        actions += len(acts)
        if deadline is not None and deadline <= now:
            actions += len(handle(Tick(), now)[0])
    return time.perf_counter() - start, actions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--connections", default="1,10,50",
                   help="comma-separated sizes, each run separately (default 1,10,50)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--target", type=float, default=50_000.0)
    args = p.parse_args(argv)
    sizes = [int(x) for x in str(args.connections).split(",") if x]
    results: dict[int, dict[str, int]] = {}
    for n in sizes:
        events = make_events(args.events, n, seed=7)
        results[n] = {}
        for routing in ("route", "bgp"):
            best = None
            for _ in range(args.repeat):
                engine = Engine(make_config(n, routing))
                elapsed, actions = run(engine, events)
                rate = len(events) / elapsed
                best = rate if best is None else max(best, rate)
            print(f"{n:>3} connection(s), {routing:>5}: {len(events)} events, best of "
                  f"{args.repeat}: {best:,.0f} events/s ({actions} actions)")
            results[n][routing] = round(best)
    ok = min(r for by_mode in results.values() for r in by_mode.values()) >= args.target
    print(json.dumps({"bench": "core_events", "events": args.events,
                      "events_per_s": {str(n): r for n, r in results.items()},
                      "target": args.target, "ok": ok,
                      "python": sys.version.split()[0]}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Latency from a `child-updown` packet written to the VICI socket to the core event leaving
the charon adapter, and on to the actions leaving the core (vpnd.core.engine.Engine, when
present).

A fake charon (strongSwan's codec) runs in a separate process and writes realistic
child-updown events (captured shapes, about 1 KB: up, then the DPD-timeout down of the same
CHILD SA, alternating, so the core really transitions and acts), one at a time, stamping
time.perf_counter_ns() just before the write; the adapter's emit stamps the core event, then
hands it to the core and stamps its actions. Events are paced by an ack so the figure is
latency, not queueing.

    PYTHONPATH=.:tests python bench/event_latency.py [-n 10000]

Targets: median < 1 ms, p99 < 5 ms. The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time


import structlog

from vpnd_testing.fake_charon import FakeCharon
from vpnd.charon.adapter import CharonAdapter
from vpnd.core.events import ChildDown, ChildUp, SaSnapshot, TunnelKey
from vpnd.charon.vici import Backoff

NAME = "vpnd-c1-t1"
T1 = TunnelKey("c1", "t1")


def child_updown(child_id: int, up: bool) -> dict:
    """child-updown as captured: up, or the down after a DPD timeout (no `up` key, yet
    ESTABLISHED / INSTALLED)."""
    child = {
        "name": NAME, "uniqueid": str(child_id), "reqid": "1", "state": "INSTALLED",
        "mode": "TUNNEL", "protocol": "ESP", "encap": "yes", "spi-in": "47c6dd0a",
        "spi-out": "fc5fe50c", "encr-alg": "AES_CBC", "encr-keysize": "128",
        "integ-alg": "HMAC_SHA1_96", "bytes-in": "0", "packets-in": "0", "bytes-out": "0",
        "packets-out": "0", "rekey-time": "3301", "life-time": "3953", "install-time": "7",
        "local-ts": ["10.255.1.2/32"], "remote-ts": ["10.255.1.1/32"],
    }
    ike = {
        "uniqueid": "10", "version": "2", "state": "ESTABLISHED", "local-host": "198.18.0.2",
        "local-port": "4500", "local-id": "198.18.0.2", "remote-host": "198.18.0.1",
        "remote-port": "4500", "remote-id": "198.18.0.1", "initiator": "yes",
        "initiator-spi": "266fab5b758bec17", "responder-spi": "822a21a169c14427",
        "nat-remote": "yes", "nat-any": "yes", "encr-alg": "AES_CBC", "encr-keysize": "128",
        "integ-alg": "HMAC_SHA1_96", "prf-alg": "PRF_HMAC_SHA1", "dh-group": "MODP_1024",
        "established": "7", "tasks-active": ["IKE_MOBIKE"],
        "child-sas": {f"{NAME}-{child_id}": child},
    }
    return {"up": "yes", NAME: ike} if up else {NAME: ike}


def writer_process(path: str, n: int, ready, ack, out) -> None:
    """The fake charon: serve the handshake, then write n events, one per ack."""
    async def main():
        fake = await FakeCharon(path).start()
        ready.send("listening")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ack.recv)  # the adapter connected and resynced
        stamps = []
        for i in range(n):
            msg = child_updown(i // 2 + 1, up=i % 2 == 0)
            t0 = time.perf_counter_ns()
            fake.emit("child-updown", msg)          # transport.write: straight to the socket
            stamps.append(t0)
            ack.recv()
        out.send(stamps)
        await fake.stop()
    asyncio.run(main())


async def run(n: int, path: str, engine=None) -> dict:
    ready_r, ready_w = mp.Pipe(duplex=False)
    ack_r, ack_w = mp.Pipe(duplex=False)
    out_r, out_w = mp.Pipe(duplex=False)
    proc = mp.get_context("fork").Process(target=writer_process, args=(path, n, ready_w, ack_r, out_w))
    proc.start()
    ready_r.recv()
    t_event = [0] * n
    t_action = [0] * n
    n_actions = [0] * n
    kinds: dict[str, int] = {}
    seen = 0

    def emit(event):
        nonlocal seen
        if isinstance(event, (ChildUp, ChildDown)):
            i = seen
            seen += 1
            t_event[i] = time.perf_counter_ns()
            if engine is not None:
                actions, _deadline = engine.handle(event, time.monotonic())
                t_action[i] = time.perf_counter_ns()
                n_actions[i] = len(actions)
                for a in actions:
                    kinds[type(a).__name__] = kinds.get(type(a).__name__, 0) + 1
            ack_w.send(None)
        else:
            if engine is not None:
                engine.handle(event, time.monotonic())
            if isinstance(event, SaSnapshot):
                ack_w.send(None)

    adapter = CharonAdapter(path, emit, backoff=Backoff(0.01, 0.1))
    adapter._set_tunnels({NAME: T1})        # as apply() would, without a charon config
    await adapter.start()
    loop = asyncio.get_running_loop()
    stamps = await loop.run_in_executor(None, out_r.recv)
    await adapter.stop()
    proc.join(10)
    assert seen == n, f"{seen} of {n} events arrived"

    def stats(prefix, ends):
        xs = sorted((t1 - t0) / 1000 for t0, t1 in zip(stamps, ends))
        return {f"{prefix}_median_us": round(statistics.median(xs), 1),
                f"{prefix}_p99_us": round(xs[int(0.99 * len(xs)) - 1], 1),
                f"{prefix}_max_us": round(xs[-1], 1)}
    res = {"n": n, **stats("event", t_event)}
    if engine is not None:
        res.update(stats("action", t_action))
        res["actions_total"] = sum(n_actions)
        res["actions_by_type"] = kinds
    return res


def make_engine():
    """The core's Engine over a two-tunnel connection, when the core is merged here."""
    try:
        from vpnd.core.engine import Engine
    except ImportError:
        return None
    from ipaddress import IPv4Address as A, IPv4Network as N
    from vpnd.config.model import Config, ConnectionConfig, DaemonConfig, Secret, TunnelConfig

    tunnels = tuple(TunnelConfig(
        name=f"t{i}", local_address=A("198.18.0.2"), remote_address=A(f"198.18.0.{i}"),
        local_id="198.18.0.2", remote_id=f"198.18.0.{i}", psk=Secret("bench"),
        interface=f"ipsec{i - 1}", if_id=41 + i, route_metric=99 + i) for i in (1, 2))
    conn = ConnectionConfig(name="c1", routing="route", local_networks=(N("10.1.0.0/16"),),
                            remote_networks=(N("10.0.0.0/16"),), tunnels=tunnels)
    return Engine(Config(daemon=DaemonConfig(), connections=(conn,)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=10_000)
    args = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # quiet info
    d = tempfile.mkdtemp(prefix="vici-bench-", dir="/tmp")
    engine = make_engine()
    res = asyncio.run(run(args.n, f"{d}/charon.vici", engine))
    res["core_included"] = engine is not None
    res["ok"] = res["event_median_us"] < 1000 and res["event_p99_us"] < 5000 and (
        engine is None or (res["action_median_us"] < 1000 and res["action_p99_us"] < 5000))
    print(f"child-updown packet written -> core event out of the adapter, n={res['n']}")
    print(f"  median {res['event_median_us']:.0f} us   p99 {res['event_p99_us']:.0f} us   "
          f"max {res['event_max_us']:.0f} us   (targets: median < 1000 us, p99 < 5000 us)")
    if engine is not None:
        print(f"  -> actions out of the core (Engine.handle): median {res['action_median_us']:.0f} us"
              f"   p99 {res['action_p99_us']:.0f} us   max {res['action_max_us']:.0f} us"
              f"   ({res['actions_total']} actions)")
    else:
        print("  core engine not present on this branch: adapter only")
    print(json.dumps(res))
    os.rmdir(d) if not os.listdir(d) else None
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

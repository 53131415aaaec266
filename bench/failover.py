"""Failover benchmark on the lab: how long LAN->VPC traffic is lost when the active tunnel's
data path is black-holed (IKE stays up), and where the time goes.

    python bench/failover.py [--runs 5] [--interval 0.1] [--retries 3] [--backend libipsec]

Per run: a fresh lab, vpnd running in cgw, pings every 10 ms from lan, tunnel 1 black-holed.
Figures: outage_ms (longest gap the pinger saw), detection_ms (fault -> vpnd's decision, from
its log), reaction_ms (decision -> routes in the kernel, as vpnd measured it). The last line
is one JSON object with the medians and the probe settings. Needs root.

    python bench/failover.py --mode bgp [--bfd-ms 100] [--timers 10,30] [--plain]

BGP mode: vpnd configures cgw's FRR; traffic follows zebra's BGP route. vpnd shuts tunnel 1's
neighbor when its probes fail; --bfd-ms adds BFD on both sides; --plain makes probes
report-only (switch_route = false), so only BGP's hold timer (or BFD) notices: with
--timers 10,30 that is the vendor's procedure, the baseline. reaction_ms there is the time
from vpnd's decision to zebra's route on tunnel 2 (negative when FRR moved first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpnd.lab import daemons, faults, scenario  # noqa: E402
from vpnd.lab.cli import active_interface, both_established, wait_until  # noqa: E402
from vpnd.lab.pinger import Pinger  # noqa: E402
from vpnd.lab.topology import Lab  # noqa: E402


def events(lab: Lab, name: str) -> list[dict]:
    out = []
    for line in (lab.dir / "vpnd.log").read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == name:
            out.append(e)
    return out


def one_run(opts: scenario.Options) -> dict:
    lab = Lab(prefix=f"vb{uuid.uuid4().hex[:6]}")
    try:
        scenario.up(lab, opts)
        daemons.start_vpnd(lab, lab.dir / "vpnd.toml")
        wait_until("both tunnels up", lambda: both_established(lab), 60)
        wait_until("route on tunnel 1", lambda: active_interface(lab) == "vxlan1", 30)
        pinger = Pinger(lab, duration=60)
        time.sleep(1.0)
        fault_wall = time.time()
        faults.blackhole(lab, 0, opts.backend)
        wait_until("failover", lambda: active_interface(lab) == "vxlan2", 30, interval=0.002)
        time.sleep(0.5)
        report = pinger.stop()
        switch = [e for e in events(lab, "connection.active_changed") if e.get("active") == "tunnel2"][-1]
        decided = datetime.fromisoformat(switch["timestamp"].replace("Z", "+00:00")).timestamp()
        routed = [e for e in events(lab, "routes.switched") if e.get("active") == "tunnel2"][-1]
        return {"outage_ms": report.outage_ms, "detection_ms": round((decided - fault_wall) * 1000, 1),
                "reaction_ms": routed["reaction_ms"], "pings_sent": report.sent,
                "pings_received": report.received}
    finally:
        lab.destroy()


def vpc_device(lab: Lab) -> str | None:
    out = lab.exec("cgw", "ip", "route", "get", lab.plan.vpc_host, check=False).stdout.split()
    return out[out.index("dev") + 1] if "dev" in out else None


def one_bgp_run(opts: scenario.Options) -> dict:
    from vpnd.lab import frr

    lab = Lab(prefix=f"vb{uuid.uuid4().hex[:6]}")
    try:
        scenario.up(lab, opts)
        daemons.start_vpnd(lab, lab.dir / "vpnd.toml")
        wait_until("both tunnels up", lambda: both_established(lab), 60)
        wait_until("both BGP sessions", lambda: len(frr.established_peers(lab, "cgw")) == 2, 180, interval=0.1)
        wait_until("BGP route on tunnel 1", lambda: vpc_device(lab) == "vxlan1", 30)
        pinger = Pinger(lab, duration=120)
        time.sleep(1.0)
        fault_wall = time.time()
        faults.blackhole(lab, 0, opts.backend)
        wait_until("failover", lambda: vpc_device(lab) == "vxlan2", 90, interval=0.002)
        routed_wall = time.time()
        time.sleep(0.5)
        report = pinger.stop()
        stamps = [datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
                  for e in events(lab, "connection.active_changed") if e.get("active") == "tunnel2"]
        decided = min((t for t in stamps if t >= fault_wall), default=routed_wall)
        return {"outage_ms": report.outage_ms, "detection_ms": round((decided - fault_wall) * 1000, 1),
                "reaction_ms": round((routed_wall - decided) * 1000, 1), "pings_sent": report.sent,
                "pings_received": report.received}
    finally:
        lab.destroy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--backend", default="libipsec", choices=["libipsec", "native"])
    ap.add_argument("--mode", default="static", choices=["static", "bgp"])
    ap.add_argument("--bfd-ms", type=int, default=None, help="bgp: BFD tx/rx interval (x3)")
    ap.add_argument("--timers", default="1,3", help="bgp: keepalive,hold (vendor: 10,30)")
    ap.add_argument("--plain", action="store_true", help="bgp: probes report only; BGP/BFD decide")
    args = ap.parse_args()
    opts = scenario.Options(backend=args.backend, interval=args.interval, retries=args.retries,
                            preempt_delay=30.0)
    extra: dict = {}
    if args.mode == "bgp":
        timers = tuple(int(x) for x in args.timers.split(","))
        opts = replace(opts, routing="bgp", frr_by_vpnd=True, bgp_timers=timers, bfd_ms=args.bfd_ms,
                       switch_route=not args.plain)
        extra = {"mode": "bgp", "bgp_timers": list(timers), "bfd_ms": args.bfd_ms,
                 "probes_switch": not args.plain}
    runs = []
    for i in range(args.runs):
        r = one_bgp_run(opts) if args.mode == "bgp" else one_run(opts)
        runs.append(r)
        print(f"run {i + 1}: outage {r['outage_ms']:.0f} ms, detection {r['detection_ms']:.0f} ms, "
              f"reaction {r['reaction_ms']:.2f} ms ({r['pings_received']}/{r['pings_sent']} pings)", flush=True)
    med = {k: round(statistics.median(r[k] for r in runs), 2) for k in ("outage_ms", "detection_ms", "reaction_ms")}
    print(json.dumps({"backend": args.backend, "runs": args.runs, **med,
                      "max_outage_ms": max(r["outage_ms"] for r in runs),
                      "probe_interval_s": args.interval, "probe_retries": args.retries, **extra}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

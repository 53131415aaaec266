"""Failover benchmark on the lab: how long LAN->VPC traffic is lost when the active tunnel's
data path is black-holed (IKE stays up), and where the time goes.

    python bench/failover.py [--runs 5] [--interval 0.1] [--retries 3] [--backend auto|native|vm|libipsec]
                             [--baseline [--baseline-cap 240] [--baseline-fault unreachable|blackhole]]

Per run: a fresh lab, vpnd running in cgw, pings every 10 ms from lan, tunnel 1 broken.
Figures: outage_ms (longest gap the pinger saw), detection_ms (fault -> vpnd's decision, from
its log), reaction_ms (decision -> routes in the kernel, as vpnd measured it).

`--baseline` then measures, in the same lab, the vendor procedure of seed 003 without vpnd:
charon's own DPD (`dpd_delay = 10`, charon's default retransmission schedule, `dpd_action =
restart`) plus updown scripts that add/delete the metric 100/101 routes. A data-path black
hole is invisible to DPD (the vendor procedure never moves), so by default the baseline's fault
is tunnel 1's cloud address becoming unreachable (IKE and ESP dropped): DPD's best case. The
wait is capped (`--baseline-cap`); `baseline_capped` says when the cap was hit.

    python bench/failover.py --mode bgp [--bfd-ms 100] [--timers 10,30] [--plain]
    python bench/failover.py --mode policy

`--mode policy` (libipsec backend): routing = "policy", no routes; the switch is vpnd making
tunnel 2's CHILD SA the carrier, reaction_ms the VICI terminate + initiate it took.

BGP mode (libipsec backend): vpnd configures cgw's FRR; traffic follows zebra's BGP route.
vpnd shuts tunnel 1's neighbor when its probes fail; --bfd-ms adds BFD on both sides; --plain
makes probes report-only (switch_route = false), so only BGP's hold timer (or BFD) notices:
with --timers 10,30 that is the vendor's procedure, the BGP baseline. reaction_ms there is
the time from vpnd's decision to zebra's route on tunnel 2 (negative when FRR moved first).

Backend: native if this kernel has XFRM interfaces, else vm (the same benchmark on Debian's
kernel in a QEMU guest: emulated, compare ratios), else libipsec. The last line is one JSON
object with the medians, the backend and the probe settings. Needs root.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
import uuid
from dataclasses import replace
from datetime import datetime


from vpnd.config.model import Config
from vpnd_lab import daemons, faults, scenario
from vpnd_lab.cli import active_interface, both_established, native_supported, vm_possible, wait_until
from vpnd_lab.pinger import Pinger
from vpnd_lab.topology import Lab, LabError
from vpnd.render import swanctl

FAULTS = ("blackhole", "unreachable")

# The vendor's connect_N.sh (seed 003), parameterised: charon's updown plugin runs it with
# PLUTO_VERB set; arguments: interface, metric, remote network, log file.
UPDOWN = """#!/bin/sh
case "$PLUTO_VERB" in
  up-client) echo "$(date +%s.%N) add $3 dev $1 metric $2" >> "$4"; ip route add "$3" dev "$1" metric "$2" ;;
  down-client) echo "$(date +%s.%N) del $3 dev $1 metric $2" >> "$4"; ip route del "$3" dev "$1" metric "$2" ;;
esac
"""


def choose_backend(requested: str) -> str:
    """native, then vm (route-based mode needs XFRM interfaces), else libipsec."""
    if requested != "auto":
        return requested
    if native_supported():
        return "native"
    if vm_possible():
        return "vm"
    return "libipsec"


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


def inject(lab: Lab, fault: str, backend: str) -> None:
    if fault == "blackhole":
        faults.blackhole(lab, 0, backend)
    else:
        faults.peer_unreachable(lab, 0)


def measure_vpnd(lab: Lab, opts: scenario.Options, fault: str) -> dict:
    """vpnd in cgw; tunnel 1 broken under 10 ms pings; until the route is on tunnel 2."""
    ifs = [scenario.tunnel_ifname(opts.backend, i) for i in range(2)]
    slow = 5.0 if scenario.emulated() else 1.0
    daemons.start_vpnd(lab, lab.dir / "vpnd.toml")
    wait_until("both tunnels up", lambda: both_established(lab), 60 * slow)
    wait_until("route on tunnel 1", lambda: active_interface(lab) == ifs[0], 30 * slow)
    pinger = Pinger(lab, duration=60 * slow)
    time.sleep(1.0)
    faults.random_phase(opts.interval)      # uniform phase against the probe schedule
    inject(lab, fault, opts.backend)
    fault_wall = time.time()        # the fault is in place (one nft transaction) from here
    wait_until("failover", lambda: active_interface(lab) == ifs[1], 30 * slow, interval=0.002)
    time.sleep(0.5 * slow)
    report = pinger.stop()
    switch = [e for e in events(lab, "connection.active_changed") if e.get("active") == "tunnel2"][-1]
    routed = [e for e in events(lab, "routes.switched") if e.get("active") == "tunnel2"][-1]
    # vpnd logs the decision once the routes have moved (traffic first): take their time off
    decided = datetime.fromisoformat(switch["timestamp"].replace("Z", "+00:00")).timestamp() \
        - routed["reaction_ms"] / 1000
    return {"outage_ms": report.outage_ms, "detection_ms": round((decided - fault_wall) * 1000, 1),
            "reaction_ms": routed["reaction_ms"], "pings_sent": report.sent,
            "pings_received": report.received, "reason": switch.get("reason")}


def measure_policy(lab: Lab, opts: scenario.Options, fault: str) -> dict:
    """Policy mode (no routes): the switch is vpnd replacing tunnel 2's CHILD SA so that it
    carries; the pinger tells when traffic flowed again. reaction_ms: the VICI switch."""
    slow = 5.0 if scenario.emulated() else 1.0
    daemons.start_vpnd(lab, lab.dir / "vpnd.toml")
    wait_until("both tunnels up", lambda: both_established(lab), 60 * slow)
    wait_until("tunnel 1 asserted", lambda: any(e.get("active") == "tunnel1"
                                                for e in events(lab, "policy.switched")), 30 * slow)
    pinger = Pinger(lab, duration=60 * slow)
    time.sleep(1.0)
    faults.random_phase(opts.interval)
    if fault == "blackhole":
        faults.blackhole(lab, 0, opts.backend, "policy")
    else:
        faults.peer_unreachable(lab, 0)
    fault_wall = time.time()
    wait_until("failover", lambda: any(e.get("active") == "tunnel2" and e.get("op") == "replace_child"
                                       for e in events(lab, "policy.switched")), 30 * slow, interval=0.005)
    time.sleep(0.5 * slow)
    report = pinger.stop()
    switch = [e for e in events(lab, "connection.active_changed") if e.get("active") == "tunnel2"][-1]
    done = [e for e in events(lab, "policy.switched") if e.get("active") == "tunnel2"][-1]
    decided = datetime.fromisoformat(switch["timestamp"].replace("Z", "+00:00")).timestamp()
    return {"outage_ms": report.outage_ms, "detection_ms": round((decided - fault_wall) * 1000, 1),
            "reaction_ms": done.get("total_ms"), "pings_sent": report.sent,
            "pings_received": report.received, "reason": switch.get("reason")}


def vpc_device(lab: Lab) -> str | None:
    out = lab.exec("cgw", "ip", "route", "get", lab.plan.vpc_host, check=False).stdout.split()
    return out[out.index("dev") + 1] if "dev" in out else None


def measure_bgp(lab: Lab, opts: scenario.Options, fault: str) -> dict:
    """bgp mode: vpnd drives cgw's FRR; until zebra's route for the VPC is on tunnel 2."""
    from vpnd_lab import frr

    daemons.start_vpnd(lab, lab.dir / "vpnd.toml")
    wait_until("both tunnels up", lambda: both_established(lab), 60)
    wait_until("both BGP sessions", lambda: len(frr.established_peers(lab, "cgw")) == 2, 180, interval=0.1)
    wait_until("BGP route on tunnel 1", lambda: vpc_device(lab) == "vxlan1", 30)
    pinger = Pinger(lab, duration=120)
    time.sleep(1.0)
    faults.random_phase(opts.interval)      # uniform phase against the probe schedule
    inject(lab, fault, opts.backend)
    fault_wall = time.time()
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


def metric_routes(lab: Lab, prefix: str) -> dict[int, str]:
    """metric -> device of the routes to `prefix` in cgw's main table (whoever installed them)."""
    out = {}
    for line in lab.ip("cgw", "route", "show", prefix).stdout.splitlines():
        w = line.split()
        if "dev" in w and "metric" in w:
            out[int(w[w.index("metric") + 1])] = w[w.index("dev") + 1]
    return out


def vendor_swanctl(lab: Lab, config: Config, backend: str) -> str:
    """Seed 003's swanctl.conf for our lab: what vpnd would load, with the vendor's own
    choices put back (charon re-initiates by itself, DPD restarts, updown scripts route)."""
    conn = config.connections[0]
    script = lab.dir / "updown.sh"
    script.write_text(UPDOWN)
    conns, secrets = {}, []
    for i, t in enumerate(conn.tunnels):
        name = swanctl.conn_name(conn.name, t.name)
        body = swanctl.vici_conn(conn, t)
        body.pop("keyingtries", None)
        child = next(iter(body["children"].values()))
        child.update(start_action="start", close_action="start", dpd_action="restart",
                     updown=f"/bin/sh {script} {scenario.tunnel_ifname(backend, i)} {100 + i} "
                            f"{conn.remote_networks[0]} {lab.dir / 'updown.log'}")
        conns[name] = body
        secrets.append(swanctl.vici_secret(conn, t))
    return swanctl.conf_text(conns, secrets, show_secrets=True)


def start_vendor_procedure(lab: Lab, config: Config, opts: scenario.Options) -> None:
    """Replace vpnd in the same lab by the vendor procedure; returns once both updown routes
    are in place."""
    slow = 5.0 if scenario.emulated() else 1.0
    daemons.stop(lab, "vpnd")
    faults.repair(lab)
    lab.ip("cgw", "route", "flush", "proto", str(config.daemon.route_protocol), check=False)
    # charon with its default retransmission schedule (the lab's is shortened for speed).
    daemons.stop(lab, "charon-cgw")
    daemons.start_charon(lab, "cgw", libipsec=opts.backend == "libipsec", fast_retransmits=False)
    if opts.backend == "native":       # seed 003's rc.local: the XFRM interfaces (vpnd left them)
        for i in range(2):
            dev = f"ipsec{i}"
            if lab.ip("cgw", "link", "show", dev, check=False).returncode != 0:
                lab.ip("cgw", "link", "add", dev, "type", "xfrm", "dev", "wan0", "if_id", str(42 + i))
            lab.ip("cgw", "link", "set", dev, "up")
    path = lab.dir / "vendor-swanctl.conf"
    path.write_text(vendor_swanctl(lab, config, opts.backend))
    path.chmod(0o600)
    r = lab.exec("cgw", "swanctl", "--load-all", "--noprompt", "--file", str(path), "--uri",
                 f"unix://{daemons.vici_path(lab, 'cgw')}", check=False)
    if r.returncode != 0:
        raise LabError(f"charon refused the vendor configuration: {r.stdout}{r.stderr}")
    net = str(config.connections[0].remote_networks[0])
    ifs = [scenario.tunnel_ifname(opts.backend, i) for i in range(2)]
    wait_until("both tunnels up (vendor procedure)", lambda: both_established(lab), 60 * slow)
    wait_until("updown routes 100/101", lambda: metric_routes(lab, net) == {100: ifs[0], 101: ifs[1]}, 30 * slow)


def answered_again(lab: Lab, pinger: Pinger, since: float) -> float | None:
    """Wall-clock time LAN->VPC answered after `since`: from the running pinger, or from a
    fresh single ping (after minutes of errors iputils ping sends only every few seconds, so
    the long-running one would overstate the outage)."""
    seen = pinger.last_answer()
    if seen is not None and seen > since:
        return seen
    r = lab.exec("lan", "ping", "-n", "-c", "1", "-W", "1", lab.plan.vpc_host, check=False)
    return time.time() if r.returncode == 0 else None


def measure_baseline(lab: Lab, config: Config, opts: scenario.Options, fault: str, cap: float) -> dict:
    """The vendor procedure in the same lab: same pings, tunnel 1 broken, until charon's DPD
    declares it dead, the updown script deletes its route (or the cap) and LAN->VPC answers
    again. The outage runs from the last answer before the fault to the first one after."""
    start_vendor_procedure(lab, config, opts)
    net = str(config.connections[0].remote_networks[0])
    tunnel1 = scenario.tunnel_ifname(opts.backend, 0)
    pinger = Pinger(lab, duration=cap + 60)
    wait_until("LAN->VPC answered", lambda: pinger.last_answer() is not None, 30)
    time.sleep(1.0)
    inject(lab, fault, opts.backend)
    t0 = time.monotonic()
    last_before = pinger.last_answer() or time.time()
    capped = False
    try:
        wait_until("DPD: tunnel 1's route removed", lambda: metric_routes(lab, net).get(100) != tunnel1, cap,
                   interval=0.05)
    except LabError:
        capped = True
    detection = time.monotonic() - t0
    moved = time.time()
    # At the cap nothing moved: the outage is (at least) the time waited, no more waiting.
    end, deadline = None, time.monotonic() + (0 if capped else 15)
    while end is None and time.monotonic() < deadline:
        end = answered_again(lab, pinger, moved)
    report = pinger.stop()
    resumed = end is not None
    end = end if end is not None else time.time()
    return {"baseline_outage_ms": round((end - last_before) * 1000, 1),
            "baseline_detection_ms": round(detection * 1000, 1), "baseline_capped": capped,
            "baseline_resumed": resumed, "baseline_pinger_outage_ms": report.outage_ms}


def one_run(opts: scenario.Options, *, fault: str, baseline: bool, baseline_fault: str, cap: float) -> dict:
    lab = Lab(prefix=f"vb{uuid.uuid4().hex[:6]}")
    try:
        config = scenario.up(lab, opts)
        if opts.routing == "bgp":
            return measure_bgp(lab, opts, fault)
        if opts.routing == "policy":
            return measure_policy(lab, opts, fault)
        result = measure_vpnd(lab, opts, fault)
        if baseline:
            result.update(measure_baseline(lab, config, opts, baseline_fault, cap))
        return result
    finally:
        lab.destroy()


def summarize(runs: list[dict], args: argparse.Namespace, opts: scenario.Options) -> dict:
    med = {k: round(statistics.median(r[k] for r in runs), 2) for k in ("outage_ms", "detection_ms", "reaction_ms")}
    out = {"backend": opts.backend, "runs": len(runs), "fault": args.fault, **med,
           "max_outage_ms": max(r["outage_ms"] for r in runs),
           "probe_interval_s": opts.interval, "probe_timeout_s": opts.timeout or opts.interval,
           "probe_retries": opts.retries}
    if opts.routing == "policy":
        out["mode"] = "policy"
    if opts.routing == "bgp":
        out.update({"mode": "bgp", "bgp_timers": list(opts.bgp_timers), "bfd_ms": opts.bfd_ms,
                    "probes_switch": opts.switch_route})
    base = [r for r in runs if "baseline_outage_ms" in r]
    if base:
        out.update({
            "baseline_outage_ms": round(statistics.median(r["baseline_outage_ms"] for r in base), 1),
            "baseline_detection_ms": round(statistics.median(r["baseline_detection_ms"] for r in base), 1),
            "baseline_capped": any(r["baseline_capped"] for r in base), "baseline_cap_s": args.baseline_cap,
            "baseline_resumed": all(r["baseline_resumed"] for r in base),
            "baseline_fault": args.baseline_fault, "baseline_runs": len(base), "baseline_dpd_delay_s": opts.dpd_delay,
        })
        out["outage_ratio_to_baseline"] = round(out["outage_ms"] / out["baseline_outage_ms"], 4) \
            if out["baseline_outage_ms"] else None
    return out


def run_in_vm(args: argparse.Namespace) -> int:
    """The same benchmark inside a guest on Debian's kernel (native backend there); the last
    line is the guest's JSON with backend "vm"."""
    from vpnd_lab import vm

    argv = ["python", "bench/failover.py", "--backend", "native", "--runs", str(args.runs),
            "--retries", str(args.retries), "--fault", args.fault, "--mode", args.mode]
    if args.interval is not None:
        argv += ["--interval", str(args.interval)]
    if args.timeout is not None:
        argv += ["--timeout", str(args.timeout)]
    if args.baseline:
        argv += ["--baseline", "--baseline-cap", str(args.baseline_cap), "--baseline-fault", args.baseline_fault,
                 "--baseline-runs", str(args.baseline_runs)]
    env = dict(vm.project_env(), VPND_LAB_ROOT="/dev/shm/vpnd-lab", VPND_LAB_EMULATED="1")
    budget = 120 + args.runs * 150 + (args.baseline_cap + 150) * (args.baseline_runs if args.baseline else 0)
    result = vm.run_in_guest(shlex.join(argv), timeout=budget, env=env, cwd=vm.PROJECT_ROOT, stream=sys.stdout)
    lines = [l for l in result.output.splitlines() if l.startswith("{")]
    if result.returncode != 0 or not lines:
        print(f"bench: the guest run failed (exit {result.returncode}, timed out: {result.timed_out})", file=sys.stderr)
        return 1
    figures = json.loads(lines[-1])
    print(json.dumps({**figures, "backend": "vm", "guest_backend": figures["backend"],
                      "guest_wall_s": round(result.seconds, 1)}))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--interval", type=float, default=None, help="probe interval (s); default 0.1, 0.25 emulated")
    ap.add_argument("--timeout", type=float, default=None, help="probe timeout (s); default the interval, 1.0 emulated")
    ap.add_argument("--retries", type=int, default=3)
    ap.add_argument("--backend", default="auto", choices=["auto", "native", "vm", "libipsec"])
    ap.add_argument("--fault", default="blackhole", choices=FAULTS,
                    help="what breaks tunnel 1 for vpnd: its data path (IKE up) or its peer")
    ap.add_argument("--baseline", action="store_true", help="also measure the vendor procedure (DPD + updown)")
    ap.add_argument("--baseline-cap", type=float, default=240.0, help="longest wait for DPD (s)")
    ap.add_argument("--baseline-fault", default="unreachable", choices=FAULTS)
    ap.add_argument("--baseline-runs", type=int, default=1, help="how many of the runs also measure the baseline")
    ap.add_argument("--mode", default="static", choices=["static", "bgp", "policy"],
                    help="static: route mode (XFRM interfaces or the libipsec overlay); policy: "
                         "routing = \"policy\" (which CHILD SA carries); bgp: FRR")
    ap.add_argument("--bfd-ms", type=int, default=None, help="bgp: BFD tx/rx interval (x3)")
    ap.add_argument("--timers", default="1,3", help="bgp: keepalive,hold (vendor: 10,30)")
    ap.add_argument("--plain", action="store_true", help="bgp: probes report only; BGP/BFD decide")
    args = ap.parse_args(argv)
    if args.mode == "bgp" and args.baseline:
        ap.error("--mode bgp: the baseline is its own run: --plain --timers 10,30")
    if args.mode == "policy" and args.baseline:
        ap.error("--mode policy: the baseline is the static mode's (--mode static --baseline)")
    return args


def options(args: argparse.Namespace, backend: str) -> scenario.Options:
    base = scenario.default_options(backend, "route")
    opts = scenario.Options(backend=backend, interval=args.interval or base.interval,
                            timeout=args.timeout if args.timeout is not None else base.timeout,
                            retries=args.retries, preempt_delay=30.0, dpd_delay=10)
    if args.mode == "policy":
        opts = replace(opts, routing="policy")
    if args.mode == "bgp":
        timers = tuple(int(x) for x in args.timers.split(","))
        opts = replace(opts, routing="bgp", frr_by_vpnd=True, bgp_timers=timers, bfd_ms=args.bfd_ms,
                       switch_route=not args.plain)
    return opts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # bgp and policy modes are measured on the host kernel's libipsec lab
    backend = "libipsec" if args.mode in ("bgp", "policy") and args.backend == "auto" \
        else choose_backend(args.backend)
    print(f"bench: backend {backend}", flush=True)
    if backend == "vm":
        return run_in_vm(args)
    opts = options(args, backend)
    runs = []
    for i in range(args.runs):
        r = one_run(opts, fault=args.fault, baseline=args.baseline and i < args.baseline_runs,
                    baseline_fault=args.baseline_fault, cap=args.baseline_cap)
        runs.append(r)
        line = (f"run {i + 1}: outage {r['outage_ms']:.0f} ms, detection {r['detection_ms']:.0f} ms, "
                f"reaction {r['reaction_ms']:.2f} ms ({r['pings_received']}/{r['pings_sent']} pings)")
        if "baseline_outage_ms" in r:
            line += (f"; vendor procedure: outage {r['baseline_outage_ms']:.0f} ms, DPD + updown "
                     f"{r['baseline_detection_ms']:.0f} ms{' (capped)' if r['baseline_capped'] else ''}")
        print(line, flush=True)
    print(json.dumps(summarize(runs, args, opts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Failover benchmark on the lab: how long LAN->VPC traffic is lost when the active tunnel's
data path is black-holed (IKE stays up), and where the time goes.

    python bench/failover.py [--runs 5] [--interval 0.1] [--retries 3] [--backend auto|native|vm|libipsec]
                             [--baseline [--baseline-cap 240] [--baseline-fault unreachable|blackhole]]

Per run: a fresh lab, vpnd running in cgw, pings every 10 ms from lan and a UDP stream each
way (10 ms), tunnel 1 broken (both directions). Figures: outage_ms (the round trip: longest
gap the LAN's pinger saw), outage_lan_to_vpc_ms (longest gap at the VPC host's receiver),
outage_vpc_to_lan_ms (at the LAN host's), detection_ms (fault -> vpnd's decision, from its
log), reaction_ms (decision -> routes in the kernel, as vpnd measured it), cloud_moved_ms
(fault -> the cloud's own move to tunnel 2, from the cloud controller's log), next to
cloud_budget_ms (the cloud's detection budget: its health check's interval x retries, the
BGP hold time, or DPD).

The cloud (`--cloud-model`, docs/lab.md): `vendor` (default) chooses its own sending tunnel
(lab/vpnd_lab/cloud_model.py): its health check `--cloud-check INTERVAL,RETRIES` (default 1,3;
`off`), DPD timeout `--cloud-dpd-timeout` (default 30 s), in BGP mode its FRR's best path;
`per-flow` is the lab's original cloud, which answers on the tunnel each packet arrived on.

`--baseline` then measures, in the same lab, the procedure of the vendor's strongSwan guide without vpnd:
charon's own DPD (`dpd_delay = 10`, charon's default retransmission schedule, `dpd_action =
restart`) plus updown scripts that add/delete the metric 100/101 routes. A data-path black
hole is invisible to DPD (the vendor procedure never moves), so by default the baseline's fault
is tunnel 1's cloud address becoming unreachable (IKE and ESP dropped): DPD's best case. The
wait is capped (`--baseline-cap`); `baseline_capped` says when the cap was hit.

    python bench/failover.py --mode bgp [--bfd-ms 100] [--timers 10,30] [--plain]
    python bench/failover.py --mode policy
    python bench/failover.py --fault esp_dead --cloud-check off [--no-park]

`--fault esp_dead`: tunnel 1's data path dead, its IKE SA alive (faults.esp_dead), best run
with the cloud at its defaults (`--cloud-check off`, DPD 30 s): the cloud then moves only
when vpnd parks tunnel 1 (tears its CHILD SA down, failover.park_dead_tunnel); `--no-park`
is the figure without parking (the cloud never moves: the run waits out its cap).

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
from vpnd_lab import cloud_model, daemons, faults, scenario
from vpnd_lab.cli import active_interface, both_established, native_supported, vm_possible, wait_until
from vpnd_lab.pinger import Pinger
from vpnd_lab.streams import Streams
from vpnd_lab.topology import Lab, LabError
from vpnd.render import swanctl

FAULTS = ("blackhole", "unreachable", "esp_dead")

# The connect_N.sh of the vendor's strongSwan guide, parameterised: charon's updown plugin runs it with
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
    elif fault == "esp_dead":
        faults.esp_dead(lab, 0, backend)
    else:
        faults.peer_unreachable(lab, 0)


def phase_span(opts: scenario.Options) -> float:
    """The fault's random phase covers vpnd's probe interval and, under the vendor cloud, its
    health check's: otherwise the lab's fixed start-up timing lands every fault at the same
    point of the cloud's schedule (its move came either ~2.9 s or ~3.9 s after the fault, 1 s x 3)."""
    if opts.cloud_model == "vendor" and opts.cloud_check and opts.routing != "bgp":
        return max(opts.interval, opts.cloud_check[0])
    return opts.interval


def resume_cap(opts: scenario.Options) -> float:
    """How long after vpnd's move traffic may still be lost because of the cloud: its hold
    time (BGP) or its DPD, plus room."""
    slow = 5.0 if scenario.emulated() else 1.0
    if opts.cloud_model != "vendor":
        return 10 * slow
    extra = opts.bgp_timers[1] if opts.routing == "bgp" else (scenario.cloud_dpd_timeout(opts) or 3)
    return (extra + 15) * slow


def both_ways(lab: Lab, opts: scenario.Options, pinger: Pinger, streams: Streams, since: float) -> None:
    """Wait until the round trip and both one-way streams have delivered after `since`."""
    wait_until("traffic flowing both ways again",
               lambda: (pinger.last_answer() or 0) > since and streams.flowing_since(since),
               resume_cap(opts), interval=0.01)


def cloud_moved_ms(lab: Lab, fault_wall: float) -> float | None:
    """fault -> the cloud's first move off tunnel 1 (only tunnel 2 in BGP mode)."""
    for e in cloud_model.events(lab, "cloud.sending"):
        if e["t"] >= fault_wall and e["tunnel"] in (1, [1]):
            return round((e["t"] - fault_wall) * 1000, 1)
    return None


def figures(report, streams_report, lab: Lab, fault_wall: float) -> dict:
    return {"outage_ms": report.outage_ms,
            "outage_lan_to_vpc_ms": streams_report.lan_to_vpc.outage_ms,
            "outage_vpc_to_lan_ms": streams_report.vpc_to_lan.outage_ms,
            "cloud_moved_ms": cloud_moved_ms(lab, fault_wall),
            "pings_sent": report.sent, "pings_received": report.received}


def measure_vpnd(lab: Lab, opts: scenario.Options, fault: str) -> dict:
    """vpnd in cgw; tunnel 1 broken under 10 ms pings; until the route is on tunnel 2."""
    ifs = [scenario.tunnel_ifname(opts.backend, i) for i in range(2)]
    slow = 5.0 if scenario.emulated() else 1.0
    daemons.start_vpnd(lab, lab.dir / "vpnd.toml")
    wait_until("both tunnels up", lambda: both_established(lab), 60 * slow)
    wait_until("route on tunnel 1", lambda: active_interface(lab) == ifs[0], 30 * slow)
    pinger = Pinger(lab, duration=120 * slow)
    streams = Streams(lab, duration=120 * slow)
    time.sleep(1.0)
    faults.random_phase(phase_span(opts))   # uniform phase against both probe schedules
    inject(lab, fault, opts.backend)
    fault_wall = time.time()        # the fault is in place (one nft transaction) from here
    wait_until("failover", lambda: active_interface(lab) == ifs[1], resume_cap(opts) + 20 * slow,
               interval=0.002)
    both_ways(lab, opts, pinger, streams, time.time())
    time.sleep(0.5 * slow)
    report = pinger.stop()
    streams_report = streams.stop()
    switch = [e for e in events(lab, "connection.active_changed") if e.get("active") == "tunnel2"][-1]
    routed = [e for e in events(lab, "routes.switched") if e.get("active") == "tunnel2"][-1]
    # vpnd logs the decision once the routes have moved (traffic first): take their time off
    decided = datetime.fromisoformat(switch["timestamp"].replace("Z", "+00:00")).timestamp() \
        - routed["reaction_ms"] / 1000
    return {**figures(report, streams_report, lab, fault_wall),
            "detection_ms": round((decided - fault_wall) * 1000, 1),
            "reaction_ms": routed["reaction_ms"], "reason": switch.get("reason")}


def measure_policy(lab: Lab, opts: scenario.Options, fault: str) -> dict:
    """Policy mode (no routes): the switch is vpnd replacing tunnel 2's CHILD SA so that it
    carries; the pinger tells when traffic flowed again. reaction_ms: the VICI switch."""
    slow = 5.0 if scenario.emulated() else 1.0
    daemons.start_vpnd(lab, lab.dir / "vpnd.toml")
    wait_until("both tunnels up", lambda: both_established(lab), 60 * slow)
    wait_until("tunnel 1 asserted", lambda: any(e.get("active") == "tunnel1"
                                                for e in events(lab, "policy.switched")), 30 * slow)
    pinger = Pinger(lab, duration=120 * slow)
    streams = Streams(lab, duration=120 * slow)
    time.sleep(1.0)
    faults.random_phase(opts.interval)
    if fault == "blackhole":
        faults.blackhole(lab, 0, opts.backend, "policy")
    else:
        faults.peer_unreachable(lab, 0)
    fault_wall = time.time()
    wait_until("failover", lambda: any(e.get("active") == "tunnel2" and e.get("op") == "replace_child"
                                       for e in events(lab, "policy.switched")), resume_cap(opts) + 20 * slow,
               interval=0.005)
    both_ways(lab, opts, pinger, streams, time.time())
    time.sleep(0.5 * slow)
    report = pinger.stop()
    streams_report = streams.stop()
    switch = [e for e in events(lab, "connection.active_changed") if e.get("active") == "tunnel2"][-1]
    done = [e for e in events(lab, "policy.switched") if e.get("active") == "tunnel2"][-1]
    decided = datetime.fromisoformat(switch["timestamp"].replace("Z", "+00:00")).timestamp()
    return {**figures(report, streams_report, lab, fault_wall),
            "detection_ms": round((decided - fault_wall) * 1000, 1),
            "reaction_ms": done.get("total_ms"), "reason": switch.get("reason")}


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
    pinger = Pinger(lab, duration=180)
    streams = Streams(lab, duration=180)
    time.sleep(1.0)
    faults.random_phase(opts.interval)      # uniform phase against the probe schedule
    inject(lab, fault, opts.backend)
    fault_wall = time.time()
    failed_over = True
    try:
        wait_until("failover", lambda: vpc_device(lab) == "vxlan2", 90, interval=0.002)
        routed_wall = time.time()
        both_ways(lab, opts, pinger, streams, routed_wall)
    except LabError as err:         # an outage that does not end: report it, capped
        print(f"bench: {err}: the outage is capped here", flush=True)
        failed_over, routed_wall = False, time.time()
    time.sleep(0.5)
    report = pinger.stop()
    streams_report = streams.stop()
    stamps = [datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
              for e in events(lab, "connection.active_changed") if e.get("active") == "tunnel2"]
    decided = min((t for t in stamps if t >= fault_wall), default=routed_wall)
    neighbors = [(e.get("tunnel"), e.get("enabled")) for e in events(lab, "bgp.neighbor_set")]
    return {**figures(report, streams_report, lab, fault_wall), "failed_over": failed_over,
            "detection_ms": round((decided - fault_wall) * 1000, 1) if failed_over else None,
            "reaction_ms": round((routed_wall - decided) * 1000, 1) if failed_over else None,
            "neighbors_set": neighbors}


def metric_routes(lab: Lab, prefix: str) -> dict[int, str]:
    """metric -> device of the routes to `prefix` in cgw's main table (whoever installed them)."""
    out = {}
    for line in lab.ip("cgw", "route", "show", prefix).stdout.splitlines():
        w = line.split()
        if "dev" in w and "metric" in w:
            out[int(w[w.index("metric") + 1])] = w[w.index("dev") + 1]
    return out


def vendor_swanctl(lab: Lab, config: Config, backend: str) -> str:
    """The vendor's strongSwan guide's swanctl.conf for our lab: what vpnd would load, with the vendor's own
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
    if opts.backend == "native":       # the vendor's strongSwan guide's rc.local: the XFRM interfaces (vpnd left them)
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
    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return round(statistics.median(values), 2) if values else None

    keys = ("outage_ms", "detection_ms", "reaction_ms", "outage_lan_to_vpc_ms", "outage_vpc_to_lan_ms",
            "cloud_moved_ms")
    med = {k: median(k) for k in keys}
    out = {"backend": opts.backend, "runs": len(runs), "fault": args.fault, **med,
           "max_outage_ms": max(r["outage_ms"] for r in runs),
           "max_outage_lan_to_vpc_ms": max((r["outage_lan_to_vpc_ms"] for r in runs
                                            if r.get("outage_lan_to_vpc_ms") is not None), default=None),
           "max_outage_vpc_to_lan_ms": max((r["outage_vpc_to_lan_ms"] for r in runs
                                            if r.get("outage_vpc_to_lan_ms") is not None), default=None),
           "probe_interval_s": opts.interval, "probe_timeout_s": opts.timeout or opts.interval,
           "probe_retries": opts.retries, "cloud_model": opts.cloud_model,
           "failed_over": all(r.get("failed_over", True) for r in runs),
           "cloud_check": list(opts.cloud_check) if opts.cloud_check and opts.routing != "bgp" else None,
           "cloud_dpd_timeout_s": scenario.cloud_dpd_timeout(opts),
           "cloud_budget_ms": cloud_budget_ms(opts, args.fault),
           "park_dead_tunnel": opts.park_dead_tunnel}
    if opts.routing == "policy":
        out["mode"] = "policy"
    if opts.routing == "bgp":
        out.update({"mode": "bgp", "bgp_timers": list(opts.bgp_timers), "bfd_ms": opts.bfd_ms,
                    "probes_switch": opts.switch_route, "probe_peer": opts.probe_peer})
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


def cloud_budget_ms(opts: scenario.Options, fault: str) -> float | None:
    """The cloud's own detection budget for this run's fault (cloud_model.budget_ms)."""
    check = None
    if opts.cloud_check is not None:
        check = cloud_model.CloudCheck("", "", interval=opts.cloud_check[0], retries=opts.cloud_check[1],
                                       switch_route=opts.cloud_switch_route)
    return cloud_model.budget_ms(opts.routing, opts.cloud_model, check, fault=fault,
                                 hold=opts.bgp_timers[1] if opts.routing == "bgp" else None,
                                 dpd_delay=opts.cloud_dpd_delay or opts.dpd_delay,
                                 dpd_timeout=scenario.cloud_dpd_timeout(opts) or 3.0)


def run_in_vm(args: argparse.Namespace) -> int:
    """The same benchmark inside a guest on Debian's kernel (native backend there); the last
    line is the guest's JSON with backend "vm"."""
    from vpnd_lab import vm

    argv = ["python", "bench/failover.py", "--backend", "native", "--runs", str(args.runs),
            "--retries", str(args.retries), "--fault", args.fault, "--mode", args.mode,
            "--cloud-model", args.cloud_model, "--cloud-check", args.cloud_check]
    if args.cloud_dpd_timeout is not None:
        argv += ["--cloud-dpd-timeout", str(args.cloud_dpd_timeout)]
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
    ap.add_argument("--probe-peer", action="store_true",
                    help="bgp: each tunnel probes the cloud's BGP address (answers on its own tunnel)")
    ap.add_argument("--cloud-model", default="vendor", choices=list(cloud_model.MODELS),
                    help="vendor: the cloud chooses its own sending tunnel; per-flow: it answers on "
                         "the tunnel each packet arrived on (the lab's original)")
    ap.add_argument("--cloud-check", default="1,3",
                    help="vendor, route modes: the cloud's health check INTERVAL,RETRIES, or off")
    ap.add_argument("--no-park", action="store_true",
                    help="failover.park_dead_tunnel = false: vpnd keeps tunnel 1's CHILD SA")
    ap.add_argument("--cloud-dpd-timeout", type=float, default=None,
                    help="vendor: the cloud's DPD timeout (s); default 30 (the vendor's IPsec-VPN documentation)")
    args = ap.parse_args(argv)
    if args.cloud_check != "off":
        try:
            i, r = args.cloud_check.split(",")
            args.cloud_check_parsed = (float(i), int(r))
        except ValueError:
            ap.error(f"--cloud-check {args.cloud_check!r}: INTERVAL,RETRIES (e.g. 3,3) or off")
    else:
        args.cloud_check_parsed = None
    if args.mode == "bgp" and args.baseline:
        ap.error("--mode bgp: the baseline is its own run: --plain --timers 10,30")
    if args.mode == "policy" and args.baseline:
        ap.error("--mode policy: the baseline is the static mode's (--mode static --baseline)")
    return args


def options(args: argparse.Namespace, backend: str) -> scenario.Options:
    base = scenario.default_options(backend, "route")
    opts = scenario.Options(backend=backend, interval=args.interval or base.interval,
                            timeout=args.timeout if args.timeout is not None else base.timeout,
                            retries=args.retries, preempt_delay=30.0, dpd_delay=10,
                            cloud_model=args.cloud_model, cloud_check=args.cloud_check_parsed,
                            cloud_dpd_timeout=args.cloud_dpd_timeout,
                            park_dead_tunnel=not args.no_park)
    if args.mode == "policy":
        opts = replace(opts, routing="policy")
        if backend == "libipsec" and opts.cloud_model == "vendor":
            # the libipsec policy lab's cloud sends by charon's newest CHILD SA (docs/lab.md)
            print("bench: --mode policy on libipsec: the cloud model is per-flow there", flush=True)
            opts = replace(opts, cloud_model="per-flow")
    if args.mode == "bgp":
        timers = tuple(int(x) for x in args.timers.split(","))
        opts = replace(opts, routing="bgp", frr_by_vpnd=True, bgp_timers=timers, bfd_ms=args.bfd_ms,
                       switch_route=not args.plain, probe_peer=args.probe_peer)
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
        def ms(key: str, fmt: str = ".0f") -> str:
            return "-" if r.get(key) is None else format(r[key], fmt)
        line = (f"run {i + 1}: round trip {ms('outage_ms')} ms (LAN->VPC {ms('outage_lan_to_vpc_ms')}, "
                f"VPC->LAN {ms('outage_vpc_to_lan_ms')}), detection {ms('detection_ms')} ms, "
                f"reaction {ms('reaction_ms', '.2f')} ms, cloud moved {ms('cloud_moved_ms')} ms "
                f"({r['pings_received']}/{r['pings_sent']} pings)"
                + ("" if r.get("failed_over", True) else f"; NO FAILOVER (vpnd set neighbors {r.get('neighbors_set')})"))
        if "baseline_outage_ms" in r:
            line += (f"; vendor procedure: outage {r['baseline_outage_ms']:.0f} ms, DPD + updown "
                     f"{r['baseline_detection_ms']:.0f} ms{' (capped)' if r['baseline_capped'] else ''}")
        print(line, flush=True)
    print(json.dumps(summarize(runs, args, opts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

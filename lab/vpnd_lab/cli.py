"""`vpnd lab up | down | status | demo`: the lab for newcomers, tests and benchmarks.

The backend is chosen automatically and printed: `native` when this kernel has XFRM
interfaces and ESP, else `vm` for the demo (the same scenario on a real Debian kernel in a
QEMU guest) or `libipsec` (charon's userspace ESP) for a lab left running.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any

from vpnd_lab import daemons, faults, scenario
from vpnd_lab.pinger import Pinger
from vpnd_lab.streams import Streams
from vpnd_lab.topology import Lab, LabError, sh


def native_supported() -> bool:
    """Try what the native backend needs, in a scratch namespace: an XFRM interface."""
    ns = f"vpnd-probe-{int(time.time() * 1000) % 100000}"
    if sh("ip", "netns", "add", ns, check=False).returncode != 0:
        return False
    try:
        r = sh("ip", "-n", ns, "link", "add", "x0", "type", "xfrm", "if_id", "1", check=False)
        return r.returncode == 0
    finally:
        sh("ip", "netns", "del", ns, check=False)


def vm_possible() -> bool:
    import shutil
    return shutil.which("qemu-system-x86_64") is not None or shutil.which("apt-get") is not None


def choose_backend(requested: str, action: str) -> str:
    if requested != "auto":
        return requested
    if native_supported():
        return "native"
    if action == "demo" and vm_possible():
        return "vm"
    return "libipsec"


# --- reading charon --------------------------------------------------------------------------

def list_sas(lab: Lab, role: str = "cgw") -> list[dict]:
    import vici

    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(daemons.vici_path(lab, role)))
    try:
        out = []
        for sa in vici.Session(s).list_sas():
            for name, ike in sa.items():
                children = ike.get("child-sas", {})
                child = next(iter(children.values()), {}) if children else {}
                out.append({"name": name, "ike": ike.get("state", b"").decode(),
                            "ike_id": int(ike.get("uniqueid", b"0")),
                            "child": child.get("state", b"").decode() if child else "-",
                            "child_id": int(child.get("uniqueid", b"0")) if child else 0})
        return sorted(out, key=lambda r: r["name"])
    finally:
        s.close()


def child_packets(lab: Lab, role: str = "cgw") -> dict[str, tuple[int, int]]:
    """Per tunnel (charon connection name): packets out and in over all its CHILD SAs."""
    import vici

    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(str(daemons.vici_path(lab, role)))
    try:
        out: dict[str, tuple[int, int]] = {}
        for sa in vici.Session(s).list_sas():
            for name, ike in sa.items():
                o, i = out.get(name, (0, 0))
                for child in ike.get("child-sas", {}).values():
                    o += int(child.get("packets-out", b"0"))
                    i += int(child.get("packets-in", b"0"))
                out[name] = (o, i)
        return out
    finally:
        s.close()


def policy_carrier(lab: Lab, count: int = 30) -> str | None:
    """Policy mode: the tunnel whose CHILD SAs carry LAN <-> VPC traffic, by charon's own
    per-SA counters around a burst of `count` LAN -> VPC pings (both directions must have
    carried most of it); None if no single tunnel did. Probes cross both tunnels at 10/s,
    far below the burst."""
    a = child_packets(lab)
    lab.exec("lan", "ping", "-n", "-q", "-c", str(count), "-i", "0.002", "-W", "1",
             lab.plan.vpc_host, check=False)
    b = child_packets(lab)
    busy = [name for name in b if name in a and b[name][0] - a[name][0] >= 0.8 * count
            and b[name][1] - a[name][1] >= 0.8 * count]
    if len(busy) != 1:
        return None
    return busy[0].rsplit("-", 1)[-1]


def vpnd_routes(lab: Lab) -> list[str]:
    return lab.ip("cgw", "route", "show", "proto", "249").stdout.strip().splitlines()


def active_interface(lab: Lab) -> str | None:
    for line in vpnd_routes(lab):
        w = line.split()
        if "metric" in w and w[w.index("metric") + 1] == "100" and "dev" in w:
            return w[w.index("dev") + 1]
    return None


def print_status(lab: Lab, out=sys.stdout) -> list[dict]:
    sas = list_sas(lab)
    print(f"{'connection (cgw side)':<24} {'IKE SA':<14} {'CHILD SA':<12}", file=out)
    for sa in sas:
        print(f"{sa['name']:<24} {sa['ike']:<14} {sa['child']:<12}", file=out)
    if not sas:
        print("(no SAs)", file=out)
    routes = vpnd_routes(lab)
    if routes:
        print("vpnd's routes in cgw:", file=out)
        for r in routes:
            print(f"  {r}", file=out)
    return sas


def wait_until(what: str, pred, timeout: float, interval: float = 0.02) -> float:
    """Bounded wait; returns the seconds it took. Raises LabError naming what never happened."""
    t0 = time.monotonic()
    while True:
        try:
            if pred():
                return time.monotonic() - t0
        except (OSError, LabError):
            pass
        if time.monotonic() - t0 > timeout:
            raise LabError(f"timed out after {timeout:.0f} s waiting for: {what}")
        time.sleep(interval)


def both_established(lab: Lab) -> bool:
    sas = list_sas(lab)
    return len(sas) >= 2 and all(s["ike"] == "ESTABLISHED" and s["child"] == "INSTALLED" for s in sas)


# --- commands --------------------------------------------------------------------------------

def cmd_up(lab: Lab, backend: str, routing: str, *, with_vpnd: bool = True) -> int:
    if backend == "vm":
        print("lab: `up` runs on this kernel; the vm backend runs whole scenarios (`vpnd lab demo --backend vm`).")
        backend = "libipsec"
    print(f"lab: backend {backend}, prefix {lab.prefix}, dir {lab.dir}")
    opts = scenario.default_options(backend, routing)
    t0 = time.monotonic()
    scenario.up(lab, opts)
    if with_vpnd:
        daemons.start_vpnd(lab, lab.dir / "vpnd.toml")
        wait_until("both tunnels ESTABLISHED with CHILD SAs INSTALLED", lambda: both_established(lab), 60)
    print(f"lab: up in {time.monotonic() - t0:.1f} s")
    print_status(lab)
    print(f"lab: explore with `ip netns exec {lab.ns('lan')} ping {lab.plan.vpc_host}`; "
          f"`vpnd lab status`, `vpnd lab down` when done")
    return 0


def cmd_down(lab: Lab) -> int:
    t0 = time.monotonic()
    lab.destroy()
    print(f"lab: {lab.prefix} down in {time.monotonic() - t0:.1f} s")
    return 0


def cmd_status(lab: Lab) -> int:
    if not lab.exists():
        print(f"lab: no lab with prefix {lab.prefix} is running (`vpnd lab up`)")
        return 1
    print_status(lab)
    return 0


def show_vpnd_status(lab: Lab, say) -> None:
    """What the operator sees: `vpnd status` over the daemon's control socket."""
    from vpnd.control.server import Unreachable, request
    from vpnd.control.cli import render

    say(f"   `vpnd status --socket {lab.dir / 'control.sock'}`:")
    try:
        text = render(request(str(lab.dir / "control.sock"), {"command": "status"}, timeout=5)["status"])
    except (Unreachable, OSError, ValueError, KeyError) as exc:
        text = f"(no status: {exc})"
    for line in text.splitlines():
        say(f"   | {line}")


def demo(lab: Lab, backend: str, routing: str = "route", out=sys.stdout) -> dict[str, Any]:
    """The newcomer's tour; every step waits for its expectation, bounded. Returns figures."""
    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    from dataclasses import replace

    from vpnd_lab import cloud_model

    ifs = [scenario.tunnel_ifname(backend, i) for i in range(2)]
    slow = 5.0 if scenario.emulated() else 1.0
    # the vendor's cloud (docs/lab.md), its health check as in issue 13's measurement: 1 s x 3
    opts = replace(scenario.default_options(backend, routing), cloud_model="vendor",
                   cloud_check=(2.0 if scenario.emulated() else 1.0, 3),
                   declare_cloud_check=True)
    budget = cloud_model.budget_ms(routing, opts.cloud_model, cloud_model.CloudCheck(
        "", "", interval=opts.cloud_check[0], retries=opts.cloud_check[1]))
    say(f"== 1. building the lab ({backend} backend): cgw, cloud (two IPsec addresses), lan, vpc")
    t0 = time.monotonic()
    scenario.up(lab, opts)
    say(f"   namespaces and two real charons up in {time.monotonic() - t0:.1f} s; "
        f"the cloud side mirrored from the same TOML (vpnd_lab.cloud)")
    say(f"   the cloud is the vendor's: it sends on tunnel 1 until its own health check "
        f"({opts.cloud_check[0]:g} s x {opts.cloud_check[1]}, budget {budget:.0f} ms) fails there")
    say("== 2. starting vpnd in cgw: it loads charon over VICI, probes each tunnel, owns the routes")
    daemons.start_vpnd(lab, lab.dir / "vpnd.toml")
    took = wait_until("both tunnels ESTABLISHED with CHILD SAs INSTALLED", lambda: both_established(lab), 60 * slow)
    say(f"   both tunnels established {took:.1f} s after vpnd started")
    wait_until(f"vpnd's route via tunnel 1 ({ifs[0]})", lambda: active_interface(lab) == ifs[0], 30 * slow)
    print_status(lab, out)
    # [connection.cloud_health_check] in vpnd's config: the vendor's on-premises /32 route
    # for the check's source, and replies to the check by the tunnel their probe arrived on
    check_src = opts.cloud_check_source or lab.plan.cloud_vpc
    check_route = next((r for r in vpnd_routes(lab) if r.split()[0] in (check_src, f"{check_src}/32")), None)
    say(f"   the cloud's health check is declared to vpnd ([connection.cloud_health_check]): "
        f"its source {check_src}/32 is routed " + (f"by vpnd ({check_route})" if check_route
                                                   else "(no /32 route yet)"))
    say(f"== 3. pinging {lab.plan.vpc_host} from lan every 10 ms; black-holing tunnel 1's data path "
        "(IKE stays up: DPD alone would never notice)")
    pinger = Pinger(lab, duration=120)
    streams = Streams(lab, duration=120)
    # Python starts slowly under emulation: the fault only once the pings and both streams deliver
    wait_until("pings and both streams flowing", lambda: (pinger.last_answer() or 0) > time.time() - 0.5
               and streams.flowing_since(time.time() - 0.5), 30 * slow, interval=0.05)
    time.sleep(1.0)         # a second of clean traffic before the fault, for the record
    faults.random_phase(opts.interval)      # at a random point of the probe schedule
    faults.blackhole(lab, 0, backend)
    fault_wall = time.time()
    failover_s = wait_until(f"traffic moved to tunnel 2 ({ifs[1]})", lambda: active_interface(lab) == ifs[1], 30 * slow,
                            interval=0.005)
    say(f"   vpnd moved the route to tunnel 2 after {failover_s * 1000:.0f} ms "
        f"(probes every {opts.interval * 1000:.0f} ms, {opts.retries} retries)")
    wait_until("traffic both ways again", lambda: streams.flowing_since(time.time() - 0.1), 30 * slow)
    # read after both ways flow: in route mode the cloud moves by its own check, after vpnd
    moved = [e for e in cloud_model.events(lab, "cloud.sending") if e["t"] >= fault_wall and e["tunnel"] == 1]
    cloud_ms = round((moved[0]["t"] - fault_wall) * 1000, 1) if moved else None
    if cloud_ms is not None:
        say(f"   the cloud moved its sending tunnel to tunnel 2 after {cloud_ms:.0f} ms ({moved[0]['reason']})")
    time.sleep(1.0)
    report = pinger.stop()
    one_way = streams.stop()
    say(f"   round trip (LAN pings) during the failover: {report.line()}")
    say(f"   one way: {one_way.line()}; the cloud's budget {budget:.0f} ms")
    print_status(lab, out)
    show_vpnd_status(lab, say)
    say(f"== 4. repairing tunnel 1; vpnd moves back after it has been healthy for {opts.preempt_delay:.0f} s")
    pinger2 = Pinger(lab, duration=120)
    faults.repair(lab)
    back_s = wait_until(f"traffic back on tunnel 1 ({ifs[0]})", lambda: active_interface(lab) == ifs[0], 60 * slow,
                        interval=0.01)
    time.sleep(0.5)
    report2 = pinger2.stop()
    say(f"   back on tunnel 1 {back_s:.1f} s after the repair; LAN->VPC meanwhile: {report2.line()}")
    print_status(lab, out)
    recreated_s = None
    if backend == "native":
        say(f"== 5. someone deletes tunnel 2's XFRM interface ({ifs[1]}); vpnd puts it back")
        lab.ip("cgw", "link", "del", ifs[1])
        recreated_s = wait_until(f"{ifs[1]} re-created with if_id 43 and its route back", lambda: (
            "if_id 0x2b" in lab.ip("cgw", "-d", "link", "show", ifs[1], check=False).stdout
            and any(f"dev {ifs[1]}" in r and "metric 101" in r for r in vpnd_routes(lab))), 30 * slow)
        say(f"   {ifs[1]} re-created (if_id 43) and its metric-101 route restored "
            f"{recreated_s * 1000:.0f} ms after the delete")
        print_status(lab, out)
    return {"backend": backend, "failover_ms": round(failover_s * 1000, 1),
            "outage_ms": report.outage_ms, "outage_lan_to_vpc_ms": one_way.lan_to_vpc.outage_ms,
            "outage_vpc_to_lan_ms": one_way.vpc_to_lan.outage_ms, "cloud_moved_ms": cloud_ms,
            "cloud_budget_ms": budget, "cloud_model": opts.cloud_model,
            "cloud_check_route": check_route is not None,
            "sent": report.sent, "received": report.received,
            "failback_s": round(back_s, 2), "failback_outage_ms": report2.outage_ms,
            "interface_recreated_ms": None if recreated_s is None else round(recreated_s * 1000, 1)}


def cmd_demo(lab: Lab, backend: str, routing: str) -> int:
    if routing == "policy":
        print("lab: the demo shows route mode; `vpnd lab up --routing policy` leaves a policy-mode "
              "lab running (docs/policy-mode.md)", file=sys.stderr)
        return 2
    if backend == "vm":
        from vpnd_lab import vm

        print("lab: this kernel lacks XFRM interfaces and ESP: running the demo on Debian's kernel "
              "in a QEMU guest (software emulation: timings are slow, compare ratios)", flush=True)
        import shlex

        vm.ensure_guest_kernel()
        # The guest inherits nothing: PYTHONPATH, PATH and a lab root on the guest's tmpfs
        # (unix sockets cannot live on its 9p root).
        env = dict(vm.project_env(), VPND_LAB_ROOT="/dev/shm/vpnd-lab", VPND_LAB_EMULATED="1")
        cmd = shlex.join(["python", "-m", "vpnd", "lab", "demo", "--backend", "native",
                          "--routing", routing, "--prefix", lab.prefix])
        result = vm.run_in_guest(cmd, timeout=900, env=env, cwd=vm.PROJECT_ROOT, stream=sys.stdout)
        if result.timed_out:
            print("lab: the guest did not finish in 900 s", file=sys.stderr)
        return result.returncode
    t0 = time.monotonic()
    try:
        figures = demo(lab, backend, routing)
        print(f"== done in {time.monotonic() - t0:.0f} s: " + json.dumps(figures), flush=True)
        return 0
    except LabError as err:
        print(f"lab: demo failed: {err}", file=sys.stderr, flush=True)
        tail = (lab.dir / "vpnd.log")
        if tail.exists():
            print("lab: last lines of vpnd's log:", file=sys.stderr)
            print("\n".join(tail.read_text().splitlines()[-15:]), file=sys.stderr)
        return 1
    finally:
        print("== tearing everything down", flush=True)
        lab.destroy()


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="vpnd lab", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status", "demo"])
    parser.add_argument("--backend", choices=["auto", "native", "vm", "libipsec"], default="auto")
    parser.add_argument("--prefix", default=None, help="namespace prefix of the lab (default: vpnd)")
    parser.add_argument("--routing", choices=["route", "policy", "bgp"], default="route")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`vpnd lab ARGS` (vpnd.cli hands the arguments after `lab` over unparsed)."""
    import os

    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print("lab: needs root (network namespaces, charon)", file=sys.stderr)
        return 1
    lab = Lab(prefix=args.prefix or "vpnd")
    try:
        if args.action == "down":
            return cmd_down(lab)
        if args.action == "status":
            return cmd_status(lab)
        backend = choose_backend(args.backend, args.action)
        if args.action == "up":
            return cmd_up(lab, backend, args.routing)
        return cmd_demo(lab, backend, args.routing)
    except (LabError, subprocess.TimeoutExpired) as err:
        print(f"lab: {err}", file=sys.stderr)
        if args.action == "up":
            lab.destroy()
        return 1

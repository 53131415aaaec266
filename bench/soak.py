"""Chaos soak: random faults from the fault matrix against one long-running vpnd in the lab,
with the invariants checked continuously. Not part of any default run.

    flock /tmp/vpnd-heavy.lock python bench/soak.py [--minutes 30] [--warmup 60] [--seed N]

Lab: libipsec backend, route mode, probes every 0.1 s x 3, dpd_delay 2 s, preempt_delay 2 s.
Faults (drawn at random, each held 1-6 s, then repaired; a pause of 2-8 s between faults):
black hole of one tunnel's data path, of both; a tunnel's peer unreachable (IKE and ESP); the
cloud deleting a tunnel's IKE SA; vpnd's active route deleted or replaced by someone; charon
(cgw) SIGKILLed and restarted; SIGHUP with the same file (a no-op reload) and with an invalid
file (rejected, then restored).

Invariants, checked every 0.25 s (a violation is recorded with its time and details):
- at most one active tunnel: at most one vpnd route with metric 100, and the metric
  vpnd_tunnel_active sums to at most 1;
- recovery: whenever a tunnel is healthy (during a one-tunnel fault, and after every repair)
  LAN->VPC answers again within --bound seconds (default 30: a deleted IKE SA re-negotiates,
  a killed charon restarts and vpnd's VICI backoff finds it);
- no switch without a cause: every connection.active_changed happens during a fault or
  within preempt_delay + hold_down + 10 s after one ended (the preempt back);
- no traceback in vpnd's log, vpnd alive throughout;
- no leaked process: after the lab is torn down nothing started from its directory runs;
- RSS growth of vpnd under 5 % from the end of the warm-up to the end (after one more
  warm-up-long settling the figures are also printed).

The last line printed is one JSON object: faults injected (total and by kind), the
violations, vpnd's RSS at the end of the warm-up and at the end, the switches seen and the
slowest recovery. Exit status 1 when any invariant was violated. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

from vpnd_lab import daemons, faults, scenario
from vpnd_lab.cli import both_established, vpnd_routes, wait_until
from vpnd_lab.topology import Lab, LabError

FAULTS = ("blackhole_one", "blackhole_both", "peer_unreachable", "ike_deleted", "route_deleted",
          "route_replaced", "charon_killed", "sighup_same", "sighup_invalid")
LAN_PREFIX = "192.168.0.0/16"


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def ts(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.lab = Lab(prefix=f"vs{uuid.uuid4().hex[:6]}")
        self.opts = scenario.Options(backend="libipsec", dpd_delay=2, preempt_delay=2.0)
        self.violations: list[dict] = []
        self.injected: dict[str, int] = {}
        self.windows: list[tuple[float, float]] = []     # wall-clock fault windows
        self.recoveries: list[float] = []
        self.vpnd_pid: int | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._log_pos = 0
        self._seen_tracebacks = 0

    # --- plumbing -------------------------------------------------------------------------

    def violate(self, kind: str, **detail) -> None:
        with self._lock:
            if sum(v["kind"] == kind for v in self.violations) < 20:     # keep the report short
                self.violations.append({"kind": kind, "at": round(time.time(), 3), **detail})
            print(f"VIOLATION {kind} {detail}", flush=True)

    @property
    def log(self) -> Path:
        return self.lab.dir / "vpnd.log"

    def events(self, name: str) -> list[dict]:
        out = []
        try:
            lines = self.log.read_text().splitlines()
        except OSError:
            return out
        for line in lines:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == name:
                out.append(e)
        return out

    def ping_ok(self) -> bool:
        r = self.lab.exec("lan", "ping", "-c", "1", "-W", "1", self.lab.plan.vpc_host, check=False)
        return r.returncode == 0

    def recovers(self, what: str) -> None:
        try:
            took = wait_until(what, self.ping_ok, self.args.bound, interval=0.1)
            self.recoveries.append(took)
        except LabError:
            self.violate("no_recovery", after=what, bound_s=self.args.bound)

    def active_tunnel(self) -> int:
        for line in vpnd_routes(self.lab):
            w = line.split()
            if "metric" in w and w[w.index("metric") + 1] == "100" and "dev" in w:
                return 0 if w[w.index("dev") + 1] == "vxlan1" else 1
        return 0

    # --- the invariant monitor -------------------------------------------------------------

    def monitor(self) -> None:
        last_scrape = 0.0
        while not self._stop.wait(0.25):
            try:
                active = [r for r in vpnd_routes(self.lab) if " metric 100" in f" {r} "]
                if len(active) > 1:
                    self.violate("two_active_routes", routes=active)
                if time.monotonic() - last_scrape > 2.0:
                    last_scrape = time.monotonic()
                    text = self.lab.exec("cgw", "curl", "-sf", "--max-time", "3",
                                         "http://127.0.0.1:9456/metrics", check=False).stdout
                    total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                if line.startswith("vpnd_tunnel_active{"))
                    if total > 1:
                        self.violate("two_active_metric", sum=total)
                if self.vpnd_pid is not None and not daemons._alive(self.vpnd_pid):
                    self.violate("vpnd_died", pid=self.vpnd_pid)
                    self.vpnd_pid = None
                self.check_log()
            except (OSError, LabError, ValueError) as e:
                print(f"monitor: {e}", flush=True)

    def check_log(self) -> None:
        try:
            with open(self.log, "rb") as f:
                f.seek(self._log_pos)
                chunk = f.read()
        except OSError:
            return
        cut = chunk.rfind(b"\n") + 1
        self._log_pos += cut
        for line in chunk[:cut].decode("utf-8", "replace").splitlines():
            if "Traceback" in line or '"exception"' in line or '"exc_info"' in line:
                self.violate("traceback", line=line[:300])

    def check_switches(self) -> int:
        grace = self.opts.preempt_delay + self.opts.hold_down + 10.0
        moved = [e for e in self.events("connection.active_changed")
                 if e.get("previous") is not None and e.get("active") != e.get("previous")]
        for e in moved:
            t = ts(e)
            if not any(start - 0.5 <= t <= end + grace for start, end in self.windows):
                self.violate("switch_without_cause", event={k: e.get(k) for k in
                                                            ("timestamp", "from", "to", "reason")})
        return len(moved)

    # --- faults ----------------------------------------------------------------------------

    def inject(self, kind: str) -> None:
        lab, hold = self.lab, self.rng.uniform(1.0, 6.0)
        self.injected[kind] = self.injected.get(kind, 0) + 1
        start = time.time()
        print(f"{datetime.now().strftime('%H:%M:%S')} fault {kind} (hold {hold:.1f} s)", flush=True)
        if kind == "blackhole_one":
            n = self.rng.choice((0, 1))
            faults.blackhole(lab, n, "libipsec")
            time.sleep(min(hold, 1.0))
            self.recovers(f"{kind} {n + 1}: traffic on the other tunnel")
            time.sleep(max(0.0, hold - 1.0))
            faults.repair(lab)
        elif kind == "blackhole_both":
            faults.blackhole(lab, 0, "libipsec")
            faults.blackhole(lab, 1, "libipsec")
            time.sleep(hold)
            faults.repair(lab)
        elif kind == "peer_unreachable":
            n = self.rng.choice((0, 1))
            faults.peer_unreachable(lab, n)
            time.sleep(min(hold, 1.0))
            self.recovers(f"{kind} {n + 1}: traffic on the other tunnel")
            time.sleep(max(0.0, hold - 1.0))
            faults.repair(lab)
        elif kind == "ike_deleted":
            faults.terminate_ike(lab, "vpc1", self.rng.choice(("tunnel1", "tunnel2")))
        elif kind in ("route_deleted", "route_replaced"):
            if kind == "route_deleted":
                lab.ip("cgw", "route", "del", LAN_PREFIX, "metric", "100", check=False)
            else:
                other = "vxlan2" if self.active_tunnel() == 0 else "vxlan1"
                lab.ip("cgw", "route", "replace", LAN_PREFIX, "dev", other, "metric", "100", check=False)
        elif kind == "charon_killed":
            daemons.stop(lab, "charon-cgw", sig=signal.SIGKILL)
            time.sleep(min(hold, 2.0))
            daemons.start_charon(lab, "cgw", libipsec=True)
        elif kind == "sighup_same":
            os.kill(self.vpnd_pid, signal.SIGHUP)
        elif kind == "sighup_invalid":
            path = lab.dir / "vpnd.toml"
            good = path.read_text()
            path.write_text(good.replace("retries = 3", "retries = 0"))
            os.kill(self.vpnd_pid, signal.SIGHUP)
            time.sleep(1.0)
            path.write_text(good)
            os.kill(self.vpnd_pid, signal.SIGHUP)
        self.windows.append((start, time.time()))
        # both tunnels healthy again: traffic must flow within the bound, and the SAs return
        self.recovers(f"{kind} repaired")
        try:
            wait_until("both tunnels up", lambda: both_established(lab), self.args.bound, interval=0.2)
        except LabError:
            self.violate("tunnels_not_back", after=kind, bound_s=self.args.bound)
        self.windows[-1] = (start, time.time())

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> dict:
        lab = self.lab
        scenario.up(lab, self.opts)
        self.vpnd_pid = daemons.start_vpnd(lab, lab.dir / "vpnd.toml")
        threading.Thread(target=self.monitor, daemon=True).start()
        wait_until("both tunnels up", lambda: both_established(lab), 60)
        wait_until("LAN->VPC", self.ping_ok, 30, interval=0.2)
        end = time.monotonic() + self.args.minutes * 60
        warm_until = time.monotonic() + min(self.args.warmup, self.args.minutes * 60 / 3)
        rss_start = None
        while time.monotonic() < end:
            if rss_start is None and time.monotonic() >= warm_until:
                rss_start = rss_kb(self.vpnd_pid) if self.vpnd_pid else None
                print(f"warm-up over: vpnd RSS {rss_start} kB", flush=True)
            self.inject(self.rng.choice(FAULTS))
            time.sleep(min(self.rng.uniform(2.0, 8.0), max(0.0, end - time.monotonic())))
        if rss_start is None:
            rss_start = rss_kb(self.vpnd_pid) if self.vpnd_pid else None
        rss_end = rss_kb(self.vpnd_pid) if self.vpnd_pid else None
        self._stop.set()
        switches = self.check_switches()
        self.check_log()
        growth = (100.0 * (rss_end - rss_start) / rss_start) if rss_start and rss_end else None
        if growth is not None and growth >= self.args.rss_limit:
            self.violate("rss_growth", percent=round(growth, 2), limit=self.args.rss_limit)
        return {"switches": switches, "rss_start_kb": rss_start, "rss_end_kb": rss_end,
                "rss_growth_percent": None if growth is None else round(growth, 2)}

    def leaked(self) -> list[str]:
        """Processes still running from the torn-down lab (its dir or namespaces)."""
        out = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(self.lab.dir) in cmd or self.lab.prefix + "-" in cmd:
                out.append(f"{pid}: {cmd[:200]}")
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS is taken")
    ap.add_argument("--bound", type=float, default=30.0, help="recovery bound, seconds")
    ap.add_argument("--rss-limit", type=float, default=5.0, help="RSS growth limit, percent")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    if os.geteuid() != 0:
        print("bench/soak.py needs root (the lab)", file=sys.stderr)
        return 2
    soak = Soak(args)
    t0 = time.monotonic()
    figures: dict = {}
    try:
        figures = soak.run()
    except (LabError, OSError, subprocess.SubprocessError) as e:
        soak.violate("lab_error", error=str(e))
    finally:
        soak._stop.set()
        try:
            soak.lab.destroy()
        except Exception as e:  # noqa: BLE001 - report, never hide the summary
            soak.violate("teardown_failed", error=str(e))
        time.sleep(0.5)
        leaked = soak.leaked()
        if leaked:
            soak.violate("leaked_process", processes=leaked[:10])
    summary = {
        "soak_minutes": round((time.monotonic() - t0) / 60, 2), "seed": args.seed,
        "faults_injected": sum(soak.injected.values()), "by_fault": soak.injected,
        "violations": len(soak.violations), "violation_details": soak.violations,
        "slowest_recovery_s": round(max(soak.recoveries), 2) if soak.recoveries else None,
        "recoveries_checked": len(soak.recoveries), **figures,
    }
    print(json.dumps(summary))
    return 1 if soak.violations else 0


if __name__ == "__main__":
    sys.exit(main())

"""Scale benchmark: one vpnd supervising many connections on one box.

vpnd runs as its own process (`vpnd run`, the real Daemon: charon adapter, supervisor, core,
one ICMP prober per tunnel, route controllers and link keepers with `interface_kind =
"existing"`) inside a scratch network namespace. Every tunnel is a veth pair named as the
config says, its far end in a second namespace that answers the health probes; charon is a
fake VICI server in this process (strongSwan's codec, lab/vpnd_testing/fake_charon.py) that brings SAs
up on `initiate` and can flap every tunnel at once. Probes run every second.

For each size (default 1, 10 and 50 connections = 2, 20, 100 tunnels) it measures vpnd's
CPU share (utime+stime from /proc/PID/stat) and memory (VmRSS, VmHWM from /proc/PID/status)
over a steady state, then during a storm in which every tunnel's CHILD SA goes down and
comes back every `--flap-period` seconds. Prints a table and a final JSON line.

    sudo .venv/bin/python bench/scale.py                       # 60 s steady + 20 s storm each
    sudo .venv/bin/python bench/scale.py --connections 50 --seconds 10 --storm-seconds 6

Targets (50 connections, steady state): under 5 % of one core, under 80 MB RSS. Needs root
(namespaces, raw ICMP socket).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from vpnd_testing.fake_charon import FakeCharon

CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_CPU_PERCENT = 5.0
TARGET_RSS_MB = 80.0


# --- the network: one veth pair per tunnel ----------------------------------------------------

@dataclass(frozen=True)
class TunnelSpec:
    connection: str
    tunnel: str
    interface: str          # vpnd's side, in the gateway namespace
    peer: str               # the far end, in the cloud namespace

    @property
    def sa_name(self) -> str:
        return f"vpnd-{self.connection}-{self.tunnel}"


@dataclass(frozen=True)
class ConnSpec:
    name: str
    index: int
    tunnels: tuple[TunnelSpec, TunnelSpec]

    @property
    def source(self) -> str:            # on-premises address vpnd probes from
        return f"172.16.{self.index}.1"

    @property
    def destination(self) -> str:       # VPC address that answers the probes
        return f"192.168.{self.index}.1"


def plan(n: int) -> list[ConnSpec]:
    if not 1 <= n <= 250:
        raise SystemExit("--connections: 1..250 per run (one /24 per connection)")
    out = []
    for j in range(n):
        name = f"c{j}"
        out.append(ConnSpec(name, j, tuple(
            TunnelSpec(name, f"tunnel{k}", f"sc{j}t{k}", f"sp{j}t{k}") for k in (1, 2))))
    return out


def sh(*args: str, stdin: str | None = None) -> None:
    subprocess.run(args, input=stdin, check=True, capture_output=True, text=True, timeout=60)


class Topology:
    """Gateway namespace (vpnd) and cloud namespace (probe answers), joined by veth pairs.

    The gateway holds each connection's probe source on lo; the cloud holds each probe
    destination on lo and answers ARP for it on every veth. vpnd itself installs the routes
    to the remote networks (metric 100/101 on the two tunnels), so its probes only leave
    once its route controller has done its job.
    """

    def __init__(self, conns: list[ConnSpec]) -> None:
        tag = uuid.uuid4().hex[:6]
        self.gw = f"sclgw-{tag}"
        self.cloud = f"sclcl-{tag}"
        self.conns = conns

    def __enter__(self) -> "Topology":
        sh("ip", "netns", "add", self.gw)
        sh("ip", "netns", "add", self.cloud)
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _build(self) -> None:
        # The two namespaces' names are only known to `ip`; create the pairs in the gateway
        # namespace and move each peer across, all in one `ip -batch` per namespace.
        gw, cloud = [], []
        for sysctl in ("all", "default"):
            sh("ip", "netns", "exec", self.gw, "sysctl", "-qw", f"net.ipv4.conf.{sysctl}.rp_filter=0")
            sh("ip", "netns", "exec", self.cloud, "sysctl", "-qw", f"net.ipv4.conf.{sysctl}.rp_filter=0")
        gw.append("link set lo up")
        cloud.append("link set lo up")
        for c in self.conns:
            gw.append(f"addr add {c.source}/32 dev lo")
            cloud.append(f"addr add {c.destination}/32 dev lo")
            for t in c.tunnels:
                gw.append(f"link add {t.interface} type veth peer name {t.peer}")
                gw.append(f"link set {t.peer} netns {self.cloud}")
                cloud.append(f"link set {t.peer} up")
            # Replies go back over tunnel 1's link; the prober takes a reply from any link.
            cloud.append(f"route add {c.source}/32 dev {c.tunnels[0].peer}")
        sh("ip", "-n", self.gw, "-batch", "-", stdin="\n".join(gw) + "\n")
        sh("ip", "-n", self.cloud, "-batch", "-", stdin="\n".join(cloud) + "\n")

    def __exit__(self, *exc: object) -> None:
        for ns in (self.gw, self.cloud):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=60)


# --- charon: SAs come up on initiate, flap on command -----------------------------------------

@dataclass
class SaState:
    ike_id: int
    child_id: int
    ike_up: bool = False
    child_up: bool = False
    blocked: bool = False           # storm: initiate is accepted but nothing comes up


class ScaleCharon(FakeCharon):
    """FakeCharon answering `initiate` / `terminate` as charon does with timeout -1: an
    immediate answer, then the up/down events on the event socket."""

    def __init__(self, path: str, tunnels: list[TunnelSpec]) -> None:
        super().__init__(path)
        self.state = {t.sa_name: SaState(ike_id=i + 1, child_id=1000 + i)
                      for i, t in enumerate(tunnels)}
        self.events_sent = 0

    # SA shapes as charon sends them (only the keys vpnd reads, plus a few realistic ones).
    def _ike(self, name: str, s: SaState, with_child: bool) -> dict:
        ike = {"uniqueid": str(s.ike_id), "version": "2",
               "state": "ESTABLISHED" if s.ike_up else "DELETING",
               "local-host": "198.18.0.2", "remote-host": "198.19.0.1", "initiator": "yes"}
        if with_child:
            ike["child-sas"] = {f"{name}-{s.child_id}": {
                "name": name, "uniqueid": str(s.child_id), "reqid": str(s.ike_id),
                "state": "INSTALLED", "mode": "TUNNEL", "protocol": "ESP",
                "local-ts": ["0.0.0.0/0"], "remote-ts": ["0.0.0.0/0"]}}
        return ike

    def _emit(self, kind: str, name: str, up: bool, with_child: bool) -> None:
        msg = {name: self._ike(name, self.state[name], with_child)}
        if up:
            msg["up"] = "yes"
        self.events_sent += self.emit(kind, msg)

    @property
    def sas(self) -> list[dict]:        # list-sas streams one event per IKE SA
        out = []
        for name, s in self.state.items():
            if s.ike_up:
                out.append({name: self._ike(name, s, s.child_up)})
        return out

    @sas.setter
    def sas(self, value: list[dict]) -> None:     # FakeCharon.__init__ assigns []
        pass

    def _cmd_initiate(self, conn, body):
        name = body.get("child", b"").decode()
        s = self.state.get(name)
        if s is not None and not s.blocked and not s.child_up:
            asyncio.get_running_loop().call_soon(self.bring_up, name)
        return {"success": "yes"}

    def _cmd_terminate(self, conn, body):
        name = body.get("ike", b"").decode()
        ike_id = body.get("ike-id", b"").decode()
        for n, s in self.state.items():
            if (n == name or str(s.ike_id) == ike_id) and s.ike_up:
                asyncio.get_running_loop().call_soon(self.take_down, n, True)
        return {"success": "yes", "matches": "1", "terminated": "1"}

    def bring_up(self, name: str) -> None:
        s = self.state[name]
        if not s.ike_up:
            s.ike_up = True
            self._emit("ike-updown", name, True, False)
        if not s.child_up:
            s.child_id += 10_000
            s.child_up = True
            self._emit("child-updown", name, True, True)

    def take_down(self, name: str, ike: bool = False) -> None:
        s = self.state[name]
        if s.child_up:
            self._emit("child-updown", name, False, True)
            s.child_up = False
        if ike and s.ike_up:
            self._emit("ike-updown", name, False, False)
            s.ike_up = False

    def storm_down(self) -> None:
        for name, s in self.state.items():
            s.blocked = True
            self.take_down(name)

    def storm_up(self) -> None:
        for name, s in self.state.items():
            s.blocked = False
            self.bring_up(name)

    @property
    def all_up(self) -> bool:
        return all(s.ike_up and s.child_up for s in self.state.values())


# --- the config vpnd runs --------------------------------------------------------------------

def config_text(conns: list[ConnSpec], vici: str, interval: float) -> str:
    # its own control socket beside the fake charon's: another vpnd on the machine keeps its own
    control = str(Path(vici).with_name("control.sock"))
    lines = ["[daemon]", 'log_format = "json"', 'log_level = "info"',
             'metrics_listen = "127.0.0.1:9456"', f'vici_socket = "{vici}"',
             f'control_socket = "{control}"', ""]
    for c in conns:
        lines += [
            "[[connection]]", f'name = "{c.name}"', 'routing = "route"',
            f'local_networks = ["172.16.{c.index}.0/24"]',
            f'remote_networks = ["192.168.{c.index}.0/24"]',
            "[connection.ike]", 'integrity = "sha256"', 'dh_group = "group14"',
            "[connection.ipsec]", 'integrity = "sha256"', 'pfs_group = "group14"',
            "[connection.health_check]", f'destination = "{c.destination}"',
            f'source = "{c.source}"', f"interval = {interval}", "retries = 3",
        ]
        for k, t in enumerate(c.tunnels, start=1):
            lines += [
                "[[connection.tunnel]]", f'name = "{t.tunnel}"', 'local_address = "198.18.0.2"',
                f'remote_address = "198.19.{c.index}.{k}"',
                f'psk = "bench-{c.name}-{t.tunnel}-secret"',
                f'interface = "{t.interface}"', 'interface_kind = "existing"',
                f"if_id = {100 + 2 * c.index + k}", f"route_metric = {99 + k}",
            ]
        lines.append("")
    return "\n".join(lines)


# --- measuring the process -------------------------------------------------------------------

def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` (fields 14 and 15 of /proc/PID/stat, after the comm field)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def memory_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    cpu_percent: float = 0.0            # of one core, over the whole phase
    cpu_peak_percent: float = 0.0       # the busiest one-second sample
    rss_mb: float = 0.0                 # at the end of the phase
    hwm_mb: float = 0.0                 # peak RSS since start (VmHWM), at the end of the phase
    probes_answered_per_s: float = 0.0  # echo replies the cloud namespace sent, per second
    transitions: int = 0                # tunnel.state_changed lines vpnd logged in the phase
    charon_events: int = 0              # VICI events the fake sent in the phase


async def measure(pid: int, seconds: float, phase: Phase, tick: float = 1.0) -> None:
    start_wall, start_cpu = time.monotonic(), cpu_ticks(pid)
    last_wall, last_cpu = start_wall, start_cpu
    end = start_wall + seconds
    while (now := time.monotonic()) < end:
        await asyncio.sleep(min(tick, end - now))
        wall, cpu = time.monotonic(), cpu_ticks(pid)
        if wall - last_wall >= 0.5 * tick:
            share = (cpu - last_cpu) / CLK_TCK / (wall - last_wall) * 100
            phase.cpu_peak_percent = max(phase.cpu_peak_percent, share)
            last_wall, last_cpu = wall, cpu
    wall, cpu = time.monotonic(), cpu_ticks(pid)
    phase.seconds = wall - start_wall
    phase.cpu_percent = (cpu - start_cpu) / CLK_TCK / phase.seconds * 100
    mem = memory_kb(pid)
    phase.rss_mb = mem["VmRSS"] / 1024
    phase.hwm_mb = mem["VmHWM"] / 1024


def echo_replies(ns: str) -> int:
    """Icmp OutEchoReps of a namespace: how many probes the far ends really answered."""
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], check=True,
                          capture_output=True, text=True, timeout=10).stdout
    names, values = [l.split()[1:] for l in text.splitlines() if l.startswith("Icmp:")][:2]
    return int(values[names.index("OutEchoReps")])


class LogTail:
    """vpnd's JSON log (its stderr), read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []

    def poll(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for raw in data[:end].splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                self.errors.append(raw.decode(errors="replace"))   # a traceback, say
                continue
            ev = line.get("event", "?")
            self.counts[ev] = self.counts.get(ev, 0) + 1
            if line.get("level") in ("error", "critical") or "exception" in line:
                self.errors.append(raw.decode(errors="replace"))

    def count(self, event: str) -> int:
        self.poll()
        return self.counts.get(event, 0)


# --- one run -----------------------------------------------------------------------------------

@dataclass
class Result:
    connections: int
    tunnels: int
    startup_s: float = 0.0
    steady: Phase = field(default_factory=lambda: Phase("steady"))
    storm: Phase = field(default_factory=lambda: Phase("storm"))
    log_errors: int = 0
    probe_failures: int = 0


async def until(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise RuntimeError(f"vpnd exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


async def run_size(n: int, args: argparse.Namespace) -> Result:
    conns = plan(n)
    tunnels = [t for c in conns for t in c.tunnels]
    res = Result(n, len(tunnels))
    work = Path(tempfile.mkdtemp(prefix="vpnd-scale-", dir="/tmp"))
    proc: subprocess.Popen | None = None
    charon = ScaleCharon(str(work / "charon.vici"), tunnels)
    try:
        with Topology(conns) as topo:
            await charon.start()
            cfg = work / "config.toml"
            cfg.write_text(config_text(conns, charon.path, args.interval))
            cfg.chmod(0o600)
            log_path = work / "vpnd.log"
            t0 = time.monotonic()
            with log_path.open("wb") as log_file:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", topo.gw, sys.executable,
                     *(["-m", "cProfile", "-o", f"{args.profile}.{n}"] if args.profile else []),
                     "-m", "vpnd", "run", "-c", str(cfg)],
                    cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)})
            tail = LogTail(log_path)
            # Started: every SA up and every connection's routes on its active tunnel.
            await until(lambda: charon.all_up, 30, "all SAs up", proc)
            await until(lambda: tail.count("connection.active_changed") >= n, 30,
                        "an active tunnel on every connection", proc)
            res.startup_s = time.monotonic() - t0
            await asyncio.sleep(args.warmup)
            failed_before = tail.count("probe.send_failed")

            for phase, storm in ((res.steady, None), (res.storm, flap)):
                before = (tail.count("tunnel.state_changed"), charon.events_sent,
                          echo_replies(topo.cloud))
                seconds = args.seconds if storm is None else args.storm_seconds
                task = storm and asyncio.create_task(storm(charon, seconds, args.flap_period))
                await measure(proc.pid, seconds, phase)
                if task:
                    await task
                phase.transitions = tail.count("tunnel.state_changed") - before[0]
                phase.charon_events = charon.events_sent - before[1]
                phase.probes_answered_per_s = (echo_replies(topo.cloud) - before[2]) / phase.seconds
            res.probe_failures = tail.count("probe.send_failed") - failed_before

            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            tail.poll()
            res.log_errors = len(tail.errors)
            if tail.errors and not args.quiet:
                for line in tail.errors[:5]:
                    print(f"  vpnd ({n} conn): {line[:300]}", file=sys.stderr)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        await charon.stop()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return res


async def flap(charon: ScaleCharon, seconds: float, period: float) -> None:
    """Every tunnel's CHILD SA down, half a period later all up again; repeat."""
    end = time.monotonic() + seconds
    while time.monotonic() + period / 2 <= end:
        charon.storm_down()
        await asyncio.sleep(period / 2)
        charon.storm_up()
        await asyncio.sleep(period / 2)


# --- output --------------------------------------------------------------------------------------

def table(results: list[Result]) -> str:
    head = (f"{'conns':>5} {'tunnels':>7} {'start s':>7} | {'steady cpu%':>11} {'peak%':>6} "
            f"{'rss MB':>7} {'hwm MB':>7} | {'storm cpu%':>10} {'peak%':>6} {'hwm MB':>7} "
            f"{'events':>7} {'trans':>6} {'probes/s':>8}")
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.connections:>5} {r.tunnels:>7} {r.startup_s:>7.2f} | "
            f"{r.steady.cpu_percent:>11.2f} {r.steady.cpu_peak_percent:>6.1f} "
            f"{r.steady.rss_mb:>7.1f} {r.steady.hwm_mb:>7.1f} | "
            f"{r.storm.cpu_percent:>10.2f} {r.storm.cpu_peak_percent:>6.1f} "
            f"{r.storm.hwm_mb:>7.1f} {r.storm.charon_events:>7} {r.storm.transitions:>6} "
            f"{r.steady.probes_answered_per_s:>8.1f}")
    return "\n".join(rows)


def as_json(results: list[Result], args: argparse.Namespace) -> dict:
    def phase(p: Phase) -> dict:
        return {"seconds": round(p.seconds, 2), "cpu_percent": round(p.cpu_percent, 2),
                "cpu_peak_percent": round(p.cpu_peak_percent, 1), "rss_mb": round(p.rss_mb, 1),
                "hwm_mb": round(p.hwm_mb, 1), "transitions": p.transitions,
                "probes_answered_per_s": round(p.probes_answered_per_s, 1),
                "charon_events": p.charon_events}
    biggest = max(results, key=lambda r: r.connections)
    ok = (biggest.steady.cpu_percent < TARGET_CPU_PERCENT and biggest.steady.hwm_mb < TARGET_RSS_MB
          and all(r.log_errors == 0 for r in results))
    return {"bench": "scale", "probe_interval_s": args.interval, "flap_period_s": args.flap_period,
            "runs": [{"connections": r.connections, "tunnels": r.tunnels,
                      "startup_s": round(r.startup_s, 2), "steady": phase(r.steady),
                      "storm": phase(r.storm), "log_errors": r.log_errors,
                      "probe_send_failures": r.probe_failures,
                      # every flap the fake sent was handled before the storm ended
                      "kept_up": r.storm.transitions >= r.storm.charon_events}
                     for r in results],
            "target": {"connections": biggest.connections, "cpu_percent": TARGET_CPU_PERCENT,
                       "rss_mb": TARGET_RSS_MB},
            "ok": ok, "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", default="1,10,50",
                   help="comma-separated sizes, each run separately (default 1,10,50)")
    p.add_argument("--seconds", type=float, default=60.0, help="steady-state sample (default 60)")
    p.add_argument("--storm-seconds", type=float, default=20.0, help="flap storm (default 20)")
    p.add_argument("--flap-period", type=float, default=2.0,
                   help="every tunnel down then up once per period (default 2 s)")
    p.add_argument("--interval", type=float, default=1.0, help="probe interval (default 1 s)")
    p.add_argument("--warmup", type=float, default=3.0, help="settle time before sampling")
    p.add_argument("--keep", action="store_true", help="keep the work directory (config, log)")
    p.add_argument("--profile", metavar="PREFIX",
                   help="run vpnd under cProfile, stats to PREFIX.<connections>")
    p.add_argument("--quiet", action="store_true", help="only the JSON line")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("scale.py needs root: network namespaces and vpnd's raw ICMP socket", file=sys.stderr)
        return 2
    sizes = [int(x) for x in args.connections.split(",") if x]
    results = []
    for n in sizes:
        if not args.quiet:
            print(f"{n} connection(s): steady {args.seconds:g} s, storm {args.storm_seconds:g} s ...",
                  file=sys.stderr, flush=True)
        results.append(asyncio.run(run_size(n, args)))
    if not args.quiet:
        print(table(results))
    out = as_json(results, args)
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

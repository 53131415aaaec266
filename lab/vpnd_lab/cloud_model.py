"""The lab's cloud as the vendor's: it chooses its own sending tunnel.

Two models of the simulated cloud (`scenario.Options.cloud_model`):

- ``per-flow`` (the lab's original): the cloud answers on the tunnel each packet of a flow
  arrived on (conntrack marks -> per-tunnel tables), so when vpnd moves a flow the replies
  follow it at once. Kind to vpnd; not what the vendor's cloud does.
- ``vendor``: modelled on the vendor documents (its IPsec-VPN, health-check and strongSwan documents). The cloud
  sends everything for the data centre on ONE tunnel of its choosing, whatever tunnel the
  traffic came in on:
  * tunnel 1 while it is healthy;
  * tunnel 2 when tunnel 1 fails the cloud's health check (the vendor's health-check documentation: ICMP from the cloud-side
    source IP to the destination IP in the data centre, through the connection, every
    `interval` s, failed after `retries` probes in a row; with "switch route" the failing
    route is withdrawn; off by default, as in the console), when tunnel 1's SAs are gone
    (the cloud's DPD, the vendor's IPsec-VPN documentation: "the DPD packet timeout is 30 seconds", then the SAs are
    deleted), or when the cloud moves on its own (the vendor's strongSwan guide: "Alibaba Cloud may proactively
    switch traffic to the standby tunnel": `switch_proactively`);
  * back to tunnel 1 as soon as tunnel 1 answers its health check again (automatic failback);
  * in BGP mode by its BGP best path: the cloud's FRR (the vendor's strongSwan guide's `maximum-paths 32`, the
    configured timers) owns the routes and keeps tunnel 1 until that session's hold timer
    expires or the route is withdrawn or outpreferred. The controller only watches there.

The replies to the cloud's health check come back through whichever tunnel the customer
gateway routes them (cgw's kernel answers the ICMP echo and routes it by vpnd's routes): a
probe counts as answered whatever tunnel its reply arrived on, as with any ICMP ping. So
while cgw routes the VPC into a dead tunnel 1, the check of tunnel 2 fails too; the cloud
still moves to tunnel 2 then: the last route is never withdrawn (a cloud that withdrew
every route would cut the connection; the issue-13 measurement on the real cloud saw it move). Which tunnel each reply came in on
is logged, as evidence.

The controller is a process in the cloud namespace (`python -m vpnd_lab.cloud_model run DIR`)
started, recorded and torn down by pid like the lab's charons and FRR, not threads in the
lab runner: only a process can live in the cloud's network namespace for its raw socket and
route changes, it outlives the runner for `vpnd lab up`, and a crashed test leaves nothing a
pid-based `lab down` cannot end. Its decisions are the pure functions below
(`observe`, `choose`), tested without a lab.

Controller files in the lab dir: `cloud-model.json` (settings), `cloud-model.log` (JSON lines:
`cloud.sending` moves with their reason, `cloud.check` per-tunnel health changes,
`cloud.reply` first reply after a change with the tunnel it came in on), `cloud-force.json`
(the proactive-switch fault).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from vpnd_lab.topology import Lab, LabError

MODELS = ("vendor", "per-flow")
VENDOR_DPD_TIMEOUT = 30.0           # the vendor's IPsec-VPN and health-check documentation: "the DPD packet timeout is 30 seconds"
FALLBACK_TABLE = 150                # BGP mode: tunnel 1's static route, after main
TICK = 0.02                         # controller's loop; SA state is polled every 5 ticks


# --- settings --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CloudCheck:
    """The cloud's health check as entered in the console (the vendor's health-check documentation)."""

    source: str                     # an address on the cloud side (the VPC)
    destination: str                # an address in the data centre
    interval: float = 3.0           # "Retry Interval", default 3 s
    retries: int = 3                # "Number of Retries", default 3
    switch_route: bool = True       # "Switch Route", default yes

    @property
    def budget_ms(self) -> float:
        return round(self.interval * self.retries * 1000, 1)


@dataclass(frozen=True)
class Settings:
    """What the controller needs: the model, the check, the routes it may move."""

    model: str = "vendor"
    routing: str = "route"
    lan_net: str = "172.16.0.0/16"
    devices: tuple[str, ...] = ("vxlan1", "vxlan2")
    vias: tuple[str | None, ...] = (None, None)          # next hop per tunnel (libipsec)
    conns: tuple[str, ...] = ()                           # the cloud charon's conn per tunnel
    vici: str = ""
    check: CloudCheck | None = None
    marks: tuple[int, ...] = (1, 2)                       # fwmark -> per-tunnel table

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        d = json.loads(text)
        c = d.pop("check", None)
        check = CloudCheck(**c) if c else None
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}, check=check)


def budget_ms(routing: str, model: str, check: CloudCheck | None, *, fault: str = "blackhole",
              hold: float | None = None, dpd_delay: float = 10, dpd_timeout: float = VENDOR_DPD_TIMEOUT
              ) -> float | None:
    """The cloud's own detection budget for a fault on tunnel 1: how long the vendor's cloud
    may keep sending into it. per-flow: 0 (it follows the LAN's traffic at once). BGP: the
    hold time. Route mode: the health check's interval x retries; without one, DPD's
    (delay + timeout) if the fault stops IKE too, else None (the cloud never moves)."""
    if model == "per-flow":
        return 0.0
    if routing == "bgp":
        return None if hold is None else round(hold * 1000, 1)
    if check is not None and check.switch_route:
        return check.budget_ms
    if fault == "unreachable":
        return round((dpd_delay + dpd_timeout) * 1000, 1)
    return None


# --- the pure decision -------------------------------------------------------------------------

@dataclass(frozen=True)
class TunnelView:
    """What the cloud knows of one tunnel."""

    sa_up: bool = True
    lost_in_row: int = 0
    healthy: bool = True            # passes the cloud's health check


def observe(view: TunnelView, answered: bool, retries: int) -> TunnelView:
    """One health-check probe's outcome: `retries` lost in a row fail the tunnel, one answer
    passes it again (the cloud's automatic failback)."""
    if answered:
        return replace(view, lost_in_row=0, healthy=True)
    lost = view.lost_in_row + 1
    return replace(view, lost_in_row=lost, healthy=view.healthy and lost < retries)


def choose(views: tuple[TunnelView, ...], *, switch_route: bool = True, forced: int | None = None
           ) -> tuple[int | None, str]:
    """The tunnel the cloud sends on, and why. Preference order is the tunnels' order; a
    tunnel without SAs cannot carry; a tunnel failing the check is withdrawn (switch_route).
    When no tunnel with SAs passes, the last one in preference order (the standby) keeps its
    route: the cloud has withdrawn the preferred route that failed and does not cut the
    connection (while cgw routes the VPC into a dead tunnel 1, the standby's check fails
    too; the real cloud moved then, issue 13). `forced`: the cloud's own move, kept while
    that tunnel has SAs."""
    up = [i for i, v in enumerate(views) if v.sa_up]
    if forced is not None and forced in up:
        return forced, "the cloud switched proactively"
    if not up:
        return None, "no tunnel has SAs"
    if not switch_route:
        first = up[0]
        return first, "preferred tunnel" if first == 0 else f"tunnel {first + 1}: tunnel 1's SAs are gone"
    healthy = [i for i in up if views[i].healthy]
    pick = healthy[0] if healthy else up[-1]
    if pick == 0:
        return 0, "preferred tunnel"
    why = [f"tunnel {i + 1}: " + ("SAs gone" if not views[i].sa_up else "failed the health check")
           for i in range(pick)]
    if not healthy:
        why.append(f"tunnel {pick + 1} fails it too and keeps the last route")
    return pick, "; ".join(why)


# --- the lab side: set up, start, read --------------------------------------------------------

def settings_path(lab: Lab) -> Path:
    return lab.dir / "cloud-model.json"


def log_path(lab: Lab) -> Path:
    return lab.dir / "cloud-model.log"


def force_path(lab: Lab) -> Path:
    return lab.dir / "cloud-force.json"


def setup(lab: Lab, settings: Settings) -> None:
    """Turn the per-flow cloud that scenario.build_overlay made into the vendor's, and start
    the controller. Route modes: no per-flow marks any more (the `pre` chain keeps only the
    `steer` jump), one route to the data centre (the controller's). BGP mode: the cloud's FRR
    owns the routes in main; tunnel 1's static route moves to a table looked up after main
    (the console's destination-based route, below BGP)."""
    if settings.model != "vendor":
        return
    rules = lab.dir / "nft-cloud-vendor.conf"
    rules.write_text("flush chain ip vpndlab pre\nadd rule ip vpndlab pre meta mark set ct mark\n"
                     "add rule ip vpndlab pre jump steer\n")
    lab.exec("cloud", "nft", "-f", str(rules))
    for i, dev in enumerate(settings.devices):
        lab.ip("cloud", "route", "del", settings.lan_net, "dev", dev, "metric", str(100 + i), check=False)
    if settings.routing != "bgp":
        _route(lab.ns("cloud"), settings, 0)
    else:
        # The console's destination-based route on tunnel 1, below BGP: in a table looked up
        # after main (zebra would prefer a kernel route in main to BGP's). Without any route
        # to the data centre before BGP is up, vpnd's probes (172.16.0.1 -> the VPC) go
        # unanswered, and vpnd keeps its neighbors shut until they pass.
        via = settings.vias[0]
        lab.ip("cloud", "route", "add", settings.lan_net, *(["via", via] if via else []),
               "dev", settings.devices[0], "table", str(FALLBACK_TABLE))
        lab.ip("cloud", "rule", "add", "priority", "40000", "lookup", str(FALLBACK_TABLE))
    settings_path(lab).write_text(settings.to_json())
    log_path(lab).write_text("")
    start(lab)


def start(lab: Lab, timeout: float = 10.0) -> int:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = open(lab.dir / "cloud-model.out", "ab")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("cloud"), sys.executable, "-m", "vpnd_lab.cloud_model", "run",
         str(lab.dir)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        start_new_session=True)
    deadline = time.monotonic() + timeout
    while not any(e.get("event") == "cloud.started" for e in events(lab)):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"the cloud's controller did not start: see {lab.dir / 'cloud-model.out'}")
        time.sleep(0.01)
    # as start_vpnd: recorded under the command line it runs as (`ip netns exec` has exec'd
    # python by now), so a later teardown kills only this pid
    lab.record("cloud-model", proc.pid)
    return proc.pid


def events(lab: Lab, name: str | None = None) -> list[dict]:
    try:
        lines = log_path(lab).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if name is None or e.get("event") == name:
            out.append(e)
    return out


def sending(lab: Lab) -> int | None:
    """The tunnel (0-based) the cloud last said it sends on, None before the first word."""
    moves = events(lab, "cloud.sending")
    return moves[-1]["tunnel"] if moves else None


def switch_proactively(lab: Lab, tunnel: int | None) -> None:
    """The fault "the cloud switches proactively" (the vendor's strongSwan guide): it sends on `tunnel` (0-based)
    while that tunnel has SAs, whatever its health check says; None: its own rules again."""
    tmp = force_path(lab).with_suffix(".tmp")
    tmp.write_text(json.dumps({"tunnel": tunnel}))
    tmp.replace(force_path(lab))


# --- the controller (runs inside the cloud namespace) -----------------------------------------

def _route(ns: str | None, settings: Settings, tunnel: int) -> None:
    via = settings.vias[tunnel]
    args = ["ip"] + (["-n", ns] if ns else []) + ["route", "replace", settings.lan_net]
    args += (["via", via] if via else []) + ["dev", settings.devices[tunnel], "metric", "100"]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        raise LabError(f"{' '.join(args)}: {r.stderr.strip()}")


class _Log:
    def __init__(self, path: Path) -> None:
        self.f = open(path, "a", buffering=1)

    def __call__(self, event: str, **fields) -> None:
        self.f.write(json.dumps({"event": event, "t": round(time.time(), 4), **fields}) + "\n")


def _sa_state(vici_path: str, conns: tuple[str, ...]) -> tuple[bool, ...] | None:
    """Per tunnel: does the cloud's charon have an ESTABLISHED IKE SA with an INSTALLED CHILD
    SA for it? None if charon cannot be asked (keep the last answer then)."""
    import vici

    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    try:
        s.connect(vici_path)
        up = set()
        for sa in vici.Session(s).list_sas():
            for name, ike in sa.items():
                if ike.get("state") == b"ESTABLISHED" and any(
                        c.get("state") == b"INSTALLED" for c in ike.get("child-sas", {}).values()):
                    up.add(name)
        return tuple(c in up for c in conns)
    except (OSError, Exception):            # noqa: BLE001 - charon restarting: no new evidence
        return None
    finally:
        s.close()


def _echo(ident: int, seq: int) -> bytes:
    from vpnd.probe import echo_request
    return echo_request(ident, seq, b"cloud-health-check")


def run(lab_dir: Path) -> int:
    """The controller's loop: probe each tunnel on the check's schedule, poll the SAs, apply
    `choose`, move the route, log every change."""
    settings = Settings.from_json((lab_dir / "cloud-model.json").read_text())
    log = _Log(lab_dir / "cloud-model.log")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    n = len(settings.devices)
    views = tuple(TunnelView() for _ in range(n))
    check = settings.check
    sock = None
    if check is not None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        sock.bind((check.source, 0))
        sock.setsockopt(socket.IPPROTO_IP, 8, 1)           # IP_PKTINFO: the arrival interface
        sock.setblocking(False)
    ifnames = {socket.if_nametoindex(d): i for i, d in enumerate(settings.devices)
               if os.path.exists(f"/sys/class/net/{d}")}
    ident = os.getpid() & 0xFFFF
    seq = 0
    outstanding: dict[int, tuple[int, float]] = {}         # seq -> (tunnel, sent)
    next_probe = time.monotonic()
    current: int | None = None if settings.routing == "bgp" else 0
    forced = None
    force_mtime = 0.0
    tick = 0
    log("cloud.started", model=settings.model, routing=settings.routing,
        check=None if check is None else asdict(check))
    if current is not None:
        log("cloud.sending", tunnel=0, reason="start: preferred tunnel")
    observed_bgp: tuple[str, ...] = ()
    while not stop:
        now = time.monotonic()
        changed = False
        # health check: answers, then timeouts, then new probes
        if sock is not None:
            while True:
                try:
                    data, anc, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(12))
                except BlockingIOError:
                    break
                ihl = (data[0] & 0x0F) * 4
                if len(data) < ihl + 8 or data[ihl] != 0:
                    continue
                rid, rseq = struct.unpack("!HH", data[ihl + 4:ihl + 8])
                if rid != ident or rseq not in outstanding:
                    continue
                tunnel, _sent = outstanding.pop(rseq)
                came = None
                for level, kind, blob in anc:
                    if level == socket.IPPROTO_IP and kind == 8 and len(blob) >= 4:
                        came = ifnames.get(struct.unpack("=i", blob[:4])[0])
                before = views[tunnel]
                views = views[:tunnel] + (observe(before, True, check.retries),) + views[tunnel + 1:]
                if not before.healthy or before.lost_in_row:
                    log("cloud.reply", tunnel=tunnel, arrived_on=came, after_lost=before.lost_in_row)
                if not before.healthy:
                    log("cloud.check", tunnel=tunnel, healthy=True)
                    changed = True
            for s, (tunnel, sent) in list(outstanding.items()):
                if now - sent >= check.interval:
                    del outstanding[s]
                    before = views[tunnel]
                    after = observe(before, False, check.retries)
                    views = views[:tunnel] + (after,) + views[tunnel + 1:]
                    if before.healthy and not after.healthy:
                        log("cloud.check", tunnel=tunnel, healthy=False, lost=after.lost_in_row)
                        changed = True
            if now >= next_probe:
                for tunnel in range(n):
                    if not views[tunnel].sa_up:
                        continue                    # no SA: DPD's business, not the check's
                    seq = (seq + 1) & 0xFFFF
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, settings.marks[tunnel])
                        sock.sendto(_echo(ident, seq), (check.destination, 0))
                    except OSError:
                        pass                        # a lost probe: no route, no SA
                    outstanding[seq] = (tunnel, now)
                next_probe += check.interval
                if next_probe < now:
                    next_probe = now + check.interval
        # SAs, every 5 ticks
        if tick % 5 == 0 and settings.conns:
            sa = _sa_state(settings.vici, settings.conns)
            if sa is not None:
                for i, s in enumerate(sa):
                    if views[i].sa_up != s:
                        log("cloud.sa", tunnel=i, up=s)
                        # a new SA starts with a clean health record
                        fresh = TunnelView() if s else replace(views[i], sa_up=False)
                        views = views[:i] + (fresh,) + views[i + 1:]
                        outstanding = {k: v for k, v in outstanding.items() if v[0] != i}
                        changed = True
        # the proactive-switch fault
        try:
            mtime = os.stat(lab_dir / "cloud-force.json").st_mtime
            if mtime != force_mtime:
                force_mtime = mtime
                forced = json.loads((lab_dir / "cloud-force.json").read_text()).get("tunnel")
                log("cloud.forced", tunnel=forced)
                changed = True
        except (OSError, ValueError):
            pass
        if settings.routing == "bgp":
            if tick % 5 == 0:
                devs = _bgp_devices(settings)
                if devs != observed_bgp:
                    observed_bgp = devs
                    log("cloud.sending", tunnel=[settings.devices.index(d) for d in devs
                                                  if d in settings.devices] or None,
                        reason="BGP best path(s) of the cloud's FRR", devices=list(devs))
        elif changed or forced is not None:
            pick, why = choose(views, switch_route=check is None or check.switch_route, forced=forced)
            if pick is not None and pick != current:
                try:
                    _route(None, settings, pick)
                    current = pick
                    log("cloud.sending", tunnel=pick, reason=why)
                except LabError as err:
                    log("cloud.route_failed", error=str(err))
        tick += 1
        if sock is not None:
            select.select([sock], [], [], TICK)
        else:
            time.sleep(TICK)
    log("cloud.stopped")
    return 0


def _bgp_devices(settings: Settings) -> tuple[str, ...]:
    """The devices of the cloud's kernel route(s) to the data centre (zebra's, ECMP too)."""
    r = subprocess.run(["ip", "-o", "route", "show", settings.lan_net], capture_output=True, text=True)
    devs = []
    w = r.stdout.split()
    for i, word in enumerate(w):
        if word == "dev" and i + 1 < len(w) and w[i + 1] not in devs:
            devs.append(w[i + 1])
    return tuple(devs)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        raise SystemExit(run(Path(sys.argv[2])))
    print("usage: python -m vpnd_lab.cloud_model run LAB_DIR", file=sys.stderr)
    raise SystemExit(2)

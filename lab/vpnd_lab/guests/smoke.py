"""Smoke test of the route-based dual tunnel, run inside the vm backend's guest.

Proves what the host kernel cannot: two charons (kernel-netlink, real kernel ESP) bring up
the vendor strongSwan guide's dual tunnel on XFRM interfaces ipsec0/ipsec1 (if_id 42/43), both inner peer
addresses answer through their own interface, and the LAN->VPC route with the lower metric
(100 vs 101) really picks the tunnel. Run: ``python -m vpnd_lab.guests.smoke [--json FILE]``.

It needs no other vpnd code, so the vm backend can be proven independently of the lab.
The last output line is ``SMOKE-RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

CHARON = "/usr/lib/ipsec/charon"
CGW_WAN = "198.18.0.2"
CLOUD_WAN = ("198.18.0.1", "198.18.0.11")          # the cloud's two IPsec addresses
TUNNELS = (  # name, cloud address, if_id, inner cgw/cloud (vendor-style 169.254.x.x/30), metric
    ("t1", CLOUD_WAN[0], 42, "169.254.10.2", "169.254.10.1", 100),
    ("t2", CLOUD_WAN[1], 43, "169.254.20.2", "169.254.20.1", 101),
)
LAN_HOST, LAN_NET = "10.10.0.1", "10.10.0.0/16"
VPC_HOST, VPC_NET = "172.16.0.1", "172.16.0.0/16"
PROPOSAL = "aes128-sha256-modp2048"
# TCG emulation is slow and shares 2 host cores with other work: generous, bounded waits.
WAIT_SECONDS = 30.0

T = TypeVar("T")


class SmokeFailure(RuntimeError):
    pass


@dataclass
class Report:
    steps: dict[str, float] = field(default_factory=dict)   # step -> seconds
    checks: dict[str, bool] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(self.checks.values())

    def check(self, name: str, passed: bool, detail: str = "") -> None:
        self.checks[name] = passed
        print(f"smoke: check {name}: {'ok' if passed else 'FAILED'} {detail}".rstrip(), flush=True)
        if not passed:
            raise SmokeFailure(f"{name} {detail}".strip())

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.steps[name] = round(time.monotonic() - started, 3)
        print(f"smoke: step {name}: {self.steps[name]:.2f} s", flush=True)


def sh(*argv: str, ns: str | None = None) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    proc = subprocess.run(full, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SmokeFailure(f"`{' '.join(full)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def poll(what: str, probe: Callable[[], T | None], timeout: float = WAIT_SECONDS) -> T:
    """Bounded poll: the probe's first truthy answer, or a failure naming what never came."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise SmokeFailure(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def load_kernel_modules() -> list[str]:
    """XFRM interfaces and ESP are modules in Debian's kernel (built in elsewhere is fine)."""
    wanted = ["xfrm_user", "xfrm_interface", "esp4", "veth"]
    missing = []
    for mod in wanted:
        if subprocess.run(["modprobe", mod], capture_output=True).returncode != 0 \
                and not Path(f"/sys/module/{mod}").exists():
            missing.append(mod)
    return missing


class Charon:
    """One charon in its own netns and mount namespace (the pid file path is fixed), with
    its VICI socket and run dir on tmpfs: unix sockets cannot live on the guest's 9p root."""

    def __init__(self, ns: str, home: Path) -> None:
        self.ns, self.home = ns, home
        (home / "run").mkdir(parents=True)
        self.vici = home / "charon.vici"
        self.log = home / "charon.log"
        conf = home / "strongswan.conf"
        conf.write_text(f"""charon {{
  load_modular = yes
  install_routes = no
  plugins {{
    include /etc/strongswan.d/charon/*.conf
    kernel-libipsec {{
      load = no
    }}
    vici {{
      socket = unix://{self.vici}
    }}
  }}
  filelog {{
    smoke {{
      path = {self.log}
      default = 1
    }}
  }}
}}
""")
        script = f"mount --bind {home}/run /run && exec {CHARON}"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private",
             "sh", "-c", script],
            env={**os.environ, "STRONGSWAN_CONF": str(conf)},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def session(self):
        import vici

        def connect():
            if self.proc.poll() is not None:
                raise SmokeFailure(f"charon in {self.ns} exited {self.proc.returncode}")
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(str(self.vici))
            except OSError:
                s.close()
                return None
            return s
        return vici.Session(poll(f"charon's VICI socket in {self.ns}", connect))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def swanctl_conf(side: str, psks: dict[str, str]) -> str:
    """the vendor strongSwan guide's dual tunnel: one IKE SA per cloud address, each child bound to its if_id."""
    conns, secrets_ = [], []
    for name, cloud, if_id, *_ in TUNNELS:
        local, remote = (CGW_WAN, cloud) if side == "cgw" else (cloud, CGW_WAN)
        conns.append(f"""  {name} {{
    version = 2
    local_addrs = {local}
    remote_addrs = {remote}
    proposals = {PROPOSAL}
    dpd_delay = 10s
    local {{
      auth = psk
      id = {local}
    }}
    remote {{
      auth = psk
      id = {remote}
    }}
    children {{
      {name} {{
        local_ts = 0.0.0.0/0
        remote_ts = 0.0.0.0/0
        if_id_in = {if_id}
        if_id_out = {if_id}
        esp_proposals = {PROPOSAL}
        mode = tunnel
        start_action = none
      }}
    }}
  }}""")
        secrets_.append(f"""  ike-{name} {{
    id-local = {local}
    id-remote = {remote}
    secret = "{psks[name]}"
  }}""")
    return "connections {\n" + "\n".join(conns) + "\n}\nsecrets {\n" + "\n".join(secrets_) + "\n}\n"


def ip_batch(lines: list[str], ns: str | None = None) -> None:
    """Many `ip` commands in one process: each process start costs ~0.1 s under TCG."""
    argv = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if proc.returncode != 0:
        raise SmokeFailure(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")


def build_topology(stack: ExitStack, prefix: str) -> tuple[str, str]:
    """cgw and cloud namespaces joined by one veth "WAN"; XFRM interfaces on both sides."""
    cgw, cloud = f"{prefix}-cgw", f"{prefix}-cloud"
    for ns in (cgw, cloud):
        sh("ip", "netns", "add", ns)
        stack.callback(subprocess.run, ["ip", "netns", "del", ns], capture_output=True)
    ip_batch([f"link add {prefix}-g netns {cgw} type veth peer name {prefix}-c netns {cloud}"])
    cmds: dict[str, list[str]] = {
        cgw: [f"link set {prefix}-g name eth0", f"address add {CGW_WAN}/24 dev eth0",
              f"address add {LAN_HOST}/32 dev lo"],
        cloud: [f"link set {prefix}-c name eth0", f"address add {VPC_HOST}/32 dev lo"]
        + [f"address add {addr}/24 dev eth0" for addr in CLOUD_WAN],
    }
    for i, (_, _, if_id, inner_cgw, inner_cloud, metric) in enumerate(TUNNELS):
        for ns, inner, far_net in ((cgw, inner_cgw, VPC_NET), (cloud, inner_cloud, LAN_NET)):
            dev = f"ipsec{i}"
            cmds[ns] += [f"link add {dev} type xfrm dev eth0 if_id {if_id}",
                         f"address add {inner}/30 dev {dev}", f"link set {dev} up",
                         f"route add {far_net} dev {dev} metric {metric}"]
    for ns, lines in cmds.items():
        ip_batch(lines + ["link set lo up", "link set eth0 up"], ns)
    return cgw, cloud


def child_sas(session, ike_name: str) -> list[dict]:
    found = []
    for entry in session.list_sas({"ike": ike_name}):
        for ike in entry.values():
            found.extend(ike.get("child-sas", {}).values())
    return found


def child_counter(session, name: str, key: str) -> int:
    return sum(int(c.get(key, b"0")) for c in child_sas(session, name))


def ping(ns: str, dest: str, *, source: str | None = None, device: str | None = None) -> bool:
    argv = ["ip", "netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "3"]
    if device:
        argv += ["-I", device]
    if source:
        argv += ["-I", source]
    return subprocess.run(argv + [dest], capture_output=True).returncode == 0


def run(report: Report, prefix: str) -> None:
    with report.step("modprobe"):
        missing = load_kernel_modules()
    report.check("kernel modules", not missing, f"missing: {missing}" if missing else "")
    psks = {name: secrets.token_hex(16) for name, *_ in TUNNELS}
    home = Path("/dev/shm") / f"vpnd-smoke-{prefix}"
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, home, ignore_errors=True)
        with report.step("topology"):
            cgw, cloud = build_topology(stack, prefix)
        charons: dict[str, Charon] = {}

        def stop_all() -> None:
            for c in charons.values():
                c.stop()
            for c in charons.values():
                c.wait()
        stack.callback(stop_all)
        try:
            with report.step("charons"):
                for side, ns in (("cgw", cgw), ("cloud", cloud)):
                    charons[side] = Charon(ns, home / side)
                sessions = {side: c.session() for side, c in charons.items()}
            with report.step("load config"):
                for side, s in sessions.items():
                    conf = home / side / "swanctl.conf"
                    conf.write_text(swanctl_conf(side, psks))
                    conf.chmod(0o600)
                    sh("swanctl", "--load-all", "--noprompt", "--file", str(conf),
                       "--uri", f"unix://{charons[side].vici}")
            for name, *_ in TUNNELS:
                with report.step(f"initiate {name}"):
                    for _ in sessions["cgw"].initiate({"ike": name, "child": name,
                                                       "timeout": int(WAIT_SECONDS * 1000)}):
                        pass
            for name, cloud_addr, if_id, *_ in TUNNELS:
                children = child_sas(sessions["cgw"], name)
                states = [c.get("state", b"").decode() for c in children]
                report.check(f"{name} CHILD SA INSTALLED", states == ["INSTALLED"], f"states={states}")
                c = children[0]
                report.check(f"{name} kernel ESP tunnel, no UDP encapsulation",
                             c.get("protocol") == b"ESP" and c.get("mode") == b"TUNNEL"
                             and c.get("encap", b"no") == b"no",
                             f"protocol={c.get('protocol')} mode={c.get('mode')} encap={c.get('encap')}")
                report.check(f"{name} if_id {if_id}",
                             int(c.get("if-id-in", b"0"), 16) == if_id
                             and int(c.get("if-id-out", b"0"), 16) == if_id)
            states = sh("ip", "xfrm", "state", ns=cgw)
            report.check("kernel holds SAs with if_id 42 and 43",
                         "if_id 0x2a" in states and "if_id 0x2b" in states)
            for i, (name, _, _, _, inner_cloud, _) in enumerate(TUNNELS):
                with report.step(f"ping {inner_cloud} via ipsec{i}"):
                    before = child_counter(sessions["cgw"], name, "packets-out")
                    ok = ping(cgw, inner_cloud, device=f"ipsec{i}")
                    after = child_counter(sessions["cgw"], name, "packets-out")
                report.check(f"ping {inner_cloud} through ipsec{i} ({name})",
                             ok and after > before, f"packets-out {before}->{after}")
            # LAN -> VPC follows the route with the lower metric; without it, the other tunnel.
            for expect, other in (("t1", "t2"), ("t2", "t1")):
                with report.step(f"LAN->VPC via {expect}"):
                    before = {n: child_counter(sessions["cgw"], n, "packets-out") for n in ("t1", "t2")}
                    ok = ping(cgw, VPC_HOST, source=LAN_HOST)
                    after = {n: child_counter(sessions["cgw"], n, "packets-out") for n in ("t1", "t2")}
                report.check(f"LAN->VPC through {expect} only", ok and after[expect] > before[expect]
                             and after[other] == before[other], f"packets-out {before}->{after}")
                if expect == "t1":
                    sh("ip", "route", "del", VPC_NET, "dev", "ipsec0", "metric", "100", ns=cgw)
        except Exception:
            for side, c in charons.items():
                print(f"smoke: charon log tail ({side}):\n{c.log_tail()}", flush=True)
            raise
        with report.step("teardown"):
            stack.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vpnd_lab.guests.smoke",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    parser.add_argument("--prefix", default=f"vs{os.getpid()}", help="namespace name prefix")
    args = parser.parse_args(argv)
    report = Report()
    started = time.monotonic()
    try:
        run(report, args.prefix)
    except SmokeFailure as exc:
        report.error = str(exc)
    except Exception as exc:   # report, don't crash: the host reads SMOKE-RESULT
        report.error = f"{type(exc).__name__}: {exc}"
    result = {"ok": report.ok, "seconds": round(time.monotonic() - started, 3),
              "steps": report.steps, "checks": report.checks, "error": report.error,
              "kernel": os.uname().release}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print("SMOKE-RESULT " + json.dumps(result), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

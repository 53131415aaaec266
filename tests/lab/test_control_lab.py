"""`vpnd status`, `drain`, `undrain`, `failover` against a running lab daemon (libipsec)."""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
import time

import pytest

from vpnd.control import cli as control_cli
from vpnd.cli import build_parser
from vpnd.control.server import request
from vpnd_lab.cli import active_interface, both_established, wait_until

pytestmark = pytest.mark.lab


def vpnd(*argv: str) -> subprocess.CompletedProcess:
    """The CLI in-process (a fresh interpreter costs 0.3 s a call; one test runs the real one)."""
    out, err = io.StringIO(), io.StringIO()
    rc = control_cli.main(build_parser().parse_args(argv), out=out, err=err)
    return subprocess.CompletedProcess(argv, rc, out.getvalue(), err.getvalue())


def vpnd_process(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vpnd", *argv], capture_output=True, text=True,
                          timeout=30)


def test_operator_commands_move_traffic_and_status_shows_it(make_lab):
    lab = make_lab(preempt_delay=2.0)
    sock = str(lab.lab.dir / "control.sock")
    psks = [t.psk.reveal() for c in lab.config.connections for t in c.tunnels]
    lab.start_vpnd()
    lab.wait_event("control.listening")
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    wait_until("route on tunnel 1", lambda: active_interface(lab.lab) == "vxlan1", 20)
    wait_until("probes answered on both tunnels", lambda: all(
        t["probe"]["last_rtt_ms"] is not None
        for t in request(sock, {"command": "status"})["status"]["connections"]["vpc1"]["tunnels"].values()), 10)

    p = vpnd_process("status", "-c", str(lab.lab.dir / "vpnd.toml"))
    assert p.returncode == 0, p.stderr
    row = next(line for line in p.stdout.splitlines() if line.strip().startswith("tunnel1"))
    print(p.stdout)
    assert "ESTABLISHED #" in row and "INSTALLED #" in row and " yes " in row and " ms " in row, p.stdout
    p = vpnd("status", "--json", "--socket", sock)
    s = json.loads(p.stdout)
    assert s["connections"]["vpc1"]["active"] == "tunnel1"
    probe = s["connections"]["vpc1"]["tunnels"]["tunnel2"]["probe"]
    assert probe["sent"] >= 1 and 0.0 <= probe["loss_percent"] < 100.0   # early probes may race the SA
    assert not any(psk in p.stdout for psk in psks)

    samples = []
    for _ in range(100):
        t0 = time.perf_counter()
        request(sock, {"command": "status"})
        samples.append(time.perf_counter() - t0)
    print(f"lab daemon status round trip: median {statistics.median(samples) * 1000:.2f} ms, "
          f"max {max(samples) * 1000:.2f} ms (n=100)")

    # drain replies after the routes moved: no waiting here
    t0 = time.perf_counter()
    p = vpnd("drain", "tunnel1", "--socket", sock)
    print(f"lab daemon drain round trip (routes moved before the reply): "
          f"{(time.perf_counter() - t0) * 1000:.2f} ms")
    assert p.returncode == 0 and "active tunnel: tunnel2" in p.stdout, p
    assert active_interface(lab.lab) == "vxlan2"
    t0 = time.monotonic()
    p = vpnd("undrain", "tunnel1", "--socket", sock)
    assert p.returncode == 0, p
    wait_until("back on tunnel 1", lambda: active_interface(lab.lab) == "vxlan1", 10)
    assert time.monotonic() - t0 >= 0.5, "a discretionary return waits for hold-down/preempt"

    p = vpnd("failover", "--to", "tunnel2", "--socket", sock)
    assert p.returncode == 0 and "active tunnel: tunnel2" in p.stdout, p
    assert active_interface(lab.lab) == "vxlan2"
    assert request(sock, {"command": "status"})["status"]["connections"]["vpc1"]["pinned"] == "tunnel2"
    p = vpnd("failover", "--to", "tunnel3", "--socket", sock)
    assert p.returncode == 1 and "known: tunnel1, tunnel2" in p.stderr
    p = vpnd("undrain", "tunnel2", "--socket", sock)      # back to automatic
    assert p.returncode == 0, p
    # the pin is gone; the return to tunnel 1 now waits for flap damping (4 switches in 60 s)
    assert request(sock, {"command": "status"})["status"]["connections"]["vpc1"]["pinned"] is None
    assert lab.events("control.command", command="failover", to="tunnel2")

    lab.stop_vpnd()
    p = vpnd("status", "--socket", sock)
    assert p.returncode == 3 and "vpnd is not running" in p.stderr, p
    assert not (lab.lab.dir / "control.sock").exists(), "removed on a graceful stop"

"""A real Prometheus (Debian's `prometheus`) scraping vpnd in the lab, with the shipped rules
(docs/monitoring/alerts.yml), while the lab's faults happen: every alert meant to fire
during a fault must fire, and `promtool check metrics` must find nothing in a real scrape.

Prometheus runs in the lab's cgw namespace (vpnd listens on its loopback), scraping and
evaluating every second. The only change to the rules is in a test copy: every `for:` is
cut to 2 s (the shipped 1-5 min would make this a half-hour test); expressions, windows and
labels are the shipped ones. Firing times are printed (fault injected -> state "firing").

Not covered here: VpndBgpSessionDown (needs the BGP lab and a session down on an up tunnel
with its neighbor enabled) and VpndAbsent (fires only without a scrape target).

Fault tier: `pytest -m faults tests/lab/test_hardening_prometheus.py` (about 2-3 minutes)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from vpnd_testing import lab_metrics
from vpnd_testing.lab_fixtures import RunningLab, lab_skip_reason
from vpnd_lab import daemons, faults, scenario
from vpnd_lab.cli import both_established, wait_until
from vpnd_lab.topology import Lab

pytestmark = [pytest.mark.faults, pytest.mark.lab]

ROOT = Path(__file__).resolve().parents[2]
PROM_PORT = 9490
FOR = "2s"


def _rules_copy(dest: Path) -> Path:
    text = (ROOT / "docs/monitoring/alerts.yml").read_text()
    copy = re.sub(r"(\n\s+for:) \d+[smh]", rf"\1 {FOR}", text)
    assert copy.count(f"for: {FOR}") == text.count("for:")
    dest.write_text(copy)
    return dest


def _start_prometheus(lab: Lab) -> int:
    d = lab.dir / "prometheus"
    d.mkdir(exist_ok=True)
    rules = _rules_copy(d / "alerts.yml")
    (d / "prometheus.yml").write_text(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: ["{rules}"]
scrape_configs:
  - job_name: vpnd
    static_configs: [{{targets: ["127.0.0.1:9456"]}}]
""")
    log = open(d / "prometheus.log", "ab")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("cgw"), "prometheus", f"--config.file={d / 'prometheus.yml'}",
         f"--storage.tsdb.path={d / 'data'}", f"--web.listen-address=127.0.0.1:{PROM_PORT}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lab.record("prometheus", proc.pid)      # the lab's teardown ends it
    return proc.pid


def api(lab: Lab, path: str) -> dict:
    out = lab.exec("cgw", "curl", "-sf", "--max-time", "5", f"http://127.0.0.1:{PROM_PORT}{path}",
                   check=False).stdout
    return json.loads(out) if out else {}


def firing(lab: Lab) -> dict[str, dict]:
    alerts = api(lab, "/api/v1/alerts").get("data", {}).get("alerts", [])
    return {a["labels"]["alertname"]: a for a in alerts if a.get("state") == "firing"}


class Run:
    def __init__(self, lab: RunningLab) -> None:
        self.lab = lab
        self.times: dict[str, float | None] = {}
        self.waited: dict[str, str] = {}
        self.promtool: subprocess.CompletedProcess | None = None

    def expect(self, fault: str, t0: float, names: list[str], timeout: float) -> None:
        """Wait for each alert in `names` to fire; record seconds since the fault (None: never)."""
        todo = [n for n in names if n not in self.times]
        deadline = t0 + timeout
        while todo and time.monotonic() < deadline:
            now = firing(self.lab.lab)
            for n in list(todo):
                if n in now:
                    self.times[n] = round(time.monotonic() - t0, 1)
                    self.waited[n] = fault
                    todo.remove(n)
            time.sleep(0.25)
        for n in todo:
            self.times[n], self.waited[n] = None, fault


def _reestablished(lab: RunningLab, timeout: float = 60) -> None:
    wait_until("both tunnels up", lambda: both_established(lab.lab), timeout)


@pytest.fixture(scope="module")
def run():
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    if shutil.which("prometheus") is None or shutil.which("promtool") is None:
        pytest.skip("Debian's prometheus is not installed (scripts/bootstrap installs it)")
    lab = Lab(prefix=f"vt{uuid.uuid4().hex[:6]}")
    # parking off: the black hole below must stay "loss on an up tunnel" (VpndProbeLossHigh);
    # with parking on (the default) vpnd tears tunnel 1's CHILD SA down within a probe budget
    # and the tunnel shows as down instead (VpndTunnelDown, state parked)
    opts = scenario.Options(backend="libipsec", dpd_delay=2, preempt_delay=2.0,
                            park_dead_tunnel=False)
    r = RunningLab(lab, opts)
    try:
        r.config = scenario.up(lab, opts)
        _start_prometheus(lab)
        r.start_vpnd()
        _reestablished(r)
        r.wait_event("connection.active_changed", active="tunnel1", timeout=30)
        wait_until("Prometheus scrapes vpnd", lambda: any(
            t.get("health") == "up" for t in api(lab, "/api/v1/targets").get("data", {}).get(
                "activeTargets", [])), 30, interval=0.5)
        time.sleep(3)           # a few samples of every series before the first fault
        out = Run(r)
        text = lab_metrics.scrape(lab)
        out.promtool = subprocess.run(["promtool", "check", "metrics"], input=text,
                                      capture_output=True, text=True)

        # 1. tunnel 1's data path black-holed: a failover, and loss on an up tunnel
        t0 = time.monotonic()
        faults.blackhole(lab, 0, "libipsec")
        out.expect("tunnel 1 black-holed", t0, ["VpndProbeLossHigh", "VpndFailover"], 40)
        faults.repair(lab)
        # tunnel 1 was parked (IKE alive, data path dead): its CHILD SA comes back when its
        # hold ends, 10 s doubling with each failed test while the fault lasted
        _reestablished(r, timeout=180)

        # 2. tunnel 1's peer gone (IKE too), then tunnel 2's: one tunnel down, then all
        t0 = time.monotonic()
        faults.peer_unreachable(lab, 0)
        faults.terminate_ike(lab, "vpc1", "tunnel1")
        out.expect("tunnel 1 peer unreachable", t0, ["VpndTunnelDown"], 60)
        t0 = time.monotonic()
        faults.peer_unreachable(lab, 1)
        faults.terminate_ike(lab, "vpc1", "tunnel2")
        out.expect("both peers unreachable", t0, ["VpndConnectionDown"], 60)
        faults.repair(lab)
        _reestablished(r)

        # 3. the cloud deletes tunnel 2's IKE SA four times: flapping
        t0 = time.monotonic()
        for _ in range(4):
            before = len(r.events("tunnel.state_changed"))
            faults.terminate_ike(lab, "vpc1", "tunnel2")
            wait_until("tunnel 2 noticed down", lambda: len(r.events("tunnel.state_changed")) > before, 20,
                       interval=0.1)
            _reestablished(r)
        out.expect("tunnel 2 deleted 4 times", t0, ["VpndTunnelFlapping"], 30)

        # 4. charon killed: VICI gone
        t0 = time.monotonic()
        daemons.stop(lab, "charon-cgw", sig=signal.SIGKILL)
        out.expect("charon killed", t0, ["VpndCharonUnreachable"], 40)
        daemons.start_charon(lab, "cgw", libipsec=True)
        _reestablished(r)

        # 5. a broken config on SIGHUP
        path = lab.dir / "vpnd.toml"
        good = path.read_text()
        path.write_text(good.replace("retries = 3", "retries = 0"))
        t0 = time.monotonic()
        os.kill(r.vpnd_pid, signal.SIGHUP)
        out.expect("reload rejected", t0, ["VpndConfigReloadFailed"], 30)
        path.write_text(good)
        os.kill(r.vpnd_pid, signal.SIGHUP)

        # 6. vpnd stopped: nothing to scrape
        t0 = time.monotonic()
        r.stop_vpnd()
        out.expect("vpnd stopped", t0, ["VpndDown"], 40)
        print("\nalert firing times (fault injected -> firing; `for:` cut to 2 s, scrape and "
              "evaluation every 1 s):")
        for name, took in out.times.items():
            print(f"  {name:24s} {'NEVER' if took is None else f'{took:5.1f} s':>8s}  ({out.waited[name]})")
        yield out
    finally:
        keep = Path(os.environ.get("VPND_TEST_LOGS", "/tmp/vpnd-test-logs"))
        if r.log.exists():
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(r.log, keep / f"{lab.prefix}-prometheus.log")
        lab.destroy()


FIRES = ["VpndProbeLossHigh", "VpndTunnelDown", "VpndConnectionDown", "VpndTunnelFlapping",
         "VpndCharonUnreachable", "VpndConfigReloadFailed", "VpndDown",
         "VpndFailover"]        # fires since its counter series are born at 0 (defect 12)


@pytest.mark.parametrize("alert", FIRES)
def test_alert_fires_during_its_fault(run, alert):
    assert run.times.get(alert) is not None, \
        f"{alert} never fired during '{run.waited.get(alert)}' (firing times: {run.times})"


def test_promtool_check_metrics_is_clean_on_a_real_scrape(run):
    p = run.promtool
    assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr

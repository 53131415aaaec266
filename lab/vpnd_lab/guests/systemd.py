"""vpnd's shipped systemd unit under a real systemd PID 1: runs INSIDE a `vng --systemd` guest.

`vm.run_in_guest(..., systemd=True)` boots systemd as PID 1; this script (run as root from the
guest's serial-getty) then:

- builds the native-backend lab (namespaces cgw/cloud, two charons, kernel ESP, XFRM
  interfaces) as tests/vm/guest_route_failover.py does, so vpnd really supervises two tunnels;
- installs systemd/vpnd.service as shipped into /run/systemd/system (the guest's root is the
  host's, read-only) with one drop-in, `vpnd.service.d/lab.conf`, that only adapts what
  legitimately differs in the lab: this checkout's vpnd instead of /usr/bin/vpnd, the lab
  config instead of /etc/vpnd/config.toml, and NetworkNamespacePath= of the lab's gateway
  namespace (production has no netns), and read-only binds of the venv's interpreter (pyenv
  under /root) and of this checkout (a CI clone in /tmp) where the shipped ProtectHome= or
  PrivateTmp= hides them (see lab_binds).
  frr.service is masked at runtime: the unit Wants= it
  and the lab has no use for a root-namespace FRR (it took ~40 s to start under TCG);
- proves (a) start returns after READY=1 with vpnd's STATUS= line, (b) reload goes through
  `vpnd check` + SIGHUP and a broken config makes `systemctl reload` fail while vpnd runs on,
  (c) the watchdog restarts a stopped (SIGSTOP) vpnd, (d) stop is clean and leaves the routes,
  (e) `systemd-analyze security` rates the loaded unit;
- prints `SYSTEMD-RESULT {json}` as its last line (tests/vm/test_vm_systemd.py reads it).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
UNIT = ROOT / "systemd" / "vpnd.service"
UNIT_DIR = Path("/run/systemd/system")
RESULT: dict[str, Any] = {"errors": []}


def sh(*argv: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {r.returncode}: {r.stdout}{r.stderr}")
    return r


def show(*props: str) -> dict[str, str]:
    out = sh("systemctl", "show", "vpnd.service", "-p", ",".join(props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(unit: str = "vpnd.service") -> list[dict[str, Any]]:
    out = sh("journalctl", "-u", unit, "-o", "json", "--no-pager", "-b").stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def vpnd_events(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """vpnd's own JSON log lines (log_format = "json") out of the journal's MESSAGE fields."""
    events = []
    for e in entries:
        msg = e.get("MESSAGE")
        if isinstance(msg, str) and msg.startswith("{"):
            try:
                ev = json.loads(msg)
            except ValueError:
                continue
            ev["_pid"] = e.get("_PID")
            events.append(ev)
    return events


def event_names() -> list[str]:
    return [ev.get("event", "") for ev in vpnd_events(journal())]


def systemd_messages() -> list[str]:
    """What PID 1 itself logged about the unit."""
    return [e["MESSAGE"] for e in journal() if e.get("_PID") == "1" and isinstance(e.get("MESSAGE"), str)]


def wait(what: str, cond, timeout: float, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class Step:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.t0 = time.monotonic()
        print(f"== {self.name}", flush=True)

    def __exit__(self, typ, exc, tb) -> bool:
        RESULT.setdefault("seconds", {})[self.name] = round(time.monotonic() - self.t0, 2)
        if exc is not None:
            RESULT["errors"].append(f"{self.name}: {typ.__name__}: {exc}")
            traceback.print_exception(typ, exc, tb)
        return True      # go on with the next step: report everything that can be reported


HOME_LIKE = ("/root", "/home", "/run/user")        # hidden by ProtectHome=
TMP_LIKE = ("/tmp", "/var/tmp")                    # replaced by PrivateTmp=


def _under(path: str, tops: tuple[str, ...]) -> bool:
    return any(path == t or path.startswith(t + "/") for t in tops)


def lab_paths() -> list[str]:
    """What the lab's vpnd must see that a production install has elsewhere: the interpreter
    the venv was made from (pyenv under /root here; production venvs come from
    /usr/bin/python3, docs/install.md) and this checkout (a CI clone may live in /tmp).
    Only those that the shipped hardening hides, each to be bound in read-only."""
    interpreter = str(Path(os.path.realpath(sys.executable)).parents[1])   # /root/.pyenv/versions/X
    return [p for p in dict.fromkeys([interpreter, str(ROOT)]) if _under(p, HOME_LIKE + TMP_LIKE)]


def lab_binds() -> str:
    """Drop-in lines exposing lab_paths(). Under PrivateTmp a bind of a /tmp path lands on the
    private /tmp (systemd mounts the deeper path last). Under ProtectHome=yes systemd drops a
    bind below /root without a word (the inaccessible path obstructs it); ProtectHome=tmpfs
    hides the homes just as well and lets the binds through (systemd.exec(5))."""
    paths = lab_paths()
    home = any(_under(p, HOME_LIKE) for p in paths)
    return ("ProtectHome=tmpfs\n" if home else "") + "".join(f"BindReadOnlyPaths={p}\n" for p in paths)


def install_unit(config: Path, netns: str) -> Path:
    """The shipped unit, unchanged, plus a drop-in of lab paths only."""
    UNIT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(UNIT, UNIT_DIR / "vpnd.service")
    vpnd = Path(sys.executable).with_name("vpnd")
    cfg = shlex.quote(str(config))
    dropin = UNIT_DIR / "vpnd.service.d" / "lab.conf"
    dropin.parent.mkdir(exist_ok=True)
    dropin.write_text(
        "# Lab adaptation only: this checkout's vpnd, the lab's config and gateway namespace.\n"
        "[Service]\n"
        "ExecStartPre=\n"
        f"ExecStartPre={vpnd} check -c {cfg}\n"
        "ExecStart=\n"
        f"ExecStart={vpnd} run -c {cfg}\n"
        "ExecReload=\n"
        f"ExecReload={vpnd} check -c {cfg}\n"
        "ExecReload=/bin/kill -HUP $MAINPID\n"
        f"NetworkNamespacePath=/run/netns/{netns}\n"
        + lab_binds())
    # vpnd Wants= frr.service and charon's units: in the guest those are the host's, in the root
    # namespace, of no use to the lab (its charons and FRRs run in namespaces) and slow to start.
    sh("systemctl", "mask", "--runtime", "--no-reload", "frr.service", "strongswan-starter.service",
       "strongswan.service", check=True)
    t0 = time.monotonic()
    sh("systemctl", "daemon-reload", check=True)      # ~10-60 s under TCG: once only
    RESULT["daemon_reload_seconds"] = round(time.monotonic() - t0, 2)
    return dropin


def main() -> int:
    from vpnd_lab import scenario
    from vpnd_lab.cli import both_established, vpnd_routes
    from vpnd_lab.topology import Lab

    RESULT["uptime_at_script"] = float(Path("/proc/uptime").read_text().split()[0])
    RESULT["pid1"] = Path("/proc/1/comm").read_text().strip()
    RESULT["system_state"] = sh("systemctl", "is-system-running").stdout.strip()
    RESULT["journald"] = sh("systemctl", "is-active", "systemd-journald").stdout.strip()
    RESULT["shipped"] = {k: v for k, v in (l.split("=", 1) for l in UNIT.read_text().splitlines()
                                          if l[:1].isupper() and "=" in l)
                         if k in ("Type", "WatchdogSec", "NotifyAccess", "Restart")}
    lab = Lab(prefix="vsd")
    opts = scenario.Options(backend="native", interval=0.25, timeout=1.0, retries=3)
    config = None
    with Step("lab"):
        scenario.up(lab, opts)
        config = lab.dir / "vpnd.toml"
        # The lab puts the control socket in its dir; under the unit only /run/vpnd is writable
        # (ProtectSystem=strict), which is where the default (production) socket lives.
        text = "\n".join(l for l in config.read_text().splitlines() if not l.startswith("control_socket"))
        config.write_text(text + "\n")
    if config is None or RESULT["errors"]:
        return finish()
    with Step("install"):
        dropin = install_unit(config, lab.ns("cgw"))
        RESULT["dropin"] = dropin.read_text()

    with Step("start"):                       # (a)
        t0 = time.monotonic()
        r = sh("systemctl", "start", "vpnd.service", timeout=240)
        RESULT["start_seconds"] = round(time.monotonic() - t0, 2)
        RESULT["start_rc"] = r.returncode
        RESULT["start_stderr"] = r.stderr.strip()[-2000:]
        # Type=notify: start returns only once vpnd said READY=1, which it does right after
        # logging vpnd.ready; so the event must already be in the journal now.
        RESULT["ready_logged_when_start_returned"] = "vpnd.ready" in event_names()
        st = show("ActiveState", "SubState", "StatusText", "MainPID", "Type", "WatchdogUSec",
                  "NotifyAccess")
        RESULT["after_start"] = st
        RESULT["main_pid_cmdline"] = Path(f"/proc/{st.get('MainPID', '0')}/cmdline").read_text().replace("\0", " ") \
            if st.get("MainPID", "0") != "0" else ""
        RESULT["tunnels_up"] = bool(wait("both tunnels up", lambda: both_established(lab), 90))
        RESULT["routes_after_start"] = wait("vpnd's routes", lambda: vpnd_routes(lab), 60)
    if RESULT.get("start_rc") != 0:
        RESULT["status"] = sh("systemctl", "status", "--no-pager", "-l", "vpnd.service").stdout[-4000:]
        return finish()

    pid = show("MainPID")["MainPID"]
    with Step("reload"):                      # (b)
        n = event_names().count("config.reloaded")
        t0 = time.monotonic()
        r = sh("systemctl", "reload", "vpnd.service")
        RESULT["reload_rc"] = r.returncode
        RESULT["reload_seconds"] = round(time.monotonic() - t0, 2)
        wait("config.reloaded", lambda: event_names().count("config.reloaded") > n, 60)
        RESULT["reload_logged"] = True
        RESULT["after_reload"] = show("ActiveState", "SubState", "MainPID", "StatusText")
        good = config.read_text()
        config.write_text(good + "\n[[connection]\nthis is not toml\n")
        r = sh("systemctl", "reload", "vpnd.service")
        RESULT["bad_reload_rc"] = r.returncode
        RESULT["bad_reload_stderr"] = r.stderr.strip()[-500:]
        config.write_text(good)
        RESULT["after_bad_reload"] = show("ActiveState", "SubState", "MainPID")
        RESULT["same_pid_after_reloads"] = RESULT["after_bad_reload"]["MainPID"] == pid
        RESULT["reload_messages"] = [m for m in systemd_messages() if "eload" in m]

    with Step("watchdog"):                    # (c)
        before = show("NRestarts", "MainPID")
        os.kill(int(before["MainPID"]), 19)  # SIGSTOP: the loop stops, so do the WATCHDOG=1 pings
        t0 = time.monotonic()
        seen: dict[str, float] = {}

        def restarted() -> bool:
            s = show("NRestarts", "MainPID", "ActiveState", "SubState", "Result")
            if s.get("Result") not in ("", "success") and "result" not in seen:
                seen["result"] = time.monotonic() - t0
                RESULT["watchdog_result"] = s["Result"]
            if s["MainPID"] != before["MainPID"] and "gone" not in seen:
                seen["gone"] = time.monotonic() - t0
            return (int(s["NRestarts"]) > int(before["NRestarts"]) and s["ActiveState"] == "active"
                    and s["SubState"] == "running" and s["MainPID"] not in ("0", before["MainPID"]))
        wait("the watchdog restart", restarted, 180, step=0.5)
        RESULT["watchdog_restart_seconds"] = round(time.monotonic() - t0, 2)
        RESULT["watchdog_seen"] = {k: round(v, 2) for k, v in seen.items()}
        RESULT["after_watchdog"] = show("NRestarts", "Result", "ActiveState", "SubState", "MainPID")
        RESULT["watchdog_messages"] = [m for m in systemd_messages()
                                       if "atchdog" in m or "signal" in m.lower() or "core" in m.lower()]
        RESULT["old_pid_gone"] = not Path(f"/proc/{before['MainPID']}").exists()

    with Step("stop"):                        # (d)
        routes = vpnd_routes(lab)
        t0 = time.monotonic()
        r = sh("systemctl", "stop", "vpnd.service")
        RESULT["stop_rc"] = r.returncode
        RESULT["stop_seconds"] = round(time.monotonic() - t0, 2)
        RESULT["after_stop"] = show("ActiveState", "SubState", "Result", "ExecMainStatus", "ExecMainCode")
        RESULT["stopping_logged"] = "vpnd.stopping" in event_names()
        RESULT["routes_before_stop"] = routes
        RESULT["routes_after_stop"] = vpnd_routes(lab)

    with Step("security"):                    # (e)
        r = sh("systemd-analyze", "security", "--no-pager", "vpnd.service", timeout=180)
        RESULT["security_rc"] = r.returncode
        out = r.stdout
        RESULT["security_tail"] = out.strip().splitlines()[-1:] if out.strip() else r.stderr[-500:]
        for line in out.splitlines():
            if "Overall exposure level" in line:
                RESULT["exposure"] = float(line.split(":")[1].split()[0])
        RESULT["security_flagged"] = [l.strip() for l in out.splitlines() if l.lstrip().startswith("✗")]
        # The rating above includes the lab drop-in's ProtectHome=tmpfs; rate the shipped
        # hardening too (security reads the loaded unit's settings, it need not run).
        dropin = UNIT_DIR / "vpnd.service.d" / "lab.conf"
        dropin.write_text("".join(l + "\n" for l in dropin.read_text().splitlines()
                                  if not l.startswith(("ProtectHome=", "BindReadOnlyPaths="))))
        sh("systemctl", "daemon-reload", check=True)
        out = sh("systemd-analyze", "security", "--no-pager", "vpnd.service", timeout=180).stdout
        for line in out.splitlines():
            if "Overall exposure level" in line:
                RESULT["exposure_shipped"] = float(line.split(":")[1].split()[0])
    return finish()


def finish() -> int:
    try:
        errors = [e for e in journal() if isinstance(e.get("MESSAGE"), str)]
        RESULT["journal_tail"] = [e["MESSAGE"][:300] for e in errors[-40:]]
    except Exception as exc:      # noqa: BLE001 - the report must still be printed
        RESULT["journal_tail"] = [f"journalctl failed: {exc}"]
    print("SYSTEMD-RESULT " + json.dumps(RESULT, sort_keys=True), flush=True)
    return 1 if RESULT["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Real daemons in the lab's namespaces: one charon per gateway, and vpnd itself in cgw.

charon's pid file is fixed at /run/charon.pid, so each instance also gets its own mount
namespace with a private /run; its VICI socket lives in the lab dir, where the root namespace
(tests, `vpnd lab status`) reaches it. Processes are detached (own session, logs in the lab
dir) so `vpnd lab up` can leave them running; every pid is recorded for a later `down`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from vpnd_lab.topology import Lab, LabError, cmdline

CHARON = "/usr/lib/ipsec/charon"


def strongswan_conf(vici: Path, *, libipsec: bool, log: Path, fast_retransmits: bool = True,
                    retransmit: tuple[float, int] | None = None) -> str:
    """libipsec: userspace ESP over TUN (no kernel ESP here). Otherwise kernel-netlink, with
    routes left to vpnd (install_routes = no) as on a real gateway with XFRM interfaces.
    Fast retransmits (1 s, 2 tries) keep lab failures quick; under emulation they would give
    up on a slow but live peer, so charon's defaults are kept there. `retransmit` (timeout,
    tries; base 1) sets them explicitly: the vendor-model cloud's DPD timeout (cloud_model)."""
    plugins = ("  kernel-libipsec {\n   load = 20\n  }\n" if libipsec
               else "  kernel-libipsec {\n   load = no\n  }\n")
    return (
        "charon {\n load_modular = yes\n"
        # reauthentication brings the new IKE SA up before the old goes (strongSwan 6's
        # default): `vpnd psk rotate` relies on it, as docs/operations.md asks of gateways
        " make_before_break = yes\n"
        f" install_routes = {'yes' if libipsec else 'no'}\n"
        + (f" retransmit_timeout = {retransmit[0]}\n retransmit_tries = {retransmit[1]}\n retransmit_base = 1.0\n"
           if retransmit else
           " retransmit_timeout = 1.0\n retransmit_tries = 2\n retransmit_base = 1.0\n"
           if fast_retransmits else "") +
        " plugins {\n  include /etc/strongswan.d/charon/*.conf\n" + plugins +
        f"  vici {{\n   socket = unix://{vici}\n  }}\n }}\n"
        f" filelog {{\n  lab {{\n   path = {log}\n   time_format = %H:%M:%S\n   default = 1\n   ike = 2\n  }}\n }}\n"
        "}\n")


def vici_path(lab: Lab, role: str) -> Path:
    return lab.dir / f"{role}.vici"


def start_charon(lab: Lab, role: str, *, libipsec: bool, timeout: float = 20.0,
                 fast_retransmits: bool | None = None, retransmit: tuple[float, int] | None = None) -> int:
    """`fast_retransmits=None`: fast outside emulation (see strongswan_conf); False gives
    charon's default schedule, as the vendor procedure runs it (bench/failover.py --baseline)."""
    work = lab.dir / f"charon-{role}"
    (work / "run").mkdir(parents=True, exist_ok=True)
    (work / "run" / "charon.pid").unlink(missing_ok=True)   # a killed predecessor's
    sock = vici_path(lab, role)
    if sock.exists():
        sock.unlink()
    conf = work / "strongswan.conf"
    if fast_retransmits is None:
        fast_retransmits = os.environ.get("VPND_LAB_EMULATED") != "1"
    conf.write_text(strongswan_conf(sock, libipsec=libipsec, log=lab.dir / f"charon-{role}.log",
                                    fast_retransmits=fast_retransmits, retransmit=retransmit))
    out = open(lab.dir / f"charon-{role}.out", "ab")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns(role), "unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount --bind {work}/run /run && STRONGSWAN_CONF={conf} exec {CHARON}"],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for_socket(sock, timeout, alive=lambda: proc.poll() is None, what=f"charon in {role}")
    lab.record(f"charon-{role}", proc.pid)
    return proc.pid


def stop(lab: Lab, name: str, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    rec = lab.recorded().get(name)
    if rec is None:
        return
    pid = rec["pid"]
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        lab.forget(name)
        return
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    # Gone means gone from /proc: a zombie still "exists" for charon's pid-file check, and a
    # restarted charon would exit with "charon already running".
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.005)
    lab.forget(name)


def start_vpnd(lab: Lab, config: Path, *, extra_env: dict[str, str] | None = None) -> int:
    """`vpnd run` inside cgw, the way a gateway runs it; logs as JSON lines in the lab dir."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = open(lab.dir / "vpnd.log", "ab")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns("cgw"), sys.executable, "-m", "vpnd", "run", "-c", str(config)],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        start_new_session=True)
    # Record the command line vpnd runs under, not the `ip netns exec` it started as: a
    # later `down` kills only pids whose command line still matches.
    deadline = time.monotonic() + 10
    while not cmdline(proc.pid).startswith(sys.executable) and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"vpnd exited at once: see {lab.dir / 'vpnd.log'}")
        time.sleep(0.005)
    lab.record("vpnd", proc.pid)
    return proc.pid



def wait_for_socket(path: Path, timeout: float, *, alive=lambda: True, what: str = "daemon") -> None:
    deadline = time.monotonic() + timeout
    while not _connectable(path):
        if not alive():
            raise LabError(f"{what} exited during start-up")
        if time.monotonic() > deadline:
            raise LabError(f"{what}: {path} did not appear within {timeout:.0f} s")
        time.sleep(0.02)


def _connectable(path: Path) -> bool:
    if not path.exists():
        return False
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass

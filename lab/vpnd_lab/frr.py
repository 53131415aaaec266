"""FRR (zebra, bgpd, bfdd) per gateway namespace, for BGP scenarios.

Each instance keeps its vty sockets, zserv socket and pid files in the lab dir (no /etc/frr or
/run/frr touched), runs detached with its pid recorded, and is configured with
`vtysh --vty_socket DIR -f FILE` (daemons started by hand don't read frr.conf).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from vpnd_lab import daemons
from vpnd_lab.topology import Lab, LabError, sh

FRR_BIN = Path("/usr/lib/frr")
DAEMONS = ("zebra", "bgpd", "bfdd")


def available() -> bool:
    return shutil.which("vtysh") is not None and all((FRR_BIN / d).exists() for d in DAEMONS)


def vty_dir(lab: Lab, role: str) -> Path:
    return lab.dir / f"frr-{role}"


def start(lab: Lab, role: str, timeout: float = 20.0) -> None:
    d = vty_dir(lab, role)
    d.mkdir(parents=True, exist_ok=True)
    shutil.chown(d, "frr", "frr")
    (d / "empty.conf").write_text("")
    for daemon in DAEMONS:
        out = open(lab.dir / f"frr-{role}-{daemon}.out", "ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns(role), str(FRR_BIN / daemon), "-F", "traditional",
             "-A", "127.0.0.1", "-P", "0", "--vty_socket", str(d), "-z", str(d / "zserv.api"),
             "-i", str(d / f"{daemon}.pid"), "-f", str(d / "empty.conf"),
             *(["-K", "60"] if daemon == "zebra" else [])],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        daemons.wait_for_socket(d / f"{daemon}.vty", timeout, alive=lambda: proc.poll() is None,
                                what=f"{daemon} in {role}")
        lab.record(f"frr-{role}-{daemon}", proc.pid)


def stop(lab: Lab, role: str, sig: int = 15) -> None:
    for daemon in reversed(DAEMONS):
        daemons.stop(lab, f"frr-{role}-{daemon}", sig=sig)


def restart(lab: Lab, role: str, sig: int = 15) -> None:
    stop(lab, role, sig=sig)
    start(lab, role)


def vtysh(lab: Lab, role: str, *args: str) -> str:
    r = sh("ip", "netns", "exec", lab.ns(role), "vtysh", "--vty_socket", str(vty_dir(lab, role)), *args,
           check=False)
    if r.returncode != 0:
        raise LabError(f"vtysh in {role} {' '.join(args)}: {r.stdout}{r.stderr}")
    return r.stdout


def apply(lab: Lab, role: str, text: str) -> None:
    path = vty_dir(lab, role) / "frr.conf"
    path.write_text(text)
    vtysh(lab, role, "-f", str(path))


def bgp_summary(lab: Lab, role: str) -> dict:
    return json.loads(vtysh(lab, role, "-c", "show bgp summary json"))


def established_peers(lab: Lab, role: str) -> set[str]:
    peers = bgp_summary(lab, role).get("ipv4Unicast", {}).get("peers", {})
    return {ip for ip, p in peers.items() if p.get("state") == "Established"}

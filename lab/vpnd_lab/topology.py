"""The lab's network: four namespaces on one machine, test addresses only.

    lan (172.16.0.10) --- cgw (198.18.0.2) ==== "internet" ==== cloud (198.18.0.1 and .11) --- vpc (192.168.0.10)

`cgw` is the customer gateway where vpnd runs; `cloud` simulates the cloud VPN gateway with
its two IPsec addresses. Names carry a per-run prefix so two labs (or test sessions) coexist.
Every pid the lab starts is recorded in the lab dir, so a crashed run is cleaned up by the
next one: only recorded pids whose command line still matches are ever killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Not under /run: each charon gets a private /run (its pid file is fixed there).
LAB_ROOT = Path(os.environ.get("VPND_LAB_ROOT", "/var/lib/vpnd-lab"))
ROLES = ("cgw", "cloud", "lan", "vpc")


class LabError(Exception):
    """Something in the lab could not be set up; the message says what."""


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(args)}: {(r.stderr or r.stdout).strip()}")
    return r


@dataclass(frozen=True)
class Plan:
    """The addressing plan: the vendor example's networks, 198.18.0.0/15 as "public"."""

    cgw_wan: str = "198.18.0.2"
    cloud_wan: tuple[str, str] = ("198.18.0.1", "198.18.0.11")
    lan_net: str = "172.16.0.0/16"
    cgw_lan: str = "172.16.0.1"
    lan_host: str = "172.16.0.10"
    vpc_net: str = "192.168.0.0/16"
    cloud_vpc: str = "192.168.0.1"
    vpc_host: str = "192.168.0.10"
    # per tunnel: (inner /30 ours, inner /30 cloud's, endpoint ours, endpoint cloud's)
    inner: tuple[tuple[str, str], ...] = (("169.254.10.2", "169.254.10.1"), ("169.254.20.2", "169.254.20.1"))
    endpoints: tuple[tuple[str, str], ...] = (("10.255.1.2", "10.255.1.1"), ("10.255.2.2", "10.255.2.1"))


@dataclass
class Lab:
    prefix: str = "vpnd"
    plan: Plan = field(default_factory=Plan)

    @property
    def dir(self) -> Path:
        return LAB_ROOT / self.prefix

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    # --- pids ------------------------------------------------------------------------------

    def _pids_file(self) -> Path:
        return self.dir / "pids.json"

    def record(self, name: str, pid: int) -> None:
        data = self.recorded()
        data[name] = {"pid": pid, "cmdline": cmdline(pid)}
        self._pids_file().write_text(json.dumps(data))

    def forget(self, name: str) -> None:
        data = self.recorded()
        data.pop(name, None)
        self._pids_file().write_text(json.dumps(data))

    def recorded(self) -> dict:
        try:
            return json.loads(self._pids_file().read_text())
        except (OSError, ValueError):
            return {}

    def stop_recorded(self, timeout: float = 10.0) -> None:
        """SIGTERM every recorded process that is still ours, SIGKILL what lingers."""
        alive = {}
        for name, rec in self.recorded().items():
            pid = rec["pid"]
            if cmdline(pid) and cmdline(pid) == rec["cmdline"]:
                try:
                    os.kill(pid, signal.SIGTERM)
                    alive[name] = pid
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        while alive and time.monotonic() < deadline:
            alive = {n: p for n, p in alive.items() if _running(p)}
            time.sleep(0.02)
        for pid in alive.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._pids_file().exists():
            self._pids_file().write_text("{}")

    # --- build and destroy -----------------------------------------------------------------

    def exists(self) -> bool:
        return any(n.split()[0] == self.ns("cgw") for n in sh("ip", "netns", "list").stdout.splitlines() if n)

    def build(self) -> None:
        self.destroy()                      # a previous crashed run with this prefix
        self.dir.mkdir(parents=True, exist_ok=True)
        # Traversable but not listable: FRR drops to user frr and needs its vty dir in here;
        # the PSK files are 0600.
        os.chmod(self.dir, 0o711)
        p = self.plan
        for role in ROLES:
            sh("ip", "netns", "add", self.ns(role))
            self.ip(role, "link", "set", "lo", "up")
        self._veth("cgw", "wan0", "cloud", "wan0")
        self._veth("lan", "eth0", "cgw", "lan0")
        self._veth("vpc", "eth0", "cloud", "vpc0")
        self.ip("cgw", "addr", "add", f"{p.cgw_wan}/24", "dev", "wan0")
        for a in p.cloud_wan:
            self.ip("cloud", "addr", "add", f"{a}/24", "dev", "wan0")
        self.ip("cgw", "addr", "add", f"{p.cgw_lan}/24", "dev", "lan0")
        self.ip("lan", "addr", "add", f"{p.lan_host}/24", "dev", "eth0")
        self.ip("lan", "route", "add", "default", "via", p.cgw_lan)
        self.ip("cloud", "addr", "add", f"{p.cloud_vpc}/24", "dev", "vpc0")
        self.ip("vpc", "addr", "add", f"{p.vpc_host}/24", "dev", "eth0")
        self.ip("vpc", "route", "add", "default", "via", p.cloud_vpc)
        for role in ("cgw", "cloud"):
            self.sysctl(role, "net.ipv4.ip_forward", "1")

    def destroy(self) -> None:
        self.stop_recorded()
        present = {n.split()[0] for n in sh("ip", "netns", "list").stdout.splitlines() if n}
        for role in ROLES:
            if self.ns(role) in present:
                # whatever still runs inside (a pinger whose test failed before stopping it,
                # a tcpdump): deleting the name would leave it running, unreachable
                for pid in sh("ip", "netns", "pids", self.ns(role), check=False).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ValueError, ProcessLookupError):
                        pass
                sh("ip", "netns", "del", self.ns(role), check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- small wrappers --------------------------------------------------------------------

    def ip(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "-n", self.ns(role), *args, check=check)

    def exec(self, role: str, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns(role), *args, check=check, timeout=timeout)

    def sysctl(self, role: str, key: str, value: str) -> None:
        self.exec(role, "sysctl", "-q", "-w", f"{key}={value}")

    def _veth(self, a: str, a_if: str, b: str, b_if: str) -> None:
        tmp = f"v{os.getpid() % 100000}{a_if[:3]}{b[:2]}"
        sh("ip", "link", "add", tmp, "netns", self.ns(a), "type", "veth", "peer", "name", tmp + "p",
           "netns", self.ns(b))
        self.ip(a, "link", "set", tmp, "name", a_if)
        self.ip(b, "link", "set", tmp + "p", "name", b_if)
        self.ip(a, "link", "set", a_if, "up")
        self.ip(b, "link", "set", b_if, "up")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False

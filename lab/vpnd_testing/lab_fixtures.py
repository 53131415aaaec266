"""pytest fixtures for the lab: a ready lab on a unique prefix, always torn down.

`make_lab(**options)` builds one (libipsec backend on this machine: real charons, userspace
ESP); `lab.start_vpnd()` runs `vpnd run` in cgw; `lab.events(name)` reads vpnd's JSON log.
Skips with the reason when the machine can't run it (not root, no charon, no nft).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vpnd_lab import daemons, scenario
from vpnd_lab.topology import Lab


def lab_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, charon)"
    if not os.path.exists(daemons.CHARON):
        return "strongSwan's charon is not installed (scripts/bootstrap installs it)"
    for tool in ("ip", "swanctl", "nft", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/bootstrap installs it)"
    return None


@dataclass
class RunningLab:
    lab: Lab
    opts: scenario.Options
    config: object = None
    vpnd_pid: int | None = None
    marks: dict = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.lab.dir / "vpnd.log"

    def start_vpnd(self) -> int:
        self.vpnd_pid = daemons.start_vpnd(self.lab, self.lab.dir / "vpnd.toml")
        return self.vpnd_pid

    def stop_vpnd(self, sig: int = 15) -> None:
        daemons.stop(self.lab, "vpnd", sig=sig)
        self.vpnd_pid = None

    def events(self, name: str | None = None, **match) -> list[dict]:
        out = []
        if not self.log.exists():
            return out
        for line in self.log.read_text().splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if (name is None or e.get("event") == name) and all(e.get(k) == v for k, v in match.items()):
                out.append(e)
        return out

    def wait_event(self, name: str, timeout: float = 30.0, after: int = 0, **match) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name, **match)
            if len(found) > after:
                return found[after]
            assert time.monotonic() < deadline, f"no {name} {match} within {timeout} s; log tail:\n" + \
                "\n".join(self.log.read_text().splitlines()[-10:]) if self.log.exists() else ""
            time.sleep(0.02)


@pytest.fixture
def make_lab():
    reason = lab_skip_reason()
    if reason:
        pytest.skip(reason)
    labs: list[RunningLab] = []

    def make(**options) -> RunningLab:
        lab = Lab(prefix=f"vt{uuid.uuid4().hex[:6]}")
        opts = scenario.Options(**{"backend": "libipsec", **options})
        running = RunningLab(lab, opts)
        labs.append(running)
        running.config = scenario.up(lab, opts)
        return running

    yield make
    keep = Path(os.environ.get("VPND_TEST_LOGS", "/tmp/vpnd-test-logs"))
    for running in labs:
        if running.log.exists():        # for the post-mortem of a failed run
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(running.log, keep / f"{running.lab.prefix}.log")
        running.lab.destroy()


BGP_PEERS = {"169.254.10.1", "169.254.20.1"}


def bgp_lab(make_lab, **options) -> RunningLab:
    """A bgp-mode lab whose cgw FRR vpnd configures itself, up to both sessions Established
    and the VPC prefix installed by zebra."""
    from vpnd_lab import frr
    from vpnd_lab.cli import both_established, wait_until

    if not frr.available():
        pytest.skip("FRR is not installed")
    lab = make_lab(routing="bgp", frr_by_vpnd=True, **options)
    lab.start_vpnd()
    lab.wait_event("frr.applied", timeout=20)
    wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
    wait_until("both BGP sessions Established over the tunnels",
               lambda: frr.established_peers(lab.lab, "cgw") == BGP_PEERS, 40, interval=0.1)
    wait_until("the VPC prefix learned and installed by zebra",
               lambda: lab.lab.plan.vpc_net in lab.lab.ip("cgw", "route", "show", "proto", "bgp").stdout,
               20, interval=0.1)
    return lab

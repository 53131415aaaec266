"""The unit file is what a gateway actually runs: systemd must accept it, it must say what
issue 7 asks (notify, watchdog, reload by SIGHUP, ordering after charon and FRR) and its
hardening must not silently regress (`systemd-analyze security` exposure)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "vpnd.service"
INSTALLED_BIN = "/usr/bin/vpnd"
MAX_EXPOSURE = 2.0          # docs/operations.md quotes the measured value (1.9)

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed (package systemd)")


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture
def runnable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's vpnd, so verify can resolve it."""
    vpnd = Path(sys.executable).with_name("vpnd")
    if not vpnd.exists():
        pytest.skip(f"{vpnd} not installed (run scripts/bootstrap)")
    path = tmp_path / "vpnd.service"
    path.write_text(UNIT.read_text().replace(INSTALLED_BIN, str(vpnd)))
    return path


@needs_analyze
def test_systemd_analyze_verify(runnable_unit: Path):
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(runnable_unit)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr


@needs_analyze
def test_security_exposure_stays_low(runnable_unit: Path):
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        str(runnable_unit)], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    if m is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit file offline: {r.stderr.strip()}")
    assert float(m[1]) <= MAX_EXPOSURE, r.stdout


def test_unit_says_what_the_issue_asks():
    d = directives()
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["WatchdogSec"] and d["Restart"] == ["on-failure"]
    assert d["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert d["ExecStart"] == [f"{INSTALLED_BIN} run -c /etc/vpnd/config.toml"]
    # either charon unit (Debian 12's strongswan-starter, charon-systemd's strongswan), and FRR
    for dep in ("strongswan-starter.service", "strongswan.service", "frr.service"):
        assert dep in d["After"][0].split() and dep in d["Wants"][0].split()
    assert "Requires" not in d and "BindsTo" not in d     # a missing unit must not fail vpnd
    assert set(d["CapabilityBoundingSet"][0].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_NETLINK", "AF_INET",
                                                             "AF_INET6"}
    for key, value in (("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                       ("RuntimeDirectory", "vpnd")):
        assert d[key] == [value], key


def test_control_socket_default_is_writable_under_the_unit():
    """ProtectSystem=strict leaves only RuntimeDirectory writable: the default control socket
    must live there."""
    from vpnd.config.model import DaemonConfig

    assert Path(DaemonConfig().control_socket).parent == Path("/run") / directives()["RuntimeDirectory"][0]

"""The vm lab backend, end to end: Debian's kernel in a TCG guest runs the route-based dual
tunnel (XFRM interfaces if_id 42/43, kernel ESP, metrics 100/101) that the host cannot.

One guest boot carries the whole smoke scenario (a boot costs 10-15 s under TCG); short
extra boots prove exit codes, environment passing, the timeout kill and SIGTERM handling.
Run: PYTHONPATH=. python -m pytest -m vm tests/vm/test_vm_backend.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vpnd_lab import vm

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]


class Stamped:
    """A stream that remembers when each line arrived on the host."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.lines: list[tuple[float, str]] = []
        self._partial = ""

    def write(self, text: str) -> None:
        now = time.monotonic() - self.started
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        self.lines += [(now, line) for line in done]

    def flush(self) -> None:
        pass

    def first(self, marker: str) -> float:
        return next(t for t, line in self.lines if line.startswith(marker))


@pytest.fixture(scope="module")
def kernel() -> vm.GuestKernel:
    if os.geteuid() != 0:
        pytest.skip("the vm backend provisions packages and /lib/modules: needs root")
    started = time.monotonic()
    k = vm.ensure_guest_kernel()
    print(f"\nprovision (warm or cold): {time.monotonic() - started:.1f} s")
    return k


@pytest.fixture(scope="module")
def smoke_boot(kernel, tmp_path_factory):
    """One boot: guest facts, venv imports, then the whole dual-tunnel smoke scenario."""
    out = tmp_path_factory.mktemp("guest")
    stream = Stamped()
    command = (
        'echo "GUEST-UP $(uname -r)"; '
        "python -c 'import vici, pyroute2, vpnd; print(\"IMPORT-OK\")'; "
        f"python -m vpnd_lab.guests.smoke --json {out}/smoke.json"
    )
    result = vm.run_in_guest(command, timeout=300, env=vm.project_env(ROOT), rwdirs=[out],
                             cwd=ROOT, kernel=kernel, stream=stream)
    if not result.timed_out:
        boot = stream.first("GUEST-UP")
        print(f"\nboot to command: {boot:.1f} s; whole boot incl. smoke: {result.seconds:.1f} s")
    return result, out, stream


def test_guest_boots_debian_kernel_with_xfrm_support(kernel, smoke_boot):
    result, _, stream = smoke_boot
    assert not result.timed_out, result.output[-3000:]
    assert f"GUEST-UP {kernel.version}" in [line for _, line in stream.lines]


def test_host_venv_and_worktree_import_in_guest(smoke_boot):
    result, _, _ = smoke_boot
    assert "IMPORT-OK" in result.output, result.output[-3000:]
    # The stdlib and venv came from the disk image, not over 9p (about 2x faster imports).
    assert "python image not mounted" not in result.output


def test_dual_tunnel_on_xfrm_interfaces_with_kernel_esp(smoke_boot):
    result, out, _ = smoke_boot
    report = json.loads((out / "smoke.json").read_text())   # written through --rwdir
    assert report["ok"], f"{report['error']}\n{result.output[-4000:]}"
    assert result.returncode == 0
    checks = report["checks"]
    for name in ("t1", "t2"):
        assert checks[f"{name} CHILD SA INSTALLED"]
        assert checks[f"{name} kernel ESP tunnel, no UDP encapsulation"]
    assert checks["t1 if_id 42"] and checks["t2 if_id 43"]
    assert checks["ping 169.254.10.1 through ipsec0 (t1)"]
    assert checks["ping 169.254.20.1 through ipsec1 (t2)"]
    assert checks["LAN->VPC through t1 only"] and checks["LAN->VPC through t2 only"]
    print(f"\nsmoke in guest: {report['seconds']:.1f} s, steps {report['steps']}")


def test_exit_code_and_environment_reach_the_host(kernel):
    env = {"VPND_PROBE": "a b'c", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    result = vm.run_in_guest('[ "$VPND_PROBE" = "a b\'c" ] && exit 3; exit 9',
                             timeout=120, env=env, kernel=kernel)
    assert result.returncode == 3, result.output[-3000:]


def test_timeout_kills_vng_and_qemu(kernel):
    result = vm.run_in_guest("sleep 600", timeout=5, kernel=kernel)
    assert result.timed_out and result.returncode is None
    assert result.seconds < 15
    assert vm.live_group_members(result.pid) == []


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def test_sigterm_to_the_runner_kills_the_guest_too(kernel):
    """QEMU runs in its own session: without care, a CI timeout's SIGTERM would orphan it."""
    runner = subprocess.Popen(
        [sys.executable, "-m", "vpnd_lab.vm", "run", "--timeout", "120", "echo STARTED; sleep 100"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        for line in runner.stdout:      # bounded by the runner's own 120 s timeout
            if line.startswith("STARTED"):
                break
        guest = _descendants(runner.pid)
        assert any("qemu" in Path(f"/proc/{p}/comm").read_text() for p in guest if _alive(p))
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=30) == -signal.SIGTERM
        assert [p for p in guest if _alive(p)] == []
    finally:
        if runner.poll() is None:
            runner.kill()

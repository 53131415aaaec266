"""Timings of the vm lab backend: warm provisioning, boot-to-command, the smoke scenario.

Each boot runs `echo UP` first; the host timestamps when that line arrives (boot-to-command)
and when vng exits. The last boot runs the dual-tunnel smoke (lab/vpnd_lab/guests/smoke.py).
TCG emulation shares the host's cores with everything else: expect wide spread.
Prints a human line per run and a final JSON line.

    PYTHONPATH=. python bench/vm_timings.py [--boots 3] [--no-smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from vpnd_lab import vm

ROOT = Path(__file__).resolve().parents[1]


class FirstLine:
    """Records when a line starting with `marker` first reaches the host."""

    def __init__(self, marker: str) -> None:
        self.marker, self.started, self.at = marker, time.monotonic(), None
        self._buf = ""

    def write(self, text: str) -> None:
        self._buf += text
        if self.at is None and any(line.startswith(self.marker) for line in self._buf.split("\n")[:-1]):
            self.at = time.monotonic() - self.started

    def flush(self) -> None:
        pass


def boot(kernel: vm.GuestKernel, command: str) -> tuple[float, float, vm.GuestResult]:
    stream = FirstLine("UP")
    result = vm.run_in_guest(f"echo UP; {command}", timeout=600, env=vm.project_env(ROOT),
                             cwd=ROOT, kernel=kernel, stream=stream)
    if not result.ok:
        sys.exit(f"guest command failed ({result.returncode}):\n{result.output[-3000:]}")
    return stream.at or float("nan"), result.seconds, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--no-smoke", action="store_true")
    args = parser.parse_args()

    started = time.monotonic()
    kernel = vm.ensure_guest_kernel()
    provision = time.monotonic() - started
    print(f"provision (warm): {provision:.2f} s; kvm: {vm.kvm_usable(kernel)}")

    to_command, total = [], []
    for i in range(args.boots):
        up, seconds, _ = boot(kernel, "true")
        to_command.append(up)
        total.append(seconds)
        print(f"boot {i + 1}: command starts after {up:.1f} s, vng exits after {seconds:.1f} s")

    out: dict = {"provision_warm_s": round(provision, 2),
                 "boot_to_command_s": [round(x, 1) for x in to_command],
                 "boot_to_command_median_s": round(statistics.median(to_command), 1),
                 "trivial_boot_total_s": [round(x, 1) for x in total]}
    if not args.no_smoke:
        up, seconds, result = boot(kernel, "python -m vpnd_lab.guests.smoke")
        line = next(x for x in result.output.splitlines() if x.startswith("SMOKE-RESULT "))
        smoke = json.loads(line.removeprefix("SMOKE-RESULT "))
        print(f"smoke: command starts after {up:.1f} s, scenario {smoke['seconds']:.1f} s "
              f"in the guest, {seconds:.1f} s wall including boot; ok={smoke['ok']}")
        out.update(smoke_wall_s=round(seconds, 1), smoke_in_guest_s=smoke["seconds"],
                   smoke_steps_s=smoke["steps"], smoke_ok=smoke["ok"])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

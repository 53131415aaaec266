"""Scratch network namespaces for adapter tests against the real kernel: unique names, always
deleted, skipped with a reason when the machine can't make them."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid

import pytest


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "iproute2 is not installed"
    return None


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


@contextlib.contextmanager
def scratch_netns(prefix: str = "vpndt"):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    ns = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        sh("ip", "netns", "del", ns, check=False)

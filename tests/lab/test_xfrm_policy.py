"""vpnd/kernel/xfrm_policy.py: the kernel's policies over NETLINK_XFRM. The host kernel has XFRM
(no ESP), so policies can be added and read back in a scratch network namespace."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_parse_of_a_policy_dump_message():
    """Bytes as the kernel sends them (xfrm_userpolicy_info + XFRMA_TMPL)."""
    import socket
    import struct

    from vpnd.kernel import xfrm_policy as x

    sel = struct.pack("=16s16sHHHHHBBB3xiI", socket.inet_aton("192.168.0.0"), socket.inet_aton("172.16.0.0"),
                      0, 0, 0, 0, socket.AF_INET, 16, 16, 0, 0, 0)
    info = sel + bytes(64 + 32) + struct.pack("=IIBBBB", 2, 8, 1, 0, 0, 0) + bytes(4)
    assert len(info) == 168
    tmpl = struct.pack("=16s4sB3xH2x16sIBBBxIII", socket.inet_aton("198.18.0.11"), b"\xc0\x01\x02\x03", 50,
                       socket.AF_INET, socket.inet_aton("198.18.0.2"), 2, 1, 0, 0, 0, 0, 0)
    attr = struct.pack("=HH", 4 + len(tmpl), 5) + tmpl
    p = x.parse_policy(info + attr)
    assert (str(p.src), str(p.dst), p.dir, p.priority) == ("172.16.0.0/16", "192.168.0.0/16", "out", 2)
    assert p.templates == (x.Template("198.18.0.2", "198.18.0.11", 0xc0010203, 2),)
    assert x.outbound_template("172.16.0.0/16", "192.168.0.0/16", [p]).dst == "198.18.0.11"
    assert x.outbound_template("172.16.0.0/16", "192.168.1.0/24", [p]) is None


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2")
def test_dump_reads_what_ip_xfrm_installed():
    ns = f"vpnd-xp-{uuid.uuid4().hex[:6]}"
    if subprocess.run(["ip", "netns", "add", ns]).returncode != 0:
        pytest.skip("no network namespaces here")
    try:
        for d, src, dst, t in (("out", "172.16.0.0/16", "192.168.0.0/16", "src 198.18.0.2 dst 198.18.0.11 spi 0x1234"),
                               ("fwd", "192.168.0.0/16", "172.16.0.0/16", "src 198.18.0.11 dst 198.18.0.2")):
            r = subprocess.run(["ip", "-n", ns, "xfrm", "policy", "add", "src", src, "dst", dst, "dir", d,
                                "priority", "1", "tmpl", *t.split(), "proto", "esp", "reqid", "2", "mode",
                                "tunnel"], capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"this kernel has no XFRM netlink: {r.stderr.strip()}")
        code = ("from vpnd.kernel import xfrm_policy as x; t = x.outbound_template('172.16.0.0/16', '192.168.0.0/16');"
                "print(t.src, t.dst, hex(t.spi), t.reqid, len(x.dump()))")
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
                           text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert r.stdout.split() == ["198.18.0.2", "198.18.0.11", "0x1234", "2", "2"], r.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns])

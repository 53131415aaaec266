"""Issue 16, host tier (libipsec + VXLAN per tunnel, tunnel MTU 1300): a TCP transfer of
1400-byte writes LAN -> VPC through a 1300-byte path with ICMP "fragmentation needed"
filtered stalls without vpnd's MSS clamp and completes with it.

Where it black-holes here: LAN and VPC hosts have MTU 1500 and announce MSS 1460; cgw's
vxlan1 (the tunnel interface) has MTU 1300, so cgw drops the 1440+-byte DF segments and its
"fragmentation needed" is filtered (nft in cgw and cloud, as on Internet paths that drop
ICMP). With vpnd running, the SYN and SYN-ACK through vxlan1 leave with MSS 1260
(1300 - 40) and every segment fits.
"""

from __future__ import annotations

import sys
import time

import pytest

from vpnd_lab.cli import active_interface, both_established, wait_until
from vpnd_lab.scenario import nft

pytestmark = pytest.mark.lab

BYTES = 1400 * 300

SERVER = """
import socket, threading
def serve(c):
    n = 0
    while (b := c.recv(65536)):
        n += len(b)
    c.sendall(str(n).encode()); c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5201)); s.listen(4)
while True:     # a thread per connection: the stalled one must not block the next
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""

CLIENT = """
import socket, sys, time
t0 = time.monotonic()
c = socket.create_connection((sys.argv[1], 5201), timeout=float(sys.argv[3]))
mss = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
chunk = b"x" * 1400
for _ in range(int(sys.argv[2]) // 1400):
    c.sendall(chunk)
c.shutdown(socket.SHUT_WR)
print(c.recv(64).decode(), mss, round(time.monotonic() - t0, 3))
"""

ICMP_FILTER = """table ip labicmp {
  chain icmp_out {
    type filter hook output priority 0; policy accept;
    icmp type destination-unreachable icmp code frag-needed drop
  }
  chain icmp_fwd {
    type filter hook forward priority 0; policy accept;
    icmp type destination-unreachable icmp code frag-needed drop
  }
}
"""


def transfer(lab, timeout: float = 5.0) -> tuple[bool, str]:
    client = lab.lab.dir / "client.py"
    client.write_text(CLIENT)
    r = lab.lab.exec("lan", sys.executable, str(client), lab.lab.plan.vpc_host, str(BYTES),
                     str(timeout), check=False, timeout=timeout + 10)
    out = r.stdout.strip()
    return r.returncode == 0 and out.split()[:1] == [str(BYTES)], out or r.stderr.strip()[-200:]


def test_transfer_stalls_without_the_clamp_and_completes_with_it(make_lab):
    lab = make_lab()
    server = lab.lab.dir / "server.py"
    server.write_text(SERVER)
    import subprocess
    srv = subprocess.Popen(["ip", "netns", "exec", lab.lab.ns("vpc"), sys.executable, str(server)])
    lab.lab.record("tcp-server", srv.pid)
    try:
        for role in ("cgw", "cloud"):
            nft(lab.lab, role, ICMP_FILTER)
        lab.start_vpnd()
        wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
        wait_until("route on tunnel 1", lambda: active_interface(lab.lab) == "vxlan1", 30)
        wait_until("the clamp set", lambda: lab.events("mss_clamp.set"), 10)
        rules = lab.lab.exec("cgw", "nft", "list", "chain", "inet", "vpnd", "mss-vpc1").stdout
        assert 'oifname "vxlan1" tcp flags syn tcp option maxseg size > 1260' in rules
        assert 'iifname "vxlan1" tcp flags syn tcp option maxseg size > 1260' in rules
        # without the clamp: vpnd stopped (its routes and SAs stay), the chain taken away
        lab.stop_vpnd()
        lab.lab.exec("cgw", "nft", "delete", "chain", "inet", "vpnd", "mss-vpc1")
        lab.lab.exec("lan", "ping", "-c", "3", "-i", "0.2", "-W", "2", lab.lab.plan.vpc_host)
        t0 = time.monotonic()
        ok, out = transfer(lab)
        without = round(time.monotonic() - t0, 2)
        assert not ok, f"the transfer should stall without a clamp: {out}"
        # vpnd again: it puts its clamp back at start
        n = len(lab.events("mss_clamp.set"))
        lab.start_vpnd()
        wait_until("the clamp set again", lambda: len(lab.events("mss_clamp.set")) > n, 20)
        ok, out = transfer(lab)
        if not ok:
            diag = [lab.lab.exec("cgw", "ip", "-o", "link", "show", check=False).stdout]
            for size in (1100, 1200, 1232, 1272):
                r = lab.lab.exec("lan", "ping", "-M", "do", "-c", "2", "-W", "1", "-s", str(size),
                                 lab.lab.plan.vpc_host, check=False)
                diag.append(f"ping -s {size}: rc {r.returncode}")
            out += "\n" + "\n".join(diag)
        assert ok, out
        print(f"\nwithout clamp: stalled (gave up after {without} s); with clamp: {out} "
              "(bytes, client MSS, seconds)")
    finally:
        srv.kill()
        srv.wait()
        lab.lab.forget("tcp-server")

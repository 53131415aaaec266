"""TCP-connect probes against the real kernel: a listener across two veth "tunnels"."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from vpnd_testing.netns_helpers import scratch_netns, sh
from test_probe import collect, inside
from vpnd.core.events import TunnelKey
from vpnd.probe import TcpProber

T1, T2 = TunnelKey("c1", "tunnel1"), TunnelKey("c1", "tunnel2")
FAR, PORT = "192.168.0.10", 8443


@pytest.fixture
def pair():
    """gw (172.16.0.1 and .2) and far (192.168.0.10) over tun1/tun2; far answers via far1."""
    with scratch_netns("vpndt") as gw, scratch_netns("vpndu") as far:
        sh("ip", "-n", gw, "addr", "add", "172.16.0.1/32", "dev", "lo")
        sh("ip", "-n", gw, "addr", "add", "172.16.0.2/32", "dev", "lo")
        sh("ip", "-n", far, "addr", "add", f"{FAR}/32", "dev", "lo")
        for i in (1, 2):
            sh("ip", "-n", gw, "link", "add", f"tun{i}", "type", "veth", "peer", "name", f"far{i}",
               "netns", far)
            sh("ip", "-n", gw, "link", "set", f"tun{i}", "up")
            sh("ip", "-n", far, "link", "set", f"far{i}", "up")
        # gw's own routes, as in route mode: the remote host via tun1, then tun2
        sh("ip", "-n", gw, "route", "add", f"{FAR}/32", "dev", "tun1", "metric", "100")
        sh("ip", "-n", gw, "route", "add", f"{FAR}/32", "dev", "tun2", "metric", "101")
        sh("ip", "-n", far, "route", "add", "172.16.0.0/24", "dev", "far1")
        yield gw, far


class Listener:
    """A TCP server in the far namespace that accepts and closes, noting who connected."""

    def __init__(self, ns: str, port: int = PORT) -> None:
        with inside(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((FAR, port))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.peers: list[str] = []
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, (addr, _) = self.sock.accept()
        except OSError:
            return
        self.peers.append(addr)
        conn.close()

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def prober(key, sink, interface="tun1", source="172.16.0.1", **kw):
    """A prober through tun1 from 172.16.0.1; `sink` is a list of results or a callback."""
    args = dict(destination=FAR, port=PORT, source=source, interface=interface, interval=0.05,
                timeout=0.3, on_result=sink.append if isinstance(sink, list) else sink)
    return TcpProber(key, **(args | kw))


async def until(cond, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.mark.lab
async def test_answered_with_connect_rtt_from_the_source_address(pair):
    gw, far = pair
    listener = Listener(far)
    results = []
    with inside(gw):
        p = prober(T1, results, source="172.16.0.2")
        p.start()
        try:
            await collect([p], results, 20)
        finally:
            await p.stop()
    await until(lambda: len(listener.peers) >= 20, what="accepts")
    listener.close()
    assert all(r.ok and 0 < r.rtt < 0.3 for r in results), results
    assert set(listener.peers) == {"172.16.0.2"}          # the configured source, not .1
    assert p.loss_ratio == 0 and p.rtt is not None and p.jitter is not None
    rtts = sorted(r.rtt for r in results)
    print(f"\ntcp connect rtt on veth: median {rtts[len(rtts) // 2] * 1e6:.0f} us, "
          f"max {rtts[-1] * 1e6:.0f} us (n={len(rtts)})")


@pytest.mark.lab
async def test_refused_is_lost_at_once(pair):
    """No listener: the far kernel answers RST, a loss long before the timeout."""
    gw, _ = pair
    results = []
    with inside(gw):
        p = prober(T1, results, timeout=2.0, interval=0.1)
        p.start()
        start = time.monotonic()
        try:
            await collect([p], results, 5)
        finally:
            await p.stop()
    assert not any(r.ok for r in results)
    assert time.monotonic() - start < 1.0                 # 5 losses, none waited for 2 s
    assert p.lost == 5 and p.loss_ratio == 1.0


@pytest.mark.lab
async def test_blackholed_is_lost_after_the_timeout_and_recovers(pair):
    gw, far = pair
    listener = Listener(far)
    results, stamps = [], []
    with inside(gw):
        p = prober(T1, lambda r: (results.append(r), stamps.append(time.monotonic())),
                   interval=0.1, timeout=0.25)
        p.start()
        try:
            await collect([p], results, 3)
            sh("ip", "netns", "exec", far, "nft", "add table inet vpndt; "
               f"add chain inet vpndt in {{ type filter hook input priority 0; }}; "
               f"add rule inet vpndt in tcp dport {PORT} drop")
            dropped = time.monotonic()
            await until(lambda: sum(not r.ok for r in results) >= 4, what="losses")
            first_loss = next(s for r, s in zip(results, stamps) if not r.ok)
            # the first lost probe was sent at most one interval before the drop
            assert 0.25 - 0.1 - 0.02 <= first_loss - dropped <= 0.25 + 0.1 + 0.15   # + load slack
            sh("ip", "netns", "exec", far, "nft", "delete table inet vpndt")
            await until(lambda: results[-1].ok, what="recovery")
        finally:
            await p.stop()
            listener.close()
    assert 0 < p.loss_ratio < 1


@pytest.mark.lab
async def test_timeout_is_honoured(pair):
    gw, far = pair
    sh("ip", "netns", "exec", far, "nft", "add table inet vpndt; "
       "add chain inet vpndt in { type filter hook input priority 0; }; "
       f"add rule inet vpndt in tcp dport {PORT} drop")
    results, stamps = [], []
    with inside(gw):
        p = prober(T1, lambda r: (results.append(r), stamps.append(time.monotonic())),
                   interval=5.0, timeout=0.15)
        start = time.monotonic()
        p.start()
        try:
            await collect([p], results, 1)
        finally:
            await p.stop()
    assert not results[0].ok
    assert 0.149 <= stamps[0] - start < 3.0          # the timeout, not the interval


@pytest.mark.lab
async def test_interface_deleted_and_recreated(pair):
    gw, far = pair
    listener = Listener(far)
    results = []
    with inside(gw):
        p = prober(T1, results)
        p.start()
        try:
            await collect([p], results, 3)
            sh("ip", "-n", gw, "link", "del", "tun1")
            start = len(results)
            await collect([p], results, start + 5)
            assert not any(r.ok for r in results[start + 1:start + 5])
            assert p._send_error is not None and "No such device" in p._send_error
            sh("ip", "-n", gw, "link", "add", "tun1", "type", "veth", "peer", "name", "far1",
               "netns", far)
            sh("ip", "-n", gw, "link", "set", "tun1", "up")
            sh("ip", "-n", far, "link", "set", "far1", "up")
            sh("ip", "-n", far, "route", "replace", "172.16.0.0/24", "dev", "far1")
            await until(lambda: results[-1].ok, what="recovery")
        finally:
            await p.stop()
            listener.close()
    assert p._send_error is None


@pytest.mark.lab
async def test_source_not_configured_is_lost_until_added(pair):
    gw, far = pair
    listener = Listener(far)
    results = []
    with inside(gw):
        p = prober(T1, results, source="172.16.0.9")
        p.start()
        try:
            await collect([p], results, 3)
            assert not any(r.ok for r in results) and "assign" in p._send_error
            sh("ip", "-n", gw, "addr", "add", "172.16.0.9/32", "dev", "lo")
            await until(lambda: results[-1].ok, what="recovery")
        finally:
            await p.stop()
            listener.close()
    assert "172.16.0.9" in listener.peers


@pytest.mark.lab
async def test_answer_on_the_other_tunnel_is_not_seen(pair):
    """The documented limit of a device-bound TCP probe: tun2's SYN-ACK comes back on tun1
    (far routes to gw via far1 only), the kernel matches it to no socket, tun2 looks dead.
    The ICMP prober sees the same return path as answered (test_probe.py)."""
    gw, far = pair
    listener = Listener(far)
    results = []
    with inside(gw):
        p = prober(T2, results, interface="tun2", interval=0.1, timeout=0.2)
        p.start()
        try:
            await collect([p], results, 3)
        finally:
            await p.stop()
            listener.close()
    assert not any(r.ok for r in results)


@pytest.mark.lab
async def test_unbound_probe_follows_the_routes(pair):
    """Policy mode (no interface): the kernel's routes pick the path and any answer counts."""
    gw, far = pair
    listener = Listener(far)
    results = []
    with inside(gw):
        p = prober(T1, results, interface=None)
        p.start()
        try:
            await collect([p], results, 3)
        finally:
            await p.stop()
            listener.close()
    assert all(r.ok for r in results)


LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(128); print("ready", flush=True)
while True:
    c, (peer, _) = s.accept(); c.close(); print(peer, flush=True)
"""


@pytest.mark.lab
def test_vpnd_fails_over_on_tcp_probes(make_lab):
    """The daemon picks the TCP prober from the config: tunnel 1 carries traffic while its
    connects succeed, tunnel 2 takes over when tunnel 1's data path is black-holed. (The lab's
    cloud answers on the tunnel a flow came in on, so device-bound probes see their answers.)"""
    import select
    import subprocess
    import sys

    from vpnd_lab import faults
    from vpnd_lab.cli import active_interface, both_established, wait_until

    lab = make_lab(preempt_delay=30.0)
    toml = lab.lab.dir / "vpnd.toml"
    toml.write_text(toml.read_text().replace(
        "[connection.health_check]\n", f'[connection.health_check]\nkind = "tcp"\nport = {PORT}\n'))
    server = subprocess.Popen(["ip", "netns", "exec", lab.lab.ns("vpc"), sys.executable, "-c",
                               LISTENER, lab.lab.plan.vpc_host, str(PORT)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        lab.start_vpnd()
        wait_until("both tunnels up", lambda: both_established(lab.lab), 30)
        wait_until("route on tunnel 1", lambda: active_interface(lab.lab) == "vxlan1", 20)
        seen = len(lab.events("connection.active_changed", active="tunnel2"))
        faults.blackhole(lab.lab, 0, "libipsec")
        wait_until("failover to tunnel 2", lambda: active_interface(lab.lab) == "vxlan2", 15,
                   interval=0.005)
        # routes move before the event is logged: wait for it
        e = lab.wait_event("connection.active_changed", after=seen, active="tunnel2", timeout=5)
        assert "probes lost" in e["reason"], e
        assert e["probes"]["tunnel2"]["recent"].endswith("+"), e
        ready, _, _ = select.select([server.stdout], [], [], 5)
        assert ready and server.stdout.readline().strip() == lab.lab.plan.cgw_lan   # vpnd's
    finally:
        server.kill()
        server.wait()

"""Issue 14 #2 and #9: the metrics endpoint.

#2: a metrics_listen that cannot be bound (port taken, host that does not resolve) ended the
daemon with a traceback, and `vpnd check` said OK. Now vpnd keeps supervising and says so (an
error log line and the systemd STATUS), and `check` refuses a host that does not resolve.

#9: prometheus_client's server spent a thread per connection and waited forever for a
request. Now the endpoint is served by the event loop with a bounded number of connections
and a read timeout, so slow or idle clients cannot block a scrape."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
import time
from types import SimpleNamespace

import pytest
import structlog

from vpnd_testing.config_toml import dumps, mutate, route_config
from vpnd import logs
from vpnd.config.load import load_text
from vpnd.metrics import Metrics


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _scrape(port: int, timeout: float = 5.0) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: identity\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return time.perf_counter() - t0, data


def _metrics() -> Metrics:
    m = Metrics()
    m.declare(load_text(dumps(route_config())))
    return m


# --- #9: bounded, with timeouts --------------------------------------------------------------

async def test_idle_clients_do_not_block_a_scrape_and_use_no_threads():
    m = _metrics()
    port = _free_port()
    server = await m.start_server(f"127.0.0.1:{port}", read_timeout=1.0, max_clients=4)
    threads = threading.active_count()
    idle = []
    try:
        for _ in range(20):             # more idle clients than slots, none sends a byte
            idle.append(socket.create_connection(("127.0.0.1", port)))
        idle[0].sendall(b"GET /metr")   # and one that stops half-way
        await asyncio.sleep(0.1)
        assert server.clients <= 4
        took, data = await asyncio.to_thread(_scrape, port)
        assert data.startswith(b"HTTP/1.1 200 ") and b"vpnd_tunnel_up{" in data
        assert took < 1.0, f"a scrape waited {took:.2f} s behind idle clients"
        assert threading.active_count() <= threads + 1      # the scrape's own to_thread
        await asyncio.sleep(1.3)        # the read timeout has closed every idle client
        for s in idle:
            s.settimeout(1)
            try:
                assert s.recv(100) == b""       # closed by the server
            except ConnectionResetError:
                pass
        assert server.clients == 0
    finally:
        for s in idle:
            s.close()
        await server.stop()


async def test_other_paths_and_methods_get_plain_http_errors():
    m = _metrics()
    port = _free_port()
    server = await m.start_server(f"127.0.0.1:{port}")
    try:
        def ask(req: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(req)
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
            return out
        assert (await asyncio.to_thread(ask, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await asyncio.to_thread(ask, b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        head = await asyncio.to_thread(ask, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
        assert (await asyncio.to_thread(ask, b"x" * 20000)).startswith(b"HTTP/1.1 400")
    finally:
        await server.stop()


# --- #2: a bind failure is an error, not the end -----------------------------------------------

@pytest.fixture
def log_out():
    out = io.StringIO()
    logs.configure("json", "info", stream=out)
    yield out
    structlog.reset_defaults()


async def test_port_taken_keeps_the_daemon_running_and_says_so(tmp_path, log_out):
    from test_hardening_ready import FakeNotifier, NoKernelDaemon, _until

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    doc = route_config()
    doc["daemon"].update(metrics_listen=f"127.0.0.1:{port}",
                         vici_socket=str(tmp_path / "charon.vici"),
                         control_socket=str(tmp_path / "control.sock"))
    d = NoKernelDaemon(load_text(dumps(doc)))
    n = FakeNotifier()
    d.sup.notifier = n
    task = asyncio.create_task(d.run())
    try:
        await _until(n, lambda s: any(k == "READY" for k, _ in s), 5)
        assert not task.done()
        status = next(t for k, t in n.sent if k == "READY")
        assert f"metrics endpoint 127.0.0.1:{port} unavailable" in status
    finally:
        d.sup.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        taken.close()
    lines = [json.loads(x) for x in log_out.getvalue().splitlines()]
    err = next(e for e in lines if e["event"] == "metrics.unavailable")
    assert err["level"] == "error" and err["listen"] == f"127.0.0.1:{port}"
    assert "address already in use" in err["error"].lower()
    assert "Traceback" not in log_out.getvalue()


async def test_unresolvable_host_is_an_error_log_not_a_traceback(log_out):
    m = _metrics()
    with pytest.raises(OSError) as exc:
        await m.start_server("no-such-host.invalid:9456")
    assert "no-such-host.invalid" in str(exc.value)


def test_check_refuses_a_host_that_does_not_resolve(tmp_path, capsys):
    from vpnd.config import check

    path = tmp_path / "c.toml"
    path.write_text(dumps(mutate(route_config(), "daemon.metrics_listen",
                                 "no-such-host.invalid:9456")))
    os.chmod(path, 0o600)
    assert check.main(SimpleNamespace(config=str(path))) == 1
    err = capsys.readouterr().err
    assert "error: daemon.metrics_listen: host 'no-such-host.invalid' does not resolve" in err


def test_check_accepts_localhost_and_literals(tmp_path, capsys):
    from vpnd.config import check

    for listen in ("localhost:9456", "127.0.0.1:9456", "[::1]:9456", ""):
        path = tmp_path / "c.toml"
        path.write_text(dumps(mutate(route_config(), "daemon.metrics_listen", listen)))
        os.chmod(path, 0o600)
        assert check.main(SimpleNamespace(config=str(path))) == 0, capsys.readouterr().err

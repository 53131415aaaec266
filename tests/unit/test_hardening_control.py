"""Defect 8 of issue 14: one read deadline per request on the control socket, from accept
(or the previous reply) to the complete request line; blank lines do not restart it. Before,
each line restarted the timeout, so a few slow-loris clients trickling "\\n" held every slot
for ever and the operator's `vpnd status` got "busy"."""

from __future__ import annotations

import socket
import threading
import time

from vpnd_testing.control_harness import Harness, config
from test_control import cli


def loris(path: str, stop: threading.Event, every: float = 0.2) -> threading.Thread:
    """A client that never finishes a request: a blank line every `every` seconds."""
    def run():
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            while not stop.is_set():
                s.sendall(b"\n")
                stop.wait(every)
        except OSError:
            pass            # closed by the server: what we want
        finally:
            s.close()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_slow_loris_clients_cannot_lock_the_operator_out(tmp_path):
    path = str(tmp_path / "ctl.sock")
    h = Harness(path, config("c", path=path), read_timeout=1.0, max_clients=4)
    stop = threading.Event()
    try:
        h.up()
        lorises = [loris(path, stop) for _ in range(4)]
        time.sleep(0.3)
        rc, out, err = cli("status", "--socket", path)
        assert rc != 0 and "clients connected; try again" in err, ("all slots taken: busy", err)
        # within one read timeout (plus slack for a loaded machine) every loris is gone
        deadline = time.monotonic() + 10.0
        while True:
            rc, out, err = cli("status", "--socket", path)
            if rc == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rc == 0 and "traffic on t1" in out, (rc, err)
        for t in lorises:
            t.join(5)
        assert not any(t.is_alive() for t in lorises), "a loris still holds its connection"
    finally:
        stop.set()
        h.close()


def test_a_blank_line_does_not_extend_the_deadline(tmp_path):
    path = str(tmp_path / "ctl.sock")
    h = Harness(path, config("c", path=path), read_timeout=0.5)
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        t0 = time.monotonic()
        s.settimeout(5)
        buf = b""
        try:
            while b"\n" not in buf.lstrip(b"\n"):
                s.sendall(b"\n")
                time.sleep(0.1)
                s.setblocking(False)
                try:
                    buf += s.recv(4096)
                except BlockingIOError:
                    pass
                s.setblocking(True)
                if time.monotonic() - t0 > 4:
                    break
        except OSError:
            pass
        took = time.monotonic() - t0
        assert b'"timeout"' in buf, buf
        assert took < 2.5, f"closed after {took:.1f} s: the blank lines extended the 0.5 s deadline"
        s.close()
        # a connection that keeps sending real requests is served each time
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        f = s.makefile("rwb")
        for _ in range(3):
            f.write(b'{"command": "status"}\n')
            f.flush()
            assert b'"ok":true' in f.readline()
            time.sleep(0.3)
        s.close()
    finally:
        h.close()

"""The control socket: protocol, hostile input, permissions, the CLI, against the real core."""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpnd_testing.control_harness import PSKS, Harness, config
from vpnd.control import cli as control_cli
from vpnd.core import events as E
from vpnd.control.server import MAX_REQUEST, ControlError, ControlServer, request

REPO = Path(__file__).resolve().parents[2]
# the default run is bounded; a long run: VPND_FUZZ_EXAMPLES=20000 pytest tests/unit/test_control.py -k fuzz
FUZZ_EXAMPLES = int(os.environ.get("VPND_FUZZ_EXAMPLES", "200"))


@pytest.fixture
def make(tmp_path):
    made = []

    def factory(*names: str, **server_options) -> Harness:
        path = str(tmp_path / f"ctl{len(made)}.sock")
        h = Harness(path, config(*names, path=path), **server_options)
        made.append(h)
        return h

    yield factory
    for h in made:
        h.close()


def raw(path: str, data: bytes, *, shut: bool = False, timeout: float = 5.0) -> list[dict]:
    """Send bytes, read every reply line until the server closes (or `timeout`)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    if shut:
        s.shutdown(socket.SHUT_WR)
    buf = b""
    try:
        while chunk := s.recv(65536):
            buf += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    return [json.loads(line) for line in buf.splitlines()]


def cli(*argv: str) -> tuple[int, str, str]:
    args = _parser().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    rc = control_cli.main(args, out=out, err=err)
    for psk in PSKS:
        assert psk not in out.getvalue() + err.getvalue()
    assert "Traceback" not in err.getvalue()
    return rc, out.getvalue(), err.getvalue()


def _parser() -> argparse.ArgumentParser:
    from vpnd.cli import build_parser
    return build_parser()


# --- the protocol ------------------------------------------------------------------------

def test_status_round_trip_shows_core_and_probe_facts_without_secrets(make):
    h = make("c")
    h.up()
    reply = request(h.path, {"command": "status", "id": 7})
    assert reply["ok"] and reply["id"] == 7
    s = reply["status"]
    assert s["version"] == 1 and s["daemon"]["pid"] == os.getpid()
    c = s["connections"]["c"]
    assert c["active"] == "t1" and c["routing"] == "route"
    t1 = c["tunnels"]["t1"]
    assert (t1["ike"], t1["child"], t1["active"], t1["usable"]) == ("ESTABLISHED", "INSTALLED", True, True)
    assert t1["probe"]["last_rtt_ms"] == 1.2 and t1["probe"]["loss_percent"] == 0.0
    assert t1["bgp"] is None and t1["since"].endswith("Z")
    assert c["tunnels"]["t2"]["active"] is False
    text = json.dumps(s)
    assert all(p not in text for p in PSKS)


def test_status_before_charon_is_heard(make):
    h = make("c")
    t = request(h.path, {"command": "status"})["status"]["connections"]["c"]["tunnels"]["t1"]
    assert t["ike"] == "DOWN" and t["since"] is None and t["probe"]["sent"] == 0


def test_bgp_and_bfd_state_shown_once_known(make):
    h = make("c")
    h.up()
    h.feed(E.BgpSessionChanged(E.TunnelKey("c", "t1"), True), E.BfdChanged(E.TunnelKey("c", "t1"), False))
    tunnels = request(h.path, {"command": "status"})["status"]["connections"]["c"]["tunnels"]
    assert tunnels["t1"]["bgp"] == {"state": "Established", "bfd": "down"}
    assert tunnels["t2"]["bgp"] is None, "route mode and nothing heard: no BGP column value"
    rc, out, _ = cli("status", "--socket", h.path)
    assert "Established bfd down" in out


def test_drain_moves_traffic_and_undrain_brings_it_back(make):
    h = make("c")
    h.up()
    r = request(h.path, {"command": "drain", "tunnel": "t1"})
    assert r["ok"] and r["active"] == "t2" and "drained" in r["reason"], r
    assert h.core()["c"]["tunnels"]["t1"]["drained"]
    r = request(h.path, {"command": "undrain", "connection": "c", "tunnel": "t1"})
    assert r["ok"] and r["active"] == "t1", r      # preempt_delay 0 in this config


def test_drain_with_no_alternative_warns(make):
    h = make("c")
    h.up(tunnels=("t1",))
    r = request(h.path, {"command": "drain", "tunnel": "t1"})
    assert r["ok"] and r["active"] == "t1" and "no other tunnel" in r["warning"]


def test_failover_pins_and_unusable_target_changes_nothing(make):
    h = make("c", "d")
    h.up("c")
    h.up("d", tunnels=("t1",))
    r = request(h.path, {"command": "failover", "connection": "c", "to": "t2"})
    assert r["ok"] and r["active"] == "t2" and r["pinned"] == "t2"
    before = h.core()
    r = request(h.path, {"command": "failover", "connection": "d", "to": "t2"})
    assert not r["ok"] and r["code"] == "not_usable"
    assert "CHILD SA not installed" in r["error"] and "traffic stays on t1" in r["error"]
    assert h.core() == before


@pytest.mark.parametrize("req, code, words", [
    ({"command": "drain", "tunnel": "t1"}, "bad_request", ["--connection", "c, d"]),
    ({"command": "drain", "connection": "x", "tunnel": "t1"}, "unknown_connection", ["'x'", "c, d"]),
    ({"command": "drain", "connection": "c", "tunnel": "t9"}, "unknown_tunnel", ["'t9'", "t1, t2"]),
    ({"command": "failover", "connection": "c"}, "bad_request", ["'to'"]),
    ({"command": "reboot"}, "unknown_command", ["status, failover, drain, undrain"]),
    ({"command": 3}, "bad_request", ["string"]),
    ({"command": "drain", "connection": "c", "tunnel": ["t1"]}, "bad_request", ["'tunnel'"]),
    ({"command": "status", "force": True}, "bad_request", ["'force'"]),
    (["status"], "bad_request", ["JSON object"]),
])
def test_bad_requests_get_clear_errors_and_change_nothing(make, req, code, words):
    h = make("c", "d")
    h.up("c")
    before = h.core()
    r = request(h.path, req)
    assert not r["ok"] and r["code"] == code, r
    assert all(w in r["error"] for w in words), r["error"]
    assert h.core() == before


def test_garbage_then_a_good_request_on_the_same_connection(make):
    h = make("c")
    replies = raw(h.path, b"\xff\xfe\n{nope\n" + b"[" * 20000 + b"\n" + b'{"command":"status"}\n',
                  shut=True)
    assert [r["ok"] for r in replies] == [False, False, False, True]
    assert "UTF-8" in replies[0]["error"] and "not valid JSON" in replies[1]["error"]


def test_oversized_request_is_refused_and_closed(make):
    h = make("c")
    h.up()
    before = h.core()
    big = b'{"command":"status","pad":"' + b"x" * (MAX_REQUEST + 10) + b'"}\n'
    replies = raw(h.path, big)
    assert len(replies) == 1 and replies[0]["code"] == "too_large"
    endless = raw(h.path, b"y" * (4 * MAX_REQUEST))         # never a newline
    assert endless[0]["code"] == "too_large"
    assert h.core() == before
    assert request(h.path, {"command": "status"})["ok"]


def test_slow_client_times_out_and_holds_nobody_else(make):
    h = make("c", read_timeout=2.0)
    slow = socket.socket(socket.AF_UNIX)
    slow.connect(h.path)
    slow.sendall(b'{"command": "sta')
    t0 = time.monotonic()
    assert request(h.path, {"command": "status"})["ok"], "another client is served meanwhile"
    assert time.monotonic() - t0 < 1.5, "served before the slow client's timeout, not after it"
    slow.settimeout(3)
    reply = json.loads(slow.recv(4096))
    assert reply["code"] == "timeout" and slow.recv(10) == b"", "closed after the timeout"
    slow.close()
    idle = socket.socket(socket.AF_UNIX)
    idle.connect(h.path)
    idle.settimeout(3)
    assert json.loads(idle.recv(4096))["code"] == "timeout"
    idle.close()


def test_half_closed_client_gets_its_reply(make):
    h = make("c")
    replies = raw(h.path, b'{"command":"status"}', shut=True)
    assert len(replies) == 1 and replies[0]["ok"]


def test_too_many_clients_are_told_busy(make):
    h = make("c", max_clients=2)
    held = [socket.socket(socket.AF_UNIX) for _ in range(2)]
    for s in held:
        s.connect(h.path)
    time.sleep(0.05)
    assert raw(h.path, b"")[0]["code"] == "busy"
    for s in held:
        s.close()


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                 lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
                     st.sampled_from(["command", "connection", "tunnel", "to", "id", "x"]), kids,
                     max_size=4), max_leaves=12).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"command": st.sampled_from(["status", "failover", "drain", "undrain", "x"])},
                          optional={"connection": st.sampled_from(["c", "d", "", None, 1]),
                                    "tunnel": st.sampled_from(["t1", "t2", "t3", None]),
                                    "to": st.sampled_from(["t1", "t2", "t3", 0])})
    .map(lambda v: json.dumps(v).encode()),
))
def test_fuzz_requests_never_crash_and_non_root_changes_nothing(fuzz_target, data):
    h = fuzz_target
    for uid in (65534, 0):
        before = h.core()
        reply = h.call(h.server.handle(data, uid))
        json.dumps(reply)
        assert isinstance(reply["ok"], bool)
        if not reply["ok"]:
            assert reply["code"] != "internal", reply
            assert isinstance(reply["error"], str) and reply["error"]
        if uid != 0 or not reply["ok"]:
            assert h.core() == before, (uid, reply)


@pytest.fixture(scope="module")
def fuzz_target():
    """One daemon for all examples (state may change between them; each compares to its own
    before)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "fuzz.sock")
        h = Harness(path, config("c", path=path), read_timeout=0.1)
        h.up()
        yield h
        h.close()


@settings(max_examples=max(25, FUZZ_EXAMPLES // 8), deadline=None)
@given(chunks=st.lists(st.binary(max_size=2000), max_size=6), shut=st.booleans())
def test_fuzz_socket_stream_every_reply_is_a_json_line(fuzz_target, chunks, shut):
    h = fuzz_target
    before = h.core()
    data = b"".join(chunks)
    replies = raw(h.path, data, shut=shut)
    assert all(isinstance(r["ok"], bool) for r in replies)
    assert h.core() == before or any(r.get("ok") and "active" in r for r in replies)
    assert request(h.path, {"command": "status"})["ok"], "still serving"


# --- the socket file ---------------------------------------------------------------------

def test_socket_file_mode_stale_replacement_and_removal(tmp_path):
    path = str(tmp_path / "run" / "ctl.sock")
    os.makedirs(tmp_path / "run")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()                                        # a crashed daemon's leftover
    h = Harness(path, config("c", path=path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert request(path, {"command": "status"})["ok"]
    with pytest.raises(ControlError, match="another vpnd"):
        h.call(ControlServer(path, status=dict, apply=None).start())
    h.close()
    assert not os.path.exists(path), "removed on stop"
    Path(path).write_text("not mine")
    with pytest.raises(ControlError, match="not a socket"):
        Harness(path, config("c", path=path))
    assert Path(path).read_text() == "not mine"


# --- permissions -------------------------------------------------------------------------

NOBODY = 65534


def _as_nobody(*argv: str) -> subprocess.CompletedProcess:
    """The CLI run by a local non-root user (system python: the venv lives under /root)."""
    return subprocess.run(["/usr/bin/python3", "-m", "vpnd", *argv], user=NOBODY, group=NOBODY,
                          extra_groups=[], cwd="/", capture_output=True, text=True, timeout=20,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs root to run a client as nobody")
def test_non_root_cannot_connect_and_cannot_change_anything(tmp_path):
    d = tempfile.mkdtemp(prefix="vpnd-ctl-")
    os.chmod(d, 0o755)          # the user can reach the socket file; its mode is what stops it
    path = os.path.join(d, "ctl.sock")
    h = Harness(path, config("c", path=path))
    try:
        h.up()
        before = h.core()
        p = _as_nobody("status", "--socket", path)
        assert p.returncode == control_cli.EXIT_PERMISSION, p
        assert "permission denied" in p.stderr and "root" in p.stderr
        os.chmod(path, 0o666)   # someone loosened the file: SO_PEERCRED still guards changes
        p = _as_nobody("status", "--socket", path, "--json")
        assert p.returncode == 0 and json.loads(p.stdout)["connections"]["c"]["active"] == "t1"
        for cmd in (["drain", "t1"], ["failover", "--to", "t2"], ["undrain", "t1"]):
            p = _as_nobody(*cmd, "--socket", path)
            assert p.returncode == control_cli.EXIT_PERMISSION, p
            assert "only root" in p.stderr and "uid is 65534" in p.stderr
        assert h.core() == before
    finally:
        h.close()
        os.rmdir(d)


# --- the CLI -----------------------------------------------------------------------------

def test_cli_status_table_and_json(make):
    h = make("c")
    h.up()
    rc, out, _ = cli("status", "--socket", h.path)
    assert rc == 0
    lines = out.splitlines()
    assert any(line.startswith("c (route mode): traffic on t1 -- t1 usable") for line in lines), out
    header = next(line for line in lines if "TUNNEL" in line).split()
    assert header == ["TUNNEL", "IKE", "CHILD", "ACTIVE", "RTT", "LOSS", "BGP", "SINCE", "REASON"]
    t1 = next(line for line in lines if line.strip().startswith("t1"))
    assert "ESTABLISHED #" in t1 and "INSTALLED #" in t1 and " yes " in t1 and "1.2 ms" in t1
    rc, out, _ = cli("status", "--json", "--socket", h.path)
    assert rc == 0 and json.loads(out)["connections"]["c"]["active"] == "t1"


def test_cli_drain_failover_undrain(make):
    h = make("c")
    h.up()
    rc, out, _ = cli("drain", "t1", "--socket", h.path)
    assert rc == 0 and "c: t1 drained; active tunnel: t2" in out
    rc, out, _ = cli("undrain", "t1", "--socket", h.path)
    assert rc == 0 and "active tunnel: t1" in out
    rc, out, _ = cli("failover", "--to", "t2", "--connection", "c", "--socket", h.path)
    assert rc == 0 and "active tunnel: t2" in out
    rc, _, err = cli("drain", "t7", "--socket", h.path)
    assert rc == control_cli.EXIT_REFUSED and "no tunnel named 't7'; known: t1, t2" in err


def test_cli_finds_the_socket_in_the_config(make, tmp_path):
    h = make("c")
    conf = tmp_path / "vpnd.toml"
    conf.write_text(f'[daemon]\ncontrol_socket = "{h.path}"\n')
    rc, out, _ = cli("status", "-c", str(conf))
    assert rc == 0 and "c (route mode)" in out
    rc, _, err = cli("status", "-c", str(tmp_path / "missing.toml"))
    assert rc == control_cli.EXIT_USAGE and "no such file" in err


def test_cli_when_vpnd_is_not_running(tmp_path):
    rc, _, err = cli("status", "--socket", str(tmp_path / "none.sock"))
    assert rc == control_cli.EXIT_NOT_RUNNING and "vpnd is not running: no control socket" in err
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    rc, _, err = cli("drain", "t1", "--socket", str(tmp_path / "stale.sock"))
    assert rc == control_cli.EXIT_NOT_RUNNING and "stale socket" in err


def test_cli_entry_point_exit_code_without_daemon(tmp_path):
    p = subprocess.run([sys.executable, "-m", "vpnd", "status", "--socket", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=20)
    assert p.returncode == 3 and "not running" in p.stderr and "Traceback" not in p.stderr


def test_status_round_trip_latency(make):
    h = make("c")
    h.up()
    samples = []
    for _ in range(200):
        t0 = time.perf_counter()
        assert request(h.path, {"command": "status"})["ok"]
        samples.append(time.perf_counter() - t0)
    samples.sort()
    med, p99 = statistics.median(samples) * 1000, samples[197] * 1000
    print(f"control socket status round trip: median {med:.3f} ms, p99 {p99:.3f} ms (n=200)")
    assert med < 50

"""`vpnd psk rotate`'s pure parts: which tunnels a reload rotates, the control command, the
CLI's request. The new key never travels on the socket or argv."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from types import SimpleNamespace

from vpnd_testing.control_harness import PSKS, config
from vpnd.config.model import Secret
from vpnd.control import cli
from vpnd.control.server import ControlServer
from vpnd.run.rotation import RotationRefused, psk_of, psk_only_changes, with_psk

NEW = "brand-new-key-never-shown-4Tq"


def test_a_key_only_change_is_a_rotation_anything_else_is_not():
    old = config("c")
    new = with_psk(old, "c", "t2", Secret(NEW))
    assert psk_of(new, "c", "t2").reveal() == NEW and psk_of(new, "c", "t1").reveal() == PSKS[0]
    assert psk_only_changes(old, new) == [("c", "t2")]
    assert psk_only_changes(old, old) == []
    conn = new.connections[0]
    other = replace(new, connections=(replace(conn, tunnels=(conn.tunnels[0], replace(
        conn.tunnels[1], remote_id="elsewhere")),),))
    assert psk_only_changes(old, other) == []       # a key and more: the reload restarts it


def status():
    return {"connections": {"c": {"active": "t1", "tunnels": {"t1": {}, "t2": {}}}}}


def server(rotate):
    async def apply(_):
        pass
    return ControlServer("/nonexistent", status=status, apply=apply, rotate=rotate,
                         admin_uids=frozenset({0}))


def ask(srv, uid=0, **req):
    return asyncio.run(srv.handle(json.dumps({"command": "psk_rotate", **req}).encode(), uid))


def test_the_command_starts_aborts_and_refuses_with_reasons():
    calls = []

    async def rotate(conn, tunnel, abort):
        calls.append((conn, tunnel, abort))
        if tunnel == "t1":
            raise RotationRefused("c: the configured keys equal the running ones")
        return {"connection": conn, "phase": "draining"}

    srv = server(rotate)
    assert ask(srv) == {"ok": True, "connection": "c", "rotation": {"connection": "c", "phase": "draining"}}
    assert ask(srv, tunnel="t2", abort="yes")["ok"] and calls[-1] == ("c", "t2", True)
    r = ask(srv, tunnel="t1")
    assert not r["ok"] and r["code"] == "refused" and "equal the running" in r["error"]
    assert ask(srv, tunnel="t9")["code"] == "unknown_tunnel"
    assert ask(srv, psk=NEW)["code"] == "bad_request"             # no field for a key
    assert NEW not in json.dumps(ask(srv, psk=NEW))
    assert ask(srv, uid=1000)["code"] == "not_permitted"
    assert len(calls) == 3


def test_the_cli_sends_names_only():
    args = SimpleNamespace(command="psk", connection=None, tunnel="t2", abort=True)
    assert cli.payload(args) == {"command": "psk_rotate", "tunnel": "t2", "abort": "yes"}
    args = SimpleNamespace(command="psk", connection="c", tunnel=None, abort=False)
    assert cli.payload(args) == {"command": "psk_rotate", "connection": "c"}


def test_the_cli_follows_until_done_or_waiting_for_the_cloud(monkeypatch):
    import io
    states = iter([{"connection": "c", "tunnel": "t1", "phase": "proving", "reason": "x"},
                   {"connection": "c", "tunnel": "t1", "phase": "waiting_for_cloud", "reason": "refused"}])
    monkeypatch.setattr(cli, "request", lambda path, p: {"ok": True, "status": {
        "psk_rotation": {"c": next(states)}}})
    out = io.StringIO()
    first = {"connection": "c", "rotation": {"connection": "c", "tunnel": "t1", "phase": "draining",
                                             "reason": "moving"}}
    rc = cli._follow_rotation("/x", first, SimpleNamespace(no_wait=False, abort=False), out,
                              io.StringIO(), poll=0)
    assert rc == cli.EXIT_WAITING
    assert [line.split(":")[1].split()[1] for line in out.getvalue().splitlines()] == \
        ["draining", "proving", "waiting_for_cloud"]


def test_an_abort_typo_is_refused_not_taken_for_a_start():
    calls = []

    async def rotate(conn, tunnel, abort):
        calls.append(abort)
        return {"connection": conn, "phase": "draining"}

    srv = server(rotate)
    assert ask(srv, abort="YES")["code"] == "bad_request"
    assert ask(srv, abort="no")["ok"] and calls == [False]


def test_the_cli_stops_following_when_the_rotation_state_is_gone(monkeypatch):
    """vpnd restarted mid-rotation: status has no psk_rotation; the CLI must not poll forever."""
    import io
    monkeypatch.setattr(cli, "request", lambda path, p: {"ok": True, "status": {}})
    err = io.StringIO()
    first = {"connection": "c", "rotation": {"connection": "c", "tunnel": "t1", "phase": "proving",
                                             "reason": "x"}}
    rc = cli._follow_rotation("/x", first, SimpleNamespace(no_wait=False, abort=False),
                              io.StringIO(), err, poll=0)
    assert rc == cli.EXIT_REFUSED and "state is gone" in err.getvalue()

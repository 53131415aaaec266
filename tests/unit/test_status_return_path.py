"""`vpnd status` shows the tunnel each tunnel's answers came back through, and a standby
whose losses are the return tunnel's ("blinded"), over the real control socket."""

from __future__ import annotations

import json

from vpnd_testing.control_harness import Harness, config
from test_control import cli, make  # noqa: F401  (make is a fixture)
from vpnd.control.server import request
from vpnd.core import events as E

T1, T2 = E.TunnelKey("c", "t1"), E.TunnelKey("c", "t2")


def vendor_black_hole(h: Harness) -> None:
    """The cloud sends on t1; then t1 is black-holed: every probe of both tunnels is lost."""
    h.feed(E.ProbeResult(T1, True, 0.001, "t1"), E.ProbeResult(T2, True, 0.001, "t1"))
    for _ in range(3):
        h.feed(E.ProbeResult(T1, False), E.ProbeResult(T2, False))


def test_status_names_the_return_tunnel_and_the_blinded_standby(make):  # noqa: F811
    h = make("c")
    h.up()
    vendor_black_hole(h)
    c = request(h.path, {"command": "status"})["status"]["connections"]["c"]
    assert c["active"] == "t2" and "blinded" in c["reason"], c["reason"]
    t1, t2 = c["tunnels"]["t1"], c["tunnels"]["t2"]
    assert t1["replies_via"] == "t1" and t1["blinded"] is None and not t1["usable"]
    assert t2["replies_via"] == "t1" and t2["usable"] and t2["why_not_usable"] is None
    assert t2["blinded"] == "replies return through t1, which is failing"
    rc, out, _ = cli("status", "--socket", h.path)
    row = next(line for line in out.splitlines() if line.strip().startswith("t2"))
    assert rc == 0 and "blinded: replies return through t1, which is failing" in row, out


def test_status_says_when_answers_return_through_another_tunnel(make):  # noqa: F811
    h = make("c")
    h.up()
    h.feed(E.ProbeResult(T2, True, 0.001, "t1"))
    s = request(h.path, {"command": "status"})["status"]["connections"]["c"]["tunnels"]
    assert s["t2"]["replies_via"] == "t1" and s["t2"]["blinded"] is None
    assert s["t1"]["replies_via"] is None          # unknown: nothing said which way it came
    rc, out, _ = cli("status", "--socket", h.path)
    row = next(line for line in out.splitlines() if line.strip().startswith("t2"))
    assert "replies return through t1" in row, out
    assert json.loads(cli("status", "--json", "--socket", h.path)[1])

"""Defects 3 and 16 of issue 14, against the fake charon (strongSwan's own codec):

- an odd `list-sas` reply (a non-numeric uniqueid, child-sas as a list, bytes-in "n/a") is
  parsed defensively: the odd SA or field is skipped, logged and counted, the poll task keeps
  resyncing and the SA metrics keep moving;
- the poll task survives any exception (a supervised loop that logs and continues);
- while charon is unreachable the adapter knows since when, the last error and that it
  retries; reconnect failures are logged at warning, the first one then rate-limited."""

from __future__ import annotations

import asyncio
import shutil
import tempfile

import pytest
import structlog

from vpnd_testing.fake_charon import FakeCharon
from vpnd.charon.adapter import CharonAdapter, sa_stats, snapshot_from_sas
from vpnd.core.events import SaSnapshot, TunnelKey, TunnelSa
from vpnd.charon.vici import Backoff

T1 = TunnelKey("c1", "t1")
T2 = TunnelKey("c1", "t2")
TUNNELS = {"vpnd-c1-t1": T1, "vpnd-c1-t2": T2}


def ike(uid, state="ESTABLISHED", **extra):
    return {"uniqueid": str(uid), "version": "2", "state": state, "established": "5", **extra}


def child(uid, state="INSTALLED", name="vpnd-c1-t1", **extra):
    return {"name": name, "uniqueid": str(uid), "state": state, "install-time": "4",
            "bytes-in": "100", "bytes-out": "200", "packets-in": "1", "packets-out": "2", **extra}


GOOD_T2 = {"vpnd-c1-t2": ike(7, **{"child-sas": {"vpnd-c1-t2-8": child(8, name="vpnd-c1-t2")}})}

ODD = [
    ("non-numeric IKE uniqueid", {"vpnd-c1-t1": ike("abc", **{"child-sas": {"x": child(2)}})}),
    ("child-sas as a list", {"vpnd-c1-t1": ike(1, **{"child-sas": [child(2)]})}),
    ("bytes-in n/a", {"vpnd-c1-t1": ike(1, **{"child-sas": {"x": child(2, **{"bytes-in": "n/a"})}})}),
    ("non-numeric child uniqueid", {"vpnd-c1-t1": ike(1, **{"child-sas": {"x": child("?")}})}),
    ("SA section is a list", {"vpnd-c1-t1": [ike(1)]}),
    ("established n/a", {"vpnd-c1-t1": ike(1, established="n/a", **{"child-sas": {"x": child(2)}})}),
]


@pytest.mark.parametrize("what,entry", ODD, ids=[w for w, _ in ODD])
def test_odd_list_sas_entries_are_skipped_not_fatal(what, entry):
    """Pure: the odd SA or field goes, the rest of the reply still counts."""
    sas = [entry, GOOD_T2]
    snap = snapshot_from_sas(sas, TUNNELS)
    assert TunnelSa(T2, 7, "ESTABLISHED", 8, "INSTALLED") in snap.sas
    stats = sa_stats(sas, TUNNELS, 1000.0)
    assert stats[T2].bytes_in == 100 and stats[T2].child_id == 8


def test_odd_counter_keeps_the_sa_and_drops_only_the_field():
    sas = [{"vpnd-c1-t1": ike(1, **{"child-sas": {"x": child(2, **{"bytes-in": "n/a"})}})}]
    assert snapshot_from_sas(sas, TUNNELS).sas[0] == TunnelSa(T1, 1, "ESTABLISHED", 2, "INSTALLED")
    st = sa_stats(sas, TUNNELS, 1000.0)[T1]
    assert (st.bytes_in, st.bytes_out, st.child_id) == (0, 200, 2)


@pytest.fixture
async def charon():
    d = tempfile.mkdtemp(prefix="vpnd-hard-")
    c = await FakeCharon(f"{d}/charon.vici").start()
    yield c
    await c.stop()
    shutil.rmtree(d, ignore_errors=True)


async def until(cond, timeout=3.0):
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_poll_survives_odd_replies_and_keeps_resyncing(charon):
    events, stats = [], []
    a = CharonAdapter(charon.path, events.append, backoff=Backoff(0.005, 0.05),
                      poll_interval=0.05, on_stats=stats.append)
    a.desire(type("D", (), {"conns": {}, "secrets": (), "tunnels": TUNNELS})())
    a._desired = None               # nothing to load: only the tunnel names matter here
    await a.start()
    try:
        await until(lambda: any(isinstance(e, SaSnapshot) for e in events))
        for _, entry in ODD:
            charon.sas = [entry, GOOD_T2]
            n = len(stats)
            await until(lambda: len(stats) >= n + 2)
        assert a._poller is not None and not a._poller.done(), "the poll task died"
        assert a.odd_sas >= len(ODD)
        # and it recovers: a sane reply after the odd ones is reported as is
        charon.sas = [{"vpnd-c1-t1": ike(3, **{"child-sas": {"x": child(4, **{"bytes-in": "5000"})}})}]
        await until(lambda: stats and stats[-1][T1].bytes_in == 5000)
        assert any(isinstance(e, SaSnapshot) and TunnelSa(T1, 3, "ESTABLISHED", 4, "INSTALLED") in e.sas
                   for e in events)
    finally:
        await a.stop()


async def test_poll_task_outlives_a_bug(charon, monkeypatch):
    """Any exception in one poll round (not only VICI's) is logged and the loop goes on."""
    events = []
    a = CharonAdapter(charon.path, events.append, backoff=Backoff(0.005, 0.05), poll_interval=0.05)
    a.desire(type("D", (), {"conns": {}, "secrets": (), "tunnels": TUNNELS})())
    a._desired = None
    await a.start()
    try:
        await until(lambda: any(isinstance(e, SaSnapshot) for e in events))
        real = a.resync
        calls = {"n": 0}

        async def broken():
            calls["n"] += 1
            if calls["n"] <= 2:
                raise RuntimeError("boom")
            return await real()

        monkeypatch.setattr(a, "resync", broken)
        with structlog.testing.capture_logs() as logs:
            await until(lambda: calls["n"] >= 4, timeout=5)
        assert not a._poller.done()
        assert any(e["event"] == "charon.poll_error" and e["log_level"] == "error" for e in logs), logs
    finally:
        await a.stop()


async def test_unreachable_charon_is_reported_and_logged_at_warning(charon):
    """Defect 16: charon goes away -> the adapter says since when, the last error, retrying;
    the first failed reconnect is a warning, the following ones are rate-limited."""
    events = []
    a = CharonAdapter(charon.path, events.append, backoff=Backoff(0.005, 0.02))
    await a.start()
    try:
        await until(lambda: any(isinstance(e, SaSnapshot) for e in events))
        assert a.unreachable() is None
        with structlog.testing.capture_logs() as logs:
            await charon.stop()
            await until(lambda: a.client.failed_attempts >= 20, timeout=5)
        u = a.unreachable()
        assert u is not None and u["retrying"] is True
        assert u["since"] and u["last_error"], u
        failed = [e for e in logs if e["event"] == "vici.connect_failed"]
        assert failed and failed[0]["log_level"] == "warning", failed[:2]
        assert len(failed) < 5, f"every retry logged: {len(failed)} lines for 20 attempts"
        assert not [e for e in logs if e["event"] == "vici.connect_failed" and e["log_level"] == "info"]
        await charon.start()
        await until(lambda: a.client.connected)
        await until(lambda: a.unreachable() is None)
    finally:
        await a.stop()


def test_status_says_charon_is_gone_and_sa_states_are_last_known(tmp_path):
    """Defect 16, what `vpnd status` shows: the charon line, and every IKE/CHILD marked."""
    import time as _time

    from vpnd_testing.control_harness import Harness, config
    from vpnd.control.cli import render

    h = Harness(str(tmp_path / "c.sock"), config())
    try:
        h.up()
        s = h.status()
        assert s["charon"] == {"reachable": True}
        assert "UNREACHABLE" not in render(s) and "last known" not in render(s)
        h.board._charon = lambda: {"since": _time.time() - 42, "retrying": True, "failed_attempts": 9,
                                   "last_error": "[Errno 111] Connection refused"}
        s = h.status()
        assert s["charon"]["reachable"] is False and s["charon"]["retrying"] is True
        assert s["charon"]["last_error"] == "[Errno 111] Connection refused"
        assert 41 <= s["charon"]["for_seconds"] <= 44
        t1 = s["connections"]["c"]["tunnels"]["t1"]
        assert t1["ike"] == "ESTABLISHED" and t1["sa_state"] == "last_known"
        text = render(s)
        print(text)
        assert "CHARON UNREACHABLE since" in text and ("(42s)" in text or "(43s)" in text)
        assert "Connection refused; retrying. IKE/CHILD states below are last known" in text
        assert "ESTABLISHED #1 (last known)" in text and "INSTALLED #101 (last known)" in text
    finally:
        h.close()

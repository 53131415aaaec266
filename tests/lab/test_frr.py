"""The vtysh session and the BGP adapter against a real FRR (zebra, bgpd, bfdd) in a scratch
namespace: apply, idempotent re-apply (zero configuration commands), a changed timer is one
line per neighbor, neighbor shutdown survives re-apply, FRR refusals and timeouts become
exceptions + log + metric, and a killed-and-restarted bgpd gets its configuration back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest
from structlog.testing import capture_logs

from vpnd_testing.config_toml import bgp_config, dumps
from test_render_frr_lab import FRR_BIN, _missing, frr_in, netns
from vpnd.frr.bgp import BgpAdapter
from vpnd.config.load import load_text
from vpnd.core import events as E
from vpnd.frr.vtysh import FrrCommandError, FrrTimeout, FrrUnavailable, VtyshSession, VtyshTarget
from vpnd.frr.diff import Change
from vpnd.metrics import Metrics

pytestmark = pytest.mark.lab

ROUTER = "router bgp 65530"
T1, T2 = "169.254.10.1", "169.254.20.1"


@pytest.fixture
def frr():
    reason = _missing()
    if reason:
        pytest.skip(reason)
    with netns() as ns, frr_in(ns) as f:
        yield f


def config(**bgp):
    doc = bgp_config()
    doc["connection"][0]["bgp"].update(bgp)
    return load_text(dumps(doc))


def adapter(f, cfg=None, **kw) -> tuple[BgpAdapter, list, Metrics]:
    events: list = []
    m = Metrics()
    cfg = cfg or config()
    m.declare(cfg)
    a = BgpAdapter(cfg, on_event=events.append, metrics=m, target=VtyshTarget(vty_socket=str(f.dir)),
                   poll_interval=0.05, **kw)
    return a, events, m


def value(m: Metrics, name: str, **labels) -> float:
    v = m.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def restart_bgpd(f, sig=signal.SIGKILL) -> None:
    i = 1       # zebra, bgpd, bfdd
    f.procs[i].send_signal(sig)
    f.procs[i].wait(10)
    f.procs[i] = subprocess.Popen(
        ["ip", "netns", "exec", f.ns, str(FRR_BIN / "bgpd"), "-F", "traditional", "-A", "127.0.0.1",
         "-P", "0", "--vty_socket", str(f.dir), "-z", str(f.dir / "zserv.api"),
         "-i", str(f.dir / "bgpd.pid"), "-f", str(f.dir / "empty.conf")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def fresh() -> bool:
        try:        # "bgpd is not running" until the new bgpd's vty is up: not yet, no error
            return ("router bgp" not in f.vtysh("-c", "show running-config bgpd")
                    and f.vtysh("-c", "show bgp summary json").strip() in ("{}", ""))
        except AssertionError:
            return False

    f.wait_for(fresh, "a fresh bgpd", 15)


async def test_apply_is_by_difference(frr):
    a, _, _ = adapter(frr)
    try:
        first = await a.apply()
        assert len(first) > 10
        text = frr.vtysh("-c", "show running-config")
        assert f"neighbor {T1} timers 10 30" in text and "bfd profile vpnd-vpc1" in text
        n = a.config_commands
        for _ in range(3):
            assert await a.apply() == []
        assert a.config_commands == n, "re-applying an unchanged config issues no command"

        changes = await a.reconfigure(config(keepalive=5, hold=15))
        assert changes == [Change((ROUTER,), f"neighbor {T1} timers 5 15"),
                           Change((ROUTER,), f"neighbor {T2} timers 5 15")]
        assert a.config_commands == n + 2
        assert f"neighbor {T1} timers 5 15" in frr.vtysh("-c", "show running-config bgpd")
        assert await a.apply() == []

        c, _, _ = adapter(frr, config(keepalive=5, hold=15, bfd={"enabled": False}))
        changes = await c.apply()
        assert {ch.command for ch in changes} == {
            f"no neighbor {T1} bfd", f"no neighbor {T2} bfd", "no profile vpnd-vpc1"}
        assert await c.apply() == []
        assert "bfd" not in frr.vtysh("-c", "show running-config bgpd")
    finally:
        for x in (a, locals().get("c")):
            if x is not None:
                await x.vtysh.close()


async def test_neighbor_shutdown_is_kept_by_reapply(frr):
    a, _, m = adapter(frr)
    try:
        await a.apply()
        key = E.TunnelKey("vpc1", "tunnel1")
        await a.set_neighbor(key, False, "probes failed")
        await a._push
        assert f"neighbor {T1} shutdown" in frr.vtysh("-c", "show running-config bgpd")
        assert value(m, "vpnd_bgp_neighbor_enabled", connection="vpc1", tunnel="tunnel1") == 0
        assert await a.apply() == []        # the wanted state includes the shutdown
        await a.set_neighbor(key, True, "healthy")
        await a._push
        assert "shutdown" not in frr.vtysh("-c", "show running-config bgpd")
    finally:
        await a.vtysh.close()


def record(a: BgpAdapter) -> list:
    """Every configure batch and command the adapter sends from now on."""
    sent: list = []
    configure, run = a.vtysh.configure, a.vtysh.run

    async def configure_(cmds):
        sent.append(("configure", list(cmds)))
        return await configure(cmds)

    async def run_(cmd, **kw):
        if not cmd.startswith("show "):
            sent.append(("run", cmd))
        return await run(cmd, **kw)

    a.vtysh.configure, a.vtysh.run = configure_, run_
    return sent


SWAP = [f"neighbor {T1} route-map vpnd-vpc1-standby-in in", f"neighbor {T1} route-map vpnd-vpc1-standby-out out",
        f"neighbor {T2} route-map allow-all in", f"neighbor {T2} route-map allow-all out"]


async def test_set_active_moves_only_the_route_maps_then_soft_refreshes(frr):
    # return_path = "none": the route-maps alone (the more-specifics: test_bgp_return_path.py)
    a, _, _ = adapter(frr, config(return_path="none"))
    try:
        await a.apply()
        sent = record(a)
        with capture_logs() as logs:
            await a.set_active("vpc1", "tunnel2", "t1 drained")
            await a._push
        assert sent == [
            ("configure", [ROUTER, "address-family ipv4 unicast", *SWAP, "exit-address-family", "exit"]),
            ("run", f"clear bgp ipv4 unicast {T1} soft"), ("run", f"clear bgp ipv4 unicast {T2} soft")]
        moved = next(e for e in logs if e["event"] == "bgp.standby_moved")
        assert moved["active"] == "tunnel2" and moved["commands"] == 4 and moved["reaction_ms"] < 1000
        text = frr.vtysh("-c", "show running-config bgpd")
        assert all(line in text for line in SWAP)
        sent.clear()
        await a.set_active("vpc1", "tunnel2", "again")      # the same assignment: nothing
        assert await a.apply() == [], "the wanted config includes the assignment"
        assert sent == []
        # back, together with a shutdown: one batch; the shut neighbor is not refreshed
        await a.set_neighbor(E.TunnelKey("vpc1", "tunnel2"), False, "probes failed")
        await a.set_active("vpc1", "tunnel1", "t2 failed")
        await a._push
        await _until(lambda: not a.pending(), 5)
        assert ("run", f"clear bgp ipv4 unicast {T2} soft") not in sent
        assert ("run", f"clear bgp ipv4 unicast {T1} soft") in sent
        text = frr.vtysh("-c", "show running-config bgpd")
        assert f"neighbor {T1} route-map allow-all in" in text and f"neighbor {T2} shutdown" in text
        assert f"neighbor {T2} route-map vpnd-vpc1-standby-out out" in text
    finally:
        await a.vtysh.close()


async def test_ecmp_set_active_issues_nothing(frr):
    a, _, _ = adapter(frr, config(standby="ecmp"))
    try:
        await a.apply()
        sent = record(a)
        await a.set_active("vpc1", "tunnel2", "t1 failed")
        assert a._push is None and sent == [] and await a.apply() == []
    finally:
        await a.vtysh.close()


async def test_assignment_survives_restart_and_reload(frr):
    a, _, _ = adapter(frr, resync_interval=60)
    a.start()
    try:
        await _until(lambda: a.applies >= 1, 10)
        await a.set_active("vpc1", "tunnel2", "operator")
        await _until(lambda: all(line in frr.vtysh("-c", "show running-config bgpd") for line in SWAP), 5)
        n = a.applies
        await asyncio.to_thread(restart_bgpd, frr)
        await _until(lambda: a.applies > n and ROUTER in frr.vtysh("-c", "show running-config bgpd"), 15)
        text = frr.vtysh("-c", "show running-config bgpd")
        assert all(line in text for line in SWAP), text
        changes = await a.reconfigure(config(keepalive=5, hold=15))      # a reload keeps it
        assert [c.command for c in changes] == [f"neighbor {T1} timers 5 15", f"neighbor {T2} timers 5 15"]
        assert all(line in frr.vtysh("-c", "show running-config bgpd") for line in SWAP)
    finally:
        await a.stop()


async def test_refusal_is_an_exception_log_and_metric(frr):
    a, _, m = adapter(frr)
    try:
        with capture_logs() as logs:
            with pytest.raises(FrrCommandError) as err:
                await a.vtysh.configure(["router bgp 65530", "neighbor 192.0.2.9 timers 1 3"])
            with pytest.raises(FrrCommandError) as err2:
                await a.vtysh.run("show bgp frobnicate")
        assert err.value.command == "neighbor 192.0.2.9 timers 1 3"
        assert "remote-as" in err.value.output
        assert "Unknown command" in err2.value.output or "Invalid" in err2.value.output
        assert value(m, "vpnd_frr_command_errors_total") == 2
        assert [e["command"] for e in logs if e["event"] == "frr.command_failed"] == [
            "neighbor 192.0.2.9 timers 1 3", "show bgp frobnicate"]
        # the session is still usable and back in enable mode
        assert (await a.vtysh.run("show bgp summary json")).startswith("{")
        assert a.vtysh.session.stats.spawns == 1
    finally:
        await a.vtysh.close()


def test_stopped_frr_times_out_and_the_session_respawns(frr):
    s = VtyshSession(VtyshTarget(vty_socket=str(frr.dir)), timeout=0.5)
    try:
        s.run("show bgp summary json")
        latencies = []
        for _ in range(50):
            t0 = time.perf_counter()
            s.run("show bgp summary json")
            latencies.append(time.perf_counter() - t0)
        latencies.sort()
        print(f"vtysh session command latency: median {latencies[25] * 1000:.2f} ms, "
              f"max {latencies[-1] * 1000:.2f} ms")
        # bench measures speed; here: one persistent session, not a vtysh per command
        assert latencies[25] < 0.5 and s.stats.spawns == 1
        pid = frr.procs[1].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(FrrTimeout):
                s.run("show bgp summary json")
            assert time.monotonic() - t0 < 2
            assert not s.alive
        finally:
            os.kill(pid, signal.SIGCONT)
        assert s.run("show bgp summary json").startswith("{")
        assert s.stats.spawns == 2 and s.stats.timeouts == 1
    finally:
        s.close()


def test_missing_vtysh_or_frr_is_unavailable(tmp_path):
    with pytest.raises(FrrUnavailable):
        VtyshSession(VtyshTarget(vtysh=str(tmp_path / "no-vtysh"))).run("show version")
    if _missing() is None:
        with pytest.raises(FrrUnavailable):
            VtyshSession(VtyshTarget(vty_socket=str(tmp_path)), timeout=3).run("show version")


async def test_restarted_bgpd_is_reconfigured(frr):
    a, events, m = adapter(frr, resync_interval=60)
    with capture_logs() as logs:
        a.start()
        try:
            await _until(lambda: a.applies >= 1 and value(m, "vpnd_frr_connected") == 1, 10)
            for t in ("tunnel1", "tunnel2"):
                assert m.registry.get_sample_value("vpnd_bgp_session_up", {"connection": "vpc1", "tunnel": t}) == 0
                assert m.registry.get_sample_value("vpnd_bfd_up", {"connection": "vpc1", "tunnel": t}) == 0
            assert {type(e) for e in events} == {E.BgpSessionChanged, E.BfdChanged}
            assert not any(e.established for e in events if isinstance(e, E.BgpSessionChanged))
            await a.set_neighbor(E.TunnelKey("vpc1", "tunnel2"), False, "drained")
            await _until(lambda: "shutdown" in frr.vtysh("-c", "show running-config bgpd"), 5)
            assert value(m, "vpnd_bgp_neighbor_enabled", connection="vpc1", tunnel="tunnel2") == 0
            n = a.applies
            await asyncio.to_thread(restart_bgpd, frr)
            await _until(lambda: a.applies > n and ROUTER in frr.vtysh("-c", "show running-config bgpd"),
                         15)
            text = frr.vtysh("-c", "show running-config bgpd")
            assert f"neighbor {T2} shutdown" in text and "set local-preference 50" in text
            assert await a.apply() == []
        finally:
            await a.stop()
    names = [e["event"] for e in logs]
    assert "frr.command_failed" not in names, "a restarting bgpd is FRR unavailable, not a refusal"
    assert "frr.config_lost" in names or "frr.unreachable" in names
    assert not [e for e in logs if e.get("log_level") == "error" and e["event"] != "frr.command_failed"]


async def _until(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_unreachable_frr_is_retried_with_clear_logs(tmp_path):
    events: list = []
    m = Metrics()
    a = BgpAdapter(config(), on_event=events.append, metrics=m, poll_interval=0.05,
                   target=VtyshTarget(vtysh=str(tmp_path / "no-vtysh")))
    with capture_logs() as logs:
        a.start()
        try:
            await _until(lambda: any(e["event"] == "frr.unreachable" for e in logs), 5)
            await asyncio.sleep(0.6)            # a retry or two: still one warning
        finally:
            await a.stop()
    assert [e["event"] for e in logs].count("frr.unreachable") == 1
    assert "no-vtysh" in next(e for e in logs if e["event"] == "frr.unreachable")["error"]
    assert value(m, "vpnd_frr_connected") == 0 and events == []


async def test_stopped_bgpd_is_a_counted_timeout_then_a_fresh_session(frr):
    a, _, m = adapter(frr, timeout=0.5)
    pid = frr.procs[1].pid
    with capture_logs() as logs:
        a.start()
        try:
            await _until(lambda: value(m, "vpnd_frr_connected") == 1, 10)
            os.kill(pid, signal.SIGSTOP)
            try:
                await _until(lambda: value(m, "vpnd_frr_command_errors_total") >= 1, 5)
                assert value(m, "vpnd_frr_connected") == 0
            finally:
                os.kill(pid, signal.SIGCONT)
            await _until(lambda: any(e["event"] == "frr.reconnected" for e in logs), 10)
            assert a.vtysh.session.stats.spawns >= 2 and a.vtysh.session.stats.timeouts >= 1
            assert value(m, "vpnd_frr_connected") == 1
        finally:
            await a.stop()
    failed = [e for e in logs if e["event"] == "frr.command_failed"]
    assert failed and "no answer from FRR" in failed[0]["error"]

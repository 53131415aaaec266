"""The return path (tests/unit/test_bgp_return_path.py) against a real bgpd in a scratch
namespace: the failover batch, FRR killed and restarted (converges, the halves included),
the failback batch, and the stop with withdraw_on_stop."""

from __future__ import annotations

import asyncio

import pytest

from vpnd.config.load import load_text
from vpnd.core import events as E
from vpnd.frr.bgp import BgpAdapter
from vpnd.frr.vtysh import VtyshTarget
from vpnd_testing.config_toml import bgp_config, dumps

# the same example as tests/unit/test_bgp_return_path.py (tiers import nothing from each other)
R = "router bgp 65530"
T1, T2 = "169.254.10.1", "169.254.20.1"
IN, OUT = "vpnd-vpc1-standby-in", "vpnd-vpc1-standby-out"
HALVES = ["172.16.0.0/17", "172.16.128.0/17"]
TO_T2 = [f"neighbor {T1} route-map {IN} in", f"neighbor {T1} route-map {OUT} out",
         f"neighbor {T2} route-map allow-all in", f"neighbor {T2} route-map allow-all out"]
TO_T1 = [f"neighbor {T1} route-map allow-all in", f"neighbor {T1} route-map allow-all out",
         f"neighbor {T2} route-map {IN} in", f"neighbor {T2} route-map {OUT} out"]
K1 = E.TunnelKey("vpc1", "tunnel1")


def config(connection=None, **bgp):
    doc = bgp_config()
    doc["connection"][0]["bgp"].update(bgp)
    doc["connection"][0].update(connection or {})
    return load_text(dumps(doc))

pytestmark = pytest.mark.lab


@pytest.fixture
def frr():
    from test_render_frr_lab import _missing, frr_in, netns

    reason = _missing()
    if reason:
        pytest.skip(reason)
    with netns() as ns, frr_in(ns) as f:
        yield f


def real(f, cfg=None, **kw) -> BgpAdapter:
    return BgpAdapter(cfg or config(), on_event=lambda e: None, target=VtyshTarget(vty_socket=str(f.dir)),
                      poll_interval=0.05, **kw)


def recorded(a: BgpAdapter) -> list:
    from test_frr import record
    return record(a)


async def test_real_bgpd_failover_failback_restart_and_stop(frr):
    from test_frr import _until, restart_bgpd

    a = real(frr, resync_interval=60)
    a.start()
    try:
        await _until(lambda: a.applies >= 1, 10)

        def running() -> str:
            return frr.vtysh("-c", "show running-config bgpd")

        assert "network 172.16.0.0/17" not in running()
        sent = recorded(a)
        await a.set_neighbor(K1, False, "probes failed")
        await a.set_active("vpc1", "tunnel2", "tunnel1 failed")
        await _until(lambda: not a.pending() and a._push.done(), 5)
        assert sent == [
            ("configure", [R, f"neighbor {T1} shutdown", "address-family ipv4 unicast", *TO_T2,
                           *[f"network {n}" for n in HALVES], "exit-address-family", "exit"]),
            ("run", f"clear bgp ipv4 unicast {T2} soft")]            # the shut T1 is not refreshed
        text = running()
        assert all(f"network {n}" in text for n in HALVES) and all(line in text for line in TO_T2)
        assert await a.apply() == []
        # bgpd killed and restarted empty: the watch loop converges, the halves included
        n = a.applies
        await asyncio.to_thread(restart_bgpd, frr)
        await _until(lambda: a.applies > n and "network 172.16.128.0/17" in running(), 15)
        assert all(line in running() for line in TO_T2) and f"neighbor {T1} shutdown" in running()
        assert await a.apply() == []
        # failback: withdrawn first, in one batch
        sent.clear()
        await a.set_neighbor(K1, True, "healthy")
        await a.set_active("vpc1", "tunnel1", "preempt")
        await _until(lambda: not a.pending() and a._push.done(), 5)
        assert sent[0] == ("configure", [R, f"no neighbor {T1} shutdown", "address-family ipv4 unicast",
                                         *[f"no network {n}" for n in HALVES], *TO_T1,
                                         "exit-address-family", "exit"])
        assert "network 172.16.0.0/17" not in running() and await a.apply() == []
        # stop with withdraw_on_stop: only the halves go (here: none left, so nothing)
        assert await a.withdraw_return_path("vpc1") == []
        await a.set_active("vpc1", "tunnel2", "drained")
        await _until(lambda: not a.pending() and a._push.done(), 5)
        sent.clear()
        assert await a.withdraw_return_path("vpc1") == HALVES
        assert [s for s in sent if s[0] == "configure"] == [
            ("configure", [R, "address-family ipv4 unicast", *[f"no network {n}" for n in HALVES],
                           "exit-address-family", "exit"])]
        text = running()
        assert "network 172.16.0.0/17" not in text and all(line in text for line in TO_T2)
    finally:
        await a.stop()


def test_render_frr_says_what_a_failover_adds():
    from vpnd.render.command import render

    text = render("frr", config())
    assert text.endswith(
        '! vpc1: return_path = "more-specific": while tunnel2 is active, vpnd adds to address-family '
        "ipv4 unicast\n! (announced to that tunnel's neighbor only; withdrawn on failback):\n"
        "!  network 172.16.0.0/17\n!  network 172.16.128.0/17\n")
    assert "return_path" not in render("frr", config(return_path="none"))

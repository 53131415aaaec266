"""The path-MTU prober's schedule (skipped while the tunnel is not usable, at once when it
becomes usable, again on trigger), one real search on loopback, and doctor's report."""

from __future__ import annotations

import asyncio
import os

import pytest

from vpnd import doctor, pmtu_probe
from vpnd.core.events import TunnelKey
from vpnd.pmtu_probe import PathMtuProber, interface_mtu

KEY = TunnelKey("vpc1", "tunnel1")


def prober(usable, results, **kw) -> PathMtuProber:
    return PathMtuProber(KEY, destination="127.0.0.1", source=None, interface="lo",
                         timeout=0.2, interval=3600.0, usable=usable,
                         on_result=lambda *a: results.append(a), **kw)


def test_schedule_waits_for_a_usable_tunnel_then_measures_and_reruns_on_trigger(monkeypatch):
    monkeypatch.setattr(pmtu_probe, "RETRY", 0.01)
    state = {"usable": False, "searches": 0}
    results: list = []

    async def fake_measure(self):
        state["searches"] += 1
        return 1300, 1, 0.001

    monkeypatch.setattr(PathMtuProber, "measure", fake_measure)

    async def scenario():
        p = prober(lambda: state["usable"], results)
        p.start()
        await asyncio.sleep(0.05)
        assert state["searches"] == 0            # a dead tunnel is not measured
        state["usable"] = True
        await asyncio.sleep(0.05)
        assert state["searches"] == 1            # measured once it answers, then waits `interval`
        await asyncio.sleep(0.05)
        assert state["searches"] == 1
        p.trigger()                              # after a switch
        await asyncio.sleep(0.02)
        assert state["searches"] == 2
        await p.stop()

    asyncio.run(scenario())
    assert results == [(KEY, 1300, 1, 0.001)] * 2


def test_a_search_nothing_answers_reports_nothing(monkeypatch):
    results: list = []

    async def fake_measure(self):
        return None, 9, 1.0

    monkeypatch.setattr(PathMtuProber, "measure", fake_measure)

    async def scenario():
        p = prober(lambda: True, results)
        p.start()
        await asyncio.sleep(0.02)
        await p.stop()

    asyncio.run(scenario())
    assert results == []


def test_missing_interface_is_no_result_not_an_exception():
    async def scenario():
        p = PathMtuProber(KEY, destination="127.0.0.1", source=None, interface="nosuch0",
                          timeout=0.1, interval=60.0, on_result=lambda *a: None)
        return await p.measure()

    assert interface_mtu("nosuch0") is None
    assert asyncio.run(scenario()) == (None, 0, 0.0)


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw ICMP socket needs CAP_NET_RAW")
def test_real_search_on_loopback_is_one_probe_at_the_interface_mtu():
    async def scenario():
        p = prober(lambda: True, [], taken=lambda: set())
        return await p.measure()

    found, probes, _ = asyncio.run(scenario())
    assert found == min(interface_mtu("lo"), 65535) and probes == 1


def test_a_search_during_which_the_tunnel_died_is_discarded():
    """Its lost probes were the tunnel's death, not a narrow path: no result, nothing kept."""
    async def scenario():
        p = prober(lambda: False, [], taken=lambda: set())
        return p, await p.measure()

    p, (found, probes, _) = asyncio.run(scenario())
    assert found is None and probes == 1 and p.result is None


def test_doctor_reports_each_tunnels_path_mtu():
    from vpnd_testing.config_toml import dumps, route_config
    from vpnd.config.load import load_text

    config = load_text(dumps(route_config()))
    row = lambda pmtu: {"data_path": {"mtu": 1300, "path_mtu": pmtu,  # noqa: E731
                                      "mss_clamp": (pmtu or 1300) - 40}}
    status = {"connections": {"vpc1": {"tunnels": {"tunnel1": row(1300), "tunnel2": row(1200)}}}}
    r = doctor.check_path_mtu(config, status)
    assert r.status == doctor.PASS
    assert "vpc1/tunnel1 1300 (interface 1300, MSS clamp 1260)" in r.detail
    assert "narrower than the interface on vpc1/tunnel2" in r.detail
    status["connections"]["vpc1"]["tunnels"] = {"tunnel1": row(None)}
    assert doctor.check_path_mtu(config, status).status == doctor.SKIP

"""BGP mode's return path (return_path = "more-specific", the default with standby =
"prepend"): while a tunnel other than tunnel 1 is active, the configured networks' halves are
announced to that tunnel's neighbor only, so the cloud routes back over it by longest match
instead of keeping a dead tunnel 1's paths until its hold timer. The exact vtysh batches for
failover, failback, stop and FRR restart (pure, against FRR 8.4's own running config), then
the same against a real bgpd: tests/lab/test_bgp_return_frr.py; the cloud's view:
tests/lab/test_bgp_return_lab.py."""

from __future__ import annotations

import ipaddress

import pytest

from vpnd_testing.config_toml import bgp_config, dumps
from test_frr_diff import AF, RUNNING, T1, T2
from vpnd.config.load import ConfigError, load_text
from vpnd.core import events as E
from vpnd.frr.bgp import BgpAdapter
from vpnd.frr.diff import Change, Running, diff, parse_running, script
from vpnd.frr.vtysh import VtyshTarget
from vpnd.render.frr import frr_config, more_specifics, return_networks

R = "router bgp 65530"
IN, OUT = "vpnd-vpc1-standby-in", "vpnd-vpc1-standby-out"
HALVES = ["172.16.0.0/17", "172.16.128.0/17"]
TO_T2 = [f"neighbor {T1} route-map {IN} in", f"neighbor {T1} route-map {OUT} out",
         f"neighbor {T2} route-map allow-all in", f"neighbor {T2} route-map allow-all out"]
TO_T1 = [f"neighbor {T1} route-map allow-all in", f"neighbor {T1} route-map allow-all out",
         f"neighbor {T2} route-map {IN} in", f"neighbor {T2} route-map {OUT} out"]
K1, K2 = E.TunnelKey("vpc1", "tunnel1"), E.TunnelKey("vpc1", "tunnel2")


def config(connection=None, **bgp):
    doc = bgp_config()
    doc["connection"][0]["bgp"].update(bgp)
    doc["connection"][0].update(connection or {})
    return load_text(dumps(doc))


def adapter(cfg=None) -> BgpAdapter:
    return BgpAdapter(cfg or config(), on_event=lambda e: None,
                      target=VtyshTarget(vtysh="/nonexistent/vtysh"))


# --- which prefixes ------------------------------------------------------------------------

def test_each_network_splits_in_two_a_32_not_at_all():
    def halves(*nets):
        return more_specifics(config(networks=list(nets)).connections[0])

    assert halves("172.16.0.0/16") == HALVES
    assert halves("10.1.2.3/32") == []                     # nothing more specific exists
    assert halves("10.1.2.2/31") == ["10.1.2.2/32", "10.1.2.3/32"]
    assert halves("10.0.0.0/8", "10.1.2.3/32") == ["10.0.0.0/9", "10.128.0.0/9"]
    # a half that is configured itself is split in its own turn: every address still has a
    # more-specific, and no configured network is filtered off the standby
    assert halves("172.16.0.0/16", "172.16.0.0/17") == ["172.16.128.0/17", "172.16.0.0/18", "172.16.64.0/18"]
    for net in ("172.16.0.0/16", "10.1.2.2/31", "192.168.7.0/24"):
        parts = [ipaddress.ip_network(n) for n in halves(net)]
        assert sum(p.num_addresses for p in parts) == ipaddress.ip_network(net).num_addresses
    # the default: the connection's local_networks
    assert more_specifics(config().connections[0]) == HALVES


def test_only_a_non_preferred_active_tunnel_announces_them():
    cfg = config()
    for active in (None, {}, {"vpc1": "tunnel1"}, {"vpc1": None}, {"vpc1": "tunnel9"}):
        assert return_networks(cfg, active) == [], active
    assert return_networks(cfg, {"vpc1": "tunnel2"}) == HALVES
    assert return_networks(config(return_path="none"), {"vpc1": "tunnel2"}) == []
    assert return_networks(config(standby="ecmp"), {"vpc1": "tunnel2"}) == []


def test_rendering_steady_state_has_no_more_specific_and_the_standby_denies_them():
    steady = frr_config(config()).text()
    assert "network 172.16.0.0/17" not in steady and "network 172.16.128.0/17" not in steady
    for line in (f"ip prefix-list {OUT} seq 5 deny 172.16.0.0/17",
                 f"ip prefix-list {OUT} seq 10 deny 172.16.128.0/17",
                 f"ip prefix-list {OUT} seq 4294967295 permit any",
                 f"route-map {OUT} permit 1\n match ip address prefix-list {OUT}\n set as-path prepend"):
        assert line in steady
    moved = frr_config(config(), {"vpc1": "tunnel2"}).text()
    assert " network 172.16.0.0/16\n  network 172.16.0.0/17\n  network 172.16.128.0/17\n" in moved
    # tunnel 1, now standby, gets the out route-map that denies them; tunnel 2 allow-all
    assert f"neighbor {T1} route-map {OUT} out" in moved and f"neighbor {T2} route-map allow-all out" in moved
    for off in (config(return_path="none"), config(standby="ecmp")):
        text = frr_config(off, {"vpc1": "tunnel2"}).text()
        assert "prefix-list" not in text and "network 172.16.0.0/17" not in text


def test_a_32_only_network_renders_a_catch_all_list():
    cfg = config(networks=["10.1.2.3/32"])
    text = frr_config(cfg, {"vpc1": "tunnel2"}).text()
    assert f"ip prefix-list {OUT} seq 4294967295 permit any" in text
    assert " deny " not in text and "network 10.1.2.3/32" in text      # as configured, nothing more


def test_return_path_is_checked():
    assert config().connections[0].bgp.return_path == "more-specific"
    with pytest.raises(ConfigError) as err:
        config(return_path="longer")
    assert "connection[0].bgp.return_path" in str(err.value)


# --- the exact batches ---------------------------------------------------------------------

def test_failover_batch_moves_route_maps_then_announces():
    """Tunnel 1 fails: the core shuts its neighbor and makes tunnel 2 active. One batch: the
    shutdown, the route-maps (tunnel 1's out route-map now denies the halves), then the
    halves, then `exit`."""
    a = adapter()
    assert a.push_commands({K1: False}, None, {"vpc1": "tunnel2"}) == [
        R, f"neighbor {T1} shutdown",
        "address-family ipv4 unicast", *TO_T2,
        "network 172.16.0.0/17", "network 172.16.128.0/17",
        "exit-address-family", "exit"]
    # drain / failover --to: the same without a shutdown
    assert a.push_commands({}, None, {"vpc1": "tunnel2"}) == [
        R, "address-family ipv4 unicast", *TO_T2,
        "network 172.16.0.0/17", "network 172.16.128.0/17", "exit-address-family", "exit"]


def test_failback_batch_withdraws_first():
    """Back to tunnel 1 (preempt after repair): `no network` over the live tunnel 2 first,
    then the route-maps, so tunnel 1's allow-all never sees a half."""
    a = adapter()
    assert a.push_commands({K1: True}, {"vpc1": "tunnel2"}, {"vpc1": "tunnel1"}) == [
        R, f"no neighbor {T1} shutdown",
        "address-family ipv4 unicast",
        "no network 172.16.0.0/17", "no network 172.16.128.0/17", *TO_T1,
        "exit-address-family", "exit"]
    assert a.network_changes({"vpc1": "tunnel2"}, {"vpc1": "tunnel1"}) == (HALVES, [])
    assert a.network_changes(None, {"vpc1": "tunnel2"}) == ([], HALVES)
    assert a.network_changes({"vpc1": "tunnel2"}, {"vpc1": "tunnel2"}) == ([], [])
    off = adapter(config(return_path="none"))
    assert off.push_commands({}, {"vpc1": "tunnel2"}, {"vpc1": "tunnel1"}) == [
        R, "address-family ipv4 unicast", *TO_T1, "exit-address-family", "exit"]


def running_tunnel2() -> Running:
    """FRR 8.4's running config after the failover batch (tunnel 2 active, halves announced)."""
    text = RUNNING.replace("  network 172.16.0.0/16\n",
                           "  network 172.16.0.0/16\n  network 172.16.0.0/17\n  network 172.16.128.0/17\n")
    for a, b in ((f"{T1} route-map allow-all in", f"{T1} route-map {IN} in"),
                 (f"{T1} route-map allow-all out", f"{T1} route-map {OUT} out"),
                 (f"{T2} route-map {IN} in", f"{T2} route-map allow-all in"),
                 (f"{T2} route-map {OUT} out", f"{T2} route-map allow-all out")):
        text = text.replace(f"neighbor {a}", f"neighbor {b}")
    return parse_running(text)


def test_apply_by_difference_unchanged_is_zero_commands():
    a = adapter()
    assert diff(a.wanted(), parse_running(RUNNING)) == []
    assert diff(a.wanted(active={"vpc1": "tunnel2"}), running_tunnel2()) == []
    # a reapply that finds the failover half done (a half missing) adds exactly it
    half = running_tunnel2()
    half.contexts[AF] = [x for x in half.contexts[AF] if x != "network 172.16.128.0/17"]
    assert diff(a.wanted(active={"vpc1": "tunnel2"}), half) == [Change(AF, "network 172.16.128.0/17")]


def test_apply_converging_failback_withdraws_before_moving_route_maps():
    """apply() (the resync, or a push that failed) makes the same order as the push."""
    a = adapter()
    changes = diff(a.wanted(active={"vpc1": "tunnel1"}), running_tunnel2())
    assert script(changes) == [
        R, "address-family ipv4 unicast",
        "no network 172.16.0.0/17", "no network 172.16.128.0/17", *TO_T1,
        "exit-address-family", "exit"]
    changes = diff(a.wanted(active={"vpc1": "tunnel2"}), parse_running(RUNNING))
    assert script(changes) == [
        R, "address-family ipv4 unicast", *TO_T2,
        "network 172.16.0.0/17", "network 172.16.128.0/17", "exit-address-family", "exit"]


def test_frr_restart_converges_to_the_whole_wanted_state_incl_the_halves():
    """bgpd restarted empty while tunnel 2 was active: the whole config, the halves last."""
    a = adapter()
    a._pushed_active = {"vpc1": "tunnel2"}
    assert script(diff(a.wanted(active={"vpc1": "tunnel2"}), Running({}))) == [
        "bgp route-map delay-timer 0",
        "route-map allow-all permit 1", "exit",
        f"route-map {IN} permit 1", "set local-preference 50", "exit",
        f"ip prefix-list {OUT} seq 5 deny 172.16.0.0/17",
        f"ip prefix-list {OUT} seq 10 deny 172.16.128.0/17",
        f"ip prefix-list {OUT} seq 4294967295 permit any",
        f"route-map {OUT} permit 1", f"match ip address prefix-list {OUT}",
        "set as-path prepend 65530 65530 65530", "exit",
        "bfd", "profile vpnd-vpc1", "receive-interval 300", "transmit-interval 300",
        "detect-multiplier 3", "exit", "exit",
        R, "bgp router-id 169.254.10.2", "no bgp network import-check",
        f"neighbor {T1} remote-as 45104", f"neighbor {T1} timers 10 30", f"neighbor {T1} bfd profile vpnd-vpc1",
        f"neighbor {T2} remote-as 45104", f"neighbor {T2} timers 10 30", f"neighbor {T2} bfd profile vpnd-vpc1",
        "address-family ipv4 unicast",
        f"neighbor {T1} soft-reconfiguration inbound", f"neighbor {T1} route-map {IN} in",
        f"neighbor {T1} route-map {OUT} out",
        f"neighbor {T2} soft-reconfiguration inbound", f"neighbor {T2} route-map allow-all in",
        f"neighbor {T2} route-map allow-all out",
        "maximum-paths 32", "network 172.16.0.0/16", "network 172.16.0.0/17", "network 172.16.128.0/17",
        "exit-address-family", "exit"]


def test_upgrade_from_a_running_config_without_the_return_path():
    """A vpnd from before return_path finds FRR without the prefix-list: the list first,
    then the one `match` line that uses it, nothing else."""
    old = RUNNING.replace(f" match ip address prefix-list {OUT}\n", "")
    old = "\n".join(x for x in old.splitlines() if not x.startswith("ip prefix-list"))
    assert script(diff(adapter().wanted(), parse_running(old))) == [
        f"ip prefix-list {OUT} seq 5 deny 172.16.0.0/17",
        f"ip prefix-list {OUT} seq 10 deny 172.16.128.0/17",
        f"ip prefix-list {OUT} seq 4294967295 permit any",
        f"route-map {OUT} permit 1", f"match ip address prefix-list {OUT}", "exit"]
    # and return_path = "none" takes it all away again
    assert script(diff(adapter(config(return_path="none")).wanted(), parse_running(RUNNING))) == [
        f"route-map {OUT} permit 1", f"no match ip address prefix-list {OUT}", "exit",
        f"no ip prefix-list {OUT} seq 4294967295 permit any",
        f"no ip prefix-list {OUT} seq 5 deny 172.16.0.0/17",
        f"no ip prefix-list {OUT} seq 10 deny 172.16.128.0/17"]


def test_reload_with_other_networks_replaces_sequence_numbers_safely():
    """FRR's `no ip prefix-list N seq S ...` deletes sequence S whatever it holds: a
    replaced entry's `no` comes before its new value."""
    cfg = config(connection={"local_networks": ["10.8.0.0/16"]})
    cmds = script(diff(adapter(cfg).wanted(), parse_running(RUNNING)))
    assert cmds.index(f"no ip prefix-list {OUT} seq 5 deny 172.16.0.0/17") < cmds.index(
        f"ip prefix-list {OUT} seq 5 deny 10.8.0.0/17")
    assert cmds.index(f"no ip prefix-list {OUT} seq 10 deny 172.16.128.0/17") < cmds.index(
        f"ip prefix-list {OUT} seq 10 deny 10.8.128.0/17")
    assert f"no ip prefix-list {OUT} seq 4294967295 permit any" not in cmds


async def test_set_active_kicks_a_push_for_the_halves_only_off_tunnel_1():
    a = adapter()
    a._pushed = dict(a.enabled)
    await a.set_active("vpc1", "tunnel1", "usable")
    assert a._push is None and not a.pending()
    await a.set_active("vpc1", "tunnel2", "tunnel1 failed")
    assert a.pending() and a._push is not None
    a._push.cancel()
    await a.vtysh.close()


# --- status -----------------------------------------------------------------------------------

def test_status_says_where_the_cloud_is_steered():
    from vpnd.control.cli import render
    from vpnd.control.status import _return_path

    conn = config().connections[0]
    assert _return_path(conn, "tunnel1") == {"tunnel": "tunnel1", "by": "as-path prepend", "more_specifics": []}
    assert _return_path(conn, None) == {"tunnel": "tunnel1", "by": "as-path prepend", "more_specifics": []}
    assert _return_path(conn, "tunnel2") == {"tunnel": "tunnel2", "by": "more-specific", "more_specifics": HALVES}
    assert _return_path(config(return_path="none").connections[0], "tunnel2")["by"] == "as-path prepend"
    assert _return_path(config(standby="ecmp").connections[0], "tunnel2") == {
        "tunnel": None, "by": "ecmp", "more_specifics": []}
    status = {"daemon": {}, "connections": {"vpc1": {
        "routing": "bgp", "state": "active", "active": "tunnel2", "reason": "tunnel1 failed",
        "pinned": None, "tunnels": {}, "return_path": _return_path(conn, "tunnel2")}}}
    assert "  cloud steered to tunnel2 (more-specifics 172.16.0.0/17, 172.16.128.0/17)\n" in render(status)


class _Stub:
    def __init__(self) -> None:
        self.calls: list = []

    async def withdraw_return_path(self, connection):
        self.calls.append(connection)
        return HALVES

    async def stop(self):
        self.calls.append("interfaces stopped")


class _NoCloudCheck:
    async def stop(self, *, withdraw):
        pass


@pytest.mark.parametrize("withdraw", [False, True])
async def test_stop_follows_withdraw_on_stop(withdraw):
    """daemon.withdraw_on_stop: the halves go at stop (before the adapter stops); by default
    they stay, as the routes do, and the next vpnd adopts them."""
    from vpnd.steering.bgp import BgpSteering

    s = BgpSteering.__new__(BgpSteering)
    s.conn = config().connections[0]
    stub = _Stub()
    s.backend = type("B", (), {"adapter": stub})()
    s.interfaces = stub
    s.cloud_check = _NoCloudCheck()        # the cloud health check's reply marking: none here
    s.data_path = _NoCloudCheck()          # nor an MSS clamp
    await s.stop(withdraw=withdraw)
    assert stub.calls == (["vpc1", "interfaces stopped"] if withdraw else ["interfaces stopped"])


def test_turning_the_return_path_off_withdraws_the_halves_before_the_filter_goes():
    """A reload to return_path = "none" while tunnel 2 is active: `no network` first, then
    the standby route-map's `no match` and the prefix-list, so tunnel 1 never sees a half."""
    cmds = script(diff(adapter(config(return_path="none")).wanted(active={"vpc1": "tunnel2"}),
                       running_tunnel2()))
    assert cmds == [
        R, "address-family ipv4 unicast", "no network 172.16.0.0/17", "no network 172.16.128.0/17",
        "exit-address-family", "exit",
        f"route-map {OUT} permit 1", f"no match ip address prefix-list {OUT}", "exit",
        f"no ip prefix-list {OUT} seq 4294967295 permit any",
        f"no ip prefix-list {OUT} seq 5 deny 172.16.0.0/17",
        f"no ip prefix-list {OUT} seq 10 deny 172.16.128.0/17"]

"""Pure: which route-maps each neighbor wants for the core's active tunnel (standby =
"prepend"), and the few lines that move them. No FRR: the adapter's wanted config is computed
and diffed against FRR 8.4's rendering of the default (tunnel 1 preferred)."""

from __future__ import annotations

from vpnd_testing.config_toml import bgp_config, dumps
from test_frr_diff import AF, RUNNING, T1, T2
from vpnd.frr.bgp import BgpAdapter
from vpnd.config.load import load_text
from vpnd.core import events as E
from vpnd.frr.vtysh import VtyshTarget
from vpnd.frr.diff import Change, diff, parse_running
from vpnd.render.frr import frr_config, neighbor_route_maps

IN, OUT = "vpnd-vpc1-standby-in", "vpnd-vpc1-standby-out"


def config(**bgp):
    doc = bgp_config()
    doc["connection"][0]["bgp"].update(bgp)
    return load_text(dumps(doc))


def adapter(cfg=None) -> BgpAdapter:
    # never started: wanted() and route_map_changes() touch no FRR
    return BgpAdapter(cfg or config(), on_event=lambda e: None,
                      target=VtyshTarget(vtysh="/nonexistent/vtysh"))


def test_the_active_tunnel_gets_allow_all_the_others_the_standby_maps():
    conn = config().connections[0]
    assert neighbor_route_maps(conn) == {T1: ("allow-all", "allow-all"), T2: (IN, OUT)}
    assert neighbor_route_maps(conn, {"vpc1": "tunnel2"}) == {T1: (IN, OUT), T2: ("allow-all", "allow-all")}
    # no decision yet, or a name that is not ours: the rendered default
    for active in (None, {}, {"vpc1": None}, {"vpc1": "tunnel9"}, {"other": "tunnel2"}):
        assert neighbor_route_maps(conn, active) == neighbor_route_maps(conn), active


def test_ecmp_ignores_the_active_tunnel():
    conn = config(standby="ecmp").connections[0]
    both = {T1: ("allow-all", "allow-all"), T2: ("allow-all", "allow-all")}
    assert neighbor_route_maps(conn, {"vpc1": "tunnel2"}) == both
    cfg = config(standby="ecmp")
    assert frr_config(cfg, {"vpc1": "tunnel2"}) == frr_config(cfg)


def test_render_without_an_assignment_is_unchanged():
    cfg = config()
    assert frr_config(cfg) == frr_config(cfg, {"vpc1": "tunnel1"})
    text = frr_config(cfg).text()
    assert f"neighbor {T2} route-map {IN} in" in text and f"neighbor {T1} route-map allow-all in" in text


def test_swap_against_the_running_default_is_the_four_route_map_lines():
    a = adapter()
    running = parse_running(RUNNING)
    assert diff(a.wanted(), running) == []
    swapped = diff(a.wanted(active={"vpc1": "tunnel2"}), running)
    assert swapped == [
        Change(AF, f"neighbor {T1} route-map {IN} in"), Change(AF, f"neighbor {T1} route-map {OUT} out"),
        Change(AF, f"neighbor {T2} route-map allow-all in"), Change(AF, f"neighbor {T2} route-map allow-all out"),
        # the return path (tests/unit/test_bgp_return_path.py): after the route-maps moved
        Change(AF, "network 172.16.0.0/17"), Change(AF, "network 172.16.128.0/17"),
    ]
    # the route-maps themselves stay: both kinds are always rendered
    assert not [c for c in swapped if c.keys[0].startswith("route-map")]


def test_wanted_combines_shutdown_and_assignment():
    a = adapter()
    enabled = {E.TunnelKey("vpc1", "tunnel1"): False, E.TunnelKey("vpc1", "tunnel2"): True}
    changes = diff(a.wanted(enabled, {"vpc1": "tunnel2"}), parse_running(RUNNING))
    assert Change(("router bgp 65530",), f"neighbor {T1} shutdown") in changes
    assert len(changes) == 7            # + the return path's two more-specifics


def test_route_map_changes_between_assignments():
    a = adapter()
    assert a.route_map_changes(None, {}) == []
    assert a.route_map_changes(None, {"vpc1": "tunnel1"}) == []
    assert a.route_map_changes({"vpc1": "tunnel2"}, {"vpc1": "tunnel2"}) == []
    assert a.route_map_changes(None, {"vpc1": "tunnel2"}) == [
        (T1, f"neighbor {T1} route-map {IN} in"), (T1, f"neighbor {T1} route-map {OUT} out"),
        (T2, f"neighbor {T2} route-map allow-all in"), (T2, f"neighbor {T2} route-map allow-all out"),
    ]
    back = a.route_map_changes({"vpc1": "tunnel2"}, {"vpc1": "tunnel1"})
    assert [line for _, line in back] == [
        f"neighbor {T1} route-map allow-all in", f"neighbor {T1} route-map allow-all out",
        f"neighbor {T2} route-map {IN} in", f"neighbor {T2} route-map {OUT} out"]
    assert adapter(config(standby="ecmp")).route_map_changes(None, {"vpc1": "tunnel2"}) == []


async def test_set_active_records_without_touching_frr():
    a = adapter()
    a._pushed = dict(a.enabled)                              # as after the first apply()
    await a.set_active("vpc1", None, "withdrawn")           # keeps the assignment
    await a.set_active("vpc1", "tunnel9", "unknown")        # not ours: ignored
    assert a.active == {} and a._push is None
    await a.set_active("vpc1", "tunnel1", "usable")          # the default: nothing to push
    assert a.active == {"vpc1": "tunnel1"} and not a.pending()
    assert a._push is None
    await a.set_active("vpc1", "tunnel2", "drained")
    assert a.pending() and a._push is not None
    a._push.cancel()
    await a.vtysh.close()

"""The pure side of BGP mode: running-config parsing, apply-by-difference, FRR's JSON.

No FRR needed: texts below are FRR 8.4's own output (captured from the lab), and the JSON
parsers are fuzzed with random JSON and with real answers that lost random fields."""

from __future__ import annotations

import copy
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from vpnd_testing.config_toml import bgp_config, dumps
from vpnd.config.load import load_text
from vpnd.frr.diff import (
    Change, diff, parse_bfd_peers, parse_bgp_summary, parse_running, script, setting,
)
from vpnd.render.frr import frr_config

R = "router bgp 65530"
AF = (R, "address-family ipv4 unicast")
T1, T2 = "169.254.10.1", "169.254.20.1"

# FRR's own rendering of what vpnd applies (its order, hidden BFD defaults, implied `bfd`)
RUNNING = """Building configuration...

Current configuration:
!
frr version 8.4.4
frr defaults traditional
hostname vm
bgp route-map delay-timer 0
service integrated-vtysh-config
!
router bgp 65530
 bgp router-id 169.254.10.2
 no bgp network import-check
 neighbor 169.254.10.1 remote-as 45104
 neighbor 169.254.10.1 bfd
 neighbor 169.254.10.1 bfd profile vpnd-vpc1
 neighbor 169.254.10.1 timers 10 30
 neighbor 169.254.20.1 remote-as 45104
 neighbor 169.254.20.1 bfd
 neighbor 169.254.20.1 bfd profile vpnd-vpc1
 neighbor 169.254.20.1 timers 10 30
 !
 address-family ipv4 unicast
  network 172.16.0.0/16
  neighbor 169.254.10.1 soft-reconfiguration inbound
  neighbor 169.254.10.1 route-map allow-all in
  neighbor 169.254.10.1 route-map allow-all out
  neighbor 169.254.20.1 soft-reconfiguration inbound
  neighbor 169.254.20.1 route-map vpnd-vpc1-standby-in in
  neighbor 169.254.20.1 route-map vpnd-vpc1-standby-out out
  maximum-paths 32
 exit-address-family
exit
!
ip prefix-list vpnd-vpc1-standby-out seq 4294967295 permit any
ip prefix-list vpnd-vpc1-standby-out seq 5 deny 172.16.0.0/17
ip prefix-list vpnd-vpc1-standby-out seq 10 deny 172.16.128.0/17
!
route-map allow-all permit 1
exit
!
route-map vpnd-vpc1-standby-in permit 1
 set local-preference 50
exit
!
route-map vpnd-vpc1-standby-out permit 1
 match ip address prefix-list vpnd-vpc1-standby-out
 set as-path prepend 65530 65530 65530
exit
!
bfd
 profile vpnd-vpc1
 exit
 !
exit
!
end
"""

SUMMARY = {"ipv4Unicast": {
    "routerId": "169.254.10.2", "as": 65530, "vrfId": 0, "vrfName": "default", "peerCount": 2,
    "peers": {
        T1: {"remoteAs": 45104, "localAs": 65530, "version": 4, "msgRcvd": 12, "msgSent": 12,
             "peerUptime": "00:00:07", "peerUptimeMsec": 7000, "pfxRcd": 1, "pfxSnt": 1,
             "state": "Established", "peerState": "OK", "connectionsEstablished": 1,
             "connectionsDropped": 0, "idType": "ipv4"},
        T2: {"remoteAs": 45104, "localAs": 65530, "version": 4, "msgRcvd": 0, "msgSent": 0,
             "peerUptime": "never", "peerUptimeMsec": 0, "pfxRcd": 0, "pfxSnt": 0,
             "state": "Idle (Admin)", "peerState": "Shutdown", "idType": "ipv4"}},
    "failedPeers": 1, "displayedPeers": 2, "totalPeers": 2}}

BFD = [{"multihop": False, "peer": T1, "local": "169.254.10.2", "vrf": "default",
        "interface": "vxlan1", "id": 1, "remote-id": 2, "passive-mode": False, "status": "up",
        "uptime": 5, "diagnostic": "ok", "remote-diagnostic": "ok", "receive-interval": 300,
        "transmit-interval": 300, "echo-receive-interval": 50, "detect-multiplier": 3},
       {"peer": T2, "status": "down", "diagnostic": "control detection time expired"}]


def wanted(**bgp):
    doc = bgp_config()
    doc["connection"][0]["bgp"].update(bgp)
    return [(c.keys, list(c.lines)) for c in frr_config(load_text(dumps(doc))).contexts]


def test_running_config_parses_into_contexts():
    run = parse_running(RUNNING)
    assert run.contexts[(R,)][:3] == ["bgp router-id 169.254.10.2", "no bgp network import-check",
                                      f"neighbor {T1} remote-as 45104"]
    assert run.contexts[AF][-1] == "maximum-paths 32"
    assert run.contexts[("route-map vpnd-vpc1-standby-in permit 1",)] == ["set local-preference 50"]
    assert run.contexts[("bfd", "profile vpnd-vpc1")] == []
    assert ("bgp route-map delay-timer 0",) in run.contexts


def test_frr_s_own_rendering_of_our_config_needs_nothing():
    """FRR's order, its hidden defaults and implied lines are no difference."""
    assert diff(wanted(), parse_running(RUNNING)) == []


def test_our_rendering_parsed_back_needs_nothing():
    for bgp in ({}, {"standby": "ecmp"}, {"bfd": {"enabled": False}}, {"keepalive": 1, "hold": 3}):
        doc = bgp_config()
        doc["connection"][0]["bgp"].update(bgp)
        rendered = frr_config(load_text(dumps(doc)))
        assert diff([(c.keys, list(c.lines)) for c in rendered.contexts],
                    parse_running(rendered.text())) == [], bgp


def test_empty_frr_gets_everything_in_order():
    changes = diff(wanted(), parse_running(""))
    cmds = script(changes)
    assert cmds[0] == "bgp route-map delay-timer 0"
    assert cmds.index("route-map allow-all permit 1") < cmds.index(R)    # maps before use
    assert cmds.index(f"neighbor {T1} remote-as 45104") < cmds.index(f"neighbor {T1} timers 10 30")
    # every context entered is left: the session ends where it started (config mode)
    depth = 0
    for c in cmds:
        if c in (R, "address-family ipv4 unicast", "bfd") or c.startswith(("route-map ", "profile ")):
            depth += 1
        elif c in ("exit", "exit-address-family"):
            depth -= 1
        assert depth >= 0
    assert depth == 0


def test_changed_timer_is_one_line_per_neighbor():
    assert diff(wanted(keepalive=5, hold=15), parse_running(RUNNING)) == [
        Change((R,), f"neighbor {T1} timers 5 15"), Change((R,), f"neighbor {T2} timers 5 15")]


def test_changed_values_replace_without_no():
    changes = diff(wanted(prepend_count=2, maximum_paths=4), parse_running(RUNNING))
    assert changes == [Change(("route-map vpnd-vpc1-standby-out permit 1",), "set as-path prepend 65530 65530"),
                       Change(AF, "maximum-paths 4")]


def test_unwanted_owned_lines_get_no_and_others_stay():
    text = RUNNING.replace("  network 172.16.0.0/16\n", "  network 172.16.0.0/16\n  network 10.99.0.0/16\n")
    text = text.replace("route-map allow-all permit 1\nexit\n",
                        "route-map allow-all permit 1\nexit\n!\nroute-map operator permit 10\n"
                        " set metric 5\nexit\n!\nroute-map vpnd-old-standby-in permit 1\n set local-preference 50\nexit\n"
                        "!\nip prefix-list x seq 5 permit 10.0.0.0/8\n")
    text = text.replace(" neighbor 169.254.10.1 timers 10 30\n",
                        " neighbor 169.254.10.1 timers 10 30\n neighbor 169.254.10.1 shutdown\n")
    assert diff(wanted(), parse_running(text)) == [
        Change(AF, "no network 10.99.0.0/16"),          # withdrawals first (vpnd.frr.diff)
        Change((R,), f"no neighbor {T1} shutdown"),
        Change((), "no route-map vpnd-old-standby-in permit 1")]


def test_removed_neighbor_is_one_command_and_bfd_off_drops_the_profile():
    want = wanted(bfd={"enabled": False})
    want = [(k, [ln for ln in lines if T2 not in ln]) for k, lines in want]
    changes = diff(want, parse_running(RUNNING))
    # `no neighbor P bfd` takes the profile line with it; `no neighbor P remote-as` the rest
    assert changes == [Change((R,), f"no neighbor {T1} bfd"),
                       Change((R,), f"no neighbor {T2} remote-as 45104"),
                       Change(("bfd",), "no profile vpnd-vpc1")]


def test_another_asn_replaces_the_router_never_otherwise():
    changes = diff(wanted(local_asn=65001), parse_running(RUNNING))
    assert changes[0] == Change((), "no router bgp 65530")
    assert Change(("router bgp 65001",), "bgp router-id 169.254.10.2") in changes
    assert not [c for c in diff(wanted(keepalive=3, hold=9, maximum_paths=2), parse_running(RUNNING))
                if c.command.startswith("no router")]


def test_script_navigates_contexts():
    assert script([Change((R,), "a"), Change(AF, "b"), Change(("bfd", "profile p"), "c"),
                   Change((), "d")]) == [
        R, "a", "address-family ipv4 unicast", "b", "exit-address-family", "exit",
        "bfd", "profile p", "c", "exit", "exit", "d"]


def test_settings():
    assert setting(f"neighbor {T1} timers 1 3") == f"neighbor {T1} timers"
    assert setting(f"neighbor {T1} route-map x in") == f"neighbor {T1} route-map in"
    assert setting("network 10.0.0.0/8") is None


# --- drift: any subset of our lines missing -> exactly those lines come back -------------------

@settings(max_examples=200, deadline=None)
@given(st.data())
def test_drift_is_repaired_by_exactly_the_missing_lines(data):
    want = wanted()
    running = parse_running(RUNNING)
    entries = [(k, ln) for k, lines in want for ln in lines]
    gone = data.draw(st.sets(st.sampled_from(entries), max_size=len(entries)))
    broken = copy.deepcopy(running.contexts)
    hidden = {"receive-interval 300", "transmit-interval 300", "detect-multiplier 3"}
    for k, ln in gone:
        if ln in broken.get(k, []):
            broken[k].remove(ln)
    changes = diff(want, type(running)(broken))
    assert {(c.keys, c.command) for c in changes} == {(k, ln) for k, ln in gone if ln not in hidden}


# --- JSON: tolerant of anything -----------------------------------------------------------------

def test_real_outputs():
    s = parse_bgp_summary(SUMMARY)
    assert s.router and s.asn == 65530
    assert s.peers[T1].established and s.peers[T1].prefixes_received == 1
    assert not s.peers[T2].established and s.peers[T2].state == "Idle (Admin)"
    assert parse_bgp_summary({}) .router is False
    assert parse_bfd_peers(BFD) == {T1: True, T2: False}
    assert parse_bfd_peers([]) == {}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@given(json_values)
def test_parsers_survive_random_json(value):
    parse_bgp_summary(value)
    parse_bfd_peers(value)
    parse_bgp_summary({"ipv4Unicast": value})
    parse_bgp_summary({"ipv4Unicast": {"peers": value, "as": value}})
    parse_bfd_peers([value])


def _paths(value, prefix=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=300)
@given(st.data())
def test_real_outputs_with_fields_removed(data):
    for original, parse in ((SUMMARY, parse_bgp_summary), (BFD, parse_bfd_peers)):
        doc = copy.deepcopy(original)
        paths = list(_paths(doc))
        for path in data.draw(st.lists(st.sampled_from(paths), max_size=6)):
            node = doc
            try:
                for k in path[:-1]:
                    node = node[k]
                del node[path[-1]]
            except (KeyError, IndexError, TypeError):
                pass
        out = parse(json.loads(json.dumps(doc)))
        if parse is parse_bgp_summary:
            for ip, p in out.peers.items():
                assert p.established == (doc["ipv4Unicast"]["peers"][ip].get("state") == "Established")
        else:
            assert all(up == any(p.get("peer") == ip and p.get("status") == "up" for p in doc)
                       for ip, up in out.items())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=" !abcdeinortu-0123456789.\n", max_size=40), max_size=30))
def test_running_parser_and_diff_survive_any_text(lines):
    diff(wanted(), parse_running("\n".join(lines)))


def test_a_negated_default_is_undone_by_its_positive_form():
    running = parse_running("router bgp 65530\n bgp router-id 1.1.1.1\n no bgp network import-check\nexit\n")
    changes = diff([((R,), ["bgp router-id 1.1.1.1"])], running)
    assert changes == [Change((R,), "bgp network import-check")]

"""vpnd.core.mtu: the tunnel MTU formula, the clamp, the `mtu` config rule and the path-MTU
search (pure: no sleeps, no sockets); vpnd.kernel.mss_clamp's nft text."""

from __future__ import annotations

import pytest

from vpnd.config.load import load_text
from vpnd.config.model import ConfigError
from vpnd.core.mtu import PmtuSearch, clamp_mss, esp_overhead, tunnel_mtu
from vpnd.kernel import mss_clamp
from vpnd_testing.config_toml import dumps, mutate, route_config


@pytest.mark.parametrize("underlay, enc, integ, nat_t, want", [
    (1500, "aes128", "sha1", True, 1422),      # 1500-20-8-8-16-12 = 1436 -> 1424 - 2
    (1500, "aes128", "sha1", False, 1438),     # the commonly quoted ESP/AES/SHA1 figure
    (1500, "aes256", "sha256", True, 1422),    # 1432 -> 1424 - 2
    (1500, "aes256", "sha512", True, 1406),    # 1416 -> 1408 - 2
    (1500, "aes128", "sha384", True, 1422),    # 1424 -> 1424 - 2
    (1500, "aes128gcm16", "sha1", True, 1438),  # 1500-20-8-8-8-16 = 1440 -> 1440 - 2
    (1500, "3des", "sha1", True, 1438),        # 1444 -> 1440 - 2
    (1300, "aes128", "sha1", True, 1230),     # 1236 -> 1232 - 2
])
def test_tunnel_mtu_formula(underlay, enc, integ, nat_t, want):
    assert tunnel_mtu(underlay, enc, integ, nat_t) == want
    assert esp_overhead(underlay, enc, integ, nat_t) == underlay - want


def test_clamp_is_the_narrower_minus_40():
    assert clamp_mss(1422) == 1382
    assert clamp_mss(1422, 1300) == 1260
    assert clamp_mss(1300, 1400) == 1260


def _load(value):
    doc = mutate(route_config(), "connection.0.tunnel.0.mtu", value)
    return load_text(dumps(doc))


def test_mtu_in_config_and_its_bounds():
    assert _load(1400).connections[0].tunnels[0].mtu == 1400
    assert load_text(dumps(route_config())).connections[0].tunnels[0].mtu is None
    for bad in (575, 9001, "1400"):
        with pytest.raises(ConfigError) as err:
            _load(bad)
        text = str(err.value.errors[0])
        assert "tunnel[0].mtu" in text
        assert ("576 to 9000" in text) or ("integer" in text)


def run_search(s: PmtuSearch, path_mtu: int, lose_every: int = 0) -> int | None:
    n = 0
    while (size := s.next_size()) is not None:
        n += 1
        assert n < 200
        lost = lose_every and n % lose_every == 0
        s.record(size, size <= path_mtu and not lost)
    return s.result


@pytest.mark.parametrize("pmtu", [576, 577, 900, 1179, 1299, 1300])
def test_search_finds_the_path_mtu(pmtu):
    s = PmtuSearch(576, 1300, tries=3)
    assert run_search(s, pmtu) == pmtu
    assert s.done


def test_search_wide_path_costs_one_probe():
    s = PmtuSearch(576, 1422)
    assert run_search(s, 1500) == 1422 and s.probes == 1


def test_search_one_loss_is_not_a_narrow_path():
    s = PmtuSearch(576, 1300, tries=3)
    assert run_search(s, 1180, lose_every=4) == 1180


def test_search_bounded():
    s = PmtuSearch(576, 1422, tries=3)
    run_search(s, 1000)
    # each size: one answer or `tries` losses; about log2(846) + 2 sizes
    assert s.probes <= 3 * 12


def test_search_nothing_answers():
    s = PmtuSearch(576, 1300, tries=2)
    assert run_search(s, 0) is None and s.done and s.probes == 4


def test_clamp_rules_both_directions():
    conn = load_text(dumps(route_config())).connections[0]
    ifs = [t.interface for t in conn.tunnels]
    script = mss_clamp.nft_script(conn, {ifs[0]: 1382, ifs[1]: 1260})
    assert f"add chain inet vpnd mss-{conn.name} {{ type filter hook forward priority mangle;" in script
    for side in ("oifname", "iifname"):
        assert (f'{side} "{ifs[1]}" tcp flags syn tcp option maxseg size > 1260 '
                "tcp option maxseg size set 1260") in script
    assert mss_clamp.nft_problems(None, conn, {ifs[0]: 1382})


def test_render_nft_shows_mtu_and_clamp_per_tunnel():
    from vpnd.render.command import render
    text = render("nft", load_text(dumps(mutate(route_config(), "connection.0.tunnel.1.mtu", 1300))))
    assert "mtu 1300 (configured)" in text
    assert "maxseg size set 1260" in text
    assert "psk" not in text.lower()

"""Property tests: whatever the input, the loader raises nothing but ConfigError, never shows
a PSK, and `vpnd check` only ever exits 0 or 1."""

from __future__ import annotations

import argparse
import io
import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpnd_testing.config_toml import (
    SECRET_1, SECRET_2, bgp_config, dumps, leaf_paths, mutate, route_config,
)
from vpnd.config import check
from vpnd.config.load import (
    BGP_KEYS, CONNECTION_KEYS, DAEMON_KEYS, IKE_KEYS, TUNNEL_KEYS, load_text_with_warnings,
)
from vpnd.config.model import Config, ConfigError

FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

KNOWN_KEYS = sorted(set(DAEMON_KEYS + CONNECTION_KEYS + IKE_KEYS + BGP_KEYS + TUNNEL_KEYS))

# Strings the rules care about, mixed with arbitrary text, to get past the first checks.
INTERESTING = st.sampled_from([
    "", "aes128", "group14", "disabled", "bgp", "route", "policy", "198.18.0.2",
    "169.254.10.0/30", "169.254.0.0/30", "10.0.0.0/8", "0.0.0.0/0", "1.10", "65535.65535",
    "a.b.c", "ipsec0", "/tmp", "examples/tunnel1.psk", "/dev/zero", ".", "127.0.0.1:9456",
])
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    INTERESTING,
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=12))


def values(max_leaves=12):
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(keys, inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )


documents = st.dictionaries(
    st.one_of(st.sampled_from(["daemon", "connection"]), keys), values(), max_size=4)


def outcome(text: str):
    """Load; anything but a Config or a ConfigError is a bug. Returns every message."""
    try:
        cfg, warnings = load_text_with_warnings(text, base_dir=os.path.dirname(__file__))
    except ConfigError as exc:
        assert exc.errors, "a ConfigError must carry at least one error"
        problems = exc.errors + exc.warnings
    else:
        assert isinstance(cfg, Config)
        problems = warnings
    for p in problems:
        assert SECRET_1 not in str(p) and SECRET_2 not in str(p), p
    return problems


@FAST
@given(documents)
def test_arbitrary_documents(doc):
    outcome(dumps(doc))


@FAST
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    outcome(text)


@FAST
@given(st.lists(st.sampled_from(
    ["[daemon]", "[[connection]]", "[connection.ike]", "[[connection.tunnel]]",
     "[connection.tunnel.bgp]", "name = \"x\"", "psk = 1", "tunnel = 3", "connection = 1",
     "version = 1", "a.b.c = 1", "[connection.bgp.bfd]", "x = [[1], {a = 1}]"]), max_size=12))
def test_arbitrary_table_layouts(lines):
    outcome("\n".join(lines) + "\n")


def _base_and_path():
    return st.sampled_from(["route", "bgp"]).flatmap(
        lambda base: st.tuples(
            st.just(base),
            st.sampled_from(leaf_paths(route_config() if base == "route" else bgp_config())),
        )
    )


@FAST
@given(_base_and_path(), values(max_leaves=6))
def test_any_value_in_every_key(base_path, value):
    base, path = base_path
    doc = route_config() if base == "route" else bgp_config()
    outcome(dumps(mutate(doc, path, value)))


@FAST
@given(_base_and_path(), keys, values(max_leaves=4))
def test_any_extra_key_anywhere(base_path, key, value):
    base, path = base_path
    doc = route_config() if base == "route" else bgp_config()
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    target = f"{parent}.{key}" if parent else key
    try:
        doc = mutate(doc, target, value)
    except (TypeError, ValueError, IndexError, AttributeError, KeyError):
        return                      # the path went through a list or scalar: nothing to add
    outcome(dumps(doc))


@settings(max_examples=100, deadline=None)
@given(_base_and_path(), values(max_leaves=4))
def test_check_exits_0_or_1(base_path, value):
    base, path = base_path
    doc = route_config() if base == "route" else bgp_config()
    text = dumps(mutate(doc, path, value))
    with tempfile.TemporaryDirectory() as tmp:
        name = os.path.join(tmp, "config.toml")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        out, err = io.StringIO(), io.StringIO()
        rc = check.main(argparse.Namespace(config=name), out=out, err=err)
    assert rc in (0, 1)
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue()
    assert SECRET_1 not in out.getvalue() + err.getvalue()
    assert SECRET_2 not in out.getvalue() + err.getvalue()

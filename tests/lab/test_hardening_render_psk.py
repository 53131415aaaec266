"""Issue 14 #10: a PSK that begins with 0x or 0s renders so strongSwan reads it literally.

swanctl decodes a `secret` starting with `0x` as hex and `0s` as base64 (quoted or not), while
vpnd's VICI path hands charon the key's raw bytes. `render swanctl --show-secrets` must give
charon the same bytes, so such keys render as 0x<hex of the bytes>."""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from pathlib import Path

import pytest

from vpnd.config.load import load_file
from vpnd.config.model import Secret
from vpnd.render import swanctl

TRICKY = ("0x4142434445464748", "0sQUJDREVGR0hJSktMTU5PUA==", "0Xdeadbeefcafe", "0x", "0sx y")


def _strongswan_reads(value: str) -> bytes:
    """swanctl's rule for a secret's value (after the conf parser removed the quotes)."""
    if value.startswith("0x"):
        return bytes.fromhex(value[2:])
    if value.startswith("0s"):
        return base64.b64decode(value[2:])
    return value.encode()


def _secrets(text: str) -> list[str]:
    out = []
    for m in re.finditer(r'^\s*secret = (.*)$', text, re.M):
        v = m[1]
        if v.startswith('"'):
            v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out.append(v)
    return out


def _with_psks(psks):
    config = load_file(Path(__file__).resolve().parents[1] / "golden" / "vendor_guide.toml")
    conn = config.connections[0]
    conn = replace(conn, tunnels=tuple(replace(t, psk=Secret(p)) for t, p in zip(conn.tunnels, psks)))
    return replace(config, connections=(conn,))


@pytest.mark.parametrize("psk", TRICKY + ("plain-Key-1", 'we ir"d\\ #;{x}=y'))
def test_rendered_secret_is_read_as_the_same_bytes(psk):
    text = swanctl.swanctl_text(_with_psks([psk, psk]), show_secrets=True)
    got = _secrets(text)
    assert got and all(_strongswan_reads(v) == psk.encode() for v in got), got


def test_plain_keys_render_as_they_are():
    text = swanctl.swanctl_text(_with_psks(["plain-Key-1", "plain-Key-2"]), show_secrets=True)
    assert _secrets(text) == ["plain-Key-1", "plain-Key-2"]


def test_masked_unless_asked():
    text = swanctl.swanctl_text(_with_psks(TRICKY[:2]), show_secrets=False)
    assert "4142" not in text and "QUJD" not in text

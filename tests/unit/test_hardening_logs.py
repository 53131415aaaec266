"""Issue 14 #6: the log redactor sees tracebacks, knows keys rotated by SIGHUP, and does not
mangle every field for a very short key."""

from __future__ import annotations

import io
import json
import os

import pytest
import structlog

from vpnd_testing.config_toml import dumps, mutate, route_config
from vpnd import logs


@pytest.fixture
def out():
    saved = set(logs._known_secrets)
    logs._known_secrets.clear()
    stream = io.StringIO()
    logs.configure("json", "info", stream=stream)
    yield stream
    structlog.reset_defaults()
    logs._known_secrets.clear()
    logs._known_secrets.update(saved)


def _lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_traceback_is_scrubbed(out):
    logs.register_secrets(["Traceback-Secret-Key-1"])
    try:
        raise ValueError("charon said: bad key Traceback-Secret-Key-1")
    except ValueError:
        logs.get("t").exception("boom")
    text = out.getvalue()
    assert "Traceback-Secret-Key-1" not in text
    assert "Traceback (most recent call last)" in text and logs.MASK in text


def test_a_short_key_is_masked_only_as_a_whole_word(out):
    logs.register_secrets(["ab"])
    log = logs.get("t")
    log.info("tunnel.state_changed", connection="lab", tunnel="tabby", note="abc ab")
    log.info("x", psk_echo="ab")
    first, second = _lines(out)
    assert first["tunnel"] == "tabby" and first["event"] == "tunnel.state_changed"
    assert first["note"] == f"abc {logs.MASK}"
    assert second["psk_echo"] == logs.MASK


def test_a_long_key_is_masked_anywhere(out):
    logs.register_secrets(["Long-Enough-Key-9"])
    logs.get("t").info("x", detail="prefixLong-Enough-Key-9suffix")
    assert _lines(out)[0]["detail"] == f"prefix{logs.MASK}suffix"


async def test_a_key_rotated_by_reload_is_masked(out, tmp_path):
    from vpnd.config.load import load_file
    from vpnd.run.supervisor import Supervisor

    path = tmp_path / "vpnd.toml"
    path.write_text(dumps(route_config()))
    os.chmod(path, 0o600)
    sup = Supervisor(load_file(path))
    rotated = "Rotated-By-Sighup-Key-7"
    path.write_text(dumps(mutate(route_config(), "connection.0.tunnel.0.psk", rotated)))
    await sup._reload()
    assert sup.config.connections[0].tunnels[0].psk.reveal() == rotated
    logs.get("t").info("x", detail=f"charon echoed {rotated}")
    assert rotated not in out.getvalue()

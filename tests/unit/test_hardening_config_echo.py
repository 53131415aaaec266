"""Issue 14 #7: a key pasted into another field is never quoted back in an error."""

from __future__ import annotations

import os

import pytest

from vpnd_testing.config_toml import SECRET_1, SECRET_2, dumps, mutate, route_config
from vpnd.config.load import load_file_with_warnings, load_text
from vpnd.config.model import ConfigError

PASTES = [
    ("connection.0.ike.mode", SECRET_1),
    ("connection.0.tunnel.1.remote_address", SECRET_1),
    ("connection.0.routing", "x" + SECRET_2 + "y"),
    ("connection.0.health_check.kind", SECRET_2),
    ("daemon.log_level", SECRET_1),
]


@pytest.mark.parametrize("path,value", PASTES)
def test_error_never_quotes_a_configured_key(path, value):
    with pytest.raises(ConfigError) as exc:
        load_text(dumps(mutate(route_config(), path, value)))
    text = "\n".join(str(p) for p in exc.value.errors + exc.value.warnings)
    assert SECRET_1 not in text and SECRET_2 not in text, text
    assert "********" in text


def test_a_key_from_psk_file_is_not_quoted_either(tmp_path):
    keyfile = tmp_path / "k1"
    keyfile.write_text("From-A-Psk-File-Key-3\n")
    os.chmod(keyfile, 0o600)
    doc = mutate(route_config(), "connection.0.tunnel.0.psk", None)
    del doc["connection"][0]["tunnel"][0]["psk"]
    doc["connection"][0]["tunnel"][0]["psk_file"] = str(keyfile)
    doc = mutate(doc, "connection.0.ike.mode", "From-A-Psk-File-Key-3")
    path = tmp_path / "c.toml"
    path.write_text(dumps(doc))
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError) as exc:
        load_file_with_warnings(path, strict_permissions=True)
    text = "\n".join(str(p) for p in exc.value.errors)
    assert "From-A-Psk-File-Key-3" not in text and "connection[0].ike.mode" in text


def test_a_long_key_cut_short_in_the_message_is_masked_too():
    long_key = "Q" + "w3-rty" * 16          # 97 characters: shown as its first 57 and "..."
    doc = mutate(route_config(), "connection.0.tunnel.0.psk", long_key)
    doc = mutate(doc, "connection.0.tunnel.0.local_address", long_key)
    with pytest.raises(ConfigError) as exc:
        load_text(dumps(doc))
    text = "\n".join(str(p) for p in exc.value.errors)
    assert long_key[:20] not in text and "connection[0].tunnel[0].local_address" in text, text


def test_check_says_which_key_without_the_value(tmp_path, capsys):
    from types import SimpleNamespace

    from vpnd.config import check

    path = tmp_path / "c.toml"
    path.write_text(dumps(mutate(route_config(), "connection.0.ike.mode", SECRET_1)))
    os.chmod(path, 0o600)
    assert check.main(SimpleNamespace(config=str(path))) == 1
    err = capsys.readouterr().err
    assert SECRET_1 not in err
    assert "error: connection[0].ike.mode: '********' is not one of main, aggressive" in err

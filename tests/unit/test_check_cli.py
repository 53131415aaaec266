"""`vpnd check -c FILE`: exit codes, messages, the secrets permission rule, the example file."""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vpnd_testing.config_toml import (
    DELETE, SECRET_1, SECRET_2, bgp_config, dumps, installed_example, mutate, route_config,
)
from vpnd.config import check

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.toml.example"


def write(path: Path, doc_or_text, mode=0o600) -> Path:
    text = doc_or_text if isinstance(doc_or_text, str) else dumps(doc_or_text)
    path.write_text(text)
    path.chmod(mode)
    return path


example_copy = installed_example      # the example as an operator installs it


def run_check(path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = check.main(argparse.Namespace(config=str(path)), out=out, err=err)
    for secret in (SECRET_1, SECRET_2, "ChangeMe-tunnel1", "ChangeMe-tunnel2"):
        assert secret not in out.getvalue() + err.getvalue()
    assert "Traceback" not in err.getvalue()
    return rc, out.getvalue(), err.getvalue()


def test_valid_route_config(tmp_path):
    rc, out, err = run_check(write(tmp_path / "config.toml", route_config()))
    assert rc == 0
    assert out == f"vpnd: {tmp_path / 'config.toml'} OK: 1 connection, 2 tunnels (route mode)\n"
    assert err == ""


def test_valid_bgp_config_summary(tmp_path):
    rc, out, _ = run_check(write(tmp_path / "c.toml", bgp_config()))
    assert rc == 0 and out.endswith("OK: 1 connection, 2 tunnels (bgp mode)\n")


def test_warnings_listed_and_still_ok(tmp_path):
    doc = mutate(route_config(), "connection.0.ike.integrity", "sha1")
    rc, out, err = run_check(write(tmp_path / "c.toml", doc))
    assert rc == 0 and "OK" in out
    assert "warning: connection[0].ike.integrity: sha1 is deprecated" in err


def test_invalid_lists_every_error_on_stderr(tmp_path):
    doc = mutate(route_config(), "connection.0.ike.lifetime", 86401)
    doc = mutate(doc, "connection.0.tunnel.1.psk", "has space")
    doc = mutate(doc, "daemon.log_level", "loud")
    rc, out, err = run_check(write(tmp_path / "c.toml", doc))
    assert rc == 1 and out == ""
    lines = err.splitlines()
    assert "error: connection[0].ike.lifetime: 86401 out of range 0 to 86400" in lines
    assert any(line.startswith("error: connection[0].tunnel[1].psk: ") for line in lines)
    assert any(line.startswith("error: daemon.log_level: ") for line in lines)
    assert lines[-1].endswith("3 errors, configuration rejected")


def test_missing_file(tmp_path):
    rc, out, err = run_check(tmp_path / "nope.toml")
    assert rc == 1 and "cannot read the file: No such file or directory" in err


def test_directory_instead_of_file(tmp_path):
    rc, _, err = run_check(tmp_path)
    assert rc == 1 and "cannot read the file" in err


def test_endless_file():
    rc, _, err = run_check("/dev/zero")
    assert rc == 1 and "larger than" in err


def test_not_utf8(tmp_path):
    p = tmp_path / "c.toml"
    p.write_bytes(b"[daemon]\nlog_level = \"\xff\"\n")
    rc, _, err = run_check(p)
    assert rc == 1 and "not UTF-8" in err


def test_toml_syntax_error_line_column(tmp_path):
    p = write(tmp_path / "c.toml", "[daemon]\nlog_level = info\n")
    rc, _, err = run_check(p)
    assert rc == 1
    assert re.search(rf"^error: {re.escape(str(p))}:2:\d+: TOML syntax error", err, re.M), err


def test_inline_psk_in_readable_file_is_refused(tmp_path):
    p = write(tmp_path / "c.toml", route_config(), mode=0o644)
    rc, out, err = run_check(p)
    assert rc == 1 and out == ""
    assert "error: connection[0].tunnel[0].psk: inline key" in err
    assert "move it to psk_file or chmod 600" in err


@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_inline_psk_group_or_other_readable(tmp_path, mode):
    rc, _, err = run_check(write(tmp_path / "c.toml", route_config(), mode=mode))
    assert rc == 1 and "chmod 600" in err


def test_inline_psk_private_file_ok(tmp_path):
    rc, _, _ = run_check(write(tmp_path / "c.toml", route_config(), mode=0o600))
    assert rc == 0


def psk_file_config(tmp_path, psk_mode):
    for i, secret in enumerate((SECRET_1, SECRET_2)):
        k = tmp_path / f"t{i}.psk"
        k.write_text(secret + "\n")
        k.chmod(psk_mode)
    doc = route_config()
    for i in range(2):
        doc = mutate(doc, f"connection.0.tunnel.{i}.psk", DELETE)
        doc = mutate(doc, f"connection.0.tunnel.{i}.psk_file", f"t{i}.psk")
    return doc


def test_psk_file_readable_by_others_is_refused(tmp_path):
    # psk_file paths are relative to the config file, wherever check runs from
    # (a warning before issue 14; refused like sshd refuses a readable key)
    p = write(tmp_path / "c.toml", psk_file_config(tmp_path, 0o644), mode=0o644)
    rc, out, err = run_check(p)
    assert rc == 1 and out == ""
    assert (f"error: connection[0].tunnel[0].psk_file: {tmp_path / 't0.psk'} is readable by "
            f"group or others (mode 0644): chmod 600 {tmp_path / 't0.psk'}") in err


def test_psk_file_private_no_warning(tmp_path):
    p = write(tmp_path / "c.toml", psk_file_config(tmp_path, 0o600), mode=0o644)
    rc, _, err = run_check(p)
    assert rc == 0 and err == ""


def test_config_writable_by_others_is_refused(tmp_path):
    p = write(tmp_path / "c.toml", route_config(), mode=0o600)
    p.chmod(0o622)                  # writable, but not readable, by group and others
    rc, _, err = run_check(p)
    assert rc == 1 and (f"error: {p}: {p} is writable by group or others (mode 0622), and it "
                        f"decides where traffic goes: chmod go-w {p}") in err


def test_bad_psk_never_printed(tmp_path):
    doc = mutate(route_config(), "connection.0.tunnel.0.psk", SECRET_1 + " é")
    rc, _, err = run_check(write(tmp_path / "c.toml", doc))
    assert rc == 1 and "connection[0].tunnel[0].psk" in err


def test_example_passes(tmp_path):
    rc, out, err = run_check(example_copy(tmp_path))
    assert rc == 0, err
    assert out.endswith("OK: 1 connection, 2 tunnels (route mode)\n")
    assert all(line.startswith("warning: ") for line in err.splitlines()), err


def test_example_in_bgp_mode(tmp_path):
    """Uncommenting the documented BGP tables and setting routing = "bgp" is valid."""
    examples = example_copy(tmp_path).parent / "examples"
    lines = []
    for line in EXAMPLE.read_text().splitlines():
        for prefix in ("# [connection.bgp]", "# [connection.tunnel.bgp]", "# tunnel_cidr",
                       "# local_ip", "# peer_ip", "# local_asn", "# peer_asn"):
            if line.startswith(prefix):
                line = line[2:]
        lines.append(line.replace('routing = "route"', 'routing = "bgp"')
                     .replace('"examples/', f'"{examples}/'))
    rc, out, err = run_check(write(tmp_path / "bgp.toml", "\n".join(lines)))
    assert rc == 0, err
    assert "(bgp mode)" in out


def test_example_psk_files_are_fake():
    for i in (1, 2):
        assert (REPO / f"examples/tunnel{i}.psk").read_text() == f"ChangeMe-tunnel{i}\n"


def test_subprocess_python_m_vpnd(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    example_copy(tmp_path)
    res = subprocess.run([sys.executable, "-m", "vpnd", "check", "-c", "config.toml.example"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "vpnd: config.toml.example OK: 1 connection, 2 tunnels (route mode)\n"
    assert "Traceback" not in res.stderr
    bad = write(tmp_path / "bad.toml", mutate(route_config(), "connection.0.ike.version", 3))
    res = subprocess.run([sys.executable, "-m", "vpnd", "check", "-c", str(bad)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert "error: connection[0].ike.version: must be 1 or 2" in res.stderr
    assert SECRET_1 not in res.stdout + res.stderr

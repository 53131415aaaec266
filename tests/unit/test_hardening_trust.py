"""Issue 14 #4: files vpnd trusts are checked like sshd's StrictModes, in check, run AND
reload, and refused (not warned about): owner root or the running user, not writable by group
or others (nor their directory), keys not readable by group or others."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil

import pytest
import structlog

from vpnd_testing.config_toml import DELETE, SECRET_1, bgp_config, dumps, mutate, route_config
from vpnd import logs
from vpnd.config import check
from vpnd.config.load import load_file_with_warnings
from vpnd.config.model import ConfigError

OTHER_UID = 4242


def _check(path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = check.main(argparse.Namespace(config=str(path)), out=out, err=err)
    assert SECRET_1 not in out.getvalue() + err.getvalue()
    return rc, err.getvalue()


def _write(path, doc, mode=0o600):
    path.write_text(dumps(doc))
    path.chmod(mode)
    return path


def _with_psk_files(tmp_path, mode=0o600):
    doc = route_config()
    for i in range(2):
        k = tmp_path / f"t{i}.psk"
        k.write_text(f"Key-File-Secret-{i}-xyzzy\n")
        k.chmod(mode)
        doc = mutate(doc, f"connection.0.tunnel.{i}.psk", DELETE)
        doc = mutate(doc, f"connection.0.tunnel.{i}.psk_file", str(k))
    return doc


def test_a_world_writable_config_is_refused_by_check(tmp_path):
    p = _write(tmp_path / "c.toml", _with_psk_files(tmp_path), mode=0o666)
    rc, err = _check(p)
    assert rc == 1
    assert (f"error: {p}: {p} is writable by group or others (mode 0666), and it decides "
            f"where traffic goes: chmod go-w {p}") in err


def test_a_psk_file_owned_by_another_user_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    p = _write(tmp_path / "c.toml", _with_psk_files(tmp_path))
    os.chown(tmp_path / "t1.psk", OTHER_UID, -1)
    rc, err = _check(p)
    k = tmp_path / "t1.psk"
    assert rc == 1
    assert (f"error: connection[0].tunnel[1].psk_file: {k} is owned by uid {OTHER_UID}, not "
            f"root or the user vpnd runs as (uid 0), and it holds a key: chown root {k}") in err


def test_a_config_in_a_directory_others_can_write_is_refused(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    p = _write(d / "c.toml", _with_psk_files(tmp_path))
    rc, err = _check(p)
    assert rc == 1 and f"its directory {d} is writable by group or others (mode 0777)" in err
    d.chmod(0o1777)                 # sticky, like /tmp: nobody else can replace the file
    assert _check(p)[0] == 0


def test_private_keys_and_a_readable_config_without_keys_pass(tmp_path):
    p = _write(tmp_path / "c.toml", _with_psk_files(tmp_path), mode=0o644)
    assert _check(p) == (0, "")


def test_vtysh_path_that_others_can_replace_is_refused(tmp_path):
    vtysh = tmp_path / "vtysh"
    shutil.copy("/bin/true", vtysh)
    vtysh.chmod(0o777)
    doc = mutate(bgp_config(), "daemon.vtysh_path", str(vtysh))
    rc, err = _check(_write(tmp_path / "c.toml", doc))
    assert rc == 1
    assert (f"error: daemon.vtysh_path: {vtysh} is writable by group or others (mode 0777), "
            f"and root runs it: chmod go-w {vtysh}") in err


def test_run_refuses_what_check_refuses(tmp_path, capsys, monkeypatch):
    from vpnd.run import daemon
    from vpnd.run.main import main

    class MustNotStart:                         # an accepted file would start the daemon
        def __init__(self, config) -> None:
            pass

        async def run(self) -> int:
            return 99
    monkeypatch.setattr(daemon, "Daemon", MustNotStart)
    p = _write(tmp_path / "c.toml", route_config(), mode=0o644)      # inline keys, 0644
    assert main(argparse.Namespace(config=str(p))) == 1
    out = capsys.readouterr().out
    assert (f"error: connection[0].tunnel[0].psk: inline key in {p}, which is readable by "
            f"group or others (mode 0644): move it to psk_file or chmod 600 {p}") in out
    assert SECRET_1 not in out


async def test_reload_refuses_an_unsafe_file_and_keeps_the_running_config(tmp_path):
    from vpnd.run.supervisor import Supervisor

    p = _write(tmp_path / "c.toml", route_config())
    running = load_file_with_warnings(p, strict_permissions=True)[0]
    sup = Supervisor(running)
    results: list[bool] = []
    sup.on_reload_result = results.append
    out = io.StringIO()
    logs.configure("json", "info", stream=out)
    try:
        _write(p, mutate(route_config(), "connection.0.health_check.interval", 2), mode=0o644)
        await sup._reload()
    finally:
        structlog.reset_defaults()
    assert sup.config is running and results == [False]
    rejected = [e for e in map(json.loads, out.getvalue().splitlines())
                if e["event"] == "config.reload_rejected"]
    assert [e["path"] for e in rejected] == ["connection[0].tunnel[0].psk"]
    assert "readable by group or others (mode 0644)" in rejected[0]["rule"]


def test_the_loader_without_strictness_stays_lenient(tmp_path):
    """render and the tests read repository files (git keeps 0644): only check/run/reload
    ask for trust."""
    p = _write(tmp_path / "c.toml", route_config(), mode=0o666)
    load_file_with_warnings(p)
    with pytest.raises(ConfigError):
        load_file_with_warnings(p, strict_permissions=True)

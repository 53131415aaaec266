"""Issue 14 #5: `vtysh_path` is one path, never a shell-like command line.

pexpect splits its `command` like a shell line when no arguments follow, so a vtysh_path of
`/bin/sh -c '...'` ran sh; vpnd must start exactly the file named, or fail naming it."""

from __future__ import annotations

import pytest

from vpnd.frr.vtysh import FrrUnavailable, VtyshSession, VtyshTarget


def test_a_vtysh_path_with_spaces_runs_no_other_command(tmp_path):
    marker = tmp_path / "pwned"
    target = VtyshTarget(vtysh=f"/bin/sh -c 'touch {marker}'")
    with pytest.raises(FrrUnavailable) as exc:
        VtyshSession(target, timeout=2).run("show version")
    assert not marker.exists(), "vtysh_path was split into a command line and run"
    assert "/bin/sh -c" in str(exc.value)


def test_a_path_with_a_space_in_its_name_is_run_as_that_file(tmp_path):
    d = tmp_path / "frr bin"
    d.mkdir()
    fake = d / "vty sh"
    ran = tmp_path / "ran"
    # a minimal interactive "vtysh": prints a prompt, answers each line with a prompt
    fake.write_text(f"#!/bin/sh\ntouch '{ran}'\nprintf 'r1# '\n"
                    "while read -r line; do printf 'r1# '; done\n")
    fake.chmod(0o755)
    s = VtyshSession(VtyshTarget(vtysh=str(fake)), timeout=3)
    try:
        s.run("show version")
    finally:
        s.close()
    assert ran.exists()


def test_with_arguments_the_path_is_still_that_file(tmp_path):
    fake = tmp_path / "vty sh"
    ran = tmp_path / "args"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > '{ran}'\nprintf 'r1# '\n"
                    "while read -r line; do printf 'r1# '; done\n")
    fake.chmod(0o755)
    s = VtyshSession(VtyshTarget(vtysh=str(fake), pathspace="lab1"), timeout=3)
    try:
        s.run("show version")
    finally:
        s.close()
    assert ran.read_text().split() == ["-N", "lab1"]

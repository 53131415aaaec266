"""`vpnd doctor`'s unit_group check (issue 14, defect 13): doctor runs with all of root's
capabilities, so its frr check passes where the hardened unit (root without CAP_DAC_OVERRIDE,
SupplementaryGroups=frrvty) fails: no such group (216/GROUP) or a vty socket the group cannot
open. This check looks at both."""

from __future__ import annotations

import grp
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from vpnd import doctor
from vpnd.doctor import FAIL, PASS

has_group = pytest.mark.skipif(not any(g.gr_name == "frrvty" for g in grp.getgrall()) or os.geteuid() != 0,
                               reason="needs root and the group frrvty (FRR installed)")


def vty_socket(tmp_path: Path, group: str, mode: int) -> Path:
    path = tmp_path / "bgpd.vty"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    os.chown(path, -1, grp.getgrnam(group).gr_gid)
    path.chmod(mode)
    return path


def test_a_missing_group_fails_naming_systemds_status(monkeypatch):
    monkeypatch.setattr(doctor, "UNIT_GROUP", "vpnd-test-no-such-group")
    r = doctor.check_unit_group(False, None)
    assert r.status == FAIL and "216/GROUP" in r.detail and "addgroup --system" in r.fix


@has_group
def test_group_present_route_mode_passes():
    assert doctor.check_unit_group(False, None).status == PASS


@has_group
def test_bgpd_socket_of_the_group_passes(tmp_path):
    r = doctor.check_unit_group(True, vty_socket(tmp_path, "frrvty", 0o770))
    assert r.status == PASS, r


@has_group
@pytest.mark.parametrize("group,mode", [("root", 0o770), ("frrvty", 0o700)])
def test_bgpd_socket_the_unit_cannot_open_fails(tmp_path, group, mode):
    r = doctor.check_unit_group(True, vty_socket(tmp_path, group, mode))
    assert r.status == FAIL and "CAP_DAC_OVERRIDE" in r.detail and r.fix, r


def test_where_vtysh_looks():
    d = SimpleNamespace(frr_vty_socket=None, frr_pathspace=None)
    assert doctor.bgpd_vty_path(d) == Path("/run/frr/bgpd.vty")
    assert doctor.bgpd_vty_path(SimpleNamespace(frr_vty_socket=None, frr_pathspace="gw")) == Path("/run/frr/gw/bgpd.vty")
    assert doctor.bgpd_vty_path(SimpleNamespace(frr_vty_socket="/x", frr_pathspace="gw")) == Path("/x/bgpd.vty")

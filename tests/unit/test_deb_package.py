"""The Debian package as scripts/build-deb makes it (issue 15): what is in it, what it asks of
the machine, and that it runs on Debian's own python3 with nothing of the build machine in it.
The install itself, under a real systemd, is tests/vm/test_vm_deb.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is not installed")


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([str(ROOT / "scripts" / "build-deb"), "--out", str(out)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    path = Path(r.stdout.strip().splitlines()[-1])
    assert path.name == f"vpnd_{VERSION}-1_all.deb"
    return path


@pytest.fixture(scope="module")
def tree(deb, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("root")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def contents(deb: Path) -> dict[str, str]:
    """path -> mode string, as `dpkg-deb -c` lists them."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    rows = {}
    for line in out.splitlines():
        w = line.split()
        assert w[1] == "root/root", line
        rows[w[5].lstrip(".").rstrip("/") or "/"] = w[0]
    return rows


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_file_list_and_modes(deb):
    c = contents(deb)
    assert c["/usr/bin/vpnd"] == "-rwxr-xr-x"
    assert c["/etc/vpnd"] == "drwx------"                       # the skeleton, no secrets
    assert c["/etc/vpnd/config.toml.example"] == "-rw-------"
    assert [p for p in c if p.startswith("/etc/")] == ["/etc/vpnd", "/etc/vpnd/config.toml.example"]
    assert "/usr/lib/systemd/system/vpnd.service" in c
    assert "/usr/lib/sysusers.d/vpnd.conf" in c
    for doc in ("README.md", "copyright", "docs/install.md", "docs/operations.md",
                "docs/monitoring/alerts.yml"):
        assert f"/usr/share/doc/vpnd/{doc}" in c, doc
    for lib in ("vpnd", "vici", "pyroute2", "pexpect", "ptyprocess", "prometheus_client", "structlog"):
        assert f"/usr/lib/vpnd/{lib}/__init__.py" in c, lib
    # no bytecode (postinst compiles it for the machine's python3), no venv, no console scripts
    assert not [p for p in c if "__pycache__" in p or p.endswith(".pyc")]
    assert not [p for p in c if p.startswith(("/usr/lib/vpnd/bin", "/opt", "/usr/local"))]
    size = deb.stat().st_size
    print(f"\n{deb.name}: {size} bytes, {len(c)} entries, Installed-Size {field(deb, 'Installed-Size')} KiB")
    assert size < 5 * 1024 * 1024


def test_control_fields(deb):
    assert field(deb, "Package") == "vpnd" and field(deb, "Architecture") == "all"
    assert field(deb, "Version") == f"{VERSION}-1"
    depends = [d.strip() for d in field(deb, "Depends").split(",")]
    for dep in ("python3 (>= 3.11)", "strongswan-charon (>= 5.8.0)", "strongswan-swanctl",
                "libcharon-extra-plugins"):
        assert dep in depends
    assert "frr" in field(deb, "Recommends").split(", ") and not [d for d in depends if d.startswith("frr")]
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True).stdout
    assert b"./conffiles" in subprocess.run(["tar", "-t"], input=conffiles, capture_output=True).stdout


def test_shipped_unit_and_docs_are_the_checkouts(tree):
    assert (tree / "usr/lib/systemd/system/vpnd.service").read_text() == (ROOT / "systemd/vpnd.service").read_text()
    assert (tree / "etc/vpnd/config.toml.example").read_text() == (ROOT / "config.toml.example").read_text()


def test_nothing_of_the_build_machine_in_the_package(tree):
    build_paths = [str(ROOT), sys.prefix, "vpnd-build-deb"]
    hits = []
    for path in tree.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path.relative_to(tree)}: {p}" for p in build_paths if p.encode() in data]
    assert hits == []
    assert (tree / "usr/bin/vpnd").read_text().startswith("#!/usr/bin/python3 -I\n")


@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="no /usr/bin/python3")
def test_launcher_runs_on_the_system_python_with_the_bundled_libraries(tree, tmp_path):
    """Extracted anywhere (the launcher finds ../lib/vpnd from its own path), with an empty
    environment and the system's python3, which has none of vpnd's libraries."""
    etc = tree / "etc/vpnd"
    (etc / "examples").mkdir(exist_ok=True)
    for i in (1, 2):                      # the example's psk_file = "examples/tunnelN.psk"
        (etc / f"examples/tunnel{i}.psk").write_text(f"a-long-enough-test-key-{i}\n")
        (etc / f"examples/tunnel{i}.psk").chmod(0o600)
    cfg = etc / "config.toml"
    shutil.copyfile(etc / "config.toml.example", cfg)
    cfg.chmod(0o600)
    r = subprocess.run([str(tree / "usr/bin/vpnd"), "check", "-c", str(cfg)], capture_output=True, text=True,
                       env={}, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["/usr/bin/python3", "-I", "-c", "import pyroute2"], capture_output=True, env={})
    if r.returncode == 0:
        pytest.skip("this machine's python3 has its own pyroute2: the bundled ones are not proven used")


def test_bundled_versions_are_inside_pyprojects_ranges(tree):
    from packaging.requirements import Requirement

    wanted = {Requirement(d).name.lower().replace("-", "_"): Requirement(d)
              for d in PYPROJECT["project"]["dependencies"] if "python_version" not in d}
    bundled = {}
    for info in (tree / "usr/lib/vpnd").glob("*.dist-info"):
        name, version = info.name[:-len(".dist-info")].split("-", 1)
        bundled[name.lower()] = version
    for name, req in wanted.items():
        assert name in bundled, name
        assert req.specifier.contains(bundled[name]), (name, bundled[name], str(req.specifier))
    pinned = dict(re.findall(r"^([\w-]+)==(\S+)$", (ROOT / "packaging/deb/constraints.txt").read_text(), re.M))
    assert {k.replace("-", "_"): v for k, v in pinned.items()} == {k: v for k, v in bundled.items() if k != "vpnd"}


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_creates_frrvty_where_frr_is_absent(tree, tmp_path):
    """The unit's SupplementaryGroups=frrvty needs the group (216/GROUP otherwise); the package's
    sysusers.d file creates it, and leaves an existing one alone."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    conf = tree / "usr/lib/sysusers.d/vpnd.conf"
    subprocess.run(["systemd-sysusers", f"--root={root}", str(conf)], check=True, capture_output=True)
    groups = [l.split(":") for l in (root / "etc/group").read_text().splitlines()]
    frrvty = [g for g in groups if g[0] == "frrvty"]
    assert frrvty and int(frrvty[0][2]) < 1000          # a system group, as FRR's addgroup --system
    before = (root / "etc/group").read_text()
    subprocess.run(["systemd-sysusers", f"--root={root}", str(conf)], check=True, capture_output=True)
    assert (root / "etc/group").read_text() == before


def test_maintainer_scripts(deb, tmp_path):
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "c")], check=True)
    for s in ("postinst", "prerm", "postrm"):
        path = tmp_path / "c" / s
        assert os.access(path, os.X_OK)
        assert subprocess.run(["sh", "-n", str(path)]).returncode == 0, s
    postinst = (tmp_path / "c/postinst").read_text()
    # an upgrade restarts a running vpnd only (it adopts SAs and routes); nothing is enabled or
    # started on a first install (there is no /etc/vpnd/config.toml yet)
    assert "deb-systemd-invoke try-restart vpnd.service" in postinst
    assert not re.search(r"\b(enable|start)\b.*vpnd", postinst.replace("try-restart", ""))
    prerm = (tmp_path / "c/prerm").read_text()
    assert re.search(r"remove\)\n.*\n\s+deb-systemd-invoke stop vpnd.service", prerm)
    assert "upgrade)" not in prerm                 # no stop before an upgrade


def test_two_builds_of_one_tree_are_identical(deb, tmp_path):
    """File times come from the last commit (SOURCE_DATE_EPOCH), owners are root, the
    libraries are pinned: the same checkout gives the same bytes."""
    r = subprocess.run([str(ROOT / "scripts" / "build-deb"), "--out", str(tmp_path)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / deb.name).read_bytes() == deb.read_bytes()

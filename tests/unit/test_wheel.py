"""vpnd's wheel is the product alone: no lab, no test support, no QEMU or guest code, and
`vpnd check` and `vpnd render` work from the wheel with the lab not importable.

The wheel is built by `pip wheel --no-deps` from a scratch copy of the checkout's files
(`git ls-files`: tracked and new, not ignored), lab/ and tests/ included, so the root
pyproject's package selection is what is tested, and a stale in-tree build/ (setuptools copies
into it but never deletes from it) can neither hide nor fake a leak; nothing is written into
the checkout. The wheel is then unpacked and run with `python -I -S`: no site processing, so
the venv's editable installs (their .pth finders for vpnd and vpnd_lab) are not loaded; the
path is the unpacked wheel, then the venv's site-packages for the third-party dependencies.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QEMU_WORDS = ("qemu-system", "virtme", "vng ")


def checkout_files() -> list[str]:
    r = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                        "--exclude-standard"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip("not a git checkout: " + r.stderr.strip())
    return [f for f in r.stdout.split("\0") if f and (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in checkout_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("vpnd-*.whl")
    return whl


@pytest.fixture(scope="module")
def unpacked(wheel, tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return site


def run_from(site: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    deps = sysconfig.get_paths()["purelib"]
    prelude = f"import sys; sys.path[:0] = [{str(site)!r}]; sys.path.append({deps!r})\n"
    return subprocess.run([sys.executable, "-I", "-S", "-c", prelude + code], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_the_wheel_holds_only_the_product(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"vpnd", "vpnd-0.1.0.dist-info"}, tops
    # the lab's old place inside vpnd/, too
    assert not [n for n in names if n.startswith("vpnd/lab/") or "guest" in n or n.endswith("/vm.py")]
    assert "vpnd/render/peer.py" in names and "vpnd/cli.py" in names
    with zipfile.ZipFile(wheel) as z:
        code = {n: z.read(n).decode() for n in names if n.endswith(".py")}
    assert not [n for n, text in code.items() if any(w in text for w in QEMU_WORDS)]
    assert not [n for n, text in code.items() if "peer_vici_conn" in text or "vpnd_testing" in text]
    assert (ROOT / "lab" / "vpnd_lab" / "cloud.py").exists()     # the lab is in the checkout


def test_check_and_render_work_from_the_wheel_alone(unpacked, tmp_path):
    from vpnd_testing.config_toml import installed_example

    example = installed_example(tmp_path)       # key files 0600, as vpnd demands
    code = f"""
import contextlib, importlib.util, io, json
import vpnd
from vpnd.cli import main
facts = {{"vpnd": vpnd.__file__, "vpnd_lab": importlib.util.find_spec("vpnd_lab") is not None,
          "vpnd_testing": importlib.util.find_spec("vpnd_testing") is not None}}
for name, argv in (("check", ["check", "-c", {str(example)!r}]),
                   ("render", ["render", "swanctl", "-c", {str(example)!r}]),
                   ("lab", ["lab", "status"])):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    facts[name] = [rc, out.getvalue(), err.getvalue()]
help = io.StringIO()
with contextlib.redirect_stdout(help), contextlib.suppress(SystemExit):
    main(["--help"])
facts["help"] = help.getvalue()
print("FACTS " + json.dumps(facts))
"""
    r = run_from(unpacked, code, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    facts = json.loads(r.stdout.split("FACTS ", 1)[1])
    assert facts["vpnd"].startswith(str(unpacked)), facts["vpnd"]
    assert not facts["vpnd_lab"] and not facts["vpnd_testing"]
    rc, out, err = facts["check"]
    assert rc == 0 and "OK: 1 connection, 2 tunnels" in out, out + err
    rc, out, err = facts["render"]
    assert rc == 0 and "connections {" in out and "secret = ********" in out, out + err
    rc, out, err = facts["lab"]
    assert rc == 2 and "vpnd_lab" in err and "Traceback" not in err, err
    assert "lab" not in facts["help"].split("options:")[0].split("{", 1)[1].split("}", 1)[0].split(",")

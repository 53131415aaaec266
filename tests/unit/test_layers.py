"""The structure, measured from the code's own imports (every import, lazy ones included):
no import circle in vpnd/, each layer imports only from the layers below it (or its own),
and the routing mode is asked by name only where modes are implemented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "vpnd"

# Lowest first. A module may import its own layer and the ones below, never above.
LAYERS = [
    ("pure", ["vpnd.config", "vpnd.core", "vpnd.logs", "vpnd.systemd"]),
    ("adapters", ["vpnd.render", "vpnd.charon", "vpnd.kernel", "vpnd.frr", "vpnd.probe",
                  "vpnd.pmtu_probe",
                  "vpnd.metrics", "vpnd.metrics_server", "vpnd.cloud"]),
    ("steering and control", ["vpnd.steering", "vpnd.control"]),
    ("commands", ["vpnd.run", "vpnd.doctor"]),
    ("dispatcher", ["vpnd.cli", "vpnd.__main__"]),
]


def layer(module: str) -> int:
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and the README's layout)")


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """vpnd modules imported anywhere in the file (`from vpnd.x import y` counts as
    vpnd.x.y when that is a module, else vpnd.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vpnd")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vpnd"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports(p, known) - {m} for m, p in mods.items()}


def test_no_import_circle():
    g = graph()
    # Tarjan's strongly connected components: any component of two or more is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert circles == []


def test_layers_import_only_downwards():
    upward = [f"{m} ({LAYERS[layer(m)][0]}) imports {d} ({LAYERS[layer(d)][0]})"
              for m, deps in sorted(graph().items()) for d in sorted(deps) if layer(d) > layer(m)]
    assert upward == []


def test_nothing_below_run_imports_it():
    g = graph()
    assert [m for m, deps in g.items() if not m.startswith(("vpnd.run", "vpnd.cli"))
            and any(d.startswith("vpnd.run") for d in deps)] == []


def test_package_inits_are_empty():
    for init in PKG.rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        code = [n for n in body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
                and not (isinstance(n, ast.Assign) and init.parent == PKG)]    # vpnd.__version__
        assert code == [], f"{init.relative_to(ROOT)} does more than document its package"


def test_routing_mode_is_branched_on_only_where_modes_live():
    allowed = ("vpnd/steering/", "vpnd/config/", "vpnd/render/")
    branch = re.compile(r"routing\s*(==|!=|in\b)")
    found = [f"{p.relative_to(ROOT)}:{n}" for p in PKG.rglob("*.py")
             if not str(p.relative_to(ROOT)).startswith(allowed)
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if branch.search(line) and not line.lstrip().startswith("#")]
    # the reload plan compares two configs' modes (a mode change rebuilds), it does not branch on one
    assert found == ["vpnd/run/reload_plan.py:" + str(_line("vpnd/run/reload_plan.py", "o.routing != n.routing"))]


def _line(rel: str, text: str) -> int:
    return next(n for n, line in enumerate((ROOT / rel).read_text().splitlines(), 1) if text in line)


def test_check_and_render_import_no_adapter_library(tmp_path):
    """`vpnd check` and `vpnd render` stay fast and work without pyroute2, pexpect or a cloud
    SDK loaded: the package __init__ files are empty and the dispatcher imports lazily."""
    import subprocess
    import sys

    from vpnd_testing.config_toml import installed_example

    example = str(installed_example(tmp_path))
    code = ("import sys\nfrom vpnd.cli import main\n"
            f"for argv in (['check', '-c', {example!r}], ['render', 'swanctl', '-c', {example!r}],\n"
            f"             ['render', 'nft', '-c', {example!r}]):\n"
            "    assert main(argv) == 0, argv\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in\n"
            "             ('pyroute2', 'pexpect', 'prometheus_client', 'alibabacloud_vpc20160428',\n"
            "              'alibabacloud_credentials', 'alibabacloud_tea_openapi', 'darabonba')))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_test_tiers_import_nothing_from_each_other():
    """pytest puts a tier's directory on sys.path only while it collects that tier: a test
    module importing another tier's module works in a whole run and breaks in `pytest tests/lab`.
    What tiers share lives in lab/vpnd_testing."""
    tests = ROOT / "tests"
    crossing = []
    for tier in ("unit", "lab", "vm"):
        for path in (tests / tier).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                for name in names:
                    if name.startswith(("test_", "guest_")) and not (tests / tier / f"{name}.py").exists():
                        crossing.append(f"tests/{tier}/{path.name} imports {name}")
    assert crossing == []

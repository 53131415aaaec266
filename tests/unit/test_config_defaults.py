"""Defaults live in the model only: a key left out of the TOML gets exactly the model's
dataclass default, and the loader's modules import each other without a circle."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from vpnd_testing.config_toml import bgp_config, dumps
from vpnd.config import model
from vpnd.config.load import load_text

CONFIG_DIR = Path(__file__).resolve().parents[2] / "vpnd" / "config"


def _field_defaults(obj: object) -> dict[str, object]:
    """The fields of `obj` that have a default in its class, with that default."""
    out = {}
    for f in dataclasses.fields(obj):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _bare_bgp_config() -> model.Config:
    """A bgp config with only the keys that have no default."""
    doc = bgp_config()
    doc.pop("daemon", None)
    conn = doc["connection"][0]
    for key in ("ike", "ipsec"):
        conn.pop(key)
    conn["bgp"] = {}
    return load_text(dumps(doc))


def test_left_out_keys_get_the_models_defaults():
    cfg = _bare_bgp_config()
    c = cfg.connections[0]
    checks = [(cfg.daemon, model.DaemonConfig), (c, model.ConnectionConfig),
              (c.ike, model.IkeConfig), (c.ipsec, model.IpsecConfig),
              (c.failover, model.FailoverConfig), (c.bgp, model.BgpConnectionConfig),
              (c.bgp.bfd, model.BfdConfig), (c.health_check, model.HealthCheckConfig)]
    for obj, cls in checks:
        for name, default in _field_defaults(cls).items():
            if cls is model.ConnectionConfig and name in ("health_check", "bgp", "ike",
                                                          "ipsec"):
                continue                    # tables given (or checked above)
            if cls is model.ConnectionConfig and name == "failover":
                assert c.failover == model.FailoverConfig()
                continue
            assert getattr(obj, name) == default, f"{cls.__name__}.{name}"


def test_tunnels_get_their_positional_defaults():
    doc = bgp_config()
    conn = doc["connection"][0]
    conn.pop("routing")
    conn.pop("bgp")
    for t in conn["tunnel"]:
        t.pop("bgp")
    c = load_text(dumps(doc)).connections[0]
    assert c.routing == model.DEFAULT_ROUTING
    for i, t in enumerate(c.tunnels):
        for name, default in model.tunnel_defaults(i).items():
            assert getattr(t, name) == default, f"tunnel[{i}].{name}"
        for name, default in _field_defaults(t).items():
            if name not in model.tunnel_defaults(i):
                assert getattr(t, name) == default, f"tunnel[{i}].{name}"
    assert [t.route_metric for t in c.tunnels] == [100, 101]
    assert [t.if_id for t in c.tunnels] == [42, 43]
    assert [t.interface for t in c.tunnels] == ["ipsec0", "ipsec1"]


def _config_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "vpnd.config"):
            if node.module == "vpnd.config":
                names |= {a.name for a in node.names}
            else:
                names.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.rsplit(".", 1)[1] for a in node.names
                      if a.name.startswith("vpnd.config.")}
    return names


def test_config_modules_import_no_circle():
    graph = {p.stem: _config_imports(p) for p in CONFIG_DIR.glob("*.py")
             if p.stem != "__init__"}
    assert graph["reader"] <= {"model"}
    assert graph["consistency"] <= {"model", "rules", "reader"}

    def visit(mod: str, stack: tuple[str, ...]) -> None:
        assert mod not in stack, " -> ".join(stack + (mod,))
        for dep in graph.get(mod, ()):
            visit(dep, stack + (mod,))

    for mod in graph:
        visit(mod, ())

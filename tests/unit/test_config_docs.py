"""The reference can't drift: every field of the model is read by the loader, documented in
docs/configuration.md and shown (set or commented out) in config.toml.example."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from vpnd.config import load, model

REPO = Path(__file__).resolve().parents[2]

# model class -> (TOML table path, the loader's keys for it)
TABLES = {
    model.DaemonConfig: ("daemon", load.DAEMON_KEYS),
    model.ConnectionConfig: ("connection", load.CONNECTION_KEYS),
    model.IkeConfig: ("connection.ike", load.IKE_KEYS),
    model.IpsecConfig: ("connection.ipsec", load.IPSEC_KEYS),
    model.HealthCheckConfig: ("connection.health_check", load.HEALTH_KEYS),
    model.CloudHealthCheckConfig: ("connection.cloud_health_check", load.CLOUD_HEALTH_KEYS),
    model.FailoverConfig: ("connection.failover", load.FAILOVER_KEYS),
    model.BgpConnectionConfig: ("connection.bgp", load.BGP_KEYS),
    model.BfdConfig: ("connection.bgp.bfd", load.BFD_KEYS),
    model.TunnelConfig: ("connection.tunnel", load.TUNNEL_KEYS),
    model.TunnelBgpConfig: ("connection.tunnel.bgp", load.TUNNEL_BGP_KEYS),
    model.CloudViewConfig: ("connection.cloud_api", load.CLOUD_KEYS),
}
RENAMED = {"tunnels": "tunnel"}         # field name -> TOML key


def all_keys() -> list[str]:
    """Every dotted key: the model's fields plus the loader's extra keys (psk_file, ike ids)."""
    keys = []
    for cls, (table, loader_keys) in TABLES.items():
        fields = [RENAMED.get(f.name, f.name) for f in dataclasses.fields(cls)]
        keys += [f"{table}.{k}" for k in dict.fromkeys(fields + list(loader_keys))]
    return keys


def test_every_model_class_is_covered():
    classes = {c for c in vars(model).values()
               if dataclasses.is_dataclass(c) and c not in (model.Config, model.Problem)}
    assert classes == set(TABLES)
    assert {RENAMED.get(f.name, f.name) for f in dataclasses.fields(model.Config)} - {
        "source"} == {"daemon", "connections"}


@pytest.mark.parametrize("cls", list(TABLES), ids=lambda c: c.__name__)
def test_loader_reads_every_field(cls):
    _, loader_keys = TABLES[cls]
    missing = {RENAMED.get(f.name, f.name) for f in dataclasses.fields(cls)} - set(loader_keys)
    assert not missing, f"{cls.__name__}: the loader ignores {missing}"


def example_keys() -> set[str]:
    """Dotted keys in the example, counting commented-out `# key = value` lines."""
    found: set[str] = set()
    table = ""
    for line in (REPO / "config.toml.example").read_text().splitlines():
        m = re.match(r"^#?\s*\[\[?([a-z_.]+)\]\]?", line)
        if m:
            table = m[1]
            found.add(table)
            continue
        m = re.match(r"^#?\s*([a-z_]+)\s*=", line)
        if m:
            found.add(f"{table}.{m[1]}" if table else m[1])
    return found


def test_every_key_in_example():
    missing = [k for k in all_keys() if k not in example_keys()]
    assert not missing, f"config.toml.example does not show {missing}"


def test_every_key_in_docs():
    docs = (REPO / "docs" / "configuration.md").read_text()
    missing = [k for k in all_keys() if f"`{k}`" not in docs]
    assert not missing, f"docs/configuration.md does not document {missing}"


def test_docs_have_no_stale_keys():
    docs = (REPO / "docs" / "configuration.md").read_text()
    known = set(all_keys())
    stale = [k for k in re.findall(r"`((?:daemon|connection)\.[a-z_.]+)`", docs) if k not in known]
    assert not stale, stale


def test_example_defaults_match_model():
    """A key set in the example with a 'default' comment holds the model's default."""
    text = (REPO / "config.toml.example").read_text()
    cfg = load.load_text(text, base_dir=str(REPO))
    assert cfg.daemon == model.DaemonConfig()
    c = cfg.connections[0]
    assert c.ike == model.IkeConfig() and c.ipsec == model.IpsecConfig()
    assert c.failover == model.FailoverConfig()
    assert c.dpd_delay == 10 and c.nat_traversal is True

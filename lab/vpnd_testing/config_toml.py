"""Test helpers for the config tests: a small TOML writer (the venv has no tomli_w) and valid
base configurations as plain dicts, so a test can change one key and serialise."""

from __future__ import annotations

import copy
import math
import re
import shutil
from pathlib import Path
from typing import Any

SECRET_1 = "Sup3r-Secret-Key-One"          # distinctive, so a test can grep output for them
SECRET_2 = "Sup3r-Secret-Key-Two"

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _string(k)


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        text = repr(v)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_scalar(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dumps(doc: dict[str, Any]) -> str:
    lines: list[str] = []
    _table(doc, [], lines)
    return "\n".join(lines) + "\n"


def _table(d: dict[str, Any], prefix: list[str], lines: list[str]) -> None:
    for k, v in d.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            lines.append(f"{_key(k)} = {_scalar(v)}")
    for k, v in d.items():
        path = prefix + [_key(k)]
        if isinstance(v, dict):
            lines.append(f"[{'.'.join(path)}]")
            _table(v, path, lines)
        elif _is_table_array(v):
            for item in v:
                lines.append(f"[[{'.'.join(path)}]]")
                _table(item, path, lines)


ROUTE_CONFIG: dict[str, Any] = {
    "daemon": {"log_level": "info"},
    "connection": [
        {
            "name": "vpc1",
            "routing": "route",
            "local_networks": ["172.16.0.0/16"],
            "remote_networks": ["192.168.0.0/16"],
            "ike": {"version": 2, "encryption": "aes256", "integrity": "sha256",
                    "dh_group": "group14"},
            "ipsec": {"encryption": "aes256", "integrity": "sha256", "pfs_group": "group14"},
            "health_check": {"destination": "192.168.10.10", "source": "172.16.20.80"},
            "tunnel": [
                {"local_address": "198.18.0.2", "remote_address": "198.19.0.1",
                 "psk": SECRET_1},
                {"local_address": "198.18.0.2", "remote_address": "198.19.0.2",
                 "psk": SECRET_2},
            ],
        }
    ],
}

BGP_CONFIG: dict[str, Any] = copy.deepcopy(ROUTE_CONFIG)
BGP_CONFIG["connection"][0]["routing"] = "bgp"
BGP_CONFIG["connection"][0]["bgp"] = {"local_asn": 65530, "peer_asn": 45104,
                                      "bfd": {"enabled": True}}
BGP_CONFIG["connection"][0]["tunnel"][0]["bgp"] = {
    "tunnel_cidr": "169.254.10.0/30", "local_ip": "169.254.10.2", "peer_ip": "169.254.10.1"}
BGP_CONFIG["connection"][0]["tunnel"][1]["bgp"] = {
    "tunnel_cidr": "169.254.20.0/30", "local_ip": "169.254.20.2", "peer_ip": "169.254.20.1"}


def route_config() -> dict[str, Any]:
    return copy.deepcopy(ROUTE_CONFIG)


def bgp_config() -> dict[str, Any]:
    return copy.deepcopy(BGP_CONFIG)


DELETE = object()


def mutate(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or with DELETE remove) `a.0.b` in a copy of `doc`, creating tables on the way."""
    doc = copy.deepcopy(doc)
    parts = path.split(".")
    node: Any = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    last = parts[-1]
    if value is DELETE:
        if isinstance(node, list):
            del node[int(last)]
        else:
            node.pop(last, None)
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


def leaf_paths(doc: Any, prefix: str = "") -> list[str]:
    """Every key path in `doc` (tables and their keys), for "put junk in every key" tests."""
    paths = []
    items = doc.items() if isinstance(doc, dict) else (
        enumerate(doc) if _is_table_array(doc) else ())
    for k, v in items:
        p = f"{prefix}.{k}" if prefix else str(k)
        paths.append(p)
        paths.extend(leaf_paths(v, p))
    return paths


REPO = Path(__file__).resolve().parents[2]


def installed_example(directory: Path) -> Path:
    """config.toml.example as an operator installs it, in `directory`: its key files chmod 600
    (git keeps them 0644, which vpnd refuses for a key, as sshd does)."""
    shutil.copytree(REPO / "examples", directory / "examples")
    for key in (directory / "examples").iterdir():
        key.chmod(0o600)
    path = directory / "config.toml.example"
    path.write_text((REPO / "config.toml.example").read_text())
    path.chmod(0o644)
    return path

"""Read a TOML file into the typed, frozen `Config`, or report every problem at once.

The loader never raises anything but `ConfigError` (never a traceback for bad input): each
problem carries its key path (`connection[0].tunnel[1].bgp.tunnel_cidr`) so a user can find it.
Values are checked against the cloud's own limits (`vpnd.config.rules`) because a config the
cloud would refuse only fails later, as a tunnel that never comes up.

This module is the entry point (reading the file, then one run); the work is split by job:
`reader` (typed getters, problem wording), `sections` (one reader per TOML table, defaults
from `model`), `consistency` (rules between keys), `rules` (rules for one value).
"""

from __future__ import annotations

import os

from vpnd.config.model import Config, ConfigError, Problem
from vpnd.config.reader import os_reason, parse_toml
from vpnd.config.redact import mask_problems
from vpnd.config.sections import (  # noqa: F401  (the key tables, imported from here by tests)
    BFD_KEYS,
    BGP_KEYS,
    CLOUD_HEALTH_KEYS,
    CLOUD_KEYS,
    CONNECTION_KEYS,
    DAEMON_KEYS,
    FAILOVER_KEYS,
    HEALTH_KEYS,
    IKE_KEYS,
    IPSEC_KEYS,
    TOP_KEYS,
    TUNNEL_BGP_KEYS,
    TUNNEL_KEYS,
    SectionReader,
)

CONFIG_MAX_BYTES = 1 << 20


def load_file(path: str | os.PathLike[str]) -> Config:
    """Load and validate a config file; raises ConfigError listing every problem."""
    return load_file_with_warnings(path)[0]


def load_text(text: str, source: str = "<memory>", base_dir: str | None = None) -> Config:
    """Validate TOML text; `psk_file` paths are relative to `base_dir` (default: the cwd)."""
    return load_text_with_warnings(text, source, base_dir)[0]


def load_file_with_warnings(
    path: str | os.PathLike[str], *, strict_permissions: bool = False
) -> tuple[Config, list[Problem]]:
    """Like `load_file`, also returning the warnings.

    With `strict_permissions` the files must be trustworthy (vpnd.config.trust: owner, not
    writable by others, keys not readable by others): what check, run and reload enforce.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read(CONFIG_MAX_BYTES + 1)
            st = os.fstat(f.fileno())
    except (OSError, ValueError) as exc:
        raise ConfigError([Problem(source, f"cannot read the file: {os_reason(exc)}")]) from None
    if len(raw) > CONFIG_MAX_BYTES:
        raise ConfigError([Problem(source, f"larger than {CONFIG_MAX_BYTES} bytes: not a "
                                           "vpnd configuration")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(source, f"not UTF-8 text (byte {exc.start})")]) from None
    base_dir = os.path.dirname(os.path.abspath(source))
    config, warnings, secrets = _run(text, source, base_dir)
    if strict_permissions:
        from vpnd.config import trust

        refused = mask_problems(trust.problems(config, st), secrets)
        if refused:
            raise ConfigError(refused, warnings)
    return config, warnings


def load_text_with_warnings(
    text: str, source: str = "<memory>", base_dir: str | None = None
) -> tuple[Config, list[Problem]]:
    """Like `load_text`, also returning the warnings."""
    return _run(text, source, base_dir)[:2]


def _run(text: str, source: str, base_dir: str | None) -> tuple[Config, list[Problem], set[str]]:
    """One validation run: parse, read every section, raise if anything was an error. No
    problem ever quotes a key back (one pasted into another field): vpnd.config.redact."""
    data = parse_toml(text, source)
    run = SectionReader(source, base_dir)
    config = run.config(data)
    errors = mask_problems(run.errors, run.secrets)
    warnings = mask_problems(run.warnings, run.secrets)
    if errors:
        raise ConfigError(errors, warnings)
    return config, warnings, run.secrets

"""Structured logs: JSON lines for journald and log shippers, key=value on a terminal.

Secrets are removed by a processor, not by hoping nobody logs them: any `Secret` value, any
key that names a secret, and any string equal to a registered PSK is replaced before a line
is rendered.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Iterable

import structlog

from vpnd.config.model import Secret

MASK = "********"
_SECRET_KEYS = frozenset({"psk", "secret", "password", "key"})
_known_secrets: set[str] = set()


def register_secrets(values: Iterable[str]) -> None:
    """Remember PSK values so a stray copy inside any log field is masked too."""
    _known_secrets.update(v for v in values if v)


def _scrub(value: Any) -> Any:
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, str):
        for s in _known_secrets:
            if s in value:
                value = value.replace(s, MASK)
        return value
    if isinstance(value, dict):
        return {k: (MASK if str(k).lower() in _SECRET_KEYS else _scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: dict) -> dict:
    return {k: (MASK if k.lower() in _SECRET_KEYS else _scrub(v)) for k, v in event_dict.items()}


def configure(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Set up structlog once per process. `fmt` is auto|json|console (auto: JSON unless a TTY)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer(sort_keys=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get(name: str = "vpnd") -> Any:
    return structlog.get_logger(name)

"""Structured logs: JSON lines for journald and log shippers, key=value on a terminal.

Secrets are removed by a processor, not by hoping nobody logs them: any `Secret` value, any
key that names a secret, and any registered PSK inside a string is replaced before a line is
rendered, after tracebacks are formatted (so they are scrubbed too). Every successful load
registers its keys, the start-up one and each reload's.

A key shorter than `SUBSTRING_MIN` characters is masked only as a whole word: masked as a
substring, a one-letter key would mangle every field, and which letters vanish would show the
key to anyone reading the log.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Iterable

import structlog

from vpnd.config.model import Secret

MASK = "********"
_SECRET_KEYS = frozenset({"psk", "secret", "password", "key"})
SUBSTRING_MIN = 8
_known_secrets: set[str] = set()
_short: dict[str, re.Pattern[str]] = {}


def register_secrets(values: Iterable[str]) -> None:
    """Remember PSK values so a stray copy inside any log field is masked too."""
    _known_secrets.update(v for v in values if v)


def _whole_word(secret: str) -> re.Pattern[str]:
    pattern = _short.get(secret)
    if pattern is None:
        pattern = _short[secret] = re.compile(
            r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])")
    return pattern


def _scrub(value: Any) -> Any:
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, str):
        # longest first: a key that contains another is masked whole
        for s in sorted(_known_secrets, key=len, reverse=True):
            if s not in value:
                continue
            if len(s) >= SUBSTRING_MIN:
                value = value.replace(s, MASK)
            else:
                value = _whole_word(s).sub(MASK, value)
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
            structlog.processors.format_exc_info,
            redact_secrets,                 # after: a traceback is text like any other field
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

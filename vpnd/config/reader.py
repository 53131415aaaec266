"""The typed-getter engine: read one TOML table, record every problem with its key path.

Why a module of its own: the section readers (`vpnd.config.sections`) only say which key is
which type and limit; how a wrong type, a missing key, a typo'd key (did you mean ...?) or a
TOML syntax error (file:line:col) is worded lives here once, so every table reports alike and
a run collects all problems instead of stopping at the first.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from vpnd.config.model import ConfigError, Problem

REQUIRED: Any = object()            # a getter's default meaning "the key must be present"

# A value someone must still fill in, as `vpnd import` writes it ("<fill in: our IKE address>"):
# refused wherever it stands, by saying what to fill in rather than "not an IPv4 address".
_PLACEHOLDER = re.compile(r"<fill in: ([^<>]+)>")


def placeholder(what: str) -> str:
    """The marked value for a key the writer cannot know; `what` says what belongs there."""
    return f"<fill in: {what}>"


def placeholder_problem(value: object) -> str | None:
    """The message for a placeholder (or an array holding one), else None."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        m = _PLACEHOLDER.fullmatch(item) if isinstance(item, str) else None
        if m:
            return f"placeholder left by `vpnd import`: fill in {m.group(1)}"
    return None

_TYPE_NAMES = {
    bool: "a boolean", int: "an integer", float: "a float", str: "a string",
    list: "an array", dict: "a table",
}


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """The TOML document, or a ConfigError at `source:line:col` (never a traceback)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        where = f"{source}:{m[1]}:{m[2]}" if m else source
        raise ConfigError([Problem(where, f"TOML syntax error: {msg}")]) from None
    except RecursionError:
        raise ConfigError([Problem(source, "TOML nested too deeply")]) from None


def os_reason(exc: BaseException) -> str:
    """Why a file could not be read, in the OS's words (no traceback, no errno number)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def type_name(value: object) -> str:
    """What a TOML value is, for "expected X, got Y"."""
    for t, name in _TYPE_NAMES.items():
        if isinstance(value, t):
            return name
    return "a date/time" if value is not None else "nothing"


def show(value: object) -> str:
    """A value for a message: short, quoted, never multi-line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def suggest(word: str, choices: tuple[str, ...]) -> str:
    """'; did you mean X?' for a typo, preferring a choice the word starts (aes -> aes128)."""
    close = [c for c in choices if c == word.lower()]
    close = close or [c for c in choices if word and c.startswith(word)]
    close = close or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class Reader:
    """One validation run's problems, and getters that record their own problem and return
    None when a value is invalid (so the run goes on and reports the next one too).

    `sections` maps a table's header to the keys it accepts, to say where a misplaced key
    belongs ("it belongs in [connection.ike]").
    """

    def __init__(self, source: str, sections: Mapping[str, tuple[str, ...]]) -> None:
        self.source = source
        self.sections = sections
        self.errors: list[Problem] = []
        self.warnings: list[Problem] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(Problem(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(Problem(path, message))

    def check_keys(self, data: dict[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        for key in data:
            if key in allowed:
                continue
            where = f"{path}.{key}" if path else key
            hint = suggest(key, allowed)
            if not hint:
                homes = [s for s, keys in self.sections.items() if key in keys and s]
                if homes:
                    hint = f"; it belongs in {' or '.join(homes)}"
            self.error(where, f"unknown key{hint}")

    def raw(self, data: dict[str, Any], key: str, path: str, default: Any) -> tuple[bool, Any]:
        """(present, value); a placeholder is an error here, read as absent without a value."""
        if key in data:
            problem = placeholder_problem(data[key])
            if problem:
                self.error(path, problem)
                return False, None
            return True, data[key]
        if default is REQUIRED:
            self.error(path, "required key is missing")
            return False, None
        return False, default

    def table(self, data: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
        if key not in data:
            return None
        value = data[key]
        if not isinstance(value, dict):
            self.error(path, f"expected a table ([{path}]), got {type_name(value)}")
            return None
        return value

    def array_of_tables(
        self, data: dict[str, Any], key: str, path: str, header: str, required: bool = True
    ) -> list[dict[str, Any]] | None:
        if key not in data:
            if required:
                self.error(path, f"missing: add at least one {header} table")
            return None
        value = data[key]
        if isinstance(value, dict):
            self.error(path, f"expected an array of tables ({header}), got a table")
            return None
        if not isinstance(value, list):
            self.error(path, f"expected an array of tables ({header}), got {type_name(value)}")
            return None
        good = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                good.append(item)
            else:
                self.error(f"{path}[{i}]", f"expected a table ({header}), got {type_name(item)}")
        return good if len(good) == len(value) else None

    def string(
        self, data: dict[str, Any], key: str, path: str, default: Any = REQUIRED,
        choices: tuple[str, ...] | None = None, check: Any = None,
    ) -> Any:
        present, value = self.raw(data, key, path, default)
        if not present:
            return value
        if not isinstance(value, str):
            quote = " (put it in quotes)" if isinstance(value, (int, float)) else ""
            self.error(path, f"expected a string{quote}, got {type_name(value)}")
            return None
        if choices is not None and value not in choices:
            hint = suggest(value, choices)
            self.error(path, f"{show(value)} is not one of {', '.join(choices)}{hint}")
            return None
        if check is not None:
            problem = check(value)
            if problem:
                self.error(path, problem)
                return None
        return value

    def integer(
        self, data: dict[str, Any], key: str, path: str, default: Any,
        lo: int | None, hi: int | None, check: Any = None,
    ) -> Any:
        present, value = self.raw(data, key, path, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"expected an integer, got {type_name(value)}")
            return None
        if lo is not None and hi is not None and not lo <= value <= hi:
            self.error(path, f"{value} out of range {lo} to {hi}")
            return None
        problem = check(value) if check is not None else None
        if problem:
            self.error(path, problem)
            return None
        return value

    def number(
        self, data: dict[str, Any], key: str, path: str, default: Any,
        lo: float, hi: float | None = None, lo_open: bool = False,
    ) -> Any:
        present, value = self.raw(data, key, path, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(path, f"expected a number, got {type_name(value)}")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.error(path, f"{value} is not a finite number")
            return None
        too_low = value <= lo if lo_open else value < lo
        if too_low or (hi is not None and value > hi):
            low = f"more than {lo:g}" if lo_open else f"at least {lo:g}"
            rng = f"{low}" + (f" and at most {hi:g}" if hi is not None else "")
            self.error(path, f"{value:g} out of range: must be {rng}")
            return None
        return float(value)

    def boolean(self, data: dict[str, Any], key: str, path: str, default: bool) -> Any:
        present, value = self.raw(data, key, path, default)
        if present and not isinstance(value, bool):
            self.error(path, f"expected a boolean (true or false), got {type_name(value)}")
            return None
        return value

    def ipv4(self, data: dict[str, Any], key: str, path: str, default: Any = REQUIRED) -> Any:
        value = self.string(data, key, path, default)
        if not isinstance(value, str):
            return value
        try:
            return ipaddress.IPv4Address(value)
        except ValueError:
            self.error(path, f"{show(value)} is not an IPv4 address")
            return None

    def network(self, value: object, path: str) -> ipaddress.IPv4Network | None:
        if not isinstance(value, str):
            self.error(path, f"expected a CIDR string like \"10.0.0.0/8\", got {type_name(value)}")
            return None
        if "/" not in value:
            self.error(path, f"{show(value)} needs a prefix length (e.g. \"{value}/32\")")
            return None
        try:
            return ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            if "host bits set" in str(exc):
                fixed = ipaddress.IPv4Network(value, strict=False)
                self.error(path, f"{show(value)} has host bits set; did you mean \"{fixed}\"?")
            else:
                self.error(path, f"{show(value)} is not an IPv4 CIDR")
            return None

    def networks(
        self, data: dict[str, Any], key: str, path: str, default: Any = REQUIRED
    ) -> Any:
        present, value = self.raw(data, key, path, default)
        if not present:
            return value
        if isinstance(value, str):
            value = [value]     # a single CIDR given without brackets
        if not isinstance(value, list):
            self.error(path, f"expected an array of CIDR strings, got {type_name(value)}")
            return None
        nets = [self.network(v, path) for v in value]
        if any(n is None for n in nets):
            return None
        seen: set[ipaddress.IPv4Network] = set()
        for n in nets:
            if n in seen:
                self.error(path, f"{n} is listed twice")
                return None
            seen.add(n)
        return tuple(nets)

"""Random edits of config.toml.example, the file operators start from, fed to the loader and
to a running supervisor's reload: a typo anywhere is a ConfigError naming it, never another
exception, never a shown PSK, and a rejected reload leaves the running config in place.

Examples per test: VPND_FUZZ_EXAMPLES (default 150; the long run in docs/scale.md uses 5000).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vpnd.config.load import load_file, load_text_with_warnings
from vpnd.config.model import Config, ConfigError
from vpnd.run.supervisor import Supervisor
from vpnd.systemd import Notifier

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "config.toml.example").read_text()
LINES = EXAMPLE.splitlines()
PSKS = [(ROOT / "examples" / f"tunnel{i}.psk").read_text().strip() for i in (1, 2)]

EXAMPLES = int(os.environ.get("VPND_FUZZ_EXAMPLES", "0")) or 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Values that get past TOML and into the rules: each kind of scalar, the interesting edges.
VALUE_TEXT = st.sampled_from([
    '""', '"x"', "0", "-1", "1", "65536", "4294967296", "99999999999999999999", "1.5", "-0.0",
    "nan", "inf", "-inf", "true", "false", "[]", '["a"]', "[1, 2]", "{}", "{a = 1}",
    '"198.18.0.2"', '"10.0.0.0/8"', '"0.0.0.0/0"', '"169.254.10.0/30"', '"ipsec0"',
    '"/dev/null"', '"/etc/shadow"', '"../../etc/passwd"', '"examples/tunnel2.psk"', '"route"',
    '"bgp"', '"policy"', '"group14"', '"aes256"', '"existing"', '"1.10"', "1979-05-27",
    '"\\u0000"', '"a\\nb"', "'''multi\nline'''", '"' + "x" * 300 + '"',
])
PSK_LINES = [i for i, l in enumerate(LINES) if l.startswith("psk_file")]


def _uncomment(text: str, i: int) -> str:
    lines = text.splitlines()
    if lines:
        i %= len(lines)
        lines[i] = re.sub(r"^#\s?", "", lines[i])
    return "\n".join(lines) + "\n"


def _set_value(text: str, i: int, value: str) -> str:
    lines = text.splitlines()
    assigns = [n for n, l in enumerate(lines) if re.match(r"^#?\s*[A-Za-z_]+\s*=", l)]
    if assigns:
        n = assigns[i % len(assigns)]
        key = lines[n].lstrip("# ").split("=", 1)[0].strip()
        lines[n] = f"{key} = {value}"
    return "\n".join(lines) + "\n"


def _delete(text: str, i: int) -> str:
    lines = text.splitlines()
    if lines:
        del lines[i % len(lines)]
    return "\n".join(lines) + "\n"


def _duplicate(text: str, i: int) -> str:
    lines = text.splitlines()
    if lines:
        i %= len(lines)
        lines.insert(i, lines[i])
    return "\n".join(lines) + "\n"


def _swap(text: str, i: int, j: int) -> str:
    lines = text.splitlines()
    if lines:
        i, j = i % len(lines), j % len(lines)
        lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines) + "\n"


def _splice(text: str, at: int, cut: int, insert: str) -> str:
    at %= len(text) + 1
    return text[:at] + insert + text[at + cut:]


def _truncate(text: str, at: int) -> str:
    return text[:at % (len(text) + 1)]


index = st.integers(0, 10_000)
mutation = st.one_of(
    st.tuples(st.just(_uncomment), index),
    st.tuples(st.just(_set_value), index, VALUE_TEXT),
    st.tuples(st.just(_delete), index),
    st.tuples(st.just(_duplicate), index),
    st.tuples(st.just(_swap), index, index),
    st.tuples(st.just(_splice), index, st.integers(0, 20),
              st.one_of(st.text(max_size=12), st.sampled_from(["[", "]", "[[connection]]", "=", '"',
                                                              "\n[daemon]\n", "#", "\\", "\0"]))),
    st.tuples(st.just(_truncate), index),
)


def apply(mutations) -> str:
    text = EXAMPLE
    for fn, *args in mutations:
        text = fn(text, *args)
    return text


mutated = st.lists(mutation, min_size=1, max_size=4).map(apply)


def no_secret_in(problems) -> None:
    for p in problems:
        for psk in PSKS:
            assert psk not in str(p), p


def outcome(text: str) -> Config | None:
    """Anything but a Config or a ConfigError with at least one error is a bug."""
    try:
        cfg, warnings = load_text_with_warnings(text, "config.toml", base_dir=str(ROOT))
    except ConfigError as exc:
        assert exc.errors
        no_secret_in(exc.errors + exc.warnings)
        return None
    assert isinstance(cfg, Config)
    no_secret_in(warnings)
    return cfg


def test_the_example_itself_loads():
    assert outcome(EXAMPLE) is not None


@FUZZ
@given(mutated)
def test_mutated_example_is_config_or_config_error(text):
    outcome(text)


# --- the reload path: a running supervisor re-reads its file --------------------------------------

class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__(address="")
        self.sent: list[tuple[str, str]] = []

    def ready(self, status: str) -> bool:
        self.sent.append(("ready", status))
        return False

    def reloading(self) -> bool:
        self.sent.append(("reloading", ""))
        return False


async def _reload_with(directory: Path, text: str) -> tuple[Supervisor, Config, RecordingNotifier]:
    path = directory / "config.toml"
    path.write_text(EXAMPLE)
    running = load_file(path)
    notifier = RecordingNotifier()
    sup = Supervisor(running, notifier=notifier)
    path.write_text(text)                   # the operator's edit, then SIGHUP
    reconciler = asyncio.create_task(sup.reconcile())
    sup.request_reload()
    async with asyncio.timeout(5):
        while not any(kind == "ready" for kind, _ in notifier.sent):
            await asyncio.sleep(0.001)
    assert not reconciler.done(), "the reconciler died on a reload"
    sup.request_stop()
    await asyncio.wait_for(reconciler, 5)
    return sup, running, notifier


@settings(max_examples=max(20, EXAMPLES // 5), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated)
def test_reload_of_a_mutated_file_never_breaks_the_running_daemon(text):
    d = Path(tempfile.mkdtemp(prefix="vpnd-reload-"))
    try:
        shutil.copytree(ROOT / "examples", d / "examples")
        for psk in (d / "examples").iterdir():
            psk.chmod(0o600)
        valid = outcome(text) is not None
        sup, running, notifier = asyncio.run(_reload_with(d, text))
        assert notifier.sent[0] == ("reloading", "")
        if not valid:
            assert sup.config is running, "a rejected reload must keep the running config"
            assert sup.engine is not None
    finally:
        shutil.rmtree(d, ignore_errors=True)

"""The metrics reference can't drift: every metric `Metrics()` registers is documented in
docs/metrics.md with its type and labels, and the page documents nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vpnd_testing.metric_names import registered
from vpnd.metrics import FAILOVER_REASONS, failover_reason

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    """`### \\`name\\`` headings and the `Type: … · Labels: …` line under each."""
    out = {}
    for m in re.finditer(r"^### `(vpnd_\w+)`\nType: (\w+)(?: · Labels: (.*))?$", DOC.read_text(),
                         re.M):
        out[m[1]] = (m[2], tuple(re.findall(r"`(\w+)`", m[3] or "")))
    return out


def test_every_metric_is_documented():
    missing = sorted(set(registered()) - set(documented()))
    assert not missing, f"docs/metrics.md does not document {missing}"


def test_docs_have_no_stale_metrics():
    headings = set(re.findall(r"^### `(vpnd_\w+)`", DOC.read_text(), re.M))
    assert set(documented()) == headings, "a heading lacks its 'Type: … · Labels: …' line"
    stale = sorted(headings - set(registered()))
    assert not stale, f"docs/metrics.md documents metrics vpnd no longer has: {stale}"


@pytest.mark.parametrize("name", sorted(registered()))
def test_type_and_labels_match(name):
    doc = documented().get(name)
    if doc is None:
        pytest.skip("reported by test_every_metric_is_documented")
    assert doc == registered()[name]


@pytest.mark.parametrize("text,label", [
    ("operator: force failover to tunnel2", "operator"),
    ("tunnel1 drained: switched to tunnel2", "drained"),
    ("preferred tunnel1 healthy for 10.3 s: switched back", "preempt"),
    ("tunnel1: 3 probes lost in a row: switched to tunnel2", "probe_lost"),
    ("tunnel1: probe RTT 250 ms > max_rtt_ms 200: switched to tunnel2", "probe_rtt"),
    ("tunnel1: probe loss 30% > max_loss_percent 20: switched to tunnel2", "probe_loss"),
    ("tunnel1: CHILD SA not installed: switched to tunnel2", "sa_down"),
    ("tunnel1: BFD down: switched to tunnel2", "bfd_down"),
    ("tunnel1: BGP session not established: switched to tunnel2", "bgp_down"),
    ("tunnel2 usable", "other"),
])
def test_failover_reason_label_is_bounded(text, label):
    """The policy's prose carries numbers; the label must not (one series per switch)."""
    assert failover_reason(text) == label
    assert label in FAILOVER_REASONS


def test_failover_reasons_are_documented():
    text = DOC.read_text()
    section = text[text.index("### `vpnd_failovers_total`"):text.index("## Health probes")]
    assert all(f"`{r}`" in section for r in FAILOVER_REASONS)

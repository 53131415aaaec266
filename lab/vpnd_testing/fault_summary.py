"""The fault matrix's results table: each scenario records what it measured, the terminal
summary prints one table at the end of the run (tests/conftest.py's hook)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    number: int
    scenario: str
    outage_ms: float | None = None
    switches: int | None = None
    note: str = ""
    verdict: str = "failed"


ROWS: list[Row] = []


def row(number: int, scenario: str) -> Row:
    """A row starts as 'failed' and the scenario marks it 'passed' at its very end, so an
    assertion half-way leaves an honest row behind."""
    r = Row(number, scenario)
    ROWS.append(r)
    return r


def table() -> list[str]:
    if not ROWS:
        return []
    lines = [f"{'#':>2}  {'scenario':<46} {'outage ms':>9} {'switches':>8}  {'result':<7} note",
             "-" * 100]
    for r in sorted(ROWS, key=lambda r: r.number):
        outage = "-" if r.outage_ms is None else f"{r.outage_ms:.0f}"
        switches = "-" if r.switches is None else str(r.switches)
        lines.append(f"{r.number:>2}  {r.scenario:<46} {outage:>9} {switches:>8}  {r.verdict:<7} {r.note}")
    return lines

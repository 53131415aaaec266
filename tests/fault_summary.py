"""The fault matrix's results table: each scenario records what it measured, the terminal
summary prints one table at the end of the run (tests/conftest.py's hook).

Columns: the round trip the LAN's pinger saw (`rtt ms`), the one-way outages where the
scenario measured them (`lan>vpc`, counted at the VPC host; `vpc>lan`, at the LAN host), the
cloud model the scenario ran against (vendor or per-flow, docs/lab.md) and the cloud's own
detection budget (`cloud ms`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    number: int | str
    scenario: str
    outage_ms: float | None = None          # the round trip
    switches: int | None = None
    note: str = ""
    verdict: str = "failed"
    lan_to_vpc_ms: float | None = None
    vpc_to_lan_ms: float | None = None
    model: str = "vendor"
    budget_ms: float | None = None


ROWS: list[Row] = []


def row(number: int | str, scenario: str, model: str = "vendor", budget_ms: float | None = None) -> Row:
    """A row starts as 'failed' and the scenario marks it 'passed' at its very end, so an
    assertion half-way leaves an honest row behind."""
    r = Row(number, scenario, model=model, budget_ms=budget_ms)
    ROWS.append(r)
    return r


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def table() -> list[str]:
    if not ROWS:
        return []
    lines = [f"{'#':>3}  {'scenario':<46} {'cloud':<8} {'rtt ms':>7} {'lan>vpc':>7} {'vpc>lan':>7} "
             f"{'cloud ms':>8} {'switches':>8}  {'result':<7} note",
             "-" * 130]
    for r in sorted(ROWS, key=lambda r: (int(str(r.number).rstrip("abcdefghijklmnopqrstuvwxyz")), str(r.number))):
        switches = "-" if r.switches is None else str(r.switches)
        lines.append(f"{str(r.number):>3}  {r.scenario:<46} {r.model:<8} {_ms(r.outage_ms):>7} "
                     f"{_ms(r.lan_to_vpc_ms):>7} {_ms(r.vpc_to_lan_ms):>7} {_ms(r.budget_ms):>8} "
                     f"{switches:>8}  {r.verdict:<7} {r.note}")
    return lines

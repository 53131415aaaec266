"""vpnd's Prometheus endpoint, read the way an operator would: curl inside cgw (vpnd listens
on 127.0.0.1 in that namespace). Shared by the host's lab tests and the vm guest's scripts,
so it needs nothing but the lab."""

from __future__ import annotations

import re

from vpnd_lab.topology import Lab

_LINE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def scrape(lab: Lab) -> str:
    return lab.exec("cgw", "curl", "-sf", "--max-time", "10", "http://127.0.0.1:9456/metrics").stdout


def series(text: str, name: str, **labels: str):
    """Values of `name`'s series whose labels include `labels`, in exposition order."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = _LINE.match(line)
        if m is None or m.group(1) != name:
            continue
        have = dict(_LABEL.findall(m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            yield float(m.group(3))


def sample(text: str, name: str, **labels: str) -> float | None:
    """The first matching series' value; None when there is none (a removed series)."""
    return next(series(text, name, **labels), None)


def total(text: str, name: str, **labels: str) -> float:
    """The sum over the matching series (e.g. failovers of any reason)."""
    return sum(series(text, name, **labels))

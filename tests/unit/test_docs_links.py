"""The operator documentation points at things that exist: relative links and their anchors
resolve, and every log event docs/operations.md tells people to grep for is one vpnd emits."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m[1]) for m in re.finditer(r"^#+ (.*)$", page.read_text(), re.M)}


def links() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if not re.match(r"[a-z]+:", target):
                out.append((str(page.relative_to(REPO)), target))
    return out


@pytest.mark.parametrize("page,target", links())
def test_relative_links_resolve(page, target):
    path, _, anchor = target.partition("#")
    dest = (REPO / page).parent / path if path else REPO / page
    assert dest.exists(), f"{page}: {target} does not exist"
    if anchor:
        assert anchor in anchors(dest), f"{page}: no heading for #{anchor} in {dest.name}"


def documented_events() -> list[str]:
    text = (REPO / "docs" / "operations.md").read_text()
    table = text[text.index("| event |"):]
    return sorted({e for row in re.findall(r"^\| (.*?) \|", table, re.M)
                   for e in re.findall(r"`([a-z_]+\.[a-z_]+)`", row)})


def emitted_events() -> set[str]:
    found = set()
    for source in (REPO / "vpnd").rglob("*.py"):
        found |= set(re.findall(r"log\.\w+\(\s*\"([a-z_]+\.[a-z_]+)\"", source.read_text()))
    return found


@pytest.mark.parametrize("event", documented_events())
def test_documented_log_events_exist(event):
    assert event in emitted_events(), f"docs/operations.md documents {event}, vpnd never logs it"


def test_state_changes_are_documented():
    """The events a failover leaves behind are the ones operators must find."""
    assert {"tunnel.state_changed", "connection.active_changed", "routes.switched",
            "routes.repaired", "config.reload_rejected"} <= set(documented_events())

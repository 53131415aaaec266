"""docs/install.md's firewall recipe, run as written in network namespaces (issue 14, defect 17):
on a fresh machine (no nftables ruleset at all, where `nft add rule inet filter input ...`
failed with "No such file or directory") and on one whose `inet filter input` chain already
drops by policy (the recipe must open UDP 500/4500 and ESP there, and must not flip the
policy to accept). Judged by `vpnd doctor`'s own evaluation of the resulting ruleset."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from vpnd.doctor import PACKETS, firewall_verdicts, parse_ruleset

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None,
                                reason="needs root and nft (network namespaces)")


def recipe() -> list[str]:
    """The nft lines of the fenced block in docs/install.md that creates the table."""
    text = (ROOT / "docs" / "install.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    block = next(b for b in blocks if "nft add table inet filter" in b)
    return [l.split("  #")[0].strip() for l in block.splitlines() if l.startswith("nft ")]


@pytest.fixture
def netns():
    name = f"vpnd-fw-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def nft(ns: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=stdin, capture_output=True,
                          text=True, timeout=30)


def run_recipe(ns: str) -> None:
    for line in recipe():
        r = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", line], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, f"{line}: {r.stderr}"


def verdicts(ns: str) -> dict:
    return firewall_verdicts(parse_ruleset(nft(ns, "-j", "list", "ruleset").stdout))


def test_the_recipe_is_the_one_the_guest_runs():
    from vpnd_lab.guests.deb import FIREWALL

    assert recipe() == FIREWALL


def test_recipe_on_a_fresh_machine(netns):
    assert nft(netns, "list", "ruleset").stdout.strip() == ""
    # what the old docs said: fails where no `inet filter` table exists
    assert nft(netns, "add", "rule", "inet", "filter", "input", "meta", "l4proto", "esp", "accept").returncode != 0
    run_recipe(netns)
    v = verdicts(netns)
    assert {p: v[p][0] for p in PACKETS} == {p: "accept" for p in PACKETS}
    assert all(where == "inet filter input" for _, where, _ in v.values()), v


def test_recipe_on_a_firewall_that_drops_by_policy(netns):
    r = nft(netns, "-f", "-", stdin="table inet filter {\n chain input {\n"
            "  type filter hook input priority filter; policy drop;\n"
            "  ct state established,related accept\n  iif lo accept\n }\n}\n")
    assert r.returncode == 0, r.stderr
    assert {v[0] for v in verdicts(netns).values()} == {"drop"}
    run_recipe(netns)
    v = verdicts(netns)
    assert {p: v[p][0] for p in PACKETS} == {p: "accept" for p in PACKETS}
    assert "policy drop" in nft(netns, "list", "chain", "inet", "filter", "input").stdout

"""vpnd.kernel.mss_clamp against real nft in a network namespace this test creates: the
clamp chain is made, left alone when in place, repaired when someone deletes it or changes
it, shares `table inet vpnd` with other chains, and is withdrawn (the table with it once
empty)."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from vpnd.config.load import load_text
from vpnd.kernel.mss_clamp import MssClamp
from vpnd_testing.config_toml import dumps, route_config

pytestmark = pytest.mark.lab


@pytest.fixture
def netns():
    name = f"mtu-clamp-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft(ns: str, *args: str, script: str | None = None) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=script, text=True,
                          capture_output=True, check=True).stdout


def test_clamp_kept_and_withdrawn(netns):
    conn = load_text(dumps(route_config())).connections[0]
    a, b = (t.interface for t in conn.tunnels)

    async def go():
        k = MssClamp(conn, netns=netns)
        k.mss = {a: 1382, b: 1382}
        assert await k.ensure() == 1
        assert await k.ensure() == 0 and await k.problems() == []
        text = nft(netns, "list", "table", "inet", "vpnd")
        assert f'oifname "{a}" tcp flags syn tcp option maxseg size > 1382 tcp option maxseg size set 1382' in text
        assert f'iifname "{b}"' in text
        # a narrower path measured on tunnel 2: its clamp follows
        k.mss[b] = 1260
        assert await k.problems() == [f"MSS clamp on {b} is 1382, not 1260"]
        assert await k.ensure() == 1 and await k.problems() == []
        # someone deletes the chain: put back by the next keep
        nft(netns, "delete", "chain", "inet", "vpnd", f"mss-{conn.name}")
        assert await k.problems()
        assert await k.ensure() == 1 and await k.problems() == []
        # another vpnd chain in the table survives the clamp's withdrawal
        nft(netns, "add", "chain", "inet", "vpnd", "hc-in-other")
        assert await k.remove() == 1
        assert "hc-in-other" in nft(netns, "list", "table", "inet", "vpnd")
        nft(netns, "delete", "chain", "inet", "vpnd", "hc-in-other")
        assert await k.ensure() == 1
        assert await k.remove() == 1          # the last chain: the table goes too
        r = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "vpnd"],
                           capture_output=True)
        assert r.returncode != 0
        k.close()

    asyncio.run(go())

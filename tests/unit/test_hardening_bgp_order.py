"""Defect 15 of issue 14: on a fresh FRR vpnd must never send `neighbor P shutdown` (or any
other per-neighbor line) before that neighbor's `remote-as`: FRR refuses it ("% Specify
remote-as or peer-group commands first") and logs an error at every BGP start.

A tiny FRR stand-in checks what bgpd checks (a neighbor exists once its remote-as ran) and
the test asserts the exact ordered command list vpnd sends, bgpcfgd-style."""

from __future__ import annotations

import asyncio

from vpnd_testing.config_toml import bgp_config, dumps
from vpnd.frr.bgp import BgpAdapter
from vpnd.config.load import load_text
from vpnd.core import events as E
from vpnd.frr.vtysh import VtyshTarget

T1, T2 = "169.254.10.1", "169.254.20.1"
K1, K2 = E.TunnelKey("vpc1", "tunnel1"), E.TunnelKey("vpc1", "tunnel2")


class FreshFrr:
    """What a just-started bgpd answers: no config; per-neighbor lines need the remote-as."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.errors: list[str] = []
        self.neighbors: set[str] = set()
        self.alive = True

    async def run(self, command: str, *, timeout=None) -> str:
        return ""

    async def show_json(self, command: str, *, timeout=None):
        return {}

    async def configure(self, commands: list[str]) -> None:
        self.batches.append(list(commands))
        for c in commands:
            w = c.split()
            if w[:1] == ["no"]:
                w = w[1:]
            if len(w) >= 3 and w[0] == "neighbor":
                if w[2] == "remote-as":
                    self.neighbors.add(w[1])
                elif w[1] not in self.neighbors:
                    self.errors.append(f"{c}: % Specify remote-as or peer-group commands first")

    async def close(self) -> None:
        pass


def adapter() -> tuple[BgpAdapter, FreshFrr]:
    a = BgpAdapter(load_text(dumps(bgp_config())), on_event=lambda e: None,
                   target=VtyshTarget(vtysh="/nonexistent/vtysh"))
    frr = FreshFrr()
    a.vtysh = frr
    return a, frr


async def settle(a: BgpAdapter) -> None:
    for _ in range(5):
        await asyncio.sleep(0)
        if a._push is not None:
            await a._push


async def test_shutdown_wanted_before_the_first_apply_comes_after_remote_as():
    """The core shuts tunnel 1's neighbor (and picks an active tunnel) before the adapter's
    first apply reached the fresh FRR: nothing is pushed ahead of the apply, which carries the
    shutdown right after the neighbor's remote-as."""
    a, frr = adapter()
    await a.set_neighbor(K1, False, "test")
    await a.set_active("vpc1", "tunnel2", "test")
    await settle(a)
    await a.apply()
    await settle(a)
    assert frr.errors == []
    sent = [c for batch in frr.batches for c in batch]
    router = sent.index("router bgp 65530")
    remote = sent.index(f"neighbor {T1} remote-as 45104")
    shut = sent.index(f"neighbor {T1} shutdown")
    assert router < remote < shut
    assert sent[remote + 1:shut + 1] == [l for l in sent[remote + 1:shut + 1]
                                         if l.startswith(f"neighbor {T1} ")]
    # the exact router block FRR receives: each neighbor's remote-as first, the shutdown
    # right after it, route-maps in the family once both neighbors exist
    assert sent[router:] == [
        "router bgp 65530", "bgp router-id 169.254.10.2", "no bgp network import-check",
        f"neighbor {T1} remote-as 45104", f"neighbor {T1} shutdown", f"neighbor {T1} timers 10 30",
        f"neighbor {T1} bfd profile vpnd-vpc1",
        f"neighbor {T2} remote-as 45104", f"neighbor {T2} timers 10 30",
        f"neighbor {T2} bfd profile vpnd-vpc1",
        "address-family ipv4 unicast",
        f"neighbor {T1} soft-reconfiguration inbound",
        f"neighbor {T1} route-map vpnd-vpc1-standby-in in",
        f"neighbor {T1} route-map vpnd-vpc1-standby-out out",
        f"neighbor {T2} soft-reconfiguration inbound",
        f"neighbor {T2} route-map allow-all in", f"neighbor {T2} route-map allow-all out",
        "maximum-paths 32",
        # networks last, once the route-maps keep the halves (tunnel 2 active) off tunnel 1
        "network 172.16.0.0/16", "network 172.16.0.0/17", "network 172.16.128.0/17",
        "exit-address-family", "exit",
    ]


async def test_later_changes_are_pushed_as_one_line_once_the_neighbor_exists():
    a, frr = adapter()
    await a.apply()
    frr.batches.clear()
    await a.set_neighbor(K2, False, "test")
    await settle(a)
    assert frr.batches == [["router bgp 65530", f"neighbor {T2} shutdown", "exit"]]
    assert frr.errors == []

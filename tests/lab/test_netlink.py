"""The shared rtnetlink subscription (vpnd/kernel/netlink.py) against the real kernel: one socket
per namespace however many owners listen, each owner gets its groups' messages on its own
task, a failing owner does not stop the others, and the last one out closes the socket."""

from __future__ import annotations

import asyncio
import time

import pytest
from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE, RTMGRP_LINK

from vpnd_testing.netns_helpers import scratch_netns, sh
from vpnd.kernel import netlink

pytestmark = pytest.mark.lab


async def until(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_owners_share_one_subscription_and_get_their_groups():
    with scratch_netns() as ns:
        links, routes, broken = [], [], []

        async def on_link(m):
            links.append(m.get("event"))

        async def on_route(m):
            routes.append(m.get("event"))

        async def on_broken(m):
            broken.append(m)
            raise RuntimeError("an owner's bug")

        async def nothing():
            pass

        a = await netlink.listen(ns, RTMGRP_LINK, on_link, nothing, name="a")
        b = await netlink.listen(ns, RTMGRP_IPV4_ROUTE, on_route, nothing, name="b")
        c = await netlink.listen(ns, RTMGRP_LINK, on_broken, nothing, name="c")
        try:
            hubs = [h for h in netlink._hubs.values() if h.netns == ns]
            assert len(hubs) == 1 and len(hubs[0].listeners) == 3
            sh("ip", "-n", ns, "link", "add", "v1", "type", "veth", "peer", "name", "v2")
            sh("ip", "-n", ns, "link", "set", "v1", "up")
            sh("ip", "-n", ns, "route", "add", "10.9.0.0/16", "dev", "v1")
            await until(lambda: "RTM_NEWROUTE" in routes and len(broken) >= 2)
            await until(lambda: "RTM_NEWLINK" in links)
            assert set(routes) <= {"RTM_NEWROUTE", "RTM_DELROUTE"}      # only its group
            assert set(links) <= {"RTM_NEWLINK", "RTM_DELLINK"}
            await c.close()
            n = len(links)
            sh("ip", "-n", ns, "link", "del", "v1")
            await until(lambda: "RTM_DELLINK" in links[n:])
        finally:
            await a.close()
            await b.close()
            await c.close()
        assert not [h for h in netlink._hubs.values() if h.netns == ns]


async def test_a_backlog_past_the_limit_becomes_one_overrun(monkeypatch):
    """A flood the owner cannot keep up with: the old messages go, the owner resyncs once
    (like ENOBUFS on its own socket), and what came after is still delivered."""
    monkeypatch.setattr(netlink, "BACKLOG", 5)
    got, overruns = [], []

    async def on_message(m):
        got.append(m)

    async def on_overrun():
        overruns.append(len(got))

    class NoHub:
        async def remove(self, listener):
            pass

    listener = netlink.Listener(NoHub(), RTMGRP_LINK, on_message, on_overrun, name="t")
    for i in range(8):                  # queued before the owner's task has run at all
        listener.put(i)
    await until(lambda: got and got[-1] == 7)
    assert overruns == [0] and got == [5, 6, 7]
    await listener.close()


async def test_route_messages_of_other_tables_are_dropped_in_the_kernel():
    """The shared subscription's BPF filter: main-table routes and links arrive, a route in
    another table never reaches Python (a churning VRF or flood costs vpnd nothing)."""
    with scratch_netns() as ns:
        got = []

        async def on_route(m):
            got.append((m.get("event"), m.get("table")))

        async def nothing():
            pass

        listener = await netlink.listen(ns, RTMGRP_IPV4_ROUTE, on_route, nothing, name="t")
        try:
            for i in range(50):
                sh("ip", "-n", ns, "route", "add", f"10.9.{i}.0/24", "dev", "lo", "table", "100")
            sh("ip", "-n", ns, "route", "add", "10.8.0.0/24", "dev", "lo", "table", "1000")
            sh("ip", "-n", ns, "route", "add", "10.7.0.0/24", "dev", "lo")
            await until(lambda: ("RTM_NEWROUTE", 254) in got)
            await asyncio.sleep(0.1)
            assert all(table == 254 for _, table in got), got
        finally:
            await listener.close()

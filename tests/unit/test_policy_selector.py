"""vpnd/charon/selector.py's procedure, against a recording stand-in for the charon adapter (and for
the kernel's policy dump): the kernel XFRM path runs for real only in the vm tier
(tests/vm/test_vm_policy_xfrm.py), the libipsec path also runs on real charons in
tests/lab/test_policy_mode.py."""

from __future__ import annotations

import asyncio
import ipaddress

from vpnd_testing.core_helpers import config, connection
from vpnd.core.events import TunnelKey
from vpnd.charon.selector import PolicySelector


class Client:
    def __init__(self, calls):
        self.calls = calls

    async def load_conn(self, conns):
        for name, body in conns.items():
            child = body["children"][name]
            self.calls.append(("load", name, child["priority"]))


class FakeCharon:
    def __init__(self, plugins, children):
        self.calls: list[tuple] = []
        self.client = Client(self.calls)
        self._plugins = plugins
        self._children = children          # tunnel name -> [(child id, ike id)]
        self.desired = None

    def name_of(self, key):
        return f"vpnd-{key.connection}-{key.tunnel}"

    def desire(self, desired):
        self.desired = desired

    async def plugins(self):
        return self._plugins

    async def children(self, key):
        return self._children.get(key.tunnel, [])

    async def replace_child(self, key, timeout=None):
        self.calls.append(("replace", key.tunnel))
        new = max(c for cs in self._children.values() for c, _ in cs) + 1
        self._children[key.tunnel] = [(new, 1)]
        return new


POLICY = config(connection(routing="policy"))


class Reconciler:
    """Stands in for the daemon's queue: deferred work runs in order, when drained."""

    def __init__(self):
        self.jobs = []

    def defer(self, name, run):
        self.jobs.append(run)

    async def drain(self):
        while self.jobs:
            await self.jobs.pop(0)()


def selector(charon):
    sel = PolicySelector(POLICY, charon, defer=(q := Reconciler()).defer)
    sel.queue = q
    return sel


def run(coro):
    return asyncio.run(coro)


def test_libipsec_switch_reloads_priorities_then_replaces_only_the_chosen_child():
    charon = FakeCharon(("kernel-libipsec", "vici"), {"t1": [(1, 1)], "t2": [(2, 2)]})
    sel = selector(charon)

    async def main():
        done = await sel.set_active("c", "t1")        # t2's child is newer: t2 carries
        assert done["op"] == "replace_child"
        assert await sel.set_active("c", "t1") is None  # already so: nothing sent
        await sel.set_active("c", "t2")

    run(main())
    assert charon.calls == [
        ("load", "vpnd-c-t1", "1"), ("load", "vpnd-c-t2", "2"), ("replace", "t1"),
        ("load", "vpnd-c-t1", "2"), ("load", "vpnd-c-t2", "1"), ("replace", "t2"),
    ]
    # a charon restart reloads what was chosen last
    assert charon.desired.conns["vpnd-c-t2"]["children"]["vpnd-c-t2"]["priority"] == "1"


def test_libipsec_restart_adopts_the_tunnel_already_carrying():
    from vpnd.core.events import SaSnapshot, TunnelSa

    charon = FakeCharon(("kernel-libipsec",), {"t1": [(7, 1)], "t2": [(2, 2)]})
    sel = selector(charon)
    sel.found_at_start(SaSnapshot((TunnelSa(TunnelKey("c", "t1"), 1, "ESTABLISHED", 7, "INSTALLED"),
                                   TunnelSa(TunnelKey("c", "t2"), 2, "ESTABLISHED", 2, "INSTALLED"))))
    done = run(sel.set_active("c", "t1"))
    assert done["op"] == "adopted"
    assert not [c for c in charon.calls if c[0] == "replace"]


def test_children_vpnd_brought_up_itself_are_never_adopted():
    # a fresh start: unique ids follow creation, not installation, so t1's higher id proves
    # nothing about which of the two installed last
    charon = FakeCharon(("kernel-libipsec",), {"t1": [(2, 1)], "t2": [(1, 2)]})
    sel = selector(charon)
    assert run(sel.set_active("c", "t1"))["op"] == "replace_child"


def test_libipsec_reasserts_when_the_standby_child_is_reinstalled():
    charon = FakeCharon(("kernel-libipsec",), {"t1": [(1, 1)], "t2": [(2, 2)]})
    sel = selector(charon)

    async def main():
        await sel.set_active("c", "t1")
        sel.child_installed(TunnelKey("c", "t1"))      # the chosen one itself: nothing
        sel.child_installed(TunnelKey("c", "t2"))      # e.g. t2 rekeyed: t1 again
        await sel.queue.drain()

    run(main())
    assert [c for c in charon.calls if c[0] == "replace"] == [("replace", "t1"), ("replace", "t1")]


def kernel_names(tunnel: int | None):
    """A stand-in for the kernel's policy dump: the outbound LAN -> VPC policy (and its
    inbound twin) with tunnel n's endpoints in the template, as kernel-netlink installs it."""
    from vpnd.kernel.xfrm_policy import Policy, Template

    def dump():
        if tunnel is None:
            return []
        lan, vpc = ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("10.0.0.0/16")
        return [Policy(vpc, lan, "in", 1, (Template(f"198.18.0.{tunnel}", "198.18.0.2", 0, tunnel),)),
                Policy(lan, vpc, "out", 1, (Template("198.18.0.2", f"198.18.0.{tunnel}", 0x1234, tunnel),))]
    return dump


def test_kernel_xfrm_also_gives_the_demoted_tunnel_a_priority_2_child():
    charon = FakeCharon(("kernel-netlink",), {"t1": [(1, 1)], "t2": [(2, 2)]})
    sel = selector(charon)
    sel.read_kernel = kernel_names(None)        # nothing installed yet: assert

    async def main():
        await sel.set_active("c", "t1")
        await sel.set_active("c", "t2")
        await sel.queue.drain()
        sel.read_kernel = kernel_names(2)
        sel.child_installed(TunnelKey("c", "t1"))      # the kernel still sends via t2: nothing
        await sel.queue.drain()

    run(main())
    # t1 chosen (its demotion of t2 is overtaken by the switch to t2), then t2 chosen and t1
    # demoted in the background
    assert [c[1] for c in charon.calls if c[0] == "replace"] == ["t1", "t2", "t1"]


def test_charon_refusing_leaves_the_choice_unmade_so_it_is_retried():
    from vpnd.charon.vici import ViciUnavailable

    charon = FakeCharon(("kernel-libipsec",), {"t1": [(1, 1)], "t2": [(2, 2)]})

    async def refuse(conns):
        raise ViciUnavailable("load-conn: not connected to charon")
    charon.client.load_conn = refuse
    sel = selector(charon)
    done = run(sel.set_active("c", "t1"))
    assert done["op"] == "failed" and "not connected" in done["error"]
    assert "c" not in sel.active        # the next SetActive(t1) is carried out, not skipped
    assert sel.failed == {"c": "t1"}

    async def back(conns):
        return await Client(charon.calls).load_conn(conns)
    charon.client.load_conn = back

    async def main():
        sel.retry("c")                  # charon is back: its snapshot arrives
        await sel.queue.drain()

    run(main())
    assert sel.active == {"c": "t1"} and sel.failed == {}
    assert ("replace", "t1") in charon.calls


def test_kernel_xfrm_restart_adopts_the_tunnel_the_kernel_policy_names():
    """vpnd restarted on kernel XFRM: the kernel's outbound policy names tunnel 2, so the
    core hears it (carrier_in) and the first SetActive(t2) replaces no CHILD SA."""
    from vpnd.core.events import SaSnapshot, TunnelSa

    charon = FakeCharon(("kernel-netlink",), {"t1": [(7, 1)], "t2": [(8, 2)]})
    charon.loaded_plugins = ("kernel-netlink", "vici")
    sel = selector(charon)
    sel.read_kernel = kernel_names(2)
    snap = SaSnapshot((TunnelSa(TunnelKey("c", "t1"), 1, "ESTABLISHED", 7, "INSTALLED"),
                       TunnelSa(TunnelKey("c", "t2"), 2, "ESTABLISHED", 8, "INSTALLED")))
    sel.found_at_start(snap)
    assert sel.carrier_in(snap, POLICY.connections[0]) == "t2"
    done = run(sel.set_active("c", "t2"))
    assert done["op"] == "adopted"
    assert not [c for c in charon.calls if c[0] == "replace"]
    # the priorities are reloaded all the same (t2 first), for later CHILD SAs
    assert ("load", "vpnd-c-t2", "1") in charon.calls and ("load", "vpnd-c-t1", "2") in charon.calls


def test_kernel_xfrm_restart_asserts_when_the_kernel_names_the_other_tunnel():
    charon = FakeCharon(("kernel-netlink",), {"t1": [(7, 1)], "t2": [(8, 2)]})
    sel = selector(charon)
    sel.read_kernel = kernel_names(2)

    async def main():
        assert (await sel.set_active("c", "t1"))["op"] == "replace_child"
        await sel.queue.drain()

    run(main())
    assert [c[1] for c in charon.calls if c[0] == "replace"] == ["t1", "t2"]


def test_kernel_xfrm_reasserts_when_a_reinstalled_child_took_the_policy():
    """A predecessor killed between a switch and its demotion leaves t2's CHILD SA at
    priority 1; its rekey (same priority, newest) takes the kernel policy: vpnd sees the
    kernel name t2 after the install and re-asserts t1, then demotes t2."""
    charon = FakeCharon(("kernel-netlink",), {"t1": [(7, 1)], "t2": [(8, 2)]})
    sel = selector(charon)
    sel.read_kernel = kernel_names(1)

    async def main():
        assert (await sel.set_active("c", "t1"))["op"] == "adopted"
        sel.read_kernel = kernel_names(2)
        sel.child_installed(TunnelKey("c", "t2"))
        await sel.queue.drain()

    run(main())
    assert [c[1] for c in charon.calls if c[0] == "replace"] == ["t1", "t2"]


def test_kernel_unreadable_means_assert():
    charon = FakeCharon(("kernel-netlink",), {"t1": [(7, 1)], "t2": [(8, 2)]})
    sel = selector(charon)

    def refuse():
        raise PermissionError(1, "Operation not permitted")
    sel.read_kernel = refuse
    assert run(sel.set_active("c", "t1"))["op"] == "replace_child"

"""Policy mode (`routing = "policy"`): which tunnel carries the protected flows, set over VICI.

Both tunnels' CHILD SAs carry the same traffic selectors (LAN <-> VPC); no routes, no XFRM
interfaces. What picks the tunnel, measured with charon 5.9.8 (docs/policy-mode.md):

- libipsec (this lab's backend): the most recently installed CHILD SA wins, `priority` is
  ignored; deleting the carrier falls back to the other. Neither `load-conn` with swapped
  priorities nor `rekey` moves traffic; a fresh CHILD SA on the preferred tunnel does, with
  no packet lost.
- kernel XFRM (kernel-netlink; measured on Debian 12's kernel 6.1 in the vm tier,
  tests/vm/guest_policy_xfrm.py): both children share one kernel policy per selector; its
  template is the CHILD SA with the lowest `priority` value, and on a tie the newest. A rekey
  of the standby (priority 2) does not take the traffic. The kernel's outbound policy names
  the carrier (its template's endpoints): vpnd reads it (vpnd/kernel/xfrm_policy.py).

So one procedure serves both: reload the connection's conns with the chosen tunnel at
priority 1 and the others at 2 (future CHILD SAs, re-initiations and kernel XFRM obey it),
then give the chosen tunnel a fresh CHILD SA (`CharonAdapter.replace_child`: terminate its
old CHILD SA, initiate a new one; charon refuses an identical duplicate, so make-before-break
is not available). The chosen tunnel never carries traffic while its CHILD SA is replaced,
so users lose nothing; the tunnel being left keeps carrying until the new one is installed.
On kernel XFRM the tunnel being left also gets a fresh CHILD SA (priority 2), or its next
rekey, which keeps the old priority 1 and is newest, would take the traffic back. On
libipsec that would take it back at once; there instead, whenever another tunnel's CHILD SA
is (re)installed (a rekey, a re-initiation), the chosen one is re-asserted. On kernel XFRM the
same event makes vpnd read the kernel's outbound policy, and re-assert only if it names
another tunnel; a restarted vpnd adopts the tunnel it names (no CHILD SA replaced).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from vpnd import logs

from vpnd.kernel import xfrm_policy
from vpnd.config.model import Config, ConnectionConfig
from vpnd.core.events import TunnelKey

log = logs.get("vpnd.policy")

LIBIPSEC = "kernel-libipsec"
DEMOTE_TIMEOUT = 2.0    # seconds; a healthy tunnel's fresh CHILD SA takes 15-400 ms (lab, vm)


class PolicySelector:
    """Carries out SetActive for policy-mode connections through the charon adapter.

    Follow-up work (a re-assert, a retry, the demotion of the tunnel left) goes to `defer`:
    the daemon queues it for the reconciler, so it never runs beside another switch."""

    def __init__(self, config: Config, charon: Any,
                 defer: Callable[[str, Callable[[], Awaitable[None]]], None]) -> None:
        self.config = config
        self.charon = charon
        self.defer = defer
        self.active: dict[str, str | None] = {}      # connection -> tunnel asserted in charon
        self._newest_wins: bool | None = None
        self._lock = asyncio.Lock()     # one CHILD SA replacement at a time (switch, re-assert)
        self.found: set[int] = set()    # CHILD SAs charon already had when vpnd connected
        self.failed: dict[str, str] = {}   # connection -> tunnel whose switch charon refused
        self.read_kernel = xfrm_policy.dump   # kernel XFRM's policies (tests replace it)

    def _conn(self, name: str) -> ConnectionConfig:
        return next(c for c in self.config.connections if c.name == name)

    async def newest_wins(self) -> bool:
        """True on libipsec (priority ignored, the newest CHILD SA carries)."""
        if self._newest_wins is None:
            self._newest_wins = LIBIPSEC in await self.charon.plugins()
        return self._newest_wins

    def desired(self, active: Mapping[str, str | None] | None = None):
        from vpnd.charon.adapter import desired_from_config
        return desired_from_config(self.config, active if active is not None else self.active)

    def found_at_start(self, snapshot: Any) -> None:
        """The first SaSnapshot after vpnd started: the CHILD SAs a predecessor left."""
        self.found = {sa.child_id for sa in snapshot.sas if sa.child_id is not None}

    def kernel_carrier(self, conn: ConnectionConfig) -> str | None:
        """kernel XFRM: the tunnel the kernel sends the connection's flows through, read from
        its outbound policy for the shared selector (first local -> first remote network):
        the template's endpoints are that tunnel's addresses. None when it cannot be told
        (no such policy, netlink refused, endpoints of no single tunnel)."""
        try:
            policies = self.read_kernel()
        except OSError as e:
            log.warning("policy.kernel_unreadable", connection=conn.name, error=str(e))
            return None
        if not conn.local_networks or not conn.remote_networks:
            return None
        tmpl = xfrm_policy.outbound_template(str(conn.local_networks[0]), str(conn.remote_networks[0]),
                                             policies)
        if tmpl is None:
            return None
        named = [t.name for t in conn.tunnels
                 if str(t.remote_address) == tmpl.dst and str(t.local_address) == tmpl.src]
        return named[0] if len(named) == 1 else None

    def carrier_in(self, snapshot: Any, conn: ConnectionConfig) -> str | None:
        """The first SaSnapshot after vpnd started: the tunnel that carries the traffic.
        libipsec: the one whose newest CHILD SA is in it (every SA in it predates this vpnd,
        see carrier()); kernel XFRM: the one the kernel's outbound policy names. None when
        that cannot be told: plugins not known, no CHILD SA, no policy."""
        if self._newest_wins is None:
            plugins = getattr(self.charon, "loaded_plugins", None)
            if plugins is None:
                return None
            self._newest_wins = LIBIPSEC in plugins
        if not self._newest_wins:
            return self.kernel_carrier(conn)
        best: tuple[int, str] | None = None
        for sa in snapshot.sas:
            if (sa.tunnel.connection == conn.name and sa.child_id is not None
                    and sa.child_state == "INSTALLED" and (best is None or sa.child_id > best[0])):
                best = (sa.child_id, sa.tunnel.tunnel)
        return best[1] if best else None

    async def carrier(self, conn: ConnectionConfig) -> str | None:
        """After a restart, on libipsec: the tunnel whose CHILD SA carries traffic, when it
        can be told: every CHILD SA was there before vpnd started (none re-negotiated
        since), and the newest (highest unique id) is then the last one a predecessor
        asserted. Unique ids follow creation, not installation: two CHILD SAs negotiated
        at the same time (a fresh start) can install in the other order, hence None for
        anything vpnd itself brought up; the caller then asserts, which is always safe."""
        best: tuple[int, str] | None = None
        for t in conn.tunnels:
            for child_id, _ in await self.charon.children(TunnelKey(conn.name, t.name)):
                if child_id not in self.found:
                    return None
                if best is None or child_id > best[0]:
                    best = (child_id, t.name)
        return best[1] if best else None

    async def set_active(self, connection: str, tunnel: str | None, *,
                         retrying: bool = False) -> dict | None:
        """Make `tunnel` carry the connection's flows. Returns what was done (for the log),
        None when charon already had it so."""
        if tunnel is None or self.active.get(connection) == tunnel:
            if not retrying:            # the core chose again: an older refused switch is moot
                self.failed.pop(connection, None)
            return None         # withdraw: both CHILD SAs stay, nothing better to do here
        from vpnd.charon.vici import ViciError, ViciException

        async with self._lock:
            if retrying and self.failed.get(connection) != tunnel:
                return None     # another choice was carried out meanwhile
            previous = self.active.get(connection)
            try:
                done = await self._set_active(connection, tunnel)
                if done is None or done.get("op") != "failed":
                    self.failed.pop(connection, None)
                else:
                    self.failed[connection] = tunnel
                return done
            except (ViciError, ViciException) as e:
                self.failed[connection] = tunnel
                # charon unreachable or refusing: the next SetActive or re-assert retries
                if previous is None:
                    self.active.pop(connection, None)
                else:
                    self.active[connection] = previous
                log.error("policy.switch_failed", connection=connection, tunnel=tunnel,
                          error=str(e))
                return {"op": "failed", "error": str(e)}

    async def _set_active(self, connection: str, tunnel: str) -> dict | None:
        conn = self._conn(connection)
        first = connection not in self.active
        previous = self.active.get(connection)
        self.active[connection] = tunnel
        t0 = time.perf_counter()
        desired = self.desired()
        self.charon.desire(desired)         # a charon restart reloads these priorities
        for t in conn.tunnels:
            name = self.charon.name_of(TunnelKey(connection, t.name))
            await self.charon.client.load_conn({name: desired.conns[name]})
        loaded = time.perf_counter()
        newest_wins = await self.newest_wins()
        if first and (await self.carrier(conn) if newest_wins else self.kernel_carrier(conn)) == tunnel:
            # vpnd (re)started and charon already sends through the chosen tunnel: adopt it
            return {"op": "adopted", "load_ms": _ms(t0, loaded)}
        child = await self.charon.replace_child(TunnelKey(connection, tunnel))
        done = time.perf_counter()
        if child is None:
            self.active[connection] = previous
            log.error("policy.switch_failed", connection=connection, tunnel=tunnel,
                      note="its fresh CHILD SA did not come up; the other tunnel keeps traffic")
            return {"op": "failed", "load_ms": _ms(t0, loaded), "vici_ms": _ms(loaded, done)}
        if not newest_wins:
            for t in conn.tunnels:      # the others: a fresh CHILD SA at priority 2
                if t.name != tunnel:
                    self._demote_later(TunnelKey(connection, t.name), tunnel)
        return {"op": "replace_child", "child_id": child, "load_ms": _ms(t0, loaded),
                "vici_ms": _ms(loaded, done), "total_ms": _ms(t0, done)}

    def _demote_later(self, other: TunnelKey, chosen: str) -> None:
        """kernel XFRM: the tunnel left behind gets a CHILD SA at priority 2, after the switch
        (it may be the broken one: the switch must not wait for it). Bounded: a black-holed
        tunnel holds the reconciler for DEMOTE_TIMEOUT at most, and its next rekey is then
        caught by child_installed()."""
        async def demote() -> None:
            async with self._lock:
                if self.active.get(other.connection) == chosen:
                    await self.charon.replace_child(other, timeout=DEMOTE_TIMEOUT)
        self.defer(f"policy.demote {other}", demote)

    def retry(self, connection: str) -> None:
        """charon's full truth arrived again (a reconnect, the resync timer): a switch it
        refused is tried once more."""
        tunnel = self.failed.get(connection)
        if tunnel is None:
            return

        async def again() -> None:
            done = await self.set_active(connection, tunnel, retrying=True)
            if done:
                log.info("policy.switched", connection=connection, active=tunnel,
                         retried=True, **done)
        self.defer(f"policy.retry {connection}", again)

    def child_installed(self, tunnel: TunnelKey) -> None:
        """A CHILD SA of `tunnel` was (re)installed (ChildUp / ChildRekeyed). On libipsec it
        now carries the traffic: if vpnd chose another tunnel, re-assert that one. On kernel
        XFRM priorities decide, unless the new CHILD SA kept priority 1 (a predecessor
        killed between a switch and its demotion): re-assert only if the kernel's outbound
        policy now names another tunnel than the chosen one."""
        chosen = self.active.get(tunnel.connection)
        if chosen is None or chosen == tunnel.tunnel or self._newest_wins is None:
            return
        kernel = not self._newest_wins

        async def reassert() -> None:
            async with self._lock:
                if self.active.get(tunnel.connection) != chosen:
                    return          # a switch happened meanwhile
                conn = self._conn(tunnel.connection)
                carrier = self.kernel_carrier(conn) if kernel else None
                if kernel and carrier in (None, chosen):
                    return
                t0 = time.perf_counter()
                child = await self.charon.replace_child(TunnelKey(tunnel.connection, chosen))
                log.info("policy.reasserted", connection=tunnel.connection, active=chosen,
                         because=f"{tunnel.tunnel}'s CHILD SA was installed"
                         + (f" and the kernel's policy named {carrier}" if kernel else ""),
                         child_id=child, vici_ms=_ms(t0, time.perf_counter()))
            if kernel and child is not None:
                for t in conn.tunnels:
                    if t.name != chosen:
                        self._demote_later(TunnelKey(tunnel.connection, t.name), chosen)
        self.defer(f"policy.reassert {tunnel.connection}", reassert)


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000, 2)

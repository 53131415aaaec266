"""BGP mode's adapter: keeps FRR's bgpd (and bfdd) configured as `vpnd render frr` says,
carries out the core's SetBgpNeighbor, and reports session/BFD state back as events.

- apply(): reads what bgpd and bfdd run (`show running-config bgpd|bfdd`: per daemon, because
  vtysh's merged view shows a route-map that only zebra still has after bgpd restarted),
  diffs it against the rendered config (vpnd.frr.diff) and issues only the difference.
  Unchanged config -> no configuration command (`config_commands` counts them).
- set_neighbor(): `neighbor P shutdown` / `no neighbor P shutdown`. Shutdown (not a deny
  route-map) because it withdraws the tunnel's routes from the RIB at once and tells the peer
  (a Cease) when the tunnel still carries anything, and FRR shows it in its running config, so
  the wanted state is part of what apply() converges to after FRR restarts.
  The command runs in the background: a stuck FRR never stalls the reconciler.
- set_active(): the core's SetActive. With standby = "prepend" the route-maps say which
  tunnel carries traffic (vpnd.render.frr.neighbor_route_maps: allow-all for the active one,
  prepend / lower local-preference for the others), so the new assignment is pushed as the
  changed `neighbor P route-map ...` lines only, then `clear bgp ipv4 unicast P soft` for
  each changed, enabled peer (FRR 8.4 re-evaluates on the attachment change by itself; the
  soft clear makes that explicit and keeps the sessions). Like the shutdowns, the assignment
  is part of what apply() converges to; until the core's first SetActive it is the rendered
  default (tunnel 1). No policy here: which tunnel is the core's decision.
- the return path (vpnd.render.frr, return_path = "more-specific"): the same SetActive also
  announces the configured networks' halves on the newly active tunnel when it is not
  tunnel 1, and withdraws them when tunnel 1 is active again. One configure batch, ordered
  so that tunnel 1 never carries them, not even between two lines: away from tunnel 1 the
  route-maps move first (tunnel 1's out route-map now denies the halves), then `network`
  adds them; back to tunnel 1 `no network` withdraws them first (over the live active
  tunnel), then the route-maps move. The soft refresh follows. They are wanted state like
  the route-maps, so apply() re-announces them after FRR restarts and a vpnd restart adopts
  them with the assignment (zero commands). At stop they follow daemon.withdraw_on_stop as
  the routes do: kept by default (traffic keeps flowing, both ways, while vpnd restarts;
  the next vpnd adopts them), withdrawn with withdraw_on_stop = true (vpnd no longer
  watches the tunnel they pull the cloud onto; the route-maps stay as FRR has them, as the
  sessions do).
- watch(): polls `show bgp summary json` (and `show bfd peers json` with BFD) every
  poll_interval, emits BgpSessionChanged / BfdChanged on change, fills the metrics. A bgpd
  without our router or peers (restarted, config gone) or a respawned vtysh triggers a
  re-apply; a full diff also runs every resync_interval (zero commands when nothing drifted).
  FRR unreachable: one warning per outage, retries with backoff up to 10 s, never a traceback.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Callable

from vpnd import logs
from vpnd.config.model import Config
from vpnd.core import events as E
from vpnd.frr.vtysh import FrrCommandError, FrrError, FrrTimeout, FrrUnavailable, Vtysh, VtyshTarget
from vpnd.frr.diff import (
    Change, Running, diff, parse_bfd_peers, parse_bgp_summary, parse_running, script, setting,
)

log = logs.get("vpnd.bgp")

_AF = "address-family ipv4 unicast"
_ROUTE_MAP = re.compile(r"^neighbor \S+ route-map \S+ (in|out)$")

BACKOFF_START = 0.5
BACKOFF_MAX = 10.0


class BgpAdapter:
    def __init__(self, config: Config, *, on_event: Callable[[Any], None], metrics: Any = None,
                 poll_interval: float = 0.5, resync_interval: float = 10.0, timeout: float = 5.0,
                 target: VtyshTarget | None = None) -> None:
        self._use(config)
        self.on_event = on_event
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.resync_interval = resync_interval
        self.vtysh = Vtysh(target or VtyshTarget.from_config(config.daemon), timeout=timeout,
                           on_error=self._command_failed)
        self.enabled: dict[E.TunnelKey, bool] = {k: True for k in self.peers.values()}
        self._pushed: dict[E.TunnelKey, bool] = {}
        self.active: dict[str, str] = {}        # connection -> tunnel (the core's SetActive)
        self._pushed_active: dict[str, str] | None = None    # None: nothing pushed yet
        self.sessions: dict[E.TunnelKey, bool] = {}
        self.bfd_state: dict[E.TunnelKey, bool] = {}
        self.config_commands = 0        # configuration commands issued by apply() (tests read it)
        self.applies = 0
        self.last_changes: list[Change] = []
        self.last_apply_ms: float | None = None
        self._need_apply = True
        self._last_apply = 0.0
        self._task: asyncio.Task | None = None
        self._push: asyncio.Task | None = None
        self._down_since: float | None = None

    # --- configuration ---------------------------------------------------------------------

    def _use(self, config: Config) -> None:
        from vpnd.render.frr import bgp_connections, frr_config

        self.config = config
        self.rendered = frr_config(config)
        self.conns = bgp_connections(config)
        self.asn = self.conns[0].bgp.local_asn
        self.router = f"router bgp {self.asn}"
        self.peers: dict[str, E.TunnelKey] = {}
        for c in self.conns:
            for t in c.tunnels:
                if t.bgp is not None:
                    self.peers[str(t.bgp.peer_ip)] = E.TunnelKey(c.name, t.name)
        self.bfd = any(c.bgp.bfd.enabled for c in self.conns)

    async def reconfigure(self, config: Config) -> list[Change]:
        """A reloaded (validated) config: applied by difference, neighbor states kept for
        tunnels that still exist."""
        self._use(config)
        self.enabled = {k: self.enabled.get(k, True) for k in self.peers.values()}
        self.active = {c: t for c, t in self.active.items() if E.TunnelKey(c, t) in self.enabled}
        self.sessions = {k: v for k, v in self.sessions.items() if k in self.enabled}
        self.bfd_state = {k: v for k, v in self.bfd_state.items() if k in self.enabled}
        return await self.apply()

    def wanted(self, enabled: dict[E.TunnelKey, bool] | None = None,
               active: dict[str, str] | None = None) -> list[tuple[tuple[str, ...], list[str]]]:
        """The contexts rendered for the active tunnels (route-maps), plus `neighbor P
        shutdown` for every neighbor vpnd holds shut. Pure: no FRR involved."""
        from vpnd.render.frr import frr_config

        enabled = self.enabled if enabled is None else enabled
        active = self.active if active is None else active
        rendered = frr_config(self.config, active) if active else self.rendered
        shut = {ip for ip, k in self.peers.items() if not enabled.get(k, True)}
        out = []
        for ctx in rendered.contexts:
            lines = list(ctx.lines)
            if ctx.keys == (self.router,) and shut:
                extra = []
                for line in lines:
                    extra.append(line)
                    parts = line.split()
                    if parts[0] == "neighbor" and parts[2] == "remote-as" and parts[1] in shut:
                        extra.append(f"neighbor {parts[1]} shutdown")
                lines = extra
            out.append((ctx.keys, lines))
        return out

    async def running(self) -> Running:
        text = await self.vtysh.run("show running-config bgpd")
        run = parse_running(text)
        # always: a profile left from a config with BFD must go too (harmless without bfdd)
        bfd = parse_running(await self.vtysh.run("show running-config bfdd"))
        run.contexts.update({k: v for k, v in bfd.contexts.items() if k[0] == "bfd"})
        return run

    async def apply(self) -> list[Change]:
        """Read, diff, issue the difference. Returns the changes (empty: nothing to do)."""
        t0 = time.perf_counter()
        running = await self.running()
        if self._pushed_active is None:
            self._adopt(running)
        # neighbor states as of now (after the read): a SetBgpNeighbor pushed meanwhile is in
        # `running` or still pending, never undone; the watch loop re-pushes any later change
        enabled = dict(self.enabled)
        active = dict(self.active)
        changes = diff(self.wanted(enabled, active), running)
        if changes:
            await self.vtysh.configure(script(changes))
            # a replaced attachment on a live session: refresh it (a new neighbor starts fresh)
            had = {setting(h) for h in running.contexts.get((self.router, _AF), [])}
            moved = {c.command.split()[1] for c in changes
                     if _ROUTE_MAP.match(c.command) and setting(c.command) in had}
            await self._soft_refresh(sorted(ip for ip in moved if ip in self.peers
                                            and enabled.get(self.peers[ip], True)))
        self.config_commands += len(changes)
        self.applies += 1
        self.last_changes = changes
        self.last_apply_ms = round((time.perf_counter() - t0) * 1000, 3)
        self._need_apply = False
        self._last_apply = time.monotonic()
        self._pushed = enabled
        self._pushed_active = active
        if changes:
            log.info("frr.applied", commands=len(changes), apply_ms=self.last_apply_ms,
                     changes=[c.command for c in changes if c.command][:20])
        else:
            log.debug("frr.unchanged", apply_ms=self.last_apply_ms)
        return changes

    def _adopt(self, running: Running) -> None:
        """First apply after a (re)start: with standby = "prepend", FRR's route-map
        attachments say which tunnel carries traffic. Keep it (and tell the core, Adopted)
        rather than render tunnel 1 active and move traffic back before the core decided, as
        the route mode adopts its kernel routes. Only where the core has not spoken yet."""
        from vpnd.render.frr import neighbor_route_maps, steered

        have = set(running.contexts.get((self.router, _AF), []))
        for c in self.conns:
            if not steered(c) or c.name in self.active:
                continue
            found = []
            for t in c.tunnels:
                maps = neighbor_route_maps(c, {c.name: t.name})
                lines = [f"neighbor {peer} route-map {name} {way}"
                         for peer, (rm_in, rm_out) in maps.items()
                         for name, way in ((rm_in, "in"), (rm_out, "out"))]
                if lines and all(line in have for line in lines):
                    found.append(t.name)
            if len(found) == 1:
                self.active[c.name] = found[0]
                log.info("bgp.adopted", connection=c.name, active=found[0])
                self.on_event(E.Adopted(E.TunnelKey(c.name, found[0])))

    # --- SetBgpNeighbor ----------------------------------------------------------------------

    async def set_neighbor(self, key: E.TunnelKey, enabled: bool, reason: str = "") -> None:
        """Record the wanted state and push it in the background (the newest state wins)."""
        if key not in self.enabled:
            log.warning("bgp.unknown_neighbor", connection=key.connection, tunnel=key.tunnel)
            return
        self.enabled[key] = enabled
        if self.metrics is not None:
            self.metrics.bgp_neighbor_enabled.labels(*key).set(1 if enabled else 0)
        log.info("bgp.neighbor_wanted", connection=key.connection, tunnel=key.tunnel,
                 enabled=enabled, reason=reason)
        self._kick()

    # --- SetActive -------------------------------------------------------------------------

    async def set_active(self, connection: str, tunnel: str | None, reason: str = "") -> None:
        """Record which tunnel the core made active and push the route-maps that follow in
        the background. None (withdrawn: the failing neighbors are shut anyway) keeps the
        last assignment; an unchanged one issues nothing."""
        if tunnel is None:
            return
        if E.TunnelKey(connection, tunnel) not in self.enabled:
            log.warning("bgp.unknown_tunnel", connection=connection, tunnel=tunnel)
            return
        if self.active.get(connection) == tunnel:
            return
        self.active[connection] = tunnel
        log.info("bgp.active_wanted", connection=connection, tunnel=tunnel, reason=reason)
        if self.route_map_changes(self._pushed_active, self.active) or any(
                self.network_changes(self._pushed_active, self.active)):
            self._kick()

    def network_changes(self, old: dict[str, str] | None,
                        new: dict[str, str]) -> tuple[list[str], list[str]]:
        """Pure: (withdrawn, announced) return-path more-specifics between two assignments
        (old None: the rendered default, which has none)."""
        from vpnd.render.frr import return_networks

        before, after = return_networks(self.config, old), return_networks(self.config, new)
        base = set(self._networks())
        return ([n for n in before if n not in after and n not in base],
                [n for n in after if n not in before and n not in base])

    def _networks(self) -> list[str]:
        return [str(n) for c in self.conns for n in (c.bgp.networks or c.local_networks)]

    def push_commands(self, pending: dict[E.TunnelKey, bool], old: dict[str, str] | None,
                      new: dict[str, str]) -> list[str]:
        """Pure: the configure batch for neighbor states and an assignment change, in the
        return path's order (module docstring)."""
        ip_of = {k: ip for ip, k in self.peers.items()}
        maps = self.route_map_changes(old, new)
        withdrawn, announced = self.network_changes(old, new)
        cmds = [self.router]
        cmds += [f"{'no ' if v else ''}neighbor {ip_of[k]} shutdown" for k, v in pending.items()]
        if maps or withdrawn or announced:
            cmds += [_AF, *[f"no network {n}" for n in withdrawn], *[line for _, line in maps],
                     *[f"network {n}" for n in announced], "exit-address-family"]
        cmds.append("exit")
        return cmds

    async def withdraw_return_path(self, connection: str) -> list[str]:
        """At stop with withdraw_on_stop: `no network` for the connection's more-specifics
        FRR announces, nothing else. Returns the withdrawn prefixes."""
        from vpnd.render.frr import more_specifics

        conn = next((c for c in self.conns if c.name == connection), None)
        if conn is None:
            return []
        # vpnd is stopping: no resync or push may re-announce them behind our back
        for task in (self._task, self._push):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        running = await self.running()
        have = set(running.contexts.get((self.router, _AF), []))
        base = set(self._networks())
        gone = [n for n in more_specifics(conn) if f"network {n}" in have and n not in base]
        if gone:
            await self.vtysh.configure([self.router, _AF, *[f"no network {n}" for n in gone],
                                        "exit-address-family", "exit"])
            log.info("bgp.return_path_withdrawn", connection=connection, networks=gone,
                     reason="vpnd stops (daemon.withdraw_on_stop)")
        return gone

    def route_map_changes(self, old: dict[str, str] | None,
                          new: dict[str, str]) -> list[tuple[str, str]]:
        """Pure: (peer, `neighbor P route-map M in|out` line) for every attachment that differs
        between two assignments (old None: the rendered default)."""
        from vpnd.render.frr import neighbor_route_maps

        out: list[tuple[str, str]] = []
        for c in self.conns:
            before, after = neighbor_route_maps(c, old), neighbor_route_maps(c, new)
            for ip, (rm_in, rm_out) in after.items():
                was = before.get(ip)
                if was is None or was[0] != rm_in:
                    out.append((ip, f"neighbor {ip} route-map {rm_in} in"))
                if was is None or was[1] != rm_out:
                    out.append((ip, f"neighbor {ip} route-map {rm_out} out"))
        return out

    def pending(self) -> bool:
        return (any(self._pushed.get(k) != v for k, v in self.enabled.items())
                or bool(self.route_map_changes(self._pushed_active, self.active))
                or any(self.network_changes(self._pushed_active, self.active)))

    def _kick(self) -> None:
        if self._push is None or self._push.done():
            self._push = asyncio.create_task(self._push_pending(), name="bgp-push")

    async def _push_pending(self) -> None:
        """Neighbor shutdowns and route-map attachments not yet in FRR, in one configure
        batch (the newest wanted state wins), then the soft refresh of the moved peers."""
        ip_of = {k: ip for ip, k in self.peers.items()}
        while True:
            if self._need_apply:
                # FRR may not have our router or neighbors yet (a fresh or restarted bgpd):
                # `neighbor P shutdown` before P's remote-as is refused ("% Specify remote-as
                # or peer-group commands first"). The pending apply renders the wanted state
                # in order (the shutdown right after the remote-as); the watch loop applies it.
                return
            pending = {k: v for k, v in self.enabled.items() if self._pushed.get(k) != v}
            active = dict(self.active)
            maps = self.route_map_changes(self._pushed_active, active)
            withdrawn, announced = self.network_changes(self._pushed_active, active)
            if not pending and not maps and not withdrawn and not announced:
                return
            cmds = self.push_commands(pending, self._pushed_active, active)
            t0 = time.perf_counter()
            try:
                await self.vtysh.configure(cmds)
            except FrrError:
                self._need_apply = True       # the watch loop's apply converges it later
                return
            self._pushed.update(pending)
            self._pushed_active = active
            for k, v in pending.items():
                log.info("bgp.neighbor_set", connection=k.connection, tunnel=k.tunnel, peer=ip_of[k],
                         enabled=v, reaction_ms=round((time.perf_counter() - t0) * 1000, 3))
            if withdrawn or announced:
                log.info("bgp.return_path", active=active, announced=announced, withdrawn=withdrawn,
                         reaction_ms=round((time.perf_counter() - t0) * 1000, 3))
            if maps:
                moved = list(dict.fromkeys(ip for ip, _ in maps))
                refreshed = await self._soft_refresh(
                    [ip for ip in moved if self._pushed.get(self.peers[ip], True)])
                for conn in dict.fromkeys(self.peers[ip].connection for ip in moved):
                    log.info("bgp.standby_moved", connection=conn, active=active.get(conn),
                             peers=[ip for ip in moved if self.peers[ip].connection == conn],
                             soft_refreshed=[ip for ip in refreshed if self.peers[ip].connection == conn],
                             commands=len(maps), reaction_ms=round((time.perf_counter() - t0) * 1000, 3))

    async def _soft_refresh(self, peers: list[str]) -> list[str]:
        """`clear bgp ipv4 unicast P soft`: re-run the peer's policy both ways without a
        session reset (inbound from the soft-reconfiguration copy that is rendered). A
        refusal is logged and counted (Vtysh's on_error); the config change stays."""
        done = []
        for ip in peers:
            try:
                await self.vtysh.run(f"clear bgp ipv4 unicast {ip} soft")
                done.append(ip)
            except FrrError:
                continue
        return done

    # --- watching ----------------------------------------------------------------------------

    def _command_failed(self, err: FrrError) -> None:
        if isinstance(err, (FrrCommandError, FrrTimeout)):
            if self.metrics is not None:
                self.metrics.frr_errors.inc()
            log.error("frr.command_failed", command=getattr(err, "command", None), error=str(err))
        if isinstance(err, FrrUnavailable) and self.metrics is not None:
            self.metrics.frr_up.set(0)

    async def poll(self) -> bool:
        """One look at FRR: emit changes, fill metrics. False: bgpd lost our configuration."""
        summary = parse_bgp_summary(await self.vtysh.show_json("show bgp summary json"))
        missing = [ip for ip in self.peers if ip not in summary.peers]
        if not summary.router or summary.asn not in (None, self.asn) or missing:
            log.warning("frr.config_lost", router=summary.router, asn=summary.asn,
                        missing_peers=missing, note="re-applying")
            return False
        for ip, key in self.peers.items():
            p = summary.peers[ip]
            if self.sessions.get(key) != p.established:
                self.sessions[key] = p.established
                log.info("bgp.session_changed", connection=key.connection, tunnel=key.tunnel, peer=ip,
                         established=p.established, state=p.state)
                self.on_event(E.BgpSessionChanged(key, p.established))
            if self.metrics is not None:
                m = self.metrics
                m.bgp_up.labels(*key).set(1 if p.established else 0)
                m.bgp_pfx_rcvd.labels(*key).set(p.prefixes_received)
                m.bgp_pfx_sent.labels(*key).set(p.prefixes_sent)
        if self.bfd:
            peers = parse_bfd_peers(await self.vtysh.show_json("show bfd peers json"))
            for ip, key in self.peers.items():
                up = peers.get(ip, False)
                if self.bfd_state.get(key) != up:
                    self.bfd_state[key] = up
                    log.info("bfd.changed", connection=key.connection, tunnel=key.tunnel, peer=ip, up=up)
                    self.on_event(E.BfdChanged(key, up))
                if self.metrics is not None:
                    self.metrics.bfd_up.labels(*key).set(1 if up else 0)
        return True

    async def watch(self) -> None:
        backoff = BACKOFF_START
        while True:
            try:
                if not self.vtysh.alive:
                    self._need_apply = True
                applied = self._need_apply or time.monotonic() - self._last_apply >= self.resync_interval
                if applied:
                    await self.apply()
                if not await self.poll():
                    self._need_apply = True
                    if applied:     # still missing right after an apply: don't spin
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                if self.metrics is not None:
                    self.metrics.frr_up.set(1)
                if self._down_since is not None:
                    log.info("frr.reconnected", down_s=round(time.monotonic() - self._down_since, 3))
                    self._down_since = None
                backoff = BACKOFF_START
                if (self._push is None or self._push.done()) and self.pending():
                    self._kick()
                await asyncio.sleep(self.poll_interval)
            except asyncio.CancelledError:
                raise
            except FrrError as err:
                self._need_apply = True
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("frr.unreachable" if isinstance(err, FrrUnavailable) else "frr.apply_failed",
                                error=str(err), retry_in=backoff,
                                note="retrying with backoff; BGP keeps its last state meanwhile")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception as err:  # noqa: BLE001 - supervision must outlive an adapter bug
                log.error("frr.watch_error", error=f"{type(err).__name__}: {err}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def start(self) -> None:
        self._task = asyncio.create_task(self.watch(), name="bgp-watch")

    async def stop(self) -> None:
        for task in (self._task, self._push):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._task, self._push) if t is not None),
                             return_exceptions=True)
        await self.vtysh.close()

"""SIGHUP reload by difference: what changed between the running and the new config, and
which adapters must act on it.

`plan(old, new)` is pure: it compares the two validated configs and says, per connection and
tunnel, what to do. The rule for charon is what charon would receive: a tunnel is reloaded in
charon only when its rendered load-conn or load-shared body differs (a changed probe interval
or failover timer renders the same, so charon hears nothing and the SAs keep their unique
ids). Facts measured on charon 5.9.8 (lab, libipsec) that shape `apply`:

- `load-conn` of an identical body answers "updated vici connection" and leaves the SAs
  alone, but it is pointless: unchanged tunnels get no VICI message at all.
- `load-conn` of a *changed* body ("replaced vici connection") leaves the running IKE and
  CHILD SAs up on the old settings: a changed tunnel must be terminated and re-initiated, or
  the new proposal/ids would only take effect at the next reauthentication.
- `unload-conn` leaves its SAs up (orphaned, nobody would re-initiate or close them): a
  removed tunnel's SAs are terminated first, then its conn and secret unloaded.

`apply(daemon, plan)` carries the plan out with the daemon's adapters, from inside the
reconciler (nothing else runs core actions meanwhile).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from vpnd import logs
from vpnd.config.model import Config, ConnectionConfig, TunnelConfig
from vpnd.core.events import TunnelKey

if TYPE_CHECKING:
    from vpnd.daemon import Daemon

log = logs.get("vpnd.reload")

Action = Literal["added", "removed", "changed", "unchanged"]


# --- comparing configs -----------------------------------------------------------------------

def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted key paths whose values differ. Only paths are returned, never values, so a
    rotated PSK shows as `psk` (Secret compares by value). Tunnels are the caller's business."""
    if dataclasses.is_dataclass(old) and type(old) is type(new):
        out: list[str] = []
        for f in dataclasses.fields(old):
            if f.name in ("tunnels", "source", "psk_file"):
                continue
            out += changed_fields(getattr(old, f.name), getattr(new, f.name),
                                  f"{prefix}{f.name}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def _probe_spec(conn: ConnectionConfig, t: TunnelConfig) -> tuple | None:
    hc = conn.health_check
    if hc is None:
        return None
    # what the tunnel's prober is built from (daemon.start_probe), per-tunnel paths included
    return (str(t.probe_destination or hc.destination), str(t.probe_source or hc.source),
            t.interface if conn.routing != "policy" else None,
            hc.interval, hc.timeout or hc.interval, hc.kind, hc.port)


def _link_spec(conn: ConnectionConfig, t: TunnelConfig) -> tuple | None:
    if conn.routing == "policy":
        return None
    return (t.interface, t.interface_kind, t.if_id, t.underlay, t.bgp)


@dataclass(frozen=True)
class TunnelPlan:
    key: TunnelKey
    action: Action
    fields: tuple[str, ...] = ()        # changed key paths (tunnel's own and inherited)
    charon: bool = False                # its conn or secret renders differently
    probe: bool = False                 # its prober must be (re)started or stopped
    link: bool = False                  # its interface settings changed


@dataclass(frozen=True)
class ConnectionPlan:
    name: str
    action: Action
    fields: tuple[str, ...] = ()
    tunnels: tuple[TunnelPlan, ...] = ()
    routes: bool = False                # remote networks, metrics or interfaces changed
    links: bool = False                 # some tunnel's interface changed, or tunnels came/went
    rebuild: bool = False               # routing mode changed: torn down and set up afresh

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action}
        if self.fields:
            out["fields"] = list(self.fields)
        tunnels = {}
        for t in self.tunnels:
            entry: dict[str, Any] = {"action": t.action}
            if t.fields:
                entry["fields"] = list(t.fields)
            if t.action == "changed":
                entry["charon"] = "reloaded" if t.charon else "untouched"
            if t.probe and t.action in ("changed", "unchanged"):
                entry["probe"] = "restarted"
            tunnels[t.key.tunnel] = entry
        if self.rebuild:
            tunnels = {t.key.tunnel: {"action": "restarted"} for t in self.tunnels}
        out["tunnels"] = tunnels
        if self.routes and self.action == "changed":
            out["routes"] = "reconfigured"
        if self.links and self.action == "changed":
            out["links"] = "reconfigured"
        return out


@dataclass(frozen=True)
class ReloadPlan:
    connections: tuple[ConnectionPlan, ...]
    daemon_fields: tuple[str, ...] = ()     # [daemon] keys: they need a restart

    def tunnels(self, *actions: Action, charon: bool | None = None) -> list[TunnelPlan]:
        return [t for c in self.connections for t in c.tunnels
                if t.action in actions and (charon is None or t.charon == charon)]

    @property
    def unchanged(self) -> bool:
        return all(c.action == "unchanged" for c in self.connections)

    def summary(self) -> dict[str, Any]:
        return {c.name: c.summary() for c in self.connections}


def plan(old: Config, new: Config) -> ReloadPlan:
    from vpnd.render import swanctl

    def rendered(c: ConnectionConfig, t: TunnelConfig) -> tuple[dict, dict]:
        return swanctl.vici_conn(c, t), swanctl.vici_secret(c, t)

    before = {c.name: c for c in old.connections}
    after = {c.name: c for c in new.connections}
    out: list[ConnectionPlan] = []
    for name, c in before.items():
        if name not in after:
            out.append(ConnectionPlan(name, "removed", tunnels=tuple(
                TunnelPlan(TunnelKey(name, t.name), "removed", charon=True, probe=True, link=True)
                for t in c.tunnels), routes=True, links=True))
    for name, n in after.items():
        o = before.get(name)
        if o is None:
            out.append(ConnectionPlan(name, "added", tunnels=tuple(
                TunnelPlan(TunnelKey(name, t.name), "added", charon=True, probe=True, link=True)
                for t in n.tunnels), routes=True, links=True))
            continue
        if o.routing != n.routing:      # a different kind of connection: start it afresh
            fields = tuple(changed_fields(o, n))
            out.append(ConnectionPlan(name, "changed", fields, tuple(
                [TunnelPlan(TunnelKey(name, t.name), "removed", charon=True, probe=True, link=True)
                 for t in o.tunnels]
                + [TunnelPlan(TunnelKey(name, t.name), "added", charon=True, probe=True, link=True)
                   for t in n.tunnels]), routes=True, links=True, rebuild=True))
            continue
        conn_fields = tuple(changed_fields(o, n))
        old_t = {t.name: t for t in o.tunnels}
        new_t = {t.name: t for t in n.tunnels}
        tunnels: list[TunnelPlan] = []
        for tname, t in old_t.items():
            if tname not in new_t:
                tunnels.append(TunnelPlan(TunnelKey(name, tname), "removed", charon=True,
                                          probe=True, link=True))
        for tname, t in new_t.items():
            key = TunnelKey(name, tname)
            ot = old_t.get(tname)
            if ot is None:
                tunnels.append(TunnelPlan(key, "added", charon=True, probe=True, link=True))
                continue
            own = tuple(f"tunnel.{tname}.{f}" for f in changed_fields(ot, t))
            charon = rendered(o, ot) != rendered(n, t)
            probe = _probe_spec(o, ot) != _probe_spec(n, t)
            link = _link_spec(o, ot) != _link_spec(n, t)
            action: Action = "changed" if (own or charon or probe or link) else "unchanged"
            tunnels.append(TunnelPlan(key, action, own, charon, probe, link))
        routes = (o.remote_networks != n.remote_networks
                  or [(t.name, t.interface, t.route_metric) for t in o.tunnels]
                  != [(t.name, t.interface, t.route_metric) for t in n.tunnels])
        links = any(t.link for t in tunnels)
        changed = bool(conn_fields) or any(t.action != "unchanged" for t in tunnels) or routes
        out.append(ConnectionPlan(name, "changed" if changed else "unchanged", conn_fields,
                                  tuple(tunnels), routes, links))
    return ReloadPlan(tuple(out), tuple(changed_fields(old.daemon, new.daemon)))


# --- carrying it out -------------------------------------------------------------------------

async def apply(daemon: "Daemon", new: Config, p: ReloadPlan) -> None:
    """Removed things go first (their SAs, probes, routes, links, series), then charon learns
    the added and changed tunnels, then the core adopts the new config and restarts the
    changed tunnels (traffic fails over meanwhile if one of them was active), then links,
    routes and probes follow, and a fresh snapshot lets the core initiate added tunnels."""
    removed = p.tunnels("removed")
    reloaded = p.tunnels("changed", charon=True)
    added = p.tunnels("added")
    restart_probes = sorted({t.key for t in p.tunnels("changed", "unchanged") if t.probe})
    known = set(daemon.sup.engine.tunnels)

    # 1. what goes away
    for key in [t.key for t in removed] + restart_probes:
        await daemon.stop_probe(key)
    for c in p.connections:
        if c.action == "removed" or c.rebuild:
            await daemon.remove_plumbing(c.name)
    daemon.policy.config = new          # policy mode: priorities follow the chosen tunnel
    await daemon.charon.update(daemon.policy.desired(),
                               load=[_name(t.key) for t in added + reloaded],
                               remove=[_name(t.key) for t in removed])
    gone = {c.name for c in p.connections if c.action == "removed"}
    for t in removed:
        daemon.metrics.forget(t.key.connection, t.key.tunnel,
                              connection_gone=t.key.connection in gone)

    # 2. the core: state kept for the rest; changed (and rebuilt) tunnels start over
    rebuilt = frozenset(c.name for c in p.connections if c.rebuild)
    daemon.sup.engine.reload(new, fresh=rebuilt)
    daemon.config = daemon.sup.config = new
    daemon.metrics.declare(new, only={t.key for t in added})
    restart = [t.key for t in reloaded] + [t.key for t in added if t.key in known]
    for t in reloaded:
        await daemon.charon.terminate(t.key, timeout=2.0)
    if restart:
        why = "configuration changed: " + ", ".join(
            f"{t.key.tunnel} ({', '.join(t.fields) or 'rendering'})" for t in reloaded) \
            if reloaded else "configuration changed: routing mode"
        await daemon.sup.execute(daemon.sup.engine.restart(restart, daemon.sup.clock(), why))

    # 3. interfaces, routes, probes
    for c in p.connections:
        if c.action == "added" or c.rebuild or (c.action == "changed" and (c.links or c.routes)):
            conn = next(x for x in new.connections if x.name == c.name)
            fresh = c.action == "added" or c.rebuild
            await daemon.reconfigure_plumbing(conn, links=c.links or fresh,
                                              routes=c.routes or fresh)
    for t in added:
        daemon.start_probe(t.key)
    for key in restart_probes:
        daemon.start_probe(key)
    if added:
        await daemon.charon.resync()

    # 4. BGP: FRR's configuration by difference (an unchanged one sends no command)
    await daemon.reconfigure_bgp()


def _name(key: TunnelKey) -> str:
    from vpnd.render.swanctl import conn_name
    return conn_name(key.connection, key.tunnel)

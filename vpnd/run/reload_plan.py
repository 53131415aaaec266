"""SIGHUP reload by difference: what changed between the running and the new config, and
which adapters must act on it (the daemon's `reload` carries the plan out).

`plan(old, new)` is pure: it compares the two validated configs and says, per connection and
tunnel, what to do. The rule for charon is what charon would receive: a tunnel is reloaded in
charon only when its rendered load-conn or load-shared body differs (a changed probe interval
or failover timer renders the same, so charon hears nothing and the SAs keep their unique
ids). Facts measured on charon 5.9.8 (lab, libipsec) that shape the reload's order:

- `load-conn` of an identical body answers "updated vici connection" and leaves the SAs
  alone, but it is pointless: unchanged tunnels get no VICI message at all.
- `load-conn` of a *changed* body ("replaced vici connection") leaves the running IKE and
  CHILD SAs up on the old settings: a changed tunnel must be terminated and re-initiated, or
  the new proposal/ids would only take effect at the next reauthentication.
- `unload-conn` leaves its SAs up (orphaned, nobody would re-initiate or close them): a
  removed tunnel's SAs are terminated first, then its conn and secret unloaded.

`Daemon.reload` (vpnd/run/daemon.py) carries the plan out with the daemon's adapters, from
inside the reconciler (nothing else runs core actions meanwhile).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from vpnd.config.model import Config, ConnectionConfig, TunnelConfig
from vpnd.core.events import TunnelKey
from vpnd.steering.spec import link_spec, probe_spec

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


def _cloud_check_path(c: ConnectionConfig) -> tuple[str, str] | None:
    """The cloud health check's addresses: its /32 route and reply marking follow them. Its
    interval, retries and switch_route are the cloud's business (status and doctor only)."""
    chc = c.cloud_health_check
    return None if chc is None else (str(chc.source_ip), str(chc.destination_ip))


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
            probe = probe_spec(o, ot) != probe_spec(n, t)
            link = link_spec(o, ot) != link_spec(n, t)
            action: Action = "changed" if (own or charon or probe or link) else "unchanged"
            tunnels.append(TunnelPlan(key, action, own, charon, probe, link))
        routes = (o.remote_networks != n.remote_networks
                  or _cloud_check_path(o) != _cloud_check_path(n)
                  or [(t.name, t.interface, t.route_metric) for t in o.tunnels]
                  != [(t.name, t.interface, t.route_metric) for t in n.tunnels])
        links = any(t.link for t in tunnels)
        changed = bool(conn_fields) or any(t.action != "unchanged" for t in tunnels) or routes
        out.append(ConnectionPlan(name, "changed" if changed else "unchanged", conn_fields,
                                  tuple(tunnels), routes, links))
    return ReloadPlan(tuple(out), tuple(changed_fields(old.daemon, new.daemon)))

"""Prometheus metrics: what an operator's dashboard and alerts read.

Every configured tunnel has its series from the start (state one-hot, up, active), also while
it is down or never negotiated: the common IPsec exporters drop down tunnels, which breaks
"tunnel down" alerts exactly when they matter. Names follow Prometheus conventions (base
units, `_total`, `_seconds`). A private registry keeps tests independent.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from vpnd.config.model import Config
from vpnd.core.events import TunnelKey

if TYPE_CHECKING:
    from vpnd.metrics_server import MetricsServer

TUNNEL_STATES = ("down", "connecting", "phase1_failed", "ike_up", "phase2_failed", "established",
                 "parked")
RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# The failover policy explains a switch in prose ("preferred tunnel1 healthy for 10.3 s: ...");
# a label needs a closed vocabulary, or every switch would create a new series.
FAILOVER_REASONS = ("operator", "drained", "preempt", "probe_lost", "probe_rtt", "probe_loss",
                    "sa_down", "bfd_down", "bgp_down", "other")


def failover_reason(text: str) -> str:
    """The `reason` label for a failover, from the policy's reason text."""
    rules = (("operator:", "operator"), (" drained", "drained"), ("switched back", "preempt"),
             ("probes lost", "probe_lost"), ("probe RTT", "probe_rtt"),
             ("probe loss", "probe_loss"), ("CHILD SA not installed", "sa_down"),
             ("BFD down", "bfd_down"), ("BGP session", "bgp_down"))
    return next((label for needle, label in rules if needle in text), "other")


def failover_reasons_for(conn) -> tuple[str, ...]:
    """The `reason` labels a switch of this connection can carry (pre-created at 0)."""
    hc = conn.health_check
    bgp = conn.bgp if conn.has_bgp else None
    possible = {
        "operator": True, "drained": True, "preempt": conn.failover.preempt,
        "probe_lost": hc is not None, "probe_rtt": hc is not None and hc.max_rtt_ms is not None,
        "probe_loss": hc is not None and hc.max_loss_percent is not None, "sa_down": True,
        "bfd_down": bgp is not None and bgp.bfd.enabled, "bgp_down": bgp is not None,
        "other": True,
    }
    return tuple(r for r in FAILOVER_REASONS if possible[r])


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        lt = ["connection", "tunnel"]
        self.tunnel_state = Gauge("vpnd_tunnel_state", "1 for the tunnel's current state",
                                  lt + ["state"], registry=r)
        self.tunnel_up = Gauge("vpnd_tunnel_up", "1 when the tunnel's CHILD SA is installed", lt, registry=r)
        self.tunnel_active = Gauge("vpnd_tunnel_active", "1 for the tunnel carrying traffic", lt, registry=r)
        self.transitions = Counter("vpnd_tunnel_transitions_total", "Tunnel state changes",
                                   lt + ["from", "to"], registry=r)
        self.failovers = Counter("vpnd_failovers_total", "Switches of the active tunnel",
                                 ["connection", "from", "to", "reason"], registry=r)
        self.probe_rtt = Histogram("vpnd_probe_rtt_seconds", "Health probe round-trip time", lt,
                                   buckets=RTT_BUCKETS, registry=r)
        self.probes_sent = Counter("vpnd_probes_sent_total", "Health probes sent", lt, registry=r)
        self.probes_lost = Counter("vpnd_probes_lost_total", "Health probes without a reply in time",
                                   lt, registry=r)
        self.route_repairs = Counter("vpnd_route_repairs_total",
                                     "vpnd routes put back after someone else removed or changed them",
                                     ["connection"], registry=r)
        self.charon_up = Gauge("vpnd_vici_connected", "1 while the VICI session to charon is up", registry=r)
        self.frr_up = Gauge("vpnd_frr_connected", "1 while the vtysh session to FRR is up", registry=r)
        self.reload_success = Gauge("vpnd_config_last_reload_successful",
                                    "1 if the last configuration reload was applied", registry=r)
        self.reload_time = Gauge("vpnd_config_last_reload_success_timestamp_seconds",
                                 "Time of the last successful reload", registry=r)
        self.loop_lag = Gauge("vpnd_event_loop_lag_seconds", "How late the event loop ran a timer",
                              registry=r)
        self.reloads = Counter("vpnd_config_reloads_total", "Configuration reloads by result",
                               ["result"], registry=r)
        self.probe_loss = Gauge("vpnd_probe_loss_ratio",
                                "Share of the last probes without a reply (sliding window)", lt,
                                registry=r)
        # SA counters come from list-sas; charon restarts them with every new CHILD SA, which
        # rate() treats as a counter reset (torilabs' strongswan_sa_* exporters do the same)
        self.sa_bytes = Gauge("vpnd_sa_bytes", "Bytes through the tunnel's CHILD SA",
                              lt + ["direction"], registry=r)
        self.sa_packets = Gauge("vpnd_sa_packets", "Packets through the tunnel's CHILD SA",
                                lt + ["direction"], registry=r)
        self.ike_since = Gauge("vpnd_ike_sa_established_timestamp_seconds",
                               "When the tunnel's IKE SA was established (0: not established)", lt,
                               registry=r)
        self.child_since = Gauge("vpnd_child_sa_established_timestamp_seconds",
                                 "When the tunnel's CHILD SA was installed (0: not installed)", lt,
                                 registry=r)
        self.bgp_up = Gauge("vpnd_bgp_session_up", "1 while the tunnel's BGP session is Established",
                            lt, registry=r)
        self.bgp_pfx_rcvd = Gauge("vpnd_bgp_prefixes_received", "Prefixes received on the session",
                                  lt, registry=r)
        self.bgp_pfx_sent = Gauge("vpnd_bgp_prefixes_sent", "Prefixes sent on the session", lt,
                                  registry=r)
        self.bgp_neighbor_enabled = Gauge("vpnd_bgp_neighbor_enabled",
                                          "0 while vpnd holds the tunnel's neighbor shut", lt,
                                          registry=r)
        self.bfd_up = Gauge("vpnd_bfd_up", "1 while the tunnel's BFD peer is up", lt, registry=r)
        self.tunnel_mtu = Gauge("vpnd_tunnel_mtu_bytes", "The tunnel interface's MTU", lt, registry=r)
        self.path_mtu = Gauge("vpnd_tunnel_path_mtu_bytes",
                              "Largest IPv4 packet the last DF probe search got through the tunnel",
                              lt, registry=r)
        self.mss_clamp = Gauge("vpnd_tunnel_mss_clamp_bytes",
                               "The TCP MSS vpnd clamps SYNs through the tunnel to", lt, registry=r)
        self.frr_errors = Counter("vpnd_frr_command_errors_total",
                                  "vtysh commands FRR rejected or that timed out", registry=r)
        self.xfrm_tmpl_mismatch = Gauge("vpnd_xfrm_in_tmpl_mismatch",
                                        "XfrmInTmplMismatch from /proc/net/xfrm_stat (policy mode)",
                                        registry=r)
        # the cloud's own view ([connection.cloud_api]); series only once the cloud was asked
        self.cloud_tunnel_established = Gauge(
            "vpnd_cloud_tunnel_established",
            "1 while the cloud says the tunnel's phase 2 is established (ipsec_sa_established)",
            lt, registry=r)
        self.cloud_health_check_ok = Gauge(
            "vpnd_cloud_health_check_ok", "1 while the cloud's own health check succeeds",
            ["connection"], registry=r)
        self.cloud_mismatches = Gauge(
            "vpnd_cloud_mismatches", "Settings where the cloud and vpnd differ",
            ["connection"], registry=r)
        self.cloud_last_success = Gauge(
            "vpnd_cloud_last_success_timestamp_seconds",
            "When the cloud's API last answered", ["connection"], registry=r)

    def declare(self, config: Config, only: set[TunnelKey] | None = None) -> None:
        """Create every tunnel's series up front, so a never-negotiated tunnel still reads 0.
        `only`: just these tunnels (added by a reload; the others keep their values)."""
        if only is not None:
            for c in config.connections:
                if any(TunnelKey(c.name, t.name) in only for t in c.tunnels):
                    self.route_repairs.labels(c.name)
        for c in config.connections:
            for t in c.tunnels:
                if only is not None and TunnelKey(c.name, t.name) not in only:
                    continue
                labels = (c.name, t.name)
                self.set_state(c.name, t.name, "down")
                self.tunnel_active.labels(*labels).set(0)
                self.probes_sent.labels(*labels)
                self.probes_lost.labels(*labels)
                self.probe_loss.labels(*labels).set(0)
                for direction in ("in", "out"):
                    self.sa_bytes.labels(*labels, direction).set(0)
                    self.sa_packets.labels(*labels, direction).set(0)
                self.ike_since.labels(*labels).set(0)
                self.child_since.labels(*labels).set(0)
                if c.has_bgp:
                    self.bgp_up.labels(*labels).set(0)
                    self.bgp_pfx_rcvd.labels(*labels).set(0)
                    self.bgp_pfx_sent.labels(*labels).set(0)
                    self.bgp_neighbor_enabled.labels(*labels).set(1)
                    self.bfd_up.labels(*labels).set(0)
            if only is None:
                self.route_repairs.labels(c.name)
        self._declare_counters(config)
        if only is None:
            for result in ("success", "failure"):
                self.reloads.labels(result)
            self.reload_success.set(1)
            self.reload_time.set(time.time())     # the start-up load counts (as Prometheus' own)

    def _declare_counters(self, config: Config) -> None:
        """Every labelled counter series that can be known from the config, at 0: a series
        born at its first increment reads increase() = 0 on a real Prometheus (absent, then
        1), so "a failover happened" alerts would never fire. Idempotent (creating a series
        never resets it), so every load and reload calls it for all connections."""
        for c in config.connections:
            names = [t.name for t in c.tunnels]
            for t in names:
                self.route_repairs.labels(c.name)
                # any state may follow any other (a charon snapshot is the truth)
                for old in TUNNEL_STATES:
                    for new in TUNNEL_STATES:
                        if old != new:
                            self.transitions.labels(c.name, t, old, new)
            for old in names:
                for new in names:
                    if old != new:
                        for reason in failover_reasons_for(c):
                            self.failovers.labels(c.name, old, new, reason)

    def _per_tunnel(self) -> list:
        return [m for m in vars(self).values()
                if hasattr(m, "_labelnames") and "tunnel" in m._labelnames]

    def forget(self, connection: str, tunnel: str, *, connection_gone: bool = False) -> None:
        """A tunnel removed by a reload: its series go (a removed tunnel is not a down one)."""
        for m in self._per_tunnel():
            _remove_matching(m, {"connection": connection, "tunnel": tunnel})
        _remove_matching(self.failovers, {"connection": connection, "from": tunnel})
        _remove_matching(self.failovers, {"connection": connection, "to": tunnel})
        if connection_gone:
            _remove_matching(self.route_repairs, {"connection": connection})
            _remove_matching(self.failovers, {"connection": connection})

    def reload_result(self, ok: bool, now: float | None = None) -> None:
        self.reloads.labels("success" if ok else "failure").inc()
        self.reload_success.set(1 if ok else 0)
        if ok:
            self.reload_time.set(time.time() if now is None else now)

    def sa_stats(self, stats: Mapping[TunnelKey, object]) -> None:
        """From the charon adapter's periodic `list-sas` (vpnd.charon.adapter.SaStats per tunnel)."""
        for key, st in stats.items():
            labels = (key.connection, key.tunnel)
            self.sa_bytes.labels(*labels, "in").set(st.bytes_in)
            self.sa_bytes.labels(*labels, "out").set(st.bytes_out)
            self.sa_packets.labels(*labels, "in").set(st.packets_in)
            self.sa_packets.labels(*labels, "out").set(st.packets_out)
            self.ike_since.labels(*labels).set(st.ike_established)
            self.child_since.labels(*labels).set(st.child_installed)

    def set_state(self, connection: str, tunnel: str, state: str) -> None:
        for s in TUNNEL_STATES:
            self.tunnel_state.labels(connection, tunnel, s).set(1 if s == state else 0)
        self.tunnel_up.labels(connection, tunnel).set(1 if state == "established" else 0)

    def set_active(self, connection: str, tunnels: tuple[str, ...], active: str | None) -> None:
        for t in tunnels:
            self.tunnel_active.labels(connection, t).set(1 if t == active else 0)

    def probe(self, connection: str, tunnel: str, ok: bool, rtt: float | None,
              loss_ratio: float | None = None) -> None:
        self.probes_sent.labels(connection, tunnel).inc()
        if ok and rtt is not None:
            self.probe_rtt.labels(connection, tunnel).observe(rtt)
        elif not ok:
            self.probes_lost.labels(connection, tunnel).inc()
        if loss_ratio is not None:
            self.probe_loss.labels(connection, tunnel).set(loss_ratio)

    def cloud_view(self, connection: str, view: dict, now: float | None = None) -> None:
        """The cloud's answer (vpnd.cloud.view); a failed call leaves the last values."""
        if view.get("error"):
            return
        for tunnel, t in (view.get("tunnels") or {}).items():
            self.cloud_tunnel_established.labels(connection, tunnel).set(
                1 if t.get("status") == "ipsec_sa_established" else 0)
        hc = view.get("health_check")
        if hc and hc.get("enabled"):
            self.cloud_health_check_ok.labels(connection).set(1 if hc.get("status") == "success" else 0)
        self.cloud_mismatches.labels(connection).set(len(view.get("mismatches") or ()))
        self.cloud_last_success.labels(connection).set(time.time() if now is None else now)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def failover(self, connection: str, old: str, new: str, reason: str) -> None:
        self.failovers.labels(connection, old, new, failover_reason(reason)).inc()

    async def start_server(self, listen: str, **limits: float) -> "MetricsServer":
        """Serve /metrics on host:port (the daemon's `metrics_listen`, not ""), in the event
        loop (vpnd.metrics_server); raises OSError when it cannot bind."""
        from vpnd.metrics_server import MetricsServer

        host, _, port = listen.rpartition(":")
        server = MetricsServer(self.render, **limits)
        await server.start(host.strip("[]") or "127.0.0.1", int(port))
        return server


def _remove_matching(metric, labels: dict[str, str]) -> None:
    """prometheus-client >= 0.22 has remove_by_labels; older ones only remove exact sets."""
    if hasattr(metric, "remove_by_labels"):
        metric.remove_by_labels(labels)
        return
    names = metric._labelnames
    for values in list(metric._metrics):
        if all(values[names.index(k)] == v for k, v in labels.items()):
            metric.remove(*values)

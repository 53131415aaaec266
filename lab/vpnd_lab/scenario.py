"""A dual-tunnel scenario on the lab: vpnd's TOML, the cloud side configured from it, overlays.

The cloud side is loaded from the SAME vpnd TOML through vpnd_lab.cloud (the mirror image of
what vpnd configures, as the operator's console sheet describes it), so a lab run proves both
ends agree.

Backends:
- `libipsec` (host kernels without ESP/XFRM interfaces): charon's userspace ESP; each tunnel's
  CHILD SA carries only a /32 endpoint pair and a VXLAN link per tunnel (vxlan1/vxlan2, inner
  169.254.x.x/30) runs over it, so kernel routes with metrics choose the tunnel. vpnd uses the
  VXLAN links as `interface_kind = "existing"`.
- `libipsec` with `routing = "policy"` (the vendor's single-egress "protected data flows"):
  no VXLAN, no vpnd routes; both tunnels' CHILD SAs carry LAN <-> VPC, plus each tunnel's
  own endpoint /32 pair as its probe path (the only traffic that can cross the standby);
  charon's libipsec routes everything into its TUN and picks the CHILD SA (docs/policy-mode.md).
- `native` (kernel ESP and XFRM interfaces): vpnd creates ipsec0/ipsec1 (if_id 42/43) in cgw;
  the lab creates the cloud's own XFRM interfaces (if_id 52/53); TS 0.0.0.0/0 as in the vendor's strongSwan guide.
- `native` with `routing = "policy"` (kernel XFRM, the real gateway's policy mode): in cgw no
  XFRM interface and no route from charon; both tunnels' CHILD SAs carry LAN <-> VPC (plus
  each tunnel's endpoint /32 pair as its probe path) and the kernel policy charon installs
  for the shared selector picks the SA. cgw only routes the VPC towards the cloud so packets
  reach the policy lookup. The cloud stays route-based (XFRM interfaces, if_id 52/53, its
  two CHILD SAs do not share policies), so it can send on either tunnel at will.

The cloud returns traffic on the tunnel its latest packet arrived on (every packet from a
tunnel re-marks its conntrack entry; the mark picks a per-tunnel table): vpnd probes each
tunnel separately, and when vpnd moves a flow the cloud's answers follow it. That is the
`per-flow` cloud model; `cloud_model = "vendor"` (lab/vpnd_lab/cloud_model.py) turns it into the
vendor's cloud, which sends on the tunnel of its own choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vpnd.config.load import load_file
from vpnd.config.model import Config
from vpnd_lab import daemons
from vpnd_lab.topology import Lab, LabError, sh

CLOUD_IF_IDS = (52, 53)


@dataclass(frozen=True)
class Options:
    backend: str = "libipsec"          # libipsec | native
    routing: str = "route"             # route | policy
    interval: float = 0.1              # probe interval (s)
    timeout: float | None = None       # probe timeout (s); None: the interval
    retries: int = 3
    preempt_delay: float = 3.0
    dpd_delay: int = 10
    cloud_psk: tuple[str, str] | None = None     # a different cloud PSK: phase 1 must fail
    cloud_esp: str | None = None                  # a different cloud ESP cipher: phase 2 must fail
    both_down: str = "keep"                       # failover.both_down: keep | withdraw
    park_dead_tunnel: bool = True                 # failover.park_dead_tunnel
    hold_down: float = 1.0
    frr_by_vpnd: bool = False          # bgp: leave cgw's FRR empty, vpnd configures it
    bgp_timers: tuple[int, int] = (1, 3)          # keepalive, hold
    bfd_ms: int | None = None          # bgp: BFD on both sides with this tx/rx interval (x3)
    standby: str = "prepend"           # bgp: prepend | ecmp
    switch_route: bool = True          # False: probes only report (bgp: BGP timers/BFD decide)
    # The simulated cloud (lab/vpnd_lab/cloud_model.py): "per-flow" answers on the tunnel a flow
    # arrived on; "vendor" sends on the tunnel of its own choice (health check, DPD, BGP).
    probe_peer: bool = False           # bgp: each tunnel probes the cloud's BGP address over itself
    cloud_model: str = "per-flow"
    cloud_check: tuple[float, int] | None = None  # vendor: its health check (interval s, retries); None: off
    cloud_check_source: str | None = None         # default: the cloud's VPC address
    cloud_check_destination: str | None = None    # default: cgw's LAN address
    cloud_switch_route: bool = True
    cloud_dpd_delay: int | None = None            # default: dpd_delay
    cloud_dpd_timeout: float | None = None        # default: 30 s (vendor), the lab's ~3 s (per-flow)
    # vpnd's config declares the cloud's check as [connection.cloud_health_check] (route mode, a
    # cloud_check set): vpnd adds the /32 for its source and answers it by the arrival tunnel
    declare_cloud_check: bool = False


def emulated() -> bool:
    """Inside the vm backend's guest everything runs under software emulation (TCG): RTTs of
    a few hundred ms are normal there, so probes get room and waits get longer."""
    import os
    return os.environ.get("VPND_LAB_EMULATED") == "1"


def default_options(backend: str, routing: str) -> Options:
    if emulated():
        return Options(backend=backend, routing=routing, interval=0.25, timeout=1.0)
    return Options(backend=backend, routing=routing)


def tunnel_ifname(backend: str, i: int) -> str:
    return f"vxlan{i + 1}" if backend == "libipsec" else f"ipsec{i}"


def write_config(lab: Lab, opts: Options) -> Path:
    p = lab.plan
    psk = []
    for i in range(2):
        f = lab.dir / f"tunnel{i + 1}.psk"
        f.write_text(f"lab-secret-{lab.prefix}-tunnel{i + 1}-Xq7\n")
        f.chmod(0o600)
        psk.append(f)
    tunnels = []
    for i in range(2):
        ours, theirs = p.endpoints[i]
        t = [
            "[[connection.tunnel]]",
            f'name = "tunnel{i + 1}"',
            f'local_address = "{p.cgw_wan}"',
            f'remote_address = "{p.cloud_wan[i]}"',
            f'psk_file = "{psk[i]}"',
            f'interface = "{tunnel_ifname(opts.backend, i)}"',
            f"if_id = {42 + i}",
        ]
        if opts.routing == "policy":
            t = t[:5] + [f'local_ts = ["{p.lan_net}", "{ours}/32"]',
                         f'remote_ts = ["{p.vpc_net}", "{theirs}/32"]',
                         f'probe_source = "{ours}"', f'probe_destination = "{theirs}"']
        elif opts.backend == "libipsec":
            t += ['interface_kind = "existing"', f'local_ts = ["{ours}/32"]', f'remote_ts = ["{theirs}/32"]']
        else:
            t += ['underlay = "wan0"']
        if opts.routing == "bgp":
            inner_ours, inner_theirs = p.inner[i]
            net = inner_ours.rsplit(".", 1)[0] + ".0/30"
            if opts.probe_peer:     # replies from the cloud's own tunnel address: its own tunnel
                t += [f'probe_source = "{inner_ours}"', f'probe_destination = "{inner_theirs}"']
            t += ["[connection.tunnel.bgp]", f'tunnel_cidr = "{net}"', f'local_ip = "{inner_ours}"',
                  f'peer_ip = "{inner_theirs}"']
        tunnels.append("\n".join(t))
    frr_line = f'frr_vty_socket = "{lab.dir / "frr-cgw"}"\n' if opts.routing == "bgp" else ""
    text = f"""# written by `vpnd lab` for lab {lab.prefix} ({opts.backend} backend)
[daemon]
log_format = "json"
metrics_listen = "127.0.0.1:9456"
control_socket = "{lab.dir}/control.sock"
vici_socket = "{daemons.vici_path(lab, 'cgw')}"
{frr_line}
[[connection]]
name = "vpc1"
routing = "{opts.routing}"
local_networks = ["{p.lan_net}"]
remote_networks = ["{p.vpc_net}"]
dpd_delay = {opts.dpd_delay}

[connection.health_check]
destination = "{p.vpc_host}"
source = "{p.cgw_lan}"
interval = {opts.interval}
retries = {opts.retries}{"" if opts.timeout is None else chr(10) + "timeout = " + str(opts.timeout)}
{"" if opts.switch_route else "switch_route = false" + chr(10)}
{_cloud_check_section(p, opts)}[connection.failover]
preempt_delay = {opts.preempt_delay}
hold_down = {opts.hold_down}
both_down = "{opts.both_down}"
park_dead_tunnel = {"true" if opts.park_dead_tunnel else "false"}
""" + (f"""
[connection.bgp]
local_asn = 65530
peer_asn = 45104
keepalive = {opts.bgp_timers[0]}
hold = {opts.bgp_timers[1]}
standby = "{opts.standby}"
""" + ("" if opts.bfd_ms is None else f"""
[connection.bgp.bfd]
enabled = true
receive_interval_ms = {opts.bfd_ms}
transmit_interval_ms = {opts.bfd_ms}
""") if opts.routing == "bgp" else "") + "\n" + "\n\n".join(tunnels) + "\n"
    path = lab.dir / "vpnd.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def _cloud_check_section(p, opts: Options) -> str:
    """The cloud's health check as entered in its console, when the run declares it to vpnd."""
    if not (opts.declare_cloud_check and opts.cloud_check is not None and opts.routing == "route"):
        return ""
    interval, retries = opts.cloud_check
    return (f"[connection.cloud_health_check]\n"
            f'source_ip = "{opts.cloud_check_source or p.cloud_vpc}"\n'
            f'destination_ip = "{opts.cloud_check_destination or p.cgw_lan}"\n'
            f"interval = {max(1, round(interval))}\nretries = {retries}\n"
            f"switch_route = {'true' if opts.cloud_switch_route else 'false'}\n\n")


def build_overlay(lab: Lab, config: Config, opts: Options) -> None:
    """Per backend: what carries each tunnel's traffic, on both sides."""
    p = lab.plan
    if opts.routing == "policy":
        for i in range(2):      # each tunnel's probe path; TS addresses must exist (measured on this project's machines)
            ours, theirs = p.endpoints[i]
            lab.ip("cgw", "addr", "add", f"{ours}/32", "dev", "lo")
            lab.ip("cloud", "addr", "add", f"{theirs}/32", "dev", "lo")
        if opts.backend == "libipsec":
            nft(lab, "cloud", _cloud_table(""))
            return
        _policy_native(lab)
        return
    if opts.backend == "libipsec":
        for i in range(2):
            ours, theirs = p.endpoints[i]
            inner_ours, inner_theirs = p.inner[i]
            lab.ip("cgw", "addr", "add", f"{ours}/32", "dev", "lo")
            lab.ip("cloud", "addr", "add", f"{theirs}/32", "dev", "lo")
            for role, local, remote, addr in (("cgw", ours, theirs, inner_ours),
                                              ("cloud", theirs, ours, inner_theirs)):
                dev = f"vxlan{i + 1}"
                lab.ip(role, "link", "add", dev, "type", "vxlan", "id", str(101 + i), "local", local,
                       "remote", remote, "dstport", "4789")
                lab.ip(role, "link", "set", dev, "mtu", "1300", "up")
                lab.ip(role, "addr", "add", f"{addr}/30", "dev", dev)
            # vpnd's routes are device routes (as on XFRM interfaces): the cloud answers ARP.
            lab.sysctl("cloud", f"net.ipv4.conf.vxlan{i + 1}.proxy_arp", "1")
            # Linux delays proxy ARP answers by up to 0.8 s by default; the cloud doesn't.
            lab.sysctl("cloud", f"net.ipv4.neigh.vxlan{i + 1}.proxy_delay", "0")
            # XFRM interfaces need no ARP; the VXLAN stand-ins do, and an ARP request sent
            # before the SA existed would be retried only after 1 s.
            lab.sysctl("cgw", f"net.ipv4.neigh.vxlan{i + 1}.retrans_time_ms", "100")
    else:
        for i in range(2):
            dev = f"cloud{i}"
            lab.ip("cloud", "link", "add", dev, "type", "xfrm", "dev", "wan0", "if_id", str(CLOUD_IF_IDS[i]))
            lab.ip("cloud", "link", "set", dev, "up")
            if opts.routing == "bgp":     # the cloud's BGP peer address (vpnd puts ours on ipsecN)
                lab.ip("cloud", "addr", "add", f"{p.inner[i][1]}/30", "dev", dev)
    # The cloud's routes back to the LAN: per-tunnel tables for symmetric return, and metric
    # routes for flows the VPC starts.
    for i in range(2):
        dev = tunnel_ifname(opts.backend, i) if opts.backend == "libipsec" else f"cloud{i}"
        via = ["via", p.inner[i][0]] if opts.backend == "libipsec" else []
        lab.ip("cloud", "route", "add", p.lan_net, *via, "dev", dev, "metric", str(100 + i))
        lab.ip("cloud", "route", "add", p.lan_net, *via, "dev", dev, "table", str(101 + i))
        lab.ip("cloud", "rule", "add", "fwmark", str(i + 1), "table", str(101 + i), "priority", str(100 + i))
    rules = "\n".join(
        f'  iifname "{tunnel_ifname(opts.backend, i) if opts.backend == "libipsec" else f"cloud{i}"}" ct mark set {i + 1}'
        for i in range(2))
    nft(lab, "cloud", _cloud_table(rules))


def _policy_native(lab: Lab) -> None:
    """Policy mode on kernel XFRM. cgw, where vpnd runs: no XFRM interfaces, no routes from
    charon; the kernel's policies (one per selector, shared by both CHILD SAs) pick the SA.
    A packet is only offered to the outbound policies once a route exists, so cgw routes the
    VPC and the cloud's probe endpoints towards the "internet" (which address does not
    matter: the policy's template sets the tunnel).
    The cloud: route-based, with its own XFRM interfaces cloud0/cloud1 (if_id 52/53: its
    two CHILD SAs get separate policies) and answers on the tunnel a flow's latest packet
    arrived on (conntrack mark -> per-tunnel table), like the native route backend. The
    `steer` chain (faults.cloud_sends_on) overrides that: the cloud moving traffic itself."""
    p = lab.plan
    lab.ip("cgw", "route", "add", p.vpc_net, "via", p.cloud_wan[0], "dev", "wan0")
    for i in range(2):
        lab.ip("cgw", "route", "add", f"{p.endpoints[i][1]}/32", "via", p.cloud_wan[i], "dev", "wan0")
        dev = f"cloud{i}"
        lab.ip("cloud", "link", "add", dev, "type", "xfrm", "dev", "wan0", "if_id", str(CLOUD_IF_IDS[i]))
        lab.ip("cloud", "link", "set", dev, "up")
        lab.ip("cloud", "route", "add", f"{p.endpoints[i][0]}/32", "dev", dev)
        lab.ip("cloud", "route", "add", p.lan_net, "dev", dev, "metric", str(100 + i))
        lab.ip("cloud", "route", "add", p.lan_net, "dev", dev, "table", str(101 + i))
        lab.ip("cloud", "rule", "add", "fwmark", str(i + 1), "table", str(101 + i), "priority", str(100 + i))
    rules = "\n".join(f'  iifname "cloud{i}" ct mark set {i + 1}' for i in range(2))
    nft(lab, "cloud", _cloud_table(rules))


def _cloud_table(rules: str) -> str:
    """The cloud's nft table: conntrack marks for symmetric return (route modes), the empty
    `steer` chain (faults.cloud_sends_on) and the empty `blackhole` chain that
    faults.blackhole fills."""
    return f"""table ip vpndlab {{
 chain pre {{
  type filter hook prerouting priority mangle; policy accept;
{rules}
  meta mark set ct mark
  jump steer
 }}
 chain steer {{
 }}
 chain blackhole {{
 }}
 chain input {{
  type filter hook input priority filter; policy accept;
  jump blackhole
 }}
 chain output {{
  type filter hook output priority filter; policy accept;
  jump blackhole
 }}
 chain forward {{
  type filter hook forward priority filter; policy accept;
  jump blackhole
 }}
}}
"""


def load_cloud(lab: Lab, config: Config, opts: Options) -> None:
    """The cloud side from the same TOML: the mirror of ours (vpnd_lab.cloud), loaded with swanctl."""
    from dataclasses import replace

    from vpnd_lab import cloud

    conn = config.connections[0]
    if opts.cloud_dpd_delay is not None:
        conn = replace(conn, dpd_delay=opts.cloud_dpd_delay)
    if opts.cloud_psk or opts.cloud_esp:
        from vpnd.config.model import Secret
        tunnels = tuple(replace(t, psk=Secret(opts.cloud_psk[i])) if opts.cloud_psk else t
                        for i, t in enumerate(conn.tunnels))
        ipsec = replace(conn.ipsec, encryption=opts.cloud_esp) if opts.cloud_esp else conn.ipsec
        conn = replace(conn, tunnels=tunnels, ipsec=ipsec)
    if_ids = None if opts.backend == "libipsec" else {t.name: CLOUD_IF_IDS[i] for i, t in enumerate(conn.tunnels)}
    text = cloud.peer_swanctl_text(conn, if_ids=if_ids, show_secrets=True)
    path = lab.dir / "cloud-swanctl.conf"
    path.write_text(text)
    path.chmod(0o600)
    r = sh("swanctl", "--load-all", "--noprompt", "--file", str(path), "--uri",
           f"unix://{daemons.vici_path(lab, 'cloud')}", check=False)
    if r.returncode != 0:
        raise LabError(f"the cloud side refused its configuration: {r.stdout}{r.stderr}")


def change_cloud_psk(lab: Lab, config: Config, keys: dict[str, str]) -> None:
    """What the operator does on the cloud's console ("modify the pre-shared key"): the cloud
    side's key of each named tunnel (tunnel name -> new key) replaced. Only secrets are
    loaded (`swanctl --load-creds`); the cloud's SAs stay up, as on the real console, until
    the customer gateway re-authenticates."""
    from dataclasses import replace

    from vpnd.config.model import Secret
    from vpnd_lab import cloud

    conn = config.connections[0]
    conn = replace(conn, tunnels=tuple(replace(t, psk=Secret(keys[t.name])) if t.name in keys else t
                                       for t in conn.tunnels))
    path = lab.dir / "cloud-creds.conf"
    path.write_text(cloud.conf_text({}, cloud.peer_vici_secrets(conn), True))
    path.chmod(0o600)
    r = sh("swanctl", "--load-creds", "--noprompt", "--file", str(path), "--uri",
           f"unix://{daemons.vici_path(lab, 'cloud')}", check=False)
    if r.returncode != 0:
        raise LabError(f"the cloud side refused its new key: {r.stdout}{r.stderr}")


def nft(lab: Lab, role: str, ruleset: str) -> None:
    path = lab.dir / f"nft-{role}.conf"
    path.write_text(ruleset)
    lab.exec(role, "nft", "-f", str(path))


def up(lab: Lab, opts: Options) -> Config:
    """Namespaces, charons, overlays and the cloud side (FRR too in bgp routing); vpnd itself
    is started separately."""
    from vpnd_lab import cloud_model

    if opts.cloud_model not in cloud_model.MODELS:
        raise LabError(f"cloud_model = {opts.cloud_model!r}: must be one of {', '.join(cloud_model.MODELS)}")
    if opts.cloud_model == "vendor" and opts.routing == "policy" and opts.backend == "libipsec":
        raise LabError("cloud_model = \"vendor\" needs a route-based cloud; in the libipsec policy "
                       "lab charon's newest CHILD SA carries (use the per-flow model or the native backend)")
    lab.build()
    path = write_config(lab, opts)
    config = load_file(path)
    daemons.start_charon(lab, "cgw", libipsec=opts.backend == "libipsec")
    daemons.start_charon(lab, "cloud", libipsec=opts.backend == "libipsec",
                         retransmit=cloud_retransmit(opts))
    build_overlay(lab, config, opts)
    load_cloud(lab, config, opts)
    if opts.routing == "bgp":
        start_bgp(lab, config, cgw=not opts.frr_by_vpnd)
    cloud_model.setup(lab, cloud_settings(lab, config, opts))
    return config


def cloud_dpd_timeout(opts: Options) -> float | None:
    """The cloud's DPD timeout in s (None: the lab's fast retransmits, about 3 s)."""
    if opts.cloud_dpd_timeout is not None:
        return opts.cloud_dpd_timeout
    from vpnd_lab import cloud_model
    return cloud_model.VENDOR_DPD_TIMEOUT if opts.cloud_model == "vendor" else None


def cloud_retransmit(opts: Options) -> tuple[float, int] | None:
    """charon gives a DPD exchange up after about timeout x (tries + 1) with base 1: two
    retransmits of a third of the DPD timeout each."""
    t = cloud_dpd_timeout(opts)
    return None if t is None else (round(t / 3, 3), 2)


def cloud_settings(lab: Lab, config: Config, opts: Options):
    """What the vendor-model controller needs, from the plan, the TOML and the options."""
    from vpnd_lab import cloud_model
    from vpnd_lab.cloud import peer_conn_name

    p = lab.plan
    conn = config.connections[0]
    native = opts.backend != "libipsec"
    check = None
    if opts.cloud_check is not None and opts.routing != "bgp":
        check = cloud_model.CloudCheck(
            source=opts.cloud_check_source or p.cloud_vpc,
            destination=opts.cloud_check_destination or p.cgw_lan,
            interval=float(opts.cloud_check[0]), retries=int(opts.cloud_check[1]),
            switch_route=opts.cloud_switch_route)
    return cloud_model.Settings(
        model=opts.cloud_model, routing=opts.routing, lan_net=p.lan_net,
        devices=tuple(f"cloud{i}" if native else f"vxlan{i + 1}" for i in range(2)),
        vias=tuple(None if native else p.inner[i][0] for i in range(2)),
        conns=tuple(peer_conn_name(conn.name, t.name) for t in conn.tunnels),
        vici=str(daemons.vici_path(lab, "cloud")), check=check)


def start_bgp(lab: Lab, config: Config, *, cgw: bool = True) -> None:
    """FRR in both gateways: the cloud from `peer_frr` of the same TOML. Our side gets
    `vpnd render frr` applied with vtysh when cgw=True; otherwise it starts empty and vpnd
    configures it (BGP mode)."""
    from vpnd_lab import frr
    from vpnd.render import frr as render_frr
    from vpnd_lab import cloud

    if not frr.available():
        raise LabError("FRR is not installed (scripts/bootstrap installs it)")
    for role in ("cgw", "cloud"):
        frr.start(lab, role)
    frr.apply(lab, "cloud", cloud.peer_frr(config.connections[0]).text())
    if cgw:
        frr.apply(lab, "cgw", render_frr.frr_config(config).text())

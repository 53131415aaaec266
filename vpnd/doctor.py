"""`vpnd doctor`: the vendor's troubleshooting list, run live on this machine.

Each check reads the real system (sysctls, the kernel's XFRM support, charon over VICI, the
nftables ruleset, the routing table, FRR's vtysh) and answers PASS, WARN, FAIL or SKIP with
a one-line fix, so the 3 a.m. operator gets the vendor documents' FAQ ("tunnel established but traffic
does not flow": ip_forward, firewall, routes) answered for this box instead of read. Run it
in another network namespace with `ip netns exec NS vpnd doctor`. Exit 1 when anything FAILs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

from vpnd.config.model import Config, ConfigError
from vpnd.kernel.sysctl import sysctl, strict_rp_filter

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
MIN_STRONGSWAN = (5, 8, 0)          # the vendor's strongSwan guide: XFRM interfaces need strongSwan 5.8.0 or later
IKE_PORTS = (500, 4500)
CHARON_PATHS = ("/usr/lib/ipsec/charon", "/usr/libexec/ipsec/charon",
                "/usr/libexec/strongswan/charon")


@dataclass(frozen=True)
class Result:
    check: str
    status: str
    detail: str
    fix: str = ""


def run(*args: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


# --- checks that need no configuration ---------------------------------------------------

def check_ip_forward() -> Result:
    value = sysctl("net.ipv4.ip_forward")
    if value == 1:
        return Result("ip_forward", PASS, "net.ipv4.ip_forward = 1")
    return Result("ip_forward", FAIL,
                  f"net.ipv4.ip_forward = {value}: the gateway does not route between the LAN "
                  "and the tunnels",
                  "echo 'net.ipv4.ip_forward = 1' > /etc/sysctl.d/90-vpnd.conf && sysctl --system")


def check_xfrm_interface(needed: bool) -> Result:
    """Creates and deletes a throwaway XFRM link: the only proof the kernel can do it."""
    name = "xfrm_interface"
    if not needed:
        return Result(name, SKIP, "no connection uses an XFRM interface vpnd creates")
    if not Path("/proc/net/xfrm_stat").exists():
        return Result(name, FAIL, "this kernel has no XFRM (IPsec) support: /proc/net/xfrm_stat "
                      "is missing", "use a kernel built with CONFIG_XFRM and CONFIG_XFRM_INTERFACE")
    if shutil.which("ip") is None:
        return Result(name, WARN, "iproute2 is not installed, cannot test",
                      "apt-get install iproute2")
    link = f"vpnddr{uuid.uuid4().hex[:8]}"
    # older kernels want an underlay device; `lo` always exists
    for extra in ((), ("dev", "lo")):
        r = run("ip", "link", "add", link, "type", "xfrm", *extra, "if_id", "0xfffffff0")
        if r.returncode == 0:
            run("ip", "link", "del", link)
            return Result(name, PASS, "the kernel creates XFRM interfaces (type xfrm, if_id)")
        if "Unknown device type" in r.stderr:
            break
    err = r.stderr.strip()
    if "Operation not permitted" in err:
        return Result(name, WARN, f"cannot test without CAP_NET_ADMIN: {err}", "run vpnd doctor as root")
    if "Unknown device type" not in err:
        return Result(name, WARN, f"creating a test XFRM interface failed: {err}",
                      "check `ip link add x0 type xfrm dev eth0 if_id 1` by hand")
    modules = Path("/lib/modules") / os.uname().release
    hint = ("modprobe xfrm_interface" if any(modules.rglob("xfrm_interface.ko*"))
            else "use a kernel with CONFIG_XFRM_INTERFACE (Debian's stock kernel has it)")
    return Result(name, FAIL, f"this kernel cannot create XFRM interfaces ({err})",
                  f"{hint}; or set routing = \"policy\" / interface_kind = \"existing\"")


def _version_tuple(text: str) -> tuple[int, int, int] | None:
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def vici_version(path: str, timeout: float = 3.0) -> dict[str, str]:
    """charon's `version` answer over VICI; raises OSError when the socket does not answer."""
    import vici

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        answer = vici.Session(sock=sock).version()
    except OSError:
        sock.close()
        raise
    except Exception as exc:            # a protocol error is an unreachable daemon to the user
        sock.close()
        raise OSError(f"VICI protocol error: {exc}") from exc
    sock.close()
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in answer.items()}


def check_vici(path: str) -> tuple[Result, str | None]:
    name = "vici_socket"
    try:
        info = vici_version(path)
    except OSError as exc:
        why = exc.strerror or str(exc)
        return Result(name, FAIL, f"charon's VICI socket {path} does not answer: {why}",
                      "start charon (systemctl start strongswan) with the vici plugin, or set "
                      "daemon.vici_socket to its socket"), None
    return Result(name, PASS, f"{info.get('daemon', 'charon')} {info.get('version', '?')} "
                  f"answers on {path}"), info.get("version")


def check_strongswan_version(from_vici: str | None, policy_only: bool) -> Result:
    name = "strongswan_version"
    text, source = from_vici, "charon over VICI"
    if text is None:
        for binary in CHARON_PATHS:
            if Path(binary).exists():
                try:
                    r = run(binary, "--version", timeout=5)
                except subprocess.TimeoutExpired:
                    continue
                text, source = r.stdout + r.stderr, binary
                break
    version = _version_tuple(text or "")
    if version is None:
        return Result(name, FAIL, "strongSwan's charon is not installed",
                      "apt-get install strongswan-charon strongswan-swanctl libcharon-extra-plugins")
    shown = ".".join(map(str, version))
    if version >= MIN_STRONGSWAN:
        return Result(name, PASS, f"strongSwan {shown} ({source})")
    need = ".".join(map(str, MIN_STRONGSWAN))
    return Result(name, WARN if policy_only else FAIL,
                  f"strongSwan {shown} is older than {need}, which XFRM interfaces (if_id) need",
                  f"upgrade strongSwan to {need} or later")


# --- the firewall: does the ruleset let IKE, NAT-T and ESP in? ---------------------------

@dataclass(frozen=True)
class Packet:
    """What charon receives: IKE (udp/500), NAT-T (udp/4500), ESP (IP protocol 50)."""

    l4proto: str
    dport: int | None = None

    def __str__(self) -> str:
        return f"{self.l4proto}/{self.dport}" if self.dport else self.l4proto


PACKETS = (Packet("udp", 500), Packet("udp", 4500), Packet("esp"))
PROTO_NUMBERS = {"udp": 17, "esp": 50, "tcp": 6, "icmp": 1}
UNKNOWN = object()      # a match this evaluator does not understand


def _value_matches(right: Any, value: Any) -> bool:
    if isinstance(right, dict) and "set" in right:
        return any(_value_matches(r, value) for r in right["set"])
    if isinstance(right, dict) and "range" in right:
        lo, hi = right["range"]
        return isinstance(value, int) and lo <= value <= hi
    if isinstance(right, list):
        return any(_value_matches(r, value) for r in right)
    if isinstance(value, str) and isinstance(right, int):
        return PROTO_NUMBERS.get(value) == right
    return right == value


def _match(expr: dict, pkt: Packet) -> Any:
    """True/False for a match on protocol or destination port, UNKNOWN for anything else
    (addresses, interfaces, conntrack state...)."""
    left, right, op = expr.get("left"), expr.get("right"), expr.get("op", "==")
    if op not in ("==", "!=", "in"):
        return UNKNOWN
    value: Any = UNKNOWN
    if isinstance(left, dict) and "meta" in left and left["meta"].get("key") == "l4proto":
        value = pkt.l4proto
    elif isinstance(left, dict) and "meta" in left and left["meta"].get("key") == "nfproto":
        value = "ipv4"
    elif isinstance(left, dict) and "payload" in left:
        p = left["payload"]
        if p.get("protocol") in ("ip", "ip6") and p.get("field") in ("protocol", "nexthdr"):
            value = pkt.l4proto
        elif p.get("field") == "dport" and p.get("protocol") in ("udp", "tcp", "th"):
            if pkt.dport is None or (p["protocol"] != "th" and p["protocol"] != pkt.l4proto):
                return op == "!="           # an ESP packet has no port; udp dport never matches it
            value = pkt.dport
    if value is UNKNOWN:
        return UNKNOWN
    hit = _value_matches(right, value)
    return not hit if op == "!=" else hit


def _verdict(rule_exprs: list[dict]) -> tuple[str | None, str | None]:
    for e in rule_exprs:
        for v in ("accept", "drop", "reject", "return"):
            if v in e:
                return v, None
        for v in ("jump", "goto"):
            if v in e:
                return v, e[v]["target"]
    return None, None


def evaluate_chain(ruleset: dict, family: str, table: str, chain: str, pkt: Packet,
                   depth: int = 0) -> tuple[str | None, bool]:
    """(accept/drop/None for "fell through", whether a rule was skipped as not understood)."""
    uncertain = False
    if depth > 16:
        return None, True
    for rule in ruleset["rules"].get((family, table, chain), []):
        matched = True
        for e in rule:
            if "match" in e:
                m = _match(e["match"], pkt)
                if m is UNKNOWN:
                    matched, uncertain = False, True
                    break
                if not m:
                    matched = False
                    break
        if not matched:
            continue
        verdict, target = _verdict(rule)
        if verdict in ("accept",):
            return "accept", uncertain
        if verdict in ("drop", "reject"):
            return "drop", uncertain
        if verdict == "return":
            return None, uncertain
        if verdict in ("jump", "goto"):
            v, u = evaluate_chain(ruleset, family, table, target, pkt, depth + 1)
            uncertain |= u
            if v is not None or verdict == "goto":
                return v, uncertain
    return None, uncertain


def parse_ruleset(nft_json: str) -> dict:
    data = json.loads(nft_json)
    chains, rules = [], {}
    for item in data.get("nftables", []):
        if "chain" in item:
            chains.append(item["chain"])
        elif "rule" in item:
            r = item["rule"]
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r.get("expr", []))
    return {"chains": chains, "rules": rules}


def firewall_verdicts(ruleset: dict) -> dict[Packet, tuple[str, str, bool]]:
    """Per packet: (accept/drop, the chain that decided, uncertain). Every input base chain
    must let a packet through (a drop in any of them drops it)."""
    out: dict[Packet, tuple[str, str, bool]] = {}
    bases = [c for c in ruleset["chains"] if c.get("hook") == "input"
             and c.get("family") in ("ip", "inet") and c.get("type", "filter") == "filter"]
    bases.sort(key=lambda c: c.get("prio", 0))
    for pkt in PACKETS:
        result = ("accept", "no input chain", False)
        for c in bases:
            v, uncertain = evaluate_chain(ruleset, c["family"], c["table"], c["name"], pkt)
            where = f"{c['family']} {c['table']} {c['name']}"
            if v is None:
                v, where = c.get("policy", "accept"), where + " (policy)"
            if v == "drop":
                result = ("drop", where, uncertain)
                break
            result = ("accept", where, uncertain or result[2])
        out[pkt] = result
    return out


def check_firewall() -> Result:
    name = "firewall"
    if shutil.which("nft") is None:
        return Result(name, SKIP, "nft is not installed; check iptables -L INPUT -n by hand",
                      "iptables -I INPUT -p udp -m multiport --dports 500,4500 -j ACCEPT; "
                      "iptables -I INPUT -p esp -j ACCEPT")
    r = run("nft", "-j", "list", "ruleset")
    if r.returncode != 0:
        return Result(name, WARN, f"cannot read the nftables ruleset: {r.stderr.strip()}",
                      "run vpnd doctor as root")
    verdicts = firewall_verdicts(parse_ruleset(r.stdout))
    blocked = [f"{p} (by {w})" for p, (v, w, _) in verdicts.items() if v == "drop"]
    uncertain = any(u for _, _, u in verdicts.values())
    fix = ("nft insert rule <family> <table> <chain> udp dport { 500, 4500 } accept; "
           "nft insert rule <family> <table> <chain> meta l4proto esp accept")
    if blocked:
        surely = not any(u for v, _, u in verdicts.values() if v == "drop")
        return Result(name, FAIL if surely else WARN,
                      ("the input rules drop " if surely else "the input rules may drop ")
                      + ", ".join(blocked)
                      + ("" if surely else " (rules matching addresses, interfaces or state "
                         "were not evaluated)"), fix)
    note = " (rules matching addresses, interfaces or state were not evaluated)" if uncertain else ""
    return Result(name, WARN if uncertain else PASS,
                  "the input rules let UDP 500, UDP 4500 and ESP in" + note,
                  "check the rules that match addresses, interfaces or state: nft list ruleset"
                  if uncertain else "")


# --- checks that read the configuration --------------------------------------------------

def check_config(path: str) -> tuple[Result, Config | None]:
    from vpnd.config.load import load_file_with_warnings

    try:
        config, warnings = load_file_with_warnings(path)
    except ConfigError as exc:
        first = exc.errors[0] if exc.errors else None
        more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
        return Result("config", FAIL, f"{path}: {first}{more}", f"vpnd check -c {path}"), None
    except Exception as exc:        # a bug in vpnd: no traceback, no file contents
        return Result("config", FAIL, f"{path}: internal error while loading "
                      f"({type(exc).__name__})", "please report it"), None
    if warnings:
        return Result("config", WARN, f"{path}: {warnings[0]}" +
                      (f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""),
                      f"vpnd check -c {path}"), config
    from vpnd.config.check import summary
    return Result("config", PASS, f"{path}: {summary(config)}"), config


def _tunnel_interfaces(config: Config) -> list[str]:
    return [t.interface for c in config.connections if c.tunnel_interfaces for t in c.tunnels]


def check_rp_filter(config: Config) -> Result:
    """Strict reverse-path filtering drops replies that arrive on the other tunnel during a
    switch (the effective value: vpnd.kernel.sysctl.rp_filter, the daemon's own check)."""
    name = "rp_filter"
    interfaces = _tunnel_interfaces(config)
    if not interfaces:
        return Result(name, SKIP, "no tunnel interfaces (policy mode)")
    strict = strict_rp_filter(interfaces)
    if strict:
        return Result(name, WARN, f"rp_filter is strict (1) for {', '.join(strict)}: return "
                      "traffic arriving on the other tunnel during a switch is dropped",
                      "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.default.rp_filter=2 "
                      "(loose), and the same for each tunnel interface, persisted in /etc/sysctl.d/")
    return Result(name, PASS, f"rp_filter is loose or off for {', '.join(interfaces)}")


def _local_addresses() -> set[str] | None:
    r = run("ip", "-j", "addr", "show")
    if r.returncode != 0:
        return None
    return {a["local"] for link in json.loads(r.stdout or "[]") for a in link.get("addr_info", [])}


def check_routes(config: Config) -> list[Result]:
    """The cloud's IPsec addresses must be reached over the underlay, never through a tunnel,
    from an address this machine has (charon binds it)."""
    out = []
    local = _local_addresses()
    tunnel_ifs = set(_tunnel_interfaces(config))
    for c in config.connections:
        for t in c.tunnels:
            name = f"route:{c.name}/{t.name}"
            if local is not None and str(t.local_address) not in local:
                out.append(Result(name, FAIL, f"local_address {t.local_address} is not an address "
                                  "of this machine: charon cannot send IKE from it",
                                  f"add {t.local_address} to the uplink interface or fix "
                                  f"connection {c.name} tunnel {t.name} local_address"))
                continue
            r = run("ip", "-j", "route", "get", str(t.remote_address), "from", str(t.local_address))
            if r.returncode != 0:
                out.append(Result(name, FAIL, f"no route to the cloud's IPsec address "
                                  f"{t.remote_address}: {r.stderr.strip()}",
                                  "add a default route (or a route to the cloud's IPsec "
                                  "addresses) via the Internet uplink"))
                continue
            hop = (json.loads(r.stdout) or [{}])[0]
            dev, via = hop.get("dev", "?"), hop.get("gateway")
            if dev in tunnel_ifs:
                out.append(Result(name, FAIL, f"{t.remote_address} is routed into tunnel "
                                  f"interface {dev}: IKE would loop through its own tunnel",
                                  "remove the route that covers the cloud's IPsec address from "
                                  "remote_networks / the BGP-learned routes, or add a /32 via the uplink"))
                continue
            out.append(Result(name, PASS, f"{t.remote_address} via {via or 'direct'} dev {dev}"))
    return out


def check_frr(config: Config) -> Result:
    name = "frr"
    if not any(c.has_bgp for c in config.connections):
        return Result(name, SKIP, "no connection uses routing = \"bgp\"")
    d = config.daemon
    cmd = [d.vtysh_path]
    if d.frr_pathspace:
        cmd += ["-N", d.frr_pathspace]
    if d.frr_vty_socket:
        cmd += ["--vty_socket", d.frr_vty_socket]
    if not Path(d.vtysh_path).exists():
        return Result(name, FAIL, f"{d.vtysh_path} not found", "apt-get install frr, or set daemon.vtysh_path")
    try:
        r = run(*cmd, "-c", "show daemons", timeout=10)
    except subprocess.TimeoutExpired:
        return Result(name, FAIL, "vtysh did not answer within 10 s", "systemctl restart frr")
    if r.returncode != 0:
        return Result(name, FAIL, f"vtysh cannot reach FRR: {(r.stderr or r.stdout).strip()}",
                      "systemctl start frr; vpnd needs membership in group frrvty (see the unit)")
    if "bgpd" not in r.stdout.split():
        return Result(name, FAIL, f"FRR runs without bgpd (daemons: {r.stdout.strip()})",
                      "set bgpd=yes in /etc/frr/daemons and systemctl restart frr")
    return Result(name, PASS, f"vtysh reaches FRR; daemons: {r.stdout.strip()}")


UNIT_GROUP = "frrvty"          # systemd/vpnd.service's SupplementaryGroups=


def bgpd_vty_path(daemon) -> Path:
    """Where vtysh finds bgpd: --vty_socket DIR, else FRR's run dir (per -N pathspace)."""
    if daemon.frr_vty_socket:
        return Path(daemon.frr_vty_socket) / "bgpd.vty"
    return Path("/run/frr") / (daemon.frr_pathspace or "") / "bgpd.vty"


def check_unit_group(bgp: bool, vty: Path | None) -> Result:
    """The unit runs vpnd as root without CAP_DAC_OVERRIDE and joins FRR's vty group. Where the
    group is missing systemd refuses to start it (status=216/GROUP); in BGP mode vtysh reaches
    bgpd only if bgpd's vty socket lets that group in. `vpnd doctor` itself runs with all of
    root's capabilities (the frr check passes regardless), so look at the group and socket."""
    import grp

    name = "unit_group"
    try:
        gid = grp.getgrnam(UNIT_GROUP).gr_gid
    except KeyError:
        return Result(name, FAIL, f"group {UNIT_GROUP} does not exist: systemd will not start "
                      "vpnd.service (status=216/GROUP)",
                      f"addgroup --system {UNIT_GROUP} (the vpnd package and FRR's create it)")
    if not bgp or vty is None:
        return Result(name, PASS, f"group {UNIT_GROUP} exists (gid {gid}) for the unit's SupplementaryGroups=")
    try:
        st = os.stat(vty)
    except FileNotFoundError:
        return Result(name, PASS, f"group {UNIT_GROUP} exists; {vty} is not there to check (see the frr check)")
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    mode = oct(st.st_mode & 0o777)
    if st.st_gid != gid or st.st_mode & 0o060 != 0o060:
        return Result(name, FAIL, f"{vty} is group {group} mode {mode}: the unit (root without "
                      f"CAP_DAC_OVERRIDE, group {UNIT_GROUP}) cannot connect to bgpd",
                      f"run FRR with vty group {UNIT_GROUP} (Debian's FRR does), or give the unit "
                      "that group in a drop-in: SupplementaryGroups=GROUP")
    return Result(name, PASS, f"{vty} is group {UNIT_GROUP} mode {mode}: the unit reaches bgpd")


def zebra_cmdlines(proc: Path = Path("/proc")) -> list[list[str]]:
    """The command lines of the zebra processes in this network namespace (a gateway may
    run other FRR instances in other namespaces: theirs say nothing about ours)."""
    try:
        ours = (proc / "self" / "ns" / "net").readlink()
    except OSError:
        ours = None
    out = []
    for pid in proc.iterdir():
        if not pid.name.isdigit():
            continue
        try:
            if (pid / "comm").read_text().strip() != "zebra":
                continue
            if ours is not None and (pid / "ns" / "net").readlink() != ours:
                continue
            out.append([a.decode() for a in (pid / "cmdline").read_bytes().split(b"\0") if a])
        except OSError:
            continue        # gone meanwhile, or not ours to read
    return out


def check_zebra_graceful_restart(config: Config, proc: Path = Path("/proc")) -> Result:
    """zebra started without -K sweeps the routes it finds at start: after an FRR crash
    (SIGKILL, OOM, a bug) the kernel's BGP routes, which kept traffic flowing while FRR was
    gone, are deleted as the new zebra starts, and traffic stops until bgpd has its sessions
    and routes back (2.2 s in vpnd's lab; 0 ms with -K 60)."""
    name = "frr_graceful_restart"
    if not any(c.has_bgp for c in config.connections):
        return Result(name, SKIP, "no connection uses routing = \"bgp\"")
    cmdlines = zebra_cmdlines(proc)
    if not cmdlines:
        return Result(name, SKIP, "no zebra runs in this network namespace (see the frr check)")
    def keeps(argv: list[str]) -> bool:
        return any(a == "-K" or a.startswith("-K") or a.startswith("--graceful_restart")
                   for a in argv[1:])
    if all(keeps(argv) for argv in cmdlines):
        return Result(name, PASS, "zebra keeps the kernel's routes across an FRR restart (-K)")
    return Result(
        name, WARN,
        "zebra runs without -K (graceful restart time): after an FRR crash and restart it "
        "deletes the kernel's BGP routes at start, and traffic stops until bgpd has relearned "
        "them (about 2 s)",
        "add -K 60 to zebra_options in /etc/frr/daemons, then systemctl restart frr")


def _mtu_room(config: Config, links: dict[str, Any]) -> dict[str, int]:
    """Per tunnel interface, the largest MTU whose ESP(-in-UDP) packets fit the underlay
    (vpnd.core.mtu's formula for the connection's proposal; 1500 when the underlay is
    unset or not found). Above it a tunnel relies on PMTU discovery or a clamp."""
    from vpnd.core.mtu import tunnel_mtu

    room = {}
    for c in config.connections:
        if not c.tunnel_interfaces:
            continue
        for t in c.tunnels:
            under = links.get(t.underlay) if t.underlay else None
            room[t.interface] = tunnel_mtu(under if isinstance(under, int) else 1500,
                                           c.ipsec.encryption, c.ipsec.integrity, c.nat_traversal)
    return room


def _fixed_mss_clamp(nft_json: str) -> bool:
    """A forward rule `tcp option maxseg size set N` with a number (not `rt mtu`, which
    follows the interface's 1500 and clamps nothing)."""
    def walk(node: Any) -> bool:
        if isinstance(node, dict):
            m = node.get("mangle")
            if isinstance(m, dict) and "maxseg" in json.dumps(m.get("key")) \
                    and isinstance(m.get("value"), int):
                return True
            return any(walk(v) for v in node.values())
        return isinstance(node, list) and any(walk(v) for v in node)
    try:
        return walk(json.loads(nft_json))
    except ValueError:
        return False


def check_mtu(config: Config) -> Result:
    name = "mtu"
    interfaces = _tunnel_interfaces(config)
    if not interfaces:
        return Result(name, SKIP, "no tunnel interfaces (policy mode)")
    r = run("ip", "-j", "link", "show")
    links = {l["ifname"]: l.get("mtu") for l in json.loads(r.stdout or "[]")} if r.returncode == 0 else {}
    present = {i: links[i] for i in interfaces if i in links}
    if not present:
        return Result(name, SKIP, f"{', '.join(interfaces)} not created yet (vpnd creates them)")
    room = _mtu_room(config, links)
    big = [f"{i} {m}" for i, m in present.items()
           if isinstance(m, int) and i in room and m > room[i]]
    if not big:
        return Result(name, PASS, "tunnel MTU leaves room for ESP: " +
                      ", ".join(f"{i} {m}" for i, m in present.items()))
    nft = run("nft", "-j", "list", "ruleset") if shutil.which("nft") else None
    if nft is not None and nft.returncode == 0 and _fixed_mss_clamp(nft.stdout):
        return Result(name, PASS, f"MTU {', '.join(big)}, TCP MSS clamped to a fixed size")
    return Result(name, WARN, f"MTU {', '.join(big)} does not leave room for ESP overhead and no "
                  "TCP MSS clamp: large TCP transfers stall when ICMP 'fragmentation needed' "
                  "is filtered", "nft add rule inet filter forward oifname \"ipsec*\" tcp flags syn "
                  "tcp option maxseg size set 1360")


def check_path_mtu(config: Config, status: dict | None = None) -> Result:
    """Each tunnel's measured path MTU, as the running vpnd reports it (status' data_path):
    what the MSS clamp follows when the path is narrower than the interface."""
    name = "path_mtu"
    if not _tunnel_interfaces(config):
        return Result(name, SKIP, "no tunnel interfaces (policy mode)")
    if status is None:
        if not vpnd_running(config):
            return Result(name, SKIP, "vpnd is not running (it measures each tunnel's path MTU)")
        from vpnd.control.server import Unreachable, request
        try:
            reply = request(config.daemon.control_socket, {"command": "status"}, timeout=5.0)
        except Unreachable as exc:
            return Result(name, SKIP, f"cannot ask vpnd: {exc}")
        status = reply.get("status") if reply.get("ok") else None
        if status is None:
            return Result(name, SKIP, f"vpnd refused status: {reply.get('error')}")
    parts, unmeasured, narrow = [], [], []
    for cname, c in (status.get("connections") or {}).items():
        for tname, t in (c.get("tunnels") or {}).items():
            row = t.get("data_path") or {}
            pmtu, mtu = row.get("path_mtu"), row.get("mtu")
            if pmtu is None:
                unmeasured.append(f"{cname}/{tname}")
                continue
            parts.append(f"{cname}/{tname} {pmtu} (interface {mtu}, MSS clamp {row.get('mss_clamp')})")
            if isinstance(mtu, int) and pmtu < mtu:
                narrow.append(f"{cname}/{tname}")
    if not parts:
        return Result(name, SKIP, "not measured yet: " + ", ".join(unmeasured) if unmeasured
                      else "no tunnel reports a data path")
    detail = "measured path MTU: " + "; ".join(parts)
    if unmeasured:
        detail += "; not measured yet: " + ", ".join(unmeasured)
    if narrow:
        detail += f"; narrower than the interface on {', '.join(narrow)} (vpnd clamps TCP MSS to it)"
    return Result(name, PASS, detail)


def check_ike_listening() -> Result:
    """charon listens on UDP 500 and 4500 once it runs; /proc/net/udp{,6} say so."""
    ports: set[int] = set()
    for f in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(f).read_text().splitlines()[1:]
        except OSError:
            continue
        ports |= {int(line.split()[1].rsplit(":", 1)[1], 16) for line in lines if line.strip()}
    missing = [p for p in IKE_PORTS if p not in ports]
    if missing:
        return Result("ike_ports", FAIL, f"nothing listens on UDP {', '.join(map(str, missing))}",
                      "start charon (systemctl start strongswan); check charon.port / "
                      "charon.port_nat_t in strongswan.conf")
    return Result("ike_ports", PASS, "UDP 500 and 4500 are open (charon)")


# --- the cloud's health check: what bounds the return path, and vpnd's part of it ----------

def check_cloud_health_check(config: Config) -> list[Result]:
    """In route mode the cloud moves its sending tunnel only after interval x retries of
    failed checks (the vendor's health-check documentation): say the figure and what to set in the console."""
    from vpnd.control.status import cloud_check

    out = []
    for c in config.connections:
        info = cloud_check(c)
        if info is None:
            continue
        name = f"cloud_health_check:{c.name}"
        if not info["configured"]:
            out.append(Result(name, WARN, info["note"],
                              "enable the health check in the cloud console (Source IP, "
                              "Destination IP, Retry Interval 1, Retries 3, Switch Route Yes) "
                              "and copy it into [connection.cloud_health_check]"))
        elif info.get("advice"):
            out.append(Result(name, WARN, info["note"], info["advice"]))
        else:
            out.append(Result(name, PASS, info["note"]))
    return out


def vpnd_running(config: Config) -> bool:
    """vpnd answers on its control socket (a stale socket file refuses the connection)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(config.daemon.control_socket)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def return_path_problems(c: Any, protocol: int) -> list[str]:
    """What of the /32 route, the fwmark rules and the nft chains is missing (iproute2, nft)."""
    from vpnd.kernel import return_path as rp

    chc = c.cloud_health_check
    src = f"{chc.source_ip}/32"
    problems = []
    if c.kernel_routes:
        r = run("ip", "-j", "route", "show", "table", "main", "proto", str(protocol), src)
        routes = json.loads(r.stdout or "[]") if r.returncode == 0 else []
        if not routes:
            problems.append(f"no route {src} (protocol {protocol}) through the tunnels in the "
                            "main table")
    elif run("ip", "route", "get", str(chc.source_ip)).returncode != 0:
        # BGP mode: FRR owns the routes; a reply the gateway generates needs one to start from
        problems.append(f"no route to {chc.source_ip}: the gateway's own replies to the "
                        "cloud's check are dropped; have the cloud announce it over BGP or "
                        f"add a route {src} through a tunnel")
    r = run("ip", "-j", "rule", "show")
    rules = json.loads(r.stdout or "[]") if r.returncode == 0 else []
    have = set()
    for rule in rules:
        try:
            if rule.get("priority") == rp.RULE_PRIORITY and "fwmark" in rule:
                have.add((int(str(rule["fwmark"]).split("/")[0], 0), str(rule.get("table"))))
        except ValueError:
            continue
    for ifname, mark in rp.marks(c):
        if (mark, str(mark)) not in have:
            problems.append(f"no rule fwmark {mark} lookup {mark} (replies of probes that "
                            f"arrived on {ifname})")
        r = run("ip", "-j", "route", "show", "table", str(mark), src)
        routes = json.loads(r.stdout or "[]") if r.returncode == 0 else []
        if not any(x.get("dev") == ifname for x in routes):
            problems.append(f"no route {src} dev {ifname} in table {mark}")
    if shutil.which("nft") is None:
        problems.append("nft is not installed: vpnd cannot mark the replies")
    else:
        r = run("nft", "-j", "list", "table", rp.NFT_FAMILY, rp.NFT_TABLE)
        ruleset = None
        if r.returncode == 0:
            try:
                ruleset = json.loads(r.stdout)
            except ValueError:
                ruleset = None
        problems += rp.nft_problems(ruleset, c)
    return problems


def check_return_path(config: Config, running: Callable[[Config], bool] = vpnd_running) -> list[Result]:
    """When vpnd runs, the cloud check's /32 route and reply marking must be in place."""
    from vpnd.kernel.return_path import wanted

    conns = [c for c in config.connections if wanted(c)]
    if not conns:
        return []
    if not running(config):
        return [Result(f"return_path:{c.name}", SKIP, "vpnd is not running (it adds the /32 "
                       "route and the reply marking at start)") for c in conns]
    out = []
    for c in conns:
        name = f"return_path:{c.name}"
        problems = return_path_problems(c, config.daemon.route_protocol)
        if problems:
            out.append(Result(name, FAIL, "; ".join(problems),
                              "vpnd restores them within seconds: if they stay missing, "
                              "something else removes them (a firewall reload with `nft flush "
                              "ruleset`, a network script flushing rules); see vpnd's log "
                              "(return_path.*), or systemctl restart vpnd"))
        else:
            chc = c.cloud_health_check
            out.append(Result(name, PASS, f"replies to the cloud's check ({chc.source_ip} -> "
                              f"{chc.destination_ip}) leave by the tunnel their probe arrived "
                              "on" + (f"; {chc.source_ip}/32 routed through the active tunnel"
                                      if c.kernel_routes else "")))
    return out


# --- running and printing ----------------------------------------------------------------

def guarded(name: str, check: Callable[..., Any], *args: Any) -> Any:
    """One broken check (a missing tool, a timeout) must not hide the others' answers, nor
    print a traceback."""
    try:
        return check(*args)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return Result(name, WARN, f"could not check: {type(exc).__name__}: {exc}",
                      "run vpnd doctor as root with iproute2 and nftables installed")


def diagnose(config_path: str) -> list[Result]:
    config_result, config = check_config(config_path)
    results = [config_result, guarded("ip_forward", check_ip_forward)]
    needs_xfrm = config is None or any(
        c.tunnel_interfaces and any(t.interface_kind == "xfrm" for t in c.tunnels)
        for c in config.connections)
    results.append(guarded("xfrm_interface", check_xfrm_interface, needs_xfrm))
    vici_socket = config.daemon.vici_socket if config else "/var/run/charon.vici"
    vici_result, version = check_vici(vici_socket)
    policy_only = config is not None and not any(c.tunnel_interfaces for c in config.connections)
    results += [guarded("strongswan_version", check_strongswan_version, version, policy_only),
                vici_result, guarded("ike_ports", check_ike_listening),
                guarded("firewall", check_firewall)]
    if config is not None:
        routes = guarded("routes", check_routes, config)
        results += [guarded("rp_filter", check_rp_filter, config),
                    guarded("mtu", check_mtu, config),
                    guarded("path_mtu", check_path_mtu, config),
                    *(routes if isinstance(routes, list) else [routes]),
                    guarded("frr", check_frr, config),
                    guarded("unit_group", check_unit_group,
                            any(c.bgp is not None for c in config.connections), bgpd_vty_path(config.daemon)),
                    guarded("frr_graceful_restart", check_zebra_graceful_restart, config)]
        for name, check in (("cloud_health_check", check_cloud_health_check),
                            ("return_path", check_return_path)):
            found = guarded(name, check, config)
            results += found if isinstance(found, list) else [found]
    return results


def render_text(results: Iterable[Result], out: TextIO) -> None:
    results = list(results)
    width = max(len(r.check) for r in results)
    for r in results:
        print(f"{r.status:<4}  {r.check:<{width}}  {r.detail}", file=out)
        if r.fix and r.status in (WARN, FAIL):
            print(f"{'':<4}  {'':<{width}}  fix: {r.fix}", file=out)
    counts = {s: sum(r.status == s for r in results) for s in (PASS, WARN, FAIL, SKIP)}
    print(", ".join(f"{n} {s.lower()}" for s, n in counts.items()), file=out)


def main(args: Any, out: TextIO | None = None,
         checks: Callable[[str], list[Result]] = diagnose) -> int:
    out = out or sys.stdout
    results = checks(args.config)
    if args.json:
        json.dump({"ok": not any(r.status == FAIL for r in results),
                   "checks": [asdict(r) for r in results]}, out, indent=2)
        print(file=out)
    else:
        render_text(results, out)
    return 1 if any(r.status == FAIL for r in results) else 0


"""Our FRR rendering and the cloud mirror (`peer_frr`) in two real FRRs: both BGP sessions
come up, the prefixes cross, and standby = "prepend" makes tunnel 1 the best path both ways
(the cloud sees tunnel 2's routes with our ASN prepended; we give tunnel 2 local-pref 50),
and "ecmp" makes both tunnels multipath both ways.

Two namespaces joined by two veth pairs stand for the two tunnels' inner /30s (the IPsec under
them is not what this tests; test_render_charon covers that)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from vpnd_testing.netns_helpers import scratch_netns

from vpnd.config.load import load_file
from vpnd.render import frr
from vpnd_lab import cloud as lab_cloud

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
FRR_BIN = Path("/usr/lib/frr")

pytestmark = pytest.mark.lab


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("vtysh") is None or not (FRR_BIN / "bgpd").exists():
        return "FRR is not installed"
    return None


def netns():
    return scratch_netns("vpndf")


class Frr:
    """zebra, bgpd and bfdd in a namespace, foreground children of this test (stopped by pid), with
    their vty sockets in a private directory (no /etc/frr or /run/frr touched)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.dir = Path(tempfile.mkdtemp(prefix="vpnd-rf-"))
        shutil.chown(self.dir, "frr", "frr")
        (self.dir / "empty.conf").write_text("")
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        d = self.dir
        for daemon in ("zebra", "bgpd", "bfdd"):
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", self.ns, str(FRR_BIN / daemon), "-F", "traditional",
                 "-A", "127.0.0.1", "-P", "0", "--vty_socket", str(d), "-z", str(d / "zserv.api"),
                 "-i", str(d / f"{daemon}.pid"), "-f", str(d / "empty.conf")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.wait_for(lambda: (d / f"{daemon}.vty").exists(), f"{daemon}'s vty socket", 15)

    def vtysh(self, *args: str) -> str:
        r = subprocess.run(["ip", "netns", "exec", self.ns, "vtysh", "--vty_socket", str(self.dir),
                            *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def apply(self, text: str) -> None:
        path = self.dir / "frr.conf"
        path.write_text(text)
        self.vtysh("-f", str(path))

    def json(self, command: str) -> dict:
        return json.loads(self.vtysh("-c", command))

    def wait_for(self, check, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for p in self.procs:
                assert p.poll() is None, f"an FRR daemon exited while waiting for {what}"
            assert time.monotonic() < deadline, f"no {what} within {timeout} s"
            time.sleep(0.1)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def frr_in(ns: str):
    f = Frr(ns)
    try:
        f.start()
        yield f
    finally:
        f.stop()


def _ip(ns: str, *cmd: str) -> None:
    subprocess.run(["ip", "-n", ns, *cmd], check=True)


def _established(f: Frr, peers: list[str]) -> bool:
    summary = f.json("show bgp ipv4 unicast summary json").get("peers", {})
    return all(summary.get(p, {}).get("state") == "Established" for p in peers)


def _bfd_up(f: Frr, peers: list[str]) -> bool:
    status = {p["peer"]: p["status"] for p in f.json("show bfd peers json")}
    return all(status.get(p) == "up" for p in peers)


def _paths(f: Frr, prefix: str) -> dict[str, dict]:
    """next hop -> path (with 'best' and 'aspath') for one prefix."""
    out = {}
    for path in f.json(f"show bgp ipv4 unicast {prefix} json").get("paths", []):
        out[path["nexthops"][0]["ip"]] = path
    return out


@pytest.mark.parametrize("standby, bfd", [("prepend", False), ("ecmp", False), ("prepend", True)])
def test_frr_and_mirror_standby(standby, bfd):
    reason = _missing()
    if reason:
        pytest.skip(reason)
    config = load_file(GOLDEN / "vendor_guide.toml")
    conn = config.connections[0]
    conn = replace(conn, bgp=replace(
        conn.bgp, keepalive=1, hold=3, standby=standby,
        bfd=replace(conn.bgp.bfd, enabled=bfd, receive_interval_ms=200, transmit_interval_ms=200)))     # quick sessions
    config = replace(config, connections=(conn,))
    with netns() as cgw, netns() as cloud:
        for t in conn.tunnels:
            a, b = f"vf{uuid.uuid4().hex[:8]}", f"vf{uuid.uuid4().hex[:8]}"
            subprocess.run(["ip", "link", "add", a, "netns", cgw, "type", "veth", "peer", "name", b,
                            "netns", cloud], check=True)
            prefix = t.bgp.tunnel_cidr.prefixlen
            _ip(cgw, "addr", "add", f"{t.bgp.local_ip}/{prefix}", "dev", a)
            _ip(cloud, "addr", "add", f"{t.bgp.peer_ip}/{prefix}", "dev", b)
            _ip(cgw, "link", "set", a, "up")
            _ip(cloud, "link", "set", b, "up")
        for n in conn.local_networks:      # our networks exist (BGP's import check)
            _ip(cgw, "addr", "add", f"{n.network_address + 1}/{n.prefixlen}", "dev", "lo")
        with frr_in(cgw) as ours, frr_in(cloud) as theirs:
            ours.apply(frr.frr_config(config).text())
            theirs.apply(lab_cloud.peer_frr(conn).text())
            cloud_ips = [str(t.bgp.peer_ip) for t in conn.tunnels]
            our_ips = [str(t.bgp.local_ip) for t in conn.tunnels]
            ours.wait_for(lambda: _established(ours, cloud_ips), "Established sessions", 30)
            ours.wait_for(lambda: len(_paths(ours, "192.168.0.0/16")) == 2
                          and len(_paths(theirs, "172.16.20.0/24")) == 2, "both paths", 15)

            if bfd:     # bgpd's sessions got BFD peers with the profile's timers, and they are up
                ours.wait_for(lambda: _bfd_up(ours, cloud_ips), "BFD up", 15)
                for p in ours.json("show bfd peers json"):     # the profile's, not 300
                    assert (p["receive-interval"], p["transmit-interval"]) == (200, 200)
            mine = _paths(ours, "192.168.0.0/16")
            theirs_paths = _paths(theirs, "172.16.20.0/24")
            if standby == "ecmp":       # both tunnels carry traffic, both ways
                assert all(p.get("multipath") for p in mine.values()), mine
                assert all(p.get("multipath") for p in theirs_paths.values()), theirs_paths
                assert {p["aspath"]["string"] for p in theirs_paths.values()} == {"65530"}
                return
            # we prefer tunnel 1 (tunnel 2 has local-preference 50)
            mine = _paths(ours, "192.168.0.0/16")
            assert mine[cloud_ips[0]].get("bestpath", {}).get("overall") is True
            assert mine[cloud_ips[1]].get("locPrf") == 50
            # the cloud prefers tunnel 1 (tunnel 2's path has our ASN prepended 3 more times)
            theirs_paths = _paths(theirs, "172.16.20.0/24")
            assert theirs_paths[our_ips[0]].get("bestpath", {}).get("overall") is True
            assert theirs_paths[our_ips[0]]["aspath"]["string"] == "65530"
            assert theirs_paths[our_ips[1]]["aspath"]["string"] == "65530 65530 65530 65530"

"""The rendered output is accepted by the real programs: FRR's vtysh syntax check (`vtysh -C`)
for both FRR renderings, and a real charon (in its own network and mount namespace) for the
swanctl text via `swanctl --load-all` and the same data as VICI dicts via load-conn."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from vpnd_testing.netns_helpers import scratch_netns
from vpnd_lab.daemons import _connectable

from vpnd.config.load import load_file
from vpnd.config.model import Secret
from vpnd.render import frr, swanctl
from vpnd_lab import cloud as lab_cloud

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CHARON = "/usr/lib/ipsec/charon"


def configs():
    """the vendor's strongSwan guide as it is, and with BFD and IKEv1 aggressive/PFS-less variations."""
    config = load_file(GOLDEN / "vendor_guide.toml")
    conn = config.connections[0]
    varied = replace(
        conn, name="var",
        ike=replace(conn.ike, version=1, mode="aggressive", dh_group="group14"),
        ipsec=replace(conn.ipsec, pfs_group="disabled", lifetime=0),
        bgp=replace(conn.bgp, bfd=replace(conn.bgp.bfd, enabled=True), standby="ecmp"),
        tunnels=tuple(replace(t, local_id="cgw.example.com") for t in conn.tunnels))
    return config, replace(config, connections=(varied,))


@pytest.mark.skipif(shutil.which("vtysh") is None, reason="FRR's vtysh is not installed")
@pytest.mark.parametrize("index", [0, 1])
def test_vtysh_accepts_frr_renderings(tmp_path, index):
    config = configs()[index]
    for name, cfg in (("ours", frr.frr_config(config)), ("peer", lab_cloud.peer_frr(config.connections[0]))):
        path = tmp_path / f"{name}.conf"
        path.write_text(cfg.text())
        r = subprocess.run(["vtysh", "-C", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"


# --- a real charon --------------------------------------------------------------------------

def _lab_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "unshare", "swanctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.path.exists(CHARON):
        return "strongSwan charon is not installed"
    return None


def netns():
    return scratch_netns("vpndr")


@contextlib.contextmanager
def run_charon(ns: str):
    """A private charon in `ns` and its own mount ns (/run, so the pid file is its own), VICI
    socket in a temp dir. Yields the socket path; stopped by pid, always."""
    work = Path(tempfile.mkdtemp(prefix="vpnd-rc-"))
    sock = work / "charon.vici"
    (work / "run").mkdir()
    (work / "strongswan.conf").write_text(
        "charon {\n load_modular = yes\n plugins {\n  include /etc/strongswan.d/charon/*.conf\n"
        f"  kernel-libipsec {{\n   load = 20\n  }}\n  vici {{\n   socket = unix://{sock}\n  }}\n }}\n}}\n")
    proc = None
    try:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount --bind {work}/run /run && STRONGSWAN_CONF={work}/strongswan.conf exec {CHARON}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not _connectable(sock):
            assert proc.poll() is None, "charon exited"
            assert time.monotonic() < deadline, "charon's VICI socket did not appear"
            time.sleep(0.02)
        yield str(sock)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def charon():
    reason = _lab_missing()
    if reason:
        pytest.skip(reason)
    with netns() as ns, run_charon(ns) as sock:
        yield sock


def _session(sock: str):
    import vici
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    return vici.Session(s), s


def _names(sock: str) -> tuple[set[str], set[str]]:
    session, s = _session(sock)
    try:
        conns = {c.decode() if isinstance(c, bytes) else c for c in session.get_conns()["conns"]}
        keys = {k.decode() if isinstance(k, bytes) else k for k in session.get_shared()["keys"]}
        return conns, keys
    finally:
        s.close()


@pytest.mark.lab
@pytest.mark.parametrize("index", [0, 1])
def test_charon_accepts_swanctl_text(charon, tmp_path, index):
    config = configs()[index]
    path = tmp_path / "swanctl.conf"
    c = config.connections[0]
    # --load-all replaces what swanctl loaded before, so check ours, then the mirror
    for text, expected in (
        (swanctl.swanctl_text(config, show_secrets=True),
         {swanctl.conn_name(c.name, t.name) for t in c.tunnels}),
        (lab_cloud.peer_swanctl_text(c, if_ids={"tunnel2": 9}, show_secrets=True),
         set(lab_cloud.peer_vici_conns(c))),
    ):
        path.write_text(text)
        r = subprocess.run(["swanctl", "--load-all", "--file", str(path), "--uri", f"unix://{charon}"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        conns, keys = _names(charon)
        assert expected <= conns
        assert {f"ike-{n}" for n in expected} <= keys      # swanctl names secrets by section


@pytest.mark.lab
@pytest.mark.parametrize("index", [0, 1])
def test_charon_accepts_vici_dicts(charon, index):
    config = configs()[index]
    c = config.connections[0]
    session, s = _session(charon)
    try:
        for t in c.tunnels:
            session.load_conn({swanctl.conn_name(c.name, t.name): swanctl.vici_conn(c, t)})
            session.load_shared(swanctl.vici_secret(c, t))
        for name, body in lab_cloud.peer_vici_conns(c, if_ids={"tunnel1": 7}).items():
            session.load_conn({name: body})
        for secret in lab_cloud.peer_vici_secrets(c):
            session.load_shared(secret)
        listed = {}
        for entry in session.list_conns():
            listed.update(entry)
    finally:
        s.close()
    conns, keys = _names(charon)
    ours = {swanctl.conn_name(c.name, t.name) for t in c.tunnels}
    mirror = set(lab_cloud.peer_vici_conns(c))
    assert ours | mirror <= conns
    assert ours | mirror <= keys
    # what charon made of it (list-conns shows times in seconds; dpd_action clear is "none")
    first = swanctl.conn_name(c.name, c.tunnels[0].name)
    got = listed[first]
    assert got["version"].decode() == f"IKEv{c.ike.version}"
    assert got["rekey_time"].decode() == swanctl.ike_times(c.ike.lifetime)["rekey_time"][:-1]
    assert got["dpd_delay"].decode() == "10"
    assert got["remote-1"]["id"].decode() == str(c.tunnels[0].remote_address)
    child = got["children"][first]
    assert child["rekey_time"].decode() == swanctl.child_times(c.ipsec.lifetime)["rekey_time"][:-1]
    assert child["close_action"].decode() == "none" and child["dpd_action"].decode() == "none"
    assert [ts.decode() for ts in child["local-ts"]] == ["0.0.0.0/0"]


def _sh(ns: str, *cmd: str) -> None:
    subprocess.run(["ip", "-n", ns, *cmd], check=True)


def _load(sock: str, conns: dict, secrets: list) -> None:
    session, s = _session(sock)
    try:
        for name, body in conns.items():
            session.load_conn({name: body})
        for secret in secrets:
            session.load_shared(secret)
    finally:
        s.close()


def _established(sock: str) -> dict[str, str]:
    """IKE SA name -> 'IKE state/CHILD state' as charon reports it."""
    session, s = _session(sock)
    try:
        out = {}
        for entry in session.list_sas():
            for name, sa in entry.items():
                children = [c["state"].decode() for c in sa.get("child-sas", {}).values()]
                out[name] = "/".join([sa["state"].decode(), *children])
        return out
    finally:
        s.close()


@pytest.mark.lab
@pytest.mark.parametrize("via", ["vici", "swanctl-text"])
def test_ours_and_mirror_establish_both_tunnels(tmp_path, via):
    """Ours in one charon (VICI dicts, or the swanctl text with keys that need quoting), the
    cloud mirror in another: both tunnels come up, so ids, PSK owners, proposals, traffic
    selectors and the text's quoting really agree."""
    reason = _lab_missing()
    if reason:
        pytest.skip(reason)
    config = configs()[0]
    conn = config.connections[0]
    # libipsec: per-tunnel /32 selectors (see lab notes), no XFRM if_id
    tunnels = tuple(
        replace(t, interface_kind="existing",
                local_ts=(ipaddress.ip_network(f"10.255.{i}.2/32"),),
                remote_ts=(ipaddress.ip_network(f"10.255.{i}.1/32"),))
        for i, t in enumerate(conn.tunnels, 1))
    conn = replace(conn, routing="route", bgp=None, tunnels=tunnels)
    if via == "swanctl-text":
        conn = replace(conn, tunnels=tuple(
            replace(t, psk=Secret(f'we ir"d\\ #{i};{{x}}=y')) for i, t in enumerate(conn.tunnels)))
    with netns() as cgw, netns() as cloud:
        veth_a, veth_b = f"vr{uuid.uuid4().hex[:8]}", f"vr{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "link", "add", veth_a, "netns", cgw, "type", "veth",
                        "peer", "name", veth_b, "netns", cloud], check=True)
        _sh(cgw, "addr", "add", "198.18.0.2/24", "dev", veth_a)
        _sh(cloud, "addr", "add", "198.18.0.1/24", "dev", veth_b)
        _sh(cloud, "addr", "add", "198.18.0.11/24", "dev", veth_b)
        for i in (1, 2):
            _sh(cgw, "addr", "add", f"10.255.{i}.2/32", "dev", "lo")
            _sh(cloud, "addr", "add", f"10.255.{i}.1/32", "dev", "lo")
        _sh(cgw, "link", "set", veth_a, "up")
        _sh(cloud, "link", "set", veth_b, "up")
        with run_charon(cgw) as ours, run_charon(cloud) as theirs:
            if via == "vici":
                _load(ours, {swanctl.conn_name(conn.name, t.name): swanctl.vici_conn(conn, t)
                             for t in conn.tunnels},
                      [swanctl.vici_secret(conn, t) for t in conn.tunnels])
            else:
                path = tmp_path / "swanctl.conf"
                path.write_text(swanctl.swanctl_text(replace(config, connections=(conn,)),
                                                     show_secrets=True))
                r = subprocess.run(["swanctl", "--load-all", "--file", str(path), "--uri",
                                    f"unix://{ours}"], capture_output=True, text=True, timeout=30)
                assert r.returncode == 0, r.stdout + r.stderr
            _load(theirs, lab_cloud.peer_vici_conns(conn), lab_cloud.peer_vici_secrets(conn))
            session, s = _session(ours)
            try:
                for t in conn.tunnels:
                    name = swanctl.conn_name(conn.name, t.name)
                    for _ in session.initiate({"child": name, "ike": name, "timeout": "10000"}):
                        pass
            finally:
                s.close()
            want = {swanctl.conn_name(conn.name, t.name): "ESTABLISHED/INSTALLED"
                    for t in conn.tunnels}
            assert _established(ours) == want
            assert _established(theirs) == {lab_cloud.peer_conn_name(conn.name, t.name): "ESTABLISHED/INSTALLED"
                                            for t in conn.tunnels}

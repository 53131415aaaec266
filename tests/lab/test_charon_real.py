"""The VICI client and the charon adapter against REAL charon 5.9.8 in network namespaces.

A minimal local fixture (the recipe measured on this project's machines: one netns + one mount namespace per charon,
kernel-libipsec, the VICI socket outside /run): it is to be replaced by the lab helper's
fixture. Every namespace name carries a per-run prefix; only processes started here are
killed, by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from vpnd.charon.adapter import CharonAdapter, Desired
from vpnd.core.events import (
    CharonAlert,
    CharonConnected,
    CharonDisconnected,
    ChildDown,
    ChildRekeyed,
    ChildUp,
    IkeDown,
    IkeRekeyed,
    IkeUp,
    NegotiationFailed,
    SaSnapshot,
    TunnelKey,
    TunnelSa,
)
from vpnd.charon.vici import Backoff, ViciClient

pytestmark = pytest.mark.lab

CHARON = "/usr/lib/ipsec/charon"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network and mount namespaces)"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not os.access(CHARON, os.X_OK):
        return f"needs strongSwan's charon at {CHARON}"
    return None


if (why := _missing()) is not None:
    pytest.skip(why, allow_module_level=True)


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=10)


STRONGSWAN_CONF = """\
charon {{
  load_modular = yes
  retransmit_timeout = 1
  retransmit_tries = 2
  retransmit_base = 1
  plugins {{
    include /etc/strongswan.d/charon/*.conf
    kernel-libipsec {{ load = 20 }}
    vici {{ socket = unix://{dir}/charon.vici }}
  }}
  filelog {{ f {{ path = {dir}/charon.log
    default = 1
  }} }}
}}
"""


class Charon:
    """One charon in its own netns and mount namespace; the VICI socket in `dir`."""

    def __init__(self, netns: str, dir: Path) -> None:
        self.netns = netns
        self.dir = dir
        (dir / "run").mkdir(parents=True, exist_ok=True)
        (dir / "strongswan.conf").write_text(STRONGSWAN_CONF.format(dir=dir))
        self.proc: subprocess.Popen | None = None

    @property
    def vici(self) -> str:
        return str(self.dir / "charon.vici")

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "run" / "charon.pid").unlink()
        cmd = (f"mount --bind {self.dir}/run /run && "
               f"STRONGSWAN_CONF={self.dir}/strongswan.conf exec {CHARON}")
        with open(self.dir / "stdout", "ab") as out:     # the child keeps its own copy
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "-m", "--propagation", "private",
                 "sh", "-c", cmd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Only the process started here, by pid (ip/unshare/sh exec into charon)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None


class Lab:
    def __init__(self, prefix: str, root: Path) -> None:
        self.prefix = prefix
        self.root = root
        self.namespaces: list[str] = []
        self.charons: list[Charon] = []

    def netns(self, name: str) -> str:
        ns = f"{self.prefix}{name}"
        sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def charon(self, name: str, ns: str) -> Charon:
        c = Charon(ns, self.root / name)
        self.charons.append(c)
        c.start()
        return c

    def teardown(self) -> None:
        for c in self.charons:
            c.kill()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)

    def charon_log(self) -> str:
        return "".join((c.dir / "charon.log").read_text(errors="replace")
                       for c in self.charons if (c.dir / "charon.log").exists())


@pytest.fixture
def lab():
    root = Path(tempfile.mkdtemp(prefix="vpv-", dir="/tmp"))
    lab = Lab(f"vv{uuid.uuid4().hex[:6]}", root)
    try:
        yield lab
        for c in lab.charons:       # a crashed charon fails the test that caused it
            assert c.proc is None or c.proc.poll() is None, f"charon in {c.netns} exited"
        for bad in ("SIGSEGV", "killing ourself", "thread_cleanup"):
            assert bad not in lab.charon_log(), f"charon log mentions {bad}"
    finally:
        lab.teardown()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def one_charon(lab):
    return lab.charon("solo", lab.netns("solo"))


async def until(predicate, timeout: float = 5.0):
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


FAST = Backoff(base=0.02, cap=0.2)


def conn(local: str, remote: str, lts: str, rts: str, *, dpd: str = "0s") -> dict:
    return {"version": "2", "local_addrs": [local], "remote_addrs": [remote],
            "proposals": ["aes128-sha1-modp1024"], "dpd_delay": dpd, "rekey_time": "0",
            "local": {"auth": "psk", "id": local}, "remote": {"auth": "psk", "id": remote},
            "children": {}, "_child": {"local_ts": [lts], "remote_ts": [rts],
                                       "esp_proposals": ["aes128-sha1-modp1024"],
                                       "start_action": "none"}}


def named(name: str, body: dict) -> dict:
    """A conn with its one child named like the conn (as vpnd names them)."""
    body = dict(body)
    body["children"] = {name: body.pop("_child")}
    return body


# --- one charon: commands, ownership, events registration -------------------------------------

async def test_real_charon_commands_and_ownership(one_charon):
    got = []
    async with ViciClient(one_charon.vici, on_event=lambda n, m: got.append((n, m)),
                          backoff=FAST) as client:
        await client.wait_connected(10.0)
        version = await client.version()
        assert version["daemon"] == "charon" and version["version"].startswith("5.")

        body = named("x", conn("198.18.0.2", "198.18.0.1", "10.255.1.2/32", "10.255.1.1/32"))
        await client.load_conn({"office-vpn": body})            # someone else's connection
        await client.load_conn({"vpnd-c1-t1": body})
        await client.load_shared({"id": "vpnd-c1-t1", "type": "IKE", "data": "k",
                                  "owners": ["198.18.0.2"]})
        assert set(await client.get_conns()) == {"office-vpn", "vpnd-c1-t1"}
        assert "vpnd-c1-t1" in await client.get_shared()
        assert await client.list_sas() == []

        # the event socket is registered: charon logs the load as a CFG line
        await until(lambda: any(n == "log" and m.get("msg") == "added vici connection: vpnd-c1-t1"
                                for n, m in got))

        await client.unload_conn("vpnd-c1-t1")
        assert await client.get_conns() == ["office-vpn"]


async def test_real_adapter_unloads_only_its_own(one_charon):
    events = []
    adapter = CharonAdapter(one_charon.vici, events.append, backoff=FAST)
    await adapter.start()
    try:
        await until(lambda: SaSnapshot(()) in events, timeout=10)
        body = conn("198.18.0.2", "198.18.0.1", "10.255.1.2/32", "10.255.1.1/32")
        await adapter.client.load_conn({"office-vpn": named("office-vpn", body)})
        await adapter.client.load_conn({"vpnd-old-t1": named("vpnd-old-t1", body)})
        report = await adapter.apply(Desired(
            conns={"vpnd-c1-t1": named("vpnd-c1-t1", body)},
            secrets=({"id": "vpnd-c1-t1", "type": "IKE", "data": "k", "owners": ["198.18.0.2"]},),
            tunnels={"vpnd-c1-t1": TunnelKey("c1", "t1")}))
        assert report.unloaded == ("vpnd-old-t1",)
        assert sorted(await adapter.client.get_conns()) == ["office-vpn", "vpnd-c1-t1"]
        assert (await adapter.resync()) == SaSnapshot((TunnelSa(TunnelKey("c1", "t1"), None, None, None, None),))
    finally:
        await adapter.stop()


# --- two charons: a real tunnel, real events, a real charon restart ---------------------------

T1 = TunnelKey("c1", "t1")
CGW, CLOUD = "198.18.0.2", "198.18.0.1"


@pytest.fixture
async def pair(lab):
    cgw_ns, cloud_ns = lab.netns("cgw"), lab.netns("cloud")
    a, b = f"{lab.prefix}a"[:15], f"{lab.prefix}b"[:15]
    sh("ip", "link", "add", a, "netns", cgw_ns, "type", "veth", "peer", "name", b, "netns", cloud_ns)
    sh("ip", "-n", cgw_ns, "addr", "add", f"{CGW}/24", "dev", a)
    sh("ip", "-n", cloud_ns, "addr", "add", f"{CLOUD}/24", "dev", b)
    sh("ip", "-n", cgw_ns, "link", "set", a, "up")
    sh("ip", "-n", cloud_ns, "link", "set", b, "up")
    # libipsec: the traffic selector addresses must exist on an interface (measured on this project's machines)
    sh("ip", "-n", cgw_ns, "addr", "add", "10.255.1.2/32", "dev", "lo")
    sh("ip", "-n", cloud_ns, "addr", "add", "10.255.1.1/32", "dev", "lo")
    cgw, cloud = lab.charon("cgw", cgw_ns), lab.charon("cloud", cloud_ns)
    async with ViciClient(cloud.vici, on_event=lambda *a: None, backoff=FAST) as responder:
        await responder.wait_connected(10.0)
        await responder.load_conn({"cloud-t1": named("cloud-t1", conn(
            CLOUD, CGW, "10.255.1.1/32", "10.255.1.2/32"))})
        await responder.load_shared({"id": "cloud-k", "type": "IKE", "data": "goodkey",
                                     "owners": [CGW]})
    yield lab, cgw, cloud


def cgw_desired(psk: str = "goodkey") -> Desired:
    name = "vpnd-c1-t1"
    return Desired(
        conns={name: named(name, conn(CGW, CLOUD, "10.255.1.2/32", "10.255.1.1/32"))},
        secrets=({"id": name, "type": "IKE", "data": psk, "owners": [CGW]},),
        tunnels={name: T1})


async def test_real_tunnel_up_down_events(pair):
    lab, cgw, cloud = pair
    events = []
    adapter = CharonAdapter(cgw.vici, events.append, backoff=FAST)
    await adapter.start()
    try:
        await until(lambda: SaSnapshot(()) in events, timeout=10)
        await adapter.apply(cgw_desired())
        assert await adapter.initiate(T1, timeout=5.0) is True
        await until(lambda: any(isinstance(e, ChildUp) for e in events))
        ike_up = next(e for e in events if isinstance(e, IkeUp))
        child_up = next(e for e in events if isinstance(e, ChildUp))
        assert ike_up.tunnel == child_up.tunnel == T1 and child_up.ike_id == ike_up.ike_id
        snap = await adapter.resync()
        assert snap == SaSnapshot((TunnelSa(T1, ike_up.ike_id, "ESTABLISHED",
                                            child_up.child_id, "INSTALLED"),))

        await adapter.terminate(T1, ike_up.ike_id, timeout=5.0)
        await until(lambda: any(isinstance(e, IkeDown) for e in events))
        await until(lambda: any(isinstance(e, ChildDown) for e in events))
        assert not any(isinstance(e, NegotiationFailed) for e in events)
    finally:
        await adapter.stop()


async def test_real_wrong_psk_is_a_phase1_failure(pair):
    lab, cgw, cloud = pair
    events = []
    adapter = CharonAdapter(cgw.vici, events.append, backoff=FAST)
    await adapter.start()
    try:
        await until(lambda: SaSnapshot(()) in events, timeout=10)
        await adapter.apply(cgw_desired(psk="wrongkey"))
        assert await adapter.initiate(T1, timeout=5.0) is False
        await until(lambda: any(isinstance(e, NegotiationFailed) for e in events))
        failures = [e for e in events if isinstance(e, NegotiationFailed)]
        assert failures == [NegotiationFailed(
            T1, 1, "authentication failed at the peer (pre-shared key or identity)")]
    finally:
        await adapter.stop()


async def test_real_unreachable_peer_retransmits_then_phase1(pair):
    lab, cgw, cloud = pair
    events = []
    adapter = CharonAdapter(cgw.vici, events.append, backoff=FAST)
    await adapter.start()
    try:
        await until(lambda: SaSnapshot(()) in events, timeout=10)
        d = cgw_desired()
        name = "vpnd-c1-t1"
        body = named(name, conn(CGW, "198.18.0.99", "10.255.1.2/32", "10.255.1.1/32"))
        await adapter.apply(Desired({name: body}, d.secrets, d.tunnels))
        assert await adapter.initiate(T1) is True           # fire and forget: answers at once
        await until(lambda: any(isinstance(e, NegotiationFailed) for e in events), timeout=8)
        kinds = [type(e).__name__ + ":" + getattr(e, "kind", str(getattr(e, "phase", "")))
                 for e in events if isinstance(e, (CharonAlert, NegotiationFailed))]
        assert kinds == ["CharonAlert:retransmit", "CharonAlert:retransmit",
                         "CharonAlert:retransmit_timeout", "NegotiationFailed:1"]
    finally:
        await adapter.stop()


async def test_real_charon_restart_reconnects_reloads_and_resyncs(pair):
    lab, cgw, cloud = pair
    events = []
    adapter = CharonAdapter(cgw.vici, events.append, backoff=FAST)
    await adapter.start()
    try:
        await until(lambda: SaSnapshot(()) in events, timeout=10)
        await adapter.apply(cgw_desired())
        assert await adapter.initiate(T1, timeout=5.0) is True
        await until(lambda: any(isinstance(e, ChildUp) for e in events))
        events.clear()

        cgw.kill(signal.SIGKILL)                            # charon crashes
        await until(lambda: any(isinstance(e, CharonDisconnected) for e in events))
        await until(lambda: adapter.client.failed_attempts >= 1)
        cgw.start()
        await until(lambda: any(isinstance(e, SaSnapshot) for e in events), timeout=10)
        assert [type(e) for e in events[:3]] == [CharonDisconnected, CharonConnected, SaSnapshot]
        # the restarted charon got vpnd's config back before the snapshot; no SA survived
        assert events[2] == SaSnapshot((TunnelSa(T1, None, None, None, None),))
        assert "vpnd-c1-t1" in await adapter.client.get_conns()
        assert await adapter.initiate(T1, timeout=5.0) is True
        await until(lambda: any(isinstance(e, ChildUp) for e in events))
    finally:
        await adapter.stop()


async def test_real_dpd_timeout_is_a_down_event(pair):
    """Black-hole the peer in cgw (measured here: DPD 1 s + retransmits 1/2/1 -> down in about
    4 s). charon's down events still read ESTABLISHED / INSTALLED: only the missing `up` key
    marks them, and the adapter must report IkeDown and ChildDown."""
    if shutil.which("nft") is None:
        pytest.skip("needs nft")
    lab, cgw, cloud = pair
    events = []
    adapter = CharonAdapter(cgw.vici, events.append, backoff=FAST)
    await adapter.start()
    try:
        await until(lambda: SaSnapshot(()) in events, timeout=10)
        d = cgw_desired()
        name = "vpnd-c1-t1"
        body = named(name, conn(CGW, CLOUD, "10.255.1.2/32", "10.255.1.1/32", dpd="1s"))
        await adapter.apply(Desired({name: body}, d.secrets, d.tunnels))
        assert await adapter.initiate(T1, timeout=5.0) is True
        await until(lambda: any(isinstance(e, ChildUp) for e in events))
        ike_id = next(e.ike_id for e in events if isinstance(e, IkeUp))
        child_id = next(e.child_id for e in events if isinstance(e, ChildUp))
        events.clear()
        rules = (f"table inet vpv {{\n chain i {{ type filter hook input priority 0; "
                 f"ip saddr {CLOUD} drop; }}\n chain o {{ type filter hook output priority 0; "
                 f"ip daddr {CLOUD} drop; }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", cgw.netns, "nft", "-f", "-"], input=rules.encode(),
                       check=True, capture_output=True, timeout=10)
        await until(lambda: any(isinstance(e, ChildDown) for e in events), timeout=10)
        assert IkeDown(T1, ike_id, "IKE SA down (state ESTABLISHED)") in events
        assert ChildDown(T1, ike_id, child_id, "CHILD SA down (state INSTALLED)") in events
        alerts = [e.kind for e in events if isinstance(e, CharonAlert)]
        assert alerts[:1] == ["retransmit"] and "retransmit_timeout" in alerts
    finally:
        await adapter.stop()


async def test_real_rekeys_become_rekeyed_events(pair):
    lab, cgw, cloud = pair
    events = []
    adapter = CharonAdapter(cgw.vici, events.append, backoff=FAST)
    await adapter.start()
    try:
        await until(lambda: SaSnapshot(()) in events, timeout=10)
        await adapter.apply(cgw_desired())
        assert await adapter.initiate(T1, timeout=5.0) is True
        await until(lambda: any(isinstance(e, ChildUp) for e in events))
        ike_id = next(e.ike_id for e in events if isinstance(e, IkeUp))
        child_id = next(e.child_id for e in events if isinstance(e, ChildUp))

        assert await adapter.client.rekey(child="vpnd-c1-t1") == 1
        await until(lambda: any(isinstance(e, ChildRekeyed) for e in events))
        rekeyed = next(e for e in events if isinstance(e, ChildRekeyed))
        assert rekeyed.tunnel == T1 and rekeyed.old_child_id == child_id
        assert rekeyed.new_child_id > child_id

        assert await adapter.client.rekey(ike="vpnd-c1-t1") == 1
        await until(lambda: any(isinstance(e, IkeRekeyed) for e in events))
        ike_rekeyed = next(e for e in events if isinstance(e, IkeRekeyed))
        assert ike_rekeyed.tunnel == T1 and ike_rekeyed.old_ike_id == ike_id
        assert ike_rekeyed.new_ike_id > ike_id
        assert not any(isinstance(e, (NegotiationFailed, ChildDown)) for e in events)
    finally:
        await adapter.stop()

"""Failure injection for tests and the demo, done to the cloud side as the real world would.

`blackhole(n)` drops tunnel n's data path while IKE stays up (DPD keeps answering, the SAs stay
installed): the failure that IKE alone never notices. In the libipsec backend ESP travels in
UDP 4500 like IKE, so the drop is on the decrypted inner traffic (the tunnel's VXLAN), or in
policy mode (no VXLAN) on that tunnel's ESP packets told apart from IKE by the marker; in the
native backend it is everything through the cloud's XFRM interface of that tunnel, or in policy
mode that tunnel's ESP (in UDP, as the lab's config asks, or plain).
"""

from __future__ import annotations

import time

from vpnd_lab import daemons
from vpnd_lab.topology import Lab, LabError, sh


def random_phase(probe_interval: float) -> float:
    """Sleep a uniform fraction of the probe interval before a measured fault, and return it.

    A harness that waits for a probe-driven event (the first route on tunnel 1) and then a
    fixed time lands every fault at the same point of the probe schedule: in the lab just
    after a probe went out, the worst phase, so detection read ~380 ms instead of the
    uniform 300-400 ms of 100 ms x 3 (tcpdump of the probes showed it). Real faults come at
    random phases; so do the measured ones."""
    import random

    pause = random.uniform(0.0, probe_interval)
    time.sleep(pause)
    return pause


def blackhole(lab: Lab, tunnel: int, backend: str, routing: str = "route") -> None:
    _drop(lab, _blackhole_rules(lab, tunnel, backend, routing))


def esp_dead(lab: Lab, tunnel: int, backend: str, routing: str = "route") -> None:
    """Tunnel n's data path dead, its IKE SA alive (the cloud's DPD never fires): in route
    mode on libipsec that is exactly `blackhole` (the VXLAN inside the tunnel dropped); with
    the native backend the cloud's XFRM interface drops the decrypted traffic while IKE (UDP
    on the WAN) passes; in policy mode the ESP packets, told apart from IKE by the marker."""
    blackhole(lab, tunnel, backend, routing)


def only_blackhole(lab: Lab, tunnel: int, backend: str, routing: str = "route") -> None:
    """Repair every other black hole and keep (or make) tunnel n's, in one nft transaction:
    a flush followed by a new rule would open tunnel n for a moment, long enough for a probe
    to get through and make it usable."""
    _drop(lab, _blackhole_rules(lab, tunnel, backend, routing), flush=True)


def _blackhole_rules(lab: Lab, tunnel: int, backend: str, routing: str) -> list[str]:
    if routing == "policy":
        # ESP-in-UDP of that tunnel only: IKE shares port 4500 but starts with a zero
        # non-ESP marker, ESP with its (non-zero) SPI, 8 bytes into the UDP header. The
        # lab's config has nat_traversal (`encap = yes`), so kernel ESP travels in UDP too;
        # plain ESP (IP protocol 50) is dropped as well for configs without it.
        cloud = lab.plan.cloud_wan[tunnel]
        rules = [f"ip daddr {cloud} udp dport 4500 @th,64,32 != 0 drop",
                 f"ip saddr {cloud} udp sport 4500 @th,64,32 != 0 drop"]
        if backend != "libipsec":
            rules += [f"ip daddr {cloud} meta l4proto esp drop", f"ip saddr {cloud} meta l4proto esp drop"]
    elif backend == "libipsec":
        ours = lab.plan.endpoints[tunnel][0]
        rules = [f"ip saddr {ours} udp dport 4789 drop", f"ip daddr {ours} udp dport 4789 drop"]
    else:
        rules = [f'iifname "cloud{tunnel}" drop', f'oifname "cloud{tunnel}" drop']
    return rules


def _drop(lab: Lab, rules: list[str], flush: bool = False) -> None:
    """All rules in one nft transaction: both directions fail at the same instant."""
    path = lab.dir / "nft-fault.conf"
    path.write_text(("flush chain ip vpndlab blackhole\n" if flush else "")
                    + "".join(f"add rule ip vpndlab blackhole {rule}\n" for rule in rules))
    lab.exec("cloud", "nft", "-f", str(path))


def peer_unreachable(lab: Lab, tunnel: int) -> None:
    """The cloud's address of tunnel n stops answering: IKE and ESP of that tunnel dropped both
    ways (the other tunnel is untouched). Unlike `blackhole`, DPD can notice this one: it is
    the vendor procedure's best case (bench/failover.py --baseline)."""
    addr = lab.plan.cloud_wan[tunnel]
    _drop(lab, [f"ip daddr {addr} drop", f"ip saddr {addr} drop"])


def repair(lab: Lab) -> None:
    lab.exec("cloud", "nft", "flush", "chain", "ip", "vpndlab", "blackhole")


def cloud_sends_on(lab: Lab, tunnel: int | None) -> None:
    """The cloud moves what it sends to the LAN (replies included) onto tunnel n, whichever
    tunnel the traffic came in on: the vendor's "the cloud may proactively switch traffic to the
    standby tunnel". None: back to answering on the tunnel a flow arrived on. Native backend
    (the cloud's XFRM interfaces cloud0/cloud1 and per-tunnel tables)."""
    lab.exec("cloud", "nft", "flush", "chain", "ip", "vpndlab", "steer")
    if tunnel is not None:
        path = lab.dir / "nft-steer.conf"
        path.write_text(f'add rule ip vpndlab steer iifname "vpc0" meta mark set {tunnel + 1}\n')
        lab.exec("cloud", "nft", "-f", str(path))


def terminate_ike(lab: Lab, connection: str, tunnel: str) -> None:
    """The cloud deletes tunnel's IKE SA (and with it the CHILD SA)."""
    sh("swanctl", "--terminate", "--ike", f"cloud-{connection}-{tunnel}", "--force", "--timeout", "5",
       "--uri", f"unix://{daemons.vici_path(lab, 'cloud')}", check=False)


def remove_cloud_address(lab: Lab, tunnel: int) -> None:
    lab.ip("cloud", "addr", "del", f"{lab.plan.cloud_wan[tunnel]}/24", "dev", "wan0")


def netem(lab: Lab, tunnel: int, backend: str, *, delay_ms: float = 0.0, loss_percent: float = 0.0) -> None:
    """Latency and/or loss on tunnel n's traffic in the cloud (needs sch_netem: the vm
    backend's Debian kernel has it, this host's kernel may not: LabError then says so)."""
    dev = f"vxlan{tunnel + 1}" if backend == "libipsec" else f"cloud{tunnel}"
    args = ["qdisc", "replace", "dev", dev, "root", "netem"]
    if delay_ms:
        args += ["delay", f"{delay_ms}ms"]
    if loss_percent:
        args += ["loss", f"{loss_percent}%"]
    r = lab.exec("cloud", "tc", *args, check=False)
    if r.returncode != 0:
        raise LabError(f"netem on {dev}: {(r.stderr or r.stdout).strip()} "
                       "(this kernel lacks sch_netem; the vm backend's kernel has it)")


def clear_netem(lab: Lab, tunnel: int, backend: str) -> None:
    dev = f"vxlan{tunnel + 1}" if backend == "libipsec" else f"cloud{tunnel}"
    lab.exec("cloud", "tc", "qdisc", "del", "dev", dev, "root", check=False)

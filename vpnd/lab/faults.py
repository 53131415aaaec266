"""Failure injection for tests and the demo, done to the cloud side as the real world would.

`blackhole(n)` drops tunnel n's data path while IKE stays up (DPD keeps answering, the SAs stay
installed): the failure that IKE alone never notices. In the libipsec backend ESP travels in
UDP 4500 like IKE, so the drop is on the decrypted inner traffic (the tunnel's VXLAN); in the
native backend it is everything through the cloud's XFRM interface of that tunnel.
"""

from __future__ import annotations

from vpnd.lab import daemons
from vpnd.lab.topology import Lab, sh


def blackhole(lab: Lab, tunnel: int, backend: str) -> None:
    if backend == "libipsec":
        ours = lab.plan.endpoints[tunnel][0]
        rules = [f"ip saddr {ours} udp dport 4789 drop", f"ip daddr {ours} udp dport 4789 drop"]
    else:
        rules = [f'iifname "cloud{tunnel}" drop', f'oifname "cloud{tunnel}" drop']
    for rule in rules:
        lab.exec("cloud", "nft", "add", "rule", "ip", "vpndlab", "blackhole", *rule.split())


def repair(lab: Lab) -> None:
    lab.exec("cloud", "nft", "flush", "chain", "ip", "vpndlab", "blackhole")


def terminate_ike(lab: Lab, connection: str, tunnel: str) -> None:
    """The cloud deletes tunnel's IKE SA (and with it the CHILD SA)."""
    sh("swanctl", "--terminate", "--ike", f"cloud-{connection}-{tunnel}", "--force", "--timeout", "5",
       "--uri", f"unix://{daemons.vici_path(lab, 'cloud')}", check=False)


def remove_cloud_address(lab: Lab, tunnel: int) -> None:
    lab.ip("cloud", "addr", "del", f"{lab.plan.cloud_wan[tunnel]}/24", "dev", "wan0")

"""`vpnd render nft`: the MSS clamp vpnd applies in `table inet vpnd`, per connection, with
each tunnel's interface MTU and where it comes from.

A render of its own (not a section of swanctl's): the clamp is nftables', like swanctl's text
is charon's and frr's is FRR's, one rendering per system vpnd drives. Offline, an XFRM
interface's underlay MTU is unknown: 1500 is assumed (vpnd reads the real one at run time),
and the path MTU is not measured yet, so the clamp shown is the interface's; `vpnd status`
shows the running figures."""

from __future__ import annotations

from vpnd.config.model import Config
from vpnd.core.mtu import clamp_mss, interface_mtu
from vpnd.kernel import nft_text as mss_clamp


def nft_text(config: Config) -> str:
    out = []
    for conn in config.connections:
        if not mss_clamp.wanted(conn):
            out.append(f"# {conn.name}: policy mode, no tunnel interfaces: no MSS clamp\n")
            continue
        mss = {}
        for t in conn.tunnels:
            mtu = interface_mtu(conn, t, None)
            how = ("configured" if t.mtu is not None else
                   f"underlay 1500 (assumed) - ESP {conn.ipsec.encryption}/{conn.ipsec.integrity}"
                   f"{' + NAT-T' if conn.nat_traversal else ''}" if mtu is not None
                   else "interface_kind = \"existing\": the link's own MTU, read at run time")
            out.append(f"# {conn.name} {t.name}: {t.interface} mtu {mtu or '?'} ({how})")
            if mtu is not None:
                mss[t.interface] = clamp_mss(mtu)
        out.append(mss_clamp.nft_script(conn, mss))
    return "\n".join(out)

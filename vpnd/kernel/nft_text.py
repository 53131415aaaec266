"""The text of vpnd's MSS clamp in `table inet vpnd`: pure, so `vpnd render nft` (and `vpnd
check`) never load the netlink library that vpnd.kernel.mss_clamp and vpnd.kernel.return_path
need to apply it. What the rules do and why: vpnd.kernel.mss_clamp."""

from __future__ import annotations

from typing import Mapping

from vpnd.config.model import ConnectionConfig

NFT_FAMILY, NFT_TABLE = "inet", "vpnd"     # the one table vpnd owns (shared by its chains)


def chain(conn: ConnectionConfig) -> str:
    return f"mss-{conn.name}"


def wanted(conn: ConnectionConfig) -> bool:
    """Route and BGP modes: one interface per tunnel to clamp by (policy mode has none)."""
    return conn.tunnel_interfaces


def nft_rules(conn: ConnectionConfig, mss: Mapping[str, int]) -> list[str]:
    """The chain's rules; `mss`: interface -> MSS (tunnels without one are not clamped)."""
    out = []
    for t in conn.tunnels:
        n = mss.get(t.interface)
        if n is None:
            continue
        for side in ("oifname", "iifname"):
            out.append(f'{side} "{t.interface}" tcp flags syn tcp option maxseg size > {n} '
                       f"tcp option maxseg size set {n}")
    return out


def nft_script(conn: ConnectionConfig, mss: Mapping[str, int]) -> str:
    t = f"{NFT_FAMILY} {NFT_TABLE}"
    c = chain(conn)
    lines = [f"add table {t}",
             f"add chain {t} {c} {{ type filter hook forward priority mangle; policy accept; }}",
             f"flush chain {t} {c}"]
    lines += [f"add rule {t} {c} {r}" for r in nft_rules(conn, mss)]
    return "\n".join(lines) + "\n"

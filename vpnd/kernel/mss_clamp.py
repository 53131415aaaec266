"""TCP MSS clamp through vpnd's tunnels, in the nftables table vpnd already owns.

Why: when ICMP "fragmentation needed" is filtered on the path, TCP never learns that ESP
made its packets too big and large transfers stall (VyOS `adjust-mss`, pfSense/OPNsense "MSS
clamping"). Rewriting the MSS of every SYN and SYN-ACK through a tunnel makes both ends send
segments that fit, whatever ICMP does.

One base chain per connection, `mss-NAME`, at the forward hook (priority mangle) of `table
inet vpnd` (shared with vpnd.kernel.return_path's chains; each removes only its own chains
and the table once it is empty). Per tunnel, both directions:

    oifname "ipsec0" tcp flags syn tcp option maxseg size > N tcp option maxseg size set N
    iifname "ipsec0" tcp flags syn tcp option maxseg size > N tcp option maxseg size set N

N = vpnd.core.mtu.clamp_mss(interface MTU, measured path MTU). Only larger MSS values are
lowered (a host that asks for less keeps it). Applied as one `nft -f -` transaction (flush
then add: idempotent); `ensure` writes nothing when the ruleset already matches.
"""

from __future__ import annotations

from typing import Any, Mapping

from vpnd import logs
from vpnd.config.model import ConnectionConfig
from vpnd.kernel.nft_text import NFT_FAMILY, NFT_TABLE, chain, nft_rules, nft_script, wanted
from vpnd.kernel.return_path import ReturnPath, ReturnPathError

log = logs.get("vpnd.mss_clamp")


class MssClampError(ReturnPathError):
    """nft refused the clamp (the message says why)."""


def clamps_in(ruleset: dict[str, Any] | None, conn: ConnectionConfig) -> dict[str, set[int]] | None:
    """interface -> the MSS values its rules set, read from `nft -j list table inet vpnd`
    (None: the connection's chain is missing)."""
    if ruleset is None:
        return None
    items = ruleset.get("nftables", [])
    name = chain(conn)
    if not any("chain" in i and i["chain"].get("name") == name for i in items):
        return None
    out: dict[str, set[int]] = {}
    for i in items:
        rule = i.get("rule")
        if not rule or rule.get("chain") != name:
            continue
        ifname, value = None, None
        for e in rule.get("expr", []):
            m = e.get("match")
            if m and m.get("left", {}).get("meta", {}).get("key") in ("oifname", "iifname"):
                ifname = m.get("right")
            mg = e.get("mangle")
            if mg and isinstance(mg.get("value"), int):
                value = mg["value"]
        if ifname is not None and value is not None:
            out.setdefault(ifname, set()).add(value)
    return out


def nft_problems(ruleset: dict[str, Any] | None, conn: ConnectionConfig,
                 mss: Mapping[str, int]) -> list[str]:
    have = clamps_in(ruleset, conn)
    if have is None:
        return [f"nft chain {NFT_FAMILY} {NFT_TABLE} {chain(conn)} is missing"]
    out = []
    for ifname, n in mss.items():
        if have.get(ifname) != {n}:
            got = ", ".join(str(v) for v in sorted(have.get(ifname, ()))) or "none"
            out.append(f"MSS clamp on {ifname} is {got}, not {n}")
    for ifname in set(have) - set(mss):
        out.append(f"MSS clamp on {ifname} is not vpnd's")
    return out


class MssClamp:
    """One connection's clamp chain. `mss` (interface -> MSS) is set by the caller from the
    interface MTUs and the measured path MTUs; `ensure` makes nft match it."""

    def __init__(self, conn: ConnectionConfig, *, netns: str | None = None, nft: str = "nft") -> None:
        self.conn = conn
        self.mss: dict[str, int] = {}
        # nft's runner and reader are return_path's: one way vpnd talks to nft
        self._nft = ReturnPath(conn, protocol=0, netns=netns, nft=nft)

    @property
    def writes(self) -> int:
        return self._nft.writes

    async def problems(self) -> list[str]:
        if not wanted(self.conn):
            return []
        return nft_problems(await self._nft.nft_ruleset(), self.conn, self.mss)

    async def ensure(self) -> int:
        """Returns the writes it took (0 when all was in place)."""
        if not wanted(self.conn):
            return await self.remove()
        before = self.writes
        if nft_problems(await self._nft.nft_ruleset(), self.conn, self.mss):
            try:
                await self._nft._nft_apply(nft_script(self.conn, self.mss))
            except ReturnPathError as exc:
                raise MssClampError(str(exc).replace("return-path rules", "MSS clamp")) from exc
        return self.writes - before

    async def remove(self) -> int:
        """Withdraw: the connection's chain, and the table when nothing else is left in it."""
        before = self.writes
        ruleset = await self._nft.nft_ruleset()
        if ruleset is None:
            return 0
        names = {i["chain"]["name"] for i in ruleset.get("nftables", []) if "chain" in i}
        mine = chain(self.conn)
        if mine in names:
            t = f"{NFT_FAMILY} {NFT_TABLE}"
            await self._nft._nft_apply(f"delete table {t}\n" if names == {mine}
                                       else f"delete chain {t} {mine}\n")
        return self.writes - before

    def close(self) -> None:
        self._nft.close()

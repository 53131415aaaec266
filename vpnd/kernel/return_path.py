"""Replies to the cloud's health check leave by the tunnel its probe arrived on.

The cloud pings `destination_ip` (here) from `source_ip` (its side) through each tunnel and
moves its sending tunnel when one fails (the vendor's health-check documentation). Left to the routing table, every reply
would leave by the route to `source_ip`, i.e. the ACTIVE tunnel: a healthy standby would
look dead to the cloud whenever the active tunnel is, and a dead active tunnel alive while
the standby carries its replies. So, per connection with `[connection.cloud_health_check]`:

- nftables (`table inet vpnd`, two base chains per connection, `hc-in-NAME` at prerouting and
  `hc-out-NAME` at output, priority mangle): an ICMP packet source_ip -> destination_ip in
  the original direction arriving on tunnel N's interface sets its conntrack mark to N's
  mark; a reply (conntrack reply direction, destination_ip -> source_ip) whose conntrack
  carries one of the connection's marks gets it as its packet mark: at prerouting when
  destination_ip is a LAN host (the reply is forwarded), at output (a `route` chain, so the
  kernel routes again) when it is the gateway itself;
- `ip rule fwmark M lookup M` (priority RULE_PRIORITY, protocol = vpnd's route protocol), and
  table M holding `source_ip/32 dev <tunnel N's interface>`.

M is the tunnel's `if_id` (unique across vpnd's tunnels, stable across reloads). Only ICMP
between the two addresses is marked, so vpnd's own probes (egress chosen by IP_PKTINFO) and
the data traffic's routes are untouched. The nft ruleset is applied as one `nft -f -`
transaction (argument list, script on stdin); rules and routes are written over netlink.
`ensure` is idempotent and issues no write when all is in place (`writes` counts them).
"""

from __future__ import annotations

import asyncio
import errno
import json
from typing import Any

from vpnd import logs
from vpnd.config.model import ConnectionConfig
from vpnd.kernel import netlink
from vpnd.kernel.nft_text import NFT_FAMILY, NFT_TABLE

log = logs.get("vpnd.return_path")

RULE_PRIORITY = 200         # before charon's table 220 (priority 220) and main (32766)
SCOPE_LINK = 253
MARK_MASK = 0xFFFFFFFF
NFT_TIMEOUT = 10.0


class ReturnPathError(Exception):
    """nft or the kernel refused a write (the message says which and why)."""


# --- what should be there (pure) ----------------------------------------------------------

def marks(conn: ConnectionConfig) -> list[tuple[str, int]]:
    """(interface, mark = routing table) per tunnel, in tunnel order."""
    return [(t.interface, t.if_id) for t in conn.tunnels]


def chains(conn: ConnectionConfig) -> tuple[str, str]:
    return f"hc-in-{conn.name}", f"hc-out-{conn.name}"


def wanted(conn: ConnectionConfig) -> bool:
    """Route and BGP modes have one interface per tunnel to mark by; policy mode has none."""
    return conn.cloud_health_check is not None and conn.tunnel_interfaces


def nft_rules(conn: ConnectionConfig) -> dict[str, list[str]]:
    """Chain -> its rules, in nft syntax."""
    chc = conn.cloud_health_check
    cin, cout = chains(conn)
    src, dst = chc.source_ip, chc.destination_ip
    ours = ", ".join(str(m) for _, m in marks(conn))
    restore = (f"ip saddr {dst} ip daddr {src} meta l4proto icmp ct direction reply "
               f"ct mark {{ {ours} }} meta mark set ct mark")
    marking = [f'iifname "{ifname}" ip saddr {src} ip daddr {dst} meta l4proto icmp '
               f"ct direction original ct mark set {mark}" for ifname, mark in marks(conn)]
    return {cin: marking + [restore], cout: [restore]}


def nft_script(conn: ConnectionConfig) -> str:
    """One transaction: the table and the connection's chains exist, holding exactly these
    rules (flush, then add: applying it twice gives the same ruleset)."""
    cin, cout = chains(conn)
    t = f"{NFT_FAMILY} {NFT_TABLE}"
    lines = [f"add table {t}",
             f"add chain {t} {cin} {{ type filter hook prerouting priority mangle; policy accept; }}",
             f"add chain {t} {cout} {{ type route hook output priority mangle; policy accept; }}",
             f"flush chain {t} {cin}", f"flush chain {t} {cout}"]
    for chain, rules in nft_rules(conn).items():
        lines += [f"add rule {t} {chain} {r}" for r in rules]
    return "\n".join(lines) + "\n"


def nft_problems(ruleset: dict[str, Any] | None, conn: ConnectionConfig) -> list[str]:
    """What is missing from `nft -j list table inet vpnd` output (None: no table)."""
    if ruleset is None:
        return [f"nft table {NFT_FAMILY} {NFT_TABLE} is missing"]
    have: dict[str, int] = {}
    for item in ruleset.get("nftables", []):
        if "chain" in item and item["chain"].get("table") == NFT_TABLE:
            have.setdefault(item["chain"]["name"], 0)
        elif "rule" in item and item["rule"].get("table") == NFT_TABLE:
            name = item["rule"]["chain"]
            have[name] = have.get(name, 0) + 1
    out = []
    for chain, rules in nft_rules(conn).items():
        if chain not in have:
            out.append(f"nft chain {NFT_FAMILY} {NFT_TABLE} {chain} is missing")
        elif have[chain] != len(rules):
            out.append(f"nft chain {chain} has {have[chain]} rules, not {len(rules)}")
    return out


def rule_key(m: Any) -> tuple[int, int] | None:
    """(fwmark, table) of an IPv4 `fwmark M lookup T` rule at vpnd's priority, else None."""
    if m.get("family") != 2:
        return None
    prio = m.get("priority") if m.get("priority") is not None else m.get("FRA_PRIORITY")
    if prio != RULE_PRIORITY:
        return None
    mark = m.get("FRA_FWMARK")
    table = m.get("FRA_TABLE") or m.get("table")
    if mark is None or table is None:
        return None
    return mark, table


# --- the kernel ---------------------------------------------------------------------------

class ReturnPath:
    """One connection's reply marking: nft chains, fwmark rules, per-tunnel tables."""

    def __init__(self, conn: ConnectionConfig, *, protocol: int, netns: str | None = None,
                 nft: str = "nft") -> None:
        self.conn = conn
        self.protocol = protocol
        self.netns = netns
        self.nft = nft
        self.writes = 0
        self._ipr: Any = None

    async def _rtnl(self) -> Any:
        if self._ipr is None:
            self._ipr = await netlink.open_rtnl(self.netns)
        return self._ipr

    # --- nft --------------------------------------------------------------------------------

    async def _run_nft(self, *args: str, script: str | None = None) -> tuple[int, str, str]:
        argv = ([] if self.netns is None else ["ip", "netns", "exec", self.netns]) + [self.nft, *args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE if script is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise ReturnPathError(f"cannot run {self.nft}: {exc.strerror or exc}") from exc
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(script.encode() if script is not None else None), NFT_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise ReturnPathError(f"{self.nft} {' '.join(args)} did not finish in {NFT_TIMEOUT:g} s")
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    async def nft_ruleset(self) -> dict[str, Any] | None:
        rc, out, _ = await self._run_nft("-j", "list", "table", NFT_FAMILY, NFT_TABLE)
        if rc != 0:
            return None
        try:
            return json.loads(out)
        except ValueError:
            return None

    async def _nft_apply(self, script: str) -> None:
        rc, _, err = await self._run_nft("-f", "-", script=script)
        if rc != 0:
            raise ReturnPathError(f"nft refused the return-path rules: {err.strip()}")
        self.writes += 1

    # --- rules and tables -------------------------------------------------------------------

    async def _rules(self) -> set[tuple[int, int]]:
        ipr = await self._rtnl()
        out = set()
        async for m in await ipr.rule("dump"):
            key = rule_key(m)
            if key is not None and m.get("FRA_PROTOCOL") == self.protocol:
                out.add(key)
        return out

    async def _rule(self, op: str, mark: int, table: int) -> None:
        ipr = await self._rtnl()
        try:
            await ipr.rule(op, fwmark=mark, fwmask=MARK_MASK, table=table,
                           priority=RULE_PRIORITY, protocol=self.protocol)
        except Exception as exc:
            code = getattr(exc, "code", None)
            if (op == "del" and code in (errno.ENOENT, errno.ESRCH)) or (op == "add" and code == errno.EEXIST):
                return
            raise ReturnPathError(f"ip rule {op} fwmark {mark} lookup {table}: {exc}") from exc
        self.writes += 1

    async def _table_routes(self, table: int) -> dict[str, int | None]:
        """dst -> oif of vpnd's routes in `table`. Read with iproute2, whose dump the kernel
        filters by table (strict checking): pyroute2 0.9 dumps every route of every table
        and filters in Python, 2.7 s for one table on a box with 50,000 routes elsewhere."""
        argv = ([] if self.netns is None else ["ip", "netns", "exec", self.netns]) + [
            "ip", "-j", "route", "show", "table", str(table), "proto", str(self.protocol)]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), NFT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ReturnPathError(f"cannot read routing table {table}: {exc}") from exc
        if proc.returncode != 0:
            if b"FIB table does not exist" in err:
                return {}
            raise ReturnPathError(f"cannot read routing table {table}: {err.decode().strip()}")
        try:
            routes = json.loads(out.strip() or b"[]")
        except ValueError as exc:
            raise ReturnPathError(f"routing table {table}: unreadable answer") from exc
        names = {}
        for r in routes:
            dst = r.get("dst", "")
            dst = dst if "/" in dst else ("0.0.0.0/0" if dst == "default" else f"{dst}/32")
            names[dst] = r.get("dev")
        return {dst: await self._ifindex(dev) if dev else None for dst, dev in names.items()}

    async def _ifindex(self, ifname: str) -> int | None:
        ipr = await self._rtnl()
        try:
            reply = await ipr.link("get", ifname=ifname)
        except Exception:       # ENODEV: not there (yet)
            return None
        links = [l async for l in reply] if hasattr(reply, "__aiter__") else list(reply)
        return links[0]["index"] if links else None

    async def _route(self, op: str, dst: str, table: int, oif: int | None = None) -> None:
        ipr = await self._rtnl()
        kw: dict[str, Any] = dict(dst=dst, table=table, proto=self.protocol, scope=SCOPE_LINK)
        if oif is not None:
            kw["oif"] = oif
        try:
            await ipr.route(op, **kw)
        except Exception as exc:
            if op == "del" and getattr(exc, "code", None) == errno.ESRCH:
                return
            raise ReturnPathError(f"route {op} {dst} table {table}: {exc}") from exc
        self.writes += 1

    # --- what the steering calls ------------------------------------------------------------

    async def problems(self) -> list[str]:
        """What is not as it should be (empty: all in place); reads only."""
        if not wanted(self.conn):
            return []
        out = nft_problems(await self.nft_ruleset(), self.conn)
        rules = await self._rules()
        src = f"{self.conn.cloud_health_check.source_ip}/32"
        for ifname, mark in marks(self.conn):
            if (mark, mark) not in rules:
                out.append(f"rule fwmark {mark} lookup {mark} is missing")
            oif = await self._ifindex(ifname)
            routes = await self._table_routes(mark)
            if src not in routes or (oif is not None and routes[src] != oif):
                out.append(f"route {src} dev {ifname} table {mark} is missing")
        return out

    async def ensure(self) -> int:
        """Make the kernel match; returns the writes it took (0 when all was in place)."""
        if not wanted(self.conn):
            return await self.remove()
        before = self.writes
        if nft_problems(await self.nft_ruleset(), self.conn):
            await self._nft_apply(nft_script(self.conn))
        rules = await self._rules()
        src = f"{self.conn.cloud_health_check.source_ip}/32"
        for ifname, mark in marks(self.conn):
            if (mark, mark) not in rules:
                await self._rule("add", mark, mark)
            oif = await self._ifindex(ifname)
            routes = await self._table_routes(mark)
            if oif is None:
                log.warning("return_path.interface_missing", connection=self.conn.name,
                            interface=ifname)
            elif routes.get(src) != oif:
                await self._route("replace", src, mark, oif)
            for dst in routes:
                if dst != src:
                    await self._route("del", dst, mark)
        return self.writes - before

    async def reconfigure(self, conn: ConnectionConfig) -> int:
        """Marks (if_ids) or addresses changed: what the old config made and the new one
        does not want goes; the rest converges."""
        old, self.conn = self.conn, conn
        n = 0
        new_marks = {m for _, m in marks(conn)} if wanted(conn) else set()
        for _, mark in marks(old):
            if mark not in new_marks:
                n += await self._drop_mark(mark)
        return n + await self.ensure()

    async def _drop_mark(self, mark: int) -> int:
        before = self.writes
        if (mark, mark) in await self._rules():
            await self._rule("del", mark, mark)
        for dst in await self._table_routes(mark):
            await self._route("del", dst, mark)
        return self.writes - before

    async def remove(self) -> int:
        """Withdraw: the connection's chains (and the table once empty), rules and tables."""
        before = self.writes
        ruleset = await self.nft_ruleset()
        if ruleset is not None:
            names = {i["chain"]["name"] for i in ruleset.get("nftables", []) if "chain" in i}
            mine = [c for c in chains(self.conn) if c in names]
            if mine:
                t = f"{NFT_FAMILY} {NFT_TABLE}"
                script = "".join(f"delete chain {t} {c}\n" for c in mine)
                if not names - set(mine):
                    script = f"delete table {t}\n"
                await self._nft_apply(script)
        for _, mark in marks(self.conn):
            await self._drop_mark(mark)
        return self.writes - before

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

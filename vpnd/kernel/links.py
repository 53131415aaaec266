"""Tunnel interfaces: the XFRM interfaces vpnd owns (the vendor's strongSwan guide's rc.local script, made to stay).

`interface_kind = "xfrm"`: vpnd creates `ipsecN` (`type xfrm dev <underlay> if_id N`), brings
it up and gives it the tunnel's BGP address; when someone deletes it, link events report
`InterfaceLost` and the core asks for it back. `interface_kind = "existing"`: the link belongs
to someone else (the lab's VXLAN links, a VTI): vpnd only brings it up, adds the address and
reports when it goes away. The MTU: vpnd.core.mtu.interface_mtu (`mtu`, or the underlay's
minus the ESP overhead on vpnd's own XFRM interfaces). A kernel without XFRM interfaces gets one clear error naming the
missing feature instead of a netlink errno.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any, Callable

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK

from vpnd import logs

from vpnd.kernel import netlink, sysctl
from vpnd.config.model import ConnectionConfig, TunnelConfig
from vpnd.core.events import InterfaceLost, TunnelKey
from vpnd.core.mtu import interface_mtu

log = logs.get("vpnd.links")


class LinkError(Exception):
    """A tunnel interface could not be created or configured."""


class XfrmUnsupported(LinkError):
    def __init__(self, ifname: str) -> None:
        super().__init__(
            f"cannot create {ifname}: this kernel has no XFRM interfaces (CONFIG_XFRM_INTERFACE, "
            "module xfrm_interface). Load the module, use a kernel that has it, or set "
            'interface_kind = "existing" and provide the tunnel interface yourself')


class LinkKeeper:
    def __init__(self, conn: ConnectionConfig, *, netns: str | None = None,
                 on_event: Callable[[Any], None] = lambda e: None) -> None:
        self.conn = conn
        self.netns = netns
        self.on_event = on_event
        self.created = 0
        self._ipr: AsyncIPRoute | None = None
        self._watch: netlink.Listener | None = None
        self._by_name = {t.interface: t for t in conn.tunnels}

    async def start(self) -> None:
        self._ipr = await netlink.open_rtnl(self.netns)
        self._watch = await netlink.listen(self.netns, RTMGRP_LINK, self._on_message, self._overrun,
                                           name=f"links-{self.conn.name}")
        for t in self.conn.tunnels:
            try:
                await self.ensure(t)
            except LinkError as err:
                log.error("links.unavailable", connection=self.conn.name, tunnel=t.name, error=str(err))

    async def stop(self) -> None:
        """Leaves the interfaces: traffic keeps flowing while vpnd restarts."""
        if self._watch is not None:
            await self._watch.close()
            self._watch = None
        if self._ipr is not None:
            self._ipr.close()

    async def remove(self, keep: set[str] = frozenset()) -> list[str]:
        """Stop watching; delete the XFRM interfaces vpnd made (not `keep`, not someone
        else's). Used when a reload removes a connection or changes its interfaces."""
        if self._watch is not None:
            await self._watch.close()
            self._watch = None
        gone = []
        for t in self.conn.tunnels:
            if t.interface_kind != "xfrm" or t.interface in keep:
                continue
            idx = await self._index(t.interface)
            if idx is not None:
                try:
                    await self._ipr.link("del", index=idx)
                    gone.append(t.interface)
                except Exception as exc:
                    log.warning("links.remove_failed", interface=t.interface, error=str(exc))
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if gone:
            log.info("links.removed", connection=self.conn.name, interfaces=gone)
        return gone

    def tunnel(self, name: str) -> TunnelConfig | None:
        return next((t for t in self.conn.tunnels if t.name == name), None)

    async def _index(self, ifname: str) -> int | None:
        assert self._ipr is not None
        try:
            reply = await self._ipr.link("get", ifname=ifname)
        except Exception:          # ENODEV: no such interface
            return None
        links = [l async for l in reply] if hasattr(reply, "__aiter__") else list(reply)
        return links[0]["index"] if links else None

    async def ensure(self, t: TunnelConfig) -> None:
        """The interface exists (created if it is ours), is up and has the tunnel's address."""
        assert self._ipr is not None
        idx = await self._index(t.interface)
        if idx is None:
            if t.interface_kind != "xfrm":
                raise LinkError(f"{t.interface} does not exist (interface_kind = \"existing\": "
                                "vpnd waits for it)")
            kw: dict[str, Any] = dict(ifname=t.interface, kind="xfrm", xfrm_if_id=t.if_id)
            if t.underlay:
                under = await self._index(t.underlay)
                if under is None:
                    raise LinkError(f"underlay device {t.underlay} of {t.interface} does not exist")
                kw["xfrm_link"] = under
            try:
                await self._ipr.link("add", **kw)
            except Exception as exc:
                code = getattr(exc, "code", None)
                if code in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENODEV):
                    raise XfrmUnsupported(t.interface) from exc
                raise LinkError(f"creating {t.interface}: {exc}") from exc
            self.created += 1
            idx = await self._index(t.interface)
            log.info("links.created", interface=t.interface, if_id=t.if_id, underlay=t.underlay)
            if idx is None:
                raise LinkError(f"{t.interface} vanished right after it was created")
        await self._set_mtu(t, idx)
        await self._ipr.link("set", index=idx, state="up")
        if t.bgp is not None:
            try:
                await self._ipr.addr("add", index=idx, address=str(t.bgp.local_ip),
                                     prefixlen=t.bgp.tunnel_cidr.prefixlen)
            except Exception as exc:
                if getattr(exc, "code", None) != errno.EEXIST:
                    raise LinkError(f"address {t.bgp.local_ip} on {t.interface}: {exc}") from exc

    async def _link(self, ifname: str) -> Any:
        try:
            reply = await self._ipr.link("get", ifname=ifname)
        except Exception:          # ENODEV
            return None
        links = [l async for l in reply] if hasattr(reply, "__aiter__") else list(reply)
        return links[0] if links else None

    async def mtu(self, ifname: str) -> int | None:
        """The interface's MTU as the kernel has it (None: no such interface)."""
        link = await self._link(ifname) if self._ipr is not None else None
        return link.get_attr("IFLA_MTU") if link is not None else None

    async def _set_mtu(self, t: TunnelConfig, idx: int) -> None:
        """vpnd.core.mtu.interface_mtu: `mtu`, or the underlay's minus ESP on vpnd's XFRM
        interfaces; someone else's link without `mtu` keeps its own."""
        under = await self.mtu(t.underlay) if t.underlay else None
        want = interface_mtu(self.conn, t, under)
        if want is None or await self.mtu(t.interface) == want:
            return
        try:
            await self._ipr.link("set", index=idx, mtu=want)
        except Exception as exc:
            raise LinkError(f"mtu {want} on {t.interface}: {exc}") from exc
        log.info("links.mtu_set", interface=t.interface, mtu=want, underlay_mtu=under)

    async def _on_message(self, m: Any) -> None:
        if m.get("event") == "RTM_DELLINK":
            t = self._by_name.get(m.get("ifname"))
            if t is not None:
                log.warning("links.lost", interface=t.interface, tunnel=t.name)
                self.on_event(InterfaceLost(TunnelKey(self.conn.name, t.name), t.interface))

    async def _overrun(self) -> None:
        """Link events were dropped: whatever went missing meanwhile is reported now."""
        for t in self.conn.tunnels:
            if await self._index(t.interface) is None:
                self.on_event(InterfaceLost(TunnelKey(self.conn.name, t.name), t.interface))

def rp_filter_warnings(interfaces: list[str], proc: Path = sysctl.IPV4_CONF) -> list[str]:
    """Strict reverse-path filtering drops replies that come back on the other tunnel while
    vpnd switches (vpnd.kernel.sysctl.rp_filter says how the effective value is found)."""
    return [f"rp_filter is strict (1) on {ifname}: during a switch, return traffic "
            f"arriving on the other tunnel is dropped; set net.ipv4.conf.{ifname}.rp_filter=2 "
            "(loose) or 0, and net.ipv4.conf.all.rp_filter to 0 or 2"
            for ifname in sysctl.strict_rp_filter(interfaces, proc)]

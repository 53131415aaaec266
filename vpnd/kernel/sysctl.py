"""The few kernel settings vpnd reads (`/proc/sys/net/...`), for the daemon and `vpnd doctor`.

By path rather than `sysctl`, since interface names may contain dots (eth0.100). No pyroute2
here: the doctor imports this and must start fast.
"""

from __future__ import annotations

from pathlib import Path

IPV4_CONF = Path("/proc/sys/net/ipv4/conf")


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def ipv4_conf(ifname: str, key: str, proc: Path = IPV4_CONF) -> int | None:
    """net.ipv4.conf.IF.KEY, None when the interface (or the key) does not exist."""
    return read_int(proc / ifname / key)


def rp_filter(ifname: str, proc: Path = IPV4_CONF) -> int:
    """The effective reverse-path filter of an interface: the higher of `all` and its own.
    An interface that does not exist yet (vpnd creates it later) will start from `default`."""
    own = ipv4_conf(ifname, "rp_filter", proc)
    if own is None:
        own = ipv4_conf("default", "rp_filter", proc) or 0
    return max(ipv4_conf("all", "rp_filter", proc) or 0, own)


def strict_rp_filter(interfaces: list[str], proc: Path = IPV4_CONF) -> list[str]:
    """The interfaces whose effective rp_filter is strict (1): during a switch, replies that
    arrive on the other tunnel are dropped there."""
    return [i for i in interfaces if rp_filter(i, proc) == 1]


def sysctl(name: str, proc: Path = Path("/proc/sys")) -> int | None:
    """A dotted sysctl name (net.ipv4.ip_forward) as an integer, None when unreadable."""
    return read_int(proc / name.replace(".", "/"))

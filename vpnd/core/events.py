"""Typed facts the pure core consumes. Adapters translate what they hear into these.

Events carry no timestamps: the core is called as `decide(state, event, now)`, so tests
control time and nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple


class TunnelKey(NamedTuple):
    connection: str
    tunnel: str

    def __str__(self) -> str:
        return f"{self.connection}/{self.tunnel}"


# --- charon, over VICI ------------------------------------------------------------------

@dataclass(frozen=True)
class CharonConnected:
    """A (re)connected VICI session; a full SaSnapshot follows."""


@dataclass(frozen=True)
class CharonDisconnected:
    reason: str


@dataclass(frozen=True)
class IkeUp:
    tunnel: TunnelKey
    ike_id: int                     # charon's unique id of the IKE SA


@dataclass(frozen=True)
class IkeDown:
    tunnel: TunnelKey
    ike_id: int
    reason: str


@dataclass(frozen=True)
class ChildUp:
    tunnel: TunnelKey
    ike_id: int
    child_id: int                   # charon's unique id of the CHILD SA


@dataclass(frozen=True)
class ChildDown:
    tunnel: TunnelKey
    ike_id: int
    child_id: int
    reason: str


@dataclass(frozen=True)
class IkeRekeyed:
    tunnel: TunnelKey
    old_ike_id: int
    new_ike_id: int


@dataclass(frozen=True)
class ChildRekeyed:
    tunnel: TunnelKey
    old_child_id: int
    new_child_id: int


@dataclass(frozen=True)
class NegotiationFailed:
    """Phase 1 = the IKE SA failed (PSK, IKE proposal, ids); phase 2 = the CHILD SA failed."""

    tunnel: TunnelKey
    phase: Literal[1, 2]
    reason: str


@dataclass(frozen=True)
class CharonAlert:
    """Early evidence from charon's log stream (retransmits): may shorten budgets, never switches."""

    tunnel: TunnelKey
    kind: Literal["retransmit", "retransmit_timeout"]
    message: str


@dataclass(frozen=True)
class TunnelSa:
    tunnel: TunnelKey
    ike_id: int | None
    ike_state: str | None           # ESTABLISHED, CONNECTING, ... as charon says
    child_id: int | None
    child_state: str | None         # INSTALLED, ...


@dataclass(frozen=True)
class SaSnapshot:
    """The whole truth from `list-sas` after every (re)connect and on the resync timer."""

    sas: tuple[TunnelSa, ...]


# --- probes and BGP ------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeResult:
    tunnel: TunnelKey
    ok: bool
    rtt: float | None = None        # seconds
    # the tunnel (of the same connection) the answer came back through: the cloud picks its
    # return tunnel, so tunnel 2's probe may be answered through tunnel 1. None: unknown (a
    # loss, policy mode without tunnel interfaces, a TCP probe, another interface)
    via: str | None = None


@dataclass(frozen=True)
class BgpSessionChanged:
    tunnel: TunnelKey
    established: bool


@dataclass(frozen=True)
class BfdChanged:
    tunnel: TunnelKey
    up: bool


# --- the kernel, over netlink ---------------------------------------------------------------

@dataclass(frozen=True)
class OwnedRouteLost:
    """A route vpnd owns was deleted or changed by someone else."""

    connection: str
    prefix: str


@dataclass(frozen=True)
class InterfaceLost:
    tunnel: TunnelKey
    interface: str


@dataclass(frozen=True)
class XfrmInTmplMismatch:
    """/proc/net/xfrm_stat's XfrmInTmplMismatch rose: IPsec packets arrived on an SA that the
    matching inbound policy does not name. In policy mode that is the cloud sending on the
    tunnel vpnd does not use (the vendor's guide: "traffic has been switched"). Host-wide: no tunnel."""

    total: int
    delta: int


# --- operators and time ---------------------------------------------------------------------

@dataclass(frozen=True)
class Adopted:
    """At start vpnd found traffic already steered onto this tunnel (its own routes in the
    kernel, FRR's route-maps): a restarted vpnd keeps it there instead of re-deciding from
    scratch, so a restart moves nothing that the rules would not move anyway."""

    tunnel: TunnelKey


@dataclass(frozen=True)
class Drain:
    tunnel: TunnelKey


@dataclass(frozen=True)
class Undrain:
    tunnel: TunnelKey


@dataclass(frozen=True)
class ForceFailover:
    to: TunnelKey


@dataclass(frozen=True)
class Tick:
    """Time passed: lets timers (backoff, preempt delay) fire. Sent at the deadline the core asked for."""


Event = (
    CharonConnected | CharonDisconnected | IkeUp | IkeDown | ChildUp | ChildDown | IkeRekeyed
    | ChildRekeyed | NegotiationFailed | CharonAlert | SaSnapshot | ProbeResult | Adopted
    | BgpSessionChanged | BfdChanged | OwnedRouteLost | InterfaceLost | XfrmInTmplMismatch
    | Drain | Undrain | ForceFailover | Tick
)

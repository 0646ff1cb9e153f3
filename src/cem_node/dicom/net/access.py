"""Who may open an association with the node: a pure decision per request.

The checks, in order, and what a rejected requestor is told (PS3.8 9.3.4,
A-ASSOCIATE-RJ result / source / reason):

1. the called AE title must be the node's (when ``node.require_called_ae_title``):
   rejected-permanent, service-user, "called-AE-title-not-recognized" (7);
2. the calling AE title must be a source peer's (unless
   ``node.accept_unknown_sources``): rejected-permanent, service-user,
   "calling-AE-title-not-recognized" (3);
3. the connection must come from that peer's host (a name, an address or a
   network): rejected-permanent, service-user, "no-reason-given" (1) -- the
   standard has no reason for an address, and a stranger learns nothing.

Too many simultaneous associations (``node.max_associations``) are refused by
the SCP, after these checks: rejected-transient, service-provider
(presentation), "local-limit-exceeded" (2). Connections that never send an
A-ASSOCIATE-RQ are dealt with earlier, by :mod:`cem_node.dicom.net.admission`.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cem_node.peers import PeerEntry

__all__ = [
    "AccessDecision",
    "AssociationRequest",
    "Rejection",
    "address_matches",
    "decide_association",
    "host_networks",
    "normalise_address",
]


@dataclass(frozen=True, slots=True)
class AssociationRequest:
    """What the node knows of an association request when deciding."""

    calling_ae_title: str
    called_ae_title: str
    address: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """The A-ASSOCIATE-RJ parameters (PS3.8 Table 9-21)."""

    result: int  # 1 rejected-permanent, 2 rejected-transient
    source: int  # 1 service-user, 2 service-provider (ACSE), 3 (presentation)
    diagnostic: int


CALLED_AE_NOT_RECOGNISED = Rejection(1, 1, 7)
CALLING_AE_NOT_RECOGNISED = Rejection(1, 1, 3)
NO_REASON_GIVEN = Rejection(1, 1, 1)
#: rejected-transient, service-provider (presentation), local-limit-exceeded
TOO_MANY_ASSOCIATIONS = Rejection(2, 3, 2)


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """Accept or reject, why, and which peer the requestor is."""

    accepted: bool
    reason: str
    peer: str | None = None
    rejection: Rejection | None = None


Resolver = Callable[[str], frozenset[str]]


#: how long a host name's addresses are trusted (a peer's address may change)
RESOLVE_TTL_S = 60.0
_RESOLVED: dict[str, tuple[float, frozenset[str]]] = {}
_RESOLVED_LOCK = threading.Lock()


def resolve_host(host: str) -> frozenset[str]:
    """Return the addresses of a host name (empty when it does not resolve).

    Answers are cached for :data:`RESOLVE_TTL_S` seconds, failures too, so a
    burst of associations costs one lookup and a moved peer is seen again
    within a minute.
    """
    now = time.monotonic()
    with _RESOLVED_LOCK:
        cached = _RESOLVED.get(host)
    if cached is not None and now - cached[0] < RESOLVE_TTL_S:
        return cached[1]
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        addresses = frozenset(str(info[4][0]) for info in infos)
    except OSError:
        addresses = frozenset()
    with _RESOLVED_LOCK:
        if len(_RESOLVED) > 1024:
            _RESOLVED.clear()
        _RESOLVED[host] = (now, addresses)
    return addresses


def normalise_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address as an ``ipaddress`` object (IPv4-mapped IPv6 as IPv4), or None."""
    try:
        parsed = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    return parsed


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(text: str) -> Network | None:
    try:
        network = ipaddress.ip_network(text.split("%", 1)[0], strict=False)
    except ValueError:
        return None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen == 128:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:  # ::ffff:10.0.0.1 is 10.0.0.1
            return ipaddress.ip_network(mapped)
    return network


def host_networks(host: str, *, resolve: Resolver = resolve_host) -> tuple[Network, ...]:
    """The networks a peer's ``host`` stands for.

    ``host`` is an address (one address wide), a network in CIDR form
    (``10.1.2.0/24``) or a host name (its addresses, through ``resolve``).
    """
    direct = _network(host)
    if direct is not None:
        return (direct,)
    return tuple(n for a in resolve(host) if (n := _network(a)) is not None)


def address_matches(address: str, host: str, *, resolve: Resolver = resolve_host) -> bool:
    """Return whether a connection from ``address`` comes from ``host`` (see
    :func:`host_networks`)."""
    remote = normalise_address(address)
    return remote is not None and any(remote in n for n in host_networks(host, resolve=resolve))


def decide_association(
    request: AssociationRequest,
    *,
    node_ae_title: str,
    require_called_ae_title: bool,
    sources: Sequence[PeerEntry],
    accept_unknown_sources: bool = False,
    resolve: Resolver = resolve_host,
) -> AccessDecision:
    """Decide whether to accept an association request.

    Parameters
    ----------
    request
        Calling and called AE titles (as received, trailing spaces removed)
        and the remote address.
    node_ae_title
        The node's own AE title.
    require_called_ae_title
        Reject requests addressed to another AE title.
    sources
        The source peers (the allow-list of AE titles and hosts).
    accept_unknown_sources
        Accept any calling AE title and address (a test bench).
    resolve
        Host name resolver (injected by tests).

    Returns
    -------
    AccessDecision
        The decision and a reason fit for the audit trail.
    """
    calling, called = request.calling_ae_title.strip(), request.called_ae_title.strip()
    if require_called_ae_title and called != node_ae_title.strip():
        return AccessDecision(
            False,
            f"called AE title {called!r} is not this node's ({node_ae_title.strip()!r})",
            rejection=CALLED_AE_NOT_RECOGNISED,
        )
    candidates = [p for p in sources if p.ae_title.strip() == calling]
    if not candidates:
        if accept_unknown_sources:
            return AccessDecision(
                True, f"calling AE title {calling!r} accepted: node accepts unknown sources"
            )
        return AccessDecision(
            False,
            f"calling AE title {calling!r} is not a source peer",
            rejection=CALLING_AE_NOT_RECOGNISED,
        )
    for peer in candidates:
        if address_matches(request.address, peer.host, resolve=resolve):
            return AccessDecision(
                True,
                f"source peer {peer.name} ({calling} from {request.address})",
                peer=peer.name,
            )
    if accept_unknown_sources:
        return AccessDecision(
            True,
            f"calling AE title {calling!r} from {request.address} accepted: node accepts "
            "unknown sources",
        )
    hosts = ", ".join(sorted({p.host for p in candidates}))
    return AccessDecision(
        False,
        f"calling AE title {calling!r} is allowed only from {hosts}, not from {request.address}",
        peer=candidates[0].name,
        rejection=NO_REASON_GIVEN,
    )

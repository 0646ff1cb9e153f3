"""The node's peers: sources that may send studies, destinations for results.

Peers come from two places: the ``[[peers]]`` tables of the config file
(read-only at run time) and the database (``cem-node peers add|remove``,
taken into account by a running node within seconds). Names are unique
across both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from cem_node.config import Peer as PeerConfig
from cem_node.config import Settings
from cem_node.store.audit import record_event
from cem_node.store.models import Peer as PeerRow
from cem_node.store.models import PeerRole

__all__ = [
    "PeerEntry",
    "PeerError",
    "add_peer",
    "find_peer",
    "list_peers",
    "remove_peer",
]

Origin = Literal["config", "database"]


class PeerError(ValueError):
    """A peer cannot be added, found or removed; the message says why."""


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """A peer, whichever place it was defined in."""

    name: str
    ae_title: str
    host: str
    port: int
    role: Literal["source", "destination"]
    tls: bool
    objects: tuple[str, ...] | None
    origin: Origin
    description: str | None = None


def _from_config(peer: PeerConfig) -> PeerEntry:
    return PeerEntry(
        name=peer.name,
        ae_title=peer.ae_title,
        host=peer.host,
        port=peer.port,
        role=peer.role,
        tls=peer.tls,
        objects=tuple(peer.objects) if peer.objects is not None else None,
        origin="config",
    )


def _from_row(row: PeerRow) -> PeerEntry:
    return PeerEntry(
        name=row.name,
        ae_title=row.ae_title,
        host=row.host,
        port=row.port,
        role=row.role.value,  # type: ignore[arg-type]
        tls=row.tls,
        objects=None,
        origin="database",
        description=row.description,
    )


def list_peers(settings: Settings, session: Session) -> list[PeerEntry]:
    """Return every peer, config-file peers first, each group sorted by name."""
    configured = sorted((_from_config(p) for p in settings.peers), key=lambda p: p.name)
    stored = [_from_row(r) for r in session.scalars(select(PeerRow).order_by(PeerRow.name))]
    return configured + stored


def find_peer(settings: Settings, session: Session, name: str) -> PeerEntry:
    """Return the peer called ``name``.

    Raises
    ------
    PeerError
        If there is none; the message lists the known names.
    """
    peers = list_peers(settings, session)
    for peer in peers:
        if peer.name == name:
            return peer
    known = ", ".join(p.name for p in peers) or "none; add one with `cem-node peers add`"
    raise PeerError(f"no peer named {name!r} (known: {known})")


def add_peer(
    settings: Settings,
    session: Session,
    *,
    name: str,
    ae_title: str,
    host: str,
    port: int,
    role: Literal["source", "destination"],
    tls: bool = False,
    description: str | None = None,
    actor: str = "admin",
) -> PeerEntry:
    """Validate and store a new peer (in ``session``), and audit it.

    Raises
    ------
    PeerError
        If a value is invalid (the message names the field) or the name is taken.
    """
    try:
        checked = PeerConfig(name=name, ae_title=ae_title, host=host, port=port, role=role, tls=tls)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise PeerError(problems) from None
    if tls and not settings.tls.enabled and role == "source":
        raise PeerError(
            "a TLS source needs the node's TLS listener: enable [tls] with a certificate "
            "and key in the node config"
        )
    existing = {p.name: p for p in list_peers(settings, session)}
    if name in existing:
        where = "the config file" if existing[name].origin == "config" else "the database"
        raise PeerError(f"a peer named {name!r} already exists (in {where})")
    row = PeerRow(
        name=checked.name,
        ae_title=checked.ae_title,
        host=checked.host,
        port=checked.port,
        role=PeerRole(role),
        tls=checked.tls,
        description=description,
    )
    session.add(row)
    session.flush()
    record_event(
        session,
        "peer_added",
        decision="accepted",
        actor=actor,
        message=f"peer {name} added: {ae_title}@{host}:{port} ({role}{', TLS' if tls else ''})",
        details={"name": name, "ae_title": ae_title, "host": host, "port": port, "role": role},
    )
    return _from_row(row)


def remove_peer(settings: Settings, session: Session, name: str, *, actor: str = "admin") -> None:
    """Delete a database peer (in ``session``) and audit it.

    Raises
    ------
    PeerError
        If the peer is unknown or defined in the config file.
    """
    row = session.scalar(select(PeerRow).where(PeerRow.name == name))
    if row is None:
        if any(p.name == name for p in settings.peers):
            raise PeerError(
                f"peer {name!r} is defined in the config file; remove its [[peers]] table there"
            )
        find_peer(settings, session, name)  # raises with the list of known names
        raise PeerError(f"no peer named {name!r}")  # pragma: no cover - find_peer raised
    session.delete(row)
    record_event(
        session,
        "peer_removed",
        decision="accepted",
        actor=actor,
        message=f"peer {name} removed ({row.ae_title}@{row.host}:{row.port}, {row.role.value})",
    )

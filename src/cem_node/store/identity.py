"""The identity of a running node, unique by default and held for the process's life.

A node's identity names its claims on jobs and exports, its audit events
and the files it owns in the store (its in-flight receptions and temporary
files, see :mod:`cem_node.store.instance_files`). Two running processes
with one identity would take each other's claims back at start-up and
delete each other's transfers, so an identity is *held*:

- on PostgreSQL by a session-level advisory lock keyed by the identity, on a
  connection kept open for the process's life (PostgreSQL releases it when
  the process dies and its connection closes);
- on SQLite (one node, one host) by ``flock`` on a file in the store.

A PostgreSQL session can be lost while the node runs (the server restarted,
the connection was cut), and its lock with it: the node checks its session
every :data:`KEEP_INTERVAL_S` seconds and takes the lock again, or logs an
alert when another process took the identity meanwhile.

Identities live in ``<storage.root>/nodes/<tag>/node-id``. A node given no
identity adopts a free identity that a node of the same host name created
(its own from before a restart: it then takes back its claims at once), or
creates a new one, ``<host name>-<12 hex digits of a UUID4>``. Two nodes
with the same host name, AE title and port (containers) thus get different
identities, also on a shared store. An identity given explicitly is never
adopted by others; starting a second node with it while the first runs is
refused (:class:`IdentityInUseError`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, Engine, text

__all__ = [
    "IDENTITY_FILE",
    "IdentityInUseError",
    "NodeIdentity",
    "advisory_key",
    "hold_identity",
    "identity_tag",
]

#: Folder of the store holding one sub-folder per identity.
NODES_DIR = "nodes"
#: The file naming an identity (one line).
IDENTITY_FILE = "node-id"
#: The file locked (``flock``) while an identity runs on SQLite.
LOCK_FILE = "lock"
#: Column width of ``claimed_by`` and the audit trail's ``actor``.
MAX_ID_LENGTH = 128
#: How often a node checks that its PostgreSQL session (and lock) is alive.
KEEP_INTERVAL_S = 30.0

_LOG = logging.getLogger(__name__)


class IdentityInUseError(ValueError):
    """Another running process holds the node identity asked for."""


def identity_tag(node_id: str) -> str:
    """A file-name-safe tag of ``node_id``: 16 hex digits of its SHA-256.

    Names the identity's folders and temporary files in the store whatever
    characters the identity contains.
    """
    return hashlib.sha256(node_id.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def advisory_key(purpose: str, name: str = "") -> int:
    """A PostgreSQL advisory lock key (signed 64 bits) for ``purpose`` and ``name``."""
    digest = hashlib.sha256(f"cem-node {purpose}\0{name}".encode("utf-8", "surrogateescape"))
    return int.from_bytes(digest.digest()[:8], "big", signed=True)


def _host_name() -> str:
    return socket.gethostname()[:64] or "node"


def _new_identity(host: str) -> str:
    return f"{host}-{uuid.uuid4().hex[:12]}"


def _adoptable(node_id: str, host: str) -> bool:
    """Whether ``node_id`` is a default identity created on a host named ``host``."""
    return re.fullmatch(re.escape(host) + r"-[0-9a-f]{12}", node_id) is not None


@dataclass(slots=True)
class NodeIdentity:
    """An identity held by this process until :meth:`release`.

    Attributes
    ----------
    node_id
        The identity.
    folder
        Its folder in the store (``<root>/nodes/<tag>``).
    explicit
        Given by the caller (configuration, command line) rather than chosen.
    """

    node_id: str
    folder: Path
    explicit: bool
    _fd: int | None = field(default=None, repr=False)
    _connection: Connection | None = field(default=None, repr=False)
    _engine: Engine | None = field(default=None, repr=False)
    _released: threading.Event = field(default_factory=threading.Event, repr=False)
    _guard: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def keep(self) -> bool:
        """Check that the identity is still held; after a lost PostgreSQL session
        take its lock again on a new one.

        Returns
        -------
        bool
            ``False`` if another process took the identity while this one's
            session was lost (two nodes now run with one identity: an alert).
            A database out of reach counts as held: nobody can take it there.
        """
        if self._engine is None:
            return True  # a file lock is held until its descriptor is closed
        with self._guard:  # the watcher and release() share the connection
            return self._released.is_set() or self._keep(self._engine)

    def _keep(self, engine: Engine) -> bool:
        try:
            assert self._connection is not None
            self._connection.scalar(text("SELECT 1"))
            return True
        except Exception:  # the session, and its lock, are gone
            with contextlib.suppress(Exception):
                assert self._connection is not None
                self._connection.close()
        try:
            connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except Exception as exc:
            _LOG.warning("node identity %r: database out of reach: %s", self.node_id, exc)
            return True
        held = connection.scalar(
            text("SELECT pg_try_advisory_lock(:key)"),
            {"key": advisory_key("identity", self.node_id)},
        )
        self._connection = connection
        if held:
            _LOG.warning("node identity %r: database session lost, lock taken again", self.node_id)
            return True
        return False

    def watch(self, interval_s: float = KEEP_INTERVAL_S) -> None:
        """Run :meth:`keep` every ``interval_s`` seconds until :meth:`release` (PostgreSQL)."""
        if self._engine is None:
            return

        def run() -> None:
            alerted = False
            while not self._released.wait(interval_s):
                held = self.keep()
                if not held and not alerted:
                    from cem_node.store.audit import ALERT  # not at import: a cycle

                    _LOG.error(
                        "%s: node identity %r was taken by another process while this "
                        "node's database session was lost: two nodes now run with one "
                        "identity; stop one of them",
                        ALERT,
                        self.node_id,
                    )
                alerted = not held

        threading.Thread(target=run, name="cem-node-identity", daemon=True).start()

    def release(self) -> None:
        """Let another process take the identity (also done by the process's death)."""
        self._released.set()
        with self._guard:
            if self._connection is not None:
                with contextlib.suppress(Exception):  # a lost connection released it already
                    self._connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"),
                        {"key": advisory_key("identity", self.node_id)},
                    )
                with contextlib.suppress(Exception):
                    self._connection.close()
                self._connection = None
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def _identity_folder(root: Path, node_id: str) -> Path:
    return root / NODES_DIR / identity_tag(node_id)


def _record(folder: Path, node_id: str) -> None:
    """Write ``folder/node-id`` once (atomically: readers never see half a name)."""
    path = folder / IDENTITY_FILE
    if path.exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{IDENTITY_FILE}.{os.getpid()}"
    temp.write_text(node_id + "\n", encoding="utf-8")
    temp.replace(path)


def _known_identities(root: Path) -> list[str]:
    found = []
    for path in sorted((root / NODES_DIR).glob(f"*/{IDENTITY_FILE}")):
        try:
            found.append(path.read_text(encoding="utf-8").strip())
        except OSError:  # being written or removed by hand
            continue
    return found


class _Locks:
    """Try-locks on identities: advisory locks on PostgreSQL, flock elsewhere."""

    def __init__(self, engine: Engine, root: Path) -> None:
        self._root = root
        self._engine = engine
        self._connection: Connection | None = None
        if engine.dialect.name == "postgresql":
            # autocommit: a session-level lock needs no transaction left open
            self._connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def try_hold(self, node_id: str, *, explicit: bool) -> NodeIdentity | None:
        folder = _identity_folder(self._root, node_id)
        folder.mkdir(parents=True, exist_ok=True)
        if self._connection is not None:
            held = self._connection.scalar(
                text("SELECT pg_try_advisory_lock(:key)"),
                {"key": advisory_key("identity", node_id)},
            )
            if not held:
                return None
            _record(folder, node_id)
            identity = NodeIdentity(
                node_id, folder, explicit, _connection=self._connection, _engine=self._engine
            )
            self._connection = None  # the identity owns it now
            return identity
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        _record(folder, node_id)
        return NodeIdentity(node_id, folder, explicit, _fd=fd)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def hold_identity(engine: Engine, root: Path, node_id: str | None = None) -> NodeIdentity:
    """Hold ``node_id``, or else a free identity of this host, or a new one.

    Parameters
    ----------
    engine
        The node's database: PostgreSQL holds identities cluster-wide,
        SQLite by a file lock in ``root``.
    root
        The store's root folder (``storage.root``).
    node_id
        An identity given explicitly (wins over the default).

    Returns
    -------
    NodeIdentity
        Held until :meth:`NodeIdentity.release` or the process's end; on
        PostgreSQL its session is watched (:meth:`NodeIdentity.watch`).

    Raises
    ------
    IdentityInUseError
        If ``node_id`` is held by another running process.
    """
    locks = _Locks(engine, root)
    try:
        identity = _hold(locks, engine, root, node_id)
    finally:
        locks.close()
    identity.watch()
    return identity


def _hold(locks: _Locks, engine: Engine, root: Path, node_id: str | None) -> NodeIdentity:
    """The identity asked for, else a free one of this host, else a new one."""
    if node_id is not None:
        if not node_id or len(node_id) > MAX_ID_LENGTH:
            raise ValueError(f"a node identity has 1 to {MAX_ID_LENGTH} characters")
        identity = locks.try_hold(node_id, explicit=True)
        if identity is None:
            where = "this PostgreSQL database" if engine.dialect.name == "postgresql" else root
            raise IdentityInUseError(
                f"node identity {node_id!r} is already held by a running node on {where}: "
                "stop that node first, or give this one another identity (or none, "
                "to get a unique one)"
            )
        return identity
    host = _host_name()
    for known in _known_identities(root):
        if _adoptable(known, host) and (held := locks.try_hold(known, explicit=False)):
            return held
    while True:  # a new identity is free, unless its 48 random bits collide
        held = locks.try_hold(_new_identity(host), explicit=False)
        if held is not None:
            return held

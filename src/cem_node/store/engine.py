"""Database engines and sessions for SQLite (embedded) and PostgreSQL (scale-out)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["SQLITE_BEGIN_OPTION", "make_engine", "session_factory"]

SqliteBegin = Literal["DEFERRED", "IMMEDIATE"]

#: How long (ms) a SQLite connection waits for another writer before failing.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Longest pause (s) between two tries for the SQLite write lock at BEGIN IMMEDIATE.
SQLITE_LOCK_POLL_MAX_S = 0.002
#: Execution option naming how one transaction begins on SQLite (``DEFERRED``: a
#: read-only transaction that must not take the write lock); ignored elsewhere.
SQLITE_BEGIN_OPTION = "sqlite_begin"
#: How long (s) to wait for a PostgreSQL server before giving up.
POSTGRES_CONNECT_TIMEOUT_S = 10


def make_engine(
    url: str | URL,
    *,
    echo: bool = False,
    pool_size: int | None = None,
    sqlite_begin: SqliteBegin = "IMMEDIATE",
) -> Engine:
    """Create an engine configured for the node's durability needs.

    SQLite (the embedded default) is put in WAL mode with ``synchronous =
    FULL`` and foreign keys on; the parent folder of the database file is
    created. PostgreSQL connections are checked before use and time out.

    Parameters
    ----------
    url
        A SQLAlchemy URL, e.g. ``sqlite:///var/cem-node.db`` or
        ``postgresql+psycopg://user@host:5432/cem``.
    echo
        Log every SQL statement.
    pool_size
        Connections kept open per engine (PostgreSQL only; default 5).
    sqlite_begin
        How SQLite transactions start. ``IMMEDIATE`` (default) takes the
        write lock at ``BEGIN``, so concurrent writers wait (up to
        :data:`SQLITE_BUSY_TIMEOUT_MS`) instead of failing with "database is
        locked" when a read-then-write transaction would upgrade its lock.

    Returns
    -------
    sqlalchemy.Engine
        The engine. Nothing is connected yet.

    Raises
    ------
    sqlalchemy.exc.ArgumentError
        If ``url`` is not a valid database URL.
    sqlalchemy.exc.NoSuchModuleError
        If the URL names an unknown dialect or driver.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"echo": echo}
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **kwargs)
        _configure_sqlite(
            engine, begin=sqlite_begin, in_memory=not database or database == ":memory:"
        )
        return engine
    if backend == "postgresql":
        kwargs["pool_pre_ping"] = True  # survive server restarts and idle disconnects
        if pool_size is not None:
            kwargs["pool_size"] = pool_size
        if "connect_timeout" not in parsed.query:
            kwargs["connect_args"] = {
                "connect_timeout": POSTGRES_CONNECT_TIMEOUT_S,
                "application_name": "cem-node",
            }
    return create_engine(parsed, **kwargs)


def _configure_sqlite(engine: Engine, *, begin: SqliteBegin, in_memory: bool) -> None:
    """Set the pragmas and transaction handling of every SQLite connection."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, issue BEGIN (see _on_begin):
        # sqlite3's implicit BEGIN runs reads outside the transaction.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not in_memory:
                # WAL: readers never block the writer and vice versa.
                cursor.execute("PRAGMA journal_mode=WAL")
            # FULL, not NORMAL: with WAL, NORMAL may lose the last commits on
            # power loss, and a commit precedes the C-STORE success status:
            # an acknowledged instance must survive a crash.
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, begin)
        if mode == "IMMEDIATE":
            _begin_immediate(connection)
        else:
            connection.exec_driver_sql(f"BEGIN {mode}")


def _begin_immediate(connection: Any) -> None:
    """``BEGIN IMMEDIATE``, trying again for the write lock every 0.2 to 2 ms.

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between
    tries. With several receiver processes each committing an image every few
    ms, the lock then sits free while its waiters sleep: BEGIN was 38% of the
    C-STORE handler's time with 4 concurrent associations. Polling here keeps
    the lock busy. The busy timeout still bounds the wait, and still applies
    to every other statement.
    """
    raw = connection.connection.dbapi_connection
    raw.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
        pause = 0.0002
        while time.monotonic() < deadline:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    break  # not a lock: SQLAlchemy reports it below
            time.sleep(pause)
            pause = min(2 * pause, SQLITE_LOCK_POLL_MAX_S)
        # once more through SQLAlchemy, so that a failure is its OperationalError
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    finally:
        raw.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")


def session_factory(engine: Engine, **kwargs: Any) -> sessionmaker[Session]:
    """Return a session factory bound to ``engine``.

    Objects are not expired on commit, so that values read in a transaction
    stay usable after it (the node passes them between threads as data).

    Parameters
    ----------
    engine
        The engine from :func:`make_engine`.
    **kwargs
        Further :class:`sqlalchemy.orm.sessionmaker` options.

    Returns
    -------
    sqlalchemy.orm.sessionmaker
        Use as ``with factory.begin() as session: ...``.
    """
    kwargs.setdefault("expire_on_commit", False)
    return sessionmaker(bind=engine, **kwargs)

"""Schema migrations (Alembic), driven from code: no alembic.ini needed.

The migration scripts ship inside the package (``store/migrations``), so an
installed node can upgrade its database with ``cem-node db upgrade``.

Developers add a revision after changing :mod:`cem_node.store.models` with::

    python -m cem_node.store.migrate revision "what changed" --url sqlite:///tmp/dev.db

(the database at URL must be at head), then review and clean the script.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import URL

from cem_node.store.engine import make_engine

__all__ = [
    "MIGRATIONS_DIR",
    "SchemaOutdatedError",
    "alembic_config",
    "check_schema_current",
    "current_revision",
    "downgrade",
    "head_revision",
    "upgrade",
]

#: The Alembic script folder inside the installed package.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


class SchemaOutdatedError(RuntimeError):
    """The database schema is not the one this version of cem-node expects."""

    def __init__(self, current: str | None, expected: str) -> None:
        self.current = current
        self.expected = expected
        if current is None:
            detail = "the database has no cem-node schema yet"
        else:
            detail = (
                f"the database schema is at revision {current}, this cem-node expects {expected}"
            )
        super().__init__(f"{detail}: run `cem-node db upgrade`")


def alembic_config(connection: Connection | None = None) -> Config:
    """Build the Alembic configuration of the node's migrations.

    Parameters
    ----------
    connection
        An open connection for the migration environment to use.

    Returns
    -------
    alembic.config.Config
        The configuration, with ``script_location`` set to
        :data:`MIGRATIONS_DIR`.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Passed as an attribute, not as sqlalchemy.url: the ini parser would
    # choke on "%" in passwords, and the engine needs make_engine's pragmas.
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """Return the newest revision this version of cem-node knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships 0001
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


@contextmanager
def _engine_for(url_or_engine: str | URL | Engine) -> Iterator[Engine]:
    """Yield ``url_or_engine`` as an engine, disposing of one made here."""
    if isinstance(url_or_engine, Engine):
        yield url_or_engine
        return
    engine = make_engine(url_or_engine)
    try:
        yield engine
    finally:
        engine.dispose()


def upgrade(url: str | URL | Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision``, creating the schema if needed.

    All pending migrations run in one transaction (PostgreSQL and SQLite both
    have transactional DDL): an interrupted upgrade leaves the old schema.

    Parameters
    ----------
    url
        The database URL, or an engine from :func:`~cem_node.store.make_engine`.
    revision
        The target revision; ``head`` for the newest.

    Raises
    ------
    sqlalchemy.exc.OperationalError
        If the database cannot be reached.
    alembic.util.CommandError
        If ``revision`` is unknown.
    """
    with _engine_for(url) as engine, engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


def downgrade(url: str | URL | Engine, revision: str) -> None:
    """Downgrade the database to ``revision`` (``base``: drop every table and its data).

    For developers and tests; a node never needs it.
    """
    with _engine_for(url) as engine, engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)


def current_revision(url: str | URL | Engine) -> str | None:
    """Return the database's schema revision, ``None`` if it has no schema."""
    with _engine_for(url) as engine, engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_schema_current(engine: Engine) -> None:
    """Refuse to run on a database whose schema is not this code's.

    Call at start-up, before using the database.

    Raises
    ------
    SchemaOutdatedError
        If the database is older than the code (or newer: migrated by a
        later cem-node), with a message telling what to do.
    """
    current = current_revision(engine)
    expected = head_revision()
    if current != expected:
        raise SchemaOutdatedError(current, expected)


def _main(argv: list[str] | None = None) -> None:
    """Developer tool: autogenerate a new revision against a database at head."""
    parser = argparse.ArgumentParser(prog="python -m cem_node.store.migrate")
    sub = parser.add_subparsers(dest="command", required=True)
    rev = sub.add_parser("revision", help="autogenerate a migration from the models")
    rev.add_argument("message")
    rev.add_argument("--url", required=True, help="a database at the current head")
    args = parser.parse_args(argv)
    # Sequential ids (0001, 0002, ...) keep the history readable.
    config = alembic_config()
    rev_id = f"{sum(1 for _ in ScriptDirectory.from_config(config).walk_revisions()) + 1:04d}"
    with _engine_for(args.url) as engine, engine.begin() as connection:
        config.attributes["connection"] = connection
        command.revision(config, message=args.message, autogenerate=True, rev_id=rev_id)


if __name__ == "__main__":
    _main()

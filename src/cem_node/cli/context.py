"""State shared by the sub-commands of one ``cem-node`` invocation."""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from cem_node.config import Settings


def fail(message: str, code: int) -> typer.Exit:
    """Print ``Error: message`` on standard error and return the exit to raise."""
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def console() -> Console:
    """A rich console for tables; piped output is not wrapped at 80 columns."""
    from rich.console import Console

    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(width=250)
    return out


def admin_actor() -> str:
    """The audit trail's actor for a change made on the command line: ``admin:<os user>``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        user = "unknown"
    return f"admin:{user}"


@contextmanager
def database_errors() -> Iterator[None]:
    """Turn a database failure in a command into one line and exit code 1."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise fail(f"database error: {reason}", 1) from None


def _driver_missing(exc: ImportError) -> str:
    return (
        f"the database driver {exc.name or exc} is not installed"
        " (for PostgreSQL: pip install 'cem-node[postgres]')"
    )


@dataclass
class CliContext:
    """What the root callback learned from the global options.

    Settings are loaded lazily so that ``--help`` and commands that do not
    need a config (``config validate FILE``) never fail on a bad default file.
    """

    config_path: Path | None = None
    data_dir: Path | None = None
    _settings: Settings | None = field(default=None, repr=False)
    _engine: Engine | None = field(default=None, repr=False)
    _sessions: sessionmaker[Session] | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        """Load (once) and return the effective settings.

        ``--data-dir`` replaces ``storage.root`` (and so the default SQLite
        database ``<root>/cem-node.db``).

        Raises
        ------
        cem_node.config.ConfigError
            If the configuration is invalid.
        """
        if self._settings is None:
            from cem_node.config import load_settings

            settings = load_settings(self.config_path)
            if self.data_dir is not None:
                settings.storage.root = self.data_dir
            self._settings = settings
        return self._settings

    def settings_or_exit(self) -> Settings:
        """Like :meth:`settings`, but an invalid configuration exits with code 2."""
        from cem_node.config import ConfigError

        try:
            return self.settings()
        except ConfigError as exc:
            raise fail(str(exc), 2) from None

    def sessions(self) -> sessionmaker[Session]:
        """Return (once) a session factory of the node's database.

        The schema is checked first. An embedded SQLite database with a
        missing or older schema is upgraded on the spot (the defaults must
        just work); any other database must be upgraded by the operator.
        Failures print one clear line and exit: 2 for an invalid config or a
        schema to upgrade, 1 for a database that cannot be used, 3 for a
        missing database driver.
        """
        if self._sessions is not None:
            return self._sessions
        from alembic.util import CommandError
        from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

        from cem_node.config import mask_url
        from cem_node.store import (
            SchemaOutdatedError,
            check_schema_current,
            make_engine,
            session_factory,
            upgrade,
        )

        url = self.settings_or_exit().database_url()
        masked = mask_url(url)
        try:
            engine = make_engine(url)
        except ArgumentError:
            raise fail(f"not a valid database URL in the config: {masked}", 2) from None
        except NoSuchModuleError as exc:
            raise fail(f"unknown database kind in {masked}: {exc}", 2) from None
        except ImportError as exc:
            raise fail(_driver_missing(exc), 3) from None
        except OSError as exc:  # the SQLite file's folder cannot be created
            raise fail(f"cannot open the database {masked}: {exc}", 1) from None
        try:
            try:
                check_schema_current(engine)
            except SchemaOutdatedError as exc:
                if engine.dialect.name != "sqlite":
                    raise fail(f"database {masked}: {exc}", 2) from None
                upgrade(engine)  # the embedded default database must just work
        except typer.Exit:
            engine.dispose()
            raise
        except CommandError as exc:
            # e.g. a schema written by a newer cem-node: never downgrade silently
            engine.dispose()
            raise fail(
                f"cannot upgrade the database {masked}: {exc} (written by a newer cem-node?)", 2
            ) from None
        except ImportError as exc:
            engine.dispose()
            raise fail(_driver_missing(exc), 3) from None
        except DBAPIError as exc:
            engine.dispose()
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise fail(f"cannot use the database {masked}: {reason}", 1) from None
        except OSError as exc:
            engine.dispose()
            raise fail(f"cannot open the database {masked}: {exc}", 1) from None
        self._engine = engine
        self._sessions = session_factory(engine)
        return self._sessions

    def close(self) -> None:
        """Release the database connections (called when the command ends)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
            self._sessions = None

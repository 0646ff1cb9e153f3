"""``cem-node db``: create and upgrade the node's database schema."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from alembic.util import CommandError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from cem_node.cli.context import CliContext

app = typer.Typer(
    help="Create and upgrade the node's database (SQLite by default, PostgreSQL by URL).",
    no_args_is_help=True,
)

_URL_EXAMPLES = "sqlite:///var/cem-node.db or postgresql+psycopg://user@host:5432/cem"

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help=f"Database URL, e.g. {_URL_EXAMPLES}. Default: the config's database URL.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


def _resolve_url(ctx: typer.Context, url: str | None) -> tuple[str, str]:
    """Return the database URL to use and its printable (masked) form."""
    if url is None:
        from cem_node.config import ConfigError

        obj: CliContext = ctx.obj
        try:
            url = obj.settings().database_url()
        except ConfigError as exc:
            problems = "".join(f"\n  {problem}" for problem in exc.problems)
            raise _fail(f"{exc}{problems}", 2) from None
    try:
        make_url(url)
    except ArgumentError:
        raise _fail(f"not a valid database URL (expected e.g. {_URL_EXAMPLES})", 2) from None
    from cem_node.config import mask_url

    return url, mask_url(url)


@contextmanager
def _database_errors(masked: str) -> Iterator[None]:
    """Turn database failures into one clear line and a meaningful exit code."""
    try:
        yield
    except NoSuchModuleError as exc:
        raise _fail(f"unknown database kind in {masked}: {exc}", 2) from None
    except ImportError as exc:
        raise _fail(
            f"the database driver {exc.name or exc} is not installed"
            " (for PostgreSQL: pip install 'cem-node[postgres]')",
            3,
        ) from None
    except DBAPIError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise _fail(f"cannot use the database {masked}: {reason}", 1) from None
    except CommandError as exc:
        raise _fail(str(exc), 2) from None
    except OSError as exc:
        raise _fail(f"cannot open the database {masked}: {exc}", 1) from None


def _emit(as_json: bool, payload: dict[str, Any], lines: Callable[[], list[str]]) -> None:
    if as_json:
        typer.echo(json.dumps(payload))
    else:
        for line in lines():
            typer.echo(line)


@app.command("upgrade")
def upgrade_cmd(
    ctx: typer.Context,
    url: UrlOption = None,
    revision: Annotated[str, typer.Option("--revision", help="Target schema revision.")] = "head",
    as_json: JsonOption = False,
) -> None:
    """Create the database schema or upgrade it to the newest revision.

    Safe to run again: an up-to-date database is left as it is. Run it after
    installing a new version of cem-node, before `cem-node serve`.
    """
    from cem_node.store import migrate

    url, masked = _resolve_url(ctx, url)
    with _database_errors(masked):
        before = migrate.current_revision(url)
        migrate.upgrade(url, revision)
        after = migrate.current_revision(url)
    _emit(
        as_json,
        {"database": masked, "before": before, "after": after, "changed": before != after},
        lambda: [
            f"Database: {masked}",
            (
                f"Schema:   {before or '(empty)'} -> {after}"
                if before != after
                else f"Schema:   already at {after}, nothing to do"
            ),
        ],
    )


@app.command("current")
def current_cmd(
    ctx: typer.Context,
    url: UrlOption = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Exit 1 when the schema is not the newest revision."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Show the database's schema revision and whether it is up to date."""
    from cem_node.store import migrate

    url, masked = _resolve_url(ctx, url)
    with _database_errors(masked):
        current = migrate.current_revision(url)
    head = migrate.head_revision()
    up_to_date = current == head
    _emit(
        as_json,
        {"database": masked, "current": current, "head": head, "up_to_date": up_to_date},
        lambda: [
            f"Database: {masked}",
            f"Schema:   {current or '(empty)'} (newest: {head})"
            + (": up to date" if up_to_date else ": run `cem-node db upgrade`"),
        ],
    )
    if check and not up_to_date:
        raise typer.Exit(1)

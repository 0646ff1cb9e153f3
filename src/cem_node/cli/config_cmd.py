"""``cem-node config``: show, validate and create the node configuration.

Exit codes: 0 success, 2 invalid configuration or refused overwrite.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.syntax import Syntax

from cem_node.cli.context import CliContext
from cem_node.config import (
    ConfigError,
    load_settings,
    load_settings_with_origin,
    mask_url,
    render_default_toml,
    render_settings_toml,
    settings_to_dict,
)

app = typer.Typer(
    name="config",
    help="Show, validate and create the node configuration (TOML + CEM_NODE_* environment).",
    no_args_is_help=True,
)

EXIT_INVALID = 2


def _fail(message: str) -> typer.Exit:
    typer.secho(message, err=True, fg=typer.colors.RED)
    return typer.Exit(EXIT_INVALID)


@app.command()
def show(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (for scripts) instead of TOML.")
    ] = False,
) -> None:
    """Print the effective configuration (file + environment + defaults), secrets masked."""
    obj = ctx.obj if isinstance(ctx.obj, CliContext) else CliContext()
    try:
        loaded = load_settings_with_origin(obj.config_path)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    settings = loaded.settings
    if obj.data_dir is not None:
        settings.storage.root = obj.data_dir  # --data-dir, as every other command sees it
    file = str(loaded.file) if loaded.file is not None else None
    database_url = mask_url(settings.database_url())
    if as_json:
        document = {
            "file": file,
            "environment_overrides": list(loaded.env_overrides),
            "database_url": database_url,
            "settings": settings_to_dict(settings, mask_secrets=True),
        }
        typer.echo(json.dumps(document, indent=2))
        return
    # the header is TOML comments so that the whole output stays a valid config file
    header = [
        "# Effective cem-node configuration (secrets masked as ***)",
        f"# File: {file or 'none (built-in defaults)'}",
        f"# Environment overrides: {', '.join(loaded.env_overrides) or 'none'}",
        f"# Database in use: {database_url}",
        "",
    ]
    text = "\n".join(header) + "\n" + render_settings_toml(settings, mask_secrets=True)
    console = Console()
    if console.is_terminal:
        console.print(Syntax(text, "toml", background_color="default", word_wrap=True))
    else:
        typer.echo(text, nl=False)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="The TOML config file to check.", dir_okay=False)],
) -> None:
    """Check a config file (the file alone, without environment overrides)."""
    try:
        load_settings(file, environ={})
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    typer.secho(f"{file} is valid", fg=typer.colors.GREEN)


@app.command()
def init(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Where to write the file ('-': standard output).", dir_okay=False
        ),
    ] = Path("conf/node.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write the commented default configuration (every key, its meaning and default)."""
    text = render_default_toml()
    if str(out) == "-":
        typer.echo(text, nl=False)
        return
    if out.exists() and not force:
        raise _fail(f"{out} already exists; use --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    # write next to the target then rename, so a crash never leaves half a config
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    tmp.replace(out)
    typer.secho(f"Wrote {out}", fg=typer.colors.GREEN)

"""The ``cem-node`` command line.

Each command group lives in its own module and is mounted here. Exit codes:
0 success, 1 the operation failed, 2 bad usage or invalid input (config,
arguments), 3 a required external tool or service is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cem_node import __version__
from cem_node.cli import (
    analyse_cmd,
    config_cmd,
    db_cmd,
    demo_cmd,
    echo_cmd,
    evaluate_cmd,
    models_cmd,
    peers_cmd,
    serve_cmd,
    studies_cmd,
    synth_cmd,
    train_cmd,
)
from cem_node.cli.context import CliContext

app = typer.Typer(
    name="cem-node",
    help=(
        "cem-node: an AI node for contrast-enhanced mammography (CEM). It receives CEM "
        "studies by DICOM C-STORE, finds and outlines suspicious lesions, scores them "
        "benign vs malignant and sends back DICOM SEG, SR and GSPS objects."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cem-node {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="CEM_NODE_CONFIG",
            help="Node config file (TOML). Default: ./conf/node.toml if present, "
            "else built-in defaults.",
            dir_okay=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Data folder: overrides storage.root (received instances, results and "
            "the default SQLite database <DIR>/cem-node.db).",
            file_okay=False,
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    obj = CliContext(config_path=config, data_dir=data_dir)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


app.add_typer(config_cmd.app, name="config")
app.add_typer(db_cmd.app, name="db")
app.add_typer(peers_cmd.app, name="peers")
app.add_typer(models_cmd.app, name="models")
app.add_typer(studies_cmd.app, name="studies")
app.add_typer(train_cmd.app, name="train")
app.command(name="serve")(serve_cmd.serve)
app.command(name="echo")(echo_cmd.echo)
app.command(name="synth")(synth_cmd.synth)
app.command(name="demo")(demo_cmd.demo)
app.command(name="analyse")(analyse_cmd.analyse)
# the spelling of earlier versions, kept for scripts that call it
app.command(name="analyze", hidden=True)(analyse_cmd.analyse)
app.command(name="evaluate")(evaluate_cmd.evaluate)


def main() -> None:
    """Entry point of the ``cem-node`` console script."""
    app()

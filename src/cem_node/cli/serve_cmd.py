"""``cem-node serve``: run the node until stopped (SIGINT or SIGTERM)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from cem_node.cli.context import CliContext

_LOG = logging.getLogger("cem_node.serve")


def serve(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Store and SQLite database folder (overrides storage.root). With no config "
            "file this runs the embedded defaults.",
            file_okay=False,
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=0, max=65535, help="DICOM port (node.port).")
    ] = None,
    ae_title: Annotated[
        str | None, typer.Option("--ae-title", help="This node's AE title (node.ae_title).")
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to listen on (node.host).")
    ] = None,
    accept_unknown_sources: Annotated[
        bool,
        typer.Option(
            "--accept-unknown-sources",
            help="Accept any calling AE title and address (a test bench only).",
        ),
    ] = False,
    receivers: Annotated[
        int | None,
        typer.Option(
            "--receivers",
            min=1,
            max=64,
            help="Receiver processes on the port (node.receiver_processes); one per core "
            "for many concurrent senders.",
        ),
    ] = None,
    log_json: Annotated[
        bool | None,
        typer.Option("--log-json/--log-text", help="Log one JSON object per line (logging.json)."),
    ] = None,
    node_id: Annotated[
        str | None,
        typer.Option(
            "--node-id",
            help="This node's identity (node.id; default: a unique one kept in the store). "
            "A second node started with an identity in use is refused.",
            show_default=False,
        ),
    ] = None,
    role: Annotated[
        list[str] | None,
        typer.Option(
            "--role",
            help="Run only this part (repeatable; node.roles, default all): receiver (the "
            "DICOM listener; no torch, no GPU), worker (the analysis), exporter (sends the "
            "results), scheduler (assembly, recovery, retention). Split roles share one "
            "PostgreSQL database and one store.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the DICOM node: receive studies, analyse them, send the results.

    Stops cleanly on Ctrl-C or SIGTERM; work in progress resumes at the next start.
    """
    from cem_node.logs import configure_logging
    from cem_node.node import Node

    state: CliContext = ctx.obj
    if data_dir is not None:
        state.data_dir = data_dir
    settings = _settings(
        state,
        port=port,
        ae_title=ae_title,
        host=host,
        receivers=receivers,
        accept_unknown_sources=accept_unknown_sources,
        node_id=node_id,
        role=role,
    )
    configure_logging(settings.logging, json_output=log_json)
    analyser = _analyser(settings)
    node = Node(settings, analyser=analyser)
    _start(node, settings)

    _LOG.info(
        "cem-node serving AE %s on %s, data in %s (%s), roles: %s",
        settings.node.ae_title,
        f"{settings.node.host}:{node.port}" if node.scp is not None else "no DICOM port",
        Path(settings.storage.root).resolve(),
        "SQLite" if settings.database_url().startswith("sqlite") else "database server",
        ", ".join(node.roles),
    )
    if analyser is not None:
        preload = analyser.preload
        # load the networks now, not when the first study arrives (receiving starts at once)
        threading.Thread(
            target=lambda: _LOG.info("%s", preload()), name="preload", daemon=True
        ).start()
    node.run_until_signalled(lambda signum: _LOG.info("signal %d: stopping", signum))


def _settings(
    state: CliContext,
    *,
    port: int | None,
    ae_title: str | None,
    host: str | None,
    receivers: int | None,
    accept_unknown_sources: bool,
    node_id: str | None,
    role: list[str] | None,
) -> Any:
    """The node settings with the command-line overrides (exit 2 when they are invalid)."""
    from cem_node.config import ROLES, ConfigError

    try:
        settings = state.settings()
        if port is not None:
            settings.node.port = port
        if ae_title is not None:
            settings.node.ae_title = ae_title
        if host is not None:
            settings.node.host = host
        if receivers is not None:
            settings.node.receiver_processes = receivers
        if accept_unknown_sources:
            settings.node.accept_unknown_sources = True
        if node_id is not None:
            settings.node.id = node_id  # validated by the settings (validate_assignment)
        if role:
            if unknown := [r for r in role if r not in ROLES]:
                raise ValueError(
                    f"--role {unknown[0]!r} is not a role; choose from {', '.join(ROLES)}"
                )
            settings.node.roles = list(dict.fromkeys(role))  # type: ignore[assignment]
        if receivers is not None and "receiver" not in settings.node.roles:
            raise ValueError("--receivers starts receiver processes: it needs --role receiver")
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    return settings


def _analyser(settings: Any) -> Any:
    """The bundle analyser of a node with the worker role, else None."""
    from cem_node import __version__
    from cem_node.dicom.objects.common import ReportingDevice
    from cem_node.pipeline.service import BundleAnalyser

    if "worker" not in settings.node.roles:  # only a worker loads the bundle (torch, the GPU)
        return None
    return BundleAnalyser(
        settings.analysis,
        device=ReportingDevice(
            software_version=__version__, device_serial_number=settings.node.ae_title
        ),
    )


def _start(node: Any, settings: Any) -> None:
    """Start the node: exit 2 on a configuration it refuses, 1 when it cannot listen."""
    from cem_node.dicom.net.tls import TlsConfigError
    from cem_node.store import SchemaOutdatedError

    try:
        node.start()
    except SchemaOutdatedError as exc:
        typer.echo(f"error: {exc}; run `cem-node db upgrade`", err=True)
        raise typer.Exit(2) from None
    except TlsConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        typer.echo(
            f"error: cannot listen on {settings.node.host}:{settings.node.port}: {exc}", err=True
        )
        node.stop()
        raise typer.Exit(1) from None

"""``cem-node echo PEER``: check that a peer answers a DICOM C-ECHO.

Exit codes: 0 the peer answered, 1 it did not (the message says why),
2 unknown peer or invalid TLS/peer settings.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cem_node.cli.context import CliContext, database_errors, fail


def echo(
    ctx: typer.Context,
    peer: Annotated[str, typer.Argument(help="The peer's name (see `cem-node peers list`).")],
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=0.1,
            help="Seconds to wait for the connection, the association and the answer.",
        ),
    ] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")] = False,
) -> None:
    """Check that a peer answers a C-ECHO (network, AE titles and TLS in one go)."""
    from cem_node.dicom.net.scu import RemoteAE
    from cem_node.dicom.net.scu import echo as c_echo
    from cem_node.dicom.net.tls import TlsConfigError, client_context
    from cem_node.peers import PeerError, find_peer

    obj: CliContext = ctx.obj
    settings = obj.settings_or_exit()
    sessions = obj.sessions()
    try:
        with database_errors(), sessions.begin() as session:
            entry = find_peer(settings, session, peer)
    except PeerError as exc:
        raise fail(str(exc), 2) from None
    ssl_context = None
    if entry.tls:
        try:
            ssl_context = client_context(settings.tls)
        except TlsConfigError as exc:
            raise fail(f"{exc}; fix the [tls] section of the node config", 2) from None
    remote = RemoteAE(entry.ae_title, entry.host, entry.port, tls=entry.tls)
    try:
        result = c_echo(
            remote,
            calling_ae_title=settings.node.ae_title,
            ssl_context=ssl_context,
            timeout_s=timeout,
        )
    except ValueError as exc:  # an AE title, host or port the DICOM layer refuses
        raise fail(f"peer {entry.name}: {exc}", 2) from None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "peer": entry.name,
                    "remote": str(remote),
                    "calling_ae_title": settings.node.ae_title,
                    "ok": result.ok,
                    "status": result.status,
                    "round_trip_ms": round(result.round_trip_s * 1000, 1),
                    "message": result.message,
                }
            )
        )
    elif result.ok:
        typer.secho(
            f"{entry.name} ({remote}): C-ECHO ok, round trip {result.round_trip_s * 1000:.0f} ms",
            fg=typer.colors.GREEN,
        )
    else:
        typer.secho(
            f"{entry.name} ({remote}): C-ECHO failed: {result.message}",
            err=True,
            fg=typer.colors.RED,
        )
    if not result.ok:
        raise typer.Exit(1)

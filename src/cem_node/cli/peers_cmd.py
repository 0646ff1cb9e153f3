"""``cem-node peers``: the DICOM nodes that send studies and receive results.

Peers come from the config file (``[[peers]]`` tables, read-only here) and
from the database (``peers add|remove``; a running node picks changes up
within seconds). Exit codes: 0 success, 1 database failure, 2 invalid
input, a taken name or a peer that cannot be removed here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Literal

import typer
from rich.table import Table

from cem_node.cli.context import CliContext, admin_actor, console, database_errors, fail

app = typer.Typer(
    name="peers",
    help="List, add and remove the peers: DICOM nodes that send studies (sources) "
    "and receive the results (destinations).",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]


@app.command("list")
def list_cmd(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List every peer, from the config file and from the database."""
    from cem_node.peers import list_peers

    obj: CliContext = ctx.obj
    settings = obj.settings_or_exit()
    sessions = obj.sessions()
    with database_errors(), sessions.begin() as session:
        peers = list_peers(settings, session)
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {**asdict(p), "objects": list(p.objects) if p.objects is not None else None}
                    for p in peers
                ],
                indent=2,
            )
        )
        return
    if not peers:
        typer.echo(
            "No peers yet. Add one with `cem-node peers add NAME --ae-title AE --host HOST "
            "--port PORT --role source|destination`, or a [[peers]] table in the config file."
        )
        return
    table = Table(title="Peers")
    for column in ("name", "role", "AE title", "host:port", "TLS", "origin", "description"):
        table.add_column(column, overflow="fold")
    for p in peers:
        table.add_row(
            p.name,
            p.role,
            p.ae_title,
            f"{p.host}:{p.port}",
            "yes" if p.tls else "no",
            p.origin,
            p.description or "",
        )
    console().print(table)


@app.command("add")
def add_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Short unique name, e.g. pacs or senographe.")],
    ae_title: Annotated[
        str, typer.Option("--ae-title", help="The peer's AE title (1-16 characters).")
    ],
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Host name or address. For a source also the allow-list of addresses it "
            "may connect from (a name, an address or a network such as 10.1.2.0/24).",
        ),
    ],
    port: Annotated[int, typer.Option("--port", help="The peer's DICOM port.")],
    role: Annotated[
        Literal["source", "destination"],
        typer.Option(
            "--role",
            help="source: sends studies to this node; destination: receives the results.",
        ),
    ],
    tls: Annotated[bool, typer.Option("--tls", help="Use DICOM TLS with this peer.")] = False,
    description: Annotated[
        str | None, typer.Option("--description", help="Free text, e.g. the room or the owner.")
    ] = None,
) -> None:
    """Add a peer to the database (a running node uses it within seconds)."""
    from sqlalchemy.exc import IntegrityError

    from cem_node.peers import PeerError, add_peer

    obj: CliContext = ctx.obj
    settings = obj.settings_or_exit()
    sessions = obj.sessions()
    with database_errors():
        try:
            with sessions.begin() as session:
                peer = add_peer(
                    settings,
                    session,
                    name=name,
                    ae_title=ae_title,
                    host=host,
                    port=port,
                    role=role,
                    tls=tls,
                    description=description,
                    actor=admin_actor(),
                )
        except PeerError as exc:
            raise fail(str(exc), 2) from None
        except IntegrityError:  # added by someone else meanwhile
            raise fail(f"a peer named {name!r} already exists (in the database)", 2) from None
    typer.secho(
        f"Added {peer.role} {peer.name}: {peer.ae_title}@{peer.host}:{peer.port}"
        + (" (TLS)" if peer.tls else ""),
        fg=typer.colors.GREEN,
    )
    if peer.role == "destination":
        typer.echo(f"Check it answers with `cem-node echo {peer.name}`.")


@app.command("remove")
def remove_cmd(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The peer's name (see `cem-node peers list`).")],
) -> None:
    """Remove a peer added with `peers add` (config-file peers are removed in the file)."""
    from cem_node.peers import PeerError, remove_peer

    obj: CliContext = ctx.obj
    settings = obj.settings_or_exit()
    sessions = obj.sessions()
    try:
        with database_errors(), sessions.begin() as session:
            remove_peer(settings, session, name, actor=admin_actor())
    except PeerError as exc:
        raise fail(str(exc), 2) from None
    typer.secho(f"Removed peer {name}", fg=typer.colors.GREEN)

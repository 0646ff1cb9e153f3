"""``cem-node studies``: look at received studies, retry failures, analyse again.

Patient names are never shown (the output ends up in tickets and chat); the
Patient ID and accession number identify a study. Exit codes: 0 success,
1 unknown study or nothing to do (the message says why), 2 invalid input.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cem_node.cli.context import CliContext, admin_actor, console, database_errors, fail
from cem_node.store.models import StudyState

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

app = typer.Typer(
    name="studies",
    help="Look at received studies (state, CEM roles, pairing, jobs, analyses, exports, "
    "audit trail), retry what failed, or analyse a study again.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
UidArgument = Annotated[
    str, typer.Argument(help="Study Instance UID (see `cem-node studies list`).")
]

_STATE_STYLE = {
    "receiving": "cyan",
    "complete": "cyan",
    "processing": "blue",
    "queued": "cyan",
    "analysing": "blue",
    "encoded": "blue",
    "exporting": "blue",
    "pending": "cyan",
    "sending": "blue",
    "done": "green",
    "not_analysable": "yellow",
    "superseded": "dim",
    "failed": "bold red",
}


def _state(value: str | None) -> Text:
    return Text(value or "", style=_STATE_STYLE.get(value or "", ""))


def _role(value: str | None) -> Text | str:
    if value is None:
        return Text("not classified yet", style="dim")
    # left out of the analysis for a reason of its own (shown next to it)
    return Text(value, style="yellow") if value == "excluded" else value


def _when(iso: str | None) -> str:
    """``2025-01-06T08:00:00.123+00:00`` -> ``2025-01-06 08:00:00`` (UTC)."""
    return iso[:19].replace("T", " ") if iso else ""


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _sessions(ctx: typer.Context) -> sessionmaker[Session]:
    obj: CliContext = ctx.obj
    return obj.sessions()


def _not_found(exc: Exception) -> typer.Exit:
    return fail(f"{exc}; see `cem-node studies list`", 1)


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    state: Annotated[
        StudyState | None,
        typer.Option("--state", help="Only the studies in this state.", case_sensitive=False),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="Show at most this many studies.")
    ] = 50,
    ignored: Annotated[
        bool,
        typer.Option(
            "--ignored",
            help="List the objects accepted and ignored instead (not mammography images: "
            "acknowledged to the sender, then discarded), with their reason.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """List the most recently received studies, newest first."""
    from cem_node.jobs.admin import list_studies

    sessions = _sessions(ctx)
    if ignored:
        if state is not None:
            raise fail("--ignored lists objects, not studies: it takes no --state", 2)
        _list_ignored(sessions, limit, as_json)
        return
    with database_errors():
        studies = list_studies(sessions, state=state.value if state else None, limit=limit)
    if as_json:
        typer.echo(json.dumps(studies, indent=2))
        return
    if not studies:
        where = f" in state {state.value}" if state else ""
        typer.echo(f"No studies{where}.")
        return
    table = Table(title=f"Studies (newest first, at most {limit})")
    table.add_column("Study Instance UID", overflow="fold")
    table.add_column("patient ID", overflow="fold")
    table.add_column("accession", overflow="fold")
    table.add_column("date")
    table.add_column("state")
    table.add_column("round", justify="right")
    table.add_column("images", justify="right")
    table.add_column("last received (UTC)")
    for s in studies:
        table.add_row(
            s["study_instance_uid"],
            _text(s["patient_id"]),
            _text(s["accession_number"]),
            _text(s["study_date"]),
            _state(s["state"]),
            str(s["analysis_round"]),
            str(s["instances"]),
            _when(s["last_received_at"]),
        )
    console().print(table)


def _list_ignored(sessions: sessionmaker[Session], limit: int, as_json: bool) -> None:
    from cem_node.jobs.admin import list_ignored

    with database_errors():
        objects = list_ignored(sessions, limit=limit)
    if as_json:
        typer.echo(json.dumps(objects, indent=2))
        return
    if not objects:
        typer.echo("No object was accepted and ignored.")
        return
    table = Table(title=f"Objects accepted and ignored (newest first, at most {limit})")
    for column in ("received (UTC)", "from", "Study Instance UID", "SOP Instance UID", "why"):
        table.add_column(column, overflow="fold")
    for o in objects:
        table.add_row(
            _when(o["received_at"]),
            " ".join(filter(None, (o["calling_ae_title"], o["remote_address"]))),
            _text(o["study_instance_uid"]),
            _text(o["sop_instance_uid"]),
            _text(o["reason"]),
        )
    console().print(table)


def _header(study: dict[str, Any]) -> Panel:
    lines = Text()
    rows = [
        ("State", None),
        ("Patient ID", study["patient_id"]),
        ("Accession", study["accession_number"]),
        ("Study date", study["study_date"]),
        ("Description", study["study_description"]),
        ("Analysis round", study["analysis_round"]),
        ("First received", _when(study["first_received_at"])),
        ("Last received", _when(study["last_received_at"])),
        (
            "Completed",
            f"{_when(study['completed_at'])} ({study['completion_reason']})"
            if study["completed_at"]
            else None,
        ),
    ]
    for label, value in rows:
        lines.append(f"{label + ':':<16}", style="bold")
        if label == "State":
            lines.append_text(_state(study["state"]))
            if study["state_reason"]:
                lines.append(f": {study['state_reason']}")
        else:
            lines.append(_text(value) or "-")
        lines.append("\n")
    lines.rstrip()
    return Panel(
        lines, title=f"Study {study['study_instance_uid']}", title_align="left", expand=False
    )


def _table(title: str, columns: list[str], rows: list[list[Any]], empty: str) -> Table | Text:
    if not rows:
        return Text(f"{title}: {empty}", style="dim")
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else _text(cell) for cell in row))
    return table


def _image_label(instance: dict[str, Any]) -> str:
    return f"{_text(instance['series_number'])}/{_text(instance['instance_number'])}"


def _render(study: dict[str, Any], audit_limit: int) -> Group:
    return Group(
        _header(study),
        _instances_table(study),
        _pairings_table(study),
        _jobs_table(study),
        _analyses_table(study),
        _exports_table(study),
        _audit_table(study, audit_limit),
    )


def _instances_table(study: dict[str, Any]) -> Table | Text:
    """The study's instances with their CEM roles."""
    return _table(
        "Instances",
        ["series/no", "SOP Instance UID", "CEM role", "lat/view", "why"],
        [
            [
                _image_label(i),
                i["sop_instance_uid"] + (f" (v{i['version']})" if i["version"] > 1 else ""),
                _role(i["role"]),
                f"{i['laterality'] or '?'} {i['view'] or '?'}"
                if i["role"] not in (None, "excluded")
                else "",
                i["role_reason"],
            ]
            for i in study["instances"]
        ],
        "none",
    )


def _pairings_table(study: dict[str, Any]) -> Table | Text:
    """The low-energy / recombined pairs of the latest round."""
    # pairs name their images by series/instance number, as in the instance table
    label = {i["sop_instance_uid"]: _image_label(i) for i in study["instances"]}
    return _table(
        "Pairing (latest round)",
        ["lat/view", "paired", "low energy (series/no)", "recombined (series/no)", "why"],
        [
            [
                f"{p['laterality'] or '?'} {p['view'] or '?'}",
                Text("yes", style="green") if p["paired"] else Text("no", style="yellow"),
                label.get(p["low_energy"], p["low_energy"]),
                label.get(p["recombined"], p["recombined"]),
                p["reason"],
            ]
            for p in study["pairings"]
        ],
        "not paired yet",
    )


def _jobs_table(study: dict[str, Any]) -> Table | Text:
    """The study's analysis jobs."""
    return _table(
        "Jobs",
        ["id", "round", "state", "attempts", "last error", "started (UTC)", "finished (UTC)"],
        [
            [
                j["id"],
                j["round"],
                _state(j["state"]),
                j["attempts"],
                j["last_error"],
                _when(j["started_at"]),
                _when(j["finished_at"]),
            ]
            for j in study["jobs"]
        ],
        "none",
    )


def _analyses_table(study: dict[str, Any]) -> Table | Text:
    """The study's analyses and the model of each."""
    return _table(
        "Analyses",
        ["id", "round", "model", "version", "sha256", "result", "finished (UTC)"],
        [
            [
                a["id"],
                a["round"],
                a["model"],
                a["model_version"],
                (a["model_sha256"] or "")[:16],
                (
                    Text(f"not analysable: {a['not_analysable_reason']}", style="yellow")
                    if a["not_analysable_reason"]
                    else "analysed"
                )
                if not a["superseded"]
                else Text("superseded", style="dim"),
                _when(a["finished_at"]),
            ]
            for a in study["analyses"]
        ],
        "none",
    )


def _exports_table(study: dict[str, Any]) -> Table | Text:
    """The study's result exports."""
    return _table(
        "Exports",
        ["destination", "object", "state", "attempts", "last status / error", "sent (UTC)"],
        [
            [
                e["destination"],
                e["object_type"],
                _state(e["state"]),
                e["attempts"],
                " ".join(
                    part
                    for part in (
                        f"0x{e['last_status']:04X}" if e["last_status"] is not None else "",
                        e["last_error"] or "",
                    )
                    if part
                ),
                _when(e["sent_at"]),
            ]
            for e in study["exports"]
        ],
        "none",
    )


def _audit_table(study: dict[str, Any], audit_limit: int) -> Table | Text:
    """The last ``audit_limit`` events of the study's audit trail (none when 0)."""
    events = study["audit"][-audit_limit:] if audit_limit else []
    skipped = len(study["audit"]) - len(events)
    return _table(
        "Audit trail" + (f" (last {len(events)} of {len(study['audit'])})" if skipped else ""),
        ["at (UTC)", "event", "decision", "actor", "message"],
        [
            [_when(a["at"]), a["event"], _state(a["decision"]), a["actor"], a["message"]]
            for a in events
        ],
        "no events",
    )


@app.command("show")
def show_cmd(
    ctx: typer.Context,
    uid: UidArgument,
    audit: Annotated[
        int,
        typer.Option("--audit", min=0, help="Show the last N audit events (--json: all)."),
    ] = 20,
    as_json: JsonOption = False,
) -> None:
    """Show everything about a study: state, images and their CEM roles, pairing,
    jobs, analyses (model and version), exports and the audit trail."""
    from cem_node.jobs.admin import StudyNotFoundError, show_study

    sessions = _sessions(ctx)
    try:
        with database_errors():
            study = show_study(sessions, uid)
    except StudyNotFoundError as exc:
        raise _not_found(exc) from None
    if as_json:
        typer.echo(json.dumps(study, indent=2))
        return
    console().print(_render(study, audit))


@app.command("retry")
def retry_cmd(ctx: typer.Context, uid: UidArgument, as_json: JsonOption = False) -> None:
    """Retry what failed for a study: its failed exports, or its failed analysis."""
    from cem_node.jobs.admin import NothingToRetryError, StudyNotFoundError, retry_study

    sessions = _sessions(ctx)
    try:
        with database_errors():
            what = retry_study(sessions, uid, actor=admin_actor())
    except StudyNotFoundError as exc:
        raise _not_found(exc) from None
    except NothingToRetryError as exc:
        raise fail(str(exc), 1) from None
    if as_json:
        typer.echo(json.dumps({"study_instance_uid": uid, "requeued": what}))
        return
    typer.secho(f"Study {uid}: {what}", fg=typer.colors.GREEN)


@app.command("reprocess")
def reprocess_cmd(ctx: typer.Context, uid: UidArgument, as_json: JsonOption = False) -> None:
    """Analyse a study again as a new round; its results replace the earlier ones."""
    from cem_node.jobs.admin import NothingToRetryError, StudyNotFoundError, reprocess_study

    sessions = _sessions(ctx)
    try:
        with database_errors():
            round_ = reprocess_study(sessions, uid, actor=admin_actor())
    except StudyNotFoundError as exc:
        raise _not_found(exc) from None
    except NothingToRetryError as exc:
        raise fail(str(exc), 1) from None
    if as_json:
        typer.echo(json.dumps({"study_instance_uid": uid, "analysis_round": round_}))
        return
    typer.secho(f"Study {uid}: round {round_} queued for analysis", fg=typer.colors.GREEN)

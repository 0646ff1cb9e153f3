"""``cem-node models``: list, inspect, verify, activate and import model bundles.

The bundles live in ``[analysis] models_dir`` (``--models-dir`` overrides
it); the bundle used is the active one (``models_dir/active.toml``), else
``[analysis] model``. Every command verifies checksums. Exit codes: 0
success, 1 a bundle failed verification (or could not be written), 2 bad
input: an unknown bundle name, a folder that is not there, a bundle that
already exists (``import`` without ``--force``), an invalid config.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cem_node.cli.context import CliContext, admin_actor, console, fail

if TYPE_CHECKING:
    from cem_node.models import Bundle, BundleError, BundleRegistry

app = typer.Typer(
    name="models",
    help="List, inspect, verify, activate and import model bundles (folders holding "
    "manifest.toml and the checksummed weights and parameter files).",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
ModelsDirOption = Annotated[
    Path | None,
    typer.Option(
        "--models-dir",
        help="Folder of the model bundles (default: [analysis] models_dir of the config).",
        file_okay=False,
    ),
]
NameArgument = Annotated[str, typer.Argument(help="Bundle name (see `cem-node models list`).")]


def _registry(ctx: typer.Context, models_dir: Path | None) -> tuple[BundleRegistry, str]:
    """The registry and the config's default bundle name."""
    from cem_node.models import BundleRegistry

    obj: CliContext = ctx.obj
    settings = obj.settings_or_exit()
    folder = models_dir if models_dir is not None else settings.analysis.bundles_dir
    return BundleRegistry(folder), settings.analysis.model


def _exit_for(exc: BundleError) -> typer.Exit:
    from cem_node.models import BundleUsageError

    return fail(str(exc), 2 if isinstance(exc, BundleUsageError) else 1)


def _short(digest: str | None) -> str:
    return f"{digest[:12]}…" if digest else ""


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


# --------------------------------------------------------------------------- list


@app.command("list")
def list_cmd(
    ctx: typer.Context, models_dir: ModelsDirOption = None, as_json: JsonOption = False
) -> None:
    """List the bundles in the models folder, valid or not, and which one is used."""
    from cem_node.models import BundleError

    registry, default = _registry(ctx, models_dir)
    summaries = registry.list()
    active_error: str | None = None
    try:
        record = registry.active()
    except BundleError as exc:
        record, active_error = None, str(exc)
    selected = record.name if record is not None else default
    if as_json:
        _echo_json(
            {
                "models_dir": str(registry.models_dir),
                "active": record.model_dump(mode="json") if record is not None else None,
                "active_error": active_error,
                "default": default,
                "selected": selected,
                "bundles": [s.to_dict() for s in summaries],
            }
        )
        return
    out = console()
    if not summaries:
        typer.echo(
            f"No model bundles in {registry.models_dir}. Import one with "
            "`cem-node models import DIR`."
        )
    else:
        table = Table(title=f"Model bundles in {registry.models_dir}")
        for column in ("", "name", "version", "status", "intended use", "clinical use", "sha256"):
            table.add_column(column, overflow="fold")
        for s in summaries:
            clinical = (
                ""
                if s.for_clinical_use is None
                else Text("yes", style="green")
                if s.for_clinical_use
                else Text("NO", style="bold red")
            )
            table.add_row(
                "*" if s.name == selected else "",
                s.name,
                s.version or "",
                Text("ok", style="green") if s.valid else Text("INVALID", style="bold red"),
                s.intended_use or "",
                clinical,
                _short(s.sha256),
            )
        out.print(table)
        for s in summaries:
            if not s.valid:
                out.print(Text(f"{s.name}: {s.error}", style="red"))
    if active_error:
        out.print(Text(active_error, style="bold red"))
    if record is not None:
        typer.echo(f"* in use: {record.name} (activated {record.activated_at:%Y-%m-%d %H:%M} UTC)")
    else:
        typer.echo(
            f"* in use: {default} (the config's [analysis] model; none activated with "
            "`cem-node models activate NAME`)"
        )


# --------------------------------------------------------------------------- info


def _kv(values: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    def show(v: Any) -> str:
        if isinstance(v, list | tuple):
            return ", ".join(str(x) for x in v)
        return str(v)

    return "\n".join(f"{k}: {show(v)}" for k, v in values.items() if k not in skip)


def _info_json(bundle: Bundle, active: bool) -> dict[str, Any]:
    return {
        "name": bundle.name,
        "version": bundle.version,
        "path": str(bundle.path),
        "sha256": bundle.sha256,
        "active": active,
        "identity": bundle.identity().model_dump(mode="json"),
        "manifest": bundle.manifest.model_dump(mode="json"),
        "files": [
            {"name": name, "size": bundle.file(name).stat().st_size, "sha256": digest}
            for name, digest in sorted(bundle.manifest.files.items())
        ],
    }


@app.command("info")
def info_cmd(
    ctx: typer.Context,
    name: NameArgument,
    models_dir: ModelsDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a bundle: intended use, training data, thresholds, parameters and files."""
    from cem_node.models import BundleError

    registry, default = _registry(ctx, models_dir)
    try:
        bundle = registry.load(name)
        record = registry.active()
    except BundleError as exc:
        raise _exit_for(exc) from None
    active = record is not None and record.name == bundle.name
    in_use = (record.name if record is not None else default) == bundle.name
    if as_json:
        _echo_json({**_info_json(bundle, active), "in_use": in_use})
        return
    out = console()
    out.print(_intended_use_panel(bundle))
    out.print(_bundle_panel(bundle, active, in_use))
    out.print(_training_panel(bundle.manifest))
    for table in _threshold_tables(bundle.manifest):
        out.print(table)
    out.print(_params_table(bundle.manifest))
    out.print(_files_table(bundle, active))


def _intended_use_panel(bundle: Any) -> Panel:
    """The bundle's intended use, whether it is for clinical use, and its disclaimer."""
    use = bundle.manifest.intended_use
    clinical = (
        Text("For clinical use: yes", style="bold green")
        if use.for_clinical_use
        else Text("For clinical use: NO", style="bold red")
    )
    parts: list[Any] = [Text(use.statement), clinical]
    if use.disclaimer:
        parts.append(Text(use.disclaimer, style="bold yellow"))
    return Panel(
        Group(*parts),
        title=f"{bundle.name} {bundle.version}: intended use",
        expand=False,
        border_style="green" if use.for_clinical_use else "red",
    )


def _bundle_panel(bundle: Any, active: bool, in_use: bool) -> Panel:
    """What the bundle is, where it is, and whether the node uses it."""
    m = bundle.manifest
    about = Table.grid(padding=(0, 2))
    about.add_column(style="bold")
    about.add_column(overflow="fold")
    about.add_row("description", m.bundle.description)
    about.add_row("created", m.bundle.created.isoformat(sep=" "))
    about.add_row("sha256", bundle.sha256)
    about.add_row("path", str(bundle.path))
    about.add_row(
        "in use",
        "yes (activated)" if active else "yes (config default)" if in_use else "no",
    )
    return Panel(about, title="bundle", expand=False)


def _training_panel(m: Any) -> Panel:
    """How the bundle's models were trained."""
    training = Table.grid(padding=(0, 2))
    training.add_column(style="bold")
    training.add_column(overflow="fold")
    training.add_row("description", m.training.description)
    training.add_row(
        "synthetic data", Text("yes", style="yellow") if m.training.synthetic else "no"
    )
    data = m.training.data
    training.add_row("data", data if isinstance(data, str) else _kv(data))
    training.add_row("seed", str(m.training.seed))
    if m.training.command:
        training.add_row("command", m.training.command)
    return Panel(training, title="training", expand=False)


def _threshold_tables(m: Any) -> list[Any]:
    """The decision thresholds and, when the manifest has them, the metrics."""
    thresholds = Table(title="decision thresholds")
    thresholds.add_column("level")
    thresholds.add_column("threshold", justify="right")
    for level, value in m.thresholds.model_dump().items():
        thresholds.add_row(level, f"{value:.4g}")
    tables: list[Any] = [thresholds]
    if m.metrics:
        metrics = Table(title="metrics")
        metrics.add_column("metric")
        metrics.add_column("value", justify="right")
        for key, value in m.metrics.items():
            metrics.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        tables.append(metrics)
    return tables


def _params_table(m: Any) -> Table:
    """The detector, preprocessing, postprocessing and radiomics parameters."""
    params = Table(title="parameters", show_lines=True)
    params.add_column("section", style="bold")
    params.add_column("values", overflow="fold")
    params.add_row("detector", _kv(m.detector.model_dump()))
    params.add_row("preprocessing", _kv(m.preprocessing.model_dump()))
    params.add_row("postprocessing", _kv(m.postprocessing.model_dump()))
    params.add_row("radiomics", _kv(m.radiomics.model_dump(exclude_none=True)))
    return params


def _files_table(bundle: Any, active: bool) -> Table:
    """The bundle's files with their sizes and (verified) checksums."""
    files = Table(title="files (checksums verified)")
    files.add_column("file")
    files.add_column("size", justify="right")
    files.add_column("sha256")
    for entry in _info_json(bundle, active)["files"]:
        files.add_row(entry["name"], _size(entry["size"]), _short(entry["sha256"]))
    return files


# --------------------------------------------------------------------------- verify


@app.command("verify")
def verify_cmd(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Argument(help="Bundle name (default: the bundle in use: active, else config)."),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Verify every bundle.")] = False,
    models_dir: ModelsDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a bundle's manifest and the checksum of every file (exit 1 if one fails)."""
    from cem_node.models import BundleError, UnknownBundleError

    if name and all_:
        raise fail("give a bundle NAME or --all, not both", 2)
    registry, default = _registry(ctx, models_dir)
    checks: list[tuple[str, Callable[[], Bundle]]]
    if all_:
        checks = [(n, lambda n=n: registry.verify(n)) for n in registry.names()]
    elif name:
        checks = [(name, lambda: registry.verify(name))]
    else:  # the bundle in use: explicit > active > config, as the node resolves it
        try:
            in_use = registry.active_name(default) or default
        except BundleError as exc:
            raise _exit_for(exc) from None
        checks = [(in_use, lambda: registry.resolve(None, default))]
    results: list[dict[str, Any]] = []
    for n, check in checks:
        try:
            bundle = check()
        except UnknownBundleError as exc:
            if not all_:
                raise _exit_for(exc) from None
            results.append({"name": n, "valid": False, "error": str(exc), "problems": []})
        except BundleError as exc:
            results.append({"name": n, "valid": False, "error": str(exc), "problems": exc.problems})
        else:
            results.append(
                {
                    "name": n,
                    "valid": True,
                    "version": bundle.version,
                    "sha256": bundle.sha256,
                    "files": len(bundle.manifest.files),
                    "error": None,
                    "problems": [],
                }
            )
    failed = [r for r in results if not r["valid"]]
    if as_json:
        _echo_json({"ok": not failed, "models_dir": str(registry.models_dir), "results": results})
    else:
        if not results:
            typer.echo(f"No model bundles in {registry.models_dir}: nothing to verify.")
        for r in results:
            if r["valid"]:
                typer.secho(
                    f"OK      {r['name']} {r['version']}: manifest and {r['files']} files "
                    f"verified (sha256 {_short(r['sha256'])})",
                    fg=typer.colors.GREEN,
                )
            else:
                typer.secho(f"FAILED  {r['name']}: {r['error']}", fg=typer.colors.RED)
    if failed:
        raise fail(
            f"{len(failed)} of {len(results)} bundle(s) failed verification: "
            + ", ".join(r["name"] for r in failed),
            1,
        )


# --------------------------------------------------------------------------- activate


@app.command("activate")
def activate_cmd(
    ctx: typer.Context,
    name: NameArgument,
    models_dir: ModelsDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Verify a bundle and make it the one the node uses (models_dir/active.toml)."""
    from cem_node.models import BundleError

    registry, _default = _registry(ctx, models_dir)
    try:
        previous = registry.active_name()
    except BundleError:
        previous = None  # an unreadable active.toml is replaced
    try:
        record = registry.activate(name, actor=admin_actor())
        bundle = registry.load(name)
    except BundleError as exc:
        raise _exit_for(exc) from None
    except OSError as exc:
        raise fail(f"cannot write {registry.active_file}: {exc}", 1) from None
    if as_json:
        _echo_json({**record.model_dump(mode="json"), "previous": previous})
        return
    typer.secho(
        f"Activated {record.name} {record.version} (sha256 {_short(record.sha256)})"
        + (f", replacing {previous}" if previous and previous != record.name else ""),
        fg=typer.colors.GREEN,
    )
    use = bundle.manifest.intended_use
    if not use.for_clinical_use:
        typer.secho(f"Not for clinical use: {use.disclaimer}", fg=typer.colors.YELLOW, bold=True)


# --------------------------------------------------------------------------- import


class WeightsDtype(StrEnum):
    float16 = "float16"
    float32 = "float32"


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    source: Annotated[
        Path | None,
        typer.Argument(
            help="The bundle folder to import (its folder name does not matter), or a training "
            "run to pack: a folder with detector/ and radiomics/ sub-folders (the --out of "
            "`cem-node train detector` and `cem-node train radiomics`).",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Import under this name (the copy's manifest is renamed, so its hash "
            "differs from the source's). Required to pack a training run: the bundle's name.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a bundle of the same name.")
    ] = False,
    detector: Annotated[
        Path | None,
        typer.Option(
            "--detector",
            file_okay=False,
            help="Pack a training run: the `cem-node train detector` folder (with --radiomics).",
        ),
    ] = None,
    radiomics: Annotated[
        Path | None,
        typer.Option(
            "--radiomics",
            file_okay=False,
            help="Pack a training run: the `cem-node train radiomics` folder (with --detector).",
        ),
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Packing: the bundle's version (required).")
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", help="Packing: what the bundle is.")
    ] = None,
    intended_use: Annotated[
        str | None,
        typer.Option("--intended-use", help="Packing: what the models are for (a statement)."),
    ] = None,
    clinical: Annotated[
        bool | None,
        typer.Option(
            "--clinical/--not-clinical",
            help="Packing: declare the models fit for clinical use (default: not; refused for "
            "models trained on synthetic data).",
        ),
    ] = None,
    metrics: Annotated[
        Path | None,
        typer.Option(
            "--metrics",
            dir_okay=False,
            help="Packing: an evaluation report.json (`cem-node evaluate`) whose headline "
            "numbers go into [metrics], or a flat JSON object name -> number.",
        ),
    ] = None,
    validation: Annotated[
        Path | None,
        typer.Option(
            "--validation",
            dir_okay=False,
            help="Packing: a TOML or JSON file with the [validation] table (detection, "
            "classification, classification_validated, score_caveat): what the models are "
            "and are not validated for. Without it the classification counts as not validated.",
        ),
    ] = None,
    weights_dtype: Annotated[
        WeightsDtype | None,
        typer.Option(
            "--weights-dtype",
            help="Packing: store the detector weights as float16 (half the size) or float32 "
            "(default: as trained).",
        ),
    ] = None,
    models_dir: ModelsDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Verify a bundle folder and copy it into the models folder, or pack a training run.

    A training run (a folder with detector/ and radiomics/, or --detector and
    --radiomics) is packed into a new bundle named --name with --version: the
    manifest records the training data, seeds, commands, thresholds and
    checksums; models trained on synthetic data are marked not for clinical use.
    """
    runs = _runs_to_pack(source, detector, radiomics)
    if runs is not None:
        _pack_run(
            ctx,
            *runs,
            name=name,
            version=version,
            description=description,
            intended_use=intended_use,
            clinical=bool(clinical),
            metrics=metrics,
            validation=validation,
            weights_dtype=weights_dtype.value if weights_dtype else None,
            force=force,
            models_dir=models_dir,
            as_json=as_json,
        )
        return
    given = {
        "--version": version,
        "--description": description,
        "--intended-use": intended_use,
        "--clinical": clinical,
        "--metrics": metrics,
        "--validation": validation,
        "--weights-dtype": weights_dtype,
    }
    extra = [option for option, value in given.items() if value is not None]
    if extra:
        raise fail(f"{', '.join(extra)}: only for packing a training run; {source} is a bundle", 2)
    assert source is not None
    _import_folder(ctx, source, name, force, models_dir, as_json)


def _runs_to_pack(
    source: Path | None, detector: Path | None, radiomics: Path | None
) -> tuple[Path, Path] | None:
    """The detector and radiomics runs to pack (given, or found in ``source``), or None when
    ``source`` is a bundle to import; exit 2 when the arguments do not say which."""
    from cem_node.models import MANIFEST_NAME

    if detector is not None or radiomics is not None:
        if detector is None or radiomics is None:
            raise fail("--detector and --radiomics go together (the two runs to pack)", 2)
        if source is not None:
            raise fail("give either DIR or --detector and --radiomics, not both", 2)
        return detector, radiomics
    if source is None:
        raise fail(
            "give the bundle folder to import (DIR), or the training run to pack (DIR with "
            "detector/ and radiomics/, or --detector and --radiomics)",
            2,
        )
    if source.is_dir() and not (source / MANIFEST_NAME).exists():
        from cem_node.training.packing import find_training_run

        run = find_training_run(source)
        if run is None:
            raise fail(
                f"{source}: neither a model bundle (no {MANIFEST_NAME}) nor a training run (no "
                "detector/ and radiomics/ sub-folders; or give --detector and --radiomics)",
                2,
            )
        return run
    return None


def _report_imported(
    registry: BundleRegistry, bundle: Bundle, replaced: bool, extra: dict[str, Any], as_json: bool
) -> bool:
    """Print the JSON record (returns True) or nothing; the caller prints its lines."""
    active = registry.active()
    stale_active = (
        active is not None and active.name == bundle.name and active.sha256 != bundle.sha256
    )
    if as_json:
        _echo_json(
            {
                "name": bundle.name,
                "version": bundle.version,
                "sha256": bundle.sha256,
                "path": str(bundle.path),
                **extra,
                "replaced": replaced,
                "active_needs_reactivation": stale_active,
            }
        )
    return stale_active


def _import_folder(
    ctx: typer.Context,
    source: Path,
    name: str | None,
    force: bool,
    models_dir: Path | None,
    as_json: bool,
) -> None:
    from cem_node.models import MANIFEST_NAME, BundleError, read_manifest, sha256_file

    registry, _default = _registry(ctx, models_dir)
    target = name
    if target is None:
        try:
            target = read_manifest(source).bundle.name
        except (BundleError, OSError):
            target = None  # import_bundle says what is wrong
    existed = target is not None and (registry.models_dir / target).is_dir()
    try:
        bundle = registry.import_bundle(source, name=name, force=force)
        source_sha = sha256_file(source / MANIFEST_NAME)
        stale_active = _report_imported(
            registry,
            bundle,
            existed,
            {"source": str(source), "source_sha256": source_sha},
            as_json,
        )
    except BundleError as exc:
        raise _exit_for(exc) from None
    except OSError as exc:
        raise fail(f"cannot import {source}: {exc}", 1) from None
    if as_json:
        return
    typer.secho(
        f"Imported {bundle.name} {bundle.version} into {bundle.path} "
        f"(sha256 {_short(bundle.sha256)}, {len(bundle.manifest.files)} files verified)",
        fg=typer.colors.GREEN,
    )
    if source_sha != bundle.sha256:
        typer.echo(
            f"Renamed from the source's manifest (source sha256 {_short(source_sha)}): "
            "the bundle hash changed."
        )
    _next_steps(bundle, stale_active)


def _next_steps(bundle: Bundle, stale_active: bool) -> None:
    if stale_active:
        typer.secho(
            f"{bundle.name} is the active bundle and its content changed: it is refused until "
            f"activated again with `cem-node models activate {bundle.name}`.",
            fg=typer.colors.YELLOW,
        )
    else:
        typer.echo(f"Use it with `cem-node models activate {bundle.name}`.")


def _pack_run(
    ctx: typer.Context,
    detector: Path,
    radiomics: Path,
    *,
    name: str | None,
    version: str | None,
    description: str | None,
    intended_use: str | None,
    clinical: bool,
    metrics: Path | None,
    validation: Path | None,
    weights_dtype: str | None,
    force: bool,
    models_dir: Path | None,
    as_json: bool,
) -> None:
    from cem_node.models import BundleError
    from cem_node.training.packing import pack_training_run

    registry, dest, existed = _pack_destination(ctx, name, version, force, models_dir)
    try:
        result = pack_training_run(
            detector,
            radiomics,
            dest,
            name=name,
            version=version,
            description=description,
            intended_use=intended_use,
            clinical=clinical,
            metrics_file=metrics,
            validation_file=validation,
            weights_dtype=weights_dtype,  # type: ignore[arg-type]
            overwrite=force,
        )
        bundle = result.bundle
        stale_active = _report_imported(
            registry,
            bundle,
            existed,
            {
                "packed_from": {"detector": str(detector), "radiomics": str(radiomics)},
                "weights_dtype": result.weights_dtype,
                "notes": result.notes,
            },
            as_json,
        )
    except BundleError as exc:
        raise _exit_for(exc) from None
    except OSError as exc:
        raise fail(f"cannot pack {detector} and {radiomics}: {exc}", 1) from None
    if as_json:
        return
    _print_packed(result, stale_active)


def _pack_destination(
    ctx: typer.Context, name: str | None, version: str | None, force: bool, models_dir: Path | None
) -> tuple[BundleRegistry, Path, bool]:
    """The registry, the new bundle's folder and whether a bundle is there already (exit 2
    without a valid --name and --version, or when the name is taken without --force)."""
    from cem_node.models.manifest import check_bundle_name

    if not name:
        raise fail("packing a training run needs --name (the bundle's name)", 2)
    if not version:
        raise fail("packing a training run needs --version (e.g. 1.0.0)", 2)
    try:
        check_bundle_name(name)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    registry, _default = _registry(ctx, models_dir)
    dest = registry.models_dir / name
    existed = dest.is_dir()
    if (dest.exists() or dest.is_symlink()) and not force:
        raise fail(
            f"a bundle named {name!r} is already in {registry.models_dir}: replace it with "
            "--force, or choose another --name",
            2,
        )
    return registry, dest, existed


def _print_packed(result: Any, stale_active: bool) -> None:
    """What was packed, its notes, a not-for-clinical-use warning and the next step."""
    bundle = result.bundle
    use = bundle.manifest.intended_use
    typer.secho(
        f"Packed {bundle.name} {bundle.version} into {bundle.path} "
        f"(sha256 {_short(bundle.sha256)}, {len(bundle.manifest.files)} files verified)",
        fg=typer.colors.GREEN,
    )
    for note in result.notes:
        typer.secho(f"Note: {note}", fg=typer.colors.YELLOW)
    if not use.for_clinical_use:
        typer.secho(f"Not for clinical use: {use.disclaimer}", fg=typer.colors.YELLOW, bold=True)
    _next_steps(bundle, stale_active)

"""``cem-node analyse``: analyse DICOM files without a running node."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cem_node.cli.context import CliContext, console, fail


def _table(findings, out_dir: Path):
    from rich.table import Table

    model = findings.model
    title = (
        f"Study {findings.study_instance_uid} · {model.name} {model.version} "
        f"(sha256 {model.sha256[:12]}) · {findings.device}"
    )
    table = Table(title=title, title_justify="left")
    for name in ("lesion", "breast", "view", "box (x0,y0,x1,y1 px)", "area mm²"):
        table.add_column(name)
    for name in ("DL", "radiomics", "fused"):
        table.add_column(name, justify="right")
    table.add_column("label")
    table.add_column("agree")
    for les in findings.lesions:
        rad = "—" if les.radiomics_probability is None else f"{les.radiomics_probability:.3f}"
        table.add_row(
            les.lesion_id,
            les.laterality,
            les.view,
            ",".join(f"{v:.0f}" for v in les.box),
            "—" if les.area_mm2 is None else f"{les.area_mm2:.1f}",
            f"{les.dl_probability:.3f}",
            rad,
            f"{les.fused_probability:.3f}" + ("" if les.fused_source == "mean" else " (DL)"),
            les.fused_label,
            {True: "yes", False: "no", None: "—"}[les.agreement],
        )
    return table


def _result_name(obj, views: dict[str, str]) -> str:
    """A readable file name: sr.dcm, seg-R-CC.dcm, gsps-R-CC.dcm."""
    ds = obj.dataset
    referenced = [
        instance.ReferencedSOPInstanceUID
        for series in ds.get("ReferencedSeriesSequence", [])
        for instance in list(series.get("ReferencedInstanceSequence", []))
        + list(series.get("ReferencedImageSequence", []))
    ]
    view = next((views[uid] for uid in referenced if uid in views), None)
    return f"{obj.object_type}-{view}.dcm" if view else f"{obj.object_type}.dcm"


def analyse(
    ctx: typer.Context,
    paths: Annotated[
        list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output folder: one sub-folder per study.", file_okay=False
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model bundle name. Default: the active bundle, else [analysis] model.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the findings documents as JSON.")
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", help='"auto", "cpu" or "cuda" (default: config).')
    ] = None,
    dicom: Annotated[
        bool,
        typer.Option(
            "--dicom/--no-dicom",
            help="Also write the SEG, SR and GSPS objects into DIR/<study>/dicom/.",
        ),
    ] = True,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models-dir", help="Folder of model bundles (default: [analysis] models_dir)."
        ),
    ] = None,
) -> None:
    """Analyse CEM images: find, outline and score lesions, without a node.

    Groups the files by study, pairs low-energy and recombined images per
    breast and view with the node's selection rules, and writes per study
    findings.json, an overlay PNG per view (outlines and scores on the RC
    and LE images) and, unless --no-dicom, the SEG (per view with lesions),
    SR (per study) and GSPS objects the node would send, in dicom/. Exit
    code 0 when every study with a pair was analysed, 1 when one failed or
    none could be analysed, 2 for bad input.
    """
    obj: CliContext = ctx.obj
    settings = obj.settings_or_exit()
    analysis = settings.analysis
    if device is not None:
        analysis = analysis.model_copy(update={"device": device})
    if models_dir is not None:
        analysis = analysis.model_copy(update={"models_dir": models_dir})
    err = console()
    err.file = sys.stderr
    studies = _read_studies(paths, settings, err)
    models = _load_models(model, analysis, err)

    documents = []
    failed = 0
    for study in studies:
        if study.request is None:
            err.print(f"[yellow]{study.study_instance_uid}[/]: {study.reason}")
            failed += 1
            continue
        try:
            findings, pairs = _analyse_study(models, study.request, analysis)
        except Exception as exc:
            err.print(f"[red]{study.study_instance_uid}: analysis failed: {exc}[/]")
            failed += 1
            continue
        study_dir = out / study.study_instance_uid
        overlays, written = _write_study(findings, pairs, study.request, study_dir, dicom)
        documents.append(findings.model_dump(mode="json"))
        if not as_json:
            _print_study(findings, study_dir, overlays, written)
    if as_json:
        typer.echo(json.dumps({"studies": documents}, indent=2))
    if failed or not documents:
        raise typer.Exit(1)


def _read_studies(paths: list[Path], settings: Any, err: Any) -> list[Any]:
    """The studies among ``paths`` (exit 2 when there is none); non-DICOM files are named."""
    from cem_node.pipeline.service import requests_from_files

    try:
        studies, skipped = requests_from_files(paths, settings.selection)
    except FileNotFoundError as exc:
        raise fail(str(exc), 2) from None
    if skipped:
        err.print(f"[yellow]skipped {len(skipped)} file(s) that are not DICOM images[/]")
        for line in skipped[:3]:
            err.print(f"  {line}")
    if not studies:
        raise fail("no DICOM study among the given paths", 2)
    return studies


def _load_models(model: str | None, analysis: Any, err: Any) -> Any:
    """The resolved bundle's models (exit 2 when unknown, 1 when they cannot be loaded)."""
    from cem_node.models import BundleError, BundleRegistry
    from cem_node.pipeline.analyse import LoadedModels

    registry = BundleRegistry(analysis.bundles_dir)
    try:
        bundle = registry.resolve(model, analysis.model)
    except BundleError as exc:
        raise fail(str(exc), 2) from None
    try:
        models = LoadedModels.load(bundle, analysis.device)
    except Exception as exc:  # a bundle that verifies but cannot be loaded
        raise fail(f"cannot load model bundle {bundle.manifest.bundle.name}: {exc}", 1) from None
    identity = bundle.identity()
    if identity.disclaimer:
        err.print(f"[bold yellow]{identity.name} {identity.version}: {identity.disclaimer}[/]")
    return models


def _analyse_study(models: Any, request: Any, analysis: Any) -> tuple[Any, Any]:
    """The findings of one study, with the decode time in its timings, and its pairs."""
    from cem_node.pipeline.service import analyse_request, decode_pairs

    started = time.perf_counter()
    pairs = decode_pairs(request)  # once: the analysis and the overlays use them
    decoded = time.perf_counter() - started
    findings = analyse_request(models, request, analysis, pairs)
    timings = {**findings.timings_s, "decode": round(decoded, 4)}
    timings["total"] = round(time.perf_counter() - started, 4)
    findings = findings.model_copy(update={"timings_s": timings})
    return findings, pairs


def _write_study(
    findings: Any, pairs: Any, request: Any, study_dir: Path, dicom: bool
) -> tuple[list[Any], list[Path]]:
    """Write findings.json, the overlays and (``dicom``) the result objects of one study."""
    from cem_node.pipeline.overlay import write_view_overlay

    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "findings.json").write_text(findings.to_json() + "\n")
    overlays = []
    for pair in pairs:
        overlays.append(
            write_view_overlay(
                findings,
                pair.laterality,
                pair.view,
                pair.recombined.pixels,
                pair.low_energy.pixels,
                study_dir / f"overlay-{pair.laterality}-{pair.view}.png",
            )
        )
    written = []
    if dicom:
        from cem_node.dicom.objects.results import encode_results

        views = {v.recombined_sop_instance_uid: f"{v.laterality}-{v.view}" for v in findings.views}
        views.update(
            {v.low_energy_sop_instance_uid: f"{v.laterality}-{v.view}" for v in findings.views}
        )
        dicom_dir = study_dir / "dicom"
        dicom_dir.mkdir(exist_ok=True)
        for obj in encode_results(findings, list(request.headers)):
            path = dicom_dir / _result_name(obj, views)
            obj.dataset.save_as(path, enforce_file_format=True)
            written.append(path)
    return overlays, written


def _print_study(findings: Any, study_dir: Path, overlays: list[Any], written: list[Path]) -> None:
    """One study's table, breast and patient labels, notes and files, on stdout."""
    out_console = console()
    out_console.print(_table(findings, study_dir))
    summary = ", ".join(
        f"{b.laterality}: {b.label}" + ("" if b.score is None else f" ({b.score:.2f})")
        for b in findings.breasts
    )
    out_console.print(
        f"breasts {summary}; patient: {findings.patient.label}"
        + ("" if findings.patient.score is None else f" ({findings.patient.score:.2f})")
    )
    for note in condensed_notes(findings.notes):
        out_console.print(f"  note: {note}")
    out_console.print(
        f"  wrote {study_dir / 'findings.json'}, {len(overlays)} overlay PNG(s)"
        + (f" and {len(written)} DICOM object(s) in {study_dir / 'dicom'}" if written else "")
    )


def condensed_notes(notes: list[str]) -> list[str]:
    """The findings' notes for the terminal: a lesion's widened bin widths as one line.

    With 12-16-bit images and a grey-level cap, the radiomics note a widened
    bin width on most of a lesion's 18 filtered images; findings.json keeps
    every note, the terminal gets one line per lesion.
    """
    widened: dict[str, int] = {}
    out: list[str] = []
    for note in notes:
        lesion, _, rest = note.partition(": ")
        if "binWidth widened" in rest:
            if lesion not in widened:
                out.append(lesion)  # placeholder, in the order seen
            widened[lesion] = widened.get(lesion, 0) + 1
        else:
            out.append(note)
    return [
        f"{item}: radiomics bin width widened on {widened[item]} filtered image(s) to stay "
        "within max_grey_levels (details in findings.json)"
        if item in widened
        else item
        for item in out
    ]

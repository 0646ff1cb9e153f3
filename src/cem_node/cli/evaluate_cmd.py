"""``cem-node evaluate``: a model bundle on a labelled dataset, the paper's Tables 2 and 3."""

from __future__ import annotations

import contextlib
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cem_node.cli.context import CliContext, console, fail
from cem_node.training import run_files


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise fail(f"--fractions {text!r}: expected numbers like 0.8,0.1,0.1", 2) from None
    if len(values) not in (2, 3):
        raise fail(f"--fractions {text!r}: give train,val[,test]", 2)
    return values


def _split_file_datasets(path: Path) -> list[str]:
    """The dataset SPECs a training's split.json names (``"datasets": [...]``)."""
    import json

    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise fail(f"cannot read the split file {path}: {exc}", 2) from None
    specs = record.get("datasets") if isinstance(record, dict) else None
    if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
        raise fail(f"split file {path} names no datasets: give --dataset SPEC", 2)
    return specs


def _read_folds(folder: Path) -> Any:
    """``folder/folds.json`` (exit 2 when missing or invalid)."""
    from cem_node.training.datasets import DatasetError
    from cem_node.training.folds import read_folds

    try:
        return read_folds(folder)
    except DatasetError as exc:
        raise fail(str(exc), 2) from None


def _summary(document: dict) -> list[str]:
    rule = document["classification_rule"]
    t2 = document["table2"][rule]
    lines = []
    for level in ("per_lesion", "per_image", "per_patient"):
        sens = t2[level]["sensitivity"]
        dice = t2[level]["mean_dice"]
        value = "n/a" if sens["value"] is None else f"{100 * sens['value']:.0f}%"
        dice_text = "n/a" if dice["value"] is None else f"{dice['value']:.2f}"
        lines.append(
            f"{level.replace('_', ' ')}: identification sensitivity {value} ({rule}), "
            f"mean Dice {dice_text}"
        )
    for mode in ("manual", "dl", "dl_all"):
        auc = document["table3"][mode]["lesion"]["rows"]["fused"]["metrics"]["auc"]
        text = (
            f"{auc['value']:.2f}"
            + (f" [{auc['ci'][0]:.2f}, {auc['ci'][1]:.2f}]" if auc.get("ci") else "")
            if auc["value"] is not None
            else f"n/a ({auc['reason']})"
        )
        lines.append(f"{document['table3'][mode]['title']}: DL + radiomics AUC per lesion {text}")
    return lines


def evaluate(
    ctx: typer.Context,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output folder: report.md, report.json, cases.json and the PNG figures.",
            file_okay=False,
        ),
    ],
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset",
            "-d",
            help="Dataset SPEC (repeatable): synthetic:N[:SEED[:SIZE]], cdd-cesm:PATH or "
            "manifest:CSV. Default with --split-file: the datasets the split file names.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Model bundle name. Default: the active bundle, else \\[analysis] model.",
        ),
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models-dir", help="Folder of model bundles (default: \\[analysis] models_dir)."
        ),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            "--split",
            help="test or val: that part of the patient split (as in training); all: every "
            "sample (an external dataset).",
        ),
    ] = "test",
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="Seed of the patient split (default: the bundle's training seed)."
        ),
    ] = None,
    fractions: Annotated[
        str,
        typer.Option("--fractions", help="Split fractions train,val,test (as in training)."),
    ] = "0.8,0.1,0.1",
    split_file: Annotated[
        Path | None,
        typer.Option(
            "--split-file",
            dir_okay=False,
            help="The training's split.json (cem-node train): take the --split part from it "
            "instead of recomputing the split from --seed and --fractions.",
        ),
    ] = None,
    bootstrap: Annotated[
        int,
        typer.Option("--bootstrap", min=0, help="Bootstrap resamples for the 95% CIs (0: none)."),
    ] = 2000,
    bootstrap_seed: Annotated[
        int, typer.Option("--bootstrap-seed", help="Seed of the bootstrap resampling.")
    ] = 0,
    device: Annotated[
        str | None, typer.Option("--device", help='"auto", "cpu" or "cuda" (default: config).')
    ] = None,
    radiomics_workers: Annotated[
        int | None,
        typer.Option(
            "--radiomics-workers",
            min=1,
            help="Radiomics worker processes (default: \\[analysis] radiomics_workers).",
        ),
    ] = None,
    folds_dir: Annotated[
        Path | None,
        typer.Option(
            "--folds",
            file_okay=False,
            help="A cross-validation folder ('cem-node train detector --folds K --out DIR'): "
            "each fold's detector on its own held-out patients, pooled into one report with "
            "intervals resampled by patient. The --model bundle gives the radiomics model "
            "and the thresholds; --split, --seed and --fractions are not used.",
        ),
    ] = None,
    detector_dir: Annotated[
        Path | None,
        typer.Option(
            "--detector",
            file_okay=False,
            help="A detector training run ('cem-node train detector --out DIR'): its weights, "
            "architecture and operating point replace the bundle's detector, so a run can be "
            "evaluated before it is packed. The --model bundle gives the radiomics model and "
            "the thresholds.",
        ),
    ] = None,
) -> None:
    """Evaluate a model bundle on a labelled dataset: the paper's Tables 2 and 3.

    Runs the bundle over the chosen split study by study (as the node would),
    matches the detections to the ground-truth lesions (mask IoU >= 0.1 and
    >= 0.5), classifies the lesions with manual and with DL masks, and writes
    report.md / report.json (every measure with a 95% bootstrap CI, or the
    reason it cannot be computed), cases.json and ROC, calibration and Dice
    plots. The thresholds are the bundle's (training); none is tuned here.
    With --folds DIR, the detectors of DIR/fold-1 ... DIR/fold-K each
    evaluate their fold's validation patients, the records are pooled (every
    image once, out of fold) and the intervals resample patients.
    Exit code 0 when every study was evaluated, 1 when one failed or the
    bundle cannot be loaded (the report is still written when possible),
    2 for bad input.
    """
    from cem_node.training.evaluation import SPLITS

    obj: CliContext = ctx.obj
    analysis = obj.settings_or_exit().analysis
    if device is not None:
        if device not in ("auto", "cpu", "cuda"):
            raise fail(f"--device {device!r}: use auto, cpu or cuda", 2)
        analysis = analysis.model_copy(update={"device": device})
    if models_dir is not None:
        analysis = analysis.model_copy(update={"models_dir": models_dir})
    if split not in SPLITS:
        raise fail(f"--split {split!r}: use one of {', '.join(SPLITS)}", 2)
    split_fractions = _fractions(fractions)
    if detector_dir is not None and folds_dir is not None:
        raise fail("--detector and --folds exclude each other: --folds has a detector per fold", 2)
    specs, folds_record = _resolve_specs(list(dataset or []), folds_dir, split_file)
    bundle = _resolve_bundle(model, analysis)
    split_seed = bundle.manifest.training.seed if seed is None else seed
    if folds_dir is not None:
        _evaluate_folds(
            folds_dir,
            folds_record,
            specs,
            bundle,
            analysis,
            out,
            bootstrap,
            bootstrap_seed,
            radiomics_workers,
        )
        return
    chosen = _Selection(split, split_file, split_seed, split_fractions, fractions, detector_dir)
    _evaluate_split(
        specs, chosen, bundle, analysis, out, bootstrap, bootstrap_seed, radiomics_workers
    )


@dataclass(frozen=True)
class _Selection:
    """Which samples ``evaluate`` takes: ``split`` of the split file or of a fresh split."""

    split: str
    split_file: Path | None
    seed: int
    fractions: tuple[float, ...]
    fractions_text: str
    #: a training run whose detector replaces the bundle's (``--detector``)
    detector_dir: Path | None = None


def _resolve_specs(
    specs: list[str], folds_dir: Path | None, split_file: Path | None
) -> tuple[list[str], Any]:
    """The dataset SPECs to read (given, or named by the folds or the split file) and the
    folds record of ``--folds``; exit 2 when there are none or one is malformed."""
    from cem_node.training.datasets import DatasetError, parse_spec

    folds_record = None
    if folds_dir is not None:
        if split_file is not None:
            raise fail("--folds takes each fold's split.json: leave out --split-file", 2)
        folds_record = _read_folds(folds_dir)
        specs = specs or list(folds_record.datasets)
    if not specs and split_file is not None:
        specs = _split_file_datasets(split_file)
    if not specs:
        raise fail("give --dataset SPEC (or --split-file naming its datasets)", 2)
    try:
        for spec in specs:
            parse_spec(spec)
    except DatasetError as exc:
        raise fail(str(exc), 2) from None
    return specs, folds_record


def _resolve_bundle(model: str | None, analysis: Any) -> Any:
    """The ``--model`` bundle, else the active one, else ``[analysis] model`` (exit 2)."""
    from cem_node.models import BundleError, BundleRegistry

    registry = BundleRegistry(analysis.bundles_dir)
    try:
        return registry.resolve(model, analysis.model)
    except BundleError as exc:
        raise fail(str(exc), 2) from None


def _stderr_console() -> Any:
    """The rich console, writing to stderr (progress, warnings)."""
    err = console()
    err.file = sys.stderr
    return err


@contextlib.contextmanager
def _progress_bars(err: Any) -> Iterator[Any]:
    """The transient progress display of an evaluation."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        yield progress


def _read_data(
    progress: Any, specs: list[str], select: Callable[[Any], Any] = lambda data: None
) -> tuple[Any, Any]:
    """The datasets of ``specs`` and ``select(datasets)``, with a progress bar while they are
    read or generated (exit 2 on a DatasetError)."""
    from cem_node.training.datasets import DatasetError, load_datasets

    generating = progress.add_task(f"reading {' + '.join(specs)}", total=None)

    def on_generate(description: str, done: int, total: int) -> None:
        progress.update(generating, description=description, completed=done, total=total)

    try:
        data = load_datasets(specs, progress=on_generate)
        selected = select(data)
    except DatasetError as exc:
        raise fail(str(exc), 2) from None
    progress.remove_task(generating)
    return data, selected


def _load_models(bundle: Any, analysis: Any) -> Any:
    """The bundle's models on the configured device (exit 1 when they cannot be loaded)."""
    from cem_node.pipeline.analyse import LoadedModels

    try:
        return LoadedModels.load(bundle, analysis.device)
    except Exception as exc:  # a bundle that verifies but cannot be loaded
        raise fail(f"cannot load model bundle {bundle.manifest.bundle.name}: {exc}", 1) from None


def _evaluate_split(
    specs: list[str],
    chosen: _Selection,
    bundle: Any,
    analysis: Any,
    out: Path,
    bootstrap: int,
    bootstrap_seed: int,
    radiomics_workers: int | None,
) -> None:
    """``evaluate`` without ``--folds``: the bundle on one part of the datasets."""
    from cem_node.pipeline.service import effective_params
    from cem_node.training.evaluation import evaluate_samples
    from cem_node.training.report import ReportContext, write_report

    err = _stderr_console()
    manifest = bundle.manifest
    dataset_text = " + ".join(specs)
    split, split_file, split_seed = chosen.split, chosen.split_file, chosen.seed
    with _progress_bars(err) as progress:
        data, samples = _read_selection(progress, specs, chosen)
        models = _load_models(bundle, analysis)
        identity = bundle.identity()
        if identity.disclaimer:
            err.print(f"[bold yellow]{identity.name} {identity.version}: {identity.disclaimer}[/]")
        swapped: list[str] = []
        if chosen.detector_dir is not None:
            models = _swap_detector(
                models, chosen.detector_dir, f"--detector {chosen.detector_dir}"
            )
            swapped = [
                f"the bundle's detector was replaced by the training run in "
                f"{chosen.detector_dir} (its weights, architecture and operating point)"
            ]
        post, radiomics, notes = effective_params(analysis, models.bundle)
        notes = [*swapped, *notes]
        workers = radiomics_workers or analysis.radiomics_workers
        task = progress.add_task("evaluating", total=None)

        def on_study(done: int, total: int, name: str) -> None:
            progress.update(task, completed=done, total=total, description=f"evaluated {name}")

        records = evaluate_samples(
            models,
            samples,
            postprocess=post,
            radiomics_settings=radiomics,
            radiomics_workers=workers,
            progress=on_study,
        )
        progress.update(task, description="bootstrap and figures")
        context = ReportContext(
            dataset=dataset_text,
            split=split,
            split_file=None if split_file is None else str(split_file),
            split_seed=None if split == "all" or split_file else split_seed,
            split_fractions=None if split == "all" or split_file else chosen.fractions,
            samples_selected=len(samples),
            bundle={
                **identity.model_dump(),
                "training": manifest.training.model_dump(mode="json"),
            },
            device=models.device_description,
            skipped_samples=list(data.skipped),
            settings_notes=notes,
            command=_split_command(manifest.bundle.name, specs, chosen, bootstrap, bootstrap_seed),
        )
        files = write_report(records, context, out, n_resamples=bootstrap, seed=bootstrap_seed)

    import json

    document = json.loads(files.report_json.read_text())
    out_console = console()
    for line in _summary(document):
        out_console.print(line)
    _print_files_and_failures(files, records, err)


def _swap_detector(models: Any, detector_dir: Path, what: str) -> Any:
    """``models`` with the detector of a training run in place of the bundle's (exit 1,
    naming ``what``, when it cannot be loaded)."""
    from cem_node.training.evaluation import fold_models

    try:
        return fold_models(models, detector_dir)
    except (ValueError, OSError, RuntimeError) as exc:
        raise fail(f"{what}: cannot load the detector: {exc}", 1) from None


def _read_selection(progress: Any, specs: list[str], chosen: _Selection) -> tuple[Any, list[Any]]:
    """The datasets and the samples ``chosen`` takes from them (exit 2 when there are none)."""
    from cem_node.training.evaluation import select_from_split_file, select_samples

    split, split_file, split_seed = chosen.split, chosen.split_file, chosen.seed

    def select(data: Any) -> list[Any]:
        if split_file is not None:
            return select_from_split_file(data, split_file, split)
        return select_samples(data, split, split_seed, chosen.fractions)

    data, samples = _read_data(progress, specs, select)
    if not samples:
        where = (
            f"of {split_file}"
            if split_file is not None
            else f"(seed {split_seed}, fractions {chosen.fractions_text})"
        )
        raise fail(f"the {split} part of {' + '.join(specs)} {where} holds no sample", 2)
    return data, samples


def _split_command(
    bundle_name: str, specs: list[str], chosen: _Selection, bootstrap: int, bootstrap_seed: int
) -> str:
    """The command that repeats this evaluation, as the report records it."""
    return shlex.join(
        [
            "cem-node",
            "evaluate",
            "--model",
            bundle_name,
            *(part for spec in specs for part in ("--dataset", spec)),
            "--split",
            chosen.split,
            *(
                ["--split-file", str(chosen.split_file)]
                if chosen.split_file is not None
                else ["--seed", str(chosen.seed), "--fractions", chosen.fractions_text]
                if chosen.split != "all"
                else []
            ),
            *(["--detector", str(chosen.detector_dir)] if chosen.detector_dir else []),
            "--bootstrap",
            str(bootstrap),
            "--bootstrap-seed",
            str(bootstrap_seed),
        ]
    )


def _print_files_and_failures(files: Any, records: Any, err: Any) -> None:
    """The files written; exit 1 when a study failed or no image could be evaluated."""
    out_console = console()
    out_console.print(
        f"wrote {files.report_md}, {files.report_json.name}, {files.cases_json.name} and "
        f"{len(files.figures)} figures"
    )
    if records.failures:
        err.print(f"[red]{len(records.failures)} studies failed and are not in the report:[/]")
        for line in records.failures[:5]:
            err.print(f"  {line}")
        raise typer.Exit(1)
    if not records.images:
        raise fail("no image could be evaluated", 1)


def _fold_samples(data: Any, fold_dir: Path, patients: list[str], number: int) -> list[Any]:
    """The held-out samples of one fold, from its split.json (exit 2 when they disagree
    with folds.json or the fold has not been trained)."""
    from cem_node.training.datasets import DatasetError
    from cem_node.training.evaluation import select_from_split_file

    for needed in (run_files.SPLIT, run_files.DETECTOR_WEIGHTS, run_files.DETECTOR_CONFIG):
        if not (fold_dir / needed).is_file():
            raise fail(
                f"fold {number}: {fold_dir / needed} is missing: train it with 'cem-node train "
                f"detector --folds K --fold {number}' (the same --out)",
                2,
            )
    try:
        samples = select_from_split_file(data, fold_dir / run_files.SPLIT, "val")
    except DatasetError as exc:
        raise fail(f"fold {number}: {exc}", 2) from None
    if sorted({s.patient_id for s in samples}) != sorted(patients):
        raise fail(
            f"fold {number}: {fold_dir / 'split.json'} holds out other patients than folds.json",
            2,
        )
    return samples


def _evaluate_folds(
    folds_dir: Path,
    record: Any,
    specs: list[str],
    bundle: Any,
    analysis: Any,
    out: Path,
    bootstrap: int,
    bootstrap_seed: int,
    radiomics_workers: int | None,
) -> None:
    """``evaluate --folds``: every fold's detector on its held-out patients, pooled."""
    from cem_node.training.evaluation import pool_records
    from cem_node.training.report import ReportContext, write_report

    err = _stderr_console()
    manifest = bundle.manifest
    with _progress_bars(err) as progress:
        data, _ = _read_data(progress, specs)
        fold_dirs = [folds_dir / name for name in record.fold_dirs]
        samples = [
            _fold_samples(data, d, p, n)
            for n, (d, p) in enumerate(zip(fold_dirs, record.patients, strict=True), start=1)
        ]
        base = _load_models(bundle, analysis)
        workers = radiomics_workers or analysis.radiomics_workers
        per_fold, rows, notes = [], [], []
        for number, (fold_dir, fold_samples) in enumerate(
            zip(fold_dirs, samples, strict=True), start=1
        ):
            records, row = _evaluate_fold(
                progress, base, analysis, number, fold_dir, fold_samples, workers, notes
            )
            per_fold.append(records)
            rows.append(row)
        pooled = pool_records(per_fold)
        identity = bundle.identity()
        context = ReportContext(
            dataset=" + ".join(specs),
            split="folds",
            split_file=None,
            samples_selected=sum(len(s) for s in samples),
            bundle={**identity.model_dump(), "training": manifest.training.model_dump(mode="json")},
            device=base.device_description,
            skipped_samples=list(data.skipped),
            settings_notes=notes,
            command=_folds_command(
                folds_dir, manifest.bundle.name, specs, bootstrap, bootstrap_seed
            ),
            bootstrap_unit="patient",
            cross_validation=_cross_validation(folds_dir, record, rows),
        )
        files = write_report(pooled, context, out, n_resamples=bootstrap, seed=bootstrap_seed)
    _print_folds(files, rows, pooled, err)


def _evaluate_fold(
    progress: Any,
    base: Any,
    analysis: Any,
    number: int,
    fold_dir: Path,
    fold_samples: list[Any],
    workers: int,
    notes: list[str],
) -> tuple[Any, dict[str, Any]]:
    """One fold's detector on its held-out samples: the records and the fold's summary row
    (its settings notes are added to ``notes``; exit 1 when the detector cannot be loaded)."""
    from cem_node.pipeline.service import effective_params
    from cem_node.training.evaluation import evaluate_samples, fold_summary

    models = _swap_detector(base, fold_dir, f"fold {number}")
    post, radiomics, fold_notes = effective_params(analysis, models.bundle)
    notes.extend(f"fold {number}: {n}" for n in fold_notes)
    task = progress.add_task(f"fold {number}", total=None)

    def on_study(done: int, total: int, name: str) -> None:
        progress.update(task, completed=done, total=total, description=f"{name}")

    records = evaluate_samples(
        models,
        fold_samples,
        postprocess=post,
        radiomics_settings=radiomics,
        radiomics_workers=workers,
        progress=on_study,
    )
    progress.remove_task(task)
    row = {
        "fold": number,
        "detector": str(fold_dir),
        "keep_score": post.keep_score,
        "short_side": models.bundle.manifest.preprocessing.short_side,
        **fold_summary(records),
    }
    return records, row


def _folds_command(
    folds_dir: Path, bundle_name: str, specs: list[str], bootstrap: int, bootstrap_seed: int
) -> str:
    """The command that repeats this cross-validated evaluation, as the report records it."""
    return shlex.join(
        [
            "cem-node",
            "evaluate",
            "--folds",
            str(folds_dir),
            "--model",
            bundle_name,
            *(part for spec in specs for part in ("--dataset", spec)),
            "--bootstrap",
            str(bootstrap),
            "--bootstrap-seed",
            str(bootstrap_seed),
        ]
    )


def _cross_validation(folds_dir: Path, record: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's description of the folds and their per-fold rows."""
    return {
        "k": record.k,
        "seed": record.seed,
        "folds_dir": str(folds_dir),
        "folds_file": str(folds_dir / run_files.FOLDS),
        "patients": sum(len(p) for p in record.patients),
        "patients_per_fold": [len(p) for p in record.patients],
        "per_fold": rows,
    }


def _print_folds(files: Any, rows: list[dict[str, Any]], pooled: Any, err: Any) -> None:
    """The pooled summary and one line per fold; exit 1 when a study failed."""
    import json

    document = json.loads(files.report_json.read_text())
    out_console = console()
    for row in rows:
        sens, dice = row["per_image_sensitivity"], row["mean_dice_per_image"]
        fp = row["false_positives_per_image"]
        out_console.print(
            f"fold {row['fold']}: {row['images']} images, per-image sensitivity "
            f"{'n/a' if sens is None else f'{100 * sens:.0f}%'}, mean Dice per image "
            f"{'n/a' if dice is None else f'{dice:.2f}'}, false positives per image "
            f"{'n/a' if fp is None else f'{fp:.2f}'}"
        )
    for line in _summary(document):
        out_console.print(f"pooled {line}")
    _print_files_and_failures(files, pooled, err)

"""``cem-node train radiomics``: train the radiomics classifier and choose the thresholds.

See :mod:`cem_node.cli.train_cmd` for the command group.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from cem_node.cli.context import console, fail
from cem_node.cli.train_common import (
    CacheDirOption,
    Device,
    ProgressOption,
    ThreadsOption,
    _command_line,
    _load,
    _progress_bars,
    _pydantic_message,
    _set_threads,
)
from cem_node.training.run_files import SPLIT


class MaskSource(StrEnum):
    manual = "manual"
    detector = "detector"


class Grid(StrEnum):
    paper = "paper"
    fast = "fast"


class Selection(StrEnum):
    rfe = "rfe"
    rfecv = "rfecv"


def _read_ages(path: Path) -> dict[str, float]:
    """``patient_id,age_years`` rows of a CSV file (header names, any order)."""
    import csv

    if not path.is_file():
        raise fail(f"--ages: file not found: {path}", 2)
    ages: dict[str, float] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = set(reader.fieldnames or ())
            if not {"patient_id", "age_years"} <= fields:
                raise fail(f"--ages {path}: needs the columns patient_id and age_years", 2)
            for number, row in enumerate(reader, start=2):
                text = (row.get("age_years") or "").strip()
                if not text:
                    continue
                try:
                    value = float(text)
                except ValueError:
                    raise fail(
                        f"--ages {path} row {number}: age {text!r} is not a number", 2
                    ) from None
                if not 0 <= value < 150:
                    raise fail(f"--ages {path} row {number}: age {value} is out of range", 2)
                ages[str(row["patient_id"]).strip()] = value
    except OSError as exc:
        raise fail(f"cannot read --ages {path}: {exc}", 2) from None
    return ages


def radiomics(
    dataset: Annotated[
        list[str],
        typer.Option(
            "--dataset",
            "-d",
            help="Training data (repeatable), the same SPECs as the detector's training.",
        ),
    ],
    detector_dir: Annotated[
        Path,
        typer.Option(
            "--detector",
            file_okay=False,
            help="The `cem-node train detector` folder (detector.safetensors, "
            "detector_config.json, split.json).",
        ),
    ],
    masks: Annotated[
        MaskSource,
        typer.Option(
            help="manual: the classifier learns from the ground-truth masks; detector: from the "
            "masks of the detections matched to a lesion (IoU >= 0.1)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            file_okay=False,
            help="Output folder: radiomics_model.json, radiomics_features.json, "
            "radiomics_params.json, radiomics_settings.json, thresholds.json, summary.json and "
            "the feature cache (features.npz, features.json; reused by a later run).",
        ),
    ],
    split_file: Annotated[
        Path | None,
        typer.Option(
            dir_okay=False,
            help="Split whose 'train' part is used (default: DETECTOR/split.json).",
        ),
    ] = None,
    grid: Annotated[
        Grid, typer.Option(help="XGBoost grid: paper (600 candidates) or fast (4).")
    ] = Grid.paper,
    selection: Annotated[
        Selection,
        typer.Option(help="rfe: down to --n-features; rfecv: the number by 10-fold CV AUC."),
    ] = Selection.rfe,
    n_features: Annotated[int, typer.Option(min=1, help="Features kept by RFE.")] = 10,
    age: Annotated[
        bool,
        typer.Option(
            "--age",
            help="Add the patient's age (from --ages, or a synthetic study's ground truth).",
        ),
    ] = False,
    ages_file: Annotated[
        Path | None,
        typer.Option(
            "--ages", dir_okay=False, help="CSV with the columns patient_id and age_years."
        ),
    ] = None,
    settings_file: Annotated[
        Path | None,
        typer.Option(
            "--radiomics-settings",
            dir_okay=False,
            help="JSON of the radiomics settings (default: the bundle defaults, the paper's).",
        ),
    ] = None,
    cv_folds: Annotated[
        int, typer.Option(min=2, help="Folds of the grid search and of the OOF predictions.")
    ] = 5,
    workers: Annotated[
        int, typer.Option(min=1, help="Radiomics worker processes (and parallel grid fits).")
    ] = 1,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the selection, folds, XGBoost.")] = 0,
    device: Annotated[Device, typer.Option(help="Where the detector runs.")] = Device.auto,
    threads: ThreadsOption = None,
    cache_dir: CacheDirOption = None,
    progress: ProgressOption = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train the radiomics classifier on the detector's training images; choose the thresholds.

    Runs the detector as the analysis does, matches its detections to the
    lesions (mask IoU >= 0.1), extracts the radiomics (cached in DIR), selects
    the features (z-score, variance, Spearman 0.85, RFE/RFECV), fits XGBoost
    by grid search with stratified CV, and writes the Youden thresholds of the
    DL, radiomics (out-of-fold), fused, breast and patient scores. Pack the
    result with `cem-node models import`.
    """
    from rich.console import Console

    err = Console(stderr=True)
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file, not a folder", 2)
    split_path = split_file or detector_dir / SPLIT
    keys = _train_keys(detector_dir, split_path)
    settings = _radiomics_settings(settings_file)
    ages = _read_ages(ages_file) if ages_file is not None else None
    if ages is not None and not age:
        err.print("[yellow]warning:[/yellow] --ages is ignored without --age")
    _set_threads(threads)

    with _progress_bars(err, progress) as report:
        data = _load(dataset, cache_dir, report)
        samples = _train_samples(data, keys, split_path)
        result = _fit(
            samples,
            detector_dir,
            out,
            masks=masks.value,
            settings=settings,
            grid=grid.value,
            selection=selection.value,
            n_features=n_features,
            use_age=age,
            ages=ages,
            seed=seed,
            cv_folds=cv_folds,
            workers=workers,
            device=device.value,
            datasets=list(dataset),
            split_file=split_path,
            command=_command_line(),
            progress=report,
        )

    summary = _summary(out, result)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_table(out, result, err)


def _train_keys(detector_dir: Path, split_path: Path) -> list[str]:
    """The sample keys of the split's 'train' part (exit 2 when the detector folder or the
    split file cannot be read)."""
    from cem_node.training.radiomics_training import (
        RadiomicsTrainingError,
        read_detector_run,
        read_split_file,
    )

    try:
        read_detector_run(detector_dir)
        return read_split_file(split_path, "train")
    except RadiomicsTrainingError as exc:
        raise fail(str(exc), 2) from None


def _radiomics_settings(settings_file: Path | None) -> Any:
    """``--radiomics-settings`` (default: the bundle defaults); exit 2 when unreadable."""
    from pydantic import ValidationError

    from cem_node.contracts.params import RadiomicsSettings

    settings = RadiomicsSettings()
    if settings_file is not None:
        if not settings_file.is_file():
            raise fail(f"--radiomics-settings: file not found: {settings_file}", 2)
        try:
            settings = RadiomicsSettings.model_validate_json(settings_file.read_text())
        except (OSError, ValidationError) as exc:
            raise fail(
                f"--radiomics-settings {settings_file}: {_pydantic_message(exc)}", 2
            ) from None
    return settings


def _train_samples(data: Any, keys: list[str], split_path: Path) -> list[Any]:
    """The samples of the split's 'train' keys (exit 2 when the dataset lacks one or the part
    is empty)."""
    by_key = {s.key: s for s in data.samples}
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise fail(
            f"{split_path} names {len(missing)} sample(s) that {data.name} does not hold "
            f"(e.g. {missing[0]}): use the detector's --dataset",
            2,
        )
    samples = [by_key[k] for k in keys]
    if not samples:
        raise fail(f"the 'train' part of {split_path} is empty", 2)
    return samples


def _fit(samples: list[Any], detector_dir: Path, out: Path, **options: Any) -> Any:
    """``train_radiomics``, its failures as exits (2 bad input, 1 otherwise)."""
    from cem_node.training.datasets import DatasetError
    from cem_node.training.radiomics_training import RadiomicsTrainingError, train_radiomics

    try:
        return train_radiomics(samples, detector_dir, out, **options)
    except (RadiomicsTrainingError, DatasetError) as exc:
        raise fail(str(exc), 2) from None
    except KeyboardInterrupt:
        raise fail("interrupted: run again (extracted features are kept in --out)", 1) from None
    except (RuntimeError, ValueError, OSError) as exc:
        raise fail(f"training failed: {exc}", 1) from None


def _summary(out: Path, result: Any) -> dict[str, Any]:
    """The ``--json`` summary of a radiomics training."""
    s = result.summary
    return {
        "out": str(out),
        "files": {k: str(v) for k, v in result.files.items()},
        "mask_mode": s["mask_mode"],
        "thresholds": s["thresholds"],
        "threshold_fallbacks": {
            k: r.reason for k, r in result.threshold_records.items() if not r.computed
        },
        "selected_features": s["selection"]["selected"],
        "best_params": s["best_params"],
        "cv_auc": s["cv_auc"],
        "oof_auc": s["oof_auc"],
        "age": s["age"],
        "counts": s["counts"],
        "extracted": result.extracted,
        "reused": result.reused,
        "notes": result.notes,
        "seconds": s["seconds"],
    }


def _print_table(out: Path, result: Any, err: Any) -> None:
    """The summary of a radiomics training as a table, then its notes on stderr."""
    from rich.table import Table

    s = result.summary
    counts = s["counts"]
    table = Table(title=f"Radiomics model trained: {out}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row(
        "training lesions",
        f"{counts['training_rows']} ({s['mask_mode']} masks; "
        f"{counts['training_rows_by_label']['malignant']} malignant, "
        f"{counts['training_rows_by_label']['benign']} benign)",
    )
    table.add_row(
        "detections",
        f"{counts['detections']} ({counts['matched']} matched, "
        f"{counts['false_positives']} false positives; {counts['lesions_missed']} lesions missed)",
    )
    table.add_row(
        "radiomics",
        f"{counts['extracted']} extracted, {counts['reused_from_cache']} from the cache, "
        f"{counts['radiomics_failed']} failed",
    )
    table.add_row("features", ", ".join(s["selection"]["selected"]))
    table.add_row("best params", ", ".join(f"{k}={v}" for k, v in s["best_params"].items()))
    table.add_row("CV AUC", f"{s['cv_auc']['mean']:.3f} +- {s['cv_auc']['std']:.3f}")
    table.add_row("OOF AUC", f"{s['oof_auc']:.3f}")
    table.add_row(
        "thresholds",
        ", ".join(f"{k} {v:.3g}" for k, v in s["thresholds"].items()),
    )
    table.add_row("age", "used" if s["age"]["used"] else s["age"].get("reason", "not used"))
    table.add_row("time", f"{s['seconds']:.1f} s")
    console().print(table)
    for note in result.notes:
        err.print(f"[yellow]note:[/yellow] {note}")

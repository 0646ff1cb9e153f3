"""``cem-node train``: fit the models of a bundle.

``cem-node train detector`` trains the Mask R-CNN lesion detector on one or
more datasets (``--dataset SPEC``, see :mod:`cem_node.training.datasets`):
the images are split by patient (``DIR/split.json``), trained as
:func:`cem_node.training.detector_training.train_detector` does, and the
best epoch's weights are written to ``DIR/detector.safetensors`` with the
architecture and preprocessing in ``DIR/detector_config.json``. With
``--folds K`` the patients are divided into K folds
(:mod:`cem_node.training.folds`, ``DIR/folds.json``) and one such run is
trained per fold in ``DIR/fold-1`` ... ``DIR/fold-K`` (its fold's patients
for validation, the others for training; ``--fold k`` trains one of them);
``cem-node evaluate --folds DIR`` pools them.

``cem-node train operating-point`` chooses a trained detector's keep score (and,
optionally, its input size) on the validation patients of that split.

``cem-node train radiomics`` trains the radiomics classifier on the train part
of that split, with the detector run as the analysis runs it, and chooses the
decision thresholds (:func:`cem_node.training.radiomics_training.train_radiomics`).

Exit codes: 0 done, 1 the training failed, 2 bad input (options, dataset
spec, missing or inconsistent data).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cem_node.cli.context import console, fail
from cem_node.cli.train_common import (
    OPERATING_RULE_HELP,
    CacheDirOption,
    Device,
    OperatingRule,
    ProgressOption,
    ThreadsOption,
    _choose_operating_point,
    _command_line,
    _load,
    _operating_point_row,
    _progress_bars,
    _pydantic_message,
    _set_threads,
    _short_sides,
)
from cem_node.cli.train_detector_cmd import detector
from cem_node.cli.train_radiomics_cmd import radiomics
from cem_node.training.run_files import (
    DETECTOR_CONFIG,
    DETECTOR_WEIGHTS,
    OPERATING_POINT,
    SPLIT,
)

app = typer.Typer(
    help="Train the models of a bundle (the detector, then the radiomics model; pack them with "
    "'cem-node models import').",
    no_args_is_help=True,
)


app.command("detector")(detector)


@app.command("operating-point")
def operating_point(
    detector_dir: Annotated[
        Path,
        typer.Option(
            "--detector",
            file_okay=False,
            help="The detector folder (the --out of 'cem-node train detector').",
        ),
    ],
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            help="The dataset SPEC(s) the detector was trained on (default: those its "
            "detector_config.json names); the validation patients come from its split.json.",
        ),
    ] = None,
    short_sides: Annotated[
        str | None,
        typer.Option(
            "--choose-short-side",
            metavar="SIDES",
            help="Input short sides to try (comma-separated pixels; default: the trained one).",
        ),
    ] = None,
    rule: Annotated[
        OperatingRule, typer.Option("--operating-rule", help=OPERATING_RULE_HELP)
    ] = OperatingRule.sensitivity,
    device: Annotated[Device, typer.Option(help="Where to detect.")] = Device.auto,
    threads: ThreadsOption = None,
    cache_dir: CacheDirOption = None,
    progress: ProgressOption = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the choice as JSON.")] = False,
) -> None:
    """Choose a trained detector's operating point on its validation patients.

    The keep score (the final detection score cut) and, with --choose-short-side, the
    network input's short side, by --operating-rule, measured on the source images
    (ties: the lowest keep score, then the smallest side). Written to
    DIR/operating_point.json and DIR/detector_config.json, where 'train radiomics' and
    'models import' read it; the weights are not changed.
    """
    from rich.console import Console

    err = Console(stderr=True)
    config_path = detector_dir / DETECTOR_CONFIG
    record, detector_config, preprocess = _read_detector(detector_dir)
    specs = list(dataset or (record.get("training") or {}).get("datasets") or [])
    if not specs:
        raise fail(f"{config_path} names no dataset: give --dataset", 2)
    sides = _short_sides(short_sides)
    _set_threads(threads)
    with _progress_bars(err, progress) as report:
        data = _load(specs, cache_dir, report)
    val_samples = _validation_samples(data, detector_dir)
    started = time.perf_counter()
    _choose_operating_point(
        detector_dir, record, val_samples, detector_config, preprocess, device.value, sides, rule
    )
    command = _command_line()
    record.setdefault("training", {})["operating_point_command"] = command
    config_path.write_text(json.dumps(record, indent=2) + "\n")
    result = record["result"]
    summary = {
        "detector": str(detector_dir),
        "keep_score": result["keep_score"],
        "short_side": result["short_side"],
        "trained_short_side": result["trained_short_side"],
        "validation": result["operating_point_validation"],
        "sweep": str(detector_dir / OPERATING_POINT),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console().print(f"operating point: {_operating_point_row(detector_dir, record)}")


def _read_detector(detector_dir: Path) -> tuple[dict[str, Any], Any, Any]:
    """A trained detector folder's detector_config.json record, DetectorConfig and the
    PreprocessParams it was trained with (exit 2 when a file is missing or unreadable)."""
    from cem_node.contracts.params import DetectorConfig, PreprocessParams

    config_path = detector_dir / DETECTOR_CONFIG
    for needed in (config_path, detector_dir / DETECTOR_WEIGHTS, detector_dir / SPLIT):
        if not needed.is_file():
            raise fail(
                f"{needed}: missing: --detector must be a 'cem-node train detector' folder", 2
            )
    try:
        record = json.loads(config_path.read_text())
        training = record.get("training") or {}
        detector_config = DetectorConfig.model_validate(record["detector"])
        preprocess = PreprocessParams.model_validate(
            training.get("preprocessing") or record["preprocessing"]
        )
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise fail(f"cannot read {config_path}: {_pydantic_message(exc)}", 2) from None
    return record, detector_config, preprocess


def _validation_samples(data: Any, detector_dir: Path) -> list[Any]:
    """The validation part of the detector's split.json (exit 2 when ``data`` lacks it)."""
    from cem_node.training.datasets import DatasetError
    from cem_node.training.evaluation import select_from_split_file

    try:
        return select_from_split_file(data, detector_dir / SPLIT, "val")
    except DatasetError as exc:
        raise fail(str(exc), 2) from None


app.command("radiomics")(radiomics)

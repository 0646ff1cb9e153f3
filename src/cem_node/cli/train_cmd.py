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

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from cem_node.cli.context import console, fail
from cem_node.contracts.params import BACKBONE_WIDTHS, PRESET_ARCHITECTURE, BackboneName
from cem_node.training.run_files import (
    CHECKPOINT_JSON,
    DETECTOR_CONFIG,
    DETECTOR_WEIGHTS,
    FOLDS,
    OPERATING_POINT,
    SPLIT,
)

app = typer.Typer(
    help="Train the models of a bundle (the detector, then the radiomics model; pack them with "
    "'cem-node models import').",
    no_args_is_help=True,
)


class Preset(StrEnum):
    paper = "paper"
    fast = "fast"


class LrSchedule(StrEnum):
    constant = "constant"
    cosine = "cosine"


#: The --backbone choices: the backbones the detector knows.
Backbone = StrEnum("Backbone", {name: name for name in get_args(BackboneName)})


class OperatingRule(StrEnum):
    sensitivity = "sensitivity"
    dice = "dice"


OPERATING_RULE_HELP = (
    "How the operating point is chosen on the validation images: 'sensitivity', the most "
    "images whose lesions are all found, then the highest mean Dice per image; 'dice', the "
    "highest mean Dice per image (fewer false positives, at the risk of a keep score on the "
    "edge of a drop in sensitivity)."
)


#: Options the training commands share.
ThreadsOption = Annotated[
    int | None, typer.Option(min=1, help="CPU threads for torch (default: torch's).")
]
CacheDirOption = Annotated[
    Path | None,
    typer.Option(
        file_okay=False,
        help="Where synthetic datasets are generated (default: ~/.cache/cem-node/datasets).",
    ),
]
ProgressOption = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show progress bars.")
]


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _pydantic_message(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)


def _architecture(
    out: Path,
    resume: bool,
    preset: Preset,
    backbone: Backbone | None,
    widths: tuple[int | None, int | None, int | None],
    short_side: int | None,
    max_long_side: int | None,
):
    """The DetectorConfig and PreprocessParams of this run (from DIR when resuming)."""
    from cem_node.contracts.params import DetectorConfig, PreprocessParams

    stored = out / DETECTOR_CONFIG
    if resume and stored.is_file():
        try:
            record = json.loads(stored.read_text())
            detector = DetectorConfig.model_validate(record["detector"])
            # the input the detector was trained on (an operating point may have changed the
            # one inference uses, under "preprocessing")
            trained = (record.get("training") or {}).get("preprocessing")
            preprocess = PreprocessParams.model_validate(trained or record["preprocessing"])
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise fail(f"cannot read {stored}: {_pydantic_message(exc)}", 2) from None
        given = {
            "backbone": backbone.value if backbone else None,
            "fpn_channels": widths[0],
            "box_head_width": widths[1],
            "mask_head_channels": widths[2],
        }
        for name, value in given.items():
            if value is not None and value != getattr(detector, name):
                raise fail(
                    f"--{name.replace('_', '-')} {value} differs from the run in {out} "
                    f"({getattr(detector, name)}): a resumed run keeps its architecture",
                    2,
                )
        for name, value in (("short_side", short_side), ("max_long_side", max_long_side)):
            if value is not None and value != getattr(preprocess, name):
                raise fail(
                    f"--{name.replace('_', '-')} {value} differs from the run in {out} "
                    f"({getattr(preprocess, name)}): a resumed run keeps its preprocessing",
                    2,
                )
        return detector, preprocess
    preset_backbone, preset_side = PRESET_ARCHITECTURE[preset.value]
    name = backbone.value if backbone else preset_backbone
    defaults = BACKBONE_WIDTHS[name]
    fpn, box, mask = (w if w is not None else d for w, d in zip(widths, defaults, strict=True))
    side = short_side or preset_side
    long_side = max_long_side or max(side, round(side * 1333 / 800))
    try:
        detector = DetectorConfig(
            backbone=name, fpn_channels=fpn, box_head_width=box, mask_head_channels=mask
        )
        preprocess = PreprocessParams(short_side=side, max_long_side=long_side)
    except ValueError as exc:
        raise fail(_pydantic_message(exc), 2) from None
    return detector, preprocess


def _earlier_record(out: Path) -> dict[str, Any]:
    """The detector_config.json a resumed run wrote before (empty when none is readable)."""
    try:
        record = json.loads((out / DETECTOR_CONFIG).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _short_sides(text: str | None) -> list[int] | None:
    """``--choose-short-side 320,384,448`` as a list of ints (exit 2 when malformed)."""
    if text is None:
        return None
    try:
        sides = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise fail(f"--choose-short-side: comma-separated pixel counts, got {text!r}", 2) from None
    if not sides or min(sides) < 32:
        raise fail(f"--choose-short-side: pixel counts of at least 32, got {text!r}", 2)
    return sides


def _choose_operating_point(
    out: Path,
    record: dict[str, Any],
    val_samples,
    detector_config,
    preprocess,
    device: str,
    short_sides: list[int] | None,
    rule: OperatingRule = OperatingRule.sensitivity,
):
    """Choose the operating point on the validation samples and write it into ``record``
    (exit 1 on failure): ``preprocessing`` becomes what inference uses, the trained one
    stays under ``training.preprocessing``."""
    from cem_node.pipeline.detector import select_device
    from cem_node.training.detector_training import (
        TrainingError,
        scaled_preprocess,
        select_operating_point,
    )

    torch_device, _ = select_device(device)
    try:
        chosen = select_operating_point(
            out / DETECTOR_WEIGHTS,
            detector_config,
            preprocess,
            val_samples,
            out,
            short_sides=short_sides,
            device=torch_device,
            rule=rule.value,
        )
    except TrainingError as exc:
        raise fail(f"cannot choose the operating point: {exc}", 1) from None
    inference = scaled_preprocess(preprocess, chosen.short_side or preprocess.short_side)
    record.setdefault("training", {})["preprocessing"] = preprocess.model_dump(mode="json")
    record["preprocessing"] = inference.model_dump(mode="json")
    record["postprocessing"] = {"keep_score": chosen.keep_score}
    result = record.setdefault("result", {})
    result["keep_score"] = chosen.keep_score
    result["short_side"] = inference.short_side
    result["trained_short_side"] = preprocess.short_side
    result["short_sides_tried"] = short_sides or [preprocess.short_side]
    result["operating_rule"] = rule.value
    result["operating_point_validation"] = {
        "images_with_lesion": chosen.images_with_lesion,
        "images_all_found": chosen.images_all_found,
        "false_positives_per_image": round(chosen.false_positives_per_image, 4),
        "mean_dice": round(chosen.mean_dice, 4),
    }
    return chosen


def _operating_point_row(out: Path, record: dict[str, Any]) -> str:
    result = record["result"]
    shown = result["operating_point_validation"]
    side = (
        f"input short side {result['short_side']} (trained at {result['trained_short_side']}), "
        if len(result.get("short_sides_tried") or []) > 1
        else ""
    )
    return (
        f"{side}keep score {result['keep_score']:g}, chosen on the validation images: "
        f"{shown['images_all_found']}/{shown['images_with_lesion']} lesion images found, "
        f"{shown['false_positives_per_image']:.2f} false positives per image, mean Dice "
        f"per image {shown['mean_dice']:.3f} ({out / OPERATING_POINT})"
    )


def _split(out: Path, dataset, resume: bool, fractions, seed: int, specs: list[str]):
    from cem_node.training.datasets import DatasetSplit, split

    path = out / SPLIT
    if resume and path.is_file():
        record = json.loads(path.read_text())
        by_key = {s.key: s for s in dataset.samples}
        parts = {}
        for part in ("train", "val", "test"):
            keys = record.get(part, {}).get("samples", [])
            missing = [k for k in keys if k not in by_key]
            if missing:
                raise fail(
                    f"{path} names {len(missing)} sample(s) the dataset no longer has "
                    f"(e.g. {missing[0]}): resume with the same --dataset",
                    2,
                )
            parts[part] = [by_key[k] for k in keys]
        return DatasetSplit(
            train=parts["train"],
            val=parts["val"],
            test=parts["test"],
            seed=int(record.get("seed", seed)),
            fractions=tuple(record.get("fractions", fractions)),  # type: ignore[arg-type]
        )
    result = split(dataset, fractions, seed)
    document = {"datasets": specs, **result.as_dict()}
    path.write_text(json.dumps(document, indent=2) + "\n")
    return result


@dataclass(frozen=True)
class _DetectorRun:
    """The options of one detector training that every fold shares."""

    preset: Preset
    backbone: Backbone | None
    widths: tuple[int | None, int | None, int | None]
    short_side: int | None
    max_long_side: int | None
    train_config: Any
    specs: list[str]
    seed: int
    choose: bool
    short_sides: list[int] | None
    rule: OperatingRule
    device: Device
    hard_example_weight: float
    progress: bool


def _prepare_folds(out: Path, data, k: int, seed: int, specs: list[str], err: Any):
    """The folds of the dataset; write DIR/folds.json, or check the one already there."""
    from cem_node.training.datasets import DatasetError
    from cem_node.training.folds import FoldsRecord, read_folds

    try:
        record = FoldsRecord.build(data, specs, k, seed)
    except DatasetError as exc:
        raise fail(str(exc), 2) from None
    if (out / FOLDS).is_file():
        try:
            earlier = read_folds(out)
        except DatasetError as exc:
            raise fail(str(exc), 2) from None
        if not earlier.same_folds(record):
            raise fail(
                f"{out / FOLDS} holds other folds (k {earlier.k}, seed {earlier.seed}, "
                f"datasets {earlier.datasets}): use the same --folds, --seed and --dataset, or "
                "another --out",
                2,
            )
    else:
        record.write(out)
    counts = data.counts()
    err.print(
        f"{data.name}: {counts['images']} image pairs of {counts['patients']} patients in {k} "
        f"folds of {', '.join(str(len(p)) for p in record.patients)} patients "
        f"({', '.join(str(n) for n in record.images)} images), seed {seed}"
    )
    return record


def _fold_parts(fold_out: Path, data, record, number: int, resume: bool):
    """The split of one fold: read from its split.json when resuming, else written there."""
    from cem_node.training.datasets import DatasetError
    from cem_node.training.folds import fold_split, fold_split_document

    try:
        parts = fold_split(data, record.patients, number, record.seed)
    except DatasetError as exc:
        raise fail(str(exc), 2) from None
    path = fold_out / SPLIT
    if resume and path.is_file():
        stored = _split(fold_out, data, True, parts.fractions, record.seed, record.datasets)
        if {s.key for s in stored.val} != {s.key for s in parts.val}:
            raise fail(f"{path} holds out other patients than fold {number} of folds.json", 2)
        return stored
    document = fold_split_document(parts, record.datasets, number, record.k)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return parts


def _train_run(
    out: Path,
    data,
    parts,
    run: _DetectorRun,
    resume: bool,
    err: Any,
    fold: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Train one detector into ``out`` on ``parts``; return the summary (exit 1/2 on failure)."""
    from cem_node.training.datasets import DatasetError
    from cem_node.training.detector_training import TrainingError, train_detector

    detector_config, preprocess = _architecture(
        out, resume, run.preset, run.backbone, run.widths, run.short_side, run.max_long_side
    )
    counts = data.counts()
    err.print(
        f"{data.name}: {counts['images']} image pairs of {counts['patients']} patients "
        f"({counts['malignant']} malignant, {counts['benign']} benign, {counts['normal']} "
        f"normal); train {len(parts.train)}, val {len(parts.val)}, test {len(parts.test)}"
    )
    for reason in data.skipped[:5]:
        err.print(f"[yellow]skipped:[/yellow] {reason}")
    command = " ".join(["cem-node", *sys.argv[1:]]) if sys.argv else None
    earlier = _earlier_record(out) if resume else {}
    record: dict[str, Any] = {
        "detector": detector_config.model_dump(mode="json"),
        "preprocessing": preprocess.model_dump(mode="json"),
        "training": {
            "datasets": list(run.specs),
            "seed": run.seed,
            **({"fold": fold[0], "folds": fold[1]} if fold else {}),
            "train_config": run.train_config.model_dump(mode="json"),
            # a resumed run is described by the command that started it
            "command": earlier.get("training", {}).get("command") or command,
            **({"resumed_with": command} if earlier else {}),
        },
    }
    (out / DETECTOR_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    started = time.perf_counter()
    try:
        result = train_detector(
            parts.train,
            parts.val,
            detector_config,
            preprocess,
            run.train_config,
            out,
            progress=run.progress,
            resume=resume,
            console=err,
        )
    except DatasetError as exc:
        raise fail(str(exc), 2) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted: continue with --resume --out {out}", 1) from None
    except (TrainingError, RuntimeError, ValueError, OSError) as exc:
        raise fail(f"training failed: {exc}", 1) from None
    shutil.copyfile(result.best_weights, out / DETECTOR_WEIGHTS)
    pretrained = run.train_config.pretrained
    record["result"] = {
        "best_epoch": result.best_epoch,
        "best_loss": result.best_loss,
        "selected_by": result.selected_by,
        "epochs_completed": result.epochs_completed,
        "train_images": result.train_images,
        "val_images": result.val_images,
        "device": result.device,
        # a resumed run starts from its checkpoint: the weights it first started from stay
        "pretrained": result.pretrained
        or earlier.get("result", {}).get("pretrained")
        or (str(pretrained) if pretrained else None),
        "hard_examples": result.hard_examples,
    }
    if run.choose:
        _choose_operating_point(
            out,
            record,
            parts.val,
            detector_config,
            preprocess,
            run.device.value,
            run.short_sides,
            run.rule,
        )
    (out / DETECTOR_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    return {
        "out": str(out),
        **({"fold": fold[0], "folds": fold[1]} if fold else {}),
        "weights": str(out / DETECTOR_WEIGHTS),
        "config": str(out / DETECTOR_CONFIG),
        "history": str(result.history_path),
        "split": str(out / SPLIT),
        "backbone": detector_config.backbone,
        "short_side": preprocess.short_side,
        **record["result"],
        "skipped": len(data.skipped) + len(result.skipped),
        "seconds": round(time.perf_counter() - started, 1),
        "_record": record,
    }


def _print_run(summary: dict[str, Any], run: _DetectorRun, as_json: bool) -> None:
    """The summary of one training, as JSON or as a table."""
    record = summary.pop("_record")
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.table import Table

    out = Path(summary["out"])
    table = Table(title=f"Detector trained: {out}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("architecture", f"{summary['backbone']}, short side {summary['short_side']}")
    table.add_row("images", f"train {summary['train_images']}, validation {summary['val_images']}")
    table.add_row("epochs", f"{summary['epochs_completed']} on {summary['device']}")
    table.add_row(
        "best epoch",
        f"{summary['best_epoch']} ({summary['selected_by'].replace('_', ' ')} "
        f"{summary['best_loss']:.4f})",
    )
    if summary["hard_examples"] is not None:
        table.add_row(
            "hard examples",
            f"{summary['hard_examples']} of {summary['train_images']} training images, drawn "
            f"{run.hard_example_weight:g}x as often ({out / 'hard_examples.json'})",
        )
    if "operating_point_validation" in record["result"]:
        table.add_row("operating point", _operating_point_row(out, record))
    table.add_row("weights", summary["weights"])
    table.add_row("config", summary["config"])
    table.add_row("time", f"{summary['seconds']:.1f} s")
    if summary["skipped"]:
        table.add_row("skipped", f"{summary['skipped']} image pair(s) (see the log)")
    console().print(table)


@app.command("detector")
def detector(
    dataset: Annotated[
        list[str],
        typer.Option(
            "--dataset",
            "-d",
            help="Training data (repeatable): synthetic:N[:SEED[:SIZE]], cdd-cesm:PATH "
            "(the 512-px subset or the official layout) or manifest:CSV.",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            file_okay=False,
            help="Output folder: detector.safetensors, detector_config.json, history.json, "
            "split.json and the checkpoint for --resume.",
        ),
    ],
    preset: Annotated[
        Preset,
        typer.Option(
            help="paper: Adam lr 1e-5, batch 1, 30 epochs, resnet101_fpn, short side 800; "
            "fast: lr 2e-4 with a cosine decay, batch 2, 8 epochs, mobilenet_v3_lite, "
            "short side 512.",
        ),
    ] = Preset.paper,
    backbone: Annotated[
        Backbone | None, typer.Option(help="Detector backbone (default: the preset's).")
    ] = None,
    fpn_channels: Annotated[
        int | None, typer.Option(min=16, help="FPN width (default: the backbone's).")
    ] = None,
    box_head_width: Annotated[
        int | None, typer.Option(min=16, help="Box head width (default: the backbone's).")
    ] = None,
    mask_head_channels: Annotated[
        int | None, typer.Option(min=16, help="Mask head width (default: the backbone's).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: preset).")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Learning rate (default: preset).")] = (
        None
    ),
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Images per step (default: preset).")
    ] = None,
    lr_schedule: Annotated[
        LrSchedule | None,
        typer.Option(help="After the warm-up: constant, or a cosine decay (default: preset)."),
    ] = None,
    short_side: Annotated[
        int | None,
        typer.Option(min=64, help="Network input: shorter side of the crop (default: preset)."),
    ] = None,
    max_long_side: Annotated[
        int | None,
        typer.Option(min=64, help="Network input: longest side (default: short side x 1.67)."),
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Patients kept for validation.")
    ] = 0.2,
    test_fraction: Annotated[
        float,
        typer.Option(min=0.0, max=0.9, help="Patients held out for testing (not used here)."),
    ] = 0.0,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the split and the training.")] = 0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint.")
    ] = False,
    pretrained: Annotated[
        Path | None,
        typer.Option(
            dir_okay=False,
            help="Local pretrained weights (safetensors or a torch state_dict .pth) for the "
            "backbone or the whole detector. Nothing is downloaded.",
        ),
    ] = None,
    hard_example_weight: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="Fine-tuning with hard-example mining (needs --pretrained): training images on "
            "which the pretrained detector misses a lesion (no detection at the keep score with "
            "mask IoU >= 0.1) are drawn this many times as often as the others. 1: off.",
        ),
    ] = 1.0,
    choose_keep_score: Annotated[
        bool,
        typer.Option(
            "--choose-keep-score",
            help="After training, choose the keep score (the final detection score cut; the "
            "paper's is 0.1) on the validation images, from 0.1 to 0.9, by --operating-rule. "
            "Recorded in detector_config.json and "
            "operating_point.json; radiomics training and the bundle use it. With --resume on "
            "a finished run, only this step runs (or use 'cem-node train operating-point').",
        ),
    ] = False,
    choose_short_side: Annotated[
        str | None,
        typer.Option(
            "--choose-short-side",
            metavar="SIDES",
            help="With the keep score, choose the network input's short side for inference "
            "among these (comma-separated pixels, e.g. 320,384,448,512) on the validation "
            "images, by the same rule. Implies --choose-keep-score.",
        ),
    ] = None,
    operating_rule: Annotated[
        OperatingRule, typer.Option(help=OPERATING_RULE_HELP)
    ] = OperatingRule.sensitivity,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    num_workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes.")] = 0,
    threads: ThreadsOption = None,
    max_steps: Annotated[
        int | None,
        typer.Option(min=1, help="Stop each epoch after this many steps (smoke tests)."),
    ] = None,
    cache_dir: CacheDirOption = None,
    progress: ProgressOption = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    folds: Annotated[
        int | None,
        typer.Option(
            "--folds",
            min=2,
            help="Patient-level K-fold cross-validation: train K detectors into DIR/fold-1 ... "
            "DIR/fold-K, each validated on its fold's patients and trained on the others "
            "(seeded by --seed; DIR/folds.json lists the folds). --val-fraction is not used. "
            "Pool them with 'cem-node evaluate --folds DIR'.",
        ),
    ] = None,
    fold: Annotated[
        int | None,
        typer.Option(
            "--fold",
            min=1,
            help="With --folds: train only this fold (1..K), e.g. to run the folds in "
            "parallel; the folds are the same in every such run.",
        ),
    ] = None,
) -> None:
    """Train the lesion detector (Mask R-CNN, classes benign / malignant).

    The datasets are split by patient into training and validation images
    (DIR/split.json; the same split is reused by --resume). Each epoch ends
    with the validation loss; the epoch with the lowest one is kept as
    DIR/detector.safetensors, described by DIR/detector_config.json. With
    --folds K, the same is done once per fold in DIR/fold-1 ... DIR/fold-K.
    """
    from rich.console import Console

    err = Console(stderr=True)
    if val_fraction + test_fraction >= 1.0:
        raise fail("--val-fraction plus --test-fraction must stay below 1", 2)
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file, not a folder", 2)
    if fold is not None and folds is None:
        raise fail("--fold needs --folds K", 2)
    if folds is not None and fold is not None and fold > folds:
        raise fail(f"--fold {fold}: the folds are 1 to {folds}", 2)
    if folds is not None and test_fraction > 0:
        raise fail("--folds holds out no test part: leave --test-fraction at 0", 2)
    if folds is None and (out / CHECKPOINT_JSON).is_file() and not resume:
        raise fail(
            f"{out} already holds a training run: use --resume to continue it, or another --out",
            2,
        )
    if pretrained is not None and not pretrained.is_file():
        raise fail(f"--pretrained: file not found: {pretrained}", 2)
    if hard_example_weight > 1.0 and pretrained is None and not resume:
        raise fail(
            "--hard-example-weight mines the misses of a trained detector: give its weights "
            "with --pretrained",
            2,
        )
    sides = _short_sides(choose_short_side)

    from cem_node.training.detector_training import TrainConfig

    try:
        train_config = TrainConfig(
            preset=preset.value,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            lr_schedule=lr_schedule.value if lr_schedule is not None else None,
            seed=seed,
            device=device.value,
            pretrained=pretrained,
            num_workers=num_workers,
            max_steps_per_epoch=max_steps,
            hard_example_weight=hard_example_weight,
        )
    except ValueError as exc:
        raise fail(_pydantic_message(exc), 2) from None
    run = _DetectorRun(
        preset=preset,
        backbone=backbone,
        widths=(fpn_channels, box_head_width, mask_head_channels),
        short_side=short_side,
        max_long_side=max_long_side,
        train_config=train_config,
        specs=list(dataset),
        seed=seed,
        choose=choose_keep_score or sides is not None,
        short_sides=sides,
        rule=operating_rule,
        device=device,
        hard_example_weight=hard_example_weight,
        progress=progress,
    )
    if folds is None:
        # check the stored architecture before the data are read (a quick exit 2)
        _architecture(out, resume, preset, backbone, run.widths, short_side, max_long_side)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    with _progress_bars(err, progress) as report:
        data = _load(dataset, cache_dir, report)
    if len(data) == 0:
        raise fail(f"the dataset {data.name} holds no image pair", 2)
    out.mkdir(parents=True, exist_ok=True)
    if folds is None:
        fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
        parts = _split(out, data, resume, fractions, seed, list(dataset))
        if val_fraction > 0 and not parts.val:
            err.print("[yellow]warning:[/yellow] too few patients for a validation set")
        summary = _train_run(out, data, parts, run, resume, err)
        _print_run(summary, run, as_json)
        return
    record = _prepare_folds(out, data, folds, seed, list(dataset), err)
    summaries = []
    for number in [fold] if fold is not None else range(1, folds + 1):
        fold_out = out / record.fold_dirs[number - 1]
        started = (fold_out / CHECKPOINT_JSON).is_file()
        if started and not resume:
            raise fail(
                f"{fold_out} already holds a training run: use --resume to continue it",
                2,
            )
        fold_out.mkdir(parents=True, exist_ok=True)
        err.print(f"[bold]fold {number} of {folds}[/bold]: {fold_out}")
        parts = _fold_parts(fold_out, data, record, number, started)
        summary = _train_run(fold_out, data, parts, run, started, err, fold=(number, folds))
        summaries.append(summary)
        if not as_json:
            _print_run(summary, run, False)
    if as_json:
        typer.echo(json.dumps({"folds_file": str(out / FOLDS), "runs": summaries}, indent=2))
        return
    console().print(f"folds: {out / FOLDS}; pool them with: cem-node evaluate --folds {out} ...")


# --- train radiomics ----------------------------------------------------------------------------


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

    from cem_node.contracts.params import DetectorConfig, PreprocessParams
    from cem_node.training.datasets import DatasetError
    from cem_node.training.evaluation import select_from_split_file

    err = Console(stderr=True)
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
    specs = list(dataset or training.get("datasets") or [])
    if not specs:
        raise fail(f"{config_path} names no dataset: give --dataset", 2)
    sides = _short_sides(short_sides)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    with _progress_bars(err, progress) as report:
        data = _load(specs, cache_dir, report)
    try:
        val_samples = select_from_split_file(data, detector_dir / SPLIT, "val")
    except DatasetError as exc:
        raise fail(str(exc), 2) from None
    started = time.perf_counter()
    _choose_operating_point(
        detector_dir, record, val_samples, detector_config, preprocess, device.value, sides, rule
    )
    command = " ".join(["cem-node", *sys.argv[1:]]) if sys.argv else None
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


@app.command("radiomics")
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
    from pydantic import ValidationError
    from rich.console import Console

    from cem_node.contracts.params import RadiomicsSettings
    from cem_node.training.datasets import DatasetError
    from cem_node.training.radiomics_training import (
        RadiomicsTrainingError,
        read_detector_run,
        read_split_file,
        train_radiomics,
    )

    err = Console(stderr=True)
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file, not a folder", 2)
    try:
        read_detector_run(detector_dir)
        split_path = split_file or detector_dir / SPLIT
        keys = read_split_file(split_path, "train")
    except RadiomicsTrainingError as exc:
        raise fail(str(exc), 2) from None
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
    ages = _read_ages(ages_file) if ages_file is not None else None
    if ages is not None and not age:
        err.print("[yellow]warning:[/yellow] --ages is ignored without --age")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    with _progress_bars(err, progress) as report:
        data = _load(dataset, cache_dir, report)
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
        try:
            result = train_radiomics(
                samples,
                detector_dir,
                out,
                masks=masks.value,  # type: ignore[arg-type]
                settings=settings,
                grid=grid.value,  # type: ignore[arg-type]
                selection=selection.value,  # type: ignore[arg-type]
                n_features=n_features,
                use_age=age,
                ages=ages,
                seed=seed,
                cv_folds=cv_folds,
                workers=workers,
                device=device.value,
                datasets=list(dataset),
                split_file=split_path,
                command=" ".join(["cem-node", *sys.argv[1:]]) if sys.argv else None,
                progress=report,
            )
        except (RadiomicsTrainingError, DatasetError) as exc:
            raise fail(str(exc), 2) from None
        except KeyboardInterrupt:
            raise fail("interrupted: run again (extracted features are kept in --out)", 1) from None
        except (RuntimeError, ValueError, OSError) as exc:
            raise fail(f"training failed: {exc}", 1) from None

    s = result.summary
    report_data = {
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
    if as_json:
        typer.echo(json.dumps(report_data, indent=2))
        return
    from rich.table import Table

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


@contextlib.contextmanager
def _progress_bars(err: Any, enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """Rich progress bars, one per task description; yields the ``progress`` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        disable=not enabled,
    ) as bar:
        tasks: dict[str, Any] = {}

        def report(description: str, done: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total)
            bar.update(tasks[description], completed=done, total=total)

        yield report


def _load(
    dataset: list[str], cache_dir: Path | None, report: Callable[[str, int, int], None]
) -> Any:
    """The datasets of the SPECs; a bad SPEC exits 2, an I/O failure 1."""
    from cem_node.training.datasets import DatasetError, load_datasets

    try:
        return load_datasets(dataset, cache_dir=cache_dir, progress=report)
    except DatasetError as exc:
        raise fail(str(exc), 2) from None
    except OSError as exc:
        raise fail(f"cannot prepare the dataset: {exc}", 1) from None

"""``cem-node train detector``: train the Mask R-CNN lesion detector.

See :mod:`cem_node.cli.train_cmd` for the command group.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cem_node.cli.context import console, fail
from cem_node.cli.train_common import (
    OPERATING_RULE_HELP,
    Backbone,
    CacheDirOption,
    Device,
    LrSchedule,
    OperatingRule,
    Preset,
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
from cem_node.contracts.params import BACKBONE_WIDTHS, PRESET_ARCHITECTURE
from cem_node.training.run_files import (
    CHECKPOINT_JSON,
    DETECTOR_CONFIG,
    DETECTOR_WEIGHTS,
    FOLDS,
    SPLIT,
)


def _architecture(
    out: Path,
    resume: bool,
    preset: Preset,
    backbone: Backbone | None,
    widths: tuple[int | None, int | None, int | None],
    short_side: int | None,
    max_long_side: int | None,
    mask_roi_size: int | None = None,
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
            "mask_roi_size": mask_roi_size,
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
            backbone=name,
            fpn_channels=fpn,
            box_head_width=box,
            mask_head_channels=mask,
            **({"mask_roi_size": mask_roi_size} if mask_roi_size is not None else {}),
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
    mask_roi_size: int | None
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
    detector_config, preprocess = _architecture(
        out,
        resume,
        run.preset,
        run.backbone,
        run.widths,
        run.short_side,
        run.max_long_side,
        run.mask_roi_size,
    )
    counts = data.counts()
    err.print(
        f"{data.name}: {counts['images']} image pairs of {counts['patients']} patients "
        f"({counts['malignant']} malignant, {counts['benign']} benign, {counts['normal']} "
        f"normal); train {len(parts.train)}, val {len(parts.val)}, test {len(parts.test)}"
    )
    for reason in data.skipped[:5]:
        err.print(f"[yellow]skipped:[/yellow] {reason}")
    earlier = _earlier_record(out) if resume else {}
    record = _run_record(detector_config, preprocess, run, earlier, fold)
    (out / DETECTOR_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    started = time.perf_counter()
    result = _fit(out, parts, detector_config, preprocess, run, resume, err)
    shutil.copyfile(result.best_weights, out / DETECTOR_WEIGHTS)
    record["result"] = _result_record(result, run, earlier)
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


def _run_record(
    detector_config: Any,
    preprocess: Any,
    run: _DetectorRun,
    earlier: dict[str, Any],
    fold: tuple[int, int] | None,
) -> dict[str, Any]:
    """The detector_config.json of a run before it trains (its ``result`` comes after)."""
    command = _command_line()
    return {
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


def _fit(
    out: Path,
    parts: Any,
    detector_config: Any,
    preprocess: Any,
    run: _DetectorRun,
    resume: bool,
    err: Any,
) -> Any:
    """``train_detector`` on the split, its failures as exits (2 bad data, 1 otherwise)."""
    from cem_node.training.datasets import DatasetError
    from cem_node.training.detector_training import TrainingError, train_detector

    try:
        return train_detector(
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


def _result_record(result: Any, run: _DetectorRun, earlier: dict[str, Any]) -> dict[str, Any]:
    """The ``result`` of detector_config.json: what the training reached."""
    pretrained = run.train_config.pretrained
    return {
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
    mask_roi_size: Annotated[
        int | None,
        typer.Option(
            min=7,
            max=32,
            help="RoI side the mask head reads; its masks are twice this (default 14: 28 x 28).",
        ),
    ] = None,
    rotate_deg: Annotated[
        float,
        typer.Option(min=0.0, max=45.0, help="Augmentation: rotate by up to +-this (degrees)."),
    ] = 0.0,
    intensity_jitter: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9,
            help="Augmentation: per-channel contrast in [1-j, 1+j] and gamma in [e^-j, e^j].",
        ),
    ] = 0.0,
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
    _check_options(
        out, resume, val_fraction, test_fraction, folds, fold, pretrained, hard_example_weight
    )
    sides = _short_sides(choose_short_side)
    train_config = _train_config(
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
        augment={"rotation_deg": rotate_deg, "intensity_jitter": intensity_jitter},
    )
    run = _DetectorRun(
        preset=preset,
        backbone=backbone,
        widths=(fpn_channels, box_head_width, mask_head_channels),
        mask_roi_size=mask_roi_size,
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
        _architecture(
            out, resume, preset, backbone, run.widths, short_side, max_long_side, mask_roi_size
        )
    _set_threads(threads)

    with _progress_bars(err, progress) as report:
        data = _load(dataset, cache_dir, report)
    if len(data) == 0:
        raise fail(f"the dataset {data.name} holds no image pair", 2)
    out.mkdir(parents=True, exist_ok=True)
    if folds is None:
        fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
        _train_single(out, data, run, resume, fractions, as_json, err)
    else:
        _train_folds(out, data, run, (folds, fold), resume, as_json, err)


def _check_options(
    out: Path,
    resume: bool,
    val_fraction: float,
    test_fraction: float,
    folds: int | None,
    fold: int | None,
    pretrained: Path | None,
    hard_example_weight: float,
) -> None:
    """Exit 2 on options that contradict each other or what --out already holds."""
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


def _train_config(**fields: Any) -> Any:
    """The TrainConfig of these options (exit 2 when they are invalid)."""
    from cem_node.training.detector_training import TrainConfig

    try:
        return TrainConfig(**fields)
    except ValueError as exc:
        raise fail(_pydantic_message(exc), 2) from None


def _train_single(
    out: Path,
    data: Any,
    run: _DetectorRun,
    resume: bool,
    fractions: tuple[float, float, float],
    as_json: bool,
    err: Any,
) -> None:
    """Train one detector on a patient split of ``data`` into ``out`` and print it."""
    parts = _split(out, data, resume, fractions, run.seed, list(run.specs))
    if fractions[1] > 0 and not parts.val:
        err.print("[yellow]warning:[/yellow] too few patients for a validation set")
    summary = _train_run(out, data, parts, run, resume, err)
    _print_run(summary, run, as_json)


def _train_folds(
    out: Path,
    data: Any,
    run: _DetectorRun,
    folds_fold: tuple[int, int | None],
    resume: bool,
    as_json: bool,
    err: Any,
) -> None:
    """Train one detector per fold (or only ``--fold``) into ``out/fold-k`` and print them."""
    folds, fold = folds_fold
    record = _prepare_folds(out, data, folds, run.seed, list(run.specs), err)
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

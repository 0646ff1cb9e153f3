"""``cem-node train``: fit the models of a bundle.

``cem-node train detector`` trains the Mask R-CNN lesion detector on one or
more datasets (``--dataset SPEC``, see :mod:`cem_node.training.datasets`):
the images are split by patient (``DIR/split.json``), trained as
:func:`cem_node.training.detector_training.train_detector` does, and the
best epoch's weights are written to ``DIR/detector.safetensors`` with the
architecture and preprocessing in ``DIR/detector_config.json``.

Exit codes: 0 done, 1 the training failed, 2 bad input (options, dataset
spec, missing or inconsistent data).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from cem_node.cli.context import console, fail

app = typer.Typer(
    help="Train the models of a bundle (the detector; see also 'cem-node models import').",
    no_args_is_help=True,
)

DETECTOR_WEIGHTS = "detector.safetensors"
DETECTOR_CONFIG = "detector_config.json"
SPLIT_FILE = "split.json"

#: Architecture and input size each preset starts from (options override them).
PRESET_ARCHITECTURE: dict[str, dict[str, Any]] = {
    "paper": {"backbone": "resnet101_fpn", "short_side": 800},
    "fast": {"backbone": "mobilenet_v3_lite", "short_side": 512},
}
#: Default widths per backbone: the narrow ones keep mobilenet_v3_lite small and quick.
BACKBONE_WIDTHS: dict[str, tuple[int, int, int]] = {
    "resnet101_fpn": (256, 1024, 256),
    "resnet50_fpn_v2": (256, 1024, 256),
    "mobilenet_v3_lite": (64, 256, 64),
}


class Preset(StrEnum):
    paper = "paper"
    fast = "fast"


class Backbone(StrEnum):
    resnet101_fpn = "resnet101_fpn"
    resnet50_fpn_v2 = "resnet50_fpn_v2"
    mobilenet_v3_lite = "mobilenet_v3_lite"


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
    from cem_node.pipeline.params import DetectorConfig, PreprocessParams

    stored = out / DETECTOR_CONFIG
    if resume and stored.is_file():
        try:
            record = json.loads(stored.read_text())
            detector = DetectorConfig.model_validate(record["detector"])
            preprocess = PreprocessParams.model_validate(record["preprocessing"])
        except (OSError, ValueError, KeyError) as exc:
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
    base = PRESET_ARCHITECTURE[preset.value]
    name = backbone.value if backbone else base["backbone"]
    defaults = BACKBONE_WIDTHS[name]
    fpn, box, mask = (w if w is not None else d for w, d in zip(widths, defaults, strict=True))
    side = short_side or base["short_side"]
    long_side = max_long_side or max(side, round(side * 1333 / 800))
    try:
        detector = DetectorConfig(
            backbone=name, fpn_channels=fpn, box_head_width=box, mask_head_channels=mask
        )
        preprocess = PreprocessParams(short_side=side, max_long_side=long_side)
    except ValueError as exc:
        raise fail(_pydantic_message(exc), 2) from None
    return detector, preprocess


def _split(out: Path, dataset, resume: bool, fractions, seed: int, specs: list[str]):
    from cem_node.training.datasets import DatasetSplit, split

    path = out / SPLIT_FILE
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
            "fast: lr 2e-4, batch 2, 8 epochs, mobilenet_v3_lite, short side 512.",
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
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    num_workers: Annotated[int, typer.Option(min=0, help="DataLoader worker processes.")] = 0,
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU threads for torch (default: torch's).")
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(min=1, help="Stop each epoch after this many steps (smoke tests)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="Where synthetic datasets are generated (default: ~/.cache/cem-node/datasets).",
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show progress bars.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Train the lesion detector (Mask R-CNN, classes benign / malignant).

    The datasets are split by patient into training and validation images
    (DIR/split.json; the same split is reused by --resume). Each epoch ends
    with the validation loss; the epoch with the lowest one is kept as
    DIR/detector.safetensors, described by DIR/detector_config.json.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from cem_node.training.datasets import DatasetError, load_datasets

    err = Console(stderr=True)
    if val_fraction + test_fraction >= 1.0:
        raise fail("--val-fraction plus --test-fraction must stay below 1", 2)
    if out.exists() and not out.is_dir():
        raise fail(f"--out {out} is a file, not a folder", 2)
    if (out / "last.json").is_file() and not resume:
        raise fail(
            f"{out} already holds a training run: use --resume to continue it, or another --out",
            2,
        )
    if pretrained is not None and not pretrained.is_file():
        raise fail(f"--pretrained: file not found: {pretrained}", 2)
    detector_config, preprocess = _architecture(
        out,
        resume,
        preset,
        backbone,
        (fpn_channels, box_head_width, mask_head_channels),
        short_side,
        max_long_side,
    )

    from cem_node.training.detector_training import TrainConfig, TrainingError, train_detector

    try:
        train_config = TrainConfig(
            preset=preset.value,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            device=device.value,
            pretrained=pretrained,
            num_workers=num_workers,
            max_steps_per_epoch=max_steps,
        )
    except ValueError as exc:
        raise fail(_pydantic_message(exc), 2) from None
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err,
        disable=not progress,
    ) as bar:
        tasks: dict[str, Any] = {}

        def report(description: str, done: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=total)
            bar.update(tasks[description], completed=done)

        try:
            data = load_datasets(dataset, cache_dir=cache_dir, progress=report)
        except DatasetError as exc:
            raise fail(str(exc), 2) from None
        except OSError as exc:
            raise fail(f"cannot prepare the dataset: {exc}", 1) from None
    if len(data) == 0:
        raise fail(f"the dataset {data.name} holds no image pair", 2)
    out.mkdir(parents=True, exist_ok=True)
    fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
    parts = _split(out, data, resume, fractions, seed, list(dataset))
    counts = data.counts()
    err.print(
        f"{data.name}: {counts['images']} image pairs of {counts['patients']} patients "
        f"({counts['malignant']} malignant, {counts['benign']} benign, {counts['normal']} "
        f"normal); train {len(parts.train)}, val {len(parts.val)}, test {len(parts.test)}"
    )
    if val_fraction > 0 and not parts.val:
        err.print("[yellow]warning:[/yellow] too few patients for a validation set")
    for reason in data.skipped[:5]:
        err.print(f"[yellow]skipped:[/yellow] {reason}")

    record: dict[str, Any] = {
        "detector": detector_config.model_dump(mode="json"),
        "preprocessing": preprocess.model_dump(mode="json"),
        "training": {
            "datasets": list(dataset),
            "seed": seed,
            "train_config": train_config.model_dump(mode="json"),
            "command": " ".join(["cem-node", *sys.argv[1:]]) if sys.argv else None,
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
            train_config,
            out,
            progress=progress,
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
    record["result"] = {
        "best_epoch": result.best_epoch,
        "best_loss": result.best_loss,
        "selected_by": result.selected_by,
        "epochs_completed": result.epochs_completed,
        "train_images": result.train_images,
        "val_images": result.val_images,
        "device": result.device,
        "pretrained": result.pretrained,
    }
    (out / DETECTOR_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
    summary = {
        "out": str(out),
        "weights": str(out / DETECTOR_WEIGHTS),
        "config": str(out / DETECTOR_CONFIG),
        "history": str(result.history_path),
        "split": str(out / SPLIT_FILE),
        "backbone": detector_config.backbone,
        "short_side": preprocess.short_side,
        **record["result"],
        "skipped": len(data.skipped) + len(result.skipped),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"Detector trained: {out}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("architecture", f"{detector_config.backbone}, short side {preprocess.short_side}")
    table.add_row("images", f"train {result.train_images}, validation {result.val_images}")
    table.add_row("epochs", f"{result.epochs_completed} on {result.device}")
    table.add_row(
        "best epoch",
        f"{result.best_epoch} ({result.selected_by.replace('_', ' ')} {result.best_loss:.4f})",
    )
    table.add_row("weights", summary["weights"])
    table.add_row("config", summary["config"])
    table.add_row("time", f"{summary['seconds']:.1f} s")
    if summary["skipped"]:
        table.add_row("skipped", f"{summary['skipped']} image pair(s) (see the log)")
    console().print(table)

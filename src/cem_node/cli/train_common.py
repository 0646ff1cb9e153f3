"""Options and helpers the ``cem-node train`` commands share.

The choices of the options (presets, backbones, devices, the operating-point
rule), the lazy progress bars and dataset loading, and the operating-point
step that both ``train detector --choose-keep-score`` and ``train
operating-point`` run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from cem_node.cli.context import fail
from cem_node.contracts.params import BackboneName
from cem_node.training.run_files import DETECTOR_WEIGHTS, OPERATING_POINT


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


def _command_line() -> str | None:
    """This invocation as ``cem-node ARGS...``, recorded with a run (None without argv)."""
    return " ".join(["cem-node", *sys.argv[1:]]) if sys.argv else None


def _set_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU threads (torch is imported only when given)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _pydantic_message(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)


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

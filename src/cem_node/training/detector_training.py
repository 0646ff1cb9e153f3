"""Training the lesion detector (Mask R-CNN, classes benign and malignant).

PAPER.md "Detector": Adam, lr 1e-5, batch 1, 30 epochs, the best epoch by the
lowest total validation loss; augmentation by vertical flip (p 0.5), shear
(+-0.1 rad) and scale (0.9-1.1). :class:`TrainConfig` holds these values
(preset ``paper``) or quicker ones (preset ``fast``).

The training images are made exactly as at inference:
:func:`~cem_node.pipeline.preprocess.preprocess_pair` gives the network image
and its geometry, and every lesion mask goes through
``geometry.mask_to_network``, so training and inference share one crop and
one resize rule. Targets: one box per lesion (the bounding box of its
network-space mask, pixel edges), label 1 benign / 2 malignant, the mask as
uint8. Images without lesions are kept (negative examples). The augmentation
is applied after the preprocessing, to the network image and its masks
together; boxes are recomputed from the augmented masks.

Validation loss: torchvision returns losses only in training mode, so the
validation pass runs in training mode without gradients and with every
BatchNorm layer in eval mode (running statistics, no update). Its random
proposal sampling uses a fixed seed, so the losses of different epochs are
comparable.

Outputs in ``out_dir``:

* ``best.safetensors``: the weights of the best epoch
  (:func:`~cem_node.pipeline.detector.save_detector_weights`, loadable by
  :func:`~cem_node.pipeline.detector.load_detector`);
* ``last.safetensors`` + ``last.json``: the checkpoint of the last finished
  epoch (model, optimizer, AMP scaler, RNG state; tensors in safetensors,
  everything else as JSON, no pickles), for ``resume=True``;
* ``history.json``: per epoch the training and validation losses (total and
  per term), learning rate, steps, time.

On the CPU a run is deterministic given the seed: the model is initialised
from the seed, the shuffling and the augmentation of epoch ``e`` and image
``i`` are drawn from ``numpy.random.default_rng([seed, e, i])``, and
torchvision's proposal sampling from torch's generator, seeded once and
saved in the checkpoint (so a resumed run continues the same sequence).

This module holds the configuration and the training loop; its parts live in
:mod:`~cem_node.training.detector_augment` (the augmentation),
:mod:`~cem_node.training.detector_images` (the training images),
:mod:`~cem_node.training.detector_checkpoint` (pretrained weights, checkpoints),
:mod:`~cem_node.training.hard_examples` and :mod:`~cem_node.training.operating_point`,
and their public names are importable from here as well.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from cem_node.contracts.params import DetectorConfig, PostprocessParams, PreprocessParams
from cem_node.pipeline.detector import build_detector, save_detector_weights, select_device
from cem_node.training.datasets import Sample
from cem_node.training.detector_augment import (
    AugmentConfig,
    AugmentParams,
    augment,
    boxes_from_masks,
    sample_augment_params,
    transform_boxes,
)
from cem_node.training.detector_checkpoint import (
    load_checkpoint,
    load_pretrained_weights,
    save_checkpoint,
)
from cem_node.training.detector_errors import TrainingError
from cem_node.training.detector_images import (
    ImageSet,
    PreparedImage,
    batch_iterator,
    collate,
    prepare_all,
    prepare_sample,
)
from cem_node.training.hard_examples import find_hard_examples, mine_hard_examples
from cem_node.training.operating_point import (
    KEEP_SCORE_GRID,
    OPERATING_RULES,
    KeepScoreRow,
    choose_operating_point,
    detections_per_image,
    keep_score_sweep,
    scaled_preprocess,
    select_operating_point,
    source_detections,
)
from cem_node.training.run_files import (
    BEST_WEIGHTS,
    CHECKPOINT_JSON,
    CHECKPOINT_TENSORS,
    HISTORY,
)

__all__ = [
    "KEEP_SCORE_GRID",
    "OPERATING_RULES",
    "PRESETS",
    "AugmentConfig",
    "AugmentParams",
    "KeepScoreRow",
    "PreparedImage",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "augment",
    "boxes_from_masks",
    "choose_operating_point",
    "detections_per_image",
    "epoch_order",
    "find_hard_examples",
    "keep_score_sweep",
    "load_pretrained_weights",
    "prepare_sample",
    "sample_augment_params",
    "scaled_preprocess",
    "select_operating_point",
    "source_detections",
    "train_detector",
    "transform_boxes",
]

log = logging.getLogger(__name__)

LOSS_TERMS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")

PRESETS: dict[str, dict[str, Any]] = {
    # PAPER.md: Adam, lr 1e-5, batch 1, 30 epochs
    "paper": {
        "epochs": 30,
        "lr": 1e-5,
        "batch_size": 1,
        "warmup_steps": 0,
        "lr_schedule": "constant",
    },
    # a quick run (demo bundles, smoke tests): larger steps, few epochs, a short warm-up and a
    # cosine decay, so the last epochs settle instead of jumping about the minimum
    "fast": {
        "epochs": 8,
        "lr": 2e-4,
        "batch_size": 2,
        "warmup_steps": 50,
        "lr_schedule": "cosine",
    },
}


# --- configuration -----------------------------------------------------------------------------


class TrainConfig(BaseModel):
    """How to train the detector.

    ``preset`` fills ``epochs``, ``lr``, ``batch_size``, ``warmup_steps`` and
    ``lr_schedule`` when they are not given (:data:`PRESETS`): ``paper`` is
    PAPER.md's schedule (Adam, constant lr 1e-5, batch 1, 30 epochs), ``fast``
    a quick one (lr 2e-4, batch 2, 8 epochs, 50 warm-up steps, cosine decay).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["paper", "fast"] = "paper"
    epochs: int = Field(30, ge=1, description="Epochs in all (a resumed run goes on to this).")
    lr: float = Field(1e-5, gt=0, description="Adam learning rate.")
    batch_size: int = Field(1, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0, description="Linear learning-rate warm-up (steps).")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="After the warm-up: keep lr, or decay it along a cosine to 1% at the end.",
    )
    grad_clip_norm: float | None = Field(
        None, gt=0, description="Clip the gradient norm to this (None: no clipping)."
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="fp16 autocast and gradient scaling on CUDA.")
    pretrained: Path | None = Field(
        None,
        description=(
            "A local weights file (safetensors, or a torch state_dict .pth read with "
            "weights_only=True) for the backbone or the whole detector; never downloaded."
        ),
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    max_steps_per_epoch: int | None = Field(
        None, ge=1, description="Stop an epoch after this many steps (smoke tests)."
    )
    val_batch_size: int | None = Field(None, ge=1, description="Default: batch_size.")
    hard_example_weight: float = Field(
        1.0,
        ge=1.0,
        description=(
            "Hard-example mining for a fine-tuning run: the training images on which the "
            "starting detector (the pretrained weights) misses a lesion are drawn this many "
            "times as often as the others (epochs keep their length; drawn with replacement). "
            "1: every image once per epoch."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            preset = data.get("preset") or "paper"
            for key, value in PRESETS.get(preset, {}).items():
                if data.get(key) is None:
                    data[key] = value
        return data


# --- the loop ---------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a training run produced."""

    out_dir: Path
    best_weights: Path
    checkpoint: Path
    history_path: Path
    best_epoch: int
    best_loss: float
    selected_by: Literal["val_loss", "train_loss"]
    epochs_completed: int
    history: list[dict[str, Any]]
    device: str
    train_images: int
    val_images: int
    skipped: list[str] = field(default_factory=list)
    resumed_from: int | None = None
    pretrained: str | None = None
    hard_examples: int | None = None
    seconds: float = 0.0


def learning_rate(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate at ``step`` (0-based) of ``total_steps``: warm-up, then the schedule.

    A pure function of the step, so a resumed run continues the same curve.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    floor = 0.01 * cfg.lr
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_order(count: int, seed: int, epoch: int, weights: np.ndarray | None = None) -> np.ndarray:
    """The training items of one epoch, in order: ``count`` of them, seeded by (seed, epoch).

    Without ``weights`` (or with all equal) a permutation of the images. With
    weights, ``count`` draws with replacement, image *i* with probability
    ``weights[i] / sum(weights)``; the k-th repeat of image *i* in the epoch is
    returned as ``i + k * count`` so that it gets its own augmentation.
    """
    rng = np.random.default_rng([seed, epoch])
    if weights is None or np.all(weights == weights[0]):
        return rng.permutation(count)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (count,) or np.any(w <= 0):
        raise ValueError(f"weights must be {count} positive numbers")
    picks = rng.choice(count, size=count, replace=True, p=w / w.sum())
    seen: dict[int, int] = {}
    out = np.empty(count, dtype=np.int64)
    for position, index in enumerate(picks.tolist()):
        draw = seen.get(index, 0)
        seen[index] = draw + 1
        out[position] = index + draw * count
    return out


def _config_record(
    detector: DetectorConfig, preprocess: PreprocessParams, config: TrainConfig
) -> dict[str, Any]:
    return {
        "detector": detector.model_dump(mode="json"),
        "preprocessing": preprocess.model_dump(mode="json"),
        "train_config": config.model_dump(mode="json"),
    }


def _set_batchnorm_eval(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _losses(model: nn.Module, images: list[torch.Tensor], targets: list[dict], amp: bool, device):
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        losses = model(images, targets)
    return {k: v.float() for k, v in losses.items()}


def _validate(
    model: nn.Module,
    images: ImageSet,
    batch_size: int,
    amp: bool,
    device: torch.device,
    seed: int,
    advance: Callable[[], None],
) -> dict[str, float]:
    """Mean validation losses: train mode (torchvision gives losses only there), BatchNorm
    in eval mode, no gradients, fixed proposal-sampling seed."""
    model.train()
    _set_batchnorm_eval(model)
    totals: dict[str, float] = {}
    count = 0
    devices = [device] if device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, len(images), batch_size):
            batch = [images[i] for i in range(start, min(start + batch_size, len(images)))]
            ims, tgs = collate(batch)
            losses = _losses(model, ims, tgs, amp, device)
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value) * len(batch)
            count += len(batch)
            advance()
    model.train()
    out = {k: v / max(count, 1) for k, v in totals.items()}
    out["loss"] = sum(out.get(k, 0.0) for k in LOSS_TERMS)
    return out


def train_detector(
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    detector_config: DetectorConfig,
    preprocess: PreprocessParams,
    train_config: TrainConfig,
    out_dir: Path,
    progress: bool = True,
    *,
    postprocess: PostprocessParams | None = None,
    resume: bool = False,
    console: Any | None = None,
) -> TrainResult:
    """Train the detector; write best weights, the last checkpoint and the history to ``out_dir``.

    Parameters
    ----------
    train_samples, val_samples
        The images of each part (split by patient beforehand). Without
        validation images the best epoch is chosen by the training loss.
    detector_config, preprocess
        The architecture and the preprocessing (as the bundle will pin them).
    train_config
        Optimiser, schedule, augmentation, seed, device.
    out_dir
        Where the files go (created).
    progress
        Show rich progress bars (on ``console``, default stderr).
    resume
        Continue from ``out_dir``'s checkpoint when there is one (the
        detector and preprocessing settings must be the same; ``epochs``
        may be larger than before).

    Raises
    ------
    DatasetError
        A sample cannot be read (missing file, shapes that do not match).
    TrainingError
        No usable training image, a loss that is not finite, an unusable
        checkpoint or pretrained-weights file.
    """
    from rich.console import Console

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = select_device(train_config.device)  # (torch device, its description)
    console = console or Console(stderr=True)
    bar = _progress_bar(console, progress)
    skipped: list[str] = []
    with bar:
        run = _start_run(
            out_dir, train_config, detector_config, preprocess, postprocess, resume, bar, device
        )
        if run.has_checkpoint:
            _resume(run, console)
        elif resume:
            console.print(f"no checkpoint in {out_dir}: starting afresh")
        # the images last: a bad checkpoint or weights file fails before this long part
        train_images, val_images = _prepare_parts(
            train_samples, val_samples, preprocess, skipped, bar
        )
        hard_keys, sampling_weights = _sampling_weights(run, train_images, postprocess)
        _train_epochs(run, train_images, val_images, sampling_weights)
    _write_history(run, validated=bool(val_images))
    return _result(run, train_images, val_images, skipped, hard_keys, started)


def _progress_bar(console: Any, progress: bool) -> Any:
    """The rich progress display of a run (disabled when ``progress`` is false)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not progress,
    )


@dataclass
class _Run:
    """A training run in progress: its settings, the model and its optimiser, and what the
    epochs carry on (restored from the checkpoint when a run resumes)."""

    out_dir: Path
    cfg: TrainConfig
    detector_config: DetectorConfig
    device: torch.device
    device_text: str
    amp: bool
    bar: Any
    model: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    expected: dict[str, Any]
    has_checkpoint: bool
    pretrained_note: str | None
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    global_step: int = 0
    best_epoch: int = 0
    best_loss: float = math.inf
    resumed_from: int | None = None


def _start_run(
    out_dir: Path,
    cfg: TrainConfig,
    detector_config: DetectorConfig,
    preprocess: PreprocessParams,
    postprocess: PostprocessParams | None,
    resume: bool,
    bar: Any,
    device: tuple[torch.device, str],
) -> _Run:
    """Build the model from the seed (with the pretrained weights, unless a checkpoint to
    resume from replaces them), its optimiser and gradient scaler."""
    torch_device, device_text = device
    amp = bool(cfg.amp and torch_device.type == "cuda")
    torch.manual_seed(cfg.seed)
    model = build_detector(detector_config, preprocess, postprocess)
    pretrained_note = None
    has_checkpoint = resume and (out_dir / CHECKPOINT_JSON).is_file()
    if cfg.pretrained is not None and not has_checkpoint:  # a checkpoint replaces them
        loaded, total = load_pretrained_weights(model, Path(cfg.pretrained))
        pretrained_note = f"{cfg.pretrained} ({loaded} of {total} tensors)"
        log.info("pretrained weights: %s", pretrained_note)
    model.to(torch_device)
    params = [p for p in model.parameters() if p.requires_grad]
    return _Run(
        out_dir=out_dir,
        cfg=cfg,
        detector_config=detector_config,
        device=torch_device,
        device_text=device_text,
        amp=amp,
        bar=bar,
        model=model,
        params=params,
        optimizer=torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay),
        scaler=torch.amp.GradScaler("cuda", enabled=amp),
        expected=_config_record(detector_config, preprocess, cfg),
        has_checkpoint=has_checkpoint,
        pretrained_note=pretrained_note,
    )


def _resume(run: _Run, console: Any) -> None:
    """Load ``run``'s checkpoint: weights, optimiser, scaler, RNG state, epoch and history."""
    record = load_checkpoint(run.out_dir, run.model, run.optimizer, run.scaler, run.expected)
    run.start_epoch = int(record["epoch"])
    run.global_step = int(record["global_step"])
    run.best_epoch, run.best_loss = int(record["best_epoch"]), float(record["best_loss"])
    run.history = list(record.get("history", []))
    run.resumed_from = run.start_epoch
    if not (run.out_dir / BEST_WEIGHTS).is_file():
        raise TrainingError(f"{run.out_dir / BEST_WEIGHTS} is missing: cannot resume")
    console.print(f"resuming after epoch {run.start_epoch} (best epoch {run.best_epoch})")


def _prepare_parts(
    train_samples: Sequence[Sample],
    val_samples: Sequence[Sample],
    preprocess: PreprocessParams,
    skipped: list[str],
    bar: Any,
) -> tuple[list[PreparedImage], list[PreparedImage]]:
    """The usable training and validation images (the others' reasons go to ``skipped``)."""
    task = bar.add_task("preparing images", total=len(train_samples) + len(val_samples), info="")

    def step() -> None:
        bar.advance(task)

    train_images = prepare_all(train_samples, preprocess, "train", skipped, step)
    val_images = prepare_all(val_samples, preprocess, "val", skipped, step)
    bar.remove_task(task)
    if not train_images:
        raise TrainingError(
            "no usable training image ("
            + (f"{len(skipped)} skipped: {skipped[0]}" if skipped else "none given")
            + ")"
        )
    for reason in skipped:
        log.warning("skipped %s", reason)
    return train_images, val_images


def _sampling_weights(
    run: _Run, train_images: list[PreparedImage], postprocess: PostprocessParams | None
) -> tuple[list[str] | None, np.ndarray | None]:
    """The hard examples (None without hard-example weighting) and the training images'
    sampling weights (None: every image once per epoch)."""
    cfg = run.cfg
    hard_keys: list[str] | None = None
    if cfg.hard_example_weight > 1.0:
        hard_keys = mine_hard_examples(
            run.out_dir,
            run.model,
            train_images,
            cfg,
            postprocess,
            run.device,
            run.has_checkpoint,
            run.bar,
        )
    sampling_weights = None
    if hard_keys:
        hard_set = set(hard_keys)
        sampling_weights = np.array(
            [cfg.hard_example_weight if im.key in hard_set else 1.0 for im in train_images]
        )
    return hard_keys, sampling_weights


def _train_epochs(
    run: _Run,
    train_images: list[PreparedImage],
    val_images: list[PreparedImage],
    sampling_weights: np.ndarray | None,
) -> None:
    """Train from ``run``'s start epoch to the last; each epoch ends with validation, the
    best weights when it improved, the checkpoint and the history."""
    cfg, bar = run.cfg, run.bar
    train_set = ImageSet(train_images, cfg.augment, cfg.seed)
    val_set = ImageSet(val_images, None, cfg.seed)
    steps_per_epoch = math.ceil(len(train_images) / cfg.batch_size)
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    val_batch = cfg.val_batch_size or cfg.batch_size
    val_steps = math.ceil(len(val_images) / val_batch)
    epoch_task = bar.add_task(
        "epochs", total=cfg.epochs, completed=run.start_epoch, info=f"on {run.device_text}"
    )
    for epoch in range(run.start_epoch, cfg.epochs):
        epoch_started = time.perf_counter()
        order = epoch_order(len(train_images), cfg.seed, epoch, sampling_weights)
        batches = [
            order[i : i + cfg.batch_size].tolist() for i in range(0, len(order), cfg.batch_size)
        ][:steps_per_epoch]
        train_set.epoch = epoch
        train_losses, seen = _train_epoch(run, train_set, batches, epoch, steps_per_epoch)
        val_losses: dict[str, float] | None = None
        if val_images:
            val_task = bar.add_task(f"validation {epoch + 1}", total=val_steps, info="")
            val_losses = _validate(
                run.model,
                val_set,
                val_batch,
                run.amp,
                run.device,
                cfg.seed,
                lambda t=val_task: bar.advance(t),
            )
            bar.remove_task(val_task)
        _end_epoch(run, epoch, epoch_started, train_losses, val_losses, seen, epoch_task)


def _train_epoch(
    run: _Run, train_set: ImageSet, batches: list[list[int]], epoch: int, steps_per_epoch: int
) -> tuple[dict[str, float], int]:
    """One epoch's optimiser steps; returns the mean training losses and the steps taken."""
    cfg, model, optimizer, scaler = run.cfg, run.model, run.optimizer, run.scaler
    model.train()
    sums: dict[str, float] = {}
    seen = 0
    step_task = run.bar.add_task(f"epoch {epoch + 1}", total=steps_per_epoch, info="")
    for images, targets in batch_iterator(train_set, batches, cfg.num_workers):
        lr = learning_rate(cfg, run.global_step, cfg.epochs * steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = _losses(model, images, targets, run.amp, run.device)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss is not finite at epoch {epoch + 1}, step {seen + 1} "
                f"({ {k: round(float(v), 4) for k, v in losses.items()} }): "
                "lower the learning rate"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(run.params, cfg.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        run.global_step += 1
        seen += 1
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
        run.bar.update(step_task, advance=1, info=f"loss {float(loss.detach()):.3f}")
    run.bar.remove_task(step_task)
    train_losses = {k: v / max(seen, 1) for k, v in sums.items()}
    train_losses["loss"] = sum(train_losses.get(k, 0.0) for k in LOSS_TERMS)
    return train_losses, seen


def _end_epoch(
    run: _Run,
    epoch: int,
    epoch_started: float,
    train_losses: dict[str, float],
    val_losses: dict[str, float] | None,
    seen: int,
    epoch_task: Any,
) -> None:
    """Keep the weights when the epoch improved, record it, save the checkpoint and history."""
    selected = val_losses["loss"] if val_losses is not None else train_losses["loss"]
    improved = selected < run.best_loss
    if improved:
        run.best_epoch, run.best_loss = epoch + 1, selected
        save_detector_weights(
            run.model, run.out_dir / BEST_WEIGHTS, run.detector_config.weights_dtype
        )
    entry = {
        "epoch": epoch + 1,
        "train_loss": train_losses["loss"],
        "train_losses": train_losses,
        "val_loss": val_losses["loss"] if val_losses is not None else None,
        "val_losses": val_losses,
        "lr": run.optimizer.param_groups[0]["lr"],
        "steps": seen,
        "global_step": run.global_step,
        "seconds": round(time.perf_counter() - epoch_started, 3),
        "best": improved,
    }
    run.history.append(entry)
    state = {
        "epoch": epoch + 1,
        "global_step": run.global_step,
        "best_epoch": run.best_epoch,
        "best_loss": run.best_loss,
        "history": run.history,
        **run.expected,
    }
    save_checkpoint(run.out_dir, run.model, run.optimizer, run.scaler, state)
    _write_history(run, validated=val_losses is not None)
    shown = f"val {entry['val_loss']:.4f}" if val_losses else "no val"
    run.bar.update(
        epoch_task,
        advance=1,
        info=f"train {entry['train_loss']:.4f}, {shown}, best epoch {run.best_epoch}",
    )
    log.info(
        "epoch %d: train loss %.4f, %s, %.1f s",
        epoch + 1,
        entry["train_loss"],
        shown,
        entry["seconds"],
    )


def _result(
    run: _Run,
    train_images: list[PreparedImage],
    val_images: list[PreparedImage],
    skipped: list[str],
    hard_keys: list[str] | None,
    started: float,
) -> TrainResult:
    """What the finished run produced."""
    return TrainResult(
        out_dir=run.out_dir,
        best_weights=run.out_dir / BEST_WEIGHTS,
        checkpoint=run.out_dir / CHECKPOINT_TENSORS,
        history_path=run.out_dir / HISTORY,
        best_epoch=run.best_epoch,
        best_loss=run.best_loss,
        selected_by="val_loss" if val_images else "train_loss",
        epochs_completed=len(run.history),
        history=run.history,
        device=run.device_text,
        train_images=len(train_images),
        val_images=len(val_images),
        skipped=skipped,
        resumed_from=run.resumed_from,
        pretrained=run.pretrained_note,
        hard_examples=None if hard_keys is None else len(hard_keys),
        seconds=time.perf_counter() - started,
    )


def _write_history(run: _Run, validated: bool) -> None:
    """Write ``history.json`` (through a temporary file, so a reader never sees half of it)."""
    document = {
        "best_epoch": run.best_epoch,
        "best_loss": run.best_loss if math.isfinite(run.best_loss) else None,
        "selected_by": "val_loss" if validated else "train_loss",
        "device": run.device_text,
        "epochs": run.history,
    }
    tmp = run.out_dir / (HISTORY + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(run.out_dir / HISTORY)

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from cem_node.contracts.params import DetectorConfig, PostprocessParams, PreprocessParams
from cem_node.pipeline.detector import build_detector, save_detector_weights, select_device
from cem_node.pipeline.preprocess import PreprocessError, preprocess_pair
from cem_node.training.datasets import Sample
from cem_node.training.metrics import HIT_RULES, dice, iou_matrix
from cem_node.training.run_files import (
    BEST_WEIGHTS,
    CHECKPOINT_JSON,
    CHECKPOINT_TENSORS,
    HARD_EXAMPLES,
    HISTORY,
    OPERATING_POINT,
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

CHECKPOINT_FORMAT = "cem-node/detector-checkpoint/v1"
HIT_IOU = HIT_RULES["iou>=0.1"]  # the evaluation's primary hit rule
# the keep scores tried on the validation images: from the paper's 0.1 up
KEEP_SCORE_GRID = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))
#: How an operating point is chosen on the validation images (both measured on the source
#: images, with the evaluation's hit rule and per-image Dice), in the words that
#: ``operating_point.json`` and a bundle's description use.
OPERATING_RULES = {
    "sensitivity": "most images with every lesion found, then highest mean Dice per image",
    "dice": "highest mean Dice per image",
}
OperatingRule = Literal["sensitivity", "dice"]
LABEL_IDS = {"benign": 1, "malignant": 2}
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


class TrainingError(RuntimeError):
    """Training cannot go on (loss not finite, checkpoint unusable, no usable image)."""


# --- configuration -----------------------------------------------------------------------------


class AugmentConfig(BaseModel):
    """PAPER.md's augmentation, applied to the network image, its masks and boxes together."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    vertical_flip_p: float = Field(0.5, ge=0.0, le=1.0, description="Probability of a flip.")
    shear_rad: float = Field(0.1, ge=0.0, lt=1.0, description="Shear angle drawn in +-this.")
    scale: tuple[float, float] = Field((0.9, 1.1), description="Scale factor range.")

    @model_validator(mode="after")
    def _scale_ordered(self) -> AugmentConfig:
        low, high = self.scale
        if not 0 < low <= high:
            raise ValueError(f"scale range must be 0 < low <= high, got {self.scale}")
        return self


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


# --- augmentation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the augmentation: vertical flip, horizontal shear angle, scale."""

    flip: bool = False
    shear_rad: float = 0.0
    scale: float = 1.0

    def matrix(self, shape: tuple[int, int]) -> np.ndarray:
        """The 2 x 3 forward affine map (cv2 convention) on an image of ``shape`` (rows, cols).

        Pixel centres, about the image centre: ``p' = c + A (p - c)`` with
        ``A = scale * [[1, tan(shear)], [0, 1]] @ diag(1, -1 if flip else 1)``.
        """
        rows, cols = shape
        centre = np.array([(cols - 1) / 2.0, (rows - 1) / 2.0])
        flip = np.diag([1.0, -1.0 if self.flip else 1.0])
        shear = np.array([[1.0, math.tan(self.shear_rad)], [0.0, 1.0]])
        a = self.scale * shear @ flip
        return np.hstack([a, (centre - a @ centre)[:, None]])


def sample_augment_params(rng: np.random.Generator, config: AugmentConfig) -> AugmentParams:
    """Draw one augmentation (always three draws, so the stream does not depend on the values)."""
    flip_draw, shear_draw, scale_draw = rng.random(3)
    if not config.enabled:
        return AugmentParams()
    low, high = config.scale
    return AugmentParams(
        flip=bool(flip_draw < config.vertical_flip_p),
        shear_rad=float((2.0 * shear_draw - 1.0) * config.shear_rad),
        scale=float(low + scale_draw * (high - low)),
    )


def augment(
    image: np.ndarray, masks: np.ndarray, params: AugmentParams
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one augmentation to a (C, H, W) image and its (N, H, W) masks; same shapes back.

    The image is interpolated linearly (outside: 0), the masks linearly as
    floats and thresholded at 0.5, like
    :meth:`~cem_node.pipeline.preprocess.PreprocessGeometry.mask_to_network`.
    """
    import cv2

    if params == AugmentParams():
        return image, masks
    _, rows, cols = image.shape
    matrix = params.matrix((rows, cols))
    warp = {"dsize": (cols, rows), "borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
    channels = np.ascontiguousarray(image.transpose(1, 2, 0))
    if channels.dtype == np.uint8:
        channels = channels.astype(np.float32)
    warped = cv2.warpAffine(channels, matrix, flags=cv2.INTER_LINEAR, **warp)
    if warped.ndim == 2:
        warped = warped[:, :, None]
    out_image = np.ascontiguousarray(warped.transpose(2, 0, 1)).astype(image.dtype, copy=False)
    out_masks = np.zeros_like(masks, dtype=bool)
    for i, mask in enumerate(masks):
        moved = cv2.warpAffine(mask.astype(np.float32), matrix, flags=cv2.INTER_LINEAR, **warp)
        out_masks[i] = moved >= 0.5
    return out_image, out_masks


def transform_boxes(boxes: np.ndarray, params: AugmentParams, shape: tuple[int, int]) -> np.ndarray:
    """Boxes (x0, y0, x1, y1; pixel edges) through the augmentation: the boxes of their corners.

    For an axis-aligned rectangle this is the box of the augmented rectangle
    (a sheared rectangle is a parallelogram whose box this is).
    """
    bx = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    matrix = params.matrix(shape)
    a, t = matrix[:, :2], matrix[:, 2]
    out = np.zeros_like(bx)
    for i, (x0, y0, x1, y1) in enumerate(bx):
        # edges -> pixel-centre coordinates (-0.5), map, and back (+0.5)
        corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) - 0.5
        moved = corners @ a.T + t + 0.5
        out[i] = [*moved.min(axis=0), *moved.max(axis=0)]
    return out


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 boxes (x0, y0, x1, y1; pixel edges) of (N, H, W) masks (non-empty)."""
    out = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        out[i] = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
    return out


# --- preparing the images --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PreparedImage:
    """One sample, preprocessed: the network image (uint8, 3 x H x W) and its lesion masks."""

    key: str
    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray

    def tensors(self, params: AugmentParams | None = None) -> tuple[torch.Tensor, dict]:
        """The network input (float32 in [0, 1]) and its torchvision target, augmented."""
        image = self.image.astype(np.float32) / np.float32(255.0)
        masks, labels = self.masks, self.labels
        if params is not None:
            image, masks = augment(image, masks, params)
            keep = masks.any(axis=(1, 2))
            masks, labels = masks[keep], labels[keep]
        rows, cols = image.shape[1:]
        target = {
            "boxes": torch.from_numpy(boxes_from_masks(masks)).reshape(-1, 4),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "masks": torch.from_numpy(masks.astype(np.uint8)).reshape(-1, rows, cols),
        }
        return torch.from_numpy(np.ascontiguousarray(image)), target


def prepare_sample(sample: Sample, preprocess: PreprocessParams) -> PreparedImage:
    """Preprocess a sample as inference does and bring its lesion masks to the network image.

    Lesions whose mask leaves nothing on the network image (outside the
    breast crop, or thinner than a pixel after the resize) are dropped.

    Raises
    ------
    DatasetError
        When the sample's files cannot be read or their shapes do not match.
    PreprocessError
        When the pair cannot be preprocessed (no breast found ...).
    """
    loaded = sample.load()
    pair = preprocess_pair(loaded.low_energy, loaded.recombined, preprocess, sample.laterality)
    masks, labels = [], []
    for lesion in loaded.lesions:
        mask = pair.geometry.mask_to_network(lesion.mask)
        if mask.any():
            masks.append(mask)
            labels.append(LABEL_IDS[lesion.label])
    rows, cols = pair.geometry.network_shape
    image = np.clip(np.rint(pair.image * 255.0), 0, 255).astype(np.uint8)
    return PreparedImage(
        key=sample.key,
        image=image,
        masks=np.stack(masks) if masks else np.zeros((0, rows, cols), dtype=bool),
        labels=np.asarray(labels, dtype=np.int64),
    )


class _ImageSet(torch.utils.data.Dataset):
    """The prepared images of one part; training items augmented from (seed, epoch, index)."""

    def __init__(
        self, images: list[PreparedImage], augment_config: AugmentConfig | None, seed: int
    ):
        self.images = images
        self.augment_config = augment_config
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, dict]:
        # item = index + draw * len: the draw-th repeat of an image within an epoch (hard-example
        # sampling) gets its own augmentation; the first keeps the stream of unweighted runs
        draw, index = divmod(item, len(self.images))
        params = None
        if self.augment_config is not None:
            key = [self.seed, self.epoch, index] + ([draw] if draw else [])
            params = sample_augment_params(np.random.default_rng(key), self.augment_config)
        return self.images[index].tensors(params)


def _collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list, list]:
    return [b[0] for b in batch], [b[1] for b in batch]


def _batches(
    dataset: _ImageSet, batches: list[list[int]], num_workers: int
) -> Any:  # an iterable of (images, targets)
    if num_workers == 0:
        return (_collate([dataset[i] for i in batch]) for batch in batches)
    # its own generator: the workers' seeds must not draw from torch's global generator,
    # whose stream the proposal sampling uses (runs with and without workers stay equal)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=_collate,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(dataset.seed),
    )


# --- pretrained weights ---------------------------------------------------------------------


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TrainingError(f"pretrained weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError, OSError
            raise TrainingError(f"cannot read pretrained weights {path}: {exc}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors: the file holds more than tensors
        raise TrainingError(
            f"cannot read pretrained weights {path} with weights_only=True "
            f"(a plain state_dict of tensors is expected): {exc}"
        ) from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise TrainingError(f"{path}: expected a state_dict (a mapping of tensors)")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_pretrained_weights(model: nn.Module, path: Path) -> tuple[int, int]:
    """Copy matching tensors from a local file into the detector; returns (loaded, in the file).

    Keys are matched as they are (a detector checkpoint), under
    ``backbone.body.`` (a classification backbone such as torchvision's
    ImageNet ResNet or MobileNetV3, ``features.`` stripped), with
    ``module.`` prefixes removed; only tensors of the same shape are copied.

    Raises
    ------
    TrainingError
        When the file cannot be read or no tensor of it fits the detector.
    """
    source = _read_state(path)
    target = model.state_dict()
    update: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        name = key.removeprefix("module.")
        for candidate in (
            name,
            f"backbone.body.{name}",
            f"backbone.body.{name.removeprefix('features.')}",
            f"backbone.{name}",
        ):
            if candidate in target and target[candidate].shape == tensor.shape:
                update[candidate] = tensor.to(target[candidate].dtype)
                break
    if not update:
        raise TrainingError(
            f"no tensor of {path.name} fits the detector's architecture "
            f"(file keys such as {', '.join(list(source)[:3]) or '(none)'})"
        )
    model.load_state_dict(update, strict=False)
    return len(update), len(source)


# --- checkpoints ------------------------------------------------------------------------------


def _config_record(
    detector: DetectorConfig, preprocess: PreprocessParams, config: TrainConfig
) -> dict[str, Any]:
    return {
        "detector": detector.model_dump(mode="json"),
        "preprocessing": preprocess.model_dump(mode="json"),
        "train_config": config.model_dump(mode="json"),
    }


def _save_checkpoint(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: dict[str, Any],
) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        tensors[f"model/{name}"] = value.detach().cpu().contiguous().clone()
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in opt["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state().clone()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = rng.clone()
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].numpy().tobytes())
    record = {
        "format": CHECKPOINT_FORMAT,
        **state,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        "tensors_sha256": digest.hexdigest(),
    }
    tensor_path, json_path = out_dir / CHECKPOINT_TENSORS, out_dir / CHECKPOINT_JSON
    tmp_tensors = tensor_path.with_name(tensor_path.name + ".tmp")
    tmp_json = json_path.with_name(json_path.name + ".tmp")
    save_file(tensors, str(tmp_tensors), metadata={"format": CHECKPOINT_FORMAT})
    tmp_json.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    tmp_tensors.replace(tensor_path)
    tmp_json.replace(json_path)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _load_checkpoint(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    expected: dict[str, Any],
) -> dict[str, Any]:
    from safetensors.torch import load_file

    json_path, tensor_path = out_dir / CHECKPOINT_JSON, out_dir / CHECKPOINT_TENSORS
    try:
        record = json.loads(json_path.read_text())
        tensors = load_file(str(tensor_path))
    except Exception as exc:
        raise TrainingError(f"cannot read the checkpoint in {out_dir}: {exc}") from None
    if record.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{json_path}: not a {CHECKPOINT_FORMAT} checkpoint")
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(key.encode())
        digest.update(tensors[key].numpy().tobytes())
    if digest.hexdigest() != record.get("tensors_sha256"):
        raise TrainingError(
            f"{tensor_path.name} and {json_path.name} in {out_dir} do not belong together "
            "(interrupted while saving?): start afresh without resume"
        )
    for part in ("detector", "preprocessing"):
        if record.get(part) != expected[part]:
            raise TrainingError(
                f"the checkpoint in {out_dir} was made with other {part} settings "
                f"({record.get(part)}); resume with the same settings or use another folder"
            )
    model.load_state_dict(
        {k.removeprefix("model/"): v for k, v in tensors.items() if k.startswith("model/")}
    )
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            opt_state.setdefault(int(index), {})[name] = value
    for index, values in record["optimizer"].get("scalars", {}).items():
        opt_state.setdefault(int(index), {}).update(values)
    groups = record["optimizer"]["param_groups"]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    if record.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(record["scaler"])
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[f"rng/cuda/{i}"] for i in range(64) if f"rng/cuda/{i}" in tensors]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    return record


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


def find_hard_examples(
    model: nn.Module,
    images: Sequence[PreparedImage],
    postprocess: PostprocessParams,
    device: torch.device,
    advance: Callable[[int], None] = lambda done: None,
) -> list[str]:
    """The keys of the images on which ``model`` misses at least one lesion.

    The model detects as inference does (:func:`~cem_node.pipeline.detector.detect`
    with ``postprocess``: its score threshold, class-agnostic NMS, keep score);
    a lesion is found when a detection's mask (thresholded at the mask
    threshold) overlaps it with IoU >= 0.1, the evaluation's hit rule. The
    images are the un-augmented network images; an image without lesions is
    never hard. ``advance(n)`` is called after each batch of ``n`` images.
    """
    found = detections_per_image(model, images, postprocess, device, advance)
    return [
        image.key
        for image, detections in zip(images, found, strict=True)
        if not _all_found(iou_matrix([mask for _, mask in detections], image.masks))
    ]


def detections_per_image(
    model: nn.Module,
    images: Sequence[PreparedImage],
    postprocess: PostprocessParams,
    device: torch.device,
    advance: Callable[[int], None] = lambda done: None,
) -> list[list[tuple[float, np.ndarray]]]:
    """Per image, the ``(score, binary mask)`` of each detection, as inference post-processes them.

    The masks are thresholded at ``postprocess.mask_threshold``, in network-image
    coordinates; ``advance(n)`` is called after each batch of ``n`` images.
    """
    from cem_node.pipeline.detector import detect

    out: list[list[tuple[float, np.ndarray]]] = []
    was_training = model.training
    batch = 4
    try:
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            found = detect(
                model,
                [im.image.astype(np.float32) / np.float32(255.0) for im in chunk],
                postprocess,
                device,
                batch_size=batch,
            )
            for detections in found:
                out.append(
                    [
                        (float(d.score), d.mask_probability >= postprocess.mask_threshold)
                        for d in detections
                    ]
                )
            advance(len(chunk))
    finally:
        model.train(was_training)
    return out


@dataclass(frozen=True)
class KeepScoreRow:
    """What one operating point (input short side, keep score) gives on a set of images
    (lesion hit: mask IoU >= 0.1)."""

    keep_score: float
    images: int
    images_with_lesion: int
    images_all_found: int
    false_positives: int
    mean_dice: float
    short_side: int | None = None

    @property
    def image_sensitivity(self) -> float:
        return self.images_all_found / self.images_with_lesion

    @property
    def false_positives_per_image(self) -> float:
        return self.false_positives / self.images


def keep_score_sweep(
    lesions: Sequence[Sequence[np.ndarray]],
    detections: Sequence[Sequence[tuple[float, np.ndarray]]],
    grid: Sequence[float] = KEEP_SCORE_GRID,
) -> list[KeepScoreRow]:
    """Per keep score of ``grid``: the images whose lesions are all found, the false
    positives, the mean Dice per image (union of the kept masks vs union of the lesions,
    the evaluation's per-image Dice; 0 when nothing is kept), on the images with a lesion.

    ``lesions[i]`` are image ``i``'s ground-truth masks, ``detections[i]`` its
    ``(score, mask)`` pairs (:func:`detections_per_image` at a keep score no higher
    than the grid's lowest). A detection is kept when its score exceeds the keep score,
    as in inference; a false positive has mask IoU < 0.1 with every lesion.

    Raises
    ------
    ValueError
        When the lists differ in length or no image has a lesion.
    """
    if len(lesions) != len(detections):
        raise ValueError(f"{len(lesions)} lesion lists for {len(detections)} detection lists")
    with_lesion = sum(1 for masks in lesions if len(masks))
    if not with_lesion:
        raise ValueError("no image with a lesion: the keep score cannot be chosen")
    # the IoUs of every detection with every lesion, once per image; a keep score picks rows
    ious = [
        iou_matrix([mask for _, mask in dets], masks)
        for masks, dets in zip(lesions, detections, strict=True)
    ]
    rows = []
    for keep in grid:
        found = false_positives = 0
        dices = []
        for masks, dets, iou in zip(lesions, detections, ious, strict=True):
            kept = [i for i, (score, _) in enumerate(dets) if score > keep]
            kept_iou = iou[kept]
            false_positives += int((kept_iou.max(axis=1, initial=0.0) < HIT_IOU).sum())
            if not len(masks):
                continue
            found += _all_found(kept_iou)
            truth = np.any(np.asarray(masks, dtype=bool), axis=0)
            predicted = np.zeros_like(truth)
            for i in kept:
                np.logical_or(predicted, dets[i][1], out=predicted)
            dices.append(dice(truth, predicted))
        rows.append(
            KeepScoreRow(
                keep_score=float(keep),
                images=len(lesions),
                images_with_lesion=with_lesion,
                images_all_found=found,
                false_positives=false_positives,
                mean_dice=float(np.mean(dices)),
            )
        )
    return rows


def choose_operating_point(
    rows: Sequence[KeepScoreRow], rule: OperatingRule = "sensitivity"
) -> KeepScoreRow:
    """The row that ``rule`` prefers (:data:`OPERATING_RULES`).

    ``sensitivity``: the most images whose lesions are all found, then the highest mean
    Dice per image (to 3 decimals; false positives lower it). ``dice``: the highest mean
    Dice per image. Remaining ties: the lowest keep score (the more sensitive), then the
    smallest short side (the faster).

    Raises
    ------
    ValueError
        When ``rows`` is empty or the rule is unknown.
    """
    if not rows:
        raise ValueError("no operating point to choose from")
    if rule not in OPERATING_RULES:
        raise ValueError(f"unknown operating rule {rule!r}: one of {', '.join(OPERATING_RULES)}")
    found_weight = 1 if rule == "sensitivity" else 0
    return min(
        rows,
        key=lambda row: (
            -found_weight * row.images_all_found,
            -round(row.mean_dice, 3),
            row.keep_score,
            row.short_side or 0,
        ),
    )


def scaled_preprocess(preprocess: PreprocessParams, short_side: int) -> PreprocessParams:
    """``preprocess`` with the network input's short side set to ``short_side`` and the
    long-side cap scaled with it (the aspect ratios the detector sees stay the same)."""
    scaled = round(preprocess.max_long_side * short_side / preprocess.short_side)
    long_side = max(short_side, scaled)
    return preprocess.model_copy(update={"short_side": short_side, "max_long_side": long_side})


def source_detections(
    model: nn.Module,
    samples: Sequence[Sample],
    preprocess: PreprocessParams,
    postprocess: PostprocessParams,
    device: torch.device,
    batch: int = 4,
) -> tuple[list[list[np.ndarray]], list[list[tuple[float, np.ndarray]]], list[str]]:
    """Detect on each sample with the inference preprocessing and the detector's
    post-processing (not the analysis's mask clean-up: largest region, overlaps) and
    return, on the source image, each sample's lesion masks and its ``(score, mask)``
    detections (masks thresholded at ``postprocess.mask_threshold``), with the keys of
    the samples that could not be preprocessed (skipped). Measuring on the source image
    makes operating points with different input sizes comparable, as the evaluation is."""
    from cem_node.pipeline.detector import detect

    lesions: list[list[np.ndarray]] = []
    found: list[list[tuple[float, np.ndarray]]] = []
    skipped: list[str] = []
    for start in range(0, len(samples), batch):
        pairs, truths = [], []
        for sample in samples[start : start + batch]:
            loaded = sample.load()
            try:
                pairs.append(
                    preprocess_pair(
                        loaded.low_energy, loaded.recombined, preprocess, sample.laterality
                    )
                )
            except PreprocessError:
                skipped.append(sample.key)
                continue
            truths.append([np.asarray(lesion.mask, dtype=bool) for lesion in loaded.lesions])
        detected = detect(model, [pair.image for pair in pairs], postprocess, device, batch)
        for pair, truth, detections in zip(pairs, truths, detected, strict=True):
            lesions.append(truth)
            found.append(
                [
                    (
                        float(d.score),
                        pair.geometry.mask_to_source(
                            d.mask_probability, postprocess.mask_threshold
                        ),
                    )
                    for d in detections
                ]
            )
    return lesions, found, skipped


def select_operating_point(
    weights: Path,
    detector_config: DetectorConfig,
    preprocess: PreprocessParams,
    val_samples: Sequence[Sample],
    out_dir: Path,
    short_sides: Sequence[int] | None = None,
    postprocess: PostprocessParams | None = None,
    device: torch.device | None = None,
    grid: Sequence[float] = KEEP_SCORE_GRID,
    rule: OperatingRule = "sensitivity",
) -> KeepScoreRow:
    """Choose the detector's operating point on the validation images and write
    ``operating_point.json``: the keep score and, when ``short_sides`` lists more than
    the trained one, the network input's short side.

    Per short side (default: the trained one) the weights detect once at the grid's
    lowest keep score; :func:`keep_score_sweep` measures each keep score on the source
    images and :func:`choose_operating_point` applies ``rule``.
    The paper keeps detections scored above 0.1; a detector that scores its doubtful
    findings higher (after hard-example fine-tuning, say) is better served by its own
    keep score, and one trained at a small input size for speed may see small lesions better
    on a larger input (scale augmentation makes it tolerate one), both chosen on data it
    was not trained on. The file records the rule, every row and the choice.

    Raises
    ------
    TrainingError
        No validation image with a lesion, an invalid short side, or weights that
        cannot be loaded.
    """
    from cem_node.pipeline.detector import DetectorError, load_detector

    sides = sorted({int(s) for s in (short_sides or [preprocess.short_side])})
    if any(side < 32 for side in sides):
        raise TrainingError(f"short sides must be at least 32 pixels, got {sides}")
    post = (postprocess or PostprocessParams()).model_copy(update={"keep_score": min(grid)})
    device = device or torch.device("cpu")
    rows: list[KeepScoreRow] = []
    skipped: set[str] = set()
    for side in sides:
        side_preprocess = scaled_preprocess(preprocess, side)
        try:
            model = load_detector(weights, detector_config, side_preprocess, post, device)
        except DetectorError as exc:
            raise TrainingError(str(exc)) from None
        lesions, found, missed = source_detections(
            model, val_samples, side_preprocess, post, device
        )
        skipped.update(missed)
        if not any(lesions):
            raise TrainingError(
                "choosing the operating point needs validation images with lesions: give "
                "--val-fraction > 0 and a dataset with lesions"
            )
        side_rows = keep_score_sweep(lesions, found, grid)
        rows.extend(replace(row, short_side=side) for row in side_rows)
    chosen = choose_operating_point(rows, rule)
    chosen_preprocess = scaled_preprocess(preprocess, chosen.short_side or preprocess.short_side)
    document = {
        "rule": rule,
        "rule_text": (
            f"of the operating points (input short side, keep score) on the validation "
            f"images, {OPERATING_RULES[rule]}; ties: the lowest keep score, then the smallest "
            "short side. Measured on the source images: hit, mask IoU >= 0.1; false "
            "positive, IoU < 0.1 with every lesion; Dice per image, the union of the kept "
            "masks vs the union of the lesions, 0 when a lesion image keeps nothing"
        ),
        "weights": str(weights),
        "validation_images": len(val_samples) - len(skipped),
        "skipped": sorted(skipped),
        "trained_short_side": preprocess.short_side,
        "short_sides": sides,
        "keep_score": chosen.keep_score,
        "short_side": chosen_preprocess.short_side,
        "max_long_side": chosen_preprocess.max_long_side,
        "rows": [
            {
                **asdict(row),
                "image_sensitivity": row.image_sensitivity,
                "false_positives_per_image": row.false_positives_per_image,
            }
            for row in rows
        ],
    }
    (Path(out_dir) / OPERATING_POINT).write_text(json.dumps(document, indent=2) + "\n")
    return chosen


def _all_found(iou: np.ndarray) -> bool:
    """Whether every lesion (column) has a detection (row) with IoU >= the hit threshold."""
    return bool((iou.max(axis=0, initial=0.0) >= HIT_IOU).all())


def _set_batchnorm_eval(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _prepare_all(
    samples: Sequence[Sample],
    preprocess: PreprocessParams,
    part: str,
    skipped: list[str],
    advance: Callable[[], None],
) -> list[PreparedImage]:
    prepared = []
    for sample in samples:
        try:
            image = prepare_sample(sample, preprocess)
        except PreprocessError as exc:
            skipped.append(f"{part}: {sample.key}: cannot preprocess: {exc}")
            advance()
            continue
        if sample.label != "normal" and len(image.labels) == 0:
            skipped.append(
                f"{part}: {sample.key}: labelled {sample.label} but no lesion mask "
                "on the network image"
            )
        else:
            prepared.append(image)
        advance()
    return prepared


def _losses(model: nn.Module, images: list[torch.Tensor], targets: list[dict], amp: bool, device):
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        losses = model(images, targets)
    return {k: v.float() for k, v in losses.items()}


def _validate(
    model: nn.Module,
    images: _ImageSet,
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
            ims, tgs = _collate(batch)
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
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = train_config
    device, device_text = select_device(cfg.device)
    amp = bool(cfg.amp and device.type == "cuda")
    console = console or Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not progress,
    )
    skipped: list[str] = []
    with bar:
        torch.manual_seed(cfg.seed)
        model = build_detector(detector_config, preprocess, postprocess)
        pretrained_note = None
        has_checkpoint = resume and (out_dir / CHECKPOINT_JSON).is_file()
        if cfg.pretrained is not None and not has_checkpoint:  # a checkpoint replaces them
            loaded, total = load_pretrained_weights(model, Path(cfg.pretrained))
            pretrained_note = f"{cfg.pretrained} ({loaded} of {total} tensors)"
            log.info("pretrained weights: %s", pretrained_note)
        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)

        expected = _config_record(detector_config, preprocess, cfg)
        history: list[dict[str, Any]] = []
        start_epoch, global_step = 0, 0
        best_epoch, best_loss = 0, math.inf
        resumed_from = None
        if has_checkpoint:
            record = _load_checkpoint(out_dir, model, optimizer, scaler, expected)
            start_epoch = int(record["epoch"])
            global_step = int(record["global_step"])
            best_epoch, best_loss = int(record["best_epoch"]), float(record["best_loss"])
            history = list(record.get("history", []))
            resumed_from = start_epoch
            if not (out_dir / BEST_WEIGHTS).is_file():
                raise TrainingError(f"{out_dir / BEST_WEIGHTS} is missing: cannot resume")
            console.print(f"resuming after epoch {start_epoch} (best epoch {best_epoch})")
        elif resume:
            console.print(f"no checkpoint in {out_dir}: starting afresh")

        # the images last: a bad checkpoint or weights file fails before this long part
        task = bar.add_task(
            "preparing images", total=len(train_samples) + len(val_samples), info=""
        )

        def step() -> None:
            bar.advance(task)

        train_images = _prepare_all(train_samples, preprocess, "train", skipped, step)
        val_images = _prepare_all(val_samples, preprocess, "val", skipped, step)
        bar.remove_task(task)
        if not train_images:
            raise TrainingError(
                "no usable training image ("
                + (f"{len(skipped)} skipped: {skipped[0]}" if skipped else "none given")
                + ")"
            )
        for reason in skipped:
            log.warning("skipped %s", reason)

        hard_keys: list[str] | None = None
        if cfg.hard_example_weight > 1.0:
            hard_keys = _hard_examples(
                out_dir, model, train_images, cfg, postprocess, device, has_checkpoint, bar
            )
        sampling_weights = None
        if hard_keys:
            hard_set = set(hard_keys)
            sampling_weights = np.array(
                [cfg.hard_example_weight if im.key in hard_set else 1.0 for im in train_images]
            )
        train_set = _ImageSet(train_images, cfg.augment, cfg.seed)
        val_set = _ImageSet(val_images, None, cfg.seed)
        steps_per_epoch = math.ceil(len(train_images) / cfg.batch_size)
        if cfg.max_steps_per_epoch is not None:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        val_batch = cfg.val_batch_size or cfg.batch_size
        val_steps = math.ceil(len(val_images) / val_batch)
        epoch_task = bar.add_task(
            "epochs", total=cfg.epochs, completed=start_epoch, info=f"on {device_text}"
        )
        for epoch in range(start_epoch, cfg.epochs):
            epoch_started = time.perf_counter()
            order = epoch_order(len(train_images), cfg.seed, epoch, sampling_weights)
            batches = [
                order[i : i + cfg.batch_size].tolist() for i in range(0, len(order), cfg.batch_size)
            ][:steps_per_epoch]
            train_set.epoch = epoch
            model.train()
            sums: dict[str, float] = {}
            seen = 0
            step_task = bar.add_task(f"epoch {epoch + 1}", total=steps_per_epoch, info="")
            for images, targets in _batches(train_set, batches, cfg.num_workers):
                lr = learning_rate(cfg, global_step, cfg.epochs * steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                losses = _losses(model, images, targets, amp, device)
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
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                global_step += 1
                seen += 1
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                bar.update(step_task, advance=1, info=f"loss {float(loss.detach()):.3f}")
            bar.remove_task(step_task)
            train_losses = {k: v / max(seen, 1) for k, v in sums.items()}
            train_losses["loss"] = sum(train_losses.get(k, 0.0) for k in LOSS_TERMS)
            val_losses: dict[str, float] | None = None
            if val_images:
                val_task = bar.add_task(f"validation {epoch + 1}", total=val_steps, info="")
                val_losses = _validate(
                    model,
                    val_set,
                    val_batch,
                    amp,
                    device,
                    cfg.seed,
                    lambda t=val_task: bar.advance(t),
                )
                bar.remove_task(val_task)
            selected = val_losses["loss"] if val_losses is not None else train_losses["loss"]
            improved = selected < best_loss
            if improved:
                best_epoch, best_loss = epoch + 1, selected
                save_detector_weights(model, out_dir / BEST_WEIGHTS, detector_config.weights_dtype)
            entry = {
                "epoch": epoch + 1,
                "train_loss": train_losses["loss"],
                "train_losses": train_losses,
                "val_loss": val_losses["loss"] if val_losses is not None else None,
                "val_losses": val_losses,
                "lr": optimizer.param_groups[0]["lr"],
                "steps": seen,
                "global_step": global_step,
                "seconds": round(time.perf_counter() - epoch_started, 3),
                "best": improved,
            }
            history.append(entry)
            state = {
                "epoch": epoch + 1,
                "global_step": global_step,
                "best_epoch": best_epoch,
                "best_loss": best_loss,
                "history": history,
                **expected,
            }
            _save_checkpoint(out_dir, model, optimizer, scaler, state)
            _write_history(out_dir, history, best_epoch, best_loss, val_images, device_text)
            shown = f"val {entry['val_loss']:.4f}" if val_losses else "no val"
            bar.update(
                epoch_task,
                advance=1,
                info=f"train {entry['train_loss']:.4f}, {shown}, best epoch {best_epoch}",
            )
            log.info(
                "epoch %d: train loss %.4f, %s, %.1f s",
                epoch + 1,
                entry["train_loss"],
                shown,
                entry["seconds"],
            )
    _write_history(out_dir, history, best_epoch, best_loss, val_images, device_text)
    return TrainResult(
        out_dir=out_dir,
        best_weights=out_dir / BEST_WEIGHTS,
        checkpoint=out_dir / CHECKPOINT_TENSORS,
        history_path=out_dir / HISTORY,
        best_epoch=best_epoch,
        best_loss=best_loss,
        selected_by="val_loss" if val_images else "train_loss",
        epochs_completed=len(history),
        history=history,
        device=device_text,
        train_images=len(train_images),
        val_images=len(val_images),
        skipped=skipped,
        resumed_from=resumed_from,
        pretrained=pretrained_note,
        hard_examples=None if hard_keys is None else len(hard_keys),
        seconds=time.perf_counter() - started,
    )


def _hard_examples(
    out_dir: Path,
    model: nn.Module,
    train_images: list[PreparedImage],
    cfg: TrainConfig,
    postprocess: PostprocessParams | None,
    device: torch.device,
    resumed: bool,
    bar: Any,
) -> list[str]:
    """Mine the hard training images with the starting weights, once per run (kept for resume)."""
    path = out_dir / HARD_EXAMPLES
    if resumed:
        if not path.is_file():
            raise TrainingError(f"{path} is missing: cannot resume a hard-example run")
        return list(json.loads(path.read_text())["hard"])
    if cfg.pretrained is None:
        raise TrainingError(
            "hard-example weighting needs a starting detector: give pretrained weights "
            "(a trained detector's best.safetensors) to mine its misses"
        )
    post = postprocess or PostprocessParams()
    task = bar.add_task("finding hard examples", total=len(train_images), info="")
    hard = find_hard_examples(
        model, train_images, post, device, lambda done: bar.advance(task, done)
    )
    bar.remove_task(task)
    document = {
        "rule": (
            f"a lesion without a detection scored above {post.keep_score} whose mask has IoU >= "
            f"{HIT_IOU} with it, for the starting weights {cfg.pretrained}"
        ),
        "weight": cfg.hard_example_weight,
        "train_images": len(train_images),
        "hard": hard,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    log.info("hard examples: %d of %d training images", len(hard), len(train_images))
    return hard


def _write_history(
    out_dir: Path,
    history: list[dict[str, Any]],
    best_epoch: int,
    best_loss: float,
    val_images: list[PreparedImage],
    device: str,
) -> None:
    document = {
        "best_epoch": best_epoch,
        "best_loss": best_loss if math.isfinite(best_loss) else None,
        "selected_by": "val_loss" if val_images else "train_loss",
        "device": device,
        "epochs": history,
    }
    tmp = out_dir / (HISTORY + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(out_dir / HISTORY)

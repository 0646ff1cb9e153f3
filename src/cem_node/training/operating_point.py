"""The detector's operating point: the keep score (and input short side) chosen on the
validation images, measured with the evaluation's hit rule and per-image Dice.

:func:`select_operating_point` detects once per short side, :func:`keep_score_sweep`
measures every keep score of the grid and :func:`choose_operating_point` applies the
rule (:data:`OPERATING_RULES`); the choice goes to ``operating_point.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cem_node.contracts.params import DetectorConfig, PostprocessParams, PreprocessParams
from cem_node.pipeline.preprocess import PreprocessError, preprocess_pair
from cem_node.training.datasets import Sample
from cem_node.training.detector_errors import TrainingError
from cem_node.training.detector_images import PreparedImage
from cem_node.training.metrics import HIT_RULES, dice, iou_matrix
from cem_node.training.run_files import OPERATING_POINT

__all__ = [
    "HIT_IOU",
    "KEEP_SCORE_GRID",
    "OPERATING_RULES",
    "KeepScoreRow",
    "OperatingRule",
    "all_found",
    "choose_operating_point",
    "detections_per_image",
    "keep_score_sweep",
    "scaled_preprocess",
    "select_operating_point",
    "source_detections",
]

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
            found += all_found(kept_iou)
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
    sides = sorted({int(s) for s in (short_sides or [preprocess.short_side])})
    if any(side < 32 for side in sides):
        raise TrainingError(f"short sides must be at least 32 pixels, got {sides}")
    post = (postprocess or PostprocessParams()).model_copy(update={"keep_score": min(grid)})
    device = device or torch.device("cpu")
    rows, skipped = _sweep_short_sides(
        weights, detector_config, preprocess, val_samples, sides, post, device, grid
    )
    chosen = choose_operating_point(rows, rule)
    document = _operating_point_document(
        rule, weights, preprocess, len(val_samples), sides, skipped, rows, chosen
    )
    (Path(out_dir) / OPERATING_POINT).write_text(json.dumps(document, indent=2) + "\n")
    return chosen


def _sweep_short_sides(
    weights: Path,
    detector_config: DetectorConfig,
    preprocess: PreprocessParams,
    val_samples: Sequence[Sample],
    sides: list[int],
    post: PostprocessParams,
    device: torch.device,
    grid: Sequence[float],
) -> tuple[list[KeepScoreRow], set[str]]:
    """The keep-score rows of every short side (detecting once per side at ``post``'s keep
    score, the grid's lowest), with the keys of the samples that could not be preprocessed."""
    from cem_node.pipeline.detector import DetectorError, load_detector

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
    return rows, skipped


def _operating_point_document(
    rule: OperatingRule,
    weights: Path,
    preprocess: PreprocessParams,
    val_count: int,
    sides: list[int],
    skipped: set[str],
    rows: list[KeepScoreRow],
    chosen: KeepScoreRow,
) -> dict[str, Any]:
    """``operating_point.json``'s content: the rule, the choice and every row."""
    chosen_preprocess = scaled_preprocess(preprocess, chosen.short_side or preprocess.short_side)
    return {
        "rule": rule,
        "rule_text": (
            f"of the operating points (input short side, keep score) on the validation "
            f"images, {OPERATING_RULES[rule]}; ties: the lowest keep score, then the smallest "
            "short side. Measured on the source images: hit, mask IoU >= 0.1; false "
            "positive, IoU < 0.1 with every lesion; Dice per image, the union of the kept "
            "masks vs the union of the lesions, 0 when a lesion image keeps nothing"
        ),
        "weights": str(weights),
        "validation_images": val_count - len(skipped),
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


def all_found(iou: np.ndarray) -> bool:
    """Whether every lesion (column) has a detection (row) with IoU >= the hit threshold."""
    return bool((iou.max(axis=0, initial=0.0) >= HIT_IOU).all())

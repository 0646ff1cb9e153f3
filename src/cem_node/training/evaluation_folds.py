"""Cross-validation folds of an evaluation: each fold's detector, its records, the pool.

:func:`fold_models` puts a fold's detector into the loaded bundle,
:func:`pool_records` joins the folds' out-of-fold records and
:func:`fold_summary` gives a fold's row (see :mod:`cem_node.training.evaluation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cem_node.training.evaluation_records import PRIMARY_RULE, EvaluationRecords, ImageRecord

if TYPE_CHECKING:
    from cem_node.pipeline.analyse import LoadedModels

__all__ = ["fold_models", "fold_summary", "pool_records"]


def fold_models(models: LoadedModels, detector_dir: Path) -> LoadedModels:
    """``models`` with the detector of a ``cem-node train detector`` folder in its place.

    The folder's weights, architecture, inference preprocessing (the
    operating point's input size when one was chosen) and post-processing
    (the defaults with its chosen keep score, as ``train radiomics`` and
    ``models import`` would use them) replace the bundle's; the radiomics
    model, its settings and the decision thresholds stay the bundle's.

    Raises
    ------
    ValueError
        When the folder is not a detector run (the message names the file).
    """
    import dataclasses

    from cem_node.pipeline.detector import load_detector
    from cem_node.training.radiomics_training import (
        RadiomicsTrainingError,
        detector_postprocess,
        read_detector_run,
    )

    try:
        weights, config, preprocess, record = read_detector_run(detector_dir)
        post = detector_postprocess(record)
    except RadiomicsTrainingError as exc:
        raise ValueError(str(exc)) from None
    manifest = models.bundle.manifest
    swapped = manifest.model_copy(
        update={
            "detector": manifest.detector.model_copy(update=config.model_dump()),
            "preprocessing": preprocess,
            "postprocessing": post,
        }
    )
    detector = load_detector(weights, config, preprocess, device=models.device)
    return dataclasses.replace(
        models,
        bundle=dataclasses.replace(models.bundle, manifest=swapped),
        detector=detector,
    )


def pool_records(folds: Sequence[EvaluationRecords]) -> EvaluationRecords:
    """The records of every fold as one set (each fold's held-out images, once each).

    Raises
    ------
    ValueError
        When the folds differ in rules or thresholds, or an image is in two folds.
    """
    if not folds:
        raise ValueError("no fold to pool")
    first = folds[0]
    images: list[ImageRecord] = []
    failures: list[str] = []
    notes: list[str] = []
    for number, records in enumerate(folds, start=1):
        if (records.rules, records.classification_rule, records.thresholds) != (
            first.rules,
            first.classification_rule,
            first.thresholds,
        ):
            raise ValueError(f"fold {number} was scored with other rules or thresholds")
        images.extend(records.images)
        failures.extend(f"fold {number}: {line}" for line in records.failures)
        notes.extend(f"fold {number}: {line}" for line in records.notes)
    keys = [image.key for image in images]
    if len(keys) != len(set(keys)):
        raise ValueError("an image is held out by more than one fold")
    return EvaluationRecords(
        images=images,
        thresholds=first.thresholds,
        rules=first.rules,
        classification_rule=first.classification_rule,
        failures=failures,
        notes=notes,
    )


def fold_summary(records: EvaluationRecords, rule: str = PRIMARY_RULE) -> dict[str, Any]:
    """One row of the per-fold table: counts, per-image sensitivity, mean Dice, FP per image.

    Plain values on the fold's held-out images (no interval: the pooled
    tables carry the intervals); None where the fold has no image with a lesion.
    """
    counts = records.counts()
    with_lesion = [image for image in records.images if image.lesions]
    found = sum(1 for image in with_lesion if any(les.hit[rule] for les in image.lesions))
    dice = [image.union_dice for image in with_lesion]
    false_positives = sum(
        1 for image in records.images for d in image.detections if d.truth[rule] is None
    )
    return {
        "patients": counts["patients"],
        "images": counts["images"],
        "images_with_lesion": counts["images_with_lesion"],
        "lesions": counts["lesions"],
        "failures": len(records.failures),
        "rule": rule,
        "per_image_sensitivity": found / len(with_lesion) if with_lesion else None,
        "images_found": found,
        "mean_dice_per_image": float(np.mean(dice)) if dice else None,
        "false_positives_per_image": (
            false_positives / len(records.images) if records.images else None
        ),
    }

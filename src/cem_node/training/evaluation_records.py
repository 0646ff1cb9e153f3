"""The records of an evaluation: what :mod:`cem_node.training.evaluation` scores.

The inputs of the scoring (with full-size masks: :class:`Detection`,
:class:`TruthLesion`, :class:`ImageResult`) and the small records kept per image
(no masks: :class:`LesionRecord`, :class:`DetectionRecord`, :class:`ImageRecord`),
gathered in :class:`EvaluationRecords`. The definitions are in the documentation
of :mod:`cem_node.training.evaluation`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cem_node.contracts.params import DecisionThresholds
from cem_node.training.metrics import HIT_RULES

__all__ = [
    "DEFAULT_RULES",
    "PRIMARY_RULE",
    "Detection",
    "DetectionRecord",
    "EvaluationRecords",
    "ImageRecord",
    "ImageResult",
    "LesionRecord",
    "TruthLesion",
]

PRIMARY_RULE = "iou>=0.1"
DEFAULT_RULES: tuple[str, ...] = tuple(HIT_RULES)


# --- inputs of the scoring (with masks) ------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Detection:
    """One detected lesion of an image (a findings ``Lesion``, its mask decoded)."""

    lesion_id: str
    mask: np.ndarray
    dl_probability: float
    radiomics_probability: float | None
    fused_probability: float
    fused_source: str
    dl_label: str
    radiomics_label: str | None
    fused_label: str
    radiomics_error: str | None = None


@dataclass(frozen=True, eq=False)
class TruthLesion:
    """One ground-truth lesion, with the radiomics probability of its manual mask."""

    lesion_id: str
    mask: np.ndarray
    label: str
    radiomics_probability: float | None = None
    radiomics_error: str | None = None


@dataclass(frozen=True, eq=False)
class ImageResult:
    """The ground truth and the detections of one image pair (full-size masks)."""

    key: str
    patient_id: str
    study_id: str
    laterality: str
    view: str
    shape: tuple[int, int]
    truths: tuple[TruthLesion, ...]
    detections: tuple[Detection, ...]


# --- records (no masks) ----------------------------------------------------------------------


@dataclass
class LesionRecord:
    """One ground-truth lesion: identification per hit rule and manual-mask classification."""

    lesion_id: str
    label: str
    area_px: int
    hit: dict[str, bool]
    iou: dict[str, float]
    dice: dict[str, float]
    detection: dict[str, str | None]
    detection_label_correct: dict[str, bool]
    radiomics_probability: float | None
    radiomics_error: str | None
    dl_probability: float | None
    fused_probability: float | None
    fused_source: str | None
    dl_label: str | None
    radiomics_label: str | None
    fused_label: str | None


@dataclass
class DetectionRecord:
    """One detection: the findings' probabilities and its ground-truth match per hit rule."""

    lesion_id: str
    area_px: int
    dl_probability: float
    radiomics_probability: float | None
    radiomics_error: str | None
    fused_probability: float
    fused_source: str
    dl_label: str
    radiomics_label: str | None
    fused_label: str
    truth: dict[str, str | None]
    truth_label: dict[str, str | None]


@dataclass
class ImageRecord:
    """One image pair: its lesions, detections and the pixel counts of the mask unions."""

    key: str
    patient_id: str
    study_id: str
    laterality: str
    view: str
    lesions: list[LesionRecord]
    detections: list[DetectionRecord]
    truth_px: int
    predicted_px: int
    overlap_px: int

    @property
    def has_lesion(self) -> bool:
        return bool(self.lesions)

    @property
    def union_dice(self) -> float | None:
        """Dice of the union of the predicted masks vs the union of the ground-truth masks;
        None for an image without a ground-truth lesion."""
        if not self.lesions:
            return None
        return 2.0 * self.overlap_px / (self.truth_px + self.predicted_px)


@dataclass
class EvaluationRecords:
    """Everything measured on the evaluated images, and what could not be evaluated."""

    images: list[ImageRecord]
    thresholds: DecisionThresholds
    rules: tuple[str, ...] = DEFAULT_RULES
    classification_rule: str = PRIMARY_RULE
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def patients(self) -> list[str]:
        return sorted({image.patient_id for image in self.images})

    def by_patient(self) -> dict[str, list[ImageRecord]]:
        out: dict[str, list[ImageRecord]] = defaultdict(list)
        for image in self.images:
            out[image.patient_id].append(image)
        return dict(sorted(out.items()))

    def counts(self) -> dict[str, int]:
        """Patients, studies, images, lesions (by label) and detections."""
        lesions = [lesion for image in self.images for lesion in image.lesions]
        return {
            "patients": len(self.patients),
            "patients_with_lesion": sum(
                1 for images in self.by_patient().values() if any(i.lesions for i in images)
            ),
            "studies": len({(i.patient_id, i.study_id) for i in self.images}),
            "images": len(self.images),
            "images_with_lesion": sum(1 for i in self.images if i.lesions),
            "images_without_lesion": sum(1 for i in self.images if not i.lesions),
            "lesions": len(lesions),
            "benign_lesions": sum(1 for lesion in lesions if lesion.label == "benign"),
            "malignant_lesions": sum(1 for lesion in lesions if lesion.label == "malignant"),
            "detections": sum(len(i.detections) for i in self.images),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every record (the report writes it as ``cases.json``)."""
        return {
            "thresholds": self.thresholds.model_dump(),
            "rules": list(self.rules),
            "classification_rule": self.classification_rule,
            "failures": list(self.failures),
            "notes": list(self.notes),
            "images": [{**asdict(image), "union_dice": image.union_dice} for image in self.images],
        }

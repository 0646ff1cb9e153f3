"""The cases of the paper's Table 3 (lesion classification) from evaluation records.

:func:`classification_cases` turns the records of
:mod:`cem_node.training.evaluation` into the cases of one Table 3 block
(:class:`CaseTable`, a :class:`ModelCases` per model); the definitions are in
the documentation of :mod:`cem_node.training.evaluation`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cem_node.contracts.params import DecisionThresholds
from cem_node.pipeline import fusion
from cem_node.training.evaluation_records import (
    DetectionRecord,
    EvaluationRecords,
    ImageRecord,
    LesionRecord,
)

__all__ = [
    "CLASSIFICATION_MODES",
    "MODELS",
    "CaseTable",
    "ModelCases",
    "classification_cases",
]

MODELS: tuple[str, ...] = ("radiomics", "dl", "fused", "agreed")
Mode = Literal["manual", "dl", "dl_all"]
Level = Literal["lesion", "patient"]
CLASSIFICATION_MODES: tuple[Mode, ...] = ("manual", "dl", "dl_all")


@dataclass(frozen=True)
class ModelCases:
    """The cases of one model (row) of a Table 3 block: truth, score and label per case.

    ``excluded`` counts, per reason, the cases of the block that have no value
    for this model.
    """

    model: str
    ids: tuple[str, ...]
    y_true: np.ndarray
    scores: np.ndarray
    y_pred: np.ndarray
    threshold: str
    excluded: dict[str, int]
    #: The patient of each case (the unit a by-patient bootstrap resamples).
    patients: tuple[str, ...] = ()

    @property
    def n(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class CaseTable:
    """The cases of one Table 3 block (mask mode x level).

    Attributes
    ----------
    unit
        What a case is (``lesion``, ``detection``, ``patient``).
    negative
        What a negative case is, in words (for the reasons in the report).
    y_true
        Truth of every case of the block (1 malignant).
    agree
        For the cases with both a DL and a radiomics label: whether they agree.
    patients, agree_patients
        The patient of each case, and of each ``agree`` entry.
    """

    mode: str
    level: str
    unit: str
    negative: str
    positive: str
    ids: tuple[str, ...]
    y_true: np.ndarray
    models: dict[str, ModelCases]
    agree: np.ndarray
    notes: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()
    agree_patients: tuple[str, ...] = ()


@dataclass
class _Case:
    case_id: str
    truth: int
    radiomics: float | None
    radiomics_label: str | None
    dl: float | None
    dl_label: str | None
    fused: float | None
    fused_label: str | None
    fused_source: str | None = None
    patient: str = ""


def _model_cases(cases: Sequence[_Case], thresholds: DecisionThresholds, level: str):
    rows: dict[str, list[tuple[str, int, float, int, str]]] = {m: [] for m in MODELS}
    excluded: dict[str, dict[str, int]] = {m: defaultdict(int) for m in MODELS}
    agree, agree_patients = [], []
    for case in cases:
        values = {
            "radiomics": (case.radiomics, case.radiomics_label),
            "dl": (case.dl, case.dl_label),
            "fused": (case.fused, case.fused_label),
        }
        for model, (score, label) in values.items():
            if score is None or label is None:
                excluded[model][f"no {_MODEL_WORDS[model]} probability"] += 1
            else:
                rows[model].append(
                    (
                        case.case_id,
                        case.truth,
                        float(score),
                        int(label == "malignant"),
                        case.patient,
                    )
                )
        if case.radiomics_label is None or case.dl_label is None:
            excluded["agreed"]["no DL or no radiomics label"] += 1
        else:
            agreed = case.radiomics_label == case.dl_label
            agree.append(agreed)
            agree_patients.append(case.patient)
            if not agreed:
                excluded["agreed"]["DL and radiomics labels disagree"] += 1
            elif case.fused is None or case.fused_label is None:
                excluded["agreed"]["no DL + radiomics probability"] += 1
            else:
                rows["agreed"].append(
                    (
                        case.case_id,
                        case.truth,
                        float(case.fused),
                        int(case.fused_label == "malignant"),
                        case.patient,
                    )
                )
    lesion_thresholds = {
        "radiomics": f"radiomics >= {thresholds.radiomics:g}",
        "dl": f"DL >= {thresholds.dl:g}",
        "fused": f"fused >= {thresholds.fused:g} (DL >= {thresholds.dl:g} when radiomics failed)",
        "agreed": "as DL + radiomics, on the cases whose DL and radiomics labels agree",
    }
    patient_thresholds = {
        "radiomics": f"max radiomics >= {thresholds.radiomics:g} (the lesion threshold)",
        "dl": f"max DL >= {thresholds.dl:g} (the lesion threshold)",
        "fused": f"max fused >= {thresholds.patient:g} (the patient threshold)",
        "agreed": "as DL + radiomics, on the patients whose DL and radiomics labels agree",
    }
    texts = lesion_thresholds if level == "lesion" else patient_thresholds
    out = {}
    for model in MODELS:
        data = rows[model]
        out[model] = ModelCases(
            model=model,
            ids=tuple(r[0] for r in data),
            y_true=np.array([r[1] for r in data], dtype=int),
            scores=np.array([r[2] for r in data], dtype=float),
            y_pred=np.array([r[3] for r in data], dtype=int),
            threshold=texts[model],
            excluded=dict(excluded[model]),
            patients=tuple(r[4] for r in data),
        )
    return out, np.array(agree, dtype=bool), tuple(agree_patients)


_MODEL_WORDS = {"radiomics": "radiomics", "dl": "DL", "fused": "DL + radiomics"}


def _label(p: float, threshold: float) -> str:
    return fusion.label_for(p, threshold)


def _patient_case(
    patient: str, truth: int, members: Sequence[_Case], thresholds: DecisionThresholds
) -> _Case:
    """Max over the patient's cases, per model; labels as documented in the module."""

    def top(values: Iterable[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return max(present) if present else None

    rad = top(c.radiomics for c in members)
    dl = top(c.dl for c in members)
    fused = top(c.fused for c in members)
    return _Case(
        case_id=patient,
        patient=patient,
        truth=truth,
        radiomics=rad,
        radiomics_label=None if rad is None else _label(rad, thresholds.radiomics),
        dl=dl,
        dl_label=None if dl is None else _label(dl, thresholds.dl),
        fused=fused,
        fused_label=None if fused is None else _label(fused, thresholds.patient),
    )


def classification_cases(records: EvaluationRecords, mode: Mode, level: Level) -> CaseTable:
    """The cases of one Table 3 block; see the module documentation for the definitions."""
    if mode not in CLASSIFICATION_MODES:
        raise ValueError(f"mode must be one of {CLASSIFICATION_MODES}, got {mode!r}")
    if level not in ("lesion", "patient"):
        raise ValueError(f"level must be 'lesion' or 'patient', got {level!r}")
    if mode == "dl_all" and level == "patient":
        raise ValueError("per patient, 'dl_all' is 'dl' (every detection counts)")
    thresholds = records.thresholds
    notes: list[str] = []
    if level == "lesion":
        cases, (unit, negative, positive) = _lesion_level_cases(records, mode, notes)
    else:
        cases, (unit, negative, positive) = _patient_level_cases(records, mode, notes)
    models_cases, agree, agree_patients = _model_cases(cases, thresholds, level)
    return CaseTable(
        mode=mode,
        level=level,
        unit=unit,
        negative=negative,
        positive=positive,
        ids=tuple(c.case_id for c in cases),
        y_true=np.array([c.truth for c in cases], dtype=int),
        models=models_cases,
        agree=agree,
        notes=tuple(notes),
        patients=tuple(c.patient for c in cases),
        agree_patients=agree_patients,
    )


def _lesion_case(image: ImageRecord, lesion: LesionRecord) -> _Case:
    return _Case(
        case_id=f"{image.key}#{lesion.lesion_id}",
        patient=image.patient_id,
        truth=int(lesion.label == "malignant"),
        radiomics=lesion.radiomics_probability,
        radiomics_label=lesion.radiomics_label,
        dl=lesion.dl_probability,
        dl_label=lesion.dl_label,
        fused=lesion.fused_probability,
        fused_label=lesion.fused_label,
        fused_source=lesion.fused_source,
    )


def _detection_case(image: ImageRecord, det: DetectionRecord, rule: str) -> _Case:
    return _Case(
        case_id=f"{image.key}#{det.lesion_id}",
        patient=image.patient_id,
        truth=int(det.truth_label[rule] == "malignant"),
        radiomics=det.radiomics_probability,
        radiomics_label=det.radiomics_label,
        dl=det.dl_probability,
        dl_label=det.dl_label,
        fused=det.fused_probability,
        fused_label=det.fused_label,
        fused_source=det.fused_source,
    )


def _lesion_level_cases(
    records: EvaluationRecords, mode: Mode, notes: list[str]
) -> tuple[list[_Case], tuple[str, str, str]]:
    """The per-lesion cases of ``mode`` and (unit, negative, positive); appends to ``notes``."""
    rule = records.classification_rule
    if mode == "manual":
        cases = [_lesion_case(i, les) for i in records.images for les in i.lesions]
        words = ("lesion", "benign lesion", "malignant lesion")
        missed = sum(1 for c in cases if c.dl is None)
        if missed:
            notes.append(
                f"{missed} of {len(cases)} lesions have no detection matching them "
                f"({rule}): no DL probability, so no DL, DL + radiomics or agreed value"
            )
    elif mode == "dl":
        cases = [
            _detection_case(i, d, rule)
            for i in records.images
            for d in i.detections
            if d.truth[rule] is not None
        ]
        words = (
            "matched detection",
            "detection of a benign lesion",
            "detection of a malignant lesion",
        )
        unmatched = sum(1 for i in records.images for d in i.detections if d.truth[rule] is None)
        notes.append(
            f"cases: the detections that match a ground-truth lesion ({rule}); "
            f"{unmatched} false-positive detections are not cases here (see 'DL masks, "
            "every detection')"
        )
    else:
        cases = [_detection_case(i, d, rule) for i in records.images for d in i.detections]
        words = (
            "detection",
            "detection that is not of a malignant lesion",
            "detection of a malignant lesion",
        )
        notes.append(
            "cases: every detection; truth malignant when it matches a malignant lesion "
            f"({rule}), else benign (a benign lesion or a false positive)"
        )
    dl_only = sum(1 for c in cases if c.fused_source == "dl_only")
    if dl_only:
        notes.append(
            f"{dl_only} cases have no radiomics (extraction failed): their DL + radiomics "
            "value is the DL probability (the node's rule)"
        )
    return cases, words


def _patient_level_cases(
    records: EvaluationRecords, mode: Mode, notes: list[str]
) -> tuple[list[_Case], tuple[str, str, str]]:
    """The per-patient cases of ``mode`` and (unit, negative, positive); appends to ``notes``."""
    rule = records.classification_rule
    words = (
        "patient",
        "patient without a malignant lesion",
        "patient with a malignant lesion",
    )
    cases = []
    for patient, images in records.by_patient().items():
        lesions = [les for image in images for les in image.lesions]
        truth = int(any(les.label == "malignant" for les in lesions))
        if mode == "manual":
            if not lesions:
                continue
            members = [_lesion_case(i, les) for i in images for les in i.lesions]
        else:
            members = [_detection_case(i, d, rule) for i in images for d in i.detections]
            if not members:
                # no detection: the patient scores 0 and every model calls it benign
                members = [
                    _Case(
                        case_id=patient,
                        patient=patient,
                        truth=truth,
                        radiomics=0.0,
                        radiomics_label="benign",
                        dl=0.0,
                        dl_label="benign",
                        fused=0.0,
                        fused_label="benign",
                    )
                ]
        cases.append(_patient_case(patient, truth, members, records.thresholds))
    if mode == "manual":
        left_out = len(records.patients) - len(cases)
        notes.append(
            "cases: the patients with at least one ground-truth lesion (manual masks exist "
            f"only for lesions); {left_out} patients without lesions are not cases here"
        )
    else:
        notes.append(
            "cases: every patient; score: the maximum over all the patient's detections "
            "(false positives included); a patient without detections scores 0"
        )
    return cases, words

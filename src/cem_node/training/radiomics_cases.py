"""The cases of :func:`~cem_node.training.radiomics_training.train_radiomics`: the
training pairs detected study by study as the analysis does, the detections
matched to the ground-truth lesions, and the radiomics rows they ask for
(steps 1-2 of :mod:`cem_node.training.radiomics_training`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cem_node.contracts.params import PostprocessParams, PreprocessParams
from cem_node.pipeline import fusion
from cem_node.pipeline.analyse import source_masks
from cem_node.training.radiomics_features import (
    MaskMode,
    _FeatureQueue,
    _mask_hash,
    _pixels_hash,
    _Row,
)

HIT_RULE = "iou>=0.1"
"""A detection matches a ground-truth lesion when their mask IoU is at least 0.1."""


# --- detections as the analysis sees them -------------------------------------------------------


@dataclass(frozen=True, eq=False)
class MappedDetection:
    """One detection on the source image, as :func:`~cem_node.pipeline.analyse.analyse_study`
    keeps it.

    Attributes
    ----------
    mask
        bool mask of the source image's shape (breast only, one component,
        disjoint from the higher-scored detections).
    score, label
        The detector's score and class.
    dl_probability
        :func:`~cem_node.pipeline.fusion.dl_probability` of its class scores.
    """

    mask: np.ndarray
    score: float
    label: str
    dl_probability: float


def map_detections(
    prepared: Any, found: Sequence[Any], post: PostprocessParams
) -> list[MappedDetection]:
    """The detections of one preprocessed pair mapped to the source image, as the analysis does.

    :func:`cem_node.pipeline.analyse.source_masks`, the analysis' own mapping;
    detections left with an empty mask are dropped.

    Parameters
    ----------
    prepared
        The :class:`~cem_node.pipeline.preprocess.PreprocessedPair`.
    found
        Its :class:`~cem_node.pipeline.detector.Detection` list (highest score first).
    post
        The post-processing parameters.
    """
    out = []
    for det, mask in zip(found, source_masks(prepared, found, post), strict=True):
        if not mask.any():
            continue
        out.append(
            MappedDetection(
                mask=mask,
                score=float(det.score),
                label=str(det.label),
                dl_probability=fusion.dl_probability(det.p_benign, det.p_malignant),
            )
        )
    return out


# --- ages --------------------------------------------------------------------------------------


def _synthetic_age(sample: Any, memo: dict[str, float | None]) -> float | None:
    """The age in the synthetic study's ground truth (``source`` is ``<study dir> <LAT><VIEW>``)."""
    if not str(sample.key).startswith("synthetic:"):
        return None
    folder = str(sample.source).rsplit(" ", 1)[0]
    if folder not in memo:
        age = None
        try:
            truth = json.loads((Path(folder) / "ground_truth.json").read_text(encoding="utf-8"))
            value = truth["patient"]["age_years"]
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                age = float(value)
        except (OSError, ValueError, KeyError, TypeError):
            age = None
        memo[folder] = age
    return memo[folder]


def _sample_age(
    sample: Any, ages: Mapping[str, float] | None, memo: dict[str, float | None]
) -> float | None:
    if ages is not None and sample.patient_id in ages:
        return float(ages[sample.patient_id])
    value = getattr(sample, "age_years", None)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return _synthetic_age(sample, memo)


# --- the cases ---------------------------------------------------------------------------------


def _group_by_study(samples: Iterable[Any]) -> list[list[Any]]:
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for sample in samples:
        groups[(sample.patient_id, sample.study_id)].append(sample)
    return [
        sorted(groups[key], key=lambda s: (s.laterality, s.view, s.key)) for key in sorted(groups)
    ]


@dataclass
class _Cases:
    """What the detection stage gathered besides the rows (those are in the queue).

    ``breasts`` / ``studies`` map (patient, study[, laterality]) to
    ``{"malignant": bool, "scores": [detection row index, ...]}``.
    """

    sample_failures: list[dict[str, str]] = field(default_factory=list)
    sample_ages: dict[str, float | None] = field(default_factory=dict)
    age_memo: dict[str, float | None] = field(default_factory=dict)
    lesion_counts: dict[str, int] = field(default_factory=lambda: {"benign": 0, "malignant": 0})
    breasts: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    studies: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    det_counts: dict[str, int] = field(
        default_factory=lambda: {
            "detections": 0,
            "matched": 0,
            "false_positives": 0,
            "lesions_missed": 0,
        }
    )
    used_samples: int = 0


@dataclass
class _Pair:
    """One loaded pair with its detections matched to its lesions."""

    data: Any  # the sample's loaded data
    gt: list[Any]
    detections: list[MappedDetection]
    match: Any  # metrics.match_detections
    common: dict[str, str]  # the _Row fields every row of the pair shares
    spacing: Any
    breast: dict[str, Any]
    study: dict[str, Any]


def gather_cases(
    samples: Sequence[Any],
    queue: _FeatureQueue,
    *,
    masks: MaskMode,
    preprocess: PreprocessParams,
    post: PostprocessParams,
    ages: Mapping[str, float] | None,
    detect_study: Callable[[Sequence[Any], Sequence[Any]], list[list[Any]]],
    progress: Callable[[str, int, int], None] | None,
) -> _Cases:
    """Detect and match study by study; every mask whose radiomics is needed goes to ``queue``.

    ``detect_study(samples, prepared_pairs)`` returns per pair its detection
    list. The queue extracts a chunk whenever one is full.
    """
    cases = _Cases()
    groups = _group_by_study(samples)
    for done, group in enumerate(groups):
        if progress is not None:
            progress("detecting", done, len(groups))
        queue.extract_if_full()
        kept, loaded, prepared = _prepare_study(group, preprocess, cases.sample_failures)
        if not kept:
            continue
        found_all = detect_study(kept, prepared)
        for sample, data, prep, found in zip(kept, loaded, prepared, found_all, strict=True):
            _add_pair(cases, queue, sample, data, prep, found, masks=masks, post=post, ages=ages)
        del loaded, prepared
    if progress is not None:
        progress("detecting", len(groups), len(groups))
    return cases


def _prepare_study(
    group: Sequence[Any], preprocess: PreprocessParams, failures: list[dict[str, str]]
) -> tuple[list[Any], list[Any], list[Any]]:
    """The samples of one study that load and preprocess, their data and prepared pairs."""
    from cem_node.pipeline.preprocess import PreprocessError, preprocess_pair

    loaded, prepared, kept = [], [], []
    for sample in group:
        try:
            data = sample.load()
            prep = preprocess_pair(data.low_energy, data.recombined, preprocess, sample.laterality)
        except (PreprocessError, ValueError, OSError) as exc:
            failures.append({"sample": sample.key, "error": str(exc)})
            continue
        loaded.append(data)
        prepared.append(prep)
        kept.append(sample)
    return kept, loaded, prepared


def _add_pair(
    cases: _Cases,
    queue: _FeatureQueue,
    sample: Any,
    data: Any,
    prep: Any,
    found: Sequence[Any],
    *,
    masks: MaskMode,
    post: PostprocessParams,
    ages: Mapping[str, float] | None,
) -> None:
    """Match one pair's detections to its lesions and queue their rows."""
    from cem_node.training.metrics import match_detections

    cases.used_samples += 1
    cases.sample_ages[sample.key] = _sample_age(sample, ages, cases.age_memo)
    detections = map_detections(prep, found, post)
    gt = list(data.lesions)
    pair = _Pair(
        data=data,
        gt=gt,
        detections=detections,
        match=match_detections([d.mask for d in detections], [g.mask for g in gt], HIT_RULE),
        common={
            "sample_key": sample.key,
            "patient_id": sample.patient_id,
            "study_id": sample.study_id,
            "laterality": sample.laterality,
            "view": sample.view,
            "pixels_sha": _pixels_hash(data.low_energy, data.recombined),
        },
        spacing=sample.pixel_spacing_mm,
        breast=cases.breasts.setdefault(
            (sample.patient_id, sample.study_id, sample.laterality),
            {"malignant": False, "scores": []},
        ),
        study=cases.studies.setdefault(
            (sample.patient_id, sample.study_id), {"malignant": False, "scores": []}
        ),
    )
    gt_rows = _add_lesion_rows(cases, queue, pair, masks)
    _add_detection_rows(cases, queue, pair, masks, gt_rows)


def _add_lesion_rows(
    cases: _Cases, queue: _FeatureQueue, pair: _Pair, masks: MaskMode
) -> dict[int, int]:
    """Count the pair's lesions; in manual mode queue their training rows (lesion -> row)."""
    gt_rows: dict[int, int] = {}
    match, data = pair.match, pair.data
    for j, lesion in enumerate(pair.gt):
        cases.lesion_counts[lesion.label] = cases.lesion_counts.get(lesion.label, 0) + 1
        if lesion.label == "malignant":
            pair.breast["malignant"] = pair.study["malignant"] = True
        if match.gt_to_pred[j] is None:
            cases.det_counts["lesions_missed"] += 1
        if masks != "manual":
            continue
        matched = match.gt_to_pred[j]
        row = _Row(
            **pair.common,
            lesion_id=lesion.lesion_id or f"lesion-{j + 1}",
            label=lesion.label,
            mask_mode="manual",
            mask_sha=_mask_hash(lesion.mask),
            train=True,
            gt_index=j,
            dl_probability=None if matched is None else pair.detections[matched].dl_probability,
            iou=None if matched is None else float(match.iou[matched, j]),
        )
        gt_rows[j] = len(queue.rows)
        queue.want(row, data.low_energy, data.recombined, lesion.mask, pair.spacing)
    return gt_rows


def _add_detection_rows(
    cases: _Cases, queue: _FeatureQueue, pair: _Pair, masks: MaskMode, gt_rows: dict[int, int]
) -> None:
    """Queue a row for every detection of the pair (matched or not) on its own mask."""
    match, data, gt = pair.match, pair.data, pair.gt
    for k, det in enumerate(pair.detections):
        j = match.pred_to_gt[k]
        cases.det_counts["detections"] += 1
        cases.det_counts["matched" if j is not None else "false_positives"] += 1
        row = _Row(
            **pair.common,
            lesion_id=f"detection-{k + 1}"
            + (f" ({gt[j].lesion_id or f'lesion-{j + 1}'})" if j is not None else ""),
            label=None if j is None else gt[j].label,
            mask_mode="detector",
            mask_sha=_mask_hash(det.mask),
            train=masks == "detector" and j is not None,
            gt_index=j,
            dl_probability=det.dl_probability,
            score=det.score,
            iou=None if j is None else float(match.iou[k, j]),
            link=gt_rows.get(j) if j is not None else None,
        )
        pair.breast["scores"].append(len(queue.rows))
        pair.study["scores"].append(len(queue.rows))
        queue.want(row, data.low_energy, data.recombined, det.mask, pair.spacing)

"""Run a model bundle over dataset samples and collect what the evaluation report measures.

:func:`evaluate_samples` analyses the samples study by study and keeps, per
image, only small records (no masks): :class:`ImageRecord` with one
:class:`LesionRecord` per ground-truth lesion and one :class:`DetectionRecord`
per detection. :func:`classification_cases` turns the records into the cases
of one Table 3 block (:class:`CaseTable`). :mod:`cem_node.training.report`
computes the measures and writes the report. For cross-validation,
:func:`fold_models` puts a fold's detector into the loaded bundle,
:func:`pool_records` joins the folds' out-of-fold records and
:func:`fold_summary` gives a fold's row.

This module runs and scores; the record classes live in
:mod:`~cem_node.training.evaluation_records`, the Table 3 cases in
:mod:`~cem_node.training.evaluation_cases` and the folds in
:mod:`~cem_node.training.evaluation_folds`. All are importable from here.

How the bundle is run
---------------------
The samples of one study (same patient and study id: up to four LE/RC pairs,
L/R x CC/MLO) go through ONE :func:`~cem_node.pipeline.analyse.analyse_study`
call, exactly as the node analyses a study: same preprocessing, detector
post-processing, radiomics on the DL masks, fusion and decisions, with the
bundle's own settings (``postprocess`` / ``radiomics_settings`` only when the
caller overrides them, and the report then says so). The age of the patient
is unknown in the datasets (passed as missing to the radiomics model). The
decision thresholds are the bundle's (``manifest.thresholds``, chosen on the
training predictions); nothing here is tuned on the evaluation data.

Definitions
-----------
Hit rules (:mod:`cem_node.training.metrics`): a detection hits a ground-truth
lesion when their mask IoU is >= 0.1 (``iou>=0.1``, the authors' follow-up) or
>= 0.5 (``iou>=0.5``, COCO); one-to-one greedy matching by IoU. Both are
recorded. Lesion classification with DL masks and the DL probability of a
manual mask use the *classification rule* (default ``iou>=0.1``).

Per ground-truth lesion (:class:`LesionRecord`)
    ``hit`` per rule; ``iou`` / ``dice`` with the matched detection (0 when
    missed; Dice = 2 IoU / (1 + IoU)); ``detection_label_correct``: hit by a
    detection whose DL label (DL probability at the DL threshold) is the
    lesion's label. Manual-mask classification: the radiomics probability is
    computed on the ground-truth mask (original LE and RC images, the bundle's
    radiomics settings and classifier); the DL probability is that of the
    detection matched to the lesion under the classification rule, or None
    when no detection matches (then DL, DL + radiomics and the agreed subset
    have no value for that lesion: it is excluded from those rows and
    counted); the fused probability and labels follow
    :func:`~cem_node.pipeline.fusion.decide_lesion` (mean of the two, or DL
    only when radiomics failed on the mask).

Per detection (:class:`DetectionRecord`)
    the findings' probabilities and labels (radiomics on the DL mask), and the
    matched lesion per rule (None: a false positive).

Per image (:class:`ImageRecord`)
    the pixel counts of the union of the ground-truth masks, of the union of
    the predicted masks and of their overlap (Dice of the unions).

Table 3 cases (:func:`classification_cases`), truth = malignant (1) or not (0)
    ``manual`` / lesion: every ground-truth lesion, its label;
    ``dl`` / lesion: every detection matched to a ground-truth lesion (the
    classification rule), with that lesion's label; unmatched detections
    (false positives) are not cases here (the report counts them apart);
    ``dl_all`` / lesion: every detection; truth 1 when it matches a malignant
    lesion, else 0 (a benign lesion or nothing): the paper's DL-mask counts
    (2463 negatives for 590 lesions) suggest this design;
    ``manual`` / patient: every patient with at least one ground-truth
    lesion; truth: any malignant lesion; score: the maximum over the
    patient's lesions;
    ``dl`` / patient: every patient (also those without lesions); truth: any
    malignant lesion; score: the maximum over ALL the patient's detections
    (false positives included, as the node reports a patient); a patient
    without detections scores 0 and is labelled benign by every model.
    Per-patient labels: DL + radiomics uses the bundle's patient threshold
    (the node's rule, :func:`~cem_node.pipeline.fusion.patient_summary`);
    radiomics and DL use their lesion thresholds on the maximum (a patient is
    malignant when any lesion is called malignant; the bundle has no
    per-patient DL or radiomics threshold).
    Rows: ``radiomics``, ``dl``, ``fused`` (DL + radiomics) and ``agreed``:
    the cases whose DL and radiomics labels agree, scored and labelled as
    ``fused``.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cem_node.contracts.params import DecisionThresholds, PostprocessParams, RadiomicsSettings
from cem_node.pipeline import fusion
from cem_node.training.evaluation_cases import (
    CLASSIFICATION_MODES,
    MODELS,
    CaseTable,
    ModelCases,
    classification_cases,
)
from cem_node.training.evaluation_folds import fold_models, fold_summary, pool_records
from cem_node.training.evaluation_records import (
    DEFAULT_RULES,
    PRIMARY_RULE,
    Detection,
    DetectionRecord,
    EvaluationRecords,
    ImageRecord,
    ImageResult,
    LesionRecord,
    TruthLesion,
)
from cem_node.training.metrics import Match, iou_matrix, match_detections

if TYPE_CHECKING:
    from cem_node.contracts.findings import Findings
    from cem_node.pipeline.analyse import LoadedModels
    from cem_node.training.datasets import LoadedSample, Sample, TrainingDataset

__all__ = [
    "CLASSIFICATION_MODES",
    "DEFAULT_RULES",
    "MODELS",
    "PRIMARY_RULE",
    "CaseTable",
    "Detection",
    "DetectionRecord",
    "EvaluationRecords",
    "ImageRecord",
    "ImageResult",
    "LesionRecord",
    "ModelCases",
    "TruthLesion",
    "analyse_group",
    "classification_cases",
    "evaluate_samples",
    "fold_models",
    "fold_summary",
    "group_by_study",
    "pool_records",
    "score_image",
    "select_from_split_file",
    "select_samples",
]

log = logging.getLogger(__name__)

SPLITS = ("test", "val", "all")


# --- scoring one image ---------------------------------------------------------------------


def _dice_from_iou(iou: float) -> float:
    return 2.0 * iou / (1.0 + iou) if iou > 0 else 0.0


def score_image(
    result: ImageResult,
    thresholds: DecisionThresholds,
    rules: Sequence[str] = DEFAULT_RULES,
    classification_rule: str = PRIMARY_RULE,
) -> ImageRecord:
    """Match the detections of one image to its lesions under every rule; keep the numbers.

    See the module documentation for the definitions.
    """
    rules = tuple(rules)
    if classification_rule not in rules:
        rules = (*rules, classification_rule)
    pred_masks = [d.mask for d in result.detections]
    gt_masks = [t.mask for t in result.truths]
    for mask in (*pred_masks, *gt_masks):
        if mask.shape != tuple(result.shape):
            raise ValueError(
                f"{result.key}: a mask has shape {mask.shape}, the image {result.shape}"
            )
    matrix = iou_matrix(pred_masks, gt_masks)
    matches = {rule: match_detections(pred_masks, gt_masks, rule, iou=matrix) for rule in rules}
    lesions = [
        _lesion_record(result, j, matrix, matches, classification_rule, thresholds)
        for j in range(len(result.truths))
    ]
    detections = [_detection_record(result, i, matches) for i in range(len(result.detections))]

    truth_union = np.zeros(result.shape, dtype=bool)
    for mask in gt_masks:
        truth_union |= mask
    pred_union = np.zeros(result.shape, dtype=bool)
    for mask in pred_masks:
        pred_union |= mask
    return ImageRecord(
        key=result.key,
        patient_id=result.patient_id,
        study_id=result.study_id,
        laterality=result.laterality,
        view=result.view,
        lesions=lesions,
        detections=detections,
        truth_px=int(truth_union.sum()),
        predicted_px=int(pred_union.sum()),
        overlap_px=int(np.logical_and(truth_union, pred_union).sum()),
    )


def _lesion_record(
    result: ImageResult,
    j: int,
    matrix: np.ndarray,
    matches: dict[str, Match],
    classification_rule: str,
    thresholds: DecisionThresholds,
) -> LesionRecord:
    """Ground-truth lesion ``j``: its match per rule and its manual-mask classification."""
    truth = result.truths[j]
    hit, iou, dice, detection, correct = {}, {}, {}, {}, {}
    for rule, match in matches.items():
        i = match.gt_to_pred[j]
        hit[rule] = i is not None
        iou[rule] = float(matrix[i, j]) if i is not None else 0.0
        dice[rule] = _dice_from_iou(iou[rule])
        detection[rule] = result.detections[i].lesion_id if i is not None else None
        correct[rule] = i is not None and result.detections[i].dl_label == truth.label
    i = matches[classification_rule].gt_to_pred[j]
    dl = result.detections[i].dl_probability if i is not None else None
    decision = (
        fusion.decide_lesion(dl, truth.radiomics_probability, thresholds)
        if dl is not None
        else None
    )
    rad_label = (
        fusion.label_for(truth.radiomics_probability, thresholds.radiomics)
        if truth.radiomics_probability is not None
        else None
    )
    return LesionRecord(
        lesion_id=truth.lesion_id,
        label=truth.label,
        area_px=int(np.count_nonzero(truth.mask)),
        hit=hit,
        iou=iou,
        dice=dice,
        detection=detection,
        detection_label_correct=correct,
        radiomics_probability=truth.radiomics_probability,
        radiomics_error=truth.radiomics_error,
        dl_probability=dl,
        fused_probability=None if decision is None else decision.fused_probability,
        fused_source=None if decision is None else decision.fused_source,
        dl_label=None if decision is None else decision.dl_label,
        radiomics_label=rad_label,
        fused_label=None if decision is None else decision.fused_label,
    )


def _detection_record(result: ImageResult, i: int, matches: dict[str, Match]) -> DetectionRecord:
    """Detection ``i``: the findings' probabilities and its ground-truth match per rule."""
    det = result.detections[i]
    truth_id, truth_label = {}, {}
    for rule, match in matches.items():
        j = match.pred_to_gt[i]
        truth_id[rule] = result.truths[j].lesion_id if j is not None else None
        truth_label[rule] = result.truths[j].label if j is not None else None
    return DetectionRecord(
        lesion_id=det.lesion_id,
        area_px=int(np.count_nonzero(det.mask)),
        dl_probability=det.dl_probability,
        radiomics_probability=det.radiomics_probability,
        radiomics_error=det.radiomics_error,
        fused_probability=det.fused_probability,
        fused_source=det.fused_source,
        dl_label=det.dl_label,
        radiomics_label=det.radiomics_label,
        fused_label=det.fused_label,
        truth=truth_id,
        truth_label=truth_label,
    )


# --- running the bundle ----------------------------------------------------------------------


def select_samples(
    dataset: TrainingDataset,
    part: str = "test",
    seed: int = 0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> list[Sample]:
    """The samples of one part of the dataset's patient split, or all of them.

    ``part`` ``test`` / ``val``: that part of
    :func:`cem_node.training.datasets.split` with ``seed`` and ``fractions``
    (the training's split when it used the same SPEC, seed and fractions);
    ``all``: every sample (an external dataset).
    """
    from cem_node.training.datasets import split

    if part not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {part!r}")
    if part == "all":
        return list(dataset.samples)
    parts = split(dataset, fractions, seed)
    return list(getattr(parts, part))


def select_from_split_file(dataset: TrainingDataset, path: Path, part: str) -> list[Sample]:
    """The samples that a training's ``split.json`` (``cem-node train``) puts in ``part``.

    The file lists the sample keys per part (``{"test": {"samples": [...]}, ...}``);
    ``part`` ``all`` takes every sample the file names.

    Raises
    ------
    DatasetError
        When the file cannot be read, has no such part, or names samples the
        dataset does not hold (another dataset SPEC).
    """
    from cem_node.training.datasets import DatasetError

    if part not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {part!r}")
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read the split file {path}: {exc}") from None
    parts = ("train", "val", "test") if part == "all" else (part,)
    keys: list[str] = []
    for name in parts:
        entry = record.get(name) if isinstance(record, dict) else None
        if not isinstance(entry, dict) or not isinstance(entry.get("samples"), list):
            raise DatasetError(f"split file {path}: no '{name}' part with a 'samples' list")
        keys.extend(str(k) for k in entry["samples"])
    by_key = {s.key: s for s in dataset.samples}
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise DatasetError(
            f"split file {path} names {len(missing)} sample(s) that {dataset.name} does not "
            f"hold (e.g. {missing[0]}): use the training's dataset SPEC"
        )
    return [by_key[k] for k in keys]


def group_by_study(samples: Iterable[Sample]) -> list[list[Sample]]:
    """The samples grouped by (patient, study), in sorted order of patient and study."""
    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[(sample.patient_id, sample.study_id)].append(sample)
    return [
        sorted(groups[key], key=lambda s: (s.laterality, s.view, s.key)) for key in sorted(groups)
    ]


def _source_image(pixels: np.ndarray, uid: str, sample: Sample) -> Any:
    from cem_node.pipeline.pixels import SourceImage

    array = np.asarray(pixels, dtype=np.float32)
    return SourceImage(
        pixels=array,
        sop_instance_uid=uid,
        laterality=sample.laterality,
        view=sample.view,
        pixel_spacing_mm=sample.pixel_spacing_mm,
        bits_stored=16,
        photometric_interpretation="MONOCHROME2",
    )


def _manual_radiomics(
    models: LoadedModels,
    group: Sequence[Sample],
    loaded: Sequence[LoadedSample],
    settings: RadiomicsSettings,
    workers: int,
) -> list[list[tuple[float | None, str | None]]]:
    """Per sample, per ground-truth lesion: (radiomics probability, error)."""
    from cem_node.pipeline.radiomics import extract_many, make_job

    jobs, where = [], []
    for s_index, (sample, data) in enumerate(zip(group, loaded, strict=True)):
        for l_index, lesion in enumerate(data.lesions):
            jobs.append(
                make_job(
                    job_id=f"{s_index}:{l_index}",
                    low_energy=data.low_energy,
                    recombined=data.recombined,
                    mask=lesion.mask,
                    spacing_mm=sample.pixel_spacing_mm,
                    settings=settings,
                )
            )
            where.append((s_index, l_index))
    out: list[list[tuple[float | None, str | None]]] = [
        [(None, "not computed")] * len(data.lesions) for data in loaded
    ]
    if not jobs:
        return out
    results = extract_many(jobs, settings, workers=workers)
    ok = [k for k, r in enumerate(results) if r.features is not None]
    for k, r in enumerate(results):
        s_index, l_index = where[k]
        out[s_index][l_index] = (None, r.error or "radiomics unavailable")
    if ok:
        try:
            probs = models.classifier.predict_proba([results[k].features for k in ok], ages=None)
        except ValueError as exc:  # ClassifierError: a selected feature is missing, ...
            for k in ok:
                s_index, l_index = where[k]
                out[s_index][l_index] = (None, f"radiomics classifier failed: {exc}")
        else:
            for k, p in zip(ok, probs, strict=True):
                s_index, l_index = where[k]
                out[s_index][l_index] = (float(p), None)
    return out


def _detections(findings: Findings, rc_uid: str, shape: tuple[int, int]) -> tuple[Detection, ...]:
    return tuple(
        Detection(
            lesion_id=lesion.lesion_id,
            mask=lesion.mask.to_array(shape),
            dl_probability=lesion.dl_probability,
            radiomics_probability=lesion.radiomics_probability,
            fused_probability=lesion.fused_probability,
            fused_source=lesion.fused_source,
            dl_label=lesion.dl_label,
            radiomics_label=lesion.radiomics_label,
            fused_label=lesion.fused_label,
            radiomics_error=lesion.radiomics_error,
        )
        for lesion in findings.lesions
        if lesion.recombined_sop_instance_uid == rc_uid
    )


def analyse_group(
    models: LoadedModels,
    group: Sequence[Sample],
    postprocess: PostprocessParams | None = None,
    radiomics_settings: RadiomicsSettings | None = None,
    radiomics_workers: int = 1,
) -> tuple[list[ImageResult], list[str]]:
    """Analyse the samples of one study in one call; add manual-mask radiomics.

    Returns the image results and the findings' notes.
    """
    from cem_node.pipeline.analyse import PairInput, StudyContext, analyse_study

    if not group:
        return [], []
    loaded = [sample.load() for sample in group]
    settings = radiomics_settings or models.bundle.manifest.radiomics.settings()
    pairs, uids = [], []
    for sample, data in zip(group, loaded, strict=True):
        le_uid, rc_uid = f"{sample.key}/low_energy", f"{sample.key}/recombined"
        uids.append(rc_uid)
        pairs.append(
            PairInput(
                laterality=sample.laterality,
                view=sample.view,
                low_energy=_source_image(data.low_energy, le_uid, sample),
                recombined=_source_image(data.recombined, rc_uid, sample),
            )
        )
    first = group[0]
    findings = analyse_study(
        models,
        StudyContext(study_instance_uid=first.study_id, patient_id=first.patient_id),
        pairs,
        postprocess,
        settings,
        radiomics_workers=radiomics_workers,
    )
    manual = _manual_radiomics(models, group, loaded, settings, radiomics_workers)
    results = []
    for sample, data, rc_uid, rad in zip(group, loaded, uids, manual, strict=True):
        shape = tuple(int(v) for v in data.recombined.shape)
        truths = tuple(
            TruthLesion(
                lesion_id=lesion.lesion_id or f"lesion-{k + 1}",
                mask=np.asarray(lesion.mask, dtype=bool),
                label=lesion.label,
                radiomics_probability=p,
                radiomics_error=error,
            )
            for k, (lesion, (p, error)) in enumerate(zip(data.lesions, rad, strict=True))
        )
        results.append(
            ImageResult(
                key=sample.key,
                patient_id=sample.patient_id,
                study_id=sample.study_id,
                laterality=sample.laterality,
                view=sample.view,
                shape=shape,  # type: ignore[arg-type]
                truths=truths,
                detections=_detections(findings, rc_uid, shape),  # type: ignore[arg-type]
            )
        )
    return results, [f"{first.study_id}: {note}" for note in findings.notes]


def evaluate_samples(
    models: LoadedModels,
    samples: Sequence[Sample],
    postprocess: PostprocessParams | None = None,
    radiomics_settings: RadiomicsSettings | None = None,
    radiomics_workers: int = 1,
    rules: Sequence[str] = DEFAULT_RULES,
    classification_rule: str = PRIMARY_RULE,
    progress: Callable[[int, int, str], None] | None = None,
) -> EvaluationRecords:
    """Analyse the samples study by study with the loaded bundle and score every image.

    A study that fails (unreadable file, analysis error) is left out and
    listed in :attr:`EvaluationRecords.failures` with the reason.

    Parameters
    ----------
    progress
        Called as ``progress(done, total, description)`` after each study.
    """
    thresholds = models.bundle.manifest.thresholds
    groups = group_by_study(samples)
    images: list[ImageRecord] = []
    failures: list[str] = []
    notes: list[str] = []
    if getattr(models.classifier, "use_age", False):
        notes.append(
            "the radiomics model uses the patient's age; the dataset gives none, so it is "
            "passed as missing"
        )
    for done, group in enumerate(groups, start=1):
        first = group[0]
        name = f"patient {first.patient_id} study {first.study_id}"
        try:
            results, study_notes = analyse_group(
                models, group, postprocess, radiomics_settings, radiomics_workers
            )
            scored = [score_image(r, thresholds, rules, classification_rule) for r in results]
        except Exception as exc:  # one bad study must not end the evaluation
            log.warning("%s: evaluation failed: %s", name, exc)
            failures.append(f"{name} ({len(group)} image(s)): {type(exc).__name__}: {exc}")
        else:
            images.extend(scored)
            notes.extend(study_notes)
        if progress is not None:
            progress(done, len(groups), name)
    rules = tuple(rules)
    if classification_rule not in rules:
        rules = (*rules, classification_rule)
    return EvaluationRecords(
        images=images,
        thresholds=thresholds,
        rules=rules,
        classification_rule=classification_rule,
        failures=failures,
        notes=notes,
    )

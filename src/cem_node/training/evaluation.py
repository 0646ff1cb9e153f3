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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cem_node.contracts.params import DecisionThresholds, PostprocessParams, RadiomicsSettings
from cem_node.pipeline import fusion
from cem_node.training.metrics import HIT_RULES, iou_matrix, match_detections

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

PRIMARY_RULE = "iou>=0.1"
DEFAULT_RULES: tuple[str, ...] = tuple(HIT_RULES)
MODELS: tuple[str, ...] = ("radiomics", "dl", "fused", "agreed")
Mode = Literal["manual", "dl", "dl_all"]
Level = Literal["lesion", "patient"]
CLASSIFICATION_MODES: tuple[Mode, ...] = ("manual", "dl", "dl_all")
SPLITS = ("test", "val", "all")


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

    lesions = []
    for j, truth in enumerate(result.truths):
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
        lesions.append(
            LesionRecord(
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
        )

    detections = []
    for i, det in enumerate(result.detections):
        truth_id, truth_label = {}, {}
        for rule, match in matches.items():
            j = match.pred_to_gt[i]
            truth_id[rule] = result.truths[j].lesion_id if j is not None else None
            truth_label[rule] = result.truths[j].label if j is not None else None
        detections.append(
            DetectionRecord(
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
        )

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


# --- cross-validation folds ------------------------------------------------------------------


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


# --- Table 3 cases ---------------------------------------------------------------------------


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
    rule = records.classification_rule
    thresholds = records.thresholds
    notes: list[str] = []

    def lesion_case(image: ImageRecord, lesion: LesionRecord) -> _Case:
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

    def detection_case(image: ImageRecord, det: DetectionRecord) -> _Case:
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

    if level == "lesion":
        if mode == "manual":
            cases = [lesion_case(i, les) for i in records.images for les in i.lesions]
            unit, negative, positive = "lesion", "benign lesion", "malignant lesion"
            missed = sum(1 for c in cases if c.dl is None)
            if missed:
                notes.append(
                    f"{missed} of {len(cases)} lesions have no detection matching them "
                    f"({rule}): no DL probability, so no DL, DL + radiomics or agreed value"
                )
        elif mode == "dl":
            cases = [
                detection_case(i, d)
                for i in records.images
                for d in i.detections
                if d.truth[rule] is not None
            ]
            unit, negative, positive = (
                "matched detection",
                "detection of a benign lesion",
                "detection of a malignant lesion",
            )
            unmatched = sum(
                1 for i in records.images for d in i.detections if d.truth[rule] is None
            )
            notes.append(
                f"cases: the detections that match a ground-truth lesion ({rule}); "
                f"{unmatched} false-positive detections are not cases here (see 'DL masks, "
                "every detection')"
            )
        else:
            cases = [detection_case(i, d) for i in records.images for d in i.detections]
            unit, negative, positive = (
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
    else:
        unit, negative, positive = (
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
                members = [lesion_case(i, les) for i in images for les in i.lesions]
            else:
                members = [detection_case(i, d) for i in images for d in i.detections]
                if not members:
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
            cases.append(_patient_case(patient, truth, members, thresholds))
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

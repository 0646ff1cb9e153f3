"""Training the radiomics model of a bundle on a trained detector's view of the data.

:func:`train_radiomics` is what ``cem-node train radiomics`` runs. For every
training image pair it:

1. runs the detector exactly as the analysis does (:func:`map_detections`):
   the pairs of one study are preprocessed (:func:`~cem_node.pipeline.
   preprocess.preprocess_pair`) and detected in ONE call (the node batches a
   study's views), with the default :class:`~cem_node.contracts.params.
   PostprocessParams`; every mask is mapped back to the source image,
   restricted to the breast mask, reduced to its largest component, and the
   masks are made disjoint (the higher score keeps a contested pixel); a
   detection whose mask is then empty is dropped;
2. matches the detections to the ground-truth lesions, one to one and greedily
   by mask IoU >= 0.1 (:func:`~cem_node.training.metrics.match_detections`);
3. extracts the radiomics (the bundle's settings, default
   :class:`~cem_node.contracts.params.RadiomicsSettings`) of

   * ``masks="manual"``: every ground-truth lesion on its ground-truth mask:
     these train the classifier;
   * ``masks="detector"``: every detection matched to a lesion, on the
     detection's mask, with the lesion's label: these train the classifier;
   * in both modes, every detection (matched or not) on its own mask: the node
     scores every detection, so the breast and patient thresholds need them
     (unmatched detections, the false positives, never train the classifier).

   Failures are recorded (with the reason) and the row left out.
4. selects the features (:func:`~cem_node.training.radiomics_model.
   select_features`: z-score, variance, Spearman 0.85, RFE or RFECV) and fits
   the XGBoost classifier by grid search with stratified CV
   (:func:`~cem_node.training.radiomics_model.fit_radiomics_classifier`),
   optionally with the patient's age;
5. chooses the decision thresholds (Youden index, argmax TPR - FPR, on the
   TRAINING data; see "Thresholds") and writes the run folder.

The run folder (``out_dir``)
----------------------------
``radiomics_model.json`` / ``radiomics_features.json``
    the classifier (:meth:`RadiomicsClassifier.save`);
``radiomics_params.json``
    :func:`~cem_node.pipeline.radiomics.pyradiomics_params` of the settings;
``radiomics_settings.json``
    the :class:`RadiomicsSettings` (the bundle's ``[radiomics]``);
``thresholds.json``
    the :class:`DecisionThresholds` and, per threshold, how it was computed, on
    how many cases, or why it fell back to 0.5;
``summary.json``
    the selection record, the best parameters, CV AUC (mean, std), OOF AUC,
    counts, failures, the detector used (with the SHA-256 of its weights), the
    command line, datasets and seed;
``features.npz`` / ``features.json``
    the feature cache (below).

Feature cache
-------------
``features.npz`` holds one float matrix (``features``: rows x feature names,
NaN for a failed row), written with :func:`numpy.savez` and read with
``allow_pickle=False``; ``features.json`` names the columns and describes
every row: sample key, patient, lesion id, label, mask mode, the SHA-256 of
the mask and of the pixels, the settings hash, and the error of a failed
row. A row is reused when a later run asks for the same sample, mask mode,
mask, pixels and settings hash (the hash covers the settings, the
pyradiomics parameters and the pyradiomics version): a second run with the
same data and settings extracts nothing (:attr:`RadiomicsTrainingResult.
extracted` is 0). Rows cached with the same settings but not asked for this
time are kept in the cache.

Thresholds
----------
All are Youden thresholds (:func:`~cem_node.pipeline.fusion.youden_threshold`)
on the training set; one that cannot be computed (no case, or one class only)
is 0.5 and ``thresholds.json`` says why.

``radiomics``
    on OUT-OF-FOLD predictions: the chosen model (its best grid parameters and
    the selected features) is refitted on k - 1 folds and predicts the k-th
    (k = ``cv_folds``, 5 by default; stratified, seeded, grouped by patient
    when every fold can keep both classes, so the two views of one lesion do
    not sit on both sides). The in-sample predictions of boosted trees are
    nearly perfect, so their Youden threshold would say nothing about new
    lesions; it is recorded in ``summary.json`` but not used. The features were
    selected on all training rows, so the OOF predictions are still somewhat
    optimistic (as the paper's CV AUC).
``dl``
    on the DL probability (:func:`~cem_node.pipeline.fusion.dl_probability`)
    of the detection matched to each training lesion (lesions no detection
    matches have none and are left out).
``fused``
    on the mean of that DL probability and the lesion's OOF radiomics
    probability (lesions with both).
``breast`` / ``patient``
    on the maximum fused probability over ALL detections of a breast (all its
    views) / of a patient's study (the node's patient summary covers one
    study), each detection scored as the node scores it (mean of DL and
    radiomics on the detection's mask, DL alone when radiomics failed), truth:
    a malignant lesion is present. A detection's radiomics probability is
    out-of-fold when the detection's lesion is a training row (the fold model
    that did not see the lesion; the matched lesion's in ``manual`` mode),
    else from the final model (false positives were never training rows). A
    breast or study without detections scores 0 (the node calls it benign).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cem_node.contracts.params import (
    DecisionThresholds,
    DetectorConfig,
    PostprocessParams,
    PreprocessParams,
    RadiomicsSettings,
)
from cem_node.pipeline import fusion
from cem_node.pipeline.analyse import source_masks
from cem_node.training.run_files import (
    DETECTOR_CONFIG,
    DETECTOR_WEIGHTS,
    RADIOMICS_PARAMS,
    RADIOMICS_SETTINGS,
    SUMMARY,
    THRESHOLDS,
)

__all__ = [
    "CACHE_FEATURES",
    "CACHE_ROWS",
    "DETECTOR_CONFIG",
    "DETECTOR_WEIGHTS",
    "HIT_RULE",
    "RADIOMICS_PARAMS",
    "RADIOMICS_SETTINGS",
    "SUMMARY",
    "THRESHOLDS",
    "MappedDetection",
    "RadiomicsTrainingError",
    "RadiomicsTrainingResult",
    "ThresholdRecord",
    "map_detections",
    "read_detector_run",
    "read_split_file",
    "settings_hash",
    "train_radiomics",
]

log = logging.getLogger(__name__)

CACHE_FEATURES = "features.npz"
CACHE_ROWS = "features.json"
HIT_RULE = "iou>=0.1"
"""A detection matches a ground-truth lesion when their mask IoU is at least 0.1."""

CACHE_FORMAT = "cem-node/radiomics-feature-cache/v1"
_TRANSIENT = "radiomics worker failed"  # a dead worker: extracted again by the next run
THRESHOLDS_FORMAT = "cem-node/radiomics-thresholds/v1"
SUMMARY_FORMAT = "cem-node/radiomics-training/v1"

MaskMode = Literal["manual", "detector"]


class RadiomicsTrainingError(ValueError):
    """The radiomics model cannot be trained: missing file, too few lesions, bad input."""


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


# --- the detector run and the split ------------------------------------------------------------


def read_detector_run(detector_dir: Path) -> tuple[Path, DetectorConfig, PreprocessParams, dict]:
    """The weights path, architecture, preprocessing and record of a ``train detector`` folder.

    Raises
    ------
    RadiomicsTrainingError
        When the folder, ``detector.safetensors`` or ``detector_config.json`` is
        missing, or the config cannot be read (the message names the file).
    """
    folder = Path(detector_dir)
    if not folder.is_dir():
        raise RadiomicsTrainingError(
            f"detector folder not found: {folder} (the --out of `cem-node train detector`)"
        )
    weights = folder / DETECTOR_WEIGHTS
    config_path = folder / DETECTOR_CONFIG
    for path in (weights, config_path):
        if not path.is_file():
            raise RadiomicsTrainingError(
                f"{path}: missing: the detector folder must hold {DETECTOR_WEIGHTS} and "
                f"{DETECTOR_CONFIG} (written by `cem-node train detector`)"
            )
    try:
        record = json.loads(config_path.read_text(encoding="utf-8"))
        config = DetectorConfig.model_validate(record["detector"])
        preprocess = PreprocessParams.model_validate(record["preprocessing"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RadiomicsTrainingError(f"cannot read {config_path}: {exc}") from None
    return weights, config, preprocess, record


def detector_postprocess(record: Mapping[str, Any]) -> PostprocessParams:
    """The post-processing a detector run asks for: the defaults, with what its
    ``detector_config.json`` records under ``postprocessing`` (a chosen keep score).

    Raises
    ------
    RadiomicsTrainingError
        When the recorded values are not valid post-processing parameters.
    """
    recorded = record.get("postprocessing") or {}
    try:
        return PostprocessParams(**recorded)
    except (TypeError, ValueError) as exc:
        raise RadiomicsTrainingError(
            f"{DETECTOR_CONFIG}: invalid postprocessing {recorded!r}: {exc}"
        ) from None


def read_split_file(path: Path, part: str = "train") -> list[str]:
    """The sample keys that a ``split.json`` (``cem-node train detector``) puts in ``part``.

    Raises
    ------
    RadiomicsTrainingError
        When the file is missing or unreadable, or has no such part.
    """
    path = Path(path)
    if not path.is_file():
        raise RadiomicsTrainingError(f"split file not found: {path}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RadiomicsTrainingError(f"cannot read the split file {path}: {exc}") from None
    entry = record.get(part) if isinstance(record, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("samples"), list):
        raise RadiomicsTrainingError(f"split file {path}: no '{part}' part with a 'samples' list")
    return [str(k) for k in entry["samples"]]


# --- hashing ----------------------------------------------------------------------------------


def settings_hash(settings: RadiomicsSettings) -> str:
    """A short hash of everything the features depend on besides the pixels and the mask.

    The settings, their pyradiomics parameters and the pyradiomics version.
    """
    import radiomics

    from cem_node.pipeline.radiomics import pyradiomics_params

    document = {
        "settings": settings.model_dump(mode="json"),
        "params": pyradiomics_params(settings),
        "pyradiomics": str(getattr(radiomics, "__version__", "?")),
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _mask_hash(mask: np.ndarray) -> str:
    array = np.asarray(mask, dtype=bool)
    digest = hashlib.sha256(np.asarray(array.shape, dtype=np.int64).tobytes())
    digest.update(np.packbits(array, axis=None).tobytes())
    return digest.hexdigest()[:16]


def _pixels_hash(low_energy: np.ndarray, recombined: np.ndarray) -> str:
    digest = hashlib.sha256()
    for image in (low_energy, recombined):
        array = np.ascontiguousarray(image, dtype=np.float32)
        digest.update(np.asarray(array.shape, dtype=np.int64).tobytes())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    with Path(path).open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# --- rows and the feature cache ----------------------------------------------------------------


@dataclass
class _Row:
    """One mask whose radiomics is needed."""

    sample_key: str
    patient_id: str
    study_id: str
    laterality: str
    view: str
    lesion_id: str
    label: str | None  # benign / malignant; None for an unmatched detection
    mask_mode: MaskMode
    mask_sha: str
    pixels_sha: str
    train: bool  # trains the classifier
    gt_index: int | None = None  # the ground-truth lesion (manual row, matched detection)
    dl_probability: float | None = None  # detections (and manual rows with a match)
    score: float | None = None
    iou: float | None = None
    features: np.ndarray | None = None
    error: str | None = None
    cached: bool = False
    link: int | None = None  # detection row -> its training row (manual mode)

    def key(self, settings_id: str) -> str:
        return "|".join(
            (self.sample_key, self.mask_mode, self.mask_sha, self.pixels_sha, settings_id)
        )

    def describe(self, settings_id: str) -> dict[str, Any]:
        return {
            "sample": self.sample_key,
            "patient_id": self.patient_id,
            "study_id": self.study_id,
            "laterality": self.laterality,
            "view": self.view,
            "lesion_id": self.lesion_id,
            "label": self.label,
            "mask_mode": self.mask_mode,
            "mask_sha256": self.mask_sha,
            "pixels_sha256": self.pixels_sha,
            "settings_hash": settings_id,
            "error": self.error,
        }


@dataclass
class _Cache:
    names: list[str] | None
    rows: dict[str, tuple[dict[str, Any], np.ndarray]]  # key -> (description, features)
    note: str | None = None


def _load_cache(out_dir: Path, settings_id: str) -> _Cache:
    rows_path, matrix_path = out_dir / CACHE_ROWS, out_dir / CACHE_FEATURES
    if not rows_path.is_file() or not matrix_path.is_file():
        return _Cache(None, {})
    try:
        document = json.loads(rows_path.read_text(encoding="utf-8"))
        with np.load(matrix_path, allow_pickle=False) as data:
            matrix = np.asarray(data["features"], dtype=float)
        names = [str(n) for n in document["feature_names"]]
        described = list(document["rows"])
        if document.get("format") != CACHE_FORMAT:
            raise ValueError(f"format {document.get('format')!r} is not {CACHE_FORMAT!r}")
        if matrix.shape != (len(described), len(names)):
            raise ValueError(
                f"{CACHE_FEATURES} has shape {matrix.shape}, {CACHE_ROWS} describes "
                f"{len(described)} rows x {len(names)} features"
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        note = f"feature cache in {out_dir} ignored: {exc}"
        log.warning("%s", note)
        return _Cache(None, {}, note)
    rows = {}
    for description, values in zip(described, matrix, strict=True):
        if description.get("settings_hash") != settings_id:
            continue
        key = "|".join(
            str(description.get(k))
            for k in ("sample", "mask_mode", "mask_sha256", "pixels_sha256", "settings_hash")
        )
        rows[key] = (description, values)
    return _Cache(names if rows else None, rows)


def _save_cache(
    out_dir: Path,
    settings_id: str,
    names: list[str],
    rows: Sequence[_Row],
    cache: _Cache,
) -> None:
    described: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    seen: set[str] = set()
    for row in rows:
        key = row.key(settings_id)
        if key in seen or (row.features is None and row.error is None):  # not extracted yet
            continue
        seen.add(key)
        described.append(row.describe(settings_id))
        vectors.append(row.features if row.features is not None else np.full(len(names), np.nan))
    if cache.names == names:  # rows of earlier runs with these settings, not asked for now
        for key, (description, values) in cache.rows.items():
            if key not in seen:
                seen.add(key)
                described.append(description)
                vectors.append(values)
    matrix = np.vstack(vectors) if vectors else np.empty((0, len(names)))
    document = {
        "format": CACHE_FORMAT,
        "settings_hash": settings_id,
        "feature_names": names,
        "rows": described,
    }
    _write_atomic(out_dir / CACHE_ROWS, _json_bytes(document))
    handle, temporary = tempfile.mkstemp(prefix=f".{CACHE_FEATURES}.", suffix=".npz", dir=out_dir)
    os.close(handle)
    try:
        np.savez(temporary, features=np.asarray(matrix, dtype=np.float64))
        Path(temporary).replace(out_dir / CACHE_FEATURES)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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


# --- thresholds --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdRecord:
    """How one threshold was chosen."""

    value: float
    computed: bool
    on: str
    n: int
    n_malignant: int
    n_benign: int
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "method": "youden" if self.computed else "fallback",
            "on": self.on,
            "n": self.n,
            "n_malignant": self.n_malignant,
            "n_benign": self.n_benign,
            "reason": self.reason,
        }


def _youden(truth: Sequence[int], scores: Sequence[float], on: str) -> ThresholdRecord:
    y = np.asarray(truth, dtype=int)
    s = np.asarray(scores, dtype=float)
    positives = int(y.sum())
    negatives = int(y.size - positives)
    if y.size == 0:
        reason = "no case to compute it on: 0.5 used"
    elif positives == 0 or negatives == 0:
        present = "malignant" if positives else "benign"
        reason = f"one class only (all {y.size} cases are {present}): 0.5 used"
    else:
        value = fusion.youden_threshold(y, s)
        return ThresholdRecord(
            min(1.0, max(0.0, value)), True, on, int(y.size), positives, negatives
        )
    return ThresholdRecord(0.5, False, on, int(y.size), positives, negatives, reason)


# --- out-of-fold predictions -------------------------------------------------------------------


def _oof_folds(
    y: np.ndarray, groups: Sequence[str], folds: int, seed: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    indices = np.arange(y.size)
    if len(set(groups)) >= folds:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = list(splitter.split(indices, y, groups))
        if all(len(set(y[train].tolist())) == 2 for train, _ in splits):
            return splits, f"StratifiedGroupKFold({folds}, shuffle, seed {seed}) by patient"
        reason = "a patient-grouped fold would train on one class only"
    else:
        reason = f"{len(set(groups))} patient(s) < {folds} folds"
    splitter2 = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = list(splitter2.split(indices, y))
    return splits, f"StratifiedKFold({folds}, shuffle, seed {seed}) by lesion ({reason})"


def _fit_booster(inputs: np.ndarray, y: np.ndarray, params: Mapping[str, Any], seed: int) -> Any:
    from xgboost import XGBClassifier

    model = XGBClassifier(
        objective="binary:logistic", tree_method="hist", random_state=seed, n_jobs=1, **params
    )
    model.fit(inputs, y)
    return model


def _model_inputs(classifier: Any, raw: np.ndarray, ages: np.ndarray | None) -> np.ndarray:
    scaled = classifier.scale(raw)
    if classifier.use_age:
        scaled = np.column_stack([scaled, ages if ages is not None else np.full(len(raw), np.nan)])
    return scaled


# --- the result --------------------------------------------------------------------------------


@dataclass
class RadiomicsTrainingResult:
    """What :func:`train_radiomics` produced.

    Attributes
    ----------
    out_dir
        The run folder.
    files
        The files written, by role (``model``, ``features``, ``params``,
        ``settings``, ``thresholds``, ``summary``, ``cache_features``,
        ``cache_rows``).
    thresholds
        The decision thresholds (``thresholds.json``).
    threshold_records
        How each was chosen.
    summary
        The content of ``summary.json``.
    extracted
        Radiomics extractions run now (0 when every row came from the cache).
    reused
        Rows taken from the feature cache.
    classifier
        The fitted :class:`~cem_node.pipeline.classifier.RadiomicsClassifier`.
    """

    out_dir: Path
    files: dict[str, Path]
    thresholds: DecisionThresholds
    threshold_records: dict[str, ThresholdRecord]
    summary: dict[str, Any]
    extracted: int
    reused: int
    classifier: Any
    notes: list[str] = field(default_factory=list)


# --- the training ------------------------------------------------------------------------------


def _group_by_study(samples: Iterable[Any]) -> list[list[Any]]:
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for sample in samples:
        groups[(sample.patient_id, sample.study_id)].append(sample)
    return [
        sorted(groups[key], key=lambda s: (s.laterality, s.view, s.key)) for key in sorted(groups)
    ]


def _failure(rows: Sequence[_Row], index: int) -> dict[str, Any]:
    row = rows[index]
    return {
        "sample": row.sample_key,
        "lesion_id": row.lesion_id,
        "mask_mode": row.mask_mode,
        "train": row.train,
        "error": row.error,
    }


def train_radiomics(
    samples: Sequence[Any],
    detector_dir: Path,
    out_dir: Path,
    *,
    masks: MaskMode = "manual",
    settings: RadiomicsSettings | None = None,
    postprocess: PostprocessParams | None = None,
    grid: Literal["paper", "fast"] | Mapping[str, Sequence[Any]] = "paper",
    selection: Literal["rfe", "rfecv"] = "rfe",
    n_features: int = 10,
    use_age: bool = False,
    ages: Mapping[str, float] | None = None,
    seed: int = 0,
    cv_folds: int = 5,
    workers: int = 1,
    device: str = "auto",
    datasets: Sequence[str] = (),
    split_file: Path | None = None,
    command: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    detect_fn: Callable[[Sequence[Any], Sequence[Any]], list[list[Any]]] | None = None,
) -> RadiomicsTrainingResult:
    """Train the radiomics classifier and choose the thresholds (see the module documentation).

    Parameters
    ----------
    samples
        The training image pairs (:class:`~cem_node.training.datasets.Sample`;
        the train part of the detector's split).
    detector_dir
        A ``cem-node train detector`` folder (``detector.safetensors``,
        ``detector_config.json``).
    out_dir
        The run folder (created; the feature cache in it is reused).
    masks
        ``"manual"``: the classifier learns from the ground-truth masks;
        ``"detector"``: from the masks of the detections matched to a lesion.
    settings
        The radiomics settings (default :class:`RadiomicsSettings`: the bundle's).
    postprocess
        The detector post-processing (default :class:`PostprocessParams`, the
        bundle's default, with the detector run's chosen keep score if any:
        ``cem-node train detector --choose-keep-score``).
    grid, selection, n_features, seed, cv_folds
        As :func:`~cem_node.training.radiomics_model.select_features` and
        :func:`~cem_node.training.radiomics_model.fit_radiomics_classifier`;
        ``cv_folds`` also gives the out-of-fold predictions.
    use_age
        Add the patient's age: from ``ages`` (patient id -> years), a sample's
        ``age_years``, or a synthetic study's ground truth. When no training
        lesion has an age, the model is fitted without it (``summary.json``
        says so).
    workers
        Radiomics worker processes; also the parallel fits of the grid search.
    device
        Where the detector runs (``auto``, ``cpu``, ``cuda``).
    datasets, split_file, command
        Recorded in ``summary.json``.
    progress
        Called as ``progress(description, done, total)``.
    detect_fn
        Replaces the detector (tests, or detections from elsewhere): called
        per study as ``detect_fn(samples, prepared_pairs)``, it returns per
        pair the :class:`~cem_node.pipeline.detector.Detection` list (network
        image coordinates, highest score first). The detector folder is still
        read and recorded.

    Raises
    ------
    RadiomicsTrainingError
        A missing detector file, no usable training lesion, too few lesions of
        a class for the cross-validation.
    """
    import torch

    from cem_node.pipeline.detector import detect, load_detector, select_device
    from cem_node.pipeline.preprocess import PreprocessError, preprocess_pair
    from cem_node.pipeline.radiomics import extract_many, make_job, pyradiomics_params
    from cem_node.training.metrics import match_detections
    from cem_node.training.radiomics_model import fit_radiomics_classifier, select_features

    started = time.perf_counter()
    if masks not in ("manual", "detector"):
        raise RadiomicsTrainingError(f"masks must be 'manual' or 'detector', got {masks!r}")
    if workers < 1:
        raise RadiomicsTrainingError(f"workers must be at least 1, got {workers}")
    if cv_folds < 2:
        raise RadiomicsTrainingError(f"cv_folds must be at least 2, got {cv_folds}")
    settings = settings or RadiomicsSettings()
    weights, detector_config, preprocess, detector_record = read_detector_run(detector_dir)
    post = postprocess or detector_postprocess(detector_record)
    if not samples:
        raise RadiomicsTrainingError("no training sample")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RadiomicsTrainingError(f"{out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    settings_id = settings_hash(settings)
    cache = _load_cache(out, settings_id)
    notes: list[str] = [cache.note] if cache.note else []
    timings: dict[str, float] = {}

    torch_device, device_text = select_device(device)
    detector = None
    if detect_fn is None:
        try:
            detector = load_detector(weights, detector_config, preprocess, device=torch_device)
        except Exception as exc:  # DetectorError, torch errors
            raise RadiomicsTrainingError(
                f"cannot load the detector of {detector_dir}: {exc}"
            ) from None
    else:
        device_text = "detect_fn (the detector was not run)"

    # 1-2. detect and match, study by study ------------------------------------------------
    tick = time.perf_counter()
    groups = _group_by_study(samples)
    rows: list[_Row] = []
    jobs: list[Any] = []  # RadiomicsJob per row to extract; job_rows: its row index
    job_rows: list[int] = []
    sample_failures: list[dict[str, str]] = []
    age_memo: dict[str, float | None] = {}
    sample_ages: dict[str, float | None] = {}
    lesion_counts = {"benign": 0, "malignant": 0}
    breasts: dict[tuple[str, str, str], dict[str, Any]] = {}
    studies: dict[tuple[str, str], dict[str, Any]] = {}
    det_counts = {"detections": 0, "matched": 0, "false_positives": 0, "lesions_missed": 0}
    used_samples = 0

    def want(row: _Row, le: np.ndarray, rc: np.ndarray, mask: np.ndarray, spacing: Any) -> None:
        index = len(rows)
        rows.append(row)
        hit = cache.rows.get(row.key(settings_id))
        if hit is not None and not str(hit[0].get("error") or "").startswith(_TRANSIENT):
            description, values = hit
            row.cached = True
            row.error = description.get("error")
            row.features = None if row.error else np.asarray(values, dtype=float)
            return
        jobs.append(make_job(f"{index}", le, rc, mask, spacing, settings))
        job_rows.append(index)

    names: list[str] | None = list(cache.names) if cache.names else None
    # Pending jobs are extracted in chunks (a pool of workers per chunk, its startup
    # amortised; the cropped images of at most one chunk in memory) and the cache is saved
    # after each, so an interrupted run goes on where it stopped.
    chunk = max(64, workers * 50)
    extracted = 0
    radiomics_seconds = 0.0

    def extract_pending() -> None:
        nonlocal names, extracted
        if not jobs:
            return
        if progress is not None:
            progress("radiomics", extracted, extracted + len(jobs))
        results = extract_many(jobs, settings, workers=workers)
        for index, result in zip(job_rows, results, strict=True):
            row = rows[index]
            if result.features is None:
                row.error = result.error or "radiomics unavailable"
                continue
            if names is None:
                names = sorted(result.features)
            if set(result.features) != set(names):
                row.error = (
                    f"feature set differs from the other rows ({len(result.features)} vs "
                    f"{len(names)} features)"
                )
                continue
            row.features = np.array([result.features[n] for n in names], dtype=float)
        extracted += len(jobs)
        jobs.clear()
        job_rows.clear()
        if names is not None:
            _save_cache(out, settings_id, names, rows, cache)

    for done, group in enumerate(groups):
        if progress is not None:
            progress("detecting", done, len(groups))
        if len(jobs) >= chunk:
            tick_radiomics = time.perf_counter()
            extract_pending()
            radiomics_seconds += time.perf_counter() - tick_radiomics
        loaded, prepared, kept = [], [], []
        for sample in group:
            try:
                data = sample.load()
                prep = preprocess_pair(
                    data.low_energy, data.recombined, preprocess, sample.laterality
                )
            except (PreprocessError, ValueError, OSError) as exc:
                sample_failures.append({"sample": sample.key, "error": str(exc)})
                continue
            loaded.append(data)
            prepared.append(prep)
            kept.append(sample)
        if not kept:
            continue
        if detect_fn is not None:
            found_all = detect_fn(kept, prepared)
        else:
            found_all = detect(detector, [p.image for p in prepared], post, torch_device)
        for sample, data, prep, found in zip(kept, loaded, prepared, found_all, strict=True):
            used_samples += 1
            sample_ages[sample.key] = _sample_age(sample, ages, age_memo)
            detections = map_detections(prep, found, post)
            gt = list(data.lesions)
            match = match_detections([d.mask for d in detections], [g.mask for g in gt], HIT_RULE)
            pix = _pixels_hash(data.low_energy, data.recombined)
            spacing = sample.pixel_spacing_mm
            common = {
                "sample_key": sample.key,
                "patient_id": sample.patient_id,
                "study_id": sample.study_id,
                "laterality": sample.laterality,
                "view": sample.view,
                "pixels_sha": pix,
            }
            breast = breasts.setdefault(
                (sample.patient_id, sample.study_id, sample.laterality),
                {"malignant": False, "scores": []},
            )
            study = studies.setdefault(
                (sample.patient_id, sample.study_id), {"malignant": False, "scores": []}
            )
            gt_rows: dict[int, int] = {}
            for j, lesion in enumerate(gt):
                lesion_counts[lesion.label] = lesion_counts.get(lesion.label, 0) + 1
                if lesion.label == "malignant":
                    breast["malignant"] = study["malignant"] = True
                if match.gt_to_pred[j] is None:
                    det_counts["lesions_missed"] += 1
                if masks != "manual":
                    continue
                matched = match.gt_to_pred[j]
                row = _Row(
                    **common,
                    lesion_id=lesion.lesion_id or f"lesion-{j + 1}",
                    label=lesion.label,
                    mask_mode="manual",
                    mask_sha=_mask_hash(lesion.mask),
                    train=True,
                    gt_index=j,
                    dl_probability=None if matched is None else detections[matched].dl_probability,
                    iou=None if matched is None else float(match.iou[matched, j]),
                )
                gt_rows[j] = len(rows)
                want(row, data.low_energy, data.recombined, lesion.mask, spacing)
            for k, det in enumerate(detections):
                j = match.pred_to_gt[k]
                det_counts["detections"] += 1
                det_counts["matched" if j is not None else "false_positives"] += 1
                row = _Row(
                    **common,
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
                breast["scores"].append(len(rows))
                study["scores"].append(len(rows))
                want(row, data.low_energy, data.recombined, det.mask, spacing)
        del loaded, prepared
    if progress is not None:
        progress("detecting", len(groups), len(groups))
    timings["detect"] = time.perf_counter() - tick - radiomics_seconds
    del detector
    if torch_device.type == "cuda":
        torch.cuda.empty_cache()

    def too_few(n_mal: int, n_ben: int, n_candidates: int, n_failed: int) -> RadiomicsTrainingError:
        what = (
            "ground-truth lesions"
            if masks == "manual"
            else f"detections matched to a lesion ({HIT_RULE}; {det_counts['matched']} matched "
            f"of {det_counts['detections']} detections)"
        )
        return RadiomicsTrainingError(
            f"too few training lesions for {cv_folds}-fold cross-validation: {n_mal} malignant "
            f"and {n_ben} benign {what} with radiomics ({n_candidates} candidate(s), "
            f"{n_failed} failed); need at least {cv_folds} of each"
            + ("; train the detector longer or use --masks manual" if masks == "detector" else "")
        )

    candidates = [i for i, r in enumerate(rows) if r.train]
    wanted = [1 if rows[i].label == "malignant" else 0 for i in candidates]
    if min(sum(wanted), len(wanted) - sum(wanted)) < cv_folds:  # before the costly extraction
        raise too_few(sum(wanted), len(wanted) - sum(wanted), len(candidates), 0)

    # 3. radiomics of the rows still pending ----------------------------------------------
    tick = time.perf_counter()
    extract_pending()
    if progress is not None and extracted:
        progress("radiomics", extracted, extracted)
    timings["radiomics"] = radiomics_seconds + time.perf_counter() - tick
    reused = sum(1 for r in rows if r.cached)

    failures = [_failure(rows, i) for i, r in enumerate(rows) if r.error is not None]
    train_index = [i for i, r in enumerate(rows) if r.train and r.features is not None]
    y_all = np.array([1 if rows[i].label == "malignant" else 0 for i in train_index], dtype=int)
    n_mal, n_ben = int(y_all.sum()), int(y_all.size - y_all.sum())
    if names is None or min(n_mal, n_ben) < cv_folds:
        raise too_few(n_mal, n_ben, len(candidates), len(candidates) - len(train_index))

    # 4. selection and fit ------------------------------------------------------------------
    tick = time.perf_counter()
    X = np.vstack([rows[i].features for i in train_index])  # noqa: N806
    row_ages = np.array(
        [
            np.nan
            if sample_ages.get(rows[i].sample_key) is None
            else sample_ages[rows[i].sample_key]
            for i in train_index
        ],
        dtype=float,
    )
    age_info: dict[str, Any] = {"requested": use_age, "used": False}
    if use_age:
        known = int(np.isfinite(row_ages).sum())
        age_info.update(
            {"lesions_with_age": known, "lesions_without_age": int(row_ages.size - known)}
        )
        if known == 0:
            age_info["reason"] = (
                "age unavailable: no training patient has a known age (the datasets give none); "
                "fitted without age"
            )
            notes.append(age_info["reason"])
        else:
            age_info["used"] = True
    try:
        chosen = select_features(
            X, y_all, names, n_features=n_features, method=selection, seed=seed, n_jobs=workers
        )
        fitted = fit_radiomics_classifier(
            chosen.subset(X),
            y_all,
            chosen.selected,
            ages=row_ages if age_info["used"] else None,
            grid=grid,
            seed=seed,
            cv_folds=cv_folds,
            n_jobs=workers,
        )
    except ValueError as exc:
        raise RadiomicsTrainingError(f"cannot fit the radiomics model: {exc}") from None
    classifier = fitted.classifier
    timings["fit"] = time.perf_counter() - tick

    # out-of-fold predictions of the chosen model
    tick = time.perf_counter()
    sel = list(chosen.indices)
    age_column = row_ages if classifier.use_age else None
    inputs = _model_inputs(classifier, X[:, sel], age_column)
    groups_of_rows = [rows[i].patient_id for i in train_index]
    splits, fold_method = _oof_folds(y_all, groups_of_rows, cv_folds, seed)
    oof = np.empty(len(train_index), dtype=float)
    fold_of = np.empty(len(train_index), dtype=int)
    fold_models = []
    for f, (fit_part, held_out) in enumerate(splits):
        model = _fit_booster(inputs[fit_part], y_all[fit_part], fitted.best_params, seed)
        oof[held_out] = model.predict_proba(inputs[held_out])[:, 1]
        fold_of[held_out] = f
        fold_models.append(model)
    from sklearn.metrics import roc_auc_score

    oof_auc = float(roc_auc_score(y_all, oof))
    position = {row_index: k for k, row_index in enumerate(train_index)}

    # radiomics probability of every detection, as the node would get it
    def radiomics_of(row_index: int) -> float | None:
        row = rows[row_index]
        if row.features is None:
            return None
        if row_index in position:
            return float(oof[position[row_index]])
        age = sample_ages.get(row.sample_key)
        raw = row.features[sel][None, :]
        ages_in = np.array([np.nan if age is None else age], dtype=float)
        if row.link is not None and row.link in position:
            model = fold_models[fold_of[position[row.link]]]
            return float(model.predict_proba(_model_inputs(classifier, raw, ages_in))[0, 1])
        return float(classifier.predict_matrix(raw, ages_in if classifier.use_age else None)[0])

    detection_rows = [i for i, r in enumerate(rows) if r.mask_mode == "detector"]
    det_radiomics = {i: radiomics_of(i) for i in detection_rows}
    timings["oof"] = time.perf_counter() - tick

    # 5. thresholds -------------------------------------------------------------------------
    records: dict[str, ThresholdRecord] = {}
    records["radiomics"] = _youden(
        y_all,
        oof,
        f"out-of-fold radiomics predictions of the {len(train_index)} training lesions "
        f"({masks} masks; {fold_method})",
    )
    # DL: every training lesion with a matched detection (its radiomics need not have worked)
    matched_lesions = [i for i in candidates if rows[i].dl_probability is not None]
    records["dl"] = _youden(
        [1 if rows[i].label == "malignant" else 0 for i in matched_lesions],
        [rows[i].dl_probability for i in matched_lesions],
        f"DL probabilities of the detections matched ({HIT_RULE}) to the training lesions "
        f"({len(matched_lesions)} of {len(candidates)} lesions matched)",
    )
    with_both = [i for i in train_index if rows[i].dl_probability is not None]
    records["fused"] = _youden(
        [1 if rows[i].label == "malignant" else 0 for i in with_both],
        [(rows[i].dl_probability + oof[position[i]]) / 2.0 for i in with_both],
        "mean of the DL probability and the out-of-fold radiomics probability of the "
        f"training lesions with both ({len(with_both)})",
    )

    def fused_of(row_index: int) -> float:
        row = rows[row_index]
        assert row.dl_probability is not None
        value, _ = fusion.fuse(row.dl_probability, det_radiomics.get(row_index))
        return value

    for level, table, unit in (
        ("breast", breasts, "breasts"),
        ("patient", studies, "patients (studies)"),
    ):
        truth = [1 if entry["malignant"] else 0 for entry in table.values()]
        scores = [
            max((fused_of(i) for i in entry["scores"]), default=0.0) for entry in table.values()
        ]
        empty = sum(1 for entry in table.values() if not entry["scores"])
        records[level] = _youden(
            truth,
            scores,
            f"maximum fused probability over all detections of the {len(truth)} training "
            f"{unit} ({empty} without detection scored 0); truth: a malignant lesion",
        )
    thresholds = DecisionThresholds(**{k: v.value for k, v in records.items()})
    for level, record in records.items():
        if not record.computed:
            notes.append(f"{level} threshold: {record.reason}")

    # 6. write ------------------------------------------------------------------------------
    model_path, features_path = classifier.save(out)
    files = {
        "model": model_path,
        "features": features_path,
        "params": out / RADIOMICS_PARAMS,
        "settings": out / RADIOMICS_SETTINGS,
        "thresholds": out / THRESHOLDS,
        "summary": out / SUMMARY,
        "cache_features": out / CACHE_FEATURES,
        "cache_rows": out / CACHE_ROWS,
    }
    _write_atomic(files["params"], _json_bytes(pyradiomics_params(settings)))
    _write_atomic(files["settings"], _json_bytes(settings.model_dump(mode="json")))
    _write_atomic(
        files["thresholds"],
        _json_bytes(
            {
                "format": THRESHOLDS_FORMAT,
                "thresholds": thresholds.model_dump(mode="json"),
                "method": (
                    "Youden index (argmax TPR - FPR; the lowest threshold on ties) on the "
                    "training predictions; 0.5 where it cannot be computed"
                ),
                "mask_mode": masks,
                "hit_rule": HIT_RULE,
                "details": {k: v.to_dict() for k, v in records.items()},
                "notes": [
                    "radiomics: out-of-fold predictions, because in-sample predictions of "
                    "boosted trees are nearly perfect and their Youden threshold is meaningless "
                    f"(the in-sample one, {fitted.youden_threshold:.4g}, is not used)",
                ],
            }
        ),
    )
    weights_sha = _file_sha256(weights)
    training_record = detector_record.get("training") if isinstance(detector_record, dict) else None
    if not isinstance(training_record, dict):
        training_record = {}
    rows_by_label = {
        "malignant": n_mal,
        "benign": n_ben,
    }
    summary: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "datasets": list(datasets),
        "split_file": None if split_file is None else str(split_file),
        "seed": seed,
        "mask_mode": masks,
        "hit_rule": HIT_RULE,
        "detector": {
            "dir": str(Path(detector_dir)),
            "weights_sha256": weights_sha,
            "config": detector_config.model_dump(mode="json"),
            "preprocessing": preprocess.model_dump(mode="json"),
            "datasets": training_record.get("datasets"),
            "seed": training_record.get("seed"),
            "command": training_record.get("command"),
            "device": device_text,
        },
        "postprocessing": post.model_dump(mode="json"),
        "radiomics_settings": settings.model_dump(mode="json"),
        "settings_hash": settings_id,
        "grid": grid if isinstance(grid, str) else "custom",
        "cv_folds": cv_folds,
        "selection": chosen.to_dict(),
        "model": fitted.to_dict(),
        "best_params": fitted.best_params,
        "cv_auc": {"mean": fitted.cv_auc, "std": fitted.cv_auc_std},
        "oof_auc": oof_auc,
        "oof_folds": fold_method,
        "in_sample_auc": fitted.training_auc,
        "in_sample_youden_threshold": fitted.youden_threshold,
        "age": age_info,
        "counts": {
            "samples": len(samples),
            "samples_used": used_samples,
            "studies": len(studies),
            "patients": len({p for p, _ in studies}),
            "breasts": len(breasts),
            "lesions": lesion_counts,
            **det_counts,
            "training_rows": len(train_index),
            "training_rows_by_label": rows_by_label,
            "training_candidates": len(candidates),
            "radiomics_rows": len(rows),
            "radiomics_failed": len(failures),
            "extracted": extracted,
            "reused_from_cache": reused,
            "samples_failed": len(sample_failures),
        },
        "failures": {"radiomics": failures, "samples": sample_failures},
        "thresholds": thresholds.model_dump(mode="json"),
        "notes": notes,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "seconds": round(time.perf_counter() - started, 3),
    }
    _write_atomic(files["summary"], _json_bytes(summary))
    return RadiomicsTrainingResult(
        out_dir=out,
        files=files,
        thresholds=thresholds,
        threshold_records=records,
        summary=summary,
        extracted=extracted,
        reused=reused,
        classifier=classifier,
        notes=notes,
    )


# --- files -------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _json_bytes(document: Any) -> bytes:
    return (json.dumps(_plain(document), indent=2, allow_nan=False) + "\n").encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

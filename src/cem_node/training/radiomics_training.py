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

The stages live beside this module: :mod:`~cem_node.training.radiomics_cases`
(1-2), :mod:`~cem_node.training.radiomics_features` (3, the feature cache),
:mod:`~cem_node.training.radiomics_thresholds` (5) and
:mod:`~cem_node.training.radiomics_outputs` (the run folder).

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

import json
import time
from collections.abc import Callable, Mapping, Sequence
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
from cem_node.training.radiomics_cases import (
    HIT_RULE,
    MappedDetection,
    _Cases,
    gather_cases,
    map_detections,
)
from cem_node.training.radiomics_features import (
    CACHE_FEATURES,
    CACHE_ROWS,
    MaskMode,
    _Cache,
    _FeatureQueue,
    _load_cache,
    _Row,
    settings_hash,
)
from cem_node.training.radiomics_outputs import write_run
from cem_node.training.radiomics_thresholds import (
    ThresholdRecord,
    _OutOfFold,
    choose_thresholds,
    detection_radiomics,
    out_of_fold,
)
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


class RadiomicsTrainingError(ValueError):
    """The radiomics model cannot be trained: missing file, too few lesions, bad input."""


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
    started = time.perf_counter()
    run = _open_run(
        samples,
        detector_dir,
        out_dir,
        masks=masks,
        settings=settings or RadiomicsSettings(),
        postprocess=postprocess,
        workers=workers,
        cv_folds=cv_folds,
        device=device,
        detect_fn=detect_fn,
    )
    queue, cases = _gather_rows(run, samples, ages=ages, workers=workers, progress=progress)
    train_set = _training_set(run, queue, cases)
    fit = _fit_model(
        run,
        queue,
        train_set,
        cases.sample_ages,
        use_age=use_age,
        n_features=n_features,
        selection=selection,
        grid=grid,
        seed=seed,
        workers=workers,
    )
    oof, records, thresholds = _thresholds(run, queue.rows, train_set, fit, cases, seed=seed)
    files, summary = write_run(
        run,
        queue,
        cases,
        train_set,
        fit,
        oof,
        records,
        thresholds,
        n_samples=len(samples),
        recorded={
            "command": command,
            "datasets": datasets,
            "split_file": split_file,
            "seed": seed,
            "grid": grid,
        },
        started=started,
    )
    return RadiomicsTrainingResult(
        out_dir=run.out,
        files=files,
        thresholds=thresholds,
        threshold_records=records,
        summary=summary,
        extracted=queue.extracted,
        reused=train_set.reused,
        classifier=fit.classifier,
        notes=run.notes,
    )


@dataclass
class _Run:
    """The resolved inputs of one :func:`train_radiomics` call, and what it notes and times."""

    detector_dir: Path
    weights: Path
    detector_config: DetectorConfig
    preprocess: PreprocessParams
    detector_record: dict
    post: PostprocessParams
    settings: RadiomicsSettings
    settings_id: str
    out: Path
    cache: _Cache
    masks: MaskMode
    cv_folds: int
    torch_device: Any
    device_text: str
    # detect_study(samples, prepared pairs) -> per pair its Detection list; None once freed
    detect_study: Callable[[Sequence[Any], Sequence[Any]], list[list[Any]]] | None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _open_run(
    samples: Sequence[Any],
    detector_dir: Path,
    out_dir: Path,
    *,
    masks: MaskMode,
    settings: RadiomicsSettings,
    postprocess: PostprocessParams | None,
    workers: int,
    cv_folds: int,
    device: str,
    detect_fn: Callable[[Sequence[Any], Sequence[Any]], list[list[Any]]] | None,
) -> _Run:
    """Check the arguments, read the detector run, open the run folder and its feature cache,
    and load the detector (unless ``detect_fn`` replaces it)."""
    if masks not in ("manual", "detector"):
        raise RadiomicsTrainingError(f"masks must be 'manual' or 'detector', got {masks!r}")
    if workers < 1:
        raise RadiomicsTrainingError(f"workers must be at least 1, got {workers}")
    if cv_folds < 2:
        raise RadiomicsTrainingError(f"cv_folds must be at least 2, got {cv_folds}")
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
    torch_device, device_text, detect_study = _open_detector(
        detector_dir, weights, detector_config, preprocess, post, device, detect_fn
    )
    return _Run(
        detector_dir=detector_dir,
        weights=weights,
        detector_config=detector_config,
        preprocess=preprocess,
        detector_record=detector_record,
        post=post,
        settings=settings,
        settings_id=settings_id,
        out=out,
        cache=cache,
        masks=masks,
        cv_folds=cv_folds,
        torch_device=torch_device,
        device_text=device_text,
        detect_study=detect_study,
        notes=[cache.note] if cache.note else [],
    )


def _open_detector(
    detector_dir: Path,
    weights: Path,
    detector_config: DetectorConfig,
    preprocess: PreprocessParams,
    post: PostprocessParams,
    device: str,
    detect_fn: Callable[[Sequence[Any], Sequence[Any]], list[list[Any]]] | None,
) -> tuple[Any, str, Callable[[Sequence[Any], Sequence[Any]], list[list[Any]]]]:
    """The torch device, its description for the summary, and the per-study detection."""
    from cem_node.pipeline.detector import detect, load_detector, select_device

    torch_device, device_text = select_device(device)
    if detect_fn is not None:
        return torch_device, "detect_fn (the detector was not run)", detect_fn
    try:
        detector = load_detector(weights, detector_config, preprocess, device=torch_device)
    except Exception as exc:  # DetectorError, torch errors
        raise RadiomicsTrainingError(f"cannot load the detector of {detector_dir}: {exc}") from None

    def detect_study(kept: Sequence[Any], prepared: Sequence[Any]) -> list[list[Any]]:
        return detect(detector, [p.image for p in prepared], post, torch_device)

    return torch_device, device_text, detect_study


def _gather_rows(
    run: _Run,
    samples: Sequence[Any],
    *,
    ages: Mapping[str, float] | None,
    workers: int,
    progress: Callable[[str, int, int], None] | None,
) -> tuple[_FeatureQueue, _Cases]:
    """Steps 1-3: detect and match study by study, then extract the radiomics still pending.

    Fails before the costly extraction when too few training lesions are asked for.
    """
    import torch

    tick = time.perf_counter()
    queue = _FeatureQueue(run.out, run.settings, run.settings_id, run.cache, workers, progress)
    assert run.detect_study is not None
    cases = gather_cases(
        samples,
        queue,
        masks=run.masks,
        preprocess=run.preprocess,
        post=run.post,
        ages=ages,
        detect_study=run.detect_study,
        progress=progress,
    )
    run.timings["detect"] = time.perf_counter() - tick - queue.seconds
    run.detect_study = None  # the last reference to the detector
    if run.torch_device.type == "cuda":
        torch.cuda.empty_cache()

    candidates = [i for i, r in enumerate(queue.rows) if r.train]
    wanted = [1 if queue.rows[i].label == "malignant" else 0 for i in candidates]
    if min(sum(wanted), len(wanted) - sum(wanted)) < run.cv_folds:  # before the extraction
        raise _too_few(run, cases, sum(wanted), len(wanted) - sum(wanted), len(candidates), 0)

    tick = time.perf_counter()
    queue.extract_pending()
    if progress is not None and queue.extracted:
        progress("radiomics", queue.extracted, queue.extracted)
    run.timings["radiomics"] = queue.seconds + time.perf_counter() - tick
    return queue, cases


def _too_few(
    run: _Run, cases: _Cases, n_mal: int, n_ben: int, n_candidates: int, n_failed: int
) -> RadiomicsTrainingError:
    det_counts = cases.det_counts
    what = (
        "ground-truth lesions"
        if run.masks == "manual"
        else f"detections matched to a lesion ({HIT_RULE}; {det_counts['matched']} matched "
        f"of {det_counts['detections']} detections)"
    )
    return RadiomicsTrainingError(
        f"too few training lesions for {run.cv_folds}-fold cross-validation: {n_mal} malignant "
        f"and {n_ben} benign {what} with radiomics ({n_candidates} candidate(s), "
        f"{n_failed} failed); need at least {run.cv_folds} of each"
        + ("; train the detector longer or use --masks manual" if run.masks == "detector" else "")
    )


def _failure(rows: Sequence[_Row], index: int) -> dict[str, Any]:
    row = rows[index]
    return {
        "sample": row.sample_key,
        "lesion_id": row.lesion_id,
        "mask_mode": row.mask_mode,
        "train": row.train,
        "error": row.error,
    }


@dataclass
class _TrainingSet:
    """The rows that train the classifier (``index``, with radiomics) and their labels."""

    candidates: list[int]  # every training row, with radiomics or not
    index: list[int]
    y: np.ndarray
    n_malignant: int
    n_benign: int
    failures: list[dict[str, Any]]  # every failed row
    reused: int  # rows taken from the feature cache


def _training_set(run: _Run, queue: _FeatureQueue, cases: _Cases) -> _TrainingSet:
    """The training rows whose radiomics worked; too few of a class for the CV is an error."""
    rows = queue.rows
    candidates = [i for i, r in enumerate(rows) if r.train]
    reused = sum(1 for r in rows if r.cached)
    failures = [_failure(rows, i) for i, r in enumerate(rows) if r.error is not None]
    train_index = [i for i, r in enumerate(rows) if r.train and r.features is not None]
    y_all = np.array([1 if rows[i].label == "malignant" else 0 for i in train_index], dtype=int)
    n_mal, n_ben = int(y_all.sum()), int(y_all.size - y_all.sum())
    if queue.names is None or min(n_mal, n_ben) < run.cv_folds:
        raise _too_few(
            run, cases, n_mal, n_ben, len(candidates), len(candidates) - len(train_index)
        )
    return _TrainingSet(candidates, train_index, y_all, n_mal, n_ben, failures, reused)


# --- selection and fit -------------------------------------------------------------------------


@dataclass
class _Fit:
    """Step 4: the training matrix, the ages, the feature selection and the fitted model."""

    X: np.ndarray
    row_ages: np.ndarray
    age_info: dict[str, Any]
    chosen: Any  # radiomics_model.FeatureSelection
    fitted: Any  # radiomics_model.FittedRadiomics

    @property
    def classifier(self) -> Any:
        return self.fitted.classifier


def _fit_model(
    run: _Run,
    queue: _FeatureQueue,
    train_set: _TrainingSet,
    sample_ages: Mapping[str, float | None],
    *,
    use_age: bool,
    n_features: int,
    selection: Literal["rfe", "rfecv"],
    grid: Literal["paper", "fast"] | Mapping[str, Sequence[Any]],
    seed: int,
    workers: int,
) -> _Fit:
    """Select the features and fit the classifier by grid search (timed as ``fit``)."""
    from cem_node.training.radiomics_model import fit_radiomics_classifier, select_features

    tick = time.perf_counter()
    rows, train_index, y_all = queue.rows, train_set.index, train_set.y
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
    age_info = _age_info(use_age, row_ages, run.notes)
    try:
        chosen = select_features(
            X,
            y_all,
            queue.names,
            n_features=n_features,
            method=selection,
            seed=seed,
            n_jobs=workers,
        )
        fitted = fit_radiomics_classifier(
            chosen.subset(X),
            y_all,
            chosen.selected,
            ages=row_ages if age_info["used"] else None,
            grid=grid,
            seed=seed,
            cv_folds=run.cv_folds,
            n_jobs=workers,
        )
    except ValueError as exc:
        raise RadiomicsTrainingError(f"cannot fit the radiomics model: {exc}") from None
    run.timings["fit"] = time.perf_counter() - tick
    return _Fit(X, row_ages, age_info, chosen, fitted)


def _age_info(use_age: bool, row_ages: np.ndarray, notes: list[str]) -> dict[str, Any]:
    """Whether the age is used (``summary.json``'s ``age``); none known: fitted without it."""
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
    return age_info


# --- thresholds ------------------------------------------------------------------------------


def _thresholds(
    run: _Run,
    rows: Sequence[_Row],
    train_set: _TrainingSet,
    fit: _Fit,
    cases: _Cases,
    *,
    seed: int,
) -> tuple[_OutOfFold, dict[str, ThresholdRecord], DecisionThresholds]:
    """Step 5: out-of-fold predictions (timed as ``oof``) and the Youden thresholds; a
    threshold that fell back to 0.5 is noted."""
    tick = time.perf_counter()
    oof = out_of_fold(
        fit.classifier,
        fit.X,
        train_set.y,
        fit.row_ages,
        rows,
        train_set.index,
        selected=fit.chosen.indices,
        best_params=fit.fitted.best_params,
        cv_folds=run.cv_folds,
        seed=seed,
    )
    det_radiomics = detection_radiomics(rows, oof, fit.classifier, cases.sample_ages)
    run.timings["oof"] = time.perf_counter() - tick
    records = choose_thresholds(
        rows,
        y=train_set.y,
        train_index=train_set.index,
        candidates=train_set.candidates,
        oof=oof,
        det_radiomics=det_radiomics,
        breasts=cases.breasts,
        studies=cases.studies,
        masks=run.masks,
    )
    thresholds = DecisionThresholds(**{k: v.value for k, v in records.items()})
    for level, record in records.items():
        if not record.computed:
            run.notes.append(f"{level} threshold: {record.reason}")
    return oof, records, thresholds

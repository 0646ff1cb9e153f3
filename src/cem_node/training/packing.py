"""Pack a training run (a trained detector and a radiomics model) into a model bundle.

``cem-node models import DIR`` imports a folder that already is a bundle; when
DIR is a training run instead (``DIR/detector/`` + ``DIR/radiomics/``, or
``--detector D --radiomics R``), :func:`pack_training_run` builds the
manifest from the runs' records and writes the bundle with
:func:`~cem_node.models.registry.write_bundle`.

What it reads
-------------
The detector folder (``cem-node train detector --out D``):
``detector.safetensors`` and ``detector_config.json`` (required),
``history.json``, ``split.json``, ``hard_examples.json`` and ``operating_point.json``
(kept when present).

The radiomics folder (``cem-node train radiomics --out R``):
``radiomics_model.json``, ``radiomics_features.json``,
``radiomics_params.json``, ``radiomics_settings.json``, ``thresholds.json``
and ``summary.json`` (all required).

A missing file is a :class:`~cem_node.models.manifest.BundleUsageError`
naming it. The radiomics run must have been trained on THIS detector's
detections (its ``summary.json`` records the SHA-256 of the detector weights):
the thresholds were chosen on them.

The manifest
------------
``[detector]`` and ``[preprocessing]`` from ``detector_config.json`` (with
the weights' stored dtype); ``[postprocessing]`` as the radiomics run used it
(the defaults unless changed); ``[radiomics]`` from
``radiomics_settings.json`` and the file names; ``[thresholds]`` from
``thresholds.json``; ``[training]``: the datasets, seeds and commands of both
runs, their sizes and a summary; ``[metrics]``: the headline numbers of an
evaluation ``report.json`` (``cem-node evaluate``), or a flat JSON object of
name -> number or text. Training on synthetic data (any ``synthetic:``
dataset SPEC in either run) forces ``for_clinical_use = false`` with the
disclaimer :data:`SYNTHETIC_DISCLAIMER`.

The bundle also carries the runs' records under ``training/`` (the detector
config, history and split, the radiomics summary and thresholds record), so a
bundle documents how it was made.

The detector weights are copied as trained, or re-saved as float16
(``weights_dtype="float16"``: half the size; loaded as float32).

This module imports torch and xgboost only when it must (re-saving the
weights, checking the radiomics model).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import struct
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from cem_node.models.manifest import BundleUsageError, Validation, describe_validation_error
from cem_node.models.registry import Bundle, sha256_file, write_bundle
from cem_node.training import run_files

__all__ = [
    "RESEARCH_DISCLAIMER",
    "SYNTHETIC_DISCLAIMER",
    "PackResult",
    "build_manifest",
    "find_training_run",
    "metrics_from_report",
    "pack_training_run",
    "stored_weights_dtype",
]


SYNTHETIC_DISCLAIMER = "synthetic phantom data, not for clinical use"
RESEARCH_DISCLAIMER = "research software, not for clinical use"
DEFAULT_STATEMENT = (
    "Research use: detection of enhancing lesions on contrast-enhanced mammography (CEM) "
    "low-energy / recombined image pairs and classification of each as benign or malignant "
    "(deep learning and handcrafted radiomics, Beuque et al. 2023)."
)

WeightsDtype = Literal["float16", "float32"]


@dataclass
class PackResult:
    """The written bundle and what the packing decided (e.g. clinical use refused)."""

    bundle: Bundle
    notes: list[str] = field(default_factory=list)
    weights_dtype: str = "float32"
    resaved_weights: bool = False


def find_training_run(source: Path) -> tuple[Path, Path] | None:
    """``(source/detector, source/radiomics)`` when both folders exist, else None."""
    detector, radiomics = Path(source) / "detector", Path(source) / "radiomics"
    if detector.is_dir() and radiomics.is_dir():
        return detector, radiomics
    return None


# --- reading the runs ----------------------------------------------------------------------------


def _operating_point_text(result: Mapping[str, Any]) -> str:
    """The description's words for an operating point chosen on the validation images."""
    keep = result.get("keep_score")
    if not isinstance(keep, int | float):
        return ""
    side, trained = result.get("short_side"), result.get("trained_short_side")
    resized = (
        f"input short side {side} (trained at {trained}) and "
        if isinstance(side, int) and isinstance(trained, int) and side != trained
        else ""
    )
    from cem_node.training.detector_training import OPERATING_RULES

    # runs from before the rule could be chosen used Dice alone
    rule = OPERATING_RULES.get(str(result.get("operating_rule")), OPERATING_RULES["dice"])
    return f", {resized}keep score {keep:g} chosen on the validation images ({rule})"


def _require_files(folder: Path, names: tuple[str, ...], what: str) -> None:
    if not folder.is_dir():
        raise BundleUsageError(f"{what} folder not found: {folder}", path=folder)
    for name in names:
        if not (folder / name).is_file():
            raise BundleUsageError(
                f"{folder / name}: missing: a {what} run folder holds {', '.join(names)}",
                path=folder,
            )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleUsageError(f"{path}: cannot read it as JSON: {exc}", path=path) from None


def _object(document: Any, path: Path, *keys: str) -> dict[str, Any]:
    node = document
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            where = ".".join(keys)
            raise BundleUsageError(f"{path}: no {where!r} entry", path=path)
        node = node[key]
    if not isinstance(node, dict):
        raise BundleUsageError(f"{path}: {'.'.join(keys)!r} is not an object", path=path)
    return node


def stored_weights_dtype(path: Path) -> str:
    """The dtype of a safetensors file's floating tensors: float16, float32 or mixed.

    Read from the file's JSON header (no torch needed).
    """
    try:
        with Path(path).open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100 * 1024 * 1024:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(fh.read(size))
    except (OSError, struct.error, ValueError) as exc:
        raise BundleUsageError(f"{path}: not a safetensors file: {exc}", path=path) from None
    kinds = {
        entry.get("dtype")
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict)
    }
    floats = kinds & {"F16", "F32", "F64", "BF16"}
    if floats == {"F16"}:
        return "float16"
    if floats == {"F32"}:
        return "float32"
    return "mixed"


def _is_synthetic(specs: Any) -> bool:
    if not isinstance(specs, list):
        return False
    return any(str(s).strip().lower().startswith("synthetic:") for s in specs)


def _scalar(value: Any) -> bool | int | float | str | None:
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return None


# --- metrics ------------------------------------------------------------------------------------


#: Figures of an evaluation report recorded besides the paper's headline: the per-image
#: identification and segmentation figures a detector is usually judged by.
PER_IMAGE_METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("table2_iou_0_1_per_image_sensitivity", ("table2", "iou>=0.1", "per_image", "sensitivity")),
    ("table2_per_image_mean_dice", ("table2", "iou>=0.1", "per_image", "mean_dice")),
    (
        "false_positives_per_image_iou_0_1",
        ("false_positives", "iou>=0.1", "false_positives_per_image"),
    ),
)


def _report_value(document: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` (keys) in a report, or None where a key is missing."""
    value: Any = document
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _metric_key(path: str) -> str:
    parts = [p for p in str(path).split(".") if p not in ("rows", "metrics")]
    return "_".join(re.sub(r"[^a-z0-9]+", "_", p.lower()).strip("_") for p in parts)


def metrics_from_report(path: Path) -> dict[str, float | str]:
    """The ``[metrics]`` table from an evaluation report or a flat JSON object.

    An evaluation ``report.json`` (``cem-node evaluate``) gives its headline
    numbers (the measures the paper reports; see its ``paper.headline``) and
    :data:`PER_IMAGE_METRICS`, each with its 95 % interval as text
    (``<name>_ci95``) when it has one, and the evaluated data
    (``evaluation_dataset``, ``evaluation_split``). Any other
    JSON object must map names to numbers or text.

    Raises
    ------
    BundleUsageError
        When the file is missing, not JSON, or neither of the two shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleUsageError(f"metrics file not found: {path}", path=path)
    document = _read_json(path)
    if not isinstance(document, dict):
        raise BundleUsageError(f"{path}: expected a JSON object", path=path)
    metrics: dict[str, float | str] = {}
    if str(document.get("format", "")).startswith("cem-node-evaluation-report/"):
        headline = document.get("paper", {}).get("headline", [])
        found = [
            (_metric_key(item.get("ours_path", "")), item.get("ours"))
            for item in (headline if isinstance(headline, list) else [])
            if isinstance(item, dict)
        ]
        found += [(key, _report_value(document, path)) for key, path in PER_IMAGE_METRICS]
        for key, ours in found:
            if not key or not isinstance(ours, dict):
                continue
            if not isinstance(ours.get("value"), int | float):
                continue
            metrics[key] = float(ours["value"])
            ci = ours.get("ci")
            if (
                isinstance(ci, list | tuple)
                and len(ci) == 2
                and all(isinstance(v, int | float) for v in ci)
            ):
                metrics[f"{key}_ci95"] = f"[{ci[0]:.4g}, {ci[1]:.4g}]"
        data = document.get("data") if isinstance(document.get("data"), dict) else {}
        for name in ("dataset", "split"):
            if isinstance(data.get(name), str):
                metrics[f"evaluation_{name}"] = data[name]
        if not any(isinstance(v, float) for v in metrics.values()):
            raise BundleUsageError(
                f"{path}: the evaluation report has no computed headline number", path=path
            )
        return metrics
    for key, value in document.items():
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise BundleUsageError(
                f"{path}: {key!r} is not a number or text: [metrics] is a flat table name -> "
                "number or text (or give an evaluation report.json)",
                path=path,
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise BundleUsageError(f"{path}: {key!r} is not a finite number", path=path)
        metrics[str(key)] = value if isinstance(value, str) else float(value)
    return metrics


def validation_from_file(path: Path) -> dict[str, Any]:
    """The ``[validation]`` table from a TOML file (the table itself, or a document
    with a ``[validation]`` table) or a JSON object; checked as the manifest checks it.

    Raises
    ------
    BundleUsageError
        When the file is missing, unreadable or not a valid ``[validation]`` table.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleUsageError(f"validation file not found: {path}", path=path)
    try:
        if path.suffix.lower() == ".json":
            document = _read_json(path)
        else:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise BundleUsageError(f"{path}: cannot read the validation table: {exc}") from None
    if isinstance(document, dict) and isinstance(document.get("validation"), dict):
        document = document["validation"]
    try:
        return Validation.model_validate(document).model_dump(exclude_none=True)
    except ValidationError as exc:
        raise BundleUsageError(
            f"{path}: not a valid [validation] table: " + "; ".join(describe_validation_error(exc)),
            path=path,
        ) from None


# --- the manifest --------------------------------------------------------------------------------


@dataclass
class _RunRecords:
    """What the manifest is made from: the detector run's config record and
    the radiomics run's summary, thresholds and settings."""

    detector: dict[str, Any]
    preprocessing: dict[str, Any]
    det_training: Any
    det_result: Any
    summary: dict[str, Any]
    summary_path: Path
    thresholds: dict[str, Any]
    settings: dict[str, Any]


def _read_runs(detector_dir: Path, radiomics_dir: Path) -> _RunRecords:
    """Read the records of both runs (checking that their files are there)."""
    _require_files(detector_dir, run_files.DETECTOR_REQUIRED, "detector")
    _require_files(radiomics_dir, run_files.RADIOMICS_REQUIRED, "radiomics")
    config_path = detector_dir / run_files.DETECTOR_CONFIG
    detector_record = _read_json(config_path)
    detector = _object(detector_record, config_path, "detector")
    preprocessing = _object(detector_record, config_path, "preprocessing")
    det_training = detector_record.get("training") or {}
    det_result = detector_record.get("result") or {}
    summary_path = radiomics_dir / run_files.SUMMARY
    summary = _read_json(summary_path)
    if not isinstance(summary, dict):
        raise BundleUsageError(f"{summary_path}: expected a JSON object", path=summary_path)
    thresholds_path = radiomics_dir / run_files.THRESHOLDS
    thresholds = _object(_read_json(thresholds_path), thresholds_path, "thresholds")
    settings_path = radiomics_dir / run_files.RADIOMICS_SETTINGS
    settings = _read_json(settings_path)
    if not isinstance(settings, dict):
        raise BundleUsageError(f"{settings_path}: expected a JSON object", path=settings_path)
    return _RunRecords(
        detector,
        preprocessing,
        det_training,
        det_result,
        summary,
        summary_path,
        thresholds,
        settings,
    )


def _check_same_detector(
    detector_dir: Path, radiomics_dir: Path, runs: _RunRecords, notes: list[str]
) -> None:
    """Refuse a radiomics run trained on another detector's detections (its
    thresholds were chosen on them); note when the run does not say."""
    weights_sha = sha256_file(detector_dir / run_files.DETECTOR_WEIGHTS)
    trained_with = (runs.summary.get("detector") or {}).get("weights_sha256")
    if trained_with is None:
        notes.append(
            f"{runs.summary_path} does not record the detector's weights: not checked that the "
            "radiomics run used this detector"
        )
    elif trained_with != weights_sha:
        raise BundleUsageError(
            f"the radiomics run {radiomics_dir} was trained on the detections of another "
            f"detector (weights sha256 {str(trained_with)[:12]}…, {detector_dir} holds "
            f"{weights_sha[:12]}…): its thresholds do not fit this detector; train it again "
            f"with --detector {detector_dir}",
            path=radiomics_dir,
        )


def _clinical_use(synthetic: bool, clinical: bool, notes: list[str]) -> tuple[bool, str | None]:
    """``for_clinical_use`` and the disclaimer: synthetic training data rules
    clinical use out, and a research bundle says so."""
    for_clinical = bool(clinical)
    if synthetic:
        disclaimer: str | None = SYNTHETIC_DISCLAIMER
        if clinical:
            notes.append(
                "--clinical refused: the models were trained on synthetic data "
                f"({SYNTHETIC_DISCLAIMER})"
            )
        for_clinical = False
    elif for_clinical:
        disclaimer = None
    else:
        disclaimer = RESEARCH_DISCLAIMER
    return for_clinical, disclaimer


def _training_data(runs: _RunRecords, det_specs: Any, rad_specs: Any) -> dict[str, Any]:
    """``[training.data]``: datasets, seeds, commands and sizes of both runs
    (scalars only; what a run does not record is left out)."""
    det_training, det_result, summary = runs.det_training, runs.det_result, runs.summary
    counts = summary.get("counts") or {}
    by_label = counts.get("training_rows_by_label") or {}
    model = summary.get("model") or {}
    cv = summary.get("cv_auc") or {}
    selected = (summary.get("selection") or {}).get("selected") or []
    datasets = [str(s) for s in (det_specs or [])]
    for spec in rad_specs or []:
        if str(spec) not in datasets:
            datasets.append(str(spec))
    data: dict[str, Any] = {
        "datasets": " + ".join(datasets) or "unknown",
        "detector_datasets": " + ".join(str(s) for s in det_specs or []) or None,
        "radiomics_datasets": " + ".join(str(s) for s in rad_specs or []) or None,
        "detector_seed": det_training.get("seed") if isinstance(det_training, dict) else None,
        "radiomics_seed": summary.get("seed"),
        "detector_command": det_training.get("command") if isinstance(det_training, dict) else None,
        "detector_operating_point_command": (
            det_training.get("operating_point_command") if isinstance(det_training, dict) else None
        ),
        "radiomics_command": summary.get("command"),
        "detector_train_images": det_result.get("train_images"),
        "detector_val_images": det_result.get("val_images"),
        "detector_epochs": det_result.get("epochs_completed"),
        "detector_best_epoch": det_result.get("best_epoch"),
        "detector_selected_by": det_result.get("selected_by"),
        "detector_pretrained": det_result.get("pretrained"),
        "detector_hard_examples": det_result.get("hard_examples"),
        "detector_keep_score": det_result.get("keep_score"),
        "detector_trained_short_side": det_result.get("trained_short_side"),
        "detector_short_side": det_result.get("short_side"),
        "radiomics_mask_mode": summary.get("mask_mode"),
        "radiomics_training_lesions": counts.get("training_rows"),
        "radiomics_malignant": by_label.get("malignant"),
        "radiomics_benign": by_label.get("benign"),
        "radiomics_images": counts.get("samples_used"),
        "radiomics_patients": counts.get("patients"),
        "radiomics_detections": counts.get("detections"),
        "radiomics_detections_matched": counts.get("matched"),
        "radiomics_false_positives": counts.get("false_positives"),
        "radiomics_features_selected": len(selected),
        "radiomics_cv_auc": cv.get("mean"),
        "radiomics_cv_auc_std": cv.get("std"),
        "radiomics_oof_auc": summary.get("oof_auc"),
        "radiomics_uses_age": model.get("use_age"),
        "radiomics_grid": summary.get("grid"),
    }
    return {k: v for k, v in ((k, _scalar(v)) for k, v in data.items()) if v is not None}


def _training_text(runs: _RunRecords) -> str:
    """``[training] description``: how the detector and the radiomics model were
    trained, in words."""
    det_result, summary = runs.det_result, runs.summary
    counts = summary.get("counts") or {}
    cv = summary.get("cv_auc") or {}
    selected = (summary.get("selection") or {}).get("selected") or []
    backbone = runs.detector.get("backbone", "?")
    return (
        f"Detector: Mask R-CNN {backbone}"
        + (
            f", {det_result['epochs_completed']} epoch(s), best epoch {det_result['best_epoch']}"
            if "epochs_completed" in det_result and "best_epoch" in det_result
            else ""
        )
        + (
            f", starting from the weights {det_result['pretrained']}"
            if det_result.get("pretrained")
            else ""
        )
        + (
            f", the {det_result['hard_examples']} training images they missed a lesion on "
            "drawn more often (hard examples)"
            if det_result.get("hard_examples")
            else ""
        )
        + _operating_point_text(det_result)
        + f". Radiomics: XGBoost on {counts.get('training_rows', '?')} lesions "
        f"({summary.get('mask_mode', '?')} masks), {len(selected)} selected feature(s)"
        + (f", CV AUC {cv['mean']:.3f}" if isinstance(cv.get("mean"), float) else "")
        + (
            f", out-of-fold AUC {summary['oof_auc']:.3f}"
            if isinstance(summary.get("oof_auc"), float)
            else ""
        )
        + ". Thresholds: Youden on the training predictions."
    )


def build_manifest(
    detector_dir: Path,
    radiomics_dir: Path,
    *,
    name: str,
    version: str,
    description: str | None = None,
    intended_use: str | None = None,
    clinical: bool = False,
    metrics: Mapping[str, float | str] | None = None,
    weights_dtype: str = "float32",
    created: dt.datetime | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The manifest (without ``[files]``) of the two runs, and notes on what was decided.

    Raises
    ------
    BundleUsageError
        A missing or unreadable file, or runs that do not belong together.
    """
    detector_dir, radiomics_dir = Path(detector_dir), Path(radiomics_dir)
    runs = _read_runs(detector_dir, radiomics_dir)
    notes: list[str] = []
    _check_same_detector(detector_dir, radiomics_dir, runs, notes)
    det_training, summary = runs.det_training, runs.summary
    det_specs = det_training.get("datasets") if isinstance(det_training, dict) else None
    rad_specs = summary.get("datasets")
    synthetic = _is_synthetic(det_specs) or _is_synthetic(rad_specs)
    for_clinical, disclaimer = _clinical_use(synthetic, clinical, notes)
    data = _training_data(runs, det_specs, rad_specs)
    steps = ("detector_command", "detector_operating_point_command", "radiomics_command")
    commands = [data[step] for step in steps if data.get(step)]
    seed = data.get("detector_seed", data.get("radiomics_seed", 0))
    postprocessing = summary.get("postprocessing")
    manifest: dict[str, Any] = {
        "format_version": 1,
        "bundle": {
            "name": name,
            "version": version,
            "created": (created or dt.datetime.now(dt.UTC)).replace(microsecond=0),
            "description": description
            or f"CEM lesion detector and radiomics classifier trained on {data['datasets']}",
        },
        "intended_use": {
            "statement": intended_use or DEFAULT_STATEMENT,
            "for_clinical_use": for_clinical,
            **({"disclaimer": disclaimer} if disclaimer else {}),
        },
        "training": {
            "description": _training_text(runs),
            "synthetic": synthetic,
            **({"command": " && ".join(str(c) for c in commands)} if commands else {}),
            "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else 0,
            "data": data,
        },
        "detector": {
            **runs.detector,
            "weights": "detector.safetensors",
            "weights_dtype": weights_dtype,
        },
        "preprocessing": runs.preprocessing,
        "postprocessing": postprocessing if isinstance(postprocessing, dict) else {},
        "radiomics": {
            **runs.settings,
            "model": "radiomics_model.json",
            "features": "radiomics_features.json",
            "params": "radiomics_params.json",
        },
        "thresholds": runs.thresholds,
    }
    if metrics:
        manifest["metrics"] = dict(metrics)
    return manifest, notes


# --- packing -------------------------------------------------------------------------------------


def _check_radiomics_model(radiomics_dir: Path) -> None:
    from cem_node.pipeline.classifier import ClassifierError, RadiomicsClassifier

    try:
        RadiomicsClassifier.load(
            radiomics_dir / run_files.RADIOMICS_MODEL, radiomics_dir / run_files.RADIOMICS_FEATURES
        )
    except ClassifierError as exc:
        raise BundleUsageError(f"the radiomics model cannot be loaded: {exc}") from None


def _resave_weights(
    detector_dir: Path, manifest: Mapping[str, Any], dtype: str, target: Path
) -> None:
    from cem_node.contracts.params import DetectorConfig, PreprocessParams
    from cem_node.pipeline.detector import DetectorError, load_detector, save_detector_weights

    fields = set(DetectorConfig.model_fields)
    config = DetectorConfig(**{k: v for k, v in manifest["detector"].items() if k in fields})
    preprocess = PreprocessParams.model_validate(manifest["preprocessing"])
    try:
        model = load_detector(detector_dir / run_files.DETECTOR_WEIGHTS, config, preprocess)
    except DetectorError as exc:
        raise BundleUsageError(f"cannot re-save the detector weights: {exc}") from None
    save_detector_weights(model, target, dtype)


def _weights_dtypes(detector_dir: Path, weights_dtype: str | None) -> tuple[str, str]:
    """The detector weights' stored dtype and the dtype the bundle gets (as
    trained when not asked, float32 for mixed weights)."""
    _require_files(detector_dir, run_files.DETECTOR_REQUIRED, "detector")
    stored = stored_weights_dtype(detector_dir / run_files.DETECTOR_WEIGHTS)
    target_dtype = weights_dtype or ("float16" if stored == "float16" else "float32")
    if target_dtype not in ("float16", "float32"):
        raise BundleUsageError(f"weights dtype must be float16 or float32, got {target_dtype!r}")
    return stored, target_dtype


def _bundle_files(detector_dir: Path, radiomics_dir: Path) -> dict[str, Path | bytes]:
    """The bundle's files but the detector weights: the radiomics model and the
    runs' records (under ``training/``), by their name in the bundle."""
    files: dict[str, Path | bytes] = {
        "radiomics_model.json": radiomics_dir / run_files.RADIOMICS_MODEL,
        "radiomics_features.json": radiomics_dir / run_files.RADIOMICS_FEATURES,
        "radiomics_params.json": radiomics_dir / run_files.RADIOMICS_PARAMS,
        "training/detector_config.json": detector_dir / run_files.DETECTOR_CONFIG,
        "training/radiomics_summary.json": radiomics_dir / run_files.SUMMARY,
        "training/thresholds.json": radiomics_dir / run_files.THRESHOLDS,
    }
    for optional in run_files.DETECTOR_OPTIONAL:
        if (detector_dir / optional).is_file():
            files[f"training/{optional}"] = detector_dir / optional
    return files


def _detector_weights(
    detector_dir: Path,
    manifest: Mapping[str, Any],
    stored: str,
    target_dtype: str,
    scratch: Path,
    notes: list[str],
) -> Path:
    """The weights file to bundle: the trained one, or a copy re-saved in
    ``target_dtype`` under ``scratch`` (noted) when it is stored otherwise."""
    if stored == target_dtype:
        return detector_dir / run_files.DETECTOR_WEIGHTS
    weights = scratch / "detector.safetensors"
    _resave_weights(detector_dir, manifest, target_dtype, weights)
    notes.append(f"detector weights re-saved as {target_dtype} (trained as {stored})")
    return weights


def pack_training_run(
    detector_dir: Path,
    radiomics_dir: Path,
    dest_dir: Path,
    *,
    name: str,
    version: str,
    description: str | None = None,
    intended_use: str | None = None,
    clinical: bool = False,
    metrics_file: Path | None = None,
    validation_file: Path | None = None,
    weights_dtype: WeightsDtype | None = None,
    overwrite: bool = False,
    created: dt.datetime | None = None,
) -> PackResult:
    """Write the bundle of a detector run and a radiomics run into ``dest_dir``.

    Parameters
    ----------
    detector_dir, radiomics_dir
        The ``cem-node train detector`` and ``cem-node train radiomics`` folders.
    dest_dir
        The bundle folder to create (in a models folder: ``models_dir/name``).
    name, version
        The bundle's name (a valid bundle name) and version.
    description, intended_use
        Free text (defaults describe the training and a research use).
    clinical
        Declare the models fit for clinical use; refused (with a note) when
        they were trained on synthetic data.
    metrics_file
        An evaluation ``report.json`` or a flat JSON object (:func:`metrics_from_report`).
    validation_file
        The ``[validation]`` table, as TOML or JSON (:func:`validation_from_file`).
    weights_dtype
        ``"float16"`` re-saves the detector weights in half precision;
        ``"float32"`` stores them in single precision; None keeps them as trained.
    overwrite
        Replace an existing ``dest_dir``.
    created
        The bundle's creation time (default: now).

    Raises
    ------
    BundleUsageError
        A missing or unreadable file (named), runs that do not belong together,
        an invalid name, version or manifest, an existing bundle without ``overwrite``.
    """
    detector_dir, radiomics_dir = Path(detector_dir), Path(radiomics_dir)
    if not version or not version.strip():
        raise BundleUsageError("a bundle needs a version (e.g. 1.0.0)")
    metrics = metrics_from_report(metrics_file) if metrics_file is not None else None
    validation = validation_from_file(validation_file) if validation_file is not None else None
    stored, target_dtype = _weights_dtypes(detector_dir, weights_dtype)
    manifest, notes = build_manifest(
        detector_dir,
        radiomics_dir,
        name=name,
        version=version,
        description=description,
        intended_use=intended_use,
        clinical=clinical,
        metrics=metrics,
        weights_dtype=target_dtype,
        created=created,
    )
    if validation is not None:
        manifest["validation"] = validation
    _check_radiomics_model(radiomics_dir)
    files = _bundle_files(detector_dir, radiomics_dir)
    resaved = stored != target_dtype
    with tempfile.TemporaryDirectory(prefix="cem-node-pack-") as scratch:
        files["detector.safetensors"] = _detector_weights(
            detector_dir, manifest, stored, target_dtype, Path(scratch), notes
        )
        bundle = write_bundle(Path(dest_dir), manifest, files, overwrite=overwrite)
    return PackResult(
        bundle=bundle, notes=notes, weights_dtype=target_dtype, resaved_weights=resaved
    )

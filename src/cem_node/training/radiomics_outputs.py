"""What :func:`~cem_node.training.radiomics_training.train_radiomics` writes in its run
folder besides the feature cache: the model, ``radiomics_params.json``,
``radiomics_settings.json``, ``thresholds.json`` and ``summary.json`` (see
"The run folder" in :mod:`cem_node.training.radiomics_training`).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cem_node.contracts.params import DecisionThresholds
from cem_node.pipeline.classifier import write_atomic
from cem_node.training.radiomics_cases import HIT_RULE, _Cases
from cem_node.training.radiomics_features import (
    CACHE_FEATURES,
    CACHE_ROWS,
    _FeatureQueue,
    _file_sha256,
    _json_bytes,
)
from cem_node.training.radiomics_thresholds import ThresholdRecord, _OutOfFold
from cem_node.training.run_files import (
    RADIOMICS_PARAMS,
    RADIOMICS_SETTINGS,
    SUMMARY,
    THRESHOLDS,
)

if TYPE_CHECKING:  # the stages' records; that module imports this one
    from cem_node.training.radiomics_training import _Fit, _Run, _TrainingSet

THRESHOLDS_FORMAT = "cem-node/radiomics-thresholds/v1"
SUMMARY_FORMAT = "cem-node/radiomics-training/v1"


def write_run(
    run: _Run,
    queue: _FeatureQueue,
    cases: _Cases,
    train_set: _TrainingSet,
    fit: _Fit,
    oof: _OutOfFold,
    records: Mapping[str, ThresholdRecord],
    thresholds: DecisionThresholds,
    *,
    n_samples: int,
    recorded: Mapping[str, Any],
    started: float,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Step 6: write the run folder, ``summary.json`` last; the files by role and the summary.

    ``recorded``: the ``command``, ``datasets``, ``split_file``, ``seed`` and
    ``grid`` of the call, as ``summary.json`` records them.
    """
    files = _write_model(run, fit, thresholds, records)
    summary = _summary(
        run,
        queue,
        cases,
        train_set,
        fit,
        oof,
        thresholds,
        n_samples=n_samples,
        recorded=recorded,
        started=started,
    )
    write_atomic(files["summary"], _json_bytes(summary))
    return files, summary


def _write_model(
    run: _Run,
    fit: _Fit,
    thresholds: DecisionThresholds,
    records: Mapping[str, ThresholdRecord],
) -> dict[str, Path]:
    """The model, its parameters and settings and ``thresholds.json``; the files by role."""
    from cem_node.pipeline.radiomics import pyradiomics_params

    out = run.out
    model_path, features_path = fit.classifier.save(out)
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
    write_atomic(files["params"], _json_bytes(pyradiomics_params(run.settings)))
    write_atomic(files["settings"], _json_bytes(run.settings.model_dump(mode="json")))
    write_atomic(
        files["thresholds"],
        _json_bytes(
            {
                "format": THRESHOLDS_FORMAT,
                "thresholds": thresholds.model_dump(mode="json"),
                "method": (
                    "Youden index (argmax TPR - FPR; the lowest threshold on ties) on the "
                    "training predictions; 0.5 where it cannot be computed"
                ),
                "mask_mode": run.masks,
                "hit_rule": HIT_RULE,
                "details": {k: v.to_dict() for k, v in records.items()},
                "notes": [
                    "radiomics: out-of-fold predictions, because in-sample predictions of "
                    "boosted trees are nearly perfect and their Youden threshold is meaningless "
                    f"(the in-sample one, {fit.fitted.youden_threshold:.4g}, is not used)",
                ],
            }
        ),
    )
    return files


def _summary(
    run: _Run,
    queue: _FeatureQueue,
    cases: _Cases,
    train_set: _TrainingSet,
    fit: _Fit,
    oof: _OutOfFold,
    thresholds: DecisionThresholds,
    *,
    n_samples: int,
    recorded: Mapping[str, Any],
    started: float,
) -> dict[str, Any]:
    """The content of ``summary.json``."""
    fitted = fit.fitted
    split_file, grid = recorded["split_file"], recorded["grid"]
    return {
        "format": SUMMARY_FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": recorded["command"],
        "datasets": list(recorded["datasets"]),
        "split_file": None if split_file is None else str(split_file),
        "seed": recorded["seed"],
        "mask_mode": run.masks,
        "hit_rule": HIT_RULE,
        "detector": _detector_summary(run),
        "postprocessing": run.post.model_dump(mode="json"),
        "radiomics_settings": run.settings.model_dump(mode="json"),
        "settings_hash": run.settings_id,
        "grid": grid if isinstance(grid, str) else "custom",
        "cv_folds": run.cv_folds,
        "selection": fit.chosen.to_dict(),
        "model": fitted.to_dict(),
        "best_params": fitted.best_params,
        "cv_auc": {"mean": fitted.cv_auc, "std": fitted.cv_auc_std},
        "oof_auc": oof.auc,
        "oof_folds": oof.method,
        "in_sample_auc": fitted.training_auc,
        "in_sample_youden_threshold": fitted.youden_threshold,
        "age": fit.age_info,
        "counts": _counts(queue, cases, train_set, n_samples),
        "failures": {"radiomics": train_set.failures, "samples": cases.sample_failures},
        "thresholds": thresholds.model_dump(mode="json"),
        "notes": run.notes,
        "timings_s": {k: round(v, 3) for k, v in run.timings.items()},
        "seconds": round(time.perf_counter() - started, 3),
    }


def _detector_summary(run: _Run) -> dict[str, Any]:
    """The detector used: its folder, weights' SHA-256, architecture and training record."""
    weights_sha = _file_sha256(run.weights)
    record = run.detector_record
    training_record = record.get("training") if isinstance(record, dict) else None
    if not isinstance(training_record, dict):
        training_record = {}
    return {
        "dir": str(Path(run.detector_dir)),
        "weights_sha256": weights_sha,
        "config": run.detector_config.model_dump(mode="json"),
        "preprocessing": run.preprocess.model_dump(mode="json"),
        "datasets": training_record.get("datasets"),
        "seed": training_record.get("seed"),
        "command": training_record.get("command"),
        "device": run.device_text,
    }


def _counts(
    queue: _FeatureQueue, cases: _Cases, train_set: _TrainingSet, n_samples: int
) -> dict[str, Any]:
    """``summary.json``'s ``counts``."""
    return {
        "samples": n_samples,
        "samples_used": cases.used_samples,
        "studies": len(cases.studies),
        "patients": len({p for p, _ in cases.studies}),
        "breasts": len(cases.breasts),
        "lesions": cases.lesion_counts,
        **cases.det_counts,
        "training_rows": len(train_set.index),
        "training_rows_by_label": {
            "malignant": train_set.n_malignant,
            "benign": train_set.n_benign,
        },
        "training_candidates": len(train_set.candidates),
        "radiomics_rows": len(queue.rows),
        "radiomics_failed": len(train_set.failures),
        "extracted": queue.extracted,
        "reused_from_cache": train_set.reused,
        "samples_failed": len(cases.sample_failures),
    }

"""The decision thresholds of :func:`~cem_node.training.radiomics_training.train_radiomics`:
out-of-fold predictions of the chosen model, the radiomics probability of every
detection as the node gets it, and the Youden thresholds on them (see
"Thresholds" in :mod:`cem_node.training.radiomics_training`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cem_node.pipeline import fusion
from cem_node.training.radiomics_cases import HIT_RULE
from cem_node.training.radiomics_features import _Row


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


@dataclass
class _OutOfFold:
    """The chosen model's out-of-fold predictions of the training rows.

    ``predictions[k]``, ``fold_of[k]``: the k-th training row's; ``position``
    maps a row index to k; ``models`` the fold models; ``selected`` the
    selected feature columns.
    """

    predictions: np.ndarray
    fold_of: np.ndarray
    models: list[Any]
    method: str
    auc: float
    position: dict[int, int]
    selected: list[int]


def out_of_fold(
    classifier: Any,
    X: np.ndarray,  # noqa: N803
    y: np.ndarray,
    row_ages: np.ndarray,
    rows: Sequence[_Row],
    train_index: Sequence[int],
    *,
    selected: Sequence[int],
    best_params: Mapping[str, Any],
    cv_folds: int,
    seed: int,
) -> _OutOfFold:
    """Refit the chosen model (best parameters, selected features) on k - 1 folds, predict the k-th.

    The folds are grouped by patient where every fold keeps both classes.
    """
    from sklearn.metrics import roc_auc_score

    sel = list(selected)
    age_column = row_ages if classifier.use_age else None
    inputs = _model_inputs(classifier, X[:, sel], age_column)
    groups_of_rows = [rows[i].patient_id for i in train_index]
    splits, fold_method = _oof_folds(y, groups_of_rows, cv_folds, seed)
    oof = np.empty(len(train_index), dtype=float)
    fold_of = np.empty(len(train_index), dtype=int)
    fold_models = []
    for f, (fit_part, held_out) in enumerate(splits):
        model = _fit_booster(inputs[fit_part], y[fit_part], best_params, seed)
        oof[held_out] = model.predict_proba(inputs[held_out])[:, 1]
        fold_of[held_out] = f
        fold_models.append(model)
    return _OutOfFold(
        predictions=oof,
        fold_of=fold_of,
        models=fold_models,
        method=fold_method,
        auc=float(roc_auc_score(y, oof)),
        position={row_index: k for k, row_index in enumerate(train_index)},
        selected=sel,
    )


def detection_radiomics(
    rows: Sequence[_Row],
    oof: _OutOfFold,
    classifier: Any,
    sample_ages: Mapping[str, float | None],
) -> dict[int, float | None]:
    """The radiomics probability of every detection row, as the node would get it.

    Out-of-fold for a training row, or a detection linked to one (the fold
    model that did not see the lesion); else the final model's; ``None``
    where the radiomics failed.
    """

    def radiomics_of(row_index: int) -> float | None:
        row = rows[row_index]
        if row.features is None:
            return None
        if row_index in oof.position:
            return float(oof.predictions[oof.position[row_index]])
        age = sample_ages.get(row.sample_key)
        raw = row.features[oof.selected][None, :]
        ages_in = np.array([np.nan if age is None else age], dtype=float)
        if row.link is not None and row.link in oof.position:
            model = oof.models[oof.fold_of[oof.position[row.link]]]
            return float(model.predict_proba(_model_inputs(classifier, raw, ages_in))[0, 1])
        return float(classifier.predict_matrix(raw, ages_in if classifier.use_age else None)[0])

    detection_rows = [i for i, r in enumerate(rows) if r.mask_mode == "detector"]
    return {i: radiomics_of(i) for i in detection_rows}


# --- the thresholds ----------------------------------------------------------------------------


def _truth(rows: Sequence[_Row], indices: Sequence[int]) -> list[int]:
    return [1 if rows[i].label == "malignant" else 0 for i in indices]


def choose_thresholds(
    rows: Sequence[_Row],
    *,
    y: np.ndarray,
    train_index: Sequence[int],
    candidates: Sequence[int],
    oof: _OutOfFold,
    det_radiomics: Mapping[int, float | None],
    breasts: Mapping[Any, Mapping[str, Any]],
    studies: Mapping[Any, Mapping[str, Any]],
    masks: str,
) -> dict[str, ThresholdRecord]:
    """The Youden threshold of every level (``radiomics``, ``dl``, ``fused``, ``breast``,
    ``patient``) on the training data, and how each was computed."""
    records: dict[str, ThresholdRecord] = {}
    records["radiomics"] = _youden(
        y,
        oof.predictions,
        f"out-of-fold radiomics predictions of the {len(train_index)} training lesions "
        f"({masks} masks; {oof.method})",
    )
    # DL: every training lesion with a matched detection (its radiomics need not have worked)
    matched_lesions = [i for i in candidates if rows[i].dl_probability is not None]
    records["dl"] = _youden(
        _truth(rows, matched_lesions),
        [rows[i].dl_probability for i in matched_lesions],
        f"DL probabilities of the detections matched ({HIT_RULE}) to the training lesions "
        f"({len(matched_lesions)} of {len(candidates)} lesions matched)",
    )
    with_both = [i for i in train_index if rows[i].dl_probability is not None]
    records["fused"] = _youden(
        _truth(rows, with_both),
        [(rows[i].dl_probability + oof.predictions[oof.position[i]]) / 2.0 for i in with_both],
        "mean of the DL probability and the out-of-fold radiomics probability of the "
        f"training lesions with both ({len(with_both)})",
    )
    for level, table, unit in (
        ("breast", breasts, "breasts"),
        ("patient", studies, "patients (studies)"),
    ):
        records[level] = _level_threshold(rows, table, unit, det_radiomics)
    return records


def _level_threshold(
    rows: Sequence[_Row],
    table: Mapping[Any, Mapping[str, Any]],
    unit: str,
    det_radiomics: Mapping[int, float | None],
) -> ThresholdRecord:
    """Youden on the maximum fused probability over all detections of each breast / study."""

    def fused_of(row_index: int) -> float:
        row = rows[row_index]
        assert row.dl_probability is not None
        value, _ = fusion.fuse(row.dl_probability, det_radiomics.get(row_index))
        return value

    truth = [1 if entry["malignant"] else 0 for entry in table.values()]
    scores = [max((fused_of(i) for i in entry["scores"]), default=0.0) for entry in table.values()]
    empty = sum(1 for entry in table.values() if not entry["scores"])
    return _youden(
        truth,
        scores,
        f"maximum fused probability over all detections of the {len(truth)} training "
        f"{unit} ({empty} without detection scored 0); truth: a malignant lesion",
    )

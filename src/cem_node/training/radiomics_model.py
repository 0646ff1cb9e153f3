"""Fitting the radiomics classifier (PAPER.md "Radiomics classifier").

Two steps, both on the TRAINING set only:

1. :func:`select_features`: z-score with the training mean/std, drop features
   with variance < 0.01, drop one of each pair with |Spearman rho| > 0.85,
   then recursive feature elimination (RFE) with XGBoost down to 10 features
   (or RFECV, stratified 10-fold ROC AUC). Every dropped feature is recorded
   with the step and the reason.
2. :func:`fit_radiomics_classifier`: XGBoost ``binary:logistic`` tuned by a
   grid search (stratified k-fold CV, ROC AUC) on the selected features,
   optionally with the patient's age; the result holds the
   :class:`~cem_node.pipeline.classifier.RadiomicsClassifier` to put in a
   bundle, the CV AUC, the training predictions and their Youden threshold.

Typical use (``cem-node train radiomics``)::

    selection = select_features(X, y, names, seed=seed)
    fitted = fit_radiomics_classifier(
        selection.subset(X), y, selection.selected, ages=ages, seed=seed
    )
    fitted.classifier.save(bundle_dir)

Caveat, as in the paper: the features are selected on the same data the CV
later scores, so the CV AUC is optimistic; only an external set measures the
model. The training predictions (for the Youden threshold) are in-sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from cem_node.pipeline.classifier import RadiomicsClassifier
from cem_node.pipeline.fusion import youden_threshold

__all__ = [
    "FAST_GRID",
    "PAPER_GRID",
    "DroppedFeature",
    "FeatureSelection",
    "FittedRadiomics",
    "fit_radiomics_classifier",
    "select_features",
    "training_scaler",
]

PAPER_GRID: Mapping[str, tuple[float, ...]] = {
    "max_depth": (2, 3),
    "min_child_weight": (1, 3, 5),
    "gamma": (0.1, 0.3, 0.5, 0.7, 0.9),
    "n_estimators": (10, 100, 500, 1000),
    "learning_rate": (1e-2, 1e-3, 1e-4, 1e-5, 1e-6),
}
"""The paper's grid, discretised: its two depths and three child weights; gamma
0.1..0.9 in steps of 0.2; n_estimators 10..1000 as 10, 100, 500, 1000 (one
per decade, plus 500 where the largest learning rate still learns); the
learning rate 1e-2..1e-6 one per decade. 2 x 3 x 5 x 4 x 5 = 600 candidates,
3000 fits with 5 folds (minutes on one core for a few hundred lesions).

With learning rates of 1e-4 and below the trees barely move the output away
from the base rate: the ranking (hence the AUC) can still be good, but the
probabilities are compressed near the base rate, which weighs on their mean
with the DL probability. The paper's ranges are kept as published."""

FAST_GRID: Mapping[str, tuple[float, ...]] = {
    "max_depth": (2, 3),
    "min_child_weight": (1,),
    "gamma": (0.1,),
    "n_estimators": (10, 100),
    "learning_rate": (1e-2,),
}
"""A 4-candidate subset of the paper's grid, for tests and CI."""

SelectionStep = Literal["variance", "correlation", "rfe", "rfecv"]

_CONSTANT_RELATIVE_STD = 1e-10
"""A training std below this fraction of |mean| is rounding noise: the feature is constant."""


@dataclass(frozen=True)
class DroppedFeature:
    """One feature removed by :func:`select_features`, at ``step``, for ``reason``."""

    name: str
    step: SelectionStep
    reason: str


@dataclass(frozen=True)
class FeatureSelection:
    """What :func:`select_features` kept and dropped, and why.

    Attributes
    ----------
    names
        The input feature names (the columns of ``X``).
    selected
        The selected names, in input order.
    indices
        Their column indices in ``X``.
    mean, std
        The training mean and std (ddof 0) of every input feature; a constant
        feature has std 0.
    after_variance, after_correlation
        The names remaining after the variance and the correlation filters.
    dropped
        Every removed feature with its step and reason, in the order removed.
    method
        ``"rfe"`` or ``"rfecv"``.
    rfe_ranking
        The RFE(CV) ranking of the features that entered it (1 = kept, higher
        = eliminated earlier); empty when RFE was skipped.
    rfecv_auc
        For RFECV: mean CV ROC AUC per number of features; else ``None``.
    notes
        Remarks (e.g. RFE skipped because few features remained).
    """

    names: tuple[str, ...]
    selected: tuple[str, ...]
    indices: tuple[int, ...]
    mean: dict[str, float]
    std: dict[str, float]
    after_variance: tuple[str, ...]
    after_correlation: tuple[str, ...]
    dropped: tuple[DroppedFeature, ...]
    method: Literal["rfe", "rfecv"]
    rfe_ranking: dict[str, int] = field(default_factory=dict)
    rfecv_auc: dict[int, float] | None = None
    notes: tuple[str, ...] = ()

    def subset(self, X: np.ndarray) -> np.ndarray:  # noqa: N803
        """The selected columns of ``X`` (same columns as the input of :func:`select_features`)."""
        matrix = np.asarray(X)
        if matrix.ndim != 2 or matrix.shape[1] != len(self.names):
            raise ValueError(
                f"X must have {len(self.names)} columns (the selection's input), got shape "
                f"{matrix.shape}"
            )
        return matrix[:, list(self.indices)]

    def dropped_at(self, step: SelectionStep) -> list[DroppedFeature]:
        """The features removed at ``step``."""
        return [d for d in self.dropped if d.step == step]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for a training report or a manifest); no scaler values."""
        return {
            "method": self.method,
            "input_features": len(self.names),
            "after_variance": len(self.after_variance),
            "after_correlation": len(self.after_correlation),
            "selected": list(self.selected),
            "dropped": [{"name": d.name, "step": d.step, "reason": d.reason} for d in self.dropped],
            "rfe_ranking": dict(self.rfe_ranking),
            "rfecv_auc": None
            if self.rfecv_auc is None
            else {str(k): v for k, v in self.rfecv_auc.items()},
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class FittedRadiomics:
    """The result of :func:`fit_radiomics_classifier`.

    Attributes
    ----------
    classifier
        The fitted model, refitted on the whole training set with the best
        parameters; save it with :meth:`RadiomicsClassifier.save`.
    best_params
        The grid point with the highest mean CV ROC AUC.
    cv_auc, cv_auc_std
        Mean and std over the folds of the ROC AUC of ``best_params``.
    training_predictions
        The classifier's P(malignant) for every training case (in-sample),
        computed through the inference path.
    training_auc
        ROC AUC of ``training_predictions`` (in-sample, optimistic).
    youden_threshold
        The Youden threshold on ``training_predictions`` (the bundle's
        ``DecisionThresholds.radiomics``).
    grid
        The grid searched; ``n_candidates`` its size.
    """

    classifier: RadiomicsClassifier
    best_params: dict[str, Any]
    cv_auc: float
    cv_auc_std: float
    training_predictions: np.ndarray
    training_auc: float
    youden_threshold: float
    grid: dict[str, tuple[Any, ...]]
    n_candidates: int

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a training report or a manifest."""
        return {
            "best_params": dict(self.best_params),
            "cv_auc": self.cv_auc,
            "cv_auc_std": self.cv_auc_std,
            "training_auc": self.training_auc,
            "youden_threshold": self.youden_threshold,
            "grid": {k: list(v) for k, v in self.grid.items()},
            "n_candidates": self.n_candidates,
            "selected_features": list(self.classifier.selected_features),
            "use_age": self.classifier.use_age,
        }


# --- validation and scaling --------------------------------------------------------------


def _check_inputs(
    X: Any,  # noqa: N803
    y: Any,
    names: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    matrix = np.asarray(X, dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"X must be a 2-D matrix (cases x features), got shape {matrix.shape}")
    if isinstance(names, str):
        raise ValueError("names must be a sequence of feature names, not one string")
    labels = tuple(names)
    if len(labels) != matrix.shape[1]:
        raise ValueError(f"X has {matrix.shape[1]} columns but {len(labels)} names were given")
    duplicates = sorted({n for n in labels if labels.count(n) > 1})
    if duplicates:
        raise ValueError(f"feature names are not unique: {duplicates}")
    bad = [labels[j] for j in np.flatnonzero(~np.isfinite(matrix).all(axis=0))]
    if bad:
        shown = bad[:10] + (["..."] if len(bad) > 10 else [])
        raise ValueError(
            f"X holds NaN or infinite values in {len(bad)} feature(s): {shown}; impute or drop "
            "them first"
        )
    truth = np.asarray(y)
    if truth.ndim != 1 or truth.size != matrix.shape[0]:
        raise ValueError(
            f"y must hold one label per row of X ({matrix.shape[0]}), got {truth.shape}"
        )
    if truth.dtype != bool and not np.isin(truth, (0, 1)).all():
        raise ValueError("y must hold 0 (benign) and 1 (malignant)")
    truth = truth.astype(int)
    if truth.min() == truth.max():
        raise ValueError(f"y must hold both classes; all {truth.size} cases are {truth[0]}")
    return matrix, truth, labels


def _check_folds(y: np.ndarray, folds: int, what: str) -> None:
    if folds < 2:
        raise ValueError(f"{what} needs at least 2 folds, got {folds}")
    smallest = int(np.bincount(y, minlength=2).min())
    if smallest < folds:
        raise ValueError(
            f"{what}: stratified {folds}-fold CV needs at least {folds} cases of each class; "
            f"the smaller class has {smallest}"
        )


def training_scaler(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
    """Training mean and std (ddof 0) per column; the std of a constant column is exactly 0.

    A std within rounding noise of 0 (below 1e-10 x |mean|) counts as 0, so a
    constant column is never blown up into noise of variance 1.
    """
    matrix = np.asarray(X, dtype=float)
    mean = matrix.mean(axis=0)
    std = matrix.std(axis=0)
    std[std <= _CONSTANT_RELATIVE_STD * np.abs(mean)] = 0.0
    return mean, std


def _zscore(matrix: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    safe = np.where(std == 0, 1.0, std)
    scaled = (matrix - mean) / safe
    scaled[:, std == 0] = 0.0
    return scaled


def _xgb_estimator(seed: int, n_jobs: int, **params: Any) -> Any:
    from xgboost import XGBClassifier

    return XGBClassifier(
        objective="binary:logistic",
        tree_method="hist",
        random_state=seed,
        n_jobs=n_jobs,
        **params,
    )


def _spearman_abs(matrix: np.ndarray) -> np.ndarray:
    """|Spearman rho| between the columns (ties get average ranks), zero diagonal."""
    from scipy.stats import rankdata

    ranks = rankdata(matrix, axis=0)
    rho = np.atleast_2d(np.corrcoef(ranks, rowvar=False))
    absolute = np.abs(rho)
    np.fill_diagonal(absolute, 0.0)
    return absolute


# --- feature selection -------------------------------------------------------------------


def select_features(
    X: np.ndarray,  # noqa: N803
    y: Sequence[int] | np.ndarray,
    names: Sequence[str],
    *,
    variance_min: float = 0.01,
    spearman_max: float = 0.85,
    n_features: int = 10,
    method: Literal["rfe", "rfecv"] = "rfe",
    seed: int = 0,
    rfe_step: int = 1,
    n_jobs: int = 1,
) -> FeatureSelection:
    """Select the radiomics features (PAPER.md "Radiomics classifier", steps 1-4).

    1. **z-score** every feature with its training mean and std (ddof 0); a
       constant feature (std 0, see :func:`training_scaler`) becomes 0.
    2. **variance**: drop features whose variance is below ``variance_min``.
       In the paper's order (after z-scoring) every non-constant feature has
       variance exactly 1, so this removes exactly the features that are
       constant in training.
    3. **correlation**: |Spearman rho| between the remaining features (average
       ranks for ties). The pairs with |rho| > ``spearman_max`` are visited
       from the most correlated down; when both are still kept, the one with
       the larger summed |rho| with all other still-kept features is dropped
       (on a tie, within 1e-9 relative, the one later in ``names``). The sums
       are updated after every drop.
    4. **RFE**: :class:`sklearn.feature_selection.RFE` with an XGBoost
       classifier (100 trees, depth 3, learning rate 0.1, gain importance),
       removing ``rfe_step`` features per round down to ``n_features``;
       skipped when no more remain. With ``method="rfecv"``,
       :class:`~sklearn.feature_selection.RFECV` picks the number of features
       (1 or more; ``n_features`` is then not used) by stratified 10-fold
       ROC AUC.

    Parameters
    ----------
    X
        Training matrix, cases x features, finite values.
    y
        1 malignant, 0 benign, per case (both classes present).
    names
        Unique feature names, one per column of ``X``.
    variance_min, spearman_max, n_features, method
        As above.
    seed
        Seeds the XGBoost models and the RFECV folds.
    rfe_step
        Features removed per RFE round (1 as in the paper; larger is faster).
    n_jobs
        Threads of XGBoost (and processes of RFECV's CV).

    Returns
    -------
    FeatureSelection

    Raises
    ------
    ValueError
        For malformed input (shape, names, non-finite values, labels, a single
        class), bad parameters, too few cases per class for 10-fold RFECV, or
        when no feature survives the filters.
    """
    matrix, truth, labels = _check_inputs(X, y, names)
    _check_selection_params(variance_min, spearman_max, n_features, rfe_step, method)
    if method == "rfecv":
        _check_folds(truth, 10, "RFECV")

    dropped: list[DroppedFeature] = []
    notes: list[str] = []
    mean, std = training_scaler(matrix)  # 1. z-score
    scaled = _zscore(matrix, mean, std)
    keep = _variance_filter(scaled, std, labels, variance_min, dropped)  # 2.
    after_variance = tuple(labels[j] for j in keep)
    keep = _correlation_filter(scaled, keep, labels, spearman_max, dropped)  # 3.
    after_correlation = tuple(labels[j] for j in keep)
    keep, ranking, rfecv_auc = _eliminate(  # 4. RFE / RFECV
        scaled,
        truth,
        keep,
        labels,
        method=method,
        n_features=n_features,
        rfe_step=rfe_step,
        seed=seed,
        n_jobs=n_jobs,
        dropped=dropped,
        notes=notes,
    )
    return FeatureSelection(
        names=labels,
        selected=tuple(labels[j] for j in keep),
        indices=tuple(keep),
        mean=dict(zip(labels, mean.tolist(), strict=True)),
        std=dict(zip(labels, std.tolist(), strict=True)),
        after_variance=after_variance,
        after_correlation=after_correlation,
        dropped=tuple(dropped),
        method=method,
        rfe_ranking=ranking,
        rfecv_auc=rfecv_auc,
        notes=tuple(notes),
    )


def _check_selection_params(
    variance_min: float, spearman_max: float, n_features: int, rfe_step: int, method: str
) -> None:
    if not variance_min >= 0:
        raise ValueError(f"variance_min must be >= 0, got {variance_min}")
    if not 0 < spearman_max <= 1:
        raise ValueError(f"spearman_max must be in (0, 1], got {spearman_max}")
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    if rfe_step < 1:
        raise ValueError(f"rfe_step must be >= 1, got {rfe_step}")
    if method not in ("rfe", "rfecv"):
        raise ValueError(f"method must be 'rfe' or 'rfecv', got {method!r}")


def _variance_filter(
    scaled: np.ndarray,
    std: np.ndarray,
    labels: tuple[str, ...],
    variance_min: float,
    dropped: list[DroppedFeature],
) -> list[int]:
    """Step 2: the columns whose z-scored variance reaches ``variance_min``."""
    variance = scaled.var(axis=0)
    keep = []
    for j, name in enumerate(labels):
        if variance[j] < variance_min:
            why = " (constant in the training set)" if std[j] == 0 else ""
            dropped.append(
                DroppedFeature(
                    name,
                    "variance",
                    f"variance {variance[j]:.3g} after z-scoring < {variance_min}{why}",
                )
            )
        else:
            keep.append(j)
    if not keep:
        raise ValueError(f"no feature has variance >= {variance_min} (all {len(labels)} dropped)")
    return keep


def _correlation_filter(
    scaled: np.ndarray,
    keep: list[int],
    labels: tuple[str, ...],
    spearman_max: float,
    dropped: list[DroppedFeature],
) -> list[int]:
    """Step 3: drop one of each pair with |Spearman rho| > ``spearman_max`` (see
    :func:`select_features`)."""
    if len(keep) <= 1:
        return keep
    absolute = _spearman_abs(scaled[:, keep])
    sums = absolute.sum(axis=1)
    alive = np.ones(len(keep), dtype=bool)
    rows, cols = np.triu_indices(len(keep), k=1)
    strong = np.flatnonzero(absolute[rows, cols] > spearman_max)
    order = strong[np.argsort(-absolute[rows[strong], cols[strong]], kind="stable")]
    for pair in order:
        a, b = int(rows[pair]), int(cols[pair])  # a < b: a comes first in names
        if not (alive[a] and alive[b]):
            continue
        tie = abs(sums[a] - sums[b]) <= 1e-9 * max(sums[a], sums[b])
        drop, kept = (b, a) if tie or sums[b] > sums[a] else (a, b)
        dropped.append(
            DroppedFeature(
                labels[keep[drop]],
                "correlation",
                f"|Spearman rho| {absolute[a, b]:.3f} > {spearman_max} with "
                f"{labels[keep[kept]]!r}; summed |rho| {sums[drop]:.3f} vs "
                f"{sums[kept]:.3f}{' (tie: the later one is dropped)' if tie else ''}",
            )
        )
        alive[drop] = False
        sums -= absolute[:, drop]
    return [j for j, live in zip(keep, alive, strict=True) if live]


def _eliminate(
    scaled: np.ndarray,
    truth: np.ndarray,
    keep: list[int],
    labels: tuple[str, ...],
    *,
    method: Literal["rfe", "rfecv"],
    n_features: int,
    rfe_step: int,
    seed: int,
    n_jobs: int,
    dropped: list[DroppedFeature],
    notes: list[str],
) -> tuple[list[int], dict[str, int], dict[int, float] | None]:
    """Step 4: RFE or RFECV; the columns kept, the ranking and RFECV's AUC per size."""
    ranking: dict[str, int] = {}
    rfecv_auc: dict[int, float] | None = None
    estimator = _xgb_estimator(
        seed, n_jobs, n_estimators=100, max_depth=3, learning_rate=0.1, importance_type="gain"
    )
    if method == "rfe" and len(keep) <= n_features:
        notes.append(
            f"RFE skipped: {len(keep)} feature(s) left after the filters, "
            f"n_features is {n_features}"
        )
        return keep, ranking, rfecv_auc
    if method == "rfecv" and len(keep) == 1:
        notes.append("RFECV skipped: one feature left after the filters")
        return keep, ranking, rfecv_auc
    selector = _rfe_selector(estimator, method, n_features, rfe_step, seed, n_jobs)
    selector.fit(scaled[:, keep], truth)
    ranks = [int(r) for r in selector.ranking_]
    ranking = {labels[j]: r for j, r in zip(keep, ranks, strict=True)}
    if method == "rfecv":
        results = selector.cv_results_
        rfecv_auc = {
            int(n): float(s)
            for n, s in zip(results["n_features"], results["mean_test_score"], strict=True)
        }
        notes.append(f"RFECV chose {int(selector.n_features_)} feature(s)")
    step_name: SelectionStep = method
    for j, rank in zip(keep, ranks, strict=True):
        if rank > 1:
            dropped.append(
                DroppedFeature(
                    labels[j],
                    step_name,
                    f"{method.upper()} rank {rank} (1 = kept; higher = eliminated earlier)",
                )
            )
    keep = [j for j, rank in zip(keep, ranks, strict=True) if rank == 1]
    return keep, ranking, rfecv_auc


def _rfe_selector(
    estimator: Any,
    method: Literal["rfe", "rfecv"],
    n_features: int,
    rfe_step: int,
    seed: int,
    n_jobs: int,
) -> Any:
    from sklearn.feature_selection import RFE, RFECV
    from sklearn.model_selection import StratifiedKFold

    if method == "rfe":
        return RFE(estimator, n_features_to_select=n_features, step=rfe_step)
    return RFECV(
        estimator,
        step=rfe_step,
        min_features_to_select=1,
        cv=StratifiedKFold(n_splits=10, shuffle=True, random_state=seed),
        scoring="roc_auc",
        n_jobs=n_jobs,
    )


# --- the classifier ----------------------------------------------------------------------


def _resolve_grid(
    grid: Literal["paper", "fast"] | Mapping[str, Sequence[Any]],
) -> dict[str, tuple[Any, ...]]:
    if isinstance(grid, str):
        if grid == "paper":
            return {k: tuple(v) for k, v in PAPER_GRID.items()}
        if grid == "fast":
            return {k: tuple(v) for k, v in FAST_GRID.items()}
        raise ValueError(f"grid must be 'paper', 'fast' or a mapping, got {grid!r}")
    resolved = {}
    for key, values in grid.items():
        if key in ("objective", "random_state", "n_jobs"):
            raise ValueError(f"grid may not vary {key!r} (fixed by fit_radiomics_classifier)")
        if isinstance(values, str) or not values:
            raise ValueError(f"grid entry {key!r} must be a non-empty sequence, got {values!r}")
        resolved[key] = tuple(values)
    if not resolved:
        raise ValueError("the grid is empty")
    return resolved


def _ages_column(ages: Sequence[float | None] | np.ndarray, n: int) -> np.ndarray:
    if isinstance(ages, str | bytes) or len(ages) != n:
        raise ValueError(f"ages must hold one value per row of X ({n})")
    column = np.array([np.nan if a is None else float(a) for a in ages], dtype=float)
    if np.isinf(column).any() or (column < 0).any():
        raise ValueError("ages must be non-negative numbers of years (None or NaN when unknown)")
    return column


def fit_radiomics_classifier(
    X: np.ndarray,  # noqa: N803
    y: Sequence[int] | np.ndarray,
    names: Sequence[str],
    *,
    ages: Sequence[float | None] | np.ndarray | None = None,
    grid: Literal["paper", "fast"] | Mapping[str, Sequence[Any]] = "paper",
    seed: int = 0,
    cv_folds: int = 5,
    n_jobs: int = 1,
) -> FittedRadiomics:
    """Fit the XGBoost radiomics classifier by grid search (PAPER.md step 5).

    The inputs are the columns of ``X`` (the already selected features, e.g.
    ``selection.subset(X)``), z-scored with their training mean and std
    (:func:`training_scaler`; the scaler the model stores), then the age in
    years when ``ages`` is given (unscaled; None/NaN = unknown, left to
    XGBoost's missing-value handling).

    :class:`sklearn.model_selection.GridSearchCV` over
    :class:`xgboost.XGBClassifier` (``binary:logistic``, ``hist`` trees,
    ``random_state=seed``) with ``StratifiedKFold(cv_folds, shuffle=True,
    random_state=seed)`` and ``roc_auc`` scoring, then a refit on all cases
    with the best parameters. The scaler is computed on all training cases,
    not per fold; trees are invariant to a per-feature affine scaling, so this
    does not leak into the CV AUC.

    Parameters
    ----------
    X
        Training matrix, cases x selected features, finite values.
    y
        1 malignant, 0 benign, per case.
    names
        The feature names of the columns (the model's selected features).
    ages
        Age in years per case, or ``None`` for a model without age.
    grid
        ``"paper"`` (:data:`PAPER_GRID`, 600 candidates), ``"fast"``
        (:data:`FAST_GRID`, 4 candidates) or a mapping of XGBClassifier
        parameter -> values.
    seed
        Seeds the folds and XGBoost.
    cv_folds
        Folds of the stratified CV (5 in the paper).
    n_jobs
        Parallel candidate fits of the grid search (each XGBoost uses one thread).

    Returns
    -------
    FittedRadiomics

    Raises
    ------
    ValueError
        For malformed input (see :func:`select_features`), a bad grid, or
        fewer than ``cv_folds`` cases in a class.
    """
    from sklearn.metrics import roc_auc_score

    matrix, truth, labels = _check_inputs(X, y, names)
    _check_folds(truth, cv_folds, "the grid search")
    param_grid = _resolve_grid(grid)
    age_column = None if ages is None else _ages_column(ages, matrix.shape[0])

    mean, std = training_scaler(matrix)
    inputs = _zscore(matrix, mean, std)
    if age_column is not None:
        inputs = np.column_stack([inputs, age_column])

    search = _grid_search(inputs, truth, param_grid, seed=seed, cv_folds=cv_folds, n_jobs=n_jobs)
    best = search.best_index_
    booster = search.best_estimator_.get_booster().copy()
    classifier = RadiomicsClassifier(
        booster, labels, mean.tolist(), std.tolist(), use_age=age_column is not None
    )
    predictions = classifier.predict_matrix(matrix, age_column)
    n_candidates = 1
    for values in param_grid.values():
        n_candidates *= len(values)
    return FittedRadiomics(
        classifier=classifier,
        best_params={k: _plain(v) for k, v in search.best_params_.items()},
        cv_auc=float(search.best_score_),
        cv_auc_std=float(search.cv_results_["std_test_score"][best]),
        training_predictions=predictions,
        training_auc=float(roc_auc_score(truth, predictions)),
        youden_threshold=youden_threshold(truth, predictions),
        grid=param_grid,
        n_candidates=n_candidates,
    )


def _grid_search(
    inputs: np.ndarray,
    truth: np.ndarray,
    param_grid: Mapping[str, tuple[Any, ...]],
    *,
    seed: int,
    cv_folds: int,
    n_jobs: int,
) -> Any:
    """The fitted :class:`~sklearn.model_selection.GridSearchCV` (ROC AUC, stratified folds)."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    search = GridSearchCV(
        _xgb_estimator(seed, 1),
        {k: list(v) for k, v in param_grid.items()},
        scoring="roc_auc",
        cv=StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed),
        refit=True,
        n_jobs=n_jobs,
        error_score="raise",
    )
    search.fit(inputs, truth)
    return search


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (for JSON/TOML)."""
    return value.item() if isinstance(value, np.generic) else value

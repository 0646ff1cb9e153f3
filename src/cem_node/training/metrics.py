"""Evaluation metrics: overlap of masks, matching detections to lesions, binary
classification measures, ROC AUC and percentile bootstrap confidence intervals.

Every function is pure (numpy; scikit-learn only where noted). A measure that
is not defined on the given cases (a sensitivity without a positive case, an
AUC with one class, the mean of nothing) raises :class:`UndefinedMetricError`,
a :class:`ValueError` whose message says why; it never returns a made-up
number. :func:`bootstrap_ci` turns that into a :class:`MetricValue` carrying
the reason instead of a value.

Conventions
-----------
* Truth and predictions are binary: 1 (or True) is the positive class
  (malignant), 0 the negative class (benign).
* A score is labelled positive when ``score >= threshold``
  (:func:`labels_at`), as :func:`cem_node.pipeline.fusion.label_for` does.
* Masks are boolean arrays of one shape; an empty mask is allowed.

Hit rules (:data:`HIT_RULES`, :func:`match_detections`)
-------------------------------------------------------
``"iou>=0.1"``
    a detection hits a lesion when the IoU of their masks is at least 0.1
    (the rule of the authors' follow-up work);
``"iou>=0.5"``
    at least 0.5 (the COCO convention).

Matching is one-to-one and greedy by IoU: all (detection, lesion) pairs that
pass the rule are taken in decreasing IoU (ties: the earlier detection, i.e.
the higher detector score, then the earlier lesion); a pair is kept when
neither member is matched yet. A lesion is *hit* when it is matched; a
detection that matches no lesion is a *false positive*. (COCO's evaluation
walks the detections by score instead; at IoU >= 0.5 both give the same
result for non-overlapping lesions, since a detection then passes the rule
with at most one lesion.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "HIT_RULES",
    "Confusion",
    "Match",
    "MetricValue",
    "UndefinedMetricError",
    "accuracy",
    "bootstrap_ci",
    "confusion",
    "dice",
    "f1_score",
    "hit_threshold",
    "iou_matrix",
    "labels_at",
    "mask_iou",
    "match_detections",
    "mean",
    "roc_auc",
    "sensitivity",
    "specificity",
]

#: The hit rules by name, with their IoU threshold.
HIT_RULES: dict[str, float] = {"iou>=0.1": 0.1, "iou>=0.5": 0.5}

_RULE = re.compile(r"^\s*iou\s*>=\s*([0-9]*\.?[0-9]+)\s*$", re.IGNORECASE)


class UndefinedMetricError(ValueError):
    """The measure is not defined on these cases (the message says why)."""


# --- masks ------------------------------------------------------------------------------------


def _mask_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first, second = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if first.shape != second.shape:
        raise ValueError(f"masks differ in shape: {first.shape} and {second.shape}")
    return first, second


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """The Dice coefficient ``2 |A & B| / (|A| + |B|)`` of two masks of one shape.

    Raises
    ------
    UndefinedMetricError
        When both masks are empty (0 / 0).
    ValueError
        When the shapes differ.
    """
    first, second = _mask_pair(a, b)
    total = int(first.sum()) + int(second.sum())
    if total == 0:
        raise UndefinedMetricError("both masks are empty: Dice is undefined")
    return 2.0 * int(np.logical_and(first, second).sum()) / total


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """The intersection over union ``|A & B| / |A | B|`` of two masks of one shape.

    Raises
    ------
    UndefinedMetricError
        When both masks are empty.
    ValueError
        When the shapes differ.
    """
    first, second = _mask_pair(a, b)
    union = int(np.logical_or(first, second).sum())
    if union == 0:
        raise UndefinedMetricError("both masks are empty: IoU is undefined")
    return int(np.logical_and(first, second).sum()) / union


def iou_matrix(pred_masks: Sequence[np.ndarray], gt_masks: Sequence[np.ndarray]) -> np.ndarray:
    """IoU of every (prediction, ground truth) pair: shape ``(len(pred), len(gt))``.

    A pair of two empty masks has IoU 0 here (it cannot be a hit).
    """
    out = np.zeros((len(pred_masks), len(gt_masks)), dtype=float)
    gts = [np.asarray(g, dtype=bool) for g in gt_masks]
    gt_areas = [int(g.sum()) for g in gts]
    for i, pred in enumerate(pred_masks):
        p = np.asarray(pred, dtype=bool)
        area = int(p.sum())
        for j, (g, g_area) in enumerate(zip(gts, gt_areas, strict=True)):
            if p.shape != g.shape:
                raise ValueError(
                    f"prediction {i} has shape {p.shape}, ground-truth mask {j} {g.shape}"
                )
            inter = int(np.logical_and(p, g).sum())
            union = area + g_area - inter
            out[i, j] = inter / union if union else 0.0
    return out


def hit_threshold(rule: str) -> float:
    """The IoU threshold of a hit rule ``"iou>=X"`` (0 < X <= 1).

    Raises
    ------
    ValueError
        For a rule that is not of that form.
    """
    found = _RULE.match(str(rule))
    if not found:
        raise ValueError(f"hit rule {rule!r}: expected 'iou>=X', e.g. one of {list(HIT_RULES)}")
    value = float(found.group(1))
    if not 0.0 < value <= 1.0:
        raise ValueError(f"hit rule {rule!r}: the IoU threshold must be in (0, 1]")
    return value


@dataclass(frozen=True)
class Match:
    """A one-to-one matching of detections to ground-truth lesions.

    Attributes
    ----------
    rule
        The hit rule, e.g. ``"iou>=0.1"``.
    pairs
        ``(detection index, lesion index, IoU)`` of each match, in the order
        they were made (decreasing IoU).
    pred_to_gt
        Per detection, the matched lesion's index or None (a false positive).
    gt_to_pred
        Per lesion, the matched detection's index or None (a missed lesion).
    iou
        The IoU matrix (detections x lesions).
    """

    rule: str
    pairs: tuple[tuple[int, int, float], ...]
    pred_to_gt: tuple[int | None, ...]
    gt_to_pred: tuple[int | None, ...]
    iou: np.ndarray

    @property
    def hits(self) -> tuple[bool, ...]:
        """Per lesion, whether a detection hit it."""
        return tuple(p is not None for p in self.gt_to_pred)

    @property
    def false_positives(self) -> tuple[int, ...]:
        """Indexes of the detections that match no lesion."""
        return tuple(i for i, g in enumerate(self.pred_to_gt) if g is None)


def match_detections(
    pred_masks: Sequence[np.ndarray],
    gt_masks: Sequence[np.ndarray],
    rule: str = "iou>=0.1",
    iou: np.ndarray | None = None,
) -> Match:
    """Match detections to ground-truth lesions, one to one, greedily by IoU.

    See the module documentation for the rules. ``pred_masks`` should come in
    decreasing detector score (ties in IoU go to the earlier detection).

    Parameters
    ----------
    pred_masks, gt_masks
        Boolean masks, all of one shape.
    rule
        ``"iou>=0.1"``, ``"iou>=0.5"`` or another ``"iou>=X"``.
    iou
        The IoU matrix when already computed (:func:`iou_matrix`).
    """
    threshold = hit_threshold(rule)
    matrix = iou_matrix(pred_masks, gt_masks) if iou is None else np.asarray(iou, dtype=float)
    if matrix.shape != (len(pred_masks), len(gt_masks)):
        raise ValueError(
            f"IoU matrix has shape {matrix.shape}, expected {(len(pred_masks), len(gt_masks))}"
        )
    candidates = [
        (-float(matrix[i, j]), i, j)
        for i in range(matrix.shape[0])
        for j in range(matrix.shape[1])
        if matrix[i, j] > 0.0 and matrix[i, j] >= threshold
    ]
    pred_to_gt: list[int | None] = [None] * matrix.shape[0]
    gt_to_pred: list[int | None] = [None] * matrix.shape[1]
    pairs = []
    for negative, i, j in sorted(candidates):
        if pred_to_gt[i] is None and gt_to_pred[j] is None:
            pred_to_gt[i], gt_to_pred[j] = j, i
            pairs.append((i, j, -negative))
    return Match(
        rule=rule,
        pairs=tuple(pairs),
        pred_to_gt=tuple(pred_to_gt),
        gt_to_pred=tuple(gt_to_pred),
        iou=matrix,
    )


# --- binary classification ----------------------------------------------------------------------


def _binary(name: str, values: Sequence[Any] | np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.dtype == bool:
        return array
    truth = array == 1
    if array.size and not np.all(truth | (array == 0)):
        raise ValueError(f"{name} must hold 0 and 1 (or booleans)")
    return truth


def labels_at(scores: Sequence[float] | np.ndarray, threshold: float) -> np.ndarray:
    """Binary labels of ``scores`` at ``threshold``: 1 where ``score >= threshold``."""
    values = np.asarray(scores, dtype=float)
    return (values >= float(threshold)).astype(int)


@dataclass(frozen=True)
class Confusion:
    """Counts of a binary confusion matrix."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def positives(self) -> int:
        return self.tp + self.fn

    @property
    def negatives(self) -> int:
        return self.tn + self.fp

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn


def confusion(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> Confusion:
    """The confusion matrix of binary truth and predictions."""
    truth, pred = _binary("y_true", y_true), _binary("y_pred", y_pred)
    if truth.shape != pred.shape:
        raise ValueError(f"y_true has {truth.size} values, y_pred {pred.size}")
    tp = int(np.count_nonzero(truth & pred))
    positives = int(np.count_nonzero(truth))
    predicted = int(np.count_nonzero(pred))
    fp = predicted - tp
    fn = positives - tp
    return Confusion(tp=tp, fp=fp, tn=truth.size - tp - fp - fn, fn=fn)


def sensitivity(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """TP / (TP + FN). Undefined without a positive case."""
    c = confusion(y_true, y_pred)
    if c.positives == 0:
        raise UndefinedMetricError("no positive case: sensitivity is undefined")
    return c.tp / c.positives


def specificity(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """TN / (TN + FP). Undefined without a negative case."""
    c = confusion(y_true, y_pred)
    if c.negatives == 0:
        raise UndefinedMetricError("no negative case: specificity is undefined")
    return c.tn / c.negatives


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """(TP + TN) / all. Undefined without a case."""
    c = confusion(y_true, y_pred)
    if c.total == 0:
        raise UndefinedMetricError("no case: accuracy is undefined")
    return (c.tp + c.tn) / c.total


def f1_score(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """2 TP / (2 TP + FP + FN). Undefined when there is no positive case and no
    positive prediction (0 / 0; scikit-learn would print a warning and return 0)."""
    c = confusion(y_true, y_pred)
    denominator = 2 * c.tp + c.fp + c.fn
    if denominator == 0:
        raise UndefinedMetricError("no positive case and no positive prediction: F1 is undefined")
    return 2 * c.tp / denominator


def roc_auc(y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), as
    :func:`sklearn.metrics.roc_auc_score`, computed from ranks (Mann-Whitney U):
    fast enough for thousands of bootstrap resamples.

    Raises
    ------
    UndefinedMetricError
        When the cases are all of one class.
    ValueError
        For non-finite scores or mismatched lengths.
    """
    truth = _binary("y_true", y_true)
    values = np.asarray(scores, dtype=float)
    if values.shape != truth.shape:
        raise ValueError(f"y_true has {truth.size} values, scores {values.size}")
    if not np.isfinite(values).all():
        raise ValueError("scores must be finite")
    positives = int(truth.sum())
    negatives = truth.size - positives
    if positives == 0 or negatives == 0:
        present = "positive" if positives else "negative"
        raise UndefinedMetricError(
            f"all {truth.size} cases are {present}: the ROC AUC needs both classes"
        )
    u = float(_average_ranks(values)[truth].sum()) - positives * (positives + 1) / 2.0
    return u / (positives * negatives)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (scipy's ``rankdata``, method average)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # start index of each run of equal values, and the run each sorted value belongs to
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    run = np.cumsum(np.concatenate(([True], ordered[1:] != ordered[:-1]))) - 1
    ends = np.append(starts[1:], ordered.size)
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(values.size, dtype=float)
    ranks[order] = average[run]
    return ranks


def mean(values: Sequence[float] | np.ndarray) -> float:
    """The arithmetic mean. Undefined for no value."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        raise UndefinedMetricError("no value: the mean is undefined")
    return float(array.mean())


# --- values with confidence intervals -------------------------------------------------------------


@dataclass(frozen=True)
class MetricValue:
    """A measure on stated data: its value with a confidence interval, or why there is none.

    Exactly one of these holds:

    * ``value`` and ``ci_low`` / ``ci_high`` are numbers (``reason`` None);
    * ``value`` is a number, the interval None and ``reason`` says why there is
      no interval (bootstrap disabled, every resample undefined);
    * ``value`` is None and ``reason`` says why the measure is not computable.

    Attributes
    ----------
    value
        The measure on all ``n`` cases.
    ci_low, ci_high
        Percentile bootstrap interval (level ``1 - alpha``).
    n
        The number of cases the measure was computed on.
    reason
        Why the value or the interval is missing.
    numerator, denominator
        For a proportion: the counts behind it (e.g. 302 of 363 lesions).
    n_resamples
        Bootstrap resamples drawn.
    n_skipped
        Resamples on which the measure was undefined (e.g. one class only);
        the interval comes from the other ``n_resamples - n_skipped``.
    alpha
        1 - the interval's level (0.05: a 95 % interval).
    """

    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0
    reason: str | None = None
    numerator: int | None = None
    denominator: int | None = None
    n_resamples: int = 0
    n_skipped: int = 0
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if self.value is None and not self.reason:
            raise ValueError("a MetricValue without a value must say why (reason)")
        if (self.ci_low is None) != (self.ci_high is None):
            raise ValueError("a confidence interval needs both bounds")
        if self.value is not None and self.ci_low is None and not self.reason:
            raise ValueError("a MetricValue without a confidence interval must say why (reason)")
        if self.value is None and self.ci_low is not None:
            raise ValueError("a confidence interval without a value")

    @classmethod
    def undefined(cls, reason: str, n: int = 0) -> MetricValue:
        """A measure that cannot be computed on ``n`` cases, and why."""
        return cls(value=None, n=n, reason=reason)

    @property
    def computed(self) -> bool:
        """True when there is a value."""
        return self.value is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: value, ci (``[low, high]`` or None), n, reason, counts, bootstrap."""
        data = asdict(self)
        low, high = data.pop("ci_low"), data.pop("ci_high")
        data["ci"] = None if low is None else [low, high]
        return data

    def format(self, percent: bool = False, digits: int = 2) -> str:
        """``0.88 [0.86, 0.91]``, ``83% (302/363) [79, 87]``, or ``n/a`` (see :attr:`reason`)."""
        if self.value is None:
            return "n/a"

        def number(v: float) -> str:
            return f"{100 * v:.0f}" if percent else f"{v:.{digits}f}"

        text = number(self.value) + ("%" if percent else "")
        if self.numerator is not None and self.denominator is not None:
            text += f" ({self.numerator}/{self.denominator})"
        if self.ci_low is not None and self.ci_high is not None:
            text += f" [{number(self.ci_low)}, {number(self.ci_high)}]"
        else:
            text += " [no CI]"
        return text


def _evaluate(metric_fn: Callable[..., float], arrays: Sequence[np.ndarray]) -> float:
    """The metric's value, or UndefinedMetricError (also for a non-finite result)."""
    value = float(metric_fn(*arrays))
    if not math.isfinite(value):
        raise UndefinedMetricError(f"the measure is not finite ({value})")
    return value


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Sequence[Any] | np.ndarray,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> MetricValue:
    """A measure on the cases and its percentile bootstrap confidence interval.

    The cases (the rows of ``arrays``, resampled together) are drawn with
    replacement ``n_resamples`` times, from ``numpy.random.default_rng(seed)``
    (one resample after the other, each a draw of ``n`` indexes), so the same
    seed and ``n`` give the same resamples for every measure. The interval is
    the ``alpha/2`` and ``1 - alpha/2`` percentiles (numpy's linear
    interpolation) of the measure over the resamples on which it is defined;
    the others (``metric_fn`` raised :class:`UndefinedMetricError` or gave a
    non-finite value, e.g. a resample with one class for an AUC) are skipped
    and counted in :attr:`MetricValue.n_skipped`.

    Parameters
    ----------
    metric_fn
        Called as ``metric_fn(*arrays)`` on all cases and on each resample.
    arrays
        One or more arrays of the same length (the cases).
    n_resamples
        0 disables the bootstrap (the value has no interval; the reason says so).
    seed
        Seed of the resampling.
    alpha
        0.05 for a 95 % interval.

    Returns
    -------
    MetricValue
        With ``value`` None and the reason when the measure is undefined on
        all cases.
    """
    data = _bootstrap_data(arrays, n_resamples, alpha)
    n = len(data[0])
    try:
        value = _evaluate(metric_fn, data)
    except UndefinedMetricError as exc:
        return MetricValue.undefined(str(exc), n=n)
    if n_resamples == 0:
        return MetricValue(value=value, n=n, reason="bootstrap disabled (0 resamples)", alpha=alpha)
    values = _resampled_values(metric_fn, data, n_resamples, seed)
    skipped = n_resamples - len(values)
    if not values:
        return MetricValue(
            value=value,
            n=n,
            reason=f"no confidence interval: the measure is undefined on all {n_resamples} "
            "bootstrap resamples",
            n_resamples=n_resamples,
            n_skipped=skipped,
            alpha=alpha,
        )
    low, high = np.percentile(np.asarray(values), [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return MetricValue(
        value=value,
        ci_low=float(low),
        ci_high=float(high),
        n=n,
        n_resamples=n_resamples,
        n_skipped=skipped,
        alpha=alpha,
    )


def _bootstrap_data(
    arrays: Sequence[Sequence[Any] | np.ndarray], n_resamples: int, alpha: float
) -> list[np.ndarray]:
    """The cases as arrays of one length, after checking the bootstrap's arguments."""
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array of cases")
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be >= 0, got {n_resamples}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    data = [np.asarray(a) for a in arrays]
    n = len(data[0])
    if any(len(a) != n for a in data):
        raise ValueError(f"arrays differ in length: {[len(a) for a in data]}")
    return data


def _resampled_values(
    metric_fn: Callable[..., float], data: Sequence[np.ndarray], n_resamples: int, seed: int
) -> list[float]:
    """The measure on each resample where it is defined (the undefined ones are dropped)."""
    n = len(data[0])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        index = rng.integers(0, n, size=n)
        try:
            values.append(_evaluate(metric_fn, [a[index] for a in data]))
        except UndefinedMetricError:
            continue
    return values

"""Evaluation metrics against hand-computed cases: Dice / IoU, matching under both hit
rules, binary measures, ROC AUC and the percentile bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from cem_node.training.metrics import (
    HIT_RULES,
    MetricValue,
    UndefinedMetricError,
    accuracy,
    bootstrap_ci,
    confusion,
    dice,
    f1_score,
    hit_threshold,
    iou_matrix,
    labels_at,
    mask_iou,
    match_detections,
    mean,
    roc_auc,
    sensitivity,
    specificity,
)


def box(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


# --- masks ----------------------------------------------------------------------------------


def test_dice_and_iou_of_two_known_masks() -> None:
    a = box((6, 6), slice(0, 2), slice(0, 2))  # 4 pixels
    b = box((6, 6), slice(0, 2), slice(1, 4))  # 6 pixels, 2 shared with a
    assert dice(a, b) == pytest.approx(2 * 2 / (4 + 6))  # 0.4
    assert mask_iou(a, b) == pytest.approx(2 / 8)  # 0.25
    assert dice(a, a) == 1.0 and mask_iou(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    # Dice = 2 IoU / (1 + IoU)
    assert dice(a, b) == pytest.approx(2 * 0.25 / 1.25)


def test_dice_of_two_empty_masks_is_undefined_and_shapes_must_agree() -> None:
    empty = np.zeros((4, 4), dtype=bool)
    with pytest.raises(UndefinedMetricError, match="empty"):
        dice(empty, empty)
    with pytest.raises(UndefinedMetricError, match="empty"):
        mask_iou(empty, empty)
    assert dice(empty, box((4, 4), slice(0, 1), slice(0, 1))) == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice(empty, np.zeros((4, 5), dtype=bool))


# --- matching -------------------------------------------------------------------------------


def test_hit_rules_parse() -> None:
    assert HIT_RULES == {"iou>=0.1": 0.1, "iou>=0.5": 0.5}
    assert hit_threshold("iou>=0.1") == 0.1
    assert hit_threshold(" IoU >= 0.5 ") == 0.5
    for bad in ("iou>0.5", "dice>=0.5", "iou>=0", "iou>=1.5"):
        with pytest.raises(ValueError, match="hit rule"):
            hit_threshold(bad)


def test_matching_under_both_rules() -> None:
    shape = (20, 20)
    g0 = box(shape, slice(0, 10), slice(0, 10))  # 100 px
    g1 = box(shape, slice(12, 20), slice(12, 20))  # 64 px
    p0 = box(shape, slice(0, 10), slice(6, 16))  # overlaps g0 by 40 of 160: IoU 0.25
    p1 = box(shape, slice(12, 20), slice(13, 20))  # inside g1: IoU 56 / 64 = 0.875
    p2 = box(shape, slice(0, 3), slice(17, 20))  # nothing
    preds, gts = [p0, p1, p2], [g0, g1]
    matrix = iou_matrix(preds, gts)
    assert matrix[0, 0] == pytest.approx(0.25)
    assert matrix[1, 1] == pytest.approx(0.875)
    assert matrix[2].tolist() == [0.0, 0.0]

    loose = match_detections(preds, gts, "iou>=0.1")
    assert loose.gt_to_pred == (0, 1)
    assert loose.pred_to_gt == (0, 1, None)
    assert loose.hits == (True, True)
    assert loose.false_positives == (2,)
    assert [(i, j) for i, j, _ in loose.pairs] == [(1, 1), (0, 0)]  # decreasing IoU

    strict = match_detections(preds, gts, "iou>=0.5")
    assert strict.gt_to_pred == (None, 1)
    assert strict.hits == (False, True)
    assert strict.false_positives == (0, 2)


def test_matching_is_one_to_one_and_greedy_by_iou() -> None:
    shape = (10, 20)
    g0 = box(shape, slice(0, 10), slice(0, 10))
    g1 = box(shape, slice(0, 10), slice(10, 20))
    big = box(shape, slice(0, 10), slice(2, 20))  # IoU with g0 80/180, with g1 100/180
    small = box(shape, slice(0, 10), slice(11, 20))  # IoU with g1 0.9
    match = match_detections([big, small], [g0, g1], "iou>=0.1")
    # the best pair (small, g1) goes first; big then takes g0
    assert match.pred_to_gt == (0, 1)
    assert match.gt_to_pred == (0, 1)
    # two detections of one lesion: the second is a false positive
    twice = match_detections([g0, g0.copy()], [g0], "iou>=0.5")
    assert twice.gt_to_pred == (0,)
    assert twice.false_positives == (1,)
    # nothing to match
    empty = match_detections([], [g0], "iou>=0.1")
    assert empty.hits == (False,) and empty.pred_to_gt == ()


# --- binary measures ------------------------------------------------------------------------

Y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
P = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]  # TP 3, FN 1, FP 1, TN 5


def test_binary_measures_on_a_tiny_table() -> None:
    assert confusion(Y, P).__dict__ == {"tp": 3, "fp": 1, "tn": 5, "fn": 1}
    assert sensitivity(Y, P) == pytest.approx(3 / 4)
    assert specificity(Y, P) == pytest.approx(5 / 6)
    assert accuracy(Y, P) == pytest.approx(8 / 10)
    assert f1_score(Y, P) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert f1_score(Y, P) == pytest.approx(skm.f1_score(Y, P))
    assert sensitivity(Y, P) == pytest.approx(skm.recall_score(Y, P))
    assert accuracy(Y, P) == pytest.approx(skm.accuracy_score(Y, P))


def test_binary_measures_say_when_they_are_undefined() -> None:
    with pytest.raises(UndefinedMetricError, match="no positive case"):
        sensitivity([0, 0], [0, 1])
    with pytest.raises(UndefinedMetricError, match="no negative case"):
        specificity([1, 1], [0, 1])
    with pytest.raises(UndefinedMetricError, match="F1 is undefined"):
        f1_score([0, 0], [0, 0])
    with pytest.raises(UndefinedMetricError, match="no case"):
        accuracy([], [])
    with pytest.raises(UndefinedMetricError, match="no value"):
        mean([])
    with pytest.raises(ValueError, match="0 and 1"):
        sensitivity([2, 1], [1, 1])


def test_labels_at_a_threshold_are_inclusive() -> None:
    assert labels_at([0.2, 0.5, 0.7], 0.5).tolist() == [0, 1, 1]


def test_roc_auc_on_a_tiny_case() -> None:
    # pairs (positive, negative): (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, *) yes: 3 of 4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1)  # many ties
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s))
    with pytest.raises(UndefinedMetricError, match="both classes"):
        roc_auc([1, 1, 1], [0.1, 0.2, 0.3])


# --- bootstrap ------------------------------------------------------------------------------


def test_bootstrap_of_a_constant_measure_has_a_zero_width_interval() -> None:
    result = bootstrap_ci(lambda x: 0.7, np.arange(10), n_resamples=200, seed=1)
    assert (result.value, result.ci_low, result.ci_high) == (0.7, 0.7, 0.7)
    assert result.n == 10 and result.n_resamples == 200 and result.n_skipped == 0


def test_bootstrap_interval_of_a_mean_contains_the_true_mean() -> None:
    # symmetric around 5, so the sample mean is exactly the true mean 5
    deviations = np.random.default_rng(7).normal(0.0, 1.0, size=200)
    sample = np.concatenate([5.0 + deviations, 5.0 - deviations])
    result = bootstrap_ci(mean, sample, n_resamples=2000, seed=0)
    assert result.value == pytest.approx(5.0)
    assert result.ci_low < 5.0 < result.ci_high
    assert result.ci_low < result.value < result.ci_high
    # about +-1.96 standard errors
    standard_error = sample.std() / np.sqrt(sample.size)
    assert result.ci_high - result.ci_low == pytest.approx(2 * 1.96 * standard_error, rel=0.15)


def test_bootstrap_is_reproducible_from_its_seed() -> None:
    y = np.array(Y)
    p = np.array(P)
    first = bootstrap_ci(sensitivity, y, p, n_resamples=300, seed=42)
    again = bootstrap_ci(sensitivity, y, p, n_resamples=300, seed=42)
    other = bootstrap_ci(sensitivity, y, p, n_resamples=300, seed=43)
    assert first == again
    assert (first.ci_low, first.ci_high, first.n_skipped) != (
        other.ci_low,
        other.ci_high,
        other.n_skipped,
    )


def test_bootstrap_counts_the_resamples_where_the_measure_is_undefined() -> None:
    y = np.array([1] * 9 + [0])
    s = np.linspace(0.1, 1.0, 10)
    result = bootstrap_ci(roc_auc, y, s, n_resamples=2000, seed=5)
    # count the resamples without the single negative case, drawn the same way
    rng = np.random.default_rng(5)
    expected = sum(1 for _ in range(2000) if not (rng.integers(0, 10, size=10) == 9).any())
    assert result.n_skipped == expected
    assert 500 < expected < 900  # 0.9 ** 10 = 35 %
    assert result.value == pytest.approx(0.0)
    assert result.ci_low == result.ci_high == 0.0


def test_bootstrap_of_an_undefined_measure_gives_the_reason() -> None:
    result = bootstrap_ci(roc_auc, np.ones(5, dtype=int), np.arange(5.0), n_resamples=100)
    assert result.value is None and result.ci_low is None
    assert "both classes" in result.reason
    assert result.n == 5
    disabled = bootstrap_ci(mean, np.arange(4.0), n_resamples=0)
    assert disabled.value == 1.5 and disabled.ci_low is None
    assert "disabled" in disabled.reason


def test_metric_value_holds_a_value_with_an_interval_or_a_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        MetricValue(value=None)
    with pytest.raises(ValueError, match="reason"):
        MetricValue(value=0.5)
    with pytest.raises(ValueError, match="both bounds"):
        MetricValue(value=0.5, ci_low=0.4)
    value = MetricValue(value=0.75, ci_low=0.5, ci_high=1.0, n=4, numerator=3, denominator=4)
    assert value.to_dict()["ci"] == [0.5, 1.0]
    assert value.format(percent=True) == "75% (3/4) [50, 100]"
    assert MetricValue.undefined("no benign lesion", 3).format() == "n/a"

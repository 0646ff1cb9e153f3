"""Fusion and decisions: DL probability rules, mean fusion, Youden thresholds, summaries."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cem_node.contracts.findings import BreastSummary, PatientSummary
from cem_node.contracts.params import DecisionThresholds
from cem_node.pipeline.fusion import (
    LesionDecision,
    breast_summaries,
    decide_lesion,
    dl_probability,
    dl_probability_from_label,
    fuse,
    label_for,
    patient_summary,
    youden_threshold,
)

THRESHOLDS = DecisionThresholds(dl=0.6, radiomics=0.4, fused=0.5, breast=0.7, patient=0.8)


# --- DL probability --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p_benign", "p_malignant", "expected"),
    [(0.2, 0.6, 0.75), (0.3, 0.1, 0.25), (0.0, 0.9, 1.0), (0.5, 0.0, 0.0), (0.45, 0.45, 0.5)],
)
def test_dl_probability_renormalises_over_the_lesion_classes(
    p_benign: float, p_malignant: float, expected: float
) -> None:
    assert dl_probability(p_benign, p_malignant) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("p_benign", "p_malignant", "match"),
    [
        (0.0, 0.0, "both 0"),
        (-0.1, 0.5, "p_benign"),
        (0.2, 1.5, "p_malignant"),
        (0.7, 0.6, "exceeds 1"),
        (float("nan"), 0.5, "p_benign"),
    ],
)
def test_dl_probability_rejects_bad_scores(p_benign: float, p_malignant: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        dl_probability(p_benign, p_malignant)


def test_dl_probability_from_label_is_the_authors_rule() -> None:
    assert dl_probability_from_label("malignant", 0.8) == pytest.approx(0.9)
    assert dl_probability_from_label("benign", 0.8) == pytest.approx(0.1)
    assert dl_probability_from_label("malignant", 0.0) == 0.5
    assert dl_probability_from_label("benign", 0.0) == 0.5
    assert dl_probability_from_label("malignant", 1.0) == 1.0
    assert dl_probability_from_label("benign", 1.0) == 0.0
    with pytest.raises(ValueError, match="label must be"):
        dl_probability_from_label("background", 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="score"):
        dl_probability_from_label("benign", 1.2)


# --- fuse and label_for ----------------------------------------------------------------------


def test_fuse_is_the_mean_or_dl_alone() -> None:
    assert fuse(0.8, 0.4) == (pytest.approx(0.6), "mean")
    assert fuse(0.0, 1.0) == (0.5, "mean")
    assert fuse(0.7, None) == (0.7, "dl_only")
    with pytest.raises(ValueError, match="radiomics"):
        fuse(0.5, 1.1)
    with pytest.raises(ValueError, match="dl"):
        fuse(-0.5, 0.5)


def test_label_for_is_malignant_at_the_threshold() -> None:
    assert label_for(0.5, 0.5) == "malignant"
    assert label_for(np.nextafter(0.5, 0.0), 0.5) == "benign"
    assert label_for(0.0, 0.0) == "malignant"
    assert label_for(1.0, 1.0) == "malignant"
    assert label_for(0.99, 1.0) == "benign"
    with pytest.raises(ValueError, match="threshold"):
        label_for(0.5, 1.5)


# --- Youden threshold ------------------------------------------------------------------------


def test_youden_threshold_by_hand() -> None:
    # scores 0.8 (M), 0.4 (B), 0.35 (M), 0.1 (B); positive when score >= t:
    #   t=0.8 : TPR 1/2, FPR 0   -> J 0.5
    #   t=0.4 : TPR 1/2, FPR 1/2 -> J 0
    #   t=0.35: TPR 1,   FPR 1/2 -> J 0.5
    #   t=0.1 : TPR 1,   FPR 1   -> J 0
    # a tie between 0.8 and 0.35: the lower (more sensitive) threshold wins
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.35


def test_youden_threshold_unique_maximum_and_separation() -> None:
    # t=0.6: TPR 1, FPR 1/3 -> J 2/3; t=0.3: TPR 1, FPR 2/3; t=0.9: TPR 1/2, FPR 0
    assert youden_threshold([0, 0, 0, 1, 1], [0.1, 0.3, 0.7, 0.6, 0.9]) == 0.6
    # perfect separation: the lowest malignant score
    assert youden_threshold(np.array([True, False, True, False]), [0.8, 0.2, 0.7, 0.3]) == 0.7
    # never the +inf threshold sklearn puts first
    assert np.isfinite(youden_threshold([0, 1], [0.9, 0.1]))


@pytest.mark.parametrize(
    ("y", "scores", "match"),
    [
        ([1, 1, 1], [0.2, 0.5, 0.9], "both classes.*malignant"),
        ([0, 0], [0.2, 0.5], "both classes.*benign"),
        ([], [], "none"),
        ([0, 1], [0.5], "2 values"),
        ([0, 2], [0.1, 0.5], "0 \\(benign\\) and 1"),
        ([0, 1], [0.1, float("nan")], "finite"),
    ],
)
def test_youden_threshold_errors(y: list[int], scores: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        youden_threshold(y, scores)


# --- lesion decisions ------------------------------------------------------------------------


def test_decide_lesion_agreement() -> None:
    agree = decide_lesion(0.7, 0.45, THRESHOLDS)
    assert agree == LesionDecision(
        dl_label="malignant",
        radiomics_label="malignant",
        fused_probability=pytest.approx(0.575),  # type: ignore[arg-type]
        fused_source="mean",
        fused_label="malignant",
        agreement=True,
    )
    disagree = decide_lesion(0.5, 0.45, THRESHOLDS)  # DL benign (< 0.6), radiomics malignant
    assert (disagree.dl_label, disagree.radiomics_label) == ("benign", "malignant")
    assert disagree.agreement is False
    assert disagree.fused_label == "benign"  # 0.475 < 0.5
    both_benign = decide_lesion(0.1, 0.2, THRESHOLDS)
    assert both_benign.agreement is True
    assert both_benign.fused_label == "benign"
    with pytest.raises(dataclasses.FrozenInstanceError):
        agree.fused_label = "benign"  # type: ignore[misc]


def test_decide_lesion_without_radiomics_uses_dl_alone() -> None:
    decision = decide_lesion(0.55, None, THRESHOLDS)
    assert decision.radiomics_label is None
    assert decision.agreement is None
    assert decision.fused_source == "dl_only"
    assert decision.fused_probability == 0.55
    # 0.55 >= fused threshold 0.5 but < DL threshold 0.6: judged as the DL model alone
    assert decision.dl_label == decision.fused_label == "benign"


# --- breast and patient summaries ------------------------------------------------------------


def test_breast_summaries_max_threshold_and_empty_breast() -> None:
    lesions = [("R", 0.3), ("R", 0.75), ("R", 0.5)]
    summaries = breast_summaries(lesions, ["L", "R"], THRESHOLDS)
    assert summaries == [
        BreastSummary(laterality="L", lesion_count=0, score=None, label="benign"),
        BreastSummary(laterality="R", lesion_count=3, score=0.75, label="malignant"),
    ]
    # just below the breast threshold (0.7)
    below = breast_summaries([("L", 0.69), ("L", 0.2)], ["L"], THRESHOLDS)
    assert below == [BreastSummary(laterality="L", lesion_count=2, score=0.69, label="benign")]
    at = breast_summaries([("L", 0.7)], ["L", "L"], THRESHOLDS)
    assert at == [BreastSummary(laterality="L", lesion_count=1, score=0.7, label="malignant")]
    assert breast_summaries([], [], THRESHOLDS) == []


def test_breast_summaries_errors() -> None:
    with pytest.raises(ValueError, match="not among the analysed"):
        breast_summaries([("R", 0.5)], ["L"], THRESHOLDS)
    with pytest.raises(ValueError, match="laterality must be"):
        breast_summaries([], ["B"], THRESHOLDS)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="lesion 0 fused probability"):
        breast_summaries([("L", 1.5)], ["L"], THRESHOLDS)


def test_patient_summary() -> None:
    assert patient_summary([0.3, 0.85, 0.1], THRESHOLDS) == PatientSummary(
        lesion_count=3, score=0.85, label="malignant"
    )
    assert patient_summary([0.75], THRESHOLDS) == PatientSummary(
        lesion_count=1,
        score=0.75,
        label="benign",  # above the breast, below the patient threshold
    )
    assert patient_summary([], THRESHOLDS) == PatientSummary(
        lesion_count=0, score=None, label="benign"
    )
    with pytest.raises(ValueError, match="lesion 1"):
        patient_summary([0.2, float("nan")], THRESHOLDS)

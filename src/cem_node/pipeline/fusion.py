"""Fusion of the DL and radiomics probabilities, and the binary decisions.

PAPER.md "Detector" and "Fusion and decisions":

* the DL probability of malignancy comes from the detector's scores
  (:func:`dl_probability`, or the authors' rule :func:`dl_probability_from_label`);
* the fused probability is the mean of the DL and radiomics probabilities, or
  the DL probability alone when radiomics could not be computed (:func:`fuse`);
* every binary decision compares a probability with a Youden-index threshold
  chosen on the TRAINING predictions (:func:`youden_threshold`), one per model
  and level (:class:`~cem_node.contracts.params.DecisionThresholds`);
* per breast and per patient the paper's rule (its Appendix S1) is not
  available: the score is the maximum fused probability over the lesions of the
  breast (patient), judged with its own threshold (:func:`breast_summaries`,
  :func:`patient_summary`).

Every function here is pure; invalid input raises :class:`ValueError` with
the offending value in the message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cem_node.contracts.findings import BreastSummary, PatientSummary
from cem_node.contracts.params import DecisionThresholds

__all__ = [
    "FusedSource",
    "Label",
    "Laterality",
    "LesionDecision",
    "breast_summaries",
    "decide_lesion",
    "dl_probability",
    "dl_probability_from_label",
    "fuse",
    "label_for",
    "patient_summary",
    "youden_threshold",
]

Label = Literal["benign", "malignant"]
Laterality = Literal["L", "R"]
FusedSource = Literal["mean", "dl_only"]

_LATERALITIES: tuple[str, str] = ("L", "R")


def _probability(name: str, value: float) -> float:
    """``value`` as a float in [0, 1], or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    result = float(value)
    if not (math.isfinite(result) and 0.0 <= result <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return result


def dl_probability(p_benign: float, p_malignant: float) -> float:
    """P(malignant) from the detector's softmax scores of the two lesion classes.

    The detector (torchvision Mask R-CNN, classes background, benign,
    malignant) gives every box a softmax over the three classes. The
    probability that the lesion is malignant, given that it is a lesion, is the
    malignant score renormalised over the two lesion classes::

        P(malignant) = p_malignant / (p_benign + p_malignant)

    PAPER.md ("Detector") allows this rule or the authors' rule
    (:func:`dl_probability_from_label`); a bundle must use the same one in
    training (when its DL threshold is chosen) and inference.

    Parameters
    ----------
    p_benign, p_malignant
        Softmax scores of the benign and malignant classes for one box, each
        in [0, 1], their sum in (0, 1] (a small tolerance above 1 is allowed
        for rounding).

    Returns
    -------
    float
        The probability of malignancy in [0, 1].

    Raises
    ------
    ValueError
        When a score is outside [0, 1] or not finite, or when both are 0 (the
        box is pure background and has no lesion probability).
    """
    benign = _probability("p_benign", p_benign)
    malignant = _probability("p_malignant", p_malignant)
    total = benign + malignant
    if total <= 0.0:
        raise ValueError("p_benign and p_malignant are both 0: the box holds no lesion class")
    if total > 1.0 + 1e-6:
        raise ValueError(
            f"p_benign + p_malignant = {total} exceeds 1: these are not softmax scores of one box"
        )
    return malignant / total


def dl_probability_from_label(label: Label, score: float) -> float:
    """P(malignant) from the detector's label and score (the authors' rule).

    ``0.5 + 0.5 * score`` for a malignant box and ``0.5 - 0.5 * score`` for a
    benign one (PAPER.md "Detector", from the authors' follow-up work): a
    confident malignant box approaches 1, a confident benign one 0, and an
    uncertain box of either class stays near 0.5.

    Parameters
    ----------
    label
        ``"benign"`` or ``"malignant"``, the box's class.
    score
        The box's score for that class, in [0, 1].

    Returns
    -------
    float
        The probability of malignancy in [0, 1].

    Raises
    ------
    ValueError
        For another label or a score outside [0, 1].
    """
    value = _probability("score", score)
    if label == "malignant":
        return 0.5 + 0.5 * value
    if label == "benign":
        return 0.5 - 0.5 * value
    raise ValueError(f"label must be 'benign' or 'malignant', got {label!r}")


def fuse(dl: float, radiomics: float | None) -> tuple[float, FusedSource]:
    """The fused probability of malignancy of one lesion.

    Parameters
    ----------
    dl
        The DL probability, in [0, 1].
    radiomics
        The radiomics probability, in [0, 1], or ``None`` when it could not be
        computed (mask too small, extraction failed, ...).

    Returns
    -------
    tuple of (float, {"mean", "dl_only"})
        The mean of the two probabilities and ``"mean"``; or the DL probability
        and ``"dl_only"`` when ``radiomics`` is ``None``.

    Raises
    ------
    ValueError
        When a probability is outside [0, 1] or not finite.
    """
    dl_value = _probability("dl", dl)
    if radiomics is None:
        return dl_value, "dl_only"
    radiomics_value = _probability("radiomics", radiomics)
    return (dl_value + radiomics_value) / 2.0, "mean"


def label_for(p: float, threshold: float) -> Label:
    """The binary label of probability ``p`` at ``threshold``.

    ``"malignant"`` when ``p >= threshold``, else ``"benign"``. The comparison
    is inclusive, as in :func:`sklearn.metrics.roc_curve` (a score equal to a
    threshold counts as positive), so a threshold from
    :func:`youden_threshold` reproduces the training operating point exactly.

    Raises
    ------
    ValueError
        When ``p`` or ``threshold`` is outside [0, 1] or not finite.
    """
    value = _probability("p", p)
    limit = _probability("threshold", threshold)
    return "malignant" if value >= limit else "benign"


def youden_threshold(
    y_true: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> float:
    """The Youden-index threshold: argmax of TPR - FPR over the ROC thresholds.

    The candidates are the thresholds of :func:`sklearn.metrics.roc_curve`
    (``drop_intermediate=False``), i.e. the distinct scores; sklearn's first
    threshold (``inf``: nothing positive, J = 0) is not a candidate, so the
    result is always one of the scores and usable with :func:`label_for`
    (``score >= threshold`` is malignant).

    Ties: when several thresholds reach the maximum J, the LOWEST of them is
    returned, i.e. the operating point with the highest sensitivity (a missed
    cancer costs more than a false alarm). Example: ``y = [0, 0, 1, 1]``,
    ``scores = [0.1, 0.4, 0.35, 0.8]`` reach J = 0.5 at 0.8 (TPR 0.5, FPR 0)
    and at 0.35 (TPR 1, FPR 0.5); the result is 0.35.

    Parameters
    ----------
    y_true
        Binary truth per case: 1 (or True) malignant, 0 (or False) benign.
    scores
        Probability of malignancy per case (any finite values; for the bundle's
        thresholds they are probabilities in [0, 1]).

    Returns
    -------
    float
        The threshold.

    Raises
    ------
    ValueError
        When the lengths differ, there are no cases, a truth value is not 0/1,
        a score is not finite, or only one class is present (the ROC curve,
        hence the Youden index, is undefined).
    """
    from sklearn.metrics import roc_curve

    truth = np.asarray(y_true)
    values = np.asarray(scores, dtype=float)
    if truth.ndim != 1 or values.ndim != 1:
        raise ValueError("y_true and scores must be one-dimensional")
    if truth.shape != values.shape:
        raise ValueError(f"y_true has {truth.size} values, scores has {values.size}")
    if truth.size == 0:
        raise ValueError("youden_threshold needs at least one case of each class, got none")
    if truth.dtype != bool and not np.isin(truth, (0, 1)).all():
        bad = sorted({repr(v) for v in truth.tolist() if v not in (0, 1)})
        raise ValueError(f"y_true must hold 0 (benign) and 1 (malignant), got {', '.join(bad)}")
    if not np.isfinite(values).all():
        raise ValueError(f"scores must be finite; {int((~np.isfinite(values)).sum())} are not")
    truth = truth.astype(int)
    positives = int(truth.sum())
    if positives in (0, truth.size):
        present = "malignant (1)" if positives else "benign (0)"
        raise ValueError(
            f"youden_threshold needs both classes; all {truth.size} cases are {present}"
        )
    fpr, tpr, thresholds = roc_curve(truth, values, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    youden = tpr - fpr
    best = np.flatnonzero(youden == youden.max())
    # roc_curve lists thresholds in decreasing order: the last tie is the lowest
    return float(thresholds[best[-1]])


@dataclass(frozen=True)
class LesionDecision:
    """The decisions for one lesion (the decision fields of a findings ``Lesion``).

    Attributes
    ----------
    dl_label
        The DL probability at the DL threshold.
    radiomics_label
        The radiomics probability at the radiomics threshold; ``None`` without
        radiomics.
    fused_probability
        See :func:`fuse`.
    fused_source
        ``"mean"`` or ``"dl_only"``.
    fused_label
        The fused probability at the fused threshold; without radiomics, the DL
        probability at the DL threshold (so it equals ``dl_label``).
    agreement
        Whether ``dl_label`` and ``radiomics_label`` agree; ``None`` without
        radiomics.
    """

    dl_label: Label
    radiomics_label: Label | None
    fused_probability: float
    fused_source: FusedSource
    fused_label: Label
    agreement: bool | None


def decide_lesion(
    dl: float, radiomics: float | None, thresholds: DecisionThresholds
) -> LesionDecision:
    """Fuse and label one lesion.

    The fused threshold was chosen (Youden) on the training MEANS of DL and
    radiomics probabilities; when radiomics is missing the fused probability is
    the DL probability, which is judged with the DL threshold instead, so such
    a lesion gets exactly the label of the DL model alone.

    Parameters
    ----------
    dl
        The DL probability of malignancy.
    radiomics
        The radiomics probability of malignancy, or ``None``.
    thresholds
        The bundle's thresholds (``dl``, ``radiomics`` and ``fused`` are used).

    Returns
    -------
    LesionDecision

    Raises
    ------
    ValueError
        When a probability is outside [0, 1] or not finite.
    """
    dl_label = label_for(dl, thresholds.dl)
    fused, source = fuse(dl, radiomics)
    if radiomics is None:
        return LesionDecision(
            dl_label=dl_label,
            radiomics_label=None,
            fused_probability=fused,
            fused_source=source,
            fused_label=dl_label,
            agreement=None,
        )
    radiomics_label = label_for(radiomics, thresholds.radiomics)
    return LesionDecision(
        dl_label=dl_label,
        radiomics_label=radiomics_label,
        fused_probability=fused,
        fused_source=source,
        fused_label=label_for(fused, thresholds.fused),
        agreement=dl_label == radiomics_label,
    )


def breast_summaries(
    lesions: Iterable[tuple[Laterality, float]],
    lateralities_analysed: Iterable[Laterality],
    thresholds: DecisionThresholds,
) -> list[BreastSummary]:
    """One summary per analysed breast: the maximum fused probability of its lesions.

    The paper's per-breast rule is not available (PAPER.md "Fusion and
    decisions"): a breast's score is the maximum fused probability over its
    lesions (all views), labelled with the breast threshold
    (``thresholds.breast``, its own Youden threshold on the training set). A
    breast without lesions has score ``None`` and label ``"benign"``.

    Parameters
    ----------
    lesions
        ``(laterality, fused_probability)`` per lesion of the study.
    lateralities_analysed
        The breasts that were analysed (``"L"``, ``"R"``); duplicates are
        ignored. The summaries come in this order.
    thresholds
        The bundle's thresholds (``breast`` is used).

    Returns
    -------
    list of BreastSummary

    Raises
    ------
    ValueError
        For an unknown laterality, a lesion in a breast that was not analysed,
        or a probability outside [0, 1].
    """
    order: list[Laterality] = []
    for laterality in lateralities_analysed:
        if laterality not in _LATERALITIES:
            raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
        if laterality not in order:
            order.append(laterality)
    scores: dict[str, list[float]] = {laterality: [] for laterality in order}
    for index, (laterality, probability) in enumerate(lesions):
        if laterality not in _LATERALITIES:
            raise ValueError(f"lesion {index}: laterality must be 'L' or 'R', got {laterality!r}")
        if laterality not in scores:
            raise ValueError(
                f"lesion {index} is in breast {laterality!r}, which is not among the analysed "
                f"breasts {order}"
            )
        scores[laterality].append(_probability(f"lesion {index} fused probability", probability))
    summaries = []
    for laterality in order:
        values = scores[laterality]
        score = max(values) if values else None
        summaries.append(
            BreastSummary(
                laterality=laterality,
                lesion_count=len(values),
                score=score,
                label="benign" if score is None else label_for(score, thresholds.breast),
            )
        )
    return summaries


def patient_summary(
    fused_probabilities: Iterable[float], thresholds: DecisionThresholds
) -> PatientSummary:
    """The patient's (study's) summary: the maximum fused probability over all lesions.

    As for breasts (:func:`breast_summaries`), labelled with the patient
    threshold (``thresholds.patient``); no lesion gives score ``None`` and
    label ``"benign"``.

    Raises
    ------
    ValueError
        When a probability is outside [0, 1] or not finite.
    """
    values = [
        _probability(f"lesion {index} fused probability", p)
        for index, p in enumerate(fused_probabilities)
    ]
    score = max(values) if values else None
    return PatientSummary(
        lesion_count=len(values),
        score=score,
        label="benign" if score is None else label_for(score, thresholds.patient),
    )

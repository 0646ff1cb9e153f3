"""The evaluation report: the paper's Table 2 and Table 3 with bootstrap CIs, plots,
``report.md`` and ``report.json``.

:func:`build_report` computes every measure from the records of
:mod:`cem_node.training.evaluation` into one JSON-ready document;
:func:`write_report` writes it as ``report.json``, renders ``report.md`` from
the same document (so the two never disagree), draws the figures and writes
the per-case records as ``cases.json``.

Every measure is a :class:`~cem_node.training.metrics.MetricValue`: a value
with its 95 % percentile bootstrap interval (2000 resamples of the cases of
the table, seeded), or the reason it cannot be computed on the stated data
(e.g. "no benign lesion among the 12 lesions: AUC and specificity are
undefined"). Nothing is printed that was not computed on the evaluated data;
the paper's numbers are listed apart, for comparison, as the paper's.
A pooled cross-validation report (``ReportContext.bootstrap_unit`` ``patient``)
resamples patients instead, each with all its cases (a cluster bootstrap), and
adds a table per fold (``cross_validation``).

Figures (matplotlib, Agg, no pyplot state): ``roc_curves.png`` and
``calibration_curves.png`` (one panel per mask mode and level, a curve per
model; a panel that cannot be drawn says why) and ``dice_violin.png``
(per-lesion Dice of the hit lesions and per-image Dice of the mask unions).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cem_node.training import metrics as m
from cem_node.training.evaluation import (
    CLASSIFICATION_MODES,
    MODELS,
    CaseTable,
    EvaluationRecords,
    ModelCases,
    classification_cases,
)

__all__ = [
    "DEFINITIONS",
    "PAPER_HEADLINE",
    "ReportContext",
    "ReportFiles",
    "build_report",
    "render_markdown",
    "write_figures",
    "write_report",
]

REPORT_FORMAT = "cem-node-evaluation-report/1"

MODE_TITLES = {
    "manual": "Manual (ground-truth) masks",
    "dl": "DL masks: detections matched to a lesion",
    "dl_all": "DL masks: every detection (false positives = negative)",
}
MODEL_TITLES = {
    "radiomics": "Radiomics",
    "dl": "DL",
    "fused": "DL + radiomics",
    "agreed": "Agreed labels (DL = radiomics)",
}
CLASSIFICATION_MEASURES = ("auc", "sensitivity", "specificity", "accuracy", "f1")
_MODEL_VALUES = {
    "radiomics": "a radiomics probability",
    "dl": "a DL probability",
    "fused": "a DL + radiomics probability",
    "agreed": "agreeing DL and radiomics labels",
}
MEASURE_TITLES = {
    "auc": "AUC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "accuracy": "Accuracy",
    "f1": "F1",
}

DEFINITIONS: dict[str, str] = {
    "hit": (
        "A detection hits a ground-truth lesion when the IoU of their masks passes the rule "
        "(iou>=0.1: the authors' follow-up; iou>=0.5: COCO). Matching is one to one, greedy "
        "by decreasing IoU (ties: the higher-scoring detection)."
    ),
    "identification_sensitivity": (
        "Per lesion: the fraction of ground-truth lesions hit. Per image / per patient: the "
        "fraction of images / patients with at least one ground-truth lesion in which at least "
        "one lesion is hit."
    ),
    "identification_accuracy": (
        "The paper does not define it; here: as sensitivity, but the hit must come from a "
        "detection whose DL label (DL probability at the bundle's DL threshold) is the "
        "lesion's label (benign / malignant). Same denominators as sensitivity."
    ),
    "dice": (
        "Per lesion: Dice with the matched detection's mask (2 IoU / (1 + IoU)); 'mean Dice' "
        "counts a missed lesion as 0, 'mean Dice of hit lesions' leaves it out. Per image: "
        "Dice of the union of the predicted masks vs the union of the ground-truth masks "
        "(images with a lesion; does not depend on the hit rule). Per patient: the same, "
        "pooled over the patient's images with a lesion (2 sum|P&G| / (sum|P| + sum|G|))."
    ),
    "classification_manual": (
        "Cases: the ground-truth lesions. Radiomics on the ground-truth mask with the bundle's "
        "radiomics settings and classifier; DL probability from the detection matched to the "
        "lesion under the classification rule; a lesion without a matching detection has no "
        "DL, DL + radiomics or agreed value (excluded from those rows, counted)."
    ),
    "classification_dl": (
        "Cases: the detections that match a ground-truth lesion (classification rule), with "
        "that lesion's label; probabilities as the node reports them (radiomics on the DL "
        "mask). False-positive detections are counted apart."
    ),
    "classification_dl_all": (
        "Cases: every detection; truth malignant when it matches a malignant lesion, else "
        "benign (a benign lesion or a false positive), as the paper's DL-mask counts suggest "
        "(2463 negatives for 590 lesions)."
    ),
    "per_patient": (
        "Score: the maximum over the patient's cases (manual: ground-truth lesions, patients "
        "with a lesion only; DL: all detections, every patient, 0 without detection). Truth: "
        "any malignant lesion. DL + radiomics is labelled with the bundle's patient threshold "
        "(the node's rule); radiomics and DL with their lesion thresholds (malignant when any "
        "lesion is)."
    ),
    "agreed": (
        "The cases whose DL and radiomics labels agree, scored and labelled as DL + radiomics; "
        "'agreement' is the fraction of cases with both labels that agree."
    ),
    "thresholds": (
        "All thresholds come from the bundle's manifest (Youden index on the training "
        "predictions); none is tuned on the evaluated data."
    ),
    "bootstrap": (
        "95 % percentile intervals from resampling the cases of each table (lesions, images, "
        "detections or patients) with replacement; resamples on which a measure is undefined "
        "(e.g. one class only) are skipped and counted. Lesions and images of one patient are "
        "resampled independently (as in the paper), so per-lesion and per-image intervals "
        "ignore the correlation within a patient."
    ),
}

BOOTSTRAP_BY_PATIENT = (
    "95 % percentile intervals from resampling the patients with replacement, each drawn "
    "patient bringing all its cases (lesions, images, detections) into the table (a cluster "
    "bootstrap): the cases of one patient are not independent, and the intervals keep that "
    "correlation. Resamples on which a measure is undefined (e.g. one class only) are skipped "
    "and counted."
)

#: The paper's headline numbers (external set, 279 patients, 590 lesions) and where ours are.
PAPER_HEADLINE: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    (
        "identification sensitivity per lesion (the paper's 'per image')",
        "90% (532/590)",
        ("table2", "{rule}", "per_lesion", "sensitivity"),
        True,
    ),
    (
        "identification sensitivity per patient",
        "99% (275/279)",
        ("table2", "{rule}", "per_patient", "sensitivity"),
        True,
    ),
    (
        "mean Dice per lesion, hit lesions (the paper's 'per image')",
        "0.71",
        ("table2", "{rule}", "per_lesion", "mean_dice_hit"),
        False,
    ),
    (
        "mean Dice per patient",
        "0.80",
        ("table2", "{rule}", "per_patient", "mean_dice"),
        False,
    ),
    (
        "AUC, manual masks, DL + radiomics, per lesion",
        "0.88 [0.86, 0.91]",
        ("table3", "manual", "lesion", "rows", "fused", "metrics", "auc"),
        False,
    ),
    (
        "AUC, DL masks, DL + radiomics, per lesion (every detection)",
        "0.95 [0.94, 0.96]",
        ("table3", "dl_all", "lesion", "rows", "fused", "metrics", "auc"),
        False,
    ),
    (
        "sensitivity, DL masks, DL + radiomics, per lesion (every detection)",
        "90% (317/353) [87, 93]",
        ("table3", "dl_all", "lesion", "rows", "fused", "metrics", "sensitivity"),
        True,
    ),
    (
        "specificity, DL masks, DL + radiomics, per lesion (every detection)",
        "86% (2106/2463) [84, 87]",
        ("table3", "dl_all", "lesion", "rows", "fused", "metrics", "specificity"),
        True,
    ),
)


@dataclass
class ReportContext:
    """What the report states about the run besides the records."""

    dataset: str
    split: str
    bundle: dict[str, Any]
    device: str
    split_file: str | None = None
    split_seed: int | None = None
    split_fractions: tuple[float, ...] | None = None
    samples_selected: int | None = None
    skipped_samples: list[str] = field(default_factory=list)
    settings_notes: list[str] = field(default_factory=list)
    command: str | None = None
    #: ``case`` (each table's cases resampled independently) or ``patient`` (clusters).
    bootstrap_unit: str = "case"
    #: Pooled out-of-fold evaluation: k, seed, folds file, patients and a row per fold.
    cross_validation: dict[str, Any] | None = None


@dataclass(frozen=True)
class ReportFiles:
    """The files :func:`write_report` wrote."""

    report_json: Path
    report_md: Path
    cases_json: Path
    figures: dict[str, Path]


# --- measures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Boot:
    """The bootstrap of every measure: by case, or (``by_patient``) by patient.

    By patient, a resample draws patients with replacement and takes all
    their cases (a cluster bootstrap), so the cases of one patient, which are
    not independent, move together and the interval keeps that correlation.
    """

    n_resamples: int
    seed: int
    alpha: float
    by_patient: bool = False

    def run(
        self, fn: Callable[..., float], *arrays: Any, groups: Sequence[str] | None = None
    ) -> m.MetricValue:
        """``fn`` on the cases with its interval; ``groups``: the patient of each case."""
        if not self.by_patient or groups is None or len(groups) == 0:
            return m.bootstrap_ci(
                fn, *arrays, n_resamples=self.n_resamples, seed=self.seed, alpha=self.alpha
            )
        data = [np.asarray(a) for a in arrays]
        if len(groups) != len(data[0]):
            raise ValueError(f"{len(groups)} patients for {len(data[0])} cases")
        members: dict[str, list[int]] = {}
        for index, patient in enumerate(groups):
            members.setdefault(patient, []).append(index)
        clusters = [np.array(v, dtype=int) for _, v in sorted(members.items())]

        def on_patients(chosen: np.ndarray) -> float:
            index = np.concatenate([clusters[int(c)] for c in chosen])
            return fn(*(a[index] for a in data))

        result = m.bootstrap_ci(
            on_patients,
            np.arange(len(clusters)),
            n_resamples=self.n_resamples,
            seed=self.seed,
            alpha=self.alpha,
        )
        from dataclasses import replace

        return replace(result, n=len(data[0]))


def _proportion(
    flags: Sequence[bool],
    boot: _Boot,
    empty_reason: str,
    groups: Sequence[str] | None = None,
) -> m.MetricValue:
    values = np.asarray(flags, dtype=float)
    if values.size == 0:
        return m.MetricValue.undefined(empty_reason)
    result = boot.run(m.mean, values, groups=groups)
    return _with_counts(result, int(values.sum()), int(values.size))


def _with_counts(value: m.MetricValue, numerator: int, denominator: int) -> m.MetricValue:
    from dataclasses import replace

    return replace(value, numerator=numerator, denominator=denominator)


def _mean(
    values: Sequence[float],
    boot: _Boot,
    empty_reason: str,
    groups: Sequence[str] | None = None,
) -> m.MetricValue:
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return m.MetricValue.undefined(empty_reason)
    return boot.run(m.mean, array, groups=groups)


def _pooled_dice(overlap: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> float:
    total = float(truth.sum() + predicted.sum())
    if total == 0:
        raise m.UndefinedMetricError("no mask pixels: Dice is undefined")
    return 2.0 * float(overlap.sum()) / total


def _table2_rule(records: EvaluationRecords, rule: str, boot: _Boot) -> dict[str, Any]:
    pairs = [(image, les) for image in records.images for les in image.lesions]
    lesions = [les for _, les in pairs]
    lesion_patients = [image.patient_id for image, _ in pairs]
    hit_patients = [image.patient_id for image, les in pairs if les.hit[rule]]
    images = [image for image in records.images if image.lesions]
    image_patients = [image.patient_id for image in images]
    no_lesion = "no ground-truth lesion in the evaluated data"
    per_lesion = {
        "n": len(lesions),
        "sensitivity": _proportion(
            [les.hit[rule] for les in lesions], boot, no_lesion, lesion_patients
        ),
        "accuracy": _proportion(
            [les.detection_label_correct[rule] for les in lesions],
            boot,
            no_lesion,
            lesion_patients,
        ),
        "mean_dice": _mean([les.dice[rule] for les in lesions], boot, no_lesion, lesion_patients),
        "mean_dice_hit": _mean(
            [les.dice[rule] for les in lesions if les.hit[rule]],
            boot,
            f"no lesion is hit ({rule}): no Dice of a hit lesion" if lesions else no_lesion,
            hit_patients,
        ),
    }
    no_image = "no image with a ground-truth lesion in the evaluated data"
    per_image = {
        "n": len(images),
        "sensitivity": _proportion(
            [any(les.hit[rule] for les in i.lesions) for i in images],
            boot,
            no_image,
            image_patients,
        ),
        "accuracy": _proportion(
            [any(les.detection_label_correct[rule] for les in i.lesions) for i in images],
            boot,
            no_image,
            image_patients,
        ),
        "mean_dice": _mean(
            [i.union_dice for i in images],  # type: ignore[misc]
            boot,
            no_image,
            image_patients,
        ),
    }
    patients = [[i for i in group if i.lesions] for group in records.by_patient().values()]
    patients = [group for group in patients if group]
    no_patient = "no patient with a ground-truth lesion in the evaluated data"
    overlap = np.array([sum(i.overlap_px for i in g) for g in patients], dtype=float)
    truth = np.array([sum(i.truth_px for i in g) for g in patients], dtype=float)
    predicted = np.array([sum(i.predicted_px for i in g) for g in patients], dtype=float)
    per_patient = {
        "n": len(patients),
        "sensitivity": _proportion(
            [any(les.hit[rule] for i in g for les in i.lesions) for g in patients],
            boot,
            no_patient,
        ),
        "accuracy": _proportion(
            [
                any(les.detection_label_correct[rule] for i in g for les in i.lesions)
                for g in patients
            ],
            boot,
            no_patient,
        ),
        "mean_dice": (
            boot.run(
                lambda o, t, p: float(np.mean(2 * o / (t + p))),
                overlap,
                truth,
                predicted,
            )
            if patients
            else m.MetricValue.undefined(no_patient)
        ),
    }
    return {"per_lesion": per_lesion, "per_image": per_image, "per_patient": per_patient}


def _false_positives(records: EvaluationRecords, rule: str, boot: _Boot) -> dict[str, Any]:
    images = records.images
    normal = [i for i in images if not i.lesions]
    detections = [d for i in images for d in i.detections]
    fp_counts = [sum(1 for d in i.detections if d.truth[rule] is None) for i in images]
    return {
        "detections": len(detections),
        "false_positive_detections": int(sum(fp_counts)),
        "false_positives_per_image": _mean(
            fp_counts, boot, "no image in the evaluated data", [i.patient_id for i in images]
        ),
        "precision": _proportion(
            [d.truth[rule] is not None for d in detections],
            boot,
            "no detection on the evaluated images: precision is undefined",
            [i.patient_id for i in images for _ in i.detections],
        ),
        "images_without_lesion": len(normal),
        "clean_rate_without_lesion": _proportion(
            [not i.detections for i in normal],
            boot,
            "no image without a ground-truth lesion in the evaluated data: the fraction of "
            "lesion-free images without detection is undefined",
            [i.patient_id for i in normal],
        ),
    }


def _classification_block(table: CaseTable, boot: _Boot) -> dict[str, Any]:
    y_all = table.y_true
    block: dict[str, Any] = {
        "unit": table.unit,
        "n_cases": len(table.ids),
        "n_positive": int(y_all.sum()),
        "n_negative": int(len(y_all) - y_all.sum()),
        "positive": table.positive,
        "negative": table.negative,
        "notes": list(table.notes),
        "agreement": _proportion(
            list(table.agree),
            boot,
            f"no {table.unit} with both a DL and a radiomics label",
            table.agree_patients or None,
        ),
        "rows": {},
    }
    for model in MODELS:
        cases = table.models[model]
        block["rows"][model] = {
            "n": cases.n,
            "n_positive": int(cases.y_true.sum()),
            "n_negative": int(cases.n - cases.y_true.sum()),
            "threshold": cases.threshold,
            "excluded": cases.excluded,
            "metrics": _classification_metrics(table, cases, boot),
        }
    return block


def _plural(unit: str, n: int) -> str:
    return unit if n == 1 else f"{unit}s"


def _classification_metrics(
    table: CaseTable, cases: ModelCases, boot: _Boot
) -> dict[str, m.MetricValue]:
    unit = table.unit
    n = cases.n
    y, s, yhat = cases.y_true, cases.scores, cases.y_pred
    positives = int(y.sum())
    negatives = n - positives
    if n == 0:
        excluded = ", ".join(f"{count} {why}" for why, count in cases.excluded.items())
        reason = f"no {unit} with {_MODEL_VALUES[cases.model]}" + (
            f" ({excluded})" if excluded else ""
        )
        return {name: m.MetricValue.undefined(reason) for name in CLASSIFICATION_MEASURES}
    where = f"among the {n} {_plural(unit, n)}"
    no_negative = f"no {table.negative} {where}: AUC and specificity are undefined"
    no_positive = f"no {table.positive} {where}: AUC and sensitivity are undefined"
    c = m.confusion(y, yhat)
    g = cases.patients or None
    out: dict[str, m.MetricValue] = {}
    if negatives == 0:
        out["auc"] = m.MetricValue.undefined(no_negative, n)
    elif positives == 0:
        out["auc"] = m.MetricValue.undefined(no_positive, n)
    else:
        out["auc"] = boot.run(m.roc_auc, y, s, groups=g)
    out["sensitivity"] = (
        _with_counts(boot.run(m.sensitivity, y, yhat, groups=g), c.tp, c.positives)
        if positives
        else m.MetricValue.undefined(no_positive, n)
    )
    out["specificity"] = (
        _with_counts(boot.run(m.specificity, y, yhat, groups=g), c.tn, c.negatives)
        if negatives
        else m.MetricValue.undefined(no_negative, n)
    )
    out["accuracy"] = _with_counts(boot.run(m.accuracy, y, yhat, groups=g), c.tp + c.tn, c.total)
    if 2 * c.tp + c.fp + c.fn == 0:
        out["f1"] = m.MetricValue.undefined(
            f"no {table.positive} and no malignant prediction {where}: F1 is undefined", n
        )
    else:
        out["f1"] = boot.run(m.f1_score, y, yhat, groups=g)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, m.MetricValue):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _lookup(document: dict[str, Any], path: Sequence[str]) -> Any:
    node: Any = document
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def build_report(
    records: EvaluationRecords,
    context: ReportContext,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Every measure of the report, as a JSON-ready document (see the module documentation)."""
    from cem_node import __version__

    if context.bootstrap_unit not in ("case", "patient"):
        raise ValueError(f"bootstrap_unit must be case or patient, got {context.bootstrap_unit!r}")
    by_patient = context.bootstrap_unit == "patient"
    boot = _Boot(n_resamples, seed, alpha, by_patient=by_patient)
    counts = records.counts()
    document: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cem_node_version": __version__,
        "command": context.command,
        "bundle": context.bundle,
        "device": context.device,
        "data": {
            "dataset": context.dataset,
            "split": context.split,
            "split_file": context.split_file,
            "split_seed": context.split_seed,
            "split_fractions": (list(context.split_fractions) if context.split_fractions else None),
            "samples_selected": context.samples_selected,
            "counts": counts,
            "skipped_samples": list(context.skipped_samples),
            "failures": list(records.failures),
        },
        "thresholds": records.thresholds.model_dump(),
        "settings_notes": list(context.settings_notes),
        "hit_rules": list(records.rules),
        "classification_rule": records.classification_rule,
        "bootstrap": {
            "n_resamples": n_resamples,
            "seed": seed,
            "alpha": alpha,
            "level": 1 - alpha,
            "unit": context.bootstrap_unit,
            "method": (
                "percentile; patients resampled with replacement, each with all its cases"
                if by_patient
                else "percentile; cases resampled with replacement"
            ),
        },
        "definitions": (
            {**DEFINITIONS, "bootstrap": BOOTSTRAP_BY_PATIENT} if by_patient else DEFINITIONS
        ),
        "cross_validation": context.cross_validation,
        "table2": {rule: _table2_rule(records, rule, boot) for rule in records.rules},
        "false_positives": {rule: _false_positives(records, rule, boot) for rule in records.rules},
        "table3": {},
        "notes": list(records.notes),
    }
    for mode in CLASSIFICATION_MODES:
        entry: dict[str, Any] = {"title": MODE_TITLES[mode]}
        entry["lesion"] = _classification_block(classification_cases(records, mode, "lesion"), boot)
        if mode == "dl_all":
            entry["patient"] = {
                "same_as": "dl",
                "reason": "per patient every detection already counts (see DL masks)",
            }
        else:
            entry["patient"] = _classification_block(
                classification_cases(records, mode, "patient"), boot
            )
        document["table3"][mode] = entry
    document = _jsonable(document)
    paper = []
    for what, value, path, percent in PAPER_HEADLINE:
        resolved = [p.replace("{rule}", records.classification_rule) for p in path]
        ours = _lookup(document, resolved)
        paper.append(
            {
                "measure": what,
                "paper": value,
                "ours_path": ".".join(resolved),
                "ours": ours,
                "percent": percent,
            }
        )
    document["paper"] = {
        "source": (
            "Beuque et al., Radiology 2023;307(5):e221843: external set, 279 patients, 590 "
            "lesions (real CEM, a different population and a different model)"
        ),
        "headline": paper,
    }
    return document


# --- markdown -------------------------------------------------------------------------------


def _fmt(metric: dict[str, Any] | None, percent: bool = False, digits: int = 2) -> str:
    if metric is None:
        return "—"
    value = metric.get("value")
    if value is None:
        return "n/a"

    def number(v: float) -> str:
        return f"{100 * v:.0f}" if percent else f"{v:.{digits}f}"

    text = number(value) + ("%" if percent else "")
    if metric.get("numerator") is not None and metric.get("denominator") is not None:
        text += f" ({metric['numerator']}/{metric['denominator']})"
    ci = metric.get("ci")
    text += f" [{number(ci[0])}, {number(ci[1])}]" if ci else " [no CI]"
    return text


class _Footnotes:
    """Reasons for 'n/a' cells, numbered once per distinct text."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def cell(self, metric: dict[str, Any] | None, percent: bool = False) -> str:
        text = _fmt(metric, percent)
        if metric is None:
            return text
        reason = metric.get("reason")
        skipped = metric.get("n_skipped") or 0
        notes = []
        if reason:
            notes.append(reason)
        if skipped and metric.get("ci"):
            notes.append(
                f"CI from {metric['n_resamples'] - skipped} of {metric['n_resamples']} resamples "
                f"({skipped} undefined: one class only or no case)"
            )
        for note in notes:
            if note not in self.items:
                self.items.append(note)
            text += f" <sup>{self.items.index(note) + 1}</sup>"
        return text

    def render(self) -> list[str]:
        return [f"{i}. {text}" for i, text in enumerate(self.items, start=1)]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _fold_lines(folds: dict[str, Any]) -> list[str]:
    """The per-fold table of a pooled cross-validation report."""

    def share(value: float | None, percent: bool) -> str:
        if value is None:
            return "n/a"
        return f"{100 * value:.0f}%" if percent else f"{value:.2f}"

    rows = [
        [
            str(row["fold"]),
            f"`{row['detector']}`",
            str(row["patients"]),
            str(row["images"]),
            f"{share(row['per_image_sensitivity'], True)} "
            f"({row['images_found']}/{row['images_with_lesion']})",
            share(row["mean_dice_per_image"], False),
            share(row["false_positives_per_image"], False),
        ]
        for row in folds["per_fold"]
    ]
    rule = folds["per_fold"][0]["rule"] if folds["per_fold"] else "iou>=0.1"
    return [
        "## Folds",
        "",
        f"Each fold's detector on its own held-out patients ({rule}; plain values, the "
        "intervals are those of the pooled tables below).",
        "",
        *_table(
            [
                "Fold",
                "Detector",
                "Patients",
                "Images",
                "Per-image sensitivity",
                "Mean Dice per image",
                "False positives per image",
            ],
            rows,
        ),
        "",
    ]


def render_markdown(document: dict[str, Any]) -> str:
    """``report.md`` from the document of :func:`build_report`."""
    bundle = document["bundle"]
    data = document["data"]
    counts = data["counts"]
    boot = document["bootstrap"]
    rules = document["hit_rules"]
    cv = document.get("cross_validation")
    title = (
        f"# Pooled out-of-fold evaluation of {cv['k']} fold detectors (seed {cv['seed']}, "
        f"{cv['patients']} patients)"
        if cv
        else f"# Evaluation of model bundle {bundle.get('name')} {bundle.get('version')}"
    )
    lines = [
        title,
        "",
        f"Created {document['created']} by cem-node {document['cem_node_version']}"
        + (f": `{document['command']}`" if document.get("command") else "."),
        "",
        "## What was evaluated",
        "",
        *(
            [
                f"- **Detectors**: one per fold, from `{cv['folds_dir']}` (each fold's weights, "
                "input size and keep score); the radiomics model, its settings and the "
                "thresholds are those of the bundle below (the bundle's own detector is not "
                "used)."
            ]
            if cv
            else []
        ),
        f"- **Bundle**: {bundle.get('name')} version {bundle.get('version')}, manifest sha256 "
        f"`{bundle.get('sha256')}`; intended use: {bundle.get('intended_use')}"
        + (f"; **{bundle['disclaimer']}**" if bundle.get("disclaimer") else ""),
    ]
    training = bundle.get("training")
    if isinstance(training, dict):
        text = "; ".join(f"{k}: {v}" for k, v in training.items() if v not in (None, ""))
        lines.append(f"- **Training** (from the manifest): {text}")
    elif training:
        lines.append(f"- **Training** (from the manifest): {training}")
    split = data["split"]
    folds = document.get("cross_validation")
    split_text = (
        f"pooled out-of-fold over {folds['k']} patient-level folds (seed {folds['seed']}, "
        f"`{folds['folds_file']}`): every image is evaluated once, by the detector of the fold "
        "that held its patient out of training"
        if folds
        else "all samples"
        if split == "all" and not data.get("split_file")
        else f"the {split} part of the training's split file `{data['split_file']}`"
        if data.get("split_file")
        else f"the {split} part of the patient split (seed {data['split_seed']}, fractions "
        f"{data['split_fractions']}; the training's split only if training used the same "
        "dataset, seed and fractions)"
    )
    lines += [
        f"- **Data**: `{data['dataset']}`, {split_text}.",
        f"- **Evaluated**: {counts['patients']} patients ({counts['patients_with_lesion']} with "
        f"a lesion), {counts['studies']} studies, {counts['images']} images "
        f"({counts['images_with_lesion']} with a lesion, {counts['images_without_lesion']} "
        f"without), {counts['lesions']} lesions ({counts['malignant_lesions']} malignant, "
        f"{counts['benign_lesions']} benign), {counts['detections']} detections.",
        f"- **Device**: {document['device']}.",
    ]
    if data["skipped_samples"]:
        lines.append(
            f"- **Samples the dataset left out** ({len(data['skipped_samples'])}): "
            + "; ".join(data["skipped_samples"][:10])
            + (" ..." if len(data["skipped_samples"]) > 10 else "")
        )
    if data["failures"]:
        lines.append(
            f"- **Studies that failed and are NOT in the numbers** ({len(data['failures'])}): "
            + "; ".join(data["failures"][:10])
            + (" ..." if len(data["failures"]) > 10 else "")
        )
    for note in document["settings_notes"]:
        lines.append(f"- **Setting override**: {note}")
    thresholds = document["thresholds"]
    lines += [
        "- **Thresholds** (bundle manifest, Youden index on the training predictions; not tuned "
        "on this data): " + ", ".join(f"{k} {v:g}" for k, v in thresholds.items()) + ".",
        f"- **Hit rules**: {', '.join(rules)} (mask IoU; one-to-one greedy matching by IoU). "
        f"Lesion classification with DL masks uses **{document['classification_rule']}**.",
        f"- **Confidence intervals**: {100 * boot['level']:.0f}% percentile bootstrap, "
        f"{boot['n_resamples']} resamples of the "
        + (
            "patients (each with all its lesions, images and detections)"
            if boot.get("unit") == "patient"
            else "cases"
        )
        + f", seed {boot['seed']}.",
        "",
    ]
    if folds:
        lines += _fold_lines(folds)
    notes = _Footnotes()

    # Table 2
    lines += ["## Table 2: identification and segmentation", ""]
    header = ["Level", "Measure", *rules]
    rows = []
    for level, title in (
        ("per_lesion", "Per lesion"),
        ("per_image", "Per image"),
        ("per_patient", "Per patient"),
    ):
        measures = [
            ("sensitivity", "Identification sensitivity", True),
            ("accuracy", "Identification accuracy", True),
            ("mean_dice", "Mean Dice" + (" (missed = 0)" if level == "per_lesion" else ""), False),
        ]
        if level == "per_lesion":
            measures.append(("mean_dice_hit", "Mean Dice of hit lesions", False))
        n = document["table2"][rules[0]][level]["n"]
        for key, name, percent in measures:
            rows.append(
                [
                    f"{title} (n = {n})",
                    name,
                    *(notes.cell(document["table2"][r][level][key], percent) for r in rules),
                ]
            )
    for key, name, percent in (
        ("false_positives_per_image", "False positives per image (all images)", False),
        ("precision", "Detections that hit a lesion", True),
        ("clean_rate_without_lesion", "Lesion-free images without detection", True),
    ):
        rows.append(
            [
                "Detections",
                name,
                *(notes.cell(document["false_positives"][r][key], percent) for r in rules),
            ]
        )
    lines += _table(header, rows)
    lines += [
        "",
        "Per-image and per-patient Dice do not depend on the hit rule. Identification "
        "accuracy: " + DEFINITIONS["identification_accuracy"],
        "",
    ]

    # Table 3
    lines += ["## Table 3: classification (benign vs malignant)", ""]
    for entry in document["table3"].values():
        lines += [f"### {entry['title']}", ""]
        for level in ("lesion", "patient"):
            block = entry[level]
            if "same_as" in block:
                lines += [f"Per patient: {block['reason']}.", ""]
                continue
            lines += [
                f"**Per {level}**: {block['n_cases']} {block['unit']}s "
                f"({block['n_positive']} positive: {block['positive']}; {block['n_negative']} "
                f"negative: {block['negative']}). Agreement of the DL and radiomics labels: "
                f"{notes.cell(block['agreement'], True)}.",
                "",
            ]
            header = ["Model", "n", *(MEASURE_TITLES[k] for k in CLASSIFICATION_MEASURES)]
            rows = []
            for model, row in block["rows"].items():
                rows.append(
                    [
                        MODEL_TITLES[model],
                        str(row["n"]),
                        *(
                            notes.cell(row["metrics"][k], k != "auc")
                            for k in CLASSIFICATION_MEASURES
                        ),
                    ]
                )
            lines += _table(header, rows)
            lines.append("")
            for note in block["notes"]:
                lines.append(f"- {note}")
            for model, row in block["rows"].items():
                excluded = ", ".join(f"{c} {why}" for why, c in row["excluded"].items())
                lines.append(
                    f"- {MODEL_TITLES[model]}: label {row['threshold']}"
                    + (f"; excluded: {excluded}" if excluded else "")
                )
            lines.append("")

    if notes.items:
        lines += ["### Notes to the tables", "", *notes.render(), ""]

    # figures
    figures = document.get("figures") or {}
    if figures:
        lines += ["## Figures", ""]
        for name, figure in figures.items():
            lines.append(f"![{name}]({figure['file']})")
            lines.append("")
            for note in figure.get("notes", []):
                lines.append(f"- {note}")
            lines.append("")

    # paper
    paper = document["paper"]
    lines += [
        "## The paper's headline numbers, for comparison",
        "",
        f"Source: {paper['source']}. Ours are on the data above; they compare only on "
        "comparable data.",
        "",
    ]
    rows = []
    for item in paper["headline"]:
        ours = item["ours"]
        cell = _fmt(ours, item["percent"]) if isinstance(ours, dict) else "—"
        if isinstance(ours, dict) and ours.get("value") is None:
            cell = f"n/a: {ours.get('reason')}"
        rows.append([item["measure"], item["paper"], cell])
    lines += _table(["Measure", "Paper", "This evaluation"], rows)
    lines += ["", "## Definitions", ""]
    for key, text in document["definitions"].items():
        lines.append(f"- **{key.replace('_', ' ')}**: {text}")
    if document["notes"]:
        widened = [note for note in document["notes"] if "binWidth widened" in note]
        other = [note for note in document["notes"] if "binWidth widened" not in note]
        lines += ["", "## Analysis notes", ""]
        if widened:
            lines.append(
                f"- radiomics: the grey-level cap widened the bin width {len(widened)} times "
                "(listed in report.json)"
            )
        shown = other[:30]
        lines += [f"- {note}" for note in shown]
        if len(other) > len(shown):
            lines.append(f"- ... and {len(other) - len(shown)} more (report.json)")
    return "\n".join(lines) + "\n"


# --- figures --------------------------------------------------------------------------------


def _message(ax: Any, text: str) -> None:
    import textwrap

    ax.text(
        0.5,
        0.5,
        "\n".join(textwrap.wrap(text, 38)),
        ha="center",
        va="center",
        fontsize=8,
        transform=ax.transAxes,
    )


def _panels(records: EvaluationRecords) -> list[tuple[str, str, CaseTable | None]]:
    out: list[tuple[str, str, CaseTable | None]] = []
    for mode in CLASSIFICATION_MODES:
        for level in ("lesion", "patient"):
            if mode == "dl_all" and level == "patient":
                out.append((mode, level, None))
            else:
                out.append((mode, level, classification_cases(records, mode, level)))
    return out


def _curve_figure(records: EvaluationRecords, path: Path, kind: str) -> list[str]:
    from matplotlib.figure import Figure
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import roc_curve

    notes: list[str] = []
    panels = _panels(records)
    fig = Figure(figsize=(10, 13), layout="constrained")
    axes = fig.subplots(len(CLASSIFICATION_MODES), 2)
    colours = {"radiomics": "tab:blue", "dl": "tab:orange", "fused": "tab:green"}
    for ax, (mode, level, table) in zip(axes.ravel(), panels, strict=True):
        ax.set_title(f"{MODE_TITLES[mode]}\nper {level}", fontsize=9)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=0.8)
        if kind == "roc":
            ax.set_xlabel("1 - specificity", fontsize=8)
            ax.set_ylabel("sensitivity", fontsize=8)
        else:
            ax.set_xlabel("predicted probability of malignancy", fontsize=8)
            ax.set_ylabel("observed fraction malignant", fontsize=8)
        if table is None:
            _message(ax, "per patient every detection counts: see DL masks, per patient")
            continue
        missing = []
        for model in ("radiomics", "dl", "fused"):
            cases = table.models[model]
            positives = int(cases.y_true.sum())
            if cases.n == 0:
                missing.append(f"{MODEL_TITLES[model]}: no {table.unit} with a value")
                continue
            if kind == "roc" and positives in (0, cases.n):
                missing.append(
                    f"{MODEL_TITLES[model]}: only one class among {cases.n} "
                    f"{_plural(table.unit, cases.n)}"
                )
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(cases.y_true, cases.scores)
                auc = m.roc_auc(cases.y_true, cases.scores)
                ax.plot(
                    fpr,
                    tpr,
                    color=colours[model],
                    label=f"{MODEL_TITLES[model]} (AUC {auc:.2f}, n {cases.n})",
                )
            else:
                observed, predicted = calibration_curve(
                    cases.y_true, cases.scores, n_bins=10, strategy="uniform"
                )
                ax.plot(
                    predicted,
                    observed,
                    marker="o",
                    markersize=3,
                    color=colours[model],
                    label=f"{MODEL_TITLES[model]} (n {cases.n})",
                )
        if missing:
            _message(ax, "not drawn: " + "; ".join(missing))
            notes.append(f"{MODE_TITLES[mode]}, per {level}: not drawn: " + "; ".join(missing))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "upper left")
    title = "ROC curves" if kind == "roc" else "Calibration curves (10 uniform bins)"
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return notes


def _dice_figure(records: EvaluationRecords, path: Path) -> list[str]:
    from matplotlib.figure import Figure

    rule = records.classification_rule
    groups = {
        f"per lesion, hit lesions ({rule})": [
            les.dice[rule] for i in records.images for les in i.lesions if les.hit[rule]
        ],
        "per image (mask unions)": [
            i.union_dice for i in records.images if i.union_dice is not None
        ],
    }
    notes = []
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("Dice")
    for position, (name, values) in enumerate(groups.items(), start=1):
        data = np.asarray(values, dtype=float)
        if data.size >= 2 and float(np.ptp(data)) > 0:
            parts = ax.violinplot([data], positions=[position], showmeans=True, showextrema=True)
            del parts
        elif data.size:
            ax.scatter(np.full(data.size, position), data, s=12)
            notes.append(f"{name}: {data.size} value(s) without spread; points instead of a violin")
        else:
            ax.text(position, 0.5, "no value", ha="center", fontsize=8)
            notes.append(f"{name}: no value (no lesion hit / no image with a lesion)")
    ax.set_xlim(0.5, len(groups) + 0.5)
    ax.set_xticks(range(1, len(groups) + 1))
    ax.set_xticklabels([f"{name}\n(n = {len(v)})" for name, v in groups.items()], fontsize=8)
    fig.suptitle("Dice of the DL masks")
    fig.savefig(path, dpi=100)
    return notes


def write_figures(records: EvaluationRecords, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Draw the three figures into ``out_dir``; per figure, its file and notes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, dict[str, Any]] = {}
    for name, file_name, draw in (
        ("ROC curves", "roc_curves.png", lambda p: _curve_figure(records, p, "roc")),
        (
            "Calibration curves",
            "calibration_curves.png",
            lambda p: _curve_figure(records, p, "cal"),
        ),
        ("Dice violin plot", "dice_violin.png", lambda p: _dice_figure(records, p)),
    ):
        notes = draw(out_dir / file_name)
        figures[name] = {"file": file_name, "notes": notes}
    return figures


def write_report(
    records: EvaluationRecords,
    context: ReportContext,
    out_dir: Path,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> ReportFiles:
    """Compute the report and write report.json, report.md, cases.json and the figures."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = build_report(records, context, n_resamples, seed, alpha)
    document["figures"] = write_figures(records, out_dir)
    report_json = out_dir / "report.json"
    report_json.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    report_md = out_dir / "report.md"
    report_md.write_text(render_markdown(document))
    cases_json = out_dir / "cases.json"
    cases_json.write_text(
        json.dumps(_jsonable(records.to_dict()), indent=1, allow_nan=False) + "\n"
    )
    return ReportFiles(
        report_json=report_json,
        report_md=report_md,
        cases_json=cases_json,
        figures={name: out_dir / f["file"] for name, f in document["figures"].items()},
    )

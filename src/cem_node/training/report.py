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

The Markdown rendering lives in :mod:`~cem_node.training.report_markdown` and
the fixed texts (titles, definitions, the paper's headline) in
:mod:`~cem_node.training.report_definitions`.
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
from cem_node.training.evaluation_cases import (
    CLASSIFICATION_MODES,
    MODELS,
    CaseTable,
    ModelCases,
    classification_cases,
)
from cem_node.training.evaluation_records import EvaluationRecords
from cem_node.training.report_definitions import (
    BOOTSTRAP_BY_PATIENT,
    CLASSIFICATION_MEASURES,
    DEFINITIONS,
    MODE_TITLES,
    MODEL_TITLES,
    PAPER_HEADLINE,
)
from cem_node.training.report_markdown import render_markdown

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

_MODEL_VALUES = {
    "radiomics": "a radiomics probability",
    "dl": "a DL probability",
    "fused": "a DL + radiomics probability",
    "agreed": "agreeing DL and radiomics labels",
}


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
    return {
        "per_lesion": _table2_per_lesion(records, rule, boot),
        "per_image": _table2_per_image(records, rule, boot),
        "per_patient": _table2_per_patient(records, rule, boot),
    }


def _table2_per_lesion(records: EvaluationRecords, rule: str, boot: _Boot) -> dict[str, Any]:
    pairs = [(image, les) for image in records.images for les in image.lesions]
    lesions = [les for _, les in pairs]
    lesion_patients = [image.patient_id for image, _ in pairs]
    hit_patients = [image.patient_id for image, les in pairs if les.hit[rule]]
    no_lesion = "no ground-truth lesion in the evaluated data"
    return {
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


def _table2_per_image(records: EvaluationRecords, rule: str, boot: _Boot) -> dict[str, Any]:
    images = [image for image in records.images if image.lesions]
    image_patients = [image.patient_id for image in images]
    no_image = "no image with a ground-truth lesion in the evaluated data"
    return {
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


def _table2_per_patient(records: EvaluationRecords, rule: str, boot: _Boot) -> dict[str, Any]:
    patients = [[i for i in group if i.lesions] for group in records.by_patient().values()]
    patients = [group for group in patients if group]
    no_patient = "no patient with a ground-truth lesion in the evaluated data"
    overlap = np.array([sum(i.overlap_px for i in g) for g in patients], dtype=float)
    truth = np.array([sum(i.truth_px for i in g) for g in patients], dtype=float)
    predicted = np.array([sum(i.predicted_px for i in g) for g in patients], dtype=float)
    return {
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
    document: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cem_node_version": __version__,
        "command": context.command,
        "bundle": context.bundle,
        "device": context.device,
        "data": _data_section(records, context),
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
        "table3": _table3(records, boot),
        "notes": list(records.notes),
    }
    document = _jsonable(document)
    document["paper"] = _paper_section(document, records.classification_rule)
    return document


def _data_section(records: EvaluationRecords, context: ReportContext) -> dict[str, Any]:
    """What was evaluated: dataset, split, counts, and what was left out."""
    return {
        "dataset": context.dataset,
        "split": context.split,
        "split_file": context.split_file,
        "split_seed": context.split_seed,
        "split_fractions": (list(context.split_fractions) if context.split_fractions else None),
        "samples_selected": context.samples_selected,
        "counts": records.counts(),
        "skipped_samples": list(context.skipped_samples),
        "failures": list(records.failures),
    }


def _table3(records: EvaluationRecords, boot: _Boot) -> dict[str, Any]:
    """Table 3: per mask mode, a lesion block and a patient block."""
    table3: dict[str, Any] = {}
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
        table3[mode] = entry
    return table3


def _paper_section(document: dict[str, Any], rule: str) -> dict[str, Any]:
    """The paper's headline numbers, each with ours looked up in the (JSON-ready) document."""
    paper = []
    for what, value, path, percent in PAPER_HEADLINE:
        resolved = [p.replace("{rule}", rule) for p in path]
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
    return {
        "source": (
            "Beuque et al., Radiology 2023;307(5):e221843: external set, 279 patients, 590 "
            "lesions (real CEM, a different population and a different model)"
        ),
        "headline": paper,
    }


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

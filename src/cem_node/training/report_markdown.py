"""``report.md``: the evaluation report rendered from the document of
:func:`cem_node.training.report.build_report` (so the two never disagree)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cem_node.training.report_definitions import (
    CLASSIFICATION_MEASURES,
    DEFINITIONS,
    MEASURE_TITLES,
    MODEL_TITLES,
)

__all__ = ["render_markdown"]


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
    """``report.md`` from the document of :func:`~cem_node.training.report.build_report`."""
    folds = document.get("cross_validation")
    lines = [*_title_lines(document), *_data_lines(document)]
    if folds:
        lines += _fold_lines(folds)
    # one numbering of the footnotes across both tables, in the order the cells appear
    notes = _Footnotes()
    lines += _table2_lines(document, notes)
    lines += _table3_lines(document, notes)
    if notes.items:
        lines += ["### Notes to the tables", "", *notes.render(), ""]
    lines += _figure_lines(document)
    lines += _paper_lines(document)
    lines += _definition_lines(document)
    return "\n".join(lines) + "\n"


def _title_lines(document: dict[str, Any]) -> list[str]:
    """The title, the creation line and what was evaluated: detectors, bundle, training."""
    bundle = document["bundle"]
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
    return lines


def _split_text(data: dict[str, Any], folds: dict[str, Any] | None) -> str:
    """Which part of the dataset was evaluated, in words."""
    split = data["split"]
    return (
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


def _data_lines(document: dict[str, Any]) -> list[str]:
    """The data, counts, device, left-out studies, overrides, thresholds, rules and CIs."""
    data = document["data"]
    counts = data["counts"]
    boot = document["bootstrap"]
    rules = document["hit_rules"]
    split_text = _split_text(data, document.get("cross_validation"))
    lines = [
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
    return lines


def _table2_lines(document: dict[str, Any], notes: _Footnotes) -> list[str]:
    """Table 2: identification and segmentation per level, and the detections, per rule."""
    rules = document["hit_rules"]
    lines = ["## Table 2: identification and segmentation", ""]
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
    return lines


def _table3_lines(document: dict[str, Any], notes: _Footnotes) -> list[str]:
    """Table 3: a section per mask mode, a block per level."""
    lines = ["## Table 3: classification (benign vs malignant)", ""]
    for entry in document["table3"].values():
        lines += [f"### {entry['title']}", ""]
        for level in ("lesion", "patient"):
            block = entry[level]
            if "same_as" in block:
                lines += [f"Per patient: {block['reason']}.", ""]
                continue
            lines += _table3_block_lines(level, block, notes)
    return lines


def _table3_block_lines(level: str, block: dict[str, Any], notes: _Footnotes) -> list[str]:
    """One Table 3 block: its cases, a row per model, its notes and each row's threshold."""
    lines = [
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
                *(notes.cell(row["metrics"][k], k != "auc") for k in CLASSIFICATION_MEASURES),
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
    return lines


def _figure_lines(document: dict[str, Any]) -> list[str]:
    """The figures (when drawn), each with its notes."""
    figures = document.get("figures") or {}
    lines: list[str] = []
    if figures:
        lines += ["## Figures", ""]
        for name, figure in figures.items():
            lines.append(f"![{name}]({figure['file']})")
            lines.append("")
            for note in figure.get("notes", []):
                lines.append(f"- {note}")
            lines.append("")
    return lines


def _paper_lines(document: dict[str, Any]) -> list[str]:
    """The paper's headline numbers next to ours."""
    paper = document["paper"]
    lines = [
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
    return lines


def _definition_lines(document: dict[str, Any]) -> list[str]:
    """The definitions, then the analysis notes (the bin-width ones only counted)."""
    lines = ["", "## Definitions", ""]
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
    return lines

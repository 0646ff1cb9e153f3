"""The evaluation: scoring of hand-made images against hand-computed Table 2 / Table 3
values, and a tiny end-to-end run of ``cem-node evaluate`` (random-weights bundle,
one small synthetic study)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from cem_node.cli import app
from cem_node.contracts.params import DecisionThresholds
from cem_node.pipeline import fusion
from cem_node.training.datasets import DatasetError, TrainingDataset
from cem_node.training.evaluation import (
    Detection,
    EvaluationRecords,
    ImageResult,
    TruthLesion,
    classification_cases,
    evaluate_samples,
    group_by_study,
    score_image,
    select_from_split_file,
    select_samples,
)
from cem_node.training.report import ReportContext, build_report, render_markdown, write_report
from tests.bundle_factory import make_tiny_bundle

runner = CliRunner()
THRESHOLDS = DecisionThresholds()  # 0.5 everywhere
SHAPE = (20, 20)


def box(rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[rows, cols] = True
    return mask


def detection(lesion_id: str, mask: np.ndarray, dl: float, rad: float | None) -> Detection:
    decision = fusion.decide_lesion(dl, rad, THRESHOLDS)
    return Detection(
        lesion_id=lesion_id,
        mask=mask,
        dl_probability=dl,
        radiomics_probability=rad,
        fused_probability=decision.fused_probability,
        fused_source=decision.fused_source,
        dl_label=decision.dl_label,
        radiomics_label=decision.radiomics_label,
        fused_label=decision.fused_label,
        radiomics_error=None if rad is not None else "mask too small",
    )


def image(key: str, patient: str, truths=(), detections=()) -> ImageResult:
    return ImageResult(
        key=key,
        patient_id=patient,
        study_id=f"study-{patient}",
        laterality="L",
        view="CC",
        shape=SHAPE,
        truths=tuple(truths),
        detections=tuple(detections),
    )


@pytest.fixture(scope="module")
def records() -> EvaluationRecords:
    """Three images, two patients (see each test for the hand computation).

    A (P1): malignant g1 rows 0-9 x cols 0-9; d1 rows 0-9 x cols 5-14 (IoU 50/150),
            DL 0.9 (malignant); d2 a false positive (25 px), DL 0.2.
    B (P1): no lesion, no detection.
    C (P2): benign g2 rows 0-9 x cols 0-9, found exactly by d3 with DL 0.7 (malignant:
            wrong); malignant g3 rows 12-19 x cols 12-19 missed.
    Manual-mask radiomics: g1 0.8, g2 0.3, g3 failed.
    """
    a = image(
        "A",
        "P1",
        [TruthLesion("g1", box(slice(0, 10), slice(0, 10)), "malignant", 0.8)],
        [
            detection("d1", box(slice(0, 10), slice(5, 15)), 0.9, 0.6),
            detection("d2", box(slice(15, 20), slice(15, 20)), 0.2, 0.1),
        ],
    )
    b = image("B", "P1")
    c = image(
        "C",
        "P2",
        [
            TruthLesion("g2", box(slice(0, 10), slice(0, 10)), "benign", 0.3),
            TruthLesion(
                "g3", box(slice(12, 20), slice(12, 20)), "malignant", None, "mask too small"
            ),
        ],
        [detection("d3", box(slice(0, 10), slice(0, 10)), 0.7, 0.4)],
    )
    return EvaluationRecords(
        images=[score_image(x, THRESHOLDS) for x in (a, b, c)], thresholds=THRESHOLDS
    )


@pytest.fixture(scope="module")
def document(records: EvaluationRecords) -> dict[str, Any]:
    context = ReportContext(
        dataset="hand-made",
        split="all",
        bundle={"name": "hand", "version": "0", "sha256": "0" * 64, "intended_use": "tests"},
        device="none",
    )
    return build_report(records, context, n_resamples=100, seed=0)


def value(metric: dict[str, Any]) -> float | None:
    return metric["value"]


def test_image_records_hold_the_matches_of_both_rules(records: EvaluationRecords) -> None:
    a, b, c = records.images
    g1 = a.lesions[0]
    assert g1.hit == {"iou>=0.1": True, "iou>=0.5": False}
    assert g1.iou["iou>=0.1"] == pytest.approx(1 / 3)
    assert g1.dice["iou>=0.1"] == pytest.approx(0.5)  # 2 * 50 / (100 + 100)
    assert g1.dice["iou>=0.5"] == 0.0
    assert [d.truth["iou>=0.1"] for d in a.detections] == ["g1", None]
    assert (a.truth_px, a.predicted_px, a.overlap_px) == (100, 125, 50)
    assert b.union_dice is None
    assert c.union_dice == pytest.approx(2 * 100 / (164 + 100))
    g2, g3 = c.lesions
    assert g2.detection_label_correct["iou>=0.1"] is False  # benign lesion, DL says malignant
    assert g3.hit["iou>=0.1"] is False and g3.dl_probability is None
    # manual-mask fusion: g1 (0.9 + 0.8) / 2
    assert g1.fused_probability == pytest.approx(0.85) and g1.fused_source == "mean"


def test_table2_against_hand_computed_values(document: dict[str, Any]) -> None:
    loose, strict = document["table2"]["iou>=0.1"], document["table2"]["iou>=0.5"]
    lesion = loose["per_lesion"]
    assert value(lesion["sensitivity"]) == pytest.approx(2 / 3)
    assert (lesion["sensitivity"]["numerator"], lesion["sensitivity"]["denominator"]) == (2, 3)
    assert value(lesion["accuracy"]) == pytest.approx(1 / 3)  # only g1 hit with its label
    assert value(lesion["mean_dice"]) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert value(lesion["mean_dice_hit"]) == pytest.approx(0.75)
    assert value(strict["per_lesion"]["sensitivity"]) == pytest.approx(1 / 3)
    assert value(strict["per_lesion"]["mean_dice_hit"]) == pytest.approx(1.0)

    dice_a, dice_c = 2 * 50 / 225, 2 * 100 / 264
    assert loose["per_image"]["n"] == 2
    assert value(loose["per_image"]["sensitivity"]) == 1.0
    assert value(strict["per_image"]["sensitivity"]) == 0.5
    assert value(loose["per_image"]["accuracy"]) == 0.5
    assert value(loose["per_image"]["mean_dice"]) == pytest.approx((dice_a + dice_c) / 2)
    assert value(loose["per_patient"]["sensitivity"]) == 1.0
    assert value(loose["per_patient"]["accuracy"]) == 0.5
    assert value(loose["per_patient"]["mean_dice"]) == pytest.approx((dice_a + dice_c) / 2)

    fp = document["false_positives"]["iou>=0.1"]
    assert fp["false_positive_detections"] == 1
    assert value(fp["false_positives_per_image"]) == pytest.approx(1 / 3)
    assert value(fp["precision"]) == pytest.approx(2 / 3)
    assert value(fp["clean_rate_without_lesion"]) == 1.0


def test_table3_cases_follow_the_stated_rules(records: EvaluationRecords) -> None:
    manual = classification_cases(records, "manual", "lesion")
    assert manual.ids == ("A#g1", "C#g2", "C#g3")
    assert manual.models["radiomics"].n == 2  # g3: radiomics failed
    assert manual.models["dl"].n == 2  # g3: no matching detection
    assert manual.models["dl"].excluded == {"no DL probability": 1}
    assert manual.models["agreed"].ids == ("A#g1",)  # g2: DL malignant, radiomics benign
    assert manual.agree.tolist() == [True, False]

    matched = classification_cases(records, "dl", "lesion")
    assert matched.ids == ("A#d1", "C#d3") and matched.y_true.tolist() == [1, 0]
    every = classification_cases(records, "dl_all", "lesion")
    assert every.ids == ("A#d1", "A#d2", "C#d3") and every.y_true.tolist() == [1, 0, 0]

    patients = classification_cases(records, "dl", "patient")
    assert patients.ids == ("P1", "P2") and patients.y_true.tolist() == [1, 1]
    assert patients.models["dl"].scores.tolist() == [0.9, 0.7]
    assert patients.models["fused"].scores.tolist() == [pytest.approx(0.75), pytest.approx(0.55)]


def test_table3_against_hand_computed_values(document: dict[str, Any]) -> None:
    rows = document["table3"]["manual"]["lesion"]["rows"]
    radiomics = rows["radiomics"]["metrics"]
    assert value(radiomics["auc"]) == 1.0
    assert value(radiomics["sensitivity"]) == 1.0 and value(radiomics["specificity"]) == 1.0
    dl = rows["dl"]["metrics"]
    assert value(dl["auc"]) == 1.0  # 0.9 (malignant) > 0.7 (benign)
    assert value(dl["specificity"]) == 0.0  # 0.7 >= 0.5: the benign lesion is called malignant
    assert value(dl["accuracy"]) == 0.5
    assert value(dl["f1"]) == pytest.approx(2 / 3)
    agreed = rows["agreed"]["metrics"]
    assert agreed["auc"]["value"] is None
    assert agreed["auc"]["reason"].startswith("no benign lesion among the 1 lesion:")
    patient = document["table3"]["dl"]["patient"]["rows"]["fused"]["metrics"]
    assert "no patient without a malignant lesion among the 2 patients" in patient["auc"]["reason"]
    every = document["table3"]["dl_all"]["lesion"]["rows"]["fused"]["metrics"]
    assert value(every["auc"]) == 1.0  # d1 0.75 above d2 0.15 and d3 0.55


def _metric_dicts(node: Any, path: str = ""):
    if isinstance(node, dict):
        if "value" in node and "reason" in node and "ci" in node:
            yield path, node
        else:
            for key, child in node.items():
                yield from _metric_dicts(child, f"{path}.{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _metric_dicts(child, f"{path}[{index}]")


def _assert_numbers_have_a_ci_or_a_reason(document: dict[str, Any]) -> int:
    found = 0
    for path, metric in _metric_dicts(document):
        found += 1
        if metric["value"] is None:
            assert metric["reason"], path
            assert metric["ci"] is None, path
        else:
            assert isinstance(metric["value"], float | int), path
            ci = metric["ci"]
            if ci is None:
                assert metric["reason"], path
            else:
                assert ci[0] <= metric["value"] + 1e-12 and metric["value"] <= ci[1] + 1e-12, path
    return found


def test_every_measure_of_the_hand_made_report(document: dict[str, Any]) -> None:
    assert _assert_numbers_have_a_ci_or_a_reason(document) > 50
    text = render_markdown(document)
    assert "iou>=0.1" in text and "iou>=0.5" in text
    assert "no benign lesion among the 1 lesion" in text


# --- end to end -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """``cem-node evaluate`` with a tiny random bundle on one small synthetic study
    (seed 5, study 1: one malignant lesion seen on two views, no benign lesion)."""
    root = tmp_path_factory.mktemp("evaluate")
    make_tiny_bundle(root / "models", max_lesions=1)
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CEM_NODE_")}
    os.environ["CEM_NODE_CACHE_DIR"] = str(root / "cache")
    os.environ["CEM_NODE_CONFIG"] = str(root / "absent.toml")
    os.environ["CEM_NODE_ANALYSIS__RADIOMICS_MAX_GREY_LEVELS"] = "16"  # cheap texture
    (root / "absent.toml").write_text("")
    try:
        result = runner.invoke(
            app,
            [
                "evaluate",
                "--model",
                "tiny-test",
                "--models-dir",
                str(root / "models"),
                "--dataset",
                "synthetic:1:5:256x320",
                "--split",
                "all",
                "--out",
                str(root / "out"),
                "--bootstrap",
                "50",
                "--device",
                "cpu",
                "--radiomics-workers",
                "1",
            ],
        )
    finally:
        for key in list(os.environ):
            if key.startswith("CEM_NODE_"):
                del os.environ[key]
        os.environ.update(saved)
    return root / "out", result


def test_evaluate_writes_the_report_the_cases_and_the_figures(evaluated) -> None:
    out, result = evaluated
    assert result.exit_code == 0, result.output
    for name in ("report.md", "report.json", "cases.json"):
        assert (out / name).is_file(), name
    for name in ("roc_curves.png", "calibration_curves.png", "dice_violin.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    document = json.loads((out / "report.json").read_text())
    assert document["bundle"]["name"] == "tiny-test"
    assert len(document["bundle"]["sha256"]) == 64
    assert document["data"]["dataset"] == "synthetic:1:5:256x320"
    counts = document["data"]["counts"]
    assert counts["patients"] == 1 and counts["images"] == 4
    assert counts["benign_lesions"] == 0 and counts["malignant_lesions"] > 0
    assert document["hit_rules"] == ["iou>=0.1", "iou>=0.5"]
    assert document["bootstrap"]["n_resamples"] == 50
    assert document["data"]["failures"] == []
    assert any("radiomics_max_grey_levels" in n for n in document["settings_notes"])
    assert "per_lesion" in document["table2"]["iou>=0.1"]
    cases = json.loads((out / "cases.json").read_text())
    assert len(cases["images"]) == 4


def test_every_number_in_report_json_has_a_ci_or_a_reason(evaluated) -> None:
    out, result = evaluated
    assert result.exit_code == 0, result.output
    document = json.loads((out / "report.json").read_text())
    assert _assert_numbers_have_a_ci_or_a_reason(document) > 50


def test_the_bundle_manifest_takes_the_reports_figures_with_their_intervals(evaluated) -> None:
    """`models import --metrics report.json` records the figures of a real report."""
    from cem_node.training.packing import metrics_from_report

    out, result = evaluated
    assert result.exit_code == 0, result.output
    document = json.loads((out / "report.json").read_text())
    metrics = metrics_from_report(out / "report.json")
    per_image = document["table2"]["iou>=0.1"]["per_image"]
    sensitivity = per_image["sensitivity"]
    assert metrics["table2_iou_0_1_per_image_sensitivity"] == sensitivity["value"]
    low, high = sensitivity["ci"]
    assert metrics["table2_iou_0_1_per_image_sensitivity_ci95"] == f"[{low:.4g}, {high:.4g}]"
    assert metrics["table2_per_image_mean_dice"] == per_image["mean_dice"]["value"]
    fp = document["false_positives"]["iou>=0.1"]["false_positives_per_image"]
    assert metrics["false_positives_per_image_iou_0_1"] == fp["value"]
    # every headline number that has an interval in the report has one in the manifest
    for item in document["paper"]["headline"]:
        ours = item["ours"]
        if ours.get("ci"):
            keys = [k for k, v in metrics.items() if v == ours["value"]]
            assert any(f"{k}_ci95" in metrics for k in keys), item["ours_path"]
    assert metrics["evaluation_dataset"] == "synthetic:1:5:256x320"


def test_no_benign_lesion_is_stated_instead_of_a_number(evaluated) -> None:
    out, result = evaluated
    assert result.exit_code == 0, result.output
    document = json.loads((out / "report.json").read_text())
    radiomics = document["table3"]["manual"]["lesion"]["rows"]["radiomics"]
    assert radiomics["n"] > 0, radiomics  # radiomics on the ground-truth masks
    for name in ("auc", "specificity"):
        metric = radiomics["metrics"][name]
        assert metric["value"] is None
        assert metric["reason"].startswith("no benign lesion among the"), metric
    text = (out / "report.md").read_text()
    assert "no benign lesion among the" in text
    assert "tiny-test" in text and document["bundle"]["sha256"] in text
    assert "iou>=0.1" in text and "Thresholds" in text
    assert "0.88 [0.86, 0.91]" in text  # the paper's headline, for comparison


def test_evaluate_rejects_a_bad_dataset_spec(tmp_path: Path) -> None:
    (tmp_path / "empty.toml").write_text("")
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--model",
            "tiny-test",
            "--models-dir",
            str(tmp_path / "models"),
            "--dataset",
            "nonsense:1",
            "--out",
            str(tmp_path / "out"),
        ],
        env={"CEM_NODE_CONFIG": str(tmp_path / "empty.toml")},
    )
    assert result.exit_code == 2, result.output
    assert "unknown kind" in result.output


def test_write_report_without_bootstrap(records: EvaluationRecords, tmp_path: Path) -> None:
    context = ReportContext(
        dataset="hand-made",
        split="all",
        bundle={"name": "hand", "version": "0", "sha256": "0" * 64, "intended_use": "tests"},
        device="none",
    )
    files = write_report(records, context, tmp_path, n_resamples=0)
    document = json.loads(files.report_json.read_text())
    sensitivity = document["table2"]["iou>=0.1"]["per_lesion"]["sensitivity"]
    assert sensitivity["ci"] is None and "bootstrap disabled" in sensitivity["reason"]
    assert set(files.figures) == {"ROC curves", "Calibration curves", "Dice violin plot"}


# --- sample selection and failures ------------------------------------------------------------


def _sample(key: str, patient: str, study: str, view: str, loader=None):
    from cem_node.training.datasets import Sample

    def fail():
        raise DatasetError(f"{key}: file not found")

    return Sample(
        key=key,
        patient_id=patient,
        study_id=study,
        laterality="L",
        view=view,
        label="normal",
        pixel_spacing_mm=None,
        source=key,
        loader=loader or fail,
    )


def test_samples_are_grouped_by_study_and_chosen_from_a_split_file(tmp_path: Path) -> None:
    samples = [
        _sample("a-mlo", "P1", "S1", "MLO"),
        _sample("b-cc", "P2", "S2", "CC"),
        _sample("a-cc", "P1", "S1", "CC"),
    ]
    groups = group_by_study(samples)
    assert [[s.key for s in g] for g in groups] == [["a-cc", "a-mlo"], ["b-cc"]]
    dataset = TrainingDataset(name="fake", samples=samples)
    split_file = tmp_path / "split.json"
    split_file.write_text(
        json.dumps(
            {
                "datasets": ["fake"],
                "train": {"samples": ["a-mlo", "a-cc"]},
                "val": {"samples": []},
                "test": {"samples": ["b-cc"]},
            }
        )
    )
    assert [s.key for s in select_from_split_file(dataset, split_file, "test")] == ["b-cc"]
    assert len(select_from_split_file(dataset, split_file, "all")) == 3
    split_file.write_text(json.dumps({"test": {"samples": ["zz"]}}))
    with pytest.raises(DatasetError, match="does not hold"):
        select_from_split_file(dataset, split_file, "test")
    assert len(select_samples(dataset, "all")) == 3


def test_a_study_that_cannot_be_read_is_listed_as_a_failure() -> None:
    models = SimpleNamespace(
        bundle=SimpleNamespace(manifest=SimpleNamespace(thresholds=THRESHOLDS)),
        classifier=SimpleNamespace(use_age=False),
    )
    seen = []
    records = evaluate_samples(
        models,  # type: ignore[arg-type]
        [_sample("a-cc", "P1", "S1", "CC")],
        progress=lambda done, total, name: seen.append((done, total)),
    )
    assert records.images == []
    assert len(records.failures) == 1
    assert "DatasetError" in records.failures[0] and "file not found" in records.failures[0]
    assert seen == [(1, 1)]

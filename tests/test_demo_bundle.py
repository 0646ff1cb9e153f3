"""The shipped demo bundle (models/cem-demo) is what its manifest and README say it is."""

from __future__ import annotations

import json
from pathlib import Path

from cem_node.models.registry import load_bundle
from cem_node.training.datasets import parse_spec
from cem_node.training.detector_training import KeepScoreRow, choose_operating_point

DEMO = Path(__file__).resolve().parents[1] / "models" / "cem-demo"


def test_the_demo_bundle_loads_is_small_and_says_it_is_synthetic() -> None:
    bundle = load_bundle(DEMO)  # every checksum verified
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert size <= 25 * 1024 * 1024, f"{size} bytes: the issue allows at most 25 MB"
    m = bundle.manifest
    assert m.training.synthetic is True and m.intended_use.for_clinical_use is False
    assert "synthetic phantom data, not for clinical use" in (m.intended_use.disclaimer or "")
    assert m.detector.backbone == "mobilenet_v3_lite"


def test_the_demo_bundles_operating_point_is_the_one_its_sweep_chose() -> None:
    """The manifest's input size and keep score are the validation sweep's choice, by the
    rule the sweep names (a hand edit of either would break this)."""
    m = load_bundle(DEMO).manifest
    sweep = json.loads((DEMO / "training" / "operating_point.json").read_text())
    fields = {"keep_score", "images", "images_with_lesion", "images_all_found"}
    fields |= {"false_positives", "mean_dice", "short_side"}
    rows = [KeepScoreRow(**{k: v for k, v in row.items() if k in fields}) for row in sweep["rows"]]
    chosen = choose_operating_point(rows, sweep["rule"])
    assert (chosen.short_side, chosen.keep_score) == (sweep["short_side"], sweep["keep_score"])
    assert m.preprocessing.short_side == sweep["short_side"]
    assert m.preprocessing.max_long_side == sweep["max_long_side"]
    assert m.postprocessing.keep_score == sweep["keep_score"]
    assert m.training.data["detector_trained_short_side"] == sweep["trained_short_side"]
    assert sweep["validation_images"] == m.training.data["detector_val_images"]


def test_the_demo_bundles_metrics_come_from_held_out_patients() -> None:
    """The recorded figures were computed on a synthetic set other than the training one
    (another generator seed: other patients), and include the issue's three targets."""
    m = load_bundle(DEMO).manifest
    held_out = parse_spec(str(m.metrics["evaluation_dataset"]))
    trained = parse_spec(str(m.training.data["datasets"]))
    assert held_out.kind == trained.kind == "synthetic"
    assert held_out.seed != trained.seed
    for key in (
        "table3_manual_lesion_fused_auc",
        "table2_iou_0_1_per_image_sensitivity",
        "table2_per_image_mean_dice",
    ):
        assert isinstance(m.metrics[key], float) and f"{key}_ci95" in m.metrics

"""Packing a training run into a model bundle: ``cem-node models import`` on run folders.

The runs are made by hand (a randomly initialised tiny detector and a small
XGBoost model, as ``tests/bundle_factory.py`` makes them), laid out as
``cem-node train detector`` and ``cem-node train radiomics`` write them; the
end-to-end packing of a real training run is in tests/test_radiomics_training.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xgboost
from typer.testing import CliRunner, Result

from cem_node.cli import app
from cem_node.contracts.params import (
    DetectorConfig,
    PostprocessParams,
    PreprocessParams,
)
from cem_node.models import BundleRegistry, BundleUsageError, load_bundle, sha256_file
from cem_node.pipeline.classifier import RadiomicsClassifier
from cem_node.pipeline.detector import build_detector, load_detector, save_detector_weights
from cem_node.pipeline.radiomics import pyradiomics_params
from cem_node.training.packing import (
    RESEARCH_DISCLAIMER,
    SYNTHETIC_DISCLAIMER,
    find_training_run,
    metrics_from_report,
    pack_training_run,
    stored_weights_dtype,
)
from tests.bundle_factory import FEATURES, TINY_RADIOMICS

TINY = DetectorConfig(
    backbone="mobilenet_v3_lite", fpn_channels=32, box_head_width=64, mask_head_channels=32
)
PREPROCESS = PreprocessParams(short_side=128, max_long_side=256)
THRESHOLDS = {"dl": 0.41, "radiomics": 0.37, "fused": 0.44, "breast": 0.52, "patient": 0.55}

runner = CliRunner()


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.upper().startswith("CEM_NODE_"):
            monkeypatch.delenv(var)


def make_run(root: Path, datasets: tuple[str, ...] = ("synthetic:4:0:small",)) -> Path:
    """``root/detector`` and ``root/radiomics`` as the two training commands write them."""
    detector_dir, radiomics_dir = root / "detector", root / "radiomics"
    detector_dir.mkdir(parents=True)
    radiomics_dir.mkdir(parents=True)
    torch.manual_seed(0)
    save_detector_weights(
        build_detector(TINY, PREPROCESS), detector_dir / "detector.safetensors", "float32"
    )
    (detector_dir / "detector_config.json").write_text(
        json.dumps(
            {
                "detector": TINY.model_dump(mode="json"),
                "preprocessing": PREPROCESS.model_dump(mode="json"),
                "training": {
                    "datasets": list(datasets),
                    "seed": 3,
                    "command": "cem-node train detector --out d",
                },
                "result": {
                    "best_epoch": 2,
                    "epochs_completed": 4,
                    "train_images": 12,
                    "val_images": 4,
                    "selected_by": "val_loss",
                },
            }
        )
    )
    (detector_dir / "history.json").write_text("[]\n")
    (detector_dir / "split.json").write_text(json.dumps({"train": {"samples": []}}))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, len(FEATURES)))
    y = (x[:, 0] > 0).astype(int)
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 2, "seed": 0, "nthread": 1},
        xgboost.DMatrix(x, label=y, feature_names=list(FEATURES)),
        num_boost_round=4,
    )
    RadiomicsClassifier(booster, list(FEATURES), [0.0] * 4, [1.0] * 4).save(radiomics_dir)
    (radiomics_dir / "radiomics_params.json").write_text(
        json.dumps(pyradiomics_params(TINY_RADIOMICS))
    )
    (radiomics_dir / "radiomics_settings.json").write_text(TINY_RADIOMICS.model_dump_json())
    (radiomics_dir / "thresholds.json").write_text(json.dumps({"thresholds": THRESHOLDS}))
    summary = {
        "command": "cem-node train radiomics --out r",
        "datasets": list(datasets),
        "seed": 5,
        "mask_mode": "manual",
        "grid": "fast",
        "detector": {"weights_sha256": sha256_file(detector_dir / "detector.safetensors")},
        "postprocessing": PostprocessParams(max_lesions=3).model_dump(mode="json"),
        "selection": {"selected": list(FEATURES)},
        "model": {"use_age": False},
        "cv_auc": {"mean": 0.81, "std": 0.05},
        "oof_auc": 0.78,
        "counts": {
            "training_rows": 40,
            "training_rows_by_label": {"malignant": 20, "benign": 20},
            "patients": 4,
            "samples_used": 16,
            "detections": 30,
            "matched": 12,
            "false_positives": 18,
        },
    }
    (radiomics_dir / "summary.json").write_text(json.dumps(summary))
    return root


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


def cli(*args: str) -> Result:
    return runner.invoke(app, ["models", *args])


def cli_json(*args: str, code: int = 0) -> Any:
    result = cli(*args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


# --- packing ------------------------------------------------------------------------------------


def test_pack_a_run_folder(run: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    data = cli_json(
        "import", str(run), "--name", "cem-run", "--version", "1.2.0", "--models-dir", str(models)
    )
    assert data["name"] == "cem-run" and data["version"] == "1.2.0"
    assert data["replaced"] is False and data["weights_dtype"] == "float32"
    bundle = BundleRegistry(models).load("cem-run")
    m = bundle.manifest
    assert m.training.synthetic is True
    assert m.intended_use.for_clinical_use is False
    assert m.intended_use.disclaimer == SYNTHETIC_DISCLAIMER
    assert m.thresholds.model_dump() == THRESHOLDS
    assert m.detector.config() == TINY
    assert m.preprocessing == PREPROCESS
    assert m.postprocessing == PostprocessParams(max_lesions=3)  # as the radiomics run used it
    assert m.radiomics.settings() == TINY_RADIOMICS
    assert m.training.seed == 3
    assert m.training.command == (
        "cem-node train detector --out d && cem-node train radiomics --out r"
    )
    training = m.training.data
    assert isinstance(training, dict)
    assert training["datasets"] == "synthetic:4:0:small"
    assert training["detector_seed"] == 3 and training["radiomics_seed"] == 5
    assert training["radiomics_training_lesions"] == 40
    assert training["radiomics_cv_auc"] == 0.81 and training["detector_best_epoch"] == 2
    assert set(m.files) == {
        "detector.safetensors",
        "radiomics_model.json",
        "radiomics_features.json",
        "radiomics_params.json",
        "training/detector_config.json",
        "training/history.json",
        "training/split.json",
        "training/radiomics_summary.json",
        "training/thresholds.json",
    }
    # the weights are copied as trained
    assert m.files["detector.safetensors"] == sha256_file(run / "detector" / "detector.safetensors")

    info = cli("info", "cem-run", "--models-dir", str(models))
    assert info.exit_code == 0, info.output
    assert SYNTHETIC_DISCLAIMER in info.stdout
    assert "radiomics_training_lesions" in info.stdout


def test_pack_with_a_validation_table(run: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    table = tmp_path / "validation.toml"
    table.write_text(
        "[validation]\n"
        'detection = "Detection validated on 41 real images: per-image sensitivity 95%."\n'
        'classification = "Classification NOT validated: no real benign lesion."\n'
        "classification_validated = false\n"
    )
    cli_json(
        "import", str(run), "--name", "cem-v", "--version", "1", "--models-dir", str(models),
        "--validation", str(table),
    )  # fmt: skip
    bundle = BundleRegistry(models).load("cem-v")
    assert bundle.manifest.validation is not None
    assert bundle.manifest.validation.detection.startswith("Detection validated on 41")
    assert bundle.identity().score_caveat == "score not validated"
    # checked as the manifest checks it, naming the field
    table.write_text('[validation]\ndetection = "x"\n')
    result = cli(
        "import", str(run), "--name", "cem-w", "--version", "1", "--models-dir", str(models),
        "--validation", str(table),
    )  # fmt: skip
    assert result.exit_code != 0
    assert "not a valid [validation] table" in result.output and "classification" in result.output
    assert not (models / "cem-w").exists()


def test_a_fine_tuned_detector_is_described(run: Path, tmp_path: Path) -> None:
    config_path = run / "detector" / "detector_config.json"
    record = json.loads(config_path.read_text())
    record["result"] |= {"pretrained": "stage1/best.safetensors (346 of 346 tensors)"}
    record["result"] |= {"hard_examples": 25, "keep_score": 0.45}
    record["result"] |= {"short_side": 512, "trained_short_side": 320}
    record["training"]["operating_point_command"] = "cem-node train operating-point --detector d"
    config_path.write_text(json.dumps(record))
    hard = {"rule": "misses", "weight": 4.0, "train_images": 12, "hard": ["a"]}
    (run / "detector" / "hard_examples.json").write_text(json.dumps(hard))
    (run / "detector" / "operating_point.json").write_text(json.dumps({"keep_score": 0.45}))
    models = tmp_path / "models"
    cli_json(
        "import", str(run), "--name", "tuned", "--version", "1.0.0", "--models-dir", str(models)
    )
    m = BundleRegistry(models).load("tuned").manifest
    assert "starting from the weights stage1/best.safetensors" in m.training.description
    assert "the 25 training images they missed a lesion on" in m.training.description
    assert m.training.data["detector_hard_examples"] == 25
    assert m.training.data["detector_pretrained"].startswith("stage1/best.safetensors")
    assert "training/hard_examples.json" in m.files
    assert (
        "input short side 512 (trained at 320) and keep score 0.45 chosen on the validation images"
        in m.training.description
    )
    assert m.training.data["detector_keep_score"] == 0.45
    assert m.training.data["detector_short_side"] == 512
    assert m.training.data["detector_trained_short_side"] == 320
    assert "training/operating_point.json" in m.files
    # the command that reproduces the bundle runs the three steps in order
    steps = m.training.command.split(" && ")
    assert [step.split()[2] for step in steps] == ["detector", "operating-point", "radiomics"]


def test_pack_explicit_runs_as_float16_with_metrics(run: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {
                "format": "cem-node-evaluation-report/1",
                "data": {"dataset": "synthetic:2:9:small", "split": "all"},
                "paper": {
                    "headline": [
                        {
                            "measure": "AUC",
                            "ours_path": "table3.manual.lesion.rows.fused.metrics.auc",
                            "ours": {"value": 0.875, "ci": [0.8, 0.93]},
                        },
                        {
                            "measure": "sensitivity",
                            "ours_path": "table2.iou>=0.1.per_lesion.sensitivity",
                            "ours": {"value": 0.9, "ci": None},
                        },
                        {
                            "measure": "undefined",
                            "ours_path": "table3.dl_all.lesion.rows.fused.metrics.auc",
                            "ours": {"value": None, "reason": "one class"},
                        },
                    ]
                },
            }
        )
    )
    models = tmp_path / "models"
    data = cli_json(
        "import",
        "--detector",
        str(run / "detector"),
        "--radiomics",
        str(run / "radiomics"),
        "--name",
        "cem-half",
        "--version",
        "0.9",
        "--weights-dtype",
        "float16",
        "--metrics",
        str(report),
        "--description",
        "half precision",
        "--models-dir",
        str(models),
    )
    assert data["weights_dtype"] == "float16"
    assert any("float16" in note for note in data["notes"])
    bundle = BundleRegistry(models).load("cem-half")
    m = bundle.manifest
    assert m.bundle.description == "half precision"
    assert m.detector.weights_dtype == "float16"
    assert m.metrics == {
        "table3_manual_lesion_fused_auc": 0.875,
        "table3_manual_lesion_fused_auc_ci95": "[0.8, 0.93]",
        "table2_iou_0_1_per_lesion_sensitivity": 0.9,
        "evaluation_dataset": "synthetic:2:9:small",
        "evaluation_split": "all",
    }
    weights = bundle.file("detector.safetensors")
    assert stored_weights_dtype(weights) == "float16"
    original = run / "detector" / "detector.safetensors"
    assert weights.stat().st_size < 0.6 * original.stat().st_size
    model = load_detector(weights, m.detector.config(), m.preprocessing)
    reference = load_detector(original, TINY, PREPROCESS)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        if a.is_floating_point():
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-3), name


def test_clinical_use(tmp_path: Path) -> None:
    synthetic = make_run(tmp_path / "synthetic")
    result = pack_training_run(
        synthetic / "detector",
        synthetic / "radiomics",
        tmp_path / "out" / "syn",
        name="syn",
        version="1",
        clinical=True,
    )
    use = result.bundle.manifest.intended_use
    assert not use.for_clinical_use and use.disclaimer == SYNTHETIC_DISCLAIMER
    assert any("--clinical refused" in note for note in result.notes)

    real = make_run(tmp_path / "real", datasets=("manifest:/data/cem/train.csv",))
    research = pack_training_run(
        real / "detector", real / "radiomics", tmp_path / "out" / "research", name="r", version="1"
    )
    use = research.bundle.manifest.intended_use
    assert not use.for_clinical_use and use.disclaimer == RESEARCH_DISCLAIMER
    assert not research.bundle.manifest.training.synthetic
    clinical = pack_training_run(
        real / "detector",
        real / "radiomics",
        tmp_path / "out" / "clinical",
        name="c",
        version="1",
        clinical=True,
        intended_use="Second reader for CEM lesions.",
    )
    use = clinical.bundle.manifest.intended_use
    assert use.for_clinical_use and use.disclaimer is None
    assert use.statement == "Second reader for CEM lesions."
    assert load_bundle(tmp_path / "out" / "clinical", check_name=False).sha256


def test_metrics_file_shapes(tmp_path: Path) -> None:
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"auc_patient": 0.91, "n_patients": 12, "note": "internal"}))
    assert metrics_from_report(flat) == {
        "auc_patient": 0.91,
        "n_patients": 12.0,
        "note": "internal",
    }
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"auc": {"value": 0.9}}))
    with pytest.raises(BundleUsageError, match="not a number or text"):
        metrics_from_report(nested)
    with pytest.raises(BundleUsageError, match="metrics file not found"):
        metrics_from_report(tmp_path / "missing.json")


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "where"),
    [
        ("detector/detector.safetensors", "detector.safetensors: missing"),
        ("detector/detector_config.json", "detector_config.json: missing"),
        ("radiomics/thresholds.json", "thresholds.json: missing"),
        ("radiomics/radiomics_model.json", "radiomics_model.json: missing"),
        ("radiomics/summary.json", "summary.json: missing"),
    ],
)
def test_a_missing_file_is_named(run: Path, tmp_path: Path, missing: str, where: str) -> None:
    (run / missing).unlink()
    models = tmp_path / "models"
    result = cli("import", str(run), "--name", "x", "--version", "1", "--models-dir", str(models))
    assert result.exit_code == 2, result.output
    assert where in result.stderr
    assert not (models / "x").exists()


def test_usage_errors(run: Path, tmp_path: Path) -> None:
    models = ["--models-dir", str(tmp_path / "models")]
    result = cli("import", str(run), "--version", "1", *models)
    assert result.exit_code == 2 and "needs --name" in result.stderr
    result = cli("import", str(run), "--name", "x", *models)
    assert result.exit_code == 2 and "needs --version" in result.stderr
    result = cli("import", "--detector", str(run / "detector"), "--name", "x", *models)
    assert result.exit_code == 2 and "go together" in result.stderr
    result = cli(
        "import",
        str(run),
        "--detector",
        str(run / "detector"),
        "--radiomics",
        str(run / "radiomics"),
        *models,
    )
    assert result.exit_code == 2 and "not both" in result.stderr
    result = cli("import", *models)
    assert result.exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("import", str(empty), "--name", "x", "--version", "1", *models)
    assert result.exit_code == 2 and "neither a model bundle" in result.stderr
    assert find_training_run(empty) is None

    # a radiomics run trained on another detector's detections
    other = make_run(tmp_path / "other")
    shutil.rmtree(run / "detector")
    torch.manual_seed(1)
    shutil.copytree(other / "detector", run / "detector")
    save_detector_weights(
        build_detector(TINY, PREPROCESS), run / "detector" / "detector.safetensors"
    )
    result = cli("import", str(run), "--name", "x", "--version", "1", *models)
    assert result.exit_code == 2 and "another detector" in result.stderr


def test_existing_bundle_and_bundle_options(run: Path, tmp_path: Path) -> None:
    models = ["--models-dir", str(tmp_path / "models")]
    assert cli("import", str(run), "--name", "cem-a", "--version", "1", *models).exit_code == 0
    result = cli("import", str(run), "--name", "cem-a", "--version", "2", *models)
    assert result.exit_code == 2 and "already in" in result.stderr
    data = cli_json("import", str(run), "--name", "cem-a", "--version", "2", "--force", *models)
    assert data["replaced"] is True and data["version"] == "2"
    # a bundle folder is imported as before; packing options are refused for it
    bundle_dir = tmp_path / "models" / "cem-a"
    result = cli("import", str(bundle_dir), "--version", "3", *models)
    assert result.exit_code == 2 and "only for packing" in result.stderr
    assert cli("import", str(bundle_dir), "--name", "cem-b", *models).exit_code == 0

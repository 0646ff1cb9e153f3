"""``cem-node train radiomics``: a tiny end-to-end run on three small synthetic studies.

A tiny detector is trained for two steps (it finds little), then the radiomics
model is trained with cheap radiomics settings: with ground-truth masks on the
real detector (thresholds that need matched detections fall back, with the
reason recorded), with detector masks on made-up detections (the ground-truth
masks seen through the network geometry, plus a false positive), and through
the CLI, which must reuse the feature cache. The run is then packed into a
bundle with ``cem-node models import`` and analyses a study.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cem_node.cli import app
from cem_node.contracts.params import (
    DecisionThresholds,
    DetectorConfig,
    PreprocessParams,
    RadiomicsSettings,
)
from cem_node.models import BundleRegistry
from cem_node.pipeline.classifier import RadiomicsClassifier
from cem_node.pipeline.detector import Detection
from cem_node.pipeline.radiomics import pyradiomics_params
from cem_node.training.datasets import load_dataset
from cem_node.training.detector_training import TrainConfig, train_detector
from cem_node.training.radiomics_training import (
    CACHE_FEATURES,
    CACHE_ROWS,
    RadiomicsTrainingError,
    map_detections,
    read_split_file,
    train_radiomics,
)

SPEC = "synthetic:3:0:256x320"
TINY = DetectorConfig(
    backbone="mobilenet_v3_lite", fpn_channels=32, box_head_width=64, mask_head_channels=32
)
SMALL_INPUT = PreprocessParams(short_side=128, max_long_side=256)
#: cheap radiomics: two shared cores (glcm on at most 32 grey levels)
CHEAP = RadiomicsSettings(
    log_sigmas_mm=(1.0,),
    wavelet=False,
    feature_classes=("firstorder", "shape2D", "glcm"),
    max_grey_levels=32,
)

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread, for every fixture too: detections (and so the cached masks) are
    bit-identical from run to run only with the same thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ./conf/node.toml and no CEM_NODE_* overrides from the developer's shell."""
    monkeypatch.chdir(tmp_path)
    for var in list(os.environ):
        if var.upper().startswith("CEM_NODE_"):
            monkeypatch.delenv(var)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("radiomics-training")


@pytest.fixture(scope="module")
def data(work: Path):
    return load_dataset(SPEC, cache_dir=work / "datasets")


@pytest.fixture(scope="module")
def detector_dir(work: Path, data) -> Path:
    """A tiny detector trained for two steps, laid out as `cem-node train detector` writes it."""
    out = work / "run" / "detector"
    config = TrainConfig(preset="fast", epochs=1, seed=0, device="cpu", max_steps_per_epoch=2)
    result = train_detector(data.samples, [], TINY, SMALL_INPUT, config, out, progress=False)
    shutil.copyfile(result.best_weights, out / "detector.safetensors")
    record = {
        "detector": TINY.model_dump(mode="json"),
        "preprocessing": SMALL_INPUT.model_dump(mode="json"),
        "training": {"datasets": [SPEC], "seed": 0, "command": "cem-node train detector (test)"},
        "result": {
            "best_epoch": result.best_epoch,
            "epochs_completed": result.epochs_completed,
            "train_images": result.train_images,
            "val_images": result.val_images,
            "selected_by": result.selected_by,
        },
    }
    (out / "detector_config.json").write_text(json.dumps(record, indent=2))
    split = {
        "datasets": [SPEC],
        "seed": 0,
        "train": {"patients": data.patients, "samples": [s.key for s in data.samples]},
        "val": {"patients": [], "samples": []},
        "test": {"patients": [], "samples": []},
    }
    (out / "split.json").write_text(json.dumps(split, indent=2))
    return out


@pytest.fixture(scope="module")
def manual_run(work: Path, data, detector_dir: Path):
    return train_radiomics(
        data.samples,
        detector_dir,
        work / "run" / "radiomics",
        masks="manual",
        settings=CHEAP,
        grid="fast",
        seed=0,
        device="cpu",
        use_age=True,
        datasets=[SPEC],
    )


# --- ground-truth masks, real (untrained) detector ----------------------------------------------


def test_manual_run_writes_the_model_and_records(manual_run, data) -> None:
    out = manual_run.out_dir
    for name in (
        "radiomics_model.json",
        "radiomics_features.json",
        "radiomics_params.json",
        "radiomics_settings.json",
        "thresholds.json",
        "summary.json",
        CACHE_FEATURES,
        CACHE_ROWS,
    ):
        assert (out / name).is_file(), name
    classifier = RadiomicsClassifier.load(
        out / "radiomics_model.json", out / "radiomics_features.json"
    )
    assert classifier.use_age  # synthetic ground truth gives every patient's age
    assert 1 <= len(classifier.selected_features) <= 10
    assert json.loads((out / "radiomics_params.json").read_text()) == json.loads(
        json.dumps(pyradiomics_params(CHEAP))
    )
    assert RadiomicsSettings.model_validate_json((out / "radiomics_settings.json").read_text()) == (
        CHEAP
    )

    summary = json.loads((out / "summary.json").read_text())
    counts = summary["counts"]
    lesions = sum(len(s.lesions) for s in data.samples)
    assert counts["training_rows"] + counts["radiomics_failed"] >= lesions
    assert counts["training_rows_by_label"]["malignant"] >= 5
    assert counts["training_rows_by_label"]["benign"] >= 5
    assert summary["mask_mode"] == "manual" and summary["datasets"] == [SPEC]
    assert summary["seed"] == 0 and summary["grid"] == "fast"
    assert set(summary["best_params"]) == {
        "max_depth",
        "min_child_weight",
        "gamma",
        "n_estimators",
        "learning_rate",
    }
    assert 0.0 <= summary["cv_auc"]["mean"] <= 1.0 and summary["cv_auc"]["std"] >= 0.0
    assert 0.0 <= summary["oof_auc"] <= 1.0
    assert summary["selection"]["method"] == "rfe"
    assert summary["age"] == {
        "requested": True,
        "used": True,
        "lesions_with_age": counts["training_rows"],
        "lesions_without_age": 0,
    }
    assert summary["detector"]["weights_sha256"]
    assert counts["extracted"] == manual_run.extracted > 0
    assert manual_run.reused == 0


def test_thresholds_are_youden_or_recorded_fallbacks(manual_run) -> None:
    document = json.loads((manual_run.out_dir / "thresholds.json").read_text())
    thresholds = DecisionThresholds.model_validate(document["thresholds"])
    assert thresholds == manual_run.thresholds
    details = document["details"]
    assert set(details) == {"dl", "radiomics", "fused", "breast", "patient"}
    for name, record in details.items():
        assert record["value"] == getattr(thresholds, name)
        if record["method"] == "fallback":
            assert record["value"] == 0.5 and record["reason"], name
        else:
            assert record["n_malignant"] > 0 and record["n_benign"] > 0
    radiomics = details["radiomics"]
    assert radiomics["method"] == "youden" and "out-of-fold" in radiomics["on"]
    assert "in-sample" in " ".join(document["notes"])
    # all three training patients have a malignant lesion: one class only
    assert details["patient"]["method"] == "fallback"
    assert "one class only" in details["patient"]["reason"]
    summary = manual_run.summary
    if summary["counts"]["matched"] == 0:  # the two-step detector found no lesion
        assert details["dl"]["method"] == "fallback"
        assert "no case" in details["dl"]["reason"]
        assert any("dl threshold" in n for n in manual_run.notes)


def test_feature_cache_is_plain_data(manual_run) -> None:
    out = manual_run.out_dir
    rows = json.loads((out / CACHE_ROWS).read_text())
    with np.load(out / CACHE_FEATURES, allow_pickle=False) as stored:
        matrix = stored["features"]
    assert matrix.dtype == np.float64
    assert matrix.shape == (len(rows["rows"]), len(rows["feature_names"]))
    modes = {r["mask_mode"] for r in rows["rows"]}
    assert "manual" in modes
    first = rows["rows"][0]
    for key in ("sample", "patient_id", "lesion_id", "label", "mask_mode", "settings_hash"):
        assert key in first
    failed = [i for i, r in enumerate(rows["rows"]) if r["error"]]
    ok = [i for i, r in enumerate(rows["rows"]) if not r["error"]]
    assert np.isfinite(matrix[ok]).all() and np.isnan(matrix[failed]).all()


def test_cli_reuses_the_feature_cache(manual_run, detector_dir: Path, work: Path) -> None:
    settings_file = work / "cheap.json"
    settings_file.write_text(CHEAP.model_dump_json())
    result = runner.invoke(
        app,
        [
            "train",
            "radiomics",
            "--dataset",
            SPEC,
            "--detector",
            str(detector_dir),
            "--masks",
            "manual",
            "--out",
            str(manual_run.out_dir),
            "--grid",
            "fast",
            "--radiomics-settings",
            str(settings_file),
            "--cache-dir",
            str(work / "datasets"),
            "--device",
            "cpu",
            "--age",
            "--no-progress",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["extracted"] == 0  # every row came from features.npz
    assert report["reused"] == report["counts"]["radiomics_rows"] > 0
    # the same data, settings and seed give the same model and thresholds
    assert report["thresholds"] == manual_run.thresholds.model_dump()
    assert report["selected_features"] == list(manual_run.classifier.selected_features)
    summary = json.loads((manual_run.out_dir / "summary.json").read_text())
    assert summary["command"].startswith("cem-node")
    assert summary["split_file"] == str(detector_dir / "split.json")


# --- detector masks -----------------------------------------------------------------------------


def _ground_truth_detections(samples, prepared) -> list[list[Detection]]:
    """Made-up detections: each lesion as the network would see it, plus one false positive."""
    out = []
    for sample, prep in zip(samples, prepared, strict=True):
        found = []
        for k, lesion in enumerate(sample.lesions):
            probability = prep.geometry.image_to_network(lesion.mask.astype(np.float32))
            rows, cols = np.nonzero(probability >= 0.5)
            malignant = 0.7 if lesion.label == "malignant" else 0.35
            malignant += 0.02 * k
            found.append(
                Detection(
                    box=(
                        float(cols.min()),
                        float(rows.min()),
                        float(cols.max()),
                        float(rows.max()),
                    ),
                    score=0.9 - 0.1 * k,
                    label="malignant" if malignant >= 0.5 else "benign",
                    p_benign=0.9 - malignant,
                    p_malignant=malignant,
                    mask_probability=probability.astype(np.float32),
                )
            )
        if sample.view == "CC":  # a false positive: a small square in the breast's middle
            height, width = prep.image.shape[1:]
            square = np.zeros((height, width), dtype=np.float32)
            square[height // 2 - 4 : height // 2 + 4, width // 4 - 4 : width // 4 + 4] = 1.0
            found.append(
                Detection(
                    box=(width / 4 - 4, height / 2 - 4, width / 4 + 4, height / 2 + 4),
                    score=0.2,
                    label="benign",
                    p_benign=0.6,
                    p_malignant=0.2,
                    mask_probability=square,
                )
            )
        out.append(found)
    return out


def test_detector_masks_with_matching_detections(work: Path, data, detector_dir: Path) -> None:
    result = train_radiomics(
        data.samples,
        detector_dir,
        work / "detector-masks",
        masks="detector",
        settings=CHEAP,
        grid="fast",
        seed=1,
        device="cpu",
        detect_fn=_ground_truth_detections,
    )
    counts = result.summary["counts"]
    assert counts["matched"] == counts["training_rows"] + counts["radiomics_failed"] > 0
    assert counts["false_positives"] == sum(1 for s in data.samples if s.view == "CC")
    assert counts["lesions_missed"] == 0
    details = {k: r.to_dict() for k, r in result.threshold_records.items()}
    for name in ("dl", "radiomics", "fused", "breast"):
        assert details[name]["method"] == "youden", (name, details[name])
    # the made-up DL probabilities (p_malignant / 0.9) separate the classes: the DL threshold
    # lies between the benign ones (at most 0.37 / 0.9) and the malignant ones (from 0.7 / 0.9)
    assert 0.37 / 0.9 < result.thresholds.dl <= 0.7 / 0.9 + 1e-9
    rows = json.loads((work / "detector-masks" / CACHE_ROWS).read_text())["rows"]
    assert {r["mask_mode"] for r in rows} == {"detector"}
    assert sum(1 for r in rows if r["label"] is None) == counts["false_positives"]
    assert not result.classifier.use_age


def test_detector_masks_without_matches_fail_early(work: Path, data, detector_dir: Path) -> None:
    out = work / "no-matches"
    with pytest.raises(RadiomicsTrainingError, match="use --masks manual") as raised:
        train_radiomics(
            data.samples,
            detector_dir,
            out,
            masks="detector",
            settings=CHEAP,
            device="cpu",
            detect_fn=lambda samples, prepared: [[] for _ in samples],
        )
    assert "0 malignant and 0 benign" in str(raised.value)
    assert not (out / CACHE_FEATURES).exists()  # nothing was extracted


def test_map_detections_follows_the_analysis(data) -> None:
    from cem_node.contracts.params import PostprocessParams
    from cem_node.pipeline.preprocess import preprocess_pair

    sample = data.samples[0]
    loaded = sample.load()
    prep = preprocess_pair(loaded.low_energy, loaded.recombined, SMALL_INPUT, sample.laterality)
    (found,) = _ground_truth_detections([sample], [prep])
    outside = np.ones(prep.image.shape[1:], dtype=np.float32)  # covers the whole network image
    found.insert(
        0,
        Detection(
            box=(0.0, 0.0, 1.0, 1.0),
            score=0.95,
            label="benign",
            p_benign=0.5,
            p_malignant=0.5,
            mask_probability=outside,
        ),
    )
    mapped = map_detections(prep, found, PostprocessParams())
    # the first mask takes the whole breast: the later ones are left empty and dropped
    assert len(mapped) == 1
    assert not (mapped[0].mask & ~prep.breast_mask).any()
    assert mapped[0].dl_probability == pytest.approx(0.5)


# --- errors -------------------------------------------------------------------------------------


def test_missing_detector_files(tmp_path: Path, data, detector_dir: Path) -> None:
    with pytest.raises(RadiomicsTrainingError, match="detector folder not found"):
        train_radiomics(data.samples, tmp_path / "nowhere", tmp_path / "out", settings=CHEAP)
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copyfile(detector_dir / "detector.safetensors", partial / "detector.safetensors")
    with pytest.raises(RadiomicsTrainingError, match=r"detector_config\.json: missing"):
        train_radiomics(data.samples, partial, tmp_path / "out", settings=CHEAP)
    with pytest.raises(RadiomicsTrainingError, match="split file not found"):
        read_split_file(partial / "split.json")

    result = runner.invoke(
        app,
        [
            "train",
            "radiomics",
            "--dataset",
            SPEC,
            "--detector",
            str(tmp_path / "nowhere"),
            "--masks",
            "manual",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2
    assert "detector folder not found" in result.stderr
    result = runner.invoke(
        app,
        [
            "train",
            "radiomics",
            "--dataset",
            SPEC,
            "--detector",
            str(partial),
            "--masks",
            "manual",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2
    assert "detector_config.json: missing" in result.stderr


# --- packing and analysing ----------------------------------------------------------------------


def test_pack_the_run_and_analyse_a_study(
    manual_run, detector_dir: Path, data, tmp_path: Path
) -> None:
    from cem_node.pipeline.analyse import LoadedModels, PairInput, StudyContext, analyse_study
    from cem_node.pipeline.pixels import SourceImage

    models = tmp_path / "models"
    result = runner.invoke(
        app,
        [
            "models",
            "import",
            "--detector",
            str(detector_dir),
            "--radiomics",
            str(manual_run.out_dir),
            "--name",
            "cem-tiny",
            "--version",
            "0.1.0",
            "--models-dir",
            str(models),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    bundle = BundleRegistry(models).load("cem-tiny")
    manifest = bundle.manifest
    assert manifest.training.synthetic and not manifest.intended_use.for_clinical_use
    assert manifest.intended_use.disclaimer == "synthetic phantom data, not for clinical use"
    assert manifest.thresholds == manual_run.thresholds
    assert manifest.radiomics.settings() == CHEAP
    assert manifest.preprocessing == SMALL_INPUT
    assert manifest.detector.config().model_dump(exclude={"weights_dtype"}) == TINY.model_dump(
        exclude={"weights_dtype"}
    )
    assert manifest.training.data["radiomics_mask_mode"] == "manual"
    assert "training/radiomics_summary.json" in manifest.files

    info = runner.invoke(app, ["models", "info", "cem-tiny", "--models-dir", str(models)])
    assert info.exit_code == 0, info.output
    assert "synthetic phantom data" in info.stdout

    loaded = LoadedModels.load(bundle, device="cpu")
    study = [s for s in data.samples if s.patient_id == data.samples[0].patient_id]
    pairs = []
    for sample in study:
        pixels = sample.load()
        images = {}
        for role, array in (("le", pixels.low_energy), ("rc", pixels.recombined)):
            images[role] = SourceImage(
                pixels=np.asarray(array, dtype=np.float32),
                sop_instance_uid=f"{sample.key}/{role}",
                laterality=sample.laterality,
                view=sample.view,
                pixel_spacing_mm=sample.pixel_spacing_mm,
                bits_stored=16,
                photometric_interpretation="MONOCHROME2",
            )
        pairs.append(PairInput(sample.laterality, sample.view, images["le"], images["rc"]))
    findings = analyse_study(
        loaded,
        StudyContext(study_instance_uid=study[0].study_id, patient_id=study[0].patient_id),
        pairs,
    )
    assert findings.model.name == "cem-tiny" and findings.model.sha256 == bundle.sha256
    assert findings.thresholds == manual_run.thresholds
    assert len(findings.views) == len(study)
    assert findings.patient.label in ("benign", "malignant")


def test_the_detector_runs_keep_score_is_used(
    manual_run, data, detector_dir: Path, tmp_path: Path
) -> None:
    """A keep score chosen on validation images (`train detector --choose-keep-score`)
    is the one the radiomics run detects with and records for the bundle."""
    chosen = tmp_path / "detector"
    shutil.copytree(detector_dir, chosen)
    record = json.loads((chosen / "detector_config.json").read_text())
    (chosen / "detector_config.json").write_text(
        json.dumps({**record, "postprocessing": {"keep_score": 0.35}})
    )
    out = tmp_path / "radiomics"
    shutil.copytree(manual_run.out_dir, out)  # the feature cache: nothing is extracted again
    result = train_radiomics(
        data.samples,
        chosen,
        out,
        masks="manual",
        settings=CHEAP,
        grid="fast",
        seed=0,
        device="cpu",
        use_age=True,
    )
    assert result.summary["postprocessing"]["keep_score"] == 0.35
    assert manual_run.summary["postprocessing"]["keep_score"] == 0.1
    (chosen / "detector_config.json").write_text(
        json.dumps({**record, "postprocessing": {"keep_score": "high"}})
    )
    with pytest.raises(RadiomicsTrainingError, match="invalid postprocessing"):
        train_radiomics(data.samples, chosen, out, masks="manual", settings=CHEAP, device="cpu")

"""Patient-level K-fold cross-validation: the folds, the by-patient bootstrap, and
``train detector --folds`` then ``evaluate --folds`` end to end on a tiny dataset."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cem_node.training import metrics as m
from cem_node.training.datasets import DatasetError
from cem_node.training.evaluation import select_from_split_file
from cem_node.training.folds import (
    FoldsRecord,
    assign_folds,
    fold_split,
    fold_split_document,
    read_folds,
)
from cem_node.training.radiomics_training import read_split_file
from cem_node.training.report import _Boot
from tests.bundle_factory import make_tiny_bundle


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread: quick on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _samples(n_patients: int, seed: int = 0) -> list[SimpleNamespace]:
    """1 to 4 images per patient; about a third of the patients with a malignant image."""
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        worst = ("malignant", "benign", "normal")[p % 3]
        for v in range(int(rng.integers(1, 5))):
            label = worst if v == 0 else "normal"
            key = f"fake:P{p:03d}:S1:{'LR'[v % 2]}{('CC', 'MLO')[v // 2]}"
            out.append(SimpleNamespace(key=key, patient_id=f"P{p:03d}", label=label))
    return out


@pytest.mark.parametrize(("n_patients", "k"), [(119, 5), (10, 3), (7, 7), (2, 2)])
def test_folds_partition_the_patients_in_balanced_folds(n_patients: int, k: int) -> None:
    samples = _samples(n_patients)
    folds = assign_folds(samples, k, seed=4)
    assert len(folds) == k
    every = [p for fold in folds for p in fold]
    assert len(every) == len(set(every)) == n_patients  # each patient in exactly one fold
    sizes = [len(fold) for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    malignant = {s.patient_id for s in samples if s.label == "malignant"}
    per_fold = [len(malignant & set(fold)) for fold in folds]
    assert max(per_fold) - min(per_fold) <= 1  # stratified by the worst label
    assert assign_folds(list(reversed(samples)), k, seed=4) == folds  # pure, order-free
    if n_patients > k:
        assert assign_folds(samples, k, seed=5) != folds


def test_folds_refuse_impossible_k() -> None:
    with pytest.raises(DatasetError, match="at least 2 folds"):
        assign_folds(_samples(5), 1)
    with pytest.raises(DatasetError, match="6 patients"):
        assign_folds(_samples(5), 6)


def test_fold_split_files_are_read_by_the_split_file_readers(tmp_path: Path) -> None:
    samples = _samples(11)
    dataset = SimpleNamespace(samples=samples, name="fake")
    record = FoldsRecord.build(samples, ["fake:spec"], k=3, seed=1)
    assert sum(record.images) == len(samples)
    record.write(tmp_path)
    assert read_folds(tmp_path) == record
    held_out: list[str] = []
    for number in range(1, 4):
        parts = fold_split(samples, record.patients, number, record.seed)
        path = tmp_path / f"split-{number}.json"
        path.write_text(json.dumps(fold_split_document(parts, ["fake:spec"], number, 3)))
        val = select_from_split_file(dataset, path, "val")  # type: ignore[arg-type]
        train = read_split_file(path, "train")
        assert sorted({s.patient_id for s in val}) == record.patients[number - 1]
        assert not {s.patient_id for s in val} & {k.split(":")[1] for k in train}
        assert len(val) + len(train) == len(samples)
        held_out += [s.key for s in val]
    assert sorted(held_out) == sorted(s.key for s in samples)  # every image out of fold once
    with pytest.raises(DatasetError, match="fold 4 does not exist"):
        fold_split(samples, record.patients, 4, 0)
    with pytest.raises(DatasetError, match="in no fold"):
        fold_split(_samples(12), record.patients, 1, 0)


def test_the_patient_bootstrap_moves_a_patients_cases_together() -> None:
    """Ten patients of ten identical images each: by patient the interval reflects ten
    independent units; by image it pretends a hundred, and is narrower."""
    flags = np.repeat(np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=float), 10)
    patients = [f"P{i}" for i in range(10) for _ in range(10)]
    by_case = _Boot(500, 0, 0.05).run(m.mean, flags, groups=patients)
    by_patient = _Boot(500, 0, 0.05, by_patient=True).run(m.mean, flags, groups=patients)
    assert by_case.value == by_patient.value == pytest.approx(0.6)
    assert by_patient.n == 100
    width = by_patient.ci_high - by_patient.ci_low  # type: ignore[operator]
    assert width > 1.5 * (by_case.ci_high - by_case.ci_low)  # type: ignore[operator]
    # every resample is a set of whole patients: the mean is a multiple of 1/10
    assert by_patient.ci_low * 10 == pytest.approx(round(by_patient.ci_low * 10))


def test_cli_train_folds_then_evaluate_pooled(tmp_path: Path, monkeypatch) -> None:
    from cem_node.cli import app

    runner = CliRunner()
    spec = "synthetic:3:0:small"
    out = tmp_path / "cv"
    train = [
        "train",
        "detector",
        "--dataset",
        spec,
        "--out",
        str(out),
        "--preset",
        "fast",
        "--short-side",
        "128",
        "--fpn-channels",
        "32",
        "--box-head-width",
        "64",
        "--mask-head-channels",
        "32",
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
        "--folds",
        "2",
    ]
    first = runner.invoke(app, [*train, "--fold", "2"])
    assert first.exit_code == 0, first.output
    assert (out / "fold-2" / "detector.safetensors").is_file()
    assert not (out / "fold-1").exists()
    rest = runner.invoke(app, [*train, "--resume", "--choose-keep-score"])
    assert rest.exit_code == 0, rest.output
    record = read_folds(out)
    assert (record.k, record.seed, record.datasets) == (2, 0, [spec])
    for number in (1, 2):
        split = json.loads((out / f"fold-{number}" / "split.json").read_text())
        assert split["val"]["patients"] == record.patients[number - 1]
        assert split["datasets"] == [spec] and split["fold"] == number
    chosen = json.loads((out / "fold-1" / "detector_config.json").read_text())
    assert "keep_score" in chosen["postprocessing"] and chosen["training"]["fold"] == 1
    again = runner.invoke(app, [*train, "--fold", "1"])
    assert again.exit_code == 2 and "--resume" in again.output
    other = runner.invoke(app, [*train[:-1], "3", "--fold", "1", "--resume"])
    assert other.exit_code == 2 and "other folds" in other.output

    make_tiny_bundle(tmp_path / "models", max_lesions=1)
    for key in [k for k in os.environ if k.startswith("CEM_NODE_")]:
        monkeypatch.delenv(key)
    (tmp_path / "absent.toml").write_text("")
    monkeypatch.setenv("CEM_NODE_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("CEM_NODE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CEM_NODE_ANALYSIS__RADIOMICS_MAX_GREY_LEVELS", "16")  # cheap texture
    report = tmp_path / "report"
    bundle_and_run_options = [
        "--model", "tiny-test", "--models-dir", str(tmp_path / "models"), "--bootstrap", "20",
        "--device", "cpu", "--radiomics-workers", "1",
    ]  # fmt: skip
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--folds",
            str(out),
            *bundle_and_run_options,
            "--out",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads((report / "report.json").read_text())
    images = sum(record.images)
    assert document["data"]["counts"]["images"] == images
    cv = document["cross_validation"]
    assert cv["k"] == 2 and cv["patients"] == 3
    assert sum(row["images"] for row in cv["per_fold"]) == images
    assert document["bootstrap"]["unit"] == "patient"
    cases = json.loads((report / "cases.json").read_text())
    assert Counter(i["patient_id"] for i in cases["images"]).keys() == {
        p for fold in record.patients for p in fold
    }
    text = (report / "report.md").read_text()
    assert "Pooled out-of-fold evaluation of 2 fold detectors" in text
    assert "## Folds" in text and "resamples of the patients" in text
    assert "fold 1:" in result.output and "fold 2:" in result.output

    # one fold's run, evaluated alone with --detector on its own held-out patients, gives that
    # fold's row: the run's detector and operating point replaced the bundle's
    single = tmp_path / "single"
    alone = runner.invoke(
        app,
        [
            "evaluate",
            "--detector",
            str(out / "fold-1"),
            "--split-file",
            str(out / "fold-1" / "split.json"),
            "--split",
            "val",
            *bundle_and_run_options,
            "--out",
            str(single),
        ],
    )
    assert alone.exit_code == 0, alone.output
    single_document = json.loads((single / "report.json").read_text())
    fold_row = cv["per_fold"][0]
    assert single_document["data"]["counts"]["images"] == fold_row["images"]
    single_cases = json.loads((single / "cases.json").read_text())
    pooled_fold_1 = [
        image for image in cases["images"] if image["patient_id"] in record.patients[0]
    ]

    def outlines(images: list) -> list:
        return sorted(
            (i["key"], [(d["area_px"], round(d["dl_probability"], 6)) for d in i["detections"]])
            for i in images
        )

    assert outlines(single_cases["images"]) == outlines(pooled_fold_1)
    assert any("replaced by the training run" in n for n in single_document["settings_notes"])
    assert "--detector" in single_document["command"]
    both = runner.invoke(
        app, ["evaluate", "--detector", str(out / "fold-1"), "--folds", str(out), "-o", "x"]
    )
    assert both.exit_code == 2 and "exclude each other" in both.output

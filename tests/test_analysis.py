"""The analysis of a study end to end (preprocess, detect, map back, radiomics, fusion)
with a tiny randomly initialised bundle: shapes, geometry, identity and plumbing.

The detections of random weights are meaningless; what is tested is what
every analysis must guarantee, whatever the weights.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from cem_node.cli import app
from cem_node.config import AnalysisSection, SelectionSection
from cem_node.contracts.analysis import AnalysisUnavailableError
from cem_node.contracts.findings import SCHEMA_PATH, Findings
from cem_node.contracts.params import DetectorConfig, PostprocessParams
from cem_node.models import BundleRegistry
from cem_node.pipeline import analyse as analyse_module
from cem_node.pipeline.analyse import LoadedModels
from cem_node.pipeline.detector import DetectorError, detect, load_detector
from cem_node.pipeline.pixels import read_source_image
from cem_node.pipeline.preprocess import preprocess_pair
from cem_node.pipeline.radiomics import LesionRadiomics
from cem_node.pipeline.service import BundleAnalyser, analyse_request, requests_from_files
from cem_node.synthetic import SynthOptions, generate_study
from tests.bundle_factory import TINY_PREPROCESS, make_tiny_bundle

runner = CliRunner()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("analysis")
    make_tiny_bundle(root / "models")
    generate_study(root / "studies", seed=11, index=0, options=SynthOptions(size="small"))
    return root


@pytest.fixture(scope="module")
def cli_run(workspace: Path) -> tuple[dict, Path]:
    """``cem-node analyse --json`` on the synthetic study (run once for the module)."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CEM_NODE_")}
    try:
        result = runner.invoke(
            app,
            [
                "analyse",
                str(workspace / "studies"),
                "--out",
                str(workspace / "out"),
                "--models-dir",
                str(workspace / "models"),
                "--model",
                "tiny-test",
                "--json",
            ],
        )
    finally:
        os.environ.update(saved)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), workspace / "out"


@pytest.fixture(scope="module")
def findings(cli_run: tuple[dict, Path]) -> Findings:
    documents, _ = cli_run
    assert len(documents["studies"]) == 1
    return Findings.model_validate(documents["studies"][0])


def test_cli_writes_findings_and_an_overlay_per_view(cli_run, findings: Findings) -> None:
    import jsonschema

    _, out = cli_run
    study_dir = out / findings.study_instance_uid
    written = Findings.from_json((study_dir / "findings.json").read_text())
    assert written.lesions == findings.lesions
    jsonschema.validate(
        json.loads((study_dir / "findings.json").read_text()), json.loads(SCHEMA_PATH.read_text())
    )
    overlays = sorted(p.name for p in study_dir.glob("overlay-*.png"))
    assert overlays == [
        "overlay-L-CC.png",
        "overlay-L-MLO.png",
        "overlay-R-CC.png",
        "overlay-R-MLO.png",
    ]
    assert all((study_dir / name).stat().st_size > 10_000 for name in overlays)
    # the SEG, SR and GSPS the node would send, naming the bundle and its disclaimer
    import pydicom

    names = sorted(p.name for p in (study_dir / "dicom").iterdir())
    with_lesions = sorted(f"{v.laterality}-{v.view}" for v in findings.views if v.lesion_ids)
    assert "sr.dcm" in names
    assert [n for n in names if n.startswith("seg-")] == [f"seg-{v}.dcm" for v in with_lesions]
    assert any(n.startswith("gsps-") for n in names)
    for name in names:
        ds = pydicom.dcmread(study_dir / "dicom" / name)
        assert ds.StudyInstanceUID == findings.study_instance_uid
        assert "not for clinical use" in ds.SeriesDescription.lower() or (
            "research" in ds.SeriesDescription.lower()
        )
        serials = {str(e.get("DeviceSerialNumber", "")) for e in ds.ContributingEquipmentSequence}
        assert findings.model.sha256 in serials, name


def test_findings_name_the_bundle_and_the_device(workspace: Path, findings: Findings) -> None:
    bundle = BundleRegistry(workspace / "models").load("tiny-test")
    assert findings.model == bundle.identity()
    assert findings.model.sha256 == bundle.sha256
    assert "not for clinical use" in (findings.model.disclaimer or "")
    assert findings.device.startswith("cpu")
    assert set(findings.timings_s) >= {"decode", "preprocess", "detect", "radiomics", "total"}


def test_lesions_are_valid_regions_of_their_source_image(workspace: Path, findings: Findings):
    assert len(findings.views) == 4
    assert findings.lesions, "the random detector is expected to report something"
    study_dir = next((workspace / "studies").iterdir())
    by_uid = {}
    for path in (study_dir / "dicom").iterdir():
        image = read_source_image(path)
        by_uid[image.sop_instance_uid] = image
    for view in findings.views:
        lesions = [les for les in findings.lesions if les.lesion_id in view.lesion_ids]
        assert len(lesions) <= 2  # the bundle's max_lesions
        rc = by_uid[view.recombined_sop_instance_uid]
        assert (view.rows, view.columns) == rc.shape
        breast = preprocess_pair(by_uid[view.low_energy_sop_instance_uid], rc, TINY_PREPROCESS)
        union = np.zeros(rc.shape, dtype=bool)
        for lesion in lesions:
            mask = lesion.mask.to_array(rc.shape)
            assert mask.sum() == lesion.area_px > 0
            assert not (mask & union).any(), "masks of one view overlap"
            union |= mask
            assert (mask & ~breast.breast_mask).sum() == 0, "a lesion outside the breast"
            rows, cols = np.nonzero(mask)
            x0, y0, x1, y1 = lesion.box
            assert x0 - 1 <= cols.min() and cols.max() <= x1 + 1
            assert y0 - 1 <= rows.min() and rows.max() <= y1 + 1
            outline = np.array(lesion.outline)
            assert outline[:, 0].min() >= cols.min() - 1 and outline[:, 0].max() <= cols.max() + 1
            assert lesion.area_mm2 == pytest.approx(lesion.area_px * 0.4 * 0.4, rel=1e-3)
            assert lesion.laterality == view.laterality and lesion.view == view.view


def test_scores_decisions_and_summaries_are_consistent(findings: Findings) -> None:
    thresholds = findings.thresholds
    uids = [les.tracking_uid for les in findings.lesions]
    assert len(set(uids)) == len(uids)
    for lesion in findings.lesions:
        if lesion.radiomics_probability is not None:
            mean = (lesion.dl_probability + lesion.radiomics_probability) / 2
            assert lesion.fused_probability == pytest.approx(mean)
            assert lesion.agreement == (lesion.dl_label == lesion.radiomics_label)
        expected = "malignant" if lesion.fused_probability >= thresholds.fused else "benign"
        if lesion.fused_source == "mean":
            assert lesion.fused_label == expected
    for breast in findings.breasts:
        scores = [
            les.fused_probability for les in findings.lesions if les.laterality == breast.laterality
        ]
        assert breast.lesion_count == len(scores)
        assert breast.score == (max(scores) if scores else None)
    assert findings.patient.score == max(les.fused_probability for les in findings.lesions)


def _request(workspace: Path):
    study_dir = next((workspace / "studies").iterdir())
    studies, skipped = requests_from_files([study_dir / "dicom"], SelectionSection())
    assert not skipped and len(studies) == 1
    return studies[0].request


def test_radiomics_failure_falls_back_to_dl(workspace: Path, monkeypatch) -> None:
    plans = []

    def failing(job, settings, plan=None):
        plans.append(plan)
        return LesionRadiomics(None, "mask too small (3 pixels)", [], 0.0)

    monkeypatch.setattr(analyse_module, "run_job", failing)
    bundle = BundleRegistry(workspace / "models").load("tiny-test")
    models = LoadedModels.load(bundle, "cpu")
    analysis = AnalysisSection(
        models_dir=workspace / "models", model="tiny-test", radiomics_workers=1
    )
    result = analyse_request(models, _request(workspace), analysis)
    # inference extracts only the classifier's features, the same plan for every lesion
    assert plans and all(plan is plans[0] for plan in plans) and plans[0] is not None
    planned = {
        f"{name}{suffix}" for suffix, image in plans[0].images.items() for name in image.names()
    }
    assert planned == set(models.classifier.selected_features)
    assert result.lesions
    for lesion in result.lesions:
        assert lesion.fused_source == "dl_only"
        assert lesion.fused_probability == lesion.dl_probability
        assert lesion.radiomics_error == "mask too small (3 pixels)"
        assert lesion.agreement is None
        assert any(note.startswith(lesion.lesion_id) and "DL only" in note for note in result.notes)


def test_detector_is_deterministic_on_cpu(workspace: Path) -> None:
    bundle = BundleRegistry(workspace / "models").load("tiny-test")
    models = LoadedModels.load(bundle, "cpu")
    study_dir = next((workspace / "studies").iterdir())
    files = sorted((study_dir / "dicom").iterdir())
    images = [read_source_image(p) for p in files]
    pair = preprocess_pair(images[0], images[0], TINY_PREPROCESS)
    post = PostprocessParams(keep_score=0.0)
    first = detect(models.detector, [pair.image], post)
    second = detect(models.detector, [pair.image], post)
    assert [(d.box, d.score, d.p_malignant) for d in first[0]] == [
        (d.box, d.score, d.p_malignant) for d in second[0]
    ]
    for a, b in zip(first[0], second[0], strict=True):
        assert np.array_equal(a.mask_probability, b.mask_probability)


def test_weights_that_do_not_match_the_architecture_are_refused(workspace: Path) -> None:
    bundle = BundleRegistry(workspace / "models").load("tiny-test")
    wider = DetectorConfig(
        backbone="mobilenet_v3_lite", fpn_channels=64, box_head_width=64, mask_head_channels=32
    )
    with pytest.raises(DetectorError, match="do not match the mobilenet_v3_lite architecture"):
        load_detector(bundle.file("detector.safetensors"), wider, TINY_PREPROCESS)


def test_a_modified_bundle_is_refused(workspace: Path, tmp_path: Path) -> None:
    import shutil

    models_dir = tmp_path / "models"
    shutil.copytree(workspace / "models" / "tiny-test", models_dir / "tiny-test")
    weights = models_dir / "tiny-test" / "detector.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    analyser = BundleAnalyser(AnalysisSection(models_dir=models_dir, model="tiny-test"))
    with pytest.raises(AnalysisUnavailableError, match=r"detector\.safetensors"):
        analyser.analyse(_request(workspace))
    result = runner.invoke(
        app,
        [
            "analyse",
            str(workspace / "studies"),
            "--out",
            str(tmp_path / "out"),
            "--models-dir",
            str(models_dir),
            "--model",
            "tiny-test",
        ],
    )
    assert result.exit_code == 2
    assert "detector.safetensors" in result.output and "checksum" in result.output


def test_the_node_worker_stores_the_findings(
    workspace: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy import select

    from cem_node.jobs.assembler import complete_due_studies
    from cem_node.store.models import Analysis, Finding, JobState
    from tests.test_jobs import Store

    store = Store(tmp_path, f"sqlite:///{tmp_path / 'node.db'}")
    study_dir = next((workspace / "studies").iterdir())
    store.receive(sorted((study_dir / "dicom").glob("*.dcm")))
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    analyser = BundleAnalyser(AnalysisSection(models_dir=workspace / "models", model="tiny-test"))
    with caplog.at_level(logging.INFO, logger="cem_node.jobs.worker"):
        assert store.worker(analyser).run_once()
    assert [job.state for job in store.jobs()] == [JobState.DONE]
    # the worker's log line names the analysis' stages, the encoding included
    (line,) = [r.getMessage() for r in caplog.records if "; in the analysis:" in r.getMessage()]
    for stage in ("decode", "preprocess", "detect", "radiomics", "total", "encode"):
        assert f"{stage} " in line.split("; in the analysis:")[1], line
    bundle = BundleRegistry(workspace / "models").load("tiny-test")
    with store.sessions.begin() as session:
        analysis = session.scalar(select(Analysis))
        assert analysis is not None
        assert (analysis.model_name, analysis.model_sha256) == ("tiny-test", bundle.sha256)
        findings = Findings.model_validate(analysis.document)
        rows = list(session.scalars(select(Finding).order_by(Finding.lesion_index)))
        assert len(rows) == len(findings.lesions) > 0
        assert analysis.document_schema_version == findings.schema_version
        for row, lesion in zip(rows, findings.lesions, strict=True):
            assert row.probability_fused == lesion.fused_probability
            assert row.recombined_sop_instance_uid == lesion.recombined_sop_instance_uid
    store.engine.dispose()


def test_analyse_says_why_real_mammograms_stored_as_secondary_capture_are_not_cem(
    workspace: Path, tmp_path: Path
) -> None:
    # observation (#19): `analyse` said "no mammography image" for CBIS-DDSM files,
    # which are mammograms stored as Secondary Capture
    study_dir = next((workspace / "studies").iterdir())
    for path in sorted((study_dir / "dicom").glob("*.dcm"))[:2]:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.save_as(tmp_path / path.name)
    (study,), skipped = requests_from_files([tmp_path], SelectionSection())
    assert skipped == [] and study.request is None
    assert "no mammography image" not in study.reason
    assert (
        "SOP class 1.2.840.10008.5.1.4.1.1.7 is not a mammography image (2 images)" in study.reason
    )
    assert "not a CEM study" in study.reason


def test_analyse_names_each_breast_and_view_once(workspace: Path, tmp_path: Path) -> None:
    # observation (#19): "L CC: L CC: no recombined image"
    import re
    import shutil

    study_dir = next((workspace / "studies").iterdir())
    for path in sorted((study_dir / "dicom").glob("LE_*.dcm")):
        shutil.copy(path, tmp_path / path.name)
    (study,), _ = requests_from_files([tmp_path], SelectionSection())
    assert study.request is None
    assert study.reason.count("no recombined image") == 4
    assert not re.search(r"\b([LR] (CC|MLO)): \1:", study.reason), study.reason
    assert not study.reason.startswith("not analysable: not analysable")

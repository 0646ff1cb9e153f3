"""The acceptance test of the product: modality -> cem-node -> PACS -> viewer.

dcmtk ``storescu`` plays the GE Senographe and sends a synthetic CEM study to
``cem-node serve``, which runs with its embedded defaults and the shipped demo
bundle (``models/cem-demo``) on the CPU. Orthanc is the PACS and the
destination of the results. The test asserts, in order:

1. SEG, SR and GSPS objects of the study arrive at Orthanc within the quiet
   period plus 60 s of the last image being acknowledged;
2. every one of them, as Orthanc stores it, passes dciodvfy and PixelMed
   (PixelMed's one known false positive on SEG tolerated, see test_seg) and
   names the model bundle and its "not for clinical use" statement;
3. the study's lesion is found: a SEG segment overlaps the ground-truth
   outline (Dice >= 0.5), and the SR carries the same lesion;
4. OHIF, reading Orthanc over DICOMweb in headless Chromium, draws the SEG and
   the SR outlines at the lesions and labels them with the fused probability
   (screenshots ``node-seg.png`` / ``node-sr.png`` in the screenshot folder);
5. the node stops cleanly on SIGTERM.

The images at Orthanc are stored without VOI LUT Function (OHIF 3.13.2 bug,
see test_viewer); the node receives them as the modality writes them.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from cem_node.dicom.objects.sr import PROBABILITY_OF_CANCER
from cem_node.models.registry import load_bundle
from cem_node.synthetic import SynthOptions, generate_study
from tests.dicom_validators import missing_tool, run_dciodvfy, run_pixelmed_validator
from tests.e2e.conftest import BrowserTools, DicomWebOrthanc, screenshot_dir
from tests.e2e.node_stack import (
    DEMO_MODEL,
    DEMO_MODELS_DIR,
    ServedNode,
    demo_bundle_present,
    wait_for_results,
)
from tests.e2e.test_viewer import (
    PAGE_TIMEOUT_S,
    ExpectedLesion,
    StudyUnderTest,
    _check_shot,
    _without_voi_lut_function,
    shot_job,
)
from tests.e2e.viewer import ViewerServer
from tests.test_seg import PIXELMED_DERIVATION_FALSE_POSITIVE

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

#: Shorter than the node's default (30 s) so the test is quick; the node waits this long
#: after the last image before it analyses the study.
QUIET_PERIOD_S = 5.0
#: Issue #7: results at the PACS within the quiet period plus 60 s on CPU.
RESULTS_WITHIN_S = QUIET_PERIOD_S + 60.0
#: A synthetic study (seed) with an enhancing malignant lesion (24 mm) and a small benign one,
#: both seen on CC and MLO; not in the demo bundle's training data (seed 7).
STUDY_SEED = 20261123
MIN_DICE = 0.5


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 0.0


def _seg_lesions(ds: Dataset) -> dict[str, tuple[str, np.ndarray]]:
    """Lesion id -> (image SOP Instance UID, mask) of each segment of a SEG."""
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[np.newaxis]
    fractional = ds.SegmentationType == "FRACTIONAL"
    labels = {int(s.SegmentNumber): str(s.TrackingID) for s in ds.SegmentSequence}
    shared = ds.SharedFunctionalGroupsSequence[0]
    out: dict[str, tuple[str, np.ndarray]] = {}
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        # a macro is per frame, or shared when it is the same for all frames (one segment)
        def macro(keyword: str, item: Dataset = item) -> Dataset:
            return (item if keyword in item else shared)[keyword][0]

        number = int(macro("SegmentIdentificationSequence").ReferencedSegmentNumber)
        source = macro("DerivationImageSequence").SourceImageSequence[0]
        mask = frame > (int(ds.MaximumFractionalValue) / 2 if fractional else 0)
        out[labels[number]] = (str(source.ReferencedSOPInstanceUID), mask)
    return out


def _sr_probabilities(ds: Dataset) -> dict[str, float]:
    """Lesion id -> fused probability of cancer (0-1) from the TID 1500 report."""
    content = hd.sr.srread(io.BytesIO(_to_bytes(ds))).content
    assert isinstance(content, hd.sr.MeasurementReport)
    out = {}
    for group in content.get_planar_roi_measurement_groups():
        measured = group.get_measurements(name=PROBABILITY_OF_CANCER)
        if measured:
            out[str(group.tracking_identifier)] = float(measured[0].value) / 100.0
    return out


def _to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _truth_masks(study: Path) -> list[tuple[str, str, np.ndarray]]:
    """(lesion id and view, RC image UID, mask) of every ground-truth lesion outline."""
    truth = json.loads((study / "ground_truth.json").read_text())
    out = []
    for lesion in truth["lesions"]:
        for name, view in lesion["views"].items():
            mask = np.asarray(Image.open(study / view["mask_png"])) > 0
            label = f"{lesion['lesion_id']} {name} ({lesion['pathology']}, {lesion['size_mm']} mm)"
            out.append((label, view["image_sop_instance_uids"]["recombined"], mask))
    return out


def test_modality_to_node_to_pacs_to_viewer(
    tmp_path: Path,
    browser_tools: BrowserTools,
    dicomweb_orthanc: DicomWebOrthanc,
    ohif: ViewerServer,
) -> None:
    if not demo_bundle_present():
        missing_tool(f"the demo bundle models/{DEMO_MODEL} (scripts/train_demo_bundle.sh)")
    study_dir = generate_study(tmp_path / "study", STUDY_SEED, 0, SynthOptions(size="small"))
    files = sorted((study_dir / "dicom").glob("*.dcm"))
    truth = _truth_masks(study_dir)
    assert truth, "the chosen study has no lesion: pick another STUDY_SEED"
    images = [_without_voi_lut_function(path) for path in files]
    study_uid = str(images[0].StudyInstanceUID)
    dicomweb_orthanc.store(images)  # the PACS has the images (as the modality sent them)

    node = ServedNode(tmp_path / "node", dicomweb_orthanc, quiet_period_s=QUIET_PERIOD_S)
    with node:
        node.send(files)
        try:
            arrived = wait_for_results(dicomweb_orthanc, study_uid, RESULTS_WITHIN_S + 30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nnode log:\n{node.log_tail()}") from None
        shown = node.cli("studies", "show", study_uid, "--json")
        assert isinstance(shown, dict)
        assert shown["state"] == "done", (shown["state"], shown.get("state_reason"))
    assert node.stop() == 0, node.log_tail()
    assert "cem-node stopped" in node.log_tail(5)
    print(
        f"results at the PACS {arrived.seconds:.1f} s after the last image was stored "
        f"(quiet period {QUIET_PERIOD_S:g} s): "
        + ", ".join(f"{kind} x{len(ids)}" for kind, ids in sorted(arrived.instances.items()))
    )
    assert arrived.seconds <= RESULTS_WITHIN_S, (
        f"results took {arrived.seconds:.1f} s (limit: quiet period + 60 s)"
    )

    # 2. as stored at the PACS: valid, and they say which model made them
    objects: dict[str, list[Dataset]] = {}
    folder = tmp_path / "results"
    folder.mkdir()
    for kind, ids in arrived.instances.items():
        for index, instance_id in enumerate(ids):
            path = folder / f"{kind}-{index}.dcm"
            path.write_bytes(dicomweb_orthanc.instance_file(instance_id))
            assert run_dciodvfy(path) == [], f"dciodvfy: {kind} {path}"
            report = run_pixelmed_validator(path)
            errors = [e for e in report.errors if e != PIXELMED_DERIVATION_FALSE_POSITIVE]
            assert errors == [], f"PixelMed: {kind} {path}: {errors}"
            objects.setdefault(kind, []).append(pydicom.dcmread(path))
    bundle = load_bundle(DEMO_MODELS_DIR / DEMO_MODEL).identity()
    for kind, datasets in objects.items():
        for ds in datasets:
            assert "NOT FOR CLINICAL USE" in str(ds.SeriesDescription).upper(), kind
            named = [
                (item.ManufacturerModelName, item.SoftwareVersions[-1], item.DeviceSerialNumber)
                for item in ds.get("ContributingEquipmentSequence", [])
                if "DeviceSerialNumber" in item
            ]
            assert (bundle.name, bundle.version, bundle.sha256) in named, (kind, named)

    # 3. the lesion is found where it is
    segmented = {
        lesion_id: found for ds in objects["seg"] for lesion_id, found in _seg_lesions(ds).items()
    }
    (sr,) = objects["sr"]
    probabilities = _sr_probabilities(sr)
    assert set(probabilities) >= set(segmented), (sorted(probabilities), sorted(segmented))
    best = {
        truth_id: max(
            (_dice(mask, found) for uid, found in segmented.values() if uid == image_uid),
            default=0.0,
        )
        for truth_id, image_uid, mask in truth
    }
    print(f"Dice of the best segment per ground-truth outline: {best}")
    assert max(best.values()) >= MIN_DICE, f"no segment at the lesion: {best}"

    # 4. what the radiologist sees
    lesions = [
        ExpectedLesion(lesion_id, uid, mask, probabilities[lesion_id])
        for lesion_id, (uid, mask) in segmented.items()
    ]
    detected_at_truth = max(
        segmented.items(),
        key=lambda item: max(
            (_dice(mask, item[1][1]) for _, uid, mask in truth if uid == item[1][0]), default=0.0
        ),
    )[0]
    seg_series = next(
        str(ds.SeriesInstanceUID)
        for ds in objects["seg"]
        if detected_at_truth in {str(s.TrackingID) for s in ds.SegmentSequence}
    )
    under_test = StudyUnderTest(
        study_uid=study_uid,
        images=images,
        objects=[ds for datasets in objects.values() for ds in datasets],
        seg_series=seg_series,
        sr_series=str(sr.SeriesInstanceUID),
        lesions=lesions,
        source=f"cem-node serve with models/{DEMO_MODEL}",
    )
    out = screenshot_dir()
    shots = {"node-seg": ("seg", seg_series), "node-sr": ("sr", under_test.sr_series)}
    job = shot_job(ohif, study_uid, shots, out)
    t0 = time.monotonic()
    report = browser_tools.run_shots(job, tmp_path, timeout_s=6 * PAGE_TIMEOUT_S)
    (out / "node-shots.json").write_text(json.dumps(report, indent=1))
    results = {shot["name"]: shot for shot in report["shots"]}
    problems = [
        _check_shot(name, results[name], out, ohif.failures, under_test, kind=expect)
        for name, (expect, _) in shots.items()
    ]
    print(f"viewer: {time.monotonic() - t0:.1f} s; screenshots in {out}")
    failed = [problem for problem in problems if problem]
    if failed:
        pytest.fail("\n\n".join(failed), pytrace=False)

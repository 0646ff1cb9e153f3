"""The node's results in a real radiology viewer: OHIF 3 in headless Chromium.

A synthetic CEM study and the SEG, SR and GSPS objects encoded from its
ground truth (``cem_node.dicom.objects.results.encode_results`` on the findings of
``tests/findings_factory.py``) are stored in Orthanc; OHIF (prebuilt, served
next to Orthanc's DICOMweb) opens the SEG series, then the SR series, and the
test checks the screenshots: overlay-coloured pixels inside the box of each
lesion of the image shown and none far from them, and SR labels that show
the lesions' fused probability of cancer first.

Screenshots are kept in ``CEM_NODE_E2E_SCREENSHOTS`` (default
``.cache/e2e-screenshots``): ``seg.png`` / ``sr.png`` as a user sees them, and
``*-analysis.png``, the viewport's canvas and outlines only, which the test
measures. ``shots.json`` has what the page reported.

Workaround: OHIF 3.13.2 cannot display images that carry VOI LUT Function
(0028,1056): its image loader takes the attribute's first character as the
function ("L" for LINEAR) and the viewport fails with "Invalid VOI LUT
function". The study's images are stored without that attribute.

Until the encoders exist (no ``cem_node.dicom.objects.results`` module), the test
stores one SEG and one SR made here instead (``fallback_objects``), so that
the viewer harness itself is tested; ``CEM_NODE_E2E_OBJECTS=fallback`` asks
for those objects anyway (to tell a harness problem from an encoder problem).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from tests.e2e.conftest import BrowserTools, DicomWebOrthanc, screenshot_dir
from tests.e2e.viewer import ViewerServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(480)]

#: Each wait in the browser (page load, image shown, overlay loaded).
PAGE_TIMEOUT_S = 60
#: A pixel is overlay-coloured when max(R,G,B) - min(R,G,B) exceeds this
#: (the images are grey; OHIF's outlines and segment colours are saturated).
SATURATION = 60
#: No overlay-coloured pixel may be farther than this (screen pixels) from a lesion.
NEAR_PX = 6


@dataclass(frozen=True, eq=False)
class ExpectedLesion:
    """A lesion as the viewer should draw it."""

    lesion_id: str
    image_uid: str  # SOP Instance UID of the image it is outlined on (RC)
    mask: np.ndarray  # bool, the image's size
    probability: float  # fused probability of cancer, 0-1


@dataclass
class StudyUnderTest:
    study_uid: str
    images: list[Dataset]
    objects: list[Dataset]
    seg_series: str
    sr_series: str
    lesions: list[ExpectedLesion]
    source: str  # where the objects come from


def _without_voi_lut_function(path: Path) -> Dataset:
    ds = pydicom.dcmread(path)
    ds.pop("VOILUTFunction", None)  # OHIF 3.13.2 bug, see the module docstring
    return ds


def _encoders_available() -> bool:
    if os.environ.get("CEM_NODE_E2E_OBJECTS") == "fallback":
        return False
    tests_dir = Path(__file__).resolve().parents[1]
    return (
        importlib.util.find_spec("cem_node.dicom.objects.results") is not None
        and (tests_dir / "findings_factory.py").is_file()
    )


def _study_from_encoders(tmp_path: Path) -> StudyUnderTest:
    from cem_node.dicom.objects.results import encode_results
    from tests.findings_factory import (
        findings_from_ground_truth,
        study_headers,
        synthetic_study,
    )

    study = synthetic_study(tmp_path / "study")
    findings = findings_from_ground_truth(study)
    shapes = {
        view.recombined_sop_instance_uid: (view.rows, view.columns) for view in findings.views
    }
    objects = encode_results(findings, study_headers(study), objects=("seg", "sr", "gsps"))
    datasets = [obj.dataset for obj in objects]
    kinds = {obj.object_type for obj in objects}
    assert kinds == {"seg", "sr", "gsps"}, kinds
    first = {kind: next(o.dataset for o in objects if o.object_type == kind) for kind in kinds}
    return StudyUnderTest(
        study_uid=findings.study_instance_uid,
        images=[_without_voi_lut_function(p) for p in sorted((study / "dicom").glob("*.dcm"))],
        objects=datasets,
        seg_series=first["seg"].SeriesInstanceUID,
        sr_series=first["sr"].SeriesInstanceUID,
        lesions=[
            ExpectedLesion(
                lesion.lesion_id,
                lesion.recombined_sop_instance_uid,
                lesion.mask.to_array(shapes[lesion.recombined_sop_instance_uid]),
                float(lesion.fused_probability),
            )
            for lesion in findings.lesions
        ],
        source="cem_node.dicom.objects.results.encode_results",
    )


def _study_from_fallback(tmp_path: Path) -> StudyUnderTest:
    from cem_node.synthetic import SynthOptions, generate_study
    from tests.e2e.fallback_objects import fallback_seg, fallback_sr, mask_outline

    study = generate_study(tmp_path / "study", 0, 0, SynthOptions(size="small"))
    truth = json.loads((study / "ground_truth.json").read_text())
    spec = max(truth["lesions"], key=lambda lesion: lesion["size_mm"])
    view_name, view = next(iter(spec["views"].items()))
    image_uid = view["image_sop_instance_uids"]["recombined"]
    images = [_without_voi_lut_function(p) for p in sorted((study / "dicom").glob("*.dcm"))]
    source = next(ds for ds in images if ds.SOPInstanceUID == image_uid)
    mask = np.asarray(Image.open(study / view["mask_png"])) > 0
    probability = 0.73
    seg = fallback_seg(source, mask, label=f"{spec['lesion_id']} {view_name}")
    sr = fallback_sr(source, mask_outline(mask), probability=probability)
    return StudyUnderTest(
        study_uid=truth["study"]["study_instance_uid"],
        images=images,
        objects=[seg, sr],
        seg_series=seg.SeriesInstanceUID,
        sr_series=sr.SeriesInstanceUID,
        lesions=[ExpectedLesion(spec["lesion_id"], image_uid, mask, probability)],
        source="tests/e2e/fallback_objects.py",
    )


# --- screenshot analysis ----------------------------------------------------------------------


def _image_to_page(viewport: dict[str, Any]) -> np.ndarray:
    """2x3 affine map from image pixel corners (x, y) to page pixels, from the page's corners."""
    (x0, y0), (x1, y1), (x2, y2) = viewport["corners"]
    cols, rows = viewport["size"]
    return np.array(
        [[(x1 - x0) / cols, (x2 - x0) / rows, x0], [(y1 - y0) / cols, (y2 - y0) / rows, y0]]
    )


def _page_mask(affine: np.ndarray, mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An image-sized mask as the page shows it (each page pixel's centre mapped back)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    inverse = np.linalg.inv(affine[:, :2])
    page = np.stack([xs + 0.5 - affine[0, 2], ys + 0.5 - affine[1, 2]])
    cols, rows = np.floor(np.tensordot(inverse, page, axes=1)).astype(int)
    inside = (cols >= 0) & (cols < mask.shape[1]) & (rows >= 0) & (rows < mask.shape[0])
    out = np.zeros(shape, dtype=bool)
    out[inside] = mask[rows[inside], cols[inside]]
    return out


def _overlay_mask(png: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(np.int16)
    return (rgb.max(axis=2) - rgb.min(axis=2)) > SATURATION


def _check_overlay(
    name: str, shot: dict[str, Any], analysis_png: Path, lesions: list[ExpectedLesion]
) -> tuple[list[ExpectedLesion], str]:
    """Assert the overlay is at the lesions of the image shown; return them and a summary.

    At each lesion: overlay-coloured pixels on its outline (within 3 px), at
    least a quarter of the outline's length (a dashed SR outline covers about
    half of it; a SEG fills it too), all inside the lesion's box. Elsewhere in
    the viewport: no overlay-coloured pixel farther than ``NEAR_PX`` from a lesion.
    """
    from scipy import ndimage

    viewports = [v for v in shot.get("viewports", []) if v.get("corners")]
    assert len(viewports) == 1, f"expected one viewport with an image: {viewports}"
    viewport = viewports[0]
    shown = [lesion for lesion in lesions if f"/{lesion.image_uid}/" in viewport["imageId"]]
    assert shown, (
        f"the image shown ({viewport['imageId']}) has none of the lesions "
        f"{[(lesion.lesion_id, lesion.image_uid) for lesion in lesions]}"
    )
    affine = _image_to_page(viewport)
    overlay = _overlay_mask(analysis_png)
    shape = overlay.shape[:2]
    vx, vy, vw, vh = (round(v) for v in viewport["rect"])
    in_viewport = np.zeros(shape, dtype=bool)
    in_viewport[vy + 3 : vy + vh - 3, vx + 3 : vx + vw - 3] = True  # not its border
    near_any = np.zeros(shape, dtype=bool)
    lines = []
    for lesion in shown:
        on_page = _page_mask(affine, lesion.mask, shape)
        distance = ndimage.distance_transform_edt(~on_page)
        outline = on_page & ~ndimage.binary_erosion(on_page)
        at_lesion = overlay & (distance <= 3)
        ys, xs = np.nonzero(on_page)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        in_box = int(at_lesion[max(y0 - 3, 0) : y1 + 3, max(x0 - 3, 0) : x1 + 3].sum())
        lines.append(
            f"{lesion.lesion_id}: box x {x0}-{x1} y {y0}-{y1} on the page, "
            f"{in_box} overlay pixels at it (outline {int(outline.sum())} px)"
        )
        assert in_box >= 0.25 * outline.sum(), f"too little overlay at the lesion: {lines[-1]}"
        near_any |= distance <= NEAR_PX
    far = overlay & in_viewport & ~near_any
    if far.any():
        ys, xs = np.nonzero(far)
        raise AssertionError(
            f"{int(far.sum())} overlay pixels farther than {NEAR_PX} px from the lesions "
            f"(x {xs.min()}-{xs.max()}, y {ys.min()}-{ys.max()}); " + "; ".join(lines)
        )
    return shown, "; ".join(lines)


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _shows_probability(text: str, probability: float) -> bool:
    """Whether the first number of a label is the probability (as 0-1 or as a percentage)."""
    match = _NUMBER.search(text)
    if match is None:
        return False
    value = float(match.group())
    return abs(value - 100 * probability) <= 0.51 or abs(value - probability) <= 0.0051


def shot_job(
    ohif: ViewerServer, study_uid: str, shots: dict[str, tuple[str, str]], out: Path
) -> dict[str, Any]:
    """The ``shot.mjs`` job that opens each series (name -> (seg|sr, series UID)) in OHIF."""
    return {
        "timeoutMs": PAGE_TIMEOUT_S * 1000,
        "settleMs": 1000,
        "width": 1280,
        "height": 800,
        "shots": [
            {
                "name": name,
                "url": ohif.viewer_url(study_uid, series),
                "expect": expect,
                "screenshot": str(out / f"{name}.png"),
                "analysisScreenshot": str(out / f"{name}-analysis.png"),
            }
            for name, (expect, series) in shots.items()
        ],
    }


# --- the test ---------------------------------------------------------------------------------


def test_ohif_shows_seg_and_sr_outlines_at_the_lesions(
    tmp_path: Path,
    browser_tools: BrowserTools,
    dicomweb_orthanc: DicomWebOrthanc,
    ohif: ViewerServer,
) -> None:
    t0 = time.monotonic()
    if _encoders_available():
        study = _study_from_encoders(tmp_path)
    else:
        study = _study_from_fallback(tmp_path)
    print(f"objects from {study.source}")
    dicomweb_orthanc.store(study.images)
    dicomweb_orthanc.store(study.objects)

    out = screenshot_dir()
    shots = {"seg": ("seg", study.seg_series), "sr": ("sr", study.sr_series)}
    job = shot_job(ohif, study.study_uid, shots, out)
    for stale in (out / f"{name}{suffix}.png" for name in shots for suffix in ("", "-analysis")):
        stale.unlink(missing_ok=True)
    report = browser_tools.run_shots(job, tmp_path, timeout_s=6 * PAGE_TIMEOUT_S)
    (out / "shots.json").write_text(json.dumps(report, indent=1))
    results = {shot["name"]: shot for shot in report["shots"]}
    print(f"browser {report['browser']}; screenshots in {out}:")
    for name in shots:
        print(f"  {out / f'{name}.png'}  {out / f'{name}-analysis.png'}")

    problems = [_check_shot(name, results[name], out, ohif.failures, study) for name in shots]
    print(f"e2e viewer test: {time.monotonic() - t0:.1f} s")
    failed = [problem for problem in problems if problem]
    if failed:
        pytest.fail(f"objects from {study.source}:\n" + "\n\n".join(failed), pytrace=False)


def _check_shot(
    name: str,
    shot: dict[str, Any],
    out: Path,
    proxy_failures: list[str],
    study: StudyUnderTest,
    *,
    kind: str | None = None,
) -> str | None:
    """Check one shot of a SEG or SR series (``kind``, default: the name); the problem or None."""
    kind = kind or name
    context = (
        f"\n  page errors: {shot.get('errors')}\n  toasts: {shot.get('toasts')}"
        f"\n  proxy failures: {proxy_failures}\n  screenshot: {out / f'{name}.png'}"
    )
    if not shot["ok"]:
        return f"{name}: {shot['error']}{context}\n  page text: {shot.get('bodyText')!r}"
    errors = [t for t in shot.get("toasts", []) if t.get("type") == "error"]
    if errors:
        return f"{name}: OHIF reported errors{context}"
    print(f"{name}: {shot['ms']} ms, toasts {shot.get('toasts')}")
    try:
        if kind == "seg":
            assert shot["segmentations"], "no segmentation loaded"
        shown, summary = _check_overlay(name, shot, out / f"{name}-analysis.png", study.lesions)
        if kind == "seg":
            print(f"seg: {[s['segments'] for s in shot['segmentations']]}; {summary}")
            return None
        labels = [text["text"] for text in shot["svgTexts"]]
        for lesion in shown:
            assert any(_shows_probability(label, lesion.probability) for label in labels), (
                f"no label starts with the fused probability {lesion.probability:.3f} "
                f"of {lesion.lesion_id}: {labels}"
            )
        print(f"sr: labels {labels}; {summary}")
    except AssertionError as exc:
        return f"{name}: {exc}{context}"
    return None

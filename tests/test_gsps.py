"""The lesion-outline GSPS (cem_node.dicom.objects.gsps), as encode_results makes it."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cem_node import __version__
from cem_node.contracts.findings import Findings
from cem_node.dicom import validation
from cem_node.dicom.objects.common import NOT_FOR_CLINICAL_USE, ReportingDevice
from cem_node.dicom.objects.gsps import build_view_gsps, dicom_points
from cem_node.dicom.objects.results import encode_results
from cem_node.dicom.objects.seg import lesion_label
from tests.dicom_validators import dciodvfy_messages, pixelmed_jar
from tests.findings_factory import findings_from_ground_truth, study_headers, synthetic_study

GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID")
IDENTITY += ("StudyDate", "StudyTime", "AccessionNumber", "StudyID")

#: JVM options that halve PixelMed's run time (its XSLT compilation needs no
#: optimising JIT): about 8 s instead of 17 s a file.
QUICK_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_study(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def headers(study: Path) -> list[pydicom.Dataset]:
    return study_headers(study)


@pytest.fixture(scope="module")
def findings(study: Path) -> Findings:
    return findings_from_ground_truth(study)


@pytest.fixture(scope="module")
def written(
    findings: Findings, headers: list[pydicom.Dataset], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Every GSPS file these tests write, by view: R-CC and R-MLO (two lesions each)."""
    out = tmp_path_factory.mktemp("gsps")
    files = {}
    for obj in encode_results(findings, headers, objects=["gsps"]):
        name = obj.dataset.GraphicGroupSequence[0].GraphicGroupLabel.rsplit("-", 1)[0]
        files[name] = out / f"{name}.dcm"
        obj.dataset.save_as(files[name], enforce_file_format=True)
    return files


@pytest.mark.tools
def test_every_gsps_passes_dciodvfy(written: dict[str, Path]) -> None:
    assert list(written) == ["R-CC", "R-MLO"]
    for path in written.values():
        assert dciodvfy_messages(path) == ["GrayscaleSoftcopyPresentationState"], path


@pytest.mark.tools
@pytest.mark.slow
def test_pixelmed_has_no_rules_for_gsps_and_finds_no_error(written: dict[str, Path]) -> None:
    pixelmed_jar()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JAVA_TOOL_OPTIONS", QUICK_JVM)
        report = validation.pixelmed_validate(next(iter(written.values())))
    # PixelMed's DicomInstanceValidator (2022) does not know the PR IOD
    assert not report.supported and report.errors == [], report.output


def _items(ds: pydicom.Dataset, uid: str) -> list[pydicom.Dataset]:
    return [
        item
        for item in ds.GraphicAnnotationSequence
        if item.ReferencedImageSequence[0].ReferencedSOPInstanceUID == uid
    ]


def test_outlines_and_labels_on_both_images_round_trip(
    findings: Findings, written: dict[str, Path]
) -> None:
    for lesion in findings.lesions:
        view = next(v for v in findings.views if lesion.lesion_id in v.lesion_ids)
        ds = pydicom.dcmread(written[f"{view.laterality}-{view.view}"])
        assert len(ds.GraphicGroupSequence) == len(view.lesion_ids) == 2
        assert ds.SOPClassUID == GSPS and ds.Modality == "PR"
        assert ds.Laterality == lesion.laterality
        refs = {
            image.ReferencedSOPInstanceUID
            for series in ds.ReferencedSeriesSequence
            for image in series.ReferencedImageSequence
        }
        assert refs == {lesion.recombined_sop_instance_uid, lesion.low_energy_sop_instance_uid}
        for uid in refs:
            items = _items(ds, uid)
            (outline,) = [
                g
                for item in items
                for g in item.get("GraphicObjectSequence", [])
                if g.TrackingUID == lesion.tracking_uid
            ]
            assert outline.GraphicType == "POLYLINE" and outline.GraphicAnnotationUnits == "PIXEL"
            assert (outline.TrackingID, outline.TrackingUID) == (
                lesion.lesion_id,
                lesion.tracking_uid,
            )
            points = np.array(outline.GraphicData).reshape(-1, 2)
            # DICOM pixel coordinates: the top-left pixel's centre is (0.5, 0.5)
            expected = np.array(lesion.outline) + 0.5
            assert np.allclose(points, expected) and np.array_equal(points[0], points[-1])
            assert np.array_equal(points, dicom_points(lesion.outline, view.rows, view.columns))
            texts = [t for item in items for t in item.get("TextObjectSequence", [])]
            labels = [t.UnformattedTextValue for t in texts]
            assert lesion_label(lesion, findings.model) in labels
            # no score without its caveat (the bundle's classification is not validated)
            scores = [label for label in labels if "%" in label]
            assert scores and all(
                label.endswith(f"% ({findings.model.score_caveat})") for label in scores
            )
            assert any(text.startswith(NOT_FOR_CLINICAL_USE) for text in labels)
            (label,) = [
                t for t in texts if t.UnformattedTextValue == lesion_label(lesion, findings.model)
            ]
            left, top = label.BoundingBoxTopLeftHandCorner
            right, bottom = label.BoundingBoxBottomRightHandCorner
            assert 0 <= left < right <= view.columns and 0 <= top < bottom <= view.rows
        assert {layer.GraphicLayer for layer in ds.GraphicLayerSequence} == {
            "CEM_AI_OUTLINES",
            "CEM_AI_LABELS",
        }


def test_window_identity_equipment_and_disclaimer(
    findings: Findings, headers: list[pydicom.Dataset], written: dict[str, Path]
) -> None:
    lesion = findings.lesions[0]
    ds = pydicom.dcmread(written[f"{lesion.laterality}-{lesion.view}"])
    by_uid = {h.SOPInstanceUID: h for h in headers}
    for keyword in IDENTITY:
        assert ds[keyword].value == headers[0][keyword].value, keyword
    for voi in ds.SoftcopyVOILUTSequence:
        source = by_uid[voi.ReferencedImageSequence[0].ReferencedSOPInstanceUID]
        assert float(voi.WindowCenter) == float(source.WindowCenter)
        assert float(voi.WindowWidth) == float(source.WindowWidth)
        assert voi.WindowCenterWidthExplanation == source.WindowCenterWidthExplanation
    assert ds.SeriesDescription == f"CEM AI: lesion outlines ({NOT_FOR_CLINICAL_USE})"
    assert NOT_FOR_CLINICAL_USE in ds.ContentDescription and ds.ContentLabel == "CEM_AI_OUTLINES"
    (model,) = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "cem-node"]
    assert (model.ManufacturerModelName, model.DeviceSerialNumber) == (
        "cem-demo",
        findings.model.sha256,
    )
    assert list(model.SoftwareVersions) == [__version__, "0.3.0"]
    assert model.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert str(ds.PresentationCreationDate) == "20250612"


def test_views_without_lesions_get_no_gsps(study: Path, headers: list[pydicom.Dataset]) -> None:
    empty = findings_from_ground_truth(study, max_lesions=0)
    assert encode_results(empty, headers, objects=["gsps"]) == []
    view = empty.views[0]
    assert not view.lesion_ids
    by_uid = {h.SOPInstanceUID: h for h in headers}
    with pytest.raises(ValueError, match="has no lesion"):
        build_view_gsps(
            empty,
            view,
            by_uid[view.recombined_sop_instance_uid],
            by_uid[view.low_energy_sop_instance_uid],
            device=ReportingDevice(device_serial_number="CEMNODE"),
            series_instance_uid="1.2.826.0.1.3680043.8.498.4001",
            series_number=9003,
            sop_instance_uid="1.2.826.0.1.3680043.8.498.4001.1",
        )


def test_outline_points_are_kept_inside_the_image() -> None:
    # a lesion touching the top-left corner: marching squares gives -0.5
    points = dicom_points([(-0.5, 0.0), (3.0, -0.5), (3.0, 4.0)], rows=10, columns=10)
    assert points.min() == 0.0 and np.array_equal(points[0], points[-1])
    assert isinstance(hd.pr.GraphicObject(
        graphic_type="POLYLINE", graphic_data=points, units="PIXEL"
    ), pydicom.Dataset)  # fmt: skip

"""The analysis report (cem_node.dicom.objects.sr) and encode_results
(cem_node.dicom.objects.results)."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from cem_node import __version__
from cem_node.contracts.analysis import ResultObject
from cem_node.contracts.findings import Findings
from cem_node.dicom import validation
from cem_node.dicom.objects.common import COMPREHENSIVE_SR, NOT_FOR_CLINICAL_USE
from cem_node.dicom.objects.predecessors import REPLACES_PREFIX
from cem_node.dicom.objects.results import (
    encode_not_analysable,
    encode_results,
    replacing_earlier_reports,
    result_series_numbers,
)
from cem_node.dicom.objects.sr import (
    DL_PROBABILITY,
    NO_LESION_STATEMENT,
    PROBABILITY_OF_CANCER,
    RADIOMICS_PROBABILITY,
    low_energy_tracking_uid,
    spacing_source,
)
from tests.dicom_validators import dciodvfy_messages, pixelmed_jar, require_tool
from tests.findings_factory import (
    RADIOMICS_ERROR,
    findings_from_ground_truth,
    model_identity,
    study_headers,
    synthetic_study,
)

IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID")
IDENTITY += ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName")
#: PixelMed's (2022) TID 1410 / 1501 have no rows for qualitative evaluations (CODE or
#: TEXT items, in the standard since CP-1795): it warns that ours are "not in template".
PIXELMED_EXPECTED_WARNING = "Content Item not in template"

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
    # R-CC-1: DL says benign, radiomics malignant; R-MLO-2: radiomics failed
    return findings_from_ground_truth(
        study, radiomics_missing={"R-MLO-2"}, scores={"R-CC-1": (0.40, 0.70)}
    )


@pytest.fixture(scope="module")
def empty(study: Path) -> Findings:
    return findings_from_ground_truth(study, max_lesions=0)


@pytest.fixture(scope="module")
def objects(findings: Findings, headers: list[pydicom.Dataset]) -> list[ResultObject]:
    return encode_results(findings, headers)


@pytest.fixture(scope="module")
def written(
    objects: list[ResultObject],
    empty: Findings,
    headers: list[pydicom.Dataset],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """Every SR file these tests write: the lesion report, the no-lesion report, and
    the no-lesion report of round 2 replacing the lesion report sent in round 1."""
    out = tmp_path_factory.mktemp("sr")
    (lesions,) = [o.dataset for o in objects if o.object_type == "sr"]
    (none,) = [o.dataset for o in encode_results(empty, headers, objects=["sr"])]
    (replacing,) = replacing_earlier_reports(
        encode_results(empty, headers, objects=["sr"], analysis_round=2), [lesions]
    )
    files = {
        "lesions": out / "lesions.dcm",
        "none": out / "none.dcm",
        "replacing": out / "replacing.dcm",
    }
    lesions.save_as(files["lesions"], enforce_file_format=True)
    none.save_as(files["none"], enforce_file_format=True)
    replacing.dataset.save_as(files["replacing"], enforce_file_format=True)
    return files


def _validate(path: Path) -> tuple[list[str], validation.PixelMedReport]:
    return dciodvfy_messages(path), validation.pixelmed_validate(path, "DicomSRValidator")


@pytest.fixture(scope="module")
def reports(
    written: dict[str, Path],
) -> dict[str, tuple[list[str], validation.PixelMedReport]]:
    """dciodvfy and PixelMed's DicomSRValidator (about 20 s a file) on the files, two at once."""
    require_tool("dciodvfy")
    pixelmed_jar()
    with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(max_workers=2) as pool:
        patch.setenv("JAVA_TOOL_OPTIONS", QUICK_JVM)
        return dict(zip(written, pool.map(_validate, written.values()), strict=True))


@pytest.fixture(scope="module")
def report(written: dict[str, Path]) -> hd.sr.MeasurementReport:
    content = hd.sr.srread(written["lesions"]).content
    assert isinstance(content, hd.sr.MeasurementReport)
    return content


def _items(seq: pydicom.Sequence) -> Iterator[pydicom.Dataset]:
    for item in seq:
        yield item
        if "ContentSequence" in item:
            yield from _items(item.ContentSequence)


def _texts(ds: pydicom.Dataset, meaning: str) -> list[str]:
    return [
        item.TextValue
        for item in _items(ds.ContentSequence)
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]


# --- validators ---------------------------------------------------------------------------------


@pytest.mark.tools
@pytest.mark.slow
def test_every_report_passes_dciodvfy_and_pixelmed(
    reports: dict[str, tuple[list[str], validation.PixelMedReport]],
) -> None:
    for name, (messages, pixelmed) in reports.items():
        assert messages[0] == "ComprehensiveSR", (name, messages)
        assert [m for m in messages if "Error" in m] == [], (name, messages)
        # the private coding scheme (identified in the Coding Scheme Identification Sequence)
        others = [m for m in messages[1:] if "<99CEMNODE>" not in m]
        assert others == [], (name, others)
        assert pixelmed.supported, pixelmed.output
        assert "Found Root Template TID_1500 (MeasurementReport)" in pixelmed.output
        assert pixelmed.errors == [], pixelmed.output
        warnings = [line for line in pixelmed.output.splitlines() if line.startswith("Warning")]
        unexpected = [w for w in warnings if PIXELMED_EXPECTED_WARNING not in w]
        assert unexpected == [], pixelmed.output
        # only our qualitative evaluations (private concept names) are "not in template"
        assert all("99CEMNODE" in w for w in warnings), warnings


# --- the lesion report --------------------------------------------------------------------------


def test_each_lesion_has_an_rc_group_and_an_le_group_with_the_outline(
    findings: Findings, report: hd.sr.MeasurementReport
) -> None:
    groups = report.get_planar_roi_measurement_groups()
    assert len(groups) == 2 * len(findings.lesions) == 8  # 2 views with 2 lesions each
    for lesion in findings.lesions:
        expected = np.array(lesion.outline) + 0.5  # DICOM: top-left pixel centre at 0.5
        (rc,) = report.get_planar_roi_measurement_groups(tracking_uid=lesion.tracking_uid)
        (le,) = report.get_planar_roi_measurement_groups(
            tracking_uid=low_energy_tracking_uid(lesion)
        )
        assert rc.tracking_identifier == lesion.lesion_id
        assert le.tracking_identifier == f"{lesion.lesion_id} (low energy)"
        for group, uid in (
            (rc, lesion.recombined_sop_instance_uid),
            (le, lesion.low_energy_sop_instance_uid),
        ):
            assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
            points = group.roi.value
            assert np.allclose(points, expected) and np.array_equal(points[0], points[-1])
            source = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
            assert source.ReferencedSOPInstanceUID == uid
            (site,) = group.finding_sites
            assert site.value.value == "76752008"  # breast
            assert site.laterality.value == {"R": "24028007", "L": "7771000"}[lesion.laterality]
            assert group.finding_type.value == "52988006"  # lesion
        assert le.get_measurements() == []


def test_the_fused_score_comes_first_in_percent(
    findings: Findings, report: hd.sr.MeasurementReport
) -> None:
    for lesion in findings.lesions:
        (group,) = report.get_planar_roi_measurement_groups(tracking_uid=lesion.tracking_uid)
        nums = [item for item in group[0].ContentSequence if item.ValueType == "NUM"]
        first = nums[0]
        assert first.ConceptNameCodeSequence[0].CodeValue == "111047"
        value = first.MeasuredValueSequence[0]
        assert value.MeasurementUnitsCodeSequence[0].CodeValue == "%"
        assert value.NumericValue == pydicom.valuerep.DS(f"{100 * lesion.fused_probability:.1f}")
        (fused,) = group.get_measurements(name=PROBABILITY_OF_CANCER)
        assert fused.value == 100 * lesion.fused_probability  # Floating Point Value: exact
        (dl,) = group.get_measurements(name=DL_PROBABILITY)
        assert dl.value == pytest.approx(100 * lesion.dl_probability)
        # every score's equivalent meaning (what a viewer shows with it) carries the caveat
        for num in nums[:2]:
            (meaning,) = [
                item.TextValue
                for item in num.ContentSequence
                if item.ConceptNameCodeSequence[0].CodeMeaning
                == "Equivalent Meaning of Concept Name"
            ]
            assert meaning.endswith(" (score not validated)"), meaning
        names = [n.ConceptNameCodeSequence[0].CodeMeaning for n in nums]
        radiomics = group.get_measurements(name=RADIOMICS_PROBABILITY)
        if lesion.radiomics_probability is None:
            assert radiomics == []
            assert names == [
                "Probability of cancer",
                "DL probability of cancer",
                "Area",
                "Long axis",
            ]
            reason = [
                item.TextValue
                for item in group[0].ContentSequence
                if item.ValueType == "TEXT"
                and item.ConceptNameCodeSequence[0].CodeValue == "CEM0002"
            ]
            assert reason == [f"not available: {RADIOMICS_ERROR}"]
        else:
            assert radiomics[0].value == pytest.approx(100 * lesion.radiomics_probability)
            assert names[:3] == [
                "Probability of cancer",
                "DL probability of cancer",
                "Radiomics probability of cancer",
            ]
        area = next(n for n in nums if n.ConceptNameCodeSequence[0].CodeMeaning == "Area")
        assert area.MeasuredValueSequence[0].FloatingPointValue == pytest.approx(lesion.area_mm2)
        assert area.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mm2"
        meaning = area.ContentSequence[0]
        assert "Imager Pixel Spacing" in meaning.TextValue
        axis = next(n for n in nums if n.ConceptNameCodeSequence[0].CodeMeaning == "Long axis")
        assert axis.MeasuredValueSequence[0].FloatingPointValue == pytest.approx(
            lesion.max_diameter_mm
        )


def test_classifications_and_agreement(findings: Findings, report: hd.sr.MeasurementReport) -> None:
    for lesion in findings.lesions:
        (group,) = report.get_planar_roi_measurement_groups(tracking_uid=lesion.tracking_uid)
        codes = {
            item.ConceptNameCodeSequence[0].CodeMeaning: item.ConceptCodeSequence[0].CodeMeaning
            for item in group[0].ContentSequence
            if item.ValueType == "CODE"
        }
        assert codes["AI classification"] == lesion.fused_label.capitalize()
        assert codes["DL classification"] == lesion.dl_label.capitalize()
        if lesion.agreement is None:
            assert "DL and radiomics agree" not in codes and "Radiomics classification" not in codes
        else:
            assert codes["DL and radiomics agree"] == ("Yes" if lesion.agreement else "No")
            assert codes["Radiomics classification"] == lesion.radiomics_label.capitalize()
    disagreeing = next(lesion for lesion in findings.lesions if lesion.lesion_id == "R-CC-1")
    assert (disagreeing.dl_label, disagreeing.radiomics_label) == ("benign", "malignant")
    assert disagreeing.agreement is False and disagreeing.fused_label == "malignant"


def test_every_group_has_its_own_tracking_uid(written: dict[str, Path]) -> None:
    for path in written.values():
        sr = pydicom.dcmread(path)
        uids = [
            item.UID
            for item in _items(sr.ContentSequence)
            if item.ValueType == "UIDREF"
            and item.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Unique Identifier"
        ]
        assert len(uids) == len(set(uids))
        assert (len(uids) > 0) == (path == written["lesions"])  # no group without a lesion


def test_breast_and_patient_summaries(
    findings: Findings, report: hd.sr.MeasurementReport, written: dict[str, Path]
) -> None:
    # only lesion groups (with an outline) are measurement groups: OHIF fails on others
    groups = report.get_image_measurement_groups()
    assert all(g.roi is not None for g in groups)
    sr = pydicom.dcmread(written["lesions"])
    texts = [
        item.TextValue
        for item in _items(sr.ContentSequence)
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
    ]
    for breast in findings.breasts:
        side = {"R": "Right", "L": "Left"}[breast.laterality]
        (line,) = [t for t in texts if t.startswith(f"{side} breast:")]
        if breast.score is None:  # the left breast has no lesion
            assert breast.laterality == "L" and "no suspicious lesion" in line.lower()
        else:
            assert f"{breast.lesion_count} lesion(s), {breast.label}" in line
            assert f"{100 * breast.score:.1f}" in line
            assert line.endswith("(score not validated).")
    patient = findings.patient
    assert patient.score == max(lesion.fused_probability for lesion in findings.lesions)
    assert any(
        t.startswith(f"{patient.lesion_count} suspicious lesion(s); study {patient.label}")
        and f"{100 * patient.score:.1f}" in t
        for t in texts
    )


def test_header_evidence_observer_and_texts(
    findings: Findings, headers: list[pydicom.Dataset], written: dict[str, Path]
) -> None:
    sr = pydicom.dcmread(written["lesions"])
    assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.Modality == "SR"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    for keyword in IDENTITY:
        assert sr[keyword].value == headers[0][keyword].value, keyword
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {h.SOPInstanceUID for h in headers}
    assert sr.SeriesDescription == f"CEM AI: lesion report ({NOT_FOR_CLINICAL_USE})"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99CEMNODE"
    observer = {
        item.ConceptNameCodeSequence[0].CodeMeaning: item.get("TextValue")
        for item in sr.ContentSequence
        if item.RelationshipType == "HAS OBS CONTEXT"
    }
    assert observer["Device Observer Name"] == "cem-node"
    assert "cem-demo 0.3.0" in observer["Device Observer Model Name"]
    comments = _texts(sr, "Comment")
    assert any("contrast-enhanced mammography" in c for c in comments)
    assert any(findings.model.sha256 in c for c in comments)
    assert any("Imager Pixel Spacing" in c for c in comments)
    assert f"{NOT_FOR_CLINICAL_USE}: {findings.model.disclaimer}" in comments
    assert f"Validation: {findings.model.validation}" in comments
    finding_lines = _texts(sr, "Finding")
    assert finding_lines[0].startswith("4 suspicious lesion(s); study malignant")
    assert (
        "R CC: R-CC-1 malignant 55% (score not validated), "
        "R-CC-2 malignant 83% (score not validated)." in finding_lines
    )
    # views and breasts without a lesion say so in a lesion report too
    assert "L CC: no suspicious lesion found." in finding_lines
    assert "Left breast: no suspicious lesion found." in finding_lines


# --- the report of a study without lesions ------------------------------------------------------


def test_no_lesion_study_gives_a_no_lesion_report_and_nothing_else(
    empty: Findings, headers: list[pydicom.Dataset], written: dict[str, Path]
) -> None:
    assert [o.object_type for o in encode_results(empty, headers)] == ["sr"]
    sr = pydicom.dcmread(written["none"])
    assert sr.SeriesDescription == f"CEM AI: no suspicious lesion found ({NOT_FOR_CLINICAL_USE})"
    lines = _texts(sr, "Finding")
    assert lines[0] == f"{NO_LESION_STATEMENT} (4 views analysed)."
    for view in ("R CC", "L CC", "R MLO", "L MLO"):
        assert f"{view}: no suspicious lesion found." in lines
    report = hd.sr.srread(written["none"]).content
    assert report.get_planar_roi_measurement_groups() == []
    for group in report.get_image_measurement_groups():
        assert group.get_measurements(name=PROBABILITY_OF_CANCER) == []
        found = [
            item.ConceptCodeSequence[0].CodeMeaning
            for item in group[0].ContentSequence
            if item.ConceptNameCodeSequence[0].CodeMeaning == "Suspicious lesion found"
        ]
        assert found == ["No"]


# --- a later round's report -----------------------------------------------------------------------


def test_a_later_rounds_report_names_the_report_it_replaces(
    objects: list[ResultObject], written: dict[str, Path]
) -> None:
    """Issue #19: round 2 supersedes a report already sent (validated with the others)."""
    (lesions,) = [o.dataset for o in objects if o.object_type == "sr"]
    sr = pydicom.dcmread(written["replacing"])
    (study,) = sr.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (sop,) = series.ReferencedSOPSequence
    assert (study.StudyInstanceUID, series.SeriesInstanceUID) == (
        lesions.StudyInstanceUID,
        lesions.SeriesInstanceUID,
    )
    assert (sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID) == (
        COMPREHENSIVE_SR,
        lesions.SOPInstanceUID,
    )
    (statement,) = [t for t in _texts(sr, "Comment") if t.startswith(REPLACES_PREFIX)]
    assert f"series {lesions.SeriesNumber}" in statement and lesions.SOPInstanceUID in statement
    assert lesions.SeriesDescription in statement
    # the findings of round 2 follow the statement, unchanged
    assert _texts(sr, "Finding")[0] == f"{NO_LESION_STATEMENT} (4 views analysed)."
    assert sr.SeriesNumber == 9021
    # SEG and GSPS are not reports: left as they are
    earlier = pydicom.dcmread(written["replacing"])  # any other SR of the study
    again = replacing_earlier_reports(objects, [earlier])
    assert [o.object_type for o in again] == [o.object_type for o in objects]
    pairs = zip(again, objects, strict=True)
    assert all(a.dataset is b.dataset for a, b in pairs if a.object_type != "sr")


# --- encode_results -----------------------------------------------------------------------------


def test_objects_identity_series_numbers_and_disclaimer(
    objects: list[ResultObject], findings: Findings, headers: list[pydicom.Dataset]
) -> None:
    assert [o.object_type for o in objects] == ["seg", "seg", "sr", "gsps", "gsps"]
    source_numbers = {int(h.SeriesNumber) for h in headers}
    series: dict[str, set[int]] = {}
    for obj in objects:
        ds = obj.dataset
        for keyword in IDENTITY:
            assert ds[keyword].value == headers[0][keyword].value, (obj.object_type, keyword)
        assert ds.SeriesNumber not in source_numbers
        series.setdefault(ds.SeriesInstanceUID, set()).add(int(ds.SeriesNumber))
        assert NOT_FOR_CLINICAL_USE in ds.SeriesDescription
        (model,) = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "cem-node"]
        assert model.DeviceSerialNumber == findings.model.sha256
        assert list(model.SoftwareVersions) == [__version__, findings.model.version]
        assert findings.model.disclaimer in model.ContributionDescription
    # one number per series, no two series share one: SR, GSPS right (no left lesion),
    # one SEG series per view with lesions (OHIF shows one SEG instance per series)
    assert all(len(numbers) == 1 for numbers in series.values())
    assert sorted(n for (n,) in series.values()) == [9001, 9002, 9004, 9005]
    assert result_series_numbers(headers) == {"sr": 9001, "gsps-R": 9002, "gsps-L": 9003} | {
        "seg": 9004
    }


def test_encoding_is_deterministic_per_round(
    objects: list[ResultObject], findings: Findings, headers: list[pydicom.Dataset]
) -> None:
    again = encode_results(findings, headers)
    for a, b in zip(objects, again, strict=True):
        first, second = io.BytesIO(), io.BytesIO()
        a.dataset.save_as(first, enforce_file_format=True)
        b.dataset.save_as(second, enforce_file_format=True)
        assert first.getvalue() == second.getvalue(), a.object_type
    second_round = encode_results(findings, headers, objects=["sr"], analysis_round=2)[0].dataset
    (sr,) = [o.dataset for o in objects if o.object_type == "sr"]
    assert second_round.SOPInstanceUID != sr.SOPInstanceUID
    assert second_round.SeriesInstanceUID != sr.SeriesInstanceUID
    assert second_round.SeriesNumber == 9021
    uids = [o.dataset.SOPInstanceUID for o in objects]
    assert len(set(uids)) == len(uids)


def test_series_numbers_stay_above_the_sources(headers: list[pydicom.Dataset]) -> None:
    high = copy.deepcopy(headers[0])
    high.SeriesNumber = 9500
    assert result_series_numbers([*headers, high], 3) == {
        "sr": 10041,
        "gsps-R": 10042,
        "gsps-L": 10043,
        "seg": 10044,
    }


def test_a_clinical_bundle_has_no_research_disclaimer(
    findings: Findings, headers: list[pydicom.Dataset]
) -> None:
    clinical = findings.model_copy(
        update={"model": model_identity(for_clinical_use=True, disclaimer=None)}
    )
    for obj in encode_results(clinical, headers, objects=["sr", "gsps"]):
        assert NOT_FOR_CLINICAL_USE not in str(obj.dataset), obj.object_type


def test_a_non_ascii_disclaimer_switches_every_object_to_utf8(
    findings: Findings, headers: list[pydicom.Dataset]
) -> None:
    disclaimer = "Nur für Forschung, nicht für die klinische Anwendung"
    german = findings.model_copy(update={"model": model_identity(disclaimer=disclaimer)})
    for obj in encode_results(german, headers):
        buffer = io.BytesIO()
        obj.dataset.save_as(buffer, enforce_file_format=True)
        back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
        assert back.SpecificCharacterSet == "ISO_IR 192", obj.object_type
        assert str(back.PatientName) == str(headers[0].PatientName)
        (model,) = [e for e in back.ContributingEquipmentSequence if e.Manufacturer == "cem-node"]
        assert disclaimer in model.ContributionDescription, obj.object_type


def test_the_report_names_the_spacing_the_sizes_use(headers: list[pydicom.Dataset]) -> None:
    image = copy.deepcopy(headers[0])
    assert spacing_source(image) == "Imager Pixel Spacing (detector plane)"
    del image.ImagerPixelSpacing
    assert spacing_source(image) is None
    image.PixelSpacing = [0.1, 0.1]
    assert spacing_source(image) == "Pixel Spacing"
    image.PixelSpacing = [0.1, 0]
    assert spacing_source(image) is None


def test_the_not_analysable_report_takes_the_sr_number(headers: list[pydicom.Dataset]) -> None:
    (obj,) = encode_not_analysable(headers, "no recombined image", analysis_round=2)
    assert obj.object_type == "sr" and obj.dataset.SeriesNumber == 9021
    again = encode_not_analysable(headers, "no recombined image", analysis_round=2)[0].dataset
    assert again.SOPInstanceUID == obj.dataset.SOPInstanceUID


def test_bad_inputs_are_refused(findings: Findings, headers: list[pydicom.Dataset]) -> None:
    with pytest.raises(ValueError, match="unknown object type"):
        encode_results(findings, headers, objects=["seg", "pdf"])
    with pytest.raises(ValueError, match="segmentation_type"):
        encode_results(findings, headers, segmentation_type="LABELMAP")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="analysis_round must be at least 1"):
        encode_results(findings, headers, analysis_round=0)
    rc = findings.views[0].recombined_sop_instance_uid
    with pytest.raises(ValueError, match=f"headers lack the recombined image {rc}"):
        encode_results(findings, [h for h in headers if h.SOPInstanceUID != rc])
    other = findings.model_copy(update={"study_instance_uid": "1.2.826.0.1.3680043.8.498.9"})
    with pytest.raises(
        ValueError, match=r"the findings of study 1\.2\.826\.0\.1\.3680043\.8\.498\.9"
    ):
        encode_results(other, headers)
    stranger = findings.model_copy(update={"patient_id": "SOMEONE-ELSE"})
    with pytest.raises(ValueError, match="'SOMEONE-ELSE'"):
        encode_results(stranger, headers)

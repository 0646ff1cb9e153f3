"""The "not analysable" SR (cem_node.dicom.objects.common)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom import Dataset

from cem_node import __version__
from cem_node.dicom import validation
from cem_node.dicom.objects.common import COMPREHENSIVE_SR, NOT_FOR_CLINICAL_USE, ReportingDevice
from cem_node.dicom.objects.not_analysable import STATEMENT_PREFIX, build_not_analysable_sr
from cem_node.dicom.objects.predecessors import REPLACES_PREFIX, replace_earlier_reports
from cem_node.dicom.objects.results import encode_not_analysable
from cem_node.synthetic import SynthOptions, generate_study
from tests.dicom_validators import pixelmed_jar, run_dciodvfy

DEVICE = ReportingDevice(device_serial_number="CEMNODE", institution_name="Synthetic Hospital")
SERIES_UID = "1.2.826.0.1.3680043.8.498.1001"
SOP_UID = "1.2.826.0.1.3680043.8.498.1001.1"
WHEN = datetime(2025, 6, 12, 10, 30, 5)
REASON = "no recombined image for the right CC view; no complete LE/RC pair"
RDSR = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
PRIVATE_CLASS = "1.2.840.113619.4.30"  # a vendor's private storage class
IDENTITY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)


@pytest.fixture(scope="module")
def study_headers(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    """Headers of a unilateral synthetic CEM study with one RC image missing."""
    options = SynthOptions(size="small", edge_cases=frozenset({"one-breast", "missing-rc"}))
    study = generate_study(tmp_path_factory.mktemp("synth"), 4, 1, options)
    return [
        pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((study / "dicom").glob("*.dcm"))
    ]


def _header(sop_class: str, *, rows: bool = False, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.2002.1.1"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2002"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2002.1"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "P-2002"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20250610"
    ds.StudyTime = "081500"
    ds.AccessionNumber = "ACC2002"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "2002"
    ds.Modality = "SR" if not rows else "OT"
    if rows:
        ds.Rows, ds.Columns = 64, 64
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _build(sources: list[Dataset], **kwargs: object) -> Dataset:
    args: dict[str, object] = {
        "device": DEVICE,
        "series_instance_uid": SERIES_UID,
        "sop_instance_uid": SOP_UID,
        "content_datetime": WHEN,
    }
    args.update(kwargs)
    return build_not_analysable_sr(sources, REASON, **args)  # type: ignore[arg-type]


def _save(sr: Dataset, path: Path) -> Path:
    sr.save_as(path, enforce_file_format=True)
    return path


def _items(seq: pydicom.Sequence) -> Iterator[Dataset]:
    for item in seq:
        yield item
        if "ContentSequence" in item:
            yield from _items(item.ContentSequence)


def _texts(sr: Dataset) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in _items(sr.ContentSequence):
        if item.ValueType == "TEXT":
            out.setdefault(item.ConceptNameCodeSequence[0].CodeMeaning, []).append(item.TextValue)
    return out


def _child(item: Dataset, meaning: str) -> Dataset:
    (found,) = [
        c for c in item.ContentSequence if c.ConceptNameCodeSequence[0].CodeMeaning == meaning
    ]
    return found


def _evidence(sr: Dataset) -> set[tuple[str, str, str, str]]:
    return {
        (study.StudyInstanceUID, series.SeriesInstanceUID, ref.ReferencedSOPClassUID,
         ref.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }  # fmt: skip


def _sources(headers: list[Dataset]) -> set[tuple[str, str, str, str]]:
    return {
        (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, ds.SOPInstanceUID)
        for ds in headers
    }


def _assert_valid(path: Path, *, pixelmed: bool = True) -> None:
    """dciodvfy and PixelMed's SR validator (about 20 s a file) find nothing.

    PixelMed's DicomInstanceValidator (``run_pixelmed_validator``) has no rules
    for SR ("IOD (SOP Class) unrecognized"), so DicomSRValidator is run, which
    checks the SR IOD and the TID 1500 template tree.
    """
    assert run_dciodvfy(path) == []
    if not pixelmed:
        return
    pixelmed_jar()  # skips (or fails under CEM_NODE_REQUIRE_TOOLS=1) without PixelMed
    report = validation.pixelmed_validate(path, "DicomSRValidator")
    assert report.supported, report.output
    assert "Found Root Template TID_1500 (MeasurementReport)" in report.output
    assert report.errors == [], report.output
    warnings = [line for line in report.output.splitlines() if line.startswith("Warning")]
    assert warnings == [], report.output


# --- the report of a received CEM study ---------------------------------------------------------


@pytest.mark.tools
@pytest.mark.slow
def test_a_synthetic_study_gives_a_valid_tid1500_sr(
    study_headers: list[Dataset], tmp_path: Path
) -> None:
    path = _save(_build(study_headers), tmp_path / "sr.dcm")
    _assert_valid(path)
    sr = pydicom.dcmread(path)
    assert sr.SOPClassUID == COMPREHENSIVE_SR and sr.Modality == "SR"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    # highdicom reads it back as a measurement report
    assert isinstance(hd.sr.ComprehensiveSR.from_dataset(sr).content, hd.sr.MeasurementReport)


def test_the_reason_and_the_statement_are_in_the_content(study_headers: list[Dataset]) -> None:
    sr = _build(study_headers)
    texts = _texts(sr)
    assert texts["Finding"] == [f"AI analysis not performed: {REASON}"]
    assert STATEMENT_PREFIX == "AI analysis not performed: "
    evaluations = _child(sr, "Qualitative Evaluations")
    finding = _child(evaluations, "Finding")
    assert (finding.ConceptNameCodeSequence[0].CodeValue, finding.RelationshipType) == (
        "121071",
        "CONTAINS",
    )


def test_patient_and_study_identity_come_from_the_sources(study_headers: list[Dataset]) -> None:
    sr = _build(study_headers)
    first = study_headers[0]
    for keyword in IDENTITY:
        assert sr[keyword].value == first[keyword].value, keyword
    assert sr.SeriesInstanceUID == SERIES_UID and sr.SOPInstanceUID == SOP_UID
    assert sr.SeriesNumber == 9901 and sr.InstanceNumber == 1
    assert sr.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in study_headers}


def test_every_source_instance_is_evidence(study_headers: list[Dataset]) -> None:
    sr = _build(study_headers)
    assert len(study_headers) == 3  # one breast, CC and MLO, one RC missing
    assert _evidence(sr) == _sources(study_headers)
    assert "PertinentOtherEvidenceSequence" not in sr
    library = _child(sr, "Image Library")
    (group,) = library.ContentSequence
    refs = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in group.ContentSequence
    }
    assert refs == {ds.SOPInstanceUID for ds in study_headers}


def test_not_for_clinical_use_and_software_are_stated(study_headers: list[Dataset]) -> None:
    sr = _build(study_headers)
    assert sr.SeriesDescription == "CEM AI: not analysed (NOT FOR CLINICAL USE)"
    comments = _texts(sr)["Comment"]
    assert any(c.startswith(NOT_FOR_CLINICAL_USE) for c in comments)
    assert any(f"cem-node {__version__}" in c for c in comments)
    assert (sr.Manufacturer, sr.ManufacturerModelName) == ("cem-node developers", "cem-node")
    assert (sr.SoftwareVersions, sr.DeviceSerialNumber) == (__version__, "CEMNODE")
    assert sr.InstitutionName == "Synthetic Hospital"
    group = _child(_child(sr, "Imaging Measurements"), "Measurement Group")
    texts = {
        c.ConceptNameCodeSequence[0].CodeMeaning: c.get("TextValue") for c in group.ContentSequence
    }
    assert texts["Algorithm Name"] == "cem-node" and texts["Algorithm Version"] == __version__
    assert texts["Tracking Identifier"] == "CEM AI analysis not performed"


def test_clinical_use_flag_off_drops_the_disclaimer(study_headers: list[Dataset]) -> None:
    sr = _build(study_headers, not_for_clinical_use=False)
    assert sr.SeriesDescription == "CEM AI: not analysed"
    assert NOT_FOR_CLINICAL_USE not in str(sr)


def test_the_same_inputs_give_the_same_bytes(study_headers: list[Dataset], tmp_path: Path) -> None:
    a = _save(_build(study_headers), tmp_path / "a.dcm").read_bytes()
    b = _save(_build(study_headers), tmp_path / "b.dcm").read_bytes()
    assert a == b
    later = _save(
        _build(study_headers, content_datetime=WHEN + timedelta(seconds=1)), tmp_path / "c"
    )
    assert later.read_bytes() != a
    sr = pydicom.dcmread(later)
    assert (sr.ContentDate, sr.ContentTime, sr.InstanceCreationTime) == (
        "20250612",
        "103006",
        "103006",
    )


def test_random_uids_when_none_are_given(study_headers: list[Dataset]) -> None:
    a = build_not_analysable_sr(study_headers, REASON, device=DEVICE)
    b = build_not_analysable_sr(study_headers, REASON, device=DEVICE)
    assert a.SOPInstanceUID != b.SOPInstanceUID and a.SeriesInstanceUID != b.SeriesInstanceUID


def test_a_timezone_aware_datetime_sets_the_offset(study_headers: list[Dataset]) -> None:
    sr = _build(study_headers, content_datetime=WHEN.replace(tzinfo=timezone(timedelta(hours=2))))
    assert sr.TimezoneOffsetFromUTC == "+0200" and str(sr.ContentTime) == "103005"


# --- other kinds of received objects ------------------------------------------------------------


@pytest.mark.tools
@pytest.mark.slow
@pytest.mark.parametrize(
    ("sop_class", "rows"),
    [(RDSR, False), (SECONDARY_CAPTURE, True), (PRIVATE_CLASS, False)],
    ids=["dose-sr", "secondary-capture", "private-class"],
)
def test_a_single_non_mg_header_gives_a_valid_sr(
    sop_class: str, rows: bool, tmp_path: Path
) -> None:
    header = _header(sop_class, rows=rows)
    path = _save(_build([header], series_number=1), tmp_path / "sr.dcm")
    # the image library of a secondary capture is built as for MG: dciodvfy suffices
    _assert_valid(path, pixelmed=sop_class != SECONDARY_CAPTURE)
    sr = pydicom.dcmread(path)
    for keyword in IDENTITY:
        assert sr[keyword].value == header[keyword].value, keyword
    assert _evidence(sr) == _sources([header])
    library = _child(sr, "Image Library")
    assert ("ContentSequence" in library) is rows
    assert _texts(sr)["Finding"] == [STATEMENT_PREFIX + REASON]


@pytest.mark.tools
def test_non_ascii_text_switches_to_utf8(tmp_path: Path) -> None:
    header = _header(SECONDARY_CAPTURE, rows=True, SpecificCharacterSet="ISO_IR 100")
    header.PatientName = "Müller^Anna"
    source = tmp_path / "source.dcm"
    header.file_meta = pydicom.dataset.FileMetaDataset()
    header.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    header.save_as(source, enforce_file_format=True)
    reason = "Kontrastmittelaufnahme fehlt (rechte Brust, Größe unbekannt)"
    sr = build_not_analysable_sr(
        [pydicom.dcmread(source)], reason, device=DEVICE, content_datetime=WHEN
    )
    path = _save(sr, tmp_path / "sr.dcm")
    assert run_dciodvfy(path) == []
    back = pydicom.dcmread(path)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == "Müller^Anna"
    assert _texts(back)["Finding"] == [STATEMENT_PREFIX + reason]


def test_an_invalid_patient_sex_is_left_empty() -> None:
    sr = _build([_header(RDSR, PatientSex="FEMALE")])
    assert sr.PatientSex in (None, "")


def test_duplicate_instances_are_listed_once(study_headers: list[Dataset]) -> None:
    sr = _build([*study_headers, study_headers[0]])
    assert _evidence(sr) == _sources(study_headers)


def test_missing_type2_attributes_are_tolerated() -> None:
    header = _header(RDSR)
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyTime"):
        delattr(header, keyword)
    sr = _build([header])
    assert sr.PatientID == "P-2002" and sr.AccessionNumber in (None, "")


# --- inputs that are refused --------------------------------------------------------------------


def test_sources_of_two_studies_are_refused_naming_both_uids(
    study_headers: list[Dataset],
) -> None:
    stranger = _header(RDSR, PatientID=study_headers[0].PatientID)
    with pytest.raises(ValueError, match="different studies") as excinfo:
        _build([*study_headers, stranger])
    assert study_headers[0].StudyInstanceUID in str(excinfo.value)
    assert stranger.StudyInstanceUID in str(excinfo.value)
    assert stranger.SOPInstanceUID in str(excinfo.value)


def test_sources_of_two_patients_are_refused(study_headers: list[Dataset]) -> None:
    other = _header(
        RDSR, StudyInstanceUID=study_headers[0].StudyInstanceUID, PatientID="SOMEONE-ELSE"
    )
    with pytest.raises(ValueError, match=r"different patients.*'SOMEONE-ELSE'"):
        _build([*study_headers, other])


@pytest.mark.parametrize(
    ("sources", "kwargs", "error", "message"),
    [
        ([], {}, ValueError, "source_images is empty"),
        ("not a list", {}, TypeError, "sequence of pydicom.Dataset"),
        ([_header(RDSR)], {"series_number": 0}, ValueError, "series_number must be in"),
        ([_header(RDSR)], {"series_number": True}, TypeError, "series_number must be an int"),
        ([_header(RDSR)], {"sop_instance_uid": "1.2.x"}, ValueError, "not a valid DICOM UID"),
        (
            [_header(RDSR)],
            {"sop_instance_uid": _header(RDSR).SOPInstanceUID},
            ValueError,
            "is the UID of one of the source_images",
        ),
        ([_header(RDSR)], {"content_datetime": "2025"}, TypeError, "content_datetime"),
        ([_header(RDSR)], {"device": "cem-node"}, TypeError, "ReportingDevice"),
        ([_header(RDSR)], {"not_for_clinical_use": 1}, TypeError, "not_for_clinical_use"),
    ],
)
def test_bad_arguments_are_refused(
    sources: list[Dataset], kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        _build(sources, **kwargs)


@pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"])
def test_a_source_without_a_uid_is_refused(keyword: str) -> None:
    header = _header(RDSR)
    delattr(header, keyword)
    with pytest.raises(ValueError, match=rf"source_images\[0\].* has no {keyword}"):
        _build([header])


def test_one_uid_with_two_classes_is_refused() -> None:
    with pytest.raises(ValueError, match=r"share SOPInstanceUID .* differ in SOPClassUID"):
        _build([_header(RDSR), _header(SECONDARY_CAPTURE, rows=True)])


@pytest.mark.parametrize("reason", ["", "   ", None])
def test_an_empty_reason_is_refused(reason: object) -> None:
    error = TypeError if reason is None else ValueError
    with pytest.raises(error, match="reason must"):
        build_not_analysable_sr([_header(RDSR)], reason, device=DEVICE)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device_serial_number", "", "must not be empty"),
        ("model_name", "x" * 65, "at most 64"),
        ("manufacturer", "a\\b", "backslash"),
        ("software_version", 1, "must be a str"),
        ("institution_name", "  ", "must not be empty"),
    ],
)
def test_reporting_device_checks_its_values(field: str, value: object, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=re.escape(f"ReportingDevice.{field}")) as e:
        dataclasses.replace(DEVICE, **{field: value})
    assert message in str(e.value)


def test_reporting_device_defaults_and_observer_uid() -> None:
    device = ReportingDevice(device_serial_number="NODE1")
    assert (device.manufacturer, device.model_name) == ("cem-node developers", "cem-node")
    assert device.software_version == __version__ and device.institution_name is None
    assert device.observer_uid == ReportingDevice(device_serial_number="NODE1").observer_uid
    assert device.observer_uid != ReportingDevice(device_serial_number="NODE2").observer_uid
    with pytest.raises(dataclasses.FrozenInstanceError):
        device.model_name = "other"  # type: ignore[misc]


# --- a later round's report replaces the earlier ones (issue #19) -------------------------------


def _round(study_headers: list[Dataset], analysis_round: int) -> Dataset:
    (obj,) = encode_not_analysable(
        study_headers, REASON, analysis_round=analysis_round, device=DEVICE
    )
    return obj.dataset


def _references(sr: Dataset) -> list[tuple[str, str, str, str]]:
    """(study, series, SOP class, SOP instance) of each Predecessor Documents item, in order."""
    return [
        (item.StudyInstanceUID, series.SeriesInstanceUID, sop.ReferencedSOPClassUID,
         sop.ReferencedSOPInstanceUID)
        for item in sr.PredecessorDocumentsSequence
        for series in item.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    ]  # fmt: skip


@pytest.mark.tools
@pytest.mark.slow
def test_a_report_replacing_an_earlier_one_names_it_and_says_so(
    study_headers: list[Dataset], tmp_path: Path
) -> None:
    first, second = _round(study_headers, 1), _round(study_headers, 2)
    replacing = replace_earlier_reports(second, [first])
    path = _save(replacing, tmp_path / "round2.dcm")
    _assert_valid(path)  # dciodvfy and PixelMed, Predecessor Documents Sequence included
    back = pydicom.dcmread(path)
    (item,) = back.PredecessorDocumentsSequence  # PS3.3 C.17.2, Table C.17-3 hierarchy
    assert item.StudyInstanceUID == first.StudyInstanceUID
    (series,) = item.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    (sop,) = series.ReferencedSOPSequence
    assert (sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID) == (
        COMPREHENSIVE_SR,
        first.SOPInstanceUID,
    )
    # said first among the evaluations, naming the earlier report for people
    statement = _child(back, "Qualitative Evaluations").ContentSequence[0]
    assert statement.ConceptNameCodeSequence[0].CodeMeaning == "Comment"
    assert statement.TextValue.startswith(REPLACES_PREFIX + "the earlier report of this study")
    assert "series 9001" in statement.TextValue and first.SOPInstanceUID in statement.TextValue
    assert _texts(back)["Finding"] == [STATEMENT_PREFIX + REASON]  # the rest as it was
    # a copy: the identity kept, the given report untouched
    assert (back.SOPInstanceUID, back.SeriesNumber) == (second.SOPInstanceUID, 9021)
    assert "PredecessorDocumentsSequence" not in second
    assert REPLACES_PREFIX not in str(second)


def test_several_earlier_reports_are_grouped_by_series(study_headers: list[Dataset]) -> None:
    first, second = _round(study_headers, 1), _round(study_headers, 2)
    third = replace_earlier_reports(_round(study_headers, 3), [first, second, first])
    assert _references(third) == [
        (first.StudyInstanceUID, first.SeriesInstanceUID, COMPREHENSIVE_SR, first.SOPInstanceUID),
        (
            second.StudyInstanceUID,
            second.SeriesInstanceUID,
            COMPREHENSIVE_SR,
            second.SOPInstanceUID,
        ),
    ]
    assert len(third.PredecessorDocumentsSequence) == 1  # one study
    (statement,) = [t for t in _texts(third)["Comment"] if t.startswith(REPLACES_PREFIX)]
    assert statement.startswith(REPLACES_PREFIX + "the 2 earlier reports of this study")
    assert replace_earlier_reports(second, []) is second  # nothing to replace


def test_an_sr_without_qualitative_evaluations_gets_them(study_headers: list[Dataset]) -> None:
    first, second = _round(study_headers, 1), _round(study_headers, 2)
    second.ContentSequence = [
        item
        for item in second.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning != "Qualitative Evaluations"
    ]
    replacing = replace_earlier_reports(second, [first])
    (statement,) = _child(replacing, "Qualitative Evaluations").ContentSequence
    assert statement.TextValue.startswith(REPLACES_PREFIX)


def test_what_cannot_be_replaced_is_refused(study_headers: list[Dataset]) -> None:
    first, second = _round(study_headers, 1), _round(study_headers, 2)
    other_study = _build([_header(RDSR)])
    with pytest.raises(ValueError, match=r"predecessors\[0\] is of study .* the report of study"):
        replace_earlier_reports(second, [other_study])
    with pytest.raises(ValueError, match="is the report itself"):
        replace_earlier_reports(second, [second])
    with pytest.raises(ValueError, match="not a structured report"):
        replace_earlier_reports(second, [study_headers[0]])
    with pytest.raises(ValueError, match="not a structured report with a root container"):
        replace_earlier_reports(study_headers[0], [first])
    with pytest.raises(TypeError, match=r"sequence of pydicom\.Dataset"):
        replace_earlier_reports(second, first)  # type: ignore[arg-type]

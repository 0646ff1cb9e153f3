"""UID syntax (PS3.5 9.1) and header checks (cem_node.dicom.identifiers)."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian

from cem_node.dicom.identifiers import (
    header_problem,
    identifier_problem,
    uid_problem,
    unreadable_element,
)

GOOD = "1.2.826.0.1.3680043.8.498.1"


@pytest.mark.parametrize(
    "value",
    [GOOD, "0", "1.0.2", "2.25.0", "1" * 64, GOOD + "\x00", b"1.2.3", MultiValue(str, ["1.2"])],
)
def test_valid_uids_pass(value: object) -> None:
    assert uid_problem(value) is None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        (None, "empty"),
        (MultiValue(str, ["/etc/x", "x"]), "not a single UID"),
        (["1.2", "1.3"], "not a single UID"),
        ("1.2\\1.3", "not a single UID"),
        ("1." + "2" * 63, "longer than 64 characters"),
        ("1.2.abc", "characters other than 0-9 and ."),
        ("1.2.3 ", None),  # trailing pad only
        (" 1.2.3", "characters other than 0-9 and ."),
        ("1.2.-3", "characters other than 0-9 and ."),
        (b"1.2.\xff", "characters other than 0-9 and ."),
        ("1..2", "empty component"),
        (".1.2", "empty component"),
        ("1.2.", "empty component"),
        ("1.02.3", "component with a leading zero"),
        ("00", "component with a leading zero"),
    ],
)
def test_invalid_uids_say_why(value: object, why: str | None) -> None:
    assert uid_problem(value) == why


def test_reasons_fit_an_error_comment_after_the_longest_keyword() -> None:
    reasons = {uid_problem(v) for v in ("", ["1", "2"], "9" * 65, "a", "1..2", "01")} - {None}
    assert len(reasons) == 6
    assert max(len(f"Invalid SeriesInstanceUID: {r}") for r in reasons if r) <= 64


def _dataset(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_identifier_problem_names_the_attribute_and_honours_optional() -> None:
    ok = _dataset(SOPClassUID="1.2", SOPInstanceUID="1.3", StudyInstanceUID="1.4")
    required = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"]
    assert identifier_problem(ok, required=required, optional=["SeriesInstanceUID"]) is None
    assert (
        identifier_problem(ok, required=[*required, "SeriesInstanceUID"])
        == "Missing SeriesInstanceUID"
    )
    ok.SeriesInstanceUID = "1.05"
    assert (
        identifier_problem(ok, required=required, optional=["SeriesInstanceUID"])
        == "Invalid SeriesInstanceUID: component with a leading zero"
    )
    ok.StudyInstanceUID = ["/etc/x", "x"]
    # checked in PS3.3 order: the study before the series
    assert (
        identifier_problem(ok, required=required, optional=["SeriesInstanceUID"])
        == "Invalid StudyInstanceUID: not a single UID"
    )


def _bytes(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _header() -> Dataset:
    ds = _dataset(
        SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2",
        SOPInstanceUID="1.2.3.4",
        StudyInstanceUID="1.2.3",
        SeriesInstanceUID="1.2.3.1",
        PatientName="A^B",
        Rows=2,
    )
    ds.ReferencedImageSequence = [_dataset(ReferencedSOPInstanceUID="1.2.3.9")]
    return ds


def test_header_problem_finds_an_unknown_vr_anywhere() -> None:
    data = _bytes(_header())
    assert header_problem(pydicom.dcmread(io.BytesIO(data))) is None
    name = data.index(b"\x10\x00\x10\x00PN")
    bad_name = data[: name + 4] + b"ZZ" + data[name + 6 :]
    expected = "Cannot parse (0010,0010) PatientName: unknown VR 'ZZ'"
    assert header_problem(pydicom.dcmread(io.BytesIO(bad_name))) == expected
    # the cheap walk of the C-STORE path still sees it
    assert unreadable_element(pydicom.dcmread(io.BytesIO(bad_name)), convert_plain=False) == (
        expected
    )
    # inside a sequence item too
    ref = data.index(b"\x08\x00\x55\x11UI")
    bad_item = data[: ref + 4] + b"ZZ" + data[ref + 6 :]
    problem = header_problem(pydicom.dcmread(io.BytesIO(bad_item)))
    assert problem == "Cannot parse (0008,1155) ReferencedSOPInstanceUID: unknown VR 'ZZ'"


def test_header_problem_finds_a_binary_value_of_the_wrong_length() -> None:
    data = _bytes(_header())
    rows = data.index(b"\x28\x00\x10\x00US\x02\x00")
    # a 2-byte US made 3 bytes long, the next element shifted by one: still parses
    bad = data[: rows + 6] + b"\x03\x00\x02\x00\x00" + data[rows + 10 :]
    problem = header_problem(pydicom.dcmread(io.BytesIO(bad)))
    assert problem is not None and problem.startswith("Cannot parse (0028,0010) Rows:"), problem


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_header_problem_checks_identifiers_after_the_values() -> None:
    ds = _header()
    assert header_problem(ds) is None
    del ds.SeriesInstanceUID
    assert header_problem(ds) == "Missing SeriesInstanceUID"
    assert header_problem(ds, series_required=False) is None
    ds.SOPInstanceUID = "1.2.x"
    assert header_problem(ds) == "Invalid SOPInstanceUID: characters other than 0-9 and ."

"""Tests of the DICOM encoding of synthetic CEM mammograms."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from cem_node.synthetic.dicom_writer import (
    DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION,
    DIGITAL_MAMMOGRAPHY_FOR_PROCESSING,
    DISCLAIMER,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    AcquisitionInfo,
    PatientInfo,
    StudyInfo,
    build_mg_dataset,
    image_type_for,
    patient_orientation_for,
    write_dataset,
    write_mg_image,
)
from tests.dicom_validators import (
    dciodvfy_warnings,
    pixelmed_parse_errors,
    require_tool,
    run_dciodvfy,
    run_pixelmed_validator,
)

ROOT = "1.2.826.0.1.3680043.8.498.999"
KINDS = ("low_energy", "recombined", "non_contrast")
VIEWS = (("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO"))
SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "jpeg2000": JPEG2000Lossless,
    "jpegls": JPEGLSLossless,
    "rle": RLELossless,
}
# dciodvfy does not know CC/MLO as View Position terms (CID 4014 codes in the
# View Code Sequence are the mammography identifiers); SILVER is a filter
# material used for low-energy exposures that is not a DICOM Defined Term.
ALLOWED_WARNINGS = (
    re.compile(r"Unrecognized defined term <(CC|MLO)> for value 1 of attribute <View Position>"),
    re.compile(r"Unrecognized defined term <SILVER> for value 1 of attribute <Filter Material>"),
)

PATIENT = PatientInfo(
    patient_id="SYNTH-0001",
    patient_name="SYNTH^PHANTOM0001",
    birth_date="19730301",
    age_years=52,
)
STUDY = StudyInfo(
    study_instance_uid=f"{ROOT}.1",
    study_id="1",
    accession_number="SYNA00001",
    study_date="20250612",
    study_time="093000",
)


def phantom(laterality: str = "L", rows: int = 300, cols: int = 240, bits: int = 12) -> np.ndarray:
    """A bright half-ellipse against the chest wall, with some texture."""
    y, x = np.mgrid[:rows, :cols]
    wall = 0 if laterality == "L" else cols - 1
    inside = ((x - wall) / (0.8 * cols)) ** 2 + ((y - rows / 2) / (0.45 * rows)) ** 2 < 1
    texture = (x * 7 + y * 3) % 400
    top = (1 << bits) - 1
    return np.where(inside, top // 2 + texture, 60).astype(np.uint16)


def acquisition(
    laterality: str = "L", view: str = "CC", kind: str = "low_energy", **changes
) -> AcquisitionInfo:
    low = kind != "recombined"
    n = 1 + KINDS.index(kind) * 4 + VIEWS.index((laterality, view))
    values = dict(
        laterality=laterality,
        view=view,
        kind=kind,
        series_instance_uid=f"{ROOT}.2.{KINDS.index(kind) + 1}",
        series_number=KINDS.index(kind) + 1,
        series_description={"low_energy": "CESM LE", "recombined": "CESM RC", "non_contrast": "2D"}[
            kind
        ],
        sop_instance_uid=f"{ROOT}.3.{n}",
        instance_number=n,
        acquisition_date="20250612",
        acquisition_time="093215",
        kvp=29.0 if low else 47.0,
        anode="RHODIUM",
        filter_material="RHODIUM" if low else "COPPER",
        exposure_mas=63.5 if low else 41.2,
        exposure_time_ms=850 if low else 550,
        tube_current_ma=75,
        compressed_thickness_mm=55.5,
        compression_force_n=101.5,
        entrance_dose_mgy=4.5 if low else 6.1,
        organ_dose_mgy=1.35 if low else 1.72,
        positioner_primary_angle_deg=0.0
        if view == "CC"
        else (45.0 if laterality == "R" else -45.0),
        window_center=2300.0,
        window_width=2800.0,
    )
    values.update(changes)
    return AcquisitionInfo(**values)


def write(
    path: Path, kind: str = "low_energy", laterality: str = "L", view: str = "CC", **kwargs
) -> Path:
    syntax = kwargs.pop("transfer_syntax", "explicit")
    write_mg_image(
        path,
        phantom(laterality),
        transfer_syntax=syntax,
        patient=PATIENT,
        study=STUDY,
        acquisition=acquisition(laterality, view, kind, **kwargs),
        pixel_spacing_mm=0.1,
        bits_stored=12,
    )
    return path


def build(
    kind: str = "low_energy", laterality: str = "L", view: str = "CC", **kwargs
) -> pydicom.Dataset:
    return build_mg_dataset(
        phantom(laterality),
        patient=PATIENT,
        study=STUDY,
        acquisition=acquisition(laterality, view, kind, **kwargs),
        pixel_spacing_mm=0.1,
        bits_stored=12,
    )


@pytest.fixture(scope="module")
def all_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """One file per kind x laterality x view, plus each compressed syntax."""
    out = tmp_path_factory.mktemp("mg")
    files = [write(out / f"{k}_{lat}{v}.dcm", k, lat, v) for k in KINDS for lat, v in VIEWS]
    files += [
        write(out / f"{k}_{ts}.dcm", k, "R", "MLO", transfer_syntax=ts)
        for k in KINDS
        for ts in ("jpeg2000", "jpegls", "rle")
    ]
    return files


# --- header content -----------------------------------------------------------


def test_image_type_per_kind() -> None:
    le, rc, dm = build("low_energy"), build("recombined"), build("non_contrast")
    assert list(le.ImageType) == ["ORIGINAL", "PRIMARY", "", "", "LOW_ENERGY"]
    assert list(rc.ImageType) == ["DERIVED", "PRIMARY", "", "SUBTRACTION", ""]
    assert list(dm.ImageType) == ["ORIGINAL", "PRIMARY", ""]
    assert image_type_for("recombined") == tuple(rc.ImageType)
    assert le.AcquisitionDeviceProcessingCode == "GEMS_FFDM_PV"
    assert rc.AcquisitionDeviceProcessingCode == "GEMS_CESM_1"


def test_image_type_survives_a_file_round_trip(tmp_path: Path) -> None:
    for kind in KINDS:
        ds = pydicom.dcmread(write(tmp_path / f"{kind}.dcm", kind))
        assert tuple(ds.ImageType) == image_type_for(kind)


@pytest.mark.parametrize(
    ("laterality", "view", "expected"),
    [
        ("L", "CC", ["A", "R"]),
        ("R", "CC", ["P", "L"]),
        ("L", "MLO", ["A", "F"]),
        ("R", "MLO", ["P", "F"]),
    ],
)
def test_orientation_and_view(laterality: str, view: str, expected: list[str]) -> None:
    ds = build("recombined", laterality, view)
    assert list(ds.PatientOrientation) == expected
    assert patient_orientation_for(laterality, view) == tuple(expected)
    assert ds.ImageLaterality == laterality
    assert "Laterality" not in ds  # Image Laterality carries it (Type 2C in the series)
    assert ds.ViewPosition == view
    item = ds.ViewCodeSequence[0]
    code = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}[
        view
    ]
    assert (item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning) == (
        code[0],
        "SCT",
        code[1],
    )
    assert len(item.ViewModifierCodeSequence) == 0
    angle = float(ds.PositionerPrimaryAngle)
    assert angle == 0 if view == "CC" else abs(angle) == 45


def test_common_header_values() -> None:
    ds = build("low_energy")
    assert ds.SOPClassUID == DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
    assert ds.Modality == "MG"
    assert ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.PixelIntensityRelationship == "LOG"
    assert ds.PresentationLUTShape == "IDENTITY"
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.1, 0.1]
    assert "PixelSpacing" not in ds
    assert ds.BurnedInAnnotation == "NO"
    assert ds.LossyImageCompression == "00"
    assert ds.BreastImplantPresent == "NO"
    assert ds.OrganExposed == "BREAST" and ds.BodyPartExamined == "BREAST"
    assert ds.AnatomicRegionSequence[0].CodeValue == "76752008"
    assert ds.PatientAge == "052Y" and ds.PatientSex == "F"
    assert ds.ReferringPhysicianName == ""
    assert ds.Manufacturer == "GE Healthcare"
    assert ds.ManufacturerModelName == "Senographe Pristina"
    assert ds.InstitutionName == "SYNTHETIC PHANTOM HOSPITAL"
    assert ds.ImageComments == DISCLAIMER
    assert float(ds.DistanceSourceToDetector) == 660
    assert float(ds.BodyPartThickness) == 55.5 and float(ds.CompressionForce) == 101.5
    assert (float(ds.KVP), ds.AnodeTargetMaterial, ds.FilterMaterial) == (
        29.0,
        "RHODIUM",
        "RHODIUM",
    )
    assert (ds.Exposure, ds.ExposureInuAs, ds.ExposureTime, ds.XRayTubeCurrent) == (
        64,
        63500,
        850,
        75,
    )
    assert float(ds.EntranceDoseInmGy) == 4.5
    assert float(ds.OrganDose) == pytest.approx(0.0135)  # dGy
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (2300, 2800)
    assert "VOILUTFunction" not in ds  # LINEAR, the meaning when absent
    assert ds.ContentDate == ds.AcquisitionDate == "20250612"
    assert ds.ContentTime == ds.AcquisitionTime == "093215"
    assert len(ds.AcquisitionContextSequence) == 0
    block = ds.private_block(0x0045, "GEMS_SENO_02")
    assert block[0x15].value == 12
    meta = ds.file_meta
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME == "CEM_NODE_010"


def test_contrast_module_only_on_cem_images() -> None:
    for kind in ("low_energy", "recombined"):
        ds = build(kind)
        assert ds.ContrastBolusAgentSequence[0].CodeValue == "109218004"  # Iohexol
        assert ds.ContrastBolusAdministrationRouteSequence[0].CodeValue == "47625008"
        assert ds.ContrastBolusIngredient == "IODINE"
        assert float(ds.ContrastBolusIngredientConcentration) == 350
        assert float(ds.ContrastBolusVolume) == pytest.approx(1.5 * 65)
        assert ds.ContrastBolusStartTime == STUDY.study_time
    plain = build("non_contrast")
    assert not any(elem.keyword.startswith("ContrastBolus") for elem in plain)
    assert "DerivationDescription" not in plain


def test_recombined_is_derived() -> None:
    ds = build("recombined", source_sop_instance_uids=(f"{ROOT}.3.1",))
    assert ds.DerivationCodeSequence[0].CodeValue == "113097"
    assert DISCLAIMER in ds.DerivationDescription
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == f"{ROOT}.3.1"
    assert float(ds.KVP) == 47 and ds.FilterMaterial == "COPPER"


def test_frame_of_reference_is_optional() -> None:
    assert "FrameOfReferenceUID" not in build()
    ds = build(frame_of_reference_uid=f"{ROOT}.4.1")
    assert ds.FrameOfReferenceUID == f"{ROOT}.4.1"
    assert ds.PositionReferenceIndicator == ""


# --- pixels, transfer syntaxes, determinism -----------------------------------


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_lossless_round_trip(tmp_path: Path, syntax: str) -> None:
    path = write(tmp_path / "x.dcm", "recombined", "R", "MLO", transfer_syntax=syntax)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == SYNTAXES[syntax]
    assert ds.SOPInstanceUID == acquisition("R", "MLO", "recombined").sop_instance_uid
    assert ds.LossyImageCompression == "00"
    np.testing.assert_array_equal(ds.pixel_array, phantom("R"))


@pytest.mark.parametrize("bits", [10, 14, 16])
def test_full_bit_depth_round_trip(tmp_path: Path, bits: int) -> None:
    rng = np.random.default_rng(bits)
    pixels = rng.integers(0, 1 << bits, size=(64, 48), dtype=np.uint16)
    pixels[0, 0] = (1 << bits) - 1
    for syntax in SYNTAXES:
        path = tmp_path / f"{syntax}.dcm"
        write_mg_image(
            path,
            pixels,
            transfer_syntax=syntax,
            patient=PATIENT,
            study=STUDY,
            acquisition=acquisition(),
            pixel_spacing_mm=0.1,
            bits_stored=bits,
        )
        np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, pixels, err_msg=syntax)


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_writing_twice_gives_identical_bytes(tmp_path: Path, syntax: str) -> None:
    one = write(tmp_path / "one.dcm", "low_energy", "L", "MLO", transfer_syntax=syntax)
    two = write(tmp_path / "two.dcm", "low_energy", "L", "MLO", transfer_syntax=syntax)
    assert one.read_bytes() == two.read_bytes()


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_write_dataset_matches_write_mg_image(tmp_path: Path, syntax: str) -> None:
    ds = build("recombined", "R", "CC")
    before = ds.PixelData
    write_dataset(ds, tmp_path / "a.dcm", syntax)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # not changed
    assert ds.PixelData is before
    write(tmp_path / "b.dcm", "recombined", "R", "CC", transfer_syntax=syntax)
    assert (tmp_path / "a.dcm").read_bytes() == (tmp_path / "b.dcm").read_bytes()


def test_file_preamble_and_meta(tmp_path: Path) -> None:
    data = write(tmp_path / "x.dcm").read_bytes()
    assert data[128:132] == b"DICM"
    ds = pydicom.dcmread(tmp_path / "x.dcm")
    assert ds.file_meta.MediaStorageSOPClassUID == DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION


def test_full_size_explicit_write_is_fast(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 1 << 14, size=(2294, 1914), dtype=np.uint16)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        write_mg_image(
            tmp_path / "big.dcm",
            pixels,
            patient=PATIENT,
            study=STUDY,
            acquisition=acquisition(),
            pixel_spacing_mm=0.1,
            bits_stored=14,
        )
        best = min(best, time.perf_counter() - start)
    assert best < 0.2, f"explicit write of 2294 x 1914 took {best:.3f} s"


# --- input checks -------------------------------------------------------------


def _build_pixels(pixels: object, bits: int = 12) -> None:
    build_mg_dataset(
        pixels,
        patient=PATIENT,
        study=STUDY,
        acquisition=acquisition(),  # type: ignore[arg-type]
        pixel_spacing_mm=0.1,
        bits_stored=bits,
    )


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((4, 4), np.float32), "dtype uint16"),
        (np.zeros((4, 4), np.int32), "dtype uint16"),
        (np.zeros((4, 4), ">u2"), "dtype uint16"),
        (np.zeros((2, 4, 4), np.uint16), r"2D \(rows, columns\), got shape \(2, 4, 4\)"),
        (np.zeros((0, 4), np.uint16), "1 to 65535 rows"),
        (
            np.full((4, 4), 4096, np.uint16),
            r"below 2\*\*bits_stored = 4096 \(bits_stored=12\), got a maximum of 4096",
        ),
    ],
)
def test_pixel_checks(pixels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _build_pixels(pixels)


def test_pixel_type_checks() -> None:
    with pytest.raises(TypeError, match=r"numpy\.ndarray"):
        _build_pixels([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="bits_stored must be between 10 and 16"):
        _build_pixels(np.zeros((4, 4), np.uint16), bits=8)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "subtracted"}, "acquisition.kind must be one of"),
        ({"laterality": "B"}, "acquisition.laterality must be one of"),
        ({"view": "ML"}, "acquisition.view must be one of"),
        ({"sop_instance_uid": "1.2.3.abc"}, "acquisition.sop_instance_uid is not a valid UID"),
        (
            {"acquisition_date": "2025-06-12"},
            "acquisition.acquisition_date must be a date string YYYYMMDD",
        ),
        ({"acquisition_date": "20250231"}, "not a valid calendar date"),
        ({"acquisition_time": "25:00"}, "acquisition.acquisition_time must be a time string"),
        ({"acquisition_time": "246000"}, "not a valid time of day"),
        ({"kvp": 47.0}, "low-energy exposure: kvp must be below 40"),
        ({"filter_material": "COPPER"}, "low-energy exposure"),
        ({"filter_material": "PLATINUM"}, "acquisition.filter_material must be one of"),
        ({"anode": "SILVER"}, "acquisition.anode must be one of"),
        ({"window_width": 0.0}, "acquisition.window_width must be at least 1"),
        ({"window_center": float("nan")}, "acquisition.window_center must be between"),
        ({"instance_number": 0}, "acquisition.instance_number must be between 1"),
        ({"exposure_time_ms": 12.5}, "acquisition.exposure_time_ms must be an int"),
        ({"series_description": "x" * 65}, "at most 64 characters"),
        (
            {"positioner_primary_angle_deg": 45.0},
            "a CC view needs a positioner_primary_angle_deg near 0",
        ),
        ({"source_sop_instance_uids": (f"{ROOT}.9",)}, "only allowed for a recombined image"),
    ],
)
def test_acquisition_checks(changes: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        build_mg_dataset(
            phantom(),
            patient=PATIENT,
            study=STUDY,
            acquisition=dataclasses.replace(acquisition(), **changes),
            pixel_spacing_mm=0.1,
            bits_stored=12,
        )


def test_recombined_needs_high_energy_technique() -> None:
    with pytest.raises(
        ValueError, match="recombined image carries the technique of its high-energy exposure"
    ):
        build("recombined", kvp=29.0, filter_material="RHODIUM")


@pytest.mark.parametrize(
    ("patient", "study", "message"),
    [
        (
            dataclasses.replace(PATIENT, age_years=40),
            STUDY,
            "age_years=40 does not match birth_date 19730301",
        ),
        (dataclasses.replace(PATIENT, birth_date="20300101"), STUDY, "is after study.study_date"),
        (dataclasses.replace(PATIENT, patient_name="A^B^C^D^E^F"), STUDY, "at most 5"),
        (dataclasses.replace(PATIENT, patient_id="ID\\2"), STUDY, "backslash"),
        (dataclasses.replace(PATIENT, patient_id="Zoë€"), STUDY, "ISO_IR 100"),
        (dataclasses.replace(PATIENT, sex="female"), STUDY, "patient.sex must be one of"),
        (
            PATIENT,
            dataclasses.replace(STUDY, accession_number="A" * 17),
            "accession_number must have at most 16",
        ),
        (
            PATIENT,
            dataclasses.replace(STUDY, study_instance_uid="1.02.3"),
            "study_instance_uid is not a valid UID",
        ),
    ],
)
def test_patient_and_study_checks(patient: PatientInfo, study: StudyInfo, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_mg_dataset(
            phantom(),
            patient=patient,
            study=study,
            acquisition=acquisition(),
            pixel_spacing_mm=0.1,
            bits_stored=12,
        )


def test_other_argument_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pixel_spacing_mm must be between"):
        build_mg_dataset(
            phantom(),
            patient=PATIENT,
            study=STUDY,
            acquisition=acquisition(),
            pixel_spacing_mm=0.0,
            bits_stored=12,
        )
    with pytest.raises(TypeError, match="acquisition must be an AcquisitionInfo"):
        build_mg_dataset(
            phantom(),
            patient=PATIENT,
            study=STUDY,
            acquisition=None,  # type: ignore[arg-type]
            pixel_spacing_mm=0.1,
            bits_stored=12,
        )
    with pytest.raises(ValueError, match="transfer_syntax must be one of"):
        write(tmp_path / "x.dcm", transfer_syntax="jpeg")
    with pytest.raises(ValueError, match="transfer_syntax must be one of"):
        write_dataset(build(), tmp_path / "x.dcm", "deflate")  # type: ignore[arg-type]
    assert not (tmp_path / "x.dcm").exists()
    with pytest.raises(ValueError, match="no patient orientation"):
        patient_orientation_for("B", "CC")


# --- vendor styles (docs/VENDORS.md) -------------------------------------------


def build_styled(kind: str, vendor: str, **kwargs) -> pydicom.Dataset:
    return build_mg_dataset(
        phantom(),
        patient=PATIENT,
        study=STUDY,
        acquisition=acquisition("L", "CC", kind, **kwargs),
        pixel_spacing_mm=0.1,
        bits_stored=12,
        vendor=vendor,
    )


@pytest.mark.parametrize(
    ("vendor", "manufacturer", "model"),
    [
        ("standard", "GE Healthcare", "Senographe Pristina"),
        ("ge", "GE MEDICAL SYSTEMS", "Senographe Pristina"),
        ("hologic", "HOLOGIC, Inc.", "Selenia Dimensions"),
        ("siemens", "SIEMENS", "MAMMOMAT Revelation"),
        ("fujifilm", "FUJIFILM Corporation", "AMULET Innovality"),
    ],
)
def test_vendor_styles_name_their_equipment(vendor: str, manufacturer: str, model: str) -> None:
    ds = build_styled("low_energy", vendor)
    assert (ds.Manufacturer, ds.ManufacturerModelName) == (manufacturer, model)
    assert ds.SOPClassUID == DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION


def test_ge_style_puts_the_energy_in_image_type_value_4() -> None:
    le, rc = build_styled("low_energy", "ge"), build_styled("recombined", "ge")
    assert list(le.ImageType) == ["ORIGINAL", "PRIMARY", "", "LOW_ENERGY"]
    assert list(rc.ImageType) == ["DERIVED", "PRIMARY", "", "RECOMBINED"]
    assert (le.AcquisitionDeviceProcessingCode, rc.AcquisitionDeviceProcessingCode) == (
        "GEMS_FFDM_PV",
        "GEMS_CESM_1",
    )
    assert image_type_for("recombined", "ge") == tuple(rc.ImageType)


@pytest.mark.parametrize("vendor", ["hologic", "siemens", "fujifilm"])
def test_unconfirmed_vendors_keep_the_standard_values(vendor: str) -> None:
    for kind in ("low_energy", "recombined"):
        ds = build_styled(kind, vendor)
        assert tuple(ds.ImageType) == image_type_for(kind)  # the standard's
        assert "AcquisitionDeviceProcessingCode" not in ds
        with pytest.raises(KeyError):
            ds.private_block(0x0045, "GEMS_SENO_02")


def test_siemens_recombined_records_a_titanium_filter() -> None:
    ds = build_styled("recombined", "siemens", filter_material="TITANIUM")
    assert ds.FilterMaterial == "TITANIUM"
    with pytest.raises(ValueError, match="COPPER or TITANIUM"):
        build_styled("low_energy", "siemens", filter_material="TITANIUM")


def test_an_unknown_vendor_is_refused() -> None:
    with pytest.raises(ValueError, match="vendor must be one of"):
        build_styled("low_energy", "agfa")


def test_for_processing_copy() -> None:
    ds = build("low_energy", for_processing=True)
    assert ds.SOPClassUID == DIGITAL_MAMMOGRAPHY_FOR_PROCESSING
    assert ds.file_meta.MediaStorageSOPClassUID == DIGITAL_MAMMOGRAPHY_FOR_PROCESSING
    assert ds.PresentationIntentType == "FOR PROCESSING"
    assert "WindowCenter" not in ds  # VOI LUT is for presentation only


def test_old_view_codes_leave_view_position_out() -> None:
    ds = build("low_energy", view="MLO", old_view_codes=True)
    assert "ViewPosition" not in ds
    item = ds.ViewCodeSequence[0]
    assert (item.CodeValue, item.CodingSchemeDesignator) == ("R-10226", "SRT")


@pytest.mark.tools
@pytest.mark.parametrize("vendor", ["ge", "hologic", "siemens", "fujifilm"])
def test_vendor_styles_are_valid_for_dciodvfy(tmp_path: Path, vendor: str) -> None:
    # the vendor's own terms (GE's LOW_ENERGY/RECOMBINED in value 4, Siemens' Ti
    # filter) are not Defined Terms: warnings only
    allowed = (
        *ALLOWED_WARNINGS,
        re.compile(r"Unrecognized defined term <(LOW_ENERGY|RECOMBINED)> for value 4"),
        re.compile(r"Unrecognized defined term <TITANIUM> for value 1 of attribute <Filter"),
    )
    for kind in ("low_energy", "recombined"):
        titanium = vendor == "siemens" and kind == "recombined"
        extra = {"filter_material": "TITANIUM"} if titanium else {}
        path = tmp_path / f"{kind}.dcm"
        write_dataset(build_styled(kind, vendor, **extra), path)
        assert run_dciodvfy(path) == [], (vendor, kind)
        assert [w for w in dciodvfy_warnings(path) if not any(p.search(w) for p in allowed)] == []
    path = tmp_path / "raw.dcm"
    write_dataset(build_styled("low_energy", vendor, for_processing=True), path)
    assert run_dciodvfy(path) == [], (vendor, "for processing")


# --- external validators ------------------------------------------------------


@pytest.mark.tools
def test_dciodvfy_finds_no_errors(all_files: list[Path]) -> None:
    for path in all_files:
        assert run_dciodvfy(path) == [], path.name
        unexpected = [
            w for w in dciodvfy_warnings(path) if not any(p.search(w) for p in ALLOWED_WARNINGS)
        ]
        assert unexpected == [], path.name


@pytest.mark.tools
def test_dciodvfy_accepts_silver_filter_with_a_warning_only(tmp_path: Path) -> None:
    path = write(tmp_path / "ag.dcm", filter_material="SILVER")
    assert run_dciodvfy(path) == []
    assert any("SILVER" in w for w in dciodvfy_warnings(path))


@pytest.mark.tools
@pytest.mark.slow
def test_pixelmed(all_files: list[Path]) -> None:
    # the instance validator has no rules for MG (it says so); PixelMed must
    # still parse every file, compressed ones included
    report = run_pixelmed_validator(all_files[0])
    assert report.errors == [], report.output
    if report.supported:
        assert "Found" in report.output
    # one JVM start per file: one file per kind and per compressed syntax
    names = {f"{k}_LCC.dcm" for k in KINDS} | {
        f"recombined_{ts}.dcm" for ts in ("jpeg2000", "jpegls", "rle")
    }
    for path in (p for p in all_files if p.name in names):
        assert pixelmed_parse_errors(path) == [], path.name


@pytest.mark.tools
def test_dcmtk_reads_and_decodes(all_files: list[Path], tmp_path: Path) -> None:
    dcmftest = require_tool("dcmftest")
    for path in all_files:
        out = subprocess.run(
            [dcmftest, str(path)], capture_output=True, text=True, check=False
        ).stdout
        assert out.startswith("yes:"), out
    # an independent decoder must give back the same pixels
    decoders = {"jpegls": "dcmdjpls", "rle": "dcmdrle"}
    for syntax, tool in decoders.items():
        exe = shutil.which(tool) or require_tool(tool)
        for kind in KINDS:
            src = next(p for p in all_files if p.name == f"{kind}_{syntax}.dcm")
            dst = tmp_path / f"{kind}_{syntax}_decoded.dcm"
            subprocess.run([exe, str(src), str(dst)], check=True, capture_output=True)
            decoded = pydicom.dcmread(dst)
            assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            np.testing.assert_array_equal(decoded.pixel_array, phantom("R"))

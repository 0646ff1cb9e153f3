"""CEM classification and LE/RC pairing, with the reasons they record."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from cem_node.config import PrivateTagRule, SelectionSection, Settings
from cem_node.dicom.selection import classify_image, pair_images
from cem_node.synthetic import SynthOptions, generate_study

RULES: SelectionSection = Settings.defaults().selection
MG = "1.2.840.10008.5.1.4.1.1.1.2"


def _headers(study: Path) -> list[Dataset]:
    return [
        pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((study / "dicom").glob("*.dcm"))
    ]


def test_a_complete_synthetic_study_gives_four_pairs(tmp_path: Path) -> None:
    study = generate_study(tmp_path, 2, 1, SynthOptions(size="small"))
    classes = [classify_image(ds, RULES) for ds in _headers(study)]
    assert sorted(c.role for c in classes) == ["low_energy"] * 4 + ["recombined"] * 4
    assert all("ImageType contains" in c.reason for c in classes)
    pairs = pair_images(classes)
    assert len(pairs) == 4 and all(p.complete for p in pairs)
    assert {(p.laterality, p.view) for p in pairs} == {
        ("L", "CC"),
        ("L", "MLO"),
        ("R", "CC"),
        ("R", "MLO"),
    }


def test_edge_cases_are_reported_with_reasons(tmp_path: Path) -> None:
    options = SynthOptions(size="small", edge_cases=frozenset({"missing-rc", "extra-non-cem"}))
    study = generate_study(tmp_path, 2, 1, options)
    classes = [classify_image(ds, RULES) for ds in _headers(study)]
    other = [c for c in classes if c.role == "other"]
    assert len(other) == 1 and "no CEM signal" in other[0].reason
    pairs = pair_images(classes)
    assert sum(p.complete for p in pairs) == 3
    (lonely,) = [p for p in pairs if not p.complete]
    assert lonely.recombined is None and "no recombined image" in lonely.reason


def _header(**attrs: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MG
    ds.SOPInstanceUID = "1.2.3.4"
    ds.ImageLaterality = "L"
    ds.ViewPosition = "CC"
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.parametrize(
    ("attrs", "role", "reason"),
    [
        ({"ImageType": ["DERIVED", "PRIMARY", "", "SUBTRACTION"]}, "recombined", "ImageType"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "", "", "LOW_ENERGY"]}, "low_energy", "ImageType"),
        (
            {"ImageType": ["DERIVED", "PRIMARY"], "AcquisitionDeviceProcessingCode": "GEMS_CESM_1"},
            "recombined",
            "GE processing code",
        ),
        (
            {"ImageType": ["ORIGINAL", "PRIMARY"], "KVP": 29, "ContrastBolusAgent": "IOHEXOL"},
            "low_energy",
            "kVp 29",
        ),
        (
            {"ImageType": ["DERIVED", "PRIMARY"], "KVP": 47, "ContrastBolusAgent": "IOHEXOL"},
            "recombined",
            "kVp 47",
        ),
        (
            {"ImageType": ["ORIGINAL", "PRIMARY"], "KVP": 47, "ContrastBolusAgent": "IOHEXOL"},
            "high_energy",
            "kVp 47",
        ),
        (
            {"ImageType": ["DERIVED", "PRIMARY"], "SeriesDescription": "CESM Recombined"},
            "recombined",
            "SeriesDescription",
        ),
        ({"ImageType": ["ORIGINAL", "PRIMARY"], "KVP": 29}, "other", "no contrast agent"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "other", "not a mammography image"),
    ],
)
def test_header_rules(attrs: dict, role: str, reason: str) -> None:
    result = classify_image(_header(**attrs), RULES)
    assert result.role == role
    assert reason in result.reason


def test_rules_are_configurable() -> None:
    ge_style = _header(ImageType=["DERIVED", "PRIMARY", "", "RECOMBINED"])
    assert classify_image(ge_style, RULES).role == "recombined"  # GE's form, on by default
    rules = RULES.model_copy(
        update={
            "vendor_presets": ["hologic", "siemens", "fujifilm"],
            "recombined_image_type_values": ["SUBTRACTION"],
        }
    )
    assert classify_image(ge_style, rules).role == "other"
    rules = rules.model_copy(update={"recombined_image_type_values": ["RECOMBINED"]})
    assert classify_image(ge_style, rules).role == "recombined"  # a site's own term


def test_an_image_without_laterality_is_not_paired() -> None:
    ds = _header(ImageType=["ORIGINAL", "PRIMARY", "", "", "LOW_ENERGY"])
    del ds.ImageLaterality
    (pairing,) = pair_images([classify_image(ds, RULES)])
    assert not pairing.complete and "without a laterality" in pairing.reason


def test_several_candidates_pair_by_acquisition_time() -> None:
    def image(uid: str, kind: str, time: str) -> Dataset:
        value = (
            ["DERIVED", "PRIMARY", "", "SUBTRACTION"]
            if kind == "rc"
            else ["ORIGINAL", "PRIMARY", "", "", "LOW_ENERGY"]
        )
        return _header(ImageType=value, SOPInstanceUID=uid, AcquisitionTime=time)

    headers = [
        image("1.1", "le", "100000"),
        image("1.2", "le", "101500"),
        image("2.2", "rc", "101505"),
        image("2.1", "rc", "100003"),
    ]
    pairs = pair_images(classify_image(ds, RULES) for ds in headers)
    assert {(p.low_energy, p.recombined) for p in pairs} == {("1.1", "2.1"), ("1.2", "2.2")}


def test_filter_material_and_kvp_mark_high_energy_without_contrast_record() -> None:
    original = _header(ImageType=["ORIGINAL", "PRIMARY"], KVP="47", FilterMaterial="COPPER")
    derived = _header(ImageType=["DERIVED", "PRIMARY"], KVP="47", FilterMaterial=["COPPER"])
    low_kvp = _header(ImageType=["ORIGINAL", "PRIMARY"], KVP="29", FilterMaterial="COPPER")
    assert classify_image(original, RULES).role == "high_energy"
    result = classify_image(derived, RULES)
    assert result.role == "recombined" and "COPPER filter and kVp 47" in result.reason
    assert classify_image(low_kvp, RULES).role == "other"


def test_malformed_kvp_does_not_break_the_classification() -> None:
    ds = _header(ImageType=["ORIGINAL", "PRIMARY"], ContrastBolusAgent="IODINE")
    # a KVP that is not a number, as read from a file (converted when accessed)
    ds[0x00180060] = RawDataElement(Tag(0x00180060), "DS", 4, b"abc ", 0, False, True)
    assert classify_image(ds, RULES).role == "other"


def test_private_tag_rules_are_configurable() -> None:
    ds = _header(ImageType=["DERIVED", "PRIMARY"])
    block = ds.private_block(0x0045, "GEMS_SENO_02", create=True)
    block.add_new(0x10, "LO", "CESM RECOMBINED")
    assert classify_image(ds, RULES).role == "other"  # no rule by default
    rule = PrivateTagRule(
        group="0045",
        private_creator="GEMS_SENO_02",
        element="10",
        pattern="RECOMB",
        role="recombined",
    )
    rules = RULES.model_copy(update={"private_tag_rules": [rule]})
    result = classify_image(ds, rules)
    assert result.role == "recombined" and "GEMS_SENO_02" in result.reason
    off = rules.model_copy(update={"use_private_tags": False})
    assert classify_image(ds, off).role == "other"
    with pytest.raises(ValueError, match="odd group"):
        PrivateTagRule(
            group="0044", private_creator="X", element="10", pattern="x", role="recombined"
        )


# --------------------------------------------------------------------------- issue #19

MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
LE_TYPE = ["ORIGINAL", "PRIMARY", "", "", "LOW_ENERGY"]
RC_TYPE = ["DERIVED", "PRIMARY", "", "SUBTRACTION", ""]


def _view_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _study_of_four_views(*, raw_first: bool) -> list[Dataset]:
    """LE and RC of each breast and view, plus a For Processing copy of each LE
    taken at the same time (what a modality sends when it also sends raw images)."""
    headers = []
    for n, (lat, view) in enumerate([("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO")]):
        time = f"10{n:02d}00"
        common = {"ImageLaterality": lat, "ViewPosition": view, "AcquisitionTime": time}
        raw = _header(
            ImageType=LE_TYPE,
            SOPClassUID=MG_FOR_PROCESSING,
            PresentationIntentType="FOR PROCESSING",
            SOPInstanceUID=f"9.{n}",
            **common,
        )
        le = _header(ImageType=LE_TYPE, SOPInstanceUID=f"1.{n}", **common)
        rc = _header(ImageType=RC_TYPE, SOPInstanceUID=f"2.{n}", **common)
        headers += [raw, le, rc] if raw_first else [le, raw, rc]
    return headers


@pytest.mark.parametrize("raw_first", [True, False])
def test_for_presentation_images_are_paired_before_for_processing_copies(
    raw_first: bool,
) -> None:
    # observation 2 (#19): the raw (For Processing) LE copy was paired on every view
    classes = [classify_image(ds, RULES) for ds in _study_of_four_views(raw_first=raw_first)]
    assert [c.for_processing for c in classes].count(True) == 4
    pairs = pair_images(classes, RULES)
    complete = [p for p in pairs if p.complete]
    assert len(complete) == 4
    assert all(p.low_energy and p.low_energy.startswith("1.") for p in complete), complete
    left_out = [p for p in pairs if not p.complete]
    assert sorted(p.low_energy or "" for p in left_out) == ["9.0", "9.1", "9.2", "9.3"]
    for p in left_out:
        assert "For Processing" in p.reason and "For Presentation" in p.reason, p.reason


def test_a_for_processing_image_is_paired_only_as_a_fallback_with_its_reason() -> None:
    headers = [
        ds
        for ds in _study_of_four_views(raw_first=True)
        if not str(ds.SOPInstanceUID).startswith("1.")  # no For Presentation LE sent
    ]
    classes = [classify_image(ds, RULES) for ds in headers]
    pairs = pair_images(classes, RULES)
    assert len(pairs) == 4 and all(p.complete for p in pairs)
    for p in pairs:
        assert "For Processing low-energy image" in p.reason, p.reason
    exclude = RULES.model_copy(update={"for_processing": "exclude"})
    pairs = pair_images(classes, exclude)
    assert not any(p.complete for p in pairs)
    assert all("For Processing" in p.reason for p in pairs if p.low_energy), pairs
    prefer = RULES.model_copy(update={"for_processing": "prefer"})
    full = [classify_image(ds, prefer) for ds in _study_of_four_views(raw_first=False)]
    chosen = [p.low_energy for p in pair_images(full, prefer) if p.complete]
    assert sorted(chosen) == ["9.0", "9.1", "9.2", "9.3"]  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("value", "scheme", "view"),
    [
        ("R-10242", "SRT", "CC"),
        ("R-10226", "SRT", "MLO"),
        ("R-10224", "SRT", "ML"),
        ("R-10228", "SRT", "LM"),
        ("R-10230", "SRT", "LMO"),
        ("R-10244", "SRT", "FB"),
        ("R-102D0", "SRT", "SIO"),
        ("R-40AAA", "SRT", "ISO"),
        ("R-1024A", "SRT", "XCCL"),
        ("R-1024B", "SRT", "XCCM"),
        ("Y-X1770", "SNM3", "XCCL"),
        ("Y-X1771", "SNM3", "XCCM"),
        ("G-8310", "SRT", "SPECIMEN"),
        ("399162004", "SCT", "CC"),
        ("399368009", "SCT", "MLO"),
        ("399260004", "SCT", "ML"),
        ("399352003", "SCT", "LM"),
        ("399099002", "SCT", "LMO"),
        ("399196006", "SCT", "FB"),
        ("399188001", "SCT", "SIO"),
        ("441555000", "SCT", "ISO"),
        ("399192008", "SCT", "XCCL"),
        ("399101009", "SCT", "XCCM"),
        ("127457009", "SCT", "SPECIMEN"),
    ],
)
def test_every_cid_4014_view_code_gives_its_view(value: str, scheme: str, view: str) -> None:
    # observation 4 (#19): SNOMED-RT codes only, no View Position
    ds = _header(ImageType=LE_TYPE, ViewCodeSequence=[_view_item(value, scheme, "x")])
    del ds.ViewPosition
    assert classify_image(ds, RULES).view == view


def test_old_snomed_rt_view_codes_pair() -> None:
    headers = []
    for kind, image_type in (("1", LE_TYPE), ("2", RC_TYPE)):
        for n, (code, meaning) in enumerate(
            (("R-10242", "cranio-caudal"), ("R-10226", "medio-lateral oblique"))
        ):
            ds = _header(
                ImageType=image_type,
                SOPInstanceUID=f"{kind}.{n}",
                ViewCodeSequence=[_view_item(code, "SRT", meaning)],
            )
            del ds.ViewPosition
            headers.append(ds)
    pairs = pair_images([classify_image(ds, RULES) for ds in headers], RULES)
    assert sorted((p.laterality, p.view, p.complete) for p in pairs) == [
        ("L", "CC", True),
        ("L", "MLO", True),
    ]


@pytest.mark.parametrize("view", ["ML", "LM", "XCCL"])
def test_views_the_model_does_not_use_are_left_out_with_that_reason(view: str) -> None:
    # observation 4 (#19): they were told they had no view
    le = _header(ImageType=LE_TYPE, ViewPosition=view, SOPInstanceUID="1.1")
    rc = _header(ImageType=RC_TYPE, ViewPosition=view, SOPInstanceUID="1.2")
    pairs = pair_images([classify_image(ds, RULES) for ds in (le, rc)], RULES)
    assert len(pairs) == 2 and not any(p.complete for p in pairs)
    for p in pairs:
        assert p.view == view
        assert f"view {view}: the model uses CC and MLO only" in p.reason, p.reason
        assert "without a view" not in p.reason


def test_an_image_without_any_view_says_so() -> None:
    ds = _header(ImageType=LE_TYPE)
    del ds.ViewPosition
    (pairing,) = pair_images([classify_image(ds, RULES)], RULES)
    assert "without a view" in pairing.reason


def test_a_derived_subtraction_image_is_recombined_despite_low_energy_technique() -> None:
    # observation 5 (#19): its header repeats the LE kVp and contrast data
    ds = _header(
        ImageType=["DERIVED", "PRIMARY"],
        SeriesDescription="SUB",
        KVP="29",
        ContrastBolusAgent="IOHEXOL",
        FilterMaterial="RHODIUM",
    )
    result = classify_image(ds, RULES)
    assert result.role == "recombined", result.reason
    assert "SUB" in result.reason and "DERIVED" in result.reason


@pytest.mark.parametrize(
    ("description", "role"),
    [
        ("Mammographie le sein gauche", "other"),  # French "le" is not a label
        ("mammographie: le sein droit, le mamelon", "other"),
        ("Tele mammography", "other"),
        ("the breast", "other"),
        ("LE", "low_energy"),
        ("CESM LE", "low_energy"),
        ("CEM_LE_CC", "low_energy"),
        ("Low Energy", "low_energy"),
        ("low-energy", "low_energy"),
        ("HE", "high_energy"),
        ("High energy CC", "high_energy"),
        ("Recombined", "recombined"),
        ("CEM SUB", "recombined"),
        ("Subtraction", "recombined"),
        ("sub-areolar region", "other"),
    ],
)
def test_description_patterns_are_word_safe(description: str, role: str) -> None:
    ds = _header(ImageType=["ORIGINAL", "PRIMARY"], SeriesDescription=description)
    result = classify_image(ds, RULES)
    assert result.role == role, result.reason


def test_explicit_markers_come_before_heuristics() -> None:
    # Image Type says LOW_ENERGY, the description says recombined: the marker wins
    ds = _header(ImageType=LE_TYPE, SeriesDescription="Recombined", KVP="47")
    assert classify_image(ds, RULES).role == "low_energy"
    # a GE recombined code wins over a low-energy kVp with contrast
    ge = _header(
        ImageType=["DERIVED", "PRIMARY"],
        Manufacturer="GE MEDICAL SYSTEMS",
        AcquisitionDeviceProcessingCode="GEMS_CESM_1",
        KVP="29",
        ContrastBolusAgent="IOHEXOL",
    )
    result = classify_image(ge, RULES)
    assert result.role == "recombined" and "GEMS_CESM_1" in result.reason


def test_vendor_presets_follow_the_manufacturer() -> None:
    ge_style = ["DERIVED", "PRIMARY", "", "RECOMBINED"]
    for manufacturer in ("GE MEDICAL SYSTEMS", "GE Healthcare", "GE HealthCare"):
        ds = _header(ImageType=ge_style, Manufacturer=manufacturer)
        result = classify_image(ds, RULES)
        assert result.role == "recombined" and "GE preset" in result.reason
    # GE's term from another manufacturer (reported, unconfirmed) or from an image whose
    # Manufacturer was removed: recombined, with the configured list named as the reason
    hologic = classify_image(_header(ImageType=ge_style, Manufacturer="HOLOGIC, Inc."), RULES)
    assert hologic.role == "recombined", hologic
    assert "configured ImageType values" in hologic.reason
    assert "PS3.3" not in hologic.reason  # not a term of the standard
    anonymous = classify_image(_header(ImageType=ge_style), RULES)
    assert anonymous.role == "recombined" and "PS3.3" not in anonymous.reason
    no_presets = RULES.model_copy(update={"vendor_presets": [], "recombined_image_type_values": []})
    ge = _header(ImageType=ge_style, Manufacturer="GE MEDICAL SYSTEMS")
    assert classify_image(ge, no_presets).role == "other"


def test_every_decision_has_a_reason() -> None:
    headers = _study_of_four_views(raw_first=True)
    headers.append(_header(ImageType=LE_TYPE, ViewPosition="ML", SOPInstanceUID="7.1"))
    headers.append(_header(ImageType=["ORIGINAL", "PRIMARY"], SOPInstanceUID="7.2"))
    classes = [classify_image(ds, RULES) for ds in headers]
    assert all(c.reason for c in classes)
    assert all(p.reason for p in pair_images(classes, RULES))


def test_pairing_reasons_name_the_breast_and_view_once() -> None:
    # observation 8 (#19): "L CC: L CC: no recombined image"
    headers = [ds for ds in _study_of_four_views(raw_first=True) if ds.ImageType[0] == "ORIGINAL"]
    for p in pair_images([classify_image(ds, RULES) for ds in headers], RULES):
        assert p.reason.count(f"{p.laterality} {p.view}") == 1, p.reason


# --------------------------------------------------------------------------- vendor styles


@pytest.fixture(scope="module")
def vendor_studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("vendors")
    return {
        vendor: generate_study(out / vendor, 3, 1, SynthOptions(size="small", vendor=vendor))
        for vendor in ("ge", "hologic", "siemens", "fujifilm")
    }


EXPECTED_MARKER = {
    "ge": "GE preset",
    "hologic": "PS3.3",
    "siemens": "PS3.3",
    "fujifilm": "PS3.3",
}


@pytest.mark.parametrize("vendor", ["ge", "hologic", "siemens", "fujifilm"])
def test_each_vendor_style_gives_four_pairs(vendor: str, vendor_studies: dict[str, Path]) -> None:
    headers = _headers(vendor_studies[vendor])
    classes = [classify_image(ds, RULES) for ds in headers]
    assert sorted(c.role for c in classes) == ["low_energy"] * 4 + ["recombined"] * 4
    assert all(EXPECTED_MARKER[vendor] in c.reason for c in classes), [c.reason for c in classes]
    pairs = pair_images(classes, RULES)
    assert len(pairs) == 4 and all(p.complete for p in pairs), pairs
    assert all("low-energy and recombined of the same breast and view" in p.reason for p in pairs)


def test_vendor_headers_differ(vendor_studies: dict[str, Path]) -> None:
    manufacturers = {v: _headers(s)[0].Manufacturer for v, s in vendor_studies.items()}
    assert len(set(manufacturers.values())) == 4, manufacturers
    siemens_rc = [ds for ds in _headers(vendor_studies["siemens"]) if ds.ImageType[0] == "DERIVED"]
    assert {ds.FilterMaterial for ds in siemens_rc} == {"TITANIUM"}  # TiCEM
    ge = _headers(vendor_studies["ge"])
    assert {tuple(ds.ImageType)[3] for ds in ge} == {"LOW_ENERGY", "RECOMBINED"}


@pytest.mark.parametrize(
    ("edge_case", "extra_images"),
    [("for-processing", 4), ("split-series", 0), ("old-view-codes", 0)],
)
@pytest.mark.parametrize("vendor", ["ge", "hologic"])
def test_vendor_edge_cases_pair_correctly(
    tmp_path: Path, vendor: str, edge_case: str, extra_images: int
) -> None:
    options = SynthOptions(size="small", vendor=vendor, edge_cases=frozenset({edge_case}))
    headers = _headers(generate_study(tmp_path, 4, 1, options))
    assert len(headers) == 8 + extra_images
    classes = [classify_image(ds, RULES) for ds in headers]
    pairs = pair_images(classes, RULES)
    complete = [p for p in pairs if p.complete]
    assert len(complete) == 4, pairs
    by_uid = {str(ds.SOPInstanceUID): ds for ds in headers}
    for p in complete:
        assert by_uid[str(p.low_energy)].SOPClassUID == MG  # For Presentation chosen
    if edge_case == "for-processing":
        raw = [ds for ds in headers if ds.SOPClassUID == MG_FOR_PROCESSING]
        assert len(raw) == 4
        assert len([p for p in pairs if "For Processing" in p.reason]) == 4
    if edge_case == "split-series":
        assert len({ds.SeriesInstanceUID for ds in headers}) == 8
    if edge_case == "old-view-codes":
        assert all("ViewPosition" not in ds for ds in headers)
        assert {ds.ViewCodeSequence[0].CodingSchemeDesignator for ds in headers} == {"SRT"}


# --------------------------------------------------------------------------- through the worker


def test_the_worker_pairs_for_presentation_and_studies_show_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GE-style study with For Processing copies of its LE images and old view
    codes, through the real ingest, worker and `cem-node studies show`."""
    import os

    from typer.testing import CliRunner

    from cem_node.cli import app
    from cem_node.jobs.admin import show_study
    from cem_node.jobs.assembler import complete_due_studies
    from tests.analysis_double import DoubleAnalyser
    from tests.test_jobs import Store

    options = SynthOptions(
        size="small", vendor="ge", edge_cases=frozenset({"for-processing", "old-view-codes"})
    )
    study = generate_study(tmp_path / "synth", 11, 1, options)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = Store(data_dir, f"sqlite:///{data_dir / 'cem-node.db'}")
    uid = store.receive(sorted((study / "dicom").glob("*.dcm")))
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    analyser = DoubleAnalyser()
    assert store.worker(analyser).run_once()
    (request,) = analyser.calls
    raw = {str(ds.SOPInstanceUID) for ds in _headers(study) if ds.SOPClassUID == MG_FOR_PROCESSING}
    assert len(raw) == 4
    assert sorted((p.laterality, p.view) for p in request.pairs) == [
        ("L", "CC"),
        ("L", "MLO"),
        ("R", "CC"),
        ("R", "MLO"),
    ]
    assert not {p.low_energy_sop_instance_uid for p in request.pairs} & raw
    shown = show_study(store.sessions, uid)
    left_out = [p for p in shown["pairings"] if not p["paired"]]
    assert len(left_out) == 4
    assert all("For Processing low-energy image not paired" in p["reason"] for p in left_out)
    store.engine.dispose()

    monkeypatch.chdir(tmp_path)  # no ./conf/node.toml, no developer overrides
    for var in [v for v in os.environ if v.upper().startswith("CEM_NODE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("COLUMNS", "400")  # one line per table row
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "studies", "show", uid])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "For Processing low-energy image not paired" in said, result.output


def test_selenium_detectors_are_written_as_direct(vendor_studies: dict[str, Path]) -> None:
    """Hologic, Siemens and Fujifilm mammography detectors are amorphous selenium
    (direct conversion; docs/VENDORS.md gives the sources); GE keeps the default."""
    detector = {v: {ds.DetectorType for ds in _headers(s)} for v, s in vendor_studies.items()}
    assert detector == {
        "ge": {"SCINTILLATOR"},
        "hologic": {"DIRECT"},
        "siemens": {"DIRECT"},
        "fujifilm": {"DIRECT"},
    }


def test_a_derived_low_energy_image_in_the_standard_layout_stays_low_energy() -> None:
    """LOW_ENERGY in value 5 decides even on a DERIVED image with POST_CONTRAST in
    value 3 (a layout a public viewer's hanging protocol attributes to GE)."""
    ds = Dataset()
    ds.SOPClassUID = MG
    ds.ImageType = ["DERIVED", "PRIMARY", "POST_CONTRAST", "", "LOW_ENERGY"]
    ds.SeriesDescription = "CESM"
    role = classify_image(ds, RULES)
    assert role.role == "low_energy", role.reason
    assert "LOW_ENERGY" in role.reason

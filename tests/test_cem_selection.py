"""CEM classification and LE/RC pairing, with the reasons they record."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from cem_node.config import PrivateTagRule, SelectionSection, Settings
from cem_node.dicom.cem_selection import classify_image, pair_images
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
    rules = RULES.model_copy(update={"recombined_image_type_values": ["SUBTRACTION"]})
    assert classify_image(ge_style, rules).role == "other"


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

"""The synthetic CEM study generator: structure, determinism, encodings,
validity and agreement of the ground truth with the pixels."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from typer.testing import CliRunner

from cem_node.cli import app
from cem_node.synthetic import SynthOptions, generate_study, grid_for_size
from cem_node.synthetic.lesions import CYST_LE_CONTRAST, sample_lesion
from tests.dicom_validators import run_dciodvfy

SMALL = SynthOptions(size="small")


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_studies(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("synth")
    return [generate_study(out, 7, i, SMALL) for i in range(1, 7)]


def _truth(study: Path) -> dict:
    return json.loads((study / "ground_truth.json").read_text())


def test_a_study_has_eight_paired_images_of_one_patient(small_studies: list[Path]) -> None:
    for study in small_studies:
        truth = _truth(study)
        datasets = [pydicom.dcmread(study / i["file"]) for i in truth["images"]]
        assert len(datasets) == 8
        assert {ds.StudyInstanceUID for ds in datasets} == {truth["study"]["study_instance_uid"]}
        assert {ds.PatientID for ds in datasets} == {truth["patient"]["patient_id"]}
        assert len({ds.SOPInstanceUID for ds in datasets}) == 8
        keys = sorted((ds.ImageLaterality, ds.ViewPosition, ds.ImageType[-1]) for ds in datasets)
        # each breast x view has one LE and one RC image
        assert len({k[:2] for k in keys}) == 4
        for ds in datasets:
            assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2"
            assert ds.Modality == "MG"
            assert ds.PhotometricInterpretation == "MONOCHROME2"
            assert 12 <= ds.BitsStored <= 14
            assert ds.pixel_array.max() < 2**ds.BitsStored
            assert "ImagerPixelSpacing" in ds and "PixelSpacing" not in ds
            assert 35 <= truth["patient"]["age_years"] <= 85


def test_image_type_marks_low_energy_and_recombined(small_studies: list[Path]) -> None:
    truth = _truth(small_studies[0])
    for image in truth["images"]:
        ds = pydicom.dcmread(small_studies[0] / image["file"])
        values = list(ds.ImageType)
        if image["kind"] == "low_energy":
            assert values[4:5] == ["LOW_ENERGY"], values
        else:
            assert "SUBTRACTION" in values[3:4], values


def test_right_breasts_have_the_chest_wall_on_the_right(small_studies: list[Path]) -> None:
    for study in small_studies[:2]:
        for image in _truth(study)["images"]:
            pixels = pydicom.dcmread(study / image["file"]).pixel_array.astype(float)
            left, right = pixels[:, :10].mean(), pixels[:, -10:].mean()
            if image["laterality"] == "R":
                assert right > 2 * left
            else:
                assert left > 2 * right


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = generate_study(tmp_path / "a", 11, 1, SMALL)
    b = generate_study(tmp_path / "b", 11, 1, SMALL)
    c = generate_study(tmp_path / "c", 12, 1, SMALL)
    assert _digest(a) == _digest(b)
    assert len(_digest(a)) >= 11  # 8 DICOM + truth + sheet + masks
    assert _digest(a)["dicom/LE_LCC.dcm"] != _digest(c)["dicom/LE_LCC.dcm"]


@pytest.mark.parametrize("syntax", ["jpeg2000", "jpegls", "rle"])
def test_every_transfer_syntax_decodes_losslessly(tmp_path: Path, syntax: str) -> None:
    plain = generate_study(tmp_path / "plain", 5, 1, SMALL)
    packed = generate_study(
        tmp_path / syntax, 5, 1, SynthOptions(size="small", transfer_syntax=syntax)
    )
    uids = {
        "jpeg2000": "1.2.840.10008.1.2.4.90",
        "jpegls": "1.2.840.10008.1.2.4.80",
        "rle": "1.2.840.10008.1.2.5",
    }
    for path in sorted((plain / "dicom").glob("*.dcm")):
        original = pydicom.dcmread(path)
        encoded = pydicom.dcmread(packed / "dicom" / path.name)
        assert encoded.file_meta.TransferSyntaxUID == uids[syntax]
        np.testing.assert_array_equal(encoded.pixel_array, original.pixel_array)


@pytest.mark.tools
@pytest.mark.parametrize(
    "options",
    [
        SynthOptions(size="small"),
        SynthOptions(size="small", transfer_syntax="jpeg2000"),
        SynthOptions(size="small", edge_cases=frozenset({"extra-non-cem", "missing-rc"})),
    ],
    ids=["explicit", "jpeg2000", "edge-cases"],
)
def test_every_synthetic_file_is_dciodvfy_clean(tmp_path: Path, options: SynthOptions) -> None:
    study = generate_study(tmp_path, 3, 1, options)
    files = sorted((study / "dicom").glob("*.dcm"))
    assert files
    for path in files:
        assert run_dciodvfy(path) == [], path.name


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=width) & ~ndimage.binary_dilation(
        mask, iterations=2
    )


def test_ground_truth_lines_up_with_the_pixels(small_studies: list[Path]) -> None:
    malignant = cysts = 0
    for study in small_studies:
        truth = _truth(study)
        files = {
            (i["laterality"], i["view"], i["kind"]): study / i["file"] for i in truth["images"]
        }
        for lesion in truth["lesions"]:
            for view, info in lesion["views"].items():
                mask = np.asarray(Image.open(study / info["mask_png"]).convert("1"), dtype=bool)
                assert mask.sum() > 0
                x0, y0, x1, y1 = info["bbox_xyxy"]
                assert mask[y0:y1, x0:x1].sum() == mask.sum()
                rc = pydicom.dcmread(
                    files[(lesion["laterality"], view, "recombined")]
                ).pixel_array.astype(float)
                le = pydicom.dcmread(
                    files[(lesion["laterality"], view, "low_energy")]
                ).pixel_array.astype(float)
                breast = rc > np.percentile(rc, 5) * 2  # the breast, not the background
                outside = breast & ~mask
                ring = _ring(mask, 6) & breast
                if lesion["pathology"] == "malignant":
                    malignant += 1
                    # enhancing cancer: well above the breast outside the mask
                    assert rc[mask].mean() > rc[outside].mean() + 3 * rc[outside].std(), lesion
                elif lesion["enhancement"] == "none":
                    cysts += 1
                    # a cyst: dense on LE, not enhancing on RC
                    assert le[mask].mean() > le[ring].mean()
                    assert abs(rc[mask].mean() - rc[ring].mean()) < 2 * rc[ring].std()
    assert malignant >= 2, "the fixture studies should contain malignant lesions"
    assert cysts >= 1, "the fixture studies should contain a non-enhancing cyst"


def test_a_lesion_is_consistent_between_cc_and_mlo(small_studies: list[Path]) -> None:
    count = 0
    for study in small_studies:
        for lesion in _truth(study)["lesions"]:
            cc, mlo = lesion["views"]["CC"], lesion["views"]["MLO"]
            count += 1
            assert (
                abs(cc["largest_diameter_mm"] - mlo["largest_diameter_mm"])
                < 0.35 * lesion["size_mm"] + 2
            )
            # same depth behind the nipple in both views (the MLO shows a little more)
            assert 0.95 < mlo["posterior_depth_mm"] / cc["posterior_depth_mm"] < 1.2
            assert 5 <= lesion["size_mm"] <= 40
    assert count >= 3


def test_some_breasts_have_no_lesion(small_studies: list[Path]) -> None:
    breasts = [b for study in small_studies for b in _truth(study)["breasts"]]
    assert any(not b["lesion_ids"] for b in breasts)
    assert any(b["lesion_ids"] for b in breasts)


def test_edge_cases(tmp_path: Path) -> None:
    one = _truth(
        generate_study(
            tmp_path / "one", 1, 1, SynthOptions(size="small", edge_cases=frozenset({"one-breast"}))
        )
    )
    assert len(one["images"]) == 4 and len({i["laterality"] for i in one["images"]}) == 1
    missing = _truth(
        generate_study(
            tmp_path / "miss",
            1,
            1,
            SynthOptions(size="small", edge_cases=frozenset({"missing-rc"})),
        )
    )
    kinds = [i["kind"] for i in missing["images"]]
    assert kinds.count("low_energy") == 4 and kinds.count("recombined") == 3
    both = SynthOptions(size="small", edge_cases=frozenset({"one-breast", "missing-rc"}))
    for seed in range(4):  # the missing RC is always one of the present breast's
        kinds = [
            i["kind"]
            for i in _truth(generate_study(tmp_path / f"b{seed}", seed, 1, both))["images"]
        ]
        assert sorted(kinds) == ["low_energy", "low_energy", "recombined"]
    extra_dir = generate_study(
        tmp_path / "extra",
        1,
        1,
        SynthOptions(size="small", edge_cases=frozenset({"extra-non-cem"})),
    )
    extra = _truth(extra_dir)
    dm = [i for i in extra["images"] if i["kind"] == "non_contrast"]
    assert len(extra["images"]) == 9 and len(dm) == 1
    ds = pydicom.dcmread(extra_dir / dm[0]["file"])
    assert "LOW_ENERGY" not in ds.ImageType and "SUBTRACTION" not in ds.ImageType
    assert ds.SeriesInstanceUID not in {
        i["series_instance_uid"] for i in extra["images"] if i["kind"] != "non_contrast"
    }


def test_full_size_is_a_pristina_detector(tmp_path: Path) -> None:
    grid = grid_for_size("full")
    assert (grid.rows, grid.cols, grid.pixel_mm) == (2294, 1914, 0.1)
    study = generate_study(tmp_path, 1, 1, SynthOptions())
    ds = pydicom.dcmread(study / "dicom" / "RC_LMLO.dcm")
    assert (ds.Rows, ds.Columns) == (2294, 1914)
    assert [float(v) for v in ds.ImagerPixelSpacing] == [0.1, 0.1]
    sheet = Image.open(study / "contact_sheet.png")
    assert sheet.width > 1000


@pytest.mark.parametrize("size", ["huge", "10x10", "axb"])
def test_bad_size_is_refused(size: str) -> None:
    with pytest.raises(ValueError, match="size"):
        grid_for_size(size)


def test_cli_synth_writes_studies_and_rejects_bad_size(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["synth", "--out", str(tmp_path), "--studies", "2", "--seed", "4", "--size", "small"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study-0001", "study-0002"]
    assert (tmp_path / "study-0002" / "contact_sheet.png").is_file()
    bad = runner.invoke(app, ["synth", "--out", str(tmp_path / "x"), "--size", "huge"])
    assert bad.exit_code == 2
    assert "size" in bad.output


def test_cysts_are_visible_on_the_low_energy_image() -> None:
    """A non-enhancing lesion shows only on the LE image, so it is drawn denser than
    the enhancing ones (which the RC image shows); the draw order is unchanged."""
    rng = np.random.default_rng(5)
    specs = [sample_lesion(rng, f"L{i}", "benign") for i in range(200)]
    cysts = [s for s in specs if s.enhancement == "none"]
    masses = [s for s in specs if s.enhancement != "none"]
    assert len(cysts) > 40 and len(masses) > 100
    low, high = CYST_LE_CONTRAST
    assert all(low <= s.le_contrast <= high for s in cysts)
    assert all(s.le_contrast < low for s in masses)
    assert all(s.rc_enhancement == 0 and s.kind == "cyst" for s in cysts)


def test_cli_synth_vendor_and_edge_cases(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["synth", "--out", str(tmp_path), "--seed", "6", "--size", "small"]
    edges = ["--edge-case", "for-processing", "--edge-case", "split-series"]
    result = runner.invoke(app, [*args, "--vendor", "siemens", *edges])
    assert result.exit_code == 0, result.output
    study = tmp_path / "study-0001"
    truth = _truth(study)
    assert truth["generator"]["vendor"] == "siemens"
    assert truth["generator"]["edge_cases"] == ["for-processing", "split-series"]
    datasets = {i["file"]: pydicom.dcmread(study / i["file"]) for i in truth["images"]}
    assert len(datasets) == 12
    assert {ds.Manufacturer for ds in datasets.values()} == {"SIEMENS"}
    raw = [i for i in truth["images"] if i["for_processing"]]
    assert len(raw) == 4 and all(i["kind"] == "low_energy" for i in raw)
    for image in raw:
        ds = datasets[image["file"]]
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2.1"
        assert ds.PresentationIntentType == "FOR PROCESSING"
    assert len({ds.SeriesInstanceUID for ds in datasets.values()}) == 12  # split series
    # the ground truth references the For Presentation images only
    presentation = {i["sop_instance_uid"] for i in truth["images"] if not i["for_processing"]}
    for lesion in truth["lesions"]:
        for view in lesion["views"].values():
            assert set(view["image_sop_instance_uids"].values()) <= presentation
    bad = runner.invoke(app, [*args, "--vendor", "agfa"])
    assert bad.exit_code == 2


def test_vendor_layouts_and_old_view_codes(tmp_path: Path) -> None:
    one = generate_study(tmp_path / "h", 8, 1, SynthOptions(size="small", vendor="hologic"))
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in (one / "dicom").glob("*.dcm")}) == 1
    options = SynthOptions(size="small", vendor="ge", edge_cases=frozenset({"old-view-codes"}))
    old = generate_study(tmp_path / "g", 8, 1, options)
    for path in (old / "dicom").glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert "ViewPosition" not in ds
        assert ds.ViewCodeSequence[0].CodeValue in {"R-10242", "R-10226"}


def test_the_vendor_does_not_change_the_pixels(tmp_path: Path) -> None:
    ge = generate_study(tmp_path / "ge", 9, 1, SynthOptions(size="small", vendor="ge"))
    fuji = generate_study(tmp_path / "fj", 9, 1, SynthOptions(size="small", vendor="fujifilm"))
    for path in (ge / "dicom").glob("*.dcm"):
        a, b = pydicom.dcmread(path), pydicom.dcmread(fuji / "dicom" / path.name)
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)

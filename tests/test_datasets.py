"""Training datasets: SPEC parsing, the synthetic, CDD-CESM and manifest sources, splits."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cem_node.synthetic import PHANTOM_VERSION
from cem_node.training.datasets import (
    CDD_CESM_LABELS_XLSX,
    CDD_CESM_OUTLINES_CSV,
    DatasetError,
    LoadedSample,
    Sample,
    load_dataset,
    parse_spec,
    split,
)
from tests.dicom_validators import missing_tool

CDD_CESM_512 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cdd-cesm-512"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dataset-cache")


@pytest.fixture(scope="module")
def synthetic(cache: Path):
    return load_dataset("synthetic:1:5:small", cache_dir=cache)


# --- SPEC ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "count", "seed", "size"),
    [
        ("synthetic:3", "synthetic", 3, 0, "small"),
        ("synthetic:2:7", "synthetic", 2, 7, "small"),
        ("synthetic:1:0:full", "synthetic", 1, 0, "full"),
        (" Synthetic:4:1:300x400 ", "synthetic", 4, 1, "300x400"),
    ],
)
def test_synthetic_specs(text: str, kind: str, count: int, seed: int, size: str) -> None:
    spec = parse_spec(text)
    assert (spec.kind, spec.count, spec.seed, spec.size) == (kind, count, seed, size)
    assert spec.cache_name == f"synthetic-{count}-{seed}-{size}-p{PHANTOM_VERSION}"


def test_path_specs() -> None:
    assert parse_spec("cdd-cesm:/data/cdd").path == Path("/data/cdd")
    spec = parse_spec("manifest:studies/list.csv")
    assert (spec.kind, spec.path) == ("manifest", Path("studies/list.csv"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "use synthetic:N"),
        ("synthetic", "use synthetic:N"),
        ("imagenet:3", "unknown kind 'imagenet'"),
        ("synthetic:", "N (the number of studies) must be a whole number"),
        ("synthetic:abc", "got 'abc'"),
        ("synthetic:0", "must be at least 1"),
        ("synthetic:2:x", "SEED must be a whole number"),
        ("synthetic:2:0:huge", "size must be 'full', 'small' or WxH"),
        ("synthetic:2:0:small:9", "too many fields"),
        ("cdd-cesm:", "needs a path (the dataset folder)"),
        ("manifest: ", "needs a path (the manifest CSV file)"),
    ],
)
def test_bad_specs(text: str, message: str) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)):
        parse_spec(text)


# --- synthetic --------------------------------------------------------------------------------


def test_synthetic_samples(synthetic, cache: Path) -> None:
    assert len(synthetic) == 4  # two breasts x CC, MLO
    assert {(s.laterality, s.view) for s in synthetic} == {
        ("L", "CC"),
        ("L", "MLO"),
        ("R", "CC"),
        ("R", "MLO"),
    }
    assert len({s.patient_id for s in synthetic}) == 1
    study = cache / f"synthetic-1-5-small-p{PHANTOM_VERSION}" / "study-0001"
    truth = json.loads((study / "ground_truth.json").read_text())
    for sample in synthetic:
        loaded = sample.load()
        assert loaded.low_energy.dtype == np.float32 and loaded.recombined.dtype == np.float32
        assert loaded.low_energy.shape == loaded.recombined.shape == (573, 478)
        assert sample.pixel_spacing_mm == (0.4, 0.4)
        expected = [les for les in truth["lesions"] if les["laterality"] == sample.laterality]
        assert len(loaded.lesions) == len(expected)
        for lesion in loaded.lesions:
            assert lesion.mask.dtype == bool and lesion.mask.shape == (573, 478)
            assert lesion.mask.any()
            assert lesion.label in ("benign", "malignant") and lesion.pathology == lesion.label
        labels = {les.label for les in loaded.lesions}
        assert sample.label == (
            "malignant" if "malignant" in labels else labels.pop() if labels else "normal"
        )


def test_synthetic_cache_is_reused(synthetic, cache: Path) -> None:
    marker = cache / f"synthetic-1-5-small-p{PHANTOM_VERSION}" / "dataset.json"
    before = marker.stat().st_mtime_ns
    again = load_dataset("synthetic:1:5:small", cache_dir=cache)
    assert marker.stat().st_mtime_ns == before
    assert [s.key for s in again] == [s.key for s in synthetic]


# --- CDD-CESM ---------------------------------------------------------------------------------


def test_cdd_cesm_512_layout() -> None:
    if not (CDD_CESM_512 / "pairs.csv").is_file():
        missing_tool(f"the CDD-CESM 512-px subset is not at {CDD_CESM_512}")
    data = load_dataset(f"cdd-cesm:{CDD_CESM_512}")
    assert len(data) == 216 and len(data.patients) == 119
    for sample in data.samples[:3]:
        loaded = sample.load()
        assert loaded.low_energy.shape == loaded.recombined.shape == (512, 512)
        assert sample.label == "malignant" and sample.pixel_spacing_mm is None
        assert loaded.lesions and all(les.label == "malignant" for les in loaded.lesions)
        assert all(les.mask.sum() >= 16 for les in loaded.lesions)


def _write_xlsx(path: Path, rows: list[tuple]) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "all"
    sheet.append(
        ["Image_name", "Patient_ID", "Side", "Type", "View", "Pathology Classification/ Follow up"]
    )
    for row in rows:
        sheet.append(list(row))
    book.save(path)


def _write_via(path: Path, regions: list[tuple[str, dict]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "#filename",
                "file_size",
                "file_attributes",
                "region_count",
                "region_id",
                "region_shape_attributes",
                "region_attributes",
            ]
        )
        for i, (name, shape) in enumerate(regions):
            writer.writerow([name, 1000, "{}", 1, i, json.dumps(shape), "{}"])


@pytest.fixture
def cdd_full(tmp_path: Path) -> Path:
    root = tmp_path / "CDD-CESM"
    low, sub = root / "Low energy images of CDD-CESM", root / "Subtracted images of CDD-CESM"
    low.mkdir(parents=True)
    sub.mkdir()
    rng = np.random.default_rng(0)
    for name in (
        "P1_L_DM_CC",
        "P1_L_CM_CC",
        "P2_R_DM_MLO",
        "P2_R_CM_MLO",
        "P3_L_DM_CC",
        "P3_L_CM_CC",
    ):
        folder = low if "_DM_" in name else sub
        pixels = rng.integers(0, 255, (120, 100), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.jpg")
    _write_xlsx(
        root / CDD_CESM_LABELS_XLSX,
        [
            ("P1_L_DM_CC", 1, "L", "DM", "CC", "Malignant"),
            ("P1_L_CM_CC ", 1, "L", "CESM", "CC", "Malignant"),
            ("P2_R_DM_MLO", 2, "R", "DM", "MLO", "Normal"),
            ("P2_R_CM_MLO", 2, "R", "CESM", "MLO", "Normal"),
            ("P3_L_DM_CC", 3, "L", "DM", "CC", "Benign"),
            ("P3_L_CM_CC", 3, "L", "CESM", "CC", "Normal"),
        ],
    )
    square = {"name": "polygon", "all_points_x": [10, 30, 30, 10], "all_points_y": [20, 20, 50, 50]}
    _write_via(
        root / CDD_CESM_OUTLINES_CSV,
        [
            ("P1_L_CM_CC.jpg", square),
            ("P1_L_CM_CC.jpg", {"name": "ellipse", "cx": 70, "cy": 80, "rx": 12, "ry": 8}),
            ("P1_L_CM_CC.jpg", {"name": "point", "cx": 5, "cy": 5}),
            ("P1_L_DM_CC.jpg", {"name": "circle", "cx": 50, "cy": 50, "r": 30}),  # not used
            ("P3_L_DM_CC.jpg", {"name": "circle", "cx": 50, "cy": 60, "r": 10}),
        ],
    )
    return root


def test_cdd_cesm_full_layout(cdd_full: Path) -> None:
    data = load_dataset(f"cdd-cesm:{cdd_full}")
    by_patient = {s.patient_id: s for s in data}
    assert sorted(by_patient) == ["P1", "P2", "P3"]
    assert [by_patient[p].label for p in ("P1", "P2", "P3")] == ["malignant", "normal", "benign"]

    p1 = by_patient["P1"].load()
    assert p1.low_energy.shape == (120, 100)
    # the recombined image's outlines: the polygon and the ellipse (the point has no outline)
    assert len(p1.lesions) == 2 and {les.label for les in p1.lesions} == {"malignant"}
    polygon, ellipse = (les.mask for les in p1.lesions)
    assert polygon[20:51, 10:31].all() and polygon.sum() == 21 * 31
    assert ellipse[80, 70] and ellipse[80, 81] and not ellipse[80, 84] and not ellipse[89, 70]
    # outlines are filled with their boundary pixels (as cv2 draws them)
    assert abs(int(ellipse.sum()) - np.pi * 12.5 * 8.5) < 0.05 * np.pi * 12.5 * 8.5

    assert by_patient["P2"].load().lesions == ()
    p3 = by_patient["P3"].load()  # CM normal, DM benign with a circle: the DM outline is used
    assert len(p3.lesions) == 1 and p3.lesions[0].label == "benign"
    assert p3.lesions[0].mask[60, 50] and abs(int(p3.lesions[0].mask.sum()) - np.pi * 10.5**2) < 20


def test_cdd_cesm_full_layout_rejects_resized_images(cdd_full: Path) -> None:
    _write_via(
        cdd_full / CDD_CESM_OUTLINES_CSV,
        [("P1_L_CM_CC.jpg", {"name": "ellipse", "cx": 900, "cy": 1500, "rx": 50, "ry": 40})],
    )
    sample = next(s for s in load_dataset(f"cdd-cesm:{cdd_full}") if s.patient_id == "P1")
    with pytest.raises(DatasetError, match=r"P1_L_CM_CC .*outside the 100 x 120 image"):
        sample.load()


def test_cdd_cesm_missing_files(tmp_path: Path, cdd_full: Path) -> None:
    with pytest.raises(DatasetError, match="CDD-CESM folder not found"):
        load_dataset(f"cdd-cesm:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"expected pairs\.csv"):
        load_dataset(f"cdd-cesm:{tmp_path / 'empty'}")
    (cdd_full / "Subtracted images of CDD-CESM" / "P2_R_CM_MLO.jpg").unlink()
    with pytest.raises(DatasetError, match=r"P2_R_CM_MLO\.jpg .* not found"):
        load_dataset(f"cdd-cesm:{cdd_full}")


# --- manifest ---------------------------------------------------------------------------------


def _manifest(path: Path, rows: list[dict]) -> Path:
    columns = ["patient_id", "low_energy", "recombined", "mask", "label", "laterality", "view"]
    columns += sorted({k for r in rows for k in r} - set(columns))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


@pytest.fixture
def study(synthetic, cache: Path) -> Path:
    return cache / f"synthetic-1-5-small-p{PHANTOM_VERSION}" / "study-0001"


def test_manifest_with_png_masks(study: Path, tmp_path: Path) -> None:
    truth = json.loads((study / "ground_truth.json").read_text())
    right = [les for les in truth["lesions"] if les["laterality"] == "R"]
    assert right, "the synthetic study of seed 5 has a lesion in the right breast"
    rows = [
        {
            "patient_id": "A1",
            "low_energy": f"{study}/dicom/LE_RCC.dcm",
            "recombined": f"{study}/dicom/RC_RCC.dcm",
            "mask": f"{study}/{les['views']['CC']['mask_png']}",
            "label": les["pathology"].upper(),
            "lesion_id": les["lesion_id"],
        }
        for les in right
    ]
    rows.append(
        {
            "patient_id": "A1",
            "low_energy": f"{study}/dicom/LE_LMLO.dcm",
            "recombined": f"{study}/dicom/RC_LMLO.dcm",
            "label": "normal",
            "laterality": "L",
            "view": "MLO",
        }
    )
    data = load_dataset(f"manifest:{_manifest(tmp_path / 'list.csv', rows)}")
    assert len(data) == 2
    rcc, lmlo = data.samples
    assert (rcc.laterality, rcc.view) == ("R", "CC")  # from the DICOM header
    assert rcc.pixel_spacing_mm == (0.4, 0.4)
    loaded = rcc.load()
    assert [les.lesion_id for les in loaded.lesions] == [les["lesion_id"] for les in right]
    assert [les.label for les in loaded.lesions] == [les["pathology"] for les in right]
    png = np.asarray(Image.open(study / right[0]["views"]["CC"]["mask_png"])) > 0
    assert np.array_equal(loaded.lesions[0].mask, png)
    assert (lmlo.label, lmlo.lesions) == ("normal", ())


def test_manifest_with_dicom_seg(study: Path, tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    truth = json.loads((study / "ground_truth.json").read_text())
    right = [les for les in truth["lesions"] if les["laterality"] == "R"]
    masks = [np.asarray(Image.open(study / les["views"]["CC"]["mask_png"])) > 0 for les in right]
    labelmap = np.zeros(masks[0].shape, np.uint8)
    for i, mask in enumerate(masks, start=1):
        labelmap[mask] = i
    description = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=f"lesion {i}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for i in range(1, len(masks) + 1)
    ]
    seg = hd.seg.Segmentation(
        source_images=[pydicom.dcmread(study / "dicom" / "RC_RCC.dcm")],
        pixel_array=labelmap,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=description,
        series_instance_uid=hd.UID(),
        series_number=9,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(tmp_path / "seg.dcm")
    row = {
        "patient_id": "A1",
        "low_energy": f"{study}/dicom/LE_RCC.dcm",
        "recombined": f"{study}/dicom/RC_RCC.dcm",
        "mask": "seg.dcm",
        "label": "malignant",
    }
    data = load_dataset(f"manifest:{_manifest(tmp_path / 'seg.csv', [row])}")
    lesions = data.samples[0].load().lesions
    assert len(lesions) == len(masks)
    assert all(np.array_equal(les.mask, m) for les, m in zip(lesions, masks, strict=True))
    last = dict(row, segment=str(len(masks)))
    data = load_dataset(f"manifest:{_manifest(tmp_path / 'one.csv', [last])}")
    assert np.array_equal(data.samples[0].load().lesions[0].mask, masks[-1])


def test_manifest_errors(study: Path, tmp_path: Path) -> None:
    base = {
        "patient_id": "A1",
        "low_energy": f"{study}/dicom/LE_RCC.dcm",
        "recombined": f"{study}/dicom/RC_RCC.dcm",
        "label": "malignant",
    }
    good_mask = tmp_path / "good.png"
    Image.fromarray(np.zeros((573, 478), np.uint8)).save(good_mask)

    def load(rows: list[dict], name: str = "m.csv"):
        return load_dataset(f"manifest:{_manifest(tmp_path / name, rows)}")

    with pytest.raises(DatasetError, match=r"mask not found: .*absent\.png"):
        load([dict(base, mask="absent.png")])
    with pytest.raises(DatasetError, match=r"low-energy image not found: .*LE_XX\.dcm"):
        load([dict(base, low_energy=f"{study}/dicom/LE_XX.dcm", mask="good.png")])
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((100, 80), np.uint8)).save(small)
    with pytest.raises(
        DatasetError, match=r"mask small\.png has shape \(100, 80\), .*\(573, 478\)"
    ):
        load([dict(base, mask="small.png")])
    with pytest.raises(DatasetError, match=r"m\.csv row 2: unknown label 'maligant'"):
        load([dict(base, mask="good.png"), dict(base, mask="good.png", label="maligant")])
    with pytest.raises(DatasetError, match="a malignant lesion needs a mask"):
        load([base])
    with pytest.raises(DatasetError, match="missing column"):
        (tmp_path / "bad.csv").write_text("patient,le,rc\n1,a,b\n")
        load_dataset(f"manifest:{tmp_path / 'bad.csv'}")
    with pytest.raises(DatasetError, match="manifest CSV not found"):
        load_dataset(f"manifest:{tmp_path / 'none.csv'}")
    # LE and RC of different shapes
    Image.fromarray(np.zeros((50, 40), np.uint8)).save(tmp_path / "le.png")
    Image.fromarray(np.zeros((50, 41), np.uint8)).save(tmp_path / "rc.png")
    with pytest.raises(DatasetError, match=r"le\.png \(50, 40\) and recombined image rc\.png"):
        load(
            [
                dict(
                    base,
                    low_energy="le.png",
                    recombined="rc.png",
                    label="normal",
                    laterality="L",
                    view="CC",
                )
            ]
        )


def test_load_checks_mask_shapes() -> None:
    def loader() -> LoadedSample:
        from cem_node.training.datasets import Lesion

        image = np.zeros((10, 8), np.float32)
        return LoadedSample(
            image, image, (Lesion(np.zeros((8, 10), bool), "benign", "benign", "x"),)
        )

    sample = Sample("k", "p", "s", "L", "CC", "benign", None, "files a/b", loader)
    with pytest.raises(
        DatasetError, match=r"files a/b: mask of lesion x has shape \(8, 10\), the image \(10, 8\)"
    ):
        sample.load()


# --- splits -----------------------------------------------------------------------------------


def _fake_samples(patients: int) -> list[Sample]:
    rng = np.random.default_rng(1)
    samples = []
    for p in range(patients):
        label = "malignant" if p % 3 == 0 else ("benign" if p % 3 == 1 else "normal")
        for v in range(int(rng.integers(1, 4))):
            samples.append(
                Sample(
                    key=f"fake:{p}:{v}",
                    patient_id=f"P{p:03d}",
                    study_id=f"S{p}",
                    laterality="L",
                    view=f"V{v}",
                    label=label if v == 0 else "normal",  # type: ignore[arg-type]
                    pixel_spacing_mm=None,
                    source="fake",
                    loader=lambda: None,  # type: ignore[arg-type,return-value]
                )
            )
    return samples


def test_split_keeps_patients_together_and_is_reproducible() -> None:
    samples = _fake_samples(30)
    first = split(samples, (0.6, 0.2, 0.2), seed=4)
    again = split(samples, (0.6, 0.2, 0.2), seed=4)
    other = split(samples, (0.6, 0.2, 0.2), seed=5)
    parts = [first.train, first.val, first.test]
    assert sum(len(p) for p in parts) == len(samples)
    patient_sets = [{s.patient_id for s in p} for p in parts]
    assert all(not (a & b) for i, a in enumerate(patient_sets) for b in patient_sets[i + 1 :])
    assert [len(p) for p in patient_sets] == [18, 6, 6]
    assert first.as_dict() == again.as_dict()
    assert first.as_dict() != other.as_dict()
    # stratified: 10 of 30 patients have a malignant lesion -> about a third in each part
    malignant = [len({s.patient_id for s in p if s.has_malignant}) for p in parts]
    assert malignant == [6, 2, 2]
    record = first.as_dict()
    assert record["val"]["patients"] == sorted(patient_sets[1])
    assert set(record["train"]["samples"]) == {s.key for s in first.train}


def test_split_small_and_invalid() -> None:
    samples = _fake_samples(2)
    parts = split(samples, (0.5, 0.5), seed=0)
    assert len({s.patient_id for s in parts.train}) == 1 and parts.test == []
    assert len({s.patient_id for s in parts.val}) == 1
    with pytest.raises(DatasetError, match="sum to 1"):
        split(samples, (0.5, 0.4, 0.2))
    with pytest.raises(DatasetError, match="non-negative"):
        split(samples, (1.2, -0.2, 0.0))

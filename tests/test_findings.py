"""The findings document: mask encoding, validation rules, the shipped JSON schema."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from pydantic import ValidationError

from cem_node.contracts.findings import (
    SCHEMA_PATH,
    BreastSummary,
    Findings,
    Lesion,
    LesionMask,
    ModelIdentity,
    PatientSummary,
    ViewResult,
    findings_json_schema,
)
from cem_node.contracts.params import DecisionThresholds
from cem_node.pipeline.lesion_geometry import (
    largest_component,
    max_diameter,
    outline,
    remove_overlaps,
)


def _disk(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


@pytest.mark.parametrize("corner", [False, True])
def test_mask_round_trip(corner):
    mask = _disk((60, 80), (30, 40), 12)
    mask[::7, ::5] = False  # holes: many runs
    if corner:
        mask[0, 0] = True  # a run of foreground first
        mask[0, 1:5] = True
    encoded = LesionMask.from_array(mask)
    assert np.array_equal(encoded.to_array(mask.shape), mask)
    assert encoded.area_px == int(mask.sum())
    assert LesionMask.model_validate_json(encoded.model_dump_json()) == encoded


def test_mask_rejects_inconsistent_runs_and_empty_masks():
    with pytest.raises(ValidationError, match="runs cover 5 pixels, the box holds 6"):
        LesionMask(box=(0, 0, 3, 2), runs=[2, 3])
    with pytest.raises(ValueError, match="non-empty"):
        LesionMask.from_array(np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="does not fit"):
        LesionMask(box=(0, 0, 3, 2), runs=[6]).to_array((1, 3))


def test_outline_fills_back_to_the_mask_area_and_diameter():
    from skimage.draw import polygon

    mask = _disk((200, 200), (100, 90), 40)
    points = outline(mask)
    assert points[0] == points[-1]
    xy = np.array(points)
    rr, cc = polygon(xy[:, 1], xy[:, 0], mask.shape)
    filled = np.zeros_like(mask)
    filled[rr, cc] = True
    # the outline runs along the boundary pixels' outer half-edge: same area within 5%
    assert abs(int(filled.sum()) - int(mask.sum())) / mask.sum() < 0.05
    diameter = max_diameter(points, (0.1, 0.1))
    assert diameter == pytest.approx(8.0, abs=0.25)  # 81 px across at 0.1 mm
    assert max_diameter(points, None) is None
    # anisotropic spacing stretches the columns
    assert max_diameter(points, (0.1, 0.2)) == pytest.approx(16.0, abs=0.5)


def test_largest_component_and_overlaps():
    a = _disk((50, 50), (10, 10), 5) | _disk((50, 50), (40, 40), 8)
    kept = largest_component(a)
    assert kept[40, 40] and not kept[10, 10]
    first, second = _disk((50, 50), (25, 20), 8), _disk((50, 50), (25, 30), 8)
    one, two = remove_overlaps([first, second])
    assert not (one & two).any() and np.array_equal(one, first)
    assert np.array_equal(one | two, first | second)
    # a small mask nested in a larger, higher-scored one: a duplicate, dropped at 0.5
    inner = _disk((50, 50), (25, 22), 4)
    big, nested, other = remove_overlaps([first, inner, second], max_taken=0.5)
    assert np.array_equal(big, first) and not nested.any()
    assert other.any() and not (other & first).any()  # half outside: kept, minus the overlap
    _, kept_all, _ = remove_overlaps([first, inner, second])
    assert not kept_all.any()  # entirely claimed: empty either way
    partly = _disk((50, 50), (25, 31), 4)  # a small part inside first
    _, third = remove_overlaps([first, partly], max_taken=0.5)
    assert third.any() and not (third & first).any()


@pytest.mark.parametrize("seed", range(4))
def test_outline_and_largest_component_match_the_whole_image_computation(seed: int) -> None:
    # both work on the mask's bounding box (the speed of a full-size study): the result must
    # be exactly that of the whole image, lesions at the border and split lesions included
    from scipy import ndimage
    from skimage.measure import approximate_polygon, find_contours

    def whole_image_outline(mask):
        contour = max(find_contours(np.pad(mask.astype(np.float32), 1), 0.5), key=len) - 1.0
        points = [(float(c), float(r)) for r, c in approximate_polygon(contour, tolerance=0.5)]
        if points[0] != points[-1]:
            points.append(points[0])
        while len(points) < 4:
            points.insert(-1, points[-2])
        return points

    def whole_image_largest(mask):
        labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        if count <= 1:
            return mask.astype(bool)
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
        return labels == int(np.argmax(sizes)) + 1

    rng = np.random.default_rng(seed)
    for case in range(25):
        mask = np.zeros((120, 90), dtype=bool)
        for _ in range(int(rng.integers(1, 4))):
            centre = (int(rng.integers(0, 120)), int(rng.integers(0, 90)))
            mask |= _disk(mask.shape, centre, int(rng.integers(1, 20)))
        mask &= rng.random(mask.shape) > 0.04 * (case % 3)  # ragged edges, holes
        if case % 5 == 0:
            mask[0, :3] = mask[-1, -2:] = True  # touching the image border
        largest = largest_component(mask)
        assert np.array_equal(largest, whole_image_largest(mask))
        assert outline(largest) == whole_image_outline(largest)
        assert outline(mask) == whole_image_outline(mask)
    assert not largest_component(np.zeros((5, 5), dtype=bool)).any()
    with pytest.raises(ValueError, match="empty"):
        outline(np.zeros((5, 5), dtype=bool))


def _identity(**kw):
    values = {
        "name": "tiny",
        "version": "0.1",
        "sha256": "a" * 64,
        "intended_use": "tests",
        "for_clinical_use": False,
        "disclaimer": "synthetic phantom data, not for clinical use",
    }
    values.update(kw)
    return ModelIdentity(**values)


def _lesion(**kw):
    mask = _disk((64, 64), (30, 30), 6)
    values = {
        "lesion_id": "R-CC-1",
        "tracking_uid": "1.2.3.4",
        "laterality": "R",
        "view": "CC",
        "recombined_sop_instance_uid": "1.2.3.5",
        "low_energy_sop_instance_uid": "1.2.3.6",
        "box": (24.0, 24.0, 37.0, 37.0),
        "outline": outline(mask),
        "mask": LesionMask.from_array(mask),
        "area_px": int(mask.sum()),
        "area_mm2": float(mask.sum()) * 0.01,
        "detector_class": "malignant",
        "detector_score": 0.9,
        "dl_probability": 0.8,
        "radiomics_probability": 0.6,
        "fused_probability": 0.7,
        "fused_source": "mean",
        "dl_label": "malignant",
        "radiomics_label": "malignant",
        "fused_label": "malignant",
        "agreement": True,
    }
    values.update(kw)
    return Lesion(**values)


def _findings(lesions, view_ids):
    return Findings(
        study_instance_uid="1.2.3",
        model=_identity(),
        device="cpu",
        created=dt.datetime(2026, 11, 21, tzinfo=dt.UTC),
        thresholds=DecisionThresholds(),
        views=[
            ViewResult(
                laterality="R",
                view="CC",
                recombined_sop_instance_uid="1.2.3.5",
                low_energy_sop_instance_uid="1.2.3.6",
                rows=64,
                columns=64,
                lesion_ids=view_ids,
            )
        ],
        lesions=lesions,
        breasts=[BreastSummary(laterality="R", lesion_count=1, score=0.7, label="malignant")],
        patient=PatientSummary(lesion_count=1, score=0.7, label="malignant"),
    )


def test_findings_json_round_trip():
    findings = _findings([_lesion()], ["R-CC-1"])
    again = Findings.from_json(findings.to_json())
    assert again == findings
    assert again.lesions[0].mask.to_array((64, 64)).sum() == findings.lesions[0].area_px


def test_findings_rules():
    with pytest.raises(ValidationError, match="exactly one view"):
        _findings([_lesion()], [])
    with pytest.raises(ValidationError, match="dl_only"):
        _lesion(radiomics_probability=None, radiomics_label=None, agreement=None)
    with pytest.raises(ValidationError, match="must say why"):
        _lesion(
            radiomics_probability=None,
            radiomics_label=None,
            agreement=None,
            fused_source="dl_only",
        )
    fallback = _lesion(
        radiomics_probability=None,
        radiomics_label=None,
        agreement=None,
        fused_source="dl_only",
        radiomics_error="mask too small",
    )
    assert fallback.fused_source == "dl_only"
    with pytest.raises(ValidationError):
        _lesion(fused_probability=1.5)


def test_shipped_schema_is_current_and_validates_a_document():
    import jsonschema

    shipped = json.loads(SCHEMA_PATH.read_text())
    assert shipped == json.loads(json.dumps(findings_json_schema(), sort_keys=True)), (
        "findings.schema.json is stale: run python -c 'from cem_node.contracts.findings import "
        "write_json_schema; write_json_schema()'"
    )
    document = json.loads(_findings([_lesion()], ["R-CC-1"]).to_json())
    jsonschema.validate(document, shipped)
    document["lesions"][0]["fused_probability"] = 2.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, shipped)

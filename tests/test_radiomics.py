"""Handcrafted radiomics (cem_node.pipeline.radiomics) against direct pyradiomics calls.

The reference extractions are set up here, independently of the module: Original and
Wavelet on a one-slice 3-D image with force2D (dimension 0), LoG on the 2-D image with
force2D off (a 2-D image with force2D dimension 0 would drop the row direction).
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from radiomics.featureextractor import RadiomicsFeatureExtractor

from cem_node.contracts.params import RadiomicsSettings
from cem_node.pipeline.radiomics import (
    IMAGE_SUFFIXES,
    ImageFeatures,
    LesionRadiomics,
    RadiomicsError,
    RadiomicsJob,
    crop_box,
    crop_margin,
    expected_image_types,
    extract_image_features,
    extract_lesion_features,
    extract_many,
    make_job,
    pyradiomics_params,
)

# pykwalify (pyradiomics' parameter validation) loads its extensions with load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

SPACING = (0.1, 0.1)
CLASSES = ("firstorder", "shape2D", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
IMAGE_TYPES = (
    "original",
    "log-sigma-0-1-mm-3D",
    "log-sigma-0-4-mm-3D",
    "log-sigma-0-7-mm-3D",
    "log-sigma-1-0-mm-3D",
    "wavelet-LL",
    "wavelet-LH",
    "wavelet-HL",
    "wavelet-HH",
)


def _reference_params(*, force2d: bool, image_types: dict[str, Any], bin_width: float = 3.0):
    return {
        "setting": {
            "binWidth": bin_width,
            "force2D": force2d,
            "force2Ddimension": 0,
            "normalize": False,
            "label": 1,
        },
        "imageType": image_types,
        "featureClass": {name: None for name in CLASSES},
    }


def _sitk(array: np.ndarray, *, one_slice: bool) -> sitk.Image:
    image = sitk.GetImageFromArray(array[np.newaxis] if one_slice else array)
    image.SetSpacing((SPACING[1], SPACING[0], 1.0) if one_slice else (SPACING[1], SPACING[0]))
    return image


def direct_pyradiomics(
    image: np.ndarray, mask: np.ndarray, *, bin_width: float = 3.0, log: bool = True
) -> dict[str, float]:
    """pyradiomics' execute(): Original + Wavelet on one slice, LoG on the 2-D image."""
    image = image.astype(np.float64)
    mask = mask.astype(np.uint8)
    slice_types = {"Original": {}, "Wavelet": {}}
    one_slice = RadiomicsFeatureExtractor(
        _reference_params(force2d=True, image_types=slice_types, bin_width=bin_width)
    ).execute(_sitk(image, one_slice=True), _sitk(mask, one_slice=True))
    result = {k: float(v) for k, v in one_slice.items() if not k.startswith("diagnostics_")}
    if log:
        log_types = {"LoG": {"sigma": [0.1, 0.4, 0.7, 1.0]}}
        planar = RadiomicsFeatureExtractor(
            _reference_params(force2d=False, image_types=log_types, bin_width=bin_width)
        ).execute(_sitk(image, one_slice=False), _sitk(mask, one_slice=False))
        result.update({k: float(v) for k, v in planar.items() if k.startswith("log-sigma")})
    return result


def textured_lesion(
    size: int = 256, centre: tuple[int, int] = (128, 120), radius: float = 22.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low energy, recombined, mask): a textured enhancing blob, < 128 grey levels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    r = np.hypot(yy - centre[0], xx - centre[1])
    angle = np.arctan2(yy - centre[0], xx - centre[1])
    texture = 25 * np.sin(xx / 4.0) * np.cos(yy / 6.0)
    low_energy = 800 + 60 * np.exp(-((r / 30) ** 2)) + texture + rng.normal(0, 8, r.shape)
    recombined = 300 + 150 * np.exp(-((r / 20) ** 2)) + 0.6 * texture + rng.normal(0, 6, r.shape)
    mask = r < radius * (1 + 0.15 * np.sin(3 * angle))
    return low_energy, recombined, mask


@pytest.fixture(scope="module")
def settings() -> RadiomicsSettings:
    return RadiomicsSettings()


@pytest.fixture(scope="module")
def lesion() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return textured_lesion()


@pytest.fixture(scope="module")
def lesion_result(lesion, settings) -> LesionRadiomics:
    low_energy, recombined, mask = lesion
    return extract_lesion_features(low_energy, recombined, mask, SPACING, settings)


def _split(name: str) -> tuple[str, str, str]:
    image_type, feature_class, rest = name.split("_", 2)
    return image_type, feature_class, rest


def _assert_close(actual: dict[str, float], expected: dict[str, float], rel: float) -> None:
    assert actual.keys() == expected.keys()
    bad = {
        k: (actual[k], expected[k])
        for k in expected
        if not math.isclose(actual[k], expected[k], rel_tol=rel, abs_tol=1e-12)
    }
    assert not bad, f"{len(bad)} features differ, e.g. {list(bad.items())[:3]}"


# -- parameters -------------------------------------------------------------------------


def test_params_are_json_and_load_into_pyradiomics(settings):
    params = json.loads(json.dumps(pyradiomics_params(settings)))
    extractor = RadiomicsFeatureExtractor(params)
    assert extractor.settings["binWidth"] == 3.0
    assert extractor.settings["force2D"] is True
    assert extractor.settings["force2Ddimension"] == 0
    assert extractor.settings["normalize"] is False
    assert extractor.settings["resampledPixelSpacing"] is None
    assert extractor.settings["label"] == 1
    assert set(extractor.enabledImagetypes) == {"Original", "LoG", "Wavelet"}
    assert extractor.enabledImagetypes["LoG"]["sigma"] == [0.1, 0.4, 0.7, 1.0]
    assert tuple(extractor.enabledFeatures) == CLASSES

    bare = pyradiomics_params(RadiomicsSettings(log_sigmas_mm=(), wavelet=False, bin_width=5))
    assert set(bare["imageType"]) == {"Original"}
    assert bare["setting"]["binWidth"] == 5.0
    assert expected_image_types(settings) == IMAGE_TYPES


# -- feature names ----------------------------------------------------------------------


def test_feature_names_cover_every_image_type_and_class(lesion_result):
    assert lesion_result.error is None
    assert lesion_result.notes == []  # no widening on this lesion: values are comparable
    features = lesion_result.features
    assert features is not None
    assert not any("diagnostics" in name for name in features)
    assert all(isinstance(v, float) and math.isfinite(v) for v in features.values())
    for suffix in IMAGE_SUFFIXES:
        names = [n.removesuffix(suffix) for n in features if n.endswith(suffix)]
        classes_by_type: dict[str, set[str]] = {}
        for name in names:
            image_type, feature_class, _ = _split(name)
            classes_by_type.setdefault(image_type, set()).add(feature_class)
        assert set(classes_by_type) == set(IMAGE_TYPES)
        assert classes_by_type["original"] == set(CLASSES)
        for image_type in IMAGE_TYPES[1:]:  # shape only once, on the original
            assert classes_by_type[image_type] == set(CLASSES) - {"shape2D"}
        assert "original_firstorder_Mean" in names
        assert "log-sigma-1-0-mm-3D_glcm_Contrast" in names
        assert "wavelet-LH_glszm_ZoneEntropy" in names
        assert len(names) == 9 + 9 * 93  # shape2D + (18+24+16+16+14+5) per image type
    assert len(features) == 2 * 846
    low = {n.removesuffix("_low_energy") for n in features if n.endswith("_low_energy")}
    rec = {n.removesuffix("_recombined") for n in features if n.endswith("_recombined")}
    assert low == rec


# -- values against pyradiomics ---------------------------------------------------------


@pytest.mark.parametrize("which", [0, 1], ids=["low_energy", "recombined"])
def test_values_equal_pyradiomics_on_the_uncropped_image(lesion, lesion_result, which):
    image, mask = lesion[which], lesion[2]
    suffix = IMAGE_SUFFIXES[which]
    ours = {
        n.removesuffix(suffix): v for n, v in lesion_result.features.items() if n.endswith(suffix)
    }
    reference = direct_pyradiomics(image, mask)  # the whole 256 x 256 image
    original = {k for k in reference if k.startswith("original_")}
    _assert_close({k: ours[k] for k in original}, {k: reference[k] for k in original}, 1e-6)
    # The crop margin (8 LoG sigmas) keeps the filtered images as on the whole image too.
    _assert_close(ours, reference, 1e-4)


@pytest.mark.parametrize("which", [0, 1], ids=["low_energy", "recombined"])
def test_every_value_equals_pyradiomics_on_the_same_cropped_input(
    lesion, lesion_result, settings, which
):
    job = make_job("a", lesion[0], lesion[1], lesion[2], SPACING, settings)
    cropped = (job.low_energy, job.recombined)[which]
    assert cropped.shape == job.mask.shape
    assert cropped.shape[0] < lesion[2].shape[0] and cropped.shape[1] < lesion[2].shape[1]
    reference = direct_pyradiomics(cropped, job.mask)
    suffix = IMAGE_SUFFIXES[which]
    ours = {
        n.removesuffix(suffix): v for n, v in lesion_result.features.items() if n.endswith(suffix)
    }
    _assert_close(ours, reference, 1e-9)
    # Extracting the cropped input again crops nothing more.
    again = extract_image_features(cropped, job.mask, SPACING, settings, suffix)
    assert again.features == {n: v for n, v in lesion_result.features.items() if n.endswith(suffix)}


def test_crop_box_and_margin(settings):
    mask = np.zeros((50, 60), bool)
    mask[10:20, 30:33] = True
    assert crop_box(mask, 4) == (slice(6, 24), slice(26, 37))
    assert crop_box(mask, 100) == (slice(0, 50), slice(0, 60))
    assert crop_box(np.zeros((5, 5), bool), 3) == (slice(0, 0), slice(0, 0))
    # 8 sigmas of the largest LoG (1 mm) in pixels; at least crop_margin_px.
    assert crop_margin(settings, (0.1, 0.1)) == 80
    assert crop_margin(settings, (0.05, 0.1)) == 160
    assert crop_margin(settings, None) == 16
    assert crop_margin(RadiomicsSettings(log_sigmas_mm=(), crop_margin_px=2), None) == 6


# -- cost -------------------------------------------------------------------------------


def _best_time(image, mask, settings) -> tuple[float, ImageFeatures]:
    best, result = math.inf, None
    for _ in range(2):
        start = time.perf_counter()
        result = extract_image_features(image, mask, SPACING, settings, "_recombined")
        best = min(best, time.perf_counter() - start)
    return best, result


def test_cost_does_not_depend_on_the_image_size(settings):
    _, small, small_mask = textured_lesion(size=200, centre=(100, 100), radius=10, seed=3)
    big = np.full((2000, 2000), 300.0)
    big_mask = np.zeros(big.shape, bool)
    big[900:1100, 900:1100] = small
    big_mask[900:1100, 900:1100] = small_mask
    t_small, f_small = _best_time(small, small_mask, settings)
    t_big, f_big = _best_time(big, big_mask, settings)
    assert f_big.features == f_small.features  # same neighbourhood after the crop
    assert t_big < 2.0 * t_small + 0.3, (t_small, t_big)


# -- grey-level cap ---------------------------------------------------------------------


def _noisy_14_bit(seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 2**14, size=(96, 96)).astype(np.uint16)
    mask = np.zeros(image.shape, bool)
    mask[38:58, 40:60] = True
    return image, mask


def test_grey_level_cap_widens_the_bin_width_and_says_so(caplog):
    image, mask = _noisy_14_bit()
    settings = RadiomicsSettings(log_sigmas_mm=(), wavelet=False)  # the original image only
    values = image[mask].astype(np.float64)
    width = (values.max() - values.min()) / settings.max_grey_levels
    assert (values.max() - values.min()) / settings.bin_width > 5000
    with caplog.at_level(logging.INFO, logger="cem_node.pipeline.radiomics"):
        result = extract_image_features(image, mask, SPACING, settings, "_recombined")
    assert len(result.notes) == 1
    note = result.notes[0]
    assert note.startswith("original:")
    assert "max_grey_levels=256" in note
    assert f"widened to {width:.6g}" in note
    assert any("widened" in r.getMessage() for r in caplog.records)
    # The features are pyradiomics' with the widened bin width.
    reference = RadiomicsFeatureExtractor(
        _reference_params(force2d=True, image_types={"Original": {}}, bin_width=width)
    ).execute(_sitk(image.astype(np.float64), one_slice=True), _sitk(mask * 1, one_slice=True))
    expected = {
        f"{k}_recombined": float(v) for k, v in reference.items() if not k.startswith("diag")
    }
    _assert_close(result.features, expected, 1e-6)
    glcm_levels = [v for k, v in result.features.items() if "JointAverage" in k]
    assert glcm_levels and max(glcm_levels) <= settings.max_grey_levels + 2


def test_grey_level_cap_applies_to_every_filtered_image():
    image, mask = _noisy_14_bit(seed=6)
    settings = RadiomicsSettings(max_grey_levels=16)
    result = extract_image_features(image, mask, SPACING, settings, "_low_energy")
    widened = {note.split(":", 1)[0] for note in result.notes}
    assert widened == set(IMAGE_TYPES)
    assert len(result.features) == 846


def test_no_cap_below_the_limit(lesion_result):
    assert not any("widened" in note for note in lesion_result.notes)


# -- failures ---------------------------------------------------------------------------


def _failure(low_energy, recombined, mask, settings) -> str:
    result = extract_lesion_features(low_energy, recombined, mask, SPACING, settings)
    assert result.features is None
    assert result.seconds >= 0
    assert result.error
    return result.error


def test_failures_are_recorded_not_raised(lesion, settings):
    low_energy, recombined, mask = lesion

    tiny = np.zeros(mask.shape, bool)
    tiny[100, 100:103] = True
    error = _failure(low_energy, recombined, tiny, settings)
    assert error.startswith("low_energy:")
    assert "3 pixels" in error and "min_mask_pixels=16" in error

    flat = np.full(mask.shape, 1234.0)
    error = _failure(flat, recombined, mask, settings)
    assert error.startswith("low_energy: flat region")
    assert "1234" in error

    error = _failure(low_energy, recombined[:-1], mask, settings)
    assert error.startswith("recombined:")
    assert "shape" in error and "(255, 256)" in error

    error = _failure(low_energy, recombined, mask[:, :-2], settings)
    assert error.startswith("low_energy:") and "shape" in error

    line = np.zeros(mask.shape, bool)
    line[60, 20:80] = True  # a one-row mask: pyradiomics refuses it
    error = _failure(low_energy, recombined, line, settings)
    assert error.startswith("low_energy: pyradiomics failed: ValueError")
    assert "dimensions" in error

    holes = low_energy.copy()
    holes[mask] = np.nan
    error = _failure(holes, recombined, mask, settings)
    assert "NaN" in error

    error = _failure(low_energy, recombined, np.zeros(mask.shape, bool), settings)
    assert "0 pixels" in error

    error = _failure(low_energy, recombined, mask[np.newaxis], settings)
    assert "2-D" in error

    with pytest.raises(RadiomicsError, match="flat region"):
        extract_image_features(flat, mask, SPACING, settings, "_low_energy")


def test_recombined_failure_names_the_recombined_image(lesion):
    low_energy, _, mask = lesion
    settings = RadiomicsSettings(log_sigmas_mm=(), wavelet=False)  # cheap
    error = _failure(low_energy, np.zeros(mask.shape), mask, settings)
    assert error.startswith("recombined: flat region")


def test_unknown_spacing_is_noted(lesion):
    low_energy, recombined, mask = lesion
    settings = RadiomicsSettings(log_sigmas_mm=(), wavelet=False)
    result = extract_lesion_features(low_energy, recombined, mask, None, settings)
    assert result.error is None
    assert "low_energy: pixel spacing unknown: 1 mm assumed" in result.notes


# -- logging ----------------------------------------------------------------------------


def test_pyradiomics_logger_quiet_for_the_duration_only(lesion, caplog):
    low_energy, recombined, mask = lesion
    settings = RadiomicsSettings(log_sigmas_mm=(0.4,), wavelet=False)
    radiomics_logger = logging.getLogger("radiomics")
    caplog.set_level(logging.DEBUG, logger="radiomics")
    result = extract_lesion_features(low_energy, recombined, mask, SPACING, settings)
    assert result.error is None
    chatty = [r for r in caplog.records if r.name.startswith("radiomics")]
    assert chatty == []  # no INFO/DEBUG, no "GLCM is symmetrical" nag
    assert radiomics_logger.level == logging.DEBUG
    assert logging.getLogger("radiomics.glcm").filters == []


# -- many lesions -----------------------------------------------------------------------


def test_extract_many_in_processes_equals_inline(settings):
    jobs = []
    for i, (centre, radius) in enumerate([((60, 70), 12.0), ((150, 160), 16.0)]):
        low_energy, recombined, mask = textured_lesion(
            size=220, centre=centre, radius=radius, seed=10 + i
        )
        jobs.append(make_job(f"lesion-{i}", low_energy, recombined, mask, SPACING, settings))
        assert jobs[-1].mask.shape[0] < 220  # cropped before it is sent to a worker
    flat = np.full((220, 220), 7.0)
    jobs.append(make_job("flat", flat, flat, textured_lesion(220)[2], SPACING, settings))

    inline = extract_many(jobs, settings, workers=1)
    parallel = extract_many(jobs, settings, workers=2)
    assert len(inline) == len(parallel) == 3
    for a, b in zip(inline, parallel, strict=True):
        assert a.features == b.features
        assert a.error == b.error
        assert a.notes == b.notes
    assert inline[0].features != inline[1].features  # the order is the jobs' order
    assert (
        inline[0].features
        == extract_lesion_features(
            jobs[0].low_energy, jobs[0].recombined, jobs[0].mask, SPACING, settings
        ).features
    )
    assert inline[2].features is None and "flat region" in inline[2].error
    # A job a worker cannot even receive is recorded too, and the others still run.
    unpicklable = RadiomicsJob("odd", np.array([[lambda: 0]]), flat, flat != 0, None)
    results = extract_many([jobs[0], unpicklable], settings, workers=2)
    assert results[0].features == inline[0].features
    assert results[1].features is None
    assert results[1].error.startswith("radiomics worker failed:")
    assert extract_many([], settings, workers=2) == []
    with pytest.raises(ValueError, match="workers"):
        extract_many(jobs, settings, workers=0)

"""Selective radiomics (inference): only the features the classifier reads.

:func:`cem_node.pipeline.radiomics.plan_extraction` and the ``plan`` argument of the
extraction functions: the planned features equal the full extraction's, and nothing
else is computed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from radiomics.featureextractor import RadiomicsFeatureExtractor

from cem_node.contracts.params import RadiomicsSettings
from cem_node.pipeline.radiomics import (
    FeaturePlanError,
    extract_lesion_features,
    extract_many,
    make_job,
    plan_extraction,
)
from tests.test_radiomics import SPACING, textured_lesion

# pykwalify (pyradiomics' parameter validation) loads its extensions with load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

CDD_CESM_512 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cdd-cesm-512"

# spans Original (shape2D + texture), two LoG sigmas, two wavelet bands, both images
NAMES = (
    "original_shape2D_Elongation_low_energy",
    "original_firstorder_Mean_low_energy",
    "log-sigma-0-4-mm-3D_glcm_MCC_low_energy",
    "wavelet-LL_ngtdm_Complexity_low_energy",
    "original_glcm_Correlation_recombined",
    "log-sigma-1-0-mm-3D_glcm_Idmn_recombined",
    "log-sigma-1-0-mm-3D_gldm_DependenceVariance_recombined",
    "wavelet-LH_glszm_ZoneEntropy_recombined",
    "wavelet-HH_glrlm_RunEntropy_recombined",
)


def small_lesion() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low energy, recombined, mask): a small textured enhancing blob."""
    return textured_lesion(size=128, centre=(64, 61), radius=12.0, seed=1)


@pytest.fixture(scope="module")
def settings() -> RadiomicsSettings:
    return RadiomicsSettings()


# --- the plan --------------------------------------------------------------------------


def test_plan_original_only(settings):
    plan = plan_extraction(
        ["original_firstorder_Mean_recombined", "original_shape2D_Perimeter_recombined"],
        settings,
    )
    assert list(plan.images) == ["_recombined"]
    assert plan.images["_recombined"].features == {
        "original": {"firstorder": ("Mean",), "shape2D": ("Perimeter",)}
    }


def test_plan_one_log_sigma(settings):
    plan = plan_extraction(
        ["log-sigma-0-7-mm-3D_glcm_Idm_low_energy", "log-sigma-0-7-mm-3D_glcm_Idm_low_energy"],
        settings,
    )
    assert plan.images["_low_energy"].features == {"log-sigma-0-7-mm-3D": {"glcm": ("Idm",)}}
    assert plan.images["_low_energy"].names() == ("log-sigma-0-7-mm-3D_glcm_Idm",)


def test_plan_one_wavelet_band(settings):
    plan = plan_extraction(["wavelet-HL_glrlm_RunEntropy_low_energy"], settings)
    assert plan.images["_low_energy"].features == {"wavelet-HL": {"glrlm": ("RunEntropy",)}}


def test_plan_only_recombined_skips_low_energy(settings):
    plan = plan_extraction(
        ["wavelet-LH_glcm_Correlation_recombined", "original_glcm_Correlation_recombined"],
        settings,
    )
    assert "_low_energy" not in plan.images
    # image types in the order of the settings, not of the names
    assert list(plan.images["_recombined"].features) == ["original", "wavelet-LH"]


def test_plan_empty(settings):
    assert plan_extraction([], settings).images == {}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("original_firstorder_Mean", "image suffix"),
        ("original_firstorder_Mean_dual_energy", "image suffix"),
        ("firstorder_Mean_recombined", "expected '<imagetype>_<class>_<feature>"),
        ("log-sigma-2-0-mm-3D_glcm_Idm_recombined", "image type 'log-sigma-2-0-mm-3D'"),
        ("wavelet-H_glcm_Idm_recombined", "image type 'wavelet-H'"),
        ("original_shape_Elongation_recombined", "feature class 'shape'"),
        ("wavelet-LL_shape2D_Elongation_recombined", "only for the 'original'"),
        ("original_glcm_NoSuchFeature_recombined", "glcm has no 'NoSuchFeature'"),
    ],
)
def test_plan_unknown_name_is_a_clear_error(settings, name, message):
    with pytest.raises(FeaturePlanError) as info:
        plan_extraction(["original_glcm_Idm_recombined", name], settings)
    assert message in str(info.value) and repr(name) in str(info.value)


def test_plan_respects_the_settings():
    no_wavelet = RadiomicsSettings(wavelet=False, log_sigmas_mm=(0.5,))
    plan_extraction(["log-sigma-0-5-mm-3D_glcm_Idm_recombined"], no_wavelet)
    with pytest.raises(FeaturePlanError, match="image type 'wavelet-LL'"):
        plan_extraction(["wavelet-LL_glcm_Idm_recombined"], no_wavelet)
    with pytest.raises(FeaturePlanError, match="image type 'log-sigma-0-4-mm-3D'"):
        plan_extraction(["log-sigma-0-4-mm-3D_glcm_Idm_recombined"], no_wavelet)


# --- the extraction --------------------------------------------------------------------


def _assert_equal_values(selective: dict[str, float], full: dict[str, float]) -> None:
    for name, value in selective.items():
        assert math.isclose(value, full[name], rel_tol=1e-9, abs_tol=1e-9), (
            name,
            value,
            full[name],
        )


@pytest.fixture(scope="module")
def phantom_full(settings):
    low_energy, recombined, mask = small_lesion()
    full = extract_lesion_features(low_energy, recombined, mask, SPACING, settings)
    assert full.features is not None, full.error
    return full


def test_selective_equals_full_on_a_phantom(settings, phantom_full, monkeypatch):
    low_energy, recombined, mask = small_lesion()
    plan = plan_extraction(NAMES, settings)
    computed: list[tuple[str, tuple[str, ...]]] = []
    original = RadiomicsFeatureExtractor.computeFeatures

    def spy(self, image, mask_, name, **kwargs):
        computed.append((name, tuple(self.enabledFeatures)))
        return original(self, image, mask_, name, **kwargs)

    monkeypatch.setattr(RadiomicsFeatureExtractor, "computeFeatures", spy)
    result = extract_lesion_features(low_energy, recombined, mask, SPACING, settings, plan)
    assert result.error is None and result.features is not None
    # exactly the needed names, nothing else
    assert sorted(result.features) == sorted(NAMES)
    _assert_equal_values(result.features, phantom_full.features)
    # only the needed image types and classes went through pyradiomics (shape separately)
    assert computed == [
        ("original", ("firstorder",)),
        ("log-sigma-0-4-mm-3D", ("glcm",)),
        ("wavelet-LL", ("ngtdm",)),
        ("original", ("glcm",)),
        ("log-sigma-1-0-mm-3D", ("glcm", "gldm")),
        ("wavelet-LH", ("glszm",)),
        ("wavelet-HH", ("glrlm",)),
    ]
    assert len(phantom_full.features) == 1692


def test_selective_in_worker_processes(settings, phantom_full):
    low_energy, recombined, mask = small_lesion()
    plan = plan_extraction(NAMES[4:], settings)
    jobs = [make_job(f"j{i}", low_energy, recombined, mask, SPACING, settings) for i in range(2)]
    results = extract_many(jobs, settings, workers=2, plan=plan)
    for result in results:
        assert result.features is not None, result.error
        assert sorted(result.features) == sorted(NAMES[4:])
        _assert_equal_values(result.features, phantom_full.features)


def test_unneeded_image_is_not_extracted(settings):
    _, recombined, mask = small_lesion()
    flat = np.full_like(recombined, 500.0)
    needed = ["original_glcm_Correlation_recombined"]
    # the full extraction fails on the flat low-energy image ...
    full = extract_lesion_features(flat, recombined, mask, SPACING, settings)
    assert full.features is None and full.error.startswith("low_energy: flat region")
    # ... the selective one never looks at it
    plan = plan_extraction(needed, settings)
    result = extract_lesion_features(flat, recombined, mask, SPACING, settings, plan)
    assert result.error is None and list(result.features) == needed


def test_selective_failure_is_recorded(settings):
    low_energy, _, mask = small_lesion()
    flat = np.full_like(low_energy, 500.0)
    plan = plan_extraction(["original_glcm_Correlation_recombined"], settings)
    result = extract_lesion_features(low_energy, flat, mask, SPACING, settings, plan)
    assert result.features is None
    assert result.error is not None and result.error.startswith("recombined: flat region")


def test_selective_equals_full_on_cdd_cesm(settings):
    if not (CDD_CESM_512 / "pairs.csv").is_file():
        pytest.skip(f"the CDD-CESM 512-px subset is not at {CDD_CESM_512}")
    from cem_node.training.datasets import load_dataset

    data = load_dataset(f"cdd-cesm:{CDD_CESM_512}")
    # the smallest lesion of the first samples: quick
    candidates = []
    for sample in data.samples[:6]:
        loaded = sample.load()
        for lesion in loaded.lesions:
            candidates.append((int(lesion.mask.sum()), sample, loaded, lesion))
    _, sample, loaded, lesion = min(candidates, key=lambda c: c[0])
    args = (loaded.low_energy, loaded.recombined, lesion.mask, sample.pixel_spacing_mm)
    full = extract_lesion_features(*args, settings)
    assert full.features is not None, full.error
    plan = plan_extraction(NAMES, settings)
    result = extract_lesion_features(*args, settings, plan)
    assert result.features is not None, result.error
    assert sorted(result.features) == sorted(NAMES)
    _assert_equal_values(result.features, full.features)


def test_the_extractor_is_validated_once_and_every_caller_gets_its_own(settings, monkeypatch):
    # pyradiomics validates its parameters against a YAML schema on every construction,
    # which cost more than a lesion's planned features: one validation per parameter set
    from cem_node.pipeline import radiomics as radiomics_module
    from cem_node.pipeline.radiomics_plan import planned_pyradiomics_params

    radiomics_module._validated_extractor.cache_clear()
    built: list[dict] = []
    original = RadiomicsFeatureExtractor.__init__

    def counting(self, *args, **kwargs):
        built.append(args[0] if args else kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(RadiomicsFeatureExtractor, "__init__", counting)
    params = planned_pyradiomics_params(settings, None)
    first = radiomics_module.new_extractor(params)
    first.enabledFeatures = {"glcm": ["Idm"]}  # what an extraction does to its extractor
    second = radiomics_module.new_extractor(params)
    assert len(built) == 1
    assert second is not first and second.enabledFeatures != first.enabledFeatures
    assert list(second.enabledImagetypes) == list(params["imageType"])  # the order kept
    radiomics_module.new_extractor({**params, "setting": {**params["setting"], "binWidth": 7.0}})
    assert len(built) == 2
    # the lesion's features are those of a fresh extractor each time
    low_energy, recombined, mask = small_lesion()
    plan = plan_extraction(NAMES, settings)
    again = [
        extract_lesion_features(low_energy, recombined, mask, SPACING, settings, plan)
        for _ in range(2)
    ]
    assert again[0].features == again[1].features

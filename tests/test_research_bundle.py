"""The shipped research bundle (models/cem-cdd-research): trained on real CEM, honest.

It must load and verify like any bundle, stay under 25 MB, carry the data's
attribution, state what is validated (detection and segmentation on real
CDD-CESM patients, with figures) and what is not (benign-vs-malignant
classification), and be what ``serve`` and ``analyse`` use by default.
"""

from __future__ import annotations

import re

from cem_node.config import Settings, shipped_models_dir
from cem_node.models import BundleRegistry
from cem_node.models.manifest import NOT_FOR_CLINICAL_USE

RESEARCH_BUNDLE = "cem-cdd-research"
MAX_BYTES = 25 * 1024 * 1024


def test_the_research_bundle_loads_and_is_small() -> None:
    bundle = BundleRegistry(shipped_models_dir()).load(RESEARCH_BUNDLE)
    size = sum(p.stat().st_size for p in bundle.path.rglob("*") if p.is_file())
    assert size <= MAX_BYTES, f"{size / 2**20:.1f} MB"
    manifest = bundle.manifest
    assert manifest.detector.backbone == "mobilenet_v3_lite"
    assert "cdd-cesm" in str(manifest.training.data).lower()
    # the attribution the data's licence asks for
    assert "CC BY 4.0" in manifest.bundle.description
    assert not manifest.intended_use.for_clinical_use
    assert NOT_FOR_CLINICAL_USE in (manifest.intended_use.disclaimer or "")


def test_the_research_bundle_says_what_is_validated() -> None:
    bundle = BundleRegistry(shipped_models_dir()).load(RESEARCH_BUNDLE)
    validation = bundle.manifest.validation
    assert validation is not None
    assert validation.detection is not None and "real CEM" in validation.detection
    # figures with their intervals, as computed by the evaluation
    assert re.search(r"per-image sensitivity \d+% \[\d+, \d+\]", validation.detection)
    assert re.search(r"mean Dice per image 0\.\d\d \[0\.\d\d, 0\.\d\d\]", validation.detection)
    assert not validation.classification_validated
    assert "NOT validated" in validation.classification
    identity = bundle.identity()
    assert identity.score_caveat == "score not validated"
    assert identity.validation is not None and "NOT validated" in identity.validation
    # the figures of [validation] are those of [metrics] (one evaluation)
    sensitivity = bundle.manifest.metrics["table2_iou_0_1_per_image_sensitivity"]
    assert f"per-image sensitivity {100 * float(sensitivity):.0f}%" in validation.detection


def test_serve_and_analyse_use_the_research_bundle_by_default() -> None:
    settings = Settings.defaults()
    assert settings.analysis.model == RESEARCH_BUNDLE
    assert (settings.analysis.bundles_dir / RESEARCH_BUNDLE).is_dir()

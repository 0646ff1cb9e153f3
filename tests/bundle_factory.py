"""A tiny, randomly initialised model bundle for tests of loading, shapes and plumbing.

Until a trained bundle ships (issue #6) the analysis is exercised with this
one: a narrow MobileNetV3 Mask R-CNN with random weights (its detections are
meaningless, but they have the right shapes and flow through every stage)
and an XGBoost model fitted on random numbers over real feature names.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import torch
import xgboost

from cem_node.contracts.params import DetectorConfig, PreprocessParams, RadiomicsSettings
from cem_node.models import Bundle, write_bundle
from cem_node.pipeline.classifier import RadiomicsClassifier
from cem_node.pipeline.detector import build_detector, save_detector_weights
from cem_node.pipeline.radiomics import pyradiomics_params

#: A few features every extraction yields (names as the radiomics module makes them)
FEATURES = (
    "original_firstorder_Mean_recombined",
    "original_firstorder_Mean_low_energy",
    "original_shape2D_Elongation_recombined",
    "original_glcm_Contrast_recombined",
)

TINY_PREPROCESS = PreprocessParams(short_side=256, max_long_side=320)
TINY_DETECTOR = DetectorConfig(
    backbone="mobilenet_v3_lite",
    fpn_channels=32,
    box_head_width=64,
    mask_head_channels=32,
    weights_dtype="float16",
)
#: cheap radiomics: tests run on two shared cores
TINY_RADIOMICS = RadiomicsSettings(
    log_sigmas_mm=(1.0,), wavelet=False, feature_classes=("firstorder", "shape2D", "glcm")
)


def make_tiny_bundle(
    models_dir: Path, name: str = "tiny-test", seed: int = 0, max_lesions: int = 2
) -> Bundle:
    """Write the tiny bundle into ``models_dir/name`` and return it (verified)."""
    work = models_dir / f".build-{name}"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    detector = build_detector(TINY_DETECTOR, TINY_PREPROCESS)
    save_detector_weights(detector, work / "detector.safetensors", TINY_DETECTOR.weights_dtype)

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(60, len(FEATURES)))
    y = (x[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(int)
    booster = xgboost.train(
        {"objective": "binary:logistic", "max_depth": 2, "seed": seed, "nthread": 1},
        xgboost.DMatrix(x, label=y, feature_names=list(FEATURES)),
        num_boost_round=5,
    )
    classifier = RadiomicsClassifier(
        booster, list(FEATURES), mean=[100.0, 100.0, 0.5, 10.0], std=[50.0, 50.0, 0.2, 5.0]
    )
    model_path, features_path = classifier.save(work)
    params = work / "radiomics_params.json"
    params.write_text(json.dumps(pyradiomics_params(TINY_RADIOMICS), indent=2))
    manifest = {
        "format_version": 1,
        "bundle": {
            "name": name,
            "version": "0.0.1",
            "created": dt.datetime(2026, 11, 21, tzinfo=dt.UTC),
            "description": "randomly initialised test bundle",
        },
        "intended_use": {
            "statement": "software tests only",
            "for_clinical_use": False,
            "disclaimer": "random weights, synthetic data: not for clinical use",
        },
        "training": {
            "description": "not trained",
            "synthetic": True,
            "seed": seed,
            "data": "none: random weights",
        },
        "detector": {**TINY_DETECTOR.model_dump(), "weights": "detector.safetensors"},
        "preprocessing": TINY_PREPROCESS.model_dump(),
        "postprocessing": {"max_lesions": max_lesions},
        "radiomics": {
            **TINY_RADIOMICS.model_dump(),
            "model": "radiomics_model.json",
            "features": "radiomics_features.json",
            "params": "radiomics_params.json",
        },
        "thresholds": {"dl": 0.5, "radiomics": 0.5, "fused": 0.5, "breast": 0.5, "patient": 0.5},
    }
    files = {
        "detector.safetensors": work / "detector.safetensors",
        "radiomics_model.json": model_path,
        "radiomics_features.json": features_path,
        "radiomics_params.json": params,
    }
    bundle = write_bundle(models_dir / name, manifest, files)
    for path in work.iterdir():
        path.unlink()
    work.rmdir()
    return bundle

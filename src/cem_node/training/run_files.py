"""The names of the files a training run writes, in one place.

``cem-node train detector`` writes a detector folder, ``cem-node train
radiomics`` a radiomics folder, ``--folds K`` a cross-validation folder of
detector folders; ``cem-node evaluate`` and ``cem-node models import``
(:mod:`cem_node.training.packing`) read them. Only names here, no imports:
the command line reads them without loading torch.
"""

from __future__ import annotations

__all__ = [
    "BEST_WEIGHTS",
    "CHECKPOINT_JSON",
    "CHECKPOINT_TENSORS",
    "DETECTOR_CONFIG",
    "DETECTOR_OPTIONAL",
    "DETECTOR_REQUIRED",
    "DETECTOR_WEIGHTS",
    "FOLDS",
    "HARD_EXAMPLES",
    "HISTORY",
    "OPERATING_POINT",
    "RADIOMICS_FEATURES",
    "RADIOMICS_MODEL",
    "RADIOMICS_PARAMS",
    "RADIOMICS_REQUIRED",
    "RADIOMICS_SETTINGS",
    "SPLIT",
    "SUMMARY",
    "THRESHOLDS",
]

# ----------------------------------------------------------------- a detector folder
DETECTOR_WEIGHTS = "detector.safetensors"
"""The chosen epoch's weights: what a bundle ships."""
DETECTOR_CONFIG = "detector_config.json"
"""Architecture, preprocessing and training record of the run."""
BEST_WEIGHTS = "best.safetensors"
CHECKPOINT_TENSORS = "last.safetensors"
CHECKPOINT_JSON = "last.json"
"""With :data:`CHECKPOINT_TENSORS`: the last epoch, to resume from."""
HISTORY = "history.json"
HARD_EXAMPLES = "hard_examples.json"
OPERATING_POINT = "operating_point.json"
"""The keep score and inference size chosen on the validation patients."""
SPLIT = "split.json"
"""The patient split: which images trained and which validated."""
DETECTOR_REQUIRED = (DETECTOR_WEIGHTS, DETECTOR_CONFIG)
DETECTOR_OPTIONAL = (HISTORY, SPLIT, HARD_EXAMPLES, OPERATING_POINT)

# ------------------------------------------------------- a cross-validation folder
FOLDS = "folds.json"
"""The folds (patients of each), beside the folders ``fold-1`` ... ``fold-K``."""

# ---------------------------------------------------------------- a radiomics folder
RADIOMICS_MODEL = "radiomics_model.json"
RADIOMICS_FEATURES = "radiomics_features.json"
RADIOMICS_PARAMS = "radiomics_params.json"
RADIOMICS_SETTINGS = "radiomics_settings.json"
THRESHOLDS = "thresholds.json"
SUMMARY = "summary.json"
RADIOMICS_REQUIRED = (
    RADIOMICS_MODEL,
    RADIOMICS_FEATURES,
    RADIOMICS_PARAMS,
    RADIOMICS_SETTINGS,
    THRESHOLDS,
    SUMMARY,
)

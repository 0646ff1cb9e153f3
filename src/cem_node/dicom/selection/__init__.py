"""CEM selection: which received images are low-energy or recombined, how they pair,
and what of a study goes to the analysis.

:mod:`.images` classifies one image from its header and pairs images per
breast and view; :mod:`.plan` turns a study's classified images into an
analysis request, or into the reason it cannot be analysed.
"""

from cem_node.dicom.selection.images import (
    FOR_PROCESSING_SOP_CLASSES,
    MAMMOGRAPHY_SOP_CLASSES,
    MODEL_VIEWS,
    Classification,
    MammoView,
    Pairing,
    Role,
    VendorPreset,
    classify_image,
    image_laterality,
    image_view,
    is_for_processing,
    pair_images,
    vendor_presets_for,
)
from cem_node.dicom.selection.plan import (
    StudyPlan,
    plan_study,
    summarise_exclusions,
)

__all__ = [
    "FOR_PROCESSING_SOP_CLASSES",
    "MAMMOGRAPHY_SOP_CLASSES",
    "MODEL_VIEWS",
    "Classification",
    "MammoView",
    "Pairing",
    "Role",
    "StudyPlan",
    "VendorPreset",
    "classify_image",
    "image_laterality",
    "image_view",
    "is_for_processing",
    "pair_images",
    "plan_study",
    "summarise_exclusions",
    "vendor_presets_for",
]

"""Typed parameters of the analysis, stored in a model bundle's manifest.

One model per stage: :class:`PreprocessParams` (PAPER.md "DL preprocessing"),
:class:`DetectorConfig` (the Mask R-CNN architecture),
:class:`PostprocessParams` (the paper's detection post-processing),
:class:`RadiomicsSettings` (pyradiomics) and :class:`DecisionThresholds`
(the Youden thresholds chosen on the training predictions).
A bundle pins them all, so training and inference use the same values.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BACKBONE_WIDTHS",
    "CLASS_NAMES",
    "PRESET_ARCHITECTURE",
    "BackboneName",
    "DecisionThresholds",
    "DetectorConfig",
    "PostprocessParams",
    "PreprocessParams",
    "RadiomicsSettings",
]

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]

CLASS_NAMES: tuple[str, str, str] = ("background", "benign", "malignant")
"""The detector's classes, in the order of its output channels."""

BackboneName = Literal["resnet101_fpn", "resnet50_fpn_v2", "mobilenet_v3_lite"]
"""The detector's backbones (each built by :mod:`cem_node.pipeline.detector`)."""
BACKBONE_WIDTHS: dict[str, tuple[int, int, int]] = {
    "resnet101_fpn": (256, 1024, 256),
    "resnet50_fpn_v2": (256, 1024, 256),
    "mobilenet_v3_lite": (64, 256, 64),
}
"""Default (FPN channels, box head width, mask head channels) of each backbone: the
narrow ones keep ``mobilenet_v3_lite`` small and quick."""
PRESET_ARCHITECTURE: dict[str, tuple[BackboneName, int]] = {
    "paper": ("resnet101_fpn", 800),
    "fast": ("mobilenet_v3_lite", 512),
}
"""The backbone and input short side each training preset starts from."""


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessParams(_Params):
    """The paper's DL preprocessing, and the one resize rule of training and inference."""

    percentile_low: float = Field(1.0, ge=0.0, lt=50.0, description="Lower clip percentile.")
    percentile_high: float = Field(99.0, gt=50.0, le=100.0, description="Upper clip percentile.")
    levels: int = Field(256, ge=2, le=256, description="Grey levels after requantisation.")
    clahe_tiles: int = Field(16, ge=1, description="CLAHE tile grid (tiles x tiles).")
    clahe_clip_low_energy: float = Field(2.5, gt=0, description="CLAHE clip limit, LE channel.")
    clahe_clip_recombined: tuple[float, float] = Field(
        (2.5, 1.0), description="CLAHE clip limits of the two RC channels."
    )
    short_side: int = Field(
        800, ge=64, description="The crop is resized so its shorter side has this length ..."
    )
    max_long_side: int = Field(
        1333, ge=64, description="... unless its longer side would exceed this length."
    )
    flip_right: bool = Field(
        False,
        description="Mirror right breasts so every breast faces the same way (undone on output).",
    )

    @model_validator(mode="after")
    def _sides_ordered(self) -> PreprocessParams:
        if self.max_long_side < self.short_side:
            raise ValueError(
                f"max_long_side ({self.max_long_side}) must not be below "
                f"short_side ({self.short_side})"
            )
        return self


class DetectorConfig(_Params):
    """The Mask R-CNN architecture (torchvision) with classes background, benign, malignant."""

    backbone: BackboneName = Field(
        "resnet101_fpn",
        description=(
            '"resnet101_fpn" (the paper\'s), "resnet50_fpn_v2", or "mobilenet_v3_lite" '
            "(a small fast backbone with a narrow FPN and heads, for the demo)."
        ),
    )
    fpn_channels: int = Field(256, ge=16, description="Channels of the feature pyramid.")
    box_head_width: int = Field(1024, ge=16, description="Width of the two-layer box head.")
    mask_head_channels: int = Field(256, ge=16, description="Channels of the mask head convs.")
    mask_roi_size: int = Field(
        14,
        ge=7,
        le=32,
        description=(
            "Side of the RoI features the mask head reads; its masks are twice this "
            "(14: torchvision's 28 x 28 masks). Not for resnet50_fpn_v2, whose heads are fixed."
        ),
    )
    weights_dtype: Literal["float32", "float16"] = Field(
        "float32", description="How the weights are stored in the bundle (loaded as float32)."
    )


class PostprocessParams(_Params):
    """The paper's post-processing of the detector output."""

    score_threshold: Fraction = Field(0.05, description="Per-class score before NMS.")
    nms_iou: Fraction = Field(0.5, description="Per-class NMS IoU.")
    agnostic_nms_iou: Fraction = Field(0.5, description="Class-agnostic NMS IoU.")
    max_lesions: int = Field(5, ge=1, description="Lesions kept per image.")
    keep_score: Fraction = Field(0.1, description="Final score below which a lesion is dropped.")
    mask_threshold: Fraction = Field(0.5, description="Mask probability binarisation threshold.")
    flip_tta: bool = Field(
        False,
        description=(
            "Test-time augmentation: detect on the image and on its left-right mirror, and "
            "average each lesion's score and mask over the two (twice the detector's time)."
        ),
    )
    duplicate_overlap: Fraction = Field(
        0.5,
        description=(
            "A detection whose source mask lies at least this fraction inside the masks of "
            "higher-scored detections is a duplicate of them and dropped (1: keep every one). "
            "Box NMS keeps a small box nested in a large one (IoU = their area ratio); the "
            "paper's post-processing leaves such fragments of one lesion as separate lesions."
        ),
    )


class RadiomicsSettings(_Params):
    """pyradiomics settings (PAPER.md "Handcrafted radiomics")."""

    bin_width: float = Field(3.0, gt=0)
    log_sigmas_mm: tuple[float, ...] = Field((0.1, 0.4, 0.7, 1.0))
    wavelet: bool = True
    feature_classes: tuple[str, ...] = Field(
        ("firstorder", "shape2D", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
    )
    crop_margin_px: int = Field(
        16, ge=0, description="Margin kept around the lesion's box before extraction."
    )
    max_grey_levels: int = Field(
        256,
        ge=8,
        description=(
            "Cap on the grey levels inside the mask: when bin_width would give more, the bin "
            "width is widened (and the change recorded) so one odd lesion cannot stall the node."
        ),
    )
    min_mask_pixels: int = Field(16, ge=1, description="Smaller masks are not analysed.")


class DecisionThresholds(_Params):
    """Youden thresholds from the training predictions, one per model and level."""

    dl: Fraction = 0.5
    radiomics: Fraction = 0.5
    fused: Fraction = 0.5
    breast: Fraction = 0.5
    patient: Fraction = 0.5

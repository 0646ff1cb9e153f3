"""The detector's augmentation: PAPER.md's flip, shear and scale, and optional rotation and
per-channel intensity jitter suited to mammograms.

Applied after the preprocessing, to the network image and its lesion masks
together (:func:`augment`); boxes are recomputed from the augmented masks
(:func:`boxes_from_masks`). Rotation and intensity jitter are off by default,
so a configuration that does not ask for them draws the same stream as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "augment",
    "boxes_from_masks",
    "jitter_channels",
    "sample_augment_params",
    "transform_boxes",
]


class AugmentConfig(BaseModel):
    """PAPER.md's augmentation, applied to the network image, its masks and boxes together."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    vertical_flip_p: float = Field(0.5, ge=0.0, le=1.0, description="Probability of a flip.")
    shear_rad: float = Field(0.1, ge=0.0, lt=1.0, description="Shear angle drawn in +-this.")
    scale: tuple[float, float] = Field((0.9, 1.1), description="Scale factor range.")
    rotation_deg: float = Field(
        0.0, ge=0.0, le=45.0, description="Rotation about the image centre drawn in +-this."
    )
    intensity_jitter: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Per channel (low-energy and recombined apart): a contrast factor drawn in "
            "[1 - j, 1 + j] and a gamma drawn in [exp(-j), exp(j)]; 0 keeps the intensities. "
            "Both keep black black, so the background outside the breast stays 0."
        ),
    )

    @model_validator(mode="after")
    def _scale_ordered(self) -> AugmentConfig:
        low, high = self.scale
        if not 0 < low <= high:
            raise ValueError(f"scale range must be 0 < low <= high, got {self.scale}")
        return self


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the augmentation: vertical flip, shear, scale, rotation, channel jitter."""

    flip: bool = False
    shear_rad: float = 0.0
    scale: float = 1.0
    rotation_rad: float = 0.0
    # per channel: (contrast factor, gamma); empty: intensities unchanged
    channel_jitter: tuple[tuple[float, float], ...] = ()

    @property
    def moves_pixels(self) -> bool:
        """Whether the geometry changes (flip, shear, scale or rotation)."""
        return (self.flip, self.shear_rad, self.scale, self.rotation_rad) != (False, 0.0, 1.0, 0.0)

    def matrix(self, shape: tuple[int, int]) -> np.ndarray:
        """The 2 x 3 forward affine map (cv2 convention) on an image of ``shape`` (rows, cols).

        Pixel centres, about the image centre: ``p' = c + A (p - c)`` with
        ``A = scale * R(rotation) @ [[1, tan(shear)], [0, 1]] @ diag(1, -1 if flip else 1)``.
        """
        rows, cols = shape
        centre = np.array([(cols - 1) / 2.0, (rows - 1) / 2.0])
        flip = np.diag([1.0, -1.0 if self.flip else 1.0])
        shear = np.array([[1.0, math.tan(self.shear_rad)], [0.0, 1.0]])
        cos, sin = math.cos(self.rotation_rad), math.sin(self.rotation_rad)
        rotation = np.array([[cos, -sin], [sin, cos]])
        a = self.scale * rotation @ shear @ flip
        return np.hstack([a, (centre - a @ centre)[:, None]])


def sample_augment_params(
    rng: np.random.Generator, config: AugmentConfig, channels: int = 3
) -> AugmentParams:
    """Draw one augmentation.

    Always three draws for flip, shear and scale, so the stream does not depend
    on the values; rotation and intensity jitter draw after them, and only when
    the configuration asks for them (a paper-only configuration keeps its
    stream). ``channels`` is the network image's channel count.
    """
    flip_draw, shear_draw, scale_draw = rng.random(3)
    rotation_draw = rng.random() if config.rotation_deg else 0.5
    jitter_draws = rng.random((channels, 2)) if config.intensity_jitter else None
    if not config.enabled:
        return AugmentParams()
    low, high = config.scale
    jitter: tuple[tuple[float, float], ...] = ()
    if jitter_draws is not None:
        j = config.intensity_jitter
        jitter = tuple(
            (float(1.0 + (2.0 * c - 1.0) * j), float(math.exp((2.0 * g - 1.0) * j)))
            for c, g in jitter_draws
        )
    return AugmentParams(
        flip=bool(flip_draw < config.vertical_flip_p),
        shear_rad=float((2.0 * shear_draw - 1.0) * config.shear_rad),
        scale=float(low + scale_draw * (high - low)),
        rotation_rad=float(math.radians((2.0 * rotation_draw - 1.0) * config.rotation_deg)),
        channel_jitter=jitter,
    )


def jitter_channels(image: np.ndarray, jitter: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Each channel of a (C, H, W) float image in [0, 1] to ``clip(contrast * x ** gamma, 0, 1)``.

    Black stays black, so the background outside the breast is not lifted.
    """
    if not jitter:
        return image
    if len(jitter) != image.shape[0]:
        raise ValueError(f"{len(jitter)} channel jitters for an image of {image.shape[0]} channels")
    out = np.empty_like(image)
    for channel, (contrast, gamma) in enumerate(jitter):
        np.clip(contrast * np.power(image[channel], gamma), 0.0, 1.0, out=out[channel])
    return out


def augment(
    image: np.ndarray, masks: np.ndarray, params: AugmentParams
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one augmentation to a (C, H, W) image and its (N, H, W) masks; same shapes back.

    The intensities are jittered first (:func:`jitter_channels`; floats in [0, 1]
    only). The image is then interpolated linearly (outside: 0), the masks
    linearly as floats and thresholded at 0.5, like
    :meth:`~cem_node.pipeline.preprocess.PreprocessGeometry.mask_to_network`.
    """
    import cv2

    if params.channel_jitter:
        if image.dtype.kind != "f":
            raise ValueError("intensity jitter needs a float image in [0, 1]")
        image = jitter_channels(image, params.channel_jitter)
    if not params.moves_pixels:
        return image, masks
    _, rows, cols = image.shape
    matrix = params.matrix((rows, cols))
    warp = {"dsize": (cols, rows), "borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
    channels = np.ascontiguousarray(image.transpose(1, 2, 0))
    if channels.dtype == np.uint8:
        channels = channels.astype(np.float32)
    warped = cv2.warpAffine(channels, matrix, flags=cv2.INTER_LINEAR, **warp)
    if warped.ndim == 2:
        warped = warped[:, :, None]
    out_image = np.ascontiguousarray(warped.transpose(2, 0, 1)).astype(image.dtype, copy=False)
    out_masks = np.zeros_like(masks, dtype=bool)
    for i, mask in enumerate(masks):
        moved = cv2.warpAffine(mask.astype(np.float32), matrix, flags=cv2.INTER_LINEAR, **warp)
        out_masks[i] = moved >= 0.5
    return out_image, out_masks


def transform_boxes(boxes: np.ndarray, params: AugmentParams, shape: tuple[int, int]) -> np.ndarray:
    """Boxes (x0, y0, x1, y1; pixel edges) through the augmentation: the boxes of their corners.

    For an axis-aligned rectangle this is the box of the augmented rectangle
    (a sheared rectangle is a parallelogram whose box this is).
    """
    bx = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    matrix = params.matrix(shape)
    a, t = matrix[:, :2], matrix[:, 2]
    out = np.zeros_like(bx)
    for i, (x0, y0, x1, y1) in enumerate(bx):
        # edges -> pixel-centre coordinates (-0.5), map, and back (+0.5)
        corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) - 0.5
        moved = corners @ a.T + t + 0.5
        out[i] = [*moved.min(axis=0), *moved.max(axis=0)]
    return out


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 boxes (x0, y0, x1, y1; pixel edges) of (N, H, W) masks (non-empty)."""
    out = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        out[i] = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
    return out

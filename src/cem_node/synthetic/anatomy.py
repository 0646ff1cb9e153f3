"""Breast anatomy of the phantom: silhouette, compression profile, pectoral
muscle and fibroglandular tissue.

Everything is drawn in a *canonical* orientation: chest wall at column 0,
nipple pointing to increasing columns, lateral side (CC) or superior side
(MLO) at row 0. That is how a LEFT breast is stored; right breasts are
mirrored by the caller. Lengths are in millimetres so that the same study
renders alike at any pixel size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from cem_node.synthetic.texture import power_law_noise, resize_field, smoothstep

View = Literal["CC", "MLO"]
Density = Literal["A", "B", "C", "D"]
BpeLevel = Literal["minimal", "mild", "moderate", "marked"]

#: Fraction of the breast area covered by fibroglandular tissue per BI-RADS
#: density category (a: almost entirely fatty ... d: extremely dense).
DENSITY_FRACTION: dict[str, float] = {"A": 0.12, "B": 0.32, "C": 0.58, "D": 0.82}
#: Peak background-parenchymal-enhancement amplitude (normalised RC units).
BPE_AMPLITUDE: dict[str, float] = {
    "minimal": 0.015,
    "mild": 0.04,
    "moderate": 0.075,
    "marked": 0.12,
}


@dataclass(frozen=True)
class Grid:
    """A pixel grid: rows x columns of square pixels of ``pixel_mm``."""

    rows: int
    cols: int
    pixel_mm: float

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    def coarse(self, target_mm: float = 0.5) -> Grid:
        """A grid over the same field with pixels of about ``target_mm``,
        for smooth fields that need no full resolution."""
        factor = max(1, round(target_mm / self.pixel_mm))
        return Grid(
            rows=-(-self.rows // factor),
            cols=-(-self.cols // factor),
            pixel_mm=self.pixel_mm * factor,
        )

    def row_mm(self) -> np.ndarray:
        return ((np.arange(self.rows, dtype=np.float32) + 0.5) * self.pixel_mm).astype(np.float32)

    def col_mm(self) -> np.ndarray:
        return ((np.arange(self.cols, dtype=np.float32) + 0.5) * self.pixel_mm).astype(np.float32)


@dataclass(frozen=True)
class BreastShape:
    """Silhouette of one compressed breast in one view (canonical orientation).

    The skin line is ``x = depth(y)`` for rows between ``top_mm`` and
    ``bottom_mm``; the nipple sits at ``(depth_mm, nipple_y_mm)``.
    """

    view: View
    depth_mm: float
    nipple_y_mm: float
    top_mm: float
    bottom_mm: float
    upper_exponent: float
    lower_exponent: float
    top_depth_mm: float  # MLO: depth where the axillary tail leaves the image top
    wobble: tuple[tuple[float, float, float], ...]  # (relative amplitude, cycles, phase)
    nipple_radius_mm: float
    nipple_in_profile: bool
    pectoral_width_mm: float  # MLO only (0 for CC)
    pectoral_height_mm: float
    pectoral_curvature: float

    def depth(self, y_mm: np.ndarray) -> np.ndarray:
        """Distance from the chest wall to the skin along each row, in mm."""
        y = np.asarray(y_mm, dtype=np.float32)
        d = np.zeros_like(y)
        upper = y < self.nipple_y_mm
        lower = ~upper
        if self.view == "CC":
            t_up = (self.nipple_y_mm - y[upper]) / (self.nipple_y_mm - self.top_mm)
            d[upper] = self.depth_mm * _cap(t_up, self.upper_exponent)
        else:
            # axillary tail: the skin line runs up to the image top at top_depth_mm
            t_up = np.clip((self.nipple_y_mm - y[upper]) / self.nipple_y_mm, 0.0, 1.0)
            d[upper] = self.top_depth_mm + (self.depth_mm - self.top_depth_mm) * _cap(
                t_up, self.upper_exponent
            )
        t_low = (y[lower] - self.nipple_y_mm) / (self.bottom_mm - self.nipple_y_mm)
        d[lower] = self.depth_mm * _cap(t_low, self.lower_exponent)
        span = self.bottom_mm - (self.top_mm if self.view == "CC" else 0.0)
        for amp, cycles, phase in self.wobble:
            d *= 1.0 + amp * np.sin(2 * np.pi * cycles * y / span + phase)
        return np.maximum(d, 0.0)

    def pectoral_depth(self, y_mm: np.ndarray) -> np.ndarray:
        """Width of the pectoral muscle (from the chest wall) along each row."""
        if self.view == "CC" or self.pectoral_width_mm <= 0:
            return np.zeros_like(np.asarray(y_mm, dtype=np.float32))
        t = np.clip(1.0 - np.asarray(y_mm, dtype=np.float32) / self.pectoral_height_mm, 0.0, 1.0)
        return self.pectoral_width_mm * t**self.pectoral_curvature


def _cap(t: np.ndarray, exponent: float) -> np.ndarray:
    """A rounded cap profile: 1 at t=0, 0 at t>=1 (superellipse quadrant)."""
    t = np.clip(t, 0.0, 1.0)
    return (1.0 - t**exponent) ** (1.0 / 1.9)


def breast_mask(shape: BreastShape, grid: Grid) -> np.ndarray:
    """Boolean mask of the breast (skin line and nipple included) on ``grid``."""
    y = grid.row_mm()
    x = grid.col_mm()
    mask = x[None, :] < shape.depth(y)[:, None]
    if shape.nipple_in_profile:
        r = shape.nipple_radius_mm
        rows = np.flatnonzero(np.abs(y - shape.nipple_y_mm) < r)
        if rows.size:
            cols = np.flatnonzero(np.abs(x - shape.depth_mm - 0.3 * r) < 1.2 * r)
            yy, xx = np.meshgrid(y[rows], x[cols], indexing="ij")
            bump = ((xx - shape.depth_mm + 0.4 * r) / (1.2 * r)) ** 2 + (
                (yy - shape.nipple_y_mm) / r
            ) ** 2 < 1.0
            mask[np.ix_(rows, cols)] |= bump
    return mask


def skin_distance_mm(shape: BreastShape, grid: Grid) -> np.ndarray:
    """Distance from each pixel to the skin line, in mm (0 outside).

    The chest wall (column 0) and, in MLO, the image top are not skin: the
    tissue goes on beyond them, so the mask is extended there before the
    distance transform.
    """
    mask = breast_mask(shape, grid)
    pad = max(4, int(60.0 / grid.pixel_mm))
    padded = np.pad(mask, ((pad, 0) if shape.view == "MLO" else (0, 0), (pad, 0)), mode="edge")
    dist = ndimage.distance_transform_edt(padded, sampling=grid.pixel_mm)
    return dist[(pad if shape.view == "MLO" else 0) :, pad:].astype(np.float32)


def compressed_thickness(distance_mm: np.ndarray, thickness_mm: float) -> np.ndarray:
    """X-ray path length through the compressed breast as a fraction of the
    paddle thickness: a semicircular, uncompressed rim of radius T/2."""
    radius = thickness_mm / 2.0
    t = np.clip(distance_mm / radius, 0.0, 1.0)
    return np.sqrt(np.clip(1.0 - (1.0 - t) ** 2, 0.0, 1.0)).astype(np.float32)


def glandular_envelope(shape: BreastShape, grid: Grid, distance_mm: np.ndarray) -> np.ndarray:
    """Where fibroglandular tissue may lie (0..1): a cone behind the nipple,
    sparing the subcutaneous and retromammary fat and the pectoral muscle."""
    y = grid.row_mm()[:, None]
    x = grid.col_mm()[None, :]
    cy = shape.nipple_y_mm + (0.08 * shape.depth_mm if shape.view == "MLO" else 0.0)
    sx = 0.55 * shape.depth_mm
    sy = 0.33 * (shape.bottom_mm - (shape.top_mm if shape.view == "CC" else 0.0))
    cone = np.exp(-(((x - 0.55 * shape.depth_mm) / sx) ** 2) - ((y - cy) / sy) ** 2)
    subcutaneous = smoothstep((distance_mm - 3.0) / 9.0)
    retromammary = smoothstep((x - shape.pectoral_depth(y[:, 0])[:, None] - 4.0) / 14.0)
    return (cone * subcutaneous * retromammary).astype(np.float32)


def fibroglandular_density(
    envelope: np.ndarray,
    inside: np.ndarray,
    density: Density,
    rng: np.random.Generator,
    pixel_mm: float,
) -> np.ndarray:
    """Fibroglandular tissue fraction (0..1) per pixel.

    A 1/f^3 field shifted by the envelope is thresholded so that the share
    of the breast covered by dense tissue matches the BI-RADS category.
    """
    texture = power_law_noise(envelope.shape, 2.8, rng, pixel_mm=pixel_mm, min_period_mm=0.4)
    field = texture + 2.2 * (envelope - 0.5)
    sample = field[inside][:: max(1, int(inside.sum()) // 200_000)]
    fraction = float(np.clip(DENSITY_FRACTION[density] + rng.normal(0, 0.04), 0.05, 0.95))
    level = np.quantile(sample, 1.0 - fraction) if sample.size else 0.0
    # a logistic ramp, not a hard threshold: dense regions keep their texture
    dense = 1.0 / (1.0 + np.exp(-1.8 * (field - level)))
    dense *= smoothstep(envelope / 0.05)
    return dense.astype(np.float32)


def sample_density(rng: np.random.Generator, age: int) -> Density:
    """BI-RADS density category, denser in younger women."""
    shift = np.clip((55 - age) / 20.0, -1.0, 1.0)
    weights = np.array(
        [0.10 - 0.05 * shift, 0.40 - 0.1 * shift, 0.40 + 0.08 * shift, 0.10 + 0.07 * shift]
    )
    weights = np.clip(weights, 0.02, None)
    return rng.choice(np.array(["A", "B", "C", "D"]), p=weights / weights.sum()).item()


def sample_bpe(rng: np.random.Generator, age: int) -> BpeLevel:
    """Background parenchymal enhancement level, higher before menopause."""
    pre = age < 52
    weights = np.array([0.25, 0.35, 0.25, 0.15]) if pre else np.array([0.5, 0.33, 0.12, 0.05])
    return rng.choice(np.array(["minimal", "mild", "moderate", "marked"]), p=weights).item()


def sample_breast_shapes(
    rng: np.random.Generator, field_rows_mm: float, field_cols_mm: float
) -> dict[View, BreastShape]:
    """A CC and an MLO silhouette of the same breast (shared size)."""
    depth_cc = float(np.clip(rng.normal(100, 18), 60, min(150, field_cols_mm - 25)))
    half_height = float(np.clip(rng.normal(82, 12), 55, field_rows_mm / 2 - 12))
    centre = field_rows_mm / 2 + rng.normal(0, 6)
    wobble = tuple(
        (
            float(rng.uniform(0.004, 0.015)),
            float(rng.uniform(1.5, 4.5)),
            float(rng.uniform(0, 2 * np.pi)),
        )
        for _ in range(2)
    )
    nipple_r = float(rng.uniform(4.0, 6.5))
    in_profile = bool(rng.random() < 0.85)
    cc = BreastShape(
        view="CC",
        depth_mm=depth_cc,
        nipple_y_mm=float(centre + rng.normal(0, 5)),
        top_mm=float(max(4.0, centre - half_height * rng.uniform(0.95, 1.08))),
        bottom_mm=float(min(field_rows_mm - 4.0, centre + half_height * rng.uniform(0.95, 1.08))),
        upper_exponent=float(rng.uniform(2.0, 2.6)),
        lower_exponent=float(rng.uniform(2.0, 2.6)),
        top_depth_mm=0.0,
        wobble=wobble,
        nipple_radius_mm=nipple_r,
        nipple_in_profile=in_profile,
        pectoral_width_mm=0.0,
        pectoral_height_mm=0.0,
        pectoral_curvature=1.0,
    )
    depth_mlo = float(min(depth_cc * rng.uniform(1.02, 1.15), field_cols_mm - 20))
    nipple_mlo = float(np.clip(field_rows_mm * rng.uniform(0.5, 0.6), 80, field_rows_mm - 70))
    mlo = BreastShape(
        view="MLO",
        depth_mm=depth_mlo,
        nipple_y_mm=nipple_mlo,
        top_mm=0.0,
        bottom_mm=float(min(field_rows_mm - 3.0, nipple_mlo + rng.uniform(65, 95))),
        upper_exponent=float(rng.uniform(1.6, 2.2)),
        lower_exponent=float(rng.uniform(1.8, 2.4)),
        top_depth_mm=float(depth_mlo * rng.uniform(0.32, 0.48)),
        wobble=wobble,
        nipple_radius_mm=nipple_r,
        nipple_in_profile=in_profile,
        pectoral_width_mm=float(depth_mlo * rng.uniform(0.28, 0.45)),
        pectoral_height_mm=float(nipple_mlo * rng.uniform(0.7, 1.05)),
        pectoral_curvature=float(rng.uniform(0.8, 1.25)),
    )
    return {"CC": cc, "MLO": mlo}


def upsample(field: np.ndarray, grid: Grid) -> np.ndarray:
    """Resize a coarse field to ``grid``."""
    return resize_field(field, grid.shape)

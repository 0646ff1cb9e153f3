"""Lesions and microcalcifications of the phantom.

A lesion is described once per breast (:class:`LesionSpec`: pathology,
morphology, enhancement, size, position in the breast) and projected into
each view, so it sits at the same place in the low-energy and recombined
images and consistently in the CC and MLO views (same distance from the
nipple, same size, a slightly different outline).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cem_node.synthetic.anatomy import BreastShape, Grid, View
from cem_node.synthetic.texture import power_law_noise, smoothstep

Pathology = Literal["benign", "malignant"]
Morphology = Literal["round", "oval", "irregular", "spiculated"]
Enhancement = Literal["homogeneous", "heterogeneous", "rim", "none"]

#: Low-energy contrast of a non-enhancing benign lesion (cyst), normalised
#: attenuation units; enhancing lesions draw theirs from 0.04-0.09.
CYST_LE_CONTRAST = (0.14, 0.24)


@dataclass(frozen=True)
class LesionSpec:
    """One lesion of one breast, independent of the view.

    ``depth_fraction`` is the distance from the nipple towards the chest wall
    as a fraction of the breast depth; ``lateral_mm`` and ``superior_mm`` are
    offsets from the nipple axis (lateral and superior positive).
    """

    lesion_id: str
    pathology: Pathology
    morphology: Morphology
    enhancement: Enhancement
    diameter_mm: float
    le_contrast: float
    rc_enhancement: float
    aspect: float
    rotation: float
    harmonics: tuple[tuple[float, float], ...]  # (relative amplitude, phase) for k = 2, 3, ...
    spicules: tuple[tuple[float, float, float], ...]  # (angle, length / radius, width mm)
    depth_fraction: float
    lateral_mm: float
    superior_mm: float
    mlo_rotation: float
    mlo_squash: float
    edge_mm: float
    with_calcifications: bool

    @property
    def kind(self) -> str:
        """Plain-words kind for reports: mass, cyst, ..."""
        if self.pathology == "benign" and self.enhancement == "none":
            return "cyst"
        return "mass"


@dataclass(frozen=True)
class CalcificationCluster:
    """A cluster of microcalcifications (positions relative to its centre)."""

    cluster_id: str
    form: Literal["punctate", "pleomorphic"]
    depth_fraction: float
    lateral_mm: float
    superior_mm: float
    offsets_mm: tuple[tuple[float, float], ...]
    radii_mm: tuple[float, ...]
    lesion_id: str | None  # set when the cluster belongs to a lesion


def sample_lesion(rng: np.random.Generator, lesion_id: str, pathology: Pathology) -> LesionSpec:
    """Draw the appearance of a lesion given its pathology."""
    if pathology == "malignant":
        morphology: Morphology = rng.choice(
            np.array(["irregular", "spiculated"]), p=[0.55, 0.45]
        ).item()
        enhancement: Enhancement = rng.choice(
            np.array(["heterogeneous", "rim"]), p=[0.6, 0.4]
        ).item()
        diameter = float(np.clip(rng.lognormal(np.log(17), 0.4), 6, 40))
        n_harm = 9
        harmonics = tuple(
            (float(rng.uniform(0.05, 0.22) / (k**0.7)), float(rng.uniform(0, 2 * np.pi)))
            for k in range(2, 2 + n_harm)
        )
        aspect = float(rng.uniform(0.65, 1.0))
        le_contrast = float(rng.uniform(0.05, 0.09))
        rc_enhancement = float(rng.uniform(0.16, 0.3))
        edge = float(rng.uniform(0.8, 1.8))
        spicules = ()
        if morphology == "spiculated":
            n = int(rng.integers(8, 18))
            spicules = tuple(
                (
                    float(a),
                    float(rng.uniform(0.5, 1.6)),
                    float(rng.uniform(0.25, 0.6)),
                )
                for a in np.sort(rng.uniform(0, 2 * np.pi, n))
            )
        calcs = bool(rng.random() < 0.3)
    else:
        morphology = rng.choice(np.array(["round", "oval"]), p=[0.4, 0.6]).item()
        enhancement = rng.choice(np.array(["homogeneous", "none"]), p=[0.65, 0.35]).item()
        diameter = float(np.clip(rng.lognormal(np.log(12), 0.45), 5, 35))
        harmonics = tuple(
            (float(rng.uniform(0.0, 0.02)), float(rng.uniform(0, 2 * np.pi))) for _ in range(2)
        )
        aspect = float(rng.uniform(0.85, 1.0) if morphology == "round" else rng.uniform(0.5, 0.8))
        le_contrast = float(rng.uniform(0.04, 0.08))
        if enhancement == "none":
            # a cyst is water-dense and sharply outlined: it is the low-energy image that
            # shows it (nothing enhances), so a cyst in the ground truth must be visible
            # there, as one a radiologist outlined would be. Mapped from the same draw
            # (no extra random number: every other lesion of a seed stays as it was).
            le_contrast = CYST_LE_CONTRAST[0] + (le_contrast - 0.04) / 0.04 * (
                CYST_LE_CONTRAST[1] - CYST_LE_CONTRAST[0]
            )
        rc_enhancement = 0.0 if enhancement == "none" else float(rng.uniform(0.05, 0.11))
        edge = float(rng.uniform(0.25, 0.5))
        spicules = ()
        calcs = False
    return LesionSpec(
        lesion_id=lesion_id,
        pathology=pathology,
        morphology=morphology,
        enhancement=enhancement,
        diameter_mm=diameter,
        le_contrast=le_contrast,
        rc_enhancement=rc_enhancement,
        aspect=aspect,
        rotation=float(rng.uniform(0, np.pi)),
        harmonics=harmonics,
        spicules=spicules,
        depth_fraction=0.0,
        lateral_mm=0.0,
        superior_mm=0.0,
        mlo_rotation=float(rng.uniform(-0.6, 0.6)),
        mlo_squash=float(rng.uniform(0.88, 1.1)),
        edge_mm=edge,
        with_calcifications=calcs,
    )


def outline_radius(spec: LesionSpec, theta: np.ndarray, view: View) -> np.ndarray:
    """Boundary radius r(theta) in mm of the lesion core in ``view``.

    An ellipse modulated by radial harmonics, scaled so that the largest
    diameter of the outline equals the lesion's diameter.
    """
    scale = spec.diameter_mm / _unit_span(spec, view)
    return (_unit_radius(spec, theta, view) * scale).astype(np.float32)


@functools.lru_cache(maxsize=256)
def _unit_span(spec: LesionSpec, view: View) -> float:
    """Largest diameter of the unscaled outline (cached: a lesion is drawn
    from many calls, and this is a 360 x 360 distance matrix)."""
    angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    ref = _unit_radius(spec, angles, view)
    pts = np.stack([ref * np.cos(angles), ref * np.sin(angles)], axis=1)
    return float(np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max())


def _unit_radius(spec: LesionSpec, theta: np.ndarray, view: View) -> np.ndarray:
    rotation = spec.rotation + (spec.mlo_rotation if view == "MLO" else 0.0)
    c = np.cos(theta - rotation)
    s = np.sin(theta - rotation)
    minor = spec.aspect * (spec.mlo_squash if view == "MLO" else 1.0)
    wave = np.ones_like(theta)
    for k, (amp, phase) in enumerate(spec.harmonics, start=2):
        wave = wave + amp * np.cos(k * (theta - rotation) + phase)
    return wave / np.sqrt(c * c + (s / minor) ** 2)


def lesion_centre_mm(
    spec: LesionSpec | CalcificationCluster, shape: BreastShape
) -> tuple[float, float]:
    """(row, column) in mm of a lesion's centre in one view (canonical)."""
    col = shape.depth_mm * (1.0 - spec.depth_fraction)
    if shape.view == "CC":
        row = shape.nipple_y_mm - spec.lateral_mm
    else:
        # the MLO detector is tilted ~45 degrees: up is superior and lateral
        row = shape.nipple_y_mm - 0.8 * spec.superior_mm - 0.45 * spec.lateral_mm
    return float(row), float(col)


@dataclass(frozen=True)
class LesionRaster:
    """A lesion drawn on a grid, within a crop box."""

    row0: int
    col0: int
    mask: np.ndarray  # bool, the lesion core (ground truth)
    le: np.ndarray  # float32 additive density on the low-energy image
    rc: np.ndarray  # float32 additive enhancement on the recombined image


def render_lesion(
    spec: LesionSpec, shape: BreastShape, grid: Grid, rng: np.random.Generator
) -> LesionRaster:
    """Draw a lesion's mask, density and enhancement in one view."""
    row_c, col_c = lesion_centre_mm(spec, shape)
    reach = (
        spec.diameter_mm * (1.0 + max((s[1] for s in spec.spicules), default=0.0))
        + 4 * spec.edge_mm
    )
    px = grid.pixel_mm
    r0 = max(0, int((row_c - reach) / px))
    r1 = min(grid.rows, int((row_c + reach) / px) + 2)
    c0 = max(0, int((col_c - reach) / px))
    c1 = min(grid.cols, int((col_c + reach) / px) + 2)
    y = (np.arange(r0, r1, dtype=np.float32) + 0.5) * px - row_c
    x = (np.arange(c0, c1, dtype=np.float32) + 0.5) * px - col_c
    dy, dx = np.meshgrid(y, x, indexing="ij")
    rho = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    radius = outline_radius(spec, theta, shape.view)
    depth_in = radius - rho  # > 0 inside, mm
    mask = depth_in >= 0
    body = smoothstep(depth_in / spec.edge_mm + 0.5)
    r_mean = float(np.mean(outline_radius(spec, np.linspace(0, 2 * np.pi, 64), shape.view)))

    spic = np.zeros_like(rho)
    for angle, length, width in spec.spicules:
        a = angle + (spec.mlo_rotation if shape.view == "MLO" else 0.0)
        start = float(outline_radius(spec, np.array([a], dtype=np.float32), shape.view)[0]) * 0.8
        end = start + length * r_mean
        ux, uy = np.cos(a), np.sin(a)
        along = dx * ux + dy * uy
        across = np.abs(-dx * uy + dy * ux)
        t = (along - start) / (end - start)
        taper = np.clip(1.0 - t, 0.0, 1.0) * (t > -0.2)
        spic = np.maximum(spic, taper * np.exp(-((across / (width * (0.3 + taper))) ** 2)))

    le = spec.le_contrast * np.maximum(body, 0.7 * spic)
    if spec.rc_enhancement > 0:
        if spec.enhancement == "rim":
            profile = 0.4 + 0.6 * np.exp(-np.clip(depth_in, 0, None) / (0.22 * r_mean))
        elif spec.enhancement == "heterogeneous":
            tex = power_law_noise(rho.shape, 2.2, rng, pixel_mm=px, min_period_mm=1.0)
            profile = 0.45 + 0.55 * smoothstep(tex * 0.4 + 0.5)
        else:
            profile = np.ones_like(body)
        rc = spec.rc_enhancement * (body * profile + 0.35 * spic)
    else:
        rc = np.zeros_like(body)
    return LesionRaster(
        row0=r0,
        col0=c0,
        mask=mask,
        le=le.astype(np.float32),
        rc=rc.astype(np.float32),
    )


def sample_calcifications(
    rng: np.random.Generator, cluster_id: str, form: Literal["punctate", "pleomorphic"]
) -> CalcificationCluster:
    """A cluster of 5-25 specks within about 1 cm."""
    n = int(rng.integers(5, 26))
    spread = rng.uniform(1.5, 4.0)
    offsets = tuple((float(a), float(b)) for a, b in rng.normal(0, spread, size=(n, 2)))
    if form == "pleomorphic":
        radii = tuple(float(r) for r in rng.uniform(0.08, 0.3, n))
    else:
        radii = tuple(float(r) for r in rng.uniform(0.08, 0.18, n))
    return CalcificationCluster(
        cluster_id=cluster_id,
        form=form,
        depth_fraction=0.0,
        lateral_mm=0.0,
        superior_mm=0.0,
        offsets_mm=offsets,
        radii_mm=radii,
        lesion_id=None,
    )


def draw_calcifications(
    image: np.ndarray,
    cluster: CalcificationCluster,
    shape: BreastShape,
    grid: Grid,
    amplitude: float,
) -> tuple[float, float]:
    """Add a cluster's specks to ``image`` in place; returns its centre (row, col) in px."""
    row_c, col_c = lesion_centre_mm(cluster, shape)
    px = grid.pixel_mm
    for (oy, ox), r in zip(cluster.offsets_mm, cluster.radii_mm, strict=True):
        cy = (row_c + oy) / px
        cx = (col_c + ox) / px
        sigma = max(r / px, 0.6)
        # keep the integrated signal when a speck is smaller than a pixel
        peak = amplitude * min(1.0, (r / px) ** 2 / sigma**2)
        half = int(3 * sigma) + 1
        ry0, ry1 = max(0, int(cy) - half), min(grid.rows, int(cy) + half + 1)
        rx0, rx1 = max(0, int(cx) - half), min(grid.cols, int(cx) + half + 1)
        if ry0 >= ry1 or rx0 >= rx1:
            continue
        yy = np.arange(ry0, ry1, dtype=np.float32)[:, None] + 0.5 - cy
        xx = np.arange(rx0, rx1, dtype=np.float32)[None, :] + 0.5 - cx
        image[ry0:ry1, rx0:rx1] += peak * np.exp(-(yy * yy + xx * xx) / (2 * sigma * sigma))
    return row_c / px, col_c / px

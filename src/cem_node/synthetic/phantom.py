"""Render the low-energy (LE) and recombined (RC) images of one breast view.

Intensities are built in normalised units (0..1 of the stored range) in the
canonical orientation of :mod:`cem_node.synthetic.anatomy`, as a modality's
"for presentation" processing would leave them: log signal, peripheral
equalisation, bright dense tissue on a dark background (MONOCHROME2).

LE: fat baseline + fibroglandular tissue (1/f^3 texture, BI-RADS density),
skin line, pectoral muscle (MLO), vessels, lesion density, spicules,
microcalcifications, quantum noise.
RC: low smooth background, bright rim at the skin line (thickness change),
background parenchymal enhancement in the glandular tissue, enhancing
vessels, lesion enhancement (rim / heterogeneous / homogeneous / none),
faint residual anatomy, and the stronger noise of the recombination.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from cem_node.synthetic.anatomy import (
    BPE_AMPLITUDE,
    BpeLevel,
    BreastShape,
    Density,
    Grid,
    View,
    breast_mask,
    compressed_thickness,
    fibroglandular_density,
    glandular_envelope,
    skin_distance_mm,
    upsample,
)
from cem_node.synthetic.lesions import (
    CalcificationCluster,
    LesionSpec,
    draw_calcifications,
    render_lesion,
)
from cem_node.synthetic.texture import power_law_noise, smoothstep

Laterality = Literal["L", "R"]


@dataclass(frozen=True)
class BreastSpec:
    """Everything that is constant for one breast across its views."""

    laterality: Laterality
    shapes: dict[View, BreastShape]
    thickness_mm: float
    density: Density
    bpe: BpeLevel
    lesions: tuple[LesionSpec, ...]
    calcifications: tuple[CalcificationCluster, ...]
    nipple_marker: bool


@dataclass
class RenderedView:
    """LE and RC images of one view in normalised units, canonical orientation."""

    le: np.ndarray
    rc: np.ndarray
    breast: np.ndarray
    lesion_masks: dict[str, np.ndarray] = field(default_factory=dict)
    calcification_centres: dict[str, tuple[float, float]] = field(default_factory=dict)


def _vessels(shape: BreastShape, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """A few tortuous vessels running from the chest wall towards the nipple."""
    canvas = Image.new("F", (grid.cols, grid.rows), 0.0)
    draw = ImageDraw.Draw(canvas)
    px = grid.pixel_mm
    top = shape.top_mm if shape.view == "CC" else 0.15 * shape.bottom_mm
    for _ in range(int(rng.integers(3, 7))):
        y = rng.uniform(top + 10, shape.bottom_mm - 10)
        x = rng.uniform(0, 8)
        heading = np.arctan2(shape.nipple_y_mm - y, shape.depth_mm - x) + rng.normal(0, 0.25)
        length = rng.uniform(0.4, 0.9) * shape.depth_mm
        points = [(x / px, y / px)]
        for _ in range(int(length / 4.0)):
            heading += rng.normal(0, 0.18)
            x += 4.0 * np.cos(heading)
            y += 4.0 * np.sin(heading)
            points.append((x / px, y / px))
        width = max(1, round(rng.uniform(1.0, 2.4) / px))
        draw.line(points, fill=float(rng.uniform(0.6, 1.0)), width=width, joint="curve")
    return ndimage.gaussian_filter(np.asarray(canvas), 0.7)


def _add_lesions(
    out: RenderedView,
    breast: BreastSpec,
    shape: BreastShape,
    grid: Grid,
    rng: np.random.Generator,
    path: np.ndarray,
) -> None:
    """Add the breast's lesions and calcifications to ``out.le`` and ``out.rc``
    (in place, within ``out.breast``) and record their masks and centres."""
    le, rc, inside = out.le, out.rc, out.breast
    for spec in breast.lesions:
        raster = render_lesion(spec, shape, grid, rng)
        rows = slice(raster.row0, raster.row0 + raster.mask.shape[0])
        cols = slice(raster.col0, raster.col0 + raster.mask.shape[1])
        local = inside[rows, cols]
        le[rows, cols] += raster.le * local * np.sqrt(path[rows, cols])
        rc[rows, cols] += raster.rc * local
        mask = np.zeros(grid.shape, dtype=bool)
        mask[rows, cols] = raster.mask & local
        out.lesion_masks[spec.lesion_id] = mask
    for cluster in breast.calcifications:
        out.calcification_centres[cluster.cluster_id] = draw_calcifications(
            le, cluster, shape, grid, amplitude=0.3 if cluster.form == "pleomorphic" else 0.22
        )


def _add_nipple_marker(
    le: np.ndarray, rc: np.ndarray, inside: np.ndarray, shape: BreastShape, grid: Grid
) -> None:
    """Draw a metal skin marker (BB) on the nipple, in place: bright in LE,
    still visible in RC, and part of the breast mask."""
    px = grid.pixel_mm
    ny, nx = shape.nipple_y_mm, shape.depth_mm + 0.25 * shape.nipple_radius_mm
    r = 1.6
    rr = slice(max(0, int((ny - 2 * r) / px)), int((ny + 2 * r) / px) + 1)
    cc = slice(max(0, int((nx - 2 * r) / px)), min(grid.cols, int((nx + 2 * r) / px) + 1))
    yy = (np.arange(rr.start, rr.stop, dtype=np.float32)[:, None] + 0.5) * px - ny
    xx = (np.arange(cc.start, cc.stop, dtype=np.float32)[None, :] + 0.5) * px - nx
    ball = smoothstep((r - np.hypot(yy, xx)) / 0.3 + 0.5)
    le[rr, cc] = np.maximum(le[rr, cc], 0.95 * ball)
    rc[rr, cc] = np.maximum(rc[rr, cc], 0.8 * ball)
    inside_marker = ball > 0.5
    inside[rr, cc] |= inside_marker


def render_view(
    breast: BreastSpec, view: View, grid: Grid, rng: np.random.Generator
) -> RenderedView:
    """Render the LE/RC pair of ``breast`` in ``view`` on ``grid``.

    Parameters
    ----------
    breast
        The breast, its lesions and calcifications.
    view
        "CC" or "MLO".
    grid
        Output pixel grid (full size or small).
    rng
        Source of randomness (texture, noise).

    Returns
    -------
    RenderedView
        Images in normalised units, masks of each lesion and the pixel
        centre of each calcification cluster.
    """
    shape = breast.shapes[view]
    px = grid.pixel_mm
    coarse = grid.coarse(0.5)

    dist_c = skin_distance_mm(shape, coarse)
    envelope_c = glandular_envelope(shape, coarse, dist_c)
    inside = breast_mask(shape, grid)
    inside_f = inside.astype(np.float32)
    dist = upsample(dist_c, grid)
    path = compressed_thickness(dist, breast.thickness_mm) * inside_f
    envelope = upsample(envelope_c, grid)
    dense = fibroglandular_density(envelope, inside, breast.density, rng, px) * inside_f
    y = grid.row_mm()
    x = grid.col_mm()
    muscle = (
        smoothstep((shape.pectoral_depth(y)[:, None] - x[None, :]) / 2.0 + 0.5) * inside_f
        if view == "MLO"
        else np.zeros_like(path)
    )
    vessels = upsample(_vessels(shape, coarse, rng), grid) * inside_f
    skin = np.exp(-dist / 0.9) * inside_f

    # peripheral equalisation keeps the thin rim near the skin close to the fat level
    le = 0.27 + 0.12 * np.sqrt(path) + 0.30 * dense * path**0.7 + 0.03 * vessels + 0.05 * skin
    if view == "MLO":
        toward_wall = np.clip(1.0 - x[None, :] / max(shape.pectoral_width_mm, 1.0), 0.0, 1.0)
        le += muscle * (0.09 + 0.06 * toward_wall)

    bpe_field = power_law_noise(coarse.shape, 2.6, rng, pixel_mm=coarse.pixel_mm, min_period_mm=3.0)
    bpe_c = BPE_AMPLITUDE[breast.bpe] * envelope_c * smoothstep(0.45 * bpe_field + 0.45)
    rim_c = 0.09 * np.exp(-dist_c / 4.0)
    clutter_c = 0.006 * power_law_noise(coarse.shape, 3.0, rng, pixel_mm=coarse.pixel_mm)
    rc = 0.20 + upsample(bpe_c + rim_c + clutter_c, grid) + 0.012 * dense
    rc += 0.035 * vessels + 0.015 * muscle

    out = RenderedView(le=le, rc=rc, breast=inside)
    _add_lesions(out, breast, shape, grid, rng, path)
    if breast.nipple_marker:
        _add_nipple_marker(le, rc, inside, shape, grid)

    noise = rng.standard_normal(grid.shape, dtype=np.float32)
    le += noise * (0.007 + 0.006 * dense)
    rc += rng.standard_normal(grid.shape, dtype=np.float32) * 0.014
    rc += upsample(0.004 * power_law_noise(coarse.shape, 1.5, rng), grid)

    background_le = 0.02 + 0.002 * noise
    background_rc = 0.025 + 0.002 * noise
    out.le = np.where(inside, le, background_le).clip(0.0, 1.0).astype(np.float32)
    out.rc = np.where(inside, rc, background_rc).clip(0.0, 1.0).astype(np.float32)
    return out

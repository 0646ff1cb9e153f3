"""Pure geometry of one lesion mask on the source image: outline, area, diameter."""

from __future__ import annotations

import contextlib

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import approximate_polygon, find_contours

__all__ = [
    "largest_component",
    "mask_window",
    "max_diameter",
    "outline",
    "remove_overlaps",
]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of ``mask`` (an empty mask stays empty).

    A lesion is reported as one region so its SEG segment, its SR outline
    and its GSPS outline describe the same pixels.
    """
    out = np.zeros(mask.shape, dtype=bool)
    window = mask_window(mask)
    if window is None:
        return out
    # labelled on the mask's bounding box only: the same regions, far fewer pixels
    crop = mask[window]
    labels, count = ndimage.label(crop, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        out[window] = crop
        return out
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    out[window] = labels == (int(np.argmax(sizes)) + 1)
    return out


def mask_window(mask: np.ndarray, margin_px: int = 0) -> tuple[slice, slice] | None:
    """The rows and columns of the mask's bounding box plus ``margin_px`` on every side,
    clipped to the image (None for an empty mask)."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(np.any(mask, axis=0))
    height, width = mask.shape
    return (
        slice(max(0, int(rows[0]) - margin_px), min(height, int(rows[-1]) + margin_px + 1)),
        slice(max(0, int(cols[0]) - margin_px), min(width, int(cols[-1]) + margin_px + 1)),
    )


def remove_overlaps(masks: list[np.ndarray], max_taken: float = 1.0) -> list[np.ndarray]:
    """Give each pixel to the first mask (highest score first) that claims it.

    A mask of which at least ``max_taken`` (a fraction of its pixels) is
    already claimed is a duplicate: it comes back empty and claims nothing.
    With ``max_taken`` 1 only a mask entirely claimed comes back empty.
    """
    taken: np.ndarray | None = None
    out = []
    for mask in masks:
        area = int(mask.sum())
        claimed = 0 if taken is None else int((mask & taken).sum())
        if area and max_taken < 1.0 and claimed >= max_taken * area:
            out.append(np.zeros_like(mask))
            continue
        own = mask if taken is None else mask & ~taken
        out.append(own)
        taken = own.copy() if taken is None else taken | own
    return out


def outline(mask: np.ndarray, tolerance_px: float = 0.5) -> list[tuple[float, float]]:
    """The boundary of the mask's region as a closed polygon of (column, row) points.

    The contour runs along the pixel edges' midpoints (marching squares at
    0.5), so filling it reproduces the mask; it is simplified with a
    tolerance of ``tolerance_px`` and closed (last point = first point).
    """
    window = mask_window(mask)
    if window is None:
        raise ValueError("the mask is empty: no outline")
    # traced on the bounding box (padded by one background pixel): the same contour as on
    # the whole image, found in the same order, for a fraction of the pixels
    padded = np.pad(mask[window].astype(np.float32), 1)
    contours = find_contours(padded, 0.5)
    origin = np.array([window[0].start, window[1].start], dtype=np.float64)
    contour = max(contours, key=len) - 1.0 + origin  # undo the padding and the crop
    contour = approximate_polygon(contour, tolerance=tolerance_px)
    points = [(float(c), float(r)) for r, c in contour]
    if points[0] != points[-1]:
        points.append(points[0])
    while len(points) < 4:  # a one-pixel lesion: keep a valid closed polygon
        points.insert(-1, points[-2])
    return points


def max_diameter(
    points: list[tuple[float, float]], spacing_mm: tuple[float, float] | None
) -> float | None:
    """Largest distance between two outline points, in mm (None without spacing)."""
    if spacing_mm is None:
        return None
    row_mm, col_mm = spacing_mm
    xy = np.array(points, dtype=np.float64) * np.array([col_mm, row_mm])
    # a degenerate (collinear) outline has no hull: then every point is used
    with contextlib.suppress(QhullError, ValueError):
        xy = xy[ConvexHull(xy).vertices]
    diff = xy[:, None, :] - xy[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())

"""The lesion and calcification entries of a synthetic study's ground truth.

:func:`cem_node.synthetic.study.generate_study` writes the document
(``ground_truth.json``); this module measures each lesion in each view from
its rendered mask (and writes the mask PNG) and locates each calcification
cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cem_node.synthetic.anatomy import BreastShape, Grid, View
from cem_node.synthetic.lesions import LesionSpec, lesion_centre_mm
from cem_node.synthetic.phantom import BreastSpec, Laterality, RenderedView

if TYPE_CHECKING:  # annotations only: the study module imports this one
    from cem_node.synthetic.study import _Image


def _bbox(mask: np.ndarray) -> list[int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def _max_diameter_mm(mask: np.ndarray, pixel_mm: float) -> float:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return 0.0
    pts = np.stack([rows, cols], axis=1).astype(np.float32)
    # extreme points of the outline suffice for the largest (Feret) diameter
    step = max(1, pts.shape[0] // 4000)
    sample = pts[::step]
    hull = sample[
        np.unique(
            np.concatenate(
                [
                    np.argsort(sample @ np.array([np.cos(a), np.sin(a)]))[[0, -1]]
                    for a in np.linspace(0, np.pi, 90)
                ]
            )
        )
    ]
    span = np.sqrt(((hull[:, None, :] - hull[None, :, :]) ** 2).sum(-1)).max()
    return round(float(span + 1.0) * pixel_mm, 1)


_MARGINS = {
    "round": "circumscribed",
    "oval": "circumscribed",
    "irregular": "indistinct",
    "spiculated": "spiculated",
}


def lesions_truth(
    study_dir: Path,
    pixel_mm: float,
    breasts: dict[Laterality, BreastSpec],
    rendered: dict[tuple[Laterality, View], RenderedView],
    images: list[_Image],
    masks: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    """The ground truth of every lesion, with its mask and geometry per view.

    Parameters
    ----------
    study_dir: pathlib.Path
        The study's folder; the mask PNGs go to its ``masks`` folder.
    pixel_mm: float
        Pixel size of the images.
    breasts: dict
        The study's breasts by laterality.
    rendered: dict
        The rendered views by (laterality, view), in canonical orientation.
    images: list
        The images written (their SOP Instance UIDs are referenced).
    masks: dict
        Filled with each mask, in stored orientation, keyed by its path in
        the document (for the contact sheet).

    Returns
    -------
    list of dict
        The document's ``lesions`` entries.
    """
    by_view: dict[tuple[str, str, str], _Image] = {
        (i.laterality, i.view, i.kind): i for i in images if not i.for_processing
    }
    lesions = []
    for lat, breast in breasts.items():
        for spec in breast.lesions:
            views = {}
            for view in ("CC", "MLO"):
                mask = rendered[(lat, view)].lesion_masks[spec.lesion_id]
                if lat == "R":
                    mask = mask[:, ::-1]
                png = f"masks/{spec.lesion_id}_{lat}{view}.png"
                Image.fromarray(mask).convert("1").save(study_dir / png, optimize=True)
                masks[png] = mask
                refs = {
                    k: by_view[(lat, view, k)].sop_instance_uid
                    for k in ("low_energy", "recombined")
                    if (lat, view, k) in by_view
                }
                views[view] = _lesion_view_truth(
                    spec, breast.shapes[view], mask, png, refs, pixel_mm
                )
            lesions.append(
                {
                    "lesion_id": spec.lesion_id,
                    "laterality": lat,
                    "pathology": spec.pathology,
                    "kind": spec.kind,
                    "morphology": spec.morphology,
                    "margin": _MARGINS[spec.morphology],
                    "enhancement": spec.enhancement,
                    "size_mm": round(spec.diameter_mm, 1),
                    "with_calcifications": spec.with_calcifications,
                    "views": views,
                }
            )
    return lesions


def _lesion_view_truth(
    spec: LesionSpec,
    shape: BreastShape,
    mask: np.ndarray,
    png: str,
    refs: dict[str, str],
    pixel_mm: float,
) -> dict[str, Any]:
    """One lesion in one view: its mask, the images it is on and its geometry."""
    row_c, col_c = lesion_centre_mm(spec, shape)
    nipple_dist = float(np.hypot(row_c - shape.nipple_y_mm, col_c - shape.depth_mm))
    ys, xs = np.nonzero(mask)
    return {
        "mask_png": png,
        "image_sop_instance_uids": refs,
        "bbox_xyxy": _bbox(mask),
        "centroid_xy": [round(float(xs.mean()), 1), round(float(ys.mean()), 1)],
        "area_mm2": round(float(mask.sum()) * pixel_mm**2, 1),
        "largest_diameter_mm": _max_diameter_mm(mask, pixel_mm),
        "nipple_distance_mm": round(nipple_dist, 1),
        # depth behind the nipple along the nipple-chest wall axis: the
        # quantity a reader matches between CC and MLO
        "posterior_depth_mm": round(shape.depth_mm - col_c, 1),
    }


def clusters_truth(
    grid: Grid,
    breasts: dict[Laterality, BreastSpec],
    rendered: dict[tuple[Laterality, View], RenderedView],
) -> list[dict[str, Any]]:
    """The ground truth of every calcification cluster: its centre per view.

    Parameters
    ----------
    grid: Grid
        The pixel grid of the images.
    breasts: dict
        The study's breasts by laterality.
    rendered: dict
        The rendered views by (laterality, view), in canonical orientation.

    Returns
    -------
    list of dict
        The document's ``calcification_clusters`` entries, centres in the
        stored orientation (x, y).
    """
    clusters = []
    for lat, breast in breasts.items():
        for cluster in breast.calcifications:
            centres = {}
            for view in ("CC", "MLO"):
                row, col = rendered[(lat, view)].calcification_centres[cluster.cluster_id]
                if lat == "R":
                    col = grid.cols - col
                centres[view] = [round(col, 1), round(row, 1)]
            clusters.append(
                {
                    "cluster_id": cluster.cluster_id,
                    "laterality": lat,
                    "form": cluster.form,
                    "count": len(cluster.radii_mm),
                    "lesion_id": cluster.lesion_id,
                    "centre_xy": centres,
                }
            )
    return clusters

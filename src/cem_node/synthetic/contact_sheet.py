"""A PNG contact sheet of one synthetic study with its ground truth drawn in.

Layout as a reading room hangs a CEM study: columns RCC, LCC, RMLO, LMLO
(right breast on the left of the screen), rows low-energy then recombined,
an extra column for any non-CEM image. Lesion outlines: red malignant,
green benign enhancing, yellow non-enhancing (cyst); calcification clusters
in cyan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

TILE_HEIGHT = 420
COLOURS = {"malignant": (235, 50, 50), "benign": (60, 200, 80), "cyst": (240, 220, 40)}
CALC_COLOUR = (40, 220, 240)
ORDER = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _windowed(pixels: np.ndarray, width: int, window: tuple[float, float]) -> Image.Image:
    """8-bit rendering of a stored image with its VOI window (linear)."""
    centre, span = window
    lo = centre - span / 2
    small = Image.fromarray(pixels.astype(np.float32), mode="F").resize(
        (width, TILE_HEIGHT), Image.Resampling.BOX
    )
    arr = np.asarray(small, dtype=np.float32)
    scaled = np.clip((arr - lo) / max(span, 1.0), 0, 1) * 255
    return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")


def _outline(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    small = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    edge = small & ~ndimage.binary_erosion(small)
    return ndimage.binary_dilation(edge)


def _draw_header(
    draw: ImageDraw.ImageDraw,
    truth: dict[str, Any],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    small: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> None:
    """The patient, breasts and lesions in a line each, and the disclaimer."""
    p, s = truth["patient"], truth["study"]
    breasts = ", ".join(
        f"{b['laterality']}: density {b['density']}, BPE {b['bpe']}" for b in truth["breasts"]
    )
    lesions = (
        "; ".join(
            f"{les['lesion_id']} {les['pathology']} {les['morphology']} "
            f"{les['enhancement']} {les['size_mm']} mm"
            for les in truth["lesions"]
        )
        or "no lesion"
    )
    draw.text(
        (8, 4),
        f"{p['patient_name']}  age {p['age_years']}  {s['accession_number']}  {breasts}",
        fill=(230, 230, 230),
        font=font,
    )
    draw.text((8, 22), f"lesions: {lesions}", fill=(230, 230, 230), font=small)
    draw.text((8, 38), truth["disclaimer"], fill=(250, 160, 60), font=small)


def _draw_truth(
    tile: Image.Image,
    truth: dict[str, Any],
    masks: dict[str, np.ndarray],
    lat: str,
    view: str,
    scale: float,
    small: ImageFont.ImageFont | ImageFont.FreeTypeFont,
) -> Image.Image:
    """A copy of one view's tile with its lesion outlines and names and its
    calcification clusters drawn in; ``scale`` is tile pixels per image pixel."""
    tile_w = tile.width
    arr = np.array(tile)
    for lesion in truth["lesions"]:
        if lesion["laterality"] != lat or view not in lesion["views"]:
            continue
        mask = masks[lesion["views"][view]["mask_png"]]
        key = "cyst" if lesion["kind"] == "cyst" else lesion["pathology"]
        arr[_outline(mask, (tile_w, TILE_HEIGHT))] = COLOURS[key]
    tile = Image.fromarray(arr)
    tdraw = ImageDraw.Draw(tile)
    for lesion in truth["lesions"]:
        if lesion["laterality"] == lat and view in lesion["views"]:
            x0, y0, _, _ = lesion["views"][view]["bbox_xyxy"]
            key = "cyst" if lesion["kind"] == "cyst" else lesion["pathology"]
            tdraw.text(
                (x0 * scale, max(0, y0 * scale - 14)),
                lesion["lesion_id"],
                fill=COLOURS[key],
                font=small,
            )
    for cluster in truth["calcification_clusters"]:
        if cluster["laterality"] == lat:
            cx, cy = (v * scale for v in cluster["centre_xy"][view])
            tdraw.ellipse([cx - 9, cy - 9, cx + 9, cy + 9], outline=CALC_COLOUR, width=2)
    return tile


def write_contact_sheet(
    path: Path,
    truth: dict[str, Any],
    pixels: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
) -> None:
    """Render the study's images with the ground truth and save a PNG.

    Parameters
    ----------
    path
        Output PNG.
    truth
        The study's ground-truth document (see :mod:`cem_node.synthetic.study`).
    pixels
        Stored pixel arrays keyed by DICOM file name (``LE_RCC.dcm``...).
    masks
        Lesion masks (stored orientation) keyed by their ``mask_png`` path in
        the ground truth.
    """
    geometry = truth["image_geometry"]
    rows, cols = geometry["rows"], geometry["columns"]
    tile_w = round(TILE_HEIGHT * cols / rows)
    by_key = {
        (i["laterality"], i["view"], i["kind"]): Path(i["file"]).name for i in truth["images"]
    }
    windows = {Path(i["file"]).name: tuple(i["window_center_width"]) for i in truth["images"]}
    extras = [i for i in truth["images"] if i["kind"] == "non_contrast"]
    n_cols = 4 + len(extras)
    header = 56
    label_h = 18
    sheet = Image.new("RGB", (n_cols * tile_w, header + 2 * (TILE_HEIGHT + label_h)), (18, 18, 18))
    draw = ImageDraw.Draw(sheet)
    font, small = _font(15), _font(12)

    _draw_header(draw, truth, font, small)

    def place(col: int, row: int, name: str | None, title: str, lat: str, view: str) -> None:
        x = col * tile_w
        y = header + row * (TILE_HEIGHT + label_h)
        draw.text((x + 4, y + 1), title, fill=(200, 200, 200), font=small)
        y += label_h
        if name is None:
            draw.rectangle(
                [x + 2, y + 2, x + tile_w - 3, y + TILE_HEIGHT - 3], outline=(120, 40, 40)
            )
            draw.text(
                (x + 10, y + TILE_HEIGHT // 2),
                "not sent (edge case)",
                fill=(200, 80, 80),
                font=small,
            )
            return
        tile = _windowed(pixels[name], tile_w, windows[name])
        tile = _draw_truth(tile, truth, masks, lat, view, tile_w / cols, small)
        sheet.paste(tile, (x, y))

    for col, (lat, view) in enumerate(ORDER):
        for row, kind in enumerate(("low_energy", "recombined")):
            if not any(b["laterality"] == lat for b in truth["breasts"]):
                continue
            label = f"{lat}{view} {'LE' if kind == 'low_energy' else 'RC'}"
            place(col, row, by_key.get((lat, view, kind)), label, lat, view)
    for n, extra in enumerate(extras):
        place(
            4 + n,
            0,
            Path(extra["file"]).name,
            f"{extra['laterality']}{extra['view']} 2D (non-CEM)",
            extra["laterality"],
            extra["view"],
        )
    sheet.save(path, optimize=False)

"""Overlay PNGs: each view's RC and LE images with the lesion outlines and scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cem_node.contracts.findings import Findings, Lesion

__all__ = ["LABEL_COLOURS", "write_view_overlay"]

LABEL_COLOURS = {"malignant": "#ff3030", "benign": "#30d0ff"}
_MAX_DISPLAY_ROWS = 1400


def _display(pixels: np.ndarray) -> np.ndarray:
    """Window to the 1st..99.5th percentile of the non-zero pixels; downsample for display."""
    step = max(1, int(np.ceil(pixels.shape[0] / _MAX_DISPLAY_ROWS)))
    small = pixels[::step, ::step].astype(np.float32)
    values = small[small > 0]
    if values.size == 0:
        values = small.ravel()
    low, high = np.percentile(values, [1.0, 99.5])
    return np.clip((small - low) / max(float(high - low), 1e-6), 0.0, 1.0)


def _label(lesion: Lesion, caveat: str | None) -> str:
    rad = "n/a" if lesion.radiomics_probability is None else f"{lesion.radiomics_probability:.2f}"
    return (
        f"{lesion.lesion_id}  {lesion.fused_label} {lesion.fused_probability:.2f}\n"
        f"DL {lesion.dl_probability:.2f} / Rad {rad}" + (f"\n{caveat}" if caveat else "")
    )


def write_view_overlay(
    findings: Findings,
    laterality: str,
    view: str,
    recombined: np.ndarray,
    low_energy: np.ndarray,
    path: Path,
) -> Path:
    """Draw one view's outlines and scores on its RC (left) and LE (right) images."""
    lesions = [les for les in findings.lesions if (les.laterality, les.view) == (laterality, view)]
    step = max(1, int(np.ceil(recombined.shape[0] / _MAX_DISPLAY_ROWS)))
    height = 8.0
    width = height * 2 * recombined.shape[1] / recombined.shape[0] + 0.4
    figure = Figure(figsize=(width, height + 0.9), dpi=110)
    FigureCanvasAgg(figure)
    model = findings.model
    title = f"{laterality} {view}: {len(lesions)} lesion(s) · {model.name} {model.version}"
    if model.disclaimer:
        title += f" · {model.disclaimer}"
    figure.suptitle(title, fontsize=10)
    for column, (name, pixels) in enumerate(
        (("recombined", recombined), ("low energy", low_energy))
    ):
        axes = figure.add_subplot(1, 2, column + 1)
        axes.imshow(_display(pixels), cmap="gray", vmin=0, vmax=1, interpolation="antialiased")
        axes.set_title(name, fontsize=9)
        axes.set_axis_off()
        for lesion in lesions:
            colour = LABEL_COLOURS[lesion.fused_label]
            xy = np.array(lesion.outline) / step
            axes.plot(xy[:, 0], xy[:, 1], color=colour, linewidth=1.2)
            x0, y0 = lesion.box[0] / step, lesion.box[1] / step
            axes.text(
                x0,
                max(y0 - 4, 0),
                _label(lesion, model.score_caveat),
                color=colour,
                fontsize=7,
                va="bottom",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "linewidth": 0},
            )
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, wspace=0.02)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path

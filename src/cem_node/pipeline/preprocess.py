"""The paper's DL preprocessing of one low-energy / recombined pair, and its exact inverse.

PAPER.md "DL preprocessing", in order:

1. breast mask on the recombined (RC) image (:func:`breast_mask`);
2. LE and RC multiplied by it and cropped to its bounding box; the crop
   offset is KEPT in a :class:`PreprocessGeometry`;
3. per image, on the crop: clip to the 1st..99th percentile of the breast
   pixels, requantise to 256 levels, rescale to 0..255 uint8;
4. CLAHE (16 x 16 tiles): LE with clip 2.5, RC with clip 2.5 and 1.0;
5. three channels (LE-CLAHE2.5, RC-CLAHE2.5, RC-CLAHE1.0);
6. an optional mirror of right breasts (``flip_right``), then the ONE resize
   rule of training and inference (:func:`resize_shape`).

:class:`PreprocessGeometry` maps points, boxes and masks between the source
image and the network input, both ways, so detections come back in the
pixel coordinates of the full-size source image (column, row; the centre of
the top-left pixel is (0, 0)), as :mod:`cem_node.contracts.findings` requires.

Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from cem_node.contracts.params import PreprocessParams
from cem_node.pipeline.pixels import SourceImage

__all__ = [
    "PreprocessError",
    "PreprocessGeometry",
    "PreprocessedPair",
    "breast_mask",
    "preprocess_mask_for_training",
    "preprocess_pair",
    "resize_shape",
]

#: The breast mask is computed on a copy whose longer side is at most this long.
MASK_WORK_SIDE = 1024
#: Contrast compression before Otsu: log(1 + k x) of the image scaled to 0..1.
MASK_LOG_GAIN = 100.0
#: Opening radius (fraction of the working copy's longer side) that detaches markers.
MASK_OPEN_FRACTION = 1 / 256
#: A breast covers at least this fraction of the image.
MASK_MIN_FRACTION = 0.01


class PreprocessError(ValueError):
    """An image pair cannot be preprocessed (no breast found, flat image, mismatched shapes)."""


# --- breast mask ------------------------------------------------------------------------------


def breast_mask(recombined: np.ndarray) -> np.ndarray:
    """The breast of a recombined image: Otsu threshold, largest region, holes filled.

    The image is reduced (area averaging) so its longer side is at most
    :data:`MASK_WORK_SIDE`, smoothed (Gaussian, sigma 1 px), scaled to 0..1
    between its 0.5th and 99.5th percentiles and compressed with
    ``log(1 + 100 x)``: the Otsu threshold then separates the dark background
    from all breast tissue, not the enhancing tissue from the fatty one (a
    threshold on the linear values loses the dark parts of the breast on
    strongly enhancing images). A small opening detaches markers that touch
    the skin through thin bridges; the largest connected region is kept (so
    markers, labels and text, which are separate, are dropped), its holes are
    filled, and the mask is brought back to full size.

    Parameters
    ----------
    recombined
        The recombined image (rows, columns), MONOCHROME2 sense.

    Returns
    -------
    numpy.ndarray
        bool array of the image's shape, True on the breast (the pectoral
        muscle of an MLO view included).

    Raises
    ------
    PreprocessError
        When the image is not 2-D, holds non-finite values, is flat, or the
        largest region covers less than :data:`MASK_MIN_FRACTION` of it.
    """
    image = np.asarray(recombined)
    if image.ndim != 2 or min(image.shape) < 2:
        raise PreprocessError(f"breast mask: expected a 2-D image, got shape {image.shape}")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise PreprocessError("breast mask: the recombined image holds NaN or infinite values")
    rows, cols = image.shape
    lowest, highest = float(image.min()), float(image.max())
    if highest <= lowest:
        raise PreprocessError(
            f"breast mask: the recombined image is flat (every pixel is {lowest:g}): no breast"
        )
    factor = min(1.0, MASK_WORK_SIDE / max(rows, cols))
    work = image
    if factor < 1.0:
        size = (max(2, round(cols * factor)), max(2, round(rows * factor)))
        work = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    work = cv2.GaussianBlur(work, (0, 0), 1.0, borderType=cv2.BORDER_REPLICATE)
    low, high = (float(v) for v in np.percentile(work, [0.5, 99.5]))
    if high <= low:  # flat but for a few pixels: the largest region is then too small
        low, high = float(work.min()), float(work.max())
    if high <= low:
        raise PreprocessError("breast mask: the recombined image is flat after smoothing")
    scaled = np.clip((work - low) / (high - low), 0.0, 1.0)
    compressed = np.log1p(MASK_LOG_GAIN * scaled) / np.log1p(MASK_LOG_GAIN)
    threshold = float(threshold_otsu(compressed))
    foreground = (compressed > threshold).astype(np.uint8)
    radius = max(1, round(max(work.shape) * MASK_OPEN_FRACTION))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    foreground = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, disk)
    mask = _largest_region(foreground.astype(bool))
    if mask is None:
        raise PreprocessError(
            "breast mask: nothing brighter than the Otsu threshold is left after the opening"
        )
    mask = _fill_holes(mask)
    fraction = float(mask.mean())
    if fraction < MASK_MIN_FRACTION:
        raise PreprocessError(
            f"breast mask: the largest bright region covers {100 * fraction:.2f}% of the image "
            f"(at least {100 * MASK_MIN_FRACTION:g}% expected): no breast found"
        )
    if factor < 1.0:
        full = cv2.resize(mask.astype(np.float32), (cols, rows), interpolation=cv2.INTER_LINEAR)
        mask = _largest_region(full >= 0.5)
        if mask is None:  # cannot happen for a region above MASK_MIN_FRACTION
            raise PreprocessError("breast mask: the mask vanished when brought to full size")
        mask = _fill_holes(mask)
    return mask


def _largest_region(mask: np.ndarray) -> np.ndarray | None:
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    # the background regions that do not touch the border are holes (faster than
    # ndimage.binary_fill_holes on full-size images)
    labels, count = ndimage.label(~mask)
    if count == 0:
        return mask
    border = np.concatenate((labels[0], labels[-1], labels[:, 0], labels[:, -1]))
    outside = np.zeros(count + 1, dtype=bool)
    outside[np.unique(border)] = True
    outside[0] = False
    return ~outside[labels]


# --- the resize rule --------------------------------------------------------------------------


def resize_shape(crop_shape: tuple[int, int], params: PreprocessParams) -> tuple[int, int]:
    """The network input shape of a crop: the one resize rule of training and inference.

    ``scale = min(short_side / min(h, w), max_long_side / max(h, w))``, and
    the shape is ``(round(h * scale), round(w * scale))`` (halves rounded
    up, at least 1).

    Parameters
    ----------
    crop_shape
        (rows, columns) of the crop.
    params
        The preprocessing parameters (``short_side``, ``max_long_side``).

    Returns
    -------
    tuple of int
        (rows, columns) of the network input.
    """
    h, w = (int(v) for v in crop_shape)
    if h < 1 or w < 1:
        raise PreprocessError(f"resize: empty crop of shape {crop_shape}")
    scale = min(params.short_side / min(h, w), params.max_long_side / max(h, w))
    return max(1, math.floor(h * scale + 0.5)), max(1, math.floor(w * scale + 0.5))


def _interpolation(source_shape: tuple[int, int], target_shape: tuple[int, int]) -> int:
    shrinking = target_shape[0] * target_shape[1] < source_shape[0] * source_shape[1]
    return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """cv2.resize to (rows, columns); INTER_AREA when shrinking, INTER_LINEAR otherwise."""
    if image.shape[:2] == tuple(shape):
        return image.copy()
    method = _interpolation(image.shape[:2], shape)
    return cv2.resize(image, (int(shape[1]), int(shape[0])), interpolation=method)


# --- geometry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessGeometry:
    """Where the network input lies on the source image, and the exact maps both ways.

    Pixel coordinates are (column, row) with the centre of the top-left pixel
    at (0, 0), on both images. Crop column ``c`` becomes column
    ``crop_w - 1 - c`` when :attr:`flipped`; the resize maps pixel centres
    ``x_net = (x_crop + 0.5) * net_w / crop_w - 0.5`` (what cv2.resize
    does). Box edges (x0, y0, x1, y1 with pixel ``c`` spanning [c, c + 1),
    the convention of torchvision and of :class:`cem_node.contracts.findings.LesionMask`)
    scale without the half pixel: ``x_net = x_crop * net_w / crop_w``.

    Attributes
    ----------
    source_shape
        (rows, columns) of the source image.
    crop
        (y0, x0, y1, x1) of the crop on the source image, y1 and x1 exclusive.
    flipped
        True when the crop was mirrored left-right (a right breast with
        ``flip_right``).
    network_shape
        (rows, columns) of the network input.
    """

    source_shape: tuple[int, int]
    crop: tuple[int, int, int, int]
    flipped: bool
    network_shape: tuple[int, int]

    def __post_init__(self) -> None:
        rows, cols = self.source_shape
        y0, x0, y1, x1 = self.crop
        if not (0 <= y0 < y1 <= rows and 0 <= x0 < x1 <= cols):
            raise ValueError(
                f"crop {self.crop} is empty or outside a source of {self.source_shape}"
            )
        if min(self.network_shape) < 1:
            raise ValueError(f"network shape {self.network_shape} is empty")

    @property
    def crop_shape(self) -> tuple[int, int]:
        """(rows, columns) of the crop."""
        y0, x0, y1, x1 = self.crop
        return y1 - y0, x1 - x0

    @property
    def scale(self) -> tuple[float, float]:
        """(row, column) scale from the crop to the network input."""
        (ch, cw), (nh, nw) = self.crop_shape, self.network_shape
        return nh / ch, nw / cw

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (e.g. for a cache of preprocessed training images)."""
        return {
            "source_shape": list(self.source_shape),
            "crop": list(self.crop),
            "flipped": self.flipped,
            "network_shape": list(self.network_shape),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessGeometry:
        """Inverse of :meth:`as_dict`."""
        return cls(
            source_shape=_pair_of_ints(data["source_shape"]),
            crop=tuple(int(v) for v in data["crop"]),  # type: ignore[arg-type]
            flipped=bool(data["flipped"]),
            network_shape=_pair_of_ints(data["network_shape"]),
        )

    # points: pixel centres ----------------------------------------------------------------

    def points_to_network(self, points: Any) -> np.ndarray:
        """Map (column, row) points from the source image to the network input.

        Parameters
        ----------
        points
            Array-like (N, 2) or (2,) of (column, row) in source pixels.

        Returns
        -------
        numpy.ndarray
            float64 array of the same shape, in network pixels.
        """
        pts = _points(points)
        y0, x0, _, _ = self.crop
        (ch, cw), (nh, nw) = self.crop_shape, self.network_shape
        x = pts[..., 0] - x0
        if self.flipped:
            x = (cw - 1) - x
        y = pts[..., 1] - y0
        return np.stack(((x + 0.5) * nw / cw - 0.5, (y + 0.5) * nh / ch - 0.5), axis=-1)

    def points_to_source(self, points: Any) -> np.ndarray:
        """Map (column, row) points from the network input to the source image.

        The exact inverse of :meth:`points_to_network`.
        """
        pts = _points(points)
        y0, x0, _, _ = self.crop
        (ch, cw), (nh, nw) = self.crop_shape, self.network_shape
        x = (pts[..., 0] + 0.5) * cw / nw - 0.5
        if self.flipped:
            x = (cw - 1) - x
        y = (pts[..., 1] + 0.5) * ch / nh - 0.5
        return np.stack((x + x0, y + y0), axis=-1)

    # boxes: pixel edges -------------------------------------------------------------------

    def boxes_to_network(self, boxes: Any) -> np.ndarray:
        """Map boxes (x0, y0, x1, y1; pixel edges) from the source image to the network input.

        Parameters
        ----------
        boxes
            Array-like (N, 4) or (4,); pixel ``c`` spans [c, c + 1).

        Returns
        -------
        numpy.ndarray
            float64 array of the same shape; x0 <= x1 is kept under the flip.
        """
        bx = _boxes(boxes)
        y0, x0, _, _ = self.crop
        (ch, cw), (nh, nw) = self.crop_shape, self.network_shape
        left, right = bx[..., 0] - x0, bx[..., 2] - x0
        if self.flipped:
            left, right = cw - right, cw - left
        top, bottom = bx[..., 1] - y0, bx[..., 3] - y0
        sx, sy = nw / cw, nh / ch
        return np.stack((left * sx, top * sy, right * sx, bottom * sy), axis=-1)

    def boxes_to_source(self, boxes: Any) -> np.ndarray:
        """Map boxes (x0, y0, x1, y1; pixel edges) from the network input to the source image.

        The exact inverse of :meth:`boxes_to_network`.
        """
        bx = _boxes(boxes)
        y0, x0, _, _ = self.crop
        (ch, cw), (nh, nw) = self.crop_shape, self.network_shape
        sx, sy = cw / nw, ch / nh
        left, right = bx[..., 0] * sx, bx[..., 2] * sx
        if self.flipped:
            left, right = cw - right, cw - left
        top, bottom = bx[..., 1] * sy, bx[..., 3] * sy
        return np.stack((left + x0, top + y0, right + x0, bottom + y0), axis=-1)

    # masks --------------------------------------------------------------------------------

    def image_to_network(self, image: np.ndarray) -> np.ndarray:
        """Crop, mirror and resize a source-size array (rows, columns[, channels]) like the input.

        INTER_AREA when shrinking, INTER_LINEAR when enlarging; the dtype is
        kept (use float32 for masks).
        """
        array = np.asarray(image)
        if array.shape[:2] != tuple(self.source_shape):
            raise ValueError(
                f"array of shape {array.shape[:2]} does not match the source {self.source_shape}"
            )
        y0, x0, y1, x1 = self.crop
        crop = array[y0:y1, x0:x1]
        if self.flipped:
            crop = crop[:, ::-1]
        return _resize(np.ascontiguousarray(crop), self.network_shape)

    def mask_to_network(self, source_mask: np.ndarray) -> np.ndarray:
        """A boolean mask on the source image, as a boolean mask on the network input.

        The crop is mirrored if need be and resized as a float (area average
        when shrinking, linear when enlarging), then thresholded at 0.5.
        Parts of the mask outside the crop are dropped.
        """
        mask = np.asarray(source_mask).astype(np.float32)
        return self.image_to_network(mask) >= 0.5

    def probability_to_source(self, network_map: np.ndarray) -> np.ndarray:
        """A map on the network input (mask or probability) on the full source image.

        Resized to the crop (linear interpolation when enlarging, area average
        when shrinking), mirrored back, pasted at the crop offset; 0 outside
        the crop.

        Returns
        -------
        numpy.ndarray
            float32 array of :attr:`source_shape`.
        """
        values = np.asarray(network_map)
        if values.shape != tuple(self.network_shape):
            raise ValueError(
                f"map of shape {values.shape} does not match the network input {self.network_shape}"
            )
        crop = _resize(values.astype(np.float32), self.crop_shape)
        if self.flipped:
            crop = crop[:, ::-1]
        out = np.zeros(self.source_shape, dtype=np.float32)
        y0, x0, y1, x1 = self.crop
        out[y0:y1, x0:x1] = crop
        return out

    def mask_to_source(self, network_mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """A mask or probability map on the network input as a boolean mask on the source image.

        :meth:`probability_to_source` thresholded: True where the resampled
        value is at least ``threshold``.
        """
        return self.probability_to_source(network_mask) >= threshold


def _pair_of_ints(value: Any) -> tuple[int, int]:
    a, b = value
    return int(a), int(b)


def _points(points: Any) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-1:] != (2,):
        raise ValueError(f"points must be (N, 2) or (2,) of (column, row), got shape {pts.shape}")
    return pts


def _boxes(boxes: Any) -> np.ndarray:
    bx = np.asarray(boxes, dtype=np.float64)
    if bx.shape[-1:] != (4,):
        raise ValueError(f"boxes must be (N, 4) or (4,) of (x0, y0, x1, y1), got shape {bx.shape}")
    return bx


def preprocess_mask_for_training(
    mask_source: np.ndarray, geometry: PreprocessGeometry
) -> np.ndarray:
    """A lesion mask on the source image as the network's target mask.

    The same as :meth:`PreprocessGeometry.mask_to_network`, so training
    targets and inference outputs share one geometry.
    """
    return geometry.mask_to_network(mask_source)


# --- the pair ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PreprocessedPair:
    """The network input of one LE/RC pair, and how to map results back.

    Attributes
    ----------
    image
        float32 array (3, H, W) in [0, 1]: (LE-CLAHE a, RC-CLAHE b, RC-CLAHE c)
        with the clip limits of :class:`PreprocessParams` (2.5, 2.5, 1.0).
    geometry
        The crop, flip and resize that map the network input to the source.
    breast_mask
        bool array of the source image's shape (from the RC image).
    """

    image: np.ndarray
    geometry: PreprocessGeometry
    breast_mask: np.ndarray


def preprocess_pair(
    low_energy: np.ndarray | SourceImage,
    recombined: np.ndarray | SourceImage,
    params: PreprocessParams,
    laterality: str | None = None,
) -> PreprocessedPair:
    """Preprocess one low-energy / recombined pair as PAPER.md "DL preprocessing" says.

    Parameters
    ----------
    low_energy, recombined
        The two images of one breast and view (arrays in MONOCHROME2 sense,
        or :class:`SourceImage`), of the same shape.
    params
        The preprocessing parameters of the model bundle.
    laterality
        ``"L"`` or ``"R"``; needed when ``params.flip_right`` is set. When
        None, the laterality of a :class:`SourceImage` argument is used.

    Returns
    -------
    PreprocessedPair
        The (3, H, W) float32 network input, its geometry and the breast mask.

    Raises
    ------
    PreprocessError
        When the shapes differ, no breast is found, an image is flat inside
        the breast, or ``flip_right`` is set and the laterality is unknown.
    """
    if laterality is None:
        for image in (recombined, low_energy):
            if isinstance(image, SourceImage) and image.laterality is not None:
                laterality = image.laterality
                break
    if laterality is not None and laterality not in ("L", "R"):
        raise PreprocessError(f"laterality must be 'L', 'R' or None, got {laterality!r}")
    le = _array(low_energy, "low-energy")
    rc = _array(recombined, "recombined")
    if le.shape != rc.shape:
        raise PreprocessError(
            f"low-energy image {le.shape} and recombined image {rc.shape} differ in shape"
        )
    flip = bool(params.flip_right and laterality == "R")
    if params.flip_right and laterality is None:
        raise PreprocessError("flip_right is set but the laterality of the pair is unknown")

    mask = breast_mask(rc)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    inside = mask[y0:y1, x0:x1]
    le8 = _to_uint8(le[y0:y1, x0:x1], inside, params, "low-energy")
    rc8 = _to_uint8(rc[y0:y1, x0:x1], inside, params, "recombined")
    tiles = (params.clahe_tiles, params.clahe_tiles)
    channels = [
        cv2.createCLAHE(clipLimit=params.clahe_clip_low_energy, tileGridSize=tiles).apply(le8),
        cv2.createCLAHE(clipLimit=params.clahe_clip_recombined[0], tileGridSize=tiles).apply(rc8),
        cv2.createCLAHE(clipLimit=params.clahe_clip_recombined[1], tileGridSize=tiles).apply(rc8),
    ]
    stacked = np.stack(channels, axis=-1)  # (h, w, 3) for cv2
    if flip:
        stacked = stacked[:, ::-1]
    network_shape = resize_shape(stacked.shape[:2], params)
    resized = _resize(np.ascontiguousarray(stacked), network_shape)
    image = np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)
    geometry = PreprocessGeometry(
        source_shape=(int(rc.shape[0]), int(rc.shape[1])),
        crop=(y0, x0, y1, x1),
        flipped=flip,
        network_shape=network_shape,
    )
    return PreprocessedPair(image=image, geometry=geometry, breast_mask=mask)


def _array(image: np.ndarray | SourceImage, name: str) -> np.ndarray:
    array = np.asarray(image.pixels if isinstance(image, SourceImage) else image)
    if array.ndim != 2:
        raise PreprocessError(f"{name} image: expected a 2-D array, got shape {array.shape}")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise PreprocessError(f"{name} image holds NaN or infinite values")
    return array


def _to_uint8(
    crop: np.ndarray, inside: np.ndarray, params: PreprocessParams, name: str
) -> np.ndarray:
    """Masked crop -> percentile clip over the breast -> ``levels`` levels -> 0..255 uint8."""
    values = crop[inside]
    low, high = (
        float(v) for v in np.percentile(values, [params.percentile_low, params.percentile_high])
    )
    if not high > low:
        raise PreprocessError(
            f"{name} image is flat inside the breast mask (percentiles "
            f"{params.percentile_low:g} and {params.percentile_high:g} are both {low:g})"
        )
    scaled = np.clip((crop - np.float32(low)) / np.float32(high - low), 0.0, 1.0)
    top = params.levels - 1
    levels = np.floor(scaled * top + 0.5)
    out = np.floor(levels * (255.0 / top) + 0.5).astype(np.uint8)
    out[~inside] = 0  # the breast mask multiplies the image
    return out

"""Handcrafted radiomics of one lesion on the low-energy and recombined images.

PAPER.md "Handcrafted radiomics": pyradiomics 3.0.1 on the ORIGINAL (not
preprocessed) LE and RC images with the lesion mask; image types Original,
LoG (the sigmas of :class:`~cem_node.contracts.params.RadiomicsSettings`) and
Wavelet; feature classes firstorder, shape2D, glcm, glrlm, glszm, gldm,
ngtdm; ``binWidth`` 3, ``force2D``, no normalisation, no resampling, label 1.

How the pyradiomics pitfall is avoided
--------------------------------------
pyradiomics' filters and feature classes do not agree on one input geometry
for a 2-D mammogram:

* on a one-slice 3-D image (``force2D``, ``force2Ddimension`` 0) the LoG image
  types are silently skipped ("Image too small to apply LoG filter");
* on a 2-D image, ``force2Ddimension`` 0 removes the ROW axis: the wavelet
  gives only ``wavelet-H`` / ``wavelet-L`` and -- not documented anywhere --
  the texture matrices (glcm, glrlm, ...) see only the horizontal direction.

So each image is extracted like this (:func:`extract_image_features`): the
image and the mask are cropped to the mask's bounding box plus a margin (see
"Crop" below); the texture, first-order and shape features of every image
type are computed by pyradiomics' own feature classes on a ONE-SLICE 3-D
image with the settings of :func:`pyradiomics_params` (in-plane, all four 2-D
directions); the Original and Wavelet images are made by pyradiomics'
``imageoperations`` from that one-slice image (4 sub-bands LL, LH, HL, HH);
the LoG images are made by ``imageoperations.getLoGImage`` from the 2-D image
(a 2-D, in-plane LoG) and then lifted to one slice. Unless a bin width is
widened (below), the values equal those of
``RadiomicsFeatureExtractor(params).execute(image, mask)`` on the same cropped
input: as a one-slice image with ``params = pyradiomics_params(s)`` for
Original and Wavelet, as a 2-D image with ``force2D`` off for LoG (which
filters in-plane and uses all four in-plane directions too); the Original
features also equal those of the whole, uncropped image (all checked in
tests/test_radiomics.py).

Feature names
-------------
pyradiomics' names plus the image suffix (``_low_energy`` / ``_recombined``):
``<imagetype>_<class>_<feature><suffix>`` with image types ``original``,
``log-sigma-<sigma with "." as "-">-mm-3D`` (pyradiomics calls every LoG
"-3D" even though it is 2-D here), ``wavelet-LL``, ``wavelet-LH``,
``wavelet-HL``, ``wavelet-HH``; shape features only as ``original_shape2D_*``.
With the default settings an image gives 9 shape2D + 9 x 93 = 846 features, a
lesion 1692.

Selective extraction
--------------------
At inference the classifier reads about ten of the 1692 features, so the
analysis passes an :class:`ExtractionPlan` (:func:`plan_extraction` of the
classifier's selected features): per image only the needed image types (LoG
sigmas, wavelet sub-bands) and, per image type, only the needed features are
computed; an image with no needed feature is not extracted at all. The crop is
that of the full settings, so the values equal the full extraction's. Training
extracts everything (feature selection needs it). The feature names, the
pyradiomics parameters and the plans are in :mod:`cem_node.pipeline.radiomics_plan`
(re-exported here).

Crop
----
The cost must not depend on the image size, so the image is cropped to the
mask's bounding box plus :func:`crop_margin` pixels: at least
``crop_margin_px``, and at least 8 LoG sigmas (in pixels) and 6 pixels for the
wavelet, so the filters see the same neighbourhood as on the whole image. With
16 pixels only, at 0.1 mm pixels, the LoG features of sigma 1 mm (10 pixels)
of a synthetic lesion differed from those of the whole image by up to 270 %
(boundary effects of the recursive Gaussian), with 8 sigmas by < 1e-5. Original and Wavelet features
do not change at all. The margin stays bounded (80 pixels at 0.1 mm), so the
cost does not grow with the image.

Grey-level cap
--------------
Every image the features are computed on (the original and each filtered
one) is discretised with ``binWidth``, unless its range inside the mask
divided by ``binWidth`` exceeds ``max_grey_levels``: then that image's bin
width is widened to ``range / max_grey_levels`` (pyradiomics' bin edges start
at a multiple of the width, so at most ``max_grey_levels`` + 2 levels) and a
note is recorded and logged (WARNING for the original image, INFO for a
filtered one). Each image type is capped on its own because pyradiomics' glcm
costs about Ng^3 (measured on a 240-pixel disc: 0.7 s at 256 levels, 4.3 s at
512, 60 s at 1024), and a filtered image can have a much wider range than the
original inside the mask (wavelet-LL about twice; LoG of a bright spot just
outside the mask). The price: wavelet-LL is widened for lesions with more than
about 130-150 levels in the original (a 24 mm synthetic RC lesion with 164
levels gave 287 in wavelet-LL).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk  # noqa: N813 (the usual name)
from numpy.typing import NDArray
from radiomics import imageoperations
from radiomics.featureextractor import RadiomicsFeatureExtractor

from cem_node.contracts.params import RadiomicsSettings
from cem_node.pipeline.lesion_geometry import mask_window
from cem_node.pipeline.radiomics_plan import (
    IMAGE_SUFFIXES,
    WAVELET_SUBBANDS,
    ExtractionPlan,
    FeaturePlanError,
    ImagePlan,
    expected_image_types,
    log_image_type,
    plan_extraction,
    planned_pyradiomics_params,
    pyradiomics_params,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "WAVELET_SUBBANDS",
    "ExtractionPlan",
    "FeaturePlanError",
    "ImageFeatures",
    "ImagePlan",
    "LesionRadiomics",
    "RadiomicsError",
    "RadiomicsJob",
    "RadiomicsPool",
    "crop_box",
    "crop_margin",
    "expected_image_types",
    "extract_image_features",
    "extract_lesion_features",
    "extract_many",
    "log_image_type",
    "make_job",
    "plan_extraction",
    "pyradiomics_params",
    "result_or_error",
    "run_job",
]

logger = logging.getLogger(__name__)


_RADIOMICS_LOGGERS = ("radiomics", "pykwalify")
_SUM_AVERAGE_NAG = "GLCM is symmetrical, therefore Sum Average"
_SLICE_SPACING_MM = 1.0  # out-of-plane spacing of the one-slice image (enters TotalEnergy)
_LOG_MARGIN_SIGMAS = 8.0  # crop margin in LoG sigmas: LoG features as on the whole image
_WAVELET_MARGIN_PX = 6  # support of the one-level coif1 stationary wavelet


class RadiomicsError(ValueError):
    """The features of an image cannot be extracted (the message says why)."""


@dataclass(frozen=True)
class ImageFeatures:
    """The radiomics of one image (LE or RC) of a lesion.

    Attributes
    ----------
    features : dict of str to float
        Feature name (with the image suffix) -> value; no ``diagnostics_`` entries.
    notes : list of str
        What was changed on the way (e.g. a widened bin width).
    """

    features: dict[str, float]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LesionRadiomics:
    """The radiomics of one lesion on both images, or why there are none.

    Attributes
    ----------
    features : dict of str to float or None
        The features of both images (suffixes ``_low_energy`` and ``_recombined``), or
        None when the extraction failed.
    error : str or None
        What went wrong, None on success.
    notes : list of str
        Notes of both images, each prefixed with the image ("recombined: ...").
    seconds : float
        Wall-clock time of the extraction.
    """

    features: dict[str, float] | None
    error: str | None
    notes: list[str]
    seconds: float


@dataclass(frozen=True)
class RadiomicsJob:
    """One lesion to extract, cropped so it is cheap to send to a worker process.

    Build it with :func:`make_job`, which crops the images and the mask to the mask's
    bounding box plus the settings' margin (the same crop the extraction does).

    Attributes
    ----------
    job_id : str
        The caller's identifier of the lesion (not used by the extraction).
    low_energy, recombined : numpy.ndarray
        The original (not preprocessed) images, 2-D.
    mask : numpy.ndarray
        The lesion mask, 2-D bool, same shape as the images.
    spacing_mm : tuple of float or None
        Pixel spacing (row, column) in mm; None when unknown.
    """

    job_id: str
    low_energy: NDArray[Any]
    recombined: NDArray[Any]
    mask: NDArray[np.bool_]
    spacing_mm: tuple[float, float] | None


def crop_margin(settings: RadiomicsSettings, spacing_mm: tuple[float, float] | None) -> int:
    """The margin (pixels) kept around the mask's bounding box before extraction.

    Parameters
    ----------
    settings : RadiomicsSettings
        Gives ``crop_margin_px``, the LoG sigmas and whether the wavelet is used.
    spacing_mm : tuple of float or None
        Pixel spacing (row, column) in mm; None: 1 mm.

    Returns
    -------
    int
        ``crop_margin_px``, raised to 8 times the largest LoG sigma in pixels and to 6
        pixels with the wavelet, so that cropping does not change the filtered images
        inside the mask (see the module docstring).
    """
    margin = settings.crop_margin_px
    if settings.wavelet:
        margin = max(margin, _WAVELET_MARGIN_PX)
    if settings.log_sigmas_mm:
        pixel_mm = 1.0 if spacing_mm is None else float(min(spacing_mm))
        if pixel_mm > 0 and math.isfinite(pixel_mm):
            sigma_px = max(settings.log_sigmas_mm) / pixel_mm
            margin = max(margin, math.ceil(_LOG_MARGIN_SIGMAS * sigma_px))
    return margin


def crop_box(mask: NDArray[Any], margin_px: int) -> tuple[slice, slice]:
    """The mask's bounding box plus ``margin_px`` on every side, clipped to the image.

    Parameters
    ----------
    mask : numpy.ndarray
        2-D mask (non-zero inside).
    margin_px : int
        Margin in pixels.

    Returns
    -------
    tuple of slice
        (rows, columns); empty slices when the mask is empty.
    """
    return mask_window(mask, margin_px) or (slice(0, 0), slice(0, 0))


def make_job(
    job_id: str,
    low_energy: NDArray[Any],
    recombined: NDArray[Any],
    mask: NDArray[Any],
    spacing_mm: tuple[float, float] | None,
    settings: RadiomicsSettings,
) -> RadiomicsJob:
    """A :class:`RadiomicsJob` with the images and mask cropped as the extraction would.

    Arrays of different shapes (or not 2-D) are kept as they are: the extraction
    records the error.

    Parameters
    ----------
    job_id : str
        The caller's identifier of the lesion.
    low_energy, recombined : numpy.ndarray
        The original images, 2-D.
    mask : numpy.ndarray
        The lesion mask, 2-D.
    spacing_mm : tuple of float or None
        Pixel spacing (row, column) in mm.
    settings : RadiomicsSettings
        Gives the crop margin (:func:`crop_margin`).

    Returns
    -------
    RadiomicsJob
        Holding copies of the cropped arrays.
    """
    mask = np.asarray(mask)
    low_energy = np.asarray(low_energy)
    recombined = np.asarray(recombined)
    if mask.ndim == 2 and low_energy.shape == mask.shape == recombined.shape:
        box = crop_box(mask, crop_margin(settings, spacing_mm))
        low_energy, recombined, mask = low_energy[box], recombined[box], mask[box]
    return RadiomicsJob(
        job_id=job_id,
        low_energy=low_energy.copy(),
        recombined=recombined.copy(),
        mask=mask.astype(bool),
        spacing_mm=None if spacing_mm is None else (float(spacing_mm[0]), float(spacing_mm[1])),
    )


def _not_sum_average_nag(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_SUM_AVERAGE_NAG)


@contextlib.contextmanager
def _quiet_radiomics() -> Iterator[None]:
    """pyradiomics' loggers at WARNING at least for the duration, then their old levels.

    Also drops the warning glcm logs on every call ("GLCM is symmetrical, therefore Sum
    Average = 2 * Joint Average ..."), which says nothing about the lesion. Calls that
    overlap in several threads may leave the level at WARNING (never lower it).
    """
    loggers = [logging.getLogger(name) for name in _RADIOMICS_LOGGERS]
    saved = [lg.level for lg in loggers]
    glcm_logger = logging.getLogger("radiomics.glcm")
    for lg in loggers:
        if lg.getEffectiveLevel() < logging.WARNING:
            lg.setLevel(logging.WARNING)
    glcm_logger.addFilter(_not_sum_average_nag)
    try:
        yield
    finally:
        glcm_logger.removeFilter(_not_sum_average_nag)
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)


def _cropped_inputs(
    image: NDArray[Any],
    mask: NDArray[Any],
    spacing_mm: tuple[float, float] | None,
    settings: RadiomicsSettings,
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """The checked image (float64) and mask (bool), cropped; RadiomicsError if unusable."""
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 2 or mask.ndim != 2:
        raise RadiomicsError(
            f"image and mask must be 2-D, got shapes {image.shape} and {mask.shape}"
        )
    if image.shape != mask.shape:
        raise RadiomicsError(f"image shape {image.shape} differs from mask shape {mask.shape}")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise RadiomicsError(f"image must hold numbers, got dtype {image.dtype}")
    inside = mask != 0
    count = int(np.count_nonzero(inside))
    if count < settings.min_mask_pixels:
        raise RadiomicsError(
            f"mask has {count} pixels, fewer than min_mask_pixels={settings.min_mask_pixels}"
        )
    box = crop_box(inside, crop_margin(settings, spacing_mm))
    pixels, inside = image[box].astype(np.float64), inside[box]
    if not np.all(np.isfinite(pixels)):
        raise RadiomicsError("image has NaN or infinite values around the lesion")
    values = pixels[inside]
    if values.max() == values.min():
        raise RadiomicsError(f"flat region: all {count} pixels inside the mask are {values[0]:g}")
    return pixels, inside


def _sitk_pair(
    image: NDArray[np.float64], mask: NDArray[np.bool_], spacing_xy: tuple[float, float]
) -> tuple[sitk.Image, sitk.Image, sitk.Image, sitk.Image]:
    """(2-D image, 2-D mask, one-slice image, one-slice mask) with the pixel spacing."""
    image_2d = sitk.GetImageFromArray(image)
    mask_2d = sitk.GetImageFromArray(mask.astype(np.uint32))
    image_3d = sitk.GetImageFromArray(image[np.newaxis])
    mask_3d = sitk.GetImageFromArray(mask[np.newaxis].astype(np.uint32))
    for img in (image_2d, mask_2d):
        img.SetSpacing(spacing_xy)
    for img in (image_3d, mask_3d):
        img.SetSpacing((*spacing_xy, _SLICE_SPACING_MM))
    return image_2d, mask_2d, image_3d, mask_3d


def new_extractor(params: dict[str, Any]) -> RadiomicsFeatureExtractor:
    """A pyradiomics extractor of ``params``, of its own (the caller may change it).

    pyradiomics validates the parameters against its YAML schema on every
    construction, which costs more than extracting a lesion's planned features;
    so each parameter set is validated once (:func:`_validated_extractor`) and
    every caller gets a deep copy of that extractor.
    """
    # keys in their given order: pyradiomics computes the image types in that order
    return copy.deepcopy(_validated_extractor(json.dumps(params)))


@functools.lru_cache(maxsize=32)
def _validated_extractor(params_json: str) -> RadiomicsFeatureExtractor:
    # a memo of a pure constructor, keyed by the parameters' JSON; never
    # handed out (callers get copies), so no caller sees another's changes
    return RadiomicsFeatureExtractor(json.loads(params_json))


def _lift_to_slice(image_2d: sitk.Image, like_3d: sitk.Image) -> sitk.Image:
    """A 2-D filtered image as a one-slice image with the geometry of ``like_3d``."""
    lifted = sitk.GetImageFromArray(sitk.GetArrayFromImage(image_2d)[np.newaxis])
    lifted.CopyInformation(like_3d)
    return lifted


def _derived_images(
    extractor: RadiomicsFeatureExtractor,
    base: dict[str, Any],
    images: tuple[sitk.Image, sitk.Image, sitk.Image, sitk.Image],
) -> Iterator[tuple[sitk.Image, str, dict[str, Any]]]:
    """Every enabled image type as a one-slice image: (image, type name, settings)."""
    image_2d, mask_2d, image_3d, mask_3d = images
    for image_type, custom in extractor.enabledImagetypes.items():
        args = {**base, **custom}
        make = getattr(imageoperations, f"get{image_type}Image")
        if image_type == "LoG":
            # 3-D LoG is skipped on one slice; the 2-D LoG is the in-plane filter.
            for derived, name, kwargs in make(image_2d, mask_2d, **args):
                yield _lift_to_slice(derived, image_3d), name, kwargs
        else:
            yield from make(image_3d, mask_3d, **args)


def _capped_bin_width(
    values: NDArray[np.float64], bin_width: float, max_levels: int
) -> tuple[float, float]:
    """(bin width to use, grey levels it would give at ``bin_width``) for the values."""
    levels = float(values.max() - values.min()) / bin_width
    if levels > max_levels:
        return float(values.max() - values.min()) / max_levels, levels
    return bin_width, levels


def _pyradiomics_features(
    pixels: NDArray[np.float64],
    inside: NDArray[np.bool_],
    spacing_xy: tuple[float, float],
    settings: RadiomicsSettings,
    suffix: str,
    notes: list[str],
    plan: ImagePlan | None = None,
) -> dict[str, Any]:
    """pyradiomics' features of every image type (unsuffixed); widened bin widths noted.

    With ``plan``, only its image types (LoG sigmas, wavelet sub-bands) and, per image
    type, only its features are computed.
    """
    images = _sitk_pair(pixels, inside, spacing_xy)
    _, _, image_3d, mask_3d = images
    extractor = new_extractor(planned_pyradiomics_params(settings, plan))
    base = dict(extractor.settings)
    bounding_box, _ = imageoperations.checkMask(image_3d, mask_3d, **base)
    if bounding_box is None:
        raise RadiomicsError("pyradiomics rejected the mask")
    raw: dict[str, Any] = {}
    shape = None if plan is None else plan.features.get("original", {})
    if shape is None:
        raw.update(extractor.computeShape(image_3d, mask_3d, bounding_box, **base))
    else:
        shape_classes = {c: list(f) for c, f in shape.items() if c.startswith("shape")}
        if shape_classes:
            extractor.enabledFeatures = shape_classes
            raw.update(extractor.computeShape(image_3d, mask_3d, bounding_box, **base))
    for derived, name, kwargs in _derived_images(extractor, base, images):
        if plan is not None:
            texture = {
                c: list(f)
                for c, f in plan.features.get(name, {}).items()
                if not c.startswith("shape")
            }
            if not texture:
                continue
            extractor.enabledFeatures = texture
        cropped, cropped_mask = imageoperations.cropToTumorMask(derived, mask_3d, bounding_box)
        roi = sitk.GetArrayViewFromImage(cropped)[sitk.GetArrayViewFromImage(cropped_mask) == 1]
        width, levels = _capped_bin_width(roi, kwargs["binWidth"], settings.max_grey_levels)
        if width != kwargs["binWidth"]:
            note = (
                f"{name}: {levels:.0f} grey levels at binWidth {kwargs['binWidth']:g} exceed "
                f"max_grey_levels={settings.max_grey_levels}; binWidth widened to {width:.6g}"
            )
            notes.append(note)
            # routine for 12-16 bit data (and for wavelet-LL, which doubles the range):
            # the note goes into the findings, the log line is INFO
            logger.info("radiomics%s: %s", suffix, note)
        raw.update(
            extractor.computeFeatures(cropped, cropped_mask, name, **{**kwargs, "binWidth": width})
        )

    return raw


def extract_image_features(
    image: NDArray[Any],
    mask: NDArray[Any],
    spacing_mm: tuple[float, float] | None,
    settings: RadiomicsSettings,
    suffix: str,
    plan: ImagePlan | None = None,
) -> ImageFeatures:
    """The radiomics of one image inside the mask (see the module docstring).

    Parameters
    ----------
    image : numpy.ndarray
        2-D image, original (not preprocessed) values.
    mask : numpy.ndarray
        2-D lesion mask (bool or 0/1), same shape as ``image``.
    spacing_mm : tuple of float or None
        Pixel spacing (row, column) in mm; None: 1 mm, and a note says so.
    settings : RadiomicsSettings
        The radiomics settings.
    suffix : str
        Appended to every feature name, e.g. ``"_recombined"``.
    plan : ImagePlan or None
        Compute only these features (see :func:`plan_extraction`); None: all of them.
        The crop (and so every value) is the same as for the full extraction.

    Returns
    -------
    ImageFeatures
        The features (with a plan: exactly the planned ones) and the notes.

    Raises
    ------
    RadiomicsError
        When the inputs are unusable (not 2-D, different shapes, mask smaller than
        ``min_mask_pixels``, non-finite or constant values inside the mask), an image type
        is missing from the result, or a value is NaN or infinite.
    ValueError, RuntimeError
        pyradiomics' or SimpleITK's own errors, passed on.
    """
    notes: list[str] = []
    pixels, inside = _cropped_inputs(image, mask, spacing_mm, settings)
    if spacing_mm is None:
        spacing_xy = (1.0, 1.0)
        notes.append("pixel spacing unknown: 1 mm assumed")
    else:
        row_mm, col_mm = float(spacing_mm[0]), float(spacing_mm[1])
        if not (row_mm > 0 and col_mm > 0 and math.isfinite(row_mm * col_mm)):
            raise RadiomicsError(f"invalid pixel spacing {spacing_mm!r}")
        spacing_xy = (col_mm, row_mm)

    with _quiet_radiomics():
        raw = _pyradiomics_features(pixels, inside, spacing_xy, settings, suffix, notes, plan)
    if plan is None:
        missing = [
            t for t in expected_image_types(settings) if not any(k.startswith(f"{t}_") for k in raw)
        ]
        if missing:
            raise RadiomicsError(f"pyradiomics gave no features for image types {missing}")
        features = {
            f"{k}{suffix}": float(v) for k, v in raw.items() if not k.startswith("diagnostics_")
        }
    else:
        needed = plan.names()
        absent = [k for k in needed if k not in raw]
        if absent:
            raise RadiomicsError(f"pyradiomics gave no value for the needed features {absent}")
        features = {f"{k}{suffix}": float(raw[k]) for k in needed}
    bad = sorted(k for k, v in features.items() if not math.isfinite(v))
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise RadiomicsError(f"{len(bad)} features are NaN or infinite: {shown}")
    return ImageFeatures(features=features, notes=notes)


def extract_lesion_features(
    low_energy: NDArray[Any],
    recombined: NDArray[Any],
    mask: NDArray[Any],
    spacing_mm: tuple[float, float] | None,
    settings: RadiomicsSettings,
    plan: ExtractionPlan | None = None,
) -> LesionRadiomics:
    """The radiomics of one lesion on both images; a failure is recorded, never raised.

    Parameters
    ----------
    low_energy, recombined : numpy.ndarray
        The original (not preprocessed) images, 2-D.
    mask : numpy.ndarray
        2-D lesion mask, same shape as the images.
    spacing_mm : tuple of float or None
        Pixel spacing (row, column) in mm.
    settings : RadiomicsSettings
        The radiomics settings.
    plan : ExtractionPlan or None
        Extract only the planned features (inference: those the classifier reads); an
        image without planned features is not extracted (nor checked). None: every
        feature of both images (training).

    Returns
    -------
    LesionRadiomics
        Features of both images (suffixes ``_low_energy`` / ``_recombined``), or None with
        the error (which image, what happened).
    """
    start = time.perf_counter()
    features: dict[str, float] = {}
    notes: list[str] = []
    error: str | None = None
    for image, suffix in zip((low_energy, recombined), IMAGE_SUFFIXES, strict=True):
        image_plan = None if plan is None else plan.images.get(suffix)
        if plan is not None and image_plan is None:
            continue
        result = _image_features_or_error(image, mask, spacing_mm, settings, suffix, image_plan)
        if isinstance(result, str):
            error = result
            break
        features.update(result.features)
        notes.extend(f"{suffix.lstrip('_')}: {note}" for note in result.notes)
    seconds = time.perf_counter() - start
    if error is not None:
        logger.info("radiomics failed: %s", error)
        return LesionRadiomics(features=None, error=error, notes=notes, seconds=seconds)
    return LesionRadiomics(features=features, error=None, notes=notes, seconds=seconds)


def _image_features_or_error(
    image: NDArray[Any],
    mask: NDArray[Any],
    spacing_mm: tuple[float, float] | None,
    settings: RadiomicsSettings,
    suffix: str,
    plan: ImagePlan | None = None,
) -> ImageFeatures | str:
    """:func:`extract_image_features`, or the error text (naming the image) of its failure."""
    label = suffix.lstrip("_")
    try:
        return extract_image_features(image, mask, spacing_mm, settings, suffix, plan)
    except RadiomicsError as exc:
        return f"{label}: {exc}"
    except Exception as exc:  # pyradiomics / SimpleITK errors: recorded, never raised
        return f"{label}: pyradiomics failed: {type(exc).__name__}: {exc}"


def run_job(
    job: RadiomicsJob, settings: RadiomicsSettings, plan: ExtractionPlan | None = None
) -> LesionRadiomics:
    """The radiomics of one job (:func:`extract_lesion_features` on its arrays)."""
    return extract_lesion_features(
        job.low_energy, job.recombined, job.mask, job.spacing_mm, settings, plan
    )


def _init_worker() -> None:
    # A worker process is ours: one ITK thread per worker, as many workers as cores.
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _ready(_index: int) -> None:
    # nothing: running it means the worker has started and imported this module
    return None


def _process_context() -> multiprocessing.context.BaseContext:
    # never a plain fork of the (multi-threaded) node
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class RadiomicsPool:
    """Worker processes for radiomics, started once and kept for every study.

    Starting processes costs seconds (each imports pyradiomics, SimpleITK and
    NumPy), more than the radiomics of a whole study with the bundle's
    selected features; so the node starts them with its model and reuses them.
    A pool whose worker died (killed, out of memory) is replaced at the next
    submission; the jobs it held report the failure (:func:`extract_many`).

    Parameters
    ----------
    workers : int
        Worker processes, at least 1; each uses one ITK thread.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=_process_context(), initializer=_init_worker
            )
        return self._pool

    def start(self) -> None:
        """Start every worker now, not during the first study (returns when they are up).

        The executor starts a process per job submitted while none is idle,
        up to ``workers``: one job per worker starts them all.
        """
        pool = self._executor()
        list(pool.map(_ready, range(self.workers)))

    def submit(
        self, job: RadiomicsJob, settings: RadiomicsSettings, plan: ExtractionPlan | None = None
    ) -> Future[LesionRadiomics]:
        """Queue one job; its future gives the result (see :func:`result_or_error`)."""
        try:
            return self._executor().submit(run_job, job, settings, plan)
        except BrokenProcessPool:
            logger.warning("a radiomics worker had died; starting a new pool")
            self.close()
            return self._executor().submit(run_job, job, settings, plan)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def extract_many(
    jobs: Sequence[RadiomicsJob],
    settings: RadiomicsSettings,
    workers: int,
    plan: ExtractionPlan | None = None,
) -> list[LesionRadiomics]:
    """The radiomics of many lesions, in parallel over lesions.

    Worker processes are started with the "forkserver" context ("spawn" where there
    is none), never a plain fork of the (multi-threaded) node; each uses one ITK
    thread. ``workers`` 1 or a single job runs in the calling process. Like
    :func:`extract_lesion_features`, a failure is recorded in its result, also one
    of the worker process itself (killed, or a job that cannot be pickled).

    Parameters
    ----------
    jobs : sequence of RadiomicsJob
        The lesions (see :func:`make_job`).
    settings : RadiomicsSettings
        The radiomics settings.
    workers : int
        Worker processes (at most one per job).
    plan : ExtractionPlan or None
        Extract only these features (see :func:`extract_lesion_features`); None: all.

    Returns
    -------
    list of LesionRadiomics
        One per job, in the order of ``jobs``.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1 or len(jobs) <= 1:
        return [run_job(job, settings, plan) for job in jobs]
    pool = RadiomicsPool(min(workers, len(jobs)))
    try:
        futures = [pool.submit(job, settings, plan) for job in jobs]
        return [result_or_error(future) for future in futures]
    finally:
        pool.close()


def result_or_error(future: Future[LesionRadiomics]) -> LesionRadiomics:
    """The worker's result, or its failure (a dead worker, a job that cannot be pickled)."""
    try:
        return future.result()
    except Exception as exc:
        error = f"radiomics worker failed: {type(exc).__name__}: {exc}"
        logger.warning("%s", error)
        return LesionRadiomics(features=None, error=error, notes=[], seconds=0.0)

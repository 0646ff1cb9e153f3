"""What a radiomics extraction computes: feature names, pyradiomics parameters, plans.

The names of the image types and features of an extraction with given
:class:`~cem_node.contracts.params.RadiomicsSettings`, the pyradiomics parameter
dictionary of the settings, and the :class:`ExtractionPlan` that restricts an
extraction to the features a classifier reads (see "Feature names" and
"Selective extraction" in :mod:`cem_node.pipeline.radiomics`, which runs the
extraction and re-exports every public name of this module).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from radiomics import getFeatureClasses

from cem_node.contracts.params import RadiomicsSettings

__all__ = [
    "IMAGE_SUFFIXES",
    "WAVELET_SUBBANDS",
    "ExtractionPlan",
    "FeaturePlanError",
    "ImagePlan",
    "expected_image_types",
    "log_image_type",
    "plan_extraction",
    "planned_pyradiomics_params",
    "pyradiomics_params",
]


IMAGE_SUFFIXES: tuple[str, str] = ("_low_energy", "_recombined")
"""Suffixes of the low-energy and recombined feature names, in that order."""

WAVELET_SUBBANDS: tuple[str, str, str, str] = ("LL", "LH", "HL", "HH")
"""The four 2-D sub-bands of pyradiomics' (coif1, one level) stationary wavelet."""


class FeaturePlanError(ValueError):
    """A needed feature name is not one an extraction with the settings gives."""


@dataclass(frozen=True)
class ImagePlan:
    """What to extract from one image (LE or RC): only the needed features.

    Attributes
    ----------
    features : dict of str to dict of str to tuple of str
        pyradiomics image type name (``original``, ``log-sigma-0-4-mm-3D``,
        ``wavelet-LH``, ...) -> feature class (``glcm``, ``shape2D``, ...) -> feature
        names (``Idmn``, ...), without the image suffix. Shape features only under
        ``original``.
    """

    features: dict[str, dict[str, tuple[str, ...]]]

    def names(self) -> tuple[str, ...]:
        """The unsuffixed pyradiomics names, e.g. ``original_glcm_Idmn``."""
        return tuple(
            f"{image_type}_{cls}_{name}"
            for image_type, classes in self.features.items()
            for cls, names in classes.items()
            for name in names
        )


@dataclass(frozen=True)
class ExtractionPlan:
    """The features to extract per image; an image not in ``images`` is not extracted.

    Build it with :func:`plan_extraction`.

    Attributes
    ----------
    images : dict of str to ImagePlan
        Image suffix (``_low_energy`` / ``_recombined``) -> what to extract from it.
    """

    images: dict[str, ImagePlan]


def _class_feature_names(feature_class: str) -> frozenset[str]:
    """The non-deprecated feature names pyradiomics computes for ``feature_class``."""
    names = getFeatureClasses()[feature_class].getFeatureNames()
    return frozenset(name for name, deprecated in names.items() if not deprecated)


def plan_extraction(names: Sequence[str], settings: RadiomicsSettings) -> ExtractionPlan:
    """The plan that extracts only ``names`` (e.g. a classifier's selected features).

    Pure: parses each ``<imagetype>_<class>_<feature><suffix>`` name (see "Feature
    names" in :mod:`cem_node.pipeline.radiomics`) and checks it against ``settings``.

    Parameters
    ----------
    names : sequence of str
        Needed feature names, with the image suffix.
    settings : RadiomicsSettings
        The radiomics settings of the extraction (image types, feature classes).

    Returns
    -------
    ExtractionPlan
        Per image suffix with at least one needed feature: image type -> class ->
        feature names, in the order of ``settings`` (image types) and first mention
        (classes, features). An image with no needed feature is absent.

    Raises
    ------
    FeaturePlanError
        When a name has no image suffix, is not of the form
        ``<imagetype>_<class>_<feature>``, or names an image type, a feature class or a
        feature that an extraction with ``settings`` does not give.
    """
    image_types = expected_image_types(settings)
    wanted: dict[str, dict[str, dict[str, list[str]]]] = {}
    for full in names:
        suffix = next((s for s in IMAGE_SUFFIXES if full.endswith(s)), None)
        if suffix is None:
            raise FeaturePlanError(
                f"feature {full!r}: the name does not end in an image suffix {IMAGE_SUFFIXES}"
            )
        parts = full[: -len(suffix)].split("_")
        if len(parts) != 3 or not all(parts):
            raise FeaturePlanError(
                f"feature {full!r}: expected '<imagetype>_<class>_<feature>{suffix}'"
            )
        image_type, cls, feature = parts
        if image_type not in image_types:
            raise FeaturePlanError(
                f"feature {full!r}: image type {image_type!r} is not extracted with these "
                f"settings (image types: {', '.join(image_types)})"
            )
        if cls not in settings.feature_classes:
            raise FeaturePlanError(
                f"feature {full!r}: feature class {cls!r} is not extracted with these "
                f"settings (classes: {', '.join(settings.feature_classes)})"
            )
        if cls.startswith("shape") and image_type != "original":
            raise FeaturePlanError(
                f"feature {full!r}: shape features exist only for the 'original' image type"
            )
        if feature not in _class_feature_names(cls):
            raise FeaturePlanError(f"feature {full!r}: pyradiomics' {cls} has no {feature!r}")
        features = wanted.setdefault(suffix, {}).setdefault(image_type, {}).setdefault(cls, [])
        if feature not in features:
            features.append(feature)
    return ExtractionPlan(
        images={
            suffix: ImagePlan(
                features={
                    t: {c: tuple(f) for c, f in wanted[suffix][t].items()}
                    for t in image_types
                    if t in wanted[suffix]
                }
            )
            for suffix in IMAGE_SUFFIXES
            if suffix in wanted
        }
    )


def pyradiomics_params(settings: RadiomicsSettings) -> dict[str, Any]:
    """The pyradiomics parameter dictionary of ``settings``.

    JSON-serialisable (the model bundle stores it) and accepted by
    ``RadiomicsFeatureExtractor(params)``. It describes an extraction on a one-slice
    3-D image (``force2D``, ``force2Ddimension`` 0); see the module docstring for how
    the LoG images are made.

    Parameters
    ----------
    settings : RadiomicsSettings
        The radiomics settings.

    Returns
    -------
    dict
        With the keys ``setting``, ``imageType`` and ``featureClass``.
    """
    image_types: dict[str, dict[str, Any]] = {"Original": {}}
    if settings.log_sigmas_mm:
        image_types["LoG"] = {"sigma": [float(s) for s in settings.log_sigmas_mm]}
    if settings.wavelet:
        image_types["Wavelet"] = {"wavelet": "coif1", "level": 1, "start_level": 0}
    return {
        "setting": {
            "binWidth": float(settings.bin_width),
            "force2D": True,
            "force2Ddimension": 0,
            "normalize": False,
            "resampledPixelSpacing": None,
            "preCrop": False,
            "label": 1,
            "minimumROIDimensions": 2,
            "additionalInfo": False,
        },
        "imageType": image_types,
        "featureClass": {name: [] for name in settings.feature_classes},
    }


def log_image_type(sigma_mm: float) -> str:
    """pyradiomics' image type name of the LoG with ``sigma_mm``, e.g. ``log-sigma-0-4-mm-3D``.

    Parameters
    ----------
    sigma_mm : float
        The LoG sigma in mm.

    Returns
    -------
    str
        The name (pyradiomics writes "-3D" even for the 2-D LoG used here).
    """
    return "log-sigma-{}-mm-3D".format(str(float(sigma_mm)).replace(".", "-"))


def expected_image_types(settings: RadiomicsSettings) -> tuple[str, ...]:
    """The image type names an extraction with ``settings`` must give.

    Parameters
    ----------
    settings : RadiomicsSettings
        The radiomics settings.

    Returns
    -------
    tuple of str
        ``original``, one LoG name per sigma, and the four ``wavelet-*`` sub-bands.
    """
    names = ["original", *(log_image_type(s) for s in settings.log_sigmas_mm)]
    if settings.wavelet:
        names += [f"wavelet-{band}" for band in WAVELET_SUBBANDS]
    return tuple(names)


def planned_pyradiomics_params(
    settings: RadiomicsSettings, plan: ImagePlan | None
) -> dict[str, Any]:
    """:func:`pyradiomics_params` with only the LoG sigmas and the wavelet ``plan`` needs.

    Parameters
    ----------
    settings : RadiomicsSettings
        The radiomics settings.
    plan : ImagePlan or None
        The features of one image; None: every image type of ``settings``.

    Returns
    -------
    dict
        As :func:`pyradiomics_params`, without the LoG sigmas and the wavelet that
        ``plan`` does not use.
    """
    params = pyradiomics_params(settings)
    if plan is None:
        return params
    image_types = params["imageType"]
    sigmas = [float(s) for s in settings.log_sigmas_mm if log_image_type(s) in plan.features]
    if sigmas:
        image_types["LoG"] = {**image_types["LoG"], "sigma": sigmas}
    else:
        image_types.pop("LoG", None)
    if not any(t.startswith("wavelet-") for t in plan.features):
        image_types.pop("Wavelet", None)
    return params

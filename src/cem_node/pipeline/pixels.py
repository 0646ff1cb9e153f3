"""Read the pixels of one mammography image, whatever its encoding.

:func:`read_source_image` turns a DICOM file (or an already read dataset) into
a :class:`SourceImage`: a float32 2-D array in MONOCHROME2 sense (higher is
brighter) with the Modality LUT applied, plus the header values the analysis
needs (SOP Instance UID, laterality, view, pixel spacing). Compressed pixel
data are decoded by pydicom's plugins (pylibjpeg, openjpeg, pyjpegls, RLE);
every failure raises :class:`PixelDataError` with a message that names the
cause (no pixel data, several frames, a colour image, a transfer syntax
without an installed decoder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID

from cem_node.dicom.selection import image_laterality, image_view

__all__ = ["PixelDataError", "SourceImage", "multi_frame_problem", "read_source_image"]

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


class PixelDataError(ValueError):
    """The pixel data of an image cannot be used (missing, undecodable, not one grey frame)."""


@dataclass(frozen=True, eq=False)
class SourceImage:
    """The pixels of one image, in MONOCHROME2 sense, with the header values the analysis needs.

    Attributes
    ----------
    pixels
        float32 array (rows, columns), read-only: stored values through the
        Modality LUT (RescaleSlope/Intercept or a Modality LUT Sequence),
        inverted when the source is MONOCHROME1 so that higher is always
        brighter (denser on a low-energy image, more enhancing on a
        recombined one).
    sop_instance_uid
        SOP Instance UID ("" when the header has none).
    laterality
        ``"L"``, ``"R"`` or None (ImageLaterality, else Laterality).
    view
        ``"CC"``, ``"MLO"`` or None (ViewPosition, else the View Code Sequence).
    pixel_spacing_mm
        (row spacing, column spacing) in mm from ImagerPixelSpacing, else
        PixelSpacing; None when neither holds two positive numbers.
    bits_stored
        Bits Stored of the source.
    photometric_interpretation
        Photometric Interpretation of the source (``"MONOCHROME1"`` or
        ``"MONOCHROME2"``); :attr:`pixels` is MONOCHROME2 in either case.
    """

    pixels: np.ndarray
    sop_instance_uid: str
    laterality: str | None
    view: str | None
    pixel_spacing_mm: tuple[float, float] | None
    bits_stored: int
    photometric_interpretation: str

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the image."""
        rows, cols = self.pixels.shape
        return int(rows), int(cols)


def read_source_image(source: str | os.PathLike[str] | Dataset) -> SourceImage:
    """Read one single-frame greyscale DICOM image as a :class:`SourceImage`.

    Parameters
    ----------
    source
        Path of a DICOM file, or a dataset (read with its pixel data).

    Returns
    -------
    SourceImage
        The decoded pixels (float32, MONOCHROME2 sense, Modality LUT applied)
        and the header values.

    Raises
    ------
    PixelDataError
        When the file is not DICOM or does not parse, holds no pixel data,
        several frames or a colour image, or when its pixel data cannot be
        decoded (the message names the transfer syntax and the decoder that
        is missing). An ``OSError`` reading the file is raised as it is.
    """
    if isinstance(source, Dataset):
        ds, name = source, f"SOP instance {source.get('SOPInstanceUID', '(no UID)')}"
    else:
        name = str(source)
        try:
            ds = pydicom.dcmread(Path(source))
        except InvalidDicomError as exc:
            raise PixelDataError(f"{name}: not a DICOM file ({exc})") from exc
        except (OSError, MemoryError):
            raise  # the file system or the machine, not the file: may pass
        except Exception as exc:  # pydicom raises many types for a corrupt file
            raise PixelDataError(
                f"{name}: cannot parse the file ({type(exc).__name__}: {exc})"
            ) from exc
    _check_header(ds, name)
    stored = _decode(ds, name)
    if stored.ndim != 2:
        raise PixelDataError(
            f"{name}: decoded pixel data has shape {stored.shape}, expected one 2-D frame"
        )
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    pixels = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    if photometric == "MONOCHROME1":
        low, high = _output_range(ds, stored.dtype)
        pixels = np.float32(low + high) - pixels
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    pixels.flags.writeable = False
    return SourceImage(
        pixels=pixels,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        laterality=image_laterality(ds),
        view=image_view(ds),
        pixel_spacing_mm=_spacing(ds),
        bits_stored=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8 * stored.itemsize),
        photometric_interpretation=photometric,
    )


def multi_frame_problem(ds: Dataset) -> str | None:
    """Say why an image's frames rule it out of the analysis, or return ``None``.

    Read from the header alone (Number of Frames), so that the worker can
    leave such an image out before pairing, as a property of the image
    rather than a failure of its decoding. The message names the image by
    its series and view, never by a file.

    Parameters
    ----------
    ds
        The image's header (pixel data not needed).

    Returns
    -------
    str or None
        ``"multi-frame image (2 frames) in series 3 (L CC): one mammography
        frame is expected"``, or ``None`` for a single-frame image.
    """
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        frames = 1  # an unreadable count: the decoder says what is wrong, if anything
    if frames <= 1:
        return None
    try:
        series = ds.get("SeriesNumber")
    except (TypeError, ValueError):
        series = None
    view = " ".join(v for v in (image_laterality(ds), image_view(ds)) if v)
    where = f" in series {series}" if series not in (None, "") else ""
    where += f" ({view})" if view else ""
    return f"multi-frame image ({frames} frames){where}: one mammography frame is expected"


def _check_header(ds: Dataset, name: str) -> None:
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise PixelDataError(f"{name}: the dataset has no pixel data")
    frames = multi_frame_problem(ds)
    if frames:
        raise PixelDataError(f"{name}: {frames}")
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if samples != 1 or photometric not in _MONOCHROME:
        raise PixelDataError(
            f"{name}: not a greyscale image (PhotometricInterpretation "
            f"{photometric or '(none)'}, SamplesPerPixel {samples}); "
            "MONOCHROME1 or MONOCHROME2 is expected"
        )


def _transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(uid)) if uid else None


def _decode(ds: Dataset, name: str) -> np.ndarray:
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many types; each becomes one clear message
        raise PixelDataError(f"{name}: {_decode_failure(ds, exc)}") from exc


def _decode_failure(ds: Dataset, exc: Exception) -> str:
    uid = _transfer_syntax(ds)
    if uid is None:
        return f"cannot decode the pixel data: no transfer syntax in the file meta ({exc})"
    syntax = f"transfer syntax {uid.name} ({uid})" if uid.name != str(uid) else f"{uid}"
    if uid.is_compressed:
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            return f"no pixel data decoder exists for {syntax}"
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies)
            return (
                f"cannot decode {syntax}: no decoder plugin is installed "
                f"(missing: {missing or 'a decoding package'})"
            )
    return f"cannot decode the pixel data of {syntax}: {type(exc).__name__}: {exc}"


def _output_range(ds: Dataset, dtype: np.dtype) -> tuple[float, float]:
    """The nominal range of the Modality LUT output: the stored range mapped through it."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8 * dtype.itemsize)
    if dtype.kind == "f":
        stored = np.array([0.0, 1.0])  # float pixel data: no stored range; invert about 0.5
    elif int(ds.get("PixelRepresentation") or 0) == 1:
        stored = np.array([-(1 << (bits - 1)), (1 << (bits - 1)) - 1], dtype=np.int64)
    else:
        stored = np.array([0, (1 << bits) - 1], dtype=np.int64)
    mapped = np.asarray(apply_modality_lut(stored.astype(dtype), ds), dtype=np.float64)
    return float(mapped.min()), float(mapped.max())


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        try:
            value = ds.get(keyword)
            if value is None:
                continue
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return row, col
    return None

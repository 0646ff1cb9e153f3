r"""Encode synthetic mammograms as DICOM Digital Mammography X-Ray images.

The files imitate what a GE Senographe Pristina with SenoBright (contrast
enhanced spectral mammography) sends to a PACS: Digital Mammography X-Ray
Image Storage - For Presentation (1.2.840.10008.5.1.4.1.1.1.2), one
single-frame image per file, in Explicit VR Little Endian or one of three
lossless compressed transfer syntaxes.

Image Type (PS3.3 C.8.11.7.1.4, MG specialisation):

======================  ==============================================
kind                    Image Type (0008,0008)
======================  ==============================================
``low_energy``          ``ORIGINAL\PRIMARY\\\LOW_ENERGY`` (5 values)
``recombined``          ``DERIVED\PRIMARY\\SUBTRACTION\`` (5 values)
``non_contrast``        ``ORIGINAL\PRIMARY\`` (3 values)
======================  ==============================================

* Value 3 "shall be present and have zero length (null value), except
  when used to identify a stereotactic mammography image, digital breast
  tomosynthesis projection or generated 2D image, or contrast enhanced
  image". It is empty here for every kind: the contrast terms for Value 3
  (PRE_CONTRAST/POST_CONTRAST) are unknown to the dciodvfy in Debian
  (dicom3tools 2022-06, which reports POST_CONTRAST as an Error), and the
  standard notes that an empty Value 3 does not rule out a contrast
  enhanced image. GE SenoBright leaves Value 3 empty too.
* Value 4 "shall be present for images acquired using contrast enhanced
  digital X-Ray imaging of the breast (but may be empty if none of the
  Defined Terms applies)" (Table C.8-74d: GENERATED_2D, ADDITION,
  SUBTRACTION): SUBTRACTION ("created through pixel by pixel subtraction
  operation") for the recombined image, a weighted subtraction of the log
  low- and high-energy images; empty for the low-energy image.
* Value 5 "shall be present for images acquired using contrast enhanced
  digital X-Ray imaging of the breast, but may be empty if none of the
  Defined Terms applies" (Table C.8-74e: LOW_ENERGY, HIGH_ENERGY):
  LOW_ENERGY for the low-energy image, empty for the recombined image (it
  is neither). For non-contrast images Values 4 and 5 are optional and
  left out.
* The recombined image is computed from two exposures, hence DERIVED, with
  a Derivation Code Sequence (113097, DCM, "Multi-energy proportional
  weighting") and a Derivation Description.

GE's own SenoBright images predate these terms and put the energy into
Value 4 (``ORIGINAL\PRIMARY\\LOW_ENERGY``, ``DERIVED\PRIMARY\\RECOMBINED``);
their Acquisition Device Processing Code tells the images apart
(GEMS_FFDM_PV for low-energy and plain 2D, GEMS_CESM_1 for recombined),
and that code is written here as well.

Technique of the recombined image: KVP is single-valued, and the
low-energy exposure is already described by its own image, so the
recombined image carries the technique of the high-energy exposure it was
computed from (45-49 kVp, copper filter, that exposure's mAs, time and
current) and, as doses, the sum over both exposures (the dose the
recombined image cost the patient). :func:`build_mg_dataset` checks this:
a recombined image needs a kVp of at least 40 and a COPPER filter, a low
energy or non-contrast image a kVp below 40 and no copper.

Orientation: images are stored with the chest wall at column 0 for left
breasts and at the last column for right breasts; the lateral side is at
the top in CC, superior at the top in MLO, giving Patient Orientation
``A\R`` (L CC), ``P\L`` (R CC), ``A\F`` (L MLO), ``P\F`` (R MLO).

Windowing: one Window Center/Width pair from the caller, with VOI LUT
Function LINEAR by default (every viewer implements it; GE itself sends
SIGMOID, which :attr:`AcquisitionInfo.voi_lut_function` can select).

Vendor styles (:data:`VENDOR_STYLES`, ``cem-node synth --vendor``): the
default, ``standard``, is described above. ``ge``, ``hologic``, ``siemens``
and ``fujifilm`` write each vendor's equipment names and the CEM markers the
vendor reference (docs/VENDORS.md) confirms from public sources; what no
source confirms keeps the standard's values, and the series layout is a
synthetic choice (made to exercise both layouts the node meets), not a
vendor fact. An image can also be written as For Processing (its raw copy)
and with the SNOMED-RT view codes of older editions instead of the SCT ones
and no View Position.

Everything is deterministic: the same inputs give the same bytes. The
writer makes no UIDs and reads no clock; Content Date/Time are the
acquisition date/time, and the contrast injection time is the study time.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from cem_node import __version__

__all__ = [
    "DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION",
    "DIGITAL_MAMMOGRAPHY_FOR_PROCESSING",
    "DISCLAIMER",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "TRANSFER_SYNTAX_UIDS",
    "VENDOR_STYLES",
    "AcquisitionInfo",
    "ImageKind",
    "PatientInfo",
    "StudyInfo",
    "TransferSyntaxName",
    "VendorName",
    "VendorStyle",
    "build_mg_dataset",
    "image_type_for",
    "patient_orientation_for",
    "write_dataset",
    "write_mg_image",
]

#: Digital Mammography X-Ray Image Storage - For Presentation.
DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.2")
#: Digital Mammography X-Ray Image Storage - For Processing.
DIGITAL_MAMMOGRAPHY_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.2.1")
#: Fixed UID under pydicom's root, made once from the entropy "cem-node" and
#: "ImplementationClassUID" (a constant keeps the files deterministic).
IMPLEMENTATION_CLASS_UID = UID("1.2.826.0.1.3680043.8.498.74066020914533676164413809874428842274")
#: "CEM_NODE_010" for version 0.1.0 (SH: at most 16 characters).
IMPLEMENTATION_VERSION_NAME = ("CEM_NODE_" + re.sub(r"[^0-9A-Za-z]", "", __version__))[:16]
DISCLAIMER = "SYNTHETIC PHANTOM - NOT PATIENT DATA"

TransferSyntaxName = Literal["explicit", "jpeg2000", "jpegls", "rle"]
ImageKind = Literal["low_energy", "recombined", "non_contrast"]

TRANSFER_SYNTAX_UIDS: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "jpeg2000": JPEG2000Lossless,  # 1.2.840.10008.1.2.4.90
    "jpegls": JPEGLSLossless,  # 1.2.840.10008.1.2.4.80
    "rle": RLELossless,  # 1.2.840.10008.1.2.5
}
# pydicom's own RLE encoder takes ~1 s on a full mammogram, pylibjpeg-rle ~0.1 s
_ENCODING_PLUGINS = {"jpeg2000": "pylibjpeg", "jpegls": "pyjpegls", "rle": "pylibjpeg"}

# Equipment identity (clearly synthetic where it identifies a site)
_MANUFACTURER = "GE Healthcare"
_MODEL = "Senographe Pristina"
_INSTITUTION = "SYNTHETIC PHANTOM HOSPITAL"
_STATION = "SYNTHMAMMO01"
_DEVICE_SERIAL = "SYN000001"
_DETECTOR_ID = "SYNDET0001"
_SOFTWARE_VERSIONS = ["SYNTH_SENOBRIGHT_1.0", f"cem-node {__version__}"]
_SOURCE_TO_DETECTOR_MM = 660.0
_FOCAL_SPOT_MM = 0.3
_PRIVATE_CREATOR = "GEMS_SENO_02"

# Contrast agent (Iohexol 350 mgI/ml, 1.5 ml/kg IV, one injection per study)
_AGENT_NAME = "IOHEXOL 350 MGI/ML"
_AGENT_CONCENTRATION_MG_PER_ML = 350
_AGENT_DOSE_ML_PER_KG = 1.5
_AGENT_MAX_ML = 150.0

# (code value, coding scheme, code meaning)
_CodeTuple = tuple[str, str, str]
_VIEW_CODES: dict[str, _CodeTuple] = {
    "CC": ("399162004", "SCT", "cranio-caudal"),
    "MLO": ("399368009", "SCT", "medio-lateral oblique"),
}
# the SNOMED-RT codes of the same views in editions of PS3.16 before SCT
_OLD_VIEW_CODES: dict[str, _CodeTuple] = {
    "CC": ("R-10242", "SRT", "cranio-caudal"),
    "MLO": ("R-10226", "SRT", "medio-lateral oblique"),
}
_BREAST: _CodeTuple = ("76752008", "SCT", "Breast")
_IOHEXOL: _CodeTuple = ("109218004", "SCT", "Iohexol")
_INTRAVENOUS: _CodeTuple = ("47625008", "SCT", "Intravenous route")
_MULTI_ENERGY: _CodeTuple = ("113097", "DCM", "Multi-energy proportional weighting")

_ORIENTATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("L", "CC"): ("A", "R"),
    ("R", "CC"): ("P", "L"),
    ("L", "MLO"): ("A", "F"),
    ("R", "MLO"): ("P", "F"),
}
_IMAGE_TYPES: dict[str, tuple[str, ...]] = {
    "low_energy": ("ORIGINAL", "PRIMARY", "", "", "LOW_ENERGY"),
    "recombined": ("DERIVED", "PRIMARY", "", "SUBTRACTION", ""),
    "non_contrast": ("ORIGINAL", "PRIMARY", ""),
}
# Acquisition Device Processing Code of GE images (seen in real SenoBright data)
_PROCESSING_CODES = {
    "low_energy": "GEMS_FFDM_PV",
    "recombined": "GEMS_CESM_1",
    "non_contrast": "GEMS_FFDM_PV",
}

# DICOM Defined Terms (PS3.3 C.8.7.8/C.8.7.10), plus SILVER and TITANIUM: Ag
# filters are used for low-energy CEM exposures, Ti for Siemens' high-energy
# ones (TiCEM), and neither is a Defined Term.
_ANODES = frozenset({"TUNGSTEN", "MOLYBDENUM", "RHODIUM"})
_FILTERS = frozenset(
    {
        "MOLYBDENUM",
        "ALUMINUM",
        "COPPER",
        "RHODIUM",
        "NIOBIUM",
        "EUROPIUM",
        "LEAD",
        "SILVER",
        "TITANIUM",
    }
)
#: Filters of a high-energy exposure.
HIGH_ENERGY_FILTERS = frozenset({"COPPER", "TITANIUM"})
# nominal filter thicknesses of a mammography unit, in mm
_FILTER_THICKNESS_MM = {
    "MOLYBDENUM": 0.03,
    "RHODIUM": 0.025,
    "SILVER": 0.03,
    "ALUMINUM": 0.5,
    "COPPER": 0.3,
    "TITANIUM": 0.3,
}
_HIGH_ENERGY_MIN_KVP = 40.0

VendorName = Literal["standard", "ge", "hologic", "siemens", "fujifilm"]
_STANDARD_IMAGE_TYPES = _IMAGE_TYPES


@dataclass(frozen=True)
class VendorStyle:
    """How one vendor's CEM images look, as far as docs/VENDORS.md confirms it.

    Parameters
    ----------
    name: str
        ``standard``, ``ge``, ``hologic``, ``siemens`` or ``fujifilm``.
    manufacturer, model: str
        Manufacturer and Manufacturer's Model Name.
    image_types: Mapping[str, tuple[str, ...]]
        Image Type (0008,0008) per image kind.
    processing_codes: Mapping[str, str]
        Acquisition Device Processing Code per image kind (none when absent).
    gems_block: bool
        Write GE's private block GEMS_SENO_02 (group 0045).
    high_energy_filter: str
        Filter of the high-energy exposure a recombined image records.
    source_to_detector_mm: float
        Distance Source to Detector.
    detector_type: str
        Detector Type (DIRECT or SCINTILLATOR).
    series_layout: {"by_kind", "one_series"}
        One series per image kind, or the low-energy and recombined images of
        the examination in one series (a synthetic choice, not a vendor fact).
    """

    name: str
    manufacturer: str
    model: str
    software_versions: tuple[str, ...]
    image_types: Mapping[str, tuple[str, ...]]
    processing_codes: Mapping[str, str] = field(default_factory=dict)
    gems_block: bool = False
    high_energy_filter: str = "COPPER"
    source_to_detector_mm: float = _SOURCE_TO_DETECTOR_MM
    detector_type: str = "SCINTILLATOR"
    series_layout: Literal["by_kind", "one_series"] = "by_kind"


_SYNTH_VERSION = f"cem-node {__version__}"
#: The styles of ``cem-node synth --vendor`` (docs/VENDORS.md gives the sources).
VENDOR_STYLES: dict[str, VendorStyle] = {
    s.name: s
    for s in (
        # the phantom's original style: the standard's Image Type values, GE names
        VendorStyle(
            "standard",
            _MANUFACTURER,
            _MODEL,
            tuple(_SOFTWARE_VERSIONS),
            _STANDARD_IMAGE_TYPES,
            _PROCESSING_CODES,
            gems_block=True,
        ),
        # GE SenoBright: energy in Image Type value 4, GEMS processing codes
        VendorStyle(
            "ge",
            "GE MEDICAL SYSTEMS",
            "Senographe Pristina",
            ("SYNTH_SENOBRIGHT_1.0", _SYNTH_VERSION),
            {
                "low_energy": ("ORIGINAL", "PRIMARY", "", "LOW_ENERGY"),
                "recombined": ("DERIVED", "PRIMARY", "", "RECOMBINED"),
                "non_contrast": ("ORIGINAL", "PRIMARY", ""),
            },
            _PROCESSING_CODES,
            gems_block=True,
        ),
        VendorStyle(
            "hologic",
            "HOLOGIC, Inc.",
            "Selenia Dimensions",
            ("SYNTH_AWS_1.0", _SYNTH_VERSION),
            _STANDARD_IMAGE_TYPES,
            source_to_detector_mm=700.0,
            detector_type="DIRECT",
            series_layout="one_series",
        ),
        VendorStyle(
            "siemens",
            "SIEMENS",
            "MAMMOMAT Revelation",
            ("SYNTH_VB_1.0", _SYNTH_VERSION),
            _STANDARD_IMAGE_TYPES,
            high_energy_filter="TITANIUM",
            # a-Se, direct conversion (Siemens' MAMMOMAT detector, docs/VENDORS.md)
            detector_type="DIRECT",
        ),
        VendorStyle(
            "fujifilm",
            "FUJIFILM Corporation",
            "AMULET Innovality",
            ("SYNTH_AWS_1.0", _SYNTH_VERSION),
            _STANDARD_IMAGE_TYPES,
            # a-Se, direct conversion with optical readout (AMULET, docs/VENDORS.md)
            detector_type="DIRECT",
            series_layout="one_series",
        ),
    )
}

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_DATE_RE = re.compile(r"^\d{8}$")
_TIME_RE = re.compile(r"^(\d{2})(\d{2})(\d{2})(\.\d{1,6})?$")


@dataclass(frozen=True)
class PatientInfo:
    """The (synthetic) patient.

    Parameters
    ----------
    patient_id: str
        Patient ID (LO, at most 64 characters), clearly fake.
    patient_name: str
        Patient's Name in DICOM PN form, e.g. ``"SYNTH^PHANTOM0001"``.
    birth_date: str
        Patient's Birth Date, ``YYYYMMDD``.
    age_years: int
        Age at the study date, written as Patient's Age (``"052Y"``); must
        agree with `birth_date` to within one year.
    sex: str, optional
        Patient's Sex: ``"F"``, ``"M"`` or ``"O"``.
    weight_kg: float, optional
        Patient's Weight; also sets the contrast volume (1.5 ml/kg).
    """

    patient_id: str
    patient_name: str
    birth_date: str
    age_years: int
    sex: str = "F"
    weight_kg: float = 65.0


@dataclass(frozen=True)
class StudyInfo:
    """The study: one CEM examination of one patient.

    Parameters
    ----------
    study_instance_uid: str
        Study Instance UID.
    study_id: str
        Study ID (SH, at most 16 characters).
    accession_number: str
        Accession Number (SH, at most 16 characters).
    study_date: str
        Study Date, ``YYYYMMDD``.
    study_time: str
        Study Time, ``HHMMSS[.ffffff]``; also the start of the contrast
        injection (Contrast/Bolus Start Time).
    description: str, optional
        Study Description (LO).
    """

    study_instance_uid: str
    study_id: str
    accession_number: str
    study_date: str
    study_time: str
    description: str = "MAMMO CESM BILATERAL"


@dataclass(frozen=True)
class AcquisitionInfo:
    """One image: its place in the study and the technique of its exposure.

    For a ``recombined`` image give the technique of the high-energy
    exposure (kVp >= 40, COPPER filter) and the doses summed over the low-
    and high-energy exposures; see the module documentation.

    Parameters
    ----------
    laterality: {"L", "R"}
        Image Laterality.
    view: {"CC", "MLO"}
        View Position (and View Code Sequence).
    kind: {"low_energy", "recombined", "non_contrast"}
        Low-energy or recombined CEM image, or a plain 2D mammogram.
    series_instance_uid: str
        Series Instance UID.
    series_number: int
        Series Number (>= 0).
    series_description: str
        Series Description (LO).
    sop_instance_uid: str
        SOP Instance UID (also the Media Storage SOP Instance UID).
    instance_number: int
        Instance Number (>= 1).
    acquisition_date: str
        Acquisition Date (and Content Date), ``YYYYMMDD``; the LE and RC
        images of one exposure share it.
    acquisition_time: str
        Acquisition Time (and Content Time), ``HHMMSS[.ffffff]``.
    kvp: float
        Peak kilovoltage.
    anode: str
        Anode Target Material: TUNGSTEN, MOLYBDENUM or RHODIUM.
    filter_material: str
        Filter Material, e.g. RHODIUM, SILVER (low energy) or COPPER (high
        energy).
    exposure_mas: float
        Exposure in mAs.
    exposure_time_ms: int
        Exposure Time in ms.
    tube_current_ma: int
        X-Ray Tube Current in mA.
    compressed_thickness_mm: float
        Body Part Thickness: the compressed breast thickness.
    compression_force_n: float
        Compression Force in newtons.
    entrance_dose_mgy: float
        Entrance Dose in mGy.
    organ_dose_mgy: float
        Average glandular dose in mGy (written as Organ Dose, in dGy).
    positioner_primary_angle_deg: float
        Positioner Primary Angle: about 0 for CC, about +-45 for MLO.
    window_center: float
        Window Center, in stored pixel values.
    window_width: float
        Window Width (> 0).
    voi_lut_function: {"LINEAR", "SIGMOID"}, optional
        VOI LUT Function applied with the window.
    source_sop_instance_uids: tuple of str, optional
        SOP Instance UIDs of the images a recombined image was computed
        from (Source Image Sequence); only allowed for ``recombined``.
    frame_of_reference_uid: str or None, optional
        Frame of Reference UID shared by the images taken in one breast
        compression (the LE and RC of one view). Left out when None.
    for_processing: bool, optional
        Write the image as Digital Mammography For Processing (the raw copy a
        modality may send beside the For Presentation image).
    old_view_codes: bool, optional
        Code the view with its SNOMED-RT code (R-10242, R-10226; scheme SRT)
        of older editions of CID 4014 and leave View Position out.
    """

    laterality: Literal["L", "R"]
    view: Literal["CC", "MLO"]
    kind: Literal["low_energy", "recombined", "non_contrast"]
    series_instance_uid: str
    series_number: int
    series_description: str
    sop_instance_uid: str
    instance_number: int
    acquisition_date: str
    acquisition_time: str
    kvp: float
    anode: str
    filter_material: str
    exposure_mas: float
    exposure_time_ms: int
    tube_current_ma: int
    compressed_thickness_mm: float
    compression_force_n: float
    entrance_dose_mgy: float
    organ_dose_mgy: float
    positioner_primary_angle_deg: float
    window_center: float
    window_width: float
    voi_lut_function: Literal["LINEAR", "SIGMOID"] = "LINEAR"
    source_sop_instance_uids: tuple[str, ...] = ()
    frame_of_reference_uid: str | None = None
    for_processing: bool = False
    old_view_codes: bool = False


def image_type_for(kind: str, vendor: str = "standard") -> tuple[str, ...]:
    """Return the Image Type (0008,0008) values written for an image kind.

    Parameters
    ----------
    kind: str
        ``"low_energy"``, ``"recombined"`` or ``"non_contrast"``.
    vendor: str, optional
        The vendor style (:data:`VENDOR_STYLES`).

    Returns
    -------
    tuple of str
        The values, empty strings for values that are present but empty.
    """
    try:
        return _style(vendor).image_types[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {sorted(_IMAGE_TYPES)}, got {kind!r}") from None


def _style(vendor: str | VendorStyle) -> VendorStyle:
    if isinstance(vendor, VendorStyle):
        return vendor
    try:
        return VENDOR_STYLES[vendor]
    except KeyError:
        raise ValueError(f"vendor must be one of {sorted(VENDOR_STYLES)}, got {vendor!r}") from None


def patient_orientation_for(laterality: str, view: str) -> tuple[str, str]:
    """Return the Patient Orientation (row, column directions) of a view.

    Parameters
    ----------
    laterality: str
        ``"L"`` or ``"R"``.
    view: str
        ``"CC"`` or ``"MLO"``.

    Returns
    -------
    tuple of str
        E.g. ``("A", "R")`` for a left CC image.
    """
    try:
        return _ORIENTATIONS[(laterality, view)]
    except KeyError:
        raise ValueError(
            f"no patient orientation for laterality {laterality!r} and view {view!r}: "
            "laterality must be 'L' or 'R' and view 'CC' or 'MLO'"
        ) from None


# --- input checks -------------------------------------------------------------


def _check_text(name: str, value: object, max_len: int, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value and not empty_ok:
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_len:
        raise ValueError(
            f"{name} must have at most {max_len} characters, got {len(value)}: {value!r}"
        )
    if "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{name} must not contain a backslash or control characters: {value!r}")
    try:
        value.encode("iso8859-1")
    except UnicodeEncodeError:
        raise ValueError(f"{name} must be encodable as ISO_IR 100 (Latin-1): {value!r}") from None
    return value


def _check_uid(name: str, value: object) -> UID:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if len(value) > 64 or not _UID_RE.match(value):
        raise ValueError(
            f"{name} is not a valid UID (dot-separated numbers without leading zeros, "
            f"at most 64 characters): {value!r}"
        )
    return UID(value)


def _check_date(name: str, value: object) -> dt.date:
    if not isinstance(value, str) or not _DATE_RE.match(value):
        raise ValueError(f"{name} must be a date string YYYYMMDD, got {value!r}")
    try:
        return dt.datetime.strptime(value, "%Y%m%d").date()
    except ValueError:
        raise ValueError(f"{name} is not a valid calendar date: {value!r}") from None


def _check_time(name: str, value: object) -> str:
    match = _TIME_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{name} must be a time string HHMMSS or HHMMSS.ffffff, got {value!r}")
    hours, minutes, seconds = (int(g) for g in match.groups()[:3])
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ValueError(f"{name} is not a valid time of day: {value!r}")
    return value


def _check_number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value!r}")
    return int(value)


def _check_choice(name: str, value: object, choices: frozenset[str] | tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return str(value)


def _check_person_name(name: str, value: object) -> str:
    text = _check_text(name, value, 5 * 64 + 4)
    parts = text.split("^")
    if len(parts) > 5 or any(len(p) > 64 for p in parts) or "=" in text:
        raise ValueError(
            f"{name} must be a single-group DICOM person name with at most 5 '^'-separated "
            f"components of at most 64 characters each, got {value!r}"
        )
    return text


def _age_at(birth: dt.date, day: dt.date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _check_pixels(pixels: object, bits_stored: int) -> np.ndarray:
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"pixels must be a numpy.ndarray, got {type(pixels).__name__}")
    if pixels.dtype != np.dtype("<u2") and pixels.dtype != np.dtype("=u2"):
        raise ValueError(
            f"pixels must have dtype uint16 (native little endian), got {pixels.dtype}"
        )
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be 2D (rows, columns), got shape {pixels.shape}")
    rows, cols = pixels.shape
    if not (1 <= rows <= 65535 and 1 <= cols <= 65535):
        raise ValueError(f"pixels must have 1 to 65535 rows and columns, got shape {pixels.shape}")
    top = int(pixels.max())
    if top >= 1 << bits_stored:
        raise ValueError(
            f"pixel values must be below 2**bits_stored = {1 << bits_stored} "
            f"(bits_stored={bits_stored}), got a maximum of {top}"
        )
    return np.ascontiguousarray(pixels)


def _check_acquisition(acq: AcquisitionInfo) -> None:
    if not isinstance(acq, AcquisitionInfo):
        raise TypeError(f"acquisition must be an AcquisitionInfo, got {type(acq).__name__}")
    _check_choice("acquisition.laterality", acq.laterality, ("L", "R"))
    _check_choice("acquisition.view", acq.view, ("CC", "MLO"))
    _check_choice("acquisition.kind", acq.kind, get_args(ImageKind))
    _check_uid("acquisition.series_instance_uid", acq.series_instance_uid)
    _check_int("acquisition.series_number", acq.series_number, 0, 2**31 - 1)
    _check_text("acquisition.series_description", acq.series_description, 64, empty_ok=True)
    _check_uid("acquisition.sop_instance_uid", acq.sop_instance_uid)
    _check_int("acquisition.instance_number", acq.instance_number, 1, 2**31 - 1)
    _check_date("acquisition.acquisition_date", acq.acquisition_date)
    _check_time("acquisition.acquisition_time", acq.acquisition_time)
    kvp = _check_number("acquisition.kvp", acq.kvp, 20.0, 50.0)
    _check_choice("acquisition.anode", acq.anode, _ANODES)
    filt = _check_choice("acquisition.filter_material", acq.filter_material, _FILTERS)
    _check_number("acquisition.exposure_mas", acq.exposure_mas, 0.1, 1000.0)
    _check_int("acquisition.exposure_time_ms", acq.exposure_time_ms, 1, 100_000)
    _check_int("acquisition.tube_current_ma", acq.tube_current_ma, 1, 1000)
    _check_number("acquisition.compressed_thickness_mm", acq.compressed_thickness_mm, 1.0, 200.0)
    _check_number("acquisition.compression_force_n", acq.compression_force_n, 0.0, 300.0)
    _check_number("acquisition.entrance_dose_mgy", acq.entrance_dose_mgy, 0.0, 100.0)
    _check_number("acquisition.organ_dose_mgy", acq.organ_dose_mgy, 0.0, 100.0)
    angle = _check_number(
        "acquisition.positioner_primary_angle_deg", acq.positioner_primary_angle_deg, -180.0, 180.0
    )
    _check_number("acquisition.window_center", acq.window_center, -1e6, 1e6)
    if _check_number("acquisition.window_width", acq.window_width, 0.0, 1e6) < 1.0:
        raise ValueError(f"acquisition.window_width must be at least 1, got {acq.window_width!r}")
    _check_choice("acquisition.voi_lut_function", acq.voi_lut_function, ("LINEAR", "SIGMOID"))
    if not isinstance(acq.source_sop_instance_uids, tuple):
        raise TypeError("acquisition.source_sop_instance_uids must be a tuple of UID strings")
    for i, uid in enumerate(acq.source_sop_instance_uids):
        _check_uid(f"acquisition.source_sop_instance_uids[{i}]", uid)
    if acq.source_sop_instance_uids and acq.kind != "recombined":
        raise ValueError(
            f"acquisition.source_sop_instance_uids is only allowed for a recombined image, "
            f"got kind {acq.kind!r}"
        )
    if acq.frame_of_reference_uid is not None:
        _check_uid("acquisition.frame_of_reference_uid", acq.frame_of_reference_uid)
    for name in ("for_processing", "old_view_codes"):
        if not isinstance(getattr(acq, name), bool):
            raise TypeError(f"acquisition.{name} must be a bool")

    # keep the technique consistent with the kind of image (see module docs)
    if acq.kind == "recombined":
        if kvp < _HIGH_ENERGY_MIN_KVP or filt not in HIGH_ENERGY_FILTERS:
            raise ValueError(
                "a recombined image carries the technique of its high-energy exposure: "
                f"kvp must be at least {_HIGH_ENERGY_MIN_KVP:g} and filter_material COPPER "
                f"or TITANIUM, got kvp={acq.kvp!r} and filter_material={acq.filter_material!r}"
            )
    elif kvp >= _HIGH_ENERGY_MIN_KVP or filt in HIGH_ENERGY_FILTERS:
        raise ValueError(
            f"a {acq.kind} image is a low-energy exposure: kvp must be below "
            f"{_HIGH_ENERGY_MIN_KVP:g} and filter_material not COPPER or TITANIUM, "
            f"got kvp={acq.kvp!r} and filter_material={acq.filter_material!r}"
        )
    if acq.view == "CC" and abs(angle) > 20.0:
        raise ValueError(
            f"a CC view needs a positioner_primary_angle_deg near 0 (|angle| <= 20), got {angle:g}"
        )
    if acq.view == "MLO" and not 20.0 <= abs(angle) <= 80.0:
        raise ValueError(
            "an MLO view needs a positioner_primary_angle_deg of 20 to 80 degrees either way, "
            f"got {angle:g}"
        )


# --- value formatting ---------------------------------------------------------


def _ds(value: float, places: int = 2) -> str:
    """Format a number as a Decimal String of at most 16 characters."""
    text = f"{value:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _code(code: _CodeTuple) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


# --- the dataset --------------------------------------------------------------


def build_mg_dataset(
    pixels: np.ndarray,
    *,
    patient: PatientInfo,
    study: StudyInfo,
    acquisition: AcquisitionInfo,
    pixel_spacing_mm: float,
    bits_stored: int,
    vendor: str | VendorStyle = "standard",
) -> Dataset:
    """Build a Digital Mammography X-Ray Image dataset (For Presentation, or For
    Processing when the acquisition says so).

    Parameters
    ----------
    pixels: numpy.ndarray
        Stored pixel values, uint16, shape (rows, columns), MONOCHROME2
        (dense tissue bright), each below ``2**bits_stored``.
    patient: PatientInfo
        The patient.
    study: StudyInfo
        The study.
    acquisition: AcquisitionInfo
        The image and its exposure.
    pixel_spacing_mm: float
        Imager Pixel Spacing (detector plane), in mm, both directions.
    bits_stored: int
        Bits Stored, 10 to 16 (Bits Allocated is 16).
    vendor: str or VendorStyle, optional
        The vendor style of the header (:data:`VENDOR_STYLES`).

    Returns
    -------
    pydicom.Dataset
        The dataset with its File Meta Information, uncompressed, Explicit
        VR Little Endian.

    Raises
    ------
    TypeError
        When an argument has the wrong type.
    ValueError
        When a value is out of range or inconsistent (see the messages).
    """
    bits_stored = _check_int("bits_stored", bits_stored, 10, 16)
    pixels = _check_pixels(pixels, bits_stored)
    spacing = _check_number("pixel_spacing_mm", pixel_spacing_mm, 0.01, 1.0)
    if not isinstance(patient, PatientInfo):
        raise TypeError(f"patient must be a PatientInfo, got {type(patient).__name__}")
    if not isinstance(study, StudyInfo):
        raise TypeError(f"study must be a StudyInfo, got {type(study).__name__}")
    _check_acquisition(acquisition)
    acq = acquisition
    style = _style(vendor)
    sop_class = (
        DIGITAL_MAMMOGRAPHY_FOR_PROCESSING
        if acq.for_processing
        else DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
    )

    _check_text("patient.patient_id", patient.patient_id, 64)
    _check_person_name("patient.patient_name", patient.patient_name)
    birth = _check_date("patient.birth_date", patient.birth_date)
    age = _check_int("patient.age_years", patient.age_years, 0, 150)
    _check_choice("patient.sex", patient.sex, ("F", "M", "O"))
    weight = _check_number("patient.weight_kg", patient.weight_kg, 1.0, 400.0)
    _check_uid("study.study_instance_uid", study.study_instance_uid)
    _check_text("study.study_id", study.study_id, 16, empty_ok=True)
    _check_text("study.accession_number", study.accession_number, 16, empty_ok=True)
    study_day = _check_date("study.study_date", study.study_date)
    _check_time("study.study_time", study.study_time)
    _check_text("study.description", study.description, 64, empty_ok=True)
    if birth > study_day:
        raise ValueError(
            f"patient.birth_date {patient.birth_date} is after study.study_date {study.study_date}"
        )
    # a modality computes the age from the birth date; allow a year for rounding
    real_age = _age_at(birth, study_day)
    if abs(real_age - age) > 1:
        raise ValueError(
            f"patient.age_years={age} does not match birth_date {patient.birth_date} "
            f"at study_date {study.study_date} (age {real_age})"
        )

    rows, cols = pixels.shape
    ds = Dataset()

    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = acq.sop_instance_uid
    # Patient (+ Patient Study)
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{age:03d}Y"
    ds.PatientWeight = _ds(weight, 1)
    # General Study
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    ds.StudyDescription = study.description
    # General Series, DX Series, Mammography Series
    ds.Modality = "MG"
    ds.SeriesInstanceUID = acq.series_instance_uid
    ds.SeriesNumber = acq.series_number
    ds.SeriesDescription = acq.series_description
    ds.BodyPartExamined = "BREAST"
    ds.PresentationIntentType = "FOR PROCESSING" if acq.for_processing else "FOR PRESENTATION"
    # Frame of Reference: images taken without releasing compression
    if acq.frame_of_reference_uid is not None:
        ds.FrameOfReferenceUID = acq.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = style.manufacturer
    ds.InstitutionName = _INSTITUTION
    ds.StationName = _STATION
    ds.ManufacturerModelName = style.model
    ds.DeviceSerialNumber = _DEVICE_SERIAL
    ds.SoftwareVersions = list(style.software_versions)
    # General Image, DX Image
    ds.ImageType = list(style.image_types[acq.kind])
    ds.InstanceNumber = acq.instance_number
    ds.PatientOrientation = list(_ORIENTATIONS[(acq.laterality, acq.view)])
    ds.ContentDate = acq.acquisition_date
    ds.ContentTime = acq.acquisition_time
    ds.AcquisitionDate = acq.acquisition_date
    ds.AcquisitionTime = acq.acquisition_time
    ds.ImageComments = DISCLAIMER
    if acq.kind == "recombined":
        ds.DerivationDescription = (
            "Recombined image: weighted subtraction of the logarithms of the low- and "
            f"high-energy exposures (iodine image). {DISCLAIMER}"
        )
        ds.DerivationCodeSequence = Sequence([_code(_MULTI_ENERGY)])
        if acq.source_sop_instance_uids:
            refs = []
            for uid in acq.source_sop_instance_uids:
                ref = Dataset()
                ref.ReferencedSOPClassUID = DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
                ref.ReferencedSOPInstanceUID = uid
                refs.append(ref)
            ds.SourceImageSequence = Sequence(refs)
    if acq.kind in style.processing_codes:
        ds.AcquisitionDeviceProcessingCode = style.processing_codes[acq.kind]
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    # higher values = less X-ray intensity (bright dense tissue)
    ds.PixelIntensityRelationshipSign = -1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    # VOI LUT (For Presentation images only)
    if not acq.for_processing:
        ds.WindowCenter = _ds(acq.window_center, 1)
        ds.WindowWidth = _ds(acq.window_width, 1)
        ds.WindowCenterWidthExplanation = "NORMAL"
        # LINEAR is the meaning when the attribute is absent; written only for
        # SIGMOID (OHIF 3.13 cannot display an image that carries VOI LUT Function)
        if acq.voi_lut_function != "LINEAR":
            ds.VOILUTFunction = acq.voi_lut_function
    # Contrast/Bolus: one injection per study, at the study time
    if acq.kind != "non_contrast":
        volume = min(_AGENT_DOSE_ML_PER_KG * weight, _AGENT_MAX_ML)
        ds.ContrastBolusAgent = _AGENT_NAME
        ds.ContrastBolusAgentSequence = Sequence([_code(_IOHEXOL)])
        ds.ContrastBolusRoute = "IV"
        ds.ContrastBolusAdministrationRouteSequence = Sequence([_code(_INTRAVENOUS)])
        ds.ContrastBolusVolume = _ds(volume, 1)
        ds.ContrastBolusStartTime = study.study_time
        ds.ContrastBolusTotalDose = _ds(volume, 1)
        ds.ContrastBolusIngredient = "IODINE"
        ds.ContrastBolusIngredientConcentration = str(_AGENT_CONCENTRATION_MG_PER_ML)
    # DX Anatomy Imaged, Mammography Image
    ds.ImageLaterality = acq.laterality
    ds.AnatomicRegionSequence = Sequence([_code(_BREAST)])
    ds.OrganExposed = "BREAST"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.PositionerType = "MAMMOGRAPHIC"
    if not acq.old_view_codes:
        ds.ViewPosition = acq.view
    view_item = _code((_OLD_VIEW_CODES if acq.old_view_codes else _VIEW_CODES)[acq.view])
    view_item.ViewModifierCodeSequence = Sequence()
    ds.ViewCodeSequence = Sequence([view_item])
    ds.PositionerPrimaryAngle = _ds(acq.positioner_primary_angle_deg, 1)
    ds.PositionerSecondaryAngle = "0"
    ds.DistanceSourceToDetector = _ds(style.source_to_detector_mm)
    ds.BodyPartThickness = _ds(acq.compressed_thickness_mm, 1)
    ds.CompressionForce = _ds(acq.compression_force_n, 1)
    # DX Detector
    ds.DetectorType = style.detector_type
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = _DETECTOR_ID
    ds.DetectorElementSpacing = [_ds(spacing, 4), _ds(spacing, 4)]
    ds.ImagerPixelSpacing = [_ds(spacing, 4), _ds(spacing, 4)]
    # X-Ray Acquisition Dose, Generation, Filtration, Grid
    ds.KVP = _ds(acq.kvp, 1)
    ds.XRayTubeCurrent = acq.tube_current_ma
    ds.ExposureTime = acq.exposure_time_ms
    ds.Exposure = max(1, round(acq.exposure_mas))
    ds.ExposureInuAs = round(acq.exposure_mas * 1000)
    # a detector-signal index; kept simple and deterministic
    ds.RelativeXRayExposure = max(1, round(acq.exposure_mas * acq.kvp / 10))
    ds.EntranceDoseInmGy = _ds(acq.entrance_dose_mgy, 3)
    ds.OrganDose = _ds(acq.organ_dose_mgy / 100.0, 5)  # Organ Dose is in dGy
    ds.ExposureControlMode = "AUTOMATIC"
    ds.FocalSpots = _ds(_FOCAL_SPOT_MM, 1)
    ds.AnodeTargetMaterial = acq.anode
    ds.FilterMaterial = acq.filter_material
    thickness = _FILTER_THICKNESS_MM.get(acq.filter_material)
    if thickness is not None:
        ds.FilterThicknessMinimum = _ds(thickness, 3)
        ds.FilterThicknessMaximum = _ds(thickness, 3)
    ds.Grid = "RECIPROCATING"
    # Acquisition Context (Type 2: present, empty)
    ds.AcquisitionContextSequence = Sequence()

    # A small vendor block, as real Senographe images carry one; only
    # elements whose VR pydicom, dcmtk and dicom3tools agree on
    if style.gems_block:
        block = ds.private_block(0x0045, _PRIVATE_CREATOR, create=True)
        block.add_new(0x14, "DS", _ds(spacing * 1000, 1))  # Pixel Pitch Microns
        block.add_new(0x15, "IS", bits_stored)  # Pixel Depth Bits
        if not acq.for_processing:  # Windowing parameters
            block.add_new(0x29, "DS", [ds.WindowCenter, ds.WindowWidth])

    ds.PixelData = pixels.astype("<u2", copy=False).tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = acq.sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    return ds


def write_dataset(
    ds: Dataset, path: Path | str, transfer_syntax: TransferSyntaxName = "explicit"
) -> None:
    """Write a dataset as a DICOM file in one of the supported transfer syntaxes.

    The dataset given is not changed. Compression is lossless: decoding the
    file gives back exactly the stored pixel values.

    Parameters
    ----------
    ds: pydicom.Dataset
        A dataset with File Meta Information, e.g. from
        :func:`build_mg_dataset`.
    path: pathlib.Path or str
        The file to write (its folder must exist); replaced if present.
    transfer_syntax: {"explicit", "jpeg2000", "jpegls", "rle"}, optional
        Explicit VR Little Endian, JPEG 2000 Lossless Only, JPEG-LS
        Lossless or RLE Lossless.

    Raises
    ------
    ValueError
        When the transfer syntax is unknown or the dataset has no File Meta
        Information.
    """
    try:
        uid = TRANSFER_SYNTAX_UIDS[transfer_syntax]
    except KeyError:
        raise ValueError(
            f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAX_UIDS)}, "
            f"got {transfer_syntax!r}"
        ) from None
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise ValueError("ds has no File Meta Information with a Transfer Syntax UID")
    out = ds
    if meta.TransferSyntaxUID != uid:
        out = copy.deepcopy(ds)
        if uid.is_compressed:
            arr = ds.pixel_array
            out.compress(
                uid,
                arr,
                encoding_plugin=_ENCODING_PLUGINS[transfer_syntax],
                generate_instance_uid=False,
            )
        else:
            out.decompress(generate_instance_uid=False)
    out.save_as(path, enforce_file_format=True)


def write_mg_image(
    path: Path | str,
    pixels: np.ndarray,
    *,
    transfer_syntax: TransferSyntaxName = "explicit",
    patient: PatientInfo,
    study: StudyInfo,
    acquisition: AcquisitionInfo,
    pixel_spacing_mm: float,
    bits_stored: int,
    vendor: str | VendorStyle = "standard",
) -> None:
    """Build a mammogram dataset and write it to a file.

    Parameters
    ----------
    path: pathlib.Path or str
        The file to write (its folder must exist).
    pixels: numpy.ndarray
        Stored pixel values, uint16, shape (rows, columns).
    transfer_syntax: {"explicit", "jpeg2000", "jpegls", "rle"}, optional
        Transfer syntax of the file (lossless).
    patient: PatientInfo
        The patient.
    study: StudyInfo
        The study.
    acquisition: AcquisitionInfo
        The image and its exposure.
    pixel_spacing_mm: float
        Imager Pixel Spacing in mm.
    bits_stored: int
        Bits Stored, 10 to 16.
    vendor: str or VendorStyle, optional
        The vendor style of the header (:data:`VENDOR_STYLES`).

    See Also
    --------
    build_mg_dataset, write_dataset
    """
    if transfer_syntax not in TRANSFER_SYNTAX_UIDS:
        raise ValueError(
            f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAX_UIDS)}, "
            f"got {transfer_syntax!r}"
        )
    ds = build_mg_dataset(
        pixels,
        patient=patient,
        study=study,
        acquisition=acquisition,
        pixel_spacing_mm=pixel_spacing_mm,
        bits_stored=bits_stored,
        vendor=vendor,
    )
    uid = TRANSFER_SYNTAX_UIDS[transfer_syntax]
    if uid.is_compressed:
        # the array is at hand: no need to decode it back from PixelData
        ds.compress(
            uid,
            np.ascontiguousarray(pixels),
            encoding_plugin=_ENCODING_PLUGINS[transfer_syntax],
            generate_instance_uid=False,
        )
    ds.save_as(path, enforce_file_format=True)

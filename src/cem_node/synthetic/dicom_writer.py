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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from pydicom import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from cem_node.synthetic.dicom_checks import (
    _age_at,
    _check_choice,
    _check_date,
    _check_int,
    _check_number,
    _check_person_name,
    _check_pixels,
    _check_text,
    _check_time,
    _check_uid,
)
from cem_node.synthetic.dicom_modules import (
    add_contrast_bolus,
    add_detector_and_exposure,
    add_gems_private_block,
    add_general_image,
    add_image_pixel_and_voi,
    add_mammography_image,
    add_patient_and_study,
    add_series_and_equipment,
    file_meta,
)
from cem_node.synthetic.dicom_vocabulary import (
    _ANODES,
    _FILTERS,
    _HIGH_ENERGY_MIN_KVP,
    _IMAGE_TYPES,
    _ORIENTATIONS,
    DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION,
    DIGITAL_MAMMOGRAPHY_FOR_PROCESSING,
    DISCLAIMER,
    HIGH_ENERGY_FILTERS,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    VENDOR_STYLES,
    VendorName,
    VendorStyle,
)

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


# --- the dataset --------------------------------------------------------------


def _check_patient_and_study(patient: PatientInfo, study: StudyInfo) -> tuple[int, float]:
    """Check the patient and the study; return the patient's age and weight."""
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
    return age, weight


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
    age, weight = _check_patient_and_study(patient, study)

    # one call per group of modules (cem_node.synthetic.dicom_modules)
    ds = Dataset()
    add_patient_and_study(ds, sop_class, patient, study, acq, age=age, weight=weight)
    add_series_and_equipment(ds, acq, style)
    add_general_image(ds, acq, style)
    add_image_pixel_and_voi(ds, pixels.shape, bits_stored, acq)
    add_contrast_bolus(ds, acq, study, weight=weight)
    add_mammography_image(ds, acq, style)
    add_detector_and_exposure(ds, acq, style, spacing)
    add_gems_private_block(ds, acq, style, spacing, bits_stored)
    ds.PixelData = pixels.astype("<u2", copy=False).tobytes()
    ds.file_meta = file_meta(sop_class, acq.sop_instance_uid)
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

"""The DICOM modules of a synthetic Digital Mammography X-Ray image.

Each function here fills one group of modules (PS3.3 A.26) of the dataset
:func:`cem_node.synthetic.dicom_writer.build_mg_dataset` builds, from
values that function has already checked; the module documentation there
explains the choices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from cem_node.synthetic.dicom_vocabulary import (
    _AGENT_CONCENTRATION_MG_PER_ML,
    _AGENT_DOSE_ML_PER_KG,
    _AGENT_MAX_ML,
    _AGENT_NAME,
    _BREAST,
    _DETECTOR_ID,
    _DEVICE_SERIAL,
    _FILTER_THICKNESS_MM,
    _FOCAL_SPOT_MM,
    _INSTITUTION,
    _INTRAVENOUS,
    _IOHEXOL,
    _MULTI_ENERGY,
    _OLD_VIEW_CODES,
    _ORIENTATIONS,
    _PRIVATE_CREATOR,
    _STATION,
    _VIEW_CODES,
    DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION,
    DISCLAIMER,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    VendorStyle,
    _CodeTuple,
)

if TYPE_CHECKING:  # annotations only: dicom_writer imports this module
    from cem_node.synthetic.dicom_writer import AcquisitionInfo, PatientInfo, StudyInfo


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


# --- the modules --------------------------------------------------------------


def add_patient_and_study(
    ds: Dataset,
    sop_class: UID,
    patient: PatientInfo,
    study: StudyInfo,
    acq: AcquisitionInfo,
    *,
    age: int,
    weight: float,
) -> None:
    """SOP Common, Patient (+ Patient Study) and General Study."""
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


def add_series_and_equipment(ds: Dataset, acq: AcquisitionInfo, style: VendorStyle) -> None:
    """General Series, DX Series, Mammography Series, Frame of Reference and
    General Equipment."""
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


def add_general_image(ds: Dataset, acq: AcquisitionInfo, style: VendorStyle) -> None:
    """General Image and DX Image, with the derivation of a recombined image."""
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


def add_image_pixel_and_voi(
    ds: Dataset, shape: tuple[int, int], bits_stored: int, acq: AcquisitionInfo
) -> None:
    """Image Pixel (without Pixel Data) and, For Presentation, VOI LUT."""
    rows, cols = shape
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


def add_contrast_bolus(
    ds: Dataset, acq: AcquisitionInfo, study: StudyInfo, *, weight: float
) -> None:
    """Contrast/Bolus of a CEM image: one injection per study, at the study time."""
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


def add_mammography_image(ds: Dataset, acq: AcquisitionInfo, style: VendorStyle) -> None:
    """DX Anatomy Imaged and Mammography Image (laterality, view, positioner)."""
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


def add_detector_and_exposure(
    ds: Dataset, acq: AcquisitionInfo, style: VendorStyle, spacing: float
) -> None:
    """DX Detector, X-Ray Acquisition Dose, Generation, Filtration and Grid, and
    the (empty) Acquisition Context."""
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


def add_gems_private_block(
    ds: Dataset, acq: AcquisitionInfo, style: VendorStyle, spacing: float, bits_stored: int
) -> None:
    """GE's private block GEMS_SENO_02, for the styles that carry it.

    Call it after :func:`add_image_pixel_and_voi`: it copies the window.
    """
    # A small vendor block, as real Senographe images carry one; only
    # elements whose VR pydicom, dcmtk and dicom3tools agree on
    if style.gems_block:
        block = ds.private_block(0x0045, _PRIVATE_CREATOR, create=True)
        block.add_new(0x14, "DS", _ds(spacing * 1000, 1))  # Pixel Pitch Microns
        block.add_new(0x15, "IS", bits_stored)  # Pixel Depth Bits
        if not acq.for_processing:  # Windowing parameters
            block.add_new(0x29, "DS", [ds.WindowCenter, ds.WindowWidth])


def file_meta(sop_class: UID, sop_instance_uid: str) -> FileMetaDataset:
    """File Meta Information of an uncompressed, Explicit VR Little Endian file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta

"""What every result object of the node shares: the toolkit of the SEG, the
analysis SR, the GSPS and the not-analysable SR.

:class:`ReportingDevice`, the checks of the source headers, the TID 1500
root and image library, :func:`build_comprehensive_sr`, the model bundle's
Contributing Equipment item and disclaimer (:func:`model_equipment`,
:func:`model_disclaimer`, :func:`result_series_description`) and
:func:`stamp_times`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import pydicom
from highdicom import ContributingEquipment
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    ComprehensiveSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    ImageContentItem,
    LanguageOfContentItemAndDescendants,
    ObservationContext,
    ObserverContext,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.sr.codedict import codes
from pydicom.uid import RE_VALID_UID, UID, generate_uid
from pydicom.valuerep import DA, DT, TM

from cem_node import __version__
from cem_node.contracts.findings import Findings, ModelIdentity, ViewResult

__all__ = [
    "COMPREHENSIVE_SR",
    "NOT_FOR_CLINICAL_USE",
    "QUALITATIVE_EVALUATIONS",
    "REQUIRED_UIDS",
    "ReportingDevice",
    "build_comprehensive_sr",
    "check_series_number",
    "check_sources",
    "check_uid",
    "check_view_image",
    "device_texts",
    "hierarchical_references",
    "image_library",
    "is_valid_uid",
    "missing_view_image",
    "model_description",
    "model_disclaimer",
    "model_equipment",
    "qualitative_evaluations",
    "report_root",
    "result_series_description",
    "stamp_times",
    "utf8_if_needed",
]

COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"

# TID 1500 row 12; not in pydicom's code dictionary under this scheme.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
_LANGUAGE = CodedConcept("en-US", "RFC5646", "English (United States)")
# CID 100 is extensible, but PixelMed rejects codes outside it (e.g. 71651007
# "Mammography"); "Imaging procedure" is in it.
_PROCEDURE_REPORTED = CodedConcept("363679005", "SCT", "Imaging procedure")
_SOURCE = CodedConcept("260753009", "SCT", "Source")
_PATIENT_SEX = frozenset({"M", "F", "O"})
# Type 2 attributes highdicom reads from the first evidence dataset by name.
_TYPE2_IDENTITY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_LO_MAX = 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_lo(owner: str, name: str, value: object) -> None:
    """Check a value that goes into a DICOM LO element (64 characters, no backslash)."""
    if not isinstance(value, str):
        raise TypeError(f"{owner}.{name} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{owner}.{name} must not be empty or blank")
    if len(value) > _LO_MAX:
        raise ValueError(
            f"{owner}.{name} has {len(value)} characters; DICOM LO allows at most {_LO_MAX}: "
            f"{value!r}"
        )
    if "\\" in value or _CONTROL.search(value):
        raise ValueError(
            f"{owner}.{name} must not contain a backslash or control characters: {value!r}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportingDevice:
    """The software that writes a result object (General Equipment, observer device).

    Parameters
    ----------
    manufacturer
        Manufacturer (0008,0070) and the device observer's manufacturer.
    model_name
        Manufacturer's Model Name (0008,1090), the device observer's name and
        model, and the algorithm name in the content tree.
    software_version
        Software Versions (0018,1020) and the algorithm version.
    device_serial_number
        Device Serial Number (0018,1000) and the device observer's serial
        number: something that tells installations apart, e.g. the node's AE
        title.
    institution_name
        Institution Name (0008,0080) of the site running the node, if known.

    Raises
    ------
    TypeError, ValueError
        When a value is not a non-blank str of at most 64 characters without
        backslashes or control characters (DICOM LO).
    """

    manufacturer: str = "cem-node developers"
    model_name: str = "cem-node"
    software_version: str = field(default=__version__)
    device_serial_number: str
    institution_name: str | None = None

    def __post_init__(self) -> None:
        for name in ("manufacturer", "model_name", "software_version", "device_serial_number"):
            _check_lo("ReportingDevice", name, getattr(self, name))
        if self.institution_name is not None:
            _check_lo("ReportingDevice", "institution_name", self.institution_name)

    @property
    def observer_uid(self) -> str:
        """Device Observer UID (121012, DCM): the same for the same device, on every run."""
        return generate_uid(
            entropy_srcs=[
                "cem-node device observer",
                self.manufacturer,
                self.model_name,
                self.device_serial_number,
            ]
        )


#: Manufacturer of the model bundle in Contributing Equipment and the SR's observer context.
MODEL_MANUFACTURER = "cem-node"
#: Disclaimer when a bundle is not for clinical use and does not bring its own.
RESEARCH_USE_ONLY = "research use only"
_ST_MAX = 1024


def model_disclaimer(model: ModelIdentity) -> str | None:
    """The disclaimer every result object of ``model`` carries (None: none needed).

    A bundle that is not for clinical use gets ``"NOT FOR CLINICAL USE: <its
    disclaimer, or 'research use only'>"``; a clinical bundle keeps its own
    disclaimer, if it has one.
    """
    if model.for_clinical_use:
        return model.disclaimer
    return f"{NOT_FOR_CLINICAL_USE}: {model.disclaimer or RESEARCH_USE_ONLY}"


def result_series_description(what: str, model: ModelIdentity) -> str:
    """``"CEM AI: <what>"``, plus ``" (NOT FOR CLINICAL USE)"`` for a research bundle.

    Raises ValueError when the result exceeds 64 characters (DICOM LO).
    """
    text = f"CEM AI: {what}"
    if not model.for_clinical_use:
        text += f" ({NOT_FOR_CLINICAL_USE})"
    _check_lo("series description", "value", text)
    return text


def model_description(model: ModelIdentity) -> str:
    """One line naming the bundle, its hash and intended use (and its disclaimer)."""
    text = (
        f"Model bundle {model.name} {model.version} (manifest sha256 {model.sha256}); "
        f"intended use: {model.intended_use}"
    )
    disclaimer = model_disclaimer(model)
    if disclaimer:
        text += f"; {disclaimer}"
    return text


def model_equipment(model: ModelIdentity, when: datetime) -> ContributingEquipment:
    """Contributing Equipment item of the model bundle that produced a result.

    Manufacturer "cem-node", the bundle name as model name, Software Versions
    [cem-node version, bundle version], the bundle's SHA-256 (64 hex digits,
    exactly an LO) as Device Serial Number, purpose (109102, DCM, "Processing
    Equipment"): the bundle computed the object, it did not modify an
    existing one. The description names the bundle, its intended use and
    disclaimer.
    """
    return ContributingEquipment(
        manufacturer=MODEL_MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name,
        software_versions=[__version__, model.version],
        device_serial_number=model.sha256,
        contribution_datetime=DT(when),
        contribution_description=model_description(model)[:_ST_MAX],
    )


def is_valid_uid(value: str) -> bool:
    """A DICOM UID: dotted decimal without leading zeros, at most 64 characters."""
    return len(value) <= 64 and RE_VALID_UID.match(value) is not None


def _describe(index: int, ds: pydicom.Dataset) -> str:
    uid = ds.get("SOPInstanceUID")
    return f"source_images[{index}]" + (f" (SOPInstanceUID {uid})" if uid else "")


def check_sources(source_images: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Validate the received headers; return them without exact duplicates.

    Each needs the four UIDs; all must be of one study and one patient; one SOP
    Instance UID must not come with two SOP classes or series.
    """
    if isinstance(source_images, pydicom.Dataset | str | bytes) or not isinstance(
        source_images, Sequence
    ):
        raise TypeError(
            "source_images must be a sequence of pydicom.Dataset, got "
            f"{type(source_images).__name__}"
        )
    if len(source_images) == 0:
        raise ValueError("source_images is empty: the report needs at least one received instance")
    unique: dict[str, tuple[int, pydicom.Dataset]] = {}
    first: tuple[int, pydicom.Dataset] | None = None
    for index, ds in enumerate(source_images):
        if not isinstance(ds, pydicom.Dataset):
            raise TypeError(
                f"source_images[{index}] must be a pydicom.Dataset, got {type(ds).__name__}"
            )
        for keyword in REQUIRED_UIDS:
            value = ds.get(keyword)
            if not value or not str(value).strip():
                raise ValueError(f"{_describe(index, ds)} has no {keyword}")
            if not is_valid_uid(str(value)):
                raise ValueError(f"{_describe(index, ds)} has an invalid {keyword}: {value!r}")
        if first is None:
            first = (index, ds)
        else:
            first_index, first_ds = first
            if ds.StudyInstanceUID != first_ds.StudyInstanceUID:
                raise ValueError(
                    "source_images belong to different studies: "
                    f"{_describe(first_index, first_ds)} has StudyInstanceUID "
                    f"{first_ds.StudyInstanceUID}, {_describe(index, ds)} has StudyInstanceUID "
                    f"{ds.StudyInstanceUID}"
                )
            ours, theirs = str(ds.get("PatientID") or ""), str(first_ds.get("PatientID") or "")
            if ours and theirs and ours != theirs:
                raise ValueError(
                    "source_images of study "
                    f"{ds.StudyInstanceUID} name different patients: "
                    f"{_describe(first_index, first_ds)} has PatientID {theirs!r}, "
                    f"{_describe(index, ds)} has PatientID {ours!r}"
                )
        seen = unique.get(ds.SOPInstanceUID)
        if seen is None:
            unique[ds.SOPInstanceUID] = (index, ds)
            continue
        seen_index, seen_ds = seen
        for keyword in ("SOPClassUID", "SeriesInstanceUID"):
            if seen_ds[keyword].value != ds[keyword].value:
                raise ValueError(
                    f"source_images[{seen_index}] and source_images[{index}] share "
                    f"SOPInstanceUID {ds.SOPInstanceUID} but differ in {keyword}: "
                    f"{seen_ds[keyword].value} vs {ds[keyword].value}"
                )
    return [ds for _, ds in unique.values()]


def check_uid(name: str, value: str | None) -> str:
    """A caller's UID, checked; a new random one for None."""
    if value is None:
        return generate_uid()
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    if not is_valid_uid(value):
        raise ValueError(f"{name} is not a valid DICOM UID: {value!r}")
    return value


def _stand_in(first: pydicom.Dataset, sop_instance_uid: str, series_uid: str) -> pydicom.Dataset:
    """Patient and study attributes of the first source, as evidence[0] for highdicom.

    highdicom copies the Patient and Study modules from ``evidence[0]`` after
    looking up its SOP class in its IOD tables, which do not know private SOP
    classes. The stand-in carries the source's attributes under the SR's own
    SOP class (whose IOD has the same Patient/Study modules), so any source
    works; the evidence sequence is rebuilt from the real sources afterwards.
    """
    ds = pydicom.Dataset()
    for elem in first:
        if elem.tag.group >= 0x7FE0 or elem.tag.is_private:
            continue
        ds.add(copy.deepcopy(elem))
    for keyword in _TYPE2_IDENTITY:
        if keyword not in ds:
            setattr(ds, keyword, None)
    sex = str(ds.PatientSex or "").strip().upper()
    # An invalid value cannot be written validly; PatientSex is Type 2.
    ds.PatientSex = sex if sex in _PATIENT_SEX else None
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID = sop_instance_uid
    ds.SeriesInstanceUID = series_uid
    return ds


def _evidence_item(ds: pydicom.Dataset) -> pydicom.Dataset:
    item = pydicom.Dataset()
    for keyword in REQUIRED_UIDS:
        setattr(item, keyword, ds[keyword].value)
    return item


def _is_image(ds: pydicom.Dataset) -> bool:
    """Whether a header describes an image (has an Image Pixel module)."""
    return "Rows" in ds and "Columns" in ds


def report_root(
    device: ReportingDevice,
    *,
    observer_model_name: str | None = None,
    observer_uid: str | None = None,
) -> ContainerContentItem:
    """The root of a TID 1500 report: language, the device observer, procedure reported.

    The device observer (TID 1004) is ``device``; ``observer_model_name`` and
    ``observer_uid`` replace its model name and UID, e.g. to name the model
    bundle the device ran (TID 1002 allows one device observer: PixelMed
    rejects two).
    """
    root = ContainerContentItem(name=codes.cid7021.ImagingMeasurementReport, template_id="1500")
    root.ContentSequence = ContentSequence()
    root.ContentSequence.extend(LanguageOfContentItemAndDescendants(_LANGUAGE))
    observer = ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=observer_uid or device.observer_uid,
            name=device.model_name,
            manufacturer_name=device.manufacturer,
            model_name=observer_model_name or device.model_name,
            serial_number=device.device_serial_number,
        ),
    )
    root.ContentSequence.extend(ObservationContext(observer_device_context=observer))
    root.ContentSequence.append(
        CodeContentItem(
            name=codes.DCM.ProcedureReported,
            value=_PROCEDURE_REPORTED,
            relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
        )
    )
    return root


def image_library(sources: Sequence[pydicom.Dataset]) -> ContainerContentItem:
    """TID 1600 Image Library: one group listing every image (Rows and Columns) once.

    Present even when empty: OHIF dereferences it unconditionally.
    """
    contains = RelationshipTypeValues.CONTAINS
    library = ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=contains)
    images = [ds for ds in sources if _is_image(ds)]
    if images:
        group = ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=contains)
        group.ContentSequence = ContentSequence(
            [
                ImageContentItem(
                    name=_SOURCE,
                    referenced_sop_class_uid=ds.SOPClassUID,
                    referenced_sop_instance_uid=ds.SOPInstanceUID,
                    relationship_type=contains,
                )
                for ds in images
            ]
        )
        library.ContentSequence = ContentSequence([group])
    return library


def qualitative_evaluations(texts: Sequence[tuple[CodedConcept, str]]) -> ContainerContentItem:
    """TID 1500 row 12: a Qualitative Evaluations container of TEXT items."""
    contains = RelationshipTypeValues.CONTAINS
    evaluations = ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type=contains)
    evaluations.ContentSequence = ContentSequence(
        [TextContentItem(name=name, value=text, relationship_type=contains) for name, text in texts]
    )
    return evaluations


def check_series_number(series_number: object) -> int:
    """A Series Number: an int in 1..2**31-1 (raises TypeError / ValueError)."""
    if isinstance(series_number, bool) or not isinstance(series_number, int):
        raise TypeError(f"series_number must be an int, got {type(series_number).__name__}")
    if not 1 <= series_number <= 2**31 - 1:
        raise ValueError(f"series_number must be in 1..2147483647, got {series_number}")
    return series_number


def stamp_times(ds: pydicom.Dataset, when: datetime) -> None:
    """Replace the clock times highdicom stamps with ``when``.

    Instance creation date/time, every Contribution DateTime, and the
    Timezone Offset From UTC when ``when`` is timezone-aware: the same inputs
    then give the same bytes.
    """
    ds.InstanceCreationDate = DA(when.date())
    ds.InstanceCreationTime = TM(when.time())
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = DT(when)
    utc_offset = when.utcoffset()
    if utc_offset is not None:
        offset = int(utc_offset.total_seconds() // 60)
        sign = "+" if offset >= 0 else "-"
        ds.TimezoneOffsetFromUTC = f"{sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"


def device_texts(device: ReportingDevice) -> list[str | None]:
    """The device's free texts (for :func:`utf8_if_needed`)."""
    return [
        device.manufacturer,
        device.model_name,
        device.device_serial_number,
        device.software_version,
        device.institution_name,
    ]


def utf8_if_needed(texts: Iterable[str | None]) -> dict[str, str]:
    """``{"specific_character_set": "ISO_IR 192"}`` when a text is not ASCII, else ``{}``.

    Keyword arguments for highdicom's constructors: with ``{}`` the object
    keeps the source's Specific Character Set; with UTF-8 every value,
    including those copied from the source, is written in UTF-8.
    """
    if all(t is None or t.isascii() for t in texts):
        return {}
    return {"specific_character_set": "ISO_IR 192"}


def build_comprehensive_sr(
    sources: Sequence[pydicom.Dataset],
    content: ContainerContentItem,
    *,
    device: ReportingDevice,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    when: datetime,
    series_description: str,
    texts: Sequence[str] = (),
    contributing_equipment: Sequence[ContributingEquipment] | None = None,
    coding_schemes: Sequence[CodingSchemeIdentificationItem] | None = None,
) -> ComprehensiveSR:
    """Wrap a content tree into a Comprehensive SR of the sources' patient and study.

    ``sources`` are checked headers (:func:`check_sources`); all are listed in
    the Current Requested Procedure Evidence Sequence and nothing else is.
    ``texts`` are the free texts of the content: any non-ASCII one switches the
    character set to UTF-8. ``coding_schemes`` identify private coding schemes
    used in the content.
    """
    charset = utf8_if_needed([*texts, *device_texts(device), series_description])
    evidence = [_evidence_item(ds) for ds in sources]
    sr = ComprehensiveSR(
        evidence=[_stand_in(sources[0], sop_instance_uid, series_instance_uid), *evidence],
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=device.manufacturer,
        manufacturer_model_name=device.model_name,
        software_versions=device.software_version,
        device_serial_number=device.device_serial_number,
        institution_name=device.institution_name,
        series_description=series_description,
        is_complete=True,
        is_final=False,
        content_date=DA(when.date()),
        content_time=TM(when.time()),
        series_date=DA(when.date()),
        series_time=TM(when.time()),
        contributing_equipment=contributing_equipment,
        coding_schemes=coding_schemes,
        **charset,
    )
    # The stand-in must not be referenced: list exactly the received instances (highdicom
    # has checked that the content references nothing else, so no second search of the tree)
    sr.CurrentRequestedProcedureEvidenceSequence = hierarchical_references(evidence)
    if "PertinentOtherEvidenceSequence" in sr:
        del sr.PertinentOtherEvidenceSequence
    stamp_times(sr, when)
    return sr


def hierarchical_references(instances: Iterable[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The SOP Instance Reference Macro (Hierarchical, PS3.3 Table C.17-3) of ``instances``.

    One item per study with its Referenced Series Sequence, one series item
    with the Referenced SOP Sequence of its instances (SOP class and instance
    UIDs), in the order first seen; an instance listed twice is named once.
    The SR's evidence sequences and its Predecessor Documents Sequence use it.
    """
    studies: dict[str, dict[str, list[pydicom.Dataset]]] = {}
    seen: set[str] = set()
    for ds in instances:
        if str(ds.SOPInstanceUID) in seen:
            continue
        seen.add(str(ds.SOPInstanceUID))
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        series = studies.setdefault(str(ds.StudyInstanceUID), {})
        series.setdefault(str(ds.SeriesInstanceUID), []).append(item)
    out = []
    for study_uid, series_items in studies.items():
        study_item = pydicom.Dataset()
        study_item.StudyInstanceUID = study_uid
        study_item.ReferencedSeriesSequence = []
        for series_uid, referenced in series_items.items():
            series_item = pydicom.Dataset()
            series_item.SeriesInstanceUID = series_uid
            series_item.ReferencedSOPSequence = referenced
            study_item.ReferencedSeriesSequence.append(series_item)
        out.append(study_item)
    return out


def missing_view_image(
    findings: Findings, available: Container[str]
) -> tuple[str, str, ViewResult] | None:
    """The first analysed image (kind, SOP Instance UID, view) not in ``available``.

    Each view's recombined image is looked for first, then its low-energy one.
    """
    for view in findings.views:
        for kind, uid in (
            ("recombined", view.recombined_sop_instance_uid),
            ("low-energy", view.low_energy_sop_instance_uid),
        ):
            if uid not in available:
                return kind, uid, view
    return None


def check_view_image(
    argument: str, kind: str, uid: str, view: ViewResult, image: pydicom.Dataset
) -> None:
    """Check that ``image`` (passed as ``argument``) is the ``kind`` image of ``view``.

    Raises
    ------
    ValueError
        When its SOP Instance UID or its size is not the one the findings name.
    """
    if image.get("SOPInstanceUID") != uid:
        raise ValueError(
            f"{argument} {image.get('SOPInstanceUID')} is not the {kind} image {uid} of view "
            f"{view.laterality}-{view.view}"
        )
    if (image.get("Rows"), image.get("Columns")) != (view.rows, view.columns):
        raise ValueError(
            f"{argument} is {image.get('Rows')} x {image.get('Columns')} pixels, the findings "
            f"of view {view.laterality}-{view.view} are {view.rows} x {view.columns}"
        )

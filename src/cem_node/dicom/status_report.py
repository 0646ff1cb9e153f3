"""The "not analysable" report: a short SR telling the radiologist the AI did not read a study.

When a received study holds no usable low-energy / recombined (LE/RC) pair, the
node still answers, so that nobody mistakes silence for a negative reading. The
answer is a Comprehensive SR whose root is a TID 1500 "Imaging Measurement
Report" (126000, DCM): OHIF only opens SR documents with that root, and PACS
text renderers show its content tree as it is.

Content tree (PS3.16 TID 1500 as PixelMed's validator encodes it)::

    CONTAINER (126000, DCM, "Imaging Measurement Report")            TID 1500
      HAS CONCEPT MOD  Language of Content Item and Descendants     TID 1204
      HAS OBS CONTEXT  Observer Type = Device, Device Observer UID,
                       Name, Manufacturer, Model Name, Serial No.    TID 1001/1004
      HAS CONCEPT MOD  Procedure reported = (363679005, SCT, "Imaging procedure")
      CONTAINS  CONTAINER (111028, DCM, "Image Library")            TID 1600
                  > Image Library Group > IMAGE "Source" per received image
      CONTAINS  CONTAINER (126010, DCM, "Imaging Measurements")
                  > Measurement Group without measurements           TID 1501
                      Tracking Identifier, Tracking Unique Identifier
                      Algorithm Name, Version, Family                TID 4019
      CONTAINS  CONTAINER (C0034375, UMLS, "Qualitative Evaluations")
                  TEXT (121071, DCM, "Finding")  "AI analysis not performed: <reason>"
                  TEXT (121106, DCM, "Comment")  "Written by cem-node 0.1.0 (...)"
                  TEXT (121106, DCM, "Comment")  "NOT FOR CLINICAL USE: ..." (optional)

Why this shape:

* highdicom's :class:`highdicom.sr.MeasurementReport` refuses a report without
  at least one measurement group, so the tree is assembled from highdicom's
  content items and templates instead, following TID 1500 directly: the
  standard lets row 12 (Qualitative Evaluations, any TEXT or CODE item) stand
  alone, and that is where the statement lives.
* OHIF's SR loader (``extensions/cornerstone-dicom-sr``) reads
  ``ImageLibrary.ContentSequence`` and ``ImagingMeasurements.ContentSequence``
  without checking that the containers exist, so both are always present. The
  Imaging Measurements container holds one TID 1501 group without measurements
  (allowed: every row of TID 1501 but the tracking identifiers is optional);
  OHIF turns it into a measurement without coordinates and draws nothing. An
  SR with no image reference cannot show text on an image in OHIF; the viewer
  shows the series description ("CEM AI: not analysed ...") in the study
  browser, which is why the key words are repeated there.
* The reason is free text (it is produced by the node's selection and pairing
  rules), so it is a TEXT item; a coded "not performed" would say less. The
  software name and version are in TID 4019 inside the measurement group (the
  place TID 1500 readers look) and, for people, in a Comment; TID 4019 is not
  repeated under Qualitative Evaluations, where PixelMed takes its items for
  row 13/14 evaluations and rejects their relationship type.
* Procedure reported is "Imaging procedure", not "Mammography": CID 100 is
  extensible, but PixelMed reports codes outside it as errors.
* Comprehensive rather than Enhanced SR (both would hold this tree): the
  node's lesion reports are Comprehensive SR, and one SOP class for all of
  the node's SR keeps PACS routing and viewer handling the same.
* Every received instance is listed in the Current Requested Procedure
  Evidence Sequence (a viewer refused an SR without it); image instances are
  also listed in the Image Library.

Nothing depends on the clock or on random numbers when ``series_instance_uid``,
``sop_instance_uid`` and ``content_datetime`` are given: the tracking UID and
the device observer UID are derived from them and from the device.

The module also holds what every result object of the node shares, used by
the analysis report (:mod:`cem_node.dicom.sr`), the SEG and the GSPS:
:class:`ReportingDevice`, the checks of the source headers, the TID 1500 root
and image library, :func:`build_comprehensive_sr`, the model bundle's
Contributing Equipment item and disclaimer (:func:`model_equipment`,
:func:`model_disclaimer`, :func:`result_series_description`),
:func:`stamp_times`, and :func:`replace_earlier_reports`, which makes any of
the node's SRs name the reports of earlier rounds it replaces.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import pydicom
from highdicom import ContributingEquipment
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    ComprehensiveSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    ImageContentItem,
    LanguageOfContentItemAndDescendants,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    RelationshipTypeValues,
    TextContentItem,
    TrackingIdentifier,
)
from highdicom.sr.utils import collect_evidence
from pydicom.sr.codedict import codes
from pydicom.uid import RE_VALID_UID, UID, generate_uid
from pydicom.valuerep import DA, DT, TM

from cem_node import __version__
from cem_node.findings import ModelIdentity, ViewResult

__all__ = [
    "COMPREHENSIVE_SR",
    "NOT_FOR_CLINICAL_USE",
    "REPLACES_PREFIX",
    "ReportingDevice",
    "build_comprehensive_sr",
    "build_not_analysable_sr",
    "check_series_number",
    "check_sources",
    "check_uid",
    "check_view_image",
    "device_texts",
    "image_library",
    "model_description",
    "model_disclaimer",
    "model_equipment",
    "not_analysed_series_description",
    "predecessor_documents",
    "qualitative_evaluations",
    "replace_earlier_reports",
    "report_root",
    "result_series_description",
    "stamp_times",
    "utf8_if_needed",
]

COMPREHENSIVE_SR = UID("1.2.840.10008.5.1.4.1.1.88.33")
NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"
#: Statement that opens the Finding text item.
STATEMENT_PREFIX = "AI analysis not performed: "
#: Tracking Identifier of the (measurement-free) TID 1501 group.
TRACKING_IDENTIFIER = "CEM AI analysis not performed"
#: Text of the comment added when ``not_for_clinical_use``.
DISCLAIMER = (
    f"{NOT_FOR_CLINICAL_USE}: research software that is not a medical device; "
    "this report is not a reading of the images."
)

#: Opens the Comment of a report that replaces reports of earlier rounds.
REPLACES_PREFIX = "This report replaces "
#: SOP Class UIDs of SR documents (PS3.4 B.5) start with it.
_SR_CLASS_ROOT = "1.2.840.10008.5.1.4.1.1.88."
# TID 1500 row 12; not in pydicom's code dictionary under this scheme.
_QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
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
_REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
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


def not_analysed_series_description(not_for_clinical_use: bool = True) -> str:
    """Series Description of a "not analysable" SR (at most 64 characters)."""
    if not_for_clinical_use:
        return f"CEM AI: not analysed ({NOT_FOR_CLINICAL_USE})"
    return "CEM AI: not analysed"


def _is_valid_uid(value: str) -> bool:
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
        for keyword in _REQUIRED_UIDS:
            value = ds.get(keyword)
            if not value or not str(value).strip():
                raise ValueError(f"{_describe(index, ds)} has no {keyword}")
            if not _is_valid_uid(str(value)):
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
    if not _is_valid_uid(value):
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
    for keyword in _REQUIRED_UIDS:
        setattr(item, keyword, ds[keyword].value)
    return item


def _is_image(ds: pydicom.Dataset) -> bool:
    """Whether a header describes an image (has an Image Pixel module)."""
    return "Rows" in ds and "Columns" in ds


def _algorithm(device: ReportingDevice) -> AlgorithmIdentification:
    return AlgorithmIdentification(
        name=device.model_name,
        version=device.software_version,
        family=codes.DCM.ArtificialIntelligence,
    )


def _signature(device: ReportingDevice) -> str:
    return (
        f"Written by {device.model_name} {device.software_version} ({device.manufacturer}), "
        f"device {device.device_serial_number}."
    )


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
    evaluations = ContainerContentItem(name=_QUALITATIVE_EVALUATIONS, relationship_type=contains)
    evaluations.ContentSequence = ContentSequence(
        [TextContentItem(name=name, value=text, relationship_type=contains) for name, text in texts]
    )
    return evaluations


def _content(
    sources: Sequence[pydicom.Dataset],
    reason: str,
    device: ReportingDevice,
    sop_instance_uid: str,
    not_for_clinical_use: bool,
) -> ContainerContentItem:
    contains = RelationshipTypeValues.CONTAINS
    root = report_root(device)
    root.ContentSequence.append(image_library(sources))

    # Row 6: one TID 1501 group without measurements (OHIF needs the container).
    measurements = ContainerContentItem(
        name=codes.DCM.ImagingMeasurements, relationship_type=contains
    )
    measurements.ContentSequence = ContentSequence()
    measurements.ContentSequence.extend(
        MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=generate_uid(entropy_srcs=["cem-node tracking", sop_instance_uid]),
                identifier=TRACKING_IDENTIFIER,
            ),
            algorithm_id=_algorithm(device),
        )
    )
    root.ContentSequence.append(measurements)

    # Row 12: the statement itself (TEXT items, any concept name, CONTAINS).
    texts = [
        (codes.DCM.Finding, STATEMENT_PREFIX + reason),
        (codes.DCM.Comment, _signature(device)),
    ]
    if not_for_clinical_use:
        texts.append((codes.DCM.Comment, DISCLAIMER))
    root.ContentSequence.append(qualitative_evaluations(texts))
    return root


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
    # The stand-in must not be referenced: list exactly the received instances.
    current, _ = collect_evidence(evidence, content, study_instance_uid=sr.StudyInstanceUID)
    sr.CurrentRequestedProcedureEvidenceSequence = current
    if "PertinentOtherEvidenceSequence" in sr:
        del sr.PertinentOtherEvidenceSequence
    stamp_times(sr, when)
    return sr


def build_not_analysable_sr(
    source_images: Sequence[pydicom.Dataset],
    reason: str,
    *,
    device: ReportingDevice,
    series_instance_uid: str | None = None,
    series_number: int = 9901,
    sop_instance_uid: str | None = None,
    content_datetime: datetime | None = None,
    not_for_clinical_use: bool = True,
) -> pydicom.Dataset:
    """Build the SR that tells the PACS the AI did not analyse a study, and why.

    A Comprehensive SR with a TID 1500 "Imaging Measurement Report" root and no
    measurement; see the module docstring for the content tree and why it has
    that shape.

    Parameters
    ----------
    source_images
        Headers (pixel data not needed) of the study's received instances, of
        any SOP class, all of one study. Each needs SOPClassUID,
        SOPInstanceUID, StudyInstanceUID and SeriesInstanceUID. Patient and
        study attributes are copied from the first one; every instance is
        listed in the Current Requested Procedure Evidence Sequence, and the
        image instances (those with Rows and Columns) in the Image Library.
        An instance listed twice is kept once.
    reason
        Why no analysis was done, in words for a radiologist (e.g. "no
        recombined image for the right CC view"). Stored as
        ``"AI analysis not performed: <reason>"`` in a TEXT item (121071, DCM,
        "Finding").
    device
        The software writing the SR.
    series_instance_uid, sop_instance_uid
        UIDs of the new series and instance; new random UIDs when None.
    series_number
        Series Number of the new series.
    content_datetime
        Content, series and instance creation date/time; now when None. A
        timezone-aware value also sets Timezone Offset From UTC.
    not_for_clinical_use
        Adds a "NOT FOR CLINICAL USE" comment to the content and to the
        Series Description.

    Returns
    -------
    pydicom.Dataset
        The SR (a :class:`highdicom.sr.ComprehensiveSR`), Explicit VR Little
        Endian, ready for ``save_as(path, enforce_file_format=True)``.

    Raises
    ------
    TypeError
        For arguments of the wrong type.
    ValueError
        For an empty or blank reason, no source images, a source without one
        of the four UIDs, sources of different studies (the message names
        both Study Instance UIDs) or patients, one SOP Instance UID with two
        SOP classes or series, an invalid UID or a series number outside
        1..2**31-1.
    """
    if not isinstance(device, ReportingDevice):
        raise TypeError(f"device must be a ReportingDevice, got {type(device).__name__}")
    if not isinstance(reason, str):
        raise TypeError(f"reason must be a str, got {type(reason).__name__}")
    reason = reason.strip()
    if not reason:
        raise ValueError("reason must not be empty or blank")
    check_series_number(series_number)
    if content_datetime is not None and not isinstance(content_datetime, datetime):
        raise TypeError(
            f"content_datetime must be a datetime or None, got {type(content_datetime).__name__}"
        )
    if not isinstance(not_for_clinical_use, bool):
        raise TypeError(
            f"not_for_clinical_use must be a bool, got {type(not_for_clinical_use).__name__}"
        )
    sources = check_sources(source_images)
    series_uid = check_uid("series_instance_uid", series_instance_uid)
    sop_uid = check_uid("sop_instance_uid", sop_instance_uid)
    if sop_uid in {ds.SOPInstanceUID for ds in sources}:
        raise ValueError(f"sop_instance_uid {sop_uid} is the UID of one of the source_images")
    when = content_datetime if content_datetime is not None else datetime.now()

    content = _content(sources, reason, device, sop_uid, not_for_clinical_use)
    return build_comprehensive_sr(
        sources,
        content,
        device=device,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        when=when,
        series_description=not_analysed_series_description(not_for_clinical_use),
        texts=[reason],
    )


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


def _report_identity(index: int, ds: object) -> pydicom.Dataset:
    """Check that ``predecessors[index]`` is an SR with its four UIDs; return it."""
    if not isinstance(ds, pydicom.Dataset):
        raise TypeError(f"predecessors[{index}] must be a pydicom.Dataset, got {type(ds).__name__}")
    for keyword in _REQUIRED_UIDS:
        value = str(ds.get(keyword) or "")
        if not _is_valid_uid(value):
            raise ValueError(f"predecessors[{index}] has no valid {keyword}: {value!r}")
    if not str(ds.SOPClassUID).startswith(_SR_CLASS_ROOT):
        raise ValueError(
            f"predecessors[{index}] (SOPInstanceUID {ds.SOPInstanceUID}) is of SOP class "
            f"{ds.SOPClassUID}, not a structured report"
        )
    return ds


def predecessor_documents(predecessors: Sequence[pydicom.Dataset]) -> pydicom.Sequence:
    """The Predecessor Documents Sequence (0040,A360) naming ``predecessors``.

    One item per study: Study Instance UID, and per series a Referenced
    Series Sequence item with its Series Instance UID and the Referenced SOP
    Sequence of its instances (SOP class and instance UIDs): the SOP Instance
    Reference Macro (Hierarchical), PS3.3 Table C.17-3, that the SR Document
    General module (PS3.3 C.17.2) uses. An instance listed twice is named once.
    """
    studies: dict[str, dict[str, dict[str, str]]] = {}
    for index, ds in enumerate(predecessors):
        _report_identity(index, ds)
        series = studies.setdefault(str(ds.StudyInstanceUID), {})
        series.setdefault(str(ds.SeriesInstanceUID), {})[str(ds.SOPInstanceUID)] = str(
            ds.SOPClassUID
        )
    items = []
    for study_uid, series_of_study in studies.items():
        item = pydicom.Dataset()
        item.StudyInstanceUID = study_uid
        item.ReferencedSeriesSequence = []
        for series_uid, instances in series_of_study.items():
            series_item = pydicom.Dataset()
            series_item.SeriesInstanceUID = series_uid
            series_item.ReferencedSOPSequence = []
            for sop_uid, sop_class in instances.items():
                sop = pydicom.Dataset()
                sop.ReferencedSOPClassUID = sop_class
                sop.ReferencedSOPInstanceUID = sop_uid
                series_item.ReferencedSOPSequence.append(sop)
            item.ReferencedSeriesSequence.append(series_item)
        items.append(item)
    return pydicom.Sequence(items)


def _described(ds: pydicom.Dataset) -> str:
    """``series 9001 "CEM AI: ..." of 2025-06-12 10:30:05 (SOP Instance UID ...)``."""
    parts = []
    if ds.get("SeriesNumber") is not None:
        parts.append(f"series {ds.SeriesNumber}")
    description = str(ds.get("SeriesDescription") or "").strip()
    if description:
        parts.append(f'"{description}"')
    date, time = str(ds.get("ContentDate") or ""), str(ds.get("ContentTime") or "")
    if len(date) == 8 and date.isdigit():
        when = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        if len(time) >= 6 and time[:6].isdigit():
            when += f" {time[:2]}:{time[2:4]}:{time[4:6]}"
        parts.append(f"of {when}")
    parts.append(f"(SOP Instance UID {ds.SOPInstanceUID})")
    return " ".join(parts)


def replaces_statement(predecessors: Sequence[pydicom.Dataset]) -> str:
    """The sentence saying that a report replaces ``predecessors`` (earlier reports)."""
    unique = {str(ds.SOPInstanceUID): ds for ds in predecessors}
    listed = "; ".join(_described(ds) for ds in unique.values())
    which = "the earlier report" if len(unique) == 1 else f"the {len(unique)} earlier reports"
    return (
        f"{REPLACES_PREFIX}{which} of this study: {listed}. Images received after "
        f"{'it was' if len(unique) == 1 else 'they were'} written were analysed again; "
        "read this report instead (Predecessor Documents Sequence)."
    )


def replace_earlier_reports(
    sr: pydicom.Dataset, predecessors: Sequence[pydicom.Dataset]
) -> pydicom.Dataset:
    """A copy of ``sr`` that names ``predecessors`` as the reports it replaces.

    The copy lists them in its Predecessor Documents Sequence (0040,A360; see
    :func:`predecessor_documents`), after any it already had, and says so for
    people: a TEXT item (121106, DCM, "Comment") opening with
    :data:`REPLACES_PREFIX`, first in the report's Qualitative Evaluations
    container (TID 1500 row 12, added when the report has none), so that a
    radiologist reads it before the findings. UIDs, dates and everything else
    are kept: the same inputs give the same object.

    Parameters
    ----------
    sr
        An SR document of the node (a TID 1500 root container).
    predecessors
        Headers of the earlier SR documents of the same study that this one
        replaces (four UIDs, Series Number, Series Description and Content
        Date/Time are read). Empty: ``sr`` is returned unchanged.

    Raises
    ------
    TypeError, ValueError
        When ``sr`` is not an SR document with a root container, a
        predecessor is not an SR or is of another study, or is ``sr`` itself.
    """
    if not isinstance(sr, pydicom.Dataset):
        raise TypeError(f"sr must be a pydicom.Dataset, got {type(sr).__name__}")
    if isinstance(predecessors, pydicom.Dataset) or not isinstance(predecessors, Sequence):
        raise TypeError(
            f"predecessors must be a sequence of pydicom.Dataset, got {type(predecessors).__name__}"
        )
    if not predecessors:
        return sr
    if not str(sr.get("SOPClassUID") or "").startswith(_SR_CLASS_ROOT) or (
        sr.get("ValueType") != "CONTAINER" or "ContentSequence" not in sr
    ):
        raise ValueError(
            f"sr {sr.get('SOPInstanceUID')} is not a structured report with a root container"
        )
    for index, ds in enumerate(predecessors):
        _report_identity(index, ds)
        if ds.StudyInstanceUID != sr.StudyInstanceUID:
            raise ValueError(
                f"predecessors[{index}] is of study {ds.StudyInstanceUID}, the report of "
                f"study {sr.StudyInstanceUID}"
            )
        if ds.SOPInstanceUID == sr.SOPInstanceUID:
            raise ValueError(f"predecessors[{index}] is the report itself ({sr.SOPInstanceUID})")

    out = pydicom.Dataset(copy.deepcopy(dict(sr.items())))
    if hasattr(sr, "file_meta"):
        out.file_meta = copy.deepcopy(sr.file_meta)
    earlier = list(out.get("PredecessorDocumentsSequence") or [])
    out.PredecessorDocumentsSequence = pydicom.Sequence(
        earlier + list(predecessor_documents(predecessors))
    )
    statement = replaces_statement(predecessors)
    comment = TextContentItem(
        name=codes.DCM.Comment, value=statement, relationship_type=RelationshipTypeValues.CONTAINS
    )
    evaluations = next(
        (
            item
            for item in out.ContentSequence
            if item.get("ValueType") == "CONTAINER"
            and item.ConceptNameCodeSequence[0].CodeValue == _QUALITATIVE_EVALUATIONS.value
            and item.ConceptNameCodeSequence[0].CodingSchemeDesignator
            == _QUALITATIVE_EVALUATIONS.scheme_designator
        ),
        None,
    )
    if evaluations is None:
        out.ContentSequence.append(qualitative_evaluations([(codes.DCM.Comment, statement)]))
    else:
        evaluations.ContentSequence.insert(0, comment)
    if not statement.isascii():  # a description copied from elsewhere
        out.SpecificCharacterSet = "ISO_IR 192"
    return out

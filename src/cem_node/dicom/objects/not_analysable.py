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
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pydicom
from highdicom.sr import (
    AlgorithmIdentification,
    ContainerContentItem,
    ContentSequence,
    MeasurementsAndQualitativeEvaluations,
    RelationshipTypeValues,
    TrackingIdentifier,
)
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from cem_node.dicom.objects.common import (
    NOT_FOR_CLINICAL_USE,
    ReportingDevice,
    build_comprehensive_sr,
    check_series_number,
    check_sources,
    check_uid,
    image_library,
    qualitative_evaluations,
    report_root,
)

__all__ = [
    "DISCLAIMER",
    "STATEMENT_PREFIX",
    "TRACKING_IDENTIFIER",
    "build_not_analysable_sr",
    "not_analysed_series_description",
]

#: Statement that opens the Finding text item.
STATEMENT_PREFIX = "AI analysis not performed: "


#: Tracking Identifier of the (measurement-free) TID 1501 group.
TRACKING_IDENTIFIER = "CEM AI analysis not performed"


#: Text of the comment added when ``not_for_clinical_use``.
DISCLAIMER = (
    f"{NOT_FOR_CLINICAL_USE}: research software that is not a medical device; "
    "this report is not a reading of the images."
)


def not_analysed_series_description(not_for_clinical_use: bool = True) -> str:
    """Series Description of a "not analysable" SR (at most 64 characters)."""
    if not_for_clinical_use:
        return f"CEM AI: not analysed ({NOT_FOR_CLINICAL_USE})"
    return "CEM AI: not analysed"


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

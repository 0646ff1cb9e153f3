"""The analysis report: one TID 1500 Imaging Measurement Report per analysed study.

A Comprehensive SR (2D image coordinates) whose root is (126000, DCM,
"Imaging Measurement Report"), the only root OHIF opens. It is built from
the same pieces (:mod:`cem_node.dicom.objects.common`) as the "not
analysable" report (:mod:`cem_node.dicom.objects.not_analysable`), the
answer for a study that could not be analysed.

Content tree::

    CONTAINER Imaging Measurement Report                               TID 1500
      HAS CONCEPT MOD  Language = English (United States)
      HAS OBS CONTEXT  Device observer: cem-node, model name "cem-node <version>
                       with model bundle <name> <version>" (one device observer:
                       PixelMed refuses two), UID derived from the node and bundle
      HAS CONCEPT MOD  Procedure reported = (363679005, SCT, "Imaging procedure")
      CONTAINS  Image Library: every received image                      TID 1600
      CONTAINS  Imaging Measurements
        per lesion, a TID 1410 group on the recombined (RC) image:
          Tracking Identifier = lesion id ("R-CC-1"), Tracking UID = the lesion's
          Finding = (52988006, SCT, "Lesion")
          Finding Site = Breast, Laterality = Right / Left
          Algorithm = bundle name, version, family AI, parameter bundle_sha256=...
          Image Region = POLYLINE outline (closed) on the RC image
          NUM (111047, DCM, "Probability of cancer")      the FUSED score, in %
          NUM (CEM0001, 99CEMNODE, "DL probability of cancer")          in %
          NUM (CEM0002, 99CEMNODE, "Radiomics probability of cancer")   in %
              (or, without radiomics, a TEXT item of that name with the reason)
          NUM (42798000, SCT, "Area")                                   mm2
          NUM (103339001, SCT, "Long axis") = the largest diameter      mm
          CODE AI classification = Benign / Malignant (fused, at the fused threshold)
          CODE DL classification, Radiomics classification
          CODE DL and radiomics agree = Yes / No
        per lesion, a TID 1410 group on the low-energy (LE) image:
          Tracking Identifier "R-CC-1 (low energy)", its own Tracking UID,
          the same outline on the LE image; no measurements
        per breast, a TID 1501 group: Finding Site breast with laterality,
          Probability of cancer (maximum fused probability) when it has
          lesions, Number of lesions, Suspicious lesion found, AI classification
        per patient, a TID 1501 group: the same over the study
      CONTAINS  Qualitative Evaluations
          TEXT Finding: a summary line, and per view "R CC: no suspicious lesion
               found" or its lesions; "No suspicious lesion found" when none
          TEXT Comment: procedure (contrast-enhanced mammography), the model
               bundle (name, version, SHA-256, intended use), the thresholds,
               how sizes were measured, the software, the analysis notes, and
               the disclaimer of a bundle not for clinical use

Choices:

* Probabilities are in UCUM "%" (0-100): OHIF prints ``"<NumericValue>
  <unit>"`` and shows at most three lines per outline, so the fused score
  comes first, then DL and radiomics. Numeric Value holds the score rounded
  to 0.1 for people; Floating Point Value holds it exactly (100 x p).
* The fused score uses the standard concept "Probability of cancer"; DL and
  radiomics scores and the classifications use codes of a private scheme,
  ``99CEMNODE``, identified in the Coding Scheme Identification Sequence. An
  "Equivalent Meaning of Concept Name" TEXT under each NUM says in words what
  the value is ("Fused probability of cancer (mean of DL and radiomics)",
  "Area from Imager Pixel Spacing (detector plane)").
* Validators: dciodvfy warns that it does not know the ``99CEMNODE``
  designator; PixelMed (2022) warns "Content Item not in template" for the
  qualitative evaluations (CODE / TEXT items in TID 1410 and 1501, which its
  templates lack). Neither reports an error.
* TID 1410 allows one image region per group, and OHIF merges groups that
  share a Tracking UID (showing only the first outline). The LE outline is
  therefore a second group with a UID derived from the lesion's
  (:func:`low_energy_tracking_uid`); it carries no measurement, so counting
  lesions means counting the groups whose UID is a lesion's Tracking UID (or
  whose region is on an RC image).
* Coordinates: the findings use (column, row) with the centre of the top-left
  pixel at (0, 0); SR SCOORD puts the top-left corner of that pixel at (0, 0)
  (PS3.3 C.18.6.1.1), so the outlines are shifted by +0.5.
* Areas and diameters use the spacing the pipeline used: Imager Pixel
  Spacing (detector plane) when the RC header has it, else Pixel Spacing
  (:func:`spacing_source`); the report says which, per measurement and in a
  Comment.
* Procedure reported is "Imaging procedure" (CID 100 has no mammography code
  PixelMed accepts); "contrast-enhanced mammography" is stated in a Comment.

Nothing depends on the clock: dates come from ``findings.created`` unless
given, and every UID is an argument or derived from the findings.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    ContainerContentItem,
    ContentSequence,
    FindingSite,
    ImageRegion,
    Measurement,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DS

from cem_node.contracts.findings import Findings, Lesion, ModelIdentity
from cem_node.dicom.objects.common import (
    ReportingDevice,
    build_comprehensive_sr,
    check_series_number,
    check_sources,
    image_library,
    missing_view_image,
    model_description,
    model_disclaimer,
    model_equipment,
    qualitative_evaluations,
    report_root,
    result_series_description,
)
from cem_node.dicom.objects.gsps import dicom_points
from cem_node.dicom.objects.seg import laterality_code, lesion_label, score_caveat_sentence

__all__ = [
    "AI_CLASSIFICATION",
    "DL_PROBABILITY",
    "NO_LESION_STATEMENT",
    "PRIVATE_SCHEME",
    "PROBABILITY_OF_CANCER",
    "RADIOMICS_PROBABILITY",
    "build_findings_sr",
    "low_energy_tracking_uid",
    "spacing_source",
    "sr_series_description",
]

PRIVATE_SCHEME = "99CEMNODE"
NO_LESION_STATEMENT = "No suspicious lesion found"


def _private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, PRIVATE_SCHEME, meaning)


PROBABILITY_OF_CANCER = CodedConcept("111047", "DCM", "Probability of cancer")
DL_PROBABILITY = _private("CEM0001", "DL probability of cancer")
RADIOMICS_PROBABILITY = _private("CEM0002", "Radiomics probability of cancer")
AI_CLASSIFICATION = _private("CEM0003", "AI classification")
DL_CLASSIFICATION = _private("CEM0004", "DL classification")
RADIOMICS_CLASSIFICATION = _private("CEM0005", "Radiomics classification")
MODELS_AGREE = _private("CEM0006", "DL and radiomics agree")
LESION_COUNT = _private("CEM0007", "Number of lesions")
SUSPICIOUS_FOUND = _private("CEM0008", "Suspicious lesion found")

_PERCENT = CodedConcept("%", "UCUM", "Percent")
_MM2 = CodedConcept("mm2", "UCUM", "square millimeter")
_MM = CodedConcept("mm", "UCUM", "millimeter")
_NO_UNITS = CodedConcept("1", "UCUM", "no units")
_AREA = CodedConcept("42798000", "SCT", "Area")
_LONG_AXIS = CodedConcept("103339001", "SCT", "Long axis")
_EQUIVALENT_MEANING = CodedConcept("121050", "DCM", "Equivalent Meaning of Concept Name")
_LESION = CodedConcept("52988006", "SCT", "Lesion")
_BREAST = CodedConcept("76752008", "SCT", "Breast")
_LABELS = {
    "benign": CodedConcept("30807003", "SCT", "Benign"),
    "malignant": CodedConcept("21594007", "SCT", "Malignant"),
}
_YES = CodedConcept("373066001", "SCT", "Yes")
_NO = CodedConcept("373067005", "SCT", "No")
_SIDES = {"R": "Right", "L": "Left"}
_IMAGER = "Imager Pixel Spacing (detector plane)"
_PIXEL = "Pixel Spacing"


def spacing_source(image: pydicom.Dataset) -> str | None:
    """Which spacing the findings' mm values of ``image`` use, as the pipeline chooses it.

    ``"Imager Pixel Spacing (detector plane)"`` when the header has a valid
    ImagerPixelSpacing, else ``"Pixel Spacing"`` when it has a valid
    PixelSpacing, else None.
    """
    for keyword, name in (("ImagerPixelSpacing", _IMAGER), ("PixelSpacing", _PIXEL)):
        try:
            values = [float(v) for v in image.get(keyword) or ()]
        except (TypeError, ValueError):
            continue
        if len(values) == 2 and all(v > 0 for v in values):
            return name
    return None


def _size_method(sources: set[str]) -> str:
    if not sources:
        return "No lesion size in mm: the analysed images have no pixel spacing."
    text = "Areas and diameters are pixel counts and outline lengths scaled by " + " or ".join(
        sorted(sources)
    )
    if _IMAGER in sources:
        text += "; Imager Pixel Spacing (0018,1164) is not corrected for magnification"
    return text + "."


def sr_series_description(findings: Findings) -> str:
    """Series Description: "CEM AI: lesion report" or "CEM AI: no suspicious lesion found"."""
    what = "lesion report" if findings.lesions else NO_LESION_STATEMENT.lower()
    return result_series_description(what, findings.model)


def low_energy_tracking_uid(lesion: Lesion) -> str:
    """Tracking UID of a lesion's outline group on the low-energy image (derived, stable)."""
    return generate_uid(entropy_srcs=["cem-node low-energy outline", lesion.tracking_uid])


def _uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=["cem-node sr", *parts])


def _percent(p: float) -> str:
    return f"{100 * p:.1f}%"


def _num(
    name: CodedConcept, value: float, unit: CodedConcept, meaning: str | None, places: int
) -> Measurement:
    """A TID 300 measurement: Numeric Value rounded for display, Floating Point exact."""
    measurement = Measurement(name=name, value=round(value, places), unit=unit)
    item = measurement[0]
    item.MeasuredValueSequence[0].NumericValue = DS(f"{value:.{places}f}")
    item.MeasuredValueSequence[0].FloatingPointValue = float(value)
    if meaning:
        item.ContentSequence = ContentSequence(
            [
                TextContentItem(
                    name=_EQUIVALENT_MEANING,
                    value=meaning,
                    relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
                )
            ]
        )
    return measurement


def _probability(name: CodedConcept, p: float, meaning: str) -> Measurement:
    return _num(name, 100.0 * p, _PERCENT, meaning, 1)


def _algorithm(model: ModelIdentity) -> AlgorithmIdentification:
    return AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"bundle_sha256={model.sha256}"],
        family=codes.DCM.ArtificialIntelligence,
    )


def _site(laterality: str) -> FindingSite:
    return FindingSite(anatomic_location=_BREAST, laterality=laterality_code(laterality))


def _text(name: CodedConcept, value: str) -> TextContentItem:
    return TextContentItem(
        name=name, value=value, relationship_type=RelationshipTypeValues.CONTAINS
    )


def _lesion_measurements(lesion: Lesion, model: ModelIdentity, spacing: str) -> list[Measurement]:
    """The lesion's scores (with the bundle's caveat) and sizes, as TID 300 measurements."""
    fused_meaning = (
        "Fused probability of cancer (mean of DL and radiomics)"
        if lesion.fused_source == "mean"
        else "Fused probability of cancer (DL only: radiomics not available)"
    )
    # the caveat in each score's equivalent meaning: what a viewer shows with the value
    caveat = score_caveat_sentence(model)
    measurements = [
        _probability(PROBABILITY_OF_CANCER, lesion.fused_probability, fused_meaning + caveat),
        _probability(
            DL_PROBABILITY, lesion.dl_probability, "Deep learning probability of cancer" + caveat
        ),
    ]
    if lesion.radiomics_probability is not None:
        measurements.append(
            _probability(
                RADIOMICS_PROBABILITY,
                lesion.radiomics_probability,
                "Radiomics (handcrafted features) probability of cancer" + caveat,
            )
        )
    if lesion.area_mm2 is not None:
        measurements.append(_num(_AREA, lesion.area_mm2, _MM2, f"Area from {spacing}", 2))
    if lesion.max_diameter_mm is not None:
        measurements.append(
            _num(
                _LONG_AXIS,
                lesion.max_diameter_mm,
                _MM,
                f"Largest diameter from {spacing}",
                2,
            )
        )
    return measurements


def _lesion_evaluations(lesion: Lesion) -> list[QualitativeEvaluation]:
    """The lesion's classifications and whether the two models agree."""
    evaluations = [
        QualitativeEvaluation(AI_CLASSIFICATION, _LABELS[lesion.fused_label]),
        QualitativeEvaluation(DL_CLASSIFICATION, _LABELS[lesion.dl_label]),
    ]
    if lesion.radiomics_label is not None:
        evaluations.append(
            QualitativeEvaluation(RADIOMICS_CLASSIFICATION, _LABELS[lesion.radiomics_label])
        )
    if lesion.agreement is not None:
        evaluations.append(QualitativeEvaluation(MODELS_AGREE, _YES if lesion.agreement else _NO))
    return evaluations


def _lesion_groups(
    lesion: Lesion,
    headers: dict[str, pydicom.Dataset],
    model: ModelIdentity,
    rows_cols: tuple[int, int],
) -> list[ContainerContentItem]:
    """The lesion's TID 1410 groups: on the RC image with its measurements and
    evaluations, and its outline on the LE image."""
    rows, columns = rows_cols
    spacing = spacing_source(headers[lesion.recombined_sop_instance_uid]) or "pixel spacing"
    points = dicom_points(lesion.outline, rows, columns)
    measurements = _lesion_measurements(lesion, model, spacing)
    evaluations = _lesion_evaluations(lesion)

    groups = []
    for kind, uid, tracking in (
        ("recombined", lesion.recombined_sop_instance_uid, lesion.tracking_uid),
        ("low_energy", lesion.low_energy_sop_instance_uid, low_energy_tracking_uid(lesion)),
    ):
        image = headers[uid]
        primary = kind == "recombined"
        group = PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=tracking,
                identifier=lesion.lesion_id if primary else f"{lesion.lesion_id} (low energy)",
            ),
            referenced_region=ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=points,
                source_image=SourceImageForRegion(
                    referenced_sop_class_uid=image.SOPClassUID,
                    referenced_sop_instance_uid=image.SOPInstanceUID,
                ),
            ),
            finding_type=_LESION,
            finding_sites=[_site(lesion.laterality)],
            algorithm_id=_algorithm(model),
            measurements=measurements if primary else None,
            qualitative_evaluations=evaluations if primary else None,
        )
        item = group[0]
        if primary and lesion.radiomics_probability is None:
            item.ContentSequence.append(
                _text(RADIOMICS_PROBABILITY, f"not available: {lesion.radiomics_error}")
            )
        groups.append(item)
    return groups


def _statements(findings: Findings) -> list[str]:
    by_id = {lesion.lesion_id: lesion for lesion in findings.lesions}
    patient = findings.patient
    if patient.score is None:
        lines = [f"{NO_LESION_STATEMENT} ({len(findings.views)} views analysed)."]
    else:
        lines = [
            f"{patient.lesion_count} suspicious lesion(s); study {patient.label} "
            f"(maximum fused probability of cancer {_percent(patient.score)}, "
            f"threshold {_percent(findings.thresholds.patient)})"
            f"{score_caveat_sentence(findings.model)}."
        ]
    for breast in findings.breasts:
        side = _SIDES[breast.laterality]
        if breast.score is None:
            lines.append(f"{side} breast: {NO_LESION_STATEMENT.lower()}.")
        else:
            lines.append(
                f"{side} breast: {breast.lesion_count} lesion(s), {breast.label} (maximum fused "
                f"probability {_percent(breast.score)}, threshold "
                f"{_percent(findings.thresholds.breast)})"
                f"{score_caveat_sentence(findings.model)}."
            )
    for view in findings.views:
        name = f"{view.laterality} {view.view}"
        if not view.lesion_ids:
            lines.append(f"{name}: {NO_LESION_STATEMENT.lower()}.")
        else:
            labels = ", ".join(lesion_label(by_id[i], findings.model) for i in view.lesion_ids)
            lines.append(f"{name}: {labels}.")
    return lines


def _comments(
    findings: Findings, device: ReportingDevice, headers: dict[str, pydicom.Dataset]
) -> list[str]:
    t = findings.thresholds
    views = ", ".join(f"{v.laterality} {v.view}" for v in findings.views)
    comments = [
        "Procedure: contrast-enhanced mammography (CEM); each view analysed on its paired "
        f"low-energy and recombined images ({views}).",
        model_description(findings.model) + ".",
        f"Decision thresholds: fused {t.fused:.3f}, DL {t.dl:.3f}, radiomics {t.radiomics:.3f}, "
        f"breast {t.breast:.3f}, patient {t.patient:.3f}; probabilities are given in percent.",
        _size_method(
            {
                source
                for view in findings.views
                if view.pixel_spacing_mm is not None
                and (source := spacing_source(headers[view.recombined_sop_instance_uid]))
            }
        ),
        f"Written by {device.model_name} {device.software_version} ({device.manufacturer}), "
        f"device {device.device_serial_number}; model run on {findings.device}.",
    ]
    comments += [f"Note: {note}" for note in findings.notes]
    comments.append(
        f"Validation: {findings.model.validation}"
        if findings.model.validation
        else "Validation: none stated by the model bundle; its benign-vs-malignant "
        "classification is not validated."
    )
    disclaimer = model_disclaimer(findings.model)
    if disclaimer:
        comments.append(disclaimer)
    return comments


def _content(
    findings: Findings, sources: list[pydicom.Dataset], device: ReportingDevice
) -> tuple[ContainerContentItem, list[str]]:
    model = findings.model
    root = report_root(
        device,
        observer_model_name=f"{device.model_name} {device.software_version} with model bundle "
        f"{model.name} {model.version}",
        observer_uid=generate_uid(
            entropy_srcs=["cem-node model observer", device.observer_uid, model.sha256]
        ),
    )
    root.ContentSequence.append(image_library(sources))

    headers = {ds.SOPInstanceUID: ds for ds in sources}
    views = {
        (v.laterality, v.view, v.recombined_sop_instance_uid): (v.rows, v.columns)
        for v in findings.views
    }
    measurements = ContainerContentItem(
        name=codes.DCM.ImagingMeasurements, relationship_type=RelationshipTypeValues.CONTAINS
    )
    measurements.ContentSequence = ContentSequence()
    for lesion in findings.lesions:
        size = views[(lesion.laterality, lesion.view, lesion.recombined_sop_instance_uid)]
        measurements.ContentSequence.extend(_lesion_groups(lesion, headers, model, size))
    # Per-breast and per-patient summaries are TEXT findings in the report's
    # Qualitative Evaluations (below), not TID 1501 groups: OHIF's SR loader
    # fails on a measurement group without an image region.
    if findings.lesions:  # an empty container is invalid (Type 1C Content Sequence)
        root.ContentSequence.append(measurements)

    statements = _statements(findings)
    comments = _comments(findings, device, headers)
    texts = [(codes.DCM.Finding, s) for s in statements]
    texts += [(codes.DCM.Comment, c) for c in comments]
    root.ContentSequence.append(qualitative_evaluations(texts))
    free_text = [*statements, *comments]
    free_text += [f"not available: {lesion.radiomics_error}" for lesion in findings.lesions]
    return root, free_text


def _check_references(findings: Findings, headers: dict[str, pydicom.Dataset]) -> None:
    if not headers:
        return
    study = next(iter(headers.values())).StudyInstanceUID
    if study != findings.study_instance_uid:
        raise ValueError(
            f"the headers are of study {study}, the findings of study {findings.study_instance_uid}"
        )
    missing = missing_view_image(findings, headers)
    if missing is not None:
        kind, uid, view = missing
        raise ValueError(
            f"no header for the {kind} image {uid} of view {view.laterality}-{view.view}"
        )


def build_findings_sr(
    findings: Findings,
    source_images: Sequence[pydicom.Dataset],
    *,
    device: ReportingDevice,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    content_datetime: datetime | None = None,
) -> hd.sr.ComprehensiveSR:
    """Build the study's TID 1500 report of the findings (see the module docstring).

    Parameters
    ----------
    findings
        The study's findings; with no lesion, the report says "No suspicious
        lesion found" (for the study, each breast and each view).
    source_images
        Headers (pixel data not needed) of the study's received images: at
        least the LE and RC image of every analysed view. All are listed as
        evidence and in the Image Library; patient and study attributes come
        from the first. Each needs the four UIDs; the analysed ones also
        Rows and Columns.
    device
        The software writing the report (General Equipment, first observer);
        the model bundle is the second observer and the Contributing
        Equipment.
    series_instance_uid, series_number, sop_instance_uid
        Identity of the new object.
    content_datetime
        Content, series and instance creation date/time; default
        ``findings.created``.

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        Explicit VR Little Endian, ready for ``save_as(path, enforce_file_format=True)``.

    Raises
    ------
    ValueError
        When the headers are of another study, lack an analysed image, or fail
        the checks of :func:`~cem_node.dicom.objects.common.check_sources`.
    """
    check_series_number(series_number)
    sources = check_sources(source_images)
    _check_references(findings, {ds.SOPInstanceUID: ds for ds in sources})
    when = content_datetime or findings.created
    content, texts = _content(findings, sources, device)
    return build_comprehensive_sr(
        sources,
        content,
        device=device,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        when=when,
        series_description=sr_series_description(findings),
        texts=texts,
        contributing_equipment=[model_equipment(findings.model, when)],
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME,
                name="cem-node local codes",
                responsible_organization="cem-node developers",
            )
        ],
    )

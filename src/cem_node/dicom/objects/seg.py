"""DICOM Segmentation (SEG) of the lesions found on one analysed view.

Mammography images have no Frame of Reference, and highdicom then accepts one
single-frame source image per SEG: so there is one SEG per analysed view with
lesions, one segment per lesion, referencing the view's recombined (RC)
image, the one the lesions were outlined on. The paired low-energy (LE)
image is named in each Segment Description. A view without lesions gets no
SEG (a SEG needs a segment); the SR says "no suspicious lesion found" for it.

Per segment:

* label ``"R-CC-1 malignant 87%"`` (the lesion id, the fused label and score:
  what OHIF's segmentation panel shows), and a Segment Description with the
  three probabilities and the paired LE image;
* category (49755003, SCT, "Morphologically abnormal structure"), type
  (52988006, SCT, "Lesion"), anatomic region (76752008, SCT, "Breast") with
  the laterality as modifier (24028007 "Right" / 7771000 "Left");
* the lesion's Tracking ID and Tracking UID (the same as in the SR and GSPS);
* Algorithm Identification: the model bundle's name and version, family
  (123110, DCM, "Artificial Intelligence"), source cem-node, the bundle's
  SHA-256 as a parameter; a recommended colour (red malignant, yellow benign).

The masks of one view never overlap (the findings guarantee it; it is checked
again here): OHIF does not show overlapping segments.

Segmentation types:

``BINARY`` (default)
    Bit-packed, uncompressed, exactly the findings' masks.
``FRACTIONAL``
    The findings carry binary masks only, not the detector's probability
    maps: each lesion is encoded as a PROBABILITY map whose values are 1.0
    inside the mask and 0.0 outside (stored as 255 / 0, uncompressed). It is
    a valid fractional SEG for viewers that want one, but holds no more
    information than the binary one and is 8 times larger.

Header attributes, and why:

* Image Laterality is set to the view's (PixelMed requires General Series
  Laterality or Image Laterality for a breast; dciodvfy refuses the former in
  a SEG), Body Part Examined is BREAST, Image Comments carry the bundle's
  disclaimer, Series and Content Description say NOT FOR CLINICAL USE for a
  research bundle; the bundle is a Contributing Equipment item.
* Patient Orientation is present but empty: highdicom leaves it out and
  dciodvfy requires it (Type 2C without a frame of reference), while
  PixelMed (2022) rejects the two values of the source ("A\\R") with a wrong
  VM 1 rule. The source image carries it.
* The Derivation Image Sequence stays per frame, where highdicom puts it.
  PixelMed (2022) then reports it missing from the shared functional groups
  (and reports it missing per frame, or present twice, for the other
  placements): a validator false positive every SEG of an image without a
  frame of reference gets.
* The Dimension Organization UID is derived from the SOP Instance UID
  (highdicom draws a random one), so the same findings give the same bytes.
* Lossy Image Compression is 01 when the source's is (PS3.3 C.8.20.2.2: it
  must not be hidden). Its Ratio and Method are Type 1C "required if present
  in the source images or this IOD Instance has been compressed": copied
  when the source states them, left out when it does not (some modalities and
  PACSs write 01 alone), never invented; the Derivation Description says in
  words what is known. PixelMed (2022) wants both whenever the value is 01
  (the condition of other image modules, not of the SEG's): two validator
  false positives for such a source; dciodvfy agrees with the standard.

The source header needs: the four UIDs, Rows, Columns and the Patient and
Study attributes (copied). Pixel data is not needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, TM

from cem_node.contracts.findings import Findings, Lesion, ModelIdentity, ViewResult
from cem_node.dicom.objects.common import (
    ReportingDevice,
    check_series_number,
    check_view_image,
    device_texts,
    model_disclaimer,
    model_equipment,
    result_series_description,
    stamp_times,
    utf8_if_needed,
)

__all__ = [
    "SEGMENTATION_TYPES",
    "build_view_seg",
    "laterality_code",
    "lesion_label",
    "score_caveat_sentence",
    "seg_series_description",
]

SEGMENTATION_TYPES = ("BINARY", "FRACTIONAL")
#: Content Label (CS, at most 16 characters) of every SEG.
CONTENT_LABEL = "CEM_AI_LESIONS"
_CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
_TYPE = codes.SCT.Lesion
_BREAST = codes.SCT.Breast
_LATERALITY = {"R": codes.SCT.Right, "L": codes.SCT.Left}
_COLOURS = {"malignant": (255, 0, 0), "benign": (255, 215, 0)}


def laterality_code(laterality: str) -> hd.sr.CodedConcept:
    """(24028007, SCT, "Right") or (7771000, SCT, "Left")."""
    try:
        return hd.sr.CodedConcept.from_code(_LATERALITY[laterality])
    except KeyError:
        raise ValueError(f"laterality must be 'R' or 'L', got {laterality!r}") from None


def lesion_label(lesion: Lesion, model: ModelIdentity) -> str:
    """Short text for a lesion: ``"R-CC-1 malignant 87%"`` (segment label, GSPS text),
    followed by the bundle's caveat when its classification is not validated:
    ``"R-CC-1 malignant 87% (score not validated)"``."""
    label = f"{lesion.lesion_id} {lesion.fused_label} {100 * lesion.fused_probability:.0f}%"
    return f"{label} ({model.score_caveat})" if model.score_caveat else label


def score_caveat_sentence(model: ModelIdentity) -> str:
    """`` (score not validated)`` after a score in a sentence; empty when validated."""
    return f" ({model.score_caveat})" if model.score_caveat else ""


def seg_series_description(model: ModelIdentity) -> str:
    """Series Description of the SEG series (with NOT FOR CLINICAL USE for research bundles)."""
    return result_series_description("lesion segmentation", model)


def _algorithm(model: ModelIdentity) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=model.version,
        source="cem-node",
        parameters={"bundle_sha256": model.sha256},
    )


def _percent(p: float | None) -> str:
    return "n/a" if p is None else f"{100 * p:.1f}%"


def _segment(number: int, lesion: Lesion, model: ModelIdentity) -> hd.seg.SegmentDescription:
    item = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=lesion_label(lesion, model),
        segmented_property_category=_CATEGORY,
        segmented_property_type=_TYPE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(model),
        tracking_uid=lesion.tracking_uid,
        tracking_id=lesion.lesion_id,
        anatomic_regions=[_BREAST],
        display_color=hd.color.CIELabColor.from_rgb(*_COLOURS[lesion.fused_label]),
    )
    modifier = pydicom.Dataset()
    code = laterality_code(lesion.laterality)
    modifier.CodeValue, modifier.CodingSchemeDesignator = code.value, code.scheme_designator
    modifier.CodeMeaning = code.meaning
    item.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [modifier]
    radiomics = (
        _percent(lesion.radiomics_probability)
        if lesion.radiomics_probability is not None
        else f"n/a ({lesion.radiomics_error})"
    )
    item.SegmentDescription = (
        f"Lesion {lesion.lesion_id} ({lesion.laterality} {lesion.view}): fused probability of "
        f"malignancy {_percent(lesion.fused_probability)} ({lesion.fused_label}, "
        f"{lesion.fused_source}), DL {_percent(lesion.dl_probability)}, radiomics {radiomics}"
        f"{score_caveat_sentence(model)}. "
        f"Outlined on the recombined image; paired low-energy image "
        f"{lesion.low_energy_sop_instance_uid}."
    )[:1024]
    return item


def _check_masks(view: ViewResult, lesions: Sequence[Lesion]) -> list[np.ndarray]:
    shape = (view.rows, view.columns)
    masks = [lesion.mask.to_array(shape) for lesion in lesions]
    taken = np.zeros(shape, dtype=bool)
    for lesion, mask in zip(lesions, masks, strict=True):
        if (taken & mask).any():
            raise ValueError(
                f"lesion {lesion.lesion_id} overlaps another lesion of view "
                f"{view.laterality}-{view.view}: segments of one SEG must not overlap"
            )
        taken |= mask
    return masks


def build_view_seg(
    findings: Findings,
    view: ViewResult,
    source_image: pydicom.Dataset,
    *,
    device: ReportingDevice,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int = 1,
    segmentation_type: str = "BINARY",
    content_datetime: datetime | None = None,
) -> hd.seg.Segmentation:
    """Build the SEG of one analysed view: one segment per lesion, on the RC image.

    Parameters
    ----------
    findings
        The study's findings (model identity, lesions).
    view
        One of ``findings.views``; it must have at least one lesion.
    source_image
        Header of the view's recombined image (pixel data not needed).
    device
        The software writing the object (General Equipment); the model bundle
        is recorded as Contributing Equipment.
    series_instance_uid, series_number, sop_instance_uid, instance_number
        Identity of the new object.
    segmentation_type
        ``"BINARY"`` (default) or ``"FRACTIONAL"`` (the mask as probability
        1.0 / 0.0; see the module docstring).
    content_datetime
        Content, series and instance creation date/time; default
        ``findings.created``.

    Returns
    -------
    highdicom.seg.Segmentation
        Explicit VR Little Endian, ready for ``save_as(path, enforce_file_format=True)``.

    Raises
    ------
    ValueError
        For a view without lesions (a SEG needs a segment), a view that is
        not in the findings, a source image that is not the view's RC image
        or differs in size, overlapping masks, or an unknown segmentation type.
    """
    lesions = _view_lesions(findings, view, series_number, segmentation_type)
    check_view_image(
        "source_image", "recombined", view.recombined_sop_instance_uid, view, source_image
    )
    masks = _check_masks(view, lesions)
    when = content_datetime or findings.created
    model = findings.model
    pixels = _pixels(view, masks, segmentation_type)
    segments = [_segment(number, lesion, model) for number, lesion in enumerate(lesions, start=1)]
    seg = _new_segmentation(
        source_image,
        pixels,
        segments,
        view=view,
        model=model,
        device=device,
        when=when,
        segmentation_type=segmentation_type,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
    )
    _complete_header(seg, view, source_image, model_disclaimer(model), sop_instance_uid, when)
    return seg


def _view_lesions(
    findings: Findings, view: ViewResult, series_number: int, segmentation_type: str
) -> list[Lesion]:
    """The lesions of a view, after the checks of the arguments that need no image."""
    if segmentation_type not in SEGMENTATION_TYPES:
        raise ValueError(
            f"segmentation_type must be one of {SEGMENTATION_TYPES}, got {segmentation_type!r}"
        )
    if view not in findings.views:
        raise ValueError(f"view {view.laterality}-{view.view} is not one of the findings' views")
    check_series_number(series_number)
    by_id = {lesion.lesion_id: lesion for lesion in findings.lesions}
    lesions = [by_id[i] for i in view.lesion_ids]
    if not lesions:
        raise ValueError(
            f"view {view.laterality}-{view.view} has no lesion: a SEG needs at least one segment"
        )
    return lesions


def _pixels(view: ViewResult, masks: list[np.ndarray], segmentation_type: str) -> np.ndarray:
    """The pixel array highdicom encodes: a label map (BINARY) or one frame per segment."""
    if segmentation_type == "BINARY":
        # a label map: the segments do not overlap, and it packs fastest
        pixels: np.ndarray = np.zeros((view.rows, view.columns), dtype=np.uint8)
        for number, mask in enumerate(masks, start=1):
            pixels[mask] = number
    else:
        pixels = np.stack(masks, axis=-1)[np.newaxis].astype(np.float32)
    return pixels


def _new_segmentation(
    source_image: pydicom.Dataset,
    pixels: np.ndarray,
    segments: list[hd.seg.SegmentDescription],
    *,
    view: ViewResult,
    model: ModelIdentity,
    device: ReportingDevice,
    when: datetime,
    segmentation_type: str,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
) -> hd.seg.Segmentation:
    """The highdicom SEG, before the attributes highdicom does not write."""
    disclaimer = model_disclaimer(model)
    description = f"CEM AI lesions {view.laterality} {view.view}"
    if not model.for_clinical_use:
        description += " (NOT FOR CLINICAL USE)"
    equipment = model_equipment(model, when)
    charset = utf8_if_needed(
        [
            disclaimer,
            description,
            equipment.ContributionDescription,
            model.name,
            model.version,
            *device_texts(device),
            *(str(segment.SegmentDescription) for segment in segments),
        ]
    )
    return hd.seg.Segmentation(
        source_images=[source_image],
        pixel_array=pixels,
        segmentation_type=segmentation_type,
        segment_descriptions=segments,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=device.manufacturer,
        manufacturer_model_name=device.model_name,
        software_versions=device.software_version,
        device_serial_number=device.device_serial_number,
        fractional_type="PROBABILITY",
        max_fractional_value=255,
        content_description=description,
        content_label=CONTENT_LABEL,
        series_description=seg_series_description(model),
        contributing_equipment=[equipment],
        institution_name=device.institution_name,
        **charset,
    )


def _complete_header(
    seg: hd.seg.Segmentation,
    view: ViewResult,
    source_image: Dataset,
    disclaimer: str | None,
    sop_instance_uid: str,
    when: datetime,
) -> None:
    """The attributes highdicom leaves out or draws at random (module docstring)."""
    # highdicom leaves PatientOrientation out; dciodvfy requires it (Type 2C of
    # General Image without a frame of reference). It is left empty: PixelMed
    # (2022) wrongly wants one value, and the source image carries it.
    seg.PatientOrientation = None
    seg.BodyPartExamined = "BREAST"
    _add_viewer_geometry(seg, source_image)
    _record_lossy_source(seg, source_image)
    # General Series Laterality would make the series per breast, and dciodvfy
    # refuses it in a SEG; Image Laterality satisfies PixelMed's condition and
    # hanging protocols.
    seg.ImageLaterality = view.laterality
    if disclaimer:
        seg.ImageComments = disclaimer
    # highdicom draws a random Dimension Organization UID: derive it instead
    organization = generate_uid(entropy_srcs=["cem-node dimension organization", sop_instance_uid])
    for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = organization
    seg.ContentDate, seg.ContentTime = DA(when.date()), TM(when.time())
    seg.SeriesDate, seg.SeriesTime = DA(when.date()), TM(when.time())
    stamp_times(seg, when)


def _add_viewer_geometry(seg: hd.seg.Segmentation, source_image: Dataset) -> None:
    """Pixel Measures and Plane Orientation in the shared functional groups.

    Without a frame of reference highdicom leaves the shared functional
    groups empty, which is valid; but OHIF 3 reads both sequences from every
    SEG and fails without them. The pixel spacing is the source's Imager
    Pixel Spacing (detector plane), the orientation the image's own axes.
    """
    spacing = source_image.get("ImagerPixelSpacing") or source_image.get("PixelSpacing")
    shared = seg.SharedFunctionalGroupsSequence[0]
    if spacing is not None and "PixelMeasuresSequence" not in shared:
        measures = Dataset()
        measures.PixelSpacing = [float(v) for v in spacing]
        measures.SliceThickness = 1.0
        shared.PixelMeasuresSequence = [measures]
    if "PlaneOrientationSequence" not in shared:
        orientation = Dataset()
        orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        shared.PlaneOrientationSequence = [orientation]


def _record_lossy_source(seg: hd.seg.Segmentation, source_image: Dataset) -> None:
    """Lossy Image Compression of a SEG of a lossy compressed source image.

    A SEG of a source with Lossy Image Compression 01 says 01 too (PS3.3
    C.8.20.2.2; highdicom copies it). Its Ratio and Method are required only
    when present in the source (Table C.8.20-2): they are copied when the
    source gives a value, left out when it does not (an empty one is dropped,
    as a Type 1C attribute must not be empty). No number is made up: DICOM has
    no "unknown" ratio, and a new Defined Term must not mean unknown (PS3.5
    6.3). PixelMed (2022) wants both whenever the value is 01, which the SEG's
    condition does not say: it reports them missing for a source that gives
    neither. The Derivation Description states what is known, in words.
    """
    if str(source_image.get("LossyImageCompression", "")).strip() != "01":
        return
    seg.LossyImageCompression = "01"
    stated: list[str] = []
    for keyword, name in (
        ("LossyImageCompressionMethod", "method"),
        ("LossyImageCompressionRatio", "ratio"),
    ):
        value = source_image.get(keyword)
        if value is None or str(value).strip() == "":
            if keyword in seg:
                del seg[keyword]
            continue
        setattr(seg, keyword, value)
        values = value if isinstance(value, MultiValue) else [value]
        stated.append(f"{name} {'/'.join(str(v) for v in values)}")
    seg.DerivationDescription = (
        "Segmentation of a lossy compressed image (Lossy Image Compression 01, "
        + (", ".join(stated) if stated else "its compression method and ratio not stated")
        + ")."
    )

"""Grayscale Softcopy Presentation State (GSPS) with the lesion outlines of one view.

For PACS viewers that show neither SEG nor SR: most display a GSPS. One per
analysed view with lesions (a view without lesions gets none), referencing
the view's recombined (RC) and low-energy (LE) images. On each image:

* a closed POLYLINE per lesion (PIXEL units) in the layer ``CEM_AI_OUTLINES``,
  with the lesion's Tracking ID / UID;
* a short text per lesion, ``"R-CC-1 malignant 87%"``, in the layer
  ``CEM_AI_LABELS``, in a box just above the lesion (below it when the lesion
  touches the top edge), anchored to the outline's top point;
* one Graphic Group per lesion holding its outline and text on both images;
* for a model bundle that is not for clinical use, its disclaimer as a text
  at the top of both images (DISPLAY units), besides the Series and Content
  Descriptions ("... (NOT FOR CLINICAL USE)") and the Contributing Equipment.

The presentation keeps each image's own window (VOI LUT) and modality LUT
(rescale), copied from the headers. General Series Laterality is set (dciodvfy
requires it in a presentation state of breast images), so the GSPS of the
left and of the right breast are in two series.

Coordinates: the findings use (column, row) with the centre of the top-left
pixel at (0, 0); DICOM PIXEL units put the top-left corner of that pixel at
(0, 0) (PS3.3 C.10.5.1.2), so 0.5 is added.

The headers need: the four UIDs, Rows, Columns, Samples per Pixel, the
Patient and Study attributes (PatientName, PatientID, PatientBirthDate,
PatientSex, AccessionNumber, StudyID, StudyDate, StudyTime), and the window
and rescale attributes when the presentation should reproduce them. Pixel
data is not needed.
"""

from __future__ import annotations

from datetime import datetime

import highdicom as hd
import numpy as np
import pydicom
from pydicom.multival import MultiValue
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
from cem_node.dicom.objects.seg import lesion_label

__all__ = [
    "CONTENT_LABEL",
    "build_view_gsps",
    "dicom_points",
    "gsps_series_description",
]

#: Content Label (CS, at most 16 characters) of every GSPS.
CONTENT_LABEL = "CEM_AI_OUTLINES"
_OUTLINE_LAYER = "CEM_AI_OUTLINES"
_LABEL_LAYER = "CEM_AI_LABELS"
_YELLOW = (255, 215, 0)
#: Text box height as a fraction of the image height (about 46 px on 2294 rows).
_TEXT_HEIGHT = 0.02
#: Width of one character relative to the text height.
_CHAR_WIDTH = 0.6
#: The on-image disclaimer is cut to this length (Unformatted Text Value is ST).
_DISCLAIMER_CHARS = 1024


def gsps_series_description(model: ModelIdentity) -> str:
    """Series Description of the GSPS series (with NOT FOR CLINICAL USE for research bundles)."""
    return result_series_description("lesion outlines", model)


def dicom_points(outline: list[tuple[float, float]], rows: int, columns: int) -> np.ndarray:
    """The outline as DICOM PIXEL coordinates: +0.5, inside [0, columns] x [0, rows], closed."""
    points = np.asarray(outline, dtype=np.float64) + 0.5
    points[:, 0] = np.clip(points[:, 0], 0.0, float(columns))
    points[:, 1] = np.clip(points[:, 1], 0.0, float(rows))
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points


def _text_box(
    points: np.ndarray, text: str, rows: int, columns: int
) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
    """A box for ``text`` above the lesion (below it at the top edge), inside the image."""
    height = max(8.0, rows * _TEXT_HEIGHT)
    width = min(float(columns), height * _CHAR_WIDTH * len(text))
    left = float(points[:, 0].min())
    top_of_lesion = float(points[:, 1].min())
    bottom_of_lesion = float(points[:, 1].max())
    left = min(max(0.0, left), columns - width)
    if top_of_lesion - height >= 0:
        top = top_of_lesion - height
    else:
        top = min(bottom_of_lesion, rows - height)
    top = max(0.0, top)
    anchor_index = int(np.argmin(points[:, 1]))
    anchor = (float(points[anchor_index, 0]), float(points[anchor_index, 1]))
    return (left, top, left + width, min(float(rows), top + height)), anchor


def _annotations(
    image: pydicom.Dataset,
    lesions: list[Lesion],
    groups: list[hd.pr.GraphicGroup],
    layers: tuple[hd.pr.GraphicLayer, hd.pr.GraphicLayer],
    view: ViewResult,
    model: ModelIdentity,
) -> list[hd.pr.GraphicAnnotation]:
    outlines, texts = [], []
    for lesion, group in zip(lesions, groups, strict=True):
        points = dicom_points(lesion.outline, view.rows, view.columns)
        outlines.append(
            hd.pr.GraphicObject(
                graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                graphic_data=points,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                is_filled=False,
                tracking_id=lesion.lesion_id,
                tracking_uid=lesion.tracking_uid,
                graphic_group=group,
            )
        )
        text = lesion_label(lesion, model)
        box, anchor = _text_box(points, text, view.rows, view.columns)
        texts.append(
            hd.pr.TextObject(
                text_value=text,
                units=hd.pr.AnnotationUnitsValues.PIXEL,
                bounding_box=box,
                anchor_point=anchor,
                anchor_point_visible=False,
                text_justification=hd.pr.TextJustificationValues.LEFT,
                tracking_id=lesion.lesion_id,
                tracking_uid=lesion.tracking_uid,
                graphic_group=group,
            )
        )
    return [
        hd.pr.GraphicAnnotation(
            referenced_images=[image], graphic_layer=layers[0], graphic_objects=outlines
        ),
        hd.pr.GraphicAnnotation(
            referenced_images=[image], graphic_layer=layers[1], text_objects=texts
        ),
    ]


def _voi(image: pydicom.Dataset) -> hd.pr.SoftcopyVOILUTTransformation | None:
    """The image's own window(s), for this image only (None without a window)."""
    if "WindowCenter" not in image or "WindowWidth" not in image:
        return None
    center, width = image.WindowCenter, image.WindowWidth
    many = isinstance(center, MultiValue)
    if many != isinstance(width, MultiValue) or (many and len(center) != len(width)):
        return None
    voi = hd.pr.SoftcopyVOILUTTransformation(
        window_center=[float(c) for c in center] if many else float(center),
        window_width=[float(w) for w in width] if many else float(width),
        voi_lut_function=image.get("VOILUTFunction") or None,
        referenced_images=hd.ReferencedImageSequence(referenced_images=[image]),
    )
    # highdicom turns a single explanation into a list of its characters: set it here
    explanation = image.get("WindowCenterWidthExplanation")
    count = len(center) if many else 1
    values = list(explanation) if isinstance(explanation, MultiValue) else [explanation]
    if explanation and len(values) == count:
        voi.WindowCenterWidthExplanation = values if many else values[0]
    return voi


def build_view_gsps(
    findings: Findings,
    view: ViewResult,
    recombined_image: pydicom.Dataset,
    low_energy_image: pydicom.Dataset,
    *,
    device: ReportingDevice,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int = 1,
    content_datetime: datetime | None = None,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """Build the GSPS of one analysed view: outlines and labels on its RC and LE images.

    Parameters
    ----------
    findings
        The study's findings.
    view
        One of ``findings.views``; it must have at least one lesion.
    recombined_image, low_energy_image
        Headers of the view's RC and LE images (pixel data not needed).
    device
        The software writing the object; the model bundle is recorded as
        Contributing Equipment.
    series_instance_uid, series_number, sop_instance_uid, instance_number
        Identity of the new object.
    content_datetime
        Presentation creation, series and instance creation date/time;
        default ``findings.created``.

    Raises
    ------
    ValueError
        For a view without lesions, a view not in the findings, or headers
        that are not the view's images or differ in size.
    """
    lesions = _gsps_lesions(findings, view, series_number)
    check_view_image(
        "recombined_image", "recombined", view.recombined_sop_instance_uid, view, recombined_image
    )
    check_view_image(
        "low_energy_image", "low_energy", view.low_energy_sop_instance_uid, view, low_energy_image
    )
    when = content_datetime or findings.created
    model = findings.model
    layers, groups, annotations = _graphics(
        lesions, view, model, (recombined_image, low_energy_image)
    )
    gsps = _new_gsps(
        (recombined_image, low_energy_image),
        layers,
        groups,
        annotations,
        view=view,
        model=model,
        device=device,
        when=when,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
    )
    # dciodvfy requires the series' laterality (no Image Laterality in a PR):
    # the GSPS series are per breast
    gsps.Laterality = view.laterality
    gsps.PresentationCreationDate = DA(when.date())
    gsps.PresentationCreationTime = TM(when.time())
    gsps.SeriesDate, gsps.SeriesTime = DA(when.date()), TM(when.time())
    stamp_times(gsps, when)
    return gsps


def _gsps_lesions(findings: Findings, view: ViewResult, series_number: int) -> list[Lesion]:
    """The lesions of a view, after the checks of the arguments that need no image."""
    if view not in findings.views:
        raise ValueError(f"view {view.laterality}-{view.view} is not one of the findings' views")
    check_series_number(series_number)
    by_id = {lesion.lesion_id: lesion for lesion in findings.lesions}
    lesions = [by_id[i] for i in view.lesion_ids]
    if not lesions:
        raise ValueError(f"view {view.laterality}-{view.view} has no lesion: no GSPS is made")
    return lesions


def _graphics(
    lesions: list[Lesion],
    view: ViewResult,
    model: ModelIdentity,
    images: tuple[pydicom.Dataset, pydicom.Dataset],
) -> tuple[
    tuple[hd.pr.GraphicLayer, hd.pr.GraphicLayer],
    list[hd.pr.GraphicGroup],
    list[hd.pr.GraphicAnnotation],
]:
    """The layers, the lesions' graphic groups and the annotations of both images
    (RC, then LE), with the bundle's disclaimer on each when it has one."""
    colour = hd.color.CIELabColor.from_rgb(*_YELLOW)
    layers = (
        hd.pr.GraphicLayer(_OUTLINE_LAYER, 1, "CEM AI lesion outlines", display_color=colour),
        hd.pr.GraphicLayer(_LABEL_LAYER, 2, "CEM AI lesion labels", display_color=colour),
    )
    groups = [
        hd.pr.GraphicGroup(number, lesion.lesion_id, lesion_label(lesion, model))
        for number, lesion in enumerate(lesions, start=1)
    ]
    annotations = [
        *_annotations(images[0], lesions, groups, layers, view, model),
        *_annotations(images[1], lesions, groups, layers, view, model),
    ]
    disclaimer = model_disclaimer(model)
    if disclaimer:
        # visible on the image, in display units at the top left
        text = disclaimer[:_DISCLAIMER_CHARS]
        annotations += [
            hd.pr.GraphicAnnotation(
                referenced_images=[image],
                graphic_layer=layers[1],
                text_objects=[
                    hd.pr.TextObject(
                        text_value=text,
                        units=hd.pr.AnnotationUnitsValues.DISPLAY,
                        bounding_box=(0.01, 0.01, 0.99, 0.04),
                        text_justification=hd.pr.TextJustificationValues.LEFT,
                    )
                ],
            )
            for image in images
        ]
    return layers, groups, annotations


def _new_gsps(
    images: tuple[pydicom.Dataset, pydicom.Dataset],
    layers: tuple[hd.pr.GraphicLayer, hd.pr.GraphicLayer],
    groups: list[hd.pr.GraphicGroup],
    annotations: list[hd.pr.GraphicAnnotation],
    *,
    view: ViewResult,
    model: ModelIdentity,
    device: ReportingDevice,
    when: datetime,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The highdicom GSPS of the RC and LE images, each keeping its own window."""
    disclaimer = model_disclaimer(model)
    description = f"CEM AI lesions {view.laterality} {view.view}"
    if not model.for_clinical_use:
        description += " (NOT FOR CLINICAL USE)"
    vois = [v for v in (_voi(images[0]), _voi(images[1])) if v is not None]
    equipment = model_equipment(model, when)
    charset = utf8_if_needed(
        [
            disclaimer,
            description,
            equipment.ContributionDescription,
            model.name,
            model.version,
            *device_texts(device),
        ]
    )
    return hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=list(images),
        voi_lut_transformations=vois or None,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=device.manufacturer,
        manufacturer_model_name=device.model_name,
        software_versions=device.software_version,
        device_serial_number=device.device_serial_number,
        content_label=CONTENT_LABEL,
        content_description=description,
        graphic_annotations=annotations,
        graphic_layers=list(layers),
        graphic_groups=groups,
        institution_name=device.institution_name,
        contributing_equipment=[equipment],
        series_description=gsps_series_description(model),
        **charset,
    )

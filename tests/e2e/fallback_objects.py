"""Minimal SEG and TID 1500 SR for one lesion, made here with highdicom.

The browser test uses the node's own encoders
(``cem_node.dicom.objects.results.encode_results``) when they can be imported; these
objects stand in for them otherwise, so the viewer harness can be tested on
its own. They follow ../shared/docs/DICOM.md in the essentials OHIF needs:
one single-frame source image per SEG with its PatientOrientation copied,
an SR whose POLYLINE is closed and in (column, row) image coordinates, with
its own Tracking UID and the fused probability as its first measurement.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

__all__ = ["fallback_seg", "fallback_sr", "mask_outline"]

_MANUFACTURER = "cem-node tests"
_MODEL = "e2e-fallback"
_VERSION = "0"


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """The longest outline of a binary mask: closed (x, y) = (column, row) points."""
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.uint8), 1)
    contours = find_contours(padded, 0.5)
    if not contours:
        raise ValueError("empty mask")
    contour = max(contours, key=len) - 1.0  # (row, col), undo the padding
    points = contour[:, ::-1].astype(np.float32)
    if not np.array_equal(points[0], points[-1]):
        points = np.vstack([points, points[:1]])
    return points


def fallback_seg(source: Dataset, mask: np.ndarray, *, label: str) -> Dataset:
    """A BINARY SEG with one segment (``label``) on one single-frame MG image."""
    import highdicom as hd

    algorithm = hd.AlgorithmIdentificationSequence(
        name=_MODEL,
        version=_VERSION,
        family=codes.cid7162.ArtificialIntelligence,
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=hd.sr.CodedConcept(
            "49755003", "SCT", "Morphologically abnormal structure"
        ),
        segmented_property_type=hd.sr.CodedConcept("4147007", "SCT", "Mass"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    segment.RecommendedDisplayCIELabValue = [34734, 53456, 50115]  # red; OHIF warns without
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask.astype(bool)[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        manufacturer_model_name=_MODEL,
        software_versions=_VERSION,
        device_serial_number="0",
        series_description="cem-node e2e fallback SEG",
        # OHIF reads the spacing from the SEG's Pixel Measures (it fails without
        # them); MG images have only Imager Pixel Spacing, which highdicom ignores.
        pixel_measures=hd.PixelMeasuresSequence(
            pixel_spacing=[float(v) for v in source.ImagerPixelSpacing],
            slice_thickness=1.0,
        ),
    )
    if "PatientOrientation" in source:
        seg.PatientOrientation = source.PatientOrientation
    # OHIF's SEG loader reads ImageOrientationPatient from the functional
    # groups even without a Frame of Reference; the row/column directions of
    # the image itself (what cornerstone assumes for the MG source image too).
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence = [orientation]
    return seg


def fallback_sr(source: Dataset, outline: np.ndarray, *, probability: float) -> Dataset:
    """A TID 1500 Comprehensive SR: one POLYLINE and its probability of cancer (%)."""
    import highdicom as hd

    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline,
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )
    measurement = hd.sr.Measurement(
        name=hd.sr.CodedConcept("111047", "DCM", "Probability of cancer"),
        value=round(probability * 100.0, 1),
        unit=hd.sr.CodedConcept("%", "UCUM", "%"),
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Lesion 1"),
        referenced_region=region,
        finding_type=hd.sr.CodedConcept("4147007", "SCT", "Mass"),
        measurements=[measurement],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=_MODEL
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("71651007", "SCT", "Mammography"),
        imaging_measurements=[group],
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=902,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=_MANUFACTURER,
        series_description="cem-node e2e fallback SR",
    )

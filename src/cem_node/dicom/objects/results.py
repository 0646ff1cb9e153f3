"""Encode a study's findings as the DICOM objects the node sends back.

:func:`encode_results` turns one :class:`~cem_node.contracts.findings.Findings` into:

* ``seg``: one Segmentation per analysed view with at least one lesion
  (:mod:`cem_node.dicom.objects.seg`); a view without lesions gets none;
* ``sr``: one TID 1500 report for the study (:mod:`cem_node.dicom.objects.sr`),
  which also says "No suspicious lesion found" for a study, breast or view
  without lesions;
* ``gsps``: one presentation state per view with lesions (:mod:`cem_node.dicom.objects.gsps`).

Series. The SR, each view's SEG and each breast's GSPS have their own series
(OHIF shows only one SEG instance of a series; General Series Laterality is
required for a GSPS). Series numbers come from a block above every Series
Number of the source headers: the block starts at 9000, or at the next
multiple of 1000 above the highest source Series Number when that is 9000 or
more, and each analysis round takes twenty numbers in it::

    block + 20 * (round - 1) + 1         SR
    block + 20 * (round - 1) + 2         GSPS, right breast
    block + 20 * (round - 1) + 3         GSPS, left breast
    block + 20 * (round - 1) + 4 + i     SEG of the i-th view with lesions (i < 16)

so round 1 of a usual study gives 9001 (SR), 9002 / 9003 (GSPS), 9004...
(SEG).
The "not analysable" report (:func:`encode_not_analysable`) takes the SR's
number.

Rounds. A later round of a study supersedes the results of the earlier ones;
its SR names the SRs already sent in its Predecessor Documents Sequence and
says that it replaces them (:func:`replacing_earlier_reports`).

UIDs. Every Series and SOP Instance UID is derived (``generate_uid`` with
entropy sources) from the study, the analysis round, the bundle's SHA-256,
the object type and the view, so encoding the same round again gives the same
objects and resending them is idempotent at the PACS; a new round or another
bundle gives new ones.

What the headers must hold (pixel data is not needed): the four UIDs of every
instance (checked), Rows and Columns of the analysed images, Samples per
Pixel, Bits Allocated and Photometric Interpretation of the RC images (SEG),
the Patient and Study attributes (copied), Window Center / Width and Rescale
attributes (GSPS, optional) and Series Number (optional, for the series
numbers). The LE and RC image of every analysed view must be among them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import pydicom
from pydicom.uid import generate_uid

from cem_node.contracts.analysis import RESULT_TYPES, ResultObject
from cem_node.contracts.findings import Findings, ViewResult
from cem_node.dicom.objects.common import ReportingDevice, check_sources, missing_view_image
from cem_node.dicom.objects.gsps import build_view_gsps
from cem_node.dicom.objects.not_analysable import build_not_analysable_sr
from cem_node.dicom.objects.predecessors import replace_earlier_reports
from cem_node.dicom.objects.seg import SEGMENTATION_TYPES, build_view_seg
from cem_node.dicom.objects.sr import build_findings_sr

__all__ = [
    "DEFAULT_DEVICE_SERIAL",
    "SERIES_BLOCK_START",
    "encode_not_analysable",
    "encode_results",
    "replacing_earlier_reports",
    "result_series_numbers",
]

#: First number of the block the result series numbers come from.
SERIES_BLOCK_START = 9000
#: Device Serial Number of the default :class:`ReportingDevice`.
DEFAULT_DEVICE_SERIAL = "CEMNODE"
_OFFSETS = {"sr": 1, "gsps-R": 2, "gsps-L": 3, "seg": 4}
_ROUND_STRIDE = 20
_MAX_SEG_SERIES = 16
_MAX_SERIES_NUMBER = 2**31 - 1


def result_series_numbers(
    headers: Iterable[pydicom.Dataset], analysis_round: int = 1
) -> dict[str, int]:
    """Series Numbers of the result series: keys ``sr``, ``gsps-R``, ``gsps-L``, ``seg``.

    ``seg`` is the number of the first view's SEG; the i-th view's is ``seg + i``.

    They are above every Series Number in ``headers`` (see the module
    docstring for the rule) and differ per analysis round.
    """
    _check_round(analysis_round)
    numbers = []
    for ds in headers:
        try:
            numbers.append(int(ds.get("SeriesNumber")))
        except (TypeError, ValueError):
            continue
    highest = max(numbers, default=0)
    block = SERIES_BLOCK_START
    if highest >= SERIES_BLOCK_START:
        block = (highest // 1000 + 1) * 1000
    base = block + _ROUND_STRIDE * (analysis_round - 1)
    if base + _ROUND_STRIDE > _MAX_SERIES_NUMBER:
        raise ValueError(f"no series numbers left above {highest} for round {analysis_round}")
    return {key: base + offset for key, offset in _OFFSETS.items()}


def _check_round(analysis_round: object) -> None:
    if isinstance(analysis_round, bool) or not isinstance(analysis_round, int):
        raise TypeError(f"analysis_round must be an int, got {type(analysis_round).__name__}")
    if analysis_round < 1:
        raise ValueError(f"analysis_round must be at least 1, got {analysis_round}")


def _uid_maker(*parts: str) -> Callable[..., str]:
    def uid(*more: str) -> str:
        return generate_uid(entropy_srcs=["cem-node result", *parts, *more])

    return uid


def _check_identity(findings: Findings, sources: Sequence[pydicom.Dataset]) -> None:
    study = sources[0].StudyInstanceUID
    if study != findings.study_instance_uid:
        raise ValueError(
            f"the headers are of study {study}, the findings of study {findings.study_instance_uid}"
        )
    patient = str(sources[0].get("PatientID") or "")
    if findings.patient_id and patient and patient != findings.patient_id:
        raise ValueError(
            f"the headers name patient {patient!r}, the findings patient {findings.patient_id!r}"
        )


def encode_results(
    findings: Findings,
    headers: Sequence[pydicom.Dataset],
    *,
    objects: Iterable[str] = RESULT_TYPES,
    analysis_round: int = 1,
    segmentation_type: Literal["AUTO", "BINARY", "FRACTIONAL"] = "AUTO",
    device: ReportingDevice | None = None,
) -> list[ResultObject]:
    """Encode the findings as SEG, SR and GSPS objects (see the module docstring).

    Parameters
    ----------
    findings
        The study round's findings.
    headers
        The source images' headers (pixel data not needed), of one study: at
        least the LE and RC image of every analysed view; every one is listed
        as evidence in the SR.
    objects
        Which kinds to make, of ``"seg"``, ``"sr"``, ``"gsps"``.
    analysis_round
        The study's analysis round (enters UIDs and series numbers).
    segmentation_type
        ``"AUTO"`` (default: BINARY, or FRACTIONAL for a view whose BINARY
        frames would not be byte-aligned, see :func:`_seg_type`), ``"BINARY"``
        or ``"FRACTIONAL"`` (the binary masks as probability 1.0 / 0.0: the
        findings carry no probability maps).
    device
        The software writing the objects (General Equipment, SR observer);
        default ``ReportingDevice(device_serial_number="CEMNODE")``. The
        model bundle is recorded as Contributing Equipment of every object.

    Returns
    -------
    list of ResultObject
        In the order of ``objects``; SEG and GSPS in the order of
        ``findings.views``, for the views with lesions.

    Raises
    ------
    TypeError, ValueError
        For an unknown object type or segmentation type, a bad round,
        headers of another study or patient, or a missing analysed image.
    """
    wanted = _wanted_objects(objects, segmentation_type)
    _check_round(analysis_round)
    sources = check_sources(headers)
    _check_identity(findings, sources)
    by_uid = {ds.SOPInstanceUID: ds for ds in sources}
    _check_analysed_images(findings, by_uid)
    device = device or ReportingDevice(device_serial_number=DEFAULT_DEVICE_SERIAL)
    numbers = result_series_numbers(sources, analysis_round)
    uid = _uid_maker(findings.study_instance_uid, str(analysis_round), findings.model.sha256)

    out: list[ResultObject] = []
    for kind in wanted:
        if kind == "sr":
            sr = build_findings_sr(
                findings,
                sources,
                device=device,
                series_instance_uid=uid("series", "sr"),
                series_number=numbers["sr"],
                sop_instance_uid=uid("instance", "sr"),
            )
            out.append(ResultObject("sr", sr))
        elif kind == "seg":
            out += _encode_segs(findings, by_uid, segmentation_type, device, numbers, uid)
        else:
            out += _encode_gsps(findings, by_uid, device, numbers, uid)
    return out


def _wanted_objects(objects: Iterable[str], segmentation_type: str) -> list[str]:
    """The object types asked for, once each, after checking them and the SEG type."""
    wanted = [objects] if isinstance(objects, str) else list(dict.fromkeys(objects))
    unknown = [o for o in wanted if o not in RESULT_TYPES]
    if unknown:
        raise ValueError(f"unknown object type(s) {unknown}: choose from {RESULT_TYPES}")
    if segmentation_type != "AUTO" and segmentation_type not in SEGMENTATION_TYPES:
        raise ValueError(
            f"segmentation_type must be one of {SEGMENTATION_TYPES}, got {segmentation_type!r}"
        )
    return wanted


def _check_analysed_images(findings: Findings, by_uid: Mapping[str, pydicom.Dataset]) -> None:
    """Every analysed view's RC and LE image must be among the headers."""
    missing = missing_view_image(findings, by_uid)
    if missing is not None:
        kind, uid, view = missing
        raise ValueError(
            f"headers lack the {kind} image {uid} of view {view.laterality}-{view.view}"
        )


def _encode_segs(
    findings: Findings,
    by_uid: Mapping[str, pydicom.Dataset],
    segmentation_type: str,
    device: ReportingDevice,
    numbers: Mapping[str, int],
    uid: Callable[..., str],
) -> list[ResultObject]:
    """One SEG per view with lesions, each in a series of its own."""
    out: list[ResultObject] = []
    for index, view in enumerate(view for view in findings.views if view.lesion_ids):
        kind_of_seg = _seg_type(segmentation_type, view)
        key = _key(view)
        seg = build_view_seg(
            findings,
            view,
            by_uid[view.recombined_sop_instance_uid],
            device=device,
            series_instance_uid=uid("series", "seg", kind_of_seg, key),
            series_number=numbers["seg"] + index % _MAX_SEG_SERIES,
            sop_instance_uid=uid("instance", "seg", kind_of_seg, key),
            instance_number=1,
            segmentation_type=kind_of_seg,
        )
        out.append(ResultObject("seg", seg))
    return out


def _encode_gsps(
    findings: Findings,
    by_uid: Mapping[str, pydicom.Dataset],
    device: ReportingDevice,
    numbers: Mapping[str, int],
    uid: Callable[..., str],
) -> list[ResultObject]:
    """One GSPS per view with lesions, in one series per breast."""
    out: list[ResultObject] = []
    counters = {"R": 0, "L": 0}
    for view in (view for view in findings.views if view.lesion_ids):
        counters[view.laterality] += 1
        gsps = build_view_gsps(
            findings,
            view,
            by_uid[view.recombined_sop_instance_uid],
            by_uid[view.low_energy_sop_instance_uid],
            device=device,
            series_instance_uid=uid("series", "gsps", view.laterality),
            series_number=numbers[f"gsps-{view.laterality}"],
            sop_instance_uid=uid("instance", "gsps", _key(view)),
            instance_number=counters[view.laterality],
        )
        out.append(ResultObject("gsps", gsps))
    return out


def _seg_type(requested: str, view: ViewResult) -> str:
    """BINARY, unless AUTO and BINARY frames would not start on a byte boundary.

    A BINARY SEG packs its frames' bits back to back, so with several
    segments (frames) and Rows x Columns not a multiple of 8 every frame after
    the first starts mid-byte. That is valid DICOM, but OHIF 3 draws such
    frames as streaks and Orthanc's per-frame retrieval refuses them; the same
    masks as FRACTIONAL (0 or 1, one byte per pixel) show correctly.
    """
    if requested != "AUTO":
        return requested
    aligned = (view.rows * view.columns) % 8 == 0
    return "BINARY" if aligned or len(view.lesion_ids) == 1 else "FRACTIONAL"


def _key(view: ViewResult) -> str:
    return f"{view.laterality}-{view.view}-{view.recombined_sop_instance_uid}"


def encode_not_analysable(
    headers: Sequence[pydicom.Dataset],
    reason: str,
    *,
    analysis_round: int = 1,
    device: ReportingDevice | None = None,
    not_for_clinical_use: bool = True,
) -> list[ResultObject]:
    """The "not analysed: <reason>" SR of a study round, numbered and identified as
    :func:`encode_results` would number its SR (deterministic UIDs, no bundle)."""
    _check_round(analysis_round)
    sources = check_sources(headers)
    device = device or ReportingDevice(device_serial_number=DEFAULT_DEVICE_SERIAL)
    uid = _uid_maker(sources[0].StudyInstanceUID, str(analysis_round), "not analysable")
    sr = build_not_analysable_sr(
        sources,
        reason,
        device=device,
        series_instance_uid=uid("series", "sr"),
        series_number=result_series_numbers(sources, analysis_round)["sr"],
        sop_instance_uid=uid("instance", "sr"),
        not_for_clinical_use=not_for_clinical_use,
    )
    return [ResultObject("sr", sr)]


def replacing_earlier_reports(
    objects: Iterable[ResultObject], predecessors: Sequence[pydicom.Dataset]
) -> list[ResultObject]:
    """``objects`` with every SR naming ``predecessors`` as the reports it replaces.

    ``predecessors`` are the headers of the study's SRs of earlier rounds that
    were sent (see :func:`~cem_node.dicom.objects.predecessors.replace_earlier_reports`);
    SEG and GSPS objects are returned as they are.
    """
    return [
        ResultObject(o.object_type, replace_earlier_reports(o.dataset, predecessors))
        if o.object_type == "sr" and predecessors
        else o
        for o in objects
    ]

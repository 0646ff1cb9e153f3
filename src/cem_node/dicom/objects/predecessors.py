"""How a report of the node names the earlier reports of its study that it replaces.

When images arrive after a study's results were sent, the study is analysed
again and the new SR lists the earlier ones in its Predecessor Documents
Sequence (PS3.3 C.17.2) and says so in a Comment the radiologist reads first.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pydicom
from highdicom.sr import (
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.sr.codedict import codes

from cem_node.dicom.objects.common import (
    QUALITATIVE_EVALUATIONS,
    REQUIRED_UIDS,
    hierarchical_references,
    is_valid_uid,
    qualitative_evaluations,
)

__all__ = [
    "REPLACES_PREFIX",
    "predecessor_documents",
    "replace_earlier_reports",
    "replaces_statement",
]

#: Opens the Comment of a report that replaces reports of earlier rounds.
REPLACES_PREFIX = "This report replaces "


#: SOP Class UIDs of SR documents (PS3.4 B.5) start with it.
_SR_CLASS_ROOT = "1.2.840.10008.5.1.4.1.1.88."


def _report_identity(index: int, ds: object) -> pydicom.Dataset:
    """Check that ``predecessors[index]`` is an SR with its four UIDs; return it."""
    if not isinstance(ds, pydicom.Dataset):
        raise TypeError(f"predecessors[{index}] must be a pydicom.Dataset, got {type(ds).__name__}")
    for keyword in REQUIRED_UIDS:
        value = str(ds.get(keyword) or "")
        if not is_valid_uid(value):
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
    checked = [_report_identity(index, ds) for index, ds in enumerate(predecessors)]
    return pydicom.Sequence(hierarchical_references(checked))


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
            and item.ConceptNameCodeSequence[0].CodeValue == QUALITATIVE_EVALUATIONS.value
            and item.ConceptNameCodeSequence[0].CodingSchemeDesignator
            == QUALITATIVE_EVALUATIONS.scheme_designator
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

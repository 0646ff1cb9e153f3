"""The contract between the worker and the analysis of one study round.

The worker selects and pairs the images
(:func:`cem_node.dicom.selection.plan_study`); an :class:`Analyser` turns the
pairs into result objects (SEG, SR, GSPS datasets) and a findings document.
:class:`cem_node.pipeline.service.BundleAnalyser` is the node's analyser;
tests use a test double.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from pydicom.dataset import Dataset

from cem_node.contracts.findings import Findings

__all__ = [
    "RESULT_TYPES",
    "Analyser",
    "AnalysisRequest",
    "AnalysisResult",
    "AnalysisUnavailableError",
    "ImagePair",
    "InstanceUnusableError",
    "ResultObject",
    "ResultType",
    "UnavailableAnalyser",
]


@dataclass(frozen=True, slots=True)
class ImagePair:
    """A low-energy and a recombined image of one breast and view."""

    laterality: str
    view: str
    low_energy_path: Path
    recombined_path: Path
    low_energy_sop_instance_uid: str
    recombined_sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class AnalysisRequest:
    """What the worker hands to the analysis."""

    study_instance_uid: str
    analysis_round: int
    pairs: Sequence[ImagePair]
    headers: Sequence[Dataset]
    """Headers (no pixel data) of every mammography image of the study."""


ResultType = Literal["seg", "sr", "gsps"]
"""The kinds of result object the node writes (and the names an export may choose)."""
RESULT_TYPES: tuple[ResultType, ...] = get_args(ResultType)


@dataclass(frozen=True, slots=True)
class ResultObject:
    """One DICOM object to export, of one of the :data:`RESULT_TYPES`."""

    object_type: ResultType
    dataset: Dataset


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    """The analysis' output and the identity of the model that produced it."""

    objects: Sequence[ResultObject]
    model_name: str
    model_version: str
    model_sha256: str
    device: str | None = None
    document: dict[str, Any] | None = None
    patient_score: float | None = None
    findings: Findings | None = None
    """The typed findings (their JSON is ``document``); stored as one row per lesion."""
    details: dict[str, Any] = field(default_factory=dict)


class AnalysisUnavailableError(RuntimeError):
    """The analysis cannot run at all (no model installed ...): retrying will not help."""


class InstanceUnusableError(ValueError):
    """One image of the request cannot be used (its pixel data cannot be decoded ...).

    A permanent problem of that instance, not of the study: the worker
    excludes it, with ``reason``, and analyses the rest again.

    Parameters
    ----------
    sop_instance_uid
        The image's SOP Instance UID.
    reason
        Why, in words for an administrator.
    """

    def __init__(self, sop_instance_uid: str, reason: str) -> None:
        super().__init__(f"instance {sop_instance_uid}: {reason}")
        self.sop_instance_uid = sop_instance_uid
        self.reason = reason


class Analyser(Protocol):
    """Analyse one study round."""

    def analyse(self, request: AnalysisRequest) -> AnalysisResult:
        """Return the result objects, or raise.

        Raises
        ------
        AnalysisUnavailableError
            For a permanent failure (the job fails at once).
        InstanceUnusableError
            For a permanent problem of one image of the request (it is
            excluded and the rest analysed).
        Exception
            Anything else counts as transient and is retried with backoff.
        """
        ...


class UnavailableAnalyser:
    """The analyser of a node without an analysis: every job fails, saying why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def analyse(self, request: AnalysisRequest) -> AnalysisResult:
        raise AnalysisUnavailableError(self.reason)

"""What to analyse in one study: its LE/RC pairs as an analysis request, or why there is none.

The one route from classified images to an
:class:`~cem_node.contracts.analysis.AnalysisRequest`, shared by the worker
(received studies), ``cem-node analyse`` (files on disk) and the training
datasets (synthetic studies), so that all three pair and explain alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset

from cem_node.config import SelectionSection
from cem_node.contracts.analysis import AnalysisRequest, ImagePair
from cem_node.dicom.selection.images import Classification, Pairing, pair_images

__all__ = [
    "StudyPlan",
    "plan_study",
    "summarise_exclusions",
]


@dataclass(frozen=True, slots=True)
class StudyPlan:
    """The pairing of one study's images and, when a pair is complete, the request."""

    pairings: tuple[Pairing, ...]
    request: AnalysisRequest | None
    """None when no low-energy/recombined pair is complete: nothing to analyse."""
    reason: str
    """The pairings' reasons (each names its breast and view), or why nothing is analysed."""


def _image_pairs(pairings: Iterable[Pairing], path_of: Mapping[str, Path]) -> list[ImagePair]:
    """The complete pairings as :class:`ImagePair` (``path_of``: SOP Instance UID -> file)."""
    return [
        ImagePair(
            laterality=p.laterality or "",
            view=p.view or "",
            low_energy_path=path_of[p.low_energy or ""],
            recombined_path=path_of[p.recombined or ""],
            low_energy_sop_instance_uid=p.low_energy or "",
            recombined_sop_instance_uid=p.recombined or "",
        )
        for p in pairings
        if p.complete
    ]


def plan_study(
    classifications: Sequence[Classification],
    rules: SelectionSection,
    *,
    study_instance_uid: str,
    analysis_round: int,
    path_of: Mapping[str, Path],
    headers: Sequence[Dataset],
    excluded: Mapping[str, str] | None = None,
) -> StudyPlan:
    """Pair the study's usable images and build the analysis request.

    Parameters
    ----------
    classifications
        The usable images' classifications (those excluded are not among them).
    rules
        The selection rules (pairing policy, time window).
    study_instance_uid, analysis_round
        Who the request is for.
    path_of
        The file of each SOP Instance UID.
    headers
        The usable images' headers (no pixel data), handed to the analysis.
    excluded
        Why each image left out was left out (SOP Instance UID -> reason), for
        the not-analysable reason.
    """
    pairings = tuple(pair_images(classifications, rules))
    complete = [p for p in pairings if p.complete]
    if not complete:
        return StudyPlan(
            pairings, None, _summarise_not_analysable(classifications, pairings, excluded)
        )
    request = AnalysisRequest(
        study_instance_uid=study_instance_uid,
        analysis_round=analysis_round,
        pairs=_image_pairs(complete, path_of),
        headers=list(headers),
    )
    return StudyPlan(pairings, request, "; ".join(p.reason for p in pairings))


def summarise_exclusions(excluded: Mapping[str, str]) -> str:
    """Say which images were left out and why, in one phrase (equal reasons counted once).

    Parameters
    ----------
    excluded
        Reason by SOP Instance UID.
    """
    return f"{len(excluded)} image(s) excluded: {_most_common(excluded.values())}"


def _most_common(reasons: Iterable[str]) -> str:
    """The three most frequent reasons, each once with its count, and how many others."""
    counted = Counter(reasons)
    listed = "; ".join(
        f"{reason} ({count} images)" if count > 1 else reason
        for reason, count in counted.most_common(3)
    )
    return listed + (f"; {len(counted) - 3} other reason(s)" if len(counted) > 3 else "")


def _summarise_not_analysable(
    classifications: Sequence[Classification],
    pairings: Sequence[Pairing],
    excluded: Mapping[str, str] | None = None,
) -> str:
    """Say in one sentence why a study without a complete pair cannot be analysed.

    ``classifications`` are those of the usable images; ``excluded`` gives the
    reason of each image left out (SOP Instance UID -> reason).
    """
    parts: list[str] = []
    cem = [c for c in classifications if c.role in ("low_energy", "recombined")]
    if excluded:
        if not classifications:
            return f"no usable mammography image: {summarise_exclusions(excluded)}"
        parts.append(summarise_exclusions(excluded) + ";")
    if not classifications:
        return "no mammography image received"
    if not cem:
        # why each image is not CEM (a Secondary Capture is not a mammography image
        # class at all; a mammogram without contrast is another role)
        parts.append(
            f"no low-energy or recombined image among {len(classifications)} image(s) "
            f"({_most_common(c.reason for c in classifications)}): not a CEM study?"
        )
    else:
        reasons = [p.reason for p in pairings]
        parts.append("no low-energy/recombined pair: " + "; ".join(r for r in reasons if r))
    return " ".join(parts)

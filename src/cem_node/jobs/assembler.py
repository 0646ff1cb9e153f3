"""Study assembly: decide when a study is complete (no DICOM message says so).

A study is complete after ``quiet_period_s`` without a new instance, or
``max_wait_s`` after the first instance of its round however busy the
sender still is. Completion moves the round's job to ``queued``; jobs of
earlier rounds that had not produced results yet are superseded.

One incompleteness is worth the longer wait: a view with its low-energy
image but no recombined image yet. The recombined image is computed by the
modality from the low- and high-energy exposures after the acquisition and
often sent later, in a series or association of its own (a forwarding PACS
may hold it back longer still); completing such a study at the quiet period
sends a "not analysed" report that the real results contradict a minute
later. Such a study therefore waits until ``max_wait_s`` (``awaiting`` in
:func:`complete_due_studies`, :class:`RecombinedAwaited` reading the stored
headers). The other incompletenesses do not wait: a recombined image without
its low-energy image was derived from an exposure the modality already had,
so the low-energy image was not sent rather than late, and an image without
laterality or view can never be paired.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pydicom
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from cem_node.config import SelectionSection
from cem_node.dicom.selection import MAMMOGRAPHY_SOP_CLASSES, Classification, classify_image
from cem_node.jobs.claims import advance_generation, for_claim
from cem_node.jobs.states import ACTIVE_STATES, create_job, transition
from cem_node.store.instance_files import InstanceFileStore
from cem_node.store.models import Instance, Job, JobState, Study, StudyState, utcnow

__all__ = [
    "WAITING_PREFIX",
    "AwaitingCheck",
    "CompletedStudy",
    "RecombinedAwaited",
    "complete_due_studies",
    "views_awaiting_recombined",
]

_LOG = logging.getLogger(__name__)

#: Opens the state reason of a quiet study held back for its recombined images.
WAITING_PREFIX = "waiting for the recombined images of "

AwaitingCheck = Callable[[int, dt.datetime], str | None]
"""``(study id, last arrival) -> what the study still waits for``, or ``None``."""


@dataclass(frozen=True, slots=True)
class CompletedStudy:
    """A study that was just completed."""

    study_instance_uid: str
    analysis_round: int
    reason: str  # "quiet_period" or "max_wait"
    job_id: int


def views_awaiting_recombined(images: Iterable[Classification]) -> list[str]:
    """The views (``"R CC"``) with a low-energy image and no recombined image, sorted.

    Only views with a laterality and a view count: an image without them can
    never be paired, and waiting does not change that. A view with a
    recombined image is not awaited even when it has more low-energy images
    than recombined ones (a duplicate, or a For Processing copy).
    """
    by_role: dict[str, set[tuple[str, str]]] = {"low_energy": set(), "recombined": set()}
    for image in images:
        if image.role in by_role and image.laterality and image.view:
            by_role[image.role].add((image.laterality, image.view))
    return [f"{lat} {view}" for lat, view in sorted(by_role["low_energy"] - by_role["recombined"])]


class RecombinedAwaited:
    """Whether a study still waits for recombined images, from its stored headers.

    Called by the assembler for a study whose quiet period has elapsed; the
    answer is kept until another instance of the study arrives, so a study
    that waits is read once per arrival, not at every check.

    Parameters
    ----------
    sessions, files
        The database and the instance store.
    rules
        The selection rules the worker classifies with.
    """

    def __init__(
        self, sessions: sessionmaker[Session], files: InstanceFileStore, rules: SelectionSection
    ) -> None:
        self._sessions = sessions
        self._files = files
        self._rules = rules
        self._lock = threading.Lock()
        self._answers: dict[int, tuple[dt.datetime, str | None]] = {}

    def __call__(self, study_id: int, last_received_at: dt.datetime) -> str | None:
        """What the study waits for (``"waiting for the recombined images of ..."``) or None."""
        with self._lock:
            known = self._answers.get(study_id)
        if known is not None and known[0] == last_received_at:
            return known[1]
        views = views_awaiting_recombined(self._classify(study_id))
        answer = WAITING_PREFIX + ", ".join(views) if views else None
        with self._lock:
            if len(self._answers) > 10_000:  # studies long completed: forget them
                self._answers.clear()
            self._answers[study_id] = (last_received_at, answer)
        return answer

    def _classify(self, study_id: int) -> list[Classification]:
        with self._sessions.begin() as session:
            rows = session.execute(
                select(Instance.sop_instance_uid, Instance.file_path).where(
                    Instance.study_id == study_id,
                    Instance.sop_class_uid.in_(list(MAMMOGRAPHY_SOP_CLASSES)),
                )
            ).all()
        out: list[Classification] = []
        for uid, path in rows:
            try:
                ds = pydicom.dcmread(self._files.absolute(path), stop_before_pixels=True)
                out.append(classify_image(ds, self._rules))
            except Exception as exc:  # the worker excludes it with its reason; nothing to await
                _LOG.debug("instance %s not classified for assembly: %s", uid, exc)
        return out


def complete_due_studies(
    sessions: sessionmaker[Session],
    *,
    quiet_period_s: float,
    max_wait_s: float,
    actor: str,
    now: dt.datetime | None = None,
    awaiting: AwaitingCheck | None = None,
) -> list[CompletedStudy]:
    """Complete every receiving study whose quiet period or maximum wait has elapsed.

    Parameters
    ----------
    awaiting
        Says what a quiet study still waits for (see :class:`RecombinedAwaited`);
        such a study is held until its maximum wait, with that note as its
        state reason. ``None``: the quiet period alone completes a study.

    Returns
    -------
    list of CompletedStudy
        The studies completed by this call, with their queued job.
    """
    now = now or utcnow()
    quiet_before = now - dt.timedelta(seconds=quiet_period_s)
    forced_before = now - dt.timedelta(seconds=max_wait_s)
    due_now = (
        Study.state == StudyState.RECEIVING,
        or_(Study.last_received_at <= quiet_before, Study.receiving_since <= forced_before),
    )
    notes, held, checked = (
        _check_awaiting(sessions, due_now, awaiting, forced_before)
        if awaiting is not None
        else ({}, {}, None)
    )
    completed: list[CompletedStudy] = []
    with sessions.begin() as session:
        if held:
            _note_waiting(session, held, max_wait_s)
        query = select(Study).where(*due_now)
        if checked is not None:  # a study due only since the check waits for the next one
            query = query.where(Study.id.in_(checked))
        due = session.scalars(for_claim(query.order_by(Study.last_received_at), session)).all()
        for study in due:
            reason = "quiet_period" if study.last_received_at <= quiet_before else "max_wait"
            waited_for = notes.get(study.id)
            if waited_for is not None:  # held back until now: the maximum wait completes it
                reason = "max_wait"
            if _is_waiting_note(study.state_reason):
                study.state_reason = None
            study.state = StudyState.COMPLETE
            study.completed_at = now
            study.completion_reason = reason
            current = _current_job(session, study, actor)
            if reason == "quiet_period":
                why = "quiet period elapsed"
            elif waited_for is not None:
                why = f"maximum wait elapsed, still {waited_for}"
            else:
                why = "maximum wait elapsed (instances still arriving)"
            uid = study.study_instance_uid
            transition(
                session, current, JobState.COMPLETE, actor=actor, reason=why, study_instance_uid=uid
            )
            transition(session, current, JobState.QUEUED, actor=actor, study_instance_uid=uid)
            completed.append(
                CompletedStudy(study.study_instance_uid, study.analysis_round, reason, current.id)
            )
    return completed


def _check_awaiting(
    sessions: sessionmaker[Session],
    due_now: tuple[Any, ...],
    awaiting: AwaitingCheck,
    forced_before: dt.datetime,
) -> tuple[dict[int, str], dict[int, str], list[int]]:
    """What each due study still waits for; those of them not yet at their maximum wait
    (held); and the due studies the check cleared."""
    notes: dict[int, str] = {}
    held: dict[int, str] = {}
    # read the headers outside the claiming transaction (files, not rows)
    with sessions.begin() as session:
        candidates = session.execute(
            select(Study.id, Study.last_received_at, Study.receiving_since).where(*due_now)
        ).all()
    for study_id, last, since in candidates:
        note = awaiting(study_id, last)
        if note is None:
            continue
        notes[study_id] = note
        if since is None or since > forced_before:
            held[study_id] = note
    checked = [study_id for study_id, _, _ in candidates if study_id not in held]
    return notes, held, checked


def _current_job(session: Session, study: Study, actor: str) -> Job:
    """The job of the study's current round; its older unfinished jobs are superseded."""
    # the study's unfinished jobs, locked: a job whose row a worker holds (its
    # results being committed) is left to finish its round, not overwritten
    jobs = session.scalars(
        for_claim(
            select(Job)
            .where(Job.study_id == study.id, Job.state.in_(list(ACTIVE_STATES)))
            .order_by(Job.id),
            session,
        )
    ).all()
    current = None
    for job in jobs:
        if job.analysis_round == study.analysis_round and job.state is JobState.RECEIVED:
            current = job
        elif advance_generation(session, job):  # still as read: a claim on it ends
            transition(
                session,
                job,
                JobState.SUPERSEDED,
                actor=actor,
                reason=f"round {study.analysis_round} replaces it",
                study_instance_uid=study.study_instance_uid,
            )
    if current is None:  # e.g. a study row written by an older version
        current = create_job(session, study)
    return current


def _is_waiting_note(reason: str | None) -> bool:
    return reason is not None and reason.startswith(WAITING_PREFIX)


def _note_waiting(session: Session, held: dict[int, str], max_wait_s: float) -> None:
    """Say in the study's state reason what it waits for (``studies show``), once."""
    for study in session.scalars(select(Study).where(Study.id.in_(list(held)))):
        if study.state is not StudyState.RECEIVING:
            continue
        note = f"{held[study.id]} (at most {max_wait_s:g} s after the round's first image)"
        if study.state_reason != note:
            study.state_reason = note

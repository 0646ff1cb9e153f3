"""Study assembly: decide when a study is complete (no DICOM message says so).

A study is complete after ``quiet_period_s`` without a new instance, or
``max_wait_s`` after the first instance of its round however busy the
sender still is. Completion moves the round's job to ``queued``; jobs of
earlier rounds that had not produced results yet are superseded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from cem_node.jobs.claims import for_claim
from cem_node.jobs.states import ACTIVE_STATES, transition
from cem_node.store.models import Job, JobState, Study, StudyState, utcnow

__all__ = ["CompletedStudy", "complete_due_studies"]


@dataclass(frozen=True, slots=True)
class CompletedStudy:
    """A study that was just completed."""

    study_instance_uid: str
    analysis_round: int
    reason: str  # "quiet_period" or "max_wait"
    job_id: int


def complete_due_studies(
    sessions: sessionmaker[Session],
    *,
    quiet_period_s: float,
    max_wait_s: float,
    actor: str,
    now: dt.datetime | None = None,
) -> list[CompletedStudy]:
    """Complete every receiving study whose quiet period or maximum wait has elapsed.

    Returns
    -------
    list of CompletedStudy
        The studies completed by this call, with their queued job.
    """
    now = now or utcnow()
    quiet_before = now - dt.timedelta(seconds=quiet_period_s)
    forced_before = now - dt.timedelta(seconds=max_wait_s)
    completed: list[CompletedStudy] = []
    with sessions.begin() as session:
        due = session.scalars(
            for_claim(
                select(Study)
                .where(
                    Study.state == StudyState.RECEIVING,
                    or_(
                        Study.last_received_at <= quiet_before,
                        Study.receiving_since <= forced_before,
                    ),
                )
                .order_by(Study.last_received_at),
                session,
            )
        ).all()
        for study in due:
            reason = "quiet_period" if study.last_received_at <= quiet_before else "max_wait"
            study.state = StudyState.COMPLETE
            study.completed_at = now
            study.completion_reason = reason
            jobs = session.scalars(
                select(Job).where(Job.study_id == study.id).order_by(Job.id)
            ).all()
            current = None
            for job in jobs:
                if job.analysis_round == study.analysis_round and job.state is JobState.RECEIVED:
                    current = job
                elif job.state in ACTIVE_STATES:
                    transition(
                        session,
                        job,
                        JobState.SUPERSEDED,
                        actor=actor,
                        reason=f"round {study.analysis_round} replaces it",
                        study_instance_uid=study.study_instance_uid,
                    )
            if current is None:  # e.g. a study row written by an older version
                current = Job(
                    study_id=study.id,
                    state=JobState.RECEIVED,
                    analysis_round=study.analysis_round,
                )
                session.add(current)
                session.flush()
            why = (
                "quiet period elapsed"
                if reason == "quiet_period"
                else "maximum wait elapsed (instances still arriving)"
            )
            transition(
                session,
                current,
                JobState.COMPLETE,
                actor=actor,
                reason=why,
                study_instance_uid=study.study_instance_uid,
            )
            transition(
                session,
                current,
                JobState.QUEUED,
                actor=actor,
                study_instance_uid=study.study_instance_uid,
            )
            completed.append(
                CompletedStudy(study.study_instance_uid, study.analysis_round, reason, current.id)
            )
    return completed

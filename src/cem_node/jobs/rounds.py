"""Study rounds: the first image of a study opens round 1; an image arriving after the
study was completed opens the next round, which analyses the study again.

Ingest (:class:`cem_node.store.ingest.InstanceIngestor`) stores and indexes an
instance; in the same transaction it calls :func:`open_round` when the
instance starts a round, so that an acknowledged image always has a job.
The job is born ``received`` (:func:`cem_node.jobs.states.create_job`) and
moves on only through :func:`cem_node.jobs.states.transition`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from cem_node.jobs.states import create_job
from cem_node.store.audit import record_event
from cem_node.store.models import Job, Study, StudyState

__all__ = ["open_round"]


def open_round(session: Session, study: Study, *, now: datetime, actor: str) -> Job:
    """Start the next analysis round of ``study`` (flushed): round 1 of a new study, or the
    round after a completed one; return the round's job.

    Parameters
    ----------
    session
        The ingest's transaction (the study row is locked in it).
    study
        A study just added (no ``id`` yet) or one that is not receiving.
    now
        The time of receipt.
    actor
        Who acts, for the audit trail.

    Raises
    ------
    ValueError
        For a study that is already receiving (its round is open).
    """
    new = study.id is None
    if not new and study.state is StudyState.RECEIVING:
        raise ValueError(f"study {study.study_instance_uid} is receiving: its round is open")
    previous = None if new else study.state
    study.state = StudyState.RECEIVING
    study.analysis_round = 1 if new else study.analysis_round + 1
    study.receiving_since = now
    if new:
        study.first_received_at = now
        session.add(study)
        session.flush()  # IntegrityError here if another association created it
    else:
        study.state_reason = None
        study.completed_at = None
        study.completion_reason = None
    job = create_job(session, study)
    if previous is None:
        event, message = "study_received", "first instance of a new study: round 1"
    else:
        event = "study_reopened"
        message = (
            f"instance arrived after completion (study was {previous.value}): "
            f"round {study.analysis_round} will re-analyse it"
        )
    record_event(
        session,
        event,
        decision="accepted",
        actor=actor,
        study_instance_uid=study.study_instance_uid,
        job_id=job.id,
        message=message,
    )
    return job

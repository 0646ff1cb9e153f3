"""The job state machine, persisted in the ``jobs`` table.

::

    received -> complete -> queued -> analysing -> encoded -> exporting -> done
                                         |   ^                    |
                                         v   | (retry/backoff)    v
                                        failed <------------------+
    (received | complete | queued | analysing) -> superseded   (a newer round)
    failed -> queued | exporting                                (studies retry)

A job is created when the first instance of a study round arrives
(``received``), completed by the assembler, queued, claimed by a worker that
analyses and encodes, and finished by the exporter when every destination
confirmed every object. Every transition is checked here and audited.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from cem_node.store.audit import record_event
from cem_node.store.models import Job, JobState, Study, utcnow

__all__ = [
    "ACTIVE_STATES",
    "ALLOWED_TRANSITIONS",
    "IllegalTransitionError",
    "create_job",
    "transition",
]

S = JobState

#: From each state, the states a job may move to.
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.RECEIVED: frozenset({S.COMPLETE, S.SUPERSEDED}),
    S.COMPLETE: frozenset({S.QUEUED, S.SUPERSEDED}),
    S.QUEUED: frozenset({S.ANALYSING, S.FAILED, S.SUPERSEDED}),
    # analysing -> queued: a retry after a transient failure or a lost lease
    S.ANALYSING: frozenset({S.ENCODED, S.QUEUED, S.FAILED, S.SUPERSEDED, S.DONE}),
    S.ENCODED: frozenset({S.EXPORTING, S.DONE}),
    S.EXPORTING: frozenset({S.DONE, S.FAILED}),
    S.DONE: frozenset(),
    S.FAILED: frozenset({S.QUEUED, S.EXPORTING}),
    S.SUPERSEDED: frozenset(),
}

#: States of a job whose round has not produced results yet (a newer round supersedes it).
ACTIVE_STATES: frozenset[JobState] = frozenset({S.RECEIVED, S.COMPLETE, S.QUEUED, S.ANALYSING})


class IllegalTransitionError(RuntimeError):
    """A job was asked to move to a state it cannot reach from its current one."""

    def __init__(self, job: Job, target: JobState) -> None:
        allowed = ", ".join(sorted(s.value for s in ALLOWED_TRANSITIONS[job.state])) or "none"
        super().__init__(
            f"job {job.id} cannot go from {job.state.value} to {target.value} (allowed: {allowed})"
        )
        self.job_id = job.id
        self.source = job.state
        self.target = target


def create_job(session: Session, study: Study) -> Job:
    """The job of the study's current round, in the machine's first state (``received``).

    The round's opening is audited by its caller (:func:`cem_node.jobs.rounds.open_round`).
    """
    job = Job(study_id=study.id, state=JobState.RECEIVED, analysis_round=study.analysis_round)
    session.add(job)
    session.flush()
    return job


def transition(
    session: Session,
    job: Job,
    target: JobState,
    *,
    actor: str,
    reason: str | None = None,
    study_instance_uid: str | None = None,
) -> None:
    """Move ``job`` to ``target`` in ``session`` and audit the change.

    Raises
    ------
    IllegalTransitionError
        If the state machine has no such edge.
    """
    if target not in ALLOWED_TRANSITIONS[job.state]:
        raise IllegalTransitionError(job, target)
    source = job.state
    job.state = target
    now = utcnow()
    if target is S.ANALYSING:
        job.started_at = now
    if target in (S.DONE, S.FAILED, S.SUPERSEDED):
        job.finished_at = now
    if target in (S.QUEUED, S.DONE, S.FAILED, S.SUPERSEDED, S.ENCODED):
        job.claimed_by = None
        job.claimed_at = None
        job.lease_expires_at = None
    if target is S.FAILED and reason:
        job.last_error = reason
    record_event(
        session,
        "job_state",
        decision=target.value,
        actor=actor,
        job_id=job.id,
        study_instance_uid=study_instance_uid,
        message=f"job {job.id} (round {job.analysis_round}): {source.value} -> {target.value}"
        + (f": {reason}" if reason else ""),
        details={"from": source.value, "to": target.value},
    )

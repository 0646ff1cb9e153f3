"""Start-up and periodic recovery: hand back work whose worker died.

After ``kill -9`` a job may be left ``analysing`` and exports ``sending``.
Claims by this node's previous incarnation (same ``node_id``) are handed
back at start-up; claims by other processes when their lease expires (by
the database's clock; a live process renews its leases). Rows are locked
and changed only if still as read, so a worker's concurrent commit is never
undone; each hand-back ends the claim's generation (its writes are refused)
and counts as an attempt: after the last one the job or export fails, with
an alert.

This node's leftover temporary files of interrupted writes are deleted
(their sender got no success status); other nodes' files on a shared store
are theirs (``files.owner``, see :meth:`InstanceFileStore.temporary_files`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from cem_node.config import ExportSection
from cem_node.jobs.claims import advance_generation, db_now, for_claim
from cem_node.jobs.exporter import settle_jobs
from cem_node.jobs.states import transition
from cem_node.jobs.worker import MAX_ANALYSIS_ATTEMPTS
from cem_node.store.audit import ALERT, record_event
from cem_node.store.instance_files import InstanceFileStore
from cem_node.store.models import Export, ExportState, Job, JobState, Study, StudyState

__all__ = ["RecoveryReport", "recover"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :func:`recover` handed back."""

    jobs_requeued: int
    exports_requeued: int
    temporary_files_removed: int
    jobs_failed: int = 0
    """Jobs whose lost claim was their last attempt (failed, with an alert)."""
    exports_failed: int = 0
    """Exports whose lost claim was their last attempt (failed, with an alert)."""

    @property
    def handed_back(self) -> int:
        """Claims taken back, whatever became of their rows."""
        return self.jobs_requeued + self.exports_requeued + self.jobs_failed + self.exports_failed


def recover(
    sessions: sessionmaker[Session],
    *,
    node_id: str,
    files: InstanceFileStore | None = None,
    at_start: bool = False,
    now: dt.datetime | None = None,
    max_analysis_attempts: int = MAX_ANALYSIS_ATTEMPTS,
    max_export_attempts: int | None = None,
) -> RecoveryReport:
    """Re-queue jobs and exports whose claim is stale.

    Parameters
    ----------
    at_start
        Also take back everything claimed by ``node_id`` (a previous run of
        this node) and delete the temporary files ``files`` owns.
    now
        The time leases are compared with; default: the database's clock.
    max_analysis_attempts, max_export_attempts
        A lost claim at its job's (export's) last attempt fails it, with an
        alert; default: :data:`~cem_node.jobs.worker.MAX_ANALYSIS_ATTEMPTS` and
        ``export.max_attempts``'s default.
    """
    removed = 0
    if at_start and files is not None:
        for temp in files.temporary_files():
            temp.unlink(missing_ok=True)
            removed += 1
    with sessions.begin() as session:
        # the database's clock on PostgreSQL: the one every node's leases were granted by
        now = now or db_now(session)
        job_outcomes = Counter(
            _hand_back_job(session, job, actor=node_id, max_attempts=max_analysis_attempts)
            for job in _stale_jobs(session, now, node_id if at_start else None)
        )
        # a crash between completion and queueing (they share a transaction, but
        # rows written by other versions may not)
        completed = select(Job).where(Job.state == JobState.COMPLETE).order_by(Job.id)
        for job in session.scalars(for_claim(completed, session)):
            transition(session, job, JobState.QUEUED, actor=node_id, reason="recovered")
        exports = _stale_exports(session, now, node_id if at_start else None)
        export_limit = max_export_attempts or ExportSection().max_attempts
        export_outcomes = Counter(
            _hand_back_export(session, export, actor=node_id, max_attempts=export_limit)
            for export in exports
        )
        settle_jobs(
            session,
            {e.job_id for e in exports if e.state is ExportState.FAILED and e.job_id is not None},
            actor=node_id,
        )
        report = RecoveryReport(
            jobs_requeued=job_outcomes[JobState.QUEUED],
            exports_requeued=export_outcomes[ExportState.PENDING],
            temporary_files_removed=removed,
            jobs_failed=job_outcomes[JobState.FAILED],
            exports_failed=export_outcomes[ExportState.FAILED],
        )
        if report.handed_back or removed:
            record_event(
                session,
                "recovery",
                decision="requeued",
                actor=node_id,
                message=(
                    f"{report.jobs_requeued} job(s) and {report.exports_requeued} export(s) "
                    f"handed back, {report.jobs_failed} job(s) and {report.exports_failed} "
                    f"export(s) failed at their last attempt, {removed} temporary file(s) removed"
                ),
            )
    if report.handed_back or removed:
        _LOG.warning(
            "recovered %d job(s), %d export(s) (%d job(s), %d export(s) failed at their last "
            "attempt), removed %d temporary file(s)",
            report.jobs_requeued,
            report.exports_requeued,
            report.jobs_failed,
            report.exports_failed,
            removed,
        )
    return report


def _stale_jobs(session: Session, now: dt.datetime, mine: str | None) -> Sequence[Job]:
    """Jobs analysing under an expired (or no) lease, or claimed by ``mine`` (a previous
    run of this node), locked."""
    # SKIP LOCKED: a row a worker is writing is not stale; each is changed only if
    # still as read (advance_generation)
    claimed_by_me = (Job.claimed_by == mine) if mine else False
    query = select(Job).where(
        Job.state == JobState.ANALYSING,
        or_(claimed_by_me, Job.lease_expires_at.is_(None), Job.lease_expires_at <= now),
    )
    return session.scalars(for_claim(query.order_by(Job.id), session)).all()


def _stale_exports(session: Session, now: dt.datetime, mine: str | None) -> Sequence[Export]:
    """Exports sending under an expired (or no) lease, or claimed by ``mine``, locked."""
    claimed_by_me = (Export.claimed_by == mine) if mine else False
    query = select(Export).where(
        Export.state == ExportState.SENDING,
        or_(claimed_by_me, Export.lease_expires_at.is_(None), Export.lease_expires_at <= now),
    )
    return session.scalars(for_claim(query.order_by(Export.id), session)).all()


def _lost_claim(claimed_by: str | None, attempts: int, max_attempts: int) -> str:
    return (
        f"claim of {claimed_by} lost (process stopped or lease expired) at attempt "
        f"{attempts} of {max_attempts}"
    )


def _hand_back_job(session: Session, job: Job, *, actor: str, max_attempts: int) -> JobState | None:
    """Queue again a job whose claim was lost, or fail it after its last attempt.

    Returns the job's new state, or ``None`` if the job changed since it was
    read (it is someone else's to change).
    """
    lost = _lost_claim(job.claimed_by, job.attempts, max_attempts)
    if not advance_generation(session, job):  # the lost claim can no longer write
        return None
    study = session.get(Study, job.study_id)
    uid = study.study_instance_uid if study else None
    current = study is not None and study.analysis_round == job.analysis_round
    if job.attempts < max_attempts:
        transition(session, job, JobState.QUEUED, actor=actor, study_instance_uid=uid, reason=lost)
        job.next_attempt_at = None
        if current:
            assert study is not None
            study.state = StudyState.COMPLETE
        return JobState.QUEUED
    transition(session, job, JobState.FAILED, actor=actor, study_instance_uid=uid, reason=lost)
    if current:
        assert study is not None
        study.state = StudyState.FAILED
        study.state_reason = lost
    record_event(
        session,
        "job_failed",
        decision=ALERT,
        actor=actor,
        job_id=job.id,
        study_instance_uid=uid,
        message=f"analysis of round {job.analysis_round} failed: {lost} (does the analysis "
        "stop its process, e.g. out of memory?); `cem-node studies retry` once fixed",
    )
    return JobState.FAILED


def _hand_back_export(
    session: Session, export: Export, *, actor: str, max_attempts: int
) -> ExportState | None:
    """Make an export whose claim was lost pending again, or fail it after its last attempt.

    Returns the export's new state, or ``None`` if it changed since it was read.
    """
    lost = _lost_claim(export.claimed_by, export.attempts, max_attempts)
    if not advance_generation(session, export):
        return None
    export.claimed_by = None
    export.lease_expires_at = None
    export.next_attempt_at = None
    if export.attempts < max_attempts:
        export.state = ExportState.PENDING
        return ExportState.PENDING
    export.state = ExportState.FAILED
    export.last_error = lost
    record_event(
        session,
        "export",
        decision=ALERT,
        actor=actor,
        job_id=export.job_id,
        study_instance_uid=session.scalar(
            select(Study.study_instance_uid).where(Study.id == export.study_id)
        ),
        sop_instance_uid=export.sop_instance_uid,
        message=f"{export.object_type} to {export.destination} failed ({lost}); "
        "`cem-node studies retry` once fixed",
        details={"destination": export.destination, "status": None},
    )
    return ExportState.FAILED

"""Start-up and periodic recovery: hand back work whose worker died.

After ``kill -9`` a job may be left ``analysing`` and exports ``sending``.
Claims by this node's previous incarnation (same ``node_id``) are handed
back at start-up; claims by other processes when their lease expires.
This node's leftover temporary files of interrupted writes are deleted
(their sender got no success status); other nodes' files on a shared store
are theirs (``files.owner``, see :meth:`InstanceFileStore.temporary_files`).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from cem_node.jobs.states import transition
from cem_node.store.audit import record_event
from cem_node.store.instance_files import InstanceFileStore
from cem_node.store.models import Export, ExportState, Job, JobState, Study, StudyState, utcnow

__all__ = ["RecoveryReport", "recover"]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :func:`recover` handed back."""

    jobs_requeued: int
    exports_requeued: int
    temporary_files_removed: int


def recover(
    sessions: sessionmaker[Session],
    *,
    node_id: str,
    files: InstanceFileStore | None = None,
    at_start: bool = False,
    now: dt.datetime | None = None,
) -> RecoveryReport:
    """Re-queue jobs and exports whose claim is stale.

    Parameters
    ----------
    at_start
        Also take back everything claimed by ``node_id`` (a previous run of
        this node) and delete the temporary files ``files`` owns.
    """
    now = now or utcnow()
    removed = 0
    if at_start and files is not None:
        for temp in files.temporary_files():
            temp.unlink(missing_ok=True)
            removed += 1
    mine = (Job.claimed_by == node_id) if at_start else False
    with sessions.begin() as session:
        jobs = session.scalars(
            select(Job).where(
                Job.state == JobState.ANALYSING,
                or_(mine, Job.lease_expires_at.is_(None), Job.lease_expires_at <= now),
            )
        ).all()
        for job in jobs:
            study = session.get(Study, job.study_id)
            uid = study.study_instance_uid if study else None
            transition(
                session,
                job,
                JobState.QUEUED,
                actor=node_id,
                study_instance_uid=uid,
                reason=f"claim of {job.claimed_by} lost (process stopped or lease expired)",
            )
            job.next_attempt_at = None
            if study is not None and study.analysis_round == job.analysis_round:
                study.state = StudyState.COMPLETE
        # a crash between completion and queueing (they share a transaction, but
        # rows written by other versions may not)
        for job in session.scalars(select(Job).where(Job.state == JobState.COMPLETE)):
            transition(session, job, JobState.QUEUED, actor=node_id, reason="recovered")
        mine_exports = (Export.claimed_by == node_id) if at_start else False
        exports = session.scalars(
            select(Export).where(
                Export.state == ExportState.SENDING,
                or_(
                    mine_exports,
                    Export.lease_expires_at.is_(None),
                    Export.lease_expires_at <= now,
                ),
            )
        ).all()
        for export in exports:
            export.state = ExportState.PENDING
            export.claimed_by = None
            export.lease_expires_at = None
            export.next_attempt_at = None
        if jobs or exports or removed:
            record_event(
                session,
                "recovery",
                decision="requeued",
                actor=node_id,
                message=(
                    f"{len(jobs)} job(s) and {len(exports)} export(s) handed back, "
                    f"{removed} temporary file(s) removed"
                ),
            )
    if jobs or exports or removed:
        _LOG.warning(
            "recovered %d job(s), %d export(s), removed %d temporary file(s)",
            len(jobs),
            len(exports),
            removed,
        )
    return RecoveryReport(len(jobs), len(exports), removed)

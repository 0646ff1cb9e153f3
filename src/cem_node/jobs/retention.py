"""Retention: delete the files and rows of finished studies after N days.

Only studies whose results were delivered (``done``) or that were reported
not analysable, with nothing left in the outbox, are purged. Failed and
in-progress studies are kept for an administrator. Acknowledged data is
never deleted to make room: the disk watermark refuses new instances
instead. The audit trail (no foreign keys) outlives the purge.

Every node runs retention; on PostgreSQL a round runs under a cluster-wide
advisory lock, and a node that finds it taken skips its round, so that a
study is purged once (see docs/STORE.md).
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import exists, select, text
from sqlalchemy.orm import Session, sessionmaker

from cem_node.store.audit import record_event
from cem_node.store.identity import advisory_key
from cem_node.store.instance_files import InstanceFileStore
from cem_node.store.models import Export, ExportState, Instance, Study, StudyState, utcnow

__all__ = ["purge_expired_studies"]

_LOG = logging.getLogger(__name__)


def _purging_alone(session: Session) -> bool:
    """Take the cluster's retention lock for this transaction; ``False``: another
    node holds it. SQLite serves one node: nothing to take."""
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(
        session.scalar(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": advisory_key("retention")}
        )
    )


def purge_expired_studies(
    sessions: sessionmaker[Session],
    files: InstanceFileStore,
    *,
    retention_days: int,
    actor: str,
    now: dt.datetime | None = None,
) -> list[str]:
    """Delete finished studies last changed more than ``retention_days`` ago.

    Returns
    -------
    list of str
        The Study Instance UIDs purged. ``retention_days == 0`` keeps everything;
        none while another node runs retention (PostgreSQL).
    """
    if retention_days <= 0:
        return []
    now = now or utcnow()
    cutoff = now - dt.timedelta(days=retention_days)
    unsent = exists().where(
        Export.study_id == Study.id,
        Export.state.in_([ExportState.PENDING, ExportState.SENDING]),
    )
    purged: list[str] = []
    # rows first, files after the commit: a crash leaves orphan files
    # (harmless), never rows naming missing files
    doomed_files: list[str] = []
    with sessions.begin() as session:
        if not _purging_alone(session):
            _LOG.info("retention skipped: another node is running it")
            return []
        studies = session.scalars(
            select(Study).where(
                Study.state.in_([StudyState.DONE, StudyState.NOT_ANALYSABLE]),
                Study.updated_at <= cutoff,
                Study.last_received_at <= cutoff,
                ~unsent,
            )
        ).all()
        for study in studies:
            paths = list(
                session.scalars(select(Instance.file_path).where(Instance.study_id == study.id))
            ) + list(session.scalars(select(Export.file_path).where(Export.study_id == study.id)))
            record_event(
                session,
                "study_purged",
                decision="deleted",
                actor=actor,
                study_instance_uid=study.study_instance_uid,
                message=f"retention: finished more than {retention_days} day(s) ago; "
                f"{len(paths)} file(s) deleted",
            )
            session.delete(study)
            session.flush()
            purged.append(study.study_instance_uid)
            doomed_files.extend(paths)
    for path in set(doomed_files):
        files.remove(path)
    if purged:
        _LOG.info("retention purged %d stud(ies)", len(purged))
    return purged

"""What an administrator does to studies: look, retry, reprocess.

Plain functions over the database, used by ``cem-node studies ...``;
their results are JSON-ready dictionaries (``--json``) that the CLI also
renders as tables. Patient names are left out on purpose: the command
output ends up in tickets and chat; the Patient ID and accession number
identify a study for the PACS team.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cem_node.jobs.states import ACTIVE_STATES, transition
from cem_node.store.audit import record_event
from cem_node.store.models import (
    Analysis,
    AuditEvent,
    Export,
    ExportState,
    Instance,
    Job,
    JobState,
    PairingRecord,
    Study,
    StudyState,
)

__all__ = [
    "NothingToRetryError",
    "StudyNotFoundError",
    "list_studies",
    "reprocess_study",
    "retry_study",
    "show_study",
]


class StudyNotFoundError(LookupError):
    """No study has this Study Instance UID."""


class NothingToRetryError(RuntimeError):
    """The study has no failed job or export."""


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _study(session: Session, uid: str) -> Study:
    study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
    if study is None:
        raise StudyNotFoundError(f"no study with Study Instance UID {uid}")
    return study


def list_studies(
    sessions: sessionmaker[Session], *, state: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Return the most recently received studies, newest first."""
    with sessions.begin() as session:
        query = select(Study).order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit)
        if state:
            query = query.where(Study.state == StudyState(state))
        studies = session.scalars(query).all()
        counts = dict(
            session.execute(
                select(Instance.study_id, func.count())
                .where(Instance.study_id.in_([s.id for s in studies]))
                .group_by(Instance.study_id)
            ).all()
        )
        out = []
        for s in studies:
            count = counts.get(s.id, 0)
            out.append(
                {
                    "study_instance_uid": s.study_instance_uid,
                    "patient_id": s.patient_id,
                    "accession_number": s.accession_number,
                    "study_date": s.study_date,
                    "state": s.state.value,
                    "state_reason": s.state_reason,
                    "analysis_round": s.analysis_round,
                    "instances": count,
                    "last_received_at": _iso(s.last_received_at),
                }
            )
        return out


def list_ignored(sessions: sessionmaker[Session], *, limit: int = 50) -> list[dict[str, Any]]:
    """Return the objects most recently accepted and ignored, newest first.

    A peer that sends a non-mammography object (a report, a presentation state,
    a Secondary Capture) gets a success status when the node is set to
    ``accept_unknown_sop_classes = "ignore"``; the object is discarded and
    only its audit event remains, which this lists.
    """
    with sessions.begin() as session:
        events = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.event_type == "instance_ignored")
            .order_by(AuditEvent.id.desc())
            .limit(limit)
        ).all()
        return [
            {
                "received_at": _iso(e.occurred_at),
                "calling_ae_title": e.calling_ae_title,
                "remote_address": e.remote_address,
                "study_instance_uid": e.study_instance_uid,
                "sop_instance_uid": e.sop_instance_uid,
                "sop_class_uid": (e.details or {}).get("sop_class_uid"),
                "reason": e.message,
            }
            for e in events
        ]


def show_study(sessions: sessionmaker[Session], uid: str) -> dict[str, Any]:
    """Return everything known about one study: instances and their CEM roles
    with reasons, the pairing decisions of the latest round, jobs, analyses,
    exports and the audit trail.

    Raises
    ------
    StudyNotFoundError
    """
    with sessions.begin() as session:
        s = _study(session, uid)
        jobs = session.scalars(select(Job).where(Job.study_id == s.id).order_by(Job.id)).all()
        latest_with_pairs = next((j for j in reversed(jobs) if j.pairings), None)
        uid_of = {i.id: i.sop_instance_uid for i in s.instances}
        pairings: list[PairingRecord] = (
            list(latest_with_pairs.pairings) if latest_with_pairs else []
        )
        analyses = session.scalars(
            select(Analysis).where(Analysis.study_id == s.id).order_by(Analysis.id)
        ).all()
        exports = session.scalars(
            select(Export).where(Export.study_id == s.id).order_by(Export.id)
        ).all()
        audit = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.study_instance_uid == s.study_instance_uid)
            .order_by(AuditEvent.id)
        ).all()
        return {
            "study_instance_uid": s.study_instance_uid,
            "patient_id": s.patient_id,
            "accession_number": s.accession_number,
            "study_date": s.study_date,
            "study_description": s.study_description,
            "state": s.state.value,
            "state_reason": s.state_reason,
            "analysis_round": s.analysis_round,
            "first_received_at": _iso(s.first_received_at),
            "last_received_at": _iso(s.last_received_at),
            "completed_at": _iso(s.completed_at),
            "completion_reason": s.completion_reason,
            "instances": [
                _instance_row(i)
                for i in sorted(s.instances, key=lambda i: (i.series_number or 0, i.id))
            ],
            "pairings": [_pairing_row(p, uid_of) for p in pairings],
            "jobs": [_job_row(j) for j in jobs],
            "analyses": [_analysis_row(a) for a in analyses],
            "exports": [_export_row(e) for e in exports],
            "audit": [_audit_row(a) for a in audit],
        }


def _instance_row(i: Instance) -> dict[str, Any]:
    return {
        "sop_instance_uid": i.sop_instance_uid,
        "series_number": i.series_number,
        "instance_number": i.instance_number,
        "role": i.role.value if i.role else None,
        "role_reason": i.role_reason,
        "laterality": i.image_laterality,
        "view": i.view,
        "transfer_syntax_uid": i.transfer_syntax_uid,
        "size_bytes": i.size_bytes,
        "version": i.version,
        "calling_ae_title": i.calling_ae_title,
        "received_at": _iso(i.received_at),
    }


def _pairing_row(p: PairingRecord, uid_of: dict[int, str]) -> dict[str, Any]:
    return {
        "laterality": p.image_laterality,
        "view": p.view,
        "paired": p.paired,
        "low_energy": uid_of.get(p.low_energy_instance_id or -1),
        "recombined": uid_of.get(p.recombined_instance_id or -1),
        "reason": p.reason,
    }


def _job_row(j: Job) -> dict[str, Any]:
    return {
        "id": j.id,
        "round": j.analysis_round,
        "state": j.state.value,
        "attempts": j.attempts,
        "last_error": j.last_error,
        "started_at": _iso(j.started_at),
        "finished_at": _iso(j.finished_at),
    }


def _analysis_row(a: Analysis) -> dict[str, Any]:
    return {
        "id": a.id,
        "round": a.analysis_round,
        "model": a.model_name,
        "model_version": a.model_version,
        "model_sha256": a.model_sha256,
        "not_analysable_reason": a.not_analysable_reason,
        "superseded": a.superseded_by_id is not None,
        "finished_at": _iso(a.finished_at),
    }


def _export_row(e: Export) -> dict[str, Any]:
    return {
        "destination": e.destination,
        "object_type": e.object_type,
        "sop_instance_uid": e.sop_instance_uid,
        "state": e.state.value,
        "attempts": e.attempts,
        "last_status": e.last_status,
        "last_error": e.last_error,
        "sent_at": _iso(e.sent_at),
    }


def _audit_row(a: AuditEvent) -> dict[str, Any]:
    return {
        "at": _iso(a.occurred_at),
        "event": a.event_type,
        "decision": a.decision,
        "actor": a.actor,
        "message": a.message,
    }


def retry_study(sessions: sessionmaker[Session], uid: str, *, actor: str) -> str:
    """Retry what failed for a study: its failed exports, or its failed analysis.

    Returns
    -------
    str
        What was re-queued.

    Raises
    ------
    StudyNotFoundError, NothingToRetryError
    """
    with sessions.begin() as session:
        study = _study(session, uid)
        failed_exports = session.scalars(
            select(Export).where(Export.study_id == study.id, Export.state == ExportState.FAILED)
        ).all()
        failed_jobs = session.scalars(
            select(Job).where(Job.study_id == study.id, Job.state == JobState.FAILED)
        ).all()
        if not failed_exports and not failed_jobs:
            raise NothingToRetryError(
                f"study {uid} has nothing failed to retry (state {study.state.value}); "
                "use `cem-node studies reprocess` to analyse it again"
            )
        for export in failed_exports:
            export.state = ExportState.PENDING
            export.attempts = 0
            export.next_attempt_at = None
            export.last_error = None
        exporting = {e.job_id for e in failed_exports}
        for job in failed_jobs:
            if job.id in exporting:
                transition(
                    session,
                    job,
                    JobState.EXPORTING,
                    actor=actor,
                    reason="retry",
                    study_instance_uid=uid,
                )
            else:
                transition(
                    session,
                    job,
                    JobState.QUEUED,
                    actor=actor,
                    reason="retry",
                    study_instance_uid=uid,
                )
                job.attempts = 0
                job.next_attempt_at = None
        if study.state is StudyState.FAILED:
            study.state = StudyState.PROCESSING
            study.state_reason = None
        what = f"{len(failed_exports)} export(s) and {len(failed_jobs)} job(s) re-queued"
        record_event(
            session,
            "study_retry",
            decision="requeued",
            actor=actor,
            study_instance_uid=uid,
            message=what,
        )
        return what


def reprocess_study(sessions: sessionmaker[Session], uid: str, *, actor: str) -> int:
    """Analyse a study again as a new round (new results supersede the old ones).

    Returns
    -------
    int
        The new round's number.

    Raises
    ------
    StudyNotFoundError
    """
    with sessions.begin() as session:
        study = _study(session, uid)
        if study.state is StudyState.RECEIVING:
            raise NothingToRetryError(
                f"study {uid} is still receiving; it will be analysed when complete"
            )
        for job in session.scalars(select(Job).where(Job.study_id == study.id)):
            if job.state in ACTIVE_STATES:
                transition(
                    session,
                    job,
                    JobState.SUPERSEDED,
                    actor=actor,
                    reason="reprocess",
                    study_instance_uid=uid,
                )
        study.analysis_round += 1
        study.state = StudyState.COMPLETE
        study.state_reason = None
        job = Job(study_id=study.id, state=JobState.RECEIVED, analysis_round=study.analysis_round)
        session.add(job)
        session.flush()
        transition(
            session,
            job,
            JobState.COMPLETE,
            actor=actor,
            reason="reprocess requested",
            study_instance_uid=uid,
        )
        transition(session, job, JobState.QUEUED, actor=actor, study_instance_uid=uid)
        record_event(
            session,
            "study_reprocess",
            decision="requeued",
            actor=actor,
            study_instance_uid=uid,
            job_id=job.id,
            message=f"round {study.analysis_round} queued by an administrator",
        )
        return study.analysis_round

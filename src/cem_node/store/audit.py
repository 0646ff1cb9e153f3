"""The audit trail: who sent what, what was analysed with which model, what went where.

Rows are appended in the caller's transaction, so an audited decision and
its effect commit (or roll back) together. Patient names are never written
here: identifiers only (UIDs, AE titles, addresses).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from cem_node.store.models import AuditEvent

__all__ = ["ALERT", "audit_values", "record_event"]

#: ``decision`` of an event that needs an administrator's attention.
ALERT = "alert"

_LOG = logging.getLogger("cem_node.audit")
_MAX_AE = 16
_MAX_UID = 64


def _clip(value: str | None, length: int) -> str | None:
    # Peers send what they like; the columns have DICOM lengths.
    if value is None:
        return None
    value = value.strip()
    return value[:length] or None


def audit_values(
    event_type: str,
    *,
    decision: str | None = None,
    actor: str | None = None,
    message: str | None = None,
    calling_ae_title: str | None = None,
    called_ae_title: str | None = None,
    remote_address: str | None = None,
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    job_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The column values of an audit event, clipped to the column lengths.

    :func:`record_event` adds them to a session; the C-STORE path inserts them
    with ``insert(AuditEvent.__table__)``, where the ORM unit of work would
    cost more than the insert itself.

    Parameters
    ----------
    event_type
        What happened, e.g. ``association``, ``instance_stored``, ``export``.
    decision
        ``accepted``, ``rejected``, ``ignored``, ``alert`` ...
    actor
        The process or person that acted (node id, ``admin:<user>``).
    message
        One sentence for a human reader.
    calling_ae_title, called_ae_title, remote_address
        The peer and the association, where there is one.
    study_instance_uid, sop_instance_uid, job_id
        What the event is about.
    details
        Anything else, as JSON.
    """
    return {
        "event_type": event_type[:64],
        "decision": decision[:32] if decision else None,
        "actor": actor[:128] if actor else None,
        "message": message,
        "calling_ae_title": _clip(calling_ae_title, _MAX_AE),
        "called_ae_title": _clip(called_ae_title, _MAX_AE),
        "remote_address": _clip(remote_address, 64),
        "study_instance_uid": _clip(study_instance_uid, _MAX_UID),
        "sop_instance_uid": _clip(sop_instance_uid, _MAX_UID),
        "job_id": job_id,
        "details": details,
    }


def record_event(session: Session, event_type: str, **fields: Any) -> AuditEvent:
    """Append an audit event to ``session`` (committed with the caller's work).

    Alerts (``decision="alert"``) are also logged at ERROR level, so that a
    log shipper can notify someone.

    Parameters
    ----------
    session
        The open session whose transaction the event joins.
    event_type, **fields
        The event: the parameters of :func:`audit_values`.

    Returns
    -------
    AuditEvent
        The new (pending) row.
    """
    event = AuditEvent(**audit_values(event_type, **fields))
    session.add(event)
    if event.decision == ALERT:
        _LOG.error(
            "ALERT %s: %s",
            event_type,
            event.message or "",
            extra={"event_type": event_type, "study_instance_uid": event.study_instance_uid},
        )
    return event

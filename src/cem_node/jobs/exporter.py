"""The exporter: send queued result objects to their destinations from the outbox.

Each ``exports`` row is one object for one destination. Rows are claimed
(with a lease, renewed by a heartbeat while the batch is sent) in batches
per destination and sent over one association. A batch's outcome is written
only for the rows still held by its claim (their generation, see
:mod:`cem_node.jobs.claims`): a claim that was handed back meanwhile leaves
the newer claim's outcome alone.
Transient failures (peer down, out of resources) are retried with
exponential backoff up to ``export.max_attempts``; permanent ones (the peer
rejects our AE title, does not support the SOP class) fail at once with an
alert, until an administrator runs ``cem-node studies retry``. Resending an
object is harmless: the same SOP Instance UID replaces itself at the PACS.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from cem_node.config import Settings
from cem_node.dicom.net.scu import FailureKind, RemoteAE, SendResult, send_files
from cem_node.jobs.claims import LeaseRenewal, advance_generation, db_now, for_claim
from cem_node.jobs.states import transition
from cem_node.jobs.worker import backoff_seconds
from cem_node.peers import PeerEntry
from cem_node.store.audit import ALERT, record_event
from cem_node.store.instance_files import InstanceFileStore
from cem_node.store.models import Export, ExportState, Job, JobState, Study, StudyState

__all__ = ["EXPORT_LEASE_S", "Exporter", "SendFunction", "settle_jobs"]

_LOG = logging.getLogger(__name__)

#: Objects sent over one association.
BATCH_SIZE = 32
#: How long claimed exports stay ours without a renewal (renewed every third of it).
EXPORT_LEASE_S = 10 * 60

SendFunction = Callable[..., list[SendResult]]


class Exporter:
    """Send due exports, one destination batch per :meth:`run_once`.

    Parameters
    ----------
    settings
        Node settings ([node] AE title and timeouts, [export] retries).
    sessions, files
        The database and the store.
    destinations
        Returns the destination peers (config and database).
    node_id
        This process's identity in claims and the audit trail.
    ssl_context
        Returns the client TLS context for peers with ``tls = true``.
    send
        :func:`cem_node.dicom.net.scu.send_files` or a stand-in.
    lease_s
        How long a batch's claim lasts without renewal; renewed every third of
        it while the batch is sent.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        files: InstanceFileStore,
        *,
        destinations: Callable[[], Sequence[PeerEntry]],
        node_id: str,
        ssl_context: Callable[[], ssl.SSLContext] | None = None,
        send: SendFunction = send_files,
        lease_s: float = EXPORT_LEASE_S,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._files = files
        self._destinations = destinations
        self._node_id = node_id
        self._ssl_context = ssl_context
        self._send = send
        self._lease_s = lease_s

    def run_once(self, now: dt.datetime | None = None) -> int:
        """Send one batch to one destination; return how many objects were tried.

        ``now`` (default: the database's clock) decides what is due and when
        the batch's lease expires.
        """
        peers = {p.name: p for p in self._destinations()}
        with self._sessions.begin() as session:
            now = now or db_now(session)
            due = (
                Export.state == ExportState.PENDING,
                or_(Export.next_attempt_at.is_(None), Export.next_attempt_at <= now),
            )
            first = session.scalar(
                for_claim(select(Export).where(*due).order_by(Export.id).limit(1), session)
            )
            if first is None:
                return 0
            destination = first.destination
            rows = session.scalars(
                for_claim(
                    select(Export)
                    .where(*due, Export.destination == destination)
                    .order_by(Export.id)
                    .limit(BATCH_SIZE),
                    session,
                )
            ).all()
            rows = [r for r in rows if advance_generation(session, r)]
            batch = [(r.id, r.file_path, r.sop_instance_uid) for r in rows]
            held = {r.id: r.claim_generation for r in rows}
            for row in rows:
                row.state = ExportState.SENDING
                row.claimed_by = self._node_id
                row.claimed_at = now
                row.lease_expires_at = now + dt.timedelta(seconds=self._lease_s)
                row.attempts += 1
        if not batch:
            return 0
        lease = LeaseRenewal(
            self._sessions,
            Export,
            held,
            state=ExportState.SENDING,
            lease_s=self._lease_s,
            what=f"export batch to {destination}",
        )
        with lease:
            peer = peers.get(destination)
            if peer is None:
                results = {
                    export_id: (
                        None,
                        FailureKind.PERMANENT,
                        f"destination {destination!r} is no longer configured",
                    )
                    for export_id, _, _ in batch
                }
            else:
                started = time.perf_counter()
                results = self._send_batch(peer, batch)
                _LOG.info(
                    "export: %d object(s) to %s in %.2f s",
                    len(batch),
                    destination,
                    time.perf_counter() - started,
                )
            self._record(destination, results, held)
        return len(batch)

    def _send_batch(
        self, peer: PeerEntry, batch: list[tuple[int, str, str]]
    ) -> dict[int, tuple[int | None, FailureKind | None, str]]:
        node = self._settings.node
        paths = [self._files.absolute(path) for _, path, _ in batch]
        context = self._ssl_context() if peer.tls and self._ssl_context else None
        sent = self._send(
            paths,
            RemoteAE(peer.ae_title, peer.host, peer.port, peer.tls),
            calling_ae_title=node.ae_title,
            ssl_context=context,
            acse_timeout_s=node.acse_timeout_s,
            dimse_timeout_s=node.dimse_timeout_s,
            network_timeout_s=node.network_timeout_s,
        )
        by_path: dict[Path, SendResult] = {r.path: r for r in sent}
        results: dict[int, tuple[int | None, FailureKind | None, str]] = {}
        for (export_id, _, _), path in zip(batch, paths, strict=True):
            r = by_path.get(path)
            if r is None:
                results[export_id] = (None, FailureKind.TRANSIENT, "not sent (no result)")
            else:
                results[export_id] = (r.status, None if r.delivered else r.failure, r.message)
        return results

    def _record(
        self,
        destination: str,
        results: dict[int, tuple[int | None, FailureKind | None, str]],
        held: dict[int, int],
    ) -> None:
        """Write each export's outcome, if the batch's claim on it is still held.

        ``held`` gives the claim generation of each export of the batch.
        """
        jobs: set[int] = set()
        study_uids: dict[int, str | None] = {}
        with self._sessions.begin() as session:
            now = db_now(session)  # the clock due times are compared with
            for export_id, (status, failure, message) in results.items():
                row = session.get(Export, export_id, with_for_update=True)
                if (
                    row is None
                    or row.state is not ExportState.SENDING
                    or row.claim_generation != held[export_id]
                ):
                    _LOG.warning(
                        "export %d to %s: its claim was taken back while it was sent (lease "
                        "expired): this outcome is discarded",
                        export_id,
                        destination,
                    )
                    continue
                row.last_status = status
                row.claimed_by = None
                row.lease_expires_at = None
                if row.study_id not in study_uids:
                    study_uids[row.study_id] = session.scalar(
                        select(Study.study_instance_uid).where(Study.id == row.study_id)
                    )
                study_uid = study_uids[row.study_id]
                decision, text = self._apply_outcome(row, failure, message, now, destination)
                record_event(
                    session,
                    "export",
                    decision=decision,
                    actor=self._node_id,
                    job_id=row.job_id,
                    study_instance_uid=study_uid,
                    sop_instance_uid=row.sop_instance_uid,
                    message=text,
                    details={"destination": destination, "status": status},
                )
                if row.job_id is not None:
                    jobs.add(row.job_id)
            settle_jobs(session, jobs, actor=self._node_id)

    def _apply_outcome(
        self,
        row: Export,
        failure: FailureKind | None,
        message: str,
        now: dt.datetime,
        destination: str,
    ) -> tuple[str, str]:
        """Set ``row``'s state from one send's outcome: done, pending again after a
        backoff (a transient failure with attempts left), or failed; return the audit
        decision and text."""
        export = self._settings.export
        if failure is None:
            row.state = ExportState.DONE
            row.sent_at = now
            row.last_error = None
            return "sent", f"{row.object_type} sent to {destination}"
        if failure is FailureKind.TRANSIENT and row.attempts < export.max_attempts:
            delay = backoff_seconds(
                row.attempts, initial_s=export.initial_backoff_s, max_s=export.max_backoff_s
            )
            row.state = ExportState.PENDING
            row.next_attempt_at = now + dt.timedelta(seconds=delay)
            row.last_error = message
            return "retry", (
                f"{row.object_type} to {destination} failed (attempt {row.attempts} of "
                f"{export.max_attempts}): {message}; retry in {delay:g} s"
            )
        row.state = ExportState.FAILED
        row.last_error = message
        why = (
            "permanent rejection"
            if failure is FailureKind.PERMANENT
            else f"{row.attempts} attempts"
        )
        return ALERT, (
            f"{row.object_type} to {destination} failed ({why}): {message}; "
            "`cem-node studies retry` once fixed"
        )


def settle_jobs(session: Session, job_ids: set[int], *, actor: str) -> None:
    """Finish exporting jobs whose exports are all settled (done, or some failed)."""
    for job_id in sorted(job_ids):
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.state is not JobState.EXPORTING:
            continue
        counts = dict(
            session.execute(
                select(Export.state, func.count())
                .where(Export.job_id == job_id)
                .group_by(Export.state)
            ).all()
        )
        if counts.get(ExportState.PENDING) or counts.get(ExportState.SENDING):
            continue
        study = session.get(Study, job.study_id)
        assert study is not None
        current = study.analysis_round == job.analysis_round
        failed = counts.get(ExportState.FAILED, 0)
        if failed:
            reason = f"{failed} export(s) failed"
            transition(
                session,
                job,
                JobState.FAILED,
                actor=actor,
                reason=reason,
                study_instance_uid=study.study_instance_uid,
            )
            if current:
                study.state = StudyState.FAILED
                study.state_reason = reason
        else:
            transition(
                session,
                job,
                JobState.DONE,
                actor=actor,
                study_instance_uid=study.study_instance_uid,
                reason=f"{counts.get(ExportState.DONE, 0)} export(s) confirmed",
            )
            if current and study.state is not StudyState.NOT_ANALYSABLE:
                study.state = StudyState.DONE

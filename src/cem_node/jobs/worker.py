"""The worker: claim a queued job, select and pair its images, analyse, encode, queue exports.

One call of :meth:`Worker.run_once` handles one job. The job's claim has a
lease, renewed by a heartbeat while the job runs however long its analysis
takes; a worker killed mid-analysis leaves the job ``analysing`` with a
lease that expires (or, for the same node restarted, is handed back at
start-up by :func:`cem_node.jobs.recovery.recover`), after which it is
analysed again; each hand-back counts as an attempt. Every write of the
job's outcome checks that the claim is still this one (its generation, see
:mod:`cem_node.jobs.claims`): results of a round superseded while it ran,
or of a claim handed back and taken again, are discarded, never written
over the newer claim's.

Failures are sorted by whose they are. An image that cannot be used for a
reason of its own (a header that does not parse, an invalid identifier,
pixel data that cannot be decoded) is excluded from the round, its reason
recorded as its role (``studies show``), and the rest is analysed; with
nothing analysable left the study gets the "not analysed: reason" report.
Such errors are never retried. Anything else (the database, the store's
disk, the analysis itself) is transient and retried with backoff, up to
:data:`MAX_ANALYSIS_ATTEMPTS`.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from cem_node.config import Settings
from cem_node.contracts.analysis import (
    Analyser,
    AnalysisResult,
    AnalysisUnavailableError,
    InstanceUnusableError,
    ResultObject,
)
from cem_node.contracts.findings import Findings
from cem_node.dicom import selection
from cem_node.dicom.identifiers import header_problem
from cem_node.dicom.objects.results import replacing_earlier_reports
from cem_node.dicom.selection import (
    MAMMOGRAPHY_SOP_CLASSES,
    Classification,
    classify_image,
    plan_study,
    summarise_exclusions,
)
from cem_node.jobs.claims import LeaseRenewal, advance_generation, db_now, for_claim
from cem_node.jobs.predecessors import reports_sent_before
from cem_node.jobs.states import transition
from cem_node.peers import PeerEntry
from cem_node.pipeline.pixels import multi_frame_problem
from cem_node.store.audit import ALERT, record_event
from cem_node.store.instance_files import InstanceFileStore
from cem_node.store.models import (
    Analysis,
    Export,
    Finding,
    ImageRole,
    Instance,
    Job,
    JobKind,
    JobState,
    LesionLabel,
    PairingRecord,
    Study,
    StudyState,
    utcnow,
)

__all__ = ["Worker", "backoff_seconds"]

_LOG = logging.getLogger(__name__)

#: Attempts of a job's analysis before it fails (transient errors, and claims lost
#: with their process: see :func:`cem_node.jobs.recovery.recover`).
MAX_ANALYSIS_ATTEMPTS = 3
#: How long a claimed job stays ours without a renewal (renewed every third of it).
ANALYSIS_LEASE_S = 15 * 60


def backoff_seconds(attempts: int, *, initial_s: float, max_s: float) -> float:
    """Exponential backoff: ``initial_s`` after the first failure, doubling, capped."""
    return min(max_s, initial_s * 2 ** max(0, attempts - 1))


def mixed_patients(headers: Sequence[Dataset]) -> int:
    """The number of different Patient IDs the images name, when more than one (else 0).

    Images without a Patient ID are not counted: they contradict no one.
    """
    ids = {str(ds.get("PatientID") or "").strip() for ds in headers} - {""}
    return len(ids) if len(ids) > 1 else 0


@dataclass(frozen=True, slots=True)
class _Claimed:
    job_id: int
    study_id: int
    study_instance_uid: str
    analysis_round: int
    attempts: int
    generation: int
    """The job's claim generation this claim got (the fencing token of its writes)."""
    timings_s: dict[str, float] = field(default_factory=dict)
    """Seconds of each step so far (headers, analysis, result files, database)."""


@dataclass(slots=True)
class _Images:
    """A study round's mammography images as the worker read them (by SOP Instance UID)."""

    headers: dict[str, Dataset] = field(default_factory=dict)
    """Headers of the usable images."""
    classifications: list[Classification] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    """Images left out of the round, with the reason."""

    def usable(self) -> list[Classification]:
        """Classifications of the images not excluded."""
        return [c for c in self.classifications if c.sop_instance_uid not in self.excluded]

    def usable_headers(self) -> list[Dataset]:
        """Headers of the images not excluded."""
        return [ds for uid, ds in self.headers.items() if uid not in self.excluded]


class Worker:
    """Analyse complete studies, one job per :meth:`run_once`.

    Parameters
    ----------
    settings
        Node settings ([selection], [export], [node]).
    sessions
        Database sessions.
    files
        The store (received instances and result objects).
    analyser
        The analysis of a paired study.
    destinations
        Returns the destination peers at the time results are queued.
    node_id
        This process's identity in claims and the audit trail.
    not_analysable_report
        Builds the SR sent for a study round that cannot be analysed:
        ``(headers, reason, analysis round) -> Dataset``; ``None`` sends nothing.
    lease_s
        How long a claim lasts without renewal; renewed every third of it while
        the job runs.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        files: InstanceFileStore,
        analyser: Analyser,
        *,
        destinations: Callable[[], Sequence[PeerEntry]],
        node_id: str,
        not_analysable_report: Callable[[Sequence[Dataset], str, int], Dataset] | None = None,
        lease_s: float = ANALYSIS_LEASE_S,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._files = files
        self._analyser = analyser
        self._destinations = destinations
        self._node_id = node_id
        self._report = not_analysable_report
        self._lease_s = lease_s

    # ------------------------------------------------------------------ claim

    def claim(self, now: dt.datetime | None = None) -> _Claimed | None:
        """Claim the next due queued job, or return ``None``.

        The claim increments the job's generation and grants a lease of
        ``lease_s`` from ``now`` (default: the database's clock).
        """
        with self._sessions.begin() as session:
            now = now or db_now(session)
            job = session.scalar(
                for_claim(
                    select(Job)
                    .where(
                        Job.state == JobState.QUEUED,
                        Job.kind == JobKind.ANALYSE,
                        or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now),
                    )
                    .order_by(Job.priority.desc(), Job.id)
                    .limit(1),
                    session,
                )
            )
            if job is None or not advance_generation(session, job):
                return None
            study = session.get(Study, job.study_id)
            assert study is not None
            transition(
                session,
                job,
                JobState.ANALYSING,
                actor=self._node_id,
                study_instance_uid=study.study_instance_uid,
            )
            job.claimed_by = self._node_id
            job.claimed_at = now
            job.lease_expires_at = now + dt.timedelta(seconds=self._lease_s)
            job.attempts += 1
            if study.analysis_round == job.analysis_round:
                study.state = StudyState.PROCESSING
            return _Claimed(
                job.id,
                study.id,
                study.study_instance_uid,
                job.analysis_round,
                job.attempts,
                job.claim_generation,
            )

    def run_once(self) -> bool:
        """Claim and process one job; return whether there was one."""
        claimed = self.claim()
        if claimed is None:
            return False
        lease = LeaseRenewal(
            self._sessions,
            Job,
            {claimed.job_id: claimed.generation},
            state=JobState.ANALYSING,
            lease_s=self._lease_s,
            what=f"job {claimed.job_id}",
        )
        with lease:
            try:
                self._process(claimed)
            except _ClaimLostError as exc:
                log = _LOG.info if exc.superseded else _LOG.warning
                log("job %d: %s while it ran: nothing written", claimed.job_id, exc)
            except AnalysisUnavailableError as exc:
                self._fail(claimed, f"analysis unavailable: {exc}", retry=False)
            except InstanceUnusableError as exc:  # an image the round did not hand over
                self._fail(claimed, f"unusable image: {exc}", retry=False)
            except Exception as exc:
                _LOG.exception("job %d failed", claimed.job_id)
                self._fail(claimed, f"{type(exc).__name__}: {exc}", retry=True)
        return True

    def _held(self, session: Session, claimed: _Claimed) -> Job:
        """Lock the claimed job's row and return it, if the claim is still this one.

        Raises
        ------
        _ClaimLostError
            If the job was superseded, handed back or claimed again since.
        """
        job = session.get(Job, claimed.job_id, with_for_update=True)
        if (
            job is None
            or job.state is not JobState.ANALYSING
            or job.claim_generation != claimed.generation
        ):
            raise _ClaimLostError(claimed, job)
        return job

    # ------------------------------------------------------------------ the work

    def _process(self, claimed: _Claimed) -> None:
        started = time.perf_counter()
        images = self._classify(claimed)
        claimed.timings_s["headers"] = time.perf_counter() - started
        patients = mixed_patients(images.usable_headers())
        if patients:
            # findings and reports belong to one patient: never analyse, never send
            # anything for a study that names several (a modality's or PACS's error)
            reason = (
                f"the images name {patients} different patients (Patient ID): a study "
                "mixing patients is not analysed and no report is sent; check how the "
                "modality or the PACS built it"
            )
            with self._sessions.begin() as session:
                record_event(
                    session,
                    "study_mixes_patients",
                    decision=ALERT,
                    actor=self._node_id,
                    job_id=claimed.job_id,
                    study_instance_uid=claimed.study_instance_uid,
                    message=reason,
                )
            self._record_pairings(claimed, [], images.ids)
            self._finish(claimed, [], result=None, not_analysable=reason, images=images)
            return
        # each pass leaves out one more image the analysis could not use: it ends
        while True:
            plan = plan_study(
                images.usable(),
                self._settings.selection,
                study_instance_uid=claimed.study_instance_uid,
                analysis_round=claimed.analysis_round,
                path_of=images.paths,
                headers=images.usable_headers(),
                excluded=images.excluded,
            )
            self._record_pairings(claimed, plan.pairings, images.ids)
            if plan.request is None:
                reason = plan.reason
                objects: list[ResultObject] = []
                headers = images.usable_headers()  # the report copies patient and study
                wanted = self._settings.selection.not_analysable_report
                if self._report is not None and wanted and headers:
                    report = self._report(headers, reason, claimed.analysis_round)
                    objects.append(ResultObject("sr", report))
                self._finish(claimed, objects, result=None, not_analysable=reason, images=images)
                return
            try:
                started = time.perf_counter()
                result = self._analyser.analyse(plan.request)
                claimed.timings_s["analysis"] = time.perf_counter() - started
            except InstanceUnusableError as exc:
                paired = {
                    uid
                    for pair in plan.request.pairs
                    for uid in (pair.low_energy_sop_instance_uid, pair.recombined_sop_instance_uid)
                }
                if exc.sop_instance_uid not in paired:
                    raise  # not one we handed over: the job fails (run_once)
                _LOG.warning(
                    "job %d: instance %s excluded: %s",
                    claimed.job_id,
                    exc.sop_instance_uid,
                    exc.reason,
                )
                images.excluded[exc.sop_instance_uid] = exc.reason
                self._record_exclusions(claimed, {exc.sop_instance_uid: exc.reason})
                continue
            self._finish(
                claimed, list(result.objects), result=result, not_analysable=None, images=images
            )
            _log_timings(claimed, result)
            return

    def _read_header(self, uid: str, path: Path) -> tuple[Dataset | None, str | None]:
        """Read one stored image's header; return it, or why it cannot be used.

        An ``OSError`` (the store's disk or mount) is raised: the job is retried.
        Anything wrong with the file itself is permanent: the image is excluded.
        """
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, MemoryError):
            raise
        except Exception as exc:  # pydicom raises many types for a corrupt file
            return None, f"cannot read the header: {type(exc).__name__}: {exc}"
        problem = header_problem(ds)
        if problem is None and str(ds.SOPInstanceUID) != uid:
            problem = f"the file holds SOP instance {ds.SOPInstanceUID}, not {uid}"
        return (None, problem) if problem else (ds, None)

    def _classify(self, claimed: _Claimed) -> _Images:
        """Read and classify the study's images; record their roles (and the reasons of
        those excluded)."""
        with self._sessions.begin() as session:
            rows = session.execute(
                select(Instance.id, Instance.sop_instance_uid, Instance.file_path).where(
                    Instance.study_id == claimed.study_id,
                    Instance.sop_class_uid.in_(list(MAMMOGRAPHY_SOP_CLASSES)),
                )
            ).all()
        images = _Images()
        for id_, uid, path in rows:
            images.ids[uid] = id_
            images.paths[uid] = self._files.absolute(path)
            ds, problem = self._read_header(uid, images.paths[uid])
            if ds is not None:
                try:
                    images.classifications.append(classify_image(ds, self._settings.selection))
                    images.headers[uid] = ds
                except Exception as exc:  # a value the rules did not expect, in this file
                    problem = f"cannot classify: {type(exc).__name__}: {exc}"
                # several frames: the image's own lasting property, left out before
                # pairing (not a decoding failure found in the analysis)
                problem = problem or multi_frame_problem(ds)
            if problem:
                _LOG.warning("job %d: instance %s excluded: %s", claimed.job_id, uid, problem)
                images.excluded[uid] = problem
        now = utcnow()
        with self._sessions.begin() as session:
            self._held(session, claimed)
            by_uid = {c.sop_instance_uid: c for c in images.classifications}
            rows_of_study = select(Instance).where(Instance.study_id == claimed.study_id)
            for row in session.scalars(rows_of_study):
                c = by_uid.get(row.sop_instance_uid)
                if c is None:
                    continue
                row.role = ImageRole(c.role)
                row.role_reason = c.reason
                row.image_laterality = c.laterality
                row.view = c.view
                row.classified_at = now
        self._record_exclusions(claimed, images.excluded)
        return images

    def _record_exclusions(self, claimed: _Claimed, excluded: Mapping[str, str]) -> None:
        """Mark images left out of the round, with why, and audit each."""
        if not excluded:
            return
        now = utcnow()
        with self._sessions.begin() as session:
            self._held(session, claimed)
            rows = select(Instance).where(
                Instance.study_id == claimed.study_id,
                Instance.sop_instance_uid.in_(list(excluded)),
            )
            for row in session.scalars(rows):
                row.role = ImageRole.EXCLUDED
                row.role_reason = excluded[row.sop_instance_uid]
                row.classified_at = now
                record_event(
                    session,
                    "instance_excluded",
                    decision="excluded",
                    actor=self._node_id,
                    job_id=claimed.job_id,
                    study_instance_uid=claimed.study_instance_uid,
                    sop_instance_uid=row.sop_instance_uid,
                    message=f"left out of round {claimed.analysis_round}: "
                    f"{excluded[row.sop_instance_uid]}",
                )

    def _record_pairings(
        self, claimed: _Claimed, pairings: Sequence[selection.Pairing], ids: Mapping[str, int]
    ) -> None:
        """Record the pairing decisions of this attempt (replacing an earlier attempt's)."""
        with self._sessions.begin() as session:
            self._held(session, claimed)
            session.execute(delete(PairingRecord).where(PairingRecord.job_id == claimed.job_id))
            for p in pairings:
                session.add(
                    PairingRecord(
                        job_id=claimed.job_id,
                        image_laterality=p.laterality,
                        view=p.view,
                        low_energy_instance_id=ids.get(p.low_energy or ""),
                        recombined_instance_id=ids.get(p.recombined or ""),
                        paired=p.complete,
                        reason=p.reason,
                    )
                )

    def _finish(
        self,
        claimed: _Claimed,
        objects: list[ResultObject],
        *,
        result: AnalysisResult | None,
        not_analysable: str | None,
        images: _Images,
    ) -> None:
        """Record the round's analysis, queue its exports and move the job on, in one
        transaction (the written files are removed when the claim was lost)."""
        # a later round's SR names the reports already sent that it replaces
        sent = reports_sent_before(
            self._sessions, self._files, claimed.study_id, claimed.analysis_round
        )
        objects = replacing_earlier_reports(objects, sent)
        started = time.perf_counter()
        written = [self._write(claimed, obj) for obj in objects]
        claimed.timings_s["result_files"] = time.perf_counter() - started
        destinations = list(self._destinations())
        started = time.perf_counter()
        try:
            with self._sessions.begin() as session:
                job = self._held(session, claimed)
                study = session.get(Study, claimed.study_id)
                assert study is not None
                analysis = _record_analysis(session, job, study, result, not_analysable)
                exports = self._queue_exports(
                    session, job, analysis, list(zip(objects, written, strict=True)), destinations
                )
                self._advance(session, job, study, len(objects), exports, not_analysable)
                record_event(
                    session,
                    "analysis",
                    decision="not_analysable" if not_analysable else "analysed",
                    actor=self._node_id,
                    job_id=job.id,
                    study_instance_uid=study.study_instance_uid,
                    message=_analysis_message(result, not_analysable, images.excluded),
                    details={
                        "objects": [o.object_type for o in objects],
                        "destinations": [p.name for p in destinations],
                        "model_sha256": result.model_sha256 if result else None,
                        "excluded": dict(images.excluded),
                    },
                )
        except _ClaimLostError:
            for relative, _, _ in written:  # results of another claim's round: discarded
                self._files.remove(relative)
            raise
        claimed.timings_s["database"] = time.perf_counter() - started

    def _queue_exports(
        self,
        session: Session,
        job: Job,
        analysis: Analysis,
        written: list[tuple[ResultObject, tuple[str, str, str]]],
        destinations: list[PeerEntry],
    ) -> int:
        """One export row per written object and destination that wants its type."""
        exports = 0
        for obj, (relative, sop_class, sop_uid) in written:
            for peer in destinations:
                wanted = peer.objects or tuple(self._settings.export.objects)
                if obj.object_type not in wanted:
                    continue
                session.add(
                    Export(
                        study_id=job.study_id,
                        analysis_id=analysis.id,
                        job_id=job.id,
                        destination=peer.name,
                        object_type=obj.object_type,
                        sop_class_uid=sop_class,
                        sop_instance_uid=sop_uid,
                        file_path=relative,
                    )
                )
                exports += 1
        return exports

    def _advance(
        self,
        session: Session,
        job: Job,
        study: Study,
        objects: int,
        exports: int,
        not_analysable: str | None,
    ) -> None:
        """encoded, then exporting (or done: nothing to send); the study's state when
        this is its current round."""
        current = study.analysis_round == job.analysis_round
        uid = study.study_instance_uid
        reason = f"{objects} object(s), {exports} export(s)"
        transition(
            session,
            job,
            JobState.ENCODED,
            actor=self._node_id,
            study_instance_uid=uid,
            reason=reason,
        )
        if exports:
            transition(
                session, job, JobState.EXPORTING, actor=self._node_id, study_instance_uid=uid
            )
        else:
            transition(
                session,
                job,
                JobState.DONE,
                actor=self._node_id,
                study_instance_uid=uid,
                reason="nothing to export" if objects else "no result objects",
            )
        if current:
            if not_analysable is not None:
                study.state = StudyState.NOT_ANALYSABLE
                study.state_reason = not_analysable  # the state says "not analysable"
            elif not exports:
                study.state = StudyState.DONE

    def _write(self, claimed: _Claimed, obj: ResultObject) -> tuple[str, str, str]:
        ds = obj.dataset
        sop_uid = str(ds.SOPInstanceUID)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        relative = self._files.result_path(claimed.study_instance_uid, sop_uid)
        self._files.write_bytes(relative, buffer.getvalue())
        return relative, str(ds.SOPClassUID), sop_uid

    def _fail(self, claimed: _Claimed, message: str, *, retry: bool) -> None:
        analysis = self._settings.analysis
        with self._sessions.begin() as session:
            try:
                job = self._held(session, claimed)
            except _ClaimLostError as exc:  # the newer claim's outcome, not ours
                _LOG.warning(
                    "job %d: %s while it ran: its failure not recorded", claimed.job_id, exc
                )
                return
            study = session.get(Study, claimed.study_id)
            assert study is not None
            if retry and job.attempts < MAX_ANALYSIS_ATTEMPTS:
                delay = backoff_seconds(
                    job.attempts,
                    initial_s=analysis.retry_initial_backoff_s,
                    max_s=analysis.retry_max_backoff_s,
                )
                job.last_error = message
                transition(
                    session,
                    job,
                    JobState.QUEUED,
                    actor=self._node_id,
                    study_instance_uid=study.study_instance_uid,
                    reason=f"attempt {job.attempts} failed ({message}); retry in {delay:g} s",
                )
                job.next_attempt_at = db_now(session) + dt.timedelta(seconds=delay)
                return
            transition(
                session,
                job,
                JobState.FAILED,
                actor=self._node_id,
                study_instance_uid=study.study_instance_uid,
                reason=message,
            )
            if study.analysis_round == job.analysis_round:
                study.state = StudyState.FAILED
                study.state_reason = message
            record_event(
                session,
                "job_failed",
                decision=ALERT,
                actor=self._node_id,
                job_id=job.id,
                study_instance_uid=study.study_instance_uid,
                message=f"analysis of round {job.analysis_round} failed: {message}; "
                "`cem-node studies retry` once fixed",
            )


class _ClaimLostError(Exception):
    """The claimed job is no longer this claim's: nothing more of it is written."""

    def __init__(self, claimed: _Claimed, job: Job | None) -> None:
        if job is None:
            why = "deleted"
        elif job.state is JobState.SUPERSEDED:
            why = "superseded by a newer round"
        elif job.claim_generation != claimed.generation:
            why = (
                f"handed back or claimed again (claim generation {job.claim_generation}, "
                f"this claim's {claimed.generation})"
            )
        else:
            why = f"moved to {job.state.value}"
        super().__init__(why)
        self.superseded = job is not None and job.state is JobState.SUPERSEDED


def _log_timings(claimed: _Claimed, result: AnalysisResult) -> None:
    """One INFO line: where the study's time went (the worker's steps, the analysis' stages)."""
    steps = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in claimed.timings_s.items())
    stages = result.details.get("timings_s") or {}
    inside = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items())
    _LOG.info(
        "job %d: %s; in the analysis: %s",
        claimed.job_id,
        steps,
        inside or "no stage timings",
        extra={"study_instance_uid": claimed.study_instance_uid},
    )


def _record_analysis(
    session: Session,
    job: Job,
    study: Study,
    result: AnalysisResult | None,
    not_analysable: str | None,
) -> Analysis:
    """The round's analysis row (with its findings), superseding the study's earlier ones."""
    analysis = Analysis(
        study_id=study.id,
        job_id=job.id,
        analysis_round=job.analysis_round,
        not_analysable_reason=not_analysable,
        started_at=job.started_at,
        finished_at=utcnow(),
    )
    if result is not None:
        analysis.model_name = result.model_name[:128]
        analysis.model_version = result.model_version[:64]
        analysis.model_sha256 = result.model_sha256[:64]
        analysis.device = (result.device or "")[:64] or None
        analysis.document = result.document
        analysis.patient_score = result.patient_score
    session.add(analysis)
    session.flush()
    if result is not None and result.findings is not None:
        _add_finding_rows(session, analysis, result.findings)
    for older in session.scalars(
        select(Analysis).where(
            Analysis.study_id == study.id,
            Analysis.id != analysis.id,
            Analysis.superseded_by_id.is_(None),
        )
    ):
        older.superseded_by_id = analysis.id
        older.superseded_at = utcnow()
    return analysis


def _analysis_message(
    result: AnalysisResult | None, not_analysable: str | None, excluded: Mapping[str, str]
) -> str | None:
    """The audit line of a finished analysis: the model, or why there was none."""
    if not_analysable:
        return f"not analysable: {not_analysable}"
    if result is None:
        return None
    return (
        f"analysed with {result.model_name} {result.model_version} "
        f"(sha256 {result.model_sha256[:12]})"
        + (f"; {summarise_exclusions(excluded)}" if excluded else "")
    )


def _add_finding_rows(session: Session, analysis: Analysis, findings: Findings) -> None:
    """Record the findings' schema version, patient label and one row per lesion."""
    analysis.document_schema_version = findings.schema_version
    analysis.patient_label = LesionLabel(findings.patient.label)
    for index, lesion in enumerate(findings.lesions):
        x0, y0, x1, y1 = lesion.box
        session.add(
            Finding(
                analysis_id=analysis.id,
                study_id=analysis.study_id,
                lesion_index=index,
                image_laterality=lesion.laterality,
                view=lesion.view,
                recombined_sop_instance_uid=lesion.recombined_sop_instance_uid,
                low_energy_sop_instance_uid=lesion.low_energy_sop_instance_uid,
                bbox_x0=x0,
                bbox_y0=y0,
                bbox_x1=x1,
                bbox_y1=y1,
                area_mm2=lesion.area_mm2,
                max_diameter_mm=lesion.max_diameter_mm,
                probability_dl=lesion.dl_probability,
                probability_radiomics=lesion.radiomics_probability,
                probability_fused=lesion.fused_probability,
                label_dl=LesionLabel(lesion.dl_label),
                label_radiomics=None
                if lesion.radiomics_label is None
                else LesionLabel(lesion.radiomics_label),
                label_fused=LesionLabel(lesion.fused_label),
                agreement=lesion.agreement,
                radiomics_failed_reason=lesion.radiomics_error,
            )
        )

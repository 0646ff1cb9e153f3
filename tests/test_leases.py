"""Leases, fencing and lost updates (#20), on SQLite and PostgreSQL.

A claim's lease is renewed by a heartbeat while its work runs; each claim
has a generation (a fencing token) that every write of its outcome checks;
recovery and the assembler's superseding lock the rows they change and
change them only if they are still as read. Hand-backs count as attempts.
The analysis and the send are test doubles with a set duration; the
database, the store and the claims are the real ones.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from cem_node.dicom.net.scu import SendResult
from cem_node.jobs.assembler import complete_due_studies
from cem_node.jobs.exporter import Exporter
from cem_node.jobs.recovery import recover
from cem_node.jobs.worker import Worker
from cem_node.store import (
    Analysis,
    AuditEvent,
    Export,
    ExportState,
    JobState,
    StudyState,
    session_factory,
    utcnow,
)
from cem_node.store.audit import ALERT
from cem_node.synthetic.study import SynthOptions, generate_study
from tests.analysis_double import DoubleAnalyser
from tests.test_jobs import PACS, Store

#: Leases of a few seconds' work in these tests (production: minutes). Not
#: shorter: a renewal is a SQLite commit with fsync, and on a loaded CI disk
#: a 2 s lease once ran out between three renewals.
SHORT_LEASE_S = 4.0
#: Longer than the short lease twice over.
LONG_WORK_S = 9.0
#: How often the tests' rivals try to take the claimed rows.
RIVAL_POLL_S = 0.25


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    study = generate_study(tmp_path_factory.mktemp("leases"), 7, 0, SynthOptions(size="small"))
    return sorted((study / "dicom").glob("*.dcm"))


@pytest.fixture
def store(tmp_path: Path, db_url: str) -> Iterator[Store]:
    made = Store(tmp_path, db_url)
    yield made
    made.engine.dispose()


def _queued(store: Store, study_files: list[Path]) -> str:
    uid = store.receive(study_files)
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    return uid


def _worker(
    store: Store,
    analyser: object,
    *,
    node_id: str = "w1",
    lease_s: float | None = None,
    destinations: list | None = None,
    sessions=None,
) -> Worker:
    extra = {} if lease_s is None else {"lease_s": lease_s}
    return Worker(
        store.settings,
        sessions or store.sessions,
        store.files,
        analyser,  # type: ignore[arg-type]
        destinations=lambda: destinations or [],
        node_id=node_id,
        **extra,
    )


class GatedAnalyser(DoubleAnalyser):
    """The test double, holding each analysis until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()
        self.gate = threading.Event()

    def analyse(self, request):  # type: ignore[no-untyped-def]
        self.started.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().analyse(request)


def _in_thread(target: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as exc:  # reported by the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _analyses(store: Store) -> list[Analysis]:
    with store.sessions.begin() as session:
        return list(session.scalars(select(Analysis)))


def _alerts(store: Store, event_type: str) -> list[AuditEvent]:
    with store.sessions.begin() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(
                    AuditEvent.event_type == event_type, AuditEvent.decision == ALERT
                )
            )
        )


# --- observation 1: leases are renewed while work runs ------------------------------------


def test_a_long_analysis_keeps_its_lease_and_completes_once(
    store: Store, study_files: list[Path]
) -> None:
    """An analysis lasting two leases and more is not handed back nor taken by another worker."""
    _queued(store, study_files)
    slow = DoubleAnalyser(pause_s=LONG_WORK_S)
    other = DoubleAnalyser()
    worker = _worker(store, slow, lease_s=SHORT_LEASE_S)
    rival = _worker(store, other, node_id="w2", lease_s=SHORT_LEASE_S)
    thread, out = _in_thread(worker.run_once)
    leases: set[dt.datetime] = set()
    handed_back = 0
    while thread.is_alive():
        handed_back += recover(store.sessions, node_id="other").jobs_requeued
        assert not rival.run_once()  # nothing to take: the job stays claimed
        (job,) = store.jobs()
        if job.lease_expires_at is not None:
            leases.add(job.lease_expires_at)
        time.sleep(RIVAL_POLL_S)
    thread.join()
    assert out == [True]
    assert handed_back == 0
    (job,) = store.jobs()
    assert job.state is JobState.DONE and job.attempts == 1
    assert len(slow.calls) == 1 and other.calls == []
    assert len(_analyses(store)) == 1
    assert len(leases) >= 3  # renewed while the analysis ran


def test_an_export_batch_outliving_its_lease_is_sent_once(
    store: Store, study_files: list[Path]
) -> None:
    _queued(store, study_files)
    assert _worker(store, DoubleAnalyser(), destinations=[PACS]).run_once()
    sent: Counter[str] = Counter()

    def send(pause_s: float) -> Callable[..., list[SendResult]]:
        def stand_in(paths: list[Path], remote: object, **_: object) -> list[SendResult]:
            for p in paths:
                sent[p.name] += 1
            time.sleep(pause_s)
            return [SendResult(p, None, 0, True, None, "stand-in") for p in paths]

        return stand_in

    def exporter(node_id: str, pause_s: float) -> Exporter:
        return Exporter(
            store.settings,
            store.sessions,
            store.files,
            destinations=lambda: [PACS],
            node_id=node_id,
            send=send(pause_s),
            lease_s=SHORT_LEASE_S,
        )

    slow, rival = exporter("e1", LONG_WORK_S), exporter("e2", 0)
    thread, out = _in_thread(slow.run_once)
    handed_back = 0
    while thread.is_alive():
        handed_back += recover(store.sessions, node_id="other").exports_requeued
        rival.run_once()
        time.sleep(RIVAL_POLL_S)
    thread.join()
    assert out == [1] and handed_back == 0
    assert list(sent.values()) == [1]  # sent once, not again by the rival
    with store.sessions.begin() as session:
        (export,) = session.scalars(select(Export)).all()
    assert export.state is ExportState.DONE and export.attempts == 1
    assert [j.state for j in store.jobs()] == [JobState.DONE]


# --- fencing: a claim overtaken writes nothing --------------------------------------------


def test_a_stale_worker_cannot_write_its_results(store: Store, study_files: list[Path]) -> None:
    """The same node restarted (or two processes with one identity): the old claim's
    results are discarded, the new claim's are kept."""
    _queued(store, study_files)
    old, new = GatedAnalyser(), GatedAnalyser()
    first, out_first = _in_thread(_worker(store, old, node_id="n1").run_once)
    assert old.started.wait(30)
    assert recover(store.sessions, node_id="n1", at_start=True).jobs_requeued == 1
    second, out_second = _in_thread(_worker(store, new, node_id="n1").run_once)
    assert new.started.wait(30)
    old.gate.set()  # the stale claim finishes first ...
    first.join(30)
    assert out_first == [True]
    assert _analyses(store) == []  # ... and writes nothing
    (job,) = store.jobs()
    assert job.state is JobState.ANALYSING and job.claimed_by == "n1"
    new.gate.set()
    second.join(30)
    assert out_second == [True]
    (analysis,) = _analyses(store)
    (job,) = store.jobs()
    assert job.state is JobState.DONE and analysis.job_id == job.id


def test_a_stale_exporter_cannot_overwrite_the_outcome_of_a_newer_claim(
    store: Store, study_files: list[Path]
) -> None:
    """A stale batch's failure does not put back an export that a newer claim is sending."""
    from cem_node.dicom.net.scu import FailureKind

    _queued(store, study_files)
    assert _worker(store, DoubleAnalyser(), destinations=[PACS]).run_once()
    gates = {"old": threading.Event(), "new": threading.Event()}
    started = {"old": threading.Event(), "new": threading.Event()}

    def exporter(which: str, delivered: bool) -> Exporter:
        def send(paths: list[Path], remote: object, **_: object) -> list[SendResult]:
            started[which].set()
            assert gates[which].wait(30)
            failure = None if delivered else FailureKind.TRANSIENT
            return [
                SendResult(p, None, 0 if delivered else 0xA700, delivered, failure, "stand-in")
                for p in paths
            ]

        return Exporter(
            store.settings,
            store.sessions,
            store.files,
            destinations=lambda: [PACS],
            node_id="e1",
            send=send,
        )

    first, _ = _in_thread(exporter("old", delivered=False).run_once)
    assert started["old"].wait(30)
    assert recover(store.sessions, node_id="e1", at_start=True).exports_requeued == 1
    second, _ = _in_thread(exporter("new", delivered=True).run_once)
    assert started["new"].wait(30)
    gates["old"].set()
    first.join(30)
    with store.sessions.begin() as session:
        (export,) = session.scalars(select(Export)).all()
    assert export.state is ExportState.SENDING  # the newer claim's, untouched
    gates["new"].set()
    second.join(30)
    with store.sessions.begin() as session:
        (export,) = session.scalars(select(Export)).all()
    assert export.state is ExportState.DONE
    assert [j.state for j in store.jobs()] == [JobState.DONE]


# --- observation 2: no lost updates -------------------------------------------------------


def _pausing_in_finish(store: Store, wait_for: threading.Event, committing: threading.Event):
    """Sessions for a worker whose results' transaction, once it holds the job's row
    (and wrote the analysis), waits for ``wait_for`` (at most 1.5 s) before committing."""
    sessions = session_factory(store.engine)

    @event.listens_for(sessions, "after_flush")
    def pause(session, _context) -> None:  # type: ignore[no-untyped-def]
        if any(isinstance(o, Analysis) for o in session.new) and not committing.is_set():
            committing.set()
            wait_for.wait(1.5)

    return sessions


def test_recovery_racing_a_workers_commit_cannot_requeue_a_finished_job(
    store: Store, study_files: list[Path]
) -> None:
    _queued(store, study_files)
    recovered, committing = threading.Event(), threading.Event()
    sessions = _pausing_in_finish(store, recovered, committing)
    worker = _worker(store, DoubleAnalyser(), destinations=[PACS], sessions=sessions)
    thread, out = _in_thread(worker.run_once)
    assert committing.wait(30)
    # the lease is long expired by the recovering process's reckoning
    later = utcnow() + dt.timedelta(hours=1)
    racing, report = _in_thread(lambda: recover(store.sessions, node_id="other", now=later))
    racing.join(0.5)
    recovered.set()
    thread.join(30)
    racing.join(30)
    assert out == [True]
    (recovered_report,) = report
    assert recovered_report.handed_back == 0  # type: ignore[union-attr]
    (job,) = store.jobs()
    assert job.state is JobState.EXPORTING  # not queued again
    assert len(_analyses(store)) == 1
    with store.sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(Export)) == 1


def test_superseding_racing_a_workers_commit_loses_nothing(
    store: Store, study_files: list[Path]
) -> None:
    """A new round completed while the old round's results are committed: the old job
    is either superseded before its results (none kept) or finished (all kept)."""
    uid = store.receive(study_files[:-1])
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    assembled, committing = threading.Event(), threading.Event()
    sessions = _pausing_in_finish(store, assembled, committing)
    analyser = GatedAnalyser()
    worker = _worker(store, analyser, destinations=[PACS], sessions=sessions)
    thread, out = _in_thread(worker.run_once)
    assert analyser.started.wait(30)
    store.receive(study_files[-1:])  # a late image opens round 2
    assert store.study(uid).analysis_round == 2
    analyser.gate.set()
    assert committing.wait(30)
    racing, done = _in_thread(
        lambda: complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    )
    racing.join(0.5)
    assembled.set()
    thread.join(30)
    racing.join(30)
    assert out == [True] and not isinstance(done[0], BaseException)
    # a study whose row was locked is completed at the next pass
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    old, new = store.jobs()
    kept = [a for a in _analyses(store) if a.job_id == old.id]
    assert (old.state, len(kept)) in {(JobState.SUPERSEDED, 0), (JobState.EXPORTING, 1)}
    assert new.state is JobState.QUEUED


# --- hand-backs count as attempts ---------------------------------------------------------


def test_hand_backs_count_as_attempts_and_end_in_failed_with_an_alert(
    store: Store, study_files: list[Path]
) -> None:
    uid = _queued(store, study_files)
    worker = _worker(store, DoubleAnalyser())
    later = utcnow() + dt.timedelta(hours=1)
    for attempt in (1, 2, 3):
        claimed = worker.claim()  # then the worker dies, every time
        assert claimed is not None and claimed.attempts == attempt
        report = recover(store.sessions, node_id="other", now=later)
        (job,) = store.jobs()
        if attempt < 3:
            assert report.jobs_requeued == 1 and job.state is JobState.QUEUED
    assert job.state is JobState.FAILED and report.jobs_failed == 1
    assert worker.claim() is None  # not claimed forever
    study = store.study(uid)
    assert study.state is StudyState.FAILED and "3" in (study.state_reason or "")
    (alert,) = _alerts(store, "job_failed")
    assert "lease" in (alert.message or "")


class _ProcessKilledError(Exception):
    """Stands for the exporter's process dying mid-send."""


def test_export_hand_backs_count_as_attempts(store: Store, study_files: list[Path]) -> None:
    _queued(store, study_files)
    assert _worker(store, DoubleAnalyser(), destinations=[PACS]).run_once()

    def dies(paths: list[Path], remote: object, **_: object) -> list[SendResult]:
        raise _ProcessKilledError

    exporter = Exporter(
        store.settings,
        store.sessions,
        store.files,
        destinations=lambda: [PACS],
        node_id="e1",
        send=dies,
    )
    later = utcnow() + dt.timedelta(hours=1)
    limit = store.settings.export.max_attempts
    for attempt in range(1, limit + 1):
        with pytest.raises(_ProcessKilledError):
            exporter.run_once()  # claimed, then the process dies, every time
        report = recover(store.sessions, node_id="other", now=later, max_export_attempts=limit)
        assert report.exports_requeued == (attempt < limit)
    assert report.exports_failed == 1
    assert exporter.run_once() == 0
    with store.sessions.begin() as session:
        (export,) = session.scalars(select(Export)).all()
    assert export.state is ExportState.FAILED and export.attempts == limit
    assert [j.state for j in store.jobs()] == [JobState.FAILED]
    (alert,) = _alerts(store, "export")
    assert "lease" in (alert.message or "")

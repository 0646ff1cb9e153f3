"""Assembly, the job state machine, retries, recovery and retention, on a real
SQLite store filled through the real ingest path (no network here; the
peers are exercised in test_node.py and test_restart.py)."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from cem_node.config import Settings
from cem_node.contracts.analysis import UnavailableAnalyser
from cem_node.dicom.net.scu import FailureKind, SendResult
from cem_node.dicom.objects.common import ReportingDevice
from cem_node.dicom.objects.results import encode_not_analysable
from cem_node.dicom.selection import summarise_exclusions
from cem_node.jobs.admin import reprocess_study, retry_study, show_study
from cem_node.jobs.assembler import complete_due_studies
from cem_node.jobs.exporter import Exporter
from cem_node.jobs.recovery import recover
from cem_node.jobs.retention import purge_expired_studies
from cem_node.jobs.rounds import open_round
from cem_node.jobs.states import IllegalTransitionError, transition
from cem_node.jobs.worker import Worker, backoff_seconds
from cem_node.peers import PeerEntry
from cem_node.store import (
    Analysis,
    AuditEvent,
    Export,
    ExportState,
    Instance,
    InstanceFileStore,
    Job,
    JobState,
    Study,
    StudyState,
    make_engine,
    session_factory,
    upgrade,
    utcnow,
)
from cem_node.store.ingest import DiskGuard, InstanceIngestor, ReceivedFrom
from cem_node.synthetic.study import SynthOptions, generate_study
from tests.analysis_double import DoubleAnalyser

PACS = PeerEntry("pacs", "PACS", "127.0.0.1", 104, "destination", False, None, "config")


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    study = generate_study(tmp_path_factory.mktemp("jobs"), 5, 0, SynthOptions(size="small"))
    return sorted((study / "dicom").glob("*.dcm"))


class Store:
    def __init__(self, root: Path, url: str) -> None:
        engine = make_engine(url)
        upgrade(engine)
        self.engine = engine
        self.sessions = session_factory(engine)
        self.files = InstanceFileStore(root / "store")
        self.ingestor = InstanceIngestor(
            self.sessions,
            self.files,
            DiskGuard(str(root), high_watermark_percent=99.99, min_free_mb=0),
            open_round=open_round,
        )
        self.settings = Settings.defaults()
        self.settings.export.initial_backoff_s = 1
        self.settings.export.max_backoff_s = 4
        self.settings.export.max_attempts = 3

    def receive(self, files: list[Path]) -> str:
        uid = ""
        for f in files:
            result = self.ingestor.ingest(f.read_bytes(), sender=ReceivedFrom("MOD", "CEM", "::1"))
            assert result.status == 0, result.message
            uid = result.study_instance_uid or ""
        return uid

    def study(self, uid: str) -> Study:
        with self.sessions.begin() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
            assert study is not None
            return study

    def jobs(self) -> list[Job]:
        with self.sessions.begin() as session:
            return list(session.scalars(select(Job).order_by(Job.id)))

    def worker(self, analyser: object, destinations: list[PeerEntry] | None = None) -> Worker:
        return Worker(
            self.settings,
            self.sessions,
            self.files,
            analyser,  # type: ignore[arg-type]
            destinations=lambda: destinations or [],
            node_id="w1",
        )


@pytest.fixture
def store(tmp_path: Path, db_url: str) -> Iterator[Store]:
    """A store on each backend (SQLite; PostgreSQL where a server is reachable)."""
    made = Store(tmp_path, db_url)
    yield made
    made.engine.dispose()


def test_quiet_period_and_forced_completion(store: Store, study_files: list[Path]) -> None:
    uid = store.receive(study_files[:2])
    now = utcnow()
    complete = complete_due_studies(
        store.sessions, quiet_period_s=30, max_wait_s=600, actor="t", now=now
    )
    assert complete == []  # still within the quiet period
    later = now + dt.timedelta(seconds=31)
    (done,) = complete_due_studies(
        store.sessions, quiet_period_s=30, max_wait_s=600, actor="t", now=later
    )
    assert done.study_instance_uid == uid and done.reason == "quiet_period"
    assert [j.state for j in store.jobs()] == [JobState.QUEUED]

    # a busy sender: instances keep arriving, the maximum wait forces completion
    uid2 = store.receive(study_files[2:3])  # same study: reopens it as round 2
    assert store.study(uid2).analysis_round == 2
    with store.sessions.begin() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid2))
        assert study is not None
        study.receiving_since = utcnow() - dt.timedelta(seconds=700)
    (forced,) = complete_due_studies(store.sessions, quiet_period_s=30, max_wait_s=600, actor="t")
    assert forced.reason == "max_wait" and forced.analysis_round == 2
    states = [j.state for j in store.jobs()]
    assert states == [JobState.SUPERSEDED, JobState.QUEUED]  # round 1 never produced results


def test_illegal_transitions_are_refused(store: Store, study_files: list[Path]) -> None:
    store.receive(study_files[:1])
    with store.sessions.begin() as session:
        job = session.scalars(select(Job)).one()
        with pytest.raises(IllegalTransitionError, match="cannot go from received to done"):
            transition(session, job, JobState.DONE, actor="t")


def test_unavailable_analysis_fails_at_once_and_retry_requeues(
    store: Store, study_files: list[Path]
) -> None:
    uid = store.receive(study_files)
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    assert store.worker(UnavailableAnalyser("no model bundle")).run_once()
    study = store.study(uid)
    assert study.state is StudyState.FAILED and "no model bundle" in (study.state_reason or "")
    (job,) = store.jobs()
    assert job.state is JobState.FAILED and job.attempts == 1  # permanent: not retried
    assert "1 job(s)" in retry_study(store.sessions, uid, actor="admin:t")
    assert store.jobs()[0].state is JobState.QUEUED


def test_transient_analysis_errors_back_off_then_fail(
    store: Store, study_files: list[Path]
) -> None:
    uid = store.receive(study_files)
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    worker = store.worker(DoubleAnalyser(fail_times=99))
    assert worker.run_once()
    (job,) = store.jobs()
    assert job.state is JobState.QUEUED and job.next_attempt_at is not None
    assert not worker.run_once()  # not due yet: backoff
    for _ in range(2):
        with store.sessions.begin() as session:
            session.get(Job, job.id).next_attempt_at = None  # type: ignore[union-attr]
        assert worker.run_once()
    (job,) = store.jobs()
    assert job.state is JobState.FAILED and job.attempts == 3
    assert store.study(uid).state is StudyState.FAILED


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_seconds(n, initial_s=5, max_s=30) for n in (1, 2, 3, 4, 5)] == [
        5,
        10,
        20,
        30,
        30,
    ]


def _analysed(store: Store, study_files: list[Path]) -> str:
    uid = store.receive(study_files)
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    assert store.worker(DoubleAnalyser(), [PACS]).run_once()
    return uid


def _exporter(store: Store, outcomes: list[tuple[bool, FailureKind | None]]) -> Exporter:
    def send(paths: list[Path], remote: object, **_: object) -> list[SendResult]:
        delivered, failure = outcomes.pop(0)
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


def test_exports_retry_transient_failures_until_the_limit(
    store: Store, study_files: list[Path]
) -> None:
    uid = _analysed(store, study_files)
    exporter = _exporter(store, [(False, FailureKind.TRANSIENT)] * 3)
    for _ in range(3):
        with store.sessions.begin() as session:
            for e in session.scalars(select(Export)):
                e.next_attempt_at = None
        assert exporter.run_once() == 1
    with store.sessions.begin() as session:
        (export,) = session.scalars(select(Export)).all()
    assert export.state is ExportState.FAILED and export.attempts == 3
    assert store.study(uid).state is StudyState.FAILED
    assert exporter.run_once() == 0  # no endless retries


def test_permanent_export_failure_stops_at_once_and_retry_delivers(
    store: Store, study_files: list[Path]
) -> None:
    uid = _analysed(store, study_files)
    exporter = _exporter(store, [(False, FailureKind.PERMANENT), (True, None)])
    assert exporter.run_once() == 1
    assert store.study(uid).state is StudyState.FAILED
    retry_study(store.sessions, uid, actor="admin:t")
    assert exporter.run_once() == 1
    assert store.study(uid).state is StudyState.DONE
    assert [j.state for j in store.jobs()] == [JobState.DONE]


def test_recovery_hands_back_stale_claims(store: Store, study_files: list[Path]) -> None:
    store.receive(study_files)
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    worker = store.worker(DoubleAnalyser())
    assert worker.claim() is not None  # then the process "dies"
    assert recover(store.sessions, node_id="other").jobs_requeued == 0  # lease still valid
    report = recover(store.sessions, node_id="w1", at_start=True)
    assert report.jobs_requeued == 1
    assert [j.state for j in store.jobs()] == [JobState.QUEUED]
    later = utcnow() + dt.timedelta(hours=1)
    assert worker.claim() is not None
    assert recover(store.sessions, node_id="other", now=later).jobs_requeued == 1


def test_reprocess_supersedes_and_opens_a_new_round(store: Store, study_files: list[Path]) -> None:
    uid = _analysed(store, study_files)
    assert reprocess_study(store.sessions, uid, actor="admin:t") == 2
    assert [j.state for j in store.jobs()] == [JobState.EXPORTING, JobState.QUEUED]


def test_retention_purges_only_finished_old_studies(store: Store, study_files: list[Path]) -> None:
    uid = _analysed(store, study_files)
    _exporter(store, [(True, None)]).run_once()
    assert store.study(uid).state is StudyState.DONE
    stored = list(store.files.root.rglob("*.dcm"))
    assert len(stored) == len(study_files) + 1  # the instances and the result SR
    kept = purge_expired_studies(store.sessions, store.files, retention_days=30, actor="t")
    assert kept == []  # too recent
    assert (
        purge_expired_studies(
            store.sessions,
            store.files,
            retention_days=0,
            actor="t",
            now=utcnow() + dt.timedelta(days=365),
        )
        == []
    )  # 0 keeps forever
    purged = purge_expired_studies(
        store.sessions,
        store.files,
        retention_days=30,
        actor="t",
        now=utcnow() + dt.timedelta(days=31),
    )
    assert purged == [uid]
    assert list(store.files.root.rglob("*.dcm")) == []
    with store.sessions.begin() as session:
        assert session.scalars(select(Study)).all() == []


@pytest.mark.postgres
def test_concurrent_workers_claim_different_jobs_on_postgres(
    tmp_path: Path, postgres_url: str, study_files: list[Path], tmp_path_factory
) -> None:
    """SELECT ... FOR UPDATE SKIP LOCKED: two workers never take the same job."""
    store = Store(tmp_path, postgres_url)
    for index in range(4):
        other = generate_study(
            tmp_path_factory.mktemp("more"), 6, index, SynthOptions(size="small")
        )
        store.receive(sorted((other / "dicom").glob("*.dcm"))[:1])
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    barrier = threading.Barrier(4)
    claimed: list[int] = []
    lock = threading.Lock()

    def claim(name: str) -> None:
        worker = Worker(
            store.settings,
            store.sessions,
            store.files,
            DoubleAnalyser(),
            destinations=list,
            node_id=name,
        )
        barrier.wait()
        got = worker.claim()
        if got is not None:
            with lock:
                claimed.append(got.job_id)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 4
    store.engine.dispose()


# --- one unusable image does not fail its study ------------------------------------------


def _stored_path(store: Store, source: Path) -> Path:
    """The store's file of the instance received from ``source``."""
    uid = str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)
    with store.sessions.begin() as session:
        relative = session.scalar(
            select(Instance.file_path).where(Instance.sop_instance_uid == uid)
        )
    assert relative is not None
    return store.files.absolute(relative)


def _garbage(path: Path) -> None:
    path.write_bytes(b"overwritten: not a DICOM file any more\n" * 20)


def _bad_series_uid(path: Path) -> None:
    # stored before identifiers were checked at ingest: pydicom writes it as given
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.SeriesInstanceUID = "1.2.840.abc\\1.2"
        ds.save_as(path, enforce_file_format=True)


def _instances(store: Store, uid: str) -> dict[str, dict]:
    return {i["sop_instance_uid"]: i for i in show_study(store.sessions, uid)["instances"]}


@pytest.mark.parametrize(
    ("corrupt", "why"),
    [
        (_garbage, "cannot read the header: "),
        (_bad_series_uid, "Invalid SeriesInstanceUID: not a single UID"),
    ],
)
def test_an_unreadable_image_is_excluded_and_the_rest_analysed(
    store: Store, study_files: list[Path], corrupt, why: str
) -> None:
    uid = store.receive(study_files)
    bad = next(f for f in study_files if f.name == "LE_LCC.dcm")
    bad_uid = str(pydicom.dcmread(bad, stop_before_pixels=True).SOPInstanceUID)
    corrupt(_stored_path(store, bad))
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    analyser = DoubleAnalyser()
    assert store.worker(analyser, [PACS]).run_once()
    (job,) = store.jobs()
    assert job.state is JobState.EXPORTING and job.attempts == 1  # analysed, not retried
    (request,) = analyser.calls
    assert sorted((p.laterality, p.view) for p in request.pairs) == [
        ("L", "MLO"),
        ("R", "CC"),
        ("R", "MLO"),
    ]
    assert bad_uid not in {str(h.SOPInstanceUID) for h in request.headers}
    instances = _instances(store, uid)
    assert instances[bad_uid]["role"] == "excluded"
    assert instances[bad_uid]["role_reason"].startswith(why)
    assert sorted(i["role"] for i in instances.values()).count("excluded") == 1
    shown = show_study(store.sessions, uid)
    assert {p["reason"] for p in shown["pairings"] if not p["paired"]} == {
        "L CC: no low-energy image"
    }
    assert any(
        a["event"] == "instance_excluded" and why in (a["message"] or "") for a in shown["audit"]
    )


def _undecodable(source: Path) -> bytes:
    """``source`` (JPEG 2000) with its codestream zeroed: complete, but no image."""
    data = source.read_bytes()
    codestream = data.index(b"\xff\x4f\xff\x51")
    return data[:codestream] + bytes(len(data) - codestream - 8) + data[-8:]


def test_undecodable_pixel_data_is_excluded_at_analysis(
    store: Store, tmp_path_factory: pytest.TempPathFactory
) -> None:
    study = generate_study(
        tmp_path_factory.mktemp("j2k"), 5, 0, SynthOptions(size="small", transfer_syntax="jpeg2000")
    )
    files = sorted((study / "dicom").glob("*.dcm"))
    bad = next(f for f in files if f.name == "RC_RMLO.dcm")
    bad_uid = str(pydicom.dcmread(bad, stop_before_pixels=True).SOPInstanceUID)
    uid = store.receive([f for f in files if f != bad])
    # the ingest accepts it: a compressed frame is only decoded by the analysis
    result = store.ingestor.ingest(_undecodable(bad), sender=ReceivedFrom("MOD", "CEM", "::1"))
    assert result.status == 0, result.message
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    analyser = DoubleAnalyser(decode_pixels=True)
    assert store.worker(analyser, [PACS]).run_once()
    (job,) = store.jobs()
    assert job.state is JobState.EXPORTING and job.attempts == 1
    assert [len(c.pairs) for c in analyser.calls] == [4, 3]  # then without R MLO
    reason = _instances(store, uid)[bad_uid]["role_reason"]
    assert reason.startswith("cannot decode the pixel data of transfer syntax JPEG 2000"), reason
    with store.sessions.begin() as session:
        (analysis,) = session.scalars(select(Analysis)).all()
        assert analysis.not_analysable_reason is None and analysis.document is not None


def test_a_study_with_nothing_usable_left_gets_the_not_analysed_report(
    store: Store, study_files: list[Path]
) -> None:
    uid = store.receive(study_files)
    for f in study_files:
        if f.name.startswith("LE_"):
            _garbage(_stored_path(store, f))
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    reports: list[tuple[int, str]] = []

    def report(headers, reason: str, analysis_round: int):
        assert analysis_round == 1
        reports.append((len(headers), reason))
        (report,) = encode_not_analysable(
            headers, reason, device=ReportingDevice(device_serial_number="T")
        )
        return report.dataset

    worker = Worker(
        store.settings,
        store.sessions,
        store.files,
        DoubleAnalyser(),
        destinations=lambda: [PACS],
        node_id="w1",
        not_analysable_report=report,
    )
    assert worker.run_once()
    (job,) = store.jobs()
    assert job.state is JobState.EXPORTING and job.attempts == 1
    study = store.study(uid)
    assert study.state is StudyState.NOT_ANALYSABLE
    assert "4 image(s) excluded: cannot read the header: " in (study.state_reason or "")
    ((headers, reason),) = reports  # the report names the readable images and why
    assert headers == 4 and "4 image(s) excluded" in reason and "no low-energy" in reason
    with store.sessions.begin() as session:
        assert [e.object_type for e in session.scalars(select(Export))] == ["sr"]


def test_a_missing_file_is_an_io_error_and_retried(store: Store, study_files: list[Path]) -> None:
    """The store's disk, not the instance: transient, retried as before, nothing excluded."""
    uid = store.receive(study_files)
    _stored_path(store, study_files[0]).unlink()
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    assert store.worker(DoubleAnalyser(), [PACS]).run_once()
    (job,) = store.jobs()
    assert job.state is JobState.QUEUED and "FileNotFoundError" in (job.last_error or "")
    assert "excluded" not in {i["role"] for i in _instances(store, uid).values()}


def test_exclusions_are_summarised_by_reason() -> None:
    assert summarise_exclusions({"1.1": "a", "1.2": "a", "1.3": "b"}) == (
        "3 image(s) excluded: a (2 images); b"
    )
    many = {f"1.{i}": f"reason {i}" for i in range(5)}
    assert summarise_exclusions(many).endswith("reason 2; 2 other reason(s)")


def test_a_study_mixing_patients_is_not_analysed_and_no_report_goes_out(
    store: Store, study_files: list[Path], tmp_path: Path
) -> None:
    """Found with CBIS-DDSM (each view its own patient ID): the not-analysed report
    refused to mix patients, the worker took it for a transient error, three times,
    and nothing reached the radiologist or the administrator."""
    mixed = []
    for index, path in enumerate(study_files):
        ds = pydicom.dcmread(path)
        if index % 2:
            ds.PatientID = "OTHER-PATIENT-7"
        mixed.append(tmp_path / path.name)
        ds.save_as(mixed[-1])
    uid = store.receive(mixed)
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    analyser = DoubleAnalyser()
    worker = Worker(
        store.settings,
        store.sessions,
        store.files,
        analyser,
        destinations=lambda: [PACS],
        node_id="w1",
        not_analysable_report=lambda headers, reason, analysis_round: (
            encode_not_analysable(
                headers,
                reason,
                analysis_round=analysis_round,
                device=ReportingDevice(device_serial_number="T"),
            )[0].dataset
        ),
    )
    assert worker.run_once()
    (job,) = store.jobs()
    assert job.attempts == 1 and job.state is JobState.DONE, (job.state, job.last_error)
    assert analyser.calls == []  # findings must never mix two patients
    study = store.study(uid)
    assert study.state is StudyState.NOT_ANALYSABLE
    assert "2 different patients" in (study.state_reason or "")
    assert "OTHER-PATIENT-7" not in (study.state_reason or "")  # identifiers stay out
    with store.sessions.begin() as session:
        assert session.scalars(select(Export)).all() == []  # which patient would it go to?
        alerts = session.scalars(select(AuditEvent).where(AuditEvent.decision == "alert")).all()
        assert any("different patients" in (a.message or "") for a in alerts)


def test_the_worker_logs_where_a_studys_time_went(
    store: Store, study_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    # one INFO line per analysed study: the worker's steps and the analysis' own stages
    store.receive(study_files)
    complete_due_studies(store.sessions, quiet_period_s=0, max_wait_s=0, actor="t")
    analyser = DoubleAnalyser()
    with caplog.at_level(logging.INFO, logger="cem_node.jobs.worker"):
        assert store.worker(analyser, [PACS]).run_once()
    (line,) = [r.getMessage() for r in caplog.records if "; in the analysis:" in r.getMessage()]
    (job,) = store.jobs()
    assert line.startswith(f"job {job.id}: headers ")
    for step in ("analysis", "result_files", "database"):
        assert f", {step} " in line, line
    assert line.endswith("in the analysis: no stage timings")  # the double reports none

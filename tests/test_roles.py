"""Roles (``serve --role``) and wake-ups across nodes (PostgreSQL LISTEN/NOTIFY).

A receiver near the modalities needs neither torch nor a GPU; a GPU worker
needs no DICOM port; idle workers on another host wake when the scheduler
queues a job, not at their next poll.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from cem_node.config import ConfigError, Peer, Settings, load_settings
from cem_node.contracts.analysis import AnalysisRequest, AnalysisResult
from cem_node.node import Node
from cem_node.store import (
    Export,
    ExportState,
    Instance,
    Job,
    JobState,
    Study,
    StudyState,
    make_engine,
    session_factory,
    upgrade,
    utcnow,
)
from cem_node.store.notify import EXPORTS_CHANNEL, JOBS_CHANNEL, install_notify
from cem_node.synthetic.study import SynthOptions, generate_study
from tests.analysis_double import DoubleAnalyser
from tests.peers import free_port, storescu
from tests.test_node import MODALITY_AE, NODE_AE, make_settings, wait_until
from tests.test_serve import _listening, start_serve

pytestmark = pytest.mark.tools


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    study = generate_study(tmp_path_factory.mktemp("s"), 21, 0, SynthOptions(size="small"))
    return sorted((study / "dicom").glob("*.dcm"))


@pytest.fixture
def nodes() -> Iterator[Callable[..., Node]]:
    started: list[Node] = []

    def start(settings: Settings, node_id: str, analyser: Any = None) -> Node:
        node = Node(settings, analyser=analyser or DoubleAnalyser(), node_id=node_id)
        node.start()
        started.append(node)
        return node

    yield start
    for node in reversed(started):
        node.stop()


def _maps_torch(pid: int) -> bool:
    """Whether process ``pid`` has loaded torch's libraries (read from outside)."""
    maps = Path(f"/proc/{pid}/maps").read_text(errors="replace")
    return "libtorch" in maps or "/torch/_C" in maps


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _serve_in(folder: Path, config: str, *options: str) -> tuple[subprocess.Popen[str], int]:
    """``cem-node serve`` in ``folder`` with ``folder/conf/node.toml`` (its default config)."""
    (folder / "conf").mkdir(parents=True)
    (folder / "conf" / "node.toml").write_text(config)
    port = free_port()
    return start_serve(folder, folder / "data", port, "--accept-unknown-sources", *options), port


def _study_states(data: Path) -> list[tuple[StudyState, list[JobState]]]:
    engine = make_engine(f"sqlite:///{data / 'cem-node.db'}")
    try:
        with session_factory(engine).begin() as session:
            return [
                (study.state, [job.state for job in study.jobs])
                for study in session.scalars(select(Study))
            ]
    finally:
        engine.dispose()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_receiver_scheduler_and_exporter_roles_never_import_torch(
    tmp_path: Path, study_files: list[Path]
) -> None:
    http_port = free_port()
    receiver, port = _serve_in(
        tmp_path / "receiver", f"[http]\nport = {http_port}\n", "--role", "receiver"
    )
    # the front of deploy/: everything but the analysis
    front_roles = ("--role", "receiver", "--role", "scheduler", "--role", "exporter")
    front, front_port = _serve_in(tmp_path / "front", "[http]\nenabled = false\n", *front_roles)
    # every role: the probe sees torch there (the bundle's preload)
    full, _ = _serve_in(tmp_path / "full", "[http]\nenabled = false\n")
    try:
        for served in (port, front_port):
            wait_until(lambda served=served: _listening(served), what="the receivers listening")
            sent = storescu(study_files, port=served, called_ae="CEM_NODE", calling_ae="MOD")
            assert sent.returncode == 0, sent.stderr
        status, body = _get(f"http://127.0.0.1:{http_port}/healthz")
        assert status == 200, body
        assert json.loads(body)["roles"] == ["receiver"]
        # the front assembles the study and queues its job: nobody analyses it
        wait_until(
            lambda: _study_states(tmp_path / "front" / "data")[0][1] == [JobState.QUEUED],
            what="the front to queue the job",
        )
        wait_until(lambda: _maps_torch(full.pid), timeout_s=60, what="torch in the full serve")
        time.sleep(1)  # past the quiet period: nobody assembles on a receiver
        assert receiver.poll() is None and front.poll() is None
        assert not _maps_torch(receiver.pid)
        assert not _maps_torch(front.pid)
    finally:
        for proc in (receiver, front, full):
            _stop(proc)
    # the receiver stored every instance; without a scheduler the study is never completed
    assert _study_states(tmp_path / "receiver" / "data") == [
        (StudyState.RECEIVING, [JobState.RECEIVED])
    ]
    engine = make_engine(f"sqlite:///{tmp_path / 'receiver' / 'data' / 'cem-node.db'}")
    with session_factory(engine).begin() as session:
        assert len(session.scalars(select(Instance)).all()) == len(study_files)
    engine.dispose()


def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _shared(settings: Settings, db_url: str, root: Path, **node: Any) -> Settings:
    """Settings of one of several nodes on one database and one store."""
    upgrade(db_url)  # a shared database is upgraded by an admin (SQLite: by the node)
    settings.database.url = db_url
    settings.storage.root = root
    for key, value in node.items():
        setattr(settings.node, key, value)
    return settings


def _job_of(node: Node) -> Job | None:
    assert node.sessions is not None
    with node.sessions.begin() as session:
        return session.scalars(select(Job).where(Job.analysis_round == 1)).first()


def test_a_worker_only_node_opens_no_dicom_port_and_analyses_a_queued_study(
    tmp_path: Path, db_url: str, nodes, study_files: list[Path]
) -> None:
    root = tmp_path / "store"
    front_settings = _shared(
        make_settings(tmp_path), db_url, root, roles=["receiver", "scheduler", "exporter"]
    )
    front_analyser = DoubleAnalyser()
    front = nodes(front_settings, "front", front_analyser)
    worker_port = free_port()
    worker_settings = _shared(
        make_settings(tmp_path), db_url, root, roles=["worker"], port=worker_port
    )
    worker_settings.http.enabled = False
    worker_analyser = DoubleAnalyser()
    worker = nodes(worker_settings, "gpu-1", worker_analyser)
    assert worker.scp is None and not _listening(worker_port)

    sent = storescu(study_files, port=front.port, called_ae=NODE_AE, calling_ae=MODALITY_AE)
    assert sent.returncode == 0, sent.stderr
    job = wait_until(
        lambda: (j := _job_of(front)) is not None and j.finished_at is not None and j,
        what="the study analysed",
    )
    assert job.state is JobState.DONE, (job.state, job.last_error)
    assert len(worker_analyser.calls) == 1 and not front_analyser.calls
    assert not _listening(worker_port)


def test_roles_are_validated_with_a_clear_message(tmp_path: Path) -> None:
    assert Settings.defaults().node.roles == ["receiver", "worker", "exporter", "scheduler"]
    config = tmp_path / "node.toml"
    for roles, expected in [
        ("[]", "at least one role"),
        ('["receiver", "receiver"]', "duplicate"),
        ('["gpu"]', "receiver"),
    ]:
        config.write_text(f"[node]\nroles = {roles}\n")
        with pytest.raises(ConfigError) as caught:
            load_settings(config, environ={})
        assert "node.roles" in str(caught.value) and expected in str(caught.value)
    bad = subprocess.run(
        [*_serve_cli(tmp_path), "--role", "gpu"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "gpu" in bad.stderr, bad.stderr
    contradiction = [*_serve_cli(tmp_path), "--role", "worker", "--receivers", "2"]
    bad = subprocess.run(contradiction, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--receivers" in bad.stderr, bad.stderr


def _serve_cli(tmp_path: Path) -> list[str]:
    import sys

    return [sys.executable, "-m", "cem_node", "serve", "--data-dir", str(tmp_path / "d")]


class _Timed(DoubleAnalyser):
    """The test double, noting when each analysis starts (this process' monotonic clock)."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[float] = []

    def analyse(self, request: AnalysisRequest) -> AnalysisResult:
        self.started.append(time.monotonic())
        return super().analyse(request)


class _Listen:
    """The test's own LISTEN: when each notification arrives."""

    def __init__(self, url: str, channel: str) -> None:
        libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self.conn = psycopg.connect(libpq, autocommit=True)
        self.conn.execute(f"LISTEN {channel}")
        self.at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for _note in self.conn.notifies(timeout=0.2):
                self.at.append(time.monotonic())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.close()


def _when(predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "") -> float:
    """The monotonic time at which ``predicate`` first held (checked every 20 ms)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


@pytest.mark.postgres
def test_notify_wakes_idle_workers_and_exporters_on_other_nodes_at_once(
    tmp_path: Path, postgres_url: str, nodes, study_files: list[Path], dcmtk_storescp
) -> None:
    root = tmp_path / "store"
    pacs = Peer(
        name="pacs",
        ae_title=dcmtk_storescp.aet,
        host="127.0.0.1",
        port=dcmtk_storescp.port,
        role="destination",
    )
    # every node polls every 10 s: only a notification explains a claim within 1 s
    scheduler_settings = _shared(
        make_settings(tmp_path), postgres_url, root, roles=["receiver", "scheduler"]
    )
    scheduler_settings.node.poll_interval_s = 10.0
    worker_settings = _shared(
        make_settings(tmp_path), postgres_url, root, roles=["worker"], poll_interval_s=10.0
    )
    worker_settings.http.enabled = False
    worker_settings.peers = [*worker_settings.peers, pacs]
    exporter_settings = _shared(
        make_settings(tmp_path), postgres_url, root, roles=["exporter"], poll_interval_s=10.0
    )
    exporter_settings.http.enabled = False
    exporter_settings.peers = [*exporter_settings.peers, pacs]
    analyser = _Timed()
    jobs = _Listen(postgres_url, JOBS_CHANNEL)
    exports = _Listen(postgres_url, EXPORTS_CHANNEL)
    try:
        front = nodes(scheduler_settings, "scheduler-1")
        worker = nodes(worker_settings, "gpu-1", analyser)
        exporter = nodes(exporter_settings, "exporter-1")
        for node in (worker, exporter):
            assert node._listener is not None and node._listener.wait_listening(10)
        time.sleep(1.0)  # their first look at the queue is over: they are idle
        sent = storescu(study_files, port=front.port, called_ae=NODE_AE, calling_ae=MODALITY_AE)
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: analyser.started, timeout_s=20, what="the worker to claim the job")
        assert jobs.at, "no NOTIFY on the jobs channel"
        latency = analyser.started[0] - jobs.at[0]
        print(f"NOTIFY to claim: {latency * 1000:.0f} ms (poll interval 10 s)")
        assert 0 <= latency < 1.0, f"claimed {latency:.3f} s after the NOTIFY"
        # the results the worker produced wake the exporter on its own node
        claimed = _when(lambda: _export_claimed(exporter), what="the exporter to claim")
        assert exports.at, "no NOTIFY on the exports channel"
        latency = claimed - exports.at[0]
        print(f"NOTIFY to export claim: {latency * 1000:.0f} ms (poll interval 10 s)")
        assert 0 <= latency < 1.0, f"export claimed {latency:.3f} s after the NOTIFY"
        wait_until(dcmtk_storescp.files, what="the result at the destination")
    finally:
        jobs.close()
        exports.close()


def _export_claimed(node: Node) -> bool:
    assert node.sessions is not None
    with node.sessions.begin() as session:
        states = session.scalars(select(Export.state)).all()
    return any(state is not ExportState.PENDING for state in states)


@pytest.mark.postgres
def test_notify_is_sent_with_the_commit_and_never_for_a_rollback(postgres_url: str) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    sessions = session_factory(engine)
    assert install_notify(sessions, engine)
    jobs = _Listen(postgres_url, JOBS_CHANNEL)
    try:
        with sessions() as session:
            study = Study(study_instance_uid="1.2.3.4")
            session.add(study)
            session.flush()
            session.add(Job(study_id=study.id, state=JobState.QUEUED, analysis_round=1))
            session.flush()  # NOTIFY sent inside the transaction ...
            session.rollback()  # ... and dropped with it
        time.sleep(0.5)
        assert not jobs.at
        # a retry that waits for its back-off wakes nobody either, nor a study being received
        with sessions.begin() as session:
            study, receiving = Study(study_instance_uid="1.2.3.5"), Study(study_instance_uid="9.8")
            session.add_all([study, receiving])
            session.flush()
            later = utcnow() + dt.timedelta(minutes=5)
            job = Job(study_id=study.id, state=JobState.QUEUED, next_attempt_at=later)
            session.add_all([job, Job(study_id=receiving.id)])  # "received", the default
        time.sleep(0.5)
        assert not jobs.at
        with sessions.begin() as session:
            session.scalars(
                select(Job).where(Job.study_id == study.id)
            ).one().state = JobState.ANALYSING
        time.sleep(0.5)
        assert not jobs.at
        with sessions.begin() as session:  # handed back, due now
            job = session.scalars(select(Job).where(Job.study_id == study.id)).one()
            job.state, job.next_attempt_at = JobState.QUEUED, None
        wait_until(lambda: jobs.at, timeout_s=5, what="the NOTIFY of the commit")
    finally:
        jobs.close()
        engine.dispose()


def _listening_backends(url: str) -> list[int]:
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name = 'cem-node-listen' AND datname = current_database()"
        ).fetchall()
    return [pid for (pid,) in rows]


@pytest.mark.postgres
def test_a_worker_listens_again_after_its_connection_is_cut(
    tmp_path: Path, postgres_url: str, nodes, study_files: list[Path]
) -> None:
    root = tmp_path / "store"
    front_settings = _shared(
        make_settings(tmp_path), postgres_url, root, roles=["receiver", "scheduler"]
    )
    worker_settings = _shared(
        make_settings(tmp_path), postgres_url, root, roles=["worker"], poll_interval_s=10.0
    )
    worker_settings.http.enabled = False
    analyser = _Timed()
    jobs = _Listen(postgres_url, JOBS_CHANNEL)
    try:
        front = nodes(front_settings, "scheduler-1")
        worker = nodes(worker_settings, "gpu-1", analyser)
        assert worker._listener is not None and worker._listener.wait_listening(10)
        (cut,) = wait_until(lambda: _listening_backends(postgres_url), what="the listener")
        libpq = make_url(postgres_url).set(drivername="postgresql")
        with psycopg.connect(libpq.render_as_string(hide_password=False)) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (cut,))
        # a new session listens (the lost one's notifications went nowhere; the poll remains)
        wait_until(
            lambda: (pids := _listening_backends(postgres_url)) and cut not in pids,
            what="a new listening session",
        )
        assert worker._listener.wait_listening(10)
        time.sleep(0.5)
        sent = storescu(study_files, port=front.port, called_ae=NODE_AE, calling_ae=MODALITY_AE)
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: analyser.started, timeout_s=20, what="the worker to claim the job")
        latency = analyser.started[0] - jobs.at[0]
        assert 0 <= latency < 1.0, f"claimed {latency:.3f} s after the NOTIFY"
    finally:
        jobs.close()

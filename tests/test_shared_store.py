"""One store shared by several nodes (#20, observation 4): each node cleans only
the temporary files it owns, retention runs on one node at a time, and the
database names files relative to the store's root (see docs/STORE.md)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from cem_node.jobs.retention import purge_expired_studies
from cem_node.jobs.rounds import open_round
from cem_node.node import Node
from cem_node.store import (
    AuditEvent,
    Instance,
    InstanceFileStore,
    Study,
    StudyState,
    make_engine,
    session_factory,
    upgrade,
    utcnow,
)
from cem_node.store.identity import advisory_key
from cem_node.store.ingest import DiskGuard, InstanceIngestor, ReceivedFrom
from cem_node.synthetic.study import SynthOptions, generate_study
from tests.analysis_double import DoubleAnalyser
from tests.test_identity import node_settings

HOUR_S = 3600.0


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    study = generate_study(tmp_path_factory.mktemp("shared"), 3, 0, SynthOptions(size="small"))
    return sorted((study / "dicom").glob("*.dcm"))


def leftover(files: InstanceFileStore, folder: Path) -> Path:
    """A temporary file as ``files`` writes it (an interrupted write, or one in flight)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{files.temporary_prefix}inflight"
    path.write_bytes(b"half a dataset")
    return path


def test_start_up_cleanup_spares_another_nodes_files_in_flight(tmp_path: Path, db_url: str) -> None:
    settings = node_settings(tmp_path / "store", db_url)
    first = Node(settings, analyser=DoubleAnalyser())
    second = Node(settings, analyser=DoubleAnalyser())
    first.start()
    second.start()
    try:
        assert first.files is not None and second.files is not None
        assert first.files.receiving_dir != second.files.receiving_dir
        instances = first.files.root / "incoming" / "ab" / "cd"
        # the second node is receiving a dataset and writing a result
        receiving = second.files.receiving_dir / ".tmp-reception"
        receiving.write_bytes(b"PDUs so far")
        writing = leftover(second.files, instances)
        # the first node crashed mid-reception and mid-write
        crashed = [first.files.receiving_dir / ".tmp-crashed", leftover(first.files, instances)]
        crashed[0].write_bytes(b"never adopted")
        first.stop()
        again = Node(settings, analyser=DoubleAnalyser())
        again.start()  # the first node again: its identity is free, the second's held
        try:
            assert again.node_id == first.node_id
            assert receiving.exists() and writing.exists()
            assert not any(path.exists() for path in crashed)
        finally:
            again.stop()
    finally:
        second.stop()


def test_abandoned_receptions_are_removed_only_from_the_nodes_own_folder(
    tmp_path: Path,
) -> None:
    store = InstanceFileStore(tmp_path)
    mine, theirs = store.owned_by("node-a"), store.owned_by("node-b")
    old = time.time() - 2 * HOUR_S
    paths = {
        "mine": mine.receiving_dir / ".tmp-1",
        "theirs": theirs.receiving_dir / ".tmp-2",
        "legacy": store.root / ".receiving" / ".tmp-3",  # before per-node folders
        "recent": mine.receiving_dir / ".tmp-4",
    }
    for path in paths.values():
        path.write_bytes(b"x")
    for name in ("mine", "theirs", "legacy"):
        os.utime(paths[name], (old, old))
    assert mine.remove_abandoned_receptions(HOUR_S) == 2
    assert {name for name, path in paths.items() if path.exists()} == {"theirs", "recent"}


def test_stored_paths_are_relative_to_the_store_root(
    tmp_path: Path, study_files: list[Path]
) -> None:
    """A worker reads what a receiver stored through its own mount of the store."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    receiver = InstanceFileStore(tmp_path / "receiver-mount").owned_by("receiver")
    ingestor = InstanceIngestor(
        sessions,
        receiver,
        DiskGuard(str(tmp_path), high_watermark_percent=99.99, min_free_mb=0),
        open_round=open_round,
    )
    for path in study_files:
        assert ingestor.ingest(path.read_bytes(), sender=ReceivedFrom("M", "C", "::1")).status == 0
    shutil.copytree(receiver.root, tmp_path / "worker-mount")
    worker = InstanceFileStore(tmp_path / "worker-mount").owned_by("worker")
    with sessions.begin() as session:
        stored = session.scalars(select(Instance.file_path)).all()
    assert len(stored) == len(study_files)
    for relative in stored:
        assert not Path(relative).is_absolute()
        assert worker.absolute(relative).read_bytes() == receiver.absolute(relative).read_bytes()
    engine.dispose()


def _finished_study(url: str, root: Path, files: list[Path]) -> tuple[object, InstanceFileStore]:
    engine = make_engine(url)
    upgrade(engine)
    sessions = session_factory(engine)
    store = InstanceFileStore(root)
    ingestor = InstanceIngestor(
        sessions,
        store,
        DiskGuard(str(root), high_watermark_percent=99.99, min_free_mb=0),
        open_round=open_round,
    )
    for path in files:
        assert ingestor.ingest(path.read_bytes(), sender=ReceivedFrom("M", "C", "::1")).status == 0
    with sessions.begin() as session:
        session.execute(update(Study).values(state=StudyState.DONE))
    return engine, store


@pytest.mark.postgres
def test_retention_waits_for_the_node_already_purging(
    tmp_path: Path, postgres_url: str, study_files: list[Path]
) -> None:
    engine, store = _finished_study(postgres_url, tmp_path, study_files)
    sessions = session_factory(engine)
    later = utcnow() + dt.timedelta(days=31)
    with engine.connect() as other_node:  # another node is purging
        other_node.execute(
            text("SELECT pg_advisory_lock(:key)"), {"key": advisory_key("retention")}
        )
        assert purge_expired_studies(sessions, store, retention_days=30, actor="b", now=later) == []
        other_node.rollback()
    with sessions.begin() as session:
        assert session.scalar(select(Study.state)) is StudyState.DONE
    assert len(purge_expired_studies(sessions, store, retention_days=30, actor="a", now=later)) == 1
    engine.dispose()


@pytest.mark.postgres
def test_retention_runs_once_when_two_nodes_run_it_at_once(
    tmp_path: Path, postgres_url: str, study_files: list[Path]
) -> None:
    engine, store = _finished_study(postgres_url, tmp_path, study_files)
    later = utcnow() + dt.timedelta(days=31)
    start = threading.Barrier(2)
    outcomes: dict[str, list[str] | BaseException] = {}

    def node(name: str) -> None:
        node_engine = make_engine(postgres_url)
        start.wait()
        try:
            outcomes[name] = purge_expired_studies(
                session_factory(node_engine), store, retention_days=30, actor=name, now=later
            )
        except BaseException as exc:  # reported below
            outcomes[name] = exc
        finally:
            node_engine.dispose()

    threads = [threading.Thread(target=node, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(v) for v in outcomes.values() if isinstance(v, list)) == [0, 1], outcomes
    with session_factory(engine).begin() as session:
        purges = session.scalars(
            select(AuditEvent).where(AuditEvent.event_type == "study_purged")
        ).all()
        assert len(purges) == 1
    engine.dispose()


def test_a_receiver_only_node_removes_its_abandoned_receptions(tmp_path: Path) -> None:
    """The sweep used to run with retention, in the scheduler role only: a node
    that only receives kept every dataset of an aborted association until restarted."""
    settings = node_settings(tmp_path / "store", f"sqlite:///{tmp_path / 'db.sqlite'}")
    settings.node.roles = ["receiver"]
    receiver = Node(settings, analyser=DoubleAnalyser())
    receiver.start()
    try:
        assert receiver.files is not None
        abandoned = receiver.files.receiving_dir / ".tmp-aborted"
        abandoned.write_bytes(b"the first PDUs of a dataset")
        old = time.time() - 2 * HOUR_S
        os.utime(abandoned, (old, old))
        receiver.wake("sweeper")
        deadline = time.monotonic() + 10
        while abandoned.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not abandoned.exists()
    finally:
        receiver.stop()

"""The store: migrations, models, engines, the file store and `cem-node db`.

Tests marked ``postgres`` run against a real PostgreSQL server:
``CEM_NODE_TEST_POSTGRES_URL`` or ``postgresql+psycopg://postgres@127.0.0.1:5432/test``.
Each creates and drops its own database. Without a server they are skipped,
unless ``CEM_NODE_REQUIRE_POSTGRES=1``, where they fail.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.util import CommandError
from sqlalchemy import Column, Engine, Integer, MetaData, Table, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, StatementError
from typer.testing import CliRunner

from cem_node.cli import app
from cem_node.store import (
    Analysis,
    AuditEvent,
    Base,
    Export,
    ExportState,
    Finding,
    ImageRole,
    Instance,
    InstanceFileStore,
    Job,
    JobState,
    LesionLabel,
    ModelBundle,
    PairingRecord,
    Peer,
    PeerRole,
    SchemaOutdatedError,
    Study,
    StudyState,
    UnsafePathError,
    check_schema_current,
    current_revision,
    head_revision,
    make_engine,
    session_factory,
    upgrade,
    utcnow,
)
from cem_node.store import engine as engine_module
from cem_node.store.engine import SQLITE_BEGIN_OPTION
from cem_node.store.migrate import downgrade


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a database migrated to head."""
    upgrade(db_url)
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def _study(uid: str = "1.2.826.0.1.3680043.10.1.1") -> Study:
    return Study(
        study_instance_uid=uid,
        patient_id="PAT-1",
        patient_name="Doe^Jane",
        accession_number="ACC1",
        study_date="20261121",
    )


def _instance(study: Study, sop_uid: str, role: ImageRole | None = None) -> Instance:
    return Instance(
        study=study,
        sop_instance_uid=sop_uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
        series_instance_uid=f"{study.study_instance_uid}.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        file_path=f"instances/{sop_uid}.v1.dcm",
        size_bytes=1234,
        sha256="0" * 64,
        calling_ae_title="MODALITY",
        remote_address="127.0.0.1",
        role=role,
        role_reason="ImageType value 4 is SUBTRACTION" if role else None,
        image_laterality="L",
        view="CC",
    )


# --- migrations -----------------------------------------------------------------------------


def test_upgrade_creates_every_table_in_wal_mode(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    path = make_url(sqlite_url).database
    assert path is not None
    assert Path(path).is_file()
    engine = make_engine(sqlite_url)
    try:
        tables = set(inspect(engine).get_table_names())
        assert tables == set(Base.metadata.tables) | {"alembic_version"}
        assert {"studies", "instances", "jobs", "findings", "exports"} <= tables
        assert {"model_bundles", "peers", "audit_events", "analyses", "pairings"} <= tables
        with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA synchronous").scalar() == 2  # FULL
            assert pragma("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
    # WAL is a property of the file: a plain connection sees it too.
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        raw.close()


def test_upgrade_is_idempotent_and_keeps_data(db_url: str) -> None:
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    engine = make_engine(db_url)
    try:
        with session_factory(engine).begin() as session:
            session.add(_study())
        upgrade(db_url)
        assert current_revision(db_url) == head_revision()
        with session_factory(engine)() as session:
            assert session.scalars(select(Study.patient_id)).all() == ["PAT-1"]
    finally:
        engine.dispose()


def _schema_diff(engine: Engine, metadata: MetaData) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_models_match_migrations(engine: Engine) -> None:
    assert _schema_diff(engine, Base.metadata) == []
    # The comparison does see differences: a model the migrations lack.
    extra = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(extra)
    Table("not_migrated", extra, Column("id", Integer, primary_key=True))
    assert [entry[0] for entry in _schema_diff(engine, extra)] == ["add_table"]


def test_downgrade_to_base_and_up_again(sqlite_url: str) -> None:
    upgrade(sqlite_url)
    downgrade(sqlite_url, "base")
    assert current_revision(sqlite_url) is None
    engine = make_engine(sqlite_url)
    try:
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()
    upgrade(sqlite_url)
    assert current_revision(sqlite_url) == head_revision()


def test_excluded_role_migration_keeps_pairings_and_rows(db_url: str) -> None:
    """0004 widens the role CHECK constraint; on SQLite that recreates the instances
    table, which must not cascade into the pairings that reference it."""
    upgrade(db_url, "0003")
    engine = make_engine(db_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO studies (id, study_instance_uid, state, analysis_round,"
                    " first_received_at, last_received_at, created_at, updated_at) VALUES"
                    " (1, '1.2.3', 'done', 1, :t, :t, :t, :t)"
                ),
                {"t": utcnow()},
            )
            connection.execute(
                text(
                    "INSERT INTO instances (id, study_id, sop_instance_uid, sop_class_uid,"
                    " transfer_syntax_uid, file_path, size_bytes, version, received_at, role,"
                    " created_at, updated_at) VALUES (7, 1, '1.2.3.4',"
                    " '1.2.840.10008.5.1.4.1.1.1.2', '1.2.840.10008.1.2.1', 'a.dcm', 1, 1, :t,"
                    " 'low_energy', :t, :t)"
                ),
                {"t": utcnow()},
            )
            connection.execute(
                text(
                    "INSERT INTO jobs (id, study_id, kind, state, analysis_round, priority,"
                    " attempts, created_at, updated_at) VALUES"
                    " (1, 1, 'analyse', 'done', 1, 0, 1, :t, :t)"
                ),
                {"t": utcnow()},
            )
            connection.execute(
                text(
                    "INSERT INTO pairings (job_id, low_energy_instance_id, paired, reason,"
                    " created_at) VALUES (1, 7, false, 'L CC: no recombined image', :t)"
                ),
                {"t": utcnow()},
            )
        with (
            pytest.raises(IntegrityError, match="ck_instances_image_role"),
            engine.begin() as connection,
        ):
            connection.execute(text("UPDATE instances SET role = 'excluded'"))
        upgrade(db_url)
        with engine.begin() as connection:
            connection.execute(text("UPDATE instances SET role = 'excluded'"))
            pairings = connection.execute(
                text("SELECT low_energy_instance_id, reason FROM pairings")
            ).all()
            assert [tuple(p) for p in pairings] == [(7, "L CC: no recombined image")]
        downgrade(db_url, "0003")
        with engine.begin() as connection:
            assert connection.execute(text("SELECT role FROM instances")).scalar() is None
            assert connection.execute(text("SELECT count(*) FROM pairings")).scalar() == 1
    finally:
        engine.dispose()


def test_unknown_revision_is_refused(sqlite_url: str) -> None:
    with pytest.raises(CommandError):
        upgrade(sqlite_url, "9999")


def test_check_schema_current(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with pytest.raises(SchemaOutdatedError, match="run `cem-node db upgrade`"):
            check_schema_current(engine)
        upgrade(engine)
        check_schema_current(engine)
        downgrade(engine, "base")
        with pytest.raises(SchemaOutdatedError) as info:
            check_schema_current(engine)
        assert info.value.current is None
        assert info.value.expected == head_revision()
    finally:
        engine.dispose()


# --- models ---------------------------------------------------------------------------------


def test_round_trip_of_a_study_and_its_results(engine: Engine) -> None:
    sessions = session_factory(engine)
    received = dt.datetime(2026, 11, 21, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    document = {"schema_version": "1.0", "lesions": [{"index": 0, "p": 0.91}], "note": "é"}
    with sessions.begin() as session:
        study = _study()
        study.last_received_at = received
        le = _instance(study, "1.2.3.1", ImageRole.LOW_ENERGY)
        rc = _instance(study, "1.2.3.2", ImageRole.RECOMBINED)
        bundle = ModelBundle(
            name="cem-demo", version="1.0.0", sha256="a" * 64, path="models/cem-demo", active=True
        )
        job = Job(study=study, state=JobState.QUEUED, analysis_round=1)
        job.pairings.append(
            PairingRecord(
                image_laterality="L",
                view="CC",
                low_energy=le,
                recombined=rc,
                paired=True,
                reason="same laterality, view and acquisition time",
            )
        )
        analysis = Analysis(
            study=study,
            model_name="cem-demo",
            model_version="1.0.0",
            model_sha256="a" * 64,
            document_schema_version="1.0",
            document=document,
            patient_score=0.91,
            patient_label=LesionLabel.MALIGNANT,
        )
        session.add_all([study, le, rc, bundle, job, analysis])
        session.flush()
        analysis.job_id = job.id
        analysis.model_bundle_id = bundle.id
        analysis.findings.append(
            Finding(
                study_id=study.id,
                lesion_index=0,
                image_laterality="L",
                view="CC",
                recombined_sop_instance_uid=rc.sop_instance_uid,
                bbox_x0=10.0,
                bbox_y0=20.0,
                bbox_x1=110.5,
                bbox_y1=90.0,
                area_mm2=42.5,
                probability_dl=0.95,
                probability_radiomics=None,
                probability_fused=0.95,
                label_dl=LesionLabel.MALIGNANT,
                label_fused=LesionLabel.MALIGNANT,
                radiomics_failed_reason="mask too small",
            )
        )
        session.add(
            Export(
                study=study,
                analysis_id=analysis.id,
                job_id=job.id,
                destination="pacs",
                object_type="sr",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
                sop_instance_uid="1.2.3.99",
                file_path="results/sr.dcm",
            )
        )
        session.add(
            Peer(
                name="pacs",
                ae_title="ORTHANC",
                host="127.0.0.1",
                port=4242,
                role=PeerRole.DESTINATION,
            )
        )
        session.add(
            AuditEvent(
                event_type="instance_stored",
                decision="accepted",
                calling_ae_title="MODALITY",
                remote_address="127.0.0.1",
                study_instance_uid=study.study_instance_uid,
                sop_instance_uid="1.2.3.1",
                details={"size": 1234, "replaced": False},
            )
        )

    with sessions() as session:
        study = session.scalars(select(Study)).one()
        assert study.state is StudyState.RECEIVING
        assert study.last_received_at == received
        assert study.last_received_at.tzinfo is not None
        assert study.last_received_at.utcoffset() == dt.timedelta(0)
        assert {i.role for i in study.instances} == {ImageRole.LOW_ENERGY, ImageRole.RECOMBINED}
        (job,) = study.jobs
        assert job.state is JobState.QUEUED
        (pairing,) = job.pairings
        assert pairing.low_energy is not None
        assert pairing.low_energy.sop_instance_uid == "1.2.3.1"
        (analysis,) = study.analyses
        assert analysis.document == document
        assert analysis.job_id == job.id
        (finding,) = analysis.findings
        assert finding.probability_radiomics is None
        assert finding.label_fused is LesionLabel.MALIGNANT
        (export,) = study.exports
        assert export.state is ExportState.PENDING
        assert export.attempts == 0
        event = session.scalars(select(AuditEvent)).one()
        assert event.details == {"size": 1234, "replaced": False}
        assert session.scalars(select(Peer.role)).one() is PeerRole.DESTINATION
        # Enums are stored as their values, readable by any SQL client.
        assert session.execute(text("SELECT role FROM instances ORDER BY id")).scalars().all() == [
            "low_energy",
            "recombined",
        ]


def test_sop_instance_uid_is_unique(engine: Engine) -> None:
    sessions = session_factory(engine)
    with sessions.begin() as session:
        study = _study()
        session.add(_instance(study, "1.2.3.1"))
    with pytest.raises(IntegrityError, match="sop_instance_uid"), sessions.begin() as session:
        study = session.scalars(select(Study)).one()
        again = _instance(study, "1.2.3.1")
        again.file_path = "instances/other.v1.dcm"
        session.add(again)


def test_deleting_a_study_cascades_in_the_database(engine: Engine) -> None:
    sessions = session_factory(engine)
    with sessions.begin() as session:
        study = _study()
        session.add_all([_instance(study, "1.2.3.1"), Job(study=study)])
    with engine.begin() as connection:
        # Plain SQL, no ORM cascade: proves the foreign keys (PRAGMA foreign_keys on SQLite).
        connection.execute(text("DELETE FROM studies"))
        assert connection.execute(text("SELECT count(*) FROM instances")).scalar() == 0
        assert connection.execute(text("SELECT count(*) FROM jobs")).scalar() == 0
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (study_id, kind, state, analysis_round, priority, attempts,"
                " created_at, updated_at) VALUES (424242, 'analyse', 'queued', 0, 0, 0,"
                " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )


def test_enum_columns_refuse_unknown_values(engine: Engine) -> None:
    with session_factory(engine).begin() as session:
        session.add(_study())
    with pytest.raises(IntegrityError, match="ck_studies_study_state"), engine.begin() as conn:
        conn.execute(text("UPDATE studies SET state = 'bogus'"))


def test_only_one_bundle_is_active(engine: Engine) -> None:
    sessions = session_factory(engine)
    with sessions.begin() as session:
        session.add_all(
            [
                ModelBundle(name="a", version="1", sha256="a" * 64, path="a", active=True),
                ModelBundle(name="b", version="1", sha256="b" * 64, path="b", active=False),
                ModelBundle(name="c", version="1", sha256="c" * 64, path="c", active=False),
            ]
        )
    with pytest.raises(IntegrityError), sessions.begin() as session:
        session.add(ModelBundle(name="d", version="1", sha256="d" * 64, path="d", active=True))


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    with (
        pytest.raises(StatementError, match="naive datetime"),
        session_factory(engine).begin() as session,
    ):
        study = _study()
        study.completed_at = dt.datetime(2026, 1, 1, 12, 0)  # no tzinfo
        session.add(study)


def test_sqlite_concurrent_read_then_write_does_not_fail(sqlite_url: str) -> None:
    """BEGIN IMMEDIATE makes writers wait instead of failing with 'database is locked'."""
    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        session.add(_study())
    errors: list[BaseException] = []

    def bump(times: int) -> None:
        try:
            for _ in range(times):
                with sessions.begin() as session:
                    study = session.scalars(select(Study)).one()
                    study.analysis_round += 1
                    study.last_received_at = utcnow()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(25,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        with sessions() as session:
            assert session.scalars(select(Study.analysis_round)).one() == 100
    finally:
        engine.dispose()


# --- files ----------------------------------------------------------------------------------


def test_file_store_writes_durably_under_hashed_names(tmp_path: Path) -> None:
    store = InstanceFileStore(tmp_path / "store")
    hostile = "../../etc/passwd"
    relative = store.instance_path(hostile, "1.2.3/../x", version=2)
    assert ".." not in relative
    assert relative.startswith("instances/")
    assert relative.endswith(".v2.dcm")
    data = b"DICM" * 1000
    stored = store.write_bytes(relative, [data[:100], data[100:]])
    assert stored.size_bytes == len(data)
    assert stored.sha256 == store.sha256(relative)
    assert store.absolute(relative).read_bytes() == data
    assert list(store.temporary_files()) == []
    source = tmp_path / "streamed.dcm"
    source.write_bytes(b"other")
    copied = store.copy_in(source, store.result_path("1.2", "1.2.3"))
    assert store.absolute(copied.relative_path).read_bytes() == b"other"
    for unsafe in ("../outside", "/etc/passwd", ""):
        with pytest.raises(UnsafePathError):
            store.absolute(unsafe)


def test_adopt_moves_a_streamed_file_in_and_never_over_a_stored_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """adopt renames before it fsyncs (one journal commit for both on ext4), which is
    safe only for a name no row holds: it refuses a name already in the store."""
    store = InstanceFileStore(tmp_path / "store")
    relative = store.instance_path("1.2.3", "1.2.3.4", version=1)
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    first = tmp_path / "streamed-1.dcm"
    first.write_bytes(b"first")
    stored = store.adopt(first, relative)
    target = store.absolute(relative)
    assert stored.size_bytes == 5 and not first.exists()
    # the file itself and then its folder were fsync'ed
    assert synced == [target.stat().st_ino, target.parent.stat().st_ino]
    second = tmp_path / "streamed-2.dcm"
    second.write_bytes(b"second")
    with pytest.raises(FileExistsError, match="already holds"):
        store.adopt(second, relative)
    assert target.read_bytes() == b"first" and second.read_bytes() == b"second"


# --- command line ---------------------------------------------------------------------------


def test_cli_db_upgrade_and_current(sqlite_url: str) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["db", "upgrade", "--url", sqlite_url])
    assert result.exit_code == 0, result.output
    assert f"(empty) -> {head_revision()}" in result.output
    result = runner.invoke(app, ["db", "upgrade", "--url", sqlite_url])
    assert result.exit_code == 0, result.output
    assert "nothing to do" in result.output
    result = runner.invoke(app, ["db", "current", "--url", sqlite_url, "--json", "--check"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["up_to_date"] is True
    assert current_revision(sqlite_url) == head_revision()


def test_cli_db_upgrade_uses_the_configured_database(tmp_path: Path) -> None:
    database = tmp_path / "from-config.db"
    config = tmp_path / "node.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{database.as_posix()}"\n')
    result = CliRunner().invoke(app, ["--config", str(config), "db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert current_revision(f"sqlite:///{database}") == head_revision()


def test_cli_db_current_check_fails_on_an_empty_database(sqlite_url: str) -> None:
    result = CliRunner().invoke(app, ["db", "current", "--url", sqlite_url, "--check"])
    assert result.exit_code == 1
    assert "cem-node db upgrade" in result.output


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        ("this is not a url", 2, "not a valid database URL"),
        ("nosuchdb://host/db", 2, "unknown database kind"),
        # Port 1 on loopback: nothing listens, the connection is refused at once.
        ("postgresql+psycopg://admin:s3cret@127.0.0.1:1/cem", 1, "cannot use the database"),
    ],
)
def test_cli_db_upgrade_bad_url(url: str, code: int, message: str) -> None:
    result = CliRunner().invoke(app, ["db", "upgrade", "--url", url])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert "s3cret" not in result.output


@contextlib.contextmanager
def _write_locked(url: str, seconds: float) -> Iterator[None]:
    """Another connection holds the SQLite write lock for ``seconds`` from entry."""
    upgrade(make_engine(url))
    holding = threading.Event()

    def hold() -> None:
        engine = make_engine(url)
        with engine.begin() as connection:  # BEGIN IMMEDIATE: the write lock
            connection.execute(text("SELECT 1"))
            holding.set()
            threading.Event().wait(seconds)
        engine.dispose()

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    try:
        yield
    finally:
        holder.join()


def test_writers_wait_for_the_write_lock_and_readers_do_not(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    with _write_locked(sqlite_url, 0.5):
        started = time.monotonic()
        with engine.connect() as connection:
            # a DEFERRED (read) transaction does not wait for the writer
            read = connection.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
            with read.begin():
                assert read.execute(text("SELECT count(*) FROM studies")).scalar() == 0
        assert time.monotonic() - started < 0.3
        with engine.begin() as connection:  # IMMEDIATE: waits until the holder commits
            waited = time.monotonic() - started
            # the busy timeout is back for the statements of the transaction
            assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
    assert 0.3 <= waited < 5
    engine.dispose()


def test_a_writer_gives_up_after_the_busy_timeout(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    engine = make_engine(sqlite_url)
    with _write_locked(sqlite_url, 2.0):
        started = time.monotonic()
        with pytest.raises(OperationalError, match="locked"), engine.begin():
            pass
        assert time.monotonic() - started < 1.5
    engine.dispose()

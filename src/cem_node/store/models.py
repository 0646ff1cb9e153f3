"""SQLAlchemy ORM models of everything the node persists.

Every step of a study's flow (receive, assemble, pair, analyse, encode,
export) is a row or a state change here, so that a node killed at any moment
resumes where it stopped and never loses an instance it acknowledged.

Conventions, chosen so that one Alembic history works on SQLite and
PostgreSQL alike:

- constraint and index names come from :data:`NAMING_CONVENTION`, so
  migrations are deterministic and SQLite batch mode can recreate tables;
- enumerations are stored as short strings (their ``.value``) guarded by a
  named CHECK constraint, never as native database enums;
- timestamps are timezone-aware and stored in UTC (:class:`UTCDateTime`);
- JSON documents use :class:`sqlalchemy.types.JSON` (JSONB on PostgreSQL);
- the files themselves live in the instance file store; rows hold their
  paths relative to the store root, never absolute paths.

The schema is created and changed only by the migrations in
``cem_node/store/migrations``; ``tests/test_store.py`` checks that they agree
with these models.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy import Enum as SAEnum
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "NAMING_CONVENTION",
    "Analysis",
    "AuditEvent",
    "Base",
    "Export",
    "ExportState",
    "Finding",
    "ImageRole",
    "Instance",
    "Job",
    "JobKind",
    "JobState",
    "LesionLabel",
    "ModelBundle",
    "PairingRecord",
    "Peer",
    "PeerRole",
    "Study",
    "StudyState",
    "UTCDateTime",
    "utcnow",
]

#: Names for constraints and indexes, so that migrations name them the same
#: way on every backend and can refer to them later. Never change it: the
#: migrations get the names of enum CHECK constraints from it.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# DICOM value lengths (PS3.5 6.2): UI 64, AE 16, SH 16, LO 64, PN 64 per
# component group (three groups and two separators).
_UI = 64
_AE = 16
_SH = 16
_LO = 64
_PN = 3 * 64 + 2
_PATH = 1024
_SHA256 = 64
_ENUM_LENGTH = 32  # room for future values without altering the column


def utcnow() -> dt.datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware timestamp, stored in UTC, always read back aware.

    SQLite has no time zones: values are normalised to UTC before they are
    written (so text order is time order) and marked UTC when read.
    Naive datetimes are refused: their zone would be a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: use an aware one (cem_node.store.utcnow)")
        return value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


#: JSON documents; JSONB on PostgreSQL so they can be indexed and compared.
JSONDocument = JSON().with_variant(postgresql.JSONB(), "postgresql")

#: 64-bit keys where the backend needs it; SQLite only autoincrements INTEGER.
BigIntKey = BigInteger().with_variant(Integer(), "sqlite")


class StudyState(enum.StrEnum):
    """Where a study stands in assembly.

    The fine-grained progress of its analysis and export is in :class:`Job`.
    """

    RECEIVING = "receiving"
    """Instances are arriving; the quiet period has not elapsed."""
    COMPLETE = "complete"
    """Assembled (quiet period or forced completion); waiting for its job."""
    PROCESSING = "processing"
    """A job is analysing, encoding or exporting it."""
    DONE = "done"
    """Results exported to every destination."""
    NOT_ANALYSABLE = "not_analysable"
    """No usable low-energy/recombined pair; ``state_reason`` says why."""
    FAILED = "failed"
    """Its job failed permanently; an administrator may retry it."""


class ImageRole(enum.StrEnum):
    """What a received image is in a CEM study."""

    LOW_ENERGY = "low_energy"
    RECOMBINED = "recombined"
    HIGH_ENERGY = "high_energy"
    OTHER = "other"
    EXCLUDED = "excluded"
    """Cannot be used (unreadable header, invalid identifier, undecodable pixel data):
    left out of the analysis round, the reason in ``role_reason``."""


class JobKind(enum.StrEnum):
    """What a job does."""

    ANALYSE = "analyse"
    """Pair, analyse, encode and queue the results of one study round."""
    EXPORT = "export"
    """Only (re)send existing results, e.g. after ``studies retry``."""


class JobState(enum.StrEnum):
    """The persisted state machine of a job (:mod:`cem_node.jobs.states`)."""

    RECEIVED = "received"
    COMPLETE = "complete"
    QUEUED = "queued"
    ANALYSING = "analysing"
    ENCODED = "encoded"
    EXPORTING = "exporting"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    """A newer round of the same study replaced it before it finished."""


class ExportState(enum.StrEnum):
    """The state of one result object for one destination (the outbox)."""

    PENDING = "pending"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"


class LesionLabel(enum.StrEnum):
    """A binary decision on a lesion."""

    BENIGN = "benign"
    MALIGNANT = "malignant"


class PeerRole(enum.StrEnum):
    """What a remote application entity is to the node."""

    SOURCE = "source"
    """May send studies to the node (C-STORE SCU)."""
    DESTINATION = "destination"
    """Receives the node's results (C-STORE SCP)."""


def _enum(cls: type[enum.Enum], name: str) -> SAEnum:
    """Return a portable string enum column type with a named CHECK constraint."""
    return SAEnum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=_ENUM_LENGTH,
        validate_strings=True,
        values_callable=lambda members: [member.value for member in members],
    )


class Base(DeclarativeBase):
    """Declarative base of the node's models."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class _Timestamps:
    """Creation and last-update times (set by the application, in UTC)."""

    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Study(_Timestamps, Base):
    """A study as received, with its assembly state.

    ``analysis_round`` counts completed assemblies: instances that arrive
    after completion reopen the study and their completion starts round
    ``n + 1``, analysed by a new job whose results supersede the old ones.
    """

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(_UI), unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(_LO))
    patient_name: Mapped[str | None] = mapped_column(String(_PN))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(_SH))
    accession_number: Mapped[str | None] = mapped_column(String(_SH), index=True)
    # Raw DICOM DA/TM values: parsing them must never make a C-STORE fail.
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(_SH))
    study_description: Mapped[str | None] = mapped_column(String(_LO))
    state: Mapped[StudyState] = mapped_column(
        _enum(StudyState, "study_state"), default=StudyState.RECEIVING
    )
    state_reason: Mapped[str | None] = mapped_column(Text)
    analysis_round: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    receiving_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    """First instance of the current round: the forced completion counts from here."""
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    completion_reason: Mapped[str | None] = mapped_column(String(_ENUM_LENGTH))

    instances: Mapped[list[Instance]] = relationship(
        back_populates="study", cascade="all, delete-orphan", passive_deletes=True
    )
    jobs: Mapped[list[Job]] = relationship(
        back_populates="study", cascade="all, delete-orphan", passive_deletes=True
    )
    analyses: Mapped[list[Analysis]] = relationship(
        back_populates="study", cascade="all, delete-orphan", passive_deletes=True
    )
    exports: Mapped[list[Export]] = relationship(
        back_populates="study", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        CheckConstraint("analysis_round >= 0", name="analysis_round_non_negative"),
        # The assembler polls "receiving studies quiet since T".
        Index("ix_studies_state_last_received_at", "state", "last_received_at"),
    )

    def __repr__(self) -> str:
        return f"Study(id={self.id!r}, uid={self.study_instance_uid!r}, state={self.state!r})"


class Instance(_Timestamps, Base):
    """One received SOP instance: its file in the store and its CEM role.

    There is one row per SOP Instance UID. A re-sent instance with the same
    bytes changes nothing; with different bytes the new file replaces the old
    one here, ``version`` is incremented and the change is audited.
    """

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(_UI), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(_UI))
    series_instance_uid: Mapped[str | None] = mapped_column(String(_UI))
    series_number: Mapped[int | None] = mapped_column(Integer)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    modality: Mapped[str | None] = mapped_column(String(_SH))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(_UI))
    file_path: Mapped[str] = mapped_column(String(_PATH), unique=True)
    """Path relative to the instance store root."""
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(_SHA256))
    """SHA-256 of the file, computed after the C-STORE was answered (``None`` until then)."""
    version: Mapped[int] = mapped_column(Integer, default=1)
    replaced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    """When different bytes last replaced an earlier version."""
    calling_ae_title: Mapped[str | None] = mapped_column(String(_AE))
    called_ae_title: Mapped[str | None] = mapped_column(String(_AE))
    remote_address: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # CEM classification: filled by the selection rules, with why.
    role: Mapped[ImageRole | None] = mapped_column(_enum(ImageRole, "image_role"))
    role_reason: Mapped[str | None] = mapped_column(Text)
    image_laterality: Mapped[str | None] = mapped_column(String(_SH))
    view: Mapped[str | None] = mapped_column(String(_SH))
    classified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    study: Mapped[Study] = relationship(back_populates="instances")

    __table_args__ = (
        CheckConstraint("size_bytes >= 0", name="size_bytes_non_negative"),
        CheckConstraint("version >= 1", name="version_positive"),
    )

    def __repr__(self) -> str:
        return f"Instance(id={self.id!r}, uid={self.sop_instance_uid!r}, role={self.role!r})"


class Job(_Timestamps, Base):
    """A unit of work on one round of one study, claimed by one worker.

    Claiming (PostgreSQL): ``SELECT ... WHERE state = 'queued' AND
    (next_attempt_at IS NULL OR next_attempt_at <= now) ORDER BY priority
    DESC, id FOR UPDATE SKIP LOCKED``, then set ``claimed_by``,
    ``claimed_at`` and ``lease_expires_at``, and increment
    ``claim_generation``. A worker that dies loses its lease, and the job is
    handed back when the lease has expired (see :mod:`cem_node.jobs.claims`).
    """

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    kind: Mapped[JobKind] = mapped_column(_enum(JobKind, "job_kind"), default=JobKind.ANALYSE)
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.RECEIVED)
    analysis_round: Mapped[int] = mapped_column(Integer, default=0)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    """Not before this time (retry backoff); ``None`` means now."""
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    claim_generation: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    """Incremented by every claim and hand-back: the fencing token of a claim's writes."""
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)

    study: Mapped[Study] = relationship(back_populates="jobs")
    pairings: Mapped[list[PairingRecord]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        # Claiming scans by state and due time; lease recovery by state and lease.
        Index("ix_jobs_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_jobs_state_lease_expires_at", "state", "lease_expires_at"),
    )

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, study_id={self.study_id!r}, state={self.state!r})"


class PairingRecord(Base):
    """One low-energy/recombined pair (or an image left unpaired, and why).

    Pairings belong to the job that made them, so each analysis round keeps
    the decisions it was based on.
    """

    __tablename__ = "pairings"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    image_laterality: Mapped[str | None] = mapped_column(String(_SH))
    view: Mapped[str | None] = mapped_column(String(_SH))
    low_energy_instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    recombined_instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    paired: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="pairings")
    low_energy: Mapped[Instance | None] = relationship(foreign_keys=[low_energy_instance_id])
    recombined: Mapped[Instance | None] = relationship(foreign_keys=[recombined_instance_id])

    __table_args__ = (
        CheckConstraint(
            "NOT paired OR (low_energy_instance_id IS NOT NULL"
            " AND recombined_instance_id IS NOT NULL)",
            name="paired_has_both_images",
        ),
    )


class ModelBundle(Base):
    """A model bundle imported into the registry (see ``models/``).

    At most one bundle is active; the active one analyses new studies.
    """

    __tablename__ = "model_bundles"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(_SHA256))
    """Hash of the bundle (its manifest with every file's checksum)."""
    path: Mapped[str] = mapped_column(String(_PATH))
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    intended_use: Mapped[str | None] = mapped_column(Text)
    not_for_clinical_use: Mapped[bool] = mapped_column(Boolean, default=True)
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    imported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("name", "version"),
        # Partial unique index: a second active bundle is a database error.
        Index(
            "uq_model_bundles_one_active",
            "active",
            unique=True,
            sqlite_where=text("active"),
            postgresql_where=text("active"),
        ),
    )

    def __repr__(self) -> str:
        return f"ModelBundle(name={self.name!r}, version={self.version!r}, active={self.active!r})"


class Analysis(Base):
    """The result of analysing one round of one study: the findings document.

    ``document`` holds the full typed findings document
    (:mod:`cem_node.contracts.findings`) as JSON, ``findings`` one row per
    lesion for queries. The bundle's identity is
    copied so that a result stays attributable after its bundle is removed.
    A later round supersedes an analysis (``superseded_by_id``); nothing is
    deleted.
    """

    __tablename__ = "analyses"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    analysis_round: Mapped[int] = mapped_column(Integer, default=0)
    model_bundle_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_bundles.id", ondelete="SET NULL"), index=True
    )
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64))
    model_sha256: Mapped[str | None] = mapped_column(String(_SHA256))
    device: Mapped[str | None] = mapped_column(String(64))
    not_analysable_reason: Mapped[str | None] = mapped_column(Text)
    patient_score: Mapped[float | None] = mapped_column(Float)
    patient_label: Mapped[LesionLabel | None] = mapped_column(_enum(LesionLabel, "patient_label"))
    document_schema_version: Mapped[str | None] = mapped_column(String(32))
    document: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    superseded_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("analyses.id", ondelete="SET NULL")
    )
    superseded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    study: Mapped[Study] = relationship(back_populates="analyses")
    findings: Mapped[list[Finding]] = relationship(
        back_populates="analysis",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Finding.lesion_index",
    )
    superseded_by: Mapped[Analysis | None] = relationship(remote_side=[id])


class Finding(Base):
    """One lesion found by an analysis, with its scores and decisions.

    Coordinates are (column, row) pixels of the full-size recombined image;
    probabilities are in [0, 1].
    """

    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(
        ForeignKey("analyses.id", ondelete="CASCADE"), index=True
    )
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    lesion_index: Mapped[int] = mapped_column(Integer)
    image_laterality: Mapped[str | None] = mapped_column(String(_SH))
    view: Mapped[str | None] = mapped_column(String(_SH))
    recombined_sop_instance_uid: Mapped[str | None] = mapped_column(String(_UI))
    low_energy_sop_instance_uid: Mapped[str | None] = mapped_column(String(_UI))
    bbox_x0: Mapped[float] = mapped_column(Float)
    bbox_y0: Mapped[float] = mapped_column(Float)
    bbox_x1: Mapped[float] = mapped_column(Float)
    bbox_y1: Mapped[float] = mapped_column(Float)
    area_mm2: Mapped[float | None] = mapped_column(Float)
    max_diameter_mm: Mapped[float | None] = mapped_column(Float)
    probability_dl: Mapped[float] = mapped_column(Float)
    probability_radiomics: Mapped[float | None] = mapped_column(Float)
    """``None`` when radiomics failed for this lesion (see ``radiomics_failed_reason``)."""
    probability_fused: Mapped[float] = mapped_column(Float)
    label_dl: Mapped[LesionLabel] = mapped_column(_enum(LesionLabel, "label_dl"))
    label_radiomics: Mapped[LesionLabel | None] = mapped_column(
        _enum(LesionLabel, "label_radiomics")
    )
    label_fused: Mapped[LesionLabel] = mapped_column(_enum(LesionLabel, "label_fused"))
    agreement: Mapped[bool | None] = mapped_column(Boolean)
    radiomics_failed_reason: Mapped[str | None] = mapped_column(Text)

    analysis: Mapped[Analysis] = relationship(back_populates="findings")

    __table_args__ = (
        UniqueConstraint("analysis_id", "lesion_index"),
        CheckConstraint("bbox_x1 >= bbox_x0 AND bbox_y1 >= bbox_y0", name="bbox_ordered"),
        CheckConstraint(
            "probability_dl >= 0 AND probability_dl <= 1"
            " AND probability_fused >= 0 AND probability_fused <= 1"
            " AND (probability_radiomics IS NULL"
            " OR (probability_radiomics >= 0 AND probability_radiomics <= 1))",
            name="probabilities_in_unit_interval",
        ),
    )


class Export(_Timestamps, Base):
    """The outbox: one result object to be sent to one destination.

    The file stays in the store until every destination confirmed it.
    ``destination`` is a peer name, from the database or the config file,
    so it is not a foreign key. Sending the same SOP instance to the same
    destination twice is harmless, but one row per pair keeps the outbox
    idempotent.
    """

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    analysis_id: Mapped[int | None] = mapped_column(
        ForeignKey("analyses.id", ondelete="SET NULL"), index=True
    )
    job_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="SET NULL"), index=True
    )
    destination: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(_ENUM_LENGTH))
    """``seg``, ``sr``, ``gsps``, ... (free text: new object types need no migration)."""
    sop_class_uid: Mapped[str] = mapped_column(String(_UI))
    sop_instance_uid: Mapped[str] = mapped_column(String(_UI))
    file_path: Mapped[str] = mapped_column(String(_PATH))
    """Path relative to the store root."""
    state: Mapped[ExportState] = mapped_column(
        _enum(ExportState, "export_state"), default=ExportState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    claim_generation: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    """Incremented by every claim and hand-back: the fencing token of a claim's writes."""
    last_status: Mapped[int | None] = mapped_column(Integer)
    """The last DIMSE status the destination answered (e.g. 0xA700)."""
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    study: Mapped[Study] = relationship(back_populates="exports")

    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "destination"),
        CheckConstraint("attempts >= 0", name="attempts_non_negative"),
        Index("ix_exports_state_next_attempt_at", "state", "next_attempt_at"),
    )


class Peer(_Timestamps, Base):
    """A remote application entity added with ``cem-node peers add``."""

    __tablename__ = "peers"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    ae_title: Mapped[str] = mapped_column(String(_AE))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    role: Mapped[PeerRole] = mapped_column(_enum(PeerRole, "peer_role"))
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (CheckConstraint("port >= 1 AND port <= 65535", name="port_range"),)


class AuditEvent(Base):
    """An append-only record of a decision or an action.

    Holds identifiers as text, not foreign keys: the trail must outlive the
    studies that retention deletes.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    event_type: Mapped[str] = mapped_column(String(64), index=True)
    """E.g. ``association``, ``instance_stored``, ``instance_replaced``, ``export``."""
    decision: Mapped[str | None] = mapped_column(String(_ENUM_LENGTH))
    """E.g. ``accepted``, ``rejected``, ``ignored``."""
    actor: Mapped[str | None] = mapped_column(String(128))
    """Who acted: a node process, an administrator, a worker id."""
    calling_ae_title: Mapped[str | None] = mapped_column(String(_AE))
    called_ae_title: Mapped[str | None] = mapped_column(String(_AE))
    remote_address: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(_UI), index=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(String(_UI))
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    message: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)

"""Initial schema: studies, instances, jobs, pairings, analyses, findings,
exports, model bundles, peers and audit events.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Written for SQLite and PostgreSQL alike: no native enums (strings with
CHECK constraints), JSONB on PostgreSQL, 64-bit keys except on SQLite (which
only autoincrements INTEGER). Constraint names follow
``cem_node.store.models.NAMING_CONVENTION``, which Alembic applies from the
target metadata; explicit ``op.f()`` names are the rendered ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types: later model changes must not alter this.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIMESTAMP = sa.DateTime(timezone=True)
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Create every table."""
    op.create_table(
        "audit_events",
        sa.Column("id", _ID, nullable=False),
        sa.Column("occurred_at", _TIMESTAMP, nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("decision", sa.String(length=32), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=True),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=True),
        sa.Column("called_ae_title", sa.String(length=16), nullable=True),
        sa.Column("remote_address", sa.String(length=64), nullable=True),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("details", _JSON, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index(
        op.f("ix_audit_events_event_type"), "audit_events", ["event_type"], unique=False
    )
    op.create_index(
        op.f("ix_audit_events_occurred_at"), "audit_events", ["occurred_at"], unique=False
    )
    op.create_index(
        op.f("ix_audit_events_study_instance_uid"),
        "audit_events",
        ["study_instance_uid"],
        unique=False,
    )

    op.create_table(
        "model_bundles",
        sa.Column("id", _ID, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("intended_use", sa.Text(), nullable=True),
        sa.Column("not_for_clinical_use", sa.Boolean(), nullable=False),
        sa.Column("manifest", _JSON, nullable=True),
        sa.Column("imported_at", _TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_bundles")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_model_bundles_name_version")),
    )
    op.create_index(
        "uq_model_bundles_one_active",
        "model_bundles",
        ["active"],
        unique=True,
        sqlite_where=sa.text("active"),
        postgresql_where=sa.text("active"),
    )

    op.create_table(
        "peers",
        sa.Column("id", _ID, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("ae_title", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column(
            "role",
            sa.Enum(
                "source",
                "destination",
                name="peer_role",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("tls", sa.Boolean(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.CheckConstraint("port >= 1 AND port <= 65535", name=op.f("ck_peers_port_range")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_peers")),
        sa.UniqueConstraint("name", name=op.f("uq_peers_name")),
    )
    op.create_table(
        "studies",
        sa.Column("id", _ID, nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("patient_name", sa.String(length=194), nullable=True),
        sa.Column("patient_birth_date", sa.String(length=8), nullable=True),
        sa.Column("patient_sex", sa.String(length=16), nullable=True),
        sa.Column("accession_number", sa.String(length=16), nullable=True),
        sa.Column("study_date", sa.String(length=8), nullable=True),
        sa.Column("study_time", sa.String(length=16), nullable=True),
        sa.Column("study_description", sa.String(length=64), nullable=True),
        sa.Column(
            "state",
            sa.Enum(
                "receiving",
                "complete",
                "processing",
                "done",
                "not_analysable",
                "failed",
                name="study_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("state_reason", sa.Text(), nullable=True),
        sa.Column("analysis_round", sa.Integer(), nullable=False),
        sa.Column("first_received_at", _TIMESTAMP, nullable=False),
        sa.Column("last_received_at", _TIMESTAMP, nullable=False),
        sa.Column("completed_at", _TIMESTAMP, nullable=True),
        sa.Column("completion_reason", sa.String(length=32), nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "analysis_round >= 0", name=op.f("ck_studies_analysis_round_non_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_studies_study_instance_uid")),
    )
    op.create_index(
        op.f("ix_studies_accession_number"), "studies", ["accession_number"], unique=False
    )
    op.create_index(
        "ix_studies_state_last_received_at", "studies", ["state", "last_received_at"], unique=False
    )

    op.create_table(
        "instances",
        sa.Column("id", _ID, nullable=False),
        sa.Column("study_id", _ID, nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("file_path", sa.String(length=1024), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("replaced_at", _TIMESTAMP, nullable=True),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=True),
        sa.Column("called_ae_title", sa.String(length=16), nullable=True),
        sa.Column("remote_address", sa.String(length=64), nullable=True),
        sa.Column("received_at", _TIMESTAMP, nullable=False),
        sa.Column(
            "role",
            sa.Enum(
                "low_energy",
                "recombined",
                "high_energy",
                "other",
                name="image_role",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("role_reason", sa.Text(), nullable=True),
        sa.Column("image_laterality", sa.String(length=16), nullable=True),
        sa.Column("view", sa.String(length=16), nullable=True),
        sa.Column("classified_at", _TIMESTAMP, nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.CheckConstraint("size_bytes >= 0", name=op.f("ck_instances_size_bytes_non_negative")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_instances_version_positive")),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_instances_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
        sa.UniqueConstraint("file_path", name=op.f("uq_instances_file_path")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_instances_sop_instance_uid")),
    )
    op.create_index(op.f("ix_instances_study_id"), "instances", ["study_id"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("id", _ID, nullable=False),
        sa.Column("study_id", _ID, nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "analyse",
                "export",
                name="job_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "state",
            sa.Enum(
                "received",
                "complete",
                "queued",
                "analysing",
                "encoded",
                "exporting",
                "done",
                "failed",
                "superseded",
                name="job_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("analysis_round", sa.Integer(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TIMESTAMP, nullable=True),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_at", _TIMESTAMP, nullable=True),
        sa.Column("lease_expires_at", _TIMESTAMP, nullable=True),
        sa.Column("started_at", _TIMESTAMP, nullable=True),
        sa.Column("finished_at", _TIMESTAMP, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_jobs_attempts_non_negative")),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_jobs_study_id_studies"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(
        "ix_jobs_state_lease_expires_at", "jobs", ["state", "lease_expires_at"], unique=False
    )
    op.create_index(
        "ix_jobs_state_next_attempt_at", "jobs", ["state", "next_attempt_at"], unique=False
    )
    op.create_index(op.f("ix_jobs_study_id"), "jobs", ["study_id"], unique=False)

    op.create_table(
        "analyses",
        sa.Column("id", _ID, nullable=False),
        sa.Column("study_id", _ID, nullable=False),
        sa.Column("job_id", _ID, nullable=True),
        sa.Column("analysis_round", sa.Integer(), nullable=False),
        sa.Column("model_bundle_id", _ID, nullable=True),
        sa.Column("model_name", sa.String(length=128), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("model_sha256", sa.String(length=64), nullable=True),
        sa.Column("device", sa.String(length=64), nullable=True),
        sa.Column("not_analysable_reason", sa.Text(), nullable=True),
        sa.Column("patient_score", sa.Float(), nullable=True),
        sa.Column(
            "patient_label",
            sa.Enum(
                "benign",
                "malignant",
                name="patient_label",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column("document_schema_version", sa.String(length=32), nullable=True),
        sa.Column("document", _JSON, nullable=True),
        sa.Column("started_at", _TIMESTAMP, nullable=True),
        sa.Column("finished_at", _TIMESTAMP, nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("superseded_by_id", _ID, nullable=True),
        sa.Column("superseded_at", _TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_analyses_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["model_bundle_id"],
            ["model_bundles.id"],
            name=op.f("fk_analyses_model_bundle_id_model_bundles"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_analyses_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["superseded_by_id"],
            ["analyses.id"],
            name=op.f("fk_analyses_superseded_by_id_analyses"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_analyses")),
    )
    op.create_index(op.f("ix_analyses_job_id"), "analyses", ["job_id"], unique=False)
    op.create_index(
        op.f("ix_analyses_model_bundle_id"), "analyses", ["model_bundle_id"], unique=False
    )
    op.create_index(op.f("ix_analyses_study_id"), "analyses", ["study_id"], unique=False)

    op.create_table(
        "pairings",
        sa.Column("id", _ID, nullable=False),
        sa.Column("job_id", _ID, nullable=False),
        sa.Column("image_laterality", sa.String(length=16), nullable=True),
        sa.Column("view", sa.String(length=16), nullable=True),
        sa.Column("low_energy_instance_id", _ID, nullable=True),
        sa.Column("recombined_instance_id", _ID, nullable=True),
        sa.Column("paired", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "NOT paired OR (low_energy_instance_id IS NOT NULL"
            " AND recombined_instance_id IS NOT NULL)",
            name=op.f("ck_pairings_paired_has_both_images"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_pairings_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["low_energy_instance_id"],
            ["instances.id"],
            name=op.f("fk_pairings_low_energy_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["recombined_instance_id"],
            ["instances.id"],
            name=op.f("fk_pairings_recombined_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pairings")),
    )
    op.create_index(op.f("ix_pairings_job_id"), "pairings", ["job_id"], unique=False)
    op.create_index(
        op.f("ix_pairings_low_energy_instance_id"),
        "pairings",
        ["low_energy_instance_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_pairings_recombined_instance_id"),
        "pairings",
        ["recombined_instance_id"],
        unique=False,
    )

    op.create_table(
        "exports",
        sa.Column("id", _ID, nullable=False),
        sa.Column("study_id", _ID, nullable=False),
        sa.Column("analysis_id", _ID, nullable=True),
        sa.Column("job_id", _ID, nullable=True),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("object_type", sa.String(length=32), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("file_path", sa.String(length=1024), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "pending",
                "sending",
                "done",
                "failed",
                name="export_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TIMESTAMP, nullable=True),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_at", _TIMESTAMP, nullable=True),
        sa.Column("lease_expires_at", _TIMESTAMP, nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("sent_at", _TIMESTAMP, nullable=True),
        sa.Column("created_at", _TIMESTAMP, nullable=False),
        sa.Column("updated_at", _TIMESTAMP, nullable=False),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_exports_attempts_non_negative")),
        sa.ForeignKeyConstraint(
            ["analysis_id"],
            ["analyses.id"],
            name=op.f("fk_exports_analysis_id_analyses"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_exports_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_exports_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exports")),
        sa.UniqueConstraint(
            "sop_instance_uid", "destination", name=op.f("uq_exports_sop_instance_uid_destination")
        ),
    )
    op.create_index(op.f("ix_exports_analysis_id"), "exports", ["analysis_id"], unique=False)
    op.create_index(op.f("ix_exports_job_id"), "exports", ["job_id"], unique=False)
    op.create_index(
        "ix_exports_state_next_attempt_at", "exports", ["state", "next_attempt_at"], unique=False
    )
    op.create_index(op.f("ix_exports_study_id"), "exports", ["study_id"], unique=False)

    op.create_table(
        "findings",
        sa.Column("id", _ID, nullable=False),
        sa.Column("analysis_id", _ID, nullable=False),
        sa.Column("study_id", _ID, nullable=False),
        sa.Column("lesion_index", sa.Integer(), nullable=False),
        sa.Column("image_laterality", sa.String(length=16), nullable=True),
        sa.Column("view", sa.String(length=16), nullable=True),
        sa.Column("recombined_sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("low_energy_sop_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("bbox_x0", sa.Float(), nullable=False),
        sa.Column("bbox_y0", sa.Float(), nullable=False),
        sa.Column("bbox_x1", sa.Float(), nullable=False),
        sa.Column("bbox_y1", sa.Float(), nullable=False),
        sa.Column("area_mm2", sa.Float(), nullable=True),
        sa.Column("max_diameter_mm", sa.Float(), nullable=True),
        sa.Column("probability_dl", sa.Float(), nullable=False),
        sa.Column("probability_radiomics", sa.Float(), nullable=True),
        sa.Column("probability_fused", sa.Float(), nullable=False),
        sa.Column(
            "label_dl",
            sa.Enum(
                "benign",
                "malignant",
                name="label_dl",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "label_radiomics",
            sa.Enum(
                "benign",
                "malignant",
                name="label_radiomics",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=True,
        ),
        sa.Column(
            "label_fused",
            sa.Enum(
                "benign",
                "malignant",
                name="label_fused",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("agreement", sa.Boolean(), nullable=True),
        sa.Column("radiomics_failed_reason", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "bbox_x1 >= bbox_x0 AND bbox_y1 >= bbox_y0", name=op.f("ck_findings_bbox_ordered")
        ),
        sa.CheckConstraint(
            "probability_dl >= 0 AND probability_dl <= 1"
            " AND probability_fused >= 0 AND probability_fused <= 1"
            " AND (probability_radiomics IS NULL"
            " OR (probability_radiomics >= 0 AND probability_radiomics <= 1))",
            name=op.f("ck_findings_probabilities_in_unit_interval"),
        ),
        sa.ForeignKeyConstraint(
            ["analysis_id"],
            ["analyses.id"],
            name=op.f("fk_findings_analysis_id_analyses"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_findings_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_findings")),
        sa.UniqueConstraint(
            "analysis_id", "lesion_index", name=op.f("uq_findings_analysis_id_lesion_index")
        ),
    )
    op.create_index(op.f("ix_findings_analysis_id"), "findings", ["analysis_id"], unique=False)
    op.create_index(op.f("ix_findings_study_id"), "findings", ["study_id"], unique=False)


def downgrade() -> None:
    """Drop every table (and its data)."""
    op.drop_table("findings")
    op.drop_table("exports")
    op.drop_table("pairings")
    op.drop_table("analyses")
    op.drop_table("jobs")
    op.drop_table("instances")
    op.drop_table("studies")
    op.drop_table("peers")
    op.drop_table("model_bundles")
    op.drop_table("audit_events")

"""Claims of jobs and exports carry a generation: the fencing token of their lease.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Each claim, and each hand-back by recovery, increments the row's
``claim_generation``; the claimer writes its outcome (analysis results,
export statuses) only while the row still has the generation it claimed,
so that a process whose lease expired under it cannot overwrite the work of
the one that claimed the row after it. Existing rows start at 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("jobs", "exports")


def upgrade() -> None:
    """Add ``claim_generation`` (0) to ``jobs`` and ``exports``."""
    for table in _TABLES:
        op.add_column(
            table,
            sa.Column("claim_generation", sa.Integer(), nullable=False, server_default="0"),
        )


def downgrade() -> None:
    """Drop ``claim_generation``.

    A plain ``ALTER TABLE ... DROP COLUMN`` (SQLite 3.35 and later), not a batch
    table copy: recreating ``jobs`` would cascade into the rows that reference it.
    """
    for table in _TABLES:
        op.drop_column(table, "claim_generation")

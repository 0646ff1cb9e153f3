"""Studies remember when their current round of receiving began.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21

Instances that arrive after a study was completed reopen it for a new
analysis round; the forced completion (``assembly.max_wait_s``) counts from
the first instance of that round, not from the study's first instance ever.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``studies.receiving_since`` (existing rows: their first instance)."""
    op.add_column(
        "studies", sa.Column("receiving_since", sa.DateTime(timezone=True), nullable=True)
    )
    op.execute("UPDATE studies SET receiving_since = first_received_at")


def downgrade() -> None:
    """Drop ``studies.receiving_since``."""
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("receiving_since")

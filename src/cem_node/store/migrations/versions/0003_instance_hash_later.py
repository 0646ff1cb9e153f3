"""An instance's SHA-256 may be computed after its C-STORE was answered.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21

Hashing a 9 MB mammogram with SHA-256 takes longer than writing and
fsyncing it on a CPU without SHA instructions; the node now answers the
C-STORE once the file and its row are durable and fills ``sha256`` just after.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Make ``instances.sha256`` nullable."""
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("sha256", existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    """Make ``instances.sha256`` required again (fails while hashes are pending)."""
    with op.batch_alter_table("instances") as batch:
        batch.alter_column("sha256", existing_type=sa.String(length=64), nullable=False)

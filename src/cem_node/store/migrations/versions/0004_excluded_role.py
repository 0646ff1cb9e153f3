"""An instance can be excluded from its study's analysis, with the reason.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

An image that cannot be used for a permanent reason (a header that does not
parse, an invalid identifier, pixel data that cannot be decoded) no longer
fails its whole study: the worker gives it the role ``excluded`` and
analyses the rest. The role's CHECK constraint gains the value.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROLES = ("low_energy", "recombined", "high_energy", "other")
#: ``ck_%(table_name)s_%(constraint_name)s`` of the models' naming convention.
_CONSTRAINT = "ck_instances_image_role"


def _role_check(roles: Sequence[str]) -> None:
    # SQLite changes a CHECK constraint by recreating the table; dropping the old
    # one deletes the pairings that reference it (ON DELETE CASCADE with foreign
    # keys on, which cannot be turned off inside the upgrade's transaction), so
    # they are kept aside and put back (same rows, same instance ids)
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("CREATE TEMPORARY TABLE pairings_0004 AS SELECT * FROM pairings")
    with op.batch_alter_table("instances") as batch:
        batch.drop_constraint(op.f(_CONSTRAINT), type_="check")
        batch.create_check_constraint(
            op.f(_CONSTRAINT), "role IN (" + ", ".join(f"'{r}'" for r in roles) + ")"
        )
    if sqlite:
        op.execute("INSERT INTO pairings SELECT * FROM pairings_0004")
        op.execute("DROP TABLE pairings_0004")


def upgrade() -> None:
    """Allow ``instances.role = 'excluded'``."""
    _role_check((*_ROLES, "excluded"))


def downgrade() -> None:
    """Forget exclusions (those instances are classified again) and the value."""
    op.execute(
        "UPDATE instances SET role = NULL, role_reason = NULL, classified_at = NULL "
        "WHERE role = 'excluded'"
    )
    _role_check(_ROLES)

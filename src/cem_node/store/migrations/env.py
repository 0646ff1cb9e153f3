"""Alembic environment of the node's database.

There is no alembic.ini: :mod:`cem_node.store.migrate` builds the Alembic
config in code and passes an open connection in
``config.attributes["connection"]``. Offline (SQL script) mode is not
supported.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import JSON, Connection

from cem_node.store.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render the models' custom types as plain, frozen SQLAlchemy types.

    Migrations must not import the models: they change, migrations must not.
    """
    if type_ != "type":
        return False
    if isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, JSON) and "postgresql" in getattr(obj, "_variant_mapping", {}):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return 'sa.JSON().with_variant(postgresql.JSONB(), "postgresql")'
    return False


def run_migrations(connection: Connection) -> None:
    """Run the migrations on ``connection`` in one transaction."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: let Alembic copy and move tables.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("cem-node migrations run online only: use `cem-node db upgrade`")

_connection = config.attributes.get("connection")
if _connection is None:
    raise RuntimeError(
        "no database connection given: run migrations through cem_node.store.migrate"
    )
run_migrations(_connection)

"""Claiming rows of a work queue, safely with several processes.

PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` lets each worker take a
different row without waiting. SQLite: the node's transactions start with
``BEGIN IMMEDIATE`` (one writer at a time), so a plain select-then-update in
one transaction is already exclusive.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Session

__all__ = ["for_claim"]

T = TypeVar("T", bound=tuple)  # type: ignore[type-arg]


def for_claim(statement: Select[T], session: Session) -> Select[T]:
    """Add the row locking that makes ``statement`` a claim on this backend."""
    if session.get_bind().dialect.name == "postgresql":
        return statement.with_for_update(skip_locked=True)
    return statement

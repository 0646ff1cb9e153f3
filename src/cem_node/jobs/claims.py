"""Claiming rows of a work queue, safely with several processes.

PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` lets each worker take a
different row without waiting. SQLite: the node's transactions start with
``BEGIN IMMEDIATE`` (one writer at a time), so a plain select-then-update in
one transaction is already exclusive.

A claim is held under a lease (``lease_expires_at``) that a heartbeat
(:class:`LeaseRenewal`) extends while the work runs; a process that stops
renewing loses its claim when the lease expires, and recovery hands the row
back. Every claim, and every hand-back, increments the row's
``claim_generation``: the fencing token. A claimer remembers the generation it
got and writes its outcome only while the row still has it, so a process
whose claim was handed back (it stalled, or the lease expired under it)
writes nothing instead of overwriting the newer claim's work.

Leases are compared with the database's clock on PostgreSQL (:func:`db_now`),
so that nodes on several hosts agree on when a lease expires whatever their
own clocks say; SQLite serves one host, whose clock it is.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping
from typing import Any, TypeVar

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from cem_node.store.models import Export, Job, utcnow

__all__ = ["LeaseRenewal", "advance_generation", "db_now", "for_claim"]

_LOG = logging.getLogger(__name__)

T = TypeVar("T", bound=tuple)  # type: ignore[type-arg]

#: Rows with a claim: a lease, a state and a generation.
Claimable = type[Job] | type[Export]


def for_claim(statement: Select[T], session: Session) -> Select[T]:
    """Add the row locking that makes ``statement`` a claim on this backend."""
    if session.get_bind().dialect.name == "postgresql":
        return statement.with_for_update(skip_locked=True)
    return statement


def db_now(session: Session) -> dt.datetime:
    """The time by which leases are granted and compared, as an aware UTC datetime.

    PostgreSQL: the server's clock (the start of ``session``'s transaction),
    one clock for every node. SQLite: this process's clock (an embedded
    database on one host has no other).
    """
    if session.get_bind().dialect.name == "postgresql":
        now = session.scalar(select(func.now()))
        assert now is not None
        return now.astimezone(dt.UTC)
    return utcnow()


def advance_generation(session: Session, row: Job | Export) -> bool:
    """Take ``row`` over: increment its generation if it is still as read.

    ``UPDATE ... SET claim_generation = g + 1 WHERE id = :id AND state =
    :state AND claim_generation = g`` with the state and generation ``row``
    was read with. The update also locks the row until ``session`` ends, so
    the changes that follow in the same transaction cannot be lost to a
    concurrent writer, nor overwrite one.

    Returns
    -------
    bool
        ``False`` if another transaction changed the row since it was read
        (nothing is changed then).
    """
    model = type(row)
    generation = row.claim_generation
    result: Any = session.execute(
        update(model)
        .where(
            model.id == row.id,
            model.state == row.state,
            model.claim_generation == generation,
        )
        .values(claim_generation=generation + 1)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    # what the database now holds; no second UPDATE at flush
    set_committed_value(row, "claim_generation", generation + 1)
    return True


class LeaseRenewal:
    """A heartbeat that keeps claimed rows' leases while their work runs.

    Use as a context manager around the work: a daemon thread extends each
    row's lease to ``lease_s`` from now (the database's clock) every
    ``lease_s / 3`` seconds, for as long as the row is still in ``state``
    with the generation it was claimed with. A row found otherwise has been
    taken back: it is not renewed again and is reported in :attr:`lost`.

    Parameters
    ----------
    sessions
        Database sessions (the heartbeat uses its own).
    model
        :class:`~cem_node.store.models.Job` or :class:`~cem_node.store.models.Export`.
    held
        The claimed rows: generation by id.
    state
        The state the rows hold while claimed (``analysing``, ``sending``).
    lease_s
        The lease granted at each renewal.
    what
        Names the work in log messages (``"job 12"``).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        model: Claimable,
        held: Mapping[int, int],
        *,
        state: object,
        lease_s: float,
        what: str,
    ) -> None:
        if lease_s <= 0:
            raise ValueError(f"a lease must last more than 0 s, not {lease_s:g} s")
        self._sessions = sessions
        self._model = model
        self._held = dict(held)
        self._state = state
        self._lease = dt.timedelta(seconds=lease_s)
        self._interval_s = lease_s / 3  # two renewals may fail before the lease runs out
        self._what = what
        self._lost: set[int] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> frozenset[int]:
        """Ids of the rows whose claim was found taken back."""
        return frozenset(self._lost)

    def renew(self) -> int:
        """Extend the leases still held now; return how many were."""
        model = self._model
        renewed = 0
        with self._sessions.begin() as session:
            expires = db_now(session) + self._lease
            for row_id, generation in self._held.items():
                if row_id in self._lost:
                    continue
                result: Any = session.execute(
                    update(model)
                    .where(
                        model.id == row_id,
                        model.state == self._state,
                        model.claim_generation == generation,
                    )
                    .values(lease_expires_at=expires)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:
                    renewed += 1
                else:
                    self._lost.add(row_id)
                    _LOG.warning(
                        "%s: the claim of %s %d was taken back (lease expired or handed "
                        "back); its outcome will be discarded",
                        self._what,
                        model.__tablename__,
                        row_id,
                    )
        return renewed

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                if not self.renew() and self._lost:
                    return  # nothing left to keep
            except Exception:  # the database is away: try again at the next beat
                _LOG.warning("%s: lease renewal failed", self._what, exc_info=True)

    def __enter__(self) -> LeaseRenewal:
        self._thread = threading.Thread(target=self._run, name=f"lease {self._what}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            # a renewal waits at most for a row lock held by a short transaction
            self._thread.join(timeout=60)

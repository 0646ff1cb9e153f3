"""Wake-ups across nodes: PostgreSQL ``NOTIFY`` when work appears, ``LISTEN`` to wake at once.

A transaction that queues an analysis job or adds an export sends ``NOTIFY``
on :data:`JOBS_CHANNEL` or :data:`EXPORTS_CHANNEL` (:func:`install_notify`).
PostgreSQL delivers a notification only when its transaction commits, so a
woken worker always finds the row it was woken for, and a rolled-back
transaction wakes nobody. Idle workers and exporters of every node on the
database hold one dedicated connection that listens (:class:`WakeListener`)
and wake their loop as soon as a notification arrives; polling stays as the
fallback for a lost connection and for work that becomes due later (a retry
after its back-off). SQLite has no notifications: there the node wakes its
own loops in-process and polls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from itertools import chain
from typing import Any

from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.orm import Session, sessionmaker

from cem_node.store.models import Export, ExportState, Job, JobState, utcnow

__all__ = [
    "EXPORTS_CHANNEL",
    "JOBS_CHANNEL",
    "WakeListener",
    "channels_to_notify",
    "install_notify",
]

_LOG = logging.getLogger(__name__)

#: Channel notified when an analysis job is queued.
JOBS_CHANNEL = "cem_node_jobs"
#: Channel notified when an export (a result object to send) is pending.
EXPORTS_CHANNEL = "cem_node_exports"

#: The session's ``info`` key of the channels already notified in its transaction.
_SENT = "cem_node_notified"
#: Seconds between two attempts to open the listening connection.
RECONNECT_S = 2.0
#: Seconds the listener waits for notifications before it checks whether to stop.
_WAIT_S = 0.5


def _became(obj: Any, state: Any, is_new: bool) -> bool:
    """Whether ``obj`` was inserted in ``state`` or set to it, in this flush.

    A new object's column default is in place after its INSERT; a modified
    one is judged by its history, which reads nothing from the database.
    """
    if is_new:
        return obj.__dict__.get("state") is state
    return state in inspect(obj).attrs.state.history.added


def _due(obj: Job | Export) -> bool:
    return obj.next_attempt_at is None or obj.next_attempt_at <= utcnow()


def channels_to_notify(new: set[Any], dirty: set[Any]) -> set[str]:
    """The channels that the objects of a flush make ready work for.

    A job set to ``queued`` and an export that is ``pending`` (new, or handed
    back) count when they can be claimed now; a retry that waits for its
    back-off does not (the poll finds it when it is due).

    Parameters
    ----------
    new, dirty
        The session's new and modified objects, before the flush.

    Returns
    -------
    set of str
        :data:`JOBS_CHANNEL` and/or :data:`EXPORTS_CHANNEL`.
    """
    channels: set[str] = set()
    for obj in chain(new, dirty):
        is_new = obj in new
        if isinstance(obj, Job) and _became(obj, JobState.QUEUED, is_new) and _due(obj):
            channels.add(JOBS_CHANNEL)
        elif isinstance(obj, Export) and _became(obj, ExportState.PENDING, is_new) and _due(obj):
            channels.add(EXPORTS_CHANNEL)
    return channels


def _after_flush(session: Session, _context: Any) -> None:
    channels = channels_to_notify(set(session.new), set(session.dirty))
    sent: set[str] = session.info.setdefault(_SENT, set())
    for channel in sorted(channels - sent):
        # in the flush's own transaction: delivered at its commit, dropped at a rollback
        session.connection().execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})
        sent.add(channel)


def _forget(session: Session, *_args: Any) -> None:
    session.info.pop(_SENT, None)


def install_notify(sessions: sessionmaker[Session], engine: Engine) -> bool:
    """Make the sessions of ``sessions`` send ``NOTIFY`` when they queue work (PostgreSQL).

    Returns
    -------
    bool
        False on a database without notifications (SQLite): nothing installed.
    """
    if engine.dialect.name != "postgresql":
        return False
    if not event.contains(sessions, "after_flush", _after_flush):
        event.listen(sessions, "after_flush", _after_flush)
        event.listen(sessions, "after_commit", _forget)
        event.listen(sessions, "after_rollback", _forget)
    return True


def _libpq_url(engine: Engine) -> str:
    """The engine's URL as libpq takes it (no SQLAlchemy driver name)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class WakeListener:
    """A thread holding one connection that ``LISTEN``s and calls a function per channel.

    After every (re)connection each function is called once: notifications
    sent while nobody listened are lost, the work they announced is not.

    Parameters
    ----------
    engine
        The node's PostgreSQL engine (its URL; the connection is not pooled).
    wake
        Channel name to the function called when it is notified.
    name
        A label for the thread and the logs.
    """

    def __init__(
        self, engine: Engine, wake: Mapping[str, Callable[[], None]], *, name: str = "listen"
    ) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError(f"LISTEN needs PostgreSQL, not {engine.dialect.name}")
        self._url = _libpq_url(engine)
        self._wake = dict(wake)
        self._stopped = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cem-node-{name}", daemon=True)

    def start(self) -> None:
        """Start listening (in the background)."""
        self._thread.start()

    def wait_listening(self, timeout_s: float) -> bool:
        """Whether the connection listens, waiting up to ``timeout_s``."""
        return self._listening.wait(timeout_s)

    def stop(self) -> None:
        """Stop and close the connection (within about half a second)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        import psycopg
        from psycopg import sql

        failures = 0
        while not self._stopped.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, application_name="cem-node-listen"
                ) as conn:
                    for channel in self._wake:
                        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    if failures:
                        _LOG.info("listening for new work again")
                    failures = 0
                    self._listening.set()
                    self._wake_all()
                    while not self._stopped.is_set():
                        for note in conn.notifies(timeout=_WAIT_S):
                            self._call(note.channel)
            except psycopg.Error as exc:
                self._listening.clear()
                failures += 1
                # the loops still poll: a lost connection delays work, it loses none
                log = _LOG.warning if failures == 1 else _LOG.debug
                log("cannot listen for new work (polling meanwhile): %s", exc)
                self._stopped.wait(RECONNECT_S)
        self._listening.clear()

    def _wake_all(self) -> None:
        for channel in self._wake:
            self._call(channel)

    def _call(self, channel: str) -> None:
        wake = self._wake.get(channel)
        if wake is not None:
            try:
                wake()
            except Exception:  # a wake-up must not end the listener
                _LOG.exception("waking for %s failed", channel)

"""SHA-256 of received instances, computed after the C-STORE was answered.

The C-STORE handler makes the file and its row durable and answers; the
hash (integrity record, audit) follows on a background thread at the lowest
CPU priority once the node has received nothing for a moment: during a burst
a hash would take a core from the receiving itself (SHA-256 runs at ~500 MB/s
on this project's CPU, slower than the network on loopback). "Received
nothing" is node-wide: every receiver process streams datasets into the
store's receiving folder, whose modification time changes with each one.
Hashes wait at most ``max_defer_s`` under a continuous stream. Updates are
written in batches. Rows still without a hash at start-up (a crash in
between) are queued again by :meth:`InstanceHasher.submit_missing`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cem_node.store.instance_files import InstanceFileStore
from cem_node.store.models import Instance

__all__ = ["InstanceHasher"]

_LOG = logging.getLogger(__name__)
_CHUNK = 1 << 22
#: Most updates written in one transaction.
BATCH = 64


def _sha256(files: InstanceFileStore, relative_path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with files.absolute(relative_path).open("rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
    except FileNotFoundError:  # replaced by a newer version meanwhile
        return None
    return digest.hexdigest()


def _write(sessions: sessionmaker[Session], done: list[tuple[int, str, str]]) -> None:
    with sessions.begin() as session:
        for instance_id, path, digest in done:
            # only if the row still names this file (not replaced meanwhile)
            session.execute(
                update(Instance)
                .where(Instance.id == instance_id, Instance.file_path == path)
                .values(sha256=digest)
            )


def _lowest_cpu_priority() -> None:
    """Give the calling thread the lowest CPU priority (nice 19).

    On Linux the nice value belongs to the thread: receiving keeps its
    priority and the hashing only gets what receiving leaves (hashlib
    releases the GIL while it hashes, so the receiving threads do not wait).
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux or not permitted: hash at normal priority
        _LOG.debug("cannot lower the hashing thread's priority", exc_info=True)


class InstanceHasher:
    """A background thread hashing stored instances and recording the hashes.

    Parameters
    ----------
    sessions
        Database sessions.
    files
        The instance file store.
    idle_s
        Hash once nothing was received for this long (by any process whose
        receiving folder is ``activity``).
    activity
        A folder whose modification time marks the last reception (the
        store's receiving folder); ``None``: this process's submissions only.
    max_defer_s
        Hash anyway once the oldest queued file has waited this long.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        files: InstanceFileStore,
        *,
        idle_s: float = 0.5,
        activity: Path | None = None,
        max_defer_s: float = 60.0,
    ) -> None:
        self._sessions = sessions
        self._files = files
        self._idle_s = idle_s
        self._activity = activity
        self._max_defer_s = max_defer_s
        self._stopping = threading.Event()
        self._last_submit = 0.0
        self._queue: queue.Queue[tuple[int, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="cem-node-hasher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit_missing(self) -> int:
        """Queue every instance still without a hash (e.g. after a crash); return how many."""
        with self._sessions.begin() as session:
            pending = session.execute(
                select(Instance.id, Instance.file_path).where(Instance.sha256.is_(None))
            ).all()
        for instance_id, path in pending:
            self.submit(instance_id, path)
        return len(pending)

    def submit(self, instance_id: int, relative_path: str) -> None:
        """Queue a stored file for hashing."""
        self._last_submit = time.monotonic()
        self._queue.put((instance_id, relative_path))

    def stop(self) -> None:
        """Hash what is queued, then stop."""
        if self._thread.is_alive():
            self._stopping.set()
            self._queue.put(None)
            self._thread.join()

    def _receiving_paused(self) -> bool:
        if time.monotonic() - self._last_submit < self._idle_s:
            return False
        if self._activity is None:
            return True
        try:
            changed = self._activity.stat().st_mtime
        except OSError:  # no receiving folder: nothing is being received
            return True
        return time.time() - changed >= self._idle_s

    def _run(self) -> None:
        _lowest_cpu_priority()
        stopping = False
        while not stopping:
            item = self._queue.get()
            # wait for a pause in the receiving (not when stopping: finish the queue)
            queued_at = time.monotonic()
            while (
                item is not None
                and not self._stopping.is_set()
                and not self._receiving_paused()
                and time.monotonic() - queued_at < self._max_defer_s
            ):
                time.sleep(self._idle_s / 2)
            batch = [item]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done = []
            for entry in batch:
                if entry is None:
                    stopping = True
                    continue
                digest = _sha256(self._files, entry[1])
                if digest is not None:
                    done.append((entry[0], entry[1], digest))
            if done:
                try:
                    _write(self._sessions, done)
                except Exception:  # queued again at the next start (submit_missing)
                    _LOG.exception("cannot record %d instance hash(es)", len(done))

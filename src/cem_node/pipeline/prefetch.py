"""Run an iterator ahead of its consumer in a background thread.

The analysis uses it to decode and preprocess the next view while the
detector runs on this one: the producer's work (pixel decoding, NumPy and
OpenCV) mostly releases the GIL, and so does PyTorch, so the two overlap.
The queue is bounded, so at most ``depth`` items wait; memory stays bounded
whatever the length of the study.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["prefetched"]

T = TypeVar("T")

#: How often a blocked producer checks whether the consumer has gone.
_POLL_S = 0.1


class _End:
    """The producer's last word: finished, or failed with ``error``."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class _Producer(Generic[T]):
    def __init__(self, items: Iterable[T], depth: int) -> None:
        self._items = items
        self.queue: queue.Queue[T | _End] = queue.Queue(maxsize=depth)
        self.stop = threading.Event()

    def _put(self, value: T | _End) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(value, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_End(exc))
            return
        self._put(_End())


def prefetched(items: Iterable[T], depth: int = 1, name: str = "prefetch") -> Iterator[T]:
    """Yield ``items``, produced up to ``depth`` ahead in a background thread.

    The items come in their order. An exception raised by the producer is
    raised in the consumer at the point it occurred, after the items before
    it. If the consumer stops early (an exception, ``close()``), the producer
    stops after the item it is working on.

    Parameters
    ----------
    items : iterable
        Evaluated in the background thread (a generator's body runs there).
    depth : int
        Items produced ahead of the consumer, at least 1.
    name : str
        The thread's name, for logs and debuggers.
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    producer = _Producer(items, depth)
    thread = threading.Thread(target=producer.run, name=name, daemon=True)
    thread.start()
    try:
        while True:
            value = producer.queue.get()
            if isinstance(value, _End):
                if value.error is not None:
                    raise value.error
                return
            yield value
    finally:
        producer.stop.set()
        thread.join()

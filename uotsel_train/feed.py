"""Batches made ahead of time: a background thread loads, augments and places the batches of
the coming steps while the devices compute the current one.

Every batch is a pure function of its step number and the stream positions, so prefetching
changes nothing about which images a step sees; each item carries the stream positions *after*
its step, which is what a checkpoint taken after that step must store.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Feeder"]


class Feeder:
    """Runs ``make(step) -> item`` for ``step = start, start + 1, ...`` in a daemon thread,
    keeping up to ``depth`` items ready. ``next()`` returns them in order and re-raises any
    exception of ``make``; ``close()`` (or the ``with`` block's end) stops the thread."""

    def __init__(self, make: Callable[[int], Any], start: int, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(make, start), daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, make: Callable[[int], Any], step: int) -> None:
        while not self._stop.is_set():
            try:
                item = (make(step), None)
            except BaseException as err:  # handed to the consumer, raised there
                self._put((None, err))
                return
            if not self._put(item):
                return
            step += 1

    def next(self) -> Any:
        item, err = self._queue.get()
        if err is not None:
            self.close()
            raise err
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Feeder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

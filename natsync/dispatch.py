"""The event thread: runs event callbacks (``error_cb``, ``disconnected_cb`` ...) in order,
off the reader thread and outside every library lock.

Message callbacks have their own delivery thread per subscription (see
``subscription.py``), so that a callback that blocks delays only its own subscription.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["EventDispatcher"]

log = logging.getLogger("natsync")


class EventDispatcher:
    """A thread that calls posted functions one at a time, in the order posted."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread: threading.Thread | None = None

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; never blocks."""
        with self._cond:
            if self._stopping:
                return
            self._queue.append((fn, args))
            if self._thread is None:
                # started lazily: most clients never post an event; started under the
                # lock so that stop() never sees a thread that was not started
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait(5.0)
                if not self._queue:
                    return
                fn, args = self._queue.popleft()
            try:
                fn(*args)
            except Exception:  # a user callback failed: log, never die
                log.exception("event callback %r raised", getattr(fn, "__name__", fn))

    def stop(self, timeout: float | None = 5.0) -> None:
        """Run what is queued, then end the thread and join it (unless called from it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                log.warning("event callback still running after %s s; not waiting for it", timeout)

"""The event thread: runs event callbacks (``error_cb``, ``disconnected_cb`` ...) in order,
off the reader thread and outside every library lock.

Message callbacks have their own delivery thread per subscription (see
``subscription.py``), so that a callback that blocks delays only its own subscription.

The queue is bounded for errors: at most :data:`MAX_QUEUED_ERRORS` errors wait for
``error_cb`` at a time; more are counted, not kept, and ``error_cb`` later gets one
:class:`NatsError` saying how many it missed. Errors are queued without their traceback
(a traceback keeps every frame, and a failed callback's message, alive).

Threads and locks: ``post`` may be called from any thread and never blocks; ``_cond``
guards the queue and the error counters (the bound is checked and the event appended in
one critical section) and is never held while a callback runs. The thread is started on the
first event and ended by ``stop``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from .errors import NatsError

__all__ = ["EventDispatcher", "MAX_QUEUED_ERRORS"]

log: logging.Logger = logging.getLogger("natsync")

MAX_QUEUED_ERRORS: Final = 1000


class EventDispatcher:
    """A thread that calls posted functions one at a time, in the order posted."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...], bool]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._errors = 0  # errors queued now
        self._missed = 0  # errors not queued since the last summary
        self._error_fn: Callable[..., Any] | None = None
        self.errors_dropped: int = 0  # in all

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; never blocks."""
        self._post(fn, args, False)

    def post_error(self, fn: Callable[[NatsError], Any], err: NatsError) -> None:
        """Queue ``fn(err)``, unless too many errors wait already (then count it)."""
        _strip(err)
        self._post(fn, (err,), True)

    def _post(self, fn: Callable[..., Any], args: tuple[Any, ...], is_error: bool) -> None:
        with self._cond:  # the bound check and the append in one step: never overshoots
            if self._stopping:
                return
            if is_error and self._errors >= MAX_QUEUED_ERRORS:
                self._missed += 1
                self.errors_dropped += 1
                self._error_fn = fn
                return
            self._queue.append((fn, args, is_error))
            if is_error:
                self._errors += 1
            if self._thread is None:
                # started lazily: most clients never post an event; started under the
                # lock so that stop() never sees a thread that was not started
                t = threading.Thread(target=self._run, name=self._name, daemon=True)
                try:
                    t.start()
                    self._thread = t
                except RuntimeError:
                    # interpreter shutdown (CPython >= 3.12 starts no thread in an
                    # atexit handler): stop() runs what is queued on its own thread
                    pass
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    if self._missed and self._error_fn is not None:
                        n, self._missed = self._missed, 0
                        summary = NatsError(
                            f"{n} more errors were not passed to error_cb: it was still busy with "
                            f"{MAX_QUEUED_ERRORS} earlier ones"
                        )
                        self._queue.append((self._error_fn, (summary,), True))
                        self._errors += 1
                        break
                    self._cond.wait()
                if not self._queue:
                    return
                fn, args, is_error = self._queue.popleft()
                if is_error:
                    self._errors -= 1
            try:
                fn(*args)
            except Exception:  # a user callback failed: log, never die
                log.exception("event callback %r raised", getattr(fn, "__name__", fn))
            del fn, args

    def stop(self, timeout: float | None = 5.0) -> None:
        """Run what is queued, then end the thread and join it (unless called from it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            inline = self._thread is None and bool(self._queue)
        if inline:  # no thread could be started (interpreter shutdown): run them here
            self._run()
            return
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                log.warning(
                    "thread %s still running an event callback after %s s; not waiting for it",
                    t.name,
                    timeout,
                )

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread


def _strip(err: BaseException) -> None:
    """Drop the tracebacks of *err* and its causes: they keep frames (and messages) alive."""
    seen = 0
    e: BaseException | None = err
    while e is not None and seen < 8:
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
        seen += 1

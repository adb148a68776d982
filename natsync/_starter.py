"""Starting a connection's reader thread off the caller's path.

``connect()`` starts no thread. Until a connection's reader thread runs, a call that
waits for the server (``flush()``, ``rtt()``) reads the socket itself, on the caller's
thread; ``subscribe()`` and ``request()`` start the reader at once. Every other
connection gets its reader from here, :data:`READER_DELAY` seconds after it connected,
so that a connection that lives longer than that is read continuously (server PINGs
answered, ``-ERR`` reported, a closed connection noticed) as if its reader had started
in ``connect()``, while a short one (connect, flush, close: a health check, a command
line tool) never creates a thread at all.

Threads and locks: one process-wide thread, ``natsync-reader-starter``, exists only
while some connection waits for its reader; it ends when none does, so it is never
joined. It only calls :meth:`Client._ensure_reader` (which checks, under the client's
reader lock, that the client is still open): no user code, no I/O. ``_lock`` guards the
queue and the thread handle. After ``os.fork()`` the child starts with a fresh starter.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .client import Client

__all__ = ["READER_DELAY", "schedule"]

log = logging.getLogger("natsync")

# How long a new connection may go without a reader thread.
READER_DELAY: Final = 0.05


class _Starter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # (due time, client): due times only grow, so the queue stays in order
        self._due: deque[tuple[float, weakref.ref[Client]]] = deque()
        self._thread: threading.Thread | None = None

    def schedule(self, client: Client) -> None:
        with self._lock:
            self._due.append((time.monotonic() + READER_DELAY, weakref.ref(client)))
            if self._thread is not None:
                return  # it wakes for this one after the entries before it
            t = threading.Thread(target=self._run, name="natsync-reader-starter", daemon=True)
            self._thread = t
        try:
            t.start()
        except RuntimeError as e:  # interpreter shutdown: the caller's flush() reads itself
            log.debug("cannot start the reader starter: %s", e)
            with self._lock:
                if self._thread is t:
                    self._thread = None

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:
                if self._thread is not me:  # replaced after a fork
                    return
                if not self._due:
                    self._thread = None
                    return
                due, ref = self._due[0]
                left = due - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                self._due.popleft()
            client = ref()
            if client is not None:
                try:
                    client._ensure_reader()
                except RuntimeError as e:  # interpreter shutdown
                    log.debug("cannot start a reader: %s", e)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._due = deque()
        self._thread = None


_starter = _Starter()
schedule = _starter.schedule

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_starter._after_fork)

"""The request mux: many requests share one wildcard inbox subscription.

``request()`` registers a :class:`Waiter` under a token, publishes with reply subject
``<prefix><token>`` and waits on its own deadline. The reader thread hands every message
of the inbox subscription to :meth:`RequestMux.on_response`, which fills the waiter.

Threads and guards: ``register`` and ``forget`` run on the requesting threads,
``on_response`` on the reader thread, ``fail_all`` on the closing thread.

* the token counter and the "failed" mark: the mux's ``_lock`` (``register`` and
  ``fail_all`` take it, so a request registered after ``fail_all`` fails at once);
* the map: every access is one single-key dict operation (``[k] = v``, ``pop``,
  ``popitem``), each atomic on every CPython build (the dict's own lock on
  free-threaded CPython), and nothing iterates it;
* a :class:`Waiter` is filled once: the first setter wins by popping the one item of a
  list (``list.pop`` is atomic on every build); it never runs user code.

No lock of the client is taken here.
"""

from __future__ import annotations

import threading
from typing import Any

from .msg import Msg

__all__ = ["RequestMux", "Waiter"]


class Waiter:
    """A one-shot slot that a thread waits on and another fills (flush, request)."""

    __slots__ = ("_lock", "_once", "value", "error")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._once = [None]  # the first set() pops it (atomic): only it fills the slot
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        """Fill the slot and wake the waiter; later calls do nothing."""
        try:
            self._once.pop()
        except IndexError:
            return
        self.value = value
        self.error = error
        self._lock.release()

    @property
    def filled(self) -> bool:
        """True once set (valid until :meth:`wait` is called)."""
        return not self._lock.locked()

    def wait(self, timeout: float | None) -> bool:
        """Wait until filled or *timeout* seconds; True when filled."""
        if timeout is None:
            return self._lock.acquire()
        return self._lock.acquire(True, timeout if timeout > 0.0 else 0.0)  # (positional: cheaper)


class Latch:
    """``threading.Event``'s ``set`` / ``is_set`` / ``wait`` for an event that is set once
    and never cleared (a client's "closing" and "closed"): a lock held until the set,
    much cheaper to create than an Event (which builds a Condition)."""

    __slots__ = ("_lock", "_once", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._once = [None]  # the first set() pops it (atomic): only it releases
        self._set = False  # written once, before the release (read without a lock)

    def set(self) -> None:
        try:
            self._once.pop()
        except IndexError:
            return
        self._set = True
        self._lock.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until set or *timeout* seconds; True when set."""
        if self._set:
            return True
        if self._lock.acquire() if timeout is None else self._lock.acquire(timeout=max(timeout, 0.0)):
            self._lock.release()  # the next waiter wakes in turn
        return self._set


class RequestMux:
    """Tokens of requests in flight, and their waiters."""

    __slots__ = ("prefix", "_map", "_lock", "_n", "_failed")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # "<inbox_prefix>.<nuid>." ; the subscription is prefix + "*"
        self._map: dict[str, Waiter] = {}  # single-key operations only (see above)
        self._lock = threading.Lock()  # guards _n and _failed
        self._n = 0
        self._failed: BaseException | None = None

    def register(self) -> tuple[str, Waiter]:
        """A new reply subject and the waiter its response fills (filled with the
        error at once when :meth:`fail_all` ran before)."""
        w = Waiter()
        lock = self._lock
        lock.acquire()  # (not ``with``: a third of the cost on CPython 3.11)
        try:
            self._n = n = self._n + 1
            token = str(n)
            self._map[token] = w
            failed = self._failed
        finally:
            lock.release()
        if failed is not None:
            self._map.pop(token, None)
            w.set(None, failed)
        return self.prefix + token, w

    def forget(self, reply: str) -> None:
        """The request is over (answered, timed out or failed)."""
        self._map.pop(reply[len(self.prefix) :], None)

    def on_response(self, msg: Msg) -> None:
        """A message on the inbox subscription (reader thread)."""
        w = self._map.pop(msg.subject[len(self.prefix) :], None)
        if w is not None:
            w.set(msg)

    def fail_all(self, error: BaseException) -> None:
        """Wake every request in flight with *error* (close), and every later one."""
        with self._lock:
            self._failed = error
        m = self._map
        while True:
            try:
                _, w = m.popitem()  # one step each: a response popped meanwhile is fine
            except KeyError:
                return
            w.set(None, error)

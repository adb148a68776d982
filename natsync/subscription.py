"""Subscriptions: a pending queue fed by the reader thread, consumed by the user's
thread (``next_msg``, iteration) or by a delivery thread that runs the callback.

State: one per subscription, ``ACTIVE`` -> ``DRAINING`` -> ``ENDED`` (never back). The
owner (the client) changes it only while holding its own lock, and every path that ends
a subscription also removes it from the client's table and, when connected, sends its
UNSUB. Once ENDED no message is added; what is queued may still be taken, unless the
end discarded it (``unsubscribe()``, ``close()``).

Threads and locks:

* **Guard: ``_cond``** (its lock ``_mutex``) guards the state check and the append of
  the reader, ``_waiters``, ``_kicked``, ``_slow`` and the counters the reader writes
  (``_in_bytes``, ``_received``, ``dropped``; the reader is their only writer, so
  reading them for statistics without the lock gives a recent value). The reader
  appends, checks "ended" and looks at ``_waiters`` in one critical section, and a
  consumer announces itself in ``_waiters`` and looks at the queue in another, so no
  wake-up is lost whichever comes first (no argument rests on the GIL or on the order
  in which two threads see each other's plain writes);
* a ``next_msg`` consumer takes the next message and checks "ended" in one critical
  section under ``_cond``, so the last message before the end is never left behind;
  the reader notifies once per sleep (``_kicked``), and a consumer that takes a
  message and sees more, and more waiters, wakes the next one: two waiters are each
  woken by their own message;
* the queue is a ``collections.deque``, whose ``append``/``extend``/``popleft`` are
  each atomic on every CPython build: the delivery thread, a callback subscription's
  only consumer, pops without the lock while messages are queued and takes the lock
  (``_idle``) only when the queue is empty, to check "ended" and "empty" in one step;
  it alone writes ``_out_bytes`` and ``delivered`` (under ``_cond`` when several
  ``next_msg`` callers consume);
* the delivery thread sleeps on its own lock ``_wake`` (cheaper than a condition: no
  lock made per sleep, no re-acquiring ``_cond`` on waking): it sets ``_cb_sleeping``
  under ``_cond`` and acquires ``_wake``; the reader (after an append) or ``_end``
  clears ``_cb_sleeping`` under ``_cond`` and releases ``_wake``, so each sleep is
  ended by exactly one release, and ``_wake`` is held at every other time;
* the state is changed under the client's lock and ``_cond`` (``_end``);
* nothing slow and no user code runs under ``_cond``; ``_cond`` is taken after the
  client's lock, never before it.

This module does not import the client: a subscription talks to its owner through the
narrow :class:`SubOwner` interface (unsubscribe, drain, report an error).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final, Protocol

from .errors import BadSubscriptionError, ConnectionClosedError, NatsError, TimeoutError
from .msg import Msg

if TYPE_CHECKING:  # pragma: no cover
    from types import TracebackType

__all__ = ["Subscription", "SubOwner", "MsgHandler", "ACTIVE", "DRAINING", "ENDED"]

log: logging.Logger = logging.getLogger("natsync")
# a library prints nothing by default: without this, logging's lastResort writes to stderr
log.addHandler(logging.NullHandler())

_NO_LIMIT = sys.maxsize

ACTIVE: Final = 0
DRAINING: Final = 1
ENDED: Final = 2

MsgHandler = Callable[[Msg], object]


class SubOwner(Protocol):
    """What a subscription needs from its client (and nothing more)."""

    def _unsubscribe(self, sub: Subscription, limit: int | None) -> None: ...

    def _drain_sub(self, sub: Subscription, timeout: float | None) -> None: ...

    def _report_error(self, err: BaseException) -> None: ...

    def _slow_consumer(self, sub: Subscription) -> None: ...

    def _sub_reached_max(self, sub: Subscription) -> None: ...

    def _sub_finished(self, sub: Subscription) -> None: ...


class Subscription:
    """Interest in a subject; created by :meth:`Client.subscribe`.

    Attributes: ``subject``, ``queue`` (or None), ``sid``, and the counters
    ``pending_msgs``, ``pending_bytes``, ``delivered`` (messages handed to the
    application), ``dropped`` (messages dropped by the pending limits), and
    ``is_valid`` (False once the subscription has ended).
    """

    def __init__(
        self,
        client: SubOwner,
        sid: int,
        subject: str,
        queue: str | None,
        cb: MsgHandler | None,
        pending_msgs_limit: int | None,
        pending_bytes_limit: int | None,
    ) -> None:
        self._client = client
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self._cb = cb
        self._queue: deque[Msg] = deque()
        self._mutex = threading.Lock()  # the lock of _cond (entered directly: cheaper)
        self._cond = threading.Condition(self._mutex)
        self._waiters = 0  # consumers looking at or sleeping on the queue (changed under _cond)
        self._kicked = False  # the reader notified and no consumer has woken since (_cond)
        self._pmsgs = _NO_LIMIT if pending_msgs_limit is None else pending_msgs_limit
        self._pbytes = _NO_LIMIT if pending_bytes_limit is None else pending_bytes_limit
        self._in_bytes = 0  # reader, under _cond
        self._out_bytes = 0  # consumer
        self._received = 0  # reader, under _cond
        self._received_at_sub = 0  # _received when the current connection's SUB was sent
        self.dropped: int = 0  # reader, under _cond
        self.delivered: int = 0  # consumer
        self._slow = False  # in a slow-consumer episode (reader, under _cond)
        self._max: int | None = None  # auto-unsubscribe after this many messages in all
        self._state = ACTIVE  # changed under the client's lock
        self._end_error: NatsError | None = None  # raised by next_msg once the queue is empty
        self._discard = False  # ended "now": drop what is pending
        self._done = threading.Event()  # set when the consumer has finished with everything
        self._thread: threading.Thread | None = None
        # The delivery thread's sleep (callback subscriptions): it sets _cb_sleeping
        # (under _cond) and acquires _wake; whoever clears _cb_sleeping (under _cond)
        # releases _wake, once. _wake is held at every other time.
        self._cb_sleeping = False
        self._wake = threading.Lock()
        self._wake.acquire()
        if cb is not None:
            self._thread = threading.Thread(target=self._run, name=f"natsync-sub-{sid}", daemon=True)

    @property
    def _ended(self) -> bool:
        return self._state == ENDED

    @property
    def _sleeping(self) -> bool:
        """A consumer is waiting for a message (for tests and diagnostics)."""
        return self._waiters > 0

    # --- introspection -------------------------------------------------------------------

    @property
    def pending_msgs(self) -> int:
        """Messages received and not yet handed to the application."""
        return len(self._queue)

    @property
    def pending_bytes(self) -> int:
        """Payload bytes received and not yet handed to the application."""
        return max(0, self._in_bytes - self._out_bytes)

    @property
    def is_valid(self) -> bool:
        """False once the subscription has ended (unsubscribed, limit reached, drained, closed)."""
        return self._state != ENDED

    @property
    def pending_limits(self) -> tuple[int | None, int | None]:
        """The ``(msgs, bytes)`` pending limits; None means no limit."""
        return (
            None if self._pmsgs == _NO_LIMIT else self._pmsgs,
            None if self._pbytes == _NO_LIMIT else self._pbytes,
        )

    def set_pending_limits(self, msgs: int | None, bytes: int | None) -> None:  # noqa: A002 - nats-py name
        """Set the limits beyond which new messages are dropped (None = no limit)."""
        for name, v in (("msgs", msgs), ("bytes", bytes)):
            if v is not None and (type(v) is not int or v <= 0):
                raise ValueError(f"pending limit {name} must be a positive int or None, not {v!r}")
        self._pmsgs = _NO_LIMIT if msgs is None else msgs
        self._pbytes = _NO_LIMIT if bytes is None else bytes

    def __repr__(self) -> str:
        kind = "callback" if self._cb is not None else "sync"
        q = f" queue={self.queue!r}" if self.queue else ""
        state = ("", " draining", " ended")[self._state]
        return f"<natsync.Subscription sid={self.sid} subject={self.subject!r}{q} {kind}{state}>"

    # --- reader side ---------------------------------------------------------------------

    def _enqueue(self, msg: Msg) -> None:
        """Called on the reader thread for each message of this subscription."""
        size = len(msg.data)
        q = self._queue
        mutex = self._mutex
        slow = False
        mutex.acquire()  # (not ``with``: half the cost on CPython 3.11)
        try:
            if self._state == ENDED:
                return
            if len(q) >= self._pmsgs or self._in_bytes - self._out_bytes + size > self._pbytes:
                self.dropped += 1
                if not self._slow:
                    self._slow = slow = True
            else:
                self._slow = False
                self._in_bytes += size
                q.append(msg)
            self._received += 1
            at_max = self._max is not None and self._received >= self._max
            if self._cb_sleeping:
                if not at_max:
                    self._cb_sleeping = False
                    self._wake.release()
            elif not at_max and self._waiters and not self._kicked:
                self._kicked = True
                self._cond.notify()
        finally:
            mutex.release()
        if slow:
            self._client._slow_consumer(self)
        if at_max:
            self._client._sub_reached_max(self)  # ends it (and wakes every waiter)

    def _enqueue_run(self, msgs: list[Msg], nbytes: int) -> None:
        """Called on the reader thread for consecutive messages of this subscription
        (*nbytes*: their payload bytes): one append and at most one wake-up for all."""
        q = self._queue
        n = len(msgs)
        if (
            self._max is not None
            or len(q) + n > self._pmsgs
            or self._in_bytes - self._out_bytes + nbytes > self._pbytes
        ):
            for msg in msgs:  # near a limit: message by message
                self._enqueue(msg)
            return
        mutex = self._mutex
        mutex.acquire()
        try:
            if self._state == ENDED:
                return
            # an auto-unsubscribe count set since the check above: message by message
            one_by_one = self._max is not None
            if not one_by_one:
                self._slow = False
                self._in_bytes += nbytes
                q.extend(msgs)
                self._received += n
                if self._cb_sleeping:
                    self._cb_sleeping = False
                    self._wake.release()
                elif self._waiters and not self._kicked:
                    self._kicked = True
                    self._cond.notify()
        finally:
            mutex.release()
        if one_by_one:
            for msg in msgs:
                self._enqueue(msg)

    def _end(self, error: NatsError, discard: bool = False) -> None:
        """No more messages will arrive (ENDED). Called with the client's lock held (or in a
        forked child); safe more than once. *discard* drops what is pending."""
        with self._cond:
            if self._state != ENDED:
                self._state = ENDED
                self._end_error = error
            elif isinstance(error, ConnectionClosedError):
                self._end_error = error
            if discard:
                self._discard = True
                self._queue.clear()
                self._out_bytes = self._in_bytes
            self._cond.notify_all()
            if self._cb_sleeping:
                self._cb_sleeping = False
                self._wake.release()
            if self._thread is None and not self._queue:
                self._done.set()

    def _after_fork(self, error: NatsError) -> None:
        """In a forked child: end this copy of a parent's subscription without touching
        anything the parent's threads may have held (locks are replaced, not acquired)."""
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._waiters = 0
        self._kicked = False
        self._cb_sleeping = False
        self._wake = threading.Lock()
        self._wake.acquire()
        self._done = threading.Event()
        self._thread = None
        self._end(error, discard=True)

    # --- consumer side -------------------------------------------------------------------

    def _next(self, deadline: float | None) -> Msg | None:
        """Take the next message, waiting until *deadline* (None: no limit).

        Returns None on timeout; raises the end error once ended with nothing pending.
        "Ended" and "take" are checked in one critical section.
        """
        cond = self._cond
        q = self._queue
        with self._mutex:  # _cond's lock, so cond.wait() below may release it
            while True:
                self._kicked = False
                self._waiters += 1  # announced before looking: the reader appends, then looks
                if q:
                    self._waiters -= 1
                    msg = q.popleft()
                    self._out_bytes += len(msg.data)
                    self.delivered += 1
                    if q and self._waiters:
                        cond.notify()  # more for another waiter: wake it (the reader may not)
                    return msg
                if self._state == ENDED:
                    self._waiters -= 1
                    if self._thread is None:
                        self._done.set()
                    raise self._end_error or BadSubscriptionError(f"subscription {self.sid} has ended")
                if deadline is None:
                    left = None
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._waiters -= 1
                        return None
                try:
                    cond.wait(left)
                finally:
                    self._waiters -= 1

    def _take_upto(self, n: int) -> list[Msg]:
        """Take up to *n* queued messages at once, without waiting (for a library
        consumer that is this subscription's only reader, such as the ordered
        consumer): [] when none is queued. Counted as delivered."""
        q = self._queue
        with self._mutex:
            k = min(n, len(q))
            if not k:
                return []
            popleft = q.popleft
            msgs = [popleft() for _ in range(k)]
            self._out_bytes += sum(len(m.data) for m in msgs)
            self.delivered += k
            if q and self._waiters:
                self._cond.notify()
            return msgs

    def next_msg(self, timeout: float | None = 1.0) -> Msg:
        """Return the next message, waiting up to *timeout* seconds (None: until one comes).

        Raises :class:`natsync.TimeoutError` when none arrived in time,
        :class:`BadSubscriptionError` when the subscription has ended and nothing is
        pending, :class:`ConnectionClosedError` when the client closed (what was still
        queued then is discarded).
        """
        if self._cb is not None:
            raise BadSubscriptionError(
                f"subscription {self.sid} has a callback: messages go to it, not to next_msg()"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        msg = self._next(deadline)
        if msg is None:
            raise TimeoutError(f"no message on {self.subject!r} within {timeout} s")
        return msg

    def __iter__(self) -> Iterator[Msg]:
        """Yield messages as they arrive; ends when the subscription ends.

        Raises :class:`ConnectionClosedError` if the client closes meanwhile.
        """
        while True:
            try:
                yield self.next_msg(timeout=None)
            except ConnectionClosedError:
                raise
            except BadSubscriptionError:
                return

    def _run(self) -> None:
        """Delivery thread of a callback subscription."""
        cb = self._cb
        assert cb is not None
        client = self._client
        # This thread is the only consumer: it takes messages without the lock (deque's
        # popleft is atomic on every build); when the queue is empty, _idle() (locked:
        # "ended" and "empty" in one step) ends the loop or sleeps until the reader or
        # the end wakes it.
        popleft = self._queue.popleft
        idle = self._idle
        try:
            while True:
                try:
                    msg = popleft()
                except IndexError:
                    if idle():
                        continue
                    break  # ended and nothing left
                self._out_bytes += len(msg.data)
                self.delivered += 1
                if self._discard:  # discarded (closed) after it was taken
                    break
                try:
                    cb(msg)
                except Exception as e:  # the callback's failure must not stop delivery
                    log.debug("callback of subscription %d (%r) raised: %r", self.sid, self.subject, e)
                    client._report_error(e)
                del msg
        finally:
            self._done.set()
            client._sub_finished(self)

    def _idle(self) -> bool:
        """The delivery thread found the queue empty: False when the subscription has
        ended and nothing is queued; else True once there may be more (it slept until a
        message or the end came)."""
        mutex = self._mutex
        mutex.acquire()
        try:
            if self._queue:
                return True
            if self._state == ENDED:
                return False
            self._cb_sleeping = True  # under _cond: the reader or _end sees it and wakes us
        finally:
            mutex.release()
        self._wake.acquire()  # released once, by whoever cleared _cb_sleeping
        return True

    # --- user operations -----------------------------------------------------------------

    def unsubscribe(self, limit: int | None = None) -> None:
        """End the subscription now, or after *limit* messages in all (auto-unsubscribe).

        Messages still pending when it ends now are discarded; use :meth:`drain` to
        process them first.
        """
        self._client._unsubscribe(self, limit)

    def drain(self, timeout: float | None = None) -> None:
        """Stop interest, deliver what is pending, then remove the subscription. Blocks.

        For a callback subscription this returns when the callback has processed
        every pending message; for a synchronous one, when every message the server
        sent has been received (take them with :meth:`next_msg` or iteration).
        Raises :class:`natsync.TimeoutError` after *timeout* seconds (default:
        the client's ``drain_timeout``).
        """
        self._client._drain_sub(self, timeout)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != ENDED:
            try:
                self.unsubscribe()
            except (ConnectionClosedError, BadSubscriptionError):
                pass

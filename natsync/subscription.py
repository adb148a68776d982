"""Subscriptions: a pending queue fed by the reader thread, consumed by the user's
thread (``next_msg``, iteration) or by a delivery thread that runs the callback.

Threading: the reader thread is the only writer of ``_in_bytes``, ``_received`` and
``dropped``; the consumer (user thread or delivery thread) is the only writer of
``_out_bytes`` and ``delivered``. The deque itself is safe for one appender and one
popper. ``_cond`` only serves to sleep and wake; nothing slow runs under it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .errors import BadSubscriptionError, ConnectionClosedError, NatsError, TimeoutError
from .msg import Msg

if TYPE_CHECKING:  # pragma: no cover
    from types import TracebackType

    from .client import Client

__all__ = ["Subscription"]

log = logging.getLogger("natsync")
# a library prints nothing by default: without this, logging's lastResort writes to stderr
log.addHandler(logging.NullHandler())

_NO_LIMIT = sys.maxsize

MsgHandler = Callable[[Msg], object]


class Subscription:
    """Interest in a subject; created by :meth:`Client.subscribe`.

    Attributes: ``subject``, ``queue`` (or None), ``sid``, and the counters
    ``pending_msgs``, ``pending_bytes``, ``delivered`` (messages handed to the
    application), ``dropped`` (messages dropped by the pending limits), and
    ``is_valid`` (False once the subscription has ended).
    """

    def __init__(
        self,
        client: Client,
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
        self._cond = threading.Condition(threading.Lock())
        self._sleeping = False
        self._pmsgs = _NO_LIMIT if pending_msgs_limit is None else pending_msgs_limit
        self._pbytes = _NO_LIMIT if pending_bytes_limit is None else pending_bytes_limit
        self._in_bytes = 0  # reader
        self._out_bytes = 0  # consumer
        self._received = 0  # reader
        self.dropped = 0  # reader
        self.delivered = 0  # consumer
        self._slow = False  # in a slow-consumer episode (reader)
        self._max: int | None = None  # auto-unsubscribe after this many messages in all
        # Once _ended is set no message will be added; what is queued may still be taken.
        self._ended = False
        self._end_error: NatsError | None = None  # raised by next_msg once the queue is empty
        self._discard = False  # unsubscribed "now": drop what is pending
        self._draining = False
        self._done = threading.Event()  # set when the consumer has finished with everything
        self._thread: threading.Thread | None = None
        if cb is not None:
            self._thread = threading.Thread(target=self._run, name=f"natsync-sub-{sid}", daemon=True)

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
        return not self._ended

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
        state = "" if not self._ended else " ended"
        return f"<natsync.Subscription sid={self.sid} subject={self.subject!r}{q} {kind}{state}>"

    # --- reader side ---------------------------------------------------------------------

    def _enqueue(self, msg: Msg) -> None:
        """Called on the reader thread for each message of this subscription."""
        if self._ended:
            return
        q = self._queue
        size = len(msg.data)
        if len(q) >= self._pmsgs or self._in_bytes - self._out_bytes + size > self._pbytes:
            self.dropped += 1
            if not self._slow:
                self._slow = True
                self._client._slow_consumer(self)
        else:
            if self._slow:
                self._slow = False
            self._in_bytes += size
            q.append(msg)
        self._received += 1
        if self._max is not None and self._received >= self._max:
            self._client._remove_sub(self)
            self._end(
                BadSubscriptionError(f"subscription {self.sid} reached its limit of {self._max} messages")
            )
        elif self._sleeping:
            # One wake-up per sleep: until the consumer sleeps again it will find the queue
            # non-empty, so the messages that follow need no notify (a Condition in Python).
            self._sleeping = False
            with self._cond:
                self._cond.notify()

    def _end(self, error: NatsError, discard: bool = False) -> None:
        """No more messages will arrive. Safe to call from any thread, more than once."""
        with self._cond:
            if not self._ended:
                self._ended = True
                self._end_error = error
            if discard:
                self._discard = True
                self._queue.clear()
            elif isinstance(error, ConnectionClosedError):
                self._end_error = error
            self._cond.notify_all()
        if self._thread is None and not self._queue:
            self._done.set()

    def _after_fork(self, error: NatsError) -> None:
        """In a forked child: end this copy of a parent's subscription without touching
        anything the parent's threads may have held (locks are replaced, not acquired)."""
        self._cond = threading.Condition(threading.Lock())
        self._done = threading.Event()
        self._thread = None
        self._end(error, discard=True)

    # --- consumer side -------------------------------------------------------------------

    def _wait(self, deadline: float | None) -> bool:
        """Sleep until a message arrives, the subscription ends or *deadline*. True if woken."""
        with self._cond:
            self._sleeping = True
            try:
                while not self._queue and not self._ended:
                    if deadline is None:
                        self._cond.wait(1.0)
                    else:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return False
                        self._cond.wait(min(left, 1.0))
                    self._sleeping = True  # re-arm (the reader clears it) before checking again
            finally:
                self._sleeping = False
        return True

    def _take(self) -> Msg | None:
        try:
            msg = self._queue.popleft()
        except IndexError:
            return None
        self._out_bytes += len(msg.data)
        self.delivered += 1
        return msg

    def next_msg(self, timeout: float | None = 1.0) -> Msg:
        """Return the next message, waiting up to *timeout* seconds (None: until one comes).

        Raises :class:`natsync.TimeoutError` when none arrived in time,
        :class:`BadSubscriptionError` when the subscription has ended and nothing is
        pending, :class:`ConnectionClosedError` when the client closed.
        """
        if self._cb is not None:
            raise BadSubscriptionError(
                f"subscription {self.sid} has a callback: messages go to it, not to next_msg()"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            msg = self._take()
            if msg is not None:
                return msg
            if self._ended:
                self._done.set()
                raise self._end_error or BadSubscriptionError(f"subscription {self.sid} has ended")
            if not self._wait(deadline):
                raise TimeoutError(f"no message on {self.subject!r} within {timeout} s")

    def __iter__(self) -> Iterator[Msg]:
        """Yield messages as they arrive; ends when the subscription ends.

        Raises :class:`ConnectionClosedError` if the client closes meanwhile.
        """
        while True:
            try:
                yield self.next_msg(timeout=None)
            except BadSubscriptionError:
                return

    def _run(self) -> None:
        """Delivery thread of a callback subscription."""
        cb = self._cb
        assert cb is not None
        client = self._client
        while True:
            msg = self._take()
            if msg is None:
                if self._ended:
                    break
                self._wait(None)
                continue
            if self._discard:
                break
            try:
                cb(msg)
            except Exception as e:  # the callback's failure must not stop delivery
                log.exception("callback of subscription %d (%r) raised", self.sid, self.subject)
                client._report_error(e)
        self._done.set()

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
        if not self._ended:
            try:
                self.unsubscribe()
            except ConnectionClosedError:
                pass

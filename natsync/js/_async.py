"""``publish_async``: a window of outstanding publish acknowledgements.

One wildcard inbox subscription (``<inbox>.*``) receives every acknowledgement; each
publish gets its own token.  Two threads serve one publisher:

* the ack thread (``natsync-js-acks``) takes the answers off that subscription and
  completes their futures;
* the timer thread (``natsync-js-ack-timer``) fails each future whose timeout passed,
  at its own deadline: it sleeps until the earliest deadline of what is outstanding, and
  a publish whose deadline is earlier than that wakes it.

When the client closes, the subscription ends with ``ConnectionClosedError``: the ack
thread fails every outstanding future with an error saying that its acknowledgement
never came, and both threads end (``close()`` joins them).  ``nc.drain()`` first waits
(within its timeout) for the outstanding acknowledgements through the client's drain
hook, so that only the truly unacknowledged fail.  Every future completes, and a
completed future leaves nothing behind.

Threads and locks (no argument rests on the GIL):

* ``AsyncPublisher._lock`` guards the window: ``_pending``, ``_lanes``, ``_timer_at``,
  ``_dead``, the waiter counts.  The window check and the insert are one critical
  section, so the window never overshoots.  Conditions on it: ``_room`` (publishers
  waiting for a slot, ``wait_all``, the drain hook) and ``_timer`` (the timer thread).
  No user code and no socket call runs under it; the client's lock is never taken while
  holding it.
* ``_FUTURE_GUARD`` (module-wide) decides the completion of an :class:`AckFuture` that
  has no condition yet; see its docstring.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
import weakref
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import FINISHED as _FINISHED
from concurrent.futures._base import PENDING as _PENDING
from typing import TYPE_CHECKING, Any

from ..client import _ROOM_CHECK
from ..errors import (
    BadSubscriptionError,
    ConnectionClosedError,
    NatsError,
    OutboundBufferFullError,
    TimeoutError,
)
from ..headers import HeadersInput
from .api import PubAck
from .context import pub_ack
from .errors import NoStreamResponseError

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Client
    from ..msg import Msg

__all__ = ["AsyncPublisher", "AckFuture"]

log = logging.getLogger("natsync")

_BATCH = 256  # acknowledgements the ack thread completes under one lock
_MAX_LANES = 64  # distinct timeout values before empty lanes are pruned
_HEAD_GUESS = 48  # bytes of a PUB line beside the subject and the reply (back-pressure room)

# Decides the completion of every AckFuture that has no condition yet (see AckFuture).
_FUTURE_GUARD = threading.Lock()


class AckFuture(Future[PubAck]):
    """A :class:`concurrent.futures.Future` whose condition is made only when somebody
    waits on it, cancels it or adds a callback.

    ``Future.__init__`` builds a ``threading.Condition`` per future, a large part of a
    ``publish_async`` call; most futures complete before anybody looks at them.

    One step decides completion against ``cancel()``: the condition is only ever made
    under ``_FUTURE_GUARD``, and a completion first looks, under the same guard, whether
    it exists.  If not, nobody can have waited, cancelled or added a callback (each of
    those needs the condition), and the state is set right there, under the guard.  If
    it exists, ``Future``'s own code decides under the condition.  So a future is
    completed or cancelled once, its callbacks run once, and ``CANCELLED`` is never
    overwritten.
    """

    def __init__(self) -> None:  # no super().__init__(): see the class docstring
        self._state = _PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        if name == "_condition":
            with _FUTURE_GUARD:
                cond = self.__dict__.get("_condition")
                if cond is None:
                    cond = self.__dict__["_condition"] = threading.Condition()
            return cond
        raise AttributeError(name)

    def set_result(self, result: PubAck) -> None:
        with _FUTURE_GUARD:
            if "_condition" not in self.__dict__:
                if self._state != _PENDING:
                    raise InvalidStateError(f"{self._state}: {self!r}")
                self._result = result
                self._state = _FINISHED
                return
        super().set_result(result)  # somebody looked at it: Future decides, under the condition

    def set_exception(self, exception: BaseException | None) -> None:
        with _FUTURE_GUARD:
            if "_condition" not in self.__dict__:
                if self._state != _PENDING:
                    raise InvalidStateError(f"{self._state}: {self!r}")
                self._exception = exception
                self._state = _FINISHED
                return
        super().set_exception(exception)


# An outstanding publish: (future, subject, deadline, its lane)
_Entry = tuple[AckFuture, str, float, "dict[str, Any]"]

# Publishers alive in this process: in a forked child each is marked dead without
# touching the lock it copied (a parent thread may have held it at the fork).
_live: weakref.WeakSet[AsyncPublisher] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pub in list(_live):
        pub._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class AsyncPublisher:
    """The ack window of one JetStream context (created on its first publish_async).

    Guarded by ``_lock`` (see the module docstring): ``_pending`` maps a token to its
    entry; ``_lanes`` holds the same entries once more, one dict per timeout value, in
    insertion order, which is deadline order within a lane (the timer looks at the first
    entry of each lane only).
    """

    def __init__(self, nc: Client, max_pending: int) -> None:
        self._nc = nc
        self._max = max_pending
        self._low = max_pending - max_pending // 4  # wake blocked publishers below this
        inbox = nc.new_inbox()
        self._prefix = inbox + "."
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._timer = threading.Condition(self._lock)
        self._pending: dict[str, _Entry] = {}
        self._lanes: dict[float, dict[str, _Entry]] = {}
        self._timer_at = math.inf  # when the timer thread wakes next (inf: when woken)
        self._dead: NatsError | None = None  # set once: the client closed or drained
        self._ids = itertools.count(1)
        self._room_waiters = 0
        self._all_waiters = 0
        # taken out of _pending, their futures not completed yet: wait_all() and the
        # drain hook wait for these too, so "none outstanding" means every future is done
        self._completing = 0
        self._sub = nc.subscribe(inbox + ".*", pending_msgs_limit=None, pending_bytes_limit=None)
        self._acks = threading.Thread(target=self._run, name="natsync-js-acks", daemon=True)
        self._timer_thread = threading.Thread(
            target=self._run_timer, name="natsync-js-ack-timer", daemon=True
        )
        # nc.drain() waits for the outstanding acknowledgements before it drains the
        # ack subscription (guard of the list: the client's lock)
        with nc._lock:
            nc._drain_hooks.append(self._on_drain)
        _live.add(self)
        self._acks.start()
        self._timer_thread.start()
        nc._add_companion(self._acks)  # both end on close; close() joins them
        nc._add_companion(self._timer_thread)

    @property
    def dead(self) -> bool:
        """True once the client closed or drained: this publisher takes no more.

        Read without the lock: it is set once and never cleared, so a stale False only
        sends the caller into :meth:`publish`, which decides under the lock.
        """
        return self._dead is not None

    # --- user side -------------------------------------------------------------------------

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def publish(
        self,
        subject: str,
        payload: bytes | bytearray | memoryview | str,
        headers: HeadersInput | None,
        timeout: float,
    ) -> Future[PubAck]:
        fut = AckFuture()
        pending = self._pending
        with self._lock:
            if self._dead is not None:
                raise ConnectionClosedError(str(self._dead))
            if len(pending) >= self._max:
                self._wait_for_room(timeout)  # returns with a free slot, the lock held
            token = str(next(self._ids))
            deadline = time.monotonic() + timeout
            lane = self._lanes.get(timeout)
            if lane is None:
                lane = self._new_lane(timeout)
            pending[token] = lane[token] = (fut, subject, deadline, lane)
            if deadline < self._timer_at:
                self._timer_at = deadline
                self._timer.notify()
        reply = self._prefix + token
        try:
            # the reply is a checked inbox and a number: only the subject needs checking
            self._nc._publish_inbox_reply(subject, payload, reply, headers)
        except BaseException as e:
            with self._lock:
                mine = pending.pop(token, None) is not None
                if mine:
                    lane.pop(token, None)
                    if self._room_waiters or self._all_waiters:
                        self._room.notify_all()
            if mine and isinstance(e, OutboundBufferFullError):
                # not sent, and a retry later may work: the future says so, as it
                # would for a lost acknowledgement (bad input and a closed client raise)
                _fail(fut, e)
                return fut
            raise
        # publish()'s write back-pressure: past about 1 MiB waiting for the socket (for
        # messages of this size), wait for the writer to take the queue.  The length is
        # looked at without the client's lock, as publish() does (len() of a list is one
        # read on every CPython): a stale look only lets one more message in or waits
        # once for nothing, and wait_room() checks again under the lock.
        room = _ROOM_CHECK // (len(payload) + len(subject) + len(reply) + _HEAD_GUESS)
        nc = self._nc
        if len(nc._w.q) > room:
            nc._backpressure(room)
        return fut

    def _new_lane(self, timeout: float) -> dict[str, _Entry]:
        """A lane for a new timeout value (lock held)."""
        lanes = self._lanes
        if len(lanes) >= _MAX_LANES:
            for t in [t for t, lane in lanes.items() if not lane]:
                del lanes[t]
        lane: dict[str, _Entry] = {}
        lanes[timeout] = lane
        return lane

    def _wait_for_room(self, timeout: float) -> None:
        """Wait (lock held) until the window has a free slot."""
        deadline = time.monotonic() + timeout
        self._room_waiters += 1
        try:
            while len(self._pending) >= self._max:
                if self._dead is not None:
                    raise ConnectionClosedError(str(self._dead))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"publish_async: {self._max} acknowledgements still outstanding after "
                        f"{timeout} s (raise publish_async_max_pending or wait with "
                        "publish_async_completed())"
                    )
                self._room.wait(left)
        finally:
            self._room_waiters -= 1
        if self._dead is not None:
            raise ConnectionClosedError(str(self._dead))

    def wait_all(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._all_waiters += 1
            try:
                while self._pending or self._completing:
                    if deadline is None:
                        self._room.wait()
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"{len(self._pending)} publish_async acknowledgement(s) still outstanding "
                            f"after {timeout} s"
                        )
                    self._room.wait(left)
            finally:
                self._all_waiters -= 1

    def _on_drain(self, deadline: float) -> None:
        """The client's drain hook: wait until every outstanding acknowledgement came
        (or failed), or *deadline* (``time.monotonic()``) passed; then drain goes on and
        ends the ack subscription, which fails what is still outstanding."""
        with self._lock:
            self._all_waiters += 1
            try:
                while (self._pending or self._completing) and self._dead is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        log.info(
                            "drain: %d publish_async acknowledgement(s) still outstanding at the deadline",
                            len(self._pending),
                        )
                        return
                    self._room.wait(left)
            finally:
                self._all_waiters -= 1

    # --- ack thread --------------------------------------------------------------------------

    def _run(self) -> None:
        sub = self._sub
        plen = len(self._prefix)
        pending = self._pending
        lock = self._lock
        low = self._low
        while True:
            try:
                first = sub.next_msg(timeout=None)  # wakes when the subscription ends
            except ConnectionClosedError:
                self._fail_all("the client closed")
                return
            except BadSubscriptionError:  # drain() ended the ack subscription
                self._fail_all("the client was drained")
                return
            batch = [first]
            if sub.pending_msgs:
                batch += sub._take_upto(_BATCH)
            done: list[tuple[_Entry, Msg]] = []
            with lock:
                for msg in batch:
                    token = msg.subject[plen:]
                    entry = pending.pop(token, None)
                    if entry is not None:
                        del entry[3][token]
                        done.append((entry, msg))
                if not done:
                    continue
                self._completing += len(done)
                if self._room_waiters and len(pending) <= low:
                    self._room.notify_all()
            for entry, msg in done:
                _complete(entry[0], entry[1], msg)
            with lock:
                self._completing -= len(done)
                if self._all_waiters and not pending and not self._completing:
                    self._room.notify_all()

    # --- timer thread ------------------------------------------------------------------------

    def _run_timer(self) -> None:
        lock = self._lock
        while True:
            expired: list[_Entry] = []
            with lock:
                while not expired:
                    if self._dead is not None:
                        return
                    now = time.monotonic()
                    nxt = math.inf
                    lanes = self._lanes
                    for t in list(lanes):
                        lane = lanes[t]
                        while lane:
                            token = next(iter(lane))
                            entry = lane[token]
                            if entry[2] > now:
                                nxt = min(nxt, entry[2])
                                break
                            del lane[token]
                            del self._pending[token]
                            expired.append(entry)
                        if not lane:
                            del lanes[t]
                    self._timer_at = nxt
                    if expired:
                        self._completing += len(expired)
                        if self._room_waiters:
                            self._room.notify_all()
                        break
                    self._timer.wait(None if nxt == math.inf else nxt - now)
            for fut, subject, _deadline, _lane in expired:
                _fail(fut, TimeoutError(f"no acknowledgement of the publish to {subject!r} in time"))
            self._completed(len(expired))

    def _completed(self, n: int) -> None:
        """*n* futures taken out of the window were completed: wake who waits for all."""
        with self._lock:
            self._completing -= n
            if self._all_waiters and not self._pending and not self._completing:
                self._room.notify_all()

    # --- ending ------------------------------------------------------------------------------

    def _fail_all(self, why: str) -> None:
        """The ack subscription ended: fail what is outstanding, end the timer thread,
        unregister the drain hook."""
        with self._lock:
            if self._dead is None:
                self._dead = ConnectionClosedError(
                    f"publish_async: {why}; use a new client (or JetStream context) to publish"
                )
            entries = list(self._pending.values())
            self._pending.clear()
            self._lanes.clear()
            self._completing += len(entries)
            self._room.notify_all()
            self._timer.notify_all()
        _live.discard(self)
        nc = self._nc
        with nc._lock:
            try:
                nc._drain_hooks.remove(self._on_drain)
            except ValueError:
                pass
        for fut, subject, _deadline, _lane in entries:
            _fail(
                fut,
                ConnectionClosedError(
                    f"no acknowledgement of the publish to {subject!r} before {why}: "
                    "the message may or may not have been stored"
                ),
            )
        self._completed(len(entries))

    def _forked(self) -> None:
        """In a forked child: the threads are gone and the lock may be held by one of
        them; replace the locks (never acquire them) and take no more publishes."""
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._timer = threading.Condition(self._lock)
        self._pending = {}
        self._lanes = {}
        self._completing = 0
        self._dead = ConnectionClosedError(
            "publish_async: this JetStream context was used before os.fork(); publish from a "
            "new context in the forked child"
        )


def _fail(fut: Future[PubAck], err: BaseException) -> None:
    try:
        fut.set_exception(err)
    except InvalidStateError:  # the user cancelled it
        pass


def _complete(fut: Future[PubAck], subject: str, msg: Msg) -> None:
    data = msg.data
    if not data and msg._hdr is not None:
        h = msg.headers
        if h is not None and h.status == 503:
            _fail(
                fut,
                NoStreamResponseError(
                    f"no stream listens on subject {subject!r}: create a stream capturing it"
                ),
            )
            return
    try:
        ack = pub_ack(data)
    except NatsError as e:
        _fail(fut, e)
        return
    try:
        fut.set_result(ack)
    except InvalidStateError:  # the user cancelled it
        pass

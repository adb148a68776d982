"""``publish_async``: a window of outstanding publish acknowledgements.

One wildcard inbox subscription (``<inbox>.*``) receives every acknowledgement; each
publish gets its own token.  An ack thread (``natsync-js-acks``) takes the answers off
that subscription and completes the futures, and also fails those whose timeout has
passed.  When the client closes, the subscription ends with ``ConnectionClosedError``:
the thread fails every pending future with it and exits.  So every future completes,
and a completed future leaves nothing behind.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from concurrent.futures._base import FINISHED as _FINISHED
from concurrent.futures._base import PENDING as _PENDING
from typing import TYPE_CHECKING, Any

from ..errors import BadSubscriptionError, ConnectionClosedError, NatsError, TimeoutError
from ..headers import HeadersInput
from .api import PubAck
from .context import pub_ack
from .errors import NoStreamResponseError

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Client
    from ..msg import Msg

__all__ = ["AsyncPublisher"]

_IDLE_WAKE = 1.0  # seconds: the ack thread's longest sleep


class AckFuture(Future[PubAck]):
    """A :class:`concurrent.futures.Future` whose lock is made only when somebody
    waits on it or adds a callback.

    ``Future.__init__`` builds a ``threading.Condition`` (an RLock and a Python
    object) per future, which is a large part of a ``publish_async`` call.  Most
    futures are completed before anybody looks at them: for those, completing sets the
    state without a lock.  Thread safety: the state is set first, then the method looks
    again whether a waiter has made the condition meanwhile; if so it takes it and
    wakes/notifies as ``Future`` does, so nobody misses the completion.
    """

    def __init__(self) -> None:  # no super().__init__(): see the class docstring
        self._state = _PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        if name == "_condition":
            return self.__dict__.setdefault("_condition", threading.Condition())
        raise AttributeError(name)

    def _finish(self) -> None:
        # called after the state was set; a waiter may have made the condition meanwhile
        if "_condition" in self.__dict__:
            cond = self.__dict__["_condition"]
            with cond:
                for waiter in self._waiters:
                    if self._exception is None:
                        waiter.add_result(self)
                    else:
                        waiter.add_exception(self)
                cond.notify_all()
            self._invoke_callbacks()

    def set_result(self, result: PubAck) -> None:
        if "_condition" in self.__dict__:
            super().set_result(result)
            return
        if self._state != _PENDING:
            raise InvalidStateError(f"{self._state}: {self!r}")
        self._result = result
        self._state = _FINISHED
        self._finish()

    def set_exception(self, exception: BaseException | None) -> None:
        if "_condition" in self.__dict__:
            super().set_exception(exception)
            return
        if self._state != _PENDING:
            raise InvalidStateError(f"{self._state}: {self!r}")
        self._exception = exception
        self._state = _FINISHED
        self._finish()


class AsyncPublisher:
    """The ack window of one JetStream context (created on its first publish_async).

    The publisher side takes no lock unless the window is full: the pending table is a
    dict (single operations are atomic) and deadlines go to a deque per timeout value
    (appended by publishers, popped by the ack thread only).
    """

    def __init__(self, nc: Client, max_pending: int) -> None:
        self._nc = nc
        self._max = max_pending
        self._low = max_pending - max_pending // 4  # wake blocked publishers below this
        inbox = nc.new_inbox()
        self._prefix = inbox + "."
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[str, tuple[Future[PubAck], str]] = {}
        self._deadlines: dict[float, deque[tuple[float, str]]] = {}
        self._ids = itertools.count(1)
        self.dead = False
        self._room_waiters = 0
        self._all_waiters = 0
        self._sub = nc.subscribe(inbox + ".*", pending_msgs_limit=None, pending_bytes_limit=None)
        self._thread = threading.Thread(target=self._run, name="natsync-js-acks", daemon=True)
        self._thread.start()
        nc._add_companion(self._thread)  # ends on close (next_msg raises); close() joins it

    # --- user side -------------------------------------------------------------------------

    def pending(self) -> int:
        return len(self._pending)

    def publish(
        self,
        subject: str,
        payload: bytes | bytearray | memoryview | str,
        headers: HeadersInput | None,
        timeout: float,
    ) -> Future[PubAck]:
        if self.dead:
            raise ConnectionClosedError()
        pending = self._pending
        if len(pending) >= self._max:
            self._wait_for_room(timeout)
        fut = AckFuture()
        token = str(next(self._ids))
        pending[token] = (fut, subject)
        dq = self._deadlines.get(timeout)
        if dq is None:
            dq = self._deadlines.setdefault(timeout, deque())
        dq.append((time.monotonic() + timeout, token))
        try:
            # the reply is a checked inbox and a number: only the subject needs checking
            self._nc._publish_inbox_reply(subject, payload, self._prefix + token, headers)
        except BaseException:
            pending.pop(token, None)
            raise
        if self._is_dead() and pending.pop(token, None) is not None:
            # the client closed while we published: nobody else will complete it
            _fail(fut, ConnectionClosedError())
        return fut

    def _is_dead(self) -> bool:
        return self.dead  # (a call: another thread may have set it since we looked)

    def _wait_for_room(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            self._room_waiters += 1
            try:
                while len(self._pending) >= self._max and not self.dead:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"publish_async: {self._max} acknowledgements still outstanding after "
                            f"{timeout} s (raise publish_async_max_pending or wait with "
                            "publish_async_completed())"
                        )
                    self._cond.wait(min(left, _IDLE_WAKE))
            finally:
                self._room_waiters -= 1
        if self.dead:
            raise ConnectionClosedError()

    def wait_all(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._all_waiters += 1
            try:
                while self._pending:
                    if deadline is None:
                        self._cond.wait(_IDLE_WAKE)
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"{len(self._pending)} publish_async acknowledgement(s) still outstanding "
                            f"after {timeout} s"
                        )
                    self._cond.wait(min(left, _IDLE_WAKE))
            finally:
                self._all_waiters -= 1

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # --- ack thread --------------------------------------------------------------------------

    def _run(self) -> None:
        sub = self._sub
        plen = len(self._prefix)
        pending = self._pending
        wait = _IDLE_WAKE
        n = 0
        while True:
            try:
                msg = sub.next_msg(timeout=wait)
            except TimeoutError:
                wait = self._expire()
                continue
            except (ConnectionClosedError, BadSubscriptionError) as e:
                self._fail_all(e if isinstance(e, ConnectionClosedError) else ConnectionClosedError())
                return
            entry = pending.pop(msg.subject[plen:], None)
            if (self._room_waiters and len(pending) <= self._low) or (self._all_waiters and not pending):
                self._wake()
            if entry is not None:
                _complete(entry[0], entry[1], msg)
            n += 1
            if n >= 1000:  # under steady load the queue is never empty: expire now and then
                n = 0
                wait = self._expire()

    def _expire(self) -> float:
        """Fail futures past their deadline; return how long to sleep."""
        now = time.monotonic()
        pending = self._pending
        expired: list[tuple[Future[PubAck], str]] = []
        wait = _IDLE_WAKE
        for dq in list(self._deadlines.values()):
            while dq:
                deadline, token = dq[0]
                if token not in pending:
                    dq.popleft()
                    continue
                if deadline > now:
                    wait = min(wait, deadline - now)
                    break
                dq.popleft()
                entry = pending.pop(token, None)
                if entry is not None:
                    expired.append(entry)
        if expired and (self._room_waiters or self._all_waiters):
            self._wake()
        for fut, subject in expired:
            _fail(fut, TimeoutError(f"no acknowledgement of the publish to {subject!r} in time"))
        return max(wait, 0.001)

    def _fail_all(self, err: ConnectionClosedError) -> None:
        self.dead = True
        pending = self._pending
        while pending:
            try:
                _, (fut, _subject) = pending.popitem()
            except KeyError:  # pragma: no cover - emptied meanwhile
                break
            _fail(fut, err)
        self._deadlines.clear()
        self._wake()


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

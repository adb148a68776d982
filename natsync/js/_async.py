"""``publish_async``: a window of outstanding publish acknowledgements.

One wildcard inbox subscription (``<inbox>.*``) receives every acknowledgement; each
publish gets its own token.  An ack thread (``natsync-js-acks``) takes the answers off
that subscription and completes the futures, and also fails those whose timeout has
passed.  When the client closes, the subscription ends with ``ConnectionClosedError``:
the thread fails every pending future with it and exits.  So every future completes,
and a completed future leaves nothing behind.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from ..errors import BadSubscriptionError, ConnectionClosedError, NatsError, TimeoutError
from ..headers import HeadersInput
from .api import PubAck
from .errors import NoStreamResponseError

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Client
    from ..msg import Msg

__all__ = ["AsyncPublisher"]

_IDLE_WAKE = 1.0  # seconds: the ack thread's longest sleep


class AsyncPublisher:
    """The ack window of one JetStream context (created on its first publish_async)."""

    def __init__(self, nc: Client, max_pending: int) -> None:
        self._nc = nc
        self._max = max_pending
        inbox = nc.new_inbox()
        self._prefix = inbox + "."
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: dict[str, tuple[Future[PubAck], str]] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._ids = itertools.count(1)
        self.dead = False
        self._waiters = 0
        self._sub = nc.subscribe(inbox + ".*", pending_msgs_limit=None, pending_bytes_limit=None)
        self._thread = threading.Thread(target=self._run, name="natsync-js-acks", daemon=True)
        self._thread.start()

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
        fut: Future[PubAck] = Future()
        token = str(next(self._ids))
        now = time.monotonic()
        with self._cond:
            if self.dead:
                raise ConnectionClosedError()
            if len(self._pending) >= self._max:
                deadline = now + timeout
                self._waiters += 1
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
                    self._waiters -= 1
                if self.dead:
                    raise ConnectionClosedError()
                now = time.monotonic()
            self._pending[token] = (fut, subject)
            heapq.heappush(self._deadlines, (now + timeout, token))
        try:
            self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            with self._cond:
                self._pending.pop(token, None)
                self._cond.notify_all()
            raise
        return fut

    def wait_all(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._waiters += 1
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
                self._waiters -= 1

    # --- ack thread --------------------------------------------------------------------------

    def _run(self) -> None:
        sub = self._sub
        plen = len(self._prefix)
        complete = self._complete
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
            complete(msg.subject[plen:], msg)
            n += 1
            if n >= 1000:  # under steady load the queue is never empty: expire now and then
                n = 0
                wait = self._expire()

    def _complete(self, token: str, msg: Msg) -> None:
        with self._cond:
            entry = self._pending.pop(token, None)
            if self._waiters or not self._pending:
                self._cond.notify_all()
        if entry is None:
            return  # timed out already
        fut, subject = entry
        data = msg.data
        if not data and msg._hdr is not None:
            h = msg.headers
            if h is not None and h.status == 503:
                fut.set_exception(
                    NoStreamResponseError(
                        f"no stream listens on subject {subject!r}: create a stream capturing it"
                    )
                )
                return
        try:
            from .context import _pub_ack

            fut.set_result(_pub_ack(data))
        except NatsError as e:
            fut.set_exception(e)

    def _expire(self) -> float:
        """Fail futures past their deadline; return how long to sleep."""
        now = time.monotonic()
        expired: list[tuple[Future[PubAck], str]] = []
        with self._cond:
            dl = self._deadlines
            while dl:
                deadline, token = dl[0]
                if token not in self._pending:
                    heapq.heappop(dl)
                    continue
                if deadline > now:
                    break
                heapq.heappop(dl)
                expired.append(self._pending.pop(token))
            wait = min(dl[0][0] - now, _IDLE_WAKE) if dl else _IDLE_WAKE
            if expired:
                self._cond.notify_all()
        for fut, subject in expired:
            fut.set_exception(TimeoutError(f"no acknowledgement of the publish to {subject!r} in time"))
        return max(wait, 0.001)

    def _fail_all(self, err: ConnectionClosedError) -> None:
        with self._cond:
            self.dead = True
            entries = list(self._pending.values())
            self._pending.clear()
            self._deadlines.clear()
            self._cond.notify_all()
        for fut, _ in entries:
            fut.set_exception(err)

"""Pull consumers: ``fetch`` batches and the continuous ``messages()`` iterator.

A pull request is a publish to ``<prefix>.CONSUMER.MSG.NEXT.<stream>.<consumer>`` whose
reply subject is ``<inbox>.<n>``: the server sends the messages (and status messages:
404/408 end a request, 409 reports a problem, 100 is a heartbeat) to that subject.  One
wildcard subscription per pull subscription (and one per running iterator) receives
them; the ``<n>`` tells the requests apart.  Status messages never reach the user.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..errors import BadSubscriptionError, ConnectionClosedError, TimeoutError
from ..msg import Msg
from ..subscription import Subscription
from ._proto import Status, classify_status
from .api import ConsumerInfo
from .errors import (
    APIError,
    BadRequestError,
    ConsumerNotFoundError,
    NoHeartbeatError,
    NotFoundError,
    ServiceUnavailableError,
)

if TYPE_CHECKING:  # pragma: no cover
    from .context import JetStream

__all__ = ["PullSubscription"]

_NANOS = 1_000_000_000
_ITER_EXPIRES = 30.0  # seconds a messages() pull request stays open (nats.go Consume)
_WAKE = 0.25  # the iterator's longest sleep: it checks stop() and reconnects this often
_RETRY_WAIT = 0.25


def _status(msg: Msg) -> tuple[int, str] | None:
    if msg._hdr is None or msg.data:
        return None
    h = msg.headers
    if h is None or h.status is None:
        return None
    return h.status, h.description


def _check_batch(batch: int) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, not {batch!r}")
    return batch


class PullSubscription:
    """A bound pull consumer (from :meth:`JetStream.pull_subscribe`).

    Use one per thread: threads that share a consumer each call ``pull_subscribe``
    (or ``pull_subscribe_bind``) for their own, and the server spreads the messages.
    """

    def __init__(
        self,
        js: JetStream,
        stream: str,
        consumer: str,
        *,
        inbox_prefix: str | None = None,
        ephemeral: bool = False,
        pending_msgs_limit: int | None = None,
        pending_bytes_limit: int | None = None,
    ) -> None:
        self._js = js
        self._nc = js._nc
        self.stream = stream
        self.consumer = consumer
        self._ephemeral = ephemeral
        self._next_subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox_prefix = inbox_prefix
        self._limits = (pending_msgs_limit, pending_bytes_limit)
        self._ids = itertools.count(1)
        self._sub: Subscription | None = None
        self._inbox = ""
        self._lock = threading.Lock()
        self._iters: list[_Iter] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"<natsync.js.PullSubscription stream={self.stream!r} consumer={self.consumer!r}>"

    def _new_inbox(self) -> str:
        if self._inbox_prefix:
            from ..nuid import next_nuid

            return f"{self._inbox_prefix}.{next_nuid()}"
        return self._nc.new_inbox()

    def _subscribe(self, inbox: str) -> Subscription:
        m, b = self._limits
        return self._nc.subscribe(inbox + ".*", pending_msgs_limit=m, pending_bytes_limit=b)

    def _request(self, inbox: str, body: dict[str, Any]) -> str:
        reply = f"{inbox}.{next(self._ids)}"
        self._nc.publish(self._next_subject, json.dumps(body, separators=(",", ":")).encode(), reply=reply)
        return reply

    # --- fetch -----------------------------------------------------------------------------

    def fetch(
        self,
        batch: int = 1,
        timeout: float | None = 5.0,
        max_bytes: int | None = None,
        heartbeat: float | None = None,
    ) -> list[Msg]:
        """Fetch up to ``batch`` messages.

        Returns as soon as ``batch`` messages arrived; with fewer available, returns
        what arrived (at least one) when the request expires, shortly before
        ``timeout``.  ``max_bytes`` caps the batch's size; ``heartbeat`` (seconds) asks
        for idle heartbeats and fails fast when they stop.

        Raises:
            natsync.TimeoutError: no message before ``timeout``.
            ConsumerNotFoundError: the consumer does not exist (or was deleted).
            NoHeartbeatError: heartbeats were asked for and stopped arriving.
        """
        _check_batch(batch)
        if timeout is None:
            timeout = self._js._timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"fetch timeout must be > 0 seconds, not {timeout!r}")
        if heartbeat is not None and not 0 < heartbeat * 2 < timeout:
            raise ValueError(
                f"heartbeat ({heartbeat} s) must be > 0 and less than half the timeout ({timeout} s)"
            )
        if self._closed:
            raise BadSubscriptionError("pull subscription was unsubscribed")
        sub = self._sub
        if sub is None or not sub.is_valid:
            with self._lock:
                sub = self._sub
                if sub is None or not sub.is_valid:
                    self._inbox = self._new_inbox()
                    sub = self._sub = self._subscribe(self._inbox)
        start = time.monotonic()
        deadline = start + timeout
        # the request expires a little before our deadline so that its 408 reaches us first
        expires = timeout - min(timeout * 0.1, 0.5) if timeout > 0.02 else timeout
        body: dict[str, Any] = {"batch": batch, "expires": int(expires * _NANOS)}
        if max_bytes is not None:
            body["max_bytes"] = int(max_bytes)
        if heartbeat is not None:
            body["idle_heartbeat"] = int(heartbeat * _NANOS)
        reply = self._request(self._inbox, body)
        msgs: list[Msg] = []
        hb_deadline = start + 2 * heartbeat if heartbeat else None
        next_msg = sub.next_msg
        checked_503 = False
        while True:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                break
            if hb_deadline is not None:
                if now >= hb_deadline:
                    if self._nc.is_connected:
                        if msgs:
                            return msgs
                        raise NoHeartbeatError(
                            f"no heartbeat from consumer {self.consumer!r} for {2 * heartbeat:g} s"  # type: ignore[operator]
                        )
                    hb_deadline = now + 2 * heartbeat  # type: ignore[operator]
                left = min(left, hb_deadline - now)
            try:
                msg = next_msg(timeout=left)
            except TimeoutError:
                continue
            if heartbeat is not None:
                hb_deadline = time.monotonic() + 2 * heartbeat
            st = _status(msg)
            if st is None:
                msgs.append(msg)
                if len(msgs) >= batch:
                    return msgs
                continue
            if msg.subject != reply:
                continue  # a status of an earlier request
            kind = classify_status(st[0], st[1], bool(msg.reply))
            if kind in (Status.HEARTBEAT, Status.FLOW_CONTROL):
                continue
            if kind in (Status.TIMEOUT, Status.NO_MESSAGES, Status.MAX_BYTES):
                break
            if kind == Status.CONSUMER_DELETED:
                raise ConsumerNotFoundError(
                    409, None, f"consumer {self.consumer!r} was deleted", operation="CONSUMER.MSG.NEXT"
                )
            if kind == Status.LEADERSHIP_CHANGE:
                if msgs:
                    return msgs
                reply = self._reissue(body, deadline)
                continue
            if kind == Status.NO_RESPONDERS:
                if msgs:
                    return msgs
                if not checked_503:
                    checked_503 = True
                    self._raise_if_gone(deadline=deadline)
                # JetStream is coming back (e.g. a restarted server): ask again shortly
                if deadline - time.monotonic() > _RETRY_WAIT:
                    time.sleep(_RETRY_WAIT)
                    reply = self._reissue(body, deadline)
                continue
            raise BadRequestError(st[0], None, st[1], operation="CONSUMER.MSG.NEXT")
        if msgs:
            return msgs
        raise TimeoutError(f"fetch: no message from consumer {self.consumer!r} within {timeout} s")

    def _reissue(self, body: dict[str, Any], deadline: float) -> str:
        left = deadline - time.monotonic()
        expires = max(left - min(left * 0.1, 0.5), 0.001)
        body = dict(body, expires=int(expires * _NANOS))
        return self._request(self._inbox, body)

    def _raise_if_gone(self, unavailable_ok: bool = False, deadline: float | None = None) -> None:
        """After a 503 to a pull: raise ConsumerNotFoundError (or ServiceUnavailableError,
        unless ``unavailable_ok``) if that is why; return if the consumer is there after
        all or JetStream cannot tell yet."""
        try:
            t = min(self._js._timeout, 2.0)
            if deadline is not None:
                t = max(min(t, deadline - time.monotonic()), 0.001)
            self._js.consumer_info(self.stream, self.consumer, timeout=t)
        except NotFoundError as e:
            raise ConsumerNotFoundError(
                404,
                e.err_code,
                f"consumer {self.consumer!r} on stream {self.stream!r} does not exist",
                operation="CONSUMER.MSG.NEXT",
            ) from None
        except ServiceUnavailableError:
            if not unavailable_ok:
                raise
        except (TimeoutError, APIError):
            pass

    # --- messages() ------------------------------------------------------------------------

    def messages(
        self, batch: int = 100, max_bytes: int | None = None, heartbeat: float | None = None
    ) -> Iterator[Msg]:
        """Yield messages as they come, keeping pull requests outstanding (a new one
        whenever fewer than half of ``batch`` are still asked for), until :meth:`stop`
        or :meth:`unsubscribe`.  Resumes by itself after a reconnect.

        Raises (from the iteration):
            ConsumerNotFoundError: the consumer was deleted.
            NoHeartbeatError: ``heartbeat`` was given and heartbeats stopped while
                connected.
            natsync.ConnectionClosedError: the client closed.
        """
        _check_batch(batch)
        if heartbeat is not None and not 0 < heartbeat * 2 < _ITER_EXPIRES:
            raise ValueError(f"heartbeat must be > 0 and < {_ITER_EXPIRES / 2:g} s, not {heartbeat!r}")
        if self._closed:
            raise BadSubscriptionError("pull subscription was unsubscribed")
        it = _Iter(self, batch, max_bytes, heartbeat)
        with self._lock:
            self._iters.append(it)
        return it.run()

    def stop(self) -> None:
        """End every running ``messages()`` iteration (each ends after what it has
        already received... is dropped; unacked messages are redelivered by the server)."""
        with self._lock:
            iters = list(self._iters)
            self._iters.clear()
        for it in iters:
            it.stop()

    # --- misc --------------------------------------------------------------------------------

    def consumer_info(self, timeout: float | None = None) -> ConsumerInfo:
        """The consumer's current info."""
        return self._js.consumer_info(self.stream, self.consumer, timeout)

    def unsubscribe(self) -> None:
        """Stop receiving: ends iterations and drops the inbox subscription. The
        consumer stays on the server (a durable one can be bound again)."""
        self._closed = True
        self.stop()
        with self._lock:
            sub = self._sub
            self._sub = None
        if sub is not None and sub.is_valid:
            try:
                sub.unsubscribe()
            except (ConnectionClosedError, BadSubscriptionError):
                pass

    def __enter__(self) -> PullSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unsubscribe()


class _Iter:
    """State of one ``messages()`` iteration."""

    def __init__(
        self, psub: PullSubscription, batch: int, max_bytes: int | None, heartbeat: float | None
    ) -> None:
        self._psub = psub
        self._batch = batch
        self._max_bytes = max_bytes
        self._hb = heartbeat
        self._stopped = False
        self._sub: Subscription | None = None

    def stop(self) -> None:
        self._stopped = True
        sub = self._sub
        if sub is not None and sub.is_valid:
            try:
                sub.unsubscribe()
            except (ConnectionClosedError, BadSubscriptionError):
                pass

    def _pull(self, inbox: str, n: int, outstanding: dict[str, int]) -> None:
        body: dict[str, Any] = {"batch": n, "expires": int(_ITER_EXPIRES * _NANOS)}
        if self._max_bytes is not None:
            body["max_bytes"] = int(self._max_bytes)
        if self._hb is not None:
            body["idle_heartbeat"] = int(self._hb * _NANOS)
        reply = self._psub._request(inbox, body)
        outstanding[reply] = n

    def run(self) -> Iterator[Msg]:
        psub = self._psub
        nc = psub._nc
        inbox = psub._new_inbox()
        try:
            sub = self._sub = psub._subscribe(inbox)
        except BaseException:
            self._stopped = True
            raise
        if self._stopped:  # stop() came first
            sub.unsubscribe()
            return
        try:
            yield from self._loop(nc, sub, inbox)
        finally:
            self._stopped = True
            if sub.is_valid:
                try:
                    sub.unsubscribe()
                except (ConnectionClosedError, BadSubscriptionError):
                    pass
            with psub._lock:
                if self in psub._iters:
                    psub._iters.remove(self)

    def _loop(self, nc: Any, sub: Subscription, inbox: str) -> Iterator[Msg]:
        psub = self._psub
        batch = self._batch
        threshold = max(batch // 2, 1)
        outstanding: dict[str, int] = {}
        pending = 0  # messages asked for and not yet received
        reconnects = nc.stats.reconnects
        hb = self._hb
        hb_window = 2 * hb if hb else None
        last_seen = time.monotonic()
        retry_at = 0.0
        next_msg = sub.next_msg
        while not self._stopped:
            if pending <= batch - threshold or not outstanding:
                now = time.monotonic()
                if now >= retry_at and nc.is_connected:
                    n = min(batch - pending, batch)
                    if n > 0:
                        self._pull(inbox, n, outstanding)
                        pending += n
            try:
                msg = next_msg(timeout=_WAKE)
            except TimeoutError:
                msg = None
            except BadSubscriptionError:
                return  # stop() or unsubscribe()
            now = time.monotonic()
            rc = nc.stats.reconnects
            if rc != reconnects:
                # pull requests die with the connection: ask again on the new one
                reconnects = rc
                outstanding.clear()
                pending = 0
                last_seen = now
                continue
            if msg is None:
                if hb_window is not None:
                    if not nc.is_connected:
                        last_seen = now
                    elif now - last_seen > hb_window:
                        raise NoHeartbeatError(
                            f"no heartbeat from consumer {psub.consumer!r} for {hb_window:g} s"
                        )
                continue
            last_seen = now
            st = _status(msg)
            subj = msg.subject
            if st is None:
                # data messages keep their own subject: the server serves pull requests in
                # the order they came, so a message counts against the oldest one
                if outstanding:
                    pending = max(pending - 1, 0)
                    first = next(iter(outstanding))
                    left = outstanding[first]
                    if left <= 1:
                        del outstanding[first]
                    else:
                        outstanding[first] = left - 1
                yield msg
                continue
            kind = classify_status(st[0], st[1], bool(msg.reply))
            if kind in (Status.HEARTBEAT, Status.FLOW_CONTROL):
                continue
            asked = outstanding.pop(subj, None)
            if asked is not None:
                pending = max(pending - asked, 0)
            if kind in (Status.TIMEOUT, Status.NO_MESSAGES, Status.MAX_BYTES, Status.LEADERSHIP_CHANGE):
                continue
            if kind == Status.CONSUMER_DELETED:
                raise ConsumerNotFoundError(
                    409, None, f"consumer {psub.consumer!r} was deleted", operation="CONSUMER.MSG.NEXT"
                )
            if kind == Status.NO_RESPONDERS:
                psub._raise_if_gone(unavailable_ok=True)
                retry_at = time.monotonic() + _RETRY_WAIT
                continue
            raise BadRequestError(st[0], None, st[1], operation="CONSUMER.MSG.NEXT")

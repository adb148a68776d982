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

from ..errors import BadSubscriptionError, ConnectionClosedError, NotConnectedError, TimeoutError
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
        priority_groups: list[str] | None = None,
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
        self._groups = list(priority_groups or [])
        # guarded by _lock: _sub/_inbox (re)creation, _iters, _pin_id
        self._lock = threading.Lock()
        self._pin_id: str | None = None
        self._iters: list[_Iter] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"<natsync.js.PullSubscription stream={self.stream!r} consumer={self.consumer!r}>"

    def _new_inbox(self) -> str:
        if self._inbox_prefix:
            from .._nuid import next_nuid

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
        *,
        no_wait: bool = False,
        group: str | None = None,
        min_pending: int | None = None,
        min_ack_pending: int | None = None,
    ) -> list[Msg]:
        """Fetch up to ``batch`` messages.

        Messages the consumer has now come back at once: first a pull that does not
        wait (``no_wait``) takes what is there, and if that was at least one message
        they are returned without waiting for a full batch.  Only when nothing was
        there does a second pull wait for messages, returning as soon as ``batch``
        arrived, or with what arrived (at least one) when it expires shortly before
        ``timeout``.  ``max_bytes`` caps the batch's size; ``heartbeat`` (seconds)
        asks for idle heartbeats on the waiting pull and fails fast when they stop.

        With ``no_wait=True`` only the first pull is made: the messages available now,
        possibly none (an empty list, as nats.go's ``FetchNoWait``).

        A consumer with priority groups (server 2.11+) needs ``group``, one of its
        ``priority_groups``; ``min_pending``/``min_ack_pending`` are the ``overflow``
        policy's conditions.  Under the ``pinned_client`` policy the pin id the server
        gives is sent with later pulls of this subscription; when the server says it
        is no longer valid (status 423) it is forgotten.

        Messages already received are never thrown away: when the server ends the
        pull with an error (consumer deleted, pin id mismatch, ...) after some
        messages arrived, those are returned and the error comes with the next call.

        Raises:
            natsync.TimeoutError: no message before ``timeout`` (not with ``no_wait``).
            natsync.NotConnectedError: the client is not connected (reconnecting).
            ConsumerNotFoundError: the consumer does not exist (or was deleted).
            NoHeartbeatError: heartbeats were asked for and stopped arriving.
            BadRequestError: the server refused the pull (e.g. 409 "Exceeded
                MaxWaiting": more pulls wait on the consumer than its ``max_waiting``).
            APIError: code 423, the pin id was not valid (fetch again).
            ValueError: a bad argument, or ``group`` does not fit the consumer.
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
        prio = self._priority(group, min_pending, min_ack_pending)
        if self._closed:
            raise BadSubscriptionError("pull subscription was unsubscribed")
        if self._nc.is_reconnecting:
            raise NotConnectedError(
                f"not connected (reconnecting): fetch from consumer {self.consumer!r} not sent; "
                "retry when the client is connected"
            )
        sub = self._sub
        if sub is None or not sub.is_valid:
            with self._lock:
                sub = self._sub
                if sub is None or not sub.is_valid:
                    self._inbox = self._new_inbox()
                    sub = self._sub = self._subscribe(self._inbox)
        start = time.monotonic()
        deadline = start + timeout
        msgs: list[Msg] = []
        # 1: what is there now (a pull that does not wait; no expires, or the server
        # would hold it)
        body: dict[str, Any] = {"batch": batch, "no_wait": True}
        if max_bytes is not None:
            body["max_bytes"] = int(max_bytes)
        if prio is not None:
            body.update(prio)
        self._collect(sub, body, msgs, batch, deadline, None, first=True, no_wait=no_wait)
        if msgs or no_wait:
            return msgs
        # 2: nothing was there: wait for messages.  The request expires a little before
        # our deadline so that its 408 reaches us first.
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"fetch: no message from consumer {self.consumer!r} within {timeout} s")
        expires = left - min(left * 0.1, 0.5) if left > 0.02 else left
        body = {"batch": batch, "expires": int(expires * _NANOS)}
        if max_bytes is not None:
            body["max_bytes"] = int(max_bytes)
        if heartbeat is not None:
            body["idle_heartbeat"] = int(heartbeat * _NANOS)
        if prio is not None:
            body.update(prio)
        self._collect(sub, body, msgs, batch, deadline, heartbeat, first=False, no_wait=False)
        if msgs:
            return msgs
        raise TimeoutError(f"fetch: no message from consumer {self.consumer!r} within {timeout} s")

    def _priority(
        self, group: str | None, min_pending: int | None, min_ack_pending: int | None
    ) -> dict[str, Any] | None:
        """The priority-group fields of a pull request (without the pin id), or None;
        ValueError when ``group`` does not fit the consumer (as nats.go checks)."""
        groups = self._groups
        if group is None:
            if groups:
                raise ValueError(
                    f"consumer {self.consumer!r} has priority groups {groups}: pass group= (one of them)"
                )
            if min_pending is not None or min_ack_pending is not None:
                raise ValueError("min_pending and min_ack_pending need a priority group (group=)")
            return None
        if not groups:
            raise ValueError(
                f"consumer {self.consumer!r} has no priority groups: leave group out, or create it "
                "with priority_groups and priority_policy (server 2.11+)"
            )
        if group not in groups:
            raise ValueError(f"group {group!r} is not one of consumer {self.consumer!r}'s {groups}")
        out: dict[str, Any] = {"group": group}
        for key, v in (("min_pending", min_pending), ("min_ack_pending", min_ack_pending)):
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"{key} must be an int >= 1, not {v!r}")
                out[key] = v
        return out

    @property
    def pin_id(self) -> str | None:
        """The pin id the server gave this subscription (``pinned_client`` priority
        policy), sent with its later pulls; None when not pinned."""
        with self._lock:
            return self._pin_id

    def _set_pin(self, pin: str | None) -> None:
        with self._lock:
            self._pin_id = pin

    def _send_pull(self, inbox: str, body: dict[str, Any]) -> str:
        if "group" in body:
            pin = self.pin_id
            if pin:
                body = dict(body, id=pin)
            else:
                body.pop("id", None)
        return self._request(inbox, body)

    def _collect(
        self,
        sub: Subscription,
        body: dict[str, Any],
        msgs: list[Msg],
        batch: int,
        deadline: float,
        heartbeat: float | None,
        *,
        first: bool,
        no_wait: bool,
    ) -> None:
        """Send one pull (``body``) and gather its messages into ``msgs`` until the
        batch is full, the server ends the pull, or ``deadline``.  Errors are raised
        only while ``msgs`` is empty (received messages are never thrown away)."""
        reply = self._send_pull(self._inbox, body)
        pinned = "group" in body
        hb_deadline = time.monotonic() + 2 * heartbeat if heartbeat else None
        next_msg = sub.next_msg
        checked_503 = False
        while True:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return
            if hb_deadline is not None:
                if now >= hb_deadline:
                    if self._nc.is_connected:
                        if msgs:
                            return
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
                if pinned:
                    h = msg.headers
                    pin = h.get("Nats-Pin-Id") if h is not None else None
                    if pin:
                        self._set_pin(pin)
                msgs.append(msg)
                if len(msgs) >= batch:
                    return
                continue
            if msg.subject != reply:
                continue  # a status of an earlier request
            code, text = st
            if code == 423:  # pin id mismatch: another client is pinned now
                self._set_pin(None)
                if msgs:
                    return
                raise APIError(
                    423,
                    None,
                    f"{text or 'Nats-Pin-Id mismatch'}: consumer {self.consumer!r} is pinned to another "
                    "client (the pin id was reset; fetch again)",
                    operation="CONSUMER.MSG.NEXT",
                )
            kind = classify_status(code, text, bool(msg.reply))
            if kind in (Status.HEARTBEAT, Status.FLOW_CONTROL):
                continue
            if kind in (Status.TIMEOUT, Status.NO_MESSAGES, Status.MAX_BYTES):
                return
            if msgs:
                return  # a status after some messages ends the batch (nats.go)
            if kind == Status.CONSUMER_DELETED:
                raise ConsumerNotFoundError(
                    409, None, f"consumer {self.consumer!r} was deleted", operation="CONSUMER.MSG.NEXT"
                )
            if kind == Status.LEADERSHIP_CHANGE:
                if first:
                    return  # the waiting pull asks again
                reply = self._reissue(body, deadline)
                continue
            if kind == Status.NO_RESPONDERS:
                if not checked_503:
                    checked_503 = True
                    self._raise_if_gone(deadline=deadline)
                if first:
                    if no_wait:
                        raise ServiceUnavailableError(
                            503,
                            None,
                            f"no responders for the pull from consumer {self.consumer!r}: JetStream "
                            "is not available now",
                            operation="CONSUMER.MSG.NEXT",
                        )
                    return
                # JetStream is coming back (e.g. a restarted server): ask again shortly
                if deadline - time.monotonic() > _RETRY_WAIT:
                    time.sleep(_RETRY_WAIT)
                    reply = self._reissue(body, deadline)
                continue
            if kind == Status.BAD_REQUEST and "maxwaiting" in text.lower().replace(" ", ""):
                raise BadRequestError(
                    code,
                    None,
                    f"{text}: more pull requests wait on consumer {self.consumer!r} than its "
                    "max_waiting allows; use fewer concurrent fetches or raise max_waiting",
                    operation="CONSUMER.MSG.NEXT",
                )
            raise BadRequestError(code, None, text, operation="CONSUMER.MSG.NEXT")

    def _reissue(self, body: dict[str, Any], deadline: float) -> str:
        left = deadline - time.monotonic()
        expires = max(left - min(left * 0.1, 0.5), 0.001)
        body = dict(body, expires=int(expires * _NANOS))
        return self._send_pull(self._inbox, body)

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
        self,
        batch: int = 100,
        max_bytes: int | None = None,
        heartbeat: float | None = None,
        *,
        group: str | None = None,
        min_pending: int | None = None,
        min_ack_pending: int | None = None,
    ) -> Iterator[Msg]:
        """Yield messages as they come, keeping pull requests outstanding (a new one
        whenever fewer than half of ``batch`` are still asked for), until :meth:`stop`
        or :meth:`unsubscribe`.  Resumes by itself after a reconnect.  ``group``,
        ``min_pending`` and ``min_ack_pending`` are as for :meth:`fetch`.  As nats.go's
        ``Consume``, a refused pull that is not the consumer's end (409 "Exceeded
        MaxWaiting", a pin id mismatch, a leadership change) is asked again shortly.

        Raises (from the iteration):
            ConsumerNotFoundError: the consumer was deleted.
            NoHeartbeatError: ``heartbeat`` was given and heartbeats stopped while
                connected.
            natsync.ConnectionClosedError: the client closed.
        """
        _check_batch(batch)
        if heartbeat is not None and not 0 < heartbeat * 2 < _ITER_EXPIRES:
            raise ValueError(f"heartbeat must be > 0 and < {_ITER_EXPIRES / 2:g} s, not {heartbeat!r}")
        prio = self._priority(group, min_pending, min_ack_pending)
        if self._closed:
            raise BadSubscriptionError("pull subscription was unsubscribed")
        it = _Iter(self, batch, max_bytes, heartbeat, prio)
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
        self,
        psub: PullSubscription,
        batch: int,
        max_bytes: int | None,
        heartbeat: float | None,
        prio: dict[str, Any] | None = None,
    ) -> None:
        self._psub = psub
        self._prio = prio
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
        if self._prio is not None:
            body.update(self._prio)
        reply = self._psub._send_pull(inbox, body)
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
        pinned = self._prio is not None
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
                if pinned:
                    h = msg.headers
                    pin = h.get("Nats-Pin-Id") if h is not None else None
                    if pin:
                        psub._set_pin(pin)
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
            if st[0] == 423:  # pin id mismatch: forget it; the next pull asks without
                psub._set_pin(None)
                continue
            if kind == Status.BAD_REQUEST and "maxwaiting" in st[1].lower().replace(" ", ""):
                # 409 Exceeded MaxWaiting: not terminal (nats.go), ask again later
                retry_at = time.monotonic() + _RETRY_WAIT
                continue
            raise BadRequestError(st[0], None, st[1], operation="CONSUMER.MSG.NEXT")

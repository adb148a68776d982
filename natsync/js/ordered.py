"""The ordered consumer: every stream message exactly once, in order.

An ephemeral push consumer (no acks, flow control, idle heartbeats, memory storage)
on a fresh deliver subject.  Whenever something may have been missed, it is recreated
from the stream sequence after the last message delivered:

* a gap in the consumer sequence (a message lost in transit);
* a heartbeat whose ``Nats-Last-Consumer`` is not the last consumer sequence seen;
* no message and no heartbeat for twice the heartbeat interval while connected (the
  consumer is gone, e.g. deleted, or the server restarted).  The silence is measured
  from the last message or heartbeat taken, not from the start of a read, so it is
  noticed however the consumer is polled (``next_msg`` with short timeouts included);
  what arrived while the caller was elsewhere is queued and counts when it is taken;
* a reconnect (the server may have sent messages while we were away).

Recreating retries (with a backoff) while the server cannot answer, except when the
stream itself is gone: then the consumer ends with :class:`StreamNotFoundError`, which
``next_msg``/iteration raise (every later read too) and the client's ``error_cb`` gets
once; a callback consumer's thread ends.  (nats.go's ordered consumer also gives up
on errors other than timeouts and JetStream being unavailable.)

Used by ``js.subscribe(..., ordered_consumer=True)`` and by the Key/Value watcher:
``OrderedConsumer(js, stream, subjects, deliver_policy=..., headers_only=..., cb=...)``.
Without ``cb`` the messages are taken with :meth:`OrderedConsumer.next_msg` or by
iterating, on the caller's thread (which also does the recreating); with ``cb`` a
thread of its own (``natsync-js-ordered``) calls it for each message, in order.

Threads and locks: one thread reads at a time (the caller of ``next_msg``, or the
callback thread); it alone changes the sequence state (``stream_seq``, ``_cseq``,
``_last``, ``_local``) and recreates the consumer.  ``_lock`` guards what
:meth:`OrderedConsumer.stop` (any thread) shares with it: ``_stopped``, ``_sub``,
``consumer`` and ``_error``; exactly one of ``stop()`` and a reset drops a given
consumer.  The reader also looks at ``_stopped`` without the lock between messages:
it is set once and never cleared, so a stale look only lets one more queued message
out before the stop is seen under the lock.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from ..errors import BadSubscriptionError, ConnectionClosedError, NatsError, TimeoutError
from ..headers import Headers
from ..msg import Msg
from ..subscription import Subscription
from .api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from .errors import StreamNotFoundError
from .push import PushSubscription

if TYPE_CHECKING:  # pragma: no cover
    from .context import JetStream

__all__ = ["OrderedConsumer"]

log: logging.Logger = logging.getLogger("natsync")

_INACTIVE = 300.0  # seconds the server keeps a consumer nobody listens to (nats.go: 5 min)
_MAX_BACKOFF = 1.0
_BATCH = 256  # messages next_msg() takes from the deliver subscription at once


class OrderedConsumer(PushSubscription):
    """An ordered consumer on ``stream`` (see the module docstring).

    Args:
        js: the JetStream context.
        stream: the stream name.
        subjects: a filter subject, a list of them, or None for the whole stream.
        deliver_policy: where to start (``DeliverPolicy``); ``opt_start_seq`` /
            ``opt_start_time`` for ``BY_START_SEQUENCE`` / ``BY_START_TIME``.
        headers_only: deliver headers without payloads.
        idle_heartbeat: seconds between the server's heartbeats (missed for twice
            that while connected: recreate).
        cb: called with each message on the consumer's own thread; without it, use
            :meth:`next_msg` or iteration.

    Attributes:
        stream_seq: the stream sequence of the last message delivered (0: none yet).
        initial_pending: how many messages matched when the consumer was first created
            (the server's ``num_pending``), e.g. to know when history ends.
    """

    #: The name of the consumer now in use (a new one after each reset), guarded by ``_lock``.
    consumer: str

    def __init__(
        self,
        js: JetStream,
        stream: str,
        subjects: str | Sequence[str] | None = None,
        *,
        deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
        opt_start_seq: int | None = None,
        opt_start_time: datetime.datetime | None = None,
        headers_only: bool = False,
        idle_heartbeat: float = 5.0,
        cb: Callable[[Msg], object] | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(js, stream, "", None)
        if cb is not None and not callable(cb):
            raise TypeError("cb must be callable or None")
        if not idle_heartbeat > 0:
            raise ValueError(f"idle_heartbeat must be > 0 seconds, not {idle_heartbeat!r}")
        if isinstance(subjects, str):
            filters = [subjects] if subjects else []
        else:
            filters = list(subjects or [])
        self._filters = filters
        self._policy = deliver_policy
        self._start_seq = opt_start_seq
        self._start_time = opt_start_time
        self._headers_only = headers_only
        self._hb = float(idle_heartbeat)
        self._cb = cb
        self.stream_seq: int = 0
        self._cseq = 0
        self.initial_pending: int = 0
        self._lock = threading.Lock()  # guards _stopped, _sub, consumer, _error (see above)
        self._stopped = False
        self._error: StreamNotFoundError | None = None  # the stream is gone: the end
        self._stop_event = threading.Event()
        self._last = time.monotonic()  # when the last message or heartbeat was taken
        self._seen = 0  # the deliver subscription's `delivered` when _last was set
        self._reconnects = self._nc.stats.reconnects
        self._resets = 0
        self._need_reset = False
        self._count = 0
        self._local: deque[Msg] = deque()  # a batch taken from the subscription (next_msg)
        self._thread: threading.Thread | None = None
        # the first consumer is created here, so that errors (no stream) raise at once
        info = self._create(timeout)
        self.initial_pending = info.num_pending or 0
        if cb is not None:
            self._thread = threading.Thread(target=self._run, name="natsync-js-ordered", daemon=True)
            self._thread.start()
            self._nc._add_companion(self._thread)

    def __repr__(self) -> str:
        return (
            f"<natsync.js.OrderedConsumer stream={self.stream!r} filters={self._filters!r} "
            f"seq={self.stream_seq}>"
        )

    @property
    def resets(self) -> int:
        """How many times the consumer was recreated."""
        return self._resets

    # --- consumer (re)creation -------------------------------------------------------------

    def _config(self, deliver: str) -> ConsumerConfig:
        cfg = ConsumerConfig(
            deliver_subject=deliver,
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            flow_control=True,
            idle_heartbeat=self._hb,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=_INACTIVE,
            headers_only=self._headers_only or None,
            deliver_policy=self._policy,
            opt_start_seq=self._start_seq,
            opt_start_time=self._start_time,
        )
        if self.stream_seq > 0:
            cfg.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            cfg.opt_start_seq = self.stream_seq + 1
            cfg.opt_start_time = None
        if len(self._filters) == 1:
            cfg.filter_subject = self._filters[0]
        elif self._filters:
            cfg.filter_subjects = list(self._filters)
        return cfg

    def _create(self, timeout: float | None) -> ConsumerInfo:
        nc = self._nc
        deliver = nc.new_inbox()
        sub = nc.subscribe(deliver, pending_msgs_limit=None, pending_bytes_limit=None)
        try:
            info = self._js.add_consumer(self.stream, self._config(deliver), timeout=timeout)
        except BaseException:
            try:
                sub.unsubscribe()
            except NatsError:
                pass
            raise
        with self._lock:
            stopped = self._stopped
            self._sub = sub
            self.consumer = info.name
        self._need_reset = False
        self._cseq = 0
        self._last = time.monotonic()
        self._seen = 0
        self._reconnects = nc.stats.reconnects
        if stopped:  # stop() came meanwhile and saw no consumer: this one is ours to drop
            self._drop(sub, info.name)
        return info

    def _drop(self, sub: Subscription | None, consumer: str) -> None:
        """Forget a consumer: unsubscribe its deliver subject, ask the server to delete
        it (without waiting for the answer)."""
        if sub is not None and sub.is_valid:
            try:
                sub.unsubscribe()
            except NatsError:
                pass
        if consumer:
            try:
                self._nc.publish(f"{self._js._prefix}.CONSUMER.DELETE.{self.stream}.{consumer}", b"")
            except NatsError:
                pass

    def _reset(self) -> None:
        """Drop the current consumer: the next read recreates it after the last stream
        sequence delivered (:meth:`_recreate`)."""
        self._resets += 1
        self._local.clear()
        with self._lock:
            sub, consumer, stopped = self._sub, self.consumer, self._stopped
            self._sub = None
        self._need_reset = True
        if not stopped:  # (else stop() dropped it)
            self._drop(sub, consumer)

    def _recreate(self, deadline: float | None) -> None:
        """Create the consumer again; retries until it works, ``deadline`` passes
        (natsync.TimeoutError; the next read tries again), the consumer is stopped or
        the client closes."""
        backoff = 0.1
        while not self._stopped:
            if self._nc.is_closed:
                raise ConnectionClosedError()
            timeout = min(self._js._timeout, 5.0)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"ordered consumer on {self.stream!r}: could not recreate its consumer in time "
                        "(the server is unreachable or JetStream is not ready); reading again retries"
                    )
                timeout = max(min(timeout, left), 0.001)
            try:
                self._create(timeout)
                return
            except ConnectionClosedError:
                raise
            except StreamNotFoundError as e:
                raise self._gone(e) from None
            except (NatsError, OSError) as e:
                log.debug("ordered consumer on %s: recreate failed: %s", self.stream, e)
            wait = backoff if deadline is None else max(min(backoff, deadline - time.monotonic()), 0.0)
            if self._stop_event.wait(wait):
                break
            backoff = min(backoff * 2, _MAX_BACKOFF)
        raise BadSubscriptionError("ordered consumer was stopped")

    def _gone(self, cause: StreamNotFoundError) -> StreamNotFoundError:
        """The stream was deleted: end for good, tell ``error_cb`` once."""
        err = StreamNotFoundError(
            cause.code,
            cause.err_code,
            f"stream {self.stream!r} was deleted: the ordered consumer on it has ended",
            operation="ordered consumer",
            stream=self.stream,
        )
        with self._lock:
            first = self._error is None and not self._stopped
            if first:
                self._error = err
        if first:
            log.warning("ordered consumer on %s ended: its stream was deleted", self.stream)
            self._nc._report_error(err)
        return err

    # --- receiving -----------------------------------------------------------------------

    def next_msg(self, timeout: float | None = 1.0) -> Msg:
        """The next message in stream order, waiting up to ``timeout`` seconds (None:
        no limit).

        Raises:
            natsync.TimeoutError: none came in time.
            BadSubscriptionError: the consumer was stopped.
            StreamNotFoundError: the stream was deleted (the consumer has ended).
            ConnectionClosedError: the client closed.
        """
        if self._cb is not None:
            raise BadSubscriptionError("this ordered consumer has a callback: messages go to it")
        # fast path: messages are queued; no clock, no reconnect check (see _poll). They
        # are taken from the subscription a batch at a time (one lock for the batch);
        # _reset() drops what is left of a batch, which belongs to the old consumer.
        local = self._local
        while local and not self._stopped:
            msg = self._handle(local.popleft())
            if msg is not None:
                return msg
        sub = self._sub
        if sub is not None and sub.pending_msgs and not self._stopped and self._count < 1000:
            got = sub._take_upto(_BATCH)
            self._count += len(got)
            local.extend(got)
            while local and not self._stopped:
                msg = self._handle(local.popleft())
                if msg is not None:
                    return msg
        return self._poll(timeout)

    def _poll(self, timeout: float | None) -> Msg:
        nc = self._nc
        deadline = None if timeout is None else time.monotonic() + timeout
        hb_window = 2 * self._hb
        while True:
            if self._stopped:
                raise BadSubscriptionError("ordered consumer was stopped")
            if self._error is not None:
                raise self._error
            if self._need_reset:
                self._recreate(deadline)
            sub = self._sub
            assert sub is not None
            msg: Msg | None
            if sub.pending_msgs:
                # fast path: something is queued, no clock needed; a reconnect is looked
                # for every so often (a gap or a heartbeat check catches the rest)
                try:
                    msg = sub.next_msg(timeout=None)
                except BadSubscriptionError:
                    if self._stopped:
                        raise
                    continue
                self._count += 1
                if self._count >= 1000:
                    self._count = 0
                    rc = nc.stats.reconnects
                    if rc != self._reconnects:
                        self._reconnects = rc
                        self._reset()
                        continue
                    self._last = time.monotonic()
            else:
                now = time.monotonic()
                seen = sub.delivered
                if seen != self._seen:  # taken since we last looked (a fast path): not silence
                    self._seen = seen
                    self._last = now
                wait = self._last + hb_window - now
                if deadline is not None:
                    wait = min(wait, deadline - now)
                try:
                    msg = sub.next_msg(timeout=max(min(wait, 1.0), 0.0))
                except TimeoutError:
                    msg = None
                except BadSubscriptionError:
                    if self._stopped:
                        raise
                    continue  # an old deliver subscription ended under us
                now = time.monotonic()
                rc = nc.stats.reconnects
                if rc != self._reconnects:
                    self._reconnects = rc
                    self._reset()
                    continue
                if msg is None:
                    if not nc.is_connected:
                        self._last = now
                    elif now - self._last >= hb_window:
                        self._reset()
                        continue
                    if deadline is not None and now >= deadline:
                        raise TimeoutError(
                            f"no message from the ordered consumer on {self.stream!r} within {timeout} s"
                        )
                    continue
                self._last = now
            got = self._handle(msg)
            if got is not None:
                return got

    def _handle(self, msg: Msg) -> Msg | None:
        """Take one received message: answer a status message, check the sequence of a
        data message; return it if it is the next one in order."""
        if msg._hdr is not None and not msg.data:
            h = msg.headers
            if h is not None and h.status is not None:
                self._control(msg, h.status, h)
                return None
        reply = msg.reply
        if not reply:
            return None
        dots = reply.count(".")
        if dots == 8:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
            t = reply.rsplit(".", 4)  # [..., sseq, cseq, ts, pending]: the fewest strings
            sseq, cseq = t[1], t[2]
        elif dots >= 10:  # $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>...
            t = reply.split(".", 9)
            sseq, cseq = t[7], t[8]
        else:
            return None
        c = int(cseq)
        if c != self._cseq + 1:
            self._reset()
            return None
        self._cseq = c
        self.stream_seq = int(sseq)
        return msg

    def _control(self, msg: Msg, status: int, h: Headers) -> None:
        nc = self._nc
        if status == 100:
            if msg.reply:
                msg.respond(b"")  # flow control: sent at once, the server waits for it
                return
            stalled = h.get("Nats-Consumer-Stalled")
            if stalled:
                nc.publish(stalled, b"")
            last = h.get("Nats-Last-Consumer")
            if last is not None and last.isdigit() and int(last) != self._cseq:
                self._reset()  # the heartbeat says we missed something
        elif status in (404, 408, 409, 503):
            self._reset()  # the consumer went away (e.g. deleted): make a new one

    def __iter__(self) -> Iterator[Msg]:
        """Yield messages in stream order until the consumer is stopped.

        Raises:
            StreamNotFoundError: the stream was deleted (the consumer has ended).
            ConnectionClosedError: the client closed.
        """
        while True:
            try:
                yield self.next_msg(timeout=None)
            except BadSubscriptionError:
                return

    def _run(self) -> None:
        cb = self._cb
        assert cb is not None
        while True:
            try:
                msg = self._poll(None)
            except (BadSubscriptionError, ConnectionClosedError, StreamNotFoundError):
                return  # (a deleted stream was reported to error_cb)
            except Exception as e:  # noqa: BLE001 - keep the thread's failure visible
                log.exception("ordered consumer on %s failed", self.stream)
                self._nc._report_error(e)
                return
            try:
                cb(msg)
            except Exception:
                log.exception("callback of the ordered consumer on %s raised", self.stream)

    # --- ending --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the consumer: the iteration ends, the callback thread ends (joined
        unless called from it) and the server's consumer is deleted."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            sub, consumer = self._sub, self.consumer
        self._stop_event.set()
        if not self._nc.is_closed:
            self._drop(sub, consumer)
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(5.0)

    def unsubscribe(self) -> None:
        """Same as :meth:`stop`."""
        self.stop()

    def drain(self, timeout: float | None = None) -> None:
        """Same as :meth:`stop` (an ordered consumer has nothing to acknowledge)."""
        self.stop()

    @property
    def is_valid(self) -> bool:
        """False once stopped, ended (its stream was deleted) or the client closed."""
        return not self._stopped and self._error is None and not self._nc.is_closed

    def consumer_info(self, timeout: float | None = None) -> ConsumerInfo:
        """The current (latest recreated) consumer's info."""
        return self._js.consumer_info(self.stream, self.consumer, timeout)

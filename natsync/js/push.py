"""Push consumers (:meth:`JetStream.subscribe`): the server sends messages to a deliver
subject; flow-control requests and heartbeats are answered here and never reach the
user."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import BadSubscriptionError, ConnectionClosedError, NatsError
from ..msg import Msg
from ..subscription import Subscription
from ._proto import check_name
from .api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy
from .errors import BadRequestError, JetStreamError, MsgAlreadyAckdError, NotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Client
    from .context import JetStream

__all__ = ["PushSubscription", "subscribe_push", "subscribe_bind", "handle_control"]


def handle_control(nc: Client, msg: Msg) -> bool:
    """If ``msg`` is a status message (heartbeat, flow control), answer what needs an
    answer and return True; return False for a user message."""
    if msg._hdr is None or msg.data:
        return False
    h = msg.headers
    if h is None or h.status is None:
        return False
    if h.status == 100:
        if msg.reply:  # flow control request: an empty reply lets the server go on
            msg.respond(b"")  # sent at once: the server waits for it
        else:
            stalled = h.get("Nats-Consumer-Stalled")
            if stalled:
                nc.publish(stalled, b"")
    return True


class PushSubscription:
    """A push consumer subscription (from :meth:`JetStream.subscribe`).

    Without a callback, take messages with :meth:`next_msg` or by iterating; with one,
    they go to it on the subscription's own thread.
    """

    def __init__(
        self,
        js: JetStream,
        stream: str,
        consumer: str,
        sub: Subscription | None,
        *,
        delete_on_unsubscribe: bool = False,
    ) -> None:
        self._js = js
        self._nc = js._nc
        self.stream: str = stream
        self.consumer: str = consumer
        self._sub = sub
        self._delete = delete_on_unsubscribe

    def __repr__(self) -> str:
        return f"<natsync.js.PushSubscription stream={self.stream!r} consumer={self.consumer!r}>"

    @property
    def subject(self) -> str:
        """The deliver subject."""
        return self._sub.subject if self._sub is not None else ""

    @property
    def queue(self) -> str | None:
        """The deliver group (queue), or None."""
        return self._sub.queue if self._sub is not None else None

    @property
    def is_valid(self) -> bool:
        """False once the subscription has ended."""
        return self._sub is not None and self._sub.is_valid

    @property
    def pending_msgs(self) -> int:
        """Messages received and not yet taken."""
        return self._sub.pending_msgs if self._sub is not None else 0

    def next_msg(self, timeout: float | None = 1.0) -> Msg:
        """The next message, waiting up to ``timeout`` seconds (None: no limit).

        Raises:
            natsync.TimeoutError: none came in time.
            BadSubscriptionError: the subscription has ended.
            ConnectionClosedError: the client closed.
        """
        sub = self._sub
        assert sub is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        nc = self._nc
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            msg = sub.next_msg(timeout=left)
            if not handle_control(nc, msg):
                return msg

    def __iter__(self) -> Iterator[Msg]:
        """Yield messages until the subscription ends."""
        while True:
            try:
                yield self.next_msg(timeout=None)
            except BadSubscriptionError:
                return

    def consumer_info(self, timeout: float | None = None) -> ConsumerInfo:
        """The consumer's current info."""
        return self._js.consumer_info(self.stream, self.consumer, timeout)

    def unsubscribe(self) -> None:
        """End the subscription.  A consumer this subscription created without a
        name (ephemeral) is deleted; a durable or named one stays.

        Raises:
            BadSubscriptionError: the subscription has already ended (a second
                ``unsubscribe()``), as for core subscriptions.
        """
        sub = self._sub
        if sub is None:
            raise BadSubscriptionError("push subscription has already ended")
        try:
            sub.unsubscribe()
        finally:
            self._delete_consumer()

    def drain(self, timeout: float | None = None) -> None:
        """Deliver what is pending, then end (as :meth:`natsync.Subscription.drain`)."""
        sub = self._sub
        if sub is not None:
            sub.drain(timeout)
        self._delete_consumer()

    def _delete_consumer(self) -> None:
        if self._delete:
            self._delete = False
            try:
                self._js.delete_consumer(self.stream, self.consumer, timeout=1.0)
            except (NatsError, ValueError):
                pass

    def __enter__(self) -> PushSubscription:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.is_valid:
            self._delete_consumer()
            return
        try:
            self.unsubscribe()
        except (ConnectionClosedError, BadSubscriptionError):
            pass


def _wrap(nc: Client, cb: Callable[[Msg], object], auto_ack: bool) -> Callable[[Msg], None]:
    """The callback of a push subscription: control messages answered here, ``cb`` for
    the rest, then an ack unless ``auto_ack`` is False (manual_ack, or a consumer with
    ack policy none: nothing to acknowledge)."""

    def deliver(msg: Msg) -> None:
        if handle_control(nc, msg):
            return
        cb(msg)
        if auto_ack and msg.reply and not getattr(msg, "_ackd", False):
            try:
                msg.ack()
            except (MsgAlreadyAckdError, ConnectionClosedError):
                pass

    return deliver


def subscribe_push(
    js: JetStream,
    subject: str,
    *,
    queue: str | None,
    cb: Callable[[Msg], object] | None,
    durable: str | None,
    stream: str | None,
    config: ConsumerConfig | None,
    manual_ack: bool,
    ordered_consumer: bool,
    idle_heartbeat: float | None,
    flow_control: bool,
    deliver_policy: DeliverPolicy | None,
    headers_only: bool | None,
    pending_msgs_limit: int | None,
    pending_bytes_limit: int | None,
    timeout: float | None,
) -> PushSubscription:
    """The work of :meth:`JetStream.subscribe`."""
    if cb is not None and not callable(cb):
        raise TypeError("cb must be callable or None")
    if stream is None:
        stream = js.find_stream_name_by_subject(subject, timeout)
    check_name("stream", stream)
    cfg = config if config is not None else ConsumerConfig()
    if ordered_consumer:
        if queue or durable or cfg.durable_name:
            raise ValueError("an ordered consumer cannot have a queue or a durable name")
        from .ordered import OrderedConsumer

        return OrderedConsumer(
            js,
            stream,
            cfg.filter_subjects or cfg.filter_subject or subject,
            deliver_policy=deliver_policy or cfg.deliver_policy or DeliverPolicy.ALL,
            opt_start_seq=cfg.opt_start_seq,
            opt_start_time=cfg.opt_start_time,
            headers_only=bool(headers_only or cfg.headers_only),
            idle_heartbeat=idle_heartbeat or cfg.idle_heartbeat or 5.0,
            cb=cb,
        )
    nc = js._nc
    name = durable or cfg.durable_name or cfg.name or queue
    if name:
        check_name("consumer", name)
    if cfg.deliver_subject is not None and not cfg.deliver_subject:
        raise ValueError("config.deliver_subject is empty: give a subject, or leave it None for an inbox")
    limits: dict[str, Any] = {}
    if pending_msgs_limit is not None:
        limits["pending_msgs_limit"] = pending_msgs_limit
    if pending_bytes_limit is not None:
        limits["pending_bytes_limit"] = pending_bytes_limit
    if name:
        try:
            info = js.consumer_info(stream, name, timeout)
        except NotFoundError:
            pass
        else:
            return _bind_existing(js, stream, info, queue, cb, manual_ack, limits, timeout)
    changes: dict[str, Any] = {}
    if not cfg.deliver_subject:
        changes["deliver_subject"] = nc.new_inbox()
    if durable or (name and not cfg.name and not cfg.durable_name):
        changes["durable_name"] = name  # nats.go: the queue names the durable when none is given
    if queue:
        if cfg.deliver_group and cfg.deliver_group != queue:
            raise ValueError(f"queue {queue!r} and config.deliver_group {cfg.deliver_group!r} differ")
        changes["deliver_group"] = queue
    if subject and not cfg.filter_subject and not cfg.filter_subjects:
        changes["filter_subject"] = subject
    if idle_heartbeat is not None:
        changes["idle_heartbeat"] = idle_heartbeat
    if flow_control:
        changes["flow_control"] = True
        if cfg.idle_heartbeat is None and idle_heartbeat is None:
            changes["idle_heartbeat"] = 5.0  # the server requires heartbeats with flow control
    if deliver_policy is not None:
        changes["deliver_policy"] = deliver_policy
    if headers_only is not None:
        changes["headers_only"] = headers_only
    if cfg.ack_policy is None:
        changes["ack_policy"] = AckPolicy.EXPLICIT
    cfg = cfg.evolve(**changes)
    deliver = cfg.deliver_subject
    assert deliver
    group = cfg.deliver_group
    auto_ack = not manual_ack and cfg.ack_policy != AckPolicy.NONE
    wrapped = _wrap(nc, cb, auto_ack) if cb is not None else None
    # subscribe first: the server starts delivering as soon as the consumer exists
    sub = nc.subscribe(deliver, queue=group, cb=wrapped, **limits)
    try:
        # "create", not create-or-update: a consumer another thread made meanwhile with
        # another deliver subject must not be changed under its subscription
        info = js._create_consumer(stream, cfg, timeout, action="create")
    except BadRequestError as e:
        try:
            sub.unsubscribe()
        except NatsError:
            pass
        from .context import _CONSUMER_EXISTS

        if not name or e.err_code not in _CONSUMER_EXISTS:
            raise
        # made by someone else meanwhile (nats.go: look it up and bind if it matches)
        info = js.consumer_info(stream, name, timeout)
        return _bind_existing(js, stream, info, queue, cb, manual_ack, limits, timeout)
    except BaseException:
        try:
            sub.unsubscribe()
        except NatsError:
            pass
        raise
    return PushSubscription(js, stream, info.name, sub, delete_on_unsubscribe=not name)


def _bind_existing(
    js: JetStream,
    stream: str,
    info: ConsumerInfo,
    queue: str | None,
    cb: Callable[[Msg], object] | None,
    manual_ack: bool,
    limits: dict[str, Any],
    timeout: float | None,
) -> PushSubscription:
    """Subscribe to an existing push consumer's deliver subject (nats.go's checks)."""
    name = info.name
    deliver = info.config.deliver_subject
    if not deliver:
        raise JetStreamError(
            f"consumer {name!r} on stream {stream!r} is a pull consumer: use pull_subscribe() for it"
        )
    group = info.config.deliver_group
    if info.push_bound and not group:
        # a subscription that just ended may still count on the server for a moment
        for _ in range(5):
            time.sleep(0.1)
            info = js.consumer_info(stream, info.name, timeout)
            if not info.push_bound:
                break
    if info.push_bound and not group:
        raise JetStreamError(
            f"consumer {name!r} on stream {stream!r} is already bound to a subscription: "
            "use a deliver group (queue) to share it, or another durable name"
        )
    if group != queue and (group or queue):
        raise JetStreamError(
            f"consumer {name!r} has deliver group {group!r}, not {queue!r}: subscribe with queue={group!r}"
        )
    nc = js._nc
    auto_ack = not manual_ack and info.config.ack_policy != AckPolicy.NONE
    wrapped = _wrap(nc, cb, auto_ack) if cb is not None else None
    sub = nc.subscribe(deliver, queue=queue, cb=wrapped, **limits)
    return PushSubscription(js, stream, info.name, sub)


def subscribe_bind(
    js: JetStream,
    stream: str,
    config: ConsumerConfig | None,
    consumer: str | None,
    *,
    cb: Callable[[Msg], object] | None,
    manual_ack: bool,
    pending_msgs_limit: int | None,
    pending_bytes_limit: int | None,
    timeout: float | None,
) -> PushSubscription:
    """The work of :meth:`JetStream.subscribe_bind`."""
    if cb is not None and not callable(cb):
        raise TypeError("cb must be callable or None")
    check_name("stream", stream)
    if consumer is None and config is not None:
        consumer = config.name or config.durable_name
    if consumer is None:
        raise ValueError("subscribe_bind needs consumer= (or a config with its name)")
    check_name("consumer", consumer)
    limits: dict[str, Any] = {}
    if pending_msgs_limit is not None:
        limits["pending_msgs_limit"] = pending_msgs_limit
    if pending_bytes_limit is not None:
        limits["pending_bytes_limit"] = pending_bytes_limit
    if config is not None and config.deliver_subject:
        # nats-py: the config says where the messages go; no lookup
        ack_none = config.ack_policy == AckPolicy.NONE
        wrapped = _wrap(js._nc, cb, not manual_ack and not ack_none) if cb is not None else None
        sub = js._nc.subscribe(
            config.deliver_subject, queue=config.deliver_group or None, cb=wrapped, **limits
        )
        return PushSubscription(js, stream, consumer, sub)
    info = js.consumer_info(stream, consumer, timeout)
    queue = config.deliver_group if config is not None else None
    queue = queue or info.config.deliver_group
    return _bind_existing(js, stream, info, queue, cb, manual_ack, limits, timeout)

"""OpenTelemetry tracing and metrics for natsync (extra ``natsync[otel]``).

This is the only natsync module that imports OpenTelemetry, and nothing in natsync
imports it: with the instrumentation off, natsync runs exactly the code it runs without
this module (no hook, no attribute check on the publish or receive paths).

Two ways to switch it on, in OpenTelemetry's instrumentor convention:

* :class:`NatsyncInstrumentor` ``().instrument(tracer_provider=None,
  meter_provider=None)`` wraps the public methods of natsync's classes (like the
  contrib instrumentors do: the originals are kept and put back by
  :meth:`~NatsyncInstrumentor.uninstrument`), so every client is traced;
* :func:`instrument_client` ``(nc)`` traces one client only: its methods are wrapped as
  instance attributes, and what it creates (subscriptions, JetStream contexts, pull and
  push subscriptions, Key/Value and Object Store handles) is marked as traced;
  :func:`uninstrument_client` undoes it.

What is traced (spans follow OpenTelemetry's messaging semantic conventions;
``messaging.system`` is ``"nats"``):

* ``publish``: a PRODUCER span ``send SUBJECT``, its context injected into the headers;
* ``request``: a CLIENT span ``request SUBJECT`` over the round trip, context injected;
* subscription callbacks: a CONSUMER span ``process SUBSCRIPTION`` parented to the
  producer's context (from the headers), current while the callback runs;
* ``next_msg()`` / iteration: a CLIENT span ``receive SUBSCRIPTION`` per message,
  parented to the producer's context;
* ``js.publish`` / ``js.publish_async``: PRODUCER ``send SUBJECT`` (``messaging.nats.*``);
* JetStream push and ordered callbacks: CONSUMER ``process STREAM``; their
  ``next_msg()`` and pull ``messages()``: CLIENT ``receive STREAM`` per message;
* pull ``fetch()``: one CLIENT ``receive STREAM`` span with a link to each producer;
* ack / nak / term / in_progress: CLIENT ``ack STREAM`` ... (``settle``);
* micro endpoint handlers: SERVER ``SERVICE ENDPOINT``;
* Key/Value and Object Store operations: CLIENT ``kv.put BUCKET``, ``obj.get BUCKET`` ...

Context goes into message headers through the globally configured propagator
(``opentelemetry.propagate``; W3C ``traceparent``/``tracestate`` and ``baggage`` by
default). Headers the caller set are never overwritten, and the caller's headers object
is never changed: a copy carries the added headers.

Threads: the wrappers hold no natsync lock and run only on the threads that call them.
Shared state: ``_STATE`` (which instrumentation is active, the originals) is guarded by
``_STATE.lock``; each :class:`_Telemetry`'s sets of clients and subscriptions are
guarded by its ``lock``; ``_SETTLE`` (the span a JetStream acknowledgement belongs to)
by ``_SETTLE_LOCK``.
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import propagate, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
except ImportError as _e:  # pragma: no cover - the extra is installed for the tests
    raise ImportError(
        "natsync.otel needs OpenTelemetry's API: pip install 'natsync[otel]' (opentelemetry-api)"
    ) from _e

try:  # the key every OpenTelemetry instrumentation honours
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY as _SUPPRESS_KEY
except ImportError:  # pragma: no cover - very old API
    _SUPPRESS_KEY = otel_context.create_key("suppress_instrumentation")

from . import __version__
from .client import Client
from .headers import Headers, HeadersInput
from .msg import Msg
from .subscription import Subscription

__all__ = [
    "NatsyncInstrumentor",
    "extract",
    "instrument_client",
    "uninstrument_client",
    "SYSTEM",
]

#: The value of ``messaging.system`` on every span and metric.
SYSTEM: Final = "nats"

# attribute names (OpenTelemetry messaging semantic conventions; messaging.nats.* ours)
_SYS = "messaging.system"
_DEST = "messaging.destination.name"
_TEMPLATE = "messaging.destination.template"
_OP_TYPE = "messaging.operation.type"
_OP_NAME = "messaging.operation.name"
_BODY = "messaging.message.body.size"
_MSG_ID = "messaging.message.id"
_CLIENT_ID = "messaging.client.id"
_GROUP = "messaging.consumer.group.name"
_BATCH = "messaging.batch.message_count"
_ERROR = "error.type"
_STREAM = "messaging.nats.stream"
_CONSUMER = "messaging.nats.consumer"
_SEQ = "messaging.nats.sequence.stream"
_CSEQ = "messaging.nats.sequence.consumer"
_DELIVERED = "messaging.nats.delivery_count"
_DUP = "messaging.nats.duplicate"

_ATTR: Final = "_natsync_otel"  # the telemetry an object (client, subscription, ...) is traced by
_ACK_PREFIX = "$JS.ACK."
_SETTLE_OPS = {b"+ACK": "ack", b"-NAK": "nak", b"+WPI": "in_progress", b"+TERM": "term", b"+NXT": "ack"}
_SETTLE_MAX = 4096


class _HeadersGetter(Getter[Any]):
    """Reads a propagator's fields from natsync :class:`~natsync.Headers` (case-insensitive)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        if carrier is None:
            return None
        values: list[str] = carrier.get_all(key)
        return values or None

    def keys(self, carrier: Any) -> list[str]:
        return [] if carrier is None else list(carrier)


_GETTER = _HeadersGetter()


# --- telemetry: a tracer, a meter and its instruments -------------------------------------


# the observable counters read from each client's nc.stats: (metric, stat, unit, what it counts)
_STAT_COUNTERS: Final = (
    ("messaging.client.sent.messages", "out_msgs", "{message}", "Messages published by the client"),
    ("messaging.client.consumed.messages", "in_msgs", "{message}", "Messages received by the client"),
    ("nats.client.sent.bytes", "out_bytes", "By", "Bytes published by the client"),
    ("nats.client.received.bytes", "in_bytes", "By", "Bytes received by the client"),
    ("nats.client.reconnects", "reconnects", "{reconnect}", "Reconnects of the client"),
)


class _Telemetry:
    """A tracer and the metric instruments, made from the given providers."""

    def __init__(
        self,
        tracer_provider: Any,
        meter_provider: Any,
        outbox_depth: Callable[[], int] | None,
    ) -> None:
        self.tracer = trace.get_tracer(
            "natsync", __version__, tracer_provider, schema_url="https://opentelemetry.io/schemas/1.26.0"
        )
        # False after uninstrument (set under _STATE.lock, read without it: it only ever
        # goes from True to False); wrappers and observable callbacks then do nothing
        self.active = True
        self.lock = threading.Lock()
        self.clients: weakref.WeakSet[Client] = weakref.WeakSet()  # guard: lock
        self.subs: weakref.WeakSet[Subscription] = weakref.WeakSet()  # guard: lock
        self._outbox_depth = outbox_depth
        meter = otel_metrics.get_meter("natsync", __version__, meter_provider)
        self.request_duration = meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Duration of request() round trips and JetStream publishes (until the PubAck)",
        )
        for metric, stat, unit, what in _STAT_COUNTERS:
            meter.create_observable_counter(
                metric,
                [self._observe_stat(stat)],
                unit=unit,
                description=f"{what} (nc.stats.{stat})",
            )
        meter.create_observable_gauge(
            "nats.subscription.pending.messages",
            [self._observe_pending],
            unit="{message}",
            description="Messages waiting in a subscription's pending queue",
        )
        if outbox_depth is not None:
            meter.create_observable_gauge(
                "nats.outbox.depth",
                [self._observe_outbox],
                unit="{message}",
                description="Outbox rows not yet relayed",
            )

    def _observe_stat(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if not self.active:
                return []
            with self.lock:
                clients = list(self.clients)
            out = []
            for c in clients:
                attrs: dict[str, Any] = {_SYS: SYSTEM}
                try:
                    cid = c.client_id
                    value = getattr(c.stats, name)
                except Exception:  # noqa: BLE001 - a client that cannot tell (closed, forked)
                    continue
                if cid is not None:
                    attrs[_CLIENT_ID] = str(cid)
                out.append(Observation(value, attrs))
            return out

        return observe

    def _observe_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        if not self.active:
            return []
        with self.lock:
            subs = [s for s in self.subs if s.is_valid]
        return [
            Observation(s.pending_msgs, {_SYS: SYSTEM, _TEMPLATE: s.subject, "nats.subscription.sid": s.sid})
            for s in subs
        ]

    def _observe_outbox(self, options: CallbackOptions) -> Iterable[Observation]:
        fn = self._outbox_depth
        if not self.active or fn is None:
            return []
        return [Observation(int(fn()), {_SYS: SYSTEM})]

    def add_client(self, nc: Client) -> None:
        with self.lock:
            self.clients.add(nc)

    def add_sub(self, sub: Subscription) -> None:
        with self.lock:
            self.subs.add(sub)


# --- state ---------------------------------------------------------------------------------


class _State:
    """What is instrumented. Guard: ``lock`` for every change. ``global_tel`` is read
    without it by the wrappers: a reference replaced whole, never changed in place."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.global_tel: _Telemetry | None = None  # set while NatsyncInstrumentor is on
        self.class_patches: list[tuple[object, str, object]] = []  # (owner, name, original)
        self.shared_users = 0  # instrumented clients + the instrumentor: holders of the shared patches
        self.shared_patches: list[tuple[object, str, object]] = []
        self.module_patches: list[tuple[object, str, object]] = []


_STATE = _State()
_SETTLE: OrderedDict[str, Any] = OrderedDict()  # ack subject -> context of its span; guard: _SETTLE_LOCK
_SETTLE_LOCK = threading.Lock()
_local = threading.local()  # .msg: the message whose process span is current on this thread


def _tel_of(obj: object) -> _Telemetry | None:
    """The telemetry of a client or an object made through an instrumented one."""
    tel: _Telemetry | None = getattr(obj, _ATTR, None)
    return tel if tel is not None and tel.active else None


def _mark(obj: object, tel: _Telemetry) -> None:
    try:
        setattr(obj, _ATTR, tel)
    except AttributeError:  # pragma: no cover - an object with __slots__: left untraced
        pass


def _suppressed() -> bool:
    return bool(otel_context.get_value(_SUPPRESS_KEY))


@contextmanager
def _suppress() -> Iterator[None]:
    """Inner natsync calls of a traced operation make no spans of their own."""
    token = otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, True))
    try:
        yield
    finally:
        otel_context.detach(token)


# --- helpers ----------------------------------------------------------------------------------


def _body_size(payload: object) -> int:
    if isinstance(payload, (bytes, bytearray)):
        return len(payload)
    if isinstance(payload, memoryview):
        return payload.nbytes
    if isinstance(payload, str):
        return len(payload.encode())
    return 0


def _has_context(headers: HeadersInput | None) -> bool:
    """The caller's headers already carry a trace context."""
    if headers is None:
        return False
    try:
        keys = list(headers.keys()) if isinstance(headers, Mapping) else [k for k, _ in headers]
    except Exception:  # noqa: BLE001 - malformed: publish reports it
        return False
    return any(k.lower() == "traceparent" for k in keys if isinstance(k, str))


def _parent_from(headers: HeadersInput | None) -> Any:
    """With no span current, a context the caller's headers carry (an outbox row, code
    that injects by itself) parents the send span, so that it stays in that trace;
    None (the current context) otherwise."""
    if headers is None or trace.get_current_span().get_span_context().is_valid or not _has_context(headers):
        return None
    try:
        return propagate.extract(Headers(headers), getter=_GETTER)
    except Exception:  # noqa: BLE001 - malformed headers: publish reports them
        return None


def _inject(headers: HeadersInput | None, ctx: Any) -> HeadersInput | None:
    """*headers* plus the propagator's fields for *ctx*, in a copy; the caller's
    headers are never changed and their fields never replaced."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    if not carrier:
        return headers
    if headers is None:
        return carrier
    copy = Headers(headers)  # raises BadHeaderError for bad input, as publish would
    for k, v in carrier.items():
        if k not in copy:
            copy.add(k, v)
    return copy


def _extract(msg: Msg) -> Any:
    """The producer's context from the message headers, over the current context."""
    hdrs = msg.headers
    current = otel_context.get_current()
    if hdrs is None:
        return current
    return propagate.extract(hdrs, context=current, getter=_GETTER)


def _error_type(e: BaseException) -> str:
    return type(e).__qualname__


def _fail(span: Span, e: BaseException) -> None:
    span.set_attribute(_ERROR, _error_type(e))
    span.record_exception(e)
    span.set_status(Status(StatusCode.ERROR, f"{type(e).__name__}: {e}"))


class _Ending:
    """``with _Ending(span):`` ends *span* when the block ends; an exception out of the
    block is first recorded on the span (:func:`_fail`) and then goes on. ``error`` is
    then that exception's type name (None after a block that ended normally)."""

    __slots__ = ("span", "error")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.error: str | None = None

    def __enter__(self) -> Span:
        return self.span

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.error = _error_type(exc)
            _fail(self.span, exc)
        self.span.end()


def _use(span: Span) -> Any:
    """*span* made current for a block, neither ended nor marked failed by it (see _Ending)."""
    return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)


def _record_duration(tel: _Telemetry, op_name: str, dest: str, start: float, error: str | None) -> None:
    """One value of the operation-duration histogram, measured from *start* (perf_counter)."""
    mattrs: dict[str, Any] = {_SYS: SYSTEM, _OP_NAME: op_name, _DEST: dest}
    if error is not None:
        mattrs[_ERROR] = error
    tel.request_duration.record(time.perf_counter() - start, mattrs)


def _base(nc: Any, dest: str, op_type: str, op_name: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {_SYS: SYSTEM, _DEST: dest, _OP_TYPE: op_type, _OP_NAME: op_name}
    cid = getattr(nc, "client_id", None) if nc is not None else None
    if cid is not None:
        attrs[_CLIENT_ID] = str(cid)
    return attrs


def _js_attrs(msg: Msg, attrs: dict[str, Any]) -> None:
    try:
        md = msg.metadata
    except Exception:  # noqa: BLE001 - not a JetStream message
        return
    attrs[_STREAM] = md.stream
    attrs[_CONSUMER] = md.consumer
    attrs[_SEQ] = md.sequence.stream
    attrs[_CSEQ] = md.sequence.consumer
    attrs[_DELIVERED] = md.num_delivered


def _remember_settle(reply: str | None, ctx: Any) -> None:
    """The span a later ack of this JetStream message belongs to."""
    if not reply or not reply.startswith(_ACK_PREFIX):
        return
    with _SETTLE_LOCK:
        _SETTLE[reply] = ctx
        if len(_SETTLE) > _SETTLE_MAX:
            _SETTLE.popitem(last=False)


def _is_control(msg: Msg) -> bool:
    """A status message (heartbeat, flow control, no responders), not data."""
    if msg.data:
        return False
    h = msg.headers
    return h is not None and h.status is not None


def _links(ctx: Any) -> list[Link]:
    """A link to the ambient span, when there is one, for a span parented elsewhere."""
    sc = trace.get_current_span().get_span_context()
    return [Link(sc)] if sc.is_valid and trace.get_current_span(ctx).get_span_context() != sc else []


def extract(msg: Msg) -> Any:
    """Return the OpenTelemetry context a message's producer sent in its headers.

    Use it to parent your own processing span to the producer's, for messages taken
    with ``next_msg()``, ``fetch()`` or iteration (subscription callbacks already run
    inside such a span)::

        with tracer.start_as_current_span("work", context=natsync.otel.extract(msg)):
            ...

    Extraction goes through the globally configured propagator; a message without
    headers (or without a trace context in them) gives the current context.
    """
    return _extract(msg)


# --- core: Client ---------------------------------------------------------------------------


def _settle(tel: _Telemetry, nc: Any, subject: str, payload: object, call: Callable[[], Any]) -> Any:
    """An acknowledgement (a publish or request to the message's ack subject)."""
    data = bytes(payload[:5]) if isinstance(payload, (bytes, bytearray, memoryview)) else b""
    op = "ack"
    for prefix, name in _SETTLE_OPS.items():
        if data.startswith(prefix):
            op = name
            break
    parent = None
    if not trace.get_current_span().get_span_context().is_valid:
        # kept after use: in_progress() may come before the ack (bounded, oldest dropped)
        with _SETTLE_LOCK:
            parent = _SETTLE.get(subject)
    tokens = subject.split(".")
    stream = tokens[2] if len(tokens) > 3 else subject
    attrs = _base(nc, stream, "settle", op)
    if len(tokens) > 3:
        attrs[_STREAM] = tokens[2]
        attrs[_CONSUMER] = tokens[3]
    span = tel.tracer.start_span(f"{op} {stream}", context=parent, kind=SpanKind.CLIENT, attributes=attrs)
    with _Ending(span), _suppress():
        return call()


def _send(
    tel: _Telemetry,
    traced: Callable[..., Any],
    orig: Callable[..., Any],
    nc: Any,
    subject: Any,
    payload: Any,
    arg: Any,
    headers: Any,
    kw: dict[str, Any],
) -> Any:
    """A client's publish (*arg*: reply) or request (*arg*: timeout): *traced* (_publish,
    _request) makes its span, except for an ack (a settle span) and what makes none."""
    if type(subject) is not str or _suppressed():
        return orig(nc, subject, payload, arg, headers, **kw)
    if subject.startswith("$JS."):
        if subject.startswith(_ACK_PREFIX):  # an ack, or ack_sync through request
            return _settle(tel, nc, subject, payload, lambda: orig(nc, subject, payload, arg, headers, **kw))
        return orig(nc, subject, payload, arg, headers, **kw)  # JetStream API and flow control
    return traced(tel, orig, nc, subject, payload, arg, headers, kw)


def _publish(
    tel: _Telemetry,
    orig: Callable[..., None],
    nc: Any,
    subject: str,
    payload: Any,
    reply: Any,
    headers: Any,
    kw: dict[str, Any],
) -> None:
    parent = _parent_from(headers)
    attrs = _base(nc, subject, "send", "publish")
    attrs[_BODY] = _body_size(payload)
    span = tel.tracer.start_span(f"send {subject}", context=parent, kind=SpanKind.PRODUCER, attributes=attrs)
    if not span.get_span_context().is_valid:  # a no-op tracer: no context to send
        return orig(nc, subject, payload, reply, headers, **kw)
    with _Ending(span):
        hdrs = _inject(headers, trace.set_span_in_context(span))
        orig(nc, subject, payload, reply, hdrs, **kw)


def _request(
    tel: _Telemetry,
    orig: Callable[..., Msg],
    nc: Any,
    subject: str,
    payload: Any,
    timeout: Any,
    headers: Any,
    kw: dict[str, Any],
) -> Msg:
    attrs = _base(nc, subject, "send", "request")
    attrs[_BODY] = _body_size(payload)
    span = tel.tracer.start_span(f"request {subject}", kind=SpanKind.CLIENT, attributes=attrs)
    start = time.perf_counter()
    ending = _Ending(span)
    try:
        with ending:
            hdrs = _inject(headers, trace.set_span_in_context(span))
            return orig(nc, subject, payload, timeout, hdrs, **kw)
    finally:
        _record_duration(tel, "request", subject, start, ending.error)


def _process(span: Span, cb: Callable[[Msg], object], msg: Msg) -> object:
    """``cb(msg)`` inside its process *span* (ended with it), with ``_local.msg`` set to
    *msg* meanwhile (a web worker's handler then makes no second span)."""
    prev = getattr(_local, "msg", None)
    _local.msg = msg
    try:
        with _Ending(span), _use(span):
            return cb(msg)
    finally:
        _local.msg = prev


def _micro_endpoint(cb: object) -> bool:
    owner = getattr(cb, "__self__", None)
    return owner is not None and type(owner).__module__ == "natsync.micro"


def _traced_cb(
    tel: _Telemetry, nc: Any, sub_subject: str, queue: str | None, cb: Callable[[Msg], object]
) -> Callable[[Msg], object]:
    def traced(msg: Msg) -> object:
        reply = msg.reply
        if not tel.active or (reply is not None and reply.startswith(_ACK_PREFIX)) or _is_control(msg):
            return cb(msg)  # JetStream messages are traced by the JetStream wrappers
        ctx = _extract(msg)
        attrs = _base(nc, msg.subject, "process", "process")
        attrs[_BODY] = len(msg.data)
        if sub_subject != msg.subject:
            attrs[_TEMPLATE] = sub_subject
        if queue:
            attrs[_GROUP] = queue
        span = tel.tracer.start_span(
            f"process {sub_subject}", context=ctx, kind=SpanKind.CONSUMER, attributes=attrs, links=_links(ctx)
        )
        if not span.get_span_context().is_valid:  # a no-op tracer
            return cb(msg)
        return _process(span, cb, msg)

    return traced


def _subscribe(
    tel: _Telemetry,
    orig: Callable[..., Subscription],
    nc: Any,
    subject: Any,
    queue: Any,
    cb: Any,
    kwargs: dict[str, Any],
) -> Subscription:
    internal = (
        _suppressed()
        or type(subject) is not str
        or subject.startswith("$SRV.")
        or subject.startswith(_inbox_prefix(nc))
    )
    if internal or cb is None or not callable(cb) or _micro_endpoint(cb):
        sub = orig(nc, subject, queue, cb, **kwargs)
    else:
        sub = orig(nc, subject, queue, _traced_cb(tel, nc, subject, queue, cb), **kwargs)
    if not internal:
        _mark(sub, tel)
        tel.add_sub(sub)
    return sub


def _inbox_prefix(nc: Any) -> str:
    try:
        return str(nc.new_inbox()).rsplit(".", 1)[0] + "."
    except Exception:  # noqa: BLE001
        return "_INBOX."


def _receive(tel: _Telemetry, msg: Msg, name: str, attrs: dict[str, Any], start: int) -> None:
    """A receive span for one message, parented to its producer's context."""
    ctx = _extract(msg)
    attrs[_BODY] = len(msg.data)
    span = tel.tracer.start_span(
        name, context=ctx, kind=SpanKind.CLIENT, attributes=attrs, links=_links(ctx), start_time=start
    )
    span.end()
    _remember_settle(msg.reply, trace.set_span_in_context(span))


def _next_msg(orig: Callable[..., Msg], sub: Any, timeout: Any) -> Msg:
    tel = _tel_of(sub)
    if tel is None or _suppressed():
        return orig(sub, timeout)
    start = time.time_ns()
    msg = orig(sub, timeout)  # a timeout or an end is not a message: no span
    if (msg.reply is not None and msg.reply.startswith(_ACK_PREFIX)) or _is_control(msg):
        return msg
    attrs = _base(None, msg.subject, "receive", "receive")
    if sub.subject != msg.subject:
        attrs[_TEMPLATE] = sub.subject
    _receive(tel, msg, f"receive {sub.subject}", attrs, start)
    return msg


# --- JetStream ----------------------------------------------------------------------------------


def _tel_for(js: object) -> _Telemetry | None:
    g = _STATE.global_tel
    return g if g is not None and g.active else _tel_of(js)


def _js_publish(
    orig: Callable[..., Any], js: Any, subject: Any, payload: Any, kwargs: dict[str, Any], op_name: str
) -> Any:
    tel = _tel_for(js)
    if tel is None or _suppressed() or type(subject) is not str:
        return orig(js, subject, payload, **kwargs)
    nc = getattr(js, "_nc", None)
    attrs = _base(nc, subject, "send", op_name)
    attrs[_BODY] = _body_size(payload)
    if kwargs.get("msg_id"):
        attrs[_MSG_ID] = kwargs["msg_id"]
    span = tel.tracer.start_span(
        f"send {subject}",
        context=_parent_from(kwargs.get("headers")),
        kind=SpanKind.PRODUCER,
        attributes=attrs,
    )
    start = time.perf_counter()
    ending = _Ending(span)
    try:
        with ending:
            kwargs = dict(kwargs, headers=_inject(kwargs.get("headers"), trace.set_span_in_context(span)))
            with _suppress():
                result = orig(js, subject, payload, **kwargs)
            if op_name == "publish":
                span.set_attribute(_STREAM, result.stream)
                span.set_attribute(_SEQ, result.seq)
                if result.duplicate:
                    span.set_attribute(_DUP, True)
            return result
    finally:
        if op_name == "publish":
            _record_duration(tel, "publish", subject, start, ending.error)


def _js_cb(tel: _Telemetry, nc: Any, subject: str, cb: Callable[[Msg], object]) -> Callable[[Msg], object]:
    def traced(msg: Msg) -> object:
        if not tel.active or _is_control(msg):
            return cb(msg)
        ctx = _extract(msg)
        attrs = _base(nc, msg.subject, "process", "process")
        attrs[_BODY] = len(msg.data)
        _js_attrs(msg, attrs)
        name = f"process {attrs.get(_STREAM, subject)}"
        span = tel.tracer.start_span(
            name, context=ctx, kind=SpanKind.CONSUMER, attributes=attrs, links=_links(ctx)
        )
        sctx = trace.set_span_in_context(span)
        try:
            return _process(span, cb, msg)
        finally:
            _remember_settle(msg.reply, sctx)  # an ack after the callback (auto-ack) belongs here

    return traced


def _js_subscribe(
    orig: Callable[..., Any],
    js: Any,
    subject: Any,
    queue: Any,
    cb: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    tel = _tel_for(js)
    if tel is None or _suppressed():
        return orig(js, subject, queue, cb, *args, **kwargs)
    if cb is not None and callable(cb):
        cb = _js_cb(tel, getattr(js, "_nc", None), str(subject), cb)
    with _suppress():
        sub = orig(js, subject, queue, cb, *args, **kwargs)
    _mark(sub, tel)
    return sub


def _js_next_msg(orig: Callable[..., Msg], psub: Any, timeout: Any) -> Msg:
    tel = _tel_of(psub)
    if tel is None or _suppressed():
        return orig(psub, timeout)
    start = time.time_ns()
    with _suppress():
        msg = orig(psub, timeout)
    attrs = _base(None, msg.subject, "receive", "receive")
    _js_attrs(msg, attrs)
    _receive(tel, msg, f"receive {attrs.get(_STREAM, msg.subject)}", attrs, start)
    return msg


def _pull_subscribe(orig: Callable[..., Any], js: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    tel = _tel_for(js)
    if tel is None or _suppressed():
        return orig(js, *args, **kwargs)
    with _suppress():
        psub = orig(js, *args, **kwargs)
    _mark(psub, tel)
    return psub


def _fetch(
    orig: Callable[..., list[Msg]], psub: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> list[Msg]:
    tel = _tel_of(psub)
    if tel is None or _suppressed():
        return orig(psub, *args, **kwargs)
    start = time.time_ns()
    stream = str(getattr(psub, "stream", ""))
    attrs = _base(None, stream, "receive", "fetch")
    attrs[_STREAM] = stream
    attrs[_CONSUMER] = str(getattr(psub, "consumer", ""))
    try:
        with _suppress():
            msgs = orig(psub, *args, **kwargs)
    except BaseException as e:
        span = tel.tracer.start_span(
            f"receive {stream}", kind=SpanKind.CLIENT, attributes=attrs, start_time=start
        )
        _fail(span, e)
        span.end()
        raise
    links = []
    size = 0
    for m in msgs:
        size += len(m.data)
        sc = trace.get_current_span(_extract(m)).get_span_context()
        if sc.is_valid:
            la: dict[str, Any] = {}
            _js_attrs(m, la)
            links.append(Link(sc, {k: v for k, v in la.items() if k in (_SEQ, _DELIVERED)}))
    attrs[_BATCH] = len(msgs)
    attrs[_BODY] = size
    span = tel.tracer.start_span(
        f"receive {stream}", kind=SpanKind.CLIENT, attributes=attrs, links=links, start_time=start
    )
    span.end()
    sctx = trace.set_span_in_context(span)
    for m in msgs:
        _remember_settle(m.reply, sctx)
    return msgs


def _messages(
    orig: Callable[..., Iterator[Msg]], psub: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Iterator[Msg]:
    tel = _tel_of(psub)
    it = orig(psub, *args, **kwargs)
    if tel is None:
        return it
    return _traced_iter(tel, it)


def _traced_iter(tel: _Telemetry, it: Iterator[Msg]) -> Iterator[Msg]:
    try:
        while True:
            start = time.time_ns()
            try:
                msg = next(it)
            except StopIteration:
                return
            attrs = _base(None, msg.subject, "receive", "receive")
            _js_attrs(msg, attrs)
            _receive(tel, msg, f"receive {attrs.get(_STREAM, msg.subject)}", attrs, start)
            yield msg
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


# --- Key/Value and Object Store ---------------------------------------------------------------


def _store_op(
    kind: str, op: str, orig: Callable[..., Any], store: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    tel = _tel_of(store)
    if tel is None or _suppressed():
        return orig(store, *args, **kwargs)
    bucket = str(getattr(store, "bucket", ""))
    attrs: dict[str, Any] = {_SYS: SYSTEM, _OP_NAME: f"{kind}.{op}", f"nats.{kind}.bucket": bucket}
    if args and isinstance(args[0], str):
        attrs["nats.kv.key" if kind == "kv" else "nats.obj.name"] = args[0]
    span = tel.tracer.start_span(f"{kind}.{op} {bucket}", kind=SpanKind.CLIENT, attributes=attrs)
    with _Ending(span):
        with _suppress():
            result = orig(store, *args, **kwargs)
        if isinstance(result, int) and not isinstance(result, bool):
            span.set_attribute("nats.kv.revision", result)
        rev = getattr(result, "revision", None)
        if isinstance(rev, int):
            span.set_attribute("nats.kv.revision", rev)
        return result


def _store_factory(orig: Callable[..., Any], js: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    store = orig(js, *args, **kwargs)
    tel = _tel_for(js)
    if tel is not None:
        _mark(store, tel)
    return store


# --- micro, the web worker, the outbox -----------------------------------------------------------


def _micro_handle(orig: Callable[..., None], ep: Any, msg: Msg) -> None:
    service = ep.service
    tel = _tel_for(service.nc)
    if tel is None or _suppressed():
        return orig(ep, msg)
    ctx = _extract(msg)
    attrs = _base(service.nc, msg.subject, "process", "process")
    attrs[_BODY] = len(msg.data)
    attrs["nats.service.name"] = service.name
    attrs["nats.service.endpoint"] = ep.name
    sid = getattr(service, "id", None)
    if sid is not None:
        attrs["nats.service.id"] = str(sid)
    if ep.queue_group:
        attrs[_GROUP] = ep.queue_group
    span = tel.tracer.start_span(
        f"{service.name} {ep.name}", context=ctx, kind=SpanKind.SERVER, attributes=attrs
    )
    with _Ending(span), _use(span):
        return orig(ep, msg)


def _micro_respond_error(
    orig: Callable[..., None],
    req: Any,
    code: Any,
    description: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(_ERROR, str(code))
        span.set_status(Status(StatusCode.ERROR, str(description)))
    return orig(req, code, description, *args, **kwargs)


def _worker_init(
    orig: Callable[..., None], worker: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    orig(worker, *args, **kwargs)
    invoke = getattr(worker, "_invoke", None)
    if invoke is None:  # pragma: no cover - another Worker design
        return
    client = getattr(worker, "_client", None)

    def traced_invoke(handler: Any, msg: Msg) -> Any:
        tel = _tel_for(client)
        if tel is None or getattr(_local, "msg", None) is msg:
            return invoke(handler, msg)  # off, or already in this message's process span
        ctx = _extract(msg)
        attrs = _base(client, msg.subject, "process", "process")
        attrs[_BODY] = len(msg.data)
        _js_attrs(msg, attrs)
        hsubj = getattr(handler, "subject", None) or attrs.get(_STREAM) or msg.subject
        span = tel.tracer.start_span(
            f"process {hsubj}", context=ctx, kind=SpanKind.CONSUMER, attributes=attrs, links=_links(ctx)
        )
        sctx = trace.set_span_in_context(span)
        try:
            with _Ending(span), _use(span):
                return invoke(handler, msg)
        finally:
            _remember_settle(msg.reply, sctx)

    worker._invoke = traced_invoke


def _outbox(orig: Callable[..., Any], headers_index: int) -> Callable[..., Any]:
    """publish_on_commit with the current context injected into a copy of the headers
    (stored with the row, so the relay's publish continues this trace)."""

    def publish_on_commit(*args: Any, **kwargs: Any) -> Any:
        g = _STATE.global_tel
        if g is None or not g.active or _suppressed():
            return orig(*args, **kwargs)
        if "headers" in kwargs:
            kwargs["headers"] = _inject(kwargs["headers"], otel_context.get_current())
        elif len(args) > headers_index:
            args = (
                args[:headers_index]
                + (_inject(args[headers_index], otel_context.get_current()),)
                + args[headers_index + 1 :]
            )
        else:
            kwargs["headers"] = _inject(None, otel_context.get_current())
        return orig(*args, **kwargs)

    publish_on_commit.__wrapped__ = orig  # type: ignore[attr-defined]
    publish_on_commit.__doc__ = orig.__doc__
    return publish_on_commit


# --- patching ---------------------------------------------------------------------------------


def _client_methods(
    tel: _Telemetry, fns: Mapping[str, Callable[..., Any]], self_: Any
) -> dict[str, Callable[..., Any]]:
    """The traced publish/request/subscribe of one client, calling *fns* (bound originals)."""
    publish, request, subscribe = fns["publish"], fns["request"], fns["subscribe"]

    def traced_publish(
        subject: str, payload: Any = b"", reply: str | None = None, headers: Any = None, **kw: Any
    ) -> None:
        return _send(  # type: ignore[no-any-return]
            tel, _publish, publish, self_, subject, payload, reply, headers, kw
        )

    def traced_request(
        subject: str, payload: Any = b"", timeout: float = 0.5, headers: Any = None, **kw: Any
    ) -> Msg:
        return _send(  # type: ignore[no-any-return]
            tel, _request, request, self_, subject, payload, timeout, headers, kw
        )

    def traced_subscribe(
        subject: str, queue: str | None = None, cb: Any = None, **kwargs: Any
    ) -> Subscription:
        return _subscribe(tel, subscribe, self_, subject, queue, cb, kwargs)

    return {"publish": traced_publish, "request": traced_request, "subscribe": traced_subscribe}


def _set(owner: object, name: str, value: object, record: list[tuple[object, str, object]]) -> None:
    record.append((owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)))
    setattr(owner, name, value)


def _wrap(
    owner: Any, name: str, call: Callable[..., Any], record: list[tuple[object, str, object]]
) -> None:
    """Replace the method *name* of the class *owner* by one that returns
    ``call(original, self, args, kwargs)``, with the original's docstring."""
    orig = owner.__dict__[name]

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        return call(orig, self, args, kwargs)

    wrapper.__doc__ = orig.__doc__
    _set(owner, name, wrapper, record)


def _restore(record: list[tuple[object, str, object]]) -> None:
    for owner, name, orig in reversed(record):
        setattr(owner, name, orig)
    record.clear()


def _shared_patches(record: list[tuple[object, str, object]]) -> None:
    """Class patches for what clients create (subscriptions, JetStream objects, micro
    endpoints, web workers). Each does nothing unless its object was made through an
    instrumented client (or the instrumentor is on)."""
    nm = Subscription.next_msg

    def next_msg(self: Subscription, timeout: float | None = 1.0) -> Msg:
        return _next_msg(nm, self, timeout)

    next_msg.__doc__ = nm.__doc__
    _set(Subscription, "next_msg", next_msg, record)

    from . import micro

    handle = micro.Endpoint._handle

    def _handle(self: Any, msg: Msg) -> None:
        return _micro_handle(handle, self, msg)

    _set(micro.Endpoint, "_handle", _handle, record)
    rerr = micro.Request.respond_error

    def respond_error(self: Any, code: Any, description: Any, *args: Any, **kwargs: Any) -> None:
        return _micro_respond_error(rerr, self, code, description, args, kwargs)

    respond_error.__doc__ = rerr.__doc__
    _set(micro.Request, "respond_error", respond_error, record)

    from . import js as jsmod
    from .js import kv as kvmod
    from .js import object_store as osmod

    J = jsmod.JetStream

    def make_pub(name: str) -> None:
        orig = J.__dict__[name]

        def pub(self: Any, subject: str, payload: Any = b"", **kwargs: Any) -> Any:
            return _js_publish(orig, self, subject, payload, kwargs, name)

        pub.__doc__ = orig.__doc__
        _set(J, name, pub, record)

    make_pub("publish")
    make_pub("publish_async")
    jsub = J.__dict__["subscribe"]

    def js_subscribe(
        self: Any, subject: str, queue: str | None = None, cb: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        return _js_subscribe(jsub, self, subject, queue, cb, args, kwargs)

    js_subscribe.__doc__ = jsub.__doc__
    _set(J, "subscribe", js_subscribe, record)

    for name in ("pull_subscribe", "pull_subscribe_bind"):
        _wrap(J, name, _pull_subscribe, record)
    for name in ("create_key_value", "key_value", "create_object_store", "object_store"):
        _wrap(J, name, _store_factory, record)

    for cls in (jsmod.PushSubscription, jsmod.OrderedConsumer):
        orig_nm = cls.__dict__["next_msg"]

        def js_next(self: Any, timeout: float | None = 1.0, _o: Any = orig_nm) -> Msg:
            return _js_next_msg(_o, self, timeout)

        js_next.__doc__ = orig_nm.__doc__
        _set(cls, "next_msg", js_next, record)

    _wrap(jsmod.PullSubscription, "fetch", _fetch, record)
    _wrap(jsmod.PullSubscription, "messages", _messages, record)

    store_cls: Any
    for store_cls, kind, ops in (
        (kvmod.KeyValue, "kv", ("get", "put", "create", "update", "delete", "purge", "keys", "history")),
        (osmod.ObjectStore, "obj", ("put", "get", "get_info", "delete", "update_meta", "list")),
    ):
        for op in ops:
            if op not in store_cls.__dict__:  # pragma: no cover - an operation this version lacks
                continue
            _wrap(store_cls, op, functools.partial(_store_op, kind, op), record)

    try:
        from . import _web
    except ImportError:  # pragma: no cover
        return
    W = getattr(_web, "Worker", None)
    if W is not None and "__init__" in W.__dict__:
        _wrap(W, "__init__", _worker_init, record)


def _acquire_shared() -> None:
    """Called with _STATE.lock held."""
    if _STATE.shared_users == 0:
        _shared_patches(_STATE.shared_patches)
    _STATE.shared_users += 1


def _release_shared() -> None:
    """Called with _STATE.lock held."""
    _STATE.shared_users -= 1
    if _STATE.shared_users == 0:
        _restore(_STATE.shared_patches)


class NatsyncInstrumentor:
    """Traces and measures every natsync client (OpenTelemetry's instrumentor convention).

    ``NatsyncInstrumentor().instrument()`` wraps the public methods of natsync's classes;
    ``uninstrument()`` puts the originals back. Like OpenTelemetry's instrumentors it is
    one switch per process: a second ``instrument()`` does nothing. Objects made before
    ``instrument()`` (subscriptions and their callbacks, JetStream subscriptions) stay
    untraced: instrument at start-up, before connecting.
    """

    def instrument(
        self,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        *,
        outbox_depth: Callable[[], int] | None = None,
    ) -> None:
        """Switch tracing and metrics on for every client.

        Args:
            tracer_provider: an OpenTelemetry ``TracerProvider`` (default: the global one).
            meter_provider: a ``MeterProvider`` (default: the global one).
            outbox_depth: a function returning the number of outbox rows waiting to be
                relayed, reported as the gauge ``nats.outbox.depth``.
        """
        with _STATE.lock:
            if _STATE.global_tel is not None:
                return
            tel = _Telemetry(tracer_provider, meter_provider, outbox_depth)
            rec = _STATE.class_patches
            fns = {n: Client.__dict__[n] for n in ("publish", "request", "subscribe", "connect")}

            def publish(
                self: Client,
                subject: str,
                payload: Any = b"",
                reply: str | None = None,
                headers: Any = None,
                **kw: Any,
            ) -> None:
                return _send(  # type: ignore[no-any-return]
                    tel, _publish, fns["publish"], self, subject, payload, reply, headers, kw
                )

            def request(
                self: Client,
                subject: str,
                payload: Any = b"",
                timeout: float = 0.5,
                headers: Any = None,
                **kw: Any,
            ) -> Msg:
                return _send(  # type: ignore[no-any-return]
                    tel, _request, fns["request"], self, subject, payload, timeout, headers, kw
                )

            def subscribe(
                self: Client, subject: str, queue: str | None = None, cb: Any = None, **kwargs: Any
            ) -> Subscription:
                return _subscribe(tel, fns["subscribe"], self, subject, queue, cb, kwargs)

            def connect(self: Client, *args: Any, **kwargs: Any) -> Any:
                tel.add_client(self)
                return fns["connect"](self, *args, **kwargs)

            for name, fn in (
                ("publish", publish),
                ("request", request),
                ("subscribe", subscribe),
                ("connect", connect),
            ):
                fn.__doc__ = fns[name].__doc__
                setattr(fn, "__wrapped__", fns[name])  # noqa: B010
                _set(Client, name, fn, rec)
            for name, index in (("natsync.django", 2), ("natsync.sqlalchemy", 3)):
                try:
                    mod = __import__(name, fromlist=["publish_on_commit"])
                except Exception:  # noqa: BLE001 - the framework or the outbox is absent
                    continue
                poc = getattr(mod, "publish_on_commit", None)
                if poc is not None:
                    _set(mod, "publish_on_commit", _outbox(poc, index), _STATE.module_patches)
            _acquire_shared()
            _STATE.global_tel = tel

    def uninstrument(self) -> None:
        """Put every original method back (a no-op when not instrumented)."""
        with _STATE.lock:
            tel = _STATE.global_tel
            if tel is None:
                return
            tel.active = False
            _STATE.global_tel = None
            _restore(_STATE.class_patches)
            _restore(_STATE.module_patches)
            _release_shared()

    @property
    def is_instrumented(self) -> bool:
        """Whether the instrumentation is on."""
        return _STATE.global_tel is not None


_CLIENT_PATCHES: Final = "_natsync_otel_patches"


def instrument_client(nc: Client, tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Trace and measure one client: its ``publish``, ``request``, ``subscribe`` and
    ``jetstream`` become traced instance attributes, and what it creates afterwards is
    traced. A no-op when the client (or every client, through
    :class:`NatsyncInstrumentor`) is already instrumented.

    Raises :class:`TypeError` when *nc* is not a natsync client.
    """
    if not isinstance(nc, Client):
        raise TypeError(f"instrument_client() takes a natsync.Client, not {type(nc).__name__}")
    with _STATE.lock:
        if _STATE.global_tel is not None or _CLIENT_PATCHES in nc.__dict__:
            return
        tel = _Telemetry(tracer_provider, meter_provider, None)
        tel.add_client(nc)
        cls = type(nc)
        fns = {n: getattr(cls, n) for n in ("publish", "request", "subscribe")}
        methods = _client_methods(tel, fns, nc)
        jetstream = cls.jetstream.__get__(nc)

        def traced_jetstream(*args: Any, **kwargs: Any) -> Any:
            js = jetstream(*args, **kwargs)
            t = _tel_of(nc)
            if t is not None:
                _mark(js, t)
            return js

        traced_jetstream.__doc__ = cls.jetstream.__doc__
        methods["jetstream"] = traced_jetstream
        for name, fn in methods.items():
            nc.__dict__[name] = fn
        nc.__dict__[_ATTR] = tel
        nc.__dict__[_CLIENT_PATCHES] = list(methods)
        _acquire_shared()


def uninstrument_client(nc: Client) -> None:
    """Undo :func:`instrument_client`: the client's methods are the class's again, and
    nothing it created is traced any more. A no-op for a client not instrumented."""
    with _STATE.lock:
        names = nc.__dict__.pop(_CLIENT_PATCHES, None)
        if names is None:
            return
        for name in names:
            nc.__dict__.pop(name, None)
        tel = nc.__dict__.pop(_ATTR, None)
        if tel is not None:
            tel.active = False
        _release_shared()

"""natsync.otel: spans, context propagation and metrics against a real nats-server,
recorded with opentelemetry-sdk's in-memory exporters."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from authkit import wait_until
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from otelkit import Otel, instrumented, make_otel, parent_of

import natsync
from natsync import micro
from natsync.js import PullSubscription, PushSubscription
from natsync.otel import NatsyncInstrumentor, instrument_client, uninstrument_client
from natsync.subscription import Subscription
from natsync.testing import NATSServer

WAIT = 10.0


@pytest.fixture
def otel() -> Iterator[Otel]:
    with instrumented() as o:
        yield o


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer(jetstream=True) as srv:
        yield srv


@pytest.fixture
def nc(server: NATSServer, otel: Otel) -> Iterator[natsync.Client]:
    with natsync.connect(server.url, name="otel-test") as c:
        yield c


def _hex(n: int, width: int) -> str:
    return format(n, f"0{width}x")


# --- core: publish -> callback, headers on the wire -----------------------------------------


def test_publish_to_callback_is_parent_and_child(nc: natsync.Client, otel: Otel) -> None:
    got = threading.Event()
    inner: list[Any] = []

    def handle(msg: natsync.Msg) -> None:
        inner.append(trace.get_current_span().get_span_context())
        got.set()

    nc.subscribe("orders.*", queue="q", cb=handle)
    nc.flush()
    with otel.tracer.start_as_current_span("checkout") as root:
        nc.publish("orders.new", b"hello")
    assert got.wait(WAIT)
    (process,) = otel.wait_named("process orders.*")
    (send,) = otel.named("send orders.new")
    assert send.kind == SpanKind.PRODUCER and process.kind == SpanKind.CONSUMER
    assert parent_of(send) == root.get_span_context().span_id
    assert parent_of(process) == send.context.span_id
    assert process.context.trace_id == root.get_span_context().trace_id
    # the callback ran with its process span current
    assert inner[0].span_id == process.context.span_id
    assert send.attributes is not None and process.attributes is not None
    assert send.attributes["messaging.system"] == "nats"
    assert send.attributes["messaging.destination.name"] == "orders.new"
    assert send.attributes["messaging.operation.type"] == "send"
    assert send.attributes["messaging.operation.name"] == "publish"
    assert send.attributes["messaging.message.body.size"] == 5
    assert send.attributes["messaging.client.id"] == str(nc.client_id)
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.destination.name"] == "orders.new"
    assert process.attributes["messaging.destination.template"] == "orders.*"
    assert process.attributes["messaging.consumer.group.name"] == "q"


def test_publish_failure_is_recorded(nc: natsync.Client, otel: Otel) -> None:
    with pytest.raises(natsync.MaxPayloadError):
        nc.publish("big.x", b"x" * (nc.max_payload + 1))
    (span,) = otel.named("send big.x")
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "MaxPayloadError"


def test_callback_failure_is_recorded_and_delivery_goes_on(
    server: NATSServer, nc: natsync.Client, otel: Otel
) -> None:
    errors: list[BaseException] = []
    nc2 = natsync.connect(server.url, error_cb=errors.append)
    try:
        calls = []

        def handle(msg: natsync.Msg) -> None:
            calls.append(msg.data)
            if msg.data == b"bad":
                raise KeyError("boom")

        nc2.subscribe("fail.x", cb=handle)
        nc2.flush()
        nc.publish("fail.x", b"bad")
        nc.publish("fail.x", b"good")
        spans = otel.wait_named("process fail.x", 2)
        bad = [s for s in spans if s.status.status_code == StatusCode.ERROR]
        assert len(bad) == 1
        assert bad[0].attributes is not None and bad[0].attributes["error.type"] == "KeyError"
        assert calls == [b"bad", b"good"]
        # error_cb is still told (the span records the failure, it does not swallow it)
        wait_until(lambda: any(isinstance(e.__cause__, KeyError) for e in errors), WAIT, "error_cb")
    finally:
        nc2.close()


def _raw_subscriber(server: NATSServer, subject: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
    sock.recv(4096)  # INFO
    sock.sendall(
        b'CONNECT {"verbose":false,"headers":true,"protocol":1}\r\nSUB '
        + subject.encode()
        + b" 1\r\nPING\r\n"
    )
    buf = b""
    while b"PONG\r\n" not in buf:
        buf += sock.recv(4096)
    return sock


def _read_hmsg(sock: socket.socket) -> bytes:
    buf = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, "server closed the raw connection"
        buf += chunk
        if buf.startswith(b"HMSG") and buf.count(b"\r\n") >= 1:
            line, rest = buf.split(b"\r\n", 1)
            total = int(line.split()[-1])
            if len(rest) >= total:
                return rest[:total]
        elif buf.startswith(b"PING"):
            sock.sendall(b"PONG\r\n")
            buf = buf[6:]


def test_traceparent_is_on_the_wire_and_caller_headers_are_untouched(
    server: NATSServer, nc: natsync.Client, otel: Otel
) -> None:
    sock = _raw_subscriber(server, "wire.x")
    try:
        mine = {"App-Id": "7"}
        with otel.tracer.start_as_current_span("root"):
            nc.publish("wire.x", b"p", headers=mine)
        nc.flush()
        block = _read_hmsg(sock)
        (send,) = otel.named("send wire.x")
        want = f"traceparent: 00-{_hex(send.context.trace_id, 32)}-{_hex(send.context.span_id, 16)}-"
        assert want.encode() in block, block
        assert b"App-Id: 7" in block
        assert mine == {"App-Id": "7"}  # the caller's dict was not changed

        # a traceparent the caller set is kept as it is, never replaced
        own = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
        hdrs = natsync.Headers({"traceparent": own})
        nc.publish("wire.x", b"q", headers=hdrs)
        nc.flush()
        block = _read_hmsg(sock)
        assert block.count(b"traceparent") == 1 and own.encode() in block
        assert hdrs.get_all("traceparent") == [own]
        # with no span of its own around, the send span joins the caller's trace
        (send2,) = [s for s in otel.named("send wire.x") if s is not send]
        assert send2.context.trace_id == int("1" * 32, 16)
    finally:
        sock.close()


# --- request / reply ----------------------------------------------------------------------------


def test_request_is_a_client_span_and_the_responder_its_child(nc: natsync.Client, otel: Otel) -> None:
    nc.subscribe("svc.echo", cb=lambda m: m.respond(m.data.upper()))
    nc.flush()
    with otel.tracer.start_as_current_span("caller") as root:
        assert nc.request("svc.echo", b"hi", timeout=WAIT).data == b"HI"
    (req,) = otel.named("request svc.echo")
    (proc,) = otel.wait_named("process svc.echo")
    assert req.kind == SpanKind.CLIENT
    assert parent_of(req) == root.get_span_context().span_id
    assert parent_of(proc) == req.context.span_id
    assert req.attributes is not None and req.attributes["messaging.operation.name"] == "request"
    with pytest.raises(natsync.NoRespondersError):
        nc.request("svc.nobody", b"", timeout=WAIT)
    (failed,) = otel.named("request svc.nobody")
    assert failed.attributes is not None and failed.attributes["error.type"] == "NoRespondersError"
    hist = otel.metrics()["messaging.client.operation.duration"]
    by_dest = {p.attributes["messaging.destination.name"]: p for p in hist}
    assert by_dest["svc.echo"].count == 1 and by_dest["svc.echo"].sum > 0
    assert by_dest["svc.nobody"].attributes["error.type"] == "NoRespondersError"


def test_micro_handler_is_a_server_span_under_the_request(nc: natsync.Client, otel: Otel) -> None:
    def add(req: micro.Request) -> None:
        a, b = req.data.split(b",")
        req.respond(str(int(a) + int(b)).encode())

    svc = micro.add_service(nc, name="calc", version="1.0.0")
    try:
        svc.add_endpoint("add", add)
        with otel.tracer.start_as_current_span("caller"):
            assert nc.request("add", b"1,2", timeout=WAIT).data == b"3"
            reply = nc.request("add", b"x", timeout=WAIT)
        assert reply.headers is not None and "Nats-Service-Error-Code" in reply.headers
        reqs = otel.named("request add")
        spans = otel.wait_named("calc add", 2)
    finally:
        svc.stop()
    assert all(s.kind == SpanKind.SERVER for s in spans)
    assert {parent_of(s) for s in spans} == {r.context.span_id for r in reqs}
    bad = [s for s in spans if s.status.status_code == StatusCode.ERROR]
    assert len(bad) == 1 and bad[0].attributes is not None and bad[0].attributes["error.type"] == "500"
    assert not otel.named("process add")  # one span per request: the SERVER span


# --- next_msg / iteration ------------------------------------------------------------------------


def test_next_msg_and_iteration_continue_the_producers_trace(nc: natsync.Client, otel: Otel) -> None:
    sub = nc.subscribe("sync.x", max_msgs=3)
    nc.flush()
    for i in range(3):
        with otel.tracer.start_as_current_span(f"producer-{i}"):
            nc.publish("sync.x", b"%d" % i)
    first = sub.next_msg(timeout=WAIT)
    rest = list(sub)
    assert [m.data for m in [first, *rest]] == [b"0", b"1", b"2"]
    sends = {s.context.span_id for s in otel.named("send sync.x")}
    receives = otel.named("receive sync.x")
    assert len(receives) == 3
    assert {parent_of(r) for r in receives} == sends
    assert all(r.kind == SpanKind.CLIENT for r in receives)


# --- JetStream -------------------------------------------------------------------------------------


@pytest.fixture
def js(nc: natsync.Client) -> Iterator[Any]:
    j = nc.jetstream()
    j.add_stream(name="OTEL", subjects=["ev.>"])
    try:
        yield j
    finally:
        j.delete_stream("OTEL")


def test_jetstream_publish_to_push_callback(js: Any, otel: Otel) -> None:
    done = threading.Event()
    js.subscribe("ev.push", cb=lambda m: done.set())
    with otel.tracer.start_as_current_span("web") as root:
        ack = js.publish("ev.push", b"payload", msg_id="m-1")
    assert done.wait(WAIT)
    (send,) = otel.named("send ev.push")
    (proc,) = otel.wait_named("process OTEL")
    (settle,) = otel.wait_named("ack OTEL")
    assert parent_of(send) == root.get_span_context().span_id
    assert parent_of(proc) == send.context.span_id
    assert parent_of(settle) == proc.context.span_id  # the auto-ack after the callback
    assert send.attributes is not None and proc.attributes is not None and settle.attributes is not None
    assert send.attributes["messaging.nats.stream"] == "OTEL"
    assert send.attributes["messaging.nats.sequence.stream"] == ack.seq
    assert send.attributes["messaging.message.id"] == "m-1"
    assert proc.attributes["messaging.nats.stream"] == "OTEL"
    assert proc.attributes["messaging.nats.sequence.stream"] == ack.seq
    assert proc.attributes["messaging.nats.delivery_count"] == 1
    assert settle.attributes["messaging.operation.type"] == "settle"
    # the request under js.publish and the JetStream API calls make no spans of their own
    assert not [s for s in otel.spans() if s.name.startswith("request ")]


def test_jetstream_fetch_links_every_producer(js: Any, otel: Otel) -> None:
    sends = []
    for i in range(3):
        with otel.tracer.start_as_current_span(f"p{i}"):
            js.publish("ev.pull", b"%d" % i)
    sends = otel.named("send ev.pull")
    psub = js.pull_subscribe("ev.pull", durable="worker")
    assert isinstance(psub, PullSubscription)
    msgs = psub.fetch(3, timeout=WAIT)
    assert len(msgs) == 3
    (recv,) = otel.named("receive OTEL")
    assert recv.attributes is not None and recv.attributes["messaging.batch.message_count"] == 3
    assert {link.context.span_id for link in recv.links} == {s.context.span_id for s in sends}
    msgs[0].in_progress()
    msgs[0].ack()
    msgs[1].nak()
    msgs[2].term()
    settles = [
        s for s in otel.spans() if s.attributes and s.attributes.get("messaging.operation.type") == "settle"
    ]
    assert sorted(s.name for s in settles) == ["ack OTEL", "in_progress OTEL", "nak OTEL", "term OTEL"]
    assert {parent_of(s) for s in settles} == {recv.context.span_id}
    assert all(s.attributes and s.attributes["messaging.nats.consumer"] == "worker" for s in settles)
    psub.unsubscribe()


def test_jetstream_sync_push_and_async_publish(js: Any, otel: Otel) -> None:
    with otel.tracer.start_as_current_span("batch"):
        fut = js.publish_async("ev.async", b"a")
        js.publish_async_completed(WAIT)
    assert fut.result(WAIT).stream == "OTEL"
    (send,) = otel.named("send ev.async")
    assert send.attributes is not None and send.attributes["messaging.operation.name"] == "publish_async"
    sub = js.subscribe("ev.async")
    assert isinstance(sub, PushSubscription)
    msg = sub.next_msg(timeout=WAIT)
    (recv,) = otel.named("receive OTEL")
    assert parent_of(recv) == send.context.span_id
    msg.ack_sync(timeout=WAIT)
    (settle,) = otel.named("ack OTEL")
    assert parent_of(settle) == recv.context.span_id
    sub.unsubscribe()


def test_key_value_and_object_store_spans(nc: natsync.Client, otel: Otel) -> None:
    js = nc.jetstream()
    kv = js.create_key_value(bucket="otelkv")
    obs = js.create_object_store(bucket="otelobj")
    try:
        rev = kv.put("k1", b"v")
        assert kv.get("k1").value == b"v"
        obs.put("file", b"x" * 1000)
        assert obs.get("file").data == b"x" * 1000
        (put,) = otel.named("kv.put otelkv")
        assert put.attributes is not None
        assert put.attributes["nats.kv.key"] == "k1" and put.attributes["nats.kv.revision"] == rev
        assert otel.named("kv.get otelkv")
        assert otel.named("obj.put otelobj") and otel.named("obj.get otelobj")
        # what they do inside (JetStream publishes, API requests) is not traced again
        assert not [s for s in otel.spans() if s.name.startswith(("send ", "request ", "receive "))]
    finally:
        js.delete_key_value("otelkv")
        js.delete_object_store("otelobj")


# --- interop with nats-py -----------------------------------------------------------------------------


def test_interop_with_nats_py_both_ways(server: NATSServer, nc: natsync.Client, otel: Otel) -> None:
    import nats

    got: list[natsync.Msg] = []
    done = threading.Event()

    def handle(msg: natsync.Msg) -> None:
        got.append(msg)
        done.set()

    nc.subscribe("interop.in", cb=handle)
    nc.flush()
    seen: dict[str, Any] = {}

    async def run() -> None:
        pyc = await nats.connect(server.url)
        try:
            inbound: asyncio.Queue[Any] = asyncio.Queue()

            async def on(m: Any) -> None:
                await inbound.put(m)

            await pyc.subscribe("interop.out", cb=on)
            await pyc.flush()
            # nats-py -> natsync: the standard inject into its headers
            with otel.tracer.start_as_current_span("py-producer") as span:
                headers: dict[str, str] = {}
                propagate.inject(headers)
                await pyc.publish("interop.in", b"x", headers=headers)
                seen["py_span"] = span.get_span_context()
            await pyc.flush()
            # natsync -> nats-py: the standard extract from its headers
            await asyncio.get_running_loop().run_in_executor(None, nc.publish, "interop.out", b"y")
            await asyncio.get_running_loop().run_in_executor(None, nc.flush)
            m = await asyncio.wait_for(inbound.get(), WAIT)
            ctx = propagate.extract(m.headers or {})
            seen["extracted"] = trace.get_current_span(ctx).get_span_context()
        finally:
            await pyc.close()

    asyncio.run(run())
    assert done.wait(WAIT)
    (proc,) = otel.wait_named("process interop.in")
    assert parent_of(proc) == seen["py_span"].span_id
    assert proc.context.trace_id == seen["py_span"].trace_id
    (send,) = otel.named("send interop.out")
    assert seen["extracted"].span_id == send.context.span_id
    assert seen["extracted"].trace_id == send.context.trace_id


# --- metrics ------------------------------------------------------------------------------------------


def test_metrics(nc: natsync.Client, otel: Otel) -> None:
    gate = threading.Event()
    seen = threading.Event()

    def slow(msg: natsync.Msg) -> None:
        seen.set()
        gate.wait(WAIT)

    nc.subscribe("m.x", cb=slow)
    nc.flush()
    for _ in range(5):
        nc.publish("m.x", b"12345")
    nc.flush()
    assert seen.wait(WAIT)
    try:
        sub_pending: dict[str, Any] = {}

        def pending_seen() -> bool:
            points = otel.metrics().get("nats.subscription.pending.messages", [])
            sub_pending.update({p.attributes["messaging.destination.template"]: p.value for p in points})
            return sub_pending.get("m.x") == 4

        wait_until(pending_seen, WAIT, "4 pending messages reported")
    finally:
        gate.set()
    data = otel.metrics()
    stats = nc.stats
    sent = data["messaging.client.sent.messages"]
    mine = [p for p in sent if p.attributes.get("messaging.client.id") == str(nc.client_id)]
    assert mine and mine[0].value == stats.out_msgs >= 5
    consumed = [
        p
        for p in data["messaging.client.consumed.messages"]
        if p.attributes.get("messaging.client.id") == str(nc.client_id)
    ]
    assert consumed and consumed[0].value >= 5
    assert [p for p in data["nats.client.sent.bytes"] if p.value >= 25]
    assert "nats.client.reconnects" in data


# --- switching off ------------------------------------------------------------------------------------


def _patched_classes() -> list[tuple[str, Any]]:
    import natsync.django
    from natsync import _web
    from natsync.js import JetStream, OrderedConsumer
    from natsync.js.kv import KeyValue
    from natsync.js.object_store import ObjectStore

    return [
        ("client", natsync.Client),
        ("sub", Subscription),
        ("pull", PullSubscription),
        ("push", PushSubscription),
        ("ordered", OrderedConsumer),
        ("js", JetStream),
        ("kv", KeyValue),
        ("obj", ObjectStore),
        ("endpoint", micro.Endpoint),
        ("request", micro.Request),
        ("worker", _web.Worker),
        ("django", natsync.django),
    ]


def test_uninstrument_restores_the_plain_methods(server: NATSServer) -> None:
    before = {name: dict(vars(cls)) for name, cls in _patched_classes()}
    o = make_otel()
    inst = NatsyncInstrumentor()
    inst.instrument(tracer_provider=o.provider, meter_provider=o.meters)
    assert natsync.Client.publish is not before["client"]["publish"]
    assert Subscription.next_msg is not before["sub"]["next_msg"]
    changed = {name for name, cls in _patched_classes() if dict(vars(cls)) != before[name]}
    assert changed == {name for name, _ in _patched_classes()}  # every one was wrapped
    inst.instrument()  # a second call changes nothing
    inst.uninstrument()
    assert not inst.is_instrumented
    for name, cls in _patched_classes():
        assert dict(vars(cls)) == before[name], name
    with natsync.connect(server.url) as c:
        got = threading.Event()
        c.subscribe("off.x", cb=lambda m: got.set())
        c.publish("off.x", b"")
        c.flush()
        assert got.wait(WAIT)
        assert c.subscribe("off.y").next_msg.__func__ is before["sub"]["next_msg"]  # type: ignore[attr-defined]
    assert o.spans() == []
    o.provider.shutdown()
    o.meters.shutdown()


def test_instrument_one_client(server: NATSServer) -> None:
    o = make_otel()
    traced = natsync.connect(server.url)
    plain = natsync.connect(server.url)
    try:
        instrument_client(traced, tracer_provider=o.provider, meter_provider=o.meters)
        assert "publish" in vars(traced) and "publish" not in vars(plain)
        got = threading.Event()
        traced.subscribe("one.x", cb=lambda m: got.set())
        traced.flush()
        plain.publish("one.x", b"untraced")
        plain.flush()
        assert got.wait(WAIT)
        (root,) = o.wait_named("process one.x")  # the plain client injected nothing: a root
        assert root.parent is None and not o.named("send one.x")
        got.clear()
        traced.publish("one.x", b"traced")
        assert got.wait(WAIT)
        (send,) = o.named("send one.x")
        assert parent_of(o.wait_named("process one.x", 2)[1]) == send.context.span_id
        uninstrument_client(traced)
        assert "publish" not in vars(traced)
        n = len(o.spans())
        got.clear()
        traced.publish("one.x", b"after")
        assert got.wait(WAIT)
        traced.flush()
        assert len(o.spans()) == n
    finally:
        traced.close()
        plain.close()
        o.provider.shutdown()
        o.meters.shutdown()


def test_pull_messages_and_ordered_consumer(js: Any, otel: Otel) -> None:
    with otel.tracer.start_as_current_span("producer"):
        js.publish("ev.iter", b"1")
        js.publish("ev.iter", b"2")
    sends = {s.context.span_id for s in otel.named("send ev.iter")}
    psub = js.pull_subscribe("ev.iter", durable="iter")
    it = psub.messages(batch=10)
    got = [next(it), next(it)]
    for m in got:
        m.ack()
    it.close()
    psub.unsubscribe()
    receives = otel.named("receive OTEL")
    assert len(receives) == 2 and {parent_of(r) for r in receives} == sends
    assert {parent_of(s) for s in otel.named("ack OTEL")} == {r.context.span_id for r in receives}

    done = threading.Event()
    seen: list[Any] = []

    def handle(msg: natsync.Msg) -> None:
        seen.append(trace.get_current_span().get_span_context())
        if len(seen) == 2:
            done.set()

    ordered = js.subscribe("ev.iter", cb=handle, ordered_consumer=True)
    try:
        assert done.wait(WAIT)
        procs = otel.wait_named("process OTEL", 2)
        assert {parent_of(p) for p in procs} == sends
        assert {c.span_id for c in seen} == {p.context.span_id for p in procs}
    finally:
        ordered.unsubscribe()


def test_instrument_one_client_with_jetstream(server: NATSServer) -> None:
    o = make_otel()
    nc = natsync.connect(server.url)
    try:
        instrument_client(nc, tracer_provider=o.provider, meter_provider=o.meters)
        js = nc.jetstream()
        js.add_stream(name="ONE", subjects=["one.>"])
        with o.tracer.start_as_current_span("p"):
            js.publish("one.a", b"x")
        psub = js.pull_subscribe("one.a", durable="d")
        (msg,) = psub.fetch(1, timeout=WAIT)
        msg.ack_sync(timeout=WAIT)
        (send,) = o.named("send one.a")
        (recv,) = o.named("receive ONE")
        assert [link.context.span_id for link in recv.links] == [send.context.span_id]
        (ack,) = o.named("ack ONE")
        assert parent_of(ack) == recv.context.span_id
        js.delete_stream("ONE")
    finally:
        uninstrument_client(nc)
        nc.close()
        o.provider.shutdown()
        o.meters.shutdown()
    # nothing is left patched once the last user is gone
    assert Subscription.next_msg is vars(Subscription)["next_msg"]
    assert getattr(Subscription.next_msg, "__module__", "") == "natsync.subscription"


def test_outbox_depth_gauge(server: NATSServer) -> None:
    o = make_otel()
    inst = NatsyncInstrumentor()
    depth = [3]
    inst.instrument(tracer_provider=o.provider, meter_provider=o.meters, outbox_depth=lambda: depth[0])
    try:
        (point,) = o.metrics()["nats.outbox.depth"]
        assert point.value == 3
        depth[0] = 0
        (point,) = o.metrics()["nats.outbox.depth"]
        assert point.value == 0
    finally:
        inst.uninstrument()
        o.provider.shutdown()
        o.meters.shutdown()


def test_import_natsync_never_imports_opentelemetry() -> None:
    import subprocess
    import sys

    code = (
        "import sys, natsync, natsync.js, natsync.micro, natsync.flask, natsync.django\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'natsync.otel')))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_jetstream_publish_of_a_stored_context_continues_it(js: Any, otel: Otel) -> None:
    """What the outbox relay does: publish headers stored with a row, with no span current."""
    with otel.tracer.start_as_current_span("view") as view:
        stored: dict[str, str] = {}
        propagate.inject(stored)
    sub = js.subscribe("ev.relay")
    js.publish("ev.relay", b"", headers=dict(stored, App="shop"))  # no span current here
    msg = sub.next_msg(timeout=WAIT)
    (send,) = otel.named("send ev.relay")
    assert send.context.trace_id == view.get_span_context().trace_id
    assert parent_of(send) == view.get_span_context().span_id
    assert msg.headers is not None and msg.headers["traceparent"] == stored["traceparent"]  # kept as stored
    assert msg.headers["App"] == "shop"
    sub.unsubscribe()

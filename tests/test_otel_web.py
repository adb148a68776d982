"""natsync.otel with the web integrations: what a Flask or Django view publishes is a child
of the request's server span, and ``@subscribe``/``@consume`` handlers (the worker)
continue the producer's trace. The server span is made by an SDK tracer in a WSGI
wrapper (Flask) or a middleware (Django), as an HTTP instrumentation would."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from otelkit import Otel, instrumented, parent_of
from webkit import EXAMPLES

import natsync
from natsync import _web
from natsync.flask import EXTENSION_KEY, NATS
from natsync.testing import NATSServer

sys.path.insert(0, str(EXAMPLES / "django_project"))

import django  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import transaction  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.test import Client as DjangoClient  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.urls import path  # noqa: E402

import natsync.django as nd  # noqa: E402

# The example project's settings (as tests/test_django.py does), in-memory database.
if not settings.configured:
    import shop_project.settings as _example

    _values = {k: getattr(_example, k) for k in dir(_example) if k.isupper()}
    _values["DATABASES"] = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
    settings.configure(**_values)
django.setup()

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
def stream(server: NATSServer, otel: Otel) -> Iterator[None]:
    with natsync.connect(server.url) as c:
        js = c.jetstream()
        js.add_stream(name="SHOP", subjects=["shop.paid"])
        try:
            yield
        finally:
            js.delete_stream("SHOP")


def _run_worker(worker: _web.Worker) -> threading.Thread:
    ready = threading.Event()
    t = threading.Thread(
        target=lambda: worker.run(install_signals=False, ready=ready.set), name="otel-worker"
    )
    t.start()
    assert ready.wait(WAIT)
    return t


def _handlers(seen: dict[str, Any], done: threading.Event) -> list[_web.Handler]:
    reg = _web.HandlerRegistry()

    @reg.subscribe("shop.created")
    def created(msg: natsync.Msg) -> None:
        seen["created"] = trace.get_current_span().get_span_context()
        if "paid" in seen:
            done.set()

    @reg.consume(stream="SHOP", durable="ship", subject="shop.paid")
    def paid(msg: natsync.Msg) -> None:
        seen["paid"] = trace.get_current_span().get_span_context()
        if "created" in seen:
            done.set()

    return list(reg)


def _check_trace(otel: Otel, server_span: ReadableSpan, seen: dict[str, Any]) -> None:
    (send,) = otel.named("send shop.created")
    (js_send,) = otel.named("send shop.paid")
    assert parent_of(send) == server_span.context.span_id
    assert parent_of(js_send) == server_span.context.span_id
    # the @subscribe handler ran in a process span under the view's publish
    (proc,) = otel.wait_named("process shop.created")
    assert parent_of(proc) == send.context.span_id
    assert seen["created"].span_id == proc.context.span_id
    # the @consume handler too, under the view's JetStream publish, and its ack under it
    (jproc,) = otel.wait_named("process shop.paid")
    assert jproc.kind == SpanKind.CONSUMER
    assert parent_of(jproc) == js_send.context.span_id
    assert seen["paid"].span_id == jproc.context.span_id
    (ack,) = otel.wait_named("ack SHOP")
    assert parent_of(ack) == jproc.context.span_id
    trace_id = server_span.context.trace_id
    assert {s.context.trace_id for s in (send, js_send, proc, jproc, ack)} == {trace_id}


def _server_span(otel: Otel, name: str) -> ReadableSpan:
    (span,) = otel.named(name)
    assert span.kind == SpanKind.SERVER
    return span


# --- Flask -----------------------------------------------------------------------------------------


def test_flask_view_to_subscribe_and_consume_handlers(server: NATSServer, otel: Otel, stream: None) -> None:
    app = Flask("otel_flask")
    app.config.update(NATS_URL=server.url)
    ext = NATS(app)

    @app.post("/orders")
    def create_order() -> str:
        ext.client.publish("shop.created", b"order 1")
        ext.client.jetstream().publish("shop.paid", b"order 1")
        return "ok"

    wsgi = app.wsgi_app

    def traced_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        name = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}"
        with otel.tracer.start_as_current_span(name, kind=SpanKind.SERVER):
            return wsgi(environ, start_response)

    app.wsgi_app = traced_wsgi  # type: ignore[method-assign]
    seen: dict[str, Any] = {}
    done = threading.Event()
    worker = _web.Worker(natsync.connect(server.url), _handlers(seen, done))
    t = _run_worker(worker)
    try:
        assert app.test_client().post("/orders").status_code == 200
        assert done.wait(WAIT)
        _check_trace(otel, _server_span(otel, "POST /orders"), seen)
    finally:
        worker.stop()
        t.join(WAIT)
        app.extensions[EXTENSION_KEY].clients.close()


# --- Django ----------------------------------------------------------------------------------------


class TracingMiddleware:
    """What an HTTP instrumentation does: a SERVER span around the request."""

    tracer: Any = None

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with self.tracer.start_as_current_span(f"{request.method} {request.path}", kind=SpanKind.SERVER):
            return self.get_response(request)


def order_view(request: HttpRequest) -> HttpResponse:
    client = nd.get_client()
    client.publish("shop.created", b"order 2")
    client.jetstream().publish("shop.paid", b"order 2")  # type: ignore[attr-defined]
    return HttpResponse("ok")


def on_commit_view(request: HttpRequest) -> HttpResponse:
    with transaction.atomic():
        nd.publish_on_commit("shop.created", b"order 3", headers={"App": "shop"})
    return HttpResponse("ok")


urlpatterns = [path("orders", order_view), path("commit", on_commit_view)]


@pytest.fixture
def django_otel(server: NATSServer, otel: Otel) -> Iterator[Otel]:
    TracingMiddleware.tracer = otel.tracer
    with override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[f"{__name__}.TracingMiddleware"],
        NATSYNC={"servers": server.url, "name": "otel-django"},
    ):
        try:
            yield otel
        finally:
            nd.reset_client()


def test_django_view_to_subscribe_and_consume_handlers(
    server: NATSServer, django_otel: Otel, stream: None
) -> None:
    otel = django_otel
    seen: dict[str, Any] = {}
    done = threading.Event()
    worker = _web.Worker(natsync.connect(server.url), _handlers(seen, done))
    t = _run_worker(worker)
    try:
        assert DjangoClient().post("/orders").status_code == 200
        assert done.wait(WAIT)
        _check_trace(otel, _server_span(otel, "POST /orders"), seen)
    finally:
        worker.stop()
        t.join(WAIT)


def test_django_publish_on_commit_carries_the_views_context(server: NATSServer, django_otel: Otel) -> None:
    otel = django_otel
    with natsync.connect(server.url) as raw:
        sub = raw.subscribe("shop.created")
        raw.flush()
        assert DjangoClient().post("/commit").status_code == 200
        msg = sub.next_msg(timeout=WAIT)
    view = _server_span(otel, "POST /commit")
    assert msg.headers is not None and msg.headers["App"] == "shop"
    traceparent = msg.headers["traceparent"]
    assert traceparent.split("-")[1] == format(view.context.trace_id, "032x")
    (send,) = otel.named("send shop.created")
    assert send.context.trace_id == view.context.trace_id


# --- the transactional outbox (web18's; runs once it is merged) -------------------------------------


def _outbox_present() -> bool:
    try:
        from natsync.django import models  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return hasattr(models, "OutboxMessage")


@pytest.mark.skipif(
    not _outbox_present(),
    reason="the transactional outbox (issue 18, natsync.django.models) is not merged yet",
)
def test_outbox_relay_continues_the_views_trace(
    server: NATSServer, django_otel: Otel
) -> None:  # pragma: no cover
    from django.core.management import call_command

    otel = django_otel
    call_command("migrate", verbosity=0)
    with natsync.connect(server.url) as raw:
        js = raw.jetstream()
        js.add_stream(name="OUTBOX", subjects=["outbox.>"])
        try:
            tracer = otel.tracer
            with tracer.start_as_current_span("POST /outbox", kind=SpanKind.SERVER) as view:
                with transaction.atomic():
                    nd.publish_on_commit("outbox.created", b"o", headers={"App": "shop"}, durable=True)
            assert not otel.named("send outbox.created")  # stored, not yet sent
            call_command("natsync_outbox", "relay", "--once")
            psub = js.pull_subscribe("outbox.created", durable="check")
            (msg,) = psub.fetch(1, timeout=WAIT)
            assert msg.headers is not None and msg.headers["App"] == "shop"
            assert msg.headers["traceparent"].split("-")[1] == format(
                view.get_span_context().trace_id, "032x"
            )
            (send,) = otel.named("send outbox.created")
            assert send.context.trace_id == view.get_span_context().trace_id
        finally:
            js.delete_stream("OUTBOX")

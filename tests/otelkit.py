"""Shared pieces of the OpenTelemetry tests: SDK providers with in-memory exporters, and
a bounded wait for spans that end on other threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from natsync.otel import NatsyncInstrumentor


class _Notify(SpanProcessor):
    """Wakes waiters whenever a span ends (after the exporter has it)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()

    def on_end(self, span: ReadableSpan) -> None:
        with self.cond:
            self.cond.notify_all()


@dataclass
class Otel:
    provider: TracerProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    meters: MeterProvider
    notify: _Notify

    @property
    def tracer(self) -> Tracer:
        return self.provider.get_tracer("tests")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def wait(
        self, pred: Callable[[list[ReadableSpan]], bool], timeout: float = 10.0, what: str = "spans"
    ) -> None:
        deadline = time.monotonic() + timeout
        with self.notify.cond:
            while not pred(self.spans()):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = [s.name for s in self.spans()]
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}; spans: {names}")
                self.notify.cond.wait(left)

    def wait_named(self, name: str, count: int = 1, timeout: float = 10.0) -> list[ReadableSpan]:
        self.wait(lambda spans: sum(s.name == name for s in spans) >= count, timeout, f"{count} x {name!r}")
        return self.named(name)

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points, from a fresh collection."""
        data = self.reader.get_metrics_data()
        out: dict[str, list[Any]] = {}
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out.setdefault(m.name, []).extend(m.data.data_points)
        return out


def make_otel() -> Otel:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    notify = _Notify()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(notify)
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    return Otel(provider, exporter, reader, meters, notify)


@contextmanager
def instrumented() -> Iterator[Otel]:
    """SDK providers (in-memory exporters) and natsync instrumented with them."""
    o = make_otel()
    inst = NatsyncInstrumentor()
    inst.instrument(tracer_provider=o.provider, meter_provider=o.meters)
    try:
        yield o
    finally:
        inst.uninstrument()
        o.provider.shutdown()
        o.meters.shutdown()


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None

#!/usr/bin/env python
"""What tracing costs per message: natsync with natsync.otel off and on, in one run.

Modes, interleaved round by round against one nats-server (the scenarios are bench.py's
natsync ones: publish 16 B, pub+sub 16 B through a callback, sequential request/reply):

* ``off``: natsync.otel not instrumented (the code path of a natsync without the extra);
* ``noop``: ``NatsyncInstrumentor().instrument()`` with the OpenTelemetry API's default
  (no-op) tracer and meter providers: the wrappers run, no span is recorded;
* ``sdk``: instrumented with an SDK ``TracerProvider`` (always sample) whose spans go
  through a ``SimpleSpanProcessor`` to an exporter that drops them, and an SDK
  ``MeterProvider``: the cost of making, injecting, extracting and ending every span,
  without the cost of an exporter's network I/O.

The table gives the median of ``--repeat`` rounds and, for the on modes, the extra cost
per message in microseconds (1/rate_on - 1/rate_off; for requests, the p50 difference).

Usage: ``python bench/bench_otel.py [--count N] [--sub-count N] [--requests N] [--repeat N]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

sys.path.insert(0, str(Path(__file__).parent))
import bench as b  # noqa: E402 - bench.py's natsync scenarios
from natsync.otel import NatsyncInstrumentor  # noqa: E402
from natsync.testing import NATSServer  # noqa: E402

MODES = ("off", "noop", "sdk")


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _switch(mode: str) -> tuple[NatsyncInstrumentor | None, list[Any]]:
    if mode == "off":
        return None, []
    inst = NatsyncInstrumentor()
    if mode == "noop":
        inst.instrument()
        return inst, []
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(_Drop()))
    mp = MeterProvider()
    inst.instrument(tracer_provider=tp, meter_provider=mp)
    return inst, [tp, mp]


def bare_span_us(n: int = 20_000) -> float:
    """The SDK's own cost: one span with five attributes, started and ended (µs)."""
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(_Drop()))
    tracer = tp.get_tracer("bench")
    attrs = {"messaging.system": "nats", "a": "b", "c": 1, "d": "e", "f": "g"}
    t0 = time.perf_counter()
    for _ in range(n):
        tracer.start_span("send x", attributes=attrs).end()
    dt = time.perf_counter() - t0
    tp.shutdown()
    return dt / n * 1e6


def run(
    url: str, count: int, sub_count: int, requests: int, repeat: int
) -> dict[str, dict[str, list[float]]]:
    res: dict[str, dict[str, list[float]]] = {m: {"pub": [], "pubsub": [], "req": []} for m in MODES}
    res["bare"] = {"span": []}
    for r in range(repeat):
        for mode in MODES:
            inst, providers = _switch(mode)
            try:
                res[mode]["pub"].append(b.ns_publish(url, count, 16)["rate"])
                ps = b.ns_pubsub(url, sub_count, 16)
                res[mode]["pubsub"].append(ps["rate"] if ps["received"] == sub_count else float("nan"))
                res[mode]["req"].append(b.ns_request(url, requests)["p50"])
            finally:
                if inst is not None:
                    inst.uninstrument()
                for p in providers:
                    p.shutdown()
            print(f"round {r + 1}/{repeat} {mode}: done", file=sys.stderr)
        res["bare"]["span"].append(bare_span_us())
    return res


def table(res: dict[str, dict[str, list[float]]]) -> str:
    med = {m: {k: statistics.median(v) for k, v in d.items()} for m, d in res.items()}
    off = med["off"]
    lines = [
        "| mode | publish 16 B msgs/s | extra µs/msg | pub+sub 16 B msgs/s | extra µs/msg "
        "| request p50 µs | extra µs |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in MODES:
        d = med[m]
        if m == "off":
            extra = ("", "", "")
        else:
            extra = (
                f"{(1 / d['pub'] - 1 / off['pub']) * 1e6:.2f}",
                f"{(1 / d['pubsub'] - 1 / off['pubsub']) * 1e6:.2f}",
                f"{d['req'] - off['req']:.0f}",
            )
        lines.append(
            f"| {m} | {d['pub']:,.0f} | {extra[0]} | {d['pubsub']:,.0f} | {extra[1]} "
            f"| {d['req']:.0f} | {extra[2]} |"
        )
    lines.append("")
    lines.append(f"For scale, one bare SDK span (start + end, 5 attributes): {med['bare']['span']:.1f} µs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--count", type=int, default=100_000, help="messages per publish run (default 100k)")
    ap.add_argument("--sub-count", type=int, default=50_000, help="messages per pub+sub run (default 50k)")
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests (default 2000)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    args = ap.parse_args(argv)
    with NATSServer() as srv:
        res = run(srv.url, args.count, args.sub_count, args.requests, args.repeat)
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

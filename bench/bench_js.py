#!/usr/bin/env python
"""natsync's JetStream and nats-py's side by side, in one run, on one ``-js`` server.

Scenarios (file storage; identical counts for both clients; paired rounds, the order
of the two clients alternating from round to round):

* sync publish 16 B / 1 KiB: sequential ``js.publish`` after a warm-up; p50 µs and
  msgs/s;
* publish_async 16 B / 1 KiB, window 4,000: msgs/s from the first publish until every
  ack has arrived;
* pull fetch(batch=100) + ack over 100,000 stored messages: msgs/s to drain a new
  durable consumer (each message acked);
* ordered-consumer replay of 100,000 stored messages: msgs/s.

The table shows the median of the rounds (``--stat best``: the best one) and the
ratio natsync / nats-py (for p50: nats-py / natsync, so > 1 is better everywhere).
``--write-readme`` replaces the JetStream results section of ``bench/README.md``.

Usage: ``python bench/bench_js.py [--quick] [--repeat N] [--write-readme]``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats

import natsync
from natsync.js.api import AckPolicy, ConsumerConfig, StorageType
from natsync.testing import NATSServer

README = Path(__file__).with_name("README.md")
START = "<!-- js-results:start -->"
END = "<!-- js-results:end -->"
WARMUP = 200
WINDOW = 4000
SETTLE = 0.5  # seconds of quiet before each measured run

_seq = 0


def _name(kind: str) -> str:
    global _seq
    _seq += 1
    return f"{kind}{_seq}"


def _p50(values: list[float]) -> float:
    values = sorted(values)
    return values[max(0, math.ceil(0.5 * len(values)) - 1)]


# --- natsync ---------------------------------------------------------------------------


def ns_sync_publish(url: str, count: int, size: int) -> dict[str, float]:
    payload = b"x" * size
    nc = natsync.connect(url)
    try:
        js = nc.jetstream()
        stream = _name("NSP")
        js.add_stream(name=stream, subjects=[stream], storage=StorageType.FILE)
        for _ in range(WARMUP):
            js.publish(stream, payload)
        lat = []
        clock = time.perf_counter
        t0 = clock()
        for _ in range(count):
            t = clock()
            js.publish(stream, payload)
            lat.append(clock() - t)
        dt = clock() - t0
        js.delete_stream(stream)
    finally:
        nc.close()
    return {"p50": _p50(lat) * 1e6, "rate": count / dt}


def ns_publish_async(url: str, count: int, size: int) -> dict[str, float]:
    payload = b"x" * size
    nc = natsync.connect(url)
    try:
        js = nc.jetstream(publish_async_max_pending=WINDOW)
        stream = _name("NSA")
        js.add_stream(name=stream, subjects=[stream], storage=StorageType.FILE)
        t0 = time.perf_counter()
        publish_async = js.publish_async
        for _ in range(count):
            publish_async(stream, payload)
        js.publish_async_completed(timeout=120)
        dt = time.perf_counter() - t0
        n = js.stream_info(stream).state.messages
        js.delete_stream(stream)
    finally:
        nc.close()
    return {"rate": count / dt if n == count else 0.0}


def ns_fetch(url: str, stream: str, count: int) -> dict[str, float]:
    nc = natsync.connect(url)
    try:
        js = nc.jetstream()
        durable = _name("nsf")
        psub = js.pull_subscribe(
            stream, durable=durable, config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
        )
        got = 0
        t0 = time.perf_counter()
        while got < count:
            for msg in psub.fetch(100, timeout=5):
                msg.ack()
                got += 1
        nc.flush(timeout=60)
        dt = time.perf_counter() - t0
        js.delete_consumer(stream, durable)
    finally:
        nc.close()
    return {"rate": count / dt}


def ns_ordered(url: str, stream: str, count: int) -> dict[str, float]:
    nc = natsync.connect(url)
    try:
        js = nc.jetstream()
        t0 = time.perf_counter()
        sub = js.subscribe(stream, ordered_consumer=True)
        next_msg = sub.next_msg
        for _ in range(count):
            next_msg(timeout=10)
        dt = time.perf_counter() - t0
        sub.unsubscribe()
    finally:
        nc.close()
    return {"rate": count / dt}


# --- nats-py ---------------------------------------------------------------------------


async def _py_sync_publish(url: str, count: int, size: int) -> dict[str, float]:
    payload = b"x" * size
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        stream = _name("PYP")
        await js.add_stream(name=stream, subjects=[stream], storage="file")
        for _ in range(WARMUP):
            await js.publish(stream, payload)
        lat = []
        clock = time.perf_counter
        t0 = clock()
        for _ in range(count):
            t = clock()
            await js.publish(stream, payload)
            lat.append(clock() - t)
        dt = clock() - t0
        await js.delete_stream(stream)
    finally:
        await nc.close()
    return {"p50": _p50(lat) * 1e6, "rate": count / dt}


async def _py_publish_async(url: str, count: int, size: int) -> dict[str, float]:
    payload = b"x" * size
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(publish_async_max_pending=WINDOW)
        stream = _name("PYA")
        await js.add_stream(name=stream, subjects=[stream], storage="file")
        t0 = time.perf_counter()
        for _ in range(count):
            await js.publish_async(stream, payload)
        await asyncio.wait_for(js.publish_async_completed(), 120)
        dt = time.perf_counter() - t0
        n = (await js.stream_info(stream)).state.messages
        await js.delete_stream(stream)
    finally:
        await nc.close()
    return {"rate": count / dt if n == count else 0.0}


async def _py_fetch(url: str, stream: str, count: int) -> dict[str, float]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        durable = _name("pyf")
        psub = await js.pull_subscribe(stream, durable=durable)
        got = 0
        t0 = time.perf_counter()
        while got < count:
            for msg in await psub.fetch(100, timeout=5):
                await msg.ack()
                got += 1
        await nc.flush(timeout=60)
        dt = time.perf_counter() - t0
        await js.delete_consumer(stream, durable)
    finally:
        await nc.close()
    return {"rate": count / dt}


async def _py_ordered(url: str, stream: str, count: int) -> dict[str, float]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[float] = loop.create_future()
        got = 0

        async def cb(msg: Any) -> None:
            nonlocal got
            got += 1
            if got == count and not done.done():
                done.set_result(time.perf_counter())

        t0 = time.perf_counter()
        sub = await js.subscribe(stream, cb=cb, ordered_consumer=True)
        t1 = await asyncio.wait_for(done, 300)
        await sub.unsubscribe()
    finally:
        await nc.close()
    return {"rate": count / (t1 - t0)}


def _settle() -> None:
    """Before each measured run: collect garbage and give the server a moment to finish
    the previous run's work (acks, consumer deletion), so that neither client pays for
    the other's leftovers."""
    gc.collect()
    time.sleep(SETTLE)


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - only for the report
        return "?"


def _run(coro_fn: Callable[..., Any], *args: Any) -> dict[str, float]:
    return asyncio.run(coro_fn(*args))  # type: ignore[no-any-return]


# --- driver ----------------------------------------------------------------------------


def fill(url: str, count: int, size: int = 16) -> str:
    """A file stream holding ``count`` messages of ``size`` bytes (natsync writes it)."""
    stream = _name("STORED")
    with natsync.connect(url) as nc:
        js = nc.jetstream(publish_async_max_pending=WINDOW)
        js.add_stream(name=stream, subjects=[stream], storage=StorageType.FILE)
        payload = b"x" * size
        for _ in range(count):
            js.publish_async(stream, payload)
        js.publish_async_completed(timeout=300)
    return stream


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--sync-count", type=int, default=3000)
    ap.add_argument("--async-count", type=int, default=100_000)
    ap.add_argument("--stored", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stat", choices=("median", "best"), default="median")
    ap.add_argument("--quick", action="store_true", help="small counts, 1 round (a smoke run)")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.sync_count, args.async_count, args.stored, args.repeat = 300, 5000, 5000, 1

    results: dict[str, dict[str, list[float]]] = {}

    def record(key: str, who: str, value: float) -> None:
        results.setdefault(key, {"natsync": [], "nats-py": []})[who].append(value)

    with NATSServer(jetstream=True) as server:
        url = server.url
        stored = fill(url, args.stored)
        for rnd in range(args.repeat):
            order = ["natsync", "nats-py"] if rnd % 2 == 0 else ["nats-py", "natsync"]
            for size in (16, 1024):
                for who in order:
                    _settle()
                    r = (
                        ns_sync_publish(url, args.sync_count, size)
                        if who == "natsync"
                        else _run(_py_sync_publish, url, args.sync_count, size)
                    )
                    record(f"sync publish {size} B p50 (µs)", who, r["p50"])
                    record(f"sync publish {size} B (msgs/s)", who, r["rate"])
                for who in order:
                    _settle()
                    r = (
                        ns_publish_async(url, args.async_count, size)
                        if who == "natsync"
                        else _run(_py_publish_async, url, args.async_count, size)
                    )
                    record(f"publish_async {size} B, window 4000 (msgs/s)", who, r["rate"])
            for who in order:
                _settle()
                r = (
                    ns_fetch(url, stored, args.stored)
                    if who == "natsync"
                    else _run(_py_fetch, url, stored, args.stored)
                )
                record(f"fetch(100)+ack of {args.stored:,} (msgs/s)", who, r["rate"])
            for who in order:
                _settle()
                r = (
                    ns_ordered(url, stored, args.stored)
                    if who == "natsync"
                    else _run(_py_ordered, url, stored, args.stored)
                )
                record(f"ordered replay of {args.stored:,} (msgs/s)", who, r["rate"])
            print(f"round {rnd + 1}/{args.repeat} done", file=sys.stderr)

    summarise = statistics.median if args.stat == "median" else None
    lines = ["| scenario | natsync | nats-py | ratio |", "|---|---:|---:|---:|"]
    for key, vals in results.items():
        lower_better = "p50" in key
        if summarise is not None:
            ns, py = summarise(vals["natsync"]), summarise(vals["nats-py"])
        else:
            pick = min if lower_better else max
            ns, py = pick(vals["natsync"]), pick(vals["nats-py"])
        ratio = (py / ns if lower_better else ns / py) if ns and py else 0.0
        fmt = "{:,.0f}"
        lines.append(f"| {key} | {fmt.format(ns)} | {fmt.format(py)} | {ratio:.2f}× |")
    table = "\n".join(lines)
    cmd = "python bench/bench_js.py " + " ".join(argv if argv is not None else sys.argv[1:])
    info = (
        f"{datetime.date.today().isoformat()}, CPython {platform.python_version()}, "
        f"nats-py {_version('nats-py')}, {args.repeat} round(s), {args.stat}; "
        "ratio = natsync / nats-py (p50: nats-py / natsync), > 1 is better"
    )
    print(table)
    print(info)
    if args.write_readme:
        targets = (
            "Targets (ratios in one run): sync publish p50 ≤ nats-py's (ratio ≥ 1), "
            "publish_async ≥ 2×, fetch+ack ≥ 2×, ordered replay ≥ 2×."
        )
        block = f"{START}\n`{cmd.strip()}` ({info})\n\n{table}\n\n{targets}\n{END}"
        text = README.read_text()
        if START in text and END in text:
            head, rest = text.split(START, 1)
            text = head + block + rest.split(END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        README.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

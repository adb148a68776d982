"""``bench pub|sub|pubsub|req|reply [SUBJECT]``: throughput and latency, like ``nats bench``.

``--clients N`` runs N connections, each on its own thread: publishers share ``--msgs``
between them, subscribers each expect all of them (as the Go CLI), requesters share
them, responders answer in one queue group.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..client import Client
from ..msg import Msg
from . import _options
from ._util import CommandError, dumps, interrupt, non_negative_int, out, positive_int, status

_CHUNK = 65536  # messages published between two looks at Ctrl-C


class Counters:
    """One counter per client; each is written by its client's thread only and summed by
    the progress thread for display (an int read is a single reference load: a stale
    value only delays the figure shown)."""

    def __init__(self, n: int) -> None:
        self.values = [0] * n

    def total(self) -> int:
        return sum(list(self.values))


class Progress:
    """Shows progress on standard error every *interval* s while a run lasts (a thread)."""

    def __init__(self, label: str, total: int, counter: Callable[[], int], enabled: bool, interval: float):
        self.label, self.total, self.counter = label, total, counter
        self.enabled, self.interval = enabled, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.shown = False  # written and read by the progress thread, then read after join

    def __enter__(self) -> Progress:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="natsync-cli-progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            n = self.counter()
            pct = 100.0 * n / self.total if self.total else 100.0
            sys.stderr.write(f"\r{self.label}: {n:,}/{self.total:,} ({pct:.0f}%)")
            sys.stderr.flush()
            self.shown = True

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def percentile(sorted_values: list[float], p: float) -> float:
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def _subject(args: argparse.Namespace, nc: Client, default: str | None = None) -> str:
    s = args.subject_pos or args.subject
    if s:
        return str(s)
    return default or "natsync.bench." + nc.new_inbox().rsplit(".", 1)[-1]


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class Clients:
    """N extra connections for one run, closed together."""

    def __init__(self, args: argparse.Namespace, n: int) -> None:
        self.ncs: list[Client] = []
        try:
            for _ in range(n):
                self.ncs.append(_options.connect(args))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for nc in self.ncs:
            nc.close()

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []  # guarded by lock
    lock = threading.Lock()

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
                with lock:
                    errors.append(e)
                interrupt.event.set()

        return run

    threads = [threading.Thread(target=wrap(t), name=f"natsync-bench-{i}") for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.25)
    if errors:
        raise errors[0]


def _publish_n(
    publish: Callable[[str, bytes], None], subject: str, payload: bytes, count: int, counter: Counters, i: int
) -> None:
    # The inner loop is bench/bench.py's; Ctrl-C is looked at between chunks only.
    sent = 0
    while sent < count and not interrupt.event.is_set():
        n = min(_CHUNK, count - sent)
        for _ in range(n):
            publish(subject, payload)
        sent += n
        counter.values[i] = sent


def _wait_for(done: Callable[[], bool], counter: Callable[[], int], stall: float) -> None:
    # Gives up when nothing arrived for *stall* seconds (or on Ctrl-C).
    seen = -1
    deadline = time.monotonic() + stall
    while not done():
        if interrupt.event.wait(0.05):
            return
        n = counter()
        if n != seen:
            seen = n
            deadline = time.monotonic() + stall
        elif time.monotonic() >= deadline:
            return


def bench_pub(nc: Client, args: argparse.Namespace, count: int, payload: bytes) -> dict[str, Any]:
    subject = _subject(args, nc)
    counter = Counters(args.clients)
    shares = _split(count, args.clients)
    with Clients(args, args.clients) as cl:

        def worker(i: int) -> Callable[[], None]:
            def run() -> None:
                _publish_n(cl.ncs[i].publish, subject, payload, shares[i], counter, i)
                cl.ncs[i].flush(timeout=120)

            return run

        with Progress("published", count, counter.total, not args.no_progress, args.progress_interval):
            t0 = time.perf_counter()
            _threads([worker(i) for i in range(args.clients)])
            dt = time.perf_counter() - t0
    sent = counter.total()
    return {"subject": subject, "msgs": sent, "rate": sent / dt if dt > 0 else 0.0, "seconds": dt}


def bench_sub(nc: Client, args: argparse.Namespace, count: int) -> dict[str, Any]:
    subject = _subject(args, nc, "natsync.bench")
    counter = Counters(args.clients)
    first = [0.0] * args.clients  # each written by its subscription's callback only
    last = [0.0] * args.clients
    with Clients(args, args.clients) as cl:
        for i, c in enumerate(cl.ncs):

            def cb(msg: Msg, i: int = i) -> None:
                if counter.values[i] >= count:
                    return  # this client has all it waits for
                n = counter.values[i] + 1
                last[i] = time.perf_counter()
                if n == 1:
                    first[i] = last[i]
                counter.values[i] = n

            c.subscribe(subject, cb=cb, pending_msgs_limit=None, pending_bytes_limit=None)
            c.flush()
        total = count * args.clients
        status(
            f"Waiting for {count:,} messages on {subject!r}"
            + (f" in each of {args.clients} clients" if args.clients > 1 else "")
        )
        with Progress("received", total, counter.total, not args.no_progress, args.progress_interval):
            _wait_for(lambda: counter.total() >= total, counter.total, _options.timeout(args))
    n = counter.total()
    starts = [f for f in first if f]
    dt = (max(last) - min(starts)) if starts else 0.0
    return {
        "subject": subject,
        "received": n,
        "complete": n == total,
        "rate": (n - 1) / dt if n > 1 and dt > 0 else 0.0,
        "seconds": dt,
    }


def bench_pubsub(nc: Client, args: argparse.Namespace, count: int, payload: bytes) -> dict[str, Any]:
    # bench/bench.py's pub+sub scenario: publishers and a callback subscription on their
    # own connections; msgs/s from the first publish until the last arrival.
    received = 0  # written by the subscription's callback only
    last = 0.0
    done = threading.Event()

    def cb(msg: Msg) -> None:
        nonlocal received, last
        received += 1
        if received == count:
            last = time.perf_counter()
            done.set()

    counter = Counters(args.clients)
    shares = _split(count, args.clients)
    with Clients(args, 1) as subs, Clients(args, args.clients) as pubs:
        subject = _subject(args, nc)
        subs.ncs[0].subscribe(subject, cb=cb, pending_msgs_limit=None, pending_bytes_limit=None)
        subs.ncs[0].flush()

        def worker(i: int) -> Callable[[], None]:
            def run() -> None:
                _publish_n(pubs.ncs[i].publish, subject, payload, shares[i], counter, i)
                pubs.ncs[i].flush(timeout=120)

            return run

        with Progress("received", count, lambda: received, not args.no_progress, args.progress_interval):
            t0 = time.perf_counter()
            _threads([worker(i) for i in range(args.clients)])
            _wait_for(done.is_set, lambda: received, _options.timeout(args))
            stopped = time.perf_counter()
    ok = done.is_set()
    dt = (last if ok else stopped) - t0
    return {
        "subject": subject,
        "received": received,
        "complete": ok,
        "rate": received / dt if dt > 0 else 0.0,
        "seconds": dt,
    }


def bench_req(nc: Client, args: argparse.Namespace, count: int, payload: bytes) -> dict[str, Any]:
    timeout = _options.timeout(args)
    own = not (args.subject_pos or args.subject)
    subject = _subject(args, nc)
    responder = None
    if own:  # no SUBJECT: answer our own requests (an echo on a fresh subject)
        responder = _options.connect(args)
        responder.subscribe(subject, cb=lambda m: m.respond(m.data))
        responder.flush()
    lat: list[list[float]] = [[] for _ in range(args.clients)]  # each list written by its thread only
    counter = Counters(args.clients)
    shares = _split(count, args.clients)
    try:
        with Clients(args, args.clients) as cl:
            for c in cl.ncs if own else ():  # warm-up, as bench/bench.py (not others' responders)
                for _ in range(min(200 // args.clients + 1, count)):
                    c.request(subject, payload, timeout=timeout)

            def worker(i: int) -> Callable[[], None]:
                def run() -> None:
                    clock, mine, req = time.perf_counter, lat[i], cl.ncs[i].request
                    for k in range(shares[i]):
                        t = clock()
                        req(subject, payload, timeout=timeout)
                        mine.append(clock() - t)
                        counter.values[i] = k + 1
                        if interrupt.event.is_set():
                            break

                return run

            with Progress("requests", count, counter.total, not args.no_progress, args.progress_interval):
                t_all = time.perf_counter()
                _threads([worker(i) for i in range(args.clients)])
                total = time.perf_counter() - t_all
    finally:
        if responder is not None:
            responder.close()
    all_lat = sorted(x for per in lat for x in per)
    if not all_lat:
        raise CommandError("bench req: no request completed")
    us = {
        p: round(percentile(all_lat, q) * 1e6, 1)
        for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))
    }
    us["max"] = round(all_lat[-1] * 1e6, 1)
    return {
        "subject": subject,
        "msgs": len(all_lat),
        "rate": len(all_lat) / total,
        "seconds": total,
        "latency_us": us,
    }


def bench_reply(nc: Client, args: argparse.Namespace, count: int, payload: bytes) -> dict[str, Any]:
    subject = _subject(args, nc, "natsync.bench")
    counter = Counters(args.clients)
    with Clients(args, args.clients) as cl:
        for i, c in enumerate(cl.ncs):

            def cb(msg: Msg, i: int = i) -> None:
                msg.respond(payload if args.size_given else msg.data)
                counter.values[i] += 1

            c.subscribe(
                subject, queue="natsync-bench", cb=cb, pending_msgs_limit=None, pending_bytes_limit=None
            )
            c.flush()
        status(f"Answering up to {count:,} requests on {subject!r} with {args.clients} client(s)")
        t0 = time.perf_counter()
        with Progress("answered", count, counter.total, not args.no_progress, args.progress_interval):
            while counter.total() < count and not interrupt.event.wait(0.05):
                pass
        dt = time.perf_counter() - t0
    n = counter.total()
    return {"subject": subject, "msgs": n, "answered": n, "rate": n / dt if dt > 0 else 0.0, "seconds": dt}


def cmd_bench(nc: Client, args: argparse.Namespace) -> int:
    """``natsync bench pub|sub|pubsub|req|reply [SUBJECT]``."""
    interrupt.polling = True
    mode = args.mode
    count = args.msgs or (5000 if mode in ("req", "reply") else 100_000)
    args.size_given = args.size is not None
    size = 16 if args.size is None else args.size
    payload = b"x" * size
    result: dict[str, Any] = {"mode": mode, "msgs": count, "size": size, "clients": args.clients}
    if mode == "pub":
        result.update(bench_pub(nc, args, count, payload))
    elif mode == "sub":
        result.update(bench_sub(nc, args, count))
    elif mode == "pubsub":
        result.update(bench_pubsub(nc, args, count, payload))
    elif mode == "req":
        result.update(bench_req(nc, args, count, payload))
    else:
        result.update(bench_reply(nc, args, count, payload))
    interrupted = interrupt.event.is_set()
    if interrupted:
        result["interrupted"] = True
    if not result.get("complete", True) and not interrupted:
        # nothing on stdout: a run that did not complete has no figures to show
        raise CommandError(
            f"bench {mode}: only {result.get('received', 0):,} of "
            f"{count * (args.clients if mode == 'sub' else 1):,} messages arrived within "
            f"{_options.timeout(args):g} s of silence"
        )
    if args.json:
        out(dumps(result))
        return 0
    note = " (interrupted: partial figures)" if interrupted else ""
    clients = f" with {args.clients} clients" if args.clients > 1 else ""
    out(
        f"natsync bench {mode}: {result['msgs']:,} msgs of {size} B{clients} "
        f"on {result.get('subject')!r}{note}"
    )
    if "rate" in result:
        mb = result["rate"] * size / 1e6
        out(f"  {result['rate']:,.0f} msgs/s, {mb:,.2f} MB/s, {result['seconds']:.3f} s")
    if "latency_us" in result:
        lat = result["latency_us"]
        out("  latency (µs): " + ", ".join(f"{k} {v:,.1f}" for k, v in lat.items()))
    return 0


def register(sub: Any, cmd: Any) -> None:
    """Add ``bench``."""
    p = cmd(
        sub,
        "bench",
        "measure throughput (msgs/s) and request latency, like `nats bench`",
        cmd_bench,
        streaming=True,
    )
    p.add_argument("mode", choices=("pub", "sub", "pubsub", "req", "reply"))
    p.add_argument(
        "subject_pos",
        nargs="?",
        default=None,
        metavar="SUBJECT",
        help="subject (default: a fresh one; sub and reply: 'natsync.bench'; req without it "
        "answers its own requests)",
    )
    p.add_argument("--subject", default=None, help=argparse.SUPPRESS)  # the older spelling
    p.add_argument(
        "--clients", type=positive_int, default=1, help="connections, each on its own thread (default 1)"
    )
    p.add_argument(
        "--msgs", type=positive_int, default=None, help="messages (default 100000; req/reply: 5000)"
    )
    p.add_argument("--size", type=non_negative_int, default=None, help="payload bytes (default 16)")
    p.add_argument("--no-progress", action="store_true", help="do not show progress on standard error")
    p.add_argument("--progress-interval", type=float, default=1.0, help=argparse.SUPPRESS)

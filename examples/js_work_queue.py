"""A work queue on JetStream: orders published once, processed by a pool of pull
workers, each order acknowledged exactly when it is done.

The stream ``ORDERS`` uses work-queue retention: a message is removed once a consumer
acknowledged it.  Three worker threads share one durable pull consumer (``workers``),
fetch orders in batches and ``ack()`` each after processing; an order whose processing
fails is ``nak()``-ed and comes back (here: order 7 fails on its first delivery).

Start a server with ``nats-server -js``; the address comes from ``NATS_URL`` (default
``nats://127.0.0.1:4222``).
"""

import os
import threading

import natsync
from natsync.js.api import RetentionPolicy, StorageType

url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
ORDERS = 30

with natsync.connect(url) as nc:
    js = nc.jetstream()
    js.add_stream(
        name="ORDERS", subjects=["orders.>"], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE
    )
    for n in range(ORDERS):
        js.publish(f"orders.new.{n}", f"order {n}".encode(), msg_id=f"order-{n}")
    print(f"published {ORDERS} orders")

    done: dict[str, list[int]] = {}
    lock = threading.Lock()

    def worker(name: str) -> None:
        psub = js.pull_subscribe("orders.>", durable="workers")
        while True:
            with lock:
                if sum(len(v) for v in done.values()) >= ORDERS:
                    return
            try:
                batch = psub.fetch(batch=5, timeout=1.0)
            except natsync.TimeoutError:
                continue
            for msg in batch:
                n = int(msg.data.split()[1])
                if n == 7 and msg.metadata.num_delivered == 1:
                    msg.nak()  # simulated failure: redeliver
                    continue
                with lock:
                    done.setdefault(name, []).append(n)
                msg.ack()

    threads = [threading.Thread(target=worker, args=(f"worker-{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    processed = sorted(n for v in done.values() for n in v)
    once = processed == list(range(ORDERS))
    print(f"processed {len(processed)} orders by {len(done)} workers; each exactly once: {once}")
    info = js.stream_info("ORDERS")
    print(f"left in the stream: {info.state.messages}")
    js.delete_stream("ORDERS")

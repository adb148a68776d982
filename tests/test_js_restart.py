"""A file-storage stream survives a server restart (same port, same store directory)
while a pull consumer and an ordered consumer run: nothing acknowledged comes back,
nothing unacknowledged is lost, and the ordered consumer sees every sequence once,
in order."""

from __future__ import annotations

import os
import threading
import time

import natsync
from natsync.js import errors
from natsync.js.api import ConsumerConfig, StorageType
from natsync.testing import NATSServer

N = 600


def test_store_dir_is_kept_across_restart_and_removed_on_stop() -> None:
    server = NATSServer(jetstream=True)
    assert server.store_dir is None and server.jetstream
    server.start()
    try:
        store = server.store_dir
        assert store is not None and os.path.isdir(store)
        with natsync.connect(server.url) as nc:
            js = nc.jetstream()
            js.add_stream(name="KEEP", subjects=["keep"], storage=StorageType.FILE)
            js.publish("keep", b"data")
        server.restart()
        assert server.store_dir == store
        with natsync.connect(server.url) as nc:
            assert nc.jetstream().stream_info("KEEP").state.messages == 1
        server.kill()
        assert os.path.isdir(store)
        server.start()
        assert "jetstream" in repr(server)
    finally:
        server.stop()
    assert not os.path.exists(store)
    assert server.store_dir is None


def test_restart_with_pull_and_ordered_consumers() -> None:
    with NATSServer(jetstream=True) as server:
        nc = natsync.connect(server.url, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
        try:
            js = nc.jetstream(timeout=2)
            js.add_stream(name="R", subjects=["r.>"], storage=StorageType.FILE)
            # unconfirmed acks around the restart come back after ack_wait
            psub = js.pull_subscribe("r.>", durable="workers", config=ConsumerConfig(ack_wait=2))
            ordered = js.subscribe("r.>", ordered_consumer=True, idle_heartbeat=0.3)

            acked: set[int] = set()
            seen_after_ack: list[int] = []
            worker_error: list[BaseException] = []
            ordered_seqs: list[int] = []
            stop = threading.Event()

            def worker() -> None:
                try:
                    for msg in psub.messages(batch=50):
                        n = int(msg.data)
                        if n in acked:
                            seen_after_ack.append(n)
                        try:
                            msg.ack_sync(timeout=1)
                            acked.add(n)
                        except natsync.NatsError:
                            pass  # not confirmed: it may come back, that is fine
                        if len(acked) == N:
                            return
                except BaseException as e:  # noqa: BLE001 - reported by the test
                    worker_error.append(e)

            def reader() -> None:
                try:
                    while len(ordered_seqs) < N and not stop.is_set():
                        try:
                            msg = ordered.next_msg(timeout=0.5)
                        except natsync.TimeoutError:
                            continue
                        ordered_seqs.append(msg.metadata.sequence.stream)
                except BaseException as e:  # noqa: BLE001
                    worker_error.append(e)

            threads = [threading.Thread(target=worker), threading.Thread(target=reader)]
            for t in threads:
                t.start()

            def publish(i: int) -> None:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        js.publish(f"r.{i % 5}", b"%d" % i, msg_id=f"m{i}", timeout=1)
                        return
                    except (natsync.NatsError, errors.JetStreamError):
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)

            for i in range(N // 2):
                publish(i)
            server.restart()
            for i in range(N // 2, N):
                publish(i)

            for t in threads:
                t.join(40)
            stop.set()
            psub.stop()
            assert not worker_error, worker_error
            assert acked == set(range(N))
            assert seen_after_ack == []
            assert ordered_seqs == list(range(1, N + 1))
            assert js.stream_info("R").state.messages == N
            info = js.consumer_info("R", "workers")
            assert info.num_ack_pending == 0 and info.num_pending == 0
            assert ordered.resets >= 1  # type: ignore[attr-defined]  # recreated after the restart
            ordered.unsubscribe()
        finally:
            nc.close()

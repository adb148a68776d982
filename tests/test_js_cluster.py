"""A 3-node JetStream cluster with an R3 stream: the stream leader is killed while
``publish_async`` runs.  Every future completes; every acknowledged message is in the
stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, wait

import pytest
from recorder import wait_until

import natsync
from natsync.js import api
from natsync.js.api import StorageType
from natsync.testing import NATSCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[NATSCluster]:
    with NATSCluster(3, jetstream=True, startup_timeout=20) as c:
        yield c


def test_cluster_nodes_have_their_own_stores(cluster: NATSCluster) -> None:
    stores = {s.store_dir for s in cluster.servers}
    assert len(stores) == 3 and None not in stores
    assert "jetstream" in repr(cluster.servers[0])


def test_leader_killed_while_publish_async_runs(cluster: NATSCluster) -> None:
    nc = natsync.connect(cluster.urls, reconnect_time_wait=0.05, max_reconnect_attempts=-1)
    try:
        js = nc.jetstream(timeout=5, publish_async_max_pending=256)
        deadline = time.monotonic() + 20
        while True:
            try:
                js.add_stream(name="R3", subjects=["r3.>"], storage=StorageType.FILE, num_replicas=3)
                break
            except natsync.NatsError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        info = js.stream_info("R3")
        assert info.cluster is not None and info.cluster.leader
        leader = info.cluster.leader
        node = cluster.servers[int(leader.rsplit("-", 1)[1])]

        futures: list[tuple[int, Future[api.PubAck]]] = []
        publish_errors: list[BaseException] = []
        acked_after_kill = 0

        def publisher() -> None:
            nonlocal acked_after_kill
            i = 0
            killed_at = None
            end = time.monotonic() + 30
            while time.monotonic() < end:
                try:
                    futures.append((i, js.publish_async("r3.x", b"%d" % i, timeout=2)))
                except natsync.NatsError as e:
                    publish_errors.append(e)
                i += 1
                if i == 500:
                    node.kill()
                    killed_at = len(futures)
                if killed_at is not None:
                    time.sleep(0.001)
                    if i % 50 == 0:
                        acked_after_kill = sum(
                            1 for _, f in futures[killed_at:] if f.done() and f.exception() is None
                        )
                        if acked_after_kill >= 200:
                            return

        t = threading.Thread(target=publisher)
        t.start()
        t.join(60)
        assert not t.is_alive()
        assert acked_after_kill >= 200  # the new leader took over
        done, not_done = wait([f for _, f in futures], timeout=30)
        assert not not_done  # every future completed
        acked = {}
        for i, f in futures:
            exc = f.exception()
            if exc is None:
                acked[f.result().seq] = i
            else:
                assert isinstance(exc, natsync.NatsError), exc
        assert all(isinstance(e, natsync.NatsError) for e in publish_errors)
        assert js.publish_async_pending() == 0
        # every acknowledged message is in the stream, with its payload
        assert wait_until(lambda: _stream_ok(js), 20)
        for seq, i in acked.items():
            assert js.get_msg("R3", seq).data == b"%d" % i
        node.start()  # rejoin with its store
        # clean-up: while the node rejoins, the meta leader may not answer a delete at once
        assert wait_until(lambda: _deleted(js, "R3"), 30)
    finally:
        nc.close()


def _deleted(js: natsync.js.JetStream, name: str) -> bool:
    try:
        js.delete_stream(name, timeout=2)
    except natsync.js.StreamNotFoundError:
        return True  # an earlier attempt did it, its answer lost
    except natsync.NatsError:
        return False
    return True


def _stream_ok(js: natsync.js.JetStream) -> bool:
    try:
        info = js.stream_info("R3", timeout=1)
    except natsync.NatsError:
        return False
    return info.cluster is not None and bool(info.cluster.leader)

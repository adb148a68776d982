"""Priority groups on a 3-node JetStream cluster (an R3 stream and consumer): the pin
id, unpin through the consumer leader, and a pull that goes to another node than the
consumer's leader."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import natsync
from natsync.js import errors
from natsync.js.api import PriorityPolicy, StorageType
from natsync.testing import NATSCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[NATSCluster]:
    with NATSCluster(3, jetstream=True, startup_timeout=20) as c:
        yield c


def test_pinned_client_on_an_r3_consumer(cluster: NATSCluster) -> None:
    # two clients on different nodes: each pull travels through the cluster
    with natsync.connect(cluster.servers[0].url) as nc1, natsync.connect(cluster.servers[1].url) as nc2:
        js1 = nc1.jetstream(timeout=5)
        js2 = nc2.jetstream(timeout=5)
        deadline = time.monotonic() + 20
        while True:  # the meta leader may still be elected
            try:
                js1.add_stream(name="PG", subjects=["pg.>"], storage=StorageType.FILE, num_replicas=3)
                break
            except natsync.NatsError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        info = js1.add_consumer(
            "PG",
            durable_name="w",
            num_replicas=3,
            priority_groups=["g"],
            priority_policy=PriorityPolicy.PINNED_CLIENT,
            priority_timeout=30,
        )
        assert info.config.priority_policy == PriorityPolicy.PINNED_CLIENT
        assert info.cluster is not None and info.cluster.leader
        for i in range(4):
            js1.publish("pg.x", b"%d" % i)
        a = js1.pull_subscribe_bind("w", "PG")
        b = js2.pull_subscribe_bind("w", "PG")
        got = a.fetch(2, timeout=5, group="g")
        assert [m.data for m in got] == [b"0", b"1"]
        for m in got:
            m.ack_sync()
        pin = a.pin_id
        assert pin
        with pytest.raises(natsync.TimeoutError):
            b.fetch(1, timeout=1, group="g")  # not pinned: served nothing
        assert js2.unpin_consumer("PG", "w", "g")
        got = b.fetch(1, timeout=5, group="g")
        assert [m.data for m in got] == [b"2"] and b.pin_id and b.pin_id != pin
        got[0].ack_sync()
        with pytest.raises(errors.APIError) as ei:
            a.fetch(1, timeout=5, group="g")
        assert ei.value.code == 423 and a.pin_id is None
        state = js1.consumer_info("PG", "w").priority_groups
        assert state and state[0].group == "g" and state[0].pinned_client_id == b.pin_id
        js1.delete_stream("PG")

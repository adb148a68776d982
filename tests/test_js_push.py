"""Push and ordered consumers in more detail: heartbeats and flow control answered
inside, callbacks that fail, missed heartbeats, multi-subject filters."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest
from jskit import js_server, memory_stream, nc
from proxy import TCPProxy
from recorder import wait_until

import natsync
from natsync.js import JetStream, OrderedConsumer
from natsync.js.api import DeliverPolicy, StorageType
from natsync.testing import NATSServer

__all__ = ["js_server", "nc"]

_n = itertools.count(1)


@pytest.fixture
def js(nc: natsync.Client) -> JetStream:
    return nc.jetstream(timeout=2)


@pytest.fixture
def stream(js: JetStream) -> Iterator[str]:
    name = f"P{next(_n)}"
    with memory_stream(js, name, [f"{name}.>"], strict_delete=True):
        yield name


def test_heartbeats_and_flow_control_never_reach_the_user(js: JetStream, stream: str) -> None:
    sub = js.subscribe(f"{stream}.>", idle_heartbeat=0.1, flow_control=True, manual_ack=True)
    assert sub.subject.startswith("_INBOX.") and sub.queue is None and sub.is_valid
    assert "PushSubscription" in repr(sub)
    with pytest.raises(natsync.TimeoutError):
        sub.next_msg(timeout=0.5)  # several heartbeats arrived meanwhile
    payload = b"x" * 1024
    for _ in range(3000):
        js.publish_async(f"{stream}.a", payload)
    js.publish_async_completed(10)
    got = 0
    for msg in sub:
        assert msg.data == payload
        msg.ack()
        got += 1
        if got == 3000:
            break
    assert sub.pending_msgs == 0
    sub.drain(timeout=2)
    assert not sub.is_valid


def test_callback_that_raises_is_not_acked(js: JetStream, stream: str) -> None:
    seen = threading.Event()

    def cb(msg: natsync.Msg) -> None:
        seen.set()
        raise RuntimeError("handler failed")

    with js.subscribe(f"{stream}.>", cb=cb, durable="failing") as sub:
        js.publish(f"{stream}.a", b"boom")
        assert seen.wait(5)
        assert wait_until(lambda: sub.consumer_info().num_ack_pending == 1)


def test_callback_with_manual_ack(js: JetStream, stream: str) -> None:
    got: list[natsync.Msg] = []
    ev = threading.Event()

    def cb(msg: natsync.Msg) -> None:
        got.append(msg)
        ev.set()

    sub = js.subscribe(
        f"{stream}.>", cb=cb, manual_ack=True, pending_msgs_limit=100, pending_bytes_limit=10**6
    )
    js.publish(f"{stream}.a", b"one")
    assert ev.wait(5)
    assert sub.consumer_info().num_ack_pending == 1
    got[0].ack_sync()
    assert sub.consumer_info().num_ack_pending == 0
    with pytest.raises(TypeError):
        js.subscribe(f"{stream}.>", cb="nope")  # type: ignore[arg-type]
    sub.unsubscribe()


def test_ordered_callback_keeps_going_after_a_failing_callback(js: JetStream, stream: str) -> None:
    got: list[int] = []
    done = threading.Event()

    def cb(msg: natsync.Msg) -> None:
        n = int(msg.data)
        got.append(n)
        if n == 2:
            raise ValueError("bad message")
        if n == 9:
            done.set()

    sub = js.subscribe(f"{stream}.>", cb=cb, ordered_consumer=True, idle_heartbeat=0.2)
    for i in range(10):
        js.publish(f"{stream}.a", b"%d" % i)
    assert done.wait(5)
    assert got == list(range(10))
    assert sub.is_valid and "OrderedConsumer" in repr(sub)
    sub.drain()
    assert not sub.is_valid


def test_ordered_filters_and_start_sequence(js: JetStream, stream: str) -> None:
    for i in range(9):
        js.publish(f"{stream}.{'abc'[i % 3]}", b"%d" % i)
    oc = OrderedConsumer(
        js,
        stream,
        [f"{stream}.a", f"{stream}.b"],
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=4,
        idle_heartbeat=0.1,
    )
    assert oc.initial_pending == 4
    assert [int(oc.next_msg(2).data) for _ in range(4)] == [3, 4, 6, 7]
    with pytest.raises(natsync.TimeoutError):
        oc.next_msg(timeout=0.4)  # heartbeats meanwhile, matching the last sequence
    assert oc.resets == 0
    assert oc.consumer_info().config.filter_subjects == [f"{stream}.a", f"{stream}.b"]
    js.publish(f"{stream}.b", b"9")
    for msg in oc:
        assert msg.data == b"9"
        threading.Thread(target=oc.stop).start()
    with pytest.raises(ValueError):
        OrderedConsumer(js, stream, idle_heartbeat=0)
    with pytest.raises(TypeError):
        OrderedConsumer(js, stream, cb=5)  # type: ignore[arg-type]


def test_ordered_recreated_after_missed_heartbeats(js_server: NATSServer) -> None:
    with TCPProxy("127.0.0.1", js_server.port) as proxy:
        nc = natsync.connect(proxy.url, reconnect_time_wait=0.05)
        try:
            js = nc.jetstream(timeout=0.5)
            js.add_stream(name="MISS", subjects=["miss"], storage=StorageType.MEMORY)
            oc = js.subscribe("miss", ordered_consumer=True, idle_heartbeat=0.1)
            for i in range(3):
                js.publish("miss", b"%d" % i)
            assert [int(oc.next_msg(2).data) for _ in range(3)] == [0, 1, 2]
            proxy.blackhole(True)
            timer = threading.Timer(1.0, proxy.blackhole, args=(False,))
            timer.start()
            start = time.monotonic()
            with pytest.raises(natsync.TimeoutError):
                oc.next_msg(timeout=0.6)  # heartbeats missed: recreating (fails while cut off)
            assert time.monotonic() - start < 3  # the read's timeout holds while recreating
            timer.join()
            for i in range(3, 6):
                js.publish("miss", b"%d" % i, timeout=5)
            assert [int(oc.next_msg(5).data) for _ in range(3)] == [3, 4, 5]
            assert oc.resets >= 1  # type: ignore[attr-defined]
            oc.unsubscribe()
            js.delete_stream("MISS", timeout=5)
        finally:
            nc.close()


def test_ordered_consumer_ends_on_close(js_server: NATSServer) -> None:
    nc = natsync.connect(js_server.url)
    js = nc.jetstream()
    js.add_stream(name="ENDS", subjects=["ends"], storage=StorageType.MEMORY)
    try:
        oc = js.subscribe("ends", ordered_consumer=True)
        threading.Timer(0.2, nc.close).start()
        with pytest.raises(natsync.ConnectionClosedError):
            oc.next_msg(timeout=5)
        assert not oc.is_valid
        oc.stop()
    finally:
        with natsync.connect(js_server.url) as nc2:
            nc2.jetstream().delete_stream("ENDS")


def test_nats_js_server_fixture(nats_js_server: NATSServer) -> None:
    assert nats_js_server.jetstream and nats_js_server.store_dir
    with natsync.connect(nats_js_server.url) as nc:
        assert nc.jetstream().account_info().streams == 0


def test_explicit_store_dir_is_kept(tmp_path: object) -> None:
    import os
    import pathlib

    store = pathlib.Path(str(tmp_path)) / "store"
    store.mkdir()
    with NATSServer(store_dir=str(store)) as s:
        assert s.jetstream and s.store_dir == str(store)
        with natsync.connect(s.url) as nc:
            nc.jetstream().add_stream(name="KEPT", subjects=["kept"])
    assert os.path.isdir(store / "jetstream")


def test_ordered_gap_inside_a_taken_batch_drops_the_rest_and_redelivers(js: JetStream, stream: str) -> None:
    # next_msg() takes queued deliveries a batch at a time; a gap found inside a batch
    # must drop what is left of it (the old consumer's) and resume after the last
    # message handed out: nothing lost, nothing twice
    for i in range(200):
        js.publish(f"{stream}.a", b"%d" % i)
    oc = OrderedConsumer(js, stream, idle_heartbeat=0.5)
    try:
        sub = oc._sub
        assert sub is not None
        assert wait_until(lambda: sub.pending_msgs >= 150)
        first = oc.next_msg(5)
        assert first.data == b"0"
        assert len(oc._local) >= 149  # the rest of the batch, taken with it
        lost = oc._local.popleft()  # as if the delivery of "1" never arrived: a gap
        assert lost.data == b"1"
        got = [int(oc.next_msg(5).data) for _ in range(199)]
        assert got == list(range(1, 200))
        assert oc.resets == 1
    finally:
        oc.stop()

"""Issue 17, atomic batch publish (ADR-50, server 2.12+) against a real nats-server -js:
all or nothing, the batch headers, the commit's PubAck, flow control, errors.

Cases translated from nats.go's extension (``orbit.go/jetstreamext/test/
publishbatch_test.go``)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest
from jskit import js, js_server, memory_stream, nc

import natsync
from natsync.js import JetStream, errors
from natsync.js.api import StorageType
from natsync.js.batch import BatchClosedError
from natsync.testing import NATSCluster

__all__ = ["js", "js_server", "nc"]

_names = itertools.count(1)


@pytest.fixture
def stream(js: JetStream) -> Iterator[str]:
    n = next(_names)
    with memory_stream(js, f"B{n}", [f"b{n}.>"], strict_delete=True, allow_atomic=True) as name:
        yield name


def _s(stream: str, tail: str = "x") -> str:
    return f"b{stream[1:]}.{tail}"


def test_publish_batch_stores_all_with_headers(js: JetStream, stream: str) -> None:
    ack = js.publish_batch(
        [(_s(stream, "a"), b"one"), (_s(stream, "b"), b"two"), (_s(stream, "c"), b"3", {"X": "y"})]
    )
    assert (ack.stream, ack.seq, ack.batch_size) == (stream, 3, 3)
    assert ack.batch_id
    for seq in (1, 2, 3):
        m = js.get_msg(stream, seq)
        assert m.headers is not None
        assert m.headers.get("Nats-Batch-Id") == ack.batch_id
        assert m.headers.get("Nats-Batch-Sequence") == str(seq)
    last = js.get_msg(stream, 3)
    assert last.headers is not None and last.headers.get("Nats-Batch-Commit") == "1"
    assert last.headers.get("X") == "y" and last.data == b"3"


def test_batch_publisher_add_commit(js: JetStream, stream: str) -> None:
    batch = js.batch_publisher(ack_every=3)
    for i in range(7):
        batch.add(_s(stream), b"%d" % i)
    assert batch.size == 7 and not batch.closed
    assert js.stream_info(stream).state.messages == 0  # nothing stored before the commit
    ack = batch.commit(_s(stream), b"last")
    assert ack.batch_size == 8 and ack.seq == 8 and ack.batch_id == batch.batch_id
    assert batch.closed
    assert js.stream_info(stream).state.messages == 8
    with pytest.raises(BatchClosedError):
        batch.add(_s(stream), b"late")
    with pytest.raises(BatchClosedError):
        batch.commit(_s(stream), b"late")
    assert js.stream_info(stream).state.messages == 8


def test_batch_close_commits_without_a_message(js: JetStream, stream: str) -> None:
    batch = js.batch_publisher()
    with pytest.raises(ValueError, match="empty"):
        batch.close()
    batch.add(_s(stream), b"a")
    batch.add(_s(stream), b"b")
    ack = batch.close()
    assert ack.batch_size == 2 and ack.seq == 2
    assert js.stream_info(stream).state.messages == 2
    last = js.get_msg(stream, 2)
    assert last.headers is not None and last.headers.get("Nats-Batch-Commit") == "1"


def test_failed_expectation_stores_nothing(js: JetStream, stream: str) -> None:
    js.publish(_s(stream), b"before")
    batch = js.batch_publisher()
    batch.add(_s(stream), b"1", expected_last_seq=5)  # checked at commit: it is 1
    batch.add(_s(stream), b"2")
    with pytest.raises(errors.APIError) as e:
        batch.commit(_s(stream), b"3")
    assert e.value.err_code == 10071
    assert js.stream_info(stream).state.messages == 1
    ok = js.publish_batch([(_s(stream), b"1"), (_s(stream), b"2")])
    assert ok.seq == 3


def test_duplicate_msg_id_in_batch_refused(js: JetStream, stream: str) -> None:
    batch = js.batch_publisher()
    batch.add(_s(stream), b"1", msg_id="same")
    batch.add(_s(stream), b"2", msg_id="same")
    with pytest.raises(errors.APIError) as e:
        batch.commit(_s(stream), b"3")
    assert e.value.err_code == 10201
    assert js.stream_info(stream).state.messages == 0


def test_stream_without_allow_atomic(js: JetStream) -> None:
    n = next(_names)
    js.add_stream(name=f"NA{n}", subjects=[f"na{n}.>"], storage=StorageType.MEMORY)
    batch = js.batch_publisher()
    with pytest.raises(errors.APIError) as e:
        batch.add(f"na{n}.x", b"1")  # ack_first: refused at once
    assert e.value.err_code == 10174
    assert batch.closed
    with pytest.raises(errors.APIError) as e:
        js.publish_batch([(f"na{n}.x", b"1")], ack_first=False)
    assert e.value.err_code == 10174
    assert js.stream_info(f"NA{n}").state.messages == 0
    js.delete_stream(f"NA{n}")


def test_batch_to_no_stream(js: JetStream) -> None:
    with pytest.raises(errors.NoStreamResponseError):
        js.publish_batch([("nobatchstream.x", b"1"), ("nobatchstream.x", b"2")])


def test_batch_too_large_refused_whole(js: JetStream, stream: str) -> None:
    with pytest.raises(errors.APIError) as e:
        js.publish_batch([(_s(stream), b"x")] * 1001, ack_every=200)
    assert e.value.err_code == 10199
    assert js.stream_info(stream).state.messages == 0


def test_discard_and_with_block(js: JetStream, stream: str) -> None:
    batch = js.batch_publisher()
    batch.add(_s(stream), b"1")
    batch.discard()
    with pytest.raises(BatchClosedError):
        batch.discard()
    with js.batch_publisher() as b2:
        b2.add(_s(stream), b"1")
    assert b2.closed
    assert js.stream_info(stream).state.messages == 0


def test_bad_input_sends_nothing(nc: natsync.Client, js: JetStream, stream: str) -> None:
    before = nc.stats.out_msgs
    with pytest.raises(ValueError, match="no messages"):
        js.publish_batch([])
    with pytest.raises(ValueError, match="Nats-Batch-Id"):
        js.publish_batch([(_s(stream), b"1"), (_s(stream), b"2", {"Nats-Batch-Id": "mine"})])
    with pytest.raises(TypeError, match="batch message"):
        js.publish_batch([b"not a tuple"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="ack_every"):
        js.batch_publisher(ack_every=-1)
    with pytest.raises(ValueError, match="ttl"):
        js.batch_publisher().add(_s(stream), b"x", ttl=0.1)
    assert nc.stats.out_msgs == before


def test_threads_adding_to_one_batch(js: JetStream, stream: str) -> None:
    batch = js.batch_publisher(ack_every=10)
    errs: list[BaseException] = []

    def adder(k: int) -> None:
        try:
            for i in range(25):
                batch.add(_s(stream, f"t{k}"), b"%d" % i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errs.append(e)

    threads = [threading.Thread(target=adder, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errs
    ack = batch.commit(_s(stream), b"end")
    assert ack.batch_size == 101
    seqs = [int(js.get_msg(stream, s).headers["Nats-Batch-Sequence"]) for s in range(1, 102)]  # type: ignore[index]
    assert seqs == list(range(1, 102))  # stored in batch order


def test_atomic_batch_on_r3_cluster() -> None:
    with NATSCluster(3, jetstream=True, startup_timeout=30) as cluster, natsync.connect(
        cluster.urls
    ) as nc:
        js = nc.jetstream(timeout=10)
        deadline = time.monotonic() + 30
        while True:  # the cluster's JetStream meta leader may still be elected
            try:
                js.add_stream(
                    name="BR3", subjects=["br3.>"], num_replicas=3, allow_atomic=True
                )
                break
            except natsync.NatsError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        ack = js.publish_batch([("br3.a", b"%d" % i) for i in range(50)], ack_every=10)
        assert ack.batch_size == 50 and ack.seq == 50
        batch = js.batch_publisher()
        batch.add("br3.a", b"x", expected_last_seq=1)
        with pytest.raises(errors.APIError):
            batch.commit("br3.a", b"y")
        assert js.stream_info("BR3").state.messages == 50


def test_publish_batch_of_received_msgs(nc: natsync.Client, js: JetStream, stream: str) -> None:
    # messages received from a subscription can be re-published as a batch
    sub = nc.subscribe(_s(stream, ">"))
    nc.publish(_s(stream, "in.a"), b"first", headers={"K": "1"})
    nc.publish(_s(stream, "in.b"), b"second")
    got = [sub.next_msg(timeout=5), sub.next_msg(timeout=5)]
    sub.unsubscribe()
    # the stream stores the two plain publishes on its own schedule (the subscription
    # may see them first): wait (bounded) until it has them
    deadline = time.monotonic() + 5
    while js.stream_info(stream).state.messages < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    before = js.stream_info(stream).state.messages
    assert before == 2
    ack = js.publish_batch(got)
    assert ack.batch_size == 2
    assert js.stream_info(stream).state.messages == before + 2
    m = js.get_msg(stream, ack.seq - 1)
    assert m.data == b"first" and m.headers is not None and m.headers.get("K") == "1"

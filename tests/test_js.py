"""JetStream against a real nats-server (-js): management, publishing, pull, push and
ordered consumers, acknowledgements.  One server for the module; each test gets its
own client and its own stream."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from jskit import js, js_server, memory_stream, nc
from recorder import wait_until

import natsync
from natsync.js import JetStream, api, errors
from natsync.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from natsync.testing import NATSServer

__all__ = ["js", "js_server", "nc"]

_names = itertools.count(1)


@pytest.fixture
def stream(js: JetStream) -> Iterator[str]:
    """A fresh memory stream named S<n> on subjects s<n>.>."""
    n = next(_names)
    with memory_stream(js, f"S{n}", [f"s{n}.>"]) as name:
        yield name


def subj(stream: str, tail: str = "x") -> str:
    return f"s{stream[1:]}.{tail}"


# --------------------------------------------------------------------------- context


def test_context_prefix_and_domain(nc: natsync.Client) -> None:
    assert nc.jetstream().prefix == "$JS.API"
    assert nc.jetstream(domain="hub").prefix == "$JS.hub.API"
    assert nc.jsm(prefix="my.API").prefix == "my.API"
    with pytest.raises(ValueError, match="not both"):
        nc.jetstream(prefix="a", domain="b")
    with pytest.raises(ValueError):
        nc.jetstream(timeout=0)
    with pytest.raises(ValueError):
        nc.jetstream(publish_async_max_pending=0)
    assert "JetStream" in repr(nc.jetstream())


def test_wrong_domain_is_service_unavailable(nc: natsync.Client) -> None:
    with pytest.raises(errors.ServiceUnavailableError, match="JetStream is not enabled"):
        nc.jetstream(domain="nowhere", timeout=2).account_info()


# ------------------------------------------------------------------------- management


def test_account_info(js: JetStream, stream: str) -> None:
    info = js.account_info()
    assert isinstance(info, api.AccountInfo)
    assert info.streams >= 1
    assert info.limits.max_streams == -1
    assert info.api.total > 0


def test_stream_lifecycle(js: JetStream) -> None:
    info = js.add_stream(name="LIFE", subjects=["life.>"], storage=StorageType.MEMORY, max_age=60)
    assert info.config.name == "LIFE" and info.config.max_age == 60.0
    assert info.state.messages == 0
    cfg = info.config.evolve(description="updated", max_msgs=10)
    info = js.update_stream(cfg)
    assert info.config.description == "updated" and info.config.max_msgs == 10
    info = js.update_stream(name="LIFE", subjects=["life.>", "more.>"], storage=StorageType.MEMORY)
    assert info.config.subjects == ["life.>", "more.>"]
    assert "LIFE" in js.stream_names()
    assert any(s.config.name == "LIFE" for s in js.streams_info())
    assert js.find_stream_name_by_subject("more.x") == "LIFE"
    assert js.stream_info("LIFE").config.name == "LIFE"
    assert js.delete_stream("LIFE") is True
    with pytest.raises(errors.StreamNotFoundError) as e:
        js.stream_info("LIFE")
    assert e.value.code == 404 and e.value.err_code == 10059 and "STREAM.INFO" in str(e.value)


def test_add_stream_with_config_object(js: JetStream) -> None:
    cfg = StreamConfig(
        name="CFG", subjects=["cfg.>"], storage=StorageType.MEMORY, retention=RetentionPolicy.LIMITS
    )
    info = js.add_stream(cfg, description="from kw")
    assert info.config.description == "from kw"
    with pytest.raises(errors.BadRequestError):
        js.add_stream(name="CFG2", subjects=["cfg.>"], storage=StorageType.MEMORY)  # overlapping subjects
    js.delete_stream("CFG")


def test_nonexistent_stream_everywhere(js: JetStream) -> None:
    with pytest.raises(errors.StreamNotFoundError):
        js.delete_stream("NOPE")
    with pytest.raises(errors.StreamNotFoundError):
        js.purge_stream("NOPE")
    with pytest.raises(errors.StreamNotFoundError):
        js.add_consumer("NOPE", durable_name="d")
    with pytest.raises(errors.NotFoundError):
        js.find_stream_name_by_subject("no.stream.here")
    with pytest.raises(errors.NotFoundError):
        js.pull_subscribe("no.stream.here", durable="d")
    with pytest.raises(errors.StreamNotFoundError):
        js.get_msg("NOPE", 1)


@pytest.mark.parametrize("bad", ["", "a.b", "a*", "a>", "a b", "a/b"])
def test_bad_names_are_refused_before_any_request(js: JetStream, nc: natsync.Client, bad: str) -> None:
    before = nc.stats.out_msgs
    with pytest.raises(ValueError):
        js.add_stream(name=bad, subjects=["x"])
    with pytest.raises(ValueError):
        js.stream_info(bad)
    with pytest.raises(ValueError):
        js.delete_consumer("S", bad)
    with pytest.raises(ValueError):
        js.add_consumer("S", durable_name=bad)
    assert nc.stats.out_msgs == before


def test_stream_info_subjects_filter_and_purge(js: JetStream, stream: str) -> None:
    for i in range(3):
        js.publish(subj(stream, "a"), b"a%d" % i)
    for i in range(2):
        js.publish(subj(stream, "b"), b"b%d" % i)
    info = js.stream_info(stream, subjects_filter=">")
    assert info.state.subjects == {subj(stream, "a"): 3, subj(stream, "b"): 2}
    assert js.purge_stream(stream, subject=subj(stream, "a")) is True
    assert js.stream_info(stream).state.messages == 2
    assert js.purge_stream(stream, keep=1) is True
    assert js.stream_info(stream).state.messages == 1
    js.publish(subj(stream, "c"), b"c")
    assert js.purge_stream(stream, seq=7) is True  # everything below seq 7
    assert js.stream_info(stream).state.messages == 0
    with pytest.raises(ValueError):
        js.purge_stream(stream, seq=1, keep=1)


def test_consumer_management(js: JetStream, stream: str) -> None:
    info = js.add_consumer(stream, durable_name="dur", ack_policy=AckPolicy.EXPLICIT, ack_wait=10)
    assert info.name == "dur" and info.config.ack_wait == 10.0
    named = js.add_consumer(stream, ConsumerConfig(name="named", filter_subject=subj(stream, "a")))
    assert named.name == "named" and named.config.filter_subject == subj(stream, "a")
    multi = js.add_consumer(stream, name="multi", filter_subjects=[subj(stream, "a"), subj(stream, "b")])
    assert multi.config.filter_subjects == [subj(stream, "a"), subj(stream, "b")]
    eph = js.add_consumer(stream, ack_policy=AckPolicy.EXPLICIT, inactive_threshold=30)
    assert eph.name and eph.config.durable_name is None
    names = {c.name for c in js.consumers_info(stream)}
    assert {"dur", "named", "multi", eph.name} <= names
    assert js.consumer_info(stream, "dur").stream_name == stream
    assert js.delete_consumer(stream, "dur") is True
    with pytest.raises(errors.ConsumerNotFoundError) as e:
        js.consumer_info(stream, "dur")
    assert "CONSUMER.INFO" in str(e.value)
    with pytest.raises(errors.ConsumerNotFoundError):
        js.delete_consumer(stream, "dur")
    with pytest.raises(ValueError, match="differ"):
        js.add_consumer(stream, name="a", durable_name="b")
    with pytest.raises(TypeError):
        js.add_consumer(stream, config="nope")  # type: ignore[arg-type]


def test_get_msg_and_delete_msg(js: JetStream, stream: str) -> None:
    js.publish(subj(stream, "a"), b"first", headers={"X-K": "1"})
    js.publish(subj(stream, "b"), b"second")
    js.publish(subj(stream, "a"), b"third")
    m = js.get_msg(stream, 1)
    assert m.data == b"first" and m.seq == 1 and m.subject == subj(stream, "a")
    assert m.headers is not None and m.headers["X-K"] == "1"
    assert isinstance(m.time, type(api.parse_time("2024-01-01T00:00:00Z")))
    last = js.get_last_msg(stream, subj(stream, "a"))
    assert last.data == b"third" and last.seq == 3
    assert js.get_msg(stream, subject=subj(stream, "b")).data == b"second"
    nxt = js.get_msg(stream, seq=2, subject=subj(stream, "a"))  # first on a at or after 2
    assert nxt.seq == 3
    assert js.delete_msg(stream, 2) is True
    with pytest.raises(errors.NotFoundError):
        js.get_msg(stream, 2)
    with pytest.raises(ValueError):
        js.get_msg(stream)


def test_direct_get(js: JetStream) -> None:
    js.add_stream(name="DIRECT", subjects=["direct.>"], storage=StorageType.MEMORY, allow_direct=True)
    try:
        js.publish("direct.a", b"one", headers={"X-H": "v"})
        js.publish("direct.a", b"two")
        m = js.get_msg("DIRECT", 1, direct=True)
        assert m.data == b"one" and m.seq == 1 and m.subject == "direct.a"
        assert m.headers is not None and m.headers["X-H"] == "v"
        last = js.get_last_msg("DIRECT", "direct.a", direct=True)
        assert last.data == b"two" and last.seq == 2 and last.time is not None
        with pytest.raises(errors.NotFoundError):
            js.get_msg("DIRECT", 99, direct=True)
    finally:
        js.delete_stream("DIRECT")


# ---------------------------------------------------------------------------- publish


def test_publish_returns_pub_ack(js: JetStream, stream: str) -> None:
    ack = js.publish(subj(stream), b"hello")
    assert isinstance(ack, api.PubAck)
    assert ack.stream == stream and ack.seq == 1 and not ack.duplicate
    ack = js.publish(subj(stream), "text", headers={"A": "b"})
    assert ack.seq == 2
    assert js.get_msg(stream, 2).data == b"text"


def test_publish_msg_id_dedupes(js: JetStream, stream: str) -> None:
    first = js.publish(subj(stream), b"once", msg_id="id-1")
    again = js.publish(subj(stream), b"once more", msg_id="id-1")
    assert again.duplicate is True and again.seq == first.seq
    assert js.stream_info(stream).state.messages == 1
    assert js.get_msg(stream, 1).headers["Nats-Msg-Id"] == "id-1"  # type: ignore[index]


def test_publish_expectations(js: JetStream, stream: str) -> None:
    s = subj(stream, "k")
    js.publish(s, b"1", msg_id="m1")
    js.publish(s, b"2", expected_stream=stream, expected_last_seq=1, expected_last_msg_id="m1")
    js.publish(s, b"3", stream=stream, expected_last_subject_seq=2)
    with pytest.raises(errors.APIError) as e:
        js.publish(s, b"4", expected_last_seq=1)
    assert e.value.err_code == 10071
    with pytest.raises(errors.APIError):
        js.publish(s, b"4", expected_stream="OTHER")
    with pytest.raises(errors.APIError):
        js.publish(s, b"4", expected_last_subject_seq=1)
    with pytest.raises(errors.APIError):
        js.publish(s, b"4", expected_last_msg_id="nope")
    assert js.stream_info(stream).state.messages == 3


def test_publish_without_stream_fails_at_once(js: JetStream) -> None:
    start = time.monotonic()
    with pytest.raises(errors.NoStreamResponseError, match="no.stream"):
        js.publish("no.stream", b"x", timeout=30)
    assert time.monotonic() - start < 10  # not after the 30 s timeout


def test_publish_async(nc: natsync.Client, stream: str) -> None:
    js = nc.jetstream(publish_async_max_pending=50)
    futures = [js.publish_async(subj(stream), b"m%d" % i) for i in range(500)]
    js.publish_async_completed(timeout=10)
    assert js.publish_async_pending() == 0
    seqs = [f.result(timeout=0).seq for f in futures]
    assert sorted(seqs) == list(range(1, 501))
    assert js.stream_info(stream).state.messages == 500
    dup = js.publish_async(subj(stream), b"x", msg_id="a")
    dup2 = js.publish_async(subj(stream), b"x", msg_id="a")
    assert dup2.result(5).duplicate is True and dup.result(5).seq == dup2.result(5).seq
    bad = js.publish_async(subj(stream), b"x", expected_last_seq=1)
    with pytest.raises(errors.APIError):
        bad.result(5)
    nostream = js.publish_async("no.stream.async", b"x")
    with pytest.raises(errors.NoStreamResponseError):
        nostream.result(5)
    assert js.publish_async_pending() == 0


def test_publish_async_futures_fail_on_close(js_server: NATSServer, stream: str) -> None:
    nc = natsync.connect(js_server.url)
    js = nc.jetstream(publish_async_max_pending=100000)
    # a subject without a stream but with a subscriber that never answers: no ack ever
    nc.subscribe("silent.>")
    futures = [js.publish_async("silent.x", b"x", timeout=30) for _ in range(100)]
    assert js.publish_async_pending() == 100
    assert futures[0].cancel()  # a cancelled future is left alone
    nc.close()
    assert futures[0].cancelled()
    for f in futures[1:]:
        with pytest.raises(natsync.ConnectionClosedError):
            f.result(timeout=5)
    assert js.publish_async_pending() == 0
    with pytest.raises(natsync.ConnectionClosedError):
        js.publish_async(subj(stream), b"x")


def test_close_joins_jetstream_threads(js_server: NATSServer, stream: str) -> None:
    """close() joins the ack thread of publish_async and an ordered consumer's callback
    thread: none is alive when it returns (no grace period)."""
    nc = natsync.connect(js_server.url)
    js = nc.jetstream()
    got = threading.Event()
    finished: list[bool] = []

    def slow(msg: natsync.Msg) -> None:
        got.set()
        time.sleep(0.3)  # still running when close() starts: close() lets it finish
        finished.append(True)

    js.publish_async(subj(stream), b"x").result(timeout=5)
    js.subscribe(subj(stream), cb=slow, ordered_consumer=True)
    assert got.wait(5)
    names = {t.name for t in threading.enumerate()}
    assert {"natsync-js-acks", "natsync-js-ordered"} <= names
    nc.close()
    left = [t.name for t in threading.enumerate() if t.name.startswith("natsync") and t.is_alive()]
    assert "natsync-js-acks" not in left and "natsync-js-ordered" not in left, left
    assert finished == [True]


def test_publish_async_times_out_and_window_blocks(nc: natsync.Client) -> None:
    js = nc.jetstream(publish_async_max_pending=2)
    nc.subscribe("silent2.>")
    f1 = js.publish_async("silent2.a", b"", timeout=0.3)
    f2 = js.publish_async("silent2.a", b"", timeout=0.3)
    # the window is full: the third waits for a slot, which the expired futures free
    f3: Future[api.PubAck] = js.publish_async("silent2.a", b"", timeout=5)
    for f in (f1, f2):
        with pytest.raises(natsync.TimeoutError):
            f.result(timeout=5)
    assert not f3.done() or isinstance(f3.exception(), natsync.TimeoutError)
    js2 = nc.jetstream(publish_async_max_pending=1)
    js2.publish_async("silent2.b", b"", timeout=5)
    with pytest.raises(natsync.TimeoutError, match="outstanding"):
        js2.publish_async("silent2.b", b"", timeout=0.2)
    with pytest.raises(natsync.TimeoutError):
        js2.publish_async_completed(timeout=0.1)


# ---------------------------------------------------------------------------- pull


def test_pull_fetch_and_acks(js: JetStream, stream: str) -> None:
    for i in range(10):
        js.publish(subj(stream), b"%d" % i)
    psub = js.pull_subscribe(subj(stream), durable="workers")
    msgs = psub.fetch(batch=4, timeout=2)
    assert [m.data for m in msgs] == [b"0", b"1", b"2", b"3"]
    md = msgs[0].metadata
    assert md.stream == stream and md.consumer == "workers"
    assert md.sequence.stream == 1 and md.sequence.consumer == 1
    assert md.num_delivered == 1 and md.num_pending == 9 and md.domain is None
    assert md.timestamp.tzinfo is not None
    msgs[0].ack()
    msgs[1].ack_sync(timeout=2)
    msgs[2].term()
    msgs[3].nak()
    for m in msgs:
        for call in (m.ack, m.nak, m.term, m.in_progress):
            with pytest.raises(errors.MsgAlreadyAckdError):
                call()
        with pytest.raises(errors.MsgAlreadyAckdError):
            m.ack_sync()
    # the nak'ed message comes back with the rest; the termed one does not.  fetch
    # returns what is there at once, and the nak may reach the server after the
    # first pull: gather until the 7 came (or a fetch times out, failing the test)
    rest = psub.fetch(batch=100, timeout=1)
    while len(rest) < 7:
        rest += psub.fetch(batch=100, timeout=1)
    assert sorted(m.data for m in rest) == [b"%d" % i for i in range(3, 10)]
    again = next(m for m in rest if m.data == b"3")
    assert again.metadata.num_delivered == 2
    again.in_progress()
    again.in_progress()  # may repeat before the final ack
    for m in rest:
        m.ack()
    with pytest.raises(natsync.TimeoutError):
        psub.fetch(timeout=0.5)
    info = psub.consumer_info()
    assert info.num_ack_pending == 0 and info.num_pending == 0
    psub.unsubscribe()
    assert js.consumer_info(stream, "workers").name == "workers"  # the durable stays
    bound = js.pull_subscribe_bind("workers", stream)
    with pytest.raises(natsync.TimeoutError):
        bound.fetch(timeout=0.3)
    bound.unsubscribe()
    with pytest.raises(errors.ConsumerNotFoundError):
        js.pull_subscribe_bind("nobody", stream)


def test_nak_with_delay_and_redelivery(js: JetStream, stream: str) -> None:
    js.publish(subj(stream), b"later")
    psub = js.pull_subscribe(subj(stream), durable="nak")
    m = psub.fetch(timeout=2)[0]
    with pytest.raises(ValueError):
        m.nak(delay=-1)
    m.nak(delay=0.5)
    again = psub.fetch(timeout=5)[0]
    assert again.data == b"later" and again.metadata.num_delivered == 2
    again.ack()


def test_fetch_returns_what_arrived_when_the_request_expires(js: JetStream, stream: str) -> None:
    for i in range(3):
        js.publish(subj(stream), b"%d" % i)
    psub = js.pull_subscribe(subj(stream))  # ephemeral
    msgs = psub.fetch(batch=10, timeout=1.0)
    assert len(msgs) == 3
    for m in msgs:
        m.ack()


def test_fetch_max_bytes_and_heartbeat(js: JetStream, stream: str) -> None:
    for _ in range(5):
        js.publish(subj(stream), b"x" * 100)
    psub = js.pull_subscribe(subj(stream), durable="mb")
    msgs = psub.fetch(batch=5, timeout=2, max_bytes=250)
    assert 1 <= len(msgs) < 5
    for m in msgs:
        m.ack()
    # heartbeats keep an idle fetch alive and never reach the user
    rest = psub.fetch(batch=10, timeout=2, heartbeat=0.2)
    assert all(m.data == b"x" * 100 for m in rest)
    with pytest.raises(ValueError):
        psub.fetch(batch=0)
    with pytest.raises(ValueError):
        psub.fetch(timeout=1, heartbeat=0.6)


def test_fetch_bad_request_is_an_error(js: JetStream, stream: str) -> None:
    js.add_consumer(stream, durable_name="small", max_batch=2)
    psub = js.pull_subscribe_bind("small", stream)
    with pytest.raises(errors.BadRequestError, match="MaxRequestBatch"):
        psub.fetch(batch=5, timeout=1)


def test_consumer_deleted_while_fetching(js: JetStream, stream: str) -> None:
    psub = js.pull_subscribe(subj(stream), durable="gone")
    threading.Timer(0.3, lambda: js.delete_consumer(stream, "gone")).start()
    with pytest.raises(errors.ConsumerNotFoundError):
        psub.fetch(timeout=5)
    # and a fetch on a consumer that no longer exists
    with pytest.raises(errors.ConsumerNotFoundError):
        psub.fetch(timeout=2)


def test_messages_iterator(js: JetStream, stream: str) -> None:
    for i in range(250):
        js.publish(subj(stream), b"%d" % i)
    psub = js.pull_subscribe(subj(stream), durable="iter")
    got = []
    for m in psub.messages(batch=20):
        got.append(int(m.data))
        m.ack()
        if len(got) == 250:
            break
    assert got == list(range(250))
    # stop() from another thread ends a blocked iteration
    it = psub.messages(batch=5)
    threading.Timer(0.3, psub.stop).start()
    assert list(it) == []
    psub.unsubscribe()
    with pytest.raises(natsync.BadSubscriptionError):
        psub.messages()


def test_messages_iterator_consumer_deleted(js: JetStream, stream: str) -> None:
    psub = js.pull_subscribe(subj(stream), durable="del")
    threading.Timer(0.3, lambda: js.delete_consumer(stream, "del")).start()
    with pytest.raises(errors.ConsumerNotFoundError):
        for _ in psub.messages(batch=10):
            pass


def test_messages_iterator_close_raises(js_server: NATSServer) -> None:
    nc = natsync.connect(js_server.url)
    js = nc.jetstream()
    js.add_stream(name="CLOSEIT", subjects=["closeit"], storage=StorageType.MEMORY)
    try:
        psub = js.pull_subscribe("closeit", durable="c")
        threading.Timer(0.3, nc.close).start()
        with pytest.raises(natsync.ConnectionClosedError):
            for _ in psub.messages():
                pass
    finally:
        with natsync.connect(js_server.url) as nc2:
            nc2.jetstream().delete_stream("CLOSEIT")


def test_messages_iterator_missed_heartbeats(js_server: NATSServer) -> None:
    from proxy import TCPProxy

    with TCPProxy("127.0.0.1", js_server.port) as proxy:
        nc = natsync.connect(proxy.url)
        try:
            js = nc.jetstream()
            js.add_stream(name="HB", subjects=["hb"], storage=StorageType.MEMORY)
            psub = js.pull_subscribe("hb", durable="hb")
            threading.Timer(0.5, proxy.blackhole).start()
            with pytest.raises(errors.NoHeartbeatError):
                for _ in psub.messages(batch=10, heartbeat=0.2):
                    pass
            proxy.blackhole(False)
            js.delete_stream("HB")
        finally:
            nc.close()


# ---------------------------------------------------------------------------- push


def test_push_subscribe_callback_auto_ack(js: JetStream, stream: str) -> None:
    got: list[bytes] = []
    done = threading.Event()

    def cb(msg: natsync.Msg) -> None:
        got.append(msg.data)
        if len(got) == 20:
            done.set()

    sub = js.subscribe(subj(stream), cb=cb, durable="pushcb", idle_heartbeat=0.2, flow_control=True)
    for i in range(20):
        js.publish(subj(stream), b"%d" % i)
    assert done.wait(10)
    assert got == [b"%d" % i for i in range(20)]
    assert wait_until(lambda: sub.consumer_info().num_ack_pending == 0)
    sub.unsubscribe()
    assert js.consumer_info(stream, "pushcb").name == "pushcb"  # durable stays


def test_push_subscribe_next_msg_manual_ack(js: JetStream, stream: str) -> None:
    for i in range(3):
        js.publish(subj(stream), b"%d" % i)
    sub = js.subscribe(subj(stream), manual_ack=True, deliver_policy=DeliverPolicy.ALL)
    msgs = [sub.next_msg(timeout=2) for _ in range(3)]
    assert [m.data for m in msgs] == [b"0", b"1", b"2"]
    assert sub.consumer_info().num_ack_pending == 3
    for m in msgs:
        m.ack()
    assert wait_until(lambda: sub.consumer_info().num_ack_pending == 0)
    with pytest.raises(natsync.TimeoutError):
        sub.next_msg(timeout=0.2)
    name = sub.consumer
    sub.unsubscribe()
    with pytest.raises(errors.ConsumerNotFoundError):  # an ephemeral one it created is removed
        js.consumer_info(stream, name)


def test_push_subscribe_iteration_and_rebind_durable(js: JetStream, stream: str) -> None:
    sub = js.subscribe(subj(stream), durable="again")
    js.publish(subj(stream), b"one")
    for m in sub:
        assert m.data == b"one"
        m.ack()
        break
    sub.unsubscribe()
    js.publish(subj(stream), b"two")
    sub2 = js.subscribe(subj(stream), durable="again")  # binds to the existing consumer
    assert wait_until(lambda: bool(js.consumer_info(stream, "again").push_bound))
    with pytest.raises(errors.JetStreamError, match="already bound"):
        js.subscribe(subj(stream), durable="again")
    m = sub2.next_msg(timeout=2)
    assert m.data == b"two"
    m.ack()
    sub2.unsubscribe()
    js.add_consumer(stream, durable_name="puller")
    with pytest.raises(errors.JetStreamError, match="pull consumer"):
        js.subscribe(subj(stream), durable="puller")


def test_push_queue_group_shares_messages(js: JetStream, stream: str) -> None:
    counts = [0, 0]
    lock = threading.Lock()
    total = threading.Event()

    def make(i: int):  # type: ignore[no-untyped-def]
        def cb(msg: natsync.Msg) -> None:
            with lock:
                counts[i] += 1
                if sum(counts) == 100:
                    total.set()

        return cb

    s1 = js.subscribe(subj(stream), queue="workers", cb=make(0))
    s2 = js.subscribe(subj(stream), queue="workers", cb=make(1))
    for i in range(100):
        js.publish(subj(stream), b"%d" % i)
    assert total.wait(10)
    assert sum(counts) == 100
    assert s1.consumer == s2.consumer == "workers"
    with pytest.raises(errors.JetStreamError, match="deliver group"):
        js.subscribe(subj(stream), durable="workers")
    s1.unsubscribe()
    s2.unsubscribe()


def test_ordered_consumer_delivers_in_order(js: JetStream, stream: str) -> None:
    for i in range(50):
        js.publish(subj(stream, str(i % 3)), b"%d" % i)
    sub = js.subscribe(subj(stream, ">"), ordered_consumer=True, idle_heartbeat=0.5)
    got = [int(sub.next_msg(timeout=2).data) for _ in range(50)]
    assert got == list(range(50))
    with pytest.raises(natsync.TimeoutError):
        sub.next_msg(timeout=0.2)
    # a deleted consumer is recreated from where it was
    js.delete_consumer(stream, sub.consumer)
    js.publish(subj(stream, "0"), b"50")
    assert int(sub.next_msg(timeout=5).data) == 50
    sub.unsubscribe()
    with pytest.raises(natsync.BadSubscriptionError):
        sub.next_msg(timeout=0.1)
    with pytest.raises(ValueError):
        js.subscribe(subj(stream), ordered_consumer=True, durable="x")


def test_ordered_consumer_callback_headers_only(js: JetStream, stream: str) -> None:
    from natsync.js.ordered import OrderedConsumer

    js.publish(subj(stream, "a"), b"payload", headers={"K": "v"})
    js.publish(subj(stream, "b"), b"other")
    got: list[natsync.Msg] = []
    ev = threading.Event()

    def cb(m: natsync.Msg) -> None:
        got.append(m)
        ev.set()

    oc = OrderedConsumer(js, stream, [subj(stream, "a")], headers_only=True, idle_heartbeat=1, cb=cb)
    assert oc.initial_pending == 1
    assert ev.wait(5)
    assert got[0].data == b"" and got[0].headers is not None and got[0].headers["K"] == "v"
    assert oc.stream_seq == 1
    with pytest.raises(natsync.BadSubscriptionError):
        oc.next_msg()
    oc.stop()
    oc.stop()


def test_ordered_consumer_survives_a_reconnect(js_server: NATSServer) -> None:
    from proxy import TCPProxy

    with TCPProxy("127.0.0.1", js_server.port) as proxy:
        nc = natsync.connect(proxy.url, reconnect_time_wait=0.05)
        try:
            js = nc.jetstream()
            js.add_stream(name="RC", subjects=["rc"], storage=StorageType.MEMORY)
            sub = js.subscribe("rc", ordered_consumer=True, idle_heartbeat=0.5)
            for i in range(10):
                js.publish("rc", b"%d" % i)
            got = [int(sub.next_msg(timeout=2).data) for _ in range(5)]
            proxy.cut()
            assert wait_until(lambda: nc.stats.reconnects >= 1 and nc.is_connected)
            for i in range(10, 20):
                js.publish("rc", b"%d" % i)
            got += [int(sub.next_msg(timeout=5).data) for _ in range(15)]
            assert got == list(range(20))
            sub.unsubscribe()
            js.delete_stream("RC")
        finally:
            nc.close()


# ---------------------------------------------------------------------- errors


def test_jetstream_disabled() -> None:
    with NATSServer() as server, natsync.connect(server.url) as nc:
        js = nc.jetstream(timeout=2)
        with pytest.raises(errors.ServiceUnavailableError) as e:
            js.account_info()
        assert "JetStream is not enabled" in str(e.value) and "-js" in str(e.value)
        with pytest.raises(errors.ServiceUnavailableError):
            js.add_stream(name="X", subjects=["x"])
        with pytest.raises(errors.NoStreamResponseError):
            js.publish("x", b"")


PERMS_CONFIG = """
jetstream: enabled
accounts {
  A {
    jetstream: enabled
    users = [
      {user: admin, password: adminpw}
      {user: reader, password: readerpw, permissions: {
         publish: {allow: ["$JS.API.INFO", "$JS.API.STREAM.INFO.>"], deny: ["$JS.API.STREAM.INFO.SECRET"]}
         subscribe: {allow: ["_INBOX.>"]}
      }}
    ]
  }
}
"""


def test_permission_violations_on_the_api(tmp_path: object) -> None:
    from recorder import Recorder

    with NATSServer(config=PERMS_CONFIG, jetstream=True) as server:
        with natsync.connect(server.url, user="admin", password="adminpw") as admin:
            admin.jetstream().add_stream(name="OPEN", subjects=["open"], storage=StorageType.MEMORY)
            admin.jetstream().add_stream(name="SECRET", subjects=["secret"], storage=StorageType.MEMORY)
        rec = Recorder()
        with natsync.connect(server.url, user="reader", password="readerpw", **rec.options()) as nc:
            js = nc.jetstream(timeout=1)
            assert js.stream_info("OPEN").config.name == "OPEN"
            with pytest.raises(natsync.TimeoutError, match=r"\$JS\.API"):
                js.stream_info("SECRET")
            with pytest.raises(natsync.TimeoutError):
                js.add_stream(name="NEW", subjects=["new"])
            assert rec.wait(lambda: len(rec.errors_of(natsync.PermissionsError)) >= 2)
            perm = rec.errors_of(natsync.PermissionsError)[0]
            assert perm.subject == "$JS.API.STREAM.INFO.SECRET" and perm.operation == "publish"
            assert "readerpw" not in str(perm)


def test_messages_iterator_resumes_after_reconnect(js_server: NATSServer) -> None:
    from proxy import TCPProxy

    with TCPProxy("127.0.0.1", js_server.port) as proxy:
        nc = natsync.connect(proxy.url, reconnect_time_wait=0.05)
        try:
            js = nc.jetstream()
            js.add_stream(name="RESUME", subjects=["resume"], storage=StorageType.MEMORY)
            # a message the server sent to the dead connection comes back after ack_wait
            psub = js.pull_subscribe("resume", durable="r", config=ConsumerConfig(ack_wait=1))
            for i in range(3):
                js.publish("resume", b"%d" % i)
            got = []
            for msg in psub.messages(batch=10):
                got.append(int(msg.data))
                msg.ack_sync()
                if len(got) == 3:
                    # the pull requests die with the connection; the iterator asks again
                    proxy.cut()
                    assert wait_until(lambda: nc.stats.reconnects >= 1 and nc.is_connected)
                    for i in range(3, 6):
                        js.publish("resume", b"%d" % i)
                if set(got) >= set(range(6)):
                    break
            assert got[:3] == [0, 1, 2] and set(got) == set(range(6))
            js.delete_stream("RESUME")
        finally:
            nc.close()


def test_pull_subscription_odds_and_ends(js: JetStream, stream: str) -> None:
    js.publish(subj(stream), b"a")
    with js.pull_subscribe(subj(stream), durable="odds", inbox_prefix="_MYBOX") as psub:
        assert "odds" in repr(psub)
        [m] = psub.fetch(timeout=2)
        assert m.data == b"a"
        m.ack()
        it = psub.messages(batch=1)
        psub.stop()  # before the first next(): the iteration ends at once
        assert list(it) == []
        with pytest.raises(ValueError):
            psub.messages(batch=0)
        with pytest.raises(ValueError):
            psub.messages(heartbeat=20)
        with pytest.raises(ValueError):
            psub.fetch(timeout=0)
    with pytest.raises(natsync.BadSubscriptionError):
        psub.fetch(timeout=1)
    with pytest.raises(ValueError):
        js.pull_subscribe_bind(stream=stream)


def test_stream_deleted_under_a_pull_consumer(js: JetStream) -> None:
    js.add_stream(name="VANISH", subjects=["vanish"], storage=StorageType.MEMORY)
    psub = js.pull_subscribe("vanish", durable="v")
    js.delete_stream("VANISH")
    with pytest.raises(errors.ConsumerNotFoundError):
        psub.fetch(timeout=2)
    with pytest.raises(errors.NotFoundError):
        for _ in psub.messages():
            pass

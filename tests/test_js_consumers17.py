"""Issue 17, consumers and connection state: the cases of nats.go's
``jetstream/test/pull_test.go`` / ``consumer_test.go`` and nats.py's ``tests/test_js.py``
that natsync failed, against a real ``nats-server -js``.

Bugs: a push subscribe that ignored ``name``/``deliver_subject``; ten threads racing to
create one queue consumer; ``fetch`` that threw away what it had received when the
consumer was deleted; auto-ack of an ``AckNone`` consumer; a second ``unsubscribe()``
of a push subscription ignored.  Features: ``fetch`` that returns what is there,
``no_wait``, 409 "Exceeded MaxWaiting", the extended consumer-create subject, named
ephemerals, ``consumer_names``, pause/resume, ``subscribe_bind``, ``term(reason)``,
priority groups (pinned client, overflow, unpin, pin id mismatch) and
``NotConnectedError``.
"""

from __future__ import annotations

import datetime
import itertools
import json
import threading
import time
from collections.abc import Iterator

import pytest
from jskit import js, js_server, memory_stream, nc
from recorder import wait_until

import natsync
from natsync.js import JetStream, errors
from natsync.js.api import AckPolicy, ConsumerConfig, PriorityPolicy, StorageType
from natsync.testing import NATSServer

__all__ = ["js", "js_server", "nc"]

_n = itertools.count(1)


@pytest.fixture
def stream(js: JetStream) -> Iterator[str]:
    name = f"C{next(_n)}"
    with memory_stream(js, name, [f"{name}.>"]):
        yield name


def _publish(js: JetStream, subject: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        js.publish(subject, b"%d" % i)


# --- bugs -----------------------------------------------------------------------------------


def test_subscribe_honours_name_and_deliver_subject(js: JetStream, stream: str) -> None:
    # nats.py: subscribe(..., config=ConsumerConfig(name=..., deliver_subject=...))
    cfg = ConsumerConfig(name="named", deliver_subject=f"deliver.{stream}")
    sub = js.subscribe(f"{stream}.>", config=cfg, manual_ack=True)
    assert sub.subject == f"deliver.{stream}"
    assert sub.consumer == "named"
    info = js.consumer_info(stream, "named")
    assert info.config.deliver_subject == f"deliver.{stream}"
    assert info.config.durable_name is None  # named, not durable
    js.publish(f"{stream}.a", b"x")
    msg = sub.next_msg(timeout=5)
    assert msg.data == b"x" and msg.metadata.consumer == "named"
    msg.ack()
    sub.unsubscribe()
    # a named consumer is not an ephemeral of this subscription: it stays
    assert js.consumer_info(stream, "named").name == "named"


def test_ten_threads_subscribe_one_queue_all_bind(js: JetStream, stream: str) -> None:
    # nats.go: "consumer name already in use" on create -> look it up, bind if it fits
    n = 10
    barrier = threading.Barrier(n)
    subs: list[object] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    got: list[bytes] = []
    all_in = threading.Event()

    def cb(msg: natsync.Msg) -> None:
        with lock:
            got.append(msg.data)
            if len(got) == 20:
                all_in.set()

    def worker() -> None:
        try:
            barrier.wait(10)
            s = js.subscribe(f"{stream}.>", "workers", cb=cb)
            with lock:
                subs.append(s)
        except BaseException as e:  # noqa: BLE001 - reported below
            with lock:
                failures.append(e)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    assert len(subs) == n
    assert js.consumer_names(stream) == ["workers"]
    _publish(js, f"{stream}.x", 20)
    assert all_in.wait(10)
    assert sorted(got, key=int) == [b"%d" % i for i in range(20)]  # each exactly once
    for s in subs:
        s.unsubscribe()  # type: ignore[attr-defined]


def test_fetch_keeps_the_messages_it_got_when_the_consumer_is_deleted(
    js: JetStream, stream: str
) -> None:
    psub = js.pull_subscribe(f"{stream}.>", durable="doomed")
    result: list[object] = []

    def fetcher() -> None:
        try:
            result.append(psub.fetch(10, timeout=10))
        except BaseException as e:  # noqa: BLE001 - checked below
            result.append(e)

    t = threading.Thread(target=fetcher)
    t.start()
    # the fetch waits (nothing was there); five messages arrive for it, then the
    # consumer is deleted while its pull is still open
    assert wait_until(lambda: (js.consumer_info(stream, "doomed").num_waiting or 0) >= 1, 5)
    _publish(js, f"{stream}.a", 5)
    assert wait_until(lambda: js.consumer_info(stream, "doomed").delivered.consumer_seq == 5, 5)  # type: ignore[union-attr]
    js.delete_consumer(stream, "doomed")
    t.join(15)
    assert not t.is_alive()
    msgs = result[0]
    assert isinstance(msgs, list), msgs
    assert [m.data for m in msgs] == [b"0", b"1", b"2", b"3", b"4"]
    # with nothing received the error comes
    with pytest.raises(errors.ConsumerNotFoundError):
        psub.fetch(1, timeout=2)


def test_auto_ack_sends_nothing_for_an_ack_none_consumer(
    nc: natsync.Client, js: JetStream, stream: str
) -> None:
    acks = nc.subscribe("$JS.ACK.>")
    nc.flush()
    second = threading.Event()
    seen: list[bytes] = []

    def cb(msg: natsync.Msg) -> None:
        seen.append(msg.data)
        if len(seen) == 2:
            second.set()  # the auto-ack of the first (if any) was published before this

    cfg = ConsumerConfig(ack_policy=AckPolicy.NONE)
    sub = js.subscribe(f"{stream}.>", cb=cb, config=cfg)
    _publish(js, f"{stream}.a", 2)
    assert second.wait(5)
    nc.publish("$JS.ACK.sentinel", b"end")
    nc.flush()
    first = acks.next_msg(timeout=5)
    assert (first.subject, first.data) == ("$JS.ACK.sentinel", b"end")
    sub.unsubscribe()
    acks.unsubscribe()


def test_auto_ack_still_acks_an_explicit_consumer(
    nc: natsync.Client, js: JetStream, stream: str
) -> None:
    acks = nc.subscribe(f"$JS.ACK.{stream}.>")
    nc.flush()
    sub = js.subscribe(f"{stream}.>", cb=lambda m: None)
    _publish(js, f"{stream}.a", 1)
    assert acks.next_msg(timeout=5).data == b"+ACK"
    sub.unsubscribe()


def test_second_unsubscribe_of_a_push_subscription_raises(js: JetStream, stream: str) -> None:
    sub = js.subscribe(f"{stream}.>")
    name = sub.consumer
    sub.unsubscribe()
    with pytest.raises(natsync.BadSubscriptionError):
        sub.unsubscribe()
    with pytest.raises(errors.NotFoundError):  # the ephemeral is gone all the same
        js.consumer_info(stream, name)
    with js.subscribe(f"{stream}.>") as s2:
        s2.unsubscribe()  # leaving the block after this is fine


# --- fetch -------------------------------------------------------------------------------------


def test_fetch_returns_what_is_there_without_waiting_for_a_full_batch(
    js: JetStream, stream: str
) -> None:
    _publish(js, f"{stream}.a", 3)
    psub = js.pull_subscribe(f"{stream}.>", durable="quick")
    start = time.monotonic()
    msgs = psub.fetch(10, timeout=30)
    elapsed = time.monotonic() - start
    assert [m.data for m in msgs] == [b"0", b"1", b"2"]
    assert elapsed < 15  # not the request's 30 s expiry (generous: a loaded machine)
    for m in msgs:
        m.ack()
    # nothing there: the fetch waits, and returns as soon as its batch is full
    timer = threading.Timer(0.3, lambda: _publish(js, f"{stream}.a", 2, 3))
    timer.start()
    start = time.monotonic()
    later = psub.fetch(2, timeout=30)
    assert [m.data for m in later] == [b"3", b"4"]
    assert time.monotonic() - start < 15
    timer.join(5)


def test_fetch_no_wait(js: JetStream, stream: str) -> None:
    psub = js.pull_subscribe(f"{stream}.>", durable="nw")
    assert psub.fetch(5, timeout=5, no_wait=True) == []  # nats.go FetchNoWait: empty
    _publish(js, f"{stream}.a", 7)
    first = psub.fetch(5, timeout=5, no_wait=True)
    assert [m.data for m in first] == [b"%d" % i for i in range(5)]
    rest = psub.fetch(5, timeout=5, no_wait=True)
    assert [m.data for m in rest] == [b"5", b"6"]
    for m in first + rest:
        m.ack()


def test_fetch_exceeded_max_waiting(js: JetStream, stream: str) -> None:
    js.add_consumer(stream, durable_name="mw", max_waiting=1)
    a = js.pull_subscribe_bind("mw", stream)
    b = js.pull_subscribe_bind("mw", stream)
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(a.fetch(1, timeout=5)))
    t.start()
    assert wait_until(lambda: (js.consumer_info(stream, "mw").num_waiting or 0) >= 1, 5)
    start = time.monotonic()
    with pytest.raises(errors.BadRequestError, match="MaxWaiting") as ei:
        b.fetch(1, timeout=10)  # the waiting pull is refused: an error at once (nats.go)
    assert ei.value.code == 409 and "max_waiting" in str(ei.value)
    assert time.monotonic() - start < 5
    js.publish(f"{stream}.a", b"x")
    t.join(10)
    assert [m.data for m in result[0]] == [b"x"]  # type: ignore[attr-defined]


def test_messages_iterator_rides_over_max_waiting(js: JetStream, stream: str) -> None:
    # nats.go Consume: 409 Exceeded MaxWaiting is not terminal
    js.add_consumer(stream, durable_name="mwi", max_waiting=1)
    holder = js.pull_subscribe_bind("mwi", stream)
    result: list[object] = []

    def hold() -> None:
        try:
            result.append(holder.fetch(1, timeout=3))
        except natsync.TimeoutError as e:
            result.append(e)

    t = threading.Thread(target=hold)
    t.start()
    assert wait_until(lambda: (js.consumer_info(stream, "mwi").num_waiting or 0) >= 1, 5)
    it_sub = js.pull_subscribe_bind("mwi", stream)
    got: list[bytes] = []

    def consume() -> None:
        for m in it_sub.messages(batch=10):
            got.append(m.data)
            m.ack()
            if len(got) == 3:
                return

    def consume_safely() -> None:
        try:
            consume()
        except BaseException as e:  # noqa: BLE001 - checked below
            got.append(repr(e).encode())

    c = threading.Thread(target=consume_safely)
    c.start()
    t.join(10)  # the holder's pull expires; the iterator, refused meanwhile, goes on
    _publish(js, f"{stream}.a", 4)
    c.join(15)
    assert not c.is_alive()
    taken = [m.data for m in result[0]] if isinstance(result[0], list) else []
    assert len(got) == 3 and set(got).isdisjoint(taken), got
    it_sub.unsubscribe()


# --- consumer management -----------------------------------------------------------------------


def test_extended_create_subject_and_named_ephemeral(
    nc: natsync.Client, js: JetStream, stream: str, js_server: NATSServer
) -> None:
    with natsync.connect(js_server.url) as spy:
        creates = spy.subscribe("$JS.API.CONSUMER.CREATE.>")
        spy.flush()
        info = js.add_consumer(stream, filter_subject=f"{stream}.orders")
        subject = creates.next_msg(timeout=5).subject
        assert subject == f"$JS.API.CONSUMER.CREATE.{stream}.{info.name}.{stream}.orders"
        assert info.config.durable_name is None and info.name  # ephemeral, our name
        info2 = js.add_consumer(stream, name="eph", filter_subjects=[f"{stream}.a", f"{stream}.b"])
        assert creates.next_msg(timeout=5).subject == f"$JS.API.CONSUMER.CREATE.{stream}.eph"
        assert info2.name == "eph" and info2.config.durable_name is None
    assert sorted(js.consumer_names(stream)) == sorted([info.name, "eph"])
    assert sorted(js.consumer_names(stream)) == sorted(c.name for c in js.consumers_info(stream))
    psub = js.pull_subscribe(f"{stream}.>")  # an ephemeral pull consumer, named by us
    assert psub.consumer in js.consumer_names(stream)


def test_consumer_names_pages_and_empty(js: JetStream, stream: str) -> None:
    assert js.consumer_names(stream) == []
    for i in range(3):
        js.add_consumer(stream, durable_name=f"d{i}")
    assert sorted(js.consumer_names(stream)) == ["d0", "d1", "d2"]
    with pytest.raises(ValueError):
        js.consumer_names("bad.name")


def test_pause_and_resume_consumer(js: JetStream, stream: str) -> None:
    js.add_consumer(stream, durable_name="p")
    psub = js.pull_subscribe_bind("p", stream)
    until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
    res = js.pause_consumer(stream, "p", until)
    assert res.paused is True and res.pause_until is not None
    assert abs((res.pause_until - until).total_seconds()) < 1
    info = js.consumer_info(stream, "p")
    assert info.paused is True and (info.pause_remaining or 0) > 60
    assert info.config.pause_until is not None
    js.publish(f"{stream}.a", b"held")
    with pytest.raises(natsync.TimeoutError):
        psub.fetch(1, timeout=1)  # paused: nothing is delivered
    res = js.resume_consumer(stream, "p")
    assert res.paused is False
    assert [m.data for m in psub.fetch(1, timeout=5)] == [b"held"]
    # paused from creation (pause_until in the config)
    info = js.add_consumer(stream, durable_name="p2", pause_until=until)
    assert info.paused is True
    with pytest.raises(errors.NotFoundError):
        js.pause_consumer(stream, "nope", until)
    with pytest.raises(ValueError, match="aware"):
        js.pause_consumer(stream, "p", datetime.datetime.now())


def test_subscribe_bind(js: JetStream, stream: str) -> None:
    info = js.add_consumer(
        stream, durable_name="pushy", deliver_subject=f"push.{stream}", deliver_group="grp"
    )
    got = threading.Event()
    data: list[bytes] = []

    def cb(msg: natsync.Msg) -> None:
        data.append(msg.data)
        got.set()

    # nats-py's call: the consumer's own config says where its messages go
    sub = js.subscribe_bind(stream, config=info.config, consumer="pushy", cb=cb)
    assert sub.subject == f"push.{stream}" and sub.queue == "grp"
    js.publish(f"{stream}.a", b"one")
    assert got.wait(5) and data == [b"one"]
    sub.unsubscribe()
    assert js.consumer_info(stream, "pushy").name == "pushy"  # bind never deletes
    # by name only: looked up
    sub2 = js.subscribe_bind(stream, consumer="pushy")
    js.publish(f"{stream}.a", b"two")
    m = sub2.next_msg(timeout=5)
    assert m.data == b"two"
    m.ack()
    sub2.unsubscribe()
    js.add_consumer(stream, durable_name="puller")
    with pytest.raises(errors.JetStreamError, match="pull consumer"):
        js.subscribe_bind(stream, consumer="puller")
    with pytest.raises(errors.NotFoundError):
        js.subscribe_bind(stream, consumer="missing")
    with pytest.raises(ValueError):
        js.subscribe_bind(stream)


def test_term_with_reason(nc: natsync.Client, js: JetStream, stream: str) -> None:
    adv = nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.t")
    nc.flush()
    psub = js.pull_subscribe(f"{stream}.>", durable="t")
    js.publish(f"{stream}.a", b"bad")
    msg = psub.fetch(1, timeout=5)[0]
    with pytest.raises(ValueError):
        msg.term(reason="two\nlines")
    msg.term(reason="cannot parse")
    event = json.loads(adv.next_msg(timeout=5).data)
    assert event["reason"] == "cannot parse"
    with pytest.raises(errors.MsgAlreadyAckdError):
        msg.term(reason="again")


# --- priority groups ---------------------------------------------------------------------------


def test_priority_group_pinned_client_and_unpin(js: JetStream, stream: str) -> None:
    js.add_consumer(
        stream,
        durable_name="pin",
        priority_groups=["A"],
        priority_policy=PriorityPolicy.PINNED_CLIENT,
        priority_timeout=30,
    )
    a = js.pull_subscribe_bind("pin", stream)
    b = js.pull_subscribe_bind("pin", stream)
    with pytest.raises(ValueError, match="group"):
        a.fetch(1, timeout=1)  # a priority consumer needs group=
    with pytest.raises(ValueError, match="not one of"):
        a.fetch(1, timeout=1, group="B")
    _publish(js, f"{stream}.a", 4)
    first = a.fetch(2, timeout=5, group="A")
    assert [m.data for m in first] == [b"0", b"1"]
    pin = a.pin_id
    assert pin
    info = js.consumer_info(stream, "pin")
    assert info.priority_groups and info.priority_groups[0].pinned_client_id == pin
    for m in first:
        m.ack()
    # b is not pinned: it gets nothing while a holds the pin
    with pytest.raises(natsync.TimeoutError):
        b.fetch(1, timeout=1, group="A")
    more = a.fetch(1, timeout=5, group="A")
    assert [m.data for m in more] == [b"2"] and a.pin_id == pin
    more[0].ack()
    # unpin: the next pull of any client is pinned; a's old pin id is refused (423)
    assert js.unpin_consumer(stream, "pin", "A") is True
    got = b.fetch(1, timeout=5, group="A")
    assert [m.data for m in got] == [b"3"] and b.pin_id and b.pin_id != pin
    got[0].ack()
    js.publish(f"{stream}.a", b"4")
    with pytest.raises(errors.APIError) as ei:
        a.fetch(1, timeout=5, group="A")
    assert ei.value.code == 423 and a.pin_id is None  # reset: a may be pinned again later
    with pytest.raises(errors.APIError):
        js.unpin_consumer(stream, "pin", "nogroup")


def test_priority_group_overflow_min_pending(js: JetStream, stream: str) -> None:
    js.add_consumer(
        stream, durable_name="ovf", priority_groups=["jobs"], priority_policy=PriorityPolicy.OVERFLOW
    )
    psub = js.pull_subscribe_bind("ovf", stream)
    _publish(js, f"{stream}.a", 3)
    # served only while more than min_pending messages wait
    with pytest.raises(natsync.TimeoutError):
        psub.fetch(1, timeout=1, group="jobs", min_pending=10)
    _publish(js, f"{stream}.a", 10, 3)
    msgs = psub.fetch(2, timeout=5, group="jobs", min_pending=10)
    assert [m.data for m in msgs] == [b"0", b"1"]
    assert psub.pin_id is None  # no pinning under overflow
    with pytest.raises(ValueError):
        psub.fetch(1, timeout=1, group="jobs", min_pending=0)


def test_priority_group_messages_iterator_keeps_the_pin(js: JetStream, stream: str) -> None:
    js.add_consumer(
        stream,
        durable_name="pit",
        priority_groups=["A"],
        priority_policy=PriorityPolicy.PINNED_CLIENT,
    )
    psub = js.pull_subscribe_bind("pit", stream)
    _publish(js, f"{stream}.a", 5)
    got = []
    for m in psub.messages(batch=2, group="A"):
        got.append(m.data)
        m.ack()
        if len(got) == 5:
            break
    assert got == [b"%d" % i for i in range(5)] and psub.pin_id
    with pytest.raises(ValueError):
        psub.messages(group="B")
    plain = js.pull_subscribe(f"{stream}.>", durable="plain")
    with pytest.raises(ValueError, match="no priority groups"):
        plain.fetch(1, timeout=1, group="A")


# --- not connected ----------------------------------------------------------------------------


def test_not_connected_error_while_reconnecting() -> None:
    server = NATSServer(jetstream=True)
    server.start()
    disconnected = threading.Event()
    nc = natsync.connect(
        server.url,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.2,
        disconnected_cb=lambda: disconnected.set(),
    )
    try:
        js = nc.jetstream(timeout=5)
        js.add_stream(name="NC", subjects=["nc.>"], storage=StorageType.MEMORY)
        psub = js.pull_subscribe("nc.>", durable="w")
        kv = js.create_key_value(bucket="ncb")
        server.stop()
        assert disconnected.wait(10)
        calls = [
            lambda: js.stream_info("NC"),
            lambda: js.publish("nc.a", b"x"),
            lambda: js.add_consumer("NC", durable_name="x"),
            lambda: psub.fetch(1, timeout=5),
            lambda: kv.get("k"),
            lambda: nc.request("svc", b"", timeout=5),
        ]
        for call in calls:
            start = time.monotonic()
            with pytest.raises(natsync.NotConnectedError) as ei:
                call()
            assert time.monotonic() - start < 3  # at once, not after the 5 s timeout
            err = ei.value
            assert isinstance(err, natsync.TimeoutError)  # old handlers still catch it
            assert "not connected (reconnecting)" in str(err)
            assert "publish to" not in str(err) and "$JS.API.>" not in str(err)
        assert natsync.errors.NotConnectedError is natsync.NotConnectedError
    finally:
        nc.close()
        server.stop()


def test_ten_threads_pull_subscribe_one_durable(js: JetStream, stream: str) -> None:
    barrier = threading.Barrier(10)
    psubs: list[object] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            barrier.wait(10)
            p = js.pull_subscribe(f"{stream}.>", durable="pw")
            with lock:
                psubs.append(p)
        except BaseException as e:  # noqa: BLE001 - reported below
            with lock:
                failures.append(e)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == [] and len(psubs) == 10
    assert js.consumer_names(stream) == ["pw"]


# --- pure helpers ------------------------------------------------------------------------------


def test_server_version_and_filter_token_checks() -> None:
    from natsync.js import _proto

    assert _proto.server_at_least("2.9.0", (2, 9, 0))
    assert _proto.server_at_least("2.12.1", (2, 9, 0))
    assert _proto.server_at_least("2.11.0-RC.1", (2, 11, 0))
    assert not _proto.server_at_least("2.8.4", (2, 9, 0))
    assert not _proto.server_at_least("1.99", (2, 9, 0))
    assert _proto.server_at_least(None, (2, 9, 0))  # unknown: assume a current server
    assert _proto.server_at_least("dev", (2, 9, 0))
    assert _proto.subject_token_ok("orders.*.>")
    for bad in ("", "a..b", ".a", "a.", "a b"):
        assert not _proto.subject_token_ok(bad)
    names = {_proto.consumer_name() for _ in range(100)}
    assert len(names) == 100
    for n in names:
        _proto.check_name("consumer", n)

"""JetStream under concurrency and faults, against a real ``nats-server -js``: the
``publish_async`` window (deadlines kept per future, ``nc.drain()`` waiting for acks,
write back-pressure against a stalled server, completion against ``cancel()``, no
overshoot of the window) and the ordered consumer's recovery (short polls, a deleted
stream).  Each test is a scenario of issue 15 (reproducers 03, 05, 06, 07) or one of
issue 17's ordered-consumer bugs, and failed on the code before the fix."""

from __future__ import annotations

import itertools
import linecache
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, InvalidStateError
from types import FrameType
from typing import Any

import pytest
from jskit import js_server, memory_stream, nc
from recorder import Recorder, wait_until

import natsync
from natsync.js import JetStream, api
from natsync.js._async import AckFuture
from natsync.js.errors import StreamNotFoundError
from natsync.testing import NATSServer

__all__ = ["js_server", "nc"]

_names = itertools.count(1)


@pytest.fixture
def stream(nc: natsync.Client) -> Iterator[str]:
    """A fresh memory stream named R<n> on subjects r<n>.>."""
    name = f"R{next(_names)}"
    with memory_stream(nc.jetstream(), name, [f"{name.lower()}.>"]):
        yield name


def _subj(stream: str, tail: str = "x") -> str:
    return f"{stream.lower()}.{tail}"


def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


# ------------------------------------------------------------------ publish_async deadlines


def test_publish_async_future_fails_at_its_deadline_while_other_acks_arrive(
    nc: natsync.Client, stream: str
) -> None:
    """Scenario 3: a lost ack's future fails at its own timeout even though other acks
    keep arriving (before: only when the ack thread idled, or every 1,000 acks)."""
    js = nc.jetstream()
    nc.subscribe("lost.ack")  # interest that never answers: the ack never comes
    nc.flush()
    failed = threading.Event()
    lost = js.publish_async("lost.ack", b"x", timeout=0.5)
    lost.add_done_callback(lambda f: failed.set())
    oks: list[Future[api.PubAck]] = []
    t0 = time.monotonic()
    # a steady trickle of acks (never an idle ack thread) for up to 5 s
    while not failed.is_set() and time.monotonic() - t0 < 5.0:
        oks.append(js.publish_async(_subj(stream), b"y"))
        failed.wait(0.02)
    assert failed.is_set(), "the future with timeout=0.5 s was still pending after 5 s of other acks"
    with pytest.raises(natsync.TimeoutError, match="lost.ack"):
        lost.result(0)
    for f in oks:
        assert isinstance(f.result(timeout=10), api.PubAck)
    assert js.publish_async_pending() == 0


# ------------------------------------------------------------------ drain and acks


def test_drain_waits_for_publish_async_acks(js_server: NATSServer, stream: str) -> None:
    """Scenario 6: nc.drain() right after many publish_async: every future whose
    message was stored completes with its PubAck (before: most failed with
    ConnectionClosedError although the stream held every message)."""
    nc = natsync.connect(js_server.url)
    js = nc.jetstream()
    n = 3000
    futs = [js.publish_async(_subj(stream), b"x") for _ in range(n)]
    nc.drain(timeout=20)
    failed = [f.exception(timeout=10) for f in futs]
    failed = [e for e in failed if e is not None]
    with natsync.connect(js_server.url) as nc2:
        stored = nc2.jetstream().stream_info(stream).state.messages
    assert stored == n
    assert failed == []
    assert [f.result().seq for f in futs] == list(range(1, n + 1))
    assert nc._drain_hooks == []  # the publisher unregistered itself


def test_drain_fails_only_the_unacknowledged_and_says_so(js_server: NATSServer, stream: str) -> None:
    """What drain cannot wait for fails, with an error naming the subject and saying
    that the ack never came; drain keeps its timeout."""
    nc = natsync.connect(js_server.url)
    js = nc.jetstream()
    silent = nc.subscribe("silent.drain")  # interest that never answers
    nc.flush()
    lost = js.publish_async("silent.drain", b"x", timeout=60)
    ok = js.publish_async(_subj(stream), b"y")
    t0 = time.monotonic()
    try:
        nc.drain(timeout=1.0)
    except natsync.TimeoutError:
        pass  # (the deadline passed while waiting for the ack: drain may say so)
    assert time.monotonic() - t0 < 5.0  # (generous: bounded by the drain's 1 s)
    assert nc.is_closed and not silent.is_valid
    assert isinstance(ok.result(timeout=5), api.PubAck)
    err = lost.exception(timeout=5)
    assert isinstance(err, natsync.ConnectionClosedError)
    assert "silent.drain" in str(err) and "no acknowledgement" in str(err) and "drained" in str(err)
    with pytest.raises(natsync.ConnectionClosedError):
        js.publish_async(_subj(stream), b"z")


# ------------------------------------------------------------------ back-pressure


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs SIGSTOP and /proc")
def test_publish_async_write_backpressure_against_a_stalled_server() -> None:
    """Scenario 7: against a server that stopped reading, publish_async stops accepting
    after about what publish() would queue (before: 200 x 128 KiB = 25 MiB were
    accepted at once); everything goes out and is acknowledged once it reads again."""
    size, n = 128 * 1024, 200
    with NATSServer(jetstream=True) as srv:
        pid = srv.pid
        assert pid is not None
        nc = natsync.connect(srv.url, flusher_timeout=60)
        try:
            js = nc.jetstream(timeout=60)
            js.add_stream(name="BP", subjects=["bp.>"], storage=api.StorageType.MEMORY, max_bytes=64 << 20)
            nc.flush()
            payload = bytes(size)
            futs: list[Future[api.PubAck]] = []

            def produce() -> None:
                for _ in range(n):
                    futs.append(js.publish_async("bp.a", payload))

            os.kill(pid, signal.SIGSTOP)
            try:
                assert wait_until(lambda: _process_state(pid) == "T")
                producer = threading.Thread(target=produce, name="test-producer")
                producer.start()
                # it has to block: the server reads nothing
                producer.join(3.0)
                assert producer.is_alive(), f"all {n} x 128 KiB accepted by a stalled server"
                accepted = len(futs)
                # what the kernel's socket buffers hold plus publish()'s ~1 MiB of room
                assert accepted * size < 16 << 20, accepted
            finally:
                os.kill(pid, signal.SIGCONT)
            producer.join(60)
            assert not producer.is_alive()
            assert [f.result(timeout=30).seq for f in futs] == list(range(1, n + 1))
        finally:
            os.kill(pid, signal.SIGCONT)
            nc.close()


# ------------------------------------------------------------------ the window and the futures


def test_publish_async_window_never_overshoots(nc: natsync.Client, stream: str) -> None:
    """Many threads publishing through a small window: the check and the insert are one
    step, so never more than max_pending acks are outstanding (before: every publisher
    woken together inserted, and the window overshot by up to the number of threads)."""
    max_pending = 4
    js = nc.jetstream(publish_async_max_pending=max_pending)
    threads, each = 16, 150
    barrier = threading.Barrier(threads)
    most: list[int] = []
    futs: list[Future[api.PubAck]] = []
    lock = threading.Lock()
    old = sys.getswitchinterval()

    def produce() -> None:
        mine = []
        high = 0
        barrier.wait()
        for _ in range(each):
            mine.append(js.publish_async(_subj(stream), b"x", timeout=30))
            high = max(high, js.publish_async_pending())
        with lock:
            most.append(high)
            futs.extend(mine)

    sys.setswitchinterval(1e-5)
    try:
        ts = [threading.Thread(target=produce) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
    finally:
        sys.setswitchinterval(old)
    assert len(futs) == threads * each
    assert max(most) <= max_pending, most
    for f in futs:
        f.result(timeout=30)


def test_publish_async_completed_means_every_future_is_done(
    nc: natsync.Client, stream: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """publish_async_completed() returns only when every future is done (before: it
    returned once the acks were taken off the window, while the ack thread was still
    completing their futures).  Decoding each ack is slowed down to widen that gap."""
    import natsync.js._async as async_module

    real = async_module.pub_ack

    def slow_pub_ack(data: bytes) -> api.PubAck:
        time.sleep(0.002)
        return real(data)

    monkeypatch.setattr(async_module, "pub_ack", slow_pub_ack)
    js = nc.jetstream()
    for _ in range(20):
        futs = [js.publish_async(_subj(stream), b"x") for _ in range(20)]
        js.publish_async_completed(timeout=10)
        assert all(f.done() for f in futs)


def test_ackfuture_completion_against_cancel_is_one_step() -> None:
    """A completion that interleaves with add_done_callback() + cancel() on another
    thread: the future ends once, its callback runs once, CANCELLED is never
    overwritten.  The interleaving is forced with a line tracer: the completing thread
    stops right after its "still pending?" check until the other thread is done (or
    0.5 s, when that thread waits for a guard the completer holds)."""
    fut = AckFuture()
    calls: list[Future[Any]] = []
    other_done = threading.Event()
    paused = threading.Event()

    def other() -> None:
        paused.wait(5)
        fut.add_done_callback(calls.append)
        fut.cancel()
        other_done.set()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "call":
            return tracer if isinstance(frame.f_locals.get("self"), AckFuture) else None
        if event == "line" and not paused.is_set():
            line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            if line == "self._result = result":  # past the check, before the state is set
                paused.set()
                other_done.wait(0.5)
        return tracer

    t = threading.Thread(target=other)
    t.start()
    raised = False
    sys.settrace(tracer)
    try:
        try:
            fut.set_result(api.PubAck("S", 1))
        except InvalidStateError:
            raised = True
    finally:
        sys.settrace(None)
    t.join(5)
    assert paused.is_set(), "the tracer never paused the completion (has the code changed?)"
    assert len(calls) == 1, f"done callback ran {len(calls)} times"
    if fut.cancelled():
        assert raised  # the completion lost: it said so, and changed nothing
    else:
        assert not raised and fut.result(0) == api.PubAck("S", 1)


# ------------------------------------------------------------------ ordered consumer


def test_ordered_consumer_recovers_when_polled_with_short_timeouts(
    nc: natsync.Client, js_server: NATSServer, stream: str
) -> None:
    """Scenario 5 / issue 17: read with next_msg(timeout) shorter than twice the
    heartbeat, a consumer deleted on the server is noticed and recreated (before: the
    silence was measured from the start of each call, so never)."""
    js = nc.jetstream()
    for i in range(3):
        js.publish(_subj(stream), b"%d" % i)
    oc = js.subscribe(_subj(stream, ">"), ordered_consumer=True, idle_heartbeat=0.5)
    try:
        got = [int(oc.next_msg(timeout=5).data) for _ in range(3)]
        with natsync.connect(js_server.url) as admin:
            ajs = admin.jetstream()
            ajs.delete_consumer(stream, oc.consumer)
            for i in range(3, 6):
                ajs.publish(_subj(stream), b"%d" % i)
        t0 = time.monotonic()
        while len(got) < 6 and time.monotonic() - t0 < 15:
            try:
                got.append(int(oc.next_msg(timeout=0.3).data))
            except natsync.TimeoutError:
                pass
        assert got == list(range(6))
        assert oc.resets >= 1
    finally:
        oc.stop()


def test_ordered_consumer_of_a_deleted_stream_ends_with_stream_not_found(js_server: NATSServer) -> None:
    """Issue 17: the stream is deleted under an ordered consumer: the reader gets
    StreamNotFoundError (also on every later read; iteration raises it) and error_cb
    gets it once, where before it retried for ever and the reader saw only timeouts."""
    rec = Recorder()
    nc = natsync.connect(js_server.url, **rec.options())
    try:
        js = nc.jetstream()
        js.add_stream(name="GONE", subjects=["gone.>"], storage=api.StorageType.MEMORY)
        js.publish("gone.a", b"1")
        oc = js.subscribe("gone.>", ordered_consumer=True, idle_heartbeat=0.5)
        assert oc.next_msg(timeout=5).data == b"1"
        js.delete_stream("GONE")
        t0 = time.monotonic()
        err: BaseException | None = None
        while err is None and time.monotonic() - t0 < 15:
            try:
                oc.next_msg(timeout=0.3)
            except natsync.TimeoutError:
                continue
            except natsync.NatsError as e:
                err = e
        assert isinstance(err, StreamNotFoundError), err
        assert "GONE" in str(err)
        with pytest.raises(StreamNotFoundError):
            oc.next_msg(timeout=0.1)
        with pytest.raises(StreamNotFoundError):
            list(oc)
        assert not oc.is_valid
        assert rec.wait(lambda: bool(rec.errors_of(StreamNotFoundError)))
        oc.stop()
        assert len(rec.errors_of(StreamNotFoundError)) == 1
    finally:
        nc.close()


def test_ordered_consumer_callback_thread_ends_when_its_stream_is_deleted(js_server: NATSServer) -> None:
    rec = Recorder()
    nc = natsync.connect(js_server.url, **rec.options())
    try:
        js = nc.jetstream()
        js.add_stream(name="GONE2", subjects=["gone2.>"], storage=api.StorageType.MEMORY)
        got = threading.Event()
        oc = js.subscribe("gone2.>", ordered_consumer=True, idle_heartbeat=0.5, cb=lambda m: got.set())
        js.publish("gone2.a", b"1")
        assert got.wait(5)
        js.delete_stream("GONE2")
        assert rec.wait(lambda: bool(rec.errors_of(StreamNotFoundError)), timeout=15)
        thread = oc._thread
        assert thread is not None
        thread.join(5)
        assert not thread.is_alive() and not oc.is_valid
        oc.stop()
    finally:
        nc.close()


def test_kv_watcher_recovers_with_short_polls_and_ends_with_its_bucket(
    nc: natsync.Client, js_server: NATSServer
) -> None:
    """The Key/Value watcher sits on the ordered consumer: polled with short timeouts
    it recovers from a deleted consumer (default 5 s heartbeat: within about 10 s),
    and a deleted bucket ends it with StreamNotFoundError."""
    js: JetStream = nc.jetstream()
    kv = js.create_key_value(bucket="RACEW", storage=api.StorageType.MEMORY)
    kv.put("a", b"1")
    w = kv.watch()
    try:
        first = w.updates(timeout=5)
        assert first is not None and first.value == b"1"
        assert w.updates(timeout=5) is None  # the end of the initial values
        with natsync.connect(js_server.url) as admin:
            ajs = admin.jetstream()
            ajs.delete_consumer("KV_RACEW", w._sub.consumer)
            admin.jetstream().key_value("RACEW").put("b", b"2")
        entry = None
        t0 = time.monotonic()
        while entry is None and time.monotonic() - t0 < 25:
            try:
                entry = w.updates(timeout=0.5)
            except natsync.TimeoutError:
                pass
        assert entry is not None and entry.key == "b", "the watcher never recovered"
        js.delete_key_value("RACEW")
        err: BaseException | None = None
        t0 = time.monotonic()
        while err is None and time.monotonic() - t0 < 25:
            try:
                w.updates(timeout=0.5)
            except natsync.TimeoutError:
                continue
            except natsync.NatsError as e:
                err = e
        assert isinstance(err, StreamNotFoundError), err
    finally:
        w.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_publish_async_after_fork_never_waits_on_the_parents_window(
    js_server: NATSServer, stream: str
) -> None:
    """A lazy client's JetStream context used for publish_async, then os.fork(): in the
    child that context's window (its lock, threads and ack subscription belong to the
    parent) refuses at once with an error naming the fork, and a new context works
    (before: the child's future never completed)."""
    from test_fork import run_in_child

    nc = natsync.connect(js_server.url, lazy=True)
    try:
        js = nc.jetstream()
        assert js.publish_async(_subj(stream), b"parent").result(timeout=10).seq == 1

        def child() -> dict[str, Any]:
            try:
                try:
                    js.publish_async(_subj(stream), b"old context").result(timeout=5)
                    old = "returned"
                except natsync.ConnectionClosedError as e:
                    old = f"closed: {e}"
                ack = nc.jetstream().publish_async(_subj(stream), b"child").result(timeout=10)
                return {"old": old, "seq": ack.seq}
            finally:
                nc.close()

        out = run_in_child(child)
        assert out["old"].startswith("closed:") and "fork" in out["old"], out
        assert out["seq"] == 2
        assert js.publish_async(_subj(stream), b"parent again").result(timeout=10).seq == 3
    finally:
        nc.close()


def test_publish_async_refusals_leave_nothing_outstanding(js_server: NATSServer, stream: str) -> None:
    """Bad input raises before anything is sent; while reconnecting with a full
    reconnect buffer the future fails with OutboundBufferFullError (the message was
    not sent: a retry later may work); neither holds a window slot."""
    from proxy import TCPProxy

    with TCPProxy("127.0.0.1", js_server.port) as proxy:
        nc = natsync.connect(proxy.url, reconnect_time_wait=0.05, reconnect_buffer_size=1024)
        try:
            js = nc.jetstream()
            assert js.publish_async(_subj(stream), b"a").result(timeout=10).seq == 1
            with pytest.raises(natsync.BadSubjectError):
                js.publish_async("bad subject", b"x")
            assert js.publish_async_pending() == 0
            proxy.refuse(True)
            proxy.cut()
            assert wait_until(lambda: not nc.is_connected)
            full = js.publish_async(_subj(stream), bytes(4096))
            with pytest.raises(natsync.OutboundBufferFullError):
                full.result(timeout=0)
            assert js.publish_async_pending() == 0
            buffered = js.publish_async(_subj(stream), b"b", timeout=30)  # fits: sent on reconnect
            proxy.refuse(False)
            assert buffered.result(timeout=20).seq == 2
        finally:
            nc.close()

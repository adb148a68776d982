"""Core client behaviour against a real nats-server: pub/sub, request/reply, headers,
lifecycle, drain, slow consumers, concurrency (API.md: Publishing, Subscribing,
Request / reply, Messages, Lifecycle and introspection)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import natsync
from natsync import (
    BadSubscriptionError,
    ConnectionClosedError,
    ConnectionDrainingError,
    Headers,
    MaxPayloadError,
    NatsError,
    NoRespondersError,
    SlowConsumerError,
)
from natsync.testing import NATSServer

# --------------------------------------------------------------------------- helpers


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait (bounded) until *pred()* holds; re-checks every few ms."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not pred():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        tick.wait(0.005)


class Runner:
    """Run *fn* on a thread; ``result(timeout)`` joins it and returns or re-raises."""

    def __init__(self, fn: Callable[[], Any], name: str = "test-runner") -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self.started = threading.Event()

        def run() -> None:
            self.started.set()
            try:
                self._value = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised in result()
                self._error = e

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 15.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "thread still blocked"
        if self._error is not None:
            raise self._error
        return self._value


class Errors:
    """An error_cb that records errors and the thread that delivered them."""

    def __init__(self) -> None:
        self.items: list[NatsError] = []
        self.threads: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, err: NatsError) -> None:
        with self._cond:
            self.items.append(err)
            self.threads.append(threading.current_thread().name)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[NatsError]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.items) >= n, timeout)
            assert ok, f"expected {n} errors: {self.items}"
            return list(self.items)

    def of(self, kind: type[NatsError]) -> list[NatsError]:
        with self._cond:
            return [e for e in self.items if isinstance(e, kind)]


def drain_pending(sub: natsync.Subscription) -> list[natsync.Msg]:
    """Take every message already pending on a sync subscription."""
    return [sub.next_msg(timeout=1) for _ in range(sub.pending_msgs)]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as srv:
        yield srv


@pytest.fixture
def nc(server: NATSServer) -> Iterator[natsync.Client]:
    with natsync.connect(server.url) as client:
        yield client


@pytest.fixture
def nc2(server: NATSServer) -> Iterator[natsync.Client]:
    with natsync.connect(server.url) as client:
        yield client


# --------------------------------------------------------------------------- pub/sub


def test_sync_subscribe_next_msg(nc: natsync.Client) -> None:
    sub = nc.subscribe("sync.one")
    nc.publish("sync.one", b"hello")
    msg = sub.next_msg(timeout=5)
    assert isinstance(msg, natsync.Msg)
    assert (msg.subject, msg.data, msg.reply, msg.headers) == ("sync.one", b"hello", None, None)
    assert msg.sid == sub.sid
    assert sub.delivered == 1 and sub.pending_msgs == 0


def test_next_msg_timeout_when_nothing(nc: natsync.Client) -> None:
    sub = nc.subscribe("sync.nothing")
    nc.flush()
    with pytest.raises(natsync.TimeoutError) as info:
        sub.next_msg(timeout=0.2)
    assert isinstance(info.value, TimeoutError)  # also the builtin
    assert isinstance(info.value, NatsError)


def test_iteration_ends_on_unsubscribe_from_other_thread(nc: natsync.Client) -> None:
    sub = nc.subscribe("iter.unsub")
    got: list[bytes] = []
    three = threading.Event()

    def consume() -> str:
        for msg in sub:
            got.append(msg.data)
            if len(got) == 3:
                three.set()
        return "ended"

    r = Runner(consume)
    for i in range(3):
        nc.publish("iter.unsub", b"%d" % i)
    nc.flush()
    assert three.wait(10)
    sub.unsubscribe()
    assert r.result() == "ended"
    assert got == [b"0", b"1", b"2"]
    assert not sub.is_valid
    with pytest.raises(BadSubscriptionError):
        sub.next_msg(timeout=1)


def test_iteration_ends_on_auto_unsubscribe_limit(nc: natsync.Client) -> None:
    sub = nc.subscribe("iter.limit")
    sub.unsubscribe(limit=3)
    for i in range(6):
        nc.publish("iter.limit", b"%d" % i)
    nc.flush()
    got = Runner(lambda: [m.data for m in sub]).result()
    assert got == [b"0", b"1", b"2"]
    assert not sub.is_valid


@pytest.mark.parametrize("kind", ["sync", "callback"])
def test_unsubscribe_limit_delivers_exactly_n(nc: natsync.Client, kind: str) -> None:
    got: list[bytes] = []
    if kind == "callback":
        sub = nc.subscribe("limit.n", cb=lambda m: got.append(m.data))
    else:
        sub = nc.subscribe("limit.n")
    sub.unsubscribe(limit=5)
    for i in range(20):
        nc.publish("limit.n", b"%d" % i)
    nc.flush()
    if kind == "sync":
        got = [sub.next_msg(timeout=5).data for _ in range(5)]
        with pytest.raises(BadSubscriptionError):
            sub.next_msg(timeout=1)
    else:
        wait_until(lambda: len(got) >= 5 and not sub.is_valid, what="callback subscription to end")
        nc.flush()
    assert got == [b"%d" % i for i in range(5)]
    assert sub.delivered == 5 and not sub.is_valid


def test_unsubscribe_limit_counts_messages_already_received(nc: natsync.Client) -> None:
    """API.md: ``unsubscribe(limit=10)`` ends "after 10 messages in all" — counting those
    already received, and the subscription must end once the total is reached."""
    sub = nc.subscribe("limit.total")
    for i in range(3):
        nc.publish("limit.total", b"%d" % i)
    nc.flush()
    assert [sub.next_msg(timeout=5).data for _ in range(3)] == [b"0", b"1", b"2"]
    sub.unsubscribe(limit=5)
    for i in range(3, 10):
        nc.publish("limit.total", b"%d" % i)
    nc.flush()
    assert [sub.next_msg(timeout=5).data for _ in range(2)] == [b"3", b"4"]
    with pytest.raises(BadSubscriptionError):
        sub.next_msg(timeout=2)


def test_max_msgs_on_subscribe(nc: natsync.Client) -> None:
    sub = nc.subscribe("limit.maxmsgs", max_msgs=2)
    for i in range(5):
        nc.publish("limit.maxmsgs", b"%d" % i)
    nc.flush()
    assert [m.data for m in Runner(lambda: list(sub)).result()] == [b"0", b"1"]


def test_callback_subscription(nc: natsync.Client) -> None:
    got: list[natsync.Msg] = []
    done = threading.Event()

    def cb(msg: natsync.Msg) -> None:
        got.append(msg)
        if len(got) == 10:
            done.set()

    sub = nc.subscribe("cb.sub", cb=cb)
    for i in range(10):
        nc.publish("cb.sub", b"%d" % i)
    assert done.wait(10)
    assert [m.data for m in got] == [b"%d" % i for i in range(10)]  # in order
    assert sub.delivered == 10
    with pytest.raises(BadSubscriptionError):
        sub.next_msg(timeout=0.1)  # messages go to the callback


def test_queue_group_each_message_to_exactly_one(server: NATSServer, nc: natsync.Client) -> None:
    with natsync.connect(server.url) as a, natsync.connect(server.url) as b:
        sa = a.subscribe("work.q", queue="workers")
        sb = b.subscribe("work.q", queue="workers")
        assert sa.queue == "workers"
        a.flush()
        b.flush()
        n = 200
        for i in range(n):
            nc.publish("work.q", b"%d" % i)
        nc.flush()
        a.flush()
        b.flush()
        ga = [m.data for m in drain_pending(sa)]
        gb = [m.data for m in drain_pending(sb)]
    assert len(ga) + len(gb) == n
    assert set(ga).isdisjoint(gb)
    assert set(ga) | set(gb) == {b"%d" % i for i in range(n)}
    assert ga and gb  # 2**-199 chance of failing by bad luck


def test_wildcards(nc: natsync.Client) -> None:
    star = nc.subscribe("wc.*")
    full = nc.subscribe("wc.>")
    for subj in ("wc", "wc.a", "wc.b", "wc.a.b", "wc.a.b.c", "other.a"):
        nc.publish(subj, subj)
    nc.flush()
    assert [m.subject for m in drain_pending(star)] == ["wc.a", "wc.b"]
    assert [m.subject for m in drain_pending(full)] == ["wc.a", "wc.b", "wc.a.b", "wc.a.b.c"]


def test_payload_types(nc: natsync.Client) -> None:
    sub = nc.subscribe("payload.types")
    nc.publish("payload.types", "héllo ✓")
    nc.publish("payload.types", bytearray(b"ba"))
    nc.publish("payload.types", memoryview(b"xxmvxx")[2:4])
    nc.publish("payload.types", b"")
    nc.publish("payload.types")
    data = [sub.next_msg(timeout=5).data for _ in range(5)]
    assert data == ["héllo ✓".encode(), b"ba", b"mv", b"", b""]
    assert all(type(d) is bytes for d in data)


def test_large_payload(nc: natsync.Client) -> None:
    sub = nc.subscribe("payload.large")
    big = bytes(range(256)) * 4000  # ~1 MB, under the default 1 MiB max_payload
    assert len(big) <= nc.max_payload
    nc.publish("payload.large", big)
    assert sub.next_msg(timeout=10).data == big


def test_reply_subject(nc: natsync.Client) -> None:
    sub = nc.subscribe("reply.subj")
    nc.publish("reply.subj", b"a", reply="my.inbox")
    nc.publish("reply.subj", b"b", reply="")
    nc.publish("reply.subj", b"c", reply=None)
    nc.publish("reply.subj", b"d", reply="", headers={"K": "v"})
    msgs = [sub.next_msg(timeout=5) for _ in range(4)]
    assert [m.reply for m in msgs] == ["my.inbox", None, None, None]


def test_non_ascii_subject(nc: natsync.Client) -> None:
    sub = nc.subscribe("uni.çé.✓")
    nc.publish("uni.çé.✓", b"x")
    assert sub.next_msg(timeout=5).subject == "uni.çé.✓"


# --------------------------------------------------------------------------- headers


def test_headers_dict(nc: natsync.Client) -> None:
    sub = nc.subscribe("hdr.dict")
    nc.publish("hdr.dict", b"body", headers={"Trace-Id": "abc", "X-Empty": "", "X-Uni": "héllo"})
    msg = sub.next_msg(timeout=5)
    assert msg.data == b"body"
    h = msg.headers
    assert isinstance(h, Headers)
    assert h["Trace-Id"] == "abc"
    assert h["trace-id"] == "abc" and h["TRACE-ID"] == "abc"  # case-insensitive lookup
    assert "trace-ID" in h
    assert list(h) == ["Trace-Id", "X-Empty", "X-Uni"]  # names keep their case
    assert h["X-Empty"] == ""
    assert h["x-uni"] == "héllo"
    assert h.status is None and h.description == ""


def test_headers_list_values_and_multi_value(nc: natsync.Client) -> None:
    sub = nc.subscribe("hdr.multi")
    nc.publish("hdr.multi", b"1", headers={"X-Multi": ["a", "b", "c"], "One": "x"})
    hobj = Headers([("X-Pair", "p1"), ("X-Pair", "p2")])
    hobj.add("x-pair", "p3")
    nc.publish("hdr.multi", b"2", headers=hobj)
    nc.publish("hdr.multi", b"3", headers=[("A", "1"), ("A", "2")])
    m1, m2, m3 = (sub.next_msg(timeout=5) for _ in range(3))
    assert m1.headers is not None and m1.headers.get_all("x-multi") == ["a", "b", "c"]
    assert m1.headers["X-Multi"] == "a" and m1.headers["one"] == "x"
    assert m2.headers is not None and m2.headers.get_all("X-PAIR") == ["p1", "p2", "p3"]
    assert m3.headers is not None and m3.headers.get_all("a") == ["1", "2"]


def test_headers_with_empty_payload(nc: natsync.Client) -> None:
    sub = nc.subscribe("hdr.empty")
    nc.publish("hdr.empty", b"", headers={"Only": "headers"})
    nc.publish("hdr.empty", b"", headers={})
    m1 = sub.next_msg(timeout=5)
    m2 = sub.next_msg(timeout=5)
    assert m1.data == b"" and m1.headers is not None and m1.headers["only"] == "headers"
    assert m2.data == b"" and m2.headers is not None and len(m2.headers) == 0


def test_request_and_respond_with_headers(nc: natsync.Client, nc2: natsync.Client) -> None:
    def serve(msg: natsync.Msg) -> None:
        assert msg.headers is not None
        msg.respond(b"", headers={"Echo": msg.headers["q"]})

    nc2.subscribe("hdr.svc", cb=serve)
    nc2.flush()
    resp = nc.request("hdr.svc", b"", timeout=5, headers={"Q": "ping"})
    assert resp.data == b"" and resp.headers is not None and resp.headers["echo"] == "ping"


# --------------------------------------------------------------------------- request/reply


def test_request_response(nc: natsync.Client, nc2: natsync.Client) -> None:
    nc2.subscribe("svc.echo", cb=lambda m: m.respond(b"re:" + m.data))
    nc2.flush()
    resp = nc.request("svc.echo", b"ping", timeout=5)
    assert resp.data == b"re:ping"
    assert resp.subject.startswith("_INBOX.")
    resp = nc.request("svc.echo", "str payload", timeout=5)
    assert resp.data == b"re:str payload"


def test_request_no_responders(nc: natsync.Client) -> None:
    with pytest.raises(NoRespondersError):
        nc.request("svc.nobody.home", b"x", timeout=30)  # at once, not after 30 s
    # the client still works
    sub = nc.subscribe("after.noresp")
    nc.publish("after.noresp", b"ok")
    assert sub.next_msg(timeout=5).data == b"ok"


def test_request_timeout_with_silent_responder(nc: natsync.Client, nc2: natsync.Client) -> None:
    seen = threading.Event()
    nc2.subscribe("svc.silent", cb=lambda m: seen.set())
    nc2.flush()
    with pytest.raises(natsync.TimeoutError):
        nc.request("svc.silent", b"x", timeout=0.3)
    assert seen.wait(5)


def test_concurrent_requests_each_get_own_answer(nc: natsync.Client, nc2: natsync.Client) -> None:
    nc2.subscribe("svc.conc", cb=lambda m: m.respond(b"re:" + m.data))
    nc2.flush()
    barrier = threading.Barrier(8)

    def worker(tid: int) -> list[tuple[bytes, bytes]]:
        barrier.wait(10)
        out = []
        for i in range(50):
            payload = b"%d-%d" % (tid, i)
            out.append((payload, nc.request("svc.conc", payload, timeout=10).data))
        return out

    runners = [Runner(lambda t=t: worker(t)) for t in range(8)]
    for r in runners:
        for payload, answer in r.result(timeout=40):
            assert answer == b"re:" + payload


def test_respond_without_reply_is_value_error(nc: natsync.Client) -> None:
    sub = nc.subscribe("noreply")
    nc.publish("noreply", b"x")
    msg = sub.next_msg(timeout=5)
    assert msg.reply is None
    with pytest.raises(ValueError):
        msg.respond(b"answer")


def test_new_inbox(server: NATSServer, nc: natsync.Client) -> None:
    inboxes = {nc.new_inbox() for _ in range(1000)}
    assert len(inboxes) == 1000
    assert all(i.startswith("_INBOX.") and len(i) > len("_INBOX.") for i in inboxes)
    with natsync.connect(server.url, inbox_prefix="my.replies") as c:
        assert c.new_inbox().startswith("my.replies.")
        c.subscribe("svc.prefix", cb=lambda m: m.respond(m.reply or ""))
        resp = c.request("svc.prefix", b"", timeout=5)
        assert resp.data.startswith(b"my.replies.")
    # an inbox works as a subject
    sub = nc.subscribe(nc.new_inbox())
    nc.publish(sub.subject, b"x")
    assert sub.next_msg(timeout=5).data == b"x"


# --------------------------------------------------------------------------- introspection


def test_flush_rtt_and_introspection(server: NATSServer, nc: natsync.Client) -> None:
    nc.flush()
    nc.flush(timeout=5)
    assert nc.rtt() > 0
    info = nc.server_info
    assert isinstance(info, dict)
    assert info["port"] == server.port
    assert nc.max_payload == info["max_payload"] == 1024 * 1024
    assert isinstance(nc.client_id, int) and nc.client_id == info["client_id"]
    assert nc.connected_url == server.url
    assert nc.servers == [server.url]
    assert nc.is_connected and not nc.is_closed and not nc.is_reconnecting and not nc.is_draining
    assert "connected" in repr(nc)


def test_stats_counters(nc: natsync.Client) -> None:
    s0 = nc.stats
    assert (s0.in_msgs, s0.out_msgs, s0.in_bytes, s0.out_bytes, s0.reconnects, s0.errors_received) == (0,) * 6
    sub = nc.subscribe("stats.x")
    for _ in range(3):
        nc.publish("stats.x", b"12345")
    nc.publish("stats.other", b"1234567")  # nobody subscribed: out only
    nc.flush()
    assert len(drain_pending(sub)) == 3
    s = nc.stats
    assert isinstance(s, natsync.Stats)
    assert s.out_msgs == 4 and s.out_bytes == 22
    assert s.in_msgs == 3 and s.in_bytes == 15
    assert s.reconnects == 0 and s.errors_received == 0
    assert s0.out_msgs == 0  # a snapshot


def test_connected_url_is_redacted(server: NATSServer) -> None:
    # a server without auth accepts (and ignores) credentials
    url = f"nats://sekrit-tok@127.0.0.1:{server.port}"
    with natsync.connect(url) as c:
        assert c.connected_url == f"nats://***@127.0.0.1:{server.port}"
        assert "sekrit-tok" not in repr(c) and "sekrit-tok" not in str(c.servers)
        sub = c.subscribe("redact.rt")
        c.publish("redact.rt", b"x")
        assert sub.next_msg(timeout=5).data == b"x"
    assert c.connected_url is None


def test_nats_then_connect(server: NATSServer) -> None:
    c = natsync.NATS()
    assert isinstance(c, natsync.Client) and natsync.NATS is natsync.Client
    assert not c.is_connected and not c.is_closed
    assert c.connect(servers=[server.url]) is c
    with c:
        sub = c.subscribe("nats.then")
        c.publish("nats.then", b"x")
        assert sub.next_msg(timeout=5).data == b"x"
    assert c.is_closed


def test_servers_as_comma_separated_string(server: NATSServer) -> None:
    with natsync.connect(f"{server.url}, 127.0.0.1:{server.port}") as c:
        assert c.is_connected
        assert c.servers == [server.url]  # one entry per host:port


# --------------------------------------------------------------------------- lifecycle


def test_close_idempotent_and_calls_after_close(server: NATSServer) -> None:
    closed_calls: list[str] = []
    c = natsync.connect(server.url, closed_cb=lambda: closed_calls.append(threading.current_thread().name))
    sub = c.subscribe("closed.sub")
    assert c.is_connected and not c.is_closed
    c.close()
    c.close()
    assert c.is_closed and not c.is_connected
    assert len(closed_calls) == 1 and "reader" not in closed_calls[0]
    assert c.connected_url is None
    with pytest.raises(ConnectionClosedError):
        c.publish("x", b"y")
    with pytest.raises(ConnectionClosedError):
        c.publish("x", b"y", headers={"A": "b"})
    with pytest.raises(ConnectionClosedError):
        c.subscribe("x")
    with pytest.raises(ConnectionClosedError):
        c.subscribe("x", cb=lambda m: None)
    with pytest.raises(ConnectionClosedError):
        c.request("x", b"y", timeout=1)
    with pytest.raises(ConnectionClosedError):
        c.flush()
    with pytest.raises(ConnectionClosedError):
        c.rtt()
    with pytest.raises(ConnectionClosedError):
        c.drain()
    with pytest.raises(ConnectionClosedError):
        sub.next_msg(timeout=1)
    with pytest.raises(ConnectionClosedError):
        sub.unsubscribe()
    assert not sub.is_valid


def test_request_after_close_with_existing_inbox(server: NATSServer, nc2: natsync.Client) -> None:
    nc2.subscribe("svc.once", cb=lambda m: m.respond(b"ok"))
    nc2.flush()
    c = natsync.connect(server.url)
    assert c.request("svc.once", b"", timeout=5).data == b"ok"
    c.close()
    with pytest.raises(ConnectionClosedError):
        c.request("svc.once", b"", timeout=1)


def test_close_sends_buffered_publishes(server: NATSServer, nc2: natsync.Client) -> None:
    sub = nc2.subscribe("close.flushes")
    nc2.flush()
    c = natsync.connect(server.url)
    for i in range(100):
        c.publish("close.flushes", b"%d" % i)
    c.close()
    got = [sub.next_msg(timeout=5).data for _ in range(100)]
    assert got == [b"%d" % i for i in range(100)]


def test_close_wakes_blocked_next_msg(server: NATSServer) -> None:
    c = natsync.connect(server.url)
    sub = c.subscribe("blocked.next")
    c.flush()
    r = Runner(lambda: sub.next_msg(timeout=30))
    assert r.started.wait(5)
    wait_until(lambda: sub._sleeping, what="next_msg to block")
    c.close()
    with pytest.raises(ConnectionClosedError):
        r.result(timeout=10)


def test_close_wakes_blocked_iteration(server: NATSServer) -> None:
    c = natsync.connect(server.url)
    sub = c.subscribe("blocked.iter")
    c.publish("blocked.iter", b"first")
    c.flush()
    got: list[bytes] = []

    def consume() -> None:
        for m in sub:
            got.append(m.data)

    r = Runner(consume)
    wait_until(lambda: got == [b"first"] and sub._sleeping, what="iteration to block")
    c.close()
    with pytest.raises(ConnectionClosedError):
        r.result(timeout=10)


def test_close_wakes_blocked_request(server: NATSServer, nc2: natsync.Client) -> None:
    seen = threading.Event()
    nc2.subscribe("blocked.req", cb=lambda m: seen.set())  # never answers
    nc2.flush()
    c = natsync.connect(server.url)
    r = Runner(lambda: c.request("blocked.req", b"x", timeout=30))
    assert seen.wait(10)  # the request is out and waiting
    c.close()
    with pytest.raises(ConnectionClosedError):
        r.result(timeout=10)


def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs SIGSTOP and /proc")
def test_close_wakes_blocked_flush() -> None:
    with NATSServer() as srv:
        c = natsync.connect(srv.url, ping_interval=0)
        c.flush()
        pid = srv.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # the server stops answering PINGs
        try:
            wait_until(lambda: _process_state(pid) == "T", what="the server to stop")  # SIGSTOP is async
            r = Runner(lambda: c.flush(timeout=30))
            wait_until(lambda: len(c._pongs) > 0, what="flush to wait for its PONG")
            c.close()
            with pytest.raises(ConnectionClosedError):
                r.result(timeout=10)
        finally:
            os.kill(pid, signal.SIGCONT)
            c.close()


def test_context_managers(server: NATSServer) -> None:
    with natsync.connect(server.url) as c:
        assert c.is_connected
        with c.subscribe("ctx.sub") as sub:
            assert sub.is_valid
            c.publish("ctx.sub", b"x")
            assert sub.next_msg(timeout=5).data == b"x"
        assert not sub.is_valid
        # the server no longer delivers to it
        with c.subscribe("ctx.sub") as sub2:
            c.publish("ctx.sub", b"y")
            assert sub2.next_msg(timeout=5).data == b"y"
        assert sub.pending_msgs == 0
    assert c.is_closed
    with pytest.raises(ZeroDivisionError):
        with natsync.connect(server.url) as c2:
            raise ZeroDivisionError
    assert c2.is_closed


def test_no_echo(server: NATSServer, nc2: natsync.Client) -> None:
    with natsync.connect(server.url, no_echo=True) as c:
        sub = c.subscribe("echo.test")
        c.flush()
        c.publish("echo.test", b"mine")
        c.flush()
        nc2.publish("echo.test", b"theirs")
        nc2.flush()
        c.flush()
        assert sub.next_msg(timeout=5).data == b"theirs"
        assert sub.pending_msgs == 0
    # echo is on by default
    echo_sub = nc2.subscribe("echo.default")
    nc2.publish("echo.default", b"mine")
    assert echo_sub.next_msg(timeout=5).data == b"mine"


# --------------------------------------------------------------------------- drain


def test_sub_drain_delivers_pending_to_slow_callback(nc: natsync.Client) -> None:
    gate = threading.Event()
    got: list[bytes] = []

    def slow(msg: natsync.Msg) -> None:
        gate.wait(10)
        got.append(msg.data)

    sub = nc.subscribe("sdrain.cb", cb=slow)
    for i in range(10):
        nc.publish("sdrain.cb", b"%d" % i)
    nc.flush()
    r = Runner(lambda: sub.drain(timeout=20))
    wait_until(lambda: not sub.is_valid, what="the drain to stop interest")
    assert len(got) == 0  # the callback is still stuck on the first message
    gate.set()
    r.result(timeout=20)
    assert got == [b"%d" % i for i in range(10)]
    assert sub.delivered == 10
    # interest is gone
    nc.publish("sdrain.cb", b"late")
    nc.flush()
    assert got[-1] == b"9"


def test_sub_drain_sync(nc: natsync.Client) -> None:
    sub = nc.subscribe("sdrain.sync")
    for i in range(3):
        nc.publish("sdrain.sync", b"%d" % i)
    sub.drain(timeout=10)
    assert [sub.next_msg(timeout=1).data for _ in range(3)] == [b"0", b"1", b"2"]
    with pytest.raises(BadSubscriptionError):
        sub.next_msg(timeout=1)
    assert list(sub) == []


def test_nc_drain_responder_serving_requests(server: NATSServer, nc: natsync.Client) -> None:
    release = threading.Event()
    first = threading.Event()
    sub_errors: list[BaseException] = []
    responder = natsync.connect(server.url)
    try:

        def serve(msg: natsync.Msg) -> None:
            first.set()
            release.wait(10)
            try:
                responder.subscribe("drain.late")
            except BaseException as e:  # noqa: BLE001 - checked below
                sub_errors.append(e)
            msg.respond(b"re:" + msg.data)

        responder.subscribe("drain.svc", cb=serve)
        responder.flush()
        inbox = nc.new_inbox()
        replies = nc.subscribe(inbox + ".*")
        nc.flush()
        for i in range(5):
            nc.publish("drain.svc", b"%d" % i, reply=f"{inbox}.{i}")
        nc.flush()
        responder.flush()  # all five requests have reached the responder
        assert first.wait(10)
        r = Runner(lambda: responder.drain(timeout=20))
        wait_until(lambda: responder.is_draining, what="drain to start")
        with pytest.raises(ConnectionDrainingError):
            responder.subscribe("drain.other")
        release.set()
        r.result(timeout=30)
        assert responder.is_closed and not responder.is_draining
        got = sorted(replies.next_msg(timeout=5).data for _ in range(5))
        assert got == [b"re:%d" % i for i in range(5)]
        assert len(sub_errors) == 5 and all(isinstance(e, ConnectionDrainingError) for e in sub_errors)
        with pytest.raises(ConnectionClosedError):
            responder.publish("x", b"y")
        with pytest.raises(ConnectionClosedError):
            responder.drain()
    finally:
        release.set()
        responder.close()


def test_nc_drain_request_responder(server: NATSServer, nc: natsync.Client) -> None:
    """Requests made with request() are answered by a responder drained meanwhile."""
    release = threading.Event()
    seen = threading.Semaphore(0)
    responder = natsync.connect(server.url)
    try:

        def serve(msg: natsync.Msg) -> None:
            seen.release()
            release.wait(10)
            msg.respond(b"ok:" + msg.data)

        rsub = responder.subscribe("drain.req", cb=serve)
        responder.flush()
        runners = [Runner(lambda i=i: nc.request("drain.req", b"%d" % i, timeout=20).data) for i in range(4)]
        assert seen.acquire(timeout=10)  # the first is in the callback
        wait_until(lambda: rsub.pending_msgs == 3, what="all requests to be pending")
        d = Runner(lambda: responder.drain(timeout=20))
        wait_until(lambda: responder.is_draining, what="drain to start")
        release.set()
        d.result(timeout=30)
        assert sorted(r.result(timeout=20) for r in runners) == [b"ok:%d" % i for i in range(4)]
    finally:
        release.set()
        responder.close()


def test_nc_drain_with_nothing(server: NATSServer) -> None:
    c = natsync.connect(server.url)
    c.subscribe("drain.idle")
    c.subscribe("drain.idle.cb", cb=lambda m: None)
    c.drain()
    assert c.is_closed
    c.close()


# --------------------------------------------------------------------------- slow consumers, errors, threads


@pytest.mark.parametrize("how", ["set_pending_limits", "connect_option"])
def test_slow_consumer(server: NATSServer, nc2: natsync.Client, how: str) -> None:
    errors = Errors()
    gates = {b"block1": threading.Event(), b"block2": threading.Event()}
    entered = {b"block1": threading.Event(), b"block2": threading.Event()}
    got: list[bytes] = []
    opts: dict[str, Any] = {"pending_msgs_limit": 5} if how == "connect_option" else {}
    with natsync.connect(server.url, error_cb=errors, **opts) as c:
        try:

            def cb(msg: natsync.Msg) -> None:
                got.append(msg.data)
                if msg.data in gates:
                    entered[msg.data].set()
                    gates[msg.data].wait(10)

            sub = c.subscribe("slow.sub", cb=cb)
            if how == "set_pending_limits":
                sub.set_pending_limits(5, None)
            c.flush()
            # episode 1: the callback is blocked, 5 fit, 15 are dropped
            nc2.publish("slow.sub", b"block1")
            nc2.flush()
            assert entered[b"block1"].wait(10)
            for i in range(20):
                nc2.publish("slow.sub", b"a%d" % i)
            nc2.flush()
            c.flush()
            errs = errors.wait_for(1)
            assert sub.dropped == 15 and sub.pending_msgs == 5
            assert len(errs) == 1 and isinstance(errs[0], SlowConsumerError)
            assert errs[0].sub is sub
            assert "natsync-events" in errors.threads[0]
            gates[b"block1"].set()
            wait_until(lambda: b"a4" in got, what="the pending messages to be delivered")
            nc2.publish("slow.sub", b"marker1")
            nc2.flush()
            wait_until(lambda: b"marker1" in got, what="delivery to resume")
            assert got == [b"block1"] + [b"a%d" % i for i in range(5)] + [b"marker1"]
            assert len(errors.of(SlowConsumerError)) == 1  # once per episode
            # episode 2
            nc2.publish("slow.sub", b"block2")
            nc2.flush()
            assert entered[b"block2"].wait(10)
            for i in range(10):
                nc2.publish("slow.sub", b"b%d" % i)
            nc2.flush()
            c.flush()
            errors.wait_for(2)
            assert sub.dropped == 20
            gates[b"block2"].set()
            wait_until(lambda: b"b4" in got, what="the pending messages to be delivered")
            nc2.publish("slow.sub", b"marker2")
            nc2.flush()
            wait_until(lambda: b"marker2" in got, what="delivery to resume")
            assert len(errors.of(SlowConsumerError)) == 2
            assert sub.delivered == len(got) == 1 + 5 + 1 + 1 + 5 + 1
        finally:
            for g in gates.values():
                g.set()


def test_slow_consumer_sync_subscription(server: NATSServer, nc2: natsync.Client) -> None:
    errors = Errors()
    with natsync.connect(server.url, error_cb=errors) as c:
        sub = c.subscribe("slow.sync")
        sub.set_pending_limits(3, None)
        c.flush()
        for i in range(10):
            nc2.publish("slow.sync", b"%d" % i)
        nc2.flush()
        c.flush()
        assert [m.data for m in drain_pending(sub)] == [b"0", b"1", b"2"]
        assert sub.dropped == 7
        errs = errors.wait_for(1)
        assert isinstance(errs[0], SlowConsumerError)


def test_pending_bytes_limit(server: NATSServer, nc2: natsync.Client) -> None:
    errors = Errors()
    with natsync.connect(server.url, error_cb=errors, pending_bytes_limit=100) as c:
        sub = c.subscribe("slow.bytes")
        c.flush()
        for _ in range(5):
            nc2.publish("slow.bytes", b"x" * 40)
        nc2.flush()
        c.flush()
        assert sub.pending_msgs == 2 and sub.dropped == 3
        assert sub.pending_bytes == 80
        assert isinstance(errors.wait_for(1)[0], SlowConsumerError)


def test_callback_exception_goes_to_error_cb_and_delivery_goes_on(server: NATSServer) -> None:
    errors = Errors()
    got: list[bytes] = []
    done = threading.Event()

    def cb(msg: natsync.Msg) -> None:
        if msg.data == b"boom":
            raise RuntimeError("callback exploded")
        got.append(msg.data)
        if msg.data == b"last":
            done.set()

    with natsync.connect(server.url, error_cb=errors) as c:
        c.subscribe("cb.raise", cb=cb)
        for d in (b"one", b"boom", b"two", b"boom", b"last"):
            c.publish("cb.raise", d)
        assert done.wait(10)
        errs = errors.wait_for(2)
    assert got == [b"one", b"two", b"last"]
    assert len(errs) == 2
    for e in errs:
        assert isinstance(e, NatsError)
        assert "callback exploded" in str(e) or isinstance(e.__cause__, RuntimeError)


def test_callback_exception_prints_nothing_by_default(server: NATSServer) -> None:
    """API.md Logging: nothing printed by default (no handler configured by the user)."""
    script = textwrap.dedent(
        f"""
        import threading, natsync
        done = threading.Event()
        def cb(msg):
            if msg.data == b"boom":
                raise RuntimeError("callback exploded")
            done.set()
        with natsync.connect({server.url!r}) as c:
            c.subscribe("print.nothing", cb=cb)
            c.publish("print.nothing", b"boom")
            c.publish("print.nothing", b"ok")
            assert done.wait(10)
        print("DONE")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "DONE"
    assert proc.stderr == ""


def test_callbacks_never_run_on_reader_thread(server: NATSServer, nc2: natsync.Client) -> None:
    errors = Errors()
    msg_threads: list[str] = []
    done = threading.Event()

    def cb(msg: natsync.Msg) -> None:
        msg_threads.append(threading.current_thread().name)
        if msg.reply:
            msg.respond(b"ok")
        if msg.data == b"raise":
            raise ValueError("to error_cb")
        if msg.data == b"end":
            done.set()

    with natsync.connect(server.url, error_cb=errors) as c:
        sub = c.subscribe("threads.cb", cb=cb)
        qsub = c.subscribe("threads.q", queue="g", cb=cb)
        c.flush()
        assert nc2.request("threads.cb", b"req", timeout=5).data == b"ok"
        nc2.publish("threads.q", b"q")
        nc2.publish("threads.cb", b"raise")
        nc2.publish("threads.cb", b"end")
        nc2.flush()
        assert done.wait(10)
        errors.wait_for(1)
        # "q" goes to another subscription's thread: close() would discard it if queued
        wait_until(lambda: len(msg_threads) == 4, what="all four callbacks")
    assert len(msg_threads) == 4
    assert all(name.startswith("natsync-sub-") for name in msg_threads), msg_threads
    assert f"natsync-sub-{sub.sid}" in msg_threads and f"natsync-sub-{qsub.sid}" in msg_threads
    assert all("reader" not in name for name in msg_threads + errors.threads)
    assert errors.threads == ["natsync-events"]


def test_blocked_callback_delays_only_its_own_subscription(nc: natsync.Client) -> None:
    gate = threading.Event()
    other = threading.Event()
    try:
        nc.subscribe("block.a", cb=lambda m: gate.wait(10))
        nc.subscribe("block.b", cb=lambda m: other.set())
        nc.publish("block.a", b"x")
        nc.publish("block.b", b"y")
        assert other.wait(10)
    finally:
        gate.set()


# --------------------------------------------------------------------------- concurrency


def _payload(tid: int, seq: int) -> bytes:
    return (b"%d:%d:" % (tid, seq)) + bytes([(tid * 7 + seq) % 251]) * (seq % 97)


def test_concurrent_publishers_no_corruption(server: NATSServer, nc: natsync.Client) -> None:
    threads, per_thread = 8, 2000
    with natsync.connect(server.url, pending_msgs_limit=None, pending_bytes_limit=None) as rx:
        sub = rx.subscribe("conc.pub")
        rx.flush()
        barrier = threading.Barrier(threads)

        def publisher(tid: int) -> None:
            barrier.wait(10)
            for seq in range(per_thread):
                if seq % 3 == 0:
                    nc.publish("conc.pub", _payload(tid, seq), headers={"T": str(tid)})
                else:
                    nc.publish("conc.pub", _payload(tid, seq))

        runners = [Runner(lambda t=t: publisher(t)) for t in range(threads)]
        for r in runners:
            r.result(timeout=40)
        nc.flush(timeout=20)
        next_seq = [0] * threads
        for _ in range(threads * per_thread):
            msg = sub.next_msg(timeout=10)
            tid_b, seq_b, _ = msg.data.split(b":", 2)
            tid, seq = int(tid_b), int(seq_b)
            assert msg.data == _payload(tid, seq)
            assert seq == next_seq[tid], f"thread {tid}: got {seq}, expected {next_seq[tid]}"
            if seq % 3 == 0:
                assert msg.headers is not None and msg.headers["T"] == str(tid)
            else:
                assert msg.headers is None
            next_seq[tid] += 1
        assert next_seq == [per_thread] * threads
        rx.flush()
        assert sub.pending_msgs == 0 and sub.dropped == 0
    assert nc.stats.out_msgs == threads * per_thread


# --------------------------------------------------------------------------- max_payload


@pytest.fixture(scope="module")
def small_server() -> Iterator[NATSServer]:
    with NATSServer(config="max_payload: 1024\n") as srv:
        yield srv


def test_max_payload(small_server: NATSServer) -> None:
    with natsync.connect(small_server.url) as c, natsync.connect(small_server.url) as spy:
        spy_sub = spy.subscribe(">")
        spy.flush()
        assert c.max_payload == 1024 == c.server_info["max_payload"]
        with pytest.raises(MaxPayloadError) as info:
            c.publish("big", b"x" * 1025)
        assert isinstance(info.value, ValueError) and isinstance(info.value, NatsError)
        with pytest.raises(MaxPayloadError):
            c.publish("big", "é" * 513)  # 1026 bytes once encoded
        with pytest.raises(MaxPayloadError):
            c.publish("big", b"x" * 1000, headers={"Key": "v" * 100})
        with pytest.raises(MaxPayloadError):
            c.publish("big", b"", headers={"Key": "v" * 1100})
        with pytest.raises(MaxPayloadError):
            c.request("big", b"x" * 2000, timeout=1)
        c.flush()
        # the connection is still usable, and exactly max_payload is fine
        c.publish("fits", b"y" * 1024)
        c.flush()
        spy.flush()
        first = spy_sub.next_msg(timeout=5)
        assert first.subject == "fits" and len(first.data) == 1024
        assert spy_sub.pending_msgs == 0
        assert c.is_connected and c.stats.errors_received == 0


# --------------------------------------------------------------------------- timeouts and re-entrancy


def test_nc_drain_timeout_closes_anyway(server: NATSServer) -> None:
    gate = threading.Event()
    entered = threading.Event()
    c = natsync.connect(server.url)
    try:
        c.subscribe("drain.stuck", cb=lambda m: (entered.set(), gate.wait(20)))
        c.publish("drain.stuck", b"x")
        assert entered.wait(10)
        with pytest.raises(natsync.TimeoutError):
            c.drain(timeout=0.3)
        assert c.is_closed
        with pytest.raises(ConnectionClosedError):
            c.publish("x", b"y")
    finally:
        gate.set()
        c.close()


def test_sub_drain_timeout(nc: natsync.Client) -> None:
    gate = threading.Event()
    entered = threading.Event()
    try:
        sub = nc.subscribe("sdrain.stuck", cb=lambda m: (entered.set(), gate.wait(20)))
        nc.publish("sdrain.stuck", b"x")
        assert entered.wait(10)
        with pytest.raises(natsync.TimeoutError):
            sub.drain(timeout=0.3)
        assert not sub.is_valid
        assert nc.is_connected
    finally:
        gate.set()
    round_sub = nc.subscribe("after.sdrain")
    nc.publish("after.sdrain", b"ok")
    assert round_sub.next_msg(timeout=5).data == b"ok"


def test_close_from_inside_callback(server: NATSServer) -> None:
    closed = threading.Event()
    errs: list[BaseException] = []
    c = natsync.connect(server.url, closed_cb=closed.set)

    def cb(msg: natsync.Msg) -> None:
        try:
            c.close()
        except BaseException as e:  # noqa: BLE001 - checked below
            errs.append(e)

    c.subscribe("close.inside", cb=cb)
    c.publish("close.inside", b"x")
    assert closed.wait(15)
    assert c.is_closed and not errs
    c.close()


def test_request_from_inside_callback(nc: natsync.Client) -> None:
    answers: list[bytes] = []
    done = threading.Event()
    nc.subscribe("nested.inner", cb=lambda m: m.respond(b"inner:" + m.data))

    def outer(msg: natsync.Msg) -> None:
        answers.append(nc.request("nested.inner", msg.data, timeout=5).data)
        msg.respond(answers[-1])
        done.set()

    nc.subscribe("nested.outer", cb=outer)
    assert nc.request("nested.outer", b"q", timeout=10).data == b"inner:q"
    assert done.wait(5) and answers == [b"inner:q"]


def test_nc_drain_keeps_pending_sync_messages(server: NATSServer) -> None:
    c = natsync.connect(server.url)
    sub = c.subscribe("drain.sync")
    for i in range(3):
        c.publish("drain.sync", b"%d" % i)
    c.drain(timeout=10)
    assert c.is_closed
    assert [m.data for m in sub] == [b"0", b"1", b"2"]

"""Reconnect, buffering, stale detection and callbacks under faults, against real
nats-server processes on 127.0.0.1 (restarted, stopped, or reached through a loopback
proxy that cuts or blackholes connections)."""

from __future__ import annotations

import itertools
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from proxy import TCPProxy
from recorder import Recorder, wait_until

import natsync
from natsync.testing import NATSServer

WAIT = 10.0  # upper bound for anything that should happen "soon"
FAST: dict[str, Any] = {
    "reconnect_time_wait": 0.05,
    "reconnect_jitter": 0.0,
    "connect_timeout": 1.0,
    "max_reconnect_attempts": -1,
}


@pytest.fixture
def server() -> Iterator[NATSServer]:
    with NATSServer() as srv:
        yield srv


@pytest.fixture
def proxy(server: NATSServer) -> Iterator[TCPProxy]:
    with TCPProxy("127.0.0.1", server.port) as px:
        yield px


# ------------------------------------------------------------------- basic reconnect


def test_cut_reconnects_and_everything_works_again(server: NATSServer, proxy: TCPProxy) -> None:
    rec = Recorder()
    nc = natsync.connect(proxy.url, **FAST, **rec.options())
    other = natsync.connect(server.url)
    try:
        plain = nc.subscribe("plain")
        got_cb: list[bytes] = []
        cb_done = threading.Event()

        def on_msg(msg: natsync.Msg) -> None:
            got_cb.append(msg.data)
            if len(got_cb) == 2:
                cb_done.set()

        nc.subscribe("cb", cb=on_msg)
        group: list[list[bytes]] = [[], []]
        group_lock = threading.Lock()
        group_done = threading.Event()

        def member(i: int) -> Callable[[natsync.Msg], None]:
            def handle(msg: natsync.Msg) -> None:
                with group_lock:
                    group[i].append(msg.data)
                    if len(group[0]) + len(group[1]) == 100:
                        group_done.set()

            return handle

        nc.subscribe("work", queue="workers", cb=member(0))
        nc.subscribe("work", queue="workers", cb=member(1))
        nc.subscribe("svc", cb=lambda m: m.respond(b"pong:" + m.data))
        nc.flush(timeout=WAIT)
        other.publish("plain", b"before")
        other.publish("cb", b"before")
        assert plain.next_msg(timeout=WAIT).data == b"before"

        assert proxy.cut() == 1
        assert rec.wait_count("reconnected"), "no reconnect after the proxy cut the connection"
        assert rec.counts["disconnected"] == 1
        nc.flush(timeout=WAIT)  # the resent subscriptions are in place

        other.publish("plain", b"after")
        other.publish("cb", b"after")
        for i in range(100):
            other.publish("work", b"%d" % i)
        assert plain.next_msg(timeout=WAIT).data == b"after"
        assert cb_done.wait(WAIT) and got_cb == [b"before", b"after"]
        assert group_done.wait(WAIT)
        assert sorted(int(x) for x in group[0] + group[1]) == list(range(100)), "queue group lost or doubled"
        assert other.request("svc", b"x", timeout=WAIT).data == b"pong:x"
        assert nc.request("svc", b"y", timeout=WAIT).data == b"pong:y"  # resent inbox subscription
        assert nc.stats.reconnects == 1
        assert nc.is_connected and not nc.is_reconnecting
        assert rec.errors == []
    finally:
        nc.close()
        other.close()
    assert rec.wait_count("closed")
    assert rec.threads == {"natsync-events"}, "an event callback ran elsewhere than the event thread"


def _cyclic(order: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The order up to rotation: the reconnect loop moves each server it tries to the end."""
    i = order.index(min(order))
    return tuple(order[i:]) + tuple(order[:i])


def test_dont_randomize_and_randomized_pool() -> None:
    dead = [NATSServer() for _ in range(4)]  # free ports, never started
    urls = [s.url for s in dead]
    orders = set()
    for _ in range(20):
        nc = natsync.connect(urls, retry_on_failed_connect=True, **FAST)
        try:
            orders.add(_cyclic(nc.servers))
        finally:
            nc.close()
        if len(orders) > 1:
            break
    assert len(orders) > 1, "the pool is never shuffled"
    for _ in range(3):
        nc = natsync.connect(urls, retry_on_failed_connect=True, dont_randomize=True, **FAST)
        try:
            assert _cyclic(nc.servers) == _cyclic(urls)
        finally:
            nc.close()


def test_sleeps_only_after_a_full_pass(server: NATSServer, proxy: TCPProxy) -> None:
    """Two dead servers ahead of the live one: the reconnect walks past them at once,
    without waiting reconnect_time_wait (30 s here) between servers."""
    dead = [NATSServer().url for _ in range(2)]
    rec = Recorder()
    opts = {**FAST, "reconnect_time_wait": 30.0}
    nc = natsync.connect([proxy.url, *dead], dont_randomize=True, **opts, **rec.options())
    try:
        assert nc.connected_url == proxy.url
        started = time.monotonic()
        proxy.cut()
        assert rec.wait_count("reconnected", timeout=5.0)
        assert time.monotonic() - started < 5.0
        assert nc.connected_url == proxy.url
    finally:
        nc.close()


# ------------------------------------------------------------ restart while publishing


def test_restart_while_publishing_buffered_messages_arrive_once(server: NATSServer) -> None:
    rec = Recorder()
    nc = natsync.connect(server.url, **FAST, **rec.options())
    watcher_rec = Recorder()
    watcher = natsync.connect(server.url, **FAST, **watcher_rec.options())
    try:
        sub = nc.subscribe("seq", pending_msgs_limit=None, pending_bytes_limit=None)
        got_group: list[int] = []
        group_lock = threading.Lock()
        group_done = threading.Event()

        def member(msg: natsync.Msg) -> None:
            with group_lock:
                got_group.append(int(msg.data))
                if len(got_group) == 50:
                    group_done.set()

        watcher.subscribe("work", queue="q", cb=member)
        watcher.subscribe("work", queue="q", cb=member)
        nc.flush(timeout=WAIT)
        watcher.flush(timeout=WAIT)

        stop = threading.Event()
        warmed = threading.Event()
        after = threading.Event()
        state: dict[str, Any] = {"first_outage": None, "rejected": set(), "n": 0, "reco_at": None}

        def publisher() -> None:
            i = 0
            while not stop.is_set():
                outage = nc.is_reconnecting
                if outage and state["first_outage"] is None:
                    state["first_outage"] = i
                try:
                    nc.publish("seq", b"%d" % i)
                except natsync.OutboundBufferFullError:
                    state["rejected"].add(i)
                i += 1
                state["n"] = i
                if i == 2000:
                    warmed.set()
                reco_at = state["reco_at"]
                if reco_at is not None and i >= reco_at + 2000:
                    after.set()
                if i % 50 == 0:
                    time.sleep(0.0005)  # pace: keep the outage's backlog well inside the buffer

        t = threading.Thread(target=publisher, name="test-publisher")
        t.start()
        try:
            assert warmed.wait(WAIT)
            server.restart()
            assert rec.wait_count("reconnected"), "no reconnect after the server restarted"
            state["reco_at"] = state["n"]
            assert after.wait(WAIT)
        finally:
            stop.set()
            t.join(WAIT)
        assert not t.is_alive()
        total = state["n"]
        nc.flush(timeout=WAIT)
        got = []
        while sub.pending_msgs:
            got.append(int(sub.next_msg(timeout=WAIT).data))

        first = state["first_outage"]
        assert first is not None, "the publisher never saw the outage"
        assert len(got) == len(set(got)), "a message arrived twice"
        assert got == sorted(got), "messages arrived out of order"
        expected = [i for i in range(first, total) if i not in state["rejected"]]
        missing = sorted(set(expected) - set(got))
        assert not missing, f"{len(missing)} messages published during or after the outage were lost"
        assert not state["rejected"], "8 MiB reconnect buffer overflowed in a short outage"
        assert rec.counts["disconnected"] == 1 and nc.stats.reconnects == 1

        # queue group on the other client works again without user action
        assert watcher_rec.wait_count("reconnected")
        watcher.flush(timeout=WAIT)
        for i in range(50):
            nc.publish("work", b"%d" % i)
        nc.flush(timeout=WAIT)
        assert group_done.wait(WAIT)
        assert sorted(got_group) == list(range(50))
    finally:
        nc.close()
        watcher.close()


def test_reconnect_buffer_limit(server: NATSServer) -> None:
    rec = Recorder()
    nc = natsync.connect(server.url, reconnect_buffer_size=1000, **FAST, **rec.options())
    try:
        server.stop()
        assert rec.wait_count("disconnected")
        assert nc.is_reconnecting
        sub = nc.subscribe("buf")  # made while disconnected: sent on reconnect
        accepted = 0
        with pytest.raises(natsync.OutboundBufferFullError):
            for i in range(1000):
                nc.publish("buf", b"m%03d" % i)
                accepted += 1
        assert 10 < accepted < 1000 // 4
        with pytest.raises(natsync.OutboundBufferFullError):
            nc.publish("buf", b"m%03d" % accepted)  # wire bytes are charged: a smaller one may fit
        # flush() during the outage waits for the connection to come back
        flushed: list[BaseException | None] = []
        ft = threading.Thread(target=lambda: flushed.append(_call(nc.flush, WAIT)), name="test-flush")
        ft.start()
        server.start()
        assert rec.wait_count("reconnected")
        ft.join(WAIT)
        assert flushed == [None]
        nc.flush(timeout=WAIT)
        assert sub.pending_msgs == accepted
        got = [sub.next_msg(timeout=1).data for _ in range(accepted)]
        assert got == [b"m%03d" % i for i in range(accepted)]
        nc.publish("buf", b"again")  # the buffer is free again
        assert sub.next_msg(timeout=WAIT).data == b"again"
    finally:
        nc.close()


def test_zero_reconnect_buffer_refuses_at_once(server: NATSServer) -> None:
    rec = Recorder()
    nc = natsync.connect(server.url, reconnect_buffer_size=0, **FAST, **rec.options())
    try:
        server.stop()
        assert rec.wait_count("disconnected")
        with pytest.raises(natsync.OutboundBufferFullError):
            nc.publish("x", b"")
    finally:
        nc.close()


def _call(fn: Callable[..., Any], *args: Any) -> BaseException | None:
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001 - handed to the test
        return e
    return None


# --------------------------------------------------------------------- initial connect


def test_initial_connect_fails_fast_with_no_servers() -> None:
    dead = [NATSServer() for _ in range(3)]
    started = time.monotonic()
    with pytest.raises(natsync.NoServersError) as exc:
        natsync.connect([s.url for s in dead], **{**FAST, "max_reconnect_attempts": 100})
    assert time.monotonic() - started < 2.0
    for s in dead:
        assert str(s.port) in str(exc.value)


def test_initial_connect_to_a_silent_server_is_bounded_by_connect_timeout(server: NATSServer) -> None:
    with TCPProxy("127.0.0.1", server.port) as px:
        px.blackhole(True)
        started = time.monotonic()
        with pytest.raises(natsync.NoServersError):
            natsync.connect(px.url, connect_timeout=0.5)
        assert time.monotonic() - started < 2.0


def test_retry_on_failed_connect_buffers_and_connects_in_background() -> None:
    srv = NATSServer()  # port chosen, not started
    rec = Recorder()
    started = time.monotonic()
    nc = natsync.connect(srv.url, retry_on_failed_connect=True, **FAST, **rec.options())
    try:
        assert time.monotonic() - started < 1.0
        assert nc.is_reconnecting and not nc.is_connected
        sub = nc.subscribe("early")
        nc.publish("early", b"hello")
        srv.start()
        nc.flush(timeout=WAIT)  # waits for the background connect
        assert nc.is_connected
        assert sub.next_msg(timeout=WAIT).data == b"hello"
        assert rec.counts["disconnected"] == 0
        # a later outage is a reconnect like any other
        srv.restart()
        assert rec.wait_count("reconnected"), "no reconnected_cb after the background connect"
        assert nc.stats.reconnects == 1
        nc.publish("early", b"again")
        assert sub.next_msg(timeout=WAIT).data == b"again"
    finally:
        nc.close()
        srv.stop()


# ------------------------------------------------------------------- stale connections


@pytest.mark.parametrize("ping_interval,max_pings", [(0.2, 2), (0.3, 1)])
def test_blackhole_detected_as_stale_within_bound(
    server: NATSServer, proxy: TCPProxy, ping_interval: float, max_pings: int
) -> None:
    rec = Recorder()
    nc = natsync.connect(
        proxy.url, ping_interval=ping_interval, max_outstanding_pings=max_pings, **FAST, **rec.options()
    )
    try:
        sub = nc.subscribe("s")
        nc.flush(timeout=WAIT)
        proxy.blackhole(True)
        started = time.monotonic()
        assert rec.wait_count("disconnected", timeout=WAIT), "half-open connection never noticed"
        elapsed = time.monotonic() - started
        bound = ping_interval * (max_pings + 1) + 0.5
        assert elapsed <= bound, f"stale connection noticed after {elapsed:.2f} s, bound {bound:.2f} s"
        proxy.blackhole(False)
        assert rec.wait_count("reconnected")
        stale = rec.errors_of(natsync.StaleConnectionError)
        assert len(stale) == 1, rec.errors
        nc.publish("s", b"alive")
        assert sub.next_msg(timeout=WAIT).data == b"alive"
    finally:
        nc.close()


# ------------------------------------------------------------------- closing for good


def test_exhausting_reconnect_attempts_closes_and_wakes_blocked_callers(server: NATSServer) -> None:
    rec = Recorder()
    opts = {**FAST, "max_reconnect_attempts": 3, "reconnect_time_wait": 0.3}
    nc = natsync.connect(server.url, **opts, **rec.options())
    sync_sub = nc.subscribe("a")
    iter_sub = nc.subscribe("b")
    nc.flush(timeout=WAIT)
    server.stop()
    assert rec.wait_count("disconnected")

    results: dict[str, BaseException | None] = {}
    # issue 7: a request while disconnected fails at once and says why
    with pytest.raises(natsync.TimeoutError, match="not connected"):
        nc.request("svc", b"", timeout=30)
    started = {name: threading.Event() for name in ("next_msg", "iterate", "flush")}

    def blocked(name: str, fn: Callable[[], Any]) -> None:
        started[name].set()
        results[name] = _call(fn)

    calls: dict[str, Callable[[], Any]] = {
        "next_msg": lambda: sync_sub.next_msg(timeout=None),
        "iterate": lambda: list(iter_sub),
        "flush": lambda: nc.flush(timeout=30),
    }
    threads = [threading.Thread(target=blocked, args=(n, f), name=f"test-{n}") for n, f in calls.items()]
    for t in threads:
        t.start()
    for ev in started.values():
        assert ev.wait(WAIT)
    assert nc.is_reconnecting, "closed before the callers blocked: test invalid"

    assert rec.wait_count("closed"), "not closed after max_reconnect_attempts"
    for t in threads:
        t.join(2.0)
        assert not t.is_alive(), f"{t.name} still blocked after the client closed"
    for name, err in results.items():
        assert isinstance(err, natsync.ConnectionClosedError), f"{name}: {err!r}"
    assert nc.is_closed and not nc.is_reconnecting
    assert rec.errors_of(natsync.NoServersError), rec.errors
    with pytest.raises(natsync.ConnectionClosedError):
        nc.publish("a", b"")
    with pytest.raises(natsync.ConnectionClosedError):
        nc.subscribe("a")
    nc.close()  # idempotent
    assert rec.counts["closed"] == 1


def test_close_during_reconnect_wait_returns_quickly(server: NATSServer) -> None:
    rec = Recorder()
    opts = {**FAST, "reconnect_time_wait": 30.0}
    nc = natsync.connect(server.url, **opts, **rec.options())
    server.stop()
    assert rec.wait_count("disconnected")
    started = time.monotonic()
    nc.close()
    assert time.monotonic() - started < 1.0
    assert nc.is_closed
    assert rec.wait_count("closed")


def test_close_during_reconnect_handshake_returns_quickly(server: NATSServer, proxy: TCPProxy) -> None:
    """The reconnect is stuck in a handshake with a silent server (connect_timeout 5 s):
    close() must not wait for it."""
    rec = Recorder()
    opts = {**FAST, "connect_timeout": 5.0}
    nc = natsync.connect(proxy.url, **opts, **rec.options())
    proxy.blackhole(True)
    proxy.cut()
    assert rec.wait_count("disconnected")
    assert wait_until(lambda: proxy.accepted >= 2), "no reconnect attempt"
    started = time.monotonic()
    nc.close()
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"close() took {elapsed:.2f} s during a reconnect"
    assert nc.is_closed
    assert rec.wait_count("closed")


# ---------------------------------------------------------------- concurrency stress


def _payload(tid: int, seq: int) -> bytes:
    pad = bytes([65 + seq % 26]) * (seq % 61)
    body = b"%d|%d|%s" % (tid, seq, pad)
    return body + b"|%08x" % zlib.crc32(body)


def test_eight_threads_publish_during_restart_no_corruption(server: NATSServer) -> None:
    threads_n, per_thread = 8, 10_000
    rec = Recorder()
    pub = natsync.connect(server.url, **FAST, **rec.options())
    sub_rec = Recorder()
    sub_nc = natsync.connect(server.url, **FAST, **sub_rec.options())
    try:
        last: dict[int, int] = {}
        bad: list[bytes] = []
        count = itertools.count(1)
        received = [0]
        end = threading.Event()

        def on_msg(msg: natsync.Msg) -> None:
            if msg.data == b"END":
                end.set()
                return
            received[0] += 1
            try:
                body, crc = msg.data.rsplit(b"|", 1)
                tid_s, seq_s, pad = body.split(b"|")
                tid, seq = int(tid_s), int(seq_s)
                ok = int(crc, 16) == zlib.crc32(body) and msg.data == _payload(tid, seq)
            except ValueError:
                ok = False
            if not ok or msg.subject != "stress":
                bad.append(msg.data[:200])
                return
            if seq <= last.get(tid, -1):
                bad.append(b"out of order or twice: " + msg.data[:50])
            last[tid] = seq

        sub_nc.subscribe("stress", cb=on_msg, pending_msgs_limit=None, pending_bytes_limit=None)
        sub_nc.flush(timeout=WAIT)
        halfway = threading.Event()
        full = [0]

        def publisher(tid: int) -> None:
            for seq in range(per_thread):
                try:
                    pub.publish("stress", _payload(tid, seq))
                except natsync.OutboundBufferFullError:
                    full[0] += 1
                if next(count) == threads_n * per_thread // 4:
                    halfway.set()

        workers = [
            threading.Thread(target=publisher, args=(i,), name=f"test-pub-{i}") for i in range(threads_n)
        ]
        for w in workers:
            w.start()
        assert halfway.wait(WAIT)
        server.restart()
        for w in workers:
            w.join(WAIT * 3)
            assert not w.is_alive()
        assert rec.wait_count("reconnected")
        assert sub_rec.wait_count("reconnected")
        sub_nc.flush(timeout=WAIT)
        pub.flush(timeout=WAIT)
        pub.publish("stress", b"END")
        pub.flush(timeout=WAIT)
        assert end.wait(WAIT), "the subscriber never got the end marker"
        assert bad == [], f"{len(bad)} corrupted, interleaved, reordered or doubled messages: {bad[:3]}"
        assert received[0] > 0 and set(last) <= set(range(threads_n))
    finally:
        pub.close()
        sub_nc.close()


def test_blocking_callbacks_and_slow_error_cb_do_not_stall_others(server: NATSServer) -> None:
    release = threading.Event()
    cb_threads: set[str] = set()
    error_threads: set[str] = set()
    errors: list[natsync.NatsError] = []

    def slow_error_cb(err: natsync.NatsError) -> None:
        error_threads.add(threading.current_thread().name)
        errors.append(err)
        release.wait(WAIT)

    nc = natsync.connect(server.url, error_cb=slow_error_cb, **FAST)
    other = natsync.connect(server.url)
    try:
        blocked_got: list[int] = []

        def blocking(msg: natsync.Msg) -> None:
            cb_threads.add(threading.current_thread().name)
            release.wait(WAIT)
            blocked_got.append(int(msg.data))

        def raising(msg: natsync.Msg) -> None:
            cb_threads.add(threading.current_thread().name)
            raise ValueError(f"boom {msg.data!r}")

        fast_got: list[int] = []
        fast_done = threading.Event()

        def fast(msg: natsync.Msg) -> None:
            cb_threads.add(threading.current_thread().name)
            fast_got.append(int(msg.data))
            if len(fast_got) == 200:
                fast_done.set()

        s_block = nc.subscribe("blocked", cb=blocking)
        nc.subscribe("raising", cb=raising)
        nc.subscribe("fast", cb=fast)
        sync_sub = nc.subscribe("sync")
        nc.flush(timeout=WAIT)
        for i in range(200):
            other.publish("blocked", b"%d" % i)
            other.publish("raising", b"%d" % i)
            other.publish("fast", b"%d" % i)
            other.publish("sync", b"%d" % i)
        other.flush(timeout=WAIT)
        # one callback and error_cb are stuck; everything else flows
        assert fast_done.wait(WAIT), "a blocked callback or a slow error_cb stalled another subscription"
        assert [int(sync_sub.next_msg(timeout=WAIT).data) for _ in range(200)] == list(range(200))
        nc.flush(timeout=WAIT)  # the reader still reads
        assert fast_got == list(range(200))
        assert not release.is_set() and len(blocked_got) == 0
        assert s_block.pending_msgs >= 199
        release.set()
        assert wait_until(lambda: len(blocked_got) == 200 and len(errors) == 200)
        assert blocked_got == list(range(200))
        assert all(isinstance(e.__cause__, ValueError) for e in errors)
        assert error_threads == {"natsync-events"}
        assert all(name.startswith("natsync-sub-") for name in cb_threads), cb_threads
        assert nc.is_connected
    finally:
        release.set()
        nc.close()
        other.close()


# ------------------------------------------------------------ user code in the reconnect


def test_token_callable_failing_during_reconnect_is_reported_and_retried() -> None:
    calls = [0]
    lock = threading.Lock()

    def token() -> str:
        with lock:
            calls[0] += 1
            n = calls[0]
        if n in (2, 3):
            raise RuntimeError("vault unreachable")
        return "rotating"

    rec = Recorder()
    with NATSServer(token="rotating") as srv:
        nc = natsync.connect(srv.url, token=token, **FAST, **rec.options())
        try:
            srv.restart()
            assert rec.wait_count("reconnected"), f"the reader died on the callable's error: {rec.errors}"
            failures = [e for e in rec.errors if isinstance(e.__cause__, RuntimeError)]
            assert len(failures) == 2, rec.errors
            assert "vault unreachable" in str(failures[0])
            nc.flush(timeout=WAIT)
            assert calls[0] >= 4
        finally:
            nc.close()


def test_token_callable_failing_on_first_connect_leaves_no_thread() -> None:
    def token() -> str:
        raise RuntimeError("vault unreachable")

    with NATSServer(token="x") as srv:
        with pytest.raises(RuntimeError, match="vault unreachable"):
            natsync.connect(srv.url, token=token, **FAST)
    # the autouse fixture checks that no natsync thread (e.g. the event thread) is left

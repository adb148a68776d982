"""Regression tests for issue 7: the client's own lifecycle (nothing lost, nothing
leaked, nothing hung), one or more tests per bullet of the issue's "Why" section.

Every test talks to a real nats-server (one per module) directly or through the
loopback proxy of ``tests/proxy.py``; ``proxy.stall_client()`` reproduces a peer that
stops reading.  The scripted fake server is used only for a handshake that a real
server never gets wrong.  Each docstring names the bullet it covers.

Bullets of "Why", as numbered in the docstrings: #1 a peer that stops reading (request,
flush, respond, large publish, the reconnect's resend); #2 close() and unsubscribe()
with queued callback messages, pending_bytes; #3 drain during a reconnect; #4 nc.drain()
and auto-unsubscribed or unsubscribing subscriptions; #5 next_msg() wake-ups and the
max_msgs race; #6 fork; #7 exit without close(); #8 drain()/request() while
disconnected; #9 a callback that always raises; #10 reconnect_buffer_size charging;
#11 the quieter gaps (one test per gap).

Calls that could hang run on a thread joined with a bound (the call's own timeout plus
a generous margin), so that a hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import inspect
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fakeserver import FakeConn, FakeServer
from proxy import TCPProxy
from recorder import Recorder, wait_until

import natsync
from natsync._servers import parse_servers
from natsync.testing import NATSServer

WAIT = 10.0  # upper bound for anything that should happen "soon"
MARGIN = 2.0  # a call with a timeout must have returned by timeout + MARGIN
MiB = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))  # scripts run here: natsync comes from the install
FAST: dict[str, Any] = {
    "reconnect_time_wait": 0.05,
    "reconnect_jitter": 0.0,
    "connect_timeout": 1.0,
    "max_reconnect_attempts": -1,
}


def _accepts(option: str) -> bool:
    return option in inspect.signature(natsync.Client.connect).parameters


# flusher_timeout is new in issue 7; where it does not exist yet the calls under test hang
# (which is what these tests catch), so it is passed only where the client knows it.
FLUSHER_1S: dict[str, Any] = {"flusher_timeout": 1.0} if _accepts("flusher_timeout") else {}


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as srv:
        yield srv


@pytest.fixture
def proxy(server: NATSServer) -> Iterator[TCPProxy]:
    # a small receive buffer: a stalled client connection fills up after little data
    with TCPProxy("127.0.0.1", server.port, client_rcvbuf=32 * 1024) as px:
        yield px


class Clients:
    """Connects clients and closes them all at the end of the test, each close bounded."""

    def __init__(self) -> None:
        self.clients: list[natsync.Client] = []

    def connect(self, url: str, **options: Any) -> natsync.Client:
        nc = natsync.connect(url, **options)
        self.clients.append(nc)
        return nc

    def close_all(self) -> None:
        for nc in self.clients:
            t = threading.Thread(target=_quiet(nc.close), name="test-close", daemon=True)
            t.start()
            t.join(WAIT)


@pytest.fixture
def clients() -> Iterator[Clients]:
    c = Clients()
    try:
        yield c
    finally:
        c.close_all()


def _quiet(fn: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - teardown of a client under test
            pass

    return run


class Outcome:
    """What a call run by :func:`bounded` did."""

    def __init__(self) -> None:
        self.finished = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.elapsed = 0.0


def bounded(fn: Callable[[], Any], bound: float) -> Outcome:
    """Run *fn* on a thread; wait at most *bound* seconds for it.  A call still running
    then is left behind (a daemon thread) and reported as not finished."""
    out = Outcome()
    start = time.monotonic()

    def run() -> None:
        try:
            out.value = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out.error = e
        finally:
            out.elapsed = time.monotonic() - start
            out.finished = True

    t = threading.Thread(target=run, name="test-bounded-call", daemon=True)
    t.start()
    t.join(bound)
    return out


def raw_publish(server: NATSServer, messages: list[tuple[str, bytes]]) -> None:
    """Publish *messages* over a plain socket (CONNECT, the PUBs, PING; wait for PONG)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"INFO ")
        out = bytearray(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        for subject, data in messages:
            out += b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(data), data)
        out += b"PING\r\n"
        s.sendall(out)
        while True:
            line = f.readline()
            assert line, "the server closed the connection"
            if line.startswith(b"PONG"):
                return
            assert not line.startswith(b"-ERR"), line


def natsync_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("natsync") and t.is_alive()}


def jam(nc: natsync.Client, total: int = 12 * MiB, chunk: int = 1000 * 1000) -> threading.Thread:
    """Publish *total* bytes from a thread to a peer that reads none of them: more than
    the kernel buffers hold (client send buffer up to 4 MiB, the proxy's 32 KiB), so the
    socket stays full.  Whatever the publishes raise is ignored; the thread ends when the
    client closes.  Returns once the thread has finished or has been at it for 0.5 s."""
    payload = b"j" * chunk
    done = threading.Event()

    def run() -> None:
        try:
            for _ in range(total // chunk):
                nc.publish("lifecycle.jam", payload)
        except natsync.NatsError:
            pass
        finally:
            done.set()

    t = threading.Thread(target=run, name="test-jam", daemon=True)
    t.start()
    done.wait(0.5)
    return t


# ------------------------------------------------------------ a peer that stops reading


@pytest.mark.parametrize("ping_interval", [0, 120])
def test_request_returns_by_its_timeout_when_the_peer_stops_reading(
    proxy: TCPProxy, clients: Clients, ping_interval: float
) -> None:
    """Why #1: request(timeout=0.5) stayed blocked for minutes (forever with
    ping_interval=0) behind another thread's sendall when the peer stopped reading."""
    nc = clients.connect(proxy.url, ping_interval=ping_interval, flush_timeout=0.5)  # bounds close()
    nc.flush(timeout=WAIT)
    assert proxy.stall_client() == 1
    jam(nc)
    out = bounded(lambda: nc.request("lifecycle.svc", b"ping", timeout=0.5), 0.5 + MARGIN)
    assert out.finished, "request(timeout=0.5) still blocked 2.5 s later: the peer stopped reading"
    assert isinstance(out.error, natsync.TimeoutError), out.error


@pytest.mark.parametrize("ping_interval", [0, 120])
def test_flush_returns_by_its_timeout_when_the_peer_stops_reading(
    proxy: TCPProxy, clients: Clients, ping_interval: float
) -> None:
    """Why #1: flush(timeout=0.5) stayed blocked for minutes (forever with
    ping_interval=0) when the peer stopped reading."""
    nc = clients.connect(proxy.url, ping_interval=ping_interval, flush_timeout=0.5)  # bounds close()
    nc.flush(timeout=WAIT)
    proxy.stall_client()
    jam(nc)
    out = bounded(lambda: nc.flush(timeout=0.5), 0.5 + MARGIN)
    assert out.finished, "flush(timeout=0.5) still blocked 2.5 s later: the peer stopped reading"
    assert isinstance(out.error, natsync.TimeoutError), out.error


def test_drain_returns_by_its_timeout_when_the_peer_stops_reading(proxy: TCPProxy) -> None:
    """Why #1 (every call that takes a timeout returns by it, whatever the socket does):
    nc.drain(timeout=1) on a connection whose peer stopped reading returns (raising
    natsync.TimeoutError, the client closed) by its timeout, closing included."""
    nc = natsync.connect(proxy.url, ping_interval=0)
    try:
        nc.subscribe("lifecycle.sdrain.stall", cb=lambda m: None)
        nc.flush(timeout=WAIT)
        proxy.stall_client()
        jam(nc)
        out = bounded(lambda: nc.drain(timeout=1.0), 1.0 + 1.5)
        assert out.finished, "drain(timeout=1) still running 2.5 s later: the peer stopped reading"
        assert isinstance(out.error, natsync.TimeoutError), repr(out.error)
        assert nc.is_closed
    finally:
        bounded(nc.close, WAIT)


def test_respond_and_large_publish_return_when_the_peer_stops_reading(
    server: NATSServer, proxy: TCPProxy, clients: Clients
) -> None:
    """Why #1: respond() and large publishes stayed blocked forever (ping_interval=0)
    when the peer stopped reading.  Neither takes a timeout: each must return (or raise
    a natsync error) within the writer's deadline, flusher_timeout (1 s here)."""
    nc = clients.connect(proxy.url, ping_interval=0, **FAST, **FLUSHER_1S)
    observer = clients.connect(server.url)
    sub = nc.subscribe("lifecycle.ask")
    nc.flush(timeout=WAIT)
    observer.publish("lifecycle.ask", b"q", reply="lifecycle.answer")
    observer.flush(timeout=WAIT)
    msg = sub.next_msg(timeout=WAIT)
    proxy.stall_client()
    jam(nc)
    out = bounded(lambda: msg.respond(b"a"), 1.0 + 4 * MARGIN)
    assert out.finished, "respond() still blocked 9 s after the peer stopped reading"
    assert out.error is None or isinstance(out.error, natsync.NatsError), out.error
    out = bounded(lambda: nc.publish("lifecycle.big", b"b" * 900_000), 1.0 + 4 * MARGIN)
    assert out.finished, "a large publish still blocked 9 s after the peer stopped reading"
    assert out.error is None or isinstance(out.error, natsync.NatsError), out.error
    out = bounded(nc.close, 2.0 + 4 * MARGIN)
    assert out.finished and out.error is None, out.error


def test_flusher_timeout_breaks_a_stalled_connection_and_reconnects(
    proxy: TCPProxy, clients: Clients
) -> None:
    """Why #1 / What #2: a write stalled past flusher_timeout breaks the connection and
    the reconnect starts (before: a sendall with no deadline, forever with
    ping_interval=0)."""
    rec = Recorder()
    nc = clients.connect(proxy.url, ping_interval=0, flusher_timeout=0.5, **FAST, **rec.options())
    nc.flush(timeout=WAIT)
    proxy.stall_client()  # this connection only: the reconnect gets through
    jam(nc)
    assert rec.wait_count("disconnected"), "the stalled connection was not broken"
    assert rec.wait_count("reconnected"), "no reconnect after the stalled connection broke"
    assert proxy.accepted >= 2
    nc.flush(timeout=WAIT)


def test_reconnect_resend_to_a_stalled_peer_is_bounded() -> None:
    """Why #1: the reconnect's resend (subscriptions and what was buffered) had the same
    blocking sendall, on the reader thread.  A server that completes the handshake and
    then reads nothing must be given up after flusher_timeout, and the next attempt made."""
    go = threading.Event()
    stalled_handshake = threading.Event()

    def first(c: FakeConn) -> None:
        c.handshake()
        closer = threading.Thread(target=lambda: (go.wait(WAIT), c.close()), name="fake-closer", daemon=True)
        closer.start()
        c.serve()  # until the closer shuts the connection down
        closer.join(WAIT)

    def refuse(c: FakeConn) -> None:
        return  # closed before INFO: the attempt fails, the client waits reconnect_time_wait

    def stall(c: FakeConn) -> None:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.handshake()
        stalled_handshake.set()
        c.wait(60)  # read nothing until the server closes

    def serve(c: FakeConn) -> None:
        c.handshake()
        c.serve()

    rec = Recorder()
    with FakeServer([first, refuse, stall], default=serve) as fake:
        nc = natsync.connect(
            fake.url,
            ping_interval=0,
            reconnect_time_wait=1.0,
            reconnect_jitter=0.0,
            connect_timeout=2.0,
            max_reconnect_attempts=-1,
            reconnect_buffer_size=64 * MiB,
            **({"flusher_timeout": 0.5} if FLUSHER_1S else {}),
            **rec.options(),
        )
        try:
            for i in range(200):
                nc.subscribe(f"lifecycle.resend.{i}")
            nc.flush(timeout=WAIT)
            go.set()
            assert rec.wait_count("disconnected")
            assert wait_until(lambda: fake.accepted >= 2)
            # buffered while disconnected: resent on the next connection, which reads nothing
            for _ in range(8):
                nc.publish("lifecycle.resend", b"r" * 900_000)
            assert stalled_handshake.wait(WAIT)
            assert wait_until(lambda: fake.accepted >= 4, WAIT), (
                "the reconnect's resend to a server that reads nothing was never given up"
            )
            assert rec.wait_count("reconnected")
            nc.flush(timeout=WAIT)  # the next connection works
        finally:
            out = bounded(nc.close, 2.0 + 4 * MARGIN)
        assert out.finished and out.error is None, out.error


# ----------------------------------------------------------------------------- close()


def test_close_discards_queued_callback_messages_and_returns_promptly(
    server: NATSServer, clients: Clients
) -> None:
    """Why #2: close() ran every queued callback message (4 subscriptions x 400 queued,
    50 ms callbacks: 20 s, 1,593 callbacks) and left threads alive.  Now: it returns
    promptly, no callback starts after it returned (one already running may finish),
    no natsync thread is left, disconnected_cb then closed_cb run exactly once."""
    before = natsync_threads()
    events: list[str] = []
    lock = threading.Lock()

    def note(what: str) -> Callable[[], None]:
        def cb() -> None:
            with lock:
                events.append(what)

        return cb

    started = 0
    after_close = 0
    closed = threading.Event()
    first = threading.Event()

    def slow(msg: natsync.Msg) -> None:
        nonlocal started, after_close
        with lock:
            started += 1
            if closed.is_set():
                after_close += 1
        first.set()
        time.sleep(0.05)

    nc = natsync.connect(
        server.url, disconnected_cb=note("disconnected"), closed_cb=note("closed"), pending_msgs_limit=None
    )
    try:
        for i in range(4):
            nc.subscribe(f"lifecycle.close.{i}", cb=slow)
        nc.flush(timeout=WAIT)
        # published from a raw socket: no other client's threads to tell apart
        raw_publish(server, [(f"lifecycle.close.{i}", b"x") for i in range(4) for _ in range(400)])
        nc.flush(timeout=WAIT)  # every message is queued by now (the server sent them before the PONG)
        assert first.wait(WAIT)
    finally:
        out = bounded(nc.close, 3.0)
        closed.set()
    assert out.finished, "close() with 1,600 queued callback messages took over 3 s"
    assert out.error is None, out.error
    left = natsync_threads() - before
    assert not left, f"natsync threads alive after close(): {sorted(t.name for t in left)}"
    with lock:
        ran = started
    time.sleep(0.2)  # would any callback still start? (none may: they are discarded)
    with lock:
        assert started == ran and after_close == 0, f"{after_close} callbacks started after close() returned"
        assert ran < 100, f"close() ran {ran} queued callbacks instead of discarding them"
        assert events == ["disconnected", "closed"], events


def test_close_calls_disconnected_cb_then_closed_cb(server: NATSServer) -> None:
    """Why #11 (quieter gaps): close() never called disconnected_cb (nats.go and nats-py
    do, when the client was connected)."""
    events: list[str] = []
    nc = natsync.connect(
        server.url,
        disconnected_cb=lambda: events.append("disconnected"),
        closed_cb=lambda: events.append("closed"),
    )
    nc.close()
    nc.close()
    assert wait_until(lambda: len(events) >= 2, 2.0), events
    assert events == ["disconnected", "closed"]


def test_unsubscribe_does_not_wait_for_a_busy_callback(server: NATSServer, clients: Clients) -> None:
    """Why #2: unsubscribe() waited up to 5 s behind a busy callback.  It must return
    at once; the pending messages are discarded (no callback runs after it returns)."""
    nc = clients.connect(server.url)
    release = threading.Event()
    entered = threading.Event()
    calls = 0

    def busy(msg: natsync.Msg) -> None:
        nonlocal calls
        calls += 1
        entered.set()
        release.wait(WAIT)

    sub = nc.subscribe("lifecycle.busy", cb=busy)
    nc.flush(timeout=WAIT)
    for _ in range(5):
        nc.publish("lifecycle.busy", b"x")
    nc.flush(timeout=WAIT)
    assert entered.wait(WAIT)
    try:
        out = bounded(sub.unsubscribe, 1.0)
        assert out.finished, "unsubscribe() waited for a busy callback"
        assert out.error is None, out.error
    finally:
        release.set()
    time.sleep(0.2)
    assert calls == 1, f"{calls - 1} callbacks ran after unsubscribe() returned"


def test_pending_bytes_is_zero_after_the_queue_is_discarded(server: NATSServer, clients: Clients) -> None:
    """Why #2: pending_bytes stayed non-zero after unsubscribe() or close() discarded
    the queue."""
    nc = clients.connect(server.url)
    a = nc.subscribe("lifecycle.pending")
    b = nc.subscribe("lifecycle.pending")
    nc.flush(timeout=WAIT)
    for _ in range(10):
        nc.publish("lifecycle.pending", b"0123456789")
    nc.flush(timeout=WAIT)
    assert a.pending_msgs == 10 and a.pending_bytes == 100
    a.unsubscribe()
    assert (a.pending_msgs, a.pending_bytes) == (0, 0)
    assert b.pending_bytes == 100
    nc.close()
    assert (b.pending_msgs, b.pending_bytes) == (0, 0)


def test_concurrent_second_close_returns_after_the_first_finished(proxy: TCPProxy) -> None:
    """Why #11 (quieter gaps): a second concurrent close() returned before the first
    finished.  The first close() is kept busy (a callback still running, and a final
    flush to a peer that stopped reading); the second must wait for it: when it
    returns, closed_cb has run and no thread of the client is left."""
    before = natsync_threads()
    closed = threading.Event()
    entered = threading.Event()
    release = threading.Event()

    def busy(msg: natsync.Msg) -> None:
        entered.set()
        release.wait(WAIT)

    nc = natsync.connect(proxy.url, closed_cb=closed.set, ping_interval=0)
    first = threading.Thread(target=_quiet(nc.close), name="test-close-1", daemon=True)
    try:
        nc.subscribe("lifecycle.close2", cb=busy)
        nc.publish("lifecycle.close2", b"x")
        nc.flush(timeout=WAIT)
        assert entered.wait(WAIT)
        proxy.stall_client()
        jam(nc, total=6 * MiB)
        first.start()
        assert wait_until(lambda: nc.is_closed, WAIT)
        second = bounded(nc.close, 0.3)
        assert not second.finished, "a second close() returned while the first was still closing"
    finally:
        release.set()
    first.join(WAIT)
    assert wait_until(lambda: second.finished, WAIT)
    assert second.error is None, second.error
    assert closed.is_set() and not (natsync_threads() - before)


# ------------------------------------------------------------------ drain and reconnect


def _count_arrivals(nc: natsync.Client, publisher: natsync.Client, subject: str, n: int = 1000) -> int:
    """Publish *n* messages from *publisher*; return how many reached *nc*'s socket."""
    in_before = nc.stats.in_msgs
    for _ in range(n):
        publisher.publish(subject, b"late")
    publisher.flush(timeout=WAIT)
    nc.flush(timeout=WAIT)  # what the server routed to nc arrived before this PONG
    return nc.stats.in_msgs - in_before


def test_sub_drain_during_a_reconnect_leaves_no_interest(
    server: NATSServer, proxy: TCPProxy, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    """Why #3: sub.drain() started during a reconnect left the interest on the server
    (1,000 of 1,000 messages arrived after drain() returned), and the reconnect could
    fail with "dictionary changed size during iteration"."""
    rec = Recorder()
    nc = clients.connect(proxy.url, **FAST, **rec.options())
    observer = clients.connect(server.url)
    sub = nc.subscribe("lifecycle.sdrain")
    others = [nc.subscribe(f"lifecycle.sdrain.{i}") for i in range(300)]
    nc.flush(timeout=WAIT)
    proxy.refuse()
    proxy.cut()
    assert rec.wait_count("disconnected")
    assert nc.is_reconnecting
    drained = threading.Thread(target=_quiet(lambda: sub.drain(timeout=WAIT)), name="test-drain", daemon=True)
    drained.start()
    # more subscriptions change while the reconnect resends them
    churn = threading.Thread(
        target=_quiet(lambda: [s.unsubscribe() for s in others[::2]]), name="test-churn", daemon=True
    )
    churn.start()
    time.sleep(0.1)
    proxy.refuse(False)
    assert rec.wait_count("reconnected")
    drained.join(WAIT)
    churn.join(WAIT)
    assert not drained.is_alive()
    assert not sub.is_valid
    assert _count_arrivals(nc, observer, "lifecycle.sdrain") == 0, "interest left on the server after drain()"
    with pytest.raises(natsync.NoRespondersError):
        observer.request("lifecycle.sdrain", b"", timeout=WAIT)
    texts = [r.getMessage() + str(r.exc_info) for r in caplog.records] + [str(e) for e in rec.errors]
    assert not [t for t in texts if "changed size" in t], texts


def test_nc_drain_during_a_reconnect_leaves_no_interest(
    server: NATSServer, proxy: TCPProxy, clients: Clients
) -> None:
    """Why #3: nc.drain() started during a reconnect: the reconnect resent SUB for the
    draining subscriptions and no UNSUB followed.  While the drain still waits for a
    busy callback, the server must route nothing more to the client."""
    rec = Recorder()
    nc = clients.connect(proxy.url, **FAST, **rec.options())
    observer = clients.connect(server.url)
    release = threading.Event()
    entered = threading.Event()

    def busy(msg: natsync.Msg) -> None:
        entered.set()
        release.wait(WAIT)

    nc.subscribe("lifecycle.ndrain", cb=busy)
    nc.subscribe("lifecycle.ndrain.sync")
    nc.publish("lifecycle.ndrain", b"hold")
    nc.flush(timeout=WAIT)
    assert entered.wait(WAIT)
    proxy.refuse()
    proxy.cut()
    assert rec.wait_count("disconnected")
    drain = threading.Thread(target=_quiet(lambda: nc.drain(timeout=WAIT)), name="test-drain", daemon=True)
    try:
        drain.start()
        assert wait_until(lambda: nc.is_draining or nc.is_closed)
        proxy.refuse(False)
        if nc.is_closed:
            return  # drained (closed) at once while disconnected: no interest can be left
        assert rec.wait_count("reconnected")
        assert wait_until(lambda: nc.is_connected or nc.is_draining)
        for subject in ("lifecycle.ndrain", "lifecycle.ndrain.sync"):
            with pytest.raises(natsync.NoRespondersError):
                observer.request(subject, b"", timeout=2.0)  # interest left: a timeout
    finally:
        release.set()
        drain.join(WAIT)
    assert nc.is_closed


def test_connection_lost_during_nc_drain_resends_no_draining_subscription(
    server: NATSServer, proxy: TCPProxy, clients: Clients
) -> None:
    """Why #3: the reconnect resent SUB for draining subscriptions and no UNSUB
    followed.  nc.drain() starts while connected (a busy callback holds it open), then
    the connection is cut: the client either closes, or reconnects without renewing
    any interest of the drained subscriptions.  (A guard for the new state machine:
    the old code closed here, so this one passes on it too.)"""
    rec = Recorder()
    nc = clients.connect(proxy.url, **FAST, **rec.options())
    observer = clients.connect(server.url)
    release = threading.Event()
    entered = threading.Event()

    def busy(msg: natsync.Msg) -> None:
        entered.set()
        release.wait(WAIT)

    nc.subscribe("lifecycle.cdrain", cb=busy)
    nc.subscribe("lifecycle.cdrain.sync")
    nc.publish("lifecycle.cdrain", b"hold")
    nc.flush(timeout=WAIT)
    assert entered.wait(WAIT)
    drain = threading.Thread(target=_quiet(lambda: nc.drain(timeout=WAIT)), name="test-drain", daemon=True)
    try:
        drain.start()
        assert wait_until(lambda: nc.is_draining)
        proxy.cut()
        assert rec.wait_count("disconnected")
        assert wait_until(lambda: nc.is_closed or rec.counts["reconnected"] > 0)
        if not nc.is_closed:
            for subject in ("lifecycle.cdrain", "lifecycle.cdrain.sync"):
                with pytest.raises(natsync.NoRespondersError):
                    observer.request(subject, b"", timeout=2.0)  # interest renewed: a timeout
    finally:
        release.set()
        drain.join(WAIT)
    assert nc.is_closed


def test_nc_drain_waits_for_a_subscription_that_reached_its_limit(
    server: NATSServer, clients: Clients
) -> None:
    """Why #4: nc.drain() ignored a callback subscription that had reached its
    unsubscribe(limit=N): it returned at once and the callbacks ran after closed_cb."""
    log: list[str] = []
    lock = threading.Lock()

    def on_closed() -> None:
        with lock:
            log.append("closed")

    def slow(msg: natsync.Msg) -> None:
        time.sleep(0.02)
        with lock:
            log.append(msg.subject)

    nc = clients.connect(server.url, closed_cb=on_closed)
    limited = nc.subscribe("lifecycle.limit", cb=slow)
    limited.unsubscribe(limit=20)
    nc.subscribe("lifecycle.other", cb=slow)
    nc.flush(timeout=WAIT)
    for _ in range(25):
        nc.publish("lifecycle.limit", b"x")
    for _ in range(10):
        nc.publish("lifecycle.other", b"y")
    nc.flush(timeout=WAIT)
    nc.drain(timeout=WAIT)
    with lock:
        at_return = list(log)
    assert wait_until(lambda: "closed" in log, WAIT)
    time.sleep(0.2)
    with lock:
        final = list(log)
    assert at_return.count("lifecycle.limit") == 20, "drain() returned before the limited sub's callbacks ran"
    assert at_return.count("lifecycle.other") == 10
    assert final[-1] == "closed", f"callbacks ran after closed_cb: {final[final.index('closed') :]}"
    assert final.count("closed") == 1


def test_sub_unsubscribe_during_nc_drain_is_refused(server: NATSServer, clients: Clients) -> None:
    """Why #4: sub.unsubscribe() during nc.drain() was accepted and threw away what was
    pending.  nats.go refuses it with a draining error: ConnectionDrainingError, and
    every pending message is still delivered."""
    nc = clients.connect(server.url)
    release = threading.Event()
    got: list[bytes] = []

    def cb(msg: natsync.Msg) -> None:
        release.wait(WAIT)
        got.append(msg.data)

    sub = nc.subscribe("lifecycle.unsub_drain", cb=cb)
    nc.flush(timeout=WAIT)
    for i in range(10):
        nc.publish("lifecycle.unsub_drain", b"%d" % i)
    nc.flush(timeout=WAIT)
    drain = threading.Thread(target=_quiet(lambda: nc.drain(timeout=WAIT)), name="test-drain", daemon=True)
    drain.start()
    try:
        assert wait_until(lambda: nc.is_draining)
        with pytest.raises(natsync.ConnectionDrainingError):
            sub.unsubscribe()
    finally:
        release.set()
        drain.join(WAIT)
    assert nc.is_closed
    assert got == [b"%d" % i for i in range(10)]


# -------------------------------------------------------------------------- next_msg()


def test_two_threads_in_next_msg_are_each_woken_by_a_message(server: NATSServer, clients: Clients) -> None:
    """Why #5: with two threads blocked in next_msg() on one subscription, the second was
    woken only by a 1 s poll (a lost wake-up).  Each must get its message promptly."""
    nc = clients.connect(server.url)
    sub = nc.subscribe("lifecycle.waiters")
    nc.flush(timeout=WAIT)
    for round_ in range(3):
        got: list[float] = []
        lock = threading.Lock()
        ready = threading.Barrier(3, timeout=WAIT)

        def wait_one(ready: threading.Barrier, lock: threading.Lock, got: list[float]) -> None:
            ready.wait()
            sub.next_msg(timeout=5.0)
            with lock:
                got.append(time.monotonic())

        threads = [
            threading.Thread(target=wait_one, args=(ready, lock, got), name=f"test-waiter-{i}", daemon=True)
            for i in range(2)
        ]
        for t in threads:
            t.start()
        ready.wait()
        time.sleep(0.1)  # both are asleep in next_msg by now (a late one finds its message at once)
        sent = time.monotonic()
        nc.publish("lifecycle.waiters", b"1")
        nc.publish("lifecycle.waiters", b"2")
        nc.flush(timeout=WAIT)
        for t in threads:
            t.join(WAIT)
        assert len(got) == 2
        slowest = max(got) - sent
        assert slowest < 0.5, f"round {round_}: a waiter got its message {slowest:.2f} s after the publish"


def test_max_msgs_last_message_is_never_left_in_the_queue(
    server: NATSServer, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why #5: the last message of a max_msgs subscription could be left in the queue
    when it arrived between the consumer's "take" and its "has it ended" check, so that
    iteration ended one message short.  The window is widened with an injected delay
    where the old code had it (after an empty take); code that takes and checks in one
    critical section has no such window."""
    from natsync.subscription import Subscription

    take = getattr(Subscription, "_take", None)
    if take is not None:

        def slow_take(self: Subscription) -> Any:
            msg = take(self)
            if msg is None:
                time.sleep(0.002)
            return msg

        monkeypatch.setattr(Subscription, "_take", slow_take)
    nc = clients.connect(server.url)
    pub = clients.connect(server.url)
    for i in range(60):
        subject = f"lifecycle.max.{i}"
        sub = nc.subscribe(subject, max_msgs=3)
        nc.flush(timeout=WAIT)
        got: list[bytes] = []
        t = threading.Thread(
            target=lambda g=got, s=sub: g.extend(m.data for m in s), name="test-iter", daemon=True
        )
        t.start()
        for k in range(3):
            pub.publish(subject, b"%d" % k)
            pub.flush(timeout=WAIT)  # spaced arrivals: the last one may land in the window
        t.join(WAIT)
        assert not t.is_alive()
        assert got == [b"0", b"1", b"2"], f"iteration {i}: got {got}"


# -------------------------------------------------------------------------------- fork


def _run_in_child(fn: Callable[[], str]) -> str:
    """Fork; run *fn* in the child; return its string result (through a pipe)."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            try:
                result = fn()
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                result = f"child crashed: {type(e).__name__}: {e}"
            os.write(w, result.encode())
            os.close(w)
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        data = os.read(r, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_fork_child_gets_its_own_inbox_prefix_and_a_fork_error(server: NATSServer) -> None:
    """Why #6: after os.fork() the child's new clients got the same inbox prefixes as
    the parent's (the NUID was not reseeded), so replies crossed between processes; the
    error for using the parent's client in the child must say "fork"."""
    nc = natsync.connect(server.url)
    try:
        nc.flush(timeout=WAIT)

        def child() -> str:
            try:
                nc.publish("lifecycle.fork", b"x")
                error = "no error"
            except natsync.ConnectionClosedError as e:
                error = f"closed: {e}"
            with natsync.connect(server.url) as c2:
                inbox = c2.new_inbox()
            return f"{inbox}\n{error}"

        result = _run_in_child(child)
        assert not result.startswith("child crashed"), result
        child_inbox, error = result.split("\n", 1)
        with natsync.connect(server.url) as p2:  # the parent does the same after the fork
            parent_inbox = p2.new_inbox()
        # a NUID is a 12-character random prefix and a 10-character sequence
        assert child_inbox[:-10] != parent_inbox[:-10], (child_inbox, parent_inbox)
        assert error.startswith("closed: "), error
        assert "fork" in error.lower(), error
    finally:
        nc.close()


# --------------------------------------------------------------------- interpreter exit


def _script(body: str) -> str:
    return "import sys, natsync\n" + textwrap.dedent(body)


def _run_script(source: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", source, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=HERE,
    )


def test_a_script_that_exits_without_close_delivers_what_it_published(
    server: NATSServer, clients: Clients
) -> None:
    """Why #7: a script that published and exited without close() lost the messages
    (0 of 10 delivered): there was no flush at interpreter exit."""
    observer = clients.connect(server.url)
    sub = observer.subscribe("lifecycle.exit")
    observer.flush(timeout=WAIT)
    done = _run_script(
        _script("""
            nc = natsync.connect(sys.argv[1])
            for i in range(10):
                nc.publish("lifecycle.exit", b"%d" % i)
        """),
        server.url,
    )
    assert done.returncode == 0, done.stderr
    got = []
    try:
        while len(got) < 10:
            got.append(sub.next_msg(timeout=2.0).data)
    except natsync.TimeoutError:
        pass
    assert got == [b"%d" % i for i in range(10)], f"{len(got)} of 10 delivered"


@pytest.mark.parametrize("options", ["", "flush_on_exit=False"])
def test_exit_flush_is_bounded_on_a_dead_server_and_can_be_turned_off(proxy: TCPProxy, options: str) -> None:
    """Why #7: the flush at exit is bounded (about 2 s in all) so that exit never hangs
    on a server that stopped reading; the documented opt-out (flush_on_exit=False) is
    accepted and exits without hanging too."""
    source = _script(f"""
        nc = natsync.connect(sys.argv[1], ping_interval=0, {options})
        nc.flush(timeout=5)
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(2):  # fits in the kernel buffers: publish itself never blocks
            nc.publish("lifecycle.exit.dead", b"d" * 1000000)
        print("exiting", flush=True)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", source, proxy.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=HERE,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().strip()  # connect() is bounded by connect_timeout
        if ready != "ready":
            _, err = proc.communicate(timeout=WAIT)
            pytest.fail(f"the script failed: {err}")
        proxy.stall_client()
        try:
            out, err = proc.communicate("go\n", timeout=2.0 + 3 * MARGIN)
        except subprocess.TimeoutExpired:
            pytest.fail("the interpreter did not exit within 8 s: the exit flush is not bounded")
        assert "exiting" in out, err
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=WAIT)


# ----------------------------------------------------------------------- disconnected


def _disconnect(proxy: TCPProxy, rec: Recorder) -> None:
    """Cut the client's connection and keep the server unreachable until refuse(False)."""
    proxy.refuse()
    proxy.cut()
    assert rec.wait_count("disconnected")


def test_drain_while_disconnected_closes_at_once(proxy: TCPProxy, clients: Clients) -> None:
    """Why #8: drain() while disconnected waited its whole timeout; nats.go closes at
    once (it may report that it was not connected, but never a timeout)."""
    rec = Recorder()
    nc = clients.connect(proxy.url, **{**FAST, "reconnect_time_wait": 0.2}, **rec.options())
    nc.subscribe("lifecycle.ddrain")
    nc.flush(timeout=WAIT)
    _disconnect(proxy, rec)
    out = bounded(lambda: nc.drain(timeout=5.0), 1.5)
    assert out.finished, "drain() while disconnected did not close at once"
    assert out.error is None or (
        isinstance(out.error, natsync.NatsError) and not isinstance(out.error, natsync.TimeoutError)
    ), repr(out.error)
    assert nc.is_closed
    assert rec.wait_count("closed")


def test_request_while_disconnected_says_so(proxy: TCPProxy, clients: Clients) -> None:
    """Why #8: a request() while disconnected said only "no reply within 0.5 s"; its
    error must say that the client is not connected (reconnecting)."""
    rec = Recorder()
    nc = clients.connect(proxy.url, **{**FAST, "reconnect_time_wait": 0.2}, **rec.options())
    nc.flush(timeout=WAIT)
    _disconnect(proxy, rec)
    out = bounded(lambda: nc.request("lifecycle.svc", b"", timeout=0.5), 0.5 + MARGIN)
    assert out.finished
    assert isinstance(out.error, natsync.NatsError), repr(out.error)
    text = str(out.error).lower()
    assert "not connected" in text or "reconnecting" in text, str(out.error)


# ------------------------------------------------------------------ bounded event queue


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_a_callback_that_always_raises_does_not_grow_memory(server: NATSServer, clients: Clients) -> None:
    """Why #9: a callback that raised on every message grew the event queue without
    bound (36,747 queued errors, +178 MiB: each kept its traceback and message).  With
    error_cb busy while 20,000 callbacks fail, memory stays flat and the errors are
    coalesced (error_cb is called fewer times than there were failures)."""
    release = threading.Event()
    reported = 0

    def error_cb(err: natsync.NatsError) -> None:
        nonlocal reported
        reported += 1
        release.wait(WAIT * 3)

    def bad(msg: natsync.Msg) -> None:
        raise ValueError("bad message " + "x" * 1000)

    import logging

    logger = logging.getLogger("natsync")
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.CRITICAL)  # keep pytest's log capture from holding 20,000 tracebacks
    logger.propagate = False
    try:
        nc = clients.connect(server.url, error_cb=error_cb, pending_msgs_limit=None)
        pub = clients.connect(server.url)
        sub = nc.subscribe("lifecycle.raise", cb=bad)
        nc.flush(timeout=WAIT)
        base = _rss()
        payload = b"p" * 1000
        for batch in range(1, 21):  # paced: what piles up is errors, not pending messages
            for _ in range(1000):
                pub.publish("lifecycle.raise", payload)
            pub.flush(timeout=WAIT)
            assert wait_until(lambda n=batch * 1000: sub.delivered >= n, 30.0), sub.delivered
        grown = _rss() - base
        release.set()
        assert grown < 16 * MiB, f"memory grew by {grown / MiB:.1f} MiB while 20,000 callback errors waited"
        nc.close()
        assert reported < 20_000, "every callback error was queued for error_cb: not coalesced"
    finally:
        release.set()
        logger.setLevel(old_level)
        logger.propagate = old_propagate


# ------------------------------------------------------------------ reconnect buffer


def test_reconnect_buffer_charges_wire_bytes(server: NATSServer, proxy: TCPProxy, clients: Clients) -> None:
    """Why #10: reconnect_buffer_size charged 28 bytes for `PUB foo 4\\r\\nfood\\r\\n`
    (17 on the wire).  A buffer of 5 x 17 bytes holds exactly 5 such messages."""
    rec = Recorder()
    nc = clients.connect(proxy.url, **FAST, reconnect_buffer_size=5 * 17, **rec.options())
    observer = clients.connect(server.url)
    sub = observer.subscribe("foo")
    observer.flush(timeout=WAIT)
    nc.flush(timeout=WAIT)
    _disconnect(proxy, rec)
    assert len(b"PUB foo 4\r\nfood\r\n") == 17
    for _ in range(5):
        nc.publish("foo", b"food")
    with pytest.raises(natsync.OutboundBufferFullError):
        nc.publish("foo", b"food")
    proxy.refuse(False)
    assert rec.wait_count("reconnected")
    nc.flush(timeout=WAIT)
    observer.flush(timeout=WAIT)
    assert sub.pending_msgs == 5


# ------------------------------------------------------------------- quieter gaps


def test_failed_reconnect_attempts_reach_error_cb(proxy: TCPProxy, clients: Clients) -> None:
    """Why #11: failed reconnect attempts never reached error_cb."""
    rec = Recorder()
    nc = clients.connect(proxy.url, **FAST, **rec.options())
    nc.flush(timeout=WAIT)
    _disconnect(proxy, rec)
    assert rec.wait_errors(2), "no failed reconnect attempt was reported to error_cb"
    assert all(isinstance(e, natsync.NatsError) for e in rec.errors)
    proxy.refuse(False)
    assert rec.wait_count("reconnected")


def test_last_error_holds_the_error_that_broke_the_connection(server: NATSServer, clients: Clients) -> None:
    """Why #11: the error that broke a connection was not surfaced anywhere: now
    nc.last_error (None while nothing went wrong)."""
    rec = Recorder()
    with NATSServer() as own:
        nc = clients.connect(own.url, **{**FAST, "max_reconnect_attempts": 1}, **rec.options())
        nc.flush(timeout=WAIT)
        assert nc.last_error is None
        own.stop()
        assert rec.wait_count("disconnected")
        err = nc.last_error
        assert isinstance(err, BaseException), err
        assert str(err)


def test_last_error_is_the_protocol_error_that_broke_the_connection() -> None:
    """Why #11: nc.last_error holds the error that broke the connection: here a server
    that sends an unknown operation (a ProtocolError), with no reconnect after it."""

    def garbage(c: FakeConn) -> None:
        c.handshake()
        c.send(b"BOGUS nonsense\r\n")
        c.wait(2)

    rec = Recorder()
    with FakeServer([garbage]) as fake:
        nc = natsync.connect(fake.url, allow_reconnect=False, **rec.options())
        try:
            assert rec.wait_count("closed")
            assert isinstance(nc.last_error, natsync.ProtocolError), repr(nc.last_error)
        finally:
            nc.close()


def test_empty_port_means_4222() -> None:
    """Why #11: "localhost:" (empty port) was refused where nats.go and nats-py read
    port 4222."""
    for url in ("localhost:", "nats://localhost:"):
        [srv] = parse_servers(url)
        assert (srv.host, srv.port) == ("localhost", 4222), url


def test_connect_with_an_empty_url_is_a_value_error() -> None:
    """Why #11: connect("") silently meant 127.0.0.1:4222 where nats-py refuses it."""
    with pytest.raises(ValueError):
        natsync.connect("", connect_timeout=0.5)
    with pytest.raises(ValueError):
        natsync.Client().connect("", connect_timeout=0.5)


def test_client_id_is_none_after_close(server: NATSServer) -> None:
    """Why #11: client_id kept its value after close()."""
    nc = natsync.connect(server.url)
    assert isinstance(nc.client_id, int)
    nc.close()
    assert nc.client_id is None


def test_next_msg_after_close_raises_even_with_queued_messages(server: NATSServer) -> None:
    """Why #11: next_msg() after close() returned the queued messages instead of
    raising ConnectionClosedError."""
    nc = natsync.connect(server.url)
    sub = nc.subscribe("lifecycle.closed_next")
    nc.flush(timeout=WAIT)
    for _ in range(3):
        nc.publish("lifecycle.closed_next", b"x")
    nc.flush(timeout=WAIT)
    nc.close()
    with pytest.raises(natsync.ConnectionClosedError):
        sub.next_msg(timeout=0.1)


def test_auto_unsubscribe_counts_the_remainder_after_a_reconnect(
    server: NATSServer, proxy: TCPProxy, clients: Clients
) -> None:
    """Why #11: after a reconnect an auto-unsubscribe's UNSUB counted from the new SUB.
    unsubscribe(limit=10), 4 received, reconnect, 10 published: exactly 6 more arrive.
    (The old code already resent the remainder here, so this one passes on it too; the
    next test is the case it got wrong.)"""
    rec = Recorder()
    nc = clients.connect(proxy.url, **FAST, **rec.options())
    pub = clients.connect(server.url)
    sub = nc.subscribe("lifecycle.autounsub")
    sub.unsubscribe(limit=10)
    nc.flush(timeout=WAIT)
    for i in range(4):
        pub.publish("lifecycle.autounsub", b"%d" % i)
    pub.flush(timeout=WAIT)
    assert [sub.next_msg(timeout=WAIT).data for _ in range(4)] == [b"0", b"1", b"2", b"3"]
    proxy.cut()
    assert rec.wait_count("reconnected")
    nc.flush(timeout=WAIT)
    in_before = nc.stats.in_msgs
    for i in range(4, 14):
        pub.publish("lifecycle.autounsub", b"%d" % i)
    pub.flush(timeout=WAIT)
    nc.flush(timeout=WAIT)
    got = []
    while True:
        try:
            got.append(sub.next_msg(timeout=0.2).data)
        except (natsync.TimeoutError, natsync.BadSubscriptionError):
            break
    assert got == [b"%d" % i for i in range(4, 10)]
    assert nc.stats.in_msgs - in_before == 6, "the server sent more than the remainder"
    assert not sub.is_valid


def test_auto_unsubscribe_set_after_a_reconnect_counts_what_was_received(
    server: NATSServer, proxy: TCPProxy, clients: Clients
) -> None:
    """Why #11: after a reconnect an auto-unsubscribe's UNSUB counted from the new SUB:
    4 received, reconnect, then unsubscribe(limit=10) and 10 published: the server must
    send exactly 6 (it counts from the new SUB, so the client has to send the remainder)."""
    rec = Recorder()
    nc = clients.connect(proxy.url, **FAST, **rec.options())
    pub = clients.connect(server.url)
    sub = nc.subscribe("lifecycle.autounsub2")
    nc.flush(timeout=WAIT)
    for i in range(4):
        pub.publish("lifecycle.autounsub2", b"%d" % i)
    pub.flush(timeout=WAIT)
    assert [sub.next_msg(timeout=WAIT).data for _ in range(4)] == [b"0", b"1", b"2", b"3"]
    proxy.cut()
    assert rec.wait_count("reconnected")
    sub.unsubscribe(limit=10)
    nc.flush(timeout=WAIT)
    in_before = nc.stats.in_msgs
    for i in range(4, 14):
        pub.publish("lifecycle.autounsub2", b"%d" % i)
    pub.flush(timeout=WAIT)
    nc.flush(timeout=WAIT)
    got = []
    while True:
        try:
            got.append(sub.next_msg(timeout=0.2).data)
        except (natsync.TimeoutError, natsync.BadSubscriptionError):
            break
    assert got == [b"%d" % i for i in range(4, 10)]
    assert nc.stats.in_msgs - in_before == 6, "the server sent more than the remainder"


def test_protocol_error_in_a_reconnect_handshake_reaches_error_cb() -> None:
    """Why #11: a ProtocolError during a reconnect handshake was only logged."""
    go = threading.Event()

    def first(c: FakeConn) -> None:
        c.handshake()
        go.wait(WAIT)

    def garbage(c: FakeConn) -> None:
        c.info()
        c.read_connect()
        c.send(b"BOGUS nonsense\r\n")  # an unknown operation instead of PONG
        c.wait(2)

    def serve(c: FakeConn) -> None:
        c.handshake()
        c.serve()

    rec = Recorder()
    with FakeServer([first, garbage], default=serve) as fake:
        nc = natsync.connect(fake.url, **FAST, **rec.options())
        try:
            go.set()
            assert rec.wait_count("reconnected")
            assert fake.accepted >= 3
            assert rec.errors_of(natsync.ProtocolError), f"error_cb got {rec.errors}"
        finally:
            nc.close()

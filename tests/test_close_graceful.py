"""close() loses nothing the server had not read yet (issue 15, the stress test's flake).

The cause: closing a TCP socket whose receive buffer still holds unread bytes (a PONG,
a server ``+OK`` or ``PING``) makes Linux send a reset (RST) instead of a FIN, and what
is still in the socket's send queue (accepted by ``send()``, not yet taken by a server
whose window was full) is thrown away. ``close()`` returned, ``stats.dropped_msgs`` said
0, and the messages never reached the server. The same happens without a reset by
us: after a plain close() the server may still write (a PONG, a ``+OK``) to the closed
socket, get a reset, and close the connection without reading the rest (nats-server
logs "Write Error"). The fix: shut down for writing and read to the server's end of
stream before closing.

These tests make that deterministic against a real nats-server: the client connects
with ``verbose=True`` (the server answers every PUB with ``+OK``) and its reader thread
is not started yet (``connect()`` starts it lazily), so the ``+OK`` stays unread; the
server is stopped (SIGSTOP) while a big batch is published, so the final flush's bytes
sit in the client's send queue when ``close()`` closes the socket.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from authkit import client_context, make_pki, tls_block, wait_until

import natsync
from natsync import _starter
from natsync.testing import NATSServer

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/stat") or not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP and /proc"
)

N = 20_000  # messages of the big batch: ~2.4 MB, more than a stopped server's socket takes
PAYLOAD = b"p" * 100


def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


class _Stopped:
    """SIGSTOP a server (waiting until it is stopped); SIGCONT it on resume() or exit."""

    def __init__(self, srv: NATSServer) -> None:
        pid = srv.pid
        assert pid is not None
        self.pid = pid
        self.stopped = False

    def __enter__(self) -> _Stopped:
        os.kill(self.pid, signal.SIGSTOP)
        self.stopped = True
        wait_until(lambda: _process_state(self.pid) == "T", what="the server to stop")
        return self

    def resume(self) -> None:
        if self.stopped:
            self.stopped = False
            os.kill(self.pid, signal.SIGCONT)

    def __exit__(self, *exc: object) -> None:
        self.resume()


Server = tuple[NATSServer, ssl.SSLContext | None]


@pytest.fixture(params=["plain", "tls"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    if request.param == "plain":
        with NATSServer() as srv:
            yield srv, None
    else:
        pki = make_pki(tmp_path)
        with NATSServer(config=tls_block(pki)) as srv:
            yield srv, client_context(pki)


@pytest.fixture
def no_lazy_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """connect() starts no reader thread for the test's duration (it schedules one
    READER_DELAY later; 3 s stays within conftest's grace for leftover threads)."""
    monkeypatch.setattr(_starter, "READER_DELAY", 3.0)


class _Collector:
    def __init__(self, srv: NATSServer, tls: ssl.SSLContext | None) -> None:
        self.n = 0
        self._lock = threading.Lock()
        self.nc = natsync.connect(srv.url, name="collector", tls=tls)
        self.nc.subscribe("g.>", cb=self._cb, pending_msgs_limit=None, pending_bytes_limit=None)
        self.nc.flush()

    def _cb(self, m: natsync.Msg) -> None:
        with self._lock:
            self.n += 1

    def count(self) -> int:
        with self._lock:
            return self.n

    def settle(self, want: int) -> int:
        """Wait (bounded) until *want* arrived or the count stops growing."""
        deadline = time.monotonic() + 20
        prev = -1
        while time.monotonic() < deadline:
            self.nc.flush(max(min(5.0, deadline - time.monotonic()), 0.1))
            n = self.count()
            if n >= want or n == prev:
                return n
            prev = n
            time.sleep(0.05)
        return self.count()


def _unread_ok(srv: NATSServer, tls: ssl.SSLContext | None, **opts: object) -> natsync.Client:
    """A client with no reader thread and a server ``+OK`` unread in its socket."""
    nc = natsync.connect(srv.url, verbose=True, tls=tls, **opts)  # type: ignore[arg-type]
    assert nc._reader is None, "the reader thread started: the test is void"
    nc.publish("g.first", b"x")  # answered with +OK, which nobody reads
    t = nc._transport
    assert t is not None
    assert t.wait_readable(10), "the server's +OK never arrived"
    return nc


@pytest.mark.usefixtures("no_lazy_reader")
def _publish_then_close_while_stopped(nc: natsync.Client, srv: NATSServer) -> None:
    """Publish N messages to a SIGSTOPped server, start close(), resume the server half a
    second later (by then the old close() had reset the connection; the fixed one waits
    for the server) and wait for close() to end."""
    with _Stopped(srv) as stopped:
        for _ in range(N):
            nc.publish("g.x", PAYLOAD)
        closer = threading.Thread(target=nc.close, name="test-closer")
        closer.start()
        closer.join(0.5)
        stopped.resume()
        closer.join(15)
        assert not closer.is_alive()


def test_close_with_unread_bytes_delivers_what_the_server_had_not_read_yet(
    server: Server,
) -> None:
    """Failed before the fix (~570 of 20,001 delivered, dropped_msgs 0): the close reset
    the connection and the kernel discarded the unsent rest of the final flush."""
    srv, tls = server
    col = _Collector(srv, tls)
    try:
        nc = _unread_ok(srv, tls, flush_timeout=15.0)
        _publish_then_close_while_stopped(nc, srv)
        assert nc.is_closed
        got = col.settle(N + 1)
        assert (got, nc.stats.dropped_msgs) == (N + 1, 0), (
            f"{N + 1 - got} of {N + 1} messages lost at close(), {nc.stats.dropped_msgs} counted dropped"
        )
    finally:
        col.nc.close()


@pytest.mark.usefixtures("no_lazy_reader")
def test_close_against_a_dead_server_returns_by_its_deadline_and_counts_the_unconfirmed(
    server: Server,
) -> None:
    """A server that never reads: close() gives up at the flush deadline and counts every
    message no PONG confirmed in stats.dropped_msgs (it may have arrived: at most once).
    Failed before the fix: nothing counted, most lost."""
    srv, tls = server
    col = _Collector(srv, tls)
    try:
        nc = _unread_ok(srv, tls, flush_timeout=1.0)
        with _Stopped(srv):
            for _ in range(N):
                nc.publish("g.x", PAYLOAD)
            start = time.monotonic()
            nc.close()
            took = time.monotonic() - start
        # the final flush and the wait for the server's end of stream share the 1 s;
        # generous slack for a loaded machine, far below close()'s 1 s + 5 s join grace
        assert took < 3.0, f"close() took {took:.2f} s against a 1 s flush deadline"
        got = col.settle(N + 1)
        assert got + nc.stats.dropped_msgs >= N + 1, (
            f"{N + 1 - got} lost but only {nc.stats.dropped_msgs} counted dropped"
        )
        assert nc.stats.dropped_msgs == N + 1  # none was confirmed by a PONG
    finally:
        col.nc.close()


@pytest.mark.usefixtures("no_lazy_reader")
def test_close_whose_final_flush_reaches_its_deadline_counts_everything_unconfirmed(
    nats_server: NATSServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The server stopped while the client's socket is full (the writer is blocked in
    send() and messages wait in the queue): close()'s final flush reaches its deadline.
    Every message is then delivered or counted dropped: the queued ones, the writer's
    batch, and the ones already in the kernel that no PONG confirmed. Failed before the
    fix: those in the kernel were lost (the close reset the connection) uncounted."""
    srv = nats_server
    col = _Collector(srv, None)
    try:
        nc = _unread_ok(srv, None, flush_timeout=1.0, flusher_timeout=30.0)
        published = 1
        big = b"q" * 1024
        with _Stopped(srv):
            # until the kernel takes no more and ~200 KiB wait behind the blocked writer
            # (well below publish()'s 1 MiB back-pressure): the queue stays that long
            while True:
                while nc._w.pending()[0] < 200:
                    nc.publish("g.x", big)
                    published += 1
                    assert published < 64 * 1024, "the socket never filled up"
                try:
                    wait_until(lambda: nc._w.pending()[0] < 200, timeout=0.5)
                except AssertionError:
                    break  # the writer cannot take it: the socket is full
            start = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="natsync"):
                nc.close()
            took = time.monotonic() - start
        assert took < 3.0, f"close() took {took:.2f} s against a 1 s flush deadline"
        assert "not sent by the final flush's deadline" in caplog.text  # the path under test
        got = col.settle(published)
        dropped = nc.stats.dropped_msgs
        assert got + dropped >= published, f"{published - got} lost but only {dropped} counted dropped"
        assert dropped <= published  # nothing counted twice
    finally:
        col.nc.close()


def test_close_with_the_reader_running_waits_for_the_servers_end_of_stream(
    server: Server,
) -> None:
    """The reader thread reads to the server's end of stream; close() joins it."""
    srv, tls = server
    col = _Collector(srv, tls)
    try:
        nc = natsync.connect(srv.url, tls=tls, flush_timeout=15.0)
        nc.subscribe("other")  # starts the reader thread
        nc.flush()
        reader = nc._reader
        assert reader is not None and reader.is_alive()
        _publish_then_close_while_stopped(nc, srv)
        assert not reader.is_alive()
        assert col.settle(N) == N
        assert nc.stats.dropped_msgs == 0
    finally:
        col.nc.close()


def test_close_after_a_confirmed_flush_does_not_wait_for_the_server(
    server: Server,
) -> None:
    """Everything sent was confirmed by a PONG: close() does not half-close and wait (the
    connect + flush + close path stays as cheap as before), even if the server is stopped."""
    srv, tls = server
    nc = natsync.connect(srv.url, tls=tls, flush_timeout=10.0)
    for _ in range(100):
        nc.publish("g.x", PAYLOAD)
    nc.flush()
    with _Stopped(srv):
        start = time.monotonic()
        nc.close()
        took = time.monotonic() - start
    assert took < 2.0, f"close() waited {took:.2f} s for a server that had confirmed everything"
    assert nc.stats.dropped_msgs == 0


@pytest.mark.usefixtures("no_lazy_reader")
def test_close_while_a_flush_reads_on_its_own_thread(nats_server: NATSServer) -> None:
    """No reader thread, a flush() reading the socket on its caller's thread (holding the
    read token) when close() comes: close() fails the flush, lets it finish reading, and
    still waits for the server's end of stream; nothing is lost. (Plain TCP: under TLS a
    flush() hands the reading to the reader thread.)

    Failed before the fix without any unread byte at close() (the server was stopped):
    the close sent a FIN after the data, but the server, resumed, answered the first
    PUBs with +OK (verbose) to a closed socket, got a reset, and closed the connection
    without reading the rest (its log: "Write Error")."""
    srv = nats_server
    col = _Collector(srv, None)
    try:
        nc = natsync.connect(srv.url, verbose=True, flush_timeout=15.0)
        assert nc._reader is None
        errors: list[BaseException] = []

        def flusher() -> None:
            try:
                nc.flush(15)
            except BaseException as e:  # noqa: BLE001 - recorded for the assertion
                errors.append(e)

        with _Stopped(srv) as stopped:
            for _ in range(N):
                nc.publish("g.x", PAYLOAD)
            f = threading.Thread(target=flusher, name="test-flusher")
            f.start()
            wait_until(nc._read_token.locked, what="the flush to read on its own thread")
            closer = threading.Thread(target=nc.close, name="test-closer")
            closer.start()
            closer.join(0.5)
            stopped.resume()
            closer.join(15)
            f.join(15)
            assert not closer.is_alive() and not f.is_alive()
        assert nc._reader is None
        assert len(errors) == 1 and isinstance(errors[0], natsync.ConnectionClosedError), errors
        assert col.settle(N) == N
        assert nc.stats.dropped_msgs == 0
    finally:
        col.nc.close()


def test_close_from_a_callback_waits_for_the_servers_end_of_stream(nats_server: NATSServer) -> None:
    """close() called from a subscription's callback thread (the reader thread runs):
    it joins the reader, which reads to the server's end of stream; nothing is lost.
    Failed before the fix (verbose: the resumed server wrote +OK to the closed socket,
    got a reset and stopped reading: "Write Error")."""
    srv = nats_server
    col = _Collector(srv, None)
    try:
        nc = natsync.connect(srv.url, verbose=True, flush_timeout=15.0)
        go = threading.Event()
        closed = threading.Event()
        errors: list[BaseException] = []

        def cb(m: natsync.Msg) -> None:
            try:
                assert go.wait(10)
                for _ in range(N):
                    nc.publish("g.x", PAYLOAD)
                nc.close()
            except BaseException as e:  # noqa: BLE001 - recorded for the assertion
                errors.append(e)
            finally:
                closed.set()

        nc.subscribe("trigger", cb=cb)
        nc.flush()
        nc.publish("trigger", b"")
        nc.flush()  # the callback has the message (or will get it: it was delivered)
        with _Stopped(srv) as stopped:
            go.set()
            closed.wait(0.5)  # fixed: close() waits for the stopped server
            stopped.resume()
            assert closed.wait(15)
        assert not errors, errors
        assert nc.is_closed
        assert col.settle(N) == N
        assert nc.stats.dropped_msgs == 0
    finally:
        col.nc.close()

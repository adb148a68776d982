"""The reworked core (issue 7): which threads a connection starts and when (none on
connect: see natsync/_starter.py), the options
that came with it (flusher_timeout, flush_on_exit), the bounded event queue, and the
subscription state machine seen from outside."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fakeserver import FakeConn, FakeServer
from proxy import TCPProxy
from recorder import Recorder, wait_until

import natsync
from natsync import _starter
from natsync._dispatch import MAX_QUEUED_ERRORS, EventDispatcher
from natsync.testing import NATSServer

WAIT = 10.0


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as srv:
        yield srv


def natsync_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("natsync") and t.is_alive()}


@pytest.fixture
def no_starter(monkeypatch: pytest.MonkeyPatch) -> list[natsync.Client]:
    """Keep the process-wide starter away: connections get no reader unless used.
    Returns the clients that connect() handed to it."""
    handed: list[natsync.Client] = []
    monkeypatch.setattr(_starter, "schedule", handed.append)
    return handed


def mine(before: set[threading.Thread]) -> set[str]:
    alive = [t for t in threading.enumerate() if t.is_alive() and t not in before]
    return {t.name for t in alive if t.name.startswith("natsync")}


def test_connect_flush_close_starts_no_thread(server: NATSServer, no_starter: list[natsync.Client]) -> None:
    before = set(threading.enumerate())
    nc = natsync.connect(server.url)
    try:
        assert no_starter == [nc]  # its reader is due later, off the caller's path
        for _ in range(3):
            nc.flush(timeout=WAIT)  # read on this thread: no reader yet
        assert nc.rtt(timeout=WAIT) > 0
        assert mine(before) == set()  # no reader, no writer, no event thread
        sub = nc.subscribe("core.threads")  # a subscription needs the reader: now
        assert "natsync-reader" in mine(before)
        nc.publish("core.threads", b"x")
        assert sub.next_msg(timeout=WAIT).data == b"x"
    finally:
        nc.close()
    assert mine(before) == set()


def test_reader_starts_by_itself_soon_after_connect() -> None:
    rec = Recorder()
    with NATSServer() as srv:
        nc = natsync.connect(srv.url, allow_reconnect=False, **rec.options())
        try:
            # nothing is called: the starter gives the connection its reader, which then
            # notices the server going away by itself
            assert wait_until(lambda: nc._reader is not None and nc._reader.is_alive())
            srv.stop()
            assert rec.wait_count("closed")
            assert rec.counts["disconnected"] == 1
            assert nc.is_closed
        finally:
            nc.close()


def test_flush_before_the_reader_sees_a_cut_and_the_client_reconnects(
    server: NATSServer, no_starter: list[natsync.Client]
) -> None:
    rec = Recorder()
    with TCPProxy("127.0.0.1", server.port) as px:
        nc = natsync.connect(px.url, reconnect_time_wait=0.05, **rec.options())
        try:
            nc.flush(timeout=WAIT)
            assert nc._reader is None
            assert px.cut() == 1
            with pytest.raises(natsync.NatsError, match="lost before the server confirmed"):
                nc.flush(timeout=WAIT)  # read here, saw the end of the connection
            assert rec.wait_count("disconnected")
            assert rec.wait_count("reconnected")  # a reader thread took over and reconnected
            assert nc._reader is not None
            nc.flush(timeout=WAIT)
            assert isinstance(nc.last_error, natsync.NatsError)
        finally:
            nc.close()
    assert rec.counts["disconnected"] == 2  # the cut, then close()


def test_many_threads_flush_before_the_reader(server: NATSServer, no_starter: list[natsync.Client]) -> None:
    nc = natsync.connect(server.url)
    errors: list[BaseException] = []
    go = threading.Barrier(8)

    def flusher() -> None:
        try:
            go.wait(WAIT)
            for _ in range(20):
                nc.flush(timeout=WAIT)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=flusher) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 2)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
    finally:
        nc.close()


def test_close_while_a_flush_reads_on_its_own_thread(no_starter: list[natsync.Client]) -> None:
    # a server that never answers the flush's PING: the flush reads on its caller's
    # thread, and close() from another thread wakes it at once
    with NATSServer() as srv, TCPProxy("127.0.0.1", srv.port) as px:
        nc = natsync.connect(px.url)
        px.blackhole(True)
        errors: list[BaseException] = []

        def flush() -> None:
            try:
                nc.flush(timeout=30)
            except BaseException as e:  # noqa: BLE001 - checked below
                errors.append(e)

        t = threading.Thread(target=flush)
        t.start()
        assert wait_until(lambda: nc._read_token.locked())
        nc.close()
        t.join(WAIT)
        assert not t.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], natsync.ConnectionClosedError)
        px.blackhole(False)


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"flusher_timeout": 0}, ValueError, "flusher_timeout"),
        ({"flusher_timeout": -1.0}, ValueError, "flusher_timeout"),
        ({"flusher_timeout": "1"}, TypeError, "flusher_timeout"),
        ({"flusher_timeout": None}, TypeError, "flusher_timeout"),
    ],
)
def test_new_options_are_checked(
    listener: object, options: dict[str, object], error: type, text: str
) -> None:
    with pytest.raises(error, match=text):
        natsync.connect("nats://127.0.0.1:1", **options)  # type: ignore[arg-type]


def test_flusher_timeout_and_flush_on_exit_are_accepted(server: NATSServer) -> None:
    with natsync.connect(server.url, flusher_timeout=0.5, flush_on_exit=False) as nc:
        nc.publish("core.opts", b"x")
        nc.flush(timeout=WAIT)
        assert nc.last_error is None


def test_event_queue_is_bounded_and_reports_what_it_missed() -> None:
    got: list[natsync.NatsError] = []
    release = threading.Event()
    first = threading.Event()

    def slow(err: natsync.NatsError) -> None:
        got.append(err)
        first.set()
        release.wait(WAIT)

    ev = EventDispatcher("natsync-test-events")
    try:
        total = MAX_QUEUED_ERRORS + 500
        for i in range(total):
            try:
                raise ValueError(f"boom {i}")
            except ValueError as e:
                err = natsync.NatsError(f"wrapped {i}")
                err.__cause__ = e
            ev.post_error(slow, err)
            if i == 0:
                assert first.wait(WAIT)  # the first is being handled; the rest queue up
        assert ev.errors_dropped >= total - MAX_QUEUED_ERRORS - 1
        release.set()
        assert wait_until(lambda: any("more errors were not passed" in str(e) for e in got))
        summary = [e for e in got if "more errors were not passed" in str(e)]
        delivered = len(got) - len(summary)
        missed = sum(int(str(e).split()[0]) for e in summary)
        assert delivered + missed == total
        assert all(e.__traceback__ is None for e in got)
        assert all(e.__cause__ is None or e.__cause__.__traceback__ is None for e in got)
    finally:
        release.set()
        ev.stop(WAIT)


def test_subscription_states_from_outside(server: NATSServer) -> None:
    with natsync.connect(server.url) as nc:
        sub = nc.subscribe("core.state")
        assert sub.is_valid and "ended" not in repr(sub)
        nc.publish("core.state", b"1")
        nc.flush(timeout=WAIT)
        sub.drain(timeout=WAIT)  # a sync subscription: drained once the server sent everything
        assert not sub.is_valid and "ended" in repr(sub)
        assert sub.next_msg(timeout=1).data == b"1"  # drained, not discarded
        with pytest.raises(natsync.BadSubscriptionError):
            sub.next_msg(timeout=0.1)
        with pytest.raises(natsync.BadSubscriptionError):
            sub.unsubscribe()
        with pytest.raises(natsync.BadSubscriptionError):
            sub.drain(timeout=1)
        limited = nc.subscribe("core.limit", max_msgs=2)
        for i in range(3):
            nc.publish("core.limit", b"%d" % i)
        nc.flush(timeout=WAIT)
        assert [m.data for m in limited] == [b"0", b"1"]
        assert not limited.is_valid


def test_publishers_without_a_lock_lose_nothing_and_stats_stay_exact(server: NATSServer) -> None:
    # publish() appends to the writer's queue without the client's lock, while other
    # threads queue SUB/UNSUB/PING under it and the writer takes batches: every message
    # must arrive whole and in order per publisher, and the counters must be exact
    threads_n, per_thread = 6, 5000
    receiver = natsync.connect(server.url)
    nc = natsync.connect(server.url)
    try:
        sub = receiver.subscribe("lockfree.>", pending_msgs_limit=None, pending_bytes_limit=None)
        receiver.flush(timeout=WAIT)
        go = threading.Barrier(threads_n + 1)
        errors: list[BaseException] = []
        sizes = [0, 1, 16, 300, 5000]

        def publisher(i: int) -> None:
            try:
                go.wait(WAIT)
                for n in range(per_thread):
                    size = sizes[n % len(sizes)]
                    nc.publish(f"lockfree.{i}", b"%d:%d:" % (i, n) + b"x" * size)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        def control() -> None:
            try:
                go.wait(WAIT)
                for _ in range(200):
                    s = nc.subscribe("lockfree.control")
                    s.unsubscribe()
                    nc.flush(timeout=WAIT)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        workers = [threading.Thread(target=publisher, args=(i,)) for i in range(threads_n - 1)]
        workers.append(threading.Thread(target=control))
        for t in workers:
            t.start()
        go.wait(WAIT)
        for t in workers:
            t.join(WAIT * 6)
        assert not any(t.is_alive() for t in workers)
        assert errors == []
        nc.flush(timeout=WAIT)
        total = (threads_n - 1) * per_thread
        expected_bytes = 0
        for i in range(threads_n - 1):
            for n in range(per_thread):
                expected_bytes += len(b"%d:%d:" % (i, n)) + sizes[n % len(sizes)]
        st = nc.stats
        assert st.out_msgs == total
        assert st.out_bytes == expected_bytes
        seen = [0] * (threads_n - 1)
        for _ in range(total):
            msg = sub.next_msg(timeout=WAIT)
            i_s, n_s, rest = msg.data.split(b":", 2)
            i, n = int(i_s), int(n_s)
            assert n == seen[i]  # in order, none missing, none twice
            assert rest == b"x" * sizes[n % len(sizes)]
            seen[i] += 1
        assert seen == [per_thread] * (threads_n - 1)
    finally:
        nc.close()
        receiver.close()


def test_protocol_error_seen_by_a_flush_reading_inline_goes_to_the_reader(
    no_starter: list[natsync.Client],
) -> None:
    # the first connection answers the flush's PING with garbage: the flush (reading on
    # its own thread) hands the broken connection to a reader thread, which reports the
    # protocol error and reconnects (to the second connection, which behaves)
    def garbage(c: FakeConn) -> None:
        c.handshake()
        assert c.read_line() == b"PING"
        c.send(b"NONSENSE\r\n")
        c.wait(WAIT)

    def good(c: FakeConn) -> None:
        c.handshake()
        c.serve()

    rec = Recorder()
    with FakeServer([garbage], default=good) as fake:
        nc = natsync.connect(fake.url, reconnect_time_wait=0.05, **rec.options())
        try:
            with pytest.raises(natsync.NatsError, match="lost before the server confirmed"):
                nc.flush(timeout=WAIT)
            assert rec.wait_count("reconnected")
            assert rec.errors_of(natsync.ProtocolError)
            assert isinstance(nc.last_error, natsync.ProtocolError)
            nc.flush(timeout=WAIT)
        finally:
            nc.close()


def test_no_thread_can_start_at_interpreter_shutdown_and_close_still_sends_and_joins(
    server: NATSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPython >= 3.12 starts no thread in an atexit handler (RuntimeError: can't create
    new thread at interpreter shutdown). A client used there (a web worker's exit drain)
    must still send what it was given and close without joining a thread never started
    (before: "cannot join thread before it is started", and a 5 s stall)."""
    got: list[bytes] = []
    with natsync.connect(server.url) as col:
        col.subscribe("exit.x", cb=lambda m: got.append(m.data))
        col.flush()
        closed = threading.Event()
        nc = natsync.connect(server.url, closed_cb=closed.set)
        real_start = threading.Thread.start

        def no_start(self: threading.Thread) -> None:
            if self.name.startswith("natsync"):
                raise RuntimeError("can't create new thread at interpreter shutdown")
            real_start(self)

        monkeypatch.setattr(threading.Thread, "start", no_start)
        nc.publish("exit.x", b"one")  # the writer thread cannot start
        nc.publish("exit.x", b"two")
        nc.close()  # the final flush sends them; no unstarted thread is joined
        assert closed.is_set(), "closed_cb did not run (its thread could not start)"
        monkeypatch.setattr(threading.Thread, "start", real_start)
        assert nc._w.thread is None and nc._reader is None
        assert wait_until(lambda: got == [b"one", b"two"], timeout=WAIT), got

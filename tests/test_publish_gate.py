"""The lock-free publish path and its gate (issue 15; see natsync/_writer.py).

``publish()`` appends its message to the writer's publish list without a lock, then
looks at the gate (open exactly while CONNECTED). These tests take each branch of what
a publisher does when it finds the gate closed, step by step, against a real
nats-server: the interleavings that a race test hits only by chance are made here on
purpose, by appending a message the way ``publish()`` does and then letting the client
change state before the publisher looks (``_publish_late``, the publisher's next step).
"""

from __future__ import annotations

import threading
import time

import pytest
from proxy import TCPProxy

import natsync
from natsync._writer import fresh_crlf
from natsync.errors import ConnectionClosedError
from natsync.testing import NATSServer

HEAD = b"PUB gate.x 5\r\n"


def _collector(srv: NATSServer) -> tuple[natsync.Client, list[bytes], threading.Lock]:
    got: list[bytes] = []
    lock = threading.Lock()

    def cb(m: natsync.Msg) -> None:
        with lock:
            got.append(bytes(m.data))

    nc = natsync.connect(srv.url, name="gate-collector")
    nc.subscribe("gate.>", cb=cb, pending_msgs_limit=None, pending_bytes_limit=None)
    nc.flush()
    return nc, got, lock


def _settled(col: natsync.Client, got: list[bytes], lock: threading.Lock, want: int) -> list[bytes]:
    """What the collector has once it holds *want* messages or a flush round passed."""
    deadline = time.monotonic() + 5
    while True:
        col.flush(5)
        with lock:
            if len(got) >= want or time.monotonic() > deadline:
                return list(got)
        time.sleep(0.02)


def _append_like_publish(nc: natsync.Client, payload: bytes, crlf: bytes) -> None:
    """What publish() does before it looks at the gate: one atomic list append."""
    q = nc._w.q
    q += (HEAD, payload, crlf)


def test_a_message_taken_by_close_is_sent_and_its_publish_returns(nats_server: NATSServer) -> None:
    col, got, lock = _collector(nats_server)
    nc = natsync.connect(nats_server.url)
    try:
        nc.flush()
        crlf = fresh_crlf()
        _append_like_publish(nc, b"taken", crlf)  # appended while open ...
        nc.close()  # ... then the gate closes before the publisher looks
        nc._publish_late(HEAD, b"taken", crlf)  # returns: close() took it and sent it
        assert nc.stats.out_msgs == 1 and nc.stats.dropped_msgs == 0
        assert _settled(col, got, lock, 1) == [b"taken"]
    finally:
        nc.close()
        col.close()


def test_a_message_appended_after_close_is_taken_back_and_refused(nats_server: NATSServer) -> None:
    col, got, lock = _collector(nats_server)
    nc = natsync.connect(nats_server.url)
    try:
        nc.publish("gate.x", b"first")
        nc.close()
        crlf = fresh_crlf()
        _append_like_publish(nc, b"late!", crlf)  # appended after the gate closed
        with pytest.raises(ConnectionClosedError):
            nc._publish_late(HEAD, b"late!", crlf)
        assert nc._w.q == [], "the refused message must not stay in the publish list"
        assert nc.stats.out_msgs == 1
        assert _settled(col, got, lock, 2) == [b"first"]
    finally:
        col.close()


def test_a_message_appended_while_disconnected_goes_to_the_reconnect_buffer_once(
    nats_server: NATSServer,
) -> None:
    col, got, lock = _collector(nats_server)
    reconnected = threading.Event()
    with TCPProxy("127.0.0.1", nats_server.port) as px:
        nc = natsync.connect(
            px.url,
            reconnect_time_wait=0.05,
            max_reconnect_attempts=-1,
            reconnected_cb=lambda: reconnected.set(),
        )
        try:
            nc.flush()
            px.refuse(True)
            px.cut()
            deadline = time.monotonic() + 5
            while nc._w.open and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not nc._w.open, "the gate should close when the connection breaks"
            crlf = fresh_crlf()
            _append_like_publish(nc, b"later", crlf)
            nc._publish_late(HEAD, b"later", crlf)  # taken back, buffered (no error)
            with nc._lock:
                assert nc._w.q == [] and nc._w.pending() == (1, 5)  # in the buffer, once
            px.refuse(False)
            assert reconnected.wait(10)
            nc.flush(5)
            assert _settled(col, got, lock, 1) == [b"later"]
            time.sleep(0.1)  # a duplicate would arrive right behind it
            assert _settled(col, got, lock, 2) == [b"later"]
        finally:
            nc.close()
            col.close()


def test_the_last_triplet_with_the_threads_crlf_is_the_current_calls(nats_server: NATSServer) -> None:
    """A publish made by a finalizer inside another publish (same thread, same CRLF
    object) looks and returns before the outer one goes on: each takes back the last
    of its thread's triplets, which is its own."""
    nc = natsync.connect(nats_server.url)
    nc.close()
    crlf = fresh_crlf()
    _append_like_publish(nc, b"outer", crlf)
    _append_like_publish(nc, b"inner", crlf)
    with pytest.raises(ConnectionClosedError):
        nc._publish_late(HEAD, b"inner", crlf)
    assert nc._w.q == [HEAD, b"outer", crlf]
    with pytest.raises(ConnectionClosedError):
        nc._publish_late(HEAD, b"outer", crlf)
    assert nc._w.q == []


def test_fresh_crlf_makes_a_new_object_each_time() -> None:
    a, b = fresh_crlf(), fresh_crlf()
    assert a == b == b"\r\n" and a is not b


# --- the writer's buffers ----------------------------------------------------------------


class _RecordingTransport:
    """Stands in for the socket (a sink): records the size of every buffer written."""

    tls = False

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.data: list[bytes] = []

    def write(self, data: bytes, stall: float, deadline: float | None = None) -> None:
        self.sizes.append(len(data))
        self.data.append(bytes(data))


class _Owner:
    def __init__(self, t: _RecordingTransport) -> None:
        self.t = t

    def _writable(self) -> _RecordingTransport:
        return self.t

    def _write_failed(self, transport: object, err: OSError) -> None:  # pragma: no cover
        raise AssertionError(f"write failed: {err}")


@pytest.mark.parametrize(
    "sizes",
    [
        [16] * 30_000,  # small messages: few writes
        [64 * 1024] * 100,  # big ones: no buffer of many MiB
        [16] * 20_000 + [256 * 1024] * 12 + [16] * 20_000,  # small, big, small in one batch
        [300] + [16] * 1000 + [300],  # counted the way for big ones
        [0, 16, 1000, 0],
    ],
    ids=["small", "big", "mixed", "ends-big", "empty-ends"],
)
def test_the_writer_joins_about_a_mib_per_write_and_sends_everything_in_order(sizes: list[int]) -> None:
    from natsync._writer import Writer

    t = _RecordingTransport()
    lock = threading.Lock()
    w = Writer(_Owner(t), lock, 60.0, "test-writer")  # type: ignore[arg-type]
    w.open = True
    want = []
    with lock:
        for i, n in enumerate(sizes):
            head = b"PUB s %d\r\n" % n
            payload = bytes([65 + i % 26]) * n
            w.put(head, payload)
            want.append(head + payload + b"\r\n")
    assert w.write_pending(None)
    assert b"".join(t.data) == b"".join(want)
    assert w.out_msgs == len(sizes)
    assert w.out_bytes == sum(sizes)  # payload bytes, counted exactly whatever their sizes
    # no write buffer of many MiB (a cluster of big messages makes one larger by those)
    assert max(t.sizes) <= (4 if len(set(sizes)) > 1 else 1.2) * 1024 * 1024, t.sizes
    total = sum(t.sizes)
    # about 1 MiB per write
    assert len(t.sizes) <= 2 + total // (1024 * 1024) + (12 if len(set(sizes)) > 1 else 0), t.sizes

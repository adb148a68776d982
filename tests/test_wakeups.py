"""The latency paths (issue 15's request target): the delivery thread's own sleep and
wake-up, and the one-syscall send of ``send_soon()``.

A callback subscription's delivery thread sleeps on a lock of its own when its queue is
empty; the reader (after an append) or the subscription's end releases it, once per
sleep. These tests make it sleep and wake on every message, with the interpreter
switching threads as often as it can, and end subscriptions while it sleeps.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from recorder import wait_until

import natsync
from natsync._transport import Transport
from natsync.testing import NATSServer

WAIT = 10.0


@pytest.fixture
def fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_callback_sleeps_and_wakes_on_every_message_in_order(
    nats_server: NATSServer, fast_switching: None
) -> None:
    """Ping-pong: the next message is published only once the callback had the last
    one, so the delivery thread sleeps before (or while) each arrives. A lost wake-up
    hangs a round (bounded here); a double one would deliver out of order or twice."""
    got: list[int] = []
    turn = threading.Semaphore(0)

    def cb(m: natsync.Msg) -> None:
        got.append(int(m.data))
        turn.release()

    with natsync.connect(nats_server.url) as pub, natsync.connect(nats_server.url) as nc:
        sub = nc.subscribe("wake.pingpong", cb=cb)
        nc.flush()
        for i in range(1500):
            pub.publish("wake.pingpong", b"%d" % i)
            pub.flush()
            assert turn.acquire(timeout=WAIT), f"message {i} was not delivered (a lost wake-up)"
        assert got == list(range(1500))
        assert sub.delivered == 1500
        assert not sub._cb_sleeping or sub._wake.locked()


@pytest.mark.parametrize("end", ["unsubscribe", "close", "drain"])
def test_ending_a_subscription_wakes_its_sleeping_delivery_thread(nats_server: NATSServer, end: str) -> None:
    nc = natsync.connect(nats_server.url)
    try:
        sub = nc.subscribe("wake.end", cb=lambda m: None)
        nc.publish("wake.end", b"x")
        nc.flush()
        assert wait_until(lambda: sub.delivered == 1 and sub._cb_sleeping, timeout=WAIT)
        t = sub._thread
        assert t is not None and t.is_alive()
        if end == "unsubscribe":
            sub.unsubscribe()
        elif end == "drain":
            sub.drain(timeout=WAIT)
        else:
            nc.close()
        t.join(WAIT)
        assert not t.is_alive(), "the delivery thread slept through the end of its subscription"
        assert not sub._cb_sleeping
    finally:
        nc.close()


def test_end_racing_the_delivery_threads_sleep_never_hangs(
    nats_server: NATSServer, fast_switching: None
) -> None:
    """The end comes at every point of the sleep protocol (before the flag is set, between
    the flag and the acquire, while asleep): the thread always ends, having delivered
    every message that was queued before a drain."""
    with natsync.connect(nats_server.url) as nc:
        for i in range(200):
            seen: list[bytes] = []
            sub = nc.subscribe(f"wake.race.{i}", cb=lambda m, seen=seen: seen.append(m.data))
            nc.publish(f"wake.race.{i}", b"a")
            nc.publish(f"wake.race.{i}", b"b")
            if i % 2:
                sub.drain(timeout=WAIT)  # returns once the callback had both
                assert seen == [b"a", b"b"], i
            else:
                time.sleep(0.0001 * (i % 7))
                sub.unsubscribe()
            t = sub._thread
            assert t is not None
            t.join(WAIT)
            assert not t.is_alive(), f"round {i}: delivery thread still running after the end"


# --- send_soon()'s one-syscall send ----------------------------------------------------------


def test_try_send_takes_what_fits_never_waits_and_fails_when_closed() -> None:
    a, b = socket.socketpair()
    try:
        a.settimeout(5.0)  # as a connection's socket: a timeout, so a non-blocking descriptor
        t = Transport(a)
        chunk = b"x" * 65536
        total = 0
        start = time.monotonic()
        while True:
            n = t.try_send(chunk)
            assert 0 <= n <= len(chunk)
            total += n
            if n < len(chunk):
                break
        assert time.monotonic() - start < 5.0, "try_send waited for room"
        assert t.try_send(chunk) == 0  # full: nothing taken, at once
        # what it reported sent is exactly what the peer can read
        b.setblocking(False)
        got = 0
        while got < total:
            try:
                got += len(b.recv(1 << 20))
            except BlockingIOError:
                break
        assert got == total
        b.close()
        with pytest.raises(OSError):
            for _ in range(100):  # the first sends after the peer closed may still succeed
                t.try_send(b"y")
        t.close()
        with pytest.raises(OSError):
            t.try_send(b"z")  # a closed transport: fileno() is -1, never another descriptor
    finally:
        a.close()
        b.close()


def test_try_send_on_a_blocking_socket_never_blocks() -> None:
    """A socket without a timeout has a blocking descriptor: the polling send is used."""
    a, b = socket.socketpair()
    try:
        a.settimeout(None)
        t = Transport(a)
        chunk = b"x" * 65536
        done = threading.Event()

        def fill() -> None:
            while t.try_send(chunk) == len(chunk):
                pass
            done.set()

        th = threading.Thread(target=fill, daemon=True)
        th.start()
        assert done.wait(WAIT), "try_send blocked on a full blocking socket"
        th.join(WAIT)
    finally:
        a.close()
        b.close()


# --- request() and respond(): their own PUB lines, one lock hold to queue and send ----------


def test_request_and_respond_check_their_input_before_anything_is_sent(nats_server: NATSServer) -> None:
    from natsync.errors import BadSubjectError, MaxPayloadError

    seen: list[natsync.Msg] = []
    with natsync.connect(nats_server.url) as watcher, natsync.connect(nats_server.url) as nc:
        watcher.subscribe(">", cb=seen.append)
        watcher.flush()
        for bad in ("a b", "a\r\nPUB x 1", "", "a..b"):
            with pytest.raises(BadSubjectError):
                nc.request(bad, b"x", timeout=0.5)
        with pytest.raises(MaxPayloadError):
            nc.request("ok.subject", b"x" * (nc.max_payload + 1), timeout=0.5)
        # a reply subject from a message (the server's, or one an application made)
        m = natsync.Msg(nc, "s", 1, "bad reply\r\nPUB evil 1", None, b"")
        with pytest.raises(BadSubjectError):
            m.respond(b"x")
        with pytest.raises(MaxPayloadError):
            natsync.Msg(nc, "s", 1, "ok.reply", None, b"").respond(b"x" * (nc.max_payload + 1))
        nc.flush()
        watcher.flush()
        assert seen == [], f"something went out: {seen}"
        assert nc.stats.out_msgs == 0


def test_request_and_respond_str_payloads_and_a_closed_client(nats_server: NATSServer) -> None:
    from natsync.errors import ConnectionClosedError

    with natsync.connect(nats_server.url) as nc:
        nc.subscribe("echo.str", cb=lambda m: m.respond(m.data.decode().upper()))
        nc.flush()
        assert nc.request("echo.str", "hello", timeout=WAIT).data == b"HELLO"
        assert nc.request("echo.str", bytearray(b"abc"), timeout=WAIT).data == b"ABC"
        m = natsync.Msg(nc, "s", 1, "ok.reply", None, b"")
    with pytest.raises(ConnectionClosedError):
        m.respond(b"late")
    with pytest.raises(ConnectionClosedError):
        nc.request("echo.str", b"x", timeout=0.5)

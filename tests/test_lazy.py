"""The lazy client: ``connect(..., lazy=True)`` checks options, opens nothing, and the first
call that needs the connection connects (once, whatever the number of threads); in a
forked child the first use opens the child's own connection."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from forkkit import run_in_child
from recorder import Recorder, wait_until

import natsync
from natsync.testing import NATSServer

WAIT = 10.0


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer(http_port=0) as srv:
        yield srv


def conns_named(server: NATSServer, name: str) -> list[dict[str, Any]]:
    """The server's client connections called *name* (monitoring /connz)."""
    assert server.monitor_url
    with urllib.request.urlopen(f"{server.monitor_url}/connz?limit=1024", timeout=5) as resp:
        conns: list[dict[str, Any]] = json.loads(resp.read())["connections"] or []
    return [c for c in conns if c.get("name") == name]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_lazy_connect_opens_nothing(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    nc = natsync.connect(f"nats://127.0.0.1:{port}", lazy=True)
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody dialled
    assert not nc.is_connected and not nc.is_closed
    assert nc.client_id is None
    assert threading.active_count() >= 1
    assert not [t for t in threading.enumerate() if t.name.startswith("natsync")]
    assert "lazy" in repr(nc)
    nc.close()  # never used: closes without I/O
    assert nc.is_closed
    with pytest.raises(BlockingIOError):
        listener.accept()
    with pytest.raises(natsync.ConnectionClosedError):
        nc.publish("x", b"")


def test_lazy_options_are_checked_at_connect(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with pytest.raises(ValueError, match="connect_timeout"):
        natsync.connect(f"nats://127.0.0.1:{port}", lazy=True, connect_timeout=0)
    with pytest.raises(TypeError, match="error_cb"):
        natsync.NATS().connect(f"nats://127.0.0.1:{port}", lazy=True, error_cb=3)
    with pytest.raises(ValueError, match="scheme"):
        natsync.connect("http://127.0.0.1:4222", lazy=True)
    with pytest.raises(TypeError):
        natsync.connect(f"nats://127.0.0.1:{port}", lazy=True, no_such_option=1)


@pytest.mark.parametrize("first", ["publish", "subscribe", "request", "flush", "rtt"])
def test_first_use_connects(server: NATSServer, first: str) -> None:
    name = f"lazy-first-{first}"
    nc = natsync.NATS().connect(server.url, lazy=True, name=name)
    watcher = natsync.connect(server.url)
    try:
        assert conns_named(server, name) == []
        watch = watcher.subscribe("lazy.first")
        svc = watcher.subscribe("lazy.svc", cb=lambda m: m.respond(b"pong"))
        watcher.flush(timeout=WAIT)
        calls: dict[str, Callable[[], Any]] = {
            "publish": lambda: nc.publish("lazy.first", b"hi"),
            "subscribe": lambda: nc.subscribe("lazy.own"),
            "request": lambda: nc.request("lazy.svc", b"ping", timeout=WAIT),
            "flush": lambda: nc.flush(timeout=WAIT),
            "rtt": lambda: nc.rtt(timeout=WAIT),
        }
        result = calls[first]()
        assert nc.is_connected
        assert isinstance(nc.client_id, int)
        if first == "request":
            assert result.data == b"pong"
        nc.publish("lazy.first", b"after")
        nc.flush(timeout=WAIT)
        got = [watch.next_msg(timeout=WAIT).data for _ in range(2 if first == "publish" else 1)]
        assert got[-1] == b"after"
        assert len(conns_named(server, name)) == 1
        svc.unsubscribe()
    finally:
        nc.close()
        watcher.close()
    assert nc.is_closed and nc.client_id is None


def test_concurrent_first_use_opens_one_connection(server: NATSServer) -> None:
    name = "lazy-many-threads"
    nc = natsync.connect(server.url, lazy=True, name=name)
    watcher = natsync.connect(server.url)
    n = 16
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    try:
        watch = watcher.subscribe("lazy.many")
        watcher.subscribe("lazy.many.svc", cb=lambda m: m.respond(m.data))
        watcher.flush(timeout=WAIT)

        def first_use(i: int) -> None:
            try:
                barrier.wait(WAIT)
                if i % 4 == 0:
                    nc.subscribe(f"lazy.many.{i}")
                elif i % 4 == 1:
                    nc.flush(timeout=WAIT)
                elif i % 4 == 2:  # waits for the connect another thread is making
                    assert nc.request("lazy.many.svc", b"%d" % i, timeout=WAIT).data == b"%d" % i
                nc.publish("lazy.many", b"%d" % i)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=first_use, args=(i,), name=f"test-first-{i}") for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        nc.flush(timeout=WAIT)
        got = sorted(int(watch.next_msg(timeout=WAIT).data) for _ in range(n))
        assert got == list(range(n))
        assert len(conns_named(server, name)) == 1
        assert nc.stats.reconnects == 0
    finally:
        nc.close()
        watcher.close()


def test_first_use_with_nats_down_fails_like_connect_then_recovers() -> None:
    port = free_port()
    rec = Recorder()
    nc = natsync.connect(f"nats://127.0.0.1:{port}", lazy=True, connect_timeout=0.5, **rec.options())
    try:
        with pytest.raises(natsync.NoServersError):
            nc.publish("lazy.down", b"lost")
        # still lazy: the next use tries again
        assert not nc.is_closed and not nc.is_connected
        with pytest.raises(natsync.NoServersError):
            nc.subscribe("lazy.down")
        assert not [t for t in threading.enumerate() if t.name.startswith("natsync")]
        with NATSServer(port=port) as srv:
            sub = nc.subscribe("lazy.down")
            nc.publish("lazy.down", b"now")
            assert sub.next_msg(timeout=WAIT).data == b"now"
            assert nc.connected_url == srv.url.replace("127.0.0.1", "127.0.0.1")
            nc.close()
        assert rec.counts["closed"] == 1
    finally:
        nc.close()


def test_first_use_with_retry_buffers_and_request_fails_fast() -> None:
    port = free_port()
    rec = Recorder()
    nc = natsync.connect(
        f"nats://127.0.0.1:{port}",
        lazy=True,
        retry_on_failed_connect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.05,
        connect_timeout=0.5,
        **rec.options(),
    )
    try:
        sub = nc.subscribe("lazy.retry")  # returns: sent once connected
        nc.publish("lazy.retry", b"early")  # kept in the reconnect buffer
        assert nc.is_reconnecting
        start = time.monotonic()
        with pytest.raises(natsync.TimeoutError, match="not connected") as ei:
            nc.request("lazy.svc", b"", timeout=30)
        assert time.monotonic() - start < 5, "request while disconnected should fail at once"
        assert "no reply" not in str(ei.value)
        with NATSServer(port=port):
            assert wait_until(lambda: nc.is_connected)
            assert sub.next_msg(timeout=WAIT).data == b"early"
            nc.flush(timeout=WAIT)
            nc.close()
    finally:
        nc.close()


def test_drain_of_unused_lazy_client_closes_without_io(listener: socket.socket) -> None:
    rec = Recorder()
    port = listener.getsockname()[1]
    nc = natsync.connect(f"nats://127.0.0.1:{port}", lazy=True, **rec.options())
    nc.drain(timeout=1)
    assert nc.is_closed
    assert rec.wait_count("closed")
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()
    with pytest.raises(natsync.ConnectionClosedError):
        nc.drain()


# --- fork ------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_lazy_client_in_forked_child_opens_its_own_connection(server: NATSServer) -> None:
    name = "lazy-fork"
    nc = natsync.connect(server.url, lazy=True, name=name)
    plain = natsync.connect(server.url)
    try:
        parent_sub = nc.subscribe("lazy.fork.parent")
        svc = plain.subscribe("lazy.fork.svc", cb=lambda m: m.respond(b"pid=%d" % os.getpid()))
        plain.flush(timeout=WAIT)
        assert nc.request("lazy.fork.svc", b"", timeout=WAIT).data == b"pid=%d" % os.getpid()
        parent_id = nc.client_id
        parent_inbox = nc._resp_prefix
        parent_new_inbox = nc.new_inbox()

        def child() -> dict[str, Any]:
            out: dict[str, Any] = {"sub_valid": parent_sub.is_valid}
            try:
                plain.publish("x", b"")
            except natsync.ConnectionClosedError as e:
                out["plain"] = str(e)
            own = nc.subscribe("lazy.fork.child")
            nc.publish("lazy.fork.child", b"mine")
            out["own"] = own.next_msg(timeout=WAIT).data.decode()
            out["reply"] = nc.request("lazy.fork.svc", b"", timeout=WAIT).data.decode()
            out["client_id"] = nc.client_id
            out["inbox"] = nc._resp_prefix
            out["new_inbox"] = nc.new_inbox()
            out["conns"] = len(conns_named(server, name))
            nc.close()
            out["closed"] = nc.is_closed
            return out

        result = run_in_child(child)
        assert result["sub_valid"] is False
        assert "fork" in result["plain"]
        assert result["own"] == "mine"
        assert result["reply"] == f"pid={os.getpid()}"  # answered by the parent's service
        assert isinstance(result["client_id"], int) and result["client_id"] != parent_id
        assert result["inbox"] != parent_inbox
        assert result["new_inbox"][:-10] != parent_new_inbox[:-10]  # NUID prefix reseeded
        assert result["conns"] == 2  # the parent's and the child's
        assert result["closed"] is True
        # the parent is untouched
        assert parent_sub.is_valid
        nc.publish("lazy.fork.parent", b"still")
        assert parent_sub.next_msg(timeout=WAIT).data == b"still"
        assert nc.client_id == parent_id
        svc.unsubscribe()
    finally:
        nc.close()
        plain.close()
    assert wait_until(lambda: conns_named(server, name) == [])


@pytest.mark.parametrize("call", ["flush", "request"])
def test_first_use_with_a_timeout_returns_by_it_while_the_server_does_not_answer(
    server: NATSServer, call: str
) -> None:
    """A call that takes a timeout keeps it even when it is the lazy client's first use
    and the connect hangs (the server accepts but never says INFO): the handshake ends
    by the call's deadline, not by connect_timeout."""
    from proxy import TCPProxy

    with TCPProxy("127.0.0.1", server.port) as px:
        px.blackhole(True)
        nc = natsync.connect(px.url, lazy=True, connect_timeout=5)
        try:
            t0 = time.monotonic()
            with pytest.raises(natsync.NatsError):
                if call == "flush":
                    nc.flush(timeout=0.3)
                else:
                    nc.request("lazy.req", b"x", timeout=0.3)
            took = time.monotonic() - t0
            assert took < 1.5, f"{call}(timeout=0.3) took {took:.2f} s"
        finally:
            nc.close()

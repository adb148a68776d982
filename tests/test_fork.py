"""Fork safety: a client made in the parent is unusable in a forked child, never touches
the parent's socket there, and the parent keeps working."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from forkkit import run_in_child

import natsync
from natsync.testing import NATSServer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")

WAIT = 10.0


@pytest.fixture
def server() -> Iterator[NATSServer]:
    with NATSServer() as srv:
        yield srv


def _outcome(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except natsync.ConnectionClosedError as e:
        return f"closed: {e}"
    except BaseException as e:  # noqa: BLE001
        return f"other: {type(e).__name__}: {e}"
    return "returned"


def test_child_copy_raises_and_parent_keeps_working(server: NATSServer) -> None:
    disconnected = threading.Event()
    nc = natsync.connect(server.url, disconnected_cb=disconnected.set, ping_interval=0.2)
    observer = natsync.connect(server.url)
    try:
        sub = nc.subscribe("fork.test")
        cb_sub = nc.subscribe("fork.cb", cb=lambda m: None)
        nc.subscribe("svc", cb=lambda m: m.respond(b"pong"))
        watch = observer.subscribe("fork.>")
        observer.flush(timeout=WAIT)
        nc.publish("fork.test", b"pending")  # a message left pending in the copied sub
        nc.flush(timeout=WAIT)
        assert nc.request("svc", b"", timeout=WAIT).data == b"pong"
        parent_pid = os.getpid()

        def child() -> dict[str, Any]:
            calls: dict[str, Callable[[], Any]] = {
                "publish": lambda: nc.publish("fork.test", b"from child"),
                "subscribe": lambda: nc.subscribe("fork.child"),
                "request": lambda: nc.request("svc", b"", timeout=1),
                "flush": lambda: nc.flush(timeout=1),
                "drain": lambda: nc.drain(timeout=1),
                "next_msg": lambda: sub.next_msg(timeout=1),
                "unsubscribe": lambda: sub.unsubscribe(),
                "cb_unsubscribe": lambda: cb_sub.unsubscribe(),
                "rtt": lambda: nc.rtt(timeout=1),
            }
            out: dict[str, Any] = {name: _outcome(fn) for name, fn in calls.items()}
            out["close"] = _outcome(nc.close)
            out["is_connected"] = nc.is_connected
            out["is_closed"] = nc.is_closed
            out["threads"] = [t.name for t in threading.enumerate() if t.name.startswith("natsync")]
            # a fresh client in the child works
            with natsync.connect(server.url) as fresh:
                fresh.publish("fork.fresh", b"hello from the child")
                fresh.flush(timeout=WAIT)
            out["pid"] = os.getpid()
            return out

        nc.publish("fork.racy", b"once")  # perhaps still in the write buffer at fork time
        result = run_in_child(child)
        child_pid = result.pop("pid")
        assert result.pop("close") == "returned"
        assert result.pop("is_connected") is False
        assert result.pop("is_closed") is True
        assert result.pop("threads") == []
        for name, outcome in result.items():
            assert outcome.startswith("closed: "), f"{name} in the child: {outcome}"
            assert f"created in process {parent_pid}" in outcome, f"{name}: {outcome}"
            assert "connect again in the child" in outcome, f"{name}: {outcome}"
            assert str(child_pid) in outcome

        # the child's traffic reached the server only through its own client, and the
        # parent's buffered bytes were sent once (by the parent)
        nc.flush(timeout=WAIT)
        observer.flush(timeout=WAIT)
        msgs = [watch.next_msg(timeout=1) for _ in range(watch.pending_msgs)]
        seen = sorted((m.subject, m.data) for m in msgs)
        assert seen == [
            ("fork.fresh", b"hello from the child"),
            ("fork.racy", b"once"),
            ("fork.test", b"pending"),
        ]

        # the parent's connection is intact: same subscription, no reconnect
        assert sub.next_msg(timeout=WAIT).data == b"pending"
        nc.publish("fork.test", b"parent again")
        assert sub.next_msg(timeout=WAIT).data == b"parent again"
        assert nc.request("svc", b"", timeout=WAIT).data == b"pong"
        nc.flush(timeout=WAIT)
        assert nc.is_connected
        assert not disconnected.is_set()
        assert nc.stats.reconnects == 0
        observer.flush(timeout=WAIT)
        assert watch.pending_msgs == 1 and watch.next_msg(timeout=1).data == b"parent again"
    finally:
        nc.close()
        observer.close()


def test_fork_while_reconnecting_child_does_not_reconnect(server: NATSServer) -> None:
    """A copy made while the parent is reconnecting stays closed in the child."""
    reconnected = threading.Event()
    disconnected = threading.Event()
    nc = natsync.connect(
        server.url,
        reconnect_time_wait=0.05,
        max_reconnect_attempts=-1,
        connect_timeout=1.0,
        disconnected_cb=disconnected.set,
        reconnected_cb=reconnected.set,
    )
    try:
        server.stop()
        assert disconnected.wait(WAIT)

        def child() -> dict[str, Any]:
            return {
                "publish": _outcome(lambda: nc.publish("x", b"")),
                "is_reconnecting": nc.is_reconnecting,
                "threads": [t.name for t in threading.enumerate() if t.name.startswith("natsync")],
            }

        result = run_in_child(child)
        assert result["publish"].startswith("closed: ") and "connect again in the child" in result["publish"]
        assert result["is_reconnecting"] is False
        assert result["threads"] == []
        server.start()
        assert reconnected.wait(WAIT)
        nc.flush(timeout=WAIT)
    finally:
        nc.close()

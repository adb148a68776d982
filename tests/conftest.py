"""Shared test configuration.

The ``nats_server``, ``nats_url`` and ``nats_js_server`` fixtures are imported from natsync's pytest plugin
here, instead of coming from its ``pytest11`` entry point: pytest.ini disables the entry
point (``-p no:natsync``) because a plugin loaded by entry point imports natsync before
pytest-cov starts, and every module-level line of natsync would count as not covered.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from natsync import Client
from natsync._lifecycle import live_clients
from natsync.testing.pytest_plugin import nats_js_server, nats_server, nats_url

__all__ = ["nats_js_server", "nats_server", "nats_url"]

THREAD_PREFIX = "natsync"
THREAD_GRACE = 5.0  # seconds a test's natsync threads may take to end after it


def _lazy_threads(clients: list[Client]) -> set[threading.Thread]:
    """The reader, writer and event threads of *clients* that are still open (each
    starts after connect(): the reader when the connection is used or after a moment)."""
    threads: set[threading.Thread] = set()
    for client in clients:
        if client.is_closed:
            continue
        reader = getattr(client, "_reader", None)
        if reader is not None:
            threads.add(reader)
        for part in (getattr(client, "_w", None), getattr(client, "_events", None)):
            thread = getattr(part, "_thread", None)
            if thread is not None:
                threads.add(thread)
    return threads


@pytest.fixture(autouse=True)
def _no_leftover_natsync_threads() -> Iterator[None]:
    """Fail a test that leaves natsync threads running after it (and its fixtures) ended.

    Threads already alive when the test started (for example from a module-scoped client
    fixture) are not counted against it.
    """
    before = set(threading.enumerate())
    open_before = [c for c in list(live_clients) if not c.is_closed]
    yield
    deadline = time.monotonic() + THREAD_GRACE
    while True:
        # A client that was open before the test (a module-scoped fixture) may start its
        # reader, writer or event thread during it: those live as long as that client, not the test.
        allowed = before | _lazy_threads(open_before)
        left = [
            t
            for t in threading.enumerate()
            if t.name.startswith(THREAD_PREFIX) and t.is_alive() and t not in allowed
        ]
        if not left:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(sorted(t.name for t in left))
            pytest.fail(f"natsync threads still running {THREAD_GRACE} s after the test: {names}")
        time.sleep(0.01)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback listener that a client must never connect to (bad options fail first)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock
    finally:
        sock.close()

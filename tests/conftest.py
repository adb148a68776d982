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

from natsync.testing.pytest_plugin import nats_js_server, nats_server, nats_url

__all__ = ["nats_js_server", "nats_server", "nats_url"]

THREAD_PREFIX = "natsync"
THREAD_GRACE = 5.0  # seconds a test's natsync threads may take to end after it


@pytest.fixture(autouse=True)
def _no_leftover_natsync_threads() -> Iterator[None]:
    """Fail a test that leaves natsync threads running after it (and its fixtures) ended.

    Threads already alive when the test started (for example from a module-scoped client
    fixture) are not counted against it.
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_GRACE
    while True:
        left = [
            t
            for t in threading.enumerate()
            if t.name.startswith(THREAD_PREFIX) and t.is_alive() and t not in before
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

"""The JetStream examples, run as users run them, against a real JetStream server
(each must exit 0 and print what it promises)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from authkit import run_example_ok

from natsync.testing import NATSServer


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer(jetstream=True) as srv:
        yield srv


def test_work_queue(server: NATSServer) -> None:
    out = run_example_ok("js_work_queue.py", {"NATS_URL": server.url})
    assert "published 30 orders" in out
    assert "processed 30 orders by " in out and "each exactly once: True" in out
    assert "left in the stream: 0" in out


def test_event_log(server: NATSServer) -> None:
    out = run_example_ok("js_event_log.py", {"NATS_URL": server.url})
    assert "replayed: {'alice': 70, 'bob': 75, 'carol': 10}" in out
    assert "followed: events.carol seq 6" in out


def test_exactly_once(server: NATSServer) -> None:
    out = run_example_ok("js_exactly_once.py", {"NATS_URL": server.url})
    assert "first publish: seq 1, duplicate False" in out
    assert "retried publish: seq 1, duplicate True" in out
    assert "messages stored: 1" in out
    assert "stale write refused: err_code 10071" in out

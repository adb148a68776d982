"""The JetStream examples, run as users run them, against a real JetStream server
(each must exit 0 and print what it promises)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from authkit import run_example

from natsync.testing import NATSServer


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer(jetstream=True) as srv:
        yield srv


def _run(name: str, server: NATSServer) -> str:
    proc = run_example(name, {"NATS_URL": server.url})
    out = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{out}"
    return proc.stdout


def test_work_queue(server: NATSServer) -> None:
    out = _run("js_work_queue.py", server)
    assert "published 30 orders" in out
    assert "processed 30 orders by " in out and "each exactly once: True" in out
    assert "left in the stream: 0" in out


def test_event_log(server: NATSServer) -> None:
    out = _run("js_event_log.py", server)
    assert "replayed: {'alice': 70, 'bob': 75, 'carol': 10}" in out
    assert "followed: events.carol seq 6" in out


def test_exactly_once(server: NATSServer) -> None:
    out = _run("js_exactly_once.py", server)
    assert "first publish: seq 1, duplicate False" in out
    assert "retried publish: seq 1, duplicate True" in out
    assert "messages stored: 1" in out
    assert "stale write refused: err_code 10071" in out

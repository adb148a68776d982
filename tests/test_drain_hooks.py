"""The drain hook point (Client._drain_hooks): called by drain() after its state check
and before any subscription drains, with drain()'s absolute deadline; a failing hook is
logged and the drain goes on."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import natsync
from natsync.errors import ConnectionDrainingError
from natsync.testing import NATSServer


def test_hooks_run_with_the_deadline_before_any_subscription_drains(
    nats_server: NATSServer, caplog: pytest.LogCaptureFixture
) -> None:
    nc = natsync.connect(nats_server.url)
    sub = nc.subscribe("hook.t")
    seen: list[tuple[float, bool, bool]] = []

    def hook(deadline: float) -> None:
        # the subscription still receives: a hook may wait for replies (JetStream acks)
        nc.publish("hook.t", b"during the hook")
        nc.flush(1)
        msg = sub.next_msg(timeout=1)
        seen.append((deadline, sub.is_valid, msg.data == b"during the hook"))

    def failing(deadline: float) -> None:
        raise RuntimeError("boom")

    with nc._lock:
        nc._drain_hooks.append(failing)
        nc._drain_hooks.append(hook)
    t0 = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="natsync"):
        nc.drain(timeout=3)
    assert nc.is_closed
    assert len(seen) == 1
    deadline, valid, got = seen[0]
    assert t0 + 3 - 0.5 < deadline <= time.monotonic() + 3
    assert valid and got
    assert any("drain hook" in r.getMessage() for r in caplog.records)


def test_a_second_drain_while_hooks_run_is_refused(nats_server: NATSServer) -> None:
    nc = natsync.connect(nats_server.url)
    entered = threading.Event()
    release = threading.Event()

    def hook(deadline: float) -> None:
        entered.set()
        release.wait(max(deadline - time.monotonic(), 0))

    nc._drain_hooks.append(hook)
    t = threading.Thread(target=nc.drain, kwargs={"timeout": 5}, name="test-drain")
    t.start()
    try:
        assert entered.wait(5)
        with pytest.raises(ConnectionDrainingError):
            nc.drain(timeout=1)
    finally:
        release.set()
        t.join(10)
    assert not t.is_alive() and nc.is_closed

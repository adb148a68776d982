"""The reworked core (issue 7): which threads a connection starts and when, the options
that came with it (flusher_timeout, flush_on_exit), the bounded event queue, and the
subscription state machine seen from outside."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from recorder import wait_until

import natsync
from natsync.dispatch import MAX_QUEUED_ERRORS, EventDispatcher
from natsync.testing import NATSServer

WAIT = 10.0


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as srv:
        yield srv


def natsync_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("natsync") and t.is_alive()}


def test_connect_flush_close_starts_only_the_reader(server: NATSServer) -> None:
    before = {t for t in threading.enumerate() if t.name.startswith("natsync")}
    nc = natsync.connect(server.url)
    try:
        nc.flush(timeout=WAIT)
        mine = {t.name for t in threading.enumerate() if t.name.startswith("natsync") and t not in before}
        assert mine == {"natsync-reader"}  # no pinger, no writer yet, no event thread
        nc.publish("core.threads", b"x")  # the first publish starts the writer
        assert wait_until(lambda: "natsync-writer" in natsync_threads())
        assert nc.rtt(timeout=WAIT) > 0
    finally:
        nc.close()
    left = {t for t in threading.enumerate() if t.name.startswith("natsync") and t.is_alive()} - before
    assert not left


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

"""Key/Value and Object Store watchers against a real server: initial values, the
``None`` marker, live changes, options, stop, and a server restart in the middle."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

import natsync
from natsync.js import api
from natsync.js.errors import InvalidKeyError
from natsync.js.kv import Entry, KeyValue
from natsync.testing import NATSServer


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer(jetstream=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def nc(server: NATSServer) -> Iterator[natsync.Client]:
    with natsync.connect(server.url) as client:
        yield client


_counter = iter(range(1_000_000))


@pytest.fixture
def kv(nc: natsync.Client) -> Iterator[KeyValue]:
    js = nc.jetstream()
    name = f"W{next(_counter)}"
    bucket = js.create_key_value(bucket=name, history=10, storage=api.StorageType.MEMORY)
    yield bucket
    js.delete_key_value(name)


def _take(w: object, n: int) -> list[Entry | None]:
    return [w.updates(timeout=5) for _ in range(n)]  # type: ignore[attr-defined]


def test_current_values_then_marker_then_live(kv: KeyValue) -> None:
    kv.put("a", b"1")
    kv.put("a", b"2")
    kv.put("b", b"x")
    kv.put("c", b"gone")
    kv.delete("c")
    with kv.watch() as w:
        first = _take(w, 4)
        assert [(e.key, e.value, e.operation) for e in first[:3]] == [  # type: ignore[union-attr]
            ("a", b"2", None),
            ("b", b"x", None),
            ("c", b"", "DEL"),
        ]
        assert first[3] is None
        assert first[0].delta == 2 and first[2].delta == 0  # type: ignore[union-attr]
        rev = kv.put("d", b"live")
        kv.purge("a")
        live = _take(w, 2)
        assert (live[0].key, live[0].value, live[0].revision) == ("d", b"live", rev)  # type: ignore[union-attr]
        assert (live[1].key, live[1].operation) == ("a", "PURGE")  # type: ignore[union-attr]
        assert live[0].created is not None and live[0].bucket == kv.bucket  # type: ignore[union-attr]
        with pytest.raises(natsync.TimeoutError):
            w.updates(timeout=0.2)


def test_empty_bucket_marker_first(kv: KeyValue) -> None:
    with kv.watch("x.>") as w:
        assert w.updates(timeout=5) is None
        kv.put("x.1", b"v")
        kv.put("y.1", b"other")  # not watched
        kv.put("x.2", b"w")
        got = _take(w, 2)
        assert [e.key for e in got] == ["x.1", "x.2"]  # type: ignore[union-attr]


def test_options(kv: KeyValue) -> None:
    kv.put("k", b"1")
    kv.put("k", b"2")
    kv.put("j", b"big" * 100)
    kv.delete("gone")
    with kv.watch("k", include_history=True) as w:
        assert [e.value if e else None for e in _take(w, 3)] == [b"1", b"2", None]
    with kv.watch(ignore_deletes=True) as w:
        got = _take(w, 3)
        assert [e.key if e else None for e in got] == ["k", "j", None]
        kv.delete("k")
        kv.put("k", b"3")
        assert w.updates(timeout=5).value == b"3"  # type: ignore[union-attr]
    with kv.watch(["j", "k"], meta_only=True) as w:
        got = _take(w, 3)
        assert [(e.key, e.value) if e else None for e in got] == [("j", b""), ("k", b""), None]
    with pytest.raises(InvalidKeyError):
        kv.watch("a.>.b")


def test_iteration_and_stop_from_another_thread(kv: KeyValue) -> None:
    kv.put("a", b"1")
    w = kv.watch()
    seen: list[Entry | None] = []
    done = threading.Event()

    def consume() -> None:
        for e in w:
            seen.append(e)
        done.set()

    t = threading.Thread(target=consume)
    t.start()
    kv.put("b", b"2")
    deadline = threading.Event()
    for _ in range(500):
        if len(seen) >= 3:
            break
        deadline.wait(0.01)
    w.stop()
    assert done.wait(5), "the iteration did not end after stop()"
    t.join(5)
    assert [e.key if e else None for e in seen] == ["a", None, "b"]
    w.stop()  # twice is fine
    with pytest.raises(StopIteration):
        w.updates(timeout=1)


def test_object_store_watch(nc: natsync.Client) -> None:
    js = nc.jetstream()
    obs = js.create_object_store(bucket="OW", storage=api.StorageType.MEMORY)
    try:
        obs.put("old", b"1")
        with obs.watch() as w:
            first = w.updates(timeout=5)
            assert first is not None and first.name == "old" and first.mtime
            assert w.updates(timeout=5) is None
            obs.put("new", b"22")
            obs.delete("old")
            a, b = w.updates(timeout=5), w.updates(timeout=5)
            assert (a.name, a.size, a.deleted) == ("new", 2, False)  # type: ignore[union-attr]
            assert (b.name, b.deleted) == ("old", True)  # type: ignore[union-attr]
        with obs.watch(ignore_deletes=True) as w:
            assert [i.name if i else None for i in (w.updates(timeout=5), w.updates(timeout=5))] == [
                "new",
                None,
            ]
        with obs.watch(updates_only=True) as w:
            obs.put("newest", b"3")
            assert w.updates(timeout=5).name == "newest"  # type: ignore[union-attr]
    finally:
        js.delete_object_store("OW")


@pytest.mark.timeout(60)
def test_watcher_survives_server_restart() -> None:
    """File storage, same port and store directory: every change arrives exactly once,
    in order, across the restart.  (Distinct keys: in a history=1 bucket a value
    overwritten while the watcher is cut off is gone from the stream, for every client.)"""
    with NATSServer(jetstream=True) as srv:
        with natsync.connect(srv.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1) as nc:
            js = nc.jetstream()
            kv = js.create_key_value(bucket="RESTART", history=1, storage=api.StorageType.FILE)
            for i in range(5):
                kv.put(f"k{i}", str(i))
            w = kv.watch()
            try:
                got = _take(w, 6)
                assert got[-1] is None
                for i in range(5, 10):
                    kv.put(f"k{i}", str(i))
                before = _take(w, 5)
                srv.restart()
                # writes after the restart, through the reconnected client
                written = []
                for i in range(10, 20):
                    for _ in range(100):
                        try:
                            written.append(kv.put(f"k{i}", str(i), timeout=2))
                            break
                        except (natsync.NatsError, OSError):
                            threading.Event().wait(0.1)
                assert len(written) == 10
                after = [w.updates(timeout=15) for _ in range(10)]
                values = [e.value for e in before + after]  # type: ignore[union-attr]
                assert values == [str(i).encode() for i in range(5, 20)]
                revs = [e.revision for e in after]  # type: ignore[union-attr]
                assert revs == written
                with pytest.raises(natsync.TimeoutError):
                    w.updates(timeout=0.5)  # nothing repeated
            finally:
                w.stop()


def test_watch_of_a_deleted_bucket(nc: natsync.Client) -> None:
    from natsync.js.errors import BucketNotFoundError

    js = nc.jetstream()
    kv = js.create_key_value(bucket="GONE", storage=api.StorageType.MEMORY)
    js.delete_key_value("GONE")
    with pytest.raises(BucketNotFoundError):
        kv.watch()
    with pytest.raises(BucketNotFoundError):
        kv.keys()


def test_updates_only(kv: KeyValue) -> None:
    kv.put("old", b"1")
    with kv.watch(updates_only=True) as w:
        with pytest.raises(natsync.TimeoutError):
            w.updates(timeout=0.3)  # neither the current value nor a None marker
        kv.put("new", b"2")
        e = w.updates(timeout=5)
        assert e is not None and (e.key, e.value) == ("new", b"2")

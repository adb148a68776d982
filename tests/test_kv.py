"""Key/Value buckets against a real JetStream server: every call, limits, races, TTL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from jskit import js_server, module_js, module_nc

import natsync
from natsync.js import api
from natsync.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    InvalidBucketNameError,
    InvalidKeyError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from natsync.js.kv import KeyValue
from natsync.testing import NATSServer

__all__ = ["js_server", "module_js", "module_nc"]


_counter = iter(range(1_000_000))


@pytest.fixture
def kv(js: object) -> Iterator[KeyValue]:
    name = f"T{next(_counter)}"
    bucket = js.create_key_value(bucket=name, history=5, storage=api.StorageType.MEMORY)  # type: ignore[attr-defined]
    yield bucket
    js.delete_key_value(name)  # type: ignore[attr-defined]


def test_bucket_lifecycle_and_stream_layout(js: object) -> None:
    kv = js.create_key_value(bucket="LAYOUT", history=3, ttl=60, max_value_size=512)  # type: ignore[attr-defined]
    try:
        assert kv.bucket == "LAYOUT"
        info = js.stream_info("KV_LAYOUT")  # type: ignore[attr-defined]
        cfg = info.config
        assert cfg.subjects == ["$KV.LAYOUT.>"]
        assert cfg.max_msgs_per_subject == 3 and cfg.max_age == 60
        assert cfg.allow_rollup_hdrs and cfg.deny_delete and cfg.allow_direct
        assert cfg.discard == api.DiscardPolicy.NEW and cfg.max_msg_size == 512
        again = js.create_key_value(
            config=api.KeyValueConfig(bucket="LAYOUT", history=3, ttl=60, max_value_size=512)
        )  # type: ignore[attr-defined]
        assert again.bucket == "LAYOUT"  # same settings: idempotent
        bound = js.key_value("LAYOUT")  # type: ignore[attr-defined]
        bound.put("k", b"v")
        assert kv.get("k").value == b"v"
        st = kv.status()
        assert (st.bucket, st.history, st.ttl, st.values) == ("LAYOUT", 3, 60, 1)
        assert st.bytes > 0
    finally:
        assert js.delete_key_value("LAYOUT") is True  # type: ignore[attr-defined]
    with pytest.raises(BucketNotFoundError):
        js.key_value("LAYOUT")  # type: ignore[attr-defined]
    with pytest.raises(BucketNotFoundError):
        js.delete_key_value("LAYOUT")  # type: ignore[attr-defined]


def test_bad_names_send_nothing(nc: natsync.Client, js: object, kv: KeyValue) -> None:
    before = nc.stats.out_msgs
    for bad in ("", "a.b", "a b", "x>"):
        with pytest.raises(InvalidBucketNameError):
            js.create_key_value(bucket=bad)  # type: ignore[attr-defined]
        with pytest.raises(InvalidBucketNameError):
            js.key_value(bad)  # type: ignore[attr-defined]
    for key in ("", ".a", "a.", "a..b", "a b", "a*", "a>", "ü"):
        with pytest.raises(InvalidKeyError):
            kv.put(key, b"x")
        with pytest.raises(InvalidKeyError):
            kv.get(key)
        with pytest.raises(InvalidKeyError):
            kv.update(key, b"x", last=1)
        with pytest.raises(InvalidKeyError):
            kv.delete(key)
    with pytest.raises(ValueError, match="history"):
        js.create_key_value(bucket="H", history=65)  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        kv.put("k", 5)  # type: ignore[arg-type]
    assert nc.stats.out_msgs == before


def test_put_get_revisions(kv: KeyValue) -> None:
    r1 = kv.put("user.1", b"alice")
    r2 = kv.put("user.2", "bob")
    r3 = kv.put("user.1", b"alice2")
    assert r1 < r2 < r3
    e = kv.get("user.1")
    assert (e.bucket, e.key, e.value, e.revision, e.operation) == (kv.bucket, "user.1", b"alice2", r3, None)
    assert e.created is not None and e.created.tzinfo is not None
    assert kv.get("user.1", revision=r1).value == b"alice"
    assert kv.get("user.2").value == b"bob"
    with pytest.raises(KeyNotFoundError):
        kv.get("user.1", revision=r2)  # a revision of another key
    with pytest.raises(KeyNotFoundError) as exc:
        kv.get("nobody")
    assert not isinstance(exc.value, KeyDeletedError)
    with pytest.raises(KeyNotFoundError):
        kv.get("user.1", revision=10_000)
    assert kv.put("empty", b"") > r3
    assert kv.get("empty").value == b""


def test_create_update_delete_purge(kv: KeyValue) -> None:
    r1 = kv.create("k", b"1")
    with pytest.raises(KeyWrongLastSequenceError) as exc:
        kv.create("k", b"again")
    assert isinstance(exc.value, BadRequestError) and exc.value.err_code in (10071, 10164)
    r2 = kv.update("k", b"2", last=r1)
    with pytest.raises(KeyWrongLastSequenceError):
        kv.update("k", b"stale", last=r1)
    assert kv.get("k").value == b"2"
    with pytest.raises(KeyWrongLastSequenceError):
        kv.delete("k", last=r1)
    assert kv.delete("k", last=r2) is True
    with pytest.raises(KeyDeletedError) as dexc:
        kv.get("k")
    assert isinstance(dexc.value, KeyNotFoundError)
    assert dexc.value.entry is not None and dexc.value.entry.operation == "DEL"
    assert dexc.value.op == "DEL"
    # history is kept after a delete; a deleted key may be created again
    hist = kv.history("k")
    assert [h.operation for h in hist] == [None, None, "DEL"]
    r4 = kv.create("k", b"reborn")
    assert kv.get("k").value == b"reborn" and kv.get("k").revision == r4
    kv.put("k", b"5")
    assert kv.purge("k") is True
    hist = kv.history("k")
    assert [h.operation for h in hist] == ["PURGE"]  # older revisions dropped
    with pytest.raises(KeyDeletedError):
        kv.get("k")
    kv.create("k", b"after purge")
    assert kv.get("k").value == b"after purge"
    with pytest.raises(KeyWrongLastSequenceError):
        kv.update("never", b"x", last=5)
    assert kv.update("fresh", b"x", last=0) > 0  # last=0: only if it does not exist
    with pytest.raises(ValueError):
        kv.update("k", b"x", last=-1)


def test_history_limit_and_keys(kv: KeyValue) -> None:
    for i in range(8):
        kv.put("h", str(i))
    hist = kv.history("h")
    assert [e.value for e in hist] == [b"3", b"4", b"5", b"6", b"7"]  # history=5
    assert [e.revision for e in hist] == sorted(e.revision for e in hist)
    with pytest.raises(NoKeysError):
        kv.history("none")
    kv.put("a.one", b"1")
    kv.put("a.two", b"2")
    kv.put("b.one", b"3")
    kv.delete("a.two")
    assert sorted(kv.keys()) == ["a.one", "b.one", "h"]
    assert kv.keys(filters="a.*") == ["a.one"]
    assert sorted(kv.keys(filters=["a.>", "b.*"])) == ["a.one", "b.one"]
    with pytest.raises(NoKeysError):
        kv.keys(filters="zzz.>")
    with pytest.raises(InvalidKeyError):
        kv.keys(filters="a.>.b")


def test_keys_on_empty_bucket(kv: KeyValue) -> None:
    with pytest.raises(NoKeysError):
        kv.keys()
    kv.put("x", b"1")
    kv.purge("x")
    with pytest.raises(NoKeysError):
        kv.keys()


def test_purge_deletes(kv: KeyValue) -> None:
    kv.put("gone", b"1")
    kv.put("gone", b"2")
    kv.delete("gone")
    kv.put("other", b"x")
    kv.purge("p")
    # recent markers are kept (but their history is dropped) by default
    kv.purge_deletes()
    assert [e.operation for e in kv.history("gone")] == ["DEL"]
    # olderthan <= 0 removes every marker: the key is then simply not found
    kv.purge_deletes(olderthan=-1)
    with pytest.raises(KeyNotFoundError) as exc:
        kv.get("gone")
    assert not isinstance(exc.value, KeyDeletedError)
    with pytest.raises(KeyNotFoundError):
        kv.get("p")
    assert kv.get("other").value == b"x"
    assert kv.status().values == 1


def test_value_size_limit(js: object) -> None:
    kv = js.create_key_value(bucket="SMALL", max_value_size=8, storage=api.StorageType.MEMORY)  # type: ignore[attr-defined]
    try:
        kv.put("ok", b"12345678")
        with pytest.raises(APIError):
            kv.put("big", b"123456789")
    finally:
        js.delete_key_value("SMALL")  # type: ignore[attr-defined]


def test_direct_get_used_when_allowed(js_server: NATSServer, js: object) -> None:
    direct = js.create_key_value(bucket="DIRECT", storage=api.StorageType.MEMORY)  # type: ignore[attr-defined]
    plain = js.create_key_value(bucket="PLAIN", storage=api.StorageType.MEMORY, direct=False)  # type: ignore[attr-defined]
    try:
        with natsync.connect(js_server.url) as spy:
            seen = spy.subscribe("$JS.API.>")
            spy.flush()
            direct.put("k", b"d")
            plain.put("k", b"p")
            assert direct.get("k").value == b"d"
            assert plain.get("k").value == b"p"
            spy.flush()
            subjects = []
            while True:
                try:
                    subjects.append(seen.next_msg(timeout=0.5).subject)
                except natsync.TimeoutError:
                    break
        assert any(s.startswith("$JS.API.DIRECT.GET.KV_DIRECT") for s in subjects), subjects
        assert "$JS.API.STREAM.MSG.GET.KV_PLAIN" in subjects, subjects
        assert not any(s.startswith("$JS.API.DIRECT.GET.KV_PLAIN") for s in subjects)
    finally:
        js.delete_key_value("DIRECT")  # type: ignore[attr-defined]
        js.delete_key_value("PLAIN")  # type: ignore[attr-defined]


def test_racing_updates_exactly_one_wins(js_server: NATSServer, kv: KeyValue) -> None:
    """Two writers on two connections race update(last=) on the same revision."""
    with natsync.connect(js_server.url) as nc2:
        kv2 = nc2.jetstream().key_value(kv.bucket)
        last = kv.put("leader", b"none")
        for round_ in range(20):
            barrier = threading.Barrier(2)
            results: dict[str, object] = {}

            def write(
                name: str,
                bucket: KeyValue,
                last: int = last,
                barrier: threading.Barrier = barrier,
                results: dict[str, object] = results,
            ) -> None:
                barrier.wait(5)
                try:
                    results[name] = bucket.update("leader", name.encode(), last=last)
                except KeyWrongLastSequenceError as err:
                    results[name] = err

            threads = [threading.Thread(target=write, args=(n, b)) for n, b in (("a", kv), ("b", kv2))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            wins = [n for n, r in results.items() if isinstance(r, int)]
            losses = [n for n, r in results.items() if isinstance(r, KeyWrongLastSequenceError)]
            assert len(wins) == 1 and len(losses) == 1, (round_, results)
            entry = kv.get("leader")
            assert entry.value == wins[0].encode() and entry.revision == results[wins[0]]
            last = entry.revision


def test_ttl_expiry(js: object) -> None:
    kv = js.create_key_value(bucket="TTL", ttl=0.5, storage=api.StorageType.MEMORY)  # type: ignore[attr-defined]
    try:
        kv.put("session", b"token")
        assert kv.get("session").value == b"token"
        deadline = time.monotonic() + 10
        while True:
            try:
                kv.get("session")
            except KeyNotFoundError:
                break
            assert time.monotonic() < deadline, "the value did not expire"
            threading.Event().wait(0.05)
        assert kv.status().values == 0
    finally:
        js.delete_key_value("TTL")  # type: ignore[attr-defined]


@pytest.mark.parametrize("direct", [True, False])
def test_bucket_deleted_under_a_handle(js: object, direct: bool) -> None:
    kv = js.create_key_value(bucket="VANISH", storage=api.StorageType.MEMORY, direct=direct)  # type: ignore[attr-defined]
    kv.put("k", b"v")
    js.delete_key_value("VANISH")  # type: ignore[attr-defined]
    with pytest.raises(BucketNotFoundError):
        kv.get("k")
    with pytest.raises(BucketNotFoundError):
        kv.put("k", b"v2")
    with pytest.raises(BucketNotFoundError):
        kv.update("k", b"v2", last=1)
    with pytest.raises(BucketNotFoundError):
        kv.status()


def test_server_placed_markers(js: object) -> None:
    """Server 2.11+ buckets with limit markers: a key that ages out gets a marker with
    ``Nats-Marker-Reason: MaxAge`` (no KV-Operation), read as a purge by get and watch."""
    from natsync.js.kv import kv_stream_config

    cfg = kv_stream_config(api.KeyValueConfig(bucket="MARKERS", ttl=1.0, storage=api.StorageType.MEMORY))
    js.add_stream(cfg.evolve(allow_msg_ttl=True, subject_delete_marker_ttl=60.0))  # type: ignore[attr-defined]
    try:
        kv = js.key_value("MARKERS")  # type: ignore[attr-defined]
        with kv.watch() as w:
            assert w.updates(timeout=5) is None
            kv.put("k", b"v")
            assert w.updates(timeout=5).value == b"v"
            marker = w.updates(timeout=15)
        assert (marker.key, marker.operation, marker.value) == ("k", "PURGE", b"")
        with pytest.raises(KeyDeletedError) as exc:
            kv.get("k")
        assert exc.value.op == "PURGE"
        kv.create("k", b"again")  # a marker does not block create
    finally:
        js.delete_key_value("MARKERS")  # type: ignore[attr-defined]


def test_small_calls_and_bad_arguments(js: object, kv: KeyValue) -> None:
    assert repr(kv) == f"<KeyValue bucket={kv.bucket!r}>"
    st = kv.status()
    assert st.storage == api.StorageType.MEMORY and st.replicas == 1 and st.max_bytes == -1 and st.ttl is None
    r1 = kv.put("k", bytearray(b"ba"))
    assert kv.get("k").value == b"ba"
    with pytest.raises(ValueError, match="revision"):
        kv.get("k", revision=0)
    with pytest.raises(ValueError, match="last"):
        kv.delete("k", last=-2)
    with pytest.raises(KeyWrongLastSequenceError):
        kv.purge("k", last=r1 + 100)
    assert kv.purge("k", last=r1) is True
    with kv.watchall() as w:
        e = w.updates(timeout=5)
        assert e is not None and e.operation == "PURGE"
    with pytest.raises(TypeError, match="KeyValueConfig"):
        js.create_key_value(config=api.StreamConfig(name="x"))  # type: ignore[attr-defined]
    # a stream named like a bucket that is not one
    js.add_stream(name="KV_NOTKV", subjects=["notkv.>"], storage=api.StorageType.MEMORY)  # type: ignore[attr-defined]
    try:
        with pytest.raises(BucketNotFoundError, match="not a Key/Value bucket"):
            js.key_value("NOTKV")  # type: ignore[attr-defined]
    finally:
        js.delete_stream("KV_NOTKV")  # type: ignore[attr-defined]

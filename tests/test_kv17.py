"""Issue 17, Key/Value and Object Store, against a real nats-server -js: nats-py's
``create_object_store(bucket, config=)``, the watch option checks, per-key TTL and
limit markers (server 2.11+), bucket listing, metadata, ``status().config()``,
``watch(resume_from_revision=)``, ``KeyDeletedError`` naming the key.

Cases translated from nats.go (``jetstream/test/kv_test.go``, ``object_test.go``) and
nats.py (the KV and Object Store tests of ``tests/test_js.py``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from jskit import js, js_server, nc
from recorder import wait_until

import natsync
from natsync.js import JetStream, api, errors
from natsync.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from natsync.js.kv import Entry, KeyValue

__all__ = ["js", "js_server", "nc"]

_names = itertools.count(1)


@pytest.fixture
def kv(js: JetStream) -> Iterator[KeyValue]:
    name = f"KV17_{next(_names)}"
    bucket = js.create_key_value(bucket=name, history=10, storage=StorageType.MEMORY)
    yield bucket
    try:
        js.delete_key_value(name)
    except natsync.NatsError:
        pass


def _drain(watcher: object, n: int) -> list[Entry | None]:
    out: list[Entry | None] = []
    for _ in range(n):
        out.append(watcher.updates(timeout=5))  # type: ignore[attr-defined]
    return out


# ------------------------------------------------------------------------ bugs


def test_create_object_store_nats_py_signature(js: JetStream) -> None:
    # nats.py: js.create_object_store("B", config=ObjectStoreConfig(...)); natsync's
    # first positional parameter was config (TypeError).
    n = next(_names)
    cfg = ObjectStoreConfig(description="from nats-py", storage=StorageType.MEMORY)
    obs = js.create_object_store(f"OB{n}", config=cfg)
    assert obs.bucket == f"OB{n}"
    assert obs.status().description == "from nats-py"
    assert cfg.bucket is None  # the caller's config is not modified
    # nats-py: create_object_store(bucket="B") and keyword fields
    obs2 = js.create_object_store(bucket=f"OC{n}", description="kw", storage=StorageType.MEMORY)
    assert obs2.status().description == "kw"
    # natsync's older call: the config first
    obs3 = js.create_object_store(ObjectStoreConfig(bucket=f"OD{n}", storage=StorageType.MEMORY))
    assert obs3.bucket == f"OD{n}"
    with pytest.raises(ValueError, match="one ObjectStoreConfig"):
        js.create_object_store(ObjectStoreConfig(bucket="X"), config=ObjectStoreConfig(bucket="Y"))
    with pytest.raises(errors.InvalidBucketNameError):
        js.create_object_store()
    for b in (f"OB{n}", f"OC{n}", f"OD{n}"):
        js.delete_object_store(b)


def test_watch_include_history_with_updates_only_refused(nc: natsync.Client, kv: KeyValue) -> None:
    # nats.go IncludeHistory()/UpdatesOnly(): ErrInvalidOption; nats-py refuses too
    before = nc.stats.out_msgs
    with pytest.raises(ValueError, match="include_history and updates_only"):
        kv.watch(">", include_history=True, updates_only=True)
    with pytest.raises(ValueError, match="resume_from_revision"):
        kv.watch(">", resume_from_revision=0)
    with pytest.raises(ValueError, match="resume_from_revision"):
        kv.watch(">", resume_from_revision=3, updates_only=True)
    assert nc.stats.out_msgs == before


def test_object_watch_include_history_with_updates_only_refused(js: JetStream) -> None:
    obs = js.create_object_store(f"OW{next(_names)}", storage=StorageType.MEMORY)
    with pytest.raises(ValueError, match="include_history and updates_only"):
        obs.watch(include_history=True, updates_only=True)
    js.delete_object_store(obs.bucket)


def test_key_deleted_error_names_the_key(kv: KeyValue) -> None:
    kv.put("gone.key", b"v")
    kv.delete("gone.key")
    with pytest.raises(errors.KeyDeletedError) as e:
        kv.get("gone.key")
    assert "'gone.key'" in str(e.value) and "deleted" in str(e.value)
    assert e.value.entry is not None and e.value.entry.key == "gone.key"
    kv.put("purged.key", b"v")
    kv.purge("purged.key")
    with pytest.raises(errors.KeyNotFoundError) as e2:
        kv.get("purged.key")
    assert "'purged.key'" in str(e2.value) and "purged" in str(e2.value)


# -------------------------------------------------------- TTL and limit markers


def test_kv_create_with_ttl_and_limit_markers(js: JetStream) -> None:
    # nats.go TestKeyValueLimitMarkerTTL ("create with TTL")
    name = f"KVT{next(_names)}"
    kv = js.create_key_value(bucket=name, history=5, limit_marker_ttl=1, storage=StorageType.MEMORY)
    st = kv.status()
    assert st.limit_marker_ttl == 1.0
    assert st.stream_info.config.allow_msg_ttl is True
    assert st.stream_info.config.subject_delete_marker_ttl == 1.0
    rev = kv.create("session", b"token", ttl=1)
    entry = kv.get("session")
    assert entry.revision == rev and entry.value == b"token"
    raw = js.get_msg(f"KV_{name}", rev)
    assert raw.headers is not None and raw.headers.get("Nats-TTL") == "1s"

    with kv.watch(">", updates_only=True) as watcher:

        def expired() -> bool:
            try:
                kv.get("session")
            except errors.KeyNotFoundError:
                return True
            return False

        assert wait_until(expired, 15)
        # the watcher sees the server's marker as a purge of the key
        seen = watcher.updates(timeout=10)
        assert seen is not None and seen.key == "session" and seen.operation == "PURGE"
    # the key may be created again once it expired
    assert kv.create("session", b"again", msg_ttl="1h") > rev
    with pytest.raises(ValueError, match="ttl"):
        kv.create("other", b"x", ttl=0.2)
    with pytest.raises(ValueError, match="msg_ttl"):
        kv.create("other", b"x", ttl=5, msg_ttl=5)
    js.delete_key_value(name)


def test_kv_create_ttl_needs_limit_marker_bucket(kv: KeyValue) -> None:
    with pytest.raises(errors.APIError):
        kv.create("k", b"v", ttl=5)


def test_bad_limit_marker_ttl_and_metadata(nc: natsync.Client, js: JetStream) -> None:
    before = nc.stats.out_msgs
    with pytest.raises(ValueError, match="limit_marker_ttl"):
        js.create_key_value(bucket="BADMARK", limit_marker_ttl=0.5)
    with pytest.raises(ValueError, match="metadata"):
        js.create_key_value(bucket="BADMETA", metadata={"n": 1})
    with pytest.raises(ValueError, match="metadata"):
        js.create_object_store("BADMETA", metadata={"n": 1})
    assert nc.stats.out_msgs == before


# ------------------------------------------------------ listing and metadata


def test_key_value_and_object_store_listing(js: JetStream) -> None:
    # nats.go TestListKeyValueStores / TestListObjectStores
    n = next(_names)
    kv_names = [f"L{n}_{i}" for i in range(3)]
    for b in kv_names:
        js.create_key_value(bucket=b, storage=StorageType.MEMORY)
    obs_names = [f"LO{n}_{i}" for i in range(2)]
    for b in obs_names:
        js.create_object_store(b, storage=StorageType.MEMORY)
    js.add_stream(name=f"PLAIN{n}", subjects=[f"plain{n}.>"], storage=StorageType.MEMORY)

    names = js.key_value_store_names()
    assert set(kv_names) <= set(names) and not set(obs_names) & set(names)
    assert f"PLAIN{n}" not in names and f"KV_{kv_names[0]}" not in names
    statuses = {s.bucket: s for s in js.key_value_stores()}
    assert set(kv_names) <= set(statuses)
    assert statuses[kv_names[0]].history == 1

    onames = js.object_store_names()
    assert set(obs_names) <= set(onames) and not set(kv_names) & set(onames)
    ostatuses = {s.bucket: s for s in js.object_stores()}
    assert set(obs_names) <= set(ostatuses)
    assert ostatuses[obs_names[0]].storage == StorageType.MEMORY

    for b in kv_names:
        js.delete_key_value(b)
    for b in obs_names:
        js.delete_object_store(b)
    js.delete_stream(f"PLAIN{n}")
    assert not set(kv_names) & set(js.key_value_store_names())
    assert not set(obs_names) & set(js.object_store_names())


def test_bucket_metadata_and_status_config(js: JetStream) -> None:
    # nats.go TestKeyValueConfig (KeyValueStatus.Config()) / TestObjectMetadata
    name = f"MD{next(_names)}"
    kv = js.create_key_value(
        bucket=name,
        description="users",
        history=4,
        ttl=3600,
        max_value_size=1024,
        storage=StorageType.MEMORY,
        metadata={"owner": "team-a"},
    )
    st = kv.status()
    assert st.metadata == {"owner": "team-a"}  # the server's _nats.* keys left out
    assert st.is_compressed is False
    cfg = st.config()
    assert isinstance(cfg, KeyValueConfig)
    assert (cfg.bucket, cfg.description, cfg.history, cfg.ttl, cfg.max_value_size) == (
        name,
        "users",
        4,
        3600.0,
        1024,
    )
    assert cfg.storage == StorageType.MEMORY and cfg.metadata == {"owner": "team-a"}
    assert cfg.limit_marker_ttl is None
    # the config recreates the same bucket (idempotent create)
    again = js.create_key_value(cfg)
    assert again.status().config() == cfg
    js.delete_key_value(name)

    oname = f"OMD{next(_names)}"
    obs = js.create_object_store(
        oname, description="files", storage=StorageType.MEMORY, metadata={"k": "v"}, compression=False
    )
    ost = obs.status()
    assert ost.metadata == {"k": "v"}
    ocfg = ost.config()
    assert (ocfg.bucket, ocfg.description, ocfg.metadata) == (oname, "files", {"k": "v"})
    js.delete_object_store(oname)


def test_compressed_bucket(js: JetStream) -> None:
    name = f"CMP{next(_names)}"
    kv = js.create_key_value(bucket=name, compression=True)
    assert kv.status().is_compressed is True
    assert kv.status().stream_info.config.compression == api.StoreCompression.S2
    js.delete_key_value(name)


# ------------------------------------------------------------ watch resume


def test_watch_resume_from_revision(kv: KeyValue) -> None:
    # nats.go's ResumeFromRevision watch option
    revs = [kv.put("a", b"1"), kv.put("b", b"2"), kv.put("a", b"3"), kv.put("c", b"4")]
    with kv.watch(">", resume_from_revision=revs[1]) as w:
        got = _drain(w, 4)
        assert [(e.key, e.value, e.revision) for e in got[:3] if e is not None] == [
            ("b", b"2", revs[1]),
            ("a", b"3", revs[2]),
            ("c", b"4", revs[3]),
        ]
        assert got[3] is None
        rev = kv.put("b", b"5")
        nxt = w.updates(timeout=5)
        assert nxt is not None and (nxt.key, nxt.value, nxt.revision) == ("b", b"5", rev)
    # a filter still applies
    with kv.watch("a", resume_from_revision=revs[1]) as w:
        got = _drain(w, 2)
        assert got[0] is not None and got[0].revision == revs[2] and got[1] is None
    # past the end: only the marker, then live changes
    with kv.watch(">", resume_from_revision=rev + 100) as w:
        assert w.updates(timeout=5) is None


# ------------------------------------------------------- nats-py's KV signatures


def test_validate_keys_false_as_nats_py(nc: natsync.Client, kv: KeyValue) -> None:
    # nats.py: put/get/create/update/delete(..., validate_keys=False)
    with pytest.raises(errors.InvalidKeyError):
        kv.put("odd@key!", b"v")
    rev = kv.put("odd@key!", b"v", False)
    assert kv.get("odd@key!", None, False).revision == rev
    rev2 = kv.update("odd@key!", b"w", rev, validate_keys=False)
    assert kv.create("new@key", b"n", False) > rev2
    assert kv.delete("new@key", validate_keys=False) is True
    with pytest.raises(errors.KeyDeletedError):
        kv.get("new@key", validate_keys=False)
    before = nc.stats.out_msgs
    for bad in ("a b", "a.*", "a.>", "", ".a", "a..b"):
        with pytest.raises(errors.InvalidKeyError):
            kv.put(bad, b"v", validate_keys=False)
    assert nc.stats.out_msgs == before


def test_watch_headers_only_as_nats_py(kv: KeyValue) -> None:
    # nats.py: watch(keys, headers_only=True) delivers entries without their values
    kv.put("h", b"value")
    with kv.watch("h", headers_only=True) as w:
        e = w.updates(timeout=5)
        assert e is not None and e.key == "h" and e.value == b""
        assert w.updates(timeout=5) is None


def test_purge_marker_ttl(js: JetStream) -> None:
    # nats.go TestKeyValueLimitMarkerTTL ("purge with TTL") / nats.py purge(key,
    # msg_ttl=): the purge marker itself expires
    name = f"PT{next(_names)}"
    # (the server raises a marker TTL below limit_marker_ttl to it: keep it above)
    kv = js.create_key_value(bucket=name, history=5, limit_marker_ttl=1, storage=StorageType.MEMORY)
    kv.put("k", b"1")
    kv.put("k", b"2")
    assert kv.purge("k", msg_ttl=2) is True
    marker = js.get_last_msg(f"KV_{name}", f"$KV.{name}.k")
    assert marker.headers is not None and marker.headers.get("Nats-TTL") == "2s"
    assert marker.headers.get("KV-Operation") == "PURGE"

    def marker_gone() -> bool:
        try:
            kv.get("k")
        except errors.KeyDeletedError:
            return False
        except errors.KeyNotFoundError:
            return True
        return False

    assert wait_until(marker_gone, 15)
    with pytest.raises(ValueError, match="msg_ttl"):
        kv.purge("k", ttl=1, msg_ttl=1)
    js.delete_key_value(name)

"""Object Store buckets against a real JetStream server: every call, big objects with
bounded memory, corrupted and truncated objects, links."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jskit import js_server, module_js, module_nc

import natsync
from natsync.js import api
from natsync.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    DigestMismatchError,
    InvalidBucketNameError,
    ObjectDeletedError,
    ObjectNotFoundError,
)
from natsync.js.object_store import ObjectStore, chunk_subject, meta_subject

__all__ = ["js_server", "module_js", "module_nc"]

MiB = 1024 * 1024


_counter = iter(range(1_000_000))


@pytest.fixture
def obs(js: object) -> Iterator[ObjectStore]:
    name = f"O{next(_counter)}"
    store = js.create_object_store(bucket=name, storage=api.StorageType.MEMORY)  # type: ignore[attr-defined]
    yield store
    js.delete_object_store(name)  # type: ignore[attr-defined]


def _vm(field: str) -> int:
    """A VmRSS/VmHWM value of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _PatternReader(io.RawIOBase):
    """A binary reader of *size* pseudo-random bytes that never holds them all."""

    def __init__(self, size: int, seed: bytes = b"natsync") -> None:
        self._left = size
        self._block = hashlib.sha512(seed).digest() * 4096  # 256 KiB
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._left, len(self._block) - self._pos)
        if n <= 0:
            return 0
        b[:n] = self._block[self._pos : self._pos + n]
        self._pos = (self._pos + n) % len(self._block)
        if self._pos == 0:
            self._block = hashlib.sha512(self._block[:64]).digest() * 4096
        self._left -= n
        return n


def test_bucket_lifecycle_and_layout(js: object) -> None:
    store = js.create_object_store(bucket="LAYOUT", description="files", ttl=3600)  # type: ignore[attr-defined]
    try:
        cfg = js.stream_info("OBJ_LAYOUT").config  # type: ignore[attr-defined]
        assert cfg.subjects == ["$O.LAYOUT.C.>", "$O.LAYOUT.M.>"]
        assert cfg.allow_rollup_hdrs and cfg.allow_direct and cfg.discard == api.DiscardPolicy.NEW
        assert cfg.max_age == 3600 and cfg.description == "files"
        bound = js.object_store("LAYOUT")  # type: ignore[attr-defined]
        assert bound.bucket == "LAYOUT" and store.list() == []
        st = store.status()
        assert st.bucket == "LAYOUT" and st.ttl == 3600 and not st.sealed and st.description == "files"
    finally:
        assert js.delete_object_store("LAYOUT") is True  # type: ignore[attr-defined]
    with pytest.raises(BucketNotFoundError):
        js.object_store("LAYOUT")  # type: ignore[attr-defined]
    with pytest.raises(InvalidBucketNameError):
        js.create_object_store(bucket="bad.name")  # type: ignore[attr-defined]


def test_put_get_bytes_str_file(obs: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)  # 3 chunks of 128 KiB
    info = obs.put("blob", data)
    assert (info.name, info.bucket, info.size, info.chunks) == ("blob", obs.bucket, 300_000, 3)
    assert (
        info.digest
        == "SHA-256=" + __import__("base64").urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    )
    res = obs.get("blob")
    assert res.data == data and res.info.digest == info.digest and res.info.mtime
    assert obs.put("text", "héllo").size == len("héllo".encode())
    assert obs.get("text").data == "héllo".encode()
    empty = obs.put("empty", b"")
    assert empty.size == 0 and empty.chunks == 0
    assert obs.get("empty").data == b""
    src = tmp_path / "src.bin"
    src.write_bytes(data[:200_000])
    with open(src, "rb") as f:
        assert obs.put("file", f, chunk_size=64 * 1024).chunks == 4
    out = tmp_path / "out.bin"
    with open(out, "wb") as f:
        res = obs.get("file", writeinto=f)
    assert res.data == b"" and out.read_bytes() == data[:200_000]
    with open(src) as text_file, pytest.raises(TypeError, match="rb"):
        obs.put("bad", text_file)  # type: ignore[arg-type]
    with open(tmp_path / "text.out", "w") as text_out, pytest.raises(TypeError, match="wb"):
        obs.get("file", writeinto=text_out)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        obs.put("bad", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        obs.put("", b"x")
    # every get's private consumer is gone afterwards
    deadline = time.monotonic() + 5
    while obs._js.consumers_info(f"OBJ_{obs.bucket}"):
        assert time.monotonic() < deadline, "a get left its consumer behind"
        threading.Event().wait(0.05)


def test_info_meta_update_delete_list(obs: ObjectStore) -> None:
    meta = api.ObjectMeta(name="doc", description="a doc", headers={"Content-Type": ["text/plain"]})
    obs.put("doc", b"v1", meta=meta)
    info = obs.get_info("doc")
    assert info.description == "a doc" and info.headers == {"Content-Type": ["text/plain"]}
    old_nuid = info.nuid
    # a new version replaces the old one, whose chunks are purged
    obs.put("doc", b"v2 longer", meta=meta)
    assert obs.get("doc").data == b"v2 longer"
    js = obs._js
    with pytest.raises(natsync.NatsError):
        js.get_msg(f"OBJ_{obs.bucket}", subject=chunk_subject(obs.bucket, old_nuid))
    obs.put("other", b"o")
    assert sorted(i.name for i in obs.list()) == ["doc", "other"]
    assert obs.update_meta("doc", api.ObjectMeta(name="doc", description="new")) is True
    assert obs.get_info("doc").description == "new"
    assert obs.get("doc").data == b"v2 longer"
    with pytest.raises(BadRequestError):
        obs.update_meta("doc", api.ObjectMeta(name="other"))
    obs.update_meta("doc", api.ObjectMeta(name="renamed", description="moved"))
    with pytest.raises(ObjectNotFoundError):
        obs.get_info("doc")
    assert obs.get("renamed").data == b"v2 longer"
    assert obs.delete("renamed") is True
    with pytest.raises(ObjectNotFoundError):
        obs.get("renamed")
    with pytest.raises(ObjectNotFoundError):
        obs.delete("renamed")
    deleted = obs.get_info("renamed", show_deleted=True)
    assert deleted.deleted and deleted.size == 0
    with pytest.raises(ObjectDeletedError):
        obs.update_meta("renamed", api.ObjectMeta(name="renamed"))
    with pytest.raises(ObjectNotFoundError):
        obs.update_meta("never", api.ObjectMeta(name="never"))
    assert [i.name for i in obs.list()] == ["other"]
    assert sorted(i.name for i in obs.list(ignore_deletes=False)) == ["other", "renamed"]
    with pytest.raises(ObjectNotFoundError):
        obs.get("missing")


def test_links(js: object, obs: ObjectStore) -> None:
    other = js.create_object_store(bucket="LINKED", storage=api.StorageType.MEMORY)  # type: ignore[attr-defined]
    try:
        target = other.put("target", b"linked bytes")
        link = obs.add_link("ln", target)
        assert link.options is not None and link.options.link == api.ObjectLink(
            bucket="LINKED", name="target"
        )
        assert obs.get("ln").data == b"linked bytes"
        local = obs.put("here", b"local")
        obs.add_link("ln2", local)
        assert obs.get("ln2").data == b"local"
        with pytest.raises(ValueError, match="link itself"):
            obs.add_link("ln3", obs.get_info("ln"))
        with pytest.raises(ValueError, match="not a link"):
            obs.add_link("here", target)
        blink = obs.add_bucket_link("dir", other)
        assert blink.options is not None and blink.options.link == api.ObjectLink(bucket="LINKED")
        with pytest.raises(ValueError, match="bucket"):
            obs.get("dir")
    finally:
        js.delete_object_store("LINKED")  # type: ignore[attr-defined]


def test_seal(js: object) -> None:
    store = js.create_object_store(bucket="SEALED", storage=api.StorageType.MEMORY)  # type: ignore[attr-defined]
    try:
        store.put("a", b"1")
        assert store.seal() is True
        assert store.status().sealed
        with pytest.raises(APIError):
            store.put("b", b"2")
        assert store.get("a").data == b"1"
    finally:
        js.delete_object_store("SEALED")  # type: ignore[attr-defined]


def _chunk_seqs(js: object, obs: ObjectStore, name: str) -> list[int]:
    info = obs.get_info(name)
    first = js.get_msg(f"OBJ_{obs.bucket}", subject=chunk_subject(obs.bucket, info.nuid))  # type: ignore[attr-defined]
    # chunks are stored back to back; the meta record follows them
    last = first.seq
    return list(range(last - (info.chunks or 0) + 1, last + 1))


@pytest.mark.parametrize("which", ["first", "middle", "last", "all"])
def test_truncated_object_raises_digest_mismatch(
    js: object, obs: ObjectStore, tmp_path: Path, which: str
) -> None:
    data = os.urandom(5 * 1024)
    obs.put("victim", data, chunk_size=1024)
    seqs = _chunk_seqs(js, obs, "victim")
    assert len(seqs) == 5
    stream = f"OBJ_{obs.bucket}"
    drop = {"first": seqs[:1], "middle": seqs[2:3], "last": seqs[-1:], "all": seqs}[which]
    for seq in drop:
        js.delete_msg(stream, seq)  # type: ignore[attr-defined]
    with pytest.raises(DigestMismatchError) as exc:
        obs.get("victim", timeout=5)
    assert "victim" in str(exc.value)
    out = tmp_path / "partial.bin"
    with open(out, "wb") as f, pytest.raises(DigestMismatchError, match="discard"):
        obs.get("victim", writeinto=f, timeout=5)


def test_forged_chunk_raises_digest_mismatch(nc: natsync.Client, js: object, obs: ObjectStore) -> None:
    obs.put("forged", b"A" * 2048, chunk_size=1024)
    info = obs.get_info("forged")
    stream = f"OBJ_{obs.bucket}"
    seqs = _chunk_seqs(js, obs, "forged")
    js.delete_msg(stream, seqs[-1])  # type: ignore[attr-defined]
    js.publish(chunk_subject(obs.bucket, info.nuid), b"B" * 1024)  # type: ignore[attr-defined]
    with pytest.raises(DigestMismatchError):
        obs.get("forged")
    # and a meta record whose digest lies
    rec = js.get_msg(stream, subject=meta_subject(obs.bucket, "forged")).data  # type: ignore[attr-defined]
    assert rec is not None


@pytest.mark.timeout(120)
def test_200_mib_object_in_bounded_memory(js: object, tmp_path: Path) -> None:
    size = 200 * MiB
    store = js.create_object_store(bucket="BIG", storage=api.StorageType.MEMORY)  # type: ignore[attr-defined]
    try:
        expect = hashlib.sha256()
        probe = _PatternReader(size)
        buf = bytearray(MiB)
        while n := probe.readinto(buf):
            expect.update(memoryview(buf)[:n])

        base = _vm("VmRSS")
        can_reset = _reset_peak_rss()
        info = store.put("big.bin", _PatternReader(size))
        put_peak = _vm("VmHWM") if can_reset else _vm("VmRSS")
        assert info.size == size and info.chunks == size // (128 * 1024)

        out = tmp_path / "big.out"
        _reset_peak_rss()
        with open(out, "wb") as f:
            res = store.get("big.bin", writeinto=f)
        get_peak = _vm("VmHWM") if can_reset else _vm("VmRSS")
        assert res.data == b""
        got = hashlib.sha256()
        with open(out, "rb") as f:
            while block := f.read(4 * MiB):
                got.update(block)
        assert got.digest() == expect.digest()
        # far below the object size: a few MiB of windows plus allocator slack
        limit = 32 * MiB
        assert put_peak - base < limit, f"put grew RSS by {(put_peak - base) / MiB:.1f} MiB"
        assert get_peak - base < limit, f"get grew RSS by {(get_peak - base) / MiB:.1f} MiB"
    finally:
        js.delete_object_store("BIG")  # type: ignore[attr-defined]


def test_metadata_round_trip(obs: ObjectStore) -> None:
    meta = api.ObjectMeta(name="m", description="d", metadata={"owner": "ops", "tier": "1"})
    info = obs.put("m", b"data", meta=meta)
    assert info.metadata == {"owner": "ops", "tier": "1"}
    assert obs.get_info("m").metadata == {"owner": "ops", "tier": "1"}
    assert obs.get_info("m").meta.metadata == {"owner": "ops", "tier": "1"}
    obs.update_meta("m", api.ObjectMeta(name="m", metadata={"owner": "dev"}))
    got = obs.get_info("m")
    assert got.metadata == {"owner": "dev"} and got.description is None


def test_bucket_without_direct_get_and_deleted_buckets(js: object) -> None:
    from natsync.js.object_store import obs_stream_config

    cfg = obs_stream_config(api.ObjectStoreConfig(bucket="NODIRECT", storage=api.StorageType.MEMORY))
    js.add_stream(cfg.evolve(allow_direct=False))  # type: ignore[attr-defined]
    store = js.object_store("NODIRECT")  # type: ignore[attr-defined]
    try:
        store.put("x", b"old style bucket")
        assert store.get("x").data == b"old style bucket"
        other = js.create_object_store(bucket="DOOMED", storage=api.StorageType.MEMORY)  # type: ignore[attr-defined]
        store.add_link("to-doomed", other.put("t", b"1"))
        js.delete_object_store("DOOMED")  # type: ignore[attr-defined]
        with pytest.raises(BucketNotFoundError):
            store.get("to-doomed")
        with pytest.raises(BucketNotFoundError):
            other.get_info("t")
        with pytest.raises(BucketNotFoundError):
            other.put("t", b"2")
        with pytest.raises(BucketNotFoundError):
            js.delete_object_store("DOOMED")  # type: ignore[attr-defined]
    finally:
        js.delete_object_store("NODIRECT")  # type: ignore[attr-defined]


class _ReadOnly:
    """A binary reader with read() only (no readinto)."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, n: int) -> bytes:
        return self._buf.read(n)


def test_small_calls_and_bad_arguments(js: object, obs: ObjectStore) -> None:
    assert repr(obs) == f"<ObjectStore bucket={obs.bucket!r}>"
    data = os.urandom(5000)
    assert obs.put("r", _ReadOnly(data), chunk_size=1024).chunks == 5
    assert obs.get("r").data == data
    st = obs.status()
    assert st.storage == api.StorageType.MEMORY and st.replicas == 1 and st.size > 5000
    link_meta = api.ObjectMeta(
        name="l", options=api.ObjectMetaOptions(link=api.ObjectLink(bucket="b", name="n"))
    )
    with pytest.raises(ValueError, match="link"):
        obs.put("l", b"x", meta=link_meta)
    with pytest.raises(ValueError, match="chunk_size"):
        obs.put("l", b"x", chunk_size=-1)
    with pytest.raises(ValueError, match="ObjectInfo"):
        obs.add_link("l", None)  # type: ignore[arg-type]
    deleted = api.ObjectInfo(name="d", bucket=obs.bucket, nuid="N", deleted=True)
    with pytest.raises(ValueError, match="deleted"):
        obs.add_link("l", deleted)
    with pytest.raises(TypeError):
        obs.add_bucket_link("l", "not a store")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ObjectStoreConfig"):
        js.create_object_store(config=api.KeyValueConfig(bucket="x"))  # type: ignore[attr-defined]
    # nats-py's spelling: put(name, data, meta) where meta names another object: name wins
    info = obs.put("wins", b"1", meta=api.ObjectMeta(name="loses"))
    assert info.name == "wins" and obs.get("wins").data == b"1"


class _Exploding(io.RawIOBase):
    """Gives *good* bytes, then fails the way a broken disk or socket would."""

    def __init__(self, good: int) -> None:
        self._left = good

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            raise OSError("disk on fire")
        n = min(len(b), self._left)
        b[:n] = b"x" * n
        self._left -= n
        return n


def test_failed_put_keeps_the_old_version_and_leaves_no_chunks(js: object) -> None:
    store = js.create_object_store(bucket="TIGHT", max_bytes=64 * 1024, storage=api.StorageType.MEMORY)  # type: ignore[attr-defined]
    try:
        store.put("a", b"old version")
        before = store.status().size
        with pytest.raises(APIError):
            store.put("a", os.urandom(200 * 1024), chunk_size=16 * 1024)  # over the bucket's limit
        assert store.get("a").data == b"old version"
        with pytest.raises(OSError, match="fire"):
            store.put("a", _Exploding(40 * 1024), chunk_size=8 * 1024)  # type: ignore[arg-type]
        assert store.get("a").data == b"old version"
        assert store.status().size == before  # the partial chunks were purged
        assert [i.name for i in store.list()] == ["a"]
    finally:
        js.delete_object_store("TIGHT")  # type: ignore[attr-defined]


def test_concurrent_puts_and_gets_on_one_connection(obs: ObjectStore) -> None:
    blobs = {f"t{i}": os.urandom(300_000 + i) for i in range(4)}
    errors: list[BaseException] = []

    def work(name: str, data: bytes) -> None:
        try:
            for _ in range(3):
                obs.put(name, data)
                assert obs.get(name).data == data
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=item) for item in blobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(i.name for i in obs.list()) == sorted(blobs)

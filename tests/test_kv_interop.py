"""Interop with nats-py on one server: Key/Value buckets and Object Store objects made
by one client are used by the other, byte for byte, meta included.

nats-py is asyncio: each step runs its coroutine with ``asyncio.run`` in the test.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

import natsync
from natsync.js import api
from natsync.js.errors import KeyDeletedError, KeyWrongLastSequenceError
from natsync.testing import NATSServer

nats = pytest.importorskip("nats")


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer(jetstream=True) as srv:
        yield srv


@pytest.fixture(scope="module")
def nc(server: NATSServer) -> Iterator[natsync.Client]:
    with natsync.connect(server.url) as client:
        yield client


def _py(url: str, fn: Any) -> Any:
    """Run ``await fn(js)`` with a fresh nats-py connection."""

    async def main() -> Any:
        pnc = await nats.connect(url)
        try:
            return await fn(pnc.jetstream())
        finally:
            await pnc.close()

    return asyncio.run(main())


def test_kv_bucket_made_by_nats_py(server: NATSServer, nc: natsync.Client) -> None:
    url = server.url

    async def create(js: Any) -> None:
        kv = await js.create_key_value(bucket="PYKV", history=5)
        await kv.put("py.one", b"from nats-py")
        await kv.put("py.two", b"second")

    _py(url, create)
    js = nc.jetstream()
    kv = js.key_value("PYKV")
    try:
        assert kv.get("py.one").value == b"from nats-py"
        rev = kv.put("sync.one", b"from natsync")
        kv.update("py.two", b"updated by natsync", last=kv.get("py.two").revision)
        kv.delete("py.one")

        async def read(js: Any) -> dict[str, Any]:
            pkv = await js.key_value("PYKV")
            out: dict[str, Any] = {}
            e = await pkv.get("sync.one")
            out["sync.one"] = (e.value, e.revision)
            out["py.two"] = (await pkv.get("py.two")).value
            try:
                await pkv.get("py.one")
                out["py.one"] = "present"
            except nats.js.errors.KeyNotFoundError:
                out["py.one"] = "deleted"
            out["keys"] = sorted(await pkv.keys())
            out["hist"] = [h.value for h in await pkv.history("py.two")]
            # nats-py's create() of a key natsync deleted, then natsync sees it
            await pkv.create("py.one", b"recreated by nats-py")
            await pkv.purge("sync.one")
            return out

        seen = _py(url, read)
        assert seen["sync.one"] == (b"from natsync", rev)
        assert seen["py.two"] == b"updated by natsync"
        assert seen["py.one"] == "deleted"
        assert seen["keys"] == ["py.two", "sync.one"]
        assert seen["hist"] == [b"second", b"updated by natsync"]
        assert kv.get("py.one").value == b"recreated by nats-py"
        with pytest.raises(KeyDeletedError) as exc:
            kv.get("sync.one")
        assert exc.value.op == "PURGE"
        with pytest.raises(KeyWrongLastSequenceError):
            kv.create("py.one", b"exists")
        assert sorted(kv.keys()) == ["py.one", "py.two"]
    finally:
        js.delete_key_value("PYKV")


def test_natsync_watches_while_nats_py_writes(server: NATSServer, nc: natsync.Client) -> None:
    js = nc.jetstream()
    kv = js.create_key_value(bucket="WATCHED", history=3)
    try:
        kv.put("cfg.a", b"0")
        with kv.watch("cfg.>") as w:
            first = w.updates(timeout=5)
            assert first is not None and (first.key, first.value) == ("cfg.a", b"0")
            assert w.updates(timeout=5) is None

            async def write(js: Any) -> None:
                pkv = await js.key_value("WATCHED")
                for i in range(1, 51):
                    await pkv.put(f"cfg.{'ab'[i % 2]}", str(i).encode())
                await pkv.delete("cfg.a")

            _py(server.url, write)
            got = [w.updates(timeout=5) for _ in range(51)]
        assert [(e.key, e.value) for e in got[:50]] == [
            (f"cfg.{'ab'[i % 2]}", str(i).encode()) for i in range(1, 51)
        ]
        assert got[-1].key == "cfg.a" and got[-1].operation == "DEL"
        revs = [e.revision for e in got]
        assert revs == sorted(revs) and len(set(revs)) == len(revs)
    finally:
        js.delete_key_value("WATCHED")


def test_kv_bucket_made_by_natsync_read_by_nats_py(server: NATSServer, nc: natsync.Client) -> None:
    js = nc.jetstream()
    kv = js.create_key_value(bucket="SYNCKV", history=2)
    try:
        kv.put("k", b"v1")
        kv.put("k", b"v2")
        kv.put("gone", b"x")
        kv.delete("gone")

        async def read(js: Any) -> Any:
            pkv = await js.key_value("SYNCKV")
            status = await pkv.status()
            try:
                await pkv.get("gone")
                gone = "present"
            except nats.js.errors.KeyNotFoundError:
                gone = "deleted"
            return (await pkv.get("k")).value, [e.value for e in await pkv.history("k")], status.history, gone

        value, hist, history, gone = _py(server.url, read)
        assert (value, hist, history, gone) == (b"v2", [b"v1", b"v2"], 2, "deleted")
    finally:
        js.delete_key_value("SYNCKV")


def test_objects_both_ways(server: NATSServer, nc: natsync.Client) -> None:
    js = nc.jetstream()
    data_py = os.urandom(700_000)  # 6 chunks
    data_sync = os.urandom(333_333)

    async def put(js: Any) -> Any:
        obs = await js.create_object_store("SHARED")
        meta = nats.js.api.ObjectMeta(
            name="from-py.bin", description="put by nats-py", headers={"Content-Type": ["application/x-py"]}
        )
        return await obs.put("from-py.bin", data_py, meta=meta)

    pinfo = _py(server.url, put)
    obs = js.object_store("SHARED")
    try:
        res = obs.get("from-py.bin")
        assert res.data == data_py
        assert res.info.digest == pinfo.digest and res.info.size == len(data_py)
        assert res.info.description == "put by nats-py"
        assert res.info.headers == {"Content-Type": ["application/x-py"]}

        meta = api.ObjectMeta(
            name="from-sync.bin", description="put by natsync", headers={"X-Origin": ["natsync"]}
        )
        sinfo = obs.put("from-sync.bin", data_sync, meta=meta)
        obs.put("gone.bin", b"bye")
        obs.delete("gone.bin")
        obs.add_link("link.bin", sinfo)  # a link as nats.go lays it out

        async def get(js: Any) -> Any:
            pobs = await js.object_store("SHARED")
            r = await pobs.get("from-sync.bin")
            linked = await pobs.get("link.bin")
            names = sorted(i.name for i in await pobs.list(ignore_deletes=True))
            return r.data, r.info, names, linked.data

        pdata, pinfo2, names, linked = _py(server.url, get)
        assert linked == data_sync
        assert hashlib.sha256(pdata).digest() == hashlib.sha256(data_sync).digest() and pdata == data_sync
        assert pinfo2.digest == sinfo.digest and pinfo2.size == len(data_sync)
        assert pinfo2.description == "put by natsync" and pinfo2.headers == {"X-Origin": ["natsync"]}
        assert pinfo2.options.max_chunk_size == 128 * 1024
        assert names == ["from-py.bin", "from-sync.bin", "link.bin"]
        assert sorted(i.name for i in obs.list()) == ["from-py.bin", "from-sync.bin", "link.bin"]
    finally:
        js.delete_object_store("SHARED")

"""Interop with nats-py's JetStream on the same server: a stream written by one client
is consumed by the other, with headers, and ``Nats-Msg-Id`` deduplicates across both."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import natsync
from natsync.js.api import StorageType
from natsync.testing import NATSServer

nats = pytest.importorskip("nats")


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer(jetstream=True) as s:
        yield s


def test_nats_py_writes_natsync_reads(server: NATSServer) -> None:
    async def write() -> list[int]:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="PYW", subjects=["pyw.>"], storage="memory")
        seqs = []
        for i in range(5):
            ack = await js.publish(
                f"pyw.{i}", b"py-%d" % i, headers={"X-From": "nats-py", "Nats-Msg-Id": f"id{i}"}
            )
            seqs.append(ack.seq)
        await nc.close()
        return seqs

    assert asyncio.run(write()) == [1, 2, 3, 4, 5]
    with natsync.connect(server.url) as nc:
        js = nc.jetstream()
        # the same Nats-Msg-Id from natsync is a duplicate of nats-py's message
        dup = js.publish("pyw.0", b"again", msg_id="id0")
        assert dup.duplicate is True and dup.seq == 1
        psub = js.pull_subscribe("pyw.>", durable="ns")
        msgs = psub.fetch(batch=5, timeout=2)
        assert [m.data for m in msgs] == [b"py-%d" % i for i in range(5)]
        assert all(m.headers is not None and m.headers["X-From"] == "nats-py" for m in msgs)
        for m in msgs:
            m.ack()
        ordered = js.subscribe("pyw.>", ordered_consumer=True)
        assert [ordered.next_msg(2).subject for _ in range(5)] == [f"pyw.{i}" for i in range(5)]
        ordered.unsubscribe()
        assert js.stream_info("PYW").state.messages == 5
        js.delete_stream("PYW")


def test_natsync_writes_nats_py_reads(server: NATSServer) -> None:
    with natsync.connect(server.url) as nc:
        js = nc.jetstream()
        js.add_stream(name="NSW", subjects=["nsw.>"], storage=StorageType.MEMORY)
        for i in range(5):
            js.publish(f"nsw.{i}", b"ns-%d" % i, headers={"X-From": "natsync"}, msg_id=f"n{i}")
        futures = [js.publish_async(f"nsw.{i}", b"async") for i in range(5)]
        assert [f.result(5).seq for f in futures] == [6, 7, 8, 9, 10]

    async def read() -> tuple[list[tuple[str, bytes, str]], bool, int]:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        ack = await js.publish("nsw.0", b"dup", headers={"Nats-Msg-Id": "n0"})
        psub = await js.pull_subscribe("nsw.>", durable="py")
        msgs = await psub.fetch(10, timeout=2)
        out = []
        for m in msgs:
            out.append((m.subject, m.data, (m.headers or {}).get("X-From", "")))
            await m.ack()
        info = await js.stream_info("NSW")
        await js.delete_stream("NSW")
        await nc.close()
        return out, bool(ack.duplicate), info.state.messages

    got, duplicate, count = asyncio.run(read())
    assert duplicate and count == 10
    assert got[:5] == [(f"nsw.{i}", b"ns-%d" % i, "natsync") for i in range(5)]
    assert [d for _, d, _ in got[5:]] == [b"async"] * 5


def test_consumer_made_by_nats_py_is_bound_by_natsync(server: NATSServer) -> None:
    async def setup() -> None:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="BIND", subjects=["bind"], storage="memory")
        await js.add_consumer("BIND", durable_name="shared", ack_policy="explicit", ack_wait=30)
        await js.publish("bind", b"one")
        await nc.close()

    asyncio.run(setup())
    with natsync.connect(server.url) as nc:
        js = nc.jetstream()
        psub = js.pull_subscribe_bind("shared", "BIND")
        [m] = psub.fetch(timeout=2)
        assert m.data == b"one" and m.metadata.consumer == "shared"
        m.ack_sync()
        info = js.consumer_info("BIND", "shared")
        assert info.config.ack_wait == 30.0 and info.num_ack_pending == 0
        js.delete_stream("BIND")

"""natsync.micro and nats-py (asyncio) side by side on one real nats-server.

nats-py calls natsync endpoints and sends ``$SRV.*`` discovery requests; a natsync
service and a nats-py ``nats.micro`` service of the same name, both in queue group
``q``, answer ``$SRV.PING`` with schema-identical documents and share the load.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import jsonschema
import pytest
from authkit import wait_until
from test_micro import INFO_SCHEMA, PING_SCHEMA, STATS_SCHEMA

import natsync
from natsync import micro
from natsync.testing import NATSServer

nats = pytest.importorskip("nats")
nats_micro = pytest.importorskip("nats.micro")

T = TypeVar("T")
WAIT = 10.0


class AsyncRunner:
    """An asyncio loop on a thread of its own, so nats-py runs beside blocking natsync."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="asyncio-interop")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as srv:
        yield srv


@pytest.fixture
def aio() -> Iterator[AsyncRunner]:
    runner = AsyncRunner()
    try:
        yield runner
    finally:
        runner.close()


def _shape(doc: Any) -> Any:
    """The JSON 'schema' of a document: keys and value types, recursively."""
    if isinstance(doc, dict):
        return {k: _shape(v) for k, v in sorted(doc.items())}
    if isinstance(doc, list):
        return [_shape(v) for v in doc[:1]]
    return type(doc).__name__


def test_nats_py_calls_natsync_endpoints_and_discovers_them(server: NATSServer, aio: AsyncRunner) -> None:
    def upper(req: micro.Request) -> None:
        if not req.data:
            req.respond_error(400, "empty")
            return
        req.respond(req.data.upper())

    with natsync.connect(server.url) as nc, micro.add_service(nc, name="upper", version="2.0.0") as svc:
        svc.add_group("text").add_endpoint("upper", upper)

        async def client() -> tuple[Any, ...]:
            anc = await nats.connect(server.url)
            try:
                ok = await anc.request("text.upper", b"hello", timeout=WAIT)
                bad = await anc.request("text.upper", b"", timeout=WAIT)
                docs = []
                for verb in ("PING", "INFO", "STATS"):
                    for subj in (f"$SRV.{verb}", f"$SRV.{verb}.upper", f"$SRV.{verb}.upper.{svc.id}"):
                        m = await anc.request(subj, b"", timeout=WAIT)
                        docs.append((verb, json.loads(m.data)))
                return ok.data, dict(bad.headers or {}), docs
            finally:
                await anc.close()

        data, bad_headers, docs = aio.run(client())
    assert data == b"HELLO"
    assert bad_headers == {"Nats-Service-Error": "empty", "Nats-Service-Error-Code": "400"}
    schemas = {"PING": PING_SCHEMA, "INFO": INFO_SCHEMA, "STATS": STATS_SCHEMA}
    assert len(docs) == 9
    for verb, doc in docs:
        jsonschema.validate(doc, schemas[verb])
        assert doc["id"] == svc.id
    stats = [d for v, d in docs if v == "STATS"][-1]
    assert stats["endpoints"][0]["num_requests"] == 2
    assert stats["endpoints"][0]["num_errors"] == 1


def test_natsync_and_nats_py_services_share_name_and_load(server: NATSServer, aio: AsyncRunner) -> None:
    py_hits = 0

    async def py_handler(req: Any) -> None:
        nonlocal py_hits
        py_hits += 1
        await req.respond(b"py:" + req.data)

    async def start_py() -> tuple[Any, Any]:
        anc = await nats.connect(server.url)
        svc = await nats_micro.add_service(anc, name="shared", version="1.0.0", queue_group="q")
        await svc.add_endpoint(name="work", handler=py_handler)
        await anc.flush()
        return anc, svc

    async def stop_py(anc: Any, svc: Any) -> None:
        await svc.stop()
        await anc.close()

    anc, py_svc = aio.run(start_py())
    try:
        with natsync.connect(server.url) as nc, micro.add_service(nc, name="shared", version="1.0.0") as svc:
            svc.add_endpoint("work", lambda req: req.respond(b"ns:" + req.data))
            pings = micro.ping(nc, "shared", timeout=WAIT, max_responses=2)
            assert len(pings) == 2
            by_id = {d["id"]: d for d in pings}
            assert svc.id in by_id and py_svc.id in by_id
            for d in pings:
                jsonschema.validate(d, PING_SCHEMA)
            assert _shape(by_id[svc.id]) == _shape(by_id[py_svc.id])
            # the endpoint's load is shared through queue group q
            answers = [nc.request("work", str(i).encode(), timeout=WAIT).data for i in range(60)]
            ns = sum(a.startswith(b"ns:") for a in answers)
            py = sum(a.startswith(b"py:") for a in answers)
            assert ns + py == 60
            assert ns > 0 and py > 0, f"one side took every request (natsync {ns}, nats-py {py})"
            wait_until(lambda: svc.stats()["endpoints"][0]["num_requests"] == ns, WAIT)
            assert py_hits == py
            # both report the same queue group in INFO
            infos = micro.info(nc, "shared", timeout=WAIT, max_responses=2)
            assert sorted(d["endpoints"][0]["queue_group"] for d in infos) == ["q", "q"]
    finally:
        aio.run(stop_py(anc, py_svc))


def test_every_srv_answer_parses_with_nats_py_classes(server: NATSServer) -> None:
    # nats-py's own parsers index every key it sends; natsync's answers must carry them
    # all, including an endpoint's "data" (null without a stats handler).
    service = pytest.importorskip("nats.micro.service")
    parsers = {"PING": service.ServicePing, "INFO": service.ServiceInfo, "STATS": service.ServiceStats}
    with natsync.connect(server.url) as nc, micro.add_service(nc, name="parsed", version="1.0.0") as svc:
        svc.add_endpoint("one", lambda req: req.respond(b"1"))
        svc.add_group("g").add_endpoint("two", lambda req: req.respond(b"2"))
        nc.request("one", b"", timeout=WAIT)
        for verb, cls in parsers.items():
            for subj in (f"$SRV.{verb}", f"$SRV.{verb}.parsed", f"$SRV.{verb}.parsed.{svc.id}"):
                doc = json.loads(nc.request(subj, b"", timeout=WAIT).data)
                parsed = cls.from_dict(doc)
                assert parsed.id == svc.id and parsed.name == "parsed"
                if verb == "STATS":
                    assert [e.data for e in parsed.endpoints] == [None, None]
                    assert parsed.endpoints[0].num_requests == 1
    # and with a stats handler, its value is carried through
    with natsync.connect(server.url) as nc, micro.add_service(
        nc, name="parsed2", version="1.0.0", stats_handler=lambda ep: {"ep": ep.name}
    ) as svc:
        svc.add_endpoint("three", lambda req: req.respond(b"3"))
        doc = json.loads(nc.request("$SRV.STATS.parsed2", b"", timeout=WAIT).data)
        assert service.ServiceStats.from_dict(doc).endpoints[0].data == {"ep": "three"}

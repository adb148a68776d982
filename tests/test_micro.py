"""natsync.micro (ADR-32 services) against a real nats-server.

Discovery answers are validated against the ADR-32 JSON schemas written out below.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from authkit import wait_until
from proxy import TCPProxy

import natsync
from natsync import micro
from natsync.testing import NATSServer

WAIT = 10.0

# --- ADR-32 schemas (io.nats.micro.v1.*_response) --------------------------------------

_ID_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "pattern": r"^[A-Za-z0-9_-]+$"},
    "id": {"type": "string", "minLength": 1},
    "version": {"type": "string", "minLength": 5},
    "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
}
_ID_REQUIRED = ["type", "name", "id", "version", "metadata"]

PING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": _ID_REQUIRED,
    "properties": {"type": {"const": "io.nats.micro.v1.ping_response"}, **_ID_FIELDS},
    "additionalProperties": False,
}
ENDPOINT_INFO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "subject", "queue_group", "metadata"],
    "properties": {
        "name": {"type": "string"},
        "subject": {"type": "string", "minLength": 1},
        "queue_group": {"type": "string"},
        "metadata": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
    },
}
INFO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [*_ID_REQUIRED, "description", "endpoints"],
    "properties": {
        "type": {"const": "io.nats.micro.v1.info_response"},
        **_ID_FIELDS,
        "description": {"type": "string"},
        "endpoints": {"type": "array", "items": ENDPOINT_INFO_SCHEMA},
    },
}
_NANOS = {"type": "integer", "minimum": 0}
ENDPOINT_STATS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "name", "subject", "queue_group", "num_requests", "num_errors", "last_error",
        "processing_time", "average_processing_time",
    ],
    "properties": {
        "name": {"type": "string"},
        "subject": {"type": "string"},
        "queue_group": {"type": "string"},
        "num_requests": {"type": "integer", "minimum": 0},
        "num_errors": {"type": "integer", "minimum": 0},
        "last_error": {"type": "string"},
        "processing_time": _NANOS,
        "average_processing_time": _NANOS,
    },
}
STATS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [*_ID_REQUIRED, "endpoints", "started"],
    "properties": {
        "type": {"const": "io.nats.micro.v1.stats_response"},
        **_ID_FIELDS,
        "started": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"},
        "endpoints": {"type": "array", "items": ENDPOINT_STATS_SCHEMA},
    },
}
SCHEMAS = {"PING": PING_SCHEMA, "INFO": INFO_SCHEMA, "STATS": STATS_SCHEMA}


def validate(verb: str, doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, SCHEMAS[verb])


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as srv:
        yield srv


@pytest.fixture
def nc(server: NATSServer) -> Iterator[natsync.Client]:
    with natsync.connect(server.url) as c:
        yield c


def echo(req: micro.Request) -> None:
    req.respond(req.data)


# --- discovery ----------------------------------------------------------------------------


def test_discovery_answers_match_adr32_on_every_subject(nc: natsync.Client) -> None:
    with micro.add_service(
        nc, name="disco", version="1.2.3-rc.1+build.5", description="d", metadata={"team": "x"}
    ) as svc:
        svc.add_endpoint("echo", echo, metadata={"k": "v"})
        svc.add_group("g").add_endpoint("e2", echo, subject="two")
        nc.request("echo", b"x", timeout=WAIT)
        for verb in micro.VERBS:
            fn = {"PING": micro.ping, "INFO": micro.info, "STATS": micro.stats}[verb]
            for args in ((), ("disco",), ("disco", svc.id)):
                docs = [d for d in fn(nc, *args, timeout=WAIT, max_responses=1) if d.get("id") == svc.id]
                assert len(docs) == 1, (verb, args)
                validate(verb, docs[0])
                assert docs[0]["name"] == "disco" and docs[0]["version"] == "1.2.3-rc.1+build.5"
                assert docs[0]["metadata"] == {"team": "x"}
        # the same documents as dicts from the service object
        validate("PING", svc.ping())
        info = svc.info()
        validate("INFO", info)
        assert info["description"] == "d"
        assert [(e["name"], e["subject"], e["queue_group"], e["metadata"]) for e in info["endpoints"]] == [
            ("echo", "echo", "q", {"k": "v"}),
            ("e2", "g.two", "q", {}),
        ]
        wait_until(lambda: svc.stats()["endpoints"][0]["num_requests"] == 1, WAIT)
        validate("STATS", svc.stats())
        # raw request on the id subject answers once, as JSON
        raw = nc.request(f"$SRV.INFO.disco.{svc.id}", b"", timeout=WAIT)
        assert json.loads(raw.data)["id"] == svc.id
    assert svc.stopped.is_set()
    with pytest.raises(natsync.NoRespondersError):
        nc.request(f"$SRV.PING.disco.{svc.id}", b"", timeout=WAIT)


def test_client_side_collects_every_instance(nc: natsync.Client, server: NATSServer) -> None:
    with natsync.connect(server.url) as nc2:
        with micro.add_service(nc, name="multi", version="0.1.0") as a, micro.add_service(
            nc2, name="multi", version="0.1.0"
        ) as b:
            got = micro.ping(nc, "multi", timeout=WAIT, max_responses=2)
            assert sorted(d["id"] for d in got) == sorted([a.id, b.id])
            assert [d["id"] for d in micro.ping(nc, "multi", b.id, timeout=WAIT, max_responses=1)] == [b.id]
            # max_responses returns early
            t0 = time.monotonic()
            assert len(micro.ping(nc, "multi", timeout=WAIT, max_responses=2)) == 2
            assert time.monotonic() - t0 < WAIT
            assert micro.ping(nc, "nobody-here", timeout=0.1) == []


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"name": "bad name", "version": "1.0.0"}, "name"),
        ({"name": "a.b", "version": "1.0.0"}, "name"),
        ({"name": "", "version": "1.0.0"}, "name"),
        ({"name": "ok", "version": "1.0"}, "version"),
        ({"name": "ok", "version": "v1.0.0"}, "version"),
        ({"name": "ok", "version": "01.0.0"}, "version"),
        ({"name": "ok", "version": "1.0.0-"}, "version"),
        ({"name": "ok", "version": ""}, "version"),
        ({"name": "ok", "version": "1.0.0", "queue_group": "a b"}, "queue_group"),
    ],
)
def test_bad_service_config_subscribes_nothing(nc: natsync.Client, kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        micro.add_service(nc, **kwargs)
    assert micro.ping(nc, timeout=0.1) == []


def test_bad_arguments(nc: natsync.Client) -> None:
    with pytest.raises(TypeError):
        micro.add_service(nc, name="ok", version="1.0.0", metadata={"a": 1})  # type: ignore[dict-item]
    with micro.add_service(nc, name="args", version="1.0.0") as svc:
        with pytest.raises(ValueError, match="endpoint name"):
            svc.add_endpoint("a b", echo)
        with pytest.raises(TypeError, match="callable"):
            svc.add_endpoint("x", "not a function")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="subject"):
            svc.add_endpoint("x", echo, subject="a..b")
        with pytest.raises(ValueError, match=">"):
            svc.add_endpoint("x", echo, subject="a.>.b")
        with pytest.raises(ValueError, match=">"):
            svc.add_group("a.>")
        with pytest.raises(ValueError, match="max_concurrency"):
            svc.add_endpoint("x", echo, max_concurrency=0)
        with pytest.raises(ValueError, match="verb"):
            micro.control_subject("NOPE")
        with pytest.raises(ValueError, match="timeout"):
            micro.ping(nc, timeout=0)
        assert svc.endpoints == []
    with pytest.raises(RuntimeError, match="stopped"):
        svc.add_endpoint("late", echo)


# --- requests, errors, stats ------------------------------------------------------------


def test_errors_are_service_errors_and_counted(nc: natsync.Client) -> None:
    calls = 0

    def handler(req: micro.Request) -> None:
        nonlocal calls
        calls += 1
        kind = req.data.decode()
        if kind == "raise":
            raise RuntimeError("boom\nsecond line")
        if kind == "svcerr":
            raise micro.ServiceError(404, "no such thing")
        if kind == "int":
            req.respond_error(418, "teapot", b"body", headers={"X-Extra": "1"})
        elif kind == "str":
            req.respond_error("503", "later")
        else:
            req.respond(b"ok", headers={"A": "b"})

    with micro.add_service(nc, name="errs", version="1.0.0") as svc:
        ep = svc.add_endpoint("do", handler)
        m = nc.request("do", b"raise", timeout=WAIT)
        assert m.headers is not None
        assert m.headers[micro.ERROR_CODE_HEADER] == "500"
        assert "boom second line" in m.headers[micro.ERROR_HEADER]
        err = micro.ServiceError.from_msg(m)
        assert err is not None and err.code == "500"
        # the service keeps serving after a raising handler
        ok = nc.request("do", b"fine", timeout=WAIT)
        assert ok.data == b"ok" and micro.ServiceError.from_msg(ok) is None
        m = nc.request("do", b"int", timeout=WAIT)
        assert m.data == b"body"
        assert m.headers is not None
        assert (m.headers[micro.ERROR_CODE_HEADER], m.headers[micro.ERROR_HEADER], m.headers["X-Extra"]) == (
            "418", "teapot", "1",
        )
        m = nc.request("do", b"str", timeout=WAIT)
        assert m.headers is not None and m.headers[micro.ERROR_CODE_HEADER] == "503"
        m = nc.request("do", b"svcerr", timeout=WAIT)
        assert m.headers is not None and m.headers[micro.ERROR_CODE_HEADER] == "404"
        # counted when the handler returns, which may be just after the reply arrived
        wait_until(lambda: ep.stats()["num_requests"] == 5, WAIT, "5 requests counted")
        st = ep.stats()
        assert st["num_errors"] == 4
        assert st["last_error"] == "404:no such thing"
        assert st["processing_time"] >= st["average_processing_time"] > 0
        svc.reset()
        st = svc.stats()["endpoints"][0]
        assert (st["num_requests"], st["num_errors"], st["last_error"]) == (0, 0, "")
        assert st["processing_time"] == 0
        assert calls == 5


def test_service_error_from_replies_of_other_services(nc: natsync.Client) -> None:
    def odd(msg: natsync.Msg) -> None:
        kind = msg.data.decode()
        headers = {micro.ERROR_CODE_HEADER: "E42", micro.ERROR_HEADER: "odd"} if kind == "odd" else {"A": "b"}
        msg.respond(b"", headers=headers)

    nc.subscribe("other.svc", cb=odd)
    err = micro.ServiceError.from_msg(nc.request("other.svc", b"odd", timeout=WAIT))
    assert err is not None and (err.code, err.description, str(err)) == ("500", "odd", "500:odd")
    assert micro.ServiceError.from_msg(nc.request("other.svc", b"plain", timeout=WAIT)) is None


def test_respond_error_checks_its_arguments(nc: natsync.Client) -> None:
    results: list[str] = []

    def handler(req: micro.Request) -> None:
        for code, desc in ((True, "x"), (1.5, "x"), ("abc", "x"), (400, "")):
            try:
                req.respond_error(code, desc)  # type: ignore[arg-type]
            except (TypeError, ValueError) as e:
                results.append(type(e).__name__)
        req.respond(b"done")

    with micro.add_service(nc, name="codes", version="1.0.0") as svc:
        svc.add_endpoint("c", handler)
        assert nc.request("c", b"", timeout=WAIT).data == b"done"
        assert results == ["TypeError", "TypeError", "ValueError", "ValueError"]
        assert svc.stats()["endpoints"][0]["num_errors"] == 0


def test_request_attributes_and_no_reply(nc: natsync.Client) -> None:
    seen: list[tuple[str, str | None, bytes, str | None]] = []
    got = threading.Event()

    def handler(req: micro.Request) -> None:
        hv = req.headers["H"] if req.headers is not None else None
        seen.append((req.subject, req.reply, req.data, hv))
        assert "Request" in repr(req)
        if req.reply is None:
            got.set()
            raise ValueError("nobody to tell")
        req.respond(b"ok")

    with micro.add_service(nc, name="attrs", version="1.0.0") as svc:
        svc.add_endpoint("a", handler, subject="attrs.*")
        nc.request("attrs.x", b"1", timeout=WAIT, headers={"H": "v"})
        nc.publish("attrs.y", b"2")
        assert got.wait(WAIT)
        wait_until(lambda: svc.stats()["endpoints"][0]["num_errors"] == 1, WAIT)
    assert seen[0][0] == "attrs.x" and seen[0][2:] == (b"1", "v") and seen[0][1]
    assert seen[1] == ("attrs.y", None, b"2", None)


def test_groups_nest_and_queue_groups_inherit(nc: natsync.Client) -> None:
    with micro.add_service(nc, name="groups", version="1.0.0", queue_group="svcq") as svc:
        g = svc.add_group("api", queue_group="gq")
        v1 = g.add_group("v1")
        e1 = v1.add_endpoint("one", echo)
        e2 = v1.add_endpoint("two", echo, subject="deux", queue_group="own")
        e3 = svc.add_group("plain").add_endpoint("three", echo)
        e4 = svc.add_endpoint("four", echo, queue_group="")
        assert v1.prefix == "api.v1" and v1.queue_group == "gq" and "api.v1" in repr(v1)
        assert [(e.subject, e.queue_group) for e in (e1, e2, e3, e4)] == [
            ("api.v1.one", "gq"),
            ("api.v1.deux", "own"),
            ("plain.three", "svcq"),
            ("four", ""),
        ]
        for subj in ("api.v1.one", "api.v1.deux", "plain.three", "four"):
            assert nc.request(subj, subj.encode(), timeout=WAIT).data == subj.encode()
        assert "four" in repr(e4) and "groups" in repr(svc)
        validate("INFO", svc.info())


def test_no_queue_group_means_every_instance_answers(nc: natsync.Client, server: NATSServer) -> None:
    with natsync.connect(server.url) as nc2:
        with micro.add_service(nc, name="fan", version="1.0.0", queue_group="") as a, micro.add_service(
            nc2, name="fan", version="1.0.0", queue_group=""
        ) as b:
            a.add_endpoint("f", echo)
            b.add_endpoint("f", echo)
            inbox = nc.new_inbox()
            with nc.subscribe(inbox) as sub:
                nc.publish("f", b"hi", reply=inbox)
                assert sub.next_msg(timeout=WAIT).data == b"hi"
                assert sub.next_msg(timeout=WAIT).data == b"hi"


# --- concurrency ------------------------------------------------------------------------


def test_max_concurrency_bounds_parallel_handlers(nc: natsync.Client) -> None:
    lock = threading.Lock()
    active = 0
    peak = 0
    release = threading.Event()
    reached = threading.Event()

    def slow(req: micro.Request) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            if active == 3:
                reached.set()
        release.wait(WAIT)
        with lock:
            active -= 1
        req.respond(req.data)

    with micro.add_service(nc, name="conc", version="1.0.0") as svc:
        svc.add_endpoint("slow", slow, max_concurrency=3)
        inbox = nc.new_inbox()
        with nc.subscribe(inbox) as sub:
            for i in range(8):
                nc.publish("slow", str(i).encode(), reply=inbox)
            assert reached.wait(WAIT), "three handlers never ran at once"
            assert peak == 3  # (peak also catches a fourth one starting later)
            release.set()
            answers = sorted(int(sub.next_msg(timeout=WAIT).data) for _ in range(8))
        assert answers == list(range(8))
        assert peak == 3
        wait_until(lambda: svc.stats()["endpoints"][0]["num_requests"] == 8, WAIT)
    names = [t.name for t in threading.enumerate() if t.name.startswith("natsync-micro-conc")]
    assert names == [], "stop() left pool threads running"


def test_default_concurrency_is_one_at_a_time_in_order(nc: natsync.Client) -> None:
    lock = threading.Lock()
    active = 0
    peak = 0
    order: list[int] = []
    done = threading.Event()

    def h(req: micro.Request) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.001)  # widen the window an overlap would need
        order.append(int(req.data))
        with lock:
            active -= 1
        if len(order) == 50:
            done.set()

    with micro.add_service(nc, name="serial", version="1.0.0") as svc:
        svc.add_endpoint("s", h)
        for i in range(50):
            nc.publish("s", str(i).encode())
        assert done.wait(WAIT)
    assert order == list(range(50))
    assert peak == 1


# --- stop / drain / reconnect -----------------------------------------------------------


def test_stop_drains_requests_in_flight(nc: natsync.Client) -> None:
    entered = threading.Event()
    release = threading.Event()

    def slow(req: micro.Request) -> None:
        entered.set()
        release.wait(WAIT)
        req.respond(b"finished")

    svc = micro.add_service(nc, name="drainer", version="1.0.0")
    svc.add_endpoint("slow", slow, max_concurrency=2)
    inbox = nc.new_inbox()
    with nc.subscribe(inbox) as sub:
        nc.publish("slow", b"", reply=inbox)
        nc.publish("slow", b"", reply=inbox)
        assert entered.wait(WAIT)
        stopper = threading.Thread(target=svc.stop)
        stopper.start()
        # discovery ends at once; stop() waits for the handlers
        wait_until(lambda: micro.ping(nc, "drainer", timeout=0.05) == [], WAIT, "discovery to end")
        assert not svc.stopped.is_set()
        release.set()
        stopper.join(WAIT)
        assert not stopper.is_alive()
        assert svc.stopped.is_set()
        assert sub.next_msg(timeout=WAIT).data == b"finished"
        assert sub.next_msg(timeout=WAIT).data == b"finished"
    svc.stop()  # idempotent
    with pytest.raises(natsync.NoRespondersError):
        nc.request("slow", b"", timeout=WAIT)


def test_stop_returns_by_its_timeout_behind_a_stuck_handler(nc: natsync.Client) -> None:
    """stop(timeout=) waits for pool handlers only until its deadline; a stuck handler
    finishes on its own later."""
    entered = threading.Event()
    release = threading.Event()

    def stuck(req: micro.Request) -> None:
        entered.set()
        release.wait(WAIT)
        req.respond(b"late")

    svc = micro.add_service(nc, name="stuck", version="1.0.0")
    svc.add_endpoint("stuck", stuck, max_concurrency=2)
    try:
        nc.publish("stuck", b"", reply=nc.new_inbox())
        assert entered.wait(WAIT)
        stopper = threading.Thread(target=svc.stop, kwargs={"timeout": 0.3})
        stopper.start()
        stopper.join(WAIT / 2)
        assert not stopper.is_alive(), "stop(timeout=0.3) still waiting for a stuck handler"
        assert svc.stopped.is_set()
    finally:
        release.set()


@pytest.mark.parametrize("max_concurrency", [1, 3])
def test_stop_from_a_handler_finishes_on_its_own(nc: natsync.Client, max_concurrency: int) -> None:
    svc = micro.add_service(nc, name="selfstop", version="1.0.0")

    def shutdown(req: micro.Request) -> None:
        svc.stop()  # returns at once: the stop completes when this handler returned
        svc.stop()  # and again, still without waiting for itself
        req.respond(b"bye")

    svc.add_endpoint("shutdown", shutdown, max_concurrency=max_concurrency)
    assert nc.request("shutdown", b"", timeout=WAIT).data == b"bye"
    assert svc.stopped.wait(WAIT)
    svc.stop()  # from outside: joins the stop thread
    assert svc.stats()["endpoints"][0]["num_requests"] == 1
    with pytest.raises(natsync.NoRespondersError):
        nc.request("shutdown", b"", timeout=WAIT)


def test_stats_handler_adds_endpoint_data(nc: natsync.Client) -> None:
    def data(ep: micro.Endpoint) -> Any:
        if ep.name == "bad":
            raise RuntimeError("no data")
        return {"subject_len": len(ep.subject)}

    with micro.add_service(nc, name="withdata", version="1.0.0", stats_handler=data) as svc:
        svc.add_endpoint("good", echo)
        svc.add_endpoint("bad", echo)
        [doc] = micro.stats(nc, "withdata", timeout=WAIT, max_responses=1)
    validate("STATS", doc)
    assert doc["endpoints"][0]["data"] == {"subject_len": 4}
    assert doc["endpoints"][1]["data"] is None  # a failing handler: null, as without one
    with pytest.raises(TypeError, match="stats_handler"):
        micro.add_service(nc, name="x", version="1.0.0", stats_handler=42)  # type: ignore[arg-type]


def test_stop_after_the_connection_closed(server: NATSServer) -> None:
    nc = natsync.connect(server.url)
    svc = micro.add_service(nc, name="orphan", version="1.0.0")
    svc.add_endpoint("e", echo, max_concurrency=2)
    nc.close()
    svc.stop(timeout=2)
    assert svc.stopped.is_set()


def test_service_answers_again_after_a_reconnect(server: NATSServer) -> None:
    with TCPProxy("127.0.0.1", server.port) as proxy:
        reconnected = threading.Event()
        nc = natsync.connect(
            proxy.url, reconnect_time_wait=0.05, reconnect_jitter=0.0, max_reconnect_attempts=-1,
            reconnected_cb=reconnected.set,
        )
        try:
            svc = micro.add_service(nc, name="phoenix", version="1.0.0")
            with natsync.connect(server.url) as client, svc:
                svc.add_endpoint("rise", echo)
                assert client.request("rise", b"1", timeout=WAIT).data == b"1"
                assert proxy.cut() >= 1
                assert reconnected.wait(WAIT)
                nc.flush(timeout=WAIT)
                assert client.request("rise", b"2", timeout=WAIT).data == b"2"
                pings = micro.ping(client, "phoenix", timeout=WAIT, max_responses=1)
                assert [d["id"] for d in pings] == [svc.id]
                wait_until(lambda: svc.stats()["endpoints"][0]["num_requests"] == 2, WAIT)
        finally:
            nc.close()


# --- examples ---------------------------------------------------------------------------


def test_example_micro_service(server: NATSServer) -> None:
    from authkit import run_example

    proc = run_example("micro_service.py", {"NATS_URL_HOSTPORT": f"{server.host}:{server.port}"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "add: 5" in out
    assert "greeting: hello, natsync" in out
    assert "error 400: expected two integers" in out
    assert "endpoints: math.add, math.greet, status" in out
    assert "requests: 4, errors: 1" in out


def test_example_micro_flask(server: NATSServer) -> None:
    pytest.importorskip("flask")
    from authkit import run_example

    proc = run_example("micro_flask.py", {"NATS_URL_HOSTPORT": f"{server.host}:{server.port}"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "GET /add?a=2&b=3 -> 200 {'sum': 5}" in out
    assert "GET /add?a=2&b=x -> 400 {'error': 'expected two integers'}" in out

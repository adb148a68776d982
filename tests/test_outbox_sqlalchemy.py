"""The SQLAlchemy outbox (``natsync.sqlalchemy``) and its Flask wiring, with real parts.

Every test runs on a SQLite file and on a real PostgreSQL (``pgkit``), against a real
JetStream nats-server, and ends with "N committed => exactly N in the stream, 0 duplicates".
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgkit import Postgres, postgres_or_skip
from test_outbox_django import assert_exactly, stream_messages
from webkit import EXAMPLES, PYTHON, Proc

sqlalchemy = pytest.importorskip("sqlalchemy")

from sqlalchemy import Engine, create_engine, func, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

import natsync  # noqa: E402
from natsync.sqlalchemy import create_outbox_table, make_relay, outbox_table, publish_on_commit  # noqa: E402
from natsync.testing import NATSServer  # noqa: E402

STREAM = "EVENTS"


@pytest.fixture(scope="module")
def js_server() -> Iterator[NATSServer]:
    with NATSServer(jetstream=True) as srv:
        yield srv


@pytest.fixture
def nc(js_server: NATSServer) -> Iterator[natsync.Client]:
    with natsync.connect(js_server.url, name="sqlalchemy-outbox") as client:
        js = client.jetstream()
        js.add_stream(name=STREAM, subjects=["events.>"])
        try:
            yield client
        finally:
            js.delete_stream(STREAM)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg = postgres_or_skip()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        url = pg.url(pg.create_database(f"sa_{os.getpid()}_{int(time.monotonic() * 1000)}"))
    eng = create_engine(url)
    create_outbox_table(eng)
    create_outbox_table(eng)  # idempotent
    try:
        yield eng
    finally:
        eng.dispose()


def _depth(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(outbox_table)).scalar_one())


def test_commit_rollback_and_savepoint(engine: Engine, nc: natsync.Client, js_server: NATSServer) -> None:
    with Session(engine) as session, session.begin():
        publish_on_commit(session, "events.a", b"one", {"Traceparent": "00-abc-def-01"})
        nested = session.begin_nested()
        publish_on_commit(session, "events.a", b"savepoint")
        nested.rollback()
        publish_on_commit(session, "events.a", "two", msg_id="order-2")
    with Session(engine) as session:
        with session.begin():
            publish_on_commit(session, "events.a", b"rolled-back")
            session.rollback()
    assert _depth(engine) == 2
    relay = make_relay(engine, lambda: nc)
    assert relay.run_until_empty(timeout=10) == 2
    msgs = assert_exactly(js_server.url, {"one", "two"})
    assert [m.data for m in msgs] == [b"one", b"two"]
    assert msgs[0].headers["Traceparent"] == "00-abc-def-01"
    assert msgs[1].headers["Nats-Msg-Id"] == "order-2"
    assert _depth(engine) == 0


def test_bad_calls_raise_before_anything_commits(engine: Engine, nc: natsync.Client) -> None:
    with Session(engine) as session, session.begin():
        with pytest.raises(natsync.BadSubjectError):
            publish_on_commit(session, "events.>", b"x")
        with pytest.raises(natsync.BadHeaderError):
            publish_on_commit(session, "events.x", b"x", {"Bad Name": "v"})
        with pytest.raises(natsync.MaxPayloadError):
            publish_on_commit(session, "events.x", b"x" * 100, max_payload=64)
        with pytest.raises(ValueError):
            publish_on_commit(session, "events.x", b"x", msg_id="")
    assert _depth(engine) == 0


def test_two_relays_racing_keep_subject_order(
    engine: Engine, nc: natsync.Client, js_server: NATSServer
) -> None:
    expected = set()
    for i in range(200):
        with Session(engine) as session, session.begin():
            publish_on_commit(session, f"events.s{i % 3}", f"{i % 3}:{i}")
        expected.add(f"{i % 3}:{i}")
    relays = [make_relay(engine, lambda: nc, {"batch": 5}) for _ in range(2)]
    errors: list[BaseException] = []

    def run(relay: object) -> None:
        try:
            relay.run_until_empty(timeout=60)  # type: ignore[attr-defined]
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(r,)) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors
    assert not any(t.is_alive() for t in threads)
    msgs = assert_exactly(js_server.url, expected)
    per_subject: dict[str, list[int]] = {}
    for m in msgs:
        subject, n = (m.data or b"").decode().split(":")
        per_subject.setdefault(subject, []).append(int(n))
    for subject, numbers in per_subject.items():
        assert numbers == sorted(numbers), f"subject {subject} out of order"
    assert sum(r.published for r in relays) == len(expected)
    assert _depth(engine) == 0


def test_poison_row_is_failed_reported_and_retried_on_request(
    engine: Engine, nc: natsync.Client, js_server: NATSServer, caplog: pytest.LogCaptureFixture
) -> None:
    with Session(engine) as session, session.begin():
        publish_on_commit(session, "nowhere.x", b"poison")
        publish_on_commit(session, "events.fine", b"fine")
    relay = make_relay(engine, lambda: nc)
    with caplog.at_level(logging.ERROR, logger="natsync.outbox"):
        relay.run_until_empty(timeout=10)
        relay.run_until_empty(timeout=1)
    st = relay.storage.status(time.time())
    assert (st.depth, st.failed) == (0, 1)
    assert st.failed_rows[0]["attempts"] == 1 and "no stream" in st.failed_rows[0]["last_error"]
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert_exactly(js_server.url, {"fine"})
    assert relay.storage.retry_failed() == 1  # type: ignore[attr-defined]
    assert relay.storage.status(time.time()).depth == 1


def test_crash_after_publish_before_delete_is_deduplicated(
    engine: Engine, nc: natsync.Client, js_server: NATSServer
) -> None:
    with Session(engine) as session, session.begin():
        for i in range(10):
            publish_on_commit(session, "events.c", str(i))
    relay = make_relay(engine, lambda: nc, {"lease": 0.5})
    storage = relay.storage
    real_settle = storage.settle
    storage.settle = lambda done, retry, failed: None  # type: ignore[method-assign]  # "dies" before deleting
    relay.run_once()
    assert len(stream_messages(js_server.url)) == 10 and _depth(engine) == 10
    storage.settle = real_settle  # type: ignore[method-assign]
    assert relay.run_until_empty(timeout=10) == 10  # re-published after the lease ...
    assert_exactly(js_server.url, {str(i) for i in range(10)})  # ... and dropped by the stream
    assert _depth(engine) == 0


# ------------------------------------------------------------------ Flask


@pytest.mark.parametrize("backend", ["sqlite"])
def test_flask_extension_outbox_and_worker(backend: str, js_server: NATSServer, tmp_path: Path) -> None:
    pytest.importorskip("flask_sqlalchemy")
    with natsync.connect(js_server.url) as client:
        js = client.jetstream()
        js.add_stream(name="ORDERS", subjects=["orders.>"])
        try:
            env = {
                "FLASK_NATS_URL": js_server.url,
                "FLASK_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'shop.sqlite3'}",
            }
            old = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                import importlib
                import sys

                sys.path.insert(0, str(EXAMPLES / "flask_app"))
                mod = importlib.import_module("outbox_app")
                app = mod.create_app()
            finally:
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            web = app.test_client()
            assert web.post("/orders/1").status_code == 201
            assert web.post("/orders/2").status_code == 201
            with pytest.raises(natsync.BadHeaderError), app.app_context():
                mod.nats.publish_on_commit("orders.created", b"x", {"Bad Name": "v"})
            worker = Proc(
                [PYTHON, "-m", "flask", "--app", "outbox_app", "natsync", "worker"],
                env=env,
                cwd=EXAMPLES / "flask_app",
                log=tmp_path / "worker.log",
            )
            try:
                assert worker.wait_for_line("outbox relay on", 30), worker.output
                assert worker.wait_for_line("billing order 2", 30), worker.output
                assert worker.stop() == 0, worker.output
            finally:
                worker.kill()
            assert "billing order 1" in worker.output
            msgs = assert_exactly(js_server.url, {"1", "2"}, stream="ORDERS")
            assert msgs[1].headers["Shop-Order"] == "2"
            status = Proc(
                [PYTHON, "-m", "flask", "--app", "outbox_app", "natsync", "outbox", "status", "--json"],
                env=env,
                cwd=EXAMPLES / "flask_app",
                log=tmp_path / "status.log",
            )
            assert status.proc.wait(30) == 0, status.output
            status.stop()
            assert json.loads(status.output.strip().splitlines()[-1])["depth"] == 0
        finally:
            js.delete_stream("ORDERS")

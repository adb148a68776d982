"""The Django outbox (``publish_on_commit(..., durable=True)`` and its relay), with real parts.

In-process tests use the example project on an in-memory SQLite database and a real
JetStream nats-server; the relay runs on the test's thread there.  The fault tests run
gunicorn, ``manage.py natsync_outbox relay`` and ``kill -9`` as an operator would, on a
SQLite file and on a real PostgreSQL (``pgkit``), and each ends with "N committed => exactly
N in the stream, 0 duplicates".
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pgkit import Postgres, postgres_or_skip
from webkit import EXAMPLES, PYTHON, Proc, free_port, http, wait_for

import natsync
from natsync.testing import NATSServer

PROJECT = EXAMPLES / "django_project"
sys.path.insert(0, str(PROJECT))

import django  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test import override_settings  # noqa: E402

# The example project's settings with an in-memory database (as tests/test_django.py does;
# whichever module runs first configures them).
if not settings.configured:
    import shop_project.settings as _example

    _values = {k: getattr(_example, k) for k in dir(_example) if k.isupper()}
    _values["DATABASES"] = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
    settings.configure(**_values)
django.setup()

import natsync.django as nd  # noqa: E402
from natsync.django.models import OutboxMessage  # noqa: E402
from natsync.django.outbox import make_relay  # noqa: E402

STREAM = "EVENTS"


def stream_messages(url: str, stream: str = STREAM) -> list[Any]:
    """Every message of *stream*, in stream order."""
    with natsync.connect(url, name="stream-reader") as nc:
        js = nc.jetstream()
        n = js.stream_info(stream).state.messages
        out = []
        seq = 1
        while len(out) < n:
            m = js.get_msg(stream, seq=seq, next=True)
            out.append(m)
            assert m.seq is not None
            seq = m.seq + 1
        return out


def assert_exactly(url: str, expected: set[str], stream: str = STREAM) -> list[Any]:
    """The stream holds each expected payload exactly once, and nothing else."""
    msgs = stream_messages(url, stream)
    seen = Counter((m.data or b"").decode() for m in msgs)
    dups = {k: v for k, v in seen.items() if v > 1}
    missing = expected - set(seen)
    extra = set(seen) - expected
    assert not dups and not missing and not extra, (
        f"{len(expected)} committed, {len(msgs)} in the stream: missing {sorted(missing)[:10]}, "
        f"duplicated {dups}, unexpected {sorted(extra)[:10]}"
    )
    return msgs


@pytest.fixture(scope="module")
def js_server() -> Iterator[NATSServer]:
    with NATSServer(jetstream=True) as srv:
        call_command("migrate", verbosity=0)
        yield srv
    nd.reset_client()


@pytest.fixture
def stream(js_server: NATSServer) -> Iterator[NATSServer]:
    with natsync.connect(js_server.url) as nc:
        js = nc.jetstream()
        js.add_stream(name=STREAM, subjects=["events.>"])
        try:
            with override_settings(NATSYNC={"servers": js_server.url, "name": "outbox-test"}):
                yield js_server
        finally:
            js.delete_stream(STREAM)
            OutboxMessage.objects.all().delete()


# ------------------------------------------------------------------ in-process tests


def test_durable_event_is_published_once_after_commit(stream: NATSServer) -> None:
    with transaction.atomic():
        nd.publish_on_commit("events.a", b"one", {"X-Trace": "t1"}, durable=True)
        nd.publish_on_commit("events.a", "two", durable=True, msg_id="order-2")
        assert OutboxMessage.objects.count() == 2
    relay = make_relay()
    assert relay.run_until_empty(timeout=10) == 2
    assert OutboxMessage.objects.count() == 0
    msgs = assert_exactly(stream.url, {"one", "two"})
    assert [m.data for m in msgs] == [b"one", b"two"]  # commit order
    assert msgs[0].headers["X-Trace"] == "t1"  # the caller's headers, unchanged
    assert msgs[0].headers["Nats-Msg-Id"].startswith("natsync-outbox-")
    assert msgs[1].headers["Nats-Msg-Id"] == "order-2"


def test_rollbacks_and_savepoints_publish_nothing(stream: NATSServer) -> None:
    with transaction.atomic():
        nd.publish_on_commit("events.kept", b"kept", durable=True)
        try:
            with transaction.atomic():  # a savepoint
                nd.publish_on_commit("events.gone", b"savepoint", durable=True)
                raise ValueError("roll back the savepoint")
        except ValueError:
            pass
    try:
        with transaction.atomic():
            nd.publish_on_commit("events.gone", b"rolled-back", durable=True)
            raise ValueError("roll back")
    except ValueError:
        pass
    assert list(OutboxMessage.objects.values_list("payload", flat=True)) == [b"kept"]
    make_relay().run_until_empty(timeout=10)
    assert_exactly(stream.url, {"kept"})


@pytest.mark.parametrize("durable", [True, False])
def test_bad_calls_raise_inside_the_transaction(stream: NATSServer, durable: bool) -> None:
    client = nd.get_client()
    client.flush(timeout=5)  # connected: max_payload is the server's
    bad: list[tuple[dict[str, Any], type[BaseException]]] = [
        ({"subject": "events..x"}, natsync.BadSubjectError),
        ({"subject": "events.x", "headers": {"Bad Name": "v"}}, natsync.BadHeaderError),
        ({"subject": "events.x", "headers": {"X": "a\r\nb"}}, natsync.BadHeaderError),
        ({"subject": "events.x", "payload": b"x" * (client.max_payload + 1)}, natsync.MaxPayloadError),
        ({"subject": "events.x", "payload": 42}, TypeError),
    ]
    for kwargs, error in bad:
        with transaction.atomic():
            with pytest.raises(error):
                nd.publish_on_commit(durable=durable, **kwargs)
            nd.publish_on_commit("events.ok", b"ok", durable=True)  # the transaction goes on
    assert OutboxMessage.objects.count() == len(bad)  # only the good rows
    assert set(OutboxMessage.objects.values_list("subject", flat=True)) == {"events.ok"}


def test_non_durable_failure_does_not_skip_later_on_commit_callbacks(
    stream: NATSServer, caplog: pytest.LogCaptureFixture
) -> None:
    nd.get_client().close()  # so that the publish after the commit fails
    ran: list[str] = []
    with caplog.at_level(logging.ERROR):
        with transaction.atomic():
            nd.publish_on_commit("events.core", b"x")
            transaction.on_commit(lambda: ran.append("later"))
    assert ran == ["later"]  # robust=True: the failure was logged, the next callback ran
    failures = [
        r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], natsync.ConnectionClosedError)
    ]
    assert len(failures) == 1


def test_poison_row_is_marked_failed_and_reported_once(
    stream: NATSServer, caplog: pytest.LogCaptureFixture
) -> None:
    nd.publish_on_commit("nostream.x", b"poison", durable=True)  # outside a transaction: committed now
    nd.publish_on_commit("events.fine", b"fine", durable=True)
    relay = make_relay()
    with caplog.at_level(logging.ERROR, logger="natsync.outbox"):
        relay.run_until_empty(timeout=10)
        relay.run_until_empty(timeout=2)  # not retried: the row is failed
    row = OutboxMessage.objects.get()
    assert row.failed and row.attempts == 1
    assert "no stream" in row.last_error
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "nostream.x" in errors[0].getMessage()
    assert_exactly(stream.url, {"fine"})
    out = io.StringIO()
    call_command("natsync_outbox", "status", "--json", stdout=out)
    status = json.loads(out.getvalue())
    assert status["depth"] == 0 and status["failed"] == 1
    assert status["failed_rows"][0]["subject"] == "nostream.x"
    # An operator fixes the cause (a stream for the subject) and retries the row.
    with natsync.connect(stream.url) as nc:
        nc.jetstream().add_stream(name="LATE", subjects=["nostream.>"])
        try:
            call_command("natsync_outbox", "retry", "--all", stdout=io.StringIO())
            assert make_relay().run_until_empty(timeout=10) == 1
            assert [m.data for m in stream_messages(stream.url, "LATE")] == [b"poison"]
        finally:
            nc.jetstream().delete_stream("LATE")
    assert OutboxMessage.objects.count() == 0


def test_nats_down_rows_wait_and_back_off(js_server: NATSServer) -> None:
    with override_settings(
        NATSYNC={"servers": f"nats://127.0.0.1:{free_port()}", "name": "down", "connect_timeout": 0.5},
        NATSYNC_OUTBOX={"publish_timeout": 0.5},
    ):
        nd.publish_on_commit("events.wait", b"w", durable=True)
        relay = make_relay()
        for _ in range(3):
            relay.run_once()
        row = OutboxMessage.objects.get()
        assert not row.failed  # transient: kept for later, never marked failed
        assert row.attempts <= 1
    OutboxMessage.objects.all().delete()


# ------------------------------------------------------------------ processes


def _django_env(db: dict[str, str], nats_url: str, **extra: str) -> dict[str, str]:
    env = {"DJANGO_SETTINGS_MODULE": "shop_project.settings", "NATSYNC_SERVERS": nats_url}
    env.update(db)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    pg = postgres_or_skip()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    if request.param == "sqlite":
        return {"SHOP_DB": str(tmp_path / "shop.sqlite3")}
    pg: Postgres = request.getfixturevalue("postgres")
    name = pg.create_database(f"shop_{os.getpid()}_{int(time.monotonic() * 1000)}")
    return {"SHOP_PG_PORT": str(pg.port), "SHOP_PG_NAME": name}


def _manage(args: list[str], env: dict[str, str], tmp_path: Path, name: str, timeout: float = 60.0) -> Proc:
    p = Proc([PYTHON, "manage.py", *args], env=env, cwd=PROJECT, log=tmp_path / f"{name}.log")
    try:
        p.proc.wait(timeout)
    except Exception:
        p.kill()
        raise
    p.stop()
    assert p.proc.returncode == 0, p.output
    return p


def _js_server(tmp_path: Path) -> NATSServer:
    return NATSServer(jetstream=True, store_dir=str(tmp_path / "js"), http_port=0)


def _add_stream(url: str) -> None:
    with natsync.connect(url) as nc:
        nc.jetstream().add_stream(name=STREAM, subjects=["events.>"])


def _write_rows(env: dict[str, str], tmp_path: Path, count: int, subjects: int) -> set[str]:
    """Commit *count* durable events on *subjects* subjects (one process, many transactions)."""
    code = (
        "import django; django.setup()\n"
        "from natsync.django import publish_on_commit\n"
        f"for i in range({count}):\n"
        f"    publish_on_commit(f'events.s{{i % {subjects}}}', f'{{i % {subjects}}}:{{i}}', durable=True)\n"
    )
    _manage(["shell", "-c", code], env, tmp_path, "write")
    return {f"{i % subjects}:{i}" for i in range(count)}


def test_gunicorn_recycling_during_an_outage_loses_nothing(database: dict[str, str], tmp_path: Path) -> None:
    """NATS down, gunicorn -w 2 --max-requests 5, 40 events answered 201; NATS back: 40 in the stream."""
    events = 40
    srv = _js_server(tmp_path)
    srv.start()
    try:
        _add_stream(srv.url)
        srv.stop()  # the store (and the stream) stay on disk
        env = _django_env(database, srv.url, SHOP_RELAY_IN_WEB="1", SHOP_OUTBOX_LEASE="2")
        _manage(["migrate", "--verbosity", "0"], env, tmp_path, "migrate")
        port = free_port()
        web = Proc(
            [
                PYTHON,
                "-m",
                "gunicorn",
                "-k",
                "sync",
                "-w",
                "2",
                "--threads",
                "1",
                "--max-requests",
                "5",
                "--max-requests-jitter",
                "3",
                "-b",
                f"127.0.0.1:{port}",
                "shop_project.wsgi",
            ],
            env=env,
            cwd=PROJECT,
            log=tmp_path / "gunicorn.log",
        )
        try:
            assert wait_for(lambda: "Booting worker" in web.output, 30), web.output
            # Generous: on a loaded machine a recycled worker takes seconds to boot again.
            answers = [
                http(f"http://127.0.0.1:{port}/events/{n}", "POST", timeout=60)[0] for n in range(events)
            ]
            assert answers == [201] * events, web.output
            srv.start()  # NATS is back
            # The web processes' relays publish what they hold; `relay --once` the rest.
            _manage(["natsync_outbox", "relay", "--once"], env, tmp_path, "relay", timeout=90)
            assert web.stop() == 0
        finally:
            web.kill()
        assert_exactly(srv.url, {str(n) for n in range(events)})
        out = _manage(["natsync_outbox", "status", "--json"], env, tmp_path, "status").output
        assert json.loads(out.strip().splitlines()[-1])["depth"] == 0
    finally:
        srv.stop()


def test_kill_9_between_publish_and_delete_loses_and_duplicates_nothing(
    database: dict[str, str], tmp_path: Path
) -> None:
    with _js_server(tmp_path) as srv:
        _add_stream(srv.url)
        env = _django_env(database, srv.url, SHOP_OUTBOX_LEASE="1")
        _manage(["migrate", "--verbosity", "0"], env, tmp_path, "migrate")
        expected = _write_rows(env, tmp_path, 30, 3)
        # A relay that stops dead after its PubAcks, before deleting the rows.
        code = (
            "import django, os, signal, sys; django.setup()\n"
            "from natsync.django import outbox\n"
            "def settle(self, done, retry, failed):\n"
            "    print('published', len(done), flush=True)\n"
            "    signal.pause()\n"
            "outbox.DjangoOutboxStorage.settle = settle\n"
            "from django.core.management import call_command\n"
            "call_command('natsync_outbox', 'relay', '--once')\n"
        )
        victim = Proc(
            [PYTHON, "manage.py", "shell", "-c", code], env=env, cwd=PROJECT, log=tmp_path / "victim.log"
        )
        try:
            assert victim.wait_for_line("published 30", 60), victim.output
            assert len(stream_messages(srv.url)) == 30  # in the stream, still in the table
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(10)
        finally:
            victim.kill()
        status = _manage(["natsync_outbox", "status", "--json"], env, tmp_path, "status1").output
        assert json.loads(status.strip().splitlines()[-1])["depth"] == 30
        # Another relay takes the rows once their lease ends; the stream drops the re-publishes.
        _manage(["natsync_outbox", "relay", "--once"], env, tmp_path, "relay", timeout=90)
        assert_exactly(srv.url, expected)
        status = _manage(["natsync_outbox", "status", "--json"], env, tmp_path, "status2").output
        assert json.loads(status.strip().splitlines()[-1])["depth"] == 0


def test_two_relays_racing_keep_subject_order(database: dict[str, str], tmp_path: Path) -> None:
    with _js_server(tmp_path) as srv:
        _add_stream(srv.url)
        env = _django_env(database, srv.url)
        _manage(["migrate", "--verbosity", "0"], env, tmp_path, "migrate")
        expected = _write_rows(env, tmp_path, 300, 4)
        env_small = dict(env, SHOP_OUTBOX_BATCH="7")
        relays = [
            Proc(
                [PYTHON, "manage.py", "natsync_outbox", "relay"],
                env=env_small,
                cwd=PROJECT,
                log=tmp_path / f"relay{i}.log",
            )
            for i in range(2)
        ]
        try:
            assert wait_for(lambda: len(stream_messages(srv.url)) >= len(expected), 120), [
                r.output for r in relays
            ]
            for r in relays:
                assert r.stop() == 0, r.output
        finally:
            for r in relays:
                r.kill()
        msgs = assert_exactly(srv.url, expected)
        per_subject: dict[str, list[int]] = {}
        for m in msgs:
            subject, n = (m.data or b"").decode().split(":")
            per_subject.setdefault(subject, []).append(int(n))
        for subject, numbers in per_subject.items():
            assert numbers == sorted(numbers), f"subject {subject} out of order: {numbers}"
        published = [int(r.output.rsplit("stopped after ", 1)[1].split()[0]) for r in relays]
        assert sum(published) == len(expected), published


def test_the_migration_matches_the_model(js_server: NATSServer) -> None:
    out = io.StringIO()
    call_command("makemigrations", "natsync", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_relay_in_web_processes_publishes_without_a_worker(database: dict[str, str], tmp_path: Path) -> None:
    """NATSYNC_OUTBOX["relay_in_web"]: each web process's relay thread, woken by its commits."""
    with _js_server(tmp_path) as srv:
        _add_stream(srv.url)
        env = _django_env(database, srv.url, SHOP_RELAY_IN_WEB="1")
        _manage(["migrate", "--verbosity", "0"], env, tmp_path, "migrate")
        port = free_port()
        web = Proc(
            [
                PYTHON,
                "-m",
                "gunicorn",
                "-k",
                "gthread",
                "-w",
                "2",
                "--threads",
                "4",
                "-b",
                f"127.0.0.1:{port}",
                "shop_project.wsgi",
            ],
            env=env,
            cwd=PROJECT,
            log=tmp_path / "gunicorn.log",
        )
        try:
            assert wait_for(lambda: "Booting worker" in web.output, 30), web.output
            answers = [http(f"http://127.0.0.1:{port}/events/{n}", "POST", timeout=60)[0] for n in range(20)]
            assert answers == [201] * 20, web.output
            # No worker and no relay command runs: the web processes publish by themselves.
            assert wait_for(lambda: len(stream_messages(srv.url)) >= 20, 30), web.output
            assert web.stop() == 0, web.output
        finally:
            web.kill()
        assert_exactly(srv.url, {str(n) for n in range(20)})
        out = _manage(["natsync_outbox", "status", "--json"], env, tmp_path, "status").output
        assert json.loads(out.strip().splitlines()[-1])["depth"] == 0

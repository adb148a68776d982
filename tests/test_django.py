"""natsync.django against real nats-servers, on the example project (examples/django_project).

In-process tests use Django's test client and ``override_settings`` (the ``NATSYNC``
setting points at a ``natsync.testing.NATSServer``); management commands run as
subprocesses, as an operator would run them.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from webkit import EXAMPLES, PYTHON, Proc, connz, wait_for

import natsync
from natsync.testing import NATSServer

PROJECT = EXAMPLES / "django_project"
sys.path.insert(0, str(PROJECT))

import django  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core import checks  # noqa: E402
from django.core.management import CommandError, call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test import Client as DjangoClient  # noqa: E402
from django.test import override_settings  # noqa: E402

import natsync.django as nd  # noqa: E402
from natsync import _web  # noqa: E402

# The example project's settings, configured without DJANGO_SETTINGS_MODULE (which
# subprocesses of other tests would inherit), with an in-memory database.
if not settings.configured:
    import shop_project.settings as _example

    _values = {k: getattr(_example, k) for k in dir(_example) if k.isupper()}
    _values["DATABASES"] = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
    settings.configure(**_values)
django.setup()

from orders.models import Order  # noqa: E402


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer(http_port=0) as srv:
        call_command("migrate", verbosity=0)
        yield srv
    nd.reset_client()


@pytest.fixture
def natsync_settings(server: NATSServer) -> Iterator[NATSServer]:
    with override_settings(NATSYNC={"servers": server.url, "name": "django-test"}):
        yield server
    # override_settings' exit reset the client (setting_changed)


@pytest.fixture
def watcher(server: NATSServer) -> Iterator[natsync.Client]:
    with natsync.connect(server.url, name="watcher") as nc:
        yield nc


def _env(extra: dict[str, str], db: Path) -> dict[str, str]:
    env = {"SHOP_DB": str(db), "DJANGO_SETTINGS_MODULE": "shop_project.settings"}
    env.update(extra)
    return env


def _manage(args: list[str], extra: dict[str, str], db: Path, log: Path) -> Proc:
    return Proc([PYTHON, "manage.py", *args], env=_env(extra, db), cwd=PROJECT, log=log)


# ------------------------------------------------------------------------ settings


def test_settings_options_from_setting_and_environment() -> None:
    servers, options = nd.settings_options(
        {"servers": "nats://a:4222", "name": "shop", "connect_timeout": 1.0},
        {
            "NATSYNC_SERVERS": "nats://b:4222, nats://c:4222",
            "NATSYNC_TOKEN": "s3cret",
            "NATSYNC_CONNECT_TIMEOUT": "0.5",
            "NATSYNC_MAX_RECONNECT_ATTEMPTS": "7",
            "NATSYNC_NO_ECHO": "yes",
            "NATSYNC_PENDING_MSGS_LIMIT": "none",
            "NATSYNC_UNRELATED": "ignored",
            "OTHER": "x",
        },
    )
    assert servers == ["nats://b:4222", "nats://c:4222"]
    assert options == {
        "name": "shop",
        "connect_timeout": 0.5,
        "token": "s3cret",
        "max_reconnect_attempts": 7,
        "no_echo": True,
        "pending_msgs_limit": None,
    }


@pytest.mark.parametrize(
    ("value", "env", "error"),
    [
        ("not a dict", {}, TypeError),
        ({"servres": "nats://x"}, {}, TypeError),
        ({"lazy": False}, {}, TypeError),
        ({}, {"NATSYNC_NO_ECHO": "maybe"}, ValueError),
        ({}, {"NATSYNC_CONNECT_TIMEOUT": "soon"}, ValueError),
        ({}, {"NATSYNC_MAX_RECONNECT_ATTEMPTS": "1.5"}, ValueError),
    ],
)
def test_settings_options_rejects_bad_input(value: Any, env: dict[str, str], error: type[Exception]) -> None:
    with pytest.raises(error) as e:
        nd.settings_options(value, env)
    text = str(e.value)
    assert "NATSYNC" in text


@pytest.mark.parametrize(
    ("value", "check_id", "words"),
    [
        ({"servers": "nats://127.0.0.1:4222", "conect_timeout": 1}, "natsync.E001", "conect_timeout"),
        ({"connect_timeout": -1}, "natsync.E003", "connect_timeout"),
        ({"servers": "ftp://127.0.0.1"}, "natsync.E003", "ftp://"),
        ({"token": lambda: "x", "servers": "nats://tok@127.0.0.1"}, "natsync.E003", "token"),
        (["not", "a", "dict"], "natsync.E001", "dict"),
    ],
)
def test_system_check_reports_bad_settings(
    value: Any, check_id: str, words: str, listener: socket.socket
) -> None:
    with override_settings(NATSYNC=value):
        errors = checks.run_checks(tags=["natsync"])
    assert [e.id for e in errors] == [check_id], errors
    assert words in errors[0].msg
    listener.settimeout(0.05)
    with pytest.raises(OSError):
        listener.accept()  # nothing dialled anything


def test_system_check_passes_and_connects_nothing(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with override_settings(NATSYNC={"servers": f"nats://127.0.0.1:{port}", "token": "s3cret"}):
        assert checks.run_checks(tags=["natsync"]) == []
    listener.settimeout(0.2)
    with pytest.raises(OSError):
        listener.accept()


def test_management_commands_work_with_nats_down(tmp_path: Path, listener: socket.socket) -> None:
    """migrate, check and friends never connect: NATS may be down (here: a port nobody
    answers, which records any attempt)."""
    port = listener.getsockname()[1]
    env = {"NATSYNC_SERVERS": f"nats://127.0.0.1:{port}"}
    db = tmp_path / "db.sqlite3"
    for args in (
        ["migrate", "--no-input"],
        ["check"],
        ["showmigrations", "orders"],
        ["natsync_worker", "--list"],
    ):
        p = _manage(args, env, db, tmp_path / "out.log")
        assert p.proc.wait(60) == 0, f"{args}: {p.output}"
        p.kill()
    listener.settimeout(0.05)
    with pytest.raises(OSError):
        listener.accept()


def test_bad_environment_variable_fails_manage_check(tmp_path: Path) -> None:
    p = _manage(["check"], {"NATSYNC_CONNECT_TIMEOUT": "-1"}, tmp_path / "db", tmp_path / "out.log")
    assert p.proc.wait(60) == 1
    p.kill()
    assert "natsync.E003" in p.output and "connect_timeout" in p.output


# -------------------------------------------------------------------------- client


def test_get_client_is_lazy_shared_and_one_connection(natsync_settings: NATSServer) -> None:
    nc = nd.get_client()
    assert nd.get_client() is nc
    assert not nc.is_connected  # nothing connected yet
    monitor = natsync_settings.monitor_url
    assert monitor is not None
    assert not [c for c in connz(monitor) if c.get("name") == "django-test"]

    barrier = threading.Barrier(16)
    clients: list[natsync.Client] = []

    def use() -> None:
        c = nd.get_client()
        barrier.wait(5)
        c.publish("x.y", b"1")
        c.flush(5)
        clients.append(c)

    threads = [threading.Thread(target=use) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(clients) == 16 and all(c is nc for c in clients)
    assert len([c for c in connz(monitor) if c.get("name") == "django-test"]) == 1


def test_setting_change_gives_a_new_client(natsync_settings: NATSServer) -> None:
    first = nd.get_client()
    first.flush(5)
    with override_settings(NATSYNC={"servers": natsync_settings.url, "name": "other"}):
        second = nd.get_client()
        assert second is not first
        assert first.is_closed
    assert nd.get_client() is not second and second.is_closed


# ----------------------------------------------------------------- views, commits


def test_health_view(natsync_settings: NATSServer) -> None:
    response = DjangoClient().get("/health/nats")
    assert response.status_code == 200
    body = response.json()
    # No internal address for a public probe unless NATSYNC_SHOW_SERVER asks for it.
    assert body["status"] == "ok" and body["server"] is None
    assert body["rtt_ms"] >= 0 and body["last_error"] is None
    assert body["outbox"] == {"depth": 0, "oldest_age": None, "failed": 0}
    assert DjangoClient().post("/health/nats").status_code == 405
    with override_settings(NATSYNC_SHOW_SERVER=True):
        assert DjangoClient().get("/health/nats").json()["server"] == natsync_settings.url


def test_health_view_when_nats_is_down(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.close()  # refused from now on
    with override_settings(
        NATSYNC={"servers": f"nats://127.0.0.1:{port}", "token": "s3cret", "connect_timeout": 0.5}
    ):
        response = DjangoClient().get("/health/nats")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] in ("connecting", "reconnecting") and body["rtt_ms"] is None
    assert "s3cret" not in response.content.decode()


def test_publish_on_commit(natsync_settings: NATSServer, watcher: natsync.Client) -> None:
    sub = watcher.subscribe("orders.created")
    watcher.flush()
    web = DjangoClient()
    assert web.post("/orders/1001").status_code == 201
    assert web.post("/orders/1002/rollback").status_code == 402
    assert web.post("/orders/1003").status_code == 201
    assert sub.next_msg(timeout=5).data == b"1001"
    assert sub.next_msg(timeout=5).data == b"1003"  # 1002 rolled back: never announced
    watcher.flush()
    assert sub.pending_msgs == 0
    assert not Order.objects.filter(number=1002).exists()


def test_publish_on_commit_waits_for_the_outermost_commit(
    natsync_settings: NATSServer, watcher: natsync.Client
) -> None:
    sub = watcher.subscribe("audit.>")
    watcher.flush()
    with transaction.atomic():
        nd.publish_on_commit("audit.one", "a")
        with transaction.atomic():
            nd.publish_on_commit("audit.two", bytearray(b"b"), headers={"K": "v"})
        nd.get_client().flush(5)
        watcher.flush()
        assert sub.pending_msgs == 0  # nothing before the commit
    first, second = sub.next_msg(timeout=5), sub.next_msg(timeout=5)
    assert (first.subject, first.data) == ("audit.one", b"a")
    assert (second.subject, second.data) == ("audit.two", b"b") and second.headers is not None
    assert second.headers["K"] == "v"


def test_publish_on_commit_checks_its_input_at_once(natsync_settings: NATSServer) -> None:
    with pytest.raises(natsync.BadSubjectError):
        nd.publish_on_commit("bad subject", b"x")
    with pytest.raises(TypeError):
        nd.publish_on_commit("ok", 42)  # type: ignore[arg-type]


def test_view_needing_nats_answers_503_json_when_no_service(natsync_settings: NATSServer) -> None:
    response = DjangoClient().get("/greet/ada")
    assert response.status_code == 503
    assert response.json()["error"] == "NATS unavailable"
    assert "NoRespondersError" in response.json()["detail"]


# ------------------------------------------------------------------------ the worker


def test_worker_runs_handlers_and_drains_on_sigterm(
    server: NATSServer, watcher: natsync.Client, tmp_path: Path
) -> None:
    db = tmp_path / "db.sqlite3"
    env = {"NATSYNC_SERVERS": server.url}
    migrate = _manage(["migrate", "--no-input"], env, db, tmp_path / "migrate.log")
    assert migrate.proc.wait(60) == 0, migrate.output
    migrate.kill()
    worker = _manage(["natsync_worker", "--threads", "2"], env, db, tmp_path / "worker.log")
    try:
        assert worker.wait_for_line("natsync worker: ready", 30), worker.output
        assert watcher.request("svc.greet", b"ada", timeout=5).data == b"hello, ada"
        # the ORM in a handler: the worker marks the order billed in its database
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO orders_order (number, billed) VALUES (77, 0)")
        watcher.publish("orders.created", b"77")
        watcher.flush()
        assert worker.wait_for_line("billed order 77", 10), worker.output
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT billed FROM orders_order WHERE number = 77").fetchone() == (1,)
    finally:
        rc = worker.stop(signal.SIGTERM)
        worker.kill()
    assert rc == 0, worker.output
    assert "natsync worker: stopped" in worker.output
    assert "Traceback" not in worker.output
    with pytest.raises(natsync.NoRespondersError):
        watcher.request("svc.greet", b"x", timeout=2)


def test_worker_handler_selection_and_sigint(
    server: NATSServer, watcher: natsync.Client, tmp_path: Path
) -> None:
    env = {"NATSYNC_SERVERS": server.url}
    worker = _manage(
        ["natsync_worker", "--handler", "greet_service"], env, tmp_path / "db", tmp_path / "w.log"
    )
    try:
        assert worker.wait_for_line("natsync worker: ready", 30), worker.output
        assert "bill_order" not in worker.output
        assert watcher.request("svc.greet", b"bo", timeout=5).data == b"hello, bo"
    finally:
        rc = worker.stop(signal.SIGINT)
        worker.kill()
    assert rc == 0, worker.output
    assert "Traceback" not in worker.output

    bad = _manage(["natsync_worker", "--handler", "nope"], env, tmp_path / "db", tmp_path / "bad.log")
    assert bad.proc.wait(60) == 1
    bad.kill()
    assert "handler 'nope' matches no handler" in bad.output and "greet_service" in bad.output


def test_worker_boots_with_nats_down_and_serves_when_it_comes_up(
    tmp_path: Path, watcher: natsync.Client
) -> None:
    later = NATSServer()
    env = {
        "NATSYNC_SERVERS": later.url,
        "NATSYNC_RECONNECT_TIME_WAIT": "0.1",
        "NATSYNC_CONNECT_TIMEOUT": "0.5",
    }
    worker = _manage(["natsync_worker"], env, tmp_path / "db", tmp_path / "w.log")
    try:
        assert worker.wait_for_line("natsync worker: ready", 30), worker.output
        assert "not reachable yet" in worker.output
        with later, natsync.connect(later.url) as nc:
            assert wait_for(lambda: _answers(nc), 15), worker.output
            rc = worker.stop(signal.SIGTERM)
            assert rc == 0, worker.output
    finally:
        worker.kill()


def _answers(nc: natsync.Client) -> bool:
    try:
        return nc.request("svc.greet", b"late", timeout=1).data == b"hello, late"
    except (natsync.NoRespondersError, natsync.TimeoutError):
        time.sleep(0.05)
        return False


def test_handler_decorators_register_in_the_app_registry() -> None:
    @nd.subscribe("test.registry", queue="q", name="test_registry_handler")
    def handler(msg: natsync.Msg) -> None: ...

    try:
        (found,) = nd.handlers.select(["test_registry_handler"])
        assert found.func is handler and found.subject == "test.registry" and found.queue == "q"
    finally:
        nd.handlers.remove("test_registry_handler")
    assert nd.PermanentError is _web.PermanentError


def test_worker_command_in_process(natsync_settings: NATSServer, watcher: natsync.Client) -> None:
    """The command on the main thread (as manage.py runs it); SIGTERM once it answers."""
    out = io.StringIO()
    stopper = threading.Thread(target=_terminate_when_answering, args=(watcher,), name="test-stopper")
    stopper.start()
    try:
        call_command("natsync_worker", "--handler", "greet_service", "--threads", "2", stdout=out)
    finally:
        stopper.join(15)
    text = out.getvalue()
    assert "natsync worker: ready" in text and "natsync worker: stopped" in text
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _terminate_when_answering(nc: natsync.Client) -> None:
    # The worker installs its SIGTERM handler before it subscribes: once it answers, the
    # signal reaches the worker, never pytest.
    if wait_for(lambda: _answers_greet(nc), 15):
        os.kill(os.getpid(), signal.SIGTERM)


def _answers_greet(nc: natsync.Client) -> bool:
    try:
        return nc.request("svc.greet", b"x", timeout=0.5).data == b"hello, x"
    except (natsync.NoRespondersError, natsync.TimeoutError):
        return False


def test_worker_command_errors_in_process(natsync_settings: NATSServer) -> None:
    with pytest.raises(CommandError, match="drain-timeout"):
        call_command("natsync_worker", "--drain-timeout", "0")
    with pytest.raises(CommandError, match="matches no handler"):
        call_command("natsync_worker", "--handler", "nope")
    out = io.StringIO()
    call_command("natsync_worker", "--list", stdout=out)
    assert "orders.nats_handlers.greet_service (subject 'svc.greet' queue 'greeters')" in out.getvalue()


def test_system_check_reports_a_bad_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATSYNC_NO_ECHO", "maybe")
    errors = checks.run_checks(tags=["natsync"])
    assert [e.id for e in errors] == ["natsync.E002"] and "NATSYNC_NO_ECHO" in errors[0].msg


def test_middleware_leaves_other_errors_to_django() -> None:
    from django.http import HttpResponse
    from django.test import RequestFactory

    from natsync.django.middleware import NatsUnavailableMiddleware

    middleware = NatsUnavailableMiddleware(lambda request: HttpResponse("ok"))
    request = RequestFactory().get("/x")
    assert middleware(request).content == b"ok"
    assert middleware.process_exception(request, ValueError("a bug")) is None
    assert middleware.process_exception(request, natsync.BadSubjectError("bad")) is None
    response = middleware.process_exception(request, natsync.NoRespondersError("svc"))
    assert response is not None and response.status_code == 503


def test_worker_command_rejects_bad_threads() -> None:
    with pytest.raises(CommandError, match="threads"):
        call_command("natsync_worker", "--threads", "0")


# ------------------------------------------------------------------ JetStream handlers


def test_consume_acks_naks_with_backoff_and_terms(tmp_path: Path) -> None:
    """@consume against a real JetStream: ack on return, nak (redelivered after the
    backoff) on an exception, term on PermanentError; the durable outlives the worker."""
    calls: Counter[str] = Counter()
    deliveries: dict[str, list[int]] = {}
    done = threading.Event()

    reg = _web.HandlerRegistry()

    @reg.consume(stream="ORDERS", durable="workers", subject="orders.>", backoff=[0.1], batch=5)
    def handle(msg: natsync.Msg) -> None:
        body = msg.data.decode()
        calls[body] += 1
        deliveries.setdefault(body, []).append(msg.metadata.num_delivered)  # type: ignore[attr-defined]
        if body == "bad":
            raise nd.PermanentError("cannot ever work")
        if body == "flaky" and calls[body] == 1:
            raise RuntimeError("try again later")
        if {"ok1", "ok2"} <= set(calls) and calls["flaky"] == 2:
            done.set()

    with NATSServer(jetstream=True) as srv, natsync.connect(srv.url) as nc:
        js = nc.jetstream()  # type: ignore[attr-defined]
        js.add_stream(name="ORDERS", subjects=["orders.>"])
        for body in ("ok1", "flaky", "bad", "ok2"):
            js.publish("orders.new", body.encode())
        worker = _web.Worker(natsync.connect(srv.url, lazy=True), list(reg))
        status: list[int] = []
        t = threading.Thread(target=lambda: status.append(worker.run()), name="test-worker")
        t.start()
        try:
            assert done.wait(15), dict(calls)

            def settled() -> bool:
                info = js.consumer_info("ORDERS", "workers")
                return info.num_ack_pending == 0 and info.num_pending == 0

            assert wait_for(settled, 10)
        finally:
            worker.stop()
            t.join(15)
        assert status == [0]
        assert calls == Counter({"ok1": 1, "ok2": 1, "flaky": 2, "bad": 1}), dict(calls)
        assert deliveries["flaky"] == [1, 2] and deliveries["bad"] == [1]
        assert js.consumer_info("ORDERS", "workers").name == "workers"  # the durable stays

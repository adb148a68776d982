"""natsync.flask and the machinery it shares with natsync.django (natsync._web).

Against real nats-servers: the extension's configuration, its lazy per-app client,
several apps per process, the health view and error responses, the handler registry, the
worker (threads, replies, failures, drain), and the example app (examples/flask_app)
with its ``flask natsync worker`` command run as a subprocess.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from flask import Flask
from webkit import EXAMPLES, PYTHON, Proc, connz, wait_for

import natsync
from natsync import _web
from natsync.flask import EXTENSION_KEY, NATS
from natsync.testing import NATSServer

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer(http_port=0) as srv:
        yield srv


@pytest.fixture(scope="module")
def token_server() -> Iterator[NATSServer]:
    with NATSServer(token=TOKEN) as srv:
        yield srv


@pytest.fixture
def nc(server: NATSServer) -> Iterator[natsync.Client]:
    with natsync.connect(server.url, name="test-peer") as c:
        yield c


def _app(name: str = "testapp", **config: Any) -> Flask:
    app = Flask(name)
    app.config.update(config)
    return app


def _close(*apps: Flask) -> None:
    for app in apps:
        app.extensions[EXTENSION_KEY].clients.close()


# --------------------------------------------------------------------- import rule


def test_import_natsync_needs_no_web_framework() -> None:
    code = (
        "import sys, natsync, natsync._web\n"
        "web = ('flask', 'django', 'gunicorn', 'gevent', 'eventlet', 'celery')\n"
        "bad = [m for m in web if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# ------------------------------------------------------------------------- config


def test_init_app_builds_a_lazy_client_with_web_defaults(server: NATSServer, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    ext = NATS()
    app = _app(NATS_URL=[f"nats://127.0.0.1:{port}"], NATS_OPTIONS={"connect_timeout": 0.5})
    ext.init_app(app)
    try:
        state = app.extensions[EXTENSION_KEY]
        assert state.ext is ext
        with app.app_context():
            client = ext.client
        assert client is state.client and not client.is_connected
        listener.settimeout(0.05)
        with pytest.raises(OSError):
            listener.accept()  # init_app opened nothing
        listener.close()
        # web default: retry_on_failed_connect, so a first use with NATS down does not raise
        client.publish("x", b"queued")
        assert client.is_reconnecting or client.is_connecting
    finally:
        _close(app)


def test_config_keys(token_server: NATSServer) -> None:
    app = _app(
        NATS_URL=token_server.url,
        NATS_TOKEN=TOKEN,
        NATS_OPTIONS={"name": "configured", "max_reconnect_attempts": 3},
    )
    ext = NATS(app)
    try:
        client = ext.client  # bound at construction: no app context needed
        sub = client.subscribe("cfg")
        client.publish("cfg", b"ok")
        assert sub.next_msg(timeout=5).data == b"ok"
        assert TOKEN not in repr(client) and TOKEN not in str(client.connected_url)
    finally:
        _close(app)


@pytest.mark.parametrize(
    ("config", "error", "words"),
    [
        ({"NATS_OPTIONS": {"conect_timeout": 1}}, TypeError, "conect_timeout"),
        ({"NATS_OPTIONS": {"connect_timeout": 0}}, ValueError, "connect_timeout"),
        ({"NATS_OPTIONS": ["name"]}, TypeError, "NATS_OPTIONS"),
        ({"NATS_URL": 42}, TypeError, "NATS_URL"),
        ({"NATS_URL": "ftp://h"}, ValueError, "ftp://"),
        ({"NATS_URL": "nats://h", "NATS_OPTIONS": {"servers": "nats://i"}}, ValueError, "NATS_URL"),
        ({"NATS_TOKEN": "a", "NATS_OPTIONS": {"token": "b"}}, ValueError, "NATS_TOKEN"),
        ({"NATS_OPTIONS": {"lazy": False}}, ValueError, "lazy"),
    ],
)
def test_bad_config_fails_at_init_app(config: dict[str, Any], error: type[Exception], words: str) -> None:
    app = _app(**config)
    with pytest.raises(error) as e:
        NATS(app)
    assert words in str(e.value)
    assert EXTENSION_KEY not in app.extensions


def test_servers_may_come_from_nats_options(server: NATSServer) -> None:
    app = _app(NATS_OPTIONS={"servers": [server.url]})
    ext = NATS(app)
    try:
        ext.client.flush(5)
        assert ext.client.connected_url == server.url
    finally:
        _close(app)


def test_client_outside_an_app_context_is_a_clear_error() -> None:
    ext = NATS()
    with pytest.raises(RuntimeError):
        _ = ext.client
    app = _app()
    with app.app_context(), pytest.raises(RuntimeError, match="not initialised"):
        _ = ext.client


def test_several_apps_per_process(server: NATSServer) -> None:
    with NATSServer() as other:
        ext = NATS()
        a = _app("app_a", NATS_URL=server.url)
        b = _app("app_b", NATS_URL=other.url)
        ext.init_app(a)
        ext.init_app(b)
        try:
            with a.app_context():
                ca = ext.client
            with b.app_context():
                cb = ext.client
            assert ca is not cb
            ca.flush(5)
            cb.flush(5)
            assert ca.connected_url == server.url and cb.connected_url == other.url
            monitor = server.monitor_url
            assert monitor is not None
            assert [c.get("name") for c in connz(monitor)].count("app_a") == 1
        finally:
            _close(a, b)


def test_one_connection_for_many_threads(server: NATSServer, nc: natsync.Client) -> None:
    app = _app("threads_app", NATS_URL=server.url)
    ext = NATS(app)
    nc.subscribe("svc.t", cb=lambda m: m.respond(b"r"))
    nc.flush()
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def use() -> None:
        try:
            barrier.wait(5)
            assert ext.client.request("svc.t", b"", timeout=5).data == b"r"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=use) for _ in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not errors, errors
        monitor = server.monitor_url
        assert monitor is not None
        assert [c.get("name") for c in connz(monitor)].count("threads_app") == 1
    finally:
        _close(app)


# ---------------------------------------------------------------- views and errors


def test_health_view(server: NATSServer) -> None:
    app = _app(NATS_URL=server.url)
    ext = NATS(app)
    app.add_url_rule("/health/nats", view_func=ext.health_view)
    try:
        response = app.test_client().get("/health/nats")
        assert response.status_code == 200
        body = response.get_json()
        # No internal address for a public probe unless NATS_SHOW_SERVER asks for it.
        expected = {"status": "ok", "rtt_ms": body["rtt_ms"], "server": None, "last_error": None}
        expected["outbox"] = None
        assert body == expected
        app.config["NATS_SHOW_SERVER"] = True
        assert app.test_client().get("/health/nats").get_json()["server"] == server.url
        app.config["NATS_SHOW_SERVER"] = False
        assert body["rtt_ms"] >= 0
        ext.client.close()
        response = app.test_client().get("/health/nats")
        assert response.status_code == 503 and response.get_json()["status"] == "closed"
    finally:
        _close(app)


def test_health_view_when_nats_is_down_shows_no_secret(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.close()
    app = _app(NATS_URL=f"nats://{TOKEN}@127.0.0.1:{port}", NATS_OPTIONS={"connect_timeout": 0.5})
    ext = NATS(app)
    app.add_url_rule("/health/nats", view_func=ext.health_view)
    try:
        client = app.test_client()
        for _ in range(2):
            response = client.get("/health/nats")
            assert response.status_code == 503
            body = response.get_json()
            assert body["status"] in ("connecting", "reconnecting") and body["server"] is None
            assert body["last_error"]
            assert TOKEN not in response.get_data(as_text=True)
    finally:
        _close(app)


def test_unavailable_errors_become_503_json(server: NATSServer) -> None:
    app = _app(NATS_URL=server.url)
    ext = NATS(app)

    @app.get("/ask")
    def ask() -> str:
        return ext.client.request("svc.nobody", b"", timeout=1).data.decode()

    @app.get("/bug")
    def bug() -> str:
        ext.client.publish("bad subject", b"")
        return "unreachable"

    try:
        response = app.test_client().get("/ask")
        assert response.status_code == 503
        assert response.get_json()["error"] == "NATS unavailable"
        assert "NoRespondersError" in response.get_json()["detail"]
        # a programming error is not "NATS unavailable": Flask's 500 as usual
        assert app.test_client().get("/bug").status_code == 500
    finally:
        _close(app)


def test_error_responses_can_be_switched_off(server: NATSServer) -> None:
    app = _app(NATS_URL=server.url, NATS_ERROR_RESPONSES=False)
    ext = NATS(app)

    @app.get("/ask")
    def ask() -> str:
        return ext.client.request("svc.nobody", b"", timeout=1).data.decode()

    try:
        assert app.test_client().get("/ask").status_code == 500
    finally:
        _close(app)


# ------------------------------------------------------------------------ registry


def test_registry_names_and_selection() -> None:
    reg = _web.HandlerRegistry()

    @reg.subscribe("a.b")
    def one(msg: natsync.Msg) -> None: ...

    @reg.subscribe("c.*", queue="q", name="custom")
    def two(msg: natsync.Msg) -> None: ...

    full = f"{__name__}.test_registry_names_and_selection.<locals>.one"
    assert reg.names() == sorted([full, "custom"]) and len(reg) == 2
    assert [h.name for h in reg.select(["one"])] == [full]
    assert [h.name for h in reg.select([full, "custom"])] == [full, "custom"]
    assert {h.name for h in reg.select([])} == {full, "custom"}
    with pytest.raises(LookupError, match="matches no handler; known handlers: custom"):
        reg.select(["three"])
    # the same name from the same module again replaces (a reloaded module)
    reg.subscribe("a.c", name="custom")(two)
    assert reg.select(["custom"])[0].subject == "a.c"
    other = _web.Handler("custom", one, "x", module="elsewhere")
    with pytest.raises(ValueError, match="already registered"):
        reg.add(other)

    @reg.subscribe("d", name="x.one")
    def three(msg: natsync.Msg) -> None: ...

    with pytest.raises(LookupError, match="matches several handlers"):
        reg.select(["one"])


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda r: r.subscribe("bad subject"), natsync.BadSubjectError),
        (lambda r: r.subscribe("ok", queue="bad queue"), natsync.BadSubjectError),
        (lambda r: r.consume(stream="", durable="d"), ValueError),
        (lambda r: r.consume(stream="S", durable="a.b"), ValueError),
        (lambda r: r.consume(stream="S", durable="d", subject="x y"), natsync.BadSubjectError),
        (lambda r: r.consume(stream="S", durable="d", permanent=[42]), TypeError),
        (lambda r: r.consume(stream="S", durable="d", backoff=[]), ValueError),
        (lambda r: r.consume(stream="S", durable="d", backoff=[-1]), ValueError),
        (lambda r: r.consume(stream="S", durable="d", batch=0), ValueError),
        (lambda r: r.subscribe("ok")(42), TypeError),
    ],
)
def test_registry_rejects_bad_declarations(call: Any, error: type[Exception]) -> None:
    reg = _web.HandlerRegistry()
    with pytest.raises(error):
        call(reg)
    assert len(reg) == 0


def test_consume_declaration() -> None:
    reg = _web.HandlerRegistry()

    @reg.consume(stream="ORDERS", durable="ship", subject="orders.paid", permanent=KeyError, backoff=[0.5, 2])
    def ship(msg: natsync.Msg) -> None: ...

    (h,) = list(reg)
    assert h.is_jetstream and h.stream == "ORDERS" and h.durable == "ship"
    assert h.permanent == (KeyError,) and h.backoff == (0.5, 2.0) and h.batch == 10
    assert "stream 'ORDERS' consumer 'ship' subject 'orders.paid'" in h.describe()


def test_worker_takes_jetstream_handlers_only_with_jetstream(server: NATSServer) -> None:
    reg = _web.HandlerRegistry()
    reg.consume(stream="S", durable="d")(lambda m: None)
    client = natsync.connect(server.url, lazy=True)
    try:
        if hasattr(client, "jetstream"):  # natsync with JetStream: accepted
            assert _web.Worker(client, list(reg)).handlers[0].durable == "d"
        else:
            with pytest.raises(RuntimeError, match="JetStream"):
                _web.Worker(client, list(reg))
    finally:
        client.close()


# -------------------------------------------------------------------------- worker


def _run_worker(worker: _web.Worker) -> tuple[threading.Thread, threading.Event, list[int]]:
    ready = threading.Event()
    status: list[int] = []
    t = threading.Thread(target=lambda: status.append(worker.run(ready=ready.set)), name="test-worker")
    t.start()
    assert ready.wait(10)
    return t, ready, status


def test_worker_replies_logs_failures_and_drains(
    server: NATSServer, nc: natsync.Client, caplog: pytest.LogCaptureFixture
) -> None:
    reg = _web.HandlerRegistry()
    started = threading.Event()
    release = threading.Event()

    @reg.subscribe("w.echo")
    def echo(msg: natsync.Msg) -> bytes:
        return b"echo " + msg.data

    @reg.subscribe("w.fail")
    def fail(msg: natsync.Msg) -> None:
        raise RuntimeError("handler broke")

    @reg.subscribe("w.weird")
    def weird(msg: natsync.Msg) -> object:
        return 42

    @reg.subscribe("w.slow")
    def slow(msg: natsync.Msg) -> str:
        started.set()
        release.wait(10)
        return "slow done"

    worker = _web.Worker(natsync.connect(server.url, lazy=True), list(reg))
    caplog.set_level(logging.INFO, logger="natsync.worker")
    t, _, status = _run_worker(worker)
    try:
        assert nc.request("w.echo", b"hi", timeout=5).data == b"echo hi"
        with pytest.raises(natsync.TimeoutError):
            nc.request("w.fail", b"", timeout=0.5)
        with pytest.raises(natsync.TimeoutError):
            nc.request("w.weird", b"", timeout=0.5)
        assert nc.request("w.echo", b"still", timeout=5).data == b"echo still"
        # a request in flight when the worker is stopped is still answered (drain)
        inbox = nc.new_inbox()
        replies = nc.subscribe(inbox)
        nc.publish("w.slow", b"", reply=inbox)
        assert started.wait(5)
        worker.stop()
        release.set()
        assert replies.next_msg(timeout=5).data == b"slow done"
    finally:
        release.set()
        worker.stop()
        t.join(15)
    assert status == [0]
    assert "handler broke" in caplog.text
    assert "returned int; return bytes, str or None" in caplog.text
    assert worker.handled == 5


def test_worker_threads_run_handlers_at_once(server: NATSServer, nc: natsync.Client) -> None:
    reg = _web.HandlerRegistry()
    barrier = threading.Barrier(4)

    @reg.subscribe("w.par")
    def par(msg: natsync.Msg) -> bytes:
        barrier.wait(5)  # passes only when 4 run at the same time
        return b"ok"

    worker = _web.Worker(natsync.connect(server.url, lazy=True), list(reg), threads=4)
    t, _, status = _run_worker(worker)
    try:
        inbox = nc.new_inbox()
        replies = nc.subscribe(inbox)
        for _ in range(8):
            nc.publish("w.par", b"", reply=inbox)
        got = [replies.next_msg(timeout=10).data for _ in range(8)]
        assert got == [b"ok"] * 8
    finally:
        worker.stop()
        t.join(15)
    assert status == [0]


def test_worker_queue_group_shares_messages(server: NATSServer, nc: natsync.Client) -> None:
    counts = [0, 0]
    workers = []
    for i in range(2):
        reg = _web.HandlerRegistry()

        def h(msg: natsync.Msg, i: int = i) -> None:
            counts[i] += 1

        reg.subscribe("w.q", queue="g", name=f"h{i}")(h)
        workers.append(_web.Worker(natsync.connect(server.url, lazy=True), list(reg)))
    runs = [_run_worker(w) for w in workers]
    try:
        for _ in range(50):
            nc.publish("w.q", b"")
        nc.flush()
        deadline = time.monotonic() + 5
        while sum(counts) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        for w in workers:
            w.stop()
        for t, _, _ in runs:
            t.join(15)
    assert sum(counts) == 50


def test_worker_exits_1_when_the_connection_closes(server: NATSServer) -> None:
    reg = _web.HandlerRegistry()
    reg.subscribe("w.x")(lambda m: None)
    client = natsync.connect(server.url, lazy=True)
    worker = _web.Worker(client, list(reg))
    t, _, status = _run_worker(worker)
    client.close()
    t.join(15)
    assert status == [1]


def test_worker_rejects_bad_arguments(server: NATSServer) -> None:
    client = natsync.connect(server.url, lazy=True)
    h = _web.Handler("h", lambda m: None, "x")
    try:
        with pytest.raises(ValueError, match="threads"):
            _web.Worker(client, [h], threads=0)
        with pytest.raises(ValueError, match="drain_timeout"):
            _web.Worker(client, [h], drain_timeout=0)
        with pytest.raises(ValueError, match="no handlers"):
            _web.Worker(client, [])
    finally:
        client.close()


def test_worker_signal_handling_in_a_subprocess(server: NATSServer, tmp_path: Path) -> None:
    """SIGTERM drains and exits 0; SIGINT too; the old handlers come back."""
    script = tmp_path / "w.py"
    script.write_text(
        "import signal, sys, natsync\n"
        "from natsync import _web\n"
        "reg = _web.HandlerRegistry()\n"
        "reg.subscribe('sig.x')(lambda m: b'pong')\n"
        "w = _web.Worker(natsync.connect(sys.argv[1], lazy=True), list(reg))\n"
        "rc = w.run(ready=lambda: print('ready', flush=True))\n"
        "print('rc', rc, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)\n"
        "sys.exit(rc)\n"
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        p = Proc([PYTHON, str(script), server.url], log=tmp_path / f"{sig}.log")
        try:
            assert p.wait_for_line("ready", 20), p.output
            with natsync.connect(server.url) as c:
                assert c.request("sig.x", b"", timeout=5).data == b"pong"
            assert p.stop(sig) == 0, p.output
        finally:
            p.kill()
        assert "rc 0 True" in p.output and "Traceback" not in p.output


# ------------------------------------------------------------- the example app


def _load_example() -> ModuleType:
    path = EXAMPLES / "flask_app" / "app.py"
    spec = importlib.util.spec_from_file_location("natsync_example_flask_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_flask_app_with_its_worker(server: NATSServer, nc: natsync.Client, tmp_path: Path) -> None:
    env = {"FLASK_NATS_URL": server.url}
    worker = Proc(
        [PYTHON, "-m", "flask", "--app", "app", "natsync", "worker", "--threads", "2"],
        env=env,
        cwd=EXAMPLES / "flask_app",
        log=tmp_path / "worker.log",
    )
    try:
        assert worker.wait_for_line("natsync worker: ready", 30), worker.output
        monkey = pytest.MonkeyPatch()
        monkey.setenv("FLASK_NATS_URL", server.url)
        try:
            example = _load_example()
        finally:
            monkey.undo()
        web = example.app.test_client()
        orders = nc.subscribe("orders.created")
        nc.flush()
        response = web.get("/greet/ada")
        assert response.status_code == 200 and response.get_json()["greeting"] == "hello, ada"
        assert web.post("/orders/42").status_code == 201
        assert orders.next_msg(timeout=5).data == b"42"
        assert worker.wait_for_line("billing order 42", 10), worker.output
        health = web.get("/health/nats")
        assert health.status_code == 200 and health.get_json()["status"] == "ok"
        example.app.extensions[EXTENSION_KEY].clients.close()
    finally:
        rc = worker.stop(signal.SIGTERM)
        worker.kill()
    assert rc == 0, worker.output
    assert "natsync worker: stopped" in worker.output and "Traceback" not in worker.output


def test_example_worker_cli_errors(tmp_path: Path) -> None:
    bad = Proc(
        [PYTHON, "-m", "flask", "--app", "app", "natsync", "worker", "--handler", "nope"],
        cwd=EXAMPLES / "flask_app",
        log=tmp_path / "bad.log",
    )
    assert bad.proc.wait(30) == 2
    bad.kill()
    assert "handler 'nope' matches no handler" in bad.output and "greet_service" in bad.output


def test_worker_cli_in_process(server: NATSServer, nc: natsync.Client) -> None:
    """``flask natsync worker`` on the main thread (as the CLI runs it); SIGTERM once it answers."""
    app = _app("cli_app", NATS_URL=server.url)
    ext = NATS(app)

    @ext.subscribe("cli.greet")
    def greet(msg: natsync.Msg) -> str:
        from flask import current_app

        return f"{current_app.name}: hello"  # handlers run in an app context

    def terminate_when_answering() -> None:
        def answers() -> bool:
            try:
                return nc.request("cli.greet", b"", timeout=0.5).data == b"cli_app: hello"
            except (natsync.NoRespondersError, natsync.TimeoutError):
                return False

        if wait_for(answers, 15):
            os.kill(os.getpid(), signal.SIGTERM)  # the worker's handler is installed by now

    stopper = threading.Thread(target=terminate_when_answering, name="test-stopper")
    stopper.start()
    try:
        result = app.test_cli_runner().invoke(args=["natsync", "worker", "--threads", "2"])
    finally:
        stopper.join(15)
    assert result.exit_code == 0, result.output
    assert "natsync worker: ready" in result.output and "natsync worker: stopped" in result.output
    assert ext.client.is_closed


def test_worker_cli_without_handlers(server: NATSServer) -> None:
    app = _app("empty_app", NATS_URL=server.url)
    NATS(app)
    try:
        result = app.test_cli_runner().invoke(args=["natsync", "worker"])
        assert result.exit_code == 1 and "no NATS handlers are declared" in result.output
    finally:
        _close(app)


def test_make_client_remembers_errors_and_calls_the_users_error_cb(server: NATSServer) -> None:
    seen: list[natsync.NatsError] = []
    reported = threading.Event()

    def user_cb(err: natsync.NatsError) -> None:
        seen.append(err)
        reported.set()

    client = _web.make_client(server.url, {"error_cb": user_cb}, drain_at_exit=False)
    try:

        def broken(msg: natsync.Msg) -> None:
            raise RuntimeError("callback broke")

        client.subscribe("err.x", cb=broken)
        client.publish("err.x", b"")
        assert reported.wait(5)
        assert "callback broke" in str(seen[0])
        body, code = _web.health(client)
        assert code == 200 and "callback broke" in body["last_error"]
    finally:
        client.close()


def test_exit_drain_sends_what_was_published(server: NATSServer, nc: natsync.Client) -> None:
    sub = nc.subscribe("exit.x")
    nc.flush()
    client = _web.make_client(server.url, {})
    for i in range(100):
        client.publish("exit.x", str(i))
    _web._drain_exit_clients()  # what atexit runs
    assert client.is_closed
    assert [int(sub.next_msg(timeout=5).data) for _ in range(100)] == list(range(100))
    untouched = _web.make_client(server.url, {})
    _web._drain_exit_clients()
    assert untouched.is_closed and untouched.client_id is None  # closed without connecting


def test_close_quietly_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Failing:
        is_closed = False
        is_connected = True
        closed = False

        def drain(self, timeout: float) -> None:
            raise natsync.TimeoutError("drain took too long")

        def close(self) -> None:
            self.closed = True

    failing = Failing()
    _web.close_quietly(failing, 0.1)  # type: ignore[arg-type]
    assert failing.closed and "drain took too long" in caplog.text


def test_worker_with_nats_down_starts_and_stops_without_drain(
    listener: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    port = listener.getsockname()[1]
    listener.close()
    reg = _web.HandlerRegistry()
    reg.subscribe("down.x")(lambda m: None)
    client = _web.make_client(f"nats://127.0.0.1:{port}", {"connect_timeout": 0.5}, drain_at_exit=False)
    worker = _web.Worker(client, list(reg), threads=2)
    caplog.set_level(logging.INFO, logger="natsync.worker")
    t, _, status = _run_worker(worker)
    worker.stop()
    t.join(15)
    assert status == [0] and client.is_closed
    assert "not reachable yet" in caplog.text and "closing without a drain" in caplog.text


def test_worker_second_signal_closes_at_once(server: NATSServer) -> None:
    reg = _web.HandlerRegistry()
    reg.subscribe("sig2.x")(lambda m: None)
    client = natsync.connect(server.url, lazy=True)
    worker = _web.Worker(client, list(reg))
    t, _, status = _run_worker(worker)
    worker._on_signal(signal.SIGTERM, None)
    assert worker.stopping
    worker._on_signal(signal.SIGTERM, None)
    t.join(15)
    assert status in ([0], [1]) and client.is_closed


def test_rolling_restart_of_workers_loses_no_request(
    server: NATSServer, nc: natsync.Client, tmp_path: Path
) -> None:
    """Two ``flask natsync worker`` processes share svc.greet (queue group); one is sent
    SIGTERM while requests keep coming: it drains, the other takes over, none fails."""
    env = {"FLASK_NATS_URL": server.url}
    args = [PYTHON, "-m", "flask", "--app", "app", "natsync", "worker", "--handler", "greet_service"]
    workers = [Proc(args, env=env, cwd=EXAMPLES / "flask_app", log=tmp_path / f"w{i}.log") for i in range(2)]
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    count_lock = threading.Lock()

    def ask() -> None:
        nonlocal answered
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if nc.request("svc.greet", f"r{i}".encode(), timeout=5).data != f"hello, r{i}".encode():
                    failures.append(f"r{i}: wrong answer")
                with count_lock:
                    answered += 1
            except natsync.NatsError as e:
                failures.append(f"r{i}: {e!r}")

    askers = [threading.Thread(target=ask, name=f"test-asker-{i}") for i in range(8)]
    try:
        for w in workers:
            assert w.wait_for_line("natsync worker: ready", 30), w.output
        for a in askers:
            a.start()
        assert wait_for(lambda: answered >= 200, 10)
        rc = workers[0].stop(signal.SIGTERM)
        before = answered
        assert wait_for(lambda: answered >= before + 200, 10)
    finally:
        stop.set()
        for a in askers:
            if a.is_alive():
                a.join(10)
        for w in workers:
            w.kill()
    assert not failures, failures[:5]
    assert rc == 0, workers[0].output
    assert "natsync worker: stopped" in workers[0].output and "Traceback" not in workers[0].output


def test_worker_drain_timeout_bounds_a_stuck_handler(
    server: NATSServer, nc: natsync.Client, caplog: pytest.LogCaptureFixture
) -> None:
    reg = _web.HandlerRegistry()
    started = threading.Event()
    release = threading.Event()

    @reg.subscribe("stuck.x")
    def stuck(msg: natsync.Msg) -> None:
        started.set()
        release.wait(30)

    worker = _web.Worker(natsync.connect(server.url, lazy=True), list(reg), threads=2, drain_timeout=0.5)
    t, _, status = _run_worker(worker)
    try:
        nc.publish("stuck.x", b"")
        assert started.wait(5)
        worker.stop()
        t.join(10)
        assert not t.is_alive() and status == [0]
        assert "1 handler(s) still running after the drain timeout" in caplog.text
    finally:
        release.set()
        t.join(10)


def test_each_process_makes_its_own_client(server: NATSServer, nc: natsync.Client) -> None:
    """A forked child gets a client of its own, made in the child; the parent's is untouched."""
    app = _app("fork_app", NATS_URL=server.url)
    ext = NATS(app)
    sub = nc.subscribe("fork.>")
    nc.flush()
    try:
        parent = ext.client
        parent.publish("fork.parent", b"1")
        parent.flush(5)
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            code = 1
            try:
                child = ext.client
                if child is not parent and app.extensions[EXTENSION_KEY].clients.current is child:
                    child.publish("fork.child", str(os.getpid()))
                    child.flush(5)
                    child.close()
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        got = {sub.next_msg(timeout=5).subject for _ in range(2)}
        assert got == {"fork.parent", "fork.child"}
        assert ext.client is parent and parent.is_connected
    finally:
        _close(app)


def test_checking_options_calls_no_callback(server: NATSServer) -> None:
    called: list[str] = []
    app = _app(
        "cb_app",
        NATS_URL=server.url,
        NATS_OPTIONS={"closed_cb": lambda: called.append("closed"), "error_cb": called.append},
    )
    NATS(app)
    _close(app)  # never used: nothing to close
    assert called == []
    with pytest.raises(TypeError, match="closed_cb"):
        NATS(_app(NATS_URL=server.url, NATS_OPTIONS={"closed_cb": 42}))

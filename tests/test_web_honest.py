"""Issue 18's honest edges: unsent messages are reported, web shutdown waits for a reconnect,
misspelt settings are named, errors are one line, public answers name no server.

Real nats-servers throughout; commands run as subprocesses, as an operator runs them.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from webkit import EXAMPLES, PYTHON, Proc, free_port, wait_for

import natsync
from natsync import _web
from natsync.testing import NATSServer

PROJECT = EXAMPLES / "django_project"
sys.path.insert(0, str(PROJECT))

import django  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core import checks  # noqa: E402

if not settings.configured:  # as tests/test_django.py does; whichever module runs first
    import shop_project.settings as _example

    _values = {k: getattr(_example, k) for k in dir(_example) if k.isupper()}
    _values["DATABASES"] = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
    settings.configure(**_values)
django.setup()


def _unsent_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "never sent" in r.getMessage()
    ]


# ------------------------------------------------------------------ core: unsent messages


def test_close_with_unsent_messages_logs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    srv = NATSServer().start()
    nc = natsync.connect(srv.url, max_reconnect_attempts=-1, reconnect_time_wait=30)
    try:
        nc.flush(timeout=5)
        srv.stop()
        assert wait_for(lambda: nc.is_reconnecting, 10)  # from now on publishes are buffered
        for _ in range(3):
            nc.publish("lost.x", b"0123456789")  # buffered while reconnecting
        with caplog.at_level(logging.WARNING, logger="natsync"):
            nc.close()
        warnings = _unsent_warnings(caplog)
        assert len(warnings) == 1, warnings
        assert "3 published message(s) (30 payload bytes)" in warnings[0]
    finally:
        nc.close()
        srv.stop()


def test_close_after_everything_was_sent_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with NATSServer() as srv:
        nc = natsync.connect(srv.url)
        for _ in range(3):
            nc.publish("sent.x", b"0123456789")
        with caplog.at_level(logging.WARNING, logger="natsync"):
            nc.close()
        assert _unsent_warnings(caplog) == []


def test_script_exiting_with_unsent_messages_says_so(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import natsync\n"
        f"nc = natsync.connect('nats://127.0.0.1:{free_port()}', retry_on_failed_connect=True,\n"
        "                     max_reconnect_attempts=-1, connect_timeout=0.5)\n"
        "for i in range(3):\n"
        "    nc.publish('lost.x', b'abcd')\n"
    )
    p = Proc([PYTHON, str(script)], log=tmp_path / "script.log")
    try:
        assert p.proc.wait(60) == 0
    finally:
        p.kill()
    p.stop()
    lines = [line for line in p.output.splitlines() if "never sent" in line]
    assert len(lines) == 1 and "3 published message(s) (12 payload bytes)" in lines[0], p.output


# ------------------------------------------------------------------ web: shutdown wait


@pytest.mark.parametrize("wait", [10.0, 0.0])
def test_web_shutdown_waits_for_a_reconnect(
    wait: float, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    srv = NATSServer(jetstream=True, store_dir=str(tmp_path / "js"))
    srv.start()
    clients = _web.ProcessClient(srv.url, {"reconnect_time_wait": 0.2}, shutdown_wait=wait)
    try:
        with natsync.connect(srv.url) as nc:
            nc.jetstream().add_stream(name="WEB", subjects=["web.>"])
        client = clients.get()
        client.flush(timeout=5)
        srv.stop()
        assert wait_for(lambda: client.is_reconnecting, 10)  # from now on publishes are buffered
        for i in range(5):
            client.publish("web.event", str(i).encode())
        restarted = threading.Timer(1.0, srv.start)
        restarted.start()
        with caplog.at_level(logging.INFO, logger="natsync"):
            clients.close(timeout=5.0)  # what a web process does at exit
        restarted.join()
        with natsync.connect(srv.url) as nc:
            stored = nc.jetstream().stream_info("WEB").state.messages
        if wait:
            assert stored == 5 and _unsent_warnings(caplog) == []
        else:  # not waiting: lost, and said so
            assert stored == 0
            assert "5 published message(s)" in _unsent_warnings(caplog)[0]
    finally:
        clients.close(timeout=1.0)
        srv.stop()


def test_shutdown_wait_is_checked() -> None:
    with pytest.raises(ValueError, match="shutdown wait"):
        _web.ProcessClient(None, {}, shutdown_wait=-1)


# ------------------------------------------------------------------ settings, checks


def _check_messages(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[checks.CheckMessage]:
    for var in [v for v in os.environ if v.startswith("NATSYNC_")]:
        monkeypatch.delenv(var)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return [m for m in checks.run_checks() if m.id and m.id.startswith("natsync.")]


def test_misspelt_environment_variable_gets_a_did_you_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    found = _check_messages(monkeypatch, NATSYNC_TOKNE="x")
    assert [m.id for m in found] == ["natsync.W001"]
    assert "NATSYNC_TOKNE" in found[0].msg and "did you mean 'NATSYNC_TOKEN'" in found[0].msg
    assert _check_messages(monkeypatch, NATSYNC_TOKEN="x", NATSYNC_SHUTDOWN_WAIT="2") == []


def test_bad_value_is_blamed_on_its_real_source(monkeypatch: pytest.MonkeyPatch) -> None:
    found = _check_messages(monkeypatch, NATSYNC_CONNECT_TIMEOUT="-1")
    assert [m.id for m in found] == ["natsync.E003"]
    assert found[0].msg.startswith("environment variable NATSYNC_CONNECT_TIMEOUT:"), found[0].msg


def test_unknown_settings_keys_get_a_did_you_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.test import override_settings

    with override_settings(NATSYNC={"servers": "nats://127.0.0.1:4222", "tokne": "x"}):
        found = _check_messages(monkeypatch)
    assert [m.id for m in found] == ["natsync.E001"] and "did you mean 'token'" in found[0].msg
    with override_settings(NATSYNC_OUTBOX={"leese": 3}):
        found = _check_messages(monkeypatch)
    assert [m.id for m in found] == ["natsync.E004"] and "did you mean 'lease'" in found[0].msg


def test_flask_warns_about_unknown_config_keys(caplog: pytest.LogCaptureFixture) -> None:
    from flask import Flask

    from natsync.flask import NATS

    app = Flask("honest")
    app.config.update(NATS_URL="nats://127.0.0.1:4222", NATS_TOKNE="x")
    with caplog.at_level(logging.WARNING, logger="natsync"):
        NATS(app)
    messages = [r.getMessage() for r in caplog.records]
    assert any("NATS_TOKNE" in m and "did you mean 'NATS_TOKEN'" in m for m in messages), messages


# ------------------------------------------------------------------ public answers


def test_unavailable_body_names_no_server() -> None:
    err = natsync.NoServersError(
        "could not connect to any server (nats://10.1.2.3:4222: refused; nats-2:4222)"
    )
    body = _web.unavailable_body(err)
    assert body["error"] == "NATS unavailable" and "NoServersError" in body["detail"]
    assert (
        "10.1.2.3" not in body["detail"] and "4222" not in body["detail"] and "nats-2" not in body["detail"]
    )
    assert "10.1.2.3:4222" in _web.unavailable_body(err, show_server=True)["detail"]


def test_health_view_while_down_names_no_server() -> None:
    from django.test import Client as DjangoClient
    from django.test import override_settings

    import natsync.django as nd

    port = free_port()
    with override_settings(NATSYNC={"servers": f"nats://127.0.0.1:{port}", "connect_timeout": 0.5}):
        try:
            response = DjangoClient().get("/health/nats")
            assert response.status_code == 503
            assert str(port) not in response.content.decode(), response.content
        finally:
            nd.reset_client()


# ------------------------------------------------------------------ worker commands


@pytest.fixture
def token_server() -> Iterator[NATSServer]:
    with NATSServer(token="right-token") as srv:
        yield srv


def test_worker_commands_fail_in_one_line(token_server: NATSServer, tmp_path: Path) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    runs = {
        "django bad token": (
            [PYTHON, "manage.py", "natsync_worker"],
            PROJECT,
            {"NATSYNC_SERVERS": token_server.url, "NATSYNC_TOKEN": "wrong"},
        ),
        "django no server": (
            [PYTHON, "manage.py", "natsync_worker"],
            PROJECT,
            {"NATSYNC_SERVERS": dead, "NATSYNC_RETRY_ON_FAILED_CONNECT": "false"},
        ),
        "flask bad token": (
            [PYTHON, "-m", "flask", "--app", "app", "natsync", "worker"],
            EXAMPLES / "flask_app",
            {"FLASK_NATS_URL": token_server.url, "FLASK_NATS_TOKEN": "wrong"},
        ),
        "flask no server": (
            [PYTHON, "-m", "flask", "--app", "app", "natsync", "worker"],
            EXAMPLES / "flask_app",
            {"FLASK_NATS_URL": dead, "FLASK_NATS_OPTIONS": '{"retry_on_failed_connect": false}'},
        ),
    }
    for name, (args, cwd, env) in runs.items():
        env = dict(env, DJANGO_SETTINGS_MODULE="shop_project.settings", SHOP_DB=str(tmp_path / "db.sqlite3"))
        p = Proc(args, env=env, cwd=cwd, log=tmp_path / f"{name.replace(' ', '_')}.log")
        try:
            assert p.proc.wait(60) == 1, (name, p.output)
        finally:
            p.kill()
        p.stop()
        assert "Traceback" not in p.output, (name, p.output)
        errors = [line for line in p.output.splitlines() if "cannot start" in line]
        assert len(errors) == 1, (name, p.output)
        what = "rejected the credentials" if "token" in name else "could not connect"
        assert what in errors[0], (name, errors)
        assert "wrong" not in p.output  # the secret is not printed


def test_misspelt_environment_variable_is_logged_when_the_client_is_made(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from django.test import override_settings

    import natsync.django as nd

    monkeypatch.setenv("NATSYNC_PASWORD", "x")
    with override_settings(NATSYNC={"servers": "nats://127.0.0.1:4222"}), caplog.at_level(logging.WARNING):
        try:
            nd.get_client()  # lazy: no connection is made
        finally:
            nd.reset_client()
    messages = [r.getMessage() for r in caplog.records]
    assert any("NATSYNC_PASWORD" in m and "did you mean 'NATSYNC_PASSWORD'" in m for m in messages), messages
    assert not any("'x'" in m for m in messages)  # the value (maybe a secret) is not logged

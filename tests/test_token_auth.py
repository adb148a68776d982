"""Token and user/password authentication against real nats-server processes, following
the flows of the NATS docs ("Authenticating with a Token") and API.md's resolver rules.

Every successful connect is followed by a real publish/subscribe round trip, and no
secret may show in ``repr()``, ``connected_url``, ``servers``, error messages, tracebacks
or the log.
"""

from __future__ import annotations

import logging
import socket
import threading
import traceback
from collections.abc import Iterator
from urllib.parse import quote

import pytest

import natsync
from natsync import AuthorizationError, NoServersError
from natsync.testing import NATSServer

TOKEN = "mytoken"
SPECIAL_TOKEN = "s3cr@t:/x"
PLUS_TOKEN = "p+q"
USER, PASSWORD = "alice", "pa55w0rd-secret"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def token_server() -> Iterator[NATSServer]:
    with NATSServer(token=TOKEN) as srv:
        yield srv


@pytest.fixture(scope="module")
def special_server() -> Iterator[NATSServer]:
    with NATSServer(token=SPECIAL_TOKEN) as srv:
        yield srv


@pytest.fixture(scope="module")
def plus_server() -> Iterator[NATSServer]:
    with NATSServer(token=PLUS_TOKEN) as srv:
        yield srv


@pytest.fixture(scope="module")
def user_server() -> Iterator[NATSServer]:
    with NATSServer(user=USER, password=PASSWORD) as srv:
        yield srv


def round_trip(nc: natsync.Client, subject: str = "auth.rt") -> None:
    sub = nc.subscribe(subject)
    nc.publish(subject, b"hello")
    msg = sub.next_msg(timeout=5)
    assert msg.data == b"hello"
    sub.unsubscribe()


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"secret {secret!r} leaked in {text!r}"
        assert quote(secret, safe="") not in text or quote(secret, safe="") == secret


def assert_client_hides(nc: natsync.Client, *secrets: str) -> None:
    assert nc.connected_url is not None
    for text in (repr(nc), str(nc), nc.connected_url, repr(nc.servers), repr(nc.discovered_servers)):
        assert_no_secret(text, *secrets)


def assert_error_hides(err: BaseException, *secrets: str) -> None:
    """No secret in the error, nor in any error chained to it (cause or context)."""
    seen: BaseException | None = err
    while seen is not None:
        text = "".join(traceback.format_exception_only(type(seen), seen))
        assert_no_secret(str(seen) + repr(seen) + text + repr(seen.args), *secrets)
        seen = seen.__cause__ or seen.__context__


def hostport(srv: NATSServer) -> str:
    return f"127.0.0.1:{srv.port}"


# --------------------------------------------------------------------------- the docs' flows


def test_token_option(token_server: NATSServer) -> None:
    with natsync.connect(token_server.url, token=TOKEN, name="API Token Example") as nc:
        round_trip(nc)
        assert nc.connected_url == token_server.url
        assert_client_hides(nc, TOKEN)


def test_nats_then_connect_with_token(token_server: NATSServer) -> None:
    nc = natsync.NATS()
    nc.connect(servers=[token_server.url], token=TOKEN)
    with nc:
        round_trip(nc)
        assert_client_hides(nc, TOKEN)


def test_token_in_url(token_server: NATSServer) -> None:
    with natsync.connect(f"nats://{TOKEN}@{hostport(token_server)}") as nc:
        round_trip(nc)
        assert nc.connected_url == f"nats://***@{hostport(token_server)}"
        assert nc.servers == [f"nats://***@{hostport(token_server)}"]
        assert_client_hides(nc, TOKEN)


def test_token_in_url_nats_then_connect(token_server: NATSServer) -> None:
    nc = natsync.NATS()
    nc.connect(servers=[f"nats://{TOKEN}@{hostport(token_server)}"])
    with nc:
        round_trip(nc)
        assert_client_hides(nc, TOKEN)


def test_token_in_schemeless_url(token_server: NATSServer) -> None:
    with natsync.connect(f"{TOKEN}@{hostport(token_server)}") as nc:
        round_trip(nc)
        assert nc.connected_url == f"nats://***@{hostport(token_server)}"
        assert_client_hides(nc, TOKEN)


def test_token_as_password_with_empty_user(token_server: NATSServer) -> None:
    """``nats://:TOKEN@host``: the docs' form, which natsync sends as a token."""
    with natsync.connect(f"nats://:{TOKEN}@{hostport(token_server)}") as nc:
        round_trip(nc)
        assert nc.connected_url == f"nats://***@{hostport(token_server)}"
        assert_client_hides(nc, TOKEN)


def test_token_with_special_characters_percent_encoded(special_server: NATSServer) -> None:
    url = f"nats://{quote(SPECIAL_TOKEN, safe='')}@{hostport(special_server)}"
    with natsync.connect(url) as nc:
        round_trip(nc)
        assert nc.connected_url == f"nats://***@{hostport(special_server)}"
        assert_client_hides(nc, SPECIAL_TOKEN, "s3cr")
    with natsync.connect(f"nats://:{quote(SPECIAL_TOKEN, safe='')}@{hostport(special_server)}") as nc:
        round_trip(nc)
    with natsync.connect(special_server.url, token=SPECIAL_TOKEN) as nc:
        round_trip(nc)


def test_plus_in_url_token_is_not_a_space(plus_server: NATSServer) -> None:
    """User info is decoded with ``unquote``, not ``unquote_plus``."""
    with natsync.connect(f"nats://{PLUS_TOKEN}@{hostport(plus_server)}") as nc:
        round_trip(nc)


def test_url_token_beats_wrong_token_option(token_server: NATSServer) -> None:
    with natsync.connect(f"nats://{TOKEN}@{hostport(token_server)}", token="wrong-token") as nc:
        round_trip(nc)
        assert_client_hides(nc, TOKEN, "wrong-token")


def test_url_token_beats_user_password_options(token_server: NATSServer) -> None:
    with natsync.connect(f"nats://{TOKEN}@{hostport(token_server)}", user="bob", password="nope") as nc:
        round_trip(nc)


def test_callable_token(token_server: NATSServer) -> None:
    calls: list[str] = []

    def token() -> str:
        calls.append(threading.current_thread().name)
        return TOKEN

    with natsync.connect(token_server.url, token=token) as nc:
        assert len(calls) == 1
        round_trip(nc)
        assert_client_hides(nc, TOKEN)
    assert len(calls) == 1


def test_callable_token_called_again_on_reconnect_rotating() -> None:
    """A rotating token: the callable is asked again on reconnect, and its new value
    is accepted by a server now requiring the new token."""
    current = ["tok-one"]
    calls: list[str] = []
    reconnected = threading.Event()

    def token() -> str:
        calls.append(current[0])
        return current[0]

    first = NATSServer(token="tok-one").start()
    port = first.port
    try:
        with natsync.connect(
            first.url,
            token=token,
            reconnect_time_wait=0.05,
            max_reconnect_attempts=-1,
            reconnected_cb=reconnected.set,
        ) as nc:
            round_trip(nc)
            assert calls == ["tok-one"]
            first.stop()
            current[0] = "tok-two"
            with NATSServer(token="tok-two", port=port) as second:
                assert reconnected.wait(20)
                round_trip(nc)
                assert calls[-1] == "tok-two" and calls[0] == "tok-one"
                assert nc.stats.reconnects == 1
                assert nc.connected_url == second.url
                assert_client_hides(nc, "tok-one", "tok-two")
    finally:
        first.stop()


@pytest.mark.parametrize(
    "url_template",
    [
        "nats://{token}@127.0.0.1:{port}",
        "nats://:{token}@127.0.0.1:{port}",
        "{token}@127.0.0.1:{port}",
    ],
)
def test_callable_token_with_url_token_is_value_error(listener: socket.socket, url_template: str) -> None:
    url = url_template.format(token="urltoken-secret", port=listener.getsockname()[1])
    called: list[int] = []
    with pytest.raises(ValueError) as info:
        natsync.connect(url, token=lambda: called.append(1) or "x")  # type: ignore[func-returns-value]
    assert_error_hides(info.value, "urltoken-secret")
    with pytest.raises(ValueError):
        natsync.NATS().connect(servers=["nats://127.0.0.1:1", url], token=lambda: "x")
    assert not called
    listener.settimeout(0.2)
    with pytest.raises(TimeoutError):
        conn, _ = listener.accept()
        conn.close()


def test_callable_token_with_empty_url_token_is_fine(token_server: NATSServer) -> None:
    """An empty token counts as none: ``nats://@host`` plus a callable is allowed."""
    with natsync.connect(f"nats://@{hostport(token_server)}", token=lambda: TOKEN) as nc:
        round_trip(nc)


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("how", "secret"),
    [
        ("wrong-option", "wrong-secret-1"),
        ("wrong-url", "wrong-secret-2"),
        ("wrong-url-colon", "wrong-secret-3"),
        ("wrong-callable", "wrong-secret-4"),
        ("missing", TOKEN),
        ("user-pass-not-token", TOKEN),
    ],
)
def test_wrong_or_missing_token_is_authorization_error(
    token_server: NATSServer, caplog: pytest.LogCaptureFixture, how: str, secret: str
) -> None:
    hp = hostport(token_server)
    kwargs: dict[str, object] = {"connect_timeout": 5}
    if how == "wrong-option":
        args: tuple[str, ...] = (token_server.url,)
        kwargs["token"] = secret
    elif how == "wrong-url":
        args = (f"nats://{secret}@{hp}",)
    elif how == "wrong-url-colon":
        args = (f"nats://:{secret}@{hp}",)
    elif how == "wrong-callable":
        args = (token_server.url,)
        kwargs["token"] = lambda: secret
    elif how == "missing":
        args = (token_server.url,)
    else:  # API.md: user/pass never satisfy token auth
        args = (token_server.url,)
        kwargs.update(user="someone", password=TOKEN)
    caplog.set_level(logging.DEBUG, logger="natsync")
    with pytest.raises(AuthorizationError) as info:
        natsync.connect(*args, **kwargs)  # type: ignore[arg-type]
    err = info.value
    assert isinstance(err, natsync.NatsError)
    assert hp in str(err)  # names the (redacted) server
    assert_error_hides(err, secret)
    assert_no_secret(caplog.text, secret)


def test_authorization_error_with_nats_then_connect(token_server: NATSServer) -> None:
    nc = natsync.NATS()
    with pytest.raises(AuthorizationError) as info:
        nc.connect(servers=[token_server.url], token="nope-secret")
    assert_error_hides(info.value, "nope-secret")
    assert not nc.is_connected
    with pytest.raises(natsync.ConnectionClosedError) as closed:
        nc.publish("x", b"y")
    assert_error_hides(closed.value, "nope-secret")
    nc.close()


# --------------------------------------------------------------------------- user / password


def test_user_password_options(user_server: NATSServer) -> None:
    with natsync.connect(user_server.url, user=USER, password=PASSWORD) as nc:
        round_trip(nc)
        assert nc.connected_url == user_server.url
        assert_client_hides(nc, PASSWORD)


def test_user_password_nats_then_connect(user_server: NATSServer) -> None:
    nc = natsync.NATS()
    nc.connect(servers=[user_server.url], user=USER, password=PASSWORD)
    with nc:
        round_trip(nc)


def test_user_password_in_url(user_server: NATSServer) -> None:
    url = f"nats://{USER}:{quote(PASSWORD, safe='')}@{hostport(user_server)}"
    with natsync.connect(url) as nc:
        round_trip(nc)
        assert nc.connected_url == f"nats://{USER}:***@{hostport(user_server)}"
        assert nc.servers == [f"nats://{USER}:***@{hostport(user_server)}"]
        assert_client_hides(nc, PASSWORD)
    with natsync.connect(f"{USER}:{PASSWORD}@{hostport(user_server)}") as nc:
        round_trip(nc)


def test_url_user_password_beat_options(user_server: NATSServer) -> None:
    url = f"nats://{USER}:{PASSWORD}@{hostport(user_server)}"
    with natsync.connect(url, user="mallory", password="wrong") as nc:
        round_trip(nc)


@pytest.mark.parametrize(
    "how", ["wrong-password-option", "wrong-password-url", "missing-password", "no-credentials", "token"]
)
def test_wrong_password_is_authorization_error(
    user_server: NATSServer, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="natsync")
    secret = "not-the-pa55word"
    with pytest.raises(AuthorizationError) as info:
        if how == "wrong-password-option":
            natsync.connect(user_server.url, user=USER, password=secret, connect_timeout=5)
        elif how == "wrong-password-url":
            natsync.connect(f"nats://{USER}:{secret}@{hostport(user_server)}", connect_timeout=5)
        elif how == "missing-password":
            natsync.connect(user_server.url, user=USER, connect_timeout=5)
        elif how == "no-credentials":
            natsync.connect(user_server.url, connect_timeout=5)
        else:
            natsync.connect(user_server.url, token=secret, connect_timeout=5)
    assert_error_hides(info.value, secret, PASSWORD)
    assert_no_secret(caplog.text, secret, PASSWORD)


# --------------------------------------------------------------------------- secrets elsewhere


def test_no_secret_in_no_servers_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(NoServersError) as info:
        natsync.connect(
            servers=[f"nats://{TOKEN}@127.0.0.1:{port}", f"nats://{USER}:{PASSWORD}@127.0.0.1:{port + 0}"],
            token="opt-token-secret",
            connect_timeout=1,
        )
    assert_error_hides(info.value, TOKEN, PASSWORD, "opt-token-secret")


def test_no_secret_after_close(token_server: NATSServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="natsync")
    nc = natsync.connect(f"nats://{TOKEN}@{hostport(token_server)}", name="closing")
    round_trip(nc)
    text_before = repr(nc)
    nc.close()
    assert_no_secret(text_before + repr(nc) + repr(nc.servers), TOKEN)
    with pytest.raises(natsync.ConnectionClosedError) as info:
        nc.flush()
    assert_error_hides(info.value, TOKEN)
    assert_no_secret(caplog.text, TOKEN)

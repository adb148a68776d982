"""Tests of natsync._auth: the credential resolver of API.md, rule by rule (pure, no sockets)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from natsync._auth import Credentials, check_credentials, resolve_connect_auth
from natsync._servers import Server, ServerPool, parse_servers, parse_url


def _server(url: str, learned_from: str | None = None) -> Server:
    """The server for *url*; with *learned_from*, *url* is a ``host:port`` discovered from INFO
    while connected to the explicit URL *learned_from*."""
    if learned_from is None:
        return parse_url(url)
    pool = ServerPool(parse_servers(learned_from), randomize=False)
    pool.current = pool.first_pass()[0]
    (server,) = pool.add_discovered([url], scheme="nats", learned_from=pool.current)
    return server


@dataclass
class Row:
    id: str
    url: str
    options: dict[str, Any]
    expected: dict[str, str]
    learned_from: str | None = None
    rule: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _rotating() -> str:
    return "fromcallable"


# Every rule of API.md "Which credentials go into CONNECT": (server URL, options) -> CONNECT auth fields.
RESOLVER_TABLE = [
    # Rule 2: options, for a URL without user info.
    Row("no-credentials", "nats://h:4222", {}, {}, rule="2"),
    Row("token-option", "nats://h:4222", {"token": "mytoken"}, {"auth_token": "mytoken"}, rule="2"),
    Row("user-password-options", "nats://h", {"user": "bob", "password": "pw"}, {"user": "bob", "pass": "pw"},
        rule="2"),
    Row("user-option-only", "nats://h", {"user": "bob"}, {"user": "bob"}, rule="2: what is set is sent"),
    Row("password-option-only", "nats://h", {"password": "pw"}, {"pass": "pw"}, rule="2: set is sent"),
    Row("token-and-user-password-options", "nats://h", {"token": "t", "user": "bob", "password": "pw"},
        {"auth_token": "t", "user": "bob", "pass": "pw"}, rule="2: all sent"),
    Row("callable-token-option", "nats://h", {"token": _rotating}, {"auth_token": "fromcallable"}, rule="2"),
    Row("callable-token-and-user-password", "nats://h", {"token": _rotating, "user": "u", "password": "p"},
        {"auth_token": "fromcallable", "user": "u", "pass": "p"}, rule="2"),
    Row("empty-token-option-is-none", "nats://h", {"token": ""}, {}, rule="4: empty token counts as none"),
    Row("empty-callable-token-is-none", "nats://h", {"token": lambda: ""}, {}, rule="empty never sent"),
    Row("empty-user-password-not-sent", "nats://h", {"user": "", "password": ""}, {}, rule="empty"),
    # Rule 1: the URL's user info, and only it.
    Row("url-token", "nats://mytoken@127.0.0.1:4222", {}, {"auth_token": "mytoken"}, rule="1"),
    Row("url-token-scheme-less", "mytoken@localhost", {}, {"auth_token": "mytoken"}, rule="1"),
    Row("url-colon-token", "nats://:mytoken@127.0.0.1:4222", {}, {"auth_token": "mytoken"}, rule="1"),
    Row("url-user-pass", "nats://bob:pw@h", {}, {"user": "bob", "pass": "pw"}, rule="1"),
    Row("url-user-empty-pass", "nats://bob:@h", {}, {"user": "bob"}, rule="1, empty never sent"),
    Row("url-token-percent-encoded", "nats://my%40t%3Ao%2Fk%2B@h", {}, {"auth_token": "my@t:o/k+"},
        rule="1: unquote"),
    Row("url-token-plus-stays-plus", "nats://a+b@h", {}, {"auth_token": "a+b"}, rule="1: not unquote_plus"),
    Row("url-token-raw-at", "nats://my@tok@h", {}, {"auth_token": "my@tok"}, rule="1: last '@'"),
    Row("url-user-pass-percent-encoded", "nats://b%3Ab:p%40ss@h", {}, {"user": "b:b", "pass": "p@ss"}),
    Row("url-token-beats-wrong-token-option", "nats://good@h", {"token": "bad"}, {"auth_token": "good"},
        rule="1: URL wins"),
    Row("url-colon-token-beats-token-option", "nats://:good@h", {"token": "bad"}, {"auth_token": "good"},
        rule="1"),
    Row("url-token-user-password-options-not-sent", "nats://good@h", {"user": "u", "password": "p"},
        {"auth_token": "good"}, rule="1"),
    Row("url-user-pass-token-option-not-sent", "nats://bob:pw@h", {"token": "opt"},
        {"user": "bob", "pass": "pw"}, rule="1"),
    Row("url-user-pass-beats-user-password-options", "nats://bob:pw@h", {"user": "eve", "password": "x"},
        {"user": "bob", "pass": "pw"}, rule="1"),
    Row("url-user-pass-callable-token-still-sent", "nats://bob:pw@h", {"token": _rotating},
        {"user": "bob", "pass": "pw", "auth_token": "fromcallable"}, rule="1: as nats.go TokenHandler"),
    Row("url-empty-userinfo-is-none", "nats://@h", {"token": "opt"}, {"auth_token": "opt"},
        rule="'@h' carries nothing"),
    # Rule 3: discovered servers.
    Row("implicit-inherits-url-token", "b:4222", {}, {"auth_token": "tok"}, learned_from="nats://tok@a:4222",
        rule="3"),
    Row("implicit-inherits-colon-token", "b:4222", {}, {"auth_token": "tok"}, learned_from="nats://:tok@a:4222",
        rule="3"),
    Row("implicit-inherits-user-pass", "b:4222", {}, {"user": "u", "pass": "p"}, learned_from="nats://u:p@a",
        rule="3"),
    Row("implicit-same-hostport-as-explicit", "127.0.0.1:4223", {}, {"auth_token": "tok"},
        learned_from="tok@127.0.0.1:4222", rule="3"),
    Row("implicit-token-option-beats-inherited", "b:4222", {"token": "opt"}, {"auth_token": "opt"},
        learned_from="nats://tok@a", rule="3: options first"),
    Row("implicit-user-option-beats-inherited", "b:4222", {"user": "eve"}, {"user": "eve"},
        learned_from="nats://tok@a", rule="3: options first"),
    Row("implicit-callable-token-beats-inherited", "b:4222", {"token": _rotating},
        {"auth_token": "fromcallable"}, learned_from="nats://u:p@a", rule="3"),
    Row("implicit-empty-token-option-uses-inherited", "b:4222", {"token": ""}, {"auth_token": "tok"},
        learned_from="nats://tok@a", rule="3+4: empty token is no credential"),
    Row("implicit-nothing-to-inherit", "b:4222", {}, {}, learned_from="nats://a", rule="3"),
    Row("implicit-nothing-to-inherit-uses-options", "b:4222", {"user": "u", "password": "p"},
        {"user": "u", "pass": "p"}, learned_from="nats://a", rule="3"),
    # NKEY/JWT seam: applies with and without URL user info.
    Row("extra-with-options", "nats://h", {"token": "t"}, {"auth_token": "t", "nkey": "UA", "sig": "sig(n1)"},
        rule="2 + extra", extra={"nkey": "UA"}),
    Row("extra-with-url-token", "nats://tok@h", {}, {"auth_token": "tok", "nkey": "UA", "sig": "sig(n1)"},
        rule="1 + extra", extra={"nkey": "UA"}),
    Row("extra-cannot-override-resolver", "nats://tok@h", {}, {"auth_token": "tok", "sig": "sig(n1)"},
        rule="extra", extra={"auth_token": "other"}),
    Row("extra-only-means-no-inheritance", "b:1", {}, {"sig": "sig(n1)", "jwt": "J"}, learned_from="tok@a:1",
        rule="3: NKEY/JWT are credentials", extra={"jwt": "J", "empty": ""}),
]


@pytest.mark.parametrize("row", RESOLVER_TABLE, ids=[r.id for r in RESOLVER_TABLE])
def test_resolver_table(row: Row) -> None:
    server = _server(row.url, row.learned_from)
    options = dict(row.options)
    if row.extra:
        fixed = row.extra

        def extra(nonce: str | None) -> dict[str, str]:
            return {"sig": f"sig({nonce})", **fixed}

        options["extra"] = extra
    creds = Credentials(**options)
    check_credentials(creds, [server])
    assert resolve_connect_auth(server, creds, nonce="n1") == row.expected
    # Deterministic: a second attempt resolves the same (the callables here return constants).
    assert resolve_connect_auth(server, creds, nonce="n1") == row.expected


def test_callable_token_called_on_every_resolve() -> None:
    counter = itertools.count(1)
    calls: list[str] = []

    def rotating() -> str:
        value = f"tok-{next(counter)}"
        calls.append(value)
        return value

    creds = Credentials(token=rotating)
    plain = parse_url("nats://h")
    with_user = parse_url("nats://u:p@h")
    implicit = _server("b:1", learned_from="nats://u:p@a:1")
    results = [resolve_connect_auth(s, creds) for s in (plain, plain, with_user, implicit)]
    assert calls == ["tok-1", "tok-2", "tok-3", "tok-4"]
    assert [r["auth_token"] for r in results] == calls
    assert results[2] == {"user": "u", "pass": "p", "auth_token": "tok-3"}


def test_callable_token_not_called_when_it_does_not_apply() -> None:
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        return "x"

    check_credentials(Credentials(token=token), [parse_url("nats://h")])
    assert calls == []
    with pytest.raises(ValueError, match="already carries a token"):
        resolve_connect_auth(parse_url("nats://urltok@h"), Credentials(token=token))
    assert calls == []


def test_extra_receives_nonce() -> None:
    nonces: list[str | None] = []

    def extra(nonce: str | None) -> dict[str, str]:
        nonces.append(nonce)
        return {}

    creds = Credentials(extra=extra)
    resolve_connect_auth(parse_url("h"), creds, nonce="abc")
    resolve_connect_auth(parse_url("tok@h"), creds)
    assert nonces == ["abc", None]


# ---------------------------------------------------------------------------- rule 4 and type checks

CONFLICT_URLS = [
    ["nats://s3cr3t@h:4222"],
    ["nats://:s3cr3t@h:4222"],
    ["s3cr3t@localhost"],
    ["nats://a:1", "nats://s3cr3t@b:1"],
]


@pytest.mark.parametrize("urls", CONFLICT_URLS, ids=[",".join(u) for u in CONFLICT_URLS])
def test_callable_token_with_url_token_is_rejected(urls: list[str]) -> None:
    servers = parse_servers(urls)
    with pytest.raises(ValueError) as info:
        check_credentials(Credentials(token=lambda: "other"), servers)
    message = str(info.value)
    assert "s3cr3t" not in message
    assert "'token'" in message
    assert "already carries a token" in message
    assert "remove the token from the URL" in message
    assert "***@" in message
    # The resolver refuses too (nats.go: ErrTokenAlreadySet at CONNECT), without leaking.
    with pytest.raises(ValueError) as info2:
        resolve_connect_auth(servers[-1], Credentials(token=lambda: "other"))
    assert "s3cr3t" not in str(info2.value)


# (URLs, options) that are allowed
ALLOWED: list[tuple[list[str], dict[str, Any]]] = [
    (["nats://tok@h"], {"token": "str-token"}),
    (["nats://u:p@h"], {"token": lambda: "x"}),
    (["nats://h"], {"token": lambda: "x"}),
    (["nats://@h", "nats://:@g"], {"token": lambda: "x"}),
    (["nats://h"], {"user": "u"}),
    (["nats://h"], {"password": "p"}),
    (["nats://h"], {}),
]


@pytest.mark.parametrize(("urls", "options"), ALLOWED, ids=[f"{u}-{sorted(o)}" for u, o in ALLOWED])
def test_check_credentials_allows(urls: list[str], options: dict[str, Any]) -> None:
    check_credentials(Credentials(**options), parse_servers(urls))


TYPE_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"token": 123}, "'token'"),
    ({"token": b"bytes"}, "'token'"),
    ({"user": 1}, "'user'"),
    ({"user": b"bob"}, "'user'"),
    ({"password": 1.5}, "'password'"),
    ({"password": ["p"]}, "'password'"),
    ({"extra": "nkey"}, "'extra'"),
]


@pytest.mark.parametrize(("options", "name"), TYPE_ERRORS, ids=[repr(o) for o, _ in TYPE_ERRORS])
def test_check_credentials_type_errors(options: dict[str, Any], name: str) -> None:
    with pytest.raises(TypeError, match=name):
        check_credentials(Credentials(**options), [parse_url("nats://h")])


def test_callable_token_returning_non_str() -> None:
    with pytest.raises(TypeError, match="'token' callable must return a str"):
        resolve_connect_auth(parse_url("h"), Credentials(token=lambda: 42))  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("bad", [["x"], {1: "x"}, {"k": 1}], ids=["list", "int-key", "int-value"])
def test_extra_returning_bad_type(bad: object) -> None:
    creds = Credentials(extra=lambda nonce: bad)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="'extra'"):
        resolve_connect_auth(parse_url("h"), creds)


# ---------------------------------------------------------------------------- Credentials

HAS_ANY: list[tuple[dict[str, Any], bool]] = [
    ({}, False),
    ({"token": ""}, False),
    ({"user": "", "password": ""}, False),
    ({"token": "t"}, True),
    ({"token": lambda: ""}, True),
    ({"user": "u"}, True),
    ({"password": "p"}, True),
    ({"extra": lambda nonce: {}}, True),
]


def _options_id(options: dict[str, Any]) -> str:
    # stable across processes (pytest-xdist compares ids): no function addresses
    parts = (f"{k}={'callable' if callable(v) else repr(v)}" for k, v in sorted(options.items()))
    return ",".join(parts) or "none"


@pytest.mark.parametrize(("options", "expected"), HAS_ANY, ids=[_options_id(o) for o, _ in HAS_ANY])
def test_has_any(options: dict[str, Any], expected: bool) -> None:
    assert Credentials(**options).has_any is expected


def test_credentials_repr_has_no_secret() -> None:
    creds = Credentials(token="s3cr3t-token", user="bob", password="s3cr3t-pw")
    text = repr(creds)
    assert text == "Credentials(token=<set>, user='bob', password=<set>, extra=None)"
    assert "s3cr3t" not in str(creds)
    assert repr(Credentials(token=lambda: "x")).startswith("Credentials(token=<callable>")
    assert repr(Credentials()) == "Credentials(token=None, user=None, password=None, extra=None)"


# ---------------------------------------------------------------------------- property

# Text without NUL; UTF-8 encodable (a lone surrogate cannot be percent-encoded at all).
tokens = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1)


@given(token=tokens)
def test_percent_encoded_url_token_round_trips(token: str) -> None:
    url = f"nats://{quote(token, safe='')}@127.0.0.1:4222"
    server = parse_url(url)
    assert server.url_token == token
    assert resolve_connect_auth(server, Credentials()) == {"auth_token": token}
    assert resolve_connect_auth(server, Credentials(token="other")) == {"auth_token": token}
    reference = parse_url("nats://reference@127.0.0.1:4222")
    # The outputs do not depend on the token at all, so they cannot leak it.
    assert server.redacted() == "nats://***@127.0.0.1:4222"
    assert str(server) == str(reference)
    assert repr(server) == repr(reference)
    for text, reference_text in ((server.redacted(), reference.redacted()), (repr(server), repr(reference))):
        assert token not in text or token in reference_text
    assert repr(Credentials(token=token)) == repr(Credentials(token="reference"))


@given(user=tokens, password=tokens)
def test_percent_encoded_user_password_round_trip(user: str, password: str) -> None:
    server = parse_url(f"tls://{quote(user, safe='')}:{quote(password, safe='')}@[::1]:4222")
    assert resolve_connect_auth(server, Credentials()) == {"user": user, "pass": password}
    assert server.redacted() == f"tls://{quote(user, safe='')}:***@[::1]:4222"


@given(secret=tokens)
def test_check_credentials_message_never_has_the_token(secret: str) -> None:
    messages = []
    for url in (f"nats://{quote(secret, safe='')}@h:1", "nats://reference@h:1"):
        with pytest.raises(ValueError) as info:
            check_credentials(Credentials(token=lambda: "x"), parse_servers(url))
        messages.append(str(info.value))
    assert messages[0] == messages[1]  # independent of the secret

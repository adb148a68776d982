"""Tests of natsync._servers: URL parsing, redaction and the server pool (pure, no sockets)."""

from __future__ import annotations

import random

import pytest

from natsync._servers import (
    DEFAULT_PORT,
    DEFAULT_URL,
    Server,
    ServerPool,
    parse_servers,
    parse_url,
    redact_url,
)

# ---------------------------------------------------------------------------- parse_url

# (url, scheme, host, port, username, password)
PARSE_CASES = [
    ("nats://127.0.0.1:4222", "nats", "127.0.0.1", 4222, None, None),
    ("nats://demo.nats.io:4443", "nats", "demo.nats.io", 4443, None, None),
    ("tls://demo.nats.io:4443", "tls", "demo.nats.io", 4443, None, None),
    ("tls://demo.nats.io", "tls", "demo.nats.io", 4222, None, None),
    ("NATS://Example.COM:1", "nats", "example.com", 1, None, None),
    ("nats://localhost", "nats", "localhost", 4222, None, None),
    ("nats://localhost/", "nats", "localhost", 4222, None, None),
    ("localhost", "nats", "localhost", 4222, None, None),
    ("localhost:5222", "nats", "localhost", 5222, None, None),
    ("  nats://localhost:4222 \n", "nats", "localhost", 4222, None, None),
    ("10.0.0.1:65535", "nats", "10.0.0.1", 65535, None, None),
    ("[::1]:4222", "nats", "::1", 4222, None, None),
    ("[::1]", "nats", "::1", 4222, None, None),
    ("nats://[::1]:5000", "nats", "::1", 5000, None, None),
    ("tls://[2001:DB8:0:0::1]", "tls", "2001:db8::1", 4222, None, None),
    ("nats://[fe80::1%25eth0]:4222", "nats", "fe80::1%eth0", 4222, None, None),
    ("mytoken@localhost", "nats", "localhost", 4222, "mytoken", None),
    ("mytoken@localhost:4333", "nats", "localhost", 4333, "mytoken", None),
    ("nats://mytoken@127.0.0.1:4222", "nats", "127.0.0.1", 4222, "mytoken", None),
    ("nats://mytoken@127.0.0.1", "nats", "127.0.0.1", 4222, "mytoken", None),
    ("nats://:tok@127.0.0.1:4222", "nats", "127.0.0.1", 4222, "", "tok"),
    ("nats://u:p@h", "nats", "h", 4222, "u", "p"),
    ("tls://u:p@h:7422", "tls", "h", 7422, "u", "p"),
    ("u:p@[::1]:4222", "nats", "::1", 4222, "u", "p"),
    ("tok@[::1]", "nats", "::1", 4222, "tok", None),
    ("nats://tok@[::1]:4222", "nats", "::1", 4222, "tok", None),
    ("nats://user:@h", "nats", "h", 4222, "user", ""),
    ("nats://my%40t%3Ao%2Fk@h", "nats", "h", 4222, "my@t:o/k", None),
    ("nats://my@tok@h:4222", "nats", "h", 4222, "my@tok", None),
    ("nats://a+b%20c@h", "nats", "h", 4222, "a+b c", None),
    ("nats://us%3Aer:pa%3Ass:word@h", "nats", "h", 4222, "us:er", "pa:ss:word"),
    ("nats://:p%40ss@h", "nats", "h", 4222, "", "p@ss"),
    ("nats://%E2%82%AC@h", "nats", "h", 4222, "\u20ac", None),
    ("nats://@h:4222", "nats", "h", 4222, None, None),
    ("nats://:@h:4222", "nats", "h", 4222, None, None),
]


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "username", "password"),
    PARSE_CASES,
    ids=[c[0].strip() for c in PARSE_CASES],
)
def test_parse_url(
    url: str, scheme: str, host: str, port: int, username: str | None, password: str | None
) -> None:
    s = parse_url(url)
    assert (s.scheme, s.host, s.port, s.username, s.password) == (scheme, host, port, username, password)
    assert s.implicit is False
    assert s.reconnects == 0
    assert s.did_connect is False
    assert s.tls_required is (scheme == "tls")


def test_defaults() -> None:
    assert DEFAULT_URL == "nats://127.0.0.1:4222"
    assert DEFAULT_PORT == 4222
    s = parse_url(DEFAULT_URL)
    assert (s.scheme, s.host, s.port) == ("nats", "127.0.0.1", 4222)


# (url, secret that must not leak or None, words the message must contain)
REJECT_CASES = [
    ("ftp://localhost:21", None, "scheme 'ftp'"),
    ("http://s3cr3t@localhost", "s3cr3t", "scheme 'http'"),
    ("ws://localhost:8080", None, "scheme 'ws'"),
    ("wss://u:secret@localhost", "secret", "scheme 'wss'"),
    ("nats://", None, "host is empty"),
    ("", None, "URL is empty"),
    ("   ", None, "URL is empty"),
    ("nats://supersecret@", "supersecret", "host is empty"),
    ("nats://:4222", None, "host is empty"),
    ("supersecret@:4222", "supersecret", "host is empty"),
    ("nats://localhost:0", None, "out of range"),
    ("nats://u:supersecret@localhost:70000", "supersecret", "out of range"),
    ("nats://localhost:abc", None, "'abc'"),
    ("nats://localhost:-1", None, "'-1'"),
    ("nats://localhost:\u0664\u0662", None, "expected a number"),
    ("nats://localhost:4222/path", None, "path"),
    ("nats://supersecret@localhost:4222/x", "supersecret", "path"),
    ("nats://localhost:4222?token=supersecret", "supersecret", "query"),
    ("nats://localhost#frag", None, "fragment"),
    ("nats://super/secret@localhost", "secret", "%2F"),
    ("::1", None, "brackets"),
    ("nats://::1:4222", None, "brackets"),
    ("nats://[::1", None, "']'"),
    ("nats://[::1]x", None, "after the IPv6"),
    ("nats://[not-v6]:4222", None, "not an IPv6"),
    ("nats://[1.2.3.4]:4222", None, "not an IPv6"),
    ("nats://ho st:4222", None, "' '"),
    ("nats://a%20b", None, "'%'"),
]


@pytest.mark.parametrize(
    ("url", "secret", "words"), REJECT_CASES, ids=[c[0] or "<empty>" for c in REJECT_CASES]
)
def test_parse_url_rejects(url: str, secret: str | None, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_url(url)
    message = str(info.value)
    assert words in message
    assert "accepted forms are" in message
    assert "nats://host:port" in message
    if secret is not None:
        assert secret not in message
        assert "***" in message


def test_parse_url_type_error() -> None:
    with pytest.raises(TypeError, match="must be a str"):
        parse_url(b"nats://localhost")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- properties


# (url, url_token, url_user, url_password, has_userinfo)
CREDENTIAL_PROPERTY_CASES = [
    ("nats://h", None, None, None, False),
    ("nats://tok@h", "tok", None, None, True),
    ("nats://:tok@h", "tok", None, None, True),
    ("nats://u:p@h", None, "u", "p", True),
    ("nats://u:@h", None, "u", None, True),
    ("nats://:@h", None, None, None, False),
    ("nats://@h", None, None, None, False),
]


@pytest.mark.parametrize(
    ("url", "token", "user", "password", "has_userinfo"),
    CREDENTIAL_PROPERTY_CASES,
    ids=[c[0] for c in CREDENTIAL_PROPERTY_CASES],
)
def test_credential_properties(
    url: str, token: str | None, user: str | None, password: str | None, has_userinfo: bool
) -> None:
    s = parse_url(url)
    assert (s.url_token, s.url_user, s.url_password, s.has_userinfo) == (token, user, password, has_userinfo)


def test_url_properties_of_constructed_empty_userinfo() -> None:
    # A Server built directly (not parsed) with empty user info still carries no credential.
    assert Server("nats", "h", 4222, username="").url_token is None
    assert Server("nats", "h", 4222, username="", password="").url_token is None
    assert Server("nats", "h", 4222, username="", password="").has_userinfo is True


@pytest.mark.parametrize(
    ("url", "hostport"),
    [
        ("nats://h", "h:4222"),
        ("[::1]", "[::1]:4222"),
        ("tok@[::1]:5", "[::1]:5"),
        ("1.2.3.4:9", "1.2.3.4:9"),
    ],
)
def test_hostport(url: str, hostport: str) -> None:
    assert parse_url(url).hostport == hostport


# ---------------------------------------------------------------------------- redaction

# (url, redacted, secret)
REDACT_CASES = [
    ("nats://h:4222", "nats://h:4222", None),
    ("h", "nats://h:4222", None),
    ("mytoken@localhost", "nats://***@localhost:4222", "mytoken"),
    ("nats://mytoken@127.0.0.1:4222", "nats://***@127.0.0.1:4222", "mytoken"),
    ("nats://:mytoken@127.0.0.1:4222", "nats://***@127.0.0.1:4222", "mytoken"),
    ("nats://bob:s3cret@h", "nats://bob:***@h:4222", "s3cret"),
    ("nats://bob:@h", "nats://bob:***@h:4222", None),
    ("tls://bob:s3cret@h:7", "tls://bob:***@h:7", "s3cret"),
    ("u:s3cret@[::1]", "nats://u:***@[::1]:4222", "s3cret"),
    ("s3cret@[::1]:5", "nats://***@[::1]:5", "s3cret"),
    ("nats://my%40s3cret@h", "nats://***@h:4222", "s3cret"),
    ("nats://my@s3cret@h", "nats://***@h:4222", "s3cret"),
    ("nats://b%40b:s3cret@h", "nats://b%40b:***@h:4222", "s3cret"),
]


@pytest.mark.parametrize(("url", "redacted", "secret"), REDACT_CASES, ids=[c[0] for c in REDACT_CASES])
def test_server_redaction(url: str, redacted: str, secret: str | None) -> None:
    s = parse_url(url)
    assert s.redacted() == redacted
    assert str(s) == redacted
    assert redacted in repr(s)
    if secret is not None:
        for text in (s.redacted(), str(s), repr(s), f"{s}", f"{s!r}"):
            assert secret not in text


def test_repr_hides_last_error_and_inherited() -> None:
    s = Server(
        "nats",
        "10.0.0.2",
        4222,
        implicit=True,
        inherited_username="bob",
        inherited_password="s3cret",
        last_error=RuntimeError("boom"),
    )
    assert s.redacted() == "nats://10.0.0.2:4222"
    assert "s3cret" not in repr(s)
    assert "bob" not in repr(s)
    assert "boom" not in repr(s)
    # Even an implicit server that somehow carries user info never shows it.
    t = Server("nats", "h", 1, username="tok", implicit=True)
    assert t.redacted() == "nats://h:1"


# (input, expected)
REDACT_URL_CASES = [
    ("nats://h:4222", "nats://h:4222"),
    ("nats://tok@h:4222", "nats://***@h:4222"),
    ("nats://:tok@h:4222", "nats://***@h:4222"),
    ("nats://u:pw@h:4222", "nats://u:***@h:4222"),
    ("tok@h", "***@h"),
    ("u:pw@h", "u:***@h"),
    ("http://tok@h", "http://***@h"),
    ("garbage tok@@@", "***@"),
    ("nats://a/b@c?d#e@h", "nats://***@h"),
    ("nats://h?token=abc", "nats://h?***"),
    ("nats://h#abc", "nats://h?***"),
    ("nats://tok@h/x?y", "nats://***@h/x?***"),
    ("", ""),
    ("  nats://tok@h  ", "nats://***@h"),
]


@pytest.mark.parametrize(
    ("url", "expected"), REDACT_URL_CASES, ids=[c[0] or "<empty>" for c in REDACT_URL_CASES]
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


# ---------------------------------------------------------------------------- parse_servers

# (servers option, expected redacted URLs)
SERVERS_CASES: list[tuple[object, list[str]]] = [
    (None, ["nats://127.0.0.1:4222"]),
    ("", ["nats://127.0.0.1:4222"]),
    ([], ["nats://127.0.0.1:4222"]),
    (" , ", ["nats://127.0.0.1:4222"]),
    ([""], ["nats://127.0.0.1:4222"]),
    ("nats://a:1", ["nats://a:1"]),
    ("nats://a:1,nats://b:2", ["nats://a:1", "nats://b:2"]),
    ("nats://a:1, b:2 ,tok@c", ["nats://a:1", "nats://b:2", "nats://***@c:4222"]),
    ("nats://a:1,", ["nats://a:1"]),
    (["nats://a:1", "b:2,c:3"], ["nats://a:1", "nats://b:2", "nats://c:3"]),
    (("nats://a:1", "nats://b:2"), ["nats://a:1", "nats://b:2"]),
    (["tok@127.0.0.1:4222", "nats://127.0.0.1:4222"], ["nats://***@127.0.0.1:4222"]),
    (["nats://a:1", "tls://a:1", "A:1"], ["nats://a:1"]),
    (["[::1]:4222", "nats://[0:0::1]"], ["nats://[::1]:4222"]),
]


@pytest.mark.parametrize(("servers", "expected"), SERVERS_CASES, ids=[repr(c[0]) for c in SERVERS_CASES])
def test_parse_servers(servers: object, expected: list[str]) -> None:
    assert [s.redacted() for s in parse_servers(servers)] == expected  # type: ignore[arg-type]


def test_parse_servers_first_duplicate_wins() -> None:
    first, = parse_servers(["tok@h:1", "other@h:1"])
    assert first.url_token == "tok"


@pytest.mark.parametrize(
    "servers",
    [42, b"nats://a", [b"nats://a"], ["nats://a", None], {"nats://a"}, iter(["nats://a"])],
    ids=["int", "bytes", "list-of-bytes", "list-with-None", "set", "iterator"],
)
def test_parse_servers_type_error(servers: object) -> None:
    with pytest.raises(TypeError, match="'servers'"):
        parse_servers(servers)  # type: ignore[arg-type]


def test_parse_servers_value_error_is_redacted() -> None:
    with pytest.raises(ValueError) as info:
        parse_servers(["nats://a:1", "http://supersecret@b"])
    assert "supersecret" not in str(info.value)


# ---------------------------------------------------------------------------- pool


def _pool(*urls: str, randomize: bool = False, seed: int = 0) -> ServerPool:
    return ServerPool(parse_servers(list(urls)), randomize=randomize, rng=random.Random(seed))


def _current(pool: ServerPool) -> Server | None:
    """Read ``pool.current`` without mypy's narrowing from an earlier assignment."""
    return pool.current


def _hp(servers: object) -> list[str]:
    return [s.hostport for s in servers]  # type: ignore[attr-defined]


URLS = [f"nats://h{i}:4222" for i in range(8)]
HPS = [f"h{i}:4222" for i in range(8)]


def test_pool_dont_randomize_keeps_order() -> None:
    pool = _pool(*URLS)
    assert _hp(pool) == HPS
    assert _hp(pool.first_pass()) == HPS
    assert len(pool) == 8
    assert pool.current is None
    assert pool.redacted_urls() == URLS


def test_pool_randomize_with_seeded_rng() -> None:
    a = _pool(*URLS, randomize=True, seed=1)
    b = _pool(*URLS, randomize=True, seed=1)
    assert _hp(a) == _hp(b)
    assert sorted(_hp(a)) == HPS
    orders = {tuple(_hp(_pool(*URLS, randomize=True, seed=seed))) for seed in range(10)}
    assert len(orders) > 1
    expected = list(HPS)
    random.Random(1).shuffle(expected)
    assert _hp(a) == expected


def test_pool_dedups_constructor_input() -> None:
    servers = [parse_url("tok@h:1"), parse_url("h:1"), parse_url("g:1")]
    pool = ServerPool(servers, randomize=False)
    assert _hp(pool) == ["h:1", "g:1"]
    assert next(iter(pool)) is servers[0]


def test_select_next_rotates() -> None:
    pool = _pool("a:1", "b:1", "c:1")
    assert pool.select_next(60) is not None  # no current yet: take the head
    assert pool.current is not None
    assert pool.current.hostport == "a:1"
    seen = []
    for _ in range(6):
        nxt = pool.select_next(60)
        assert nxt is pool.current
        seen.append(nxt.hostport if nxt else None)
    assert seen == ["b:1", "c:1", "a:1", "b:1", "c:1", "a:1"]
    assert len(pool) == 3


def test_select_next_after_initial_connect_to_later_server() -> None:
    pool = _pool("a:1", "b:1", "c:1")
    pool.current = pool.first_pass()[1]  # initial connect succeeded on b
    nxt = pool.select_next(60)
    assert nxt is not None
    assert nxt.hostport == "a:1"
    assert _hp(pool) == ["a:1", "c:1", "b:1"]


# (max_reconnect_attempts, reconnects of each server, expected pool after one select_next from a, next)
SELECT_DROP_CASES = [
    (2, 1, ["b:1", "c:1", "a:1"], "b:1"),
    (2, 2, ["b:1", "c:1"], "b:1"),
    (2, 5, ["b:1", "c:1"], "b:1"),
    (0, 0, ["b:1", "c:1"], "b:1"),
    (-1, 10_000, ["b:1", "c:1", "a:1"], "b:1"),
]


@pytest.mark.parametrize(
    ("max_attempts", "reconnects", "pool_after", "nxt"),
    SELECT_DROP_CASES,
    ids=[f"max{c[0]}-reconnects{c[1]}" for c in SELECT_DROP_CASES],
)
def test_select_next_drops_after_max_attempts(
    max_attempts: int, reconnects: int, pool_after: list[str], nxt: str
) -> None:
    pool = _pool("a:1", "b:1", "c:1")
    pool.current = pool.first_pass()[0]
    pool.current.reconnects = reconnects
    chosen = pool.select_next(max_attempts)
    assert chosen is not None
    assert chosen.hostport == nxt
    assert _hp(pool) == pool_after


def test_select_next_exhausts_pool() -> None:
    pool = _pool("a:1", "b:1")
    pool.select_next(1)
    picked = []
    while True:
        cur = pool.current
        assert cur is not None
        cur.reconnects += 1  # one failed attempt
        picked.append(cur.hostport)
        if pool.select_next(1) is None:
            break
    assert picked == ["a:1", "b:1"]
    assert pool.current is None
    assert len(pool) == 0
    assert pool.select_next(1) is None


def test_select_next_never_drops_with_minus_one() -> None:
    pool = _pool("a:1", "b:1")
    pool.select_next(-1)
    for _ in range(1000):
        assert pool.current is not None
        pool.current.reconnects += 1
        assert pool.select_next(-1) is not None
    assert len(pool) == 2


def test_remove() -> None:
    pool = _pool("a:1", "b:1", "c:1")
    a, b, _ = pool.first_pass()
    pool.current = a
    pool.remove(b)
    assert _hp(pool) == ["a:1", "c:1"]
    assert pool.current is a
    pool.remove(a)
    assert _current(pool) is None
    assert _hp(pool) == ["c:1"]
    pool.remove(a)  # absent: nothing happens
    nxt = pool.select_next(60)
    assert nxt is not None
    assert nxt.hostport == "c:1"


def test_current_must_be_in_pool() -> None:
    pool = _pool("a:1")
    with pytest.raises(ValueError, match="not in the pool"):
        pool.current = parse_url("tok@a:1")
    pool.current = None


def test_pool_repr_has_no_secret() -> None:
    pool = _pool("nats://u:s3cret@a:1", "tok3n@b:1")
    pool.current = pool.first_pass()[0]
    assert "s3cret" not in repr(pool)
    assert "tok3n" not in repr(pool)
    assert pool.redacted_urls() == ["nats://u:***@a:1", "nats://***@b:1"]


# ---------------------------------------------------------------------------- discovery


def test_add_discovered_dedups_by_hostport() -> None:
    pool = _pool("tok@127.0.0.1:4222")
    pool.current = pool.first_pass()[0]
    added = pool.add_discovered(
        ["127.0.0.1:4222", "127.0.0.1:4223", "127.0.0.1:4223"], scheme="nats", learned_from=pool.current
    )
    assert _hp(added) == ["127.0.0.1:4223"]
    assert _hp(pool) == ["127.0.0.1:4222", "127.0.0.1:4223"]
    assert pool.explicit()[0].url_token == "tok"
    assert pool.add_discovered(["127.0.0.1:4222", "127.0.0.1:4223"], scheme="nats", learned_from=None) == []
    assert len(pool) == 2
    assert pool.redacted_discovered() == ["nats://127.0.0.1:4223"]
    assert pool.redacted_urls() == ["nats://***@127.0.0.1:4222", "nats://127.0.0.1:4223"]


# (explicit URL connected, expected inherited (username, password))
INHERIT_CASES = [
    ("nats://tok@a:1", ("tok", None)),
    ("nats://:tok@a:1", ("", "tok")),
    ("nats://u:p@a:1", ("u", "p")),
    ("nats://a:1", (None, None)),
]


@pytest.mark.parametrize(("url", "inherited"), INHERIT_CASES, ids=[c[0] for c in INHERIT_CASES])
def test_add_discovered_inherits_userinfo(url: str, inherited: tuple[str | None, str | None]) -> None:
    pool = _pool(url)
    src = pool.first_pass()[0]
    pool.current = src
    (new,) = pool.add_discovered(["b:2"], scheme="tls", learned_from=src)
    assert new.implicit is True
    assert new.scheme == "tls"
    assert (new.host, new.port) == ("b", 2)
    assert (new.username, new.password) == (None, None)
    assert (new.inherited_username, new.inherited_password) == inherited
    assert new.redacted() == "tls://b:2"
    assert pool.discovered() == [new]
    assert pool.explicit() == [src]


def test_add_discovered_inherits_through_implicit_server() -> None:
    pool = _pool("nats://u:p@a:1")
    src = pool.first_pass()[0]
    pool.current = src
    (b,) = pool.add_discovered(["b:1"], scheme="nats", learned_from=src)
    pool.current = b
    (c,) = pool.add_discovered(["b:1", "c:1"], scheme="nats", learned_from=b)
    assert (c.inherited_username, c.inherited_password) == ("u", "p")


def test_add_discovered_without_learned_from() -> None:
    pool = _pool("a:1")
    (b,) = pool.add_discovered(["b:1"], scheme="nats", learned_from=None)
    assert (b.inherited_username, b.inherited_password, b.tls_name) == (None, None, None)


def test_add_discovered_removes_unadvertised_implicit_but_not_current() -> None:
    pool = _pool("a:1")
    pool.current = pool.first_pass()[0]
    pool.add_discovered(["a:1", "b:1", "c:1", "d:1"], scheme="nats", learned_from=pool.current)
    c = next(s for s in pool if s.hostport == "c:1")
    pool.current = c
    added = pool.add_discovered(["b:1", "e:1"], scheme="nats", learned_from=c)
    assert _hp(added) == ["e:1"]
    # a is explicit (kept), c is current (kept), d is gone, e is new
    assert _hp(pool) == ["a:1", "b:1", "c:1", "e:1"]
    # The explicit server stays even when not advertised.
    pool.current = next(s for s in pool if s.hostport == "b:1")
    pool.add_discovered(["b:1"], scheme="nats", learned_from=pool.current)
    assert _hp(pool) == ["a:1", "b:1"]


def test_add_discovered_empty_list_changes_nothing() -> None:
    pool = _pool("a:1")
    pool.add_discovered(["b:1"], scheme="nats", learned_from=None)
    assert pool.add_discovered([], scheme="nats", learned_from=None) == []
    assert _hp(pool) == ["a:1", "b:1"]


def test_add_discovered_ignores_garbage_entries() -> None:
    pool = _pool("a:1")
    garbage = ["", "  ", "b:0", "::1", "c:1", "http://d:1", "[::1]:4222", 42]
    added = pool.add_discovered(garbage, scheme="nats", learned_from=None)  # type: ignore[arg-type]
    assert _hp(added) == ["c:1", "[::1]:4222"]


def test_add_discovered_bad_scheme() -> None:
    with pytest.raises(ValueError, match="scheme"):
        _pool("a:1").add_discovered(["b:1"], scheme="ws", learned_from=None)


# (learned-from URL, learned-from tls_name, discovered entry, expected tls_name)
TLS_NAME_CASES = [
    ("tls://nats.example.com:4222", None, "10.0.0.2:4222", "nats.example.com"),
    ("tls://nats.example.com:4222", None, "[2001:db8::2]:4222", "nats.example.com"),
    ("tls://nats.example.com:4222", None, "other.example.com:4222", None),
    ("tls://10.0.0.1:4222", None, "10.0.0.2:4222", None),
    ("tls://10.0.0.1:4222", "nats.example.com", "10.0.0.2:4222", "nats.example.com"),
]


@pytest.mark.parametrize(
    ("src_url", "src_tls_name", "entry", "tls_name"),
    TLS_NAME_CASES,
    ids=[f"{c[0]}->{c[2]}" for c in TLS_NAME_CASES],
)
def test_add_discovered_tls_name(
    src_url: str, src_tls_name: str | None, entry: str, tls_name: str | None
) -> None:
    pool = _pool(src_url)
    src = pool.first_pass()[0]
    src.tls_name = src_tls_name
    pool.current = src
    (new,) = pool.add_discovered([entry], scheme="tls", learned_from=src)
    assert new.tls_name == tls_name


def test_add_discovered_shuffles_all_but_head_when_randomizing() -> None:
    pool = ServerPool(parse_servers(["a:1"]), randomize=True, rng=random.Random(3))
    pool.current = pool.first_pass()[0]
    entries = [f"n{i}:1" for i in range(10)]
    added = pool.add_discovered(entries, scheme="nats", learned_from=pool.current)
    assert _hp(added) == entries  # returned in advertised order
    order = _hp(pool)
    assert order[0] == "a:1"
    assert sorted(order[1:]) == sorted(entries)
    assert order[1:] != entries  # seed 3 does shuffle

    fixed = _pool("a:1")
    fixed.add_discovered(entries, scheme="nats", learned_from=None)
    assert _hp(fixed) == ["a:1", *entries]


def test_add_discovered_does_not_shuffle_when_nothing_added() -> None:
    pool = ServerPool(parse_servers(["a:1", "b:1", "c:1"]), randomize=True, rng=random.Random(0))
    before = _hp(pool)
    assert pool.add_discovered(["a:1", "b:1"], scheme="nats", learned_from=None) == []
    assert _hp(pool) == before

"""Bad input and bad options (API.md: Publishing, Subscribing, Connecting).

Every bad input raises the named error *and* sends nothing: a second connection
subscribed to ``>`` (and to the subjects an injection would create) sees only the
sentinel published afterwards, and the offending client stays connected and usable.
Bad options raise before any socket is opened: the client is pointed at a loopback
listener of the test's own, which must never get a connection.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import natsync
from natsync import BadHeaderError, BadSubjectError, Headers, NoServersError
from natsync.testing import NATSServer

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server() -> Iterator[NATSServer]:
    with NATSServer() as srv:
        yield srv


class Spy:
    """A second connection that sees every message published on the server."""

    def __init__(self, url: str) -> None:
        self.nc = natsync.connect(url)
        self.all = self.nc.subscribe(">")
        self.evil = self.nc.subscribe("evil")
        self.nc.flush()

    def assert_nothing_reached(self, offender: natsync.Client) -> None:
        """Prove the offender sent no message: its sentinel is the first thing seen."""
        offender.flush()
        self.nc.flush()
        assert self.all.pending_msgs == 0, [m.subject for m in _take_all(self.all)]
        assert self.evil.pending_msgs == 0
        offender.publish("sentinel.done", b"ok")
        offender.flush()
        self.nc.flush()
        first = self.all.next_msg(timeout=5)
        assert (first.subject, first.data) == ("sentinel.done", b"ok")
        assert self.all.pending_msgs == 0 and self.evil.pending_msgs == 0
        # the server saw no protocol error from the offender, which is still usable
        assert offender.is_connected and offender.stats.errors_received == 0


def _take_all(sub: natsync.Subscription) -> list[natsync.Msg]:
    return [sub.next_msg(timeout=1) for _ in range(sub.pending_msgs)]


@pytest.fixture
def spy(server: NATSServer) -> Iterator[Spy]:
    s = Spy(server.url)
    try:
        yield s
    finally:
        s.nc.close()


@pytest.fixture
def nc(server: NATSServer) -> Iterator[natsync.Client]:
    with natsync.connect(server.url) as client:
        yield client


def assert_never_connected(sock: socket.socket) -> None:
    sock.settimeout(0.2)
    try:
        conn, _ = sock.accept()
    except TimeoutError:
        return
    conn.close()
    raise AssertionError("the client opened a connection despite bad options")


def _port(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


# --------------------------------------------------------------------------- subjects

BAD_SUBJECTS = [
    pytest.param("", id="empty"),
    pytest.param(" ", id="space-only"),
    pytest.param("a b", id="space"),
    pytest.param(" a", id="leading-space"),
    pytest.param("a ", id="trailing-space"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x01b", id="ctrl-1"),
    pytest.param("a\x1fb", id="ctrl-1f"),
    pytest.param("a\x7fb", id="del"),
    pytest.param("a\x85b", id="c1-nel"),
    pytest.param("a\u00a0b", id="nbsp"),
    pytest.param("a\u2028b", id="line-separator"),
    pytest.param("a\rb", id="cr"),
    pytest.param("a\nb", id="lf"),
    pytest.param("a\r\n", id="trailing-crlf"),
    pytest.param("a..b", id="empty-token"),
    pytest.param(".a", id="leading-dot"),
    pytest.param("a.", id="trailing-dot"),
    pytest.param(".", id="dot"),
    pytest.param("foo\r\nPUB evil 1\r\nx", id="crlf-injection"),
    pytest.param("foo 1\r\nx\r\nPUB evil", id="crlf-injection-2"),
    pytest.param("foo\r\nSUB evil 99", id="crlf-sub-injection"),
]


@pytest.mark.parametrize("subject", BAD_SUBJECTS)
def test_publish_bad_subject(nc: natsync.Client, spy: Spy, subject: str) -> None:
    with pytest.raises(BadSubjectError) as info:
        nc.publish(subject, b"x")
    assert isinstance(info.value, ValueError)
    with pytest.raises(BadSubjectError):
        nc.publish(subject, b"x", headers={"K": "v"})
    with pytest.raises(BadSubjectError):
        nc.publish(subject, b"x", reply="ok.reply")
    spy.assert_nothing_reached(nc)


BAD_REPLIES = [p for p in BAD_SUBJECTS if p.values[0] != ""]  # reply="" means no reply


@pytest.mark.parametrize("reply", BAD_REPLIES)
def test_publish_bad_reply(nc: natsync.Client, spy: Spy, reply: str) -> None:
    with pytest.raises(BadSubjectError):
        nc.publish("good.subject", b"x", reply=reply)
    with pytest.raises(BadSubjectError):
        nc.publish("good.subject", b"x", reply=reply, headers={"K": "v"})
    spy.assert_nothing_reached(nc)


@pytest.mark.parametrize("subject", BAD_SUBJECTS)
def test_subscribe_bad_subject(nc: natsync.Client, spy: Spy, subject: str) -> None:
    with pytest.raises(BadSubjectError):
        nc.subscribe(subject)
    with pytest.raises(BadSubjectError):
        nc.subscribe(subject, cb=lambda m: None)
    with pytest.raises(BadSubjectError):
        nc.subscribe(subject, queue="q")
    assert not nc._subs  # nothing registered
    spy.assert_nothing_reached(nc)
    # the injected subscription does not exist: a publish to "evil" reaches only the spy
    nc.publish("evil", b"probe")
    nc.flush()
    spy.nc.flush()
    assert spy.evil.next_msg(timeout=5).data == b"probe"


BAD_QUEUES = [
    pytest.param(" ", id="space-only"),
    pytest.param("a b", id="space"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x7f", id="del"),
    pytest.param("q\r\nPUB evil 1\r\nx", id="crlf-injection"),
    pytest.param("q\n", id="lf"),
]


@pytest.mark.parametrize("queue", BAD_QUEUES)
def test_subscribe_bad_queue(nc: natsync.Client, spy: Spy, queue: str) -> None:
    with pytest.raises(BadSubjectError):
        nc.subscribe("good.subject", queue=queue)
    with pytest.raises(BadSubjectError):
        nc.subscribe("good.subject", queue=queue, cb=lambda m: None)
    assert not nc._subs
    spy.assert_nothing_reached(nc)


@pytest.mark.parametrize("subject", BAD_SUBJECTS)
def test_request_bad_subject(nc: natsync.Client, spy: Spy, subject: str) -> None:
    with pytest.raises(BadSubjectError):
        nc.request(subject, b"x", timeout=1)
    with pytest.raises(BadSubjectError):
        nc.request(subject, b"x", timeout=1, headers={"K": "v"})
    spy.assert_nothing_reached(nc)


def test_subject_type_errors(nc: natsync.Client, spy: Spy) -> None:
    for bad in (None, b"foo", 5):
        with pytest.raises((BadSubjectError, TypeError)):
            nc.publish(bad, b"x")  # type: ignore[arg-type]
        with pytest.raises((BadSubjectError, TypeError)):
            nc.subscribe(bad)  # type: ignore[arg-type]
        if bad is not None:  # reply=None means no reply
            with pytest.raises((BadSubjectError, TypeError)):
                nc.publish("ok", b"x", reply=bad)  # type: ignore[arg-type]
    spy.assert_nothing_reached(nc)


def test_bad_payload_type(nc: natsync.Client, spy: Spy) -> None:
    for bad in (5, ["x"], object()):
        with pytest.raises(TypeError):
            nc.publish("ok", bad)  # type: ignore[arg-type]
    spy.assert_nothing_reached(nc)


def test_valid_unusual_subjects_are_sent(nc: natsync.Client, spy: Spy) -> None:
    for subject in ("a", "a.b.c", "é.ü", "a-b_c", "A.*.>x", "$SYS_not"):
        nc.publish(subject, b"x")
    nc.flush()
    spy.nc.flush()
    assert [m.subject for m in _take_all(spy.all)] == ["a", "a.b.c", "é.ü", "a-b_c", "A.*.>x", "$SYS_not"]


# --------------------------------------------------------------------------- headers

BAD_HEADERS: list[Any] = [
    pytest.param({"a:b": "v"}, id="name-colon"),
    pytest.param({"a b": "v"}, id="name-space"),
    pytest.param({"a\tb": "v"}, id="name-tab"),
    pytest.param({"a\r\nb": "v"}, id="name-crlf"),
    pytest.param({"X\r\nPUB evil 1\r\nx": "v"}, id="name-injection"),
    pytest.param({"ä": "v"}, id="name-non-ascii"),
    pytest.param({"a\x7f": "v"}, id="name-del"),
    pytest.param({"a\x00": "v"}, id="name-nul"),
    pytest.param({"": "v"}, id="name-empty"),
    pytest.param({"K": "v\r"}, id="value-cr"),
    pytest.param({"K": "v\n"}, id="value-lf"),
    pytest.param({"K": "v\r\nPUB evil 1\r\nx"}, id="value-injection"),
    pytest.param({"K": "v\r\n\r\nbody"}, id="value-end-of-headers"),
    pytest.param({"K": ["ok", "bad\n"]}, id="list-value-lf"),
    pytest.param({1: "v"}, id="key-int"),
    pytest.param({b"K": "v"}, id="key-bytes"),
    pytest.param({None: "v"}, id="key-none"),
    pytest.param({"K": 1}, id="value-int"),
    pytest.param({"K": b"v"}, id="value-bytes"),
    pytest.param({"K": None}, id="value-none"),
    pytest.param({"K": ["ok", 2]}, id="list-value-int"),
    pytest.param([("a:b", "v")], id="pairs-name-colon"),
    pytest.param([("K", "v\n")], id="pairs-value-lf"),
    pytest.param([("K", 1)], id="pairs-value-int"),
    pytest.param([("K",)], id="pairs-not-pairs"),
    pytest.param("K: v", id="a-string"),
]


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_publish_bad_headers(nc: natsync.Client, spy: Spy, headers: Any) -> None:
    with pytest.raises(BadHeaderError) as info:
        nc.publish("good.subject", b"x", headers=headers)
    assert isinstance(info.value, ValueError)
    with pytest.raises(BadHeaderError):
        nc.publish("good.subject", b"", headers=headers, reply="r.x")
    with pytest.raises(BadHeaderError):
        nc.request("good.subject", b"x", timeout=1, headers=headers)
    spy.assert_nothing_reached(nc)


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_headers_object_rejects_bad_input(headers: Any) -> None:
    if isinstance(headers, str):
        with pytest.raises(BadHeaderError):
            Headers(headers)
        return
    with pytest.raises(BadHeaderError):
        Headers(headers)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda h: h.__setitem__("a:b", "v"), id="setitem-name"),
        pytest.param(lambda h: h.__setitem__("K", "v\r\n"), id="setitem-value"),
        pytest.param(lambda h: h.__setitem__("K", 5), id="setitem-int"),
        pytest.param(lambda h: h.add("a b", "v"), id="add-name"),
        pytest.param(lambda h: h.add("K", "\nx"), id="add-value"),
        pytest.param(lambda h: h.add(5, "v"), id="add-int-key"),
    ],
)
def test_headers_mutation_rejects_bad_input(
    nc: natsync.Client, spy: Spy, call: Callable[[Headers], None]
) -> None:
    h = Headers({"Good": "yes"})
    with pytest.raises(BadHeaderError):
        call(h)
    nc.publish("hdr.ok", b"x", headers=h)  # still valid
    nc.flush()
    spy.nc.flush()
    msg = spy.all.next_msg(timeout=5)
    assert msg.headers is not None and dict(msg.headers) == {"Good": "yes"}


def test_edge_valid_headers_are_sent(nc: natsync.Client, spy: Spy) -> None:
    h = {"!#$%&'*+-.^_`|~09AZaz": "", "X-Uni": "ünïcødé \t tab inside"}
    nc.publish("hdr.edge", b"x", headers=h)
    nc.flush()
    spy.nc.flush()
    msg = spy.all.next_msg(timeout=5)
    assert msg.headers is not None
    assert msg.headers["!#$%&'*+-.^_`|~09AZaz"] == ""
    assert msg.headers["x-uni"] == "ünïcødé \t tab inside"


# --------------------------------------------------------------------------- options

BAD_OPTIONS = [
    ("connect_timeout", 0),
    ("connect_timeout", -1),
    ("connect_timeout", float("nan")),
    ("drain_timeout", -1),
    ("drain_timeout", 0),
    ("flush_timeout", 0),
    ("flush_timeout", -0.5),
    ("reconnect_time_wait", -1),
    ("reconnect_jitter", -1),
    ("reconnect_jitter_tls", -1),
    ("ping_interval", -1),
    ("max_outstanding_pings", 0),
    ("max_reconnect_attempts", -2),
    ("reconnect_buffer_size", -1),
    ("pending_msgs_limit", 0),
    ("pending_msgs_limit", -1),
    ("pending_bytes_limit", 0),
]


@pytest.mark.parametrize(("option", "value"), BAD_OPTIONS, ids=[f"{o}={v}" for o, v in BAD_OPTIONS])
def test_out_of_range_option_before_any_socket(listener: socket.socket, option: str, value: Any) -> None:
    url = f"nats://127.0.0.1:{_port(listener)}"
    with pytest.raises(ValueError) as info:
        natsync.connect(url, **{option: value})
    assert option in str(info.value)
    with pytest.raises(ValueError) as info:
        natsync.NATS().connect(servers=[url], **{option: value})
    assert option in str(info.value)
    assert_never_connected(listener)


def test_boundary_options_accepted(server: NATSServer) -> None:
    with natsync.connect(
        server.url,
        reconnect_time_wait=0,
        reconnect_jitter=0,
        reconnect_jitter_tls=0,
        ping_interval=0,
        max_outstanding_pings=1,
        max_reconnect_attempts=-1,
        reconnect_buffer_size=0,
        pending_msgs_limit=None,
        pending_bytes_limit=None,
        flush_timeout=None,
        connect_timeout=0.5,
        drain_timeout=0.5,
    ) as c:
        sub = c.subscribe("boundary")
        c.publish("boundary", b"x")
        assert sub.next_msg(timeout=5).data == b"x"


def test_unknown_option_is_type_error(listener: socket.socket) -> None:
    url = f"nats://127.0.0.1:{_port(listener)}"
    with pytest.raises(TypeError):
        natsync.connect(url, bogus_option=1)
    with pytest.raises(TypeError):
        natsync.NATS().connect(servers=[url], reconnect_wait=1)  # the nats.go spelling is not ours
    assert_never_connected(listener)


def test_failed_validation_leaves_client_reusable(listener: socket.socket, server: NATSServer) -> None:
    c = natsync.NATS()
    with pytest.raises(ValueError):
        c.connect(servers=[f"nats://127.0.0.1:{_port(listener)}"], connect_timeout=0)
    assert_never_connected(listener)
    c.connect(servers=[server.url])
    with c:
        assert c.is_connected


@pytest.mark.parametrize(
    "url_template",
    [
        pytest.param("ftp://s3cr3tv4lue@127.0.0.1:{port}", id="ftp-token"),
        pytest.param("ftp://user:s3cr3tv4lue@127.0.0.1:{port}", id="ftp-userpass"),
        pytest.param("http://127.0.0.1:{port}", id="http"),
        pytest.param("nats://s3cr3tv4lue@:{port}", id="empty-host-token"),
        pytest.param("nats://u:s3cr3tv4lue@:{port}", id="empty-host-userpass"),
        pytest.param("nats://:{port}", id="empty-host"),
        pytest.param("nats://s3cr3tv4lue@127.0.0.1:99999", id="port-99999"),
        pytest.param("nats://u:s3cr3tv4lue@127.0.0.1:0", id="port-0"),
        pytest.param("nats://s3cr3tv4lue@127.0.0.1:abc", id="port-abc"),
        pytest.param("nats://s3cr3tv4lue@127.0.0.1:{port}/path", id="path"),
        pytest.param("s3cr3tv4lue@127.0.0.1:{port}?x=1", id="query"),
        pytest.param("nats://s3cr3tv4lue@::1:{port}", id="ipv6-no-brackets"),
    ],
)
def test_bad_url_value_error_without_secret(listener: socket.socket, url_template: str) -> None:
    url = url_template.format(port=_port(listener))
    with pytest.raises(ValueError) as info:
        natsync.connect(url)
    assert "s3cr3tv4lue" not in str(info.value) and "s3cr3tv4lue" not in repr(info.value)
    # and when the bad URL comes after a good one, nothing is dialled either
    with pytest.raises(ValueError) as info:
        natsync.connect(servers=[f"nats://127.0.0.1:{_port(listener)}", url])
    assert "s3cr3tv4lue" not in str(info.value)
    assert_never_connected(listener)


def test_servers_type_error(listener: socket.socket) -> None:
    with pytest.raises(TypeError):
        natsync.connect(servers=[f"nats://127.0.0.1:{_port(listener)}", 5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        natsync.connect(servers=b"nats://127.0.0.1:4222")  # type: ignore[arg-type]
    assert_never_connected(listener)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_no_server_reachable_raises_no_servers_error() -> None:
    p1, p2 = _closed_port(), _closed_port()
    with pytest.raises(NoServersError) as info:
        natsync.connect(f"nats://127.0.0.1:{p1}", connect_timeout=2)
    assert str(p1) in str(info.value)
    with pytest.raises(NoServersError) as info:
        natsync.connect(
            servers=[f"nats://tok3nvalue@127.0.0.1:{p1}", f"nats://u:passw0rd@127.0.0.1:{p2}"],
            max_reconnect_attempts=-1,  # the first connect still tries each once
        )
    msg = str(info.value)
    assert str(p1) in msg and str(p2) in msg
    assert "tok3nvalue" not in msg and "passw0rd" not in msg


def test_no_server_with_nats_then_connect() -> None:
    c = natsync.NATS()
    with pytest.raises(NoServersError):
        c.connect(servers=[f"127.0.0.1:{_closed_port()}"])
    assert not c.is_connected
    with pytest.raises(natsync.ConnectionClosedError):
        c.publish("x", b"y")
    c.close()


def test_bad_call_arguments(nc: natsync.Client, spy: Spy) -> None:
    sub = nc.subscribe("args.ok")
    for bad_limit in (0, -1):
        with pytest.raises(ValueError):
            sub.unsubscribe(limit=bad_limit)
    for msgs, nbytes in ((0, None), (None, 0), (-1, 10)):
        with pytest.raises(ValueError):
            sub.set_pending_limits(msgs, nbytes)
    with pytest.raises(TypeError):
        nc.subscribe("args.ok", cb="not callable")  # type: ignore[arg-type]
    assert sub.is_valid
    spy.assert_nothing_reached(nc)

"""A hostile server: a scripted fake server (tests/fakeserver.py) drives the whole client
through malformed and abusive sequences.  Malformed input is a ProtocolError to
error_cb, the connection is dropped and the client reconnects (or connect() fails);
floods are survived; a server that stops reading blocks neither close() nor the reader.
Permissions violations come from a real nats-server.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from authkit import Pki, client_context, make_pki, wait_until
from fakeserver import FakeConn, FakeServer

import natsync
from natsync import NatsError, NoServersError, PermissionsError, ProtocolError, StaleConnectionError
from natsync.testing import NATSServer

HANG = 20.0  # "does not hang" bound for one step, seconds
MIB = 1024 * 1024


class Recorder:
    """Collects what the client reports through its callbacks."""

    def __init__(self) -> None:
        self.errors: list[NatsError] = []
        self.got_error = threading.Event()
        self.reconnected = threading.Event()
        self.disconnected = threading.Event()
        self.closed = threading.Event()

    def error_cb(self, e: NatsError) -> None:
        self.errors.append(e)
        self.got_error.set()

    def kwargs(self) -> dict[str, Any]:
        return {
            "error_cb": self.error_cb,
            "reconnected_cb": self.reconnected.set,
            "disconnected_cb": self.disconnected.set,
            "closed_cb": self.closed.set,
            "reconnect_time_wait": 0.01,
            "reconnect_jitter": 0.0,
        }

    def of(self, cls: type[NatsError]) -> list[NatsError]:
        return [e for e in self.errors if isinstance(e, cls)]


def good(c: FakeConn) -> None:
    c.handshake()
    c.serve()


def _closes_promptly(nc: natsync.Client) -> None:
    start = time.monotonic()
    nc.close()
    assert time.monotonic() - start < HANG
    assert nc.is_closed


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


# ------------------------------------------------------------------ during the handshake

HANDSHAKE_CASES = {
    "garbage-before-info": (b"HELLO THERE\r\nINFO {}\r\n", "unknown protocol operation"),
    "binary-garbage": (b"\x16\x03\x01\x02\x00\x01\x00", "unknown protocol operation"),
    "info-not-json": (b"INFO {this is not json\r\n", "INFO is not a JSON object"),
    "info-json-array": (b"INFO [1, 2, 3]\r\n", "INFO is not a JSON object"),
    "pong-before-info": (b"PONG\r\n", "expected INFO"),
    "2mib-line": (b"INFO {" + b" " * (2 * MIB), "longer than"),
}


@pytest.mark.parametrize("case", list(HANDSHAKE_CASES))
def test_malformed_greeting_fails_connect(case: str) -> None:
    data, words = HANDSHAKE_CASES[case]

    def script(c: FakeConn) -> None:
        c.send(data)
        c.serve()  # until the client hangs up

    rec = Recorder()
    with FakeServer([script]) as fake:
        start = time.monotonic()
        with pytest.raises(NoServersError, match=words):
            natsync.connect(fake.url, connect_timeout=HANG / 2, **rec.kwargs())
        assert time.monotonic() - start < HANG
        assert fake.connects == []  # no CONNECT was sent to it


def test_silent_server_is_bounded_by_connect_timeout() -> None:
    with FakeServer([lambda c: c.info() or c.wait(HANG)]) as fake:  # INFO, then nothing
        start = time.monotonic()
        with pytest.raises(NoServersError, match="timed out"):
            natsync.connect(fake.url, connect_timeout=0.5)
        assert time.monotonic() - start < HANG


def test_server_closing_during_handshake() -> None:
    with FakeServer([lambda c: None]) as fake:
        with pytest.raises(NoServersError, match="closed the connection"):
            natsync.connect(fake.url, connect_timeout=HANG / 2)


# ------------------------------------------------------------------ while connected

HOSTILE = {
    "info-not-json": b"INFO {this is not json\r\n",
    "info-json-string": b'INFO "hello"\r\n',
    "2mib-line-no-crlf": b"-ERR '" + b"x" * (2 * MIB),
    "2mib-line-with-crlf": b"INFO {" + b" " * (2 * MIB) + b"}\r\n",
    "unknown-op-no-line-end": b"XYZZY",
    "binary-garbage": b"\x00\xff\xfe\xfd\r\n",
    "msg-size-short": b"MSG feed 1 3\r\nhello\r\n",
    "msg-size-negative": b"MSG feed 1 -5\r\nhello\r\n",
    "msg-size-not-a-number": b"MSG feed 1 five\r\nhello\r\n",
    "msg-size-over-64mib": b"MSG feed 1 99999999999\r\n",
    "msg-too-few-fields": b"MSG feed\r\n",
    "hmsg-header-larger-than-total": b"HMSG feed 1 20 10\r\nNATS/1.0\r\n\r\n\r\n",
    "hmsg-header-not-nats": b"HMSG feed 1 4 6\r\nabcdXY\r\n",
    "hmsg-size-short": b"HMSG feed 1 12 12\r\nNATS/1.0\r\n\r\nextra\r\n",
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_malformed_input_drops_the_connection_and_reconnects(case: str) -> None:
    def hostile(c: FakeConn) -> None:
        c.handshake()
        c.send(HOSTILE[case])
        c.serve()

    rec = Recorder()
    with FakeServer([hostile], default=good) as fake:
        nc = natsync.connect(fake.url, **rec.kwargs())
        try:
            sub = nc.subscribe("feed")
            assert rec.reconnected.wait(HANG), f"no reconnect; errors: {rec.errors}"
            errs = rec.of(ProtocolError)
            assert errs, f"no ProtocolError in {rec.errors}"
            # the new connection works
            nc.publish("feed", b"after")
            assert sub.next_msg(timeout=HANG).data == b"after"
        finally:
            _closes_promptly(nc)


def test_malformed_input_without_reconnect_closes() -> None:
    def hostile(c: FakeConn) -> None:
        c.handshake()
        c.send(b"MSG feed 1 -1\r\n")
        c.serve()

    rec = Recorder()
    with FakeServer([hostile], default=good) as fake:
        nc = natsync.connect(fake.url, allow_reconnect=False, **rec.kwargs())
        assert rec.closed.wait(HANG)
        assert nc.is_closed and rec.of(ProtocolError)
        with pytest.raises(natsync.ConnectionClosedError):
            nc.publish("x", b"")
        nc.close()


def test_err_flood_non_fatal() -> None:
    n = 5000
    conn: list[FakeConn] = []

    def flood(c: FakeConn) -> None:
        conn.append(c)
        c.handshake()
        c.send(b"-ERR 'Invalid Subject'\r\n" * n)
        c.serve()

    rec = Recorder()
    with FakeServer([flood], default=good) as fake:
        nc = natsync.connect(fake.url, **rec.kwargs())
        try:
            # issue 7: the event queue is bounded; errors beyond it are counted and reported
            # to error_cb in one summary error ("N more errors were not passed ...")
            def reported() -> int:
                summaries = [str(e) for e in rec.errors if "more errors were not passed" in str(e)]
                return len(rec.errors) - len(summaries) + sum(int(t.split()[0]) for t in summaries)

            wait_until(lambda: reported() >= n, HANG, "every -ERR reported or counted")
            nc.flush(timeout=HANG)
            assert nc.is_connected and not rec.reconnected.is_set()
            assert nc.stats.errors_received == n
        finally:
            _closes_promptly(nc)


def test_err_flood_fatal_reconnects() -> None:
    def flood(c: FakeConn) -> None:
        c.handshake()
        c.send(b"-ERR 'Unknown Protocol Operation'\r\n" * 2000)
        c.serve()

    rec = Recorder()
    with FakeServer([flood], default=good) as fake:
        nc = natsync.connect(fake.url, **rec.kwargs())
        try:
            assert rec.reconnected.wait(HANG)
            nc.flush(timeout=HANG)
        finally:
            _closes_promptly(nc)


def test_ping_flood_is_answered() -> None:
    n = 20000
    conn: list[FakeConn] = []

    def flood(c: FakeConn) -> None:
        conn.append(c)
        c.handshake()
        c.send(b"PING\r\n" * n)
        c.serve()

    with FakeServer([flood]) as fake:
        nc = natsync.connect(fake.url)
        try:
            wait_until(lambda: bool(conn) and conn[0].received.count(b"PONG") >= n, HANG, "a PONG per PING")
            nc.flush(timeout=HANG)
            assert nc.is_connected
        finally:
            _closes_promptly(nc)


def test_info_every_millisecond() -> None:
    stop = threading.Event()
    sent = [0]

    def spam(c: FakeConn) -> None:
        c.handshake()

        def infos() -> None:
            i = 0
            while not stop.is_set() and not c.wait(0.001):
                urls = [f"127.0.0.1:{20000 + (i % 7)}", f"127.0.0.1:{30000 + (i % 3)}"]
                c.info(connect_urls=urls, max_payload=MIB + i, nonce=f"n{i}")
                i += 1
                sent[0] = i

        t = threading.Thread(target=infos, daemon=True)
        t.start()
        try:
            c.serve()
        finally:
            stop.set()
            t.join(HANG)

    rec = Recorder()
    with FakeServer([spam], default=good) as fake:
        nc = natsync.connect(fake.url, dont_randomize=True, **rec.kwargs())
        try:
            sub = nc.subscribe("feed")
            wait_until(lambda: sent[0] >= 300, HANG, "300 INFOs")
            for _ in range(20):
                nc.publish("feed", b"x")
                nc.flush(timeout=HANG)
            for _ in range(20):
                assert sub.next_msg(timeout=HANG).data == b"x"
            stop.set()
            nc.flush(timeout=HANG)
            assert nc.max_payload > MIB and nc.server_info["max_payload"] == nc.max_payload
            # the pool follows the latest connect_urls (as nats.go): two addresses, no pile-up
            possible = {f"nats://127.0.0.1:{p}" for p in [*range(20000, 20007), *range(30000, 30003)]}
            assert len(nc.discovered_servers) == 2 and set(nc.discovered_servers) <= possible
            assert not rec.reconnected.is_set() and not rec.errors
        finally:
            stop.set()
            _closes_promptly(nc)


# ------------------------------------------------------------- a server that stops reading


def _stop_reading(tls: ssl.SSLContext | None, keep_sending: bool) -> Any:
    def script(c: FakeConn) -> None:
        if tls is not None:
            c.info(tls_required=True)
            c.start_tls(tls)
            c.read_connect()
            c.send(b"PONG\r\n")
        else:
            c.handshake()
        i = 0
        # never read again; send a message on sid 1 now and then
        while not c.wait(0.01):
            if keep_sending:
                c.send(b"MSG feed 1 %d\r\n%d\r\n" % (len(str(i)), i))
                i += 1

    return script


@pytest.mark.parametrize("use_tls", [False, True], ids=["plain", "tls"])
def test_server_that_stops_reading_blocks_neither_close_nor_the_reader(pki: Pki, use_tls: bool) -> None:
    server_ctx = None
    opts: dict[str, Any] = {}
    if use_tls:
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(pki.cert_file, pki.key_file)
        opts["tls"] = client_context(pki)
    with FakeServer([_stop_reading(server_ctx, keep_sending=True)]) as fake:
        nc = natsync.connect(fake.url, ping_interval=0, flush_timeout=0.5, **opts)
        sub = nc.subscribe("feed")
        published = [0]
        outcome: list[BaseException | None] = []

        def publish() -> None:
            try:
                payload = b"p" * MIB
                for _ in range(256):  # far more than the socket buffers hold
                    nc.publish("big", payload)
                    published[0] += 1
                outcome.append(None)
            except NatsError as e:
                outcome.append(e)

        flushed: list[BaseException | None] = []

        def flush() -> None:
            try:
                nc.flush(timeout=HANG * 3)
                flushed.append(None)
            except NatsError as e:
                flushed.append(e)

        publisher = threading.Thread(target=publish, daemon=True)
        flusher = threading.Thread(target=flush, daemon=True)
        publisher.start()
        wait_until(lambda: published[0] >= 2, HANG, "2 MiB published")
        flusher.start()
        # the reader still delivers what the server sends, while writes are stuck
        first = int(sub.next_msg(timeout=HANG).data)
        for k in range(1, 20):
            assert int(sub.next_msg(timeout=HANG).data) == first + k
        assert publisher.is_alive(), "the publisher should be held by back-pressure"
        _closes_promptly(nc)
        publisher.join(HANG)
        flusher.join(HANG)
        assert not publisher.is_alive() and not flusher.is_alive()
        assert len(outcome) == 1 and len(flushed) == 1
        assert isinstance(flushed[0], natsync.ConnectionClosedError)


def test_server_that_stops_reading_and_writing_is_found_stale() -> None:
    rec = Recorder()
    with FakeServer([_stop_reading(None, keep_sending=False)], default=good) as fake:
        nc = natsync.connect(fake.url, ping_interval=0.1, max_outstanding_pings=2, **rec.kwargs())
        try:
            for _ in range(8):
                nc.publish("big", b"p" * MIB)
            assert rec.reconnected.wait(HANG)
            assert rec.of(StaleConnectionError)
            nc.flush(timeout=HANG)
        finally:
            _closes_promptly(nc)


# --------------------------------------------------------- permissions (real nats-server)

PERM_CONFIG = """
authorization {
  users = [
    {
      user: "perm"
      password: "perm-pa55"
      permissions: {
        publish: { deny: ["secret.>"] }
        subscribe: { deny: ["private.>"] }
      }
    }
  ]
}
"""


@pytest.fixture(scope="module")
def perm_server() -> Iterator[NATSServer]:
    with NATSServer(config=PERM_CONFIG) as server:
        yield server


def test_permissions_violations_keep_the_connection(perm_server: NATSServer) -> None:
    rec = Recorder()
    with natsync.connect(perm_server.url, user="perm", password="perm-pa55", **rec.kwargs()) as nc:
        ok = nc.subscribe("public.x")
        got: list[bytes] = []
        done = threading.Event()
        cb_sub = nc.subscribe("public.cb", cb=lambda m: (got.append(m.data), done.set()))
        nc.publish("secret.plans", b"no")
        nc.subscribe("private.inbox")
        nc.subscribe("private.q", queue="workers")
        nc.flush()
        wait_until(lambda: len(rec.of(PermissionsError)) >= 3, HANG, "three permissions errors")
        perms = {(e.operation, e.subject, e.queue) for e in rec.of(PermissionsError)}  # type: ignore[attr-defined]
        assert ("publish", "secret.plans", None) in perms
        assert ("subscribe", "private.inbox", None) in perms
        assert ("subscribe", "private.q", "workers") in perms
        for e in rec.of(PermissionsError):
            assert "perm-pa55" not in str(e)
        # the connection and the other subscriptions keep working
        nc.publish("public.x", b"still here")
        nc.publish("public.cb", b"and here")
        assert ok.next_msg(timeout=5).data == b"still here"
        assert done.wait(5) and got == [b"and here"]
        assert nc.is_connected and nc.stats.reconnects == 0 and not rec.disconnected.is_set()
        cb_sub.unsubscribe()

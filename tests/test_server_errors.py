"""-ERR handling: a scripted fake server for sequences a real server will not produce on
demand, and a real nats-server with a ``permissions`` config.

The fake server listens on a loopback socket and speaks just enough protocol: INFO,
CONNECT, PING/PONG; the test decides what else it sends and when it hangs up.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from recorder import Recorder

import natsync
from natsync.testing import NATSServer

WAIT = 5.0  # upper bound for anything that should happen "soon"


# --------------------------------------------------------------------------- helpers


class FakeConn:
    """One client connection to the fake server; every read is bounded."""

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.sock.settimeout(0.05)
        self._buf = b""
        self.lines: list[bytes] = []
        self.connect: dict[str, Any] | None = None
        self.closed = threading.Event()
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def readline(self, stop: threading.Event, timeout: float = WAIT) -> bytes | None:
        """The next protocol line (payloads of PUB come as lines too); None on EOF,
        close or timeout."""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in self._buf:
            if stop.is_set() or self.closed.is_set() or time.monotonic() > deadline:
                return None
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return None
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()
        return line

    def wait_line(self, pred: Callable[[bytes], bool], timeout: float = WAIT) -> bytes | None:
        with self._cond:
            found: list[bytes] = []

            def check() -> bool:
                found[:] = [x for x in self.lines if pred(x)]
                return bool(found)

            return found[0] if self._cond.wait_for(check, timeout) else None

    def commands(self) -> list[bytes]:
        """Received lines that are protocol commands (not PUB payloads, PINGs or CONNECT)."""
        with self._cond:
            lines = list(self.lines)
        out: list[bytes] = []
        skip = False
        for line in lines:
            if skip:
                skip = False
                continue
            if line.startswith((b"PUB ", b"HPUB ")):
                skip = True
            if line in (b"PING", b"PONG") or line.startswith(b"CONNECT "):
                continue
            out.append(line)
        return out


Script = Callable[[FakeConn, threading.Event], None]


class FakeServer:
    """A scripted NATS server on 127.0.0.1.  ``script(conn, stop)`` runs for each
    accepted connection on its own thread; the default :meth:`serve` does the
    handshake and then answers PINGs until the connection or the server ends."""

    def __init__(self, script: Script | None = None, info: dict[str, Any] | None = None) -> None:
        self.script = script or self.serve
        self.info = {
            "server_id": "FAKE",
            "version": "2.15.1",
            "proto": 1,
            "headers": True,
            "max_payload": 1048576,
            **(info or {}),
        }
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self.conns: list[FakeConn] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="fake-accept", daemon=True)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._acceptor.join(WAIT)
        self._listener.close()
        with self._cond:
            conns, threads = list(self.conns), list(self._threads)
        for c in conns:
            c.close()
        for t in threads:
            t.join(WAIT)
        for c in conns:
            c.sock.close()
        assert not any(t.is_alive() for t in [self._acceptor, *threads]), "fake server threads hang"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                conn = FakeConn(sock, len(self.conns))
                self.conns.append(conn)
                name = f"fake-conn-{conn.index}"
                t = threading.Thread(target=self._run, args=(conn,), name=name, daemon=True)
                self._threads.append(t)
                self._cond.notify_all()
            t.start()

    def _run(self, conn: FakeConn) -> None:
        try:
            self.script(conn, self._stop)
        finally:
            conn.close()

    def wait_conn(self, index: int, timeout: float = WAIT) -> FakeConn:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.conns) > index, timeout), f"no connection #{index}"
            return self.conns[index]

    @property
    def accepted(self) -> int:
        with self._cond:
            return len(self.conns)

    # building blocks for scripts

    def send_info(self, conn: FakeConn, **extra: Any) -> None:
        conn.send(b"INFO " + json.dumps({**self.info, **extra}).encode() + b"\r\n")

    def read_connect(self, conn: FakeConn, stop: threading.Event) -> bool:
        line = conn.readline(stop)
        if line is None or not line.startswith(b"CONNECT "):
            return False
        conn.connect = json.loads(line[len(b"CONNECT "):])
        return True

    def handshake(self, conn: FakeConn, stop: threading.Event) -> bool:
        self.send_info(conn)
        if not self.read_connect(conn, stop):
            return False
        if conn.readline(stop) != b"PING":
            return False
        conn.send(b"PONG\r\n")
        return True

    def loop(self, conn: FakeConn, stop: threading.Event) -> None:
        """Answer PINGs; skip PUB payloads; until EOF, close or stop."""
        while True:
            line = conn.readline(stop, timeout=3600)
            if line is None:
                return
            if line == b"PING":
                conn.send(b"PONG\r\n")

    def serve(self, conn: FakeConn, stop: threading.Event) -> None:
        if self.handshake(conn, stop):
            self.loop(conn, stop)


def reject_after_first(*texts: str) -> Callable[[FakeServer], Script]:
    """A script: connection #0 is served normally; connection #k (k >= 1) gets the
    -ERR texts[k-1] (the last one repeated) in answer to CONNECT, then is closed."""

    def make(server: FakeServer) -> Script:
        def script(conn: FakeConn, stop: threading.Event) -> None:
            if conn.index == 0:
                server.serve(conn, stop)
                return
            server.send_info(conn)
            if server.read_connect(conn, stop):
                text = texts[min(conn.index - 1, len(texts) - 1)]
                conn.send(f"-ERR '{text}'\r\n".encode())

        return script

    return make


def scripted(make: Callable[[FakeServer], Script]) -> FakeServer:
    server = FakeServer()
    server.script = make(server)
    return server


FAST = {"reconnect_time_wait": 0.05, "reconnect_jitter": 0.0, "connect_timeout": 1.0}


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


# ------------------------------------------------------------------ -ERR while connected


def test_stale_connection_err_reconnects(fake: FakeServer) -> None:
    rec = Recorder()
    with natsync.connect(fake.url, **FAST, **rec.options()) as nc:
        conn0 = fake.wait_conn(0)
        conn0.send(b"-ERR 'Stale Connection'\r\n")
        conn0.close()
        assert rec.wait_count("reconnected"), "no reconnect after -ERR 'Stale Connection'"
        nc.flush(timeout=WAIT)
        assert nc.is_connected
        assert rec.counts["disconnected"] == 1
        stale = rec.errors_of(natsync.StaleConnectionError)
        assert len(stale) == 1, rec.errors
        assert len(rec.errors) == 1, rec.errors
        assert nc.stats.reconnects == 1
        assert fake.accepted == 2
    assert rec.threads <= {"natsync-events"}, rec.threads


@pytest.mark.parametrize(
    "text",
    [
        "Unknown Protocol Operation",
        "Maximum Payload Violation",
        "Parser Error",
        "maximum connections exceeded",
    ],
)
def test_fatal_err_reconnects_and_reports_once(fake: FakeServer, text: str) -> None:
    rec = Recorder()
    with natsync.connect(fake.url, **FAST, **rec.options()) as nc:
        conn0 = fake.wait_conn(0)
        conn0.send(f"-ERR '{text}'\r\n".encode())
        # the real server hangs up after these; the client must not wait for that
        assert rec.wait_count("reconnected"), f"no reconnect after -ERR {text!r}"
        nc.flush(timeout=WAIT)
        assert len(rec.errors) == 1, rec.errors
        assert text in str(rec.errors[0])
        assert type(rec.errors[0]) is natsync.NatsError
        assert rec.counts["disconnected"] == 1


def test_fatal_err_without_reconnect_closes(fake: FakeServer) -> None:
    rec = Recorder()
    nc = natsync.connect(fake.url, allow_reconnect=False, **FAST, **rec.options())
    sub = nc.subscribe("x")
    fake.wait_conn(0).send(b"-ERR 'Unknown Protocol Operation'\r\n")
    assert rec.wait_count("closed"), "client did not close"
    assert nc.is_closed
    with pytest.raises(natsync.ConnectionClosedError):
        sub.next_msg(timeout=1)
    with pytest.raises(natsync.ConnectionClosedError):
        nc.publish("x", b"")
    assert len(rec.errors) == 1, rec.errors
    assert fake.accepted == 1
    nc.close()


def test_protocol_error_reported_once_and_reconnects(fake: FakeServer) -> None:
    rec = Recorder()
    with natsync.connect(fake.url, **FAST, **rec.options()) as nc:
        fake.wait_conn(0).send(b"BOGUS line\r\n")
        assert rec.wait_count("reconnected")
        nc.flush(timeout=WAIT)
        assert [type(e) for e in rec.errors] == [natsync.ProtocolError], rec.errors


def test_permissions_violation_keeps_connection(fake: FakeServer) -> None:
    rec = Recorder()
    with natsync.connect(fake.url, **FAST, **rec.options()) as nc:
        conn0 = fake.wait_conn(0)
        conn0.send(b"-ERR 'Permissions Violation for Publish to \"foo.bar\"'\r\n")
        conn0.send(b"-ERR 'Permissions Violation for Subscription to \"x.*\" using queue \"workers\"'\r\n")
        assert rec.wait_errors(2)
        nc.flush(timeout=WAIT)  # the same connection still answers
        pub, sub = rec.errors
        assert isinstance(pub, natsync.PermissionsError)
        assert (pub.operation, pub.subject, pub.queue) == ("publish", "foo.bar", None)
        assert isinstance(sub, natsync.PermissionsError)
        assert (sub.operation, sub.subject, sub.queue) == ("subscribe", "x.*", "workers")
        assert nc.is_connected
        assert rec.counts["disconnected"] == 0
        assert fake.accepted == 1
        assert nc.stats.errors_received == 2


@pytest.mark.parametrize("text", ["maximum subscriptions exceeded", "Invalid Subject"])
def test_non_fatal_err_keeps_connection(fake: FakeServer, text: str) -> None:
    rec = Recorder()
    with natsync.connect(fake.url, **FAST, **rec.options()) as nc:
        fake.wait_conn(0).send(f"-ERR '{text}'\r\n".encode())
        assert rec.wait_errors(1)
        nc.flush(timeout=WAIT)
        assert nc.is_connected
        assert len(rec.errors) == 1 and text in str(rec.errors[0])
        assert rec.counts["disconnected"] == 0
        assert fake.accepted == 1


def test_error_cb_never_on_reader_and_slow_error_cb_does_not_stall(fake: FakeServer) -> None:
    release = threading.Event()
    seen: list[str] = []

    def slow_error_cb(err: natsync.NatsError) -> None:
        seen.append(threading.current_thread().name)
        release.wait(WAIT)

    with natsync.connect(fake.url, error_cb=slow_error_cb, **FAST) as nc:
        conn0 = fake.wait_conn(0)
        for i in range(50):
            conn0.send(f"-ERR 'Permissions Violation for Publish to \"s.{i}\"'\r\n".encode())
        # error_cb is stuck on the first error; reading goes on
        nc.flush(timeout=WAIT)
        assert nc.stats.errors_received == 50
        release.set()
    assert seen and set(seen) == {"natsync-events"}
    assert len(seen) == 50


# ------------------------------------------------------------- authorization errors


def test_auth_error_twice_removes_only_server_and_closes() -> None:
    rec = Recorder()
    with scripted(reject_after_first("Authorization Violation")) as fake:
        nc = natsync.connect(fake.url, max_reconnect_attempts=-1, **FAST, **rec.options())
        fake.wait_conn(0).close()
        assert rec.wait_count("closed"), "not closed after two authorization errors"
        assert nc.is_closed
        auth = rec.errors_of(natsync.AuthorizationError)
        assert len(auth) == 2, rec.errors
        assert rec.errors_of(natsync.NoServersError), rec.errors
        assert fake.accepted == 3  # the first connection and two rejected attempts
        assert nc.servers == []
        nc.close()


def test_different_auth_errors_are_not_the_same_error() -> None:
    rec = Recorder()
    make = reject_after_first("User Authentication Expired", "Authorization Violation")
    with scripted(make) as fake:
        nc = natsync.connect(fake.url, max_reconnect_attempts=-1, **FAST, **rec.options())
        fake.wait_conn(0).close()
        assert rec.wait_count("closed")
        # expired, violation, violation: only the repeat removes the server
        assert len(rec.errors_of(natsync.AuthorizationError)) == 3, rec.errors
        assert fake.accepted == 4
        nc.close()


def test_live_auth_error_counts_toward_removal() -> None:
    """An authorization -ERR on a live connection, then the same error on the reconnect:
    twice in a row from that server, so it leaves the pool (as nats.go)."""
    rec = Recorder()
    with scripted(reject_after_first("Authorization Violation")) as fake:
        nc = natsync.connect(fake.url, max_reconnect_attempts=-1, **FAST, **rec.options())
        fake.wait_conn(0).send(b"-ERR 'Authorization Violation'\r\n")
        assert rec.wait_count("closed")
        assert len(rec.errors_of(natsync.AuthorizationError)) == 2, rec.errors
        assert fake.accepted == 2
        assert rec.counts["disconnected"] == 1
        nc.close()


def test_auth_error_twice_in_a_row_from_one_server_across_reconnects() -> None:
    """B rejects every CONNECT; A accepts. B is tried, fails, A takes over; A breaks
    again, B fails again: twice in a row from B, so B leaves the pool, A stays."""
    rec = Recorder()

    def b_script_for(server: FakeServer) -> Script:
        def script(conn: FakeConn, stop: threading.Event) -> None:
            server.send_info(conn)
            if server.read_connect(conn, stop):
                conn.send(b"-ERR 'Authorization Violation'\r\n")

        return script

    with FakeServer() as a, scripted(b_script_for) as b:
        nc = natsync.connect([a.url, b.url], dont_randomize=True, **FAST, **rec.options())
        assert nc.connected_url == a.url
        a.wait_conn(0).close()
        assert rec.wait_count("reconnected", 1)
        assert b.accepted == 1 and a.accepted == 2
        a.wait_conn(1).close()
        assert rec.wait_count("reconnected", 2)
        assert b.accepted == 2
        assert rec.wait(lambda: nc.servers == [a.url]), nc.servers
        a.wait_conn(2).close()
        assert rec.wait_count("reconnected", 3)
        assert b.accepted == 2, "a removed server was tried again"
        assert len(rec.errors_of(natsync.AuthorizationError)) == 2
        nc.close()


def test_auth_error_on_initial_connect_raises() -> None:
    def script_for(server: FakeServer) -> Script:
        def script(conn: FakeConn, stop: threading.Event) -> None:
            server.send_info(conn)
            if server.read_connect(conn, stop):
                conn.send(b"-ERR 'Authorization Violation'\r\n")

        return script

    with scripted(script_for) as fake:
        started = time.monotonic()
        with pytest.raises(natsync.AuthorizationError) as exc:
            natsync.connect(f"nats://sekrit@127.0.0.1:{fake.port}", **FAST)
        assert time.monotonic() - started < 2.0
        assert "sekrit" not in str(exc.value)
        assert f"127.0.0.1:{fake.port}" in str(exc.value)
        assert fake.accepted == 1


# --------------------------------------------------------------- resend on reconnect


def test_resend_subscriptions_then_buffered_publishes() -> None:
    """After a reconnect the client sends every live subscription (auto-unsubscribe ones
    with the count left), then the publishes buffered during the outage, in order."""
    gate = threading.Event()

    def make(server: FakeServer) -> Script:
        def script(conn: FakeConn, stop: threading.Event) -> None:
            if conn.index > 0:
                gate.wait(WAIT)  # hold the reconnect until the test has buffered its publishes
            server.serve(conn, stop)

        return script

    rec = Recorder()
    with scripted(make) as fake:
        nc = natsync.connect(fake.url, reconnect_time_wait=0.05, connect_timeout=WAIT, **rec.options())
        try:
            nc.subscribe("plain")
            nc.subscribe("grouped", queue="workers")
            limited = nc.subscribe("limited")
            gone = nc.subscribe("gone")
            nc.flush(timeout=WAIT)
            conn0 = fake.wait_conn(0)
            sid = limited.sid
            conn0.send(b"MSG limited %d 1\r\na\r\nMSG limited %d 1\r\nb\r\n" % (sid, sid))
            assert limited.next_msg(timeout=WAIT).data == b"a"
            assert limited.next_msg(timeout=WAIT).data == b"b"
            limited.unsubscribe(limit=5)  # 3 more to come
            conn0.close()
            assert rec.wait_count("disconnected")
            gone.unsubscribe()  # while disconnected: must not come back
            late = nc.subscribe("late")  # while disconnected: sent on reconnect
            for i in range(3):
                nc.publish("buffered", b"%d" % i)
            gate.set()
            assert rec.wait_count("reconnected")
            nc.flush(timeout=WAIT)
            conn1 = fake.wait_conn(1)
            cmds = conn1.commands()
            subs = [c for c in cmds if c.startswith((b"SUB ", b"UNSUB "))]
            assert set(subs) == {
                b"SUB plain 1",
                b"SUB grouped workers 2",
                b"SUB limited %d" % sid,
                b"UNSUB %d 3" % sid,
                b"SUB late %d" % late.sid,
            }, subs
            assert cmds.index(b"SUB limited %d" % sid) < cmds.index(b"UNSUB %d 3" % sid)
            pubs = [c for c in cmds if c.startswith(b"PUB ")]
            assert pubs == [b"PUB buffered 1"] * 3
            assert max(cmds.index(s) for s in subs) < cmds.index(pubs[0]), cmds
        finally:
            gate.set()
            nc.close()


# ------------------------------------------------------------- real server permissions

PERMISSIONS_CONFIG = """
authorization {
  users = [
    {
      user: "alice"
      password: "wonderland"
      permissions: {
        publish: { deny: ["secret.>"] }
        subscribe: { deny: ["hidden.>"] }
      }
    }
  ]
}
"""


def test_real_server_permissions_violation() -> None:
    rec = Recorder()
    with NATSServer(config=PERMISSIONS_CONFIG) as server:
        nc = natsync.connect(server.url, user="alice", password="wonderland", **FAST, **rec.options())
        try:
            ok = nc.subscribe("open.x")
            nc.publish("secret.plans", b"x")
            nc.subscribe("hidden.stuff")
            assert rec.wait_errors(2), rec.errors
            perms = rec.errors_of(natsync.PermissionsError)
            assert len(perms) == 2, rec.errors
            by_op = {p.operation: p.subject for p in perms}  # type: ignore[attr-defined]
            assert by_op == {"publish": "secret.plans", "subscribe": "hidden.stuff"}
            # the connection stays up and works
            nc.publish("open.x", b"still here")
            assert ok.next_msg(timeout=WAIT).data == b"still here"
            assert nc.is_connected
            assert rec.counts["disconnected"] == 0
            assert nc.stats.errors_received == 2
        finally:
            nc.close()

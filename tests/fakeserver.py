"""A scripted fake NATS server on a loopback socket, for tests that need a server to
misbehave (or to show what a client sent).

Each accepted connection runs the next *script* (a function taking a :class:`FakeConn`)
on a thread of its own; connections past the list run ``default`` (or are closed at
once).  :meth:`FakeServer.close` shuts every socket down, which wakes any script blocked
on it, and joins every thread.  Exceptions a script raises (other than the client going
away) are kept in :attr:`FakeServer.errors`.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

Script = Callable[["FakeConn"], None]

IO_TIMEOUT = 10.0  # no socket call of a script waits longer than this


class ClientGone(Exception):
    """The client closed the connection (or the server is closing)."""


class FakeConn:
    """One accepted connection, seen from the server side."""

    def __init__(self, sock: socket.socket, server: FakeServer, index: int) -> None:
        self.sock: socket.socket | ssl.SSLSocket = sock
        self.server = server
        self.index = index
        self._buf = bytearray()
        self._send_lock = threading.Lock()  # a script may send from two threads
        self.received: list[bytes] = []  # control lines read by serve()
        sock.settimeout(IO_TIMEOUT)

    # --- low level -------------------------------------------------------------------------

    def wait(self, timeout: float) -> bool:
        """Pause a script for *timeout* s; True (at once) when the server is closing."""
        return self.server._stop.wait(timeout)

    def send(self, data: bytes) -> None:
        try:
            with self._send_lock:
                self.sock.sendall(data)
        except OSError as e:
            raise ClientGone(str(e)) from None

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except OSError as e:
            raise ClientGone(str(e)) from None
        if not chunk:
            raise ClientGone("client closed the connection")
        self._buf += chunk

    def read_line(self) -> bytes:
        """The next line the client sent, without CRLF."""
        while True:
            i = self._buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 2]
                return line
            self._fill()

    def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._fill()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def start_tls(self, context: ssl.SSLContext) -> None:
        """Upgrade to TLS as the server side (the handshake runs now)."""
        assert not self._buf, "client sent plaintext before the TLS handshake"
        self.sock = context.wrap_socket(self.sock, server_side=True)
        self.sock.settimeout(IO_TIMEOUT)

    # --- protocol --------------------------------------------------------------------------

    def info(self, **fields: Any) -> None:
        data: dict[str, Any] = {
            "server_id": "FAKE",
            "server_name": "fake",
            "version": "2.15.1",
            "proto": 1,
            "headers": True,
            "max_payload": 1024 * 1024,
            "host": "127.0.0.1",
            "port": self.server.port,
            "client_id": self.index + 1,
        }
        data.update(fields)
        self.send(b"INFO " + json.dumps(data).encode() + b"\r\n")

    def read_connect(self) -> dict[str, Any]:
        """Read ``CONNECT {...}`` and the ``PING`` after it; return the CONNECT object."""
        line = self.read_line()
        assert line.startswith(b"CONNECT "), line
        connect: dict[str, Any] = json.loads(line[8:])
        self.server.connects.append(connect)
        ping = self.read_line()
        assert ping == b"PING", ping
        return connect

    def handshake(self, **info: Any) -> dict[str, Any]:
        """INFO, read CONNECT + PING, answer PONG; return the CONNECT object."""
        self.info(**info)
        connect = self.read_connect()
        self.send(b"PONG\r\n")
        return connect

    def serve(self) -> None:
        """Act as a minimal server until the client leaves: answer PING, deliver PUB/HPUB
        to SUBs on the same subject, ignore the rest."""
        subs: dict[str, list[str]] = {}
        try:
            while True:
                line = self.read_line()
                self.received.append(line)
                parts = line.split()
                if not parts:
                    continue
                op = parts[0].upper()
                if op == b"PING":
                    self.send(b"PONG\r\n")
                elif op == b"SUB":
                    subs.setdefault(parts[1].decode(), []).append(parts[-1].decode())
                elif op in (b"PUB", b"HPUB"):
                    size = int(parts[-1])
                    payload = self.read_exact(size + 2)[:-2]
                    subject = parts[1].decode()
                    reply = parts[2].decode() + " " if len(parts) == (5 if op == b"HPUB" else 4) else ""
                    for sid in subs.get(subject, []):
                        if op == b"PUB":
                            head = f"MSG {subject} {sid} {reply}{size}\r\n"
                        else:
                            head = f"HMSG {subject} {sid} {reply}{parts[-2].decode()} {size}\r\n"
                        self.send(head.encode() + payload + b"\r\n")
        except ClientGone:
            return

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class FakeServer:
    """Listen on 127.0.0.1 (a free port); run *scripts* on the connections, in order."""

    def __init__(self, scripts: Iterable[Script] = (), default: Script | None = None) -> None:
        self._lsock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._lsock.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self._scripts: deque[Script] = deque(scripts)
        self._default = default
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._conns: list[FakeConn] = []
        self.errors: list[BaseException] = []
        self.connects: list[dict[str, Any]] = []
        self.accepted = 0
        self.done: list[threading.Event] = []  # one per connection, set when its script ends
        self._acceptor = threading.Thread(target=self._accept_loop, name="fake-server-accept", daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._lsock.accept()
            except OSError:
                return
            if self._stop.is_set():
                sock.close()
                return
            with self._lock:
                index = self.accepted
                self.accepted += 1
                script = self._scripts.popleft() if self._scripts else self._default
                conn = FakeConn(sock, self, index)
                self._conns.append(conn)
                done = threading.Event()
                self.done.append(done)
                t = threading.Thread(
                    target=self._run, args=(script, conn, done), name=f"fake-server-{index}", daemon=True
                )
                self._threads.append(t)
            t.start()

    def _run(self, script: Script | None, conn: FakeConn, done: threading.Event) -> None:
        try:
            if script is not None:
                script(conn)
        except ClientGone:
            pass
        except BaseException as e:  # noqa: BLE001 - reported to the test
            if not self._stop.is_set():
                self.errors.append(e)
        finally:
            conn.close()
            done.set()

    def wait_connections(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until *n* connections have been accepted and their scripts ended."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                events = list(self.done)
            if len(events) >= n:
                return all(e.wait(max(deadline - time.monotonic(), 0)) for e in events[:n])
            if time.monotonic() >= deadline:
                return False
            self._stop.wait(0.01)

    def close(self) -> None:
        self._stop.set()
        # wake accept(): connect to ourselves, then close the listener
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self._lsock.close()
        self._acceptor.join(5)
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for c in conns:
            c.close()
        for t in threads:
            t.join(IO_TIMEOUT + 5)
        alive = [t.name for t in threads if t.is_alive()]
        assert not self._acceptor.is_alive() and not alive, f"fake server threads still running: {alive}"

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

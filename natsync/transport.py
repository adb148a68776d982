"""A blocking TCP socket with timeouts; nothing NATS-specific.

One thread reads (``recv_into``), one thread at a time writes (``sendall``, serialised
by the client), and any thread may call :meth:`shutdown` to wake both at once.
"""

from __future__ import annotations

import socket
import ssl
import threading

__all__ = ["Transport"]


class Transport:
    """A connected stream socket (TCP, optionally upgraded to TLS)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._closed = False
        self._lock = threading.Lock()
        self.tls = False

    @classmethod
    def connect(cls, host: str, port: int, timeout: float) -> Transport:
        """Open a TCP connection within *timeout* seconds."""
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not all socket families have it
            pass
        return cls(sock)

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def start_tls(self, context: ssl.SSLContext, server_hostname: str | None, timeout: float) -> None:
        """Upgrade the connection to TLS (handshake within *timeout*)."""
        self._sock.settimeout(timeout)
        self._sock = context.wrap_socket(self._sock, server_hostname=server_hostname)
        self.tls = True

    def recv_into(self, buf: bytearray | memoryview) -> int:
        """Read into *buf*; 0 means the peer closed the connection."""
        return self._sock.recv_into(buf)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        self._sock.sendall(data)

    def shutdown(self) -> None:
        """Wake any thread blocked in recv or send on this socket; idempotent."""
        with self._lock:
            if self._closed:
                return
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Shut down and close the socket; idempotent."""
        self.shutdown()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._sock.close()
        except OSError:  # pragma: no cover
            pass

    def detach_without_shutdown(self) -> None:
        """Forget the socket without touching the connection (used in a forked child)."""
        with self._lock:
            self._closed = True

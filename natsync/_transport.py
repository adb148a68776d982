"""A blocking TCP socket with timeouts, optionally upgraded to TLS; nothing NATS-specific.

One thread reads (``recv_into``), one thread at a time writes (``sendall``, serialised
by the client), and any thread may call :meth:`Transport.shutdown` to wake both at once.

Plain TCP: ``recv_into`` and ``sendall`` *are* the socket's own bound methods, so the
plain path costs nothing over a bare socket.

TLS: CPython's ``SSLSocket`` must not be used by a reader and a writer thread at once
(OpenSSL's ``SSL`` object is not thread-safe, and ``SSL_read``/``SSL_write`` on one
object from two threads can corrupt its state).  So the transport keeps the raw TCP
socket and drives an :class:`ssl.SSLObject` over two :class:`ssl.MemoryBIO`\\ s:

* every call on the ``SSLObject`` and its BIOs (encrypt, decrypt, handshake step) runs
  under ``_ssl_lock``, which is held only for in-memory work, never across a socket
  call;
* raw socket I/O runs outside that lock: the reader blocks in ``recv`` on the raw socket
  while the writer blocks in ``send`` on it, which the OS allows;
* ciphertext leaves the outgoing BIO in FIFO order, and whoever takes it out sends it
  before anyone else may take more (``_send_lock``), so TLS records reach the wire in
  the order they were made.  The reader only *tries* that lock (for the rare records a
  read produces, such as a TLS 1.3 KeyUpdate answer): a reader never waits behind a
  writer that is stuck on a peer that stopped reading.
* large writes are encrypted in chunks, so the reader is never kept from decrypting
  for long and the ciphertext in memory stays small.

:meth:`Transport.shutdown` shuts the raw socket down, which wakes a thread blocked in ``recv``
or ``send`` on it in either mode.

Closing without losing what was sent: on Linux (and most systems), closing a TCP socket
whose receive buffer still holds unread bytes (a late PONG, a server PING) sends a reset
(RST) instead of a FIN, and the bytes still in the socket's send queue (accepted by
``send()`` but not yet taken by the peer, whose window was full) are thrown away: the
server never sees them. :meth:`Transport.shutdown_write` (a FIN after the data) followed
by reading to the server's end of stream (:meth:`Transport.read_to_eof`, or the reader
thread) is the graceful close: the server reads everything before it sees the FIN and
closes its side then, so the end of stream means "the server read all we sent". Under
TLS no close_notify is sent: the server reads every record before the TCP FIN all the
same.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Final

__all__ = ["Transport", "TLSHandshakeEOFError", "TLSPlaintextError", "WriteStalledError", "tls_error_hint"]

# Plaintext handed to SSLObject.write per lock hold (a few 16 KiB TLS records).
_TLS_WRITE_CHUNK: Final = 64 * 1024
# Ciphertext read from the raw socket per recv.
_TLS_RAW_READ: Final = 128 * 1024

Buffer = bytes | bytearray | memoryview


# Bytes handed to one send() by write(): a peer that takes nothing for `stall` seconds
# breaks the connection, one that is merely slow does not.
_WRITE_CHUNK: Final = 1024 * 1024

# POSIX: a socket with a timeout has a non-blocking descriptor (CPython sets O_NONBLOCK
# for any timeout but None), so ``os.write`` on it is one ``write`` that never waits,
# where ``socket.send`` on such a socket first polls (one more syscall, every time).
_FD_WRITE: Final = os.name == "posix"


class WriteStalledError(ConnectionError):
    """The peer took no byte for longer than the write deadline (it stopped reading)."""


class TLSPlaintextError(ssl.SSLError):
    """The peer answered the TLS handshake with plaintext."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "plaintext answer to the TLS handshake"


class TLSHandshakeEOFError(ssl.SSLEOFError):
    """The peer closed the connection during the TLS handshake without a word."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "EOF during the TLS handshake"


class Transport:
    """A connected stream socket (TCP, optionally upgraded to TLS).

    Attributes:
        recv_into: ``recv_into(buf) -> int`` reads (decrypted) bytes into *buf*;
            0 means the peer closed the connection.
        sendall: ``sendall(data)`` sends (encrypts) all of *data*.
        tls: True once :meth:`start_tls` has succeeded.
        peer_closed: True once a read returned the end of stream (the peer closed its
            side after reading everything sent before our FIN); set by whoever reads.
    """

    _in: ssl.MemoryBIO
    _out: ssl.MemoryBIO

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._closed = False
        self._lock = threading.Lock()
        self.tls: bool = False
        # set by the one reader that saw the end of stream (read by close() after it)
        self.peer_closed: bool = False
        self.recv_into: Callable[[bytearray | memoryview], int] = sock.recv_into
        self.sendall: Callable[[Buffer], None] = sock.sendall
        # TLS state (set by start_tls)
        self._ssl: ssl.SSLObject | None = None
        # self._in / self._out: the TLS memory BIOs, set by start_tls
        self._ssl_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._raw = bytearray(0)
        self._eof = False
        self.stall: float = 60.0  # write deadline of sends that have no caller's (set by the client)
        self._poll: select.poll | None = None  # for try_send (used under the writer's lock)
        self._rpoll: select.poll | None = None  # for wait_readable (used by the one reader)

    @classmethod
    def connect(cls, host: str, port: int, timeout: float) -> Transport:
        """Open a TCP connection within *timeout* seconds."""
        family = _ip_family(host)
        if family is None:
            sock = socket.create_connection((host, port), timeout=timeout)
        else:  # an IP address: no name lookup
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect((host, port))
            except BaseException:
                sock.close()
                raise
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # pragma: no cover - not all socket families have it
            pass
        return cls(sock)

    def write(self, data: Buffer, stall: float, deadline: float | None = None) -> None:
        """Send all of *data* (encrypted under TLS) from the one writer of the connection.

        Raises :class:`WriteStalledError` when the peer takes no byte for *stall*
        seconds, or when *deadline* (a ``time.monotonic()`` value) passes first; what was
        sent then is unknown, so the caller must drop the connection. Each blocking
        ``send`` waits at most the socket's timeout (see :meth:`settimeout`), so the
        deadlines are kept within one socket timeout. OSError when the connection broke.
        """
        if self.tls:
            self._tls_write(data, stall, deadline)
        else:
            self._raw_write(data, stall, deadline)

    def _raw_write(self, data: Buffer, stall: float, deadline: float | None) -> None:
        view = _bytes_view(data)
        sock = self._sock
        send = sock.send
        # one write() while the socket takes bytes at once; once it is full, the polling
        # send (it waits up to the socket's timeout for a third of the buffer to be
        # free) for the rest of this call: no trickle of tiny writes to a slow peer
        fd_write = _FD_WRITE and sock.gettimeout() is not None
        total = len(view)
        off = 0
        last = time.monotonic()
        while off < total:
            k = 0
            chunk = view[off : off + _WRITE_CHUNK]
            try:
                if fd_write:
                    try:
                        k = os.write(sock.fileno(), chunk)
                    except BlockingIOError:
                        fd_write = False
                        k = send(chunk)
                else:
                    k = send(chunk)
            except TimeoutError:
                k = 0
            now = time.monotonic() if k == 0 or deadline is not None else last
            if k:
                off += k
                last = now
            elif now - last >= stall:
                raise WriteStalledError(f"the server took no data for {stall:g} s (it stopped reading)")
            if deadline is not None and off < total and now >= deadline:
                raise WriteStalledError("write deadline passed before everything was sent")

    def try_send(self, data: Buffer) -> int:
        """Send what the socket takes at once without waiting; return the bytes sent.

        Plain TCP only (returns 0 under TLS: leave it to the writer). Raises OSError when
        the connection broke.
        """
        if self.tls:
            return 0
        sock = self._sock
        if _FD_WRITE and sock.gettimeout() is not None:
            # a non-blocking descriptor: one write() that takes what fits (a closed
            # socket's fileno() is -1: EBADF, an OSError like a send's)
            try:
                return os.write(sock.fileno(), data)
            except BlockingIOError:
                return 0
        # full: a send would wait (a socket with a timeout polls first)
        poll = self._poll
        if poll is None:
            poll_type = getattr(select, "poll", None)  # gevent's monkey-patching removes it
            if poll_type is None:
                if not select.select([], [sock], [], 0)[1]:
                    return 0
            else:
                poll = self._poll = poll_type()
                poll.register(sock, select.POLLOUT)
        if poll is not None and not poll.poll(0):
            return 0
        try:
            return sock.send(data, socket.MSG_DONTWAIT)
        except (BlockingIOError, TimeoutError):
            return 0

    def wait_readable(self, timeout: float) -> bool:
        """Plain TCP: wait up to *timeout* s until a receive would not block (data, end
        of stream or an error); True then. A closed transport is readable at once."""
        if self._closed:
            return True  # recv_into raises
        poll = self._rpoll
        if poll is None:
            poll_type = getattr(select, "poll", None)  # gevent's monkey-patching removes it
            if poll_type is None:
                return bool(select.select([self._sock], [], [], timeout)[0])
            poll = self._rpoll = poll_type()
            poll.register(self._sock, select.POLLIN)
        return bool(poll.poll(timeout * 1000.0))

    def settimeout(self, timeout: float | None) -> None:
        """Set the timeout of every later blocking call (send and receive)."""
        self._sock.settimeout(timeout)

    # --- TLS -----------------------------------------------------------------------------

    def start_tls(self, context: ssl.SSLContext, server_hostname: str | None, timeout: float) -> None:
        """Upgrade the connection to TLS: run the client handshake within *timeout* s.

        *server_hostname* is the name (or IP address) the certificate is checked
        against when *context* checks host names, and the SNI sent.  Call it before
        any other thread uses the transport.

        Raises:
            ssl.SSLError: the handshake failed (certificate not trusted, wrong host
                name, alert from the server, the server answered in plaintext, ...).
            TimeoutError: the handshake did not finish within *timeout*.
            OSError: the connection broke.
        """
        if self.tls:
            raise ValueError("TLS is already started on this transport")
        deadline = time.monotonic() + timeout
        incoming = ssl.MemoryBIO()
        outgoing = ssl.MemoryBIO()
        obj = context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_hostname)
        sock = self._sock
        first: bytes | None = None
        while True:
            try:
                obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLError as e:
                # Send the alert OpenSSL made (so the server logs why), then fail.
                self._send_best_effort(outgoing.read())
                if first is not None and _looks_like_plaintext(first):
                    raise TLSPlaintextError(
                        f"the server answered the TLS handshake in plaintext ({_show(first)}): "
                        "it expects TLS to start after its greeting, not first"
                    ) from None
                raise e from None
            out = outgoing.read()
            if out:
                sock.settimeout(_left(deadline))
                sock.sendall(out)
            if done:
                break
            sock.settimeout(_left(deadline))
            data = sock.recv(_TLS_RAW_READ)
            if first is None:
                first = data
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
                if first == b"":
                    raise TLSHandshakeEOFError(
                        "the server closed the connection during the TLS handshake without answering"
                    )
        self._ssl = obj
        self._in = incoming
        self._out = outgoing
        self._raw = bytearray(_TLS_RAW_READ)
        self._eof = False
        self.recv_into = self._tls_recv_into
        self.sendall = self._tls_sendall
        self.tls = True

    def _send_best_effort(self, data: bytes) -> None:
        if not data:
            return
        try:
            self._sock.settimeout(0.5)
            self._sock.sendall(data)
        except OSError:
            pass

    def _tls_recv_into(self, buf: bytearray | memoryview) -> int:
        obj = self._ssl
        assert obj is not None
        # typeshed says SSLObject.read returns bytes; with a buffer it returns the count
        read_into: Callable[[int, memoryview], int] = obj.read  # type: ignore[assignment]
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        size = len(view)
        if size == 0:
            return 0
        raw = self._raw
        raw_view = memoryview(raw)
        while True:
            with self._ssl_lock:
                n = 0
                while n < size:
                    try:
                        k = read_into(size - n, view[n:])
                    except ssl.SSLWantReadError:
                        break
                    except ssl.SSLZeroReturnError:
                        self._eof = True
                        break
                    except ssl.SSLEOFError:
                        if not self._in.eof:
                            raise
                        self._eof = True  # EOF without close_notify: the peer is gone all the same
                        break
                    if k == 0:
                        self._eof = True
                        break
                    n += k
                pending_out = self._out.pending
            if pending_out:
                self._flush_out(blocking=False)
            if n or self._eof:
                return n
            got = self._sock.recv_into(raw)
            with self._ssl_lock:
                if got:
                    self._in.write(raw_view[:got])
                else:
                    self._in.write_eof()

    def _tls_sendall(self, data: Buffer) -> None:
        obj = self._ssl
        assert obj is not None
        view = _bytes_view(data)
        total = len(view)
        sock = self._sock
        with self._send_lock:
            off = 0
            while off < total:
                with self._ssl_lock:
                    obj.write(view[off:off + _TLS_WRITE_CHUNK])
                    out = self._out.read()
                sock.sendall(out)
                off += _TLS_WRITE_CHUNK
            self._drain_out()
        self._recheck_out()

    def _tls_write(self, data: Buffer, stall: float, deadline: float | None) -> None:
        obj = self._ssl
        assert obj is not None
        view = _bytes_view(data)
        total = len(view)
        with self._send_lock:
            off = 0
            while off < total:
                with self._ssl_lock:
                    obj.write(view[off : off + _TLS_WRITE_CHUNK])
                    out = self._out.read()
                self._raw_write(out, stall, deadline)
                off += _TLS_WRITE_CHUNK
            self._drain_out(stall)
        self._recheck_out()

    def _drain_out(self, stall: float | None = None) -> None:
        """Send whatever ciphertext is waiting (called with _send_lock held)."""
        while True:
            with self._ssl_lock:
                out = self._out.read()
            if not out:
                return
            if stall is None and self._sock.gettimeout() is None:
                self._sock.sendall(out)
            else:
                # never a half-sent record on a timeout: wait for progress up to the stall limit
                self._raw_write(out, stall if stall is not None else self.stall, None)

    def _recheck_out(self) -> None:
        # Ciphertext a reader produced while we held _send_lock (its try failed then).
        with self._ssl_lock:
            pending = self._out.pending
        if pending:
            self._flush_out(blocking=True)

    def _flush_out(self, blocking: bool) -> None:
        """Send waiting ciphertext; without *blocking*, leave it to the current sender."""
        while True:
            if not self._send_lock.acquire(blocking):
                return  # the holder checks again after releasing
            try:
                self._drain_out()
            finally:
                self._send_lock.release()
            with self._ssl_lock:
                if not self._out.pending:
                    return

    # --- closing -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Wake any thread blocked in recv or send on this socket; idempotent."""
        with self._lock:
            if self._closed:
                return
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def shutdown_write(self) -> None:
        """Send a FIN after everything sent so far (the peer reads to its end of stream,
        then closes); reading goes on. Only once no thread writes any more; idempotent."""
        with self._lock:
            if self._closed:
                return
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def read_to_eof(self, deadline: float) -> bool:
        """Read and discard until the peer's end of stream or *deadline* (a
        ``time.monotonic()`` value); True when the end of stream came (see
        :attr:`peer_closed`). For a caller that is the only reader and the last user of
        the socket (it changes the socket's timeout); False on a broken connection."""
        buf = bytearray(16 * 1024)
        while not self.peer_closed:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self._sock.settimeout(left)
                n = self.recv_into(buf)
            except TimeoutError:
                continue
            except (OSError, ValueError):  # reset, or closed meanwhile
                return False
            if not n:
                self.peer_closed = True
        return True

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
        """Forget the socket without touching the connection (used in a forked child).

        Acquires nothing: every lock of this object was copied from the parent, where a
        thread that does not exist in the child may have held it at the fork. They are
        replaced by new ones instead, and the object is marked closed."""
        self._lock = threading.Lock()
        self._ssl_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._closed = True


def _ip_family(host: str) -> socket.AddressFamily | None:
    """AF_INET / AF_INET6 when *host* is an IP address literal, else None (a name)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family
    return None


def _bytes_view(data: Buffer) -> memoryview:
    """*data* as a flat view of bytes (sliced per send without copying)."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("TLS handshake timed out")
    return left


def _looks_like_plaintext(data: bytes) -> bool:
    # A TLS record starts with a content type byte of 20..24; text starts with a letter.
    return bool(data) and (data[:1].isalpha() or data[:1] in (b"+", b"-"))


def _show(data: bytes) -> str:
    text = data[:24].decode("ascii", "backslashreplace")
    return repr(text + ("..." if len(data) > 24 else ""))


def tls_error_hint(err: BaseException) -> str:
    """A short hint (starting with ``": "``) on how to fix a TLS failure, or ``""``."""
    text = str(err).lower()
    if isinstance(err, ssl.SSLCertVerificationError) or "certificate verify failed" in text:
        if "hostname mismatch" in text or "ip address mismatch" in text:
            return (
                ": the server's certificate is not valid for the name checked; connect with the "
                "name the certificate was issued for, or set tls_hostname"
            )
        return (
            ": the server's certificate is not trusted; pass tls=ssl.create_default_context(cafile=...) "
            "with the CA that signed it"
        )
    if "certificate required" in text or "certificate_required" in text:
        return (
            ": the server requires a client certificate (mutual TLS); load one with "
            "ctx.load_cert_chain(certfile, keyfile) and pass tls=ctx"
        )
    if "bad certificate" in text or "unknown ca" in text or "certificate unknown" in text:
        return ": the server rejected the client certificate; use one signed by a CA the server trusts"
    if "plaintext" in text or "wrong version number" in text or "record layer failure" in text:
        return ""
    if "eof" in text or "handshake failure" in text:
        return (
            ": the server ended the TLS handshake; it may require a client certificate "
            "or not accept the TLS version or ciphers offered"
        )
    return ""

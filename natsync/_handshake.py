"""Dialling one server: TCP, TLS, INFO, CONNECT, PING/PONG.

:func:`handshake` runs on the thread that connects (the caller of ``connect()``, or the
reader thread while reconnecting) and touches nothing of the client but what it is
given: it takes no lock and starts no thread. The client registers the transport with
*on_dial* so that ``close()`` can shut a handshake in progress down.
"""

from __future__ import annotations

import builtins
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from . import _protocol as protocol
from ._auth import resolve_connect_auth
from ._options import Options
from ._protocol import OK, PING, PONG, Err, Info, Parser
from ._servers import Server
from ._transport import Transport, tls_error_hint
from ._version import __version__
from .errors import AuthorizationError, NatsError, ProtocolError, SecureConnectionError, TimeoutError

__all__ = ["Connection", "handshake", "handshake_error", "VERSION"]

VERSION: Final[str] = __version__  # sent in CONNECT as the client version

_READ_SIZE = 16 * 1024  # a longer INFO (a big cluster's connect_urls) takes more reads

# -ERR texts, compared in lower case after stripping quotes
AUTH_ERRORS = (
    "authorization violation",
    "user authentication expired",
    "user authentication revoked",
    "account authentication expired",
    "authentication timeout",
)


@dataclass
class Connection:
    """A connection that completed its handshake (not yet installed in a client)."""

    transport: Transport
    parser: Parser
    info: dict[str, Any]
    leftover: list[Any]  # events that arrived after the handshake's PONG
    secure: bool  # the server required TLS (then every later connection requires it)


def handshake(
    srv: Server,
    o: Options,
    secure: bool,
    make_parser: Callable[[], Parser],
    on_dial: Callable[[Transport | None], None],
    until: float | None = None,
) -> Connection:
    """Dial *srv* and run the handshake within ``connect_timeout`` (and by *until*, a
    ``time.monotonic()`` deadline of the caller's, when given).

    Raises OSError or a NatsError on failure (the transport is closed then).
    """
    limit = o.connect_timeout
    if until is not None:
        limit = max(min(limit, until - time.monotonic()), 0.001)
    deadline = time.monotonic() + limit
    transport = Transport.connect(srv.host, srv.port, limit)
    try:
        on_dial(transport)  # raises ConnectionClosedError when the client closed meanwhile
        parser = make_parser()
        buf = bytearray(_READ_SIZE)
        want_tls = srv.tls_required or o.tls is not None or secure
        if o.tls_handshake_first:
            _start_tls(o, transport, srv, deadline)
        try:
            events = _read_events(transport, parser, deadline, srv.redacted(), buf)
        except (TimeoutError, ConnectionResetError) as e:
            if transport.tls:
                raise
            raise type(e)(
                f"{e}: no INFO from {srv.redacted()}; if the server's tls block sets handshake_first, "
                "connect with tls_handshake_first=True"
            ) from None
        first = events.pop(0)
        if not isinstance(first, Info):
            raise ProtocolError(f"expected INFO from {srv.redacted()}, got {first!r}")
        info = first.data
        if not transport.tls:
            if info.get("tls_required") or want_tls:
                if want_tls and not (info.get("tls_required") or info.get("tls_available")):
                    raise SecureConnectionError(
                        f"{srv.redacted()} does not offer TLS but TLS was asked for "
                        "(tls:// URL or tls= option): enable TLS on the server or connect without it"
                    )
                if events or parser.buffered:
                    # plaintext after INFO would be taken as if it came over TLS
                    raise SecureConnectionError(
                        f"{srv.redacted()} sent data after INFO, before the TLS handshake: "
                        "refusing the connection (a server waits for the handshake there)"
                    )
                _start_tls(o, transport, srv, deadline)
                if info.get("tls_required"):
                    secure = True
        auth = resolve_connect_auth(srv, o.creds, info.get("nonce"))
        headers = bool(info.get("headers", False))
        connect = {
            "verbose": o.verbose,
            "pedantic": o.pedantic,
            "tls_required": transport.tls,
            "lang": "python3",
            "version": VERSION,
            "protocol": 1,
            "echo": not o.no_echo,
            "headers": headers,
            "no_responders": headers,
        }
        if o.name:
            connect["name"] = o.name
        connect.update(auth)
        transport.settimeout(max(deadline - time.monotonic(), 0.001))
        transport.sendall(protocol.encode_connect(connect) + protocol.PING_CMD)
        # Wait for PONG; answer PINGs, skip +OK, take INFO, fail on -ERR.
        rest: list[Any] = events
        while True:
            while rest:
                ev = rest.pop(0)
                if ev is PONG:
                    return Connection(transport, parser, info, rest, secure)
                if ev is PING:
                    transport.sendall(protocol.PONG_CMD)
                elif isinstance(ev, Info):
                    info = ev.data
                elif isinstance(ev, Err):
                    raise handshake_error(srv, ev.text)
                elif ev is OK:
                    pass
                else:
                    raise ProtocolError(f"unexpected {ev!r} from {srv.redacted()} before PONG")
            rest = _read_events(transport, parser, deadline, srv.redacted(), buf)
    except BaseException:
        transport.close()
        raise
    finally:
        on_dial(None)


def _start_tls(o: Options, transport: Transport, srv: Server, deadline: float) -> None:
    ctx = o.tls or ssl.create_default_context()
    name = o.tls_hostname or srv.tls_name or srv.host
    try:
        transport.start_tls(ctx, name, max(deadline - time.monotonic(), 0.001))
    except ssl.SSLError as e:
        hint = tls_error_hint(e)
        if "plaintext" in str(e) or "wrong version number" in str(e).lower():
            hint = (
                ": connect without tls_handshake_first, or set handshake_first in the server's tls block"
                if o.tls_handshake_first
                else ": the server did not speak TLS"
            )
        raise SecureConnectionError(f"TLS handshake with {srv.redacted()} failed: {e}{hint}") from None


def handshake_error(srv: Server, text: str) -> NatsError:
    """The error for a -ERR that refuses a connection."""
    low = text.lower()
    if low.startswith(AUTH_ERRORS):
        return AuthorizationError(
            f"{srv.redacted()} rejected the credentials ({text}): check the token, user/password "
            "or credentials given in the URL or options"
        )
    if "secure connection" in low and "tls required" in low:
        return SecureConnectionError(
            f"{srv.redacted()} requires TLS ({text}): connect with a tls:// URL or tls=ssl.SSLContext"
        )
    return NatsError(f"{srv.redacted()} refused the connection: {text}")


def _read_events(
    transport: Transport, parser: Parser, deadline: float, where: str, buf: bytearray
) -> list[Any]:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("handshake timed out (connect_timeout)")
        transport.settimeout(left)
        try:
            n = transport.recv_into(buf)
        except OSError as e:
            if isinstance(e, (ssl.SSLError,)):
                raise SecureConnectionError(f"TLS error from {where}: {e}{tls_error_hint(e)}") from None
            if isinstance(e, builtins.TimeoutError):
                raise TimeoutError("handshake timed out (connect_timeout)") from None
            raise
        if n == 0:
            raise ConnectionResetError("server closed the connection during the handshake")
        events = parser.feed(memoryview(buf)[:n])
        if events:
            return events

"""The natsync client: connection state machine, threads, reconnect, request mux.

Threads of one client (all named ``natsync-...``, all daemon, all joined by ``close()``):

* **reader** — the only thread that reads the socket. It parses (``protocol.Parser``)
  and routes events: MSG to its subscription's queue, PONG to flush waiters, INFO to
  the server pool, -ERR to error handling. When the connection breaks it runs the
  reconnect loop itself, so there is never more than one connection attempt at a time.
* **flusher** — sends the write buffer soon after a publish; a publisher that finds the
  buffer large sends it itself (back-pressure).
* **pinger** — every ``ping_interval`` queues a PING; too many unanswered means the
  connection is stale, and it shuts the socket down so that the reader reconnects.
* **events** — runs event callbacks (``error_cb``, ``disconnected_cb``, ...) in order.
* **sub-N** — one per callback subscription: runs its callback, one message at a time.

Locks and rules:

* ``_lock`` guards the state, the write buffer and the subscription table. It is held
  only for short, non-blocking work: never across a socket call, never while user code
  runs. A message's bytes are appended to the buffer in one critical section, so
  concurrent publishers never interleave.
* ``_send_lock`` serialises writers of the socket (flusher, a publisher flushing
  itself, the reconnect's resend). Order: ``_send_lock`` before ``_lock``.
* User code (callbacks) never runs on the reader, flusher or pinger thread, nor under a
  library lock.
* Every blocking call has a timeout and wakes when the client closes; ``close()`` shuts
  the socket down first, which wakes a reader blocked in ``recv`` and a writer blocked
  in ``send``.
"""

from __future__ import annotations

import builtins
import functools
import itertools
import logging
import os
import random
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from . import protocol
from .auth import Credentials, check_credentials, resolve_connect_auth
from .dispatch import EventDispatcher
from .errors import (
    AuthorizationError,
    BadSubjectError,
    BadSubscriptionError,
    ConnectionClosedError,
    ConnectionDrainingError,
    MaxPayloadError,
    NatsError,
    NoRespondersError,
    NoServersError,
    OutboundBufferFullError,
    PermissionsError,
    ProtocolError,
    SecureConnectionError,
    SlowConsumerError,
    StaleConnectionError,
    TimeoutError,
)
from .headers import HeadersInput, encode_headers
from .msg import Msg
from .nuid import next_nuid
from .protocol import OK, PING, PONG, Err, Info, Parser
from .servers import Server, ServerPool, parse_servers
from .subscription import MsgHandler, Subscription
from .transport import Transport, tls_error_hint

if TYPE_CHECKING:  # pragma: no cover
    from .js import JetStream

__all__ = ["Client", "NATS", "Stats", "connect"]

log = logging.getLogger("natsync")

__version__ = "0.1.0"

# connection states
DISCONNECTED: Final = 0
CONNECTING: Final = 1
CONNECTED: Final = 2
RECONNECTING: Final = 3
DRAINING_SUBS: Final = 4
DRAINING_PUBS: Final = 5
CLOSED: Final = 6

_STATE_NAMES = {
    DISCONNECTED: "disconnected",
    CONNECTING: "connecting",
    CONNECTED: "connected",
    RECONNECTING: "reconnecting",
    DRAINING_SUBS: "draining",
    DRAINING_PUBS: "draining",
    CLOSED: "closed",
}

_READ_SIZE: Final = 256 * 1024
# A publisher that finds this much buffered sends it itself instead of waiting for the flusher.
_FLUSH_THRESHOLD: Final = 1024 * 1024
_CLOSE_FLUSH_DEFAULT: Final = 2.0
_FLUSH_DEFAULT: Final = 10.0
_USER_THREAD_JOIN: Final = 5.0

_SUBJECT_CACHE_MAX: Final = 4096
# "<size>\r\n" of PUB lines for payloads under 64 KiB: a lookup costs less than formatting
_SIZE_LINES: dict[int, bytes] = {}

# -ERR texts, compared in lower case after stripping quotes
_STALE = "stale connection"
_PERMISSIONS = "permissions violation"
_AUTH_ERRORS = (
    "authorization violation",
    "user authentication expired",
    "user authentication revoked",
    "account authentication expired",
    "authentication timeout",
)
# -ERRs after which the server keeps the connection open
_NON_FATAL = ("invalid subject", "invalid publish subject", "maximum subscriptions exceeded")

PayloadType = bytes | bytearray | memoryview | str


@dataclass(frozen=True)
class Stats:
    """A snapshot of a client's counters."""

    in_msgs: int = 0
    out_msgs: int = 0
    in_bytes: int = 0
    out_bytes: int = 0
    reconnects: int = 0
    errors_received: int = 0


class _Options:
    """Validated connect() options."""

    name: str | None
    creds: Credentials
    tls: ssl.SSLContext | None
    tls_hostname: str | None
    tls_handshake_first: bool
    connect_timeout: float
    allow_reconnect: bool
    max_reconnect_attempts: int
    reconnect_time_wait: float
    reconnect_jitter: float
    reconnect_jitter_tls: float
    reconnect_buffer_size: int
    retry_on_failed_connect: bool
    dont_randomize: bool
    ping_interval: float
    max_outstanding_pings: int
    no_echo: bool
    verbose: bool
    pedantic: bool
    inbox_prefix: str
    pending_msgs_limit: int | None
    pending_bytes_limit: int | None
    drain_timeout: float
    flush_timeout: float | None
    error_cb: Callable[[NatsError], Any] | None
    disconnected_cb: Callable[[], Any] | None
    reconnected_cb: Callable[[], Any] | None
    closed_cb: Callable[[], Any] | None
    discovered_server_cb: Callable[[], Any] | None
    lame_duck_mode_cb: Callable[[], Any] | None


def _check_number(
    name: str,
    value: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    allow_none: bool = False,
    integer: bool = False,
) -> None:
    if value is None and allow_none:
        return
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        kind = "an int" if integer else "a number"
        raise TypeError(f"option {name!r} must be {kind}{' or None' if allow_none else ''}, not {value!r}")
    if gt is not None and not value > gt:
        raise ValueError(f"option {name!r} must be > {gt:g}, not {value!r}")
    if ge is not None and not value >= ge:
        raise ValueError(f"option {name!r} must be >= {ge:g}, not {value!r}")


def _check_callable(name: str, value: Any) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"option {name!r} must be callable or None, not {type(value).__name__}")


class _Default:
    """Marks an argument left at its default (the client's option applies)."""

    def __repr__(self) -> str:
        return "<default>"


_DEFAULT: Final = _Default()


class _Waiter:
    """A one-shot slot that a thread waits on and another fills (flush, request)."""

    __slots__ = ("_lock", "_once", "value", "error")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._once = itertools.count()  # next() is atomic: only the first setter wins
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        if next(self._once):
            return
        self.value = value
        self.error = error
        self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        if timeout is None:
            return self._lock.acquire()
        return self._lock.acquire(timeout=max(timeout, 0.0))


# Clients alive in this process, to disable them in a forked child.
_live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for c in list(_live_clients):
        c._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Client:
    """A NATS connection. Create with :func:`natsync.connect` or ``Client()`` then
    :meth:`connect`. Safe to use from many threads. See README for every option.
    """

    def __init__(self) -> None:
        self._state = DISCONNECTED
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._state_cond = threading.Condition(self._lock)  # notified on state changes
        self._opts: _Options | None = None
        self._pool: ServerPool | None = None
        self._transport: Transport | None = None
        self._dialing: Transport | None = None  # a connection attempt's transport, for close()
        self._parser: Parser | None = None
        self._server_info: dict[str, Any] = {}
        self._max_payload = 1024 * 1024
        self._headers_ok = True
        self._wbuf = bytearray()
        self._flush_kicked = False
        self._flush_event = threading.Event()
        self._pongs: deque[_Waiter | None] = deque()
        self._pings_out = 0
        self._subs: dict[int, Subscription] = {}
        self._sid_counter = itertools.count(1)
        self._pub_cache: dict[str, bytes] = {}
        self._resp_sub: Subscription | None = None
        self._resp_prefix = ""
        self._resp_map: dict[str, _Waiter] = {}
        self._resp_counter = itertools.count(1)
        self._events = EventDispatcher("natsync-events")
        self._threads: list[threading.Thread] = []
        self._close_event = threading.Event()
        self._disconnect_reason: BaseException | None = None
        self._reason_reported = False
        self._pid = os.getpid()
        self._fork_error: str | None = None
        self._initial_connect = True
        # Once a server required TLS, every later connection requires it too (as nats.go):
        # no downgrade to plaintext on a reconnect or to a discovered server.
        self._secure = False
        # stats: each counter has a single writer thread (reader: in_*; publishers under _lock: out_*)
        self._in_msgs = 0
        self._in_bytes = 0
        self._out_msgs = 0
        self._out_bytes = 0
        self._reconnects = 0
        self._errors_received = 0
        self._pending_size = 0  # bytes buffered while not connected
        self._client_id: int | None = None
        _live_clients.add(self)

    # --- connecting ----------------------------------------------------------------------

    def connect(
        self,
        servers: str | Sequence[str] | None = None,
        *,
        name: str | None = None,
        token: str | Callable[[], str] | None = None,
        user: str | None = None,
        password: str | None = None,
        nkeys_seed: str | None = None,
        nkeys_seed_str: str | None = None,
        user_credentials: str | tuple[str, str] | None = None,
        signature_cb: Callable[[bytes], bytes] | None = None,
        user_jwt_cb: Callable[[], str | bytes] | None = None,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        tls_handshake_first: bool = False,
        connect_timeout: float = 2.0,
        allow_reconnect: bool = True,
        max_reconnect_attempts: int = 60,
        reconnect_time_wait: float = 2.0,
        reconnect_jitter: float = 0.1,
        reconnect_jitter_tls: float = 1.0,
        reconnect_buffer_size: int = 8 * 1024 * 1024,
        retry_on_failed_connect: bool = False,
        dont_randomize: bool = False,
        ping_interval: float = 120.0,
        max_outstanding_pings: int = 2,
        no_echo: bool = False,
        verbose: bool = False,
        pedantic: bool = False,
        inbox_prefix: str = "_INBOX",
        pending_msgs_limit: int | None = 524288,
        pending_bytes_limit: int | None = 64 * 1024 * 1024,
        drain_timeout: float = 30.0,
        flush_timeout: float | None = None,
        error_cb: Callable[[NatsError], Any] | None = None,
        disconnected_cb: Callable[[], Any] | None = None,
        reconnected_cb: Callable[[], Any] | None = None,
        closed_cb: Callable[[], Any] | None = None,
        discovered_server_cb: Callable[[], Any] | None = None,
        lame_duck_mode_cb: Callable[[], Any] | None = None,
    ) -> Client:
        """Connect to the first reachable server of *servers*; return this client.

        Raises :class:`TypeError` / :class:`ValueError` for bad options (before any
        socket is opened), :class:`AuthorizationError` when a server rejects the
        credentials, :class:`NoServersError` when no server could be reached (unless
        ``retry_on_failed_connect``).
        """
        self._check_fork()
        if self._state != DISCONNECTED:
            raise NatsError("connect() was already called on this client: create a new Client")
        o = _Options()
        if name is not None and not isinstance(name, str):
            raise TypeError(f"option 'name' must be str or None, not {type(name).__name__}")
        o.name = name
        _check_number("connect_timeout", connect_timeout, gt=0)
        _check_number("drain_timeout", drain_timeout, gt=0)
        _check_number("flush_timeout", flush_timeout, gt=0, allow_none=True)
        _check_number("reconnect_time_wait", reconnect_time_wait, ge=0)
        _check_number("reconnect_jitter", reconnect_jitter, ge=0)
        _check_number("reconnect_jitter_tls", reconnect_jitter_tls, ge=0)
        _check_number("ping_interval", ping_interval, ge=0)
        _check_number("max_outstanding_pings", max_outstanding_pings, ge=1, integer=True)
        _check_number("max_reconnect_attempts", max_reconnect_attempts, ge=-1, integer=True)
        _check_number("reconnect_buffer_size", reconnect_buffer_size, ge=0, integer=True)
        _check_number("pending_msgs_limit", pending_msgs_limit, gt=0, allow_none=True, integer=True)
        _check_number("pending_bytes_limit", pending_bytes_limit, gt=0, allow_none=True, integer=True)
        for cb_name, cb in (
            ("error_cb", error_cb),
            ("disconnected_cb", disconnected_cb),
            ("reconnected_cb", reconnected_cb),
            ("closed_cb", closed_cb),
            ("discovered_server_cb", discovered_server_cb),
            ("lame_duck_mode_cb", lame_duck_mode_cb),
            ("signature_cb", signature_cb),
            ("user_jwt_cb", user_jwt_cb),
        ):
            _check_callable(cb_name, cb)
        if tls is not None and not isinstance(tls, ssl.SSLContext):
            raise TypeError(f"option 'tls' must be an ssl.SSLContext or None, not {type(tls).__name__}")
        if tls_hostname is not None and not isinstance(tls_hostname, str):
            raise TypeError("option 'tls_hostname' must be str or None")
        if not isinstance(inbox_prefix, str):
            raise TypeError("option 'inbox_prefix' must be str")
        try:
            protocol.validate_subject(inbox_prefix, "inbox_prefix")
        except BadSubjectError as e:
            raise ValueError(f"option 'inbox_prefix' is invalid: {e}") from None
        if any(t in ("*", ">") for t in inbox_prefix.split(".")):
            raise ValueError("option 'inbox_prefix' must not contain wildcards")
        o.tls = tls
        o.tls_hostname = tls_hostname
        o.tls_handshake_first = bool(tls_handshake_first)
        o.connect_timeout = float(connect_timeout)
        o.allow_reconnect = bool(allow_reconnect)
        o.max_reconnect_attempts = max_reconnect_attempts
        o.reconnect_time_wait = float(reconnect_time_wait)
        o.reconnect_jitter = float(reconnect_jitter)
        o.reconnect_jitter_tls = float(reconnect_jitter_tls)
        o.reconnect_buffer_size = reconnect_buffer_size
        o.retry_on_failed_connect = bool(retry_on_failed_connect)
        o.dont_randomize = bool(dont_randomize)
        o.ping_interval = float(ping_interval)
        o.max_outstanding_pings = max_outstanding_pings
        o.no_echo = bool(no_echo)
        o.verbose = bool(verbose)
        o.pedantic = bool(pedantic)
        o.inbox_prefix = inbox_prefix
        o.pending_msgs_limit = pending_msgs_limit
        o.pending_bytes_limit = pending_bytes_limit
        o.drain_timeout = float(drain_timeout)
        o.flush_timeout = None if flush_timeout is None else float(flush_timeout)
        o.error_cb = error_cb
        o.disconnected_cb = disconnected_cb
        o.reconnected_cb = reconnected_cb
        o.closed_cb = closed_cb
        o.discovered_server_cb = discovered_server_cb
        o.lame_duck_mode_cb = lame_duck_mode_cb

        server_list = parse_servers(servers)
        extra = None
        nkey_options = (nkeys_seed, nkeys_seed_str, user_credentials, signature_cb, user_jwt_cb)
        if any(v is not None for v in nkey_options):
            from .nkeys import make_signer

            extra = make_signer(
                nkeys_seed=nkeys_seed,
                nkeys_seed_str=nkeys_seed_str,
                user_credentials=user_credentials,
                signature_cb=signature_cb,
                user_jwt_cb=user_jwt_cb,
            )
        creds = Credentials(token=token, user=user, password=password, extra=extra)
        check_credentials(creds, server_list)
        o.creds = creds
        self._opts = o
        self._pool = ServerPool(server_list, randomize=not o.dont_randomize)
        self._resp_prefix = f"{inbox_prefix}.{next_nuid()}."

        self._state = CONNECTING
        errors: list[tuple[Server, BaseException]] = []
        for srv in self._pool.first_pass():
            try:
                leftover = self._attempt(srv)
            except (OSError, NatsError) as e:
                srv.last_error = e
                errors.append((srv, e))
                log.debug("connect to %s failed: %s", srv.redacted(), e)
                continue
            except BaseException:  # user code (a token callable, a signer) failed: no thread left
                self._shutdown_threads_after_failed_connect()
                raise
            self._start_threads(leftover)
            self._initial_connect = False
            return self
        # every server failed
        auth = next((e for _, e in reversed(errors) if isinstance(e, AuthorizationError)), None)
        if o.retry_on_failed_connect and auth is None:
            with self._lock:
                self._state = RECONNECTING
            self._start_threads(None)
            return self
        self._shutdown_threads_after_failed_connect()
        if auth is not None:
            raise auth
        tls_err = next((e for _, e in reversed(errors) if isinstance(e, SecureConnectionError)), None)
        if tls_err is not None and len(errors) == 1:
            raise tls_err
        detail = "; ".join(f"{s.redacted()}: {_describe(e)}" for s, e in errors)
        raise NoServersError(f"could not connect to any server ({detail})")

    def _shutdown_threads_after_failed_connect(self) -> None:
        with self._lock:
            self._state = CLOSED
            self._state_cond.notify_all()
        self._close_event.set()
        self._events.stop(_USER_THREAD_JOIN)
        _live_clients.discard(self)

    def _start_threads(self, leftover: list[Any] | None) -> None:
        o = self._opts
        assert o is not None
        reader = threading.Thread(
            target=self._reader_main, args=(leftover,), name="natsync-reader", daemon=True
        )
        flusher = threading.Thread(target=self._flusher_main, name="natsync-flusher", daemon=True)
        self._threads = [reader, flusher]
        if o.ping_interval > 0:
            self._threads.append(
                threading.Thread(target=self._pinger_main, name="natsync-pinger", daemon=True)
            )
        for t in self._threads:
            t.start()

    def _attempt(self, srv: Server) -> list[Any]:
        """Dial *srv* and run the handshake; on success install the connection.

        Returns the events that arrived after the handshake's PONG. Raises OSError or a
        NatsError on failure (the transport is closed then).
        """
        o = self._opts
        assert o is not None
        deadline = time.monotonic() + o.connect_timeout
        self._pool_current(srv)
        transport = Transport.connect(srv.host, srv.port, o.connect_timeout)
        with self._lock:
            # close() shuts down a handshake in progress instead of waiting for it
            self._dialing = transport
            closing = self._state == CLOSED
        try:
            if closing:
                raise ConnectionClosedError()
            parser = Parser(functools.partial(Msg, self))
            want_tls = srv.tls_required or o.tls is not None or self._secure
            if o.tls_handshake_first:
                self._start_tls(transport, srv, deadline)
            try:
                events = self._read_events(transport, parser, deadline, srv.redacted())
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
                    self._start_tls(transport, srv, deadline)
                    if info.get("tls_required"):
                        self._secure = True
            auth = resolve_connect_auth(srv, o.creds, info.get("nonce"))
            headers = bool(info.get("headers", False))
            connect = {
                "verbose": o.verbose,
                "pedantic": o.pedantic,
                "tls_required": transport.tls,
                "lang": "python3",
                "version": __version__,
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
                        transport.settimeout(None)
                        self._install(srv, transport, parser, info)
                        return rest
                    if ev is PING:
                        transport.sendall(protocol.PONG_CMD)
                    elif isinstance(ev, Info):
                        info = ev.data
                    elif isinstance(ev, Err):
                        raise self._handshake_error(srv, ev.text)
                    elif ev is OK:
                        pass
                    else:
                        raise ProtocolError(f"unexpected {ev!r} from {srv.redacted()} before PONG")
                rest = self._read_events(transport, parser, deadline, srv.redacted())
        except BaseException:
            transport.close()
            raise
        finally:
            self._dialing = None

    def _pool_current(self, srv: Server) -> None:
        assert self._pool is not None
        self._pool.current = srv

    def _start_tls(self, transport: Transport, srv: Server, deadline: float) -> None:
        o = self._opts
        assert o is not None
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

    def _handshake_error(self, srv: Server, text: str) -> NatsError:
        low = text.lower()
        if low.startswith(_AUTH_ERRORS):
            return AuthorizationError(
                f"{srv.redacted()} rejected the credentials ({text}): check the token, user/password "
                "or credentials given in the URL or options"
            )
        if "secure connection" in low and "tls required" in low:
            return SecureConnectionError(
                f"{srv.redacted()} requires TLS ({text}): connect with a tls:// URL or tls=ssl.SSLContext"
            )
        return NatsError(f"{srv.redacted()} refused the connection: {text}")

    @staticmethod
    def _read_events(
        transport: Transport, parser: Parser, deadline: float, where: str = "server"
    ) -> list[Any]:
        buf = bytearray(65536)
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

    def _install(self, srv: Server, transport: Transport, parser: Parser, info: dict[str, Any]) -> None:
        """Make (*transport*, *parser*) the live connection: resend subscriptions, then
        what was buffered while disconnected, then mark CONNECTED."""
        o = self._opts
        pool = self._pool
        assert o is not None and pool is not None
        with self._send_lock:
            with self._lock:
                if self._state == CLOSED:
                    raise ConnectionClosedError()
                was_reconnect = not self._initial_connect
                self._initial_connect = False  # also after a retry_on_failed_connect success
                self._apply_info(info, initial=not was_reconnect)
                out = bytearray()
                for sub in self._subs.values():
                    out += protocol.encode_sub(sub.subject, sub.sid, sub.queue)
                    if sub._max is not None:
                        left = sub._max - sub._received
                        out += (
                            protocol.encode_unsub(sub.sid, max(left, 1))
                            if left > 0
                            else protocol.encode_unsub(sub.sid)
                        )
                out += self._wbuf
                self._wbuf = bytearray()
                self._pending_size = 0
                self._transport = transport
                self._parser = parser
                self._pings_out = 0
                self._disconnect_reason = None
                self._reason_reported = False
                if self._state not in (DRAINING_SUBS, DRAINING_PUBS):  # drain() began while reconnecting
                    self._state = CONNECTED
                self._state_cond.notify_all()
            srv.reconnects = 0
            srv.did_connect = True
            srv.last_error = None
            if out:
                try:
                    transport.sendall(out)
                except OSError as e:
                    # the reader will see the broken socket and reconnect again
                    log.debug("resend after connect failed: %s", e)
                    transport.shutdown()
        if was_reconnect:
            self._reconnects += 1
            log.info("reconnected to %s", srv.redacted())
            self._post_cb(o.reconnected_cb)
        else:
            log.info("connected to %s", srv.redacted())

    def _apply_info(self, info: dict[str, Any], initial: bool) -> None:
        """Take a new INFO (called with _lock held)."""
        self._server_info = info
        mp = info.get("max_payload")
        if isinstance(mp, int) and not isinstance(mp, bool) and mp > 0:
            self._max_payload = mp
        self._headers_ok = bool(info.get("headers", False))
        cid = info.get("client_id")
        if isinstance(cid, int):
            self._client_id = cid
        o = self._opts
        pool = self._pool
        assert o is not None and pool is not None
        urls = info.get("connect_urls")
        if isinstance(urls, list) and all(isinstance(u, str) for u in urls):
            cur = pool.current
            scheme = "tls" if self._secure or (cur is not None and cur.tls_required) or o.tls else "nats"
            added = pool.add_discovered(urls, scheme=scheme, learned_from=pool.current)
            if added and not initial:
                self._post_cb(o.discovered_server_cb)
        if info.get("ldm") and not initial:
            self._post_cb(o.lame_duck_mode_cb)

    # --- threads -------------------------------------------------------------------------

    def _reader_main(self, leftover: list[Any] | None) -> None:
        buf = bytearray(_READ_SIZE)
        view = memoryview(buf)
        if leftover is None:  # retry_on_failed_connect: start by reconnecting
            if not self._reconnect_loop():
                return
            leftover = self._leftover
        while True:
            transport = self._transport
            parser = self._parser
            if transport is None or parser is None:
                return
            try:
                if leftover:
                    self._process(leftover)
                    leftover = None
                feed = parser.feed
                recv_into = transport.recv_into
                process = self._process
                while True:
                    n = recv_into(buf)
                    if not n:
                        raise ConnectionResetError("server closed the connection")
                    events = feed(view[:n])
                    if events:
                        process(events)
            except Exception as e:  # noqa: BLE001 - any failure of the connection
                if self._state == CLOSED or self._close_event.is_set():
                    return
                if not self._on_disconnect(transport, e):
                    return
                if not self._reconnect_loop():
                    return
                leftover = self._leftover

    def _process(self, events: list[Any]) -> None:
        """Route parsed events (reader thread)."""
        subs = self._subs
        # hoisted: the inbox subscription cannot receive in the batch in which it is created
        resp_sub = self._resp_sub
        for ev in events:
            if ev.__class__ is Msg:
                self._in_msgs += 1
                self._in_bytes += len(ev.data)
                sub = subs.get(ev.sid)
                if sub is None:
                    continue
                if sub is resp_sub:
                    self._on_response(ev)
                else:
                    sub._enqueue(ev)
            elif ev is PONG:
                self._pings_out = 0
                try:
                    w = self._pongs.popleft()
                except IndexError:
                    continue
                if w is not None:
                    w.set(True)
            elif ev is PING:
                self._write(protocol.PONG_CMD)
            elif ev is OK:
                pass
            elif isinstance(ev, Info):
                with self._lock:
                    self._apply_info(ev.data, initial=False)
            elif isinstance(ev, Err):
                self._on_err(ev.text)

    def _on_err(self, text: str) -> None:
        """A -ERR while connected (reader thread)."""
        o = self._opts
        assert o is not None
        self._errors_received += 1
        low = text.lower()
        srv = self._pool.current if self._pool is not None else None
        where = srv.redacted() if srv is not None else "server"
        if low.startswith(_PERMISSIONS):
            self._report_error(_permissions_error(text))
            return
        if low.startswith(_NON_FATAL):
            self._report_error(NatsError(f"{where}: {text}"))
            return
        err: NatsError
        if low.startswith(_STALE):
            err = StaleConnectionError(f"{where} said the connection is stale ({text}); reconnecting")
        elif low.startswith(_AUTH_ERRORS):
            err = self._handshake_error(srv, text) if srv is not None else AuthorizationError(text)
            if srv is not None:
                srv.last_error = err
        else:
            err = NatsError(f"{where}: {text}")
        # the server closes the connection after these; make the reader see it now
        self._report_error(err)
        self._disconnect_reason = err
        self._reason_reported = True
        t = self._transport
        if t is not None:
            t.shutdown()

    def _on_disconnect(self, transport: Transport, err: BaseException) -> bool:
        """The connection broke (reader thread). Returns True to start reconnecting."""
        o = self._opts
        assert o is not None
        reason = self._disconnect_reason or err
        if isinstance(reason, ProtocolError) and not self._reason_reported:
            self._report_error(reason)
        elif isinstance(reason, StaleConnectionError) and not self._reason_reported:
            self._report_error(reason)
        log.info("disconnected from %s: %s", self._server_name(), _describe(reason))
        with self._lock:
            if self._state == CLOSED:
                return False
            self._transport = None
            self._parser = None
            # What was buffered for the broken connection may hold PINGs and SUBs of its own;
            # messages in it were never acknowledged: at-most-once, dropped.
            self._wbuf = bytearray()
            self._pending_size = 0
            pongs = list(self._pongs)
            self._pongs.clear()
            draining = self._state in (DRAINING_SUBS, DRAINING_PUBS)
            if o.allow_reconnect and not draining:
                self._state = RECONNECTING
            self._state_cond.notify_all()
        transport.close()
        for w in pongs:
            if w is not None:
                w.set(False)  # flush() raises: what it covered may be lost
        self._post_cb(o.disconnected_cb)
        if not o.allow_reconnect or draining:
            self._close(reason if isinstance(reason, NatsError) else None, from_reader=True)
            return False
        return True

    def _reconnect_loop(self) -> bool:
        """Reconnect (reader thread). True when connected again, False when closed."""
        o = self._opts
        pool = self._pool
        assert o is not None and pool is not None
        self._leftover: list[Any] = []
        tries_in_pass = 0
        while not self._close_event.is_set():
            srv = pool.select_next(o.max_reconnect_attempts)
            if srv is None:
                self._close(NoServersError("no servers left to reconnect to"), from_reader=True)
                return False
            if tries_in_pass >= len(pool):
                tries_in_pass = 0
                jitter = (
                    o.reconnect_jitter_tls
                    if (o.tls or srv.tls_required or self._secure)
                    else o.reconnect_jitter
                )
                wait = o.reconnect_time_wait + (random.random() * jitter if jitter else 0.0)
                if self._close_event.wait(wait):
                    return False
            tries_in_pass += 1
            srv.reconnects += 1
            try:
                self._leftover = self._attempt(srv)
                return True
            except ConnectionClosedError:
                return False
            except AuthorizationError as e:
                self._report_error(e)
                # the same auth error twice in a row from this server (its last_error
                # survives reconnects elsewhere; a successful connect clears it)
                prev = srv.last_error
                if isinstance(prev, AuthorizationError) and str(prev) == str(e):
                    log.info("%s rejected the credentials twice: removing it from the pool", srv.redacted())
                    pool.remove(srv)
                srv.last_error = e
            except (OSError, NatsError) as e:
                srv.last_error = e
                log.debug("reconnect to %s failed: %s", srv.redacted(), _describe(e))
            except Exception as e:  # user code (a token callable, a signer): report, keep trying
                srv.last_error = e
                self._report_error(e)
        return False

    def _flusher_main(self) -> None:
        ev = self._flush_event
        closed = self._close_event
        while not closed.is_set():
            ev.wait(5.0)
            ev.clear()
            self._flush_kicked = False
            if closed.is_set():
                return
            self._send_buffer()

    def _send_buffer(self) -> None:
        """Send what is buffered, if connected. Serialised by _send_lock."""
        with self._send_lock:
            with self._lock:
                if self._state not in (CONNECTED, DRAINING_SUBS, DRAINING_PUBS) or not self._wbuf:
                    return
                data = self._wbuf
                self._wbuf = bytearray()
                transport = self._transport
            if transport is None:
                return
            try:
                transport.sendall(data)
            except OSError as e:
                log.debug("write failed: %s", e)
                transport.shutdown()  # the reader notices and reconnects

    def _pinger_main(self) -> None:
        o = self._opts
        assert o is not None
        while not self._close_event.wait(o.ping_interval):
            if self._state != CONNECTED:
                continue
            self._pings_out += 1
            if self._pings_out > o.max_outstanding_pings:
                t = self._transport
                self._disconnect_reason = StaleConnectionError(
                    f"{self._server_name()} did not answer {o.max_outstanding_pings} PINGs; reconnecting"
                )
                self._reason_reported = False
                if t is not None:
                    t.shutdown()
                continue
            with self._lock:
                if self._state != CONNECTED:
                    continue
                self._pongs.append(None)
                self._wbuf += protocol.PING_CMD
            self._kick()

    # --- callbacks -----------------------------------------------------------------------

    def _post_cb(self, cb: Callable[[], Any] | None) -> None:
        if cb is not None:
            self._events.post(cb)

    def _report_error(self, err: BaseException) -> None:
        o = self._opts
        if not isinstance(err, NatsError):
            wrapped = NatsError(f"{type(err).__name__}: {err}")
            wrapped.__cause__ = err
            err = wrapped
        log.debug("error: %s", err)
        if o is not None and o.error_cb is not None:
            self._events.post(o.error_cb, err)

    def _slow_consumer(self, sub: Subscription) -> None:
        self._report_error(SlowConsumerError(sub))

    # --- writing -------------------------------------------------------------------------

    def _kick(self) -> None:
        if not self._flush_kicked:
            self._flush_kicked = True
            self._flush_event.set()

    def _write(self, data: bytes) -> None:
        """Queue protocol bytes if connected (dropped otherwise: they belong to this connection)."""
        with self._lock:
            if self._state in (CONNECTED, DRAINING_SUBS, DRAINING_PUBS):
                self._wbuf += data
        self._kick()

    def publish(
        self,
        subject: str,
        payload: PayloadType = b"",
        reply: str | None = None,
        headers: HeadersInput | None = None,
        *,
        _kick: bool = True,
    ) -> None:
        """Publish *payload* to *subject*; returns once buffered (see :meth:`flush`).

        *payload* is bytes-like, or str (sent as UTF-8). Raises
        :class:`BadSubjectError`, :class:`BadHeaderError`, :class:`MaxPayloadError`
        for bad input (nothing is sent), :class:`ConnectionClosedError`,
        :class:`ConnectionDrainingError`, :class:`OutboundBufferFullError`.
        """
        if type(payload) is not bytes:
            payload = _as_bytes(payload)
        hdr: bytes | None = None
        if reply is not None or headers is not None:
            prefix, hdr = self._slow_prefix(subject, reply, headers)
        else:
            cached = self._pub_cache.get(subject)
            if cached is None:
                cached = protocol.pub_prefix(subject)
                cache = self._pub_cache
                if len(cache) >= _SUBJECT_CACHE_MAX:
                    cache.clear()
                cache[subject] = cached
            prefix = cached
        size = len(payload)
        if hdr is None:
            if size > self._max_payload:
                raise MaxPayloadError(
                    f"payload of {size} bytes is over the server's max_payload of {self._max_payload} bytes: "
                    "send less, or raise max_payload in the server config"
                )
            with self._lock:
                if self._state != CONNECTED:
                    self._check_publish_state(len(prefix) + size + 16)
                buf = self._wbuf
                buf += prefix
                line = _SIZE_LINES.get(size)
                if line is None:
                    line = b"%d\r\n" % size
                    if size < 65536:
                        _SIZE_LINES[size] = line
                buf += line
                buf += payload
                buf += b"\r\n"
                self._out_msgs += 1
                self._out_bytes += size
                big = len(buf) > _FLUSH_THRESHOLD
        else:
            hl = len(hdr)
            if hl + size > self._max_payload:
                raise MaxPayloadError(
                    f"payload of {size} bytes plus {hl} bytes of headers is over the server's max_payload "
                    f"of {self._max_payload} bytes: send less, or raise max_payload in the server config"
                )
            with self._lock:
                if self._state != CONNECTED:
                    self._check_publish_state(len(prefix) + hl + size + 24)
                buf = self._wbuf
                buf += prefix
                buf += b"%d %d\r\n" % (hl, hl + size)
                buf += hdr
                buf += payload
                buf += b"\r\n"
                self._out_msgs += 1
                self._out_bytes += size
                big = len(buf) > _FLUSH_THRESHOLD
        if big:
            self._send_buffer()
        elif _kick and not self._flush_kicked:
            # _kick=False: the caller sends the buffer itself right after (request(), a
            # delivery thread before it sleeps), so waking the flusher would only cost a
            # thread switch on the latency path.
            self._flush_kicked = True
            self._flush_event.set()

    def _slow_prefix(
        self, subject: str, reply: str | None, headers: HeadersInput | None
    ) -> tuple[bytes, bytes | None]:
        protocol.validate_subject(subject)
        if reply is not None and type(reply) is not str:
            raise BadSubjectError(f"reply subject must be str or None, not {type(reply).__name__}")
        if reply:
            protocol.validate_subject(reply, "reply subject")
        hdr = None
        if headers is not None:
            hdr = encode_headers(headers)
            if not self._headers_ok and self._state == CONNECTED:
                raise NatsError(
                    "the server does not support headers (INFO has no 'headers'): upgrade nats-server"
                )
        op = b"HPUB " if hdr is not None else b"PUB "
        mid = b" " + reply.encode() if reply else b""
        return op + subject.encode() + mid + b" ", hdr

    def _check_publish_state(self, size: int) -> None:
        """Called with _lock held when not CONNECTED; raises or accounts buffered bytes."""
        st = self._state
        if st == DRAINING_SUBS:
            return
        if st == CLOSED or st == DISCONNECTED:
            raise self._closed_error()
        if st == DRAINING_PUBS:
            raise ConnectionDrainingError("connection is draining its final publishes: publish refused")
        # RECONNECTING or CONNECTING: keep it for the next connection, within the buffer
        o = self._opts
        assert o is not None
        if self._pending_size + size > o.reconnect_buffer_size:
            raise OutboundBufferFullError(
                f"reconnect buffer full ({o.reconnect_buffer_size} bytes) while disconnected: retry later "
                "or raise reconnect_buffer_size"
            )
        self._pending_size += size

    def flush(self, timeout: float | None = None) -> None:
        """Send what is buffered and wait for the server to confirm it (PING/PONG).

        *timeout* defaults to ``flush_timeout`` or 10 s. While reconnecting it waits
        for the connection to come back. Raises :class:`natsync.TimeoutError`,
        :class:`ConnectionClosedError`.
        """
        if timeout is None:
            o = self._opts
            timeout = (o.flush_timeout if o is not None else None) or _FLUSH_DEFAULT
        elif timeout <= 0:
            raise ValueError("flush timeout must be > 0")
        deadline = time.monotonic() + timeout
        while True:
            w = _Waiter()
            with self._lock:
                st = self._state
                if st in (CLOSED, DISCONNECTED):
                    raise self._closed_error()
                if st in (CONNECTED, DRAINING_SUBS, DRAINING_PUBS):
                    self._wbuf += protocol.PING_CMD
                    self._pongs.append(w)
                    sent = True
                else:
                    sent = False
                    if not self._state_cond.wait(min(deadline - time.monotonic(), 1.0)):
                        pass
            if sent:
                self._send_buffer()
                if not w.wait(deadline - time.monotonic()):
                    raise TimeoutError(f"flush timed out after {timeout} s")
                if w.error is not None:
                    raise w.error
                if w.value:
                    return
                # The connection broke before the PONG: what was published before this
                # flush may be lost, so do not report success after the reconnect.
                raise NatsError(
                    "the connection was lost before the server confirmed the flush; the client is "
                    "reconnecting: messages published before it may be lost, publish them again if needed"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(f"flush timed out after {timeout} s (not connected)")

    # --- subscribing ---------------------------------------------------------------------

    def subscribe(
        self,
        subject: str,
        queue: str | None = None,
        cb: MsgHandler | None = None,
        *,
        max_msgs: int | None = None,
        pending_msgs_limit: int | None | _Default = _DEFAULT,
        pending_bytes_limit: int | None | _Default = _DEFAULT,
    ) -> Subscription:
        """Subscribe to *subject* (wildcards allowed), optionally in a *queue* group.

        Without *cb* the subscription is synchronous (``next_msg``, iteration); with
        *cb* every message is passed to ``cb(msg)`` on the subscription's own thread.
        Raises :class:`BadSubjectError`, :class:`ConnectionClosedError`,
        :class:`ConnectionDrainingError`.
        """
        self._check_fork()
        protocol.validate_subject(subject)
        if queue is not None and queue != "":
            protocol.validate_queue(queue)
        else:
            queue = None
        if cb is not None and not callable(cb):
            raise TypeError("cb must be callable or None")
        if max_msgs is not None:
            _check_number("max_msgs", max_msgs, gt=0, integer=True)
        o = self._opts
        if o is None:
            raise self._closed_error()
        pm = o.pending_msgs_limit if isinstance(pending_msgs_limit, _Default) else pending_msgs_limit
        pb = o.pending_bytes_limit if isinstance(pending_bytes_limit, _Default) else pending_bytes_limit
        _check_number("pending_msgs_limit", pm, gt=0, allow_none=True, integer=True)
        _check_number("pending_bytes_limit", pb, gt=0, allow_none=True, integer=True)
        with self._lock:
            st = self._state
            if st in (CLOSED, DISCONNECTED):
                raise self._closed_error()
            if st in (DRAINING_SUBS, DRAINING_PUBS):
                raise ConnectionDrainingError("connection is draining: subscribe refused")
            sid = next(self._sid_counter)
            sub = Subscription(self, sid, subject, queue, cb, pm, pb)
            if max_msgs is not None:
                sub._max = max_msgs
            self._subs[sid] = sub
            if st == CONNECTED:
                self._wbuf += protocol.encode_sub(subject, sid, queue)
                if max_msgs is not None:
                    self._wbuf += protocol.encode_unsub(sid, max_msgs)
            # not connected: _install() sends every subscription on connect
        if sub._thread is not None:
            sub._thread.start()
        self._kick()
        return sub

    def _remove_sub(self, sub: Subscription) -> None:
        self._subs.pop(sub.sid, None)

    def _unsubscribe(self, sub: Subscription, limit: int | None) -> None:
        if limit is not None:
            _check_number("limit", limit, gt=0, integer=True)
        with self._lock:
            st = self._state
            if st in (CLOSED, DISCONNECTED):
                raise self._closed_error()
            if sub._ended:
                raise BadSubscriptionError(f"subscription {sub.sid} has already ended")
            if limit is not None and sub._received < limit:
                sub._max = limit
                if st in (CONNECTED, DRAINING_SUBS, DRAINING_PUBS):
                    # the server counts max against every message it delivered on the sub
                    self._wbuf += protocol.encode_unsub(sub.sid, limit)
                # the reader may have counted the last message before it saw _max
                end_now = sub._received >= limit
                if end_now:
                    self._subs.pop(sub.sid, None)
            else:
                self._subs.pop(sub.sid, None)
                if st in (CONNECTED, DRAINING_SUBS, DRAINING_PUBS):
                    self._wbuf += protocol.encode_unsub(sub.sid)
                end_now = True
        if end_now:
            discard = limit is None
            sub._end(BadSubscriptionError(f"subscription {sub.sid} was unsubscribed"), discard=discard)
            self._join_sub(sub)
        self._kick()

    def _join_sub(self, sub: Subscription) -> None:
        t = sub._thread
        if t is not None and t.is_alive() and t is not threading.current_thread():
            t.join(_USER_THREAD_JOIN)

    def _drain_sub(self, sub: Subscription, timeout: float | None) -> None:
        o = self._opts
        assert o is not None
        if timeout is None:
            timeout = o.drain_timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            st = self._state
            if st in (CLOSED, DISCONNECTED):
                raise self._closed_error()
            if sub._ended and sub._draining:
                pass
            elif sub._ended:
                raise BadSubscriptionError(f"subscription {sub.sid} has already ended")
            sub._draining = True
            if st in (CONNECTED, DRAINING_SUBS, DRAINING_PUBS):
                self._wbuf += protocol.encode_unsub(sub.sid)
        # every message sent before the server processed UNSUB arrives before its PONG
        try:
            self.flush(max(deadline - time.monotonic(), 0.001))
        except ConnectionClosedError:
            raise
        except NatsError:  # timed out or reconnecting: deliver what did arrive
            pass
        self._subs.pop(sub.sid, None)
        sub._end(BadSubscriptionError(f"subscription {sub.sid} was drained"))
        if sub._thread is not None and sub._thread is not threading.current_thread():
            if not sub._done.wait(max(deadline - time.monotonic(), 0)):
                raise TimeoutError(f"drain of subscription {sub.sid} timed out after {timeout} s")
            sub._thread.join(1.0)
        elif time.monotonic() > deadline:
            raise TimeoutError(f"drain of subscription {sub.sid} timed out after {timeout} s")

    # --- request / reply -----------------------------------------------------------------

    def new_inbox(self) -> str:
        """Return a fresh, unique inbox subject (``<inbox_prefix>.<nuid>``)."""
        prefix = self._opts.inbox_prefix if self._opts is not None else "_INBOX"
        return f"{prefix}.{next_nuid()}"

    def request(
        self,
        subject: str,
        payload: PayloadType = b"",
        timeout: float = 0.5,
        headers: HeadersInput | None = None,
    ) -> Msg:
        """Publish a request and return the first reply within *timeout* seconds.

        Raises :class:`NoRespondersError` at once when nothing is subscribed,
        :class:`natsync.TimeoutError` when no reply came in time,
        :class:`ConnectionClosedError` if the client closes meanwhile.
        """
        if timeout is None or timeout <= 0:
            raise ValueError("request timeout must be > 0")
        if self._resp_sub is None:
            self._init_resp_sub()
        token = str(next(self._resp_counter))
        w = _Waiter()
        self._resp_map[token] = w
        try:
            self.publish(subject, payload, reply=self._resp_prefix + token, headers=headers, _kick=False)
            self._send_buffer()
            if not w.wait(timeout):
                raise TimeoutError(f"no reply to request on {subject!r} within {timeout} s")
        finally:
            self._resp_map.pop(token, None)
        if w.error is not None:
            raise w.error
        msg: Msg = w.value
        if msg._hdr is not None and not msg.data:
            h = msg.headers
            if h is not None and h.status == 503:
                raise NoRespondersError(subject)
        return msg

    def _init_resp_sub(self) -> None:
        with self._lock:
            if self._resp_sub is not None:
                return
            st = self._state
            if st in (CLOSED, DISCONNECTED):
                raise self._closed_error()
            sid = next(self._sid_counter)
            sub = Subscription(self, sid, self._resp_prefix + "*", None, None, None, None)
            self._subs[sid] = sub
            self._resp_sub = sub
            if st in (CONNECTED, DRAINING_SUBS, DRAINING_PUBS):
                self._wbuf += protocol.encode_sub(sub.subject, sid, None)

    def _on_response(self, msg: Msg) -> None:
        token = msg.subject[len(self._resp_prefix) :]
        w = self._resp_map.pop(token, None)
        if w is not None:
            w.set(msg)

    # --- lifecycle -----------------------------------------------------------------------

    def drain(self, timeout: float | None = None) -> None:
        """Drain every subscription, send what is buffered, then close.

        Raises :class:`natsync.TimeoutError` after *timeout* (default
        ``drain_timeout``); the client is closed anyway.
        """
        self._check_fork()
        o = self._opts
        if o is None:
            raise self._closed_error()
        if timeout is None:
            timeout = o.drain_timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            st = self._state
            if st in (CLOSED, DISCONNECTED):
                raise self._closed_error()
            if st in (DRAINING_SUBS, DRAINING_PUBS):
                raise ConnectionDrainingError("drain() is already running")
            subs = [s for s in self._subs.values() if s is not self._resp_sub]
            self._state = DRAINING_SUBS
            if st == CONNECTED:
                for s in subs:
                    s._draining = True
                    self._wbuf += protocol.encode_unsub(s.sid)
        timed_out = False
        try:
            try:
                self.flush(max(deadline - time.monotonic(), 0.001))
            except NatsError:  # timed out, reconnecting or closed: drain what did arrive
                pass
            for s in subs:
                self._subs.pop(s.sid, None)
                s._end(BadSubscriptionError(f"subscription {s.sid} was drained"))
            for s in subs:
                if s._thread is not None and s._thread is not threading.current_thread():
                    if not s._done.wait(max(deadline - time.monotonic(), 0)):
                        timed_out = True
                        break
            with self._lock:
                if self._state == DRAINING_SUBS:
                    self._state = DRAINING_PUBS
            if not timed_out:
                try:
                    self.flush(max(deadline - time.monotonic(), 0.001))
                except TimeoutError:
                    timed_out = True
                except NatsError:
                    pass
        finally:
            self.close()
        if timed_out:
            raise TimeoutError(f"drain did not finish within {timeout} s; the client was closed")

    def close(self) -> None:
        """Send what is buffered (within ``flush_timeout`` or 2 s), stop every thread,
        close the connection. Idempotent; calls ``closed_cb`` once."""
        if self._fork_error is not None:
            return
        if self._state == DISCONNECTED:
            with self._lock:
                self._state = CLOSED
            return
        self._close(None, from_reader=False)

    def _close(self, reason: NatsError | None, from_reader: bool) -> None:
        o = self._opts
        with self._lock:
            if self._state == CLOSED:
                return
            was_connected = self._state in (CONNECTED, DRAINING_SUBS, DRAINING_PUBS)
            self._state = CLOSED
            self._closed_reason = reason
            transport = self._transport
            dialing = self._dialing
            self._state_cond.notify_all()
        if dialing is not None and dialing is not transport:
            dialing.shutdown()  # a reconnect in its handshake: stop it now
        _live_clients.discard(self)
        # Final flush of what is buffered, bounded in time.
        if was_connected and transport is not None:
            limit = (o.flush_timeout if o is not None else None) or _CLOSE_FLUSH_DEFAULT
            self._final_flush(transport, limit)
        self._close_event.set()
        self._flush_event.set()
        if transport is not None:
            transport.close()
        # wake everybody who waits
        closed = self._closed_error()
        for w in list(self._pongs):
            if w is not None:
                w.set(False, closed)
        self._pongs.clear()
        for w in list(self._resp_map.values()):
            w.set(None, closed)
        self._resp_map.clear()
        subs = list(self._subs.values())
        self._subs.clear()
        for s in subs:
            s._end(closed)
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                # each wakes on the closed socket or _close_event; a handshake in progress
                # is bounded by connect_timeout
                t.join((o.connect_timeout if o is not None else 2.0) + _USER_THREAD_JOIN)
                if t.is_alive():  # pragma: no cover - would be a bug
                    log.warning("thread %s did not stop on close", t.name)
        for s in subs:
            self._join_sub(s)
        if reason is not None and not isinstance(reason, NoServersError):
            log.info("closed: %s", reason)
        elif reason is not None:
            self._report_error(reason)
        if o is not None:
            self._post_cb(o.closed_cb)
        self._events.stop(_USER_THREAD_JOIN)

    def _final_flush(self, transport: Transport, limit: float) -> None:
        # Run the send on a bounded clock: a server that stopped reading must not hang close().
        done = threading.Event()

        def send() -> None:
            try:
                with self._send_lock:
                    with self._lock:
                        data = self._wbuf
                        self._wbuf = bytearray()
                    if data:
                        transport.sendall(data)
            except OSError:
                pass
            finally:
                done.set()

        if threading.current_thread() in self._threads:
            # reader/flusher/pinger closing: do not block on ourselves
            with self._lock:
                self._wbuf = bytearray()
            return
        if not self._wbuf and self._send_lock.acquire(blocking=False):
            # nothing buffered and no send in flight: no thread needed
            self._send_lock.release()
            if not self._wbuf:
                return
        t = threading.Thread(target=send, name="natsync-close-flush", daemon=True)
        t.start()
        if not done.wait(limit):
            transport.shutdown()
        t.join(limit)  # the shutdown above woke the send; bounded all the same

    def _closed_error(self) -> ConnectionClosedError:
        if self._fork_error is not None:
            return ConnectionClosedError(self._fork_error)
        reason = getattr(self, "_closed_reason", None)
        if self._state == DISCONNECTED:
            return ConnectionClosedError("not connected: call connect() first")
        if reason is not None:
            return ConnectionClosedError(
                f"connection closed ({reason}): create a new client with natsync.connect()"
            )
        return ConnectionClosedError()

    def _check_fork(self) -> None:
        if self._fork_error is not None:
            raise ConnectionClosedError(self._fork_error)

    def _forked(self) -> None:
        """In a forked child: this copy must never touch the parent's socket."""
        pid = self._pid
        self._fork_error = (
            f"this client was created in process {pid}; connect again in the child (process {os.getpid()})"
        )
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._state_cond = threading.Condition(self._lock)
        self._state = CLOSED
        for t in (self._transport, self._dialing):
            if t is not None:
                t.detach_without_shutdown()
        self._transport = None
        self._dialing = None
        self._threads = []
        self._wbuf = bytearray()
        self._events = EventDispatcher("natsync-events")
        # locks copied from the parent may be held by threads that do not exist here
        self._close_event = threading.Event()
        self._close_event.set()
        closed = ConnectionClosedError(self._fork_error)
        for sub in list(self._subs.values()):
            sub._cond = threading.Condition(threading.Lock())
            sub._thread = None
            sub._end(closed, discard=True)  # what is pending belongs to the parent
        self._subs.clear()
        self._pongs.clear()
        self._resp_map.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- introspection -------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._state == CONNECTED and self._fork_error is None

    @property
    def is_closed(self) -> bool:
        return self._state == CLOSED

    @property
    def is_reconnecting(self) -> bool:
        return self._state == RECONNECTING

    @property
    def is_draining(self) -> bool:
        return self._state in (DRAINING_SUBS, DRAINING_PUBS)

    @property
    def is_connecting(self) -> bool:
        return self._state == CONNECTING

    @property
    def connected_url(self) -> str | None:
        """The redacted URL of the server connected to, or None."""
        if self._state not in (CONNECTED, DRAINING_SUBS, DRAINING_PUBS) or self._pool is None:
            return None
        cur = self._pool.current
        return cur.redacted() if cur is not None else None

    @property
    def servers(self) -> list[str]:
        """Redacted URLs of every server in the pool (explicit and discovered)."""
        return self._pool.redacted_urls() if self._pool is not None else []

    @property
    def discovered_servers(self) -> list[str]:
        """Redacted URLs of the servers learned from INFO ``connect_urls``."""
        return self._pool.redacted_discovered() if self._pool is not None else []

    @property
    def server_info(self) -> dict[str, Any]:
        """The most recent INFO, as received."""
        return dict(self._server_info)

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def client_id(self) -> int | None:
        return self._client_id

    @property
    def stats(self) -> Stats:
        return Stats(
            in_msgs=self._in_msgs,
            out_msgs=self._out_msgs,
            in_bytes=self._in_bytes,
            out_bytes=self._out_bytes,
            reconnects=self._reconnects,
            errors_received=self._errors_received,
        )

    def rtt(self, timeout: float | None = None) -> float:
        """Round-trip time to the server in seconds (a PING/PONG)."""
        start = time.perf_counter()
        self.flush(timeout)
        return time.perf_counter() - start

    def _server_name(self) -> str:
        cur = self._pool.current if self._pool is not None else None
        return cur.redacted() if cur is not None else "server"

    def __repr__(self) -> str:
        url = self.connected_url
        where = f" {url}" if url else ""
        return f"<natsync.Client {_STATE_NAMES.get(self._state, '?')}{where}>"

    # --- JetStream (natsync.js, imported on first use) -----------------------------------

    def jetstream(
        self,
        prefix: str | None = None,
        domain: str | None = None,
        timeout: float = 5.0,
        publish_async_max_pending: int = 4000,
    ) -> JetStream:
        """Return a JetStream context on this connection (see :mod:`natsync.js`)."""
        from .js import JetStream

        return JetStream(
            self, prefix=prefix, domain=domain, timeout=timeout,
            publish_async_max_pending=publish_async_max_pending,
        )

    def jsm(
        self,
        prefix: str | None = None,
        domain: str | None = None,
        timeout: float = 5.0,
        publish_async_max_pending: int = 4000,
    ) -> JetStream:
        """nats-py's name of the JetStream manager: the same :class:`~natsync.js.JetStream`."""
        return self.jetstream(prefix, domain, timeout, publish_async_max_pending)


def _permissions_error(text: str) -> PermissionsError:
    low = text.lower()
    op = (
        "publish"
        if " publish " in low or "for publish" in low
        else ("subscribe" if "subscription" in low else "")
    )
    subject = ""
    queue = None
    q1 = text.find('"')
    if q1 >= 0:
        q2 = text.find('"', q1 + 1)
        if q2 > q1:
            subject = text[q1 + 1 : q2]
    qi = low.find('using queue "')
    if qi >= 0:
        rest = text[qi + len('using queue "') :]
        queue = rest.split('"', 1)[0]
    return PermissionsError(f"permissions violation: {text}", operation=op, subject=subject, queue=queue)


def _describe(e: BaseException) -> str:
    if isinstance(e, NatsError):
        return str(e)
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, OSError) and isinstance(e, builtins.TimeoutError):
        return "timed out"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _as_bytes(payload: object) -> bytes:
    if isinstance(payload, str):
        return payload.encode()
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    if payload is None:
        return b""
    raise TypeError(f"payload must be bytes, bytearray, memoryview or str, not {type(payload).__name__}")


NATS = Client


def connect(servers: str | Sequence[str] | None = None, **options: Any) -> Client:
    """Create a :class:`Client` and connect it; see :meth:`Client.connect`."""
    return Client().connect(servers, **options)

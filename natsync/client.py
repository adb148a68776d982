"""The natsync client: the façade that wires the jobs of a connection together.

Modules, one job each (each readable alone):

* ``_options``: the validated ``connect()`` options.
* ``_handshake``: dialling one server (TCP, TLS, INFO/CONNECT/PONG); no locks, no threads.
* ``_writer``: the one writer of the socket, with a deadline (``flusher_timeout``).
* ``_requests``: the request mux (one wildcard inbox subscription, a waiter per request).
* ``_subs``: the subscription table (routing by sid, delivery threads still running).
* ``_lifecycle``: drain, close, fork and interpreter exit.
* ``_state``: the connection states.
* ``subscription``: one subscription's state (ACTIVE -> DRAINING -> ENDED) and queue.
* ``dispatch``: the event thread (``error_cb`` and the other event callbacks), bounded.
* this module: the façade (the public API), the connection state machine, the reader
  and reconnect.

Threads of one client (all named ``natsync-...``, all daemon, all joined by ``close()``
against one shared deadline):

* **reader** — the only thread that reads the socket once it runs. It is not started by
  ``connect()``: a subscription or request starts it at once, and otherwise the
  process-wide starter (``_starter``) starts it 50 ms after connect; until then a
  ``flush()`` reads on its caller's thread (``_read_inline``), holding ``_read_token``
  as the reader does for its whole life. It parses, routes MSG to its
  subscription's queue, PONG to flush waiters, INFO to the server pool, -ERR to error
  handling. The socket has a receive timeout (at most 1 s, at most ``ping_interval``):
  on a timeout the reader sends a PING when one is due and detects a stale connection,
  so there is no pinger thread. When the connection breaks it runs the reconnect loop
  itself, so there is never more than one connection attempt at a time.
* **writer** — started on the first publish, not on connect; see ``_writer``.
* **events** — started on the first event; runs event callbacks in order.
* **sub-N** — one per callback subscription: runs its callback, one message at a time.

Locks and rules:

* ``_lock`` guards the state, the write queue (its ``front`` list, its gate, every
  take and every removal), the subscription table, every subscription's state,
  ``_pongs``, ``_pending_size``, ``_companions`` and ``_drain_hooks``. It is held only
  for short, non-blocking work: never across a socket call, never while user code
  runs. ``publish()``'s fast path takes no lock: it appends its message to the writer's
  publish list with one atomic list operation, then looks at the gate (open exactly
  while CONNECTED, changed under ``_lock`` with the state); a publisher that finds it
  closed takes the lock and looks for its own message (see ``_writer``). So a publish
  is ordered with ``close()``, ``drain()``, a disconnect and the writer's take: it
  raises, or its message is sent, or it is counted in ``stats.dropped_msgs`` (see
  docs/threading.rst). No correctness argument rests on the GIL.
* The writer's send lock is taken before ``_lock``; a subscription's ``_cond`` after it.
* ``_lazy_lock`` serialises the first connect of a lazy client (taken before ``_lock``).
* ``_reader_lock`` orders starting the reader against ``close()``; ``_read_token`` is
  held by whoever reads the socket.
* User code (callbacks) never runs on the reader or writer thread, nor under a lock.
* Every call with a timeout waits on its own deadline, never on the socket; every
  blocking call wakes when the client closes.

Who calls whom: the façade calls the writer (append, ``send_soon``, ``kick``), the
handshake and the request mux; the writer calls back ``_writable``/``_write_failed``;
subscriptions call back through ``SubOwner`` (``_unsubscribe``, ``_drain_sub``,
``_report_error``...); messages through ``Responder`` (``_respond``). Neither
``subscription`` nor ``msg`` imports this module.
"""

from __future__ import annotations

import builtins
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

from . import _lifecycle, _starter
from . import _protocol as protocol
from ._dispatch import EventDispatcher
from ._handshake import AUTH_ERRORS as _AUTH_ERRORS
from ._handshake import VERSION, Connection, handshake, handshake_error
from ._lifecycle import JOIN_GRACE as _JOIN_GRACE
from ._lifecycle import live_clients as _live_clients
from ._nuid import next_nuid
from ._options import DEFAULT as _DEFAULT
from ._options import Options, _Default, build_options, check_number
from ._protocol import OK, PING, PONG, Err, Info, MsgRun, Parser
from ._requests import Latch, RequestMux, Waiter
from ._servers import Server, ServerPool
from ._state import (
    CLOSED,
    CONNECTED,
    CONNECTED_STATES,
    CONNECTING,
    DISCONNECTED,
    DRAINING_PUBS,
    DRAINING_SUBS,
    LAZY,
    RECONNECTING,
    STATE_NAMES,
)
from ._subs import SubTable
from ._transport import Transport
from ._writer import Writer
from ._writer import fresh_crlf as _fresh_crlf
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
    NotConnectedError,
    OutboundBufferFullError,
    PermissionsError,
    SecureConnectionError,
    SlowConsumerError,
    StaleConnectionError,
    TimeoutError,
)
from .headers import HeadersInput, encode_headers
from .msg import Msg
from .subscription import ACTIVE, DRAINING, ENDED, MsgHandler, Subscription

if TYPE_CHECKING:  # pragma: no cover
    from .js import JetStream

__all__ = ["Client", "NATS", "Stats", "connect"]

log: logging.Logger = logging.getLogger("natsync")

__version__ = VERSION

_READ_SIZE: Final = 64 * 1024
# Per thread: the CRLF object that ends the messages this thread's publish() appends
# without a lock. Under a closed gate the publish list holds only messages whose
# publishers have not looked yet, at most one per thread (a publish looks before it
# returns), so the object names its publisher's message there (see _writer). A reused
# object rather than a new one per publish: no allocation that another thread frees.
_MINE = threading.local()
_INLINE_READ_SIZE: Final = 4096  # flush() reading before the reader runs: PONG, PING, INFO, -ERR
# More than this waiting for the writer makes a publisher wait for room (back-pressure).
_FLUSH_THRESHOLD: Final = 1024 * 1024
_ROOM_CHECK: Final = 3 * _FLUSH_THRESHOLD  # len(queue) is 3 items per message
_FLUSH_DEFAULT: Final = 10.0
_MAX_TICK: Final = 1.0  # the reader's receive timeout at most

_SUBJECT_CACHE_MAX: Final = 4096  # subjects whose PUB lines are kept
_SIZES_PER_SUBJECT: Final = 64  # payload sizes whose whole PUB line is kept, per subject

_STALE = "stale connection"
_PERMISSIONS = "permissions violation"
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
    #: Of ``out_msgs``, the messages that may not have reached the server (at most
    #: once): queued for a connection that broke, or in the batch being written when
    #: it broke, or still queued when ``close()``'s final flush reached its deadline.
    #: (A message the kernel accepted before the connection broke is not counted: TCP
    #: cannot tell; a successful ``flush()`` with no reconnect since the publish
    #: confirms delivery.)
    dropped_msgs: int = 0


class Client:
    """A NATS connection. Create with :func:`natsync.connect` or ``Client()`` then
    :meth:`connect`. Safe to use from many threads. See README for every option.
    """

    def __init__(self) -> None:
        self._state = DISCONNECTED
        self._lock = threading.Lock()
        self._state_cond = threading.Condition(self._lock)  # notified on state changes
        self._lazy = False
        self._lazy_lock = threading.Lock()  # one first-use connect at a time
        self._opts: Options | None = None
        self._server_list: list[Server] = []
        self._pool: ServerPool | None = None
        self._transport: Transport | None = None
        self._dialing: Transport | None = None  # a connection attempt's transport, for close()
        self._parser: Parser | None = None
        self._server_info: dict[str, Any] = {}
        self._max_payload = 1024 * 1024
        self._headers_ok = True
        self._w = Writer(self, self._lock, 10.0, "natsync-writer")
        self._pongs: deque[Waiter | None] = deque()
        # For each PING in _pongs, the messages accepted before it (Writer.accepted());
        # _confirmed: the mark of the last PONG read, i.e. every message up to it was read
        # by the server (messages taken for a broken connection count as settled: they
        # were counted dropped or sent). close() waits for the server's end of stream
        # only when messages beyond it were sent. Guard: _lock (both, with _pongs).
        self._ping_marks: deque[int] = deque()
        self._confirmed = 0
        self._pings_out = 0
        self._next_ping = 0.0
        self._tick: float | None = None
        self._table = SubTable()
        # subject -> {payload size -> ("PUB <subject> <size>\r\n", room)}
        self._pub_cache: dict[str, dict[int, tuple[bytes, int]]] = {}
        self._mux = RequestMux("")
        self._events = EventDispatcher("natsync-events")
        self._reader: threading.Thread | None = None
        self._reader_lock = threading.Lock()  # starting the reader vs close()
        # Held by whoever reads the socket: the reader thread (for its whole life), or,
        # before it runs, a flush() reading on its caller's thread (see _read_inline).
        self._read_token = threading.Lock()
        self._leftover: list[Any] = []  # events that came with the handshake's PONG
        self._close_event = Latch()
        self._close_done = Latch()
        # Threads of features built on this client (JetStream ack and ordered-consumer
        # threads): each ends when the client closes, and close() joins them (guard: _lock).
        self._companions: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        # Called by drain() before any subscription drains, with drain's absolute
        # time.monotonic() deadline (JetStream's publish_async waits for its acks there).
        # Guard: _lock (drain copies the list under it and calls the hooks outside it).
        self._drain_hooks: list[Callable[[float], None]] = []
        self._drain_started = False  # drain() passed its state check (guard: _lock)
        self._close_deadline = 0.0  # the first close()'s deadline (guard: _lock)
        self._closing_flush = False  # close() is sending what was buffered
        self._disconnect_reason: BaseException | None = None
        self._reason_reported = False
        self._closed_reason: NatsError | None = None
        self._last_error: NatsError | None = None
        self._pid = os.getpid()
        self._fork_error: str | None = None
        self._initial_connect = True
        # Once a server required TLS, every later connection requires it too (as nats.go):
        # no downgrade to plaintext on a reconnect or to a discovered server.
        self._secure = False
        # stats: in_* have a single writer, the reader; out_* are counted by the writer queue
        self._in_msgs = 0
        self._in_bytes = 0
        self._reconnects = 0
        self._errors_received = 0
        self._pending_size = 0  # wire bytes buffered while not connected
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
        flusher_timeout: float = 10.0,
        flush_on_exit: bool = True,
        error_cb: Callable[[NatsError], Any] | None = None,
        disconnected_cb: Callable[[], Any] | None = None,
        reconnected_cb: Callable[[], Any] | None = None,
        closed_cb: Callable[[], Any] | None = None,
        discovered_server_cb: Callable[[], Any] | None = None,
        lame_duck_mode_cb: Callable[[], Any] | None = None,
        lazy: bool = False,
    ) -> Client:
        """Connect to the first reachable server of *servers*; return this client.

        Raises :class:`TypeError` / :class:`ValueError` for bad options (before any
        socket is opened), :class:`AuthorizationError` when a server rejects the
        credentials, :class:`NoServersError` when no server could be reached (unless
        ``retry_on_failed_connect``).

        With ``lazy=True`` the options are checked now but nothing is opened: the first
        call that needs the connection (``publish``, ``subscribe``, ``request``,
        ``flush``, ``rtt``) connects, once, however many threads make it at the same
        time, and raises what ``connect()`` would raise (the client stays lazy then).
        ``close()`` and ``drain()`` of a client that never connected close it without
        I/O. In a forked child the first use opens the child's own connection. See the
        README, "Lazy client".
        """
        kw = dict(locals())
        del kw["self"], kw["servers"], kw["lazy"]
        self._check_fork()
        if self._state != DISCONNECTED:
            raise NatsError("connect() was already called on this client: create a new Client")
        o, server_list = build_options(servers, kw, Client.connect.__kwdefaults__)
        self._opts = o
        self._server_list = server_list
        self._pool = ServerPool(server_list, randomize=not o.dont_randomize)
        self._mux = RequestMux(f"{o.inbox_prefix}.{next_nuid()}.")
        self._w.stall = o.flusher_timeout
        tick = min(_MAX_TICK, o.flusher_timeout)
        if o.ping_interval > 0:
            tick = min(tick, o.ping_interval)
        self._tick = tick
        if lazy:
            self._lazy = True
            with self._lock:
                self._state = LAZY
            return self
        return self._connect_now()

    def _ensure_connected(self, until: float | None = None) -> None:
        """First use of a lazy client: connect now, exactly once across threads. *until*:
        the caller's deadline (``time.monotonic()``), for a call that takes a timeout:
        the connect (or the wait for another thread's) ends by it."""
        self._check_fork()
        if until is None:
            self._lazy_lock.acquire()
        elif not self._lazy_lock.acquire(timeout=max(until - time.monotonic(), 0.0)):
            raise TimeoutError("timed out while another thread connects this lazy client")
        try:
            if self._state == LAZY:
                self._connect_now(until)
        finally:
            self._lazy_lock.release()

    def _connect_now(self, until: float | None = None) -> Client:
        """Try every server once; start the reader on success (the body of connect()).
        *until*: a lazy client's first use with a timeout: no attempt after it."""
        o = self._opts
        assert o is not None and self._pool is not None
        self._state = CONNECTING
        errors: list[tuple[Server, BaseException]] = []
        for srv in self._pool.first_pass():
            if until is not None and errors and time.monotonic() >= until:
                break  # out of time: what failed so far is the answer
            try:
                leftover = self._attempt(srv, until)
            except (OSError, NatsError) as e:
                srv.last_error = e
                errors.append((srv, e))
                log.debug("connect to %s failed: %s", srv.redacted(), e)
                continue
            except BaseException:  # user code (a token callable, a signer) failed: no thread left
                self._after_failed_connect()
                raise
            self._leftover = leftover
            _starter.schedule(self)  # no thread on the connect path (see _starter)
            return self
        # every server failed
        auth = next((e for _, e in reversed(errors) if isinstance(e, AuthorizationError)), None)
        if o.retry_on_failed_connect and auth is None:
            with self._lock:
                if self._state == CONNECTING:
                    self._state = RECONNECTING
            self._ensure_reader()  # starts by reconnecting
            return self
        self._after_failed_connect()
        if auth is not None:
            raise auth
        tls_err = next((e for _, e in reversed(errors) if isinstance(e, SecureConnectionError)), None)
        if tls_err is not None and len(errors) == 1:
            raise tls_err
        detail = "; ".join(f"{s.redacted()}: {_describe(e)}" for s, e in errors)
        raise NoServersError(f"could not connect to any server ({detail})")

    def _after_failed_connect(self) -> None:
        if self._lazy:
            # a lazy client tries again on its next use
            self._events.stop(_JOIN_GRACE)
            self._events = EventDispatcher("natsync-events")
            self._initial_connect = True
            with self._lock:
                self._state = LAZY
                self._state_cond.notify_all()
            return
        with self._lock:
            self._state = CLOSED
            self._state_cond.notify_all()
        self._close_event.set()
        self._close_done.set()
        self._events.stop(_JOIN_GRACE)
        _live_clients.discard(self)

    def _ensure_reader(self) -> None:
        """Start the reader thread unless it runs or the client is closed (any thread)."""
        if self._reader is not None:
            return
        with self._reader_lock:
            if self._reader is not None or self._close_event.is_set() or self._state == CLOSED:
                return
            reader = threading.Thread(target=self._reader_main, name="natsync-reader", daemon=True)
            self._reader = reader
            try:
                reader.start()
            except RuntimeError:
                # interpreter shutdown (CPython >= 3.12 starts no thread in an atexit
                # handler): no reader; a thread never started must not be joined
                self._reader = None

    def _on_dial(self, transport: Transport | None) -> None:
        """The handshake's transport, registered so that close() can shut it down."""
        with self._lock:
            self._dialing = transport
            if transport is not None and self._state == CLOSED:
                raise ConnectionClosedError()

    def _attempt(self, srv: Server, until: float | None = None) -> list[Any]:
        """Dial *srv*, run the handshake (by *until*, when given), install the
        connection; return the events that arrived after the handshake's PONG. Raises
        OSError or a NatsError on failure."""
        o = self._opts
        assert o is not None and self._pool is not None
        self._pool.current = srv
        conn = handshake(srv, o, self._secure, self._make_parser, self._on_dial, until)
        try:
            self._install(srv, conn)
        except BaseException:
            conn.transport.close()
            raise
        return conn.leftover

    def _make_parser(self) -> Parser:
        # messages are built by the parser itself (no call per message), bound to this client
        return Parser(msg_type=Msg, owner=self)

    def _install(self, srv: Server, conn: Connection) -> None:
        """Make *conn* the live connection: resend the ACTIVE subscriptions (with what is
        left of their auto-unsubscribe counts), then what was buffered while
        disconnected, then mark CONNECTED."""
        o = self._opts
        assert o is not None
        transport = conn.transport
        if conn.secure:
            self._secure = True
        transport.settimeout(self._tick)
        transport.stall = o.flusher_timeout
        with self._lock:
            if self._state == CLOSED:
                raise ConnectionClosedError()
            was_reconnect = not self._initial_connect
            self._initial_connect = False  # also after a retry_on_failed_connect success
            self._apply_info(conn.info, initial=not was_reconnect)
            out = self._table.resend()  # ACTIVE ones only
            if out:
                self._w.ctl_first(out)
            self._pending_size = 0
            self._transport = transport
            self._parser = conn.parser
            self._pings_out = 0
            self._next_ping = time.monotonic() + o.ping_interval
            self._disconnect_reason = None
            self._reason_reported = False
            if self._state not in (DRAINING_SUBS, DRAINING_PUBS):
                self._state = CONNECTED
                self._w.open_gate()
            self._state_cond.notify_all()
        srv.reconnects = 0
        srv.did_connect = True
        srv.last_error = None
        self._w.send_soon()
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
        if isinstance(mp, int) and not isinstance(mp, bool) and mp > 0 and mp != self._max_payload:
            self._max_payload = mp
            self._pub_cache = {}  # its PUB lines were checked against the old limit
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

    # --- the reader ----------------------------------------------------------------------

    def _reader_main(self) -> None:
        with self._read_token:  # a flush() reading on its own thread finishes first
            self._read_loop()

    def _read_loop(self) -> None:
        buf = bytearray(_READ_SIZE)
        view = memoryview(buf)
        leftover: list[Any] | None = self._leftover
        self._leftover = []
        while True:
            transport = self._transport
            parser = self._parser
            if transport is None or parser is None:
                # retry_on_failed_connect, or the connection broke before this thread ran
                if self._state != RECONNECTING or self._close_event.is_set():
                    return
                if not self._reconnect_loop():
                    return
                leftover = self._leftover
                continue
            try:
                if leftover:
                    self._process(leftover)
                    leftover = None
                feed = parser.feed_runs
                recv_into = transport.recv_into
                process = self._process
                while True:
                    try:
                        n = recv_into(buf)
                    except builtins.TimeoutError:
                        self._on_idle(transport)  # nothing arrived for a tick: a PING due?
                        continue
                    if not n:
                        transport.peer_closed = True  # close() waits for this (see _lifecycle)
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

    def _read_inline(self, w: Waiter, deadline: float) -> None:
        """flush() before the reader thread runs: read on the caller's thread until *w*
        is filled or *deadline* passes, handling what arrives as the reader would.

        When another thread reads, or the connection is TLS, or it breaks, this starts
        the reader thread and returns: a broken connection is shut down with its cause
        kept (as a failed write does), so the reader handles the disconnect, callbacks
        and reconnect off this caller's deadline. The caller then waits on *w* as usual.
        """
        token = self._read_token
        if not token.acquire(blocking=False):
            self._ensure_reader()  # somebody reads: make sure the reader thread takes over
            return
        try:
            transport = self._transport
            parser = self._parser
            handoff = transport is None or parser is None or transport.tls
            if not handoff:
                assert transport is not None and parser is not None
                try:
                    if self._leftover:
                        events, self._leftover = self._leftover, []
                        self._process(events)
                    buf = bytearray(_INLINE_READ_SIZE)
                    view = memoryview(buf)
                    while not w.filled:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        if not transport.wait_readable(left):
                            continue
                        n = transport.recv_into(buf)
                        if not n:
                            transport.peer_closed = True
                            raise ConnectionResetError("server closed the connection")
                        events = parser.feed_runs(view[:n])
                        if events:
                            self._process(events)
                except Exception as e:  # noqa: BLE001 - any failure of the connection
                    if self._disconnect_reason is None:
                        self._disconnect_reason = e  # the cause, for the reader to report
                        self._reason_reported = False
                    transport.shutdown()
                    handoff = True
        finally:
            token.release()
        if handoff:
            self._ensure_reader()

    def _process(self, events: list[Any]) -> None:
        """Route parsed events (reader thread)."""
        subs = self._table.by_sid
        # hoisted: the inbox subscription cannot receive in the batch in which it is created
        resp_sub = self._table.resp
        for ev in events:
            if ev.__class__ is MsgRun:  # consecutive messages of one sid: routed once
                msgs = ev.msgs
                self._in_msgs += len(msgs)
                self._in_bytes += ev.nbytes
                sub = subs.get(ev.sid)
                if sub is None:
                    continue
                if sub is resp_sub:
                    for m in msgs:
                        self._mux.on_response(m)
                else:
                    sub._enqueue_run(msgs, ev.nbytes)
            elif ev.__class__ is Msg:
                self._in_msgs += 1
                self._in_bytes += len(ev.data)
                sub = subs.get(ev.sid)
                if sub is None:
                    continue
                if sub is resp_sub:
                    self._mux.on_response(ev)
                else:
                    sub._enqueue(ev)
            elif ev is PONG:
                with self._lock:
                    self._pings_out = 0
                    try:
                        w = self._pongs.popleft()
                        self._confirmed = self._ping_marks.popleft()
                    except IndexError:
                        w = None
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

    def _on_idle(self, transport: Transport) -> None:
        """Nothing arrived for a receive timeout (reader thread): send a PING when one
        is due; too many unanswered means the connection is stale."""
        o = self._opts
        assert o is not None
        if o.ping_interval <= 0:
            return
        now = time.monotonic()
        if now < self._next_ping:
            return
        self._next_ping = now + o.ping_interval
        with self._lock:
            if self._state != CONNECTED or self._transport is not transport:
                return
            stale = self._pings_out >= o.max_outstanding_pings
            if not stale:
                self._pings_out += 1
                self._pongs.append(None)
                self._ping_marks.append(self._w.accepted())
                self._w.ctl(protocol.PING_CMD)
        if stale:
            self._disconnect_reason = StaleConnectionError(
                f"{self._server_name()} did not answer {o.max_outstanding_pings} PINGs; reconnecting"
            )
            self._reason_reported = False
            transport.shutdown()  # the next recv fails: disconnect, reconnect
        else:
            self._w.send_soon()

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
            err = handshake_error(srv, text) if srv is not None else AuthorizationError(text)
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
        with self._lock:
            if self._state == CLOSED:
                return False
            self._last_error = _as_nats_error(reason, f"connection to {self._server_name()} lost")
            self._transport = None
            self._parser = None
            # What was buffered for the broken connection may hold PINGs and SUBs of its own;
            # messages in it were never acknowledged: at-most-once, dropped.
            self._w.close_gate()
            self._w.drop()
            self._w.idle.notify_all()  # publishers waiting for room: there is no connection now
            self._pending_size = 0
            pongs = list(self._pongs)
            self._pongs.clear()
            self._ping_marks.clear()
            self._confirmed = self._w.out_msgs  # taken for this connection: sent or dropped
            draining = self._state in (DRAINING_SUBS, DRAINING_PUBS)
            if not draining:
                self._state = RECONNECTING
            self._state_cond.notify_all()
        if isinstance(reason, NatsError) and not self._reason_reported:
            self._report_error(reason)  # protocol error, stale connection, stalled write
        log.info("disconnected from %s: %s", self._server_name(), _describe(reason))
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
        self._leftover = []
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
                self._last_error = e
            except (OSError, NatsError) as e:
                if self._close_event.is_set():
                    return False
                srv.last_error = e
                log.debug("reconnect to %s failed: %s", srv.redacted(), _describe(e))
                err = (
                    e
                    if isinstance(e, NatsError)
                    else NatsError(f"reconnect to {srv.redacted()} failed: {_describe(e)}")
                )
                self._last_error = err
                self._report_error(err)
            except Exception as e:  # user code (a token callable, a signer): report, keep trying
                srv.last_error = e
                self._report_error(e)
        return False

    # --- the writer's owner interface ----------------------------------------------------

    def _writable(self) -> Transport | None:
        """The transport the writer may write to now (called with _lock held)."""
        st = self._state
        if st == CONNECTED or st == DRAINING_SUBS or st == DRAINING_PUBS or self._closing_flush:
            return self._transport
        return None

    def _write_failed(self, transport: Transport, err: OSError) -> None:
        """A write failed or stalled past flusher_timeout: break the connection; the
        reader sees it and reconnects."""
        if self._transport is transport and self._disconnect_reason is None:
            o = self._opts
            stall = o.flusher_timeout if o is not None else 0.0
            self._disconnect_reason = NatsError(
                f"write to {self._server_name()} failed ({_describe(err)}); flusher_timeout is {stall:g} s: "
                "reconnecting"
            )
            self._reason_reported = False
        log.debug("write failed: %s", err)
        transport.shutdown()
        self._ensure_reader()  # it sees the shut-down socket and reconnects

    # --- callbacks -----------------------------------------------------------------------

    def _post_cb(self, cb: Callable[[], Any] | None) -> None:
        if cb is not None:
            self._events.post(cb)

    def _report_error(self, err: BaseException) -> None:
        o = self._opts
        if not isinstance(err, NatsError):
            err.__traceback__ = None  # a traceback keeps frames (and messages) alive
            wrapped = NatsError(f"{type(err).__name__}: {err}")
            wrapped.__cause__ = err
            err = wrapped
        log.debug("error: %s", err)
        if o is not None and o.error_cb is not None:
            self._events.post_error(o.error_cb, err)

    def _slow_consumer(self, sub: Subscription) -> None:
        self._report_error(SlowConsumerError(sub))

    # --- writing -------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Queue protocol bytes if connected (dropped otherwise: they belong to this connection)."""
        with self._lock:
            if self._state in CONNECTED_STATES:
                self._w.ctl(data)
        self._w.send_soon()

    def publish(
        self,
        subject: str,
        payload: PayloadType = b"",
        reply: str | None = None,
        headers: HeadersInput | None = None,
    ) -> None:
        """Publish *payload* to *subject*; returns once buffered (see :meth:`flush`).

        *payload* is bytes-like, or str (sent as UTF-8). Raises
        :class:`BadSubjectError`, :class:`BadHeaderError`, :class:`MaxPayloadError`
        for bad input (nothing is sent), :class:`ConnectionClosedError`,
        :class:`ConnectionDrainingError`, :class:`OutboundBufferFullError`. When more
        than about 1 MiB waits for the socket, it waits for room (at most ``flusher_timeout``).
        """
        if type(payload) is not bytes:
            payload = _as_bytes(payload)
        size = len(payload)
        # head: everything before the payload ("PUB <subject> <size>\r\n", or the HPUB
        # line and the header block), so that one triplet is the whole message
        if reply is None and headers is None:
            try:
                head, room = self._pub_cache[subject][size]
            except KeyError:  # a new subject or size: checked once
                head, room = self._pub_head(subject, size)
        else:
            head, room = self._head_with(subject, size, reply, headers)
        # No lock (see _writer's docstring, "Two lists, one gate"): append the triplet
        # with one atomic list operation, then look at the gate. Its CRLF is this
        # thread's own object, by which _publish_late() finds this message again.
        try:
            crlf = _MINE.crlf
        except AttributeError:  # this thread's first publish
            crlf = _MINE.crlf = _fresh_crlf()
        w = self._w
        q = w.q
        q += (head, payload, crlf)
        # room: the queue length at which about 1 MiB waits if every queued message is
        # this one's size; past it, wait until the writer takes the queue
        if w.go and len(q) <= room:
            return  # the common case: open, and the writer is on its way
        if w.open:
            if not w.kicked:
                w.kick()
            if len(q) > room:
                self._backpressure(room)
            return
        self._publish_late(head, payload, crlf)

    def _publish_late(self, head: bytes, payload: bytes, crlf: bytes) -> None:
        """publish() appended its triplet, then found the gate closed (not CONNECTED):
        was the message taken by the gate's closing (then it is sent, or counted
        dropped, by that change's rule), or is it still in the publish list (then it was
        never accepted: take it back and publish the locked way)? *crlf* is this
        thread's object (the last triplet ending with it is this call's: a publish made
        by a finalizer inside this one looked and returned before this one goes on)."""
        w = self._w
        with self._lock:
            # open again: the triplet is still in q (it goes out on this connection) or
            # was taken by an earlier closing; either way it is accepted
            found = False if w.open else w.withdraw(crlf)
        if not found:
            w.kick()
            return
        self._publish_locked(head, payload, True)

    def _publish_quiet(
        self,
        subject: str,
        payload: PayloadType,
        reply: str | None,
        headers: HeadersInput | None,
        respond: bool = False,
        reply_checked: bool = False,
    ) -> None:
        """publish() without waking the writer: for request() and respond(), which hand
        the queue to the socket themselves right after (a wake-up would only cost a
        thread switch). *reply_checked*: the reply subject was made here from a checked
        inbox prefix (request())."""
        if type(payload) is not bytes:
            payload = _as_bytes(payload)
        size = len(payload)
        if reply is None and headers is None and not respond:
            entry = self._pub_cache.get(subject, {}).get(size)
            head = entry[0] if entry is not None else self._pub_head(subject, size)[0]
        else:  # a reply subject is used once: not worth a place in the PUB line cache
            head = self._head_with(subject, size, reply, headers, reply_checked)[0]
        self._publish_locked(head, payload, False)

    def _publish_inbox_reply(
        self, subject: str, payload: PayloadType, reply: str, headers: HeadersInput | None
    ) -> None:
        """publish() with a reply subject that natsync made from a checked inbox and a
        token of digits (JetStream's publish_async): only the subject is checked."""
        if type(payload) is not bytes:
            payload = _as_bytes(payload)
        cache = self._pub_cache
        if type(subject) is str and subject not in cache and len(cache) < _SUBJECT_CACHE_MAX:
            protocol.validate_subject(subject)
            cache[subject] = {}  # checked once (the cache's keys are checked subjects)
        head = self._head_with(subject, len(payload), reply, headers, reply_checked=True)[0]
        self._publish_locked(head, payload, True)

    def _head_with(
        self,
        subject: str,
        size: int,
        reply: str | None,
        headers: HeadersInput | None,
        reply_checked: bool = False,
    ) -> tuple[bytes, int]:
        """The PUB/HPUB line (and header block) of a message with a reply or headers,
        and its room (see publish())."""
        prefix, hdr = self._slow_prefix(subject, reply, headers, reply_checked)
        if hdr is None:
            if size > self._max_payload:
                raise self._too_big(size, 0)
            head = prefix + b"%d\r\n" % size
        else:
            hl = len(hdr)
            if hl + size > self._max_payload:
                raise self._too_big(size, hl)
            head = prefix + b"%d %d\r\n" % (hl, hl + size) + hdr
        return head, _room(head, size)

    def _pub_head(self, subject: str, size: int) -> tuple[bytes, int]:
        """The PUB line of *subject* and *size* and its room (see publish()), checked and
        cached. Sizes are checked against max_payload here only: a new max_payload
        empties the cache."""
        cache = self._pub_cache
        heads = cache.get(subject)
        if heads is None:
            protocol.validate_subject(subject)
            if len(cache) >= _SUBJECT_CACHE_MAX:
                cache.clear()
            heads = cache[subject] = {}
        if size > self._max_payload:
            raise self._too_big(size, 0)
        head = b"PUB %s %d\r\n" % (subject.encode(), size)
        if len(heads) >= _SIZES_PER_SUBJECT:
            heads.clear()
        entry = heads[size] = (head, _room(head, size))
        return entry

    def _backpressure(self, room: int) -> None:
        o = self._opts
        assert o is not None
        self._w.wait_room(room, time.monotonic() + o.flusher_timeout)

    def _publish_locked(self, head: bytes, payload: bytes, kick: bool) -> None:
        """Publish under the client's lock: a message publish() took back (see
        _publish_late), request() and respond(). Connects a lazy client; when not
        CONNECTED, buffers while reconnecting (charging the wire bytes to
        ``reconnect_buffer_size``) and refuses when closed or in the last phase of a
        drain."""
        if self._state == LAZY or (self._lazy and self._state == CONNECTING):
            self._ensure_connected()  # the first use connects; later first uses wait for it
        w = self._w
        with self._lock:
            if not w.open:
                self._check_publish_state(len(head) + len(payload) + 2)
            w.put(head, payload)
        if kick:
            w.kick()

    def _too_big(self, size: int, header_size: int) -> MaxPayloadError:
        hdr = f" plus {header_size} bytes of headers" if header_size else ""
        return MaxPayloadError(
            f"payload of {size} bytes{hdr} is over the server's max_payload of {self._max_payload} "
            "bytes: send less, or raise max_payload in the server config"
        )

    def _slow_prefix(
        self, subject: str, reply: str | None, headers: HeadersInput | None, reply_checked: bool = False
    ) -> tuple[bytes, bytes | None]:
        if type(subject) is not str or subject not in self._pub_cache:  # its keys were checked
            protocol.validate_subject(subject)
        if reply is not None and type(reply) is not str:
            raise BadSubjectError(f"reply subject must be str or None, not {type(reply).__name__}")
        if reply and not reply_checked:
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
        if st == CLOSED or st == DISCONNECTED or st == LAZY:
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

    def _respond(self, reply: str, data: PayloadType, headers: HeadersInput | None) -> None:
        """Msg.respond(): a reply is on somebody's latency path: hand it to the socket
        from this thread when that cannot block, else to the writer."""
        if headers is None:
            self._publish_now(reply, data, b"", keep=False)  # a reply subject is used once
            return
        self._publish_quiet(reply, data, None, headers, respond=True)
        self._w.send_soon()

    def _publish_now(self, subject: str, payload: PayloadType, mid: bytes, keep: bool) -> None:
        """request() and respond() without headers: their PUB line (*mid*: ``b" "`` and
        a checked reply subject, or empty), queued and handed to the socket from this
        thread (Writer.send_one); the locked way when not CONNECTED (buffered while
        reconnecting, refused when closed). *subject* is checked unless it is a key of
        the PUB line cache (checked ones), and kept there with *keep*."""
        if type(payload) is not bytes:
            payload = _as_bytes(payload)
        size = len(payload)
        cache = self._pub_cache
        if type(subject) is not str or subject not in cache:
            protocol.validate_subject(subject)
            if keep and len(cache) < _SUBJECT_CACHE_MAX:
                cache[subject] = {}
        if size > self._max_payload:
            raise self._too_big(size, 0)
        head = b"PUB %s%s %d\r\n" % (subject.encode(), mid, size)
        w = self._w
        if not w.send_one(head, payload):
            self._publish_locked(head, payload, False)
            w.send_soon()

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
        if self._state == LAZY or (self._lazy and self._state == CONNECTING):
            # the first use connects (by this call's deadline); later first uses wait for it
            self._ensure_connected(deadline)
        while True:
            w = Waiter()
            with self._lock:
                st = self._state
                if st in (CLOSED, DISCONNECTED, LAZY):
                    raise self._closed_error()
                if st in CONNECTED_STATES:
                    self._w.ctl(protocol.PING_CMD)
                    self._pongs.append(w)
                    self._ping_marks.append(self._w.accepted())
                    sent = True
                else:
                    sent = False
                    left = deadline - time.monotonic()
                    if left > 0:
                        self._state_cond.wait(left)
            if sent:
                self._w.send_soon()
                if self._reader is None:
                    self._read_inline(w, deadline)  # no reader thread yet: read here
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
                raise TimeoutError(f"flush timed out after {timeout} s (not connected: reconnecting)")

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
            check_number("max_msgs", max_msgs, gt=0, integer=True)
        o = self._opts
        if o is None:
            raise self._closed_error()
        pm = o.pending_msgs_limit if isinstance(pending_msgs_limit, _Default) else pending_msgs_limit
        pb = o.pending_bytes_limit if isinstance(pending_bytes_limit, _Default) else pending_bytes_limit
        check_number("pending_msgs_limit", pm, gt=0, allow_none=True, integer=True)
        check_number("pending_bytes_limit", pb, gt=0, allow_none=True, integer=True)
        if self._state == LAZY or (self._lazy and self._state == CONNECTING):
            self._ensure_connected()  # the first use connects; later first uses wait for it
        with self._lock:
            st = self._state
            if st in (CLOSED, DISCONNECTED, LAZY):
                raise self._closed_error()
            if st in (DRAINING_SUBS, DRAINING_PUBS):
                raise ConnectionDrainingError("connection is draining: subscribe refused")
            sid = self._table.next_sid()
            sub = Subscription(self, sid, subject, queue, cb, pm, pb)
            if max_msgs is not None:
                sub._max = max_msgs
            self._table.add(sub)
            if st == CONNECTED:
                self._w.ctl(protocol.encode_sub(subject, sid, queue))
                if max_msgs is not None:
                    self._w.ctl(protocol.encode_unsub(sid, max_msgs))
            # not connected: _install() sends every ACTIVE subscription on connect
        self._ensure_reader()
        if sub._thread is not None:
            sub._thread.start()
        self._w.kick()
        return sub

    # SubOwner: what a subscription calls back

    def _unsubscribe(self, sub: Subscription, limit: int | None) -> None:
        if limit is not None:
            check_number("limit", limit, gt=0, integer=True)
        with self._lock:
            st = self._state
            if st in (CLOSED, DISCONNECTED, LAZY):
                raise self._closed_error()
            if st in (DRAINING_SUBS, DRAINING_PUBS):
                raise ConnectionDrainingError(
                    "the connection is draining: its subscriptions end when their pending messages "
                    "are delivered; unsubscribe refused"
                )
            if sub._state == ENDED:
                raise BadSubscriptionError(f"subscription {sub.sid} has already ended")
            connected = st in CONNECTED_STATES
            reached = True
            if limit is not None:
                # the reader counts and compares with _max under the subscription's lock:
                # one step against its count, so the last message is never missed
                with sub._mutex:
                    reached = sub._received >= limit
                    if not reached:
                        sub._max = limit
            if not reached:
                if connected and sub._state == ACTIVE:
                    # the server counts from the SUB it got on this connection
                    assert limit is not None
                    self._w.ctl(protocol.encode_unsub(sub.sid, max(limit - sub._received_at_sub, 1)))
            else:
                self._table.remove(sub)
                if connected:
                    self._w.ctl(protocol.encode_unsub(sub.sid))
                sub._end(
                    BadSubscriptionError(f"subscription {sub.sid} was unsubscribed"), discard=limit is None
                )
        self._w.kick()

    def _sub_reached_max(self, sub: Subscription) -> None:
        """The reader counted a subscription's last message (its auto-unsubscribe limit)."""
        with self._lock:
            self._table.remove(sub)
            sub._end(BadSubscriptionError(f"subscription {sub.sid} reached its limit of {sub._max} messages"))

    def _sub_finished(self, sub: Subscription) -> None:
        """A callback subscription's delivery thread ends."""
        with self._lock:
            self._table.finished(sub)

    def _drain_sub(self, sub: Subscription, timeout: float | None) -> None:
        o = self._opts
        assert o is not None
        if timeout is None:
            timeout = o.drain_timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            st = self._state
            if st in (CLOSED, DISCONNECTED, LAZY):
                raise self._closed_error()
            if sub._state == ENDED:
                raise BadSubscriptionError(f"subscription {sub.sid} has already ended")
            if sub._state == ACTIVE:
                sub._state = DRAINING  # never resent by a reconnect
                if st in CONNECTED_STATES:
                    self._w.ctl(protocol.encode_unsub(sub.sid))
        # every message sent before the server processed UNSUB arrives before its PONG
        try:
            self.flush(max(deadline - time.monotonic(), 0.001))
        except ConnectionClosedError:
            raise
        except NatsError:  # timed out or reconnecting: deliver what did arrive
            pass
        with self._lock:
            self._table.remove(sub)
            sub._end(BadSubscriptionError(f"subscription {sub.sid} was drained"))
        if sub._thread is not None and sub._thread is not threading.current_thread():
            if not sub._done.wait(max(deadline - time.monotonic(), 0)):
                log.warning(
                    "drain of subscription %d: thread %s still running its callback at the "
                    "deadline; not waiting for it",
                    sub.sid,
                    sub._thread.name,
                )
                raise TimeoutError(f"drain of subscription {sub.sid} timed out after {timeout} s")
            # _done is set as the thread's last step: this join is short, and bounded
            sub._thread.join(max(deadline - time.monotonic(), 0))
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
        :class:`natsync.TimeoutError` when no reply came in time, or at once when the
        client is not connected (reconnecting), :class:`ConnectionClosedError` if the
        client closes meanwhile.
        """
        if timeout is None or timeout <= 0:
            raise ValueError("request timeout must be > 0")
        deadline = time.monotonic() + timeout  # everything this call waits for shares it
        st = self._state
        if st != CONNECTED:
            if st == LAZY or (self._lazy and st == CONNECTING):
                # the first use connects (by the deadline); later first uses wait for it
                self._ensure_connected(deadline)
                st = self._state
            if st in (RECONNECTING, CONNECTING):
                # nothing could answer before the connection is back: say so now rather
                # than after the whole timeout
                raise NotConnectedError(
                    f"not connected (reconnecting): request on {subject!r} not sent; retry when the "
                    f"client is connected again to {self._server_name()}"
                )
        if self._table.resp is None:
            self._init_resp_sub()
        mux = self._mux
        reply, w = mux.register()
        try:
            if headers is None:
                # the reply was made here from the checked inbox prefix
                self._publish_now(subject, payload, b" " + reply.encode(), keep=True)
            else:
                self._publish_quiet(subject, payload, reply, headers, reply_checked=True)
                self._w.send_soon()
            if not w.wait(max(deadline - time.monotonic(), 0.0)):
                if self._state in (RECONNECTING, CONNECTING):
                    raise NotConnectedError(
                        f"not connected (reconnecting): no reply to request on {subject!r} within "
                        f"{timeout} s, the connection was lost meanwhile"
                    )
                raise TimeoutError(f"no reply to request on {subject!r} within {timeout} s")
        finally:
            mux.forget(reply)
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
            if self._table.resp is not None:
                return
            st = self._state
            if st in (CLOSED, DISCONNECTED, LAZY):
                raise self._closed_error()
            sid = self._table.next_sid()
            sub = Subscription(self, sid, self._mux.prefix + "*", None, None, None, None)
            self._table.add(sub)
            self._table.resp = sub
            if st in CONNECTED_STATES:
                self._w.ctl(protocol.encode_sub(sub.subject, sid, None))
        self._ensure_reader()

    # --- lifecycle (see _lifecycle) --------------------------------------------------------

    def drain(self, timeout: float | None = None) -> None:
        """Drain every subscription, send what is buffered, then close.

        While disconnected (reconnecting) there is nothing to drain from the server: the
        client closes at once. Everything it waits for, the close included, shares one
        deadline: it raises :class:`natsync.TimeoutError` after *timeout* (default
        ``drain_timeout``); the client is closed anyway, and a thread still running a
        callback then is logged by name and not waited for.
        """
        _lifecycle.drain(self, timeout)

    def close(self) -> None:
        """Stop delivery at once (queued messages are discarded; a callback already
        running finishes), send what was published and wait until the server has read
        it (within ``flush_timeout`` or 2 s; what is not sent, or not known to be read,
        by then is logged and counted in ``stats.dropped_msgs``), call
        ``disconnected_cb`` (if connected) then ``closed_cb``, join every thread.

        When it returns, every message published before it was read by the server or
        is counted in ``stats.dropped_msgs``: if messages were written that no PONG
        confirmed, the socket is shut down for writing and read until the server
        closes its side (a plain close with unread bytes would reset the connection
        and lose what the server had not read yet). Everything it waits for shares one
        deadline: that flush limit plus 5 s; a thread still running a callback then is
        logged by name and not waited for. Idempotent; a concurrent second call waits
        for the first."""
        self._close_within(None)

    def _close_within(self, deadline: float | None) -> None:
        """close(), everything it waits for bounded by *deadline* (absolute
        ``time.monotonic()``; None: close()'s own, see close()). For the library's
        shutdown paths that have a deadline of their own (a worker's drain timeout)."""
        if self._fork_error is not None:
            return
        if self._state == DISCONNECTED:
            with self._lock:
                self._state = CLOSED
            self._close_done.set()
            return
        if self._state == LAZY and self._close_lazy():
            return
        if deadline is None:
            self._close(None, from_reader=False)
        else:
            self._close(None, from_reader=False, flush_deadline=deadline, deadline=deadline)

    def _close_lazy(self) -> bool:
        return _lifecycle.close_lazy(self)

    def _close(
        self,
        reason: NatsError | None,
        from_reader: bool,
        flush_deadline: float | None = None,
        deadline: float | None = None,
    ) -> None:
        _lifecycle.close(self, reason, from_reader, flush_deadline, deadline)

    def _exit_flush(self, deadline: float) -> None:
        _lifecycle.exit_flush(self, deadline)

    def _closed_error(self) -> ConnectionClosedError:
        if self._fork_error is not None:
            return ConnectionClosedError(self._fork_error)
        reason = self._closed_reason
        if self._state == DISCONNECTED:
            return ConnectionClosedError("not connected: call connect() first")
        if self._state == LAZY:
            return ConnectionClosedError("not connected yet (lazy client): a later call will connect")
        if reason is not None:
            return ConnectionClosedError(
                f"connection closed ({reason}): create a new client with natsync.connect()"
            )
        return ConnectionClosedError()

    def _check_fork(self) -> None:
        if self._fork_error is not None:
            raise ConnectionClosedError(self._fork_error)

    def _forked(self) -> None:
        _lifecycle.forked(self)

    @property
    def _resp_prefix(self) -> str:
        return self._mux.prefix

    @property
    def _subs(self) -> dict[int, Subscription]:
        return self._table.by_sid

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
        """The id the server gave this connection; None before connecting and after close."""
        return self._client_id

    @property
    def last_error(self) -> NatsError | None:
        """The error that most recently broke the connection or failed a reconnect
        attempt (None while nothing went wrong)."""
        return self._last_error

    @property
    def stats(self) -> Stats:
        w = self._w
        with self._lock:  # what the writer took, and what is queued
            msgs, nbytes = w.pending()
            msgs += w.out_msgs
            nbytes += w.out_bytes
            dropped = w.dropped_msgs
        return Stats(
            in_msgs=self._in_msgs,
            out_msgs=msgs,
            in_bytes=self._in_bytes,
            out_bytes=nbytes,
            reconnects=self._reconnects,
            errors_received=self._errors_received,
            dropped_msgs=dropped,
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
        return f"<natsync.Client {STATE_NAMES.get(self._state, '?')}{where}>"

    # --- JetStream (natsync.js, imported on first use) -----------------------------------

    def _add_companion(self, thread: threading.Thread) -> None:
        """Have close() join *thread* (which must end when this client closes)."""
        with self._lock:
            self._companions.add(thread)

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


def _as_nats_error(e: BaseException, what: str) -> NatsError:
    if isinstance(e, NatsError):
        return e
    err = NatsError(f"{what}: {_describe(e)}")
    e.__traceback__ = None
    err.__cause__ = e
    return err


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


def _room(head: bytes, size: int) -> int:
    """publish()'s back-pressure room for a message (see publish())."""
    return _ROOM_CHECK // (len(head) + size + 2)


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

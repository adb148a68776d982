"""Teardown, fork and exit: how a client ends (functions of the client, which calls them).

* :func:`drain` stops interest in every subscription, waits (on its own deadline) for
  the callbacks to finish what is pending, sends what was published, then closes.
* :func:`close` stops delivery at once (queued messages are discarded; a running
  callback finishes), wakes every waiting call, sends what was published and, when
  some of it is unconfirmed, half-closes and waits for the server's end of stream
  (:func:`_await_server_eof`; bounded), calls ``disconnected_cb`` then ``closed_cb``
  once, and joins every thread against one shared deadline. A concurrent second close
  waits for the first (unless it runs on one of the client's own threads, which never
  waits on itself).
* :func:`forked`: in a child, every lock a client copied is replaced (never acquired); a
  lazy client goes back to "not connected yet", any other is closed with an error
  naming ``os.fork()``. The NUID generator is reseeded first.
* Exit: ``atexit`` flushes what live clients published, all within 2 s.

Threads and locks: these run on the caller's thread, or on the reader thread (a close
after the last reconnect attempt, or with ``allow_reconnect=False``). They take the
client's lock only for state changes; joins and waits are done without it. Only
``natsync.client`` calls them.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Final

from . import _protocol as protocol
from ._dispatch import EventDispatcher
from ._nuid import next_nuid, reseed_nuid
from ._requests import Latch, RequestMux
from ._servers import ServerPool
from ._state import (
    CLOSED,
    CONNECTED,
    DISCONNECTED,
    DRAINING_PUBS,
    DRAINING_SUBS,
    LAZY,
    RECONNECTING,
)
from ._subs import SubTable
from ._writer import Writer
from .errors import (
    BadSubscriptionError,
    ConnectionClosedError,
    ConnectionDrainingError,
    NatsError,
    NoServersError,
    TimeoutError,
)
from .subscription import ACTIVE, DRAINING, Subscription

if TYPE_CHECKING:  # pragma: no cover
    from ._transport import Transport
    from .client import Client

__all__ = ["drain", "close", "close_lazy", "exit_flush", "forked", "live_clients", "warn_unsent"]

log = logging.getLogger("natsync")

CLOSE_FLUSH_DEFAULT: Final = 2.0  # close(): the final flush without flush_timeout
JOIN_GRACE: Final = 5.0  # close(): threads (a running callback) get this long in all
EXIT_FLUSH: Final = 2.0  # flush_on_exit: every client together, at most this long


# Clients alive in this process: to disable (or reset, when lazy) them in a forked
# child, and to flush them at interpreter exit.
live_clients: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    reseed_nuid()  # before any client makes a new inbox prefix
    for c in list(live_clients):
        c._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _flush_at_exit() -> None:
    """atexit: send what live clients buffered, all of them within EXIT_FLUSH seconds."""
    deadline = time.monotonic() + EXIT_FLUSH
    for c in list(live_clients):
        c._exit_flush(deadline)
        warn_unsent(c)


atexit.register(_flush_at_exit)


def warn_unsent(c: Client) -> None:
    """Log one WARNING when *c* holds published messages it never sent (about to be lost).

    Core NATS publishing is at most once: what is buffered while reconnecting is lost
    if the client closes or the process exits first.  Saying so, with the count and the
    payload bytes, is the least a client owes the program that published them.
    """
    with c._lock:  # pending() reads the queue's two lists and its counters
        msgs, nbytes = c._w.pending()
    if msgs <= 0:
        return
    text = (
        f"{msgs} published message(s) ({nbytes} payload bytes) were never sent to the server and "
        f"are lost: the client {'closed' if c._state == CLOSED else 'is exiting'} before it could "
        "send them (core NATS is at most once; use JetStream or an outbox for messages that "
        "must not be lost)"
    )
    listening = False
    logger: logging.Logger | None = log
    while logger is not None and not listening:
        listening = any(not isinstance(h, logging.NullHandler) for h in logger.handlers)
        logger = logger.parent if logger.propagate else None
    if listening:
        log.warning("%s", text)
    elif log.isEnabledFor(logging.WARNING):
        # Logging is not configured (natsync's NullHandler keeps it quiet otherwise):
        # lost messages are still worth one line on stderr, as logging's lastResort would.
        print(f"natsync: WARNING: {text}", file=sys.stderr, flush=True)


def drain(c: Client, timeout: float | None = None) -> None:
    """Drain every subscription, send what is buffered, then close.

    While disconnected (reconnecting) there is nothing to drain from the server: the
    client closes at once. Raises :class:`natsync.TimeoutError` after *timeout*
    (default ``drain_timeout``); the client is closed anyway.
    """
    c._check_fork()
    o = c._opts
    if o is None:
        raise c._closed_error()
    if timeout is None:
        timeout = o.drain_timeout
    deadline = time.monotonic() + timeout
    if c._state == LAZY and c._close_lazy():
        return  # never connected: nothing to drain
    with c._lock:
        st = c._state
        if st in (CLOSED, DISCONNECTED):
            raise c._closed_error()
        if st in (DRAINING_SUBS, DRAINING_PUBS) or c._drain_started:
            raise ConnectionDrainingError("drain() is already running")
        disconnected = st != CONNECTED
        if not disconnected:
            c._drain_started = True  # a second drain() is refused from here on
            hooks = list(c._drain_hooks)
    if not disconnected:
        # The hook point: before any subscription is unsubscribed or marked DRAINING
        # (JetStream's publish_async waits for its acks here, which arrive on a
        # subscription). Outside the lock; each hook returns by the deadline.
        for hook in hooks:
            try:
                hook(deadline)
            except Exception:  # noqa: BLE001 - a hook's failure must not stop the drain
                log.exception("drain hook %r failed; draining on", hook)
        with c._lock:
            st = c._state
            if st == CLOSED:
                raise c._closed_error()
            disconnected = st != CONNECTED
            subs: list[Subscription] = []
            if not disconnected:
                subs = c._table.user_subs()
                c._state = DRAINING_SUBS
                c._w.close_gate()  # from here on publishes take the lock (see _writer)
                for s in subs:
                    if s._state == ACTIVE:
                        s._state = DRAINING
                        c._w.ctl(protocol.encode_unsub(s.sid))
    if disconnected:
        log.info("drain() while not connected: closing at once")
        c._close(None, from_reader=False, flush_deadline=deadline, deadline=deadline)
        return
    timed_out = False
    try:
        try:
            c.flush(max(deadline - time.monotonic(), 0.001))
        except NatsError:  # timed out, reconnecting or closed: drain what did arrive
            pass
        with c._lock:
            for s in subs:
                c._table.remove(s)
                s._end(BadSubscriptionError(f"subscription {s.sid} was drained"))
            # with the ones that ended by their limit and still deliver
            delivering = list(c._table.delivering.values())
        me = threading.current_thread()
        for s in delivering:
            if s._thread is not None and s._thread is not me:
                if not s._done.wait(max(deadline - time.monotonic(), 0)):
                    timed_out = True
                    break  # close() logs every thread still running a callback
        with c._lock:
            if c._state == DRAINING_SUBS:
                c._state = DRAINING_PUBS
        if not timed_out:
            try:
                c.flush(max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                timed_out = True
            except NatsError:
                pass
    finally:
        # closing included: the final flush and every join get what is left of the
        # drain's timeout (one deadline for everything drain() waits for)
        c._close(None, from_reader=False, flush_deadline=deadline, deadline=deadline)
    if timed_out:
        raise TimeoutError(f"drain did not finish within {timeout} s; the client was closed")


def close_lazy(c: Client) -> bool:
    """Close a lazy client that never connected (no I/O). False if it connected meanwhile."""
    with c._lazy_lock:
        with c._lock:
            if c._state != LAZY:
                return False
            c._state = CLOSED
            c._state_cond.notify_all()
    c._close_event.set()
    live_clients.discard(c)
    o = c._opts
    if o is not None:
        c._post_cb(o.closed_cb)
    c._events.stop(JOIN_GRACE)
    c._close_done.set()
    return True


def close(
    c: Client,
    reason: NatsError | None,
    from_reader: bool,
    flush_deadline: float | None = None,
    deadline: float | None = None,
) -> None:
    """Close *c*. Everything it waits for shares one deadline: *deadline* (drain()'s),
    else ``flush_timeout`` (or 2 s) plus JOIN_GRACE from now. The final flush ends by
    *flush_deadline* (default: ``flush_timeout`` or 2 s from now). A thread still
    running user code at the deadline (a callback, an event callback) is logged with
    its name and not waited for; the library's own threads end by themselves once the
    socket is closed."""
    o = c._opts
    me = threading.current_thread()
    now = time.monotonic()
    if flush_deadline is None:
        limit = (o.flush_timeout if o is not None else None) or CLOSE_FLUSH_DEFAULT
        flush_deadline = now + limit
    if deadline is None:
        deadline = max(flush_deadline, now) + JOIN_GRACE
    with c._lock:
        if c._state == CLOSED:
            done = c._close_done
            ours = me.name.startswith("natsync")
            already = True
            first_deadline = c._close_deadline
        else:
            already = False
            c._close_deadline = deadline
            transport = c._transport
            was_connected = transport is not None
            c._state = CLOSED
            c._w.close_gate()  # what was published so far goes out with the final flush
            c._closed_reason = reason
            c._client_id = None
            dialing = c._dialing
            closed = c._closed_error()
            # stop delivery at once: what is queued is discarded
            subs = c._table.take_all()
            for s in subs:
                s._end(closed, discard=True)
            c._closing_flush = was_connected
            dropped_before = c._w.dropped_msgs
            # the connection already failed (a write, a read, a -ERR) and the reader has
            # not handled it yet: a broken connection's rules count its messages
            broken = c._disconnect_reason is not None
            pongs = list(c._pongs)
            c._pongs.clear()
            c._ping_marks.clear()
            companions = list(c._companions) if c._companions else []
            c._state_cond.notify_all()
    if already:
        if not ours:
            # the first close is bounded by its deadline; a little slack for its last steps
            done.wait(max(first_deadline - time.monotonic(), 0.0) + 0.1)
        return
    live_clients.discard(c)
    # every waiting flush() and request() wakes at once
    for w in pongs:
        if w is not None:
            w.set(False, closed)
    c._mux.fail_all(closed)
    if dialing is not None and dialing is not transport:
        dialing.shutdown()  # a reconnect in its handshake: stop it now
    # Send what was published before close(), bounded: a server that stopped reading
    # must not hang close().
    flush_deadline = min(flush_deadline, deadline)
    flushed = False
    if was_connected and transport is not None and me is not c._w.thread:
        flushed = c._w.write_pending(flush_deadline)
    warn_unsent(c)  # publishers are refused now (CLOSED): what is left is lost
    with c._lock:
        c._closing_flush = False
        dropped = c._w.drop()  # what the final flush could not send by its deadline
        c._w.idle.notify_all()  # publishers waiting for room
        # written, not counted dropped, and not (yet) known to be read by the server:
        # no PONG covered them
        unconfirmed = c._w.out_msgs - c._confirmed - (c._w.dropped_msgs - dropped_before)
    if dropped:
        log.warning(
            "close(): %d message(s) published before close() were not sent by the final "
            "flush's deadline and were dropped (counted in stats.dropped_msgs)",
            dropped,
        )
    c._close_event.set()
    settled = False  # the server's end of stream came: it read everything we sent
    if transport is not None:
        if flushed and not dropped and unconfirmed > 0:
            # A plain close() with unread bytes in our receive buffer (a late PONG, a
            # server PING) resets the connection and throws away what the server has not
            # read yet, and a server writing to a closed socket gets a reset and stops
            # reading: half-close, and wait (until the flush deadline) for its EOF.
            settled = _await_server_eof(c, transport, flush_deadline, me)
        transport.close()  # wakes the reader in recv and the writer in send
    c._w.stop(deadline)  # a writer that was still in send() has counted its batch now
    unconfirmed = 0
    with c._lock:
        c._transport = None
        c._parser = None
        if was_connected and not settled and not broken:
            # written, not counted dropped yet, and not known to be read by the server
            # (no PONG covered them, no end of stream by the deadline): at most once
            unconfirmed = c._w.out_msgs - c._confirmed - (c._w.dropped_msgs - dropped_before)
            if unconfirmed > 0:
                c._w.dropped_msgs += unconfirmed
    if unconfirmed > 0:
        log.warning(
            "close(): the server did not confirm by the final flush's deadline that it read "
            "the last %d message(s) sent; they may be lost (counted in stats.dropped_msgs)",
            unconfirmed,
        )
    with c._reader_lock:  # _close_event is set: no reader starts after this
        reader = c._reader
    if reader is not None and reader is not me:
        # wakes on the closed socket or _close_event; a handshake in progress was shut down
        reader.join(max(deadline - time.monotonic(), 0.0))
    for s in subs:
        t = s._thread
        if t is not None and t is not me and t.is_alive():
            t.join(max(deadline - time.monotonic(), 0.0))  # a running callback finishes
            if t.is_alive():
                log.warning(
                    "thread %s (callback of subscription %d) still running at close()'s "
                    "deadline; not waiting for it",
                    t.name,
                    s.sid,
                )
    for t in companions:
        if t is not me and t.is_alive():
            t.join(max(deadline - time.monotonic(), 0.0))
            if t.is_alive():
                log.warning("thread %s still running at close()'s deadline; not waiting for it", t.name)
    if reason is not None and not isinstance(reason, NoServersError):
        log.info("closed: %s", reason)
    elif reason is not None:
        c._last_error = reason
        c._report_error(reason)
    if o is not None:
        if was_connected:
            c._post_cb(o.disconnected_cb)
        c._post_cb(o.closed_cb)
    c._events.stop(max(deadline - time.monotonic(), 0.0))
    c._close_done.set()


def _await_server_eof(c: Client, transport: Transport, deadline: float, me: threading.Thread) -> bool:
    """Half-close *transport* (a FIN after everything written) and wait until the server
    closes its side, which it does after reading all we sent, or until *deadline*. True
    when the server's end of stream came.

    Whoever reads the socket sees it: the reader thread (joined: it ends at the end of
    stream, as the client is CLOSED), or else this thread, holding the read token (a
    flush() reading on its own thread finishes first: its waiter was failed by close()).
    Nothing is written after the half-close: the final flush is done and the client is
    CLOSED, so the writer finds nothing to write to."""
    transport.shutdown_write()
    with c._reader_lock:  # the client is CLOSED: no reader starts after this
        reader = c._reader
    if reader is not None and reader is not me:
        reader.join(max(deadline - time.monotonic(), 0.0))
        return transport.peer_closed
    own = reader is me  # the reader holds the read token for its whole life
    if not own and not c._read_token.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
        return transport.peer_closed
    try:
        return transport.read_to_eof(deadline)
    finally:
        if not own:
            c._read_token.release()


def exit_flush(c: Client, deadline: float) -> None:
    """Interpreter exit: send what was published, if flush_on_exit (bounded)."""
    o = c._opts
    if o is None or not o.flush_on_exit or c._fork_error is not None:
        return
    if c._state not in (CONNECTED, DRAINING_SUBS, DRAINING_PUBS, RECONNECTING):
        return
    with c._lock:
        if not c._w.out_msgs and not c._w.has_data():
            return
    left = deadline - time.monotonic()
    if left <= 0:
        return
    try:
        c.flush(timeout=left)
    except Exception as e:  # noqa: BLE001 - exiting: nothing else to do
        log.debug("flush at exit failed: %s", e)


def forked(c: Client) -> None:
    """In a forked child: this copy must never touch the parent's socket.

    Every lock copied from the parent is replaced, never acquired: a thread of the
    parent may have held it at the fork, and that thread does not exist here. A lazy
    client goes back to "not connected yet", so that its next use connects the
    child; any other client is closed for good, with an error that says why.
    """
    parent = c._pid
    c._pid = os.getpid()
    c._lock = threading.Lock()
    c._lazy_lock = threading.Lock()
    c._reader_lock = threading.Lock()
    c._read_token = threading.Lock()
    c._state_cond = threading.Condition(c._lock)
    was_closed = c._state == CLOSED
    for t in (c._transport, c._dialing):
        if t is not None:
            t.detach_without_shutdown()
    c._transport = None
    c._dialing = None
    c._parser = None
    c._reader = None
    c._leftover = []
    o = c._opts
    c._w = Writer(c, c._lock, o.flusher_timeout if o is not None else 10.0, "natsync-writer")
    c._pending_size = 0
    c._drain_started = False
    c._events = EventDispatcher("natsync-events")
    c._close_done = Latch()
    lazy = c._lazy and not was_closed
    if lazy:
        c._fork_error = None
        closed = ConnectionClosedError(
            f"subscription made in process {parent} before os.fork(): it does not exist in the "
            f"forked child (process {c._pid}); subscribe again in the child"
        )
    else:
        c._fork_error = (
            f"this client was created in process {parent} and cannot be used after os.fork() "
            f"in the forked child (process {c._pid}): connect again in the child with a new client, "
            "or create the client with connect(..., lazy=True) so that it connects on first use"
        )
        closed = ConnectionClosedError(c._fork_error)
    for sub in c._table.take_all():
        sub._after_fork(closed)  # what is pending belongs to the parent
    c._table = SubTable()
    c._pongs.clear()
    c._ping_marks.clear()
    c._confirmed = 0  # the new writer counts from 0
    c._mux = RequestMux("")
    c._pings_out = 0
    c._client_id = None
    c._server_info = {}
    if not lazy:
        c._state = CLOSED
        c._close_event = Latch()
        c._close_event.set()
        c._close_done.set()
        return
    assert o is not None
    c._close_event = Latch()
    c._initial_connect = True
    c._disconnect_reason = None
    c._reason_reported = False
    c._closed_reason = None
    c._last_error = None
    c._in_msgs = c._in_bytes = 0  # the new writer counts from 0
    c._reconnects = c._errors_received = 0
    for srv in c._server_list:
        srv.reconnects = 0
        srv.last_error = None
        srv.did_connect = False
    c._pool = ServerPool(c._server_list, randomize=not o.dont_randomize)
    c._mux = RequestMux(f"{o.inbox_prefix}.{next_nuid()}.")  # the NUID was reseeded first
    c._state = LAZY

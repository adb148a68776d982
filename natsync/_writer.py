"""The writer: the one thread that writes to a connection's socket, with a deadline.

Everybody else only queues protocol bytes and then either :meth:`Writer.kick`\\ s the
writer or calls :meth:`Writer.send_soon`, which hands the bytes to the kernel from the
calling thread when that cannot block (nobody else is writing, plain TCP, and the socket
takes them at once) and kicks the writer for whatever is left. So no caller ever waits
on the socket: a caller with a timeout waits on its own deadline (a PONG, a reply),
whatever the peer does.

What is queued is a flat list of triplets, so that the bytes to send are
``b"".join(items)`` and the messages and payload bytes among them can be counted from
the triplets (``len/3`` minus the others, the sizes of ``items[1::3]``) instead of on
every publish:

* a message: ``(head, payload, CRLF)``, head being the ``PUB``/``HPUB`` line (and the
  header block). On ``publish()``'s fast path that CRLF is the publishing thread's
  own object (:func:`fresh_crlf`, made once per thread), by which a publisher finds
  its own message again (see "the gate" below);
* anything else (``SUB``, ``UNSUB``, ``PING``, ``PONG``, a resend, an unsent rest):
  ``(data, b"", b"")``, counted in ``_ctl``.

**Two lists, one gate.**

* ``q`` (the publish list) is never replaced. ``publish()`` appends its triplet to it
  *without a lock*, as one ``q += (head, payload, crlf)``: one list operation, atomic on every
  CPython (one C call that runs no Python code and allocates no collected object, so
  the GIL is not released inside it; a per-object lock on free-threaded CPython). Every
  other change to ``q`` (taking, sweeping, withdrawing) is made under the client's lock.
* ``front`` is guarded by the client's lock and is written before ``q``: what must go
  first (a resend of the subscriptions, the unsent rest of a write), and everything
  queued while the gate is closed (the reconnect buffer, a drain's last messages).
* ``open`` (the gate) is True exactly while the client is CONNECTED; it is changed under
  the client's lock together with the client's state. While it is closed, ``q`` is
  neither written nor counted.

The protocol that makes ``publish()`` linearizable with close(), drain(), a disconnect
and the writer's take, with no lock on its fast path:

1. The publisher appends its triplet to ``q``, *then* reads ``open``.
2. Closing the gate (:meth:`close_gate`, under the lock) first sets ``open = False``,
   then moves everything in ``q`` to ``front`` with one slice (``q[:]``, one atomic
   list operation): those messages are sent (or counted dropped) by the rule of the
   state change. Any triplet that slice did not see was appended after it, so after the
   gate closed: its publisher reads ``open`` False (the slice is ordered after the
   store by program order, and the append after the slice by the list's own atomicity;
   on free-threaded CPython the list's lock gives that happens-before edge).
3. A publisher that read False takes the lock and looks for its own triplet in ``q``,
   by the identity of its CRLF (:meth:`withdraw`; ``q`` then holds only triplets whose
   publishers have not looked yet, at most one per thread). Found: it was never accepted; it
   is removed, and the publish goes the locked way (buffered while reconnecting,
   refused when closed or draining). Not found: a gate closing moved it to ``front``
   (or the writer took it) before the publisher looked, so it is sent or counted
   dropped: publish() returns normally. If the gate is open again when it looks, its
   triplet is still in ``q`` (sent on the new connection) or was handled by an earlier
   step: it returns normally too.
4. Opening the gate (a connection installed) leaves in ``q`` the triplets of publishers
   that have not yet looked (step 3): they go out on the new connection, after
   ``front``.

The same ordering makes the ``kicked`` flag safe without a lock on the publisher's
side: the writer clears ``kicked`` under the lock *before* it takes ``q`` with one slice,
so a triplet that take did not see was appended after it, and its publisher, which reads
``kicked`` after appending, sees False and kicks again. In the common case the publisher
reads one flag, ``go`` (``open and kicked``, set under the lock whenever either
changes), and the queue's length (back-pressure); it looks at ``open`` and ``kicked``
one by one only when ``go`` is False.

The writer thread is started on the first kick, not on connect: a client that only
connects, flushes and closes never starts it. It writes with a deadline
(``flusher_timeout``): when the peer takes no byte for that long the write fails, the
owner breaks the connection, and the reconnect starts.

Threads and locks:

* ``lock`` is the client's lock: it guards ``front``, ``open``, every removal from
  ``q``, the ``kicked`` flag's clearing, the counters and the client's state. Held for
  short steps only, never across a socket call or user code.
* ``_send_lock`` is held by whoever writes to the socket (the writer thread, a caller in
  :meth:`send_soon` (which only tries it), the closing thread's final flush). Order:
  ``_send_lock`` before ``lock``.
* The owner interface (:class:`WriterOwner`): ``_writable()`` (called with ``lock`` held)
  returns the transport to write to, or None when not connected; ``_write_failed()``
  (called without locks) breaks the connection. No user code runs here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

from ._transport import Transport

__all__ = ["CRLF", "Writer", "WriterOwner", "fresh_crlf"]

CRLF: Final = b"\r\n"  # the third item of a message triplet queued under the lock
_NONE: Final = b""  # the second and third items of any other triplet (one object)
# One write's buffer: about _JOIN_BYTES, the items joined into it counted from the
# batch's payload bytes (known exactly) plus _HEAD_GUESS bytes per item for the PUB
# lines, at most _JOIN_MAX items. Few writes per batch of small messages (after each
# write the writer waits for the GIL, which a busy publisher holds for a switch
# interval), and no buffer of many MiB for big ones (a cluster of big messages among
# small ones makes one buffer larger, by at most those messages).
_JOIN_BYTES: Final = 1024 * 1024
_HEAD_GUESS: Final = 12
_JOIN_MAX: Final = 3 * 32 * 1024


def _check_fresh() -> bool:
    a, b = CRLF.upper(), CRLF.upper()
    return a == CRLF and a is not b and a is not CRLF


#: A new ``b"\r\n"`` object on every call: a thread's own third item of the message
#: triplets its ``publish()`` appends without a lock (its identity is how the publisher
#: finds its message again). ``bytes.upper()`` makes a new object on CPython; checked at
#: import, with a fallback.
fresh_crlf: Callable[[], bytes] = CRLF.upper if _check_fresh() else (lambda: bytes(bytearray(CRLF)))


class WriterOwner(Protocol):
    """What the writer needs from its client."""

    def _writable(self) -> Transport | None: ...

    def _write_failed(self, transport: Transport, err: OSError) -> None: ...


class _StartOnSet:
    """Stands in for the writer's event until the thread runs: the first ``set()``
    (a kick) starts the thread. Keeps the publish fast path free of a "started?" test."""

    __slots__ = ("_writer",)

    def __init__(self, writer: Writer) -> None:
        self._writer = writer

    def set(self) -> None:
        w = self._writer
        w._start()
        ev = w.event  # the thread's event (a kicker that read this stand-in late)
        if ev is not self:
            ev.set()


class Writer:
    """The write side of one client: what is queued and the thread that sends it."""

    def __init__(self, owner: WriterOwner, lock: threading.Lock, stall: float, name: str) -> None:
        # The publish list (see the module's docstring): appended to without a lock
        # (whole triplets, one ``+=``) while open; removed from only under lock.
        self.q: list[bytes] = []
        # Written before q; everything queued while the gate is closed (under lock).
        self.front: list[bytes] = []
        # The gate: True exactly while the client is CONNECTED (changed under lock).
        self.open = False
        self._ctl = 0  # triplets in front and q that are not messages (under lock)
        # messages (and their payload bytes) taken: sent, or dropped with a connection
        # (changed under lock)
        self.out_msgs = 0
        self.out_bytes = 0
        # of out_msgs, the messages that may not have reached the server: queued for a
        # connection that broke (or in the batch being written when it broke), or left
        # when close()'s final flush reached its deadline (changed under lock)
        self.dropped_msgs = 0
        self._batch_msgs = 0  # messages in the last batch taken (under lock)
        self._batch_bytes = 0  # and their payload bytes (under lock)
        # a kick is pending: set (under lock) by whoever sets the event, cleared by the
        # writer (under lock) before it takes the queue; read by publishers without it
        self.kicked = False
        # publish()'s one look at the flags after appending (written under lock, read
        # without it): ``open and kicked``, kept so by _set_go() at every change of
        # either. True: open, and the writer is on its way; False: look at each.
        self.go = False
        self.event: threading.Event | _StartOnSet = _StartOnSet(self)
        self.stall = stall
        self._owner = owner
        self._lock = lock
        self.idle = threading.Condition(lock)  # notified after each batch is taken/written
        self._send_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._name = name
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.busy = False  # a batch is being written (changed under lock)

    # --- the queue (every method here is called with lock held) ---------------------------

    def ctl(self, data: bytes) -> None:
        """Queue protocol bytes that are not a message, after everything queued."""
        if self.open:
            self.q += (data, _NONE, _NONE)
        else:
            self.front += (data, _NONE, _NONE)
        self._ctl += 1

    def ctl_first(self, data: bytes | bytearray | memoryview) -> None:
        """Queue protocol bytes before everything queued (a resend, an unsent rest)."""
        self.front[0:0] = (bytes(data), _NONE, _NONE)
        self._ctl += 1

    def put(self, head: bytes, payload: bytes) -> None:
        """Queue a message after everything queued (a publish that took the lock)."""
        if self.open:
            self.q += (head, payload, CRLF)
        else:
            self.front += (head, payload, CRLF)

    def open_gate(self) -> None:
        """The client is CONNECTED: publishers may append to q."""
        self.open = True
        self._set_go()

    def close_gate(self) -> None:
        """The client leaves CONNECTED: what publishers appended so far goes to front
        (sent, or dropped, by the rule of the change); what they append from now on is
        theirs to find again (:meth:`withdraw`). Idempotent."""
        if not self.open:
            return
        self.open = self.go = False  # before the slice: see the module's docstring
        items = self.q[:]
        if items:
            del self.q[: len(items)]
            self.front += items

    def withdraw(self, crlf: bytes) -> bool:
        """With the gate closed: remove the message triplet whose third item is *crlf*
        (that very object) from q. False if it is not there (a gate closing took it)."""
        items = self.q[:]
        for i in range(len(items) - 1, 1, -3):
            if items[i] is crlf:
                del self.q[i - 2 : i + 1]  # nothing before it moves: q only grows at its end
                return True
        return False

    def take(self) -> bytes:
        """Take everything that may be sent now (counting its messages), as bytes."""
        return b"".join(self.take_items())

    def take_items(self) -> list[bytes]:
        """Take everything that may be sent now (counting its messages): front, then,
        while the gate is open, q. Whole triplets."""
        items = self.front
        if items:
            self.front = []
        if self.open:
            got = self.q[:]  # one atomic step: what publishers appended until now
            if got:
                del self.q[: len(got)]
                if items:
                    items += got
                else:
                    items = got
        if not items:
            return items
        msgs, nbytes = self._count(items)
        self._ctl = 0
        self.out_msgs += msgs
        self.out_bytes += nbytes
        self._batch_msgs = msgs
        self._batch_bytes = nbytes
        return items

    def drop(self) -> int:
        """Empty the queue: its messages are counted in ``dropped_msgs`` (and, as
        accepted by publish(), in ``out_msgs``). Returns how many."""
        self._batch_msgs = 0
        self.take_items()
        n = self._batch_msgs
        self._batch_msgs = 0
        self.dropped_msgs += n
        return n

    def pending(self) -> tuple[int, int]:
        """The messages and payload bytes queued now (not yet taken)."""
        items = self.front + self.q[:] if self.open else self.front
        return self._count(items)

    def has_data(self) -> bool:
        """Anything queued that may be sent now."""
        return bool(self.front) or (self.open and bool(self.q))

    def queued(self) -> int:
        """Items waiting (for back-pressure: three per message)."""
        return len(self.q) + len(self.front)

    def accepted(self) -> int:
        """The messages accepted so far: taken (sent or dropped) plus queued now. A PING
        queued after them confirms them all when its PONG comes (close() uses it to know
        whether anything may be unread by the server). Called under lock; a message a
        publisher appends without the lock between this call and the PING is confirmed
        by that PONG too but not counted here: the mark errs low, never high."""
        queued = len(self.front) + (len(self.q) if self.open else 0)  # whole triplets
        return self.out_msgs + queued // 3 - self._ctl

    def _count(self, items: list[bytes]) -> tuple[int, int]:
        """The messages and payload bytes in *items*: everything in front (and in q
        while open), in which every triplet that is not a message was queued under lock
        and counted in _ctl."""
        payloads = items[1::3]
        if payloads and len(payloads[0]) + len(payloads[-1]) <= 512:
            # small messages: joining their payloads (one pass that adds the sizes
            # in C, then a copy of a few bytes each) takes less than half the time of
            # sum(map(len, ...)), and the writer holds the GIL meanwhile
            return len(items) // 3 - self._ctl, len(b"".join(payloads))
        return len(items) // 3 - self._ctl, sum(map(len, payloads))

    # --- callers -------------------------------------------------------------------------

    def kick(self) -> None:
        """Have the writer send what is buffered, soon. Never blocks (takes lock
        briefly: call it without lock)."""
        with self._lock:
            if self.kicked:
                return
            self.kicked = True
            self._set_go()
            ev = self.event
        ev.set()

    def _set_go(self) -> None:
        self.go = self.open and self.kicked

    def send_soon(self) -> None:
        """Send what is buffered from this thread if that cannot block; else kick."""
        self._send_here(None, b"")

    def send_one(self, head: bytes, payload: bytes) -> bool:
        """Queue one message (a request or a reply: somebody waits for it) and send the
        queue from this thread if that cannot block, as :meth:`send_soon`, in one hold
        of the lock. False, with nothing queued, when the gate is closed (not
        CONNECTED): the caller then publishes the locked way. Call without lock."""
        return self._send_here(head, payload)

    def _send_here(self, head: bytes | None, payload: bytes) -> bool:
        lock = self._lock
        if not self._send_lock.acquire(False):  # (positional: no keyword parsing)
            if head is not None:
                lock.acquire()
                try:
                    if not self.open:
                        return False
                    self.q += (head, payload, CRLF)
                finally:
                    lock.release()
            self.kick()  # the writer is at it; it looks at the buffer again when done
            return True
        left = False
        batch = 0
        try:
            lock.acquire()  # (not ``with``: a third of the cost on CPython 3.11)
            try:
                if head is not None:
                    if not self.open:
                        return False
                    self.q += (head, payload, CRLF)
                t = self._owner._writable()
                if t is None or t.tls or not self.has_data():
                    left = t is not None and self.has_data()
                    data = None
                else:
                    data = self.take()
                    batch = self._batch_msgs
            finally:
                lock.release()
            if data is not None:
                assert t is not None
                try:
                    n = t.try_send(data)
                except OSError as e:
                    with lock:
                        self.dropped_msgs += batch  # some may have been sent: at most once
                    self._owner._write_failed(t, e)
                    return True
                if n < len(data):
                    with lock:
                        if self._owner._writable() is t:  # still the same connection
                            self.ctl_first(memoryview(data)[n:])
                            left = True
        finally:
            self._send_lock.release()
        if left:
            self.kick()
        return True

    # --- the writer thread ---------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._stopped:
                return
            ev = threading.Event()
            t = threading.Thread(target=self._run, args=(ev,), name=self._name, daemon=True)
            try:
                t.start()
            except RuntimeError:
                # interpreter shutdown (CPython >= 3.12 starts no thread in an atexit
                # handler): no writer thread; what is queued goes out with the closing
                # thread's final flush, and a thread never started is never joined
                return
            self.event = ev
            self._thread = t
            ev.set()

    def _run(self, ev: threading.Event) -> None:
        lock = self._lock
        while True:
            ev.wait()
            # Cleared before the take in write_pending(): whoever appends after this
            # sees kicked False and sets the event again; whatever was appended before
            # it is taken by that write_pending().
            with lock:
                ev.clear()
                self.kicked = self.go = False
            if self._stopped:
                return
            self.write_pending(None)

    def write_pending(self, deadline: float | None) -> bool:
        """Write what is buffered until the buffer is empty (writer thread, or the
        closing thread's final flush with a *deadline*). False when it gave up."""
        if deadline is None:
            self._send_lock.acquire()
        elif not self._send_lock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            return False
        try:
            while True:
                with self._lock:
                    t = self._owner._writable()
                    items = self.take_items() if t is not None else None
                    if t is None or not items:  # (take_items() looked at q with one slice)
                        self.busy = False
                        self.idle.notify_all()
                        return True
                    batch = self._batch_msgs
                    n = len(items)
                    per = _JOIN_BYTES * n // (self._batch_bytes + _HEAD_GUESS * n)
                    per = min(_JOIN_MAX, max(3, per - per % 3))
                    self.busy = True
                    self.idle.notify_all()  # publishers waiting for room
                try:
                    if per >= n:  # joined a piece at a time (see _JOIN_BYTES)
                        t.write(b"".join(items), self.stall, deadline)
                    else:
                        for i in range(0, n, per):
                            t.write(b"".join(items[i : i + per]), self.stall, deadline)
                except OSError as e:
                    with self._lock:
                        self.dropped_msgs += batch  # some may have been sent: at most once
                        self.busy = False
                        self.idle.notify_all()
                    self._owner._write_failed(t, e)
                    return False
        finally:
            self._send_lock.release()

    def wait_room(self, room: int, deadline: float) -> None:
        """Back-pressure: wait (until *deadline*) while more than *room* items wait to be
        taken for a live connection (the caller sizes *room* from its message, so that
        it stands for about 1 MiB). Called without locks."""
        with self._lock:
            while self.queued() > room and self._owner._writable() is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.idle.wait(left)

    def stop(self, deadline: float) -> None:
        """End the writer thread (after the connection was shut down) and join it."""
        with self._start_lock:
            self._stopped = True
            t = self._thread
        self.event.set()
        if t is not None and t is not threading.current_thread():
            t.join(max(deadline - time.monotonic(), 0.0))

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

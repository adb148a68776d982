"""The writer: the one thread that writes to a connection's socket, with a deadline.

Everybody else only appends protocol bytes to the queue :attr:`Writer.q` and then either
:meth:`kick`\\ s the writer or calls :meth:`send_soon`, which hands the bytes to the
kernel from the calling thread when that cannot block (nobody else is writing, plain
TCP, and the socket takes them at once) and kicks the writer for whatever is left. So no
caller ever waits on the socket: a caller with a timeout waits on its own deadline (a
PONG, a reply), whatever the peer does.

The queue is a list of triplets, each appended with one ``q += (a, b, c)``:

* a message: ``(head, payload, CRLF)``, head being the ``PUB``/``HPUB`` line (and the
  header block);
* anything else (``SUB``, ``UNSUB``, ``PING``, ``PONG``, a resend): ``(data, b"", b"")``
  (see :meth:`ctl`).

So the bytes to send are ``b"".join(q)``, and the messages and payload bytes among them
are counted from the triplets (:meth:`take_items`, :meth:`pending`) instead of on every
publish. Whoever takes from the queue takes the whole list and puts an empty one in its
place.

**Guard: the client's lock** (``lock`` here) guards ``q``, ``_ctl``, ``kicked``,
``busy`` and the counters. Every append (``publish()`` included), every take and every
read of the queue's length or content happens under it, and so does every change of the
client's state that decides whether a message may still be queued (close, drain, a
disconnect). That makes ``publish()`` linearizable with them: a message is appended
either before the take that sends it, or before a state change after which it is sent
by the final flush or dropped by a documented rule (a broken connection), or not at all
(publish raises). Nothing rests on the GIL: the same holds with the GIL switching
threads inside an allocation (CPython <= 3.11 runs the garbage collector, and its
finalizers, there) and on free-threaded CPython. ``publish()`` builds its triplet before
taking the lock, so its critical section allocates nothing and no finalizer can run
inside it.

The writer thread is started on the first kick, not on connect: a client that only
connects, flushes and closes never starts it. It writes with a deadline
(``flusher_timeout``): when the peer takes no byte for that long the write fails, the
owner breaks the connection, and the reconnect starts.

Threads and locks:

* ``lock`` is the client's lock: it guards the queue (appends, takes, length), the
  ``kicked`` flag, the counters and the client's state. Held for short steps only, never
  across a socket call or user code.
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
from typing import Final, Protocol

from ._transport import Transport

__all__ = ["CRLF", "Writer", "WriterOwner"]

CRLF: Final = b"\r\n"  # the third item of a message triplet
_NONE: Final = b""  # the second and third items of any other triplet
_JOIN_ITEMS: Final = 3 * 1024  # triplets joined into one buffer for one write


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
    """The write side of one client: a buffer and the thread that sends it."""

    def __init__(self, owner: WriterOwner, lock: threading.Lock, stall: float, name: str) -> None:
        self.q: list[bytes] = []
        self._ctl = 0  # triplets in q that are not messages (changed under lock)
        # messages (and their payload bytes) taken from q: sent, or dropped with a
        # connection (changed under lock)
        self.out_msgs = 0
        self.out_bytes = 0
        # of out_msgs, the messages that may not have reached the server: queued for a
        # connection that broke (or in the batch being written when it broke), or left
        # when close()'s final flush reached its deadline (changed under lock)
        self.dropped_msgs = 0
        self._batch_msgs = 0  # messages in the last batch taken (under lock)
        # a kick is pending: set by whoever appends and sets the event, cleared by the
        # writer before it takes the queue (under lock)
        self.kicked = False
        self.event: threading.Event | _StartOnSet = _StartOnSet(self)
        self.stall = stall
        self._owner = owner
        self._lock = lock
        self.idle = threading.Condition(lock)  # notified after each batch is written
        self._send_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._name = name
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.busy = False  # a batch is being written (changed under lock)

    # --- the queue (every method here is called with lock held) ---------------------------

    def ctl(self, data: bytes) -> None:
        """Queue protocol bytes that are not a message."""
        self.q += (data, _NONE, _NONE)
        self._ctl += 1

    def ctl_first(self, data: bytes | bytearray | memoryview) -> None:
        """Queue protocol bytes before everything queued (a resend, an unsent rest)."""
        self.q[0:0] = (bytes(data), _NONE, _NONE)
        self._ctl += 1

    def take(self) -> bytes:
        """Take everything queued (counting its messages), as bytes."""
        return b"".join(self.take_items())

    def take_items(self) -> list[bytes]:
        """Take everything queued (counting its messages): whole triplets."""
        items = self.q
        if not items:
            return items
        # A new list: every append is made under lock, so nothing lands in the old one
        # after this.
        self.q = []
        msgs, nbytes = self._count(items)
        self._ctl = 0
        self.out_msgs += msgs
        self.out_bytes += nbytes
        self._batch_msgs = msgs
        return items

    def drop(self) -> int:
        """Empty the queue: its messages are counted in ``dropped_msgs`` (and, as
        accepted by publish(), in ``out_msgs``). Returns how many."""
        if not self.q:
            return 0
        self.take_items()
        n = self._batch_msgs
        self.dropped_msgs += n
        return n

    def pending(self) -> tuple[int, int]:
        """The messages and payload bytes queued now."""
        return self._count(self.q)

    def accepted(self) -> int:
        """The messages accepted so far: taken (sent or dropped) plus queued now. A PING
        queued after them confirms them all when its PONG comes (close() uses it to know
        whether anything may be unread by the server)."""
        return self.out_msgs + len(self.q) // 3 - self._ctl

    def _count(self, items: list[bytes]) -> tuple[int, int]:
        """The messages and payload bytes in *items*, everything queued now: every
        triplet that is not a message was queued under lock by ctl(), and counted."""
        return len(items) // 3 - self._ctl, sum(map(len, items[1::3]))

    # --- callers -------------------------------------------------------------------------

    def kick(self) -> None:
        """Have the writer send what is buffered, soon. Never blocks (takes lock
        briefly: call it without lock)."""
        with self._lock:
            if self.kicked:
                return
            self.kicked = True
            ev = self.event
        ev.set()

    def send_soon(self) -> None:
        """Send what is buffered from this thread if that cannot block; else kick."""
        if not self._send_lock.acquire(blocking=False):
            self.kick()  # the writer is at it; it looks at the buffer again when done
            return
        left = False
        batch = 0
        try:
            with self._lock:
                t = self._owner._writable()
                if t is None or not self.q or t.tls:
                    left = bool(self.q) and t is not None
                    data = None
                else:
                    data = self.take()
                    batch = self._batch_msgs
            if data is not None:
                try:
                    n = t.try_send(data) if t is not None else 0
                except OSError as e:
                    with self._lock:
                        self.dropped_msgs += batch  # some may have been sent: at most once
                    if t is not None:
                        self._owner._write_failed(t, e)
                    return
                if n < len(data):
                    with self._lock:
                        if self._owner._writable() is t:  # still the same connection
                            self.ctl_first(memoryview(data)[n:])
                            left = True
        finally:
            self._send_lock.release()
        if left:
            self.kick()

    # --- the writer thread ---------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._stopped:
                return
            ev = threading.Event()
            self.event = ev
            t = threading.Thread(target=self._run, args=(ev,), name=self._name, daemon=True)
            self._thread = t
            t.start()
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
                self.kicked = False
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
                    if t is None or not self.q:
                        self.busy = False
                        self.idle.notify_all()
                        return True
                    items = self.take_items()
                    batch = self._batch_msgs
                    self.busy = True
                    self.idle.notify_all()  # publishers waiting for room
                try:
                    # joined a piece at a time: small buffers are reused by the
                    # allocator, a big one costs fresh pages on every batch
                    for i in range(0, len(items), _JOIN_ITEMS):
                        t.write(b"".join(items[i : i + _JOIN_ITEMS]), self.stall, deadline)
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
            while len(self.q) > room and self._owner._writable() is not None:
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

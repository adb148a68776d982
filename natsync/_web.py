"""What natsync's web integrations share: the per-process client, handlers, the worker.

:mod:`natsync.flask` and :mod:`natsync.django` are thin layers over this module, which
imports neither Flask nor Django:

* :class:`ProcessClient` hands each process its own *lazy* client
  (``natsync.connect(..., lazy=True)``), made in that process on first use by
  :func:`make_client` with web-safe defaults, and drained when the process exits;
* :class:`HandlerRegistry` collects message handlers declared with ``@subscribe`` (core
  NATS) and ``@consume`` (JetStream pull consumers);
* :class:`Worker` runs handlers in a worker process and drains on SIGTERM/SIGINT;
* :func:`health` is the JSON body and status code of the health views.

Rules that keep web processes healthy: nothing here opens a connection before the
first call that needs one, handlers never run in web processes (only a worker
subscribes), and no user code runs under a lock of this module.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import re
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Final, Protocol

from ._protocol import validate_queue, validate_subject
from .client import Client, connect
from .errors import (
    AuthorizationError,
    ConnectionClosedError,
    ConnectionDrainingError,
    NatsError,
    NoRespondersError,
    NoServersError,
    OutboundBufferFullError,
)
from .errors import TimeoutError as NatsTimeoutError
from .msg import Msg

__all__ = [
    "check_options",
    "EXIT_DRAIN_TIMEOUT",
    "SHUTDOWN_WAIT",
    "ProcessClient",
    "UNAVAILABLE_ERRORS",
    "WEB_DEFAULTS",
    "Handler",
    "HandlerRegistry",
    "PermanentError",
    "Service",
    "Worker",
    "connect_option_names",
    "health",
    "public_text",
    "unavailable_body",
    "make_client",
]

log = logging.getLogger("natsync")
worker_log = logging.getLogger("natsync.worker")

#: Options a web process's client gets unless they are configured: a deploy while NATS is
#: down must not kill the site ("Worker failed to boot"), and the client must never give
#: up reconnecting after a long outage.
WEB_DEFAULTS: Final[Mapping[str, Any]] = {
    "retry_on_failed_connect": True,
    "max_reconnect_attempts": -1,
}

#: The errors that mean "NATS cannot serve this request now" (as opposed to a bug such as
#: a bad subject): the integrations answer them with HTTP 503.
UNAVAILABLE_ERRORS: Final[tuple[type[NatsError], ...]] = (
    ConnectionClosedError,
    ConnectionDrainingError,
    NoServersError,
    AuthorizationError,
    NatsTimeoutError,
    NoRespondersError,
    OutboundBufferFullError,
)

#: Seconds a web process waits at exit for its buffered publishes to reach the server.
EXIT_DRAIN_TIMEOUT: Final = 5.0
#: Seconds a web process that is reconnecting when it exits waits, by default, for the
#: connection to come back so that what it buffered is sent (``NATSYNC_SHUTDOWN_WAIT``,
#: Flask's ``NATS_SHUTDOWN_WAIT``).  Past it the messages are lost, and a WARNING says how
#: many.
SHUTDOWN_WAIT: Final = 5.0
#: Upper bound of :func:`ready_client`.
CONNECTING_WAIT: Final = 10.0
#: Seconds the health check waits for a round trip to the server.
HEALTH_TIMEOUT: Final = 1.0
#: Seconds between two fetches of a JetStream handler that found nothing, or retries
#: after a consumer could not be bound.
_CONSUME_RETRY: Final = 1.0
_DEFAULT_BACKOFF: Final = (1.0, 5.0, 30.0)

Payload = bytes | bytearray | memoryview | str
HandlerFunc = Callable[[Msg], Any]


def connect_option_names() -> dict[str, inspect.Parameter]:
    """The keyword options of :meth:`natsync.Client.connect`, by name (without ``servers``)."""
    params = inspect.signature(Client.connect).parameters
    return {n: p for n, p in params.items() if n not in ("self", "servers", "lazy")}


# --------------------------------------------------------------------------- the client

# Lazy clients made by make_client(), drained when the interpreter exits.  A forked child
# inherits the set; each process drains the connection it opened itself.
_exit_clients: weakref.WeakSet[Client] = weakref.WeakSet()
_exit_waits: weakref.WeakKeyDictionary[Client, float] = weakref.WeakKeyDictionary()  # guarded by _exit_lock
_exit_lock = threading.Lock()
_exit_registered = False


def make_client(
    servers: str | Sequence[str] | None,
    options: Mapping[str, Any],
    *,
    drain_at_exit: bool = True,
    shutdown_wait: float = SHUTDOWN_WAIT,
) -> Client:
    """Return a lazy client for *servers* with :data:`WEB_DEFAULTS` under *options*.

    No I/O happens here: the first call that needs the connection connects, in the
    process that makes it (a forked child opens its own).  Options are checked now.

    Args:
        servers: as for :func:`natsync.connect`.
        options: any other :func:`natsync.connect` option; these win over the defaults.
        drain_at_exit: drain the client (bounded by :data:`EXIT_DRAIN_TIMEOUT`) when the
            interpreter exits, so that what a web process published last is not lost.
        shutdown_wait: at exit, seconds to wait for a reconnect when messages are
            buffered (see :data:`SHUTDOWN_WAIT`).

    Raises:
        TypeError: for an unknown option.
        ValueError: for an out-of-range option value.
    """
    merged = dict(WEB_DEFAULTS)
    merged.update(options)
    # Remember the last error reported to error_cb for the health view (the user's
    # error_cb, if any, still gets every error).
    user_cb = merged.get("error_cb")
    holder: list[weakref.ref[Client]] = []

    def error_cb(err: NatsError) -> None:
        c = holder[0]() if holder else None
        if c is not None:
            _remember_error(c, err)
        if user_cb is not None:
            user_cb(err)

    if user_cb is None or callable(user_cb):
        merged["error_cb"] = error_cb
    client = connect(servers, lazy=True, **merged)
    holder.append(weakref.ref(client))
    if drain_at_exit:
        _drain_at_exit(client, shutdown_wait)
    return client


def ready_client(client: Client, limit: float = CONNECTING_WAIT) -> Client:
    """Return *client* once no first connect is in progress (waiting at most *limit* s).

    A lazy client's first use connects on the calling thread; with some natsync
    versions another thread calling ``request()`` meanwhile is told "not connected" at
    once instead of waiting for a handshake that takes a millisecond.  The integrations
    hand out their client through this function, so the second thread waits for the
    first connect attempt to end (it ends within ``connect_timeout`` per server; with
    NATS down the client is then reconnecting and requests fail fast, as they should).
    """
    if client.is_connecting:
        deadline = time.monotonic() + limit
        while client.is_connecting and time.monotonic() < deadline:
            time.sleep(0.002)
    return client


def _quiet(*args: object) -> None:
    return None


def check_options(servers: str | Sequence[str] | None, options: Mapping[str, Any]) -> None:
    """Check *servers* and *options* as :func:`natsync.connect` does, without any I/O.

    A lazy client is built and closed at once; the user's callbacks are checked for
    being callable but replaced for it, so that, for example, ``closed_cb`` is not
    called by a check.

    Raises:
        TypeError, ValueError: as :func:`natsync.connect` would.
    """
    merged = dict(WEB_DEFAULTS)
    merged.update(options)
    for key, value in merged.items():
        if key.endswith("_cb") and callable(value):
            merged[key] = _quiet
    connect(servers, lazy=True, **merged).close()


class ProcessClient:
    """One lazy client per process, created in the process that first asks for it.

    The options are checked when this object is made (a throw-away lazy client is built
    and closed: no I/O).  :meth:`get` creates the process's client on its first call in
    each process.  Creating it there, rather than once in the parent, matters beyond
    fork safety: gunicorn's ``-k gevent`` worker monkey-patches *after* the fork, so a
    client made in the master (``--preload``) would hold locks that are not green, and
    a greenlet blocking on one of them blocks every greenlet of the worker.  A process
    that never asks (gunicorn's master) never has a client at all.

    Args:
        servers: as for :func:`natsync.connect`.
        options: any other :func:`natsync.connect` option (over :data:`WEB_DEFAULTS`).
        shutdown_wait: see :data:`SHUTDOWN_WAIT`.

    Raises:
        TypeError, ValueError: for bad options, as :func:`natsync.connect` does.
    """

    def __init__(
        self,
        servers: str | Sequence[str] | None,
        options: Mapping[str, Any],
        *,
        shutdown_wait: float = SHUTDOWN_WAIT,
    ) -> None:
        if (
            isinstance(shutdown_wait, bool)
            or not isinstance(shutdown_wait, (int, float))
            or shutdown_wait < 0
        ):
            raise ValueError(f"the shutdown wait must be a number of seconds >= 0, not {shutdown_wait!r}")
        self.shutdown_wait = float(shutdown_wait)
        self._servers = servers
        self._options = dict(options)
        check_options(servers, self._options)
        self._lock = threading.Lock()
        self._pid = 0
        self._client: Client | None = None

    def get(self) -> Client:
        """The client of the calling process (created, without I/O, on first call here)."""
        client = self._client
        if client is None or self._pid != os.getpid():
            # No I/O and no yielding happens under this lock (connect(lazy=True) only
            # checks options), so it is safe even when it is not a green lock.
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    self._client = make_client(self._servers, self._options, shutdown_wait=self.shutdown_wait)
                    self._pid = os.getpid()
                client = self._client
        return ready_client(client)

    @property
    def current(self) -> Client | None:
        """The calling process's client if it made one, else None (never creates one)."""
        return self._client if self._pid == os.getpid() else None

    def close(self, timeout: float = EXIT_DRAIN_TIMEOUT) -> None:
        """Drain (or close) this process's client, if any; the next :meth:`get` makes a new one."""
        with self._lock:
            client = self._client if self._pid == os.getpid() else None
            self._client = None
            self._pid = 0
        if client is not None:
            close_quietly(client, timeout, self.shutdown_wait)


_last_errors: weakref.WeakKeyDictionary[Client, str] = weakref.WeakKeyDictionary()


def _remember_error(client: Client, err: BaseException) -> None:
    _last_errors[client] = _describe(err)


def _drain_at_exit(client: Client, shutdown_wait: float) -> None:
    global _exit_registered
    with _exit_lock:
        _exit_clients.add(client)
        _exit_waits[client] = shutdown_wait
        if not _exit_registered:
            atexit.register(_drain_exit_clients)
            _exit_registered = True


def _drain_exit_clients() -> None:
    with _exit_lock:
        clients = [(c, _exit_waits.get(c, SHUTDOWN_WAIT)) for c in _exit_clients]
        _exit_clients.clear()
    for client, wait in clients:
        close_quietly(client, EXIT_DRAIN_TIMEOUT, wait)


def buffered(client: Client) -> int:
    """How many published messages *client* holds that the server has not been sent yet."""
    w = getattr(client, "_w", None)  # the core's writer; pending() is read under its lock
    try:
        if w is None:
            return 0
        with client._lock:
            return int(w.pending()[0])
    except Exception:  # noqa: BLE001 - a core without it: nothing known to be buffered
        return 0


def close_quietly(client: Client, timeout: float, reconnect_wait: float = 0.0) -> None:
    """Drain *client* if it is connected (else close it); never raise, never connect.

    When the client is reconnecting with messages buffered, first wait up to
    *reconnect_wait* seconds for the connection to come back, so that they are sent; a
    client closed with messages still buffered logs a WARNING with their count.
    """
    try:
        if client.is_closed:
            return
        if reconnect_wait > 0 and client.is_reconnecting and buffered(client):
            log.info(
                "natsync: waiting up to %.1f s for NATS to send %d buffered message(s)",
                reconnect_wait,
                buffered(client),
            )
            deadline = time.monotonic() + reconnect_wait
            while client.is_reconnecting and time.monotonic() < deadline:
                time.sleep(0.05)
        if client.is_connected:
            client.drain(timeout=timeout)
        else:
            client.close()
    except Exception as e:  # noqa: BLE001 - at exit, a failure is only worth a log line
        log.warning("natsync: closing the client at exit failed: %s", _describe(e))
        try:
            client.close()
        except Exception:  # noqa: BLE001  # pragma: no cover - close is not meant to raise
            pass


# ---------------------------------------------------------------------------- health


def health(
    client: Client, timeout: float = HEALTH_TIMEOUT, *, show_server: bool = False
) -> tuple[dict[str, Any], int]:
    """Return the health check's JSON body and HTTP status for *client*.

    The body is ``{"status", "rtt_ms", "server", "last_error"}``; the status code is 200
    when the client is connected and a round trip to the server succeeded within
    *timeout*, else 503.  A lazy client that has not connected yet is connected by this
    call (a readiness probe is a first use like any other).  ``server`` is the redacted
    URL of the connected server when *show_server* (else None: a public probe learns no
    internal address); ``last_error`` the last connection error as text, with server
    addresses left out unless *show_server*, or None.  No secret is ever part of the
    body.
    """
    rtt_ms: float | None = None
    error: BaseException | None = None
    # While (re)connecting a round trip could only wait for its timeout: answer at once.
    if not (client.is_connecting or client.is_reconnecting):
        try:
            rtt_ms = round(client.rtt(timeout=timeout) * 1000.0, 3)
        except NatsError as e:
            error = e
    connected = client.is_connected and rtt_ms is not None
    if connected:
        status = "ok"
    elif client.is_closed:
        status = "closed"
    elif client.is_reconnecting:
        status = "reconnecting"
    elif client.is_draining:
        status = "draining"
    else:
        status = "connecting"
    if error is not None:
        _remember_error(client, error)
    last: object = getattr(client, "last_error", None)  # the core may offer it; not in API.md
    if last is None:
        last = _last_errors.get(client)
    if last is None and not connected:
        last = f"not connected ({status})"
    body: dict[str, Any] = {
        "status": status,
        "rtt_ms": rtt_ms if connected else None,
        "server": client.connected_url if connected and show_server else None,
        "last_error": public_text(_describe(last), show_server) if last is not None else None,
    }
    return body, 200 if connected else 503


_ADDRESS = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\",;)]+"  # a URL
    r"|\[[0-9A-Fa-f:.]+\](?::\d+)?"  # [IPv6]:port
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"  # IPv4:port
    r"|\b[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*:\d{2,5}\b"  # host:port
)


def public_text(text: str, show_server: bool = False) -> str:
    """*text* with server URLs and addresses replaced by ``<server>`` (unless *show_server*)."""
    return text if show_server else _ADDRESS.sub("<server>", text)


def unavailable_body(e: BaseException, show_server: bool = False) -> dict[str, str]:
    """The JSON body of a 503 answer for *e*: ``{"error": "NATS unavailable", "detail": ...}``.

    The detail names the error; server addresses are left out unless *show_server*.
    """
    return {"error": "NATS unavailable", "detail": public_text(_describe(e), show_server)}


def _describe(e: object) -> str:
    if isinstance(e, BaseException):
        text = str(e)
        return f"{type(e).__name__}: {text}" if text else type(e).__name__
    return str(e)


# -------------------------------------------------------------------------- handlers


class PermanentError(Exception):
    """Raise it from a JetStream handler for a message that can never succeed.

    The worker then terminates the message (``term``): it is not redelivered.  Any other
    exception ``nak``\\ s the message with a backoff, and it is redelivered later.
    """


@dataclass(frozen=True)
class Handler:
    """A message handler declared with ``@subscribe`` or ``@consume``.

    Attributes:
        name: the handler's name for ``--handler`` (``module.function`` by default).
        func: called with each :class:`natsync.Msg`.
        subject: the subject (wildcards allowed); for a JetStream handler the consumer's
            filter subject, or None to bind to an existing durable consumer.
        queue: the queue group (core handlers), or None.
        stream: the JetStream stream (``@consume`` handlers), else None.
        durable: the durable consumer's name (``@consume`` handlers), else None.
        permanent: exception types that terminate a JetStream message instead of
            ``nak``-ing it (:class:`PermanentError` always does).
        backoff: seconds of ``nak`` delay for the 1st, 2nd, ... failed delivery (the
            last value repeats).
        batch: messages fetched per pull request (``@consume`` handlers).
    """

    name: str
    func: HandlerFunc
    subject: str | None
    queue: str | None = None
    stream: str | None = None
    durable: str | None = None
    permanent: tuple[type[BaseException], ...] = ()
    backoff: tuple[float, ...] = _DEFAULT_BACKOFF
    batch: int = 10
    module: str = field(default="", compare=False)

    @property
    def is_jetstream(self) -> bool:
        """True for a ``@consume`` (JetStream pull consumer) handler."""
        return self.stream is not None

    def describe(self) -> str:
        """A one-line description for logs: name and what it listens to."""
        if self.is_jetstream:
            what = f"stream {self.stream!r} consumer {self.durable!r}"
            if self.subject:
                what += f" subject {self.subject!r}"
        else:
            what = f"subject {self.subject!r}" + (f" queue {self.queue!r}" if self.queue else "")
        return f"{self.name} ({what})"


def _default_name(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    return f"{module}.{qualname}"


class HandlerRegistry:
    """Handlers declared by decorators, looked up by name by a worker.

    Declaring a handler only records it: nothing subscribes until a :class:`Worker`
    runs, so web processes never receive messages meant for workers.  Safe to use from
    several threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handlers: dict[str, Handler] = {}

    def subscribe(
        self, subject: str, queue: str | None = None, *, name: str | None = None
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Decorator: run the function for each message on *subject* (in a worker).

        A message with a reply subject is answered with the function's return value when
        it is not None (bytes, bytearray, memoryview or str).  Use a *queue* group to
        share the messages among several workers.

        Raises:
            natsync.BadSubjectError: for an invalid subject or queue name.
            ValueError: when another handler already has this name.
        """
        validate_subject(subject)
        if queue is not None:
            validate_queue(queue)

        def decorate(func: HandlerFunc) -> HandlerFunc:
            _check_callable(func)
            self.add(Handler(name or _default_name(func), func, subject, queue, module=func.__module__))
            return func

        return decorate

    def consume(
        self,
        *,
        stream: str,
        durable: str,
        subject: str | None = None,
        permanent: type[BaseException] | Iterable[type[BaseException]] = (),
        backoff: Sequence[float] = _DEFAULT_BACKOFF,
        batch: int = 10,
        name: str | None = None,
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Decorator: run the function for each message of a JetStream pull consumer.

        The worker binds to the durable consumer *durable* of *stream* (created with
        *subject* as its filter when a subject is given), fetches up to *batch* messages
        at a time and, per message: ``ack`` when the function returns, ``term`` when it
        raises :class:`PermanentError` or one of *permanent*, and ``nak`` with the delay
        ``backoff[n-1]`` (n = the delivery count; the last value repeats) when it raises
        anything else.

        Raises:
            ValueError: for an empty stream or durable name, a bad batch or backoff,
                or a name already taken.
            natsync.BadSubjectError: for an invalid subject.
            TypeError: when *permanent* holds something that is not an exception type.
        """
        for what, value in (("stream", stream), ("durable", durable)):
            if not isinstance(value, str) or not value or any(c in value for c in ". *>\t\r\n/\\"):
                raise ValueError(
                    f"{what} must be a non-empty name without '.', '*', '>', whitespace or "
                    f"path separators, not {value!r}"
                )
        if subject is not None:
            validate_subject(subject)
        perm = (permanent,) if isinstance(permanent, type) else tuple(permanent)
        for p in perm:
            if not (isinstance(p, type) and issubclass(p, BaseException)):
                raise TypeError(f"permanent must hold exception types, not {p!r}")
        steps = tuple(float(b) for b in backoff)
        if not steps or any(b < 0 for b in steps):
            raise ValueError(f"backoff must be a non-empty sequence of seconds >= 0, not {backoff!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an int >= 1, not {batch!r}")

        def decorate(func: HandlerFunc) -> HandlerFunc:
            _check_callable(func)
            self.add(
                Handler(
                    name or _default_name(func),
                    func,
                    subject,
                    stream=stream,
                    durable=durable,
                    permanent=perm,
                    backoff=steps,
                    batch=batch,
                    module=func.__module__,
                )
            )
            return func

        return decorate

    def add(self, handler: Handler) -> None:
        """Register *handler*.

        Registering a handler of the same name again from the same module replaces it
        (a module imported twice, e.g. by a reloader); from another module it raises
        :class:`ValueError`.
        """
        with self._lock:
            old = self._handlers.get(handler.name)
            if old is not None and old.module != handler.module:
                raise ValueError(
                    f"a handler named {handler.name!r} is already registered (from {old.module}); "
                    "give one of them another name with name=..."
                )
            self._handlers[handler.name] = handler

    def remove(self, name: str) -> None:
        """Forget the handler *name* (no error if there is none)."""
        with self._lock:
            self._handlers.pop(name, None)

    def __iter__(self) -> Iterator[Handler]:
        with self._lock:
            return iter(list(self._handlers.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._handlers)

    def names(self) -> list[str]:
        """The names of all handlers, sorted."""
        with self._lock:
            return sorted(self._handlers)

    def select(self, names: Sequence[str] | None = None) -> list[Handler]:
        """The handlers named in *names* (all of them when empty or None).

        A name is a handler's full name, or its last dotted part when that is unique
        (``on_order`` for ``shop.nats_handlers.on_order``).

        Raises:
            LookupError: for a name that matches no handler or several; the message
                lists the known names.
        """
        with self._lock:
            handlers = dict(self._handlers)
        if not names:
            return list(handlers.values())
        chosen: dict[str, Handler] = {}
        for wanted in names:
            if wanted in handlers:
                chosen[wanted] = handlers[wanted]
                continue
            matches = [h for n, h in handlers.items() if n.rsplit(".", 1)[-1] == wanted]
            if len(matches) != 1:
                known = ", ".join(sorted(handlers)) or "none"
                why = "matches several handlers" if matches else "matches no handler"
                raise LookupError(f"handler {wanted!r} {why}; known handlers: {known}")
            chosen[matches[0].name] = matches[0]
        return list(chosen.values())


def _check_callable(func: object) -> None:
    if not callable(func):
        raise TypeError(f"a handler must be callable, not {type(func).__name__}")


# ---------------------------------------------------------------------------- worker

Invoker = Callable[[Handler, Msg], Any]


class Service(Protocol):
    """A background job a :class:`Worker` runs beside its handlers (the outbox relay)."""

    def start(self) -> None:
        """Start on a thread of its own; return at once."""
        ...

    def stop(self, timeout: float) -> None:
        """Stop and join the thread (at most *timeout* seconds)."""
        ...


def _plain_invoke(handler: Handler, msg: Msg) -> Any:
    return handler.func(msg)


class Worker:
    """Runs handlers in a worker process until stopped, then drains.

    Core handlers become callback subscriptions (in their queue group); with
    ``threads=1`` messages of one handler are handled one at a time, in order; with
    ``threads=N`` up to N run at once on a pool shared by all handlers.  JetStream
    handlers get ``threads`` fetch loops each.

    :meth:`run` blocks until :meth:`stop` is called (from any thread) or, when it runs on
    the main thread, until SIGTERM or SIGINT arrives; then it stops taking new messages,
    lets the handlers finish what was already delivered, sends what they published, and
    closes the client.  A second signal while draining closes the client at once.

    Args:
        client: the client to use (the worker closes it when it stops).
        handlers: the handlers to run.
        threads: how many messages may be handled at once (>= 1).
        drain_timeout: seconds the drain may take before the client is closed anyway.
        invoke: calls a handler with a message; integrations wrap it (Flask pushes an
            app context, Django closes stale database connections).
    """

    def __init__(
        self,
        client: Client,
        handlers: Sequence[Handler],
        *,
        threads: int = 1,
        drain_timeout: float = 30.0,
        invoke: Invoker | None = None,
        services: Sequence[Service] = (),
    ) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, not {threads!r}")
        if not drain_timeout > 0:
            raise ValueError(f"drain_timeout must be > 0, not {drain_timeout!r}")
        if not handlers and not services:
            raise ValueError("no handlers to run: declare some with @subscribe or @consume")
        js = [h.name for h in handlers if h.is_jetstream]
        if js and not hasattr(client, "jetstream"):
            raise RuntimeError(
                f"JetStream handlers ({', '.join(js)}) need natsync's JetStream support "
                "(Client.jetstream), which this natsync lacks; upgrade natsync or run them elsewhere"
            )
        self._client = client
        self._handlers = list(handlers)
        self._threads = threads
        self._drain_timeout = drain_timeout
        self._invoke = invoke or _plain_invoke
        self._services = list(services)
        self._stop = threading.Event()
        self._signals = 0
        self._subs: list[Any] = []
        self._loops: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        self._slots: threading.Semaphore | None = None
        self.handled: int = 0  # messages handled (successfully or not); for tests and logs
        self._count_lock = threading.Lock()

    @property
    def handlers(self) -> list[Handler]:
        """The handlers this worker runs."""
        return list(self._handlers)

    # --- running ---

    def start(self) -> None:
        """Subscribe every handler (and start JetStream fetch loops); return at once."""
        if self._threads > 1:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="natsync-worker")
            self._slots = threading.Semaphore(self._threads)
        for handler in self._handlers:
            if handler.is_jetstream:
                for i in range(self._threads):
                    t = threading.Thread(
                        target=self._consume_loop,
                        args=(handler,),
                        name=f"natsync-consume-{handler.durable}-{i}",
                        daemon=True,
                    )
                    self._loops.append(t)
                    t.start()
            else:
                assert handler.subject is not None
                sub = self._client.subscribe(handler.subject, queue=handler.queue, cb=self._callback(handler))
                self._subs.append(sub)
            worker_log.info("natsync worker: running %s", handler.describe())
        for service in self._services:
            service.start()
            worker_log.info("natsync worker: running %s", getattr(service, "name", service))

    def stop(self) -> None:
        """Ask :meth:`run` to drain and return (safe from any thread and signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (or a signal arrived)."""
        return self._stop.is_set()

    def run(self, *, install_signals: bool = True, ready: Callable[[], Any] | None = None) -> int:
        """Start, wait until stopped, drain; return the process exit status (0 = clean).

        Args:
            install_signals: on the main thread, handle SIGTERM and SIGINT by draining
                (the previous handlers are restored before returning).
            ready: called once every handler is subscribed (and the subscriptions were
                flushed to the server, when it is reachable).

        Returns 1 when the client closed by itself (for example the server rejected the
        credentials) instead of being stopped.

        Raises:
            natsync.NatsError: when the handlers cannot even be subscribed (the first
                connect failed for good: bad credentials, no server without
                ``retry_on_failed_connect``); the client is closed.
        """
        previous: dict[signal.Signals, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            try:
                self.start()
            except NatsError:
                # Cannot start at all (bad credentials, no server and no retry): the
                # caller reports one line; nothing started is left running.
                self._stop.set()
                for service in self._services:
                    service.stop(1.0)
                self._client.close()
                for t in self._loops:
                    t.join(1.0)
                raise
            problem: object = None
            if self._client.is_connected:
                try:
                    self._client.flush(timeout=2.0)
                except NatsError as e:
                    problem = e
            else:
                problem = getattr(self._client, "last_error", None) or "not connected"
            if problem is not None:
                worker_log.warning(
                    "natsync worker: NATS is not reachable yet (%s); will keep trying", _describe(problem)
                )
            names = ", ".join(h.name for h in self._handlers)
            worker_log.info("natsync worker: ready (pid %d) with %s", os.getpid(), names)
            if ready is not None:
                ready()
            closed_by_itself = False
            while not self._stop.wait(0.25):
                if self._client.is_closed:
                    closed_by_itself = True
                    break
            if closed_by_itself:
                last = getattr(self._client, "last_error", None)
                worker_log.error(
                    "natsync worker: the connection closed%s; exiting",
                    f" ({_describe(last)})" if last is not None else "",
                )
                self._stop.set()
                self._shutdown()
                return 1
            worker_log.info("natsync worker: draining")
            started = time.monotonic()
            self._shutdown()
            worker_log.info(
                "natsync worker: drained in %.2f s after %d message(s); bye",
                time.monotonic() - started,
                self.handled,
            )
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            self._stop.set()
        else:
            # A second signal: the operator is out of patience.  close() is not called
            # here (the main thread may hold a lock of the client); a thread does it.
            threading.Thread(target=self._client.close, name="natsync-worker-close", daemon=True).start()

    def _shutdown(self) -> None:
        deadline = time.monotonic() + self._drain_timeout
        for service in self._services:
            service.stop(max(0.01, min(10.0, deadline - time.monotonic())))
        if not self._client.is_connected:
            # Nothing can be drained through a connection that is not there; what was
            # delivered is being handled, and waiting for NATS would block a deploy.
            worker_log.warning("natsync worker: not connected; closing without a drain")
            self._stop.set()
            self._client._close_within(deadline)  # one deadline for the whole shutdown
            self._join_loops(deadline)
            self._stop_pool(deadline)
            return
        try:
            for sub in self._subs:
                remaining = max(0.01, deadline - time.monotonic())
                try:
                    sub.drain(timeout=remaining)
                except (ConnectionClosedError, NatsTimeoutError) as e:
                    worker_log.warning(
                        "natsync worker: drain of %s ended early: %s", sub.subject, _describe(e)
                    )
                except NatsError as e:
                    worker_log.warning("natsync worker: drain of %s failed: %s", sub.subject, _describe(e))
            self._join_loops(deadline)
            self._stop_pool(deadline)
            remaining = max(0.01, deadline - time.monotonic())
            close_quietly(self._client, remaining)
        finally:
            if not self._client.is_closed:
                self._client._close_within(deadline)

    def _join_loops(self, deadline: float) -> None:
        """Join the consuming loops by *deadline*; one still running (a handler) is
        logged by name and not waited for."""
        for t in self._loops:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                worker_log.warning("natsync worker: thread %s still running at the drain deadline", t.name)

    def _stop_pool(self, deadline: float) -> None:
        """Wait (until *deadline*) for the handlers running on the pool, then stop it."""
        if self._pool is None or self._slots is None:
            return
        # Every slot free = no handler running; a handler stuck past the deadline is
        # reported, not waited for (its thread is the interpreter's to join at exit).
        taken = 0
        for _ in range(self._threads):
            if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
            taken += 1
        if taken < self._threads:
            worker_log.warning(
                "natsync worker: %d handler(s) still running after the drain timeout", self._threads - taken
            )
        self._pool.shutdown(wait=taken == self._threads)

    # --- core handlers ---

    def _callback(self, handler: Handler) -> Callable[[Msg], None]:
        if self._pool is None:

            def inline(msg: Msg) -> None:
                self._handle(handler, msg)

            return inline
        pool, slots = self._pool, self._slots
        assert slots is not None

        def hand_off(msg: Msg) -> None:
            # Blocking here (all threads busy) keeps messages in the subscription's
            # pending queue, where its limits apply, instead of an unbounded pool queue.
            slots.acquire()
            try:
                pool.submit(self._handle_and_release, handler, msg)
            except RuntimeError:  # pragma: no cover - pool shut down: only after drain
                slots.release()

        return hand_off

    def _handle_and_release(self, handler: Handler, msg: Msg) -> None:
        try:
            self._handle(handler, msg)
        finally:
            assert self._slots is not None
            self._slots.release()

    def _handle(self, handler: Handler, msg: Msg) -> None:
        try:
            result = self._invoke(handler, msg)
        except Exception:
            worker_log.exception(
                "natsync worker: handler %s failed on a message on %r", handler.name, msg.subject
            )
            result = None
        finally:
            with self._count_lock:
                self.handled += 1
        if result is None or not msg.reply:
            return
        if not isinstance(result, (bytes, bytearray, memoryview, str)):
            worker_log.error(
                "natsync worker: handler %s returned %s; return bytes, str or None to answer a request",
                handler.name,
                type(result).__name__,
            )
            return
        try:
            msg.respond(result)
        except NatsError as e:
            worker_log.warning("natsync worker: handler %s could not reply: %s", handler.name, _describe(e))

    # --- JetStream handlers ---

    def _consume_loop(self, handler: Handler) -> None:
        psub: Any = None
        try:
            while not self._stop.is_set():
                if psub is None:
                    try:
                        psub = self._bind(handler)
                    except ConnectionClosedError:
                        return
                    except NatsError as e:
                        worker_log.warning(
                            "natsync worker: cannot bind %s yet: %s", handler.describe(), _describe(e)
                        )
                        self._stop.wait(_CONSUME_RETRY)
                        continue
                try:
                    msgs = psub.fetch(batch=handler.batch, timeout=_CONSUME_RETRY)
                except NatsTimeoutError:
                    continue
                except ConnectionClosedError:
                    return
                except NatsError as e:
                    worker_log.warning(
                        "natsync worker: fetch for %s failed: %s", handler.describe(), _describe(e)
                    )
                    self._stop.wait(_CONSUME_RETRY)
                    continue
                # Messages already delivered are handled even while stopping: that is
                # what draining means for a pull consumer.
                for msg in msgs:
                    self._handle_js(handler, msg)
        finally:
            if psub is not None:
                try:
                    psub.unsubscribe()
                except NatsError:
                    pass

    def _bind(self, handler: Handler) -> Any:
        js = self._client.jetstream()  # type: ignore[attr-defined,unused-ignore]  # branch js
        if handler.subject is None:
            return js.pull_subscribe_bind(handler.durable, handler.stream)
        return js.pull_subscribe(handler.subject, durable=handler.durable, stream=handler.stream)

    def _handle_js(self, handler: Handler, msg: Msg) -> None:
        try:
            self._invoke(handler, msg)
        except Exception as e:
            if isinstance(e, PermanentError) or (handler.permanent and isinstance(e, handler.permanent)):
                worker_log.warning(
                    "natsync worker: handler %s gave up on a message on %r (terminated): %s",
                    handler.name,
                    msg.subject,
                    _describe(e),
                )
                self._settle(msg, "term")
            else:
                worker_log.exception(
                    "natsync worker: handler %s failed on a message on %r (will be redelivered)",
                    handler.name,
                    msg.subject,
                )
                self._settle(msg, "nak", _nak_delay(handler, msg))
        else:
            self._settle(msg, "ack")
        finally:
            with self._count_lock:
                self.handled += 1

    @staticmethod
    def _settle(msg: Msg, how: str, delay: float | None = None) -> None:
        try:
            if how == "nak":
                msg.nak(delay=delay)  # type: ignore[attr-defined,unused-ignore]
            else:
                getattr(msg, how)()
        except NatsError as e:
            worker_log.warning(
                "natsync worker: %s of a message on %r failed: %s", how, msg.subject, _describe(e)
            )


def _nak_delay(handler: Handler, msg: Msg) -> float:
    delivered = 1
    try:
        delivered = int(msg.metadata.num_delivered)  # type: ignore[attr-defined,unused-ignore]
    except Exception:  # noqa: BLE001 - metadata is best effort; the first step is a safe default
        pass
    steps = handler.backoff
    return steps[min(max(delivered, 1), len(steps)) - 1]

"""NATS services (ADR-32) on threads: discoverable request/reply endpoints with stats.

A service is a named, versioned group of request/reply *endpoints*.  Every instance gets a
unique id and answers the discovery requests ``$SRV.PING``, ``$SRV.INFO`` and
``$SRV.STATS`` (also ``$SRV.<VERB>.<name>`` and ``$SRV.<VERB>.<name>.<id>``) with the JSON
documents of ADR-32 (``io.nats.micro.v1.*_response``), so ``nats micro ls``, nats.go,
nats-py and ``natsync micro ls`` all see it::

    import natsync
    from natsync import micro

    def add(req: micro.Request) -> None:
        a, b = map(int, req.data.split())
        req.respond(str(a + b).encode())

    with natsync.connect() as nc, micro.add_service(nc, name="calc", version="1.0.0") as svc:
        svc.add_group("math").add_endpoint("add", add)       # subject "math.add"
        svc.stopped.wait()

Handlers are plain functions taking a :class:`Request`.  They run on natsync's delivery
threads, never on the reader thread: with ``max_concurrency=1`` (the default) one request
at a time per endpoint, in the order they arrived; with ``max_concurrency=N`` on a
bounded pool of *N* threads of the endpoint's own.  A handler that raises answers the
requester with a ``500`` service error (``Nats-Service-Error`` /
``Nats-Service-Error-Code`` headers), is counted in the endpoint's ``num_errors`` and
``last_error``, and the service keeps serving.  Raise :class:`ServiceError` to choose the
code and description.

Endpoints join the queue group ``"q"`` by default, so running the same service several
times spreads the requests over the instances.  ``queue_group=""`` subscribes without a
queue group (every instance gets every request).

The client side: :func:`ping`, :func:`info` and :func:`stats` send a discovery request
and collect every answer that arrives until the timeout.

This module uses only natsync's public client API.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from .client import Client
from .errors import NatsError
from .errors import TimeoutError as NatsTimeoutError
from .headers import Headers, HeadersInput
from .msg import Msg
from .subscription import Subscription

__all__ = [
    "API_PREFIX",
    "DEFAULT_QUEUE_GROUP",
    "ERROR_CODE_HEADER",
    "ERROR_HEADER",
    "INFO_RESPONSE_TYPE",
    "PING_RESPONSE_TYPE",
    "STATS_RESPONSE_TYPE",
    "Endpoint",
    "Group",
    "Handler",
    "Request",
    "Service",
    "ServiceError",
    "add_service",
    "control_subject",
    "info",
    "ping",
    "stats",
]

log: logging.Logger = logging.getLogger("natsync.micro")

API_PREFIX = "$SRV"
"""The prefix of every discovery subject."""
DEFAULT_QUEUE_GROUP = "q"
"""The queue group endpoints join unless told otherwise (ADR-32)."""
ERROR_HEADER = "Nats-Service-Error"
"""Header carrying an error's description in a service error response."""
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
"""Header carrying an error's code (decimal text) in a service error response."""
PING_RESPONSE_TYPE = "io.nats.micro.v1.ping_response"
INFO_RESPONSE_TYPE = "io.nats.micro.v1.info_response"
STATS_RESPONSE_TYPE = "io.nats.micro.v1.stats_response"
VERBS = ("PING", "INFO", "STATS")

# The official semver.org regular expression.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_BAD_SUBJECT_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")
_CODE = re.compile(r"^-?[0-9]+$")
# The services whose handler runs on the current thread (so stop() knows not to wait
# for itself).
_handling = threading.local()


class ServiceError(NatsError):
    """Raise from a handler to answer with this service error (code and description).

    Also what a requester may build from a reply with :meth:`from_msg`.
    """

    def __init__(self, code: int | str, description: str) -> None:
        self.code: str = _code_text(code)
        self.description: str = description
        super().__init__(f"{self.code}:{description}")

    @classmethod
    def from_msg(cls, msg: Msg) -> ServiceError | None:
        """The service error carried by reply *msg*, or None when it is not an error."""
        h = msg.headers
        if h is None:
            return None
        code = h.get(ERROR_CODE_HEADER)
        if code is None:
            return None
        desc = h.get(ERROR_HEADER) or ""
        try:
            return cls(code, desc)
        except ValueError:
            return cls(500, desc)


def _code_text(code: int | str) -> str:
    if isinstance(code, bool) or not isinstance(code, (int, str)):
        raise TypeError(f"service error code must be an int or a decimal str, not {type(code).__name__}")
    text = str(code).strip()
    if not _CODE.match(text):
        raise ValueError(f"service error code must be a number (decimal text), got {code!r}")
    return text


class Request:
    """One request to an endpoint, as given to its handler.

    Attributes: ``data`` (bytes), ``headers`` (:class:`~natsync.Headers` or None),
    ``subject`` (str), ``reply`` (str or None), ``msg`` (the underlying
    :class:`~natsync.Msg`).
    """

    __slots__ = ("msg", "_error", "_responded")

    def __init__(self, msg: Msg) -> None:
        self.msg: Msg = msg
        self._error: str | None = None
        self._responded = False

    @property
    def data(self) -> bytes:
        """The request payload."""
        return self.msg.data

    @property
    def headers(self) -> Headers | None:
        """The request headers, or None."""
        return self.msg.headers

    @property
    def subject(self) -> str:
        """The subject the request was sent to."""
        return self.msg.subject

    @property
    def reply(self) -> str | None:
        """The requester's reply subject, or None when no answer is expected."""
        return self.msg.reply

    def respond(
        self, data: bytes | bytearray | memoryview | str = b"", headers: HeadersInput | None = None
    ) -> None:
        """Send *data* (and *headers*) to the requester.

        Raises :class:`ValueError` when the request has no reply subject, and what
        :meth:`natsync.Client.publish` raises.
        """
        self.msg.respond(data, headers=headers)
        self._responded = True

    def respond_error(
        self,
        code: int | str,
        description: str,
        data: bytes | bytearray | memoryview | str = b"",
        headers: HeadersInput | None = None,
    ) -> None:
        """Answer with a service error: headers ``Nats-Service-Error: description`` and
        ``Nats-Service-Error-Code: code`` (its decimal text), plus *headers* and *data*.

        The endpoint's ``num_errors`` counts it and ``last_error`` becomes
        ``"<code>:<description>"``.  Raises :class:`TypeError` / :class:`ValueError` for
        a code that is not a number, :class:`ValueError` for an empty description or a
        request without reply subject.
        """
        text = _code_text(code)
        if not isinstance(description, str) or not description:
            raise ValueError("service error description must be a non-empty str")
        h = Headers(headers) if headers is not None else Headers()
        h[ERROR_HEADER] = description
        h[ERROR_CODE_HEADER] = text
        self._error = f"{text}:{description}"
        self.respond(data, headers=h)

    def __repr__(self) -> str:
        return f"<Request subject={self.subject!r} reply={self.reply!r} data={len(self.data)} B>"


Handler = Callable[[Request], Any]
"""A request handler: a function taking a :class:`Request` (its return value is ignored)."""


def _check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{what} {name!r} is not valid: use only letters, digits, '-' and '_' (not empty)")
    return name


def _check_subject(what: str, subject: object, *, allow_gt: bool = True) -> str:
    if not isinstance(subject, str) or not subject:
        raise ValueError(f"{what} must be a non-empty str, got {subject!r}")
    tokens = subject.split(".")
    if _BAD_SUBJECT_CHARS.search(subject) or any(t == "" for t in tokens):
        raise ValueError(f"{what} {subject!r} is not a valid subject (no whitespace, no empty tokens)")
    for i, t in enumerate(tokens):
        if ">" in t and (t != ">" or i != len(tokens) - 1 or not allow_gt):
            where = "the last token" if allow_gt else "in an endpoint subject, not in a group name"
            raise ValueError(f"{what} {subject!r}: '>' may only be {where}")
    return subject


def _check_queue(queue_group: object) -> str | None:
    if queue_group is None:
        return None
    if not isinstance(queue_group, str):
        raise TypeError(f"queue_group must be a str or None, not {type(queue_group).__name__}")
    if queue_group and _BAD_SUBJECT_CHARS.search(queue_group):
        raise ValueError(f"queue_group {queue_group!r} must not contain whitespace")
    return queue_group


def _check_metadata(what: str, metadata: object) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"{what} metadata must be a mapping of str to str")
    out: dict[str, str] = {}
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"{what} metadata must map str to str, got {k!r}: {v!r}")
        out[k] = v
    return out


def control_subject(verb: str, name: str | None = None, id: str | None = None) -> str:  # noqa: A002
    """The discovery subject for *verb* (``PING``, ``INFO``, ``STATS``), optionally for
    one service *name* and one instance *id*: e.g. ``$SRV.PING.calc``."""
    verb = verb.upper()
    if verb not in VERBS:
        raise ValueError(f"unknown discovery verb {verb!r}: use one of {', '.join(VERBS)}")
    if id is not None and name is None:
        raise ValueError("a service id needs the service name too")
    parts = [API_PREFIX, verb]
    if name is not None:
        parts.append(_check_name("service name", name))
    if id is not None:
        parts.append(_check_name("service id", id))
    return ".".join(parts)


class Endpoint:
    """One endpoint of a :class:`Service` (made by :meth:`Service.add_endpoint`).

    Attributes: ``name``, ``subject``, ``queue_group`` ("" for none), ``metadata``,
    ``max_concurrency``, ``handler``.
    """

    def __init__(
        self,
        service: Service,
        name: str,
        subject: str,
        queue_group: str,
        handler: Handler,
        metadata: dict[str, str],
        max_concurrency: int,
    ) -> None:
        self.service = service
        self.name = name
        self.subject = subject
        self.queue_group = queue_group
        self.handler = handler
        self.metadata = metadata
        self.max_concurrency = max_concurrency
        self.num_requests: int = 0
        self.num_errors: int = 0
        self.last_error: str = ""
        self.processing_time: int = 0  # ns
        self._sub: Subscription | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._slots: threading.BoundedSemaphore | None = None
        self._pool_name = f"natsync-micro-{service.name}-{name}"
        if max_concurrency > 1:
            self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=self._pool_name)
            self._slots = threading.BoundedSemaphore(max_concurrency)

    def _start(self) -> None:
        self._sub = self.service.nc.subscribe(self.subject, queue=self.queue_group or None, cb=self._on_msg)

    def _on_msg(self, msg: Msg) -> None:
        if self._pool is None:
            self._handle(msg)
            return
        assert self._slots is not None
        # Waiting for a free slot here keeps further requests in the subscription's
        # pending queue (bounded by its limits), so at most max_concurrency run at once.
        self._slots.acquire()
        try:
            self._pool.submit(self._handle_in_pool, msg)
        except RuntimeError:  # the pool was shut down (stop() ran past its drain timeout)
            self._slots.release()

    def _handle_in_pool(self, msg: Msg) -> None:
        try:
            self._handle(msg)
        finally:
            assert self._slots is not None
            self._slots.release()

    def _handle(self, msg: Msg) -> None:
        req = Request(msg)
        start = time.perf_counter_ns()
        active: list[Service] = _handling.__dict__.setdefault("services", [])
        active.append(self.service)
        try:
            self.handler(req)
        except Exception as e:  # noqa: BLE001 - any handler failure becomes a service error
            if isinstance(e, ServiceError):
                code, desc = e.code, e.description or "service error"
            else:
                log.warning(
                    "micro: handler of endpoint %r raised %s", self.subject, type(e).__name__, exc_info=True
                )
                code, desc = "500", (f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
                desc = " ".join(desc.split())  # a header value holds no CR/LF
            req._error = f"{code}:{desc}"
            if req.reply and not req._responded:
                try:
                    req.respond_error(code, desc)
                except (NatsError, ValueError) as err:
                    log.warning("micro: could not send the error reply on %r: %s", self.subject, err)
        finally:
            active.pop()
        elapsed = time.perf_counter_ns() - start
        with self.service._lock:
            self.num_requests += 1
            self.processing_time += elapsed
            if req._error is not None:
                self.num_errors += 1
                self.last_error = req._error

    def _reset(self) -> None:
        self.num_requests = self.num_errors = self.processing_time = 0
        self.last_error = ""

    def _stop(self, deadline: float | None) -> None:
        """Drain the endpoint and end its pool, all by *deadline* (None: the drain's
        default timeout, then no limit for the handlers)."""
        sub, self._sub = self._sub, None
        try:
            if sub is not None and sub.is_valid:
                sub.drain(timeout=None if deadline is None else max(deadline - time.monotonic(), 0.001))
        except NatsError as e:
            log.debug("micro: draining endpoint %r: %s", self.subject, e)
        finally:
            self._stop_pool(deadline)

    def _stop_pool(self, deadline: float | None) -> None:
        """Wait (until *deadline*) for handlers still running on the pool, then end it."""
        pool, slots = self._pool, self._slots
        if pool is None or slots is None:
            return
        # every slot free = no handler running; a handler stuck past the deadline is left
        # to finish on its own rather than making stop() overrun its timeout
        taken = 0
        for _ in range(self.max_concurrency):
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not slots.acquire(timeout=left):
                break
            taken += 1
        for _ in range(taken):
            slots.release()
        idle = taken == self.max_concurrency
        if not idle:
            log.warning(
                "micro: %d handler(s) of endpoint %r (threads %s-*) still running at stop()'s "
                "deadline; not waiting for them",
                self.max_concurrency - taken,
                self.subject,
                self._pool_name,
            )
        pool.shutdown(wait=idle)

    def info(self) -> dict[str, Any]:
        """This endpoint's ADR-32 ``EndpointInfo``."""
        return {
            "name": self.name,
            "subject": self.subject,
            "queue_group": self.queue_group,
            "metadata": dict(self.metadata),
        }

    def stats(self) -> dict[str, Any]:
        """This endpoint's ADR-32 ``EndpointStats`` (times in nanoseconds).

        A request is counted when its handler returns (as nats.go does), which may be
        just after the requester got the reply.
        """
        with self.service._lock:
            n, t = self.num_requests, self.processing_time
            return {
                "name": self.name,
                "subject": self.subject,
                "queue_group": self.queue_group,
                "num_requests": n,
                "num_errors": self.num_errors,
                "last_error": self.last_error,
                "processing_time": t,
                "average_processing_time": t // n if n else 0,
            }

    def __repr__(self) -> str:
        return f"<Endpoint {self.name!r} subject={self.subject!r} queue_group={self.queue_group!r}>"


class _EndpointAdder:
    """What :class:`Service` and :class:`Group` share: adding endpoints and groups."""

    service: Service
    _prefix: str
    _queue_group: str

    def add_endpoint(
        self,
        name: str,
        handler: Handler,
        subject: str | None = None,
        queue_group: str | None = None,
        metadata: Mapping[str, str] | None = None,
        max_concurrency: int = 1,
    ) -> Endpoint:
        """Add an endpoint: *handler* (a function taking a :class:`Request`) answers
        requests on *subject* (default: *name*), prefixed by the group's name.

        *queue_group* None inherits the group's or service's (default ``"q"``); ``""``
        means no queue group.  *max_concurrency* handlers run at once on a thread pool
        of the endpoint's own (1: one at a time, in order).  Returns once the
        subscription is made and flushed.  Raises :class:`ValueError` /
        :class:`TypeError` for bad arguments (nothing is subscribed) and
        :class:`RuntimeError` when the service is stopped.
        """
        _check_name("endpoint name", name)
        if not callable(handler):
            raise TypeError("handler must be callable (a function taking a natsync.micro.Request)")
        subj = _check_subject("endpoint subject", name if subject is None else subject)
        if self._prefix:
            subj = f"{self._prefix}.{subj}"
        q = _check_queue(queue_group)
        md = _check_metadata("endpoint", metadata)
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        q = self._queue_group if q is None else q
        return self.service._add(name, subj, q, handler, md, max_concurrency)

    def add_group(self, name: str, queue_group: str | None = None) -> Group:
        """A group: endpoints added to it listen on ``<name>.<subject>``; groups nest.

        *name* is a subject prefix (may hold ``.`` and ``*``, not ``>``); *queue_group*
        None inherits, ``""`` means none.
        """
        _check_subject("group name", name, allow_gt=False)
        q = _check_queue(queue_group)
        prefix = f"{self._prefix}.{name}" if self._prefix else name
        return Group(self.service, prefix, self._queue_group if q is None else q)


class Group(_EndpointAdder):
    """A subject prefix (and default queue group) for endpoints; see :meth:`Service.add_group`."""

    def __init__(self, service: Service, prefix: str, queue_group: str) -> None:
        self.service = service
        self._prefix = prefix
        self._queue_group = queue_group

    @property
    def prefix(self) -> str:
        """The subject prefix of this group's endpoints."""
        return self._prefix

    @property
    def queue_group(self) -> str:
        """The queue group this group's endpoints join by default ("" for none)."""
        return self._queue_group

    def __repr__(self) -> str:
        return f"<Group {self._prefix!r} queue_group={self._queue_group!r}>"


class Service(_EndpointAdder):
    """A running service instance (made by :func:`add_service`).

    Attributes: ``nc``, ``id``, ``name``, ``version``, ``description``, ``metadata``,
    ``queue_group``, ``started`` (aware UTC datetime), ``endpoints`` (list),
    ``stopped`` (a :class:`threading.Event` set once :meth:`stop` finished).
    Use it as a context manager to stop it on exit.
    """

    def __init__(
        self,
        nc: Client,
        name: str,
        version: str,
        description: str,
        metadata: dict[str, str],
        queue_group: str,
    ) -> None:
        self.service: Service = self
        self.nc: Client = nc
        self.name = name
        self.version = version
        self.description = description
        self.metadata = metadata
        self.queue_group = queue_group
        self._prefix = ""
        self._queue_group = queue_group
        self.id: str = nc.new_inbox().rsplit(".", 1)[-1]
        self.started: datetime.datetime = datetime.datetime.now(datetime.timezone.utc)
        self.stopped: threading.Event = threading.Event()
        self._lock = threading.Lock()
        self._stopping = False
        self._endpoints: list[Endpoint] = []
        self._verb_subs: list[Subscription] = []
        self._stop_thread: threading.Thread | None = None
        self._stop_deadline = 0.0  # the first stop()'s deadline (guard: _lock)
        self._stats_handler: Callable[[Endpoint], Any] | None = None

    @property
    def endpoints(self) -> list[Endpoint]:
        """The endpoints added so far."""
        with self._lock:
            return list(self._endpoints)

    def _start(self, timeout: float) -> None:
        handlers: dict[str, Callable[[Msg], None]] = {
            "PING": self._on_ping,
            "INFO": self._on_info,
            "STATS": self._on_stats,
        }
        try:
            for verb in VERBS:
                for subject in (
                    control_subject(verb),
                    control_subject(verb, self.name),
                    control_subject(verb, self.name, self.id),
                ):
                    self._verb_subs.append(self.nc.subscribe(subject, cb=handlers[verb]))
            self.nc.flush(timeout=timeout)
        except BaseException:
            self.stop(timeout=timeout)
            raise

    def _add(
        self, name: str, subject: str, queue_group: str, handler: Handler, metadata: dict[str, str], mc: int
    ) -> Endpoint:
        ep = Endpoint(self, name, subject, queue_group, handler, metadata, mc)
        with self._lock:
            if self._stopping:
                ep._stop(None)
                raise RuntimeError(f"service {self.name!r} is stopped: no endpoint can be added")
            self._endpoints.append(ep)
        try:
            ep._start()
            self.nc.flush()
        except BaseException:
            with self._lock:
                self._endpoints.remove(ep)
            ep._stop(None)
            raise
        return ep

    # --- discovery ------------------------------------------------------------------

    def _identity(self, kind: str) -> dict[str, Any]:
        return {
            "type": kind,
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "metadata": dict(self.metadata),
        }

    def ping(self) -> dict[str, Any]:
        """The ADR-32 ``io.nats.micro.v1.ping_response`` of this instance."""
        return self._identity(PING_RESPONSE_TYPE)

    def info(self) -> dict[str, Any]:
        """The ADR-32 ``io.nats.micro.v1.info_response`` of this instance, as a dict."""
        doc = self._identity(INFO_RESPONSE_TYPE)
        doc["description"] = self.description
        doc["endpoints"] = [ep.info() for ep in self.endpoints]
        return doc

    def stats(self) -> dict[str, Any]:
        """The ADR-32 ``io.nats.micro.v1.stats_response`` of this instance, as a dict.

        ``started`` is an RFC 3339 UTC time; times are in nanoseconds.
        """
        doc = self._identity(STATS_RESPONSE_TYPE)
        doc["started"] = self.started.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        doc["endpoints"] = []
        for ep in self.endpoints:
            st = ep.stats()
            st["data"] = None  # always present, as nats-py and nats.go send it
            if self._stats_handler is not None:
                try:
                    st["data"] = self._stats_handler(ep)
                except Exception:  # noqa: BLE001 - a failing stats_handler must not break STATS
                    log.warning("micro: stats_handler failed for endpoint %r", ep.subject, exc_info=True)
            doc["endpoints"].append(st)
        return doc

    def reset(self) -> None:
        """Set every endpoint's counters back to zero (``started`` is kept)."""
        with self._lock:
            for ep in self._endpoints:
                ep._reset()

    def _reply(self, msg: Msg, doc: Callable[[], dict[str, Any]]) -> None:
        if not msg.reply:
            return
        try:
            msg.respond(json.dumps(doc(), separators=(",", ":")).encode())
        except NatsError as e:
            log.debug("micro: discovery reply failed: %s", e)

    def _on_ping(self, msg: Msg) -> None:
        self._reply(msg, self.ping)

    def _on_info(self, msg: Msg) -> None:
        self._reply(msg, self.info)

    def _on_stats(self, msg: Msg) -> None:
        self._reply(msg, self.stats)

    # --- lifecycle ------------------------------------------------------------------

    def stop(self, timeout: float | None = None) -> None:
        """Stop the service: drain every endpoint (requests already received are
        handled and answered), end the discovery subscriptions, join the endpoints'
        threads, then set :attr:`stopped`.  Idempotent; works on a closed connection.

        Called from one of this service's own handlers (say, a "shutdown" endpoint), it
        returns at once and the stop completes on a thread of its own once the
        handlers returned; wait for :attr:`stopped` elsewhere.  *timeout* (default: the
        client's ``drain_timeout``) is one deadline for everything stop() waits for:
        the drains of every endpoint and their handlers; a handler still running then
        is logged and not waited for, and stop() returns.
        """
        if timeout is None:
            o = self.nc._opts
            timeout = o.drain_timeout if o is not None else 30.0
        deadline = time.monotonic() + timeout
        in_handler = self in getattr(_handling, "services", ())
        with self._lock:
            first = not self._stopping
            self._stopping = True
            endpoints = list(self._endpoints)
            if first:
                self._stop_deadline = deadline
            else:
                deadline = min(deadline, self._stop_deadline)
            if first and in_handler:
                self._stop_thread = threading.Thread(
                    target=self._finish_stop, args=(endpoints, deadline), name="natsync-micro-stop"
                )
                self._stop_thread.start()
                return
        if first:
            self._finish_stop(endpoints, deadline)
            return
        if in_handler:
            return
        t = self._stop_thread
        if t is not None and t is not threading.current_thread():
            t.join(max(deadline - time.monotonic(), 0.0))
        self.stopped.wait(max(deadline - time.monotonic(), 0.0))

    def _finish_stop(self, endpoints: list[Endpoint], deadline: float) -> None:
        try:
            for sub in self._verb_subs:
                try:
                    if sub.is_valid:
                        sub.unsubscribe()
                except NatsError:
                    pass
            threads = [
                threading.Thread(target=ep._stop, args=(deadline,), name="natsync-micro-stop", daemon=True)
                for ep in endpoints
            ]
            for t in threads:
                t.start()
            for t in threads:
                # each ends by the deadline (drain and pool are bounded by it)
                t.join(max(deadline - time.monotonic(), 0.0))
                if t.is_alive():
                    log.warning("micro: thread %s still stopping an endpoint at stop()'s deadline", t.name)
        finally:
            self.stopped.set()

    def __enter__(self) -> Service:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        n = len(self._endpoints)
        return f"<Service {self.name!r} version={self.version!r} id={self.id!r} endpoints={n}>"


def add_service(
    nc: Client,
    name: str,
    version: str,
    description: str | None = None,
    metadata: Mapping[str, str] | None = None,
    queue_group: str = DEFAULT_QUEUE_GROUP,
    *,
    stats_handler: Callable[[Endpoint], Any] | None = None,
    timeout: float = 5.0,
) -> Service:
    """Start a service on client *nc* and return it once its discovery subscriptions are
    made and flushed.

    *name* uses letters, digits, ``-`` and ``_``; *version* is a semantic version
    (``1.2.3``, ``1.0.0-rc.1``); both are checked before anything is subscribed
    (:class:`ValueError`).  *queue_group* is the endpoints' default queue group
    (``""``: none).  *metadata* maps str to str and is reported by discovery.  Raises
    what :meth:`natsync.Client.subscribe` and :meth:`natsync.Client.flush` raise
    (within *timeout* seconds).  *stats_handler*, given an :class:`Endpoint`, returns
    JSON-serialisable data reported as that endpoint's ``data`` in STATS (ADR-32).
    """
    _check_name("service name", name)
    if not isinstance(version, str) or not _SEMVER.match(version):
        raise ValueError(f"service version {version!r} is not a semantic version (e.g. '1.0.0')")
    if description is not None and not isinstance(description, str):
        raise TypeError("description must be a str or None")
    md = _check_metadata("service", metadata)
    q = _check_queue(queue_group)
    if stats_handler is not None and not callable(stats_handler):
        raise TypeError("stats_handler must be callable or None")
    svc = Service(nc, name, version, description or "", md, DEFAULT_QUEUE_GROUP if q is None else q)
    svc._stats_handler = stats_handler
    svc._start(timeout)
    return svc


def _collect(nc: Client, subject: str, timeout: float, max_responses: int | None) -> list[dict[str, Any]]:
    if timeout <= 0:
        raise ValueError("timeout must be > 0")
    inbox = nc.new_inbox()
    out: list[dict[str, Any]] = []
    with nc.subscribe(inbox) as sub:
        nc.publish(subject, b"", reply=inbox)
        deadline = time.monotonic() + timeout
        while max_responses is None or len(out) < max_responses:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                msg = sub.next_msg(timeout=left)
            except NatsTimeoutError:
                break
            try:
                doc = json.loads(msg.data)
            except ValueError:
                log.debug("micro: ignoring a discovery answer that is not JSON")
                continue
            if isinstance(doc, dict):
                out.append(doc)
    return out


def ping(
    nc: Client, name: str | None = None, id: str | None = None, timeout: float = 1.0,  # noqa: A002
    max_responses: int | None = None,
) -> list[dict[str, Any]]:
    """Send ``$SRV.PING[.name[.id]]`` and return every answer (dicts) that arrives
    within *timeout* seconds (or once *max_responses* arrived)."""
    return _collect(nc, control_subject("PING", name, id), timeout, max_responses)


def info(
    nc: Client, name: str | None = None, id: str | None = None, timeout: float = 1.0,  # noqa: A002
    max_responses: int | None = None,
) -> list[dict[str, Any]]:
    """Send ``$SRV.INFO[.name[.id]]`` and return every answer that arrives within *timeout*."""
    return _collect(nc, control_subject("INFO", name, id), timeout, max_responses)


def stats(
    nc: Client, name: str | None = None, id: str | None = None, timeout: float = 1.0,  # noqa: A002
    max_responses: int | None = None,
) -> list[dict[str, Any]]:
    """Send ``$SRV.STATS[.name[.id]]`` and return every answer that arrives within *timeout*."""
    return _collect(nc, control_subject("STATS", name, id), timeout, max_responses)

"""The transactional outbox's relay, shared by :mod:`natsync.django` and :mod:`natsync.sqlalchemy`.

An application writes each event as a row of the outbox table *in the same database
transaction* as the change it announces (``publish_on_commit(..., durable=True)`` in
Django, ``natsync.sqlalchemy.publish_on_commit(session, ...)``).  A :class:`Relay` then
moves committed rows into JetStream:

1. **claim** (one short transaction): take up to ``batch`` due rows in id order --
   ``SELECT ... FOR UPDATE SKIP LOCKED`` where the database has it (PostgreSQL), the
   database's write lock otherwise (SQLite: relays are serialised) -- keep only rows with
   no earlier unfinished row of the same subject outside the batch (per-subject order
   across several relays), and lease them (``available_at = now + lease``, ``attempts +
   1``);
2. **publish** them to JetStream with ``Nats-Msg-Id`` = the row's ``msg_id`` and the
   row's headers, and wait for every ``PubAck``;
3. **settle** (one short transaction): delete the acknowledged rows; give the others a
   back-off (``available_at``) and ``last_error``; mark a row the server refused for
   good (no stream captures the subject, a permission, a bad request) ``failed`` and
   log it once, so it is reported and never retried in a loop.

A crash anywhere between commit and settle leaves the row in the table; it is leased
again once its lease runs out and re-published with the same ``Nats-Msg-Id``, which the
stream's duplicate window drops.  So every committed row ends up in the stream exactly
once as long as the stream's ``duplicate_window`` (2 minutes by default) is longer than
the lease plus the longest back-off.

The storages (:class:`OutboxStorage`) own the SQL; this module owns the loop, the error
rules and the back-off, and imports no framework.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from ._nuid import next_nuid
from ._protocol import validate_subject
from .client import Client
from .errors import (
    BadHeaderError,
    BadSubjectError,
    ConnectionClosedError,
    MaxPayloadError,
    NatsError,
    PermissionsError,
)
from .headers import Headers, HeadersInput, encode_headers

__all__ = [
    "OutboxRow",
    "OutboxSettings",
    "OutboxStatus",
    "OutboxStorage",
    "Relay",
    "RelayRound",
    "check_event",
    "earliest_per_subject",
    "new_msg_id",
]

log = logging.getLogger("natsync.outbox")

#: The longest subject an outbox row holds (the column's size).
MAX_SUBJECT = 512
#: The longest ``msg_id`` an outbox row holds.
MAX_MSG_ID = 200


@dataclass(frozen=True)
class OutboxSettings:
    """How a relay works; every field has a default (``NATSYNC_OUTBOX`` in Django).

    Attributes:
        batch: rows claimed and published per round.
        lease: seconds a claimed row belongs to its relay; a relay that dies holds it no
            longer than this (then another relay re-publishes it, de-duplicated).
        publish_timeout: seconds to wait for a ``PubAck``.
        poll_interval: seconds between two looks at an empty table (a relay in the same
            process is woken at once by a commit).
        backoff: seconds before the 1st, 2nd, ... retry of a row that failed for a
            transient reason (the last value repeats).
        relay_in_web: run a relay thread in each web process, woken by commits.
        relay_in_worker: run a relay in the worker command.
    """

    batch: int = 100
    lease: float = 30.0
    publish_timeout: float = 5.0
    poll_interval: float = 1.0
    backoff: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
    relay_in_web: bool = False
    relay_in_worker: bool = True

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, where: str = "settings") -> OutboxSettings:
        """Build settings from a mapping, checking names and values.

        Raises:
            TypeError: for an unknown key (with a "did you mean") or a value of the wrong type.
            ValueError: for an out-of-range value.
        """
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise TypeError(f"{where} must be a dict, not {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise TypeError(f"{where} has an unknown key {key!r}{did_you_mean(str(key), known)}")
            kwargs[key] = _check_setting(where, key, value)
        return replace(cls(), **kwargs)

    def backoff_for(self, attempts: int) -> float:
        """The back-off after the *attempts*-th failed attempt (1-based)."""
        steps = self.backoff
        return steps[min(max(attempts, 1), len(steps)) - 1]


def _check_setting(where: str, key: str, value: Any) -> Any:
    if key in ("relay_in_web", "relay_in_worker"):
        if not isinstance(value, bool):
            raise TypeError(f"{where}[{key!r}] must be True or False, not {value!r}")
        return value
    if key == "batch":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}['batch'] must be an int >= 1, not {value!r}")
        return value
    if key == "backoff":
        try:
            steps = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise TypeError(f"{where}['backoff'] must be a sequence of seconds, not {value!r}") from None
        if not steps or any(s < 0 for s in steps):
            raise ValueError(
                f"{where}['backoff'] must be a non-empty sequence of seconds >= 0, not {value!r}"
            )
        return steps
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{where}[{key!r}] must be a number of seconds > 0, not {value!r}")
    return float(value)


def did_you_mean(name: str, known: Sequence[str] | set[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of *known* to *name*, else a list of them."""
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {close[0]!r}?"
    return f"; known: {', '.join(sorted(known))}"


@dataclass(frozen=True)
class OutboxRow:
    """One claimed outbox row.

    Attributes:
        id: the row's primary key (its place in the order).
        subject: where it is published.
        payload: the message body.
        headers: the caller's headers as ``[name, value]`` pairs, or None.
        msg_id: the ``Nats-Msg-Id`` it is published with.
        attempts: publish attempts so far, this one included.
    """

    id: int
    subject: str
    payload: bytes
    headers: list[list[str]] | None
    msg_id: str
    attempts: int


@dataclass
class OutboxStatus:
    """What ``natsync_outbox status`` and the health views report.

    Attributes:
        depth: rows waiting to be published (failed rows not included).
        oldest_age: seconds since the oldest waiting row was written, or None.
        failed: rows marked failed (refused for good by the server).
        failed_rows: up to 20 failed rows: ``id``, ``subject``, ``attempts``, ``last_error``.
    """

    depth: int
    oldest_age: float | None
    failed: int
    failed_rows: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self, rows: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (``failed_rows`` left out unless *rows*)."""
        out: dict[str, Any] = {
            "depth": self.depth,
            "oldest_age": None if self.oldest_age is None else round(self.oldest_age, 3),
            "failed": self.failed,
        }
        if rows:
            out["failed_rows"] = list(self.failed_rows)
        return out


class OutboxStorage(Protocol):
    """The SQL side of the outbox (one per framework); every method is one transaction."""

    def claim(self, limit: int, lease: float, now: float) -> list[OutboxRow]:
        """Lease up to *limit* due rows (see the module docstring) and return them in id order."""
        ...

    def settle(
        self,
        done: Sequence[int],
        retry: Sequence[tuple[int, str, float]],
        failed: Sequence[tuple[int, str]],
    ) -> None:
        """Delete *done*; set ``last_error`` and ``available_at`` of *retry*; mark *failed*."""
        ...

    def status(self, now: float) -> OutboxStatus:
        """Depth, oldest age and the failed rows."""
        ...

    def release(self) -> None:
        """Give back the database connection of the calling thread (between rounds)."""
        ...


def new_msg_id() -> str:
    """A fresh ``Nats-Msg-Id`` for a row whose caller gave none (unique across databases)."""
    # next_nuid() is thread-safe and reseeded in a forked child, so ids never repeat.
    return "natsync-outbox-" + next_nuid()


def check_event(
    subject: str,
    payload: bytes | bytearray | memoryview | str,
    headers: HeadersInput | None,
    msg_id: str | None,
    max_payload: int,
    *,
    durable: bool = True,
) -> tuple[bytes, list[list[str]] | None, str | None]:
    """Check an event before it is written or scheduled; return (payload, header pairs, msg_id).

    The subject, the headers and the size (headers, ``Nats-Msg-Id`` and payload together
    against *max_payload*) are checked the way a publish checks them, so that a bad
    event raises in the caller's transaction instead of failing after the commit.  With
    *durable* a missing *msg_id* is made up (the returned one is never None); otherwise
    it stays None and no ``Nats-Msg-Id`` is sent.

    Raises:
        natsync.BadSubjectError: for an invalid or too long subject.
        natsync.BadHeaderError: for an invalid header name or value.
        natsync.MaxPayloadError: when the message would be over *max_payload*.
        TypeError, ValueError: for a payload or msg_id of the wrong type or size.
    """
    validate_subject(subject)
    if any(token in ("*", ">") for token in subject.split(".")):
        raise BadSubjectError(f"cannot publish to a wildcard subject: {subject!r}")
    if len(subject.encode()) > MAX_SUBJECT:
        raise BadSubjectError(f"subject is longer than the outbox's {MAX_SUBJECT} bytes: {subject[:40]!r}...")
    if isinstance(payload, str):
        data = payload.encode()
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
    else:
        raise TypeError(f"payload must be bytes-like or str, not {type(payload).__name__}")
    mid: str | None
    if msg_id is None:
        mid = new_msg_id() if durable else None
    else:
        if not isinstance(msg_id, str) or not msg_id or len(msg_id) > MAX_MSG_ID:
            raise ValueError(
                f"msg_id must be a non-empty str of at most {MAX_MSG_ID} characters, not {msg_id!r}"
            )
        mid = msg_id
    h = Headers(headers) if headers is not None else Headers()
    pairs = [[k, v] for k, v in h.multi_items()] or None
    if mid is not None:
        h["Nats-Msg-Id"] = mid  # checks the id as a header value; counted in the size
    hdr = encode_headers(h)
    if len(hdr) + len(data) > max_payload:
        raise MaxPayloadError(
            f"payload of {len(data)} bytes plus {len(hdr)} bytes of headers is over the server's "
            f"max_payload of {max_payload} bytes: send less, or raise max_payload in the server config"
        )
    return data, pairs, mid


def earliest_per_subject(rows: Sequence[OutboxRow], earliest_outside: Mapping[str, int]) -> list[OutboxRow]:
    """The rows of a claimed batch that may be published now without breaking subject order.

    *earliest_outside* maps a subject to the smallest id of an unfinished row of that
    subject outside the batch (leased by another relay, or backing off); a row may go
    only if its id is smaller.
    """
    return [r for r in rows if r.id < earliest_outside.get(r.subject, r.id + 1)]


def _permanent(err: BaseException) -> bool:
    """True when publishing this row again cannot succeed (the row is marked failed)."""
    from .js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

    if isinstance(
        err, (NoStreamResponseError, PermissionsError, BadSubjectError, BadHeaderError, MaxPayloadError)
    ):
        return True
    if isinstance(err, APIError) and not isinstance(err, ServiceUnavailableError):
        return err.code is not None and 400 <= err.code < 500 and err.code != 408
    return False


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@dataclass
class RelayRound:
    """What one round of a relay did: rows published, put back for a retry, marked failed."""

    published: int = 0
    retried: int = 0
    failed: int = 0
    claimed: int = 0


class Relay:
    """Moves committed outbox rows into JetStream (see the module docstring).

    Args:
        storage: the outbox table's SQL side.
        client: a callable returning the client to publish with (the process's lazy
            client; called for each round so that a forked process uses its own).
        settings: how the relay works.
        name: for logs and the thread's name.

    One relay runs rounds (:meth:`run_once`, :meth:`run_until_empty`, :meth:`run`) on one
    thread at a time -- that thread alone touches ``published`` and the cached JetStream
    context; :meth:`wake` and :meth:`stop` are safe from any thread (events).  Several
    relays (threads or processes) may run against one table at once.
    """

    def __init__(
        self,
        storage: OutboxStorage,
        client: Callable[[], Client],
        settings: OutboxSettings | None = None,
        *,
        name: str = "natsync-outbox",
    ) -> None:
        self.storage = storage
        self._client = client
        self.settings: OutboxSettings = settings or OutboxSettings()
        self.name = name
        self._wake = threading.Event()  # set by wake(): a commit wrote rows
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()  # guards _thread
        self.published: int = 0  # rows published by this relay (written by the thread running rounds)
        # The JetStream context of the last client; only the thread running rounds uses it.
        self._js: tuple[Client, Any] | None = None

    # --- one round ---

    def run_once(self) -> RelayRound:
        """Claim, publish and settle one batch; return what happened.

        Raises nothing for NATS trouble (rows are put back with a back-off); database
        errors propagate.
        """
        result = RelayRound()
        client = self._client()
        if client.is_closed:
            raise ConnectionClosedError("the outbox relay's client is closed")
        if not client.is_connected:
            # Publishing now would only buffer (and leave the buffer to a process's exit)
            # and time out: claim nothing until the connection is there.
            if client.is_reconnecting or client.is_connecting:
                return result
            try:
                # A lazy client connects here; kept short so that stop() is not held up.
                client.flush(timeout=min(self.settings.publish_timeout, 0.5))
            except NatsError:
                return result
            if not client.is_connected:
                return result
        s = self.settings
        rows = self.storage.claim(s.batch, s.lease, time.time())
        result.claimed = len(rows)
        if not rows:
            return result
        done: list[int] = []
        retry: list[tuple[int, str, float]] = []
        failed: list[tuple[int, str]] = []
        try:
            js = self._jetstream(client)
            futures: list[Any] = []
            for row in rows:
                try:
                    hdrs = Headers([(k, v) for k, v in row.headers]) if row.headers else None
                    futures.append(
                        js.publish_async(
                            row.subject,
                            row.payload,
                            headers=hdrs,
                            msg_id=row.msg_id,
                            timeout=s.publish_timeout,
                        )
                    )
                except NatsError as e:
                    futures.append(e)
                except (TypeError, ValueError) as e:  # a row that was not written by us
                    futures.append(e)
            for row, fut in zip(rows, futures):
                err: BaseException | None
                if isinstance(fut, BaseException):
                    err = fut
                else:
                    try:
                        fut.result(timeout=s.publish_timeout + 5.0)
                        err = None
                    except Exception as e:  # noqa: BLE001 - classified below
                        err = e
                if err is None:
                    done.append(row.id)
                elif _permanent(err):
                    failed.append((row.id, _describe(err)))
                else:
                    retry.append((row.id, _describe(err), s.backoff_for(row.attempts)))
        finally:
            # Rows not yet classified (an unexpected error above) go back with a back-off.
            seen = set(done) | {i for i, _, _ in retry} | {i for i, _ in failed}
            for row in rows:
                if row.id not in seen:
                    retry.append((row.id, "relay interrupted", s.backoff_for(row.attempts)))
            self.storage.settle(done, retry, failed)
        for row_id, why in failed:
            subject = next(r.subject for r in rows if r.id == row_id)
            log.error(
                "natsync outbox: row %d on %r was refused for good and is marked failed (%s); "
                "see the outbox status command, fix the cause, then retry it",
                row_id,
                subject,
                why,
            )
        if retry:
            log.warning(
                "natsync outbox: %d row(s) not published yet, will retry (%s)", len(retry), retry[0][1]
            )
        result.published, result.retried, result.failed = len(done), len(retry), len(failed)
        self.published += len(done)
        return result

    def _jetstream(self, client: Client) -> Any:
        """The JetStream context of *client*, kept across rounds (its publish_async
        machinery holds a subscription: one per client, not one per round)."""
        cached = self._js
        if cached is None or cached[0] is not client:
            cached = self._js = (client, client.jetstream(timeout=self.settings.publish_timeout))
        return cached[1]

    def run_until_empty(self, timeout: float = 60.0) -> int:
        """Run rounds until no row waits (failed rows aside) or *timeout* s passed.

        Rows leased by a relay that died are waited for until their lease ends.
        Returns the number of rows this call published.
        """
        deadline = time.monotonic() + timeout
        total = 0
        while True:
            r = self.run_once()
            total += r.published
            if r.claimed and r.published == r.claimed:
                continue
            if r.claimed == 0 and self.storage.status(time.time()).depth == 0:
                return total
            left = deadline - time.monotonic()
            if left <= 0:
                return total
            time.sleep(min(0.2, left))

    # --- the loop ---

    def run(self, stop: threading.Event | None = None) -> None:
        """Run rounds until *stop* (or :meth:`stop`) is set; wait between rounds when idle."""
        stop_ev = stop or self._stop
        s = self.settings
        errors = 0
        while not stop_ev.is_set() and not self._stop.is_set():
            try:
                r = self.run_once()
                errors = 0
            except ConnectionClosedError:
                log.info("natsync outbox: the client closed; the relay stops")
                return
            except Exception as e:  # noqa: BLE001 - a database hiccup must not end the relay
                errors += 1
                log.warning("natsync outbox: relay round failed: %s", _describe(e))
                r = RelayRound()
                self._wait(stop_ev, min(s.backoff_for(errors), 30.0))
                continue
            finally:
                try:
                    self.storage.release()
                except Exception:  # noqa: BLE001 - giving a connection back is best effort
                    pass
            if r.claimed and r.published == r.claimed:
                continue  # more may be waiting
            self._wait(stop_ev, s.poll_interval if not r.retried else min(s.poll_interval, s.backoff[0]))

    def _wait(self, stop_ev: threading.Event, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not stop_ev.is_set() and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._wake.wait(min(left, 0.25)):
                self._wake.clear()
                return

    def wake(self) -> None:
        """Start the next round now (called after a commit that wrote rows)."""
        self._wake.set()

    def start(self) -> None:
        """Run :meth:`run` on a daemon thread of this process (idempotent)."""
        with self._thread_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread started by :meth:`start` and join it (at most *timeout* s)."""
        self._stop.set()
        self._wake.set()
        with self._thread_lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

"""Atomic batch publishing (ADR-50, nats-server 2.12+): a group of messages that a
stream stores all together, or not at all.

The stream needs ``allow_atomic=True``.  Every message of a batch carries the headers
``Nats-Batch-Id`` (one id per batch) and ``Nats-Batch-Sequence`` (1, 2, 3, ...); the
last one also carries ``Nats-Batch-Commit: 1``, and the server then stores the whole
batch and answers with one :class:`~natsync.js.api.PubAck` whose ``batch_id`` and
``batch_size`` describe it (``seq`` is the sequence of the last message).  Until the
commit nothing is stored; a batch not committed is abandoned by the server (after
10 s without a message), and so is one in which a message is missing or fails an
expectation (``expected_last_seq`` and the like, checked at commit time).

The semantics are those of nats.go's extension (``orbit.go/jetstreamext``):
``BatchPublisher`` / ``PublishMsgBatch``.  The messages before the commit are sent
without waiting for an answer, except the first (``ack_first``, default on: it tells at
once whether the stream accepts batches) and every ``ack_every``-th (flow control for
large batches).

Two spellings, as in nats.go:

* ``js.publish_batch([(subject, payload), ...])`` sends a list and commits it;
* ``batch = js.batch_publisher()`` then ``batch.add(...)`` and ``batch.commit(...)``
  (or ``batch.close()``, which commits without adding a message, server 2.14+) for
  messages produced one at a time.

The batch is an object (not a ``publish(..., batch=...)`` option) because it has state
the user must see: its id, how many messages were added, whether it is closed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .._nuid import next_nuid
from ..errors import NoRespondersError
from ..headers import Headers, HeadersInput
from ._proto import decode_api_response
from .api import Header, PubAck, format_ttl
from .errors import APIError, JetStreamError, NoStreamResponseError

if TYPE_CHECKING:  # pragma: no cover
    from .context import JetStream

__all__ = ["BatchPublisher", "BatchClosedError", "BatchMessage", "publish_batch"]

_Payload = bytes | bytearray | memoryview | str
BatchMessage = tuple[str, _Payload] | tuple[str, _Payload, HeadersInput | None]
"""One message of :func:`publish_batch`: ``(subject, payload)`` or ``(subject,
payload, headers)``."""

_COMMIT = "1"
_END_OF_BATCH = "eob"


class BatchClosedError(JetStreamError):
    """The batch was already committed, closed or discarded: start a new one."""

    def __init__(
        self, message: str = "the batch is already committed or discarded: start a new batch"
    ) -> None:
        super().__init__(message)


def _check_flow(ack_first: object, ack_every: object) -> None:
    if not isinstance(ack_first, bool):
        raise ValueError(f"ack_first must be a bool, not {ack_first!r}")
    if isinstance(ack_every, bool) or not isinstance(ack_every, int) or ack_every < 0:
        raise ValueError(f"ack_every must be an int >= 0 (0: never), not {ack_every!r}")


class BatchPublisher:
    """One atomic batch: :meth:`add` messages, then :meth:`commit` (or :meth:`close`).

    Get one from :meth:`natsync.js.JetStream.batch_publisher`.  Messages are sent as
    they are added (the server stages them); nothing is stored before the commit.
    ``ack_first`` waits for the server's answer to the first message (an error there,
    e.g. a stream without ``allow_atomic``, is raised by :meth:`add`); ``ack_every=N``
    waits for one every N messages.  ``timeout`` (default: the context's) bounds every
    wait.

    May be used from several threads: one lock (``_lock``) guards the sequence
    counter and the closed flag and is held while a message is handed to the
    connection, so the batch's messages leave in sequence order.  A ``with`` block
    discards a batch that was not committed when it ends.
    """

    def __init__(
        self,
        js: JetStream,
        *,
        ack_first: bool = True,
        ack_every: int = 0,
        timeout: float | None = None,
    ) -> None:
        _check_flow(ack_first, ack_every)
        self._js = js
        self._nc = js._nc
        self._timeout = js._timeout if timeout is None else _timeout_of(timeout)
        self._ack_first = ack_first
        self._ack_every = ack_every
        self._id = next_nuid()
        self._lock = threading.Lock()  # guards _seq, _closed, _subject
        self._seq = 0
        self._closed = False
        self._subject: str | None = None

    def __repr__(self) -> str:
        return f"<natsync.js.BatchPublisher id={self._id!r} size={self._seq} closed={self._closed}>"

    @property
    def batch_id(self) -> str:
        """The batch's id (``Nats-Batch-Id``)."""
        return self._id

    @property
    def size(self) -> int:
        """How many messages were added so far (the commit's message included)."""
        with self._lock:
            return self._seq

    @property
    def closed(self) -> bool:
        """Whether the batch was committed, closed or discarded."""
        with self._lock:
            return self._closed

    def add(
        self,
        subject: str,
        payload: bytes | bytearray | memoryview | str = b"",
        *,
        headers: HeadersInput | None = None,
        msg_id: str | None = None,
        ttl: float | str | None = None,
        expected_stream: str | None = None,
        expected_last_seq: int | None = None,
        expected_last_subject_seq: int | None = None,
        expected_last_subject_seq_subject: str | None = None,
    ) -> None:
        """Add a message to the batch (sent now, stored at the commit).

        The options set the same headers as :meth:`JetStream.publish`; the server
        checks the ``expected_*`` ones when the batch commits (only the first message
        may carry ``expected_last_seq``).

        Raises:
            BatchClosedError: the batch was committed or discarded.
            NoStreamResponseError: (with ``ack_first``) no stream captures ``subject``.
            APIError: the server refused the message (e.g. err_code 10174, the stream
                has no ``allow_atomic``); the batch is then closed.
            natsync.TimeoutError: no answer to a message that waits for one (the
                batch is then closed).
            ValueError: a bad option (nothing is sent).
        """
        hdrs = _headers(
            headers,
            msg_id,
            ttl,
            expected_stream,
            expected_last_seq,
            expected_last_subject_seq,
            expected_last_subject_seq_subject,
        )
        with self._lock:
            if self._closed:
                raise BatchClosedError()
            seq = self._seq + 1
            hdrs[Header.BATCH_ID.value] = self._id
            hdrs[Header.BATCH_SEQ.value] = str(seq)
            wait = (self._ack_first and seq == 1) or (self._ack_every > 0 and seq % self._ack_every == 0)
            if not wait:
                self._nc.publish(subject, payload, headers=hdrs)
            else:
                try:
                    reply = self._nc.request(subject, payload, timeout=self._timeout, headers=hdrs)
                except NoRespondersError:
                    self._closed = True
                    raise NoStreamResponseError(
                        f"no stream listens on subject {subject!r}: create a stream capturing it "
                        "(with allow_atomic=True)"
                    ) from None
                except BaseException:
                    # the message may or may not be staged: its sequence cannot be reused
                    self._closed = True
                    raise
                if reply.data:
                    try:
                        decode_api_response(reply.data, "PUBLISH")
                    except APIError:
                        self._closed = True
                        raise
            self._seq = seq
            if self._subject is None:
                self._subject = subject

    def commit(
        self,
        subject: str,
        payload: bytes | bytearray | memoryview | str = b"",
        *,
        headers: HeadersInput | None = None,
        msg_id: str | None = None,
        ttl: float | str | None = None,
        expected_stream: str | None = None,
        expected_last_seq: int | None = None,
        expected_last_subject_seq: int | None = None,
        expected_last_subject_seq_subject: str | None = None,
        timeout: float | None = None,
    ) -> PubAck:
        """Add the last message and commit the batch: the stream stores every message
        of it, or none.  Returns the commit's :class:`~natsync.js.api.PubAck`
        (``batch_id``, ``batch_size``; ``seq`` is the last message's sequence).

        The batch is closed after this call, whatever its outcome (after a
        :class:`natsync.TimeoutError` whether the batch was stored is unknown: read
        the stream to find out).

        Raises:
            BatchClosedError: the batch was committed or discarded.
            APIError: the server refused the batch (a missing message, a failed
                expectation, more messages than the server allows...): nothing of
                it was stored.
            NoStreamResponseError: no stream captures ``subject``.
            natsync.TimeoutError: no answer within ``timeout``.
        """
        hdrs = _headers(
            headers,
            msg_id,
            ttl,
            expected_stream,
            expected_last_seq,
            expected_last_subject_seq,
            expected_last_subject_seq_subject,
        )
        t = self._timeout if timeout is None else _timeout_of(timeout)
        with self._lock:
            if self._closed:
                raise BatchClosedError()
            self._closed = True
            self._seq += 1
            hdrs[Header.BATCH_ID.value] = self._id
            hdrs[Header.BATCH_SEQ.value] = str(self._seq)
            hdrs[Header.BATCH_COMMIT.value] = _COMMIT
            size = self._seq
            return self._final(subject, payload, hdrs, t, size)

    def close(self, timeout: float | None = None) -> PubAck:
        """Commit the messages added so far without adding one (an end-of-batch
        marker the server does not store; nats-server 2.14+).  Returns the commit's
        :class:`~natsync.js.api.PubAck`.

        Raises:
            BatchClosedError: the batch was committed or discarded.
            ValueError: nothing was added (nothing is sent; the batch stays open).
            APIError: the server refused the batch (or does not know end-of-batch
                markers: use :meth:`commit`).
            natsync.TimeoutError: no answer within ``timeout``.
        """
        t = self._timeout if timeout is None else _timeout_of(timeout)
        with self._lock:
            if self._closed:
                raise BatchClosedError()
            if self._subject is None:
                raise ValueError("close(): the batch is empty; add a message first, or use commit()")
            self._closed = True
            hdrs = Headers()
            hdrs[Header.BATCH_ID.value] = self._id
            hdrs[Header.BATCH_SEQ.value] = str(self._seq + 1)
            hdrs[Header.BATCH_COMMIT.value] = _END_OF_BATCH
            return self._final(self._subject, b"", hdrs, t, self._seq)

    def discard(self) -> None:
        """Give the batch up: nothing more is sent, and the server abandons what it
        staged (after its batch timeout, 10 s).

        Raises:
            BatchClosedError: the batch was already committed or discarded.
        """
        with self._lock:
            if self._closed:
                raise BatchClosedError()
            self._closed = True

    def _final(
        self,
        subject: str,
        payload: bytes | bytearray | memoryview | str,
        hdrs: Headers,
        timeout: float,
        size: int,
    ) -> PubAck:
        # Called with self._lock held: the commit is the batch's last message.
        try:
            reply = self._nc.request(subject, payload, timeout=timeout, headers=hdrs)
        except NoRespondersError:
            raise NoStreamResponseError(
                f"no stream listens on subject {subject!r}: create a stream capturing it "
                "(with allow_atomic=True)"
            ) from None
        return _batch_ack(reply.data, self._id, size)

    def __enter__(self) -> BatchPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._closed = True


def _timeout_of(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
    return float(timeout)


def _headers(
    headers: HeadersInput | None,
    msg_id: str | None,
    ttl: float | str | None,
    expected_stream: str | None,
    expected_last_seq: int | None,
    expected_last_subject_seq: int | None,
    expected_last_subject_seq_subject: str | None,
) -> Headers:
    """A fresh header block for one batch message (the caller's headers are copied,
    never changed)."""
    h = Headers(headers) if headers is not None else Headers()
    for name in (Header.BATCH_ID, Header.BATCH_SEQ, Header.BATCH_COMMIT):
        if name.value in h:
            raise ValueError(f"header {name.value!r} is set by the batch: leave it out of headers")
    if msg_id is not None:
        h[Header.MSG_ID.value] = str(msg_id)
    if ttl is not None:
        h[Header.MSG_TTL.value] = format_ttl(ttl, "ttl")
    if expected_stream is not None:
        h[Header.EXPECTED_STREAM.value] = expected_stream
    if expected_last_seq is not None:
        h[Header.EXPECTED_LAST_SEQ.value] = str(int(expected_last_seq))
    if expected_last_subject_seq_subject is not None:
        if expected_last_subject_seq is None:
            raise ValueError(
                "expected_last_subject_seq_subject needs expected_last_subject_seq: the sequence "
                "the last message on that subject must have"
            )
        h[Header.EXPECTED_LAST_SUBJECT_SEQ_SUBJECT.value] = expected_last_subject_seq_subject
    if expected_last_subject_seq is not None:
        h[Header.EXPECTED_LAST_SUBJECT_SEQ.value] = str(int(expected_last_subject_seq))
    return h


def _batch_ack(data: bytes, batch_id: str, size: int) -> PubAck:
    resp = decode_api_response(data, "PUBLISH")  # raises the server's error
    stream = resp.get("stream")
    seq = resp.get("seq")
    if (
        not isinstance(stream, str)
        or not isinstance(seq, int)
        or resp.get("batch") != batch_id
        or resp.get("count") != size
    ):
        raise APIError(
            description=f"invalid batch acknowledgement (batch {batch_id!r} of {size}): {data[:120]!r}",
            operation="PUBLISH",
        )
    return PubAck.from_json(resp)


def _split(item: Any) -> tuple[str, Any, HeadersInput | None]:
    if isinstance(item, tuple) and len(item) in (2, 3):
        return item[0], item[1], item[2] if len(item) == 3 else None
    subject = getattr(item, "subject", None)
    if isinstance(subject, str) and hasattr(item, "data"):
        return subject, item.data, getattr(item, "headers", None)
    raise TypeError(
        f"a batch message is (subject, payload) or (subject, payload, headers), or a natsync.Msg; "
        f"not {type(item).__name__}"
    )


def publish_batch(
    js: JetStream,
    messages: Iterable[BatchMessage | Any],
    *,
    ack_first: bool = True,
    ack_every: int = 0,
    timeout: float | None = None,
) -> PubAck:
    """Publish ``messages`` as one atomic batch and commit it with the last one (see
    :meth:`natsync.js.JetStream.publish_batch`)."""
    items = [_split(m) for m in messages]
    if not items:
        raise ValueError("publish_batch: no messages")
    batch = BatchPublisher(js, ack_first=ack_first, ack_every=ack_every, timeout=timeout)
    # every message is checked before the first is sent
    prepared = [(s, p, Headers(h) if h is not None else None) for s, p, h in items]
    for _, _, h in prepared:
        if h is not None:
            for name in (Header.BATCH_ID, Header.BATCH_SEQ, Header.BATCH_COMMIT):
                if name.value in h:
                    raise ValueError(f"header {name.value!r} is set by the batch: leave it out of headers")
    for subject, payload, h in prepared[:-1]:
        batch.add(subject, payload, headers=h)
    subject, payload, h = prepared[-1]
    return batch.commit(subject, payload, headers=h)

"""The JetStream, Key/Value and Object Store exceptions.

Every class here is a :class:`natsync.NatsError`.  Errors the JetStream API answers
with (a JSON ``{"error": {"code", "err_code", "description"}}``) are :class:`APIError`
or one of its subclasses, picked by :func:`api_error` from the HTTP-like ``code`` and
the server's ``err_code``.  A timeout is always :class:`natsync.TimeoutError`.
"""

from __future__ import annotations

from typing import Any

from ..errors import NatsError

__all__ = [
    "JetStreamError",
    "APIError",
    "NotFoundError",
    "StreamNotFoundError",
    "ConsumerNotFoundError",
    "BucketNotFoundError",
    "KeyNotFoundError",
    "KeyDeletedError",
    "ObjectNotFoundError",
    "BadRequestError",
    "KeyWrongLastSequenceError",
    "ServiceUnavailableError",
    "ServerError",
    "NoStreamResponseError",
    "NotJSMessageError",
    "MsgAlreadyAckdError",
    "InvalidKeyError",
    "InvalidBucketNameError",
    "NoKeysError",
    "DigestMismatchError",
    "ObjectDeletedError",
    "NoHeartbeatError",
    "ConsumerSequenceMismatchError",
    "api_error",
]

# err_code values of nats-server (server/errors.json) that select a subclass
ERR_STREAM_NOT_FOUND = 10059
ERR_CONSUMER_NOT_FOUND = 10014
ERR_WRONG_LAST_SEQUENCE = 10071
ERR_JETSTREAM_NOT_ENABLED = 10076
ERR_JETSTREAM_NOT_ENABLED_FOR_ACCOUNT = 10039


class JetStreamError(NatsError):
    """Base class of every JetStream, Key/Value and Object Store error."""


class APIError(JetStreamError):
    """The JetStream API answered with an error.

    Attributes:
        code: the HTTP-like status code (404, 400, 503, ...), or None.
        err_code: nats-server's error code (e.g. 10059 "stream not found"), or None.
        description: the server's description of the error.
        operation: the API operation as written in the request subject, e.g.
            ``"STREAM.INFO"`` (empty when unknown).
        stream: the stream concerned, when known (publish errors).
        seq: the sequence concerned, when known.
    """

    def __init__(
        self,
        code: int | None = None,
        err_code: int | None = None,
        description: str | None = None,
        *,
        operation: str = "",
        stream: str | None = None,
        seq: int | None = None,
    ) -> None:
        self.code = code
        self.err_code = err_code
        self.description: str = description or ""
        self.operation = operation
        self.stream = stream
        self.seq = seq
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"JetStream {self.operation}" if self.operation else "JetStream"
        desc = self.description or type(self).__name__
        codes = []
        if self.code is not None:
            codes.append(f"code={self.code}")
        if self.err_code is not None:
            codes.append(f"err_code={self.err_code}")
        tail = f" ({', '.join(codes)})" if codes else ""
        return f"{where}: {desc}{tail}"

    def __str__(self) -> str:
        return self._text()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, err_code={self.err_code!r}, "
            f"description={self.description!r}, operation={self.operation!r})"
        )


class NotFoundError(APIError):
    """The server said 404: the thing asked for does not exist."""


class StreamNotFoundError(NotFoundError):
    """The stream does not exist (err_code 10059)."""


class ConsumerNotFoundError(NotFoundError):
    """The consumer does not exist, or was deleted while in use (err_code 10014)."""


class BucketNotFoundError(NotFoundError):
    """The Key/Value or Object Store bucket does not exist."""


class KeyNotFoundError(NotFoundError):
    """The key does not exist in the Key/Value bucket.

    Attributes ``entry`` (the entry when the key was deleted, else None) and ``op``.
    """

    def __init__(
        self,
        code: int | None = None,
        err_code: int | None = None,
        description: str | None = None,
        *,
        entry: Any = None,
        op: str | None = None,
        operation: str = "",
        stream: str | None = None,
        seq: int | None = None,
    ) -> None:
        self.entry = entry
        self.op = op
        super().__init__(
            code, err_code, description or "key not found", operation=operation, stream=stream, seq=seq
        )


class KeyDeletedError(KeyNotFoundError):
    """The key was deleted or purged (its last entry is a ``DEL`` or ``PURGE`` marker)."""


class ObjectNotFoundError(NotFoundError):
    """The object does not exist in the Object Store bucket (or was deleted)."""


class BadRequestError(APIError):
    """The server said 400: the request was refused (bad config, failed expectation)."""


class KeyWrongLastSequenceError(BadRequestError):
    """The key's last revision is not the one expected (``create`` of an existing key,
    ``update`` with a stale revision)."""


class ServiceUnavailableError(APIError):
    """The server said 503: JetStream is not enabled or not available right now."""


class ServerError(APIError):
    """The server said 500: an internal JetStream error."""


class NoStreamResponseError(JetStreamError):
    """A JetStream publish found no stream listening on its subject (no responders)."""

    def __init__(self, message: str = "no stream listens on this subject") -> None:
        super().__init__(message)


class NotJSMessageError(JetStreamError):
    """The message is not a JetStream message: it cannot be acknowledged and has no
    metadata."""

    def __init__(self, message: str = "not a JetStream message: no JetStream ack subject") -> None:
        super().__init__(message)


class MsgAlreadyAckdError(JetStreamError):
    """The message was already acknowledged (``ack``, ``ack_sync``, ``nak`` or ``term``)."""

    def __init__(self, message: str = "message already acknowledged: ack, nak and term are final") -> None:
        super().__init__(message)


class InvalidKeyError(JetStreamError, ValueError):
    """A Key/Value key is not valid (empty, leading or trailing ``.``, or characters
    outside ``[-/_=.a-zA-Z0-9]``)."""


class InvalidBucketNameError(JetStreamError, ValueError):
    """A bucket name is not valid (it must match ``[A-Za-z0-9_-]+``)."""


class NoKeysError(JetStreamError):
    """The Key/Value bucket holds no keys (matching the filter)."""

    def __init__(self, message: str = "no keys found") -> None:
        super().__init__(message)


class DigestMismatchError(JetStreamError):
    """The SHA-256 digest of an object read does not match the one stored with it."""


class ObjectDeletedError(JetStreamError):
    """The object was deleted."""


class NoHeartbeatError(JetStreamError):
    """The server's idle heartbeats stopped arriving while the client was connected."""

    def __init__(self, message: str = "no heartbeat received from the JetStream consumer") -> None:
        super().__init__(message)


class ConsumerSequenceMismatchError(JetStreamError):
    """A push consumer saw a gap in its consumer sequence (messages were missed)."""


def api_error(
    code: int | None,
    err_code: int | None,
    description: str | None,
    operation: str = "",
) -> APIError:
    """Return the :class:`APIError` subclass for an API error answer.

    ``code`` is the HTTP-like status, ``err_code`` nats-server's error code, and
    ``operation`` the API operation (e.g. ``"STREAM.INFO"``) for the message.
    """
    cls: type[APIError]
    if err_code == ERR_STREAM_NOT_FOUND:
        cls = StreamNotFoundError
    elif err_code == ERR_CONSUMER_NOT_FOUND:
        cls = ConsumerNotFoundError
    elif err_code in (ERR_JETSTREAM_NOT_ENABLED, ERR_JETSTREAM_NOT_ENABLED_FOR_ACCOUNT):
        cls = ServiceUnavailableError
    elif code == 404:
        cls = NotFoundError
    elif code == 400:
        cls = BadRequestError
    elif code == 503:
        cls = ServiceUnavailableError
    elif code == 500:
        cls = ServerError
    else:
        cls = APIError
    return cls(code, err_code, description, operation=operation)

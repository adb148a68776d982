"""Pure JetStream protocol helpers: name checks, API answers, ack-subject metadata,
status-message classification.  No sockets, threads or clocks.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

from ..headers import Headers
from .errors import APIError, api_error

__all__ = [
    "ACK_PREFIX",
    "SequencePair",
    "MsgMetadata",
    "parse_metadata",
    "ack_sequences",
    "check_name",
    "decode_api_response",
    "Status",
    "classify_status",
    "api_prefix",
    "consumer_name",
    "subject_token_ok",
    "server_at_least",
]

ACK_PREFIX = "$JS.ACK."

_BAD_NAME_CHARS = frozenset(".*> \t\r\n\f\v/\\")


def check_name(kind: str, name: object) -> str:
    """Return ``name`` if it is a valid stream or consumer name, else raise ValueError.

    ``kind`` ("stream", "consumer") names what is checked in the message.
    """
    if not isinstance(name, str):
        raise TypeError(f"{kind} name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError(f"{kind} name is empty: give a name without '.', '*', '>', whitespace or '/'")
    bad = _BAD_NAME_CHARS.intersection(name)
    if bad or not name.isprintable():
        shown = ", ".join(repr(c) for c in sorted(bad)) if bad else "non-printable characters"
        raise ValueError(
            f"{kind} name {name!r} contains {shown}: names may not hold '.', '*', '>', whitespace "
            "or path separators"
        )
    return name


def api_prefix(prefix: str | None, domain: str | None) -> str:
    """The JetStream API prefix for ``prefix``/``domain`` (at most one of them).

    Raises:
        ValueError: if both are given, or one is empty or holds wildcards/whitespace.
    """
    if prefix is not None and domain is not None:
        raise ValueError("give prefix or domain, not both: domain 'D' means prefix '$JS.D.API'")
    if domain is not None:
        if not isinstance(domain, str) or not domain or _BAD_NAME_CHARS.intersection(domain):
            raise ValueError(
                f"domain {domain!r} is invalid: a non-empty name without '.', '*', '>' or spaces"
            )
        return f"$JS.{domain}.API"
    if prefix is None:
        return "$JS.API"
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "*> \t\r\n"):
        raise ValueError(f"API prefix {prefix!r} is invalid: a subject without wildcards or spaces")
    return prefix[:-1] if prefix.endswith(".") else prefix


def decode_api_response(data: bytes, operation: str) -> dict[str, Any]:
    """Decode a JetStream API answer; raise its error as :class:`APIError`.

    Raises:
        APIError: (or a subclass) when the answer holds ``"error"`` or is not JSON.
    """
    try:
        resp = json.loads(data)
    except ValueError:
        raise APIError(description=f"answer is not JSON: {data[:80]!r}", operation=operation) from None
    if not isinstance(resp, dict):
        raise APIError(description="answer is not a JSON object", operation=operation)
    err = resp.get("error")
    if err is not None:
        if not isinstance(err, dict):
            raise APIError(description=str(err), operation=operation)
        code = err.get("code")
        err_code = err.get("err_code")
        raise api_error(
            code if isinstance(code, int) else None,
            err_code if isinstance(err_code, int) else None,
            str(err.get("description") or ""),
            operation,
        )
    return resp


@dataclass(frozen=True)
class SequencePair:
    """A message's sequence in the consumer and in the stream."""

    consumer: int
    stream: int


@dataclass(frozen=True)
class MsgMetadata:
    """What a JetStream message's ack subject says about it (``msg.metadata``)."""

    sequence: SequencePair
    num_pending: int
    num_delivered: int
    timestamp: datetime.datetime
    stream: str
    consumer: str
    domain: str | None = None


def _timestamp(nanos: int) -> datetime.datetime:
    secs, rem = divmod(nanos, 1_000_000_000)
    return datetime.datetime.fromtimestamp(secs, tz=datetime.timezone.utc) + datetime.timedelta(
        microseconds=rem // 1000
    )


def _tokens(reply: str | None) -> list[str] | None:
    if not reply or not reply.startswith(ACK_PREFIX):
        return None
    tokens = reply.split(".")
    n = len(tokens)
    if n == 9:
        # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return ["", "", *tokens[2:]]
    if n >= 11:
        # $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>
        #   .<ts>.<pending>[.<token>...]
        return tokens[2:11]
    return None


def parse_metadata(reply: str | None) -> MsgMetadata | None:
    """Parse a JetStream ack subject (the old 9-token form or the 11+-token form with
    domain and account hash); None if ``reply`` is not one."""
    t = _tokens(reply)
    if t is None:
        return None
    domain, _acc, stream, consumer, delivered, sseq, cseq, ts, pending = t
    try:
        return MsgMetadata(
            sequence=SequencePair(consumer=int(cseq), stream=int(sseq)),
            num_pending=int(pending),
            num_delivered=int(delivered),
            timestamp=_timestamp(int(ts)),
            stream=stream,
            consumer=consumer,
            domain=None if domain in ("", "_") else domain,
        )
    except ValueError:
        return None


def ack_sequences(reply: str | None) -> tuple[int, int] | None:
    """(stream sequence, consumer sequence) from an ack subject, cheaply; None if it
    is not one."""
    if not reply or not reply.startswith(ACK_PREFIX):
        return None
    tokens = reply.split(".")
    n = len(tokens)
    try:
        if n == 9:
            return int(tokens[5]), int(tokens[6])
        if n >= 11:
            return int(tokens[7]), int(tokens[8])
    except ValueError:
        return None
    return None


class Status:
    """Kinds of status message a consumer receives (:func:`classify_status`)."""

    HEARTBEAT = "heartbeat"  # 100 Idle Heartbeat
    FLOW_CONTROL = "flow_control"  # 100 FlowControl Request (has a reply subject)
    NO_MESSAGES = "no_messages"  # 404: a no_wait pull found nothing
    TIMEOUT = "timeout"  # 408: the pull request expired
    CONSUMER_DELETED = "consumer_deleted"  # 409 Consumer Deleted
    LEADERSHIP_CHANGE = "leadership_change"  # 409 Leadership Change / Server Shutdown
    MAX_BYTES = "max_bytes"  # 409 Message Size Exceeds MaxBytes: the request is done
    BAD_REQUEST = "bad_request"  # 409 Exceeded MaxWaiting / MaxRequestBatch ...: a user error
    NO_RESPONDERS = "no_responders"  # 503
    OTHER = "other"


def classify_status(status: int, description: str, has_reply: bool) -> str:
    """Classify a status message by its code and description (pure)."""
    d = description.lower()
    if status == 100:
        if has_reply or "flow" in d:
            return Status.FLOW_CONTROL
        return Status.HEARTBEAT
    if status == 404:
        return Status.NO_MESSAGES
    if status == 408:
        return Status.TIMEOUT
    if status == 409:
        if "consumer deleted" in d:
            return Status.CONSUMER_DELETED
        if "leadership change" in d or "server shutdown" in d:
            return Status.LEADERSHIP_CHANGE
        if "exceeds maxbytes" in d:
            return Status.MAX_BYTES
        return Status.BAD_REQUEST
    if status == 503:
        return Status.NO_RESPONDERS
    return Status.OTHER


def status_of(hdr: bytes | None, data: bytes, headers: Headers | None) -> tuple[int, str] | None:
    """(code, description) if a received message is a status message, else None.

    A status message has a ``NATS/1.0 <code>`` header line and no payload.
    """
    if hdr is None or data or headers is None or headers.status is None:
        return None
    return headers.status, headers.description


def consumer_name() -> str:
    """A fresh consumer name for an ephemeral consumer (created through the extended
    ``CONSUMER.CREATE.<stream>.<name>`` subject, as nats.go names them)."""
    from .._nuid import next_nuid

    return next_nuid()


def subject_token_ok(subject: str) -> bool:
    """True if ``subject`` may be appended to an API subject: non-empty tokens, no
    whitespace (wildcards are fine)."""
    if not subject or any(c in subject for c in " \t\r\n\f\v"):
        return False
    return all(subject.split("."))


def server_at_least(version: object, wanted: tuple[int, int, int]) -> bool:
    """True if the server ``version`` string ("2.10.4", "2.11.0-beta.1") is at least
    ``wanted``; True as well when it cannot be read (current servers are assumed)."""
    if not isinstance(version, str):
        return True
    core = version.split("-", 1)[0].split("+", 1)[0]
    parts: list[int] = []
    for p in core.split(".")[:3]:
        if not p.isdigit():
            return True
        parts.append(int(p))
    while len(parts) < 3:
        parts.append(0)
    return (parts[0], parts[1], parts[2]) >= wanted

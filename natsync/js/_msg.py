"""Acknowledgements and metadata of JetStream messages (the methods of
:class:`natsync.Msg` delegate here)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, cast

from ._proto import ACK_PREFIX, MsgMetadata, parse_metadata
from .errors import MsgAlreadyAckdError, NotJSMessageError

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Client
    from ..msg import Msg

__all__ = ["ack", "ack_sync", "nak", "in_progress", "term", "metadata"]

ACK = b"+ACK"
NAK = b"-NAK"
WPI = b"+WPI"
TERM = b"+TERM"


def _check(msg: Msg) -> str:
    reply = msg.reply
    if not reply or not reply.startswith(ACK_PREFIX):
        raise NotJSMessageError(
            f"message on {msg.subject!r} is not a JetStream message (no $JS.ACK reply subject): "
            "only messages of JetStream consumers can be acknowledged"
        )
    if getattr(msg, "_ackd", False):
        raise MsgAlreadyAckdError(
            f"message on {msg.subject!r} was already acknowledged: ack, ack_sync, nak and term are final"
        )
    if msg._client is None:
        raise NotJSMessageError("message is not bound to a client: it cannot be acknowledged")
    return reply


def _client_of(msg: Msg) -> Client:
    # Msg only knows the narrow Responder interface; messages of JetStream consumers
    # are always bound to the full client that received them.
    return cast("Client", msg._client)


def _send(msg: Msg, payload: bytes, final: bool) -> None:
    reply = _check(msg)
    _client_of(msg).publish(reply, payload)
    if final:
        msg._ackd = True


def ack(msg: Msg) -> None:
    """Acknowledge the message (``+ACK``); final."""
    _send(msg, ACK, True)


def ack_sync(msg: Msg, timeout: float | None = None) -> None:
    """Acknowledge and wait until the server confirms it (default timeout 5 s); final.

    Raises:
        natsync.TimeoutError: if the server did not confirm within ``timeout``.
    """
    reply = _check(msg)
    _client_of(msg).request(reply, ACK, timeout=5.0 if timeout is None else timeout)
    msg._ackd = True


def nak(msg: Msg, delay: float | None = None) -> None:
    """Negatively acknowledge: redeliver, after ``delay`` seconds if given; final."""
    if delay is None:
        _send(msg, NAK, True)
    else:
        if delay < 0:
            raise ValueError(f"nak delay must be >= 0 seconds, not {delay!r}")
        _send(msg, NAK + b" " + json.dumps({"delay": int(delay * 1e9)}).encode(), True)


def in_progress(msg: Msg) -> None:
    """Tell the server the message is still being worked on (resets its ack timer);
    may repeat until a final acknowledgement."""
    _send(msg, WPI, False)


def term(msg: Msg, reason: str | None = None) -> None:
    """Stop redelivery of the message (``+TERM``, or ``+TERM <reason>``: the server
    puts the reason in its advisory); final.

    Raises:
        ValueError: ``reason`` holds a line break.
    """
    if not reason:
        _send(msg, TERM, True)
        return
    if not isinstance(reason, str) or "\r" in reason or "\n" in reason:
        raise ValueError(f"term reason must be a str on one line, not {reason!r}")
    _send(msg, TERM + b" " + reason.encode(), True)


def metadata(msg: Msg) -> MsgMetadata:
    """The JetStream metadata of the message, parsed from its ack subject.

    Raises:
        NotJSMessageError: for a message that is not from a JetStream consumer.
    """
    md = parse_metadata(msg.reply)
    if md is None:
        raise NotJSMessageError(
            f"message on {msg.subject!r} is not a JetStream message: its reply subject is no ack subject"
        )
    return md

"""Received messages.

A message is created by the reader thread (``protocol.Parser``) and handed to one
consumer. It does not import the client: ``respond()`` goes through the narrow
:class:`Responder` interface (the client's ``_respond``), which buffers the reply and
sends it without waiting on the socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

from .headers import Headers, HeadersInput, decode_headers

if TYPE_CHECKING:  # pragma: no cover
    from .js._proto import MsgMetadata

__all__ = ["Msg", "Responder"]


class Responder(Protocol):
    """What a message needs from its client: publish a reply now."""

    def _respond(
        self, reply: str, data: bytes | bytearray | memoryview | str, headers: HeadersInput | None
    ) -> None: ...


class Msg:
    """A message received on a subscription.

    Attributes: ``subject`` (str), ``reply`` (str or None), ``data`` (bytes),
    ``headers`` (:class:`~natsync.Headers` or None, decoded on first access),
    ``sid`` (the subscription id).
    """

    # _ackd: set (never initialised, to keep the hot path free) once a JetStream
    # message has had its final acknowledgement.
    __slots__ = ("_client", "subject", "sid", "reply", "_hdr", "_headers", "data", "_ackd")
    _ackd: bool
    #: The subject the message was published to.
    subject: str
    #: The id of the subscription that received it.
    sid: int
    #: The reply subject, or None when the sender expects no reply.
    reply: str | None
    #: The payload.
    data: bytes

    def __init__(
        self,
        client: Responder | None,
        subject: str,
        sid: int,
        reply: str | None,
        hdr: bytes | None,
        data: bytes,
    ) -> None:
        self._client = client
        self.subject = subject
        self.sid = sid
        self.reply = reply
        self._hdr = hdr
        self._headers: Headers | None = None
        self.data = data

    @property
    def headers(self) -> Headers | None:
        """The message headers, or None when the message had none."""
        if self._headers is None and self._hdr is not None:
            self._headers = decode_headers(self._hdr)
        return self._headers

    @headers.setter
    def headers(self, value: Headers | None) -> None:
        self._headers = value
        self._hdr = None

    def respond(
        self, data: bytes | bytearray | memoryview | str = b"", headers: HeadersInput | None = None
    ) -> None:
        """Publish *data* to this message's reply subject.

        Raises :class:`ValueError` when the message has no reply subject, and what
        :meth:`Client.publish` raises.
        """
        if not self.reply:
            raise ValueError(f"message on {self.subject!r} has no reply subject: nothing to respond to")
        if self._client is None:
            raise ValueError("message is not bound to a client: publish the reply yourself")
        self._client._respond(self.reply, data, headers)

    def __repr__(self) -> str:
        data = self.data if len(self.data) <= 64 else self.data[:64] + b"..."
        hdr = ", headers=..." if self._hdr is not None or self._headers is not None else ""
        return f"<Msg subject={self.subject!r} sid={self.sid} reply={self.reply!r} data={data!r}{hdr}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Msg):
            return NotImplemented
        return (
            self.subject == other.subject
            and self.reply == other.reply
            and self.data == other.data
            and self.headers == other.headers
        )

    __hash__: ClassVar[None] = None  # type: ignore[assignment]

    # --- JetStream (natsync.js._msg does the work) -----------------------------------------

    def ack(self) -> None:
        """Acknowledge a JetStream message (the server redelivers it no more)."""
        from .js import _msg

        _msg.ack(self)

    def ack_sync(self, timeout: float | None = None) -> None:
        """Acknowledge and wait for the server's confirmation (JetStream)."""
        from .js import _msg

        _msg.ack_sync(self, timeout)

    def nak(self, delay: float | None = None) -> None:
        """Ask for redelivery, after *delay* seconds if given (JetStream)."""
        from .js import _msg

        _msg.nak(self, delay)

    def in_progress(self) -> None:
        """Reset the redelivery timer: still working on it (JetStream)."""
        from .js import _msg

        _msg.in_progress(self)

    def term(self, reason: str | None = None) -> None:
        """Stop redelivery of this message (JetStream); ``reason`` goes with it
        (``+TERM <reason>``) into the server's advisory."""
        from .js import _msg

        _msg.term(self, reason)

    @property
    def metadata(self) -> MsgMetadata:
        """JetStream metadata from the ack subject; raises ``NotJSMessageError`` on a
        core message."""
        from .js import _msg

        return _msg.metadata(self)

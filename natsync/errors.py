"""The natsync exception hierarchy.

Every error natsync raises or hands to ``error_cb`` is a :class:`NatsError`.
Messages say what was wrong and what to do; they never contain a secret.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .subscription import Subscription

__all__ = [
    "NatsError",
    "ConnectionClosedError",
    "ConnectionDrainingError",
    "NoServersError",
    "AuthorizationError",
    "TimeoutError",
    "NotConnectedError",
    "NoRespondersError",
    "BadSubjectError",
    "BadHeaderError",
    "MaxPayloadError",
    "BadSubscriptionError",
    "SlowConsumerError",
    "OutboundBufferFullError",
    "StaleConnectionError",
    "ProtocolError",
    "PermissionsError",
    "SecureConnectionError",
    "NkeysNotSupportedError",
]


class NatsError(Exception):
    """Base class of every natsync error."""


class ConnectionClosedError(NatsError):
    """The client is closed (or was created in another process); connect again."""

    def __init__(
        self, message: str = "connection closed: create a new client with natsync.connect()"
    ) -> None:
        super().__init__(message)


class ConnectionDrainingError(NatsError):
    """The client is draining: no new subscriptions, and no publishes in the final phase."""

    def __init__(self, message: str = "connection is draining: no new subscriptions or publishes") -> None:
        super().__init__(message)


class NoServersError(NatsError):
    """No server in the pool could be connected to."""


class AuthorizationError(NatsError):
    """The server rejected the credentials (``-ERR 'Authorization Violation'`` and kin)."""


class TimeoutError(NatsError, builtins.TimeoutError):
    """An operation did not complete in time. Also a builtin :class:`TimeoutError`."""

    def __init__(self, message: str = "timed out") -> None:
        super().__init__(message)


class NotConnectedError(TimeoutError):
    """The client is not connected (it is reconnecting): a request, or a JetStream, Key/Value
    or Object Store call, was not sent because nothing could answer it now.

    Raised at once, without waiting for the timeout.  A subclass of
    :class:`TimeoutError`, so handlers of timeouts also catch it; retry when the client is
    connected again (``reconnected_cb``, or ``Client.is_connected``).
    """

    def __init__(self, message: str = "not connected (reconnecting): retry when connected") -> None:
        super().__init__(message)


class NoRespondersError(NatsError):
    """A request found no subscriber on its subject (the server's 503 status)."""

    def __init__(self, subject: str = "") -> None:
        self.subject = subject
        where = f" on {subject!r}" if subject else ""
        super().__init__(f"no responders{where}: nothing is subscribed to the request subject")


class BadSubjectError(NatsError, ValueError):
    """A subject, reply subject or queue name is not valid."""


class BadHeaderError(NatsError, ValueError):
    """A header name or value is not valid."""


class MaxPayloadError(NatsError, ValueError):
    """Payload plus headers exceed the server's ``max_payload``."""


class BadSubscriptionError(NatsError):
    """The subscription has ended (unsubscribed, auto-unsubscribed or drained)."""


class SlowConsumerError(NatsError):
    """A subscription's pending limits were hit; messages are being dropped."""

    def __init__(self, sub: Subscription | None = None, message: str | None = None) -> None:
        self.sub: Subscription | None = sub
        if message is None:
            if sub is not None:
                message = (
                    f"slow consumer on subscription {sub.sid} ({sub.subject!r}): pending limits "
                    "reached, messages dropped; process faster or raise set_pending_limits()"
                )
            else:
                message = "slow consumer: pending limits reached, messages dropped"
        super().__init__(message)

    @property
    def sid(self) -> int | None:
        return None if self.sub is None else self.sub.sid

    @property
    def subject(self) -> str | None:
        return None if self.sub is None else self.sub.subject


class OutboundBufferFullError(NatsError):
    """The reconnect buffer is full; the publish was not kept."""


class StaleConnectionError(NatsError):
    """The server stopped answering PINGs (or said ``Stale Connection``)."""


class ProtocolError(NatsError):
    """The server sent something that is not valid NATS protocol."""


class PermissionsError(NatsError):
    """``-ERR 'Permissions Violation ...'``: the server refused a publish or subscription.

    ``operation`` is ``"publish"`` or ``"subscribe"`` (or ``""`` if unknown), ``subject``
    the subject named by the server, ``queue`` the queue group if any.
    """

    def __init__(
        self, message: str, operation: str = "", subject: str = "", queue: str | None = None
    ) -> None:
        self.operation = operation
        self.subject = subject
        self.queue = queue
        super().__init__(message)


class SecureConnectionError(NatsError):
    """TLS was required by one side and refused or failed on the other."""


class NkeysNotSupportedError(NatsError):
    """An NKEY is configured but the server sent no nonce to sign: it has no NKEY or JWT
    users (nats.go ``ErrNkeysNotSupported``)."""

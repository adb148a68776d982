"""natsync: a synchronous, thread-based NATS client for Python.

::

    import natsync
    with natsync.connect("nats://127.0.0.1:4222", token="mytoken") as nc:
        sub = nc.subscribe("greet")
        nc.publish("greet", b"hello")
        print(sub.next_msg(timeout=1).data)
"""

from __future__ import annotations

from . import errors
from ._version import __version__
from .client import NATS, Client, Stats, connect
from .errors import (
    AuthorizationError,
    BadHeaderError,
    BadSubjectError,
    BadSubscriptionError,
    ConnectionClosedError,
    ConnectionDrainingError,
    MaxPayloadError,
    NatsError,
    NkeysNotSupportedError,
    NoRespondersError,
    NoServersError,
    NotConnectedError,
    OutboundBufferFullError,
    PermissionsError,
    ProtocolError,
    SecureConnectionError,
    SlowConsumerError,
    StaleConnectionError,
    TimeoutError,
)
from .headers import Headers
from .msg import Msg
from .subscription import Subscription

__all__ = [
    "connect",
    "Client",
    "NATS",
    "Msg",
    "Headers",
    "Subscription",
    "Stats",
    "errors",
    "__version__",
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

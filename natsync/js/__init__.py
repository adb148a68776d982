"""JetStream for natsync: streams, consumers, acknowledged publishing, pull, push and
ordered consumers (Key/Value and Object Store build on it).

Get a context from a connected client::

    js = nc.jetstream()
    js.add_stream(name="ORDERS", subjects=["orders.>"])
    ack = js.publish("orders.new", b"...", msg_id="order-1")
    psub = js.pull_subscribe("orders.>", durable="workers")
    for msg in psub.fetch(batch=10, timeout=2.0):
        msg.ack()

Names follow nats-py (``nats.js``); see the README's JetStream section.
"""

from __future__ import annotations

from . import api, errors
from ._proto import MsgMetadata, SequencePair
from .batch import BatchClosedError, BatchPublisher
from .context import JetStream, JetStreamManager
from .errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    ConsumerNotFoundError,
    ConsumerSequenceMismatchError,
    DigestMismatchError,
    InvalidBucketNameError,
    InvalidKeyError,
    JetStreamError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    MsgAlreadyAckdError,
    NoHeartbeatError,
    NoKeysError,
    NoStreamResponseError,
    NotFoundError,
    NotJSMessageError,
    ObjectDeletedError,
    ObjectNotFoundError,
    ServerError,
    ServiceUnavailableError,
    StreamNotFoundError,
)
from .ordered import OrderedConsumer
from .pull import PullSubscription
from .push import PushSubscription

__all__ = [
    "api",
    "errors",
    "JetStream",
    "JetStreamManager",
    "JetStreamContext",
    "PullSubscription",
    "PushSubscription",
    "OrderedConsumer",
    "MsgMetadata",
    "SequencePair",
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
    "BatchPublisher",
    "BatchClosedError",
]

JetStreamContext = JetStream
"""nats-py's name of the context type."""

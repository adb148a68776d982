"""JetStream API types: configs, infos and enums, with nats-py's field names.

Pure: no sockets, threads or clocks.  Every dataclass converts from the server's JSON
(:meth:`Base.from_json`, alias ``from_response``) and to it (:meth:`Base.to_json`, alias
``as_dict``):

* durations are seconds (float) in Python and nanoseconds (int) on the wire;
* timestamps are aware :class:`datetime.datetime` objects (RFC 3339 on the wire,
  nanosecond fractions cut to microseconds);
* fields the server sends that this version does not know are ignored, and an enum
  value it does not know is kept as the plain string;
* ``None`` fields are left out of what is sent.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

from ..headers import Headers
from ._proto import check_name

__all__ = [
    "Header",
    "StatusCode",
    "RetentionPolicy",
    "StorageType",
    "DiscardPolicy",
    "StoreCompression",
    "AckPolicy",
    "DeliverPolicy",
    "ReplayPolicy",
    "PriorityPolicy",
    "Base",
    "PubAck",
    "Placement",
    "ExternalStream",
    "SubjectTransform",
    "RePublish",
    "StreamSource",
    "StreamSourceInfo",
    "LostStreamData",
    "StreamState",
    "StreamConsumerLimits",
    "StreamConfig",
    "PeerInfo",
    "ClusterInfo",
    "StreamInfo",
    "ConsumerConfig",
    "SequenceInfo",
    "ConsumerInfo",
    "PriorityGroupState",
    "ConsumerPause",
    "AccountLimits",
    "Tier",
    "APIStats",
    "AccountInfo",
    "RawStreamMsg",
    "KeyValueConfig",
    "ObjectStoreConfig",
    "ObjectLink",
    "ObjectMetaOptions",
    "ObjectMeta",
    "ObjectInfo",
    "parse_time",
    "format_time",
    "validate_stream_config",
    "check_metadata",
    "format_ttl",
]


class Header(str, enum.Enum):
    """Header names JetStream uses."""

    MSG_ID = "Nats-Msg-Id"
    EXPECTED_STREAM = "Nats-Expected-Stream"
    EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
    EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
    EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
    EXPECTED_LAST_SUBJECT_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
    MSG_TTL = "Nats-TTL"
    MARKER_REASON = "Nats-Marker-Reason"
    BATCH_ID = "Nats-Batch-Id"
    BATCH_SEQ = "Nats-Batch-Sequence"
    BATCH_COMMIT = "Nats-Batch-Commit"
    ROLLUP = "Nats-Rollup"
    STREAM = "Nats-Stream"
    SEQUENCE = "Nats-Sequence"
    TIME_STAMP = "Nats-Time-Stamp"
    SUBJECT = "Nats-Subject"
    LAST_SEQUENCE = "Nats-Last-Sequence"
    LAST_CONSUMER = "Nats-Last-Consumer"
    LAST_STREAM = "Nats-Last-Stream"
    CONSUMER_STALLED = "Nats-Consumer-Stalled"
    PENDING_MESSAGES = "Nats-Pending-Messages"
    PENDING_BYTES = "Nats-Pending-Bytes"
    DEFAULT_PREFIX = "$JS.API"


class StatusCode(str, enum.Enum):
    """Status codes of JetStream status messages (in the ``NATS/1.0`` header line)."""

    SERVICE_UNAVAILABLE = "503"
    NO_MESSAGES = "404"
    REQUEST_TIMEOUT = "408"
    CONFLICT = "409"
    CONTROL_MESSAGE = "100"


class RetentionPolicy(str, enum.Enum):
    """How long a stream keeps messages."""

    LIMITS = "limits"
    INTEREST = "interest"
    WORK_QUEUE = "workqueue"


class StorageType(str, enum.Enum):
    """Where a stream keeps messages."""

    FILE = "file"
    MEMORY = "memory"


class DiscardPolicy(str, enum.Enum):
    """What a full stream discards."""

    OLD = "old"
    NEW = "new"


class StoreCompression(str, enum.Enum):
    """Compression of a file-storage stream."""

    NONE = "none"
    S2 = "s2"


class AckPolicy(str, enum.Enum):
    """How a consumer's messages are acknowledged."""

    NONE = "none"
    ALL = "all"
    EXPLICIT = "explicit"


class DeliverPolicy(str, enum.Enum):
    """Where a consumer starts in the stream."""

    ALL = "all"
    LAST = "last"
    NEW = "new"
    BY_START_SEQUENCE = "by_start_sequence"
    BY_START_TIME = "by_start_time"
    LAST_PER_SUBJECT = "last_per_subject"


class ReplayPolicy(str, enum.Enum):
    """How fast a consumer replays stored messages."""

    INSTANT = "instant"
    ORIGINAL = "original"


class PriorityPolicy(str, enum.Enum):
    """How a pull consumer with priority groups picks the pulls it serves (server
    2.11+): ``pinned_client`` serves one client (pinned by a pin id) until it stops
    pulling; ``overflow`` serves pulls whose ``min_pending``/``min_ack_pending``
    conditions hold; ``prioritized`` (2.12+) serves lower ``priority`` values first."""

    NONE = "none"
    PINNED_CLIENT = "pinned_client"
    OVERFLOW = "overflow"
    PRIORITIZED = "prioritized"


# ---------------------------------------------------------------------------- time


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def parse_time(text: str) -> datetime.datetime:
    """Parse an RFC 3339 timestamp as the server writes it (``Z`` or an offset,
    up to nanosecond fractions) into an aware datetime (microsecond precision).

    Raises:
        ValueError: if ``text`` is not such a timestamp.
    """
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    dot = s.find(".")
    if dot != -1:
        end = dot + 1
        while end < len(s) and s[end].isdigit():
            end += 1
        frac = s[dot + 1 : end][:6].ljust(6, "0")
        s = s[:dot] + "." + frac + s[end:]
    dt = datetime.datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt


def format_time(dt: datetime.datetime) -> str:
    """Format a datetime as RFC 3339 in UTC (a naive datetime is taken as UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------- base

_B = TypeVar("_B", bound="Base")
_NANOS = 1_000_000_000


def _to_nanos(value: float) -> int:
    return int(round(value * _NANOS))


class _Kind(enum.Enum):
    PLAIN = 0
    NANOS = 1
    ENUM = 2
    BASE = 3
    LIST_BASE = 4
    DICT_BASE = 5
    TIME = 6
    LIST_NANOS = 7


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _kind_of(tp: Any, nanos: bool) -> tuple[_Kind, Any]:
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if nanos:
        return (_Kind.LIST_NANOS, None) if origin is list else (_Kind.NANOS, None)
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return _Kind.ENUM, tp
        if issubclass(tp, Base):
            return _Kind.BASE, tp
        if issubclass(tp, datetime.datetime):
            return _Kind.TIME, None
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], Base):
        return _Kind.LIST_BASE, args[0]
    if origin is dict and len(args) == 2 and isinstance(args[1], type) and issubclass(args[1], Base):
        return _Kind.DICT_BASE, args[1]
    return _Kind.PLAIN, None


class Base:
    """Common JSON conversion of the API dataclasses.

    Subclasses name their duration fields (seconds in Python, nanoseconds on the
    wire) in ``_nanos`` and may rename wire fields in ``_wire``.
    """

    _nanos: ClassVar[frozenset[str]] = frozenset()
    _wire: ClassVar[dict[str, str]] = {}
    _spec_cache: ClassVar[dict[type, list[tuple[str, str, _Kind, Any]]]] = {}

    @classmethod
    def _spec(cls) -> list[tuple[str, str, _Kind, Any]]:
        spec = Base._spec_cache.get(cls)
        if spec is None:
            hints = typing.get_type_hints(cls)
            spec = []
            for f in dataclasses.fields(cls):  # type: ignore[arg-type]
                kind, sub = _kind_of(hints[f.name], f.name in cls._nanos)
                spec.append((f.name, cls._wire.get(f.name, f.name), kind, sub))
            Base._spec_cache[cls] = spec
        return spec

    @classmethod
    def from_json(cls: type[_B], data: dict[str, Any] | str | bytes) -> _B:
        """Build from the server's JSON (a dict, or its text); unknown fields are
        ignored, missing ones take their defaults."""
        if isinstance(data, (str, bytes, bytearray)):
            data = json.loads(data)
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_json needs a JSON object, not {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        for name, wire, kind, sub in cls._spec():
            if wire not in data:
                continue
            v = data[wire]
            if v is not None:
                v = _decode(kind, sub, v)
            kwargs[name] = v
        try:
            return cls(**kwargs)
        except TypeError:
            # a required field missing from an answer: fill what we can with None
            for f in dataclasses.fields(cls):  # type: ignore[arg-type]
                if (
                    f.name not in kwargs
                    and f.default is dataclasses.MISSING
                    and (f.default_factory is dataclasses.MISSING)
                ):
                    kwargs[f.name] = None
            return cls(**kwargs)

    from_response = from_json

    def to_json(self) -> dict[str, Any]:
        """The JSON object for the server (a dict); ``None`` fields are left out."""
        out: dict[str, Any] = {}
        for name, wire, kind, _ in self._spec():
            v = getattr(self, name)
            if v is None:
                continue
            out[wire] = _encode(kind, v)
        return out

    def as_dict(self) -> dict[str, Any]:
        """nats-py's name of :meth:`to_json`."""
        return self.to_json()

    def evolve(self: _B, **changes: Any) -> _B:
        """A copy with some fields changed (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _decode(kind: _Kind, sub: Any, v: Any) -> Any:
    if kind is _Kind.PLAIN:
        return v
    if kind is _Kind.NANOS:
        return v / _NANOS if isinstance(v, (int, float)) else v
    if kind is _Kind.LIST_NANOS:
        return [x / _NANOS for x in v] if isinstance(v, list) else v
    if kind is _Kind.ENUM:
        try:
            return sub(v)
        except ValueError:
            return v  # a value this version does not know
    if kind is _Kind.BASE:
        return sub.from_json(v) if isinstance(v, dict) else v
    if kind is _Kind.LIST_BASE:
        return [sub.from_json(x) for x in v] if isinstance(v, list) else v
    if kind is _Kind.DICT_BASE:
        return {k: sub.from_json(x) for k, x in v.items()} if isinstance(v, dict) else v
    if kind is _Kind.TIME:
        if isinstance(v, str):
            try:
                return parse_time(v)
            except ValueError:
                return v
        return v
    raise AssertionError(kind)  # pragma: no cover


def _encode(kind: _Kind, v: Any) -> Any:
    if kind is _Kind.NANOS:
        return _to_nanos(v)
    if kind is _Kind.LIST_NANOS:
        return [_to_nanos(x) for x in v]
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, Base):
        return v.to_json()
    if isinstance(v, datetime.datetime):
        return format_time(v)
    if isinstance(v, list):
        return [_encode(_Kind.PLAIN, x) for x in v]
    if isinstance(v, dict):
        return {k: _encode(_Kind.PLAIN, x) for k, x in v.items()}
    return v


# --------------------------------------------------------------------------- types


@dataclass
class PubAck(Base):
    """The server's acknowledgement of a JetStream publish.

    ``batch_id`` and ``batch_size`` are set on the acknowledgement of an atomic
    batch's commit (:mod:`natsync.js.batch`): the batch's id and how many messages
    it stored; ``seq`` is then the sequence of the batch's last message.
    """

    _wire = {"batch_id": "batch", "batch_size": "count"}

    stream: str
    seq: int
    domain: str | None = None
    duplicate: bool | None = None
    batch_id: str | None = None
    batch_size: int | None = None


@dataclass
class Placement(Base):
    """Where a stream's replicas are placed."""

    cluster: str | None = None
    tags: list[str] | None = None


@dataclass
class ExternalStream(Base):
    """A stream in another domain or account, for sources and mirrors."""

    api: str
    deliver: str | None = None


@dataclass
class SubjectTransform(Base):
    """A subject mapping applied to messages entering a stream."""

    src: str
    dest: str


@dataclass
class RePublish(Base):
    """Republish stored messages to another subject."""

    src: str | None = None
    dest: str | None = None
    headers_only: bool | None = None


@dataclass
class StreamSource(Base):
    """A source (or mirror) of a stream."""

    name: str
    opt_start_seq: int | None = None
    opt_start_time: datetime.datetime | None = None
    filter_subject: str | None = None
    external: ExternalStream | None = None
    subject_transforms: list[SubjectTransform] | None = None


@dataclass
class StreamSourceInfo(Base):
    """The state of a stream's source or mirror."""

    name: str
    lag: int | None = None
    active: int | None = None
    error: dict[str, Any] | None = None


@dataclass
class LostStreamData(Base):
    """Messages a stream lost (damaged storage)."""

    msgs: list[int] | None = None
    bytes: int | None = None


@dataclass
class StreamState(Base):
    """How many messages and bytes a stream holds, and its sequence range."""

    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    consumer_count: int
    deleted: list[int] | None = None
    num_deleted: int | None = None
    lost: LostStreamData | None = None
    subjects: dict[str, int] | None = None
    num_subjects: int | None = None
    first_ts: datetime.datetime | None = None
    last_ts: datetime.datetime | None = None


@dataclass
class StreamConsumerLimits(Base):
    """Defaults and limits for a stream's consumers."""

    _nanos = frozenset({"inactive_threshold"})

    inactive_threshold: float | None = None
    max_ack_pending: int | None = None


@dataclass
class StreamConfig(Base):
    """A stream's configuration (``add_stream``, ``update_stream``)."""

    _nanos = frozenset({"max_age", "duplicate_window", "subject_delete_marker_ttl"})

    name: str | None = None
    description: str | None = None
    subjects: list[str] | None = None
    retention: RetentionPolicy | None = None
    max_consumers: int | None = None
    max_msgs: int | None = None
    max_bytes: int | None = None
    discard: DiscardPolicy | None = DiscardPolicy.OLD
    discard_new_per_subject: bool | None = None
    max_age: float | None = None
    max_msgs_per_subject: int | None = -1
    max_msg_size: int | None = -1
    storage: StorageType | None = None
    num_replicas: int | None = None
    no_ack: bool | None = None
    template_owner: str | None = None
    duplicate_window: float | None = None
    placement: Placement | None = None
    mirror: StreamSource | None = None
    sources: list[StreamSource] | None = None
    sealed: bool | None = None
    deny_delete: bool | None = None
    deny_purge: bool | None = None
    allow_rollup_hdrs: bool | None = None
    first_seq: int | None = None
    republish: RePublish | None = None
    subject_transform: SubjectTransform | None = None
    allow_direct: bool | None = None
    mirror_direct: bool | None = None
    compression: StoreCompression | None = None
    allow_msg_ttl: bool | None = None
    metadata: dict[str, str] | None = None
    consumer_limits: StreamConsumerLimits | None = None
    subject_delete_marker_ttl: float | None = None
    allow_atomic: bool | None = None

    def validate(self) -> StreamConfig:
        """Check the values the server would refuse, before anything is sent; return
        ``self``.

        Raises:
            ValueError: naming the field: a missing or bad ``name`` (empty, or holding
                ``.``, ``*``, ``>``, whitespace or a path separator), a
                ``compression`` other than ``"none"``/``"s2"``, ``metadata`` that is
                not a str -> str dict, a negative duration, or a
                ``subject_delete_marker_ttl`` under 1 s.
        """
        validate_stream_config(self)
        return self


@dataclass
class PeerInfo(Base):
    """A replica of a clustered stream or consumer."""

    name: str | None = None
    current: bool | None = None
    offline: bool | None = None
    active: int | None = None
    lag: int | None = None


@dataclass
class ClusterInfo(Base):
    """Where a clustered stream or consumer lives, and who leads it."""

    leader: str | None = None
    name: str | None = None
    replicas: list[PeerInfo] | None = None
    raft_group: str | None = None
    leader_since: datetime.datetime | None = None


@dataclass
class StreamInfo(Base):
    """A stream's configuration and state."""

    config: StreamConfig
    state: StreamState
    mirror: StreamSourceInfo | None = None
    sources: list[StreamSourceInfo] | None = None
    cluster: ClusterInfo | None = None
    did_create: bool | None = None
    created: datetime.datetime | None = None
    ts: datetime.datetime | None = None


@dataclass
class ConsumerConfig(Base):
    """A consumer's configuration (``add_consumer``, ``pull_subscribe``, ``subscribe``)."""

    _nanos = frozenset({"ack_wait", "idle_heartbeat", "inactive_threshold", "backoff", "priority_timeout"})

    name: str | None = None
    durable_name: str | None = None
    description: str | None = None
    deliver_policy: DeliverPolicy | None = DeliverPolicy.ALL
    opt_start_seq: int | None = None
    opt_start_time: datetime.datetime | None = None
    ack_policy: AckPolicy | None = AckPolicy.EXPLICIT
    ack_wait: float | None = None
    max_deliver: int | None = None
    backoff: list[float] | None = None
    filter_subject: str | None = None
    filter_subjects: list[str] | None = None
    replay_policy: ReplayPolicy | None = ReplayPolicy.INSTANT
    rate_limit_bps: int | None = None
    sample_freq: str | None = None
    max_waiting: int | None = None
    max_ack_pending: int | None = None
    flow_control: bool | None = None
    idle_heartbeat: float | None = None
    headers_only: bool | None = None
    deliver_subject: str | None = None
    deliver_group: str | None = None
    inactive_threshold: float | None = None
    num_replicas: int | None = None
    mem_storage: bool | None = None
    metadata: dict[str, str] | None = None
    max_batch: int | None = None
    max_bytes: int | None = None
    # server 2.11+: paused until this time (see JetStream.pause_consumer)
    pause_until: datetime.datetime | None = None
    # server 2.11+ pull consumers: priority groups (pulls name one with ``group=``),
    # the policy, and how long (seconds) a pinned client stays pinned without pulling
    priority_groups: list[str] | None = None
    priority_policy: PriorityPolicy | None = None
    priority_timeout: float | None = None


@dataclass
class SequenceInfo(Base):
    """A consumer's position: consumer and stream sequence."""

    consumer_seq: int
    stream_seq: int
    last_active: datetime.datetime | None = None


@dataclass
class ConsumerInfo(Base):
    """A consumer's configuration and state."""

    name: str
    stream_name: str
    config: ConsumerConfig
    created: datetime.datetime | None = None
    delivered: SequenceInfo | None = None
    ack_floor: SequenceInfo | None = None
    num_ack_pending: int | None = None
    num_redelivered: int | None = None
    num_waiting: int | None = None
    num_pending: int | None = None
    cluster: ClusterInfo | None = None
    push_bound: bool | None = None
    ts: datetime.datetime | None = None
    paused: bool | None = None
    pause_remaining: float | None = None
    priority_groups: list[PriorityGroupState] | None = None

    _nanos = frozenset({"pause_remaining"})


@dataclass
class PriorityGroupState(Base):
    """A priority group's state in :class:`ConsumerInfo` (server 2.11+)."""

    group: str
    pinned_client_id: str | None = None
    pinned_ts: datetime.datetime | None = None


@dataclass
class ConsumerPause(Base):
    """The answer to :meth:`JetStream.pause_consumer` / ``resume_consumer``."""

    _nanos = frozenset({"pause_remaining"})

    paused: bool
    pause_until: datetime.datetime | None = None
    pause_remaining: float | None = None


@dataclass
class AccountLimits(Base):
    """The JetStream limits of an account (-1: unlimited)."""

    max_memory: int
    max_storage: int
    max_streams: int
    max_consumers: int
    max_ack_pending: int | None = None
    memory_max_stream_bytes: int | None = None
    storage_max_stream_bytes: int | None = None
    max_bytes_required: bool | None = None


@dataclass
class Tier(Base):
    """Usage and limits of one account tier."""

    memory: int
    storage: int
    streams: int
    consumers: int
    limits: AccountLimits


@dataclass
class APIStats(Base):
    """How many JetStream API calls an account made, and how many failed."""

    total: int
    errors: int
    level: int | None = None


@dataclass
class AccountInfo(Base):
    """An account's JetStream usage and limits (``account_info``)."""

    memory: int
    storage: int
    streams: int
    consumers: int
    limits: AccountLimits
    api: APIStats
    domain: str | None = None
    tiers: dict[str, Tier] | None = None


@dataclass
class RawStreamMsg(Base):
    """A message read straight from a stream (``get_msg``, ``get_last_msg``).

    ``data`` is the payload, ``headers`` the decoded headers (or None), ``hdrs`` the
    raw header block as the server returned it (base64-decoded).
    """

    subject: str | None = None
    seq: int | None = None
    data: bytes | None = None
    hdrs: bytes | None = None
    headers: Headers | None = None
    stream: str | None = None
    time: datetime.datetime | None = None

    @property
    def sequence(self) -> int | None:
        """The stream sequence (nats-py's other name of ``seq``)."""
        return self.seq

    @classmethod
    def from_json(cls, data: dict[str, Any] | str | bytes) -> RawStreamMsg:
        """Build from a ``STREAM.MSG.GET`` answer's ``message`` object (base64 data and
        headers)."""
        if isinstance(data, (str, bytes, bytearray)):
            data = json.loads(data)
        assert isinstance(data, dict)
        from ..headers import decode_headers

        raw = data.get("data")
        hdrs = data.get("hdrs")
        payload = base64.b64decode(raw) if raw else b""
        hblock = base64.b64decode(hdrs) if hdrs else None
        ts = data.get("time")
        return cls(
            subject=data.get("subject"),
            seq=data.get("seq"),
            data=payload,
            hdrs=hblock,
            headers=decode_headers(hblock) if hblock else None,
            time=parse_time(ts) if isinstance(ts, str) else None,
        )

    from_response = from_json


@dataclass
class KeyValueConfig(Base):
    """A Key/Value bucket's configuration (``create_key_value``).

    ``limit_marker_ttl`` (seconds, server 2.11+; nats.go's ``LimitMarkerTTL``) makes
    the server leave a marker for that long when a key ages out by ``ttl`` or is
    removed by a per-key TTL (it also enables per-key TTLs: ``kv.create(key, value,
    ttl=...)``).  ``metadata`` is a str -> str dict kept on the bucket's stream;
    ``compression=True`` stores it S2-compressed.
    """

    _nanos = frozenset({"ttl", "limit_marker_ttl"})

    bucket: str
    description: str | None = None
    max_value_size: int | None = None
    history: int = 1
    ttl: float | None = None
    max_bytes: int | None = None
    storage: StorageType | None = None
    replicas: int = 1
    placement: Placement | None = None
    republish: RePublish | None = None
    direct: bool | None = None
    limit_marker_ttl: float | None = None
    metadata: dict[str, str] | None = None
    compression: bool | None = None


@dataclass
class ObjectStoreConfig(Base):
    """An Object Store bucket's configuration (``create_object_store``); ``metadata``
    is a str -> str dict kept on the bucket's stream, ``compression=True`` stores it
    S2-compressed."""

    _nanos = frozenset({"ttl"})

    bucket: str | None = None
    description: str | None = None
    ttl: float | None = None
    max_bytes: int | None = None
    storage: StorageType | None = None
    replicas: int = 1
    placement: Placement | None = None
    metadata: dict[str, str] | None = None
    compression: bool | None = None


@dataclass
class ObjectLink(Base):
    """A link from one object (or bucket) to another."""

    bucket: str
    name: str | None = None


@dataclass
class ObjectMetaOptions(Base):
    """Options of an object: a link, the chunk size."""

    link: ObjectLink | None = None
    max_chunk_size: int | None = None


@dataclass
class ObjectMeta(Base):
    """What describes an object: name, description, headers, options, and user
    ``metadata`` (a str -> str dict, as nats.go's ``ObjectMeta.Metadata``)."""

    name: str | None = None
    description: str | None = None
    headers: dict[str, Any] | None = None
    options: ObjectMetaOptions | None = None
    metadata: dict[str, str] | None = None


@dataclass
class ObjectInfo(Base):
    """An object's meta record: name, size, chunks, digest, modification time."""

    name: str
    bucket: str
    nuid: str
    size: int | None = None
    mtime: str | None = None
    chunks: int | None = None
    digest: str | None = None
    deleted: bool | None = False
    description: str | None = None
    headers: dict[str, Any] | None = None
    options: ObjectMetaOptions | None = None
    metadata: dict[str, str] | None = field(default=None)

    @property
    def is_link(self) -> bool:
        """Whether the object is a link to another."""
        return self.options is not None and self.options.link is not None

    @property
    def meta(self) -> ObjectMeta:
        """The object's :class:`ObjectMeta`."""
        return ObjectMeta(
            name=self.name,
            description=self.description,
            headers=self.headers,
            options=self.options,
            metadata=self.metadata,
        )



# ---------------------------------------------------------------------- checks

_COMPRESSIONS = frozenset({"none", "s2"})


def check_metadata(field_name: str, metadata: object) -> None:
    """Raise ValueError unless ``metadata`` is None or a dict of str -> str.

    ``field_name`` names the field in the message.
    """
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise ValueError(f"{field_name} must be a dict of str -> str, not {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError(
                f"{field_name} must be a dict of str -> str: {k!r}: {v!r} is not (convert the value "
                "with str() or json.dumps())"
            )


def validate_stream_config(cfg: StreamConfig) -> None:
    """The checks of :meth:`StreamConfig.validate` (pure).

    Raises:
        ValueError: naming the field that is wrong.
    """
    name = cfg.name
    if name is None or (isinstance(name, str) and not name):
        raise ValueError("StreamConfig.name is missing: give the stream a name, e.g. name=\"ORDERS\"")
    if not isinstance(name, str):
        raise ValueError(f"StreamConfig.name must be a str, not {type(name).__name__}")
    check_name("stream", name)
    comp = cfg.compression
    if comp is not None:
        value = comp.value if isinstance(comp, StoreCompression) else comp
        if not isinstance(value, str) or value not in _COMPRESSIONS:
            raise ValueError(
                f"StreamConfig.compression must be StoreCompression.NONE or .S2 (\"none\" or \"s2\"), "
                f"not {comp!r}"
            )
    check_metadata("StreamConfig.metadata", cfg.metadata)
    for f in ("max_age", "duplicate_window", "subject_delete_marker_ttl"):
        v = getattr(cfg, f)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise ValueError(f"StreamConfig.{f} must be a number of seconds >= 0, not {v!r}")
    marker = cfg.subject_delete_marker_ttl
    if marker and marker < 1:
        raise ValueError(
            f"StreamConfig.subject_delete_marker_ttl must be at least 1 second (or 0/None: no "
            f"markers), not {marker!r}"
        )


_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h)")
_GO_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_go_duration(text: str) -> float | None:
    """Seconds of a Go duration string such as ``"1m30s"`` or ``"1.5s"``; None if it
    is not one."""
    if not text:
        return None
    pos = 0
    total = 0.0
    part = _GO_DURATION_PART
    while pos < len(text):
        m = part.match(text, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _GO_DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total


def format_ttl(ttl: float | str, what: str = "ttl") -> str:
    """The ``Nats-TTL`` header value of a per-message TTL.

    ``ttl`` is seconds (an int or float, at least 1: the server's minimum), a Go
    duration string as nats.go writes it (``"1s"``, ``"1m30s"``, ``"500ms"`` is
    refused as under 1 s), or ``"never"`` (the message never expires, even when the
    stream has a ``max_age``).  Whole seconds are sent as nats.go sends them
    (``"90s"``), fractions as a decimal number of seconds (``"1.5s"``).

    Raises:
        ValueError: naming ``what``, for anything else.
    """
    if isinstance(ttl, str):
        if ttl == "never":
            return ttl
        secs = _parse_go_duration(ttl)
        if secs is None:
            if ttl.isdigit():
                secs = float(ttl)
            else:
                raise ValueError(
                    f"{what} {ttl!r} is not a duration: give seconds (e.g. 60), a Go duration string "
                    "(\"1m\", \"90s\") or \"never\""
                )
        if secs < 1:
            raise ValueError(f"{what} must be at least 1 second, not {ttl!r}")
        return ttl
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
        raise ValueError(
            f"{what} must be seconds (a number >= 1), a Go duration string or \"never\", not {ttl!r}"
        )
    if ttl < 1:
        raise ValueError(f"{what} must be at least 1 second (the server's minimum), not {ttl!r}")
    if float(ttl).is_integer():
        return f"{int(ttl)}s"
    return f"{ttl:.9f}".rstrip("0").rstrip(".") + "s"

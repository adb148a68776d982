"""JetStream Key/Value buckets.

A bucket ``B`` is the stream ``KV_B`` holding subjects ``$KV.B.>``; a key ``k`` is the
subject ``$KV.B.k`` and its revisions are the stream sequences of the messages on it.
A delete is a message with header ``KV-Operation: DEL``; a purge is ``KV-Operation:
PURGE`` with ``Nats-Rollup: sub`` (the server then drops the older revisions).  Server
2.11+ also places its own markers (``Nats-Marker-Reason``) when a key ages out.  This is
the layout nats.go and nats-py use, so a bucket made by one client is used by the
others unchanged.

The pure helpers (validation, stream configuration, entry decoding) do no I/O and are
unit-tested on their own; :class:`KeyValue` and :class:`KeyWatcher` do the requests.
"""

from __future__ import annotations

import datetime as _dt
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import errors as _core_errors
from ..headers import Headers
from . import api
from .errors import (
    APIError,
    BucketNotFoundError,
    InvalidBucketNameError,
    InvalidKeyError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
    StreamNotFoundError,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..msg import Msg

    pass

__all__ = [
    "KeyValue",
    "KeyWatcher",
    "Entry",
    "BucketStatus",
    "KV_OP",
    "KV_DEL",
    "KV_PURGE",
    "MAX_HISTORY",
    "create_key_value",
    "key_value",
    "delete_key_value",
    "validate_bucket",
    "validate_key",
    "validate_key_filter",
    "kv_stream_config",
    "entry_operation",
    "key_value_store_names",
    "key_value_stores",
]

KV_OP = "KV-Operation"
KV_DEL = "DEL"
KV_PURGE = "PURGE"
MARKER_REASON = "Nats-Marker-Reason"
ROLLUP = "Nats-Rollup"
ROLLUP_SUBJECT = "sub"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
MSG_TTL = "Nats-TTL"
MAX_HISTORY = 64
# Stream metadata keys the server itself sets (API level, version): not the user's.
_SERVER_METADATA_PREFIX = "_nats."
# A revision mismatch: 10071 on R1 streams, 10164 on replicated ones.
_WRONG_LAST_SEQ_CODES = frozenset({10071, 10164})
_DEFAULT_DUPLICATE_WINDOW = 120.0

_BUCKET_RE = re.compile(r"[A-Za-z0-9_-]+")
_KEY_RE = re.compile(r"[-/_=.a-zA-Z0-9]+")
_FILTER_RE = re.compile(r"[-/_=.a-zA-Z0-9*]*>?")


# --------------------------------------------------------------------------- pure


def validate_bucket(bucket: object) -> str:
    """Return *bucket* if it is a valid bucket name, else raise.

    A bucket name is one or more of ``A-Z a-z 0-9 _ -``.

    Raises:
        InvalidBucketNameError: (a :class:`ValueError`) for anything else.
    """
    if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket):
        raise InvalidBucketNameError(f"invalid bucket name {bucket!r}: use one or more of A-Z a-z 0-9 _ -")
    return bucket


def _dots_ok(key: str) -> bool:
    return bool(key) and key[0] != "." and key[-1] != "." and ".." not in key


def validate_key(key: object) -> str:
    """Return *key* if it is a valid key, else raise :class:`InvalidKeyError`.

    A key is one or more of ``A-Z a-z 0-9 - / _ = .``, neither starting nor ending
    with ``.`` and without an empty token (``..``).
    """
    if not isinstance(key, str) or not _dots_ok(key) or not _KEY_RE.fullmatch(key):
        raise InvalidKeyError(
            f"invalid key {key!r}: use A-Z a-z 0-9 - / _ = and '.' between tokens "
            "(no leading, trailing or double '.')"
        )
    return key


def _key(key: object, validate_keys: bool) -> str:
    """*key* checked as :func:`validate_key` does, or (``validate_keys=False``, as
    nats-py's option) only as a subject's tail: a non-empty str without whitespace or
    wildcards, so that the key still names one subject."""
    if validate_keys:
        return validate_key(key)
    if (
        not isinstance(key, str)
        or not _dots_ok(key)
        or any(c.isspace() or c in "*>" for c in key)
        or not key.isprintable()
    ):
        raise InvalidKeyError(
            f"invalid key {key!r}: even with validate_keys=False a key must be a subject's tail "
            "(no whitespace, '*', '>' or empty token)"
        )
    return key


def validate_key_filter(pattern: object) -> str:
    """Return *pattern* if it is a valid key pattern (``*`` tokens, trailing ``>``).

    Raises:
        InvalidKeyError: for an empty or malformed pattern.
    """
    if not isinstance(pattern, str) or not _dots_ok(pattern) or not _FILTER_RE.fullmatch(pattern):
        raise InvalidKeyError(f"invalid key pattern {pattern!r}: a key, or tokens with '*' and a final '>'")
    for token in pattern.split("."):
        if ("*" in token or ">" in token) and len(token) != 1:
            raise InvalidKeyError(f"invalid key pattern {pattern!r}: '*' and '>' must be whole tokens")
    return pattern


def stream_name(bucket: str) -> str:
    """The stream that holds *bucket*: ``KV_<bucket>``."""
    return "KV_" + bucket


def subject_prefix(bucket: str) -> str:
    """The subject prefix of the keys of *bucket*: ``$KV.<bucket>.``."""
    return f"$KV.{bucket}."


def kv_stream_config(config: api.KeyValueConfig) -> api.StreamConfig:
    """The stream configuration of a bucket, laid out as nats.go lays it out.

    ``limit_marker_ttl`` becomes the stream's ``subject_delete_marker_ttl`` and turns
    on ``allow_msg_ttl`` (per-key TTLs), as nats.go does; ``compression=True`` is
    S2 compression.

    Raises:
        InvalidBucketNameError: for a bad bucket name.
        ValueError: for a history outside 1..64, a negative size or TTL, a
            ``limit_marker_ttl`` under 1 s, or metadata that is not str -> str.
    """
    bucket = validate_bucket(config.bucket)
    history = 1 if config.history is None else config.history
    if not isinstance(history, int) or not 1 <= history <= MAX_HISTORY:
        raise ValueError(f"history must be an int between 1 and {MAX_HISTORY}, not {history!r}")
    ttl = config.ttl or 0.0
    if ttl < 0:
        raise ValueError(f"ttl must be >= 0 seconds, not {ttl!r}")
    for name in ("max_bytes", "max_value_size"):
        value = getattr(config, name)
        if value is not None and value < -1:
            raise ValueError(f"{name} must be >= -1, not {value!r}")
    marker = config.limit_marker_ttl or 0.0
    if isinstance(marker, bool) or not isinstance(marker, (int, float)) or marker < 0 or 0 < marker < 1:
        raise ValueError(
            "limit_marker_ttl must be at least 1 second (or None: no markers), not "
            f"{config.limit_marker_ttl!r}"
        )
    api.check_metadata("KeyValueConfig.metadata", config.metadata)
    duplicates = _DEFAULT_DUPLICATE_WINDOW
    if 0 < ttl < duplicates:
        duplicates = ttl
    return api.StreamConfig(
        name=stream_name(bucket),
        description=config.description,
        subjects=[f"$KV.{bucket}.>"],
        max_msgs_per_subject=history,
        max_bytes=config.max_bytes if config.max_bytes else -1,
        max_age=ttl,
        max_msg_size=config.max_value_size if config.max_value_size else -1,
        storage=config.storage if config.storage is not None else api.StorageType.FILE,
        num_replicas=config.replicas or 1,
        allow_rollup_hdrs=True,
        deny_delete=True,
        duplicate_window=duplicates,
        max_msgs=-1,
        max_consumers=-1,
        allow_direct=True if config.direct is None else config.direct,
        discard=api.DiscardPolicy.NEW,
        placement=config.placement,
        republish=config.republish,
        allow_msg_ttl=True if marker else None,
        subject_delete_marker_ttl=marker or None,
        metadata=dict(config.metadata) if config.metadata else None,
        compression=api.StoreCompression.S2 if config.compression else None,
    )


def _user_metadata(metadata: dict[str, str] | None) -> dict[str, str] | None:
    """Stream metadata without the keys the server adds (``_nats.*``)."""
    if not metadata:
        return None
    mine = {k: v for k, v in metadata.items() if not k.startswith(_SERVER_METADATA_PREFIX)}
    return mine or None


def entry_operation(headers: Headers | dict[str, str] | None) -> str | None:
    """The operation a stored KV message stands for: ``None`` (a value), ``"DEL"``
    or ``"PURGE"``.

    ``KV-Operation`` is set by clients; server 2.11+ markers carry
    ``Nats-Marker-Reason`` instead (``MaxAge`` and ``Purge`` read as a purge,
    ``Remove`` as a delete, as nats.go reads them).  Any other marker reason is a
    removal too (``"PURGE"``): a marker never carries a value.
    """
    if not headers:
        return None
    op = headers.get(KV_OP)
    if op is not None:
        if op == KV_DEL or op == KV_PURGE:
            return op
        return None
    reason = headers.get(MARKER_REASON)
    if reason is None:
        return None
    if reason == "Remove":
        return KV_DEL
    return KV_PURGE


@dataclass
class Entry:
    """One revision of a key.

    Attributes:
        bucket: the bucket name.
        key: the key.
        value: the value (``b""`` for a delete or purge marker, and in a watcher
            started with ``meta_only=True``).
        revision: the stream sequence of this revision.
        delta: in a watcher, how many more messages were pending after this one when
            it was sent (0 for the newest); ``None`` from :meth:`KeyValue.get`.
        created: when the revision was stored (an aware UTC ``datetime``), or None.
        operation: ``None`` for a value, ``"DEL"`` or ``"PURGE"`` for a marker.
    """

    bucket: str
    key: str
    value: bytes
    revision: int
    delta: int | None = None
    created: _dt.datetime | None = None
    operation: str | None = None


@dataclass(frozen=True)
class BucketStatus:
    """The status of a bucket (from its stream's info).

    Attributes:
        bucket: the bucket name.
        stream_info: the full :class:`~natsync.js.api.StreamInfo`.
    """

    bucket: str
    stream_info: api.StreamInfo

    @property
    def values(self) -> int:
        """How many messages (values and markers, all revisions) the bucket holds."""
        return int(self.stream_info.state.messages)

    @property
    def history(self) -> int:
        """How many revisions are kept per key."""
        return int(self.stream_info.config.max_msgs_per_subject or 1)

    @property
    def ttl(self) -> float | None:
        """How long a value is kept, in seconds (None: for ever)."""
        age = self.stream_info.config.max_age
        return age if age else None

    @property
    def bytes(self) -> int:
        """The bytes the bucket's stream holds."""
        return int(self.stream_info.state.bytes)

    @property
    def max_bytes(self) -> int:
        """The size limit of the bucket (-1: none)."""
        value = self.stream_info.config.max_bytes
        return -1 if value is None else int(value)

    @property
    def storage(self) -> api.StorageType | None:
        """File or memory storage."""
        return self.stream_info.config.storage

    @property
    def replicas(self) -> int:
        """How many replicas the bucket's stream has."""
        return int(self.stream_info.config.num_replicas or 1)

    @property
    def metadata(self) -> dict[str, str] | None:
        """The bucket's metadata (str -> str; the server's own ``_nats.*`` keys left
        out), or None."""
        return _user_metadata(self.stream_info.config.metadata)

    @property
    def limit_marker_ttl(self) -> float | None:
        """How long the markers of keys removed by a TTL are kept, in seconds (None:
        no markers)."""
        value = self.stream_info.config.subject_delete_marker_ttl
        return value if value else None

    @property
    def is_compressed(self) -> bool:
        """Whether the bucket's data is compressed on disk."""
        comp: object = self.stream_info.config.compression
        return comp is not None and comp not in (api.StoreCompression.NONE, "none")

    def config(self) -> api.KeyValueConfig:
        """The bucket's configuration as a :class:`~natsync.js.api.KeyValueConfig`
        (nats.go's ``KeyValueStatus.Config()``): what ``create_key_value`` would be
        given to make this bucket."""
        cfg = self.stream_info.config
        return api.KeyValueConfig(
            bucket=self.bucket,
            description=cfg.description,
            max_value_size=cfg.max_msg_size,
            history=self.history,
            ttl=self.ttl,
            max_bytes=cfg.max_bytes,
            storage=cfg.storage,
            replicas=self.replicas,
            placement=cfg.placement,
            republish=cfg.republish,
            direct=cfg.allow_direct,
            limit_marker_ttl=self.limit_marker_ttl,
            metadata=self.metadata,
            compression=self.is_compressed,
        )


# --------------------------------------------------------------------------- errors


def _wrong_last(err: APIError) -> bool:
    return getattr(err, "err_code", None) in _WRONG_LAST_SEQ_CODES


def _as_value(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"a value must be bytes or str, not {type(value).__name__}")


# --------------------------------------------------------------------------- bucket


class KeyValue:
    """A bound Key/Value bucket; get one from ``js.create_key_value`` or
    ``js.key_value``.

    Every method blocks until the server answered or *timeout* (default: the
    JetStream context's) passed (:class:`natsync.TimeoutError`), and may be called
    from any thread.
    """

    def __init__(self, js: Any, bucket: str, info: api.StreamInfo) -> None:
        self._js = js
        self._name = bucket
        self._stream = info.config.name or stream_name(bucket)
        self._pre = subject_prefix(bucket)
        self._direct = bool(info.config.allow_direct)

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self._name

    def __repr__(self) -> str:
        return f"<KeyValue bucket={self._name!r}>"

    # ------------------------------------------------------------------ reads

    def get(
        self,
        key: str,
        revision: int | None = None,
        validate_keys: bool = True,
        *,
        timeout: float | None = None,
    ) -> Entry:
        """Return the newest revision of *key*, or revision *revision* of it.

        Raises:
            InvalidKeyError: for a bad key (nothing is sent).
            KeyDeletedError: the key (or that revision) is a delete or purge marker;
                ``err.entry`` holds the marker.
            KeyNotFoundError: the key never existed, or *revision* is not one of its.
            BucketNotFoundError: the bucket was deleted.
        """
        entry = self._get(_key(key, validate_keys), revision, timeout)
        if entry.operation is not None:
            what = "deleted" if entry.operation == KV_DEL else "purged"
            raise KeyDeletedError(
                description=f"key {key!r} was {what} (revision {entry.revision}) in bucket {self._name!r}",
                entry=entry,
                op=entry.operation,
            )
        return entry

    def _get(self, key: str, revision: int | None, timeout: float | None) -> Entry:
        subject = self._pre + key
        if revision is not None and (not isinstance(revision, int) or revision < 1):
            raise ValueError(f"revision must be an int >= 1, not {revision!r}")
        try:
            if revision is None:
                msg = self._js.get_msg(self._stream, subject=subject, direct=self._direct, timeout=timeout)
            else:
                msg = self._js.get_msg(self._stream, seq=revision, direct=self._direct, timeout=timeout)
        except StreamNotFoundError as err:
            raise BucketNotFoundError(description=f"bucket {self._name!r} not found") from err
        except NotFoundError as err:
            raise KeyNotFoundError(description=f"key {key!r} not found") from err
        except ServiceUnavailableError as err:
            if err.operation != "DIRECT.GET":
                raise
            # nobody answers direct gets for a stream that is gone
            raise BucketNotFoundError(
                description=f"bucket {self._name!r} not found (or JetStream is unavailable)"
            ) from err
        if msg.subject != subject:
            raise KeyNotFoundError(description=f"revision {revision} is not one of key {key!r}")
        return Entry(
            bucket=self._name,
            key=key,
            value=msg.data or b"",
            revision=msg.seq,
            delta=None,
            created=msg.time,
            operation=entry_operation(msg.headers),
        )

    # ------------------------------------------------------------------ writes

    def _publish(
        self, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float | None
    ) -> Any:
        try:
            return self._js.publish(subject, data, headers=headers, timeout=timeout)
        except NoStreamResponseError as err:
            raise BucketNotFoundError(
                description=f"bucket {self._name!r} not found: no stream stored the write"
            ) from err

    def put(
        self, key: str, value: bytes | str, validate_keys: bool = True, *, timeout: float | None = None
    ) -> int:
        """Store *value* (bytes, or str sent as UTF-8) under *key*; return its revision.

        Raises:
            InvalidKeyError: for a bad key (nothing is sent).
            APIError: e.g. the value exceeds the bucket's ``max_value_size``.
        """
        subject = self._pre + _key(key, validate_keys)
        ack = self._publish(subject, _as_value(value), None, timeout)
        return int(ack.seq)

    def create(
        self,
        key: str,
        value: bytes | str,
        validate_keys: bool = True,
        msg_ttl: float | str | None = None,
        *,
        timeout: float | None = None,
        ttl: float | str | None = None,
    ) -> int:
        """Store *value* under *key* only if the key has no value; return the revision.

        A deleted or purged key counts as having no value.  *ttl* (``msg_ttl`` is
        nats-py's name; nats.go's ``KeyTTL``) makes this revision expire after that
        many seconds (at least 1, or a Go duration string such as ``"1m"``); the
        bucket needs ``limit_marker_ttl`` (server 2.11+), which also leaves a marker
        when the key expires.

        Raises:
            KeyWrongLastSequenceError: the key has a value.
            InvalidKeyError: for a bad key (nothing is sent).
            ValueError: a bad *ttl*, or both *ttl* and *msg_ttl* (nothing is sent).
            APIError: the bucket does not allow per-key TTLs (no ``limit_marker_ttl``).
        """
        _key(key, validate_keys)
        data = _as_value(value)
        if ttl is not None and msg_ttl is not None:
            raise ValueError("give ttl or msg_ttl (nats-py's name of the same thing), not both")
        ttl_value = None
        if ttl is not None or msg_ttl is not None:
            given = ttl if ttl is not None else msg_ttl
            assert given is not None
            ttl_value = api.format_ttl(given, "ttl")
        try:
            return self._update(key, data, 0, timeout, ttl_value)
        except KeyWrongLastSequenceError as err:
            # The last message may be a delete marker: then the key may be created
            # again, conditionally on that marker still being the last one.
            try:
                entry = self._get(key, None, timeout)
            except KeyNotFoundError:
                raise err from None
            if entry.operation is None:
                raise
            return self._update(key, data, entry.revision, timeout, ttl_value)

    def update(
        self,
        key: str,
        value: bytes | str,
        last: int | None = None,
        validate_keys: bool = True,
        *,
        timeout: float | None = None,
    ) -> int:
        """Store *value* under *key* only if the key's newest revision is *last*
        (``0`` or None: only if the key has no message at all, as nats-py).

        Returns the new revision.

        Raises:
            KeyWrongLastSequenceError: another revision was stored meanwhile.
            InvalidKeyError: for a bad key (nothing is sent).
        """
        _key(key, validate_keys)
        if last is None:
            last = 0
        if not isinstance(last, int) or isinstance(last, bool) or last < 0:
            raise ValueError(f"last must be a revision (an int >= 0), not {last!r}")
        return self._update(key, _as_value(value), last, timeout)

    def _update(
        self, key: str, data: bytes, last: int, timeout: float | None, ttl: str | None = None
    ) -> int:
        headers = {EXPECTED_LAST_SUBJECT_SEQ: str(last)}
        if ttl is not None:
            headers[MSG_TTL] = ttl
        try:
            ack = self._publish(self._pre + key, data, headers, timeout)
        except APIError as err:
            if _wrong_last(err):
                raise KeyWrongLastSequenceError(
                    code=err.code, err_code=err.err_code, description=err.description
                ) from err
            raise
        return int(ack.seq)

    def delete(
        self, key: str, last: int | None = None, validate_keys: bool = True, *, timeout: float | None = None
    ) -> bool:
        """Place a delete marker on *key* (its history is kept); return True.

        With *last*, only if the key's newest revision is *last*.

        Raises:
            KeyWrongLastSequenceError: *last* was given and is not the newest revision.
            InvalidKeyError: for a bad key (nothing is sent).
        """
        return self._marker(_key(key, validate_keys), KV_DEL, last, timeout)

    def purge(
        self,
        key: str,
        last: int | None = None,
        *,
        timeout: float | None = None,
        ttl: float | str | None = None,
        msg_ttl: float | str | None = None,
    ) -> bool:
        """Place a purge marker on *key* and drop all its older revisions; return True.

        *ttl* (``msg_ttl`` is nats-py's name; nats.go's ``PurgeTTL``) makes the marker
        itself expire after that many seconds (the bucket needs ``limit_marker_ttl``).
        nats-py's second positional parameter is ``msg_ttl``; natsync's is *last*
        (give the TTL by keyword).

        Raises:
            KeyWrongLastSequenceError: *last* was given and is not the newest revision.
            InvalidKeyError: for a bad key (nothing is sent).
        """
        if ttl is not None and msg_ttl is not None:
            raise ValueError("give ttl or msg_ttl (nats-py's name of the same thing), not both")
        given = ttl if ttl is not None else msg_ttl
        return self._marker(
            validate_key(key), KV_PURGE, last, timeout, None if given is None else api.format_ttl(given)
        )

    def _marker(
        self, key: str, op: str, last: int | None, timeout: float | None, ttl: str | None = None
    ) -> bool:
        if last is not None and (not isinstance(last, int) or isinstance(last, bool) or last < 0):
            raise ValueError(f"last must be a revision (an int >= 0), not {last!r}")
        headers = {KV_OP: op}
        if op == KV_PURGE:
            headers[ROLLUP] = ROLLUP_SUBJECT
        if last:
            headers[EXPECTED_LAST_SUBJECT_SEQ] = str(last)
        if ttl is not None:
            headers[MSG_TTL] = ttl
        try:
            self._publish(self._pre + key, b"", headers, timeout)
        except APIError as err:
            if _wrong_last(err):
                raise KeyWrongLastSequenceError(
                    code=err.code, err_code=err.err_code, description=err.description
                ) from err
            raise
        return True

    def purge_deletes(self, olderthan: float = 1800, *, timeout: float | None = None) -> bool:
        """Remove delete and purge markers and the history behind them; return True.

        A marker younger than *olderthan* seconds is kept (its older revisions are
        removed); an older one is removed with everything before it.  ``olderthan <=
        0`` removes every marker.
        """
        markers: list[Entry] = []
        with self.watch(">", timeout=timeout) as watcher:
            for entry in watcher:
                if entry is None:
                    break
                if entry.operation is not None:
                    markers.append(entry)
        now = _dt.datetime.now(_dt.timezone.utc)
        for entry in markers:
            keep = 0
            if olderthan > 0 and entry.created is not None:
                if (now - entry.created).total_seconds() < olderthan:
                    keep = 1
            self._js.purge_stream(self._stream, subject=self._pre + entry.key, keep=keep, timeout=timeout)
        return True

    # ------------------------------------------------------------------ listing

    def keys(self, filters: str | Sequence[str] | None = None, *, timeout: float | None = None) -> list[str]:
        """Return the keys that have a value (not deleted), in stream order.

        *filters* are key patterns (``*`` and ``>`` wildcards) applied on the server.

        Raises:
            NoKeysError: no key matched.
            InvalidKeyError: for a bad pattern (nothing is sent).
        """
        patterns = _patterns(filters)
        seen: dict[str, None] = {}
        with self.watch(patterns, ignore_deletes=True, meta_only=True, timeout=timeout) as w:
            for entry in w:
                if entry is None:
                    break
                seen[entry.key] = None
        if not seen:
            raise NoKeysError(
                f"no keys in bucket {self._name!r}" + (f" matching {patterns}" if filters else "")
            )
        return list(seen)

    def history(self, key: str, *, timeout: float | None = None) -> list[Entry]:
        """Return every kept revision of *key* (markers included), oldest first.

        Raises:
            NoKeysError: the key has no revision (as nats-py).
            InvalidKeyError: for a bad key (nothing is sent).
        """
        validate_key(key)
        entries: list[Entry] = []
        with self.watch(key, include_history=True, timeout=timeout) as watcher:
            for entry in watcher:
                if entry is None:
                    break
                entries.append(entry)
        if not entries:
            raise NoKeysError(f"key {key!r} has no history in bucket {self._name!r}")
        return entries

    def status(self, *, timeout: float | None = None) -> BucketStatus:
        """Return the bucket's :class:`BucketStatus`.

        Raises:
            BucketNotFoundError: the bucket was deleted.
        """
        try:
            info = self._js.stream_info(self._stream, timeout=timeout)
        except StreamNotFoundError as err:
            raise BucketNotFoundError(description=f"bucket {self._name!r} not found") from err
        return BucketStatus(bucket=self._name, stream_info=info)

    # ------------------------------------------------------------------ watching

    def watch(
        self,
        keys: str | Sequence[str] = ">",
        *,
        include_history: bool = False,
        ignore_deletes: bool = False,
        meta_only: bool = False,
        updates_only: bool = False,
        resume_from_revision: int | None = None,
        timeout: float | None = None,
        headers_only: bool = False,
    ) -> KeyWatcher:
        """Watch the keys matching *keys* (a pattern or a list of patterns).

        The watcher first yields the current values (every kept revision with
        *include_history*), then ``None`` once they have all been delivered, then
        every change as it happens.  *ignore_deletes* leaves out delete and purge
        markers; *meta_only* delivers entries without their values; *updates_only*
        (nats.go's ``UpdatesOnly``) skips the current values and the ``None``.  Use it as an
        iterator or call :meth:`KeyWatcher.updates`; :meth:`KeyWatcher.stop` (or a
        ``with`` block) ends it.  It is built on an ordered consumer: it survives
        reconnects and server restarts without missing or repeating a change.
        *resume_from_revision* (nats.go's ``ResumeFromRevision``) starts at that
        revision (stream sequence) and delivers every revision from there on, as
        with *include_history*, then ``None``, then the changes.  *headers_only* is
        nats-py's other name of *meta_only*.

        Raises:
            InvalidKeyError: for a bad pattern (nothing is sent).
            ValueError: *include_history* with *updates_only* (as nats.go and nats-py),
                *resume_from_revision* with *updates_only*, or a revision below 1.
        """
        _check_watch_options(include_history, updates_only, resume_from_revision)
        return KeyWatcher(
            self,
            _patterns(keys),
            include_history=include_history,
            ignore_deletes=ignore_deletes,
            meta_only=meta_only or headers_only,
            updates_only=updates_only,
            resume_from_revision=resume_from_revision,
            timeout=timeout,
        )

    def watchall(self, **kwargs: Any) -> KeyWatcher:
        """Watch every key (``watch(">", ...)``)."""
        return self.watch(">", **kwargs)


def _check_watch_options(include_history: bool, updates_only: bool, resume_from_revision: int | None) -> None:
    if include_history and updates_only:
        raise ValueError(
            "include_history and updates_only cannot be used together: include_history replays "
            "every kept revision, updates_only skips them all"
        )
    if resume_from_revision is not None:
        if (
            isinstance(resume_from_revision, bool)
            or not isinstance(resume_from_revision, int)
            or resume_from_revision < 1
        ):
            raise ValueError(
                f"resume_from_revision must be a revision (an int >= 1), not {resume_from_revision!r}"
            )
        if updates_only:
            raise ValueError("resume_from_revision and updates_only cannot be used together")


def _patterns(keys: str | Sequence[str] | None) -> list[str]:
    if keys is None:
        return [">"]
    if isinstance(keys, str):
        return [validate_key_filter(keys)]
    out = [validate_key_filter(k) for k in keys]
    return out or [">"]


# --------------------------------------------------------------------------- buckets


def _config_from(config: Any, fields: dict[str, Any], cls: Any) -> Any:
    if config is None:
        return cls(**fields)
    if not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, not {type(config).__name__}")
    if fields:
        import dataclasses

        return dataclasses.replace(config, **fields)
    return config


def create_key_value(
    js: Any, config: api.KeyValueConfig | None = None, *, timeout: float | None = None, **fields: Any
) -> KeyValue:
    """Create bucket ``config.bucket`` (or the bucket of the keyword *fields*) and
    return it bound.  Creating a bucket that exists with the same settings returns it.

    Raises:
        InvalidBucketNameError: a bad name (nothing is sent).
        ValueError: a bad setting (e.g. ``history`` outside 1..64).
        BadRequestError: the bucket exists with other settings.
    """
    cfg = _config_from(config, fields, api.KeyValueConfig)
    scfg = kv_stream_config(cfg)
    if scfg.subject_delete_marker_ttl:
        _require_api_level(js, 1, "limit_marker_ttl", timeout)
    info = js.add_stream(scfg, timeout=timeout)
    return KeyValue(js, cfg.bucket, info)


def _require_api_level(js: Any, level: int, what: str, timeout: float | None) -> None:
    """Raise if the server's JetStream API level is below *level* (nats.go's
    ``ErrLimitMarkerTTLNotSupported`` check)."""
    info = js.account_info(timeout=timeout)
    have = info.api.level if info.api is not None else None
    if not have or have < level:
        raise ServiceUnavailableError(
            description=f"{what} needs JetStream API level {level} (nats-server 2.11+); the server has "
            f"level {have or 0}",
            operation="INFO",
        )


def key_value_store_names(js: Any, *, timeout: float | None = None) -> list[str]:
    """The names of every Key/Value bucket of the account (nats.go's
    ``KeyValueStoreNames``): streams named ``KV_*`` on ``$KV.*.>`` subjects."""
    names = js.stream_names(subject="$KV.*.>", timeout=timeout)
    return [n[3:] for n in names if n.startswith("KV_")]


def key_value_stores(js: Any, *, timeout: float | None = None) -> list[BucketStatus]:
    """The status of every Key/Value bucket of the account (nats.go's
    ``KeyValueStores``)."""
    infos = js.streams_info(subject="$KV.*.>", timeout=timeout)
    return [
        BucketStatus(bucket=i.config.name[3:], stream_info=i)
        for i in infos
        if i.config.name and i.config.name.startswith("KV_")
    ]


def key_value(js: Any, bucket: str, *, timeout: float | None = None) -> KeyValue:
    """Bind to the existing bucket *bucket*.

    Raises:
        InvalidBucketNameError: a bad name (nothing is sent).
        BucketNotFoundError: there is no such bucket.
    """
    validate_bucket(bucket)
    try:
        info = js.stream_info(stream_name(bucket), timeout=timeout)
    except StreamNotFoundError as err:
        raise BucketNotFoundError(
            code=err.code, err_code=err.err_code, description=f"bucket {bucket!r} not found"
        ) from err
    if not info.config.max_msgs_per_subject or info.config.max_msgs_per_subject < 1:
        raise BucketNotFoundError(description=f"stream KV_{bucket} is not a Key/Value bucket")
    return KeyValue(js, bucket, info)


def delete_key_value(js: Any, bucket: str, *, timeout: float | None = None) -> bool:
    """Delete bucket *bucket* and everything in it; return True.

    Raises:
        InvalidBucketNameError: a bad name (nothing is sent).
        BucketNotFoundError: there is no such bucket.
    """
    validate_bucket(bucket)
    try:
        return bool(js.delete_stream(stream_name(bucket), timeout=timeout))
    except StreamNotFoundError as err:
        raise BucketNotFoundError(
            code=err.code, err_code=err.err_code, description=f"bucket {bucket!r} not found"
        ) from err


# --------------------------------------------------------------------------- watchers

_SKIP = object()


class _MetaWatcher:
    """What the Key/Value and Object Store watchers share: an ordered consumer read on
    the caller's thread, and the ``None`` marker after the initial values.

    The marker is due when the consumer had nothing pending when it was created, or
    when a delivered message says nothing more is pending (``num_pending == 0``).
    """

    def __init__(
        self,
        js: Any,
        stream: str,
        subjects: list[str],
        *,
        deliver_policy: api.DeliverPolicy,
        headers_only: bool,
        marker: bool,
        timeout: float | None,
        opt_start_seq: int | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._init_done = not marker
        self._ready: list[Any] = []
        from .ordered import OrderedConsumer

        try:
            self._sub = OrderedConsumer(
                js,
                stream,
                subjects,
                deliver_policy=deliver_policy,
                opt_start_seq=opt_start_seq,
                headers_only=headers_only,
                timeout=timeout,
            )
        except StreamNotFoundError as err:
            raise BucketNotFoundError(description=f"no bucket behind stream {stream!r}") from err
        if not self._init_done and self._sub.initial_pending == 0:
            self._init_done = True
            self._ready.append(None)

    def _convert(self, msg: Msg, sseq: int, ts: int, pending: int) -> Any:  # pragma: no cover
        raise NotImplementedError

    def updates(self, timeout: float | None = 5.0) -> Any:
        """Return the next update: an entry, or ``None`` once after the initial values.

        Read a watcher from one thread at a time (:meth:`stop` may come from any).

        Raises:
            natsync.TimeoutError: nothing came within *timeout* seconds (None: wait
                for ever).
            StopIteration: the watcher was stopped.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._ready:
                return self._ready.pop(0)
            if self._stopped:
                raise StopIteration
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                msg = self._sub.next_msg(timeout=left)
            except _core_errors.TimeoutError:
                if self._stopped:
                    raise StopIteration from None
                raise
            except (_core_errors.BadSubscriptionError, _core_errors.ConnectionClosedError):
                if self._stopped:
                    raise StopIteration from None
                raise
            fields = _ack_fields(msg.reply)
            if fields is None:
                continue  # not a stream message (the ordered consumer filters those)
            pending = fields[2]
            item = self._convert(msg, fields[0], fields[1], pending)
            if item is not _SKIP:
                if self._init_done or pending:
                    return item
                self._ready.append(item)
            if not self._init_done and pending == 0:
                self._init_done = True
                self._ready.append(None)

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self.updates(timeout=None)
            except StopIteration:
                return

    def stop(self) -> None:
        """Stop watching: the ordered consumer and its resources end, a blocked
        iteration returns.  Safe to call more than once, from any thread."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self._sub.unsubscribe()
        except _core_errors.NatsError:
            pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ack_fields(reply: str | None) -> tuple[int, int, int] | None:
    """(stream sequence, timestamp ns, num_pending) of a JetStream ack subject (the
    9-token form or the 11+-token form with domain and account hash), or None."""
    if not reply:
        return None
    t = reply.split(".")
    n = len(t)
    try:
        if n == 9:
            return int(t[5]), int(t[7]), int(t[8])
        if n >= 11:
            return int(t[7]), int(t[9]), int(t[10])
    except ValueError:
        return None
    return None


_UTC = _dt.timezone.utc


def _datetime_ns(ns: int) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(ns // 1000 / 1_000_000, _UTC)


class KeyWatcher(_MetaWatcher):
    """A watch on keys of a bucket (see :meth:`KeyValue.watch`).

    Iterate it (entries, then ``None`` once the current values were delivered, then
    live changes; the iteration ends after :meth:`stop`), or call :meth:`updates`.
    Use it in a ``with`` block to stop it on exit.
    """

    def __init__(
        self,
        kv: KeyValue,
        patterns: list[str],
        *,
        include_history: bool,
        ignore_deletes: bool,
        meta_only: bool,
        updates_only: bool = False,
        resume_from_revision: int | None = None,
        timeout: float | None,
    ) -> None:
        self._bucket = kv._name
        self._pre = kv._pre
        self._prelen = len(kv._pre)
        self._ignore_deletes = ignore_deletes
        super().__init__(
            kv._js,
            kv._stream,
            [kv._pre + p for p in patterns],
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE
            if resume_from_revision is not None
            else api.DeliverPolicy.NEW
            if updates_only
            else api.DeliverPolicy.ALL
            if include_history
            else api.DeliverPolicy.LAST_PER_SUBJECT,
            opt_start_seq=resume_from_revision,
            headers_only=meta_only,
            marker=not updates_only,
            timeout=timeout,
        )

    def _convert(self, msg: Msg, sseq: int, ts: int, pending: int) -> Any:
        op = entry_operation(msg.headers) if msg._hdr is not None or msg._headers is not None else None
        if op is not None and self._ignore_deletes:
            return _SKIP
        return Entry(
            self._bucket,
            msg.subject[self._prelen :],
            msg.data,
            sseq,
            pending,
            _datetime_ns(ts),
            op,
        )

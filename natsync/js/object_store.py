"""JetStream Object Store buckets.

A bucket ``B`` is the stream ``OBJ_B`` with subjects ``$O.B.C.>`` (chunks) and
``$O.B.M.>`` (meta records).  An object is stored as:

- its chunks (128 KiB by default) on ``$O.B.C.<nuid>``, a fresh NUID per put, so a new
  version never mixes with the chunks of the old one;
- then one meta record, a JSON :class:`~natsync.js.api.ObjectInfo`, on
  ``$O.B.M.<base64url(name)>`` with ``Nats-Rollup: sub`` (only the newest record of a
  name is kept).  It holds the size, the chunk count and the SHA-256 digest of the
  data, written ``SHA-256=<base64url>``.

A put therefore becomes visible atomically when its meta record lands (readers see the
old version or the new one, never a mix); the old version's chunks are purged after.
A delete rewrites the meta record with ``deleted: true`` and purges the chunks.  This
is the layout of nats.go and nats-py: an object put by one client is read by the others.

The helpers at the top (subjects, digest, meta record JSON) are pure and unit-tested.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from .._nuid import next_nuid
from . import api
from .errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    DigestMismatchError,
    NotFoundError,
    ObjectDeletedError,
    ObjectNotFoundError,
    ServiceUnavailableError,
    StreamNotFoundError,
)
from .kv import _SKIP, _check_watch_options, _datetime_ns, _MetaWatcher, _user_metadata

__all__ = [
    "ObjectStore",
    "ObjectResult",
    "ObjectStoreStatus",
    "ObjectWatcher",
    "DEFAULT_CHUNK_SIZE",
    "create_object_store",
    "object_store",
    "delete_object_store",
    "stream_name",
    "chunk_subject",
    "meta_subject",
    "encode_name",
    "digest_value",
    "decode_digest",
    "info_to_json",
    "info_from_json",
    "obs_stream_config",
    "object_store_names",
    "object_stores",
]

DEFAULT_CHUNK_SIZE = 128 * 1024
DIGEST_PREFIX = "SHA-256="
ROLLUP = "Nats-Rollup"
ROLLUP_SUBJECT = "sub"
# What nats.go writes for the modification time of a record (the real time is the
# meta message's own timestamp, which readers use).
_ZERO_TIME = "0001-01-01T00:00:00Z"

DataInput = bytes | bytearray | memoryview | str | IO[bytes]


# --------------------------------------------------------------------------- pure


def validate_bucket(bucket: object) -> str:
    """Return *bucket* if it is a valid Object Store bucket name (``[A-Za-z0-9_-]+``).

    Raises:
        InvalidBucketNameError: (a :class:`ValueError`) otherwise.
    """
    from .kv import validate_bucket as _validate

    return _validate(bucket)


def stream_name(bucket: str) -> str:
    """The stream that holds *bucket*: ``OBJ_<bucket>``."""
    return "OBJ_" + bucket


def encode_name(name: str) -> str:
    """An object name as a subject token: URL-safe base64 of its UTF-8, padded (as
    nats.go's ``base64.URLEncoding`` and nats-py's ``urlsafe_b64encode``)."""
    return base64.urlsafe_b64encode(name.encode()).decode("ascii")


def chunk_subject(bucket: str, nuid: str) -> str:
    """The subject of the chunks of one object version: ``$O.<bucket>.C.<nuid>``."""
    return f"$O.{bucket}.C.{nuid}"


def meta_subject(bucket: str, name: str) -> str:
    """The subject of an object's meta record: ``$O.<bucket>.M.<base64url(name)>``."""
    return f"$O.{bucket}.M.{encode_name(name)}"


def digest_value(sha256_digest: bytes) -> str:
    """``SHA-256=`` followed by the URL-safe base64 (padded) of a SHA-256 digest."""
    return DIGEST_PREFIX + base64.urlsafe_b64encode(sha256_digest).decode("ascii")


def decode_digest(value: str) -> bytes:
    """The 32 digest bytes of a ``SHA-256=...`` string.

    The prefix is matched without regard to case; both base64 alphabets and missing
    padding are accepted (other clients have written each).

    Raises:
        ValueError: not a SHA-256 digest string.
    """
    if not isinstance(value, str) or "=" not in value:
        raise ValueError(f"not an object digest: {value!r}")
    algo, _, encoded = value.partition("=")
    if algo.upper() != "SHA-256":
        raise ValueError(f"unsupported object digest algorithm {algo!r} (SHA-256 expected)")
    encoded = encoded.strip().replace("+", "-").replace("/", "_")
    encoded += "=" * (-len(encoded) % 4)
    try:
        raw = base64.urlsafe_b64decode(encoded)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"bad base64 in object digest {value!r}") from err
    if len(raw) != 32:
        raise ValueError(f"object digest {value!r} is not 32 bytes long")
    return raw


def _headers_to_wire(headers: Any) -> dict[str, list[str]] | None:
    """Headers as nats.go's ``Header`` marshals them: ``{name: [values]}``."""
    if not headers:
        return None
    out: dict[str, list[str]] = {}
    items = headers.multi_items() if hasattr(headers, "multi_items") else headers.items()
    for name, value in items:
        values = [value] if isinstance(value, str) else [str(v) for v in value]
        out.setdefault(str(name), []).extend(values)
    return out


def _headers_from_wire(raw: Any) -> dict[str, list[str]] | None:
    if not isinstance(raw, dict) or not raw:
        return None
    out: dict[str, list[str]] = {}
    for name, value in raw.items():
        if isinstance(value, list):
            out[str(name)] = [str(v) for v in value]
        elif value is not None:
            out[str(name)] = [str(value)]
    return out


def info_to_json(info: api.ObjectInfo) -> bytes:
    """The meta record of *info*, laid out as nats.go marshals ``ObjectInfo``.

    ``name``, ``bucket``, ``nuid``, ``size``, ``mtime`` and ``chunks`` are always
    present; ``description``, ``headers``, ``metadata``, ``options``, ``digest`` and
    ``deleted`` only when set.  ``mtime`` is written as the zero time, as nats.go
    does (readers take the meta message's timestamp).
    """
    rec: dict[str, Any] = {"name": info.name}
    if info.description:
        rec["description"] = info.description
    hdrs = _headers_to_wire(info.headers)
    if hdrs:
        rec["headers"] = hdrs
    if info.metadata:
        rec["metadata"] = dict(info.metadata)
    opts = info.options
    if opts is not None and (opts.link is not None or opts.max_chunk_size):
        o: dict[str, Any] = {}
        if opts.link is not None:
            link: dict[str, Any] = {"bucket": opts.link.bucket}
            if opts.link.name:
                link["name"] = opts.link.name
            o["link"] = link
        if opts.max_chunk_size:
            o["max_chunk_size"] = int(opts.max_chunk_size)
        rec["options"] = o
    rec["bucket"] = info.bucket
    rec["nuid"] = info.nuid
    rec["size"] = int(info.size or 0)
    rec["mtime"] = _ZERO_TIME
    rec["chunks"] = int(info.chunks or 0)
    if info.digest:
        rec["digest"] = info.digest
    if info.deleted:
        rec["deleted"] = True
    return json.dumps(rec, separators=(",", ":")).encode()


def info_from_json(data: bytes | str) -> api.ObjectInfo:
    """Parse a meta record written by any client (unknown fields are ignored).

    Raises:
        ValueError: the record is not a JSON object with a ``name``.
    """
    try:
        rec = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"object meta record is not JSON: {err}") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
        raise ValueError("object meta record has no name")
    options = None
    raw_opts = rec.get("options")
    if isinstance(raw_opts, dict):
        link = None
        raw_link = raw_opts.get("link")
        if isinstance(raw_link, dict) and isinstance(raw_link.get("bucket"), str):
            link = api.ObjectLink(bucket=raw_link["bucket"], name=raw_link.get("name") or None)
        chunk = raw_opts.get("max_chunk_size")
        options = api.ObjectMetaOptions(
            link=link, max_chunk_size=int(chunk) if isinstance(chunk, int) else None
        )
    metadata = rec.get("metadata")
    return api.ObjectInfo(
        name=rec["name"],
        bucket=str(rec.get("bucket") or ""),
        nuid=str(rec.get("nuid") or ""),
        size=int(rec.get("size") or 0),
        mtime=rec.get("mtime") if isinstance(rec.get("mtime"), str) else None,
        chunks=int(rec.get("chunks") or 0),
        digest=rec.get("digest") or None,
        deleted=bool(rec.get("deleted", False)),
        description=rec.get("description") or None,
        headers=_headers_from_wire(rec.get("headers")),
        options=options,
        metadata=dict(metadata) if isinstance(metadata, dict) and metadata else None,
    )


def obs_stream_config(config: api.ObjectStoreConfig) -> api.StreamConfig:
    """The stream configuration of an Object Store bucket, as nats.go lays it out.

    Raises:
        InvalidBucketNameError: for a bad bucket name.
        ValueError: for a negative TTL or size.
    """
    bucket = validate_bucket(config.bucket)
    ttl = config.ttl or 0.0
    if ttl < 0:
        raise ValueError(f"ttl must be >= 0 seconds, not {ttl!r}")
    if config.max_bytes is not None and config.max_bytes < -1:
        raise ValueError(f"max_bytes must be >= -1, not {config.max_bytes!r}")
    api.check_metadata("ObjectStoreConfig.metadata", config.metadata)
    return api.StreamConfig(
        name=stream_name(bucket),
        description=config.description,
        subjects=[f"$O.{bucket}.C.>", f"$O.{bucket}.M.>"],
        max_age=ttl,
        max_bytes=config.max_bytes if config.max_bytes else -1,
        storage=config.storage if config.storage is not None else api.StorageType.FILE,
        num_replicas=config.replicas or 1,
        placement=config.placement,
        discard=api.DiscardPolicy.NEW,
        allow_rollup_hdrs=True,
        allow_direct=True,
        metadata=dict(config.metadata) if config.metadata else None,
        compression=api.StoreCompression.S2 if config.compression else None,
    )


def _num_pending(reply: str | None) -> int | None:
    """The ``num_pending`` token of a JetStream ack subject (old 9-token form or the
    v2 form with domain and account hash), or None."""
    if not reply or not reply.startswith("$JS.ACK."):
        return None
    tokens = reply.split(".")
    try:
        if len(tokens) == 9:
            return int(tokens[8])
        if len(tokens) >= 11:
            return int(tokens[10])
    except ValueError:
        return None
    return None


# --------------------------------------------------------------------------- I/O


def _api(js: Any, op: str, body: dict[str, Any] | None, timeout: float | None) -> dict[str, Any]:
    """One JetStream API request (``<prefix>.<op>``) on *js*'s connection."""
    operation = ".".join(op.split(".")[:2])
    return js._api(op, body, operation, timeout)  # type: ignore[no-any-return]


class _ChunkSender:
    """Publishes chunks with at most *window* acks outstanding (one reply inbox)."""

    def __init__(self, js: Any, window: int, timeout: float) -> None:
        self._nc = js._nc
        self._timeout = timeout
        self._window = window
        self._inbox = self._nc.new_inbox()
        self._sub = self._nc.subscribe(self._inbox + ".*", pending_msgs_limit=None, pending_bytes_limit=None)
        self._outstanding = 0
        self._n = 0

    def send(self, subject: str, data: bytes) -> None:
        """Publish one chunk, first waiting for acks while *window* are outstanding."""
        while self._outstanding >= self._window:
            self._take()
        self._n += 1
        self._nc.publish(subject, data, reply=f"{self._inbox}.{self._n}")
        self._outstanding += 1

    def _take(self) -> None:
        msg = self._sub.next_msg(timeout=self._timeout)
        self._outstanding -= 1
        _check_ack(msg)

    def finish(self) -> None:
        """Wait for every outstanding ack (raises the first error among them)."""
        while self._outstanding:
            self._take()

    def settle(self) -> None:
        """After a failure: wait (bounded) until every chunk in flight was answered,
        whatever the answer, so that a purge that follows also removes them."""
        while self._outstanding:
            try:
                self._take()
            except TimeoutError:
                return
            except Exception:  # noqa: BLE001, S112 - answers after a failure do not matter
                continue

    def close(self) -> None:
        """Drop the reply subscription."""
        try:
            self._sub.unsubscribe()
        except Exception:  # noqa: BLE001 - the connection may be gone; nothing to undo
            pass


def _check_ack(msg: Any) -> None:
    hdrs = msg.headers
    if hdrs is not None and hdrs.status == 503:
        raise BucketNotFoundError(
            code=503, description="no stream answered the chunk publish: the bucket was deleted"
        )
    if not msg.data:
        raise APIError(description="empty publish acknowledgement")
    try:
        ack = json.loads(msg.data)
    except ValueError:
        raise APIError(description="malformed publish acknowledgement") from None
    err = ack.get("error") if isinstance(ack, dict) else None
    if err:
        from .errors import api_error

        raise api_error(err.get("code"), err.get("err_code"), err.get("description"), "PUB")


def _normalise_data(data: object) -> tuple[memoryview | None, Any]:
    """(a memoryview of in-memory data, or None and a binary reader)."""
    if isinstance(data, str):
        return memoryview(data.encode()), None
    if isinstance(data, (bytes, bytearray, memoryview)):
        return memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data), None
    if isinstance(data, io.TextIOBase):
        raise TypeError("put() needs a binary file object: open the file in 'rb' mode")
    if hasattr(data, "readinto") or hasattr(data, "read"):
        return None, data
    raise TypeError(f"put() takes bytes, str or a binary file object, not {type(data).__name__}")


@dataclass
class ObjectResult:
    """What :meth:`ObjectStore.get` returns.

    Attributes:
        info: the object's :class:`~natsync.js.api.ObjectInfo`.
        data: its bytes (``b""`` when they were written to ``writeinto``).
    """

    info: api.ObjectInfo
    data: bytes = b""


@dataclass(frozen=True)
class ObjectStoreStatus:
    """The status of an Object Store bucket (from its stream's info)."""

    bucket: str
    stream_info: api.StreamInfo

    @property
    def description(self) -> str | None:
        """The bucket's description."""
        return self.stream_info.config.description

    @property
    def ttl(self) -> float | None:
        """How long objects are kept, in seconds (None: for ever)."""
        age = self.stream_info.config.max_age
        return age if age else None

    @property
    def storage(self) -> api.StorageType | None:
        """File or memory storage."""
        return self.stream_info.config.storage

    @property
    def replicas(self) -> int:
        """How many replicas the bucket's stream has."""
        return int(self.stream_info.config.num_replicas or 1)

    @property
    def sealed(self) -> bool:
        """Whether the bucket is sealed (read-only)."""
        return bool(self.stream_info.config.sealed)

    @property
    def size(self) -> int:
        """The bytes the bucket's stream holds (data and meta records)."""
        return int(self.stream_info.state.bytes)

    @property
    def metadata(self) -> dict[str, str] | None:
        """The bucket's metadata (str -> str; the server's own ``_nats.*`` keys left
        out), or None."""
        return _user_metadata(self.stream_info.config.metadata)

    @property
    def is_compressed(self) -> bool:
        """Whether the bucket's data is compressed on disk."""
        comp: object = self.stream_info.config.compression
        return comp is not None and comp not in (api.StoreCompression.NONE, "none")

    def config(self) -> api.ObjectStoreConfig:
        """The bucket's configuration as an :class:`~natsync.js.api.ObjectStoreConfig`
        (nats.go's ``ObjectStoreStatus.Config()``)."""
        cfg = self.stream_info.config
        return api.ObjectStoreConfig(
            bucket=self.bucket,
            description=cfg.description,
            ttl=self.ttl,
            max_bytes=cfg.max_bytes,
            storage=cfg.storage,
            replicas=self.replicas,
            placement=cfg.placement,
            metadata=self.metadata,
            compression=self.is_compressed,
        )


class ObjectStore:
    """A bound Object Store bucket; get one from ``js.create_object_store`` or
    ``js.object_store``.

    Every method blocks until done or until *timeout* (default: the JetStream
    context's, per request) passed, and may be called from any thread.
    """

    def __init__(self, js: Any, bucket: str, stream: str | None = None, direct: bool = True) -> None:
        self._js = js
        self._name = bucket
        self._stream = stream or stream_name(bucket)
        # direct gets for meta records when the stream allows them (nats.go creates
        # buckets with allow_direct; older ones may lack it)
        self._direct = direct

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self._name

    def __repr__(self) -> str:
        return f"<ObjectStore bucket={self._name!r}>"

    def _timeout(self, timeout: float | None) -> float:
        return float(timeout if timeout is not None else self._js._timeout)

    # ------------------------------------------------------------------ info

    def get_info(
        self, name: str, *, show_deleted: bool = False, timeout: float | None = None
    ) -> api.ObjectInfo:
        """Return the :class:`~natsync.js.api.ObjectInfo` of object *name*.

        Raises:
            ObjectNotFoundError: no such object (or it was deleted, unless
                *show_deleted*).
            BucketNotFoundError: the bucket was deleted.
        """
        _check_name(name)
        try:
            msg = self._js.get_msg(
                self._stream, subject=meta_subject(self._name, name), direct=self._direct, timeout=timeout
            )
        except StreamNotFoundError as err:
            raise BucketNotFoundError(description=f"bucket {self._name!r} not found") from err
        except NotFoundError as err:
            raise ObjectNotFoundError(description=f"object {name!r} not found") from err
        except ServiceUnavailableError as err:
            if err.operation != "DIRECT.GET":
                raise
            raise BucketNotFoundError(
                description=f"bucket {self._name!r} not found (or JetStream is unavailable)"
            ) from err
        try:
            info = info_from_json(msg.data or b"")
        except ValueError as err:
            raise APIError(description=f"bad meta record for object {name!r}: {err}") from None
        if info.deleted and not show_deleted:
            raise ObjectNotFoundError(description=f"object {name!r} was deleted")
        if msg.time is not None:
            info.mtime = api.format_time(msg.time)
        return info

    # ------------------------------------------------------------------ put

    def put(
        self,
        name: str,
        data: DataInput,
        meta: api.ObjectMeta | None = None,
        *,
        chunk_size: int | None = None,
        timeout: float | None = None,
    ) -> api.ObjectInfo:
        """Store *data* (bytes, str as UTF-8, or a binary file object) as object *name*.

        The data is read and sent in chunks (*chunk_size*, else the meta's
        ``max_chunk_size``, else 128 KiB) with a bounded number of acks outstanding,
        so a file never sits in memory whole.  The object appears (or replaces the
        old version) atomically when its meta record is stored at the end; on a
        failure the chunks sent so far are purged and the old version stays.

        Raises:
            ValueError: an empty name, or *meta* holds a link.
            TypeError: *data* is neither bytes, str nor a binary file object.
            BucketNotFoundError: the bucket was deleted.
            APIError: e.g. the bucket is sealed or full.
        """
        if meta is None:
            meta = api.ObjectMeta(name=name)
        elif name:
            meta = api.ObjectMeta(
                name=name,
                description=meta.description,
                headers=meta.headers,
                options=meta.options,
                metadata=meta.metadata,
            )
        _check_name(meta.name)
        assert meta.name is not None
        if meta.options is not None and meta.options.link is not None:
            raise ValueError("put() cannot store a link: use add_link() or add_bucket_link()")
        size = chunk_size or (meta.options.max_chunk_size if meta.options else None) or DEFAULT_CHUNK_SIZE
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"chunk_size must be a positive int, not {size!r}")
        view, reader = _normalise_data(data)
        t = self._timeout(timeout)

        try:
            einfo: api.ObjectInfo | None = self.get_info(meta.name, show_deleted=True, timeout=t)
        except ObjectNotFoundError:
            einfo = None

        nuid = next_nuid()
        chunk_subj = chunk_subject(self._name, nuid)
        h = hashlib.sha256()
        chunks = 0
        total = 0
        window = max(2, (4 * 1024 * 1024) // size)
        sender = _ChunkSender(self._js, window, t)
        try:
            if view is not None:
                for start in range(0, len(view), size):
                    piece = bytes(view[start : start + size])
                    h.update(piece)
                    sender.send(chunk_subj, piece)
                    chunks += 1
                    total += len(piece)
            else:
                buf = bytearray(size)
                while True:
                    n = _read_into(reader, buf)
                    if n == 0:
                        break
                    piece = bytes(buf[:n])
                    h.update(piece)
                    sender.send(chunk_subj, piece)
                    chunks += 1
                    total += n
            sender.finish()
            info = api.ObjectInfo(
                name=meta.name,
                bucket=self._name,
                nuid=nuid,
                size=total,
                chunks=chunks,
                digest=digest_value(h.digest()),
                description=meta.description,
                headers=_headers_from_wire(_headers_to_wire(meta.headers)),
                options=api.ObjectMetaOptions(link=None, max_chunk_size=size),
                metadata=dict(meta.metadata) if meta.metadata else None,
            )
            self._publish_meta(info, t)
        except BaseException:
            sender.settle()
            sender.close()
            self._purge_quietly(chunk_subj, t)
            raise
        sender.close()
        info.mtime = api.format_time(_dt.datetime.now(_dt.timezone.utc))
        if einfo is not None and not einfo.deleted and einfo.nuid and einfo.nuid != nuid:
            self._js.purge_stream(self._stream, subject=chunk_subject(self._name, einfo.nuid), timeout=t)
        return info

    def _publish_meta(self, info: api.ObjectInfo, timeout: float | None) -> None:
        try:
            self._js.publish(
                meta_subject(self._name, info.name),
                info_to_json(info),
                headers={ROLLUP: ROLLUP_SUBJECT},
                timeout=timeout,
            )
        except StreamNotFoundError as err:
            raise BucketNotFoundError(description=f"bucket {self._name!r} not found") from err

    def _purge_quietly(self, subject: str, timeout: float) -> None:
        try:
            self._js.purge_stream(self._stream, subject=subject, timeout=timeout)
        except Exception:  # noqa: BLE001 - best effort cleanup after a failed put
            pass

    # ------------------------------------------------------------------ get

    def get(
        self,
        name: str,
        writeinto: IO[bytes] | None = None,
        *,
        show_deleted: bool = False,
        timeout: float | None = None,
    ) -> ObjectResult:
        """Read object *name*; return an :class:`ObjectResult`.

        The chunks are fetched a few at a time (memory stays bounded).  With
        *writeinto* (a binary file object) each chunk is written as it arrives and
        ``result.data`` is empty; otherwise the data is returned in ``result.data``.
        A link to an object is followed.

        The SHA-256 digest (and size) of what was read is checked against the meta
        record: on a mismatch :class:`DigestMismatchError` is raised and no data is
        returned; with *writeinto*, what was written to it must be discarded.

        Raises:
            ObjectNotFoundError: no such object (or it was deleted).
            DigestMismatchError: the data read is not the data stored (chunks lost or
                corrupted).
            ValueError: the name is a link to a whole bucket.
            natsync.TimeoutError: a chunk did not come within *timeout*.
        """
        if isinstance(writeinto, io.TextIOBase):
            raise TypeError("get() needs a binary file object for writeinto: open the file in 'wb' mode")
        info = self.get_info(name, show_deleted=show_deleted, timeout=timeout)
        if info.options is not None and info.options.link is not None:
            link = info.options.link
            if not link.name:
                raise ValueError(
                    f"object {name!r} is a link to bucket {link.bucket!r}, not to an object: "
                    f"use js.object_store({link.bucket!r})"
                )
            target = (
                self if link.bucket == self._name else object_store(self._js, link.bucket, timeout=timeout)
            )
            return target.get(link.name, writeinto, timeout=timeout)
        result = ObjectResult(info=info)
        parts: list[bytes] = []
        sink: Callable[[bytes], object] = writeinto.write if writeinto is not None else parts.append
        h = hashlib.sha256()
        total = 0
        if (info.size or 0) > 0 or (info.chunks or 0) > 0:
            total = self._read_chunks(info, sink, h, self._timeout(timeout))
        if total != (info.size or 0) or (info.digest and not _digest_equal(info.digest, h.digest())):
            raise DigestMismatchError(
                f"object {name!r} in bucket {self._name!r} is corrupt or incomplete: read "
                f"{total} bytes (SHA-256 {digest_value(h.digest())}), the meta record says "
                f"{info.size} bytes ({info.digest})"
                + ("; discard what was written to writeinto" if writeinto is not None else "")
            )
        if writeinto is None:
            result.data = b"".join(parts)
        return result

    def _read_chunks(self, info: api.ObjectInfo, sink: Any, h: Any, timeout: float) -> int:
        """Read the chunks of *info* through a private pull consumer, *batch* at a time."""
        js = self._js
        nc = js._nc
        subj = chunk_subject(self._name, info.nuid)
        cfg = {
            "deliver_policy": "all",
            "ack_policy": "none",
            "filter_subject": subj,
            "inactive_threshold": int(max(timeout, 5.0) * 1e9),
            "mem_storage": True,
            "num_replicas": 1,
        }
        try:
            resp = _api(
                js, f"CONSUMER.CREATE.{self._stream}", {"stream_name": self._stream, "config": cfg}, timeout
            )
        except StreamNotFoundError as err:
            raise BucketNotFoundError(description=f"bucket {self._name!r} not found") from err
        consumer = resp["name"]
        if int(resp.get("num_pending") or 0) == 0:
            self._delete_consumer(consumer)
            return 0
        chunk = (
            int(info.options.max_chunk_size)
            if info.options and info.options.max_chunk_size
            else DEFAULT_CHUNK_SIZE
        )
        batch = max(2, (2 * 1024 * 1024) // max(chunk, 1))
        half = max(1, batch // 2)
        inbox = nc.new_inbox()
        sub = nc.subscribe(inbox, pending_msgs_limit=None, pending_bytes_limit=None)
        next_subj = f"{js._prefix}.CONSUMER.MSG.NEXT.{self._stream}.{consumer}"
        expires = int(max(timeout, 1.0) * 1e9)

        def pull(n: int) -> None:
            """Ask the consumer for *n* more chunks."""
            nc.publish(next_subj, json.dumps({"batch": n, "expires": expires}).encode(), reply=inbox)

        total = 0
        try:
            pull(batch)
            since_refill = 0
            while True:
                msg = sub.next_msg(timeout=timeout)
                hdrs = msg.headers
                if hdrs is not None and hdrs.status is not None and not msg.data:
                    if hdrs.status in (404, 408, 409):
                        break  # nothing more to deliver: the rest is missing
                    continue  # 100 heartbeats etc.
                data = msg.data
                sink(data)
                h.update(data)
                total += len(data)
                if _num_pending(msg.reply) == 0:
                    break
                since_refill += 1
                if since_refill >= half:
                    since_refill = 0
                    pull(half)
        finally:
            try:
                sub.unsubscribe()
            except Exception:  # noqa: BLE001
                pass
            self._delete_consumer(consumer)
        return total

    def _delete_consumer(self, consumer: str) -> None:
        try:
            self._js._nc.publish(f"{self._js._prefix}.CONSUMER.DELETE.{self._stream}.{consumer}", b"")
        except Exception:  # noqa: BLE001 - it expires by itself (inactive_threshold)
            pass

    # ------------------------------------------------------------------ changes

    def delete(self, name: str, *, timeout: float | None = None) -> bool:
        """Delete object *name*: its meta record is marked deleted, its chunks purged.

        Returns True.

        Raises:
            ObjectNotFoundError: no such object (or it was already deleted).
        """
        info = self.get_info(name, timeout=timeout)
        old_nuid = info.nuid
        info.deleted = True
        info.size = 0
        info.chunks = 0
        info.digest = None
        self._publish_meta(info, timeout)
        if old_nuid:
            self._js.purge_stream(self._stream, subject=chunk_subject(self._name, old_nuid), timeout=timeout)
        return True

    def update_meta(self, name: str, meta: api.ObjectMeta, *, timeout: float | None = None) -> bool:
        """Replace the name, description, headers (and metadata) of object *name*.

        Renaming moves the meta record to the new name (the chunks stay).  Returns
        True.

        Raises:
            ObjectNotFoundError: no object *name*.
            ObjectDeletedError: object *name* was deleted.
            BadRequestError: renaming onto an existing object.
        """
        try:
            info = self.get_info(name, show_deleted=True, timeout=timeout)
        except ObjectNotFoundError:
            raise
        if info.deleted:
            raise ObjectDeletedError(f"object {name!r} was deleted: its meta cannot be updated")
        new_name = meta.name or name
        _check_name(new_name)
        if new_name != name:
            try:
                other = self.get_info(new_name, timeout=timeout)
            except ObjectNotFoundError:
                other = None
            if other is not None:
                raise BadRequestError(
                    description=f"cannot rename {name!r} to {new_name!r}: an object of that name exists"
                )
        info.name = new_name
        info.description = meta.description
        info.headers = _headers_from_wire(_headers_to_wire(meta.headers))
        info.metadata = dict(meta.metadata) if meta.metadata else None
        self._publish_meta(info, timeout)
        if new_name != name:
            self._js.purge_stream(self._stream, subject=meta_subject(self._name, name), timeout=timeout)
        return True

    def add_link(self, name: str, obj: api.ObjectInfo, *, timeout: float | None = None) -> api.ObjectInfo:
        """Store object *name* as a link to the object *obj* (of this or another bucket).

        Raises:
            ValueError: *obj* is deleted or is itself a link, or *name* is an object
                that is not a link.
        """
        _check_name(name)
        if obj is None or not obj.name:
            raise ValueError("add_link() needs the ObjectInfo of the object to link to")
        if obj.deleted:
            raise ValueError(f"cannot link to deleted object {obj.name!r}")
        if obj.options is not None and obj.options.link is not None:
            raise ValueError(f"cannot link to {obj.name!r}: it is a link itself")
        return self._put_link(name, api.ObjectLink(bucket=obj.bucket, name=obj.name), timeout)

    def add_bucket_link(
        self, name: str, bucket: ObjectStore, *, timeout: float | None = None
    ) -> api.ObjectInfo:
        """Store object *name* as a link to the whole bucket *bucket*."""
        _check_name(name)
        if not isinstance(bucket, ObjectStore):
            raise TypeError("add_bucket_link() needs an ObjectStore")
        return self._put_link(name, api.ObjectLink(bucket=bucket.bucket, name=None), timeout)

    def _put_link(self, name: str, link: api.ObjectLink, timeout: float | None) -> api.ObjectInfo:
        try:
            einfo = self.get_info(name, show_deleted=True, timeout=timeout)
        except ObjectNotFoundError:
            einfo = None
        if einfo is not None and not einfo.deleted and not (einfo.options and einfo.options.link):
            raise ValueError(f"object {name!r} exists and is not a link: delete it first")
        info = api.ObjectInfo(
            name=name,
            bucket=self._name,
            nuid=next_nuid(),
            size=0,
            chunks=0,
            options=api.ObjectMetaOptions(link=link),
        )
        self._publish_meta(info, timeout)
        info.mtime = api.format_time(_dt.datetime.now(_dt.timezone.utc))
        return info

    def seal(self, *, timeout: float | None = None) -> bool:
        """Seal the bucket: no object can be added, changed or deleted after.  True."""
        si = self._js.stream_info(self._stream, timeout=timeout)
        cfg = si.config
        cfg.sealed = True
        self._js.update_stream(cfg, timeout=timeout)
        return True

    def status(self, *, timeout: float | None = None) -> ObjectStoreStatus:
        """Return the bucket's :class:`ObjectStoreStatus`."""
        try:
            si = self._js.stream_info(self._stream, timeout=timeout)
        except StreamNotFoundError as err:
            raise BucketNotFoundError(description=f"bucket {self._name!r} not found") from err
        return ObjectStoreStatus(bucket=self._name, stream_info=si)

    def list(self, *, ignore_deletes: bool = True, timeout: float | None = None) -> list[api.ObjectInfo]:
        """Return the infos of the objects in the bucket (``[]`` when empty).

        Deleted objects are left out unless ``ignore_deletes=False``.
        """
        out: list[api.ObjectInfo] = []
        with self.watch(ignore_deletes=ignore_deletes, timeout=timeout) as watcher:
            for info in watcher:
                if info is None:
                    break
                out.append(info)
        return out

    def watch(
        self,
        *,
        ignore_deletes: bool = False,
        include_history: bool = False,
        updates_only: bool = False,
        timeout: float | None = None,
    ) -> ObjectWatcher:
        """Watch the bucket's meta records: yields each object's info, then ``None``
        once the current ones were delivered, then every change.  ``stop()`` ends it.

        Raises:
            ValueError: *include_history* with *updates_only* (as nats.go and nats-py).
        """
        _check_watch_options(include_history, updates_only, None)
        return ObjectWatcher(
            self,
            ignore_deletes=ignore_deletes,
            include_history=include_history,
            updates_only=updates_only,
            timeout=timeout,
        )


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"an object name must be a non-empty str, not {name!r}")


def _digest_equal(expected: str, actual: bytes) -> bool:
    try:
        return decode_digest(expected) == actual
    except ValueError:
        return False


def _read_into(reader: Any, buf: bytearray) -> int:
    if hasattr(reader, "readinto"):
        n = reader.readinto(buf)
        return int(n or 0)
    piece = reader.read(len(buf))
    if isinstance(piece, str):
        raise TypeError("put() needs a binary file object: read() returned str")
    if not piece:
        return 0
    buf[: len(piece)] = piece
    return len(piece)


# --------------------------------------------------------------------------- buckets


def create_object_store(
    js: Any,
    bucket: str | api.ObjectStoreConfig | None = None,
    config: api.ObjectStoreConfig | None = None,
    *,
    timeout: float | None = None,
    **fields: Any,
) -> ObjectStore:
    """Create Object Store bucket *bucket* and return it bound.

    The signature is nats-py's, ``create_object_store(bucket=None, config=None,
    **params)``: *bucket* names the bucket (and wins over ``config.bucket``),
    *config* gives the rest, keyword *fields* of
    :class:`~natsync.js.api.ObjectStoreConfig` change it.  An
    :class:`~natsync.js.api.ObjectStoreConfig` given first (natsync's older
    ``create_object_store(config)``) is taken as *config*.  The config given is not
    modified.

    Raises:
        InvalidBucketNameError: a bad name, or none (nothing is sent).
        ValueError: both a config first and *config*.
        BadRequestError: the bucket exists with other settings.
    """
    from .kv import _config_from

    if isinstance(bucket, api.ObjectStoreConfig):
        if config is not None:
            raise ValueError("create_object_store: give one ObjectStoreConfig, not two")
        bucket, config = None, bucket
    if bucket is not None:
        fields = dict(fields, bucket=bucket)
    cfg = _config_from(config, fields, api.ObjectStoreConfig)
    scfg = obs_stream_config(cfg)
    info = js.add_stream(scfg, timeout=timeout)
    return ObjectStore(js, cfg.bucket, scfg.name, bool(info.config.allow_direct))


def object_store(js: Any, bucket: str, *, timeout: float | None = None) -> ObjectStore:
    """Bind to the existing Object Store bucket *bucket*.

    Raises:
        InvalidBucketNameError: a bad name (nothing is sent).
        BucketNotFoundError: there is no such bucket.
    """
    validate_bucket(bucket)
    try:
        info = js.stream_info(stream_name(bucket), timeout=timeout)
    except StreamNotFoundError as err:
        raise BucketNotFoundError(
            code=err.code, err_code=err.err_code, description=f"object store {bucket!r} not found"
        ) from err
    return ObjectStore(js, bucket, info.config.name, bool(info.config.allow_direct))


def object_store_names(js: Any, *, timeout: float | None = None) -> list[str]:
    """The names of every Object Store bucket of the account (nats.go's
    ``ObjectStoreNames``): streams named ``OBJ_*`` on ``$O.*.C.>`` subjects."""
    names = js.stream_names(subject="$O.*.C.>", timeout=timeout)
    return [n[4:] for n in names if n.startswith("OBJ_")]


def object_stores(js: Any, *, timeout: float | None = None) -> list[ObjectStoreStatus]:
    """The status of every Object Store bucket of the account (nats.go's
    ``ObjectStores``)."""
    infos = js.streams_info(subject="$O.*.C.>", timeout=timeout)
    return [
        ObjectStoreStatus(bucket=i.config.name[4:], stream_info=i)
        for i in infos
        if i.config.name and i.config.name.startswith("OBJ_")
    ]


def delete_object_store(js: Any, bucket: str, *, timeout: float | None = None) -> bool:
    """Delete Object Store bucket *bucket* and every object in it; return True.

    Raises:
        InvalidBucketNameError: a bad name (nothing is sent).
        BucketNotFoundError: there is no such bucket.
    """
    validate_bucket(bucket)
    try:
        return bool(js.delete_stream(stream_name(bucket), timeout=timeout))
    except StreamNotFoundError as err:
        raise BucketNotFoundError(
            code=err.code, err_code=err.err_code, description=f"object store {bucket!r} not found"
        ) from err


# --------------------------------------------------------------------------- watcher


class ObjectWatcher(_MetaWatcher):
    """A watch on the meta records of an Object Store bucket (see
    :meth:`ObjectStore.watch`): :class:`~natsync.js.api.ObjectInfo` updates, ``None``
    once after the current ones, then live changes; :meth:`stop` ends it."""

    def __init__(
        self,
        obs: ObjectStore,
        *,
        ignore_deletes: bool,
        include_history: bool,
        updates_only: bool,
        timeout: float | None,
    ) -> None:
        self._ignore_deletes = ignore_deletes
        if updates_only:
            policy = api.DeliverPolicy.NEW
        elif include_history:
            policy = api.DeliverPolicy.ALL
        else:
            policy = api.DeliverPolicy.LAST_PER_SUBJECT
        super().__init__(
            obs._js,
            obs._stream,
            [f"$O.{obs.bucket}.M.>"],
            deliver_policy=policy,
            headers_only=False,
            marker=not updates_only,
            timeout=timeout,
        )

    def _convert(self, msg: Any, sseq: int, ts: int, pending: int) -> Any:
        try:
            info = info_from_json(msg.data)
        except ValueError:
            return _SKIP  # not a meta record this client understands
        if info.deleted and self._ignore_deletes:
            return _SKIP
        info.mtime = api.format_time(_datetime_ns(ts))
        return info

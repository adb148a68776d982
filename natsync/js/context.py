"""The JetStream context: management calls, publishing, and the consumer factories.

Everything goes through the client's public request/publish/subscribe calls (the
request mux on ``_INBOX``): no second connection, no library lock of the client.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..errors import NoRespondersError, NotConnectedError, TimeoutError
from ..headers import Headers, HeadersInput
from . import _proto
from ._proto import check_name, decode_api_response
from .api import (
    AccountInfo,
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    ConsumerPause,
    DeliverPolicy,
    Header,
    PubAck,
    RawStreamMsg,
    StreamConfig,
    StreamInfo,
    format_time,
    format_ttl,
)
from .errors import (
    APIError,
    BadRequestError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Client
    from ..msg import Msg
    from .batch import BatchMessage, BatchPublisher
    from .kv import BucketStatus
    from .object_store import ObjectStoreStatus
    from .pull import PullSubscription
    from .push import PushSubscription

__all__ = ["JetStream", "JetStreamManager"]

_PUB_RETRIES = 2  # nats.go: 2 retries of a publish that met a 503 (leader election)
_PUB_RETRY_WAIT = 0.25


def _check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
    return float(timeout)


class JetStream:
    """A JetStream context: create with :meth:`natsync.Client.jetstream` (or ``jsm``).

    Cheap to create; many may exist on one connection.  ``timeout`` is the default of
    every API call, each of which also takes ``timeout=``.  All methods block until
    done or their timeout and may be called from any thread (including callbacks).
    """

    def __init__(
        self,
        nc: Client,
        prefix: str | None = None,
        domain: str | None = None,
        timeout: float = 5.0,
        publish_async_max_pending: int = 4000,
    ) -> None:
        self._nc = nc
        self._prefix = _proto.api_prefix(prefix, domain)
        self._domain = domain
        self._timeout = _check_timeout(timeout)
        if (
            isinstance(publish_async_max_pending, bool)
            or not isinstance(publish_async_max_pending, int)
            or publish_async_max_pending < 1
        ):
            raise ValueError(
                f"publish_async_max_pending must be an int >= 1, not {publish_async_max_pending!r}"
            )
        self._max_pending = publish_async_max_pending
        self._async: Any = None  # natsync.js._async.AsyncPublisher, created on first use
        self._async_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<natsync.js.JetStream prefix={self._prefix!r}>"

    @property
    def prefix(self) -> str:
        """The API prefix (``$JS.API``, or ``$JS.<domain>.API``)."""
        return self._prefix

    # --- the API -----------------------------------------------------------------------

    def _api(
        self,
        subject: str,
        body: dict[str, Any] | None,
        operation: str,
        timeout: float | None,
    ) -> dict[str, Any]:
        """Send one API request (``<prefix>.<subject>``) and decode the answer."""
        t = self._timeout if timeout is None else _check_timeout(timeout)
        payload = json.dumps(body, separators=(",", ":")).encode() if body else b""
        full = f"{self._prefix}.{subject}"
        try:
            msg = self._nc.request(full, payload, timeout=t)
        except NoRespondersError:
            raise ServiceUnavailableError(
                503,
                None,
                f"no responders on {full!r}: JetStream is not enabled on the server or for this "
                "account (start nats-server with -js, or check the account's JetStream limits "
                "and the domain/prefix)",
                operation=operation,
            ) from None
        except NotConnectedError as e:
            raise NotConnectedError(f"JetStream {operation}: {e}") from None
        except TimeoutError:
            raise TimeoutError(
                f"JetStream {operation}: no answer within {t} s (is JetStream available, and may "
                f"this user publish to {self._prefix}.> and receive replies?)"
            ) from None
        return decode_api_response(msg.data, operation)

    # --- account -------------------------------------------------------------------------

    def account_info(self, timeout: float | None = None) -> AccountInfo:
        """The account's JetStream usage and limits."""
        return AccountInfo.from_json(self._api("INFO", None, "INFO", timeout))

    # --- streams -------------------------------------------------------------------------

    @staticmethod
    def _stream_config(config: StreamConfig | None, fields: dict[str, Any]) -> StreamConfig:
        if config is None:
            cfg = StreamConfig(**fields)
        elif isinstance(config, StreamConfig):
            cfg = config.evolve(**fields) if fields else config
        else:
            raise TypeError(f"config must be a StreamConfig, not {type(config).__name__}")
        # a missing name, a name with '.', a compression other than none/s2, metadata
        # that is not str -> str...: ValueError naming the field, before any request
        cfg.validate()
        return cfg

    def add_stream(
        self, config: StreamConfig | None = None, timeout: float | None = None, **fields: Any
    ) -> StreamInfo:
        """Create a stream from ``config`` or keyword fields of :class:`StreamConfig`
        (e.g. ``add_stream(name="ORDERS", subjects=["orders.>"])``).

        Raises:
            ValueError: a bad value (see :meth:`StreamConfig.validate`), before any
                request: no name, a name with ``.``, ``*``, ``>``, whitespace or a path
                separator, a compression other than ``"none"``/``"s2"``, metadata that
                is not str -> str.
            BadRequestError: the server refused the configuration (e.g. a stream of
                that name exists with another one).
        """
        cfg = self._stream_config(config, fields)
        resp = self._api(f"STREAM.CREATE.{cfg.name}", cfg.to_json(), "STREAM.CREATE", timeout)
        return StreamInfo.from_json(resp)

    def update_stream(
        self, config: StreamConfig | None = None, timeout: float | None = None, **fields: Any
    ) -> StreamInfo:
        """Change a stream's configuration (the whole config, as ``add_stream``)."""
        cfg = self._stream_config(config, fields)
        resp = self._api(f"STREAM.UPDATE.{cfg.name}", cfg.to_json(), "STREAM.UPDATE", timeout)
        return StreamInfo.from_json(resp)

    def delete_stream(self, name: str, timeout: float | None = None) -> bool:
        """Delete a stream and every message and consumer in it; returns True."""
        check_name("stream", name)
        resp = self._api(f"STREAM.DELETE.{name}", None, "STREAM.DELETE", timeout)
        return bool(resp.get("success", False))

    def purge_stream(
        self,
        name: str,
        subject: str | None = None,
        seq: int | None = None,
        keep: int | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Remove messages from a stream: all, those on ``subject``, those below
        ``seq``, or all but the last ``keep``; returns True.

        nats-py's positional order is ``(name, seq, subject, keep)``: a positional
        int in the ``subject`` place (and a str in the ``seq`` place) is read that way.
        """
        check_name("stream", name)
        pos_subject: object = subject
        pos_seq: object = seq
        if isinstance(pos_subject, int) and not isinstance(pos_subject, bool):
            if pos_seq is None or isinstance(pos_seq, str):
                # nats-py's purge_stream(name, seq, subject), called positionally
                subject, seq = pos_seq, pos_subject
        if seq is not None and keep is not None:
            raise ValueError("purge_stream: give seq or keep, not both")
        body: dict[str, Any] = {}
        if subject is not None:
            body["filter"] = subject
        if seq is not None:
            body["seq"] = seq
        if keep is not None:
            body["keep"] = keep
        resp = self._api(f"STREAM.PURGE.{name}", body, "STREAM.PURGE", timeout)
        return bool(resp.get("success", False))

    def stream_info(
        self,
        name: str,
        subjects_filter: str | None = None,
        timeout: float | None = None,
        *,
        deleted_details: bool = False,
    ) -> StreamInfo:
        """A stream's configuration and state; with ``subjects_filter`` (e.g. ``">"``)
        ``state.subjects`` counts the messages of each matching subject (``None``
        when none matches, as nats-py); with ``deleted_details=True``
        ``state.deleted`` lists the sequences deleted inside the stream's range."""
        check_name("stream", name)
        body: dict[str, Any] | None = None
        if subjects_filter or deleted_details:
            body = {}
            if subjects_filter:
                body["subjects_filter"] = subjects_filter
            if deleted_details:
                body["deleted_details"] = True
        resp = self._api(f"STREAM.INFO.{name}", body, "STREAM.INFO", timeout)
        info = StreamInfo.from_json(resp)
        if subjects_filter:
            # the server pages subject counts; gather the rest
            total = resp.get("total", 0)
            subjects = dict(info.state.subjects or {})
            while isinstance(total, int) and len(subjects) < total:
                more = self._api(
                    f"STREAM.INFO.{name}",
                    dict(body or {}, offset=len(subjects)),
                    "STREAM.INFO",
                    timeout,
                )
                page = (more.get("state") or {}).get("subjects") or {}
                if not page:
                    break
                subjects.update(page)
            info.state.subjects = subjects or None
        return info

    def _paged(
        self,
        subject: str,
        key: str,
        operation: str,
        body: dict[str, Any] | None,
        timeout: float | None,
        offset: int = 0,
    ) -> list[Any]:
        out: list[Any] = []
        while True:
            req = dict(body or {})
            req["offset"] = offset + len(out)
            resp = self._api(subject, req, operation, timeout)
            page = resp.get(key) or []
            out.extend(page)
            total = resp.get("total", 0)
            if not page or not isinstance(total, int) or offset + len(out) >= total:
                return out

    def streams_info(
        self, offset: int = 0, subject: str | None = None, timeout: float | None = None
    ) -> list[StreamInfo]:
        """The info of every stream (all pages, from ``offset`` on, as nats-py's
        ``streams_info(offset)``); with ``subject``, of the streams that capture it
        (a subject or a pattern with wildcards, e.g. ``"$KV.*.>"``)."""
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an int >= 0, not {offset!r}")
        body = {"subject": subject} if subject else None
        return [
            StreamInfo.from_json(s)
            for s in self._paged("STREAM.LIST", "streams", "STREAM.LIST", body, timeout, offset)
        ]

    def streams_info_iterator(
        self, offset: int = 0, subject: str | None = None, timeout: float | None = None
    ) -> Iterator[StreamInfo]:
        """The info of every stream, one page requested at a time as the iteration
        goes on (nats-py's ``streams_info_iterator``); arguments as
        :meth:`streams_info`."""
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be an int >= 0, not {offset!r}")
        return self._stream_pages(offset, subject, timeout)

    def _stream_pages(self, offset: int, subject: str | None, timeout: float | None) -> Iterator[StreamInfo]:
        got = 0
        while True:
            req: dict[str, Any] = {"offset": offset + got}
            if subject:
                req["subject"] = subject
            resp = self._api("STREAM.LIST", req, "STREAM.LIST", timeout)
            page = resp.get("streams") or []
            for s in page:
                yield StreamInfo.from_json(s)
            got += len(page)
            total = resp.get("total", 0)
            if not page or not isinstance(total, int) or offset + got >= total:
                return

    def stream_names(self, subject: str | None = None, timeout: float | None = None) -> list[str]:
        """The names of every stream (all pages); with ``subject`` (a subject or a
        pattern with wildcards), of those that capture it."""
        body = {"subject": subject} if subject else None
        return [str(n) for n in self._paged("STREAM.NAMES", "streams", "STREAM.NAMES", body, timeout)]

    def find_stream_name_by_subject(self, subject: str, timeout: float | None = None) -> str:
        """The name of the stream that captures ``subject``.

        Raises:
            NotFoundError: if no stream does.
        """
        names = self.stream_names(subject, timeout)
        if not names:
            raise NotFoundError(404, None, f"no stream matches subject {subject!r}", operation="STREAM.NAMES")
        return names[0]

    # --- consumers -----------------------------------------------------------------------

    def add_consumer(
        self,
        stream: str,
        config: ConsumerConfig | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> ConsumerInfo:
        """Create (or update) a consumer on ``stream`` from ``config`` or keyword fields
        of :class:`ConsumerConfig`; durable with ``durable_name``, named but not
        durable with ``name`` alone (the server removes it after
        ``inactive_threshold`` without interest), else ephemeral with a generated
        name (as nats.go).

        The consumer is created through ``CONSUMER.CREATE.<stream>.<name>`` (with
        ``.<filter>`` for a single filter subject) on servers 2.9 and later.

        Raises:
            ValueError: a bad stream or consumer name, or ``name`` and
                ``durable_name`` that differ.
            APIError: the server refused it.
        """
        check_name("stream", stream)
        if config is None:
            cfg = ConsumerConfig(**fields)
        elif isinstance(config, ConsumerConfig):
            cfg = config.evolve(**fields) if fields else config
        else:
            raise TypeError(f"config must be a ConsumerConfig, not {type(config).__name__}")
        return self._create_consumer(stream, cfg, timeout)

    def _create_consumer(
        self, stream: str, cfg: ConsumerConfig, timeout: float | None, action: str | None = None
    ) -> ConsumerInfo:
        """Create a consumer; ``action`` "create" fails (10148) rather than update one
        that exists with another config."""
        for given in (cfg.name, cfg.durable_name):
            if given is not None:
                check_name("consumer", given)
        if cfg.name and cfg.durable_name and cfg.name != cfg.durable_name:
            raise ValueError(
                f"consumer name {cfg.name!r} and durable_name {cfg.durable_name!r} differ: give one, "
                "or the same in both"
            )
        name = cfg.name or cfg.durable_name
        extended = self._extended_consumer_api()
        if not name and extended:
            name = _proto.consumer_name()  # an ephemeral gets a name of ours (nats.go)
        body: dict[str, Any] = {"stream_name": stream, "config": cfg.to_json()}
        if action is not None:
            body["action"] = action
        if name:
            body["config"]["name"] = name
            subject = f"CONSUMER.CREATE.{stream}.{name}"
            flt = cfg.filter_subject
            if extended and flt and not cfg.filter_subjects and _proto.subject_token_ok(flt):
                subject = f"{subject}.{flt}"
            if not extended and cfg.durable_name:
                subject = f"CONSUMER.DURABLE.CREATE.{stream}.{name}"
        else:
            subject = f"CONSUMER.CREATE.{stream}"
        return ConsumerInfo.from_json(self._api(subject, body, "CONSUMER.CREATE", timeout))

    def _extended_consumer_api(self) -> bool:
        """True when the server takes ``CONSUMER.CREATE.<stream>.<name>`` (2.9+)."""
        return _proto.server_at_least(self._nc.server_info.get("version"), (2, 9, 0))

    def consumer_names(self, stream: str, timeout: float | None = None) -> list[str]:
        """The names of every consumer of ``stream`` (all pages)."""
        check_name("stream", stream)
        return [
            str(n)
            for n in self._paged(f"CONSUMER.NAMES.{stream}", "consumers", "CONSUMER.NAMES", None, timeout)
        ]

    def pause_consumer(
        self,
        stream: str,
        consumer: str,
        pause_until: datetime.datetime | str,
        timeout: float | None = None,
    ) -> ConsumerPause:
        """Pause a consumer until ``pause_until`` (an aware :class:`datetime.datetime`,
        or an RFC 3339 string as nats-py takes): it delivers nothing until then
        (server 2.11+).

        Raises:
            ConsumerNotFoundError: no such consumer.
            ValueError: a naive datetime, or a bad name.
        """
        check_name("stream", stream)
        check_name("consumer", consumer)
        if isinstance(pause_until, datetime.datetime):
            if pause_until.tzinfo is None:
                raise ValueError("pause_until must be an aware datetime (e.g. with tzinfo=timezone.utc)")
            until = format_time(pause_until)
        elif isinstance(pause_until, str) and pause_until:
            until = pause_until
        else:
            raise TypeError(f"pause_until must be a datetime or an RFC 3339 str, not {pause_until!r}")
        resp = self._api(
            f"CONSUMER.PAUSE.{stream}.{consumer}", {"pause_until": until}, "CONSUMER.PAUSE", timeout
        )
        return ConsumerPause.from_json(resp)

    def resume_consumer(self, stream: str, consumer: str, timeout: float | None = None) -> ConsumerPause:
        """Resume a paused consumer now (a pause with no time, as nats.go).

        Raises:
            ConsumerNotFoundError: no such consumer.
        """
        check_name("stream", stream)
        check_name("consumer", consumer)
        resp = self._api(f"CONSUMER.PAUSE.{stream}.{consumer}", None, "CONSUMER.PAUSE", timeout)
        return ConsumerPause.from_json(resp)

    def unpin_consumer(self, stream: str, consumer: str, group: str, timeout: float | None = None) -> bool:
        """Unpin the client pinned in priority ``group`` of a ``pinned_client``
        consumer (server 2.11+): the next pull of any client may be pinned.  Returns
        True.

        Raises:
            ConsumerNotFoundError: no such consumer.
            APIError: e.g. ``group`` is not one of the consumer's priority groups.
        """
        check_name("stream", stream)
        check_name("consumer", consumer)
        if not isinstance(group, str) or not group:
            raise ValueError(f"group must be a non-empty str, not {group!r}")
        self._api(f"CONSUMER.UNPIN.{stream}.{consumer}", {"group": group}, "CONSUMER.UNPIN", timeout)
        return True

    def delete_consumer(self, stream: str, name: str, timeout: float | None = None) -> bool:
        """Delete a consumer; returns True."""
        check_name("stream", stream)
        check_name("consumer", name)
        resp = self._api(f"CONSUMER.DELETE.{stream}.{name}", None, "CONSUMER.DELETE", timeout)
        return bool(resp.get("success", False))

    def consumer_info(self, stream: str, name: str, timeout: float | None = None) -> ConsumerInfo:
        """A consumer's configuration and state."""
        check_name("stream", stream)
        check_name("consumer", name)
        return ConsumerInfo.from_json(
            self._api(f"CONSUMER.INFO.{stream}.{name}", None, "CONSUMER.INFO", timeout)
        )

    def consumers_info(self, stream: str, timeout: float | None = None) -> list[ConsumerInfo]:
        """Every consumer of ``stream`` (all pages)."""
        check_name("stream", stream)
        return [
            ConsumerInfo.from_json(c)
            for c in self._paged(f"CONSUMER.LIST.{stream}", "consumers", "CONSUMER.LIST", None, timeout)
        ]

    # --- messages ------------------------------------------------------------------------

    def get_msg(
        self,
        stream: str,
        seq: int | None = None,
        subject: str | None = None,
        direct: bool = False,
        next: bool = False,  # noqa: A002 - nats-py name
        timeout: float | None = None,
    ) -> RawStreamMsg:
        """Read one message from a stream: by ``seq``; with ``subject`` and no ``seq``
        the last message on that subject; with both (or ``next=True``) the first
        message on ``subject`` at or after ``seq``.  ``direct=True`` uses the direct
        get API (the stream needs ``allow_direct``).

        Raises:
            NotFoundError: if there is no such message.
        """
        check_name("stream", stream)
        if seq is None and subject is None:
            raise ValueError("get_msg needs seq, subject or both")
        body: dict[str, Any] = {}
        if seq is not None and subject is not None:
            body = {"seq": seq, "next_by_subj": subject}
        elif seq is not None:
            body = {"seq": seq, "next_by_subj": ">"} if next else {"seq": seq}
        else:
            body = {"last_by_subj": subject}
        if direct:
            return self._direct_get(stream, body, timeout)
        resp = self._api(f"STREAM.MSG.GET.{stream}", body, "STREAM.MSG.GET", timeout)
        m = RawStreamMsg.from_json(resp.get("message") or {})
        m.stream = stream
        return m

    def _direct_get(self, stream: str, body: dict[str, Any], timeout: float | None) -> RawStreamMsg:
        t = self._timeout if timeout is None else _check_timeout(timeout)
        if set(body) == {"last_by_subj"}:
            subject = f"{self._prefix}.DIRECT.GET.{stream}.{body['last_by_subj']}"
            payload = b""
        else:
            subject = f"{self._prefix}.DIRECT.GET.{stream}"
            payload = json.dumps(body).encode()
        try:
            msg = self._nc.request(subject, payload, timeout=t)
        except NoRespondersError:
            raise ServiceUnavailableError(
                503,
                None,
                f"no responders on {subject!r}: the stream does not exist, or has no allow_direct",
                operation="DIRECT.GET",
            ) from None
        h = msg.headers
        if h is not None and h.status is not None and not msg.data:
            if h.status == 404:
                raise NotFoundError(404, None, h.description or "message not found", operation="DIRECT.GET")
            raise APIError(h.status, None, h.description, operation="DIRECT.GET")
        if h is None:
            raise APIError(None, None, "direct get answer without headers", operation="DIRECT.GET")
        seq_s = h.get("Nats-Sequence")
        ts = h.get("Nats-Time-Stamp")
        from .api import parse_time

        user = Headers([(k, v) for k, v in h.multi_items() if not k.startswith("Nats-") or k in _USER_NATS])
        return RawStreamMsg(
            subject=h.get("Nats-Subject"),
            seq=int(seq_s) if seq_s else None,
            data=msg.data,
            hdrs=None,
            headers=user if len(user) else None,
            stream=h.get("Nats-Stream") or stream,
            time=parse_time(ts) if ts else None,
        )

    def get_last_msg(
        self, stream: str, subject: str, direct: bool = False, timeout: float | None = None
    ) -> RawStreamMsg:
        """The last message on ``subject`` in ``stream``."""
        return self.get_msg(stream, subject=subject, direct=direct, timeout=timeout)

    def delete_msg(self, stream: str, seq: int, timeout: float | None = None) -> bool:
        """Delete message ``seq`` from ``stream``; returns True."""
        check_name("stream", stream)
        resp = self._api(
            f"STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True}, "STREAM.MSG.DELETE", timeout
        )
        return bool(resp.get("success", False))

    # --- publishing ----------------------------------------------------------------------

    @staticmethod
    def _pub_headers(
        headers: HeadersInput | None,
        msg_id: str | None,
        expected_stream: str | None,
        expected_last_seq: int | None,
        expected_last_subject_seq: int | None,
        expected_last_msg_id: str | None,
        extra: tuple[float | str | None, float | str | None, str | None] | None = None,
    ) -> HeadersInput | None:
        if (
            msg_id is None
            and expected_stream is None
            and expected_last_seq is None
            and expected_last_subject_seq is None
            and expected_last_msg_id is None
            and extra is None
        ):
            return headers
        h = Headers(headers) if headers is not None else Headers()
        if extra is not None:
            _ttl_headers(h, extra, expected_last_subject_seq)
        if msg_id is not None:
            h["Nats-Msg-Id"] = str(msg_id)
        if expected_stream is not None:
            h["Nats-Expected-Stream"] = expected_stream
        if expected_last_seq is not None:
            h["Nats-Expected-Last-Sequence"] = str(int(expected_last_seq))
        if expected_last_subject_seq is not None:
            h["Nats-Expected-Last-Subject-Sequence"] = str(int(expected_last_subject_seq))
        if expected_last_msg_id is not None:
            h["Nats-Expected-Last-Msg-Id"] = expected_last_msg_id
        return h

    def publish(
        self,
        subject: str,
        payload: bytes | bytearray | memoryview | str = b"",
        *,
        timeout: float | None = None,
        stream: str | None = None,
        headers: HeadersInput | None = None,
        msg_id: str | None = None,
        expected_stream: str | None = None,
        expected_last_seq: int | None = None,
        expected_last_subject_seq: int | None = None,
        expected_last_msg_id: str | None = None,
        ttl: float | str | None = None,
        msg_ttl: float | str | None = None,
        expected_last_subject_seq_subject: str | None = None,
    ) -> PubAck:
        """Publish to a stream and wait for its acknowledgement.

        ``msg_id`` sets ``Nats-Msg-Id`` (deduplication), ``stream``/``expected_stream``
        and the ``expected_*`` arguments set the ``Nats-Expected-*`` headers.
        ``ttl`` (``msg_ttl`` is nats-py's name) sets the message's own time to live,
        ``Nats-TTL`` (server 2.11+, the stream needs ``allow_msg_ttl=True``): seconds
        (at least 1), a Go duration string such as ``"1m"``, or ``"never"``.
        ``expected_last_subject_seq_subject`` (nats.go's
        ``WithExpectLastSequenceForSubject``) makes ``expected_last_subject_seq`` the
        last sequence of the messages on that subject (a pattern such as
        ``"orders.*"`` allowed) instead of on ``subject``.

        A subject no stream listens on is tried twice more, 250 ms apart, within
        ``timeout`` (as nats.go: a stream created at that moment still gets it).

        Raises:
            NoStreamResponseError: no stream captures ``subject``.
            APIError: the stream refused it (e.g. err_code 10071, wrong last sequence).
            natsync.TimeoutError: no acknowledgement within ``timeout``.
            ValueError: a bad ``ttl``, or ``expected_last_subject_seq_subject``
                without ``expected_last_subject_seq``.
        """
        t = self._timeout if timeout is None else _check_timeout(timeout)
        hdrs = self._pub_headers(
            headers,
            msg_id,
            expected_stream or stream,
            expected_last_seq,
            expected_last_subject_seq,
            expected_last_msg_id,
            None
            if ttl is None and msg_ttl is None and expected_last_subject_seq_subject is None
            else (ttl, msg_ttl, expected_last_subject_seq_subject),
        )
        nc = self._nc
        deadline = time.monotonic() + t
        retries = 0
        while True:
            try:
                msg = nc.request(
                    subject, payload, timeout=max(deadline - time.monotonic(), 0.001), headers=hdrs
                )
            except NoRespondersError:
                # A stream may be between leaders, or be created at this moment: nats.go
                # retries no-responders twice, 250 ms apart, on every server.
                if retries < _PUB_RETRIES and time.monotonic() + _PUB_RETRY_WAIT < deadline:
                    retries += 1
                    time.sleep(_PUB_RETRY_WAIT)
                    continue
                raise NoStreamResponseError(
                    f"no stream listens on subject {subject!r}: create a stream capturing it "
                    "(add_stream) or publish to a subject a stream captures"
                ) from None
            try:
                return pub_ack(msg.data)
            except ServiceUnavailableError:
                if retries < _PUB_RETRIES and time.monotonic() + _PUB_RETRY_WAIT < deadline:
                    retries += 1
                    time.sleep(_PUB_RETRY_WAIT)
                    continue
                raise

    def publish_async(
        self,
        subject: str,
        payload: bytes | bytearray | memoryview | str = b"",
        *,
        timeout: float | None = None,
        stream: str | None = None,
        headers: HeadersInput | None = None,
        msg_id: str | None = None,
        expected_stream: str | None = None,
        expected_last_seq: int | None = None,
        expected_last_subject_seq: int | None = None,
        expected_last_msg_id: str | None = None,
        ttl: float | str | None = None,
        msg_ttl: float | str | None = None,
        expected_last_subject_seq_subject: str | None = None,
    ) -> Future[PubAck]:
        """Publish without waiting; returns a :class:`concurrent.futures.Future` of the
        :class:`PubAck`.

        At most ``publish_async_max_pending`` acknowledgements are outstanding; past it
        the call blocks until one completes, or raises :class:`natsync.TimeoutError`
        after ``timeout``.  The future always completes: with the ack, an
        :class:`APIError`, :class:`NoStreamResponseError`, :class:`natsync.TimeoutError`
        after ``timeout``, or :class:`natsync.ConnectionClosedError` when the client
        closes.  ``ttl``/``msg_ttl`` and ``expected_last_subject_seq_subject`` as in
        :meth:`publish`.
        """
        pub = self._async
        if pub is None:
            pub = self._async_publisher()
        if (
            timeout is None
            and headers is None
            and msg_id is None
            and stream is None
            and expected_stream is None
            and expected_last_seq is None
            and expected_last_subject_seq is None
            and expected_last_msg_id is None
            and ttl is None
            and msg_ttl is None
            and expected_last_subject_seq_subject is None
        ):
            return pub.publish(subject, payload, None, self._timeout)  # type: ignore[no-any-return]
        t = self._timeout if timeout is None else _check_timeout(timeout)
        hdrs = self._pub_headers(
            headers,
            msg_id,
            expected_stream or stream,
            expected_last_seq,
            expected_last_subject_seq,
            expected_last_msg_id,
            None
            if ttl is None and msg_ttl is None and expected_last_subject_seq_subject is None
            else (ttl, msg_ttl, expected_last_subject_seq_subject),
        )
        return pub.publish(subject, payload, hdrs, t)  # type: ignore[no-any-return]

    def batch_publisher(
        self, *, ack_first: bool = True, ack_every: int = 0, timeout: float | None = None
    ) -> BatchPublisher:
        """Start an atomic batch (server 2.12+, the stream needs ``allow_atomic=True``):
        ``add()`` messages, then ``commit()`` the last one; the stream stores all of
        them or none.  See :class:`natsync.js.batch.BatchPublisher` (nats.go's
        ``jetstreamext.NewBatchPublisher``).

        Raises:
            ValueError: a bad ``ack_every``, ``ack_first`` or ``timeout``.
        """
        from .batch import BatchPublisher

        return BatchPublisher(self, ack_first=ack_first, ack_every=ack_every, timeout=timeout)

    def publish_batch(
        self,
        messages: Iterable[BatchMessage | Msg],
        *,
        ack_first: bool = True,
        ack_every: int = 0,
        timeout: float | None = None,
    ) -> PubAck:
        """Publish ``messages`` as one atomic batch (server 2.12+, the stream needs
        ``allow_atomic=True``) and return the commit's :class:`PubAck` (its
        ``batch_size`` is how many were stored, ``seq`` the last one's sequence).

        ``messages`` are ``(subject, payload)`` or ``(subject, payload, headers)``
        tuples (or :class:`natsync.Msg` objects); the last one commits the batch.  As
        nats.go's ``jetstreamext.PublishMsgBatch``: the first message waits for the
        server's answer (``ack_first``), then one every ``ack_every`` messages.

        Raises:
            ValueError: no messages, or a message with ``Nats-Batch-*`` headers of
                its own (nothing is sent).
            APIError: the server refused the batch (nothing of it was stored), e.g.
                err_code 10174 (the stream has no ``allow_atomic``).
            NoStreamResponseError: no stream captures the first subject.
            natsync.TimeoutError: no answer within ``timeout``.
        """
        from .batch import publish_batch

        return publish_batch(self, messages, ack_first=ack_first, ack_every=ack_every, timeout=timeout)

    def _async_publisher(self) -> Any:
        from ._async import AsyncPublisher

        with self._async_lock:
            if self._async is None or self._async.dead:
                self._async = AsyncPublisher(self._nc, self._max_pending)
            return self._async

    def publish_async_pending(self) -> int:
        """How many ``publish_async`` acknowledgements are outstanding."""
        pub = self._async
        return 0 if pub is None else int(pub.pending())

    def publish_async_completed(self, timeout: float | None = None) -> None:
        """Block until no ``publish_async`` is outstanding.

        Raises:
            natsync.TimeoutError: if some are still outstanding after ``timeout``.
        """
        pub = self._async
        if pub is not None:
            pub.wait_all(timeout)

    # --- consumers: pull ------------------------------------------------------------------

    def pull_subscribe(
        self,
        subject: str,
        durable: str | None = None,
        stream: str | None = None,
        config: ConsumerConfig | None = None,
        inbox_prefix: str | None = None,
        pending_msgs_limit: int | None = None,
        pending_bytes_limit: int | None = None,
        timeout: float | None = None,
    ) -> PullSubscription:
        """Bind to (durable that exists) or create a pull consumer on the stream that
        captures ``subject`` (or ``stream``) and return a :class:`PullSubscription`.
        A consumer made by another subscriber at the same moment is bound to.

        Raises:
            NotFoundError: no stream captures ``subject``.
            ValueError: bad names, or the named consumer is a push consumer.
        """
        from .pull import PullSubscription

        if durable is not None:
            check_name("consumer", durable)
        if stream is None:
            stream = self.find_stream_name_by_subject(subject, timeout)
        check_name("stream", stream)
        cfg = config if config is not None else ConsumerConfig()
        name = durable or cfg.durable_name or cfg.name
        info: ConsumerInfo | None = None
        if name:
            try:
                info = self.consumer_info(stream, name, timeout)
            except NotFoundError:
                info = None
        if info is None:
            changes: dict[str, Any] = {}
            if durable:
                changes["durable_name"] = durable
            if subject and not cfg.filter_subject and not cfg.filter_subjects:
                changes["filter_subject"] = subject
            if cfg.ack_policy is None:
                changes["ack_policy"] = AckPolicy.EXPLICIT
            cfg = cfg.evolve(**changes) if changes else cfg
            try:
                info = self._create_consumer(stream, cfg, timeout)
            except BadRequestError as e:
                # another thread or process made it meanwhile: bind to it (nats.go)
                if not name or e.err_code not in _CONSUMER_EXISTS:
                    raise
                info = self.consumer_info(stream, name, timeout)
        if info.config.deliver_subject:
            raise ValueError(
                f"consumer {info.name!r} on stream {stream!r} is a push consumer: use subscribe() for it"
            )
        return PullSubscription(
            self,
            stream,
            info.name,
            inbox_prefix=inbox_prefix,
            ephemeral=not name,
            pending_msgs_limit=pending_msgs_limit,
            pending_bytes_limit=pending_bytes_limit,
            priority_groups=info.config.priority_groups,
        )

    def pull_subscribe_bind(
        self,
        consumer: str | None = None,
        stream: str | None = None,
        inbox_prefix: str | None = None,
        durable: str | None = None,
        timeout: float | None = None,
    ) -> PullSubscription:
        """Bind to an existing pull consumer (``durable`` is nats-py's older name of
        ``consumer``).

        Raises:
            ConsumerNotFoundError: if it does not exist.
        """
        from .pull import PullSubscription

        consumer = consumer or durable
        if consumer is None or stream is None:
            raise ValueError("pull_subscribe_bind needs consumer and stream")
        info = self.consumer_info(stream, consumer, timeout)
        return PullSubscription(
            self,
            stream,
            info.name,
            inbox_prefix=inbox_prefix,
            ephemeral=False,
            priority_groups=info.config.priority_groups,
        )

    # --- consumers: push ------------------------------------------------------------------

    def subscribe(
        self,
        subject: str,
        queue: str | None = None,
        cb: Callable[[Msg], object] | None = None,
        durable: str | None = None,
        stream: str | None = None,
        config: ConsumerConfig | None = None,
        manual_ack: bool = False,
        ordered_consumer: bool = False,
        idle_heartbeat: float | None = None,
        flow_control: bool = False,
        deliver_policy: DeliverPolicy | None = None,
        headers_only: bool | None = None,
        pending_msgs_limit: int | None = None,
        pending_bytes_limit: int | None = None,
        timeout: float | None = None,
    ) -> PushSubscription:
        """Subscribe with a push consumer: bind to the consumer named by ``durable``,
        ``config.durable_name``, ``config.name`` or ``queue`` if it exists, else create
        it (deliver group ``queue``; ``config.deliver_subject`` if given, else a new
        inbox).  Subscribers that create the same consumer at once all bind to it
        (nats.go).  Messages go to ``cb`` (on its own thread) or to
        ``next_msg``/iteration.  Without ``manual_ack`` a message is acked after its
        callback returns, unless the consumer's ack policy is none.
        ``ordered_consumer=True`` gives the ordered consumer.  ``unsubscribe()``
        deletes only a consumer this call created without any name.

        Raises:
            NotFoundError: no stream captures ``subject``.
            JetStreamError: the consumer is a pull consumer, is bound already, or has
                another deliver group.
            ValueError: bad names, or ``queue`` and ``config.deliver_group`` differ.
        """
        from .push import subscribe_push

        sub: PushSubscription = subscribe_push(
            self,
            subject,
            queue=queue,
            cb=cb,
            durable=durable,
            stream=stream,
            config=config,
            manual_ack=manual_ack,
            ordered_consumer=ordered_consumer,
            idle_heartbeat=idle_heartbeat,
            flow_control=flow_control,
            deliver_policy=deliver_policy,
            headers_only=headers_only,
            pending_msgs_limit=pending_msgs_limit,
            pending_bytes_limit=pending_bytes_limit,
            timeout=timeout,
        )
        return sub

    def subscribe_bind(
        self,
        stream: str,
        config: ConsumerConfig | None = None,
        consumer: str | None = None,
        cb: Callable[[Msg], object] | None = None,
        manual_ack: bool = False,
        pending_msgs_limit: int | None = None,
        pending_bytes_limit: int | None = None,
        timeout: float | None = None,
    ) -> PushSubscription:
        """Subscribe to an existing push consumer (nats-py's ``subscribe_bind``).

        With a ``config`` that has ``deliver_subject`` (nats-py's call: ``config=
        info.config``) it subscribes there, with ``config.deliver_group`` as queue,
        without asking the server; otherwise the consumer is looked up and its
        deliver subject and group are used.  The consumer is never deleted by this
        subscription.  Without ``manual_ack`` a message is acked after ``cb``
        returns, except for a consumer with ack policy none.

        Raises:
            ValueError: neither ``consumer`` nor a named ``config``.
            ConsumerNotFoundError: the consumer does not exist.
            JetStreamError: it is a pull consumer, or already bound.
        """
        from .push import subscribe_bind

        return subscribe_bind(
            self,
            stream,
            config,
            consumer,
            cb=cb,
            manual_ack=manual_ack,
            pending_msgs_limit=pending_msgs_limit,
            pending_bytes_limit=pending_bytes_limit,
            timeout=timeout,
        )

    # --- Key/Value and Object Store (natsync.js.kv, natsync.js.object_store) -------------

    # The KV/Object Store engineer owns natsync/js/kv.py and natsync/js/object_store.py;
    # these delegate every argument unchanged to the functions of the same name there.

    def create_key_value(self, *args: Any, **kwargs: Any) -> Any:
        """Create a Key/Value bucket; see :func:`natsync.js.kv.create_key_value`."""
        from . import kv

        return kv.create_key_value(self, *args, **kwargs)

    def key_value(self, *args: Any, **kwargs: Any) -> Any:
        """Bind to a Key/Value bucket; see :func:`natsync.js.kv.key_value`."""
        from . import kv

        return kv.key_value(self, *args, **kwargs)

    def delete_key_value(self, *args: Any, **kwargs: Any) -> Any:
        """Delete a Key/Value bucket; see :func:`natsync.js.kv.delete_key_value`."""
        from . import kv

        return kv.delete_key_value(self, *args, **kwargs)

    def create_object_store(self, *args: Any, **kwargs: Any) -> Any:
        """Create an Object Store bucket; see
        :func:`natsync.js.object_store.create_object_store`."""
        from . import object_store

        return object_store.create_object_store(self, *args, **kwargs)

    def object_store(self, *args: Any, **kwargs: Any) -> Any:
        """Bind to an Object Store bucket; see :func:`natsync.js.object_store.object_store`."""
        from . import object_store

        return object_store.object_store(self, *args, **kwargs)

    def delete_object_store(self, *args: Any, **kwargs: Any) -> Any:
        """Delete an Object Store bucket; see
        :func:`natsync.js.object_store.delete_object_store`."""
        from . import object_store

        return object_store.delete_object_store(self, *args, **kwargs)

    def key_value_store_names(self, timeout: float | None = None) -> list[str]:
        """The names of every Key/Value bucket (nats.go's ``KeyValueStoreNames``)."""
        from . import kv

        return kv.key_value_store_names(self, timeout=timeout)

    def key_value_stores(self, timeout: float | None = None) -> list[BucketStatus]:
        """The :class:`~natsync.js.kv.BucketStatus` of every Key/Value bucket (nats.go's
        ``KeyValueStores``)."""
        from . import kv

        return kv.key_value_stores(self, timeout=timeout)

    def object_store_names(self, timeout: float | None = None) -> list[str]:
        """The names of every Object Store bucket (nats.go's ``ObjectStoreNames``)."""
        from . import object_store

        return object_store.object_store_names(self, timeout=timeout)

    def object_stores(self, timeout: float | None = None) -> list[ObjectStoreStatus]:
        """The :class:`~natsync.js.object_store.ObjectStoreStatus` of every Object Store
        bucket (nats.go's ``ObjectStores``)."""
        from . import object_store

        return object_store.object_stores(self, timeout=timeout)


JetStreamManager = JetStream
"""nats-py's manager type: the same :class:`JetStream`."""

# nats-server: 10013 consumer name already in use, 10105 consumer already exists,
# 10148 consumer already exists (action "create" with another config)
_CONSUMER_EXISTS = frozenset({10013, 10105, 10148})

# Nats-* headers that belong to the stored message (kept in a direct get's answer);
# Nats-Marker-Reason marks the server's own delete markers (KV TTL, server 2.11+).
_USER_NATS = frozenset(
    {"Nats-Msg-Id", "Nats-Rollup", "Nats-Expected-Stream", "Nats-Marker-Reason", "Nats-TTL"}
)


def _ttl_headers(
    h: Headers,
    extra: tuple[float | str | None, float | str | None, str | None],
    expected_last_subject_seq: int | None,
) -> None:
    """Set ``Nats-TTL`` and ``Nats-Expected-Last-Subject-Sequence-Subject`` on ``h``
    (the publish options that are not on the fast path)."""
    ttl, msg_ttl, last_subject = extra
    if ttl is not None and msg_ttl is not None:
        raise ValueError("give ttl or msg_ttl (nats-py's name of the same thing), not both")
    if msg_ttl is not None:
        ttl = msg_ttl
    if ttl is not None:
        h[Header.MSG_TTL.value] = format_ttl(ttl, "ttl")
    if last_subject is not None:
        if not isinstance(last_subject, str) or not last_subject or " " in last_subject:
            raise ValueError(
                f"expected_last_subject_seq_subject must be a subject (or pattern), not {last_subject!r}"
            )
        if expected_last_subject_seq is None:
            raise ValueError(
                "expected_last_subject_seq_subject needs expected_last_subject_seq: the sequence "
                "the last message on that subject must have"
            )
        h[Header.EXPECTED_LAST_SUBJECT_SEQ_SUBJECT.value] = last_subject


def pub_ack(data: bytes) -> PubAck:
    """Decode a publish acknowledgement or raise its error.

    The usual answer, ``{"stream":"S","seq":N}``, is taken apart without the JSON
    parser (it is on the publish_async hot path).
    """
    if data[:11] == b'{"stream":"':
        end = data.find(b'"', 11)
        if end > 11 and data[end : end + 8] == b'","seq":' and data[-1:] == b"}":
            num = data[end + 8 : -1]
            if num.isdigit():
                return PubAck(data[11:end].decode(), int(num))
    try:
        resp = json.loads(data)
    except ValueError:
        raise APIError(
            description=f"publish answer is not JSON: {data[:80]!r}", operation="PUBLISH"
        ) from None
    if type(resp) is dict and "error" not in resp:
        stream = resp.get("stream")
        seq = resp.get("seq")
        if stream is not None and seq is not None:
            return PubAck(
                stream, seq, resp.get("domain"), resp.get("duplicate"), resp.get("batch"), resp.get("count")
            )
    decode_api_response(data, "PUBLISH")
    raise APIError(description=f"invalid publish acknowledgement: {data[:80]!r}", operation="PUBLISH")

"""Sans-IO parts of natsync.js: config <-> JSON, ack-subject metadata, status
classification, name checks, API error mapping.  No server needed."""

from __future__ import annotations

import datetime
import json

import pytest

import natsync
from natsync.js import api, errors
from natsync.js._proto import (
    Status,
    ack_sequences,
    api_prefix,
    check_name,
    classify_status,
    decode_api_response,
    parse_metadata,
)
from natsync.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

UTC = datetime.timezone.utc


# --------------------------------------------------------------------------- api types


def test_stream_config_to_json_seconds_become_nanoseconds_and_none_is_left_out() -> None:
    cfg = StreamConfig(
        name="ORDERS",
        subjects=["orders.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        max_age=1.5,
        duplicate_window=120,
    )
    out = cfg.to_json()
    assert out["name"] == "ORDERS"
    assert out["subjects"] == ["orders.>"]
    assert out["retention"] == "workqueue"
    assert out["storage"] == "file"
    assert out["max_age"] == 1_500_000_000
    assert out["duplicate_window"] == 120_000_000_000
    assert "description" not in out and "mirror" not in out
    assert cfg.as_dict() == out
    json.dumps(out)  # serialisable as is


def test_stream_info_from_json_ignores_unknown_fields_and_keeps_unknown_enum_values() -> None:
    raw = {
        "config": {
            "name": "S",
            "subjects": ["s.>"],
            "retention": "limits",
            "storage": "quantum",  # a storage type from the future
            "max_age": 2_000_000_000,
            "brand_new_option": {"x": 1},
        },
        "state": {
            "messages": 3,
            "bytes": 42,
            "first_seq": 1,
            "last_seq": 3,
            "consumer_count": 0,
            "first_ts": "2024-05-06T07:08:09.123456789Z",
            "some_future_counter": 7,
        },
        "created": "2024-05-06T07:08:09.5Z",
        "cluster": {"leader": "n1", "replicas": [{"name": "n2", "current": True, "lag": 0}]},
        "future_top_level": True,
    }
    info = StreamInfo.from_json(raw)
    assert info.config.name == "S"
    assert info.config.retention is RetentionPolicy.LIMITS
    assert info.config.storage == "quantum"
    assert info.config.max_age == 2.0
    assert info.state.messages == 3
    assert info.state.first_ts == datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert info.created == datetime.datetime(2024, 5, 6, 7, 8, 9, 500000, tzinfo=UTC)
    assert info.cluster is not None and info.cluster.replicas is not None
    assert info.cluster.replicas[0].name == "n2"
    # from text as well
    assert StreamInfo.from_json(json.dumps(raw)).state.last_seq == 3


def test_consumer_config_round_trip() -> None:
    cfg = ConsumerConfig(
        durable_name="d",
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ack_wait=30,
        backoff=[0.5, 1.0],
        idle_heartbeat=5.0,
        inactive_threshold=0.25,
        filter_subjects=["a.>", "b.>"],
    )
    out = cfg.to_json()
    assert out["ack_wait"] == 30_000_000_000
    assert out["backoff"] == [500_000_000, 1_000_000_000]
    assert out["idle_heartbeat"] == 5_000_000_000
    assert out["inactive_threshold"] == 250_000_000
    assert out["deliver_policy"] == "by_start_time"
    assert out["opt_start_time"] == "2024-01-02T03:04:05.000000Z"
    back = ConsumerConfig.from_json(out)
    assert back == cfg


def test_consumer_info_with_missing_required_fields_does_not_fail() -> None:
    info = ConsumerInfo.from_json({"name": "c", "stream_name": "S", "config": {}, "num_pending": 4})
    assert info.name == "c" and info.num_pending == 4 and info.created is None


def test_raw_stream_msg_decodes_base64_and_headers() -> None:
    import base64

    hdr = b"NATS/1.0\r\nX-A: 1\r\n\r\n"
    m = api.RawStreamMsg.from_json(
        {
            "subject": "s.1",
            "seq": 9,
            "data": base64.b64encode(b"hello").decode(),
            "hdrs": base64.b64encode(hdr).decode(),
            "time": "2024-01-01T00:00:00Z",
        }
    )
    assert m.data == b"hello" and m.seq == 9 and m.sequence == 9
    assert m.headers is not None and m.headers["X-A"] == "1"
    assert m.time == datetime.datetime(2024, 1, 1, tzinfo=UTC)
    empty = api.RawStreamMsg.from_json({"subject": "s", "seq": 1})
    assert empty.data == b"" and empty.headers is None


def test_key_value_and_object_store_configs() -> None:
    kv = api.KeyValueConfig(bucket="b", ttl=60, history=5)
    assert kv.to_json()["ttl"] == 60_000_000_000
    assert api.KeyValueConfig.from_json(kv.to_json()) == kv
    obs = api.ObjectStoreConfig(bucket="o", ttl=1)
    assert obs.to_json()["ttl"] == 1_000_000_000
    info = api.ObjectInfo.from_json(
        {
            "name": "f",
            "bucket": "o",
            "nuid": "N",
            "size": 3,
            "options": {"link": {"bucket": "o2", "name": "g"}, "max_chunk_size": 128},
            "new_field": 1,
        }
    )
    assert info.is_link and info.options is not None and info.options.max_chunk_size == 128
    assert info.meta.name == "f"


def test_from_json_rejects_non_objects() -> None:
    with pytest.raises(TypeError):
        StreamConfig.from_json("[1, 2]")


def test_parse_time_forms() -> None:
    assert api.parse_time("2024-01-01T00:00:00.1+02:00") == datetime.datetime(
        2023, 12, 31, 22, 0, 0, 100000, tzinfo=UTC
    )
    assert api.parse_time("0001-01-01T00:00:00Z").year == 1
    with pytest.raises(ValueError):
        api.parse_time("yesterday")
    assert api.format_time(datetime.datetime(2024, 1, 1)) == "2024-01-01T00:00:00.000000Z"


# ------------------------------------------------------------------------- ack metadata


def test_metadata_from_the_old_nine_token_subject() -> None:
    md = parse_metadata("$JS.ACK.ORDERS.workers.2.1007.12.1700000000123456789.5")
    assert md is not None
    assert md.stream == "ORDERS" and md.consumer == "workers"
    assert md.num_delivered == 2
    assert md.sequence.stream == 1007 and md.sequence.consumer == 12
    assert md.num_pending == 5
    assert md.timestamp == datetime.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    assert md.domain is None
    assert ack_sequences("$JS.ACK.ORDERS.workers.2.1007.12.1700000000123456789.5") == (1007, 12)


def test_metadata_from_the_v2_subject_with_domain_and_random_token() -> None:
    subj = "$JS.ACK.hub.ACCHASH.ORDERS.workers.1.3.4.1700000000000000000.0.xyz"
    md = parse_metadata(subj)
    assert md is not None
    assert md.domain == "hub" and md.stream == "ORDERS" and md.consumer == "workers"
    assert md.sequence.stream == 3 and md.sequence.consumer == 4 and md.num_pending == 0
    assert ack_sequences(subj) == (3, 4)
    no_domain = parse_metadata("$JS.ACK._.ACC.S.C.1.3.4.1700000000000000000.0")
    assert no_domain is not None and no_domain.domain is None


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "_INBOX.abc",
        "$JS.ACK.S.C.1.2.3",  # too short
        "$JS.ACK.a.b.S.C.1.2.3.4",  # 10 tokens
        "$JS.ACK.S.C.x.2.3.4.5",  # not a number
    ],
)
def test_metadata_of_non_ack_subjects_is_none(reply: str | None) -> None:
    assert parse_metadata(reply) is None
    if reply != "$JS.ACK.S.C.x.2.3.4.5":  # the sequences themselves are fine there
        assert ack_sequences(reply) is None


def test_core_message_has_no_metadata_and_cannot_be_acked() -> None:
    msg = natsync.Msg(None, "core.subject", 1, "_INBOX.x", None, b"data")
    with pytest.raises(errors.NotJSMessageError):
        _ = msg.metadata
    for call in (msg.ack, msg.nak, msg.term, msg.in_progress, msg.ack_sync):
        with pytest.raises(errors.NotJSMessageError):
            call()


# ------------------------------------------------------------------- status, names, errors


@pytest.mark.parametrize(
    ("status", "desc", "reply", "kind"),
    [
        (100, "Idle Heartbeat", False, Status.HEARTBEAT),
        (100, "FlowControl Request", True, Status.FLOW_CONTROL),
        (404, "No Messages", False, Status.NO_MESSAGES),
        (408, "Request Timeout", False, Status.TIMEOUT),
        (409, "Consumer Deleted", False, Status.CONSUMER_DELETED),
        (409, "Leadership Change", False, Status.LEADERSHIP_CHANGE),
        (409, "Server Shutdown", False, Status.LEADERSHIP_CHANGE),
        (409, "Message Size Exceeds MaxBytes", False, Status.MAX_BYTES),
        (409, "Exceeded MaxRequestBatch of 10", False, Status.BAD_REQUEST),
        (503, "", False, Status.NO_RESPONDERS),
        (500, "?", False, Status.OTHER),
    ],
)
def test_classify_status(status: int, desc: str, reply: bool, kind: str) -> None:
    assert classify_status(status, desc, reply) == kind


@pytest.mark.parametrize("name", ["", "a.b", "a*", "a>", "a b", "a\tb", "a/b", "a\\b", "\x00"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_name("stream", name)


def test_name_must_be_str() -> None:
    with pytest.raises(TypeError):
        check_name("consumer", 5)
    assert check_name("stream", "ORDERS-1_x") == "ORDERS-1_x"


def test_api_prefix() -> None:
    assert api_prefix(None, None) == "$JS.API"
    assert api_prefix(None, "hub") == "$JS.hub.API"
    assert api_prefix("x.API.", None) == "x.API"
    with pytest.raises(ValueError, match="not both"):
        api_prefix("x", "hub")
    for bad in ("", "a.b", "a b"):
        with pytest.raises(ValueError):
            api_prefix(None, bad)
    with pytest.raises(ValueError):
        api_prefix("a.*", None)


@pytest.mark.parametrize(
    ("code", "err_code", "cls"),
    [
        (404, 10059, errors.StreamNotFoundError),
        (404, 10014, errors.ConsumerNotFoundError),
        (503, 10039, errors.ServiceUnavailableError),
        (404, 10037, errors.NotFoundError),
        (400, 10071, errors.BadRequestError),
        (503, None, errors.ServiceUnavailableError),
        (500, 10000, errors.ServerError),
        (418, None, errors.APIError),
    ],
)
def test_api_errors_map_to_classes(code: int, err_code: int | None, cls: type) -> None:
    data = json.dumps({"error": {"code": code, "err_code": err_code, "description": "boom"}}).encode()
    with pytest.raises(cls) as info:
        decode_api_response(data, "STREAM.INFO")
    err = info.value
    assert type(err) is cls
    assert err.code == code and err.err_code == err_code and err.description == "boom"
    assert "STREAM.INFO" in str(err) and "boom" in str(err)
    assert isinstance(err, natsync.NatsError)


def test_api_answer_that_is_not_json() -> None:
    with pytest.raises(errors.APIError, match="not JSON"):
        decode_api_response(b"<html>", "INFO")
    with pytest.raises(errors.APIError, match="object"):
        decode_api_response(b"[1]", "INFO")
    assert decode_api_response(b'{"ok": 1}', "INFO") == {"ok": 1}


def test_error_hierarchy() -> None:
    assert issubclass(errors.KeyDeletedError, errors.KeyNotFoundError)
    assert issubclass(errors.KeyNotFoundError, errors.NotFoundError)
    assert issubclass(errors.KeyWrongLastSequenceError, errors.BadRequestError)
    assert issubclass(errors.InvalidBucketNameError, ValueError)
    assert issubclass(errors.InvalidKeyError, ValueError)
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, natsync.NatsError), name
    e = errors.KeyDeletedError(entry="E", op="DEL")
    assert e.entry == "E" and e.op == "DEL" and "key not found" in str(e)
    assert repr(errors.APIError(400, 2, "d", operation="X")).startswith("APIError(code=400")

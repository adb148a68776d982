"""Pure Key/Value helpers: validation, stream layout, entry decoding (no server)."""

from __future__ import annotations

import pytest

from natsync.headers import Headers
from natsync.js import api
from natsync.js.errors import InvalidBucketNameError, InvalidKeyError
from natsync.js.kv import (
    entry_operation,
    kv_stream_config,
    stream_name,
    subject_prefix,
    validate_bucket,
    validate_key,
    validate_key_filter,
)


@pytest.mark.parametrize("name", ["a", "A_b-9", "config", "x" * 200])
def test_valid_bucket_names(name: str) -> None:
    assert validate_bucket(name) == name


@pytest.mark.parametrize("name", ["", "a.b", "a b", "a*", "a>", "a/b", "é", None, 5])
def test_invalid_bucket_names(name: object) -> None:
    with pytest.raises(InvalidBucketNameError) as exc:
        validate_bucket(name)
    assert isinstance(exc.value, ValueError)
    assert "bucket" in str(exc.value)


@pytest.mark.parametrize("key", ["a", "a.b.c", "A-Z_09/x=y", "user.42", "=", "-"])
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("key", ["", ".a", "a.", "a..b", "a b", "a*", "a>", "ä", "a\tb", "a:b", None, b"a"])
def test_invalid_keys(key: object) -> None:
    with pytest.raises(InvalidKeyError) as exc:
        validate_key(key)
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize("pattern", [">", "*", "a.*", "a.>", "a.*.b", "*.b.>", "key"])
def test_valid_filters(pattern: str) -> None:
    assert validate_key_filter(pattern) == pattern


@pytest.mark.parametrize("pattern", ["", "a.>.b", "a*", "a.b*", ">a", ".>", "a..*", "a >"])
def test_invalid_filters(pattern: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_key_filter(pattern)


def test_stream_layout_matches_nats_go() -> None:
    cfg = kv_stream_config(api.KeyValueConfig(bucket="B", history=5, ttl=30.0, max_value_size=1024))
    assert stream_name("B") == "KV_B" and subject_prefix("B") == "$KV.B."
    assert cfg.name == "KV_B"
    assert cfg.subjects == ["$KV.B.>"]
    assert cfg.max_msgs_per_subject == 5
    assert cfg.allow_rollup_hdrs is True and cfg.deny_delete is True and cfg.allow_direct is True
    assert cfg.discard == api.DiscardPolicy.NEW
    assert cfg.max_age == 30.0 and cfg.duplicate_window == 30.0  # capped by the TTL
    assert cfg.max_msg_size == 1024 and cfg.max_bytes == -1 and cfg.max_msgs == -1
    assert cfg.storage == api.StorageType.FILE and cfg.num_replicas == 1
    wire = cfg.as_dict()
    assert wire["max_age"] == 30_000_000_000 and wire["duplicate_window"] == 30_000_000_000


def test_stream_defaults_and_limits() -> None:
    cfg = kv_stream_config(api.KeyValueConfig(bucket="B"))
    assert cfg.max_msgs_per_subject == 1 and cfg.duplicate_window == 120.0 and cfg.max_age == 0.0
    mem = kv_stream_config(api.KeyValueConfig(bucket="B", storage=api.StorageType.MEMORY, direct=False))
    assert mem.storage == api.StorageType.MEMORY and mem.allow_direct is False
    for history in (0, 65, -1, 1.5):
        with pytest.raises(ValueError, match="history"):
            kv_stream_config(api.KeyValueConfig(bucket="B", history=history))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        kv_stream_config(api.KeyValueConfig(bucket="B", ttl=-1))
    with pytest.raises(InvalidBucketNameError):
        kv_stream_config(api.KeyValueConfig(bucket="a.b"))


@pytest.mark.parametrize(
    ("headers", "op"),
    [
        (None, None),
        ({}, None),
        ({"KV-Operation": "DEL"}, "DEL"),
        ({"KV-Operation": "PURGE", "Nats-Rollup": "sub"}, "PURGE"),
        ({"KV-Operation": "SOMETHING"}, None),
        ({"Nats-Marker-Reason": "MaxAge"}, "PURGE"),
        ({"Nats-Marker-Reason": "Purge"}, "PURGE"),
        ({"Nats-Marker-Reason": "Remove"}, "DEL"),
        ({"Nats-Marker-Reason": "Future"}, "PURGE"),
        ({"Other": "x"}, None),
    ],
)
def test_entry_operation(headers: dict[str, str] | None, op: str | None) -> None:
    assert entry_operation(headers) == op
    if headers is not None:
        assert entry_operation(Headers(headers)) == op

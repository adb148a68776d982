"""Pure Object Store helpers: subjects, digest strings, meta records (no server)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from natsync.js import api
from natsync.js.errors import InvalidBucketNameError
from natsync.js.object_store import (
    _num_pending,
    chunk_subject,
    decode_digest,
    digest_value,
    encode_name,
    info_from_json,
    info_to_json,
    meta_subject,
    obs_stream_config,
    stream_name,
)


def test_subjects() -> None:
    assert stream_name("files") == "OBJ_files"
    assert chunk_subject("files", "NUID123") == "$O.files.C.NUID123"
    # padded URL-safe base64, as nats.go and nats-py encode names
    assert encode_name("a") == "YQ=="
    assert encode_name("dir/f?>.txt") == base64.urlsafe_b64encode(b"dir/f?>.txt").decode()
    assert "/" not in encode_name("\xff\xfe??>>") and "+" not in encode_name("\xff\xfe??>>")
    assert meta_subject("files", "report.pdf") == "$O.files.M.cmVwb3J0LnBkZg=="


def test_digest_round_trip() -> None:
    raw = hashlib.sha256(b"hello").digest()
    value = digest_value(raw)
    assert value.startswith("SHA-256=")
    assert value == "SHA-256=" + base64.urlsafe_b64encode(raw).decode()
    assert decode_digest(value) == raw
    # other clients' spellings: lower-case prefix, std alphabet, no padding
    std = base64.b64encode(raw).decode()
    assert decode_digest("sha-256=" + std) == raw
    assert decode_digest("SHA-256=" + base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw


@pytest.mark.parametrize(
    "bad", ["", "SHA-256", "MD5=" + base64.b64encode(b"x" * 16).decode(), "SHA-256=!!!", "SHA-256=YQ=="]
)
def test_bad_digests(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_digest(bad)


def test_meta_record_layout_matches_nats_go() -> None:
    info = api.ObjectInfo(
        name="a.txt",
        bucket="files",
        nuid="N1",
        size=5,
        chunks=1,
        digest="SHA-256=abc",
        description="d",
        headers={"X-One": ["1", "2"], "X-Two": "b"},
        options=api.ObjectMetaOptions(max_chunk_size=131072),
        metadata={"k": "v"},
    )
    rec = json.loads(info_to_json(info))
    assert rec == {
        "name": "a.txt",
        "description": "d",
        "headers": {"X-One": ["1", "2"], "X-Two": ["b"]},
        "metadata": {"k": "v"},
        "options": {"max_chunk_size": 131072},
        "bucket": "files",
        "nuid": "N1",
        "size": 5,
        "mtime": "0001-01-01T00:00:00Z",
        "chunks": 1,
        "digest": "SHA-256=abc",
    }
    back = info_from_json(info_to_json(info))
    assert back.name == "a.txt" and back.size == 5 and back.headers == {"X-One": ["1", "2"], "X-Two": ["b"]}
    assert back.options is not None and back.options.max_chunk_size == 131072 and back.metadata == {"k": "v"}
    assert back.deleted is False


def test_meta_record_minimal_and_deleted_and_links() -> None:
    deleted = api.ObjectInfo(name="x", bucket="b", nuid="N", deleted=True)
    rec = json.loads(info_to_json(deleted))
    assert rec["deleted"] is True and rec["size"] == 0 and rec["chunks"] == 0 and "digest" not in rec
    link = api.ObjectInfo(
        name="l",
        bucket="b",
        nuid="N",
        options=api.ObjectMetaOptions(link=api.ObjectLink(bucket="o", name="t")),
    )
    assert json.loads(info_to_json(link))["options"] == {"link": {"bucket": "o", "name": "t"}}
    blink = api.ObjectInfo(
        name="l", bucket="b", nuid="N", options=api.ObjectMetaOptions(link=api.ObjectLink("o"))
    )
    assert json.loads(info_to_json(blink))["options"] == {"link": {"bucket": "o"}}
    parsed = info_from_json(info_to_json(link))
    assert parsed.options is not None and parsed.options.link == api.ObjectLink(bucket="o", name="t")


def test_meta_record_from_other_clients() -> None:
    # nats-py writes ISO mtimes, string header values, "" for a deleted mtime, and
    # newer servers/clients may add fields.
    rec = {
        "name": "n",
        "bucket": "b",
        "nuid": "N",
        "size": 3,
        "mtime": "",
        "chunks": 1,
        "digest": "SHA-256=x",
        "deleted": False,
        "headers": {"A": "1"},
        "options": {"max_chunk_size": 1024, "future": 1},
        "future_field": {"x": 1},
    }
    info = info_from_json(json.dumps(rec))
    assert info.headers == {"A": ["1"]} and info.size == 3 and info.options is not None
    for bad in (b"not json", b"[]", b'{"size": 1}'):
        with pytest.raises(ValueError):
            info_from_json(bad)


def test_stream_config_layout() -> None:
    cfg = obs_stream_config(api.ObjectStoreConfig(bucket="files", ttl=60.0))
    assert cfg.name == "OBJ_files"
    assert cfg.subjects == ["$O.files.C.>", "$O.files.M.>"]
    assert cfg.allow_rollup_hdrs is True and cfg.allow_direct is True
    assert cfg.discard == api.DiscardPolicy.NEW and cfg.max_age == 60.0 and cfg.max_bytes == -1
    with pytest.raises(InvalidBucketNameError):
        obs_stream_config(api.ObjectStoreConfig(bucket="no.dots"))
    with pytest.raises(ValueError):
        obs_stream_config(api.ObjectStoreConfig(bucket="b", ttl=-5))


@pytest.mark.parametrize(
    ("reply", "pending"),
    [
        ("$JS.ACK.OBJ_b.cons.1.10.3.1700000000000000000.7", 7),
        ("$JS.ACK.hub.ACCHASH.OBJ_b.cons.1.10.3.1700000000000000000.0.rand", 0),
        ("$JS.ACK.hub.ACCHASH.OBJ_b.cons.1.10.3.1700000000000000000.4", 4),
        ("_INBOX.x", None),
        (None, None),
        ("$JS.ACK.a.b", None),
        ("$JS.ACK.s.c.1.1.1.1.x", None),
    ],
)
def test_num_pending(reply: str | None, pending: int | None) -> None:
    assert _num_pending(reply) == pending

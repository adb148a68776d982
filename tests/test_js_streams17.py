"""Issue 17, streams and JetStream publishing, against a real nats-server -js: stream
management bugs and checks, per-message TTL and subject delete markers (server 2.11+),
the last-subject-sequence-subject expectation, the no-responders retry.

Cases translated from nats.go (``jetstream/test/stream_test.go``, ``publish_test.go``)
and nats.py (``tests/test_js.py``)."""

from __future__ import annotations

import itertools
import time

import pytest
from jskit import js, js_server, nc
from recorder import wait_until

import natsync
from natsync.js import JetStream, api, errors
from natsync.js.api import StorageType, StoreCompression, StreamConfig

__all__ = ["js", "js_server", "nc"]

_names = itertools.count(1)


def _new(js: JetStream, **fields: object) -> str:
    n = next(_names)
    name = f"T{n}"
    js.add_stream(name=name, subjects=[f"t{n}.>"], storage=StorageType.MEMORY, **fields)
    return name


def _subj(name: str, tail: str = "x") -> str:
    return f"t{name[1:]}.{tail}"


# ------------------------------------------------------------------------ bugs


def test_add_stream_without_name_is_a_value_error(nc: natsync.Client, js: JetStream) -> None:
    # nats.go: ErrStreamNameRequired; natsync raised TypeError from its name check.
    before = nc.stats.out_msgs
    with pytest.raises(ValueError, match="name"):
        js.add_stream()
    with pytest.raises(ValueError, match="name"):
        js.add_stream(subjects=["noname.>"])
    with pytest.raises(ValueError, match="name"):
        js.add_stream(StreamConfig(subjects=["noname.>"]))
    with pytest.raises(ValueError, match="name"):
        js.update_stream(subjects=["noname.>"])
    assert nc.stats.out_msgs == before  # nothing was sent


def test_stream_info_subjects_filter_matching_nothing_is_none(js: JetStream) -> None:
    # nats.py: state.subjects is None when the filter matches no subject
    name = _new(js)
    js.publish(_subj(name, "a"), b"1")
    info = js.stream_info(name, subjects_filter=_subj(name, "nothing.here"))
    assert info.state.subjects is None
    info = js.stream_info(name, subjects_filter=">")
    assert info.state.subjects == {_subj(name, "a"): 1}
    js.delete_stream(name)


# ------------------------------------------------------------- config checks


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "A.B"}, "stream name"),
        ({"name": "A*"}, "stream name"),
        ({"name": "A>"}, "stream name"),
        ({"name": "A B"}, "stream name"),
        ({"name": "A/B"}, "stream name"),
        ({"name": "A\\B"}, "stream name"),
        ({"name": "A\tB"}, "stream name"),
        ({"name": "OK", "compression": "zip"}, "compression"),
        ({"name": "OK", "compression": "S2"}, "compression"),
        ({"name": "OK", "metadata": {"k": 1}}, "metadata"),
        ({"name": "OK", "metadata": {1: "v"}}, "metadata"),
        ({"name": "OK", "metadata": ["k", "v"]}, "metadata"),
        ({"name": "OK", "max_age": -1}, "max_age"),
        ({"name": "OK", "subject_delete_marker_ttl": 0.5}, "subject_delete_marker_ttl"),
    ],
)
def test_stream_config_values_checked_before_sending(
    nc: natsync.Client, js: JetStream, fields: dict[str, object], field: str
) -> None:
    before = nc.stats.out_msgs
    with pytest.raises(ValueError, match=field):
        js.add_stream(**fields)
    with pytest.raises(ValueError, match=field):
        js.update_stream(StreamConfig(**fields))  # type: ignore[arg-type]
    assert nc.stats.out_msgs == before


def test_stream_compression_and_metadata_accepted(js: JetStream) -> None:
    n = next(_names)
    info = js.add_stream(
        name=f"C{n}",
        subjects=[f"c{n}.>"],
        compression=StoreCompression.S2,
        metadata={"owner": "team-a", "tier": "gold"},
    )
    assert info.config.compression == StoreCompression.S2
    assert info.config.metadata is not None and info.config.metadata["owner"] == "team-a"
    info = js.add_stream(name=f"D{n}", subjects=[f"d{n}.>"], compression="none")
    assert info.config.compression == StoreCompression.NONE
    js.delete_stream(f"C{n}")
    js.delete_stream(f"D{n}")


# ------------------------------------------------------------------ listing


def test_stream_info_deleted_details(js: JetStream) -> None:
    name = _new(js)
    for i in range(5):
        js.publish(_subj(name), b"%d" % i)
    js.delete_msg(name, 2)
    js.delete_msg(name, 4)
    plain = js.stream_info(name)
    assert plain.state.num_deleted == 2 and not plain.state.deleted
    info = js.stream_info(name, deleted_details=True)
    assert sorted(info.state.deleted or []) == [2, 4]
    both = js.stream_info(name, subjects_filter=">", deleted_details=True)
    assert sorted(both.state.deleted or []) == [2, 4] and both.state.subjects == {_subj(name): 3}
    js.delete_stream(name)


def test_streams_info_and_names_by_subject(js: JetStream) -> None:
    a = _new(js)
    b = _new(js)
    infos = js.streams_info(subject=_subj(a, "one"))
    assert [i.config.name for i in infos] == [a]
    assert js.stream_names(subject=_subj(b, "two")) == [b]
    # a pattern selects every stream whose subjects overlap it
    assert js.stream_names(subject=_subj(a, "*")) == [a]
    assert set(js.stream_names(subject=">")) >= {a, b}
    assert {i.config.name for i in js.streams_info(subject="*.>")} >= {a, b}
    assert js.streams_info(subject="nobody.listens.here") == []
    everything = js.streams_info()
    assert len(js.streams_info(1)) == len(everything) - 1  # nats-py's offset
    with pytest.raises(ValueError, match="offset"):
        js.streams_info(-1)
    js.delete_stream(a)
    js.delete_stream(b)


def test_streams_info_iterator(js: JetStream) -> None:
    # nats.py: streams_info_iterator(offset=0), pages fetched as the iteration goes on
    names = [_new(js) for _ in range(3)]
    everything = [i.config.name for i in js.streams_info()]
    it = js.streams_info_iterator()
    assert [i.config.name for i in it] == everything
    assert [i.config.name for i in js.streams_info_iterator(1)] == everything[1:]
    only = [i.config.name for i in js.streams_info_iterator(subject=_subj(names[0], "q"))]
    assert only == [names[0]]
    with pytest.raises(ValueError, match="offset"):
        js.streams_info_iterator(-1)
    for n in names:
        js.delete_stream(n)


def test_purge_stream_nats_py_positional_order(js: JetStream) -> None:
    # nats-py: purge_stream(name, seq=None, subject=None, keep=None)
    name = _new(js)
    for i in range(6):
        js.publish(_subj(name, "a" if i % 2 else "b"), b"%d" % i)
    assert js.purge_stream(name, 3) is True  # seq 3: everything below it
    assert js.stream_info(name).state.first_seq == 3
    assert js.purge_stream(name, 5, _subj(name, "b")) is True  # seq, subject
    info = js.stream_info(name, subjects_filter=">")
    assert info.state.subjects == {_subj(name, "a"): 2, _subj(name, "b"): 1}
    assert js.purge_stream(name, _subj(name, "a")) is True  # natsync's order still works
    assert js.stream_info(name).state.messages == 1
    js.delete_stream(name)


# ------------------------------------------------------------- per-message TTL


def test_publish_ttl_sets_header_and_message_expires(js: JetStream) -> None:
    # nats.go TestPublishWithTTL / TestPublishAsyncWithTTL: a message with Nats-TTL
    # goes away after it
    name = _new(js, allow_msg_ttl=True)
    ack = js.publish(_subj(name), b"short", ttl=1)
    keep = js.publish(_subj(name, "keep"), b"long", ttl="1h")
    never = js.publish(_subj(name, "never"), b"forever", msg_ttl="never")
    msg = js.get_msg(name, ack.seq)
    assert msg.headers is not None and msg.headers.get("Nats-TTL") == "1s"
    assert js.get_msg(name, keep.seq).headers.get("Nats-TTL") == "1h"  # type: ignore[union-attr]
    assert js.get_msg(name, never.seq).headers.get("Nats-TTL") == "never"  # type: ignore[union-attr]

    def gone() -> bool:
        try:
            js.get_msg(name, ack.seq)
        except errors.NotFoundError:
            return True
        return False

    assert wait_until(gone, 15)
    assert js.get_msg(name, keep.seq).data == b"long"
    js.delete_stream(name)


def test_publish_ttl_fraction_and_async(js: JetStream) -> None:
    name = _new(js, allow_msg_ttl=True)
    ack = js.publish(_subj(name), b"x", ttl=1.5)
    assert js.get_msg(name, ack.seq).headers.get("Nats-TTL") == "1.5s"  # type: ignore[union-attr]
    fut = js.publish_async(_subj(name), b"y", ttl=90)
    seq = fut.result(5).seq
    assert js.get_msg(name, seq).headers.get("Nats-TTL") == "90s"  # type: ignore[union-attr]
    js.delete_stream(name)


def test_publish_ttl_refused_by_stream_without_allow_msg_ttl(js: JetStream) -> None:
    name = _new(js)
    with pytest.raises(errors.APIError) as e:
        js.publish(_subj(name), b"x", ttl=5)
    assert "ttl" in str(e.value).lower()
    js.delete_stream(name)


@pytest.mark.parametrize("bad", [0, 0.5, -1, "500ms", "soon", True, float("nan")])
def test_publish_bad_ttl_is_a_value_error(nc: natsync.Client, js: JetStream, bad: object) -> None:
    before = nc.stats.out_msgs
    with pytest.raises(ValueError, match="ttl"):
        js.publish("anything", b"x", ttl=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ttl"):
        js.publish_async("anything", b"x", ttl=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="msg_ttl"):
        js.publish("anything", b"x", ttl=5, msg_ttl=5)
    assert nc.stats.out_msgs == before


def test_subject_delete_marker_after_max_age(js: JetStream) -> None:
    # nats.go TestMsgDeleteMarkerMaxAge: when the last message on a subject ages out,
    # the server leaves a marker (Nats-Marker-Reason: MaxAge) for the marker TTL
    n = next(_names)
    name = f"M{n}"
    info = js.add_stream(
        name=name,
        subjects=[f"m{n}.>"],
        storage=StorageType.MEMORY,
        max_age=1,
        allow_msg_ttl=True,
        subject_delete_marker_ttl=50,
    )
    assert info.config.subject_delete_marker_ttl == 50.0 and info.config.allow_msg_ttl
    first = js.publish(f"m{n}.a", b"x")

    def marker() -> api.RawStreamMsg | None:
        try:
            m = js.get_last_msg(name, f"m{n}.a")
        except errors.NotFoundError:
            return None
        return m if m.seq != first.seq else None

    assert wait_until(lambda: marker() is not None, 15)
    m = marker()
    assert m is not None and m.headers is not None
    assert m.headers.get("Nats-Marker-Reason") == "MaxAge"
    assert m.headers.get("Nats-TTL") == "50s"
    js.delete_stream(name)


# ----------------------------------------------------- expectations and retries


def test_expected_last_subject_seq_subject(js: JetStream) -> None:
    # nats.go's WithExpectLastSequenceForSubject(seq, subject)
    name = _new(js)
    js.publish(_subj(name, "a.1"), b"1")  # seq 1
    js.publish(_subj(name, "b.1"), b"2")  # seq 2
    js.publish(_subj(name, "a.2"), b"3")  # seq 3
    pattern = _subj(name, "a.*")
    ack = js.publish(
        _subj(name, "a.3"), b"4", expected_last_subject_seq=3, expected_last_subject_seq_subject=pattern
    )
    assert ack.seq == 4
    with pytest.raises(errors.APIError) as e:
        js.publish(
            _subj(name, "a.4"), b"5", expected_last_subject_seq=3, expected_last_subject_seq_subject=pattern
        )
    assert e.value.err_code == 10071
    # the b subjects' last sequence is still 2
    ack = js.publish(
        _subj(name, "a.9"),
        b"6",
        expected_last_subject_seq=2,
        expected_last_subject_seq_subject=_subj(name, "b.*"),
    )
    assert ack.seq == 5
    with pytest.raises(ValueError, match="expected_last_subject_seq"):
        js.publish(_subj(name), b"x", expected_last_subject_seq_subject=pattern)
    js.delete_stream(name)


def test_publish_no_stream_retries_no_responders_twice(nc: natsync.Client, js: JetStream) -> None:
    # nats.go: DefaultPubRetryAttempts = 2, DefaultPubRetryWait = 250 ms, also on a
    # single server; natsync raised after the first no-responders there.
    before = nc.stats.out_msgs
    start = time.monotonic()
    with pytest.raises(errors.NoStreamResponseError):
        js.publish("nostream17.x", b"x", timeout=10)
    elapsed = time.monotonic() - start
    assert nc.stats.out_msgs - before == 3  # the first try and two retries
    assert 0.5 <= elapsed < 10


def test_publish_no_stream_retries_stay_within_timeout(nc: natsync.Client, js: JetStream) -> None:
    before = nc.stats.out_msgs
    start = time.monotonic()
    with pytest.raises(errors.NoStreamResponseError):
        js.publish("nostream17.y", b"x", timeout=0.3)
    assert time.monotonic() - start < 5
    assert nc.stats.out_msgs - before == 2  # no retry that would end after the timeout


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        (1, "1s"),
        (90, "90s"),
        (1.5, "1.5s"),
        (2.25, "2.25s"),
        ("1s", "1s"),
        ("1m30s", "1m30s"),
        ("1.5h", "1.5h"),
        ("90", "90"),
        ("never", "never"),
    ],
)
def test_format_ttl(given: float | str, sent: str) -> None:
    assert api.format_ttl(given) == sent


@pytest.mark.parametrize("bad", ["", "1x", "s", "1 s", "-1s", "999ms", "0", float("inf"), None, [1]])
def test_format_ttl_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="ttl"):
        api.format_ttl(bad)  # type: ignore[arg-type]

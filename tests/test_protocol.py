"""Tests of natsync._protocol: the sans-IO parser, the encoders and the validators (pure)."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from natsync._protocol import (
    MAX_CONTROL_LINE,
    MAX_PAYLOAD_SIZE,
    OK,
    PING,
    PING_CMD,
    PONG,
    PONG_CMD,
    Err,
    Info,
    MsgRun,
    Parser,
    encode_connect,
    encode_pub,
    encode_sub,
    encode_unsub,
    pub_prefix,
    validate_queue,
    validate_subject,
)
from natsync.errors import BadSubjectError, ProtocolError

MiB = 1024 * 1024


def feed_whole(data: bytes) -> list[Any]:
    return Parser().feed(data)


def feed_chunks(data: bytes, size: int) -> list[Any]:
    p = Parser()
    events: list[Any] = []
    for i in range(0, len(data), size):
        events += p.feed(data[i : i + size])
    assert p.buffered == 0, "a complete stream must leave nothing buffered"
    return events


def feed_bytewise(data: bytes) -> list[Any]:
    return feed_chunks(data, 1)


# --------------------------------------------------------------------------- valid input

HDR = b"NATS/1.0\r\nA: b\r\n\r\n"  # 18 bytes
NO_RESPONDERS = b"HMSG _INBOX.x 1 43 43\r\nNATS/1.0 503\r\nNats-Subject: nobody.home\r\n\r\n\r\n"

# (id, wire bytes, expected events)
VALID: list[tuple[str, bytes, list[Any]]] = [
    ("msg", b"MSG foo 1 5\r\nhello\r\n", [("foo", 1, None, None, b"hello")]),
    ("msg-reply", b"MSG foo.bar 22 _INBOX.x.y 3\r\nabc\r\n", [("foo.bar", 22, "_INBOX.x.y", None, b"abc")]),
    ("msg-empty", b"MSG foo 1 0\r\n\r\n", [("foo", 1, None, None, b"")]),
    ("msg-empty-reply", b"MSG foo 7 r 0\r\n\r\n", [("foo", 7, "r", None, b"")]),
    ("msg-crlf-payload", b"MSG foo 1 6\r\na\r\nb\r\n\r\n", [("foo", 1, None, None, b"a\r\nb\r\n")]),
    ("msg-payload-is-crlf", b"MSG foo 1 2\r\n\r\n\r\n", [("foo", 1, None, None, b"\r\n")]),
    ("msg-payload-looks-like-op", b"MSG a 1 6\r\nPING\r\n\r\n", [("a", 1, None, None, b"PING\r\n")]),
    ("msg-binary", b"MSG a 1 4\r\n\x00\xff\r\x0a\r\n", [("a", 1, None, None, b"\x00\xff\r\n")]),
    ("msg-utf8-subject", "MSG ü.ñ 1 1\r\nx\r\n".encode(), [("ü.ñ", 1, None, None, b"x")]),
    ("msg-big-sid", b"MSG a 18446744073709551615 0\r\n\r\n", [("a", 18446744073709551615, None, None, b"")]),
    ("msg-trailing-space", b"MSG a 1 1 \r\nx\r\n", [("a", 1, None, None, b"x")]),
    ("msg-lower", b"msg foo 1 2\r\nhi\r\n", [("foo", 1, None, None, b"hi")]),
    ("msg-mixed-case-reply", b"mSg foo 1 r 2\r\nhi\r\n", [("foo", 1, "r", None, b"hi")]),
    ("msg-tabs", b"MSG\tfoo\t1\t\t2\r\nhi\r\n", [("foo", 1, None, None, b"hi")]),
    ("msg-spaces", b"MSG   foo  1   r    2\r\nhi\r\n", [("foo", 1, "r", None, b"hi")]),
    ("msg-mixed-ws", b"MSG \t foo\t 1 \tr\t \t2\r\nhi\r\n", [("foo", 1, "r", None, b"hi")]),
    ("hmsg", b"HMSG foo 3 18 20\r\n" + HDR + b"hi\r\n", [("foo", 3, None, HDR, b"hi")]),
    ("hmsg-reply", b"HMSG foo 3 inbox.1 18 20\r\n" + HDR + b"hi\r\n", [("foo", 3, "inbox.1", HDR, b"hi")]),
    ("hmsg-no-payload", b"HMSG foo 3 18 18\r\n" + HDR + b"\r\n", [("foo", 3, None, HDR, b"")]),
    (
        "hmsg-crlf-payload",
        b"HMSG foo 3 18 22\r\n" + HDR + b"\r\n\r\n\r\n",
        [("foo", 3, None, HDR, b"\r\n\r\n")],
    ),
    (
        "hmsg-no-responders",
        NO_RESPONDERS,
        [("_INBOX.x", 1, None, b"NATS/1.0 503\r\nNats-Subject: nobody.home\r\n\r\n", b"")],
    ),
    (
        "hmsg-long-reply-and-subject",
        b"HMSG orders.eu.created.v1.x 123 _INBOX.AbCdEfGhIjKlMnOpQrStUv.42 18 20\r\n" + HDR + b"hi\r\n",
        [("orders.eu.created.v1.x", 123, "_INBOX.AbCdEfGhIjKlMnOpQrStUv.42", HDR, b"hi")],
    ),
    (
        "msg-long-reply-slow-path",
        b"msg orders.eu.created.v1.x 123 _INBOX.AbCdEfGhIjKlMnOpQrStUv.42 2\r\nhi\r\n",
        [("orders.eu.created.v1.x", 123, "_INBOX.AbCdEfGhIjKlMnOpQrStUv.42", None, b"hi")],
    ),
    ("hmsg-lower-tabs", b"hmsg\tfoo\t3  r \t18\t20\r\n" + HDR + b"hi\r\n", [("foo", 3, "r", HDR, b"hi")]),
    ("ping", b"PING\r\n", [PING]),
    ("pong", b"PONG\r\n", [PONG]),
    ("ok", b"+OK\r\n", [OK]),
    ("ping-lower", b"ping\r\n", [PING]),
    ("pong-lower", b"pong\r\n", [PONG]),
    ("ok-lower", b"+ok\r\n", [OK]),
    ("ping-trailing-blank", b"PING \t\r\n", [PING]),
    ("err", b"-ERR 'Authorization Violation'\r\n", [Err("Authorization Violation")]),
    (
        "err-inner-quotes",
        b"-ERR 'Permissions Violation for Publish to \"foo.bar\"'\r\n",
        [Err('Permissions Violation for Publish to "foo.bar"')],
    ),
    ("err-inner-single-quote", b"-ERR 'it''s'\r\n", [Err("it''s")]),
    ("err-unquoted", b"-ERR Stale Connection\r\n", [Err("Stale Connection")]),
    ("err-trailing-space", b"-ERR 'x y' \r\n", [Err("x y")]),
    ("err-empty", b"-ERR\r\n", [Err("")]),
    ("err-lower-tab", b"-err\t'Unknown Protocol Operation'\r\n", [Err("Unknown Protocol Operation")]),
    ("err-utf8", "-ERR 'ü'\r\n".encode(), [Err("ü")]),
    (
        "info",
        b'INFO {"server_id":"abc","max_payload":1048576,"headers":true}\r\n',
        [Info({"server_id": "abc", "max_payload": 1048576, "headers": True})],
    ),
    ("info-trailing-space", b'INFO {"a":1} \r\n', [Info({"a": 1})]),
    ("info-lower-tab", b'info\t{"a": [1, 2]}\r\n', [Info({"a": [1, 2]})]),
    ("info-empty-object", b"INFO {}\r\n", [Info({})]),
    ("info-crlf-in-string", b'INFO {"a":"x\\r\\ny"}\r\n', [Info({"a": "x\r\ny"})]),
    ("info-utf8", 'INFO {"name":"ü"}\r\n'.encode(), [Info({"name": "ü"})]),
]

ALL_VALID = b"".join(wire for _, wire, _ in VALID)
ALL_EVENTS = [e for _, _, events in VALID for e in events]


@pytest.mark.parametrize("wire,expected", [(w, e) for _, w, e in VALID], ids=[c[0] for c in VALID])
def test_valid_whole(wire: bytes, expected: list[Any]) -> None:
    p = Parser()
    assert p.feed(wire) == expected
    assert p.buffered == 0


@pytest.mark.parametrize("wire,expected", [(w, e) for _, w, e in VALID], ids=[c[0] for c in VALID])
def test_valid_byte_at_a_time(wire: bytes, expected: list[Any]) -> None:
    assert feed_bytewise(wire) == expected


def test_markers_are_singletons() -> None:
    events = Parser().feed(b"PING\r\nPONG\r\n+OK\r\n")
    assert events[0] is PING and events[1] is PONG and events[2] is OK
    assert (repr(PING), repr(PONG), repr(OK)) == ("PING", "PONG", "OK")
    assert PING_CMD == b"PING\r\n" and PONG_CMD == b"PONG\r\n"


def test_all_ops_in_one_stream() -> None:
    assert feed_whole(ALL_VALID) == ALL_EVENTS


def test_all_ops_byte_at_a_time() -> None:
    assert feed_bytewise(ALL_VALID) == ALL_EVENTS


@pytest.mark.parametrize("size", [2, 3, 5, 7, 16, 64, 1000])
def test_all_ops_fixed_chunks(size: int) -> None:
    assert feed_chunks(ALL_VALID, size) == ALL_EVENTS


def test_every_two_way_split() -> None:
    for i in range(len(ALL_VALID) + 1):
        p = Parser()
        assert p.feed(ALL_VALID[:i]) + p.feed(ALL_VALID[i:]) == ALL_EVENTS, f"split at {i}"
        assert p.buffered == 0


def test_events_come_as_soon_as_complete() -> None:
    p = Parser()
    assert p.feed(b"PING\r\nMSG foo 1 5\r\nhel") == [PING]
    assert p.buffered == len(b"MSG foo 1 5\r\nhel")
    assert p.feed(b"lo") == []
    assert p.feed(b"\r") == []
    assert p.buffered == len(b"MSG foo 1 5\r\nhello\r")
    assert p.feed(b"\nPO") == [("foo", 1, None, None, b"hello")]
    assert p.buffered == 2
    assert p.feed(b"NG\r\n") == [PONG]
    assert p.buffered == 0


def test_feed_accepts_bytes_like_and_empty() -> None:
    p = Parser()
    assert p.feed(b"") == []
    assert p.feed(bytearray(b"MSG a 1 2\r\n")) == []
    assert p.feed(memoryview(b"hi\r\n")) == [("a", 1, None, None, b"hi")]
    assert p.feed(bytearray()) == []


def test_payload_is_bytes_not_a_view() -> None:
    (msg,) = Parser().feed(bytearray(b"MSG a 1 2\r\nhi\r\n"))
    assert type(msg[4]) is bytes and type(msg[0]) is str


def test_custom_make_msg() -> None:
    calls: list[tuple[Any, ...]] = []

    def make(subject: str, sid: int, reply: str | None, hdr: bytes | None, data: bytes) -> str:
        calls.append((subject, sid, reply, hdr, data))
        return f"msg{len(calls)}"

    p = Parser(make_msg=make)
    wire = b"MSG a 1 r 1\r\nx\r\nHMSG b 2 18 18\r\n" + HDR + b"\r\nPING\r\n"
    assert p.feed(wire) == ["msg1", "msg2", PING]
    assert calls == [("a", 1, "r", None, b"x"), ("b", 2, None, HDR, b"")]


class SlotMsg:
    __slots__ = ("_client", "subject", "sid", "reply", "_hdr", "_headers", "data")


def _flat(events: list[Any]) -> list[Any]:
    out: list[Any] = []
    for ev in events:
        out += ev.msgs if type(ev) is MsgRun else [ev]
    return out


def test_msg_type_builds_messages_without_make_msg() -> None:
    owner = object()
    p = Parser(msg_type=SlotMsg, owner=owner)
    wire = b"MSG a 1 r 1\r\nx\r\nHMSG b 2 18 20\r\n" + HDR + b"yz\r\nPING\r\n"
    m1, m2, ping = _flat(p.feed_runs(wire))
    assert ping is PING
    for m in (m1, m2):
        assert type(m) is SlotMsg and m._client is owner and m._headers is None
    assert (m1.subject, m1.sid, m1.reply, m1._hdr, m1.data) == ("a", 1, "r", None, b"x")
    assert (m2.subject, m2.sid, m2.reply, m2._hdr, m2.data) == ("b", 2, None, HDR, b"yz")


def test_msg_type_fills_every_slot_of_natsync_msg() -> None:
    # The parser builds natsync.Msg without calling it: the slots it assigns must be all of
    # Msg's, and the result must be the Msg that Msg(...) builds.
    from natsync.msg import Msg

    # _ackd is left unset on purpose (JetStream sets it on the final ack; readers use getattr)
    assert set(Msg.__slots__) - {"_ackd"} == set(SlotMsg.__slots__)
    p = Parser(msg_type=Msg)
    wire = b"MSG a 1 r 1\r\nx\r\nHMSG b 2 18 20\r\n" + HDR + b"yz\r\n"
    got = _flat(p.feed_runs(wire)) + _flat(p.feed_runs(b"MSG a 1 r 1\r\nx\r\n" * 2))
    got += p.feed_runs(b"MSG a 1 r 1\r\nx\r\n")  # one message alone: its own path
    built = [Msg(None, "a", 1, "r", None, b"x"), Msg(None, "b", 2, None, HDR, b"yz")] + [
        Msg(None, "a", 1, "r", None, b"x")
    ] * 3
    assert got == built
    assert [repr(m) for m in got] == [repr(m) for m in built]
    assert got[1].headers is not None and got[1].headers["A"] == "b"


def test_feed_runs_groups_consecutive_messages_of_one_sid() -> None:
    p = Parser(msg_type=SlotMsg)
    one = b"MSG a 1 2\r\nhi\r\n"
    two = b"MSG b 2 3\r\nyou\r\n"
    p.feed_runs(one + two)  # first sight of each line: parsed and remembered
    events = p.feed_runs(one * 3 + two * 2 + b"PING\r\n" + one + b"MSG a 1 r 2\r\nhi\r\n" + one)
    shape = [(ev.sid, len(ev.msgs), ev.nbytes) if type(ev) is MsgRun else ev for ev in events]
    # a line seen for the first time (here one with a reply subject) is checked in the
    # run: it does not break it
    assert shape == [(1, 3, 6), (2, 2, 6), PING, (1, 3, 6)]
    assert repr(events[0]) == "MsgRun(sid=1, 3 msgs, 6 bytes)"
    rest = _flat(events[3:])
    assert [(m.sid, m.reply, m.data) for m in rest] == [(1, None, b"hi"), (1, "r", b"hi"), (1, None, b"hi")]
    # lines with a reply subject (a JetStream delivery, a reply) are seen once: not kept
    assert b"MSG a 1 2" in p._heads and b"MSG a 1 r 2" not in p._heads
    # feed() gives the same messages one by one
    flat = Parser().feed(one * 3 + two * 2)
    assert flat == [("a", 1, None, None, b"hi")] * 3 + [("b", 2, None, None, b"you")] * 2


def test_known_line_with_crlf_in_payload_and_lying_size() -> None:
    p = Parser()
    wire = b"MSG a 1 4\r\na\r\nb\r\n"
    assert p.feed(wire * 3) == [("a", 1, None, None, b"a\r\nb")] * 3
    assert p.feed(b"MSG a 1 4\r\nabcd\r\n" * 2) == [("a", 1, None, None, b"abcd")] * 2
    with pytest.raises(ProtocolError, match="size field lied"):
        p.feed(b"MSG a 1 4\r\nabcde\r\n")
    p = Parser()
    p.feed(b"MSG a 1 2\r\nhi\r\n")
    with pytest.raises(ProtocolError, match="size field lied"):
        p.feed(b"MSG a 1 2\r\nhi!\r\nPING\r\n")


def test_known_line_cut_anywhere() -> None:
    # The last part of a split buffer is not followed by CRLF: never taken as a payload.
    one = b"MSG a 1 2\r\nhi\r\n"
    wire = one * 4
    for cut in range(len(wire) + 1):
        p = Parser()
        p.feed(one)
        got = p.feed(wire[:cut]) + p.feed(wire[cut:])
        assert got == [("a", 1, None, None, b"hi")] * 4, cut
        assert p.buffered == 0


def test_many_distinct_lines_and_a_large_buffer() -> None:
    # more distinct lines than the parser remembers, then a buffer too large to split
    wire = b"".join(b"MSG s.%d %d 1\r\nx\r\n" % (i, i) for i in range(600))
    assert [e[1] for e in Parser().feed(wire * 2)] == list(range(600)) * 2
    big = b"MSG a 1 1200000\r\n" + b"z\r\n" * 400000 + b"\r\n" + b"MSG a 1 1\r\nx\r\n" * 3
    events = Parser().feed(big)
    assert len(events) == 4 and events[0][4] == b"z\r\n" * 400000 and events[3][4] == b"x"


def test_invalid_utf8_subject_is_decoded_with_replacement() -> None:
    # Another client may publish a subject that is not UTF-8; the server passes the bytes
    # through. That must neither kill the reader with a UnicodeDecodeError nor drop the
    # connection: the subject is decoded with U+FFFD in place of the bad bytes.
    events = Parser().feed(b"MSG a\xff 1 \xfe 1\r\nx\r\nHMSG \xc3 2 18 18\r\n" + HDR + b"\r\n")
    assert events == [("a\ufffd", 1, "\ufffd", None, b"x"), ("\ufffd", 2, None, HDR, b"")]


def test_info_nested_json() -> None:
    data = {"connect_urls": ["10.0.0.1:4222", "[::1]:4222"], "cluster": {"name": "c", "n": None}}
    assert Parser().feed(b"INFO " + json.dumps(data).encode() + b"\r\n") == [Info(data)]


def test_info_and_err_repr_and_eq() -> None:
    assert repr(Info({"a": 1})) == "Info({'a': 1})"
    assert repr(Err("x")) == "Err('x')"
    assert Info({"a": 1}) != Info({"a": 2})
    assert Err("x") != Err("y")
    assert Info({}) != Err("")


# ------------------------------------------------------------------------ large payloads


def _big_payload(size: int) -> bytes:
    # Contains CRLFs and things that look like ops, so a parser that searched the payload
    # for line ends would go wrong.
    block = b"PING\r\nMSG x 1 3\r\n" + bytes(range(256))
    return (block * (size // len(block) + 1))[:size]


def test_large_payload_in_64k_chunks() -> None:
    payload = _big_payload(8 * MiB)
    wire = b"MSG big 9 _INBOX.r " + str(len(payload)).encode() + b"\r\n" + payload + b"\r\nPONG\r\n"
    p = Parser()
    events: list[Any] = []
    chunk = 64 * 1024
    fed = 0
    for i in range(0, len(wire), chunk):
        piece = wire[i : i + chunk]
        got = p.feed(piece)
        fed += len(piece)
        if not got:
            assert p.buffered == fed, "the incomplete message must be kept, whole"
        events += got
    assert p.buffered == 0
    assert len(events) == 2 and events[1] is PONG
    subject, sid, reply, hdr, data = events[0]
    assert (subject, sid, reply, hdr) == ("big", 9, "_INBOX.r", None)
    assert data == payload


def test_large_payload_incomplete_feeds_do_not_copy() -> None:
    """Linear time: a feed that does not complete the message must not re-join the buffer.

    A parser that concatenated everything received on every feed would allocate about
    the whole buffer per feed (quadratic in total); here each incomplete feed may
    allocate at most a few chunks' worth.
    """
    payload = _big_payload(8 * MiB)
    wire = b"HMSG big 1 18 " + str(18 + len(payload)).encode() + b"\r\n" + HDR + payload + b"\r\n"
    chunk = 64 * 1024
    pieces = [wire[i : i + chunk] for i in range(0, len(wire), chunk)]
    p = Parser()
    tracemalloc.start()
    try:
        for piece in pieces[:-1]:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            assert p.feed(piece) == []
            peak = tracemalloc.get_traced_memory()[1]
            assert peak - base < 4 * chunk, f"an incomplete feed allocated {peak - base} bytes"
    finally:
        tracemalloc.stop()
    (msg,) = p.feed(pieces[-1])
    assert msg[3] == HDR and msg[4] == payload


@pytest.mark.timeout(20)
def test_large_payload_in_tiny_chunks_is_linear() -> None:
    # 16 MiB in 1 KiB pieces: 16384 feeds. Quadratic re-joining would copy ~128 GiB and
    # run into the timeout; a linear parser needs well under a second.
    payload = b"x" * (16 * MiB)
    wire = b"MSG a 1 " + str(len(payload)).encode() + b"\r\n" + payload + b"\r\n"
    p = Parser()
    events: list[Any] = []
    for i in range(0, len(wire), 1024):
        events += p.feed(wire[i : i + 1024])
    assert len(events) == 1 and events[0][4] == payload


def test_payload_of_exactly_the_limit_is_accepted() -> None:
    for line in (b"MSG a 1 %d\r\n" % MAX_PAYLOAD_SIZE, b"HMSG a 1 18 %d\r\n" % MAX_PAYLOAD_SIZE):
        p = Parser()
        assert p.feed(line) == []
        assert p.buffered == len(line)


# ------------------------------------------------------------------------ malformed input

MALFORMED: list[tuple[str, bytes]] = [
    # sizes
    ("size-negative", b"MSG foo 1 -1\r\n"),
    ("size-negative-reply", b"MSG foo 1 r -5\r\n"),
    ("size-not-number", b"MSG foo 1 abc\r\n"),
    ("size-float", b"MSG foo 1 1.5\r\n"),
    ("size-exp", b"MSG foo 1 1e3\r\n"),
    ("size-hex", b"MSG foo 1 0x10\r\n"),
    ("size-plus", b"MSG foo 1 +5\r\n"),
    ("size-unicode-digit", "MSG foo 1 ٣\r\n".encode()),
    ("size-over-64MiB", b"MSG foo 1 %d\r\n" % (MAX_PAYLOAD_SIZE + 1)),
    ("size-huge", b"MSG foo 1 99999999999999999999999999\r\n"),
    ("size-5000-digits", b"MSG foo 1 " + b"9" * 5000 + b"\r\n"),
    ("size-5000-digits-leading-zeros", b"MSG foo 1 " + b"0" * 4999 + b"1\r\nx\r\n"),
    ("sid-not-number", b"MSG foo bar 1\r\nx\r\n"),
    ("sid-negative", b"MSG foo -1 1\r\nx\r\n"),
    ("sid-5000-digits", b"MSG foo " + b"1" * 5000 + b" 1\r\nx\r\n"),
    ("msg-lower-size-not-number", b"msg foo 1 x\r\n"),
    ("msg-lower-size-over", b"msg foo 1 %d\r\n" % (MAX_PAYLOAD_SIZE + 1)),
    ("hmsg-size-negative", b"HMSG foo 1 0 -1\r\n"),
    ("hmsg-hsize-negative", b"HMSG foo 1 -1 5\r\n"),
    ("hmsg-size-not-number", b"HMSG foo 1 5 five\r\n"),
    ("hmsg-hsize-not-number", b"HMSG foo 1 x 5\r\n"),
    ("hmsg-sid-not-number", b"HMSG foo x 18 18\r\n" + HDR + b"\r\n"),
    ("hmsg-size-over-64MiB", b"HMSG foo 1 18 %d\r\n" % (MAX_PAYLOAD_SIZE + 1)),
    ("hmsg-hsize-5000-digits", b"HMSG foo 1 " + b"0" * 4998 + b"18 18\r\n" + HDR + b"\r\n"),
    ("hmsg-hsize-larger-than-total", b"HMSG foo 1 10 5\r\n"),
    ("hmsg-hsize-larger-than-total-reply", b"HMSG foo 1 r 19 18\r\n" + HDR + b"\r\n"),
    ("hmsg-header-not-nats", b"HMSG foo 1 2 2\r\nab\r\n"),
    ("hmsg-header-empty", b"HMSG foo 1 0 2\r\nab\r\n"),
    # unknown operations, recognised from their first bytes without a line end
    ("unknown-XYZ", b"XYZ"),
    ("unknown-X", b"X"),
    ("unknown-lf", b"\n"),
    ("unknown-space-first", b" PING"),
    ("unknown-tab-first", b"\tMSG a 1 0"),
    ("unknown-MSX", b"MSX"),
    ("unknown-MSGX", b"MSGX"),
    ("unknown-PINGX", b"PINGX"),
    ("unknown-PING-lf", b"PING\n"),
    ("unknown-HMSX", b"HMSGX"),
    ("unknown-OK-without-plus", b"OK\r\n"),
    ("unknown-PUB", b"PUB foo 1\r\n"),
    ("unknown-after-valid", b"PING\r\nPONG\r\nHELLO"),
    ("unknown-http", b"HTTP/1.1 400 Bad Request\r\n"),
    ("unknown-tls-record", b"\x16\x03\x01\x00"),
    # unknown operations / bad lines with a line end
    ("empty-line", b"\r\n"),
    ("blank-line", b" \t\r\n"),
    ("leading-space-ping", b" PING\r\n"),
    ("ping-args", b"PING x\r\n"),
    ("ping-lf-inside", b"PING\n\r\n"),
    ("pong-args", b"PONG 1\r\n"),
    ("ok-args", b"+OK now\r\n"),
    ("msg-as-prefix", b"MSGFOO a 1 0\r\n\r\n"),
    # INFO that is not a JSON object
    ("info-array", b"INFO [1,2]\r\n"),
    ("info-string", b'INFO "str"\r\n'),
    ("info-number", b"INFO 1\r\n"),
    ("info-null", b"INFO null\r\n"),
    ("info-invalid-json", b"INFO {bad\r\n"),
    ("info-two-objects", b"INFO {}{}\r\n"),
    ("info-empty", b"INFO\r\n"),
    ("info-space-only", b"INFO \r\n"),
    ("info-not-utf8", b'INFO {"a":"\xff"}\r\n'),
    ("info-deeply-nested", b"INFO " + b"[" * 100_000 + b"]" * 100_000 + b"\r\n"),
    ("info-deeply-nested-object", b"INFO " + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"\r\n"),
    ("info-huge-int", b'INFO {"a":' + b"1" * 5000 + b"}\r\n"),
    # payload not followed by CRLF (the size field lied)
    ("msg-size-too-small", b"MSG foo 1 2\r\nhello\r\n"),
    ("msg-size-too-large", b"MSG foo 1 5\r\nhi\r\n\r\nPING\r\n"),
    ("msg-payload-then-lf", b"MSG foo 1 2\r\nhi\nPING\r\n"),
    ("msg-payload-then-cr-x", b"MSG foo 1 2\r\nhi\rx"),
    ("msg-reply-payload-no-crlf", b"MSG foo 1 r 1\r\nxyz\r\n"),
    ("msg-lower-payload-no-crlf", b"msg foo 1 1\r\nxyz\r\n"),
    ("hmsg-payload-no-crlf", b"HMSG foo 1 18 19\r\n" + HDR + b"hi\r\n"),
    # wrong number of arguments
    ("msg-no-args", b"MSG\r\n"),
    ("msg-space-no-args", b"MSG \r\n"),
    ("msg-one-arg", b"MSG foo\r\n"),
    ("msg-too-few", b"MSG foo 5\r\n"),
    ("msg-too-many", b"MSG foo 1 r x 5\r\n"),
    ("msg-lower-too-few", b"msg foo 5\r\n"),
    ("msg-lower-too-many", b"msg foo 1 r x 5\r\n"),
    ("hmsg-no-args", b"HMSG\r\n"),
    ("hmsg-too-few", b"HMSG foo 1 5\r\n"),
    ("hmsg-too-many", b"HMSG foo 1 r x 2 5\r\n"),
]


@pytest.mark.parametrize("wire", [w for _, w in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_whole(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        Parser().feed(wire)


@pytest.mark.parametrize("wire", [w for _, w in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_byte_at_a_time(wire: bytes) -> None:
    p = Parser()
    with pytest.raises(ProtocolError):
        for i in range(len(wire)):
            p.feed(wire[i : i + 1])


@pytest.mark.parametrize(
    "wire",
    [
        b"XYZ",
        b"MSX",
        b"\x00",
        b" ",
        b"MSG foo 1 %d\r\n" % (MAX_PAYLOAD_SIZE + 1),
        b"MSG foo 1 -1\r\n",
        b"HMSG foo 1 10 5\r\n",
    ],
)
def test_malformed_detected_without_waiting_for_more(wire: bytes) -> None:
    """These must raise on the bytes shown, not wait for a line end or a payload."""
    with pytest.raises(ProtocolError):
        Parser().feed(wire)


def test_malformed_after_valid_ops_in_same_feed() -> None:
    # Events parsed before the error are lost with it: the connection is dropped anyway.
    with pytest.raises(ProtocolError, match="unknown protocol operation"):
        Parser().feed(b"PING\r\nMSG a 1 1\r\nx\r\nBOGUS\r\n")


def test_error_messages_say_what_is_wrong() -> None:
    cases = [
        (b"XYZ", "unknown protocol operation"),
        (b"MSG a 1 %d\r\n" % (MAX_PAYLOAD_SIZE + 1), "limit"),
        (b"HMSG a 1 10 5\r\n", "header size"),
        (b"INFO []\r\n", "JSON object"),
        (b"MSG a 1 1\r\nxy\r\n", "CRLF"),
        (b"MSG a\r\n", "malformed MSG"),
        (b"INFO " + b"x" * MAX_CONTROL_LINE, "control line"),
    ]
    for wire, text in cases:
        with pytest.raises(ProtocolError, match=text):
            Parser().feed(wire)


def test_unknown_op_error_message_is_printable_and_short() -> None:
    with pytest.raises(ProtocolError) as exc:
        Parser().feed(b"\x00\x01\x02" + b"Z" * 500 + b"\r\n")
    msg = str(exc.value)
    assert "\x00" not in msg and len(msg) < 200


# ------------------------------------------------------------------------- control line


def test_control_line_over_limit_without_crlf_whole() -> None:
    wire = b"INFO " + b"x" * (MAX_CONTROL_LINE + 1 - 5)
    assert len(wire) == MAX_CONTROL_LINE + 1
    with pytest.raises(ProtocolError, match="control line"):
        Parser().feed(wire)


@pytest.mark.parametrize("op", [b"INFO ", b"-ERR '", b"MSG foo 1 ", b"msg\t", b"HMSG a ", b"PING ", b"+OK "])
def test_control_line_over_limit_without_crlf_in_chunks(op: bytes) -> None:
    p = Parser()
    filler = b"x" * (64 * 1024)
    with pytest.raises(ProtocolError, match="control line"):
        p.feed(op)
        for _ in range(MAX_CONTROL_LINE // len(filler) + 2):
            p.feed(filler)
            assert p.buffered <= MAX_CONTROL_LINE + 1


def test_control_line_at_limit_is_kept() -> None:
    # MAX_CONTROL_LINE bytes without a line end are not (yet) an error.
    p = Parser()
    assert p.feed(b"INFO " + b" " * (MAX_CONTROL_LINE - 5)) == []
    assert p.buffered == MAX_CONTROL_LINE


def test_control_line_at_limit_with_crlf_split_before_lf() -> None:
    # A line of exactly MAX_CONTROL_LINE bytes is valid; its CR arriving before its LF
    # must not make it look too long (chunking must not change the outcome).
    body = b'{"a":"' + b"x" * (MAX_CONTROL_LINE - 5 - 8) + b'"}'
    line = b"INFO " + body
    assert len(line) == MAX_CONTROL_LINE
    expected = [Info({"a": "x" * (MAX_CONTROL_LINE - 13)})]
    assert Parser().feed(line + b"\r\n") == expected
    p = Parser()
    assert p.feed(line + b"\r") == []
    assert p.feed(b"\n") == expected


def test_control_line_over_limit_with_crlf() -> None:
    body = b'{"a":"' + b"x" * MAX_CONTROL_LINE + b'"}'
    with pytest.raises(ProtocolError, match="control line"):
        Parser().feed(b"INFO " + body + b"\r\n")


def test_msg_control_line_over_limit_with_crlf() -> None:
    # The MSG fast path must apply the same limit as every other line, else the outcome
    # would depend on how the bytes were chunked.
    wire = b"MSG a" + b" " * MAX_CONTROL_LINE + b"1 1\r\nx\r\n"
    with pytest.raises(ProtocolError, match="control line"):
        Parser().feed(wire)
    with pytest.raises(ProtocolError, match="control line"):
        feed_chunks(wire, 64 * 1024)


def test_long_control_line_arriving_slowly_is_linear() -> None:
    """More bytes of an unfinished line must not re-join and re-scan the whole line.

    Otherwise a line arriving in small pieces costs time quadratic in its length (a
    1 MiB line in 1-byte reads: ~5*10^11 bytes copied). Each incomplete feed here may
    allocate only about its own size.
    """
    data = {"pad": "x" * (256 * 1024)}
    wire = b"INFO " + json.dumps(data).encode() + b"\r\nPING\r\n"
    piece = 1024
    pieces = [wire[i : i + piece] for i in range(0, len(wire), piece)]
    p = Parser()
    events: list[Any] = []
    tracemalloc.start()
    try:
        for chunk in pieces[:-1]:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            events += p.feed(chunk)
            peak = tracemalloc.get_traced_memory()[1]
            assert peak - base < 16 * piece, f"an incomplete feed allocated {peak - base} bytes"
    finally:
        tracemalloc.stop()
    events += p.feed(pieces[-1])
    assert events == [Info(data), PING]


@pytest.mark.timeout(20)
def test_long_control_line_byte_at_a_time() -> None:
    data = {"pad": "x" * (128 * 1024)}
    wire = b"INFO " + json.dumps(data).encode() + b"\r\n"
    assert feed_bytewise(wire) == [Info(data)]


def test_control_line_over_limit_arriving_slowly() -> None:
    p = Parser()
    p.feed(b"INFO ")
    with pytest.raises(ProtocolError, match="control line"):
        for _ in range(MAX_CONTROL_LINE // 4096 + 1):
            p.feed(b"\nx\ry" * 1024)  # line-end look-alikes, never a CRLF
            assert p.buffered <= MAX_CONTROL_LINE + 1


def test_cr_and_lf_in_separate_feeds_end_a_long_line() -> None:
    p = Parser()
    assert p.feed(b'INFO {"a":"' + b"y" * 100) == []
    assert p.feed(b'"}\r') == []
    assert p.feed(b"\nPONG\r\n") == [Info({"a": "y" * 100}), PONG]


# -------------------------------------------------------------------------- chunking


@pytest.mark.parametrize(
    "wire",
    [
        b"PING \r\n",
        b"PONG\t\r\n",
        b"+OK \r\n",
        b"-ERR\r\n",
        b"MSG\ta 1 0\r\n\r\n",
        b"HMSG\ta 1 18 18\r\n" + HDR + b"\r\n",
    ],
)
def test_lenient_forms_do_not_depend_on_chunking(wire: bytes) -> None:
    whole = feed_whole(wire)
    assert len(whole) == 1
    for i in range(1, len(wire)):
        p = Parser()
        assert p.feed(wire[:i]) + p.feed(wire[i:]) == whole, f"split at {i}"


# -------------------------------------------------------------------------- encoders


@pytest.mark.parametrize(
    "args,kwargs,expected",
    [
        (("foo", b"hello"), {}, b"PUB foo 5\r\nhello\r\n"),
        (("foo", b""), {}, b"PUB foo 0\r\n\r\n"),
        (("foo", b"hi"), {"reply": "bar"}, b"PUB foo bar 2\r\nhi\r\n"),
        (("foo", b"hi"), {"reply": ""}, b"PUB foo 2\r\nhi\r\n"),
        (("foo", b"hi"), {"reply": None}, b"PUB foo 2\r\nhi\r\n"),
        (("foo.*.>", b"\r\n"), {}, b"PUB foo.*.> 2\r\n\r\n\r\n"),
        (("ü", "ñ".encode()), {}, "PUB ü 2\r\nñ\r\n".encode()),
        (("foo", b"hi"), {"hdr": b"NATS/1.0\r\n\r\n"}, b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"),
        (("foo", b""), {"hdr": HDR}, b"HPUB foo 18 18\r\n" + HDR + b"\r\n"),
        (("foo", b"hi"), {"hdr": HDR, "reply": "in.1"}, b"HPUB foo in.1 18 20\r\n" + HDR + b"hi\r\n"),
        (("foo", bytearray(b"ab")), {}, b"PUB foo 2\r\nab\r\n"),
    ],
)
def test_encode_pub(args: tuple[Any, ...], kwargs: dict[str, Any], expected: bytes) -> None:
    assert encode_pub(*args, **kwargs) == expected


@pytest.mark.parametrize(
    "subject,reply", [("", None), ("a b", None), ("a", "b c"), ("a", "x\r\nPUB y"), ("a..b", None)]
)
def test_encode_pub_validates(subject: str, reply: str | None) -> None:
    with pytest.raises(BadSubjectError):
        encode_pub(subject, b"x", reply=reply)


def test_pub_prefix() -> None:
    assert pub_prefix("foo") == b"PUB foo "
    assert pub_prefix("foo", "bar") == b"PUB foo bar "
    assert pub_prefix("foo", "") == b"PUB foo "
    assert pub_prefix("ü") == "PUB ü ".encode()
    assert pub_prefix("foo", "bar") + b"2\r\nhi\r\n" == encode_pub("foo", b"hi", reply="bar")
    with pytest.raises(BadSubjectError):
        pub_prefix("a b")
    with pytest.raises(BadSubjectError, match="reply"):
        pub_prefix("a", "b\r\n")


def test_encode_sub_unsub() -> None:
    assert encode_sub("foo", 1) == b"SUB foo 1\r\n"
    assert encode_sub("foo.*", 42, "workers") == b"SUB foo.* workers 42\r\n"
    assert encode_sub("foo", 3, None) == b"SUB foo 3\r\n"
    assert encode_sub("foo", 3, "") == b"SUB foo 3\r\n"
    assert encode_sub("ü.>", 5, "q") == "SUB ü.> q 5\r\n".encode()
    assert encode_unsub(1) == b"UNSUB 1\r\n"
    assert encode_unsub(7, 10) == b"UNSUB 7 10\r\n"
    assert encode_unsub(7, None) == b"UNSUB 7\r\n"


def test_encode_connect() -> None:
    opts = {"verbose": False, "pedantic": False, "name": "x", "protocol": 1, "auth_token": None}
    assert encode_connect(opts) == (
        b'CONNECT {"verbose":false,"pedantic":false,"name":"x","protocol":1,"auth_token":null}\r\n'
    )
    wire = encode_connect({"name": "ü\r\n"})
    assert wire.count(b"\r\n") == 1 and wire.endswith(b"\r\n") and wire.isascii()
    assert json.loads(wire[len(b"CONNECT ") : -2]) == {"name": "ü\r\n"}


# -------------------------------------------------------------------------- validators

GOOD_SUBJECTS = [
    "a",
    "a.b",
    "a.*",
    "a.>",
    ">",
    "*",
    "ü.ñ",
    "_INBOX.abc.123",
    "a-b_c~d!e",
    "日本.語",
    "a" * 1000,
]
BAD_SUBJECTS: list[object] = [
    "",
    " ",
    "a b",
    "a\tb",
    "a\r\nb",
    "a\nb",
    "a\rb",
    "a..b",
    ".a",
    "a.",
    ".",
    "\x00",
    "a\x7f",
    "a\x85b",
    "a\xa0b",
    "\u2028",
    "a\u3000b",
    "a\ud800",  # lone surrogate: cannot be sent as UTF-8
    None,
    b"a",
    1,
    ["a"],
]


@pytest.mark.parametrize("subject", GOOD_SUBJECTS)
def test_validate_subject_accepts(subject: str) -> None:
    assert validate_subject(subject) == subject


@pytest.mark.parametrize("subject", BAD_SUBJECTS, ids=repr)
def test_validate_subject_rejects(subject: object) -> None:
    with pytest.raises(BadSubjectError):
        validate_subject(subject)


def test_validate_subject_names_what() -> None:
    with pytest.raises(BadSubjectError, match="reply subject"):
        validate_subject("a b", "reply subject")
    with pytest.raises(BadSubjectError, match="must be str"):
        validate_subject(b"a")


@pytest.mark.parametrize("queue", ["q", "workers", "a.b", "q-1_x", "ü"])
def test_validate_queue_accepts(queue: str) -> None:
    assert validate_queue(queue) == queue


@pytest.mark.parametrize(
    "queue", ["", " ", "a b", "a\tb", "a\r\nb", "\x00", "a\x7f", "\u2028", "q\ud800", None, b"q", 1], ids=repr
)
def test_validate_queue_rejects(queue: object) -> None:
    with pytest.raises(BadSubjectError, match="queue"):
        validate_queue(queue)


# --- the one-message path of feed_runs (a buffer that holds exactly one MSG) ---------------

_ONE_MSG_WIRES = [
    b"MSG a.b 1 5\r\nhello\r\n",
    b"MSG a.b 12 _INBOX.x.7 2\r\nok\r\n",
    b"MSG a 3 0\r\n\r\n",
    b"MSG a 3 4\r\n\r\n\r\n\r\n",  # a payload that is itself CRLFs
    b"MSG s\xc3\xa9 3 1\r\nx\r\n",  # a UTF-8 subject
]


def _one(m: Any) -> Any:
    if isinstance(m, tuple):  # the default make_msg: (subject, sid, reply, hdr, data)
        return (m[0], m[1], m[2], m[4])
    assert m._client == "owner"
    return (m.subject, m.sid, m.reply, m.data)


def _shape(events: list[Any]) -> list[Any]:
    out: list[Any] = []
    for ev in events:
        if isinstance(ev, MsgRun):
            out += [_one(m) for m in ev.msgs]
        elif isinstance(ev, tuple) or hasattr(ev, "sid"):
            out.append(_one(ev))
        else:
            out.append(ev)
    return out


@pytest.fixture(params=["make_msg", "msg_type"])
def new_parser(request: pytest.FixtureRequest) -> Any:
    """A parser that builds tuples (the default make_msg), or the client's Msg objects."""
    from natsync.msg import Msg

    if request.param == "make_msg":
        return Parser
    return lambda: Parser(msg_type=Msg, owner="owner")


@pytest.mark.parametrize("wire", _ONE_MSG_WIRES)
def test_one_message_alone_parses_as_in_a_stream(wire: bytes, new_parser: Any) -> None:
    alone = new_parser().feed_runs(wire)
    in_stream = new_parser().feed_runs(wire + b"PING\r\n")  # the general path
    assert _shape(alone) + [PING] == _shape(in_stream)
    assert len(alone) == 1
    p = new_parser()
    p.feed_runs(wire)
    assert p.buffered == 0
    # the parser's state is clean: the next chunk parses from its start
    assert _shape(p.feed_runs(wire)) == _shape(alone)


@pytest.mark.parametrize("wire", _ONE_MSG_WIRES)
def test_one_message_cut_anywhere_gives_the_same_message(wire: bytes, new_parser: Any) -> None:
    want = _shape(new_parser().feed_runs(wire))
    for cut in range(1, len(wire)):
        p = new_parser()
        got = p.feed_runs(wire[:cut]) + p.feed_runs(wire[cut:])
        assert _shape(got) == want, cut


@pytest.mark.parametrize(
    "wire, match",
    [
        (b"MSG a.b x 5\r\nhello\r\n", "malformed MSG line"),
        (b"MSG a.b 1 2 3 4 5\r\nhello\r\n", "malformed MSG line"),
        (b"MSG a.b 1 5\r\nhelloXY", "size field lied"),
        (b"MSG a.b 1 3\r\nhello\r\n", "size field lied"),
    ],
)
def test_one_malformed_message_alone_raises_as_in_a_stream(wire: bytes, match: str, new_parser: Any) -> None:
    with pytest.raises(ProtocolError, match=match):
        new_parser().feed_runs(wire)
    with pytest.raises(ProtocolError, match=match):
        new_parser().feed_runs(wire + b"PING\r\n")


def test_one_message_after_a_partial_one_is_not_taken_alone(new_parser: Any) -> None:
    # bytes held from an earlier chunk: the buffer does not start at an operation
    p = new_parser()
    assert p.feed_runs(b"MSG a 1 3\r\nab") == []
    got = p.feed_runs(b"c\r\nMSG b 2 1\r\nz\r\n")
    assert _shape(got) == [("a", 1, None, b"abc"), ("b", 2, None, b"z")]


# --- validate_subject's ASCII path agrees with the general check ------------------------


def test_validate_subject_ascii_path_agrees_with_the_general_check() -> None:
    import re

    general = re.compile(r"[\x00-\x20\x7f-\x9f\s\ud800-\udfff]")
    for code in range(0x3100):
        c = chr(code)
        for s in (f"a{c}b", f"{c}", f"ab.{c}"):
            want_bad = bool(general.search(s)) or s[0] == "." or s[-1] == "." or ".." in s
            try:
                validate_subject(s)
                bad = False
            except BadSubjectError:
                bad = True
            assert bad == want_bad, (hex(code), s)
